"""An artist's session in real Krita, and the local daemon managed from the
docker. Run by tests/test_plugin_krita.py (see scenarios.py for the form)."""

import json
import os
import shutil
import time

from krita import Krita
from PyQt5.QtCore import QPoint, Qt
from PyQt5.QtTest import QTest
from PyQt5.QtWidgets import QApplication, QLabel, QLineEdit, QPushButton, QTreeWidget, QWidget

from .scenarios import _square, controller, docker, new_document, status, top_names

SHOWN = ("smd_status", "smd_connect", "smd_live", "smd_generate", "smd_apply", "smd_layers", "smd_stats")


def find(name, kind=QWidget):
    return docker().findChild(kind, name)


def click(name):
    find(name, QPushButton).click()


def node_named(doc, name):
    stack = list(doc.rootNode().childNodes())
    while stack:
        node = stack.pop()
        if node.name() == name:
            return node
        stack.extend(node.childNodes())
    return None


def make_painting(size, path):
    """Prompt layers and automatic-name layers, a group, a typo in an option; saved as .kra."""
    doc, root, bg = new_document(size, "painting")
    q = size // 2
    fox = doc.createNode("a red fox", "paintlayer")
    fox.setPixelData(_square(q, q, (0, 0, 255, 255)), 0, size // 4, q, q)
    root.addChildNode(fox, bg)
    auto = doc.createNode("Paint Layer 2", "paintlayer")
    auto.setPixelData(_square(q // 2, q // 2, (0, 128, 0, 255)), size - q // 2, 0, q // 2, q // 2)
    root.addChildNode(auto, fox)
    group = doc.createGroupLayer("characters")
    root.addChildNode(group, auto)
    cat = doc.createNode("a cat | strenght: 2", "paintlayer")
    cat.setPixelData(_square(q // 2, q // 2, (255, 0, 0, 255)), size - q // 2, size - q // 2, q // 2, q // 2)
    group.addChildNode(cat, None)
    doc.waitForDone()
    doc.setFileName(path)
    doc.save()
    doc.close()


def drag(doc_widget_window, canvas, points):
    """A stroke with the mouse, as Qt delivers it from the window system."""
    handle = doc_widget_window.windowHandle()

    def at(p):
        return canvas.mapTo(doc_widget_window, QPoint(*p))

    QTest.mouseMove(handle, at(points[0]))
    QTest.mousePress(handle, Qt.LeftButton, Qt.NoModifier, at(points[0]))
    for p in points[1:]:
        QTest.mouseMove(handle, at(p))
        QApplication.processEvents()
    QTest.mouseRelease(handle, Qt.LeftButton, Qt.NoModifier, at(points[-1]))


def visible_in_docker(name):
    """The widget is shown and its top-left lies inside the docker's scrolled view."""
    d = docker()
    w = d.findChild(QWidget, name)
    scroll = d.widget()
    if w is None or not w.isVisible():
        return False
    y = w.mapTo(scroll.viewport(), QPoint(0, 0)).y()
    return 0 <= y < scroll.viewport().height()


def rows_in_docker():
    tree = find("smd_layers", QTreeWidget)
    out = []

    def walk(item, depth):
        out.append([depth, item.text(0), item.text(1)])
        for i in range(item.childCount()):
            walk(item.child(i), depth + 1)

    for i in range(tree.topLevelItemCount()):
        walk(tree.topLevelItem(i), 0)
    return out


def session(args, out):
    app = Krita.instance()
    c = out["checks"]
    ctl = controller()
    size, sync, shots = args["size"], args["sync"], args["shots"]
    window = app.activeWindow().qwindow()
    window.setGeometry(QApplication.primaryScreen().availableGeometry())  # maximised (Xvfb has no window manager)

    # A painting on disk, opened as an artist opens it.
    make_painting(size, args["kra"])
    doc = app.openDocument(args["kra"])
    doc.setBatchmode(True)
    app.activeWindow().addView(doc)
    yield ("document open", lambda: app.activeDocument() == doc, 20)
    fox = node_named(doc, "a red fox")
    doc.setActiveNode(fox)

    # Connect through the docker: every layer is explained before Live.
    address = find("smd_address", QLineEdit)
    address.setText(args["address"])
    address.editingFinished.emit()
    find("smd_size").setValue(size)
    find("smd_steps").setValue(args.get("steps", 2))
    click("smd_connect")
    yield ("connected", lambda: ctl.state == "connected", 90)
    c["status_connected"] = status()
    c["region_choice"] = [not find("smd_region_mode").isHidden(), ctl.conn.region_modes()]
    yield ("every layer read", lambda: ctl.rows and all(r.role for r in ctl.rows), 30)
    yield 0.2
    c["live_before_rows"] = ctl.live
    c["rows"] = [[r.name, r.role, r.code, r.text, r.warnings] for r in ctl.rows]
    c["docker_rows"] = rows_in_docker()

    # Live: the artist's layer stays active and a stroke lands on it.
    click("smd_live")
    yield ("first frame", lambda: ctl.frame_event is not None and node_named(doc, "SMD Preview"), 120)
    yield 1.0  # Krita activates the new preview layer a moment later; the plugin gives the fox back
    preview = node_named(doc, "SMD Preview")
    c["active_after_live"] = doc.activeNode().name()
    c["preview_on_top"] = top_names(doc)[-1] == "SMD Preview"
    c["preview_locked"] = preview.locked()
    canvas = [
        w
        for w in window.findChildren(QWidget)
        if w.metaObject().className() in ("KisOpenGLCanvas2", "KisQPainterCanvas") and w.isVisible()
    ][0]
    before = bytes(fox.pixelData(0, 0, size, size))
    cx, cy = canvas.width() // 2, canvas.height() // 2
    drag(window, canvas, [(cx - 60 + i * 6, cy + i * 2) for i in range(20)])
    yield ("stroke painted", lambda: bytes(fox.pixelData(0, 0, size, size)) != before, 10)
    c["stroke_on_fox"] = True
    c["active_after_stroke"] = doc.activeNode().name()

    # Save during Live: the file shows the painting, not the preview.
    yield ("settled frame", lambda: ctl.frame_event is not None and ctl.frame_event.settled, 60)
    doc.save()
    yield 0.5
    shutil.copy(args["kra"], args["saved_during_live"])
    c["preview_visible_after_save"] = preview.visible()
    c["save_guard_holds"] = ctl.guard.holds
    c["modified_after_save"] = doc.modified()

    # Apply, undo, redo, undo: one undo step, numbered from 1, the fox stays active.
    yield ("a frame to apply", lambda: find("smd_apply", QPushButton).isEnabled(), 30)
    click("smd_apply")
    yield ("applied", lambda: node_named(doc, "SMD Result 1") is not None, 10)
    yield 1.0
    c["active_after_apply"] = doc.activeNode().name()
    for action, name, done in (
        ("edit_undo", "undone", False),
        ("edit_redo", "redone", True),
        ("edit_undo", "undone again", False),
    ):
        doc.waitForDone()  # an undo right after a redo was once lost on a busy machine: let Krita settle
        yield 0.3
        app.action(action).trigger()
        yield (name, lambda done=done: (node_named(doc, "SMD Result 1") is not None) == done, 10)
    c["names_after_undo"] = top_names(doc)

    # The daemon goes away and comes back: status and numbers stay truthful.
    c["stats_live"] = find("smd_stats", QLabel).text()
    open(os.path.join(sync, "kill_daemon"), "w").close()
    t_kill = time.monotonic()
    yield ("disconnected", lambda: ctl.state != "connected", 30)
    yield ("nothing answers", lambda: "is the daemon running?" in status(), 30)
    c["status_after_kill"] = status()
    c["stats_after_kill"] = find("smd_stats", QLabel).text()
    open(os.path.join(sync, "restart_daemon"), "w").close()
    yield ("reconnected", lambda: ctl.state == "connected", 120)
    c["outage_s"] = time.monotonic() - t_kill
    c["status_after_restart"] = status()
    seen = ctl.frame_event
    yield ("frame after restart", lambda: ctl.frame_event is not seen, 90)
    yield ("everything sent is shown", lambda: ctl.frame_event.revision == ctl.client.revision, 60)
    rev = ctl.frame_event.revision
    t_edit = time.monotonic()
    fox.setPixelData(_square(16, 16, (0, 0, 255, 255)), 0, 0, 16, 16)
    yield ("frame showing an edit", lambda: ctl.frame_event.revision > rev, 60)
    c["edit_shown_ms"] = (time.monotonic() - t_edit) * 1000
    c["latency_after_restart_ms"] = ctl.stats.latency_ms
    yield ("a second frame", lambda: ctl.stats.frames >= 2, 60)
    c["stats_after_restart"] = find("smd_stats", QLabel).text()

    # The whole docker on a 1366x768 screen, and folded to 350 px high.
    d = docker()
    yield 0.3
    c["screen"] = [QApplication.primaryScreen().size().width(), QApplication.primaryScreen().size().height()]
    c["window"] = [window.width(), window.height()]
    c["docker_size"] = [d.width(), d.height()]
    c["shown_at_full_height"] = {n: visible_in_docker(n) for n in SHOWN}
    window.grab().save(os.path.join(shots, "krita-1366x768.png"))
    d.grab().save(os.path.join(shots, "docker-1366x768.png"))
    d.setFloating(True)
    d.resize(320, 350)
    yield 0.5
    c["docker_350"] = [d.width(), d.height()]
    c["shown_at_350"] = {n: visible_in_docker(n) for n in SHOWN}
    d.grab().save(os.path.join(shots, "docker-350px.png"))
    d.setFloating(False)

    # Live off: the preview is hidden, never removed (no undo step), the fox untouched by the plugin.
    click("smd_live")
    yield 0.3
    c["preview_hidden_after_live"] = not node_named(doc, "SMD Preview").visible()
    c["stats_after_live_off"] = find("smd_stats", QLabel).text()
    c["history"] = undo_history()
    c["active_at_end"] = doc.activeNode().name()

    # Generate with Live off: the result shows in the preview at once; Apply clears "result ready".
    click("smd_generate")
    yield ("result", lambda: ctl.result is not None, 120)
    yield 0.3
    c["progress_with_result"] = ctl.progress
    c["preview_shows_result"] = node_named(doc, "SMD Preview").visible()
    click("smd_apply")
    yield ("result applied", lambda: node_named(doc, "SMD Result 1") is not None, 10)
    yield 0.3
    c["progress_after_apply"] = ctl.progress
    c["preview_hidden_after_apply"] = not node_named(doc, "SMD Preview").visible()


def undo_history():
    from PyQt5.QtWidgets import QAbstractItemView

    for d in Krita.instance().dockers():
        if d.objectName() == "History":
            views = d.findChildren(QAbstractItemView)
            if views:
                model = views[0].model()
                return [model.index(i, 0).data() for i in range(model.rowCount())]
    return None


def opened_without_plugin(args, out):
    """Krita without the plugin opens a file saved during Live: what does it show?"""
    app = Krita.instance()
    c = out["checks"]
    c["plugin_loaded"] = any(d.objectName() == "smd_live_docker" for d in app.dockers())
    yield ("document open", lambda: app.activeDocument() is not None, 30)
    doc = app.activeDocument()
    doc.refreshProjection()
    doc.waitForDone()
    yield 0.3
    c["layers"] = [[n.name(), n.visible()] for n in doc.rootNode().childNodes()]
    c["probes"] = [list(bytes(doc.pixelData(x, y, 1, 1))) for x, y in args["probes"]]


def managed(args, out):
    """Start the daemon install.py set up from the docker; quitting Krita stops it (only it)."""
    yield from _start_managed(out["checks"])
    out["quit"] = True  # the driver quits Krita through File > Quit


def managed_killed(args, out):
    """Start the daemon install.py set up from the docker, then say the pids and wait: the test
    kills Krita with SIGKILL (nothing of Krita or the plugin runs after that)."""
    from . import checkpoint

    c = out["checks"]
    yield from _start_managed(c)
    c["krita_pid"] = os.getpid()
    checkpoint()
    with open(os.path.join(args["sync"], "pids.tmp"), "w") as f:
        json.dump({"krita": os.getpid(), "daemon": c["pid"]}, f)
    os.replace(os.path.join(args["sync"], "pids.tmp"), os.path.join(args["sync"], "pids.json"))
    yield ("killed by the test", lambda: False, 600)


def _start_managed(c):
    ctl = controller()
    c["offered"] = find("smd_daemon_start", QPushButton).isVisible() or ctl.managed.available
    c["address_before_start"] = find("smd_address", QLineEdit).text()
    click("smd_daemon_start")
    yield ("process running", lambda: ctl.managed.running, 20)
    c["pid"] = ctl.managed.process.processId()
    yield (
        "loading shown",
        lambda: "starting" in find("smd_daemon_state", QLabel).text() or ctl.state == "connected",
        30,
    )
    c["state_while_loading"] = find("smd_daemon_state", QLabel).text()
    yield ("connected", lambda: ctl.state == "connected", 120)
    yield 1.5  # the docker reads the log once a second
    c["state_running"] = find("smd_daemon_state", QLabel).text()
    c["log_shown"] = find("smd_daemon_log", QLabel).text()
    c["address"] = ctl.settings["address"]


def save_settings(args, out):
    """Choices made in the docker, then the document saved (see scenarios.reopen)."""
    from PyQt5.QtWidgets import QComboBox

    app = Krita.instance()
    doc, root, bg = new_document(64, "settings")
    yield ("document active", lambda: app.activeDocument() == doc, 10)
    yield 0.2
    find("smd_seed").setValue(args["seed"])
    mode = find("smd_preview_mode", QComboBox)
    mode.setCurrentIndex(mode.findData("docker"))
    address = find("smd_address", QLineEdit)
    address.setText(args["address"])
    address.editingFinished.emit()
    doc.setFileName(args["kra"])
    out["checks"]["saved"] = doc.save()
    out["quit"] = True  # Krita writes its config (kritarc) when it quits

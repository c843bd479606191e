"""An artist's session in real Krita, and the local daemon managed from the
docker. Run by tests/test_plugin_krita.py (see scenarios.py for the form)."""

import json
import os
import shutil
import time

from krita import Krita
from PyQt5.QtCore import QPoint, Qt
from PyQt5.QtTest import QTest
from PyQt5.QtWidgets import QApplication, QLabel, QLineEdit, QPushButton, QToolButton, QTreeWidget, QWidget

from .scenarios import _square, controller, docker, new_document, status, top_names

SHOWN = ("smd_status", "smd_connect", "smd_live", "smd_generate", "smd_apply", "smd_layers", "smd_stats")
PROBE_BGRA = [200, 220, 240, 255]  # the painting at the probe: the light "Background"


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


def whole_buttons():
    """[(name, whole)] for every button shown in the docker: entirely inside its visible width, and at
    least as wide as its text needs."""
    from PyQt5.QtWidgets import QAbstractButton

    d = docker()
    scroll = d.widget()
    out = []
    for b in d.findChildren(QAbstractButton):
        if not (b.isVisible() and scroll.widget().isAncestorOf(b)):
            continue
        left = b.mapTo(scroll.viewport(), QPoint(0, 0)).x()
        need = max(b.minimumWidth(), b.fontMetrics().horizontalAdvance(b.text()))
        out.append([b.objectName(), 0 <= left and left + b.width() <= scroll.viewport().width() and b.width() >= need])
    return out


def mean_difference(a, b) -> float:
    """Mean absolute difference of two same-sized images' RGB values, in 255ths."""
    a, b = a.toImage(), b.toImage()
    total = n = 0
    for y in range(0, min(a.height(), b.height()), 2):
        for x in range(0, min(a.width(), b.width()), 2):
            p, q = a.pixelColor(x, y), b.pixelColor(x, y)
            total += abs(p.red() - q.red()) + abs(p.green() - q.green()) + abs(p.blue() - q.blue())
            n += 3
    return total / max(n, 1)


def projection_at(doc, x, y):
    """What the canvas shows at (x, y), B, G, R, A. (Read after a pause, never after waitForDone: that
    builds the wait dialog Krita builds before saving, which hides the preview.)"""
    return list(bytes(doc.pixelData(x, y, 1, 1)))


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
    live_off = find("smd_live", QPushButton).grab()
    yield 2.0  # the artist looks a while before pressing Live: no part of that is latency
    t_live = time.monotonic()
    click("smd_live")
    yield ("first frame", lambda: ctl.frame_event is not None and node_named(doc, "SMD Preview"), 120)
    yield ("latency measured", lambda: ctl.stats.latency_ms > 0, 60)
    c["since_live_ms"] = (time.monotonic() - t_live) * 1000
    c["latency_first_live_ms"] = ctl.stats.latency_ms
    yield 1.0  # Krita activates the new preview layer a moment later; the plugin gives the fox back
    preview = node_named(doc, "SMD Preview")
    c["active_after_live"] = doc.activeNode().name()
    c["preview_on_top"] = top_names(doc)[-1] == "SMD Preview"
    c["preview_locked"] = preview.locked()
    c["live_button_contrast"] = mean_difference(live_off, find("smd_live", QPushButton).grab())
    c["live_button_text"] = find("smd_live", QPushButton).text()
    # Both by default: the preview at half opacity over the painting; one click shows either alone.
    c["preview_opacity_live"] = preview.opacity()
    probe = (size - 4, size // 2)
    holds = ctl.guard.holds
    doc.setModified(False)
    looks = {}
    for choice in ("painting", "preview", "both"):
        find(f"smd_show_{choice}", QToolButton).click()
        yield 0.5
        looks[choice] = [preview.visible(), preview.opacity(), projection_at(doc, *probe)]
    c["looks"] = looks
    app.action("smd_show_swap").trigger()  # the action an artist gives a key to
    yield 0.3
    c["after_swap_action"] = [ctl.settings["preview_show"], preview.opacity()]
    find("smd_show_both", QToolButton).click()
    yield 0.3
    c["modified_after_show_choices"] = doc.modified()
    c["holds_while_looking"] = ctl.guard.holds - holds  # no save meanwhile: nothing hid the preview
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
    c["whole_buttons"] = whole_buttons()
    warnings = find("smd_warnings", QLabel)
    c["warnings_label"] = [warnings.isVisible(), warnings.text().replace("\u200b", "")]
    c["warnings_fit"] = warnings.height() >= warnings.heightForWidth(warnings.width())
    window.grab().save(os.path.join(shots, "krita-1366x768.png"))
    d.grab().save(os.path.join(shots, "docker-1366x768.png"))
    d.setFloating(True)
    d.resize(320, 350)
    yield 0.5
    c["docker_350"] = [d.width(), d.height()]
    c["shown_at_350"] = {n: visible_in_docker(n) for n in SHOWN}
    d.grab().save(os.path.join(shots, "docker-350px.png"))
    d.setFloating(False)

    # The preview moved into the docker: the canvas shows the painting again, everywhere.
    from PyQt5.QtWidgets import QComboBox

    mode = find("smd_preview_mode", QComboBox)
    mode.setCurrentIndex(mode.findData("docker"))
    yield 0.5
    c["probe_in_docker"] = projection_at(doc, *probe)
    c["modified_after_mode"] = doc.modified()
    mode.setCurrentIndex(mode.findData("canvas"))
    yield ("a frame on the canvas again", lambda: node_named(doc, "SMD Preview").visible(), 30)
    yield 0.5
    c["probe_back_on_canvas"] = projection_at(doc, *probe)

    # Live off: the preview is hidden, never removed (no undo step), the fox untouched by the plugin;
    # the whole canvas shows the painting again, not only where the next stroke lands.
    c["probe_before_live_off"] = projection_at(doc, *probe)
    click("smd_live")
    yield 0.5
    c["preview_hidden_after_live"] = not node_named(doc, "SMD Preview").visible()
    c["probe_after_live_off"] = projection_at(doc, *probe)
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


def layout(args, out):
    """The docker as Krita first shows it (its default dock column), every section open: every
    button whole, warnings in full, the wheel over the layer list reaching the docker; a screenshot."""
    from PyQt5.QtCore import QPointF
    from PyQt5.QtGui import QWheelEvent

    app = Krita.instance()
    c = out["checks"]
    window = app.activeWindow().qwindow()
    window.setGeometry(QApplication.primaryScreen().availableGeometry())  # maximised (Xvfb has no window manager)
    doc, root, bg = new_document(64, "layout")
    for i in range(3):
        node = doc.createNode(f"a cat {i} | strenght: 2", "paintlayer")
        node.setPixelData(_square(8, 8, (255, 0, 0, 255)), 8 * i, 0, 8, 8)
        root.addChildNode(node, root.childNodes()[-1])
    yield ("document active", lambda: app.activeDocument() == doc, 10)
    controller().set_setting("address", "127.0.0.1:1")  # a long status line: nothing answers there
    controller().connect_daemon()
    yield ("the longest status", lambda: "no answer" in status(), 30)
    yield 0.3
    d = docker()
    c["screen"] = [QApplication.primaryScreen().size().width(), QApplication.primaryScreen().size().height()]
    c["docker_width"] = d.width()
    c["font"] = [d.font().family(), d.font().pointSizeF()]
    c["whole_buttons_folded"] = whole_buttons()
    d.grab().save(os.path.join(args["shots"], f"docker-default-{c['screen'][0]}x{c['screen'][1]}.png"))
    for name in ("smd_preview_toggle", "smd_settings_toggle", "smd_daemon_toggle"):
        toggle = find(name, QToolButton)
        if not toggle.isChecked():
            toggle.click()
    yield 0.5
    scroll = d.widget()
    c["content_min_width"] = scroll.widget().minimumSizeHint().width()
    c["viewport_width"] = scroll.viewport().width()
    c["horizontal_scroll"] = scroll.horizontalScrollBar().maximum()
    c["whole_buttons_open"] = whole_buttons()
    bar = scroll.verticalScrollBar()
    tree = find("smd_layers", QTreeWidget)
    bar.setValue(0)
    at = QPointF(tree.viewport().width() / 2, 5)
    wheel = QWheelEvent(
        at,
        QPointF(tree.viewport().mapToGlobal(at.toPoint())),
        QPoint(),
        QPoint(0, -120),
        Qt.MouseButton.NoButton,
        Qt.KeyboardModifier.NoModifier,
        Qt.ScrollPhase.NoScrollPhase,
        False,
    )
    QApplication.sendEvent(tree.viewport(), wheel)  # as Qt delivers it: to the list's viewport, then up
    c["wheel"] = [bar.maximum(), bar.value(), tree.verticalScrollBar().maximum()]
    # The whole of it, as it scrolls: every section open.
    scroll.widget().grab().save(os.path.join(args["shots"], f"docker-open-{c['screen'][0]}x{c['screen'][1]}.png"))
    controller().disconnect_daemon()
    doc.setModified(False)


def _named_nodes(doc, name):
    stack, out = list(doc.rootNode().childNodes()), []
    while stack:
        node = stack.pop()
        if node.name() == name:
            out.append(node)
        stack.extend(node.childNodes())
    return out


def saved_document(args, out):
    """A .kra the plugin worked on: the artist's own layer called "SMD Preview" is never written; the
    plugin's preview is found again by its id after saving and reopening; settings damaged in the file
    (NaN, 1e400) fall back to the defaults, said once, and Live works."""
    from PyQt5.QtCore import QByteArray
    from smd_krita import kritaapi

    app = Krita.instance()
    c = out["checks"]
    ctl = controller()
    doc, root, bg = new_document(64, "saved")
    fox = doc.createNode("a red fox", "paintlayer")
    fox.setPixelData(_square(32, 32, (0, 0, 255, 255)), 0, 16, 32, 32)
    root.addChildNode(fox, bg)
    mine = doc.createNode("SMD Preview", "paintlayer")  # the artist's, whatever its name
    mine.setPixelData(_square(16, 16, (10, 200, 10, 255)), 48, 0, 16, 16)
    root.addChildNode(mine, fox)
    doc.waitForDone()
    yield ("document active", lambda: app.activeDocument() == doc, 10)
    before = bytes(mine.pixelData(0, 0, 64, 64))

    def untouched(node):
        return bytes(node.pixelData(0, 0, 64, 64)) == before and node.visible() and not node.locked()

    ctl.set_setting("address", args["address"])
    ctl.set_setting("size", 64)
    ctl.set_setting("steps", 2)
    ctl.connect_daemon()
    yield ("connected", lambda: ctl.state == "connected", 90)
    ctl.set_live(True)
    yield ("the plugin's own preview", lambda: ctl.frame_event is not None and kritaapi.find_preview(doc), 90)
    yield 1.0
    own = kritaapi.find_preview(doc)
    c["own_is_not_the_artists"] = own.uniqueId().toString() != mine.uniqueId().toString()
    c["artists_untouched_during_live"] = untouched(mine)
    c["previews_after_live"] = len(_named_nodes(doc, "SMD Preview"))
    own_uid = own.uniqueId().toString()
    ctl.set_live(False)
    yield 0.3

    # The settings damaged in the file, as a hand edit or another program might leave them.
    raw = bytes(doc.annotation("smd-live")).decode()
    damaged = raw.replace('"preview_opacity": 0.5', '"preview_opacity": NaN').replace('"seed": 0', '"seed": 1e400')
    c["damaged"] = damaged != raw and "NaN" in damaged and "1e400" in damaged
    doc.setAnnotation("smd-live", "SMD Live settings", QByteArray(damaged.encode()))
    doc.setFileName(args["kra"])
    c["saved"] = doc.save()
    doc.close()
    yield 0.5

    doc = app.openDocument(args["kra"])
    doc.setBatchmode(True)
    app.activeWindow().addView(doc)
    yield ("reopened", lambda: app.activeDocument() == doc and ctl.doc == doc, 30)
    yield 0.5
    c["notice"] = ctl.notice
    c["error_label"] = find("smd_error", QLabel).text().replace("\u200b", "")
    c["settings_after_open"] = [ctl.settings["preview_opacity"], ctl.settings["seed"]]
    c["modified_after_open"] = doc.modified()
    c["own_found_again"] = (
        kritaapi.find_preview(doc) is not None and kritaapi.find_preview(doc).uniqueId().toString() == own_uid
    )
    ctl.set_live(True)
    yield ("a frame in the reopened document", lambda: ctl.frame_event is not None, 90)
    yield 1.0
    own = kritaapi.find_preview(doc)
    mine = [n for n in _named_nodes(doc, "SMD Preview") if n.uniqueId().toString() != own_uid][0]
    c["previews_after_reopen"] = len(_named_nodes(doc, "SMD Preview"))
    c["artists_untouched_after_reopen"] = untouched(mine)
    c["own_look"] = [own.visible(), own.opacity()]
    c["error"] = ctl.error
    c["history_after_reopen"] = undo_history()
    ctl.set_live(False)
    yield 0.3
    clean = bytes(doc.annotation("smd-live")).decode()
    c["annotation_clean"] = "NaN" not in clean and "Infinity" not in clean and "1e400" not in clean
    doc.setModified(False)

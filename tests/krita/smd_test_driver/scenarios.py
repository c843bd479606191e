"""Scenarios run inside Krita by the test driver.

Each is a generator: ``yield seconds`` sleeps, ``yield (what, predicate,
timeout)`` waits until predicate() is true. Results go into ``out["checks"]``.
Coordination with the test process (kill/restart the daemon) goes through
files in ``args["sync"]``.
"""

import time

from krita import Krita
from PyQt5.QtWidgets import QLabel, QLineEdit, QSpinBox

DOCKER_ID = "smd_live_docker"


def docker():
    for d in Krita.instance().dockers():
        if d.objectName() == DOCKER_ID:
            return d
    return None


def status():
    d = docker()
    label = d.findChild(QLabel, "smd_status") if d else None
    return label.text() if label else ""


def controller():
    from smd_krita import live  # the product's public state, read-only here

    return live.controller()


def startup(args, out):
    app = Krita.instance()
    d = docker()
    out["checks"]["krita_version"] = app.version()
    out["checks"]["docker_present"] = d is not None
    out["checks"]["status"] = status()
    names = ("smd_live_toggle", "smd_generate", "smd_apply", "smd_show_swap")
    out["checks"]["actions"] = [n for n in names if app.action(n)]
    yield 0.1


def _square(w, h, color_bgra):
    return bytes(color_bgra) * (w * h)


def new_document(size, name):
    """A size x size RGBA/U8 document in a view, with a light blue "Background"."""
    app = Krita.instance()
    doc = app.createDocument(size, size, name, "RGBA", "U8", "", 300.0)
    doc.setBatchmode(True)
    app.activeWindow().addView(doc)
    bg = doc.rootNode().childNodes()[0]
    bg.setPixelData(_square(size, size, (200, 220, 240, 255)), 0, 0, size, size)
    return doc, doc.rootNode(), bg


def make_document(size):
    doc, root, bg = new_document(size, "e2e")
    fox = doc.createNode("a red fox", "paintlayer")
    root.addChildNode(fox, bg)
    q = size // 2
    fox.setPixelData(_square(q, q, (0, 0, 255, 255)), 0, size // 4, q, q)
    tree = doc.createNode("a green tree | blur: 2", "paintlayer")
    root.addChildNode(tree, fox)
    # partly outside the canvas on purpose
    tree.setPixelData(_square(q, q, (0, 255, 0, 255)), size - q // 2, size // 4, q, q)
    doc.refreshProjection()
    doc.waitForDone()
    return doc, [bg, fox, tree]


def snapshot(doc, nodes):
    return [(n.name(), bytes(n.pixelData(-64, -64, doc.width() + 128, doc.height() + 128))) for n in nodes]


def rgb_to_bgra(data):
    out = bytearray(len(data) // 3 * 4)
    out[0::4] = data[2::3]
    out[1::4] = data[1::3]
    out[2::4] = data[0::3]
    out[3::4] = b"\xff" * (len(data) // 3)
    return bytes(out)


def top_names(doc):
    return [n.name() for n in doc.rootNode().childNodes()]


def reopen(args, out):
    """The same HOME again, a saved document: settings come back (global ones from kritarc)."""
    app = Krita.instance()
    yield ("document opened", lambda: app.activeDocument() is not None, 30)
    yield 0.3  # the plugin follows the active document on its next tick
    d = docker()
    out["checks"]["seed_in_docker"] = d.findChild(QSpinBox, "smd_seed").value()
    out["checks"]["seed_in_controller"] = controller().settings["seed"]
    out["checks"]["preview_mode"] = controller().settings["preview_mode"]
    out["checks"]["address"] = d.findChild(QLineEdit, "smd_address").text()
    doc = app.activeDocument()
    out["checks"]["layers"] = [(n.name(), n.visible()) for n in doc.rootNode().childNodes()]


def _median_ms(fn, n):
    import statistics

    times = []
    for _ in range(n):
        t = time.perf_counter()
        fn()
        times.append((time.perf_counter() - t) * 1000)
    return round(statistics.median(times), 2)


def bench(args, out):
    """Numbers for docs/benchmarks.md (run by benchmarks/bench_krita.py)."""
    import statistics

    from PyQt5.QtGui import QImage
    from smd_krita import kritaapi
    from smd_krita.transport import client as client_mod

    app = Krita.instance()
    c = out["checks"]
    side, blob, out_side, n = args["side"], args["blob"], args["out"], args["repeats"]
    doc, root, _ = new_document(side, "bench")
    regions = []
    for i in range(8):
        node = doc.createNode(f"region {i} | blur: 2", "paintlayer")
        root.addChildNode(node, root.childNodes()[-1])
        x, y = (i % 4) * (side - blob) // 3, (i // 4) * (side - blob)
        node.setPixelData(_square(blob, blob, (0, 0, 255, 255)), x, y, blob, blob)
        regions.append(node)
    doc.waitForDone()
    yield ("document active", lambda: app.activeDocument() == doc, 10)
    yield 0.5

    def read_all():
        layers = kritaapi.layers(doc)
        [kritaapi.fingerprint(l) for l in layers]
        msg = [
            client_mod.Layer(l.uid, l.name, kritaapi.read_alpha(doc, l, out_side, out_side), l.visible)
            for l in layers
            if l.name.startswith("region")
        ]
        kritaapi.read_composite(
            doc, layers, {l.uid for l in layers if not l.name.startswith("region")}, out_side, out_side
        )
        return msg

    def scan_only():
        [kritaapi.fingerprint(l) for l in kritaapi.layers(doc)]

    c["read_8_regions_ms"] = _median_ms(read_all, n)
    c["scan_no_change_ms"] = _median_ms(scan_only, n)
    frame = QImage(
        bytes(range(256)) * (out_side * out_side * 3 // 256), out_side, out_side, out_side * 3, QImage.Format_RGB888
    ).copy()
    kritaapi.write_preview(doc, frame)
    yield 0.5  # the new layer settles (locked) before timing
    c["write_frame_ms"] = _median_ms(lambda: kritaapi.write_preview(doc, frame), n)
    from smd_krita import pixels

    prev = kritaapi.find_preview(doc)
    parts = {"scale_convert": [], "set_pixel_data": [], "refresh_projection": []}
    for _ in range(n):  # the steps of write_preview, timed one after another as they run there
        t0 = time.perf_counter()
        data, owner = pixels.to_canvas_bgra(frame, side, side)
        t1 = time.perf_counter()
        prev.setPixelData(data, 0, 0, side, side)
        t2 = time.perf_counter()
        doc.refreshProjection()
        t3 = time.perf_counter()
        for k, dt in zip(parts, (t1 - t0, t2 - t1, t3 - t2)):
            parts[k].append(dt * 1000)
    c["write_parts_ms"] = {k: round(statistics.median(v), 2) for k, v in parts.items()}
    kritaapi.hide_preview(doc)
    full = _square(side, side, (0, 0, 255, 128))
    for node in regions:
        node.setPixelData(full, 0, 0, side, side)
    doc.waitForDone()
    yield 0.3
    c["read_8_full_canvas_regions_ms"] = _median_ms(read_all, n)
    for node in regions:  # back to blobs for the live run
        node.setPixelData(bytes(len(full)), 0, 0, side, side)
    for i, node in enumerate(regions):
        x, y = (i % 4) * (side - blob) // 3, (i // 4) * (side - blob)
        node.setPixelData(_square(blob, blob, (0, 0, 255, 255)), x, y, blob, blob)
    doc.waitForDone()

    # End to end against the daemon: setPixelData -> first preview frame showing it.
    ctl = controller()
    ctl.set_setting("address", args["address"])
    ctl.set_setting("size", args["live_out"])
    ctl.set_setting("steps", args.get("steps", 2))
    ctl.connect_daemon()
    yield ("connected", lambda: ctl.state == "connected", 60)
    ctl.set_live(True)
    yield ("first frame", lambda: ctl.frame_event is not None and ctl.frame_event.settled, 120)
    rows = []
    for k in range(n):
        yield 0.4  # let the previous edit settle
        t_edit = time.monotonic()
        patch = 128
        color = (0, 0, 255, 255) if k % 2 == 0 else (0, 0, 0, 0)
        regions[0].setPixelData(_square(patch, patch, color), side // 2, side // 2, patch, patch)

        def shown():
            for tr in ctl.sync.trace.values():
                if tr["first_seen"] >= t_edit and "written" in tr:
                    return True
            return False

        yield ("edit shown", shown, 30)
        tr = min(
            (tr for tr in ctl.sync.trace.values() if tr["first_seen"] >= t_edit and "written" in tr),
            key=lambda tr: tr["first_seen"],
        )
        daemon = (tr["daemon_sent_wall"] - tr["sent_wall"]) * 1000 if tr.get("daemon_sent_wall") else None
        rows.append(
            {
                "detect": (tr["first_seen"] - t_edit) * 1000,  # until a scan noticed the edit
                "hold_read_send": (tr["sent"] - tr["first_seen"]) * 1000,  # throttling, reading, sending
                "daemon": daemon,
                "engine_step": tr.get("engine_ms"),
                "receive": ((tr["received_wall"] - tr["daemon_sent_wall"]) * 1000) if daemon is not None else None,
                "write": (tr["written"] - tr["handled"]) * 1000,
                "total": (tr["written"] - t_edit) * 1000,
            }
        )
    keys = rows[0].keys()
    c["e2e_ms"] = {
        k: (round(statistics.median([r[k] for r in rows]), 2) if rows[0][k] is not None else None) for k in keys
    }
    c["e2e_rows"] = rows
    c["live_read_ms"] = ctl.sync.read_ms
    ctl.set_live(False)
    yield 0.2


def mask_via_action(doc, layer, x, y, w, h):
    """A transparency mask showing only (x, y, w, h), made as an artist does (Krita 5.1's Python
    API cannot make a working mask: one from createNode has no selection)."""
    from krita import Selection

    app = Krita.instance()
    doc.setActiveNode(layer)
    sel = Selection()
    sel.select(x, y, w, h, 255)
    doc.setSelection(sel)
    app.action("add_new_transparency_mask").trigger()
    doc.waitForDone()
    app.action("deselect").trigger()
    doc.waitForDone()
    return [n for n in layer.childNodes() if n.type() == "transparencymask"][-1]


def documents(args, out):
    """The Krita wrapper against real Krita: groups (opacity, masks), masks, hidden, outside the canvas,
    16-bit, float."""
    from PyQt5.QtGui import QImage
    from smd_krita import kritaapi

    app = Krita.instance()
    c = out["checks"]
    doc = app.createDocument(64, 32, "kinds", "RGBA", "U8", "", 300.0)
    doc.setBatchmode(True)
    app.activeWindow().addView(doc)
    root = doc.rootNode()
    group = doc.createGroupLayer("a house")
    root.addChildNode(group, root.childNodes()[-1])
    inner = doc.createNode("Paint Layer 2", "paintlayer")
    inner.setPixelData(_square(8, 8, (0, 0, 255, 255)), 60, 24, 8, 8)  # half outside, bottom right
    group.addChildNode(inner, None)
    hidden = doc.createNode("a hidden cat", "paintlayer")
    hidden.setPixelData(_square(4, 4, (0, 255, 0, 255)), 0, 0, 4, 4)
    root.addChildNode(hidden, group)
    hidden.setVisible(False)
    fox = doc.createNode("a fox", "paintlayer")
    fox.setPixelData(_square(16, 16, (0, 0, 255, 255)), 0, 0, 16, 16)
    root.addChildNode(fox, hidden)
    doc.refreshProjection()
    doc.waitForDone()
    yield ("document active", lambda: app.activeDocument() == doc, 10)
    layers = kritaapi.layers(doc)
    c["layers"] = [(l.name, l.kind, l.visible, l.depth) for l in layers]
    by = {l.name: l for l in layers}
    a = kritaapi.read_alpha(doc, by["Paint Layer 2"], 64, 32)  # inside a group: read as a layer
    c["inner_alpha_count"] = sum(1 for v in a if v)
    c["inner_alpha_corner"] = a[31 * 64 + 63]
    h = kritaapi.read_alpha(doc, by["a hidden cat"], 128, 64)  # output larger than the document
    c["hidden_alpha_count"] = sum(1 for v in h if v)

    # As the artist sees it: a layer's own mask, its group's opacity and mask.
    mask_via_action(doc, fox, 0, 0, 8, 32)  # shows the left half of the fox
    group.setOpacity(128)
    mask_via_action(doc, group, 0, 28, 64, 4)  # shows the group's bottom 4 rows only
    doc.refreshProjection()
    doc.waitForDone()
    yield 0.3
    by = {l.name: l for l in kritaapi.layers(doc)}
    a = kritaapi.read_alpha(doc, by["a fox"], 64, 32)
    c["masked_fox_count"] = sum(1 for v in a if v)
    a = kritaapi.read_alpha(doc, by["Paint Layer 2"], 64, 32)
    c["grouped_values"] = sorted(set(a))
    c["grouped_count"] = sum(1 for v in a if v)
    c["fingerprint_sees_masks"] = len(by["a fox"].own_masks) == 1 and len(by["Paint Layer 2"].group_masks) == 1

    frame = QImage(bytes([10, 20, 30]) * (32 * 16), 32, 16, 96, QImage.Format_RGB888).copy()
    doc.setModified(False)
    node, _ = kritaapi.write_preview(doc, frame)
    c["preview_pixel"] = list(bytes(node.pixelData(5, 5, 1, 1)))
    c["composite_corner"] = list(kritaapi.read_composite(doc, list(by.values()), {by["Background"].uid}, 64, 32)[:3])

    d16 = app.createDocument(32, 32, "sixteen", "RGBA", "U16", "", 300.0)
    d16.setBatchmode(True)
    n16 = d16.createNode("a fox", "paintlayer")
    n16.setPixelData(bytes([0, 0, 0, 0, 0xFF, 0xFF, 0xFF, 0xFF]) * 16, 0, 0, 16, 1)
    d16.rootNode().addChildNode(n16, d16.rootNode().childNodes()[-1])
    d16.waitForDone()
    a16 = kritaapi.read_alpha(d16, [l for l in kritaapi.layers(d16) if l.name == "a fox"][0], 32, 32)
    c["u16_alpha_row0"] = sum(1 for v in a16[:32] if v)
    p16, _ = kritaapi.write_preview(d16, frame)
    c["u16_preview_pixel"] = list(bytes(p16.pixelData(0, 0, 1, 1)))

    f32 = app.createDocument(16, 16, "float", "RGBA", "F32", "", 300.0)
    f32.setBatchmode(True)
    c["f32_problem"] = kritaapi.color_problem(f32)
    try:
        kritaapi.read_alpha(f32, kritaapi.layers(f32)[0], 16, 16)
        c["f32_raises"] = False
    except kritaapi.Unsupported:
        c["f32_raises"] = True
    for d in (doc, d16, f32):
        d.setModified(False)
    yield 0.1


def hostile_frames(args, out):
    """Live against a fake daemon that sends a 1 GiB part, a huge declared size, the wrong size,
    the wrong byte count and a PNG bomb, then good frames: Krita's memory, the status line, the
    preview and the artist's layer."""

    def peak_mb():  # Krita's own peak RSS (VmHWM)
        with open("/proc/self/status") as f:
            return next(int(line.split()[1]) for line in f if line.startswith("VmHWM:")) / 1024

    c = out["checks"]
    doc, root, bg = new_document(256, "hostile")
    fox = doc.createNode("a red fox", "paintlayer")
    root.addChildNode(fox, bg)
    fox.setPixelData(_square(64, 64, (0, 0, 255, 255)), 32, 32, 64, 64)
    doc.refreshProjection()
    doc.waitForDone()
    painted = bytes(fox.pixelData(0, 0, 256, 256))
    ctl = controller()
    ctl.set_setting("address", args["address"])
    ctl.set_setting("size", 256)
    ctl.connect_daemon()
    yield ("connected", lambda: ctl.state == "connected", 60)
    yield 0.5
    c["peak_before_mb"] = peak_mb()
    errors = []

    def shown_after_the_bad_ones():
        if ctl.error and ctl.error not in errors:
            errors.append(ctl.error)
        return ctl.frame_event is not None and ctl.frame_event.seq > 5

    ctl.set_live(True)
    yield ("a good frame after the bad ones", shown_after_the_bad_ones, 90)
    c["peak_after_mb"] = peak_mb()
    c["errors"] = errors
    c["status"] = status()
    c["frame_pixel"] = list(ctl.output.image.pixelColor(5, 5).getRgb()[:3])
    c["fox_untouched"] = bytes(fox.pixelData(0, 0, 256, 256)) == painted
    ctl.set_live(False)
    ctl.disconnect_daemon()
    yield 0.3
    doc.setModified(False)

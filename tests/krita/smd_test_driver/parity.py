"""One document read by the plugin, inside Krita, and exported as Krita's own
OpenRaster for ``smd-daemon render`` to read (compared by
tests/test_plugin_krita.py)."""

import json
import os

from krita import InfoObject, Krita

from .scenarios import _square, controller, mask_via_action, new_document


def _layer(doc, parent, above, name, rect, color):
    node = doc.createNode(name, "paintlayer")
    x, y, w, h = rect
    node.setPixelData(_square(w, h, color), x, y, w, h)
    parent.addChildNode(node, above)
    return node


def _record_backgrounds(sent: list) -> None:
    """Every background image the plugin's client sends from now on, in order (None: kept as it was)."""
    from smd_krita.transport import client as client_mod

    for name in ("set_scene", "update_scene"):
        original = getattr(client_mod.Client, name)

        def recording(self, *a, _original=original, **kw):
            sent.append(kw.get("background_image"))
            return _original(self, *a, **kw)

        setattr(client_mod.Client, name, recording)


def parity(args, out):
    """A realistic stack: automatic names, a masked bg: layer with a strength, a 50 % group of
    overlapping layers (two of them at 37 % and 61 %, a region at 37 %), a masked region, a sketch,
    a real filter layer (Levels, its automatic name), a fill layer, a clone layer, a hidden layer."""
    from krita import Selection

    app = Krita.instance()
    c = out["checks"]
    ctl = controller()
    sent = []
    _record_backgrounds(sent)
    doc, root, bg = new_document(128, "parity")
    doc.resizeImage(0, 0, 128, 96)
    yield ("document active", lambda: app.activeDocument() == doc, 10)
    meadow = _layer(doc, root, bg, "bg: a meadow | strength: 0.5", (0, 48, 128, 48), (60, 160, 60, 255))
    group = doc.createGroupLayer("characters")
    root.addChildNode(group, meadow)
    fox = _layer(doc, group, None, "a red fox", (8, 8, 40, 40), (0, 0, 255, 255))
    cat = _layer(doc, group, fox, "a cat", (30, 20, 40, 40), (255, 0, 0, 255))
    p5 = _layer(doc, group, group.childNodes()[-1], "Paint Layer 5", (60, 10, 30, 30), (0, 0, 0, 255))
    p6 = _layer(doc, group, p5, "Paint Layer 6", (75, 25, 30, 30), (0, 90, 0, 255))
    tree = _layer(doc, root, group, "a tree", (90, 40, 30, 50), (0, 120, 0, 255))
    sketch = _layer(doc, root, tree, "# sketch lines", (0, 0, 128, 4), (0, 0, 0, 255))
    whole = Selection()
    whole.select(0, 0, 128, 96, 255)
    # Its pixels are the whole picture below it, filtered: regions and sketch included.
    levels = doc.createFilterLayer("Filter Layer 1 (Levels)", app.filter("levels"), whole)
    root.addChildNode(levels, sketch)
    corner = Selection()
    corner.select(0, 80, 16, 16, 255)
    fill = doc.createFillLayer("Fill Layer 2", "color", InfoObject(), corner)  # a picture of its own
    root.addChildNode(fill, levels)
    clone = doc.createCloneLayer("Clone Layer 3", meadow)  # a picture of the meadow, moved
    clone.move(0, -40)
    root.addChildNode(clone, fill)
    _layer(doc, root, clone, "a hidden dog", (0, 60, 20, 20), (0, 0, 0, 255)).setVisible(False)
    doc.waitForDone()
    yield 0.5
    group.setOpacity(128)
    for node, opacity in ((cat, 94), (p5, 94), (p6, 156)):  # 37 % and 61 %: Krita rounds at each level
        node.setOpacity(opacity)
    mask_via_action(doc, meadow, 0, 0, 64, 96)  # the meadow shows on the left half only
    mask_via_action(doc, tree, 0, 0, 128, 60)  # the tree's top part only
    doc.refreshProjection()
    doc.waitForDone()
    yield 0.5

    ctl.set_setting("size", 128)
    ctl.set_setting("background_source", "canvas")
    ctl.set_setting("address", args["address"])
    ctl.connect_daemon()
    yield ("connected", lambda: ctl.state == "connected", 90)
    yield ("every layer read", lambda: ctl.rows and all(r.role for r in ctl.rows), 30)
    yield ("the background image sent", lambda: any(b is not None for b in sent), 30)
    # A session: Live, a stroke on a region and one on the meadow, each followed by the daemon's reading.
    ctl.set_live(True)
    yield ("a frame", lambda: ctl.frame_event is not None, 90)
    fox.setPixelData(_square(6, 6, (0, 0, 255, 255)), 10, 10, 6, 6)
    meadow.setPixelData(_square(4, 4, (60, 160, 60, 255)), 60, 50, 4, 4)
    yield 1.5
    ctl.set_live(False)
    c["updates"] = len(sent)
    c["backgrounds"] = []
    for i, image in enumerate(b for b in sent if b is not None):
        with open(os.path.join(args["out"], f"sent-{i}.raw"), "wb") as f:
            f.write(image)
        c["backgrounds"].append(f"sent-{i}.raw")
    reader = ctl.sync.reader
    snap = reader.snapshot(doc, ctl.output_size(), ctl.scene_settings())
    update = reader.build(doc, snap, full=True, canvas_image=True)
    folder = args["out"]
    planes = []
    for i, layer in enumerate(update.layers):
        if layer.alpha is not None:
            with open(os.path.join(folder, f"plane-{i}.raw"), "wb") as f:
                f.write(layer.alpha)
        planes.append(
            {
                "name": layer.name,
                "file": f"plane-{i}.raw" if layer.alpha is not None else None,
                "role": reader.role(layer.key),
                "code": reader.code(layer.key),
            }
        )
    with open(os.path.join(folder, "background.raw"), "wb") as f:
        f.write(update.background)
    c["size"] = list(update.size)
    c["rows"] = [[r.name, r.role, r.code] for r in ctl.rows]
    c["joins"] = {r.name: (ctl.sync.reader.reading(r.uid) or {}).get("joins_background") for r in ctl.rows}
    with open(os.path.join(folder, "planes.json"), "w") as f:
        json.dump(planes, f)
    c["exported"] = doc.exportImage(args["ora"], InfoObject())
    doc.setModified(False)

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


def parity(args, out):
    """A realistic stack: automatic names, a masked bg: layer, a 50 % group of overlapping layers
    (two of them at 37 % and 61 %, a region at 37 %), a masked region, a sketch, a filter layer's
    default name, a hidden layer."""
    app = Krita.instance()
    c = out["checks"]
    ctl = controller()
    doc, root, bg = new_document(128, "parity")
    doc.resizeImage(0, 0, 128, 96)
    yield ("document active", lambda: app.activeDocument() == doc, 10)
    meadow = _layer(doc, root, bg, "bg: a meadow", (0, 48, 128, 48), (60, 160, 60, 255))
    group = doc.createGroupLayer("characters")
    root.addChildNode(group, meadow)
    fox = _layer(doc, group, None, "a red fox", (8, 8, 40, 40), (0, 0, 255, 255))
    cat = _layer(doc, group, fox, "a cat", (30, 20, 40, 40), (255, 0, 0, 255))
    p5 = _layer(doc, group, group.childNodes()[-1], "Paint Layer 5", (60, 10, 30, 30), (0, 0, 0, 255))
    p6 = _layer(doc, group, p5, "Paint Layer 6", (75, 25, 30, 30), (0, 90, 0, 255))
    tree = _layer(doc, root, group, "a tree", (90, 40, 30, 50), (0, 120, 0, 255))
    sketch = _layer(doc, root, tree, "# sketch", (0, 0, 128, 2), (0, 0, 0, 255))
    levels = _layer(doc, root, sketch, "Filter Layer 1 (Levels)", (100, 0, 20, 20), (255, 255, 255, 255))
    _layer(doc, root, levels, "a hidden dog", (0, 60, 20, 20), (0, 0, 0, 255)).setVisible(False)
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
    with open(os.path.join(folder, "planes.json"), "w") as f:
        json.dump(planes, f)
    c["exported"] = doc.exportImage(args["ora"], InfoObject())
    doc.setModified(False)

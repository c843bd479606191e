"""Control layers in real Krita: the plugin reads a ``control:`` layer as the artist sees it (inside
a 50 % group, a half-transparent stroke) and sends it as RGB; an edit of it alone resends it alone;
the document is exported as Krita's own OpenRaster for ``smd-daemon render`` to read (compared by
tests/test_plugin_krita.py)."""

import os

from krita import InfoObject, Krita

from .scenarios import _square, controller, new_document

LINES = "control: lineart | strength: 0.8"


def _record_layers(sent: list) -> None:
    """Every update's layers from now on, as (name, picture bytes or None)."""
    from smd_krita.transport import client as client_mod

    for name, at in (("set_scene", 2), ("update_scene", 0)):
        original = getattr(client_mod.Client, name)

        def recording(self, *a, _original=original, _at=at, **kw):
            layers = kw["layers"] if "layers" in kw else a[_at] if len(a) > _at else ()
            sent.append([(layer.name, layer.image) for layer in layers])
            return _original(self, *a, **kw)

        setattr(client_mod.Client, name, recording)


def _pictures(sent: list, start: int = 0) -> list:
    return [(name, image) for update in sent[start:] for name, image in update if image is not None]


def controls(args, out):
    app = Krita.instance()
    c = out["checks"]
    ctl = controller()
    sent = []
    _record_layers(sent)
    doc, root, bg = new_document(64, "controls")
    yield ("document active", lambda: app.activeDocument() == doc, 10)
    fox = doc.createNode("a red fox", "paintlayer")
    fox.setPixelData(_square(32, 32, (0, 0, 255, 255)), 0, 0, 32, 32)
    root.addChildNode(fox, bg)
    group = doc.createGroupLayer("sketches")
    root.addChildNode(group, fox)
    lines = doc.createNode(LINES, "paintlayer")
    lines.setPixelData(_square(64, 2, (0, 0, 0, 255)), 0, 20, 64, 2)  # a black line, B, G, R, A
    lines.setPixelData(_square(32, 2, (0, 0, 255, 128)), 0, 30, 32, 2)  # a half-transparent red one
    group.addChildNode(lines, None)
    empty = doc.createNode("control: depth", "paintlayer")
    root.addChildNode(empty, group)
    doc.waitForDone()
    yield 0.5
    group.setOpacity(128)
    doc.refreshProjection()
    doc.waitForDone()
    yield 0.5

    ctl.set_setting("size", 64)
    ctl.set_setting("address", args["address"])
    ctl.connect_daemon()
    yield ("connected", lambda: ctl.state == "connected", 90)
    yield ("every layer read", lambda: ctl.rows and all(r.role for r in ctl.rows), 30)
    yield ("the control picture sent", lambda: any(n == LINES for n, _ in _pictures(sent)), 30)
    # Its first update went before the daemon's reading (no picture: read `no_image`); then its picture.
    yield ("read as a control", lambda: any(r.name == LINES and r.role == "control" for r in ctl.rows), 30)
    c["rows"] = [[r.name, r.role, r.code, r.text] for r in ctl.rows]
    c["first_updates"] = [[name for name, _ in update] for update in sent]
    first = [image for name, image in _pictures(sent) if name == LINES][-1]
    with open(os.path.join(args["out"], "picture-0.raw"), "wb") as f:
        f.write(first)

    # An edit of the control layer alone: it alone goes, with its new picture.
    n = len(sent)
    lines.setPixelData(_square(64, 2, (0, 0, 0, 255)), 0, 44, 64, 2)
    doc.refreshProjection()
    yield ("the edited picture sent", lambda: bool(_pictures(sent, n)), 30)
    yield 1.0
    c["updates_after_edit"] = [[name for name, _ in update] for update in sent[n:]]
    edited = _pictures(sent, n)[-1][1]
    with open(os.path.join(args["out"], "picture-1.raw"), "wb") as f:
        f.write(edited)
    reading = ctl.sync.reader.reading(lines.uniqueId().toString()) or {}
    c["reading"] = {k: reading.get(k) for k in ("role", "kind", "strength", "start", "end")}
    c["empty_reading"] = ctl.sync.reader.reading(empty.uniqueId().toString())
    c["exported"] = doc.exportImage(args["ora"], InfoObject())
    doc.setModified(False)

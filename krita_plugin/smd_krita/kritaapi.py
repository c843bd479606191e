"""Every call into Krita's API lives here, so the rest of the plugin can be
tested against a fake ``krita`` module and survives API changes in one place.

Facts this relies on (Krita 5.1/5.2): ``childNodes()`` lists bottom to top;
``pixelData`` of RGBA/U8 is B,G,R,A; groups have no ``pixelData`` but a
``projectionPixelData``; ``setPixelData`` does not mark the document modified
while adding a layer does.
"""

from __future__ import annotations

import json
import zlib
from dataclasses import dataclass

from krita import Krita
from PyQt5.QtCore import QByteArray, QRect, Qt, QTimer
from PyQt5.QtGui import QImage, QPainter

try:
    from PyQt5 import sip
except ImportError:  # PyQt5 before 5.11 ships sip on its own
    import sip

from . import pixels

PREVIEW_NAME = "SMD Preview"
RESULT_NAME = "SMD Result"
ANNOTATION = "smd-live"  # per-document settings, stored inside the .kra
FINGERPRINT_SIZE = 96  # thumbnail side used only to notice pixel changes cheaply

# bytes per pixel and offset of the (most significant byte of the) alpha channel
_ALPHA_LAYOUT = {("RGBA", "U8"): (4, 3), ("RGBA", "U16"): (8, 7), ("GRAYA", "U8"): (2, 1),
                 ("GRAYA", "U16"): (4, 3), ("CMYKA", "U8"): (5, 4), ("CMYKA", "U16"): (10, 9),
                 ("LABA", "U8"): (4, 3), ("LABA", "U16"): (8, 7), ("XYZA", "U8"): (4, 3),
                 ("XYZA", "U16"): (8, 7), ("YCbCrA", "U8"): (4, 3), ("YCbCrA", "U16"): (8, 7)}
_WRITABLE = {("RGBA", "U8"), ("RGBA", "U16")}


class Unsupported(Exception):
    """The document cannot be used as it is; the message says what to do."""


@dataclass
class Layer:
    node: object
    name: str
    uid: str
    kind: str
    visible: bool  # visible itself and all its parents
    locked: bool
    opacity: float
    depth: int


def app():
    return Krita.instance()


def active_document():
    return app().activeDocument()


def read_setting(group: str, key: str, default: str = "") -> str:
    """A value from Krita's own config file (kritarc)."""
    return app().readSetting(group, key, default)


def write_setting(group: str, key: str, value: str) -> None:
    app().writeSetting(group, key, value)


def canvas_size(doc) -> tuple[int, int]:
    return doc.width(), doc.height()


def color_problem(doc, writing: bool = False) -> str:
    """Why this document's pixels cannot be used ('' when they can)."""
    key = (doc.colorModel(), doc.colorDepth())
    if key not in _ALPHA_LAYOUT:
        return (f"{key[0]} {key[1]} documents are not supported: use Image > Convert Image Color Space "
                "to RGB/Alpha 8-bit or 16-bit integer")
    if writing and key not in _WRITABLE:
        return (f"the live preview needs an RGB document (8 or 16-bit integer), not {key[0]} {key[1]}: "
                "use Image > Convert Image Color Space")
    return ""


def layers(doc) -> list[Layer]:
    """All layers bottom to top; a group comes right before its children.

    The plugin's preview layer is left out: it is never input.
    """
    out: list[Layer] = []

    def walk(parent, depth, parent_visible):
        for node in parent.childNodes():
            kind = node.type()
            if kind.endswith("mask"):
                continue
            name = node.name()
            if name == PREVIEW_NAME:
                continue
            visible = parent_visible and node.visible()
            out.append(Layer(node, name, node.uniqueId().toString(), kind, visible, node.locked(),
                             node.opacity() / 255.0, depth))
            if kind == "grouplayer":
                walk(node, depth + 1, visible)

    walk(doc.rootNode(), 0, True)
    return out


def fingerprint(layer: Layer) -> tuple:
    """Changes whenever the layer's name, visibility, place or pixels change.

    Krita caches thumbnails until the pixels change, so this is cheap to poll.
    """
    b = layer.node.bounds()
    thumb = layer.node.thumbnail(FINGERPRINT_SIZE, FINGERPRINT_SIZE)
    ptr = thumb.constBits()
    crc = 0
    if ptr is not None:
        ptr.setsize(thumb.bytesPerLine() * thumb.height())
        crc = zlib.crc32(bytes(ptr))
    return (layer.name, layer.visible, layer.opacity, b.x(), b.y(), b.width(), b.height(), crc)


def _visible_rect(doc, node) -> QRect:
    return node.bounds().intersected(QRect(0, 0, doc.width(), doc.height()))


def _raw(doc, layer: Layer, r: QRect) -> QByteArray:
    if layer.kind in ("grouplayer", "filelayer", "clonelayer", "filllayer", "vectorlayer"):
        return layer.node.projectionPixelData(r.x(), r.y(), r.width(), r.height())
    return layer.node.pixelData(r.x(), r.y(), r.width(), r.height())


def _view(data: QByteArray, r: QRect, bpl: int, fmt) -> QImage:
    """A QImage over the QByteArray's memory, without copying it: use it while ``data`` lives."""
    return QImage(sip.voidptr(data), r.width(), r.height(), bpl, fmt)


def read_alpha(doc, layer: Layer, out_w: int, out_h: int) -> bytes:
    """The layer's alpha over the canvas, scaled to out_w x out_h, one byte per pixel.

    Pixels outside the canvas are cut off; a group's alpha is its projection.
    """
    problem = color_problem(doc)
    if problem:
        raise Unsupported(problem)
    r = _visible_rect(doc, layer.node)
    if r.isEmpty():
        return bytes(out_w * out_h)
    data = _raw(doc, layer, r)
    bpp, off = _ALPHA_LAYOUT[(doc.colorModel(), doc.colorDepth())]
    if bpp == 4 and off == 3:
        img = _view(data, r, r.width() * 4, QImage.Format_ARGB32)
    else:
        data = bytes(data)[off::bpp]  # every bpp-th byte is (the high byte of) alpha
        img = QImage(data, r.width(), r.height(), r.width(), QImage.Format_Alpha8)
    sx, sy = out_w / doc.width(), out_h / doc.height()
    return pixels.alpha_of(pixels.place([(img, r, 1.0)], out_w, out_h, sx, sy))


def read_composite(doc, chosen: list[Layer], out_w: int, out_h: int) -> bytes:
    """RGB composite (normal blending, layer opacity) of the chosen layers at output size.

    Only RGBA documents: other colour models are read for alpha alone.
    """
    if doc.colorModel() != "RGBA" or doc.colorDepth() not in ("U8", "U16"):
        raise Unsupported(color_problem(doc, writing=True) or "the canvas background needs an RGB document")
    sx, sy = out_w / doc.width(), out_h / doc.height()
    pieces, keep = [], []
    for layer in chosen:
        r = _visible_rect(doc, layer.node)
        if r.isEmpty():
            continue
        data = _raw(doc, layer, r)
        if doc.colorDepth() == "U8":
            img = _view(data, r, r.width() * 4, QImage.Format_ARGB32)
            keep.append(data)  # the view's memory, until the pieces are drawn
        else:
            img = _view(data, r, r.width() * 8, QImage.Format_RGBA64).rgbSwapped()
        pieces.append((img, r, layer.opacity))
    img = pixels.place(pieces, out_w, out_h, sx, sy)
    flat = QImage(out_w, out_h, QImage.Format_RGB888)
    flat.fill(Qt.white)  # transparent canvas reads as white paper
    p = QPainter(flat)
    p.drawImage(0, 0, img)
    p.end()
    return pixels.packed_bytes(flat, 3)


# ------------------------------------------------------------ writing

def _canvas_bytes(doc, frame: QImage):
    """The frame at canvas size in the document's pixel layout, and the object owning the bytes."""
    if doc.colorDepth() == "U16":
        data = pixels.to_canvas_bgra16(frame, doc.width(), doc.height())
        return data, data
    return pixels.to_canvas_bgra(frame, doc.width(), doc.height())


def find_preview(doc):
    for node in doc.rootNode().childNodes():
        if node.name() == PREVIEW_NAME:
            return node
    return None


def write_preview(doc, frame: QImage):
    """Put the frame, scaled to the canvas, into the locked preview layer on top.

    The document's modified flag is left as it was: a live preview is not an
    edit by the artist.
    """
    problem = color_problem(doc, writing=True)
    if problem:
        raise Unsupported(problem)
    was_modified = doc.modified()
    node = find_preview(doc)
    root = doc.rootNode()
    children = root.childNodes()
    moved = True
    if node is None:
        node = doc.createNode(PREVIEW_NAME, "paintlayer")
        root.addChildNode(node, children[-1] if children else None)
    elif children and children[-1].name() != PREVIEW_NAME:
        # Someone added a layer above it: move the preview back on top.
        node.remove()
        root.addChildNode(node, root.childNodes()[-1] if root.childNodes() else None)
    else:
        moved = False
    w, h = doc.width(), doc.height()
    data, _owner = _canvas_bytes(doc, frame)
    # setPixelData writes into locked layers too; the lock keeps the artist's brush off it.
    # Flags are only touched when they are wrong: each change makes Krita redraw its layer list.
    node.setPixelData(data, 0, 0, w, h)
    if not node.locked():
        node.setLocked(True)
    if not node.visible():
        node.setVisible(True)
    doc.refreshProjection()
    if moved:  # only layer changes touch the modified flag; an artist's edit must keep it
        _keep_unmodified(doc, was_modified)
    return node


def remove_preview(doc) -> bool:
    node = find_preview(doc)
    if node is None:
        return False
    was_modified = doc.modified()
    node.remove()
    doc.refreshProjection()
    _keep_unmodified(doc, was_modified)
    return True


def _keep_unmodified(doc, was_modified: bool) -> None:
    """Adding or removing the preview is not an edit: leave the modified flag as it was.

    Krita sets the flag through a queued signal after a layer is added or
    removed, so it is cleared again once that signal has been delivered.
    """
    if was_modified:
        return
    if doc.modified():
        doc.setModified(False)
    QTimer.singleShot(0, lambda: doc.setModified(False) if doc.modified() else None)


def apply_frame(doc, frame: QImage, name: str = RESULT_NAME):
    """A new ordinary paint layer holding the frame, added as one undoable step.

    Krita's own "new paint layer" action makes the undo step; the pixels are
    written into that new layer before any other event runs, so undo removes
    layer and pixels together.
    """
    problem = color_problem(doc, writing=True)
    if problem:
        raise Unsupported(problem)
    win = app().activeWindow()
    view = win.activeView() if win else None
    if view is None or view.document() != doc:
        raise Unsupported("the document has no active view to apply into")
    # New layers go above the active one: make that the artist's top layer.
    top = [n for n in doc.rootNode().childNodes() if n.name() != PREVIEW_NAME]
    if top:
        doc.setActiveNode(top[-1])
    before = {n.uniqueId().toString() for n in doc.rootNode().childNodes()}
    app().action("add_new_paint_layer").trigger()
    doc.waitForDone()
    new = [n for n in doc.rootNode().childNodes() if n.uniqueId().toString() not in before]
    if len(new) != 1:
        raise Unsupported("Krita did not add the new layer (is the active layer locked?)")
    node = new[0]
    node.setName(f"{name} {sum(1 for n in doc.rootNode().childNodes() if n.name().startswith(name))}")
    w, h = doc.width(), doc.height()
    data, _owner = _canvas_bytes(doc, frame)
    node.setPixelData(data, 0, 0, w, h)
    doc.refreshProjection()
    return node


# ------------------------------------------------------------ per-document settings

def load_document_settings(doc) -> dict:
    try:
        raw = bytes(doc.annotation(ANNOTATION))
        return json.loads(raw.decode("utf-8")) if raw else {}
    except (ValueError, UnicodeDecodeError):
        return {}


def save_document_settings(doc, settings: dict) -> None:
    data = json.dumps(settings, sort_keys=True).encode("utf-8")
    if bytes(doc.annotation(ANNOTATION) or b"") == data:
        return
    doc.setAnnotation(ANNOTATION, "SMD Live settings", QByteArray(data))

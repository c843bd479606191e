"""Reading layers as the artist sees them: alpha planes for regions and the
canvas image, at the output size.

A layer is read from its projection (its own masks applied), then its
opacity times every enclosing group's opacity scales its alpha (rounded
once, exactly: ``round(alpha * factor)``), then the enclosing groups'
transparency masks multiply it. ``smd-daemon render`` applies the same rule
to an OpenRaster file.
"""

from __future__ import annotations

from PyQt5.QtCore import QByteArray, QRect, QRectF, Qt
from PyQt5.QtGui import QImage, QPainter

try:
    from PyQt5 import sip
except ImportError:  # PyQt5 before 5.11 ships sip on its own
    import sip

from .. import pixels
from .document import ALPHA_LAYOUT, Layer, Unsupported, color_problem

_SCALE_TABLES: dict[float, bytes] = {}


def scale_table(factor: float) -> bytes:
    """A bytes.translate table: a -> round(a * factor), halves up."""
    table = _SCALE_TABLES.get(factor)
    if table is None:
        table = bytes(min(255, int(a * factor + 0.5)) for a in range(256))
        if len(_SCALE_TABLES) > 64:
            _SCALE_TABLES.clear()
        _SCALE_TABLES[factor] = table
    return table


def _visible_rect(doc, node) -> QRect:
    return node.bounds().intersected(QRect(0, 0, doc.width(), doc.height()))


def _view(data: QByteArray, r: QRect, bpl: int, fmt) -> QImage:
    """A QImage over the QByteArray's memory, without copying it: use it while ``data`` lives."""
    return QImage(sip.voidptr(data), r.width(), r.height(), bpl, fmt)


def _projection(layer: Layer, r: QRect) -> QByteArray:
    # Every kind of layer has a projection; for a paint layer it is its pixels with its masks applied.
    return layer.node.projectionPixelData(r.x(), r.y(), r.width(), r.height())


def _mask_plane(doc, mask, r: QRect) -> QImage:
    """A transparency mask over ``r`` as an 8-bit alpha image (0 hides, 255 shows)."""
    data = bytes(mask.pixelData(r.x(), r.y(), r.width(), r.height()))
    if len(data) != r.width() * r.height():  # Krita gave nothing: the mask hides nothing
        img = QImage(r.width(), r.height(), QImage.Format_Alpha8)
        img.fill(Qt.white)
        return img
    return QImage(data, r.width(), r.height(), r.width(), QImage.Format_Alpha8).copy()


def _apply_masks(doc, masks: list, img: QImage, r: QRect) -> QImage:
    """Multiply the image's alpha by transparency masks (over the canvas rectangle ``r``)."""
    if not masks:
        return img
    out = img.convertToFormat(QImage.Format_ARGB32_Premultiplied)
    p = QPainter(out)
    p.setCompositionMode(QPainter.CompositionMode_DestinationIn)
    for mask in masks:
        p.drawImage(0, 0, _mask_plane(doc, mask, r))
    p.end()
    return out


def _seen_u8(doc, layer: Layer, r: QRect, factor: float, masks: list) -> tuple[QImage, object]:
    """An RGBA/U8 layer's pixels over ``r``, its alpha times ``factor`` (rounded once) and
    through ``masks``: (ARGB32 image, the buffer it lives in)."""
    data = _projection(layer, r)
    if factor < 1.0:
        buf = bytearray(data)
        buf[3::4] = bytes(buf[3::4]).translate(scale_table(factor))
        data = QByteArray(bytes(buf))
    img = _view(data, r, r.width() * 4, QImage.Format_ARGB32)
    return _apply_masks(doc, masks, img, r), data


def read_alpha(doc, layer: Layer, out_w: int, out_h: int) -> bytes:
    """The layer's alpha as the artist sees it, over the canvas, scaled to
    out_w x out_h, one byte per pixel. Pixels outside the canvas are cut off."""
    problem = color_problem(doc)
    if problem:
        raise Unsupported(problem)
    r = _visible_rect(doc, layer.node)
    if r.isEmpty() or layer.factor <= 0.0:
        return bytes(out_w * out_h)
    bpp, off = ALPHA_LAYOUT[(doc.colorModel(), doc.colorDepth())]
    keep = None
    if bpp == 4 and off == 3:
        img, keep = _seen_u8(doc, layer, r, layer.factor, layer.group_masks)
    else:
        alpha = bytes(_projection(layer, r))[off::bpp]  # every bpp-th byte is (the high byte of) alpha
        if layer.factor < 1.0:
            alpha = alpha.translate(scale_table(layer.factor))
        img = _apply_masks(doc, layer.group_masks, QImage(alpha, r.width(), r.height(), r.width(),
                                                          QImage.Format_Alpha8), r)
    sx, sy = out_w / doc.width(), out_h / doc.height()
    out = pixels.alpha_of(pixels.place([(img, r, 1.0)], out_w, out_h, sx, sy))
    del keep
    return out


def read_composite(doc, layers: list[Layer], chosen: set, out_w: int, out_h: int) -> bytes:
    """RGB composite (normal blending) of the ``chosen`` layers (uids) over
    white, at output size, as the artist sees them: each at its own opacity;
    a group below full opacity, or with transparency masks, composited as
    Krita does, its layers together first, then the result at the group's
    opacity through its masks (a 50 % group is half there, however its
    layers overlap).

    Only RGBA documents: other colour models are read for alpha alone.
    """
    if doc.colorModel() != "RGBA" or doc.colorDepth() not in ("U8", "U16"):
        raise Unsupported(color_problem(doc, writing=True) or "the canvas background needs an RGB document")
    children: dict[str, list] = {}
    for layer in layers:
        children.setdefault(layer.parent, []).append(layer)
    wanted = set()  # groups holding a chosen layer
    for layer in layers:
        if layer.uid in chosen and layer.visible:
            wanted.add(layer.parent)
    for layer in reversed(layers):  # children come after their group: walk up
        if layer.is_group and layer.uid in wanted:
            wanted.add(layer.parent)
    canvas = _Canvas(doc, out_w, out_h)
    img = canvas.compose(children, chosen, wanted, "")
    flat = QImage(out_w, out_h, QImage.Format_RGB888)
    flat.fill(Qt.white)  # transparent canvas reads as white paper
    p = QPainter(flat)
    p.drawImage(0, 0, img)
    p.end()
    return pixels.packed_bytes(flat, 3)


class _Canvas:
    """Composites layers into images at output size (see read_composite)."""

    def __init__(self, doc, out_w: int, out_h: int):
        self.doc, self.out_w, self.out_h = doc, out_w, out_h
        self.sx, self.sy = out_w / doc.width(), out_h / doc.height()

    def compose(self, children: dict, chosen: set, wanted: set, parent: str) -> QImage:
        pieces, keep = [], []
        for layer in children.get(parent, []):  # bottom to top
            if not layer.visible:
                continue
            if layer.is_group:
                if layer.uid not in wanted:
                    continue
                masks = [m for m in layer.own_masks if m.type() == "transparencymask" and m.visible()]
                sub = self.compose(children, chosen, wanted, layer.uid)
                whole = QRect(0, 0, self.doc.width(), self.doc.height())
                if masks:
                    sub = self._masked(sub, masks, whole)
                pieces.append((sub, whole, layer.opacity, True))
            elif layer.uid in chosen:
                r = _visible_rect(self.doc, layer.node)
                if r.isEmpty() or layer.opacity <= 0.0:
                    continue
                if self.doc.colorDepth() == "U8":
                    img, data = _seen_u8(self.doc, layer, r, layer.opacity, [])
                    keep.append(data)  # the view's memory, until the pieces are drawn
                    pieces.append((img, r, 1.0, False))
                else:
                    img = _view(_projection(layer, r), r, r.width() * 8, QImage.Format_RGBA64).rgbSwapped()
                    pieces.append((img, r, layer.opacity, False))
        out = QImage(self.out_w, self.out_h, QImage.Format_ARGB32_Premultiplied)
        out.fill(Qt.transparent)
        p = QPainter(out)
        p.setRenderHint(QPainter.SmoothPixmapTransform, True)
        for img, r, opacity, at_output_size in pieces:
            p.setOpacity(opacity)
            if at_output_size:
                p.drawImage(0, 0, img)
            else:
                p.drawImage(QRectF(r.x() * self.sx, r.y() * self.sy, r.width() * self.sx, r.height() * self.sy),
                            img)
        p.end()
        return out

    def _masked(self, img: QImage, masks: list, whole: QRect) -> QImage:
        p = QPainter(img)
        p.setRenderHint(QPainter.SmoothPixmapTransform, True)
        p.setCompositionMode(QPainter.CompositionMode_DestinationIn)
        for mask in masks:
            p.drawImage(QRectF(0, 0, self.out_w, self.out_h), _mask_plane(self.doc, mask, whole))
        p.end()
        return img

"""Reading layers as the artist sees them: alpha planes for regions, the
canvas image and control layers' pictures, at the output size.

A layer is read from its projection (its own masks applied); its own
opacity, then each enclosing group's, scales its alpha, rounded to 8 bits at
each level as Krita composites it (a pass-through group's opacity is merged
into its layers' instead); then the enclosing groups' transparency masks
multiply it. ``smd-daemon render`` applies the same rule to an
OpenRaster file.

The canvas image is composited in 16 bits per channel and rounded to 8 bits
once: Krita composites in floating point, and 8-bit compositing of alpha
pre-scaled by opacity drifts 2/255 from it with two layers below full
opacity. Opacity is applied exactly: QPainter's own opacity n/255 acts as
(n - 1)/255 (measured with Qt 5.15).
"""

from __future__ import annotations

from .. import pixels
from ..qt import QByteArray, QColor, QImage, QPainter, QRect, QRectF, Qt, image_over
from .document import ALPHA_LAYOUT, Layer, Unsupported, color_problem

_SCALE_TABLES: dict[tuple, bytes] = {}


def scale_table(opacities: tuple) -> bytes:
    """A bytes.translate table: alpha as seen through ``opacities`` (in 255ths: the layer's own,
    then each enclosing group's), rounded at each level as Krita does (an exact half cannot occur)."""
    table = _SCALE_TABLES.get(opacities)
    if table is None:
        values = range(256)
        for n in opacities:
            if n < 255:
                values = [(a * n * 2 + 255) // 510 for a in values]  # round(a * n / 255) in integers
        table = bytes(values)
        if len(_SCALE_TABLES) > 64:
            _SCALE_TABLES.clear()
        _SCALE_TABLES[opacities] = table
    return table


def _visible_rect(doc, node) -> QRect:
    return node.bounds().intersected(QRect(0, 0, doc.width(), doc.height()))


def _view(data: QByteArray, r: QRect, bpl: int, fmt: QImage.Format) -> QImage:
    """A QImage over the QByteArray's memory, without copying it: use it while ``data`` lives."""
    return image_over(data, r.width(), r.height(), bpl, fmt)


def _projection(layer: Layer, r: QRect) -> QByteArray:
    # Every kind of layer has a projection; for a paint layer it is its pixels with its masks applied.
    return layer.node.projectionPixelData(r.x(), r.y(), r.width(), r.height())


def _mask_plane(doc, mask, r: QRect) -> QImage:
    """A transparency mask over ``r`` as an 8-bit alpha image (0 hides, 255 shows)."""
    data = mask.pixelData(r.x(), r.y(), r.width(), r.height()).data()
    if len(data) != r.width() * r.height():  # Krita gave nothing: the mask hides nothing
        img = QImage(r.width(), r.height(), QImage.Format.Format_Alpha8)
        img.fill(Qt.GlobalColor.white)
        return img
    return QImage(data, r.width(), r.height(), r.width(), QImage.Format.Format_Alpha8).copy()


def _apply_masks(doc, masks: list, img: QImage, r: QRect) -> QImage:
    """Multiply the image's alpha by transparency masks (over the canvas rectangle ``r``)."""
    if not masks:
        return img
    out = img.convertToFormat(QImage.Format.Format_ARGB32_Premultiplied)
    p = QPainter(out)
    p.setCompositionMode(QPainter.CompositionMode.CompositionMode_DestinationIn)
    for mask in masks:
        p.drawImage(0, 0, _mask_plane(doc, mask, r))
    p.end()
    return out


def _seen_u8(doc, layer: Layer, r: QRect, opacities: tuple, masks: list) -> tuple[QImage, object]:
    """An RGBA/U8 layer's pixels over ``r``, its alpha through ``opacities`` (see scale_table)
    and ``masks``: (ARGB32 image, the buffer it lives in)."""
    data = _projection(layer, r)
    if any(n < 255 for n in opacities):
        buf = bytearray(data.data())
        buf[3::4] = bytes(buf[3::4]).translate(scale_table(opacities))
        data = QByteArray(bytes(buf))
    img = _view(data, r, r.width() * 4, QImage.Format.Format_ARGB32)
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
        img, keep = _seen_u8(doc, layer, r, layer.opacities, layer.group_masks)
    else:
        alpha = _projection(layer, r).data()[off::bpp]  # every bpp-th byte is (the high byte of) alpha
        if layer.factor < 1.0:
            alpha = alpha.translate(scale_table(layer.opacities))
        img = _apply_masks(
            doc, layer.group_masks, QImage(alpha, r.width(), r.height(), r.width(), QImage.Format.Format_Alpha8), r
        )
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
    flat = QImage(out_w, out_h, QImage.Format.Format_RGBA64_Premultiplied)
    flat.fill(Qt.GlobalColor.white)  # transparent canvas reads as white paper
    p = QPainter(flat)
    p.drawImage(0, 0, img)
    p.end()
    return pixels.packed_bytes(flat.convertToFormat(QImage.Format.Format_RGB888), 3)


def read_picture(doc, layers: list[Layer], layer: Layer, out_w: int, out_h: int) -> bytes | None:
    """A control layer's picture: the layer alone as the artist sees it, over white paper (its own
    and its groups' opacity and masks), RGB at output size; None where the document's colours
    cannot be composited (the daemon then says the picture is missing)."""
    try:
        return read_composite(doc, layers, {layer.uid}, out_w, out_h)
    except Unsupported:
        return None


def _at_opacity(img: QImage, opacity: int) -> QImage:
    """The image with its alpha times ``opacity`` (in 255ths), in 16 bits per channel (premultiplied)
    when it is below 255; at full opacity the image as it is (drawn onto a 16-bit canvas, it
    composites the same, without a copy of a whole layer: measured)."""
    if opacity >= 255:
        return img
    out = img.convertToFormat(QImage.Format.Format_RGBA64_Premultiplied)
    p = QPainter(out)
    p.setCompositionMode(QPainter.CompositionMode.CompositionMode_DestinationIn)
    p.fillRect(out.rect(), QColor.fromRgba64(0, 0, 0, opacity * 257))
    p.end()
    return out


class _Canvas:
    """Composites layers into images at output size, 16 bits per channel (see read_composite)."""

    def __init__(self, doc, out_w: int, out_h: int):
        self.doc, self.out_w, self.out_h = doc, out_w, out_h
        self.sx, self.sy = out_w / doc.width(), out_h / doc.height()

    def compose(self, children: dict, chosen: set, wanted: set, parent: str) -> QImage:
        out = QImage(self.out_w, self.out_h, QImage.Format.Format_RGBA64_Premultiplied)
        out.fill(Qt.GlobalColor.transparent)
        p = QPainter(out)
        p.setRenderHint(QPainter.RenderHint.SmoothPixmapTransform, True)
        self._draw(p, children, chosen, wanted, parent)
        p.end()
        return out

    def _draw(self, p: QPainter, children: dict, chosen: set, wanted: set, parent: str) -> None:
        for layer in children.get(parent, []):  # bottom to top, each drawn at once: one layer in memory
            if not layer.visible:
                continue
            if layer.is_group:
                if layer.uid not in wanted:
                    continue
                if layer.pass_through:  # its layers straight onto this canvas, each with its opacity
                    self._draw(p, children, chosen, wanted, layer.uid)
                    continue
                masks = [m for m in layer.own_masks if m.type() == "transparencymask" and m.visible()]
                sub = self.compose(children, chosen, wanted, layer.uid)
                if masks:
                    sub = self._masked(sub, masks, QRect(0, 0, self.doc.width(), self.doc.height()))
                p.drawImage(0, 0, _at_opacity(sub, layer.opacities[0]))
            elif layer.uid in chosen:
                r = _visible_rect(self.doc, layer.node)
                if r.isEmpty() or layer.opacities[0] <= 0:
                    continue
                data = _projection(layer, r)
                if self.doc.colorDepth() == "U8":
                    img = _view(data, r, r.width() * 4, QImage.Format.Format_ARGB32)
                else:
                    img = _view(data, r, r.width() * 8, QImage.Format.Format_RGBA64).rgbSwapped()
                target = QRectF(r.x() * self.sx, r.y() * self.sy, r.width() * self.sx, r.height() * self.sy)
                p.drawImage(target, _at_opacity(img, layer.opacities[0]))  # drawn while data lives

    def _masked(self, img: QImage, masks: list, whole: QRect) -> QImage:
        p = QPainter(img)
        p.setRenderHint(QPainter.RenderHint.SmoothPixmapTransform, True)
        p.setCompositionMode(QPainter.CompositionMode.CompositionMode_DestinationIn)
        for mask in masks:
            p.drawImage(QRectF(0, 0, self.out_w, self.out_h), _mask_plane(self.doc, mask, whole))
        p.end()
        return img

"""Pixel helpers on QImage (no numpy inside Krita).

Planes travel as tightly packed bytes: alpha planes one byte per pixel,
frames three (RGB) or four (BGRA, Krita's order for RGBA/U8 documents).
"""

from __future__ import annotations

from PyQt5.QtCore import QBuffer, QByteArray, QIODevice, QRectF, QSize, Qt
from PyQt5.QtGui import QImage, QImageReader, QPainter


def packed_bytes(img: QImage, bytes_per_pixel: int, qt: bool = False):
    """The image's pixels without the padding Qt may add at the end of each row.

    ``qt=True`` gives a QByteArray, which Krita's setPixelData takes without
    converting it again (a 16 MB copy saved per frame at 2048x2048).
    """
    w, h = img.width(), img.height()
    row = w * bytes_per_pixel
    ptr = img.constBits()
    ptr.setsize(img.bytesPerLine() * h)
    if img.bytesPerLine() == row:
        return QByteArray(ptr.asstring(row * h)) if qt else ptr.asstring(row * h)
    data = bytes(ptr)
    bpl = img.bytesPerLine()
    data = b"".join(data[y * bpl : y * bpl + row] for y in range(h))
    return QByteArray(data) if qt else data


def from_bytes(data: bytes, width: int, height: int, fmt: QImage.Format, bytes_per_pixel: int) -> QImage:
    """A QImage that owns a copy of ``data`` (tightly packed rows)."""
    if len(data) != width * height * bytes_per_pixel:
        raise ValueError(f"{len(data)} bytes do not make a {width}x{height} image of {bytes_per_pixel} bytes/pixel")
    return QImage(data, width, height, width * bytes_per_pixel, fmt).copy()


def place(pieces, out_w: int, out_h: int, scale_x: float, scale_y: float) -> QImage:
    """Draw (QImage, canvas QRect, opacity) pieces onto a transparent out_w x out_h image.

    Each piece covers its rectangle in canvas pixels; the canvas maps to the
    output by (scale_x, scale_y). Anything outside the canvas is clipped.
    """
    out = QImage(out_w, out_h, QImage.Format_ARGB32_Premultiplied)
    out.fill(Qt.transparent)
    p = QPainter(out)
    p.setRenderHint(QPainter.SmoothPixmapTransform, True)
    for img, rect, opacity in pieces:
        p.setOpacity(opacity)
        target = QRectF(rect.x() * scale_x, rect.y() * scale_y, rect.width() * scale_x, rect.height() * scale_y)
        p.drawImage(target, img)
    p.end()
    return out


def alpha_of(img: QImage) -> bytes:
    """The alpha channel as one byte per pixel."""
    return packed_bytes(img.convertToFormat(QImage.Format_Alpha8), 1)


def frame_image(data: bytes, width: int, height: int, channels: int = 3) -> QImage:
    """A daemon frame (RGB or RGBA bytes) as a QImage."""
    fmt = QImage.Format_RGB888 if channels == 3 else QImage.Format_RGBA8888
    return from_bytes(data, width, height, fmt, channels)


_QT_FORMATS = {"png": b"png", "jpeg": b"jpeg", "webp": b"webp"}


def decode_frame(encoding: str, data: bytes, width: int, height: int, channels: int) -> QImage:
    """A daemon frame or result as a QImage of exactly ``width`` x ``height`` (a
    null image when it is not one). An encoded frame is decoded only with the
    reader of its own format, and only once its file header has named that size:
    a small file that names a huge image allocates nothing."""
    if encoding == "raw":
        try:
            return frame_image(data, width, height, channels)
        except ValueError:
            return QImage()
    if encoding not in _QT_FORMATS:
        return QImage()
    buffer = QBuffer()
    buffer.setData(QByteArray(data))
    buffer.open(QIODevice.ReadOnly)
    reader = QImageReader(buffer, _QT_FORMATS[encoding])
    reader.setAutoDetectImageFormat(False)  # a PNG sent as "jpeg" is not decoded as a PNG
    if reader.size() != QSize(width, height):
        return QImage()
    img = reader.read()
    return img if img.size() == QSize(width, height) else QImage()


def to_canvas_bgra(img: QImage, width: int, height: int):
    """Scale to the canvas; returns (B,G,R,A bytes as a QByteArray, the image they live in).

    The bytes are not copied out of the image (a 16 MB copy at 2048x2048
    costs ~10 ms inside Krita): keep the image alive while using them.
    Opaque frames stay RGB32 (bytes B,G,R,0xFF on little-endian machines,
    exactly Krita's RGBA/U8 order), so no conversion follows the scaling.
    """
    fmt = QImage.Format_ARGB32 if img.hasAlphaChannel() else QImage.Format_RGB32
    out = img.convertToFormat(fmt)
    if (out.width(), out.height()) != (width, height):
        out = out.scaled(width, height, Qt.IgnoreAspectRatio, Qt.SmoothTransformation)
        if out.format() != fmt:
            out = out.convertToFormat(fmt)
    ptr = out.constBits()
    ptr.setsize(out.sizeInBytes())
    return QByteArray.fromRawData(ptr), out


def to_canvas_bgra16(img: QImage, width: int, height: int) -> bytes:
    """As to_canvas_bgra for RGBA/U16 documents (B,G,R,A little-endian 16-bit)."""
    if (img.width(), img.height()) != (width, height):
        img = img.scaled(width, height, Qt.IgnoreAspectRatio, Qt.SmoothTransformation)
    return packed_bytes(img.rgbSwapped().convertToFormat(QImage.Format_RGBA64), 8, qt=True)

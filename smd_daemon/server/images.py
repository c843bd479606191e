"""Pixels on the wire: decoding clients' planes and images, encoding frames.

Called from scene workers and encoder threads, never from the I/O thread:
zlib and Pillow release the GIL while they work.
"""

from __future__ import annotations

import io
import zlib
from dataclasses import dataclass

import numpy as np
from PIL import Image, features

from smd_daemon.imagedecode import FORMATS, ImageError, decode_image
from smd_daemon.protocol import ErrorCode, ProtocolError

# What Pillow on this machine can write, in the protocol's names.
FRAME_ENCODINGS = ("raw", "png", "jpeg") + (("webp",) if features.check("webp") else ())


@dataclass(frozen=True)
class EncodedImage:
    """A frame or result compressed where it was made (a cluster worker): sent as it is."""

    data: bytes
    encoding: str
    shape: tuple  # (H, W, 3), as the pixels'
    encode_ms: float = 0.0  # what compressing it took

    def pixels(self) -> np.ndarray:
        return np.asarray(Image.open(io.BytesIO(self.data)).convert("RGB"), dtype=np.uint8)


def encode_frame(image, encoding: str, quality: int) -> bytes:
    """An HxWx3 uint8 frame (or an ``EncodedImage``) as bytes in the requested encoding."""
    if isinstance(image, EncodedImage):
        if image.encoding == encoding:
            return image.data
        image = image.pixels()
    if encoding == "raw":
        return np.ascontiguousarray(image).tobytes()
    buf = io.BytesIO()
    im = Image.fromarray(image)
    if encoding == "png":
        im.save(buf, "PNG", compress_level=1)
    elif encoding == "jpeg":
        im.save(buf, "JPEG", quality=quality)
    else:
        im.save(buf, "WEBP", quality=quality, method=1)
    return buf.getvalue()


def decode_plane(data: memoryview, encoding: str, width: int, height: int, channels: int, what: str) -> np.ndarray:
    """A binary part as a uint8 (H, W) or (H, W, 3) array of exactly the output size (its own memory, read-only)."""
    expected = width * height * channels
    shape = (height, width) if channels == 1 else (height, width, channels)
    if encoding in ("raw", "zlib"):
        if encoding == "zlib":
            # Bounded: a zlib bomb stops one byte past the expected size.
            d = zlib.decompressobj()
            try:
                raw = d.decompress(data, expected + 1)
            except zlib.error as e:
                raise ProtocolError(ErrorCode.BAD_IMAGE, f"{what}: not valid zlib data ({e})") from None
            if len(raw) != expected or not d.eof:
                raise ProtocolError(
                    ErrorCode.BAD_IMAGE,
                    f"{what}: zlib data does not inflate to {width}x{height}x{channels} = {expected} bytes",
                )
        elif len(data) != expected:
            raise ProtocolError(
                ErrorCode.BAD_IMAGE, f"{what}: {len(data)} bytes, expected {width}x{height}x{channels} = {expected}"
            )
        else:
            raw = bytes(data)  # our own copy: the message buffer is not kept
        # Read-only over bytes of its own, copied no further: nothing writes to a plane.
        return np.frombuffer(raw, np.uint8).reshape(shape)
    try:
        im = decode_image(data, FORMATS[encoding], what, size=(width, height))
    except ImageError as e:
        raise ProtocolError(ErrorCode.BAD_IMAGE, str(e)) from None
    return np.array(im.convert("L" if channels == 1 else "RGB"), dtype=np.uint8).reshape(shape)

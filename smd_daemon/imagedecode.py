"""Images from bytes nobody vouches for: a client's planes and background
image, the layers and masks of a scene file. One decoder for both, so both
refuse the same things the same way.

Only the formats asked for are tried, and the size the file declares is
checked before a single pixel is decoded: a few hundred bytes of PNG can
declare a 100,000 x 100,000 image.
"""

from __future__ import annotations

import io

from PIL import Image

# The protocol's image encodings, in Pillow's format names (a JPEG camera file may be MPO).
FORMATS = {"png": ("PNG",), "jpeg": ("JPEG", "MPO"), "webp": ("WEBP",)}


class ImageError(ValueError):
    """Bytes that are not an acceptable image, with one sentence that says why."""


def decode_image(
    data, formats: tuple[str, ...], what: str, *, size: tuple[int, int] | None = None, max_side: int | None = None
) -> Image.Image:
    """The decoded image of ``data``: one of ``formats`` (Pillow's names), of exactly
    ``size`` (width, height) or at most ``max_side`` pixels per side; else ``ImageError``."""
    try:
        im = Image.open(io.BytesIO(data), formats=formats)
        w, h = im.size
        if size is not None and (w, h) != tuple(size):
            raise ImageError(f"{what}: image is {w}x{h}, expected {size[0]}x{size[1]}")
        if max_side is not None and (w > max_side or h > max_side):
            raise ImageError(f"{what} is {w}x{h} pixels; at most {max_side} per side is allowed")
        im.load()
    except ImageError:
        raise
    except Image.UnidentifiedImageError:
        raise ImageError(f"{what} is not a {'/'.join(formats)} image, or is damaged") from None
    except Image.DecompressionBombError as e:
        raise ImageError(f"{what}: {e}") from None
    except Exception as e:  # Pillow raises many types for corrupt data (OSError, SyntaxError, zlib.error, ...)
        raise ImageError(f"{what} does not decode ({type(e).__name__}: {str(e)[:200]})") from None
    return im

"""What the OpenRaster and JSON readers share: command-line overrides, the
output size, limits, image decoding, and the checks made before any pixels
are decoded (declared sizes, steps, seed)."""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np
from PIL import Image

from smd_daemon.engine.scene import MAX_SIDE, Scene, SceneError
from smd_daemon.grammar import ParsedLayer
from smd_daemon.imagedecode import ImageError, decode_image

# A layer may stick out of the canvas, but not absurdly: its decoded size is
# bounded before decoding (a small PNG can declare a huge image).
MAX_LAYER_SIDE = 2 * MAX_SIDE
MAX_LAYERS = 512
# A PNG member larger than its raw RGBA pixels plus slack is not a plain layer.
MAX_MEMBER_BYTES = 4 * MAX_LAYER_SIDE * MAX_LAYER_SIDE + (1 << 20)


@dataclass
class LoadedScene:
    """A scene read from a file, with how each layer was read (for messages)."""

    scene: Scene
    layers: list[ParsedLayer] = field(default_factory=list)  # bottom to top
    warnings: list[str] = field(default_factory=list)  # about the file as a whole, one line each


@dataclass
class Overrides:
    """Command-line settings; ``None`` keeps the file's value (or the default)."""

    width: int | None = None
    height: int | None = None
    seed: int | None = None
    steps: int | None = None
    bootstrap_steps: int | None = None
    background_prompt: str | None = None
    negative_prompt: str | None = None
    background_strength: float | None = None
    region_mode: str | None = None


def check_scene(path: str, scene: Scene, parsed: list[ParsedLayer]) -> None:
    """Before the background image is decoded: the scene must be drawable without it."""
    if not scene.regions:
        raise SceneError(f"{path}: no region layers; {explain_no_regions(parsed)}")
    scene.validate()


def output_size(doc_w: int, doc_h: int, width: int | None, height: int | None) -> tuple[int, int]:
    """The output size: as asked, else the document's (multiples of 8, keeping the aspect ratio
    when only one side is given)."""
    if width and height:
        return width, height
    if width:
        return width, _round8(width * doc_h / doc_w)
    if height:
        return _round8(height * doc_w / doc_h), height
    return _round8(doc_w), _round8(doc_h)


def _round8(v: float) -> int:
    return max(8, int(math.floor(v / 8 + 0.5)) * 8)  # half up, not to even


def check_cheap(width: int, height: int, o: Overrides, **file_values) -> dict:
    """Validate size, seed and steps on an empty scene before decoding any pixels."""
    opts = {k: v for k, v in file_values.items() if v is not None}
    for key in ("seed", "steps", "bootstrap_steps", "region_mode"):
        if getattr(o, key) is not None:
            opts[key] = getattr(o, key)
    Scene(width=width, height=height, **opts).validate()
    return opts


def decode(data: bytes, formats: tuple[str, ...], what: str, max_side: int) -> Image.Image:
    """A file's image (``imagedecode``: absurd declared sizes refused before any pixel is decoded)."""
    try:
        return decode_image(data, formats, what, max_side=max_side)
    except ImageError as e:
        raise SceneError(str(e)) from None


def resize_alpha(alpha: np.ndarray, width: int, height: int) -> np.ndarray:
    """The alpha at output size (read-only is fine: the engine copies what it gives torch)."""
    if alpha.shape == (height, width):
        return alpha
    return np.asarray(Image.fromarray(alpha, "L").resize((width, height), Image.Resampling.BILINEAR))


def resize_rgb(rgb: np.ndarray, width: int, height: int) -> np.ndarray:
    """An RGB picture (the background image, a control layer's) at output size."""
    if rgb.shape[:2] == (height, width):
        return np.ascontiguousarray(rgb)
    return np.asarray(
        Image.fromarray(np.ascontiguousarray(rgb), "RGB").resize((width, height), Image.Resampling.LANCZOS)
    )


def explain_no_regions(parsed: list[ParsedLayer]) -> str:
    if not parsed:
        return "the file has no layers"
    shown = ", ".join(f"{p.name!r} ({p.reason or p.role})" for p in parsed[:6])
    more = f" and {len(parsed) - 6} more" if len(parsed) > 6 else ""
    return f"name a layer with its prompt, e.g. 'a red fox' (read: {shown}{more})"

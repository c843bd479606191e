"""Control layers: what a control image becomes before an adapter or a ControlNet sees it.

A control layer (``scene.Control``) arrives as the artist sees it, uint8 RGB
at canvas size. Each kind gets what its models were trained on:

- ``lineart``, ``scribble``: the artist's own strokes. T2I-Adapters and
  ControlNets for these expect white lines on black, artists draw dark
  strokes on light paper: a mostly light image (mean luminance above half)
  is inverted, then paper texture and faint marks are cut: ``lineart`` keeps
  its strokes' soft edges above ``LINE_CUT`` and sets the rest to black;
  ``scribble`` becomes pure black and white at ``SCRIBBLE_CUT``. A layer
  already drawn light on dark is not inverted.
- ``canny``: edges found here (``canny``: Gaussian blur, Sobel gradients,
  thin edges by non-maximum suppression, two thresholds with hysteresis),
  with NumPy and Pillow, no annotator to download.
- ``depth``, ``pose``, ``softedge``: used as they are. Finding depth, poses
  or soft edges in a photo takes an annotator model the daemon does not
  ship: the layer must already be such a map.

``control_tensor`` turns the result into a model input; ``level_active``
says at which noise levels a control steers.
"""

from __future__ import annotations

import numpy as np
import torch
from PIL import Image, ImageFilter

LINE_CUT = 32  # lineart: (inverted) values below this are paper, set to black
SCRIBBLE_CUT = 128  # scribble: white at or above, black below
CANNY_LOW, CANNY_HIGH = 0.1, 0.2  # canny thresholds, fractions of the largest gradient magnitude
CANNY_BLUR = 1.4  # Gaussian blur radius before the gradients, in pixels
STROKES = ("lineart", "scribble")
AS_GIVEN = ("depth", "pose", "softedge")


def luminance(image: np.ndarray) -> np.ndarray:
    """uint8 (H, W, 3) -> float32 (H, W) in 0..255 (ITU-R 601 weights, as Pillow's ``L``)."""
    return image.astype(np.float32) @ np.array([0.299, 0.587, 0.114], dtype=np.float32)


def strokes(image: np.ndarray, binary: bool) -> np.ndarray:
    """White strokes on black from the artist's strokes (see the module docstring)."""
    y = luminance(image)
    if y.mean() > 127.5:  # dark strokes on light paper
        y = 255.0 - y
    if binary:
        out = np.where(y >= SCRIBBLE_CUT, 255, 0)
    else:
        out = np.where(y >= LINE_CUT, y, 0)
    return np.repeat(out.astype(np.uint8)[..., None], 3, axis=2)


def canny(image: np.ndarray, low: float = CANNY_LOW, high: float = CANNY_HIGH) -> np.ndarray:
    """Canny edges, white on black, uint8 (H, W, 3). ``low`` and ``high``
    are fractions of the largest gradient magnitude in the image."""
    blurred = Image.fromarray(np.clip(luminance(image), 0, 255).astype(np.uint8)).filter(
        ImageFilter.GaussianBlur(CANNY_BLUR)
    )
    y = np.pad(np.asarray(blurred, dtype=np.float32), 1, mode="edge")
    # Sobel gradients
    gx = (y[:-2, 2:] + 2 * y[1:-1, 2:] + y[2:, 2:]) - (y[:-2, :-2] + 2 * y[1:-1, :-2] + y[2:, :-2])
    gy = (y[2:, :-2] + 2 * y[2:, 1:-1] + y[2:, 2:]) - (y[:-2, :-2] + 2 * y[:-2, 1:-1] + y[:-2, 2:])
    mag = np.hypot(gx, gy)
    top = float(mag.max())
    h, w = mag.shape
    if top <= 0:
        return np.zeros((h, w, 3), np.uint8)
    # Non-maximum suppression: keep a pixel only where it is the largest
    # along its gradient direction (quantized to 0, 45, 90, 135 degrees).
    angle = (np.rad2deg(np.arctan2(gy, gx)) + 180.0) % 180.0
    sector = (((angle + 22.5) // 45) % 4).astype(np.int8)
    m = np.pad(mag, 1)
    neighbours = {0: ((0, 1), (0, -1)), 1: ((1, 1), (-1, -1)), 2: ((1, 0), (-1, 0)), 3: ((1, -1), (-1, 1))}
    thin = np.zeros_like(mag, dtype=bool)
    for s, ((ay, ax), (by, bx)) in neighbours.items():
        a = m[1 + ay : 1 + ay + h, 1 + ax : 1 + ax + w]
        b = m[1 + by : 1 + by + h, 1 + bx : 1 + bx + w]
        thin |= (sector == s) & (mag >= a) & (mag >= b)
    strong = thin & (mag >= high * top)
    weak = thin & (mag >= low * top)
    # Hysteresis: weak edges survive where they connect to strong ones; grown
    # one 8-neighbourhood ring at a time (Pillow's MaxFilter), until nothing changes.
    edges = strong
    for _ in range(h * w):
        grown = np.asarray(Image.fromarray(edges.astype(np.uint8) * 255).filter(ImageFilter.MaxFilter(3))) > 0
        nxt = edges | (grown & weak)
        if np.array_equal(nxt, edges):
            break
        edges = nxt
    return np.repeat((edges.astype(np.uint8) * 255)[..., None], 3, axis=2)


def preprocess(kind: str, image: np.ndarray) -> np.ndarray:
    """The control image ``kind``'s models expect, uint8 (H, W, 3), from the
    layer as the artist sees it (see the module docstring)."""
    if kind in STROKES:
        return strokes(image, binary=kind == "scribble")
    if kind == "canny":
        return canny(image)
    if kind in AS_GIVEN:
        return image
    raise ValueError(f"unknown control kind {kind!r}")


def control_tensor(image: np.ndarray, channels: int, device, dtype) -> torch.Tensor:
    """uint8 (H, W, 3) -> (1, channels, H, W) in [0, 1]: RGB, or its
    luminance for a one-channel model (SD-1.5's sketch and canny adapters)."""
    x = torch.from_numpy(np.ascontiguousarray(image)).permute(2, 0, 1)[None].float() / 255.0
    if channels == 1:
        x = (x * torch.tensor([0.299, 0.587, 0.114]).view(1, 3, 1, 1)).sum(1, keepdim=True)
    return x.to(device, dtype)


def level_active(start: float, end: float, level: int, levels: int) -> bool:
    """Whether a control with ``start``/``end`` (fractions of the denoising)
    steers noise level ``level`` of ``levels``: the level's whole share of
    the denoising, [level/levels, (level+1)/levels], lies inside [start, end]
    (diffusers' ControlNet pipelines decide the same way)."""
    return level / levels >= start - 1e-9 and (level + 1) / levels <= end + 1e-9

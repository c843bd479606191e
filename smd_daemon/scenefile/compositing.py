"""Layers composited the way Krita composites them, so that a file reads as
the artist saw it in Krita, to the last step of 1/255 where Krita's own
arithmetic allows (measured against Krita 5.1's projections; docs/render.md).

- Krita holds a layer's opacity as a whole number of 255ths. Its OpenRaster
  export writes n/255 with six digits, which :func:`krita_opacity` reads back
  as n; other files' opacities are cut down to 255ths as Krita cuts them on
  opening.
- A layer inside groups is seen through each level in turn, and Krita rounds
  the alpha to 8 bits at each level (:func:`seen_alpha`): one rounding of the
  product of the opacities was 1/255 off on 15-28 % of a region's pixels.
- A pass-through group (OpenRaster ``isolation`` other than ``isolate``) is
  no level of its own: Krita multiplies its opacity into each of its layers'
  (and an enclosing pass-through group's into its own), cut down to 255ths
  (:func:`merge_opacity`), and its layers composite straight onto what is
  below it.
- Source-over works in floating point on the unrounded ``alpha x opacity``
  and rounds once per layer (:func:`over`); compositing pre-rounded alpha in
  8-bit arithmetic drifts 2/255 from Krita with two layers at 37 % and 61 %.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np

OPAQUE = 255
# How far below a whole number of 255ths a six-digit n/255 can fall (0.368627 * 255 = 93.99989): Krita's own
# export reads back as n, where cutting it down as Krita does on opening would lose a step.
_SIX_DIGITS_SLACK = 1e-3
_ROWS_PER_PASS = 256  # bounds the floating-point temporaries on large canvases


def krita_opacity(value: float) -> int:
    """An opacity in 0..1 as Krita holds it: a whole number of 255ths."""
    if not math.isfinite(value):
        return OPAQUE
    return int(min(max(value, 0.0), 1.0) * OPAQUE + _SIX_DIGITS_SLACK)


def merge_opacity(own: int, group: int) -> int:
    """A layer's opacity inside a pass-through group, in 255ths: Krita cuts the product down (measured
    on 630 combinations, nested groups included)."""
    return own * group // OPAQUE


def alpha_table(opacities: Sequence[int]) -> np.ndarray:
    """alpha -> alpha as seen through ``opacities`` (the layer's own first, then each enclosing
    group's), rounded to 8 bits at each level, halves up (an exact half cannot occur)."""
    table = np.arange(256, dtype=np.int64)
    for n in opacities:
        if n < OPAQUE:
            table = (table * n * 2 + OPAQUE) // (2 * OPAQUE)  # round(table * n / 255) in integers
    return table.astype(np.uint8)


def seen_alpha(alpha: np.ndarray, opacities: Sequence[int]) -> np.ndarray:
    """A layer's alpha as the artist sees it through its own and its groups' opacities."""
    if all(n >= OPAQUE for n in opacities):
        return alpha
    return alpha_table(opacities)[alpha]


def over_white(rgba: np.ndarray, opacities: Sequence[int] = ()) -> np.ndarray:
    """A layer as the artist sees it alone on white paper (a control layer's picture): its straight
    RGBA through its own and its groups' opacities, source-over onto opaque white; RGB out."""
    src = rgba
    if not all(n >= OPAQUE for n in opacities):
        src = rgba.copy()
        src[..., 3] = seen_alpha(rgba[..., 3], opacities)
    paper = np.full(rgba.shape, OPAQUE, np.uint8)
    over(paper, src, OPAQUE)
    return paper[..., :3]


def over(dst: np.ndarray, src: np.ndarray, opacity: int) -> None:
    """Source-over of ``src`` at ``opacity`` (0..255) onto ``dst`` in place; both straight
    (not premultiplied) 8-bit RGBA of the same shape, ``dst`` writable."""
    if opacity <= 0:
        return
    for top in range(0, dst.shape[0], _ROWS_PER_PASS):
        rows = slice(top, top + _ROWS_PER_PASS)
        _over_rows(dst[rows], src[rows], opacity)


def _over_rows(dst: np.ndarray, src: np.ndarray, opacity: int) -> None:
    src_alpha = src[..., 3].astype(np.float32) * np.float32(opacity / OPAQUE)
    touched = src_alpha > 0
    if not touched.any():
        return
    dst_alpha = dst[..., 3].astype(np.float32)
    new_alpha = dst_alpha + (OPAQUE - dst_alpha) * src_alpha / np.float32(OPAQUE)
    blend = np.divide(src_alpha, new_alpha, out=np.zeros_like(src_alpha), where=touched)[..., None]
    dst_color = dst[..., :3].astype(np.float32)
    color = blend * (src[..., :3].astype(np.float32) - dst_color) + dst_color
    dst[..., :3] = np.where(touched[..., None], np.floor(color + 0.5), dst_color).astype(np.uint8)
    dst[..., 3] = np.where(touched, np.floor(new_alpha + 0.5), dst_alpha).astype(np.uint8)

"""Quantized masks and mask-centering, as in StreamMultiDiffusion (sec. 4).

All functions are pure tensor code; shapes are noted as (P regions, T steps).
"""

from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn.functional as F


def gaussian_blur(mask: torch.Tensor, std: float) -> torch.Tensor:
    """Separable Gaussian blur of a (H, W) mask; kernel 2*ceil(3 std)+1, replicate padding."""
    return blur_sampled(mask, std, (1, 1))


def blur_sampled(mask: torch.Tensor, std: float, step: tuple[int, int]) -> torch.Tensor:
    """``gaussian_blur(mask, std)[::step[0], ::step[1]]``, computed only at
    the pixels kept: the blur is a strided convolution, so a canvas-sized
    mask sampled down to latent size costs about 1/8 of a full blur."""
    sy, sx = step
    if std <= 0:
        return mask[::sy, ::sx]
    radius = math.ceil(3 * std)
    x = torch.arange(-radius, radius + 1, dtype=torch.float32, device=mask.device)
    k = torch.exp(-0.5 * (x / std) ** 2)
    k = (k / k.sum()).to(mask.dtype)
    m = mask[None, None]
    m = F.conv2d(F.pad(m, (radius, radius, 0, 0), mode="replicate"), k.view(1, 1, 1, -1), stride=(1, sx))
    m = F.conv2d(F.pad(m, (0, 0, radius, radius), mode="replicate"), k.view(1, 1, -1, 1), stride=(sy, 1))
    return m[0, 0]


def noise_levels(alphas_cumprod: torch.Tensor, timesteps: list[int]) -> torch.Tensor:
    """sigma_t = sqrt(1 - alpha_bar_t) for each step, decreasing."""
    return torch.stack([(1 - alphas_cumprod[t]).sqrt() for t in timesteps]).float()


def flow_noise_levels(sigmas: torch.Tensor) -> torch.Tensor:
    """The σ_t masks are quantized against, for flow matching's x = (1 - σ) x0
    + σ n: the noise share of a variance-preserving latent with the same
    signal-to-noise ratio, σ / sqrt((1 - σ)² + σ²), so masks open up over
    the steps as they do for SD-1.5."""
    s = sigmas.double()
    return (s / ((1 - s) ** 2 + s**2).sqrt()).float()


def as_float_mask(mask) -> torch.Tensor:
    """A (H, W) mask as float32 in [0, 1]: uint8 planes (0..255) are scaled,
    float ones are taken as they are. Read-only arrays (planes decoded
    straight from a message) are only read: no warning, no extra copy."""
    if isinstance(mask, torch.Tensor):
        return mask.float() / 255 if mask.dtype == torch.uint8 else mask.float()
    a = np.asarray(mask)
    if a.dtype == np.uint8:
        return torch.asarray(a, dtype=torch.float32).div_(255)  # the float copy is the one conversion
    # torch has no read-only tensors: a read-only float32 mask is the one case that needs a copy.
    return torch.asarray(a, dtype=torch.float32, copy=not a.flags.writeable)


def quantize_masks(
    masks,
    strengths: list[float],
    stds: list[float],
    sigmas: torch.Tensor,
    latent_size: tuple[int, int],
    mode: str = "continuous",
    cover_alpha: float = 1.0,
    between=None,
) -> torch.Tensor:
    """P masks (a (P, H, W) tensor or a list of (H, W) arrays; float in [0, 1]
    or uint8) at image size -> (T, P, h, w) per-step latent masks.

    Each mask is covered by the regions above it, blurred, scaled by its
    strength, then compared with the noise level of every step: a region
    starts from its solid core at high noise and grows to its blurred edge
    as the noise falls. ``continuous`` ramps between two consecutive levels;
    ``discrete`` is a hard threshold ``m > sigma_t``.

    One region at a time, top first, so at most one float copy at canvas size
    exists at once; quantizing is pointwise, so it runs after the (nearest)
    downsampling with the same result, and the blur is computed only at the
    pixels that downsampling keeps. ``between()``, when given, is called
    before each region (a large canvas takes a while per region).
    """
    P = len(masks)
    T = sigmas.shape[0]
    h, w = latent_size
    out = torch.zeros((T, P, h, w))
    covered = None  # where any region above is > 0
    for p in range(P - 1, -1, -1):
        if between is not None:
            between()
        m = as_float_mask(masks[p])
        above = covered
        covered = m > 0 if covered is None else covered | (m > 0)
        if above is not None and cover_alpha < 1:
            m = torch.where(above, m * cover_alpha, m)
        H, W = m.shape
        if H % h == 0 and W % w == 0:  # nearest downsampling keeps every (H/h, W/w)th pixel from 0
            small = blur_sampled(m, stds[p], (H // h, W // w)) * strengths[p]
        else:
            small = F.interpolate(gaussian_blur(m, stds[p])[None, None], size=(h, w), mode="nearest")[0, 0]
            small = small * strengths[p]
        out[:, p] = quantize_levels(small, sigmas, mode)
    return out


def quantize_levels(soft: torch.Tensor, sigmas: torch.Tensor, mode: str) -> torch.Tensor:
    """(..., h, w) soft mask -> (T, ..., h, w), one mask per noise level."""
    T = sigmas.shape[0]
    shape = (T,) + (1,) * soft.dim()
    sig = sigmas.to(soft.device).view(shape)
    if mode == "discrete":
        return (soft[None] > sig).float()
    nxt = torch.cat([sigmas[1:], sigmas.new_zeros(1)]).to(soft.device).view(shape)
    return ((soft[None] - nxt) / (sig - nxt).clamp_min(1e-6)).clamp(0, 1)


def center_offset(mask: torch.Tensor) -> tuple[int, int]:
    """The (dy, dx) roll that moves the bounding box centre of a (h, w) mask
    to the canvas centre; (0, 0) for an empty mask."""
    ys, xs = torch.nonzero(mask > 0, as_tuple=True)
    if ys.numel() == 0:
        return 0, 0
    h, w = mask.shape
    cy = (int(ys.min()) + int(ys.max()) + 1) // 2
    cx = (int(xs.min()) + int(xs.max()) + 1) // 2
    return h // 2 - cy, w // 2 - cx


def center(x: torch.Tensor, offset: tuple[int, int]) -> torch.Tensor:
    """Roll a (..., h, w) latent by ``offset`` (circular, like the reference)."""
    dy, dx = offset
    return torch.roll(x, shifts=(dy, dx), dims=(-2, -1)) if (dy or dx) else x


def uncenter(x: torch.Tensor, offset: tuple[int, int]) -> torch.Tensor:
    dy, dx = offset
    return torch.roll(x, shifts=(-dy, -dx), dims=(-2, -1)) if (dy or dx) else x


def ramp_weights(h: int, w: int) -> torch.Tensor:
    """Triangular window weights for overlapping tiles: high in the middle,
    low (never zero) at the edges, so seams blend."""

    def ramp(n: int) -> torch.Tensor:
        i = torch.arange(n, dtype=torch.float32)
        return torch.minimum(i + 1, n - i)

    return ramp(h)[:, None] * ramp(w)[None, :]


def tile_origins(size: int, window: int, stride: int) -> list[int]:
    """Window starts covering ``size`` with the last window flush to the end."""
    if size <= window:
        return [0]
    starts = list(range(0, size - window + 1, stride))
    if starts[-1] != size - window:
        starts.append(size - window)
    return starts

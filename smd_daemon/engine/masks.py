"""Quantized masks and mask-centering, as in StreamMultiDiffusion (sec. 4).

All functions are pure tensor code; shapes are noted as (P regions, T steps).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F


def gaussian_blur(mask: torch.Tensor, std: float) -> torch.Tensor:
    """Separable Gaussian blur of a (H, W) mask; kernel 2*ceil(3 std)+1, replicate padding."""
    if std <= 0:
        return mask
    radius = math.ceil(3 * std)
    x = torch.arange(-radius, radius + 1, dtype=torch.float32, device=mask.device)
    k = torch.exp(-0.5 * (x / std) ** 2)
    k = (k / k.sum()).to(mask.dtype)
    m = mask[None, None]
    m = F.conv2d(F.pad(m, (radius, radius, 0, 0), mode="replicate"), k.view(1, 1, 1, -1))
    m = F.conv2d(F.pad(m, (0, 0, radius, radius), mode="replicate"), k.view(1, 1, -1, 1))
    return m[0, 0]


def apply_cover(masks: torch.Tensor, cover_alpha: float) -> torch.Tensor:
    """Upper regions take precedence: where any later mask is > 0, earlier masks
    are multiplied by ``cover_alpha``. ``masks`` is (P, H, W), bottom to top."""
    if masks.shape[0] < 2 or cover_alpha >= 1:
        return masks
    out = masks.clone()
    covered = torch.zeros_like(masks[0], dtype=torch.bool)
    for p in range(masks.shape[0] - 1, -1, -1):
        out[p] = torch.where(covered, masks[p] * cover_alpha, masks[p])
        covered |= masks[p] > 0
    return out


def noise_levels(alphas_cumprod: torch.Tensor, timesteps: list[int]) -> torch.Tensor:
    """sigma_t = sqrt(1 - alpha_bar_t) for each step, decreasing."""
    return torch.stack([(1 - alphas_cumprod[t]).sqrt() for t in timesteps]).float()


def quantize_masks(
    masks: torch.Tensor,
    strengths: list[float],
    stds: list[float],
    sigmas: torch.Tensor,
    latent_size: tuple[int, int],
    mode: str = "continuous",
    cover_alpha: float = 1.0,
) -> torch.Tensor:
    """(P, H, W) masks in [0, 1] at image size -> (T, P, h, w) per-step latent masks.

    Each mask is covered by the regions above it, blurred, scaled by its
    strength, then compared with the noise level of every step: a region
    starts from its solid core at high noise and grows to its blurred edge
    as the noise falls. ``continuous`` ramps between two consecutive levels;
    ``discrete`` is a hard threshold ``m > sigma_t``.
    """
    P = masks.shape[0]
    T = sigmas.shape[0]
    h, w = latent_size
    if P == 0:
        return masks.new_zeros((T, 0, h, w))
    masks = apply_cover(masks.float(), cover_alpha)
    soft = torch.stack([gaussian_blur(masks[p], stds[p]) * strengths[p] for p in range(P)])
    sig = sigmas.to(soft.device).view(T, 1, 1, 1)
    if mode == "discrete":
        per_step = (soft[None] > sig).float()
    else:
        nxt = torch.cat([sigmas[1:], sigmas.new_zeros(1)]).to(soft.device).view(T, 1, 1, 1)
        per_step = ((soft[None] - nxt) / (sig - nxt).clamp_min(1e-6)).clamp(0, 1)
    return F.interpolate(per_step, size=(h, w), mode="nearest")


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

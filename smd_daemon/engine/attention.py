"""Attention-region mode: every region in one UNet sample.

The background's and every region's text embeddings are concatenated (G
prompts of L tokens each). In each cross-attention layer a query pixel
attends to each prompt on its own, and the G results are mixed with that
pixel's weights: the per-step quantized masks (the same ``quantize_masks``
output latent mode averages with) at the layer's resolution, and the
background where nothing covers the pixel. Self-attention layers are not
touched. With one full-canvas region the mix is that region's attention
alone, so the image is plain generation with its prompt.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


class RegionContext:
    """What the processors read during one UNet call: for each layer
    resolution (its number of positions), weights (N, G, positions) that sum
    to 1 over the G prompts. ``None`` outside attention-mode calls: the
    layers then run their original processor."""

    def __init__(self):
        self.weights: dict[int, torch.Tensor] | None = None


class RegionAttnProcessor:
    """A diffusers attention processor for cross-attention layers; wraps the
    layer's original processor, which runs whenever no region weights are set."""

    def __init__(self, inner, ctx: RegionContext):
        self.inner = inner
        self.ctx = ctx

    def __call__(
        self, attn, hidden_states, encoder_hidden_states=None, attention_mask=None, temb=None, *args, **kwargs
    ):
        weights = self.ctx.weights
        if weights is None or encoder_hidden_states is None:
            return self.inner(attn, hidden_states, encoder_hidden_states, attention_mask, temb, *args, **kwargs)
        return regional_attention(attn, hidden_states, encoder_hidden_states, weights, temb)


def regional_attention(
    attn,
    hidden_states: torch.Tensor,
    encoder_hidden_states: torch.Tensor,
    weights_by_size: dict[int, torch.Tensor],
    temb=None,
) -> torch.Tensor:
    """Cross-attention to each of G prompts separately, mixed per pixel.

    Mirrors diffusers' ``AttnProcessor2_0`` around the attention itself."""
    residual = hidden_states
    if attn.spatial_norm is not None:
        hidden_states = attn.spatial_norm(hidden_states, temb)
    input_ndim = hidden_states.ndim
    if input_ndim == 4:
        n, c, hh, ww = hidden_states.shape
        hidden_states = hidden_states.view(n, c, hh * ww).transpose(1, 2)
    N, S, _ = hidden_states.shape
    w = weights_by_size.get(S)
    if w is None:
        raise RuntimeError(f"attention-region mode: no region weights for a cross-attention layer of {S} positions")
    G = w.shape[1]
    if attn.group_norm is not None:
        hidden_states = attn.group_norm(hidden_states.transpose(1, 2)).transpose(1, 2)

    query = attn.to_q(hidden_states)
    enc = attn.norm_encoder_hidden_states(encoder_hidden_states) if attn.norm_cross else encoder_hidden_states
    key = attn.to_k(enc)
    value = attn.to_v(enc)
    heads = attn.heads
    d = key.shape[-1] // heads
    L = enc.shape[1] // G
    # Prompts become part of the batch: (N*G, heads, positions, d) queries
    # against (N*G, heads, L, d) keys, one prompt each.
    query = query.view(N, 1, S, heads, d).transpose(2, 3).expand(N, G, heads, S, d).reshape(N * G, heads, S, d)
    key = key.view(N, G, L, heads, d).transpose(2, 3).reshape(N * G, heads, L, d)
    value = value.view(N, G, L, heads, d).transpose(2, 3).reshape(N * G, heads, L, d)
    if attn.norm_q is not None:
        query = attn.norm_q(query)
    if attn.norm_k is not None:
        key = attn.norm_k(key)
    out = F.scaled_dot_product_attention(query, key, value, dropout_p=0.0, is_causal=False)
    out = (out.view(N, G, heads, S, d) * w.to(out.dtype).view(N, G, 1, S, 1)).sum(1)
    out = out.transpose(1, 2).reshape(N, S, heads * d).to(query.dtype)

    out = attn.to_out[0](out)
    out = attn.to_out[1](out)
    if input_ndim == 4:
        out = out.transpose(-1, -2).reshape(n, c, hh, ww)
    if attn.residual_connection:
        out = out + residual
    return out / attn.rescale_output_factor


def install(layers) -> RegionContext | None:
    """Wrap the processor of each cross-attention layer (``Family.region_layers``;
    once per model); returns the shared context, or None without such layers."""
    if not layers:
        return None
    for m in layers:
        if isinstance(m.processor, RegionAttnProcessor):
            return m.processor.ctx
    ctx = RegionContext()
    for m in layers:
        m.set_processor(RegionAttnProcessor(m.processor, ctx))
    return ctx


def layer_sizes(h: int, w: int, levels: int) -> list[tuple[int, int]]:
    """The (h, w) of each UNet resolution for an (h, w) latent: each
    downsampler halves, rounding up."""
    sizes = [(h, w)]
    for _ in range(levels - 1):
        h, w = (h + 1) // 2, (w + 1) // 2
        sizes.append((h, w))
    return sizes


def region_weights(masks: torch.Tensor, uncovered: torch.Tensor, sizes: list[tuple[int, int]]) -> list[torch.Tensor]:
    """(T, P, h, w) quantized masks and (T, 1, h, w) uncovered area ->
    per resolution (T, G, h_k, w_k) prompt weights, background first, each
    pixel's weights summing to 1 (area-averaged at coarser resolutions)."""
    m = torch.cat([uncovered, masks], 1).float()
    out = []
    for size in sizes:
        mk = m if size == tuple(m.shape[-2:]) else F.adaptive_avg_pool2d(m, size)
        out.append(mk / mk.sum(1, keepdim=True).clamp_min(1e-6))
    return out


def crop_weights(
    maps: list[torch.Tensor], step: int, tile: tuple[int, int, int, int], tile_sizes: list[tuple[int, int]]
) -> list[torch.Tensor]:
    """One window's weights, (1, G, positions) per resolution, cut from the
    whole-canvas maps (windows not aligned to a coarse pixel snap to it)."""
    y, x = tile[0], tile[1]
    out = []
    for k, (wk, (a, b)) in enumerate(zip(maps, tile_sizes)):
        H, W = wk.shape[-2:]
        yk, xk = min(y >> k, H - a), min(x >> k, W - b)
        out.append(wk[step, :, yk : yk + a, xk : xk + b].reshape(1, wk.shape[1], a * b))
    return out

"""Planning: a scene compiled once for the engine.

``make_plan`` turns a scene into timesteps, quantized masks, windows and,
for every noise level, the UNet samples that level needs as device tensors
of fixed shape (embeddings, timesteps, mask weights). A step then only
slices and concatenates them: no tensors from Python lists and no host
synchronisation inside a step.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch

from smd_daemon.engine import attention as A
from smd_daemon.engine import masks as M
from smd_daemon.engine.scene import Scene, cancel_check

if TYPE_CHECKING:
    from smd_daemon.engine.core import Engine

# LCM-distilled UNets take the guidance scale as an embedding instead of a
# doubled batch; this is the value such models were tuned around.
DEFAULT_LCM_GUIDANCE = 8.5
TILE_STRIDE = 32  # latent pixels between overlapping windows on large canvases
# What a sample stands for (``Level.regions``): a region's index, or
BACKGROUND = -1  # the background prompt (latent mode)
WHOLE = -2  # every prompt at once (attention mode)


@dataclass
class Level:
    """The UNet samples of one noise level, in batch order, precomputed."""

    regions: list[int]  # per sample: region index, BACKGROUND or WHOLE
    tiles: list[int]  # per sample: window index
    shifts: list[tuple[int, int]]  # per sample: centring roll (bootstrap steps, one window)
    t: torch.Tensor  # (n,) timestep
    emb: torch.Tensor  # (n, tokens, D)
    neg: torch.Tensor | None  # (n, tokens, D) when classifier-free guidance runs
    variant: torch.Tensor | None  # (n,) one window, latent mode: row of the level's input variants
    region_weight: torch.Tensor | None  # (n, 1, h, w) one window, latent mode: mask (0 for background)
    bg_weight: torch.Tensor | None  # (n, 1, 1, 1) one window, latent mode: 1 for the background sample
    attn: list[torch.Tensor] | None  # one window, attention mode: (n, G, positions) per UNet resolution

    @property
    def n(self) -> int:
        return len(self.regions)


@dataclass
class Plan:
    """A scene compiled for the engine: everything a step needs, on device."""

    scene: Scene
    mode: str  # "latent" | "attention"
    timesteps: list[int]
    sqrt_ab: torch.Tensor  # (T,) sqrt(alpha_bar_t)
    sqrt_1mab: torch.Tensor  # (T,) sqrt(1 - alpha_bar_t)
    c_skip: torch.Tensor  # (T,) LCM boundary condition (0 for turbo models)
    c_out: torch.Tensor  # (T,) (1 for turbo models)
    entry_scale: float  # fresh noise entering level 0 is scaled by this
    latent_hw: tuple[int, int]
    region_emb: torch.Tensor  # (P, L, D): lerp(background, region, prompt strength)
    region_neg: torch.Tensor | None  # (P, L, D) when classifier-free guidance runs
    bg_emb: torch.Tensor  # (1, L, D)
    bg_neg: torch.Tensor | None
    masks: torch.Tensor  # (T, P, h, w) quantized
    uncovered: torch.Tensor  # (T, 1, h, w) B = clip(1 - sum_p M, 0, 1)
    offsets: list[list[tuple[int, int]]]  # [bootstrap step][region] centring roll
    white: torch.Tensor | None  # (1, 4, h, w) clean latent of a white image
    bg_image: torch.Tensor | None  # (1, 4, h, w) clean latent of the background image
    tiles: list[tuple[int, int, int, int]]  # (y, x, th, tw) in latent pixels
    tile_weight: torch.Tensor  # (1, 1, th, tw) ramp, or ones for one tile
    active: list[list[list[bool]]]  # [step][tile][region]: any mask inside the tile
    need_bg: list[list[bool]]  # [step][tile]: any uncovered pixel inside the tile
    cfg: bool
    time_cond: torch.Tensor | None  # (1, D) guidance embedding for LCM-distilled UNets
    levels: list[Level]
    prompts: int  # G: prompts per sample (attention mode: background + regions; else 1)
    attn_maps: list[torch.Tensor] | None  # attention mode, tiled: (T, G, h_k, w_k) per UNet resolution
    attn_tile_sizes: list[tuple[int, int]]  # (h_k, w_k) of one window per UNet resolution

    @property
    def one_window(self) -> bool:
        return len(self.tiles) == 1

    def batch_key(self) -> tuple:
        """Plans whose samples can share one UNet batch have equal keys."""
        t = self.tiles[0]
        guided = self.cfg or self.time_cond is not None
        return self.mode, t[2], t[3], self.cfg, self.scene.guidance_scale if guided else 0


@torch.no_grad()
def make_plan(engine: Engine, scene: Scene, cancel=None) -> Plan:
    """Compile ``scene`` for ``engine`` (see ``Engine.plan``); ``cancel()`` is
    asked before each expensive piece (``Cancelled``)."""
    engine.check(scene)
    between = cancel_check(cancel)
    between()
    dev, dt = engine.c.device, engine.c.dtype
    attention = scene.region_mode == "attention"
    ts = engine.timesteps(scene.steps)
    T = len(ts)
    ab = engine.alphas_cumprod[ts]
    scalings = engine.scalings(ts)
    h, w = scene.height // engine.vae_scale, scene.width // engine.vae_scale

    bg = scene.background
    regions = scene.regions
    P = len(regions)
    embs = engine.encode_prompts([bg.prompt] + [r.prompt for r in regions])
    bg_emb, reg = embs[:1], embs[1:]
    strength = torch.tensor([r.prompt_strength for r in regions], device=dev, dtype=dt).view(-1, 1, 1)
    region_emb = bg_emb + strength * (reg - bg_emb) if regions else reg
    between()

    time_cond = None
    cond_dim = getattr(engine.c.unet.config, "time_cond_proj_dim", None)
    cfg = scene.guidance_scale > 1 and cond_dim is None
    if cond_dim is not None:
        from diffusers.models.embeddings import get_timestep_embedding

        g = scene.guidance_scale if scene.guidance_scale > 1 else DEFAULT_LCM_GUIDANCE
        time_cond = get_timestep_embedding(
            torch.tensor([(g - 1) * 1000.0]), cond_dim, flip_sin_to_cos=False, downscale_freq_shift=1
        ).to(dev, dt)
    region_neg = bg_neg = None
    if cfg:
        negs = engine.encode_prompts([bg.negative_prompt] + [r.negative_prompt for r in regions])
        bg_neg, region_neg = negs[:1], negs[1:]
        between()

    sigmas = M.noise_levels(engine.alphas_cumprod, ts)
    masks = M.quantize_masks(
        [r.mask for r in regions],
        [r.mask_strength for r in regions],
        [r.mask_std for r in regions],
        sigmas,
        (h, w),
        scene.mask_mode,
        scene.cover_alpha,
        between,
    )
    uncovered = (1 - masks.sum(1, keepdim=True)).clamp(0, 1)

    tiled = h > engine.native or w > engine.native
    th, tw = min(h, engine.native), min(w, engine.native)
    tiles = [(y, x, th, tw) for y in M.tile_origins(h, th, TILE_STRIDE) for x in M.tile_origins(w, tw, TILE_STRIDE)]
    weight = M.ramp_weights(th, tw) if tiled else torch.ones(th, tw)
    # Which regions (and whether uncovered area) each window sees at each step.
    both = torch.cat([masks, uncovered], 1)
    peak = torch.stack([both[..., y : y + a, x : x + b].amax(dim=(-2, -1)) for (y, x, a, b) in tiles], 1) > 0
    active = peak[..., :P].tolist()
    need_bg = peak[..., P].tolist()
    # Centring moves a region within the whole canvas; on a tiled canvas
    # a window is not the canvas, so only the white bootstrap applies.
    # Attention mode has one sample for all regions: no bootstrap at all.
    boot = 0 if attention or not regions else min(scene.bootstrap_steps, T)
    offsets = [[(0, 0) if tiled else M.center_offset(masks[i, p]) for p in range(P)] for i in range(boot)]
    white = engine.white_latent(scene.height, scene.width, cancel) if boot else None
    bg_image = engine.encode_image(bg.image, cancel) if bg.image is not None and bg.strength > 0 else None

    masks_d, uncovered_d = masks.to(dev, dt), uncovered.to(dev, dt)
    G = P + 1 if attention else 1
    tile_sizes = A.layer_sizes(th, tw, engine.unet_levels)
    attn_maps = None
    if attention:
        maps = [m.to(dev, dt) for m in A.region_weights(masks, uncovered, A.layer_sizes(h, w, engine.unet_levels))]
        attn_maps = maps if tiled else None
        emb = torch.cat([bg_emb, region_emb]).reshape(1, -1, bg_emb.shape[-1])  # (1, G*L, D)
        neg = torch.cat([bg_neg, region_neg]).reshape(1, -1, bg_emb.shape[-1]) if cfg else None
        levels = [_attention_level(dev, i, ts[i], tiles, maps, tile_sizes, emb, neg, tiled) for i in range(T)]
    else:
        levels = [
            _latent_level(
                dev,
                dt,
                i,
                ts[i],
                tiles,
                active[i],
                need_bg[i],
                offsets,
                region_emb,
                bg_emb,
                region_neg,
                bg_neg,
                masks_d,
                tiled,
            )
            for i in range(T)
        ]

    return Plan(
        scene=scene,
        mode=scene.region_mode,
        timesteps=ts,
        sqrt_ab=ab.sqrt().to(dev, dt),
        sqrt_1mab=(1 - ab).sqrt().to(dev, dt),
        c_skip=torch.tensor([s[0] for s in scalings], device=dev, dtype=dt),
        c_out=torch.tensor([s[1] for s in scalings], device=dev, dtype=dt),
        # Turbo models start like diffusers' Euler schedulers: pure noise at level 0.
        entry_scale=1.0 if engine.kind == "lcm" else float((1 - ab[0]).sqrt()),
        latent_hw=(h, w),
        region_emb=region_emb,
        region_neg=region_neg,
        bg_emb=bg_emb,
        bg_neg=bg_neg,
        masks=masks_d,
        uncovered=uncovered_d,
        offsets=offsets,
        white=white,
        bg_image=bg_image,
        tiles=tiles,
        tile_weight=weight.to(dev, dt)[None, None],
        active=active,
        need_bg=need_bg,
        cfg=cfg,
        time_cond=time_cond,
        levels=levels,
        prompts=G,
        attn_maps=attn_maps,
        attn_tile_sizes=tile_sizes,
    )


def _latent_level(
    dev, dt, i, t, tiles, active, need_bg, offsets, region_emb, bg_emb, region_neg, bg_neg, masks, tiled
) -> Level:
    """Latent mode: one sample per (window, region touching it), plus the
    background where any pixel of the window is uncovered."""
    P = region_emb.shape[0]
    regions, tile_of = [], []
    for ti in range(len(tiles)):
        for p in range(P):
            if active[ti][p]:
                regions.append(p)
                tile_of.append(ti)
        if need_bg[ti]:
            regions.append(BACKGROUND)
            tile_of.append(ti)
    n = len(regions)
    row = torch.tensor([P if p == BACKGROUND else p for p in regions], device=dev)  # P: the plain latent
    emb = torch.cat([region_emb, bg_emb])[row]
    neg = torch.cat([region_neg, bg_neg])[row] if region_neg is not None else None
    shifts = [offsets[i][p] if p >= 0 and i < len(offsets) else (0, 0) for p in regions]
    variant = region_weight = bg_weight = None
    if not tiled:
        h, w = masks.shape[-2:]
        variant = row
        region_weight = torch.cat([masks[i], masks.new_zeros((1, h, w))])[row][:, None]
        bg_weight = (row == P).to(dt).view(n, 1, 1, 1)
    return Level(
        regions,
        tile_of,
        shifts,
        torch.full((n,), t, device=dev, dtype=torch.long),
        emb,
        neg,
        variant,
        region_weight,
        bg_weight,
        None,
    )


def _attention_level(dev, i, t, tiles, maps, tile_sizes, emb, neg, tiled) -> Level:
    """Attention mode: one sample per window carrying every prompt."""
    n = len(tiles)
    attn = None
    if not tiled:
        attn = [m[i].reshape(1, m.shape[1], -1) for m in maps]
    return Level(
        [WHOLE] * n,
        list(range(n)),
        [(0, 0)] * n,
        torch.full((n,), t, device=dev, dtype=torch.long),
        emb.expand(n, -1, -1),
        None if neg is None else neg.expand(n, -1, -1),
        None,
        None,
        None,
        attn,
    )

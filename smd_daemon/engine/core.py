"""StreamMultiDiffusion on diffusers components, in bounded passes.

``Engine.plan`` compiles a scene once: timesteps, quantized masks, windows
and, for every noise level, the UNet samples that level needs as device
tensors of fixed shape (embeddings, timesteps, mask weights). A step then
only slices and concatenates them: no tensors from Python lists and no host
synchronisation; the frame's copy to the host is its only wait.

A step is *work in passes* (``StepWork`` for streams, ``GenerateWork`` for
one-shot images). Each ``run()`` is either one UNet forward over a bounded
number of samples, whose clean-latent estimates (LCM boundary condition)
are added into mask-weighted sums -- latent pre-averaging -- or one bounded
piece of the finishing work (averaging and re-noising; one decoder tile).
In attention-region mode a latent is one sample whatever the number of
regions, and the regions meet inside the cross-attention layers
(``attention.py``). ``step_streams`` and ``generate`` run such work to the end.
"""

from __future__ import annotations

import copy
import hashlib
import logging
import threading
from collections import OrderedDict
from dataclasses import dataclass

import numpy as np
import torch

from smd_daemon.engine import attention as A
from smd_daemon.engine import masks as M
from smd_daemon.engine import vae as V
from smd_daemon.engine.models import Components
from smd_daemon.engine.runner import UNetRunner, check_speed_options
from smd_daemon.engine.scene import Scene, SceneError

log = logging.getLogger(__name__)

# LCM-distilled UNets take the guidance scale as an embedding instead of a
# doubled batch; this is the value such models were tuned around.
DEFAULT_LCM_GUIDANCE = 8.5
TILE_STRIDE = 32  # latent pixels between overlapping windows on large canvases
# Samples per UNet forward pass. The largest single-window stream batch
# (4 steps x (16 regions + background)) fits in one; huge tiled canvases
# take several passes instead of one that exhausts GPU memory.
DEFAULT_MAX_BATCH = 72
# What a sample stands for (``Level.regions``): a region's index, or
BACKGROUND = -1  # the background prompt (latent mode)
WHOLE = -2  # every prompt at once (attention mode)


class Cancelled(Exception):
    """``generate`` was cancelled between two passes."""


@dataclass
class StreamFrame:
    image: np.ndarray  # uint8 (H, W, 3)
    index: int  # frames emitted by this session so far, minus one
    revision: int  # newest scene revision applied
    settled: bool  # every step that made this frame saw ``revision``


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


class Engine:
    """Owns the model and the caches that outlive a scene (prompt embeddings,
    encoded white and background images). Passes run on one thread; ``plan``
    may run on others at the same time (its caches are locked)."""

    def __init__(self, components: Components, max_batch: int | None = DEFAULT_MAX_BATCH,
                 embed_cache_size: int = 256, *, compile: bool = False, cuda_graphs: bool = False,
                 overlap_decode: bool = False):
        check_speed_options(components.device, compile, cuda_graphs, overlap_decode)
        self.c = components
        self.kind = getattr(components, "kind", "lcm")
        self.max_batch = max_batch
        self._lock = threading.RLock()
        self._emb: OrderedDict[str, torch.Tensor] = OrderedDict()
        self._emb_cap = embed_cache_size
        self._latents: OrderedDict[bytes, torch.Tensor] = OrderedDict()
        self._timesteps: dict[int, list[int]] = {}
        self.scheduler = copy.deepcopy(components.scheduler)
        self.alphas_cumprod = self.scheduler.alphas_cumprod.to(torch.float32)
        self.vae_scale = components.vae_scale_factor
        self.native = int(components.unet.config.sample_size)
        self._unet_levels = len(components.unet.config.block_out_channels)
        self._region_ctx = A.install(components.unet)
        self.region_modes = ("latent", "attention") if self._region_ctx is not None else ("latent",)
        self.runner = UNetRunner(components.unet, self._region_ctx, compile=compile, cuda_graphs=cuda_graphs)
        self._side = torch.cuda.Stream(components.device) if overlap_decode else None
        self.unet_calls = 0  # counted for tests and benchmarks

    # ---- what this model can do ------------------------------------------
    @property
    def max_steps(self) -> int:
        cfg = self.scheduler.config
        if self.kind == "lcm":
            return int(cfg.get("original_inference_steps", 50))
        return int(cfg.num_train_timesteps)

    def check(self, scene: Scene) -> Scene:
        """Validate ``scene`` and refuse what this model cannot do, in one
        sentence, before any work (``SceneError``)."""
        scene.validate()
        if scene.region_mode not in self.region_modes:
            raise SceneError(f"region mode {scene.region_mode!r} is not available with this model "
                             f"(available: {', '.join(self.region_modes)})")
        if scene.steps > self.max_steps:
            raise SceneError(f"this {self.kind} model takes at most {self.max_steps} steps, got {scene.steps}")
        return scene

    # ---- conditioning -------------------------------------------------
    @torch.no_grad()
    def encode_prompts(self, prompts: list[str]) -> torch.Tensor:
        """(N, L, D) text embeddings; each distinct prompt is encoded once and cached."""
        with self._lock:
            missing = [p for p in dict.fromkeys(prompts) if p not in self._emb]
            if missing:
                tok = self.c.tokenizer(missing, padding="max_length", max_length=self.c.tokenizer.model_max_length,
                                       truncation=True, return_tensors="pt")
                ids = tok.input_ids.to(self.c.device)
                mask = None
                if getattr(self.c.text_encoder.config, "use_attention_mask", False):
                    mask = tok.attention_mask.to(self.c.device)
                out = self.c.text_encoder(ids, attention_mask=mask)[0].to(self.c.dtype)
                for p, e in zip(missing, out):
                    self._emb[p] = e[None]
            for p in prompts:
                self._emb.move_to_end(p)
            found = [self._emb[p] for p in prompts]
            while len(self._emb) > self._emb_cap:
                self._emb.popitem(last=False)
        return torch.cat(found)

    def encode_image(self, image: np.ndarray) -> torch.Tensor:
        """uint8 (H, W, 3) -> (1, 4, h, w) clean latent (scaled), cached by content."""
        key = hashlib.blake2b(image.tobytes(), digest_size=16).digest() + repr(image.shape).encode()
        return self._cached_latent(key, lambda: image)

    def white_latent(self, height: int, width: int) -> torch.Tensor:
        """The bootstrap background: the latent of an all-white image, cached by
        size (every scene update plans again; no image is built or hashed)."""
        return self._cached_latent(b"white" + repr((height, width)).encode(),
                                   lambda: np.full((height, width, 3), 255, np.uint8))

    def _cached_latent(self, key: bytes, make_image) -> torch.Tensor:
        with self._lock:
            if key in self._latents:
                self._latents.move_to_end(key)
                return self._latents[key]
        # Encoded outside the lock (large images take a while); tiled above
        # the native size so no VAE call grows with the canvas.
        z = V.encode(self.c.vae, make_image(), self.c.device, self.c.dtype, self.vae_scale, self.native)
        with self._lock:
            self._latents[key] = z
            while len(self._latents) > 8:
                self._latents.popitem(last=False)
        return z

    def decode(self, latent: torch.Tensor) -> np.ndarray:
        """(1, 4, h, w) clean latent -> uint8 (H, W, 3), all pieces at once."""
        dec = self._decoder(latent)
        while not dec.done:
            dec.run()
        return dec.result()[0]

    def _decoder(self, latent: torch.Tensor) -> V.Decoder:
        return V.Decoder(self.c.vae, latent, self.native, self._side)

    # ---- planning ------------------------------------------------------
    def timesteps(self, steps: int) -> list[int]:
        with self._lock:
            if steps not in self._timesteps:
                self.scheduler.set_timesteps(steps)
                self._timesteps[steps] = [int(t) for t in self.scheduler.timesteps]
            return list(self._timesteps[steps])

    def _scalings(self, ts: list[int]) -> list[tuple[float, float]]:
        """(c_skip, c_out) per step: the LCM boundary condition, or none (turbo)."""
        if self.kind != "lcm":
            return [(0.0, 1.0)] * len(ts)
        return [tuple(float(v) for v in self.scheduler.get_scalings_for_boundary_condition_discrete(t))
                for t in ts]

    @torch.no_grad()
    def plan(self, scene: Scene) -> Plan:
        """Compile ``scene``; safe to call from another thread while passes run."""
        self.check(scene)
        dev, dt = self.c.device, self.c.dtype
        attention = scene.region_mode == "attention"
        ts = self.timesteps(scene.steps)
        T = len(ts)
        ab = self.alphas_cumprod[ts]
        scalings = self._scalings(ts)
        h, w = scene.height // self.vae_scale, scene.width // self.vae_scale

        bg = scene.background
        regions = scene.regions
        P = len(regions)
        embs = self.encode_prompts([bg.prompt] + [r.prompt for r in regions])
        bg_emb, reg = embs[:1], embs[1:]
        strength = torch.tensor([r.prompt_strength for r in regions], device=dev, dtype=dt).view(-1, 1, 1)
        region_emb = bg_emb + strength * (reg - bg_emb) if regions else reg

        time_cond = None
        cond_dim = getattr(self.c.unet.config, "time_cond_proj_dim", None)
        cfg = scene.guidance_scale > 1 and cond_dim is None
        if cond_dim is not None:
            from diffusers.models.embeddings import get_timestep_embedding

            g = scene.guidance_scale if scene.guidance_scale > 1 else DEFAULT_LCM_GUIDANCE
            time_cond = get_timestep_embedding(torch.tensor([(g - 1) * 1000.0]), cond_dim, flip_sin_to_cos=False,
                                               downscale_freq_shift=1).to(dev, dt)
        region_neg = bg_neg = None
        if cfg:
            negs = self.encode_prompts([bg.negative_prompt] + [r.negative_prompt for r in regions])
            bg_neg, region_neg = negs[:1], negs[1:]

        sigmas = M.noise_levels(self.alphas_cumprod, ts)
        masks = M.quantize_masks([r.mask for r in regions], [r.mask_strength for r in regions],
                                 [r.mask_std for r in regions], sigmas, (h, w), scene.mask_mode, scene.cover_alpha)
        uncovered = (1 - masks.sum(1, keepdim=True)).clamp(0, 1)

        tiled = h > self.native or w > self.native
        th, tw = min(h, self.native), min(w, self.native)
        tiles = [(y, x, th, tw) for y in M.tile_origins(h, th, TILE_STRIDE) for x in M.tile_origins(w, tw, TILE_STRIDE)]
        weight = M.ramp_weights(th, tw) if tiled else torch.ones(th, tw)
        # Which regions (and whether uncovered area) each window sees at each step.
        both = torch.cat([masks, uncovered], 1)
        peak = torch.stack([both[..., y:y + a, x:x + b].amax(dim=(-2, -1)) for (y, x, a, b) in tiles], 1) > 0
        active = peak[..., :P].tolist()
        need_bg = peak[..., P].tolist()
        # Centring moves a region within the whole canvas; on a tiled canvas
        # a window is not the canvas, so only the white bootstrap applies.
        # Attention mode has one sample for all regions: no bootstrap at all.
        boot = 0 if attention or not regions else min(scene.bootstrap_steps, T)
        offsets = [[(0, 0) if tiled else M.center_offset(masks[i, p]) for p in range(P)] for i in range(boot)]
        white = self.white_latent(scene.height, scene.width) if boot else None
        bg_image = self.encode_image(bg.image) if bg.image is not None and bg.strength > 0 else None

        masks_d, uncovered_d = masks.to(dev, dt), uncovered.to(dev, dt)
        G = P + 1 if attention else 1
        tile_sizes = A.layer_sizes(th, tw, self._unet_levels)
        attn_maps = None
        if attention:
            maps = [m.to(dev, dt) for m in A.region_weights(masks, uncovered, A.layer_sizes(h, w, self._unet_levels))]
            attn_maps = maps if tiled else None
            emb = torch.cat([bg_emb, region_emb]).reshape(1, -1, bg_emb.shape[-1])  # (1, G*L, D)
            neg = torch.cat([bg_neg, region_neg]).reshape(1, -1, bg_emb.shape[-1]) if cfg else None
            levels = [self._attention_level(i, ts[i], tiles, maps, tile_sizes, emb, neg, tiled) for i in range(T)]
        else:
            levels = [self._latent_level(i, ts[i], tiles, active[i], need_bg[i], offsets, region_emb, bg_emb,
                                         region_neg, bg_neg, masks_d, tiled) for i in range(T)]

        return Plan(
            scene=scene, mode=scene.region_mode, timesteps=ts, sqrt_ab=ab.sqrt().to(dev, dt),
            sqrt_1mab=(1 - ab).sqrt().to(dev, dt),
            c_skip=torch.tensor([s[0] for s in scalings], device=dev, dtype=dt),
            c_out=torch.tensor([s[1] for s in scalings], device=dev, dtype=dt),
            # Turbo models start like diffusers' Euler schedulers: pure noise at level 0.
            entry_scale=1.0 if self.kind == "lcm" else float((1 - ab[0]).sqrt()),
            latent_hw=(h, w), region_emb=region_emb, region_neg=region_neg, bg_emb=bg_emb, bg_neg=bg_neg,
            masks=masks_d, uncovered=uncovered_d, offsets=offsets, white=white, bg_image=bg_image, tiles=tiles,
            tile_weight=weight.to(dev, dt)[None, None], active=active, need_bg=need_bg, cfg=cfg, time_cond=time_cond,
            levels=levels, prompts=G, attn_maps=attn_maps, attn_tile_sizes=tile_sizes,
        )

    def _latent_level(self, i, t, tiles, active, need_bg, offsets, region_emb, bg_emb, region_neg, bg_neg,
                      masks, tiled) -> Level:
        """Latent mode: one sample per (window, region touching it), plus the
        background where any pixel of the window is uncovered."""
        dev, dt = self.c.device, self.c.dtype
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
        return Level(regions, tile_of, shifts, torch.full((n,), t, device=dev, dtype=torch.long), emb, neg,
                     variant, region_weight, bg_weight, None)

    def _attention_level(self, i, t, tiles, maps, tile_sizes, emb, neg, tiled) -> Level:
        """Attention mode: one sample per window carrying every prompt."""
        n = len(tiles)
        attn = None
        if not tiled:
            attn = [m[i].reshape(1, m.shape[1], -1) for m in maps]
        return Level([WHOLE] * n, list(range(n)), [(0, 0)] * n,
                     torch.full((n,), t, device=self.c.device, dtype=torch.long), emb.expand(n, -1, -1),
                     None if neg is None else neg.expand(n, -1, -1), None, None, None, attn)

    # ---- memory ------------------------------------------------------------
    def session_bytes(self, scene: Scene) -> int:
        """An upper estimate, from shapes alone (nothing is planned or
        encoded), of the bytes a live session of ``scene`` keeps on the host
        and the device: plan, masks, slots, noise buffers, encoded images,
        one step's sums and one frame's decoding."""
        b = torch.finfo(self.c.dtype).bits // 8
        T, P = scene.steps, len(scene.regions)
        h, w = scene.height // self.vae_scale, scene.width // self.vae_scale
        th, tw = min(h, self.native), min(w, self.native)
        n_tiles = len(M.tile_origins(h, th, TILE_STRIDE)) * len(M.tile_origins(w, tw, TILE_STRIDE))
        hw = h * w
        tokens = self.c.tokenizer.model_max_length * int(self.c.unet.config.cross_attention_dim)
        cfg = 2 if scene.guidance_scale > 1 else 1
        attention = scene.region_mode == "attention"
        G = P + 1
        per_level = n_tiles if attention else n_tiles * G
        plan = (T * (P + 1) * hw * b  # masks, uncovered
                + 2 * 4 * hw * b  # white and background latents
                + 2 * G * tokens * b * cfg  # prompt embeddings
                + T * per_level * (tokens * (G if attention else 1) * b * cfg + 16))  # per-sample rows
        if attention:
            plan += T * G * hw * 2 * b  # weights at every UNet resolution (sum < 4/3 of the latent's)
        elif n_tiles == 1:
            plan += T * G * hw * b  # per-sample mask weights
        session = (3 * T + 1) * 4 * hw * b  # slots, renoise and bootstrap noise, entry
        step = T * 10 * hw * 4 + self.max_batch_rows(per_level * T * cfg) * 4 * th * tw * b * 3
        frame = scene.height * scene.width * (3 * 4 + 4 + 2)  # decode sums, uint8 on device and host
        return int(1.1 * (plan + session + step + frame)) + (1 << 16)

    def max_batch_rows(self, rows: int) -> int:
        return rows if self.max_batch is None else min(rows, self.max_batch)

    # ---- the pass ------------------------------------------------------------
    def _forward(self, segments: list[tuple["_Job", int, int, int]], prompts: int) -> None:
        """One UNet forward over ``segments`` (job, level, first, end sample),
        all of one batch key; each job adds its share to its sums."""
        plan0 = segments[0][0].plan
        xs, ts, embs, negs = [], [], [], []
        weights: list[list[torch.Tensor]] = []
        for job, lv, j0, j1 in segments:
            L = job.plan.levels[lv]
            xs.append(job.inputs(lv, j0, j1))
            ts.append(L.t[j0:j1])
            pad = (prompts - job.plan.prompts) * (L.emb.shape[1] // job.plan.prompts)
            embs.append(_pad_tokens(L.emb[j0:j1], pad))
            if plan0.cfg:
                negs.append(_pad_tokens(L.neg[j0:j1], pad))
            if plan0.mode == "attention" and prompts > 1:
                weights.append([_pad_prompts(wk, prompts) for wk in job.attn_weights(lv, j0, j1)])
        x, t, emb = torch.cat(xs), torch.cat(ts), torch.cat(embs)
        region_w = {int(wk.shape[-1]): wk for wk in (torch.cat(ws) for ws in zip(*weights))} if weights else None
        self.unet_calls += 1
        if plan0.cfg:
            # Classifier-free guidance only when asked for (guidance > 1 on a
            # UNet without a guidance embedding): never a doubled batch at 1.0.
            if region_w:
                region_w = {k: torch.cat([v, v]) for k, v in region_w.items()}
            eps_u, eps_c = self.runner(torch.cat([x, x]), torch.cat([t, t]), torch.cat([torch.cat(negs), emb]),
                                       None, region_w).chunk(2)
            eps = eps_u + plan0.scene.guidance_scale * (eps_c - eps_u)
        else:
            tc = plan0.time_cond.expand(x.shape[0], -1) if plan0.time_cond is not None else None
            eps = self.runner(x, t, emb, tc, region_w)
        start = 0
        for job, lv, j0, j1 in segments:
            end = start + j1 - j0
            job.accumulate(lv, j0, j1, x[start:end], eps[start:end])
            start = end

    def _clean_estimate(self, plan: Plan, i: int, x_in: torch.Tensor, eps: torch.Tensor) -> torch.Tensor:
        """x̂0 of samples at level ``i``, with the LCM boundary condition."""
        sa, s1 = plan.sqrt_ab[i], plan.sqrt_1mab[i]
        pred_type = self.scheduler.config.prediction_type
        if pred_type == "v_prediction":
            x0 = sa * x_in - s1 * eps
        elif pred_type == "sample":
            x0 = eps
        else:
            x0 = (x_in - s1 * eps) / sa
        return plan.c_out[i] * x0 + plan.c_skip[i] * x_in

    def _noise(self, plan: Plan, generator: torch.Generator, n: int | None = None) -> torch.Tensor:
        """One latent of noise (1, 4, h, w), or ``n`` of them (n, 1, 4, h, w).

        Drawn on the CPU so a seed gives the same image on every device
        (and the same draws as diffusers' pipelines with a CPU generator)."""
        h, w = plan.latent_hw
        shape = (1, 4, h, w) if n is None else (n, 1, 4, h, w)
        return torch.randn(shape, generator=generator, dtype=self.c.dtype).to(self.c.device)

    def _entry_noise(self, plan: Plan, generator: torch.Generator) -> torch.Tensor:
        x = self._noise(plan, generator)
        return x if plan.entry_scale == 1.0 else x * plan.entry_scale

    def _bootstrap_noise(self, plan: Plan) -> torch.Tensor:
        """Fixed noise for the white bootstrap background, one per step; its
        own generator, so the image noise does not depend on it. Drawn even
        without bootstrap steps: a stream's later edit may turn them on."""
        return self._noise(plan, torch.Generator().manual_seed(int(plan.scene.seed) + 1), len(plan.timesteps))

    # ---- modes -------------------------------------------------------------
    def begin_generate(self, scene: Scene, plan: Plan | None = None) -> "GenerateWork":
        """One-shot generation as resumable work (see ``GenerateWork``)."""
        return GenerateWork(self, plan if plan is not None else self.plan(scene))

    @torch.no_grad()
    def generate(self, scene: Scene, progress=None, cancel=None) -> np.ndarray:
        """One-shot multi-region generation: uint8 (H, W, 3). ``cancel`` is
        asked between passes; ``progress(step, total)`` after each step."""
        work = self.begin_generate(scene)
        reported = 0
        while not work.done:
            if cancel is not None and cancel():
                raise Cancelled()
            work.run()
            step, total = work.progress
            if progress is not None and step != reported:
                reported = step
                progress(step, total)
        return work.image()

    def open_stream(self, scene: Scene, revision: int = 0, plan: Plan | None = None) -> "StreamSession":
        return StreamSession(self, scene, revision, plan)

    def begin_streams(self, streams: list["StreamSession"]) -> "StepWork":
        """Apply each stream's pending edit and build the samples of one frame
        of each (see ``StepWork``)."""
        return StepWork(self, streams)

    @torch.no_grad()
    def step_streams(self, streams: list["StreamSession"]) -> list[StreamFrame]:
        """Advance several sessions one frame each. Sessions whose samples fit
        one batch (same window size and guidance) share UNet calls, so every
        client gets a frame per round and none waits behind another."""
        work = self.begin_streams(streams)
        while not work.done:
            work.run()
        return work.frames()


def _pad_tokens(emb: torch.Tensor, extra: int) -> torch.Tensor:
    """Attention mode, batched with plans of more prompts: append empty prompts."""
    return emb if extra == 0 else torch.cat([emb, emb.new_zeros((emb.shape[0], extra, emb.shape[2]))], 1)


def _pad_prompts(w: torch.Tensor, prompts: int) -> torch.Tensor:
    """...which weigh nothing anywhere."""
    extra = prompts - w.shape[1]
    return w if extra == 0 else torch.cat([w, w.new_zeros((w.shape[0], extra, w.shape[2]))], 1)


class _Job:
    """One stream's (or one image's) latents in a step: their UNet samples
    and the mask-weighted sums the samples' clean estimates add up into.

    ``xs[k]`` is the latent at level ``first + k``: levels are consecutive."""

    def __init__(self, engine: Engine, plan: Plan, xs: list[torch.Tensor], first: int, white_noise: torch.Tensor):
        self.e, self.plan, self.xs, self.first = engine, plan, xs, first
        self.white_noise = white_noise
        self.levels = range(first, first + len(xs))
        self.runs = [(lv, plan.levels[lv].n) for lv in self.levels]
        self.samples = sum(n for _, n in self.runs)
        h, w = plan.latent_hw
        S = len(xs)
        ref = xs[0]
        self.num = ref.new_zeros((S, 4, h, w))
        self.den = ref.new_zeros((S, 1, h, w))
        if plan.mode == "latent":
            self.bnum = ref.new_zeros((S, 4, h, w))
            self.bden = ref.new_zeros((S, 1, h, w))
        self._variants: dict[int, torch.Tensor | None] = {}

    def _white_t(self, lv: int) -> torch.Tensor:
        p = self.plan
        return p.sqrt_ab[lv] * p.white + p.sqrt_1mab[lv] * self.white_noise[lv]

    def _variant_rows(self, lv: int) -> torch.Tensor | None:
        """One window, bootstrap step: each region's input -- a white image at
        this noise level outside its mask, centred on its box -- then the
        plain latent. None outside bootstrap steps (every sample is the latent)."""
        if lv not in self._variants:
            p, x = self.plan, self.xs[lv - self.first]
            rows = None
            if lv < len(p.offsets):
                m = p.masks[lv][:, None]  # (P, 1, h, w)
                mixed = (1 - m) * self._white_t(lv) + m * x
                rows = torch.cat([M.center(mixed[k:k + 1], off) for k, off in enumerate(p.offsets[lv])] + [x])
            self._variants[lv] = rows
        return self._variants[lv]

    def inputs(self, lv: int, j0: int, j1: int) -> torch.Tensor:
        p, L, x = self.plan, self.plan.levels[lv], self.xs[lv - self.first]
        if p.one_window:
            rows = self._variant_rows(lv) if L.variant is not None else None
            return x.expand(j1 - j0, -1, -1, -1) if rows is None else rows[L.variant[j0:j1]]
        boot = lv < len(p.offsets)
        white_t = self._white_t(lv) if boot else None
        out = []
        for j in range(j0, j1):
            y, x0, a, b = p.tiles[L.tiles[j]]
            crop = x[..., y:y + a, x0:x0 + b]
            r = L.regions[j]
            if boot and r >= 0:
                m = p.masks[lv, r][y:y + a, x0:x0 + b]
                crop = (1 - m) * white_t[..., y:y + a, x0:x0 + b] + m * crop
            out.append(crop)
        return torch.cat(out)

    def attn_weights(self, lv: int, j0: int, j1: int) -> list[torch.Tensor]:
        p, L = self.plan, self.plan.levels[lv]
        if L.attn is not None:
            return [wk[j0:j1] for wk in L.attn]
        crops = [A.crop_weights(p.attn_maps, lv, p.tiles[L.tiles[j]], p.attn_tile_sizes) for j in range(j0, j1)]
        return [torch.cat(ws) for ws in zip(*crops)]

    def accumulate(self, lv: int, j0: int, j1: int, x_in: torch.Tensor, eps: torch.Tensor) -> None:
        """Latent pre-averaging, the sums: each region's x̂0 weighted by its
        mask at this step (uncentred first), the background's apart."""
        p, L, k = self.plan, self.plan.levels[lv], lv - self.first
        x0 = self.e._clean_estimate(p, lv, x_in, eps)
        for j in range(j0, j1):
            if L.shifts[j] != (0, 0):
                x0[j - j0] = M.uncenter(x0[j - j0], L.shifts[j])
        if p.mode == "attention":
            if p.one_window:
                self.num[k] += x0.sum(0)
                self.den[k] += j1 - j0
                return
            for j in range(j0, j1):
                y, x, a, b = p.tiles[L.tiles[j]]
                self.num[k, :, y:y + a, x:x + b] += p.tile_weight[0] * x0[j - j0]
                self.den[k, :, y:y + a, x:x + b] += p.tile_weight[0]
            return
        if p.one_window:
            rw, bw = L.region_weight[j0:j1], L.bg_weight[j0:j1]
            self.num[k] += (rw * x0).sum(0)
            self.den[k] += rw.sum(0)
            self.bnum[k] += (bw * x0).sum(0)
            self.bden[k] += bw.sum(0)
            return
        tw = p.tile_weight[0]
        for j in range(j0, j1):
            y, x, a, b = p.tiles[L.tiles[j]]
            r = L.regions[j]
            if r == BACKGROUND:
                self.bnum[k, :, y:y + a, x:x + b] += tw * x0[j - j0]
                self.bden[k, :, y:y + a, x:x + b] += tw
            else:
                wgt = tw * p.masks[lv, r][None, y:y + a, x:x + b]
                self.num[k, :, y:y + a, x:x + b] += wgt * x0[j - j0]
                self.den[k, :, y:y + a, x:x + b] += wgt

    def finish(self) -> torch.Tensor:
        """The pre-averaged clean estimates x̄0, (S, 4, h, w): regions by
        their masks, the uncovered area from the background prediction and
        image."""
        p = self.plan
        B = p.uncovered[self.first:self.first + len(self.xs)]
        s = p.scene.background.strength
        if p.mode == "attention":
            x = self.num / self.den.clamp_min(1e-8)
            if p.bg_image is None:
                return x
            w = B * s
            return (1 - w) * x + w * p.bg_image
        fg = self.num / self.den.clamp_min(1e-8)
        bgx = self.bnum / self.bden.clamp_min(1e-8)
        if p.bg_image is not None:
            bgx = (1 - s) * bgx + s * p.bg_image
        return torch.where(self.bden > 0, (1 - B) * fg + B * bgx, fg)


class _Passes:
    """Jobs grouped by what can share a UNet batch, walked in bounded passes
    (a pass never mixes groups)."""

    def __init__(self, engine: Engine, jobs: list[_Job]):
        self.e = engine
        groups: dict[tuple, list[_Job]] = {}
        for job in jobs:
            groups.setdefault(job.plan.batch_key(), []).append(job)
        # (rows per sample, prompts per sample, [(job, level, samples)])
        self.groups = [(2 if g[0].plan.cfg else 1, max(j.plan.prompts for j in g),
                        [(j, lv, n) for j in g for lv, n in j.runs]) for g in groups.values()]
        self.rows = {id(j): j.samples * (2 if j.plan.cfg else 1) for j in jobs}
        self.total = sum(self.rows.values())
        self.left = self.total
        self._g = self._r = self._j = 0  # cursor: group, run, sample

    def run(self, max_rows: int | None) -> int:
        limit = self.e.max_batch_rows(max_rows if max_rows is not None else self.left)
        mult, prompts, runs = self.groups[self._g]
        budget = max(1, limit // mult)
        segments = []
        while budget and self._r < len(runs):
            job, lv, n = runs[self._r]
            take = min(budget, n - self._j)
            segments.append((job, lv, self._j, self._j + take))
            budget -= take
            self._j += take
            if self._j == n:
                self._r, self._j = self._r + 1, 0
        if self._r == len(runs):
            self._g, self._r = self._g + 1, 0
        self.e._forward(segments, prompts)
        rows = mult * sum(j1 - j0 for _, _, j0, j1 in segments)
        self.left -= rows
        return rows


class _Work:
    """What both kinds of work share: the UNet passes of the current step."""

    _passes: _Passes

    @property
    def samples_total(self) -> int:
        """UNet samples of the current step."""
        return self._passes.total

    @property
    def samples_left(self) -> int:
        """...not yet computed."""
        return self._passes.left


def _checked(decoder: V.Decoder) -> np.ndarray:
    image, finite = decoder.result()
    if not finite:
        # fp16 overflow or a broken model gives NaN: say so rather than show black.
        raise FloatingPointError("the model produced non-finite values (NaN/inf); try --dtype fp32")
    return image


class StepWork(_Work):
    """One frame of each of several streams, as passes (``run``): UNet
    passes over the frames' samples, then per stream one finishing pass
    (pre-averaging, re-noising, the first decoder tile) and one per further
    decoder tile.

    A sample is one row of a UNet batch: a slot x window x region (in
    attention mode a slot x window); with classifier-free guidance each
    takes two rows, and a pass runs at least one. The streams' state
    changes only in their finishing pass: work dropped before it leaves
    them as they were. On CUDA with decoding on a side
    stream, begin the next work before calling ``frames()`` to overlap the
    copy with the next step; ``ready()`` says whether ``frames()`` would wait.
    """

    def __init__(self, engine: Engine, streams: list["StreamSession"]):
        self.e = engine
        self.streams = list(streams)
        jobs = [s._begin() for s in self.streams]
        self._passes = _Passes(engine, jobs)
        total = self._passes.total
        self.share = [self._passes.rows[id(j)] / total if total else 0.0 for j in jobs]
        self._jobs = jobs
        self._finished: list[tuple[V.Decoder, StreamFrame]] = []

    @property
    def done(self) -> bool:
        return (self._passes.left == 0 and len(self._finished) == len(self.streams)
                and all(d.done for d, _ in self._finished))

    @torch.no_grad()
    def run(self, max_samples: int | None = None) -> int:
        """One pass; returns the UNet samples it ran (0 for a finishing pass)."""
        if self._passes.left:
            return self._passes.run(max_samples)
        for dec, _ in self._finished:
            if not dec.done:
                dec.run()
                return 0
        k = len(self._finished)
        if k == len(self.streams):
            raise RuntimeError("the work is done")
        latent, frame = self.streams[k]._advance(self._jobs[k].finish())
        dec = self.e._decoder(latent)
        dec.run()
        self._finished.append((dec, frame))
        return 0

    def ready(self) -> bool:
        return self.done and all(d.ready() for d, _ in self._finished)

    def frames(self) -> list[StreamFrame]:
        if not self.done:
            raise RuntimeError("frames() before the work is done")
        for dec, frame in self._finished:
            frame.image = _checked(dec)
        return [frame for _, frame in self._finished]


class GenerateWork(_Work):
    """One image, step by step, as passes: each step's UNet passes, then a
    finishing pass (pre-averaging, re-noising to the next level), and at the
    end one pass per decoder tile."""

    def __init__(self, engine: Engine, plan: Plan):
        self.e, self.plan = engine, plan
        T = len(plan.timesteps)
        gen = torch.Generator().manual_seed(int(plan.scene.seed))
        x = engine._entry_noise(plan, gen)
        self._renoise = [engine._noise(plan, gen) for _ in range(T - 1)]  # drawn in the order steps use them
        self._white_noise = engine._bootstrap_noise(plan)
        self.step = 0
        self._start(x)
        self._decoder: V.Decoder | None = None

    def _start(self, x: torch.Tensor) -> None:
        self._job = _Job(self.e, self.plan, [x], self.step, self._white_noise)
        self._passes = _Passes(self.e, [self._job])

    @property
    def progress(self) -> tuple[int, int]:
        """(denoising steps finished, steps)."""
        return self.step, len(self.plan.timesteps)

    @property
    def done(self) -> bool:
        return self._decoder is not None and self._decoder.done

    @torch.no_grad()
    def run(self, max_samples: int | None = None) -> int:
        """One pass; returns the UNet samples it ran (0 for a finishing pass)."""
        if self._passes.left:
            return self._passes.run(max_samples)
        if self._decoder is None:
            x0 = self._job.finish()
            self.step += 1
            p = self.plan
            if self.step < len(p.timesteps):
                i = self.step
                self._start(p.sqrt_ab[i] * x0 + p.sqrt_1mab[i] * self._renoise[i - 1])
                return 0
            self._decoder = self.e._decoder(x0)
        elif self._decoder.done:
            raise RuntimeError("the work is done")
        self._decoder.run()
        return 0

    def image(self) -> np.ndarray:
        if not self.done:
            raise RuntimeError("image() before the work is done")
        return _checked(self._decoder)


class StreamSession:
    """The stream batch: one latent per noise level in flight, all advanced
    by one UNet call per frame; the deepest one is shown.

    Edits take effect at the next frame without a flush: levels already in
    flight continue under the new scene, so an edit is fully visible within
    ``steps_in_flight`` frames. Noise is fixed per session, so a static
    scene gives identical frames.
    """

    def __init__(self, engine: Engine, scene: Scene, revision: int = 0, plan: Plan | None = None):
        self.engine = engine
        self.revision = revision
        self.frames = 0
        self._pending: tuple[Scene, int, Plan | None] | None = None
        self._reset(plan if plan is not None else engine.plan(scene))

    @property
    def steps_in_flight(self) -> int:
        return len(self.plan.timesteps)

    def _reset(self, plan: Plan) -> None:
        self.plan = plan
        T = len(plan.timesteps)
        gen = torch.Generator().manual_seed(int(plan.scene.seed))
        e = self.engine
        self._entry = e._entry_noise(plan, gen)
        self._renoise = e._noise(plan, gen, T)
        self._white_noise = e._bootstrap_noise(plan)
        self._slots: list[torch.Tensor | None] = [None] * T
        self._since: list[int] = [self.revision] * T  # oldest revision in each slot's history

    def update(self, scene: Scene, revision: int, plan: Plan | None = None) -> None:
        """Replace the scene, applied at the next frame. Without ``plan`` the
        scene is checked now and planned then; a plan made elsewhere (another
        thread) is used as it is."""
        if plan is None:
            self.engine.check(scene)
        self._pending = (scene if plan is None else plan.scene, revision, plan)

    def _apply_pending(self) -> None:
        scene, revision, plan = self._pending
        self._pending = None
        old = self.plan.scene
        plan = plan if plan is not None else self.engine.plan(scene)
        self.revision = revision
        if (scene.width, scene.height, scene.steps, scene.seed) != (old.width, old.height, old.steps, old.seed):
            self._reset(plan)  # shapes or noise changed: the levels in flight are not reusable
        else:
            self.plan = plan

    @torch.no_grad()
    def step(self) -> StreamFrame:
        return self.engine.step_streams([self])[0]

    def _begin(self) -> _Job:
        """Apply a pending edit and fill level 0: this frame's job."""
        if self._pending is not None:
            self._apply_pending()
        self._slots[0] = self._entry
        self._since[0] = self.revision
        live = [x for x in self._slots if x is not None]  # levels 0..d: filled from the top
        return _Job(self.engine, self.plan, live, 0, self._white_noise)

    def _advance(self, x0: torch.Tensor) -> tuple[torch.Tensor, StreamFrame]:
        """Show the deepest level's estimate; re-noise the rest one level down.
        Returns the latent to decode and the frame (without its image yet)."""
        plan, T = self.plan, len(self.plan.timesteps)
        S = x0.shape[0]
        deepest = S - 1
        settled = deepest == T - 1 and self._since[deepest] == self.revision
        slots: list[torch.Tensor | None] = [None] * T
        since = [self.revision] * T
        m = min(S, T - 1)  # levels that move down one
        if m:
            moved = plan.sqrt_ab[1:m + 1].view(-1, 1, 1, 1) * x0[:m] + \
                plan.sqrt_1mab[1:m + 1].view(-1, 1, 1, 1) * self._renoise[:m, 0]
            for i in range(m):
                slots[i + 1] = moved[i:i + 1]
                since[i + 1] = self._since[i]
        self._slots, self._since = slots, since
        frame = StreamFrame(image=None, index=self.frames, revision=self.revision, settled=settled)
        self.frames += 1
        return x0[deepest:deepest + 1], frame

"""StreamMultiDiffusion on diffusers components.

One function does the paper's work for a batch of latents at possibly
different noise levels (``Engine._denoise``): build one UNet batch of
(slot x tile x region) samples, turn each prediction into a clean-latent
estimate with the LCM boundary scalings, and *pre-average* those estimates
with the per-step quantized masks before anything is re-noised.
``generate`` walks one latent through all levels; a ``StreamSession`` keeps
one latent per level in flight and advances all of them with a single call.
"""

from __future__ import annotations

import copy
import hashlib
import logging
from collections import OrderedDict
from dataclasses import dataclass

import numpy as np
import torch

from smd_daemon.engine import masks as M
from smd_daemon.engine.models import Components
from smd_daemon.engine.scene import Scene

log = logging.getLogger(__name__)

# LCM-distilled UNets take the guidance scale as an embedding instead of a
# doubled batch; this is the value such models were tuned around.
DEFAULT_LCM_GUIDANCE = 8.5
TILE_STRIDE = 32  # latent pixels between overlapping windows on large canvases
# Samples per UNet forward pass. The largest single-window stream batch
# (4 steps x (16 regions + background)) fits in one; huge tiled canvases
# are split into several passes instead of one that exhausts GPU memory.
DEFAULT_MAX_BATCH = 72


class Cancelled(Exception):
    """``generate`` was cancelled between two steps."""


@dataclass
class StreamFrame:
    image: np.ndarray  # uint8 (H, W, 3)
    index: int  # frames emitted by this session so far, minus one
    revision: int  # newest scene revision applied
    settled: bool  # every step that made this frame saw ``revision``


@dataclass
class _Plan:
    """A scene compiled for the engine: everything a step needs, on device."""

    scene: Scene
    timesteps: list[int]
    sqrt_ab: torch.Tensor  # (T,) sqrt(alpha_bar_t)
    sqrt_1mab: torch.Tensor  # (T,) sqrt(1 - alpha_bar_t)
    c_skip: list[float]
    c_out: list[float]
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


class Engine:
    """Owns the model and the caches that outlive a scene (prompt embeddings,
    encoded white and background images). Call from one thread."""

    def __init__(self, components: Components, max_batch: int | None = DEFAULT_MAX_BATCH,
                 embed_cache_size: int = 256):
        self.c = components
        self.max_batch = max_batch
        self._emb: OrderedDict[str, torch.Tensor] = OrderedDict()
        self._emb_cap = embed_cache_size
        self._latents: OrderedDict[bytes, torch.Tensor] = OrderedDict()
        self.scheduler = copy.deepcopy(components.scheduler)
        self.alphas_cumprod = self.scheduler.alphas_cumprod.to(torch.float32)
        self.vae_scale = components.vae_scale_factor
        self.native = int(components.unet.config.sample_size)
        self.unet_calls = 0  # counted for tests and benchmarks

    # ---- conditioning -------------------------------------------------
    @torch.no_grad()
    def encode_prompts(self, prompts: list[str]) -> torch.Tensor:
        """(N, L, D) text embeddings; each distinct prompt is encoded once and cached."""
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
        while len(self._emb) > self._emb_cap:
            self._emb.popitem(last=False)
        return torch.cat([self._emb[p] for p in prompts])

    def encode_image(self, image: np.ndarray) -> torch.Tensor:
        """uint8 (H, W, 3) -> (1, 4, h, w) clean latent (scaled), cached by content."""
        key = hashlib.blake2b(image.tobytes(), digest_size=16).digest() + repr(image.shape).encode()
        return self._cached_latent(key, lambda: image)

    def white_latent(self, height: int, width: int) -> torch.Tensor:
        """The bootstrap background: the latent of an all-white image, cached by
        size (every scene update plans again; no image is built or hashed)."""
        return self._cached_latent(b"white" + repr((height, width)).encode(),
                                   lambda: np.full((height, width, 3), 255, np.uint8))

    @torch.no_grad()
    def _cached_latent(self, key: bytes, make_image) -> torch.Tensor:
        if key in self._latents:
            self._latents.move_to_end(key)
            return self._latents[key]
        x = torch.from_numpy(np.ascontiguousarray(make_image())).to(self.c.device)
        x = (x.permute(2, 0, 1)[None].to(self.c.dtype) / 127.5) - 1
        enc = self.c.vae.encode(x)
        z = enc.latent_dist.mean if hasattr(enc, "latent_dist") else enc.latents
        z = z * self.c.vae.config.scaling_factor
        self._latents[key] = z
        while len(self._latents) > 8:
            self._latents.popitem(last=False)
        return z

    @torch.no_grad()
    def decode(self, latent: torch.Tensor) -> np.ndarray:
        """(1, 4, h, w) clean latent -> uint8 (H, W, 3)."""
        img = self.c.vae.decode(latent / self.c.vae.config.scaling_factor, return_dict=False)[0]
        img = (img[0].float() / 2 + 0.5).clamp(0, 1)
        return (img.permute(1, 2, 0) * 255).round().to(torch.uint8).cpu().numpy()

    # ---- planning ------------------------------------------------------
    def timesteps(self, steps: int) -> list[int]:
        self.scheduler.set_timesteps(steps)
        return [int(t) for t in self.scheduler.timesteps]

    @torch.no_grad()
    def plan(self, scene: Scene) -> _Plan:
        scene.validate()
        dev, dt = self.c.device, self.c.dtype
        ts = self.timesteps(scene.steps)
        ab = self.alphas_cumprod[ts]
        scalings = [self.scheduler.get_scalings_for_boundary_condition_discrete(t) for t in ts]
        h, w = scene.height // self.vae_scale, scene.width // self.vae_scale

        bg = scene.background
        regions = scene.regions
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
        if regions:
            raw = torch.from_numpy(np.stack([r.mask for r in regions]).astype(np.float32))
            masks = M.quantize_masks(raw, [r.mask_strength for r in regions], [r.mask_std for r in regions],
                                     sigmas, (h, w), scene.mask_mode, scene.cover_alpha)
        else:
            masks = torch.zeros((len(ts), 0, h, w))
        uncovered = (1 - masks.sum(1, keepdim=True)).clamp(0, 1)

        tiled = h > self.native or w > self.native
        th, tw = min(h, self.native), min(w, self.native)
        tiles = [(y, x, th, tw) for y in M.tile_origins(h, th, TILE_STRIDE) for x in M.tile_origins(w, tw, TILE_STRIDE)]
        weight = M.ramp_weights(th, tw) if tiled else torch.ones(th, tw)
        active = [[[bool(masks[i, p, y:y + a, x:x + b].any()) for p in range(len(regions))]
                   for (y, x, a, b) in tiles] for i in range(len(ts))]
        need_bg = [[bool(uncovered[i, 0, y:y + a, x:x + b].any()) for (y, x, a, b) in tiles] for i in range(len(ts))]
        # Centring moves a region within the whole canvas; on a tiled canvas
        # a window is not the canvas, so only the white bootstrap applies.
        offsets = [[(0, 0) if tiled else M.center_offset(masks[i, p]) for p in range(len(regions))]
                   for i in range(min(scene.bootstrap_steps, len(ts)) if regions else 0)]

        white = None
        if scene.bootstrap_steps > 0 and regions:
            white = self.white_latent(scene.height, scene.width)
        bg_image = self.encode_image(bg.image) if bg.image is not None and bg.strength > 0 else None

        return _Plan(
            scene=scene, timesteps=ts, sqrt_ab=ab.sqrt().to(dev, dt), sqrt_1mab=(1 - ab).sqrt().to(dev, dt),
            c_skip=[float(s[0]) for s in scalings], c_out=[float(s[1]) for s in scalings], latent_hw=(h, w),
            region_emb=region_emb, region_neg=region_neg, bg_emb=bg_emb, bg_neg=bg_neg,
            masks=masks.to(dev, dt), uncovered=uncovered.to(dev, dt), offsets=offsets, white=white,
            bg_image=bg_image, tiles=tiles, tile_weight=weight.to(dev, dt)[None, None], active=active,
            need_bg=need_bg, cfg=cfg, time_cond=time_cond,
        )

    # ---- the step --------------------------------------------------------
    def _unet(self, x: torch.Tensor, t: torch.Tensor, emb: torch.Tensor, time_cond: torch.Tensor | None):
        self.unet_calls += 1
        n = x.shape[0]
        step = self.max_batch or n
        outs = []
        for s in range(0, n, step):
            kw = {}
            if time_cond is not None:
                kw["timestep_cond"] = time_cond.expand(min(step, n - s), -1)
            outs.append(self.c.unet(x[s:s + step], t[s:s + step], encoder_hidden_states=emb[s:s + step],
                                    return_dict=False, **kw)[0])
        return torch.cat(outs) if len(outs) > 1 else outs[0]

    def _inputs(self, plan: _Plan, xs: list[torch.Tensor], levels: list[int], white_noise: torch.Tensor | None):
        """The UNet samples for latents ``xs[k]`` at step ``levels[k]``: one per
        (latent, window, region touching it), plus the background where any
        pixel of the window is uncovered."""
        ins, ts, embs, negs, items = [], [], [], [], []
        for k, (x, i) in enumerate(zip(xs, levels)):
            t = plan.timesteps[i]
            boot = i < len(plan.offsets)
            if boot:
                # Mask-centering bootstrap: outside its mask a region sees a
                # white image at this noise level, centred on its own box.
                white_t = plan.sqrt_ab[i] * plan.white + plan.sqrt_1mab[i] * white_noise[i]
            for ti, (y, x0, a, b) in enumerate(plan.tiles):
                for p in range(plan.region_emb.shape[0]):
                    if not plan.active[i][ti][p]:
                        continue
                    inp = x
                    if boot:
                        m = plan.masks[i, p][None, None]
                        inp = M.center((1 - m) * white_t + m * x, plan.offsets[i][p])
                    ins.append(inp[..., y:y + a, x0:x0 + b])
                    embs.append(plan.region_emb[p:p + 1])
                    negs.append(plan.region_neg[p:p + 1] if plan.cfg else None)
                    ts.append(t)
                    items.append((k, ti, p))
                if plan.need_bg[i][ti]:
                    ins.append(x[..., y:y + a, x0:x0 + b])
                    embs.append(plan.bg_emb)
                    negs.append(plan.bg_neg)
                    ts.append(t)
                    items.append((k, ti, -1))
        return torch.cat(ins), ts, embs, negs, items

    def _clean_estimate(self, plan: _Plan, x_in: torch.Tensor, eps: torch.Tensor, items, levels) -> torch.Tensor:
        """x̂0 per sample with the LCM boundary condition."""
        dev, dt = self.c.device, self.c.dtype
        lv = torch.tensor([levels[k] for k, _, _ in items], device=dev)
        sa = plan.sqrt_ab[lv].view(-1, 1, 1, 1)
        s1 = plan.sqrt_1mab[lv].view(-1, 1, 1, 1)
        c_skip = torch.tensor([plan.c_skip[levels[k]] for k, _, _ in items], device=dev, dtype=dt).view(-1, 1, 1, 1)
        c_out = torch.tensor([plan.c_out[levels[k]] for k, _, _ in items], device=dev, dtype=dt).view(-1, 1, 1, 1)
        pred_type = self.scheduler.config.prediction_type
        if pred_type == "v_prediction":
            x0 = sa * x_in - s1 * eps
        elif pred_type == "sample":
            x0 = eps
        else:
            x0 = (x_in - s1 * eps) / sa
        return c_out * x0 + c_skip * x_in

    @torch.no_grad()
    def _denoise_many(self, jobs: list[tuple[_Plan, list[torch.Tensor], list[int], torch.Tensor | None]]):
        """Several ``_denoise`` jobs (e.g. different clients' streams) with one
        UNet call per group of jobs whose samples can share a batch."""
        dev = self.c.device
        built = [self._inputs(*job) for job in jobs]
        groups: dict[tuple, list[int]] = {}
        for n, (plan, *_rest) in enumerate(jobs):
            t = plan.tiles[0]
            key = (t[2], t[3], plan.cfg, plan.scene.guidance_scale if plan.cfg or plan.time_cond is not None else 0)
            groups.setdefault(key, []).append(n)
        results: list[list[torch.Tensor] | None] = [None] * len(jobs)
        for members in groups.values():
            plan0 = jobs[members[0]][0]
            x_in = torch.cat([built[n][0] for n in members])
            t_in = torch.tensor([t for n in members for t in built[n][1]], device=dev)
            e_in = torch.cat([e for n in members for e in built[n][2]])
            if plan0.cfg:
                # Classifier-free guidance only when asked for (guidance > 1 on a
                # UNet without a guidance embedding): never a doubled batch at 1.0.
                neg = torch.cat([e for n in members for e in built[n][3]])
                eps_u, eps_c = self._unet(torch.cat([x_in, x_in]), torch.cat([t_in, t_in]),
                                          torch.cat([neg, e_in]), None).chunk(2)
                eps = eps_u + plan0.scene.guidance_scale * (eps_c - eps_u)
            else:
                eps = self._unet(x_in, t_in, e_in, plan0.time_cond)
            start = 0
            for n in members:
                plan, _, levels, _ = jobs[n]
                xi, _, _, _, items = built[n]
                end = start + xi.shape[0]
                x0 = self._clean_estimate(plan, xi, eps[start:end], items, levels)
                results[n] = self._pre_average(plan, x0, items, levels)
                start = end
        return results

    def _denoise(self, plan: _Plan, xs: list[torch.Tensor], levels: list[int],
                 white_noise: torch.Tensor | None) -> list[torch.Tensor]:
        """Latents ``xs[k]`` (1, 4, h, w) at step ``levels[k]`` -> their
        pre-averaged clean estimates x̄0, all in one batched UNet call."""
        return self._denoise_many([(plan, xs, levels, white_noise)])[0]

    def _pre_average(self, plan: _Plan, x0: torch.Tensor, items: list[tuple[int, int, int]],
                     levels: list[int]) -> list[torch.Tensor]:
        """Latent pre-averaging: weight each region's x̂0 by its mask at this
        step *before* re-noising; uncovered area takes the background."""
        dev, dt = self.c.device, self.c.dtype
        h, w = plan.latent_hw
        S = len(levels)
        for j, (k, _, p) in enumerate(items):
            if p >= 0 and levels[k] < len(plan.offsets) and plan.offsets[levels[k]][p] != (0, 0):
                x0[j] = M.uncenter(x0[j], plan.offsets[levels[k]][p])
        num = torch.zeros((S, 4, h, w), device=dev, dtype=dt)
        den = torch.zeros((S, 1, h, w), device=dev, dtype=dt)
        bnum = torch.zeros((S, 4, h, w), device=dev, dtype=dt)
        bden = torch.zeros((S, 1, h, w), device=dev, dtype=dt)
        if len(plan.tiles) == 1:
            # One window: a handful of batched kernels, whatever the batch.
            reg = [j for j, it in enumerate(items) if it[2] >= 0]
            bgs = [j for j, it in enumerate(items) if it[2] < 0]
            if reg:
                idx = torch.tensor(reg, device=dev)
                k = torch.tensor([items[j][0] for j in reg], device=dev)
                wgt = plan.masks[torch.tensor([levels[items[j][0]] for j in reg], device=dev),
                                 torch.tensor([items[j][2] for j in reg], device=dev)][:, None]
                num.index_add_(0, k, wgt * x0[idx])
                den.index_add_(0, k, wgt)
            if bgs:
                k = torch.tensor([items[j][0] for j in bgs], device=dev)
                bnum.index_add_(0, k, x0[torch.tensor(bgs, device=dev)])
                bden[k] = 1
        else:
            tw = plan.tile_weight
            for j, (k, ti, p) in enumerate(items):
                y, x, a, b = plan.tiles[ti]
                if p < 0:
                    bnum[k:k + 1, :, y:y + a, x:x + b] += tw * x0[j:j + 1]
                    bden[k:k + 1, :, y:y + a, x:x + b] += tw
                else:
                    wgt = tw * plan.masks[levels[k], p][None, None, y:y + a, x:x + b]
                    num[k:k + 1, :, y:y + a, x:x + b] += wgt * x0[j:j + 1]
                    den[k:k + 1, :, y:y + a, x:x + b] += wgt
        fg = num / den.clamp_min(1e-8)
        B = plan.uncovered[torch.tensor(levels, device=dev)]  # (S, 1, h, w)
        bgx = bnum / bden.clamp_min(1e-8)
        if plan.bg_image is not None:
            s = plan.scene.background.strength
            bgx = (1 - s) * bgx + s * plan.bg_image
        fg = torch.where(bden > 0, (1 - B) * fg + B * bgx, fg)
        return list(fg.split(1))

    def _renoise(self, plan: _Plan, x0: torch.Tensor, level: int, noise: torch.Tensor) -> torch.Tensor:
        return plan.sqrt_ab[level] * x0 + plan.sqrt_1mab[level] * noise

    def _noise(self, plan: _Plan, generator: torch.Generator, n: int | None = None) -> torch.Tensor:
        """One latent of noise (1, 4, h, w), or ``n`` of them (n, 1, 4, h, w).

        Drawn on the CPU so a seed gives the same image on every device
        (and the same draws as diffusers' pipelines with a CPU generator)."""
        h, w = plan.latent_hw
        shape = (1, 4, h, w) if n is None else (n, 1, 4, h, w)
        return torch.randn(shape, generator=generator, dtype=self.c.dtype).to(self.c.device)

    def _bootstrap_noise(self, plan: _Plan) -> torch.Tensor:
        """Fixed noise for the white bootstrap background, one per step; its
        own generator, so the image noise does not depend on it. Drawn even
        without bootstrap steps: a stream's later edit may turn them on."""
        return self._noise(plan, torch.Generator().manual_seed(int(plan.scene.seed) + 1), len(plan.timesteps))

    # ---- modes -------------------------------------------------------------
    @torch.no_grad()
    def generate(self, scene: Scene, progress=None, cancel=None) -> np.ndarray:
        """One-shot multi-region generation: uint8 (H, W, 3)."""
        plan = self.plan(scene)
        T = len(plan.timesteps)
        gen = torch.Generator().manual_seed(int(scene.seed))
        x = self._noise(plan, gen)
        white_noise = self._bootstrap_noise(plan)
        x0 = x
        for i in range(T):
            if cancel is not None and cancel():
                raise Cancelled()
            (x0,) = self._denoise(plan, [x], [i], white_noise)
            if i + 1 < T:
                x = self._renoise(plan, x0, i + 1, self._noise(plan, gen))
            if progress is not None:
                progress(i + 1, T)
        _check_finite(x0)
        return self.decode(x0)

    def open_stream(self, scene: Scene, revision: int = 0) -> "StreamSession":
        return StreamSession(self, scene, revision)

    @torch.no_grad()
    def step_streams(self, streams: list["StreamSession"]) -> list[StreamFrame]:
        """Advance several sessions one frame each. Sessions whose samples fit
        one batch (same window size and guidance) share a single UNet call, so
        every client gets a frame per round and none waits behind another."""
        jobs = [s._begin() for s in streams]
        x0s = self._denoise_many(jobs)
        return [s._finish(x0) for s, x0 in zip(streams, x0s)]


def _check_finite(x: torch.Tensor) -> None:
    # fp16 overflow or a broken model gives NaN: say so rather than show black.
    if not bool(torch.isfinite(x).all()):
        raise FloatingPointError("the model produced non-finite values (NaN/inf); try --dtype fp32")


class StreamSession:
    """The stream batch: one latent per noise level in flight, all advanced
    by one UNet call per frame; the deepest one is shown.

    Edits take effect at the next call without a flush: levels already in
    flight continue under the new scene, so an edit is fully visible within
    ``steps_in_flight`` frames. Noise is fixed per session, so a static
    scene gives identical frames.
    """

    def __init__(self, engine: Engine, scene: Scene, revision: int = 0):
        self.engine = engine
        self.revision = revision
        self.frames = 0
        self._pending: tuple[Scene, int] | None = None
        self._reset(engine.plan(scene))

    @property
    def steps_in_flight(self) -> int:
        return len(self.plan.timesteps)

    def _reset(self, plan: _Plan) -> None:
        self.plan = plan
        T = len(plan.timesteps)
        gen = torch.Generator().manual_seed(int(plan.scene.seed))
        e = self.engine
        self._entry = e._noise(plan, gen)
        self._renoise = e._noise(plan, gen, T)
        self._white_noise = e._bootstrap_noise(plan)
        self._slots: list[torch.Tensor | None] = [None] * T
        self._since: list[int] = [self.revision] * T  # oldest revision in each slot's history

    def update(self, scene: Scene, revision: int) -> None:
        """Replace the scene; validated now, applied at the next ``step``."""
        scene.validate()
        self._pending = (scene, revision)

    def _apply_pending(self) -> None:
        scene, revision = self._pending
        self._pending = None
        old = self.plan.scene
        plan = self.engine.plan(scene)
        self.revision = revision
        if (scene.width, scene.height, scene.steps, scene.seed) != (old.width, old.height, old.steps, old.seed):
            self._reset(plan)  # shapes or noise changed: the levels in flight are not reusable
        else:
            self.plan = plan

    @torch.no_grad()
    def step(self) -> StreamFrame:
        return self._finish(self.engine._denoise(*self._begin()))

    def _begin(self):
        """Apply a pending edit and fill level 0: the job for ``_denoise``."""
        if self._pending is not None:
            self._apply_pending()
        self._slots[0] = self._entry
        self._since[0] = self.revision
        self._live = [i for i in range(len(self._slots)) if self._slots[i] is not None]
        return self.plan, [self._slots[i] for i in self._live], self._live, self._white_noise

    def _finish(self, x0s: list[torch.Tensor]) -> StreamFrame:
        """Show the deepest level's estimate; re-noise the rest one level down."""
        e, plan, live = self.engine, self.plan, self._live
        _check_finite(x0s[-1])
        T = len(plan.timesteps)
        deepest = live[-1]
        image = e.decode(x0s[-1])
        settled = deepest == T - 1 and self._since[deepest] == self.revision
        slots: list[torch.Tensor | None] = [None] * T
        since = [self.revision] * T
        for i, x0 in zip(live, x0s):
            if i + 1 < T:
                slots[i + 1] = e._renoise(plan, x0, i + 1, self._renoise[i])
                since[i + 1] = self._since[i]
        self._slots, self._since = slots, since
        frame = StreamFrame(image=image, index=self.frames, revision=self.revision, settled=settled)
        self.frames += 1
        return frame

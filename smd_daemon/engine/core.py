"""StreamMultiDiffusion on diffusers components, in bounded passes.

``Engine`` owns the model and what outlives a scene (prompt embeddings,
encoded images). ``Engine.plan`` compiles a scene once (``plan.py``); a step
is then work in passes (``work.py``): ``StepWork`` advances live streams
(``stream.py``) one frame each, ``GenerateWork`` makes one image. In
attention-region mode a latent is one sample whatever the number of
regions, and the regions meet inside the cross-attention layers
(``attention.py``). ``step_streams`` and ``generate`` run such work to the end.
"""

from __future__ import annotations

import copy
import hashlib
import logging
import threading
from collections import OrderedDict

import numpy as np
import torch

from smd_daemon.engine import attention as A
from smd_daemon.engine import masks as M
from smd_daemon.engine import vae as V
from smd_daemon.engine.models import Components
from smd_daemon.engine.plan import TILE_STRIDE, Plan, make_plan
from smd_daemon.engine.runner import UNetRunner, check_speed_options
from smd_daemon.engine.scene import REGION_MODES, Cancelled, Scene, cancel_check
from smd_daemon.engine.stream import StreamFrame, StreamSession
from smd_daemon.engine.work import GenerateWork, StepWork

log = logging.getLogger(__name__)

# Samples per UNet forward pass. The largest single-window stream batch
# (4 steps x (16 regions + background)) fits in one; huge tiled canvases
# take several passes instead of one that exhausts GPU memory.
DEFAULT_MAX_BATCH = 72


class Engine:
    """Owns the model and the caches that outlive a scene (prompt embeddings,
    encoded white and background images). Passes run on one thread; ``plan``
    may run on others at the same time (its caches are locked)."""

    def __init__(
        self,
        components: Components,
        max_batch: int | None = DEFAULT_MAX_BATCH,
        embed_cache_size: int = 256,
        *,
        compile: bool = False,
        cuda_graphs: bool = False,
        overlap_decode: bool = False,
    ):
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
        self.unet_levels = len(components.unet.config.block_out_channels)
        self._region_ctx = A.install(components.unet)
        self.region_modes = REGION_MODES if self._region_ctx is not None else REGION_MODES[:1]
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
        return scene.check_model(self.region_modes, self.max_steps, self.kind)

    # ---- conditioning -------------------------------------------------
    @torch.no_grad()
    def encode_prompts(self, prompts: list[str]) -> torch.Tensor:
        """(N, L, D) text embeddings; each distinct prompt is encoded once and cached."""
        with self._lock:
            missing = [p for p in dict.fromkeys(prompts) if p not in self._emb]
            if missing:
                tok = self.c.tokenizer(
                    missing,
                    padding="max_length",
                    max_length=self.c.tokenizer.model_max_length,
                    truncation=True,
                    return_tensors="pt",
                )
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

    def encode_image(self, image: np.ndarray, cancel=None) -> torch.Tensor:
        """uint8 (H, W, 3) -> (1, 4, h, w) clean latent (scaled), cached by
        content. ``cancel()`` is asked before each tile (``Cancelled``)."""
        key = hashlib.blake2b(np.ascontiguousarray(image).data, digest_size=16).digest() + repr(image.shape).encode()
        return self._cached_latent(
            key,
            lambda: V.encode(
                self.c.vae, image, self.c.device, self.c.dtype, self.vae_scale, self.native, cancel_check(cancel)
            ),
        )

    def white_latent(self, height: int, width: int, cancel=None) -> torch.Tensor:
        """The bootstrap background: the latent of an all-white image, cached by
        size. Its tiles are all one white tile, encoded once per tile size: a
        new canvas size costs a blend, not a canvas-sized encode."""

        def tile(shape, encode):
            return self._cached_latent(b"white tile" + repr(shape).encode(), encode)

        cancel_check(cancel)()
        return self._cached_latent(
            b"white" + repr((height, width)).encode(),
            lambda: V.encode_uniform(
                self.c.vae, height, width, 255, self.c.device, self.c.dtype, self.vae_scale, self.native, tile
            ),
        )

    def _cached_latent(self, key: bytes, encode) -> torch.Tensor:
        with self._lock:
            if key in self._latents:
                self._latents.move_to_end(key)
                return self._latents[key]
        z = encode()  # outside the lock: a large image takes a while
        with self._lock:
            self._latents[key] = z
            while len(self._latents) > 8:
                self._latents.popitem(last=False)
        return z

    def decode(self, latent: torch.Tensor) -> np.ndarray:
        """(1, 4, h, w) clean latent -> uint8 (H, W, 3), all pieces at once."""
        dec = self.decoder(latent)
        while not dec.done:
            dec.run()
        return dec.result()[0]

    def decoder(self, latent: torch.Tensor) -> V.Decoder:
        return V.Decoder(self.c.vae, latent, self.native, self._side)

    # ---- planning ------------------------------------------------------
    def timesteps(self, steps: int) -> list[int]:
        with self._lock:
            if steps not in self._timesteps:
                self.scheduler.set_timesteps(steps)
                self._timesteps[steps] = [int(t) for t in self.scheduler.timesteps]
            return list(self._timesteps[steps])

    def scalings(self, ts: list[int]) -> list[tuple[float, float]]:
        """(c_skip, c_out) per step: the LCM boundary condition, or none (turbo)."""
        if self.kind != "lcm":
            return [(0.0, 1.0)] * len(ts)
        return [tuple(float(v) for v in self.scheduler.get_scalings_for_boundary_condition_discrete(t)) for t in ts]

    def plan(self, scene: Scene, cancel=None) -> Plan:
        """Compile ``scene``; safe to call from another thread while passes run.
        ``cancel()`` is asked between the expensive pieces (prompt encodes,
        image tiles, masks); when it says so, ``Cancelled`` is raised."""
        return make_plan(self, scene, cancel)

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
        plan = (
            T * (P + 1) * hw * b  # masks, uncovered
            + 2 * 4 * hw * b  # white and background latents
            + 2 * G * tokens * b * cfg  # prompt embeddings
            + T * per_level * (tokens * (G if attention else 1) * b * cfg + 16)
        )  # per-sample rows
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

    def noise(self, plan: Plan, generator: torch.Generator, n: int | None = None) -> torch.Tensor:
        """One latent of noise (1, 4, h, w), or ``n`` of them (n, 1, 4, h, w).

        Drawn on the CPU so a seed gives the same image on every device
        (and the same draws as diffusers' pipelines with a CPU generator)."""
        h, w = plan.latent_hw
        shape = (1, 4, h, w) if n is None else (n, 1, 4, h, w)
        return torch.randn(shape, generator=generator, dtype=self.c.dtype).to(self.c.device)

    def entry_noise(self, plan: Plan, generator: torch.Generator) -> torch.Tensor:
        x = self.noise(plan, generator)
        return x if plan.entry_scale == 1.0 else x * plan.entry_scale

    def bootstrap_noise(self, plan: Plan) -> torch.Tensor:
        """Fixed noise for the white bootstrap background, one per step; its
        own generator, so the image noise does not depend on it. Drawn even
        without bootstrap steps: a stream's later edit may turn them on."""
        return self.noise(plan, torch.Generator().manual_seed(int(plan.scene.seed) + 1), len(plan.timesteps))

    # ---- modes -------------------------------------------------------------
    def begin_generate(self, scene: Scene, plan: Plan | None = None) -> GenerateWork:
        """One-shot generation as resumable work (see ``GenerateWork``)."""
        return GenerateWork(self, plan if plan is not None else self.plan(scene))

    @torch.no_grad()
    def generate(self, scene: Scene, progress=None, cancel=None) -> np.ndarray:
        """One-shot multi-region generation: uint8 (H, W, 3). ``cancel`` is
        asked while planning and between passes; ``progress(step, total)``
        after each step."""
        work = self.begin_generate(scene, self.plan(scene, cancel))
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

    def open_stream(self, scene: Scene, revision: int = 0, plan: Plan | None = None) -> StreamSession:
        return StreamSession(self, scene, revision, plan)

    def begin_streams(self, streams: list[StreamSession]) -> StepWork:
        """Apply each stream's pending edit and build the samples of one frame
        of each (see ``StepWork``)."""
        return StepWork(self, streams)

    @torch.no_grad()
    def step_streams(self, streams: list[StreamSession]) -> list[StreamFrame]:
        """Advance several sessions one frame each. Sessions whose samples fit
        one batch (same window size and guidance) share UNet calls, so every
        client gets a frame per round and none waits behind another."""
        work = self.begin_streams(streams)
        while not work.done:
            work.run()
        return work.frames()

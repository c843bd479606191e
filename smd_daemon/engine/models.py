"""Model loading: one specification string accepted everywhere (``--model``).

    tiny            tiny random SD-1.5-shaped pipeline, offline (tests, smoke runs)
    random-sd15     real SD-1.5 architecture, random weights, offline (benchmarks)
    tiny-xl         tiny random SDXL-shaped pipeline, offline (tests, smoke runs)
    random-sdxl     real SDXL UNet architecture, random weights, offline (benchmarks)
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

import logging
import os
from dataclasses import dataclass, field

import torch

from smd_daemon.engine.hub import ModelLoadError, config_of
from smd_daemon.engine.parts import (
    PREDICTION_TYPES,
    fuse_lora,
    load_tiny_vae,
    load_unet,
    load_vae,
)
from smd_daemon.engine.pipelines import FAMILY_NAMES, family_of_unet, load_pipeline
from smd_daemon.engine.sd3_load import (
    DEFAULT_TINY_VAE_SD3,
    check_tiny_vae,
    fuse_sd3_lora,
    refuse_unet_options,
    sd3_parts,
)

log = logging.getLogger(__name__)

PRESETS = ("tiny", "random-sd15", "tiny-xl", "random-sdxl", "tiny-sd3")

# What an artist gets with no --model: an LCM-distilled SD-1.5 model and TAESD.
DEFAULT_MODEL = "SimianLuo/LCM_Dreamshaper_v7"
DEFAULT_TINY_VAE = "madebyollin/taesd"
# ...per family: SDXL's latents need TAESDXL.
DEFAULT_TINY_VAES = {"sd15": DEFAULT_TINY_VAE, "sdxl": "madebyollin/taesdxl", "sd3": DEFAULT_TINY_VAE_SD3}
# For plain SD-1.5 models: makes them few-step capable.
DEFAULT_LCM_LORA = "latent-consistency/lcm-lora-sdv1-5"

KINDS = ("lcm", "turbo")  # chosen with --model-kind; SD3 models are always "flow"


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
    kind: str = "lcm"  # "lcm" | "turbo" (see the module docstring)
    family: str = "sd15"  # the engine's adapter for this architecture (``families.FAMILIES``)
    tokenizer_2: object = None  # SDXL's second text encoder and its tokenizer
    text_encoder_2: torch.nn.Module | None = None
    timesteps: list[int] | None = None  # fixed denoising timesteps (``parse_timesteps``); None: the scheduler's
    full_vae: torch.nn.Module | None = None  # the full VAE for finished images, where ``vae`` is a tiny one
    controls: dict = field(default_factory=dict)  # control kind -> T2IAdapter or ControlNetModel (control_models)
    parts: dict = field(default_factory=dict)  # further parts by pipeline name (SD3's T5: tokenizer_3, text_encoder_3)

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
            "family": self.family,
            **info,
        }

    @property
    def vae_scale_factor(self) -> int:
        cfg = config_of(self.vae)
        if hasattr(cfg, "block_out_channels"):
            return 2 ** (len(cfg.block_out_channels) - 1)
        return 8


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
    family = family_of_unet(pipe.unet)
    second = getattr(pipe, "text_encoder_2", None)
    if family == "sdxl":
        if second is None or getattr(pipe, "text_encoder", None) is None:
            raise ModelLoadError(
                f"model {name!r} has an SDXL UNet but not both SDXL text encoders "
                f"(an SDXL refiner is not a text-to-image model)"
            )
    full_vae, timesteps = info.pop("full_vae", None), info.pop("timesteps", None)
    for part in (pipe.text_encoder, second, pipe.unet, pipe.vae, full_vae):
        if part is None:
            continue
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
        family,
        getattr(pipe, "tokenizer_2", None) if family == "sdxl" else None,
        second if family == "sdxl" else None,
        timesteps,
        full_vae,
    )


def _build_preset(spec: str, seed: int):
    from smd_daemon.engine import tiny, tiny_xl

    build, what = {
        "tiny": (tiny.build_tiny_pipeline, "a tiny SD-1.5-shaped model for tests and smoke runs"),
        "random-sd15": (tiny.build_random_sd15, "the SD-1.5 architecture"),
        "tiny-xl": (tiny_xl.build_tiny_xl_pipeline, "a tiny SDXL-shaped model for tests and smoke runs"),
        "random-sdxl": (tiny_xl.build_random_sdxl, "the SDXL UNet architecture"),
    }[spec]
    log.warning("model %r: %s with random weights, produces no meaningful images", spec, what)
    return build(seed)


MAX_TIMESTEPS = 50


def parse_timesteps(text: str | None, train_steps: int = 1000) -> list[int] | None:
    """``--timesteps 999,749,499,249``: the timesteps a model was distilled
    at, descending (DMD2's four). A scene of N steps uses N of them, evenly
    picked; more steps than given are refused. None or '' for the scheduler's."""
    if text is None or not str(text).strip():
        return None
    try:
        ts = [int(t) for t in str(text).replace(" ", "").split(",")]
    except ValueError:
        raise ModelLoadError(
            f"timesteps {text!r}: expected whole numbers separated by commas, e.g. 999,749,499,249"
        ) from None
    if not 1 <= len(ts) <= MAX_TIMESTEPS:
        raise ModelLoadError(f"timesteps {text!r}: give 1 to {MAX_TIMESTEPS} of them")
    if any(not 0 <= t < train_steps for t in ts) or any(a <= b for a, b in zip(ts, ts[1:])):
        raise ModelLoadError(f"timesteps {text!r}: each in 0..{train_steps - 1}, strictly descending")
    return ts


def check_prediction(prediction: str | None) -> None:
    """A ``prediction`` override is one the engine knows, or a one-line error."""
    if prediction is not None and prediction not in PREDICTION_TYPES:
        raise ModelLoadError(f"unknown prediction {prediction!r}: use one of {', '.join(PREDICTION_TYPES)}")


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
    timesteps: str | None = None,
    vae: str | None = None,
    unet: str | None = None,
    prediction: str | None = None,
) -> Components:
    """Load ``spec`` (see the module docstring) ready for the engine.

    ``tiny_vae``: None keeps the model's VAE; 'auto' means the default TAESD
    for real models and none for presets; 'tiny' builds a random one; else a
    hub id or folder. ``config``: diffusers folder (or hub id) describing a
    single-file checkpoint's architecture, for offline use. ``kind``: ``lcm``
    or ``turbo`` overrides what the scheduler config says (None/'auto': detect).
    ``timesteps``: the fixed timesteps a model was distilled at ('999,749,499,249'
    for DMD2; ``parse_timesteps``). ``vae``: an ``AutoencoderKL`` (hub id or
    folder) replacing the model's, e.g. an fp16-safe one for SDXL. ``unet``:
    distilled UNet weights for the model's UNet (``_load_unet``).
    ``prediction``: what the denoiser predicts, where the scheduler config
    does not say it (SDXL-Lightning's 1-step UNet predicts the sample).
    """
    kind = check_kind(kind)
    check_prediction(prediction)
    fixed = parse_timesteps(timesteps)
    dev = pick_device(device)
    dt = pick_dtype(dev, dtype)
    if dt == torch.float16 and dev.type == "cpu":
        log.warning("fp16 on CPU is slow and poorly supported; fp32 is the CPU default")
    if tiny_vae in ("none", ""):
        tiny_vae = None
    unet_only = dict(kind=kind, unet=unet, prediction=prediction, timesteps=timesteps)
    sd3 = dict(lora=lora, lora_scale=lora_scale, tiny_vae=tiny_vae, dev=dev, dt=dt, seed=seed)
    if spec == "tiny-sd3":
        from smd_daemon.engine.tiny_sd3 import build_tiny_sd3

        refuse_unet_options(spec, **unet_only)
        log.warning("model 'tiny-sd3': SD3-shaped, random weights, produces no meaningful images (tests, smoke runs)")
        return _sd3_components(build_tiny_sd3(seed), spec, "preset", False, **sd3)
    # A tiny autoencoder named outright is loaded first: a bad one is told
    # before the model's minutes of loading, not after.
    tiny = None if tiny_vae in (None, "auto") else load_tiny_vae(tiny_vae, dt, seed)
    if spec in PRESETS:
        pipe, source, meaningful = _build_preset(spec, seed), "preset", False
    else:

        def before(family: str) -> None:
            if family == "sd3":
                refuse_unet_options(spec, **unet_only)

        pipe, source = load_pipeline(spec, config, dt, before, PRESETS)
        meaningful = True
    name = spec if source in ("preset", "hub") else os.path.basename(os.path.normpath(spec))
    if type(pipe).__name__ == "StableDiffusion3Pipeline":
        return _sd3_components(pipe, name, source, meaningful, tiny=tiny, **sd3)
    if unet is not None:
        pipe.unet = load_unet(unet, dt, pipe.unet)
    family = family_of_unet(pipe.unet)
    log.info("model %s is an %s model", name, FAMILY_NAMES[family])
    if tiny_vae == "auto":
        tiny_vae = None if source == "preset" else DEFAULT_TINY_VAES[family]
        tiny = None if tiny_vae is None else load_tiny_vae(tiny_vae, dt, seed)
    if lora is not None:
        fuse_lora(pipe, lora, lora_scale, FAMILY_NAMES[family])
    if vae is not None:
        pipe.vae = load_vae(vae, dt, pipe.vae)
    full_vae = None
    if tiny is not None:
        full_vae, pipe.vae = pipe.vae, tiny
    detected = detect_kind(pipe.scheduler, pipe.unet, lora)
    if kind is not None and kind != detected:
        log.info("model %r looks like a %s model; treated as %s as asked", name, detected, kind)
    kind = kind or detected
    warn = source != "preset" and lora is None and unet is None and detected == "lcm"
    lcm = _set_scheduler(pipe, name, kind, warn=warn)
    if prediction is not None:
        pipe.scheduler = type(pipe.scheduler).from_config(pipe.scheduler.config, prediction_type=prediction)
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
        vae=vae,
        unet=unet,
        lcm=lcm or lora is not None,
        full_vae=full_vae,
        timesteps=fixed,
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
    if fixed:
        log.info("timesteps fixed at %s", ", ".join(map(str, fixed)))
    return comps


def _sd3_components(
    pipe, name: str, source: str, meaningful: bool, *, lora, lora_scale, tiny_vae, dev, dt, seed, tiny=None
):
    """An SD3/SD3.5 pipeline as the engine's components (family ``sd3``, kind ``flow``);
    ``tiny``: the tiny autoencoder ``tiny_vae`` names, when ``load_model`` has loaded it already."""
    if tiny_vae == "auto":
        tiny_vae = None if source == "preset" else DEFAULT_TINY_VAE_SD3
    if lora is not None:
        fuse_sd3_lora(pipe, lora, lora_scale)
    if tiny_vae is not None:
        channels = int(pipe.transformer.config.in_channels)
        if tiny is None or tiny_vae == "tiny":  # a random one is built for the model's channels
            tiny = load_tiny_vae(tiny_vae, dt, seed, channels)
        pipe.vae = check_tiny_vae(tiny, tiny_vae, channels)
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
        kind="flow", family="sd3", tokenizer_2=parts.pop("tokenizer_2"), text_encoder_2=parts.pop("text_encoder_2"),
        parts=parts,
    )  # fmt: skip

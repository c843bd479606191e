"""SD3 models at load: the options only a UNet model takes, refused in one
line, and LoRAs for the SD3 transformer (diffusers' layout, or PEFT's, as
Flash-SD3 ships) fused into it."""

from __future__ import annotations

import json
import os

import torch

from smd_daemon.engine.hub import HUB_ID, ModelLoadError, first_line, from_hub

DEFAULT_TINY_VAE_SD3 = "madebyollin/taesd3"  # SD3's 16-channel latents


def refuse_unet_options(
    spec: str, kind: str | None, unet: str | None = None, prediction: str | None = None, timesteps: str | None = None
) -> None:
    """Options that only mean something for a UNet model, refused for an SD3 one (one line)."""
    for flag, value in (("--unet", unet), ("--prediction", prediction), ("--timesteps", timesteps)):
        if value:
            raise ModelLoadError(
                f"{flag} is for UNet models (SD-1.5, SDXL); {spec!r} is an SD3 model (a transformer, "
                f"sampled by flow matching with its own scheduler): leave {flag} out"
            )
    if kind is not None:
        raise ModelLoadError(
            f"--model-kind {kind} is for UNet models (LCM or SD-Turbo sampling); {spec!r} is an SD3 "
            f"flow-matching model, sampled with its own scheduler: leave --model-kind at auto"
        )


def check_tiny_vae(tiny, spec: str, channels: int):
    """``tiny`` if it makes the model's latents, else a one-line refusal (TAESD's 4 channels)."""
    if int(tiny.config.latent_channels) != channels:
        raise ModelLoadError(
            f"tiny autoencoder {spec!r} makes {tiny.config.latent_channels}-channel latents; this SD3 "
            f"model's have {channels}: use {DEFAULT_TINY_VAE_SD3} (or --tiny-vae none)"
        )
    return tiny


def sd3_parts(pipe, dev: torch.device, dt: torch.dtype) -> dict:
    """The pipeline's modules on ``dev`` in ``dt``, ready for inference, its
    scheduler a flow-matching Euler one, and the encoders beyond the first
    (``Components.parts``)."""
    from diffusers import FlowMatchEulerDiscreteScheduler

    if not isinstance(pipe.scheduler, FlowMatchEulerDiscreteScheduler):
        # The σ schedule is read from the model's own config; sampling is the engine's (``model.py``).
        pipe.scheduler = FlowMatchEulerDiscreteScheduler.from_config(pipe.scheduler.config)
    for part in (pipe.text_encoder, pipe.text_encoder_2, pipe.text_encoder_3, pipe.transformer, pipe.vae):
        if part is None:  # SD3 runs without T5 (its tokens are then zeros)
            continue
        if part.dtype != dt:  # casting to the same dtype only makes diffusers warn
            part.to(dtype=dt)
        part.to(device=dev).eval().requires_grad_(False)
    names = ("tokenizer_2", "text_encoder_2", "tokenizer_3", "text_encoder_3")  # the first two: Components' own
    return {n: getattr(pipe, n) for n in names}


PEFT_PREFIX = "base_model.model."  # PEFT's saved adapters (Flash-SD3's layout)


def sd3_lora_state(pipe, spec: str) -> dict[str, torch.Tensor]:
    """A LoRA for an SD3 transformer as diffusers' SD3 loader takes it:
    diffusers' layout as it is; PEFT's layout (adapter_model.safetensors with
    adapter_config.json) renamed, with PEFT's scale lora_alpha / r folded into
    the up projections."""
    path = os.path.expanduser(spec)
    if not os.path.exists(path):
        if not HUB_ID.match(spec):
            raise ModelLoadError(f"LoRA {spec!r}: no such file or folder, and not a hub id (owner/name)")
        from huggingface_hub import snapshot_download

        path = from_hub(
            "LoRA", spec, lambda **k: snapshot_download(spec, allow_patterns=["*.safetensors", "*.json"], **k)
        )
    state = pipe.lora_state_dict(path, local_files_only=True)
    if not any(k.startswith(PEFT_PREFIX) for k in state):
        return state
    scale = 1.0
    config = os.path.join(path, "adapter_config.json") if os.path.isdir(path) else None
    if config is not None and os.path.isfile(config):
        with open(config, encoding="utf-8") as f:
            cfg = json.load(f)
        if cfg.get("rank_pattern") or cfg.get("alpha_pattern"):
            raise ModelLoadError(f"LoRA {spec!r}: per-layer ranks or alphas (PEFT patterns) are not supported")
        r = float(cfg["r"])
        scale = float(cfg.get("lora_alpha", r)) / (r**0.5 if cfg.get("use_rslora") else r)
    return {
        "transformer." + k[len(PEFT_PREFIX) :]: v * scale if ".lora_B." in k else v
        for k, v in state.items()
        if k.startswith(PEFT_PREFIX)
    }


def fuse_sd3_lora(pipe, spec: str, scale: float) -> None:
    """Fuse an SD3 LoRA (file, folder or hub id) into the transformer; a LoRA
    for a UNet model is refused in one line."""
    try:
        state = sd3_lora_state(pipe, spec)
        if any(k.startswith(("unet.", "lora_unet_")) or ".down_blocks." in k or ".up_blocks." in k for k in state):
            raise ModelLoadError(f"LoRA {spec!r} is for a UNet model (SD-1.5 or SDXL), not for this SD3 model")
        if not any(k.startswith(("transformer.transformer_blocks.", "transformer_blocks.")) for k in state):
            raise ModelLoadError(f"LoRA {spec!r} has no layers of an SD3 transformer (transformer_blocks)")
        pipe.load_lora_weights(state)
        pipe.fuse_lora(lora_scale=scale)
        pipe.unload_lora_weights()
    except ModelLoadError:
        raise
    except Exception as e:  # noqa: BLE001 - reported as one line
        raise ModelLoadError(f"LoRA {spec!r} could not be loaded: {first_line(e)}") from None

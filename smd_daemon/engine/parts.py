"""The parts that join or replace a loaded model's: a LoRA fused into its
weights, a distilled UNet, a full VAE, a tiny autoencoder for live frames.

Each comes from a local file or folder or from the hub (``hub.py``), and
each that does not fit the model is refused in one line before it is used.
"""

from __future__ import annotations

import os

import torch

from smd_daemon.engine.hub import HUB_FILE, HUB_ID, ModelLoadError, config_of, first_line, from_hub


def load_tiny_vae(spec: str, dtype: torch.dtype, seed: int, latent_channels: int = 4):
    from diffusers import AutoencoderTiny

    if spec == "tiny":
        from smd_daemon.engine.tiny import build_tiny_autoencoder

        return build_tiny_autoencoder(seed, latent_channels=latent_channels)
    path = os.path.expanduser(spec)
    if os.path.isdir(path):
        try:
            return AutoencoderTiny.from_pretrained(path, local_files_only=True, dtype=dtype)
        except Exception as e:  # noqa: BLE001 - reported as one line
            raise ModelLoadError(f"tiny autoencoder folder {spec!r} could not be loaded: {first_line(e)}") from None
    if not HUB_ID.match(spec):
        raise ModelLoadError(f"tiny autoencoder {spec!r}: not a folder, a hub id (owner/name) or 'tiny'")
    return from_hub("tiny autoencoder", spec, lambda **k: AutoencoderTiny.from_pretrained(spec, dtype=dtype, **k))


def load_vae(spec: str, dtype: torch.dtype, current) -> torch.nn.Module:
    """``--vae``: an ``AutoencoderKL`` (hub id or diffusers folder) for the
    model's own, e.g. madebyollin/sdxl-vae-fp16-fix; its latent layout must
    be the model's."""
    from diffusers import AutoencoderKL

    path = os.path.expanduser(spec)
    if os.path.isdir(path):
        try:
            vae = AutoencoderKL.from_pretrained(path, local_files_only=True, dtype=dtype)
        except Exception as e:  # noqa: BLE001 - reported as one line
            raise ModelLoadError(f"VAE folder {spec!r} could not be loaded: {first_line(e)}") from None
    elif HUB_ID.match(spec):
        vae = from_hub("VAE", spec, lambda **k: AutoencoderKL.from_pretrained(spec, dtype=dtype, **k))
    else:
        raise ModelLoadError(f"VAE {spec!r}: not a diffusers folder (with config.json) or a hub id (owner/name)")
    want, got = config_of(current).get("latent_channels", 4), vae.config.get("latent_channels")
    if got != want:
        raise ModelLoadError(f"VAE {spec!r} has {got} latent channels; this model's latents have {want}")
    return vae


PREDICTION_TYPES = ("epsilon", "v_prediction", "sample")


def _read_weights(path: str, what: str) -> dict:
    try:
        if path.lower().endswith(".safetensors"):
            from safetensors.torch import load_file

            return load_file(path)
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # noqa: BLE001 - safetensors and torch raise several types
        raise ModelLoadError(f"{what} {path!r} is not a readable weights file: {first_line(e)}") from None


def load_unet(spec: str, dtype: torch.dtype, current) -> torch.nn.Module:
    """``--unet``: a distilled UNet for the model's own (SDXL-Lightning's,
    DMD2's, LCM-SDXL's): a weights file in diffusers' layout (.safetensors or
    .bin; local, or a hub file owner/name/file), or a UNet folder or hub id
    with its config. Weights that do not fit the model's UNet are refused."""
    from diffusers import UNet2DConditionModel

    path = os.path.expanduser(spec)
    hub_file = HUB_FILE.match(spec) if not spec.startswith((".", "/", "~")) else None
    if os.path.isdir(path):
        try:
            return UNet2DConditionModel.from_pretrained(path, local_files_only=True, dtype=dtype)
        except Exception as e:  # noqa: BLE001 - reported as one line
            raise ModelLoadError(f"UNet folder {spec!r} could not be loaded: {first_line(e)}") from None
    if os.path.isfile(path) or hub_file:
        if hub_file:
            from huggingface_hub import hf_hub_download

            repo, file = hub_file.group(1), hub_file.group(2)
            path = from_hub("UNet", repo, lambda **k: hf_hub_download(repo, file, **k))
        state = _read_weights(path, "UNet")
        own = current.state_dict()
        unfit = [k for k, v in state.items() if k not in own or tuple(own[k].shape) != tuple(v.shape)]
        missing = [k for k in own if k not in state]
        if unfit or missing:
            raise ModelLoadError(
                f"UNet {spec!r} does not fit this model's UNet ({len(unfit)} tensors foreign or of other "
                f"shapes, {len(missing)} missing): a UNet for another family or layout"
            )
        current.load_state_dict(state)
        return current
    if HUB_ID.match(spec):
        return from_hub("UNet", spec, lambda **k: UNet2DConditionModel.from_pretrained(spec, dtype=dtype, **k))
    raise ModelLoadError(f"UNet {spec!r}: no such file or folder, and not a hub id or hub file (owner/name/file)")


def _lora_width(state: dict) -> int | None:
    """The text-conditioning width a LoRA was made for: the input width of its
    cross-attention key projections (768 for SD-1.5, 2048 for SDXL), in any
    of the layouts diffusers reads (its own, PEFT's, kohya's)."""
    for key, value in state.items():
        k = key.replace("_", ".")
        if "attn2.to.k" in k and any(d in k for d in ("lora.A.", "lora.down.")) and getattr(value, "ndim", 0) == 2:
            return int(value.shape[1])
    return None


def _check_lora_family(pipe, state: dict, spec: str, family_name: str) -> None:
    """A LoRA made for another family is refused in one line (diffusers would
    fail deep in a state-dict load, or skip the layers it cannot place)."""
    want = int(config_of(pipe.unet).cross_attention_dim)
    width = _lora_width(state)
    second = any(k.startswith(("text_encoder_2.", "lora_te2_")) for k in state)
    made_for = {768: "SD-1.5 models", 1024: "SD-2 models", 2048: "SDXL models"}
    if (width is not None and width != want) or (second and family_name != "SDXL"):
        other = made_for.get(width or 0) or ("SDXL models" if second else f"models with {width}-wide text conditioning")
        raise ModelLoadError(
            f"LoRA {spec!r} was made for {other}, not for this {family_name} model "
            f"({want}-wide text conditioning): use the LoRA made for its family"
        )


def fuse_lora(pipe, spec: str, scale: float, family_name: str) -> None:
    path = os.path.expanduser(spec)

    def load(source, **kw) -> None:
        state = type(pipe).lora_state_dict(source, **kw)
        _check_lora_family(pipe, state[0] if isinstance(state, tuple) else state, spec, family_name)
        pipe.load_lora_weights(source, **kw)

    try:
        if os.path.exists(path):
            load(path, local_files_only=True)
        elif HUB_FILE.match(spec) and not spec.startswith((".", "/", "~")):
            from huggingface_hub import hf_hub_download

            m = HUB_FILE.match(spec)
            assert m is not None
            repo, file = m.group(1), m.group(2)
            load(from_hub("LoRA", repo, lambda **k: hf_hub_download(repo, file, **k)), local_files_only=True)
        elif HUB_ID.match(spec):
            # Offline, diffusers needs the file name; LCM-LoRAs use the standard one.
            from_hub(
                "LoRA",
                spec,
                lambda local_files_only: load(
                    spec,
                    local_files_only=local_files_only,
                    **({"weight_name": "pytorch_lora_weights.safetensors"} if local_files_only else {}),
                ),
            )
        else:
            raise ModelLoadError(
                f"LoRA {spec!r}: no such file or folder, and not a hub id (owner/name) or hub file (owner/name/file)"
            )
        # Fused into the base weights, then the adapter layers are dropped: no
        # per-step cost from the LoRA afterwards.
        pipe.fuse_lora(lora_scale=scale)
        pipe.unload_lora_weights()
    except ModelLoadError:
        raise
    except Exception as e:  # noqa: BLE001 - reported as one line
        raise ModelLoadError(f"LoRA {spec!r} could not be loaded: {first_line(e)}") from None

"""Single-file checkpoints: which model family a file's keys belong to, and
the original SDXL layout written from a diffusers pipeline.

Community models ship as one ``.safetensors`` file in the layout of the code
that trained them, not in diffusers' folders. Their key prefixes tell the
family apart:

- SD-1.x/2.x (LDM): ``model.diffusion_model.*`` UNet, ``first_stage_model.*``
  VAE, ``cond_stage_model.*`` text encoder (CLIP-L for 1.x, OpenCLIP for 2.x);
- SDXL (Stability's generative-models, "sgm"): the same UNet and VAE
  prefixes, a ``label_emb`` in the UNet (the pooled-text and size embedding)
  and two text encoders under ``conditioner.embedders.``: 0 is CLIP-L in
  transformers' layout, 1 is OpenCLIP bigG in OpenCLIP's own layout (fused
  q/k/v ``in_proj``, a ``text_projection`` matrix applied as ``x @ P``);
- SD3 (MM-DiT): ``joint_blocks`` in the denoiser, with or without the
  ``model.diffusion_model.`` prefix.

``sgm_state_dict`` / ``save_sdxl_single_file`` write a (tiny) SDXL pipeline in
that layout, so that loading path is testable offline as SD-1.5's is.
"""

from __future__ import annotations

import contextlib

import torch

from smd_daemon.engine.tiny import (
    clip_text_state_dict,
    ldm_unet_state_dict,
    ldm_vae_state_dict,
    prefixed,
)

UNET = "model.diffusion_model."
# A few keys of each layout, enough to tell them apart (a file need not hold every part).
_SDXL_UNET = UNET + "label_emb.0.0.weight"  # add_embedding: pooled text + size/crop ids
_SDXL_TEXT = ("conditioner.embedders.0.transformer.", "conditioner.embedders.1.model.")
_SD_TEXT = ("cond_stage_model.transformer.", "cond_stage_model.model.")
_SD3_DENOISER = ("joint_blocks.", UNET + "joint_blocks.")
_LORA_MARKS = ("lora_down", "lora_up", "lora_A", "lora_B", "lora_te", "lora_unet", ".alpha")


def checkpoint_family(keys) -> str | None:
    """``sd15``, ``sdxl`` or ``sd3`` for a checkpoint's keys; None when they do
    not say (no denoiser, or parts of two families)."""
    keys = list(keys)
    sd3 = any(k.startswith(_SD3_DENOISER) for k in keys)
    unet = any(k.startswith(UNET) for k in keys) and not sd3
    sdxl_marks = _SDXL_UNET in keys or any(k.startswith(_SDXL_TEXT) for k in keys)
    sd_marks = any(k.startswith(_SD_TEXT) for k in keys)
    if sd3:
        return "sd3" if not (sdxl_marks or sd_marks) else None
    if not unet or (sdxl_marks and sd_marks):
        return None
    if sdxl_marks:
        return "sdxl"
    return "sd15"


def looks_like_lora(keys) -> bool:
    return any(mark in k for k in keys for mark in _LORA_MARKS)


# Families whose single files diffusers reads here (SD3's joins with its loader).
SINGLE_FILE_FAMILIES = ("sd15", "sdxl")
_NAMES = {"sd15": "SD-1.5", "sdxl": "SDXL", "sd3": "SD3"}


class CheckpointError(ValueError):
    """A checkpoint file that cannot be read as a model; the message is one line."""


def checkpoint_keys(path: str) -> list[str]:
    """A checkpoint's tensor names, without reading its tensors where the format allows."""
    if path.lower().endswith(".safetensors"):
        from safetensors import safe_open

        try:
            with safe_open(path, framework="pt") as f:
                return list(f.keys())
        except Exception as e:  # noqa: BLE001 - safetensors raises several types
            raise CheckpointError(
                f"checkpoint {path!r} is not a readable .safetensors file: {_first_line(e)}"
            ) from None
    try:
        try:  # memory-mapped: the tensors stay on disk
            sd = torch.load(path, map_location="cpu", mmap=True, weights_only=True)
        except RuntimeError as e:
            if "mmap" not in str(e):
                raise
            sd = torch.load(path, map_location="cpu", weights_only=True)  # the legacy, unzipped format
    except Exception as e:  # noqa: BLE001 - pickle and zip raise many types
        why = (
            "corrupt, or it holds pickled objects besides tensors (never run here)"
            if "weights only" in str(e).lower()
            else _first_line(e)[:200]
        )
        raise CheckpointError(f"checkpoint {path!r} is not a readable .ckpt file: {why}") from None
    if isinstance(sd, dict) and isinstance(sd.get("state_dict"), dict):
        sd = sd["state_dict"]  # as Lightning saves them
    if not isinstance(sd, dict):
        raise CheckpointError(f"checkpoint {path!r} holds no state dict (a {type(sd).__name__})")
    return [k for k in sd if isinstance(k, str)]


def checkpoint_file_family(path: str) -> str:
    """The family of a single-file checkpoint, told from its keys before
    diffusers sees it (diffusers would guess an architecture for anything)."""
    keys = checkpoint_keys(path)
    family = checkpoint_family(keys)
    if family is None:
        if looks_like_lora(keys):
            raise CheckpointError(
                f"checkpoint {path!r} is a LoRA, not a model: pass it with --lora, and a model with --model"
            )
        raise CheckpointError(
            f"checkpoint {path!r}: its model family cannot be told from its keys (neither an SD-1.5 nor an "
            f"SDXL single-file layout, e.g. no model.diffusion_model.* UNet): not a full model checkpoint"
        )
    if family not in SINGLE_FILE_FAMILIES:
        raise CheckpointError(
            f"checkpoint {path!r} is an {_NAMES[family]} model: single-file {_NAMES[family]} "
            f"checkpoints are not supported; use its diffusers folder or hub id"
        )
    return family


def read_single_file(pipeline_class, path: str, **kw):
    """``pipeline_class.from_single_file(path, **kw)``, quietly, and refused when
    a weight was left unset: diffusers leaves what the file lacks (or holds in
    another shape) on the meta device, and the error would come at the first frame."""
    with _quiet_diffusers():
        pipe = pipeline_class.from_single_file(path, **kw)
    for name, part in pipe.components.items():
        if isinstance(part, torch.nn.Module) and any(t.is_meta for t in part.state_dict().values()):
            raise CheckpointError(
                f"checkpoint {path!r}: its {name} weights are missing or do not fit the architecture of --model-config"
            )
    return pipe


@contextlib.contextmanager
def _quiet_diffusers():
    """No progress bar for a local file's components (seconds), and none of
    diffusers' warnings about its own casts ("modules that should be kept in
    float32: []") or a checkpoint's unused extras (EMA copies): nothing a user
    can act on, and what goes wrong is checked and told in one line."""
    from diffusers.utils import logging as dlog

    level, bars = dlog.get_verbosity(), dlog.is_progress_bar_enabled()
    dlog.set_verbosity_error()
    dlog.disable_progress_bar()
    try:
        yield
    finally:
        dlog.set_verbosity(level)
        if bars:
            dlog.enable_progress_bar()


def _first_line(e: BaseException) -> str:
    text = str(e).strip()
    return text.splitlines()[0] if text else type(e).__name__


def open_clip_state_dict(text_encoder) -> dict[str, torch.Tensor]:
    """A transformers ``CLIPTextModelWithProjection`` in OpenCLIP's layout (no
    prefix): q/k/v fused into one ``in_proj`` (rows q, then k, then v), MLP
    ``c_fc``/``c_proj``, and the projection as a (width, dim) matrix that
    OpenCLIP right-multiplies (transformers keeps its transpose)."""
    sd = {k.removeprefix("text_model."): v for k, v in text_encoder.state_dict().items()}
    out = {
        "token_embedding.weight": sd.pop("embeddings.token_embedding.weight"),
        "positional_embedding": sd.pop("embeddings.position_embedding.weight"),
        "ln_final.weight": sd.pop("final_layer_norm.weight"),
        "ln_final.bias": sd.pop("final_layer_norm.bias"),
        "text_projection": sd.pop("text_projection.weight").T,
    }
    leaves = {
        "layer_norm1": "ln_1",
        "layer_norm2": "ln_2",
        "mlp.fc1": "mlp.c_fc",
        "mlp.fc2": "mlp.c_proj",
        "self_attn.out_proj": "attn.out_proj",
    }
    for i in range(text_encoder.config.num_hidden_layers):
        src, dst = f"encoder.layers.{i}.", f"transformer.resblocks.{i}."
        for kind in ("weight", "bias"):
            qkv = [sd.pop(f"{src}self_attn.{p}_proj.{kind}") for p in "qkv"]
            out[f"{dst}attn.in_proj_{kind}"] = torch.cat(qkv)
            for old, new in leaves.items():
                out[f"{dst}{new}.{kind}"] = sd.pop(f"{src}{old}.{kind}")
    if sd:  # a key this mapping does not know would be lost silently
        raise ValueError(f"open_clip_state_dict: unmapped text encoder weights {sorted(sd)[:3]}")
    return out


def sgm_state_dict(pipe) -> dict[str, torch.Tensor]:
    """An SDXL pipeline's weights in the original single-file layout, as SDXL
    fine-tunes ship them and diffusers' ``from_single_file`` reads them."""
    add_embedding = {"add_embedding.linear_1": "label_emb.0.0", "add_embedding.linear_2": "label_emb.0.2"}
    return (
        prefixed(UNET, ldm_unet_state_dict(pipe.unet, add_embedding))
        | prefixed("first_stage_model.", ldm_vae_state_dict(pipe.vae))
        | prefixed("conditioner.embedders.0.transformer.", clip_text_state_dict(pipe.text_encoder))
        | prefixed("conditioner.embedders.1.model.", open_clip_state_dict(pipe.text_encoder_2))
    )


def save_sdxl_single_file(pipe, path: str) -> None:
    """Write an SDXL ``pipe`` as one sgm-layout ``.safetensors`` checkpoint."""
    from safetensors.torch import save_file

    save_file(sgm_state_dict(pipe), path)

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

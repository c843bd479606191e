"""Offline model presets: a tiny SD-1.5-shaped pipeline and the real SD-1.5
architecture, both with random weights.

Neither produces meaningful images. They exist so that tests, demos and
benchmarks run with no network: shapes, code paths and FLOPs are real.
``save_single_file`` writes any SD-1.x pipeline as the one-file checkpoint
layout community models use, so that loading path is testable offline too.
"""

from __future__ import annotations

import json
import os
import re
import tempfile
from collections import Counter

import torch

# A small corpus so the generated BPE merges look like CLIP's on prompts.
_CORPUS = (
    "a red fox sitting in snowy pine forest at dusk, a blue sky with white clouds, "
    "mountains river lake castle tree house cat dog bird flower garden city street "
    "portrait of a woman man girl boy painting photo highly detailed sharp focus "
    "golden hour sunlight beautiful landscape ocean beach sand rock stone grass field "
    "night stars moon fire water ice dark light green yellow orange purple black brown"
)


def _bytes_to_unicode() -> dict[int, str]:
    # CLIP/GPT-2's reversible byte -> printable-unicode table.
    bs = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(range(ord("®"), ord("ÿ") + 1))
    cs = bs[:]
    n = 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    return dict(zip(bs, [chr(c) for c in cs]))


def _learn_merges(corpus: str, n_merges: int) -> list[tuple[str, str]]:
    words = Counter(re.findall(r"[a-z]+", corpus.lower()))
    vocab = {tuple(w[:-1]) + (w[-1] + "</w>",): c for w, c in words.items()}
    merges: list[tuple[str, str]] = []
    for _ in range(n_merges):
        pairs: Counter = Counter()
        for sym, c in vocab.items():
            for a, b in zip(sym, sym[1:]):
                pairs[(a, b)] += c
        if not pairs:
            break
        best = max(sorted(pairs), key=lambda p: pairs[p])
        merges.append(best)
        new_vocab = {}
        for sym, c in vocab.items():
            out, i = [], 0
            while i < len(sym):
                if i + 1 < len(sym) and (sym[i], sym[i + 1]) == best:
                    out.append(sym[i] + sym[i + 1])
                    i += 2
                else:
                    out.append(sym[i])
                    i += 1
            new_vocab[tuple(out)] = c
        vocab = new_vocab
    return merges


def write_tokenizer_files(folder: str, n_merges: int = 300) -> None:
    """Write vocab.json, merges.txt and tokenizer_config.json in CLIP's layout."""
    os.makedirs(folder, exist_ok=True)
    chars = list(_bytes_to_unicode().values())
    merges = _learn_merges(_CORPUS, n_merges)
    tokens = chars + [c + "</w>" for c in chars] + ["".join(m) for m in merges]
    tokens += ["<|startoftext|>", "<|endoftext|>"]
    vocab: dict[str, int] = {}
    for t in tokens:
        vocab.setdefault(t, len(vocab))
    with open(os.path.join(folder, "vocab.json"), "w", encoding="utf-8") as f:
        json.dump(vocab, f, ensure_ascii=False)
    with open(os.path.join(folder, "merges.txt"), "w", encoding="utf-8") as f:
        f.write("#version: 0.2\n")
        for a, b in merges:
            f.write(f"{a} {b}\n")
    config = {
        "model_max_length": 77,
        "bos_token": "<|startoftext|>",
        "eos_token": "<|endoftext|>",
        "unk_token": "<|endoftext|>",
        "pad_token": "<|endoftext|>",
        "tokenizer_class": "CLIPTokenizer",
    }
    with open(os.path.join(folder, "tokenizer_config.json"), "w", encoding="utf-8") as f:
        json.dump(config, f)


def make_tokenizer():
    from transformers import CLIPTokenizer

    with tempfile.TemporaryDirectory() as d:
        write_tokenizer_files(d)
        return CLIPTokenizer.from_pretrained(d, local_files_only=True)


def lcm_scheduler():
    from diffusers import LCMScheduler

    return LCMScheduler(
        num_train_timesteps=1000,
        beta_start=0.00085,
        beta_end=0.012,
        beta_schedule="scaled_linear",
        clip_sample=False,
        set_alpha_to_one=False,
        steps_offset=1,
        prediction_type="epsilon",
        timestep_spacing="leading",
        original_inference_steps=50,
    )


def clip_config(tokenizer, hidden: int, inter: int, layers: int, heads: int, act: str = "quick_gelu", projection=None):
    """A CLIP text encoder's config for a generated tokenizer (its special ids copied: pooling reads the eos id)."""
    from transformers import CLIPTextConfig

    return CLIPTextConfig(
        hidden_size=hidden,
        intermediate_size=inter,
        num_hidden_layers=layers,
        num_attention_heads=heads,
        max_position_embeddings=77,
        hidden_act=act,
        vocab_size=len(tokenizer),
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
        projection_dim=projection or hidden,
    )


def _text_encoder(tokenizer, hidden: int, inter: int, layers: int, heads: int):
    from transformers import CLIPTextModel

    return CLIPTextModel(clip_config(tokenizer, hidden, inter, layers, heads))


def build_tiny_pipeline(seed: int = 0):
    """A ~2M-parameter SD-1.5-shaped ``StableDiffusionPipeline`` (random weights)."""
    from diffusers import UNet2DConditionModel

    torch.manual_seed(seed)
    tokenizer = make_tokenizer()
    text_encoder = _text_encoder(tokenizer, 32, 37, 2, 4)
    unet = UNet2DConditionModel(
        sample_size=64,
        in_channels=4,
        out_channels=4,
        block_out_channels=(32, 32, 64, 64),
        layers_per_block=1,
        down_block_types=("CrossAttnDownBlock2D",) * 3 + ("DownBlock2D",),
        up_block_types=("UpBlock2D",) + ("CrossAttnUpBlock2D",) * 3,
        cross_attention_dim=32,
        norm_num_groups=32,
        attention_head_dim=1,
    )
    return _assemble(tokenizer, text_encoder, unet, tiny_kl_vae(4, scaling_factor=0.18215))


def tiny_kl_vae(latent_channels: int, **config):
    """A tiny four-level ``AutoencoderKL`` (scale factor 8, as the real ones; random weights)."""
    from diffusers import AutoencoderKL

    # diffusers annotates these tuples as Tuple[int] / Tuple[str] (one element) and takes any length.
    return AutoencoderKL(
        in_channels=3,
        out_channels=3,
        block_out_channels=(16, 16, 32, 32),  # pyright: ignore[reportArgumentType]
        down_block_types=("DownEncoderBlock2D",) * 4,  # pyright: ignore[reportArgumentType]
        up_block_types=("UpDecoderBlock2D",) * 4,  # pyright: ignore[reportArgumentType]
        latent_channels=latent_channels,
        layers_per_block=1,
        norm_num_groups=16,
        sample_size=256,
        **config,
    )


def _assemble(tokenizer, text_encoder, unet, vae):
    from diffusers import StableDiffusionPipeline

    # diffusers' annotations are narrower than what the pipeline takes: any scheduler, and no
    # safety checker or feature extractor when requires_safety_checker is False.
    return StableDiffusionPipeline(
        vae=vae,
        text_encoder=text_encoder,
        tokenizer=tokenizer,
        unet=unet,
        scheduler=lcm_scheduler(),  # pyright: ignore[reportArgumentType]
        safety_checker=None,  # pyright: ignore[reportArgumentType]
        feature_extractor=None,  # pyright: ignore[reportArgumentType]
        requires_safety_checker=False,
    )


def build_tiny_autoencoder(seed: int = 0, channels: int = 16, latent_channels: int = 4):
    """A TAESD-layout ``AutoencoderTiny`` (scale factor 8, random weights);
    16 latent channels for SD3 models."""
    from diffusers import AutoencoderTiny

    torch.manual_seed(seed + 1)
    return AutoencoderTiny(
        encoder_block_out_channels=(channels,) * 4,
        decoder_block_out_channels=(channels,) * 4,
        num_encoder_blocks=(1, 1, 1, 1),
        num_decoder_blocks=(1, 1, 1, 1),
        latent_channels=latent_channels,
        scaling_factor=1.0,
    )


def build_random_sd15(seed: int = 0):
    """The real SD-1.5 architecture (860M UNet) with random weights and TAESD.

    Costs exactly the FLOPs of trained SD-1.5 weights: for benchmarks where
    no weights can be downloaded.
    """
    from diffusers import AutoencoderTiny, UNet2DConditionModel

    torch.manual_seed(seed)
    tokenizer = make_tokenizer()
    text_encoder = _text_encoder(tokenizer, 768, 3072, 12, 12)
    unet = UNet2DConditionModel(
        sample_size=64,
        cross_attention_dim=768,
        attention_head_dim=8,
        block_out_channels=(320, 640, 1280, 1280),
        layers_per_block=2,
    )
    # TAESD-sized decoder: the full KL VAE would cost ~18x a TAESD decode.
    return _assemble(tokenizer, text_encoder, unet, AutoencoderTiny(scaling_factor=1.0))


def _ldm_unet_names(cfg) -> dict[str, str]:
    """diffusers UNet module prefix -> original LDM prefix, for SD-1.x layouts."""
    names = {
        "time_embedding.linear_1": "time_embed.0",
        "time_embedding.linear_2": "time_embed.2",
        "conv_in": "input_blocks.0.0",
        "conv_norm_out": "out.0",
        "conv_out": "out.2",
        "mid_block.resnets.0": "middle_block.0",
        "mid_block.attentions.0": "middle_block.1",
        "mid_block.resnets.1": "middle_block.2",
    }
    levels, per = len(cfg.block_out_channels), cfg.layers_per_block
    for i in range(levels):
        for j in range(per):
            n = 1 + i * (per + 1) + j
            names[f"down_blocks.{i}.resnets.{j}"] = f"input_blocks.{n}.0"
            names[f"down_blocks.{i}.attentions.{j}"] = f"input_blocks.{n}.1"
        if i < levels - 1:
            names[f"down_blocks.{i}.downsamplers.0.conv"] = f"input_blocks.{(i + 1) * (per + 1)}.0.op"
        has_attn = "CrossAttn" in cfg.up_block_types[i]
        for j in range(per + 1):
            n = i * (per + 1) + j
            names[f"up_blocks.{i}.resnets.{j}"] = f"output_blocks.{n}.0"
            names[f"up_blocks.{i}.attentions.{j}"] = f"output_blocks.{n}.1"
        if i < levels - 1:
            names[f"up_blocks.{i}.upsamplers.0.conv"] = (
                f"output_blocks.{i * (per + 1) + per}.{2 if has_attn else 1}.conv"
            )
    return names


def _ldm_vae_names(cfg) -> dict[str, str]:
    names = {"encoder.conv_norm_out": "encoder.norm_out", "decoder.conv_norm_out": "decoder.norm_out"}
    levels = len(cfg.block_out_channels)
    for part in ("encoder", "decoder"):
        names[f"{part}.mid_block.resnets.0"] = f"{part}.mid.block_1"
        names[f"{part}.mid_block.resnets.1"] = f"{part}.mid.block_2"
        names[f"{part}.mid_block.attentions.0"] = f"{part}.mid.attn_1"
    for i in range(levels):
        for j in range(cfg.layers_per_block):
            names[f"encoder.down_blocks.{i}.resnets.{j}"] = f"encoder.down.{i}.block.{j}"
        names[f"encoder.down_blocks.{i}.downsamplers.0.conv"] = f"encoder.down.{i}.downsample.conv"
        # The LDM decoder numbers its levels from the bottom.
        for j in range(cfg.layers_per_block + 1):
            names[f"decoder.up_blocks.{i}.resnets.{j}"] = f"decoder.up.{levels - 1 - i}.block.{j}"
        names[f"decoder.up_blocks.{i}.upsamplers.0.conv"] = f"decoder.up.{levels - 1 - i}.upsample.conv"
    return names


# Leaf renames inside a renamed module (UNet resnets; VAE resnets and attention).
_LDM_LEAVES = {
    "norm1": "in_layers.0",
    "conv1": "in_layers.2",
    "time_emb_proj": "emb_layers.1",
    "norm2": "out_layers.0",
    "conv2": "out_layers.3",
    "conv_shortcut": "skip_connection",
}
_LDM_VAE_LEAVES = {
    "conv_shortcut": "nin_shortcut",
    "group_norm": "norm",
    "to_q": "q",
    "to_k": "k",
    "to_v": "v",
    "to_out.0": "proj_out",
}


def _rename(key: str, names: dict[str, str], leaves: dict[str, str]) -> str:
    # Longest module prefix first, so "resnets.1" never claims "resnets.10".
    for prefix in sorted(names, key=len, reverse=True):
        if key.startswith(prefix + "."):
            rest = key[len(prefix) + 1 :]
            for leaf in leaves:
                if rest.startswith(leaf + "."):
                    rest = leaves[leaf] + rest[len(leaf) :]
                    break
            return f"{names[prefix]}.{rest}"
    return key


def ldm_unet_state_dict(unet, names: dict[str, str] | None = None) -> dict[str, torch.Tensor]:
    """A diffusers UNet's weights under original LDM names (no prefix);
    ``names`` adds module renames a family has beyond SD-1.x's."""
    unet_names = _ldm_unet_names(unet.config) | (names or {})
    return {_rename(k, unet_names, _LDM_LEAVES): v for k, v in unet.state_dict().items()}


def ldm_vae_state_dict(vae) -> dict[str, torch.Tensor]:
    """A diffusers ``AutoencoderKL``'s weights under original LDM names (no prefix)."""
    out: dict[str, torch.Tensor] = {}
    vae_names = _ldm_vae_names(vae.config)
    for k, v in vae.state_dict().items():
        new = _rename(k, vae_names, _LDM_VAE_LEAVES)
        if ".mid.attn_1." in new and v.ndim == 2:
            v = v[:, :, None, None]  # LDM's VAE attention uses 1x1 convolutions
        out[new] = v
    return out


def clip_text_state_dict(text_encoder) -> dict[str, torch.Tensor]:
    """A transformers CLIP text encoder's weights as the LDM layout keeps them:
    every key under ``text_model.`` (transformers 5 flattened ``CLIPTextModel``)."""
    return {(k if k.startswith("text_model.") else "text_model." + k): v for k, v in text_encoder.state_dict().items()}


def prefixed(prefix: str, weights: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    return {prefix + k: v.detach().contiguous() for k, v in weights.items()}


def ldm_state_dict(pipe) -> dict[str, torch.Tensor]:
    """The pipeline's weights in the original single-file (LDM) layout of SD-1.x,
    as community checkpoints ship them and ``from_single_file`` reads them."""
    return (
        prefixed("model.diffusion_model.", ldm_unet_state_dict(pipe.unet))
        | prefixed("first_stage_model.", ldm_vae_state_dict(pipe.vae))
        | prefixed("cond_stage_model.transformer.", clip_text_state_dict(pipe.text_encoder))
    )


def save_single_file(pipe, path: str) -> None:
    """Write ``pipe`` as one LDM-layout ``.safetensors`` checkpoint."""
    from safetensors.torch import save_file

    save_file(ldm_state_dict(pipe), path)

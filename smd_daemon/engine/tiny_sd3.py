"""Offline SD3 preset: a tiny random SD3-shaped pipeline (``tiny-sd3``).

The real SD3 structure in miniature: an MM-DiT (``SD3Transformer2DModel``),
two CLIP text encoders with projections (SD3's CLIP-L and CLIP-G) and a T5
encoder, a 16-channel KL autoencoder with SD3's scaling and shift factors,
and a flow-matching Euler scheduler with SD3's shift. Random weights: it
produces no meaningful images; it exists so the SD3 code paths run offline.
The tokenizers are generated here as ``tiny.py`` does for CLIP; T5's is a
small Unigram (SentencePiece-style) vocabulary built from the same corpus.
"""

from __future__ import annotations

import math
import re
from collections import Counter

import torch

from smd_daemon.engine.tiny import _CORPUS, clip_config, make_tokenizer, tiny_kl_vae

# SD3's autoencoder (stabilityai/stable-diffusion-3-medium-diffusers, vae/config.json).
SD3_SCALING_FACTOR = 1.5305
SD3_SHIFT_FACTOR = 0.0609
SD3_FLOW_SHIFT = 3.0  # the scheduler's timestep shift that SD3 and SD3.5 ship
T5_PAD, T5_EOS = 0, 1  # T5's special pieces come first in its vocabulary, as in the real one


def make_t5_tokenizer():
    """A T5 tokenizer (Unigram, SentencePiece-style '▁' word starts) whose
    pieces are the corpus's words and every printable ASCII character, so
    any prompt tokenizes without an unknown piece for ordinary text."""
    from transformers import T5Tokenizer

    words = Counter(re.findall(r"[a-z]+", _CORPUS.lower()))
    total = sum(words.values())
    vocab: list[tuple[str, float]] = [("<pad>", 0.0), ("</s>", 0.0), ("<unk>", 0.0)]  # ids T5_PAD, T5_EOS, 2
    # Unigram scores are log-probabilities: whole words beat their letters.
    vocab += [("▁" + w, math.log(c / total)) for w, c in sorted(words.items())]
    chars = [chr(c) for c in range(33, 127)]
    vocab += [("▁", -8.0)] + [(c, -10.0) for c in chars] + [("▁" + c, -10.5) for c in chars]
    return T5Tokenizer(vocab=vocab, extra_ids=0, model_max_length=512)


def flow_scheduler(shift: float = SD3_FLOW_SHIFT):
    from diffusers import FlowMatchEulerDiscreteScheduler

    return FlowMatchEulerDiscreteScheduler(num_train_timesteps=1000, shift=shift)


def _clip_with_projection(tokenizer, hidden: int, projection: int):
    from transformers import CLIPTextModelWithProjection

    return CLIPTextModelWithProjection(clip_config(tokenizer, hidden, 37, 2, 4, act="gelu", projection=projection))


def build_tiny_sd3(seed: int = 0):
    """A tiny SD3-shaped ``StableDiffusion3Pipeline`` (random weights): a
    32-latent-pixel native window (256 px), patch 2."""
    from diffusers import SD3Transformer2DModel, StableDiffusion3Pipeline
    from transformers import T5Config, T5EncoderModel

    torch.manual_seed(seed)
    tokenizer, tokenizer_2, tokenizer_3 = make_tokenizer(), make_tokenizer(), make_t5_tokenizer()
    text_encoder = _clip_with_projection(tokenizer, 32, 32)
    text_encoder_2 = _clip_with_projection(tokenizer_2, 32, 32)
    text_encoder_3 = T5EncoderModel(
        T5Config(
            vocab_size=len(tokenizer_3),
            d_model=48,
            d_kv=12,
            d_ff=64,
            num_layers=2,
            num_heads=4,
            relative_attention_num_buckets=8,
            feed_forward_proj="gated-gelu",
            pad_token_id=T5_PAD,
            eos_token_id=T5_EOS,
        )
    )
    transformer = SD3Transformer2DModel(
        sample_size=32,
        patch_size=2,
        in_channels=16,
        num_layers=2,
        attention_head_dim=8,
        num_attention_heads=4,
        joint_attention_dim=48,  # T5's width: the CLIP states are zero-padded to it
        caption_projection_dim=32,
        pooled_projection_dim=64,  # both CLIPs' pooled embeddings, concatenated
        out_channels=16,
        pos_embed_max_size=48,  # latents up to 96 pixels a side without tiling (768 px)
    )
    vae = tiny_kl_vae(
        16,
        scaling_factor=SD3_SCALING_FACTOR,
        shift_factor=SD3_SHIFT_FACTOR,
        use_quant_conv=False,  # as SD3's autoencoder
        use_post_quant_conv=False,
    )
    for part in (text_encoder, text_encoder_2, text_encoder_3, transformer, vae):
        part.eval()  # as from_pretrained leaves them: T5's dropout would otherwise be live
    return StableDiffusion3Pipeline(
        transformer=transformer,
        scheduler=flow_scheduler(),
        vae=vae,
        text_encoder=text_encoder,
        tokenizer=tokenizer,
        text_encoder_2=text_encoder_2,
        tokenizer_2=tokenizer_2,
        text_encoder_3=text_encoder_3,
        tokenizer_3=tokenizer_3,
    )

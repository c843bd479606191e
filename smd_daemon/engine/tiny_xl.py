"""Offline SDXL presets: a tiny SDXL-shaped pipeline and the real SDXL UNet
architecture, both with random weights.

Neither produces meaningful images. They exist so that tests, demos and
benchmarks of the SDXL family run with no network: two text encoders (a
``CLIPTextModel`` and a ``CLIPTextModelWithProjection`` whose pooled
embedding conditions the UNet), a UNet with ``text_time`` added
conditioning (pooled embedding and size/crop time ids) and transformer
blocks of several layers, as SDXL has (its deepest are 10 layers).
"""

from __future__ import annotations

import torch

from smd_daemon.engine.tiny import lcm_scheduler, make_tokenizer

# SDXL's VAE scaling factor; its config also says the VAE overflows in fp16.
SDXL_LATENT_SCALE = 0.13025


def _encoders(tokenizer, hidden: tuple[int, int], inter: tuple[int, int], layers: tuple[int, int], heads, projection):
    """SDXL's pair: CLIP-L-style (hidden states only) and OpenCLIP-bigG-style (with a projection: the pooled one)."""
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection

    def config(k: int, act: str) -> CLIPTextConfig:
        return CLIPTextConfig(
            hidden_size=hidden[k],
            intermediate_size=inter[k],
            num_hidden_layers=layers[k],
            num_attention_heads=heads[k],
            max_position_embeddings=77,
            hidden_act=act,
            vocab_size=len(tokenizer),
            bos_token_id=tokenizer.bos_token_id,
            eos_token_id=tokenizer.eos_token_id,
            pad_token_id=tokenizer.pad_token_id,
            projection_dim=projection,
        )

    return CLIPTextModel(config(0, "quick_gelu")), CLIPTextModelWithProjection(config(1, "gelu"))


def _assemble(tokenizer, text_encoder, text_encoder_2, unet, vae):
    from diffusers import StableDiffusionXLPipeline

    # diffusers annotates the scheduler narrowly; the pipeline takes any.
    return StableDiffusionXLPipeline(
        vae=vae,
        text_encoder=text_encoder,
        text_encoder_2=text_encoder_2,
        tokenizer=tokenizer,
        tokenizer_2=tokenizer,  # one generated vocabulary serves both encoders
        unet=unet,
        scheduler=lcm_scheduler(),  # pyright: ignore[reportArgumentType]
        force_zeros_for_empty_prompt=True,
        add_watermarker=False,
    )


def build_tiny_xl_pipeline(seed: int = 0):
    """A tiny SDXL-shaped ``StableDiffusionXLPipeline`` (random weights).

    Three resolutions like SDXL (the first without attention), transformer
    depths 1, 2 and 2 in the middle block, 32- and 48-wide text encoders (so
    80-wide cross-attention; of different widths as SDXL's 768 and 1280 are,
    which is how single-file loaders tell the two apart), a 32-wide pooled
    embedding and 8-wide time-id embeddings; a native window of 32 latent pixels (256 px) keeps tiled
    canvases cheap in tests."""
    from diffusers import AutoencoderKL, UNet2DConditionModel

    torch.manual_seed(seed)
    tokenizer = make_tokenizer()
    te1, te2 = _encoders(tokenizer, (32, 48), (37, 37), (2, 2), (4, 4), 32)
    time_dim = 8
    unet = UNet2DConditionModel(
        sample_size=32,
        in_channels=4,
        out_channels=4,
        block_out_channels=(32, 32, 64),
        layers_per_block=1,
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"),
        up_block_types=("CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"),
        # diffusers annotates these tuples as one element long and takes any length.
        transformer_layers_per_block=(1, 1, 2),  # pyright: ignore[reportArgumentType]
        attention_head_dim=(1, 1, 2),  # pyright: ignore[reportArgumentType] (read as the number of heads)
        use_linear_projection=True,
        cross_attention_dim=80,
        norm_num_groups=32,
        addition_embed_type="text_time",
        addition_time_embed_dim=time_dim,
        projection_class_embeddings_input_dim=32 + 6 * time_dim,
    )
    vae = AutoencoderKL(
        in_channels=3,
        out_channels=3,
        block_out_channels=(16, 16, 32, 32),  # pyright: ignore[reportArgumentType]
        down_block_types=("DownEncoderBlock2D",) * 4,  # pyright: ignore[reportArgumentType]
        up_block_types=("UpDecoderBlock2D",) * 4,  # pyright: ignore[reportArgumentType]
        latent_channels=4,
        layers_per_block=1,
        norm_num_groups=16,
        sample_size=256,
        scaling_factor=SDXL_LATENT_SCALE,
        force_upcast=True,
    )
    return _assemble(tokenizer, te1, te2, unet, vae)


def fill_random(module: torch.nn.Module, seed: int, pool: int = 1 << 24) -> None:
    """Random weights for a large module in seconds: each matrix is a slice of
    one pool of standard normal draws (at a random offset), scaled by
    1/sqrt(fan-in) so activations keep their size through the layers; norm
    scales 1, biases 0. Drawing 2.6G fresh values would take a minute on a
    CPU, and a benchmark needs only the shapes and sane activations."""
    gen = torch.Generator().manual_seed(seed)
    draws = torch.randn(pool, generator=gen)
    with torch.no_grad():
        for name, p in module.named_parameters():
            flat = p.view(-1)
            if p.ndim < 2:
                flat.fill_(1.0 if "norm" in name and name.endswith("weight") else 0.0)
                continue
            start, done, scale = int(torch.randint(pool, (1,), generator=gen)), 0, p[0].numel() ** -0.5
            while done < flat.numel():
                n = min(flat.numel() - done, pool - start)
                torch.mul(draws[start : start + n], scale, out=flat[done : done + n])  # one pass over memory
                done, start = done + n, 0


def build_random_sdxl(seed: int = 0):
    """The real SDXL UNet architecture (2.6G parameters) with random weights,
    and a TAESDXL-sized decoder.

    The UNet costs exactly the FLOPs of trained SDXL weights: for benchmarks
    where no weights can be downloaded. The text encoders have SDXL's widths
    (768 + 1280 = 2048 per token, a 1280-wide pooled embedding) but 2 layers
    each, not 12 and 32: prompts are encoded once per edit, not per frame,
    and the full encoders would add ~800M parameters to build."""
    from diffusers import AutoencoderTiny, UNet2DConditionModel

    torch.manual_seed(seed)
    tokenizer = make_tokenizer()
    te1, te2 = _encoders(tokenizer, (768, 1280), (3072, 5120), (2, 2), (12, 20), 1280)
    with torch.device("meta"):  # shapes only: filled below, without 2.6G draws of torch's initialisers
        unet = UNet2DConditionModel(
            sample_size=128,
            in_channels=4,
            out_channels=4,
            block_out_channels=(320, 640, 1280),
            layers_per_block=2,
            down_block_types=("DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"),
            up_block_types=("CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"),
            transformer_layers_per_block=(1, 2, 10),  # pyright: ignore[reportArgumentType]
            attention_head_dim=(5, 10, 20),  # pyright: ignore[reportArgumentType]
            use_linear_projection=True,
            cross_attention_dim=2048,
            addition_embed_type="text_time",
            addition_time_embed_dim=256,
            projection_class_embeddings_input_dim=2816,
        )
    fill_random(unet.to_empty(device="cpu"), seed)
    # TAESDXL-sized decoder: the full KL VAE would dominate CPU frame times.
    return _assemble(tokenizer, te1, te2, unet, AutoencoderTiny(scaling_factor=1.0))

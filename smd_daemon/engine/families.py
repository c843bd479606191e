"""Model families: what the engine must know of one kind of diffusion model.

A family adapter answers, for one loaded model, everything that differs
between SD-1.5, SDXL and SD3:

- its text conditioning: which encoders turn a prompt into per-token
  embeddings (``Conditioning.tokens``) and, for families that have one, a
  pooled embedding (``Conditioning.pooled``);
- its latents: channels, and the VAE's scale and shift;
- its denoiser: the module, its native window, its resolutions, how it is
  called from the engine's flat inputs, whether it embeds the guidance
  scale (LCM-distilled models) instead of doubling the batch, and what it
  is told of each window of a large canvas (SDXL: size and crop);
- which of its layers are cross-attention, where attention-region mode mixes
  the prompts.

Everything above (``model.Model``, plans, strategies, streams) asks the
adapter and never looks at a model's classes itself. A family is named by
``Components.family``; ``FAMILIES`` maps the name to its adapter.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

import torch

from smd_daemon.engine.runner import control_arguments


@dataclass
class Conditioning:
    """Text conditioning, one row per sample (or per prompt)."""

    tokens: torch.Tensor  # (N, L, D) per-token embeddings
    pooled: torch.Tensor | None = None  # (N, Dp) pooled embedding, for families that use one
    prompts: int = 1  # prompts per row: 1, or G for every prompt joined into one row

    def __len__(self) -> int:
        return self.tokens.shape[0]

    def rows(self, index: torch.Tensor | slice) -> Conditioning:
        pooled = None if self.pooled is None else self.pooled[index]
        return Conditioning(self.tokens[index], pooled, self.prompts)

    def expand(self, n: int) -> Conditioning:
        """One row as ``n`` (no copy)."""
        pooled = None if self.pooled is None else self.pooled.expand(n, -1)
        return Conditioning(self.tokens.expand(n, -1, -1), pooled, self.prompts)

    def toward(self, other: Conditioning, strength: torch.Tensor) -> Conditioning:
        """lerp(self, other, strength), row by row: a region's prompt strength."""
        s = strength.view(-1, 1, 1)
        pooled = (
            None
            if self.pooled is None or other.pooled is None
            else self.pooled + s[:, 0] * (other.pooled - self.pooled)
        )
        return Conditioning(self.tokens + s * (other.tokens - self.tokens), pooled)

    def joined(self, shares: torch.Tensor | None = None) -> Conditioning:
        """Every prompt in one row (attention-region mode): their tokens one
        after another, (1, N*L, D), and one pooled embedding: the rows'
        pooled embeddings weighted by ``shares`` (N,), each prompt's share
        of the picture (None: the first row's)."""
        n, length, d = self.tokens.shape
        pooled = self.pooled
        if pooled is not None:
            pooled = pooled[:1] if shares is None else (shares.to(pooled).view(-1, 1) * pooled).sum(0, keepdim=True)
        return Conditioning(self.tokens.reshape(1, n * length, d), pooled, n)

    def zeroed(self, which: list[bool]) -> Conditioning:
        """These rows with the ``which`` ones all zeros (tokens and pooled)."""
        keep = torch.tensor([not w for w in which], device=self.tokens.device, dtype=self.tokens.dtype)
        pooled = None if self.pooled is None else self.pooled * keep.view(-1, 1)
        return Conditioning(self.tokens * keep.view(-1, 1, 1), pooled, self.prompts)

    def padded(self, prompts: int) -> Conditioning:
        """Joined rows padded with empty prompts up to ``prompts`` (to share a
        batch with a scene of more regions; they get no weight anywhere)."""
        extra = (prompts - self.prompts) * (self.tokens.shape[1] // self.prompts)
        if extra == 0:
            return self
        pad = self.tokens.new_zeros((self.tokens.shape[0], extra, self.tokens.shape[2]))
        return Conditioning(torch.cat([self.tokens, pad], 1), self.pooled, prompts)

    @staticmethod
    def cat(parts: list[Conditioning]) -> Conditioning:
        pooled = [p.pooled for p in parts if p.pooled is not None]
        if len(pooled) not in (0, len(parts)):
            raise ValueError("conditioning rows of two families joined")
        return Conditioning(
            torch.cat([p.tokens for p in parts]), torch.cat(pooled) if pooled else None, parts[0].prompts
        )

    def inputs(self) -> dict[str, torch.Tensor]:
        """The denoiser inputs these rows give (``Family.denoise`` reads them)."""
        return {"emb": self.tokens} if self.pooled is None else {"emb": self.tokens, "pooled": self.pooled}


class Family(Protocol):
    """One loaded model, as the engine sees it (see the module docstring)."""

    name: str
    denoiser: torch.nn.Module
    vae: torch.nn.Module
    latent_channels: int
    latent_scale: float  # latent = (vae latent - shift) * scale
    latent_shift: float
    window: int  # native latent size per side: larger canvases are tiled
    patch: int  # latent pixels per side of one denoiser token (UNets: 1); latent sides are multiples of it
    resolutions: int  # the denoiser's feature resolutions (attention-mode weights are made for each)
    tokens: int  # L: tokens per prompt
    width: int  # D: embedding size per token
    embeds_guidance: bool  # the guidance scale is an input (no doubled batch for guidance)
    zeros_for_empty_negative: bool  # an empty negative prompt is all zeros, not the encoded ""

    def encode(self, prompts: list[str]) -> Conditioning: ...

    def guidance_inputs(self, scale: float) -> dict[str, torch.Tensor]:
        """(1, ...) inputs that carry the guidance scale, for models that embed it."""
        ...

    def window_inputs(
        self, canvas: tuple[int, int], origins: list[tuple[int, int]], size: tuple[int, int]
    ) -> dict[str, torch.Tensor]:
        """(V, ...) inputs per window of an (h, w) latent canvas, for models
        conditioned on image size and crop (SDXL's time ids)."""
        ...

    def region_layers(self) -> list[torch.nn.Module]:
        """The cross-attention layers (empty: attention-region mode is not available)."""
        ...

    def denoise(self, fn, inputs: dict[str, torch.Tensor]) -> torch.Tensor:
        """``fn`` (the denoiser, or its compiled form) on flat inputs: ``sample``,
        ``timestep``, the conditioning's (``Conditioning.inputs``), the
        guidance's and the controls' residuals (``runner.control_arguments``);
        returns the model output, shaped like ``sample``."""
        ...

    def controlnet(
        self, net: torch.nn.Module, inputs: dict[str, torch.Tensor], image: torch.Tensor
    ) -> tuple[list[torch.Tensor], torch.Tensor]:
        """A ControlNet of this family on the same samples as ``denoise``
        (``image``: (N, 3, H, W) in [0, 1], each sample's window of the control
        image): its residuals for the denoiser's skip connections and middle block."""
        ...


def vae_factors(vae) -> tuple[float, float]:
    """(scale, shift) of an autoencoder's latents: latent = (vae latent - shift) * scale."""
    return float(vae.config.scaling_factor), float(getattr(vae.config, "shift_factor", None) or 0.0)


# LCM-distilled UNets take the guidance scale as an embedding instead of a
# doubled batch; this is the value such models were tuned around.
DEFAULT_LCM_GUIDANCE = 8.5


class StableDiffusion:
    """SD-1.x and SD-2.x: one CLIP text encoder, a UNet with cross-attention, a
    4-channel VAE; LCM-distilled UNets embed the guidance scale."""

    name = "sd15"

    def __init__(self, components):
        self.tokenizer, self.text_encoder = components.tokenizer, components.text_encoder
        self.denoiser, self.vae = components.unet, components.vae
        self.device, self.dtype = components.device, components.dtype
        cfg = self.denoiser.config
        self.latent_channels = int(cfg.in_channels)
        self.latent_scale, self.latent_shift = vae_factors(self.vae)
        self.window = int(cfg.sample_size)
        self.patch = 1
        self.resolutions = len(cfg.block_out_channels)
        self.tokens = int(self.tokenizer.model_max_length)
        self.width = int(cfg.cross_attention_dim)
        self._guidance_dim: int | None = getattr(cfg, "time_cond_proj_dim", None)
        self.embeds_guidance = self._guidance_dim is not None
        self.zeros_for_empty_negative = False

    @torch.no_grad()
    def encode(self, prompts: list[str]) -> Conditioning:
        tok = self.tokenizer(
            prompts, padding="max_length", max_length=self.tokens, truncation=True, return_tensors="pt"
        )
        ids = tok.input_ids.to(self.device)
        mask = (
            tok.attention_mask.to(self.device)
            if getattr(self.text_encoder.config, "use_attention_mask", False)
            else None
        )
        return Conditioning(self.text_encoder(ids, attention_mask=mask)[0].to(self.dtype))

    def guidance_inputs(self, scale: float) -> dict[str, torch.Tensor]:
        if self._guidance_dim is None:  # the model does not embed the guidance scale
            return {}
        from diffusers.models.embeddings import get_timestep_embedding

        g = scale if scale > 1 else DEFAULT_LCM_GUIDANCE
        emb = get_timestep_embedding(
            torch.tensor([(g - 1) * 1000.0]), self._guidance_dim, flip_sin_to_cos=False, downscale_freq_shift=1
        )
        return {"time_cond": emb.to(self.device, self.dtype)}

    def window_inputs(
        self, canvas: tuple[int, int], origins: list[tuple[int, int]], size: tuple[int, int]
    ) -> dict[str, torch.Tensor]:
        return {}  # not conditioned on size or crop

    def region_layers(self) -> list[torch.nn.Module]:
        from diffusers.models.attention_processor import Attention

        return [m for m in self.denoiser.modules() if isinstance(m, Attention) and m.is_cross_attention]

    def denoise(self, fn, inputs: dict[str, torch.Tensor]) -> torch.Tensor:
        kw = {"timestep_cond": inputs["time_cond"]} if "time_cond" in inputs else {}
        kw |= control_arguments(inputs) | self.added_inputs(inputs)
        return fn(inputs["sample"], inputs["timestep"], encoder_hidden_states=inputs["emb"], return_dict=False, **kw)[0]

    def controlnet(self, net, inputs, image):
        # A ControlNet trained beside an LCM-distilled UNet embeds the guidance
        # scale too; the public ones (trained on SD-1.5) do not.
        kw = {"timestep_cond": inputs["time_cond"]} if "time_cond" in inputs and _embeds_guidance(net) else {}
        kw |= self.added_inputs(inputs) | {"encoder_hidden_states": inputs["emb"], "return_dict": False}
        down, mid = net(inputs["sample"], inputs["timestep"], controlnet_cond=image, **kw)
        return list(down), mid

    def added_inputs(self, inputs: dict[str, torch.Tensor]) -> dict:
        """The denoiser's (and its ControlNets') further keyword arguments."""
        return {}


def _embeds_guidance(net: torch.nn.Module) -> bool:
    return getattr(getattr(net, "config", None), "time_cond_proj_dim", None) is not None


class StableDiffusionXL(StableDiffusion):
    """SDXL: two CLIP text encoders whose penultimate hidden states are
    joined per token (768 + 1280 = 2048 wide), the second's pooled (projected)
    embedding, and size/crop time ids, both through the UNet's ``text_time``
    added conditioning; a 4-channel VAE. LCM-distilled SDXL UNets embed the
    guidance scale as SD-1.5's do."""

    name = "sdxl"

    def __init__(self, components):
        super().__init__(components)
        self.encoders = [
            (components.tokenizer, components.text_encoder),
            (components.tokenizer_2, components.text_encoder_2),
        ]
        self.width = int(self.denoiser.config.cross_attention_dim)
        # As diffusers' SDXL text-to-image pipelines (force_zeros_for_empty_prompt,
        # on in every SDXL base model's config): zeros for an empty negative prompt.
        self.zeros_for_empty_negative = True
        self.factor = components.vae_scale_factor

    @torch.no_grad()
    def encode(self, prompts: list[str]) -> Conditioning:
        tokens, pooled = [], None
        for tokenizer, encoder in self.encoders:
            ids = tokenizer(
                prompts,
                padding="max_length",
                max_length=tokenizer.model_max_length,
                truncation=True,
                return_tensors="pt",
            ).input_ids.to(self.device)
            out = encoder(ids, output_hidden_states=True)
            tokens.append(out.hidden_states[-2])  # SDXL conditions on the penultimate layer
            pooled = out[0]  # the last encoder's projected embedding
        assert pooled is not None and pooled.ndim == 2, "SDXL's second text encoder has a projection"
        return Conditioning(torch.cat(tokens, -1).to(self.dtype), pooled.to(self.dtype))

    def window_inputs(
        self, canvas: tuple[int, int], origins: list[tuple[int, int]], size: tuple[int, int]
    ) -> dict[str, torch.Tensor]:
        """SDXL's time ids, in pixels: original size = the canvas, crop
        top/left = the window's origin, target size = the window. One window
        on the whole canvas gets (H, W, 0, 0, H, W), as diffusers gives."""
        f = self.factor
        ids = [[canvas[0] * f, canvas[1] * f, y * f, x * f, size[0] * f, size[1] * f] for y, x in origins]
        return {"time_ids": torch.tensor(ids, device=self.device, dtype=self.dtype)}

    def added_inputs(self, inputs: dict[str, torch.Tensor]) -> dict:
        return {"added_cond_kwargs": {"text_embeds": inputs["pooled"], "time_ids": inputs["time_ids"]}}


# The T5 tokens of an SD3 prompt: StableDiffusion3Pipeline's default max_sequence_length.
SD3_T5_TOKENS = 256


class StableDiffusion3:
    """SD3 and SD3.5: an MM-DiT (``SD3Transformer2DModel``) over patches of a
    16-channel latent, conditioned on CLIP-L, CLIP-G and T5 (optional: without
    it its tokens are zeros, as in diffusers) and on both CLIPs' pooled
    embeddings; sampled by flow matching (``model.Schedule``, kind ``flow``).

    Its text and image tokens attend to each other jointly in every block:
    there is no cross-attention layer where a pixel could mix prompts by its
    mask, so attention-region mode is not available (``region_layers``)."""

    name = "sd3"

    def __init__(self, components):
        parts = components.parts
        self.tokenizers = (components.tokenizer, components.tokenizer_2)
        self.clips = (components.text_encoder, components.text_encoder_2)
        self.t5_tokenizer, self.t5 = parts.get("tokenizer_3"), parts.get("text_encoder_3")
        self.denoiser, self.vae = components.unet, components.vae
        self.device, self.dtype = components.device, components.dtype
        cfg = self.denoiser.config
        self.latent_channels = int(cfg.in_channels)
        self.latent_scale, self.latent_shift = vae_factors(self.vae)
        self.patch = int(cfg.patch_size)
        # Positions beyond pos_embed_max_size have no embedding: never a window larger than that.
        max_side = int(cfg.pos_embed_max_size or cfg.sample_size) * self.patch
        self.window = min(int(cfg.sample_size), max_side)
        self.resolutions = 1
        self.clip_tokens = int(self.tokenizers[0].model_max_length)
        self.tokens = self.clip_tokens + SD3_T5_TOKENS
        self.width = int(cfg.joint_attention_dim)
        self.embeds_guidance = False
        self.zeros_for_empty_negative = False  # diffusers' SD3 pipeline encodes the empty prompt

    @torch.no_grad()
    def encode(self, prompts: list[str]) -> Conditioning:
        """As ``StableDiffusion3Pipeline.encode_prompt``: both CLIPs' penultimate
        states side by side, zero-padded to T5's width, then T5's tokens after
        them; the pooled embedding is both CLIPs' pooled (projected) outputs."""
        states, pooled = [], []
        for tokenizer, encoder in zip(self.tokenizers, self.clips):
            ids = tokenizer(
                prompts, padding="max_length", max_length=self.clip_tokens, truncation=True, return_tensors="pt"
            ).input_ids.to(self.device)
            out = encoder(ids, output_hidden_states=True)
            pooled.append(out[0])
            states.append(out.hidden_states[-2])
        clip = torch.cat(states, -1)
        clip = torch.nn.functional.pad(clip, (0, self.width - clip.shape[-1]))
        if self.t5 is None or self.t5_tokenizer is None:
            t5 = clip.new_zeros((len(prompts), SD3_T5_TOKENS, self.width))
        else:
            ids = self.t5_tokenizer(
                prompts, padding="max_length", max_length=SD3_T5_TOKENS, truncation=True, return_tensors="pt"
            ).input_ids.to(self.device)
            t5 = self.t5(ids)[0]
        tokens = torch.cat([clip.to(self.dtype), t5.to(self.dtype)], 1)
        return Conditioning(tokens, torch.cat(pooled, -1).to(self.dtype))

    def guidance_inputs(self, scale: float) -> dict[str, torch.Tensor]:
        return {}  # guidance is a doubled batch

    def controlnet(self, net, inputs, image):
        raise ValueError("control models are for UNet families (SD-1.5, SDXL), not SD3")  # refused at load

    def window_inputs(
        self, canvas: tuple[int, int], origins: list[tuple[int, int]], size: tuple[int, int]
    ) -> dict[str, torch.Tensor]:
        return {}  # not conditioned on size or crop

    def region_layers(self) -> list[torch.nn.Module]:
        return []  # joint attention only (see the class docstring)

    def denoise(self, fn, inputs: dict[str, torch.Tensor]) -> torch.Tensor:
        return fn(
            hidden_states=inputs["sample"],
            timestep=inputs["timestep"],
            encoder_hidden_states=inputs["emb"],
            pooled_projections=inputs["pooled"],
            return_dict=False,
        )[0]


FAMILIES = {f.name: f for f in (StableDiffusion, StableDiffusionXL, StableDiffusion3)}


def family_of(components) -> Family:
    """The adapter for loaded ``components`` (``Components.family`` names it)."""
    name = components.family
    if name not in FAMILIES:
        raise ValueError(f"model family {name!r} is not supported (supported: {', '.join(FAMILIES)})")
    return FAMILIES[name](components)

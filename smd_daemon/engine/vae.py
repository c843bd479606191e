"""The autoencoder, bounded for large canvases.

Images above the model's native size are encoded and decoded in
overlapping tiles blended with ramp weights, one VAE call per tile, so no
call grows with the canvas: decoding a 4096² frame is many short passes.
The decoded frame reaches the host in one copy, which also carries a flag
saying whether the latent was finite: that copy is a frame's only wait.
"""

from __future__ import annotations

import numpy as np
import torch

from smd_daemon.engine import masks as M

OVERLAP = 16  # latent pixels shared by neighbouring tiles


def tile_grid(h: int, w: int, window: int) -> list[tuple[int, int, int, int]]:
    """(y, x, th, tw) latent tiles of at most ``window`` per side covering (h, w)."""
    th, tw = min(h, window), min(w, window)
    return [
        (y, x, th, tw) for y in M.tile_origins(h, th, window - OVERLAP) for x in M.tile_origins(w, tw, window - OVERLAP)
    ]


class Autoencoder:
    """The model's VAE (or tiny autoencoder) and its latent scaling, bounded:
    above ``window`` latent pixels per side, images are encoded and decoded
    in blended tiles. Latents are scaled: ``(vae latent - shift) * scale``."""

    def __init__(self, vae, device, dtype, factor: int, window: int, scale: float, shift: float = 0.0):
        self.vae, self.device, self.dtype = vae, device, dtype  # dtype: the engine's latents
        self.factor, self.window = factor, window  # pixels per latent pixel; native latent size
        self.scale, self.shift = scale, shift
        # What the VAE computes in: float32 when it was upcast (``upcast_if_needed``).
        self.vae_dtype = next(vae.parameters()).dtype

    def upcast_if_needed(self) -> bool:
        """A VAE whose config says it overflows in fp16 (SDXL's: ``force_upcast``)
        computes in float32, as diffusers' pipelines decode it; returns whether it was."""
        if self.vae_dtype != torch.float16 or not getattr(self.vae.config, "force_upcast", False):
            return False
        self.vae.to(dtype=torch.float32)
        self.vae_dtype = torch.float32
        return True

    @torch.no_grad()
    def encode(self, image: np.ndarray, between=None) -> torch.Tensor:
        """uint8 (H, W, 3) -> (1, C, h, w) clean latent. ``between()`` is called
        before each tile (it may raise to stop)."""
        f = self.factor
        h, w = image.shape[0] // f, image.shape[1] // f
        tiles = tile_grid(h, w, self.window)
        if len(tiles) == 1:
            if between is not None:
                between()
            return self._encode(image)
        return self._blend(
            tiles, h, w, between, lambda y, x, a, b: self._encode(image[y * f : (y + a) * f, x * f : (x + b) * f])
        )

    @torch.no_grad()
    def encode_uniform(self, height: int, width: int, value: int, tile_latent=None) -> torch.Tensor:
        """What ``encode`` gives for an image of one colour, with one VAE call:
        every tile is then the same image, so one tile is encoded and blended
        into every place. ``tile_latent(shape, encode)`` may supply it (a cache)."""
        f = self.factor
        h, w = height // f, width // f
        tiles = tile_grid(h, w, self.window)
        _, _, a, b = tiles[0]  # every tile has this size

        def encode_tile():
            return self._encode(np.full((a * f, b * f, 3), value, np.uint8))

        z = encode_tile() if tile_latent is None else tile_latent((a, b), encode_tile)
        if len(tiles) == 1:
            return z
        return self._blend(tiles, h, w, None, lambda *_: z)

    def _blend(self, tiles, h: int, w: int, between, tile_latent) -> torch.Tensor:
        """Overlapping tile latents blended with ramp weights into (1, C, h, w)."""
        sums: tuple[torch.Tensor, torch.Tensor] | None = None  # weighted latents, weights
        for y, x, a, b in tiles:
            if between is not None:
                between()
            z = tile_latent(y, x, a, b).float()
            if sums is None:  # the first tile tells the latent's channels
                sums = z.new_zeros((1, z.shape[1], h, w)), z.new_zeros((1, 1, h, w))
            acc, wsum = sums
            wt = M.ramp_weights(a, b).to(z.device)
            acc[..., y : y + a, x : x + b] += wt * z
            wsum[..., y : y + a, x : x + b] += wt
        if sums is None:
            raise ValueError("no tiles to blend")
        return (sums[0] / sums[1]).to(self.dtype)

    def _encode(self, image: np.ndarray) -> torch.Tensor:
        # Converted while copied: a read-only image (decoded from a message) is only read.
        x = torch.asarray(image, dtype=self.vae_dtype).to(self.device)
        x = (x.permute(2, 0, 1)[None] / 127.5) - 1
        enc = self.vae.encode(x)
        z = enc.latent_dist.mean if hasattr(enc, "latent_dist") else enc.latents
        return ((z - self.shift if self.shift else z) * self.scale).to(self.dtype)

    def decoder(self, latent: torch.Tensor, side_stream=None) -> Decoder:
        return Decoder(self, latent, side_stream)


class Decoder:
    """Decodes one clean latent (1, C, h, w) to uint8 (H, W, 3) in pieces:
    each ``run()`` decodes one tile (the whole latent when it fits
    ``window``); the last one starts the copy to the host. With a CUDA side
    stream, the decoding and the copy (into pinned memory) run beside the
    engine's next step; ``result()`` waits for the copy only."""

    def __init__(self, autoencoder: Autoencoder, latent: torch.Tensor, side_stream=None):
        self.ae = autoencoder
        self.side = side_stream
        self.latent: torch.Tensor | None = latent  # dropped once decoded
        self.finite = torch.isfinite(latent).all()
        self.tiles = tile_grid(latent.shape[-2], latent.shape[-1], autoencoder.window)
        self.next = 0
        self._sums: tuple[torch.Tensor, torch.Tensor] | None = None  # tiled: weighted pixels, weights
        self._host: torch.Tensor | None = None
        self._event: torch.cuda.Event | None = None
        if self.side is not None:
            self.side.wait_stream(torch.cuda.current_stream(latent.device))
            latent.record_stream(self.side)
            self.finite.record_stream(self.side)

    @property
    def done(self) -> bool:
        return self.next >= len(self.tiles)

    @torch.no_grad()
    def run(self) -> None:
        if self.side is None:
            self._piece()
        else:
            with torch.cuda.stream(self.side):
                self._piece()

    def _piece(self) -> None:
        if self.latent is None:
            raise RuntimeError("the decoder has no pieces left to run")
        y, x, a, b = self.tiles[self.next]
        self.next += 1
        z = self.latent[..., y : y + a, x : x + b].to(self.ae.vae_dtype) / self.ae.scale
        if self.ae.shift:
            z = z + self.ae.shift
        img = self.ae.vae.decode(z, return_dict=False)[0][0].float()  # (3, a*s, b*s) in [-1, 1]
        if len(self.tiles) == 1:
            self._to_host(img)
            return
        s = img.shape[-2] // a
        if self._sums is None:
            h, w = self.latent.shape[-2:]
            self._sums = img.new_zeros((3, h * s, w * s)), img.new_zeros((1, h * s, w * s))
        acc, wsum = self._sums
        wt = M.ramp_weights(a * s, b * s).to(img.device)
        acc[:, y * s : (y + a) * s, x * s : (x + b) * s] += wt * img
        wsum[:, y * s : (y + a) * s, x * s : (x + b) * s] += wt
        if self.done:
            self._to_host(acc / wsum)

    def _to_host(self, img: torch.Tensor) -> None:
        # A VAE that overflowed (fp16) gives NaN pixels from a finite latent: as bad.
        self.finite = self.finite & torch.isfinite(img).all()
        img = (img / 2 + 0.5).clamp(0, 1)
        u8 = (img.permute(1, 2, 0) * 255).round().to(torch.uint8)
        self._shape = tuple(u8.shape)
        flat = torch.cat([u8.reshape(-1), self.finite.to(torch.uint8).view(1)])
        if self.side is not None:
            self._host = torch.empty(flat.shape, dtype=torch.uint8, pin_memory=True)
            self._host.copy_(flat, non_blocking=True)
            self._event = event = torch.cuda.Event()
            event.record(self.side)
        else:
            self._host = flat.cpu()  # on a GPU, the frame's one wait
        self.latent = None

    def ready(self) -> bool:
        """The image can be had without waiting."""
        return self.done and (self._event is None or self._event.query())

    def result(self) -> tuple[np.ndarray, bool]:
        """(uint8 image, whether the latent was finite)."""
        if not self.done or self._host is None:
            raise RuntimeError("the decoder has pieces left to run")
        if self._event is not None:
            self._event.synchronize()
        arr = self._host.numpy()
        return arr[:-1].reshape(self._shape), bool(arr[-1])

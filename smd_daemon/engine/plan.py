"""A plan: a scene compiled once for the model, and the region-strategy protocol.

A ``Plan`` holds everything a step needs as device tensors of fixed shape:
the schedule, the conditioning table, the quantized masks, the windows of
a large canvas and, per noise level (``Level``), which UNet samples that
level runs. A step then only gathers, slices and concatenates: no tensors
from Python lists and no host synchronisation inside a step.

How regions enter the model is the plan's ``RegionStrategy`` (``modes.py``);
``planner.make_plan`` builds plans.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

import torch

from smd_daemon.engine.families import Conditioning
from smd_daemon.engine.model import Schedule
from smd_daemon.engine.scene import Scene

TILE_STRIDE = 32  # latent pixels between overlapping windows on large canvases


@dataclass
class Windows:
    """The canvas latent seen through windows of the denoiser's native size.

    One window is the whole canvas. On a larger canvas the windows lie
    ``TILE_STRIDE`` apart (the last flush with the edge), and each is a row
    of canvas positions: a pass gathers its samples' pixels with one index
    and adds their estimates back with one ``index_add_``, with no Python
    loop over samples."""

    origins: list[tuple[int, int]]  # (y, x) of each window, latent pixels
    size: tuple[int, int]  # (th, tw)
    index: torch.Tensor | None  # tiled: (V, th*tw) canvas positions of each window; one window: None
    weight: torch.Tensor  # (th, tw): ramp (tiled, so seams blend) or ones

    @property
    def tiled(self) -> bool:
        return self.index is not None

    def positions(self, windows: torch.Tensor) -> torch.Tensor:
        """(m, th*tw): the canvas positions of each of ``windows``' pixels."""
        if self.index is None:
            raise ValueError("a one-window canvas is not cropped: its samples see the whole latent")
        return self.index[windows]

    def crop(self, x: torch.Tensor, windows: torch.Tensor) -> torch.Tensor:
        """(K, h, w) -> (m, K, th, tw): each of ``windows``' pixels."""
        k = x.shape[0]
        picked = torch.index_select(x.reshape(k, -1), 1, self.positions(windows).reshape(-1))
        return picked.view(k, -1, *self.size).transpose(0, 1)

    def crop_rows(self, table: torch.Tensor, rows: torch.Tensor, windows: torch.Tensor) -> torch.Tensor:
        """(R, h, w) -> (m, th, tw): row ``rows[j]`` of ``table`` inside window ``windows[j]``."""
        hw = table.shape[-2] * table.shape[-1]
        return torch.take(table, rows[:, None] * hw + self.positions(windows)).view(-1, *self.size)

    def add(self, acc: torch.Tensor, windows: torch.Tensor, values: torch.Tensor, slot: torch.Tensor | None) -> None:
        """acc (K, slots, h, w) += ``values`` (K, m, th, tw): sample j's at its
        window, into its slot (``slot``: (m,); None: the first)."""
        k, hw = acc.shape[0], acc.shape[-2] * acc.shape[-1]
        index = self.positions(windows)
        if slot is not None:
            index = index + (slot * hw)[:, None]
        acc.view(k, -1).index_add_(1, index.reshape(-1), values.reshape(k, -1))


@dataclass
class Rolls:
    """Mask centring on a one-window canvas (bootstrap steps): each roll as a
    permutation of canvas positions; roll 0 is none."""

    index: torch.Tensor  # (R, h*w): the position each centred pixel comes from
    inverse: torch.Tensor  # (R, h*w): ...and back

    @staticmethod
    def gather(x: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
        """(m, K, h, w) rolled row by row by ``index`` (m, h*w)."""
        m, k, h, w = x.shape
        return x.reshape(m, k, h * w).gather(2, index[:, None].expand(m, k, h * w)).view(m, k, h, w)


@dataclass
class RegionWeights:
    """Attention mode: one step's prompt weights at each denoiser resolution,
    summing to 1 over the G prompts at every position."""

    maps: list[torch.Tensor]  # (G, positions) per resolution, over the whole canvas at that resolution
    index: list[torch.Tensor] | None  # tiled: (V, window positions) per resolution; None: one window

    def rows(self, windows: torch.Tensor | None, m: int) -> list[torch.Tensor]:
        """(m, G, positions) per resolution for ``m`` samples (of ``windows``)."""
        if self.index is None:
            return [wk[None].expand(m, -1, -1) for wk in self.maps]
        return [
            torch.index_select(wk, 1, ik[windows].reshape(-1)).view(wk.shape[0], m, -1).transpose(0, 1)
            for wk, ik in zip(self.maps, self.index)
        ]


@dataclass
class Level:
    """The UNet samples of one noise level, in batch order, fixed per plan."""

    n: int
    row: torch.Tensor  # (n,) each sample's row of the conditioning table (latent mode: and of the masks)
    window: torch.Tensor | None  # (n,) each sample's window (tiled canvases); None: the whole canvas
    roll: torch.Tensor | None  # (n,) each sample's centring roll (``Rolls``); None: no sample is centred
    boot: bool  # bootstrap step: region samples see the white latent outside their mask
    slot: torch.Tensor | None  # (n,) tiled: the sum each sample's estimate adds into; None: the first (the only)
    into: torch.Tensor | None  # (n, slots) one window: the same, one-hot
    weights: RegionWeights | None  # attention mode


@dataclass
class Coverage:
    """What planning found, for the strategy to lay out its samples (on the CPU)."""

    masks: torch.Tensor  # (T, P, h, w) quantized region masks, float32
    uncovered: torch.Tensor  # (T, 1, h, w)
    active: list[list[list[bool]]]  # [step][window][region]: the region's mask reaches into the window
    need_bg: list[list[bool]]  # [step][window]: the window has uncovered pixels
    rolls: list[list[int]]  # [bootstrap step][region]: its centring roll (``Rolls``), 0 for none
    resolutions: int  # of the denoiser


@dataclass
class Plan:
    """A scene compiled for the model: everything a step needs, on device."""

    scene: Scene
    strategy: RegionStrategy
    schedule: Schedule
    latent_hw: tuple[int, int]
    cond: Conditioning  # the rows samples pick (``Level.row``): see the strategy
    neg: Conditioning | None  # the negative prompts' rows, when classifier-free guidance runs
    cfg: bool  # classifier-free guidance: a doubled batch
    guidance: dict[str, torch.Tensor]  # (1, ...) inputs embedding the guidance scale (LCM-distilled models)
    window_inputs: dict[str, torch.Tensor]  # (V, ...) inputs per window (``Family.window_inputs``)
    masks: torch.Tensor  # (T, P + 1, h, w) quantized region masks, then a row of ones (the background's)
    uncovered: torch.Tensor  # (T, 1, h, w) B = clip(1 - sum_p M, 0, 1)
    white: torch.Tensor | None  # (1, C, h, w) clean latent of a white image (bootstrap steps)
    bg_image: torch.Tensor | None  # (1, C, h, w) clean latent of the background image
    windows: Windows
    rolls: Rolls | None
    levels: list[Level]
    prompts: int  # G: prompts per sample (attention mode: background + regions; else 1)

    def batch_key(self) -> tuple:
        """Plans whose samples can share one UNet batch have equal keys."""
        guided = self.cfg or bool(self.guidance)
        return type(self.strategy), self.windows.size, self.cfg, self.scene.guidance_scale if guided else 0


class RegionStrategy(Protocol):
    """How regions enter the model (``modes.py``): one strategy per region
    mode, picked once when a scene is planned."""

    name: str
    slots: int  # weighted sums a step keeps per latent (``weights``, ``finish``)

    def available(self, model) -> bool:
        """Whether ``model`` can draw this way."""
        ...

    def prompts(self, regions: int) -> int:
        """Prompts per UNet sample."""
        ...

    def conditioning(self, background: Conditioning, regions: Conditioning, shares: torch.Tensor) -> Conditioning:
        """The plan's conditioning table from the background's row and the
        regions' rows; ``shares`` (P + 1,): each prompt's share of the picture,
        the background's first."""
        ...

    def bootstrap_steps(self, scene: Scene, steps: int) -> int: ...

    def levels(self, plan: Plan, coverage: Coverage) -> list[Level]:
        """The samples of every level."""
        ...

    def rows(
        self, plan: Plan, level: Level, j0: int, j1: int, prompts: int
    ) -> tuple[Conditioning, Conditioning | None, dict[str, torch.Tensor]]:
        """Samples ``j0:j1``'s conditioning rows (padded to ``prompts``), their
        negative rows, and further denoiser inputs (region weights)."""
        ...

    def weights(self, plan: Plan, level: Level, i: int, j0: int, j1: int) -> torch.Tensor:
        """(m, 1, th, tw): how much each sample's clean estimate counts in its
        sum (``Level.slot``), at its window's pixels."""
        ...

    def finish(self, plan: Plan, sums: torch.Tensor, first: int) -> torch.Tensor:
        """The pre-averaged clean latents (S, C, h, w) from the sums of levels
        ``first ..``: (S, C + 1, slots, h, w), weighted estimates and weights."""
        ...

    def plan_bytes(self, shape: dict) -> int:
        """What a plan of this strategy keeps beyond what every plan keeps,
        from ``shape`` (planner.session_bytes) alone."""
        ...

"""Region strategies: how the regions of a scene enter the model.

``LatentRegions`` (the paper's way): one UNet sample per region (and the
background) touching a window; each sample's clean estimate is weighted by
its region's quantized mask and the weighted estimates are averaged --
latent pre-averaging -- with the background's apart, filling what no region
covers. Bootstrap steps start region samples from a white latent outside
their masks, centred on their mask (one window).

``AttentionRegions``: one sample per window carries every prompt; in each
cross-attention layer every pixel attends to each prompt and mixes the
results with its quantized mask weights (``attention.py``), so a frame costs
one sample per level whatever the number of regions.

Both implement ``plan.RegionStrategy``. ``strategy_for`` turns a scene's
region mode into its strategy: the one place a mode's name is looked at.
"""

from __future__ import annotations

import torch

from smd_daemon.engine import attention as A
from smd_daemon.engine.families import Conditioning
from smd_daemon.engine.plan import Coverage, Level, Plan, RegionStrategy, RegionWeights
from smd_daemon.engine.runner import weight_key
from smd_daemon.engine.scene import ATTENTION, LATENT, Scene, SceneError


def _long(values: list[int], device) -> torch.Tensor:
    return torch.tensor(values, dtype=torch.long, device=device)


class LatentRegions:
    """One sample per (window, region touching it), plus the background's
    where the window has uncovered pixels; two sums per latent: the regions'
    (mask-weighted) and the background's (whose mask row is all ones)."""

    name = LATENT
    slots = 2

    def available(self, model) -> bool:
        return True

    def prompts(self, regions: int) -> int:
        return 1

    def conditioning(self, background: Conditioning, regions: Conditioning, shares: torch.Tensor) -> Conditioning:
        """Row p: region p; row P: the background (each sample its own prompt's
        embeddings, pooled embedding included)."""
        return Conditioning.cat([regions, background])

    def bootstrap_steps(self, scene: Scene, steps: int) -> int:
        return min(scene.bootstrap_steps, steps) if scene.regions else 0

    def levels(self, plan: Plan, coverage: Coverage) -> list[Level]:
        dev = plan.masks.device
        P, rolls = plan.masks.shape[1] - 1, coverage.rolls
        out = []
        for i, (act, bg) in enumerate(zip(coverage.active, coverage.need_bg)):
            rows, wins = [], []
            for v, (regions, uncovered) in enumerate(zip(act, bg)):
                picked = [p for p in range(P) if regions[p]] + ([P] if uncovered else [])
                rows += picked
                wins += [v] * len(picked)
            row = _long(rows, dev)
            slot = (row == P).long()  # the background's samples into the second sum
            roll = None
            if i < len(rolls) and plan.rolls is not None:
                roll = _long([rolls[i][p] if p < P else 0 for p in rows], dev)
            out.append(
                Level(
                    n=len(rows),
                    row=row,
                    window=_long(wins, dev) if plan.windows.tiled else None,
                    roll=roll,
                    boot=i < len(rolls),
                    slot=slot if plan.windows.tiled else None,
                    into=None if plan.windows.tiled else torch.eye(2, dtype=plan.masks.dtype, device=dev)[slot],
                    weights=None,
                )
            )
        return out

    def rows(self, plan: Plan, level: Level, j0: int, j1: int, prompts: int):
        r = level.row[j0:j1]
        return plan.cond.rows(r), None if plan.neg is None else plan.neg.rows(r), {}

    def weights(self, plan: Plan, level: Level, i: int, j0: int, j1: int) -> torch.Tensor:
        """A region's sample by its mask, the background's by 1 (its row)."""
        r, W = level.row[j0:j1], plan.windows
        if level.window is not None:  # a tiled canvas
            return W.crop_rows(plan.masks[i], r, level.window[j0:j1])[:, None] * W.weight
        return plan.masks[i][r][:, None]  # the sample's estimate is already back in canvas coordinates

    def finish(self, plan: Plan, sums: torch.Tensor, first: int) -> torch.Tensor:
        """Regions by their masks; the uncovered area from the background's
        estimate, and its image as strong as asked."""
        C = sums.shape[1] - 1
        B = plan.uncovered[first : first + sums.shape[0]]
        fg = sums[:, :C, 0] / sums[:, C:, 0].clamp_min(1e-8)
        bg_weight = sums[:, C:, 1]
        bg = sums[:, :C, 1] / bg_weight.clamp_min(1e-8)
        if plan.bg_image is not None:
            s = plan.scene.background.strength
            bg = (1 - s) * bg + s * plan.bg_image
        return torch.where(bg_weight > 0, (1 - B) * fg + B * bg, fg)

    def plan_bytes(self, shape: dict) -> int:
        """Per-sample rows; on one window, the centring rolls of bootstrap steps."""
        rolls = 2 * shape["boot"] * shape["regions"] * shape["hw"] * 8 if shape["windows"] == 1 else 0
        return shape["T"] * shape["windows"] * (shape["regions"] + 1) * 3 * 8 + rolls


class AttentionRegions:
    """One sample per window carrying every prompt (background first); one
    sum per latent."""

    name = ATTENTION
    slots = 1

    def available(self, model) -> bool:
        return model.region_ctx is not None

    def prompts(self, regions: int) -> int:
        return regions + 1

    def conditioning(self, background: Conditioning, regions: Conditioning, shares: torch.Tensor) -> Conditioning:
        """One row: every prompt joined, the background's first.

        A pooled embedding (SDXL) conditions the whole sample, not a pixel,
        so no mask can share it out: the sample gets the prompts' pooled
        embeddings weighted by their ``shares`` of the picture (mask areas,
        the background's uncovered area). The background's alone would let a
        region that fills most of the canvas lose its global conditioning
        (style, subject) to a prompt that covers a corner; with the shares,
        one full-canvas region is exactly its own prompt, as in latent mode."""
        return Conditioning.cat([background, regions]).joined(shares)

    def bootstrap_steps(self, scene: Scene, steps: int) -> int:
        return 0  # one sample holds every region: nothing to start from white

    def levels(self, plan: Plan, coverage: Coverage) -> list[Level]:
        dev, dt, W = plan.masks.device, plan.masks.dtype, plan.windows
        canvas = A.layer_sizes(*plan.latent_hw, coverage.resolutions)
        maps = A.region_weights(coverage.masks, coverage.uncovered, canvas)
        maps = [m.to(dev, dt).flatten(2) for m in maps]  # (T, G, positions) per resolution
        index = None
        if W.tiled:
            index = []
            for (H, Wk), (a, b), k in zip(canvas, A.layer_sizes(*W.size, coverage.resolutions), range(len(canvas))):
                rows = []
                for y, x in W.origins:
                    yk, xk = min(y >> k, H - a), min(x >> k, Wk - b)  # windows not on a coarse pixel snap to it
                    rows.append(((yk + torch.arange(a))[:, None] * Wk + xk + torch.arange(b)).flatten())
                index.append(torch.stack(rows).to(dev))
        n = len(W.origins)
        return [
            Level(
                n=n,
                row=torch.zeros(n, dtype=torch.long, device=dev),
                window=torch.arange(n, device=dev) if W.tiled else None,
                roll=None,
                boot=False,
                slot=None,
                into=None,
                weights=RegionWeights([m[i] for m in maps], index),
            )
            for i in range(len(plan.schedule))
        ]

    def rows(self, plan: Plan, level: Level, j0: int, j1: int, prompts: int):
        m = j1 - j0
        cond = plan.cond.expand(m).padded(prompts)
        neg = None if plan.neg is None else plan.neg.expand(m).padded(prompts)
        if prompts == 1:  # no region anywhere in the batch: plain cross-attention
            return cond, neg, {}
        windows = None if level.window is None else level.window[j0:j1]
        assert level.weights is not None, "attention-mode levels carry their region weights"
        extras = {}
        for wk in level.weights.rows(windows, m):
            if wk.shape[1] < prompts:  # the empty prompts weigh nothing
                wk = torch.cat([wk, wk.new_zeros((m, prompts - wk.shape[1], wk.shape[2]))], 1)
            extras[weight_key(wk.shape[-1])] = wk
        return cond, neg, extras

    def weights(self, plan: Plan, level: Level, i: int, j0: int, j1: int) -> torch.Tensor:
        return plan.windows.weight.expand(j1 - j0, 1, -1, -1)

    def finish(self, plan: Plan, sums: torch.Tensor, first: int) -> torch.Tensor:
        """The windows' estimates blended; the background image where nothing covers."""
        C = sums.shape[1] - 1
        x = sums[:, :C, 0] / sums[:, C:, 0].clamp_min(1e-8)
        if plan.bg_image is None:
            return x
        w = plan.uncovered[first : first + sums.shape[0]] * plan.scene.background.strength
        return (1 - w) * x + w * plan.bg_image

    def plan_bytes(self, shape: dict) -> int:
        """Prompt weights at every resolution (together under 4/3 of the latent's
        positions) and, tiled, each window's positions at every resolution."""
        weights = shape["T"] * (shape["regions"] + 1) * shape["hw"] * 4 // 3 * shape["bytes"]
        index = 2 * shape["windows"] * shape["window_hw"] * 8 if shape["windows"] > 1 else 0
        return weights + index


STRATEGIES: dict[str, RegionStrategy] = {s.name: s for s in (LatentRegions(), AttentionRegions())}


def strategy_for(mode: str) -> RegionStrategy:
    """The strategy of a scene's region mode (``Scene.validate`` has checked the name)."""
    if mode not in STRATEGIES:
        raise SceneError(f"unknown region mode {mode!r}")
    return STRATEGIES[mode]


def available(model) -> tuple[str, ...]:
    """The region modes ``model`` can draw in."""
    return tuple(name for name, s in STRATEGIES.items() if s.available(model))

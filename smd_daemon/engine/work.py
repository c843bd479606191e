"""Engine work in bounded passes: the stream batch's step and one-shot generation.

A step is *work in passes* (``StepWork`` for streams, ``GenerateWork`` for
one-shot images). Each ``run()`` is either one UNet forward over a bounded
number of samples, whose clean-latent estimates (LCM boundary condition)
are added into mask-weighted sums -- latent pre-averaging -- or one bounded
piece of the finishing work (averaging and re-noising; one decoder tile).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np
import torch

from smd_daemon.engine import attention as A
from smd_daemon.engine import masks as M
from smd_daemon.engine import vae as V
from smd_daemon.engine.plan import BACKGROUND, Plan

if TYPE_CHECKING:
    from smd_daemon.engine.core import Engine
    from smd_daemon.engine.stream import StreamFrame, StreamSession


def _pad_tokens(emb: torch.Tensor, extra: int) -> torch.Tensor:
    """Attention mode, batched with plans of more prompts: append empty prompts."""
    return emb if extra == 0 else torch.cat([emb, emb.new_zeros((emb.shape[0], extra, emb.shape[2]))], 1)


def _pad_prompts(w: torch.Tensor, prompts: int) -> torch.Tensor:
    """...which weigh nothing anywhere."""
    extra = prompts - w.shape[1]
    return w if extra == 0 else torch.cat([w, w.new_zeros((w.shape[0], extra, w.shape[2]))], 1)


def _clean_estimate(plan: Plan, i: int, x_in: torch.Tensor, eps: torch.Tensor, pred_type: str) -> torch.Tensor:
    """x̂0 of samples at level ``i``, with the LCM boundary condition."""
    sa, s1 = plan.sqrt_ab[i], plan.sqrt_1mab[i]
    if pred_type == "v_prediction":
        x0 = sa * x_in - s1 * eps
    elif pred_type == "sample":
        x0 = eps
    else:
        x0 = (x_in - s1 * eps) / sa
    return plan.c_out[i] * x0 + plan.c_skip[i] * x_in


class _Job:
    """One stream's (or one image's) latents in a step: their UNet samples
    and the mask-weighted sums the samples' clean estimates add up into.

    ``xs[k]`` is the latent at level ``first + k``: levels are consecutive."""

    def __init__(self, engine: Engine, plan: Plan, xs: list[torch.Tensor], first: int, white_noise: torch.Tensor):
        self.e, self.plan, self.xs, self.first = engine, plan, xs, first
        self.white_noise = white_noise
        self.levels = range(first, first + len(xs))
        self.runs = [(lv, plan.levels[lv].n) for lv in self.levels]
        self.samples = sum(n for _, n in self.runs)
        h, w = plan.latent_hw
        S = len(xs)
        ref = xs[0]
        self.num = ref.new_zeros((S, 4, h, w))
        self.den = ref.new_zeros((S, 1, h, w))
        if plan.mode == "latent":
            self.bnum = ref.new_zeros((S, 4, h, w))
            self.bden = ref.new_zeros((S, 1, h, w))
        self._variants: dict[int, torch.Tensor | None] = {}

    def _white_t(self, lv: int) -> torch.Tensor:
        p = self.plan
        return p.sqrt_ab[lv] * p.white + p.sqrt_1mab[lv] * self.white_noise[lv]

    def _variant_rows(self, lv: int) -> torch.Tensor | None:
        """One window, bootstrap step: each region's input -- a white image at
        this noise level outside its mask, centred on its box -- then the
        plain latent. None outside bootstrap steps (every sample is the latent)."""
        if lv not in self._variants:
            p, x = self.plan, self.xs[lv - self.first]
            rows = None
            if lv < len(p.offsets):
                m = p.masks[lv][:, None]  # (P, 1, h, w)
                mixed = (1 - m) * self._white_t(lv) + m * x
                rows = torch.cat([M.center(mixed[k : k + 1], off) for k, off in enumerate(p.offsets[lv])] + [x])
            self._variants[lv] = rows
        return self._variants[lv]

    def inputs(self, lv: int, j0: int, j1: int) -> torch.Tensor:
        p, L, x = self.plan, self.plan.levels[lv], self.xs[lv - self.first]
        if p.one_window:
            rows = self._variant_rows(lv) if L.variant is not None else None
            return x.expand(j1 - j0, -1, -1, -1) if rows is None else rows[L.variant[j0:j1]]
        boot = lv < len(p.offsets)
        white_t = self._white_t(lv) if boot else None
        out = []
        for j in range(j0, j1):
            y, x0, a, b = p.tiles[L.tiles[j]]
            crop = x[..., y : y + a, x0 : x0 + b]
            r = L.regions[j]
            if boot and r >= 0:
                m = p.masks[lv, r][y : y + a, x0 : x0 + b]
                crop = (1 - m) * white_t[..., y : y + a, x0 : x0 + b] + m * crop
            out.append(crop)
        return torch.cat(out)

    def attn_weights(self, lv: int, j0: int, j1: int) -> list[torch.Tensor]:
        p, L = self.plan, self.plan.levels[lv]
        if L.attn is not None:
            return [wk[j0:j1] for wk in L.attn]
        crops = [A.crop_weights(p.attn_maps, lv, p.tiles[L.tiles[j]], p.attn_tile_sizes) for j in range(j0, j1)]
        return [torch.cat(ws) for ws in zip(*crops)]

    def accumulate(self, lv: int, j0: int, j1: int, x_in: torch.Tensor, eps: torch.Tensor) -> None:
        """Latent pre-averaging, the sums: each region's x̂0 weighted by its
        mask at this step (uncentred first), the background's apart."""
        p, L, k = self.plan, self.plan.levels[lv], lv - self.first
        x0 = _clean_estimate(p, lv, x_in, eps, self.e.scheduler.config.prediction_type)
        for j in range(j0, j1):
            if L.shifts[j] != (0, 0):
                x0[j - j0] = M.uncenter(x0[j - j0], L.shifts[j])
        if p.mode == "attention":
            if p.one_window:
                self.num[k] += x0.sum(0)
                self.den[k] += j1 - j0
                return
            for j in range(j0, j1):
                y, x, a, b = p.tiles[L.tiles[j]]
                self.num[k, :, y : y + a, x : x + b] += p.tile_weight[0] * x0[j - j0]
                self.den[k, :, y : y + a, x : x + b] += p.tile_weight[0]
            return
        if p.one_window:
            rw, bw = L.region_weight[j0:j1], L.bg_weight[j0:j1]
            self.num[k] += (rw * x0).sum(0)
            self.den[k] += rw.sum(0)
            self.bnum[k] += (bw * x0).sum(0)
            self.bden[k] += bw.sum(0)
            return
        tw = p.tile_weight[0]
        for j in range(j0, j1):
            y, x, a, b = p.tiles[L.tiles[j]]
            r = L.regions[j]
            if r == BACKGROUND:
                self.bnum[k, :, y : y + a, x : x + b] += tw * x0[j - j0]
                self.bden[k, :, y : y + a, x : x + b] += tw
            else:
                wgt = tw * p.masks[lv, r][None, y : y + a, x : x + b]
                self.num[k, :, y : y + a, x : x + b] += wgt * x0[j - j0]
                self.den[k, :, y : y + a, x : x + b] += wgt

    def finish(self) -> torch.Tensor:
        """The pre-averaged clean estimates x̄0, (S, 4, h, w): regions by
        their masks, the uncovered area from the background prediction and
        image."""
        p = self.plan
        B = p.uncovered[self.first : self.first + len(self.xs)]
        s = p.scene.background.strength
        if p.mode == "attention":
            x = self.num / self.den.clamp_min(1e-8)
            if p.bg_image is None:
                return x
            w = B * s
            return (1 - w) * x + w * p.bg_image
        fg = self.num / self.den.clamp_min(1e-8)
        bgx = self.bnum / self.bden.clamp_min(1e-8)
        if p.bg_image is not None:
            bgx = (1 - s) * bgx + s * p.bg_image
        return torch.where(self.bden > 0, (1 - B) * fg + B * bgx, fg)


class _Passes:
    """Jobs grouped by what can share a UNet batch, walked in bounded passes
    (a pass never mixes groups)."""

    def __init__(self, engine: Engine, jobs: list[_Job]):
        self.e = engine
        groups: dict[tuple, list[_Job]] = {}
        for job in jobs:
            groups.setdefault(job.plan.batch_key(), []).append(job)
        # (rows per sample, prompts per sample, [(job, level, samples)])
        self.groups = [
            (2 if g[0].plan.cfg else 1, max(j.plan.prompts for j in g), [(j, lv, n) for j in g for lv, n in j.runs])
            for g in groups.values()
        ]
        self.rows = {id(j): j.samples * (2 if j.plan.cfg else 1) for j in jobs}
        self.total = sum(self.rows.values())
        self.left = self.total
        self._g = self._r = self._j = 0  # cursor: group, run, sample

    def run(self, max_rows: int | None) -> int:
        limit = self.e.max_batch_rows(max_rows if max_rows is not None else self.left)
        mult, prompts, runs = self.groups[self._g]
        budget = max(1, limit // mult)
        segments = []
        while budget and self._r < len(runs):
            job, lv, n = runs[self._r]
            take = min(budget, n - self._j)
            segments.append((job, lv, self._j, self._j + take))
            budget -= take
            self._j += take
            if self._j == n:
                self._r, self._j = self._r + 1, 0
        if self._r == len(runs):
            self._g, self._r = self._g + 1, 0
        self._forward(segments, prompts)
        rows = mult * sum(j1 - j0 for _, _, j0, j1 in segments)
        self.left -= rows
        return rows

    def _forward(self, segments: list[tuple[_Job, int, int, int]], prompts: int) -> None:
        """One UNet forward over ``segments`` (job, level, first, end sample),
        all of one batch key; each job adds its share to its sums."""
        plan0 = segments[0][0].plan
        xs, ts, embs, negs = [], [], [], []
        weights: list[list[torch.Tensor]] = []
        for job, lv, j0, j1 in segments:
            L = job.plan.levels[lv]
            xs.append(job.inputs(lv, j0, j1))
            ts.append(L.t[j0:j1])
            pad = (prompts - job.plan.prompts) * (L.emb.shape[1] // job.plan.prompts)
            embs.append(_pad_tokens(L.emb[j0:j1], pad))
            if plan0.cfg:
                negs.append(_pad_tokens(L.neg[j0:j1], pad))
            if plan0.mode == "attention" and prompts > 1:
                weights.append([_pad_prompts(wk, prompts) for wk in job.attn_weights(lv, j0, j1)])
        x, t, emb = torch.cat(xs), torch.cat(ts), torch.cat(embs)
        region_w = {int(wk.shape[-1]): wk for wk in (torch.cat(ws) for ws in zip(*weights))} if weights else None
        self.e.unet_calls += 1
        if plan0.cfg:
            # Classifier-free guidance only when asked for (guidance > 1 on a
            # UNet without a guidance embedding): never a doubled batch at 1.0.
            if region_w:
                region_w = {k: torch.cat([v, v]) for k, v in region_w.items()}
            eps_u, eps_c = self.e.runner(
                torch.cat([x, x]), torch.cat([t, t]), torch.cat([torch.cat(negs), emb]), None, region_w
            ).chunk(2)
            eps = eps_u + plan0.scene.guidance_scale * (eps_c - eps_u)
        else:
            tc = plan0.time_cond.expand(x.shape[0], -1) if plan0.time_cond is not None else None
            eps = self.e.runner(x, t, emb, tc, region_w)
        start = 0
        for job, lv, j0, j1 in segments:
            end = start + j1 - j0
            job.accumulate(lv, j0, j1, x[start:end], eps[start:end])
            start = end


class _Work:
    """What both kinds of work share: the UNet passes of the current step."""

    _passes: _Passes

    @property
    def samples_total(self) -> int:
        """UNet samples of the current step."""
        return self._passes.total

    @property
    def samples_left(self) -> int:
        """...not yet computed."""
        return self._passes.left


def _checked(decoder: V.Decoder) -> np.ndarray:
    image, finite = decoder.result()
    if not finite:
        # fp16 overflow or a broken model gives NaN: say so rather than show black.
        raise FloatingPointError("the model produced non-finite values (NaN/inf); try --dtype fp32")
    return image


class StepWork(_Work):
    """One frame of each of several streams, as passes (``run``): UNet
    passes over the frames' samples, then per stream one finishing pass
    (pre-averaging, re-noising, the first decoder tile) and one per further
    decoder tile.

    A sample is one row of a UNet batch: a slot x window x region (in
    attention mode a slot x window); with classifier-free guidance each
    takes two rows, and a pass runs at least one. The streams' state
    changes only in their finishing pass: work dropped before it leaves
    them as they were. On CUDA with decoding on a side
    stream, begin the next work before calling ``frames()`` to overlap the
    copy with the next step; ``ready()`` says whether ``frames()`` would wait.
    """

    def __init__(self, engine: Engine, streams: list[StreamSession]):
        self.e = engine
        self.streams = list(streams)
        jobs = [s._begin() for s in self.streams]
        self._passes = _Passes(engine, jobs)
        total = self._passes.total
        self.share = [self._passes.rows[id(j)] / total if total else 0.0 for j in jobs]
        self._jobs = jobs
        self._finished: list[tuple[V.Decoder, StreamFrame]] = []

    @property
    def done(self) -> bool:
        return (
            self._passes.left == 0
            and len(self._finished) == len(self.streams)
            and all(d.done for d, _ in self._finished)
        )

    @torch.no_grad()
    def run(self, max_samples: int | None = None) -> int:
        """One pass; returns the UNet samples it ran (0 for a finishing pass)."""
        if self._passes.left:
            return self._passes.run(max_samples)
        for dec, _ in self._finished:
            if not dec.done:
                dec.run()
                return 0
        k = len(self._finished)
        if k == len(self.streams):
            raise RuntimeError("the work is done")
        latent, frame = self.streams[k]._advance(self._jobs[k].finish())
        dec = self.e.decoder(latent)
        dec.run()
        self._finished.append((dec, frame))
        return 0

    def ready(self) -> bool:
        return self.done and all(d.ready() for d, _ in self._finished)

    def frames(self) -> list[StreamFrame]:
        if not self.done:
            raise RuntimeError("frames() before the work is done")
        for dec, frame in self._finished:
            frame.image = _checked(dec)
        return [frame for _, frame in self._finished]


class GenerateWork(_Work):
    """One image, step by step, as passes: each step's UNet passes, then a
    finishing pass (pre-averaging, re-noising to the next level), and at the
    end one pass per decoder tile."""

    def __init__(self, engine: Engine, plan: Plan):
        self.e, self.plan = engine, plan
        T = len(plan.timesteps)
        gen = torch.Generator().manual_seed(int(plan.scene.seed))
        x = engine.entry_noise(plan, gen)
        self._renoise = [engine.noise(plan, gen) for _ in range(T - 1)]  # drawn in the order steps use them
        self._white_noise = engine.bootstrap_noise(plan)
        self.step = 0
        self._start(x)
        self._decoder: V.Decoder | None = None

    def _start(self, x: torch.Tensor) -> None:
        self._job = _Job(self.e, self.plan, [x], self.step, self._white_noise)
        self._passes = _Passes(self.e, [self._job])

    @property
    def progress(self) -> tuple[int, int]:
        """(denoising steps finished, steps)."""
        return self.step, len(self.plan.timesteps)

    @property
    def done(self) -> bool:
        return self._decoder is not None and self._decoder.done

    @torch.no_grad()
    def run(self, max_samples: int | None = None) -> int:
        """One pass; returns the UNet samples it ran (0 for a finishing pass)."""
        if self._passes.left:
            return self._passes.run(max_samples)
        if self._decoder is None:
            x0 = self._job.finish()
            self.step += 1
            p = self.plan
            if self.step < len(p.timesteps):
                i = self.step
                self._start(p.sqrt_ab[i] * x0 + p.sqrt_1mab[i] * self._renoise[i - 1])
                return 0
            self._decoder = self.e.decoder(x0)
        elif self._decoder.done:
            raise RuntimeError("the work is done")
        self._decoder.run()
        return 0

    def image(self) -> np.ndarray:
        if not self.done:
            raise RuntimeError("image() before the work is done")
        return _checked(self._decoder)

"""Engine work in bounded passes, and one-shot generation.

Denoising is *work in passes*: each ``run()`` is either one UNet forward
over a bounded number of samples, whose clean estimates (LCM boundary
condition) are added into weighted sums -- latent pre-averaging, or the
windows' blend -- or one bounded piece of finishing work (averaging and
re-noising; one decoder tile). ``GenerateWork`` makes one image this way;
``stream.StepWork`` one frame of each of several streams.
"""

from __future__ import annotations

import numpy as np
import torch

from smd_daemon.engine import vae as V
from smd_daemon.engine.families import Conditioning
from smd_daemon.engine.model import Model
from smd_daemon.engine.plan import Plan, Rolls


class Job:
    """One plan's latents at consecutive levels in a step, and the weighted
    sums their samples' clean estimates add up into.

    ``x[k]`` is the latent at level ``first + k``. ``sums[k]`` (C + 1, slots,
    h, w) holds, for each sum of the strategy, the weighted estimates and
    their weights."""

    def __init__(self, plan: Plan, x: torch.Tensor, first: int, white_noise: torch.Tensor):
        self.plan, self.x, self.first = plan, x, first
        self.white_noise = white_noise  # (T, C, h, w)
        self.runs = [(lv, plan.levels[lv].n) for lv in range(first, first + x.shape[0])]
        self.samples = sum(n for _, n in self.runs)
        S, C, h, w = x.shape
        self.sums = x.new_zeros((S, C + 1, plan.strategy.slots, h, w))

    def inputs(self, lv: int, j0: int, j1: int) -> torch.Tensor:
        """Samples ``j0:j1`` of level ``lv``: the latent in each one's window;
        in bootstrap steps a region's sample shows the white latent at this
        noise level outside its mask, centred on the mask (one window)."""
        p, L = self.plan, self.plan.levels[lv]
        x, W = self.x[lv - self.first], p.windows
        windows = None if L.window is None else L.window[j0:j1]
        xin = x.expand(j1 - j0, -1, -1, -1) if windows is None else W.crop(x, windows)
        if L.boot:
            s = p.schedule
            assert p.white is not None, "a plan with bootstrap steps has the white latent"
            white = s.signal[lv] * p.white[0] + s.noise[lv] * self.white_noise[lv]
            rows = L.row[j0:j1]
            if windows is None:
                m, white = p.masks[lv][rows][:, None], white[None]
            else:
                m, white = W.crop_rows(p.masks[lv], rows, windows)[:, None], W.crop(white, windows)
            xin = torch.lerp(white, xin, m)  # the background's mask row is all ones: its sample keeps the latent
        if L.roll is not None:
            assert p.rolls is not None, "a level with centred samples has the plan's rolls"
            xin = Rolls.gather(xin, p.rolls.index[L.roll[j0:j1]])
        return xin

    def accumulate(self, lv: int, j0: int, j1: int, x_in: torch.Tensor, out: torch.Tensor) -> None:
        """Each sample's clean estimate (uncentred), weighted into the sums."""
        p, L, k = self.plan, self.plan.levels[lv], lv - self.first
        x0 = p.schedule.clean(lv, x_in, out)
        if L.roll is not None:
            assert p.rolls is not None, "a level with centred samples has the plan's rolls"
            x0 = Rolls.gather(x0, p.rolls.inverse[L.roll[j0:j1]])
        w = p.strategy.weights(p, L, lv, j0, j1).expand(x0.shape[0], 1, -1, -1)  # (m, 1, th, tw)
        if L.window is not None:  # channels first: what index_add_ adds, in one copy
            values = torch.cat([(w * x0).transpose(0, 1), w.transpose(0, 1)])
            p.windows.add(self.sums[k], L.window[j0:j1], values, None if L.slot is None else L.slot[j0:j1])
            return
        values = torch.cat([w * x0, w], 1)
        if L.into is None:
            self.sums[k, :, 0] += values.sum(0)
        else:  # each sum as one product, in a fixed order (no atomics: a static scene's frames stay identical)
            sums = L.into[j0:j1].t() @ values.view(values.shape[0], -1)
            self.sums[k] += sums.view(-1, *values.shape[1:]).transpose(0, 1)

    def finish(self) -> torch.Tensor:
        """The pre-averaged clean estimates x̄0, (S, C, h, w)."""
        return self.plan.strategy.finish(self.plan, self.sums, self.first)


class Passes:
    """Jobs grouped by what can share a UNet batch, walked in bounded passes
    (a pass never mixes groups)."""

    def __init__(self, model: Model, jobs: list[Job], max_batch: int | None):
        self.model, self.max_batch = model, max_batch
        groups: dict[tuple, list[Job]] = {}
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
        limit = max_rows if max_rows is not None else self.left
        limit = limit if self.max_batch is None else min(limit, self.max_batch)
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

    def _forward(self, segments: list[tuple[Job, int, int, int]], prompts: int) -> None:
        """One UNet forward over ``segments`` (job, level, first, end sample),
        all of one batch key; each job adds its share to its sums."""
        plan0 = segments[0][0].plan
        xs, ts, conds, negs, extras = [], [], [], [], []
        for job, lv, j0, j1 in segments:
            p = job.plan
            xs.append(job.inputs(lv, j0, j1))
            ts.append(p.schedule.t[lv].expand(j1 - j0))
            level = p.levels[lv]
            cond, neg, extra = p.strategy.rows(p, level, j0, j1, prompts)
            for key, per_window in p.window_inputs.items():
                windows = level.window[j0:j1] if level.window is not None else level.row.new_zeros(j1 - j0)
                extra = extra | {key: per_window[windows]}
            conds.append(cond)
            negs.append(neg)
            extras.append(extra)
        x = torch.cat(xs)
        n = x.shape[0]
        inputs = {"sample": x, "timestep": torch.cat(ts)}
        inputs |= {k: torch.cat([e[k] for e in extras]) for k in extras[0]}
        inputs |= {k: v.expand(n, *v.shape[1:]) for k, v in plan0.guidance.items()}
        cond = Conditioning.cat(conds).inputs()
        if plan0.cfg:
            # Classifier-free guidance only when asked for (guidance > 1 on a
            # model that does not embed it): never a doubled batch at 1.0.
            uncond = Conditioning.cat(negs).inputs()
            inputs = {k: torch.cat([v, v]) for k, v in inputs.items()}
            inputs |= {k: torch.cat([uncond[k], cond[k]]) for k in cond}
            out_u, out_c = self.model.runner(inputs).chunk(2)
            out = out_u + plan0.scene.guidance_scale * (out_c - out_u)
        else:
            out = self.model.runner(inputs | cond)
        start = 0
        for job, lv, j0, j1 in segments:
            end = start + j1 - j0
            job.accumulate(lv, j0, j1, x[start:end], out[start:end])
            start = end


class Work:
    """What every kind of work shares: the UNet passes of the current step."""

    _passes: Passes

    @property
    def samples_total(self) -> int:
        """UNet samples of the current step."""
        return self._passes.total

    @property
    def samples_left(self) -> int:
        """...not yet computed."""
        return self._passes.left


def checked_image(decoder: V.Decoder) -> np.ndarray:
    image, finite = decoder.result()
    if not finite:
        # fp16 overflow or a broken model gives NaN: say so rather than show black.
        raise FloatingPointError(
            "the model produced non-finite values (NaN/inf) instead of a picture; "
            "in fp16, try --dtype fp32 (or an fp16-safe VAE with --vae)"
        )
    return image


class GenerateWork(Work):
    """One image, step by step, as passes: each step's UNet passes, then a
    finishing pass (pre-averaging, re-noising to the next level), and at the
    end one pass per decoder tile."""

    def __init__(self, model: Model, plan: Plan, max_batch: int | None):
        self.model, self.plan, self.max_batch = model, plan, max_batch
        T = len(plan.schedule)
        gen = torch.Generator().manual_seed(int(plan.scene.seed))
        x = model.noise(plan.latent_hw, gen) * plan.schedule.entry_scale
        # Drawn in the order steps use them, as diffusers' pipelines draw theirs.
        self._renoise = [model.noise(plan.latent_hw, gen) for _ in range(T - 1)]
        self._white_noise = model.bootstrap_noise(plan.latent_hw, plan.scene.seed, T)
        self.step = 0
        self._start(x)
        self._decoder: V.Decoder | None = None

    def _start(self, x: torch.Tensor) -> None:
        self._job = Job(self.plan, x, self.step, self._white_noise)
        self._passes = Passes(self.model, [self._job], self.max_batch)

    @property
    def progress(self) -> tuple[int, int]:
        """(denoising steps finished, steps)."""
        return self.step, len(self.plan.schedule)

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
            s = self.plan.schedule
            if self.step < len(s):
                i = self.step
                self._start(s.signal[i] * x0 + s.noise[i] * self._renoise[i - 1])
                return 0
            self._decoder = self.model.decoder(x0, final=True)  # the full VAE, where a tiny one shows frames
        elif self._decoder.done:
            raise RuntimeError("the work is done")
        self._decoder.run()
        return 0

    def image(self) -> np.ndarray:
        if self._decoder is None or not self._decoder.done:
            raise RuntimeError("image() before the work is done")
        return checked_image(self._decoder)

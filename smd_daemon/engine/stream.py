"""The stream batch: one latent per noise level in flight, one frame per step.

Each session keeps one buffer of fixed shape (T, C, h, w): level i holds a
latent at the i-th noise level. A step runs every level through the UNet in
one batch (with other sessions' levels when they fit), pre-averages each
level's clean estimate x0, shows the deepest level's, and rolls the rest one
level down, StreamDiffusion's way:

    x[0]  = fresh noise (the same every frame: a static scene does not flicker)
    x[1:] = signal[1:] * x0[:-1] + noise[1:] * n[1:]

Fixed shapes keep a session's batch the same from frame to frame, which is
what CUDA graphs need. During the first T - 1 frames the deeper levels still
hold the starting noise: they are computed but not shown.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from smd_daemon.engine import vae as V
from smd_daemon.engine.model import Model
from smd_daemon.engine.plan import Plan
from smd_daemon.engine.planner import check, make_plan
from smd_daemon.engine.scene import Scene
from smd_daemon.engine.work import Job, Passes, Work, checked_image


@dataclass
class StreamFrame:
    image: np.ndarray | None  # uint8 (H, W, 3), set when the frame is collected
    index: int  # frames emitted by this session so far, minus one
    revision: int  # newest scene revision applied
    settled: bool  # every step that made this frame saw ``revision``


class StreamSession:
    """The stream batch of one session (see the module docstring).

    Edits take effect at the next frame without a flush: levels already in
    flight continue under the new scene, so an edit is fully visible within
    ``steps_in_flight`` frames. A change of size, steps or seed starts the
    levels afresh."""

    def __init__(
        self, model: Model, scene: Scene, revision: int = 0, plan: Plan | None = None, max_batch: int | None = None
    ):
        self.model, self.max_batch = model, max_batch
        self.revision = revision
        self.frames = 0
        self._pending: tuple[Scene, int, Plan | None] | None = None
        self._reset(plan if plan is not None else make_plan(model, scene))

    @property
    def steps_in_flight(self) -> int:
        return len(self.plan.schedule)

    def _reset(self, plan: Plan) -> None:
        self.plan = plan
        T, hw = len(plan.schedule), plan.latent_hw
        gen = torch.Generator().manual_seed(int(plan.scene.seed))
        entry = self.model.noise(hw, gen) * plan.schedule.entry_scale
        renoise = self.model.noise(hw, gen, T)
        # noise[0]: what enters level 0 every frame; noise[i]: what re-noises the estimate entering level i.
        self.noise = torch.cat([entry, renoise[: T - 1]])
        self.x = entry.repeat(T, 1, 1, 1)  # the levels in flight; deeper ones fill over T frames
        self.white_noise = self.model.bootstrap_noise(hw, plan.scene.seed, T)
        self._filled = 1  # levels holding a latent that entered at level 0
        self._since = [self.revision] * T  # oldest revision in each level's history

    def update(self, scene: Scene, revision: int, plan: Plan | None = None) -> None:
        """Replace the scene, applied at the next frame. Without ``plan`` the
        scene is checked now and planned then; a plan made elsewhere (another
        thread) is used as it is."""
        if plan is None:
            check(self.model, scene)
        self._pending = (scene if plan is None else plan.scene, revision, plan)

    def _apply(self, scene: Scene, revision: int, plan: Plan | None) -> None:
        old = self.plan.scene
        plan = plan if plan is not None else make_plan(self.model, scene)
        self.revision = revision
        if (scene.width, scene.height, scene.steps, scene.seed) != (old.width, old.height, old.steps, old.seed):
            self._reset(plan)  # shapes or noise changed: the levels in flight are not reusable
        else:
            self.plan = plan

    @torch.no_grad()
    def step(self) -> StreamFrame:
        """One frame, all passes at once."""
        work = StepWork(self.model, [self], self.max_batch)
        while not work.done:
            work.run()
        return work.frames()[0]

    def begin(self) -> Job:
        """Apply a pending edit: this frame's job, over every level."""
        pending, self._pending = self._pending, None
        if pending is not None:
            self._apply(*pending)
        self._since[0] = self.revision
        return Job(self.plan, self.x, 0, self.white_noise)

    def advance(self, x0: torch.Tensor) -> tuple[torch.Tensor, StreamFrame]:
        """Show the deepest filled level's estimate; roll the rest one level
        down. Returns the latent to decode and the frame (without its image)."""
        s, T = self.plan.schedule, len(self.plan.schedule)
        deepest = self._filled - 1
        settled = deepest == T - 1 and self._since[deepest] == self.revision
        if T > 1:
            moved = s.signal[1:].view(-1, 1, 1, 1) * x0[:-1] + s.noise[1:].view(-1, 1, 1, 1) * self.noise[1:]
            self.x[1:] = moved
        self._since = [self.revision] + self._since[:-1]
        self._filled = min(self._filled + 1, T)
        frame = StreamFrame(image=None, index=self.frames, revision=self.revision, settled=settled)
        self.frames += 1
        return x0[deepest : deepest + 1], frame


class StepWork(Work):
    """One frame of each of several streams, as passes (``run``): UNet
    passes over the frames' samples, then per stream one finishing pass
    (pre-averaging, the roll, the first decoder tile) and one per further
    decoder tile. Streams whose samples fit one batch (same window size and
    guidance) share UNet calls.

    A sample is one row of a UNet batch: a level x window x region (in
    attention mode a level x window); with classifier-free guidance each
    takes two rows, and a pass runs at least one. The streams' state
    changes only in their finishing pass: work dropped before it leaves
    them as they were. With decoding on a CUDA side stream the frames'
    copy to the host runs beside whatever the device does next: ``ready()``
    says whether ``frames()`` would wait for it.
    """

    def __init__(self, model: Model, streams: list[StreamSession], max_batch: int | None):
        self.model = model
        self.streams = list(streams)
        jobs = [s.begin() for s in self.streams]
        self._passes = Passes(model, jobs, max_batch)
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
        latent, frame = self.streams[k].advance(self._jobs[k].finish())
        dec = self.model.decoder(latent)
        dec.run()
        self._finished.append((dec, frame))
        return 0

    def ready(self) -> bool:
        return self.done and all(d.ready() for d, _ in self._finished)

    def frames(self) -> list[StreamFrame]:
        if not self.done:
            raise RuntimeError("frames() before the work is done")
        for dec, frame in self._finished:
            frame.image = checked_image(dec)
        return [frame for _, frame in self._finished]

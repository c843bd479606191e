"""The stream batch: one latent per noise level in flight, one frame per step."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np
import torch

from smd_daemon.engine.plan import Plan
from smd_daemon.engine.scene import Scene
from smd_daemon.engine.work import _Job

if TYPE_CHECKING:
    from smd_daemon.engine.core import Engine


@dataclass
class StreamFrame:
    image: np.ndarray  # uint8 (H, W, 3)
    index: int  # frames emitted by this session so far, minus one
    revision: int  # newest scene revision applied
    settled: bool  # every step that made this frame saw ``revision``


class StreamSession:
    """The stream batch: one latent per noise level in flight, all advanced
    by one UNet call per frame; the deepest one is shown.

    Edits take effect at the next frame without a flush: levels already in
    flight continue under the new scene, so an edit is fully visible within
    ``steps_in_flight`` frames. Noise is fixed per session, so a static
    scene gives identical frames.
    """

    def __init__(self, engine: Engine, scene: Scene, revision: int = 0, plan: Plan | None = None):
        self.engine = engine
        self.revision = revision
        self.frames = 0
        self._pending: tuple[Scene, int, Plan | None] | None = None
        self._reset(plan if plan is not None else engine.plan(scene))

    @property
    def steps_in_flight(self) -> int:
        return len(self.plan.timesteps)

    def _reset(self, plan: Plan) -> None:
        self.plan = plan
        T = len(plan.timesteps)
        gen = torch.Generator().manual_seed(int(plan.scene.seed))
        e = self.engine
        self._entry = e.entry_noise(plan, gen)
        self._renoise = e.noise(plan, gen, T)
        self._white_noise = e.bootstrap_noise(plan)
        self._slots: list[torch.Tensor | None] = [None] * T
        self._since: list[int] = [self.revision] * T  # oldest revision in each slot's history

    def update(self, scene: Scene, revision: int, plan: Plan | None = None) -> None:
        """Replace the scene, applied at the next frame. Without ``plan`` the
        scene is checked now and planned then; a plan made elsewhere (another
        thread) is used as it is."""
        if plan is None:
            self.engine.check(scene)
        self._pending = (scene if plan is None else plan.scene, revision, plan)

    def _apply_pending(self) -> None:
        scene, revision, plan = self._pending
        self._pending = None
        old = self.plan.scene
        plan = plan if plan is not None else self.engine.plan(scene)
        self.revision = revision
        if (scene.width, scene.height, scene.steps, scene.seed) != (old.width, old.height, old.steps, old.seed):
            self._reset(plan)  # shapes or noise changed: the levels in flight are not reusable
        else:
            self.plan = plan

    @torch.no_grad()
    def step(self) -> StreamFrame:
        return self.engine.step_streams([self])[0]

    def _begin(self) -> _Job:
        """Apply a pending edit and fill level 0: this frame's job."""
        if self._pending is not None:
            self._apply_pending()
        self._slots[0] = self._entry
        self._since[0] = self.revision
        live = [x for x in self._slots if x is not None]  # levels 0..d: filled from the top
        return _Job(self.engine, self.plan, live, 0, self._white_noise)

    def _advance(self, x0: torch.Tensor) -> tuple[torch.Tensor, StreamFrame]:
        """Show the deepest level's estimate; re-noise the rest one level down.
        Returns the latent to decode and the frame (without its image yet)."""
        plan, T = self.plan, len(self.plan.timesteps)
        S = x0.shape[0]
        deepest = S - 1
        settled = deepest == T - 1 and self._since[deepest] == self.revision
        slots: list[torch.Tensor | None] = [None] * T
        since = [self.revision] * T
        m = min(S, T - 1)  # levels that move down one
        if m:
            moved = (
                plan.sqrt_ab[1 : m + 1].view(-1, 1, 1, 1) * x0[:m]
                + plan.sqrt_1mab[1 : m + 1].view(-1, 1, 1, 1) * self._renoise[:m, 0]
            )
            for i in range(m):
                slots[i + 1] = moved[i : i + 1]
                since[i + 1] = self._since[i]
        self._slots, self._since = slots, since
        frame = StreamFrame(image=None, index=self.frames, revision=self.revision, settled=settled)
        self.frames += 1
        return x0[deepest : deepest + 1], frame

"""The engine: StreamMultiDiffusion on a loaded model, in bounded passes.

``Engine`` is the facade the daemon uses: it checks and plans scenes
(``planner.py``), opens streams (``stream.py``) and begins work
(``StepWork``, ``GenerateWork``) on one ``Model`` (``model.py``). Rooms below
it, each importing only those below itself: scene, masks, attention,
control, vae, runner -> families -> model -> plan -> modes -> planner -> work -> stream.
"""

from __future__ import annotations

import numpy as np
import torch

from smd_daemon.engine.model import Model
from smd_daemon.engine.modes import available
from smd_daemon.engine.plan import Plan
from smd_daemon.engine.planner import check, make_plan, session_bytes
from smd_daemon.engine.scene import Cancelled, Scene
from smd_daemon.engine.stream import StepWork, StreamFrame, StreamSession
from smd_daemon.engine.work import GenerateWork

__all__ = ["Cancelled", "Engine", "StreamFrame", "StreamSession"]

# Samples per UNet forward pass. The largest single-window stream batch
# (4 steps x (16 regions + background)) fits in one; huge tiled canvases
# take several passes instead of one that exhausts GPU memory.
DEFAULT_MAX_BATCH = 72


class Engine:
    """Plans, streams and work on one model. Passes run on one thread;
    ``plan``, ``check`` and ``session_bytes`` may run on others meanwhile."""

    def __init__(
        self,
        components,
        max_batch: int | None = DEFAULT_MAX_BATCH,
        prompt_cache_size: int = 256,
        *,
        compile: bool = False,
        cuda_graphs: bool = False,
        overlap_decode: bool = False,
    ):
        self.model = Model(
            components,
            compile=compile,
            cuda_graphs=cuda_graphs,
            overlap_decode=overlap_decode,
            prompt_cache_size=prompt_cache_size,
        )
        self.max_batch = max_batch

    # ---- what this model can do ------------------------------------------
    @property
    def region_modes(self) -> tuple[str, ...]:
        return available(self.model)

    @property
    def max_steps(self) -> int:
        return self.model.max_steps

    @property
    def kind(self) -> str:
        return self.model.kind

    @property
    def control_kinds(self) -> tuple[str, ...]:
        """The control kinds this model has a T2I-Adapter or ControlNet for."""
        return self.model.control_kinds

    def check(self, scene: Scene) -> Scene:
        """Validate ``scene`` and refuse what this model cannot do, in one
        sentence, before any work (``SceneError``)."""
        return check(self.model, scene)

    def plan(self, scene: Scene, cancel=None) -> Plan:
        """Compile ``scene``; ``cancel()`` is asked between the expensive pieces
        (prompt encodes, image tiles, masks); when it says so, ``Cancelled``
        is raised."""
        return make_plan(self.model, scene, cancel)

    def session_bytes(self, scene: Scene) -> int:
        """An upper estimate, from shapes alone, of what a live session of
        ``scene`` keeps (see ``planner.session_bytes``)."""
        return session_bytes(self.model, scene, self.max_batch)

    # ---- work ----------------------------------------------------------------
    def begin_generate(self, scene: Scene, plan: Plan | None = None) -> GenerateWork:
        """One-shot generation as resumable work (see ``GenerateWork``)."""
        return GenerateWork(self.model, plan if plan is not None else self.plan(scene), self.max_batch)

    @torch.no_grad()
    def generate(self, scene: Scene, progress=None, cancel=None) -> np.ndarray:
        """One-shot multi-region generation: uint8 (H, W, 3). ``cancel`` is
        asked while planning and between passes; ``progress(step, total)``
        after each step."""
        work = self.begin_generate(scene, self.plan(scene, cancel))
        reported = 0
        while not work.done:
            if cancel is not None and cancel():
                raise Cancelled()
            work.run()
            step, total = work.progress
            if progress is not None and step != reported:
                reported = step
                progress(step, total)
        return work.image()

    def open_stream(self, scene: Scene, revision: int = 0, plan: Plan | None = None) -> StreamSession:
        return StreamSession(self.model, scene, revision, plan, self.max_batch)

    def begin_streams(self, streams: list[StreamSession]) -> StepWork:
        """Apply each stream's pending edit and build the samples of one frame
        of each (see ``StepWork``)."""
        return StepWork(self.model, streams, self.max_batch)

    @torch.no_grad()
    def step_streams(self, streams: list[StreamSession]) -> list[StreamFrame]:
        """Advance several sessions one frame each, sharing UNet calls where
        their samples fit one batch, so every client gets a frame per round
        and none waits behind another."""
        work = self.begin_streams(streams)
        while not work.done:
            work.run()
        return work.frames()

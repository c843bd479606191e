"""The engine of a cluster worker, timed: placement reads how busy each worker is."""

from __future__ import annotations

import time

from smd_daemon.server.ports import EnginePort, GenerateWork, StepWork, Work


class TimedEngine:
    """The engine (``ports.EnginePort``), adding up the seconds its passes
    take (placement reads them)."""

    def __init__(self, engine: EnginePort):
        self.engine = engine
        self.busy_s = 0.0

    @property
    def region_modes(self) -> tuple[str, ...]:
        return self.engine.region_modes

    @property
    def max_steps(self) -> int:
        return self.engine.max_steps

    @property
    def kind(self) -> str:
        return self.engine.kind

    @property
    def control_kinds(self) -> tuple[str, ...]:
        return tuple(self.engine.control_kinds)

    def check(self, scene):
        return self.engine.check(scene)

    def plan(self, scene, cancel=None):
        return self.engine.plan(scene, cancel=cancel)

    def session_bytes(self, scene) -> int:
        return self.engine.session_bytes(scene)

    def open_stream(self, scene, revision: int = 0, plan=None):
        return self.engine.open_stream(scene, revision, plan)

    def begin_streams(self, streams) -> _TimedStep:
        return _TimedStep(self, self.engine.begin_streams(streams))

    def begin_generate(self, scene, plan=None) -> _TimedGenerate:
        return _TimedGenerate(self, self.engine.begin_generate(scene, plan))


class _TimedWork:
    def __init__(self, owner: TimedEngine, work: Work):
        self._owner, self._work = owner, work

    @property
    def done(self) -> bool:
        return self._work.done

    @property
    def samples_total(self) -> int:
        return self._work.samples_total

    @property
    def samples_left(self) -> int:
        return self._work.samples_left

    def run(self, max_samples=None) -> int:
        t0 = time.perf_counter()
        try:
            return self._work.run(max_samples)
        finally:
            self._owner.busy_s += time.perf_counter() - t0  # only the engine thread adds


class _TimedStep(_TimedWork):
    _work: StepWork

    @property
    def share(self) -> list[float]:
        return self._work.share

    def ready(self) -> bool:
        return self._work.ready()

    def frames(self):
        return self._work.frames()


class _TimedGenerate(_TimedWork):
    _work: GenerateWork

    @property
    def progress(self) -> tuple[int, int]:
        return self._work.progress

    def image(self):
        return self._work.image()

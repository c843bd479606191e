"""What the server and a cluster expect of their neighbours, declared.

- ``Planner``: what scene workers and the handshake ask of an engine. A
  cluster's front end has only this (``FrontEngine``): its workers hold the model.
- ``EnginePort``: the engine an engine loop runs: ``engine.core.Engine``, a
  cluster worker's ``TimedEngine``, the stand-ins of tests and benchmarks.
- ``EngineLoopPort``: what sessions and the router hand commands to: the
  ``EngineLoop`` thread here, a cluster's ``Dispatcher``.
- ``FramePort``: what an engine loop asks of a session's live frames: its
  ``FrameFlow`` here, a cluster worker's ``RemoteFlow``.

Each is a ``typing.Protocol``: implementations do not inherit from them, and
pyright (or ``isinstance``, for the methods) checks that they fit.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol, runtime_checkable

import numpy as np


@runtime_checkable
class Planner(Protocol):
    @property
    def region_modes(self) -> tuple[str, ...]: ...

    @property
    def control_kinds(self) -> tuple[str, ...]:
        """The control layer kinds it has a model for (docs/models.md#control-layers)."""
        ...

    def check(self, scene, /) -> object:
        """The scene, or ``SceneError`` with a sentence for the artist."""
        ...

    def plan(self, scene, /, cancel=None) -> object:
        """What the engine needs to draw ``scene`` (handed back to it unread)."""
        ...

    def session_bytes(self, scene, /) -> int: ...


class Frame(Protocol):
    image: np.ndarray | None
    index: int
    revision: int
    settled: bool


class Stream(Protocol):
    @property
    def steps_in_flight(self) -> int: ...

    def update(self, scene, revision: int, /, plan=None) -> None: ...


class Work(Protocol):
    """Engine work in passes: each ``run`` is one bounded pass."""

    @property
    def done(self) -> bool: ...

    @property
    def samples_total(self) -> int: ...

    @property
    def samples_left(self) -> int: ...

    def run(self, max_samples: int | None = None) -> int:
        """One pass; the UNet samples it ran."""
        ...


class StepWork(Work, Protocol):
    @property
    def share(self) -> list[float]:
        """Each stream's part of the samples."""
        ...

    def ready(self) -> bool:
        """Done, and ``frames()`` would not wait (for a copy to the host)."""
        ...

    def frames(self) -> Sequence[Frame]: ...


class GenerateWork(Work, Protocol):
    @property
    def progress(self) -> tuple[int, int]: ...

    def image(self) -> np.ndarray: ...


@runtime_checkable
class EnginePort(Planner, Protocol):
    @property
    def max_steps(self) -> int: ...

    @property
    def kind(self) -> str: ...

    def open_stream(self, scene, /, revision: int = 0, plan=None) -> Stream: ...

    def begin_streams(self, streams: list, /) -> StepWork: ...

    def begin_generate(self, scene, /, plan=None) -> GenerateWork: ...


@runtime_checkable
class EngineLoopPort(Protocol):
    def send(self, command, /) -> None:
        """Hand a command (``messages.py``) over; any thread."""
        ...

    def wake(self) -> None: ...

    def start(self) -> None: ...

    def join(self, timeout: float | None = None) -> None: ...

    def is_alive(self) -> bool: ...


@runtime_checkable
class FramePort(Protocol):
    def can_make(self) -> bool:
        """Whether the session has room for another frame."""
        ...

    def start_making(self) -> None: ...

    def made(self, frame, /) -> None:
        """The frame (``messages.FrameReady``) is made, or None: it was given up."""
        ...

"""The messages the daemon's threads exchange: typed, one class per kind.

The I/O thread sends commands to the engine loop (``EngineLoop.send``); the
engine loop, the scene workers and the frame encoders send events back to
the I/O thread (``Server.post``). A message's contents (scenes, plans,
jobs, frames) are not changed by its sender once sent; only the engine
thread sets ``Job.cancelled``. Besides messages, the threads share objects
that lock for themselves: each session's ``FrameFlow`` (``frames.py``), the
memory budget (``memory.py``), the scene workers' queues (``scenes.py``),
and the engine, whose caches scene workers fill while they plan and the
engine thread runs passes.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:
    from smd_daemon.engine.scene import Scene
    from smd_daemon.server.ports import FramePort


# --- I/O thread -> engine loop ------------------------------------------


@dataclass
class Job:
    """One generate request, resolved against the scene it was asked for."""

    id: int
    scene: object  # engine Scene with the request's steps/seed
    plan: object  # the engine's plan of ``scene`` (made by a scene worker)
    revision: int
    encoding: str
    quality: int
    re: int | None = None
    cancelled: bool = False  # set by the engine thread only


@dataclass
class OpenSession:
    session: str
    flow: FramePort | None  # None only on the cluster channel: the worker gives the session its own


@dataclass
class CloseSession:
    session: str


@dataclass
class SetScene:
    """A scene accepted by the scene worker: applied between two passes."""

    session: str
    scene: object
    revision: int
    plan: object


@dataclass
class SetLive:
    session: str
    live: bool
    min_interval: float = 0.0  # seconds between two frames (1 / max_fps)
    encoding: str = "raw"  # the client's frame encoding (a cluster worker encodes before sending)
    quality: int = 80


@dataclass
class QueueJob:
    session: str
    job: Job


@dataclass
class CancelJobs:
    session: str
    jobs: tuple | None  # job ids, or None for all
    re: int | None = None


# --- engine loop, scene workers, encoders -> I/O thread ------------------


@dataclass
class FrameReady:
    """A live frame, handed to the session's FrameFlow by the engine thread."""

    session: str
    image: np.ndarray  # uint8 (H, W, 3), or an images.EncodedImage a cluster worker compressed
    index: int
    revision: int
    settled: bool
    steps_in_flight: int
    engine_ms: float  # engine time of the passes that made it
    batch: int  # sessions that shared those passes
    worker: str = ""  # the cluster worker that made it ("" in a single-process daemon)


@dataclass
class FrameMade:
    """The engine made a frame for this session: time to send it."""

    session: str


@dataclass
class JobProgress:
    session: str
    job: int
    step: int
    total: int


@dataclass
class JobResult:
    session: str
    job: Job
    image: np.ndarray  # or an images.EncodedImage
    engine_ms: float
    worker: str = ""


@dataclass
class JobCancelled:
    session: str
    job: int
    re: int | None = None


@dataclass
class SessionError:
    """An error for one client, not in reply to any request it is waiting on."""

    session: str
    code: str
    message: str
    fields: dict = field(default_factory=dict)  # e.g. revision or job
    live_stopped: bool = False  # the engine failed: live mode is off now


@dataclass
class UpdateDone:
    """A scene worker's answer to one ``update`` (``error`` set when refused)."""

    session: str
    re: int | None
    revision: int
    scene: Scene | None = None
    plan: object = None
    layers: list = field(default_factory=list)  # grammar.ParsedLayer.to_dict() per layer
    error: tuple | None = None  # (code, message)


@dataclass
class PlanReady:
    """An accepted scene planned late (the update after it was refused): for the engine, no reply."""

    session: str
    scene: object
    revision: int
    plan: object


@dataclass
class JobReady:
    """A scene worker resolved a ``generate`` against the current scene (or refused it)."""

    session: str
    re: int | None
    job: Job | None
    error: tuple | None = None  # (code, message, job id)


@dataclass
class Encoded:
    """A frame or result compressed by an encoder thread, ready to send."""

    session: str
    type: str  # "frame" or "result"
    data: bytes | None  # None when encoding failed
    encode_ms: float
    fields: dict
    error: str = ""

"""The channel between a cluster's front end and its engine workers.

Over it travel the same typed messages the single-process daemon's threads
exchange (``server/messages.py``: commands to the engine loop, frames and
events back), plus the few below that only a cluster needs. Each message is
pickled, its numpy arrays sent beside it as zero-copy ZeroMQ frames.

Pickle is read only from this run's workers. Across machines the front
end's ROUTER is a CURVE server that admits the one worker key made for the
run (the keys reach the workers through Ray, as actor arguments, never over
this channel); with a private Ray instance the workers are on this machine
and connect to a socket file in a folder only the daemon's user can enter.
"""

from __future__ import annotations

import pickle
from dataclasses import dataclass, field

import zmq

HEARTBEAT_S = 0.5  # how often a worker reports (its stats double as heartbeats)


class PlanOnWorker:
    """Stands for a plan in commands from the front end: the worker that draws
    the scene plans it (plans hold tensors on that worker's device)."""

    def __repr__(self) -> str:
        return "PlanOnWorker"


PLAN_ON_WORKER = PlanOnWorker()


# --- worker -> front end -------------------------------------------------------


@dataclass
class Hello:
    """A worker process announces itself: when it starts, when its model is
    loaded (or failed to load), and after a ``Reset``."""

    worker: str  # stable id ("w0", "w1", ...), the same after Ray restarts it
    incarnation: str  # this process; a restarted worker has a new one
    state: str  # "loading", "ready" or "failed"
    node: str = ""  # the node's address
    device: str = ""  # e.g. "cuda:0 (NVIDIA H200)" or "cpu"
    pid: int = 0
    model: dict = field(default_factory=dict)  # Components.describe()
    error: str = ""  # why the model did not load
    can: dict = field(default_factory=dict)  # what the model can do: region_modes, max_steps, kind
    started: float = 0.0  # time.time() when this process started: the newest process of a worker wins


@dataclass
class Stats:
    """Sent every ``HEARTBEAT_S``: totals since the worker started."""

    worker: str
    incarnation: str
    sessions: int
    frames: int  # live frames made
    engine_s: float  # seconds of engine passes


# --- front end -> worker -------------------------------------------------------


@dataclass
class Credit:
    """How many live frames in all this session may have made on this worker:
    the frames the front end received, plus the room in its ``FrameFlow``."""

    session: str
    allowed: int


@dataclass
class Reset:
    """The front end no longer counts on this worker's sessions (it thought the
    worker lost): drop them all and say hello again."""

    reason: str


# --- encoding --------------------------------------------------------------------


def dumps(obj) -> list:
    """``obj`` as ZeroMQ frames: the pickle, then each array's buffer."""
    buffers: list = []
    head = pickle.dumps(obj, protocol=5, buffer_callback=buffers.append)
    return [head, *(b.raw() for b in buffers)]


def loads(frames: list, writable: bool = False):
    """The object ``dumps`` sent (frames from ``recv_multipart(copy=False)``).
    Its arrays are read-only views of the received frames, or, with
    ``writable``, copies (torch takes only writable arrays quietly)."""
    views = [f.buffer if isinstance(f, zmq.Frame) else f for f in frames]
    return pickle.loads(views[0], buffers=[bytearray(v) for v in views[1:]] if writable else views[1:])


@dataclass(frozen=True)
class Keys:
    """CURVE keys of one run: the front end's pair and the one all its workers share."""

    server_public: bytes
    server_secret: bytes
    worker_public: bytes
    worker_secret: bytes

    @classmethod
    def generate(cls) -> Keys:
        sp, ss = zmq.curve_keypair()
        wp, ws = zmq.curve_keypair()
        return cls(sp, ss, wp, ws)

    def for_worker(self) -> Keys:
        """What a worker needs: no front-end secret."""
        return Keys(self.server_public, b"", self.worker_public, self.worker_secret)

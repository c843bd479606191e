"""The channel between a cluster's front end and its engine workers.

Over it travel the same typed messages the single-process daemon's threads
exchange (``server/messages.py``: commands to the engine loop, frames and
events back), plus the few below that only a cluster needs. ``CODEC`` names
every type that may cross; each message is JSON with its numpy arrays and
bytes beside it as zero-copy ZeroMQ frames (``codec``): reading a message
never runs code, whoever sent it.

On every transport (TCP across machines, a socket file with a private Ray
instance) the front end's ROUTER is a CURVE server that admits the one
worker key made for the run, and each worker checks the front end's key:
the keys reach the workers through Ray, as actor arguments, never over this
channel. A peer without them is refused by ZeroMQ before any message.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import zmq

from smd_daemon.cluster.codec import Codec
from smd_daemon.engine.scene import MAX_SIDE, Background, Control, Region, Scene
from smd_daemon.server import messages as m
from smd_daemon.server.images import EncodedImage

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
    can: dict = field(default_factory=dict)  # what the model can do: region_modes, max_steps, kind, control_kinds
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

# The largest array that crosses: a float32 mask, or a raw frame, at the largest canvas.
MAX_ARRAY_BYTES = MAX_SIDE * MAX_SIDE * 4
MAX_FRAME_BYTES = MAX_ARRAY_BYTES  # zmq.MAXMSGSIZE of both ends: any one frame of a message

CODEC = Codec(
    [
        Hello,
        Stats,
        Credit,
        Reset,
        m.OpenSession,
        m.CloseSession,
        m.SetScene,
        m.SetLive,
        m.QueueJob,
        m.Job,
        m.CancelJobs,
        m.FrameReady,
        m.JobProgress,
        m.JobResult,
        m.JobCancelled,
        m.SessionError,
        Scene,
        Region,
        Background,
        Control,
        EncodedImage,
    ],
    {"PlanOnWorker": PLAN_ON_WORKER},
    MAX_ARRAY_BYTES,
)
dumps = CODEC.dumps
loads = CODEC.loads


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


# --- refusals --------------------------------------------------------------------

HANDSHAKE_FAILURES: dict[int, str] = {  # keyed by the monitor event's value, a plain int
    zmq.EVENT_HANDSHAKE_FAILED_NO_DETAIL: "the handshake failed",
    zmq.EVENT_HANDSHAKE_FAILED_PROTOCOL: "the peer does not speak CURVE with this run's keys",
    zmq.EVENT_HANDSHAKE_FAILED_AUTH: "the peer's key was refused",
}


def watch_handshakes(sock):
    """A socket on which ``sock``'s failed handshakes are reported (``handshake_failures``)."""
    return sock.get_monitor_socket(sum(HANDSHAKE_FAILURES))


def handshake_failures(monitor) -> list[int]:
    """The failed handshakes (``HANDSHAKE_FAILURES``' events) since the last call."""
    from zmq.utils.monitor import recv_monitor_message

    out = []
    while True:
        try:
            out.append(recv_monitor_message(monitor, zmq.NOBLOCK)["event"])
        except zmq.Again:
            return out


def configure(sock) -> None:
    """What both ends set on the channel's sockets."""
    sock.setsockopt(zmq.LINGER, 0)
    sock.setsockopt(zmq.SNDHWM, 10000)
    sock.setsockopt(zmq.RCVHWM, 10000)
    sock.setsockopt(zmq.MAXMSGSIZE, MAX_FRAME_BYTES)

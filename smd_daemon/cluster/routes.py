"""What the cluster's front end keeps about its workers and the sessions placed on them."""

from __future__ import annotations

from dataclasses import dataclass, field

from smd_daemon.cluster import wire
from smd_daemon.protocol import REGION_MODES
from smd_daemon.server import messages as m
from smd_daemon.server.frames import FrameFlow

EWMA = 0.3  # weight of the newest stats in a worker's frame rate and load


class FrontEngine:
    """What the front end's scene workers ask of an engine. Plans are made by the
    worker that draws the scene, and the engine's bytes are counted there, in the
    worker's own memory budget; here only the planes and frames are kept. What
    the model can do (region modes, steps) is what the workers reported."""

    def __init__(self):
        self.region_modes, self.max_steps, self.kind = REGION_MODES[:1], None, ""
        self.control_kinds: tuple[str, ...] = ()

    def learn(self, can: dict) -> None:
        if can:
            self.region_modes = tuple(can.get("region_modes") or REGION_MODES[:1])
            self.max_steps, self.kind = can.get("max_steps"), can.get("kind", "")
            self.control_kinds = tuple(can.get("control_kinds") or ())

    def check(self, scene):
        """The engine's own check, on the reported capabilities (the same sentences)."""
        if self.max_steps is None:
            return scene.validate()
        return scene.check_model(self.region_modes, self.max_steps, self.kind, self.control_kinds)

    def plan(self, scene, cancel=None):
        return wire.PLAN_ON_WORKER

    def session_bytes(self, scene) -> int:
        return 0


@dataclass(eq=False)
class Worker:
    id: str
    state: str = "starting"  # starting, loading, ready, failed, lost
    identity: bytes | None = None  # ZeroMQ identity of its current process
    node: str = ""
    device: str = ""
    pid: int = 0
    model: dict = field(default_factory=dict)
    error: str = ""
    starts: int = 0  # processes that said hello (Ray restarts a dead one)
    started: float = 0.0  # when its current process started (time.time() there)
    sessions: set = field(default_factory=set)
    last_seen: float = 0.0
    frames: int = 0
    engine_s: float = 0.0
    stats_at: float = 0.0
    fps: float = 0.0
    load: float = 0.0  # engine seconds per second, recently
    placed: int = 0  # sessions placed since its last stats (their load is not measured yet)

    def describe(self) -> dict:
        out = {
            "id": self.id,
            "state": self.state,
            "node": self.node,
            "device": self.device,
            "sessions": len(self.sessions),
            "fps": round(self.fps, 2),
            "load": round(self.load, 3),
        }
        if self.error:
            out["error"] = self.error
        return out

    def adopt(self, identity: bytes, h: wire.Hello, now: float) -> None:
        """Its process (maybe a new one) said hello: what it is now; its rates start again."""
        self.identity, self.last_seen, self.started = identity, now, h.started
        self.node, self.device, self.pid, self.error = h.node, h.device or self.device, h.pid, h.error
        self.model = h.model or self.model
        self.stats_at, self.placed, self.fps, self.load = 0.0, 0, 0.0, 0.0
        self.state = h.state

    def note_stats(self, s: wire.Stats, now: float) -> None:
        if self.stats_at:
            dt = max(1e-3, now - self.stats_at)
            self.fps = (1 - EWMA) * self.fps + EWMA * max(0, s.frames - self.frames) / dt
            self.load = (1 - EWMA) * self.load + EWMA * max(0.0, s.engine_s - self.engine_s) / dt
        self.frames, self.engine_s, self.stats_at, self.placed = s.frames, s.engine_s, now, 0


@dataclass(eq=False)
class Route:
    """One session as the dispatcher keeps it: where it runs and what replays it."""

    session: str
    flow: FrameFlow
    worker: Worker | None = None
    scene: m.SetScene | None = None
    live: m.SetLive | None = None
    jobs: dict = field(default_factory=dict)  # job id -> QueueJob not finished yet
    cancelling: dict = field(default_factory=dict)  # job id -> cancel request id, not confirmed yet
    received: int = 0  # frames received from its worker since it was placed there
    allowed: int = 0  # the credit last granted to that worker
    told_no_worker: bool = False

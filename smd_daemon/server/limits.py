"""What one daemon allows, defined once: sent to every client in the
handshake (``welcome.limits``) and enforced by the server."""

from __future__ import annotations

import dataclasses
import os
from dataclasses import dataclass

from smd_daemon.engine import scene as engine_scene

MIB = 2**20
GIB = 2**30


def machine_memory() -> int:
    """Physical memory of this machine in bytes (0 when the system does not say)."""
    try:
        return os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (ValueError, OSError, AttributeError):
        return 0


def default_max_memory() -> int:
    """Half the machine's memory for sessions: the model, Python and the
    system keep the rest. 4 GiB where the machine's size is unknown."""
    total = machine_memory()
    return max(GIB, total // 2) if total else 4 * GIB


@dataclass
class Limits:
    max_sessions: int = 8
    # Of those, what one origin (client key, local user, host: admission.py) may hold at once;
    # 0: half of max_sessions (a cluster sets max_sessions once it knows its workers).
    max_sessions_per_origin: int = 0
    max_clients: int = 128  # handshaken connections, with or without a session
    max_clients_per_origin: int = 16
    max_pending_clients: int = 256  # connections that have not said hello yet, tracked at once
    max_layers: int = 64  # layers per scene, regions or not
    max_regions: int = engine_scene.MAX_REGIONS
    min_side: int = engine_scene.MIN_SIDE
    max_side: int = engine_scene.MAX_SIDE  # output width/height in pixels
    max_steps: int = engine_scene.MAX_STEPS
    max_prompt_chars: int = engine_scene.MAX_PROMPT_CHARS
    max_message_bytes: int = 64 * MIB  # largest single message part (ZeroMQ MAXMSGSIZE)
    # Every byte the server and engine keep for one session (planes, plan,
    # masks, latents, frames), however many updates built it.
    max_session_bytes: int = 2 * GIB
    max_memory_bytes: int = dataclasses.field(default_factory=default_max_memory)  # all sessions together
    max_fps: float = 30.0  # live frames per second per session
    max_jobs: int = 4  # generate jobs per session, queued or running
    max_updates_queued: int = 8  # updates and jobs of one session waiting to be decoded and planned
    max_requests_per_s: float = 300.0  # per client after hello; bursts of twice that
    max_hellos_per_s: float = 10.0  # per connection before hello; bursts of twice that
    frame_window: int = 2  # live frames sent but not yet acknowledged
    heartbeat_interval: float = 1.0
    heartbeat_timeout: float = 10.0

    @property
    def sessions_per_origin(self) -> int:
        return self.max_sessions_per_origin or max(1, self.max_sessions // 2)

    def to_dict(self) -> dict:
        return {**dataclasses.asdict(self), "max_sessions_per_origin": self.sessions_per_origin}


# Wire settings that go to the engine's Scene as they are.
SCENE_SETTINGS = ("guidance_scale", "mask_mode", "region_mode")


def scene_defaults() -> dict:
    """What a scene setting is when a client leaves it out (``welcome.defaults``),
    read from the engine's own dataclasses so it is written once."""
    scene = {
        f.name: f.default
        for f in dataclasses.fields(engine_scene.Scene)
        if f.name in SCENE_SETTINGS + ("seed", "steps")
    }
    background = {f.name: f.default for f in dataclasses.fields(engine_scene.Background)}
    return {**scene, "background_strength": background["strength"]}

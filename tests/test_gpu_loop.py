"""Engine failures stay inside their session: the daemon's loop with a fake
engine (a real one cannot be made to run out of GPU memory on demand)."""

from __future__ import annotations

import threading
import time

import numpy as np
import pytest

from daemon_util import S, connect, free_port, half_mask
from smd_daemon.client import ErrorEvent, FrameEvent, Layer, LiveEvent
from smd_daemon.engine.core import StreamFrame
from smd_daemon.server import Limits, Server


class FakeStream:
    steps_in_flight = 2

    def __init__(self, scene, revision):
        self.scene, self.revision, self.index = scene, revision, 0

    def update(self, scene, revision):
        self.scene, self.revision = scene, revision

    def frame(self):
        self.index += 1
        return StreamFrame(np.zeros((self.scene.height, self.scene.width, 3), np.uint8), self.index,
                           self.revision, True)


def _explodes(scene) -> bool:
    return any(r.prompt == "explode" for r in scene.regions)


class FakeEngine:
    """Fails like CUDA does when a scene asks for too much."""

    def open_stream(self, scene, revision=0):
        return FakeStream(scene, revision)

    def step_streams(self, streams):
        time.sleep(0.005)
        if any(_explodes(s.scene) for s in streams):
            raise RuntimeError("CUDA out of memory. Tried to allocate 20.00 GiB")
        return [s.frame() for s in streams]

    def generate(self, scene, progress=None, cancel=None):
        if _explodes(scene):
            raise FloatingPointError("NaN in latents")
        return np.zeros((scene.height, scene.width, 3), np.uint8)


@pytest.fixture
def server():
    srv = Server(FakeEngine(), {"name": "fake"}, f"tcp://127.0.0.1:{free_port()}", Limits(max_fps=200))
    ready = threading.Event()

    def serve():
        srv.start()
        ready.set()
        srv.serve_forever()

    t = threading.Thread(target=serve, daemon=True)
    t.start()
    assert ready.wait(10)
    yield srv
    srv.stopping.set()
    t.join(10)
    srv.shutdown()


def test_engine_failure_is_an_error_to_that_client_only(server):
    bad, good = connect(server.bind, name="bad"), connect(server.bind, name="good")
    try:
        good.set_scene(S, S, [Layer("1", "a fox", half_mask())])
        good.start_live("raw")
        bad.set_scene(S, S, [Layer("1", "explode", half_mask())])
        bad.start_live("raw")
        err = bad.wait_for(lambda e: isinstance(e, ErrorEvent), 10)
        assert err.code == "engine_error" and "out of memory" in err.message
        assert bad.wait_for(lambda e: isinstance(e, LiveEvent), 10).active is False
        # The other client never stopped.
        n = 0
        while n < 20:
            ev = good.wait_for(lambda e: isinstance(e, FrameEvent), 10)
            assert ev is not None
            n += 1
        # A failing generate is reported too, and the session recovers with a good scene.
        job = bad.generate("png")
        err = bad.wait_for(lambda e: isinstance(e, ErrorEvent), 10)
        assert err.code == "engine_error" and err.header.get("job") == job and "NaN" in err.message
        bad.update_scene([Layer("1", "a calm lake", half_mask())])
        bad.start_live("raw")
        assert bad.wait_for(lambda e: isinstance(e, FrameEvent), 10) is not None
    finally:
        bad.close()
        good.close()

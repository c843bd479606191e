"""The daemon with a fake engine, for what a real one cannot do on demand:
run out of GPU memory, produce NaN, or serve with a tiny scene budget."""

from __future__ import annotations

import time

import numpy as np
import pytest
from daemon_util import S, connect, free_port, half_mask, serving

from smd_daemon.client import ErrorEvent, FrameEvent, Layer, LiveEvent, SceneEvent
from smd_daemon.engine.core import StreamFrame
from smd_daemon.server import Limits, Server
from smd_daemon.server.memory import frame_bytes


class FakeStream:
    steps_in_flight = 2

    def __init__(self, scene, revision):
        self.scene, self.revision, self.index = scene, revision, 0

    def update(self, scene, revision, plan=None):
        self.scene, self.revision = scene, revision

    def frame(self):
        self.index += 1
        return StreamFrame(
            np.zeros((self.scene.height, self.scene.width, 3), np.uint8), self.index, self.revision, True
        )


def _explodes(scene) -> bool:
    return any(r.prompt == "explode" for r in scene.regions)


class FakeWork:
    """Engine work done in one pass."""

    share = [1.0]

    def __init__(self, run):
        self._run, self.done, self.samples_total, self.samples_left = run, False, 1, 1
        self.progress = (0, 1)

    def ready(self):
        return self.done

    def run(self, max_samples=None):
        self.result = self._run()
        self.done, self.samples_left, self.progress = True, 0, (1, 1)
        return 1

    def frames(self):
        return self.result

    def image(self):
        return self.result


class FakeEngine:
    """Fails like CUDA does when a scene asks for too much."""

    region_modes, max_steps, kind, control_kinds = ("latent",), 50, "lcm", ()

    def plan(self, scene, cancel=None):
        return ("plan", scene)

    def session_bytes(self, scene):
        return 0

    def check(self, scene):
        return scene.validate()

    def open_stream(self, scene, revision=0, plan=None):
        return FakeStream(scene, revision)

    def begin_streams(self, streams):
        def run():
            time.sleep(0.005)
            if any(_explodes(s.scene) for s in streams):
                raise RuntimeError("CUDA out of memory. Tried to allocate 20.00 GiB")
            return [s.frame() for s in streams]

        return FakeWork(run)

    def begin_generate(self, scene, plan=None):
        def run():
            if _explodes(scene):
                raise FloatingPointError("NaN in latents")
            return np.zeros((scene.height, scene.width, 3), np.uint8)

        return FakeWork(run)


@pytest.fixture
def server():
    # A small scene budget: its frames and 3 planes of 64x64 fit, a 4th plane does not.
    limits = Limits(max_fps=200, max_session_bytes=frame_bytes(Limits.frame_window, S, S) + 3 * S * S + 100)
    with serving(Server(FakeEngine(), {"name": "fake"}, f"tcp://127.0.0.1:{free_port()}", limits)) as srv:
        yield srv


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
        # Live again with the same scene: tried afresh (and told again), never silently stuck.
        bad.start_live("raw")
        err = bad.wait_for(lambda e: isinstance(e, ErrorEvent), 10)
        assert err is not None and err.code == "engine_error"
        assert bad.wait_for(lambda e: isinstance(e, LiveEvent) and not e.active, 10) is not None
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


def test_partial_updates_cannot_grow_a_scene_past_its_budget(server):
    c = connect(server.bind, name="hoarder")
    try:
        c.set_scene(S, S, [Layer("1", "a fox", half_mask())])
        for key in ("2", "3"):
            c.update_scene([Layer(key, f"fox {key}", half_mask(left=key == "2"))])
        revs = [e.revision for e in iter(lambda: c.wait_for(lambda e: isinstance(e, SceneEvent), 2), None)]
        assert revs == [1, 2, 3]
        c.update_scene([Layer("4", "one fox too many", half_mask())])
        err = c.wait_for(lambda e: isinstance(e, ErrorEvent), 10)
        assert err.code == "too_large" and "MiB" in err.message and err.header["revision"] == 4
    finally:
        c.close()


class OverlapEngine(FakeEngine):
    """Steps whose frames reach the host only once the next step has begun, as
    decoding on a side stream does (``--overlap-decode``); logs the order."""

    def __init__(self):
        self.log = []

    def begin_streams(self, streams):
        self.log.append("begin")
        engine, begun = self, self.log.count("begin")

        class Step(FakeWork):
            def ready(self):
                return self.done and engine.log.count("begin") > begun

            def frames(self):
                engine.log.append("frames")
                return self.result

        def run():
            time.sleep(0.005)  # longer than a frame interval at max_fps 1000: the next step is due at once
            return [s.frame() for s in streams]

        return Step(run)


def test_the_engine_loop_begins_the_next_step_before_it_collects_the_frames():
    engine = OverlapEngine()
    with serving(Server(engine, {"name": "fake"}, f"tcp://127.0.0.1:{free_port()}", Limits(max_fps=1000))) as srv:
        c = connect(srv.bind, name="artist")
        try:
            c.set_scene(S, S, [Layer("1", "a fox", half_mask())])
            c.start_live("raw")
            indices = []
            while len(indices) < 6:
                ev = c.wait_for(lambda e: isinstance(e, FrameEvent), 10)
                assert ev is not None
                indices.append(ev.header["index"])
        finally:
            c.close()
    assert indices == sorted(indices)
    first = engine.log.index("frames")
    assert engine.log[:first] == ["begin", "begin"]  # the second step began before the first's frames


def test_engines_loops_and_frame_flows_fit_the_ports_the_server_declares(engine):
    import threading

    from smd_daemon.cluster.frontend import FrontEngine
    from smd_daemon.cluster.timing import TimedEngine
    from smd_daemon.cluster.worker import RemoteFlow
    from smd_daemon.server.engine_loop import EngineLoop
    from smd_daemon.server.frames import FrameFlow
    from smd_daemon.server.ports import EngineLoopPort, EnginePort, FramePort, Planner

    for e in (engine, TimedEngine(engine), FakeEngine(), OverlapEngine()):
        assert isinstance(e, EnginePort), type(e).__name__
    assert isinstance(FrontEngine(), Planner) and not isinstance(FrontEngine(), EnginePort)
    assert isinstance(EngineLoop(engine, print, threading.Event()), EngineLoopPort)
    assert isinstance(FrameFlow(2), FramePort) and isinstance(RemoteFlow("s", print), FramePort)
    with pytest.raises(TypeError, match="cannot run an engine loop"):
        Server(FrontEngine(), {}, "tcp://127.0.0.1:1").make_engine_loop()

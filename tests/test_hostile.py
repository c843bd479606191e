"""A real daemon under hostile and uneven load: floods, bombs, clients that
misbehave, big canvases next to small ones. Behaviour is checked by counting
or with generous bounds; the figures are measured in benchmarks/bench_hostile.py."""

from __future__ import annotations

import signal
import threading
import time
import zlib

import pytest
import zmq
import zmq.auth
from daemon_util import Daemon, Raw, S, connect, half_mask, keys_and_stranger, run_cli

from smd_daemon import protocol
from smd_daemon.client import Client, ErrorEvent, FrameEvent, Layer, StateCode, StateEvent
from smd_daemon.keys import fingerprint

E = protocol.ErrorCode
V = protocol.PROTOCOL_VERSION


@pytest.fixture(scope="module")
def daemon():
    d = Daemon("--max-fps", "60")
    try:
        d.wait_serving()
        yield d
        assert d.stop() == 0, d.text()
    finally:
        d.close()


def live_client(address, name, side=S, prompt="a red fox"):
    c = connect(address, name=name)
    c.set_scene(side, side, [Layer("1", prompt, half_mask(side))])
    c.start_live("raw")
    return c


def frames(c, n, timeout=60.0):
    got = []
    deadline = time.monotonic() + timeout
    while len(got) < n and time.monotonic() < deadline:
        got += [e for e in c.poll(timeout_ms=20) if isinstance(e, FrameEvent)]
    assert len(got) >= n, f"{len(got)} frames of {n} ({c.state}: {c.state_reason})"
    return got


class Flood(threading.Thread):
    """One connection sending 1-byte garbage as fast as ZeroMQ takes it, never saying hello."""

    def __init__(self, address):
        super().__init__(daemon=True)
        self.address, self.stop, self.sent = address, threading.Event(), 0

    def run(self):
        ctx = zmq.Context()
        sock = ctx.socket(zmq.DEALER)
        sock.setsockopt(zmq.SNDHWM, 100000)
        sock.setsockopt(zmq.LINGER, 0)
        sock.connect(self.address)
        while not self.stop.is_set():
            try:
                sock.send(b"x", zmq.NOBLOCK)
                self.sent += 1
            except zmq.Again:
                time.sleep(0.001)
        sock.close()
        ctx.term()


def test_a_flood_before_hello_does_not_lock_anyone_out(daemon):
    lines_before = len(daemon.text().splitlines())
    flood = Flood(daemon.address)
    flood.start()
    try:
        time.sleep(1.0)
        answered = 0
        for _ in range(20):
            raw = Raw(daemon.address)
            try:
                raw.send("hello", protocol=V, client="probe")
                m = raw.recv(5.0)  # generous: answered in milliseconds (benchmarks/bench_hostile.py)
                answered += m is not None and m.type == "welcome"
            finally:
                raw.close()
        c = connect(daemon.address, name="artist", timeout=20)
        c.close()
    finally:
        flood.stop.set()
        flood.join()
    assert flood.sent > 20000, flood.sent
    assert answered == 20
    # One line per interval for the flooding connection, not one per message.
    flood_lines = [
        line
        for line in daemon.text().splitlines()[lines_before:]
        if "probe" not in line and "artist" not in line and "session" not in line
    ]
    assert len(flood_lines) <= 5, flood_lines


def test_lone_surrogates_and_loose_versions_are_refused_without_stopping_the_stream(daemon):
    c = live_client(daemon.address, "surrogate")
    raw = Raw(daemon.address)
    try:
        frames(c, 2)
        # The client library cannot even send one (it is not text); a raw peer can.
        raw.handshake()
        head = (
            '{"v": %d, "type": "update", "id": 3, "revision": 1, "full": true, "width": %d, "height": %d, '
            '"layers": [{"key": "1", "name": "a fox \\ud800", "alpha": {"part": 0}}]}' % (V, S, S)
        )
        raw.send_frames([head.encode(), half_mask()])
        err = raw.expect("error")
        assert err.header["code"] == E.BAD_MESSAGE and "surrogate" in err.header["message"]
        assert err.header["re"] == 3
        for v in ("true", "2.0", '"2"'):
            raw.send_frames([b'{"v": %s, "type": "ping"}' % v.encode()])
            assert raw.expect("error").header["code"] == E.BAD_VERSION
        raw.send(
            "update",
            [half_mask()],
            revision=1,
            full=True,
            width=S,
            height=S,
            mask_mode="blurry",
            layers=[{"key": "1", "name": "a fox", "alpha": {"part": 0}}],
        )
        assert raw.expect("error").header["code"] == E.BAD_FIELD
        # A client whose layer name holds a lone surrogate gets the same, and its stream goes on.
        c.update_scene([Layer("1", "a fox \ud800", half_mask())])
        err = c.wait_for(lambda e: isinstance(e, ErrorEvent), 10)
        assert err.code == E.BAD_MESSAGE
        before = frames(c, 1)[-1].seq
        assert frames(c, 3)[-1].seq > before
    finally:
        raw.close()
        c.close()


def test_a_client_that_acks_without_reading_holds_at_most_the_window(daemon):
    raw = Raw(daemon.address)
    try:
        window = raw.handshake().header["limits"]["frame_window"]
        raw.live()
        # Acknowledge frames blindly, as if they had been read, without reading any.
        for seq in range(1, 200):
            raw.send("ack", seq=seq, token=seq)
            time.sleep(0.01)
        got = []
        while (m := raw.recv(0.5)) is not None:
            if m.type == "frame":
                got.append(m)
        assert [m.header["seq"] for m in got] == list(range(1, window + 1))
        # An honest ack lets the newest waiting frame through.
        raw.send("ack", seq=got[-1].header["seq"], token=got[-1].header["token"])
        assert raw.expect("frame").header["seq"] == window + 1
    finally:
        raw.close()


def test_live_sessions_that_can_share_a_unet_call_are_stepped_in_one(daemon):
    clients = [live_client(daemon.address, f"batch{i}", prompt=f"a fox number {i}") for i in range(4)]
    try:
        for c in clients:
            frames(c, 2)
        batches = []
        deadline = time.monotonic() + 60
        while len(batches) < 40 and time.monotonic() < deadline:
            for c in clients:
                batches += [e.header["batch"] for e in c.poll(timeout_ms=5) if isinstance(e, FrameEvent)]
        assert len(batches) >= 40
        # Most rounds step all four together (a client slow to acknowledge sits one out).
        assert sum(b == 4 for b in batches) >= len(batches) // 2, batches
    finally:
        for c in clients:
            c.close()


def test_a_small_canvas_keeps_stepping_next_to_a_big_one(daemon):
    small = live_client(daemon.address, "small")
    big = live_client(daemon.address, "big", side=512)
    try:
        frames(small, 2)
        big_frames = 0
        small_between = []
        deadline = time.monotonic() + 180
        while big_frames < 3 and time.monotonic() < deadline:
            n = sum(isinstance(e, FrameEvent) for e in small.poll(timeout_ms=5))
            if big_frames:
                small_between[-1] += n
            for e in big.poll(timeout_ms=0):
                if isinstance(e, FrameEvent):
                    big_frames += 1
                    small_between.append(0)
        assert big_frames == 3, big_frames
        # The big canvas's step (dozens of samples, a multi-tile decode) runs in
        # passes: the small canvas keeps getting frames while it runs.
        assert min(small_between[:2]) >= 4, small_between
    finally:
        small.close()
        big.close()


def test_updates_are_decoded_and_planned_without_stopping_anyone(tmp_path):
    # A budget of 512 MiB: one 2048x2048 scene with 16 layers fits, two do not.
    d = Daemon("--max-memory", "0.5")
    try:
        d.wait_serving()
        watcher = Raw(d.address)
        watcher.handshake(open_session=False)
        side = 2048  # big enough that decoding and planning take many pings' time on any CPU
        plane = zlib.compress(b"\xff" * (side * side // 2) + bytes(side * side // 2))
        layers = [{"key": str(i), "name": f"a fox {i}", "alpha": {"part": 0, "encoding": "zlib"}} for i in range(16)]
        first = Raw(d.address)
        first.handshake()
        first.send("update", [plane], revision=1, full=True, width=side, height=side, layers=layers)
        # While that update is decoded and planned (seconds on a CPU), pings are answered at once.
        rtts = []
        while (m := first.recv(0.0)) is None and len(rtts) < 400:
            t = time.monotonic()
            watcher.send("ping")
            watcher.expect("pong", 10)
            rtts.append(time.monotonic() - t)
            time.sleep(0.02)
        assert len(rtts) > 5 and max(rtts) < 1.0, (len(rtts), max(rtts))
        m = m or first.expect("scene", 120)
        assert m.type == "scene", m.header
        # A second such scene would pass the budget: refused, before any decoding.
        second = Raw(d.address)
        second.handshake()
        second.send("update", [plane], revision=1, full=True, width=side, height=side, layers=layers)
        err = second.expect("error", 10)
        assert err.header["code"] == E.NO_MEMORY and "MiB" in err.header["message"]
        # One 4096x4096 scene of 16 layers from 28 KiB: more than one session may keep.
        bomb = zlib.compress(bytes(4096 * 4096), 9)
        assert len(bomb) < 30000
        second.send(
            "update",
            [bomb],
            revision=2,
            full=True,
            width=4096,
            height=4096,
            layers=[dict(e, alpha={"part": 0, "encoding": "zlib"}) for e in layers],
        )
        assert second.expect("error", 10).header["code"] == E.TOO_LARGE
        # Memory comes back when a session ends.
        first.close()
        time.sleep(1.0)
        second.send("update", [plane], revision=3, full=True, width=side, height=side, layers=layers)
        assert second.expect("scene", 120).header["revision"] == 3
        second.close()
        watcher.close()
    finally:
        d.stop()
        d.close()


def _stop_time(d: Daemon, sig=signal.SIGTERM) -> tuple[int, float]:
    t = time.monotonic()
    d.proc.send_signal(sig)
    rc = d.proc.wait(60)
    return rc, time.monotonic() - t


# Planning a huge canvas: test_daemon_lifecycle.py (a 2048x2048 plan now takes well under a second).
@pytest.mark.parametrize("when", ["loading the model", "stepping a big canvas"])
def test_sigterm_in_any_state_exits_0_promptly(when):
    d = Daemon()
    c = None
    try:
        if when == "loading the model":
            deadline = time.monotonic() + 60
            while "loading model" not in d.text() and time.monotonic() < deadline:
                time.sleep(0.01)
        else:
            d.wait_serving()
            c = live_client(d.address, "big", side=512)
            frames(c, 1, timeout=120)
        rc, seconds = _stop_time(d, signal.SIGINT if when == "stepping a big canvas" else signal.SIGTERM)
        assert rc == 0, d.text()
        assert seconds < 15, seconds  # generous; measured in benchmarks/bench_hostile.py
        assert "Traceback" not in d.text() and d.text().rstrip().endswith("stopped"), d.text()[-2000:]
    finally:
        if c is not None:
            c.close()
        d.close()


def test_refused_keys_are_told_to_both_ends(tmp_path):
    keys, mallory_secret, server_public = keys_and_stranger(tmp_path)
    d = Daemon("--keys", str(keys))
    try:
        d.wait_serving()
        mallory = Client(d.address, name="mallory", server_public_key=server_public, client_secret_file=mallory_secret)
        plain = Client(d.address, name="plain")
        try:
            mallory.connect()
            plain.connect()
            ev = mallory.wait_for(lambda e: isinstance(e, StateEvent) and e.code == StateCode.AUTH_FAILED, 10)
            assert ev is not None and "did not accept this key" in ev.reason, mallory.state_reason
            ev = plain.wait_for(lambda e: isinstance(e, StateEvent) and e.code == StateCode.AUTH_FAILED, 10)
            assert ev is not None and "requires encryption" in ev.reason, plain.state_reason
            # It keeps trying (every second or so); the daemon says so once per interval.
            mallory.wait_for(lambda e: False, 4)
        finally:
            mallory.close()
            plain.close()
        print_ = fingerprint(zmq.auth.load_certificate(mallory_secret)[0])
        refusals = [line for line in d.text().splitlines() if "refused a client" in line and "its key" in line]
        assert refusals and " INFO " in refusals[0] and "127.0.0.1" in refusals[0] and print_ in refusals[0]
        assert len(refusals) <= 2, refusals
    finally:
        d.stop()
        d.close()


def test_serve_refuses_a_secret_key_others_can_read(tmp_path):
    keys = tmp_path / "keys"
    assert run_cli("keys", str(keys)).returncode == 0
    (keys / "server.key_secret").chmod(0o644)
    r = run_cli("serve", "--model", "tiny", "--keys", str(keys), "--bind", "tcp://127.0.0.1:1")
    lines = r.stderr.strip().splitlines()
    assert r.returncode == 2 and len(lines) == 1, r.stderr
    assert "chmod 600" in lines[0] and "server.key_secret" in lines[0] and "loading model" not in r.stderr


def test_an_accepted_scene_is_drawn_even_when_the_update_after_it_is_refused(daemon):
    side = 512  # planning takes a while: the next two updates queue up behind the first
    raw = Raw(daemon.address)
    try:
        raw.handshake()
        plane = half_mask(side)
        raw.send(
            "update",
            [plane],
            revision=1,
            full=True,
            width=side,
            height=side,
            layers=[{"key": "1", "name": "a red fox", "alpha": {"part": 0}}],
        )
        raw.send("update", [], revision=2, full=False, layers=[{"key": "1", "name": "a blue fox"}])
        raw.send("update", [b"not a plane"], revision=3, full=False, layers=[{"key": "1", "alpha": {"part": 0}}])
        assert raw.expect("scene", 60).header["revision"] == 1
        assert raw.expect("scene", 60).header["revision"] == 2
        assert raw.expect("error", 60).header["code"] == E.BAD_IMAGE
        raw.send("live_start", encoding="raw")
        raw.expect("live")
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            m = raw.expect("frame", 120)
            raw.send("ack", seq=m.header["seq"], token=m.header["token"])
            if m.header["revision"] == 2:
                break
        assert m.header["revision"] == 2
    finally:
        raw.close()


def test_results_a_client_does_not_read_hold_their_jobs_place(daemon):
    raw = Raw(daemon.address)
    try:
        max_jobs = raw.handshake().header["limits"]["max_jobs"]
        raw.live()  # a scene; its frames are never read either
        # Ask for a result again and again, reading nothing: the daemon only queues
        # what it may, so unread results cannot pile up in its memory.
        for job in range(1, 3 * max_jobs + 1):
            raw.send("generate", id=job, encoding="raw", steps=1)
            time.sleep(0.3)
        got = {"result": [], "queued": [], "busy": 0}
        while (m := raw.recv(2.0)) is not None:
            if m.type in ("result", "queued"):
                got[m.type].append(m.header)
            elif m.type == "error" and m.header["code"] == E.BUSY:
                got["busy"] += 1
        assert len(got["result"]) == max_jobs and got["busy"] == 2 * max_jobs, got
        # Acknowledging a result (with the token it came with) frees its place.
        first = got["result"][0]
        raw.send("ack", job=first["job"], token=first["token"] + 1)
        raw.send("generate", id=100, encoding="raw", steps=1)
        assert raw.expect("error").header["code"] == E.BUSY
        raw.send("ack", job=first["job"], token=first["token"])
        raw.send("generate", id=101, encoding="raw", steps=1)
        assert raw.expect("queued").header["job"] == 101
    finally:
        raw.close()

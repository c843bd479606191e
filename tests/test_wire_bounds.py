"""Sizes both ways between the client library and whatever answers at the
daemon's address.

Frames and results: a fake daemon (``hostile_daemon.py``, a real ROUTER
socket) sends a 1 GiB part, a huge declared size, the wrong size, the wrong
byte count and a PNG decompression bomb; the client drops each with one line,
costs no memory for them (peak RSS of a client process) and keeps streaming.

Scenes: every scene within ``max_side`` and ``max_regions`` reaches a real
daemon on loopback (updates too big for its message limit go compressed);
one that cannot fit even compressed is refused by the client with one line,
the connection intact.
"""

from __future__ import annotations

import io
import time

import numpy as np
import pytest
import zmq
from daemon_util import connect, free_port, running
from hostile_daemon import BAD, BOMB_SIDE, HostileDaemon, png_bomb, probe
from PIL import Image

from benchmarks.bench_transport import region_mask
from smd_daemon import framecheck, protocol
from smd_daemon.client import Client, ErrorEvent, FrameEvent, Layer, SceneEvent, StateEvent

E = protocol.ErrorCode


def encoded(fmt: str, w: int, h: int, **kw) -> bytes:
    img = Image.fromarray(np.random.default_rng(0).integers(0, 256, (h, w, 3), dtype=np.uint8))
    buf = io.BytesIO()
    img.save(buf, fmt, **kw)
    return buf.getvalue()


@pytest.mark.parametrize(
    "encoding, data",
    [
        ("png", encoded("PNG", 96, 40)),
        ("jpeg", encoded("JPEG", 96, 40)),
        ("jpeg", encoded("JPEG", 96, 40, progressive=True, quality=100, subsampling=0)),
        ("jpeg", encoded("JPEG", 96, 40, exif=b"Exif\x00\x00" + b"\x00" * 3000)),  # a big APP1 segment first
        ("webp", encoded("WEBP", 96, 40)),  # lossy: VP8
        ("webp", encoded("WEBP", 96, 40, lossless=True)),  # VP8L
        ("webp", encoded("WEBP", 96, 40, exif=b"Exif\x00\x00" + b"\x00" * 100)),  # extended: VP8X
    ],
)
def test_file_headers_name_the_image_size(encoding, data):
    assert framecheck.image_size(data, encoding) == (96, 40)
    assert framecheck.image_size(memoryview(data), encoding) == (96, 40)  # as the socket hands it over
    assert framecheck.image_size(data[:20], encoding) is None  # cut short: no size, no exception


def test_a_bomb_is_told_by_its_header_alone():
    assert framecheck.image_size(png_bomb(), "png") == (BOMB_SIDE, BOMB_SIDE)
    assert framecheck.image_size(png_bomb(), "jpeg") is None  # another format than the one named
    assert framecheck.image_size(b"\xff\xd8" + b"\xff\xd0" * 100_000, "jpeg") is None  # markers, no frame: bounded


def test_frames_must_be_the_size_of_the_revision_they_show():
    asked = framecheck.AskedSizes()
    asked.asked(1, (64, 64))
    asked.asked(2, (64, 64))
    asked.asked(3, (128, 64))
    assert asked.at(1) == asked.at(2) == (64, 64) and asked.at(3) == (128, 64)
    assert asked.at(4) is None and asked.at(0) is None and asked.at(True) is None  # never sent
    for r in range(4, 4 + framecheck.AskedSizes.KEPT):
        asked.asked(r, (64 + 8 * r, 64))
    assert asked.at(1) is None and asked.at(4 + framecheck.AskedSizes.KEPT - 1) is not None


def test_each_refusal_is_one_bad_frame_line():
    asked = framecheck.AskedSizes()
    asked.asked(3, (64, 32))
    head = {"seq": 1, "token": 7, "revision": 3, "width": 64, "height": 32, "encoding": "raw", "channels": 3, "part": 0}
    good = bytes(64 * 32 * 3)
    cases = {
        "which this client never sent": ({"revision": 4}, good),
        "whose pixels are not in the message": ({"part": 1}, good),
        "with 4 channels": ({"channels": 4}, bytes(64 * 32 * 4)),
        "in an unknown encoding 'gif'": ({"encoding": "gif"}, b"GIF89a"),
        "that is not a png file": ({"encoding": "png"}, b"\xff\xd8" + bytes(100)),
    }
    assert framecheck.refusal(protocol.Message("frame", head, [good]), asked) is None
    for words, (fields, data) in cases.items():
        event, ack = framecheck.refusal(protocol.Message("frame", {**head, **fields}, [data]), asked)
        assert event.code == E.BAD_FRAME and words in event.message and "\n" not in event.message, event
        assert ack == {"seq": 1, "token": 7} and event.re is None
    result = {**head, "job": 5, "width": 32}
    event, ack = framecheck.refusal(protocol.Message("result", result, [good]), asked)
    assert "result of job 5" in event.message and event.re == 5 and ack == {"job": 5, "token": 7}


def test_the_socket_refuses_any_part_larger_than_a_frame_it_may_ask_for():
    fake = HostileDaemon(f"tcp://127.0.0.1:{free_port()}", plan=[], max_side=8192)
    fake.start()
    c = connect(fake.address)
    try:
        link = c._conn.link
        assert link.sock.getsockopt(zmq.MAXMSGSIZE) == framecheck.max_part_bytes(4096) < 100 * 2**20
        # A daemon that draws bigger frames: the socket is replaced by one that takes them.
        c.set_scene(4104, 64, [Layer("1", "a red fox", bytes(4104 * 64))])
        ev = c.wait_for(lambda e: isinstance(e, StateEvent) and e.state == "connected", 30)
        assert ev is not None, c.state_reason
        assert c._conn.link is not link
        assert c._conn.link.sock.getsockopt(zmq.MAXMSGSIZE) == framecheck.max_part_bytes(4104)
        assert c.wait_for(lambda e: isinstance(e, SceneEvent), 30) is not None  # the scene was sent again
    finally:
        c.close()
        fake.stop()


def test_a_hostile_daemon_costs_the_client_no_memory():
    png_bomb()  # made before the clock starts
    fake = HostileDaemon(f"tcp://127.0.0.1:{free_port()}", plan=BAD)
    fake.start()
    try:
        out = probe(fake.address, side=256, want_errors=4)
    finally:
        fake.stop()
    assert fake.sent[: len(BAD)] == list(BAD), fake.sent
    # Each bad frame: one line, dropped before it was copied or decoded.
    assert [e[0] for e in out["errors"]] == [E.BAD_FRAME] * 4, out
    messages = [e[1] for e in out["errors"]]
    assert all("\n" not in m and m.startswith("dropped ") for m in messages), messages
    assert "20000x20000" in messages[0] and "512x512" in messages[1] and "196607 bytes" in messages[2]
    assert f"file header says {BOMB_SIDE}x{BOMB_SIDE}" in messages[3]
    # The 1 GiB part closed the connection unread; the client reconnected by itself and streams again.
    assert ["disconnected", "no_answer"] == out["states"][-2][:2] and out["state"] == "connected", out
    assert "the connection closed (the daemon stopped, or sent a part over 96 MiB)" in out["states"][-2][2], out
    assert out["frames"] >= 2 and out["last"] == [256, 256, 256 * 256 * 3, "c82828"], out
    # A 1 GiB part and a ~480 MB bomb cost nothing: a bare client peaks at ~27 MB.
    assert out["rss"] < 100, out
    assert out["stderr"].count("\n") <= 1, out["stderr"]  # a flood of bad frames is one log line


def test_results_are_checked_like_frames():
    fake = HostileDaemon(f"tcp://127.0.0.1:{free_port()}", plan=[], results=["png_bomb", "missized"])
    fake.start()
    c = connect(fake.address)
    try:
        c.set_scene(256, 256, [Layer("1", "a red fox", bytes(256 * 256))])
        jobs = [c.generate(), c.generate(), c.generate()]

        def done(e):
            return isinstance(e, (ErrorEvent, FrameEvent)) and (e.re if isinstance(e, ErrorEvent) else e.job) in jobs

        got = [c.wait_for(done, 30) for _ in jobs]
        assert [type(e).__name__ for e in got] == ["ErrorEvent", "ErrorEvent", "FrameEvent"], got
        assert got[0].code == got[1].code == E.BAD_FRAME and got[0].re == jobs[0] and got[1].re == jobs[1]
        assert f"result of job {jobs[0]}" in got[0].message and "file header" in got[0].message
        assert got[2].job == jobs[2] and (got[2].width, got[2].height) == (256, 256)
    finally:
        c.close()
        fake.stop()


# --- scenes: every scene within the limits fits ----------------------------------------


def painting(side: int) -> bytes:
    """A canvas image: smooth colour with grain."""
    y, x = np.ogrid[0:side, 0:side]
    rng = np.random.default_rng(0)
    img = np.stack(np.broadcast_arrays(x * 200 // side, y * 200 // side, (x + y) * 100 // side), -1).astype(np.int16)
    img += rng.integers(0, 8, img.shape, dtype=np.int16)
    return img.astype(np.uint8).tobytes()


@pytest.fixture(scope="module")
def daemon():
    with running() as d:
        yield d


def accepted(c: Client, rev: int, timeout: float = 600) -> SceneEvent:
    ev = c.wait_for(lambda e: isinstance(e, (SceneEvent, ErrorEvent)), timeout)
    assert isinstance(ev, SceneEvent), f"revision {rev}: {ev}"
    assert ev.revision == rev
    return ev


@pytest.mark.parametrize("side", [2048, 4096])
def test_every_scene_within_the_limits_reaches_the_daemon_on_loopback(daemon, side):
    n = 16  # max_regions
    layers = [Layer(str(i), f"a red fox number {i}", region_mask(side, i)) for i in range(n)]
    background = painting(side)
    c = connect(daemon.address, timeout=60)
    try:
        limits = c.limits
        assert (n, side) <= (limits["max_regions"], limits["max_side"]) and not c.compress_planes  # loopback
        assert n * side * side + len(background) > limits["max_message_bytes"]  # raw, it was refused as too_large
        # Strength 0: the image travels all the same, and the tiny model's VAE need not
        # encode 4096² pixels on the CPU (two minutes) before the daemon replies.
        rev = c.set_scene(side, side, layers, background_image=background, background_strength=0.0)
        ev = accepted(c, rev)
        assert ev.regions == n and all(layer["role"] == "region" for layer in ev.layers)
        assert c.last_update_bytes < limits["max_message_bytes"]  # compressed to fit
        # A change of one plane next to it goes raw and is accepted.
        rev = c.update_scene([Layer("0", "a blue fox", region_mask(side, 5))])
        assert c.last_update_bytes > side * side  # raw: it fits as it is
        assert accepted(c, rev).layers[0]["prompt"] == "a blue fox"
    finally:
        c.close()


def test_a_caller_that_pauses_to_prepare_a_big_scene_is_not_taken_for_a_dead_daemon():
    """Reading and compressing a big scene blocks the caller (the plugin's GUI thread) for
    seconds without polling: the daemon's silence meanwhile proves nothing."""
    fake = HostileDaemon(f"tcp://127.0.0.1:{free_port()}", plan=[])
    fake.start()
    c = connect(fake.address, timeout=30)
    try:
        time.sleep(c._conn.timeout + 1.5)  # away longer than the client's timeout
        rev = c.set_scene(64, 64, [Layer("1", "a red fox", bytes(64 * 64))])
        ev = c.wait_for(lambda e: isinstance(e, (SceneEvent, StateEvent)), 10)
        assert isinstance(ev, SceneEvent) and ev.revision == rev, ev
        assert c.state == "connected"
    finally:
        c.close()
        fake.stop()


def test_a_scene_that_cannot_fit_is_refused_by_the_client_in_one_line():
    with running("--max-message-mb", "1") as d:
        c = connect(d.address)
        side = 640
        noise = [np.random.default_rng(i).integers(0, 256, side * side, dtype=np.uint8).tobytes() for i in range(5)]
        rev = c.set_scene(side, side, [Layer(str(i), f"fox {i}", a) for i, a in enumerate(noise)])
        ev = c.wait_for(lambda e: isinstance(e, (SceneEvent, ErrorEvent)), 30)
        assert isinstance(ev, ErrorEvent) and ev.code == E.TOO_LARGE and ev.header["revision"] == rev, ev
        assert "\n" not in ev.message and "even compressed" in ev.message
        # Nothing was sent: the connection and the session are intact, and a scene that fits goes through
        # (compressed: its raw planes are over the 1 MiB limit too).
        assert c.state == "connected"
        masks = [region_mask(side, i) for i in range(5)]
        rev = c.update_scene([Layer(str(i), f"fox {i}", m) for i, m in enumerate(masks)])
        assert accepted(c, rev, 60).regions == 5
        # An image over the limit alone goes compressed too (planes first, then the image).
        rev = c.update_scene(background_image=painting(side), background={"strength": 0.0})
        assert c.last_update_bytes < 2**20 < side * side * 3
        assert accepted(c, rev, 60).regions == 5
        c.close()
        assert d.text().count("(smd-client) connected") == 1, d.text()  # never dropped, never reconnected

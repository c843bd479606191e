"""Whatever answers at the daemon's address: a fake daemon on a real ZeroMQ
ROUTER socket that says hello, opens a session and reads the scene like a
real one, then sends frames and results that are not what the client asked
for (a 1 GiB part, a huge declared size, the wrong size, the wrong byte
count, a PNG decompression bomb), then good frames.

In a thread of the test process (``HostileDaemon(address, plan).start()``)
or a process of its own (``python tests/hostile_daemon.py ADDRESS KIND...``).
``probe`` runs a client process against it and ``decode_bomb`` the plugin's
decoder on the bomb, each reporting its peak memory (the tests, and
``benchmarks/bench_hostile.py fake_daemon``). Not a daemon: a test fixture.
"""

from __future__ import annotations

import json
import mmap
import os
import struct
import subprocess
import sys
import tempfile
import threading
import time
import zlib

import zmq

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
from smd_daemon import protocol  # noqa: E402

GIB = 2**30
BAD = ("declared_huge", "missized", "short_raw", "png_bomb", "oversize")
BOMB_SIDE = 11000  # a ~0.35 MB PNG that decodes to 11000² pixels (~480 MB in a QImage)


def png(width: int, height: int, rows) -> bytes:
    """An RGB PNG of this size whose pixel data is ``rows`` (filter byte + RGB), compressed."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    z = zlib.compressobj(9)
    idat = b"".join(z.compress(r) for r in rows) + z.flush()
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", idat) + chunk(b"IEND", b"")


_bomb: bytes | None = None


def png_bomb() -> bytes:
    """A small PNG whose header names BOMB_SIDE² pixels, all of them present (zeros compress ~1000:1)."""
    global _bomb
    if _bomb is None:
        row = b"\x00" * (BOMB_SIDE * 3 + 1)
        _bomb = png(BOMB_SIDE, BOMB_SIDE, (row for _ in range(BOMB_SIDE)))
    return _bomb


def frame_parts(kind: str, w: int, h: int) -> tuple[dict, object]:
    """(header fields, binary part) of one frame or result of this kind for a scene of w x h."""
    if kind == "oversize":  # 1 GiB in one part; untouched anonymous memory costs this process nothing
        side = int((GIB / 3) ** 0.5)
        return {"width": side, "height": side, "encoding": "raw"}, mmap.mmap(-1, GIB)
    if kind == "declared_huge":
        return {"width": 20000, "height": 20000, "encoding": "raw"}, b"\x00" * 64
    if kind == "missized":
        return {"width": 2 * w, "height": 2 * h, "encoding": "raw"}, b"\x80" * (4 * w * h * 3)
    if kind == "short_raw":
        return {"width": w, "height": h, "encoding": "raw"}, b"\x80" * (w * h * 3 - 1)
    if kind == "png_bomb":
        return {"width": w, "height": h, "encoding": "png"}, png_bomb()
    if kind == "good":
        return {"width": w, "height": h, "encoding": "raw"}, bytes((200, 40, 40)) * (w * h)
    if kind == "good_png":
        return {"width": w, "height": h, "encoding": "png"}, png(
            w, h, (b"\x00" + b"\xc8\x28\x28" * w for _ in range(h))
        )
    raise ValueError(kind)


class HostileDaemon(threading.Thread):
    """``plan``: the kinds of live frame to send, one every ``interval`` s after
    ``live_start``, then good frames; ``results``: the kind of result each
    ``generate`` gets, in turn (then good ones)."""

    def __init__(self, address: str, plan=BAD, results=(), interval: float = 0.2, max_side: int = 4096):
        super().__init__(daemon=True)
        self.address, self.plan, self.results = address, list(plan), list(results)
        self.interval, self.max_side = interval, max_side
        self.ctx = zmq.Context()
        self.sock = self.ctx.socket(zmq.ROUTER)
        self.sock.setsockopt(zmq.LINGER, 0)
        self.sock.bind(address)
        self.stopping = threading.Event()
        self.sent: list[str] = []  # the kinds sent so far
        self.peers: dict = {}  # identity -> scene size, for peers that said hello
        self.live: set = set()
        self.seq = self.token = 0

    def stop(self) -> None:
        self.stopping.set()
        self.join(10)
        self.sock.close(0)
        self.ctx.term()

    def send(self, ident: bytes, type_: str, parts=(), **fields) -> None:
        self.sock.send_multipart([ident, *protocol.encode(type_, parts, **fields)], copy=False)

    def run(self) -> None:
        next_frame = 0.0
        while not self.stopping.is_set():
            if self.sock.poll(20):
                frames = self.sock.recv_multipart()
                self.handle(frames[0], protocol.decode(frames[1:], protocol.REQUESTS))
            now = time.monotonic()
            if now >= next_frame and self.live:
                next_frame = now + self.interval
                kind = self.plan.pop(0) if self.plan else "good"
                for ident in list(self.live):
                    self.push(ident, "frame", kind)
                self.sent.append(kind)

    def push(self, ident: bytes, type_: str, kind: str, job: int | None = None) -> None:
        w, h, revision = self.peers[ident]
        fields, part = frame_parts(kind, w, h)
        self.seq += 1
        self.token += 1
        ids = {"seq": self.seq} if job is None else {"job": job}
        self.send(ident, type_, [part], **ids, token=self.token, revision=revision, channels=3, part=0, **fields)

    def handle(self, ident: bytes, msg) -> None:
        h, t, rid = msg.header, msg.type, msg.header.get("id")
        if t == "hello":
            self.live.clear()  # a client that says hello again lost its connection: the old one is gone
            self.peers[ident] = (64, 64, 0)
            limits = {"max_side": self.max_side, "max_message_bytes": 64 * 2**20, "heartbeat_timeout": 10}
            self.send(ident, "welcome", protocol=2, daemon={"name": "fake"}, model={}, limits=limits, capabilities={})
        elif ident not in self.peers:
            self.send(ident, "error", code="handshake_required", message="say hello first", re=rid)
        elif t == "open":
            self.send(ident, "opened", session="f00d")
        elif t == "update":
            w, hh, _ = self.peers[ident]
            self.peers[ident] = (h.get("width", w), h.get("height", hh), h["revision"])
            layers = [{"name": e.get("name", ""), "role": "region", "prompt": e.get("name", "")} for e in h["layers"]]
            self.send(ident, "scene", re=rid, revision=h["revision"], layers=layers, regions=len(layers))
        elif t == "live_start":
            self.live.add(ident)
            self.send(ident, "live", re=rid, active=True, encoding="raw")
        elif t == "live_stop":
            self.live.discard(ident)
            self.send(ident, "live", re=rid, active=False)
        elif t == "generate":
            self.send(ident, "queued", re=rid, job=rid)
            kind = self.results.pop(0) if self.results else "good"
            self.push(ident, "result", kind, job=rid)
            self.sent.append(f"result:{kind}")
        elif t == "ping":
            self.send(ident, "pong")
        elif t == "close":
            self.live.discard(ident)
            self.send(ident, "closed", reason="closed by the client")


# Peak RSS in MB of this process's own memory (VmHWM: ru_maxrss would start at the peak of
# the process that started it, the test process, which holds the fake daemon).
PEAK = r"""
def peak_mb():
    with open("/proc/self/status") as f:
        return next(int(line.split()[1]) for line in f if line.startswith("VmHWM:")) / 1024
"""

# A client process (the client library of the checkout at argv[4]): its peak RSS is what the frames cost it.
PROBE = (
    PEAK
    + r"""
import json, sys, time
sys.path.insert(0, sys.argv[4])
from smd_daemon.client import Client, ErrorEvent, FrameEvent, Layer, StateEvent
address, side, want_errors = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
c = Client(address, name="probe")
c.connect()
c.set_scene(side, side, [Layer("1", "a red fox", bytes([255]) * (side * side))])
c.start_live("raw")
errors, frames, states, last = [], 0, [], None
deadline = time.monotonic() + 40
while time.monotonic() < deadline and not (len(errors) >= want_errors and frames >= 2):
    for e in c.poll(timeout_ms=20):
        if isinstance(e, ErrorEvent):
            errors.append([e.code, e.message])
        elif isinstance(e, FrameEvent):
            frames += 1
            last = [e.width, e.height, len(e.data), e.data[:3].hex()]
        elif isinstance(e, StateEvent):
            states.append([e.state, e.code, e.reason])
rss = peak_mb()
print(json.dumps({"errors": errors, "frames": frames, "last": last, "states": states, "state": c.state, "rss": rss}))
"""
)


def probe(address: str, side: int = 256, want_errors: int = 4, root: str = ROOT) -> dict:
    """Stream from ``address`` in a client process until ``want_errors`` dropped frames and two
    good ones (40 s at most); its events, its log (``stderr``) and its peak RSS in MB (``rss``)."""
    env = {**os.environ, "PYTHONPATH": ""}
    cmd = [sys.executable, "-c", PROBE, address, str(side), str(want_errors), root]
    r = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=120)
    if r.returncode != 0:
        raise AssertionError(r.stderr)
    return {**json.loads(r.stdout), "stderr": r.stderr}


DECODE = (
    PEAK
    + r"""
import sys
sys.path[:0] = [sys.argv[2] + "/tests"]
from plugin_unit import env
from smd_krita import pixels
data = open(sys.argv[1], "rb").read()
before = peak_mb()
img = pixels.decode_frame("png", data, 256, 256, 3)
print(img.isNull(), peak_mb() - before)
"""
)


def decode_bomb(root: str = ROOT) -> tuple[bool, float]:
    """The plugin's decoder (of the checkout at ``root``) on the bomb, told it is a 256² frame, in a
    process of its own: (whether it refused it, how much its peak RSS grew, in MB)."""
    with tempfile.NamedTemporaryFile(suffix=".png") as f:
        f.write(png_bomb())
        f.flush()
        r = subprocess.run([sys.executable, "-c", DECODE, f.name, root], capture_output=True, text=True, timeout=120)
    if r.returncode != 0:
        raise AssertionError(r.stderr)
    null, grew = r.stdout.split()
    return null == "True", float(grew)


if __name__ == "__main__":
    fake = HostileDaemon(sys.argv[1], sys.argv[2:] or BAD)
    fake.start()
    print("serving", flush=True)
    fake.join()

"""Transport benchmark: how fast and how late frames reach a client on loopback.

Part 1 (transport): a daemon process whose engine returns one fixed frame
instantly, so everything measured is the daemon's own path (GPU-loop thread
-> I/O thread -> encode -> ZeroMQ -> client library -> pixels). The frame is
a procedural painting-like image (gradients, soft shapes, fine grain), which
compresses about like a real render; pure noise or flat colour would not.

Part 2 (overhead): a real ``smd-daemon serve`` process with a real model;
per-frame overhead = the client's frame interval minus the engine call.

Part 3 (scenes, ``--scenes``): big scenes on loopback, as the plugin sends
them (painted regions, a canvas image): the update's size raw and as sent,
the client's time to build and send it, and the time until the daemon's
``scene`` reply (decoding, checking and planning with the given model).

    python benchmarks/bench_transport.py                  # parts 1 and 2
    python benchmarks/bench_transport.py --sides 512 --encodings raw webp
    python benchmarks/bench_transport.py --model random-sd15 --engine-side 512   # on a GPU
    python benchmarks/bench_transport.py --skip-transport --skip-overhead --scenes 2048x4 2048x16 4096x16

Prints Markdown tables for docs/benchmarks.md. Not a test: no pass/fail.
"""

from __future__ import annotations

import argparse
import io
import os
import statistics
import subprocess
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)


def test_image(side: int, kind: str = "painting"):
    import numpy as np

    rng = np.random.default_rng(0)
    if kind == "noise":  # worst case for compression (what random-weight models draw)
        return rng.integers(0, 256, (side, side, 3), dtype=np.uint8)
    y, x = np.mgrid[0:side, 0:side].astype(np.float32) / side
    img = np.stack([0.5 + 0.4 * np.sin(3 * x + 1), 0.4 + 0.3 * y, 0.6 - 0.4 * x * y], -1)
    for _ in range(12):  # soft blobs of colour, like painted regions
        cx, cy, r = rng.random(3) * [1, 1, 0.3] + [0, 0, 0.05]
        blob = np.exp(-((x - cx) ** 2 + (y - cy) ** 2) / (2 * r * r))[..., None]
        img = img * (1 - blob) + blob * rng.random(3)
    # Brush-like texture at several scales, then grain.
    for f in (12, 40, 110):
        img += 0.04 * np.sin(f * x + 2 * np.sin(f * y / 3))[..., None] * rng.random(3)
    img += rng.normal(0, 0.02, img.shape)
    return (np.clip(img, 0, 1) * 255).astype(np.uint8)


def region_mask(side: int, i: int) -> bytes:
    """A soft-edged round region as an artist paints one, in cell i of a 4x4 grid (8-bit alpha)."""
    import numpy as np

    cell = side // 4
    y, x = np.ogrid[0:cell, 0:cell]
    d = np.sqrt(((x - cell / 2) ** 2 + (y - cell / 2) ** 2).astype(np.float32))
    mask = np.zeros((side, side), np.uint8)
    row, col = i // 4 % 4, i % 4
    mask[row * cell : (row + 1) * cell, col * cell : (col + 1) * cell] = (
        np.clip((cell * 0.45 - d) / (cell / 16), 0, 1) * 255
    )
    return mask.tobytes()


class StillEngine:
    """Returns the same frame at once: the engine costs nothing, only the daemon is measured."""

    max_steps, kind, control_kinds = 50, "still", ()

    @property
    def region_modes(self) -> tuple[str, ...]:
        from smd_daemon.protocol import REGION_MODES

        return REGION_MODES

    def __init__(self, side: int, kind: str):
        self.image = test_image(side, kind)

    def plan(self, scene, cancel=None):
        return scene

    def session_bytes(self, scene):
        return 0

    def check(self, scene):
        return scene.validate()

    def open_stream(self, scene, revision=0, plan=None):
        return _StillStream(self, revision)

    def begin_streams(self, streams):
        return _StillWork(streams)

    def begin_generate(self, scene, plan=None):
        return _StillImage(self.image)


class _StillWork:
    """One pass that makes every stream's frame."""

    def __init__(self, streams):
        self.streams, self.done, self.samples_total, self.samples_left = streams, False, len(streams), len(streams)
        self.share = [1 / len(streams)] * len(streams)

    def run(self, max_samples=None):
        self._frames = [s.step() for s in self.streams]
        self.done, self.samples_left = True, 0
        return len(self.streams)

    def ready(self):
        return self.done

    def frames(self):
        return self._frames


class _StillImage:
    """A generate that is done in one pass."""

    def __init__(self, image):
        self._image, self.done, self.samples_total, self.samples_left, self.progress = image, False, 1, 1, (0, 1)

    def run(self, max_samples=None):
        self.done, self.samples_left, self.progress = True, 0, (1, 1)
        return 1

    def image(self):
        return self._image


class _StillStream:
    steps_in_flight = 1

    def __init__(self, engine, revision):
        self.engine, self.revision, self.index = engine, revision, 0

    def update(self, scene, revision, plan=None):
        self.revision = revision

    def step(self):
        from smd_daemon.engine.core import StreamFrame

        self.index += 1
        return StreamFrame(self.engine.image, self.index, self.revision, True)


def serve_still(port: int, side: int, kind: str) -> None:
    from smd_daemon.server import Limits, Server

    srv = Server(StillEngine(side, kind), {"name": "still"}, f"tcp://127.0.0.1:{port}", Limits(max_fps=1000))
    srv.start()
    print("serving", flush=True)
    try:
        srv.serve_forever()
    finally:
        srv.shutdown()


def free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def stream(address: str, side: int, encoding: str, seconds: float, quality: int = 80):
    """Frames per second, latencies and sizes seen by one client."""
    from PIL import Image

    from smd_daemon.client import Client, FrameEvent, Layer, StateEvent

    c = Client(address, name="bench")
    c.connect()
    assert c.wait_for(lambda e: isinstance(e, StateEvent) and e.state == "connected", 120), c.state_reason
    alpha = bytes([255]) * (side * side)
    c.set_scene(side, side, [Layer("1", "a red fox", alpha)], background_prompt="snowy forest")
    c.start_live(encoding, quality=quality, max_fps=1000)
    first = c.wait_for(lambda e: isinstance(e, FrameEvent) and e.encoding == encoding, 300)
    assert first is not None, "no frames"
    for _ in range(10):  # warm up
        c.wait_for(lambda e: isinstance(e, FrameEvent), 60)
    lat, decode, sizes, encode, engine, intervals = [], [], [], [], [], []
    t0 = time.perf_counter()
    first: tuple[int, float] | None = None  # (seq, time) of the first frame timed
    last_seq, last_t = 0, t0
    end = t0 + seconds
    while time.perf_counter() < end:
        for ev in c.poll(timeout_ms=5):
            if not isinstance(ev, FrameEvent):
                continue
            td = time.perf_counter()
            if encoding != "raw":
                Image.open(io.BytesIO(ev.data)).load()  # the client has pixels only once decoded
            now = time.time()
            decode.append((time.perf_counter() - td) * 1000)
            lat.append((now - ev.header["sent_at"]) * 1000 + ev.header["encode_ms"])
            encode.append(ev.header["encode_ms"])
            engine.append(ev.header["engine_ms"])
            sizes.append(len(ev.data))
            if first is None:
                first = ev.seq, time.perf_counter()
            else:
                intervals.append((time.perf_counter() - last_t) * 1000 / max(1, ev.seq - last_seq))
            last_t, last_seq = time.perf_counter(), ev.seq
    c.stop_live()
    c.close()
    if first is None:
        raise RuntimeError(f"{encoding}: no frame in {seconds:g} s of live mode")
    start_seq, t_first = first
    fps = (last_seq - start_seq) / (last_t - t_first)
    med = statistics.median
    return {
        "fps": fps,
        "latency": med(lat),
        "encode": med(encode),
        "decode": med(decode),
        "size": med(sizes),
        "engine": med(engine),
        "interval": med(intervals) if intervals else float("nan"),
        "frames": len(lat),
    }


def transport(sides, encodings, seconds, kind):
    print("| frame | encoding | frames/s | added latency ms (encode + send→pixels) | encode ms | decode ms | size KB |")
    print("|---|---|---|---|---|---|---|")
    for side in sides:
        port = free_port()
        env = dict(os.environ, PYTHONPATH=ROOT)
        cmd = [sys.executable, __file__, "--serve-still", str(port), str(side), "--image", kind]
        proc = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, text=True)
        try:
            assert proc.stdout is not None  # stdout=PIPE
            assert proc.stdout.readline().strip() == "serving"
            for enc in encodings:
                r = stream(f"tcp://127.0.0.1:{port}", side, enc, seconds)
                print(
                    f"| {side}² {kind} | {enc} | {r['fps']:.0f} | {r['latency']:.2f} | {r['encode']:.2f} | "
                    f"{r['decode']:.2f} | {r['size'] / 1000:.1f} |",
                    flush=True,
                )
        finally:
            proc.terminate()
            proc.wait(30)


def overhead(model, side, seconds, device, threads):
    port = free_port()
    env = dict(os.environ, PYTHONPATH=ROOT, HF_HUB_OFFLINE="1")
    cmd = [
        sys.executable,
        "-m",
        "smd_daemon",
        "serve",
        "--model",
        model,
        "--bind",
        f"tcp://127.0.0.1:{port}",
        "--max-fps",
        "1000",
        "--log-level",
        "warning",
    ]
    if device:
        cmd += ["--device", device]
    if threads:
        cmd += ["--threads", str(threads)]
    proc = subprocess.Popen(cmd, env=env)
    try:
        r = stream(f"tcp://127.0.0.1:{port}", side, "raw", seconds)
    finally:
        proc.terminate()
        proc.wait(60)
    print("| model | frame | frames/s | engine call ms | frame interval ms | overhead per frame ms |")
    print("|---|---|---|---|---|---|")
    print(
        f"| {model} | {side}² raw | {r['fps']:.1f} | {r['engine']:.2f} | {r['interval']:.2f} | "
        f"{r['interval'] - r['engine']:.2f} |"
    )


def scenes(configs, model, threads, repeat):
    """Full updates of SIDE x SIDE with N regions and a canvas image, on loopback."""
    from smd_daemon.client import Client, ErrorEvent, Layer, SceneEvent, StateEvent

    port = free_port()
    env = dict(os.environ, PYTHONPATH=ROOT, HF_HUB_OFFLINE="1")
    cmd = [sys.executable, "-m", "smd_daemon", "serve", "--model", model, "--bind", f"tcp://127.0.0.1:{port}"]
    proc = subprocess.Popen(
        cmd + (["--threads", str(threads)] if threads else []) + ["--log-level", "warning"], env=env
    )
    print("| scene | raw MiB | sent MiB | client build + send ms | until the scene reply ms | reply |")
    print("|---|---|---|---|---|---|")
    try:
        for config in configs:
            side, n = map(int, config.split("x"))
            layers = [Layer(str(i), f"a red fox number {i}", region_mask(side, i)) for i in range(n)]
            canvas = test_image(side).tobytes()
            raw = n * side * side + len(canvas)
            sends, replies, sent, outcome = [], [], 0, ""
            for _ in range(repeat):
                c = Client(f"tcp://127.0.0.1:{port}", name="bench", timeout=30)
                c.connect()
                assert c.wait_for(lambda e: isinstance(e, StateEvent) and e.state == "connected", 120), c.state_reason
                t0 = time.perf_counter()
                # Strength 0: the image travels all the same; the model need not encode it.
                c.set_scene(side, side, layers, background_image=canvas, background_strength=0.0)
                sends.append((time.perf_counter() - t0) * 1000)
                ev = c.wait_for(lambda e: isinstance(e, (SceneEvent, ErrorEvent)), 1200)
                replies.append((time.perf_counter() - t0) * 1000)
                sent = c.last_update_bytes
                outcome = f"{ev.regions} regions" if isinstance(ev, SceneEvent) else getattr(ev, "code", "none")
                c.close()
            med = statistics.median
            print(
                f"| {side}² × {n} + image | {raw / 2**20:.1f} | {sent / 2**20:.1f} | {med(sends):.0f} | "
                f"{med(replies):.0f} | {outcome} |",
                flush=True,
            )
    finally:
        proc.terminate()
        proc.wait(60)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--sides", type=int, nargs="+", default=[512, 1024])
    p.add_argument("--encodings", nargs="+", default=["raw", "webp", "jpeg", "png"])
    p.add_argument("--seconds", type=float, default=5.0)
    p.add_argument("--model", default="tiny")
    p.add_argument("--engine-side", type=int, default=256)
    p.add_argument("--device")
    p.add_argument("--threads", type=int)
    p.add_argument("--skip-transport", action="store_true")
    p.add_argument("--skip-overhead", action="store_true")
    p.add_argument("--scenes", nargs="*", metavar="SIDExN", help="part 3: full updates of SIDE² with N regions")
    p.add_argument("--repeat", type=int, default=3, help="runs per scene (part 3; the median is shown)")
    p.add_argument(
        "--image",
        choices=["painting", "noise"],
        default="painting",
        help="the still frame: painting-like (default) or uniform noise (worst case for compression)",
    )
    p.add_argument("--serve-still", nargs=2, type=int, metavar=("PORT", "SIDE"), help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.serve_still:
        port, side = args.serve_still
        serve_still(port, side, args.image)
        return
    if not args.skip_transport:
        transport(args.sides, args.encodings, args.seconds, args.image)
        print()
    if not args.skip_overhead:
        overhead(args.model, args.engine_side, args.seconds, args.device, args.threads)
    if args.scenes:
        print()
        scenes(args.scenes, args.model, args.threads, args.repeat)


if __name__ == "__main__":
    main()

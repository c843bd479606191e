"""Cluster benchmark: what the cluster's frame path adds over the single-process daemon.

Two daemons on this machine, side by side, with the same instant engine (it
returns a fixed painting-like frame, so only the daemons' own paths are
measured):

- single: ``server.Server`` with the engine in its engine-loop thread;
- cluster: ``cluster.ClusterServer`` (the front end) with one
  ``cluster.worker.EngineWorker`` in a separate process, connected exactly as
  a Ray actor connects: over a socket file (``ipc``, what ``--ray local``
  uses) or over CURVE-encrypted TCP (``tcp``, what workers on other machines
  use). Ray places, restarts and stops workers but carries no frames, so it
  is left out here.

Each frame carries the moment the engine made it (64 black/white 16-px
blocks in its top rows, which JPEG keeps), so *latency* is measured end to
end: engine → daemon(s) → client → decoded pixels. Latency rounds stream one
client at a gentle 30 frames/s (frames never queue); throughput rounds
stream several clients as fast as they acknowledge. Rounds alternate
between the two daemons.

    python benchmarks/bench_cluster.py                       # 512², raw and jpeg
    python benchmarks/bench_cluster.py --side 1024 --clients 4

Prints Markdown tables for docs/benchmarks.md. Not a test: no pass/fail.
"""

from __future__ import annotations

import argparse
import io
import multiprocessing
import os
import statistics
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from bench_transport import StillEngine, _StillStream, free_port  # noqa: E402

BITS = 64
BLOCK = 16


class StampEngine(StillEngine):
    """An instant engine whose every frame tells when it was made."""

    def open_stream(self, scene, revision=0, plan=None):
        return _StampStream(self, revision)


class _StampStream(_StillStream):
    def step(self):
        frame = super().step()
        assert frame.image is not None, "a still stream's frames carry the engine's picture"
        image = frame.image.copy()
        stamp = int(time.time() * 1e6)
        for k in range(BITS):
            y, x = (k // 32) * BLOCK, (k % 32) * BLOCK
            image[y : y + BLOCK, x : x + BLOCK] = 255 if (stamp >> k) & 1 else 0
        frame.image = image
        return frame


def read_stamp(pixels) -> float:
    """When the engine made the frame (``time.time()``), from its top rows."""
    stamp = 0
    for k in range(BITS):
        y, x = (k // 32) * BLOCK + BLOCK // 2, (k % 32) * BLOCK + BLOCK // 2
        stamp |= int(pixels[y, x].mean() > 127) << k
    return stamp / 1e6


# --- the two daemons (each in its own process) ------------------------------------------------


def serve_single(port: int, side: int) -> None:
    from smd_daemon.server import Limits, Server

    srv = Server(StampEngine(side, "painting"), {"name": "stamp"}, f"tcp://127.0.0.1:{port}", Limits(max_fps=1000))
    srv.start()
    print("serving", flush=True)
    srv.serve_forever()


def run_worker(address: str, keys, side: int) -> None:
    from smd_daemon.cluster.worker import EngineWorker

    w = EngineWorker("w0", address, keys, 2**30, node="127.0.0.1", device="cpu")
    w.connect()
    w.serve(StampEngine(side, "painting"), {"name": "stamp"})
    parent = os.getppid()
    while os.getppid() == parent:  # until the front end is gone
        time.sleep(0.5)


def serve_cluster(port: int, side: int, channel: str, folder: str) -> None:
    from smd_daemon.cluster.frontend import ClusterServer
    from smd_daemon.server import Limits

    srv = ClusterServer(f"tcp://127.0.0.1:{port}", Limits(max_fps=1000, max_sessions=64), None, per_worker=64)
    srv.open_socket()
    address = srv.open_worker_socket("tcp://127.0.0.1" if channel == "tcp" else f"ipc://{folder}/workers")
    srv.dispatcher.add_worker("w0")
    worker = multiprocessing.get_context("spawn").Process(
        target=run_worker, args=(address, srv.worker_keys(), side), daemon=True
    )
    worker.start()
    while srv.dispatcher.workers["w0"].state != "ready":
        if srv.dispatcher.sock.poll(100):
            srv.dispatcher.on_readable()
    srv.model_info = {"name": "stamp"}
    srv.start()
    print("serving", flush=True)
    srv.serve_forever()


# --- clients --------------------------------------------------------------------------------------


def _pixels(ev, side: int):
    import numpy as np
    from PIL import Image

    if ev.encoding == "raw":
        return np.frombuffer(ev.data, np.uint8).reshape(side, side, 3)
    return np.asarray(Image.open(io.BytesIO(ev.data)).convert("RGB"))


def _clients(address: str, n: int, side: int, encoding: str, max_fps: float):
    from smd_daemon.client import Client, FrameEvent, Layer, StateEvent

    out = []
    for i in range(n):
        c = Client(address, name=f"bench{i}")
        c.connect()
        assert c.wait_for(lambda e: isinstance(e, StateEvent) and e.state == "connected", 60), c.state_reason
        c.set_scene(side, side, [Layer("1", "a red fox", bytes([255]) * (side * side))], background_prompt="snow")
        c.start_live(encoding, max_fps=max_fps)
        assert c.wait_for(lambda e: isinstance(e, FrameEvent) and e.encoding == encoding, 60), "no frames"
        out.append(c)
    return out


def latency(address: str, side: int, encoding: str, seconds: float) -> list[float]:
    """End-to-end milliseconds per frame, one client at 30 frames/s."""
    from smd_daemon.client import FrameEvent

    (c,) = _clients(address, 1, side, encoding, 30)
    out = []
    end = time.perf_counter() + seconds
    while time.perf_counter() < end:
        for ev in c.poll(timeout_ms=5):
            if isinstance(ev, FrameEvent):
                pixels = _pixels(ev, side)
                out.append((time.time() - read_stamp(pixels)) * 1000)
    c.close()
    return out[3:]  # the first frames wait for the stream to start


def _throughput_process(address, n, side, encoding, seconds, queue) -> None:
    """``n`` bare protocol clients that acknowledge every frame at once: cheap
    enough that the daemons, not the clients, set the pace."""
    import json

    import zmq

    from smd_daemon import protocol

    ctx = zmq.Context()
    socks = []
    for _ in range(n):
        s = ctx.socket(zmq.DEALER)
        s.setsockopt(zmq.LINGER, 0)
        s.connect(address)
        for type_, parts, fields in (
            ("hello", (), {"protocol": protocol.PROTOCOL_VERSION, "client": "bench"}),
            ("open", (), {}),
            (
                "update",
                [bytes([255]) * (side * side)],
                {
                    "revision": 1,
                    "full": True,
                    "width": side,
                    "height": side,
                    "layers": [{"key": "1", "name": "a red fox", "alpha": {"part": 0}}],
                },
            ),
            ("live_start", (), {"encoding": encoding, "max_fps": 1000}),
        ):
            s.send_multipart(protocol.encode(type_, parts, **fields))
        socks.append(s)
    poller = zmq.Poller()
    for s in socks:
        poller.register(s, zmq.POLLIN)
    count, t0, last_ping = 0, None, time.perf_counter()
    while t0 is None or time.perf_counter() - t0 < seconds:
        for s, _ in poller.poll(100):
            while True:
                try:
                    frames = s.recv_multipart(zmq.NOBLOCK, copy=False)
                except zmq.Again:
                    break
                h = json.loads(frames[0].bytes)
                if h["type"] == "frame":
                    s.send_multipart(protocol.encode("ack", seq=h["seq"], token=h["token"]))
                    if t0 is None:
                        t0 = time.perf_counter()
                    count += 1
        if time.perf_counter() - last_ping > 1:  # heartbeats
            last_ping = time.perf_counter()
            for s in socks:
                s.send_multipart(protocol.encode("ping"))
    queue.put((count, time.perf_counter() - t0))
    for s in socks:
        s.send_multipart(protocol.encode("close"))
    ctx.destroy(linger=100)


def throughput(address: str, clients: int, side: int, encoding: str, seconds: float, processes: int):
    """(frames per second, frames) all clients together received and acknowledged."""
    ctx = multiprocessing.get_context("spawn")
    queue = ctx.Queue()
    per = [clients // processes + (i < clients % processes) for i in range(processes)]
    procs = [
        ctx.Process(target=_throughput_process, args=(address, n, side, encoding, seconds, queue)) for n in per if n
    ]
    for p in procs:
        p.start()
    results = [queue.get(timeout=seconds + 120) for _ in procs]
    for p in procs:
        p.join(30)
    return sum(n / t for n, t in results), sum(n for n, _ in results)


def cpu_seconds(pid: int) -> float:
    """CPU time (user + system, all threads) a process and its children have used so far."""
    total = 0.0
    for child in [pid] + _children(pid):
        try:
            with open(f"/proc/{child}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()
            total += (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
        except OSError:
            pass
    return total


def _children(pid: int) -> list[int]:
    try:
        with open(f"/proc/{pid}/task/{pid}/children") as f:
            return [int(x) for x in f.read().split()]
    except OSError:
        return []


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--side", type=int, default=512)
    p.add_argument("--encodings", nargs="+", default=["raw", "jpeg"])
    p.add_argument("--seconds", type=float, default=5.0, help="per round")
    p.add_argument("--rounds", type=int, default=2, help="alternating rounds per daemon and measurement")
    p.add_argument("--clients", type=int, default=8, help="clients in the throughput rounds")
    p.add_argument("--client-processes", type=int, default=1)
    p.add_argument("--serve", nargs=4, metavar=("KIND", "PORT", "SIDE", "FOLDER"), help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.serve:
        kind, port, side, folder = args.serve
        if kind == "single":
            serve_single(int(port), int(side))
        else:
            serve_cluster(int(port), int(side), kind.split("-")[1], folder)
        return
    if args.side < 32 * BLOCK:
        p.error(f"--side must be at least {32 * BLOCK} (the time stamp's blocks)")

    import shutil
    import subprocess
    import tempfile

    env = dict(os.environ, PYTHONPATH=ROOT)
    folder = tempfile.mkdtemp(prefix="smd-bench-")
    daemons, procs = {}, []
    try:
        for kind in ("single", "cluster-ipc", "cluster-tcp"):
            port = free_port()
            proc = subprocess.Popen(
                [sys.executable, __file__, "--serve", kind, str(port), str(args.side), folder],
                env=env,
                stdout=subprocess.PIPE,
                text=True,
            )
            procs.append(proc)
            assert proc.stdout is not None  # stdout=PIPE
            assert proc.stdout.readline().strip() == "serving", f"{kind} daemon did not start"
            daemons[kind] = f"tcp://127.0.0.1:{port}"
        pids = dict(zip(daemons, (proc.pid for proc in procs)))
        lat = {(k, e): [] for k in daemons for e in args.encodings}
        fps = {(k, e): [] for k in daemons for e in args.encodings}
        cpu = {(k, e): [] for k in daemons for e in args.encodings}  # CPU ms per frame: daemon, worker
        for _ in range(args.rounds):
            for enc in args.encodings:
                for kind, address in daemons.items():
                    lat[kind, enc] += latency(address, args.side, enc, args.seconds)
                for kind, address in daemons.items():
                    worker = (_children(pids[kind]) or [0])[-1] if kind != "single" else 0
                    before = (cpu_seconds(pids[kind]) - cpu_seconds(worker), cpu_seconds(worker))
                    rate, frames = throughput(
                        address, args.clients, args.side, enc, args.seconds, args.client_processes
                    )
                    after = (cpu_seconds(pids[kind]) - cpu_seconds(worker), cpu_seconds(worker))
                    fps[kind, enc].append(rate)
                    cpu[kind, enc].append([(a - b) * 1000 / frames for a, b in zip(after, before)])
    finally:
        for proc in procs:
            proc.terminate()
            proc.wait(30)
        shutil.rmtree(folder, ignore_errors=True)

    med = statistics.median
    print(
        f"| frame | encoding | daemon | latency ms | added by the cluster ms | frames/s ({args.clients} clients) | "
        f"CPU ms per frame: daemon or front end | worker |"
    )
    print("|---|---|---|---|---|---|---|---|")
    for enc in args.encodings:
        single = med(lat["single", enc])
        for kind in daemons:
            lt = med(lat[kind, enc])
            added = f"{lt - single:+.2f}" if kind != "single" else ""
            worker = f"{med(x[1] for x in cpu[kind, enc]):.2f}" if kind != "single" else ""
            print(
                f"| {args.side}² | {enc} | {kind} | {lt:.2f} | {added} | {med(fps[kind, enc]):.0f} | "
                f"{med(x[0] for x in cpu[kind, enc]):.2f} | {worker} |",
                flush=True,
            )
    print(
        f"\n(latency: median of {min(len(v) for v in lat.values())}+ frames per cell; frames/s and CPU: median "
        f"of {args.rounds} rounds of {args.seconds:g} s)"
    )


if __name__ == "__main__":
    main()

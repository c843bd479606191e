"""The daemon under hostile and uneven load: real ``smd-daemon serve --model tiny``
processes on loopback, raw ZeroMQ sockets and the client library.

    python benchmarks/bench_hostile.py                  # every part
    python benchmarks/bench_hostile.py flood fairness   # some parts

Parts: flood (hello answers under a flood before hello), bomb (a 28 KiB update
asking for 4096x4096 x 16 layers; pings while a big update is decoded and
planned), fairness (a 128x128 session's frame rate next to a 2048x2048 one),
sigterm (time to exit), blind_acks (a client that acknowledges without
reading), batching (8 live sessions), fake_daemon (the other way round: what a
fake daemon's 1 GiB part, wrong sizes and PNG bomb cost a client process and
the plugin's decoder; ``--before DIR`` measures another checkout's code too).
Each prints a Markdown table row set.
"""

from __future__ import annotations

import argparse
import os
import signal
import statistics
import sys
import threading
import time
import zlib

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
sys.path.insert(0, os.path.join(ROOT, "tests"))

import zmq  # noqa: E402
from daemon_util import Daemon, Raw, connect, free_port  # noqa: E402

from smd_daemon import protocol  # noqa: E402
from smd_daemon.client import ErrorEvent, FrameEvent, Layer, SceneEvent  # noqa: E402


def rss_mib(pid: int) -> float:
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return float("nan")


def half(side: int) -> bytes:
    return (b"\xff" * (side // 2) + bytes(side - side // 2)) * side


def started(*flags: str) -> Daemon:
    d = Daemon("--max-fps", "1000", *flags)
    d.wait_serving()
    return d


def count_frames(clients, seconds: float) -> list[float]:
    n = [0] * len(clients)
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        for i, c in enumerate(clients):
            n[i] += sum(isinstance(e, FrameEvent) for e in c.poll(timeout_ms=1))
    return [x / seconds for x in n]


def live(address: str, side: int, name: str, timeout: float = 30):
    c = connect(address, name=name, timeout=timeout)
    c.set_scene(side, side, [Layer("1", "a red fox", half(side))], background_prompt="snow")
    c.start_live("raw")
    return c


# --- 1. a flood before hello ---------------------------------------------------


def flood(args) -> None:
    print(
        "| flood (one connection, 1-byte garbage, never says hello) | sent | hellos answered | median | max "
        "| new client connected in | log lines |"
    )
    print("|---|---|---|---|---|---|---|")
    for rate in (1000, 0):
        d = started()
        try:
            stop, sent = threading.Event(), [0]

            def run():
                ctx = zmq.Context()
                s = ctx.socket(zmq.DEALER)
                s.setsockopt(zmq.SNDHWM, 100000)
                s.setsockopt(zmq.LINGER, 0)
                s.connect(d.address)
                t0 = time.monotonic()
                while not stop.is_set():
                    if rate and sent[0] >= rate * (time.monotonic() - t0):
                        time.sleep(0.0005)
                        continue
                    try:
                        s.send(b"x", zmq.NOBLOCK)
                        sent[0] += 1
                    except zmq.Again:
                        time.sleep(0.001)
                s.close()
                ctx.term()

            lines0 = len(d.text().splitlines())
            th = threading.Thread(target=run)
            th.start()
            t_start = time.monotonic()
            time.sleep(2)
            lat = []
            for _ in range(32):
                r = Raw(d.address)
                t = time.monotonic()
                r.send("hello", protocol=protocol.PROTOCOL_VERSION, client="probe")
                m = r.recv(5.0)
                if m is not None and m.type == "welcome":
                    lat.append((time.monotonic() - t) * 1000)
                r.close()
            t = time.monotonic()
            c = connect(d.address, name="artist", timeout=30)
            connect_ms = (time.monotonic() - t) * 1000
            c.close()
            time.sleep(max(0.0, 25 - (time.monotonic() - t_start)))
            stop.set()
            th.join()
            lines = [
                line
                for line in d.text().splitlines()[lines0:]
                if "probe" not in line and "artist" not in line and "session" not in line
            ]
            print(
                f"| {rate or 'as fast as possible'} msg/s for 25 s | {sent[0]} | {len(lat)}/32 | "
                f"{statistics.median(lat):.1f} ms | {max(lat):.1f} ms | {connect_ms:.0f} ms | {len(lines)} |"
            )
        finally:
            d.stop()
            d.close()


# --- 2. one session's scene costs everyone -------------------------------------


def bomb(args) -> None:
    side, layers = 4096, 16
    part = zlib.compress(b"\xff" * (side * side), 9)  # every layer paints the whole canvas: 16 regions
    entries = [{"key": str(i), "name": f"a fox {i}", "alpha": {"part": 0, "encoding": "zlib"}} for i in range(layers)]
    print(
        f"One update of {len(part) // 1024} KiB asking for {side}² x {layers} layers (every layer's alpha points "
        f"at the same zlib part), next to a live 128² viewer and a client that pings:\n"
    )
    print(
        "| daemon | answer (after) | the daemon's count for the session | RSS before → after | ping round trip "
        "meanwhile (median / max) | longest gap between the viewer's frames (its usual gap) |"
    )
    print("|---|---|---|---|---|---|")
    for flags, label in (
        ((), "default limits, no update (the machine's own jitter, 60 s)"),
        (("--max-memory", "1"), "--max-memory 1 (1 GiB per session)"),
        ((), "default limits"),
    ):
        d = started("--log-level", "debug", *flags)
        try:
            watcher = Raw(d.address)
            watcher.handshake(open_session=False)
            viewer = live(d.address, 128, "viewer")
            count_frames([viewer], 3)
            usual = 1000 / max(0.1, count_frames([viewer], 5)[0])
            raw = Raw(d.address)
            raw.handshake()
            before = rss_mib(d.proc.pid)
            t0 = time.monotonic()
            baseline = label.startswith("default limits, no update")
            if not baseline:
                raw.send("update", [part], revision=1, full=True, width=side, height=side, layers=entries)
            rtts, gaps, last, answer = [], [], time.monotonic(), None
            while answer is None and time.monotonic() - t0 < (60 if baseline else 1200):
                m = raw.recv(0.0)
                if m is not None and m.type in ("scene", "error"):
                    answer = m
                if len(rtts) % 20 == 0:
                    raw.send("ping")  # the bomb's own session stays alive while it is planned
                t = time.monotonic()
                watcher.send("ping")
                watcher.expect("pong", 30)
                rtts.append((time.monotonic() - t) * 1000)
                for e in viewer.poll(timeout_ms=20):
                    if isinstance(e, FrameEvent):
                        gaps.append((time.monotonic() - last) * 1000)
                        last = time.monotonic()
            took = time.monotonic() - t0
            kept = [line for line in d.text().splitlines() if " keeps " in line and "MiB" in line]
            count = kept[-1].split(" keeps ")[1].split(" MiB")[0] + " MiB" if answer and answer.type == "scene" else "-"
            what = "-" if answer is None else answer.type if answer.type != "error" else f"`{answer.header['code']}`"
            print(
                f"| {label} | {what} ({took:.1f} s) | {count} | {before:.0f} → {rss_mib(d.proc.pid):.0f} MiB | "
                f"{statistics.median(rtts):.1f} / {max(rtts):.1f} ms ({len(rtts)} pings) | "
                f"{max(gaps or [0]):.0f} ms ({usual:.0f} ms) |"
            )
            for c in (raw, watcher):
                c.close()
            viewer.close()
        finally:
            d.stop()
            d.close()


# --- 3. fair in time -------------------------------------------------------------


def fairness(args) -> None:
    d = started()
    try:
        small = live(d.address, 128, "small")
        count_frames([small], 5)
        solo_before = count_frames([small], args.seconds)[0]
        big = live(d.address, args.big, "big", timeout=60)
        first = big.wait_for(lambda e: isinstance(e, FrameEvent), 600)
        assert first is not None, "the big canvas made no frame"
        small.poll(0)
        rates = count_frames([small, big], args.seconds * 3)
        big.close()
        time.sleep(2)
        small.poll(0)
        solo_after = count_frames([small], args.seconds)[0]
        solo = statistics.mean([solo_before, solo_after])
        print("| 128² session | frames/s |")
        print("|---|---|")
        print(f"| alone (before, after) | {solo_before:.2f}, {solo_after:.2f} |")
        print(
            f"| next to a live {args.big}² session | {rates[0]:.2f} ({rates[0] / solo:.2f} of alone; "
            f"the {args.big}² session: {rates[1]:.3f} frames/s) |"
        )
        small.close()
    finally:
        d.stop()
        d.close()


# --- 4. SIGTERM -------------------------------------------------------------------


def sigterm(args) -> None:
    print("| daemon state when SIGTERM arrives | exit status | seconds to exit |")
    print("|---|---|---|")
    for label in ("loading the model", "planning a 4096² canvas", "stepping a 2048² canvas", "idle"):
        d = Daemon()
        c = None
        try:
            if label == "loading the model":
                while "loading model" not in d.text():
                    time.sleep(0.01)
            elif label == "idle":
                d.wait_serving()
                time.sleep(1)
            elif label.startswith("planning"):
                # A 4096² background image is 121 VAE tiles to encode: many seconds of planning.
                d.wait_serving()
                c = connect(d.address, name="huge")
                side = 4096
                c.set_scene(
                    side,
                    side,
                    [Layer("1", "a red fox", half(side))],
                    background_prompt="snow",
                    background_image=zlib.compress(bytes(range(256)) * (side * side * 3 // 256), 1),
                    background_image_encoding="zlib",
                    background_strength=0.5,
                )
                assert c.wait_for(lambda e: isinstance(e, (SceneEvent, ErrorEvent)), 3) is None  # still planning
            else:
                d.wait_serving()
                c = live(d.address, 2048, "big", timeout=60)
                assert c.wait_for(lambda e: isinstance(e, FrameEvent), 600) is not None
                c.wait_for(lambda e: False, 2)
            t = time.monotonic()
            d.proc.send_signal(signal.SIGTERM)
            rc = d.proc.wait(60)
            print(f"| {label} | {rc} | {time.monotonic() - t:.2f} |")
        finally:
            if c is not None:
                c.close()
            d.close()


# --- 6. acks without reading -----------------------------------------------------


def blind_acks(args) -> None:
    d = started()
    try:
        raw = Raw(d.address)
        raw.handshake()
        side = 512
        raw.send(
            "update",
            [half(side)],
            revision=1,
            full=True,
            width=side,
            height=side,
            layers=[{"key": "1", "name": "a red fox", "alpha": {"part": 0}}],
        )
        raw.expect("scene", 60)
        raw.send("live_start", encoding="raw")
        raw.expect("live")
        time.sleep(3)
        before = rss_mib(d.proc.pid)
        t0 = time.monotonic()
        seq = 0
        while time.monotonic() - t0 < args.seconds:
            seq += 1
            raw.send("ack", seq=seq, token=seq)  # as if every frame had been read
            time.sleep(0.05)
        after = rss_mib(d.proc.pid)
        got = []
        while (m := raw.recv(1.0)) is not None:
            if m.type == "frame":
                got.append(m)
        oldest = time.time() - min(m.header["sent_at"] for m in got) if got else 0
        print(
            "| client acknowledging without reading, 512² raw frames | frames it was sent | daemon RSS over the "
            "run | oldest frame waiting |"
        )
        print("|---|---|---|---|")
        print(
            f"| {args.seconds:.0f} s, {seq} blind acks | {len(got)} | {before:.0f} → {after:.0f} MiB | {oldest:.0f} s |"
        )
        raw.close()
    finally:
        d.stop()
        d.close()


# --- 8. batching ------------------------------------------------------------------


def batching(args) -> None:
    d = started()
    try:
        clients = [live(d.address, 128, f"soak{i}") for i in range(8)]
        count_frames(clients, 5)
        batches = []
        end = time.monotonic() + args.seconds
        while time.monotonic() < end:
            for c in clients:
                batches += [e.header["batch"] for e in c.poll(timeout_ms=1) if isinstance(e, FrameEvent)]
        sizes = sorted(set(batches))
        print("| 8 live 128² sessions | frames | sessions per engine call: share of frames |")
        print("|---|---|---|")
        print(
            f"| {args.seconds:.0f} s | {len(batches)} | "
            + ", ".join(f"{b}: {batches.count(b) / len(batches):.0%}" for b in sizes)
            + " |"
        )
        for c in clients:
            c.close()
    finally:
        d.stop()
        d.close()


def fake_daemon(args) -> None:
    from hostile_daemon import BAD, HostileDaemon, decode_bomb, png_bomb, probe

    png_bomb()
    print(
        "| code of | client peak RSS MB | bad frames told (of 4) | plugin decoder: bomb refused, peak RSS growth MB |"
    )
    print("|---|---|---|---|")
    for root in [ROOT] + ([args.before] if args.before else []):
        fake = HostileDaemon(f"tcp://127.0.0.1:{free_port()}", plan=BAD)
        fake.start()
        try:
            out = probe(fake.address, 256, 4, root)
        finally:
            fake.stop()
        refused, grew = decode_bomb(root)
        told = sum(code == "bad_frame" for code, _ in out["errors"])
        name = "this checkout" if root == ROOT else root
        print(f"| {name} | {out['rss']:.0f} | {told} | {'yes' if refused else 'no'}, {grew:.0f} |", flush=True)


PARTS = {
    "flood": flood,
    "bomb": bomb,
    "fairness": fairness,
    "sigterm": sigterm,
    "blind_acks": blind_acks,
    "batching": batching,
    "fake_daemon": fake_daemon,
}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("parts", nargs="*", metavar="PART", help=f"any of {', '.join(PARTS)} (default: all)")
    p.add_argument("--seconds", type=float, default=20, help="length of each measurement window")
    p.add_argument("--big", type=int, default=2048, help="side of the big canvas in the fairness part")
    p.add_argument("--before", metavar="DIR", help="fake_daemon: also measure the checkout in DIR")
    args = p.parse_args()
    unknown = [x for x in args.parts if x not in PARTS]
    if unknown:
        p.error(f"unknown part {unknown[0]!r}: use {', '.join(PARTS)}")
    for name in args.parts or PARTS:
        print(f"\n### {name}\n", flush=True)
        PARTS[name](args)


if __name__ == "__main__":
    main()

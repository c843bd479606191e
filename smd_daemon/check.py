"""``smd-daemon check``: can this machine reach a daemon, and does it draw?

For artists and operators setting up a remote daemon: it connects exactly as
the Krita plugin does (same client library, same keys), prints what the
daemon says about itself, and with ``--render`` asks for one small image and
times it. Exit status 0 when all of that worked, 2 with one line otherwise.
"""

from __future__ import annotations

import argparse
import math
import os
import sys
import time
from typing import NoReturn

from smd_daemon.errors import UsageError


def configure(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "address",
        nargs="?",
        default="127.0.0.1:7555",
        help="daemon address: HOST, HOST:PORT, tcp://HOST:PORT, [IPv6]:PORT or ipc://PATH "
        "(default 127.0.0.1:7555; the port defaults to 7555)",
    )
    parser.add_argument("--server-key", help="the daemon's public key file (server.key) for a remote daemon")
    parser.add_argument("--client-key", help="your secret key file (NAME.key_secret) for a remote daemon")
    parser.add_argument("--timeout", type=float, default=10.0, help="seconds to wait for each answer")
    parser.add_argument("--render", action="store_true", help="also render one 256x256 test image")


def _fail(message: str) -> NoReturn:
    raise UsageError(message)


def no_answer(address: str, timeout: float, keyed: bool = False) -> str:
    """What to say when nothing answers: the question to ask first, then what to check."""
    from smd_daemon import protocol

    key = ", and is your key authorised there (smd-daemon keys DIR --client NAME)" if keyed else ""
    if protocol.is_local_address(address) and not keyed:
        return (
            f"no answer from {address} within {timeout:g} s: is the daemon running? "
            f"Start it with '{serve_command()} serve'"
        )
    if protocol.is_local_address(address):
        return f"no answer from {address} within {timeout:g} s: is the daemon running{key}?"
    return (
        f"no answer from {address} within {timeout:g} s: is the daemon running there, is the address right "
        f"and its port open to this machine{key}?"
    )


def serve_command() -> str:
    """How to start the daemon from here: the smd-daemon beside this Python (a venv's bin/), if any."""
    here = os.path.join(os.path.dirname(sys.executable), "smd-daemon" + (".exe" if os.name == "nt" else ""))
    return here if os.path.isfile(here) else "smd-daemon"


def run(args) -> int:
    import zmq
    import zmq.auth

    from smd_daemon.client import CONNECTED, Client, ErrorEvent, FrameEvent, Layer, StateCode, StateEvent
    from smd_daemon.protocol import normalize_address

    try:
        args.address = normalize_address(args.address)
    except ValueError as e:
        _fail(str(e))
    if not (math.isfinite(args.timeout) and args.timeout > 0):
        _fail(f"--timeout must be a number of seconds above 0, not {args.timeout:g}")
    if bool(args.server_key) != bool(args.client_key):
        _fail("give both --server-key and --client-key (or neither, for a daemon on this machine)")
    server_key = None
    if args.server_key:
        for path in (args.server_key, args.client_key):
            if not os.path.isfile(path):
                _fail(f"key file {path} does not exist")
        try:
            server_key = zmq.auth.load_certificate(args.server_key)[0]
            if zmq.auth.load_certificate(args.client_key)[1] is None:
                _fail(f"{args.client_key} holds no secret key: use the NAME.key_secret file")
        except (ValueError, OSError) as e:
            _fail(f"cannot read the key files: {e}")
    client = Client(
        args.address,
        name="smd-daemon check",
        server_public_key=server_key,
        client_secret_file=args.client_key,
        timeout=args.timeout,
    )
    try:
        client.connect()
        t0 = time.monotonic()
        ev = client.wait_for(
            lambda e: (
                isinstance(e, StateEvent)
                and (e.state == CONNECTED or e.code in (StateCode.AUTH_FAILED, StateCode.REFUSED))
            ),
            timeout=args.timeout,
        )
        if ev is not None and ev.code == StateCode.AUTH_FAILED:
            _fail(
                ev.reason
                + (
                    " (it is not authorised there: ask for it to be added to the daemon's authorized folder)"
                    if server_key is not None
                    else ""
                )
            )
        if ev is not None and ev.code == StateCode.REFUSED:
            _fail(f"the daemon at {args.address} refused the connection: {ev.reason}")
        if ev is None:
            _fail(no_answer(args.address, args.timeout, keyed=server_key is not None))
        model, limits = client.info.get("model", {}), client.limits
        daemon = client.info.get("daemon") or {}
        print(
            f"connected to {args.address} in {(time.monotonic() - t0) * 1000:.0f} ms "
            f"({daemon.get('name', 'daemon')} {daemon.get('version', '?')}, "
            f"protocol {client.info.get('protocol', '?')})"
        )
        print(
            f"model: {model.get('name', '?')} on {model.get('device', '?')} {model.get('dtype', '')}"
            + ("" if model.get("meaningful", True) else "  (random weights: no meaningful images)")
        )
        print("limits: " + ", ".join(f"{k}={v}" for k, v in sorted(limits.items())))
        workers = client.info.get("workers") or []
        if workers:  # a cluster daemon: its engine workers
            print(f"workers: {sum(w.get('state') == 'ready' for w in workers)} of {len(workers)} ready")
            for w in workers:
                print(
                    f"  {w.get('id', '?')}: {w.get('state', '?')}, node {w.get('node') or '?'}, "
                    f"{w.get('device') or '?'}, {w.get('sessions', 0)} sessions, {w.get('fps', 0):.1f} frames/s"
                    + (f", engine {100 * w['load']:.0f}% busy" if w.get("load") else "")
                    + (f" ({w['error']})" if w.get("error") else "")
                )
        if args.render:
            side = 256
            alpha = bytes([255]) * (side * side // 2) + bytes(side * side // 2)  # top half
            client.set_scene(side, side, [Layer("check", "a red fox", alpha)], background_prompt="a meadow")
            t1 = time.monotonic()
            job = client.generate(encoding="png")
            ev = client.wait_for(
                lambda e: (
                    isinstance(e, (FrameEvent, ErrorEvent))
                    and (getattr(e, "job", None) == job or getattr(e, "re", None) == job or isinstance(e, ErrorEvent))
                ),
                timeout=max(args.timeout, 120),
            )
            if ev is None:
                _fail(f"the daemon did not return the test image within {max(args.timeout, 120):g} s")
            if isinstance(ev, ErrorEvent):
                _fail(f"the daemon refused the test image: {ev.code}: {ev.message}")
            print(
                f"test image: {ev.width}x{ev.height} {ev.encoding}, {len(ev.data)} bytes in "
                f"{(time.monotonic() - t1) * 1000:.0f} ms"
            )
    finally:
        client.close()
    return 0

"""Whom a real daemon refuses and what its log says: shares per origin, and
handshake refusals in the log (``smd-daemon serve --model tiny`` on loopback).

    python benchmarks/bench_refusals.py                 # both parts
    python benchmarks/bench_refusals.py origins         # one process, many sessions
    python benchmarks/bench_refusals.py log --count 200 # refused handshakes

Parts: origins (one process with alice's key opens 8 sessions and 16 more
connections, then bob connects; with the default share and with a share as
large as the whole daemon, as before there were shares), log (clients
without encryption, and encrypting to another server key, each opening a
new connection COUNT times: how many the daemon counted, how many with their
address, how many log lines). Each prints a Markdown table.
"""

from __future__ import annotations

import argparse
import os
import re
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
sys.path.insert(0, os.path.join(ROOT, "tests"))

import zmq  # noqa: E402
import zmq.auth  # noqa: E402
from daemon_util import Daemon, Raw, run_cli  # noqa: E402

from smd_daemon import protocol  # noqa: E402
from smd_daemon.client import Client, StateEvent  # noqa: E402


def make_keys(folder: str) -> tuple[bytes, dict]:
    assert run_cli("keys", folder, "--client", "alice", "--client", "bob").returncode == 0
    server_public = zmq.auth.load_certificate(os.path.join(folder, "server.key"))[0]
    return server_public, {n: os.path.join(folder, "clients", f"{n}.key_secret") for n in ("alice", "bob")}


def wait_settled(clients, timeout: float = 20) -> None:
    """Until every client is connected or refused."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for c in clients:
            c.poll(0)
        if all(c.state == "connected" or c.state_code == "refused" for c in clients):
            return
        time.sleep(0.02)


def origins(args) -> None:
    print("| alice's share (sessions, connections) | her 8 sessions | her 16 more connections | bob |")
    print("|---|---|---|---|")
    with tempfile.TemporaryDirectory() as tmp:
        server_public, secret = make_keys(os.path.join(tmp, "keys"))
        for share in (None, "all"):
            flags = ["--keys", os.path.join(tmp, "keys")]
            if share is not None:  # as before there were shares: one origin may take everything
                flags += ["--max-sessions-per-origin", "8", "--max-clients-per-origin", "128"]
            d = Daemon(*flags)
            alice, raws = [], []
            try:
                d.wait_serving()
                for _ in range(8):
                    c = Client(
                        d.address, name="alice", server_public_key=server_public, client_secret_file=secret["alice"]
                    )
                    c.connect()
                    alice.append(c)
                wait_settled(alice)
                held = sum(c.state == "connected" for c in alice)
                keys = zmq.auth.load_certificate(secret["alice"])
                refused = 0
                for _ in range(16):
                    raw = Raw(
                        d.address, curve_serverkey=server_public, curve_publickey=keys[0], curve_secretkey=keys[1]
                    )
                    raw.send("hello", protocol=protocol.PROTOCOL_VERSION, client="alice's script")
                    reply = raw.recv(10)
                    refused += reply is not None and reply.type == "error"
                    raws.append(raw)
                t0 = time.perf_counter()
                bob = Client(d.address, name="bob", server_public_key=server_public, client_secret_file=secret["bob"])
                bob.connect()
                ev = bob.wait_for(lambda e: isinstance(e, StateEvent) and e.code in ("", "refused", "auth_failed"), 20)
                bob_text = (
                    f"connected in {(time.perf_counter() - t0) * 1000:.0f} ms"
                    if ev is not None and ev.state == "connected"
                    else f"refused: {bob.state_reason}"
                )
                bob.close()
                print(
                    f"| {'4, 16 (the defaults)' if share is None else '8, 128 (all: as before)'} | {held} held"
                    f"{', the rest refused' if held < 8 else ''} | {16 - refused} welcomed, {refused} refused "
                    f"| {bob_text} |"
                )
            finally:
                for c in alice:
                    c.close()
                for r in raws:
                    r.close()
                d.stop()
                d.close()


def log(args) -> None:
    print("| client | connections | refusals the daemon counted | address read | log lines |")
    print("|---|---|---|---|---|")
    with tempfile.TemporaryDirectory() as tmp:
        server_public, secret = make_keys(os.path.join(tmp, "keys"))
        other_public, _ = zmq.curve_keypair()
        alice = zmq.auth.load_certificate(secret["alice"])
        kinds = {
            "without encryption": ({}, "encryption"),
            "another server key": (
                {"curve_serverkey": other_public, "curve_publickey": alice[0], "curve_secretkey": alice[1]},
                "another server public key",
            ),
        }
        for name, (sockopts, words) in kinds.items():
            d = Daemon("--keys", os.path.join(tmp, "keys"))
            try:
                d.wait_serving()
                ctx = zmq.Context()
                for _ in range(args.count):
                    s = ctx.socket(zmq.DEALER)
                    s.linger = 0
                    for k, v in sockopts.items():
                        setattr(s, k, v)
                    s.connect(d.address)
                    s.send(b"hello")  # queued: the handshake never completes
                    time.sleep(0.02)
                    s.close()
                ctx.term()
                time.sleep(0.5)
                d.stop()
                text = d.text()
            finally:
                d.close()
            summary = re.search(r"refused (\d+) connection\(s\) during the handshake \(the address of (\d+)", text)
            counted, unknown = (int(summary.group(1)), int(summary.group(2))) if summary else (0, 0)
            lines = sum(1 for line in text.splitlines() if "refused a client" in line and words in line)
            read = f"{counted - unknown} ({100 * (counted - unknown) / max(counted, 1):.0f}%)"
            print(f"| {name} | {args.count} | {counted} | {read} | {lines} |")


PARTS = {"origins": origins, "log": log}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("parts", nargs="*", metavar="PART", help=f"any of {', '.join(PARTS)} (default: all)")
    p.add_argument("--count", type=int, default=200, help="connections per kind in the log part")
    args = p.parse_args()
    unknown = [x for x in args.parts if x not in PARTS]
    if unknown:
        p.error(f"unknown part {unknown[0]!r}: use {', '.join(PARTS)}")
    for name in args.parts or PARTS:
        print(f"\n### {name}\n")
        PARTS[name](args)


if __name__ == "__main__":
    main()

"""Krita plugin benchmark, measured inside real Krita (under Xvfb) against a
real ``smd-daemon serve --model tiny``. Prints medians as JSON; the numbers
in docs/benchmarks.md ("## Krita plugin") come from this script.

    HF_HUB_OFFLINE=1 PYTHONPATH=. python benchmarks/bench_krita.py [--side 2048] [--repeats 9]
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "tests" / "krita"))
import harness  # noqa: E402


def main() -> int:
    p = argparse.ArgumentParser(description=(__doc__ or "").partition("\n")[0])
    p.add_argument("--side", type=int, default=2048, help="document side in pixels")
    p.add_argument("--blob", type=int, default=768, help="side of each region's painted square")
    p.add_argument("--out", type=int, default=512, help="output size for the read/write timings")
    p.add_argument("--live-out", type=int, default=256, help="output size of the live end-to-end run")
    p.add_argument("--steps", type=int, default=2)
    p.add_argument("--repeats", type=int, default=9)
    args = p.parse_args()
    why = harness.available()
    if why:
        print(f"bench_krita: error: {why}", file=sys.stderr)
        return 2
    with tempfile.TemporaryDirectory() as tmp, socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
        s.close()
        home = harness.new_home(Path(tmp) / "home")
        res = harness.install_plugin(home)
        if res.returncode:
            print(res.stderr, file=sys.stderr)
            return 1
        harness.install_driver(home)
        env = dict(os.environ, HF_HUB_OFFLINE="1", PYTHONPATH=str(REPO))
        daemon = subprocess.Popen(
            [sys.executable, "-m", "smd_daemon", "serve", "--model", "tiny", "--bind", f"tcp://127.0.0.1:{port}"],
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        try:
            t = time.monotonic()
            result = harness.run(
                home,
                "bench",
                {
                    "side": args.side,
                    "blob": args.blob,
                    "out": args.out,
                    "live_out": args.live_out,
                    "steps": args.steps,
                    "repeats": args.repeats,
                    "address": f"tcp://127.0.0.1:{port}",
                },
                timeout=600,
            )
        finally:
            daemon.kill()
            daemon.wait()
    if result["errors"]:
        print("\n".join(result["errors"]), file=sys.stderr)
        return 1
    checks = result["checks"]
    checks["krita_run_s"] = round(time.monotonic() - t, 1)
    print(json.dumps({"args": vars(args), **checks}, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

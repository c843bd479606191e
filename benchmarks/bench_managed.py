"""The local daemon the docker starts, when Krita ends: seconds from Krita's end until the daemon's
process is gone, inside real Krita (under Xvfb) with the daemon install.py set up (a real
``smd-daemon serve --model tiny --watch-stdin``). Krita ends by SIGKILL (as in a crash: nothing of
the plugin runs) or by File > Quit. Prints medians as JSON; the figures in docs/benchmarks.md
("The docker's daemon when Krita ends") come from this script.

    HF_HUB_OFFLINE=1 python benchmarks/bench_managed.py [--repeats 5]
"""

from __future__ import annotations

import argparse
import json
import socket
import statistics
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(REPO / "tests" / "krita"), str(REPO / "tests")]
import harness  # noqa: E402
from daemon_util import wait_gone  # noqa: E402


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class WatchQuit:
    """A ``during`` for the driver's ``managed`` scenario: its results file appears just before it
    quits Krita through File > Quit; from then, how long the daemon lives on."""

    def __init__(self, home: Path):
        self.out = home / "result-managed.json"
        self.seconds = None

    def __call__(self, proc) -> None:
        if self.seconds is not None or not self.out.exists():
            return
        t = time.monotonic()
        pid = json.loads(self.out.read_text())["checks"]["pid"]
        self.seconds = time.monotonic() - t if wait_gone(pid, 30) else float("inf")


def one_run(base: Path, tmp: Path, how: str) -> float:
    tmp.mkdir()
    home = harness.copy_home(base, tmp / "home")
    venv = harness.daemon_venv(tmp / "venv")
    serve = ["--model", "tiny", "--threads", "1", "--bind", f"127.0.0.1:{free_port()}"]
    res = harness.install_plugin(home, "--daemon-venv", str(venv), "--", *serve)
    if res.returncode:
        raise RuntimeError(res.stderr)
    if how == "sigkill":
        (tmp / "sync").mkdir()
        kill = harness.KillKrita(tmp / "sync")
        try:
            result = harness.run(home, "managed_killed", {"sync": str(tmp / "sync")}, timeout=240, during=kill)
        finally:
            kill.clean_up()
        seconds = kill.seconds if kill.gone else float("inf")
    else:
        watch = WatchQuit(home)
        result = harness.run(home, "managed", {}, timeout=240, during=watch)
        seconds = watch.seconds
    if result["errors"] or seconds is None:
        raise RuntimeError("\n".join(result["errors"] + result["log"][-20:]))
    return seconds


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--repeats", type=int, default=5)
    args = p.parse_args()
    why = harness.available()
    if why:
        print(f"bench_managed: error: {why}", file=sys.stderr)
        return 2
    with tempfile.TemporaryDirectory() as tmp:
        base = harness.new_home(Path(tmp) / "base")
        res = harness.install_plugin(base)
        if res.returncode:
            print(res.stderr, file=sys.stderr)
            return 1
        harness.install_driver(base)
        harness.run(base, "startup", timeout=120)  # Krita's first start builds its caches
        times: dict = {"sigkill": [], "quit": []}
        for i in range(args.repeats):
            for how in times:
                times[how].append(one_run(base, Path(tmp) / f"{how}-{i}", how))
    out = {
        f"{how}_gone_s": {"median": round(statistics.median(t), 3), "max": round(max(t), 3), "runs": len(t)}
        for how, t in times.items()
    }
    print(json.dumps(out, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

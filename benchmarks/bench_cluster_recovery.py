"""How long a private Ray instance (``serve --ray local``) takes to stream again after one of its processes dies.

A real ``smd-daemon serve --ray local --workers 1`` with the tiny model and
one artist streaming live. Each round kills one of the instance's own
processes (found by parentage: the dashboard agent, the runtime-env agent,
the raylet, the GCS) with SIGKILL and times the gap until the artist's next
frame (after the one ``engine_error`` saying no worker is available), and,
from the daemon's log, until the workers were started again and until one
was ready (its model loaded). Rounds
wait until the daemon's standby instance is ready, as it is when failures
are rare; ``cold`` rounds first kill the standby's host, so the daemon must
start Ray from nothing.

    python benchmarks/bench_cluster_recovery.py --rounds 3

Prints a Markdown table for docs/benchmarks.md. Not a test: no pass/fail.
"""

from __future__ import annotations

import argparse
import os
import re
import signal
import statistics
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
sys.path.insert(0, os.path.join(ROOT, "tests"))

from cluster_util import (  # noqa: E402
    NEEDED,
    ClusterDaemon,
    frame_after_an_error,
    node_processes,
    streaming_artist,
    wait_for,
)
from daemon_util import S  # noqa: E402

STANDBY = "a standby Ray instance is ready"
READY = "the private Ray instance runs again"
STARTED = re.compile(r"the workers start on a new Ray instance \(([\d.]+) s after the failure\)")
READY_AT = re.compile(r"the private Ray instance runs again: a worker is ready ([\d.]+) s after the failure")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--rounds", type=int, default=3, help="kills per process")
    p.add_argument("--kill", nargs="+", default=[*NEEDED, "cold"], choices=[*NEEDED, "cold"])
    args = p.parse_args()
    d = ClusterDaemon("--workers", "1", "--max-fps", "10")
    gaps: dict[str, list[float]] = {what: [] for what in args.kill}
    client = None
    try:
        client = streaming_artist(d, "bench")
        standbys = 1
        for _ in range(args.rounds):
            for what in args.kill:
                wait_for(d, STANDBY, standbys, 300)
                node = node_processes(d.proc.pid)
                if what == "cold":
                    os.kill(node["standby host"], signal.SIGKILL)
                    time.sleep(1)
                os.kill(node["raylet" if what == "cold" else what], signal.SIGKILL)
                seconds, _ = frame_after_an_error(client, 300)
                assert seconds is not None, f"no frame after the {what} was killed:\n{d.text()}"
                wait_for(d, READY, standbys, 30)
                started, ready = (float(x) for x in (STARTED.findall(d.text())[-1], READY_AT.findall(d.text())[-1]))
                gaps[what].append((started, ready, seconds))
                standbys += 1
                print(f"{what}: {started:.1f} / {ready:.1f} / {seconds:.1f} s", file=sys.stderr, flush=True)
    finally:
        if client is not None:
            client.close()
        d.close()
    print(
        "| process killed | instance that takes over | workers started again (s after noticed) "
        "| a worker ready (s after noticed) | next frame (s after the kill): median | min | max |"
    )
    print("|---|---|---|---|---|---|---|")
    med = statistics.median
    for what, rounds in gaps.items():
        path = "a new one (no standby)" if what == "cold" else "the standby"
        started, ready, frame = zip(*rounds)
        print(
            f"| {'raylet' if what == 'cold' else what} | {path} | {med(started):.1f} | {med(ready):.1f} | "
            f"{med(frame):.1f} | {min(frame):.1f} | {max(frame):.1f} |"
        )
    print(f"\n({args.rounds} kills per row; tiny model, one worker, one artist at {S}² and 10 frames/s)")


if __name__ == "__main__":
    main()

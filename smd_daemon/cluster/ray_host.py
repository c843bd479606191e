"""The process that runs a daemon's private Ray instance: ``python -m smd_daemon.cluster.ray_host FD LEVEL``.

Ray's driver shares the fate of its node: once the local raylet is gone, the
next call into Ray may end the driver's process (Ray 2.60 exits it, without a
word, when the raylet connection fails). So with ``--ray local`` the daemon is
not Ray's driver: this process is. The daemon (``private_ray.PrivateRay``)
starts it in a session of its own, sends commands as JSON lines on its
stdin, and reads answers and events as JSON lines on file descriptor FD:

- ``{"op": "connect", "id", "num_cpus", "gpus", "temp_dir"}`` -> ``{"re", "resources"}`` or ``{"re", "error"}``
- ``{"op": "start", "worker", "resources", "args"}`` -> later ``{"event": "started", "worker"}`` or
  ``{"event": "failed", "worker", "error"}``
- ``{"op": "stop", "id"}`` -> the instance stopped, ``{"re"}``, and this process ends
- ``{"event": "exited", "kind", "pid", "status"}``: one of the instance's own processes ended. When it
  is the raylet or the GCS, this process ends at once, taking the rest of the instance with it (Ray
  starts its processes to die with their parent), and the daemon starts a new one.

Its stdout and stderr are the daemon's log (the workers' lines come through them).
When its stdin closes (the daemon is gone), it stops the instance and ends.
"""

from __future__ import annotations

import json
import logging
import os
import queue
import sys
import threading

ESSENTIAL = ("raylet", "gcs_server")  # without these no worker runs
POLL_S = 0.2
NODE_DIED = 3  # exit status: the instance's raylet or GCS ended


def _commands(into: queue.Queue) -> None:
    for line in sys.stdin:
        into.put(line)
    into.put(None)


def main(argv: list[str]) -> int:
    out = os.fdopen(int(argv[0]), "w", buffering=1)
    logging.basicConfig(
        level=argv[1].upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s", datefmt="%H:%M:%S"
    )

    def tell(**msg) -> None:
        out.write(json.dumps(msg) + "\n")

    from smd_daemon.cluster.ray_workers import RayCluster
    from smd_daemon.errors import UsageError

    commands: queue.Queue = queue.Queue()
    threading.Thread(target=_commands, args=(commands,), daemon=True).start()
    cluster: RayCluster | None = None
    started: set[str] = set()  # workers whose start was told
    dead: set[tuple[str, int]] = set()  # processes whose end was told
    while True:
        try:
            line = commands.get(timeout=POLL_S)
        except queue.Empty:
            line = ""
        if line is None or (line and json.loads(line)["op"] == "stop"):
            if cluster is not None:
                cluster.stop()
            if line:
                tell(re=json.loads(line)["id"])
            return 0
        if line:
            c = json.loads(line)
            if c["op"] == "connect":
                try:
                    cluster = RayCluster("local")
                    cluster.connect(c["num_cpus"], c["gpus"], c["temp_dir"])
                    tell(re=c["id"], resources=cluster.resources())
                except UsageError as e:
                    tell(re=c["id"], error=str(e))
            elif c["op"] == "start" and cluster is not None:
                address, keys, *rest = c["args"]
                cluster.start(c["worker"], c["resources"], address, tuple(k.encode() for k in keys), *rest)
        if cluster is None:
            continue
        for wid, error in cluster.failures().items():
            tell(event="failed", worker=wid, error=error)
        for wid in set(cluster.started) - started:
            started.add(wid)
            tell(event="started", worker=wid)
        for kind, pid, status in cluster.dead_node_processes():
            if (kind, pid) not in dead:
                dead.add((kind, pid))
                tell(event="exited", kind=kind, pid=pid, status=status)
                if kind in ESSENTIAL:
                    out.flush()
                    os._exit(NODE_DIED)  # no more calls into Ray: they may hang or end this process anyway


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))

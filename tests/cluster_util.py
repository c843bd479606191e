"""What the cluster tests share: a real ``serve --ray local`` daemon, its processes, its artists' frames."""

from __future__ import annotations

import importlib.util
import os
import re
import signal
import subprocess
import tempfile
import time

import pytest
from daemon_util import Daemon, S, connect, half_mask

from smd_daemon.client import ErrorEvent, FrameEvent, Layer

# tests/run.sh installs Ray (the cluster extra) and requires these tests to run.
ray_missing = pytest.mark.skipif(
    importlib.util.find_spec("ray") is None and os.environ.get("SMD_REQUIRE_RAY") != "1",
    reason="Ray is not installed (pip install -e '.[cluster]')",
)


def processes() -> dict[int, tuple[int, str, bytes]]:
    """Every process that runs (not a zombie, which only waits for its parent to reap it):
    pid -> (parent pid, start time, command line)."""
    out = {}
    for pid in os.listdir("/proc"):
        if not pid.isdigit():
            continue
        try:
            with open(f"/proc/{pid}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()
            if fields[0] == "Z":
                continue
            with open(f"/proc/{pid}/cmdline", "rb") as f:
                out[int(pid)] = (int(fields[1]), fields[19], f.read())
        except (OSError, IndexError):
            pass
    return out


def family_of(root: int, tmp: str) -> set[tuple[int, str]]:
    """(pid, start time) of ``root``, of the processes naming ``tmp`` (Ray's own,
    even once orphaned) and of all their descendants (actors rename themselves
    "ray::...")."""
    procs = processes()
    todo = [pid for pid, (_, _, cmd) in procs.items() if tmp.encode() in cmd and pid != os.getpid()]
    found = set(todo) | ({root} if root in procs else set())
    todo.append(root)
    while todo:
        parent = todo.pop()
        for pid, (ppid, _, _) in procs.items():
            if ppid == parent and pid not in found:
                found.add(pid)
                todo.append(pid)
    return {(pid, procs[pid][1]) for pid in found if pid in procs}


def alive(family: set[tuple[int, str]], named: bytes = b"") -> list[int]:
    """The processes of ``family`` still running (whose command line starts with ``named``)."""
    procs = processes()
    return [
        pid for pid, started in family if pid in procs and procs[pid][1] == started and procs[pid][2].startswith(named)
    ]


def private_env() -> tuple[str, dict]:
    """A short temp dir (Ray's socket paths go below it) the daemon and its Ray instance use."""
    tmp = tempfile.mkdtemp(prefix="smdt-", dir="/tmp")
    return tmp, {"TMPDIR": tmp}


def kill_all(family: set[tuple[int, str]], tmp: str) -> None:
    for pid in alive(family):  # a failed test must not leave Ray running
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    subprocess.run(["rm", "-rf", tmp])


class ClusterDaemon(Daemon):
    """``smd-daemon serve --ray local`` with a private temp dir, so that every
    process it starts can be found (and killed should a test fail)."""

    def __init__(self, *extra: str):
        self.tmp, env = private_env()
        super().__init__("--ray", "local", *extra, env=env)

    def family(self) -> set[tuple[int, str]]:
        return family_of(self.proc.pid, self.tmp)

    def worker_pid(self, wid: str, after: int = 0) -> int:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            found = re.findall(rf"worker {wid} ready on node \S+ \(pid (\d+)", self.text())
            if len(found) > after:
                return int(found[after])
            time.sleep(0.2)
        raise AssertionError(f"worker {wid} never became ready:\n{self.text()}")

    def close(self) -> None:
        family = self.family()
        super().close()
        kill_all(family, self.tmp)


def frames_of(clients, n: int, timeout: float, worker=None, errors: list | None = None) -> list[list]:
    """Poll every client (they must keep pinging) until each has ``n`` frames (from
    ``worker`` if given) or ``timeout`` passes; errors go to ``errors``, else fail."""
    got = [[] for _ in clients]
    deadline = time.monotonic() + timeout
    while any(len(g) < n for g in got) and time.monotonic() < deadline:
        for c, g in zip(clients, got):
            for ev in c.poll(timeout_ms=5):
                if isinstance(ev, FrameEvent) and (worker is None or ev.header.get("worker") == worker):
                    g.append(ev)
                elif isinstance(ev, ErrorEvent):
                    assert errors is not None, f"unexpected error {ev.code}: {ev.message}"
                    errors.append(ev)
    return got


# --- a private Ray instance's own processes ------------------------------------------------------


HELPERS = ("log monitor", "autoscaler monitor", "dashboard head")  # the workers do not need them
NEEDED = ("dashboard agent", "runtime env agent", "raylet", "GCS")  # the raylet ends when an agent does


def node_processes(daemon_pid: int) -> dict[str, int]:
    """The private Ray instance's own processes, by what they are: the children of
    the daemon's Ray host (GCS, raylet, helpers) and the raylet's agents. Found by
    parentage, so that nothing else on the machine is touched."""
    procs = processes()
    hosts = [pid for pid, (ppid, _, cmd) in procs.items() if ppid == daemon_pid and b"ray_host" in cmd]
    out = {"host": hosts[0]} if hosts else {}
    for host in hosts:  # the active one and the standby: the active one's raylet runs the worker
        raylets = [pid for pid, (ppid, _, cmd) in procs.items() if ppid == host and b"raylet/raylet" in cmd]
        if any(ppid in raylets and cmd.startswith(b"ray::WorkerActor") for ppid, _, cmd in procs.values()):
            out["host"] = host
        else:
            out["standby host"] = host
    for pid, (ppid, _, cmd) in procs.items():
        if ppid != out.get("host"):
            continue
        argv = [os.path.basename(a) for a in cmd.split(b"\0")]
        named = {
            b"raylet": "raylet",
            b"gcs_server": "GCS",
            b"log_monitor.py": "log monitor",
            b"monitor.py": "autoscaler monitor",
            b"dashboard.py": "dashboard head",
        }
        for arg, what in named.items():
            if arg in argv[:3]:
                out[what] = pid
    for pid, (ppid, _, cmd) in procs.items():
        if ppid == out.get("raylet"):
            if cmd.startswith(b"ray::DashboardAgent"):
                out["dashboard agent"] = pid
            elif cmd.startswith(b"ray::RuntimeEnvAgent"):
                out["runtime env agent"] = pid
    return out


def streaming_artist(d, name: str = "artist"):
    """A client of the daemon ``d`` (once it serves) streaming one region live, raw."""
    d.wait_serving(300)
    client = connect(d.address, name=name)
    client.set_scene(S, S, [Layer("1", "a red fox", half_mask())], background_prompt="snow")
    client.start_live("raw")
    return client


def next_frame(client, within: float, errors: list) -> float | None:
    """Seconds until the client's next frame (None if none within ``within``); errors go to ``errors``."""
    t0 = time.monotonic()
    while time.monotonic() - t0 < within:
        for ev in client.poll(timeout_ms=20):
            if isinstance(ev, FrameEvent):
                return time.monotonic() - t0
            if isinstance(ev, ErrorEvent):
                errors.append(ev)
    return None


def frame_after_an_error(client, within: float) -> tuple[float | None, list]:
    """Seconds until the first frame after the client was told that no worker is available."""
    t0, errors = time.monotonic(), []
    while time.monotonic() - t0 < within:
        for ev in client.poll(timeout_ms=20):
            if isinstance(ev, ErrorEvent):
                errors.append(ev)
            elif isinstance(ev, FrameEvent) and errors:
                return time.monotonic() - t0, errors
    return None, errors


def wait_for(d, line: str, count: int, within: float = 120) -> None:
    """Until the daemon's log holds ``line`` ``count`` times."""
    deadline = time.monotonic() + within
    while d.text().count(line) < count and time.monotonic() < deadline:
        time.sleep(0.1)
    assert d.text().count(line) == count, d.text()

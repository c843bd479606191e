"""``--ray local``: a private Ray instance, run for the daemon by a process of its own (``ray_host``).

``PrivateRay`` offers what ``ray_workers.RayCluster`` offers the front end
(connect, resources, start workers, their failures, stop), but the Ray
driver is a host process, never the daemon: a dead raylet cannot take the
daemon down with it. A host and every process of its instance share one
process group, so ending an instance is one ``killpg``.

Starting Ray takes seconds (most of a restart on a busy machine), so once
the workers run, a second host starts a standby instance with no workers:
when the active instance breaks, the workers are started at once on the
standby, and a new standby is started once they are ready again. It costs
the memory of an idle Ray instance (about 0.6 GB).

The workers' socket file lives in a folder of the daemon's own (mode 0700,
outside Ray's temp dirs, which Ray opens to every user), created here; each
Ray temp dir is itself inside a folder of mode 0700, so that Ray's own
sockets are out of other users' reach too.
"""

from __future__ import annotations

import collections
import importlib.util
import itertools
import json
import logging
import os
import queue
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time

from smd_daemon.cluster.ray_host import ESSENTIAL
from smd_daemon.cluster.ray_workers import INSTALL_HINT, short_temp_parent
from smd_daemon.errors import UsageError

log = logging.getLogger("smd_daemon.cluster")

HOST = "host process"  # how a host's own end is reported (``exits``)
CONNECT_WITHIN_S = 180.0  # Ray's own start-up, on a busy machine
STOP_WITHIN_S = 8.0
END_WITHIN_S = 5.0  # for a killed instance's processes to be gone (a GPU's memory is free only then)


class HostError(Exception):
    """A host process did not answer (it ended, or took too long)."""


class Host:
    """One ``ray_host`` process, its Ray instance and its channel (JSON lines)."""

    def __init__(self, num_cpus: int, gpus: bool):
        self.asked = (num_cpus, gpus)
        # Ray opens its temp dir (and the sockets in it) to every user: it goes into a folder only
        # this user may enter. Made here, not by the host, which may be killed before it could say.
        self.folder = tempfile.mkdtemp(prefix="smd-ray-", dir=short_temp_parent())
        self.temp_dir = os.path.join(self.folder, "ray")
        self.resources: dict = {}
        self.events: collections.deque = collections.deque()
        self.ended = threading.Event()  # its events pipe closed
        self._replies: dict[int, queue.Queue] = {}
        self._ids = itertools.count(1)
        events_r, events_w = os.pipe()
        level = logging.getLevelName(logging.getLogger().getEffectiveLevel()).lower()
        self.process = subprocess.Popen(
            [sys.executable, "-m", "smd_daemon.cluster.ray_host", str(events_w), level],
            stdin=subprocess.PIPE,
            stdout=sys.stderr,  # the daemon's log: Ray prints the workers' lines there
            pass_fds=(events_w,),
            start_new_session=True,  # its own process group (its instance's too), and no terminal's signals
            text=True,
        )
        os.close(events_w)
        threading.Thread(target=self._read, args=(os.fdopen(events_r),), name="ray-host", daemon=True).start()

    @property
    def pid(self) -> int:
        return self.process.pid

    def _read(self, lines) -> None:
        with lines:
            for line in lines:
                msg = json.loads(line)
                if "re" in msg:
                    self._replies.pop(msg["re"], queue.Queue()).put(msg)
                else:
                    self.events.append(msg)
        self.ended.set()
        for q in list(self._replies.values()):
            q.put(None)

    def send(self, **command) -> None:
        try:
            self.process.stdin.write(json.dumps(command) + "\n")
            self.process.stdin.flush()
        except (BrokenPipeError, ValueError):
            pass  # it ended: the reader says so

    def ask(self, timeout: float, **command) -> dict:
        reply: queue.Queue = queue.Queue()
        command["id"] = next(self._ids)
        self._replies[command["id"]] = reply
        if self.ended.is_set():
            reply.put(None)
        self.send(**command)
        try:
            msg = reply.get(timeout=timeout)
        except queue.Empty:
            raise HostError(f"Ray did not answer within {timeout:g} s") from None
        if msg is None:
            raise HostError("the process running Ray ended")
        if "error" in msg:
            raise UsageError(msg["error"])  # Ray's own failure, in one line
        return msg

    def connect(self) -> None:
        """Start its Ray instance (seconds); one line when it fails."""
        num_cpus, gpus = self.asked
        try:
            reply = self.ask(CONNECT_WITHIN_S, op="connect", num_cpus=num_cpus, gpus=gpus, temp_dir=self.temp_dir)
        except HostError as e:
            raise UsageError(f"cannot start a private Ray instance: {e}") from None
        self.resources = reply["resources"]

    def healthy(self) -> bool:
        return not self.ended.is_set() and not any(ev.get("kind") in ESSENTIAL for ev in self.events)

    def kill(self) -> int | None:
        """End it and its whole instance at once (its process group, and the workers, which Ray
        starts in groups of their own); its exit status once they are gone."""
        family = _descendants(self.process.pid) if self.process.returncode is None else set()
        if self.process.returncode is None:  # not reaped: its process group is still its instance's
            try:
                os.killpg(self.process.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        status = self.process.wait()
        _end(family, END_WITHIN_S)
        self.process.stdin.close()
        self.ended.wait(5)
        shutil.rmtree(self.folder, ignore_errors=True)
        return status

    def stop(self, wait_s: float) -> None:
        """Let it stop its workers and Ray; killed if it does not in time. Returns once they are gone."""
        family = _descendants(self.process.pid)
        if not self.ended.is_set():
            try:
                self.ask(wait_s, op="stop")
                self.process.wait(wait_s)
            except (HostError, UsageError, subprocess.TimeoutExpired) as e:
                log.warning("the private Ray instance did not stop by itself (%s): killing it", e)
        self.kill()
        _end(family, END_WITHIN_S)


class PrivateRay:
    kind = "local"

    def __init__(self):
        if importlib.util.find_spec("ray") is None:
            raise UsageError(INSTALL_HINT)
        self.host: Host | None = None  # the instance the workers run on
        self.standby: Host | None = None  # ready to take over, without workers
        self._preparing: Host | None = None  # the next standby, starting
        self._standby_thread: threading.Thread | None = None  # what starts it
        self.socket_dir: str | None = None
        self.started: dict[str, float] = {}  # worker id -> when its actor's __init__ had run
        self._specs: dict[str, tuple] = {}  # worker id -> start()'s arguments: what starts it again
        self._exits: list = []  # (kind, pid, status) of the instance's processes that ended, not yet taken
        self._lock = threading.Lock()  # which host is which
        self._stopping = False

    def connect(self, num_cpus: int, gpus: bool) -> None:
        self.host = Host(num_cpus, gpus)
        self.host.connect()

    def resources(self) -> dict:
        return dict(self.host.resources)

    def worker_endpoint(self) -> str:
        if self.socket_dir is None:
            self.socket_dir = tempfile.mkdtemp(prefix="smd-w-", dir=short_temp_parent())  # mode 0700
        return f"ipc://{self.socket_dir}/workers"

    def start(self, worker_id: str, resources: dict, address: str, keys: tuple, *rest) -> None:
        self._specs[worker_id] = (resources, address, keys, *rest)
        text_keys = [k.decode() for k in keys]  # Z85: text already
        self.host.send(op="start", worker=worker_id, resources=resources, args=[address, text_keys, *rest])

    def failures(self) -> dict[str, str]:
        """Workers that could not start at all, by id (their starts and the instance's exits are noted)."""
        out, host = {}, self.host
        while host.events:
            ev = host.events.popleft()
            if ev["event"] == "started":
                self.started[ev["worker"]] = time.monotonic()
            elif ev["event"] == "failed":
                out[ev["worker"]] = ev["error"]
            else:
                self._exits.append((ev["kind"], ev["pid"], ev["status"]))
        if host.ended.is_set():
            for wid in self._specs:
                if wid not in self.started:
                    out[wid] = "the process running Ray ended before it started"
        return out

    def exits(self) -> list[tuple[str, int, int | None]]:
        """(kind, pid, exit status) of the instance's processes that ended since the last call; the
        host's own end, when it did not say why, counts as one of them."""
        self.failures()
        out, self._exits = self._exits, []
        if self.host.ended.is_set() and not any(kind in ESSENTIAL for kind, _, _ in out):
            out.append((HOST, self.host.pid, None))  # reaped when it is replaced
        return out

    # --- replacing the instance -----------------------------------------------------------------

    def prepare_standby(self) -> None:
        """Start a standby instance in the background (nothing if one is ready or starting)."""
        with self._lock:
            if self._stopping or self.standby is not None or self._preparing is not None:
                return
            self._preparing = Host(*self.host.asked)
            self._standby_thread = threading.Thread(
                target=self._standby_up, args=(self._preparing,), name="ray-standby", daemon=True
            )
            self._standby_thread.start()

    def _standby_up(self, host: Host) -> None:
        t0 = time.monotonic()
        try:
            host.connect()
            up = True
        except UsageError as e:
            if not self._stopping:
                log.warning("no standby Ray instance (%s): a broken instance will take longer to replace", e)
            up = False
        with self._lock:
            keep = up and not self._stopping and self._preparing is host
            if self._preparing is host:
                self._preparing = None
            if keep:
                self.standby = host
        if keep:
            log.info("a standby Ray instance is ready (started in %.1f s)", time.monotonic() - t0)
        else:
            host.kill()

    def restart(self) -> None:
        """Replace the broken instance: the standby (or a new one) takes the same workers, which
        connect to the same socket. Nothing when the daemon stops meanwhile."""
        t0 = time.monotonic()
        with self._lock:
            if self._stopping:
                return
            broken, self.host = self.host, None
            starting = self._standby_thread if self._preparing is not None else None
        broken.kill()
        if starting is not None:  # a standby on its way is sooner than a new one
            starting.join(CONNECT_WITHIN_S)
        with self._lock:
            ready, self.standby = self.standby, None
        if ready is None or not ready.healthy():
            if ready is not None:
                ready.kill()
            log.info("no standby Ray instance ready: starting a new one")
            with self._lock:
                if self._stopping:
                    return
                ready = self._preparing = Host(*broken.asked)  # stop() kills it while it starts
            try:
                ready.connect()
            finally:
                with self._lock:
                    self._preparing = None
        with self._lock:
            if self._stopping:
                ready.kill()
                return
            self.host = ready
            self.started.clear()
            self._exits.clear()
            for wid, spec in list(self._specs.items()):
                self.start(wid, *spec)
        log.info("the workers start on a new Ray instance (%.1f s after the failure)", time.monotonic() - t0)
        self.prepare_standby()  # beside the workers' model load: ready the sooner for the next failure

    def stop(self, wait_s: float = STOP_WITHIN_S) -> None:
        """Stop the workers and the instances (the active host stops Ray; the others are killed)."""
        with self._lock:
            self._stopping = True
            hosts = (self.host, self.standby, self._preparing)
        active, *others = hosts
        if active is not None:
            active.stop(wait_s)
        for host in others:
            if host is not None:
                host.kill()
        if self.socket_dir is not None:
            shutil.rmtree(self.socket_dir, ignore_errors=True)
            self.socket_dir = None


def _descendants(root: int) -> set[tuple[int, str]]:
    """(pid, start time) of every process below ``root``, from /proc."""
    parents: dict[int, list[int]] = {}
    started: dict[int, str] = {}
    for name in os.listdir("/proc"):
        if name.isdigit():
            try:
                with open(f"/proc/{name}/stat") as f:
                    fields = f.read().rsplit(")", 1)[1].split()
            except OSError:
                continue
            parents.setdefault(int(fields[1]), []).append(int(name))
            started[int(name)] = fields[19]
    out, todo = set(), [root]
    while todo:
        for child in parents.get(todo.pop(), []):
            out.add((child, started[child]))
            todo.append(child)
    return out


def _end(family: set[tuple[int, str]], within: float) -> None:
    """Kill each of these processes that is still the same process, and wait until all are gone."""
    deadline = time.monotonic() + within
    for pid, start in family:
        if _start_time(pid) == start:
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
    while any(_start_time(pid) == start for pid, start in family) and time.monotonic() < deadline:
        time.sleep(0.05)


def _start_time(pid: int) -> str | None:
    """When the process ``pid`` started (None: gone, or a zombie that only waits to be reaped)."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
    except OSError:
        return None
    return None if fields[0] == "Z" else fields[19]

"""Ray's part in a cluster: where the engine workers run, keeping them alive, stopping them.

Each worker is a Ray actor (``WorkerActor``) holding one GPU (``num_gpus=1``;
on a CPU-only cluster, ``--threads`` CPUs) that loads the model once and runs
a ``worker.EngineWorker``. Ray restarts a worker whose process dies, with the
same arguments, so it comes back by itself and says hello to the front end
again. Frames never travel through Ray: the front end and the workers talk
over ZeroMQ (``wire``).

Ray is imported only here and only with ``--ray``; without it, the daemon
never loads Ray.
"""

from __future__ import annotations

import logging
import os
import re
import secrets
import shutil
import socket
import tempfile
import time

from smd_daemon.errors import UsageError

log = logging.getLogger("smd_daemon.cluster")

INSTALL_HINT = (
    "--ray needs Ray, which is not installed: pip install -e '.[cluster]' (or pip install 'ray[client]==2.60.0')"
)
OBJECT_STORE_BYTES = 100 * 2**20  # nothing large goes through Ray's object store
CONNECT_TIMEOUT_S = 5.0

_HOST_PORT = re.compile(r"^(\[[0-9a-fA-F:.]+\]|[A-Za-z0-9.-]+):(\d{1,5})$")


def parse_target(text: str) -> tuple[str, str, int]:
    """``--ray``'s value as (kind, host, port): kind is ``local``, ``auto``,
    ``client`` (ray://HOST:PORT, Ray Client) or ``gcs`` (HOST:PORT, a head's address)."""
    t = text.strip()
    if t in ("local", "auto"):
        return t, "", 0
    kind, rest = ("client", t[len("ray://") :]) if t.startswith("ray://") else ("gcs", t)
    match = _HOST_PORT.match(rest)
    if not match or not 0 < int(match.group(2)) < 65536:
        raise UsageError(
            f"--ray {text!r}: give local, auto, ray://HOST:PORT (Ray Client) or HOST:PORT (a Ray head's address)"
        )
    return kind, match.group(1).strip("[]"), int(match.group(2))


def import_ray():
    try:
        import ray
    except ImportError:
        raise UsageError(INSTALL_HINT) from None
    return ray


def _error_line(e: BaseException) -> str:
    """The line of a Ray error that says what went wrong (its cause's own message)."""
    lines = [line.strip() for line in str(e).splitlines() if line.strip()]
    causes = [line for line in lines if re.match(r"^[\w.]+(Error|Exception|Exit)\b", line)]
    text = causes[-1] if causes else (lines[0] if lines else type(e).__name__)
    return re.sub(r"\x1b\[[0-9;]*m", "", text)[:400]


def _route_ip(host: str, port: int) -> str:
    """This machine's address on the network that reaches ``host``."""
    with socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.connect((host, port))
        return s.getsockname()[0]


def short_temp_parent() -> str:
    """The temp folder, or ``/tmp`` where its path is too long to hold socket files: a socket
    path has at most 107 characters, and Ray's go ~64 below its temp dir
    (``PARENT/smd-ray-XXXXXXXX/ray``: ``private_ray``)."""
    parent = tempfile.gettempdir()
    return parent if len(parent) <= 20 else "/tmp"


class RayCluster:
    """The Ray instance a daemon uses (its own with ``local``, else a cluster it joins)
    and the workers it started there."""

    def __init__(self, target: str):
        self.kind, self.host, self.port = parse_target(target)
        if self.kind == "local":
            # Ray 2.60 listens on every interface even for a private instance; its token
            # authentication, with a token only this process knows, keeps everyone else out.
            # Ray reads these when it is imported.
            os.environ.setdefault("RAY_AUTH_MODE", "token")
            if os.environ["RAY_AUTH_MODE"] == "token" and not os.environ.get("RAY_AUTH_TOKEN_PATH"):
                os.environ.setdefault("RAY_AUTH_TOKEN", secrets.token_hex(32))
            os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
        os.environ.setdefault("RAY_COLOR_PREFIX", "0")  # workers' log lines in the daemon's log, without ANSI codes
        self.ray = import_ray()
        self.temp_dir: str | None = None
        self.connected = False
        self.actors: dict = {}  # worker id -> actor handle
        self.started: dict[str, float] = {}  # worker id -> when Ray said its __init__ had run
        self._pending: dict = {}  # ObjectRef of a worker's first call -> worker id

    # --- joining ---------------------------------------------------------------------------

    def connect(self, num_cpus: int, gpus: bool, temp_dir: str | None = None) -> None:
        """``ray.init``: a private instance (``local``, in ``temp_dir`` or a new folder) or the
        cluster; one line when it fails."""
        ray = self.ray
        common = dict(logging_level=logging.WARNING, log_to_driver=True)
        if self.kind == "local":
            self.temp_dir = temp_dir or tempfile.mkdtemp(prefix="smd-ray-", dir=short_temp_parent())
            args = dict(
                address="local",
                num_cpus=num_cpus,
                num_gpus=None if gpus else 0,
                include_dashboard=False,
                object_store_memory=OBJECT_STORE_BYTES,
                _temp_dir=self.temp_dir,
            )
            where = "a private Ray instance"
        else:
            if self.kind in ("client", "gcs"):
                try:
                    socket.create_connection((self.host, self.port), CONNECT_TIMEOUT_S).close()
                except OSError as e:
                    raise UsageError(
                        f"cannot reach the Ray cluster at {self.host}:{self.port}: {e.strerror or e}"
                    ) from None
            address = {"auto": "auto", "gcs": f"{self.host}:{self.port}", "client": f"ray://{self.host}:{self.port}"}[
                self.kind
            ]
            args = dict(address=address)
            where = f"the Ray cluster at {address}"
        try:
            ray.init(**args, **common)
        except SystemExit:
            raise  # a signal arrived while Ray started (ray.init installs its own SIGTERM handler)
        except ConnectionError as e:
            if self.kind == "auto":
                raise UsageError(
                    "--ray auto: no Ray cluster runs on this machine (start one with 'ray start "
                    "--head', or give --ray HOST:PORT)"
                ) from None
            raise UsageError(f"cannot join {where}: {_error_line(e)}") from None
        except Exception as e:
            raise UsageError(f"cannot start or join {where}: {_error_line(e)}") from None
        self.connected = True
        log.info("joined %s", where if self.kind != "local" else f"{where} (temp dir {self.temp_dir})")

    def resources(self) -> dict:
        return dict(self.ray.cluster_resources())

    def worker_endpoint(self) -> str:
        """Where the front end listens for its workers: this node's address on the cluster's network
        (a private instance's workers use a socket file: ``private_ray``)."""
        if self.kind == "client":
            return f"tcp://{_route_ip(self.host, self.port)}"
        return f"tcp://{self.ray.util.get_node_ip_address()}"

    # --- workers -------------------------------------------------------------------------------

    def start(self, worker_id: str, resources: dict, *args) -> None:
        """Start one worker actor; Ray restarts its process whenever it dies."""
        from smd_daemon.cluster.actor import WorkerActor

        cls = self.ray.remote(WorkerActor).options(max_restarts=-1, scheduling_strategy="SPREAD", **resources)
        actor = cls.remote(worker_id, *args)
        self.actors[worker_id] = actor
        self._pending[actor.started.remote()] = worker_id

    def failures(self) -> dict[str, str]:
        """Workers Ray could not start at all (their code failed before reporting), by id."""
        if not self._pending:
            return {}
        done, _ = self.ray.wait(list(self._pending), num_returns=len(self._pending), timeout=0)
        out = {}
        for ref in done:
            wid = self._pending.pop(ref)
            try:
                self.ray.get(ref)
                self.started[wid] = time.monotonic()
            except Exception as e:
                out[wid] = _error_line(e)
        return out

    # --- a private instance's own processes ------------------------------------------------

    def dead_node_processes(self) -> list[tuple[str, int, int]]:
        """(kind, pid, exit status) of each process of the private instance that exited
        (Ray's own handles of the processes ``ray.init`` started: Ray 2.60's ``Node``)."""
        node = getattr(self.ray._private.worker, "_global_node", None) if self.kind == "local" else None
        if node is None or not self.connected:
            return []
        return [
            (kind, info.process.pid, info.process.returncode)
            for kind, infos in list(node.all_processes.items())
            for info in infos
            if info.process.poll() is not None
        ]

    def _wait_gone(self, wait_s: float) -> None:
        """Ask each killed worker until Ray answers that it is dead."""
        deadline = time.monotonic() + wait_s
        alive = dict(self.actors)
        while alive and time.monotonic() < deadline:
            for wid, actor in list(alive.items()):
                try:
                    self.ray.get(actor.started.remote(), timeout=max(0.1, min(1.0, deadline - time.monotonic())))
                except self.ray.exceptions.GetTimeoutError:
                    continue
                except Exception:  # RayActorError: it is gone
                    del alive[wid]
            if alive:
                time.sleep(0.2)
        if alive:
            log.warning("Ray did not confirm that worker(s) %s stopped", ", ".join(alive))

    def stop(self, wait_s: float = 8.0) -> None:
        """Stop the workers this daemon started (waiting up to ``wait_s`` until Ray
        says they are gone), and the Ray instance if it is its own."""
        ray = self.ray
        if self.connected:
            for wid, actor in self.actors.items():
                try:
                    ray.kill(actor, no_restart=True)
                except Exception as e:  # already gone
                    log.debug("stopping worker %s: %s", wid, e)
            if self.kind != "local":  # a private instance goes as a whole below
                self._wait_gone(wait_s)
            self.actors.clear()
            try:
                ray.shutdown()
            except Exception as e:
                log.warning("stopping Ray: %s", _error_line(e))
            self.connected = False
        if self.temp_dir is not None:
            shutil.rmtree(self.temp_dir, ignore_errors=True)
            self.temp_dir = None

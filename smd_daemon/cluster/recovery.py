"""A private Ray instance (``--ray local``) whose own process dies: start it again, or exit.

The instance's host process (``ray_host``) watches the instance's own
processes by their process handles and reports each one that ends: the GCS,
the raylet (which runs the dashboard and runtime-env agents and exits when
either of them dies), and helpers (log monitor, autoscaler monitor,
dashboard head). The front end reads those reports on every upkeep
(``Server._sweep``, twice a second). When the raylet or the GCS is gone (or
the host itself), the workers are gone or soon will be:

- every worker is counted lost at once, its artists told once that no worker
  is available (their scenes, live mode and jobs are kept);
- a thread replaces the instance (``PrivateRay.restart``: the old one killed
  as a whole, the same workers started on the standby instance, or on a new
  one); they connect to the same socket and say hello, and the sessions are
  replayed on them as after any worker restart.

A helper that exits stops no frame: it is logged, nothing more. If the new
instance cannot be started, or none of its workers can draw within
``RESTART_WITHIN_S``, the daemon stops and exits non-zero with one line
(``Server.fatal``), so that a supervisor restarts it.
"""

from __future__ import annotations

import logging
import signal
import threading

from smd_daemon.cluster.private_ray import HOST
from smd_daemon.cluster.ray_host import ESSENTIAL

log = logging.getLogger("smd_daemon.cluster")

RESTART_WITHIN_S = 120.0  # from the death until a worker is ready again, model load included


class NodeRecovery:
    """Watches a private Ray instance for the front end; everything but the restart runs on the I/O thread."""

    def __init__(self, server, cluster):
        self.server, self.cluster = server, cluster
        self._thread: threading.Thread | None = None
        self._error = ""  # why the restart failed (set by its thread)
        self._since: float | None = None  # when the dead process was noticed, until a worker is ready again
        self._told: set[tuple[str, int]] = set()  # helpers whose exit was logged

    def check(self, now: float) -> None:
        if self._since is not None:
            self._follow(now)
            return
        dead = self.cluster.exits()
        essential = [(name, pid, status) for name, pid, status in dead if name in ESSENTIAL or name == HOST]
        for name, pid, status in dead:
            if (name, pid, status) not in essential and (name, pid) not in self._told:
                self._told.add((name, pid))
                log.warning("Ray's %s (pid %d) %s; the workers do not need it", name, pid, _ended(status))
        if essential:
            self._begin(now, essential)

    def _begin(self, now: float, dead: list) -> None:
        why = ", ".join(f"its {name} (pid {pid}) {_ended(status)}" for name, pid, status in dead)
        log.error("the private Ray instance is broken: %s; starting it again", why)
        self._since, self._error = now, ""
        self.server.dispatcher.lose_all("its Ray node is gone")
        self._thread = threading.Thread(target=self._restart, name="ray-restart", daemon=True)
        self._thread.start()

    def _restart(self) -> None:
        try:
            self.cluster.restart()
        except Exception as e:  # UsageError: Ray did not start, in one line
            self._error = str(e).splitlines()[0] if str(e) else type(e).__name__

    def _follow(self, now: float) -> None:
        """After the restart began: wait for its thread, then for a worker that can draw."""
        if self._thread is not None:
            if self._thread.is_alive():
                if now - self._since > RESTART_WITHIN_S:
                    self._give_up(f"Ray did not start again within {RESTART_WITHIN_S:g} s")
                return
            self._thread = None
            if self._error:
                self._give_up(self._error)
                return
        d = self.server.dispatcher
        for wid, error in self.cluster.failures().items():
            d.worker_failed(wid, error)
        workers = list(d.workers.values())
        if any(w.state == "ready" for w in workers):
            log.info(
                "the private Ray instance runs again: a worker is ready %.1f s after the failure", now - self._since
            )
            self._since = None
            self.cluster.prepare_standby()
            return
        if all(w.state == "failed" for w in workers):
            errors = "; ".join(f"{w.id}: {w.error}" for w in workers)
            self._give_up(f"no engine worker could start again ({errors})")
        elif now - self._since > RESTART_WITHIN_S:
            self._give_up(f"no engine worker was ready within {RESTART_WITHIN_S:g} s")

    def _give_up(self, why: str) -> None:
        if self.server.stopping.is_set():
            return  # stopping anyway (the restart failed because of it)
        self.server.fatal = f"the private Ray instance died and could not be started again: {why}"
        log.error("%s; stopping", self.server.fatal)
        self.server.stopping.set()


def _ended(status: int | None) -> str:
    if status is None:
        return "ended"
    if status < 0:
        try:
            return f"was killed by {signal.Signals(-status).name}"
        except ValueError:
            pass
    return f"exited with status {status}"

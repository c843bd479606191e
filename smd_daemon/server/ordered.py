"""Each session's tasks one at a time and in the order they came, on a few
threads all sessions share: the scene workers' decoding and planning here,
and a cluster worker's planning and encoding.

A session's tasks never run side by side, so they need no lock of their
own; different sessions' tasks do run side by side, so one session's huge
canvas never holds up another's small one.
"""

from __future__ import annotations

import collections
import logging
import threading
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

log = logging.getLogger("smd_daemon.server")


@dataclass
class _Queue:
    tasks: collections.deque = field(default_factory=collections.deque)  # (fn, args, cost) not started yet
    cost: int = 0  # of the tasks waiting


class SessionOrder:
    def __init__(self, threads: int, name: str):
        self._pool = ThreadPoolExecutor(max_workers=threads, thread_name_prefix=name)
        self._lock = threading.Lock()
        self._queues: dict[str, _Queue] = {}  # sessions with a task running or waiting

    def submit(self, session: str, fn, *args, cost: int = 0, max_tasks: int | None = None, max_cost=None) -> bool:
        """Run ``fn(*args)`` after the session's earlier tasks. False, and nothing queued,
        when that would make more than ``max_tasks`` tasks, or a ``cost`` of more than
        ``max_cost``, wait; or when the threads were shut down."""
        with self._lock:
            q = self._queues.get(session)
            if q is not None:
                if (max_tasks is not None and len(q.tasks) >= max_tasks) or (
                    max_cost is not None and q.cost + cost > max_cost
                ):
                    return False
                q.tasks.append((fn, args, cost))
                q.cost += cost
                return True
            self._queues[session] = _Queue(collections.deque([(fn, args, cost)]), cost)
        try:
            self._pool.submit(self._drain, session)
        except RuntimeError:  # shut down: the daemon is stopping
            with self._lock:
                self._queues.pop(session, None)
            return False
        return True

    def waiting(self, session: str) -> list[tuple]:
        """The arguments of the session's tasks that have not started, in order."""
        with self._lock:
            q = self._queues.get(session)
            return [args for _, args, _ in q.tasks] if q is not None else []

    def drop(self, session: str) -> bool:
        """Forget the session's tasks that have not started; True when one is running
        (it finishes, and what is submitted next runs after it)."""
        with self._lock:
            q = self._queues.get(session)
            if q is None:
                return False
            q.tasks.clear()
            q.cost = 0
            return True

    def shutdown(self) -> None:
        self._pool.shutdown(wait=False, cancel_futures=True)

    def _drain(self, session: str) -> None:
        while True:
            with self._lock:
                q = self._queues[session]
                if not q.tasks:
                    del self._queues[session]
                    return
                fn, args, cost = q.tasks.popleft()
                q.cost -= cost
            try:
                fn(*args)
            except Exception:  # a bug must cost one task, not the session's order
                log.exception("internal error in a task of session %s", session[:8])

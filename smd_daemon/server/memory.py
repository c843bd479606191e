"""The daemon's memory budget: every byte a session keeps, counted before it is spent.

A session's bytes are its 8-bit planes and background image, what the
engine keeps for its live stream (``Engine.session_bytes``: plan, masks,
latents, noise, encoded images) and its frames on their way out. Each
session is held to ``max_session_bytes``; all of them together to
``max_memory_bytes`` (``serve --max-memory``). An update that would pass
either is refused before its planes are decoded, with ``too_large`` (this
session alone is too big) or ``no_memory`` (the daemon is full).
"""

from __future__ import annotations

import threading

from smd_daemon.protocol import ErrorCode, ProtocolError

MIB = 2**20


def frame_bytes(frame_window: int, width: int, height: int) -> int:
    """Live frames one session may hold: sent and unacknowledged, ready, being made, being encoded."""
    return (frame_window + 3) * width * height * 3


def _mib(n: int) -> str:
    return f"{n / MIB:.0f} MiB"


class MemoryBudget:
    def __init__(self, total: int, per_session: int):
        self.total, self.per_session = total, per_session
        self._lock = threading.Lock()
        self._held: dict[str, int] = {}
        self.used = 0

    def reserve(self, session: str, nbytes: int) -> None:
        """Hold ``nbytes`` for ``session`` (replacing what it held), or refuse."""
        if nbytes > self.per_session:
            raise ProtocolError(
                ErrorCode.TOO_LARGE,
                f"this scene would keep {_mib(nbytes)} in the daemon, at most "
                f"{_mib(self.per_session)} per session: use a smaller canvas or "
                f"fewer layers",
            )
        with self._lock:
            old = self._held.get(session, 0)
            if self.used - old + nbytes > self.total:
                raise ProtocolError(
                    ErrorCode.NO_MEMORY,
                    f"the daemon's memory budget is spent: this scene needs "
                    f"{_mib(nbytes)}, {_mib(self.total - self.used + old)} of "
                    f"{_mib(self.total)} are free; try again later or with a "
                    f"smaller canvas",
                )
            self._held[session] = nbytes
            self.used += nbytes - old

    def held(self, session: str) -> int:
        with self._lock:
            return self._held.get(session, 0)

    def release(self, session: str) -> None:
        with self._lock:
            self.used -= self._held.pop(session, 0)

"""When a noticed change goes to the daemon: throttle and debounce.

Pure logic on an injectable clock (no Qt, no Krita), so it is tested
without sleeping. The first change after a pause goes out at once (low
latency); while a stroke goes on, changes are held until the artist pauses
(``debounce_s``) or ``max_wait_s`` has passed, never closer than
``min_gap_s``, and never more than ``max_in_flight`` revisions the daemon
has not answered yet.
"""

from __future__ import annotations

import time

DEBOUNCE_S = 0.06  # quiet time after the last change before sending it
MAX_WAIT_S = 0.25  # during a long stroke, send at least this often
MIN_GAP_S = 0.1  # at most ~10 updates a second
MAX_IN_FLIGHT = 2  # sent revisions without an answer yet


class LiveScheduler:
    def __init__(
        self,
        clock=time.monotonic,
        debounce_s: float = DEBOUNCE_S,
        max_wait_s: float = MAX_WAIT_S,
        min_gap_s: float = MIN_GAP_S,
        max_in_flight: int = MAX_IN_FLIGHT,
    ):
        self.clock = clock
        self.debounce_s, self.max_wait_s, self.min_gap_s = debounce_s, max_wait_s, min_gap_s
        self.max_in_flight = max_in_flight
        self.reset()

    def reset(self) -> None:
        """Forget everything: a new connection or a new document."""
        self._seen = None  # the last state noticed
        self._last_change = 0.0  # when it last changed
        self._dirty_since: float | None = None  # when the oldest unsent change was noticed
        self._last_send = 0.0
        self._answered = 0  # newest revision the daemon has answered
        self._sent_at: dict[int, float] = {}  # revision -> when the change it carries was noticed

    def notice(self, state) -> None:
        """Call on every scan with a comparable snapshot of what would be sent."""
        now = self.clock()
        if state != self._seen:
            self._seen = state
            self._last_change = now
            if self._dirty_since is None:
                self._dirty_since = now

    def due(self, pending: bool, bounded: bool = True) -> bool:
        """Whether to send now. ``pending``: something differs from what was sent.
        ``bounded``: hold back while ``max_in_flight`` revisions are unanswered."""
        now = self.clock()
        if not pending:
            self._dirty_since = None
            return False
        if self._dirty_since is None:
            self._dirty_since = now
        if now - self._last_send < self.min_gap_s:
            return False
        in_flight = self.in_flight()
        if bounded and in_flight >= self.max_in_flight:
            return False
        quiet = now - self._last_change >= self.debounce_s
        overdue = now - self._dirty_since >= self.max_wait_s
        idle = in_flight == 0
        return idle or quiet or overdue

    def sent(self, revision: int) -> tuple[float, float]:
        """Record a send; returns (when the change was first noticed, when it last changed).

        A send that carries no change noticed since the previous one (Live pressed, Generate, a
        reconnection) is timed from now, the request: never from an edit made before it.
        """
        now = self.clock()
        carries_change = self._dirty_since is not None
        first = self._dirty_since if carries_change else now
        last = self._last_change if carries_change else now
        self._last_send = now
        self._sent_at[revision] = last
        self._dirty_since = None
        return first, last

    def answered(self, revision: int) -> float | None:
        """The daemon answered ``revision`` (a frame or a scene reply showing it).

        Returns the seconds from noticing that change to now, the first time
        it is answered, else None. Older revisions count as answered too.
        """
        self._answered = max(self._answered, revision)
        noticed = self._sent_at.pop(revision, None)
        for r in [r for r in self._sent_at if r < revision]:
            del self._sent_at[r]
        return None if noticed is None else self.clock() - noticed

    def in_flight(self) -> int:
        return sum(1 for r in self._sent_at if r > self._answered)

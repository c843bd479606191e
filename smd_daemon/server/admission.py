"""Who may be heard: per-connection rate limits, before and after ``hello``.

Every ZeroMQ connection (a ROUTER identity) gets its own token bucket, so a
flood from one connection never costs another one its answers: a client's
``hello`` is answered however hard anyone else pushes. Before ``hello`` the
bucket is small (a well-behaved client sends one hello per attempt); the
table of such connections is bounded, and when it is full the one heard
from least recently is forgotten first (it only loses its bucket: its next
message starts a fresh one). Connections that said hello are bounded by
``max_clients`` and leave only by heartbeat timeout.

Logging is throttled the same way: a connection that keeps sending bad or
too many messages costs one log line per interval, with a count.
"""

from __future__ import annotations

import collections
import logging
import threading
import time
from dataclasses import dataclass

log = logging.getLogger("smd_daemon.server")


def label(identity: bytes) -> str:
    """A connection's name in logs: ZeroMQ's own identities differ in their last bytes."""
    return identity.hex()[-8:]


class TokenBucket:
    """At most ``rate`` requests per second on average, bursts of twice that."""

    def __init__(self, rate: float, now: float):
        self.rate, self.tokens, self.refilled = rate, 2 * rate, now

    def allow(self, now: float) -> bool:
        self.tokens = min(2 * self.rate, self.tokens + (now - self.refilled) * self.rate)
        self.refilled = now
        if self.tokens < 1:
            return False
        self.tokens -= 1
        return True


@dataclass
class Peer:
    identity: bytes
    last_seen: float
    bucket: TokenBucket
    welcomed: bool = False  # said hello and was answered
    session: object = None  # router.Session
    name: str = ""
    dropped: int = 0  # messages dropped since the last rate_limited reply
    warned_at: float = float("-inf")

    @property
    def label(self) -> str:
        return label(self.identity)


class PeerTable:
    """Connections the daemon has heard from, least recently heard first."""

    def __init__(self, max_clients: int, max_pending: int, rate: float, hello_rate: float):
        self.max_clients, self.max_pending = max_clients, max_pending
        self.rate, self.hello_rate = rate, hello_rate
        self._peers: collections.OrderedDict[bytes, Peer] = collections.OrderedDict()
        self.welcomed = 0

    def __len__(self) -> int:
        return len(self._peers)

    def get(self, identity: bytes) -> Peer | None:
        return self._peers.get(identity)

    def values(self) -> list[Peer]:
        return list(self._peers.values())

    def admit(self, identity: bytes, now: float) -> Peer | None:
        """The connection's peer if this message may be handled, None to drop it."""
        peer = self._peers.get(identity)
        if peer is None:
            if len(self._peers) - self.welcomed >= self.max_pending:
                self._forget_oldest_pending()
            peer = self._peers[identity] = Peer(identity, now, TokenBucket(self.hello_rate, now))
        else:
            self._peers.move_to_end(identity)
        peer.last_seen = now  # a flood is a sign of life too: heartbeats are about silence
        if not peer.bucket.allow(now):
            peer.dropped += 1
            return None
        return peer

    def welcome(self, peer: Peer, now: float) -> bool:
        """Promote a peer that said hello; False when ``max_clients`` are already here."""
        if peer.welcomed:
            return True
        if self.welcomed >= self.max_clients:
            return False
        peer.welcomed = True
        peer.bucket = TokenBucket(self.rate, now)
        self.welcomed += 1
        return True

    def remove(self, identity: bytes) -> Peer | None:
        peer = self._peers.pop(identity, None)
        if peer is not None and peer.welcomed:
            self.welcomed -= 1
        return peer

    def idle(self, now: float, timeout: float) -> list[Peer]:
        """Peers not heard from for ``timeout`` seconds (they are at the front)."""
        out = []
        for peer in self._peers.values():
            if now - peer.last_seen <= timeout:
                break
            out.append(peer)
        return out

    def _forget_oldest_pending(self) -> None:
        for identity, peer in self._peers.items():
            if not peer.welcomed:
                del self._peers[identity]
                return


class LogThrottle:
    """One log line per (kind, connection) and interval; what was held back is
    counted and told in the next line, and no more than ``burst`` lines per
    interval in all."""

    def __init__(self, interval: float = 10.0, burst: int = 50, clock=time.monotonic):
        self.interval, self.burst, self.clock = interval, burst, clock
        self._lock = threading.Lock()  # the ZAP handler logs from its own thread
        self._last: dict[tuple, float] = {}
        self._held: collections.Counter = collections.Counter()  # per key, told with its next line
        self._window_start, self._lines, self._suppressed = float("-inf"), 0, 0

    def __call__(self, level: int, kind: str, who, message: str, *args) -> None:
        with self._lock:
            line = self._line(kind, who, message)
        if line is not None:
            log.log(level, line, *args)

    def _line(self, kind: str, who, message: str):
        now = self.clock()
        if now - self._window_start >= self.interval:
            if self._suppressed:
                log.info(
                    "%d more log lines held back in the last %g s (many clients at once)",
                    self._suppressed,
                    self.interval,
                )
            self._window_start, self._lines, self._suppressed = now, 0, 0
            if len(self._last) > 4096:  # forget connections long gone
                self._last = {k: t for k, t in self._last.items() if now - t < self.interval}
            if len(self._held) > 4096:
                self._held.clear()
        key = (kind, who)
        recent = now - self._last.get(key, float("-inf")) < self.interval
        if recent or self._lines >= self.burst:
            self._held[key] += 1
            self._suppressed += not recent  # held back by the cap on all lines: told in a summary
            return None
        self._last[key] = now
        self._lines += 1
        held = self._held.pop(key, 0)
        return message + (f" (and {held} more like it since)" if held else "")

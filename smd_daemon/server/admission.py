"""Who may be heard: per-connection rate limits, before and after ``hello``.

Every ZeroMQ connection (a ROUTER identity) gets its own token bucket, so a
flood from one connection never costs another one its answers: a client's
``hello`` is answered however hard anyone else pushes. Before ``hello`` the
bucket is small (a well-behaved client sends one hello per attempt); the
table of such connections is bounded, and when it is full the one heard
from least recently is forgotten first (it only loses its bucket: its next
message starts a fresh one). Connections that said hello are bounded by
``max_clients`` and leave only by heartbeat timeout.

A process can open as many connections as it likes, so connections are also
counted by their *origin*: the client key under CURVE, the local user behind
an ``ipc://`` connection, the host behind a TCP one. One origin holds at
most ``max_clients_per_origin`` of the connections (and, in ``sessions.py``,
``max_sessions_per_origin`` of the sessions). Every process on loopback TCP
has the same address, so there each connection is its own origin: telling
local processes apart needs keys or ``ipc://``.

Logging is throttled the same way: a connection that keeps sending bad or
too many messages costs one log line per interval, with a count.
"""

from __future__ import annotations

import collections
import ipaddress
import logging
import threading
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING

from smd_daemon.protocol import ErrorCode, ProtocolError
from smd_daemon.server.logtext import label, printable

if TYPE_CHECKING:
    from smd_daemon.server.sessions import Session

log = logging.getLogger("smd_daemon.server")


@dataclass(frozen=True)
class Origin:
    """Where a connection comes from, as far as the daemon can tell (see the module's docstring)."""

    kind: str  # "key", "user", "host" or "connection"
    name: str

    def __str__(self) -> str:
        words = {"key": "client key", "user": "local user", "host": "host", "connection": "connection"}
        return f"{words[self.kind]} {printable(self.name, 60)}"


def origin_of(frame, identity: bytes, transport: str) -> Origin:
    """The origin of the connection ``frame`` came on: ZAP's User-Id (the client
    key's name) under CURVE, else libzmq's Peer-Address (``HOST:UID:GID:PID`` on
    ipc, the IP address on TCP)."""
    user_id = _property(frame, "User-Id")
    if user_id:
        return Origin("key", user_id)
    address = _property(frame, "Peer-Address")
    if transport == "ipc" and address.count(":") >= 3:
        return Origin("user", address.rsplit(":", 3)[1])
    if transport == "tcp" and address:
        try:
            ip = ipaddress.ip_address(address.partition("%")[0])
        except ValueError:
            ip = None  # unreadable: count the connection alone
        mapped = getattr(ip, "ipv4_mapped", None)
        if ip is not None and not (mapped or ip).is_loopback:
            return Origin("host", address)
    return Origin("connection", label(identity))


def _property(frame, name: str) -> str:
    try:
        value = frame.get(name)
    except Exception:  # not set on this transport (EINVAL), or not a zmq.Frame
        return ""
    return value if isinstance(value, str) else ""


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
    session: Session | None = None
    origin: Origin | None = None  # set from its first message
    name: str = ""
    dropped: int = 0  # messages dropped since the last rate_limited reply
    warned_at: float = float("-inf")

    @property
    def label(self) -> str:
        return label(self.identity)


class PeerTable:
    """Connections the daemon has heard from, least recently heard first."""

    def __init__(
        self, max_clients: int, max_pending: int, rate: float, hello_rate: float, max_per_origin: int | None = None
    ):
        self.max_clients, self.max_pending = max_clients, max_pending
        self.max_per_origin = max_per_origin or max_clients
        self.rate, self.hello_rate = rate, hello_rate
        self._peers: collections.OrderedDict[bytes, Peer] = collections.OrderedDict()
        self.welcomed = 0
        self._welcomed_from: collections.Counter = collections.Counter()  # origin -> connections that said hello

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

    def welcome(self, peer: Peer, now: float) -> None:
        """Promote a peer that said hello; ``busy`` when ``max_clients`` are already
        here, ``quota`` when its origin already has ``max_per_origin`` of them."""
        if peer.welcomed:
            return
        if self._welcomed_from[peer.origin] >= self.max_per_origin:
            raise ProtocolError(
                ErrorCode.QUOTA,
                f"{peer.origin} already has {self._welcomed_from[peer.origin]} connections to this daemon, "
                f"as many as one may have (max_clients_per_origin): close some",
            )
        if self.welcomed >= self.max_clients:
            raise ProtocolError(ErrorCode.BUSY, "too many clients are connected")
        peer.welcomed = True
        peer.bucket = TokenBucket(self.rate, now)
        self.welcomed += 1
        self._welcomed_from[peer.origin] += 1

    def remove(self, identity: bytes) -> Peer | None:
        peer = self._peers.pop(identity, None)
        if peer is not None and peer.welcomed:
            self.welcomed -= 1
            self._welcomed_from[peer.origin] -= 1
            if not self._welcomed_from[peer.origin]:
                del self._welcomed_from[peer.origin]
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

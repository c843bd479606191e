"""The client's connection to the daemon (standard library and pyzmq only;
the Krita plugin vendors this file with ``client.py``).

``Link`` is one DEALER socket: CURVE keys, non-blocking sends, and the socket
monitor that tells a refused key from silence. ``Connection`` keeps a link
alive: hello, open, heartbeats, timeouts, reconnects, and the state with its
code (``events.StateCode``) and reason.
"""

from __future__ import annotations

import time

import zmq

from . import framecheck, protocol
from .events import StateCode, StateEvent

CONNECTING = "connecting"
CONNECTED = "connected"
DISCONNECTED = "disconnected"

AUTH = "auth"  # the daemon's ZAP handler refused our key
MISMATCH = "mismatch"  # encryption on at one end only, or another handshake failure


class ClientError(Exception):
    """A call the client cannot make (e.g. an alpha plane of the wrong size)."""


def curve_keys(server_public_key: bytes | None, client_secret_file: str | None) -> tuple | None:
    """The client's CURVE key pair for a daemon with this public key (None: no encryption)."""
    if server_public_key is None:
        return None
    if not client_secret_file:
        raise ClientError("a CURVE server key needs a client key file (client_secret_file)")
    from zmq.auth import load_certificate

    keys = load_certificate(client_secret_file)
    if not keys[1]:
        raise ClientError(f"{client_secret_file} holds no secret key")
    return keys


# Handshake failures the socket monitor reports (libzmq >= 4.3; 0 where unknown).
_FAILED_AUTH = getattr(zmq, "EVENT_HANDSHAKE_FAILED_AUTH", 0)
_FAILED_OTHER = getattr(zmq, "EVENT_HANDSHAKE_FAILED_PROTOCOL", 0) | getattr(zmq, "EVENT_HANDSHAKE_FAILED_NO_DETAIL", 0)
# Errors that refuse the handshake or the session (the state code "refused").
_REFUSALS = (protocol.ErrorCode.BAD_VERSION, protocol.ErrorCode.BUSY, protocol.ErrorCode.QUOTA)
_UP = getattr(zmq, "EVENT_HANDSHAKE_SUCCEEDED", 0)


class Link:
    """A fresh connection attempt; replaced as a whole when the daemon is lost,
    so nothing queued for a daemon that is gone reaches its successor."""

    def __init__(
        self,
        ctx: zmq.Context,
        address: str,
        server_public_key: bytes | None = None,
        keys: tuple[bytes, bytes] | None = None,
        max_side: int = framecheck.DEFAULT_MAX_SIDE,
    ):
        sock = ctx.socket(zmq.DEALER)
        sock.setsockopt(zmq.LINGER, 0)
        # A part larger than the biggest frame this client can ask for closes
        # the connection before ZeroMQ allocates it (whoever answers there).
        self.max_side = max_side
        sock.setsockopt(zmq.MAXMSGSIZE, framecheck.max_part_bytes(max_side))
        # Not IMMEDIATE: with it, messages already received (the daemon's
        # "bye") are discarded when the connection drops.
        sock.setsockopt(zmq.RECONNECT_IVL, 100)
        sock.setsockopt(zmq.RECONNECT_IVL_MAX, 1000)
        if server_public_key is not None:
            sock.curve_serverkey = server_public_key
            sock.curve_publickey, sock.curve_secretkey = keys
        self.monitor = None
        self.dropped = False  # the connection closed and has not come back (read from the monitor)
        if _FAILED_AUTH | _FAILED_OTHER:
            try:
                self.monitor = sock.get_monitor_socket(_FAILED_AUTH | _FAILED_OTHER | _UP | zmq.EVENT_DISCONNECTED)
            except zmq.ZMQError:  # no socket monitors here: a refused key looks like silence
                self.monitor = None
        if protocol.is_ipv6_endpoint(address):
            sock.setsockopt(zmq.IPV6, 1)
        sock.connect(address)
        self.sock = sock

    def fileno(self) -> int:
        return self.sock.getsockopt(zmq.FD)

    def send(self, type_: str, parts=(), **fields) -> bool:
        """Send without blocking; False when it could not be queued."""
        try:
            self.sock.send_multipart(protocol.encode(type_, parts, **fields), flags=zmq.NOBLOCK, copy=False)
        except zmq.Again:
            return False
        return True

    def recv(self):
        """The next multipart message, or None."""
        try:
            return self.sock.recv_multipart(flags=zmq.NOBLOCK, copy=False)
        except zmq.Again:
            return None

    def handshake_failure(self) -> str | None:
        """``AUTH`` or ``MISMATCH`` if the monitor saw a handshake fail since the last
        call; also notes whether the connection has closed since it was last up
        (``dropped``: ZeroMQ does not reconnect after refusing an oversized part)."""
        if self.monitor is None:
            return None
        from zmq.utils.monitor import recv_monitor_message

        failure = None
        while True:
            try:
                event = recv_monitor_message(self.monitor, zmq.NOBLOCK)["event"]
            except zmq.Again:
                return failure
            if event & zmq.EVENT_DISCONNECTED:
                self.dropped = True
            elif event & _UP:
                self.dropped = False
            else:
                failure = AUTH if event & _FAILED_AUTH else MISMATCH

    def close(self, linger: int = 0) -> None:
        if self.monitor is not None:
            try:
                self.sock.disable_monitor()
            except zmq.ZMQError:
                pass
            self.monitor.close(linger=0)
        self.sock.close(linger=linger)


class Connection:
    """The handshake and its upkeep over a ``Link``: hello, open, heartbeats,
    timeouts and reconnects, and the connection state with its code and reason.

    ``Client`` owns one and hands it every decoded message first; ``handle``
    keeps the ones about the connection itself."""

    def __init__(
        self,
        ctx: zmq.Context,
        address: str,
        name: str,
        events: list,
        *,
        server_public_key=None,
        keys=None,
        heartbeat_interval: float = 1.0,
        timeout: float = 5.0,
        retry_interval: float = 0.5,
    ):
        self.ctx, self.address, self.name, self.events = ctx, address, name, events
        self.server_public_key, self.keys = server_public_key, keys
        self.heartbeat_interval, self.timeout, self.retry_interval = heartbeat_interval, timeout, retry_interval
        self.link: Link | None = None
        self.max_side = framecheck.DEFAULT_MAX_SIDE  # the largest frames this client will ask for
        self.state, self.reason, self.code = DISCONNECTED, "closed", StateCode.CLOSED
        self.info: dict = {}
        self.session: str | None = None
        self.last_rx = self.last_tx = 0.0
        self._ticked_at = time.monotonic()
        self._hello_at: float | None = None  # when hello went out on this socket
        self._retry_at = 0.0
        self._open_sent = False
        self._acks: list[dict] = []  # acks that could not go out at once: the newest frame's, results'

    def open(self) -> None:
        if self.link is None:
            self.link = Link(self.ctx, self.address, self.server_public_key, self.keys, self.max_side)

    def connect(self) -> None:
        self.open()
        self.set_state(CONNECTING, f"connecting to {self.address}", StateCode.CONNECTING)
        self._hello_at, self._retry_at = None, 0.0

    def expect_side(self, side: int) -> None:
        """Frames up to ``side`` pixels per side will be asked for: a socket that
        refuses them is replaced (reconnecting), if the daemon may draw them at all."""
        if side <= self.max_side:
            return
        self.max_side = side
        max_side = self.info.get("limits", {}).get("max_side")
        if self.link is not None and isinstance(max_side, int) and side <= max_side:
            self.reset(f"reconnecting to {self.address} to receive {side}-pixel frames", StateCode.CONNECTING)

    def close(self) -> None:
        if self.link is not None:
            if self.session:
                self.send("close")
            self.link.close(linger=200)
            self.link = None
        self.session = None
        self.set_state(DISCONNECTED, "closed", StateCode.CLOSED)

    def send(self, type_: str, parts=(), **fields) -> bool:
        if self.link is None or not self.link.send(type_, parts, **fields):
            return False
        self.last_tx = time.monotonic()
        return True

    def set_state(self, state: str, reason: str, code: str) -> None:
        if (state, reason, code) != (self.state, self.reason, self.code):
            self.state, self.reason, self.code = state, reason, code
            self.events.append(StateEvent(state, reason, code))

    def reset(self, reason: str, code: str) -> None:
        """Drop the socket (and anything queued in it) and start over."""
        if self.link is not None:
            self.link.close()
            self.link = None
        self.forget_session()
        self.set_state(DISCONNECTED, reason, code)
        self.open()

    def forget_session(self, retry_at: float = 0.0) -> None:
        self.session = None
        self._open_sent = False
        self._hello_at, self._retry_at = None, retry_at

    def refused(self, reason: str, retry_in: float = float("inf")) -> None:
        self.forget_session(time.monotonic() + retry_in)
        self.set_state(DISCONNECTED, reason, StateCode.REFUSED)

    def ack(self, **ack) -> None:
        """Acknowledge a frame (``seq``) or result (``job``), and whatever could not
        go out before (of frames only the newest)."""
        if "seq" in ack:
            self._acks = [a for a in self._acks if "seq" not in a]
        self._acks += [ack] if ack else []
        while self._acks and self.send("ack", **self._acks[0]):
            self._acks.pop(0)

    def tick(self) -> None:
        """Heartbeats, hellos and timeouts; also reads the socket monitor."""
        if self.session is None:
            self._acks = []  # the session they were for is gone
        if self.link is None:
            return
        failure = self.link.handshake_failure()
        if failure is not None and self.state != CONNECTED:
            if self.server_public_key is None:
                why = f"the daemon at {self.address} requires encryption: give its public key and your key"
            elif failure == AUTH:
                why = f"the daemon at {self.address} did not accept this key"
            else:
                why = f"the encrypted handshake with {self.address} failed: is encryption on at the daemon?"
            self.set_state(DISCONNECTED, why, StateCode.AUTH_FAILED)
        now = time.monotonic()
        away, self._ticked_at = now - self._ticked_at, now
        if away > self.heartbeat_interval:
            # The caller did not poll meanwhile (a big scene read and compressed): nothing was
            # read and no ping went out, so the daemon's silence then proves nothing.
            self.last_rx = min(now, self.last_rx + away)
            self._hello_at = None if self._hello_at is None else min(now, self._hello_at + away)
        if self.state == CONNECTED:
            if now - self.last_rx > self.timeout:
                why = f"no reply from the daemon for {self.timeout:g} s"
                if self.link.dropped:
                    limit = framecheck.max_part_bytes(self.max_side) // 2**20
                    why += f": the connection closed (the daemon stopped, or sent a part over {limit} MiB)"
                self.reset(why, StateCode.NO_ANSWER)
            elif now - self.last_tx >= self.heartbeat_interval:
                self.send("ping")
        elif self.code != StateCode.CLOSED:
            if self._hello_at is None:
                if now >= self._retry_at and self.send("hello", protocol=protocol.PROTOCOL_VERSION, client=self.name):
                    self._hello_at = now
            elif now - self._hello_at > self.timeout:
                # One hello per socket: a fresh socket drops anything queued for a daemon that is gone.
                if self.code == StateCode.AUTH_FAILED:
                    self.reset(self.reason, StateCode.AUTH_FAILED)
                else:
                    self.reset(
                        f"no reply from the daemon at {self.address} for {self.timeout:g} s: is it running?",
                        StateCode.NO_ANSWER,
                    )

    def undecodable(self, e: protocol.ProtocolError) -> None:
        if e.code == protocol.ErrorCode.BAD_VERSION and self.state != CONNECTED:
            self.refused(
                f"the daemon at {self.address} speaks another protocol version ({e.message}): "
                f"update the plugin or the daemon"
            )

    def handle(self, msg) -> bool:
        """Take the messages about the connection itself; False for the client's."""
        h, t = msg.header, msg.type
        if t == "welcome":
            self.info = h
            # Ping often enough for this daemon's timeout, whatever we were told.
            timeout = h["limits"].get("heartbeat_timeout")
            if isinstance(timeout, (int, float)) and timeout > 0:
                self.heartbeat_interval = min(self.heartbeat_interval, timeout / 3)
            if not self._open_sent:  # one open per handshake, however many welcomes arrive
                self._open_sent = self.send("open")
        elif t == "opened":
            self.session = h["session"]
            self.set_state(CONNECTED, f"connected to {self.address}", StateCode.CONNECTED)
            return False  # the client resends what the new session must know
        elif t == "error" and h["code"] in (protocol.ErrorCode.HANDSHAKE_REQUIRED, protocol.ErrorCode.NO_SESSION):
            # The daemon restarted or freed our session: start over.
            self.forget_session()
            self.set_state(
                DISCONNECTED, "the daemon restarted or dropped the session; reconnecting", StateCode.CONNECTING
            )
        elif t == "error" and h["code"] in _REFUSALS and not self.session:
            busy = h["code"] != protocol.ErrorCode.BAD_VERSION  # busy or quota may change: try again later
            self.refused(h["message"], 5 * self.retry_interval if busy else float("inf"))
            return False  # also an error event
        elif t == "bye":
            # The daemon's own reason alone: the code already says it closed the connection.
            self.reset(h.get("reason") or "no reason given", StateCode.BYE)
        elif t == "closed":
            self.session = None
            if self.state == CONNECTED:
                self.set_state(DISCONNECTED, h.get("reason", "session closed"), StateCode.CLOSED)
            return False
        else:
            return False
        return True

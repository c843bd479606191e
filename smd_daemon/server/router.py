"""The I/O thread: the ROUTER socket, admission, the handshake, and the loop
that hands everything else to sessions, scene workers and the engine loop.

It never decodes a plane, plans a scene or runs the engine: each message
costs it microseconds, so every client's ``hello`` and ``ping`` is answered
at once whatever another client sends.
"""

from __future__ import annotations

import json
import logging
import threading
import time

import zmq

from smd_daemon import __version__, protocol
from smd_daemon.errors import UsageError
from smd_daemon.protocol import ErrorCode, ProtocolError
from smd_daemon.server import curve
from smd_daemon.server.admission import LogThrottle, PeerTable, origin_of
from smd_daemon.server.engine_loop import EngineLoop
from smd_daemon.server.images import FRAME_ENCODINGS
from smd_daemon.server.limits import Limits, scene_defaults
from smd_daemon.server.logtext import label, printable
from smd_daemon.server.memory import MemoryBudget
from smd_daemon.server.outbox import Outbox
from smd_daemon.server.ports import EngineLoopPort, EnginePort, Planner
from smd_daemon.server.scenes import SceneWorkers
from smd_daemon.server.sessions import SessionManager

log = logging.getLogger("smd_daemon.server")

DEFAULT_BIND = "tcp://127.0.0.1:7555"
RECV_BATCH = 200  # messages read before outgoing events get a turn


def model_abilities(planner: Planner) -> dict:
    """What the hello's capabilities say the model can draw: its region modes
    and the control kinds it has a model for."""
    return {"region_modes": list(planner.region_modes), "controls": list(planner.control_kinds)}


class Server:
    def __init__(
        self,
        engine: Planner | None,  # None until the model is loaded (``start`` needs it)
        model_info: dict,
        bind: str = DEFAULT_BIND,
        limits: Limits | None = None,
        keys_dir: str | None = None,
        context: zmq.Context | None = None,
    ):
        self.engine = engine
        self.model_info = model_info
        self.bind = bind
        self.limits = limits or Limits()
        self.keys_dir = keys_dir
        self.ctx = context or zmq.Context()
        self.stopping = threading.Event()
        self.fatal = ""  # why serving ended in failure: the command exits non-zero with it
        # A client may acknowledge every frame it is allowed: acks come on top of its requests.
        self.peers = PeerTable(
            self.limits.max_clients,
            self.limits.max_pending_clients,
            self.limits.max_requests_per_s + self.limits.max_fps,
            self.limits.max_hellos_per_s,
            self.limits.max_clients_per_origin,
        )
        self.throttled_log = LogThrottle()
        self.budget = MemoryBudget(self.limits.max_memory_bytes, self.limits.max_session_bytes)
        self.sessions = SessionManager(self)
        self.outbox = Outbox(self.ctx, self.stopping)
        self._auth = None
        self._refusals = None
        self.sock: zmq.Socket | None = None
        self.extra_sockets: dict = {}  # more sockets the I/O thread reads: socket -> handler (a cluster's workers)
        self.engine_loop: EngineLoopPort | None = None
        self.workers: SceneWorkers | None = None
        self.defaults = scene_defaults()

    def capabilities(self) -> dict:
        return {
            "frame_encodings": list(FRAME_ENCODINGS),
            "plane_encodings": list(protocol.PLANE_ENCODINGS),
            "image_encodings": ["raw", "zlib"] + list(FRAME_ENCODINGS[1:]),
            "partial_updates": True,
            "generate": True,
            "cancel": True,
            "curve": self.keys_dir is not None,
            **model_abilities(self.planner),
        }

    @property
    def planner(self) -> Planner:
        """The engine, once the model is loaded (``serve`` answers nothing before)."""
        if self.engine is None:
            raise RuntimeError("the model is not loaded yet")
        return self.engine

    # --- threads ------------------------------------------------------------

    def post(self, event) -> None:
        """Hand an event to the I/O thread (any thread); dropped once the daemon stops."""
        self.outbox.post(event)

    def open_socket(self) -> None:
        """Bind first, so a busy port or bad keys fail before a long model load."""
        sock = self.ctx.socket(zmq.ROUTER)
        sock.setsockopt(zmq.LINGER, 500)
        sock.setsockopt(zmq.MAXMSGSIZE, self.limits.max_message_bytes)
        sock.setsockopt(zmq.SNDHWM, 1000)
        sock.setsockopt(zmq.RCVHWM, 1000)
        sock.setsockopt(zmq.SNDTIMEO, 0)
        if self.keys_dir is not None:
            self._auth = curve.setup(self.ctx, sock, self.keys_dir, self.throttled_log)
        if protocol.is_ipv6_endpoint(self.bind):
            sock.setsockopt(zmq.IPV6, 1)
        try:
            sock.bind(self.bind)
        except zmq.ZMQError as e:
            sock.close(0)
            raise UsageError(f"cannot bind {self.bind}: {e}") from None
        self._refusals = curve.RefusalLog(sock, self.throttled_log, encrypted=self.keys_dir is not None)
        self.sock = sock
        self.wake_sock = self.outbox.bind()

    def start(self) -> None:
        if self.sock is None:
            self.open_socket()
        self.workers = SceneWorkers(self.planner, self.limits, self.budget, self.post, stopping=self.stopping)
        self.engine_loop = self.make_engine_loop()
        self.engine_loop.start()

    def make_engine_loop(self) -> EngineLoopPort:
        """What runs the engine: a thread here (a cluster sends the same messages to its workers)."""
        if not isinstance(self.engine, EnginePort):
            raise TypeError(f"{type(self.engine).__name__} cannot run an engine loop")
        return EngineLoop(self.engine, self.post, self.stopping)

    def serve_forever(self) -> None:
        main = self.sock
        assert main is not None, "start() opens the socket"
        poller = zmq.Poller()
        poller.register(main, zmq.POLLIN)
        poller.register(self.wake_sock, zmq.POLLIN)
        for sock in self.extra_sockets:
            poller.register(sock, zmq.POLLIN)
        next_sweep = time.monotonic()
        while not self.stopping.is_set():
            ready = dict(poller.poll(100))
            for sock, handle in self.extra_sockets.items():
                if sock in ready:
                    handle()
            if self.wake_sock in ready:
                self.outbox.clear_wakeups()
            self._drain_outbox()
            if main in ready:
                for _ in range(RECV_BATCH):
                    try:
                        frames = main.recv_multipart(zmq.NOBLOCK, copy=False)
                    except zmq.Again:
                        break
                    self._on_message(frames)
                self._drain_outbox()
            if time.monotonic() >= next_sweep:
                self._sweep()
                next_sweep = time.monotonic() + min(0.5, self.limits.heartbeat_timeout / 4)

    def shutdown(self, engine_timeout: float = 3.0) -> bool:
        """Tell every client, stop the threads, close the sockets. False when the
        engine thread did not stop within ``engine_timeout`` (a pass still running)."""
        self.stopping.set()
        if self.sock is not None:
            for peer in self.peers.values():
                if peer.welcomed:
                    self.send(peer.identity, "bye", reason="daemon shutting down")
        stopped = True
        if self.engine_loop is not None:
            self.engine_loop.wake()
            self.engine_loop.join(timeout=engine_timeout)
            stopped = not self.engine_loop.is_alive()
        if self.workers is not None:
            self.workers.shutdown()
        self.sessions.shutdown()
        if self.sock is not None:
            self.sock.close(linger=500)
            self.outbox.close()
        if self._refusals is not None:
            self._refusals.stop()
        if self._auth is not None:
            self._auth.stop()
        self.ctx.destroy(linger=0)
        return stopped

    def welcome_extra(self) -> dict:
        """More fields for ``welcome`` (a cluster lists its workers)."""
        return {}

    # --- sending --------------------------------------------------------------

    def send(self, identity: bytes, type_: str, parts=(), **fields) -> None:
        assert self.sock is not None, "only the I/O thread sends, while serving"
        try:
            self.sock.send_multipart([identity, *protocol.encode(type_, parts, **fields)], zmq.NOBLOCK, copy=False)
        except zmq.Again:
            log.debug("dropped %s to a peer whose queue is full", type_)
        except zmq.ZMQError as e:
            log.debug("could not send %s: %s", type_, e)

    def error(self, identity: bytes, code: str, message: str, re=None, **fields) -> None:
        self.throttled_log(
            logging.INFO,
            "error:" + code,
            identity,
            "error for client %s: %s: %s",
            label(identity),
            code,
            printable(message, 300),  # may quote what the client sent
        )
        if re is not None:
            fields["re"] = re
        self.send(identity, "error", code=code, message=message, **fields)

    def note_bad_ack(self, identity: bytes) -> None:
        self.throttled_log(
            logging.INFO, "ack", identity, "client %s acknowledged a frame it was not sent (ignored)", label(identity)
        )

    def _drain_outbox(self) -> None:
        self.outbox.drain(self.sessions.event)

    # --- receiving --------------------------------------------------------------

    def _on_message(self, frames) -> None:
        if len(frames) < 2:
            return  # ROUTER always prepends the identity: nothing to answer
        identity = frames[0].bytes
        now = time.monotonic()
        peer = self.peers.admit(identity, now)
        if peer is None:
            self._rate_limited(self.peers.get(identity), now)
            return
        if peer.origin is None:
            peer.origin = origin_of(frames[1], identity, self.bind.partition("://")[0])
        total = sum(len(f.buffer) for f in frames[1:])
        try:
            if total > self.limits.max_message_bytes:
                raise ProtocolError(
                    ErrorCode.TOO_LARGE, f"message is {total} bytes, at most {self.limits.max_message_bytes} allowed"
                )
            msg = protocol.decode(frames[1:], protocol.REQUESTS)
        except ProtocolError as e:
            self.error(identity, e.code, e.message, _header_id(frames[1]))
            return
        rid = protocol.request_id(msg.header)
        try:
            self._dispatch(peer, msg, rid, now)
        except ProtocolError as e:
            extra = {"revision": msg.header["revision"]} if msg.type == "update" else {}
            self.error(identity, e.code, e.message, rid, **extra)
        except Exception as e:  # a bug must cost one request, not the daemon
            log.exception("internal error handling %s", msg.type)
            self.error(identity, ErrorCode.INTERNAL, f"internal error: {type(e).__name__}: {str(e)[:200]}", rid)

    def _rate_limited(self, peer, now: float) -> None:
        if peer is None or now - peer.warned_at < 1.0:
            return
        peer.warned_at = now
        rate = self.limits.max_requests_per_s if peer.welcomed else self.limits.max_hellos_per_s
        self.throttled_log(
            logging.WARNING,
            "rate",
            peer.identity,
            "client %s is rate limited: %d messages dropped",
            peer.label,
            peer.dropped,
        )
        if peer.welcomed:  # a connection that never said hello gets nothing for its flood
            self.send(
                peer.identity,
                "error",
                code=ErrorCode.RATE_LIMITED,
                message=f"more than {rate:g} requests per second; {peer.dropped} were dropped",
            )
        peer.dropped = 0

    def _dispatch(self, peer, msg, rid, now: float) -> None:
        t, identity = msg.type, peer.identity
        if t == "hello":
            if msg.header["protocol"] != protocol.PROTOCOL_VERSION:
                raise ProtocolError(
                    ErrorCode.BAD_VERSION,
                    f"protocol {msg.header['protocol']} is not supported; "
                    f"this daemon speaks {protocol.PROTOCOL_VERSION}",
                )
            self.peers.welcome(peer, now)
            if not peer.name:
                peer.name = msg.header.get("client", "?")
                origin = "" if peer.origin.kind == "connection" else f", {peer.origin}"
                log.info("client %s (%s%s) connected", peer.label, printable(peer.name, 60), origin)
            self.send(
                identity,
                "welcome",
                re=rid,
                protocol=protocol.PROTOCOL_VERSION,
                daemon={"name": "smd-daemon", "version": __version__},
                model=self.model_info,
                limits=self.limits.to_dict(),
                defaults=self.defaults,
                capabilities=self.capabilities(),
                **self.welcome_extra(),
            )
            return
        if not peer.welcomed:
            raise ProtocolError(ErrorCode.HANDSHAKE_REQUIRED, f"{t} before hello: say hello first")
        if t == "ping":
            self.send(identity, "pong", re=rid)
        elif t == "open":
            if peer.session is not None:
                self.sessions.free(peer.session, "reopened")
                peer.session = None
            peer.session = self.sessions.open(identity, peer.origin)
            self.send(identity, "opened", re=rid, session=peer.session.id)
        elif peer.session is None or peer.session.id not in self.sessions.sessions:
            peer.session = None
            raise ProtocolError(ErrorCode.NO_SESSION, f"{t} before open: open a session first")
        elif t == "close":
            self.sessions.free(peer.session, "closed by the client")
            peer.session = None
            self.send(identity, "closed", re=rid, reason="closed by the client")
        else:
            self.sessions.request(peer.session, msg, rid)

    def _sweep(self) -> None:
        """Free the sessions of clients that stopped sending heartbeats; forget silent strangers."""
        timeout = self.limits.heartbeat_timeout
        for peer in self.peers.idle(time.monotonic(), timeout):
            self.peers.remove(peer.identity)
            if peer.session is not None:
                self.sessions.free(peer.session, f"no heartbeat for {timeout:g} s")
            if peer.welcomed:
                self.send(peer.identity, "bye", reason=f"no heartbeat for {timeout:g} s")


def _header_id(frame):
    """The request id of a message that failed its checks, if it can be read at all."""
    try:
        return protocol.request_id(json.loads(frame.bytes[: protocol.MAX_HEADER_BYTES]))
    except (ValueError, RecursionError):
        return None

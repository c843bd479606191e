"""``smd-daemon serve``: load a model and serve Krita clients over ZeroMQ.

Two threads. The main thread owns the ROUTER socket: it reads requests,
checks them, builds scenes and sends replies and frames. The GPU thread
owns the engine (which is not thread-safe) and does nothing but engine
calls; scene updates reach it through ``Session.pending_scene`` and are
applied between two engine calls. Frames come back through a queue and a
wake-up socket. Frames are flow-controlled per client (a window of unacked
frames plus one pending "latest" frame), so a slow client costs neither
memory nor GPU time, and never holds back anyone else.
"""

from __future__ import annotations

import argparse
import collections
import concurrent.futures
import dataclasses
import io
import itertools
import json
import logging
import os
import signal
import threading
import time
import uuid
import zlib
from dataclasses import dataclass, field

import numpy as np
import torch
import zmq
from PIL import Image, UnidentifiedImageError, features
from zmq.auth import load_certificate
from zmq.auth.thread import ThreadAuthenticator

from smd_daemon import __version__, protocol
from smd_daemon.cli import UsageError
from smd_daemon.config import load_config
from smd_daemon.engine import scene as scene_limits
from smd_daemon.engine.core import Cancelled, Engine
from smd_daemon.engine.models import DEFAULT_MODEL, check_kind, load_model, pick_device
from smd_daemon.engine.runner import check_speed_options
from smd_daemon.engine.scene import SceneError
from smd_daemon.grammar import LayerInput, build_scene
from smd_daemon.protocol import ErrorCode, ProtocolError

log = logging.getLogger("smd_daemon.server")

DEFAULT_BIND = "tcp://127.0.0.1:7555"


@dataclass
class Limits:
    """What one daemon allows; sent to every client in the handshake."""

    max_sessions: int = 8
    max_clients: int = 128  # handshaken connections, with or without a session
    max_layers: int = 64  # layers per scene, regions or not
    max_regions: int = scene_limits.MAX_REGIONS
    min_side: int = scene_limits.MIN_SIDE
    max_side: int = scene_limits.MAX_SIDE  # output width/height in pixels
    max_steps: int = scene_limits.MAX_STEPS
    max_prompt_chars: int = scene_limits.MAX_PROMPT_CHARS
    max_message_bytes: int = 64 * 2**20  # largest single message part (ZeroMQ MAXMSGSIZE)
    max_scene_bytes: int = 256 * 2**20  # alpha planes + background image one session keeps
    max_fps: float = 30.0  # live frames per second per session
    max_jobs: int = 4  # queued generate jobs per session
    max_requests_per_s: float = 300.0  # per client; a burst of twice that is allowed
    frame_window: int = 2  # live frames sent but not yet acknowledged
    heartbeat_interval: float = 1.0
    heartbeat_timeout: float = 10.0

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


# --- sessions ------------------------------------------------------------

@dataclass
class Job:
    id: int
    scene: object
    revision: int
    encoding: str
    quality: int
    cancelled: bool = False
    started: bool = False


@dataclass
class Session:
    id: str
    identity: bytes
    # Scene as the client described it (I/O thread only).
    layers: dict = field(default_factory=dict)  # key -> (name, visible, alpha uint8 | None)
    order: list = field(default_factory=list)
    settings: dict = field(default_factory=dict)
    bg_image: np.ndarray | None = None
    revision: int = 0
    scene: object = None  # newest valid Scene
    # Shared with the GPU thread; guarded by Server.lock.
    pending_scene: tuple | None = None  # (Scene, revision) not yet applied
    live: bool = False
    encoding: str = "raw"
    quality: int = 80
    min_interval: float = 0.0
    next_step_at: float = 0.0
    latest: tuple | None = None  # newest frame not sent yet: (StreamFrame, engine_ms, batch)
    seq: int = 0
    acked: int = 0
    jobs: collections.deque = field(default_factory=collections.deque)
    closed: bool = False
    encoding_busy: bool = False  # a compressed frame is being encoded (I/O thread)
    stream: object = None  # GPU thread only


class TokenBucket:
    """At most ``rate`` requests per second on average, bursts of twice that."""

    def __init__(self, rate: float):
        self.rate, self.tokens, self.refilled = rate, 2 * rate, time.monotonic()

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
    session: Session | None = None
    warned_at: float = 0.0


# --- images ---------------------------------------------------------------

def encode_frame(image: np.ndarray, encoding: str, quality: int) -> bytes:
    """An HxWx3 uint8 frame as bytes in the requested encoding."""
    if encoding == "raw":
        return np.ascontiguousarray(image).tobytes()
    buf = io.BytesIO()
    im = Image.fromarray(image)
    if encoding == "png":
        im.save(buf, "PNG", compress_level=1)
    elif encoding == "jpeg":
        im.save(buf, "JPEG", quality=quality)
    else:
        im.save(buf, "WEBP", quality=quality, method=1)
    return buf.getvalue()


def decode_plane(data: memoryview, encoding: str, width: int, height: int, channels: int, what: str) -> np.ndarray:
    """A binary part as a uint8 (H, W) or (H, W, 3) array of exactly the output size."""
    expected = width * height * channels
    shape = (height, width) if channels == 1 else (height, width, channels)
    if encoding in ("raw", "zlib"):
        if encoding == "zlib":
            # Bounded: a zlib bomb stops one byte past the expected size.
            d = zlib.decompressobj()
            try:
                raw = d.decompress(data, expected + 1)
            except zlib.error as e:
                raise ProtocolError(ErrorCode.BAD_IMAGE, f"{what}: not valid zlib data ({e})") from None
            if len(raw) != expected or not d.eof:
                raise ProtocolError(ErrorCode.BAD_IMAGE, f"{what}: zlib data does not inflate to {width}x{height}"
                                                         f"x{channels} = {expected} bytes")
        else:
            raw = data
            if len(raw) != expected:
                raise ProtocolError(ErrorCode.BAD_IMAGE, f"{what}: {len(raw)} bytes, expected {width}x{height}"
                                                         f"x{channels} = {expected}")
        return np.frombuffer(raw, np.uint8).reshape(shape).copy()
    try:
        im = Image.open(io.BytesIO(data))
        # Check the size from the file header before decoding any pixels.
        if im.size != (width, height):
            raise ProtocolError(ErrorCode.BAD_IMAGE, f"{what}: image is {im.size[0]}x{im.size[1]}, "
                                                     f"expected {width}x{height}")
        if im.format not in {"jpeg": ("JPEG", "MPO"), "png": ("PNG",), "webp": ("WEBP",)}[encoding]:
            raise ProtocolError(ErrorCode.BAD_IMAGE, f"{what}: data is {im.format}, not {encoding}")
        im = im.convert("L" if channels == 1 else "RGB")
    except ProtocolError:
        raise
    except (UnidentifiedImageError, OSError, ValueError, SyntaxError, Image.DecompressionBombError) as e:
        raise ProtocolError(ErrorCode.BAD_IMAGE, f"{what}: cannot decode {encoding} image ({e})") from None
    return np.asarray(im, dtype=np.uint8).reshape(shape).copy()


# --- the GPU loop ----------------------------------------------------------

class GpuLoop(threading.Thread):
    """Runs every engine call; serves live sessions round-robin, one step each per round."""

    def __init__(self, server: "Server", engine):
        super().__init__(name="gpu-loop", daemon=True)
        self.server = server
        self.engine = engine
        self._job_turn = 0

    def run(self) -> None:
        while not self.server.stopping.is_set():
            try:
                self._round()
            except Exception:  # a bug must not silently stop every stream
                log.exception("GPU loop error; continuing")
                time.sleep(0.1)

    def _round(self) -> None:
        """One round: apply pending scenes, step every ready stream once, run one job."""
        srv = self.server
        with srv.cv:
            now = time.monotonic()
            updates, ready, job, wait = [], [], None, 0.1
            for s in list(srv.sessions.values()):
                # Streams are opened only for live sessions: generate alone needs none.
                if s.pending_scene is not None and (s.live or s.stream is not None):
                    updates.append((s, s.pending_scene))
                    s.pending_scene = None
                if s.live and s.latest is None and (s.stream is not None or updates and updates[-1][0] is s):
                    if now >= s.next_step_at:
                        ready.append(s)
                    else:
                        wait = min(wait, s.next_step_at - now)
            job = self._next_job()
            if not (updates or ready or job):
                srv.cv.wait(wait)
                return
        for s, (scene, revision) in updates:
            if not s.closed:
                self._apply(s, scene, revision)
        ready = [s for s in ready if s.stream is not None and not s.closed]
        if ready:
            self._step(ready)
        if job is not None:
            self._generate(*job)

    def _next_job(self):
        """The next queued job, taking sessions in turn (called under the lock)."""
        sessions = [s for s in self.server.sessions.values() if s.jobs]
        if not sessions:
            return None
        self._job_turn = (self._job_turn + 1) % len(sessions)
        s = sessions[self._job_turn]
        job = s.jobs[0]
        job.started = True
        return s, job

    def _apply(self, s: Session, scene, revision: int) -> None:
        try:
            if s.stream is None:
                s.stream = self.engine.open_stream(scene, revision=revision)
            else:
                s.stream.update(scene, revision)
        except SceneError as e:
            self.server.post(s, "error", ErrorCode.BAD_SCENE, str(e), {"revision": revision})
        except Exception as e:  # engine failure: this session only
            self._failed(s, e)

    def _step(self, ready: list) -> None:
        t0 = time.perf_counter()
        try:
            frames = self.engine.step_streams([s.stream for s in ready])
        except Exception as e:
            if len(ready) == 1:
                self._failed(ready[0], e)
                return
            # Find the session at fault by stepping each alone.
            log.warning("batched step failed (%s); stepping sessions one by one", e)
            for s in ready:
                self._step([s])
            return
        engine_ms = (time.perf_counter() - t0) * 1000
        now = time.monotonic()
        with self.server.cv:
            for s, frame in zip(ready, frames):
                s.next_step_at = now + s.min_interval
                s.latest = (frame, engine_ms, len(ready))
        self.server.wake()

    def _generate(self, s: Session, job: Job) -> None:
        def progress(step, total):
            self.server.post(s, "progress", job.id, step, total)

        t0 = time.perf_counter()
        try:
            if job.cancelled or s.closed:
                raise Cancelled()
            image = self.engine.generate(job.scene, progress=progress, cancel=lambda: job.cancelled or s.closed)
        except Cancelled:
            self.server.post(s, "cancelled", job.id)
        except SceneError as e:
            self.server.post(s, "error", ErrorCode.BAD_SCENE, str(e), {"job": job.id})
        except Exception as e:
            self._failed(s, e, job)
        else:
            self.server.post(s, "result", job, image, (time.perf_counter() - t0) * 1000)
        finally:
            with self.server.cv:
                if s.jobs and s.jobs[0] is job:
                    s.jobs.popleft()

    def _failed(self, s: Session, e: Exception, job: Job | None = None) -> None:
        log.error("engine failed for session %s: %s: %s", s.id[:8], type(e).__name__, e)
        with self.server.cv:
            s.stream = None
            was_live, s.live = s.live, False
        extra = {"job": job.id} if job else {}
        self.server.post(s, "error", ErrorCode.ENGINE_ERROR,
                         f"the engine failed: {type(e).__name__}: {str(e)[:300]}"
                         + ("; live mode stopped" if was_live and not job else ""), extra)
        if was_live and not job:
            self.server.post(s, "live", False)


# --- the server ------------------------------------------------------------

class Server:
    def __init__(self, engine, model_info: dict, bind: str = DEFAULT_BIND, limits: Limits | None = None,
                 keys_dir: str | None = None, context: zmq.Context | None = None):
        self.engine = engine
        self.model_info = model_info
        self.bind = bind
        self.limits = limits or Limits()
        self.keys_dir = keys_dir
        self.ctx = context or zmq.Context()
        self.lock = threading.Lock()
        self.cv = threading.Condition(self.lock)
        self.stopping = threading.Event()
        self.sessions: dict[str, Session] = {}
        self.peers: dict[bytes, Peer] = {}
        self._outbox: collections.deque = collections.deque()
        self._wake_addr = f"inproc://wake-{uuid.uuid4().hex}"
        self._auth = None
        self._jobs = itertools.count(1)
        self._unknown_bucket = TokenBucket(self.limits.max_requests_per_s)  # shared by peers before hello
        self._thread_wake = threading.local()
        self._encoders = concurrent.futures.ThreadPoolExecutor(max_workers=2, thread_name_prefix="encode")
        self.sock = None
        self.gpu: GpuLoop | None = None

    # The GPU thread talks to the I/O thread through these two.
    def post(self, session: Session, kind: str, *payload) -> None:
        self._outbox.append((session, kind, payload))
        self.wake()

    def wake(self) -> None:
        sock = getattr(self._thread_wake, "sock", None)
        if sock is None:
            sock = self._thread_wake.sock = self.ctx.socket(zmq.PUSH)
            sock.setsockopt(zmq.LINGER, 0)
            sock.setsockopt(zmq.SNDHWM, 1)
            sock.connect(self._wake_addr)
        try:
            sock.send(b"", zmq.NOBLOCK)
        except zmq.Again:
            pass  # a wake-up is already pending

    def capabilities(self) -> dict:
        encodings = ["raw", "png", "jpeg"] + (["webp"] if features.check("webp") else [])
        return {"frame_encodings": encodings, "plane_encodings": list(protocol.PLANE_ENCODINGS),
                "image_encodings": ["raw", "zlib"] + encodings[1:], "partial_updates": True,
                "generate": True, "cancel": True, "curve": self.keys_dir is not None,
                "region_modes": list(getattr(self.engine, "region_modes", ("latent",)))}

    # --- setup and the main loop ------------------------------------------

    def open_socket(self) -> None:
        """Bind first, so a busy port or bad keys fail before a long model load."""
        sock = self.ctx.socket(zmq.ROUTER)
        sock.setsockopt(zmq.LINGER, 500)
        sock.setsockopt(zmq.MAXMSGSIZE, self.limits.max_message_bytes)
        sock.setsockopt(zmq.SNDHWM, 1000)
        sock.setsockopt(zmq.RCVHWM, 1000)
        sock.setsockopt(zmq.SNDTIMEO, 0)
        if self.keys_dir is not None:
            self._setup_curve(sock)
        try:
            sock.bind(self.bind)
        except zmq.ZMQError as e:
            sock.close(0)
            raise UsageError(f"cannot bind {self.bind}: {e}") from None
        self.sock = sock
        self.wake_sock = self.ctx.socket(zmq.PULL)
        self.wake_sock.bind(self._wake_addr)

    def start(self) -> None:
        if self.sock is None:
            self.open_socket()
        self.gpu = GpuLoop(self, self.engine)
        self.gpu.start()

    def _setup_curve(self, sock) -> None:
        secret_file = os.path.join(self.keys_dir, "server.key_secret")
        allowed = os.path.join(self.keys_dir, "authorized")
        if not os.path.isfile(secret_file):
            raise UsageError(f"no server key in {self.keys_dir}: create one with 'smd-daemon keys {self.keys_dir}'")
        if not os.path.isdir(allowed):
            raise UsageError(f"no folder of allowed client keys at {allowed}: "
                             f"create one with 'smd-daemon keys {self.keys_dir}'")
        public, secret = load_certificate(secret_file)
        if not secret:
            raise UsageError(f"{secret_file} holds no secret key")
        n = len([f for f in os.listdir(allowed) if f.endswith(".key")])
        if n == 0:
            log.warning("no client keys in %s: nobody can connect", allowed)
        self._auth = ThreadAuthenticator(self.ctx)
        self._auth.start()
        self._auth.configure_curve(domain="*", location=allowed)
        sock.curve_secretkey = secret
        sock.curve_publickey = public
        sock.curve_server = True
        log.info("CURVE encryption on; %d allowed client key(s) in %s", n, allowed)

    def serve_forever(self) -> None:
        poller = zmq.Poller()
        poller.register(self.sock, zmq.POLLIN)
        poller.register(self.wake_sock, zmq.POLLIN)
        next_sweep = time.monotonic()
        while not self.stopping.is_set():
            ready = dict(poller.poll(100))
            if self.wake_sock in ready:
                while True:
                    try:
                        self.wake_sock.recv(zmq.NOBLOCK)
                    except zmq.Again:
                        break
            self._drain_outbox()
            if self.sock in ready:
                for _ in range(200):  # bounded so outgoing frames are not starved
                    try:
                        frames = self.sock.recv_multipart(zmq.NOBLOCK, copy=False)
                    except zmq.Again:
                        break
                    self._on_message(frames)
                self._drain_outbox()
            if time.monotonic() >= next_sweep:
                self._sweep()
                next_sweep = time.monotonic() + min(0.5, self.limits.heartbeat_timeout / 4)

    def shutdown(self) -> None:
        """Tell every client, stop the GPU loop, close the sockets."""
        self.stopping.set()
        with self.cv:
            for s in self.sessions.values():
                s.closed = True
                for job in s.jobs:
                    job.cancelled = True
            self.cv.notify_all()
        if self.sock is not None:
            for identity in list(self.peers):
                self._send(identity, "bye", reason="daemon shutting down")
        if self.gpu is not None:
            self.gpu.join(timeout=30)
        self._encoders.shutdown(wait=True, cancel_futures=True)
        if self.sock is not None:
            self.sock.close(linger=500)
            self.wake_sock.close(linger=0)
        if self._auth is not None:
            self._auth.stop()
        self.ctx.destroy(linger=0)

    # --- sending ------------------------------------------------------------

    def _send(self, identity: bytes, type_: str, parts=(), **fields) -> None:
        try:
            self.sock.send_multipart([identity, *protocol.encode(type_, parts, **fields)], zmq.NOBLOCK, copy=False)
        except zmq.Again:
            log.debug("dropped %s to a peer whose queue is full", type_)
        except zmq.ZMQError as e:
            log.debug("could not send %s: %s", type_, e)

    def _error(self, identity: bytes, code: str, message: str, re=None, **fields) -> None:
        log.info("error for client %s: %s: %s", identity.hex()[:8], code, message)
        if re is not None:
            fields["re"] = re
        self._send(identity, "error", code=code, message=message, **fields)

    def _drain_outbox(self) -> None:
        while self._outbox:
            s, kind, payload = self._outbox.popleft()
            if s.closed:
                continue
            if kind == "error":
                code, message, extra = payload
                self._error(s.identity, code, message, **extra)
            elif kind == "progress":
                self._send(s.identity, "progress", job=payload[0], step=payload[1], total=payload[2])
            elif kind == "cancelled":
                self._send(s.identity, "cancelled", job=payload[0])
            elif kind == "live":
                self._send(s.identity, "live", active=payload[0])
            elif kind == "result":
                job, image, engine_ms = payload
                h, w = image.shape[:2]
                self._send_image(s, "result", image, job.encoding, job.quality,
                                 dict(job=job.id, revision=job.revision, width=w, height=h, encoding=job.encoding,
                                      channels=3, part=0, engine_ms=round(engine_ms, 3)))
            elif kind == "encoded":
                type_, data, encode_ms, fields = payload
                if type_ == "frame":
                    s.encoding_busy = False
                self._send(s.identity, type_, [data], encode_ms=encode_ms, sent_at=time.time(), **fields)
        for s in list(self.sessions.values()):
            self._deliver(s)

    def _send_image(self, s: Session, type_: str, image: np.ndarray, encoding: str, quality: int,
                    fields: dict) -> None:
        """Encode and send a frame or result; compression runs on the encoder
        threads (Pillow releases the GIL), so it never holds up other clients."""
        if encoding == "raw":
            t0 = time.perf_counter()
            data = encode_frame(image, "raw", quality)
            self._send(s.identity, type_, [data], encode_ms=round((time.perf_counter() - t0) * 1000, 3),
                       sent_at=time.time(), **fields)
            return
        if type_ == "frame":
            s.encoding_busy = True  # one at a time per session keeps its frames in order

        def work():
            t0 = time.perf_counter()
            try:
                data = encode_frame(image, encoding, quality)
            except Exception as e:  # Pillow failures: this client only
                log.error("could not encode a %s %s: %s", encoding, type_, e)
                s.encoding_busy = False
                self.post(s, "error", ErrorCode.ENGINE_ERROR, f"could not encode the {type_} as {encoding}: {e}",
                          {"job": fields["job"]} if "job" in fields else {})
                return
            self.post(s, "encoded", type_, data, round((time.perf_counter() - t0) * 1000, 3), fields)

        self._encoders.submit(work)

    def _deliver(self, s: Session) -> None:
        """Send the newest live frame if the client's window has room (latest frame wins)."""
        with self.cv:
            if s.latest is None or s.closed or s.encoding_busy or s.seq - s.acked >= self.limits.frame_window:
                return
            if not s.live:
                s.latest = None
                return
            (frame, engine_ms, batch), s.latest = s.latest, None
            steps = int(getattr(s.stream, "steps_in_flight", 0) or 0)
            s.seq += 1
            seq = s.seq
            encoding, quality = s.encoding, s.quality
            self.cv.notify()  # this session may be stepped again
        h, w = frame.image.shape[:2]
        self._send_image(s, "frame", frame.image, encoding, quality,
                         dict(seq=seq, revision=int(frame.revision), settled=bool(frame.settled),
                              index=int(frame.index), steps_in_flight=steps, width=w, height=h, encoding=encoding,
                              channels=3, part=0, engine_ms=round(engine_ms, 3), batch=batch))

    # --- receiving ------------------------------------------------------------

    def _on_message(self, frames) -> None:
        if len(frames) < 2:
            log.warning("dropped a message with no header")
            return
        identity = frames[0].bytes
        now = time.monotonic()
        peer = self.peers.get(identity)
        if not (peer.bucket if peer is not None else self._unknown_bucket).allow(now):
            if peer is not None and now - peer.warned_at > 1.0:
                peer.warned_at = now
                self._error(identity, ErrorCode.RATE_LIMITED,
                            f"more than {self.limits.max_requests_per_s:g} requests per second; some were dropped")
            return
        if peer is not None:
            peer.last_seen = now
        total = sum(len(f.buffer) for f in frames[1:])
        try:
            if total > self.limits.max_message_bytes:
                raise ProtocolError(ErrorCode.TOO_LARGE, f"message is {total} bytes, at most "
                                                         f"{self.limits.max_message_bytes} allowed")
            msg = protocol.decode(frames[1:], protocol.REQUESTS)
        except ProtocolError as e:
            self._error(identity, e.code, e.message, self._header_id(frames[1]))
            return
        rid = protocol.request_id(msg.header)
        try:
            self._dispatch(identity, peer, msg, rid, now)
        except ProtocolError as e:
            extra = {"revision": msg.header["revision"]} if msg.type == "update" else {}
            self._error(identity, e.code, e.message, rid, **extra)
        except Exception as e:  # a bug must cost one request, not the daemon
            log.exception("internal error handling %s", msg.type)
            self._error(identity, ErrorCode.INTERNAL, f"internal error: {type(e).__name__}: {str(e)[:200]}", rid)

    @staticmethod
    def _header_id(frame):
        """The request id of a message that failed its checks, if it can be read at all."""
        try:
            return protocol.request_id(json.loads(frame.bytes[:protocol.MAX_HEADER_BYTES]))
        except (ValueError, RecursionError):
            return None

    def _dispatch(self, identity: bytes, peer: Peer | None, msg, rid, now: float) -> None:
        t = msg.type
        if t == "hello":
            if msg.header["protocol"] != protocol.PROTOCOL_VERSION:
                raise ProtocolError(ErrorCode.BAD_VERSION, f"protocol {msg.header['protocol']} is not supported; "
                                                           f"this daemon speaks {protocol.PROTOCOL_VERSION}")
            if peer is None:
                if len(self.peers) >= self.limits.max_clients:
                    raise ProtocolError(ErrorCode.BUSY, "too many clients are connected")
                peer = self.peers[identity] = Peer(identity, now, TokenBucket(self.limits.max_requests_per_s))
                log.info("client %s (%s) connected", identity.hex()[:8], msg.header.get("client", "?"))
            self._send(identity, "welcome", re=rid, protocol=protocol.PROTOCOL_VERSION,
                       daemon={"name": "smd-daemon", "version": __version__}, model=self.model_info,
                       limits=self.limits.to_dict(), capabilities=self.capabilities())
            return
        if peer is None:
            raise ProtocolError(ErrorCode.HANDSHAKE_REQUIRED, f"{t} before hello: say hello first")
        if t == "ping":
            self._send(identity, "pong", re=rid)
            return
        if t == "open":
            if peer.session is not None:
                self._free(peer.session, "reopened")
                peer.session = None
            if len(self.sessions) >= self.limits.max_sessions:
                raise ProtocolError(ErrorCode.BUSY, f"all {self.limits.max_sessions} sessions are in use")
            s = Session(uuid.uuid4().hex, identity)
            with self.cv:
                self.sessions[s.id] = s
            peer.session = s
            log.info("session %s opened for client %s", s.id[:8], identity.hex()[:8])
            self._send(identity, "opened", re=rid, session=s.id)
            return
        s = peer.session
        if s is None:
            raise ProtocolError(ErrorCode.NO_SESSION, f"{t} before open: open a session first")
        if t == "close":
            self._free(s, "closed by the client")
            peer.session = None
            self._send(identity, "closed", re=rid, reason="closed by the client")
        elif t == "update":
            self._update(s, msg, rid)
        elif t == "live_start":
            h = msg.header
            fps = min(float(h.get("max_fps", self.limits.max_fps)), self.limits.max_fps)
            encoding = h.get("encoding", "raw")
            if encoding not in self.capabilities()["frame_encodings"]:
                raise ProtocolError(ErrorCode.BAD_FIELD, f"frame encoding {encoding} is not available here")
            with self.cv:
                s.live, s.encoding, s.quality = True, encoding, int(h.get("quality", 80))
                s.min_interval = 1.0 / fps
                self.cv.notify()
            self._send(identity, "live", re=rid, active=True, encoding=encoding, max_fps=fps)
        elif t == "live_stop":
            with self.cv:
                s.live = False
                s.latest = None
            self._send(identity, "live", re=rid, active=False)
        elif t == "ack":
            with self.cv:
                s.acked = max(s.acked, min(msg.header["seq"], s.seq))
            self._deliver(s)
        elif t == "generate":
            self._queue_job(s, msg, rid)
        elif t == "cancel":
            self._cancel(s, msg.header.get("job"), rid)

    def _queue_job(self, s: Session, msg, rid) -> None:
        h = msg.header
        if s.scene is None:
            raise ProtocolError(ErrorCode.NO_SCENE, "generate before any scene: send an update first")
        job_id = rid if rid is not None else next(self._jobs)
        with self.cv:
            if len(s.jobs) >= self.limits.max_jobs:
                raise ProtocolError(ErrorCode.BUSY, f"{len(s.jobs)} jobs are queued; at most "
                                                    f"{self.limits.max_jobs} allowed")
            if any(j.id == job_id for j in s.jobs):
                raise ProtocolError(ErrorCode.BAD_FIELD, f"job {job_id} is already queued")
        scene = s.scene
        changes = {k: h[k] for k in ("steps", "seed") if k in h}
        if changes:
            scene = dataclasses.replace(scene, **changes)
            scene.bootstrap_steps = min(scene.bootstrap_steps, scene.steps)
            try:
                scene.validate()
            except SceneError as e:
                raise ProtocolError(ErrorCode.BAD_FIELD, str(e)) from None
        encoding = h.get("encoding", "png")
        if encoding not in self.capabilities()["frame_encodings"]:
            raise ProtocolError(ErrorCode.BAD_FIELD, f"encoding {encoding} is not available here")
        job = Job(job_id, scene, s.revision, encoding, int(h.get("quality", 95)))
        with self.cv:
            s.jobs.append(job)
            self.cv.notify()
        self._send(s.identity, "queued", re=rid, job=job_id)

    def _cancel(self, s: Session, job_id, rid) -> None:
        with self.cv:
            jobs = [j for j in s.jobs if job_id is None or j.id == job_id]
            if job_id is not None and not jobs:
                raise ProtocolError(ErrorCode.BAD_FIELD, f"no job {job_id} is queued or running")
            for j in jobs:
                j.cancelled = True
                if not j.started:
                    s.jobs.remove(j)
        for j in jobs:
            if not j.started:  # a running job reports its own cancellation
                self._send(s.identity, "cancelled", re=rid, job=j.id)

    def _free(self, s: Session, why: str) -> None:
        with self.cv:
            s.closed = True
            s.live = False
            for j in s.jobs:
                j.cancelled = True
            self.sessions.pop(s.id, None)
            self.cv.notify()
        log.info("session %s freed: %s", s.id[:8], why)

    def _sweep(self) -> None:
        """Free the sessions of clients that stopped sending heartbeats."""
        now = time.monotonic()
        for identity, peer in list(self.peers.items()):
            if now - peer.last_seen > self.limits.heartbeat_timeout:
                del self.peers[identity]
                if peer.session is not None:
                    self._free(peer.session, f"no heartbeat for {self.limits.heartbeat_timeout:g} s")
                self._send(identity, "bye", reason=f"no heartbeat for {self.limits.heartbeat_timeout:g} s")

    # --- scene updates ------------------------------------------------------

    def _update(self, s: Session, msg, rid) -> None:
        """Apply a full or partial update, all or nothing; reply with how each layer was read."""
        h = msg.header
        lim = self.limits
        revision = h["revision"]
        if revision <= s.revision:
            raise ProtocolError(ErrorCode.STALE_REVISION, f"revision {revision} is not newer than {s.revision}")
        full = h["full"]
        if not full and not s.settings:
            raise ProtocolError(ErrorCode.NO_SCENE, "a partial update needs a full update first")
        settings = {} if full else dict(s.settings)
        for k in ("width", "height", "seed", "steps", "guidance_scale", "mask_mode", "region_mode", "negative_prompt"):
            if k in h:
                settings[k] = h[k]
        if full and ("width" not in h or "height" not in h):
            raise ProtocolError(ErrorCode.BAD_FIELD, "a full update needs width and height")
        w, h_ = settings["width"], settings["height"]
        for side in (w, h_):
            if side > lim.max_side:
                raise ProtocolError(ErrorCode.TOO_LARGE, f"output {w}x{h_} is larger than {lim.max_side} per side")
            if side < lim.min_side or side % 8:
                raise ProtocolError(ErrorCode.BAD_FIELD, f"output {w}x{h_}: sides must be multiples of 8 "
                                                         f"between {lim.min_side} and {lim.max_side}")
        if not full and (w, h_) != (s.settings["width"], s.settings["height"]):
            raise ProtocolError(ErrorCode.BAD_FIELD, "changing the output size needs a full update")
        if settings.get("steps", 4) > lim.max_steps:
            raise ProtocolError(ErrorCode.BAD_FIELD, f"steps must be at most {lim.max_steps}")
        bg = dict(s.settings.get("background", {})) if not full else {}
        bg_image = None if full else s.bg_image
        if "background" in h:
            new_bg = h["background"]
            for k in ("prompt", "negative_prompt", "strength"):
                if k in new_bg:
                    bg[k] = new_bg[k]
            if "image" in new_bg:
                ref = new_bg["image"]
                bg_image = None if ref is None else decode_plane(
                    msg.part(ref["part"]), ref.get("encoding", "raw"), w, h_, 3, "background image")
        settings["background"] = bg

        layers = {} if full else dict(s.layers)
        order = [] if full else list(s.order)
        entries = h.get("layers", [])
        if len(entries) > lim.max_layers:
            raise ProtocolError(ErrorCode.TOO_LARGE, f"{len(entries)} layers, at most {lim.max_layers} allowed")
        for i, e in enumerate(entries):
            key = e["key"]
            name = e.get("name", layers[key][0] if key in layers else "")
            visible = e.get("visible", layers[key][1] if key in layers else True)
            if "alpha" in e:
                ref = e["alpha"]
                alpha = None if ref is None else decode_plane(
                    msg.part(ref["part"]), ref.get("encoding", "raw"), w, h_, 1, f"layer {name[:60]!r} alpha")
            elif key in layers:
                alpha = layers[key][2]
            elif full:
                alpha = None
            else:
                raise ProtocolError(ErrorCode.BAD_FIELD, f"layers[{i}]: new layer {key[:60]!r} needs an alpha plane")
            layers[key] = (name, visible, alpha)
            if key not in order:
                order.append(key)
        if "order" in h:
            unknown = [k for k in h["order"] if k not in layers]
            if unknown:
                raise ProtocolError(ErrorCode.BAD_FIELD, f"order names unknown layer {unknown[0][:60]!r}")
            order = list(dict.fromkeys(h["order"]))
            layers = {k: layers[k] for k in order}
        if len(order) > lim.max_layers:
            raise ProtocolError(ErrorCode.TOO_LARGE, f"{len(order)} layers, at most {lim.max_layers} allowed")
        # Partial updates add up: bound what one session keeps, not just each message.
        kept = sum(a.nbytes for _, _, a in layers.values() if a is not None) + (0 if bg_image is None
                                                                               else bg_image.nbytes)
        if kept > lim.max_scene_bytes:
            raise ProtocolError(ErrorCode.TOO_LARGE, f"the scene would hold {kept / 2**20:.0f} MiB of pixels, "
                                                     f"at most {lim.max_scene_bytes / 2**20:.0f} MiB allowed")

        inputs = [LayerInput(layers[k][0], layers[k][2], layers[k][1]) for k in order]
        try:
            scene, parsed = build_scene(
                inputs, w, h_, background_prompt=bg.get("prompt", ""),
                negative_prompt=settings.get("negative_prompt", ""), background_image=bg_image,
                background_strength=bg.get("strength", 0.0), seed=settings.get("seed", 0),
                steps=settings.get("steps", 4),
                **{k: settings[k] for k in ("guidance_scale", "mask_mode", "region_mode") if k in settings})
            for text in [bg.get("prompt", ""), settings.get("negative_prompt", "")] + [p.prompt for p in parsed]:
                if len(text) > lim.max_prompt_chars:
                    raise ProtocolError(ErrorCode.TOO_LARGE, f"a prompt of {len(text)} characters: at most "
                                                             f"{lim.max_prompt_chars} allowed ({text[:40]!r}...)")
            if len(scene.regions) > lim.max_regions:
                raise ProtocolError(ErrorCode.TOO_MANY_REGIONS, f"{len(scene.regions)} regions, at most "
                                                                f"{lim.max_regions} allowed")
            scene.bootstrap_steps = min(scene.bootstrap_steps, scene.steps)
            scene.validate()
        except SceneError as e:
            raise ProtocolError(ErrorCode.BAD_SCENE, str(e)) from None
        try:  # a setting this model cannot do (region mode, steps): refused before any work
            getattr(self.engine, "check", lambda scene: scene)(scene)
        except SceneError as e:
            raise ProtocolError(ErrorCode.BAD_FIELD, str(e)) from None

        # Everything checked: commit.
        s.layers, s.order, s.settings, s.bg_image, s.revision, s.scene = layers, order, settings, bg_image, \
            revision, scene
        with self.cv:
            s.pending_scene = (scene, revision)
            self.cv.notify()
        self._send(s.identity, "scene", re=rid, revision=revision, regions=len(scene.regions),
                   layers=[p.to_dict() for p in parsed])


# --- the command --------------------------------------------------------------

OPTIONS = {
    # name: (type, default, help)
    "model": (str, DEFAULT_MODEL, "a preset (tiny, random-sd15: random weights, offline), a diffusers folder, "
                                  "a .safetensors/.ckpt file or a hub id"),
    "lora": (str, None, "LoRA to fuse at load (hub id, folder or file), e.g. an LCM-LoRA for plain SD-1.5"),
    "tiny_vae": (str, "auto", "tiny autoencoder for fast decoding: hub id, folder, 'none' or 'auto' "
                              "(TAESD for real models, none for presets)"),
    "model_config": (str, None, "diffusers folder describing a single-file checkpoint (offline use)"),
    "bind": (str, DEFAULT_BIND, "ZeroMQ endpoint to listen on"),
    "keys": (str, None, "folder from 'smd-daemon keys': enables CURVE encryption and client keys"),
    "insecure": (bool, False, "allow a non-loopback bind without encryption (anyone on the network can use it)"),
    "model_kind": (str, "auto", "few-step kind: auto (from the model's scheduler config), lcm or turbo"),
    "device": (str, None, "torch device (default: cuda if available, else cpu)"),
    "dtype": (str, None, "fp16, bf16 or fp32 (default: fp16 on GPUs, fp32 on cpu)"),
    "max_sessions": (int, Limits.max_sessions, "most sessions served at once"),
    "max_fps": (float, Limits.max_fps, "most live frames per second per session"),
    "heartbeat_timeout": (float, Limits.heartbeat_timeout, "seconds without a message before a session is freed"),
    "max_message_mb": (float, Limits.max_message_bytes / 2**20, "largest message part accepted, in MiB"),
    "threads": (int, None, "CPU threads for torch (default: torch's choice)"),
    "compile": (bool, False, "torch.compile the UNet (CUDA only; off until measured on a GPU)"),
    "cuda_graphs": (bool, False, "replay the steady-state UNet call from CUDA graphs (CUDA only)"),
    "overlap_decode": (bool, False, "decode and copy frames on a side CUDA stream, beside the next step "
                                    "(CUDA only)"),
}


def configure(parser: argparse.ArgumentParser) -> None:
    for name, (kind, default, help_text) in OPTIONS.items():
        flag = "--" + name.replace("_", "-")
        shown = f" (default: {default})" if default not in (None, False) else ""
        if kind is bool:
            parser.add_argument(flag, action="store_true", default=None, help=help_text)
        else:
            parser.add_argument(flag, type=kind, default=None, help=help_text + shown)
    parser.add_argument("--config", help="TOML file with the same settings (command-line flags win)")
    # Also accepted after the subcommand; SUPPRESS keeps the global default otherwise.
    parser.add_argument("--log-level", dest="serve_log_level", choices=["debug", "info", "warning", "error"])


def resolve_options(args) -> dict:
    """Flags, then the config file, then defaults."""
    config = load_config(args.config, {**OPTIONS, "log_level": (str, None, "")}) if args.config else {}
    out = {}
    for name, (_, default, _) in OPTIONS.items():
        value = getattr(args, name, None)
        out[name] = value if value is not None else config.get(name, default)
    out["log_level"] = getattr(args, "serve_log_level", None) or config.get("log_level")
    return out


def run(args) -> int:
    opts = resolve_options(args)
    if opts.get("log_level"):
        logging.getLogger().setLevel(opts["log_level"].upper())
    limits = Limits(max_sessions=opts["max_sessions"], max_fps=opts["max_fps"],
                    heartbeat_timeout=opts["heartbeat_timeout"],
                    max_message_bytes=int(opts["max_message_mb"] * 2**20))
    if limits.max_sessions < 1 or not 0 < limits.max_fps <= 1000 or not 0.5 <= limits.heartbeat_timeout <= 3600 \
            or not 2**16 <= limits.max_message_bytes <= 2**32:
        raise UsageError("max-sessions must be >= 1, max-fps in (0, 1000], heartbeat-timeout in [0.5, 3600] s, "
                         "max-message-mb in [0.0625, 4096]")
    if opts["threads"] is not None and opts["threads"] < 1:
        raise UsageError("threads must be >= 1")
    bind = opts["bind"]
    if not bind.startswith(("tcp://", "ipc://")):
        raise UsageError(f"bind address {bind!r} must look like tcp://HOST:PORT or ipc://PATH")
    if not protocol.is_local_address(bind):
        if opts["keys"] is None and not opts["insecure"]:
            raise UsageError(f"{bind} is reachable from the network: give --keys DIR (made by 'smd-daemon keys DIR') "
                             f"to require encryption and client keys, or --insecure to serve anyone unencrypted")
        if opts["keys"] is None:
            log.warning("serving %s WITHOUT encryption or authentication (--insecure): anyone who can reach it "
                        "can use this GPU and see the frames", bind)
    if opts["keys"] is not None and not os.path.isdir(opts["keys"]):
        raise UsageError(f"keys folder {opts['keys']} does not exist: create it with 'smd-daemon keys {opts['keys']}'")

    check_kind(opts["model_kind"])
    speed = {k: bool(opts[k]) for k in ("compile", "cuda_graphs", "overlap_decode")}
    try:  # refused before the socket or the model: one line, exit 2
        check_speed_options(pick_device(opts["device"]), **speed)
    except ValueError as e:
        raise UsageError(str(e)) from None
    if opts["threads"]:
        torch.set_num_threads(opts["threads"])

    server = Server(None, {}, bind, limits, opts["keys"])
    try:
        server.open_socket()
        log.info("loading model %s ...", opts["model"])
        t0 = time.perf_counter()
        components = load_model(opts["model"], lora=opts["lora"], tiny_vae=opts["tiny_vae"],
                                config=opts["model_config"], device=opts["device"], dtype=opts["dtype"],
                                kind=opts["model_kind"])
        server.engine, server.model_info = Engine(components, **speed), components.describe()
    except BaseException:
        server.shutdown()
        raise
    info = server.model_info
    log.info("model %s loaded in %.1f s on %s (%s)", info.get("name"), time.perf_counter() - t0, info.get("device"),
             info.get("dtype"))
    server.start()

    def stop(signum, _frame):
        log.info("%s received: shutting down", signal.Signals(signum).name)
        server.stopping.set()

    signal.signal(signal.SIGINT, stop)
    signal.signal(signal.SIGTERM, stop)
    log.info("serving on %s (protocol %d, up to %d sessions)", bind, protocol.PROTOCOL_VERSION, limits.max_sessions)
    try:
        server.serve_forever()
    finally:
        server.shutdown()
    log.info("stopped")
    return 0

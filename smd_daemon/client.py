"""Client library for the smd-daemon wire protocol (standard library + pyzmq).

The Krita plugin vendors this file and ``protocol.py`` unchanged, so it
imports the protocol relatively and nothing outside the standard library
and pyzmq. Every call is non-blocking, to suit a GUI's main thread::

    client = Client("tcp://127.0.0.1:7555", name="krita")
    client.connect()                      # state "connecting"; hello is sent from poll()
    notifier = QSocketNotifier(client.fileno(), QSocketNotifier.Read)  # optional; fd changes on reconnect
    # call client.poll() when the notifier fires AND from a ~50 ms timer:
    # ZeroMQ's fd is edge-triggered, and poll() also drives heartbeats.
    for event in client.poll(timeout_ms=0):
        if isinstance(event, FrameEvent): ...   # event.data: pixels or encoded bytes

    client.set_scene(width, height, [Layer(key, name, alpha_bytes)], background_prompt=..., seed=...)
    client.update_scene(layers=[changed_layer], order=[keys bottom to top])   # partial
    client.start_live(encoding="raw")     # or "webp"/"jpeg"/"png" for remote links
    job = client.generate(encoding="png")
    client.cancel(job)
    client.close()

Layers are bottom to top; ``Layer.alpha`` is the layer's 8-bit alpha at
the output size (``width*height`` bytes) or None. ``update_scene`` sends a
changed layer's plane only if its bytes changed, so a rename costs no
pixels. For a remote daemon with keys (``smd-daemon keys``)::

    Client(address, server_public_key=zmq.auth.load_certificate("server.key")[0],
           client_secret_file="alice.key_secret")

State: ``client.state`` is ``"connecting"``, ``"connected"`` or
``"disconnected"`` and ``client.state_reason`` says why; every change is
also a ``StateEvent``. After the daemon stops, restarts or drops the
session, the client reconnects by itself, opens a fresh session, resends
the full scene and restarts live mode if it was on. ``client.info`` is the
daemon's handshake (``model``, ``limits``, ``capabilities``).

Events returned by ``poll``: ``StateEvent``, ``SceneEvent`` (how the daemon
read each layer name, ``grammar.ParsedLayer.to_dict()``), ``FrameEvent``
(live frames and generate results; ``job`` is None for live frames; raw
frames are ``channels`` bytes per pixel, row-major; compressed ones are the
encoded file bytes, decodable with ``QImage.fromData``), ``ProgressEvent``,
``QueuedEvent``, ``CancelledEvent``, ``LiveEvent`` and ``ErrorEvent`` (a
code from ``protocol.ErrorCode`` and a message for people). Live frames are
acknowledged automatically; when several arrive in one ``poll`` only the
newest is returned (latest frame wins).
"""

from __future__ import annotations

import itertools
import logging
import time
import zlib
from dataclasses import dataclass, field

import zmq

from . import protocol

log = logging.getLogger(__name__)

CONNECTING = "connecting"
CONNECTED = "connected"
DISCONNECTED = "disconnected"


@dataclass
class Layer:
    """One paint layer: a stable key, its raw name and its 8-bit alpha plane at output size."""

    key: str
    name: str
    alpha: bytes | None = None  # height*width bytes, row-major
    visible: bool = True


@dataclass
class StateEvent:
    state: str
    reason: str = ""


@dataclass
class SceneEvent:
    revision: int
    layers: list  # one dict per layer: name, role, prompt, options, reason, warnings
    regions: int = 0


@dataclass
class FrameEvent:
    seq: int
    revision: int
    width: int
    height: int
    encoding: str
    channels: int
    data: bytes
    settled: bool = True
    job: int | None = None  # set for generate results
    header: dict = field(default_factory=dict)
    received_at: float = 0.0  # time.time() when the bytes arrived


@dataclass
class ProgressEvent:
    job: int
    step: int
    total: int


@dataclass
class QueuedEvent:
    job: int


@dataclass
class CancelledEvent:
    job: int


@dataclass
class LiveEvent:
    active: bool


@dataclass
class ErrorEvent:
    code: str
    message: str
    re: int | None = None
    header: dict = field(default_factory=dict)


class ClientError(Exception):
    """A call the client cannot make (e.g. an alpha plane of the wrong size)."""


class Client:
    """One connection to a daemon; see the module docstring."""

    def __init__(self, address: str = "tcp://127.0.0.1:7555", *, name: str = "smd-client",
                 server_public_key: bytes | None = None, client_secret_file: str | None = None,
                 compress_planes: bool | None = None, heartbeat_interval: float = 1.0, timeout: float = 5.0,
                 retry_interval: float = 0.5, context: zmq.Context | None = None):
        self.address = protocol.normalize_address(address)  # ValueError with one sentence if malformed
        self.name = name
        self.server_public_key = server_public_key
        self.client_secret_file = client_secret_file
        # Alpha planes are mostly 0 or 255: zlib shrinks them ~50x, which
        # matters on a network and costs more than it saves on loopback.
        self.compress_planes = (not protocol.is_local_address(self.address)) if compress_planes is None \
            else compress_planes
        self.heartbeat_interval = heartbeat_interval
        self.timeout = timeout
        self.retry_interval = retry_interval
        self._ctx = context or zmq.Context.instance()
        self._sock: zmq.Socket | None = None
        self._ids = itertools.count(1)
        self.state = DISCONNECTED
        self.state_reason = "not connected"
        self.info: dict = {}
        self.session: str | None = None
        self._events: list = []
        self._last_rx = 0.0
        self._last_tx = 0.0
        self._hello_at: float | None = None  # when hello went out on this socket
        self._retry_at = 0.0
        self._open_sent = False
        self._ack_pending: int | None = None
        # What the daemon must know again after a reconnect.
        self._layers: dict[str, Layer] = {}
        self._order: list[str] = []
        self._settings: dict = {}
        self._bg_image: bytes | None = None
        self._bg_image_encoding = "raw"
        self.revision = 0
        self._need_full = False
        self._live: dict | None = None
        self._live_sent = False
        self._keys = None

    # --- connection ---------------------------------------------------

    @property
    def limits(self) -> dict:
        return self.info.get("limits", {})

    def connect(self) -> None:
        if self._sock is None:
            self._open_socket()
        self._set_state(CONNECTING, f"connecting to {self.address}")
        self._hello_at, self._retry_at = None, 0.0

    def fileno(self) -> int:
        """The ZeroMQ socket's fd for a read notifier (edge-triggered: also poll on a timer).

        The client replaces its socket when it loses the daemon, so read
        this again after every ``StateEvent`` to ``"disconnected"``.
        """
        if self._sock is None:
            self._open_socket()
        return self._sock.getsockopt(zmq.FD)

    def close(self) -> None:
        if self._sock is not None:
            if self.session:
                self._send("close")
            self._sock.close(linger=200)
            self._sock = None
        self.session = None
        self._set_state(DISCONNECTED, "closed")

    def _open_socket(self) -> None:
        sock = self._ctx.socket(zmq.DEALER)
        sock.setsockopt(zmq.LINGER, 0)
        # Not IMMEDIATE: with it, messages already received (the daemon's
        # "bye") are discarded when the connection drops. Stale requests
        # cannot reach a restarted daemon anyway: only hello is sent before
        # a session exists, and the socket is replaced after a timeout.
        sock.setsockopt(zmq.RECONNECT_IVL, 100)
        sock.setsockopt(zmq.RECONNECT_IVL_MAX, 1000)
        if self.server_public_key is not None:
            if self._keys is None:
                if not self.client_secret_file:
                    raise ClientError("a CURVE server key needs a client key file (client_secret_file)")
                from zmq.auth import load_certificate

                public, secret = load_certificate(self.client_secret_file)
                if not secret:
                    raise ClientError(f"{self.client_secret_file} holds no secret key")
                self._keys = (public, secret)
            sock.curve_serverkey = self.server_public_key
            sock.curve_publickey, sock.curve_secretkey = self._keys
        if protocol.is_ipv6_endpoint(self.address):
            sock.setsockopt(zmq.IPV6, 1)
        sock.connect(self.address)
        self._sock = sock

    def _reset(self, reason: str) -> None:
        """Drop the socket (and anything queued in it) and start over."""
        if self._sock is not None:
            self._sock.close(linger=0)
            self._sock = None
        self._forget_session()
        self._set_state(DISCONNECTED, reason)
        self._open_socket()

    def _forget_session(self, retry_at: float = 0.0) -> None:
        self.session = None
        self._live_sent = False
        self._open_sent = False
        self._ack_pending = None
        self._hello_at, self._retry_at = None, retry_at

    def _set_state(self, state: str, reason: str) -> None:
        if state != self.state or reason != self.state_reason:
            self.state, self.state_reason = state, reason
            self._events.append(StateEvent(state, reason))

    def _send(self, type_: str, parts=(), **fields) -> bool:
        """Send without blocking; False when it could not be queued."""
        if self._sock is None:
            return False
        try:
            self._sock.send_multipart(protocol.encode(type_, parts, **fields), flags=zmq.NOBLOCK, copy=False)
        except zmq.Again:
            return False
        self._last_tx = time.monotonic()
        return True

    # --- the scene ----------------------------------------------------

    def set_scene(self, width: int, height: int, layers: list[Layer], *, background_prompt: str = "",
                  negative_prompt: str = "", background_image: bytes | None = None,
                  background_image_encoding: str = "raw", background_strength: float = 0.0, seed: int = 0,
                  steps: int = 4, **options) -> int:
        """Replace the whole scene (layers bottom to top); returns its revision."""
        self._settings = {"width": int(width), "height": int(height), "seed": seed, "steps": steps,
                          "negative_prompt": negative_prompt, **options}
        self._settings["background"] = {"prompt": background_prompt, "negative_prompt": negative_prompt,
                                        "strength": background_strength}
        self._bg_image, self._bg_image_encoding = background_image, background_image_encoding
        self._layers = {}
        self._order = []
        for layer in layers:
            self._check_layer(layer)
            self._layers[layer.key] = layer
            self._order.append(layer.key)
        self.revision += 1
        self._need_full = True
        self._flush_scene()
        return self.revision

    def update_scene(self, layers: list[Layer] = (), order: list[str] | None = None, *,
                     background_image: bytes | None = None, background_image_encoding: str = "raw",
                     **settings) -> int:
        """Send only what changed: changed layers, the new order (keys bottom
        to top; layers not in it are removed) and changed settings
        (``seed``, ``steps``, ``width``/``height``, ``background`` dict...)."""
        if not self._settings:
            raise ClientError("set_scene() must come before update_scene()")
        for layer in layers:
            self._check_layer(layer, settings.get("width"), settings.get("height"))
        # A layer whose pixels did not change travels without its plane (a rename costs no pixels).
        same_pixels = {layer.key for layer in layers
                       if layer.key in self._layers and layer.alpha is not None
                       and self._layers[layer.key].alpha == layer.alpha}
        bg = settings.pop("background", None)
        self._settings.update(settings)
        if bg is not None:
            self._settings["background"] = {**self._settings["background"], **bg}
        if background_image is not None:
            self._bg_image, self._bg_image_encoding = background_image, background_image_encoding
        for layer in layers:
            self._layers[layer.key] = layer
            if layer.key not in self._order:
                self._order.append(layer.key)
        if order is not None:
            self._order = [k for k in order if k in self._layers]
            self._layers = {k: self._layers[k] for k in self._order}
        self.revision += 1
        if self._need_full or not self.session:
            self._need_full = True
            self._flush_scene()
            return self.revision
        header = dict(settings)
        if bg is not None or background_image is not None:
            header["background"] = self._settings["background"]
        parts: list = []
        if background_image is not None:
            header["background"] = {**header.get("background", self._settings["background"]),
                                    "image": self._image_ref(parts)}
        header["layers"] = [self._layer_ref(layer, parts, layer.key not in same_pixels) for layer in layers]
        if order is not None:
            header["order"] = list(self._order)
        if not self._send("update", parts, revision=self.revision, full=False, **header):
            self._need_full = True  # the daemon missed this change: resend everything
        return self.revision

    def _check_layer(self, layer: Layer, width=None, height=None) -> None:
        w = width or self._settings.get("width", 0)
        h = height or self._settings.get("height", 0)
        if layer.alpha is not None and len(layer.alpha) != w * h:
            raise ClientError(f"layer {layer.name!r}: alpha plane has {len(layer.alpha)} bytes, "
                              f"expected {w}x{h} = {w * h}")

    def _layer_ref(self, layer: Layer, parts: list, with_alpha: bool = True) -> dict:
        ref = {"key": layer.key, "name": layer.name, "visible": layer.visible}
        if not with_alpha:
            return ref  # the daemon keeps the plane it has
        ref["alpha"] = None
        if layer.alpha is not None:
            data, enc = layer.alpha, "raw"
            if self.compress_planes:
                data, enc = zlib.compress(layer.alpha, 1), "zlib"
            ref["alpha"] = {"part": len(parts), "encoding": enc}
            parts.append(data)
        return ref

    def _image_ref(self, parts: list) -> dict | None:
        if self._bg_image is None:
            return None
        data, enc = self._bg_image, self._bg_image_encoding
        if enc == "raw" and self.compress_planes:
            data, enc = zlib.compress(data, 1), "zlib"
        parts.append(data)
        return {"part": len(parts) - 1, "encoding": enc}

    def _flush_scene(self) -> None:
        """Send the full scene when the daemon needs it and a session is open."""
        if not (self._need_full and self.session and self._settings):
            return
        parts: list = []
        header = {k: v for k, v in self._settings.items() if k != "background"}
        header["background"] = {**self._settings["background"], "image": self._image_ref(parts)}
        header["layers"] = [self._layer_ref(self._layers[k], parts) for k in self._order]
        if self._send("update", parts, revision=self.revision, full=True, **header):
            self._need_full = False

    # --- live mode, generate, cancel ----------------------------------

    def start_live(self, encoding: str = "raw", quality: int = 80, max_fps: float | None = None) -> None:
        if encoding not in protocol.FRAME_ENCODINGS:
            raise ClientError(f"unknown frame encoding {encoding!r}: use one of {protocol.FRAME_ENCODINGS}")
        self._live = {"encoding": encoding, "quality": quality}
        if max_fps is not None:
            self._live["max_fps"] = max_fps
        self._live_sent = False
        self._flush_live()

    def stop_live(self) -> None:
        self._live = None
        self._live_sent = False
        if self.session:
            self._send("live_stop")

    def _flush_live(self) -> None:
        if self._live is not None and not self._live_sent and self.session and not self._need_full:
            self._live_sent = self._send("live_start", **self._live)

    def generate(self, encoding: str = "png", quality: int = 95, steps: int | None = None,
                 seed: int | None = None) -> int:
        """Render the current scene once; returns the job id (also in its events)."""
        if encoding not in protocol.FRAME_ENCODINGS:
            raise ClientError(f"unknown frame encoding {encoding!r}: use one of {protocol.FRAME_ENCODINGS}")
        job = next(self._ids)
        fields = {"encoding": encoding, "quality": quality}
        if steps is not None:
            fields["steps"] = steps
        if seed is not None:
            fields["seed"] = seed
        self._flush_scene()
        if not self.session or not self._send("generate", id=job, **fields):
            self._events.append(ErrorEvent("not_connected", f"not connected: {self.state_reason}", job))
        return job

    def cancel(self, job: int | None = None) -> None:
        """Cancel one generate job, or all of this session's jobs."""
        if self.session:
            self._send("cancel", **({} if job is None else {"job": job}))

    # --- receiving ------------------------------------------------------

    def poll(self, timeout_ms: int = 0) -> list:
        """Handle whatever has arrived (waiting up to ``timeout_ms``) and return the events."""
        if self._sock is None:
            return self._take_events()
        self._timers()
        if timeout_ms and not self._events:
            self._sock.poll(timeout_ms, zmq.POLLIN)
        latest_frame = None
        for _ in range(1000):  # bounded, so a flood cannot freeze the caller
            try:
                frames = self._sock.recv_multipart(flags=zmq.NOBLOCK, copy=False)
            except zmq.Again:
                break
            now = time.time()
            self._last_rx = time.monotonic()
            try:
                msg = protocol.decode(frames, protocol.REPLIES)
            except protocol.ProtocolError as e:
                log.warning("ignoring a malformed message from the daemon: %s", e)
                continue
            if msg.type == "frame":
                latest_frame = self._frame_event(msg, now)
                self._ack_pending = None if self._send("ack", seq=msg.header["seq"]) else msg.header["seq"]
                continue
            if latest_frame is not None:  # keep the order: that frame came first
                self._events.append(latest_frame)
                latest_frame = None
            self._handle(msg, now)
        if latest_frame is not None:
            self._events.append(latest_frame)
        self._timers()
        return self._take_events()

    def _take_events(self) -> list:
        events, self._events = self._events, []
        return events

    def _timers(self) -> None:
        now = time.monotonic()
        if self.state == CONNECTED:
            if now - self._last_rx > self.timeout:
                self._reset(f"no reply from the daemon for {self.timeout:g} s")
            elif now - self._last_tx >= self.heartbeat_interval:
                self._send("ping")
            if self._ack_pending is not None and self._send("ack", seq=self._ack_pending):
                self._ack_pending = None
            self._flush_scene()
            self._flush_live()
        elif self._sock is not None and self.state_reason != "closed":
            if self._hello_at is None:
                if now >= self._retry_at and self._send("hello", protocol=protocol.PROTOCOL_VERSION,
                                                        client=self.name):
                    self._hello_at = now
            elif now - self._hello_at > self.timeout:
                # One hello per socket: a fresh socket drops anything queued for a daemon that is gone.
                self._reset(f"no reply from the daemon at {self.address} for {self.timeout:g} s")

    def _frame_event(self, msg, now: float) -> FrameEvent:
        h = msg.header
        try:
            data = msg.part(h["part"]).tobytes()
        except protocol.ProtocolError:
            data = b""
        return FrameEvent(h["seq"] if msg.type == "frame" else -1, h["revision"], h["width"], h["height"],
                          h["encoding"], h["channels"], data, bool(h.get("settled", True)), h.get("job"), h, now)

    def _handle(self, msg, now: float) -> None:
        h = msg.header
        t = msg.type
        if t == "welcome":
            if h["protocol"] != protocol.PROTOCOL_VERSION:
                self._set_state(DISCONNECTED, f"daemon speaks protocol {h['protocol']}, "
                                              f"this client {protocol.PROTOCOL_VERSION}")
                self._retry_at, self._hello_at = float("inf"), None
                return
            self.info = h
            # Ping often enough for this daemon's timeout, whatever we were told.
            timeout = h["limits"].get("heartbeat_timeout")
            if isinstance(timeout, (int, float)) and timeout > 0:
                self.heartbeat_interval = min(self.heartbeat_interval, timeout / 3)
            if not self._open_sent:  # one open per handshake, however many welcomes arrive
                self._open_sent = self._send("open")
        elif t == "opened":
            self.session = h["session"]
            self._need_full = bool(self._settings)
            self._live_sent = False
            self._set_state(CONNECTED, f"connected to {self.address}")
            self._flush_scene()
            self._flush_live()
        elif t == "error":
            code = h["code"]
            if code in (protocol.ErrorCode.HANDSHAKE_REQUIRED, protocol.ErrorCode.NO_SESSION):
                # The daemon restarted or freed our session: start over.
                self._forget_session()
                self._set_state(DISCONNECTED, "the daemon restarted or dropped the session; reconnecting")
                return
            if code == protocol.ErrorCode.BUSY and not self.session:
                self._forget_session(time.monotonic() + 5 * self.retry_interval)
                self._set_state(DISCONNECTED, h["message"])
            self._events.append(ErrorEvent(code, h["message"], h.get("re"), h))
        elif t == "bye":
            self._reset(f"daemon closed the connection: {h.get('reason', '')}".rstrip(": "))
        elif t == "closed":
            self.session = None
            self._live_sent = False
            if self.state == CONNECTED:
                self._set_state(DISCONNECTED, h.get("reason", "session closed"))
        elif t == "scene":
            self._events.append(SceneEvent(h["revision"], h["layers"], h.get("regions", 0)))
        elif t == "result":
            self._events.append(self._frame_event(msg, now))
        elif t == "progress":
            self._events.append(ProgressEvent(h["job"], h["step"], h["total"]))
        elif t == "queued":
            self._events.append(QueuedEvent(h["job"]))
        elif t == "cancelled":
            self._events.append(CancelledEvent(h["job"]))
        elif t == "live":
            self._events.append(LiveEvent(h["active"]))

    # --- blocking helper for scripts and tests --------------------------

    def wait_for(self, match, timeout: float = 10.0, on_event=None):
        """Poll until an event satisfies ``match(event)``; return it (or None on timeout).

        Other events go to ``on_event`` if given. Not for GUI threads.
        """
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            events = self.poll(timeout_ms=20)
            for i, event in enumerate(events):
                if match(event):
                    self._events[:0] = events[i + 1:]  # keep the rest for the next poll
                    return event
                if on_event is not None:
                    on_event(event)
        return None

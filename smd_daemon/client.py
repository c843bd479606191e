"""Client library for the smd-daemon wire protocol (standard library + pyzmq).

The Krita plugin vendors the wire modules unchanged (``install.VENDORED``),
so they import each other relatively and nothing outside the standard
library and pyzmq. Every call is non-blocking, to suit a GUI's main thread::

    client = Client("tcp://127.0.0.1:7555", name="krita")
    client.connect()                      # hello is sent from poll()
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
the output size (``width*height`` bytes) or None. For a remote daemon with
keys (``smd-daemon keys``)::

    Client(address, server_public_key=zmq.auth.load_certificate("server.key")[0],
           client_secret_file="alice.key_secret")

State: ``client.state`` is ``"connecting"``, ``"connected"`` or
``"disconnected"``; ``client.state_code`` says why, from the closed set in
``events.StateCode`` (a refused key is ``"auth_failed"``, told apart from
silence by ZeroMQ's socket monitor), and ``client.state_reason`` is the
sentence for people. Every change is also a ``StateEvent``. Except after
``close()``, the client reconnects by itself, opens a fresh session, resends
the full scene, restarts live mode and sends the jobs asked for meanwhile.
``client.info`` is the daemon's handshake (``model``, ``limits``,
``defaults``, ``capabilities``).

``poll`` returns the events of ``events.py`` (re-exported here). Live
frames are acknowledged automatically; when several arrive in one ``poll``
only the newest is returned (latest frame wins). A frame or result that is
not the size of the scene it shows, or whose file header names another
size, never becomes a ``FrameEvent``: it is dropped before being copied and
told as an ``ErrorEvent`` with code ``bad_frame`` (``framecheck.py``). An
update too big for the daemon's message limit goes compressed, or, if it
cannot fit even so, is answered here with an ``ErrorEvent`` ``too_large``
(``upload.py``).
"""

from __future__ import annotations

import itertools
import logging
import time
from dataclasses import dataclass
from typing import Sequence

import zmq

from . import framecheck, protocol, scenestate
from .events import (  # re-exported: the client's callers import events from here
    CancelledEvent,
    ErrorEvent,
    FrameEvent,
    LiveEvent,  # noqa: F401
    ProgressEvent,
    QueuedEvent,
    SceneEvent,
    StateCode,  # noqa: F401
    StateEvent,  # noqa: F401
)
from .link import CONNECTED, CONNECTING, DISCONNECTED, ClientError, Connection, curve_keys  # noqa: F401 - re-exported
from .upload import SceneUpload

log = logging.getLogger(__name__)


@dataclass
class Layer:
    """One paint layer: a stable key, its raw name and its 8-bit alpha plane at output size."""

    key: str
    name: str
    alpha: bytes | None = None  # height*width bytes, row-major
    visible: bool = True
    group: bool = False  # a group layer (send no alpha): listed with reason_code "group", never read
    # A control layer's picture (height*width*3 bytes, RGB, as the artist sees the layer over white paper);
    # None: none given (the daemon keeps the one it has).
    image: bytes | None = None


class Client:
    """One connection to a daemon; see the module docstring."""

    def __init__(
        self,
        address: str = "tcp://127.0.0.1:7555",
        *,
        name: str = "smd-client",
        server_public_key: bytes | None = None,
        client_secret_file: str | None = None,
        compress_planes: bool | None = None,
        heartbeat_interval: float = 1.0,
        timeout: float = 5.0,
        retry_interval: float = 0.5,
        context: zmq.Context | None = None,
    ):
        self.address = protocol.normalize_address(address)  # ValueError with one sentence if malformed
        self.name = name
        # Alpha planes are mostly 0 or 255: zlib shrinks them ~50x, which
        # matters on a network. On loopback it costs more than it saves, so
        # there only an update too big for the daemon's message limit is compressed.
        compress = (not protocol.is_local_address(self.address)) if compress_planes is None else compress_planes
        self._events: list = []
        self._conn = Connection(
            context or zmq.Context.instance(),
            self.address,
            name,
            self._events,
            server_public_key=server_public_key,
            keys=curve_keys(server_public_key, client_secret_file),
            heartbeat_interval=heartbeat_interval,
            timeout=timeout,
            retry_interval=retry_interval,
        )
        self._ids = itertools.count(1)
        # What the daemon must know again after a reconnect.
        self._scene = SceneUpload(self._conn, self._events, compress)
        self._warned_at = float("-inf")  # when a dropped frame was last logged
        self._live: dict | None = None
        self._live_sent = False
        self._jobs_waiting: list[dict] = []  # generate requests made while not connected

    # --- connection ---------------------------------------------------

    state = property(lambda self: self._conn.state)
    state_reason = property(lambda self: self._conn.reason)
    state_code = property(lambda self: self._conn.code)  # an events.StateCode
    info = property(lambda self: self._conn.info)  # the daemon's welcome
    session = property(lambda self: self._conn.session)

    @property
    def limits(self) -> dict:
        return self.info.get("limits", {})

    def connect(self) -> None:
        self._conn.connect()

    def fileno(self) -> int:
        """The ZeroMQ socket's fd for a read notifier (edge-triggered: also poll on a timer).

        The client replaces its socket when it loses the daemon, so read
        this again after every ``StateEvent`` to ``"disconnected"``.
        """
        return self._conn.open().fileno()

    def close(self) -> None:
        self._conn.close()
        self._live_sent = False
        self._events += [CancelledEvent(job["id"]) for job in self._jobs_waiting]
        self._jobs_waiting = []

    # --- the scene ----------------------------------------------------

    def set_scene(
        self,
        width: int,
        height: int,
        layers: list[Layer],
        *,
        background_prompt: str = "",
        negative_prompt: str = "",
        background_image: bytes | None = None,
        background_image_encoding: str = "raw",
        background_strength: float = 0.0,
        seed: int | None = None,
        steps: int | None = None,
        **options,
    ) -> int:
        """Replace the whole scene (layers bottom to top); returns its revision.

        Settings left as None are the daemon's defaults (``info["defaults"]``)."""
        settings = {"width": int(width), "height": int(height), "negative_prompt": negative_prompt, **options}
        settings.update({k: v for k, v in (("seed", seed), ("steps", steps)) if v is not None})
        background = {"prompt": background_prompt, "negative_prompt": negative_prompt, "strength": background_strength}
        image = None if background_image is None else (background_image, background_image_encoding)
        return self._scene.set(int(width), int(height), layers, settings, background, image)

    def update_scene(
        self,
        layers: Sequence[Layer] = (),
        order: list[str] | None = None,
        *,
        background_image: bytes | None = None,
        background_image_encoding: str = "raw",
        **settings,
    ) -> int:
        """Send only what changed: changed layers, the new order (keys bottom
        to top; layers not in it are removed) and changed settings
        (``seed``, ``steps``, ``background`` dict...). A layer whose plane did
        not change travels without it (a rename costs no pixels)."""
        return self._scene.update(
            layers,
            order,
            {k: v for k, v in settings.items() if k != "background"},
            dict(settings.get("background") or {}),
            scenestate.KEEP if background_image is None else (background_image, background_image_encoding),
        )

    revision = property(lambda self: self._scene.revision)  # of the scene as last set or updated
    compress_planes = property(lambda self: self._scene.compress)
    last_update_bytes = property(lambda self: self._scene.sent_bytes)  # as sent: compressed when it had to be

    # --- live mode, generate, cancel ----------------------------------

    def start_live(self, encoding: str = "raw", quality: int = 80, max_fps: float | None = None) -> None:
        self._check_encoding(encoding)
        self._live = {"encoding": encoding, "quality": quality, **({} if max_fps is None else {"max_fps": max_fps})}
        self._live_sent = False
        self._flush_live()

    def stop_live(self) -> None:
        self._live = None
        self._live_sent = False
        if self.session:
            self._conn.send("live_stop")

    def _flush_live(self) -> None:
        if self._live is not None and not self._live_sent and self.session and not self._scene.need_full:
            self._live_sent = self._conn.send("live_start", **self._live)

    def generate(
        self, encoding: str = "png", quality: int = 95, steps: int | None = None, seed: int | None = None
    ) -> int:
        """Render the current scene once; returns the job id (also in its events).

        While not connected the request waits and goes out once the daemon
        has the scene again (``close()`` cancels it)."""
        self._check_encoding(encoding)
        job = {
            "id": next(self._ids),
            "encoding": encoding,
            "quality": quality,
            **{k: v for k, v in (("steps", steps), ("seed", seed)) if v is not None},
        }
        self._jobs_waiting.append(job)
        self._flush_jobs()
        return job["id"]

    def _flush_jobs(self) -> None:
        self._scene.flush()
        while (
            self._jobs_waiting
            and self.session
            and not self._scene.need_full
            and self._conn.send("generate", **self._jobs_waiting[0])
        ):
            self._jobs_waiting.pop(0)

    def cancel(self, job: int | None = None) -> None:
        """Cancel one generate job, or all of this session's jobs."""
        waiting = [j for j in self._jobs_waiting if job is None or j["id"] == job]
        for j in waiting:
            self._jobs_waiting.remove(j)
            self._events.append(CancelledEvent(j["id"]))
        if self.session and (job is None or not waiting):
            self._conn.send("cancel", **({} if job is None else {"job": job}))

    @staticmethod
    def _check_encoding(encoding: str) -> None:
        if encoding not in protocol.FRAME_ENCODINGS:
            raise ClientError(f"unknown frame encoding {encoding!r}: use one of {protocol.FRAME_ENCODINGS}")

    # --- receiving ------------------------------------------------------

    def poll(self, timeout_ms: int = 0) -> list:
        """Handle whatever has arrived (waiting up to ``timeout_ms``) and return the events."""
        link = self._conn.link
        if link is None:
            return self._take_events()
        self._timers()
        if timeout_ms and not self._events:
            link.sock.poll(timeout_ms, zmq.POLLIN)
        latest_frame = None
        for _ in range(1000):  # bounded, so a flood cannot freeze the caller
            frames = self._conn.link.recv() if self._conn.link is not None else None
            if frames is None:
                break
            now = time.time()
            self._conn.last_rx = time.monotonic()
            try:
                msg = protocol.decode(frames, protocol.REPLIES)
            except protocol.ProtocolError as e:
                log.warning("ignoring a malformed message from the daemon: %s", e)
                self._conn.undecodable(e)
                continue
            if msg.type in ("frame", "result") and not self._frame_ok(msg):
                continue
            if msg.type == "frame":
                latest_frame = FrameEvent.from_message(msg, now)
                self._conn.ack(seq=msg.header["seq"], token=msg.header["token"])
                continue
            if latest_frame is not None:  # keep the order: that frame came first
                self._events.append(latest_frame)
                latest_frame = None
            if not self._conn.handle(msg):
                self._handle(msg, now)
        if latest_frame is not None:
            self._events.append(latest_frame)
        self._timers()
        return self._take_events()

    def _frame_ok(self, msg) -> bool:
        """Whether a frame or result is what was asked for. One that is not is dropped
        before its bytes are copied, acknowledged (the daemon's window moves on) and
        told as an ``ErrorEvent`` with code ``bad_frame`` (``framecheck``)."""
        refused = framecheck.refusal(msg, self._scene.asked)
        if refused is None:
            return True
        event, ack = refused
        self._events.append(event)
        self._conn.ack(**ack)
        if time.monotonic() - self._warned_at > 10:  # a flood of bad frames is one log line per 10 s
            self._warned_at = time.monotonic()
            log.warning("%s", event.message)
        return False

    def _take_events(self) -> list:
        events, self._events[:] = list(self._events), []
        return events

    def _timers(self) -> None:
        self._conn.tick()
        if self.session is None:
            self._live_sent = False
        elif self.state == CONNECTED:
            self._conn.ack()
            self._flush_jobs()
            self._flush_live()

    def _handle(self, msg, now: float) -> None:
        h, t = msg.header, msg.type
        if t == "opened":
            self._scene.opened()
            self._live_sent = False
            self._flush_jobs()
            self._flush_live()
        elif t == "closed":
            self._live_sent = False
        elif t == "error":
            if "revision" in h and h["code"] != protocol.ErrorCode.STALE_REVISION:
                self._scene.resync = True  # the daemon's scene is not ours: the next update is a full one
            self._events.append(ErrorEvent(h["code"], h["message"], h.get("re"), h))
        elif t == "scene":
            self._events.append(SceneEvent(h["revision"], h["layers"], h.get("regions", 0)))
        elif t == "result":
            self._events.append(FrameEvent.from_message(msg, now))
            self._conn.ack(job=h["job"], token=h["token"])  # the daemon holds the job's place until then
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
                    self._events[:0] = events[i + 1 :]  # keep the rest for the next poll
                    return event
                if on_event is not None:
                    on_event(event)
        return None

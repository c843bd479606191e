"""The plugin's state and behaviour, without widgets: settings, the daemon
connection, reading the document into scene updates, live mode and results.

Everything runs on Krita's main thread. A 25 ms timer (plus a socket
notifier, so frames are picked up as soon as they arrive) services the
client without blocking; the document is scanned for changes on every tick
(~40 Hz) with a fingerprint Krita makes cheap (cached thumbnails), and only
changed layers are read and sent. The first change after a pause goes out at
once (low latency); while a stroke goes on, changes are held until the
artist pauses or MAX_WAIT_S passes, never closer than MIN_GAP_S, and never
more than MAX_IN_FLIGHT revisions without a frame answering them.
"""

from __future__ import annotations

import logging
import random
import time
import zlib

from PyQt5.QtCore import QObject, QSocketNotifier, QTimer, pyqtSignal
from PyQt5.QtGui import QImage

from . import kritaapi, pixels, settings
from .transport import client as client_mod
from .transport import protocol

log = logging.getLogger(__name__)

TICK_MS = 25  # a scan of unchanged layers costs ~0.2 ms, so polling often is cheap
DEBOUNCE_S = 0.06  # quiet time after the last change before sending it
MAX_WAIT_S = 0.25  # during a long stroke, send at least this often
MIN_GAP_S = 0.1  # at most ~10 updates a second
MAX_IN_FLIGHT = 2  # sent revisions without a frame reflecting them yet
# Names the daemon told us it ignores for good: their pixels are not needed.
_NO_PIXELS_NEEDED = ("automatic layer name", "marked with #", "made by the plugin", "no name")
# Layers the daemon's grammar keeps out of the background image (sketches, the plugin's own results).
_NOT_CANVAS = ("marked with #", "made by the plugin")


def output_size(width: int, height: int, long_side: int, max_side: int | None = None) -> tuple[int, int]:
    """Output size with the document's aspect ratio, multiples of 8, long side capped."""
    side = int(long_side)
    if max_side:
        side = min(side, int(max_side))
    side = max(64, side - side % 8)
    if width <= 0 or height <= 0:
        return side, side
    if width >= height:
        w, h = side, side * height / width
    else:
        w, h = side * width / height, side
    return max(64, int(round(w / 8)) * 8), max(64, int(round(h / 8)) * 8)


class Controller(QObject):
    changed = pyqtSignal()  # anything the docker shows

    def __init__(self, parent=None):
        super().__init__(parent)
        self.settings = settings.load_global()
        self.client = None
        self.notifier = None
        self._notifier_fd = None
        self.state = "disconnected"
        self.reason = "not connected"
        self.error = ""
        self.live = False
        self.doc = None
        self.parsed: list[dict] = []
        self.frame: QImage | None = None  # newest live frame
        self.frame_event = None
        self.result: QImage | None = None  # newest one-shot result
        self.progress = ""
        self.fps = 0.0
        self.latency_ms = 0.0
        self.timings = {"read_ms": 0.0, "write_ms": 0.0}
        self.trace: dict = {}  # revision -> timestamps of its way through the plugin
        self._reset_sent()
        self.timer = QTimer(self)
        self.timer.setInterval(TICK_MS)
        self.timer.timeout.connect(self.tick)
        self.timer.start()

    # ---------------------------------------------------------- settings

    def set_setting(self, key: str, value) -> None:
        if self.settings.get(key) == value:
            return
        self.settings[key] = value
        settings.save_global(self.settings)
        if key in settings.DOCUMENT_KEYS and self.doc is not None:
            kritaapi.save_document_settings(self.doc, settings.document_part(self.settings))
        self.changed.emit()

    def randomize_seed(self) -> None:
        self.set_setting("seed", random.randrange(0, 2**31 - 1))

    def output_size(self) -> tuple[int, int]:
        if self.doc is None:
            return 0, 0
        max_side = (self.client.limits.get("max_side") if self.client else None) or None
        w, h = kritaapi.canvas_size(self.doc)
        return output_size(w, h, self.settings["size"], max_side)

    # ---------------------------------------------------------- connection

    def connect_daemon(self) -> None:
        self.disconnect_daemon()
        s = self.settings
        try:
            key = s["server_key"].strip().encode("ascii") or None
            self.client = client_mod.Client(s["address"].strip(), name="krita",
                                            server_public_key=key,
                                            client_secret_file=s["client_key_file"].strip() or None)
            self.client.connect()
        except Exception as e:  # bad address or key file: say so, stay usable
            self.client = None
            self.state, self.reason = "disconnected", f"cannot connect: {e}"
            self.changed.emit()
            return
        self.state, self.reason = self.client.state, self.client.state_reason
        self._reset_sent()
        self._watch_socket()
        if self.live:  # reconnecting by hand while live: the new connection streams too
            self._scan(force=True)
            self.client.start_live(encoding=self._encoding())
        self.changed.emit()

    def disconnect_daemon(self) -> None:
        if self.client is not None:
            self.client.close()
            self.client = None
        if self.notifier is not None:
            self.notifier.setEnabled(False)
            self.notifier.deleteLater()
            self.notifier, self._notifier_fd = None, None
        self.state, self.reason = "disconnected", "not connected"
        self.changed.emit()

    def _watch_socket(self) -> None:
        """A read notifier on the ZeroMQ fd (recreated when the client reconnects)."""
        if self.client is None:
            return
        fd = self.client.fileno()
        if fd == self._notifier_fd:
            return
        if self.notifier is not None:
            self.notifier.setEnabled(False)
            self.notifier.deleteLater()
        self.notifier = QSocketNotifier(fd, QSocketNotifier.Read, self)
        self.notifier.activated.connect(lambda _fd: self._guarded(self._service))
        self._notifier_fd = fd

    # ---------------------------------------------------------- live / generate / apply

    def set_live(self, on: bool) -> None:
        if on == self.live:
            return
        self.live = on
        if on:
            if self.client is None:
                self.connect_daemon()
            self._reset_sent()
            self._scan(force=True)
            if self.client is not None:
                self.client.start_live(encoding=self._encoding())
        else:
            if self.client is not None:
                self.client.stop_live()
            if self.doc is not None:
                kritaapi.remove_preview(self.doc)
            self.frame = None
        self.changed.emit()

    def generate(self) -> None:
        if self.client is None:
            self.connect_daemon()
        if self.client is None:
            return
        if not self.settings["seed_locked"]:
            self.randomize_seed()  # an unlocked seed means a new picture each time
        self._scan(force=True)
        self.progress = "queued"
        self.client.generate(encoding="png")
        self.changed.emit()

    def apply(self) -> bool:
        """Copy the newest result (or live frame) into a new paint layer."""
        img = self.result if self.result is not None else self.frame
        if self.doc is None or img is None:
            self.error = "nothing to apply yet: press Live or Generate first"
            self.changed.emit()
            return False
        try:
            kritaapi.apply_frame(self.doc, img)
        except kritaapi.Unsupported as e:
            self.error = str(e)
            self.changed.emit()
            return False
        self.result = None
        self.changed.emit()
        return True

    def _encoding(self) -> str:
        # Raw frames cost nothing to decode on loopback; over a network JPEG, which
        # every Qt build decodes (WebP needs an optional image-format plugin).
        return "raw" if protocol.is_local_address(self.settings["address"]) else "jpeg"

    # ---------------------------------------------------------- the loop

    def tick(self) -> None:
        self._guarded(self._tick_once)

    def _tick_once(self) -> None:
        self._follow_document()
        if self.client is not None:
            self._service()
            self._watch_socket()
        if self.live:
            self._scan()

    def _guarded(self, fn) -> None:
        """Run a timer or notifier callback; a failure is shown in the docker, not as a script error."""
        try:
            fn()
        except Exception as e:
            log.exception("SMD Live: %s failed", getattr(fn, "__name__", "callback"))
            self.error = f"internal error: {e}"
            self.changed.emit()

    def _follow_document(self) -> None:
        doc = kritaapi.active_document()
        if doc == self.doc:
            return
        if self.doc is not None and self.live:
            try:
                kritaapi.remove_preview(self.doc)
            except Exception:  # the old document may be closed already
                pass
        self.doc = doc
        self.frame = None
        self._reset_sent()
        if doc is not None:
            self.settings.update(settings.document_part({**self.settings, **kritaapi.load_document_settings(doc)}))
        self.changed.emit()

    def _service(self) -> None:
        if self.client is None:
            return
        for ev in self.client.poll(0):
            self._handle(ev)

    def _handle(self, ev) -> None:
        c = client_mod
        if isinstance(ev, c.StateEvent):
            self.state, self.reason = ev.state, ev.reason
            if ev.state == "connected":
                self.error = ""
        elif isinstance(ev, c.SceneEvent):
            self.parsed = ev.layers
            roles = dict(zip(self._sent_order, ev.layers))
            def reading(r):
                return {k: (d.get("role"), d.get("reason")) for k, d in r.items()}
            if reading(roles) != reading(self._roles):
                self._bg_dirty = True  # the canvas image leaves out regions: recompose it
            self._roles = roles
        elif isinstance(ev, c.FrameEvent):
            self._on_frame(ev)
        elif isinstance(ev, c.ProgressEvent):
            self.progress = f"step {ev.step}/{ev.total}"
        elif isinstance(ev, c.CancelledEvent):
            self.progress = "cancelled"
        elif isinstance(ev, c.ErrorEvent):
            self.error = ev.message
            self.progress = "" if ev.re is not None else self.progress
        self.changed.emit()

    def _on_frame(self, ev) -> None:
        handled = time.monotonic()
        if ev.encoding == "raw":
            img = pixels.frame_image(ev.data, ev.width, ev.height, ev.channels)
        else:
            img = QImage.fromData(ev.data)
        if img.isNull():
            self.error = f"could not decode a {ev.encoding} frame"
            return
        if ev.job is not None:
            self.result, self.progress = img, "result ready: press Apply"
            return
        if not self.live or self.doc is None:
            return
        now = time.monotonic()
        if self._last_frame_t:
            dt = now - self._last_frame_t
            self.fps = 1.0 / dt if not self.fps else 0.8 * self.fps + 0.2 / max(dt, 1e-3)
        self._last_frame_t = now
        self._frame_revision = max(self._frame_revision, ev.revision)
        detected = self._revision_times.pop(ev.revision, None)
        for r in [r for r in self._revision_times if r < ev.revision]:
            del self._revision_times[r]
        t0 = time.perf_counter()
        try:
            kritaapi.write_preview(self.doc, img)
        except kritaapi.Unsupported as e:
            self.error = str(e)
            return
        self.timings["write_ms"] = (time.perf_counter() - t0) * 1000
        self.frame, self.frame_event = img, ev
        if detected is not None:  # the first frame showing this revision
            self.latency_ms = (time.monotonic() - detected) * 1000
        trace = self.trace.get(ev.revision)
        if trace is not None and "written" not in trace:
            trace.update(received_wall=ev.received_at, daemon_sent_wall=ev.header.get("sent_at"),
                         engine_ms=ev.header.get("engine_ms"), handled=handled, written=time.monotonic())

    # ---------------------------------------------------------- reading the document

    def _reset_sent(self) -> None:
        self._sent_fp: dict = {}
        self._sent_order: list = []
        self._sent_settings: dict | None = None
        self._sent_size = None
        self._sent_bg_crc = None
        self._seen_fp: dict = {}
        self._dirty_since = None
        self._last_change = 0.0
        self._roles: dict = {}
        self._bg_dirty = True
        self._frame_revision = 0
        self._revision_times: dict = {}
        self._last_send = 0.0
        self._last_frame_t = 0.0

    def scene_settings(self) -> dict:
        s = self.settings
        source = s["background_source"]
        return {"seed": int(s["seed"]), "steps": int(s["steps"]), "negative_prompt": s["negative_prompt"],
                "background_prompt": s["background_prompt"] if source in ("prompt", "both") else "",
                "background_strength": float(s["strength"]) if source in ("canvas", "both") else 0.0}

    def _scan(self, force: bool = False) -> None:
        """Notice changes; send them once the artist pauses (or MAX_WAIT_S passed)."""
        if self.doc is None or self.client is None:
            return
        problem = kritaapi.color_problem(self.doc)
        if problem:
            self.error = problem
            return
        t0 = time.perf_counter()
        layers = kritaapi.layers(self.doc)
        fps = {l.uid: kritaapi.fingerprint(l) for l in layers}
        order = [l.uid for l in layers]
        size = self.output_size()
        state = (fps, order, size, self.scene_settings())
        now = time.monotonic()
        if state != self._seen_fp:
            self._seen_fp = state
            self._last_change = now
            if self._dirty_since is None:
                self._dirty_since = now
        sent = (self._sent_fp, self._sent_order, self._sent_size, self._sent_settings)
        if not force:
            if state == sent and not self._bg_dirty:
                self._dirty_since = None
                return
            if self._dirty_since is None:
                self._dirty_since = now
            quiet = now - self._last_change >= DEBOUNCE_S
            overdue = now - self._dirty_since >= MAX_WAIT_S
            in_flight = sum(1 for r in self._revision_times if r > self._frame_revision)
            idle = in_flight == 0 and now - self._last_send >= MIN_GAP_S
            if self.live and in_flight >= MAX_IN_FLIGHT:
                return
            if not (idle or quiet or overdue) or now - self._last_send < MIN_GAP_S:
                return
        self._send(layers, fps, order, size, force)
        self.timings["read_ms"] = (time.perf_counter() - t0) * 1000
        self._dirty_since = None

    def _send(self, layers, fps, order, size, force: bool) -> None:
        w, h = size
        full = force or self._sent_size != size or self._sent_settings is None
        changed = [l for l in layers if full or self._sent_fp.get(l.uid) != fps[l.uid]]
        out = []
        for l in changed:
            role = self._roles.get(l.uid)
            skip = (not l.visible or (role is not None and role.get("name") == l.name
                                      and role.get("reason") in _NO_PIXELS_NEEDED))
            if not skip:
                alpha = kritaapi.read_alpha(self.doc, l, w, h)
            elif full or l.uid in self._sent_fp:
                alpha = None  # the daemon keeps (or needs no) plane for it
            else:
                alpha = bytes(w * h)  # a layer new to the daemon must come with a plane
            out.append(client_mod.Layer(l.uid, l.name, alpha, l.visible))
        sset = self.scene_settings()
        if full:
            self._sent_bg_crc = None
        # Regions are not part of the canvas image: painting on one needs no new background.
        canvas_changed = full or any(self._roles.get(l.uid, {}).get("role") != "region" for l in changed)
        bg_image = self._background(layers, w, h, canvas_changed)
        if full:
            rev = self.client.set_scene(w, h, out, background_image=bg_image, **sset)
        else:
            delta = {}
            if sset != self._sent_settings:
                delta = {"seed": sset["seed"], "steps": sset["steps"], "negative_prompt": sset["negative_prompt"],
                         "background": {"prompt": sset["background_prompt"],
                                        "negative_prompt": sset["negative_prompt"],
                                        "strength": sset["background_strength"]}}
            rev = self.client.update_scene(out, order=order if order != self._sent_order else None,
                                           background_image=bg_image, **delta)
        self._last_send = time.monotonic()
        self._revision_times[rev] = self._last_change or self._last_send
        # Where the time goes, for the latency shown and docs/benchmarks.md.
        self.trace[rev] = {"first_seen": self._dirty_since or self._last_send, "detected": self._last_change,
                           "sent": self._last_send, "sent_wall": time.time()}
        for r in [r for r in self.trace if r < rev - 20]:
            del self.trace[r]
        self._sent_fp, self._sent_order, self._sent_size, self._sent_settings = dict(fps), list(order), size, sset
        self._bg_dirty = False

    def _background(self, layers, w, h, anything_changed: bool):
        """The canvas (visible layers that are not regions) as RGB bytes, or None if unchanged/unused."""
        if self.settings["background_source"] not in ("canvas", "both"):
            return None
        if not (anything_changed or self._bg_dirty):
            return None
        chosen, skip_below = [], None
        for l in layers:
            if skip_below is not None and l.depth > skip_below:
                continue  # inside a group that is itself a region
            skip_below = None
            reading = self._roles.get(l.uid, {})
            if reading.get("role") == "region":
                if l.kind == "grouplayer":
                    skip_below = l.depth
                continue
            if reading.get("reason") in _NOT_CANVAS:
                continue
            if l.visible and l.kind != "grouplayer":
                chosen.append(l)
        try:
            data = kritaapi.read_composite(self.doc, chosen, w, h)
        except kritaapi.Unsupported as e:
            self.error = str(e)
            return None
        crc = zlib.crc32(data)
        if crc == self._sent_bg_crc and self._sent_size == (w, h):
            return None
        self._sent_bg_crc = crc
        return data


_controller: Controller | None = None


def controller() -> Controller:
    """The one controller shared by the extension's actions and every docker."""
    global _controller
    if _controller is None:
        _controller = Controller()
    return _controller

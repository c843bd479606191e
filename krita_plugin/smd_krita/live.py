"""The plugin's state and behaviour, without widgets: the daemon connection,
live mode, generate and apply. It composes the parts that do the work:
``reader`` (the document into scene updates), ``scheduler`` (when to send),
``output`` (where frames are shown), ``status`` (what to say), ``managed``
(a local daemon the plugin starts).

Everything runs on Krita's main thread. A 25 ms timer (plus a socket
notifier, so frames are picked up as soon as they arrive) services the
client without blocking; the document is scanned for changes on every tick
(~40 Hz) with a fingerprint Krita makes cheap (cached thumbnails), and only
changed layers are read and sent. While connected the daemon reads the
layers even without Live, so the docker explains every layer at once.
"""

from __future__ import annotations

import logging
import random
import time

from PyQt5.QtCore import QCoreApplication, QObject, QTimer, pyqtSignal
from PyQt5.QtGui import QImage

from . import kritaapi, pixels, settings, status
from .connection import Connection, same_address
from .managed import ManagedDaemon
from .output import PreviewOutput
from .sync import SceneSync
from .transport import client as client_mod

log = logging.getLogger(__name__)

TICK_MS = 25  # a scan of unchanged layers costs ~0.2 ms, so polling often is cheap


class Controller(QObject):
    changed = pyqtSignal()  # anything the docker shows

    def __init__(self, parent=None, clock=time.monotonic, managed: ManagedDaemon | None = None):
        super().__init__(parent)
        self.clock = clock
        self.store = settings.Store()
        self.conn = Connection(lambda: self._guarded(self._service), self)
        self.error = ""
        self.live = False
        self.doc = None
        self.rows: list = []  # layerlist.Row, how every layer is read
        self.frame_event = None  # newest live frame
        self.progress = ""
        self.stats = status.Stats(clock)
        self.sync = SceneSync(clock)
        self.output = PreviewOutput(clock)
        self.guard = kritaapi.SaveGuard(self)
        self.managed = managed if managed is not None else ManagedDaemon(parent=self)
        app = QCoreApplication.instance()
        if app is not None:  # Krita quits: stop the daemon this plugin started, and only that one
            app.aboutToQuit.connect(lambda: self.managed.stop(wait=True))
        self.timer = QTimer(self)
        self.timer.setInterval(TICK_MS)
        self.timer.timeout.connect(self.tick)
        self.timer.start()

    # ---------------------------------------------------------- settings

    @property
    def settings(self) -> dict:
        return self.store.values

    @property
    def notice(self) -> str:
        return self.store.notice

    @property
    def result(self) -> QImage | None:
        """The newest one-shot result, until applied."""
        return self.output.result

    def set_setting(self, key: str, value) -> None:
        self._follow_document()  # the docker may be faster than the timer after a document change
        if not self.store.set(key, value, self.doc, self.limits):
            return
        if key.startswith("preview_"):
            self.output.restyle(self.doc, self.settings)
        self.changed.emit()

    def swap_show(self) -> None:
        """The one-key swap of what the canvas shows: both, the preview, the painting, both..."""
        self.set_setting("preview_show", settings.next_show(self.settings["preview_show"]))

    def randomize_seed(self) -> None:
        self.set_setting("seed", random.randrange(0, settings.MAX_SEED))

    @property
    def limits(self) -> dict:
        return self.conn.limits

    def output_size(self) -> tuple[int, int]:
        if self.doc is None:
            return 0, 0
        w, h = kritaapi.canvas_size(self.doc)
        return settings.output_size(w, h, self.settings["size"], self.limits)

    def scene_settings(self) -> dict:
        return settings.scene_settings(self.settings, self.conn.defaults, self.conn.region_modes())

    # ---------------------------------------------------------- connection

    @property
    def client(self):
        return self.conn.client

    @property
    def state(self) -> str:
        return self.conn.state

    def connect_daemon(self) -> None:
        s = self.settings
        self.error = self.conn.open(s["address"], s["server_key"], s["client_key_file"])
        self._state_changed()
        self.sync.reset()
        if self.live and self.client is not None:  # reconnecting by hand while live: the new connection streams too
            self._send(force=True)
            self.client.start_live(encoding=self.conn.encoding())
        self.changed.emit()

    def disconnect_daemon(self) -> None:
        self.conn.close()
        self._state_changed()
        self.changed.emit()

    def _state_changed(self) -> None:
        # Nothing is counted across an outage: frame rate and latency start afresh, and
        # what was sent before the session (re)opened is answered by the client's full resend.
        if self.state != "connected":
            self.stats.reset()
        self.sync.scheduler.reset()
        self._update_rows()

    def status_text(self) -> tuple[str, str]:
        return self.conn.words(self.settings["address"])

    def start_managed(self) -> None:
        """Start the local daemon install.py set up, and connect to it."""
        if self.managed.start():
            self.set_setting("address", self.managed.address)
            self.connect_daemon()

    def stop_managed(self) -> None:
        """Stop the local daemon; connected to it, disconnect first: the artist stopped it, so
        nothing reconnects (and the status does not say it will)."""
        if self.client is not None and same_address(self.client.address, self.managed.address):
            self.disconnect_daemon()
        self.managed.stop()

    # ---------------------------------------------------------- live / generate / apply

    def set_live(self, on: bool) -> None:
        if on == self.live:
            return
        self._follow_document()
        self.live = on
        self.stats.reset()
        if on:
            self.output.start()
            if self.client is None:
                self.connect_daemon()
            if self.client is not None:
                self._send(force=True)
                self.client.start_live(encoding=self.conn.encoding())
        else:
            if self.client is not None:
                self.client.stop_live()
            self.frame_event = None
            if self.result is not None and self.doc is not None:
                self._show(self.result)  # a result waiting for Apply stays in view
            else:
                self.output.stop(self.doc)
        self.changed.emit()

    def generate(self) -> None:
        self._follow_document()
        if self.client is None:
            self.connect_daemon()
        if self.client is None:
            return
        if not self.settings["seed_locked"]:
            self.randomize_seed()  # an unlocked seed means a new picture each time
        self._send(force=True)
        self.progress = "queued"
        self.client.generate(encoding="png")
        self.changed.emit()

    def apply(self) -> bool:
        """Copy the newest result (or live frame) into a new paint layer, one undo step."""
        self._follow_document()
        problem = self.output.apply(self.doc)
        if problem:
            self.error = problem
        elif self.result is not None:
            self.output.result, self.progress = None, ""
            if not self.live:
                self.output.stop(self.doc)  # the result is a layer now
        self.changed.emit()
        return not problem

    # ---------------------------------------------------------- the loop

    def tick(self) -> None:
        self._guarded(self._tick_once)

    def _tick_once(self) -> None:
        self._follow_document()
        self.guard.watch_windows()
        self.output.keeper.check()
        self._service()
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
        if self.doc is not None and kritaapi.is_open(self.doc):  # Krita crashes on a closed one
            self.output.stop(self.doc)
        self.doc = doc
        self.frame_event, self.output.result, self.progress = None, None, ""
        self.output.start()
        self.sync.reset()
        self.store.notice = ""
        if doc is not None:
            self.store.follow(doc, self.limits)
        self.changed.emit()

    def _service(self) -> None:
        for ev in self.conn.poll():
            self._handle(ev)

    def _handle(self, ev) -> None:
        c = client_mod
        if isinstance(ev, c.StateEvent):
            self.conn.set_state(ev.state, ev.code, ev.reason)
            self._state_changed()
            if ev.state == "connected":
                self.error = ""
        elif isinstance(ev, c.SceneEvent):
            self.sync.reader.read(ev.revision, ev.layers)
            self._update_rows()
            if not self.live:
                self.sync.scheduler.answered(ev.revision)
        elif isinstance(ev, c.FrameEvent):
            self._on_frame(ev)
        elif isinstance(ev, c.ProgressEvent):
            self.progress = f"step {ev.step}/{ev.total}"
        elif isinstance(ev, c.CancelledEvent):
            self.progress = "cancelled"
        elif isinstance(ev, c.ErrorEvent):
            self.error = ev.message
            if isinstance(ev.header.get("revision"), int):
                self.sync.scheduler.answered(ev.header["revision"])  # refused: not in flight any more
            self.progress = "" if ev.re is not None else self.progress
        self.changed.emit()

    def _on_frame(self, ev) -> None:
        handled = time.monotonic()
        img = pixels.decode_frame(ev.encoding, ev.data, ev.width, ev.height, ev.channels)
        if img.isNull():
            self.error = f"could not decode a {ev.encoding} frame"
            return
        if ev.job is not None:
            self.output.result, self.progress = img, "result ready: press Apply"
            if not self.live and self.doc is not None:
                self._show(img)  # with Live off the preview shows the result
            return
        if not self.live or self.doc is None:
            return
        self.stats.frame()
        latency = self.sync.scheduler.answered(ev.revision)
        if latency is not None:  # the first frame showing this revision
            self.stats.latency(latency)
        if not self._show(img):
            return
        self.frame_event = ev
        self.sync.shown(ev, handled)

    def _show(self, img: QImage) -> bool:
        try:
            self.output.show(self.doc, img, self.settings)
        except kritaapi.Unsupported as e:
            self.error = str(e)
            return False
        return True

    # ---------------------------------------------------------- reading the document

    def _scan(self) -> None:
        """Notice changes; send them once the artist pauses (scheduler)."""
        if self.doc is None or not self.conn.connected:
            if self.sync.follow_names(self.doc):
                self._update_rows()
            return
        self._send(force=False)

    def _send(self, force: bool) -> None:
        if self.doc is None or self.client is None:
            return
        canvas = self.settings["background_source"] in ("canvas", "both")
        try:
            restructured = self.sync.step(
                self.doc, self.client, self.output_size(), self.scene_settings(), canvas, force
            )
        except kritaapi.Unsupported as e:
            self.error = str(e)
            return
        if restructured:
            self._update_rows()

    def _update_rows(self) -> None:
        self.rows = self.sync.rows(self.doc, self.conn.connected)
        self.changed.emit()


_controller: Controller | None = None


def controller() -> Controller:
    """The one controller shared by the extension's actions and every docker."""
    global _controller
    if _controller is None:
        _controller = Controller()
    return _controller

"""The SMD Live docker: widgets only; behaviour lives in live.Controller.

Compact: the connection, the three buttons, what the canvas shows, the layer
list and the status come first; the preview, the scene settings and the
daemon's address fold away, and the whole docker scrolls, so it is usable at
350 px high and in Krita's default dock column (about 260 px wide).
"""

from __future__ import annotations

from krita import DockWidget
from PyQt5.QtCore import Qt, QTimer
from PyQt5.QtWidgets import (
    QCheckBox,
    QDoubleSpinBox,
    QFrame,
    QHBoxLayout,
    QLabel,
    QLineEdit,
    QPushButton,
    QScrollArea,
    QSizePolicy,
    QSlider,
    QSpinBox,
    QToolButton,
    QVBoxLayout,
    QWidget,
)

from . import settings
from .connection import same_address
from .widgets import (
    Choice,
    LayerList,
    PreviewView,
    Section,
    breakable,
    combo,
    compact,
    narrow_form,
    warning_text,
    wrapping_label,
)

DOCKER_ID = "smd_live_docker"
TITLE = "SMD Live"
# Input sanity before the daemon has said its limits (its handshake sets the real ranges).
SANITY_MAX_STEPS = 1000
SANITY_MAX_SIDE = 16384
MIN_HEIGHT = 170
STATUS_COLORS = {"ok": "", "busy": "color: #b08000", "problem": "color: #c05000"}
PREVIEW_MODES = (("canvas", "on the canvas"), ("docker", "in this docker"))
REGION_WORDS = {"latent": "shape-following", "attention": "fast"}  # each mode in the artist's words
REGION_MODES = tuple((m, f"{REGION_WORDS.get(m, m)} ({m})") for m in settings.REGION_MODES)
SOURCES = (("canvas", "the canvas"), ("prompt", "the prompt"), ("both", "both"))
SHOWS = (
    ("painting", "Painting", "the canvas shows your painting alone"),
    ("both", "Both", "the preview over your painting, at the opacity set under Preview"),
    ("preview", "Preview", "the canvas shows the preview alone"),
)
# Live on must be seen at a glance: a filled, bold button (Krita's themes draw a checked button
# only slightly darker).
LIVE_ON_STYLE = "QPushButton:checked { background-color: #2f8f3a; color: white; font-weight: bold; }"
LIVE_TEXT = {False: "Live", True: "Live \u25cf"}  # ● while on


def _named(widget, name: str):
    widget.setObjectName(name)
    return widget


class SMDDocker(DockWidget):
    def __init__(self):
        super().__init__()
        self.setWindowTitle(TITLE)
        from . import live  # needs pyzmq; UnsupportedDocker must import without it

        self.ctl = live.controller()
        self._loading = False
        content = QWidget()
        box = QVBoxLayout(content)
        box.setContentsMargins(4, 4, 4, 4)
        box.setSpacing(4)

        top = QHBoxLayout()
        self.status = wrapping_label("smd_status")
        self.connect_btn = compact(_named(QPushButton("Connect"), "smd_connect"), "Connect", "Disconnect")
        top.addWidget(self.status, 1)
        top.addWidget(self.connect_btn, 0, Qt.AlignmentFlag.AlignTop)
        box.addLayout(top)

        buttons = QHBoxLayout()
        self.live_btn = _named(QPushButton(LIVE_TEXT[False]), "smd_live")
        self.live_btn.setCheckable(True)
        self.live_btn.setStyleSheet(LIVE_ON_STYLE)
        compact(self.live_btn, *LIVE_TEXT.values())
        self.generate_btn = compact(_named(QPushButton("Generate"), "smd_generate"))
        self.apply_btn = compact(_named(QPushButton("Apply"), "smd_apply"))
        for b in (self.live_btn, self.generate_btn, self.apply_btn):
            buttons.addWidget(b)
        box.addLayout(buttons)
        self.show_choice = Choice("smd_show", SHOWS)
        box.addWidget(self.show_choice)
        self.stats = wrapping_label("smd_stats")
        self.error = wrapping_label("smd_error")
        self.error.setStyleSheet("color: #d04040")
        box.addWidget(self.stats)
        box.addWidget(self.error)
        self.layers = LayerList()
        box.addWidget(self.layers, 1)
        self.warnings = wrapping_label("smd_warnings")
        self.warnings.setStyleSheet("color: #c07000")
        box.addWidget(self.warnings)

        self.preview_section = Section("Preview", "preview")
        self._build_preview(self.preview_section.body)
        self.settings_section = Section("Scene settings", "settings")
        self._build_settings(self.settings_section.body)
        self.daemon_section = Section("Daemon", "daemon")
        self._build_daemon(self.daemon_section.body)
        for section in (self.preview_section, self.settings_section, self.daemon_section):
            box.addWidget(section)

        scroll = QScrollArea()
        scroll.setObjectName("smd_scroll")
        # Enough for the status, the buttons and a few layers when Krita's other dockers crowd it;
        # everything else scrolls.
        scroll.setMinimumHeight(MIN_HEIGHT)
        scroll.setWidgetResizable(True)
        scroll.setFrameShape(QFrame.Shape.NoFrame)
        # Everything fits Krita's default column; a narrower one scrolls rather than cutting buttons off.
        scroll.setHorizontalScrollBarPolicy(Qt.ScrollBarPolicy.ScrollBarAsNeeded)
        scroll.setWidget(content)
        self.setWidget(scroll)
        self._connect_signals()
        self._log_timer = QTimer(self)
        self._log_timer.setInterval(1000)
        self._log_timer.timeout.connect(self._refresh_daemon)
        self._log_timer.start()
        self.ctl.changed.connect(self.refresh)
        self.ctl.managed.changed.connect(self._refresh_daemon)
        s = self.ctl.settings
        self.settings_section.set_open(s["show_settings"])
        self.daemon_section.set_open(s["show_daemon"] or self.ctl.managed.available)
        self.refresh()

    # ---------------------------------------------------------- building

    def _build_preview(self, body: QWidget) -> None:
        form = narrow_form(body)
        self.preview_mode = combo("smd_preview_mode", PREVIEW_MODES)
        self.preview_opacity = _named(QSlider(Qt.Orientation.Horizontal), "smd_preview_opacity")
        self.preview_opacity.setRange(0, 100)
        self.preview_opacity.setToolTip("the preview's opacity when the canvas shows both")
        self.preview_view = PreviewView()
        form.addRow("Show", self.preview_mode)
        form.addRow("Both at", self.preview_opacity)
        form.addRow(self.preview_view)

    def _build_settings(self, body: QWidget) -> None:
        form = narrow_form(body)
        seed_row = QHBoxLayout()
        self.seed = _named(QSpinBox(), "smd_seed")
        self.seed.setRange(0, settings.MAX_SEED)
        self.seed.setSizePolicy(QSizePolicy.Policy.Ignored, QSizePolicy.Policy.Fixed)  # ten digits shrink
        self.seed_lock = _named(QCheckBox("lock"), "smd_seed_lock")
        self.seed_random = _named(QToolButton(), "smd_seed_random")
        self.seed_random.setText("new")
        self.seed_random.setToolTip("a new random seed")
        for w in (self.seed, self.seed_lock, self.seed_random):
            seed_row.addWidget(w)
        seed_row.setStretch(0, 1)
        self.steps = _named(QSpinBox(), "smd_steps")
        self.steps.setSpecialValueText("default")  # 0: the daemon's default
        self.size = _named(QSpinBox(), "smd_size")
        self.size.setSingleStep(64)
        self.size_label = _named(QLabel(), "smd_output_size")
        size_row = QHBoxLayout()
        size_row.addWidget(self.size, 1)
        size_row.addWidget(self.size_label)
        self.region_mode = combo("smd_region_mode", REGION_MODES)
        self.region_label = QLabel("Regions")
        self.bg_prompt = _named(QLineEdit(), "smd_background_prompt")
        self.neg_prompt = _named(QLineEdit(), "smd_negative_prompt")
        self.source = combo("smd_background_source", SOURCES)
        self.strength = _named(QDoubleSpinBox(), "smd_strength")
        self.strength.setRange(-0.05, 1.0)  # the minimum stands for the daemon's default
        self.strength.setSpecialValueText("default")
        self.strength.setSingleStep(0.05)
        form.addRow("Seed", seed_row)
        form.addRow("Steps", self.steps)
        form.addRow("Size", size_row)
        form.addRow(self.region_label, self.region_mode)
        form.addRow("Background", self.bg_prompt)
        form.addRow("Negative", self.neg_prompt)
        form.addRow("Follow", self.source)
        form.addRow("Strength", self.strength)

    def _build_daemon(self, body: QWidget) -> None:
        form = narrow_form(body)
        self.address = _named(QLineEdit(), "smd_address")
        self.address.setPlaceholderText("host:port, e.g. 127.0.0.1:7555")
        self.server_key = _named(QLineEdit(), "smd_server_key")
        self.server_key.setPlaceholderText("only for a remote daemon")
        self.key_file = _named(QLineEdit(), "smd_key_file")
        self.key_file.setPlaceholderText("client key file from `smd-daemon keys`")
        form.addRow("Address", self.address)
        form.addRow("Server key", self.server_key)
        form.addRow("Key file", self.key_file)
        self.managed_row = QWidget()
        row = QHBoxLayout(self.managed_row)
        row.setContentsMargins(0, 0, 0, 0)
        self.managed_state = wrapping_label("smd_daemon_state")
        self.start_btn = compact(_named(QPushButton("Start"), "smd_daemon_start"))
        self.stop_btn = compact(_named(QPushButton("Stop"), "smd_daemon_stop"))
        row.addWidget(self.managed_state, 1)
        row.addWidget(self.start_btn)
        row.addWidget(self.stop_btn)
        self.managed_log = wrapping_label("smd_daemon_log")
        self.managed_log.setTextInteractionFlags(Qt.TextInteractionFlag.TextSelectableByMouse)
        self.managed_log.setStyleSheet("font-family: monospace; font-size: 8pt; color: #808080")
        form.addRow("Local", self.managed_row)
        form.addRow(self.managed_log)
        self.managed_label = form.labelForField(self.managed_row)

    def _connect_signals(self) -> None:
        ctl = self.ctl
        self.connect_btn.clicked.connect(self._connect)
        self.live_btn.toggled.connect(ctl.set_live)
        self.generate_btn.clicked.connect(ctl.generate)
        self.apply_btn.clicked.connect(ctl.apply)
        self.show_choice.chosen.connect(lambda v: self._set("preview_show", v))
        self.seed_random.clicked.connect(ctl.randomize_seed)
        self.start_btn.clicked.connect(ctl.start_managed)
        self.stop_btn.clicked.connect(ctl.stop_managed)
        for w, key in (
            (self.address, "address"),
            (self.server_key, "server_key"),
            (self.key_file, "client_key_file"),
            (self.bg_prompt, "background_prompt"),
            (self.neg_prompt, "negative_prompt"),
        ):
            w.editingFinished.connect(lambda w=w, key=key: self._set(key, w.text()))
        for w, key in ((self.seed, "seed"), (self.size, "size")):
            w.valueChanged.connect(lambda v, key=key: self._set(key, v))
        self.steps.valueChanged.connect(lambda v: self._set("steps", v or None))
        self.seed_lock.toggled.connect(lambda v: self._set("seed_locked", v))
        self.strength.valueChanged.connect(lambda v: self._set("strength", round(v, 3) if v >= 0 else None))
        for w, key in (
            (self.source, "background_source"),
            (self.region_mode, "region_mode"),
            (self.preview_mode, "preview_mode"),
        ):
            w.currentIndexChanged.connect(lambda _i, w=w, key=key: self._set(key, w.currentData()))
        self.preview_opacity.valueChanged.connect(lambda v: self._set("preview_opacity", v / 100.0))
        self.settings_section.toggled.connect(lambda v: self._set("show_settings", v))
        self.daemon_section.toggled.connect(lambda v: self._set("show_daemon", v))

    def canvasChanged(self, canvas):  # required by DockWidget; the controller follows the active document
        pass

    def _set(self, key, value):
        if not self._loading:
            self.ctl.set_setting(key, value)

    def _connect(self):
        if self.ctl.client is not None:
            self.ctl.disconnect_daemon()
            return
        for key, w in (("address", self.address), ("server_key", self.server_key), ("client_key_file", self.key_file)):
            self.ctl.set_setting(key, w.text())
        self.ctl.connect_daemon()

    # ---------------------------------------------------------- showing the state

    def refresh(self):
        ctl, s = self.ctl, self.ctl.settings
        self._loading = True
        try:
            self._show_settings(s, ctl.limits)
            self.live_btn.setChecked(ctl.live)
        finally:
            self._loading = False
        self.live_btn.setText(LIVE_TEXT[ctl.live])
        text, kind = ctl.status_text()
        self.status.setText(breakable(text))
        self.status.setToolTip(ctl.conn.details(s["address"]))
        self.status.setStyleSheet(STATUS_COLORS[kind])
        self.connect_btn.setText("Disconnect" if ctl.client is not None else "Connect")
        self.apply_btn.setEnabled(ctl.result is not None or ctl.output.image is not None)
        w, h = ctl.output_size()
        self.size_label.setText(f"→ {w} x {h}" if w else "")
        self.layers.show_rows(ctl.rows)
        warnings = warning_text(ctl.rows)
        self.warnings.setText(breakable(warnings))
        self.warnings.setVisible(bool(warnings))
        stats = ctl.stats.text(ctl.live and ctl.state == "connected")
        self.stats.setText(" · ".join(t for t in (stats, ctl.progress) if t))
        message = ctl.error or ctl.notice
        self.error.setText(breakable(message))
        self.error.setVisible(bool(message))
        in_docker = ctl.output.in_docker(s)
        self.preview_view.setVisible(in_docker)
        if in_docker:
            self.preview_view.show_image(ctl.output.image)
        self.show_choice.setEnabled(not in_docker)
        self.preview_opacity.setEnabled(not in_docker)

    def _show_settings(self, s: dict, limits: dict) -> None:
        for w, key in (
            (self.address, "address"),
            (self.server_key, "server_key"),
            (self.key_file, "client_key_file"),
            (self.bg_prompt, "background_prompt"),
            (self.neg_prompt, "negative_prompt"),
        ):
            if not w.hasFocus() and w.text() != s[key]:
                w.setText(s[key])
        self.steps.setRange(0, int(limits.get("max_steps") or SANITY_MAX_STEPS))
        self.size.setRange(int(limits.get("min_side") or 8), int(limits.get("max_side") or SANITY_MAX_SIDE))
        self.seed.setValue(s["seed"])
        self.seed_lock.setChecked(s["seed_locked"])
        self.steps.setValue(s["steps"] or 0)
        self.size.setValue(s["size"])
        self.strength.setValue(-0.05 if s["strength"] is None else s["strength"])
        defaults = self.ctl.conn.defaults
        self.steps.setToolTip(f"the daemon's default: {defaults['steps']}" if "steps" in defaults else "")
        self.strength.setToolTip(
            f"the daemon's default: {defaults['background_strength']}" if "background_strength" in defaults else ""
        )
        for box, key in (
            (self.source, "background_source"),
            (self.region_mode, "region_mode"),
            (self.preview_mode, "preview_mode"),
        ):
            box.setCurrentIndex(max(0, box.findData(s[key])))
        modes = self.ctl.conn.region_modes()
        self.region_mode.setVisible(bool(modes))
        self.region_label.setVisible(bool(modes))
        self.show_choice.set_value(s["preview_show"])
        self.preview_opacity.setValue(int(round(s["preview_opacity"] * 100)))

    def _refresh_daemon(self):
        managed = self.ctl.managed
        offered = managed.available or bool(managed.problem)
        self.managed_row.setVisible(offered)
        self.managed_label.setVisible(offered)
        self.managed_log.setVisible(managed.available and self.daemon_section.body.isVisible())
        if not managed.available:
            self.managed_state.setText(breakable(managed.problem))
            self.start_btn.setEnabled(False)
            self.stop_btn.setEnabled(False)
            return
        tail = managed.log_tail() if self.daemon_section.body.isVisible() else []
        connected = self.ctl.conn.connected and same_address(self.ctl.settings["address"], managed.address)
        self.managed_state.setText(managed.describe(connected, tail))
        self.start_btn.setEnabled(not managed.running)
        self.stop_btn.setEnabled(managed.running)
        self.managed_log.setText(breakable("\n".join(line[-120:] for line in tail[-5:])))

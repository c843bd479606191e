"""The SMD Live docker: widgets only; behaviour lives in live.Controller."""

from __future__ import annotations

from krita import DockWidget
from PyQt5.QtWidgets import (QCheckBox, QComboBox, QDoubleSpinBox, QFormLayout, QGroupBox, QHBoxLayout, QLabel,
                             QLineEdit, QPushButton, QSpinBox, QTreeWidget, QTreeWidgetItem, QVBoxLayout, QWidget)

from . import settings

DOCKER_ID = "smd_live_docker"
TITLE = "SMD Live"


class SMDDocker(DockWidget):
    def __init__(self):
        super().__init__()
        self.setWindowTitle(TITLE)
        from . import live  # needs pyzmq; UnsupportedDocker must import without it

        self.ctl = live.controller()
        root = QWidget(self)
        box = QVBoxLayout(root)

        conn = QGroupBox("Daemon", root)
        form = QFormLayout(conn)
        self.address = QLineEdit()
        self.server_key = QLineEdit()
        self.server_key.setPlaceholderText("only for a remote daemon")
        self.key_file = QLineEdit()
        self.key_file.setPlaceholderText("client key file from `smd-daemon keys`")
        self.connect_btn = QPushButton("Connect")
        self.status = QLabel()
        self.status.setObjectName("smd_status")
        self.status.setWordWrap(True)
        form.addRow("Address", self.address)
        form.addRow("Server key", self.server_key)
        form.addRow("Key file", self.key_file)
        form.addRow(self.connect_btn, self.status)
        box.addWidget(conn)

        buttons = QHBoxLayout()
        self.live_btn = QPushButton("Live")
        self.live_btn.setCheckable(True)
        self.generate_btn = QPushButton("Generate")
        self.apply_btn = QPushButton("Apply")
        for b in (self.live_btn, self.generate_btn, self.apply_btn):
            buttons.addWidget(b)
        box.addLayout(buttons)

        opts = QGroupBox("Scene", root)
        form = QFormLayout(opts)
        seed_row = QHBoxLayout()
        self.seed = QSpinBox()
        self.seed.setRange(0, 2**31 - 1)
        self.seed_lock = QCheckBox("lock")
        self.seed_random = QPushButton("Randomize")
        seed_row.addWidget(self.seed)
        seed_row.addWidget(self.seed_lock)
        seed_row.addWidget(self.seed_random)
        self.steps = QSpinBox()
        self.steps.setRange(1, 50)
        self.size = QSpinBox()
        self.size.setRange(64, 4096)
        self.size.setSingleStep(64)
        self.size_label = QLabel()
        self.bg_prompt = QLineEdit()
        self.neg_prompt = QLineEdit()
        self.source = QComboBox()
        self.source.addItems(settings.SOURCES)
        self.strength = QDoubleSpinBox()
        self.strength.setRange(0.0, 1.0)
        self.strength.setSingleStep(0.05)
        form.addRow("Seed", seed_row)
        form.addRow("Steps", self.steps)
        form.addRow("Size (long side)", self.size)
        form.addRow("Output", self.size_label)
        form.addRow("Background prompt", self.bg_prompt)
        form.addRow("Negative prompt", self.neg_prompt)
        form.addRow("Background from", self.source)
        form.addRow("Canvas strength", self.strength)
        box.addWidget(opts)

        self.regions = QTreeWidget()
        self.regions.setObjectName("smd_regions")
        self.regions.setHeaderLabels(["Layer", "Read as"])
        self.regions.setRootIsDecorated(False)
        box.addWidget(self.regions, 1)
        self.stats = QLabel()
        self.stats.setObjectName("smd_stats")
        self.error = QLabel()
        self.error.setObjectName("smd_error")
        self.error.setWordWrap(True)
        self.error.setStyleSheet("color: #d04040")
        box.addWidget(self.stats)
        box.addWidget(self.error)
        self.setWidget(root)

        self._loading = False
        self._shown_parsed = None
        self.connect_btn.clicked.connect(self._connect)
        self.live_btn.toggled.connect(self.ctl.set_live)
        self.generate_btn.clicked.connect(self.ctl.generate)
        self.apply_btn.clicked.connect(self.ctl.apply)
        self.seed_random.clicked.connect(self.ctl.randomize_seed)
        self.address.editingFinished.connect(lambda: self._set("address", self.address.text()))
        self.server_key.editingFinished.connect(lambda: self._set("server_key", self.server_key.text()))
        self.key_file.editingFinished.connect(lambda: self._set("client_key_file", self.key_file.text()))
        self.seed.valueChanged.connect(lambda v: self._set("seed", v))
        self.seed_lock.toggled.connect(lambda v: self._set("seed_locked", v))
        self.steps.valueChanged.connect(lambda v: self._set("steps", v))
        self.size.valueChanged.connect(lambda v: self._set("size", v))
        self.bg_prompt.editingFinished.connect(lambda: self._set("background_prompt", self.bg_prompt.text()))
        self.neg_prompt.editingFinished.connect(lambda: self._set("negative_prompt", self.neg_prompt.text()))
        self.source.currentTextChanged.connect(lambda v: self._set("background_source", v))
        self.strength.valueChanged.connect(lambda v: self._set("strength", round(v, 3)))
        self.ctl.changed.connect(self.refresh)
        self.refresh()

    def canvasChanged(self, canvas):  # required by DockWidget; the controller follows the active document
        pass

    def _set(self, key, value):
        if not self._loading:
            self.ctl.set_setting(key, value)

    def _connect(self):
        for key, w in (("address", self.address), ("server_key", self.server_key), ("client_key_file", self.key_file)):
            self.ctl.set_setting(key, w.text())
        self.ctl.connect_daemon()

    def refresh(self):
        ctl, s = self.ctl, self.ctl.settings
        self._loading = True
        try:
            for w, key in ((self.address, "address"), (self.server_key, "server_key"),
                           (self.key_file, "client_key_file"), (self.bg_prompt, "background_prompt"),
                           (self.neg_prompt, "negative_prompt")):
                if not w.hasFocus() and w.text() != s[key]:
                    w.setText(s[key])
            self.seed.setValue(s["seed"])
            self.seed_lock.setChecked(s["seed_locked"])
            self.steps.setValue(s["steps"])
            self.size.setValue(s["size"])
            self.source.setCurrentText(s["background_source"])
            self.strength.setValue(s["strength"])
            self.live_btn.setChecked(ctl.live)
        finally:
            self._loading = False
        self.status.setText(status_text(ctl))
        w, h = ctl.output_size()
        self.size_label.setText(f"{w} x {h}" if w else "no document open")
        if ctl.parsed != self._shown_parsed:  # refresh() runs per frame: rebuild the list only on change
            self._show_layers(ctl.parsed)
        self.stats.setText(f"{ctl.fps:.1f} frames/s, latency {ctl.latency_ms:.0f} ms"
                           + (f" · {ctl.progress}" if ctl.progress else ""))
        self.error.setText(ctl.error)

    def _show_layers(self, parsed):
        self._shown_parsed = parsed
        self.regions.clear()
        for d in parsed:
            if d.get("role") == "ignored" and d.get("reason") in ("automatic layer name", "made by the plugin"):
                continue
            item = QTreeWidgetItem([d.get("name", ""), describe_layer(d)])
            item.setToolTip(1, "\n".join(d.get("warnings", [])))
            self.regions.addTopLevelItem(item)


def status_text(ctl) -> str:
    if ctl.state == "connected" and ctl.client is not None:
        info = ctl.client.info
        model = info.get("model", {})
        name = model.get("name") if isinstance(model, dict) else model
        limits = info.get("limits", {})
        lim = ", ".join(f"{k} {v}" for k, v in sorted(limits.items()) if k in ("max_side", "max_regions"))
        text = f"connected: {name or 'model'}" + (f" on {model['device']}" if isinstance(model, dict)
                                                   and model.get("device") else "")
        text += f" ({lim})" if lim else ""
        if isinstance(model, dict) and model.get("meaningful") is False:
            text += " — a test model: pictures are noise"
        return text
    if ctl.state == "connecting":
        return "connecting…"
    return f"disconnected: {ctl.reason}"


def describe_layer(d: dict) -> str:
    role = d.get("role")
    if role == "region":
        text = f"region: {d.get('prompt', '')}"
        if d.get("negative_prompt"):
            text += f" (not: {d['negative_prompt']})"
        return text
    if role == "background":
        return f"background: {d.get('prompt', '')}"
    return f"ignored ({d.get('reason', '')})"

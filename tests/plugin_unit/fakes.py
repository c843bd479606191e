"""Helpers for the plugin's unit tests: documents in the fake Krita, a fake
clock (no sleeping) and a fake client recording what the plugin sends."""

from __future__ import annotations

import contextlib
import time

import krita  # the fake, put on sys.path by env.py
from PyQt5.QtWidgets import QApplication

from smd_daemon.client import ErrorEvent, FrameEvent, SceneEvent, StateEvent  # noqa: F401


class Clock:
    """A clock the test moves by hand."""

    def __init__(self, start: float = 1000.0):
        self.now = start

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


def bgra(b, g, r, a, n):
    return bytes((b, g, r, a)) * n


def new_doc(w=16, h=16, model="RGBA", depth="U8"):
    """A document with a white opaque "Background", made the active one."""
    app = krita.Krita.instance()
    app._doc = doc = krita.Document(w, h, model, depth)
    app._docs.append(doc)
    app.undo_stack.clear()
    app._queued.clear()
    root = doc.rootNode()
    bg = doc.createNode("Background", "paintlayer")
    root.addChildNode(bg, None)
    bg.setPixelData(bgra(255, 255, 255, 255, w * h), 0, 0, w, h)
    app.undo_stack.clear()
    app._queued.clear()
    doc.setActiveNode(bg)
    doc.setModified(False)
    return doc, bg


def add(doc, name, parent=None, kind="paintlayer", above="top"):
    parent = parent or doc.rootNode()
    node = doc.createNode(name, kind)
    kids = parent.childNodes()
    parent.addChildNode(node, kids[-1] if kids and above == "top" else None)
    app = krita.Krita.instance()
    app.undo_stack.clear()
    app._queued.clear()
    return node


@contextlib.contextmanager
def live_controller(folder: str, painted: str, *others: str):
    """The plugin's controller with its real client, on a new 64² document with a layer named
    ``painted`` holding a 16² red square and empty layers ``others``; stopped afterwards.
    Yields (controller, document, the painted layer)."""
    from smd_krita import live
    from smd_krita.managed import ManagedDaemon

    krita.Krita.instance().settings.clear()
    doc, _ = new_doc(64, 64)
    layer = add(doc, painted)
    layer.setPixelData(bgra(0, 0, 255, 255, 16 * 16), 0, 0, 16, 16)
    for name in others:
        add(doc, name)
    ctl = live.Controller(managed=ManagedDaemon(folder=folder))
    ctl.settings["size"] = 64
    try:
        yield ctl, doc, layer
    finally:
        ctl.timer.stop()
        ctl.disconnect_daemon()


class FakeClient:
    """Records what the controller sends; events are fed by the test."""

    def __init__(self, address="tcp://127.0.0.1:7555", limits=None, capabilities=None):
        self.address = address
        self.calls, self.revision = [], 0
        self.info = {
            "model": {"name": "tiny", "device": "cpu", "meaningful": False},
            "limits": limits or {"max_side": 1024, "min_side": 64, "max_steps": 50},
            "defaults": {"seed": 0, "steps": 4, "background_strength": 0.3},
            "capabilities": capabilities or {},
        }
        self.state, self.state_code, self.state_reason = "connected", "", "connected"
        self.known = set()
        self.closed = False

    @property
    def limits(self):
        return self.info["limits"]

    def set_scene(self, w, h, layers, **kw):
        self.known = {l.key for l in layers}
        self.revision += 1
        self.calls.append(("full", [(l.name, l.alpha is not None) for l in layers], kw))
        self.last_layers = layers
        return self.revision

    def update_scene(self, layers=(), order=None, **kw):
        for l in layers:  # as the daemon: a layer it has never seen must bring its alpha plane
            assert l.key in self.known or l.alpha is not None, f"new layer {l.name!r} without a plane"
        self.known.update(l.key for l in layers)
        self.revision += 1
        self.calls.append(("update", [(l.name, l.alpha is not None) for l in layers], order, kw))
        self.last_layers = layers
        return self.revision

    def poll(self, timeout_ms=0):
        return []

    def fileno(self):
        return -1

    def connect(self):
        pass

    def close(self):
        self.closed = True

    def start_live(self, **kw):
        self.calls.append(("live",))

    def stop_live(self):
        self.calls.append(("stop",))

    def generate(self, **kw):
        self.calls.append(("generate", kw))
        return 1


def frame_event(revision, w=64, h=64, job=None, color=(0, 0, 0)):
    return FrameEvent(1, revision, w, h, "raw", 3, bytes(color) * (w * h), True, job, {}, time.time())


def scene_event(revision, *readings):
    return SceneEvent(revision, [dict(r) for r in readings])


def region(name, prompt=None, **extra):
    return {"name": name, "role": "region", "prompt": prompt or name, "joins_background": False, **extra}


def background(name, prompt, **extra):
    return {"name": name, "role": "background", "prompt": prompt, "joins_background": True, **extra}


def ignored(name, code, reason="", **extra):
    """As the daemon reads it: automatic names and unnamed layers join the background image."""
    joins = code in ("automatic_name", "no_name")
    return {
        "name": name,
        "role": "ignored",
        "prompt": "",
        "reason_code": code,
        "reason": reason or code,
        "joins_background": joins,
        **extra,
    }


def state_event(state, reason, code):
    return StateEvent(state, reason, code)


def run_until(predicate, timeout: float = 60.0) -> bool:
    """Let Qt run until ``predicate()`` (for real processes, which answer in real time)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        QApplication.processEvents()
        if predicate():
            return True
        time.sleep(0.01)
    return False

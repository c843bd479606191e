"""Keeping the daemon's scene in step with the document: notice changes
(``reader``), decide when to send them (``scheduler``), send, and trace each
revision's way through the plugin (for the latency shown and
docs/benchmarks.md)."""

from __future__ import annotations

import time

from . import kritaapi, layerlist
from .reader import LayerReader
from .scheduler import LiveScheduler


def _structure(layers: list) -> list:
    return [(layer.uid, layer.name, layer.parent) for layer in layers]


class SceneSync:
    def __init__(self, clock=time.monotonic):
        self.clock = clock
        self.reader = LayerReader()
        self.scheduler = LiveScheduler(clock)
        self.layers: list = []  # every layer of the document, for the docker's list
        self.trace: dict = {}  # revision -> timestamps
        self.read_ms = 0.0

    def reset(self) -> None:
        """A new document or connection: the next update is full."""
        self.reader.reset()
        self.scheduler.reset()

    def follow(self, layers: list) -> bool:
        """Take the document's layers; True when names or structure changed."""
        if _structure(layers) == _structure(self.layers):
            return False
        self.layers = layers
        return True

    def follow_names(self, doc) -> bool:
        """Nobody listens (no document, or no connection): names and structure only, no pixels read."""
        return self.follow(kritaapi.layers(doc) if doc is not None else [])

    def rows(self, doc, connected: bool) -> list:
        """How every layer is read, for the docker's list."""
        preview = doc is not None and kritaapi.find_preview(doc) is not None
        return layerlist.rows(self.layers, self.reader.reading, connected, preview)

    def step(self, doc, client, size: tuple, scene_settings: dict, canvas_image: bool, force: bool) -> bool:
        """Notice changes and send them when due (always when ``force``).

        Returns whether the layer structure changed. Raises
        kritaapi.Unsupported when the document cannot be read.
        """
        problem = kritaapi.color_problem(doc)
        if problem:
            raise kritaapi.Unsupported(problem)
        t0 = time.perf_counter()
        snap = self.reader.snapshot(doc, size, scene_settings)
        restructured = self.follow(snap.layers)
        self.scheduler.notice(snap.state())
        if not force and not self.scheduler.due(self.reader.pending(snap), bounded=True):
            return restructured
        update = self.reader.build(doc, snap, full=force, canvas_image=canvas_image)
        if update.full:
            w, h = update.size
            rev = client.set_scene(w, h, update.layers, background_image=update.background, **update.settings)
        else:
            rev = client.update_scene(
                update.layers, order=update.order, background_image=update.background, **update.settings
            )
        first, last = self.scheduler.sent(rev)
        self.reader.sent(rev, snap)
        self.read_ms = (time.perf_counter() - t0) * 1000
        self.trace[rev] = {"first_seen": first, "detected": last, "sent": self.clock(), "sent_wall": time.time()}
        for r in [r for r in self.trace if r < rev - 20]:
            del self.trace[r]
        return restructured

    def shown(self, frame, handled: float) -> None:
        """A live frame is on screen: complete its revision's trace."""
        trace = self.trace.get(frame.revision)
        if trace is not None and "written" not in trace:
            trace.update(
                received_wall=frame.received_at,
                daemon_sent_wall=frame.header.get("sent_at"),
                engine_ms=frame.header.get("engine_ms"),
                handled=handled,
                written=time.monotonic(),
            )

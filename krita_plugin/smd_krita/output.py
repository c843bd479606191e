"""Where frames and results are shown: the preview layer on the canvas (as
the document's "show" choice says) or a view inside the docker; and Apply,
which copies the newest result (or frame) into a layer of its own.

Never in the artist's way (see kritaapi.preview): the layer is added once
per document and never removed (Live off hides it), and Krita's habit of
activating a new layer is undone at once, so the artist's layer stays
active. If the layer disappears during Live (the artist undid its creation
or deleted it), it is not added again until Live restarts: adding a layer
would wipe the artist's redo steps. Frames then go to the docker's view.
"""

from __future__ import annotations

import time

from PyQt5.QtGui import QImage

from . import kritaapi, settings


class PreviewOutput:
    def __init__(self, clock=time.monotonic):
        self.keeper = kritaapi.ActiveKeeper(clock)
        self.image: QImage | None = None  # the newest picture, for the docker's view
        self.result: QImage | None = None  # the newest one-shot result, until applied
        self.write_ms = 0.0  # how long showing the last picture took
        self.lost = False  # the canvas layer vanished during this session
        self._written = False  # the canvas layer was written during this session

    def start(self) -> None:
        """A new session (Live turned on, a new document): the layer may be added again."""
        self.lost = False
        self._written = False

    def in_docker(self, values: dict) -> bool:
        return values["preview_mode"] == "docker" or self.lost

    def show(self, doc, img: QImage, values: dict) -> None:
        """Show a frame (or a generated result) as the document's settings say.
        Raises kritaapi.Unsupported when the document cannot show it."""
        t0 = time.perf_counter()
        self._show(doc, img, values)
        self.write_ms = (time.perf_counter() - t0) * 1000

    def _show(self, doc, img: QImage, values: dict) -> None:
        self.image = img
        if self.in_docker(values):
            kritaapi.hide_preview(doc)
            return
        visible, opacity = settings.canvas_look(values)
        node, previous = kritaapi.write_preview(doc, img, visible, opacity, create=visible and not self._written)
        if node is None and not visible:
            return  # hidden: no layer is added for it
        if node is None:
            self.lost = True
            return
        self._written = True
        self.keeper.added(doc, node, previous)

    def restyle(self, doc, values: dict) -> None:
        """The document's preview settings changed."""
        if doc is None:
            return
        if self.in_docker(values):
            kritaapi.hide_preview(doc)
        elif self.image is not None:  # the newest picture (frames meanwhile went to the docker), as chosen
            kritaapi.write_preview(doc, self.image, *settings.canvas_look(values), create=False)

    def stop(self, doc) -> None:
        """Live off, or the result was applied: hide the layer, forget the picture."""
        self.image = None
        self.start()
        if doc is not None:
            kritaapi.hide_preview(doc)

    def apply(self, doc) -> str:
        """Copy the newest result (or, without one, the frame shown) into a new paint layer, one
        undo step; '' or why not."""
        img = self.result if self.result is not None else self.image
        if doc is None or img is None:
            return "nothing to apply yet: press Live or Generate first"
        try:
            node, previous = kritaapi.apply_frame(doc, img)
        except kritaapi.Unsupported as e:
            return str(e)
        self.keeper.added(doc, node, previous)
        return ""

"""Where frames are shown: the preview layer on the canvas (with the
document's visibility and opacity) or a view inside the docker.

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

from . import kritaapi


class PreviewOutput:
    def __init__(self, clock=time.monotonic):
        self.keeper = kritaapi.ActiveKeeper(clock)
        self.image: QImage | None = None  # the newest picture, for the docker's view
        self.lost = False  # the canvas layer vanished during this session
        self._written = False  # the canvas layer was written during this session

    def start(self) -> None:
        """A new session (Live turned on, a new document): the layer may be added again."""
        self.lost = False
        self._written = False

    def in_docker(self, values: dict) -> bool:
        return values["preview_mode"] == "docker" or self.lost

    def show(self, doc, img: QImage, values: dict) -> None:
        """Show a frame (or a generated result) as the document's settings say."""
        self.image = img
        if self.in_docker(values):
            kritaapi.hide_preview(doc)
            return
        visible = values["preview_visible"]
        node, previous = kritaapi.write_preview(
            doc, img, visible, values["preview_opacity"], create=visible and not self._written
        )
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
        elif self.image is not None:
            kritaapi.set_preview_look(doc, values["preview_visible"], values["preview_opacity"])

    def stop(self, doc) -> None:
        """Live off, or the result was applied: hide the layer, forget the picture."""
        self.image = None
        self.start()
        if doc is not None:
            kritaapi.hide_preview(doc)

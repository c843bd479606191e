"""Writing into the document: the preview layer and applied results.

Facts this relies on (Krita 5.1): adding or removing a layer from Python is
an undo step ("Add Layer" / "Remove Layer") and makes Krita activate the new
layer a moment later (queued); changing a layer's pixels, visibility,
opacity or lock is not an undo step. Changing a layer in the same moment it
was added logs Krita's ``SAFE ASSERT "dummy"`` (Krita's layer model learns
of the change before it learns of the layer): a new layer gets its name and
pixels before it is added, and its lock, opacity and visibility a moment
after.

So the preview is added once per document, never removed: turning Live off
hides it, and nothing the plugin does to it touches the artist's undo
history or which layer is active. It is known by its unique id, kept in the
document's annotation (it survives saving): a layer that merely has its name
is the artist's, and never written into. Changing a layer's visibility or
opacity does not redraw the canvas (measured: the projection keeps the old
picture until ``refreshProjection``), so every change of look refreshes it.
"""

from __future__ import annotations

import re
import time

from PyQt5.QtCore import QTimer
from PyQt5.QtGui import QImage

from .. import pixels
from .document import (
    PREVIEW_NAME,
    RESULT_NAME,
    Unsupported,
    activate,
    active_uid,
    color_problem,
    find_node,
    is_open,
    keep_unmodified,
    own_layer_uid,
    set_own_layer_uid,
)

HELD: set[str] = set()  # previews hidden while Krita saves (see saving.py): not shown again by frames
# Set while the plugin itself adds a layer: Krita then builds the same wait dialog it builds
# before saving, which the save guard must not mistake for a save.
OWN_CHANGE = [False]
LOOK_DELAY_MS = 250  # after adding a layer, before changing its flags
_RESULT_NUMBER = re.compile(re.escape(RESULT_NAME) + r" (\d+)$")


def _canvas_bytes(doc, frame: QImage):
    """The frame at canvas size in the document's pixel layout, and the object owning the bytes."""
    if doc.colorDepth() == "U16":
        data = pixels.to_canvas_bgra16(frame, doc.width(), doc.height())
        return data, data
    return pixels.to_canvas_bgra(frame, doc.width(), doc.height())


def find_preview(doc):
    """The preview layer the plugin made in this document (by its unique id), or None."""
    return find_node(doc, own_layer_uid(doc, "preview"))


def _set_look(node, visible: bool, opacity: float) -> bool:
    """Flags are only touched when they differ: each change makes Krita redraw its layer list."""
    changed = False
    value = max(0, min(255, int(round(opacity * 255))))
    if node.opacity() != value:
        node.setOpacity(value)
        changed = True
    if node.visible() != visible:
        node.setVisible(visible)
        changed = True
    if not node.locked():
        node.setLocked(True)  # the lock keeps the artist's brush off it; setPixelData still writes
        changed = True
    return changed


def write_preview(doc, frame: QImage, visible: bool = True, opacity: float = 1.0, create: bool = True):
    """Put the frame, scaled to the canvas, into the locked preview layer.

    Returns (node, previous active layer id or None): the id is set when the
    layer was just added, so the caller can give the artist's layer back
    once Krita has activated the new one. With ``create=False`` a missing
    preview is not added again (returns (None, None)).
    """
    problem = color_problem(doc, writing=True)
    if problem:
        raise Unsupported(problem)
    was_modified = doc.modified()
    node = find_preview(doc)
    w, h = doc.width(), doc.height()
    data, _owner = _canvas_bytes(doc, frame)
    if node is None:
        if not create:
            return None, None
        node = doc.createNode(PREVIEW_NAME, "paintlayer")
        node.setPixelData(data, 0, 0, w, h)
        previous = active_uid(doc)
        root = doc.rootNode()
        children = root.childNodes()
        _add(root, node, children[-1] if children else None)
        set_own_layer_uid(doc, "preview", node.uniqueId().toString())
        keep_unmodified(doc, was_modified)
        QTimer.singleShot(LOOK_DELAY_MS, lambda: _settle(doc, node, visible, opacity))
        return node, previous
    node.setPixelData(data, 0, 0, w, h)
    held = node.uniqueId().toString() in HELD
    if _set_look(node, visible and not held, opacity):
        keep_unmodified(doc, was_modified)
    doc.refreshProjection()  # setPixelData marks nothing for redrawing
    return node, None


def _settle(doc, node, visible: bool, opacity: float) -> None:
    """Lock the new preview and give it its look, once Krita knows the layer."""
    if not is_open(doc):
        return
    current = find_preview(doc)
    if current is not None and current.uniqueId().toString() == node.uniqueId().toString():
        set_preview_look(doc, visible, opacity)


def set_preview_look(doc, visible: bool, opacity: float) -> None:
    node = find_preview(doc)
    if node is None:
        return
    was_modified = doc.modified()
    held = node.uniqueId().toString() in HELD
    if _set_look(node, visible and not held, opacity):
        keep_unmodified(doc, was_modified)
        doc.refreshProjection()  # the canvas shows the new look everywhere, not only where painted next


def hide_preview(doc) -> bool:
    """Hide the preview (turning Live off): hiding, unlike removing, is no undo step."""
    node = find_preview(doc)
    if node is None or not node.visible():
        return False
    was_modified = doc.modified()
    node.setVisible(False)
    keep_unmodified(doc, was_modified)
    doc.refreshProjection()  # without it the last frame stays on the canvas until strokes repaint it
    return True


def next_result_name(doc) -> str:
    """``SMD Result N``, N counting from 1 past the highest already in the document."""
    highest = 0
    stack = list(doc.rootNode().childNodes())
    while stack:
        node = stack.pop()
        m = _RESULT_NUMBER.match(node.name())
        if m:
            highest = max(highest, int(m.group(1)))
        stack.extend(node.childNodes())
    return f"{RESULT_NAME} {highest + 1}"


def apply_frame(doc, frame: QImage):
    """A new ordinary paint layer holding the frame, added as one undo step,
    above the artist's layers (below the preview).

    Returns (node, the artist's active layer id to give back).
    """
    problem = color_problem(doc, writing=True)
    if problem:
        raise Unsupported(problem)
    w, h = doc.width(), doc.height()
    data, _owner = _canvas_bytes(doc, frame)
    node = doc.createNode(next_result_name(doc), "paintlayer")
    node.setPixelData(data, 0, 0, w, h)
    previous = active_uid(doc)
    root = doc.rootNode()
    preview = own_layer_uid(doc, "preview")
    artist = [n for n in root.childNodes() if n.uniqueId().toString() != preview]
    _add(root, node, artist[-1] if artist else None)
    return node, previous


def _add(parent, node, above) -> None:
    OWN_CHANGE[0] = True
    try:
        parent.addChildNode(node, above)
    finally:
        OWN_CHANGE[0] = False


class ActiveKeeper:
    """Adding a layer makes Krita activate it a moment later (queued): give
    the artist's layer back when that happens, once, and only for the layers
    the plugin added, so the artist can still pick any layer they like.
    Krita's activation comes within milliseconds; a busy machine can delay it,
    so it is awaited for a while before giving up."""

    WINDOW_S = 10.0

    def __init__(self, clock=time.monotonic):
        self.clock = clock
        self._pending: list = []  # (doc, added uid, previous uid, until)

    def added(self, doc, node, previous: str | None) -> None:
        if not previous:
            return
        self._pending.append((doc, node.uniqueId().toString(), previous, self.clock() + self.WINDOW_S))
        self.check()
        QTimer.singleShot(0, self.check)

    def check(self) -> None:
        now, keep = self.clock(), []
        for item in self._pending:
            doc, added, previous, until = item
            if not is_open(doc):
                continue
            if active_uid(doc) == added:
                activate(doc, previous)
                continue
            if now < until:
                keep.append(item)
        self._pending = keep

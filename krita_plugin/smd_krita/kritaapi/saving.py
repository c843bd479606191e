"""Keeping the live preview out of saved files.

Krita 5's Python API has no signal before a save (``imageSaved`` comes when
the file is written). But every save, export and autosave started from
Krita's windows (menu, shortcut, toolbar, "save changes?" on close, and
``Document.save``/``saveAs`` from scripts) first builds a short-lived wait
dialog as a child of the main window, then copies the image to write it in
the background. This guard watches the main windows for a new dialog:
at that moment it hides every visible preview layer and lets Krita finish
the projection without it, so the copy (its layers and its merged image)
shows the artist's painting. The previews come back on the next turn of the
event loop, once that dialog is gone. Another dialog of the main window (one
the artist opens) hides the preview until it closes, nothing more.

Not covered: ``Document.exportImage`` from a script, which writes the
document as it is at once.
"""

from __future__ import annotations

import logging
import time

from PyQt5.QtCore import QEvent, QObject, Qt, QTimer

from .document import app, documents, is_open
from .preview import HELD, OWN_CHANGE, find_preview, keep_unmodified

log = logging.getLogger(__name__)
RETRY_MS = 50
HIDDEN_CHILD_WAIT_S = 3.0  # Krita's wait dialog stays hidden for its first second of waiting


class SaveGuard(QObject):
    def __init__(self, parent=None):
        super().__init__(parent)
        self._watched: list = []
        self._held: list = []  # (document, preview node)
        self._child = None  # the widget whose arrival hid the previews, while it exists
        self._holding = False  # hiding makes Krita build the same dialog again: no recursion
        self._until = 0.0
        self.holds = 0  # how often previews were hidden (for tests and logs)

    def watch_windows(self) -> None:
        """Watch every main window (call again when windows appear; cheap)."""
        for window in app().windows():
            qwindow = window.qwindow()
            if qwindow is None or any(w is qwindow for w in self._watched):
                continue
            qwindow.installEventFilter(self)
            qwindow.destroyed.connect(lambda _=None, w=qwindow: self._forget(w))
            self._watched.append(qwindow)

    def _forget(self, qwindow) -> None:
        self._watched = [w for w in self._watched if w is not qwindow]

    def eventFilter(self, obj, event) -> bool:
        # Only a dialog: Krita adds other child widgets to its window all the time (a new layer adds one).
        if (
            event.type() == QEvent.ChildAdded
            and event.child().isWidgetType()
            and event.child().windowType() == Qt.Dialog
            and not OWN_CHANGE[0]
            and not self._holding
        ):
            try:
                self._hold(event.child())
            except Exception:  # never in Krita's way: an exception here would open a "Script error" dialog
                log.exception("SMD Live: hiding the preview for a save failed")
        return False

    def _hold(self, child) -> None:
        self._holding = True
        try:
            self._hide_previews()
        finally:
            self._holding = False
        if self._held:
            self.holds += 1
            self._child = child
            self._until = time.monotonic() + HIDDEN_CHILD_WAIT_S
            child.destroyed.connect(lambda _=None, c=child: self._gone(c))
            QTimer.singleShot(0, self._release)

    def _hide_previews(self) -> None:
        for doc in documents():
            node = find_preview(doc)
            if node is None or not node.visible():
                continue
            was_modified = doc.modified()
            node.setVisible(False)
            doc.refreshProjection()  # the projection without the preview, before Krita copies it
            doc.waitForDone()
            keep_unmodified(doc, was_modified)
            self._held.append((doc, node))
            HELD.add(node.uniqueId().toString())

    def _gone(self, child) -> None:
        if self._child is child:
            self._child = None

    def _release(self) -> None:
        try:
            self._show_again()
        except Exception:
            log.exception("SMD Live: showing the preview after a save failed")

    def _show_again(self) -> None:
        child = self._child
        if child is not None and (child.isVisible() or time.monotonic() < self._until):
            QTimer.singleShot(RETRY_MS, self._release)  # Krita still waits for the image, or a file dialog is open
            return
        self._child = None
        held, self._held = self._held, []
        for doc, node in held:
            HELD.discard(node.uniqueId().toString())
            if not is_open(doc):  # closed meanwhile
                continue
            was_modified = doc.modified()
            node.setVisible(True)
            keep_unmodified(doc, was_modified)
            doc.refreshProjection()  # the canvas shows the preview again at once, not where painted next

"""Widgets the docker is built from (Qt only, no behaviour)."""

from __future__ import annotations

from PyQt5.QtCore import QSize, Qt, pyqtSignal
from PyQt5.QtGui import QColor, QPixmap
from PyQt5.QtWidgets import (
    QAbstractItemView,
    QHeaderView,
    QLabel,
    QSizePolicy,
    QToolButton,
    QTreeWidget,
    QTreeWidgetItem,
    QVBoxLayout,
    QWidget,
)

WARNING_MARK = "\u26a0"  # ⚠
ROLE_COLORS = {
    "region": "#3a8a3a",
    "background": "#3a6ab0",
    "ignored": "#8a8a8a",
    "group": "#8a8a8a",
    "preview": "#8a8a8a",
}
WARNING_COLOR = "#c07000"
VIEW_MIN = 64  # the docker's preview view, in pixels


class Section(QWidget):
    """A titled part of the docker that folds away with one click."""

    toggled = pyqtSignal(bool)

    def __init__(self, title: str, name: str, parent=None):
        super().__init__(parent)
        self.button = QToolButton(self)
        self.button.setObjectName(f"smd_{name}_toggle")
        self.button.setText(title)
        self.button.setCheckable(True)
        self.button.setToolButtonStyle(Qt.ToolButtonTextBesideIcon)
        self.button.setAutoRaise(True)
        self.button.setSizePolicy(QSizePolicy.Expanding, QSizePolicy.Fixed)
        self.body = QWidget(self)
        self.body.setObjectName(f"smd_{name}")
        box = QVBoxLayout(self)
        box.setContentsMargins(0, 0, 0, 0)
        box.setSpacing(0)
        box.addWidget(self.button)
        box.addWidget(self.body)
        self.button.toggled.connect(self._toggle)
        self._toggle(False)

    def _toggle(self, on: bool) -> None:
        self.button.setArrowType(Qt.DownArrow if on else Qt.RightArrow)
        self.body.setVisible(on)
        self.toggled.emit(on)

    def set_open(self, on: bool) -> None:
        if self.button.isChecked() != on:
            self.button.setChecked(on)


class LayerList(QTreeWidget):
    """Every layer, as Krita's layer docker orders them, with how it is read.

    Warnings show as a mark and their text in the row; the name column can
    be widened, and hovering a row shows the full name and reading.
    """

    def __init__(self, parent=None):
        super().__init__(parent)
        self.setObjectName("smd_layers")
        self.setColumnCount(2)
        self.setHeaderLabels(["Layer", "Read as"])
        self.setRootIsDecorated(True)
        self.setIndentation(12)
        self.setUniformRowHeights(True)
        self.setTextElideMode(Qt.ElideRight)
        self.setSelectionMode(QAbstractItemView.NoSelection)
        self.setHorizontalScrollBarPolicy(Qt.ScrollBarAsNeeded)
        header = self.header()
        header.setStretchLastSection(True)
        header.setSectionResizeMode(0, QHeaderView.Interactive)  # drag to widen the names
        header.resizeSection(0, 130)
        header.setMinimumSectionSize(40)
        self._shown = None

    def sizeHint(self) -> QSize:
        return QSize(260, 140)

    def minimumSizeHint(self) -> QSize:
        return QSize(120, 72)  # a few rows; the docker scrolls when it is this small

    def show_rows(self, rows: list) -> None:
        key = [(r.uid, r.name, r.parent, r.role, r.text, tuple(r.warnings)) for r in rows]
        if key == self._shown:  # rebuilt only when something changed (the docker refreshes per frame)
            return
        self._shown = key
        self.clear()
        items = {}
        for r in rows:
            text = r.text
            if r.warnings:
                text = f"{WARNING_MARK} {text} — {'; '.join(r.warnings)}"
            item = QTreeWidgetItem([r.name, text])
            tip = f"{r.name}\n{r.text}" + "".join(f"\n{WARNING_MARK} {w}" for w in r.warnings)
            item.setToolTip(0, tip)
            item.setToolTip(1, tip)
            color = WARNING_COLOR if r.warnings else ROLE_COLORS.get(r.role)
            if color:
                item.setForeground(1, QColor(color))
            item.setData(0, Qt.UserRole, r.uid)
            parent = items.get(r.parent)
            if parent is not None:
                parent.addChild(item)
            else:
                self.addTopLevelItem(item)
            if r.role == "group":
                items[r.uid] = item
        self.expandAll()


class PreviewView(QLabel):
    """The newest frame, scaled into the docker (the "preview in the docker" choice)."""

    def __init__(self, parent=None):
        super().__init__(parent)
        self.setObjectName("smd_preview_view")
        self.setAlignment(Qt.AlignCenter)
        self.setMinimumSize(VIEW_MIN, VIEW_MIN)
        self.setSizePolicy(QSizePolicy.Expanding, QSizePolicy.Preferred)
        self.setText("no picture yet")
        self._image = None

    def show_image(self, image) -> None:
        if image is self._image:
            return
        self._image = image
        if image is None:
            self.clear()
            self.setText("no picture yet")
            return
        side = max(VIEW_MIN, self.width() - 4)
        pix = QPixmap.fromImage(image).scaled(side, side, Qt.KeepAspectRatio, Qt.SmoothTransformation)
        self.setPixmap(pix)

    def heightForWidth(self, width: int) -> int:
        if self._image is None or self._image.width() == 0:
            return VIEW_MIN
        return max(VIEW_MIN, int(width * self._image.height() / self._image.width()))

    def hasHeightForWidth(self) -> bool:
        return True

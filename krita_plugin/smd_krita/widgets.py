"""Widgets the docker is built from (Qt only, no behaviour).

Everything fits Krita's default dock column (about 260 px wide, measured on
1366x768 and 1920x1080 screens): rows of at most three short buttons, combo
boxes that shrink to a few characters, form labels that go above their field
when the column is narrow, and word-wrapped text that may break inside long
addresses and paths.
"""

from __future__ import annotations

from .qt import (
    QAbstractItemView,
    QAbstractScrollArea,
    QApplication,
    QButtonGroup,
    QColor,
    QComboBox,
    QFontMetrics,
    QFormLayout,
    QHBoxLayout,
    QHeaderView,
    QLabel,
    QPixmap,
    QSize,
    QSizePolicy,
    QStyle,
    Qt,
    QToolButton,
    QTreeWidget,
    QTreeWidgetItem,
    QVBoxLayout,
    QWidget,
    pyqtSignal,
)

WARNING_MARK = "\u26a0"  # ⚠
ROLE_COLORS = {
    "region": "#3a8a3a",
    "background": "#3a6ab0",
    "control": "#8a4ab0",
    "ignored": "#8a8a8a",
    "group": "#8a8a8a",
    "preview": "#8a8a8a",
}
WARNING_COLOR = "#c07000"
VIEW_MIN = 64  # the docker's preview view, in pixels
COMBO_CHARS = 8  # a combo box shrinks to this many characters; its list still shows every choice in full
LONG_WORD = 20  # longer words get break opportunities after / : . _ -
_BREAK_AFTER = "/:._-"
ZWSP = "\u200b"  # a break opportunity that shows nothing


def breakable(text: str) -> str:
    """Text a word-wrapped label can break inside long words (addresses, paths) instead of growing wider."""

    def word(w: str) -> str:
        if len(w) <= LONG_WORD:
            return w
        return "".join(c + ZWSP if c in _BREAK_AFTER else c for c in w)

    return "\n".join(" ".join(word(w) for w in line.split(" ")) for line in text.split("\n"))


def wrapping_label(name: str) -> QLabel:
    label = QLabel()
    label.setObjectName(name)
    label.setWordWrap(True)
    label.setMinimumWidth(1)  # its words wrap; it never widens the docker
    return label


def compact(button, *texts: str):
    """A push button as narrow as its longest text allows: Qt's styles make a push button at least
    80 px wide, and three of those do not fit Krita's default dock column."""
    metrics = button.fontMetrics()
    if button.styleSheet():  # a bold checked state must fit as well
        font = button.font()
        font.setBold(True)
        metrics = QFontMetrics(font)
    widest = max(metrics.horizontalAdvance(t) for t in (texts or (button.text(),)))
    style = button.style()
    frame = 2 * style.pixelMetric(QStyle.PixelMetric.PM_DefaultFrameWidth, None, button)
    margin = style.pixelMetric(QStyle.PixelMetric.PM_ButtonMargin, None, button)
    button.setMinimumWidth(widest + 2 * margin + frame)
    button.setSizePolicy(QSizePolicy.Policy.Preferred, QSizePolicy.Policy.Fixed)
    return button


def combo(name: str, choices) -> QComboBox:
    """A combo box of (value, text) choices that shrinks with the docker."""
    box = QComboBox()
    box.setObjectName(name)
    box.setSizeAdjustPolicy(QComboBox.SizeAdjustPolicy.AdjustToMinimumContentsLengthWithIcon)
    box.setMinimumContentsLength(COMBO_CHARS)
    for value, text in choices:
        box.addItem(text, value)
        box.setItemData(box.count() - 1, text, Qt.ItemDataRole.ToolTipRole)
    return box


def narrow_form(body: QWidget) -> QFormLayout:
    """A form whose labels go above their fields when the docker is too narrow for both on one row."""
    form = QFormLayout(body)
    form.setContentsMargins(4, 0, 0, 0)
    form.setRowWrapPolicy(QFormLayout.RowWrapPolicy.WrapLongRows)
    form.setFieldGrowthPolicy(QFormLayout.FieldGrowthPolicy.AllNonFixedFieldsGrow)
    return form


class Choice(QWidget):
    """A row of checkable buttons, one of them on: a choice made in one click."""

    chosen = pyqtSignal(str)
    # The choice in force stands out as a selection does in Krita's theme.
    STYLE = "QToolButton:checked { background-color: palette(highlight); color: palette(highlighted-text); }"

    def __init__(self, name: str, choices, parent=None):
        super().__init__(parent)
        self.setObjectName(name)
        self.setStyleSheet(self.STYLE)
        row = QHBoxLayout(self)
        row.setContentsMargins(0, 0, 0, 0)
        row.setSpacing(2)
        self.group = QButtonGroup(self)
        self.group.setExclusive(True)
        self.buttons = {}
        for value, text, tip in choices:
            b = QToolButton(self)
            b.setObjectName(f"{name}_{value}")
            b.setText(text)
            b.setToolTip(tip)
            b.setCheckable(True)
            b.setSizePolicy(QSizePolicy.Policy.Expanding, QSizePolicy.Policy.Fixed)
            self.group.addButton(b)
            row.addWidget(b)
            self.buttons[value] = b
            b.clicked.connect(lambda _=False, value=value: self.chosen.emit(value))

    def set_value(self, value: str) -> None:
        b = self.buttons.get(value)
        if b is not None and not b.isChecked():
            b.setChecked(True)


class Section(QWidget):
    """A titled part of the docker that folds away with one click."""

    toggled = pyqtSignal(bool)

    def __init__(self, title: str, name: str, parent=None):
        super().__init__(parent)
        self.button = QToolButton(self)
        self.button.setObjectName(f"smd_{name}_toggle")
        self.button.setText(title)
        self.button.setCheckable(True)
        self.button.setToolButtonStyle(Qt.ToolButtonStyle.ToolButtonTextBesideIcon)
        self.button.setAutoRaise(True)
        self.button.setSizePolicy(QSizePolicy.Policy.Expanding, QSizePolicy.Policy.Fixed)
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
        self.button.setArrowType(Qt.ArrowType.DownArrow if on else Qt.ArrowType.RightArrow)
        self.body.setVisible(on)
        self.toggled.emit(on)

    def set_open(self, on: bool) -> None:
        if self.button.isChecked() != on:
            self.button.setChecked(on)


class LayerList(QTreeWidget):
    """Every layer, as Krita's layer docker orders them, with how it is read.

    Warnings show as a mark and their text in the row (and in full below the
    list, see ``warning_text``); the name column can be widened, and hovering a
    row shows the full name and reading. The wheel scrolls the list while it
    can, then the docker around it.
    """

    def __init__(self, parent=None):
        super().__init__(parent)
        self.setObjectName("smd_layers")
        self.setColumnCount(2)
        self.setHeaderLabels(["Layer", "Read as"])
        self.setRootIsDecorated(True)
        self.setIndentation(12)
        self.setUniformRowHeights(True)
        self.setTextElideMode(Qt.TextElideMode.ElideRight)
        self.setSelectionMode(QAbstractItemView.SelectionMode.NoSelection)
        self.setHorizontalScrollBarPolicy(Qt.ScrollBarPolicy.ScrollBarAsNeeded)
        header = self.header()
        if header is not None:  # a tree widget always has one
            header.setStretchLastSection(True)
            header.setSectionResizeMode(0, QHeaderView.ResizeMode.Interactive)  # drag to widen the names
            header.resizeSection(0, 130)
            header.setMinimumSectionSize(40)
        self._shown = None

    def wheelEvent(self, event) -> None:
        # At either end of the list (or when it has nothing to scroll), the wheel scrolls the docker.
        dy = event.angleDelta().y()
        if self._at_end(dy):
            outer = self.parentWidget()
            while outer is not None and not isinstance(outer, QAbstractScrollArea):
                outer = outer.parentWidget()
            bar = outer.verticalScrollBar() if isinstance(outer, QAbstractScrollArea) else None
            if bar is not None:
                before = bar.value()
                bar.setValue(before - round(dy / 120 * bar.singleStep() * QApplication.wheelScrollLines()))
                if bar.value() != before:
                    event.accept()
                    return
        super().wheelEvent(event)

    def _at_end(self, dy: int) -> bool:
        bar = self.verticalScrollBar()
        if bar is None:
            return True
        return dy == 0 or (dy > 0 and bar.value() <= bar.minimum()) or (dy < 0 and bar.value() >= bar.maximum())

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
            item.setData(0, Qt.ItemDataRole.UserRole, r.uid)
            parent = items.get(r.parent)
            if parent is not None:
                parent.addChild(item)
            else:
                self.addTopLevelItem(item)
            if r.role == "group":
                items[r.uid] = item
        self.expandAll()


def warning_text(rows: list) -> str:
    """Every warning in full, one line each, for below the list (a row is too narrow for them)."""
    return "\n".join(f"{WARNING_MARK} {r.name}: {w}" for r in rows for w in r.warnings)


class PreviewView(QLabel):
    """The newest frame, scaled into the docker (the "preview in the docker" choice)."""

    def __init__(self, parent=None):
        super().__init__(parent)
        self.setObjectName("smd_preview_view")
        self.setAlignment(Qt.AlignmentFlag.AlignCenter)
        self.setMinimumSize(VIEW_MIN, VIEW_MIN)
        self.setSizePolicy(QSizePolicy.Policy.Expanding, QSizePolicy.Policy.Preferred)
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
        pix = QPixmap.fromImage(image).scaled(
            side, side, Qt.AspectRatioMode.KeepAspectRatio, Qt.TransformationMode.SmoothTransformation
        )
        self.setPixmap(pix)

    def heightForWidth(self, width: int) -> int:
        if self._image is None or self._image.width() == 0:
            return VIEW_MIN
        return max(VIEW_MIN, int(width * self._image.height() / self._image.width()))

    def hasHeightForWidth(self) -> bool:
        return True

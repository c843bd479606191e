"""The one module of the plugin that imports a Qt binding: PyQt6 where Krita
runs on Qt 6 (Krita 6), PyQt5 otherwise (Krita 5).

Krita is asked which Qt it runs on before anything is imported:
``pykrita.qt_major_version()`` where it exists (Krita 5.3 and 6), else the
Krita version. PyQt5 is never tried first: Krita 6 replaces
``builtins.__import__`` so that any ``import PyQt5`` raises. Outside Krita
(the unit tests) ``SMD_QT_API`` (``pyqt5`` or ``pyqt6``) chooses, else
PyQt5 when it is installed.

Everything else imports Qt from here, written the way both bindings take it:
enums fully scoped (``Qt.AlignmentFlag.AlignLeft``), ``exec()``, a
QByteArray read with ``.data()``. What differs between the bindings lives
below. Pyright checks the plugin against PyQt6, which has no unscoped enums
and none of Qt 5's removed calls.
"""

from __future__ import annotations

import importlib.util
import os
from typing import TYPE_CHECKING, Any, cast


def _krita_qt_major() -> int | None:
    """The Qt major version of the Krita we run in (None outside Krita)."""
    try:
        import pykrita  # pyright: ignore[reportMissingImports]  (Krita's own module: it exists only inside Krita)
    except ImportError:
        return None
    ask = getattr(pykrita, "qt_major_version", None)
    if ask is not None:
        return int(ask())
    # Krita before 5.3 cannot say: it is Krita 5 (Qt 5), unless its version says otherwise.
    from krita import Krita  # pyright: ignore[reportMissingImports]  (as above)

    major = Krita.instance().version().split(".")[0]
    return 6 if major.isdigit() and int(major) >= 6 else 5


def _outside_krita_major(environ=os.environ) -> int:
    chosen = environ.get("SMD_QT_API", "").lower()
    if chosen in ("pyqt5", "pyqt6"):
        return int(chosen[-1])
    if chosen:
        raise ImportError(f"SMD_QT_API is {chosen!r}: use pyqt5 or pyqt6")
    return 5 if importlib.util.find_spec("PyQt5") is not None else 6


def qt_major() -> int:
    """5 or 6 (or what an unsupported Krita says it runs on)."""
    major = _krita_qt_major()
    return _outside_krita_major() if major is None else major


MAJOR = qt_major()

if TYPE_CHECKING or MAJOR == 6:
    from PyQt6 import QtCore, QtGui, QtWidgets, sip
    from PyQt6.QtGui import QAction  # noqa: F401  (Qt 6 keeps it in QtGui)
elif MAJOR == 5:
    from PyQt5 import QtCore, QtGui, QtWidgets, sip
    from PyQt5.QtWidgets import QAction  # noqa: F401  (Qt 5 keeps it in QtWidgets)
else:
    raise ImportError(f"SMD Live needs Qt 5 or Qt 6 (PyQt5 or PyQt6); this Krita runs on Qt {MAJOR}")

BINDING = f"PyQt{MAJOR}"
QT_VERSION = QtCore.QT_VERSION_STR

# QtCore
Qt = QtCore.Qt
QBuffer = QtCore.QBuffer
QByteArray = QtCore.QByteArray
QCoreApplication = QtCore.QCoreApplication
QEvent = QtCore.QEvent
QIODevice = QtCore.QIODevice
QObject = QtCore.QObject
QPoint = QtCore.QPoint
QPointF = QtCore.QPointF
QProcess = QtCore.QProcess
QProcessEnvironment = QtCore.QProcessEnvironment
QRect = QtCore.QRect
QRectF = QtCore.QRectF
QSize = QtCore.QSize
QSocketNotifier = QtCore.QSocketNotifier
QThread = QtCore.QThread
QTimer = QtCore.QTimer
pyqtSignal = QtCore.pyqtSignal
# QtGui
QColor = QtGui.QColor
QFontMetrics = QtGui.QFontMetrics
QImage = QtGui.QImage
QImageReader = QtGui.QImageReader
QPainter = QtGui.QPainter
QPixmap = QtGui.QPixmap
QWheelEvent = QtGui.QWheelEvent
# QtWidgets
QAbstractButton = QtWidgets.QAbstractButton
QAbstractItemView = QtWidgets.QAbstractItemView
QAbstractScrollArea = QtWidgets.QAbstractScrollArea
QApplication = QtWidgets.QApplication
QButtonGroup = QtWidgets.QButtonGroup
QCheckBox = QtWidgets.QCheckBox
QComboBox = QtWidgets.QComboBox
QDialog = QtWidgets.QDialog
QDockWidget = QtWidgets.QDockWidget
QDoubleSpinBox = QtWidgets.QDoubleSpinBox
QFormLayout = QtWidgets.QFormLayout
QFrame = QtWidgets.QFrame
QHBoxLayout = QtWidgets.QHBoxLayout
QHeaderView = QtWidgets.QHeaderView
QLabel = QtWidgets.QLabel
QLineEdit = QtWidgets.QLineEdit
QMainWindow = QtWidgets.QMainWindow
QPushButton = QtWidgets.QPushButton
QScrollArea = QtWidgets.QScrollArea
QSizePolicy = QtWidgets.QSizePolicy
QSlider = QtWidgets.QSlider
QSpinBox = QtWidgets.QSpinBox
QStyle = QtWidgets.QStyle
QToolButton = QtWidgets.QToolButton
QTreeWidget = QtWidgets.QTreeWidget
QTreeWidgetItem = QtWidgets.QTreeWidgetItem
QVBoxLayout = QtWidgets.QVBoxLayout
QWidget = QtWidgets.QWidget


# ------------------------------------------------------------ where the bindings differ


def image_bits(img: QImage) -> sip.voidptr:
    """The image's memory, sized to all of it (read-only)."""
    ptr = img.constBits()
    if ptr is None:  # a null image
        raise ValueError("a null image has no pixels")
    ptr.setsize(img.sizeInBytes())
    return ptr


def byte_array_over(ptr: sip.voidptr) -> QByteArray:
    """A QByteArray holding the (sized) memory at ``ptr``: on PyQt5 over that memory, no copy
    (keep its owner alive while the QByteArray is used); PyQt6 has no ``fromRawData``: a copy."""
    if MAJOR == 5:
        return QByteArray.fromRawData(ptr)  # pyright: ignore[reportAttributeAccessIssue]  (PyQt5 only)
    return QByteArray(ptr.asstring())


def image_over(data: QByteArray, width: int, height: int, bytes_per_line: int, fmt: QImage.Format) -> QImage:
    """A QImage over the QByteArray's memory, without copying it: use it while ``data`` lives."""
    # Both bindings take a voidptr made of a QByteArray (its buffer); their stubs name only bytes.
    pointer = cast(bytes, sip.voidptr(cast(Any, data)))
    return QImage(pointer, width, height, bytes_per_line, fmt)

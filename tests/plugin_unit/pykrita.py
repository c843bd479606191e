"""A fake of Krita's own ``pykrita`` module: what the plugin asks of it, which Qt Krita runs on.

The test run chooses the Krita it pretends to be: ``SMD_QT_API=pyqt6`` is a Krita 6
(Qt 6, PyQt6), anything else a Krita 5 (PyQt5).
"""

import os


def qt_major_version() -> int:
    return 6 if os.environ.get("SMD_QT_API", "").lower() == "pyqt6" else 5

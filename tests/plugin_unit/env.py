"""Sets up the plugin's unit tests in the test process: Qt offscreen, the fake
``krita`` module (tests/plugin_unit/krita.py) and the plugin on sys.path.

The binding is the one the fake Krita runs on: PyQt5, or PyQt6 with
``SMD_QT_API=pyqt6`` (tests/run.sh runs these tests under both); the plugin's
own Qt layer (smd_krita/qt.py) asks the fake which, as it asks Krita.

Import it first in every tests/test_plugin_*.py that needs Qt: without
that binding the module is skipped, unless SMD_REQUIRE_KRITA is set
(tests/run.sh), where that is a failure.
"""

import os
import sys

import pytest

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(os.path.dirname(HERE))

os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")
for path in (HERE, os.path.join(REPO, "krita_plugin"), REPO):
    if path not in sys.path:
        sys.path.insert(0, path)

try:
    import krita  # the fake: it imports its binding (and, on Qt 6, refuses PyQt5) as Krita does
    from smd_krita.qt import BINDING, QApplication
except ImportError as e:
    if os.environ.get("SMD_REQUIRE_KRITA"):
        raise
    pytest.skip(f"the Qt binding is not installed ({e}): pip install -e '.[test]'", allow_module_level=True)

assert BINDING == f"PyQt{krita.QT_MAJOR}", f"the plugin chose {BINDING}, the fake Krita runs Qt {krita.QT_MAJOR}"
APP = QApplication.instance() or QApplication(["plugin-unit-tests"])

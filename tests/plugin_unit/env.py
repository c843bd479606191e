"""Sets up the plugin's unit tests in the test process: Qt offscreen, the fake
``krita`` module (tests/plugin_unit/krita.py) and the plugin on sys.path.

Import it first in every tests/test_plugin_*.py that needs Qt: without
PyQt5 the module is skipped, unless SMD_REQUIRE_KRITA is set (tests/run.sh),
where that is a failure.
"""

import os
import sys

import pytest

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(os.path.dirname(HERE))

try:
    from PyQt5.QtWidgets import QApplication
except ImportError:
    if os.environ.get("SMD_REQUIRE_KRITA"):
        raise
    pytest.skip("PyQt5 is not installed (pip install -e '.[test]')", allow_module_level=True)

os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")
for path in (HERE, os.path.join(REPO, "krita_plugin"), REPO):
    if path not in sys.path:
        sys.path.insert(0, path)

APP = QApplication.instance() or QApplication(["plugin-unit-tests"])

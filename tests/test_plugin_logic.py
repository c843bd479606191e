"""Runs the plugin's unit tests (tests/plugin_unit, fake ``krita`` module) in a
Python that has PyQt5 and pyzmq, as Krita's embedded Python does. The test
environment itself needs neither."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
UNIT = REPO / "tests" / "plugin_unit" / "unit_plugin.py"


def qt_python() -> str | None:
    for exe in (os.environ.get("SMD_QT_PYTHON"), "/usr/bin/python3", shutil.which("python3")):
        if exe and Path(exe).exists():
            ok = subprocess.run([exe, "-c", "import PyQt5.QtGui, zmq"], capture_output=True).returncode == 0
            if ok:
                return exe
    return None


PY = qt_python()


@pytest.mark.skipif(PY is None and not os.environ.get("SMD_REQUIRE_KRITA"), reason="no Python with PyQt5 and pyzmq (Debian: python3-pyqt5 python3-zmq)")
def test_plugin_logic_with_fake_krita():
    assert PY is not None, "no Python with PyQt5 and pyzmq (Debian: python3-pyqt5 python3-zmq)"
    env = {"PATH": os.environ.get("PATH", ""), "PYTHONPATH": str(REPO), "QT_QPA_PLATFORM": "offscreen",
           "HOME": os.environ.get("HOME", "/tmp"), "PYTHONDONTWRITEBYTECODE": "1"}
    res = subprocess.run([PY, str(UNIT), "-v"], env=env, capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stderr[-6000:]
    assert "Ran " in res.stderr and "OK" in res.stderr

"""Test driver: runs one scenario inside real Krita, then exits.

Scenario name, arguments and the results file come from environment
variables set by tests/krita/harness.py. Scenarios are generators that
yield what to wait for, so Krita's event loop (and the plugin's timers)
keep running while they wait.
"""

import json
import os
import sys
import time
import traceback

from krita import Extension, Krita
from PyQt5.QtCore import QThread, QTimer
from PyQt5.QtWidgets import QApplication

OUT = os.environ.get("SMD_TEST_OUT", "")
RESULT = {"checks": {}, "log": [], "errors": []}


def log(msg):
    RESULT["log"].append(f"{time.monotonic():.3f} {msg}")


def checkpoint():
    """Write the results so far: for a scenario whose Krita is killed rather than quit."""
    with open(OUT + ".tmp", "w") as f:
        json.dump(RESULT, f, indent=1)
    os.replace(OUT + ".tmp", OUT)


def finish(code=0):
    try:
        for doc in Krita.instance().documents():
            doc.setModified(False)
    except Exception:
        pass
    checkpoint()
    sys.stderr.flush()
    if code == 0 and RESULT.get("quit"):
        # Quit as an artist does (File > Quit), so the plugin sees Krita quitting.
        Krita.instance().action("file_quit").trigger()
        return
    os._exit(code)


def _hook(kind, value, tb):
    RESULT["errors"].append("".join(traceback.format_exception(kind, value, tb)))


class Runner:
    def __init__(self):
        self.gen = None
        self.wait = None
        self.deadline = time.monotonic() + float(os.environ.get("SMD_TEST_TIMEOUT", "120"))
        self.timer = QTimer()
        self.timer.setInterval(20)
        self.timer.timeout.connect(self.step)
        self.timer.start()

    def ready(self):
        return (
            Krita.instance().activeWindow() is not None
            and QThread.currentThread().loopLevel() == 1
            and QApplication.activeModalWidget() is None
        )

    def step(self):
        modal = QApplication.activeModalWidget()
        if modal is not None:  # a dialog would hang an unattended run
            RESULT["errors"].append(f"unexpected dialog: {modal.windowTitle()!r}")
            modal.reject()
            return
        if time.monotonic() > self.deadline:
            RESULT["errors"].append("driver timed out; waiting for: " + str(getattr(self, "waiting_for", "")))
            finish(3)
        try:
            if self.gen is None:
                if not self.ready():
                    return
                from . import controls, parity, scenarios, session, zipped

                name = os.environ["SMD_TEST_SCENARIO"]
                args = json.loads(os.environ.get("SMD_TEST_ARGS", "{}"))
                module = next(m for m in (session, parity, scenarios, zipped, controls) if hasattr(m, name))
                self.gen = getattr(module, name)(args, RESULT)
                self.wait = None
            if self.wait is not None:
                kind, value, until = self.wait
                if kind == "sleep" and time.monotonic() < until:
                    return
                if kind == "until" and not value():
                    if time.monotonic() > until:
                        raise TimeoutError(f"gave up waiting for {self.waiting_for}")
                    return
            req = next(self.gen)
            if isinstance(req, (int, float)):
                self.wait = ("sleep", None, time.monotonic() + req)
            else:
                what, fn, timeout = req
                self.waiting_for = what
                self.wait = ("until", fn, time.monotonic() + timeout)
        except StopIteration:
            self.timer.stop()
            finish(0)
        except Exception:
            RESULT["errors"].append(traceback.format_exc())
            finish(1)


class DriverExtension(Extension):
    def setup(self):
        if not OUT:
            return
        sys.excepthook = _hook  # Krita's own hook opens a modal dialog
        Krita.instance().setBatchmode(True)
        self.runner = Runner()

    def createActions(self, window):
        pass


Krita.instance().addExtension(DriverExtension(Krita.instance()))

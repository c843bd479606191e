"""A local daemon the plugin starts and stops, when ``install.py`` set one up.

``install.py --serve`` (or ``--daemon-venv``) writes ``managed_daemon.json``
beside this package::

    {"command": ["<venv>/bin/smd-daemon", "serve", ...], "address": "tcp://127.0.0.1:7555",
     "log": "<a log file in the user's data folder>", "venv": "<venv>"}

The docker offers Start and Stop, shows how far the model has loaded and the
last lines of the log. When Krita quits, the plugin stops the process it
started, and only that one: a daemon started any other way is never touched.

The daemon's standard input is a pipe from Krita (QProcess's default), and
install.py's command has ``--watch-stdin``: the system closes that pipe
whenever Krita ends, a crash or SIGKILL included, and the daemon then stops
as on SIGTERM. Closing it is also how Stop reaches the daemon on Windows,
where QProcess.terminate() cannot signal a console program.
"""

from __future__ import annotations

import json
import os
import re

from PyQt5.QtCore import QIODevice, QObject, QProcess, QProcessEnvironment, QTimer, pyqtSignal

CONFIG = "managed_daemon.json"
PACKAGE_DIR = os.path.dirname(os.path.abspath(__file__))
TAIL_BYTES = 16384
STOP_WAIT_MS = 5000  # the daemon exits within 5 s of SIGTERM
_PERCENT = re.compile(r"(\d{1,3})%\|")  # a progress bar (tqdm) while the model downloads or loads


def load_config(folder: str = PACKAGE_DIR) -> tuple[dict | None, str]:
    """(config, problem): the config when the file exists and makes sense, else None and why ('' if absent)."""
    path = os.path.join(folder, CONFIG)
    if not os.path.exists(path):
        return None, ""
    try:
        with open(path, encoding="utf-8") as f:
            config = json.load(f)
    except (OSError, ValueError) as e:
        return None, f"{path} cannot be read ({e}): run install.py again"
    command = config.get("command") if isinstance(config, dict) else None
    if not (isinstance(command, list) and command and all(isinstance(c, str) and c for c in command)):
        return None, f"{path} has no command: run install.py again"
    for key in ("address", "log"):
        if not isinstance(config.get(key), str) or not config[key]:
            return None, f"{path} has no {key}: run install.py again"
    return config, ""


class ManagedDaemon(QObject):
    changed = pyqtSignal()

    def __init__(self, folder: str = PACKAGE_DIR, parent=None):
        super().__init__(parent)
        self.config, self.problem = load_config(folder)
        self.process: QProcess | None = None
        self.exit_text = ""

    @property
    def available(self) -> bool:
        return self.config is not None

    @property
    def address(self) -> str:
        return self.config["address"] if self.config else ""

    @property
    def running(self) -> bool:
        return self.process is not None and self.process.state() != QProcess.NotRunning

    def start(self) -> bool:
        """Start the daemon (False, with ``exit_text`` saying why, if it cannot)."""
        if self.config is None or self.running:
            return False
        log = self.config["log"]
        try:
            os.makedirs(os.path.dirname(log) or ".", exist_ok=True)
        except OSError as e:
            self.exit_text = f"cannot create the log folder: {e}"
            self.changed.emit()
            return False
        proc = QProcess(self)
        env = QProcessEnvironment.systemEnvironment()
        for key in ("PYTHONPATH", "PYTHONHOME"):  # Krita's Python settings are not the daemon's
            env.remove(key)
        proc.setProcessEnvironment(env)
        proc.setProcessChannelMode(QProcess.MergedChannels)
        proc.setStandardOutputFile(log, QIODevice.Append)
        # stdin stays a pipe from Krita (never closed until Stop): when Krita ends, it reaches end of file.
        proc.setProgram(self.config["command"][0])
        proc.setArguments(self.config["command"][1:])
        proc.finished.connect(self._finished)
        proc.errorOccurred.connect(self._error)
        self.process, self.exit_text = proc, ""
        proc.start()
        self.changed.emit()
        return True

    def stop(self, wait: bool = False) -> None:
        """Stop the process this plugin started: SIGTERM, then SIGKILL after 5 s.
        ``wait``: block until it is gone (when Krita quits)."""
        proc = self.process
        if proc is None or proc.state() == QProcess.NotRunning:
            return
        proc.closeWriteChannel()  # end of input: --watch-stdin stops the daemon, on every platform
        proc.terminate()
        if wait:
            if not proc.waitForFinished(STOP_WAIT_MS):
                proc.kill()
                proc.waitForFinished(1000)
            return
        QTimer.singleShot(STOP_WAIT_MS, lambda: proc.kill() if proc.state() != QProcess.NotRunning else None)

    def _finished(self, code: int, status) -> None:
        if status == QProcess.CrashExit:
            self.exit_text = "the daemon stopped (killed)" if code in (0, 9, 15) else f"the daemon crashed ({code})"
        else:
            self.exit_text = "the daemon stopped" if code == 0 else f"the daemon exited with code {code}: see its log"
        self.changed.emit()

    def _error(self, error) -> None:
        if error == QProcess.FailedToStart:
            self.exit_text = (
                f"cannot start {self.config['command'][0]}: run install.py --serve again"
                if self.config
                else "cannot start the daemon"
            )
            self.changed.emit()

    def log_tail(self, lines: int = 6) -> list[str]:
        """The log's last lines (progress bars redraw one line with \\r: only their last state counts)."""
        if self.config is None:
            return []
        try:
            with open(self.config["log"], "rb") as f:
                f.seek(0, os.SEEK_END)
                size = f.tell()
                f.seek(max(0, size - TAIL_BYTES))
                text = f.read().decode("utf-8", errors="replace")
        except OSError:
            return []
        out = []
        for line in text.split("\n"):
            drawn = [part.rstrip() for part in line.split("\r") if part.strip()]
            if drawn:
                out.append(drawn[-1])
        return out[-lines:]

    def loading_percent(self, tail: list[str]) -> int | None:
        """How far the model has loaded, from the newest progress bar in the log."""
        for line in reversed(tail):
            found = _PERCENT.findall(line)
            if found:
                return min(100, int(found[-1]))
        return None

    def describe(self, connected: bool, tail: list[str]) -> str:
        """In words, for the docker. ``connected``: the plugin is connected to this daemon."""
        if not self.running:
            return self.exit_text or "stopped"
        if connected:
            return "running"
        percent = self.loading_percent(tail)
        return "starting: loading the model" + (f" ({percent}%)" if percent is not None else "") + "…"

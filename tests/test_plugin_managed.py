"""The local daemon the docker starts and stops (managed_daemon.json from
install.py): a real process, its log, stopping only what it started."""

import json
import os
import signal
import subprocess
import sys

import pytest
from plugin_unit import env  # noqa: F401  (Qt, the fake krita, the plugin on sys.path)
from plugin_unit.fakes import run_until
from PyQt5.QtCore import QProcess
from smd_krita import managed

# Stands in for `smd-daemon serve`: a progress bar, then waits for SIGTERM like the daemon.
FAKE_SERVE = r"""
import signal, sys, time
signal.signal(signal.SIGTERM, lambda *a: (print("stopped", flush=True), sys.exit(0)))
print("loading model tiny ...", flush=True)
sys.stdout.write("Loading pipeline components...:  57%|#####     | 4/7 [00:01<00:01]\r")
sys.stdout.flush()
time.sleep(120)
"""


def write_config(folder, command, log):
    (folder / managed.CONFIG).write_text(
        json.dumps({"command": command, "address": "tcp://127.0.0.1:7999", "log": str(log), "venv": str(folder)})
    )


def test_no_file_no_offer_and_bad_files_say_why(tmp_path):
    assert managed.load_config(str(tmp_path)) == (None, "")
    (tmp_path / managed.CONFIG).write_text("{not json")
    config, problem = managed.load_config(str(tmp_path))
    assert config is None and "run install.py again" in problem
    (tmp_path / managed.CONFIG).write_text(json.dumps({"command": [], "address": "x", "log": "y"}))
    assert "no command" in managed.load_config(str(tmp_path))[1]


def test_start_shows_loading_progress_and_the_log_then_stop(tmp_path):
    log = tmp_path / "logs" / "daemon.log"
    write_config(tmp_path, [sys.executable, "-c", FAKE_SERVE], log)
    d = managed.ManagedDaemon(folder=str(tmp_path))
    assert d.available and d.address == "tcp://127.0.0.1:7999"
    assert d.describe(False, []) == "stopped"
    assert d.start()
    assert d.process.waitForStarted(10000)
    assert run_until(lambda: "57%" in "".join(d.log_tail()))
    tail = d.log_tail()
    assert tail[0] == "loading model tiny ..."
    assert d.describe(False, tail) == "starting: loading the model (57%)…"
    assert d.describe(True, tail) == "running"
    assert not d.start(), "one process at a time"
    d.stop(wait=True)
    assert d.process.state() == QProcess.NotRunning
    assert run_until(lambda: d.exit_text == "the daemon stopped")
    assert "stopped" in d.log_tail()[-1]


def test_a_missing_program_is_said_in_words(tmp_path):
    write_config(tmp_path, [str(tmp_path / "no-such-venv" / "bin" / "smd-daemon"), "serve"], tmp_path / "d.log")
    d = managed.ManagedDaemon(folder=str(tmp_path))
    d.start()
    assert run_until(lambda: "run install.py --serve again" in d.exit_text)


def test_stop_touches_only_the_process_it_started(tmp_path):
    other = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        write_config(tmp_path, [sys.executable, "-c", FAKE_SERVE], tmp_path / "d.log")
        d = managed.ManagedDaemon(folder=str(tmp_path))
        d.stop(wait=True)  # nothing started: nothing stopped
        assert other.poll() is None
        d.start()
        assert d.process.waitForStarted(10000)
        d.stop(wait=True)
        assert other.poll() is None, "a daemon started any other way is never touched"
    finally:
        other.send_signal(signal.SIGKILL)
        other.wait()


@pytest.mark.skipif(not os.path.exists("/proc/self"), reason="needs /proc")
def test_environment_of_krita_python_is_not_passed_on(tmp_path, monkeypatch):
    monkeypatch.setenv("PYTHONPATH", "/krita/python/path")
    log = tmp_path / "d.log"
    write_config(tmp_path, [sys.executable, "-c", "import os; print('PP=' + os.environ.get('PYTHONPATH', ''))"], log)
    d = managed.ManagedDaemon(folder=str(tmp_path))
    d.start()
    assert d.process.waitForFinished(10000)
    assert "PP=" in log.read_text() and "/krita/python/path" not in log.read_text()


def test_the_address_defaults_to_the_daemon_install_py_recorded(tmp_path, monkeypatch):
    """Until the artist types another address, the docker uses the one install.py recorded (and follows
    a later install that serves elsewhere); an address the artist chose is kept."""
    from smd_krita import kritaapi, settings

    monkeypatch.setattr(managed, "PACKAGE_DIR", str(tmp_path))
    settings.save_global(dict(settings.DEFAULTS))  # what an older plugin stored: the built-in address
    assert settings.load_global()["address"] == settings.DEFAULTS["address"]  # nothing recorded yet
    write_config(tmp_path, ["smd-daemon", "serve"], tmp_path / "d.log")  # install.py --serve, port 7999
    assert settings.load_global()["address"] == "tcp://127.0.0.1:7999"
    settings.save_global({**settings.load_global(), "seed": 5})
    stored = json.loads(kritaapi.read_setting(settings.GROUP, "settings"))
    assert "address" not in stored and stored["seed"] == 5
    config = json.loads((tmp_path / managed.CONFIG).read_text())
    (tmp_path / managed.CONFIG).write_text(json.dumps({**config, "address": "tcp://127.0.0.1:7591"}))
    assert settings.load_global()["address"] == "tcp://127.0.0.1:7591"
    settings.save_global({**settings.load_global(), "address": "10.0.0.2:7555"})
    (tmp_path / managed.CONFIG).write_text(json.dumps({**config, "address": "tcp://127.0.0.1:7600"}))
    assert settings.load_global()["address"] == "10.0.0.2:7555"


# A daemon stand-in that, like `serve --watch-stdin`, stops when its standard input closes, and
# (like a console program on Windows) does not hear QProcess.terminate().
WATCHING_SERVE = r"""
import os, signal
signal.signal(signal.SIGTERM, signal.SIG_IGN)
print("serving", flush=True)
while os.read(0, 1024):
    pass
print("standard input closed", flush=True)
"""


def test_stop_closes_the_daemons_standard_input(tmp_path):
    """Stop ends the input the daemon watches (how Stop reaches it on Windows), besides SIGTERM; the
    pipe stays open while it runs."""
    log = tmp_path / "d.log"
    write_config(tmp_path, [sys.executable, "-c", WATCHING_SERVE], log)
    d = managed.ManagedDaemon(folder=str(tmp_path))
    d.start()
    assert d.process.waitForStarted(10000)
    assert run_until(lambda: "serving" in log.read_text())
    assert not run_until(lambda: "closed" in log.read_text(), timeout=1.0), "its standard input stays open"
    d.stop(wait=True)
    assert d.process.state() == QProcess.NotRunning
    assert d.process.exitStatus() == QProcess.NormalExit and d.process.exitCode() == 0, "not killed"
    assert "standard input closed" in log.read_text()

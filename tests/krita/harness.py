"""Start real Krita under Xvfb with a private HOME, the plugin installed by
install.py and the test driver plugin, run one scenario, return its results.
"""

from __future__ import annotations

import json
import os
import shlex
import shutil
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
DRIVER = Path(__file__).resolve().parent
# Krita's embedded Python takes its prefix from the first python3 on PATH:
# it must be the system one, never a virtualenv's.
SYSTEM_PATH = "/usr/local/sbin:/usr/sbin:/usr/bin:/sbin:/bin"
# Krita reads its general keys only before the first [section].
GENERAL_KEYS = "AutoSaveInterval=0\nCreateBackupFile=false\nsessionOnStartup=0\nsaveSessionOnQuit=false\n"


def available() -> str:
    """'' when Krita and Xvfb can run here, else why not."""
    for exe in ("krita", "xvfb-run"):
        if not shutil.which(exe, path=SYSTEM_PATH):
            return f"{exe} is not installed"
    return ""


def home_env(home: Path) -> dict:
    env = {
        "HOME": str(home),
        "XDG_CONFIG_HOME": str(home / ".config"),
        "XDG_DATA_HOME": str(home / ".local/share"),
        "XDG_CACHE_HOME": str(home / ".cache"),
        "XDG_RUNTIME_DIR": str(home / "run"),
        "TMPDIR": str(home / "tmp"),
        "PATH": SYSTEM_PATH,
        "LANG": "C.UTF-8",
    }
    for d in ("run", "tmp", ".config", ".local/share"):
        (home / d).mkdir(parents=True, exist_ok=True)
    os.chmod(home / "run", 0o700)
    return env


def new_home(path: Path) -> Path:
    path.mkdir(parents=True, exist_ok=True)
    home_env(path)
    (path / ".config" / "kritarc").write_text(GENERAL_KEYS)
    return path


def install_plugin(home: Path, *extra: str) -> subprocess.CompletedProcess:
    """Run the real install.py for this HOME (it finds Krita and its folders itself)."""
    env = home_env(home)
    return subprocess.run(
        [sys.executable, str(REPO / "install.py"), *extra], env=env, capture_output=True, text=True, timeout=120
    )


def install_driver(home: Path) -> None:
    pykrita = home / ".local/share/krita/pykrita"
    pykrita.mkdir(parents=True, exist_ok=True)
    shutil.copy(DRIVER / "smd_test_driver.desktop", pykrita)
    dst = pykrita / "smd_test_driver"
    if dst.exists():
        shutil.rmtree(dst)
    shutil.copytree(DRIVER / "smd_test_driver", dst, ignore=shutil.ignore_patterns("__pycache__"))
    rc = home / ".config" / "kritarc"
    sys.path.insert(0, str(REPO))
    try:
        import install
    finally:
        sys.path.pop(0)
    text, _ = install.enable_in_kritarc(rc.read_text() if rc.exists() else "", "smd_test_driver")
    rc.write_text(text)


# xvfb-run -a picks a free display number by looking for lock files, so two
# runs starting at once (parallel test sessions) can pick the same one; the
# loser's Krita cannot open the display. Such a run never started: run it again.
NO_DISPLAY = "could not connect to display"
START_TRIES = 3


def run(
    home: Path,
    scenario: str,
    args: dict | None = None,
    files: list[str] = (),
    timeout: float = 150,
    during=None,
    screen: str = "1280x1024",
) -> dict:
    """Run one scenario on an X screen of ``screen`` pixels; ``during(proc)`` is
    called repeatedly while Krita runs."""
    for _ in range(START_TRIES - 1):
        try:
            return _run(home, scenario, args, files, timeout, during, screen)
        except _NoDisplay:
            time.sleep(1.0)
    return _run(home, scenario, args, files, timeout, during, screen)


class _NoDisplay(AssertionError):
    pass


def _run(home: Path, scenario: str, args, files, timeout: float, during, screen: str) -> dict:
    env = home_env(home)
    out = home / f"result-{scenario}.json"
    if out.exists():
        out.unlink()
    env.update(
        SMD_TEST_SCENARIO=scenario,
        SMD_TEST_OUT=str(out),
        SMD_TEST_ARGS=json.dumps(args or {}),
        SMD_TEST_TIMEOUT=str(timeout - 10),
        HF_HUB_OFFLINE="1",
    )
    cmd = [
        "timeout",
        "-k",
        "5",
        str(int(timeout)),
        "xvfb-run",
        "-a",
        "-s",
        f"-screen 0 {screen}x24 -nolisten tcp",
        "krita",
        "--nosplash",
        *files,
    ]
    log = open(home / f"krita-{scenario}.log", "w")
    proc = subprocess.Popen(cmd, env=env, stdout=log, stderr=subprocess.STDOUT, cwd=home, start_new_session=True)
    try:
        while proc.poll() is None:
            if during is not None:
                during(proc)
            time.sleep(0.1)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, 9)
            proc.wait()
        log.close()
    if not out.exists():
        tail = (home / f"krita-{scenario}.log").read_text(errors="replace")[-3000:]
        error = _NoDisplay if NO_DISPLAY in tail else AssertionError
        raise error(f"Krita exited {proc.returncode} without results; log tail:\n{tail}")
    result = json.loads(out.read_text())
    result["returncode"] = proc.returncode
    result["krita_log"] = (home / f"krita-{scenario}.log").read_text(errors="replace")
    return result


def plugin_folder(home: Path) -> Path:
    return home / ".local/share/krita/pykrita" / "smd_krita"


def copy_home(home: Path, dst: Path) -> Path:
    """A copy of an initialised HOME (0.1 s, where a first Krita start takes 15-25 s)."""
    subprocess.run(["cp", "-a", str(home), str(dst)], check=True)
    # install.py's record names the paths it made: in the copy, the copy's own (as if installed there).
    record = plugin_folder(dst).parent / "smd_krita.install.json"
    if record.exists():
        record.write_text(record.read_text().replace(json.dumps(str(home))[1:-1], json.dumps(str(dst))[1:-1]))
    return dst


def daemon_venv(path: Path) -> Path:
    """A folder install.py takes as a venv (a pyvenv.cfg) whose smd-daemon is this checkout's daemon
    (exec'd: the docker's process is the daemon) and whose pip does nothing: installing torch into a
    new venv is not for a test."""
    (path / "bin").mkdir(parents=True)
    (path / "pyvenv.cfg").write_text(f"home = {Path(sys.executable).parent}\n")
    (path / "bin" / "python").write_text("#!/bin/sh\nexit 0\n")
    (path / "bin" / "smd-daemon").write_text(
        f'#!/bin/sh\nPYTHONPATH={shlex.quote(str(REPO))} exec {shlex.quote(sys.executable)} -m smd_daemon "$@"\n'
    )
    for exe in ("python", "smd-daemon"):
        (path / "bin" / exe).chmod(0o755)
    return path


class KillKrita:
    """A ``during`` for run() with the driver's ``managed_killed`` scenario: once the driver has
    written ``pids.json`` into ``sync``, SIGKILL Krita and time how long the daemon it started lives
    on (``gone``, ``seconds``; up to ``wait`` s)."""

    def __init__(self, sync: Path, wait: float = 30.0):
        self.sync, self.wait = sync, wait
        self.pids: dict = {}
        self.gone, self.seconds = False, None

    def __call__(self, proc) -> None:
        from daemon_util import wait_gone  # tests/: on the path of the tests and the benchmarks

        if self.pids or not (self.sync / "pids.json").exists():
            return
        self.pids = json.loads((self.sync / "pids.json").read_text())
        t = time.monotonic()
        os.kill(self.pids["krita"], 9)
        self.gone = wait_gone(self.pids["daemon"], self.wait)
        self.seconds = time.monotonic() - t

    def clean_up(self) -> None:
        from daemon_util import process_alive

        if self.pids.get("daemon") and process_alive(self.pids["daemon"]):
            os.kill(self.pids["daemon"], 9)


def disable_plugin(home: Path) -> None:
    """Krita without the plugin (the test driver stays)."""
    rc = home / ".config" / "kritarc"
    rc.write_text(rc.read_text().replace("enable_smd_krita=true", "enable_smd_krita=false"))

"""Start real Krita under Xvfb with a private HOME, the plugin installed by
install.py and the test driver plugin, run one scenario, return its results.
"""

from __future__ import annotations

import json
import os
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


def disable_plugin(home: Path) -> None:
    """Krita without the plugin (the test driver stays)."""
    rc = home / ".config" / "kritarc"
    rc.write_text(rc.read_text().replace("enable_smd_krita=true", "enable_smd_krita=false"))

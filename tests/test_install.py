"""install.py: folder logic per platform, kritarc editing, install/uninstall/dry-run on real files."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
import install  # noqa: E402


def test_folders_per_platform(tmp_path):
    home = tmp_path
    lin = install.krita_dirs("Linux", {}, home)
    assert lin["pykrita"] == home / ".local/share/krita/pykrita" and lin["kritarc"] == home / ".config/kritarc"
    xdg = install.krita_dirs("Linux", {"XDG_DATA_HOME": "/d", "XDG_CONFIG_HOME": "/c"}, home)
    assert xdg["pykrita"] == Path("/d/krita/pykrita") and xdg["kritarc"] == Path("/c/kritarc")
    (home / ".var/app/org.kde.krita").mkdir(parents=True)
    flat = install.krita_dirs("Linux", {}, home)
    assert flat["kind"] == "flatpak"
    assert flat["pykrita"] == home / ".var/app/org.kde.krita/data/krita/pykrita"
    assert flat["kritarc"] == home / ".var/app/org.kde.krita/config/kritarc"
    (home / ".local/share/krita").mkdir(parents=True)  # a native Krita was used here: prefer it
    assert install.krita_dirs("Linux", {}, home)["kind"] == "linux"
    win = install.krita_dirs(
        "Windows", {"APPDATA": r"C:\U\AppData\Roaming", "LOCALAPPDATA": r"C:\U\AppData\Local"}, home
    )
    assert win["pykrita"] == Path(r"C:\U\AppData\Roaming") / "krita" / "pykrita"
    assert win["kritarc"] == Path(r"C:\U\AppData\Local") / "kritarc"
    mac = install.krita_dirs("Darwin", {}, home)
    assert mac["pykrita"] == home / "Library/Application Support/krita/pykrita"
    assert mac["kritarc"] == home / "Library/Preferences/kritarc"


def test_kritarc_keeps_every_other_line():
    text = "AutoSaveInterval=0\n\n[General]\nfoo=1\n\n[python]\nenable_other=true\n\n[Tail]\nx=y\n"
    new, change = install.enable_in_kritarc(text)
    lines = new.splitlines()
    assert lines[:5] == ["AutoSaveInterval=0", "", "[General]", "foo=1", ""]
    assert lines[5:8] == ["[python]", "enable_other=true", "enable_smd_krita=true"]
    assert lines[-2:] == ["[Tail]", "x=y"]
    assert change == {"section_added": False, "previous": None}
    assert install.restore_kritarc(new, change) == text


def test_kritarc_new_section_and_existing_key():
    new, change = install.enable_in_kritarc("AutoSaveInterval=0\n")
    assert new == "AutoSaveInterval=0\n\n[python]\nenable_smd_krita=true\n" and change["section_added"]
    assert install.restore_kritarc(new, change) == "AutoSaveInterval=0\n"
    off = "[python]\nenable_smd_krita=false\n"
    new, change = install.enable_in_kritarc(off)
    assert new == "[python]\nenable_smd_krita=true\n" and change["previous"] == "false"
    assert install.restore_kritarc(new, change) == off


def run_install(tmp_path, *args):
    env = {"HOME": str(tmp_path), "PATH": "/usr/bin:/bin"}
    return subprocess.run(
        [sys.executable, str(REPO / "install.py"), *args], env=env, capture_output=True, text=True, timeout=120
    )


def test_krita_not_found_is_a_clear_error(tmp_path):
    code = install.main([], env={"PATH": str(tmp_path)}, system="Linux", home=tmp_path)
    assert code == 1
    res = subprocess.run(
        [sys.executable, str(REPO / "install.py")],
        env={"HOME": str(tmp_path), "PATH": str(tmp_path)},
        capture_output=True,
        text=True,
    )
    assert res.returncode == 1 and "Krita was not found" in res.stderr and res.stderr.count("\n") == 1


@pytest.mark.parametrize("dev", [False, True])
def test_install_then_uninstall_leaves_exactly_what_was_there(tmp_path, dev):
    pykrita = tmp_path / "pykrita"
    pykrita.mkdir()
    (pykrita / "other_plugin.desktop").write_text("x")
    kritarc = tmp_path / "kritarc"
    original = "AutoSaveInterval=0\n\n[python]\nenable_other_plugin=true\n"
    kritarc.write_text(original)
    flags = [
        "--pykrita",
        str(pykrita),
        "--kritarc",
        str(kritarc),
        "--krita-python",
        f"{sys.version_info.major}.{sys.version_info.minor}",
    ] + (["--dev"] if dev else [])
    # pyzmq is importable here, so no wheel is fetched: point the check at this interpreter's version
    before_repo = sorted(p.name for p in (REPO / "krita_plugin/smd_krita").iterdir())
    res = run_install(tmp_path, *flags, "--dry-run")
    assert res.returncode == 0, res.stderr
    assert "[dry-run]" in res.stdout and "enable_smd_krita=true" in res.stdout
    assert sorted(p.name for p in pykrita.iterdir()) == ["other_plugin.desktop"] and kritarc.read_text() == original

    res = install.Installer(pykrita, kritarc, dev=dev, dry_run=False, krita_python="3.11")
    res._ensure_zmq = lambda deps: None  # no network in unit tests; the real Krita test covers pyzmq
    res.install()
    pkg = pykrita / "smd_krita"
    assert (pykrita / "smd_krita.desktop").exists() and (pkg / "__init__.py").exists()
    assert pkg.is_symlink() == dev
    for f in install.VENDORED:
        assert (pkg / "vendor" / f).read_bytes() == (REPO / "smd_daemon" / f).read_bytes()
    assert "enable_smd_krita=true" in kritarc.read_text()
    again = run_install(tmp_path, *flags)  # running it again updates in place
    assert again.returncode == 0 and "updating it" in again.stdout, again.stderr
    assert (pkg / "vendor" / "protocol.py").exists() and pkg.is_symlink() == dev

    res = run_install(tmp_path, "--pykrita", str(pykrita), "--kritarc", str(kritarc), "--uninstall")
    assert res.returncode == 0, res.stderr
    assert sorted(p.name for p in pykrita.iterdir()) == ["other_plugin.desktop"]
    assert kritarc.read_text() == original
    assert sorted(p.name for p in (REPO / "krita_plugin/smd_krita").iterdir()) == before_repo


def test_dry_run_shows_the_pyzmq_wheel_for_krita_python(tmp_path):
    res = run_install(
        tmp_path,
        "--pykrita",
        str(tmp_path / "pk"),
        "--kritarc",
        str(tmp_path / "rc"),
        "--krita-python",
        "3.10",
        "--dry-run",
    )
    assert res.returncode == 0, res.stderr
    assert "pyzmq: installing a wheel for Python 3.10" in res.stdout
    assert "--python-version 3.10 --target" in res.stdout and str(tmp_path / "pk" / "smd_krita" / "deps") in res.stdout
    assert not (tmp_path / "pk").exists() and not (tmp_path / "rc").exists()


def test_uninstall_without_install_says_so(tmp_path):
    res = run_install(tmp_path, "--pykrita", str(tmp_path), "--uninstall")
    assert res.returncode == 1 and "nothing to uninstall" in res.stderr


def test_krita_python_version_from_the_pykrita_library(tmp_path):
    prefix = tmp_path / "usr"
    (prefix / "bin").mkdir(parents=True)
    exe = prefix / "bin" / "krita"
    exe.write_text("")
    lib = prefix / "lib" / "x86_64-linux-gnu" / "kritaplugins"
    lib.mkdir(parents=True)
    (lib / "kritapykrita.so").write_bytes(b"\x7fELF...libpython3.10.so.1.0\x00...")
    assert install.krita_python_version(exe, "Linux") == "3.10"
    win = tmp_path / "Krita (x64)" / "bin"
    win.mkdir(parents=True)
    (win / "krita.exe").write_text("")
    (win / "python310.dll").write_text("")
    assert install.krita_python_version(win / "krita.exe", "Windows") == "3.10"
    app = tmp_path / "krita.app" / "Contents/Frameworks/Python.framework/Versions/3.10"
    app.mkdir(parents=True)
    assert install.krita_python_version(tmp_path / "krita.app", "Darwin") == "3.10"


def test_quick_start_dry_run_sets_up_the_daemon_and_serves(tmp_path):
    venv = tmp_path / "venv"
    res = run_install(
        tmp_path,
        "--pykrita",
        str(tmp_path / "pk"),
        "--kritarc",
        str(tmp_path / "rc"),
        "--krita-python",
        "3.11",
        "--daemon-venv",
        str(venv),
        "--dry-run",
        "--serve",
        "--",
        "--model",
        "tiny",
    )
    assert res.returncode == 0, res.stderr
    assert f"-m venv {venv}" in res.stdout and f"pip install --disable-pip-version-check {REPO}" in res.stdout
    assert "starting the daemon on tcp://127.0.0.1:7555: stop it with Ctrl-C" in res.stdout
    assert res.stdout.rstrip().endswith(f"run {venv / 'bin' / 'smd-daemon'} serve --model tiny")
    assert not (tmp_path / "pk").exists() and not venv.exists()


def test_serve_defaults_to_the_checkouts_venv(tmp_path):
    res = run_install(
        tmp_path,
        "--pykrita",
        str(tmp_path / "pk"),
        "--kritarc",
        str(tmp_path / "rc"),
        "--krita-python",
        "3.11",
        "--dry-run",
        "--serve",
    )
    assert res.returncode == 0, res.stderr
    assert res.stdout.rstrip().endswith(f"run {REPO / '.venv' / 'bin' / 'smd-daemon'} serve")


def fake_venv(path: Path) -> Path:
    """A folder shaped like a daemon venv whose python and smd-daemon only record how they were called:
    creating a real one means installing torch, which unit tests cannot afford."""
    (path / "bin").mkdir(parents=True)
    for exe, say in (("python", "python"), ("smd-daemon", "daemon")):
        (path / "bin" / exe).write_text(f'#!/bin/sh\necho "{say} $*" >> "$(dirname "$0")/../calls.log"\n')
        (path / "bin" / exe).chmod(0o755)
    return path


def test_quick_start_again_updates_the_plugin_and_the_daemon_and_serves_again(tmp_path):
    venv = fake_venv(tmp_path / "venv")
    keys = tmp_path / "keys"
    keys.mkdir()
    pykrita = tmp_path / "data" / "krita" / "pykrita"
    kritarc = tmp_path / "kritarc"
    original = "AutoSaveInterval=0\n\n[General]\nx=1\n"
    kritarc.write_text(original)
    args = [
        "--pykrita",
        str(pykrita),
        "--kritarc",
        str(kritarc),
        "--krita-python",
        "3.11",
        "--daemon-venv",
        str(venv),
        "--serve",
        "--",
        "--model",
        "tiny",
        "--bind",
        "0.0.0.0:7600",
        "--keys",
        "keys",
    ]
    env = {"HOME": str(tmp_path), "PATH": "/usr/bin:/bin"}

    def run():
        return subprocess.run(
            [sys.executable, str(REPO / "install.py"), *args],
            env=env,
            cwd=tmp_path,
            capture_output=True,
            text=True,
            timeout=120,
        )

    first = run()
    assert first.returncode == 0, first.stderr
    (pykrita / "smd_krita" / "docker.py").write_text("# damaged")  # an old or broken copy
    (pykrita / "smd_krita" / "stale.py").write_text("")
    second = run()
    assert second.returncode == 0 and "updating it" in second.stdout, second.stderr
    assert (pykrita / "smd_krita" / "docker.py").read_bytes() == (
        REPO / "krita_plugin/smd_krita/docker.py"
    ).read_bytes()
    assert not (pykrita / "smd_krita" / "stale.py").exists()
    calls = (venv / "calls.log").read_text().splitlines()
    serve = "daemon serve --model tiny --bind 0.0.0.0:7600 --keys keys"
    assert calls == [f"python -m pip install --disable-pip-version-check {REPO}", serve] * 2

    managed = json.loads((pykrita / "smd_krita" / "managed_daemon.json").read_text())
    assert managed == {
        "command": [
            str(venv / "bin/smd-daemon"),
            "serve",
            "--model",
            "tiny",
            "--bind",
            "0.0.0.0:7600",
            "--keys",
            str(keys),
        ],
        "address": "tcp://127.0.0.1:7600",
        "log": str(tmp_path / "data/krita/smd_live/daemon.log"),
        "venv": str(venv),
    }
    assert (tmp_path / "data/krita/smd_live").is_dir()

    # Krita, on the plugin's behalf, stores its settings and the docker's place in kritarc.
    kritarc.write_text(
        kritarc.read_text() + "\n[smd_live]\naddress=127.0.0.1:7600\n\n"
        "[krita][DockWidget smd_live_docker]\nDockArea=2\n\n[krita][DockWidget other]\nDockArea=1\n"
    )
    gone = run_install(tmp_path, "--pykrita", str(pykrita), "--kritarc", str(kritarc), "--uninstall")
    assert gone.returncode == 0, gone.stderr
    assert kritarc.read_text() == original + "\n[krita][DockWidget other]\nDockArea=1\n"
    assert not (tmp_path / "data").exists()  # pykrita/, krita/ and data/ were made by install.py
    assert f"the daemon's virtual environment {venv} (" in gone.stdout and "delete that folder" in gone.stdout
    assert venv.exists()


def test_purge_removes_the_venv_only_if_install_created_it(tmp_path):
    for created in (True, False):
        pykrita = tmp_path / str(created) / "pykrita"
        venv = fake_venv(tmp_path / str(created) / "venv")
        inst = install.Installer(
            pykrita,
            tmp_path / str(created) / "kritarc",
            dev=False,
            dry_run=False,
            krita_python="3.11",
            out=open(os.devnull, "w"),
        )
        inst._ensure_zmq = lambda deps: None
        inst.install()
        inst.set_up_managed_daemon(venv, created, [])
        res = run_install(tmp_path, "--pykrita", str(pykrita), "--kritarc", str(inst.kritarc), "--uninstall", "--purge")
        assert res.returncode == 0, res.stderr
        assert venv.exists() != created, res.stdout
        assert ("remove the daemon's virtual environment" in res.stdout) == created
        assert not pykrita.exists()


def test_a_plugin_folder_not_installed_by_install_py_is_left_alone(tmp_path):
    pykrita = tmp_path / "pykrita"
    (pykrita / "smd_krita").mkdir(parents=True)
    (pykrita / "smd_krita" / "mine.py").write_text("x")
    res = run_install(tmp_path, "--pykrita", str(pykrita), "--kritarc", str(tmp_path / "rc"), "--krita-python", "3.11")
    assert res.returncode == 1 and "was not installed by install.py" in res.stderr and res.stderr.count("\n") == 1
    assert (pykrita / "smd_krita" / "mine.py").read_text() == "x"


@pytest.mark.parametrize(
    "args, needle",
    [
        (["--serve", "--dry-run", "--", "--bind", "http://127.0.0.1:7555"], "an address looks like 127.0.0.1:7555"),
        (["--purge"], "--purge goes with --uninstall"),
        (["--uninstall", "--serve"], "cannot be combined"),
    ],
)
def test_bad_options_are_one_line(tmp_path, args, needle):
    res = run_install(tmp_path, "--pykrita", str(tmp_path / "pk"), "--kritarc", str(tmp_path / "rc"), *args)
    assert res.returncode == 1 and needle in res.stderr and res.stderr.count("\n") == 1, res.stderr
    assert "Traceback" not in res.stderr and not (tmp_path / "pk").exists()

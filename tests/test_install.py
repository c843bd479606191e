"""install.py: folder logic per platform, kritarc editing, install/uninstall/dry-run on real files."""

from __future__ import annotations

import json
import os
import shutil
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
    flags = ["--pykrita", str(tmp_path / "pk"), "--kritarc", str(tmp_path / "rc"), "--krita-python", "3.11"]
    serve = ["--model", "tiny", "--bind", "127.0.0.1:7591"]
    res = run_install(tmp_path, *flags, "--daemon-venv", str(venv), "--dry-run", "--serve", "--", *serve)
    assert res.returncode == 0, res.stderr
    assert f"-m venv {venv}" in res.stdout and f"pip install --disable-pip-version-check {REPO}" in res.stdout
    # How to start it again names the options used, --model and --bind included.
    daemon = f"{venv / 'bin' / 'smd-daemon'} serve --model tiny --bind 127.0.0.1:7591"
    again = " ".join([*flags, "--daemon-venv", str(venv), "--serve", "--", *serve])
    said = res.stdout.split("starting the daemon on ")[1].splitlines()[0]
    assert said.startswith(f"tcp://127.0.0.1:7591: stop it with Ctrl-C; start it again with: {daemon}  (or: python3 ")
    assert said.endswith(f"install.py {again})"), said
    assert res.stdout.rstrip().endswith(f"run {daemon}")
    assert not (tmp_path / "pk").exists() and not venv.exists()


def test_quick_start_while_a_daemon_answers_there_changes_nothing(tmp_path):
    """Running the quick start again while its daemon runs: said at once, before reinstalling anything."""
    import socket

    from daemon_util import Daemon, connect

    daemon = Daemon()
    other = socket.socket()
    other.bind(("127.0.0.1", 0))
    other.listen()
    try:
        daemon.wait_serving()
        venv = fake_venv(tmp_path / "venv")
        for port, needle in (
            (daemon.port, "a daemon already answers"),
            (other.getsockname()[1], "another program already listens"),
        ):
            res = run_install(
                tmp_path,
                *("--pykrita", str(tmp_path / "pk"), "--kritarc", str(tmp_path / "rc"), "--krita-python", "3.11"),
                *("--daemon-venv", str(venv), "--serve", "--", "--model", "tiny", "--bind", f"127.0.0.1:{port}"),
            )
            assert res.returncode == 1 and res.stderr.count("\n") == 1, res.stderr
            assert f"{needle} at tcp://127.0.0.1:{port}: nothing was installed or started" in res.stderr
            assert f"--daemon-venv {venv} --serve -- --model tiny --bind 127.0.0.1:{port + 1}" in res.stderr, res.stderr
            assert not (tmp_path / "pk").exists() and not (venv / "calls.log").exists()
        connect(daemon.address, name="after the check").close()  # the daemon serves on, undisturbed
        assert daemon.proc.poll() is None
    finally:
        other.close()
        daemon.stop()
        daemon.close()


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
    (path / "pyvenv.cfg").write_text(f"home = {Path(sys.executable).parent}\n")
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
            "--watch-stdin",
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
    assert f"the daemon's virtual environment {venv} (" in gone.stdout and "not created by install.py" in gone.stdout
    assert venv.exists()


def fast_installer(root: Path):
    """An Installer whose venv steps are real but quick: ``python -m venv --without-pip`` and no
    ``pip install`` (which would fetch torch). Returns it and the commands it was asked to run."""
    inst = install.Installer(
        root / "pykrita", root / "kritarc", dev=False, dry_run=False, krita_python="3.11", out=open(os.devnull, "w")
    )
    inst._ensure_zmq = lambda deps: None
    calls = []

    def run(cmd, then=""):
        calls.append(cmd)
        if cmd[1:3] == ["-m", "venv"]:
            subprocess.run([*cmd[:3], "--without-pip", *cmd[3:]], check=True)

    inst._run = run
    return inst, calls


def purge(root: Path, *extra: str) -> subprocess.CompletedProcess:
    return run_install(
        root, "--pykrita", str(root / "pykrita"), "--kritarc", str(root / "kritarc"), "--uninstall", *extra
    )


def user_files(folder: Path) -> dict:
    return {str(p.relative_to(folder)): p.read_text() for p in sorted(folder.rglob("*")) if p.is_file()}


@pytest.mark.parametrize("given", [".", "Documents", "link-to-home", "notes.txt", "HOME"])
def test_a_daemon_venv_that_is_not_a_venv_is_refused_before_any_work(tmp_path, given):
    """The folder --daemon-venv names holds other things (the home folder itself, given as '.', as a
    link or as an absolute path): refused in one line, and nothing is installed."""
    home = tmp_path / "home"
    (home / "Documents").mkdir(parents=True)
    (home / "Documents" / "letter.txt").write_text("my letter")
    (home / "notes.txt").write_text("my notes")
    (home / "link-to-home").symlink_to(home)
    before = user_files(home)
    res = subprocess.run(
        [sys.executable, str(REPO / "install.py"), "--pykrita", str(home / "pk"), "--kritarc", str(home / "rc")]
        + ["--krita-python", "3.11", "--daemon-venv", str(home) if given == "HOME" else given],
        env={"HOME": str(home), "PATH": "/usr/bin:/bin"},
        cwd=home,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert res.returncode == 1 and res.stderr.count("\n") == 1, res.stderr
    assert ("not a folder" if given == "notes.txt" else "not a virtual environment") in res.stderr, res.stderr
    assert not (home / "pk").exists() and not (home / "rc").exists()
    assert user_files(home) == before


def test_a_home_recorded_by_an_older_install_py_is_never_purged(tmp_path):
    """The bug this pins: an older install.py recorded '--daemon-venv .' (the home folder) as a venv it
    created, because bin/python was missing there; --purge then deleted the home."""
    home = tmp_path / "home"
    inst, _ = fast_installer(home)
    inst.install()
    (home / "Documents").mkdir()
    (home / "Documents" / "letter.txt").write_text("my letter")
    record = json.loads((home / "pykrita" / install.MANIFEST).read_text())
    record.update(venv=str(home), venv_created=True)  # what the old install.py wrote
    (home / "pykrita" / install.MANIFEST).write_text(json.dumps(record))
    res = purge(home, "--purge")
    assert res.returncode == 0, res.stderr
    assert (home / "Documents" / "letter.txt").read_text() == "my letter"
    assert f"{home}, recorded as the daemon's folder by an older install.py," in res.stdout, res.stdout
    assert "not created by install.py" in res.stdout, res.stdout


def test_a_venv_install_py_made_is_purged_even_after_a_plain_uninstall(tmp_path):
    """Real runs. Offline, pip cannot install the daemon: the venv install.py created (a relative
    path, in a folder it also created) is already recorded. A plain --uninstall keeps that record,
    so a later --uninstall --purge still removes the venv and the folders made for it."""
    home = tmp_path / "home"
    home.mkdir()
    (home / "notes.txt").write_text("my notes")
    env = {"HOME": str(home), "PATH": "/usr/bin:/bin", "PIP_NO_INDEX": "1", "PIP_CONFIG_FILE": os.devnull}
    flags = ["--pykrita", str(home / "pk"), "--kritarc", str(home / "rc")]

    def run(*args):
        return subprocess.run(
            [sys.executable, str(REPO / "install.py"), *flags, *args],
            env=env,
            cwd=home,
            capture_output=True,
            text=True,
            timeout=300,
        )

    first = run("--krita-python", "3.11", "--daemon-venv", "envs/smd")
    venv = home / "envs" / "smd"
    assert first.returncode == 1 and f"failed: {venv / 'bin' / 'python'} -m pip install" in first.stderr, first
    assert install.venv_mark(venv) is not None
    record = json.loads((home / "pk" / install.MANIFEST).read_text())
    assert record["daemon_venvs"] == [
        {"path": str(venv), "id": install.venv_mark(venv), "parents": [str(home / "envs")]}
    ]

    plain = run("--uninstall")
    assert plain.returncode == 0 and venv.is_dir(), plain
    assert f"{venv} (" in plain.stdout and "'python3 install.py --uninstall --purge' removes it" in plain.stdout
    assert sorted(p.name for p in (home / "pk").iterdir()) == [install.MANIFEST]  # the plugin is gone
    again = run("--uninstall")
    assert again.returncode == 0 and "removed already" in again.stdout and venv.is_dir(), again

    purged = run("--uninstall", "--purge")
    assert purged.returncode == 0, purged
    assert f"remove the daemon's virtual environment {venv}" in purged.stdout
    assert sorted(p.name for p in home.iterdir()) == ["notes.txt"], purged.stdout  # envs/ and pk/ too


def test_purge_removes_only_the_venv_install_py_made(tmp_path):
    made = tmp_path / "made"
    inst, calls = fast_installer(made)
    inst.install()
    inst.set_up_daemon_venv(made / "venv")
    inst.set_up_managed_daemon(made / "venv", [])
    mark = install.venv_mark(made / "venv")
    assert mark and [c[1:3] for c in calls] == [["-m", "venv"], ["-m", "pip"]]
    inst.set_up_daemon_venv(made / "venv")  # again: updated in place, still the one it made
    assert install.venv_mark(made / "venv") == mark and [c[1:3] for c in calls[2:]] == [["-m", "pip"]]
    assert len(json.loads((made / "pykrita" / install.MANIFEST).read_text())["daemon_venvs"]) == 1

    used = tmp_path / "used"  # an existing venv, and an empty folder: used, never removed
    for name, folder in (("existing", fake_venv(used / "venv")), ("empty", used / "empty")):
        folder.mkdir(exist_ok=True)
        inst, _ = fast_installer(used / f"{name}-install")
        inst.install()
        inst.set_up_daemon_venv(folder)
        inst.set_up_managed_daemon(folder, [])
        assert install.venv_mark(folder) is None
        res = purge(used / f"{name}-install", "--purge")
        assert res.returncode == 0 and folder.is_dir(), res
        assert "not created by install.py" in res.stdout, res.stdout

    res = purge(made, "--purge")
    assert res.returncode == 0 and not (made / "venv").exists(), res
    assert not (made / "pykrita").exists()


def swap_for_a_link(venv: Path, elsewhere: Path) -> None:
    """The venv replaced by a link to another folder with the same pyvenv.cfg (and a user's file)."""
    elsewhere.mkdir()
    (elsewhere / "pyvenv.cfg").write_text((venv / "pyvenv.cfg").read_text())
    (elsewhere / "thesis.txt").write_text("mine")
    shutil.rmtree(venv)
    venv.symlink_to(elsewhere)


def swap_the_parent_for_a_link(venv: Path, elsewhere: Path) -> None:
    (elsewhere / venv.name).mkdir(parents=True)
    (elsewhere / venv.name / "pyvenv.cfg").write_text((venv / "pyvenv.cfg").read_text())
    (elsewhere / venv.name / "thesis.txt").write_text("mine")
    shutil.rmtree(venv.parent)
    venv.parent.symlink_to(elsewhere)


def make_anew(venv: Path, elsewhere: Path) -> None:
    """Deleted, and another venv made there (by hand: no mark) with the user's files."""
    shutil.rmtree(venv)
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True)
    (venv / "thesis.txt").write_text("mine")


def other_mark(venv: Path, elsewhere: Path) -> None:
    cfg = venv / "pyvenv.cfg"
    cfg.write_text(cfg.read_text().replace(install.venv_mark(venv), "0" * 32))
    (venv / "thesis.txt").write_text("mine")


@pytest.mark.parametrize("change", [swap_for_a_link, swap_the_parent_for_a_link, make_anew, other_mark])
def test_purge_leaves_a_venv_that_is_no_longer_the_one_install_py_made(tmp_path, change):
    root = tmp_path / "root"
    inst, _ = fast_installer(root)
    inst.install()
    venv = root / "envs" / "smd"
    inst.set_up_daemon_venv(venv)
    inst.set_up_managed_daemon(venv, [])
    change(venv, tmp_path / "elsewhere")
    res = purge(root, "--purge")
    assert res.returncode == 0, res.stderr
    assert f"{venv} (" in res.stdout and "stays" in res.stdout, res.stdout
    assert (venv / "thesis.txt").read_text() == "mine"
    assert not (root / "pykrita").exists()  # the plugin itself is gone


def test_a_record_copied_elsewhere_removes_nothing_of_the_original(tmp_path):
    """A pykrita folder copied with its install record (a copied or moved home): uninstalling the copy
    never reaches into the folder the record names."""
    inst, _ = fast_installer(tmp_path / "first")
    inst.install()
    subprocess.run(["cp", "-a", str(tmp_path / "first"), str(tmp_path / "copy")], check=True)
    res = purge(tmp_path / "copy", "--purge")
    assert res.returncode == 0, res.stderr
    assert f"leave {tmp_path / 'first' / 'pykrita' / 'smd_krita'}: install.py places nothing there" in res.stdout
    assert (tmp_path / "first" / "pykrita" / "smd_krita" / "__init__.py").is_file()
    assert (tmp_path / "first" / "pykrita" / install.MANIFEST).is_file()


def test_fresh_home_install_then_purge_leaves_the_home_empty(tmp_path):
    """In a fresh HOME install.py creates .local/share/krita/pykrita and .config (for kritarc):
    --uninstall --purge removes them all again."""
    home = tmp_path / "home"
    home.mkdir()
    res = run_install(home, "--krita-python", f"{sys.version_info.major}.{sys.version_info.minor}")
    assert res.returncode == 0, res.stderr
    assert (home / ".config" / "kritarc").is_file() and (home / ".local/share/krita/pykrita/smd_krita").is_dir()
    res = run_install(home, "--uninstall", "--purge")
    assert res.returncode == 0, res.stderr
    assert list(home.iterdir()) == [], res.stdout


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


def test_a_python_too_old_for_the_daemon_is_said_before_any_work(tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(install.sys, "version_info", (3, 8, 18))
    args = ["--pykrita", str(tmp_path / "pk"), "--kritarc", str(tmp_path / "rc"), "--krita-python", "3.11"]
    assert install.main([*args, "--daemon-venv", str(tmp_path / "venv")], home=tmp_path) == 1
    assert "the daemon needs Python 3.11 or newer" in capsys.readouterr().err
    assert not (tmp_path / "pk").exists() and not (tmp_path / "venv").exists()

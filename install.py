#!/usr/bin/env python3
"""Install the Krita plugin (and optionally the daemon) for the current user.

    python install.py                 copy the plugin into Krita's pykrita folder and enable it
                                      (run it again to update the plugin in place)
    python install.py --dev           symlink instead of copying (edit the checkout, restart Krita)
    python install.py --uninstall     remove exactly what earlier installs put there (the daemon's
                                      venv stays: its size is printed, and a record of it)
    python install.py --uninstall --purge
                                      ... and the daemon's venv too, if install.py created that folder
                                      (also after a plain --uninstall)
    python install.py --dry-run       print every step without changing anything
    python install.py --daemon-venv DIR
                                      also create (or update) a virtual environment with the daemon,
                                      which the docker can start and stop (managed_daemon.json);
                                      DIR is a new folder, an empty one or a venv, nothing else
    python install.py --serve [-- SERVE-ARGS]
                                      the quick start: plugin, daemon venv (.venv in this checkout
                                      unless --daemon-venv), then run 'smd-daemon serve SERVE-ARGS'

The plugin talks to the daemon through ``smd_daemon/protocol.py`` and
``smd_daemon/client.py``; they are vendored unchanged into the installed
package (``smd_krita/vendor/``) so plugin and daemon always speak the same
protocol. pyzmq must import in the Python that Krita embeds: when it does not,
a wheel matching that Python is installed into ``smd_krita/deps/``, which the
plugin puts on ``sys.path``.

Only the standard library is used, so any Python 3.8+ can run this file.
"""

from __future__ import annotations

import argparse
import glob
import importlib.util
import json
import os
import platform
import re
import shlex
import shutil
import socket
import subprocess
import sys
import uuid
from pathlib import Path

NAME = "smd_krita"
ROOT = Path(__file__).resolve().parent
PLUGIN_SRC = ROOT / "krita_plugin"
# The wire modules, from smd_daemon/, byte for byte (the client library and what it imports).
VENDORED = ("protocol.py", "scenestate.py", "events.py", "framecheck.py", "link.py", "upload.py", "client.py")
MANIFEST = NAME + ".install.json"  # beside the plugin in pykrita/: what we created, for --uninstall
MANAGED = "managed_daemon.json"  # in the plugin package: the local daemon the docker may start and stop
SETTINGS_GROUP = "smd_live"  # the plugin's settings in kritarc (written by the plugin through Krita)
DOCKER_ID = "smd_live_docker"  # Krita may remember the docker's place in a "DockWidget <id>" group
DATA_DIR = "smd_live"  # beside pykrita/ in Krita's data folder: the managed daemon's log
FLATPAK_ID = "org.kde.krita"
VENV_MARK = "smd-install-id"  # install.py's line in the pyvenv.cfg of a venv it created: its identity


def _load_protocol():
    """smd_daemon/protocol.py from this checkout, without importing the daemon package (stdlib only)."""
    spec = importlib.util.spec_from_file_location("smd_protocol", ROOT / "smd_daemon" / "protocol.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


class InstallError(Exception):
    """A problem the user can fix; printed as one line, exit status 1."""


# ---------------------------------------------------------------- locations


def krita_dirs(system: str, env: dict, home: Path) -> dict:
    """Where Krita keeps plugins (pykrita) and its config (kritarc) on ``system``.

    Linux prefers a Flatpak install when its data folder exists and no native
    Krita folder does, since Flatpak Krita cannot see ~/.local/share.
    """
    if system == "Windows":
        appdata = Path(env.get("APPDATA") or home / "AppData" / "Roaming")
        local = Path(env.get("LOCALAPPDATA") or home / "AppData" / "Local")
        return {"pykrita": appdata / "krita" / "pykrita", "kritarc": local / "kritarc", "kind": "windows"}
    if system == "Darwin":
        return {
            "pykrita": home / "Library" / "Application Support" / "krita" / "pykrita",
            "kritarc": home / "Library" / "Preferences" / "kritarc",
            "kind": "macos",
        }
    data = Path(env.get("XDG_DATA_HOME") or home / ".local" / "share")
    config = Path(env.get("XDG_CONFIG_HOME") or home / ".config")
    flatpak = home / ".var" / "app" / FLATPAK_ID
    if flatpak.is_dir() and not (data / "krita").is_dir():
        return {
            "pykrita": flatpak / "data" / "krita" / "pykrita",
            "kritarc": flatpak / "config" / "kritarc",
            "kind": "flatpak",
        }
    return {"pykrita": data / "krita" / "pykrita", "kritarc": config / "kritarc", "kind": "linux"}


def find_krita(system: str, env: dict, home: Path) -> Path | None:
    """The Krita program (or Flatpak folder), or None when Krita is not installed."""
    exe = shutil.which("krita", path=env.get("PATH"))
    if exe:
        return Path(exe)
    candidates = []
    if system == "Windows":
        for var in ("ProgramFiles", "ProgramFiles(x86)", "LOCALAPPDATA"):
            if env.get(var):
                candidates += [
                    Path(env[var]) / "Krita (x64)" / "bin" / "krita.exe",
                    Path(env[var]) / "Krita" / "bin" / "krita.exe",
                    Path(env[var]) / "Programs" / "Krita (x64)" / "bin" / "krita.exe",
                ]
    elif system == "Darwin":
        candidates += [Path("/Applications/krita.app"), home / "Applications" / "krita.app"]
    else:
        candidates += [home / ".var" / "app" / FLATPAK_ID, Path("/var/lib/flatpak/app") / FLATPAK_ID]
        candidates += sorted(Path(p) for p in glob.glob(str(home / "Applications" / "krita*.appimage")))
    for c in candidates:
        if c.exists():
            return c
    return None


def krita_python_version(krita: Path | None, system: str) -> str | None:
    """'3.11' for the Python that Krita embeds, found from its libraries; None if unknown."""
    if krita is None:
        return None
    patterns = []
    if system == "Windows":
        patterns.append(str(krita.parent / "python3*.dll"))
    elif system == "Darwin":
        patterns.append(str(krita / "Contents" / "Frameworks" / "Python.framework" / "Versions" / "3.*"))
    elif krita.is_file():
        # A native Linux build links libpython through its pykrita plugin.
        prefix = krita.resolve().parent.parent
        patterns += [
            str(prefix / "lib*" / "*" / "kritaplugins" / "kritapykrita.so"),
            str(prefix / "lib*" / "kritaplugins" / "kritapykrita.so"),
            str(prefix / "lib*" / "libpython3.*"),
        ]
    for pat in patterns:
        for hit in sorted(glob.glob(pat, recursive=True)):
            m = re.search(r"python3\.?(\d+)|^3\.(\d+)$", os.path.basename(hit))
            if m:
                return f"3.{m.group(1) or m.group(2)}"
            try:
                data = Path(hit).read_bytes()
            except OSError:
                continue
            m = re.search(rb"libpython3\.(\d+)", data)
            if m:
                return f"3.{int(m.group(1))}"
    return None


# ---------------------------------------------------------------- kritarc


def enable_in_kritarc(text: str, name: str = NAME) -> tuple[str, dict]:
    """Set ``[python] enable_<name>=true``, keeping every other line as it was.

    Returns the new text and what changed, so uninstall can undo exactly that.
    Keys before the first section header stay there (Krita reads its general
    keys only from that default group).
    """
    key = f"enable_{name}"
    lines = text.splitlines()
    start = next((i for i, l in enumerate(lines) if l.strip() == "[python]"), None)
    if start is None:
        out = list(lines)
        if out and out[-1].strip():
            out.append("")
        out += ["[python]", f"{key}=true"]
        return "\n".join(out) + "\n", {"section_added": True, "previous": None}
    end = next((i for i in range(start + 1, len(lines)) if lines[i].lstrip().startswith("[")), len(lines))
    for i in range(start + 1, end):
        k, sep, v = lines[i].partition("=")
        if sep and k.strip() == key:
            previous = v.strip()
            lines[i] = f"{key}=true"
            return "\n".join(lines) + "\n", {"section_added": False, "previous": previous}
    # Insert after the section's last key, before trailing blank lines.
    at = end
    while at > start + 1 and not lines[at - 1].strip():
        at -= 1
    lines.insert(at, f"{key}=true")
    return "\n".join(lines) + "\n", {"section_added": False, "previous": None}


def restore_kritarc(text: str, change: dict, name: str = NAME) -> str:
    """Undo what enable_in_kritarc changed (and nothing else)."""
    key = f"enable_{name}"
    lines = text.splitlines()
    start = next((i for i, l in enumerate(lines) if l.strip() == "[python]"), None)
    if start is None:
        return text
    end = next((i for i in range(start + 1, len(lines)) if lines[i].lstrip().startswith("[")), len(lines))
    for i in range(start + 1, end):
        k, sep, _ = lines[i].partition("=")
        if sep and k.strip() == key:
            if change.get("previous") is not None:
                lines[i] = f"{key}={change['previous']}"
            else:
                del lines[i]
                end -= 1
            break
    if change.get("section_added") and all(not l.strip() for l in lines[start + 1 : end]):
        del lines[start:end]
        while lines and not lines[-1].strip():
            lines.pop()
    return "\n".join(lines) + ("\n" if lines else "")


def remove_plugin_groups(text: str) -> tuple[str, list[str]]:
    """Drop the plugin's own settings group (``[smd_live]``) and Krita's memory of its docker
    (``[DockWidget smd_live_docker]``, possibly nested as ``[krita][DockWidget ...]``).

    Returns the new text and the headers removed; every other line stays as it was.
    """
    out, removed, skipping = [], [], False
    for line in text.splitlines():
        stripped = line.strip()
        if stripped.startswith("[") and stripped.endswith("]"):
            groups = stripped[1:-1].split("][")
            skipping = groups == [SETTINGS_GROUP] or groups[-1] == f"DockWidget {DOCKER_ID}"
            if skipping:
                removed.append(stripped)
        if not skipping:  # a removed group takes its keys and the blank lines after them
            out.append(line)
    if not removed:
        return text, []
    while out and not out[-1].strip():
        out.pop()
    return "\n".join(out) + ("\n" if out else ""), removed


def dir_size(path: Path) -> int:
    total = 0
    for dirpath, _, files in os.walk(path):
        for f in files:
            try:
                total += os.lstat(os.path.join(dirpath, f)).st_size
            except OSError:
                pass
    return total


def human_size(n: float) -> str:
    for unit in ("bytes", "KB", "MB", "GB"):
        if n < 1000 or unit == "GB":
            return f"{n:.0f} {unit}" if unit == "bytes" else f"{n:.1f} {unit}"
        n /= 1000
    return f"{n:.1f} GB"


PATH_FLAGS = ("--keys", "--config", "--model", "--lora", "--model-config", "--tiny-vae")


def absolute_paths(serve_args: list[str], cwd: Path) -> list[str]:
    """Serve arguments with local paths made absolute: the docker starts the daemon from elsewhere."""
    out = list(serve_args)
    for i, a in enumerate(out):
        flag, eq, value = a.partition("=")
        if eq and flag in PATH_FLAGS and (cwd / value).exists():
            out[i] = f"{flag}={(cwd / value).absolute()}"
        elif a in PATH_FLAGS and i + 1 < len(out) and (cwd / out[i + 1]).exists():
            out[i + 1] = str((cwd / out[i + 1]).absolute())
    return out


def daemon_address(serve_args: list[str]) -> str:
    """Where the plugin reaches a local daemon started with ``serve_args``: its --bind, with
    'any interface' turned into loopback. A malformed --bind is an InstallError (one sentence)."""
    protocol = _load_protocol()
    bind = protocol.DEFAULT_ADDRESS
    for i, a in enumerate(serve_args):
        if a == "--bind" and i + 1 < len(serve_args):
            bind = serve_args[i + 1]
        elif a.startswith("--bind="):
            bind = a.split("=", 1)[1]
    try:
        endpoint = protocol.normalize_address(bind)
    except ValueError as e:
        raise InstallError(f"--bind: {e}") from None
    for anywhere, loopback in (
        ("tcp://*:", "tcp://127.0.0.1:"),
        ("tcp://0.0.0.0:", "tcp://127.0.0.1:"),
        ("tcp://[::]:", "tcp://[::1]:"),
    ):
        if endpoint.startswith(anywhere):
            return loopback + endpoint[len(anywhere) :]
    return endpoint


ZMTP_SIGNATURE = b"\xff" + bytes(8) + b"\x7f"  # how every ZeroMQ peer opens a connection (ZMTP 3)


def who_answers(address: str, timeout: float = 2.0) -> str:
    """'' when nothing listens at a daemon address; 'daemon' when a ZeroMQ program (a daemon) answers
    there; 'program' when something else holds it."""
    if address.startswith("ipc://") and hasattr(socket, "AF_UNIX"):
        family, target = socket.AF_UNIX, address[len("ipc://") :]
    elif address.startswith("tcp://"):
        host, _, port = address[len("tcp://") :].rpartition(":")
        family = socket.AF_INET6 if host.startswith("[") else socket.AF_INET
        target = (host.strip("[]"), int(port))
    else:
        return ""
    with socket.socket(family, socket.SOCK_STREAM) as s:
        s.settimeout(timeout)
        try:
            s.connect(target)
        except OSError:
            return ""
        try:
            s.sendall(ZMTP_SIGNATURE)
            greeting = b""
            while len(greeting) < len(ZMTP_SIGNATURE):
                part = s.recv(len(ZMTP_SIGNATURE) - len(greeting))
                if not part:
                    break
                greeting += part
        except OSError:
            return "program"
    return "daemon" if greeting[:1] == b"\xff" and greeting[9:10] == b"\x7f" else "program"


def shell_line(words: list[str]) -> str:
    """A command as the user would type it in this system's shell."""
    if platform.system() == "Windows":
        return subprocess.list2cmdline(words)
    return " ".join(shlex.quote(w) for w in words)


def install_py_line(*words: str) -> str:
    """``python3 install.py WORDS``, with install.py's path as seen from here."""
    script = Path(__file__).resolve()
    try:
        shown = os.path.relpath(script)
    except ValueError:  # another drive (Windows)
        shown = str(script)
    if shown.startswith(".."):
        shown = str(script)
    return shell_line(["python3", shown, *words])


# ---------------------------------------------------------------- steps


class Installer:
    def __init__(
        self,
        pykrita: Path,
        kritarc: Path,
        *,
        dev: bool,
        dry_run: bool,
        krita_python: str | None,
        krita: Path | None = None,
        out=sys.stdout,
    ):
        self.krita = krita
        self.pykrita = pykrita
        self.kritarc = kritarc
        self.dev = dev
        self.dry = dry_run
        self.krita_python = krita_python
        self.out = out
        self.created: list[str] = []
        self.manifest: dict = {}  # what earlier installs recorded; kept across updates

    def say(self, msg: str) -> None:
        print(("[dry-run] " if self.dry else "") + msg, file=self.out)

    @property
    def package(self) -> Path:
        """The plugin package Krita loads (in --dev mode a link into this checkout)."""
        return (PLUGIN_SRC / NAME) if self.dev else (self.pykrita / NAME)

    def _place(self, src: Path, dst: Path) -> None:
        if self.dev:
            self.say(f"link {dst} -> {src}")
            if not self.dry:
                dst.symlink_to(src, target_is_directory=src.is_dir())
        else:
            self.say(f"copy {src} -> {dst}")
            if not self.dry:
                if src.is_dir():
                    shutil.copytree(
                        src, dst, ignore=shutil.ignore_patterns("__pycache__", "*.pyc", "vendor", "deps", MANAGED)
                    )
                else:
                    shutil.copy2(src, dst)
        self.created.append(str(dst))

    def _read_manifest(self) -> dict | None:
        path = self.pykrita / MANIFEST
        if not path.exists():
            return None
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
            if not isinstance(data, dict) or not isinstance(data.get("created"), list):
                raise ValueError("not an install record")
        except (ValueError, OSError) as e:
            raise InstallError(
                f"{path} cannot be read ({e}); remove the plugin by hand "
                f"({self.pykrita / NAME}, {self.pykrita / (NAME + '.desktop')}) and that file"
            ) from None
        return data

    def install(self, keep_managed: bool = True) -> None:
        """Place or update the plugin. ``keep_managed``: an update keeps the docker's local daemon
        (managed_daemon.json) as the last install set it up."""
        previous = self._read_manifest()
        installed = previous is not None and not previous.get("plugin_removed")
        if not installed and ((self.pykrita / NAME).exists() or (self.pykrita / (NAME + ".desktop")).exists()):
            raise InstallError(
                f"{self.pykrita / NAME} was not installed by install.py (there is no {MANIFEST}): "
                f"remove it by hand, then run install.py again"
            )
        for f in VENDORED:
            if not (ROOT / "smd_daemon" / f).is_file():
                raise InstallError(f"smd_daemon/{f} is missing from this checkout")
        self.say(f"plugin folder: {self.pykrita}")
        managed = None
        if installed:
            # Update in place: what the last install placed goes, what it recorded (the original
            # kritarc, folders it created, the daemon venvs) is kept for --uninstall, and so is
            # the docker's local daemon.
            self.say("the plugin is installed here already: updating it")
            self.manifest = previous
            managed_file = self.pykrita / NAME / MANAGED
            if keep_managed and managed_file.is_file():
                managed = managed_file.read_text(encoding="utf-8")
            self._remove_paths(previous["created"])
        elif previous is not None:  # a plain --uninstall kept the record of a daemon venv install.py made
            self.manifest = {k: previous[k] for k in ("created_dirs", "daemon_venvs", "venv") if k in previous}
        created_dirs = list(self.manifest.get("created_dirs", []))
        if not self.pykrita.is_dir():
            created_dirs += [d for d in missing_folders(self.pykrita) if d not in created_dirs]
            self.say(f"create {self.pykrita}")
            if not self.dry:
                self.pykrita.mkdir(parents=True)
        self.manifest["created_dirs"] = created_dirs
        self._place(PLUGIN_SRC / (NAME + ".desktop"), self.pykrita / (NAME + ".desktop"))
        self._place(PLUGIN_SRC / NAME, self.pykrita / NAME)
        # In --dev mode the package is a link into the checkout, so vendor/ lands
        # there (git-ignored) and holds links back to the daemon's sources.
        self._vendor(self.package / "vendor")
        self._ensure_zmq(self.package / "deps")
        if managed is not None:
            self.say(f"keep {self.package / MANAGED}: the docker's local daemon")
            if not self.dry:
                (self.package / MANAGED).write_text(managed, encoding="utf-8")
            if self.dev:
                self.created.append(str(self.package / MANAGED))
        change = self._enable()
        if "kritarc_change" not in self.manifest:
            self.manifest["kritarc_change"] = change
        self._write_manifest()

    def _remove_paths(self, paths: list[str]) -> None:
        for p in reversed(paths):
            path = Path(p)
            if not (path.exists() or path.is_symlink()):
                continue
            if not self._placed_by_install_py(path):
                self.say(f"leave {path}: install.py places nothing there (its record names another folder)")
                continue
            self.say(f"remove {path}")
            if self.dry:
                continue
            if path.is_dir() and not path.is_symlink():
                shutil.rmtree(path)
            else:
                path.unlink()

    def _placed_by_install_py(self, path: Path) -> bool:
        """Whether a recorded path is one install.py places: the plugin in this pykrita folder, the
        managed daemon's log folder beside it, or (--dev) what it adds to this checkout's package. A
        record carried to another place (a copied home) names paths elsewhere: those stay."""
        folder = os.path.realpath(path.parent)
        if folder == os.path.realpath(self.pykrita):
            return path.name in (NAME, NAME + ".desktop")
        if folder == os.path.realpath(self.pykrita.parent):
            return path.name == DATA_DIR
        return folder == os.path.realpath(PLUGIN_SRC / NAME) and path.name in ("vendor", "deps", MANAGED)

    def _vendor(self, vendor: Path) -> None:
        self.say(f"vendor {', '.join(VENDORED)} into {vendor}")
        if self.dry:
            return
        if vendor.exists() or vendor.is_symlink():
            shutil.rmtree(vendor) if vendor.is_dir() and not vendor.is_symlink() else vendor.unlink()
        vendor.mkdir()
        (vendor / "__init__.py").write_text('"""The wire modules from smd_daemon, unchanged."""\n')
        for f in VENDORED:
            src = ROOT / "smd_daemon" / f
            if self.dev:
                (vendor / f).symlink_to(src)
            else:
                shutil.copyfile(src, vendor / f)
        if self.dev:
            self.created.append(str(vendor))

    def _ensure_zmq(self, deps: Path) -> None:
        ver = self.krita_python
        if ver and zmq_importable(ver, self.krita):
            self.say(f"pyzmq: already importable by Python {ver}")
            return
        if ver is None:
            ver = f"{sys.version_info.major}.{sys.version_info.minor}"
            self.say(f"Krita's Python version not found; assuming {ver}")
        cmd = [
            sys.executable,
            "-m",
            "pip",
            "install",
            "--disable-pip-version-check",
            "--quiet",
            "--only-binary=:all:",
            "--python-version",
            ver,
            "--target",
            str(deps),
            "pyzmq",
        ]
        self.say(f"pyzmq: installing a wheel for Python {ver} into {deps}")
        self.say("run " + " ".join(cmd))
        if self.dry:
            return
        res = subprocess.run(cmd, capture_output=True, text=True)
        if res.returncode != 0:
            tail = (res.stderr or res.stdout).strip().splitlines()[-1:] or ["no output"]
            raise InstallError(f"could not install pyzmq for Python {ver}: {tail[0]}")
        if self.dev:
            self.created.append(str(deps))

    def _enable(self) -> dict:
        self.say(f"enable plugin in {self.kritarc} ([python] enable_{NAME}=true)")
        text = self.kritarc.read_text(encoding="utf-8") if self.kritarc.exists() else ""
        new, change = enable_in_kritarc(text)
        change["file_created"] = not self.kritarc.exists()
        created_dirs = self.manifest.setdefault("created_dirs", [])
        created_dirs += [d for d in missing_folders(self.kritarc.parent) if d not in created_dirs]
        if not self.dry:
            self.kritarc.parent.mkdir(parents=True, exist_ok=True)
            self.kritarc.write_text(new, encoding="utf-8")
        return change

    def _write_manifest(self, quiet: bool = False) -> None:
        self.manifest.update(name=NAME, dev=self.dev, created=self.created, kritarc=str(self.kritarc))
        if not quiet:
            self.say(f"record what was installed in {self.pykrita / MANIFEST}")
        if not self.dry:
            (self.pykrita / MANIFEST).write_text(json.dumps(self.manifest, indent=2) + "\n", encoding="utf-8")

    def set_up_daemon_venv(self, venv: Path) -> None:
        """A virtual environment with the daemon from this checkout: created in ``venv`` when that
        folder is missing (and recorded as install.py's, with a mark in its pyvenv.cfg) or empty,
        or the daemon updated in the venv already there. ``venv``: absolute, links resolved."""
        check_daemon_python()
        state = venv_folder(venv)
        python = venv_python(venv)
        if state == "missing":
            self._create_venv(venv)
        elif state == "empty" or not python.exists():
            mark = venv_mark(venv)
            self._run([sys.executable, "-m", "venv", str(venv)])
            if mark and not self.dry:  # venv rewrites pyvenv.cfg: keep install.py's mark
                add_venv_mark(venv, mark)
        else:
            self.say(f"daemon: {venv} is a virtual environment already: updating the daemon in it")
        pip = [str(python), "-m", "pip", "install", "--disable-pip-version-check", str(ROOT)]
        self._run(pip, then=f"the plugin is installed; run install.py again to retry the daemon's venv {venv}")

    def _create_venv(self, venv: Path) -> None:
        record = {"path": str(venv), "id": uuid.uuid4().hex, "parents": missing_folders(venv.parent)}
        # Recorded before the venv is filled, so --purge finds even a half-made one.
        self.say(f"create {venv} (recorded in {MANIFEST}: 'install.py --uninstall --purge' removes it)")
        if not self.dry:
            venv.mkdir(parents=True)  # fails if it appeared meanwhile: only a folder made here is recorded
            self.manifest.setdefault("daemon_venvs", []).append(record)
            self._write_manifest(quiet=True)
        try:
            self._run([sys.executable, "-m", "venv", str(venv)])
        except InstallError:
            self.say(f"remove {venv} (made by install.py a moment ago)")
            shutil.rmtree(venv)
            remove_empty_folders(record["parents"])
            self.manifest["daemon_venvs"].remove(record)
            self._write_manifest(quiet=True)
            raise
        if not self.dry:
            add_venv_mark(venv, record["id"])

    def _run(self, cmd: list[str], then: str = "") -> None:
        self.say("run " + " ".join(cmd))
        self.out.flush()  # before the command's own output, also when stdout is a file
        if not self.dry and subprocess.run(cmd).returncode != 0:
            raise InstallError(f"failed: {' '.join(cmd)}" + (f" ({then})" if then else ""))

    def set_up_managed_daemon(self, venv: Path, serve_args: list[str]) -> Path:
        """Contract with the docker: managed_daemon.json says how to start the local daemon, where it
        listens and where it logs. Returns the log file."""
        address = daemon_address(serve_args)
        data_dir = self.pykrita.parent / DATA_DIR
        if not data_dir.exists() and str(data_dir) not in self.manifest.get("created_dirs", []):
            self.manifest.setdefault("created_dirs", []).append(str(data_dir))
        log = data_dir / "daemon.log"
        # --watch-stdin: the docker holds the other end of the daemon's stdin, so the daemon ends
        # with Krita however Krita ends.
        command = [str(daemon_executable(venv)), "serve", "--watch-stdin", *absolute_paths(serve_args, Path.cwd())]
        managed = {"command": command, "address": address, "log": str(log), "venv": str(venv)}
        path = self.package / MANAGED
        self.say(f"write {path}: the docker can start and stop this daemon ({address})")
        if not self.dry:
            data_dir.mkdir(parents=True, exist_ok=True)
            path.write_text(json.dumps(managed, indent=2) + "\n", encoding="utf-8")
        if self.dev and str(path) not in self.created:  # inside the checkout's package (git-ignored)
            self.created.append(str(path))
        self.manifest["venv"] = str(venv)
        self._write_manifest()
        return log

    def uninstall(self, purge: bool = False) -> None:
        manifest = self.pykrita / MANIFEST
        data = self._read_manifest()
        if data is None:
            raise InstallError(f"nothing to uninstall: {manifest} not found")
        removed_now = not data.get("plugin_removed")
        if not removed_now:
            self.say("the plugin was removed already; what is left is the daemon's virtual environment")
        else:
            self._remove_paths(data["created"])
            self._restore_kritarc(data)
        kept = self._venvs_after_uninstall(data, purge)
        if kept:  # the plugin's files are gone; the record stays so that --purge can still remove them
            record = {"name": NAME, "plugin_removed": True, "created": [], "daemon_venvs": kept}
            record["created_dirs"] = [d for d in data.get("created_dirs", []) if Path(d).is_dir()]
            self.say(f"keep {manifest}: the record of what 'python3 install.py --uninstall --purge' still removes")
            if not self.dry:
                manifest.write_text(json.dumps(record, indent=2) + "\n", encoding="utf-8")
        else:
            self.say(f"remove {manifest}")
            if not self.dry:
                manifest.unlink()
        created_dirs = data.get("created_dirs", [])
        self._remove_paths([d for d in created_dirs if Path(d).name == DATA_DIR])  # the managed daemon's log
        remove_empty_folders(created_dirs, self.say, self.dry)
        if removed_now:
            self.say("done (quit Krita before uninstalling, or it writes its settings back when it quits)")
        else:
            self.say("done")

    def _restore_kritarc(self, data: dict) -> None:
        kritarc = Path(data["kritarc"])
        change = data.get("kritarc_change", {})
        if not kritarc.exists():
            return
        self.say(f"restore {kritarc} (enable_{NAME}; the plugin's [{SETTINGS_GROUP}] settings)")
        if not self.dry:
            new = restore_kritarc(kritarc.read_text(encoding="utf-8"), change)
            new, _ = remove_plugin_groups(new)
            if change.get("file_created") and not new.strip():
                kritarc.unlink()
            else:
                kritarc.write_text(new, encoding="utf-8")

    def _venvs_after_uninstall(self, data: dict, purge: bool) -> list[dict]:
        """Remove (with ``purge``) or describe the daemon venvs; returns the records of the venvs
        install.py created that are still there and may still be removed by a later --purge."""
        records = [r for r in data.get("daemon_venvs", []) if isinstance(r, dict) and isinstance(r.get("path"), str)]
        kept = []
        for record in records:
            venv = Path(record["path"])
            if not venv.is_dir():
                continue
            size = human_size(dir_size(venv))
            why = why_not_removable(record)
            if why:
                self.say(f"the daemon's virtual environment {venv} ({size}) stays: {why}; delete it yourself")
            elif purge:
                self.say(f"remove the daemon's virtual environment {venv} ({size})")
                if not self.dry:
                    shutil.rmtree(venv)
                    remove_empty_folders(record.get("parents", []), self.say)
            else:
                self.say(
                    f"the daemon's virtual environment {venv} ({size}) is still there: "
                    f"'python3 install.py --uninstall --purge' removes it"
                )
                kept.append(record)
        used = data.get("venv")
        if used and used not in [r["path"] for r in records] and Path(used).is_dir():
            # Used, never created, by install.py (an older install.py recorded "venv_created"
            # without a mark in pyvenv.cfg, so that venv cannot be told from the user's own).
            if (Path(used) / "pyvenv.cfg").is_file():
                what = f"the daemon's virtual environment {used} ({human_size(dir_size(Path(used)))})"
            else:  # an older install.py took any folder, a home folder included
                what = f"{used}, recorded as the daemon's folder by an older install.py,"
            self.say(
                f"{what} was not created by install.py (or by one too old to mark it): it stays; "
                f"delete it yourself if you no longer need it"
            )
        elif purge and not records:
            self.say("--purge: install.py created no daemon venv here")
        return kept


def missing_folders(path: Path) -> list[str]:
    """``path`` and its ancestors that do not exist yet, deepest first."""
    return [str(d) for d in [path, *path.parents] if not (d.exists() or d.is_symlink())]


def remove_empty_folders(paths: list[str], say=lambda msg: None, dry: bool = False) -> None:
    """Remove each folder (deepest first) that is empty: folders install.py created."""
    for d in sorted(paths, key=len, reverse=True):
        path = Path(d)
        if path.is_dir() and not path.is_symlink() and not any(path.iterdir()):
            say(f"remove {path} (created by install.py, now empty)")
            if not dry:
                path.rmdir()


def zmq_importable(version: str, krita: Path | None = None) -> bool:
    """Whether the system Python that a native Linux Krita embeds imports zmq.

    That Python lives beside Krita (e.g. /usr/bin/python3.11 for /usr/bin/krita);
    bundled builds (Windows, macOS, AppImage, Flatpak) need the wheel.
    """
    if platform.system() != "Linux" or krita is None or not krita.is_file():
        return False
    exe = krita.resolve().parent / f"python{version}"
    if not exe.exists():
        return False
    try:
        return subprocess.run([str(exe), "-c", "import zmq"], capture_output=True, timeout=30).returncode == 0
    except (OSError, subprocess.TimeoutExpired):
        return False


def daemon_executable(venv: Path) -> Path:
    return venv / ("Scripts/smd-daemon.exe" if platform.system() == "Windows" else "bin/smd-daemon")


def check_daemon_python() -> None:
    """The daemon's venv is made with this Python: it must be one the daemon runs on."""
    if sys.version_info < (3, 11):
        raise InstallError(
            f"the daemon needs Python 3.11 or newer; this is {platform.python_version()}: "
            f"run install.py with a newer python3"
        )


def venv_python(venv: Path) -> Path:
    return venv / ("Scripts/python.exe" if platform.system() == "Windows" else "bin/python")


def venv_folder(venv: Path) -> str:
    """What --daemon-venv names: 'missing' (install.py creates it), 'empty' or 'venv' (a folder with a
    pyvenv.cfg). Anything else is an InstallError: a venv there would mix with what is already there,
    and the folder could never be told apart from the user's own files again."""
    if not (venv.exists() or venv.is_symlink()):
        return "missing"
    if not venv.is_dir():
        raise InstallError(f"--daemon-venv {venv} is not a folder (a file or a broken link is there)")
    if (venv / "pyvenv.cfg").is_file():
        return "venv"
    if any(venv.iterdir()):
        raise InstallError(
            f"--daemon-venv {venv} is a folder with other things in it, not a virtual environment: "
            f"name a new folder (install.py creates it) or an existing venv"
        )
    return "empty"


def venv_mark(venv: Path) -> str | None:
    """The identity install.py wrote into the pyvenv.cfg of a venv it created (None: no such mark)."""
    cfg = venv / "pyvenv.cfg"
    if cfg.is_symlink() or not cfg.is_file():
        return None
    try:
        text = cfg.read_text(encoding="utf-8", errors="replace")
    except OSError:
        return None
    for line in text.splitlines():
        key, sep, value = line.partition("=")
        if sep and key.strip() == VENV_MARK:
            return value.strip() or None
    return None


def add_venv_mark(venv: Path, mark: str) -> None:
    cfg = venv / "pyvenv.cfg"
    text = cfg.read_text(encoding="utf-8")
    cfg.write_text(
        text + ("" if text.endswith("\n") or not text else "\n") + f"{VENV_MARK} = {mark}\n", encoding="utf-8"
    )


def why_not_removable(record: dict) -> str:
    """'' when the folder in an install record is still the venv install.py created, else why not."""
    path = Path(record["path"])
    if path.is_symlink() or os.path.realpath(path) != str(path):
        return "it is a symbolic link now, or lies under one"
    if not path.is_dir():
        return "it is not a folder now"
    mark = venv_mark(path)
    if mark is None:
        return "its pyvenv.cfg no longer carries the mark install.py wrote when it created it"
    if mark != record.get("id"):
        return "its pyvenv.cfg carries another install's mark"
    return ""


def without_bind(serve_args: list[str]) -> list[str]:
    out, skip = [], False
    for a in serve_args:
        if skip:
            skip = False
        elif a == "--bind":
            skip = True
        elif not a.startswith("--bind="):
            out.append(a)
    return out


def next_port(address: str) -> str:
    """The address with the next port (for a hint), as --bind takes it."""
    host, _, port = address[len("tcp://") :].rpartition(":")
    return f"{host}:{int(port) + 1}" if port.isdigit() else "127.0.0.1:7556"


def run_daemon(cmd: list[str]) -> int:
    """Run the daemon in the foreground; Ctrl-C reaches it too and it shuts down cleanly."""
    proc = subprocess.Popen(cmd)
    while True:
        try:
            return proc.wait()
        except KeyboardInterrupt:
            continue  # the daemon got the same SIGINT; wait for its clean exit


def main(
    argv: list[str] | None = None, env: dict | None = None, system: str | None = None, home: Path | None = None
) -> int:
    p = argparse.ArgumentParser(description="Install the SMD Live plugin into Krita.")
    p.add_argument("--pykrita", type=Path, help="Krita's pykrita folder (default: found for this platform)")
    p.add_argument("--kritarc", type=Path, help="Krita's kritarc file (default: found for this platform)")
    p.add_argument("--dev", action="store_true", help="symlink the plugin from this checkout instead of copying")
    p.add_argument("--uninstall", action="store_true", help="remove what an earlier install created")
    p.add_argument("--dry-run", action="store_true", help="print what would be done, change nothing")
    p.add_argument("--krita-python", metavar="X.Y", help="Python version Krita embeds (default: detected)")
    p.add_argument("--daemon-venv", type=Path, metavar="DIR", help="also create a venv with the daemon in DIR")
    p.add_argument(
        "--serve", action="store_true", help="then start the daemon (arguments after '--' go to 'smd-daemon serve')"
    )
    p.add_argument("--purge", action="store_true", help="with --uninstall: also remove the daemon venv it created")
    argv = sys.argv[1:] if argv is None else list(argv)
    serve_args = argv[argv.index("--") + 1 :] if "--" in argv else []
    args = p.parse_args(argv[: argv.index("--")] if "--" in argv else argv)
    if args.serve and args.daemon_venv is None:
        args.daemon_venv = ROOT / ".venv"
    env = dict(os.environ) if env is None else env
    system = system or platform.system()
    home = home or Path(env.get("HOME") or env.get("USERPROFILE") or Path.home())
    try:
        if args.krita_python and not re.fullmatch(r"3\.\d+", args.krita_python):
            raise InstallError(f"--krita-python must look like 3.11, not {args.krita_python!r}")
        if args.purge and not args.uninstall:
            raise InstallError("--purge goes with --uninstall (it also removes the daemon's venv)")
        if args.uninstall and (args.serve or args.daemon_venv):
            raise InstallError("--uninstall cannot be combined with --serve or --daemon-venv")
        address = daemon_address(serve_args) if args.daemon_venv else None  # a bad --bind fails before any work
        # Links resolved: the folder checked is the folder recorded, and the one --purge may remove.
        venv = Path(os.path.realpath(args.daemon_venv)) if args.daemon_venv else None
        if venv is not None:  # refused before any work: an old Python, a folder that is not a venv
            check_daemon_python()
            venv_folder(venv)
        if args.serve and not args.dry_run:
            who = who_answers(address)
            if who:
                holder = "a daemon already answers" if who == "daemon" else "another program already listens"
                options = argv[: argv.index("--")] if "--" in argv else argv
                elsewhere = install_py_line(*options, "--", *without_bind(serve_args), "--bind", next_port(address))
                raise InstallError(
                    f"{holder} at {address}: nothing was installed or started. Stop it first (Ctrl-C in its "
                    f"terminal, or Stop in Krita's docker), or serve on another port: {elsewhere}"
                )
        dirs = krita_dirs(system, env, home)
        krita = find_krita(system, env, home)
        if args.pykrita is None and krita is None and not args.uninstall:
            raise InstallError(
                "Krita was not found (not on PATH, no known install folder); install Krita "
                "or give its plugin folder with --pykrita DIR"
            )
        pykrita = args.pykrita or dirs["pykrita"]
        kritarc = args.kritarc or dirs["kritarc"]
        if krita is not None and not args.uninstall:
            print(f"Krita: {krita}")
        inst = Installer(
            pykrita.absolute(),
            kritarc.absolute(),
            dev=args.dev,
            dry_run=args.dry_run,
            krita_python=args.krita_python or krita_python_version(krita, system),
            krita=krita,
        )
        if args.uninstall:
            inst.uninstall(purge=args.purge)
            return 0
        inst.install(keep_managed=venv is None)
        if venv is not None:
            inst.set_up_daemon_venv(venv)
            log = inst.set_up_managed_daemon(venv, serve_args)
            inst.say(f"in Krita, the SMD Live docker can start and stop this daemon (log: {log})")
        inst.say("done: restart Krita, then open Settings > Dockers > SMD Live")
        if venv is not None and not args.serve:
            by_hand = shell_line([str(daemon_executable(venv)), "serve", *serve_args])
            inst.say(f"daemon: start it in a terminal with: {by_hand}")
        if args.serve:
            cmd = [str(daemon_executable(venv)), "serve", *serve_args]
            again = install_py_line(*[a for a in argv if a != "--dry-run"])
            inst.say(
                f"starting the daemon on {address}: stop it with Ctrl-C; start it again with: "
                f"{shell_line(cmd)}  (or: {again})"
            )
            inst.say(f"run {' '.join(cmd)}")
            if not args.dry_run:
                sys.stdout.flush()
                return run_daemon(cmd)
    except InstallError as e:
        print(f"install.py: error: {e}", file=sys.stderr)
        return 1
    except OSError as e:
        print(f"install.py: error: {e}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

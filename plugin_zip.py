"""The release zip (``install.py --zip``): the plugin as Krita's *Import Python Plugin from File...* takes it.

At the top of the zip: ``smd_krita.desktop`` and the ``smd_krita/`` package, with the wire modules in
``smd_krita/vendor/`` (as install.py vendors them) and pyzmq for every Krita an artist may run in
``smd_krita/deps/<platform>-<python>/`` (each a wheel from PyPI, unpacked as pip would). The plugin puts
the folder matching its interpreter first on ``sys.path`` (``smd_krita/zmq_folder.py``).

Reproducible: pinned pyzmq versions, every wheel checked against ``plugin_wheels.sha256`` (the lock,
beside this file), and the zip written with fixed times, modes and order, so two builds from the same
checkout are byte for byte the same. The SHA-256 list of the wheels goes inside the zip
(``smd_krita/deps/wheels.sha256``) and beside it (``dist/smd_live-<version>.wheels.sha256``).

Only the standard library (and pip, run as ``python -m pip``), so any Python 3.8+ can run it.
"""

from __future__ import annotations

import hashlib
import importlib.util
import os
import re
import subprocess
import sys
import zipfile
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

ROOT = Path(__file__).resolve().parent
LOCK = ROOT / "plugin_wheels.sha256"
ZIP_PREFIX = "smd_live"
PYZMQ = "27.3.0"  # as the daemon pins it
PYZMQ_PY38 = "26.4.0"  # pyzmq 27 has no wheels for Python 3.8 (Krita 5.1 on Windows and the AppImage)
PYTHONS = ((3, 8), (3, 9), (3, 10), (3, 11), (3, 12))  # (3, 12): the abi3 wheel, for every Python from 3.12 on
# The platform part of a deps folder name (as the plugin computes it) -> pip's --platform tags, best first.
# Linux wheels are manylinux: 2_28 (glibc 2.28) for pyzmq 27 on 3.10 and later, 2_17 or older before.
PLATFORMS = {
    "win_amd64": ("win_amd64",),
    "macosx_universal2": ("macosx_10_15_universal2", "macosx_10_9_universal2"),
    "linux_x86_64": tuple(f"manylinux{t}_x86_64" for t in ("_2_28", "_2_17", "2014", "_2_12", "2010")),
    "linux_aarch64": tuple(f"manylinux{t}_aarch64" for t in ("_2_28", "_2_17", "2014")),
}
ZIP_TIME = (1980, 1, 1, 0, 0, 0)  # the zip format's epoch: no build time in the bytes
DOWNLOADS_AT_ONCE = 4


class ZipError(Exception):
    """A build problem, said in one line (install.py prints it and exits 1)."""


def plugin_module(name: str):
    """A module of the plugin package, loaded from its file (the plugin's own names for the folders)."""
    spec = importlib.util.spec_from_file_location(f"smd_plugin_{name}", ROOT / "krita_plugin" / "smd_krita" / name)
    if spec is None or spec.loader is None:
        raise ZipError(f"krita_plugin/smd_krita/{name} is missing from this checkout")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def project_version(pyproject: Path = ROOT / "pyproject.toml") -> str:
    text = pyproject.read_text(encoding="utf-8")
    project = text.split("[project]", 1)[-1]
    m = re.search(r'^version\s*=\s*"([^"]+)"', project, re.M)
    if not m:
        raise ZipError(f"no version in the [project] table of {pyproject}")
    return m.group(1)


def pyzmq_for(python: tuple) -> str:
    return PYZMQ_PY38 if python < (3, 9) else PYZMQ


def targets(platforms=None) -> list[dict]:
    """Every (platform, Python) the zip carries: its deps folder and how pip finds its wheel."""
    names = plugin_module("zmq_folder.py")
    out = []
    for plat in platforms or PLATFORMS:
        for python in PYTHONS:
            tag = names.python_tag(python)
            out.append(
                {
                    "folder": f"{plat}-{tag}",
                    "python": "%d.%d" % python,
                    "abi": tag if tag == "abi3" else f"cp{python[0]}{python[1]}",
                    "platforms": PLATFORMS[plat],
                    "pyzmq": pyzmq_for(python),
                }
            )
    return out


def pip_download_command(target: dict, dest: Path) -> list[str]:
    cmd = [sys.executable, "-m", "pip", "download", "--disable-pip-version-check", "--quiet"]
    cmd += ["--only-binary", ":all:", "--no-deps", "--implementation", "cp"]
    for p in target["platforms"]:
        cmd += ["--platform", p]
    cmd += ["--python-version", target["python"], "--abi", target["abi"]]
    return [*cmd, "--dest", str(dest), f"pyzmq=={target['pyzmq']}"]


def cached_wheel(folder: Path, version: str) -> Path | None:
    wheels = sorted(folder.glob(f"pyzmq-{version}-*.whl")) if folder.is_dir() else []
    return wheels[0] if len(wheels) == 1 else None


def fetch(target: dict, cache: Path) -> Path:
    """The target's wheel: from the cache (one folder per target), else downloaded there by pip."""
    folder = cache / target["folder"]
    wheel = cached_wheel(folder, target["pyzmq"])
    if wheel is not None:
        return wheel
    for stale in folder.glob("*.whl") if folder.is_dir() else []:
        stale.unlink()
    folder.mkdir(parents=True, exist_ok=True)
    try:
        res = subprocess.run(pip_download_command(target, folder), capture_output=True, text=True, timeout=600)
    except (OSError, subprocess.TimeoutExpired) as e:
        res = subprocess.CompletedProcess([], 1, "", str(e))
    wheel = cached_wheel(folder, target["pyzmq"])
    if res.returncode != 0 or wheel is None:
        lines = [line for line in (res.stderr or res.stdout or "").splitlines() if line.strip()]
        said = next((line for line in reversed(lines) if "ERROR" in line), lines[-1] if lines else "no output")
        raise ZipError(
            f"could not download pyzmq {target['pyzmq']} for {target['folder']} (Python {target['python']}) "
            f"from PyPI with pip: {said.strip()}"
        )
    return wheel


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def read_lock(path: Path = LOCK) -> dict:
    """{wheel file name: sha256} from a list in ``sha256sum`` format."""
    out = {}
    for line in path.read_text(encoding="utf-8").splitlines():
        if line.strip() and not line.startswith("#"):
            digest, _, name = line.partition("  ")
            out[name.strip()] = digest.strip()
    return out


def hash_list(wheels: dict) -> str:
    """``sha256  wheel`` lines, sorted by wheel name (``sha256sum -c`` reads it in the wheel cache)."""
    return "".join(f"{digest}  {name}\n" for name, digest in sorted(wheels.items()))


def check_against_lock(hashes: dict, lock: Path) -> None:
    """Every wheel is the one pinned in the lock; without a lock, the first build writes it."""
    if not lock.exists():
        lock.write_text(hash_list(hashes), encoding="utf-8")
        return
    pinned = read_lock(lock)
    for name, digest in sorted(hashes.items()):
        if name not in pinned:
            raise ZipError(f"{name} is not pinned in {lock.name}: delete that file to pin the wheels anew")
        if pinned[name] != digest:
            raise ZipError(f"{name} has SHA-256 {digest}, but {lock.name} pins {pinned[name]}: not building")


def wheel_entries(wheel: Path, prefix: str) -> dict:
    """The wheel's files under ``prefix``, as pip would unpack them (data, no directories)."""
    out = {}
    with zipfile.ZipFile(wheel) as z:
        for info in z.infolist():
            if not info.is_dir():
                out[prefix + info.filename] = z.read(info)
    return out


def _info(name: str) -> zipfile.ZipInfo:
    info = zipfile.ZipInfo(name, ZIP_TIME)
    info.create_system = 3  # Unix attributes, on every build machine
    if name.endswith("/"):
        info.external_attr = (0o40755 << 16) | 0x10
    else:
        info.external_attr = 0o100644 << 16
        info.compress_type = zipfile.ZIP_DEFLATED
    return info


def write_zip(path: Path, files: dict) -> None:
    """``files`` (name -> bytes) and every folder above them, sorted, with fixed times and modes.
    Krita's importer finds the package by its folder entry (``smd_krita/``), so folders are listed."""
    names = set(files)
    for name in files:
        parts = name.split("/")[:-1]
        names.update("/".join(parts[: i + 1]) + "/" for i in range(len(parts)))
    tmp = path.with_name(path.name + ".part")
    with zipfile.ZipFile(tmp, "w") as z:
        for name in sorted(names):
            z.writestr(_info(name), b"" if name.endswith("/") else files[name], compresslevel=9)
    os.replace(tmp, path)


def build(
    plugin_files: dict, dist: Path, cache: Path, version: str | None = None, lock: Path = LOCK, platforms=None
) -> dict:
    """Write ``dist/smd_live-<version>.zip`` and its wheel hash list beside it.

    ``plugin_files``: name in the zip -> bytes, the plugin as install.py would place it (desktop file,
    package, vendor/). ``platforms``: a part of PLATFORMS (tests on one machine); the release has all.
    Returns the paths written and what went in."""
    version = version or project_version()
    wanted = targets(platforms)
    with ThreadPoolExecutor(DOWNLOADS_AT_ONCE) as pool:
        wheels = list(pool.map(lambda t: fetch(t, cache), wanted))
    hashes = {w.name: sha256(w) for w in wheels}
    check_against_lock(hashes, lock)
    files = dict(plugin_files)
    for target, wheel in zip(wanted, wheels):
        files.update(wheel_entries(wheel, f"smd_krita/deps/{target['folder']}/"))
    listing = hash_list(hashes).encode()
    files["smd_krita/deps/wheels.sha256"] = listing
    dist.mkdir(parents=True, exist_ok=True)
    out = dist / f"{ZIP_PREFIX}-{version}.zip"
    write_zip(out, files)
    beside = dist / f"{ZIP_PREFIX}-{version}.wheels.sha256"
    beside.write_bytes(listing)
    return {"zip": out, "hashes": beside, "folders": [t["folder"] for t in wanted], "wheels": hashes}

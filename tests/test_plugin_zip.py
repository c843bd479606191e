"""The release zip (install.py --zip) and the vendored pyzmq folder the plugin picks at import."""

from __future__ import annotations

import hashlib
import importlib
import os
import platform
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

import install
import plugin_zip

REPO = Path(__file__).resolve().parents[1]
zmq_folder = plugin_zip.plugin_module("zmq_folder.py")
THIS_PLATFORM = zmq_folder.platform_tag(sys.platform, platform.machine(), sys.maxsize > 2**32)
CACHE = REPO / "build" / "wheels"  # what `install.py --zip` caches; CI fills it from PyPI once

# Each Krita an artist may run: (sys.platform, machine, Python) -> the folder it loads.
KRITAS = {
    "5.1 Windows": ("win32", "AMD64", (3, 8), "win_amd64-cp38"),
    "5.1 macOS Apple silicon": ("darwin", "arm64", (3, 9), "macosx_universal2-cp39"),
    "5.1 AppImage": ("linux", "x86_64", (3, 8), "linux_x86_64-cp38"),
    "5.1 Debian 12": ("linux", "x86_64", (3, 11), "linux_x86_64-cp311"),
    "5.2 Windows": ("win32", "AMD64", (3, 10), "win_amd64-cp310"),
    "5.2 macOS Intel": ("darwin", "x86_64", (3, 10), "macosx_universal2-cp310"),
    "5.3 Windows": ("win32", "AMD64", (3, 13), "win_amd64-abi3"),
    "5.3 AppImage": ("linux", "x86_64", (3, 13), "linux_x86_64-abi3"),
    "6.0 macOS": ("darwin", "arm64", (3, 13), "macosx_universal2-abi3"),
    "6.0 Linux ARM": ("linux", "aarch64", (3, 13), "linux_aarch64-abi3"),
}


def test_every_krita_finds_a_folder_the_zip_carries():
    carried = {t["folder"] for t in plugin_zip.targets()}
    for krita, (system, machine, python, folder) in KRITAS.items():
        assert zmq_folder.folder_name(python, system, machine) == folder, krita
        assert folder in carried, krita
    assert zmq_folder.folder_name((3, 14), "win32", "AMD64") == "win_amd64-abi3"  # abi3: every later Python
    assert zmq_folder.folder_name((3, 11), "win32", "ARM64") == "win_arm64-cp311" not in carried
    assert zmq_folder.folder_name((3, 10), "win32", "AMD64", is_64bit=False) == "win32-cp310" not in carried
    assert {t["pyzmq"] for t in plugin_zip.targets() if t["python"] == "3.8"} == {plugin_zip.PYZMQ_PY38}
    assert {t["pyzmq"] for t in plugin_zip.targets() if t["python"] != "3.8"} == {plugin_zip.PYZMQ}


def test_the_matching_folder_goes_first_once(tmp_path):
    deps = tmp_path / "deps"
    mine = deps / zmq_folder.this_folder_name()
    mine.mkdir(parents=True)
    (deps / "win_amd64-cp38").mkdir()
    path = ["/elsewhere", "/usr/lib/python3/dist-packages"]
    assert zmq_folder.put_first(str(deps), path=path) == str(mine)
    assert zmq_folder.put_first(str(deps), path=path) == str(mine)  # a second import of the plugin
    assert path == [str(mine), "/elsewhere", "/usr/lib/python3/dist-packages"]
    assert zmq_folder.put_first(str(deps), name="linux_riscv64-cp311", path=path) is None
    assert path[0] == str(mine) and len(path) == 3
    assert zmq_folder.carried(str(deps)) == sorted([mine.name, "win_amd64-cp38"])


def test_the_vendored_pyzmq_wins_over_one_installed_in_site_packages(tmp_path):
    """This test's own Python has pyzmq installed; the plugin's folder still wins."""
    import zmq  # noqa: F401  (installed here: the one that must lose)

    package = tmp_path / "zmq_probe"
    (package / "deps" / zmq_folder.this_folder_name() / "zmq").mkdir(parents=True)
    (package / "deps" / zmq_folder.this_folder_name() / "zmq" / "__init__.py").write_text("VENDORED = True\n")
    code = (
        "import sys; sys.path.append(sys.argv[1]); import zmq_folder; "
        "zmq_folder.put_first(sys.argv[2]); import zmq; print(zmq.__file__, getattr(zmq, 'VENDORED', False))"
    )
    plugin = REPO / "krita_plugin" / "smd_krita"
    res = subprocess.run(
        [sys.executable, "-c", code, str(plugin), str(package / "deps")], capture_output=True, text=True, check=True
    )
    assert res.stdout.split() == [str(package / "deps" / zmq_folder.this_folder_name() / "zmq" / "__init__.py"), "True"]


def test_no_matching_folder_says_which_python_and_platform_and_the_fix(tmp_path, monkeypatch):
    from plugin_unit import env  # noqa: F401  (Qt, the fake krita, the plugin on sys.path)

    smd_krita = importlib.import_module("smd_krita")

    monkeypatch.setitem(sys.modules, "zmq", None)  # as where no pyzmq can be imported
    problem = smd_krita._problem("5.1.5")
    version = "%d.%d" % sys.version_info[:2]
    assert problem is not None and "\n" not in problem
    assert f"carries no pyzmq for Python {version} on {platform.system()} {platform.machine()}" in problem
    assert f"deps/{zmq_folder.this_folder_name()}" in problem
    assert f"'python3 install.py --krita-python {version}'" in problem
    (tmp_path / zmq_folder.this_folder_name()).mkdir()  # there, but it does not load (a zip with files missing)
    assert "cannot load its pyzmq" in zmq_folder.missing(str(tmp_path), ImportError("libzmq.so.5: not found"))


def test_install_py_puts_its_wheel_where_the_plugin_looks(tmp_path):
    res = subprocess.run(
        [sys.executable, str(REPO / "install.py"), "--dry-run", "--pykrita", str(tmp_path / "pk")]
        + ["--kritarc", str(tmp_path / "rc"), "--krita-python", "3.8"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert res.returncode == 0, res.stderr
    folder = tmp_path / "pk" / "smd_krita" / "deps" / zmq_folder.folder_name((3, 8), sys.platform, platform.machine())
    assert f"--target {folder} pyzmq=={plugin_zip.PYZMQ_PY38}" in res.stdout, res.stdout


def run_zip(tmp_path, *args, env=None):
    return subprocess.run(
        [sys.executable, str(REPO / "install.py"), "--zip", *args],
        capture_output=True,
        text=True,
        timeout=300,
        env=env,
    )


def test_no_network_is_one_line_and_no_zip(tmp_path):
    env = dict(os.environ, PIP_CONFIG_FILE=os.devnull, PIP_INDEX_URL="http://127.0.0.1:9/simple")
    env.update(PIP_RETRIES="0", PIP_TIMEOUT="2")
    res = run_zip(tmp_path, "--dist", str(tmp_path / "dist"), "--wheel-cache", str(tmp_path / "empty"), env=env)
    assert res.returncode == 1
    lines = res.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("install.py: error: could not download pyzmq "), res.stderr
    assert "from PyPI with pip" in lines[0] and "Traceback" not in res.stderr
    assert not (tmp_path / "dist").exists() or not list((tmp_path / "dist").iterdir())


def test_zip_goes_alone(tmp_path):
    res = run_zip(tmp_path, "--uninstall")
    assert res.returncode == 1 and res.stderr.strip().splitlines() == [
        "install.py: error: --zip builds the release zip only: give it alone (or with --dist, --wheel-cache)"
    ]


def test_a_wheel_that_is_not_the_pinned_one_stops_the_build(tmp_path):
    lock = tmp_path / "lock"
    lock.write_text("aa" * 32 + "  pyzmq-27.3.0-cp311-cp311-win_amd64.whl\n")
    plugin_zip.check_against_lock({"pyzmq-27.3.0-cp311-cp311-win_amd64.whl": "aa" * 32}, lock)
    with pytest.raises(plugin_zip.ZipError, match="pins"):
        plugin_zip.check_against_lock({"pyzmq-27.3.0-cp311-cp311-win_amd64.whl": "bb" * 32}, lock)
    with pytest.raises(plugin_zip.ZipError, match="not pinned"):
        plugin_zip.check_against_lock({"pyzmq-27.3.0-cp39-cp39-win_amd64.whl": "aa" * 32}, lock)


@pytest.fixture(scope="module")
def two_builds(tmp_path_factory):
    """This machine's platform only (five wheels, from PyPI once, then from the cache), built twice."""
    out = []
    for name in ("first", "second"):
        dist = tmp_path_factory.mktemp(name)
        out.append(plugin_zip.build(install.plugin_files(), dist, CACHE, platforms=[THIS_PLATFORM]))
    return out


@pytest.mark.network
def test_two_builds_are_byte_for_byte_the_same(two_builds):
    first, second = two_builds
    assert first["zip"].name == f"smd_live-{plugin_zip.project_version()}.zip"
    assert first["zip"].read_bytes() == second["zip"].read_bytes()
    assert first["hashes"].read_bytes() == second["hashes"].read_bytes()


@pytest.mark.network
def test_the_zip_is_laid_out_as_krita_imports_it(two_builds):
    built = two_builds[0]
    with zipfile.ZipFile(built["zip"]) as z:
        names = z.namelist()
        assert names == sorted(names)
        assert {n.split("/")[0] for n in names} == {"smd_krita.desktop", "smd_krita"}
        assert "smd_krita/" in names  # Krita's importer finds the package by its folder entry
        assert z.read("smd_krita.desktop") == (REPO / "krita_plugin" / "smd_krita.desktop").read_bytes()
        for path in (REPO / "krita_plugin" / "smd_krita").rglob("*.py"):
            if not {"vendor", "deps", "__pycache__"} & set(path.parts):
                rel = path.relative_to(REPO / "krita_plugin").as_posix()
                assert z.read(rel) == path.read_bytes(), rel
        for f in install.VENDORED:
            assert z.read(f"smd_krita/vendor/{f}") == (REPO / "smd_daemon" / f).read_bytes()
        assert not [n for n in names if "__pycache__" in n or n.endswith(".pyc") or "managed_daemon" in n]
        folders = {n.split("/")[2] for n in names if n.startswith("smd_krita/deps/") and n.count("/") > 3}
        assert folders == {f"{THIS_PLATFORM}-{t}" for t in ("cp38", "cp39", "cp310", "cp311", "abi3")}
        for folder in folders:
            assert f"smd_krita/deps/{folder}/zmq/__init__.py" in names
            assert [n for n in names if n.startswith(f"smd_krita/deps/{folder}/zmq/backend/cython/_zmq")]
        assert {i.date_time for i in z.infolist()} == {plugin_zip.ZIP_TIME}
        listing = z.read("smd_krita/deps/wheels.sha256")
    assert listing == built["hashes"].read_bytes()
    lines = listing.decode().splitlines()
    assert len(lines) == 5
    pinned = plugin_zip.read_lock()
    for line in lines:
        digest, name = line.split("  ")
        wheel = next(CACHE.glob(f"*/{name}"))
        assert hashlib.sha256(wheel.read_bytes()).hexdigest() == digest == pinned[name]

"""The release zip installed as artists install it, in real Krita 5.1 under Xvfb: Krita's own plugin
importer, pyzmq from the plugin's own folder (never the system's python3-zmq), a live frame from a real
daemon, and a newer zip imported over an older one that keeps the artist's settings."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

import install
import plugin_zip

sys.path.insert(0, str(Path(__file__).resolve().parent / "krita"))
import harness  # noqa: E402
from daemon_util import running  # noqa: E402

_SKIP = bool(harness.available()) and not os.environ.get("SMD_REQUIRE_KRITA")
pytestmark = [pytest.mark.krita, pytest.mark.network, pytest.mark.skipif(_SKIP, reason=harness.available() or "ok")]
REPO = Path(__file__).resolve().parents[1]


def krita_importer() -> Path:
    """The importer Krita ships beside its own Python plugins (pykrita/plugin_importer)."""
    krita = Path(shutil.which("krita", path=harness.SYSTEM_PATH) or "/usr/bin/krita").resolve()
    return krita.parents[1] / "share" / "krita" / "pykrita" / "plugin_importer" / "plugin_importer.py"


def older_release(new: Path, dst: Path) -> Path:
    """The same plugin as an older release: with a module the newer one no longer has."""
    with zipfile.ZipFile(new) as z:
        files = {n: z.read(n) for n in z.namelist() if not n.endswith("/")}
    files["smd_krita/retired.py"] = b"# a module of an older release\n"
    plugin_zip.write_zip(dst, files)
    return dst


def settings_in(kritarc: Path) -> dict:
    group, out = "", {}
    for line in kritarc.read_text().splitlines():
        if line.startswith("["):
            group = line.strip()
        elif group == "[smd_live]" and line.startswith("settings="):
            out = json.loads(line.split("=", 1)[1])
    return out


@pytest.fixture(scope="module")
def release(tmp_path_factory):
    dist = tmp_path_factory.mktemp("dist")
    return plugin_zip.build(install.plugin_files(), dist, REPO / "build" / "wheels")


def test_zip_through_krita_importer_live_frame_vendored_pyzmq_update_keeps_settings(release, tmp_path):
    # The daemon holds its port from the start: the address is chosen in the first Krita run.
    with running() as daemon:
        check_zip_in_krita(release, tmp_path, daemon.port)


def check_zip_in_krita(release: dict, tmp_path: Path, port: int) -> None:
    importer = krita_importer()
    assert importer.is_file(), importer
    system_python = shutil.which("python3", path=harness.SYSTEM_PATH)
    debian_zmq = subprocess.run(
        [system_python, "-c", "import zmq; print(zmq.__file__, zmq.__version__)"], capture_output=True, text=True
    )
    assert debian_zmq.returncode == 0, "the system's python3-zmq must be there: the plugin must not use it"
    home = harness.new_home(tmp_path / "home")
    harness.install_driver(home)
    resources = home / ".local/share/krita"  # Krita's app data folder: pykrita/ goes in it
    pkg = resources / "pykrita" / "smd_krita"
    kritarc = home / ".config" / "kritarc"

    # An older release, imported with the importer run standalone, enabled as "Enable plugins now?" does.
    old = older_release(release["zip"], tmp_path / "smd_live-0.0.1.zip")
    res = subprocess.run(
        [system_python, str(importer), str(old), str(resources)], capture_output=True, text=True, timeout=60
    )
    assert res.returncode == 0 and "Imported plugin: SMD Live" in res.stdout, res.stdout + res.stderr
    kritarc.write_text(install.enable_in_kritarc(kritarc.read_text())[0])
    assert (pkg / "retired.py").is_file()

    # The artist uses it: settings chosen in the docker land in Krita's config when Krita quits.
    args = {"kra": str(tmp_path / "a.kra"), "seed": 4321, "address": f"127.0.0.1:{port}"}
    result = harness.run(home, "save_settings", args, timeout=150)
    assert result["errors"] == [], result
    settings = settings_in(kritarc)
    assert settings.get("address") == f"127.0.0.1:{port}", kritarc.read_text()

    # The newer zip through Krita's importer, inside Krita, over the older plugin.
    result = harness.run(home, "import_zip", {"zip": str(release["zip"])}, timeout=90)
    assert result["errors"] == [], result
    c = result["checks"]
    assert c["imported"] == ["smd_krita"] and c["asked_to_overwrite"] == ["smd_krita"], c
    assert Path(c["resources"]).resolve() == resources.resolve(), c
    with zipfile.ZipFile(release["zip"]) as z:
        in_zip = {n[len("smd_krita/") :] for n in z.namelist() if n.startswith("smd_krita/") and not n.endswith("/")}
    on_disk = {p.relative_to(pkg).as_posix() for p in pkg.rglob("*") if p.is_file() and "__pycache__" not in p.parts}
    assert on_disk == in_zip  # replaced cleanly: nothing of the older release is left (retired.py)
    assert settings_in(kritarc) == settings  # the artist's settings are Krita's, untouched
    assert "enable_smd_krita=true" in kritarc.read_text()

    # Krita restarted: pyzmq from the plugin's own folder, a live frame from a real daemon.
    result = harness.run(home, "zip_live", {}, timeout=240)
    assert result["errors"] == [], "\n".join(result["errors"] + result["log"][-20:])
    c = result["checks"]
    why = json.dumps(c, indent=1) + "\n" + debian_zmq.stdout
    folder = (
        pkg
        / "deps"
        / plugin_zip.plugin_module("zmq_folder.py").folder_name(
            tuple(int(v) for v in c["python"].split(".")), "linux", c["machine"]
        )
    )
    assert c["docker_present"] and c["plugin_file"] == str(pkg / "__init__.py"), why
    assert c["sys_path_head"][0] == str(folder), why
    assert c["zmq_file"] == str(folder / "zmq" / "__init__.py") == c["zmq_file_after_live"], why
    assert c["backend_file"].startswith(str(folder / "zmq" / "backend" / "cython" / "_zmq")), why
    assert c["zmq_version"] == plugin_zip.PYZMQ and c["zmq_file"] not in debian_zmq.stdout, why
    assert c["address_in_docker"] == f"127.0.0.1:{port}", why  # chosen under the older release, kept
    assert c["preview_mode_kept"] == "docker", why
    assert c["status_connected"].startswith("connected"), why
    assert c["preview_alpha_max"] == 255 and c["preview_colours"] > 1, why  # a frame drawn, not a blank layer

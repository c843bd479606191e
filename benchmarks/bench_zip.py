"""The release zip (install.py --zip): its size, how long a build takes with an empty wheel cache (as in CI,
pip's own cache off) and with a filled one, and whether every build gives the same bytes. With
--krita-starts N: the plugin's import time inside real Krita (under Xvfb), imported from the zip with
Krita's importer, as Python's own -X importtime reports it: N first starts after the import (no bytecode
yet) and N later ones.

    python benchmarks/bench_zip.py --repeat 3
    python benchmarks/bench_zip.py --repeat 0 --krita-starts 5
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT), str(ROOT / "tests" / "krita")]
import harness  # noqa: E402

import install  # noqa: E402
import plugin_zip  # noqa: E402

IMPORT_TIME = re.compile(r"import time:\s+\d+ \|\s+(\d+) \|\s*(\S+)$")


def build(dist: Path, cache: Path) -> float:
    env = dict(os.environ, PIP_NO_CACHE_DIR="1")
    t = time.monotonic()
    subprocess.run(
        [sys.executable, str(ROOT / "install.py"), "--zip", "--dist", str(dist), "--wheel-cache", str(cache)],
        env=env,
        check=True,
        capture_output=True,
    )
    return time.monotonic() - t


def import_ms(home: Path, log: Path) -> dict:
    """One Krita start; the cumulative import times (ms) of the plugin and of its pyzmq. A start that
    never ran the plugin (two Xvfb servers picked one display) is tried again."""
    for _ in range(3):
        out = _one_start(home, log)
        if len(out) == 2:
            return out
    raise SystemExit("Krita did not import the plugin:\n" + log.read_text(errors="replace")[-2000:])


def _one_start(home: Path, log: Path) -> dict:
    env = harness.home_env(home)
    env.update(SMD_TEST_SCENARIO="startup", SMD_TEST_OUT=str(home / "result.json"), PYTHONPROFILEIMPORTTIME="1")
    screen = "-screen 0 1280x1024x24 -nolisten tcp"
    with open(log, "w") as f:
        subprocess.run(
            ["timeout", "120", "xvfb-run", "-a", "-s", screen, "krita", "--nosplash"],
            env=env,
            stdout=f,
            stderr=subprocess.STDOUT,
            cwd=home,
        )
    out = {}
    for line in log.read_text(errors="replace").splitlines():
        m = IMPORT_TIME.match(line)
        if m and m.group(2) in ("smd_krita", "zmq"):
            out[m.group(2)] = int(m.group(1)) / 1000
    return out


def krita_imports(starts: int, tmp: str) -> dict:
    dist = Path(tmp, "dist")
    built = plugin_zip.build(install.plugin_files(), dist, ROOT / "build" / "wheels")
    home = harness.new_home(Path(tmp, "home"))
    harness.install_driver(home)
    resources = home / ".local/share/krita"
    krita = Path(shutil.which("krita", path=harness.SYSTEM_PATH) or "krita").resolve()
    importer = krita.parents[1] / "share/krita/pykrita/plugin_importer/plugin_importer.py"
    python = shutil.which("python3", path=harness.SYSTEM_PATH) or "python3"
    subprocess.run([python, str(importer), str(built["zip"]), str(resources)], check=True, capture_output=True)
    rc = home / ".config" / "kritarc"
    rc.write_text(install.enable_in_kritarc(rc.read_text())[0])
    first, later = [], []
    for i in range(starts):
        for cache in list((resources / "pykrita" / "smd_krita").rglob("__pycache__")):
            shutil.rmtree(cache)  # as the first start after an import: nothing compiled yet
        first.append(import_ms(home, Path(tmp, f"first{i}.log")))
        later.append(import_ms(home, Path(tmp, f"later{i}.log")))
    return {
        f"{when}_{name}_ms_median": round(statistics.median(r[name] for r in runs), 1)
        for when, runs in (("first_start", first), ("later_start", later))
        for name in ("smd_krita", "zmq")
    }


def main() -> None:
    p = argparse.ArgumentParser(description=(__doc__ or "").partition("\n")[0])
    p.add_argument("--repeat", type=int, default=3)
    p.add_argument("--krita-starts", type=int, default=0)
    args = p.parse_args()
    report = {}
    if args.krita_starts:
        with tempfile.TemporaryDirectory() as tmp:
            report.update(krita_imports(args.krita_starts, tmp))
    if args.repeat:
        report.update(builds(args.repeat))
    print(json.dumps(report, indent=1))


def builds(repeat: int) -> dict:
    cold, warm, digests, size = [], [], set(), 0
    with tempfile.TemporaryDirectory() as tmp:
        for i in range(repeat):
            cache, dist = Path(tmp, f"cache{i}"), Path(tmp, f"dist{i}")
            cold.append(build(dist, cache))  # a new cache: every wheel from PyPI
            warm.append(build(dist, cache))  # the same cache again
            (zip_file,) = dist.glob("*.zip")
            digests.add(hashlib.sha256(zip_file.read_bytes()).hexdigest())
            size = zip_file.stat().st_size
    return {
        "zip_bytes": size,
        "zip_mb": round(size / 1e6, 1),
        "cold_s_median": round(statistics.median(cold), 1),
        "warm_s_median": round(statistics.median(warm), 1),
        "cold_s": [round(s, 1) for s in cold],
        "warm_s": [round(s, 1) for s in warm],
        "identical_builds": len(digests) == 1,
    }


if __name__ == "__main__":
    main()

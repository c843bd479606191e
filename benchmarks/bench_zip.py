"""The release zip (install.py --zip): its size, how long a build takes with an empty wheel cache (as in CI,
pip's own cache off) and with a filled one, and whether every build gives the same bytes.

    python benchmarks/bench_zip.py --repeat 3
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


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


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--repeat", type=int, default=3)
    args = p.parse_args()
    cold, warm, digests, size = [], [], set(), 0
    with tempfile.TemporaryDirectory() as tmp:
        for i in range(args.repeat):
            cache, dist = Path(tmp, f"cache{i}"), Path(tmp, f"dist{i}")
            cold.append(build(dist, cache))  # a new cache: every wheel from PyPI
            warm.append(build(dist, cache))  # the same cache again
            (zip_file,) = dist.glob("*.zip")
            digests.add(hashlib.sha256(zip_file.read_bytes()).hexdigest())
            size = zip_file.stat().st_size
    print(
        json.dumps(
            {
                "zip_bytes": size,
                "zip_mb": round(size / 1e6, 1),
                "cold_s_median": round(statistics.median(cold), 1),
                "warm_s_median": round(statistics.median(warm), 1),
                "cold_s": [round(s, 1) for s in cold],
                "warm_s": [round(s, 1) for s in warm],
                "identical_builds": len(digests) == 1,
            },
            indent=1,
        )
    )


if __name__ == "__main__":
    main()

#!/usr/bin/env bash
# The whole test suite on a fresh Debian/Ubuntu machine: installs what it
# needs (Krita, Xvfb and pyzmq for Krita's Python from apt; the daemon and
# its pinned dependencies into .venv), then runs pytest, Krita tests included.
# Extra arguments go to pytest.
set -euo pipefail
cd "$(dirname "$0")/.."

APT_PACKAGES="krita python3-pyqt5 python3-zmq xvfb xauth"
missing=""
for p in $APT_PACKAGES; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing="$missing $p"
done
if [ -n "$missing" ]; then
    echo "== installing Debian packages:$missing"
    SUDO=""
    [ "$(id -u)" -ne 0 ] && SUDO="sudo"
    $SUDO apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq $missing >/dev/null
fi

PY="${PYTHON:-python3}"
if [ ! -x .venv/bin/python ]; then
    echo "== creating .venv"
    "$PY" -m venv .venv
fi
echo "== installing the daemon, its cluster extra (Ray) and test dependencies into .venv"
.venv/bin/python -m pip install -q --disable-pip-version-check -e ".[test,cluster]"

echo "== static checks: ruff (lint, format) and pyright"
STATIC="smd_daemon krita_plugin install.py benchmarks"
.venv/bin/ruff check $STATIC
.venv/bin/ruff format --check $STATIC
.venv/bin/pyright --pythonpath .venv/bin/python $STATIC

# Krita and Ray were installed above: their tests must run, not skip.
export HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 SMD_REQUIRE_KRITA=1 SMD_REQUIRE_RAY=1
set +e
.venv/bin/python -m pytest -ra "$@"
rc=$?
set -e
if [ "$rc" -eq 5 ]; then
    echo "pytest collected no tests: that is a failure" >&2
    exit 1
fi
exit "$rc"

"""Every command, given bad input, says what is wrong in one line and exits 2: never a traceback."""

import subprocess
import sys

import pytest
from daemon_util import daemon_env

CASES = {
    "serve: an http address": (
        ["serve", "--model", "tiny", "--bind", "http://127.0.0.1:7555"],
        "an address looks like",
    ),
    "serve: a port that is not a number": (["serve", "--bind", "127.0.0.1:port"], "from 1 to 65535"),
    "serve: a flag's value": (["serve", "--max-fps", "fast"], "invalid float value: 'fast'"),
    "check: an http address": (["check", "http://gpu-box"], "http:// is not spoken here"),
    "check: a timeout below zero": (["check", "--timeout", "-3"], "--timeout must be"),
    "check: an unknown flag": (["check", "--colour"], "unrecognized arguments: --colour"),
    "render: no output": (["render", "scene.ora"], "required: -o/--output"),
    "render: a missing scene": (["render", "nothing.ora", "-o", "out.png"], "no such file"),
    "keys: a bad client name": (["keys", "KEYDIR", "--client", "a/b"], "client name 'a/b'"),
    "an unknown command": (["paint"], "invalid choice: 'paint'"),
}


@pytest.mark.parametrize("case", sorted(CASES))
def test_bad_input_is_one_line_and_exit_2(case, tmp_path):
    args, needle = CASES[case]
    args = [str(tmp_path / "keys") if a == "KEYDIR" else a for a in args]
    res = subprocess.run(
        [sys.executable, "-m", "smd_daemon", *args],
        capture_output=True,
        text=True,
        env=daemon_env(),
        cwd=tmp_path,
        timeout=120,
    )
    lines = [ln for ln in res.stderr.strip().splitlines() if not ln.startswith("[transformers] ")]
    assert res.returncode == 2, res.stdout + res.stderr
    assert "Traceback" not in res.stderr and len(lines) == 1, res.stderr
    assert lines[0].startswith("smd-daemon") and "error: " in lines[0] and needle in lines[0], lines[0]

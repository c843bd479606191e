"""``smd-daemon check`` against real daemons: plain, CURVE, and none at all."""

import subprocess
import sys

import pytest
import zmq.auth
from daemon_util import ROOT, Daemon, daemon_env, free_port


def check(*args, timeout=180):
    return subprocess.run(
        [sys.executable, "-m", "smd_daemon", "check", *args],
        capture_output=True,
        text=True,
        env=daemon_env(),
        cwd=ROOT,
        timeout=timeout,
    )


def _one_line_error(res, needle):
    assert res.returncode == 2, res.stdout + res.stderr
    lines = res.stderr.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in res.stderr and needle in lines[0], res.stderr


@pytest.fixture(scope="module")
def keys(tmp_path_factory):
    d = tmp_path_factory.mktemp("keys") / "keys"
    res = subprocess.run(
        [sys.executable, "-m", "smd_daemon", "keys", str(d), "--client", "alice"],
        capture_output=True,
        text=True,
        env=daemon_env(),
        cwd=ROOT,
    )
    assert res.returncode == 0, res.stderr
    return d


def test_check_reports_the_daemon_and_renders_a_test_image():
    d = Daemon()
    try:
        d.wait_serving()
        res = check(f"127.0.0.1:{d.port}", "--render")  # as people write it: no tcp://
    finally:
        d.stop()
    assert res.returncode == 0, res.stderr
    assert f"connected to tcp://127.0.0.1:{d.port}" in res.stdout
    assert "model: tiny on cpu" in res.stdout and "no meaningful images" in res.stdout
    assert "max_side=" in res.stdout
    assert "test image: 256x256 png" in res.stdout


def test_check_without_a_daemon_asks_whether_it_is_running():
    res = check(f"127.0.0.1:{free_port()}", "--timeout", "2")
    _one_line_error(res, "is the daemon running? Start it with '")
    assert "smd-daemon serve'" in res.stderr


def test_serve_and_check_over_ipv6_loopback():
    port = free_port()
    d = Daemon(bind=f"[::1]:{port}", port=port)
    try:
        d.wait_serving()
        res = check(f"[::1]:{port}")
    finally:
        d.stop()
    assert res.returncode == 0, res.stderr + d.text()
    assert f"connected to tcp://[::1]:{port}" in res.stdout and f"serving on tcp://[::1]:{port}" in d.text()


@pytest.mark.parametrize("address", ["http://127.0.0.1:7555", "127.0.0.1:99999", "gpu box", "127.0.0.1:"])
def test_check_bad_addresses_are_one_line_saying_what_an_address_looks_like(address):
    _one_line_error(check(address, "--timeout", "1"), "an address looks like 127.0.0.1:7555")


def test_check_with_keys_only_succeeds_for_an_authorised_key(keys, tmp_path):
    port = free_port()
    d = Daemon("--keys", str(keys), port=port)
    stranger = tmp_path / "stranger"
    stranger.mkdir()
    _, stranger_secret = zmq.auth.create_certificates(str(stranger), "mallory")
    try:
        d.wait_serving()
        ok = check(
            d.address,
            "--server-key",
            str(keys / "server.key"),
            "--client-key",
            str(keys / "clients" / "alice.key_secret"),
        )
        refused = check(
            d.address, "--server-key", str(keys / "server.key"), "--client-key", stranger_secret, "--timeout", "2"
        )
        plaintext = check(d.address, "--timeout", "2")
    finally:
        d.stop()
    assert ok.returncode == 0 and "model: tiny" in ok.stdout, ok.stderr
    _one_line_error(refused, "did not accept this key (it is not authorised there")
    _one_line_error(plaintext, "requires encryption")


def test_check_refuses_half_or_missing_keys(keys, tmp_path):
    _one_line_error(check("--server-key", str(keys / "server.key")), "both")
    _one_line_error(
        check("--server-key", str(tmp_path / "nope.key"), "--client-key", str(tmp_path / "x")), "does not exist"
    )
    _one_line_error(
        check("--server-key", str(keys / "server.key"), "--client-key", str(keys / "server.key")), "no secret key"
    )

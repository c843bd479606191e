"""Starting, stopping, restarting and securing a real daemon process."""

from __future__ import annotations

import os
import signal
import stat
import subprocess
import sys
import time

import pytest
import zmq
import zmq.auth
from daemon_util import (
    ROOT,
    Daemon,
    Raw,
    S,
    connect,
    daemon_env,
    free_port,
    half_mask,
    keys_and_stranger,
    process_alive,
    run_cli,
    wait_gone,
)

from smd_daemon import protocol
from smd_daemon.client import Client, FrameEvent, Layer, SceneEvent, StateEvent


def test_non_loopback_bind_without_keys_is_refused():
    r = run_cli("serve", "--model", "tiny", "--bind", f"tcp://0.0.0.0:{free_port()}")
    assert r.returncode == 2
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and "--keys" in lines[0] and "--insecure" in lines[0], r.stderr
    assert "loading model" not in r.stderr


def test_busy_port_fails_before_the_model_loads():
    holder = zmq.Context.instance().socket(zmq.ROUTER)
    port = holder.bind_to_random_port("tcp://127.0.0.1")
    try:
        r = run_cli("serve", "--model", "tiny", "--bind", f"tcp://127.0.0.1:{port}")
    finally:
        holder.close(0)
    assert r.returncode == 2 and "cannot bind" in r.stderr and "loading model" not in r.stderr, r.stderr


@pytest.mark.parametrize(
    "content,needle",
    [
        ('modle = "tiny"\n', "unknown setting 'modle'"),
        ("max_sessions = 'many'\n", "max_sessions must be int"),
        ("max_sessions_per_origin = 0\n", "max-sessions-per-origin must be >= 1"),
        ("bind = [\n", "not valid TOML"),
        ('bind = "tcp://0.0.0.0:7555"\n', "--keys"),  # read from the file, then refused
    ],
)
def test_bad_config_is_one_clear_line(tmp_path, content, needle):
    cfg = tmp_path / "smd.toml"
    cfg.write_text(content)
    r = run_cli("serve", "--config", str(cfg))
    assert r.returncode == 2 and needle in r.stderr and len(r.stderr.strip().splitlines()) == 1, r.stderr


def test_keys_are_private_and_in_pyzmq_format(tmp_path):
    r = run_cli("keys", str(tmp_path / "k"), "--client", "alice")
    assert r.returncode == 0, r.stderr
    assert "server.key" in r.stdout and "alice.key_secret" in r.stdout
    k = tmp_path / "k"
    for secret in (k / "server.key_secret", k / "clients" / "alice.key_secret"):
        assert stat.S_IMODE(os.stat(secret).st_mode) == 0o600
        public, private = zmq.auth.load_certificate(str(secret))
        assert len(public) == 40 and len(private) == 40
    assert (
        zmq.auth.load_certificate(str(k / "authorized" / "alice.key"))[0]
        == zmq.auth.load_certificate(str(k / "clients" / "alice.key_secret"))[0]
    )
    again = run_cli("keys", str(k), "--client", "alice")
    assert again.returncode == 2 and "--force" in again.stderr


def test_sigterm_then_restart_client_reconnects_and_resumes(tmp_path):
    # Settings from a config file; the --bind flag wins over the file's non-loopback bind.
    cfg = tmp_path / "smd.toml"
    cfg.write_text('bind = "tcp://0.0.0.0:1"\nmax_sessions = 3\nmax_sessions_per_origin = 2\nheartbeat_timeout = 5\n')
    port = free_port()
    first = Daemon("--config", str(cfg), port=port)
    client = None
    try:
        first.wait_serving()
        client = connect(first.address, name="survivor", timeout=30)
        assert client.limits["max_sessions"] == 3 and client.limits["heartbeat_timeout"] == 5
        assert client.limits["max_sessions_per_origin"] == 2
        rev = client.set_scene(S, S, [Layer("1", "a red fox", half_mask())], background_prompt="forest")
        client.start_live("raw")
        assert client.wait_for(lambda e: isinstance(e, FrameEvent), 30) is not None

        assert first.stop() == 0
        assert "SIGTERM received" in first.text() and "stopped" in first.text()
        ev = client.wait_for(lambda e: isinstance(e, StateEvent) and e.state == "disconnected", 10)
        assert ev is not None and "shutting down" in ev.reason

        second = Daemon("--config", str(cfg), port=port)
        try:
            second.wait_serving()
            ev = client.wait_for(lambda e: isinstance(e, StateEvent) and e.state == "connected", 30)
            assert ev is not None, client.state_reason
            # The client resent its full scene and restarted live mode by itself.
            scene = client.wait_for(lambda e: isinstance(e, SceneEvent), 10)
            assert scene is not None and scene.revision == rev and scene.regions == 1
            frame = client.wait_for(lambda e: isinstance(e, FrameEvent), 30)
            assert frame is not None and frame.revision == rev
            client.close()
            client = None
            assert second.stop(sig=signal.SIGINT) == 0  # Ctrl+C is as clean as SIGTERM
            assert "SIGINT received" in second.text()
        finally:
            second.close()
    finally:
        if client is not None:
            client.close()
        first.close()


def test_curve_only_authorised_clients_are_served(tmp_path):
    keys, stranger_secret, server_public = keys_and_stranger(tmp_path)

    # Non-loopback is allowed with keys; clients still reach it on loopback.
    port = free_port()
    d = Daemon("--keys", str(keys), bind=f"tcp://0.0.0.0:{port}", port=port)
    address = f"tcp://127.0.0.1:{port}"
    try:
        d.wait_serving()
        assert "CURVE encryption on; 1 allowed" in d.text()
        alice = connect(
            address,
            name="alice",
            server_public_key=server_public,
            client_secret_file=str(keys / "clients" / "alice.key_secret"),
        )
        try:
            alice.set_scene(S, S, [Layer("1", "a red fox", half_mask())])
            alice.start_live("webp")
            f = alice.wait_for(lambda e: isinstance(e, FrameEvent), 30)
            assert f is not None and f.encoding == "webp"
        finally:
            alice.close()

        mallory = Client(address, name="mallory", server_public_key=server_public, client_secret_file=stranger_secret)
        mallory.connect()
        assert mallory.wait_for(lambda e: isinstance(e, StateEvent) and e.state == "connected", 3) is None
        mallory.close()

        plain = Raw(address)
        try:
            plain.send("hello", protocol=protocol.PROTOCOL_VERSION)
            assert plain.recv(2.0) is None
        finally:
            plain.close()
    finally:
        assert d.stop() == 0
        d.close()


def test_client_recovers_from_a_daemon_crash():
    # No 'bye' this time: the client finds out from the new daemon (or its own timeout).
    port = free_port()
    first = Daemon(port=port)
    client = None
    try:
        first.wait_serving()
        client = connect(first.address, name="crash-survivor")
        rev = client.set_scene(S, S, [Layer("1", "a red fox", half_mask())])
        client.start_live("jpeg")
        assert client.wait_for(lambda e: isinstance(e, FrameEvent), 30) is not None
        first.close()  # SIGKILL
        second = Daemon(port=port)
        try:
            second.wait_serving()
            ev = client.wait_for(lambda e: isinstance(e, StateEvent) and e.state == "connected", 30)
            assert ev is not None, client.state_reason
            frame = client.wait_for(lambda e: isinstance(e, FrameEvent), 30)
            assert frame is not None and frame.revision == rev and frame.encoding == "jpeg"
        finally:
            client.close()
            client = None
            second.stop()
            second.close()
    finally:
        if client is not None:
            client.close()
        first.close()


def test_sigterm_while_a_huge_canvas_is_planned_stops_the_plan_and_exits_0():
    # A 4096x4096 background image is 121 VAE tiles to encode: half a minute of
    # planning on a CPU, which must stop at the next tile, not run on.
    import zlib

    from smd_daemon.client import ErrorEvent

    side = 4096
    gradient = bytes(range(256)) * (side * side * 3 // 256)
    d = Daemon()
    c = None
    try:
        d.wait_serving()
        c = connect(d.address, name="huge")
        c.set_scene(
            side,
            side,
            [Layer("1", "a red fox", half_mask(side))],
            background_prompt="a beach",
            background_image=zlib.compress(gradient, 1),
            background_image_encoding="zlib",
            background_strength=0.5,
        )
        reply = c.wait_for(lambda e: isinstance(e, (SceneEvent, ErrorEvent)), 3.0)
        assert reply is None, f"the plan ended before the signal: {reply}"
        t = time.monotonic()
        d.proc.send_signal(signal.SIGTERM)
        rc = d.proc.wait(60)
        seconds = time.monotonic() - t
        log = d.text()
        assert rc == 0 and seconds < 15, (rc, seconds, log[-2000:])  # generous: the goal is 5 s
        assert "without waiting" not in log and "Traceback" not in log, log[-2000:]
        assert log.rstrip().endswith("stopped"), log[-2000:]
    finally:
        if c is not None:
            c.close()
        d.close()


def test_watch_stdin_stops_cleanly_when_the_pipe_closes():
    """--watch-stdin (what the docker starts its daemon with): the parent's end of the pipe closing
    is a clean stop, as SIGTERM is."""
    d = Daemon("--watch-stdin", stdin=subprocess.PIPE)
    try:
        d.wait_serving()
        client = connect(d.address, name="watcher")
        client.close()
        d.proc.stdin.close()
        assert d.proc.wait(30) == 0, d.text()[-2000:]
        log = d.text()
        assert "standard input closed" in log and log.rstrip().endswith("stopped"), log[-2000:]
        assert "without waiting" not in log and "Traceback" not in log, log[-2000:]
    finally:
        d.close()


# A parent that starts the daemon with a pipe on its stdin, as Krita's docker does, says the
# daemon's pid, then waits to be killed.
PARENT = """
import subprocess, sys, time
child = subprocess.Popen(sys.argv[1:], stdin=subprocess.PIPE, stdout=sys.stdout, stderr=subprocess.STDOUT)
print("daemon pid", child.pid, flush=True)
time.sleep(600)
"""


def test_watch_stdin_daemon_ends_when_its_parent_is_killed(tmp_path):
    port = free_port()
    log_path = tmp_path / "daemon.log"
    cmd = [sys.executable, "-m", "smd_daemon", "serve", "--model", "tiny", "--threads", "1", "--watch-stdin"]
    with open(log_path, "w") as log:
        parent = subprocess.Popen(
            [sys.executable, "-c", PARENT, *cmd, "--bind", f"tcp://127.0.0.1:{port}"],
            env=daemon_env(),
            stdout=log,
            stderr=subprocess.STDOUT,
            cwd=ROOT,
        )
    pid = None
    try:
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline and "serving on" not in log_path.read_text():
            assert parent.poll() is None, log_path.read_text()
            time.sleep(0.1)
        text = log_path.read_text()
        assert "serving on" in text, text
        pid = int(text.split("daemon pid ")[1].split()[0])
        parent.kill()  # SIGKILL: no handler, no clean-up in the parent
        parent.wait()
        assert wait_gone(pid, 30), log_path.read_text()[-2000:]
        text = log_path.read_text()
        assert "standard input closed" in text and text.rstrip().endswith("stopped"), text[-2000:]
    finally:
        if parent.poll() is None:
            parent.kill()
            parent.wait()
        if pid is not None and process_alive(pid):
            os.kill(pid, signal.SIGKILL)

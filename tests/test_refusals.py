"""Whom a real daemon refuses, and that both ends are told: one client key,
local user or host holds at most its share of the sessions and connections,
and every connection refused in the handshake is logged, with whatever a
client chose (its name) escaped."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
import textwrap
import time

import pytest
import zmq
import zmq.auth
from daemon_util import ROOT, Daemon, Raw, connect, daemon_env, run_cli

from smd_daemon import protocol
from smd_daemon.client import Client, ErrorEvent, StateCode, StateEvent

E = protocol.ErrorCode


def keys_for(tmp_path, *names):
    keys = tmp_path / "keys"
    args = [a for n in names for a in ("--client", n)]
    assert run_cli("keys", str(keys), *args).returncode == 0
    server_public = zmq.auth.load_certificate(str(keys / "server.key"))[0]
    return keys, server_public, {n: str(keys / "clients" / f"{n}.key_secret") for n in names}


def stop(d: Daemon) -> str:
    """Stop the daemon (cleanly) and return its log."""
    try:
        assert d.stop() == 0, d.text()
        return d.text()
    finally:
        d.close()


def refused(c: Client, timeout: float = 15):
    """The error and the state change a refused client reports."""
    error = c.wait_for(lambda e: isinstance(e, ErrorEvent), timeout)
    assert error is not None, f"no error: {c.state} {c.state_reason}"
    assert c.state_code == StateCode.REFUSED, (c.state, c.state_reason)
    return error


def test_one_client_key_cannot_hold_every_session_or_connection(tmp_path):
    keys, server_public, secret = keys_for(tmp_path, "alice", "bob")
    d = Daemon("--keys", str(keys), "--max-sessions", "4", "--max-clients-per-origin", "3")
    clients = []

    def client(name):
        c = Client(d.address, name=name, server_public_key=server_public, client_secret_file=secret[name])
        clients.append(c)
        return c

    try:
        d.wait_serving()
        alice = [connect(d.address, name="alice", server_public_key=server_public, client_secret_file=secret["alice"])]
        clients.extend(alice)
        assert alice[0].limits["max_sessions_per_origin"] == 2  # half of --max-sessions by default
        alice.append(
            connect(d.address, name="alice", server_public_key=server_public, client_secret_file=secret["alice"])
        )
        clients.append(alice[1])
        third = client("alice")
        third.connect()
        error = refused(third)
        assert error.code == E.QUOTA and "client key alice already holds 2 of the 4 sessions" in error.message
        assert "client key alice" in third.state_reason  # what the docker shows
        for _ in range(2):  # the others still get in
            clients.append(
                connect(d.address, name="bob", server_public_key=server_public, client_secret_file=secret["bob"])
            )
        # A connection beyond the key's share is refused at hello, before it holds anything.
        raw = Raw(d.address, curve_serverkey=server_public, **_raw_keys(secret["alice"]))
        try:
            raw.send("hello", protocol=protocol.PROTOCOL_VERSION, client="alice's script")
            err = raw.expect("error")
            assert (
                err.header["code"] == E.QUOTA and "client key alice already has 3 connections" in err.header["message"]
            )
        finally:
            raw.close()
        # When one of alice's sessions ends, her waiting client gets it (it retries by itself).
        alice[0].close()
        ev = third.wait_for(lambda e: isinstance(e, StateEvent) and e.state == "connected", 20)
        assert ev is not None, third.state_reason
    finally:
        for c in clients:
            c.close()
        text = stop(d)
    assert "quota: client key alice already holds 2 of the 4 sessions" in text


def _raw_keys(secret_file: str) -> dict:
    public, secret = zmq.auth.load_certificate(secret_file)
    return {"curve_publickey": public, "curve_secretkey": secret}


NOBODY_CLIENT = textwrap.dedent(
    """
    import sys
    from smd_daemon.client import Client, StateEvent
    c = Client(sys.argv[1], name="nobody")
    c.connect()
    ev = c.wait_for(lambda e: isinstance(e, StateEvent) and e.state == "connected", 20)
    print("connected" if ev is not None else "not connected: " + c.state_reason, flush=True)
    c.close()
    """
)


@pytest.mark.skipif(
    os.geteuid() != 0 or not shutil.which("setpriv"), reason="needs root and setpriv to run a second user"
)
def test_on_ipc_sessions_are_counted_per_local_user():
    folder = tempfile.mkdtemp(prefix="smd-ipc-")  # not under pytest's private folder: the other user must reach it
    os.chmod(folder, 0o777)
    d = Daemon("--max-sessions", "2", bind=f"ipc://{folder}/smd.sock")
    clients = []
    try:
        d.wait_serving()
        os.chmod(f"{folder}/smd.sock", 0o777)  # ZeroMQ made it with the daemon's umask: let the other user in
        clients.append(connect(d.address, name="first"))
        second = Client(d.address, name="second")
        clients.append(second)
        second.connect()
        error = refused(second)
        assert error.code == E.QUOTA and f"local user {os.getuid()} already holds 1 of the 2" in error.message
        run = subprocess.run(
            ["setpriv", "--reuid=nobody", "--regid=nogroup", "--clear-groups", sys.executable, "-c", NOBODY_CLIENT]
            + [d.address],
            env={**daemon_env(), "HOME": folder},
            cwd=ROOT,
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert run.stdout.strip() == "connected", run.stdout + run.stderr
    finally:
        for c in clients:
            c.close()
        stop(d)
        shutil.rmtree(folder)


def test_every_handshake_refusal_is_logged_once_per_interval(tmp_path):
    keys, server_public, secret = keys_for(tmp_path, "alice")
    d = Daemon("--keys", str(keys))
    other_server_public, _ = zmq.curve_keypair()
    plain = Client("tcp://127.0.0.1:1", name="plain")  # replaced below, once the daemon serves
    wrong = plain
    try:
        d.wait_serving()
        plain = Client(d.address, name="plain")
        wrong = Client(
            d.address, name="wrong", server_public_key=other_server_public, client_secret_file=secret["alice"]
        )
        for c in (plain, wrong):
            c.connect()
        for c in (plain, wrong):
            ev = c.wait_for(lambda e: isinstance(e, StateEvent) and e.code == StateCode.AUTH_FAILED, 10)
            assert ev is not None, c.state_reason
        # Both keep retrying (ZeroMQ reconnects every 100 ms or so): still a line per interval and kind.
        plain.wait_for(lambda e: False, 3)
    finally:
        plain.close()
        wrong.close()
        text = stop(d)
    lines = [line for line in text.splitlines() if "refused a client" in line]
    # Which end sees a missing encryption first varies: the daemon, or the client, which then hangs up.
    unencrypted = [line for line in lines if "does not use encryption" in line or "without encryption" in line]
    other_key = [line for line in lines if "another server public key" in line]
    assert unencrypted and other_key, text
    for line in unencrypted + other_key:
        assert " INFO " in line and ("from 127.0.0.1:" in line or "from an unknown address" in line), line
    # One line per kind and address (a known one, and one for "unknown") in these few seconds.
    assert len(unencrypted) <= 4 and len(other_key) <= 2, lines
    assert any(line.endswith("could not be read)") and "during the handshake" in line for line in text.splitlines())


def test_a_client_with_keys_at_a_daemon_without_them_is_logged_and_names_are_escaped():
    d = Daemon()
    server_public, _ = zmq.curve_keypair()
    public, secret = zmq.curve_keypair()
    raw = None
    try:
        d.wait_serving()
        curve = Raw(d.address, curve_serverkey=server_public, curve_publickey=public, curve_secretkey=secret)
        curve.send("hello", protocol=protocol.PROTOCOL_VERSION, client="encrypted")
        raw = Raw(d.address)
        raw.send("hello", protocol=protocol.PROTOCOL_VERSION, client="evil\x1b[31m\n12:00:00 INFO forged line\u202e")
        raw.expect("welcome")
        deadline = time.monotonic() + 10
        while "refused a client" not in d.text() and time.monotonic() < deadline:
            time.sleep(0.1)
        curve.close()
    finally:
        if raw is not None:
            raw.close()
        text = stop(d)
    assert "uses encryption, and this daemon has none" in text or "with encryption does at a daemon" in text, text
    assert "\x1b" not in text and "\u202e" not in text
    assert not any(line.startswith("12:00:00 INFO forged") for line in text.splitlines())
    assert "(evil\\x1b[31m\\n12:00:00 INFO forged line\\u202e) connected" in text, text

"""Start a real ``smd-daemon serve --model tiny`` subprocess and talk to it."""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time

import zmq

from smd_daemon import protocol
from smd_daemon.client import Client, StateEvent

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
S = 64  # output side in tests: the smallest the engine accepts, so the CPU keeps up


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def daemon_env() -> dict:
    env = dict(os.environ)
    env["PYTHONPATH"] = ROOT + os.pathsep + env.get("PYTHONPATH", "")
    env.update(HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1", OMP_NUM_THREADS="1")
    return env


class Daemon:
    """One daemon process; its log goes to a temporary file shown on failure."""

    def __init__(
        self, *extra: str, port: int | None = None, bind: str | None = None, env: dict | None = None, stdin=None
    ):
        self.port = port or free_port()
        self.address = bind or f"tcp://127.0.0.1:{self.port}"
        self.log = tempfile.NamedTemporaryFile("w+", prefix="smd-daemon-", suffix=".log", delete=False)
        cmd = [
            sys.executable,
            "-m",
            "smd_daemon",
            "serve",
            "--model",
            "tiny",
            "--bind",
            self.address,
            "--threads",
            "1",
            *extra,
        ]
        self.proc = subprocess.Popen(
            cmd, env={**daemon_env(), **(env or {})}, stdin=stdin, stdout=self.log, stderr=subprocess.STDOUT, cwd=ROOT
        )

    def wait_serving(self, timeout: float = 120) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if "serving on" in self.text():
                return
            if self.proc.poll() is not None:
                raise AssertionError(f"daemon exited with {self.proc.returncode}:\n{self.text()}")
            time.sleep(0.1)
        raise AssertionError(f"daemon did not start in {timeout} s:\n{self.text()}")

    def text(self) -> str:
        with open(self.log.name) as f:
            return f.read()

    def stop(self, timeout: float = 30, sig: int = signal.SIGTERM) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired as e:
                self.proc.kill()
                self.proc.wait()
                raise AssertionError(f"daemon ignored signal {sig}:\n{self.text()}") from e
        return self.proc.returncode

    def close(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()
        self.log.close()
        if os.path.exists(self.log.name):  # close() may be called twice
            os.unlink(self.log.name)


@contextlib.contextmanager
def running(*extra: str, **kw):
    """A ``Daemon`` serving for the duration of the block, stopped and cleaned up after it."""
    d = Daemon(*extra, **kw)
    try:
        d.wait_serving()
        yield d
    finally:
        d.stop()
        d.close()


def run_cli(*args, timeout=60):
    """``smd-daemon ARGS`` in a subprocess, output captured as text."""
    return subprocess.run(
        [sys.executable, "-m", "smd_daemon", *args],
        env=daemon_env(),
        capture_output=True,
        text=True,
        timeout=timeout,
        cwd=ROOT,
    )


def keys_and_stranger(tmp_path):
    """A keys folder made by ``smd-daemon keys`` for client alice, a key pair the
    daemon does not know (mallory's secret file), and the server's public key."""
    import zmq.auth

    keys = tmp_path / "keys"
    assert run_cli("keys", str(keys), "--client", "alice").returncode == 0
    stranger = tmp_path / "stranger"
    stranger.mkdir()
    _, mallory_secret = zmq.auth.create_certificates(str(stranger), "mallory")
    return keys, mallory_secret, zmq.auth.load_certificate(str(keys / "server.key"))[0]


def connect(address: str, timeout: float = 30, **kw) -> Client:
    c = Client(address, **kw)
    c.connect()
    ev = c.wait_for(lambda e: isinstance(e, StateEvent) and e.state == "connected", timeout)
    assert ev is not None, f"no connection: {c.state} {c.state_reason}"
    return c


class Raw:
    """A bare DEALER socket speaking the protocol by hand (or not at all)."""

    def __init__(self, address: str, ctx: zmq.Context | None = None, **sockopts):
        self.sock = (ctx or zmq.Context.instance()).socket(zmq.DEALER)
        self.sock.setsockopt(zmq.LINGER, 0)
        self.sock.setsockopt(zmq.SNDTIMEO, 5000)  # a refused connection must fail the test, not hang it
        for k, v in sockopts.items():
            setattr(self.sock, k, v)
        self.sock.connect(address)

    def send(self, type_: str, parts=(), **fields) -> None:
        self.sock.send_multipart(protocol.encode(type_, parts, **fields))

    def send_frames(self, frames) -> None:
        self.sock.send_multipart(frames)

    def recv(self, timeout: float = 5.0):
        if not self.sock.poll(int(timeout * 1000)):
            return None
        return protocol.decode(self.sock.recv_multipart(), protocol.REPLIES)

    def expect(self, type_: str, timeout: float = 10.0):
        """The next message of this type, skipping pongs, frames and progress."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            m = self.recv(max(0.01, deadline - time.monotonic()))
            if m is None:
                break
            if m.type == type_:
                return m
            if m.type == "error" and type_ != "error":
                raise AssertionError(f"expected {type_}, got error {m.header}")
        raise AssertionError(f"no {type_} within {timeout} s")

    def handshake(self, open_session: bool = True):
        self.send("hello", protocol=protocol.PROTOCOL_VERSION, client="raw-test")
        welcome = self.expect("welcome")
        if open_session:
            self.send("open")
            self.expect("opened")
        return welcome

    def live(self, name: str = "a slow snail") -> None:
        """A one-layer scene and live mode, in raw messages (after ``handshake``)."""
        self.send(
            "update",
            [half_mask()],
            revision=1,
            full=True,
            width=S,
            height=S,
            layers=[{"key": "1", "name": name, "alpha": {"part": 0}}],
        )
        self.expect("scene")
        self.send("live_start", encoding="raw")
        self.expect("live")

    def close(self) -> None:
        # Free the session now rather than at the heartbeat timeout, so
        # tests do not use up the daemon's sessions.
        try:  # without blocking: a socket the daemon refused has nowhere to send
            self.sock.send_multipart(protocol.encode("close"), flags=zmq.NOBLOCK)
        except zmq.ZMQError:
            pass
        self.sock.close(linger=100)


def half_mask(side: int = S, left: bool = True) -> bytes:
    row = (
        (b"\xff" * (side // 2) + b"\x00" * (side - side // 2))
        if left
        else (b"\x00" * (side // 2) + b"\xff" * (side - side // 2))
    )
    return row * side


@contextlib.contextmanager
def serving(srv):
    """Run an in-process ``Server`` on a thread for the duration of the block."""
    ready = threading.Event()

    def serve():
        srv.start()
        ready.set()
        srv.serve_forever()

    t = threading.Thread(target=serve, daemon=True)
    t.start()
    assert ready.wait(10)
    try:
        yield srv
    finally:
        srv.stopping.set()
        t.join(10)
        srv.shutdown()


def process_alive(pid: int) -> bool:
    """Whether ``pid`` runs (a zombie waiting for its reaper does not)."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


def wait_gone(pid: int, timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if not process_alive(pid):
            return True
        time.sleep(0.05)
    return False

"""The channel between a cluster's front end and its workers: what crosses it and who may use it.

The codec: every message kind the cluster sends round-trips, and junk
(pickles, unknown types, wrong dtypes, lying shapes, oversize arrays) is
refused without building anything. The sockets: a real front end and worker
on a socket file, a peer without this run's keys refused by ZeroMQ and
logged, junk from an authenticated peer costing one message.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import pickle
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time

import numpy as np
import pytest
import zmq
from cluster_util import ClusterDaemon, ray_missing

from smd_daemon.cluster import wire
from smd_daemon.cluster.codec import CodecError
from smd_daemon.engine.scene import Background, Control, Region, Scene
from smd_daemon.errors import UsageError
from smd_daemon.server import messages as m
from smd_daemon.server.images import EncodedImage
from smd_daemon.server.limits import GIB, Limits


def _scene() -> Scene:
    mask = np.zeros((64, 96), np.uint8)
    mask[:, :48] = 255
    soft = np.linspace(0, 1, 64 * 96, dtype=np.float32).reshape(64, 96)
    image = np.arange(64 * 96 * 3, dtype=np.uint8).reshape(64, 96, 3)
    return Scene(
        96,
        64,
        [
            Region("a red fox", mask, name="fox"),
            Region("a blue sky", soft, negative_prompt="clouds", mask_std=0.0, prompt_strength=0.5),
        ],
        Background("snow", "blur", image, 0.4),
        seed=2**63 - 1,
        steps=4,
        region_mode="attention",
        controls=[Control("lineart", image[::-1].copy(), 0.8, 0.0, 0.6, name="control: lineart")],
    )


def _messages() -> list:
    """One of each kind the cluster sends, both ways."""
    scene = _scene()
    frame = np.arange(64 * 96 * 3, dtype=np.uint8).reshape(64, 96, 3)
    jpeg = EncodedImage(b"\xff\xd8jpegbytes", "jpeg", (64, 96, 3), 1.5)
    job = m.Job(7, scene, wire.PLAN_ON_WORKER, 3, "png", 80, re=12)
    return [
        wire.Hello(
            "w0",
            "abc",
            "ready",
            "10.0.0.1",
            "cpu",
            4242,
            {"name": "tiny", "native_size": 512, "meaningful": False, "extra": None},
            "",
            {"region_modes": ("latent", "attention"), "max_steps": 50, "kind": "lcm"},
            1.5e9,
        ),
        wire.Stats("w0", "abc", 2, 1000, 12.25),
        wire.Credit("s1", 9),
        wire.Reset("its sessions moved elsewhere"),
        m.OpenSession("s1", None),
        m.CloseSession("s1"),
        m.SetScene("s1", scene, 3, wire.PLAN_ON_WORKER),
        m.SetLive("s1", True, 0.1, "jpeg", 70),
        m.QueueJob("s1", job),
        m.CancelJobs("s1", (7, 8), re=13),
        m.CancelJobs("s1", None),
        m.FrameReady("s1", frame, 3, 7, True, 4, 12.5, 2, worker="w1"),
        m.FrameReady("s1", jpeg, 4, 7, False, 4, np.float32(3.5), 1, worker="w1"),
        m.JobProgress("s1", 7, 2, 4),
        m.JobResult("s1", dataclasses.replace(job, scene=None, plan=None), jpeg, 80.0, worker="w0"),
        m.JobResult("s1", dataclasses.replace(job, scene=None, plan=None), frame, 80.0, worker="w0"),
        m.JobCancelled("s1", 7, 13),
        m.SessionError("s1", "engine_error", "the engine failed: boom", {"job": 7}, live_stopped=True),
    ]


def _same(a, b) -> bool:
    if isinstance(a, np.ndarray):
        return isinstance(b, np.ndarray) and a.dtype == b.dtype and a.shape == b.shape and np.array_equal(a, b)
    if dataclasses.is_dataclass(a):
        return type(a) is type(b) and all(_same(getattr(a, f.name), getattr(b, f.name)) for f in dataclasses.fields(a))
    if isinstance(a, (list, tuple)):
        return type(a) is type(b) and len(a) == len(b) and all(_same(x, y) for x, y in zip(a, b))
    if isinstance(a, dict):
        return isinstance(b, dict) and a.keys() == b.keys() and all(_same(a[k], b[k]) for k in a)
    return a == b and type(a) is type(b) or (isinstance(a, np.floating) and float(a) == b)


# --- the codec ------------------------------------------------------------------------------


def test_every_message_kind_the_cluster_sends_round_trips_with_arrays_as_their_own_frames():
    sent = _messages()
    assert {type(x) for x in sent} | {m.Job, Scene, Region, Background, Control, EncodedImage} == set(
        wire.CODEC.types.values()
    ), "a type that may cross has no round trip here"
    for msg in sent:
        frames = wire.dumps(msg)
        json.loads(frames[0])  # the header is plain JSON
        for writable in (False, True):
            back = wire.loads([zmq.Frame(f) for f in frames], writable=writable)
            assert _same(msg, back), (msg, back)
    scene_frames = wire.dumps(sent[6])
    # masks, image and control picture, raw
    assert [len(f) for f in scene_frames[1:]] == [64 * 96, 64 * 96 * 4, 64 * 96 * 3, 64 * 96 * 3]
    back = wire.loads(scene_frames, writable=True)
    assert back.scene.regions[1].mask.flags.writeable and back.plan is wire.PLAN_ON_WORKER
    assert not wire.loads(scene_frames).scene.background.image.flags.writeable  # views of the frames


def _refused(frames: list, what: str) -> None:
    with pytest.raises(CodecError) as e:
        wire.loads(frames)
    assert what in str(e.value), str(e.value)


def _header(tree) -> bytes:
    return json.dumps(tree).encode()


class Payload:
    """What an attacker would send: unpickling it creates a file."""

    def __init__(self, path: str):
        self.path = path

    def __reduce__(self):
        return (open, (self.path, "w"))


def test_junk_is_refused_before_anything_is_built(tmp_path):
    marker = tmp_path / "pwned"
    good = wire.dumps(m.FrameReady("s", np.zeros((8, 8, 3), np.uint8), 1, 1, True, 1, 1.0, 1))
    head = json.loads(good[0])

    def frame(**image) -> dict:
        return {**head, "v": {**head["v"], "image": {**head["v"]["image"], **image}}}

    _refused([pickle.dumps(Payload(str(marker)))], "not JSON")
    _refused([pickle.dumps(wire.Credit("s", 1))], "not JSON")  # even a harmless pickle
    assert not marker.exists()
    _refused([_header({"$": "Popen", "v": {"args": "touch x"}})], "unknown type 'Popen'")
    _refused([_header({"$": "Credit", "v": {"session": "s", "allowed": 1, "__class__": 1}})], "no field '__class__'")
    _refused([_header({"$": "Credit", "v": {"session": "s"}})], "allowed")  # a required field missing
    _refused([_header({"v": {}})], "without a type")
    _refused([_header({"$": ["Credit"], "v": {}})], "without a type")
    _refused([_header([1, 2])], "not a message")
    _refused([_header({"$": "tuple", "v": [1]})], "not a message")
    _refused([_header({"$": "PlanOnWorker"})], "not a message")
    _refused([_header(frame(dtype="|O")), good[1]], "arrays of '|O'")
    _refused([_header(frame(dtype="<f8", shape=[8, 8, 3])), bytes(8 * 8 * 3 * 8)], "arrays of '<f8'")
    _refused([_header(frame(shape=[8, 8, 4])), good[1]], "in a frame of 192 bytes")
    _refused([_header(frame(shape=[8, -8, 3])), good[1]], "bad array shape")
    _refused([_header(frame(shape=[8, 8, 3, 1])), good[1]], "bad array shape")
    _refused([_header(frame(shape=[100_000, 100_000, 3])), good[1]], "at most")  # checked before allocating
    _refused([_header(frame(i=5)), good[1]], "does not exist")
    _refused([good[0], good[1], b"more"], "1 frames that no field refers to")
    _refused([good[0], *[b""] * 70], "a message has 1 to")
    _refused([b"[" * 100_000], "not JSON")
    nested = {"$": "Reset", "v": {"reason": [[[[[[[[[[[[[[["deep"]]]]]]]]]]]]]]]}}
    _refused([_header(nested)], "nested deeper")
    _refused([b" " * (2 << 20)], "header of")
    with pytest.raises(CodecError):
        wire.dumps(Payload("x"))  # only the allowed types leave, too
    with pytest.raises(CodecError):
        wire.dumps(m.SessionError("s", "x", "y", {"f": object()}))


# --- the sockets ------------------------------------------------------------------------------


@pytest.fixture
def private_folder():
    folder = tempfile.mkdtemp(prefix="smdc-", dir="/tmp")
    yield folder
    for name in os.listdir(folder):
        os.unlink(os.path.join(folder, name))
    os.rmdir(folder)


def _front(folder: str):
    from smd_daemon.cluster.frontend import ClusterServer

    server = ClusterServer("tcp://127.0.0.1:0", Limits(), None, per_worker=2)
    address = server.open_worker_socket(f"ipc://{folder}/workers")
    server.dispatcher.add_worker("w0")
    return server, address


def _pump(server, seconds: float, until=None) -> None:
    """Run the front end's reading of its worker sockets for a while (as its I/O thread does)."""
    poller = zmq.Poller()
    for sock in server.extra_sockets:
        poller.register(sock, zmq.POLLIN)
    end = time.monotonic() + seconds
    while time.monotonic() < end and not (until and until()):
        for sock, _ in poller.poll(50):
            server.extra_sockets[sock]()


def test_the_socket_folder_must_be_private_and_ours(private_folder):
    from smd_daemon.cluster.frontend import ClusterServer

    for mode in (0o755, 0o770, 0o777):
        os.chmod(private_folder, mode)
        server = ClusterServer("tcp://127.0.0.1:0", Limits(), None, per_worker=2)
        try:
            with pytest.raises(UsageError, match=f"mode {mode:04o}"):
                server.open_worker_socket(f"ipc://{private_folder}/workers")
        finally:
            server.shutdown()
    assert os.listdir(private_folder) == []  # nothing bound there
    if os.geteuid() == 0:
        os.chmod(private_folder, 0o700)
        os.chown(private_folder, 65534, 65534)
        server = ClusterServer("tcp://127.0.0.1:0", Limits(), None, per_worker=2)
        try:
            with pytest.raises(UsageError, match="owned by uid 65534"):
                server.open_worker_socket(f"ipc://{private_folder}/workers")
        finally:
            server.shutdown()
        os.chown(private_folder, 0, 0)


def test_a_peer_without_this_runs_keys_is_refused_by_zeromq_and_logged(private_folder, caplog, tmp_path):
    from smd_daemon.cluster.worker import EngineWorker

    caplog.set_level(logging.INFO)
    server, address = _front(private_folder)
    marker = tmp_path / "pwned"
    ctx = zmq.Context()
    worker = None
    try:
        assert address == f"ipc://{private_folder}/workers"
        plain = ctx.socket(zmq.DEALER)  # no CURVE at all
        stranger = ctx.socket(zmq.DEALER)  # CURVE with a key of its own
        stranger.curve_serverkey = server.keys.server_public
        stranger.curve_publickey, stranger.curve_secretkey = zmq.curve_keypair()
        for s, told in (
            (plain, "refused a connection to the workers' socket: "),
            (stranger, "refused a connection to the workers' socket: its CURVE key SHA256:"),
        ):
            s.setsockopt(zmq.LINGER, 0)
            s.connect(address)
            try:
                s.send_multipart([pickle.dumps(Payload(str(marker)))], zmq.NOBLOCK)
            except zmq.Again:  # ZeroMQ refused the handshake already and dropped the pipe: nothing to queue on
                pass
            _pump(server, 5, until=lambda: told in caplog.text)
            assert told in caplog.text
            caplog.clear()
        assert not server.dispatcher.by_identity and not marker.exists()
        for s in (plain, stranger):
            assert s.poll(200) == 0  # nothing came back

        # This run's worker connects over the same socket file.
        worker = EngineWorker("w0", address, server.worker_keys(), GIB, GIB)
        worker.connect()
        _pump(server, 10, until=lambda: server.dispatcher.workers["w0"].state == "loading")
        w = server.dispatcher.workers["w0"]
        assert w.state == "loading"

        # Junk from a peer that holds the keys costs one message, on either end.
        insider = ctx.socket(zmq.DEALER)
        keys = server.worker_keys()
        insider.curve_serverkey, insider.curve_publickey = keys.server_public, keys.worker_public
        insider.curve_secretkey = keys.worker_secret
        insider.setsockopt(zmq.LINGER, 0)
        insider.connect(address)
        insider.send_multipart([pickle.dumps(Payload(str(marker)))])
        server.dispatcher.sock.send_multipart([w.identity, pickle.dumps(Payload(str(marker)))])
        _pump(
            server, 5, until=lambda: "refused a message from the front end" in caplog.text and "a worker" in caplog.text
        )
        assert "refused a message from a worker: the header is not JSON" in caplog.text
        assert "refused a message from the front end: the header is not JSON" in caplog.text
        worker.failed("ModelLoadError: nothing here")
        _pump(server, 10, until=lambda: w.state == "failed")
        assert w.state == "failed" and w.error == "ModelLoadError: nothing here"  # both links survived
        assert not marker.exists()
    finally:
        if worker is not None:
            worker.stop()
        ctx.destroy(linger=0)
        server.shutdown()


# --- another local user against a real daemon ----------------------------------------------------

ATTACKER = r"""
import json, os, pickle, socket, sys, time

mode, folder, path, marker, ray_temp = sys.argv[1:6]


class Payload:
    def __reduce__(self):
        return (open, (marker, "w"))


payload = pickle.dumps(Payload())
own = os.path.join(sys.argv[6], "evil")  # a socket file of the attacker's own, to move over the daemon's
out = {}
if mode == "closed":
    for what, where in (("list", folder), ("ray", os.path.join(ray_temp, "session_latest", "sockets"))):
        try:
            out[what] = os.listdir(where)
        except PermissionError:
            out[what] = "denied"
    s = socket.socket(socket.AF_UNIX)
    try:
        s.connect(path)
        out["connect"] = "connected"
    except OSError as e:
        out["connect"] = "denied" if isinstance(e, PermissionError) else e.strerror
    s = socket.socket(socket.AF_UNIX)
    s.bind(own)
    try:
        os.rename(own, path)
        out["replace"] = "replaced"
    except PermissionError:
        out["replace"] = "denied"
    os.unlink(own)
    print(json.dumps(out), flush=True)
    sys.exit()

import zmq

ctx = zmq.Context()
received = []
for curve in (False, True):  # plainly, then with a key of its own (the server's key is not known)
    s = ctx.socket(zmq.DEALER)
    if curve:
        s.curve_serverkey = zmq.curve_keypair()[0]
        s.curve_publickey, s.curve_secretkey = zmq.curve_keypair()
    s.connect("ipc://" + path)
    s.send_multipart([payload], zmq.NOBLOCK)
    if s.poll(3000):
        received.append(s.recv_multipart())
    s.close(0)  # or it would reconnect to its own socket below
out["answered"] = len(received)
router = ctx.socket(zmq.ROUTER)  # what a worker would find at the path from now on
router.bind("ipc://" + own)
os.rename(own, path)
print("replaced", flush=True)
poller = zmq.Poller()
poller.register(router, zmq.POLLIN)
poller.register(sys.stdin.fileno(), zmq.POLLIN)
out["heard"] = 0
while True:
    ready = dict(poller.poll(60_000))
    if router in ready:
        frames = router.recv_multipart()
        out["heard"] += 1
        router.send_multipart([frames[0], payload])
    else:
        break  # the test closed stdin (or a minute passed)
print(json.dumps(out), flush=True)
"""


def _as_nobody() -> list[str] | None:
    """A command prefix that runs a Python with pyzmq as the unprivileged user ``nobody``."""
    if os.geteuid() != 0 or shutil.which("setpriv") is None:
        return None
    for python in (sys.executable, "/usr/bin/python3"):
        cmd = ["setpriv", "--reuid=nobody", "--regid=nogroup", "--clear-groups", python]
        if subprocess.run([*cmd, "-c", "import zmq"], capture_output=True).returncode == 0:
            return cmd
    return None


@ray_missing
@pytest.mark.skipif(_as_nobody() is None, reason="needs root, setpriv and a Python with pyzmq that nobody may run")
def test_another_local_user_can_neither_reach_nor_replace_the_workers_socket_nor_run_code(tmp_path):
    nobody = _as_nobody()
    marker = tmp_path / "pwned"  # only root can create it here: it exists if the daemon ran the payload
    scratch = tempfile.mkdtemp(prefix="smdn-", dir="/tmp")
    os.chmod(scratch, 0o777)  # the attacker's own folder
    script = os.path.join(scratch, "attack.py")
    with open(script, "w") as f:
        f.write(ATTACKER)
    os.chmod(script, 0o644)
    d = ClusterDaemon("--workers", "1")
    os.chmod(d.tmp, 0o755)  # the daemon's temp folder, as open to others as /tmp: only its own folders are private
    attacker = None
    try:
        d.wait_serving(180)
        path = re.search(r"they connect to ipc://(\S+)", d.text()).group(1)
        ray_temp = re.search(r"joined a private Ray instance \(temp dir (\S+)\)", d.text()).group(1)
        folder = os.path.dirname(path)
        assert "smd-ray-" not in folder  # not in the folder Ray opens to everyone
        assert os.stat(ray_temp).st_mode & 0o777 == 0o777  # Ray's own, opened to all, in a folder that is not
        args = [script, "closed", folder, path, str(marker), ray_temp, scratch]
        closed = subprocess.run([*nobody, *args], capture_output=True, text=True, timeout=60)
        found = json.loads(closed.stdout)
        assert found == {"list": "denied", "ray": "denied", "connect": "denied", "replace": "denied"}, closed.stderr

        # The second lock: a folder opened to everyone (as Ray 2.60 opens its own) still lets nobody in.
        os.chmod(folder, 0o777)
        os.chmod(path, 0o777)
        args[1] = "open"
        attacker = subprocess.Popen(
            [*nobody, *args], stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
        )
        assert attacker.stdout.readline().strip() == "replaced", attacker.stderr.read()
        os.kill(d.worker_pid("w0"), signal.SIGKILL)  # Ray starts the worker again: it connects to the attacker
        deadline = time.monotonic() + 90
        while "cannot reach the front end at ipc://" not in d.text() and time.monotonic() < deadline:
            time.sleep(0.5)
        attacker.stdin.close()
        found = json.loads(attacker.stdout.readline())
        assert found == {"answered": 0, "heard": 0}, found
        assert not marker.exists()
        log = d.text()
        assert "refused a connection to the workers' socket: " in log  # the attacker's own connections
        assert re.search(r"\[w0\] smd_daemon.cluster: cannot reach the front end at ipc://\S+: ", log), log
        assert "was removed or replaced by another process" in log
        assert d.stop(timeout=30) == 0, d.text()
    finally:
        if attacker is not None and attacker.poll() is None:
            attacker.kill()
        d.close()
        shutil.rmtree(scratch, ignore_errors=True)

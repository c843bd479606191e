"""The cluster daemon (``serve --ray``): its parts in-process, then the real thing.

In-process: a ``ClusterServer`` front end and ``EngineWorker``s on loopback
ZeroMQ in this process (the frame path, placement, a worker that cannot load
its model, the last worker lost and back), without Ray. Then real
``smd-daemon serve --ray local`` processes with Ray actors as workers.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time

import pytest
from cluster_util import ClusterDaemon, alive, family_of, frames_of, kill_all, private_env, ray_missing
from daemon_util import ROOT, Daemon, Raw, S, connect, daemon_env, free_port, half_mask

from smd_daemon import protocol
from smd_daemon.client import Layer
from smd_daemon.server import messages as m
from smd_daemon.server.frames import FrameFlow
from smd_daemon.server.limits import GIB, Limits

E = protocol.ErrorCode


# --- parts -------------------------------------------------------------------------------


def test_a_worker_makesframes_of_only_within_the_front_ends_credit():
    from smd_daemon.cluster.worker import RemoteFlow

    delivered = []
    flow = RemoteFlow("s", lambda f, frame: delivered.append(frame))
    assert not flow.can_make()  # nothing granted yet
    flow.credit(2)
    flow.start_making()
    assert flow.can_make()
    flow.start_making()
    assert not flow.can_make()
    flow.made("frame-1")
    flow.made(None)  # a failed step gives its place back
    assert flow.can_make() and delivered == ["frame-1"]
    flow.credit(1)  # credit never shrinks
    assert flow.allowed == 2


def test_frame_flow_reports_its_room_and_when_it_grows():
    flow = FrameFlow(window=2)
    grew = []
    flow.on_room = lambda: grew.append(flow.room())
    assert flow.room() == 3
    flow.made(m.FrameReady("s", None, 1, 1, True, 1, 1.0, 1))
    frame, seq, token = flow.next_to_send()
    assert flow.room() == 2
    assert not flow.ack(seq, token + 1) and grew == []  # a wrong token changes nothing
    assert flow.ack(seq, token) and grew == [3]
    flow.stop()
    assert grew == [3, 3]


def test_placement_picks_the_least_engine_time_and_keeps_sessions_below_the_cap():
    from smd_daemon.cluster.frontend import Dispatcher, Worker

    d = Dispatcher(None, None, per_worker=2)
    d.workers = {
        "w0": Worker("w0", "ready", load=0.9, sessions={"a"}),
        "w1": Worker("w1", "ready", load=0.2, sessions={"b", "c"}),
        "w2": Worker("w2", "failed"),
        "w3": Worker("w3", "loading"),
    }
    assert d._choose(new=True).id == "w0"  # w1 is less busy but full
    assert d._choose(new=False).id == "w1"  # a session moved from a lost worker goes to the least busy
    d.workers["w0"].sessions.add("d")
    assert d._choose(new=True) is None


class _Sent:
    """Stands in for the dispatcher's ROUTER socket: what was sent, to whom."""

    def __init__(self):
        self.log = []

    def send_multipart(self, frames, flags=0, copy=True):
        from smd_daemon.cluster import wire

        self.log.append((frames[0], wire.loads(frames[1:])))

    def to(self, identity: bytes) -> list:
        return [type(msg).__name__ for who, msg in self.log if who == identity]


def test_the_front_end_learns_its_workers_control_kinds_and_refuses_another_kind_as_a_worker_would():
    from types import SimpleNamespace

    import numpy as np

    from smd_daemon.cluster import wire
    from smd_daemon.cluster.frontend import Dispatcher, FrontEngine
    from smd_daemon.engine.scene import Control, Scene, UnknownControl
    from smd_daemon.server.router import model_abilities

    front = FrontEngine()
    server = SimpleNamespace(engine=front, front=front, post=[].append, sessions=SimpleNamespace(event=[].append))
    d = Dispatcher(server, _Sent(), per_worker=4)
    d.add_worker("w0")
    can = {"region_modes": ("latent",), "max_steps": 50, "kind": "lcm", "control_kinds": ("lineart",)}
    d._from_worker(b"a", wire.Hello("w0", "a", "ready", started=1.0, can=can))
    assert model_abilities(front)["controls"] == ["lineart"]  # what the front's hello tells clients
    image = np.zeros((64, 64, 3), np.uint8)
    front.check(Scene(64, 64, controls=[Control("lineart", image)]))
    with pytest.raises(UnknownControl, match="no depth model"):
        front.check(Scene(64, 64, controls=[Control("depth", image)]))


def test_dispatcher_moves_sessions_from_a_restarted_or_silent_worker_and_ignores_an_older_process():
    from types import SimpleNamespace

    from smd_daemon.cluster import wire
    from smd_daemon.cluster.frontend import WORKER_TIMEOUT_S, Dispatcher, FrontEngine

    posted = []
    front = FrontEngine()
    server = SimpleNamespace(
        engine=front, front=front, post=posted.append, sessions=SimpleNamespace(event=posted.append)
    )
    sock = _Sent()
    d = Dispatcher(server, sock, per_worker=4)
    for wid in ("w0", "w1"):
        d.add_worker(wid)
    ready = {"region_modes": ("latent",), "max_steps": 50, "kind": "lcm"}
    d._from_worker(b"a", wire.Hello("w0", "a", "ready", started=1.0, can=ready))
    d._from_worker(b"b", wire.Hello("w1", "b", "ready", started=1.0, can=ready))
    for sid in ("s1", "s2"):
        d.send(m.OpenSession(sid, FrameFlow(2)))
    d.send(m.SetScene("s1", "scene-1", 3, wire.PLAN_ON_WORKER))
    d.send(m.SetScene("s2", "scene-2", 5, wire.PLAN_ON_WORKER))
    on = {r.session: r.worker.id for r in d.routes.values()}
    assert sorted(on.values()) == ["w0", "w1"]  # spread over both

    moved = next(sid for sid, wid in on.items() if wid == "w1")
    sock.log.clear()
    d._from_worker(b"b2", wire.Hello("w1", "b2", "loading", started=2.0))  # Ray restarted w1's process
    assert d.routes[moved].worker.id == "w0"
    assert sock.to(b"a") == ["OpenSession", "Credit", "SetScene"]  # replayed where it moved
    assert d.workers["w1"].starts == 2

    sock.log.clear()
    d._from_worker(b"b", wire.Hello("w1", "b", "ready", started=1.0))  # the replaced process comes back
    d._from_worker(b"b", wire.Stats("w1", "b", 0, 0, 0.0))
    assert d.workers["w1"].state == "loading" and sock.log == []  # ignored, not reset

    d._from_worker(b"b2", wire.Hello("w1", "b2", "ready", started=2.0))
    d.tick(time.monotonic() + WORKER_TIMEOUT_S + 1)  # w0 (and w1) silent: both lost
    assert all(r.worker is None for r in d.routes.values())
    told = [e for e in posted if isinstance(e, m.SessionError)]
    assert len(told) == 2 and all("no engine worker" in e.message for e in told)

    sock.log.clear()
    d._from_worker(b"a3", wire.Hello("w0", "a3", "ready", started=3.0))  # back: both sessions resume there
    assert {r.worker.id for r in d.routes.values()} == {"w0"}
    assert sock.to(b"a3").count("SetScene") == 2


def test_ray_addresses_are_checked_before_anything_starts():
    from smd_daemon.cluster.ray_workers import parse_target
    from smd_daemon.errors import UsageError

    assert parse_target("local") == ("local", "", 0)
    assert parse_target("ray://head.studio:10001") == ("client", "head.studio", 10001)
    assert parse_target("10.0.0.5:6379") == ("gcs", "10.0.0.5", 6379)
    for bad in ("", "lokal", "ray://head", "head:0", "head:99999", "http://head:1"):
        with pytest.raises(UsageError):
            parse_target(bad)


# --- in-process: front end and workers on loopback, no Ray ---------------------------------


class InProcessCluster:
    """A ``ClusterServer`` serving on loopback, its I/O loop in a thread."""

    def __init__(self, worker_ids, per_worker: int):
        from smd_daemon.cluster.frontend import ClusterServer

        self.address = f"tcp://127.0.0.1:{free_port()}"
        self.server = ClusterServer(self.address, Limits(max_fps=20, heartbeat_timeout=5), None, per_worker)
        self.server.open_socket()
        self.workers_address = self.server.open_worker_socket("tcp://127.0.0.1")  # CURVE, as across nodes
        for wid in worker_ids:
            self.server.dispatcher.add_worker(wid)
        self.workers = []
        self.thread = None

    def worker(self, wid: str):
        from smd_daemon.cluster.worker import EngineWorker

        w = EngineWorker(wid, self.workers_address, self.server.worker_keys(), GIB, GIB, node="here", device="cpu")
        w.connect()
        self.workers.append(w)
        return w

    def wait_state(self, wid: str, state: str, timeout: float = 10):
        deadline = time.monotonic() + timeout
        d = self.server.dispatcher
        while d.workers[wid].state != state:
            assert time.monotonic() < deadline, f"{wid} is {d.workers[wid].state}, not {state}"
            if self.thread is None and d.sock.poll(50):
                d.on_readable()
            time.sleep(0.01)

    def serve(self, model_info: dict):
        self.server.model_info = model_info
        self.server.limits.max_sessions = 8
        self.server.start()
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def close(self):
        self.server.stopping.set()
        if self.thread is not None:
            self.thread.join(5)
        for w in self.workers:
            w.stop()
        self.server.shutdown()


def _open_refused(address: str) -> str:
    """The error code a new session gets (after a welcome)."""
    raw = Raw(address)
    try:
        raw.handshake(open_session=False)
        raw.send("open")
        return raw.expect("error").header["code"]
    finally:
        raw.close()


def test_in_process_worker_that_cannot_load_gets_no_sessions_and_the_last_worker_lost_comes_back(tiny_components):
    from smd_daemon.options import make_engine

    c = InProcessCluster(["w0", "w1"], per_worker=2)
    clients = []
    try:
        good = c.worker("w0")
        good.serve(make_engine(tiny_components), tiny_components.describe())
        c.worker("w1").failed("ModelLoadError: model '/models/x': no such file or folder")
        c.wait_state("w0", "ready")
        c.wait_state("w1", "failed")
        c.serve(tiny_components.describe())

        clients = [connect(c.address, name=f"artist{i}") for i in range(2)]
        workers = {w["id"]: w for w in clients[0].info["workers"]}
        assert workers["w1"]["state"] == "failed" and "no such file" in workers["w1"]["error"]
        for i, cl in enumerate(clients):
            cl.set_scene(S, S, [Layer("1", f"a red fox {i}", half_mask())], background_prompt="snow")
            cl.start_live("jpeg" if i else "raw")
        got = frames_of(clients, 2, 60)
        for frames in got:
            assert len(frames) >= 2 and {f.header["worker"] for f in frames} == {"w0"}
        assert got[1][-1].encoding == "jpeg" and got[1][-1].data[:2] == b"\xff\xd8"  # compressed on the worker

        assert _open_refused(c.address) == E.BUSY  # w0 is full (2 sessions) and w1 cannot draw

        good.stop()  # the only usable worker is gone: clients are told, and keep their sessions
        errors: list = []
        deadline = time.monotonic() + 20
        while len(errors) < 2 and time.monotonic() < deadline:
            frames_of(clients, 1, 0.2, worker="none", errors=errors)
        assert len(errors) == 2
        for e in errors:
            assert e.code == E.ENGINE_ERROR and "no engine worker" in e.message
        back = c.worker("w0")  # a new process for w0, as Ray restarts one
        back.serve(make_engine(tiny_components), tiny_components.describe())
        assert all(len(g) >= 2 for g in frames_of(clients, 2, 60, worker="w0")), "frames did not resume"
    finally:
        for cl in clients:
            cl.close()
        c.close()


# --- the real daemon with a private Ray instance --------------------------------------------


@ray_missing
def test_cluster_spreads_artists_over_workers_survives_a_killed_worker_and_stops_clean():
    d = ClusterDaemon("--workers", "2", "--max-sessions", "2", "--max-fps", "10")
    clients = []
    try:
        d.wait_serving(180)
        placed = {}
        for i in range(4):
            cl = connect(d.address, name=f"artist{i}")
            clients.append(cl)
            cl.set_scene(S, S, [Layer("1", f"a red fox {i}", half_mask())], background_prompt="snow")
            cl.start_live("raw")
            frames = frames_of(clients, 2, 60)[-1]
            assert len(frames) >= 2, f"client {i} got no frames:\n{d.text()}"
            placed[i] = frames[-1].header["worker"]
            if i == 2:  # with a session free for it: check lists the workers
                check = subprocess.run(
                    [sys.executable, "-m", "smd_daemon", "check", d.address],
                    capture_output=True,
                    text=True,
                    env=daemon_env(),
                    cwd=ROOT,
                    timeout=60,
                )
                assert check.returncode == 0, check.stderr
                assert "workers: 2 of 2 ready" in check.stdout
                for wid in ("w0", "w1"):
                    line = next(x for x in check.stdout.splitlines() if x.startswith(f"  {wid}: ready, node "))
                    assert " sessions, " in line and " frames/s" in line
        assert set(placed.values()) == {"w0", "w1"}  # both workers draw

        assert _open_refused(d.address) == E.BUSY  # 2 workers x 2 sessions: the fifth artist is told the daemon is busy

        victim = placed[0]
        survivor = "w1" if victim == "w0" else "w0"
        os.kill(d.worker_pid(victim), signal.SIGKILL)
        killed_at = time.monotonic()
        errors: list = []
        got = frames_of(clients, 2, 30, worker=survivor, errors=errors)
        assert all(len(g) >= 2 for g in got), f"not every client streams 30 s after the kill:\n{d.text()}"
        assert time.monotonic() - killed_at < 30 and errors == []  # a gap, not an error
        assert f"worker {victim} lost" in d.text()

        for cl in clients:
            cl.close()
        clients = []
        family = d.family()
        assert len(family) >= 4  # Ray's own processes and the two workers
        t0 = time.monotonic()
        assert d.stop(timeout=30) == 0, d.text()
        assert time.monotonic() - t0 < 15
        time.sleep(0.5)
        assert alive(family) == [], "Ray processes were left behind"
        assert [n for n in os.listdir(d.tmp) if n.startswith("smd-")] == [], "Ray's or the socket's folder was left"
    finally:
        for cl in clients:
            cl.close()
        d.close()


def _serve_fails(*args: str, env=None, timeout: float = 180) -> tuple[str, float]:
    t0 = time.monotonic()
    p = subprocess.run(
        [
            sys.executable,
            "-m",
            "smd_daemon",
            "serve",
            "--model",
            "tiny",
            "--threads",
            "1",
            "--bind",
            f"tcp://127.0.0.1:{free_port()}",
            *args,
        ],
        capture_output=True,
        text=True,
        env={**daemon_env(), **(env or {})},
        cwd=ROOT,
        timeout=timeout,
    )
    assert p.returncode == 2, p.stderr
    last = p.stderr.strip().splitlines()[-1]
    assert last.startswith("smd-daemon serve: error: ") and "Traceback" not in p.stderr, p.stderr
    return last, time.monotonic() - t0


@ray_missing
def test_bad_or_unreachable_ray_addresses_fail_at_start_in_one_line():
    line, _ = _serve_fails("--ray", "ray://head")
    assert "--ray 'ray://head': give local, auto" in line
    line, seconds = _serve_fails("--ray", f"127.0.0.1:{free_port()}")
    # Told at once, not after Ray's own retries (minutes); the bound leaves room for a loaded machine's start.
    assert "cannot reach the Ray cluster at 127.0.0.1:" in line and seconds < 90
    line, _ = _serve_fails("--workers", "2")
    assert "--workers needs --ray" in line
    line, _ = _serve_fails("--ray", "local", "--model-kind", "foo")  # before Ray starts
    assert "unknown model kind 'foo'" in line


@ray_missing
def test_a_cluster_where_no_worker_can_load_the_model_fails_at_start_with_the_models_error():
    tmp, env = private_env()
    try:
        line, _ = _serve_fails("--ray", "local", "--workers", "1", "--model", "/nonexistent/model", env=env)
        assert "no engine worker could start: w0: ModelLoadError: model '/nonexistent/model'" in line
        assert family_of(-1, tmp) == set() and [n for n in os.listdir(tmp) if n.startswith("smd-")] == []
        # The speed switches travel to the workers, which refuse what their device cannot do.
        line, _ = _serve_fails("--ray", "local", "--workers", "1", "--compile", env=env)
        assert "no engine worker could start: w0: UsageError: torch.compile needs a CUDA device" in line
        assert family_of(-1, tmp) == set()
    finally:
        kill_all(family_of(-1, tmp), tmp)


def test_ray_missing_is_one_line_saying_how_to_install_it(tmp_path):
    (tmp_path / "ray.py").write_text("raise ImportError('No module named ray')\n")
    line, _ = _serve_fails("--ray", "local", env={"PYTHONPATH": f"{tmp_path}{os.pathsep}{ROOT}"})
    assert "pip install -e '.[cluster]'" in line


class Node:
    """A second machine: a network namespace joined to this one by a veth pair
    (docs: network tests), 10.231.N.1 here and 10.231.N.2 there."""

    def __init__(self):
        n = os.getpid() % 250 + 1
        self.ns, self.here_if, self.there_if = f"smdc{n}", f"smdh{n}", f"smdn{n}"
        self.here, self.there = f"10.231.{n}.1", f"10.231.{n}.2"

    def up(self) -> None:
        there = ["ip", "netns", "exec", self.ns, "ip"]
        for cmd in (
            ["ip", "netns", "add", self.ns],
            ["ip", "link", "add", self.here_if, "type", "veth", "peer", "name", self.there_if],
            ["ip", "link", "set", self.there_if, "netns", self.ns],
            ["ip", "addr", "add", f"{self.here}/30", "dev", self.here_if],
            ["ip", "link", "set", self.here_if, "up"],
            there + ["addr", "add", f"{self.there}/30", "dev", self.there_if],
            there + ["link", "set", self.there_if, "up"],
            there + ["link", "set", "lo", "up"],
        ):
            subprocess.run(cmd, check=True, capture_output=True)

    def cut(self) -> None:
        subprocess.run(["ip", "link", "set", self.here_if, "down"], check=True)

    def mend(self) -> None:
        subprocess.run(["ip", "link", "set", self.here_if, "up"], check=True)
        subprocess.run(["ip", "addr", "replace", f"{self.here}/30", "dev", self.here_if], check=True)

    def down(self) -> None:
        subprocess.run(["ip", "link", "del", self.here_if], capture_output=True)
        subprocess.run(["ip", "netns", "del", self.ns], capture_output=True)


def _can_make_namespaces() -> bool:
    if os.geteuid() != 0 or shutil.which("ip") is None:
        return False
    name = f"smdprobe{os.getpid() % 10000}"
    ok = subprocess.run(["ip", "netns", "add", name], capture_output=True).returncode == 0
    subprocess.run(["ip", "netns", "del", name], capture_output=True)
    return ok


@ray_missing
@pytest.mark.skipif(not _can_make_namespaces(), reason="needs root and network namespaces (ip netns)")
def test_two_nodes_a_lost_node_moves_its_artists_to_the_other():
    import re
    import secrets

    node, tmp = Node(), tempfile.mkdtemp(prefix="smdt-", dir="/tmp")
    port = free_port()
    env = {
        **daemon_env(),
        "RAY_AUTH_MODE": "token",
        "RAY_AUTH_TOKEN": secrets.token_hex(16),
        "RAY_USAGE_STATS_ENABLED": "0",
    }
    ray = [
        os.path.join(os.path.dirname(sys.executable), "ray"),
        "start",
        "--num-cpus",
        "1",
        "--num-gpus",
        "0",
        "--object-store-memory",
        str(100 * 2**20),
        "--disable-usage-stats",
    ]
    d, clients = None, []
    try:
        node.up()
        subprocess.run(
            ray
            + [
                "--head",
                "--node-ip-address",
                node.here,
                "--port",
                str(port),
                "--include-dashboard=false",
                "--temp-dir",
                f"{tmp}/a",
            ],
            env=env,
            check=True,
            capture_output=True,
            timeout=120,
        )
        subprocess.run(
            ["ip", "netns", "exec", node.ns]
            + ray
            + ["--address", f"{node.here}:{port}", "--node-ip-address", node.there, "--temp-dir", f"{tmp}/b"],
            env=env,
            check=True,
            capture_output=True,
            timeout=120,
        )
        d = Daemon("--ray", f"{node.here}:{port}", "--workers", "2", "--max-fps", "10", env=env)
        d.wait_serving(180)
        far = re.search(rf"worker (w\d) ready on node {re.escape(node.there)} ", d.text()).group(1)
        near = "w1" if far == "w0" else "w0"
        for i in range(4):
            cl = connect(d.address, name=f"artist{i}")
            clients.append(cl)
            cl.set_scene(S, S, [Layer("1", f"a red fox {i}", half_mask())], background_prompt="snow")
            cl.start_live("jpeg")  # over the link, as a remote artist would
        got = frames_of(clients, 2, 90)
        assert {f.header["worker"] for g in got for f in g} == {near, far}, d.text()

        node.cut()  # the far node is lost
        cut_at = time.monotonic()
        errors: list = []
        got = frames_of(clients, 2, 30, worker=near, errors=errors)
        assert all(len(g) >= 2 for g in got), f"not every client streams 30 s after the node was lost:\n{d.text()}"
        assert time.monotonic() - cut_at < 30 and errors == [] and f"worker {far} lost" in d.text()

        for cl in clients:
            cl.close()
        clients = []
        node.mend()  # so that the daemon can stop its worker there too
        family = family_of(-1, tmp)
        near_pid = int(re.search(rf"worker {near} ready on node \S+ \(pid (\d+)", d.text()).group(1))
        t0 = time.monotonic()
        assert d.stop(timeout=30) == 0, d.text()
        assert time.monotonic() - t0 < 15
        time.sleep(0.5)
        assert near_pid not in alive(family), f"the daemon left its worker running:\n{d.text()}"
        # The far worker's node was lost for a while: Ray may take some seconds more to end it there.
        deadline = time.monotonic() + 20
        while (left := alive(family, b"ray::WorkerActor")) and time.monotonic() < deadline:
            time.sleep(0.5)
        assert left == [], f"a worker outlived the daemon:\n{d.text()}"
        assert alive(family), "the daemon stopped a cluster it did not start"
    finally:
        for cl in clients:
            cl.close()
        if d is not None:
            d.close()
        kill_all(family_of(-1, tmp), tmp)
        node.down()

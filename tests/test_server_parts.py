"""The server's parts alone, without sockets or an engine: the scheduler, frame
flow, admission, throttled logging and the memory budget."""

from __future__ import annotations

import logging
import time

import pytest

from smd_daemon.protocol import ErrorCode, ProtocolError
from smd_daemon.server.admission import LogThrottle, Origin, PeerTable, origin_of
from smd_daemon.server.frames import FrameFlow
from smd_daemon.server.logtext import printable
from smd_daemon.server.memory import MemoryBudget
from smd_daemon.server.messages import FrameReady, Job
from smd_daemon.server.scheduler import EngineSession, Scheduler


class Work:
    """Engine work of ``samples`` UNet samples, each costing ``per`` seconds."""

    def __init__(self, samples: int, per: float):
        self.samples_left, self.samples_total, self.per = samples, samples, per

    def run(self, max_samples):
        n = min(self.samples_left, max_samples or self.samples_left)
        self.samples_left -= n
        return n, n * self.per

    @property
    def done(self):
        return self.samples_left == 0


def simulate(sched, sessions, costs, seconds, engine_per_sample):
    """Run the scheduler against fake work; returns frames made per session."""
    made = {s.id: 0 for s in sessions}
    clock = 0.0
    running = []
    while clock < seconds:
        candidates = sched.candidates(running, sessions, clock)
        r = sched.pick(candidates)
        if r.work is None:
            r.work = Work(costs[r.members[0].id] * len(r.members), engine_per_sample[r.members[0].id])
            running.append(r)
        n, spent = r.work.run(sched.pass_size(r, others_waiting=len(candidates) > 1))
        clock += spent
        sched.charge(r, spent, n)
        if r.work.done:
            running.remove(r)
            for s in r.members:
                s.step_samples = costs[s.id]
                made[s.id] += 1
    return made


class Room:
    def can_make(self):
        return True


def session(name, **kw):
    return EngineSession(name, Room(), live=True, pending=("scene", 1, "plan"), **kw)


def test_a_small_canvas_gets_its_share_of_time_next_to_a_huge_one():
    small, big = session("small"), session("big")
    costs = {"small": 8, "big": 400}  # samples per step
    per = {"small": 0.01, "big": 0.05}  # seconds per sample: 80 ms and 20 s steps
    made = simulate(Scheduler(), [small, big], costs, 60.0, per)
    # Alone the small one makes 1 / 0.08 = 12.5 frames/s; with time shared, about half.
    assert made["small"] / 60 >= 12.5 / 3, made
    assert made["big"] >= 1, made  # a 20 s step at half the engine
    assert abs(small.vtime - big.vtime) < 1.0


def test_short_steps_run_whole_and_long_ones_in_bounded_passes():
    sched = Scheduler()
    small, big = session("s", sec_per_sample=0.01), session("b", sec_per_sample=0.05)
    r_small = sched.candidates([], [small], 0.0)[0]
    r_small.work = Work(8, 0.01)
    assert sched.pass_size(r_small, others_waiting=True) == 8  # 80 ms: not split
    r_big = sched.candidates([], [big], 0.0)[0]
    r_big.work = Work(400, 0.05)
    assert sched.pass_size(r_big, others_waiting=True) == 2  # ~100 ms while others wait
    assert sched.pass_size(r_big, others_waiting=False) == 20  # ~1 s alone: a stop is seen soon
    fresh = session("new")
    r = sched.candidates([], [fresh], 0.0)[0]
    r.work = Work(400, 0.05)
    assert sched.pass_size(r, others_waiting=False) == 1  # unknown cost: one sample measures it


def test_cheap_live_sessions_share_one_work_and_a_job_takes_turns_with_its_stream():
    sched = Scheduler()
    a, b, c = (session(n, sec_per_sample=0.01, step_samples=8) for n in "abc")
    a.jobs.append(Job(1, "scene", "plan", 1, "png", 95))
    candidates = sched.candidates([], [a, b, c], 0.0)
    steps = [r for r in candidates if r.kind == "step"]
    assert len(steps) == 1 and steps[0].members == [a, b, c]
    # a is furthest behind; it alternates between its live step and its job.
    kinds = []
    for _ in range(4):
        r = sched.pick(sched.candidates([], [a, b, c], 0.0))
        kinds.append((r.payer.id, r.kind))
        sched.charge(r, 1.0, 8)
    assert ("a", "generate") in kinds and ("a", "step") in kinds, kinds


def test_frame_flow_bounds_what_a_client_holds_and_trusts_only_real_acks():
    flow = FrameFlow(window=2)
    sent = []
    for i in range(10):
        if not flow.can_make():
            break
        flow.start_making()
        flow.made(FrameReady("s", None, i, 1, True, 2, 1.0, 1))
        while (item := flow.next_to_send()) is not None:
            sent.append(item)
    assert [seq for _, seq, _ in sent] == [1, 2] and not flow.can_make()  # 2 sent, 1 ready
    assert not flow.ack(2, sent[1][2] + 1) and not flow.ack(3, 0)  # a guess is no ack
    assert flow.ack(2, sent[1][2])
    frame, seq, _ = flow.next_to_send()
    assert seq == 3 and frame.index == 2 and flow.can_make()


def test_peers_before_hello_are_bounded_and_each_has_its_own_budget():
    table = PeerTable(max_clients=2, max_pending=3, rate=100, hello_rate=5)
    assert all(table.admit(b"flood", 0.0) for _ in range(10))  # a burst of twice the rate
    assert table.admit(b"flood", 0.0) is None and table.get(b"flood").dropped == 1
    assert table.admit(b"artist", 0.0) is not None  # someone else is heard at once
    for i in range(5):
        table.admit(b"stranger%d" % i, 1.0 + i)
    assert len(table) == 3 and table.get(b"flood") is None  # the least recently heard went first
    peer = table.admit(b"stranger4", 10.0)
    table.welcome(peer, 10.0)
    assert peer.welcomed and peer.bucket.rate == 100


def test_one_origin_has_at_most_its_share_of_the_connections():
    table = PeerTable(max_clients=4, max_pending=10, rate=100, hello_rate=5, max_per_origin=2)
    alice, bob = Origin("key", "alice"), Origin("key", "bob")

    def hello(identity, origin):
        peer = table.admit(identity, 0.0)
        peer.origin = origin
        table.welcome(peer, 0.0)

    hello(b"a1", alice)
    hello(b"a2", alice)
    with pytest.raises(ProtocolError) as e:
        hello(b"a3", alice)
    assert e.value.code == ErrorCode.QUOTA and "client key alice" in e.value.message
    hello(b"b1", bob)  # others still get in
    hello(b"b2", bob)
    table.remove(b"a1")  # a connection that leaves gives its place back
    hello(b"a3", alice)
    with pytest.raises(ProtocolError) as e:
        hello(b"c1", Origin("key", "carol"))
    assert e.value.code == ErrorCode.BUSY  # all four places taken


class Frame:
    """What ``origin_of`` reads of a zmq.Frame: its properties (absent ones raise, as libzmq's EINVAL)."""

    def __init__(self, **props):
        self.props = props

    def get(self, name):
        if name not in self.props:
            raise OSError("EINVAL")
        return self.props[name]


@pytest.mark.parametrize(
    "props,transport,origin",
    [
        ({"User-Id": "alice", "Peer-Address": "10.0.0.5"}, "tcp", Origin("key", "alice")),  # the key wins
        ({"Peer-Address": "10.0.0.5"}, "tcp", Origin("host", "10.0.0.5")),
        ({"Peer-Address": "::ffff:10.0.0.5"}, "tcp", Origin("host", "::ffff:10.0.0.5")),
        ({"Peer-Address": "127.0.0.1"}, "tcp", Origin("connection", "0000c0de")),  # every local process alike
        ({"Peer-Address": "::1"}, "tcp", Origin("connection", "0000c0de")),
        ({"Peer-Address": "::ffff:127.0.0.1"}, "tcp", Origin("connection", "0000c0de")),
        ({"Peer-Address": "localhost:1000:1000:4242"}, "ipc", Origin("user", "1000")),
        ({}, "tcp", Origin("connection", "0000c0de")),
        ({}, "inproc", Origin("connection", "0000c0de")),
    ],
)
def test_a_connection_is_counted_by_its_key_its_local_user_or_its_host(props, transport, origin):
    assert origin_of(Frame(**props), b"\x00\x00\xc0\xde", transport) == origin


def test_text_a_peer_chose_is_logged_on_one_line_without_terminal_codes():
    shown = printable("krita\x1b[2J\nFAKE 12:00 INFO refused\u202e\r\x00" + "x" * 200, 60)
    assert shown.isprintable() and "\n" not in shown and "\x1b" not in shown and len(shown) < 100
    assert shown.startswith("krita\\x1b[2J\\nFAKE") and "\\u202e" in shown and shown.endswith("...")
    assert printable("Füchse im Schnee") == "Füchse im Schnee"  # letters of any language stay as they are


def test_log_throttle_says_it_once_per_interval_with_a_count(caplog):
    now = [0.0]
    throttle = LogThrottle(interval=10, burst=50, clock=lambda: now[0])
    with caplog.at_level(logging.INFO, logger="smd_daemon.server"):
        for i in range(1000):
            now[0] = i * 0.01
            throttle(logging.INFO, "error", b"peer", "bad message from %s", "peer")
        now[0] = 10.5
        throttle(logging.INFO, "error", b"peer", "bad message from %s", "peer")
    lines = [r.getMessage() for r in caplog.records]
    assert lines == ["bad message from peer", "bad message from peer (and 999 more like it since)"]


def test_memory_budget_per_session_and_in_all():
    budget = MemoryBudget(total=100, per_session=60)
    budget.reserve("a", 50)
    with pytest.raises(ProtocolError) as e:
        budget.reserve("b", 61)
    assert e.value.code == ErrorCode.TOO_LARGE
    with pytest.raises(ProtocolError) as e:
        budget.reserve("b", 51)
    assert e.value.code == ErrorCode.NO_MEMORY and budget.held("b") == 0
    budget.reserve("a", 10)  # a session shrinking gives the difference back
    budget.reserve("b", 60)
    budget.release("a")
    assert budget.used == 60


def test_session_order_runs_each_sessions_tasks_in_order_and_sessions_side_by_side():
    import threading

    from smd_daemon.server.ordered import SessionOrder

    order = SessionOrder(2, "test")
    started, gate, ran = threading.Event(), threading.Event(), []

    def task(session, i):
        if (session, i) == ("a", 0):
            started.set()
            gate.wait(10)  # a's first task holds a's queue, not b's
        ran.append((session, i))

    def wait_for(n):
        deadline = time.monotonic() + 10
        while len(ran) < n and time.monotonic() < deadline:
            time.sleep(0.01)

    try:
        assert order.submit("a", task, "a", 0, cost=10, max_tasks=2, max_cost=25)
        assert started.wait(10)  # running: no longer waiting, nor counted
        assert order.submit("a", task, "a", 1, cost=10, max_tasks=2, max_cost=25)
        assert not order.submit("a", task, "a", 9, cost=20, max_tasks=2, max_cost=25)  # 10 + 20 waiting > 25
        assert order.submit("a", task, "a", 2, cost=15, max_tasks=2, max_cost=25)
        assert not order.submit("a", task, "a", 9, max_tasks=2)  # two already wait
        assert [args[1] for args in order.waiting("a")] == [1, 2]
        for i in range(3):
            order.submit("b", task, "b", i)
        wait_for(3)
        assert ran == [("b", 0), ("b", 1), ("b", 2)]  # b went on while a's first task waited
        gate.set()
        wait_for(6)
        assert ran[3:] == [("a", 0), ("a", 1), ("a", 2)]
        assert not order.drop("a")  # nothing runs for it any more
        started.clear()
        gate.clear()
        order.submit("a", task, "a", 0)
        assert started.wait(10)
        order.submit("a", task, "a", 5)
        assert order.drop("a") and order.waiting("a") == []  # the running one finishes, the waiting one is gone
        gate.set()
        wait_for(7)
        time.sleep(0.1)
        assert ran[6:] == [("a", 0)]
    finally:
        order.shutdown()

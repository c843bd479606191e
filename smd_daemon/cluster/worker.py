"""An engine worker: the daemon's own engine loop, fed by a cluster's front end.

The worker runs ``server.engine_loop.EngineLoop`` (with its scheduler) on
the commands the front end's sessions send, exactly as the single-process
daemon's I/O thread would, and sends back what the loop posts. What differs
sits around the loop, never inside it:

- plans: the front end has no model, so scenes arrive unplanned
  (``wire.PLAN_ON_WORKER``); a few planner threads plan them here, each
  session's commands in order, within this worker's memory budget;
- frames: the front end owns each session's ``FrameFlow``; the loop here sees
  a ``RemoteFlow`` that may make frames while the front end grants credit;
- encoding: frames and results are compressed here, in the encoding the
  client asked for, so only what the artist will receive crosses the network.

One thread owns the ZeroMQ socket (DEALER, CURVE client, which checks the
front end's key); everyone else hands it messages through ``_send``.
"""

from __future__ import annotations

import collections
import dataclasses
import logging
import os
import threading
import time
import uuid

import numpy as np
import zmq

from smd_daemon.cluster import wire
from smd_daemon.cluster.codec import CodecError
from smd_daemon.cluster.timing import TimedEngine
from smd_daemon.engine.scene import Cancelled
from smd_daemon.protocol import ProtocolError
from smd_daemon.server import messages as m
from smd_daemon.server.engine_loop import EngineLoop
from smd_daemon.server.images import EncodedImage, encode_frame
from smd_daemon.server.limits import default_max_memory
from smd_daemon.server.memory import MemoryBudget
from smd_daemon.server.ordered import SessionOrder
from smd_daemon.server.ports import EnginePort
from smd_daemon.server.scenes import plan_scene

log = logging.getLogger("smd_daemon.cluster")

REFUSED_LOG_S = 10.0


class RemoteFlow:
    """A session's ``FrameFlow`` as this worker's engine loop sees it: it may
    make a frame while the frames made stay below the front end's credit."""

    def __init__(self, session: str, deliver):
        self.session, self.deliver = session, deliver
        self._lock = threading.Lock()
        self.allowed = 0
        self.produced = 0
        self.making = 0
        self.encoding, self.quality = "raw", 80

    def can_make(self) -> bool:
        with self._lock:
            return self.produced + self.making < self.allowed

    def start_making(self) -> None:
        with self._lock:
            self.making += 1

    def made(self, frame: m.FrameReady | None) -> None:
        with self._lock:
            self.making = max(0, self.making - 1)
            if frame is not None:
                self.produced += 1
        if frame is not None:
            self.deliver(self, frame)

    def credit(self, allowed: int) -> None:
        with self._lock:
            self.allowed = max(self.allowed, allowed)


class EngineWorker:
    def __init__(
        self,
        worker_id: str,
        front_address: str,
        keys: wire.Keys,
        max_session_bytes: int,
        max_memory_bytes: int | None = None,
        node: str = "",
        device: str = "",
        on_link_failure=None,
    ):
        self.id, self.front_address, self.keys = worker_id, front_address, keys
        self.on_link_failure = on_link_failure  # the link thread died of a bug (a Ray actor exits: Ray restarts it)
        self.node, self.device = node, device
        self.incarnation, self.started = uuid.uuid4().hex[:12], time.time()
        self.budget = MemoryBudget(max_memory_bytes or default_max_memory(), max_session_bytes)
        self.engine: TimedEngine | None = None
        self.loop: EngineLoop | None = None
        self.model: dict = {}
        self.state, self.error = "loading", ""
        self.flows: dict[str, RemoteFlow] = {}
        self.frames = 0
        self.stopping = threading.Event()
        self._outbox: collections.deque = collections.deque()
        self._wake_r, self._wake_w = os.pipe()
        os.set_blocking(self._wake_w, False)
        self._planners = SessionOrder(2, "plan")
        self._encoders = SessionOrder(2, "encode")
        self._link: threading.Thread | None = None
        self._refusals, self._refused_log_at = 0, 0.0

    # --- lifecycle (the process that hosts the worker calls these) -----------------

    def connect(self) -> None:
        """Connect to the front end and say we are loading (before the model loads)."""
        self._link = threading.Thread(target=self._run_link, name="worker-link", daemon=True)
        self._link.start()
        self._hello()

    def serve(self, engine: EnginePort, model: dict) -> None:
        """The model is loaded: run the engine loop and take sessions."""
        self.engine, self.model = TimedEngine(engine), model
        self.loop = EngineLoop(self.engine, self._post, self.stopping)
        self.loop.start()
        self.state = "ready"
        self._hello()

    def failed(self, error: str) -> None:
        """The model could not be loaded: say why; this worker gets no sessions."""
        self.state, self.error = "failed", error
        self._hello()

    def stop(self, timeout: float = 2.0) -> None:
        self.stopping.set()
        self._wake()
        if self.loop is not None:
            self.loop.wake()
            self.loop.join(timeout)
        if self._link is not None:
            self._link.join(timeout)
        self._planners.shutdown()
        self._encoders.shutdown()

    def _hello(self) -> None:
        engine = self.engine
        can = (
            {}
            if engine is None
            else {
                "region_modes": tuple(engine.region_modes),
                "max_steps": engine.max_steps,
                "kind": engine.kind,
                "control_kinds": tuple(engine.control_kinds),
            }
        )
        self._send(
            wire.Hello(
                self.id,
                self.incarnation,
                self.state,
                self.node,
                self.device,
                os.getpid(),
                self.model,
                self.error,
                can,
                self.started,
            )
        )

    # --- the socket's thread ---------------------------------------------------------

    def _send(self, obj) -> None:
        """Hand a message to the link thread (any thread)."""
        self._outbox.append(obj)
        self._wake()

    def _wake(self) -> None:
        try:
            os.write(self._wake_w, b"\0")
        except BlockingIOError:
            pass  # a wake-up is already pending

    def _run_link(self) -> None:
        ctx = zmq.Context()
        sock = ctx.socket(zmq.DEALER)
        wire.configure(sock)
        sock.setsockopt(zmq.IDENTITY, f"{self.id}/{self.incarnation}".encode())
        sock.curve_serverkey = self.keys.server_public
        sock.curve_publickey = self.keys.worker_public
        sock.curve_secretkey = self.keys.worker_secret
        monitor = wire.watch_handshakes(sock)
        sock.connect(self.front_address)
        poller = zmq.Poller()
        poller.register(sock, zmq.POLLIN)
        poller.register(monitor, zmq.POLLIN)
        poller.register(self._wake_r, zmq.POLLIN)
        next_stats = time.monotonic()
        try:
            while not self.stopping.is_set():
                ready = dict(poller.poll(int(wire.HEARTBEAT_S * 1000) if not self._outbox else 10))
                if self._wake_r in ready:
                    os.read(self._wake_r, 4096)
                if sock in ready:
                    self._receive(sock)
                if monitor in ready:
                    self._refused(wire.handshake_failures(monitor))
                while self._outbox:
                    try:
                        sock.send_multipart(wire.dumps(self._outbox[0]), zmq.NOBLOCK, copy=False)
                    except zmq.Again:
                        break  # the front end is not reading: keep it, try again
                    except CodecError as e:  # a bug must cost one message, not the link
                        log.error("cannot send %s to the front end: %s", type(self._outbox[0]).__name__, e)
                    self._outbox.popleft()
                now = time.monotonic()
                if now >= next_stats:
                    next_stats = now + wire.HEARTBEAT_S
                    self._outbox.append(
                        wire.Stats(
                            self.id,
                            self.incarnation,
                            len(self.flows),
                            self.frames,
                            self.engine.busy_s if self.engine else 0.0,
                        )
                    )
        except Exception:
            log.exception("worker link failed")
            if self.on_link_failure is not None:
                self.on_link_failure()
        finally:
            monitor.close(0)
            sock.close(0)
            ctx.term()

    def _refused(self, failures: list) -> None:
        """Whatever answers at the front end's address failed the handshake: say so,
        at first and then every ``REFUSED_LOG_S`` (ZeroMQ tries again and again)."""
        self._refusals += len(failures)
        now = time.monotonic()
        if failures and now >= self._refused_log_at:
            self._refused_log_at = now + REFUSED_LOG_S
            log.warning(
                "cannot reach the front end at %s: %s (%d time(s)); is another program listening there?",
                self.front_address,
                wire.HANDSHAKE_FAILURES[failures[-1]],
                self._refusals,
            )
            self._refusals = 0

    def _receive(self, sock) -> None:
        for _ in range(200):
            try:
                frames = sock.recv_multipart(zmq.NOBLOCK, copy=False)
            except zmq.Again:
                return
            try:
                c = wire.loads(frames, writable=True)
            except CodecError as e:
                log.warning("refused a message from the front end: %s", e)
                continue
            try:
                self._command(c)
            except Exception:  # a bug must cost one command, not the link
                log.exception("cannot handle a command from the front end")

    # --- commands from the front end ---------------------------------------------------

    def _command(self, c) -> None:
        if isinstance(c, wire.Credit):
            flow = self.flows.get(c.session)
            if flow is not None:
                flow.credit(c.allowed)
                if self.loop is not None:  # it is: sessions are placed here only once serving
                    self.loop.wake()
            return
        if isinstance(c, wire.Reset):
            log.warning("the front end reset this worker (%s): dropping %d sessions", c.reason, len(self.flows))
            for sid in list(self.flows):
                self._command(m.CloseSession(sid))
            self._hello()
            return
        if self.loop is None:
            return  # not serving: the front end places no sessions here
        # Only this thread changes ``flows``; the rest goes through the session's order.
        if isinstance(c, m.OpenSession):
            flow = self.flows[c.session] = RemoteFlow(c.session, self._frame_made)
            c = m.OpenSession(c.session, flow)
        elif isinstance(c, m.CloseSession):
            self.flows.pop(c.session, None)
        self._planners.submit(c.session, self._apply, c)

    def _apply(self, c) -> None:
        """One command, in its session's order, on a planner thread."""
        loop, engine = self.loop, self.engine
        assert loop is not None and engine is not None, "commands are applied only once serving (_command)"
        if isinstance(c, m.SetScene):
            try:
                self.budget.reserve(c.session, engine.session_bytes(c.scene))
                c = m.SetScene(c.session, c.scene, c.revision, self._plan(c.session, c.scene))
            except Cancelled:
                return  # the worker stops, or the session closed or moved meanwhile
            except ProtocolError as e:
                self._post(m.SessionError(c.session, e.code, e.message, {"revision": c.revision}))
                return
        elif isinstance(c, m.QueueJob) and isinstance(c.job.plan, wire.PlanOnWorker):
            try:
                c.job.plan = self._plan(c.session, c.job.scene)
            except Cancelled:
                return
            except ProtocolError as e:
                self._post(m.SessionError(c.session, e.code, e.message, {"job": c.job.id}))
                return
        elif isinstance(c, m.SetLive):
            flow = self.flows.get(c.session)
            if flow is not None:
                flow.encoding, flow.quality = c.encoding, c.quality
        elif isinstance(c, m.CloseSession):
            self.budget.release(c.session)
        loop.send(c)

    def _plan(self, session: str, scene):
        # A plan of a huge canvas takes seconds: it stops when the worker or the session does.
        assert self.engine is not None, "scenes are planned only once serving (_command)"
        return plan_scene(self.engine, scene, cancel=lambda: self.stopping.is_set() or session not in self.flows)

    # --- what the engine loop posts ---------------------------------------------------------

    def _post(self, event) -> None:
        if isinstance(event, m.FrameMade):
            return  # the frame itself tells the front end
        if isinstance(event, m.JobResult):
            self._encoders.submit(event.session, self._encode_result, event)
            return
        self._send(event)

    def _frame_made(self, flow: RemoteFlow, frame: m.FrameReady) -> None:
        self.frames += 1
        self._encoders.submit(flow.session, self._encode_frame, flow, frame)

    def _encode_frame(self, flow: RemoteFlow, frame: m.FrameReady) -> None:
        image = _encoded(frame.image, flow.encoding, flow.quality)
        self._send(dataclasses.replace(frame, image=image, worker=self.id))

    def _encode_result(self, ev: m.JobResult) -> None:
        job = dataclasses.replace(ev.job, scene=None, plan=None)  # the front end has the scene
        self._send(
            dataclasses.replace(ev, job=job, image=_encoded(ev.image, job.encoding, job.quality), worker=self.id)
        )


def _encoded(image: np.ndarray, encoding: str, quality: int):
    """The image as the client will receive it; raw (or anything Pillow cannot
    write) stays pixels, and the front end deals with it as it would alone."""
    if encoding == "raw":
        return np.ascontiguousarray(image)
    t0 = time.perf_counter()
    try:
        data = encode_frame(image, encoding, quality)
    except Exception as e:
        log.warning("could not encode a frame as %s here (%s); sending pixels", encoding, e)
        return np.ascontiguousarray(image)
    return EncodedImage(data, encoding, tuple(image.shape), (time.perf_counter() - t0) * 1000)

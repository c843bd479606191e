"""A cluster's front end: the daemon's own server, its engine spread over workers.

``ClusterServer`` is ``server.Server`` unchanged for artists (the same
ROUTER, protocol, CURVE keys, admission, sessions, scene workers, frame
flow); only the engine loop is replaced by a ``Dispatcher`` that forwards the
loop's commands to the worker each session is placed on, over a second
ROUTER socket that the I/O thread reads beside the artists' one. Frames and
events coming back are handed to the sessions as the engine loop's would be.

The dispatcher keeps, per session, what a worker needs to take the session
over: the newest scene (built from the front end's ``scenestate`` copy),
live mode, and unfinished jobs. When a worker is lost (silent for
``WORKER_TIMEOUT_S``, unreachable, restarted by Ray, or gone with its
private Ray instance: ``recovery``) its sessions are
placed on the others and replayed there; with no worker left, their clients
get one ``engine_error`` and frames resume by themselves once a worker is
back.
"""

from __future__ import annotations

import logging
import time
from typing import TYPE_CHECKING

import zmq

from smd_daemon.cluster import wire
from smd_daemon.cluster.codec import CodecError
from smd_daemon.cluster.routes import FrontEngine, Route, Worker
from smd_daemon.cluster.worker_socket import WorkerSocket
from smd_daemon.protocol import ErrorCode, ProtocolError
from smd_daemon.server import messages as m
from smd_daemon.server.frames import FrameFlow
from smd_daemon.server.router import Server

if TYPE_CHECKING:
    from smd_daemon.cluster.ray_workers import Cluster
    from smd_daemon.cluster.recovery import NodeRecovery

log = logging.getLogger("smd_daemon.cluster")

WORKER_TIMEOUT_S = 5.0  # a worker silent this long is lost (it reports every wire.HEARTBEAT_S)
RECV_BATCH = 200


class Dispatcher:
    """Stands in for the engine loop on the front end's I/O thread (``send``,
    ``wake``, ``join``, ``is_alive``); everything here runs on that thread."""

    def __init__(self, server: ClusterServer, sock, per_worker: int):
        self.server, self.sock, self.per_worker = server, sock, per_worker
        self.workers: dict[str, Worker] = {}
        self.by_identity: dict[bytes, Worker] = {}
        self.routes: dict[str, Route] = {}
        self._suspects: list[Worker] = []
        self._resets: dict[bytes, float] = {}
        self._stale: set[bytes] = set()  # identities of worker processes replaced by newer ones

    # --- the engine loop's interface --------------------------------------------------------

    def start(self) -> None:
        pass

    def wake(self) -> None:
        pass

    def join(self, timeout: float | None = None) -> None:
        pass

    def is_alive(self) -> bool:
        return False

    def send(self, c) -> None:
        """A command from the sessions (I/O thread); ``busy`` when no worker can take a new session."""
        if isinstance(c, m.OpenSession):
            self._open(c)
        else:
            r = self.routes.get(c.session)
            if r is not None:
                self._command(r, c)
        self._settle()

    def _open(self, c: m.OpenSession) -> None:
        w = self._choose(new=True)
        if w is None:
            ready = [x for x in self.workers.values() if x.state == "ready"]
            if ready:
                raise ProtocolError(
                    ErrorCode.BUSY,
                    f"all {self.per_worker * len(ready)} sessions of the {len(ready)} engine workers are in use",
                )
            raise ProtocolError(
                ErrorCode.BUSY, f"no engine worker is available right now ({self._states()}); try again shortly"
            )
        assert isinstance(c.flow, FrameFlow), "the front end's sessions send their own FrameFlow"
        r = self.routes[c.session] = Route(c.session, c.flow)
        c.flow.on_room = lambda: self._credit(r)
        self._assign(r, w)

    def _command(self, r: Route, c) -> None:
        if isinstance(c, m.SetScene):
            r.scene = c
        elif isinstance(c, m.SetLive):
            r.live = c if c.live else None
        elif isinstance(c, m.QueueJob):
            r.jobs[c.job.id] = c
        elif isinstance(c, m.CancelJobs):
            for job in list(r.jobs) if c.jobs is None else [j for j in c.jobs if j in r.jobs]:
                if r.worker is None:  # nothing runs it: cancelled here
                    del r.jobs[job]
                    self.server.post(m.JobCancelled(r.session, job, c.re))
                else:
                    r.cancelling[job] = c.re
        elif isinstance(c, m.CloseSession):
            del self.routes[c.session]
            r.flow.on_room = None
            if r.worker is not None:
                r.worker.sessions.discard(r.session)
        if r.worker is not None:
            self._to(r.worker, c)

    # --- placement --------------------------------------------------------------------------

    def _choose(self, new: bool) -> Worker | None:
        """The ready worker with the least engine time (sessions placed since its
        last report count at the cluster's mean load per session). A new session
        needs a worker below ``per_worker`` sessions; a session moved from a lost
        worker goes to the least loaded one whatever its count."""
        ready = [w for w in self.workers.values() if w.state == "ready"]
        if new:
            ready = [w for w in ready if len(w.sessions) < self.per_worker]
        if not ready:
            return None
        sessions = sum(len(w.sessions) for w in ready)
        per_session = sum(w.load for w in ready) / sessions if sessions else 0.0
        per_session = per_session or 1.0 / max(1, self.per_worker)
        return min(ready, key=lambda w: (w.load + w.placed * per_session, len(w.sessions), w.id))

    def _assign(self, r: Route, w: Worker) -> None:
        """Place ``r`` on ``w`` and replay there what the session has asked for."""
        r.worker, r.received, r.allowed, r.told_no_worker = w, 0, 0, False
        w.sessions.add(r.session)
        w.placed += 1
        self._to(w, m.OpenSession(r.session, None))
        self._credit(r)
        for c in [r.scene, r.live, *r.jobs.values()]:
            if c is not None:
                self._to(w, c)

    def _place_waiting(self) -> None:
        for r in self.routes.values():
            if r.worker is None:
                w = self._choose(new=False)
                if w is None:
                    return
                self._assign(r, w)
                log.info("session %s placed on worker %s", r.session[:8], w.id)

    def _lose(self, w: Worker, why: str) -> None:
        self.lose([w], why)

    def lose_all(self, why: str) -> None:
        """Every worker's process is going away (its Ray node is gone): never hear them again."""
        for w in self.workers.values():
            if w.identity is not None:
                self._stale.add(w.identity)
        self.lose(list(self.workers.values()), why)

    def lose(self, workers: list, why: str) -> None:
        """Stop counting on these workers: their sessions move to the others, or wait for one."""
        workers = [w for w in workers if w.state not in ("lost", "failed")]
        moved = [r for r in self.routes.values() if r.worker in workers]
        for w in workers:
            n = len(w.sessions)
            log.warning("worker %s lost (%s)%s", w.id, why, f": moving its {n} session(s)" if n else "")
            w.state = "lost"
            w.sessions.clear()
        for r in moved:
            r.worker = None
            for job, re in r.cancelling.items():  # its worker will never confirm these
                r.jobs.pop(job, None)
                self.server.post(m.JobCancelled(r.session, job, re))
            r.cancelling.clear()
            target = self._choose(new=False)
            if target is not None:
                self._assign(r, target)
                log.info("session %s moved to worker %s", r.session[:8], target.id)
            elif not r.told_no_worker:
                r.told_no_worker = True
                self.server.post(
                    m.SessionError(
                        r.session,
                        ErrorCode.ENGINE_ERROR,
                        f"no engine worker is available right now ({self._states()}); your scene is kept and "
                        f"frames resume by themselves when a worker is back",
                    )
                )

    def _states(self) -> str:
        return ", ".join(f"{w.id}: {w.state}" for w in self.workers.values())

    # --- the socket ---------------------------------------------------------------------------

    def _to(self, w: Worker, obj) -> None:
        if w.identity is None or w.state != "ready":
            return
        try:
            self.sock.send_multipart([w.identity, *wire.dumps(obj)], zmq.NOBLOCK, copy=False)
        except CodecError as e:  # a bug must cost one message, not the session
            log.error("cannot send %s to worker %s: %s", type(obj).__name__, w.id, e)
        except zmq.ZMQError as e:  # gone (EHOSTUNREACH) or not reading (EAGAIN)
            if w not in self._suspects:
                self._suspects.append(w)
                log.debug("cannot send to worker %s: %s", w.id, e)

    def _settle(self) -> None:
        """Move the sessions of workers found unreachable while sending."""
        while self._suspects:
            self._lose(self._suspects.pop(0), "it cannot be reached")

    def _credit(self, r: Route) -> None:
        """Tell the session's worker how many frames it may have made in all."""
        if r.worker is None:
            return
        allowed = r.received + r.flow.room()
        if allowed > r.allowed:
            r.allowed = allowed
            self._to(r.worker, wire.Credit(r.session, allowed))

    def on_readable(self) -> None:
        for _ in range(RECV_BATCH):
            try:
                frames = self.sock.recv_multipart(zmq.NOBLOCK, copy=False)
            except zmq.Again:
                break
            identity = frames[0].bytes
            try:
                msg = wire.loads(frames[1:])
            except CodecError as e:
                self.server.throttled_log(
                    logging.WARNING, "worker-message", identity, "refused a message from a worker: %s", e
                )
                continue
            try:
                self._from_worker(identity, msg)
            except Exception:  # a bug must cost one message, not the front end
                log.exception("cannot handle a message from a worker")
        self._settle()

    def _from_worker(self, identity: bytes, msg) -> None:
        now = time.monotonic()
        if identity in self._stale:
            return
        if isinstance(msg, wire.Hello):
            self._hello(identity, msg, now)
            return
        w = self.by_identity.get(identity)
        if w is None or w.identity != identity or w.state == "lost":
            # A process we no longer count on (declared lost, then heard again): start it over.
            if now - self._resets.get(identity, float("-inf")) > 1.0:
                self._resets[identity] = now
                try:
                    self.sock.send_multipart(
                        [identity, *wire.dumps(wire.Reset("its sessions moved elsewhere"))], zmq.NOBLOCK
                    )
                except zmq.ZMQError:
                    pass  # gone again: nothing to reset
            return
        w.last_seen = now
        if isinstance(msg, wire.Stats):
            w.note_stats(msg, now)
            return
        r = self.routes.get(getattr(msg, "session", ""))  # a message without a session has no route
        if r is None or r.worker is not w:
            return  # closed meanwhile, or moved away
        if isinstance(msg, m.FrameReady):
            r.received += 1
            r.flow.made(msg)
            self._credit(r)
            self.server.sessions.event(m.FrameMade(r.session))
            return
        if isinstance(msg, (m.JobResult, m.JobCancelled)):
            job = msg.job.id if isinstance(msg, m.JobResult) else msg.job
            r.jobs.pop(job, None)
            r.cancelling.pop(job, None)
        elif isinstance(msg, m.SessionError):
            if "job" in msg.fields:
                r.jobs.pop(msg.fields["job"], None)
            if msg.live_stopped:
                r.live = None
        self.server.sessions.event(msg)

    def _hello(self, identity: bytes, h: wire.Hello, now: float) -> None:
        w = self.workers.get(h.worker)
        if w is None:
            log.warning("ignoring unknown worker %r", h.worker[:40])
            return
        if w.identity != identity:
            if h.started < w.started:  # an older process of it, replaced meanwhile (a healed partition)
                self._stale.add(identity)
                log.warning("ignoring an older process of worker %s (pid %d on node %s)", w.id, h.pid, h.node)
                return
            if w.state in ("ready", "loading"):
                self._lose(w, "Ray restarted it")
            if w.identity is not None:
                self.by_identity.pop(w.identity, None)
            w.starts += 1
        w.adopt(identity, h, now)
        self.by_identity[identity] = w
        if h.state == "loading":
            log.info("worker %s loading the model on node %s (pid %d)", w.id, w.node, w.pid)
        elif h.state == "ready":
            self.server.front.learn(h.can)
            log.info(
                "worker %s ready on node %s (pid %d, %s): model %s",
                w.id,
                w.node,
                w.pid,
                w.device,
                w.model.get("name", "?"),
            )
            self._place_waiting()
        else:
            log.error("worker %s on node %s cannot load the model: %s", w.id, w.node, w.error)

    # --- upkeep -----------------------------------------------------------------------------

    def tick(self, now: float) -> None:
        for w in list(self.workers.values()):
            if w.state in ("ready", "loading") and now - w.last_seen > WORKER_TIMEOUT_S:
                self._lose(w, f"no word from it for {WORKER_TIMEOUT_S:g} s")
        self._settle()

    def add_worker(self, wid: str) -> None:
        self.workers[wid] = Worker(wid, last_seen=time.monotonic())

    def worker_failed(self, wid: str, error: str) -> None:
        """Ray could not start this worker at all."""
        w = self.workers[wid]
        if w.state != "failed":
            w.state, w.error = "failed", error
            log.error("worker %s could not start: %s", wid, error)

    def describe(self) -> list[dict]:
        return [w.describe() for w in self.workers.values()]


class ClusterServer(Server):
    def __init__(self, bind: str, limits, keys_dir: str | None, per_worker: int):
        self.front = FrontEngine()  # what the workers can do, learnt from their hellos
        super().__init__(self.front, {}, bind, limits, keys_dir)
        self.keys = wire.Keys.generate()
        self.per_worker = per_worker
        self._worker_ctx = zmq.Context()
        self.worker_socket = WorkerSocket(self._worker_ctx, self.keys, self.throttled_log)
        self._dispatcher: Dispatcher | None = None
        self.cluster: Cluster | None = None  # what started the workers; stopped with the server
        self.recovery: NodeRecovery | None = None  # of a private Ray instance

    def open_worker_socket(self, endpoint: str) -> str:
        """Listen for this run's workers (``worker_socket``); returns the address they connect to."""
        sock, monitor = self.worker_socket.open(endpoint)
        self._dispatcher = Dispatcher(self, sock, self.per_worker)
        self.extra_sockets[sock] = self._dispatcher.on_readable
        self.extra_sockets[monitor] = self.worker_socket.log_refusals
        return sock.getsockopt_string(zmq.LAST_ENDPOINT)

    @property
    def dispatcher(self) -> Dispatcher:
        """What stands in for the engine loop; ``open_worker_socket`` makes it."""
        if self._dispatcher is None:
            raise RuntimeError("open_worker_socket() comes first")
        return self._dispatcher

    def worker_keys(self) -> wire.Keys:
        """What workers need to connect."""
        return self.keys.for_worker()

    def make_engine_loop(self):
        return self.dispatcher

    def welcome_extra(self) -> dict:
        return {"workers": self.dispatcher.describe()}

    def _sweep(self) -> None:
        super()._sweep()
        now = time.monotonic()
        if self.recovery is not None:
            self.recovery.check(now)
        self.dispatcher.tick(now)
        self.worker_socket.check()

    def shutdown(self, engine_timeout: float = 3.0) -> bool:
        stopped = super().shutdown(engine_timeout)
        if self.cluster is not None:
            self.cluster.stop()
        for sock in self.extra_sockets:
            sock.close(0)
        self.worker_socket.close()
        self._worker_ctx.destroy(linger=0)
        return stopped

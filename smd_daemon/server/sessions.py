"""Sessions as the I/O thread sees them: requests in, replies and frames out.

Everything here runs on the I/O thread. Expensive work goes elsewhere:
updates and generates to the scene workers (``scenes.py``), engine work to
the engine loop (``engine_loop.py``), compression to encoder threads; their
answers come back as typed events (``messages.py``) through ``Server.post``.
"""

from __future__ import annotations

import collections
import concurrent.futures
import itertools
import logging
import time
import uuid
from dataclasses import dataclass, field

from smd_daemon.protocol import ErrorCode, ProtocolError
from smd_daemon.server import messages as m
from smd_daemon.server.frames import FrameFlow
from smd_daemon.server.images import FRAME_ENCODINGS, encode_frame
from smd_daemon.server.logtext import label
from smd_daemon.server.scenes import SceneSession

log = logging.getLogger("smd_daemon.server")

E = ErrorCode


@dataclass(eq=False)
class Session:
    id: str
    identity: bytes
    origin: object  # admission.Origin: whose share of the sessions it takes
    flow: FrameFlow
    scene: SceneSession
    live: bool = False
    encoding: str = "raw"
    quality: int = 80
    jobs: set = field(default_factory=set)  # ids of generate requests not finished yet
    cancelled: dict = field(default_factory=dict)  # job id -> cancel request id, for jobs still being resolved
    results: dict = field(default_factory=dict)  # job id -> token of results sent, not yet acknowledged


class SessionManager:
    def __init__(self, server):
        self.server = server
        self.limits = server.limits
        self.sessions: dict[str, Session] = {}
        self._held_by: collections.Counter = collections.Counter()  # origin -> sessions
        self._job_ids = itertools.count(1)
        self._encoders = concurrent.futures.ThreadPoolExecutor(max_workers=2, thread_name_prefix="encode")

    # --- opening and closing ----------------------------------------------------

    def open(self, identity: bytes, origin) -> Session:
        """A new session for the connection ``identity`` (which holds none now)."""
        held, share = self._held_by[origin], self.limits.sessions_per_origin
        if held >= share:
            raise ProtocolError(
                E.QUOTA,
                f"{origin} already holds {held} of the {self.limits.max_sessions} sessions, as many as one may hold "
                f"(max_sessions_per_origin): close one of them (another window or script) first",
            )
        if len(self.sessions) >= self.limits.max_sessions:
            raise ProtocolError(E.BUSY, f"all {self.limits.max_sessions} sessions are in use")
        sid = uuid.uuid4().hex
        s = Session(sid, identity, origin, FrameFlow(self.limits.frame_window), SceneSession(sid))
        self.server.engine_loop.send(m.OpenSession(sid, s.flow))  # may refuse: a cluster with no room
        self.sessions[sid] = s
        self._held_by[origin] += 1
        log.info("session %s opened for client %s", sid[:8], label(identity))
        return s

    def free(self, s: Session, why: str) -> None:
        if self.sessions.pop(s.id, None) is None:
            return
        self._held_by[s.origin] -= 1
        if not self._held_by[s.origin]:
            del self._held_by[s.origin]
        s.live = False
        self.server.engine_loop.send(m.CloseSession(s.id))
        self.server.workers.close(s.scene)
        log.info("session %s freed: %s", s.id[:8], why)

    def shutdown(self) -> None:
        self._encoders.shutdown(wait=False, cancel_futures=True)

    # --- requests -------------------------------------------------------------

    def request(self, s: Session, msg, rid) -> None:
        t, h, send = msg.type, msg.header, self.server.send
        if t == "update":
            self.server.workers.submit(s.scene, "update", msg, rid)
        elif t == "live_start":
            fps = min(float(h.get("max_fps", self.limits.max_fps)), self.limits.max_fps)
            encoding = h.get("encoding", "raw")
            if encoding not in FRAME_ENCODINGS:
                raise ProtocolError(E.BAD_FIELD, f"frame encoding {encoding} is not available here")
            if not s.live:
                s.flow.stop()  # a frame made just after the last live_stop is not shown now
            s.live, s.encoding, s.quality = True, encoding, int(h.get("quality", 80))
            self.server.engine_loop.send(m.SetLive(s.id, True, 1.0 / fps, encoding, s.quality))
            send(s.identity, "live", re=rid, active=True, encoding=encoding, max_fps=fps)
        elif t == "live_stop":
            s.live = False
            s.flow.stop()
            self.server.engine_loop.send(m.SetLive(s.id, False))
            send(s.identity, "live", re=rid, active=False)
        elif t == "ack":
            if ("seq" in h) == ("job" in h):
                raise ProtocolError(E.BAD_FIELD, "ack names either a frame (seq) or a result (job)")
            if "job" in h:
                if s.results.get(h["job"]) == h["token"]:
                    del s.results[h["job"]]
                    s.jobs.discard(h["job"])
                else:
                    self.server.note_bad_ack(s.identity)
            elif s.flow.ack(h["seq"], h["token"]):
                self.server.engine_loop.wake()  # room for another frame: the engine may be waiting for it
                self._send_frame(s)
            elif h["seq"] > s.flow.sent:  # late acks (after live_stop) are normal; acks from the future are not
                self.server.note_bad_ack(s.identity)
        elif t == "generate":
            if len(s.jobs) >= self.limits.max_jobs:
                raise ProtocolError(E.BUSY, f"{len(s.jobs)} jobs are queued; at most {self.limits.max_jobs} allowed")
            job_id = rid if rid is not None else next(self._job_ids)
            if job_id in s.jobs:
                raise ProtocolError(E.BAD_FIELD, f"job {job_id} is already queued")
            self.server.workers.submit(s.scene, "generate", msg, rid, job_id)
            s.jobs.add(job_id)
        elif t == "cancel":
            job = h.get("job")
            if job is not None and job not in s.jobs:
                raise ProtocolError(E.BAD_FIELD, f"no job {job} is queued or running")
            # Jobs a scene worker is still resolving are cancelled when they come back.
            s.cancelled.update(dict.fromkeys(s.jobs if job is None else (job,), rid))
            self.server.engine_loop.send(m.CancelJobs(s.id, None if job is None else (job,), rid))

    # --- events from the other threads ----------------------------------------

    def event(self, ev) -> None:
        s = self.sessions.get(ev.session)
        if s is None:
            return  # freed meanwhile
        send, error = self.server.send, self.server.error
        if isinstance(ev, m.FrameMade):
            self._send_frame(s)
        elif isinstance(ev, m.Encoded):
            self._send_encoded(s, ev)
        elif isinstance(ev, m.UpdateDone):
            if ev.error is not None:
                error(s.identity, *ev.error, ev.re, revision=ev.revision)
                return
            assert ev.scene is not None, "an update that was not refused carries its scene"
            if ev.plan is not None:  # a scene replaced at once by a newer one is never drawn
                self.server.engine_loop.send(m.SetScene(s.id, ev.scene, ev.revision, ev.plan))
            send(s.identity, "scene", re=ev.re, revision=ev.revision, regions=len(ev.scene.regions), layers=ev.layers)
        elif isinstance(ev, m.PlanReady):
            self.server.engine_loop.send(m.SetScene(s.id, ev.scene, ev.revision, ev.plan))
        elif isinstance(ev, m.JobReady):
            if ev.error is not None:
                code, message, job_id = ev.error
                s.jobs.discard(job_id)
                error(s.identity, code, message, ev.re, job=job_id)
                return
            assert ev.job is not None, "a generate that was not refused is resolved to a job"
            if ev.job.id in s.cancelled:
                s.jobs.discard(ev.job.id)
                send(s.identity, "cancelled", re=s.cancelled.pop(ev.job.id), job=ev.job.id)
                return
            self.server.engine_loop.send(m.QueueJob(s.id, ev.job))
            send(s.identity, "queued", re=ev.re, job=ev.job.id)
        elif isinstance(ev, m.JobProgress):
            send(s.identity, "progress", job=ev.job, step=ev.step, total=ev.total)
        elif isinstance(ev, m.JobCancelled):
            s.jobs.discard(ev.job)
            s.cancelled.pop(ev.job, None)
            send(s.identity, "cancelled", re=ev.re, job=ev.job)
        elif isinstance(ev, m.JobResult):
            # The job keeps its place among max_jobs until the client acknowledges the result.
            s.cancelled.pop(ev.job.id, None)
            token = s.results[ev.job.id] = s.flow.new_token()
            h, w = ev.image.shape[:2]
            self._send_image(
                s,
                "result",
                ev.image,
                ev.job.encoding,
                ev.job.quality,
                dict(
                    job=ev.job.id,
                    token=token,
                    revision=ev.job.revision,
                    width=w,
                    height=h,
                    encoding=ev.job.encoding,
                    channels=3,
                    part=0,
                    engine_ms=round(ev.engine_ms, 3),
                    **({"worker": ev.worker} if ev.worker else {}),
                ),
            )
        elif isinstance(ev, m.SessionError):
            if "job" in ev.fields:
                s.jobs.discard(ev.fields["job"])
            error(s.identity, ev.code, ev.message, **ev.fields)
            if ev.live_stopped and s.live:
                s.live = False
                s.flow.stop()
                send(s.identity, "live", active=False)

    # --- frames and results ----------------------------------------------------

    def _send_frame(self, s: Session) -> None:
        """Send the ready live frame if the client's window has room (latest frame wins)."""
        if not s.live:
            return
        item = s.flow.next_to_send()
        if item is None:
            return
        frame, seq, token = item
        h, w = frame.image.shape[:2]
        self._send_image(
            s,
            "frame",
            frame.image,
            s.encoding,
            s.quality,
            dict(
                seq=seq,
                token=token,
                revision=frame.revision,
                settled=frame.settled,
                index=frame.index,
                steps_in_flight=frame.steps_in_flight,
                width=w,
                height=h,
                encoding=s.encoding,
                channels=3,
                part=0,
                engine_ms=round(frame.engine_ms, 3),
                batch=frame.batch,
                **({"worker": frame.worker} if frame.worker else {}),
            ),
        )

    def _send_image(self, s: Session, type_: str, image, encoding: str, quality: int, fields: dict) -> None:
        """Encode and send a frame or result; compression runs on the encoder
        threads (Pillow releases the GIL), so it never holds up other clients."""
        if encoding == "raw" or getattr(image, "encoding", None) == encoding:  # nothing to compress here
            t0 = time.perf_counter()
            data = encode_frame(image, encoding, quality)
            encode_ms = (time.perf_counter() - t0) * 1000 + getattr(image, "encode_ms", 0.0)
            self.server.send(s.identity, type_, [data], encode_ms=round(encode_ms, 3), sent_at=time.time(), **fields)
            return
        if type_ == "frame":
            s.flow.encoding(True)  # one at a time per session keeps its frames in order

        def work():
            t0 = time.perf_counter()
            try:
                data, problem = encode_frame(image, encoding, quality), ""
            except Exception as e:  # Pillow failures: this client only
                data, problem = None, f"{type(e).__name__}: {e}"
            self.server.post(m.Encoded(s.id, type_, data, round((time.perf_counter() - t0) * 1000, 3), fields, problem))

        self._encoders.submit(work)

    def _send_encoded(self, s: Session, ev: m.Encoded) -> None:
        if ev.type == "frame":
            s.flow.encoding(False)
        if ev.data is None:
            log.error("could not encode a %s %s: %s", ev.fields["encoding"], ev.type, ev.error)
            extra = {"job": ev.fields["job"]} if "job" in ev.fields else {}
            if extra:
                s.jobs.discard(extra["job"])
                s.results.pop(extra["job"], None)
            self.server.error(
                s.identity,
                E.ENGINE_ERROR,
                f"could not encode the {ev.type} as {ev.fields['encoding']}: {ev.error}",
                **extra,
            )
        else:
            self.server.send(s.identity, ev.type, [ev.data], encode_ms=ev.encode_ms, sent_at=time.time(), **ev.fields)
        if ev.type == "frame":
            self._send_frame(s)

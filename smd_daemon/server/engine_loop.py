"""The engine thread: the only thread that runs the engine's passes.

It takes commands from the I/O thread (``messages.OpenSession``,
``SetScene``, ``SetLive``, ``QueueJob``, ``CancelJobs``, ``CloseSession``),
runs one pass at a time of whichever work the scheduler picks, and posts
frames, progress, results and errors back. Scenes arrive already planned (a
scene worker planned them), so applying one between two passes is cheap.
It checks for a stop request between passes, so it stops within one pass.

A step's frames are collected once their copy to the host is done
(``StepWork.ready``): with ``--overlap-decode`` that copy runs on a side
stream, and the loop begins the next step meanwhile.
"""

from __future__ import annotations

import collections
import logging
import queue
import threading
import time

from smd_daemon.protocol import ErrorCode
from smd_daemon.server import messages as m
from smd_daemon.server.ports import EnginePort, GenerateWork, StepWork
from smd_daemon.server.scheduler import EngineSession, Running, RunningJob, RunningStep, Scheduler

log = logging.getLogger("smd_daemon.server")


class EngineLoop(threading.Thread):
    def __init__(self, engine: EnginePort, post, stopping: threading.Event, scheduler: Scheduler | None = None):
        super().__init__(name="engine-loop", daemon=True)
        self.engine = engine
        self.post = post  # hands an event to the I/O thread
        self.stopping = stopping
        self.scheduler = scheduler or Scheduler()
        self.sessions: dict[str, EngineSession] = {}
        self.running: list[Running] = []
        self.collecting: collections.deque[RunningStep] = collections.deque()  # steps done, frames on their way
        self._inbox: queue.SimpleQueue = queue.SimpleQueue()
        self._wake = threading.Event()

    def send(self, command) -> None:
        """Hand a command to the engine thread (any thread)."""
        self._inbox.put(command)
        self._wake.set()

    def wake(self) -> None:
        self._wake.set()

    def run(self) -> None:
        while not self.stopping.is_set():
            try:
                self._iteration()
            except Exception:  # a bug must not silently stop every stream
                log.exception("engine loop error; continuing")
                time.sleep(0.1)
        log.debug("engine loop stopped")

    # --- one pass -----------------------------------------------------------

    def _iteration(self) -> None:
        self._wake.clear()
        self._commands()
        self._collect(wait=False)
        now = time.monotonic()
        candidates = self.scheduler.candidates(self.running, self.sessions.values(), now)
        if not candidates:
            if self.collecting:
                self._collect(wait=True)  # nothing else to run: wait for the copy
                return
            waits = [s.next_step_at - now for s in self.sessions.values() if s.live and s.next_step_at > now]
            self._wake.wait(min(waits + [0.1]))
            return
        r = self.scheduler.pick(candidates)
        if all(s.closed for s in r.members):
            if r in self.running:
                self._finish(r)
            return
        if r.kind == "generate" and r.job.cancelled:
            self._end_generate(r, m.JobCancelled(r.members[0].id, r.job.id, r.job.re))
            return
        work = r.work if r.work is not None else self._begin(r)
        if work is None:
            return
        size = self.scheduler.pass_size(r, others_waiting=len(candidates) > 1)
        t0 = time.perf_counter()
        try:
            samples = work.run(size)
        except Exception as e:  # engine failure: these sessions only
            self._work_failed(r, e)
            return
        seconds = time.perf_counter() - t0
        self.scheduler.charge(r, seconds, samples)
        if log.isEnabledFor(logging.DEBUG):
            log.debug(
                "pass: %s for %s, %s samples (asked %s) in %.0f ms; engine time %s",
                r.kind,
                ",".join(s.id[:8] for s in r.members),
                samples,
                size,
                seconds * 1000,
                ",".join(f"{s.vtime:.2f}" for s in r.members),
            )
        if r.kind == "generate":
            self._generate_progress(r)
        elif work.done:
            self._step_done(r)

    def _begin(self, r: Running) -> StepWork | GenerateWork | None:
        """Begin ``r``'s work; None if the engine refused it (the sessions are told)."""
        t0 = time.perf_counter()
        work: StepWork | GenerateWork
        try:
            if r.kind == "step":
                for s in r.members:
                    self._open_stream(s)
                    s.flow.start_making()
                streams = [s.stream for s in r.members]
                r.work = work = self.engine.begin_streams(streams)
            else:
                r.work = work = self.engine.begin_generate(r.job.scene, r.job.plan)
        except Exception as e:
            self._work_failed(r, e)
            return None
        for s in r.members:
            s.work = r
        r.began = time.monotonic()
        self.scheduler.charge(r, time.perf_counter() - t0, 0)  # preparing the work is engine time too
        self.running.append(r)
        return work

    def _open_stream(self, s: EngineSession) -> None:
        """Apply the newest scene to the session's stream (opening it if needed)."""
        if s.pending is None:
            return
        scene, revision, plan = s.pending
        s.pending = None
        if s.stream is None:
            s.stream = self.engine.open_stream(scene, revision=revision, plan=plan)
        else:
            s.stream.update(scene, revision, plan=plan)

    def _step_done(self, r: RunningStep) -> None:
        """A step's passes have all run: its sessions may begin their next step
        while its frames are still on their way to the host."""
        work = r.work
        assert work is not None, "a step is done only once its work ran"
        self._finish(r)
        for s, share in zip(r.members, work.share):
            s.solo = False
            if work.samples_total:
                s.step_samples = max(1, round(share * work.samples_total))
            s.next_step_at = r.began + s.min_interval  # max_fps caps the rate, it adds no pause
        self.collecting.append(r)
        self._collect(wait=False)

    def _collect(self, wait: bool) -> None:
        """Hand over the frames of steps whose copy to the host is done, oldest
        first; with ``wait``, the oldest step's in any case."""
        while self.collecting and (wait or _ready(self.collecting[0])):
            self._frames(self.collecting.popleft())
            wait = False

    def _frames(self, r: RunningStep) -> None:
        work = r.work
        assert work is not None, "frames are taken from a work that ran"
        t0 = time.perf_counter()
        try:
            frames = work.frames()  # waits for the frames' copy to the host, if it is not done
        except Exception as e:  # a non-finite frame: an error, never a black picture
            self._work_failed(r, e)
            return
        self.scheduler.charge(r, time.perf_counter() - t0, 0)
        for s, frame in zip(r.members, frames):
            assert frame.image is not None, "frames() hands over collected frames"
            s.flow.made(
                m.FrameReady(
                    s.id,
                    frame.image,
                    int(frame.index),
                    int(frame.revision),
                    bool(frame.settled),
                    s.stream.steps_in_flight if s.stream is not None else 0,
                    r.seconds * 1000,
                    len(r.members),
                )
            )
            self.post(m.FrameMade(s.id))

    def _generate_progress(self, r: RunningJob) -> None:
        work = r.work
        assert work is not None, "progress is read from a work that ran"
        s = r.members[0]
        step, total = work.progress
        if (step, total) != r.progress and step > 0:
            r.progress = (step, total)
            self.post(m.JobProgress(s.id, r.job.id, step, total))
        if work.done:
            t0 = time.perf_counter()
            try:
                image = work.image()
            except Exception as e:  # a non-finite image: an error, never a black picture
                self._work_failed(r, e)
                return
            self.scheduler.charge(r, time.perf_counter() - t0, 0)
            self._end_generate(r, m.JobResult(s.id, r.job, image, r.seconds * 1000))

    def _end_generate(self, r: RunningJob, event) -> None:
        s = r.members[0]
        if r in self.running:
            self._finish(r)
        if s.jobs and s.jobs[0] is r.job:
            s.jobs.popleft()
        self.post(event)

    def _finish(self, r: Running) -> None:
        self.running.remove(r)
        for s in r.members:
            if s.work is r:
                s.work = None

    def _work_failed(self, r: Running, e: Exception) -> None:
        if r in self.running:
            self._finish(r)
        if r.kind == "generate":
            s = r.members[0]
            log.error("engine failed for session %s: %s: %s", s.id[:8], type(e).__name__, e)
            self._end_generate(r, m.SessionError(s.id, *self._engine_error(e), {"job": r.job.id}))
            return
        for s in r.members:
            s.flow.made(None)
        if len(r.members) > 1:
            # Find the session at fault: each steps alone until it succeeds.
            log.warning("a step shared by %d sessions failed (%s); stepping them one by one", len(r.members), e)
            for s in r.members:
                s.solo = True
            return
        s = r.members[0]
        log.error("engine failed for session %s: %s: %s", s.id[:8], type(e).__name__, e)
        code, message = self._engine_error(e)
        s.stream, s.live, s.pending = None, False, s.newest  # live_start again tries the scene afresh
        self.post(m.SessionError(s.id, code, message + "; live mode stopped", live_stopped=True))

    @staticmethod
    def _engine_error(e: Exception) -> tuple[str, str]:
        return ErrorCode.ENGINE_ERROR, f"the engine failed: {type(e).__name__}: {str(e)[:300]}"

    # --- commands from the I/O thread -----------------------------------------

    def _commands(self) -> None:
        while True:
            try:
                c = self._inbox.get_nowait()
            except queue.Empty:
                return
            s = self.sessions.get(c.session)
            if isinstance(c, m.OpenSession):
                assert c.flow is not None, "only the cluster channel carries a session without its flow"
                self.sessions[c.session] = EngineSession(c.session, c.flow)
            elif s is None:
                continue
            elif isinstance(c, m.SetScene):
                s.pending = s.newest = (c.scene, c.revision, c.plan)  # applied when its next step begins
            elif isinstance(c, m.SetLive):
                if c.live and not s.live:
                    self.scheduler.join(s)
                s.live, s.min_interval = c.live, c.min_interval
            elif isinstance(c, m.QueueJob):
                if not s.jobs:
                    self.scheduler.join(s)
                s.jobs.append(c.job)
            elif isinstance(c, m.CancelJobs):
                self._cancel(s, c)
            elif isinstance(c, m.CloseSession):
                s.closed, s.live, s.stream = True, False, None
                for job in s.jobs:
                    job.cancelled = True
                del self.sessions[c.session]

    def _cancel(self, s: EngineSession, c: m.CancelJobs) -> None:
        running = (
            s.jobs[0] if s.jobs and any(r.kind == "generate" and r.job is s.jobs[0] for r in self.running) else None
        )
        for job in list(s.jobs):
            if c.jobs is not None and job.id not in c.jobs:
                continue
            job.cancelled, job.re = True, c.re
            if job is not running:  # a running job reports its own cancellation between passes
                s.jobs.remove(job)
                self.post(m.JobCancelled(s.id, job.id, c.re))


def _ready(r: RunningStep) -> bool:
    return r.work is not None and r.work.ready()

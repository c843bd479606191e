"""Sharing engine time between sessions: which work runs the next pass, and how big.

Fair in time, not in frames: each session has a virtual time, the engine
seconds charged to it so far. The next pass is run on behalf of the session
furthest behind, and charged to it alone, even when it is a step several
sessions share: the others' frames come free with it. (Charging each by its
share would let one session's endless demand for frames fill the engine
with shared steps and starve another's generate job.) A session that
(re)joins starts near the current virtual clock, so idling earns no credit
to burst with later.

Work is resumable (``Engine.begin_streams`` / ``begin_generate``): a big
canvas's step runs as several passes, and when anyone else waits each pass
is sized from the measured seconds per sample to take about ``pass_s``. So a
small canvas next to a huge one keeps its share of the engine, and a stop
request is seen between two passes.

Live sessions whose previous step was cheap are stepped together in one
work (the engine batches every group of them that can share a UNet call);
an expensive or newly opened session gets a work of its own, so it never
holds back the frames of the cheap ones.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass, field
from typing import Literal

from smd_daemon.server.messages import Job
from smd_daemon.server.ports import FramePort, GenerateWork, StepWork, Stream

PASS_S = 0.1  # a pass's target length while other work waits
SOLO_PASS_S = 1.0  # ...and while none does: long enough to batch well, short enough to stop promptly
BATCH_S = 0.25  # sessions whose step takes longer run in a work of their own
CREDIT_S = 0.5  # engine time a session can save up while it waits (for an ack, its frame rate)
EWMA = 0.3  # weight of the newest measurement of seconds per sample


@dataclass(eq=False)
class EngineSession:
    """What the engine thread knows of one session."""

    id: str
    flow: FramePort  # frames.FrameFlow (a cluster worker's RemoteFlow)
    stream: Stream | None = None  # the engine's stream, opened while live
    pending: tuple | None = None  # the newest (scene, revision, plan), applied when a step begins
    newest: tuple | None = None  # the same, kept after it is applied
    live: bool = False
    min_interval: float = 0.0
    next_step_at: float = 0.0
    jobs: deque[Job] = field(default_factory=deque)
    vtime: float = 0.0
    sec_per_sample: float | None = None
    step_samples: int | None = None  # UNet samples of its last step
    solo: bool = False  # a shared work failed: step alone until one succeeds
    last_kind: str = ""  # of the work that last ran a pass for it
    work: Running | None = None  # the work it is part of
    closed: bool = False

    @property
    def step_seconds(self) -> float | None:
        if self.sec_per_sample is None or self.step_samples is None:
            return None
        return self.sec_per_sample * self.step_samples


@dataclass(eq=False)
class _Running:
    """A work in progress (or about to begin) and who it is for."""

    members: list[EngineSession]
    seconds: float = 0.0  # engine time spent on it so far
    began: float = 0.0  # time.monotonic() of its first pass
    payer: EngineSession | None = None  # on whose behalf the next pass runs

    @property
    def vtime(self) -> float:
        return min(s.vtime for s in self.members)


@dataclass(eq=False)
class RunningStep(_Running):
    """A step of one or more live sessions' streams."""

    kind: Literal["step"] = field(default="step", init=False)
    work: StepWork | None = None  # None until begun


@dataclass(eq=False)
class RunningJob(_Running):
    """A session's generate job."""

    kind: Literal["generate"] = field(default="generate", init=False)
    job: Job = field(kw_only=True)
    work: GenerateWork | None = None  # None until begun
    progress: tuple[int, int] = (0, 0)


Running = RunningStep | RunningJob  # told apart by ``kind``


class Scheduler:
    def __init__(self, pass_s: float = PASS_S, batch_s: float = BATCH_S, solo_pass_s: float = SOLO_PASS_S):
        self.pass_s, self.batch_s, self.solo_pass_s = pass_s, batch_s, solo_pass_s
        self.vclock = 0.0

    def join(self, s: EngineSession) -> None:
        """``s`` starts competing for the engine (live on, a job queued)."""
        s.vtime = max(s.vtime, self.vclock)

    def candidates(self, running: list[Running], sessions, now: float) -> list[Running]:
        """Works in progress, plus the works that could begin now (not begun yet)."""
        out = list(running)
        busy = {id(s) for r in running for s in r.members}
        ready = [
            s
            for s in sessions
            if id(s) not in busy
            and s.live
            and not s.closed
            and (s.stream is not None or s.pending is not None)
            and now >= s.next_step_at
            and s.flow.can_make()
        ]
        for s in ready + [s for s in sessions if s.jobs]:
            # A session that sat out (its client did not ack, its frame rate) comes back
            # with little credit: it must not take the engine for long to catch up.
            s.vtime = max(s.vtime, self.vclock - CREDIT_S)
        shared = [s for s in ready if not s.solo and s.step_seconds is not None and s.step_seconds <= self.batch_s]
        if shared:
            out.append(RunningStep(shared))
        out += [RunningStep([s]) for s in ready if s not in shared]
        generating = {id(s) for r in running if r.kind == "generate" for s in r.members}
        out += [RunningJob([s], job=s.jobs[0]) for s in sessions if s.jobs and not s.closed and id(s) not in generating]
        return out

    def pick(self, candidates: list[Running]) -> Running:
        """The next work of the session furthest behind in engine time. A session
        with both a live stream and a generate job takes them in turn, a pass
        at a time, so a long job never freezes its own preview."""
        behind = min((s for r in candidates for s in r.members), key=lambda s: s.vtime)
        mine = [r for r in candidates if behind in r.members]
        other_kind = [r for r in mine if r.kind != behind.last_kind]
        r = min(other_kind or mine, key=lambda r: r.work is None)  # work already begun first
        r.payer = behind
        return r

    def pass_size(self, r: Running, others_waiting: bool) -> int:
        """UNet samples for the next pass of ``r``: about ``pass_s`` of engine
        time while others wait, ``solo_pass_s`` while none does, so that a stop
        request is always seen soon. A step that ends within ``batch_s`` runs
        whole while others wait (splitting it would only delay its own frame).
        A work whose cost is not known yet starts with one sample, which measures it."""
        costs = [s.sec_per_sample for s in r.members if s.sec_per_sample]
        if not costs:
            return 1
        per = max(costs)
        if r.work is None:  # not begun: no cost measured for it yet
            return 1
        left = r.work.samples_left
        if not others_waiting:
            return max(1, min(left, int(self.solo_pass_s / per)))
        if left * per <= self.batch_s:
            return max(1, left)
        return max(1, int(self.pass_s / per))

    def charge(self, r: Running, seconds: float, samples: int) -> None:
        """Book one pass: ``seconds`` of engine time that ran ``samples`` UNet samples."""
        r.seconds += seconds
        payer = r.payer or r.members[0]
        self.vclock = max(self.vclock, payer.vtime)
        payer.vtime += seconds
        for s in r.members:
            s.last_kind = r.kind
            if samples:  # shared samples cost alike
                per = seconds / samples
                s.sec_per_sample = per if s.sec_per_sample is None else (1 - EWMA) * s.sec_per_sample + EWMA * per

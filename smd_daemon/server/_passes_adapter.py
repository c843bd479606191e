"""TEMPORARY: the engine's work-in-passes interface over the current Engine,
until the engine delivers it itself. Every call takes one lock."""

from __future__ import annotations

import threading

import numpy as np
import torch


class PassesAdapter:
    def __init__(self, engine):
        self.e = engine
        self.lock = threading.RLock()
        self.max_batch = engine.max_batch

    def plan(self, scene):
        with self.lock:
            return self.e.plan(scene)

    def open_stream(self, scene, revision=0, plan=None):
        with self.lock:
            return _Stream(self.e.open_stream(scene, revision))

    def session_bytes(self, scene) -> int:
        h, w = scene.height // 8, scene.width // 8
        t, p = scene.steps, len(scene.regions)
        latent = 4 * 4 * h * w
        return latent * (3 * t + 4) + 4 * t * (p + 1) * h * w + (latent if scene.background.image is not None else 0)

    def begin_streams(self, streams):
        return _StepWork(self, streams)

    def begin_generate(self, scene, plan=None):
        return _GenerateWork(self, scene)


class _Stream:
    def __init__(self, inner):
        self.inner = inner

    @property
    def steps_in_flight(self):
        return self.inner.steps_in_flight

    def update(self, scene, revision, plan=None):
        self.inner.update(scene, revision)


class _StepWork:
    def __init__(self, a, streams):
        self.a, self.streams = a, streams
        self.samples_total = self.samples_left = len(streams)
        self.share = [1 / len(streams)] * len(streams)
        self.done = False

    def run(self, max_samples=None):
        with self.a.lock:
            self._frames = self.a.e.step_streams([s.inner for s in self.streams])
        self.done, self.samples_left = True, 0
        return self.samples_total

    def frames(self):
        return self._frames


class _GenerateWork:
    @torch.no_grad()
    def __init__(self, a, scene):
        self.a = a
        e = a.e
        with a.lock:
            self.plan = e.plan(scene)
        self.T = len(self.plan.timesteps)
        self.gen = torch.Generator().manual_seed(int(scene.seed))
        self.x = e._noise(self.plan, self.gen)
        self.white = e._bootstrap_noise(self.plan)
        self.i, self.done, self._image = 0, False, None
        self.samples_total = self.samples_left = 1

    @property
    def progress(self):
        return (self.i, self.T)

    @torch.no_grad()
    def run(self, max_samples=None):
        e = self.a.e
        with self.a.lock:
            (x0,) = e._denoise(self.plan, [self.x], [self.i], self.white)
            if self.i + 1 < self.T:
                self.x = e._renoise(self.plan, x0, self.i + 1, e._noise(self.plan, self.gen))
            self.i += 1
            if self.i == self.T:
                if not bool(torch.isfinite(x0).all()):
                    raise FloatingPointError("the model produced non-finite values (NaN/inf); try --dtype fp32")
                self._image = e.decode(x0)
                self.done = True
        return 1

    def image(self) -> np.ndarray:
        return self._image

"""Helpers shared by the engine tests."""

import contextlib

import numpy as np


@contextlib.contextmanager
def recording(obj, method: str, measure):
    """Record ``measure(first argument)`` at every call of ``obj.method``."""
    seen = []
    orig = getattr(obj, method)
    own = method in vars(obj)

    def wrapper(x, *a, **k):
        seen.append(measure(x))
        return orig(x, *a, **k)

    setattr(obj, method, wrapper)
    try:
        yield seen
    finally:
        if own:
            setattr(obj, method, orig)
        else:
            delattr(obj, method)


def count_unet_forwards(engine):
    """(batch sizes of the UNet forwards from now on, a function that stops counting)."""
    ctx = recording(engine.model.components.unet, "forward", lambda sample: sample.shape[0])
    return ctx.__enter__(), lambda: ctx.__exit__(None, None, None)


def batched_and_solo(engine, scenes, frames: int):
    """Step streams of ``scenes`` together ``frames`` times, asserting one
    UNet call per round, and a second set one by one. Returns the last
    frames of each: (together, alone)."""
    together = [engine.open_stream(s) for s in scenes]
    alone = [engine.open_stream(s) for s in scenes]
    calls, restore = count_unet_forwards(engine)
    try:
        for _ in range(frames):
            n = len(calls)
            batch = engine.step_streams(together)
            assert len(calls) == n + 1
    finally:
        restore()
    for _ in range(frames):
        solo = [s.step() for s in alone]
    return batch, solo


def max_diff(a, b) -> int:
    """Largest difference between two uint8 images."""
    return int(np.abs(a.astype(int) - b.astype(int)).max())


def frame_batches(engine, stream, frames: int) -> list[int]:
    """Step ``stream`` ``frames`` times, asserting one UNet call per frame;
    returns the batch sizes of those calls."""
    calls, restore = count_unet_forwards(engine)
    try:
        for _ in range(frames):
            n = len(calls)
            stream.step()
            assert len(calls) == n + 1
    finally:
        restore()
    return calls


def edit_in_flight(engine, scene, edited, steps: int):
    """A stream of ``scene`` (revision 1) that has settled, edited to
    ``edited`` (revision 2) and stepped ``steps`` frames, asserting the edit
    shows from the first of them and only the last is settled. Returns (the
    stream, those frames, a fresh stream's settled image of ``edited``)."""
    stream = engine.open_stream(scene, revision=1)
    for _ in range(2 * steps):
        before = stream.step().image
    stream.update(edited, revision=2)
    seen = [stream.step() for _ in range(steps)]
    assert max_diff(seen[0].image, before) > 0  # no flush: the first frame already moves
    assert [f.settled for f in seen] == [False] * (steps - 1) + [True]
    fresh = engine.open_stream(edited)
    for _ in range(2 * steps):
        expect = fresh.step().image
    return stream, seen, expect

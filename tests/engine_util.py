"""Helpers shared by the engine tests."""

import contextlib


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
    ctx = recording(engine.c.unet, "forward", lambda sample: sample.shape[0])
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

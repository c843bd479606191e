"""Opt-in (``-m slow``): the engine on the real SD-1.5 architecture (random weights)."""

import numpy as np
import pytest

from smd_daemon.engine.scene import Background, Region, Scene


@pytest.mark.slow
def test_stream_runs_on_real_sd15_architecture():
    from smd_daemon.engine.core import Engine
    from smd_daemon.engine.models import load_model

    engine = Engine(load_model("random-sd15"))
    m = np.zeros((256, 256), np.float32)
    m[:, :128] = 1
    scene = Scene(256, 256, [Region("a red fox", m)], background=Background("a meadow"), steps=2)
    stream = engine.open_stream(scene)
    frames = [stream.step() for _ in range(3)]
    assert frames[-1].settled and frames[-1].image.shape == (256, 256, 3)
    assert engine.model.runner.calls == 3

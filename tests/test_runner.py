"""The UNet call paths: eager, CUDA-graph replay (its data flow, run eagerly
on CPU), and the fallbacks when compiling or capturing fails."""

import logging

import numpy as np
import pytest
import torch

from smd_daemon.engine import runner as R
from smd_daemon.engine.core import Engine
from smd_daemon.engine.scene import Background, Region, Scene

S = 64  # small: the paths, not the pictures, are under test


def _scene(seed=1, **kw):
    a = np.zeros((S, S), np.uint8)
    a[:, : S // 2] = 255
    b = np.zeros((S, S), np.uint8)
    b[S // 4 :, S // 3 :] = 255
    return Scene(
        S, S, [Region("a red fox", a), Region("a pine", b)], background=Background("a blue sky"), seed=seed, **kw
    )


def _scenes():
    return [_scene(), _scene(seed=2, region_mode="attention"), _scene(seed=3, guidance_scale=2.0)]


@pytest.fixture
def graph_engine(tiny_components):
    """An engine whose UNet calls go through the graph path: static input
    buffers per shape, replayed (eagerly, on this CPU)."""
    e = Engine(tiny_components)
    e.model.runner = R.DenoiserRunner(e.model.family, e.model.region_ctx, cuda_graphs=True)
    return e


def test_graph_path_frames_equal_the_plain_paths(engine, graph_engine):
    plain = [engine.open_stream(s) for s in _scenes()]
    graphed = [graph_engine.open_stream(s) for s in _scenes()]
    for k in range(5):
        expect = engine.step_streams(plain)
        got = graph_engine.step_streams(graphed)
        for g, e in zip(got, expect):
            assert np.array_equal(g.image, e.image), k
    # Warm-up batches grow for T frames; only shapes seen twice are captured, at most MAX_GRAPHS kept.
    assert 0 < graph_engine.model.runner.captures <= 3 + 3
    assert len(graph_engine.model.runner._graphs) <= R.MAX_GRAPHS
    # An edit that changes the batch shape: a new shape, recaptured when it repeats.
    before = graph_engine.model.runner.captures
    edited = _scene(seed=2, region_mode="attention")
    edited.regions = edited.regions[:1]
    graphed[1].update(edited, revision=1)
    plain[1].update(edited, revision=1)
    for _ in range(3):
        assert np.array_equal(graph_engine.step_streams(graphed)[1].image, engine.step_streams(plain)[1].image)
    assert graph_engine.model.runner.captures > before


def test_generate_on_the_graph_path_equals_plain(engine, graph_engine):
    for s in _scenes()[1:]:
        assert np.array_equal(graph_engine.generate(s), engine.generate(s))


def test_failed_capture_falls_back_to_eager_with_one_warning(engine, graph_engine, monkeypatch, caplog):
    def broken(self, runner, inputs):
        raise RuntimeError("operation not permitted when stream is capturing")

    monkeypatch.setattr(R._Replay, "__init__", broken)
    plain, graphed = engine.open_stream(_scene()), graph_engine.open_stream(_scene())
    with caplog.at_level(logging.WARNING, logger="smd_daemon.engine.runner"):
        for _ in range(5):
            assert np.array_equal(graph_engine.step_streams([graphed])[0].image, engine.step_streams([plain])[0].image)
    warnings = [r for r in caplog.records if "CUDA graph" in r.getMessage()]
    assert len(warnings) == 1 and not graph_engine.model.runner.cuda_graphs


def test_failed_compile_falls_back_to_eager_with_one_warning(engine, caplog):
    def broken(*a, **k):
        raise RuntimeError("inductor: no C++ compiler found")

    engine.model.runner._compiled = broken
    with caplog.at_level(logging.WARNING, logger="smd_daemon.engine.runner"):
        a = engine.generate(_scene())
        b = engine.generate(_scene())
    assert np.array_equal(a, b) and a.std() > 5
    assert len([r for r in caplog.records if "torch.compile" in r.getMessage()]) == 1


@pytest.mark.parametrize(
    "switches, word",
    [
        (dict(compile=True), "torch.compile needs a CUDA device"),
        (dict(cuda_graphs=True), "CUDA graphs needs a CUDA device"),
        (dict(compile=True, cuda_graphs=True), "need a CUDA device"),
        (dict(overlap_decode=True), "side stream needs a CUDA device"),
    ],
)
def test_speed_switches_are_refused_off_cuda_in_one_sentence(tiny_components, switches, word):
    with pytest.raises(ValueError, match=word) as e:
        Engine(tiny_components, **switches)
    assert ". " not in str(e.value) and "\n" not in str(e.value)
    R.check_speed_options(torch.device("cuda"), **switches)  # a CUDA device may


@pytest.mark.parametrize(
    "command", [["render", "scene.json", "-o", "out.png"], ["serve", "--bind", "tcp://127.0.0.1:1"]]
)
@pytest.mark.parametrize("flag", ["--compile", "--cuda-graphs"])
def test_cli_refuses_speed_switches_off_cuda_before_any_work(command, flag, capsys):
    from smd_daemon.cli import main

    # Refused before the scene is read, a socket bound or a model loaded (none of them exist here).
    code = main([*command, "--model", "no-such-model", "--device", "cpu", flag])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1 and "needs a CUDA device" in err[0], err

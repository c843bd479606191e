"""1- and 2-step streams, and the two kinds of few-step models: LCM and
SD-Turbo style (an Euler scheduler with trailing timesteps, no LCM
boundary condition), told apart by the scheduler config or chosen."""

import logging

import numpy as np
import pytest
import torch
from engine_util import count_unet_forwards, max_diff

from smd_daemon.engine.core import Engine
from smd_daemon.engine.models import ModelLoadError, load_model
from smd_daemon.engine.scene import Background, Region, Scene, SceneError
from smd_daemon.engine.tiny import build_tiny_pipeline

S = 128


def _scene(steps, mode="latent", seed=1, size=S, **kw):
    a = np.zeros((size, size), np.uint8)
    a[:, : size // 2] = 255
    b = np.zeros((size, size), np.uint8)
    b[size // 4 :, size // 3 :] = 255
    return Scene(
        size,
        size,
        [Region("a red fox", a), Region("a pine", b)],
        background=Background("a blue sky"),
        seed=seed,
        steps=steps,
        region_mode=mode,
        **kw,
    )


def _turbo_scheduler(config):
    """The scheduler stabilityai/sd-turbo ships: Euler, trailing timesteps."""
    from diffusers import EulerDiscreteScheduler

    return EulerDiscreteScheduler.from_config(
        config,
        timestep_spacing="trailing",
        timestep_type="discrete",
        interpolation_type="linear",
        use_karras_sigmas=False,
    )


@pytest.fixture(scope="module")
def turbo_folder(tmp_path_factory):
    d = tmp_path_factory.mktemp("models") / "tiny-turbo"
    pipe = build_tiny_pipeline(0)
    pipe.scheduler = _turbo_scheduler(pipe.scheduler.config)
    pipe.save_pretrained(d)
    return d


@pytest.fixture(scope="module")
def turbo(turbo_folder):
    return load_model(str(turbo_folder))


@pytest.mark.parametrize("mode", ["latent", "attention"])
@pytest.mark.parametrize("steps", [1, 2])
def test_one_and_two_step_streams_in_both_modes(engine, steps, mode):
    calls, restore = count_unet_forwards(engine)
    try:
        stream = engine.open_stream(_scene(steps, mode))
        frames = [stream.step() for _ in range(3 * steps)]
    finally:
        restore()
    assert stream.steps_in_flight == steps and len(calls) == len(frames)
    # settled once the first entry has travelled through every level
    assert [f.settled for f in frames[:steps]] == [False] * (steps - 1) + [True]
    assert all(np.array_equal(f.image, frames[-1].image) for f in frames[steps:])
    assert frames[-1].image.std() > 5
    if mode == "attention":
        assert calls[-1] == steps  # T samples a frame
    # the stream shows what one-shot generation of the same scene makes
    assert max_diff(frames[-1].image, engine.generate(_scene(steps, mode))) <= 1


def test_lcm_timesteps_for_one_two_and_four_steps(engine):
    assert engine.kind == "lcm"
    assert [engine.model.timesteps(n) for n in (1, 2, 4)] == [[999], [999, 499], [999, 759, 499, 259]]


def test_a_turbo_style_config_is_detected_with_its_own_timesteps(turbo):
    from diffusers import EulerDiscreteScheduler

    assert turbo.kind == "turbo" and turbo.describe()["kind"] == "turbo"
    assert isinstance(turbo.scheduler, EulerDiscreteScheduler)
    engine = Engine(turbo)
    assert [engine.model.timesteps(n) for n in (1, 2, 4)] == [[999], [999, 499], [999, 749, 499, 249]]
    plan = engine.plan(_scene(4))
    # No LCM boundary condition: the clean estimate is the plain one.
    assert torch.equal(plan.schedule.c_skip, torch.zeros(4)) and torch.equal(plan.schedule.c_out, torch.ones(4))
    assert engine.max_steps == 1000


@pytest.mark.parametrize("guidance", [0.0, 1.0])
def test_one_step_turbo_image_equals_diffusers_with_the_models_own_scheduler(turbo, turbo_folder, guidance):
    from diffusers import StableDiffusionPipeline

    ours = Engine(turbo).generate(
        Scene(S, S, [], background=Background("a red fox"), seed=4, steps=1, guidance_scale=guidance)
    )
    pipe = StableDiffusionPipeline.from_pretrained(
        turbo_folder, local_files_only=True, safety_checker=None, requires_safety_checker=False
    )
    pipe.set_progress_bar_config(disable=True)
    ref = pipe(
        "a red fox",
        num_inference_steps=1,
        guidance_scale=guidance,
        height=S,
        width=S,
        generator=torch.Generator().manual_seed(4),
        output_type="np",
    ).images[0]
    assert ours.std() > 5 and max_diff(ours, (ref * 255).round().astype(np.uint8)) <= 1


@pytest.mark.parametrize("mode", ["latent", "attention"])
def test_turbo_streams_at_one_and_two_steps(turbo, mode):
    engine = Engine(turbo)
    for steps in (1, 2):
        stream = engine.open_stream(_scene(steps, mode))
        frames = [stream.step() for _ in range(2 * steps)]
        assert frames[-1].settled and frames[-1].image.std() > 5
        assert max_diff(frames[-1].image, engine.generate(_scene(steps, mode))) <= 1


def test_the_kind_can_be_overridden(turbo_folder, caplog):
    from diffusers import EulerDiscreteScheduler, LCMScheduler

    with caplog.at_level(logging.INFO, logger="smd_daemon.engine.models"):
        as_lcm = load_model(str(turbo_folder), kind="lcm")
    assert as_lcm.kind == "lcm" and isinstance(as_lcm.scheduler, LCMScheduler)
    assert "looks like a turbo model; treated as lcm" in caplog.text
    as_turbo = load_model("tiny", kind="turbo")
    assert as_turbo.kind == "turbo" and isinstance(as_turbo.scheduler, EulerDiscreteScheduler)
    assert Engine(as_turbo).model.timesteps(4) == [999, 749, 499, 249]
    assert load_model("tiny", kind="auto").kind == "lcm"
    with pytest.raises(ModelLoadError, match="unknown model kind 'sdxl': use auto, lcm or turbo"):
        load_model("tiny", kind="sdxl")


def test_steps_the_model_cannot_do_are_refused_before_any_work(engine):
    # An LCM model was distilled on original_inference_steps (50) timesteps: no more.
    engine.model.scheduler.register_to_config(original_inference_steps=8)
    try:
        with pytest.raises(SceneError, match="this lcm model takes at most 8 steps, got 10"):
            engine.open_stream(_scene(10))
        stream = engine.open_stream(_scene(2))
        with pytest.raises(SceneError, match="at most 8 steps"):
            stream.update(_scene(12), revision=1)
    finally:
        engine.model.scheduler.register_to_config(original_inference_steps=50)


@pytest.mark.parametrize(
    "command", [["render", "scene.json", "-o", "out.png"], ["serve", "--bind", "tcp://127.0.0.1:1"]]
)
def test_cli_refuses_an_unknown_model_kind_before_any_work(command, capsys):
    from smd_daemon.cli import main

    code = main([*command, "--model", "tiny", "--model-kind", "xl"])  # no scene file, nothing bound
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1 and "unknown model kind 'xl'" in err[0], err

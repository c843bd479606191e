"""Control layers in the engine: T2I-Adapters (residuals once per control
image), ControlNets (with every UNet call), preprocessing, loading, and the
refusals, on the tiny preset's random control models."""

import dataclasses
import json
import os

import numpy as np
import pytest
import torch
from engine_util import max_diff

from smd_daemon.engine import control as K
from smd_daemon.engine.control_models import load_control, load_controls, parse_controls, random_control
from smd_daemon.engine.core import Engine
from smd_daemon.engine.models import ModelLoadError
from smd_daemon.engine.planner import make_plan
from smd_daemon.engine.scene import Background, Control, Region, Scene, SceneError, UnknownControl

S = 64  # px: an 8x8 latent, so the CPU keeps up
ADAPTER_KIND, CONTROLNET_KIND = "lineart", "softedge"  # the tiny preset's: an adapter, a ControlNet


def _sketch(side=S, x0=None, y0=None):
    """Dark strokes on white paper, as an artist draws them."""
    img = np.full((side, side, 3), 255, np.uint8)
    x0 = side // 2 if x0 is None else x0
    y0 = side // 4 if y0 is None else y0
    img[y0 : side - y0, x0 - 3 : x0 + 3] = 0
    img[side // 2 - 3 : side // 2 + 3, side // 4 : side - side // 4] = 30
    return img


def _scene(controls=(), mode="latent", side=S, mask=None, steps=2, **kw):
    mask = np.full((side, side), 255, np.uint8) if mask is None else mask
    return Scene(
        side,
        side,
        [Region("a red fox", mask, mask_std=0)],
        background=Background("a blue sky"),
        seed=7,
        steps=steps,
        region_mode=mode,
        controls=list(controls),
        **kw,
    )


@pytest.fixture
def adapter_calls(engine):
    """Forwards of the adapter module, counted with a forward hook."""
    seen = []
    handle = engine.model.controls[ADAPTER_KIND].register_forward_hook(lambda *a: seen.append(1))
    yield seen
    handle.remove()


# ---- the picture --------------------------------------------------------------


@pytest.mark.parametrize("mode", ["latent", "attention"])
@pytest.mark.parametrize("kind", [ADAPTER_KIND, CONTROLNET_KIND])
def test_a_zero_strength_control_draws_what_no_control_draws_and_a_control_changes_it(engine, mode, kind):
    plain = engine.generate(_scene(mode=mode))
    zero = engine.generate(_scene([Control(kind, _sketch(), strength=0.0)], mode))
    steered = engine.generate(_scene([Control(kind, _sketch(), strength=1.0)], mode))
    assert max_diff(plain, zero) <= 1
    assert max_diff(plain, steered) > 8


def test_several_controls_sum_and_strength_scales_the_adapter(engine):
    one = make_plan(engine.model, _scene([Control(ADAPTER_KIND, _sketch(), strength=1.0)]))
    two = make_plan(
        engine.model,
        _scene([Control(ADAPTER_KIND, _sketch(), strength=0.5), Control("depth", _sketch(x0=20), strength=0.5)]),
    )
    half = make_plan(engine.model, _scene([Control(ADAPTER_KIND, _sketch(), strength=0.5)]))
    assert one.controls is not None and two.controls is not None and half.controls is not None
    r1, rh, r2 = one.controls.adapter[0], half.controls.adapter[0], two.controls.adapter[0]
    assert r1 is not None and rh is not None and r2 is not None
    depth = engine.model.control_input(Control("depth", _sketch(x0=20)))
    for k in range(len(r1)):
        torch.testing.assert_close(rh[k], 0.5 * r1[k])
        torch.testing.assert_close(r2[k], rh[k] + 0.5 * depth[k])


def test_start_and_end_leave_levels_outside_the_range_unsteered(engine):
    plan = make_plan(engine.model, _scene([Control(ADAPTER_KIND, _sketch(), start=0.5, end=1.0)], steps=4))
    assert plan.controls is not None
    assert [r is not None for r in plan.controls.adapter] == [False, False, True, True]
    plan = make_plan(engine.model, _scene([Control(CONTROLNET_KIND, _sketch(), start=0.0, end=0.5)], steps=4))
    assert plan.controls is not None
    assert plan.controls.nets[0][2] == [1.0, 1.0, 0.0, 0.0]
    assert [K.level_active(0.25, 0.75, i, 4) for i in range(4)] == [False, True, True, False]


def test_a_controlnet_runs_with_the_unet_only_where_it_steers(engine):
    runner = engine.model.runner
    before_calls, before_nets = runner.calls, runner.controlnet_calls
    engine.generate(_scene([Control(CONTROLNET_KIND, _sketch(), start=0.5)], steps=2))
    # Two steps, one UNet call each; the ControlNet steers the second alone.
    assert runner.calls - before_calls == 2
    assert runner.controlnet_calls - before_nets == 1


# ---- streams: once per edit, never per frame ---------------------------------------


@pytest.mark.parametrize("mode", ["latent", "attention"])
def test_in_a_stream_the_adapter_runs_once_per_control_edit_and_never_for_a_region_edit(engine, adapter_calls, mode):
    sketch = _sketch()
    scene = _scene([Control(ADAPTER_KIND, sketch)], mode)
    stream = engine.open_stream(scene, revision=1)
    assert len(adapter_calls) == 1
    for _ in range(4):
        stream.step()
    assert len(adapter_calls) == 1  # steady stream: no adapter forward per frame

    # A region edit (and a strength edit) re-plans without running the adapter.
    left = np.zeros((S, S), np.uint8)
    left[:, : S // 2] = 255
    edited = dataclasses.replace(scene, regions=[Region("snowy pines", left, mask_std=0)])
    edited.controls = [Control(ADAPTER_KIND, sketch.copy(), strength=0.6)]
    stream.update(edited, 2)
    for _ in range(3):
        stream.step()
    assert len(adapter_calls) == 1

    # An edit to the control layer runs it once, and reaches the next frames.
    settled = stream.step().image
    moved = dataclasses.replace(edited, controls=[Control(ADAPTER_KIND, _sketch(x0=16), strength=0.6)])
    stream.update(moved, 3)
    frames = [stream.step() for _ in range(3)]
    assert len(adapter_calls) == 2
    assert frames[0].revision == 3 and max_diff(frames[0].image, settled) > 0
    fresh = engine.open_stream(moved)
    for _ in range(4):
        last = fresh.step()
    assert max_diff(frames[-1].image, last.image) <= 1  # the edit has fully arrived once settled


def test_a_controlnet_stream_runs_it_with_every_unet_call(engine):
    stream = engine.open_stream(_scene([Control(CONTROLNET_KIND, _sketch())]))
    runner = engine.model.runner
    calls, nets = runner.calls, runner.controlnet_calls
    for _ in range(3):
        stream.step()
    assert runner.calls - calls == 3 and runner.controlnet_calls - nets == 3


def test_streams_with_and_without_controls_each_draw_their_own(engine):
    """Sessions batch together only when their control inputs match."""
    a = _scene([Control(ADAPTER_KIND, _sketch())])
    b = _scene()
    together = [engine.open_stream(a), engine.open_stream(b)]
    alone = [engine.open_stream(a), engine.open_stream(b)]
    for _ in range(3):
        both = engine.step_streams(together)
        solo = [s.step() for s in alone]
    for x, y in zip(both, solo):
        assert max_diff(x.image, y.image) <= 1


# ---- tiled canvases ---------------------------------------------------------------


def test_a_window_of_a_tiled_canvas_takes_its_crop_of_the_residuals(engine):
    side = 576  # 72x72 latent: four 64x64 windows
    scene = _scene([Control(ADAPTER_KIND, _sketch(side)), Control(CONTROLNET_KIND, _sketch(side))], side=side, steps=1)
    plan = make_plan(engine.model, scene)
    assert plan.windows.tiled and len(plan.windows.origins) == 4 and plan.controls is not None
    full = plan.controls.adapter[0]
    assert full is not None
    f = engine.model.factor
    for v, (y, x) in enumerate(plan.windows.origins):
        got, _ = plan.controls.inputs(0, torch.tensor([v]), 1)
        for k, r in enumerate(full):
            crop = got[f"adapter:{k}"][0]
            a, b = crop.shape[-2:]
            yk, xk = min(y >> k, r.shape[-2] - a), min(x >> k, r.shape[-1] - b)
            torch.testing.assert_close(crop, r[0, :, yk : yk + a, xk : xk + b])
        image = got[f"controlnet:{CONTROLNET_KIND}:1"][0]
        whole = engine.model.control_input(scene.controls[1])[0][0]
        torch.testing.assert_close(image, whole[:, y * f : (y + 64) * f, x * f : (x + 64) * f])


@pytest.mark.parametrize("mode", ["latent", "attention"])
def test_a_tiled_canvas_is_steered_and_zero_strength_changes_nothing(engine, mode):
    side = 576
    plain = engine.generate(_scene(mode=mode, side=side, steps=1))
    zero = engine.generate(_scene([Control(ADAPTER_KIND, _sketch(side), strength=0)], mode, side=side, steps=1))
    steered = engine.generate(_scene([Control(ADAPTER_KIND, _sketch(side))], mode, side=side, steps=1))
    assert max_diff(plain, zero) <= 1 and max_diff(plain, steered) > 8


# ---- refusals ---------------------------------------------------------------------------


def test_bad_controls_are_refused_in_one_sentence(engine, tiny_components):
    with pytest.raises(SceneError, match="unknown kind 'sketchy'"):
        engine.check(_scene([Control("sketchy", _sketch())]))
    with pytest.raises(SceneError, match=r"image must be uint8 64x64x3, got uint8 \(32, 32, 3\)"):
        engine.check(_scene([Control(ADAPTER_KIND, _sketch(32))]))
    only_lines = dataclasses.replace(tiny_components, controls={ADAPTER_KIND: tiny_components.controls[ADAPTER_KIND]})
    lines = Engine(only_lines)
    assert lines.control_kinds == (ADAPTER_KIND,)
    with pytest.raises(UnknownControl, match="no depth model .*--control depth") as e:
        lines.check(_scene([Control("depth", _sketch(), name="the depth map")]))
    assert "\n" not in str(e.value) and "the depth map" in str(e.value)
    lines.generate(_scene([Control(ADAPTER_KIND, _sketch())]))  # what it has still draws


def test_a_kind_the_daemon_has_no_model_for_is_refused_on_the_wire():
    """A real ``smd-daemon serve`` without a depth model, a real client sending a depth control layer."""
    from daemon_util import connect, half_mask, running

    from smd_daemon import protocol
    from smd_daemon.client import ErrorEvent, FrameEvent, Layer, SceneEvent

    sketch = _sketch().tobytes()
    with running("--control", "depth=none") as d:
        c = connect(d.address, name="artist")
        try:
            assert "depth" not in c.info["capabilities"]["controls"]
            assert ADAPTER_KIND in c.info["capabilities"]["controls"]
            fox = Layer("r", "a red fox", half_mask())
            lines = Layer("c", f"control: {ADAPTER_KIND}", b"\xff" * (S * S), image=sketch)
            rev = c.set_scene(S, S, [fox, lines])
            ok = c.wait_for(lambda e: isinstance(e, (ErrorEvent, SceneEvent)), 60)
            assert isinstance(ok, SceneEvent) and ok.revision == rev, ok
            c.update_scene([Layer("d", "control: depth", b"\xff" * (S * S), image=sketch)])
            err = c.wait_for(lambda e: isinstance(e, (ErrorEvent, SceneEvent)), 60)
            assert isinstance(err, ErrorEvent) and err.code == protocol.ErrorCode.UNKNOWN_CONTROL, err
            assert "no depth model" in err.message and "--control depth" in err.message and "\n" not in err.message
            # Nothing was lost: the scene before keeps streaming.
            c.start_live("raw")
            frame = c.wait_for(lambda e: isinstance(e, FrameEvent), 60)
            assert frame is not None and frame.revision == rev
        finally:
            c.close()


# ---- preprocessing ----------------------------------------------------------------------


def test_line_art_and_scribbles_become_white_strokes_on_black():
    sketch = _sketch()
    lines = K.preprocess("lineart", sketch)
    assert lines.shape == sketch.shape and lines.dtype == np.uint8
    assert lines[0, 0].tolist() == [0, 0, 0]  # the paper
    assert lines[S // 4 + 2, S // 2].tolist() == [255, 255, 255]  # a black stroke
    assert lines[S // 2, S // 4 + 1, 0] == 225  # a dark grey one keeps its weight
    scribble = K.preprocess("scribble", sketch)
    assert set(np.unique(scribble)) == {0, 255}
    # Drawn light on dark already: not inverted.
    night = 255 - sketch
    assert np.array_equal(K.preprocess("scribble", night), scribble)
    paper = sketch.copy()
    paper[::7, ::5] = 240  # paper texture is cut
    assert np.array_equal(K.preprocess("lineart", paper)[0:8, 0:8], np.zeros((8, 8, 3), np.uint8))


def test_canny_finds_the_edges_of_a_square_and_maps_pass_through():
    img = np.zeros((S, S, 3), np.uint8)
    img[16:48, 16:48] = 200
    edges = K.preprocess("canny", img)[..., 0] > 0
    assert edges[16:48, 14:19].any(axis=1).all()  # the left side, top to bottom
    assert not edges[24:40, 24:40].any() and not edges[:8].any()  # nothing inside or far away
    assert not K.canny(np.full((S, S, 3), 90, np.uint8)).any()  # a flat image has no edges
    depth = np.random.default_rng(0).integers(0, 256, (S, S, 3), dtype=np.uint8)
    for kind in ("depth", "pose", "softedge"):
        assert np.array_equal(K.preprocess(kind, depth), depth)


def test_one_channel_adapters_take_the_luminance():
    img = np.zeros((8, 8, 3), np.uint8)
    img[..., 1] = 255
    x = K.control_tensor(img, 1, "cpu", torch.float32)
    assert x.shape == (1, 1, 8, 8) and abs(float(x[0, 0, 0, 0]) - 0.587) < 1e-6
    assert K.control_tensor(img, 3, "cpu", torch.float32).shape == (1, 3, 8, 8)


# ---- loading ---------------------------------------------------------------------------


def test_control_models_load_from_folders_and_files_and_say_which_they_are(tiny_components, tmp_path):
    from safetensors.torch import save_file

    unet = tiny_components.unet
    adapter = random_control("depth", unet, seed=3)
    net = random_control("softedge", unet, seed=3, controlnet=True)
    adapter.save_pretrained(tmp_path / "adapter")
    net.save_pretrained(tmp_path / "net")
    loaded = load_control("depth", str(tmp_path / "adapter"), "sd15", unet, torch.float32)
    assert type(loaded).__name__ == "T2IAdapter"
    x = torch.rand(1, 3, S, S)
    for a, b in zip(loaded(x), adapter(x)):
        torch.testing.assert_close(a, b)
    assert type(load_control("canny", str(tmp_path / "net"), "sd15", unet, torch.float32)).__name__ == "ControlNetModel"
    # A single diffusers-layout file with its config beside it.
    os.makedirs(tmp_path / "file")
    save_file(
        {k: v.contiguous() for k, v in adapter.state_dict().items()}, str(tmp_path / "file" / "depth.safetensors")
    )
    with open(tmp_path / "adapter" / "config.json", encoding="utf-8") as f:
        (tmp_path / "file" / "config.json").write_text(f.read(), encoding="utf-8")
    from_file = load_control("depth", str(tmp_path / "file" / "depth.safetensors"), "sd15", unet, torch.float32)
    for a, b in zip(from_file(x), adapter(x)):
        torch.testing.assert_close(a, b)


def test_control_models_that_do_not_fit_are_refused_in_one_line(tiny_components, tmp_path):
    from diffusers import T2IAdapter

    unet = tiny_components.unet
    T2IAdapter(channels=[320, 640, 1280, 1280], num_res_blocks=1).save_pretrained(tmp_path / "big")
    with pytest.raises(ModelLoadError, match="another model family"):
        load_control("depth", str(tmp_path / "big"), "sd15", unet, torch.float32)
    os.makedirs(tmp_path / "odd")
    (tmp_path / "odd" / "config.json").write_text(json.dumps({"_class_name": "UNet2DModel"}), encoding="utf-8")
    with pytest.raises(ModelLoadError, match="not a T2I-Adapter or a ControlNet"):
        load_control("depth", str(tmp_path / "odd"), "sd15", unet, torch.float32)
    with pytest.raises(ModelLoadError, match="no such file or folder"):
        load_control("depth", str(tmp_path / "missing"), "sd15", unet, torch.float32)
    with pytest.raises(ModelLoadError, match="no default softedge model for the sdxl family"):
        load_control("softedge", "default", "sdxl", unet, torch.float32)
    with pytest.raises(ModelLoadError, match="not in the local cache and offline mode is on"):
        load_control("depth", "someone/t2i-depth", "sd15", unet, torch.float32)


def test_control_flags_parse_into_kinds_and_specs(tiny_components):
    assert set(tiny_components.controls) == set(K.STROKES + K.AS_GIVEN + ("canny",))
    assert parse_controls(["lineart=./sketch-adapter", "depth"]) == {"lineart": "./sketch-adapter", "depth": "default"}
    assert len(parse_controls(["all", "depth=random"])) == len(K.STROKES) + 4
    assert parse_controls(["all", "depth=random"])["depth"] == "random"
    with pytest.raises(ModelLoadError, match="unknown control kind 'sketchy'"):
        parse_controls(["sketchy=x"])


# ---- SDXL ----------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def xl_engine():
    from smd_daemon.engine.models import load_model

    components = load_model("tiny-xl")
    components.controls = load_controls("tiny-xl", {}, components)
    return Engine(components)


@pytest.mark.parametrize("kind", [ADAPTER_KIND, CONTROLNET_KIND])
def test_sdxl_controls_steer_both_region_modes_and_a_tiled_canvas(xl_engine, kind):
    e = xl_engine
    assert e.control_kinds == K.STROKES[:1] + ("scribble", "softedge", "depth", "canny", "pose")
    for mode in e.region_modes:
        plain = e.generate(_scene(mode=mode, side=128))
        zero = e.generate(_scene([Control(kind, _sketch(128), strength=0.0)], mode, side=128))
        steered = e.generate(_scene([Control(kind, _sketch(128))], mode, side=128))
        assert max_diff(plain, zero) <= 1 and max_diff(plain, steered) > 8
    side = 320  # 40x40 latent: tiled in 32x32 windows
    plain = e.generate(_scene(side=side, steps=1))
    steered = e.generate(_scene([Control(kind, _sketch(side))], side=side, steps=1))
    assert max_diff(plain, steered) > 8


def test_serve_refuses_a_bad_control_flag_in_one_line_before_loading(tmp_path):
    from daemon_util import free_port, run_cli

    proc = run_cli("serve", "--model", "tiny", "--control", "sketchy=x", timeout=120)
    assert proc.returncode == 2
    assert proc.stderr.strip().count("\n") == 0 and "unknown control kind 'sketchy'" in proc.stderr
    missing = str(tmp_path / "no-such-adapter")
    proc = run_cli(
        "serve",
        "--model",
        "tiny",
        "--bind",
        f"tcp://127.0.0.1:{free_port()}",
        "--control",
        f"depth={missing}",
        timeout=180,
    )
    last = proc.stderr.strip().splitlines()[-1]
    assert proc.returncode == 2 and "no such file or folder" in last and "depth=" in last

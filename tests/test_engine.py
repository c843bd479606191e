import os

import numpy as np
import pytest
import torch
from engine_util import batched_and_solo, count_unet_forwards, edit_in_flight, frame_batches, max_diff

from smd_daemon.engine.core import Cancelled, Engine
from smd_daemon.engine.scene import Background, Region, Scene, SceneError

S = 128  # px; the tiny UNet's latent is 16x16 here


def _full(h=S, w=S):
    return np.ones((h, w), np.float32)


def _two_regions(prompt_a="a red fox", prompt_b="snowy pine forest", seed=1, **kw):
    a = np.zeros((S, S), np.float32)
    a[:, : S // 2] = 1
    b = np.zeros((S, S), np.float32)
    b[S // 4 : S - 8, S // 3 : S - 4] = 1
    return Scene(
        S, S, [Region(prompt_a, a), Region(prompt_b, b)], background=Background("a blue sky"), seed=seed, steps=4, **kw
    )


def test_single_full_region_matches_diffusers_lcm_pipeline(engine):
    from smd_daemon.engine.tiny import build_tiny_pipeline

    scene = Scene(
        256,
        256,
        [Region("a red fox", _full(256, 256), mask_std=0, prompt_strength=1.0)],
        seed=3,
        steps=4,
        bootstrap_steps=0,
    )
    ours = engine.generate(scene)
    pipe = build_tiny_pipeline()  # same seed -> same weights as the preset
    ref = pipe(
        "a red fox",
        num_inference_steps=4,
        guidance_scale=1.0,
        height=256,
        width=256,
        generator=torch.Generator().manual_seed(3),
        output_type="np",
    ).images[0]
    assert ours.shape == (256, 256, 3) and ours.dtype == np.uint8
    assert max_diff(ours, (ref * 255).round().astype(np.uint8)) <= 1
    assert ours.std() > 5  # not a blank image


def test_identical_prompts_in_every_region_reproduce_the_single_prompt_result(engine):
    single = Scene(S, S, [Region("a red fox", _full(), mask_std=0, prompt_strength=1.0)], seed=5, bootstrap_steps=0)
    left = np.zeros((S, S), np.float32)
    left[:, :80] = 1
    right = np.zeros((S, S), np.float32)
    right[:, 48:] = 1
    blob = np.zeros((S, S), np.float32)
    blob[20:90, 30:100] = 0.7
    regions = [Region("a red fox", m, mask_std=s, prompt_strength=1.0) for m, s in [(left, 4), (right, 0), (blob, 8)]]
    multi = Scene(S, S, regions, background=Background("a red fox"), seed=5, bootstrap_steps=0)
    assert max_diff(engine.generate(single), engine.generate(multi)) <= 1


def test_stream_makes_exactly_one_unet_call_per_frame(engine):
    stream = engine.open_stream(_two_regions())
    calls = frame_batches(engine, stream, 6)
    # after warm-up one call carries every level in flight for every region (+ background)
    assert calls[-1] == stream.steps_in_flight * 3


def test_static_stream_gives_identical_consecutive_frames(engine):
    stream = engine.open_stream(_two_regions())
    frames = [stream.step() for _ in range(3 * stream.steps_in_flight)]
    assert frames[-1].settled
    tail = [f.image for f in frames[2 * stream.steps_in_flight :]]
    for img in tail[1:]:
        assert np.array_equal(img, tail[0])
    assert [f.index for f in frames] == list(range(len(frames)))


def test_stream_emits_a_frame_from_the_first_call(engine):
    stream = engine.open_stream(_two_regions())
    first = stream.step()
    assert first.image.shape == (S, S, 3) and not first.settled


def test_an_edit_is_fully_visible_within_steps_in_flight_frames(engine):
    T = 4
    stream, seen, expect = edit_in_flight(engine, _two_regions(), _two_regions(prompt_b="a castle on a hill"), T)
    assert all(f.revision == 2 for f in seen)
    # after T frames the stream shows exactly what a fresh stream of the edited scene shows
    for _ in range(T):
        got = stream.step().image
    assert max_diff(got, expect) <= 1


def test_seeds_are_deterministic_and_different_seeds_differ(engine):
    a = engine.generate(_two_regions(seed=7))
    b = engine.generate(_two_regions(seed=7))
    c = engine.generate(_two_regions(seed=8))
    assert np.array_equal(a, b)
    assert max_diff(a, c) > 10


def test_regions_change_the_image_only_where_they_are(engine):
    base = _two_regions()
    moved = _two_regions()
    moved.regions[1].prompt = "a castle on a hill"
    a, b = engine.generate(base), engine.generate(moved)
    # the left band belongs to region 0 (and region 1 covers x >= 42): far-left columns barely change
    assert (
        np.abs(a[:, :24].astype(int) - b[:, :24].astype(int)).mean()
        < np.abs(a[:, 64:].astype(int) - b[:, 64:].astype(int)).mean()
    )


def test_background_image_at_full_strength_is_reproduced(engine):
    rng = np.random.default_rng(0)
    img = np.kron(rng.integers(0, 255, (8, 8, 3)), np.ones((16, 16, 1))).astype(np.uint8)
    scene = Scene(S, S, [], background=Background(image=img, strength=1.0), seed=0)
    out = engine.generate(scene)
    assert np.array_equal(out, engine.model.decode(engine.model.encode_image(img)))


def test_large_canvas_uses_overlapping_windows(engine):
    calls, restore = count_unet_forwards(engine)
    try:
        m = np.zeros((128, 1024), np.float32)
        m[:, 400:700] = 1
        scene = Scene(
            1024, 128, [Region("a red fox", m)], background=Background("a long beach"), steps=2, bootstrap_steps=0
        )
        out = engine.generate(scene)
    finally:
        restore()
    assert out.shape == (128, 1024, 3)
    plan = engine.plan(scene)
    assert len(plan.windows.origins) == 3  # 128-latent-wide canvas, 64-wide windows, stride 32
    assert len(calls) == 2 and max(calls) <= 3 * 2  # the region only enters windows it touches


def test_classifier_free_guidance_doubles_the_batch_only_above_one(engine):
    calls, restore = count_unet_forwards(engine)
    try:
        scene = Scene(S, S, [Region("a red fox", _full(), negative_prompt="blurry")], steps=2, bootstrap_steps=0)
        engine.generate(scene)
        plain = list(calls)
        calls.clear()
        scene.guidance_scale = 3.0
        engine.generate(scene)
    finally:
        restore()
    assert plain == [1, 1] and calls == [2, 2]


def test_prompt_embeddings_are_cached(engine):
    calls, te = [], engine.model.components.text_encoder
    orig = te.forward
    te.forward = lambda *a, **k: (calls.append(1), orig(*a, **k))[1]
    try:
        stream = engine.open_stream(_two_regions())
        stream.step()
        n = len(calls)
        stream.update(_two_regions(), revision=1)
        stream.step()
        stream.step()
    finally:
        te.forward = orig
    assert n >= 1 and len(calls) == n


def test_generate_reports_progress_and_can_be_cancelled(engine):
    seen = []
    engine.generate(_two_regions(), progress=lambda i, n: seen.append((i, n)))
    assert seen == [(1, 4), (2, 4), (3, 4), (4, 4)]
    with pytest.raises(Cancelled):
        engine.generate(_two_regions(), cancel=lambda: True)


@pytest.mark.parametrize(
    "change, message",
    [
        (lambda s: setattr(s, "width", 100), "multiples of 8"),
        (lambda s: setattr(s, "width", 8192), "outside"),
        (lambda s: setattr(s, "steps", 0), "steps"),
        (lambda s: setattr(s.regions[0], "mask_strength", float("nan")), "mask strength"),
        (lambda s: setattr(s.regions[0], "mask", np.ones((5, 5), np.float32)), "mask"),
        (lambda s: setattr(s.regions[0], "prompt", "x" * 5000), "characters"),
        (lambda s: setattr(s, "regions", s.regions * 20), "regions"),
    ],
)
def test_bad_scenes_are_refused_with_a_clear_message(engine, change, message):
    scene = _two_regions()
    change(scene)
    with pytest.raises(SceneError, match=message):
        engine.generate(scene)
    with pytest.raises(SceneError, match=message):
        engine.open_stream(scene)


def test_lcm_distilled_unet_gets_the_guidance_embedding_like_diffusers():
    from diffusers import LatentConsistencyModelPipeline, UNet2DConditionModel

    from smd_daemon.engine.models import components_from_pipeline
    from smd_daemon.engine.tiny import build_tiny_pipeline

    pipe = build_tiny_pipeline()
    cfg = {k: v for k, v in pipe.unet.config.items() if not k.startswith("_")}
    cfg["time_cond_proj_dim"] = 32
    torch.manual_seed(0)
    pipe.unet = UNet2DConditionModel(**cfg)
    lcm = LatentConsistencyModelPipeline(
        pipe.vae,
        pipe.text_encoder,
        pipe.tokenizer,
        pipe.unet,
        pipe.scheduler,
        safety_checker=None,
        feature_extractor=None,
        requires_safety_checker=False,
    )
    ref = lcm(
        "a red fox",
        num_inference_steps=4,
        guidance_scale=8.5,
        height=S,
        width=S,
        generator=torch.Generator().manual_seed(2),
        output_type="np",
    ).images[0]
    engine = Engine(components_from_pipeline(pipe, "tiny-lcm", torch.device("cpu"), torch.float32))
    ours = engine.generate(
        Scene(S, S, [Region("a red fox", _full(), mask_std=0, prompt_strength=1.0)], seed=2, bootstrap_steps=0)
    )
    assert max_diff(ours, (ref * 255).round().astype(np.uint8)) <= 1


def test_streams_of_several_clients_share_one_unet_call_and_match_solo_runs(engine):
    a_scene, b_scene = _two_regions(seed=1), _two_regions(prompt_a="a hot air balloon", seed=2)
    pair, solo = batched_and_solo(engine, [a_scene, b_scene], 6)
    for got, expect in zip(pair, solo):
        assert got.index == expect.index and max_diff(got.image, expect.image) <= 1
    assert max_diff(pair[0].image, pair[1].image) > 10


def test_non_finite_model_output_is_an_error_not_a_black_frame(engine):
    unet = engine.model.components.unet
    orig = unet.forward
    unet.forward = lambda sample, *a, **k: (orig(sample, *a, **k)[0] * float("nan"),)
    try:
        with pytest.raises(FloatingPointError, match="non-finite"):
            engine.open_stream(_two_regions()).step()
        with pytest.raises(FloatingPointError):
            engine.generate(_two_regions())
    finally:
        unet.forward = orig


def test_big_batches_are_split_into_passes_with_the_same_result(tiny_components):
    whole = Engine(tiny_components, max_batch=None)
    split = Engine(tiny_components, max_batch=2)
    calls, restore = count_unet_forwards(split)
    try:
        got = split.generate(_two_regions())
    finally:
        restore()
    assert max(calls) <= 2 and len(calls) > 4
    assert max_diff(got, whole.generate(_two_regions())) <= 1


def test_an_edit_can_turn_bootstrapping_on_in_a_running_stream(engine):
    scene = _two_regions(bootstrap_steps=0)
    stream = engine.open_stream(scene)
    stream.step()
    stream.update(_two_regions(bootstrap_steps=2), revision=1)
    for _ in range(4):
        frame = stream.step()
    assert frame.settled and frame.revision == 1


def test_planes_decoded_from_a_message_reach_the_engine_without_a_copy_or_a_warning():
    # In a fresh process: torch warns about a read-only array once per process.
    import subprocess
    import sys
    import textwrap

    script = textwrap.dedent("""
        import warnings, zlib
        warnings.filterwarnings("error", message=".*not writable")
        from smd_daemon.engine.core import Engine
        from smd_daemon.engine.models import load_model
        from smd_daemon.grammar import LayerInput, build_scene
        from smd_daemon.server.images import decode_plane

        S = 64
        alpha = decode_plane(zlib.compress((b"\\xff" * 32 + bytes(32)) * S), "zlib", S, S, 1, "alpha")
        image = decode_plane(memoryview(bytes(range(192)) * S), "raw", S, S, 3, "image")
        assert not alpha.flags.writeable and not image.flags.writeable  # no second, writable copy
        scene, _ = build_scene([LayerInput("a red fox", alpha)], S, S, background_image=image,
                               background_strength=0.5)
        Engine(load_model("tiny")).generate(scene)
        print("drawn")
    """)
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    proc = subprocess.run(
        [sys.executable, "-c", script],
        capture_output=True,
        text=True,
        timeout=300,
        cwd=root,
        env={**os.environ, "OMP_NUM_THREADS": "1"},
    )
    assert proc.returncode == 0 and "drawn" in proc.stdout, proc.stderr[-3000:]


@pytest.mark.parametrize("mode, guidance", [("latent", 1.0), ("attention", 2.0)])
def test_what_a_family_says_of_each_window_reaches_the_denoiser_with_its_samples(tiny_components, mode, guidance):
    # SDXL is told each window's size and crop; here a family that is told its origin.
    engine = Engine(tiny_components)
    family, calls = engine.model.family, []
    family.window_inputs = lambda canvas, origins, size: {"origin": torch.tensor(origins, dtype=torch.float32)}
    denoise = family.denoise
    family.denoise = lambda fn, inputs: (calls.append(inputs["origin"].tolist()), denoise(fn, inputs))[1]
    m = np.zeros((128, 1024), np.float32)
    m[:, 400:700] = 1
    scene = Scene(
        1024,
        128,
        [Region("a fox", m)],
        background=Background("a beach"),
        steps=2,
        region_mode=mode,
        guidance_scale=guidance,
        bootstrap_steps=1,
    )
    engine.generate(scene)
    plan = engine.plan(scene)
    for call, level in zip(calls, plan.levels):
        origins = [list(map(float, plan.windows.origins[v])) for v in level.window.tolist()]
        assert call == origins * (2 if plan.cfg else 1)
    assert len(calls) == 2 and plan.cfg == (guidance > 1)

"""The SDXL family on the tiny-xl preset: conditioning (two encoders, pooled
embedding, size/crop time ids), both region modes, streams, passes, tiled
canvases, batching of sessions, loading, and fp16 safety."""

import numpy as np
import pytest
import torch
from engine_util import batched_and_solo, count_unet_forwards, frame_batches, max_diff

from smd_daemon.engine import attention as A
from smd_daemon.engine.core import Engine
from smd_daemon.engine.scene import Background, Region, Scene
from smd_daemon.engine.tiny_xl import build_tiny_xl_pipeline

S = 128  # px: a 16² latent; tiny-xl's window is 32² (256 px)


@pytest.fixture(scope="module")
def xl_components():
    from smd_daemon.engine.models import load_model

    return load_model("tiny-xl")


@pytest.fixture
def xl(xl_components):
    return Engine(xl_components)


def _turbo_scheduler(config):
    """The scheduler SDXL-Turbo and SDXL-Lightning ship: Euler, trailing timesteps."""
    from diffusers import EulerDiscreteScheduler

    return EulerDiscreteScheduler.from_config(config, timestep_spacing="trailing")


@pytest.fixture(scope="module")
def turbo_xl_folder(tmp_path_factory):
    d = tmp_path_factory.mktemp("models") / "tiny-xl-turbo"
    pipe = build_tiny_xl_pipeline(0)
    pipe.scheduler = _turbo_scheduler(pipe.scheduler.config)
    pipe.save_pretrained(d)
    return d


def _two_regions(mode="latent", prompt_a="a red fox", seed=1, size=S, **kw):
    a = np.zeros((size, size), np.float32)
    a[:, : size // 2] = 1
    b = np.zeros((size, size), np.float32)
    b[size // 4 : size - 8, size // 3 : size - 4] = 1
    kw.setdefault("steps", 4)
    return Scene(
        size,
        size,
        [Region(prompt_a, a), Region("snowy pine forest", b)],
        background=Background("a blue sky"),
        seed=seed,
        region_mode=mode,
        **kw,
    )


def _full_region(size=256, **kw):
    region = Region("a red fox", np.ones((size, size), np.float32), mask_std=0, prompt_strength=1.0)
    return Scene(size, size, [region], bootstrap_steps=0, **kw)


def _diffusers_image(pipe, steps, guidance, seed=3, size=256):
    ref = pipe(
        "a red fox",
        num_inference_steps=steps,
        guidance_scale=guidance,
        height=size,
        width=size,
        generator=torch.Generator().manual_seed(seed),
        output_type="np",
    ).images[0]
    return (ref * 255).round().astype(np.uint8)


def test_tiny_xl_is_an_sdxl_model_with_two_encoders_and_deep_transformer_blocks(xl):
    from diffusers.models.attention import BasicTransformerBlock

    c, f = xl.model.components, xl.model.family
    assert c.family == "sdxl" and f.name == "sdxl" and c.describe()["family"] == "sdxl"
    cond = f.encode(["a red fox", ""])
    assert cond.tokens.shape == (2, 77, 64) and cond.pooled is not None and cond.pooled.shape == (2, 32)
    # Every cross-attention layer, those of the 2-layer transformer blocks included.
    blocks = [m for m in c.unet.modules() if isinstance(m, BasicTransformerBlock)]
    depths = [len(m.transformer_blocks) for m in c.unet.modules() if hasattr(m, "transformer_blocks")]
    assert max(depths) == 2 and len(f.region_layers()) == len(blocks) == sum(depths)
    assert set(f.region_layers()) == {b.attn2 for b in blocks}


# Turbo at one step: its later steps re-noise the clean estimate, as LCM
# sampling does (what a stream needs), where diffusers' Euler takes ODE steps.
@pytest.mark.parametrize(
    "kind, steps, guidance", [("lcm", 4, 1.0), ("lcm", 2, 3.0), ("turbo", 1, 0.0), ("turbo", 1, 1.0)]
)
def test_single_full_region_matches_diffusers_sdxl_pipeline(xl_components, turbo_xl_folder, kind, steps, guidance):
    from diffusers import StableDiffusionXLPipeline

    from smd_daemon.engine.models import load_model

    if kind == "lcm":
        engine, pipe = Engine(xl_components), build_tiny_xl_pipeline()  # same seed -> same weights
    else:
        engine = Engine(load_model(str(turbo_xl_folder)))
        assert engine.kind == "turbo"
        pipe = StableDiffusionXLPipeline.from_pretrained(turbo_xl_folder, local_files_only=True)
    # guidance > 1 with no negative prompt: zeros for the unconditional branch, as diffusers does.
    ours = engine.generate(_full_region(seed=3, steps=steps, guidance_scale=guidance))
    assert ours.shape == (256, 256, 3) and ours.std() > 5
    assert max_diff(ours, _diffusers_image(pipe, steps, guidance)) <= 1


def test_an_empty_negative_prompt_is_zeros_and_a_given_one_is_encoded(xl):
    scene = _two_regions(guidance_scale=2.0)
    scene.regions[0].negative_prompt = "blurry"
    plan = xl.plan(scene)
    assert plan.cfg and plan.neg is not None and plan.neg.pooled is not None
    # Latent mode: rows are the regions', then the background's.
    zero = [not bool(plan.neg.tokens[k].abs().sum()) for k in range(3)]
    assert zero == [False, True, True]
    assert bool(plan.neg.pooled[1:].abs().sum() == 0) and bool(plan.neg.pooled[0].abs().sum() > 0)


def test_latent_mode_gives_each_sample_its_own_prompts_pooled_embedding(xl):
    plan = xl.plan(_two_regions())
    sky = xl.model.encode_prompts(["a blue sky"])
    regions = sky.toward(xl.model.encode_prompts(["a red fox", "snowy pine forest"]), torch.tensor([0.95, 0.95]))
    assert plan.cond.pooled is not None and sky.pooled is not None and regions.pooled is not None
    torch.testing.assert_close(plan.cond.pooled, torch.cat([regions.pooled, sky.pooled]))
    torch.testing.assert_close(plan.cond.tokens, torch.cat([regions.tokens, sky.tokens]))
    assert not torch.allclose(plan.cond.pooled[0], plan.cond.pooled[1])  # each its own


def test_attention_mode_gives_the_one_sample_the_area_weighted_pooled_embedding(xl):
    left = np.zeros((S, S), np.float32)
    left[:, : S // 4] = 1  # a quarter of the canvas; the background has the rest
    scene = Scene(
        S, S, [Region("a red fox", left, mask_std=0, prompt_strength=1.0)], background=Background("a blue sky")
    )
    scene.region_mode = "attention"
    plan = xl.plan(scene)
    sky, fox = xl.model.encode_prompts(["a blue sky", "a red fox"]).pooled
    assert plan.cond.pooled is not None and plan.cond.pooled.shape == (1, 32)
    torch.testing.assert_close(plan.cond.pooled[0], 0.75 * sky + 0.25 * fox)
    assert plan.cond.tokens.shape == (1, 2 * 77, 64)


@pytest.mark.parametrize("guidance", [1.0, 3.0])
def test_attention_mode_one_full_canvas_region_equals_plain_generation(xl, guidance):
    full = np.ones((S, S), np.float32)
    region = Region("a red fox", full, negative_prompt="blurry", mask_std=0, prompt_strength=1.0)
    attention = Scene(S, S, [region], background=Background("a blue sky", "ugly"), seed=3, guidance_scale=guidance)
    attention.region_mode = "attention"
    plain = Scene(S, S, [], background=Background("a red fox", "blurry"), seed=3, guidance_scale=guidance)
    plain.bootstrap_steps = 0
    got, expect = xl.generate(attention), xl.generate(plain)
    assert got.std() > 5 and max_diff(got, expect) <= 1


def test_attention_mode_mixes_prompts_in_every_cross_attention_layer(xl):
    seen = []
    orig = A.regional_attention

    def spy(attn, *a, **k):
        seen.append(attn)
        return orig(attn, *a, **k)

    A.regional_attention = spy
    try:
        stream = xl.open_stream(_two_regions("attention"))
        calls = frame_batches(xl, stream, 1)
    finally:
        A.regional_attention = orig
    assert len(calls) == 1 and set(seen) == set(xl.model.family.region_layers())
    assert len(seen) == len(xl.model.family.region_layers())


@pytest.mark.parametrize("mode", ["latent", "attention"])
def test_streams_settle_into_what_generate_makes(xl, mode):
    stream = xl.open_stream(_two_regions(mode))
    calls = frame_batches(xl, stream, 2 * stream.steps_in_flight)
    frames = [stream.step() for _ in range(2)]
    assert frames[-1].settled and np.array_equal(frames[0].image, frames[1].image)
    assert calls[-1] == stream.steps_in_flight * (3 if mode == "latent" else 1)
    assert frames[-1].image.std() > 5
    assert max_diff(frames[-1].image, xl.generate(_two_regions(mode))) <= 1


@pytest.mark.parametrize("mode", ["latent", "attention"])
def test_sessions_share_one_unet_call_and_match_solo_runs(xl, mode):
    a, b = _two_regions(mode, seed=1), _two_regions(mode, prompt_a="a hot air balloon", seed=2)
    pair, solo = batched_and_solo(xl, [a, b], 5)
    for got, expect in zip(pair, solo):
        assert got.index == expect.index and max_diff(got.image, expect.image) <= 1
    assert max_diff(pair[0].image, pair[1].image) > 10


def test_big_batches_are_split_into_passes_with_the_same_result(xl_components):
    whole, split = Engine(xl_components, max_batch=None), Engine(xl_components, max_batch=2)
    calls, restore = count_unet_forwards(split)
    try:
        got = split.generate(_two_regions())
    finally:
        restore()
    assert max(calls) <= 2 and len(calls) > 4
    assert max_diff(got, whole.generate(_two_regions())) <= 1


@pytest.mark.parametrize("mode", ["latent", "attention"])
def test_each_window_of_a_panorama_gets_its_own_crop_coordinates(xl, mode):
    m = np.zeros((128, 512), np.float32)
    m[:, 200:350] = 1
    scene = Scene(512, 128, [Region("a fox", m)], background=Background("a beach"), steps=2, region_mode=mode, seed=4)
    unet, seen = xl.model.components.unet, []
    orig = unet.forward

    def spy(sample, *a, **k):
        seen.append(k["added_cond_kwargs"]["time_ids"].tolist())
        return orig(sample, *a, **k)

    unet.forward = spy
    try:
        image = xl.generate(scene)
    finally:
        del unet.forward
    assert image.shape == (128, 512, 3) and len(seen) == 2
    plan = xl.plan(scene)
    assert plan.windows.tiled and plan.windows.origins == [(0, 0), (0, 32)]
    for ids, level in zip(seen, plan.levels):
        # original size = the canvas, crop top/left = the window's origin, target = the window (pixels)
        assert ids == [[128.0, 512.0, 0.0, 256.0 * (v == 1), 128.0, 256.0] for v in level.window.tolist()]
    # the stream of a panorama shows what generate makes
    stream = xl.open_stream(scene)
    for _ in range(2 * stream.steps_in_flight):
        frame = stream.step()
    assert max_diff(frame.image, image) <= 1

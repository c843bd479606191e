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
    assert cond.tokens.shape == (2, 77, 80) and cond.pooled is not None and cond.pooled.shape == (2, 32)
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
    assert plan.cond.tokens.shape == (1, 2 * 77, 80)


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


# --- loading -----------------------------------------------------------------


def test_an_sdxl_folder_is_told_from_its_index_or_its_unet(turbo_xl_folder, caplog):
    import json
    import logging

    from smd_daemon.engine.models import load_model
    from smd_daemon.engine.pipelines import pipeline_family

    with caplog.at_level(logging.INFO, logger="smd_daemon.engine.models"):
        c = load_model(str(turbo_xl_folder))
    assert c.family == "sdxl" and c.text_encoder_2 is not None and "is an SDXL model" in caplog.text
    index = json.loads((turbo_xl_folder / "model_index.json").read_text())
    unet = json.loads((turbo_xl_folder / "unet" / "config.json").read_text())
    assert pipeline_family(index) == "sdxl"
    assert pipeline_family({"_class_name": "SomeCommunityPipeline"}, unet) == "sdxl"
    assert pipeline_family({"_class_name": "StableDiffusionPipeline"}, {"cross_attention_dim": 768}) == "sd15"


def test_dmd2_timesteps_are_fixed_and_match_diffusers_lcm_with_those_timesteps(xl_components):
    import dataclasses

    from smd_daemon.engine.models import parse_timesteps
    from smd_daemon.engine.scene import SceneError

    dmd2 = [999, 749, 499, 249]
    engine = Engine(dataclasses.replace(xl_components, timesteps=parse_timesteps("999,749,499,249")))
    assert engine.kind == "lcm" and engine.model.timesteps(4) == dmd2
    assert [engine.model.timesteps(n) for n in (1, 2)] == [[999], [999, 499]]
    with pytest.raises(SceneError, match="steps"):
        engine.generate(_full_region(seed=3, steps=5))
    ours = engine.generate(_full_region(seed=3, steps=4))
    pipe = build_tiny_xl_pipeline()
    ref = pipe(
        "a red fox",
        timesteps=dmd2,
        guidance_scale=1.0,
        height=256,
        width=256,
        generator=torch.Generator().manual_seed(3),
        output_type="np",
    ).images[0]
    assert max_diff(ours, (ref * 255).round().astype(np.uint8)) <= 1


@pytest.mark.parametrize("text", ["999,abc", "249,499", "1000", "", "999,999"])
def test_bad_timesteps_are_one_line(text):
    from smd_daemon.engine.models import ModelLoadError, parse_timesteps

    if not text:
        assert parse_timesteps(text) is None
        return
    with pytest.raises(ModelLoadError) as e:
        parse_timesteps(text)
    assert "\n" not in str(e.value) and "timesteps" in str(e.value)


def _save_lora(builder, folder):
    """A LoRA (non-zero) on the attention projections of ``builder``'s UNet, saved in diffusers' layout."""
    from diffusers import StableDiffusionPipeline
    from diffusers.utils import convert_state_dict_to_diffusers
    from peft import LoraConfig
    from peft.utils import get_peft_model_state_dict

    unet = builder(0).unet
    torch.manual_seed(3)
    unet.add_adapter(
        LoraConfig(r=4, lora_alpha=8, target_modules=["to_q", "to_k", "to_v", "to_out.0"], init_lora_weights=False)
    )
    with torch.no_grad():
        for name, p in unet.named_parameters():
            if "lora_B" in name:
                p.normal_(0, 0.5)
    StableDiffusionPipeline.save_lora_weights(
        folder,
        unet_lora_layers=convert_state_dict_to_diffusers(get_peft_model_state_dict(unet)),
        safe_serialization=True,
        unet_lora_adapter_metadata=unet.peft_config["default"].to_dict(),
    )
    return folder / "pytorch_lora_weights.safetensors"


def test_a_lora_for_the_wrong_family_is_refused_in_one_line_and_the_right_one_fuses(tmp_path, xl_components):
    from smd_daemon.engine.models import ModelLoadError, load_model
    from smd_daemon.engine.tiny import build_tiny_pipeline

    sd15_lora = _save_lora(build_tiny_pipeline, tmp_path / "sd15")
    xl_lora = _save_lora(build_tiny_xl_pipeline, tmp_path / "sdxl")
    with pytest.raises(ModelLoadError) as e:
        load_model("tiny-xl", lora=str(sd15_lora))
    assert "\n" not in str(e.value) and "not for this SDXL model" in str(e.value)
    with pytest.raises(ModelLoadError) as e:
        load_model("tiny", lora=str(xl_lora))
    assert "\n" not in str(e.value) and "not for this SD-1.5 model" in str(e.value)
    fused = load_model("tiny-xl", lora=str(xl_lora))
    name = "down_blocks.2.attentions.0.transformer_blocks.1.attn2.to_q.weight"  # in a 2-deep block
    before, after = xl_components.unet.state_dict()[name], fused.unet.state_dict()[name]
    assert after.shape == before.shape and not torch.allclose(after, before)


# --- fp16 and non-finite frames ----------------------------------------------------


def _save_vae(folder, **config):
    from diffusers import AutoencoderKL

    torch.manual_seed(5)
    vae = AutoencoderKL(
        block_out_channels=(16, 16, 32, 32),  # pyright: ignore[reportArgumentType]
        down_block_types=("DownEncoderBlock2D",) * 4,  # pyright: ignore[reportArgumentType]
        up_block_types=("UpDecoderBlock2D",) * 4,  # pyright: ignore[reportArgumentType]
        layers_per_block=1,
        norm_num_groups=16,
        scaling_factor=0.13025,
        **config,
    )
    vae.save_pretrained(folder)
    return vae


def test_sdxls_vae_decodes_finished_images_in_fp32_and_a_given_fp16_safe_vae_in_fp16(tmp_path):
    from diffusers import AutoencoderKL, AutoencoderTiny

    from smd_daemon.engine.models import ModelLoadError, load_model

    engine = Engine(load_model("tiny-xl", dtype="fp16", tiny_vae="tiny"))
    m = engine.model
    assert isinstance(m.autoencoder.vae, AutoencoderTiny) and m.autoencoder.vae_dtype == torch.float16  # live frames
    assert isinstance(m.final_autoencoder.vae, AutoencoderKL) and m.final_autoencoder.vae_dtype == torch.float32
    assert m.components.unet.dtype == torch.float16
    image = engine.generate(_full_region(size=64, seed=2, steps=1))
    assert image.shape == (64, 64, 3)
    # A fixed fp16 VAE (force_upcast off in its config) stays in fp16.
    _save_vae(tmp_path / "vae-fp16-fix", force_upcast=False)
    fixed = Engine(load_model("tiny-xl", dtype="fp16", vae=str(tmp_path / "vae-fp16-fix")))
    assert fixed.model.final_autoencoder.vae_dtype == torch.float16
    assert not fixed.model.final_autoencoder.vae.config.force_upcast
    _save_vae(tmp_path / "vae-16", latent_channels=16)
    with pytest.raises(ModelLoadError, match="16 latent channels"):
        load_model("tiny-xl", vae=str(tmp_path / "vae-16"))


def test_a_vae_that_overflows_is_an_error_not_a_black_picture(xl):
    vae = xl.model.final_autoencoder.vae
    hook = vae.decoder.register_forward_hook(lambda mod, args, out: out * float("inf"))
    try:
        with pytest.raises(FloatingPointError, match="non-finite"):
            xl.generate(_full_region(size=64, seed=2, steps=1))
    finally:
        hook.remove()


def test_nan_from_the_unet_reaches_the_client_as_an_engine_error_with_a_sentence(xl):
    from daemon_util import connect, free_port, half_mask, serving

    from smd_daemon.client import ErrorEvent, FrameEvent, Layer, LiveEvent
    from smd_daemon.server import Limits, Server

    unet = xl.model.components.unet
    hook = unet.register_forward_hook(lambda mod, args, out: (out[0] * float("nan"),))
    with serving(Server(xl, xl.model.components.describe(), f"tcp://127.0.0.1:{free_port()}", Limits())) as srv:
        client = connect(srv.bind)
        try:
            client.set_scene(64, 64, [Layer("1", "a red fox", half_mask(64))])
            client.start_live("raw")
            err = client.wait_for(lambda e: isinstance(e, ErrorEvent | FrameEvent), 120)
            assert isinstance(err, ErrorEvent), "a NaN frame reached the client"
            assert err.code == "engine_error" and "non-finite" in err.message and "live mode stopped" in err.message
            assert client.wait_for(lambda e: isinstance(e, LiveEvent) and not e.active, 30) is not None
            job = client.generate("png")
            err = client.wait_for(lambda e: isinstance(e, ErrorEvent), 120)
            assert err.code == "engine_error" and err.header.get("job") == job and "NaN" in err.message
            hook.remove()  # the model is well again: the same session draws
            client.start_live("raw")
            frame = client.wait_for(lambda e: isinstance(e, FrameEvent), 120)
            assert frame is not None
        finally:
            hook.remove()
            client.close()


def test_a_distilled_unet_file_replaces_the_models_and_one_of_another_family_is_refused(tmp_path):
    from safetensors.torch import save_file

    from smd_daemon.engine.models import ModelLoadError, load_model
    from smd_daemon.engine.tiny import build_tiny_pipeline

    other = build_tiny_xl_pipeline(7).unet  # same architecture, other weights: a distilled UNet's stand-in
    save_file({k: v.contiguous() for k, v in other.state_dict().items()}, tmp_path / "lightning_unet.safetensors")
    c = load_model("tiny-xl", unet=str(tmp_path / "lightning_unet.safetensors"), kind="turbo", prediction="sample")
    name = "mid_block.attentions.0.transformer_blocks.1.attn2.to_k.weight"
    assert torch.equal(c.unet.state_dict()[name], other.state_dict()[name])
    assert c.kind == "turbo" and c.scheduler.config.prediction_type == "sample"
    assert Engine(c).model.schedule(1).prediction == "sample"
    sd15 = build_tiny_pipeline(0).unet
    save_file({k: v.contiguous() for k, v in sd15.state_dict().items()}, tmp_path / "sd15_unet.safetensors")
    with pytest.raises(ModelLoadError) as e:
        load_model("tiny-xl", unet=str(tmp_path / "sd15_unet.safetensors"))
    assert "\n" not in str(e.value) and "does not fit this model's UNet" in str(e.value)
    with pytest.raises(ModelLoadError, match="unknown prediction"):
        load_model("tiny-xl", prediction="x0")


def test_random_weights_for_large_modules_are_filled_fast_and_keep_activations_sane():
    from diffusers import UNet2DConditionModel

    from smd_daemon.engine.tiny_xl import fill_random

    config = build_tiny_xl_pipeline(0).unet.config
    with torch.device("meta"):
        unet = UNet2DConditionModel.from_config(config)
    fill_random(unet.to_empty(device="cpu"), seed=1, pool=1 << 12)  # a small pool: slices wrap around it
    weights = dict(unet.named_parameters())
    assert all(bool(p.isfinite().all()) for p in weights.values())
    assert torch.equal(weights["conv_norm_out.weight"], torch.ones_like(weights["conv_norm_out.weight"]))
    q = weights["mid_block.attentions.0.transformer_blocks.1.attn2.to_q.weight"]
    assert abs(float(q.std()) * q.shape[1] ** 0.5 - 1) < 0.2  # 1/sqrt(fan-in)
    with torch.no_grad():
        out = unet(
            torch.randn(1, 4, 16, 16),
            torch.tensor([500]),
            encoder_hidden_states=torch.randn(1, 77, 80),
            added_cond_kwargs={
                "text_embeds": torch.randn(1, 32),
                "time_ids": torch.tensor([[128.0, 128, 0, 0, 128, 128]]),
            },
        ).sample
    assert bool(out.isfinite().all()) and 0.05 < float(out.std()) < 20


def test_an_lcm_distilled_sdxl_unet_gets_the_guidance_embedding_like_diffusers():
    from diffusers import UNet2DConditionModel

    from smd_daemon.engine.models import components_from_pipeline

    pipe = build_tiny_xl_pipeline()
    cfg = {k: v for k, v in pipe.unet.config.items() if not k.startswith("_")}
    cfg["time_cond_proj_dim"] = 32  # as latent-consistency/lcm-sdxl's UNet embeds the guidance scale
    torch.manual_seed(0)
    pipe.unet = UNet2DConditionModel(**cfg)
    ref = _diffusers_image(pipe, 4, 8.5, seed=2, size=S)
    engine = Engine(components_from_pipeline(pipe, "tiny-lcm-xl", torch.device("cpu"), torch.float32))
    assert engine.model.family.embeds_guidance
    ours = engine.generate(_full_region(size=S, seed=2, steps=4))
    assert max_diff(ours, ref) <= 1


@pytest.mark.parametrize(
    "args, says",
    [
        (["serve", "--model", "tiny-xl", "--timesteps", "249,499"], "strictly descending"),
        (["render", "scene.json", "-o", "out.png", "--model", "tiny-xl", "--prediction", "x0"], "unknown prediction"),
    ],
)
def test_bad_few_step_flags_are_one_line_and_exit_2_before_the_model_loads(args, says):
    from daemon_util import run_cli

    res = run_cli(*args)
    lines = [ln for ln in res.stderr.strip().splitlines() if not ln.startswith("[transformers] ")]
    assert res.returncode == 2 and len(lines) == 1 and "Traceback" not in res.stderr, res.stderr
    assert lines[0].startswith("smd-daemon") and says in lines[0]

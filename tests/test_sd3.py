"""SD3 / SD3.5 (MM-DiT, flow matching) on the tiny-sd3 preset: loading,
conditioning, the flow schedule, latent mode (generate, stream, tiled
canvas) against diffusers' own pipeline, LoRAs, and the refusals."""

import json
import subprocess
import sys

import numpy as np
import pytest
import torch
from daemon_util import run_cli
from engine_util import max_diff

from smd_daemon.engine.core import Engine
from smd_daemon.engine.models import ModelLoadError, load_model
from smd_daemon.engine.scene import Background, Region, Scene, SceneError
from smd_daemon.engine.tiny_sd3 import build_tiny_sd3

S = 256  # px: the tiny transformer's native window (32 latent pixels)


@pytest.fixture(scope="module")
def sd3_components():
    return load_model("tiny-sd3")


@pytest.fixture(scope="module")
def sd3(sd3_components):
    return Engine(sd3_components)


@pytest.fixture(scope="module")
def sd3_folder(tmp_path_factory):
    d = tmp_path_factory.mktemp("tiny-sd3")
    build_tiny_sd3(0).save_pretrained(d)
    return d


def _full(h=S, w=S):
    return np.ones((h, w), np.float32)


def _single(steps, seed=3, h=S, w=S):
    region = Region("a red fox", _full(h, w), mask_std=0, prompt_strength=1.0)
    return Scene(w, h, [region], seed=seed, steps=steps, bootstrap_steps=0)


def _two_regions(w=S, h=S, steps=3):
    a = np.zeros((h, w), np.float32)
    a[:, : w // 2] = 1
    b = np.zeros((h, w), np.float32)
    b[h // 4 : h - 16, w // 3 : w - 8] = 1
    regions = [Region("a red fox", a), Region("snowy pine forest", b)]
    return Scene(w, h, regions, background=Background("a blue sky"), seed=1, steps=steps)


def _diffusers_image(pipe, steps, seed, h=S, w=S):
    """diffusers' StableDiffusion3Pipeline with the model's flow-matching
    scheduler sampling as the engine does: x̂0 re-noised with fresh noise."""
    from diffusers import FlowMatchEulerDiscreteScheduler

    pipe.scheduler = FlowMatchEulerDiscreteScheduler.from_config(pipe.scheduler.config, stochastic_sampling=True)
    # The pipeline draws its first latent from our generator but the re-noising from torch's
    # global one: seeded alike and moved past the first latent, both give the engine's draws in order.
    torch.manual_seed(seed)
    torch.randn(1, 16, h // 8, w // 8)
    image = pipe(
        "a red fox",
        num_inference_steps=steps,
        guidance_scale=1.0,
        height=h,
        width=w,
        generator=torch.Generator().manual_seed(seed),
        output_type="np",
    ).images[0]
    return (image * 255).round().astype(np.uint8)


def test_the_preset_is_an_sd3_flow_model_and_says_its_images_mean_nothing(sd3_components, caplog):
    import logging

    with caplog.at_level(logging.WARNING):
        c = load_model("tiny-sd3")
    assert "no meaningful images" in caplog.text
    assert c.family == "sd3" and c.kind == "flow" and not c.meaningful
    assert c.describe()["native_size"] == S and c.describe()["family"] == "sd3"
    f = Engine(c).model.family
    assert (f.latent_channels, f.patch, f.window) == (16, 2, 32)
    assert (f.latent_scale, f.latent_shift) == (1.5305, 0.0609)


def test_conditioning_is_diffusers_encode_prompt(sd3):
    """CLIP-L and CLIP-G side by side, padded to T5's width, then T5's tokens; both pooled."""
    pipe = build_tiny_sd3(0)
    tokens, _, pooled, _ = pipe.encode_prompt("a red fox", None, None, do_classifier_free_guidance=False)
    cond = sd3.model.encode_prompts(["a red fox"])
    assert cond.tokens.shape == tokens.shape == (1, 77 + 256, 48) and cond.pooled is not None
    torch.testing.assert_close(cond.tokens, tokens, rtol=0, atol=1e-5)
    torch.testing.assert_close(cond.pooled, pooled, rtol=0, atol=1e-5)


def test_the_flow_schedule_is_the_scheduler_configs(sd3):
    from smd_daemon.engine.tiny_sd3 import flow_scheduler

    ref = flow_scheduler()
    ref.set_timesteps(4)
    s = sd3.model.schedule(4)
    sigma = ref.sigmas[:4]
    assert s.prediction == "flow" and s.t.dtype == torch.float32
    torch.testing.assert_close(s.t, ref.timesteps, rtol=0, atol=0)
    torch.testing.assert_close(s.noise, sigma, rtol=0, atol=1e-7)
    torch.testing.assert_close(s.signal, 1 - sigma, rtol=0, atol=1e-7)
    assert s.timesteps[0] == 1000.0 and s.entry_scale == 1.0
    # x = (1 - σ) x0 + σ n and v = n - x0 give back x0.
    x0, n = torch.randn(2, 1, 16, 4, 4).unbind(0)
    for i in range(4):
        x = s.signal[i] * x0 + s.noise[i] * n
        torch.testing.assert_close(s.clean(i, x, n - x0), x0, rtol=0, atol=1e-5)
    # Masks open up over the steps as for SD-1.5: levels fall from 1 towards 0.
    assert s.sigmas[0] == 1.0 and bool((s.sigmas[1:] < s.sigmas[:-1]).all())


@pytest.mark.parametrize("steps", [1, 4])
def test_single_full_region_matches_diffusers_sd3_pipeline(sd3, steps):
    ours = sd3.generate(_single(steps))
    ref = _diffusers_image(build_tiny_sd3(0), steps, 3)
    assert ours.shape == (S, S, 3) and ours.dtype == np.uint8
    assert max_diff(ours, ref) <= 1
    assert ours.std() > 5  # not a blank image


def test_a_settled_stream_shows_the_generated_image(sd3):
    """The stream's roll re-noises with the same flow coefficients as
    generation: a static scene's settled frame is the one-shot image."""
    scene = _two_regions()
    stream = sd3.open_stream(scene)
    frames = [stream.step() for _ in range(stream.steps_in_flight + 2)]
    assert frames[-1].settled and frames[-2].settled
    assert max_diff(frames[-1].image, frames[-2].image) == 0
    assert max_diff(frames[-1].image, sd3.generate(scene)) <= 1


def test_a_wide_canvas_is_tiled_in_native_windows(sd3):
    """Beyond the transformer's native window (and beyond its largest
    position embedding, 96 latent pixels) the canvas is tiled."""
    scene = _two_regions(w=1024, h=256, steps=2)
    plan = sd3.plan(scene)
    assert plan.windows.tiled and plan.windows.size == (32, 32) and len(plan.windows.origins) == 4
    image = sd3.generate(scene)
    assert image.shape == (256, 1024, 3) and image.std() > 5
    stream = sd3.open_stream(scene)
    frame = [stream.step() for _ in range(3)][-1]
    assert frame.settled and frame.image.shape == (256, 1024, 3)


def test_canvases_of_partial_patches_and_attention_mode_are_refused_in_one_line(sd3):
    assert sd3.region_modes == ("latent",)  # joint attention has no cross-attention to mix prompts in
    with pytest.raises(SceneError, match="multiples of 16 pixels"):
        sd3.check(_single(2, w=S + 8))
    with pytest.raises(SceneError, match="region mode 'attention' is not available with this model"):
        sd3.open_stream(Scene(S, S, _two_regions().regions, steps=2, region_mode="attention"))


def test_an_sd3_folder_is_told_by_its_model_index_and_loads_the_same_model(sd3, sd3_folder, caplog):
    import logging

    with caplog.at_level(logging.INFO):
        c = load_model(str(sd3_folder))
    assert c.family == "sd3" and c.kind == "flow" and c.meaningful and c.info["source"] == "folder"
    assert "SD3" in caplog.text
    assert max_diff(Engine(c).generate(_single(2)), sd3.generate(_single(2))) <= 1


def test_an_sd3_folder_without_t5_conditions_on_zeros_as_diffusers_does(sd3_folder, tmp_path):
    from diffusers import StableDiffusion3Pipeline

    pipe = StableDiffusion3Pipeline.from_pretrained(sd3_folder, text_encoder_3=None, tokenizer_3=None)
    pipe.save_pretrained(tmp_path / "no-t5")
    c = load_model(str(tmp_path / "no-t5"))
    assert c.info["t5"] is False
    cond = Engine(c).model.encode_prompts(["a red fox"])
    tokens, _, pooled, _ = pipe.encode_prompt("a red fox", None, None, do_classifier_free_guidance=False)
    torch.testing.assert_close(cond.tokens, tokens, rtol=0, atol=1e-5)
    assert not cond.tokens[:, 77:].any()


def _peft_lora(folder, transformer, r=4, alpha=8):
    """A LoRA in PEFT's saved layout (as Flash-SD3 ships): adapter_model.safetensors
    with base_model.model.* keys, and adapter_config.json with r and lora_alpha."""
    from safetensors.torch import save_file

    torch.manual_seed(5)
    state, names = {}, []
    for name, m in transformer.named_modules():
        if name.endswith(("attn.to_q", "attn.add_k_proj")) and isinstance(m, torch.nn.Linear):
            names.append(name)
            state[f"base_model.model.{name}.lora_A.weight"] = torch.randn(r, m.in_features) * 0.3
            state[f"base_model.model.{name}.lora_B.weight"] = torch.randn(m.out_features, r) * 0.3
    folder.mkdir()
    save_file(state, folder / "adapter_model.safetensors")
    config = {"peft_type": "LORA", "r": r, "lora_alpha": alpha, "target_modules": ["to_q", "add_k_proj"]}
    (folder / "adapter_config.json").write_text(json.dumps(config))
    return state, names


def test_a_peft_layout_lora_is_fused_with_its_alpha(sd3_components, tmp_path):
    base = build_tiny_sd3(0).transformer
    state, names = _peft_lora(tmp_path / "flash", base)
    c = load_model("tiny-sd3", lora=str(tmp_path / "flash"))
    assert c.info["lora"] == str(tmp_path / "flash") and names
    for name in names:
        a, b = state[f"base_model.model.{name}.lora_A.weight"], state[f"base_model.model.{name}.lora_B.weight"]
        expected = base.get_submodule(name).weight + b @ a * (8 / 4)
        torch.testing.assert_close(c.unet.get_submodule(name).weight, expected, rtol=1e-5, atol=1e-5)
    assert max_diff(Engine(c).generate(_single(1)), Engine(sd3_components).generate(_single(1))) > 0
    # The same LoRA in diffusers' own layout (its scale folded in) fuses to the same weights.
    from diffusers import StableDiffusion3Pipeline

    layers = {k.removeprefix("base_model.model."): v * (2 if ".lora_B." in k else 1) for k, v in state.items()}
    StableDiffusion3Pipeline.save_lora_weights(tmp_path / "diffusers", transformer_lora_layers=layers)
    c2 = load_model("tiny-sd3", lora=str(tmp_path / "diffusers" / "pytorch_lora_weights.safetensors"))
    for name in names:
        torch.testing.assert_close(c2.unet.get_submodule(name).weight, c.unet.get_submodule(name).weight)


def test_a_unet_lora_and_unet_only_options_are_refused_for_sd3(tmp_path):
    from diffusers import StableDiffusionPipeline

    from smd_daemon.engine.tiny import build_tiny_autoencoder

    torch.manual_seed(0)
    name = "down_blocks.0.attentions.0.transformer_blocks.0.attn1.to_q"
    layers = {f"{name}.lora_A.weight": torch.randn(4, 32), f"{name}.lora_B.weight": torch.randn(32, 4)}
    StableDiffusionPipeline.save_lora_weights(tmp_path / "sd15-lora", unet_lora_layers=layers)
    with pytest.raises(ModelLoadError, match="for a UNet model") as e:
        load_model("tiny-sd3", lora=str(tmp_path / "sd15-lora"))
    assert "\n" not in str(e.value)
    with pytest.raises(ModelLoadError, match="--model-kind lcm is for UNet models"):
        load_model("tiny-sd3", kind="lcm")
    build_tiny_autoencoder(0).save_pretrained(tmp_path / "taesd")  # SD-1.5's 4-channel latents
    with pytest.raises(ModelLoadError, match="4-channel latents; this SD3 model's have 16"):
        load_model("tiny-sd3", tiny_vae=str(tmp_path / "taesd"))
    # A 16-channel tiny autoencoder fits.
    assert load_model("tiny-sd3", tiny_vae="tiny").vae.config.latent_channels == 16


def test_the_cli_refuses_attention_mode_and_a_unet_option_for_sd3_in_one_line(tmp_path):
    from PIL import Image

    Image.fromarray(np.full((S, S), 255, np.uint8)).save(tmp_path / "fox.png")
    scene = {"width": S, "height": S, "steps": 1, "regions": [{"prompt": "a red fox", "mask": "fox.png"}]}
    (tmp_path / "scene.json").write_text(json.dumps(scene))
    scene_file, out = str(tmp_path / "scene.json"), str(tmp_path / "out.png")
    for args, needle in [
        (["render", scene_file, "-o", out, "--model", "tiny-sd3", "--region-mode", "attention"], "attention"),
        (["serve", "--model", "tiny-sd3", "--model-kind", "turbo"], "--model-kind turbo is for UNet models"),
    ]:
        res = run_cli(*args, timeout=300)
        # The model's load logs before a scene's refusal: the refusal is the one error line.
        errors = [ln for ln in res.stderr.splitlines() if "error: " in ln]
        assert res.returncode == 2 and "Traceback" not in res.stderr, res.stderr
        assert len(errors) == 1 and errors[0].startswith("smd-daemon") and needle in errors[0], res.stderr
    assert not (tmp_path / "out.png").exists()


def test_a_daemon_serving_sd3_offers_latent_mode_only_and_refuses_attention_scenes(sd3):
    """Over real ZeroMQ: the capabilities say so, an attention scene gets one
    error sentence, and the session goes on drawing in latent mode."""
    from daemon_util import S as SIDE
    from daemon_util import connect, free_port, half_mask, serving

    from smd_daemon.client import ErrorEvent, Layer, SceneEvent
    from smd_daemon.server import Server

    with serving(Server(sd3, {"name": "tiny-sd3"}, f"tcp://127.0.0.1:{free_port()}")) as srv:
        client = connect(srv.bind, name="artist")
        try:
            assert srv.capabilities()["region_modes"] == ["latent"]
            replies = []
            for mode in ("attention", "latent"):
                rev = client.set_scene(SIDE, SIDE, [Layer("1", "a red fox", half_mask())], region_mode=mode, steps=1)
                replies.append((rev, client.wait_for(lambda e: isinstance(e, (ErrorEvent, SceneEvent)), 30)))
            (_, refused), (rev, accepted) = replies
            assert isinstance(refused, ErrorEvent) and "region mode 'attention' is not available" in refused.message
            assert isinstance(accepted, SceneEvent) and accepted.revision == rev
        finally:
            client.close()


_HUB_SCRIPT = """
import sys
from smd_daemon.engine.models import load_model
c = load_model("stabilityai/tiny-sd3", lora="jasperai/tiny-flash")
print(c.family, c.kind, c.info["source"], c.info["lora"])
"""


def _cached_repo(hf_home, repo: str, files_from) -> None:
    """``files_from``'s files as the Hugging Face cache holds a downloaded ``repo``."""
    import shutil

    revision = "0" * 40
    cached = hf_home / "hub" / f"models--{repo.replace('/', '--')}"
    shutil.copytree(files_from, cached / "snapshots" / revision)
    (cached / "refs").mkdir()
    (cached / "refs" / "main").write_text(revision)


def test_an_sd3_hub_id_and_a_hub_lora_load_from_the_cache_offline(sd3_folder, tmp_path):
    """A cached SD3 repository is told by its model_index.json as a folder is,
    and a cached PEFT-layout LoRA repository fuses, with no network."""
    import os

    from daemon_util import ROOT

    _peft_lora(tmp_path / "flash", build_tiny_sd3(0).transformer)
    _cached_repo(tmp_path / "hf", "stabilityai/tiny-sd3", sd3_folder)
    _cached_repo(tmp_path / "hf", "jasperai/tiny-flash", tmp_path / "flash")
    env = dict(os.environ, HF_HUB_OFFLINE="1", HF_HOME=str(tmp_path / "hf"), PYTHONPATH=ROOT)
    env.pop("HF_HUB_CACHE", None)
    out = subprocess.run(
        [sys.executable, "-c", _HUB_SCRIPT], env=env, cwd=tmp_path, capture_output=True, text=True, timeout=300
    )
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.split() == ["sd3", "flow", "hub", "jasperai/tiny-flash"]

"""Model loading: presets, folders, single-file checkpoints, LoRA, tiny
autoencoder, device/dtype choice and one-line errors. All offline."""

import argparse
import json
import logging
import os
import subprocess
import sys

import numpy as np
import pytest
import torch

from smd_daemon.engine.models import (
    DEFAULT_MODEL,
    DEFAULT_TINY_VAE,
    ModelLoadError,
    load_model,
    pick_device,
    pick_dtype,
)
from smd_daemon.engine.tiny import build_tiny_autoencoder, build_tiny_pipeline, save_single_file
from smd_daemon.options import add_model_arguments, load_model_from_options

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _image(c, prompt="a red fox in the snow", seed=7):
    """A 2-step LCM image from loaded components through diffusers' own pipeline."""
    from diffusers import StableDiffusionPipeline

    pipe = StableDiffusionPipeline(
        vae=c.vae,
        text_encoder=c.text_encoder,
        tokenizer=c.tokenizer,
        unet=c.unet,
        scheduler=c.scheduler,
        safety_checker=None,
        feature_extractor=None,
        requires_safety_checker=False,
    )
    pipe.set_progress_bar_config(disable=True)
    g = torch.Generator().manual_seed(seed)
    return pipe(
        prompt, height=64, width=64, num_inference_steps=2, guidance_scale=1.0, generator=g, output_type="np"
    ).images[0]


def _mismatched(a: torch.nn.Module, b: torch.nn.Module) -> list[str]:
    sa, sb = a.state_dict(), b.state_dict()
    return sorted(
        k
        for k in sa.keys() | sb.keys()
        if k not in sa or k not in sb or sa[k].shape != sb[k].shape or not torch.equal(sa[k], sb[k])
    )


@pytest.fixture(scope="module")
def tiny():
    return load_model("tiny", seed=0)


@pytest.fixture(scope="module")
def tiny_folder(tmp_path_factory):
    d = tmp_path_factory.mktemp("models") / "tiny-sd"
    build_tiny_pipeline(0).save_pretrained(d)
    return d


def test_tiny_preset_is_seeded_labelled_and_lcm(tiny, caplog):
    from diffusers import LCMScheduler

    with caplog.at_level(logging.WARNING):
        again = load_model("tiny", seed=0)
        other = load_model("tiny", seed=1)
    assert "no meaningful images" in caplog.text
    assert not _mismatched(tiny.unet, again.unet)
    assert _mismatched(tiny.unet, other.unet)
    assert isinstance(tiny.scheduler, LCMScheduler)
    assert tiny.meaningful is False
    d = tiny.describe()
    assert d["source"] == "preset" and d["native_size"] == 512 and d["lora"] is None and d["tiny_vae"] is None
    json.dumps(d)  # goes over the wire as is


def test_diffusers_folder_round_trip(tiny, tiny_folder):
    c = load_model(str(tiny_folder))
    assert c.info["source"] == "folder" and c.name == "tiny-sd" and c.meaningful
    for part in ("unet", "vae", "text_encoder"):
        assert not _mismatched(getattr(tiny, part), getattr(c, part)), part
    # Parameters are equal bit for bit (above); images from two loads may differ
    # in the last float bits on some CPUs, so they are compared with a tolerance.
    np.testing.assert_allclose(_image(tiny), _image(c), rtol=0, atol=1e-5)


def test_scheduler_becomes_lcm_from_the_models_own_config(tmp_path, caplog):
    from diffusers import DDIMScheduler, LCMScheduler

    pipe = build_tiny_pipeline(0)
    pipe.scheduler = DDIMScheduler.from_config(pipe.scheduler.config, beta_end=0.02)
    pipe.save_pretrained(tmp_path / "ddim")
    with caplog.at_level(logging.WARNING):
        c = load_model(str(tmp_path / "ddim"))
    assert isinstance(c.scheduler, LCMScheduler) and c.scheduler.config.beta_end == 0.02
    assert c.info["lcm"] is False and "--lora" in caplog.text


@pytest.mark.parametrize("ext", [".safetensors", ".ckpt"])
def test_single_file_checkpoint_loads_with_zero_mismatches(tiny, tiny_folder, tmp_path, ext):
    path = tmp_path / f"tiny{ext}"
    if ext == ".safetensors":
        save_single_file(build_tiny_pipeline(0), str(path))
    else:
        from smd_daemon.engine.tiny import ldm_state_dict

        torch.save({"state_dict": ldm_state_dict(build_tiny_pipeline(0))}, path)
    c = load_model(str(path), config=str(tiny_folder))
    assert c.info["source"] == "single_file" and c.name == f"tiny{ext}"
    for part in ("unet", "vae", "text_encoder"):
        assert not _mismatched(getattr(tiny, part), getattr(c, part)), part
    # Parameters are equal bit for bit (above); images from two loads may differ
    # in the last float bits on some CPUs, so they are compared with a tolerance.
    np.testing.assert_allclose(_image(tiny), _image(c), rtol=0, atol=1e-5)


def _make_lora(tmp_path):
    """A LoRA on the tiny UNet's attention projections with non-zero weights."""
    from diffusers import StableDiffusionPipeline
    from diffusers.utils import convert_state_dict_to_diffusers
    from peft import LoraConfig
    from peft.utils import get_peft_model_state_dict

    unet = build_tiny_pipeline(0).unet
    torch.manual_seed(3)
    unet.add_adapter(
        LoraConfig(r=4, lora_alpha=8, target_modules=["to_q", "to_k", "to_v", "to_out.0"], init_lora_weights=False)
    )
    with torch.no_grad():
        for name, p in unet.named_parameters():
            if "lora_B" in name:  # make the LoRA's effect clearly visible
                p.normal_(0, 0.5)
    layers = convert_state_dict_to_diffusers(get_peft_model_state_dict(unet))
    # The metadata carries lora_alpha; without it diffusers assumes alpha == rank.
    StableDiffusionPipeline.save_lora_weights(
        tmp_path,
        unet_lora_layers=layers,
        safe_serialization=True,
        unet_lora_adapter_metadata=unet.peft_config["default"].to_dict(),
    )
    path = tmp_path / "pytorch_lora_weights.safetensors"
    assert path.is_file()
    return path, unet


def test_lora_is_fused_at_load(tiny, tmp_path):
    from peft.tuners.tuners_utils import BaseTunerLayer

    path, lora_unet = _make_lora(tmp_path)
    c = load_model("tiny", lora=str(path))
    assert c.info["lora"] == str(path)
    # Fused: plain modules again, with W + scale * B @ A baked into the weight.
    assert not any(isinstance(m, BaseTunerLayer) for m in c.unet.modules())
    name = "down_blocks.0.attentions.0.transformer_blocks.0.attn1.to_q"
    lora_layer = lora_unet.get_submodule(name)
    delta = lora_layer.lora_B["default"].weight @ lora_layer.lora_A["default"].weight * (8 / 4)
    expected = tiny.unet.get_submodule(name).weight + delta
    torch.testing.assert_close(c.unet.get_submodule(name).weight, expected, rtol=1e-5, atol=1e-5)
    assert np.abs(_image(c) - _image(tiny)).max() > 1e-3
    # A folder holding the standard file name works as well.
    c2 = load_model("tiny", lora=str(tmp_path))
    assert not _mismatched(c.unet, c2.unet)


def test_tiny_autoencoder_from_folder_replaces_the_vae(tiny, tmp_path):
    from diffusers import AutoencoderTiny

    build_tiny_autoencoder(5).save_pretrained(tmp_path / "taesd")
    c = load_model("tiny", tiny_vae=str(tmp_path / "taesd"))
    assert isinstance(c.vae, AutoencoderTiny) and c.info["tiny_vae"] == str(tmp_path / "taesd")
    assert not _mismatched(c.vae, build_tiny_autoencoder(5))
    assert c.vae_scale_factor == 8 and c.vae.config.scaling_factor == 1.0
    img = _image(c)
    assert img.shape == (64, 64, 3) and np.abs(img - _image(tiny)).max() > 1e-3
    assert isinstance(load_model("tiny", tiny_vae="tiny").vae, AutoencoderTiny)
    assert load_model("tiny", tiny_vae="auto").info["tiny_vae"] is None  # presets keep their own


def test_device_and_dtype_choice():
    cpu, cuda, mps = torch.device("cpu"), torch.device("cuda"), torch.device("mps")
    assert pick_dtype(cpu) == torch.float32
    assert pick_dtype(cuda) == torch.float16 and pick_dtype(mps) == torch.float16
    assert pick_dtype(cuda, "fp32") == torch.float32 and pick_dtype(cpu, "bf16") == torch.bfloat16
    if not torch.cuda.is_available() and not torch.backends.mps.is_available():
        assert pick_device() == cpu
        with pytest.raises(ModelLoadError, match="CUDA is not available"):
            pick_device("cuda")
    assert pick_device("cpu") == cpu
    with pytest.raises(ModelLoadError, match="unknown device"):
        pick_device("gpu0")
    with pytest.raises(ModelLoadError, match="unknown dtype"):
        pick_dtype(cpu, "fp8")
    c = load_model("tiny", dtype="bf16")
    assert c.dtype == torch.bfloat16 and c.unet.dtype == torch.bfloat16 and c.vae.dtype == torch.bfloat16


def test_cli_flags_share_one_spec():
    parser = argparse.ArgumentParser()
    add_model_arguments(parser)
    args = parser.parse_args([])
    assert args.model == DEFAULT_MODEL and args.tiny_vae == "auto"
    c = load_model_from_options(parser.parse_args(["--model", "tiny", "--dtype", "fp32"]))
    assert c.name == "tiny" and c.dtype == torch.float32


def _bad(tmp_path, kind):
    if kind == "missing file":
        return dict(spec=str(tmp_path / "nope.safetensors"))
    if kind == "missing folder":
        return dict(spec=str(tmp_path / "no" / "such" / "dir"))
    if kind == "wrong extension":
        (tmp_path / "model.txt").write_text("hello")
        return dict(spec=str(tmp_path / "model.txt"))
    if kind == "folder without model_index.json":
        (tmp_path / "empty").mkdir()
        return dict(spec=str(tmp_path / "empty"))
    if kind == "corrupt safetensors":
        (tmp_path / "broken.safetensors").write_bytes(os.urandom(2048))
        return dict(spec=str(tmp_path / "broken.safetensors"))
    if kind == "corrupt ckpt":
        (tmp_path / "broken.ckpt").write_bytes(os.urandom(2048))
        return dict(spec=str(tmp_path / "broken.ckpt"), config=str(tmp_path))
    if kind == "not an SD checkpoint":
        from safetensors.torch import save_file

        save_file({"weight": torch.zeros(3)}, str(tmp_path / "other.safetensors"))
        return dict(spec=str(tmp_path / "other.safetensors"))
    if kind == "not a spec":
        return dict(spec="dreamshaper")
    if kind == "missing lora":
        return dict(spec="tiny", lora=str(tmp_path / "lora.safetensors.missing"))
    if kind == "bad lora file":
        (tmp_path / "lora.safetensors").write_bytes(b"\0" * 64)
        return dict(spec="tiny", lora=str(tmp_path / "lora.safetensors"))
    if kind == "tiny vae folder without weights":
        (tmp_path / "taesd").mkdir()
        return dict(spec="tiny", tiny_vae=str(tmp_path / "taesd"))
    raise AssertionError(kind)


@pytest.mark.parametrize(
    "kind, says",
    [
        ("missing file", "no such file"),
        ("missing folder", "no such file or folder"),
        ("wrong extension", "expected a .safetensors or .ckpt"),
        ("folder without model_index.json", "no model_index.json"),
        ("corrupt safetensors", "not a readable .safetensors"),
        ("corrupt ckpt", "not a readable .ckpt"),
        ("not an SD checkpoint", "family cannot be told from its keys"),
        ("not a spec", "hub id (owner/name)"),
        ("missing lora", "no such file"),
        ("bad lora file", "could not be loaded"),
        ("tiny vae folder without weights", "could not be loaded"),
    ],
)
def test_bad_specs_give_one_line(tmp_path, kind, says):
    kw = _bad(tmp_path, kind)
    spec = kw.pop("spec")
    with pytest.raises(ModelLoadError) as err:
        load_model(spec, **kw)
    msg = str(err.value)
    assert "\n" not in msg and len(msg) < 400, msg
    named = kw.get("lora") or kw.get("tiny_vae") or spec
    assert repr(named) in msg and says in msg, msg


_OFFLINE_SCRIPT = """
import json, sys, time
from smd_daemon.engine.models import ModelLoadError, load_model
for spec, kw in json.loads(sys.argv[1]):
    t = time.monotonic()
    try:
        load_model(spec, **kw)
        print(json.dumps(["loaded", spec]))
    except ModelLoadError as e:
        print(json.dumps([str(e), time.monotonic() - t]))
"""


def test_uncached_downloads_fail_fast_offline_with_one_line(tmp_path, tiny_folder):
    """An empty cache with the hub unreachable: one line naming what is missing
    and how to work offline, within seconds."""
    ckpt = tmp_path / "tiny.safetensors"
    save_single_file(build_tiny_pipeline(0), str(ckpt))
    cases = [
        (DEFAULT_MODEL, {}),
        ("tiny", {"tiny_vae": DEFAULT_TINY_VAE}),
        ("tiny", {"lora": "latent-consistency/lcm-lora-sdv1-5"}),
        (str(ckpt), {}),
    ]
    env = dict(os.environ, HF_HUB_OFFLINE="1", HF_HOME=str(tmp_path / "hf"), PYTHONPATH=ROOT)
    env.pop("HF_HUB_CACHE", None)
    out = subprocess.run(
        [sys.executable, "-c", _OFFLINE_SCRIPT, json.dumps(cases)],
        env=env,
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert out.returncode == 0, out.stderr[-2000:]
    results = [json.loads(line) for line in out.stdout.splitlines()]
    assert len(results) == len(cases), out.stdout
    (model, t1), (vae, t2), (lora, t3), (single, t4) = results
    assert max(t1, t2, t3, t4) < 20
    assert DEFAULT_MODEL in model and "--model" in model and "--model tiny" in model
    assert DEFAULT_TINY_VAE in vae and "--tiny-vae none" in vae
    assert "lcm-lora-sdv1-5" in lora and "--lora" in lora
    assert str(ckpt) in single and "--model-config" in single


@pytest.mark.slow
def test_random_sd15_is_the_real_architecture(caplog):
    from diffusers import AutoencoderTiny

    with caplog.at_level(logging.WARNING):
        c = load_model("random-sd15")
    assert "no meaningful images" in caplog.text and c.meaningful is False
    assert abs(sum(p.numel() for p in c.unet.parameters()) / 1e6 - 859.5) < 1
    assert isinstance(c.vae, AutoencoderTiny) and c.describe()["native_size"] == 512
    assert c.text_encoder.config.hidden_size == c.unet.config.cross_attention_dim == 768

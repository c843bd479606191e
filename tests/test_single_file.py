"""Single-file checkpoints of every family: the SDXL (sgm) layout written
offline reloads bit for bit, the family is told from the file's keys, and a
file or config of the wrong family is refused in one line. All offline."""

import logging

import pytest
import torch

from smd_daemon.engine.models import ModelLoadError, load_model
from smd_daemon.engine.single_file import (
    checkpoint_family,
    checkpoint_file_family,
    save_sdxl_single_file,
    sgm_state_dict,
)
from smd_daemon.engine.tiny import build_tiny_pipeline, ldm_state_dict, save_single_file
from smd_daemon.engine.tiny_xl import build_tiny_xl_pipeline

PARTS = ("unet", "vae", "text_encoder", "text_encoder_2")


def _mismatched(a: torch.nn.Module, b: torch.nn.Module) -> list[str]:
    sa, sb = a.state_dict(), b.state_dict()
    return sorted(
        k
        for k in sa.keys() | sb.keys()
        if k not in sa or k not in sb or sa[k].shape != sb[k].shape or sb[k].is_meta or not torch.equal(sa[k], sb[k])
    )


@pytest.fixture(scope="module")
def xl():
    return build_tiny_xl_pipeline(0)


@pytest.fixture(scope="module")
def xl_file(xl, tmp_path_factory):
    path = tmp_path_factory.mktemp("ckpt") / "tiny-xl.safetensors"
    save_sdxl_single_file(xl, str(path))
    return path


@pytest.fixture(scope="module")
def xl_config(tmp_path_factory):
    """A tiny-xl folder of *other* weights: whatever diffusers took from the
    folder instead of the file would show as a mismatch."""
    d = tmp_path_factory.mktemp("cfg") / "tiny-xl"
    build_tiny_xl_pipeline(1).save_pretrained(d)
    return d


@pytest.fixture(scope="module")
def sd15_config(tmp_path_factory):
    d = tmp_path_factory.mktemp("cfg") / "tiny-sd"
    build_tiny_pipeline(1).save_pretrained(d)
    return d


def test_sgm_layout_has_the_keys_and_shapes_sdxl_files_have(xl):
    sd = sgm_state_dict(xl)
    w1, w2 = xl.text_encoder.config.hidden_size, xl.text_encoder_2.config.hidden_size
    proj = xl.text_encoder_2.config.projection_dim
    big = "conditioner.embedders.1.model."
    assert sd[big + "positional_embedding"].shape == (77, w2)
    assert sd[big + "text_projection"].shape == (w2, proj)  # OpenCLIP: x @ P
    assert sd[big + "transformer.resblocks.1.attn.in_proj_weight"].shape == (3 * w2, w2)
    assert sd[big + "transformer.resblocks.1.attn.in_proj_bias"].shape == (3 * w2,)
    assert sd["conditioner.embedders.0.transformer.text_model.embeddings.position_embedding.weight"].shape == (77, w1)
    assert "model.diffusion_model.label_emb.0.0.weight" in sd and "model.diffusion_model.out.2.weight" in sd
    assert "first_stage_model.decoder.up.3.block.0.conv1.weight" in sd
    # q, k and v are fused in that order.
    k = xl.text_encoder_2.state_dict()["text_model.encoder.layers.1.self_attn.k_proj.weight"]
    assert torch.equal(sd[big + "transformer.resblocks.1.attn.in_proj_weight"][w2 : 2 * w2], k)
    n_weights = sum(len(getattr(xl, p).state_dict()) for p in PARTS)
    n_fused = 2 * 2 * xl.text_encoder_2.config.num_hidden_layers  # 3 tensors -> 1, weight and bias, per layer
    assert len(sd) == n_weights - n_fused


def test_diffusers_reloads_the_sdxl_file_with_zero_mismatches(xl, xl_file, xl_config):
    from diffusers import StableDiffusionXLPipeline

    other = build_tiny_xl_pipeline(1)
    pipe = StableDiffusionXLPipeline.from_single_file(str(xl_file), config=str(xl_config), local_files_only=True)
    for part in PARTS:
        assert _mismatched(getattr(xl, part), getattr(other, part)), part  # the config's weights differ
        assert not _mismatched(getattr(xl, part), getattr(pipe, part)), part


def test_family_is_told_from_the_files_keys(xl, tmp_path):
    sd15 = ldm_state_dict(build_tiny_pipeline(0))
    sdxl = sgm_state_dict(xl)
    assert checkpoint_family(sd15) == "sd15"
    assert checkpoint_family(sdxl) == "sdxl"
    # UNet-only files still say which they are (SDXL's UNet has the pooled/size embedding).
    assert checkpoint_family(k for k in sdxl if k.startswith("model.diffusion_model.")) == "sdxl"
    assert checkpoint_family(k for k in sd15 if k.startswith("model.diffusion_model.")) == "sd15"
    assert checkpoint_family(["model.diffusion_model.joint_blocks.0.x_block.attn.qkv.weight"]) == "sd3"
    assert checkpoint_family(["joint_blocks.0.context_block.adaLN_modulation.1.bias"]) == "sd3"
    vae_only = [k for k in sd15 if k.startswith("first_stage_model.")]
    assert checkpoint_family(vae_only) is None
    mixed = [*sdxl, "cond_stage_model.transformer.text_model.final_layer_norm.weight"]
    assert checkpoint_family(mixed) is None
    # .ckpt files too, with or without Lightning's "state_dict" wrapper.
    torch.save({"state_dict": sdxl}, tmp_path / "a.ckpt")
    torch.save(sd15, tmp_path / "b.ckpt")
    assert checkpoint_file_family(str(tmp_path / "a.ckpt")) == "sdxl"
    assert checkpoint_file_family(str(tmp_path / "b.ckpt")) == "sd15"


def test_load_model_detects_sdxl_logs_it_and_loads_every_part(xl, xl_file, xl_config, caplog):
    with caplog.at_level(logging.INFO):
        c = load_model(str(xl_file), config=str(xl_config))
    assert "tiny-xl.safetensors is an SDXL single-file checkpoint" in caplog.text
    assert c.family == "sdxl" and c.info["source"] == "single_file" and c.name == "tiny-xl.safetensors"
    assert c.tokenizer_2 is not None and c.describe()["family"] == "sdxl"
    for part in PARTS:
        assert not _mismatched(getattr(xl, part), getattr(c, part)), part


def test_sd15_file_is_still_sd15(tmp_path, sd15_config, caplog):
    path = tmp_path / "sd.safetensors"
    save_single_file(build_tiny_pipeline(0), str(path))
    with caplog.at_level(logging.INFO):
        c = load_model(str(path), config=str(sd15_config))
    assert c.family == "sd15" and "is an SD-1.5 single-file checkpoint" in caplog.text


def test_wrong_family_config_and_unknown_files_are_refused_in_one_line(xl, xl_file, xl_config, sd15_config, tmp_path):
    with pytest.raises(ModelLoadError, match="is an SDXL model but --model-config .* describes an SD-1.5 model"):
        load_model(str(xl_file), config=str(sd15_config))
    sd15_file = tmp_path / "sd.safetensors"
    save_single_file(build_tiny_pipeline(0), str(sd15_file))
    with pytest.raises(ModelLoadError, match="is an SD-1.5 model but --model-config .* describes an SDXL model"):
        load_model(str(sd15_file), config=str(xl_config))
    from safetensors.torch import save_file

    vae_only = {k: v for k, v in sgm_state_dict(xl).items() if k.startswith("first_stage_model.")}
    save_file(vae_only, tmp_path / "vae.safetensors")
    with pytest.raises(ModelLoadError, match="family cannot be told from its keys") as e:
        load_model(str(tmp_path / "vae.safetensors"), config=str(xl_config))
    assert "\n" not in str(e.value)
    save_file({"joint_blocks.0.x_block.attn.qkv.weight": torch.zeros(2)}, tmp_path / "sd3.safetensors")
    with pytest.raises(ModelLoadError, match="is an SD3 model: single-file SD3 checkpoints are not supported"):
        load_model(str(tmp_path / "sd3.safetensors"))


def test_a_file_short_of_the_configs_architecture_is_refused_not_left_half_loaded(xl, xl_config, tmp_path):
    """diffusers leaves weights a file lacks on the meta device; that must fail at load, not at the first frame."""
    from safetensors.torch import save_file

    sd = sgm_state_dict(xl)
    del sd["conditioner.embedders.1.model.text_projection"]
    save_file(sd, tmp_path / "short.safetensors")
    with pytest.raises(ModelLoadError, match="text_encoder_2 weights are missing"):
        load_model(str(tmp_path / "short.safetensors"), config=str(xl_config))

"""Control models for ``--control KIND=SPEC``: a T2I-Adapter or a ControlNet per control kind.

They are told apart by their config's class. SPEC is a hub id, a folder, a
``.safetensors`` file (diffusers' layout with its ``config.json`` beside it,
or a ControlNet in the original single-file layout), ``default``
(``DEFAULT_CONTROLS``: the family's public model for the kind, downloaded
once, like the tiny autoencoder), ``none`` (the kind left out) or ``random`` (random weights in the shapes
the loaded denoiser takes: benchmarks). The ``tiny`` and ``tiny-xl``
presets carry tiny random ones for every kind: adapters, and a ControlNet
for ``softedge``.
"""

from __future__ import annotations

import logging
import os
from typing import Any, cast

import torch

from smd_daemon.engine.hub import HUB_ID as _HUB_ID
from smd_daemon.engine.hub import OFFLINE_HINTS as _OFFLINE_HINTS
from smd_daemon.engine.hub import ModelLoadError, config_of
from smd_daemon.engine.hub import first_line as _first_line
from smd_daemon.engine.hub import from_hub as _from_hub
from smd_daemon.engine.pipelines import family_of_unet

log = logging.getLogger(__name__)

# The control kinds a scene may name (``scene.CONTROL_KINDS``, repeated: this module loads without the engine).
CONTROL_KINDS = ("lineart", "scribble", "softedge", "depth", "canny", "pose")
# What ``--control KIND`` (or KIND=default) loads, per model family: the public
# TencentARC T2I-Adapters (one forward per control edit), lllyasviel's
# ControlNets where no adapter exists (one forward per UNet sample).
DEFAULT_CONTROLS = {
    "sd15": {
        "lineart": "TencentARC/t2iadapter_sketch_sd15v2",
        "scribble": "TencentARC/t2iadapter_sketch_sd15v2",
        "softedge": "lllyasviel/control_v11p_sd15_softedge",
        "depth": "TencentARC/t2iadapter_depth_sd15v2",
        "canny": "TencentARC/t2iadapter_canny_sd15v2",
        "pose": "TencentARC/t2iadapter_openpose_sd14v1",
    },
    "sdxl": {
        "lineart": "TencentARC/t2i-adapter-lineart-sdxl-1.0",
        "scribble": "TencentARC/t2i-adapter-sketch-sdxl-1.0",
        "depth": "TencentARC/t2i-adapter-depth-midas-sdxl-1.0",
        "canny": "TencentARC/t2i-adapter-canny-sdxl-1.0",
        "pose": "TencentARC/t2i-adapter-openpose-sdxl-1.0",
    },
}
# How to do without the hub, beside models.py's hints for its own downloads.
_OFFLINE_HINTS["control model"] = "point --control KIND=SPEC at a local folder or file, or leave that control kind out"
# Presets that carry a tiny random control model of every kind.
TINY_PRESETS = ("tiny", "tiny-xl")
# The tiny preset's ControlNet kind (its other kinds get adapters), so both paths are exercised offline.
TINY_CONTROLNET_KIND = "softedge"
CONTROL_CLASSES = ("T2IAdapter", "ControlNetModel")


def control_type(module) -> str:
    """``adapter`` (a T2I-Adapter: its residuals are computed once per control
    image) or ``controlnet`` (runs with every denoiser call)."""
    return "adapter" if type(module).__name__ == "T2IAdapter" else "controlnet"


def parse_controls(values: list[str] | None) -> dict[str, str]:
    """``--control`` values (``KIND=SPEC``, ``KIND`` for the default, ``all``
    for every default of the family) -> {kind: spec}; a bad one is a
    one-line ``ModelLoadError``."""
    out: dict[str, str] = {}
    for value in values or []:
        if not isinstance(value, str):
            raise ModelLoadError(f"--control {value!r}: expected KIND=SPEC text")
        kind, _, spec = value.partition("=")
        kind, spec = kind.strip(), spec.strip() or "default"
        if kind == "all":
            out |= {k: "default" for k in CONTROL_KINDS if k not in out}
            continue
        if kind not in CONTROL_KINDS:
            raise ModelLoadError(
                f"--control {value!r}: unknown control kind {kind!r} (known: {', '.join(CONTROL_KINDS)})"
            )
        out[kind] = spec
    return out


def _control_class(class_name: object, what: str):
    from diffusers import ControlNetModel, T2IAdapter

    classes = {"T2IAdapter": T2IAdapter, "ControlNetModel": ControlNetModel}
    if class_name not in classes:
        raise ModelLoadError(f"{what}: its config names {class_name!r}, not a T2I-Adapter or a ControlNet")
    return classes[cast(str, class_name)]


def _read_config(path: str, what: str) -> dict:
    import json

    try:
        with open(path, encoding="utf-8") as f:
            config = json.load(f)
    except (OSError, ValueError) as e:
        raise ModelLoadError(f"{what}: {os.path.basename(path)} cannot be read: {_first_line(e)}") from None
    if not isinstance(config, dict):
        raise ModelLoadError(f"{what}: {os.path.basename(path)} is not a JSON object")
    return config


def _control_from_file(path: str, what: str, dtype: torch.dtype):
    """A ``.safetensors`` control model: diffusers' layout with its
    ``config.json`` beside it, or a ControlNet in the original single-file layout."""
    from safetensors import safe_open
    from safetensors.torch import load_file

    try:
        with safe_open(path, framework="pt") as f:
            keys = list(f.keys())
    except Exception as e:  # noqa: BLE001 - safetensors raises several types
        raise ModelLoadError(f"{what}: not a readable .safetensors file: {_first_line(e)}") from None
    if any("input_hint_block" in k for k in keys):  # the original ControlNet layout
        from diffusers import ControlNetModel

        try:
            return ControlNetModel.from_single_file(path, torch_dtype=dtype, local_files_only=True)
        except Exception as e:  # noqa: BLE001 - reported as one line
            raise ModelLoadError(f"{what} could not be loaded as a single-file ControlNet: {_first_line(e)}") from None
    config_path = os.path.join(os.path.dirname(path), "config.json")
    if not os.path.isfile(config_path):
        raise ModelLoadError(f"{what}: no config.json beside it (diffusers' layout needs its config)")
    config = _read_config(config_path, what)
    cls = _control_class(config.get("_class_name"), what)
    try:
        model = cls.from_config(config)
        model.load_state_dict(load_file(path), strict=True)
    except Exception as e:  # noqa: BLE001 - reported as one line
        raise ModelLoadError(f"{what} could not be loaded: {_first_line(e)}") from None
    return model


def _control_from_hub(repo: str, what: str, dtype: torch.dtype):
    from huggingface_hub import hf_hub_download

    def load(local_files_only: bool):
        config = _read_config(hf_hub_download(repo, "config.json", local_files_only=local_files_only), what)
        cls = _control_class(config.get("_class_name"), what)
        return cls.from_pretrained(repo, torch_dtype=dtype, local_files_only=local_files_only)

    return _from_hub("control model", repo, load)


def random_control(kind: str, unet, seed: int = 0, controlnet: bool = False):
    """A control model with random weights shaped for ``unet``: a T2I-Adapter
    (one feature map per down block), or a ControlNet copied from the UNet
    whose zero-initialised output convolutions are randomised too (so it
    steers: tests and benchmarks)."""
    from diffusers import ControlNetModel, T2IAdapter

    torch.manual_seed(seed + 2 + CONTROL_KINDS.index(kind))
    cfg = config_of(unet)
    widths = list(cfg.block_out_channels)
    if controlnet:
        net = ControlNetModel.from_unet(cast(Any, unet))
        for conv in [*net.controlnet_down_blocks, net.controlnet_mid_block, net.controlnet_cond_embedding.conv_out]:
            conv.reset_parameters()
        return net
    if family_of_unet(unet) == "sdxl":
        # SDXL's layout (TencentARC's SDXL adapters): its first down block has no
        # cross-attention and takes its residual after downsampling; the last
        # feature goes to the middle block.
        return T2IAdapter(
            in_channels=3,
            channels=[*widths, widths[-1]],
            num_res_blocks=int(cfg.layers_per_block),
            downscale_factor=16,
            adapter_type="full_adapter_xl",
        )
    return T2IAdapter(
        in_channels=3,
        channels=widths,
        num_res_blocks=int(cfg.layers_per_block),
        downscale_factor=8,
        adapter_type="full_adapter",
    )


def _check_control_fits(module, unet, what: str) -> None:
    """Refuse a control model made for another denoiser (another family)."""
    cfg, ucfg = config_of(module), config_of(unet)
    widths = list(ucfg.block_out_channels)
    if control_type(module) == "adapter":  # SDXL's adapters have one more feature, for the middle block
        ok = list(cfg.channels[: len(widths)]) == widths
    else:
        ok = list(cfg.block_out_channels) == widths and int(cfg.cross_attention_dim) == int(ucfg.cross_attention_dim)
    if not ok:
        raise ModelLoadError(f"{what} is made for another model family (its feature widths do not match this model's)")


def load_control(kind: str, spec: str, family: str, unet, dtype: torch.dtype, seed: int = 0):
    """One control model for ``kind`` (see the module docstring), checked against ``unet``."""
    what = f"control model {kind}={spec!r}"
    if spec == "default":
        spec = DEFAULT_CONTROLS.get(family, {}).get(kind, "")
        if not spec:
            raise ModelLoadError(
                f"--control {kind}: there is no default {kind} model for the {family} family; "
                f"give one: --control {kind}=SPEC"
            )
        what = f"control model {kind}={spec!r}"
    if spec == "random":
        module = random_control(kind, unet, seed, controlnet=kind == TINY_CONTROLNET_KIND)
    else:
        path = os.path.expanduser(spec)
        if os.path.isdir(path):
            config = _read_config(os.path.join(path, "config.json"), what)
            cls = _control_class(config.get("_class_name"), what)
            try:
                module = cls.from_pretrained(path, torch_dtype=dtype, local_files_only=True)
            except Exception as e:  # noqa: BLE001 - reported as one line
                raise ModelLoadError(f"{what} could not be loaded: {_first_line(e)}") from None
        elif os.path.isfile(path):
            if not path.lower().endswith(".safetensors"):
                raise ModelLoadError(f"{what}: expected a folder or a .safetensors file")
            module = _control_from_file(path, what, dtype)
        elif _HUB_ID.match(spec) and not spec.startswith((".", "/", "~")):
            module = _control_from_hub(spec, what, dtype)
        else:
            raise ModelLoadError(
                f"{what}: no such file or folder, and not a hub id (owner/name), 'default' or 'random'"
            )
    _check_control_fits(module, unet, what)
    return module


def load_controls(model: str, specs: dict[str, str], components, seed: int = 0) -> dict[str, torch.nn.Module]:
    """{kind: spec} -> {kind: control model} for loaded ``components`` (of
    ``--model model``: the tiny presets add a random one of every kind not
    given), on their device, ready for the engine."""
    if model in TINY_PRESETS:
        specs = {k: "random" for k in CONTROL_KINDS} | specs
    device, dtype, family, unet = components.device, components.dtype, components.family, components.unet
    if family == "sd3" and any(spec != "none" for spec in specs.values()):
        raise ModelLoadError(
            f"--control: control models (T2I-Adapters, ControlNets) are for UNet models (SD-1.5, SDXL); "
            f"{model!r} is an SD3 model: leave --control out"
        )
    out = {}
    for kind, spec in specs.items():
        if spec == "none":  # a kind left out (of a preset's, or of ``all``)
            continue
        module: Any = load_control(kind, spec, family, unet, dtype, seed)
        if module.dtype != dtype:  # casting to the same dtype only makes diffusers warn
            module.to(dtype=dtype)
        out[kind] = module.to(device=device).eval().requires_grad_(False)
        log.info("control %s: %s %s", kind, control_type(module), spec)
    return out

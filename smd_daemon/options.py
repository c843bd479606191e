"""Command-line options shared by several commands, defined once, and the
engine they describe.

Each option is ``name: (type, default, help)``; the same table drives the
flags (``--model-config`` for ``model_config``) and the keys of ``serve``'s
TOML config file. The engine room knows no argparse: it gets plain values
(``load_engine``, which ``serve`` and a cluster's workers share).
"""

from __future__ import annotations

import argparse

from smd_daemon.engine.control_models import CONTROL_KINDS, load_controls, parse_controls
from smd_daemon.engine.models import (
    DEFAULT_LCM_LORA,
    DEFAULT_MODEL,
    DEFAULT_TINY_VAE,
    PRESETS,
    ModelLoadError,
    check_kind,
    check_prediction,
    load_model,
    parse_timesteps,
    pick_device,
)
from smd_daemon.engine.sd3_load import DEFAULT_TINY_VAE_SD3
from smd_daemon.errors import UsageError

DTYPES = ("fp32", "fp16", "bf16")

MODEL_OPTIONS = {
    "model": (
        str,
        DEFAULT_MODEL,
        f"a preset ({', '.join(PRESETS)}: random weights, offline), a diffusers folder, "
        f"a .safetensors/.ckpt file or a hub id",
    ),
    "lora": (
        str,
        None,
        f"LoRA to fuse at load: hub id, hub file (owner/name/file.safetensors), folder or file "
        f"(plain SD-1.5 models need {DEFAULT_LCM_LORA})",
    ),
    "tiny_vae": (
        str,
        "auto",
        f"tiny autoencoder for live frames: hub id, folder, 'none' or 'auto' "
        f"({DEFAULT_TINY_VAE}, or madebyollin/taesdxl for SDXL and {DEFAULT_TINY_VAE_SD3} for SD3, "
        f"for real models; none for presets)",
    ),
    "vae": (
        str,
        None,
        "full VAE (AutoencoderKL hub id or folder) replacing the model's, for finished images: "
        "e.g. madebyollin/sdxl-vae-fp16-fix for SDXL in fp16 (else SDXL's VAE decodes in fp32)",
    ),
    "model_config": (
        str,
        None,
        "diffusers folder describing a single-file checkpoint's architecture (for offline use)",
    ),
    "device": (str, None, "cpu, cuda, cuda:N or mps (default: best available)"),
    "dtype": (str, None, f"one of {', '.join(DTYPES)} (default: fp16 on CUDA/MPS, fp32 on CPU)"),
    "model_kind": (
        str,
        "auto",
        "few-step kind: 'lcm' (LCM timesteps and boundary condition) or 'turbo' "
        "(SD-Turbo style: trailing timesteps, 999 for one step); default: 'auto', read "
        "from the model's scheduler config (UNet models only: SD3 models are sampled by flow matching)",
    ),
    "control": (
        list,
        None,
        f"a control model, repeatable: KIND=SPEC (KIND one of {', '.join(CONTROL_KINDS)}; SPEC a hub id, "
        f"folder or .safetensors file of a T2I-Adapter or ControlNet for the model's family, 'default' or "
        f"'random'), KIND alone for the family's default, or 'all' for every default (docs/models.md)",
    ),
    "unet": (
        str,
        None,
        "distilled UNet replacing the model's: weights file (.safetensors/.bin, local or a hub file "
        "owner/name/file), UNet folder or hub id (SDXL-Lightning, DMD2, LCM-SDXL)",
    ),
    "prediction": (
        str,
        None,
        "what the UNet predicts where its scheduler config does not say: epsilon, v_prediction or "
        "sample (SDXL-Lightning's 1-step UNet)",
    ),
    "timesteps": (
        str,
        None,
        "fixed timesteps the model was distilled at, descending, e.g. 999,749,499,249 for DMD2 "
        "(a scene of fewer steps uses evenly picked ones; default: the scheduler's)",
    ),
}

# Engine speed switches: CUDA only, off until a GPU run shows them correct and faster.
SPEED_OPTIONS = {
    "compile": (bool, False, "CUDA only: torch.compile the UNet (slow first steps)"),
    "cuda_graphs": (bool, False, "CUDA only: replay the steady-state UNet call from a CUDA graph per batch shape"),
}


def flag(name: str) -> str:
    return "--" + name.replace("_", "-")


def add_options(parser, options: dict, *, defaults: bool = True) -> None:
    """Add ``options`` as flags. With ``defaults=False`` an unset flag is None,
    so a config file can fill it (the help still names the default)."""
    for name, (kind, default, help_text) in options.items():
        shown = f" (default: {default})" if default not in (None, False) and "default" not in help_text else ""
        if kind is bool:
            parser.add_argument(flag(name), action="store_true", default=default if defaults else None, help=help_text)
            continue
        if kind is list:  # repeatable
            parser.add_argument(flag(name), action="append", default=None, metavar="VALUE", help=help_text)
            continue
        extra = {"choices": DTYPES} if name == "dtype" else {}
        parser.add_argument(
            flag(name), type=kind, default=default if defaults else None, help=help_text + shown, **extra
        )


def add_model_arguments(parser: argparse.ArgumentParser) -> None:
    """The model flags of ``render`` and the benchmarks (``serve`` adds them with its own options)."""
    add_options(parser.add_argument_group("model"), MODEL_OPTIONS)


def add_speed_arguments(parser: argparse.ArgumentParser) -> None:
    add_options(parser.add_argument_group("speed (CUDA only)"), SPEED_OPTIONS)


def _getter(values):
    return values.get if isinstance(values, dict) else lambda k: getattr(values, k, None)


def load_model_from_options(values, seed: int = 0):
    """Load the model named by an argparse namespace or a dict with the ``MODEL_OPTIONS`` keys."""
    get = _getter(values)
    model = get("model")
    spec = DEFAULT_MODEL if model is None else model  # absent: the flag's default, as for every other option
    components = load_model(
        spec,
        lora=get("lora"),
        tiny_vae=get("tiny_vae"),
        config=get("model_config"),
        device=get("device"),
        dtype=get("dtype"),
        seed=seed,
        kind=get("model_kind"),
        timesteps=get("timesteps"),
        vae=get("vae"),
        unet=get("unet"),
        prediction=get("prediction"),
    )
    components.controls = load_controls(spec, parse_controls(get("control")), components, seed)
    return components


def engine_options(values, overlap_decode: bool = False) -> dict:
    """``Engine`` keyword arguments from the speed switches; a switch the
    device cannot do, an unknown model kind or prediction, or timesteps that
    are not a descending list, are refused here, before any work (one line,
    exit 2)."""
    from smd_daemon.engine.runner import check_speed_options

    get = _getter(values)
    check_kind(get("model_kind"))
    check_prediction(get("prediction"))
    parse_timesteps(get("timesteps"))
    try:
        parse_controls(get("control"))
    except ModelLoadError as e:
        raise UsageError(str(e)) from None
    chosen = {
        "compile": bool(get("compile")),
        "cuda_graphs": bool(get("cuda_graphs")),
        "overlap_decode": bool(overlap_decode),
    }
    try:
        check_speed_options(pick_device(get("device")), **chosen)
    except ValueError as e:
        raise UsageError(str(e)) from None
    return chosen


def load_engine(opts):
    """The engine for the model and speed flags in ``opts`` (a dict or an
    argparse namespace), and the model's description (``welcome.model``).
    A speed switch the device cannot do is refused before the model loads."""
    speed = engine_options(opts, overlap_decode=bool(_getter(opts)("overlap_decode")))
    components = load_model_from_options(opts)
    return make_engine(components, **speed), components.describe()


def make_engine(components, **speed):
    """The engine on loaded components (``speed``: the CUDA switches)."""
    from smd_daemon.engine.core import Engine

    return Engine(components, **speed)

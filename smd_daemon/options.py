"""Command-line options shared by several commands, defined once.

Each option is ``name: (type, default, help)``; the same table drives the
flags (``--model-config`` for ``model_config``) and the keys of ``serve``'s
TOML config file. The engine room knows no argparse: it gets plain values.
"""

from __future__ import annotations

import argparse

from smd_daemon.engine.models import DEFAULT_LCM_LORA, DEFAULT_MODEL, DEFAULT_TINY_VAE, PRESETS, load_model

DTYPES = ("fp32", "fp16", "bf16")

MODEL_OPTIONS = {
    "model": (str, DEFAULT_MODEL, f"a preset ({', '.join(PRESETS)}: random weights, offline), a diffusers folder, "
                                  f"a .safetensors/.ckpt file or a hub id"),
    "lora": (str, None, f"LoRA to fuse at load: hub id, folder or file (plain SD-1.5 models need "
                        f"{DEFAULT_LCM_LORA})"),
    "tiny_vae": (str, "auto", f"tiny autoencoder for fast decoding: hub id, folder, 'none' or 'auto' "
                              f"({DEFAULT_TINY_VAE} for real models, none for presets)"),
    "model_config": (str, None, "diffusers folder describing a single-file checkpoint's architecture "
                                "(for offline use)"),
    "device": (str, None, "cpu, cuda, cuda:N or mps (default: best available)"),
    "dtype": (str, None, f"one of {', '.join(DTYPES)} (default: fp16 on CUDA/MPS, fp32 on CPU)"),
}


def flag(name: str) -> str:
    return "--" + name.replace("_", "-")


def add_options(parser, options: dict, *, defaults: bool = True) -> None:
    """Add ``options`` as flags. With ``defaults=False`` an unset flag is None,
    so a config file can fill it (the help still names the default)."""
    for name, (kind, default, help_text) in options.items():
        shown = f" (default: {default})" if default not in (None, False) and "default" not in help_text else ""
        if kind is bool:
            parser.add_argument(flag(name), action="store_true", default=default if defaults else None,
                                help=help_text)
            continue
        extra = {"choices": DTYPES} if name == "dtype" else {}
        parser.add_argument(flag(name), type=kind, default=default if defaults else None, help=help_text + shown,
                            **extra)


def add_model_arguments(parser: argparse.ArgumentParser) -> None:
    """The model flags of ``render`` and the benchmarks (``serve`` adds them with its own options)."""
    add_options(parser.add_argument_group("model"), MODEL_OPTIONS)


def load_model_from_options(values, seed: int = 0):
    """Load the model named by an argparse namespace or a dict with the ``MODEL_OPTIONS`` keys."""
    get = values.get if isinstance(values, dict) else lambda k: getattr(values, k)
    return load_model(get("model"), lora=get("lora"), tiny_vae=get("tiny_vae"), config=get("model_config"),
                      device=get("device"), dtype=get("dtype"), seed=seed)

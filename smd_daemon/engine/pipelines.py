"""Which diffusers pipeline a model is, and reading it: the family of a
folder or hub id (its model_index.json, else its UNet config) or of a
single-file checkpoint (its keys), the family's pipeline class, and the
load itself, every failure one ``ModelLoadError`` line."""

from __future__ import annotations

import logging
import os

import torch

from smd_daemon.engine.hub import HUB_ID as _HUB_ID
from smd_daemon.engine.hub import ModelLoadError, config_of
from smd_daemon.engine.hub import first_line as _first_line
from smd_daemon.engine.hub import from_hub as _from_hub
from smd_daemon.engine.hub import hub_problem as _hub_problem
from smd_daemon.engine.single_file import CheckpointError, checkpoint_file_family, read_single_file

log = logging.getLogger(__name__)

CHECKPOINT_EXTENSIONS = (".safetensors", ".ckpt")


def family_of_unet_config(config) -> str:
    """The engine family of a UNet config: SDXL's UNet is the one conditioned
    on a pooled embedding and time ids (``text_time``)."""
    return "sdxl" if config.get("addition_embed_type") == "text_time" else "sd15"


def family_of_unet(unet) -> str:
    return family_of_unet_config(config_of(unet))


FAMILY_NAMES = {"sd15": "SD-1.5", "sdxl": "SDXL", "sd3": "SD3"}


def read_json(path: str) -> dict:
    import json

    try:
        with open(path, encoding="utf-8") as f:
            data = json.load(f)
    except (OSError, ValueError) as e:
        raise ModelLoadError(f"{path!r} is not readable JSON: {_first_line(e)}") from None
    return data if isinstance(data, dict) else {}


def pipeline_family(index: dict, unet_config: dict | None = None) -> str:
    """The family of a diffusers pipeline from its model_index.json (the
    pipeline's ``_class_name``), else from its UNet's config."""
    name = str(index.get("_class_name", ""))
    if name.startswith("StableDiffusionXL"):
        return "sdxl"
    if name.startswith("StableDiffusion3"):
        return "sd3"
    return "sd15" if unet_config is None else family_of_unet_config(unet_config)


def pipeline_class(family: str, dtype: torch.dtype, index: dict | None = None):
    """(diffusers pipeline class, its keyword arguments) for a family (and its model_index.json)."""
    from diffusers import StableDiffusion3Pipeline, StableDiffusionPipeline, StableDiffusionXLPipeline

    if family == "sd3":
        # SD3 runs without its T5 encoder (a folder saved without it): diffusers must be told so.
        t5 = (index or {}).get("text_encoder_3")
        no_t5 = not (isinstance(t5, list) and t5[:1] != [None])
        return StableDiffusion3Pipeline, dict(
            dtype=dtype, **(dict(text_encoder_3=None, tokenizer_3=None) if no_t5 else {})
        )
    if family == "sdxl":
        return StableDiffusionXLPipeline, dict(dtype=dtype, add_watermarker=False)
    return StableDiffusionPipeline, dict(safety_checker=None, requires_safety_checker=False, dtype=dtype)


def load_single_file(path: str, config: str | None, dtype: torch.dtype):
    """A single-file checkpoint, read with its family's pipeline (the family told from its keys)."""
    try:
        family = checkpoint_file_family(path)
    except CheckpointError as e:
        raise ModelLoadError(str(e)) from None
    log.info("checkpoint %s is an %s single-file checkpoint", os.path.basename(path), FAMILY_NAMES[family])
    cls, kw = pipeline_class(family, dtype)
    if config is not None:
        check_config_family(path, config, family)
    try:
        # With no config, diffusers infers the architecture and reads its config
        # files from the cache, or fetches them (a few kB) once.
        local = config is None or os.path.isdir(config)
        return read_single_file(cls, path, config=config, local_files_only=local, **kw)
    except CheckpointError as e:
        raise ModelLoadError(str(e)) from None
    except Exception as e:  # noqa: BLE001 - reported as one line
        if _hub_problem(e) == "unreachable" or "local_files_only" in str(e):
            raise ModelLoadError(
                f"checkpoint {path!r}: its diffusers config files are not cached and the hub cannot be reached; "
                f"pass --model-config DIR with any diffusers folder of the same architecture "
                f"(an {FAMILY_NAMES[family]} one), or connect once so they are cached"
            ) from None
        raise ModelLoadError(
            f"checkpoint {path!r} could not be loaded as an {FAMILY_NAMES[family]} model: {_first_line(e)}"
        ) from None


def check_config_family(path: str, config: str, family: str) -> None:
    """--model-config must describe the checkpoint's family: diffusers would
    otherwise build the other family's pipeline and take whatever fits."""
    if os.path.isdir(config):
        index, unet = (os.path.join(config, *p) for p in (("model_index.json",), ("unet", "config.json")))
        if not os.path.isfile(index):
            raise ModelLoadError(f"model config {config!r} has no model_index.json: not a diffusers pipeline folder")
    elif _HUB_ID.match(config):
        from huggingface_hub import try_to_load_from_cache

        index, unet = (try_to_load_from_cache(config, p) for p in ("model_index.json", "unet/config.json"))
        if not isinstance(index, str):
            return  # not cached: diffusers fetches it for the pipeline the file's family picked
    else:
        raise ModelLoadError(f"model config {config!r}: not a diffusers folder or a hub id")
    described = pipeline_family(
        read_json(index), read_json(unet) if isinstance(unet, str) and os.path.isfile(unet) else None
    )
    if described != family:
        raise ModelLoadError(
            f"checkpoint {path!r} is an {FAMILY_NAMES[family]} model but --model-config {config!r} "
            f"describes an {FAMILY_NAMES[described]} model: give a diffusers folder of the same family"
        )


def load_pipeline(spec: str, config: str | None, dtype: torch.dtype, before=None, presets: tuple = ()):
    """Returns (pipeline, source kind). ``before(family)`` is told the family
    of a folder or hub id before its weights load (to refuse options)."""
    path = os.path.expanduser(spec)
    if os.path.isdir(path):
        if not os.path.isfile(os.path.join(path, "model_index.json")):
            raise ModelLoadError(
                f"model folder {spec!r} has no model_index.json: it is not a diffusers pipeline "
                f"folder (for a single checkpoint, pass the .safetensors/.ckpt file itself)"
            )
        unet_json = os.path.join(path, "unet", "config.json")
        index = read_json(os.path.join(path, "model_index.json"))
        family = pipeline_family(index, read_json(unet_json) if os.path.isfile(unet_json) else None)
        if before is not None:
            before(family)
        cls, kw = pipeline_class(family, dtype, index)
        try:
            return cls.from_pretrained(path, local_files_only=True, **kw), "folder"
        except Exception as e:  # noqa: BLE001 - reported as one line
            raise ModelLoadError(f"model folder {spec!r} could not be loaded: {_first_line(e)}") from None
    if os.path.isfile(path):
        if not path.lower().endswith(CHECKPOINT_EXTENSIONS):
            raise ModelLoadError(f"model file {spec!r}: expected a .safetensors or .ckpt checkpoint")
        return load_single_file(path, config, dtype), "single_file"
    if (
        path.lower().endswith(CHECKPOINT_EXTENSIONS)
        or spec.startswith((".", "/", "~"))
        or spec.count("/") > 1
        or "\\" in spec
    ):
        raise ModelLoadError(f"model {spec!r}: no such file or folder")
    if _HUB_ID.match(spec):
        from huggingface_hub import hf_hub_download

        index = _from_hub("model", spec, lambda **k: hf_hub_download(spec, "model_index.json", **k))
        entries = read_json(index)
        family = pipeline_family(entries)
        if before is not None:
            before(family)
        cls, kw = pipeline_class(family, dtype, entries)
        return _from_hub("model", spec, lambda **k: cls.from_pretrained(spec, **kw, **k)), "hub"
    raise ModelLoadError(
        f"model {spec!r}: not a preset ({', '.join(presets)}), a local folder or file, or a hub id (owner/name)"
    )

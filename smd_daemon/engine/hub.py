"""The Hugging Face hub, as model loading uses it: cached copies first, one
download otherwise, and every failure as one line (``ModelLoadError``)."""

from __future__ import annotations

import logging
import re

log = logging.getLogger(__name__)

HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")
# How to do without the hub, per kind of download.
OFFLINE_HINTS = {
    "model": "point --model at a local diffusers folder or a .safetensors/.ckpt file, "
    "or use --model tiny for an offline smoke run",
    "tiny autoencoder": "point --tiny-vae at a local AutoencoderTiny folder, or use --tiny-vae none",
    "LoRA": "point --lora at a local .safetensors file or folder",
}


class ModelLoadError(RuntimeError):
    """A model that could not be loaded; the message is one line for the user."""


def first_line(e: BaseException) -> str:
    text = str(e).strip()
    return text.splitlines()[0] if text else type(e).__name__


def _chain(e: BaseException | None):
    seen = set()
    while e is not None and id(e) not in seen:
        seen.add(id(e))
        yield e
        e = e.__cause__ or e.__context__


def hub_problem(e: BaseException) -> str | None:
    """Classify a failed hub access: 'unreachable', 'missing' or None."""
    from huggingface_hub.errors import LocalEntryNotFoundError, OfflineModeIsEnabled, RepositoryNotFoundError

    for x in _chain(e):
        if isinstance(x, RepositoryNotFoundError):
            return "missing"
        if isinstance(x, (OfflineModeIsEnabled, LocalEntryNotFoundError, ConnectionError, TimeoutError)):
            return "unreachable"
        if type(x).__module__.startswith(("httpx", "httpcore", "requests", "urllib3")):
            return "unreachable"
    return None


def from_hub(what: str, repo: str, load):
    """``load(local_files_only=...)``: cached copies never touch the network;
    otherwise download once (huggingface_hub shows tqdm progress)."""
    from huggingface_hub import constants

    try:
        return load(local_files_only=True)
    except Exception as e:  # noqa: BLE001 - a cache miss falls through to the download
        if hub_problem(e) is None and "local_files_only" not in str(e) and "cache" not in str(e).lower():
            raise ModelLoadError(f"{what} {repo!r}: {first_line(e)}") from None
    if constants.is_offline_mode():
        raise ModelLoadError(
            f"{what} {repo!r} is not in the local cache and offline mode is on (HF_HUB_OFFLINE): {OFFLINE_HINTS[what]}"
        )
    log.info("%s %r is not cached: downloading it from the Hugging Face hub (first use only)", what, repo)
    try:
        # One quick request first: file downloads retry for ~20 s when the hub is unreachable.
        from huggingface_hub import model_info

        model_info(repo, timeout=10)
        return load(local_files_only=False)
    except Exception as e:  # noqa: BLE001 - reported as one line
        problem = hub_problem(e)
        if problem == "unreachable":
            raise ModelLoadError(
                f"{what} {repo!r} is not in the local cache and the Hugging Face hub "
                f"cannot be reached: {OFFLINE_HINTS[what]}"
            ) from None
        if problem == "missing":
            raise ModelLoadError(
                f"{what} {repo!r} was not found on the Hugging Face hub (misspelt, or private: "
                f"log in with `hf auth login`)"
            ) from None
        raise ModelLoadError(f"{what} {repo!r}: {first_line(e)}") from None

"""Settings: global ones in Krita's own config (kritarc, group ``smd_live``),
per-document ones inside the .kra as an annotation (see kritaapi).

Limits (steps, output size) are the daemon's, from its handshake; without
one only sanity bounds apply here. Steps and canvas strength left unset
(None) are the daemon's defaults (``welcome.defaults``).
"""

from __future__ import annotations

import json

from . import kritaapi
from .transport import protocol

GROUP = "smd_live"
DEFAULTS = {
    "address": "tcp://127.0.0.1:7555",
    "server_key": "",  # the daemon's CURVE public key (Z85 text) for remote daemons
    "client_key_file": "",  # this artist's key file from `smd-daemon keys`
    "show_settings": False,  # docker sections unfolded
    "show_daemon": True,
    "seed": 0,
    "seed_locked": True,
    "steps": None,  # None: the daemon's default
    "size": 512,  # long side of the output; the short side follows the document
    "background_prompt": "",
    "negative_prompt": "",
    "background_source": "canvas",  # canvas, prompt or both
    "strength": None,  # how strongly the canvas is followed; None: the daemon's default
    "region_mode": protocol.REGION_MODES[0],  # where the daemon offers a choice
    "preview_mode": "canvas",  # canvas (a locked layer on top) or docker (a view inside the docker)
    "preview_visible": True,
    "preview_opacity": 1.0,
}
DOCUMENT_KEYS = (
    "seed",
    "seed_locked",
    "steps",
    "size",
    "background_prompt",
    "negative_prompt",
    "background_source",
    "strength",
    "region_mode",
    "preview_mode",
    "preview_visible",
    "preview_opacity",
)
SOURCES = ("canvas", "prompt", "both")
PREVIEW_MODES = ("canvas", "docker")
REGION_MODES = protocol.REGION_MODES
_CHOICES = {"background_source": SOURCES, "preview_mode": PREVIEW_MODES, "region_mode": REGION_MODES}
MAX_SEED = 2**31 - 1
OPTIONAL = {"steps": int, "strength": float}  # None means the daemon's default


def clean(values: dict, limits: dict | None = None) -> dict:
    """Known keys with values of the right type; anything else falls back to
    the default. ``limits``: the daemon's (``max_steps``, ``min_side``, ``max_side``)."""
    out = dict(DEFAULTS)
    for key, default in DEFAULTS.items():
        if key not in values:
            continue
        v = values[key]
        try:
            if key in OPTIONAL:
                v = None if v is None else OPTIONAL[key](v)
            elif isinstance(default, bool):
                v = v if isinstance(v, bool) else str(v).lower() in ("1", "true", "yes")
            elif isinstance(default, int):
                v = int(v)
            elif isinstance(default, float):
                v = float(v)
            else:
                v = str(v)
        except (TypeError, ValueError):
            continue
        out[key] = v
    for key, choices in _CHOICES.items():
        if out[key] not in choices:
            out[key] = DEFAULTS[key]
    limits = limits or {}
    if out["steps"] is not None:
        out["steps"] = max(out["steps"], 1)
        if limits.get("max_steps"):
            out["steps"] = min(out["steps"], int(limits["max_steps"]))
    out["size"] = max(out["size"], int(limits.get("min_side") or 8))
    if limits.get("max_side"):
        out["size"] = min(out["size"], int(limits["max_side"]))
    if out["strength"] is not None:
        out["strength"] = min(max(out["strength"], 0.0), 1.0)
    out["preview_opacity"] = min(max(out["preview_opacity"], 0.0), 1.0)
    out["seed"] = min(max(out["seed"], 0), MAX_SEED)
    return out


def document_part(values: dict) -> dict:
    return {k: clean(values)[k] for k in DOCUMENT_KEYS}


def load_global() -> dict:
    raw = kritaapi.read_setting(GROUP, "settings", "")
    try:
        stored = json.loads(raw) if raw else {}
    except ValueError:
        stored = {}
    return clean(stored if isinstance(stored, dict) else {})


def save_global(values: dict) -> None:
    kritaapi.write_setting(GROUP, "settings", json.dumps(clean(values), sort_keys=True))


def output_size(width: int, height: int, long_side: int, limits: dict | None = None) -> tuple[int, int]:
    """Output size with the document's aspect ratio, multiples of 8, within the daemon's limits."""
    limits = limits or {}
    lo, hi = int(limits.get("min_side") or 8), limits.get("max_side")
    side = int(long_side)
    if hi:
        side = min(side, int(hi))
    side = max(lo, side - side % 8)
    if width <= 0 or height <= 0:
        return side, side
    if width >= height:
        w, h = side, side * height / width
    else:
        w, h = side * width / height, side
    return max(lo, int(round(w / 8)) * 8), max(lo, int(round(h / 8)) * 8)


def effective(values: dict, key: str, defaults: dict):
    """A setting's value, the daemon's default (``welcome.defaults``) where the artist left it unset."""
    value = values[key]
    return defaults.get({"strength": "background_strength"}.get(key, key)) if value is None else value


def scene_settings(values: dict, defaults: dict, region_modes: list) -> dict:
    """The scene settings an update carries, from the docker's settings."""
    source = values["background_source"]
    strength = effective(values, "strength", defaults)
    out = {
        "seed": int(values["seed"]),
        "negative_prompt": values["negative_prompt"],
        "background_prompt": values["background_prompt"] if source in ("prompt", "both") else "",
        "background_strength": float(strength or 0.0) if source in ("canvas", "both") else 0.0,
    }
    steps = effective(values, "steps", defaults)
    if steps is not None:
        out["steps"] = int(steps)
    if region_modes:  # offered only by daemons that have a choice
        out["region_mode"] = values["region_mode"] if values["region_mode"] in region_modes else region_modes[0]
    return out

"""Settings: global ones in Krita's own config (kritarc, group ``smd_live``),
per-document ones inside the .kra as an annotation (see kritaapi)."""

from __future__ import annotations

import json

from . import kritaapi

GROUP = "smd_live"
DEFAULTS = {
    "address": "tcp://127.0.0.1:7555",
    "server_key": "",  # the daemon's CURVE public key (Z85 text) for remote daemons
    "client_key_file": "",  # this artist's key file from `smd-daemon keys`
    "seed": 0,
    "seed_locked": True,
    "steps": 4,
    "size": 512,  # long side of the output; the short side follows the document
    "background_prompt": "",
    "negative_prompt": "",
    "background_source": "canvas",  # canvas, prompt or both
    "strength": 0.5,  # how strongly the canvas is followed
}
DOCUMENT_KEYS = ("seed", "seed_locked", "steps", "size", "background_prompt", "negative_prompt",
                 "background_source", "strength")
SOURCES = ("canvas", "prompt", "both")


def clean(values: dict) -> dict:
    """Known keys with values of the right type; anything else falls back to the default."""
    out = dict(DEFAULTS)
    for key, default in DEFAULTS.items():
        if key not in values:
            continue
        v = values[key]
        try:
            if isinstance(default, bool):
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
    if out["background_source"] not in SOURCES:
        out["background_source"] = DEFAULTS["background_source"]
    out["steps"] = min(max(out["steps"], 1), 50)
    out["size"] = min(max(out["size"], 64), 4096)
    out["strength"] = min(max(out["strength"], 0.0), 1.0)
    out["seed"] = min(max(out["seed"], 0), 2**31 - 1)
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

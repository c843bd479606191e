"""Settings: global ones in Krita's own config (kritarc, group ``smd_live``),
per-document ones inside the .kra as an annotation (see kritaapi). Values
read back are cleaned: a damaged or hand-edited file (``NaN``, ``1e400``,
wrong types) gives the defaults for what it spoils, never an error.

Limits (steps, output size) are the daemon's, from its handshake; without
one only sanity bounds apply here. Steps and canvas strength left unset
(None) are the daemon's defaults (``welcome.defaults``).

The daemon's address defaults to the local daemon ``install.py`` recorded
(``managed_daemon.json``), else to the built-in one. Only an address the
artist chose, one other than those two, is remembered: a later install
that serves elsewhere moves the default with it.
"""

from __future__ import annotations

import json
import logging
import math

from . import kritaapi, managed
from .transport import protocol

log = logging.getLogger(__name__)

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
    # What the canvas shows during Live: the painting, both (the preview at preview_opacity over
    # the painting) or the preview alone (docs/plugin.md says why "both" at 50 % is the default).
    "preview_show": "both",
    "preview_opacity": 0.5,
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
    "preview_show",
    "preview_opacity",
)
# How the artist looks at the document: saved with it, but changing them is no edit (the document
# does not become modified).
VIEW_KEYS = ("preview_mode", "preview_show", "preview_opacity")
SOURCES = ("canvas", "prompt", "both")
PREVIEW_MODES = ("canvas", "docker")
PREVIEW_SHOWS = ("painting", "both", "preview")
REGION_MODES = protocol.REGION_MODES
_CHOICES = {
    "background_source": SOURCES,
    "preview_mode": PREVIEW_MODES,
    "preview_show": PREVIEW_SHOWS,
    "region_mode": REGION_MODES,
}
MAX_SEED = 2**31 - 1
OPTIONAL = {"steps": int, "strength": float}  # None means the daemon's default


def _typed(kind, v):
    """``v`` as ``kind``; ValueError for what is no such value: NaN and infinities included (JSON
    readers take ``NaN`` and turn ``1e400`` into infinity)."""
    if isinstance(v, float) and not math.isfinite(v):
        raise ValueError(f"{v} is not a finite number")
    v = kind(v)
    if isinstance(v, float) and not math.isfinite(v):
        raise ValueError(f"{v} is not a finite number")
    return v


def clean(values: dict, limits: dict | None = None) -> dict:
    """Known keys with values of the right type; anything else falls back to
    the default. ``limits``: the daemon's (``max_steps``, ``min_side``, ``max_side``)."""
    return clean_report(values, limits)[0]


def clean_report(values: dict, limits: dict | None = None) -> tuple[dict, list]:
    """(clean settings, the keys whose values were unusable and fell back to the default)."""
    out, bad = dict(DEFAULTS), []
    for key, default in DEFAULTS.items():
        if key not in values:
            continue
        v = values[key]
        try:
            if key in OPTIONAL:
                v = None if v is None else _typed(OPTIONAL[key], v)
            elif isinstance(default, bool):
                v = v if isinstance(v, bool) else str(v).lower() in ("1", "true", "yes")
            elif isinstance(default, int):
                v = _typed(int, v)
            elif isinstance(default, float):
                v = _typed(float, v)
            else:
                v = str(v)
        except (TypeError, ValueError, OverflowError):
            bad.append(key)
            continue
        out[key] = v
    for key, choices in _CHOICES.items():
        if out[key] not in choices:
            if key in values:
                bad.append(key)
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
    return out, bad


def document_part(values: dict) -> dict:
    cleaned = clean(values)
    return {k: cleaned[k] for k in DOCUMENT_KEYS}


def load_global() -> dict:
    raw = kritaapi.read_setting(GROUP, "settings", "")
    try:
        stored = json.loads(raw) if raw else {}
    except ValueError:
        stored = {}
    values, bad = clean_report(stored if isinstance(stored, dict) else {})
    if bad:
        log.warning("SMD Live: unusable saved settings %s: the defaults are used", ", ".join(bad))
    if not chosen_address(values["address"]):
        values["address"] = default_address()
    return values


def canvas_look(values: dict) -> tuple[bool, float]:
    """(visible, opacity) of the preview layer for the document's "show" choice."""
    show = values["preview_show"]
    return show != "painting", 1.0 if show == "preview" else values["preview_opacity"]


def next_show(show: str) -> str:
    """The one-key swap: both, then the preview alone, then the painting alone, then both again."""
    return {"both": "preview", "preview": "painting"}.get(show, "both")


def save_global(values: dict) -> None:
    values = clean(values)
    if not chosen_address(values["address"]):
        del values["address"]  # the default follows install.py
    kritaapi.write_setting(GROUP, "settings", json.dumps(values, sort_keys=True))


def default_address() -> str:
    """Where the local daemon ``install.py`` set up listens, else the built-in default."""
    config, _ = managed.load_config(managed.PACKAGE_DIR)
    return config["address"] if config is not None else DEFAULTS["address"]


def chosen_address(address: str) -> bool:
    """Whether the artist chose ``address``: an endpoint other than the built-in default and the recorded one."""
    endpoint = _endpoint(address)
    if endpoint is None:
        return bool(address.strip())  # kept as typed: the docker says what is wrong with it
    return endpoint not in (_endpoint(DEFAULTS["address"]), _endpoint(default_address()))


def _endpoint(address: str) -> str | None:
    try:
        return protocol.normalize_address(address)
    except ValueError:
        return None


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


class Store:
    """The docker's settings: global ones in Krita's config, the active document's in that document."""

    def __init__(self):
        self.values = load_global()
        self.notice = ""  # said once about the active document: its saved settings were unusable

    def set(self, key: str, value, doc, limits: dict) -> bool:
        """Change one setting and save it where it belongs; False when it did not change."""
        if self.values.get(key) == value:
            return False
        self.values[key] = value
        self.values = clean(self.values, limits)
        save_global(self.values)
        if key in DOCUMENT_KEYS and doc is not None:
            edit = key not in VIEW_KEYS  # looking differently is no change to the document
            kritaapi.save_document_settings(doc, document_part(self.values), edit=edit)
        return True

    def follow(self, doc, limits: dict) -> None:
        """Take the document's saved settings (those it has no value for stay as they are). Unusable
        ones fall back to the defaults, are cleaned in the document (no edit), and are said once."""
        stored = {k: v for k, v in kritaapi.load_document_settings(doc).items() if k in DOCUMENT_KEYS}
        _, bad = clean_report(stored, limits)
        usable = {k: (DEFAULTS[k] if k in bad else v) for k, v in stored.items()}
        self.values.update(document_part({**self.values, **usable}))
        self.notice = ""
        if bad:
            self.notice = (
                f"this document's saved SMD Live settings had unusable values ({', '.join(sorted(bad))}): "
                "the defaults are used"
            )
            kritaapi.save_document_settings(doc, document_part(self.values), edit=False)

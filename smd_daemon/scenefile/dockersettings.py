"""The SMD Live docker's per-document settings, as the plugin saves them inside
a ``.kra`` (a document annotation, ``NAME/annotations/smd-live``: JSON), so
that ``render`` can say where its own settings differ from what the artist
saw in the docker.

Krita's OpenRaster export does not carry annotations: for ``drawing.ora`` the
settings are looked for in the file itself, then in ``drawing.kra`` beside it.
Whatever is damaged or missing is skipped: these settings only ever add a
line to the log.
"""

from __future__ import annotations

import json
import math
import os
import re
import zipfile
from dataclasses import dataclass

from smd_daemon.engine.scene import MAX_SIDE, MAX_STEPS, Scene
from smd_daemon.protocol import REGION_MODES

# The annotation's name: the plugin's kritaapi.document.ANNOTATION (a test holds the two equal).
ANNOTATION = "smd-live"
MAX_BYTES = 64 * 1024  # the plugin writes a few hundred bytes
_MEMBER = re.compile(r"^[^/]+/annotations/" + re.escape(ANNOTATION) + "$")


@dataclass(frozen=True)
class Difference:
    what: str  # e.g. "region mode"
    docker: str  # the docker's value, in words
    render: str  # this render's
    flag: str  # the flag that renders as the docker does


def read(path: str) -> dict | None:
    """The settings saved in the Krita document or OpenRaster file ``path``, or None."""
    try:
        with zipfile.ZipFile(path) as zf:
            member = next((i for i in zf.infolist() if _MEMBER.match(i.filename)), None)
            if member is None or member.file_size > MAX_BYTES:
                return None
            with zf.open(member) as f:
                raw = f.read(MAX_BYTES + 1)
        values = json.loads(raw.decode("utf-8"), parse_constant=lambda name: None)  # NaN, Infinity: unset
    except (OSError, zipfile.BadZipFile, ValueError, RecursionError, EOFError, NotImplementedError):
        return None
    return values if isinstance(values, dict) and len(raw) <= MAX_BYTES else None


def find(scene_path: str) -> tuple[str, dict] | None:
    """The docker's settings for the document ``scene_path`` was made from: (where, settings)."""
    stem, ext = os.path.splitext(scene_path)
    candidates = [scene_path] if ext.lower() == ".ora" else []
    candidates += [stem + e for e in (".kra", ".KRA") if os.path.isfile(stem + e)]
    for path in candidates:
        values = read(path)
        if values is not None:
            return path, values
    return None


def differences(settings: dict, scene: Scene) -> list[Difference]:
    """Where rendering ``scene`` differs from what the docker, with ``settings``, asks the daemon for."""
    out = []
    size = _number(settings.get("size"), int, 8, MAX_SIDE)
    long_side = max(scene.width, scene.height)
    if size is not None and size - size % 8 != long_side:
        side = "--width" if scene.width >= scene.height else "--height"
        out.append(Difference("long side", f"{size} px", f"{long_side} px", f"{side} {size - size % 8}"))
    mode = settings.get("region_mode")
    if mode in REGION_MODES and mode != scene.region_mode:
        out.append(Difference("region mode", mode, scene.region_mode, f"--region-mode {mode}"))
    steps = _number(settings.get("steps"), int, 1, MAX_STEPS)  # unset: the daemon's default, as render's
    if steps is not None and steps != scene.steps:
        out.append(Difference("steps", str(steps), str(scene.steps), f"--steps {steps}"))
    seed = _number(settings.get("seed"), int, 0, 2**31 - 1)
    if settings.get("seed_locked") is True and seed is not None and seed != scene.seed:
        out.append(Difference("seed", str(seed), str(scene.seed), f"--seed {seed}"))
    return out


def _number(value, kind, lo, hi):
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        return None
    value = kind(value)
    return value if lo <= value <= hi else None

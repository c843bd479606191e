"""JSON scenes: prompts (or layer names read by the grammar) with mask images,
a background prompt and image, and scene settings (``docs/render.md``)."""

from __future__ import annotations

import difflib
import json
import math
import os
from typing import Any, TypeVar, overload

import numpy as np
from PIL import Image

from smd_daemon.engine.scene import (
    CONTROL_KINDS,
    MAX_CONTROLS,
    MAX_SIDE,
    Background,
    Control,
    Region,
    Scene,
    SceneError,
)
from smd_daemon.grammar import ParsedLayer, ignored, parse_layer_name

from .common import (
    MAX_LAYERS,
    MAX_MEMBER_BYTES,
    LoadedScene,
    Overrides,
    check_cheap,
    check_scene,
    decode,
    output_size,
    resize_alpha,
    resize_rgb,
)
from .compositing import over_white

MAX_JSON_BYTES = 4 << 20


def read_json(path: str, o: Overrides) -> LoadedScene:
    try:
        size = os.path.getsize(path)
        if size > MAX_JSON_BYTES:
            raise SceneError(f"{path}: {size} bytes, at most {MAX_JSON_BYTES} allowed for a JSON scene")
        with open(path, encoding="utf-8") as f:
            doc = json.load(f)
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise SceneError(f"{path}: not valid JSON ({e})") from None
    where = _Where(path)
    if not isinstance(doc, dict):
        raise SceneError(f"{path}: a JSON scene is an object {{...}}, got {type(doc).__name__}")
    doc_w = where.get(doc, "width", int)
    doc_h = where.get(doc, "height", int)
    if not (1 <= doc_w <= MAX_SIDE and 1 <= doc_h <= MAX_SIDE):
        raise SceneError(f"{path}: the scene is {doc_w}x{doc_h} pixels; at most {MAX_SIDE} per side is allowed")
    width, height = output_size(doc_w, doc_h, o.width, o.height)
    opts = check_cheap(
        width,
        height,
        o,
        seed=where.get(doc, "seed", int, None),
        steps=where.get(doc, "steps", int, None),
        bootstrap_steps=where.get(doc, "bootstrap_steps", int, None),
        mask_mode=where.get(doc, "mask_mode", str, None),
        guidance_scale=where.get(doc, "guidance_scale", float, None),
        region_mode=where.get(doc, "region_mode", str, None),
    )
    negative = o.negative_prompt if o.negative_prompt is not None else where.get(doc, "negative_prompt", str, "")

    bg_doc = where.get(doc, "background", dict, {})
    bg = Background(
        prompt=o.background_prompt
        if o.background_prompt is not None
        else where.get(bg_doc, "prompt", str, "", "background"),
        negative_prompt=where.get(bg_doc, "negative_prompt", str, negative, "background"),
        strength=(
            o.background_strength
            if o.background_strength is not None
            else where.get(bg_doc, "strength", float, 0.0, "background")
        ),
    )
    image_path = where.get(bg_doc, "image", str, None, "background")

    entries = where.get(doc, "regions", list)
    if len(entries) > MAX_LAYERS:
        raise SceneError(f"{path}: more than {MAX_LAYERS} regions")
    regions, parsed = [], []
    for i, entry in enumerate(entries):
        label = f"region {i + 1}"
        if not isinstance(entry, dict):
            raise SceneError(f'{path}: {label} must be an object {{"prompt": ..., "mask": ...}}')
        base = _json_region_base(where, entry, label)
        mask_path = where.get(entry, "mask", str, None, label)
        if mask_path is None:
            raise SceneError(f'{path}: {label} has no "mask" (a PNG path relative to the JSON file)')
        mask = _json_mask(path, mask_path, doc_w, doc_h, width, height, label)
        # Fields given in the JSON win over the defaults and over options in a layer name.
        p = ParsedLayer(
            name=where.get(entry, "name", str, base.name, label),
            role="region",
            prompt=base.prompt,
            negative_prompt=where.get(entry, "negative_prompt", str, base.negative_prompt or negative, label),
            mask_strength=where.get(entry, "strength", float, base.mask_strength, label),
            mask_std=where.get(entry, "blur", float, base.mask_std, label),
            prompt_strength=where.get(entry, "prompt_strength", float, base.prompt_strength, label),
            warnings=base.warnings,
            warning_codes=base.warning_codes,
        )
        if not mask.any():
            p = ignored(p.name, "empty", "the mask is empty", warnings=p)
        else:
            regions.append(
                Region(
                    prompt=p.prompt,
                    mask=mask.astype(np.float32) / 255.0,
                    negative_prompt=p.negative_prompt,
                    mask_strength=p.mask_strength,
                    mask_std=p.mask_std,
                    prompt_strength=p.prompt_strength,
                    name=p.name,
                )
            )
        parsed.append(p)
    control_entries = where.get(doc, "controls", list, [])
    if len(control_entries) > MAX_CONTROLS:
        raise SceneError(f"{path}: {len(control_entries)} controls, at most {MAX_CONTROLS} are allowed")
    controls = [_json_control(where, e, i, doc_w, doc_h, width, height, parsed) for i, e in enumerate(control_entries)]
    scene = Scene(
        width=width,
        height=height,
        regions=regions,
        background=bg,
        controls=[c for c in controls if c is not None],
        **opts,
    )
    check_scene(path, scene, parsed)
    unknown = where.unknown(
        [(doc, "")]
        + [(bg_doc, "background")]
        + [(e, f"region {i + 1}") for i, e in enumerate(entries)]
        + [(e, f"control {i + 1}") for i, e in enumerate(control_entries)]
    )
    if image_path is not None and bg.strength > 0:
        im = decode(
            _read_file(path, image_path, "background image"),
            ("PNG", "JPEG", "WEBP"),
            f"{path}: background image {image_path!r}",
            MAX_SIDE,
        )
        bg.image = np.array(im.convert("RGB").resize((width, height), Image.Resampling.LANCZOS))
    return LoadedScene(scene, parsed, [unknown] if unknown else [])


def _json_region_base(where: _Where, entry: dict, label: str) -> ParsedLayer:
    """A region's prompt: literal text (``prompt``), or a layer name read by the grammar (``layer``)."""
    prompt = where.get(entry, "prompt", str, None, label)
    layer = where.get(entry, "layer", str, None, label)
    if prompt is not None and layer is not None:
        raise SceneError(f'{where.path}: {label} gives both "prompt" and "layer"; give one')
    if layer is not None:
        p = parse_layer_name(layer)
        if p.role != "region":
            why = p.reason or 'a background layer: use the "background" field'
            raise SceneError(f"{where.path}: {label}: layer name {layer!r} is not a region ({why})")
        return p
    if prompt is None or not prompt.strip():
        raise SceneError(f"{where.path}: {label} has no prompt")
    return ParsedLayer(name=prompt, role="region", prompt=prompt)


def _json_control(
    where: _Where, entry, i: int, doc_w: int, doc_h: int, width: int, height: int, parsed: list
) -> Control | None:
    """One ``controls`` entry: its picture as the artist sees it over white paper, at output size; None
    (and an ignored entry in ``parsed``, said as a warning) when nothing is painted on it."""
    label = f"control {i + 1}"
    if not isinstance(entry, dict):
        raise SceneError(f'{where.path}: {label} must be an object {{"kind": ..., "image": ...}}')
    kind = where.get(entry, "kind", str, None, label)
    if kind is None:
        raise SceneError(f'{where.path}: {label} has no "kind" (one of {", ".join(CONTROL_KINDS)})')
    if kind not in CONTROL_KINDS:
        close = difflib.get_close_matches(kind, CONTROL_KINDS, n=1)
        hint = f"did you mean {close[0]!r}?" if close else "kinds are " + ", ".join(CONTROL_KINDS)
        raise SceneError(f"{where.path}: {label}: unknown kind {kind!r} ({hint})")
    rel = where.get(entry, "image", str, None, label)
    if rel is None:
        raise SceneError(f'{where.path}: {label} has no "image" (a path relative to the JSON file)')
    name = where.get(entry, "name", str, f"control: {kind}", label)
    strength = where.get(entry, "strength", float, 1.0, label)
    start = where.get(entry, "start", float, 0.0, label)
    end = where.get(entry, "end", float, 1.0, label)
    if not 0 <= strength <= 2:
        raise SceneError(f"{where.path}: {label}: strength must be between 0 and 2, got {strength:g}")
    if not 0 <= start < end <= 1:
        raise SceneError(f"{where.path}: {label}: start and end must satisfy 0 <= start < end <= 1")
    what = f"{where.path}: {label} image {rel!r}"
    im = decode(_read_file(where.path, rel, f"{label} image"), ("PNG", "JPEG", "WEBP"), what, MAX_SIDE)
    if im.size != (doc_w, doc_h):
        raise SceneError(f"{what} is {im.size[0]}x{im.size[1]}, the scene is {doc_w}x{doc_h}")
    pixels = np.asarray(im.convert("RGBA"))
    p = ParsedLayer(name, "control", kind=kind, control_strength=strength, control_start=start, control_end=end)
    if not pixels[..., 3].any():
        parsed.append(ignored(name, "empty", "the image is fully transparent", warnings=p))
        return None
    parsed.append(p)
    return Control(kind, resize_rgb(over_white(pixels), width, height), strength, start, end, name=name)


_T = TypeVar("_T")
_D = TypeVar("_D")
_MISSING: Any = object()  # "no default": the field is required


class _Where:
    """Typed field access with one-line errors that say where the problem is; it
    remembers the keys it was asked for, so those it never was are told (``unknown``)."""

    def __init__(self, path: str):
        self.path = path
        self._asked: dict[int, set] = {}  # id of a JSON object -> the keys read from it

    @overload
    def get(self, obj: dict, key: str, typ: type[_T]) -> _T: ...
    @overload
    def get(self, obj: dict, key: str, typ: type[_T], default: _D, where: str = "") -> _T | _D: ...
    def get(self, obj: dict, key: str, typ: type, default: Any = _MISSING, where: str = "") -> Any:
        self._asked.setdefault(id(obj), set()).add(key)
        label = f"{where} " if where else ""
        if key not in obj or obj[key] is None:
            if default is _MISSING:
                raise SceneError(f"{self.path}: {label}field {key!r} is missing")
            return default
        v = obj[key]
        ok = isinstance(v, typ) and not isinstance(v, bool)
        if typ is float and isinstance(v, int) and not isinstance(v, bool):
            v, ok = float(v), True
        if typ is float and ok and not math.isfinite(v):
            ok = False
        if not ok:
            raise SceneError(f"{self.path}: {label}field {key!r} must be {_TYPE_NAMES[typ]}, got {json.dumps(v)[:40]}")
        return v

    def unknown(self, objects: list[tuple[dict, str]]) -> str:
        """One line naming every key of ``objects`` (each with where it is) that nothing read, or ''."""
        found = []
        for obj, where in objects:
            asked = self._asked.get(id(obj), set())
            for key in obj:
                if key not in asked:
                    near = difflib.get_close_matches(key, asked, n=1)
                    hint = f" (did you mean {near[0]!r}?)" if near else ""
                    found.append(f"{key[:60]!r}{f' in {where}' if where else ''}{hint}")
        if not found:
            return ""
        shown = ", ".join(found[:20]) + (f" and {len(found) - 20} more" if len(found) > 20 else "")
        return f"{self.path}: ignored what this version does not know: {shown}"


_TYPE_NAMES = {int: "a whole number", float: "a number", str: "text", list: "a list", dict: "an object"}


def _read_file(json_path: str, rel: str, what: str) -> bytes:
    full = os.path.join(os.path.dirname(os.path.abspath(json_path)), rel)
    try:
        size = os.path.getsize(full)
        if size > MAX_MEMBER_BYTES:
            raise SceneError(f"{json_path}: {what} {rel!r} is {size} bytes, too large")
        with open(full, "rb") as f:
            return f.read()
    except FileNotFoundError:
        raise SceneError(f"{json_path}: {what} {rel!r} not found (paths are relative to the JSON file)") from None
    except IsADirectoryError:
        raise SceneError(f"{json_path}: {what} {rel!r} is a folder, not an image") from None


def _json_mask(json_path, rel, doc_w, doc_h, width, height, label) -> np.ndarray:
    """A mask PNG: its alpha channel if it has one, else its grey level (white = inside)."""
    what = f"{json_path}: {label} mask {rel!r}"
    im = decode(_read_file(json_path, rel, f"{label} mask"), ("PNG",), what, MAX_SIDE)
    if im.size != (doc_w, doc_h):
        raise SceneError(f"{what} is {im.size[0]}x{im.size[1]}, the scene is {doc_w}x{doc_h}")
    has_alpha = "A" in im.getbands() or "transparency" in im.info
    if has_alpha:
        alpha = np.asarray(im.convert("RGBA").getchannel("A"))
    elif im.mode.startswith("I"):  # 16-bit grey: Pillow's convert("L") would clip, not scale
        alpha = np.round(np.asarray(im).astype(np.float64) / 257).clip(0, 255).astype(np.uint8)
    else:
        alpha = np.asarray(im.convert("L"))
    return resize_alpha(alpha, width, height)

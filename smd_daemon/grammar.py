"""The layer-name grammar: which layers are regions and what they ask for.

Defined once, here. The Krita plugin sends raw layer names and alpha planes;
the daemon (and ``smd-daemon render``) apply these rules, so an artist sees
the same reading everywhere.

    a red fox                          region, prompt "a red fox"
    a red fox | neg: blurry | blur: 4  region with options
    bg: snowy pine forest              background prompt (pixels join the
                                       background image)
    # sketch, Paint Layer 3, Background, hidden layers
                                       ignored

Options after ``|`` are ``key: value``:
    neg              negative prompt
    strength         mask strength, 0..1 (below ~0.96 looks washed out with LCM)
    blur             mask blur std in canvas pixels, 0..256
    prompt-strength  how far the region's prompt moves away from the
                     background prompt, 0..1
For a ``bg:`` layer, ``strength`` is how strongly the image of the
non-region layers is followed (0 = ignore it).
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

import numpy as np

from smd_daemon.engine.scene import DEFAULT_STEPS, Background, Region, Scene

DEFAULT_MASK_STD = 8.0
DEFAULT_PROMPT_STRENGTH = 0.95

_AUTO_NAME = re.compile(
    r"^(paint layer|layer|group|group layer|vector layer|fill layer|file layer|clone layer|filter layer|"
    r"transparency mask|selection mask|colorize mask|transform mask|filter mask|local selection|"
    r"background|copy of .*)( \d+)?( \(merged\))?$",
    re.IGNORECASE,
)
_BG_PREFIX = re.compile(r"^\s*(bg|background)\s*:\s*", re.IGNORECASE)
_OPTION = re.compile(r"^\s*([a-z][a-z_ -]*?)\s*[:=]\s*(.*?)\s*$", re.IGNORECASE)
# The plugin's own layers (the live preview, applied results) are never input.
OWN_PREFIX = "SMD "


@dataclass
class LayerInput:
    """One layer as the plugin or an OpenRaster file gives it."""

    name: str
    alpha: np.ndarray | None = None  # uint8 (H, W) at output size
    visible: bool = True


@dataclass
class ParsedLayer:
    name: str
    role: str  # "region", "background" or "ignored"
    prompt: str = ""
    negative_prompt: str = ""
    mask_strength: float = 1.0
    mask_std: float = DEFAULT_MASK_STD
    prompt_strength: float = DEFAULT_PROMPT_STRENGTH
    background_strength: float | None = None
    reason: str = ""  # why it is ignored
    warnings: list[str] = field(default_factory=list)

    def to_dict(self) -> dict:
        d = {"name": self.name, "role": self.role, "prompt": self.prompt}
        if self.role == "region":
            d.update(negative_prompt=self.negative_prompt, strength=self.mask_strength, blur=self.mask_std,
                     prompt_strength=self.prompt_strength)
        elif self.role == "background":
            d.update(negative_prompt=self.negative_prompt, strength=self.background_strength)
        if self.reason:
            d["reason"] = self.reason
        if self.warnings:
            d["warnings"] = list(self.warnings)
        return d


def _number(value: str, lo: float, hi: float, key: str, warnings: list[str]) -> float | None:
    try:
        v = float(value)
    except ValueError:
        warnings.append(f"{key}: {value!r} is not a number (ignored)")
        return None
    if not (lo <= v <= hi):
        warnings.append(f"{key}: {value} is outside {lo:g}..{hi:g} (ignored)")
        return None
    return v


def parse_layer_name(name: str, visible: bool = True) -> ParsedLayer:
    """Read one layer name. Never raises: problems become warnings."""
    raw = name if isinstance(name, str) else ""
    stripped = raw.strip()
    if not visible:
        return ParsedLayer(raw, "ignored", reason="hidden")
    if not stripped:
        return ParsedLayer(raw, "ignored", reason="no name")
    if stripped.startswith("#"):
        return ParsedLayer(raw, "ignored", reason="marked with #")
    if raw.startswith(OWN_PREFIX):
        return ParsedLayer(raw, "ignored", reason="made by the plugin")
    if _AUTO_NAME.match(stripped):
        return ParsedLayer(raw, "ignored", reason="automatic layer name")

    m = _BG_PREFIX.match(stripped)
    role = "background" if m else "region"
    body = stripped[m.end():] if m else stripped
    parts = body.split("|")
    out = ParsedLayer(raw, role, prompt=parts[0].strip())
    for part in parts[1:]:
        if not part.strip():
            continue
        om = _OPTION.match(part)
        if not om:
            out.warnings.append(f"{part.strip()!r} is not 'key: value' (ignored)")
            continue
        key = om.group(1).strip().lower().replace("_", "-").replace(" ", "-")
        value = om.group(2)
        if key in ("neg", "negative", "negative-prompt"):
            out.negative_prompt = value
        elif key == "strength":
            v = _number(value, 0, 1, key, out.warnings)
            if v is not None:
                if role == "background":
                    out.background_strength = v
                else:
                    out.mask_strength = v
        elif key == "blur" and role == "region":
            v = _number(value, 0, 256, key, out.warnings)
            if v is not None:
                out.mask_std = v
        elif key == "prompt-strength" and role == "region":
            v = _number(value, 0, 1, key, out.warnings)
            if v is not None:
                out.prompt_strength = v
        else:
            out.warnings.append(f"unknown option {key!r} (ignored)")
    if role == "region" and not out.prompt:
        return ParsedLayer(raw, "ignored", reason="no prompt before '|'", warnings=out.warnings)
    return out


def joins_background_image(visible: bool, parsed: ParsedLayer) -> bool:
    """Which layers make the background image: every visible layer that is not a region,
    except those marked ``#`` and the plugin's own (its preview must never feed back)."""
    if not visible or parsed.role == "region":
        return False
    name = parsed.name.strip()
    return not (name.startswith("#") or parsed.name.startswith(OWN_PREFIX))


def build_scene(
    layers: list[LayerInput],
    width: int,
    height: int,
    *,
    background_prompt: str = "",
    negative_prompt: str = "",
    background_image: np.ndarray | None = None,
    background_strength: float = 0.0,
    seed: int = 0,
    steps: int = DEFAULT_STEPS,
    **scene_options,
) -> tuple[Scene, list[ParsedLayer]]:
    """Layers bottom to top -> a Scene, plus how each layer was read.

    A ``bg:`` layer's prompt and options override the given background
    prompt and strength (the topmost such layer wins). ``negative_prompt``
    applies to every region without one of its own.
    """
    parsed: list[ParsedLayer] = []
    regions: list[Region] = []
    bg = Background(prompt=background_prompt, negative_prompt=negative_prompt, image=background_image,
                    strength=background_strength)
    for layer in layers:
        p = parse_layer_name(layer.name, layer.visible)
        if p.role == "region":
            if layer.alpha is None or layer.alpha.shape != (height, width):
                shape = None if layer.alpha is None else tuple(layer.alpha.shape)
                p = ParsedLayer(layer.name, "ignored", reason=f"alpha {shape} does not match {height}x{width}")
            elif not layer.alpha.any():
                p.role, p.reason = "ignored", "empty (no painted pixels)"
            else:
                regions.append(Region(
                    prompt=p.prompt,
                    negative_prompt=p.negative_prompt or negative_prompt,
                    mask=layer.alpha,  # uint8 as it came: no float copy at canvas size
                    mask_strength=p.mask_strength,
                    mask_std=p.mask_std,
                    prompt_strength=p.prompt_strength,
                    name=layer.name,
                ))
        elif p.role == "background":
            bg.prompt = p.prompt
            if p.negative_prompt:
                bg.negative_prompt = p.negative_prompt
            if p.background_strength is not None:
                bg.strength = p.background_strength
        parsed.append(p)
    scene = Scene(width=width, height=height, regions=regions, background=bg, seed=seed, steps=steps,
                  **scene_options)
    return scene, parsed

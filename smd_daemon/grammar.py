"""The layer-name grammar: which layers are regions and what they ask for.

Defined once, here. The Krita plugin sends raw layer names and alpha planes;
the daemon (and ``smd-daemon render``) apply these rules, so an artist sees
the same reading everywhere.

    a red fox                          region, prompt "a red fox"
    a red fox | neg: blurry | blur: 4  region with options
    bg: snowy pine forest              background prompt (pixels join the
                                       background image, as do automatic
                                       names' and unnamed layers')
    # sketch                           ignored (marker)
    Paint Layer 3, Background, Ebene 2 ignored (automatic names of Krita,
                                       GIMP, Photoshop, MyPaint; en/de/fr/es)
    Copy of a red fox                  Krita's duplicate: read as "a red fox"
    hidden, empty layers; groups       ignored (a group's layers are read
                                       one by one, as the artist sees them)
    control: lineart | strength: 0.8   control layer (CONTROL_KINDS): its pixels
                                       over white paper steer the whole canvas

Options after ``|`` are ``key: value``:
    neg              negative prompt
    strength         mask strength, 0..1 (below ~0.96 looks washed out with LCM)
    blur             mask blur std in canvas pixels, 0..256
    prompt-strength  how far the region's prompt moves away from the
                     background prompt, 0..1
For a ``bg:`` layer, ``strength`` is how strongly the image of the
non-region layers is followed (0 = ignore it). A ``control:`` layer takes
    strength         how strongly it steers, 0..2 (default 1)
    start, end       the fractions of the denoising where it steers,
                     0 <= start < end <= 1 (default 0 and 1)

Every ignored layer carries a ``reason_code`` from :data:`REASON_CODES` and
every option problem a code from :data:`WARNING_CODES`; clients decide on
codes, the sentences beside them are for people.
"""

from __future__ import annotations

import difflib
import re
from dataclasses import dataclass, field

import numpy as np

from smd_daemon.engine.scene import CONTROL_KINDS, DEFAULT_STEPS, Background, Control, Region, Scene

DEFAULT_MASK_STD = 8.0
DEFAULT_PROMPT_STRENGTH = 0.95

# Why a layer is ignored: a closed set (docs/protocol.md, the `scene` reply).
REASON_CODES = {
    "hidden": "hidden: show the layer to use it",
    "empty": "empty: nothing is painted on it",
    "automatic_name": "automatic name: rename it with a prompt",
    "marker": "starts with #: ignored on purpose",
    "plugin_layer": "made by the plugin (preview or result)",
    "no_name": "no name: name it with a prompt",
    "no_prompt": "no prompt before '|': write the prompt first",
    "size_mismatch": "its pixels do not match the canvas size",
    "group": "a group: its layers are read one by one",
    "unknown_kind": "not a control kind: " + ", ".join(CONTROL_KINDS),
    "no_image": "a control layer whose picture was not sent (only its alpha)",
}
# What is wrong with an option after '|': a closed set as well.
WARNING_CODES = ("unknown_option", "bad_value", "not_key_value")

# Names programs give new layers by themselves, in English, German, French and
# Spanish. Krita's were read from Krita 5.1 itself (its layer and mask actions,
# with its translations); GIMP's from GIMP 2.10's translations; Photoshop and
# MyPaint number a translated "Layer"/"Group". A name is automatic when it is
# one of these, optionally numbered ("Paint Layer 3", "New Layer #2"), with a
# Krita filter suffix ("Filter Layer 1 (Levels)") and copy marks ("Layer 1
# copy", "Background copy #1", "Ebene 1 Kopie", "Hintergrund-Kopie").
_AUTO_BASES = (
    # Krita
    "paint layer",
    "layer",
    "group",
    "vector layer",
    "fill layer",
    "file layer",
    "clone layer",
    "filter layer",
    "transparency mask",
    "selection mask",
    "colorize mask",
    "transform mask",
    "filter mask",
    "selection",
    "local selection",
    "background",
    "visible",
    "merged",
    # GIMP, Photoshop, MyPaint
    "new layer",
    "pasted layer",
    "layer group",
    "clipboard",
    "floating selection",
    "floated layer",
    "text layer",
    # German (Krita, GIMP, Photoshop)
    "malebene",
    "ebene",
    "gruppe",
    "vektorebene",
    "füllebene",
    "dateiebene",
    "ebene klonen",
    "filterebene",
    "transparenzmaske",
    "auswahlmaske",
    "einfärben der maske",
    "transformationsmaske",
    "filtermaske",
    "auswahl",
    "hintergrund",
    "sichtbar",
    "zusammengeführt",
    "neue ebene",
    "eingefügte ebene",
    "ebenengruppe",
    "zwischenablage",
    "schwebende auswahl",
    "schwebende ebene",
    "textebene",
    # French
    "calque de dessin",
    "calque",
    "calque de groupe",
    "groupe",
    "calque vectoriel",
    "calque de remplissage",
    "calque de fichier",
    "calque de clonage",
    "calque de filtrage",
    "masque de transparence",
    "masque de sélection",
    "masque de coloration",
    "masque de transformation",
    "masque de filtrage",
    "sélection",
    "arrière-plan",
    "fusionnés",
    "nouveau calque",
    "calque copié",
    "groupe de calques",
    "presse-papiers",
    "sélection flottante",
    "calque flottant",
    "calque de texte",
    # Spanish ("Fondo" alone is Krita's, GIMP's and Photoshop's background, not a prompt)
    "capa de pintura",
    "capa",
    "agrupar",
    "grupo",
    "capa vectorial",
    "capa de relleno",
    "capa de archivo",
    "clonar capa",
    "capa de filtro",
    "máscara de transparencia",
    "máscara de selección",
    "máscara de coloración",
    "máscara de transformación",
    "máscara de filtro",
    "selección",
    "fondo",
    "fusionadas",
    "capa nueva",
    "capa pegada",
    "grupo de capas",
    "portapapeles",
    "selección flotante",
    "capa flotante",
    "capa de texto",
)
# Marks after a name: copies (GIMP "%s copy", "%s-Kopie"; Photoshop "Layer 1 copy 2",
# "Ebene 1 Kopie", "Calque 1 copie", "Capa 1 copia"), Krita's "(pasted)" and "(merged)".
_MARK = r"(?:[ -](?:copy|kopie|copie|copia)|\s*\((?:pasted|eingefügt|collé|pegado|merged)\))"
_AUTO_NAME = re.compile(
    # base, then a number with an optional Krita filter name ("Filter Mask 1 (Levels)"), then
    # any copy marks and GIMP/Photoshop numbers ("New Layer #2", "Layer 1 copy 2")
    r"^(?:%s)(?: \d+(?:\s*\(.*\))?)?(?:%s| #\d+| \d+)*$"
    # GIMP's floating selection names what it floats: "Floating Selection\n(Pasted Layer)"
    r"|^(?:floating selection|schwebende auswahl|sélection flottante|selección flotante)\s*\(.*\)$"
    % ("|".join(re.escape(b) for b in sorted(_AUTO_BASES, key=len, reverse=True)), _MARK),
    re.IGNORECASE | re.DOTALL,
)
# Krita's duplicate ("Copy of %1") and GIMP's French/Spanish copy ("Copie de %s"):
# spelled exactly as the programs write them, so a lowercase prompt such as
# "copy of the mona lisa" stays a prompt.
_COPY_PREFIX = re.compile(r"^(?:Copy of|Kopie von|Copier de|Copie de|Copia de|Copiar de) (?=\S)")
_BG_PREFIX = re.compile(r"^\s*(bg|background)\s*:\s*", re.IGNORECASE)
_CONTROL_PREFIX = re.compile(r"^\s*control\s*:\s*", re.IGNORECASE)
_OPTION = re.compile(r"^\s*([a-z][a-z_ -]*?)\s*[:=]\s*(.*?)\s*$", re.IGNORECASE)
# The plugin's own layers (the live preview, applied results) are never input.
OWN_PREFIX = "SMD "


def _original_name(name: str) -> str:
    """The name without duplicate prefixes: a copy is read as its original."""
    name = name.strip()
    while (copy := _COPY_PREFIX.match(name)) is not None:
        name = name[copy.end() :].strip()
    return name


def is_automatic_name(name: str) -> bool:
    """Whether ``name`` is one a program gave the layer by itself (never a prompt)."""
    return bool(_AUTO_NAME.match(_original_name(name)))


@dataclass
class LayerInput:
    """One layer as the plugin or an OpenRaster file gives it."""

    name: str
    alpha: np.ndarray | None = None  # uint8 (H, W) at output size
    visible: bool = True
    group: bool = False  # a group layer: never read itself (its children are sent as layers)
    # A control layer's picture: uint8 (H, W, 3) at output size, its pixels as the artist sees them,
    # over white paper (only control layers need one; the others' pixels join the background image).
    image: np.ndarray | None = None


@dataclass
class ParsedLayer:
    name: str
    role: str  # "region", "background", "control" or "ignored"
    prompt: str = ""
    negative_prompt: str = ""
    mask_strength: float = 1.0
    mask_std: float = DEFAULT_MASK_STD
    prompt_strength: float = DEFAULT_PROMPT_STRENGTH
    background_strength: float | None = None
    kind: str = ""  # a control layer's kind (one of CONTROL_KINDS), kept when it is ignored (empty...)
    control_strength: float = 1.0
    control_start: float = 0.0
    control_end: float = 1.0
    reason_code: str = ""  # why it is ignored: a key of REASON_CODES
    reason: str = ""  # the same for people
    warnings: list[str] = field(default_factory=list)  # option problems, for people
    warning_codes: list[str] = field(default_factory=list)  # one of WARNING_CODES per warning
    # Whether its pixels join the background image (see parse_layer_name); decided by the name alone,
    # so a region stays out while it is empty or mis-sized.
    joins_background: bool = False

    def to_dict(self) -> dict:
        d = {"name": self.name, "role": self.role, "prompt": self.prompt, "joins_background": self.joins_background}
        if self.role == "region":
            d.update(
                negative_prompt=self.negative_prompt,
                strength=self.mask_strength,
                blur=self.mask_std,
                prompt_strength=self.prompt_strength,
            )
        elif self.role == "background":
            d.update(negative_prompt=self.negative_prompt, strength=self.background_strength)
        if self.kind:  # a control layer, used or not: a client sends its picture
            d["kind"] = self.kind
            if self.role == "control":
                d.update(strength=self.control_strength, start=self.control_start, end=self.control_end)
        if self.reason_code:
            d["reason_code"] = self.reason_code
            d["reason"] = self.reason
        if self.warnings:
            d["warnings"] = list(self.warnings)
            d["warning_codes"] = list(self.warning_codes)
        return d

    def warn(self, code: str, message: str) -> None:
        assert code in WARNING_CODES, code
        self.warning_codes.append(code)
        self.warnings.append(message)


# Ignored layers whose pixels still join the background image: their names are no prompts.
_PICTURE_CODES = ("automatic_name", "no_name")


def ignored(name: str, code: str, detail: str = "", warnings: ParsedLayer | None = None) -> ParsedLayer:
    """An ignored layer with its reason code and sentence (``detail`` is added to the sentence)."""
    sentence = REASON_CODES[code] + (f" ({detail})" if detail else "")
    p = ParsedLayer(name, "ignored", reason_code=code, reason=sentence, joins_background=code in _PICTURE_CODES)
    if warnings is not None:
        p.warnings, p.warning_codes = warnings.warnings, warnings.warning_codes
        p.kind = warnings.kind if warnings.role == "control" else ""
    return p


_REGION_OPTIONS = ("neg", "strength", "blur", "prompt-strength")
_BACKGROUND_OPTIONS = ("neg", "strength")
_CONTROL_OPTIONS = ("strength", "start", "end")


def _options(out: ParsedLayer, parts: list[str]):
    """(key, value) of each ``| key: value`` part, keys normalised
    (``Prompt_Strength`` -> ``prompt-strength``); a part that is not one is warned about."""
    for part in parts:
        if not part.strip():
            continue
        om = _OPTION.match(part)
        if not om:
            out.warn("not_key_value", f"{part.strip()!r} is not 'key: value' (ignored)")
            continue
        yield om.group(1).strip().lower().replace("_", "-").replace(" ", "-"), om.group(2)


def _number(out: ParsedLayer, value: str, lo: float, hi: float, key: str) -> float | None:
    try:
        v = float(value)
    except ValueError:
        out.warn("bad_value", f"{key}: {value!r} is not a number (ignored)")
        return None
    if not (lo <= v <= hi):
        out.warn("bad_value", f"{key}: {value} is outside {lo:g}..{hi:g} (ignored)")
        return None
    return v


def _unknown_option(out: ParsedLayer, key: str) -> None:
    known = {"background": _BACKGROUND_OPTIONS, "control": _CONTROL_OPTIONS}.get(out.role, _REGION_OPTIONS)
    if out.role in ("background", "control") and key in _REGION_OPTIONS:
        prefix = "bg:" if out.role == "background" else "control:"
        out.warn("unknown_option", f"{key!r} applies to regions only, not to a {prefix} layer (ignored)")
        return
    close = difflib.get_close_matches(key, known, n=1, cutoff=0.6)
    hint = f"did you mean {close[0]!r}?" if close else "options are " + ", ".join(known)
    out.warn("unknown_option", f"unknown option {key!r} (ignored; {hint})")


def parse_layer_name(name: str, visible: bool = True) -> ParsedLayer:
    """Read one layer name. Never raises: problems become warnings.

    Which layers make the background image is decided here, once (``joins_background``): every
    visible layer whose name is no prompt (``bg:`` layers, automatic names, unnamed layers), never
    a region (painted or not), a name with options but no prompt, one marked ``#``, the plugin's own
    (its preview must never feed back) or a group (its layers join one by one).
    """
    raw = name if isinstance(name, str) else ""
    stripped = raw.strip()
    if not visible:
        return ignored(raw, "hidden")
    if not stripped:
        return ignored(raw, "no_name")
    if stripped.startswith("#"):
        return ignored(raw, "marker")
    if raw.startswith(OWN_PREFIX):
        return ignored(raw, "plugin_layer")
    # A duplicate keeps its original's reading: "Copy of a red fox" is "a red fox".
    stripped = _original_name(stripped)
    if _AUTO_NAME.match(stripped):
        return ignored(raw, "automatic_name")

    c = _CONTROL_PREFIX.match(stripped)
    if c:
        return _parse_control(raw, stripped[c.end() :])
    m = _BG_PREFIX.match(stripped)
    role = "background" if m else "region"
    body = stripped[m.end() :] if m else stripped
    parts = body.split("|")
    out = ParsedLayer(raw, role, prompt=parts[0].strip(), joins_background=role == "background")
    for key, value in _options(out, parts[1:]):
        if key in ("neg", "negative", "negative-prompt"):
            out.negative_prompt = value
        elif key == "strength":
            v = _number(out, value, 0, 1, key)
            if v is not None:
                if role == "background":
                    out.background_strength = v
                else:
                    out.mask_strength = v
        elif key == "blur" and role == "region":
            v = _number(out, value, 0, 256, key)
            if v is not None:
                out.mask_std = v
        elif key == "prompt-strength" and role == "region":
            v = _number(out, value, 0, 1, key)
            if v is not None:
                out.prompt_strength = v
        else:
            _unknown_option(out, key)
    if role == "region" and not out.prompt:
        return ignored(raw, "no_prompt", warnings=out)
    return out


def _parse_control(raw: str, body: str) -> ParsedLayer:
    """``control: KIND | options``: a control layer, or an ignored one when the kind is unknown."""
    parts = body.split("|")
    out = ParsedLayer(raw, "control", kind=parts[0].strip().lower())
    start, end = out.control_start, out.control_end
    for key, value in _options(out, parts[1:]):
        if key in _CONTROL_OPTIONS:
            v = _number(out, value, 0, 2 if key == "strength" else 1, key)
            if v is not None and key == "strength":
                out.control_strength = v
            elif v is not None:
                start, end = (v, end) if key == "start" else (start, v)
        else:
            _unknown_option(out, key)
    if start < end:
        out.control_start, out.control_end = start, end
    else:
        out.warn("bad_value", f"start: {start:g} is not before end: {end:g} (both ignored)")
    if out.kind not in CONTROL_KINDS:
        close = difflib.get_close_matches(out.kind, CONTROL_KINDS, n=1, cutoff=0.6)
        detail = f"{out.kind!r}, did you mean {close[0]!r}?" if close else repr(out.kind) if out.kind else "none given"
        out.role = "ignored"  # not a control the engine knows: no picture is asked for
        return ignored(raw, "unknown_kind", detail, warnings=out)
    return out


def _control(layer: LayerInput, p: ParsedLayer, width: int, height: int) -> ParsedLayer | Control:
    """A control layer's ``Control``, or why it is ignored (its kind kept, so a client sends its picture).

    Empty means no painted pixel in its alpha plane, when one is given (the plugin's, an .ora layer's,
    a JSON scene's image with an alpha channel): an empty layer is left out with a reason, it asks
    nothing of the engine (a white picture would steer towards "no lines")."""
    a, image = layer.alpha, layer.image
    for pixels, shape in ((a, (height, width)), (image, (height, width, 3))):
        if pixels is not None and pixels.shape != shape:
            size = "x".join(map(str, pixels.shape[1::-1]))
            return ignored(layer.name, "size_mismatch", f"{size}, the canvas is {width}x{height}", p)
    if a is not None and not a.any():
        return ignored(layer.name, "empty", warnings=p)
    if image is None:
        return ignored(layer.name, "no_image", warnings=p)
    return Control(p.kind, image, p.control_strength, p.control_start, p.control_end, name=layer.name)


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
    controls: list[Control] = []
    bg = Background(
        prompt=background_prompt, negative_prompt=negative_prompt, image=background_image, strength=background_strength
    )
    for layer in layers:
        p = ignored(layer.name, "group") if layer.group else parse_layer_name(layer.name, layer.visible)
        if p.role == "region":
            if layer.alpha is not None and layer.alpha.shape != (height, width):
                p = ignored(
                    layer.name,
                    "size_mismatch",
                    f"{'x'.join(map(str, layer.alpha.shape[::-1]))}, the canvas is {width}x{height}",
                    warnings=p,
                )
            elif layer.alpha is None or not layer.alpha.any():
                p = ignored(layer.name, "empty", warnings=p)
            else:
                regions.append(
                    Region(
                        prompt=p.prompt,
                        negative_prompt=p.negative_prompt or negative_prompt,
                        mask=layer.alpha,  # uint8 as it came: no float copy at canvas size
                        mask_strength=p.mask_strength,
                        mask_std=p.mask_std,
                        prompt_strength=p.prompt_strength,
                        name=layer.name,
                    )
                )
        elif p.role == "control":
            made = _control(layer, p, width, height)
            if isinstance(made, Control):
                controls.append(made)
            else:
                p = made
        elif p.role == "background":
            bg.prompt = p.prompt
            if p.negative_prompt:
                bg.negative_prompt = p.negative_prompt
            if p.background_strength is not None:
                bg.strength = p.background_strength
        parsed.append(p)
    scene = Scene(width, height, regions, bg, seed=seed, steps=steps, controls=controls, **scene_options)
    return scene, parsed

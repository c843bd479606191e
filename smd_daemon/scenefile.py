"""Reading layered scenes from files: OpenRaster (``.ora``) and JSON.

Both end as a :class:`~smd_daemon.engine.scene.Scene` built with the one
layer-name grammar (:mod:`smd_daemon.grammar`) for layered files, so a file
reads exactly as the same layers would in Krita. The formats and limits are
documented in ``docs/render.md``.

Everything that can be checked cheaply (declared sizes, steps, seed) is
checked before any pixels are decoded, and every problem is a
:class:`SceneError` with a one-line message.
"""

from __future__ import annotations

import io
import json
import logging
import math
import os
import xml.etree.ElementTree as ET
import zipfile
from dataclasses import dataclass, field

import numpy as np
from PIL import Image

from smd_daemon.engine.scene import MAX_SIDE, Background, Region, Scene, SceneError
from smd_daemon.grammar import (LayerInput, ParsedLayer, build_scene, ignored, joins_background_image,
                                parse_layer_name)

log = logging.getLogger(__name__)

# A layer may stick out of the canvas, but not absurdly: its decoded size is
# bounded before decoding (a small PNG can declare a huge image).
MAX_LAYER_SIDE = 2 * MAX_SIDE
MAX_LAYERS = 512
MAX_DEPTH = 16  # groups inside groups; each level below full opacity may need a canvas to composite
MAX_XML_BYTES = 4 << 20
MAX_JSON_BYTES = 4 << 20
# A PNG member larger than its raw RGBA pixels plus slack is not a plain layer.
MAX_MEMBER_BYTES = 4 * MAX_LAYER_SIDE * MAX_LAYER_SIDE + (1 << 20)


@dataclass
class LoadedScene:
    """A scene read from a file, with how each layer was read (for messages)."""

    scene: Scene
    layers: list[ParsedLayer] = field(default_factory=list)  # bottom to top


@dataclass
class Overrides:
    """Command-line settings; ``None`` keeps the file's value (or the default)."""

    width: int | None = None
    height: int | None = None
    seed: int | None = None
    steps: int | None = None
    bootstrap_steps: int | None = None
    background_prompt: str | None = None
    negative_prompt: str | None = None
    background_strength: float | None = None
    region_mode: str | None = None


def load_scene(path: str, overrides: Overrides | None = None) -> LoadedScene:
    """Read ``path`` (``.ora`` or ``.json``) into a validated scene."""
    overrides = overrides or Overrides()
    ext = os.path.splitext(path)[1].lower()
    if not os.path.isfile(path):
        raise SceneError(f"{path}: no such file")
    if ext == ".ora":
        loaded = read_ora(path, overrides)
    elif ext == ".json":
        loaded = read_json(path, overrides)
    else:
        raise SceneError(f"{path}: unknown scene type {ext or '(no extension)'!r}; use an .ora or .json file")
    loaded.scene.validate()  # again: the background image has been added since
    return loaded


def _check_scene(path: str, scene: Scene, parsed: list[ParsedLayer]) -> None:
    """Before the background image is decoded: the scene must be drawable without it."""
    if not scene.regions:
        raise SceneError(f"{path}: no region layers; {_explain_no_regions(parsed)}")
    scene.validate()


def output_size(doc_w: int, doc_h: int, width: int | None, height: int | None) -> tuple[int, int]:
    """The output size: as asked, else the document's (multiples of 8, keeping the aspect ratio
    when only one side is given)."""
    if width and height:
        return width, height
    if width:
        return width, _round8(width * doc_h / doc_w)
    if height:
        return _round8(height * doc_w / doc_h), height
    return _round8(doc_w), _round8(doc_h)


def _round8(v: float) -> int:
    return max(8, int(math.floor(v / 8 + 0.5)) * 8)  # half up, not to even


def _check_cheap(width: int, height: int, o: Overrides, **file_values) -> dict:
    """Validate size, seed and steps on an empty scene before decoding any pixels."""
    opts = {k: v for k, v in file_values.items() if v is not None}
    for key in ("seed", "steps", "bootstrap_steps", "region_mode"):
        if getattr(o, key) is not None:
            opts[key] = getattr(o, key)
    Scene(width=width, height=height, **opts).validate()
    return opts


# ---------------------------------------------------------------- OpenRaster


@dataclass
class OraLayer:
    """A ``<layer>`` or a ``<stack>`` (group) of stack.xml, with what its groups do to it."""

    name: str
    src: str | None
    x: int
    y: int
    visible: bool  # itself and every enclosing group
    opacity: float  # its own opacity times every enclosing group's
    children: list[OraLayer] | None = None  # a group's layers, top first; None for a layer
    hidden_by: str = ""  # the enclosing group that hides it, if any
    own_opacity: float = 1.0

    @property
    def group(self) -> bool:
        return self.children is not None


def read_ora(path: str, o: Overrides) -> LoadedScene:
    try:
        zf = zipfile.ZipFile(path)
    except (zipfile.BadZipFile, OSError) as e:
        raise SceneError(f"{path}: not an OpenRaster file (not a zip archive: {e})") from None
    with zf:
        doc_w, doc_h, tree = _read_stack(zf, path)
        width, height = output_size(doc_w, doc_h, o.width, o.height)
        opts = _check_cheap(width, height, o)

        # Each layer as the artist sees it: a region's mask is its alpha times its own opacity and
        # every enclosing group's (a hidden group hides it). A group itself is never read.
        layers = _bottom_first(tree)
        inputs = []
        for layer in layers:
            alpha = None
            if not layer.group and parse_layer_name(layer.name, layer.visible).role == "region":
                alpha = _seen_alpha(_layer_rgba(zf, layer, doc_w, doc_h, path)[..., 3], layer.opacity)
                alpha = _resize_alpha(alpha, width, height)  # decode only what is needed
            inputs.append(LayerInput(layer.name, alpha, layer.visible, group=layer.group))
        scene, parsed = build_scene(inputs, width, height, negative_prompt=o.negative_prompt or "", **opts)
        for layer, p in zip(layers, parsed):
            if p.reason_code == "hidden" and layer.hidden_by:
                p.reason += f" (the group {layer.hidden_by!r} is hidden)"
        # The command line wins over the file, a `bg:` layer included.
        if o.background_prompt is not None:
            scene.background.prompt = o.background_prompt
        if o.background_strength is not None:
            scene.background.strength = o.background_strength
        _check_scene(path, scene, parsed)
        if scene.background.strength > 0:
            joins = {id(lay) for lay, p in zip(layers, parsed) if joins_background_image(p)}
            scene.background.image = _background_image(zf, tree, joins, doc_w, doc_h, width, height, path)
    return LoadedScene(scene, parsed)


def _bottom_first(tree: list[OraLayer]) -> list[OraLayer]:
    """Every layer and group, bottom to top as the grammar reads them; a group just above its layers."""
    out = []
    for node in reversed(tree):
        if node.group:
            out += _bottom_first(node.children)
        out.append(node)
    return out


def _seen_alpha(alpha: np.ndarray, opacity: float) -> np.ndarray:
    """Alpha times opacity, rounded half up: a table over the 256 alpha values in double precision,
    which a reader without numpy (the plugin) computes exactly the same way."""
    if opacity >= 1:
        return alpha
    table = np.array([math.floor(a * opacity + 0.5) for a in range(256)], np.uint8)
    return table[alpha]


def _read_stack(zf: zipfile.ZipFile, path: str) -> tuple[int, int, list[OraLayer]]:
    try:
        info = zf.getinfo("stack.xml")
    except KeyError:
        hint = ""
        if "maindoc.xml" in zf.namelist():
            hint = "; this is a Krita document (.kra): export it with File > Export as OpenRaster (.ora)"
        raise SceneError(f"{path}: not an OpenRaster file (stack.xml is missing){hint}") from None
    if info.file_size > MAX_XML_BYTES:
        raise SceneError(f"{path}: stack.xml is {info.file_size} bytes, at most {MAX_XML_BYTES} allowed")
    try:
        root = ET.fromstring(zf.read(info))
    except ET.ParseError as e:
        raise SceneError(f"{path}: stack.xml is not valid XML ({e})") from None
    except (zipfile.BadZipFile, OSError, ValueError) as e:
        raise SceneError(f"{path}: stack.xml cannot be read ({e})") from None
    if root.tag != "image":
        raise SceneError(f"{path}: stack.xml has <{root.tag}> at the top, expected <image>")
    doc_w = _int_attr(root, "w", path, "image")
    doc_h = _int_attr(root, "h", path, "image")
    if not (1 <= doc_w <= MAX_SIDE and 1 <= doc_h <= MAX_SIDE):
        raise SceneError(f"{path}: the document is {doc_w}x{doc_h} pixels; at most {MAX_SIDE} per side is allowed")
    stack = root.find("stack")
    if stack is None:
        raise SceneError(f"{path}: stack.xml has no <stack>")
    # The top <stack> is the image itself (Krita names it "root"), not a group.
    count = [0]
    tree = [_node(el, 0, 0, True, "", 1.0, path, count, 1) for el in stack if el.tag in ("stack", "layer")]
    return doc_w, doc_h, tree


def _node(el: ET.Element, dx: int, dy: int, shown: bool, hidden_by: str, opacity: float, path: str,
          count: list[int], depth: int) -> OraLayer:
    """One element of stack.xml with its groups' offset, visibility and opacity applied."""
    count[0] += 1
    if count[0] > MAX_LAYERS:
        raise SceneError(f"{path}: more than {MAX_LAYERS} layers and groups")
    if depth > MAX_DEPTH:
        raise SceneError(f"{path}: groups are nested more than {MAX_DEPTH} deep")
    name = el.get("name", "")
    own = _opacity(el, path)
    x, y = dx + _int_attr(el, "x", path, el.tag, 0), dy + _int_attr(el, "y", path, el.tag, 0)
    visible = shown and el.get("visibility", "visible") != "hidden"
    node = OraLayer(name, el.get("src"), x, y, visible, opacity * own, own_opacity=own,
                    hidden_by=hidden_by if not shown else "")
    if el.tag == "stack":
        inner_hidden_by = hidden_by if not shown else ("" if visible else name)
        node.children = [_node(c, x, y, visible, inner_hidden_by, node.opacity, path, count, depth + 1)
                         for c in el if c.tag in ("stack", "layer")]
    return node


def _opacity(el: ET.Element, path: str) -> float:
    raw = el.get("opacity", "1")
    try:
        opacity = float(raw)
    except ValueError:
        raise SceneError(f"{path}: {el.tag} {el.get('name', '')!r} has opacity {raw!r}") from None
    return min(max(opacity, 0.0), 1.0) if math.isfinite(opacity) else 1.0


def _int_attr(el: ET.Element, key: str, path: str, what: str, default: int | None = None) -> int:
    raw = el.get(key)
    if raw is None:
        if default is None:
            raise SceneError(f"{path}: <{what}> in stack.xml has no {key!r}")
        return default
    try:
        v = float(raw)
        if not math.isfinite(v) or abs(v) > 1e9:
            raise ValueError
        return int(round(v))
    except ValueError:
        raise SceneError(f"{path}: <{what}> in stack.xml has {key}={raw!r}, expected a whole number") from None


def _layer_rgba(zf: zipfile.ZipFile, layer: OraLayer, doc_w: int, doc_h: int, path: str) -> np.ndarray:
    """The layer's pixels placed on the document canvas (cropped where it sticks out)."""
    what = f"{path}: layer {layer.name!r}"
    if not layer.src:
        raise SceneError(f"{what} has no image (src)")
    try:
        info = zf.getinfo(layer.src)
    except KeyError:
        raise SceneError(f"{what}: {layer.src!r} is missing from the file") from None
    if info.file_size > MAX_MEMBER_BYTES:
        raise SceneError(f"{what}: {layer.src!r} is {info.file_size} bytes, too large for a layer")
    try:
        data = zf.read(info)
    except (zipfile.BadZipFile, OSError, ValueError) as e:
        raise SceneError(f"{what}: {layer.src!r} cannot be read ({e})") from None
    im = _decode(data, ("PNG",), f"{what}: {layer.src!r}", MAX_LAYER_SIDE)
    canvas = Image.new("RGBA", (doc_w, doc_h), (0, 0, 0, 0))
    canvas.paste(im.convert("RGBA"), (layer.x, layer.y))
    return np.asarray(canvas)


def _decode(data: bytes, formats: tuple[str, ...], what: str, max_side: int) -> Image.Image:
    """Decode an image, refusing absurd declared sizes before decoding the pixels."""
    try:
        im = Image.open(io.BytesIO(data), formats=formats)
        w, h = im.size
        if w > max_side or h > max_side:
            raise SceneError(f"{what} is {w}x{h} pixels; at most {max_side} per side is allowed")
        im.load()
    except SceneError:
        raise
    except Image.UnidentifiedImageError:
        raise SceneError(f"{what} is not a {'/'.join(formats)} image, or is damaged") from None
    except Image.DecompressionBombError as e:
        raise SceneError(f"{what}: {e}") from None
    except Exception as e:  # Pillow raises many types for corrupt data (OSError, SyntaxError, zlib.error, ...)
        raise SceneError(f"{what} does not decode ({type(e).__name__}: {e})") from None
    return im


def _resize_alpha(alpha: np.ndarray, width: int, height: int) -> np.ndarray:
    """The alpha at output size, as a writable array of its own (the engine hands masks to torch)."""
    if alpha.shape == (height, width):
        return alpha if alpha.flags.writeable and alpha.flags.c_contiguous else np.array(alpha)
    return np.array(Image.fromarray(alpha, "L").resize((width, height), Image.Resampling.BILINEAR))


def _background_image(zf, tree: list[OraLayer], joins: set, doc_w, doc_h, width, height, path) -> np.ndarray:
    """The picture of the layers that join the background image, as the artist sees it, over white."""
    out = Image.new("RGBA", (doc_w, doc_h), (255, 255, 255, 255))
    _composite_into(out, zf, tree, joins, path)
    out = out.convert("RGB")
    if out.size != (width, height):
        out = out.resize((width, height), Image.Resampling.LANCZOS)
    return np.array(out)  # a writable copy: the engine hands it to torch


def _composite_into(canvas: Image.Image, zf, nodes: list[OraLayer], joins: set, path: str) -> None:
    """Source-over composite of ``nodes`` (top first) onto ``canvas``, each at its own opacity.

    A group below full opacity is composited as Krita does: its layers together first, then
    the result at the group's opacity (a 50 % group is half there, however its layers overlap).
    At full opacity that equals compositing its layers directly, which needs no extra canvas.
    """
    doc_w, doc_h = canvas.size
    for node in reversed(nodes):
        if not node.visible or not _joins(node, joins):
            continue
        if node.group and node.own_opacity >= 1:
            _composite_into(canvas, zf, node.children, joins, path)
            continue
        if node.group:
            inner = Image.new("RGBA", (doc_w, doc_h), (0, 0, 0, 0))
            _composite_into(inner, zf, node.children, joins, path)
            rgba = np.array(inner)
        else:
            rgba = _layer_rgba(zf, node, doc_w, doc_h, path)
        if node.own_opacity < 1:
            rgba = rgba.copy() if not rgba.flags.writeable else rgba
            rgba[..., 3] = _seen_alpha(rgba[..., 3], node.own_opacity)
        canvas.alpha_composite(Image.fromarray(rgba, "RGBA"))


def _joins(node: OraLayer, joins: set) -> bool:
    """Whether the layer, or any layer of the group, joins the background image."""
    return any(_joins(c, joins) for c in node.children) if node.group else id(node) in joins


# ---------------------------------------------------------------- JSON


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
    opts = _check_cheap(width, height, o, seed=where.get(doc, "seed", int, None),
                        steps=where.get(doc, "steps", int, None),
                        bootstrap_steps=where.get(doc, "bootstrap_steps", int, None),
                        mask_mode=where.get(doc, "mask_mode", str, None),
                        guidance_scale=where.get(doc, "guidance_scale", float, None),
                        region_mode=where.get(doc, "region_mode", str, None))
    negative = o.negative_prompt if o.negative_prompt is not None else where.get(doc, "negative_prompt", str, "")

    bg_doc = where.get(doc, "background", dict, {})
    bg = Background(
        prompt=o.background_prompt if o.background_prompt is not None else where.get(bg_doc, "prompt", str, "",
                                                                                      "background"),
        negative_prompt=where.get(bg_doc, "negative_prompt", str, negative, "background"),
        strength=(o.background_strength if o.background_strength is not None
                  else where.get(bg_doc, "strength", float, 0.0, "background")),
    )
    image_path = where.get(bg_doc, "image", str, None, "background")

    entries = where.get(doc, "regions", list)
    if len(entries) > MAX_LAYERS:
        raise SceneError(f"{path}: more than {MAX_LAYERS} regions")
    regions, parsed = [], []
    for i, entry in enumerate(entries):
        label = f"region {i + 1}"
        if not isinstance(entry, dict):
            raise SceneError(f"{path}: {label} must be an object {{\"prompt\": ..., \"mask\": ...}}")
        base = _json_region_base(where, entry, label)
        mask_path = where.get(entry, "mask", str, None, label)
        if mask_path is None:
            raise SceneError(f"{path}: {label} has no \"mask\" (a PNG path relative to the JSON file)")
        mask = _json_mask(path, mask_path, doc_w, doc_h, width, height, label)
        # Fields given in the JSON win over the defaults and over options in a layer name.
        p = ParsedLayer(
            name=where.get(entry, "name", str, base.name, label), role="region", prompt=base.prompt,
            negative_prompt=where.get(entry, "negative_prompt", str, base.negative_prompt or negative, label),
            mask_strength=where.get(entry, "strength", float, base.mask_strength, label),
            mask_std=where.get(entry, "blur", float, base.mask_std, label),
            prompt_strength=where.get(entry, "prompt_strength", float, base.prompt_strength, label),
            warnings=base.warnings, warning_codes=base.warning_codes,
        )
        if not mask.any():
            p = ignored(p.name, "empty", "the mask is empty", warnings=p)
        else:
            regions.append(Region(prompt=p.prompt, mask=mask.astype(np.float32) / 255.0,
                                  negative_prompt=p.negative_prompt, mask_strength=p.mask_strength,
                                  mask_std=p.mask_std, prompt_strength=p.prompt_strength, name=p.name))
        parsed.append(p)
    scene = Scene(width=width, height=height, regions=regions, background=bg, **opts)
    _check_scene(path, scene, parsed)
    if image_path is not None and bg.strength > 0:
        im = _decode(_read_file(path, image_path, "background image"), ("PNG", "JPEG", "WEBP"),
                     f"{path}: background image {image_path!r}", MAX_SIDE)
        bg.image = np.array(im.convert("RGB").resize((width, height), Image.Resampling.LANCZOS))
    return LoadedScene(scene, parsed)


def _json_region_base(where: "_Where", entry: dict, label: str) -> ParsedLayer:
    """A region's prompt: literal text (``prompt``), or a layer name read by the grammar (``layer``)."""
    prompt = where.get(entry, "prompt", str, None, label)
    layer = where.get(entry, "layer", str, None, label)
    if prompt is not None and layer is not None:
        raise SceneError(f"{where.path}: {label} gives both \"prompt\" and \"layer\"; give one")
    if layer is not None:
        p = parse_layer_name(layer)
        if p.role != "region":
            why = p.reason or "a background layer: use the \"background\" field"
            raise SceneError(f"{where.path}: {label}: layer name {layer!r} is not a region ({why})")
        return p
    if prompt is None or not prompt.strip():
        raise SceneError(f"{where.path}: {label} has no prompt")
    return ParsedLayer(name=prompt, role="region", prompt=prompt)


class _Where:
    """Typed field access with one-line errors that say where the problem is."""

    _MISSING = object()

    def __init__(self, path: str):
        self.path = path

    def get(self, obj: dict, key: str, typ: type, default=_MISSING, where: str = ""):
        label = f"{where} " if where else ""
        if key not in obj or obj[key] is None:
            if default is self._MISSING:
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
    im = _decode(_read_file(json_path, rel, f"{label} mask"), ("PNG",), what, MAX_SIDE)
    if im.size != (doc_w, doc_h):
        raise SceneError(f"{what} is {im.size[0]}x{im.size[1]}, the scene is {doc_w}x{doc_h}")
    has_alpha = "A" in im.getbands() or "transparency" in im.info
    if has_alpha:
        alpha = np.asarray(im.convert("RGBA").getchannel("A"))
    elif im.mode.startswith("I"):  # 16-bit grey: Pillow's convert("L") would clip, not scale
        alpha = np.round(np.asarray(im).astype(np.float64) / 257).clip(0, 255).astype(np.uint8)
    else:
        alpha = np.asarray(im.convert("L"))
    return _resize_alpha(alpha, width, height)


def _explain_no_regions(parsed: list[ParsedLayer]) -> str:
    if not parsed:
        return "the file has no layers"
    shown = ", ".join(f"{p.name!r} ({p.reason or p.role})" for p in parsed[:6])
    more = f" and {len(parsed) - 6} more" if len(parsed) > 6 else ""
    return f"name a layer with its prompt, e.g. 'a red fox' (read: {shown}{more})"

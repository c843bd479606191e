"""OpenRaster files (``.ora``, as Krita exports them): the layer stack, each
layer read as the artist sees it, and the picture of the layers that join
the background image."""

from __future__ import annotations

import math
import xml.etree.ElementTree as ET
import zipfile
from dataclasses import dataclass

import numpy as np

from smd_daemon.engine.scene import MAX_SIDE, SceneError
from smd_daemon.grammar import LayerInput, build_scene, parse_layer_name

from .common import (
    MAX_LAYER_SIDE,
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
from .compositing import krita_opacity, merge_opacity, over, over_white, seen_alpha

MAX_DEPTH = 16  # groups inside groups; each level may need a canvas to composite
MAX_XML_BYTES = 4 << 20


@dataclass
class OraLayer:
    """A ``<layer>`` or a ``<stack>`` (group) of stack.xml, with what its groups do to it."""

    name: str
    src: str | None
    x: int
    y: int
    visible: bool  # itself and every enclosing group
    # In 255ths as Krita holds them: its own (merged with any pass-through groups' around it), then each
    # enclosing isolated group's, innermost first.
    opacities: tuple[int, ...]
    children: list[OraLayer] | None = None  # a group's layers, top first; None for a layer
    hidden_by: str = ""  # the enclosing group that hides it, if any
    # A group composited on its own, then onto what is below (isolation="isolate", Krita's normal group);
    # otherwise a pass-through group: its layers go straight onto what is below it.
    isolated: bool = True

    @property
    def own_opacity(self) -> int:
        return self.opacities[0]

    @property
    def group(self) -> bool:
        return self.children is not None


def read_ora(path: str, o: Overrides) -> LoadedScene:
    try:
        zf = zipfile.ZipFile(path)
    except (zipfile.BadZipFile, OSError) as e:
        raise SceneError(f"{path}: not an OpenRaster file (not a zip archive: {e})") from None
    with zf:
        doc_w, doc_h, tree = read_stack(zf, path)
        width, height = output_size(doc_w, doc_h, o.width, o.height)
        opts = check_cheap(width, height, o)

        # Each layer as the artist sees it: a region's mask is its alpha through its own opacity and
        # every enclosing group's (a hidden group hides it). A group itself is never read.
        layers = bottom_first(tree)
        inputs = []
        # A control layer's picture is its pixels over white paper, at output size (docs/render.md).
        for layer in layers:
            alpha = image = None
            role = "group" if layer.group else parse_layer_name(layer.name, layer.visible).role
            if role in ("region", "control"):  # decode only what is needed
                pixels = _layer_rgba(zf, layer, doc_w, doc_h, path)
                alpha = resize_alpha(seen_alpha(pixels[..., 3], layer.opacities), width, height)
                if role == "control":
                    image = resize_rgb(over_white(pixels, layer.opacities), width, height)
            inputs.append(LayerInput(layer.name, alpha, layer.visible, group=layer.group, image=image))
        scene, parsed = build_scene(inputs, width, height, negative_prompt=o.negative_prompt or "", **opts)
        for layer, p in zip(layers, parsed):
            if p.reason_code == "hidden" and layer.hidden_by:
                p.reason += f" (the group {layer.hidden_by!r} is hidden)"
        # The command line wins over the file, a `bg:` layer included.
        if o.background_prompt is not None:
            scene.background.prompt = o.background_prompt
        if o.background_strength is not None:
            scene.background.strength = o.background_strength
        check_scene(path, scene, parsed)
        if scene.background.strength > 0:
            joins = {id(lay) for lay, p in zip(layers, parsed) if p.joins_background}
            scene.background.image = background_image(zf, tree, joins, doc_w, doc_h, width, height, path)
    return LoadedScene(scene, parsed)


def bottom_first(tree: list[OraLayer]) -> list[OraLayer]:
    """Every layer and group, bottom to top as the grammar reads them; a group just above its layers."""
    out = []
    for node in reversed(tree):
        if node.children is not None:  # a group
            out += bottom_first(node.children)
        out.append(node)
    return out


def read_stack(zf: zipfile.ZipFile, path: str) -> tuple[int, int, list[OraLayer]]:
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
    tree = [_node(el, _Enclosing(), path, count, 1) for el in stack if el.tag in ("stack", "layer")]
    return doc_w, doc_h, tree


@dataclass(frozen=True)
class _Enclosing:
    """What the groups around an element of stack.xml do to it."""

    x: int = 0
    y: int = 0
    shown: bool = True
    hidden_by: str = ""
    opacities: tuple[int, ...] = ()  # each isolated group's, innermost first (see OraLayer.opacities)
    passing: int = 255  # the opacity of the pass-through group around it, if any, as Krita merges it


def _node(el: ET.Element, around: _Enclosing, path: str, count: list[int], depth: int) -> OraLayer:
    """One element of stack.xml with its groups' offset, visibility and opacity applied."""
    count[0] += 1
    if count[0] > MAX_LAYERS:
        raise SceneError(f"{path}: more than {MAX_LAYERS} layers and groups")
    if depth > MAX_DEPTH:
        raise SceneError(f"{path}: groups are nested more than {MAX_DEPTH} deep")
    name = el.get("name", "")
    x, y = around.x + _int_attr(el, "x", path, el.tag, 0), around.y + _int_attr(el, "y", path, el.tag, 0)
    visible = around.shown and el.get("visibility", "visible") != "hidden"
    seen_own = merge_opacity(_opacity(el, path), around.passing)  # a pass-through group's goes to each layer
    # Krita writes isolation="isolate" for its normal groups and reads anything else as pass-through.
    node = OraLayer(
        name,
        el.get("src"),
        x,
        y,
        visible,
        (seen_own, *around.opacities),
        hidden_by=around.hidden_by if not around.shown else "",
        isolated=el.get("isolation") == "isolate",
    )
    if el.tag == "stack":
        hidden_by = around.hidden_by if not around.shown else ("" if visible else name)
        if node.isolated:
            inner = _Enclosing(x, y, visible, hidden_by, node.opacities)
        else:
            inner = _Enclosing(x, y, visible, hidden_by, around.opacities, seen_own)
        node.children = [_node(c, inner, path, count, depth + 1) for c in el if c.tag in ("stack", "layer")]
    return node


def _opacity(el: ET.Element, path: str) -> int:
    raw = el.get("opacity", "1")
    try:
        return krita_opacity(float(raw))
    except ValueError:
        raise SceneError(f"{path}: {el.tag} {el.get('name', '')!r} has opacity {raw!r}") from None


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


def _layer_piece(zf: zipfile.ZipFile, layer: OraLayer, doc_w: int, doc_h: int, path: str):
    """The part of the layer's pixels on the document canvas, as RGBA, with its place (x, y)."""
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
    im = decode(data, ("PNG",), f"{what}: {layer.src!r}", MAX_LAYER_SIDE)
    x0, y0 = max(layer.x, 0), max(layer.y, 0)
    x1, y1 = min(layer.x + im.width, doc_w), min(layer.y + im.height, doc_h)
    if x1 <= x0 or y1 <= y0:
        return np.zeros((0, 0, 4), np.uint8), 0, 0
    im = im.crop((x0 - layer.x, y0 - layer.y, x1 - layer.x, y1 - layer.y))
    return np.asarray(im.convert("RGBA")), x0, y0


def _layer_rgba(zf: zipfile.ZipFile, layer: OraLayer, doc_w: int, doc_h: int, path: str) -> np.ndarray:
    """The layer's pixels placed on the document canvas (cropped where it sticks out)."""
    piece, x, y = _layer_piece(zf, layer, doc_w, doc_h, path)
    canvas = np.zeros((doc_h, doc_w, 4), np.uint8)
    canvas[y : y + piece.shape[0], x : x + piece.shape[1]] = piece
    return canvas


def background_image(zf, tree: list[OraLayer], joins: set, doc_w, doc_h, width, height, path) -> np.ndarray:
    """The picture of the layers that join the background image, as the artist sees it, over white."""
    canvas = np.full((doc_h, doc_w, 4), 255, np.uint8)
    _composite_into(canvas, zf, tree, joins, path)
    return resize_rgb(canvas[..., :3], width, height)


def _composite_into(canvas: np.ndarray, zf, nodes: list[OraLayer], joins: set, path: str) -> None:
    """Source-over composite of ``nodes`` (top first) onto ``canvas``, each at its own opacity.

    A group is composited as Krita does: its layers together first, then the result at the
    group's opacity (a 50 % group is half there, however its layers overlap). Even at full
    opacity this rounds differently from compositing its layers directly (by 2/255, measured).
    A pass-through group's layers go straight onto the canvas, each carrying the group's opacity.
    """
    doc_h, doc_w = canvas.shape[:2]
    for node in reversed(nodes):
        if not node.visible or not _joins(node, joins):
            continue
        if node.children is not None and not node.isolated:
            _composite_into(canvas, zf, node.children, joins, path)
        elif node.children is not None:
            inner = np.zeros_like(canvas)
            _composite_into(inner, zf, node.children, joins, path)
            over(canvas, inner, node.own_opacity)
        else:
            piece, x, y = _layer_piece(zf, node, doc_w, doc_h, path)
            over(canvas[y : y + piece.shape[0], x : x + piece.shape[1]], piece, node.own_opacity)


def _joins(node: OraLayer, joins: set) -> bool:
    """Whether the layer, or any layer of the group, joins the background image."""
    return any(_joins(c, joins) for c in node.children) if node.children is not None else id(node) in joins

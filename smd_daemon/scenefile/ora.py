"""OpenRaster files (``.ora``, as Krita exports them): the layer stack, each
layer read as the artist sees it, and the picture of the layers that join
the background image."""

from __future__ import annotations

import math
import xml.etree.ElementTree as ET
import zipfile
from dataclasses import dataclass

import numpy as np
from PIL import Image

from smd_daemon.engine.scene import MAX_SIDE, SceneError
from smd_daemon.grammar import LayerInput, build_scene, joins_background_image, parse_layer_name

from .common import (MAX_LAYER_SIDE, MAX_LAYERS, MAX_MEMBER_BYTES, LoadedScene, Overrides, check_cheap,
                     check_scene, decode, output_size, resize_alpha)

MAX_DEPTH = 16  # groups inside groups; each level below full opacity may need a canvas to composite
MAX_XML_BYTES = 4 << 20


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
        doc_w, doc_h, tree = read_stack(zf, path)
        width, height = output_size(doc_w, doc_h, o.width, o.height)
        opts = check_cheap(width, height, o)

        # Each layer as the artist sees it: a region's mask is its alpha times its own opacity and
        # every enclosing group's (a hidden group hides it). A group itself is never read.
        layers = bottom_first(tree)
        inputs = []
        for layer in layers:
            alpha = None
            if not layer.group and parse_layer_name(layer.name, layer.visible).role == "region":
                alpha = seen_alpha(_layer_rgba(zf, layer, doc_w, doc_h, path)[..., 3], layer.opacity)
                alpha = resize_alpha(alpha, width, height)  # decode only what is needed
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
        check_scene(path, scene, parsed)
        if scene.background.strength > 0:
            joins = {id(lay) for lay, p in zip(layers, parsed) if joins_background_image(p)}
            scene.background.image = background_image(zf, tree, joins, doc_w, doc_h, width, height, path)
    return LoadedScene(scene, parsed)


def bottom_first(tree: list[OraLayer]) -> list[OraLayer]:
    """Every layer and group, bottom to top as the grammar reads them; a group just above its layers."""
    out = []
    for node in reversed(tree):
        if node.group:
            out += bottom_first(node.children)
        out.append(node)
    return out


def seen_alpha(alpha: np.ndarray, opacity: float) -> np.ndarray:
    """Alpha times opacity, rounded half up: a table over the 256 alpha values in double precision,
    which a reader without numpy (the plugin) computes exactly the same way."""
    if opacity >= 1:
        return alpha
    table = np.array([math.floor(a * opacity + 0.5) for a in range(256)], np.uint8)
    return table[alpha]


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
    im = decode(data, ("PNG",), f"{what}: {layer.src!r}", MAX_LAYER_SIDE)
    canvas = Image.new("RGBA", (doc_w, doc_h), (0, 0, 0, 0))
    canvas.paste(im.convert("RGBA"), (layer.x, layer.y))
    return np.asarray(canvas)


def background_image(zf, tree: list[OraLayer], joins: set, doc_w, doc_h, width, height, path) -> np.ndarray:
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
            rgba[..., 3] = seen_alpha(rgba[..., 3], node.own_opacity)
        canvas.alpha_composite(Image.fromarray(rgba, "RGBA"))


def _joins(node: OraLayer, joins: set) -> bool:
    """Whether the layer, or any layer of the group, joins the background image."""
    return any(_joins(c, joins) for c in node.children) if node.group else id(node) in joins

"""Documents, their layers and settings, as the plugin reads them.

Facts this relies on (Krita 5.1/5.2): ``childNodes()`` lists bottom to top
and includes a layer's masks; a layer's ``projectionPixelData`` has its own
masks applied but not its opacity; group opacity applies to everything
inside the group; ``Node.thumbnail`` is cached until the pixels change.
"""

from __future__ import annotations

import json
import zlib
from dataclasses import dataclass, field

from krita import Krita
from PyQt5.QtCore import QByteArray, QTimer

PREVIEW_NAME = "SMD Preview"
RESULT_NAME = "SMD Result"
ANNOTATION = "smd-live"  # per-document settings and the plugin's own layers, stored inside the .kra
# Inside the annotation: the unique ids of the layers the plugin made and may write into. A layer is
# the plugin's by its id, never by its name: an artist's layer called "SMD Preview" is not touched.
OWN_LAYERS = "own_layers"
FINGERPRINT_SIZE = 96  # thumbnail side used only to notice pixel changes cheaply
MASK_KINDS = ("transparencymask", "filtermask", "transformmask", "selectionmask", "colorizemask")

# bytes per pixel and offset of the (most significant byte of the) alpha channel
ALPHA_LAYOUT = {
    ("RGBA", "U8"): (4, 3),
    ("RGBA", "U16"): (8, 7),
    ("GRAYA", "U8"): (2, 1),
    ("GRAYA", "U16"): (4, 3),
    ("CMYKA", "U8"): (5, 4),
    ("CMYKA", "U16"): (10, 9),
    ("LABA", "U8"): (4, 3),
    ("LABA", "U16"): (8, 7),
    ("XYZA", "U8"): (4, 3),
    ("XYZA", "U16"): (8, 7),
    ("YCbCrA", "U8"): (4, 3),
    ("YCbCrA", "U16"): (8, 7),
}
_WRITABLE = {("RGBA", "U8"), ("RGBA", "U16")}


class Unsupported(Exception):
    """The document cannot be used as it is; the message says what to do."""


@dataclass
class Layer:
    node: object
    name: str
    uid: str
    kind: str
    visible: bool  # visible itself and all its parents
    locked: bool
    depth: int
    # How the artist sees it inside its groups: in 255ths as Krita holds them,
    # its own opacity (times any pass-through groups' around it, as Krita
    # gives those to each layer in them), then each enclosing isolated
    # group's (their product is ``factor``); and the groups' transparency masks.
    opacities: tuple = (255,)
    pass_through: bool = False  # a group whose layers composite straight onto what is below it
    group_masks: list = field(default_factory=list)
    own_masks: list = field(default_factory=list)  # already applied in its projection
    parent: str = ""  # the enclosing group's uid ("" at the top)

    @property
    def is_group(self) -> bool:
        return self.kind == "grouplayer"

    @property
    def is_filter(self) -> bool:
        """A filter layer: its pixels are the layers below it, filtered, never a picture of its own."""
        return self.kind == "filterlayer"

    @property
    def is_sent(self) -> bool:
        """Sent to the daemon as a layer: groups and filter layers are listed by the plugin itself."""
        return not (self.is_group or self.is_filter)

    @property
    def factor(self) -> float:
        """The product of ``opacities``, 0..1."""
        factor = 1.0
        for n in self.opacities:
            factor *= n / 255.0
        return factor


def app():
    return Krita.instance()


def active_document():
    return app().activeDocument()


def documents() -> list:
    return list(app().documents())


def is_open(doc) -> bool:
    """Whether ``doc`` is still open: calling a closed document crashes Krita 5.1."""
    return any(d == doc for d in app().documents())


def read_setting(group: str, key: str, default: str = "") -> str:
    """A value from Krita's own config file (kritarc)."""
    return app().readSetting(group, key, default)


def write_setting(group: str, key: str, value: str) -> None:
    app().writeSetting(group, key, value)


def canvas_size(doc) -> tuple[int, int]:
    return doc.width(), doc.height()


def color_problem(doc, writing: bool = False) -> str:
    """Why this document's pixels cannot be used ('' when they can)."""
    key = (doc.colorModel(), doc.colorDepth())
    if key not in ALPHA_LAYOUT:
        return (
            f"{key[0]} {key[1]} documents are not supported: use Image > Convert Image Color Space "
            "to RGB/Alpha 8-bit or 16-bit integer"
        )
    if writing and key not in _WRITABLE:
        return (
            f"the live preview needs an RGB document (8 or 16-bit integer), not {key[0]} {key[1]}: "
            "use Image > Convert Image Color Space"
        )
    return ""


def layers(doc) -> list[Layer]:
    """All layers bottom to top; a group comes right before its children.

    The plugin's preview layer is left out (it is never input), and so are
    masks: a layer's own masks are part of how it is read, a group's
    transparency masks are applied to everything inside it.
    """
    out: list[Layer] = []
    preview = own_layer_uid(doc, "preview")

    def walk(parent, depth, parent_visible, outer, passing, parent_masks, parent_uid):
        # outer: each enclosing isolated group's opacity; passing: the pass-through group's around it
        children = parent.childNodes()
        for node in children:
            kind = node.type()
            if kind in MASK_KINDS:
                continue
            uid = node.uniqueId().toString()
            if uid == preview:
                continue
            name = node.name()
            visible = parent_visible and node.visible()
            seen = node.opacity() * passing // 255  # Krita cuts the product down (measured)
            opacities = (seen, *outer)
            own = [m for m in node.childNodes() if m.type() in MASK_KINDS]
            layer = Layer(
                node,
                name,
                uid,
                kind,
                visible,
                node.locked(),
                depth,
                opacities=opacities,
                group_masks=list(parent_masks),
                own_masks=own,
                parent=parent_uid,
                pass_through=kind == "grouplayer" and node.passThroughMode(),
            )
            out.append(layer)
            if kind == "grouplayer":
                masks = [m for m in own if m.type() == "transparencymask" and m.visible()]
                if layer.pass_through:
                    walk(node, depth + 1, visible, outer, seen, parent_masks + masks, uid)
                else:
                    walk(node, depth + 1, visible, opacities, 255, parent_masks + masks, uid)

    walk(doc.rootNode(), 0, True, (), 255, [], "")
    return out


def _thumb_crc(node) -> int:
    thumb = node.thumbnail(FINGERPRINT_SIZE, FINGERPRINT_SIZE)
    ptr = thumb.constBits()
    if ptr is None:
        return 0
    ptr.setsize(thumb.bytesPerLine() * thumb.height())
    return zlib.crc32(bytes(ptr))


def _bounds(node) -> tuple:
    b = node.bounds()
    return b.x(), b.y(), b.width(), b.height()


def fingerprint(layer: Layer) -> tuple:
    """Changes whenever the layer's name, visibility, opacity, place, pixels or masks change.

    Krita caches thumbnails until the pixels change, so this is cheap to poll.
    """
    masks = tuple((m.visible(), _bounds(m), _thumb_crc(m)) for m in layer.own_masks + layer.group_masks)
    return (layer.name, layer.visible, layer.opacities, _bounds(layer.node), _thumb_crc(layer.node), masks)


# ------------------------------------------------------------ the active layer


def active_uid(doc) -> str:
    node = doc.activeNode()
    return node.uniqueId().toString() if node is not None else ""


def activate(doc, uid: str) -> bool:
    """Make the layer with this id active again (False if it is gone)."""
    node = _find(doc.rootNode(), uid) if uid else None
    if node is None:
        return False
    doc.setActiveNode(node)
    return True


def find_node(doc, uid: str):
    """The node with this unique id anywhere in the document, or None."""
    root = doc.rootNode()
    return _find(root, uid) if uid and root is not None else None


def _find(parent, uid: str):
    for node in parent.childNodes():
        if node.uniqueId().toString() == uid:
            return node
        found = _find(node, uid)
        if found is not None:
            return found
    return None


# ------------------------------------------------------------ the modified flag


def keep_unmodified(doc, was_modified: bool) -> None:
    """Something the plugin did is not an edit by the artist: leave the modified flag as it was.

    Krita sets the flag through a queued signal after a layer is added, so
    it is cleared again once that signal has been delivered.
    """
    if was_modified:
        return
    if doc.modified():
        doc.setModified(False)
    QTimer.singleShot(0, lambda: doc.setModified(False) if is_open(doc) and doc.modified() else None)


# ------------------------------------------------------------ the per-document annotation


def _annotation(doc) -> dict:
    """The annotation's JSON object; {} when there is none or it is damaged (its values are
    cleaned by whoever uses them: JSON readers take NaN and turn 1e400 into infinity)."""
    if doc.rootNode() is None:  # a document still being made: asking for its annotation crashes Krita 5.1
        return {}
    try:
        raw = bytes(doc.annotation(ANNOTATION))
        values = json.loads(raw.decode("utf-8")) if raw else {}
    except (ValueError, UnicodeDecodeError, RecursionError):
        return {}
    return values if isinstance(values, dict) else {}


def _write_annotation(doc, values: dict, edit: bool) -> None:
    """Store ``values``; ``edit=False``: Krita marks the document modified, which is undone."""
    data = json.dumps(values, sort_keys=True).encode("utf-8")
    if bytes(doc.annotation(ANNOTATION) or b"") == data:
        return
    was_modified = doc.modified()
    doc.setAnnotation(ANNOTATION, "SMD Live settings", QByteArray(data))
    if not edit:
        keep_unmodified(doc, was_modified)


def load_document_settings(doc) -> dict:
    return {k: v for k, v in _annotation(doc).items() if k != OWN_LAYERS}


def save_document_settings(doc, settings: dict, edit: bool = True) -> None:
    """Store the document's settings; ``edit=False`` when only how it is looked at changed."""
    current = _annotation(doc)
    values = dict(settings)
    if isinstance(current.get(OWN_LAYERS), dict):
        values[OWN_LAYERS] = current[OWN_LAYERS]
    _write_annotation(doc, values, edit)


def own_layer_uid(doc, role: str) -> str:
    """The unique id of the layer the plugin made for ``role`` ("preview") in this document, or ''."""
    own = _annotation(doc).get(OWN_LAYERS)
    uid = own.get(role) if isinstance(own, dict) else None
    return uid if isinstance(uid, str) else ""


def set_own_layer_uid(doc, role: str, uid: str) -> None:
    """Remember that the plugin made this layer (no edit: the document stays as modified as it was)."""
    values = _annotation(doc)
    own = values.get(OWN_LAYERS) if isinstance(values.get(OWN_LAYERS), dict) else {}
    values[OWN_LAYERS] = {**own, role: uid}
    _write_annotation(doc, values, edit=False)

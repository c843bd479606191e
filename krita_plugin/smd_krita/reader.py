"""Reading the document into scene updates: which layers changed, their
alpha planes, control layers' pictures, and the background image.

Groups are not sent: a group's name is never read, its layers are, each as
the artist sees it (kritaapi.reading). Filter layers are not sent either:
their pixels are the layers below them, filtered, not a picture of their own
(docs/plugin.md). How the daemon read each layer comes back in its ``scene``
reply; the reader decides on the reply's codes and flags (``role``,
``reason_code``, ``joins_background``), never on its sentences. The
background image is composited from exactly the layers the daemon flags
``joins_background``: the grammar decides it, once, for the plugin and for
``smd-daemon render``. In the same way a layer is a control layer when the daemon's reading
has a ``kind``: its picture (the layer alone over white paper, RGB) goes with its alpha plane
whenever it changes, and only then (docs/protocol.md).
"""

from __future__ import annotations

import zlib
from dataclasses import dataclass, field

from . import kritaapi
from .transport import client as client_mod

# Ignored by the daemon whatever their pixels: no alpha plane needed.
NO_PIXELS_NEEDED = frozenset({"automatic_name", "marker", "plugin_layer", "no_name"})
# Scene settings that travel inside the update's "background" object.
_BACKGROUND_KEYS = {"background_prompt": "prompt", "background_strength": "strength"}


@dataclass
class Snapshot:
    """What the document looks like now, cheaply (fingerprints, no pixels)."""

    layers: list  # every kritaapi.Layer, groups included, bottom to top
    fps: dict  # uid -> fingerprint, for the layers sent
    order: list  # uids of the layers sent (every layer but groups and filter layers), bottom to top
    size: tuple
    settings: dict

    def state(self) -> tuple:
        return self.fps, self.order, self.size, self.settings

    @property
    def sent_layers(self) -> list:
        return [layer for layer in self.layers if layer.is_sent]


@dataclass
class Update:
    full: bool
    size: tuple
    layers: list  # client.Layer
    order: list | None  # the full order when it changed (partial updates)
    settings: dict  # every scene setting (full) or only the changed ones, wire-shaped (partial)
    background: bytes | None = None
    order_sent: list = field(default_factory=list)


def settings_delta(old: dict | None, new: dict) -> dict:
    """The changed scene settings in the shape ``update_scene`` takes."""
    delta = {}
    for key, value in new.items():
        if old is not None and old.get(key) == value:
            continue
        if key in _BACKGROUND_KEYS:
            delta.setdefault("background", {})[_BACKGROUND_KEYS[key]] = value
        else:
            delta[key] = value
            if key == "negative_prompt":
                delta.setdefault("background", {})["negative_prompt"] = value
    return delta


def _looks(fp: tuple) -> tuple:
    """A fingerprint (kritaapi.fingerprint) without the name: a renamed control layer looks the same."""
    return fp[1:]


class LayerReader:
    def __init__(self):
        self.reset()

    def reset(self) -> None:
        """Forget what was sent and how it was read: the next update is full."""
        self._sent_fp: dict = {}
        self._sent_order: list = []
        self._sent_size = None
        self._sent_settings: dict | None = None
        self._sent_bg_crc = None
        self._roles: dict = {}  # uid -> the daemon's reading of that layer
        self._pictured: dict = {}  # uid -> the control layer's fingerprint when its picture was last sent
        self._order_at: dict = {}  # revision -> the order it sent
        self.bg_dirty = True  # the background image must be recomposed
        self._bg_waiting = False  # held back until the daemon has read every visible layer
        self._last_revision = 0

    # ---------------------------------------------------------------- noticing

    def snapshot(self, doc, size: tuple, settings: dict) -> Snapshot:
        layers = kritaapi.layers(doc)
        sent = [layer for layer in layers if layer.is_sent]
        return Snapshot(
            layers, {l.uid: kritaapi.fingerprint(l) for l in sent}, [l.uid for l in sent], tuple(size), dict(settings)
        )

    def pending(self, snap: Snapshot) -> bool:
        sent = (self._sent_fp, self._sent_order, self._sent_size, self._sent_settings)
        return snap.state() != sent or self.bg_dirty or any(self._picture_due(l, snap) for l in snap.sent_layers)

    def needs_full(self, snap: Snapshot) -> bool:
        return self._sent_settings is None or self._sent_size != snap.size

    # ---------------------------------------------------------------- reading

    def build(self, doc, snap: Snapshot, full: bool, canvas_image: bool) -> Update:
        """Read what changed (everything when ``full``) into an update."""
        full = full or self.needs_full(snap)
        w, h = snap.size
        changed = [
            l
            for l in snap.sent_layers
            if full or self._sent_fp.get(l.uid) != snap.fps[l.uid] or self._picture_due(l, snap)
        ]
        out = []
        for layer in changed:
            if self._pixels_needed(layer):
                alpha = kritaapi.read_alpha(doc, layer, w, h)
            elif full or layer.uid in self._sent_fp:
                alpha = None  # the daemon keeps (or needs no) plane for it
            else:
                alpha = bytes(w * h)  # a layer new to the daemon must come with a plane
            image = None  # none: the daemon keeps the picture it has
            if self._is_control(layer):
                image = kritaapi.read_picture(doc, snap.layers, layer, w, h)
                self._pictured[layer.uid] = _looks(snap.fps[layer.uid])
            out.append(client_mod.Layer(layer.uid, layer.name, alpha, layer.visible, image=image))
        if full:
            self._sent_bg_crc = None
        background = None
        # Only layers that join the background image change it: painting on a region needs no new image.
        if canvas_image and (full or self.bg_dirty or any(self._joins(l) is not False for l in changed)):
            background = self._background(doc, snap)
        if full:
            settings = dict(snap.settings)
            order = None
        else:
            settings = settings_delta(self._sent_settings, snap.settings)
            order = list(snap.order) if snap.order != self._sent_order else None
        return Update(full, snap.size, out, order, settings, background, list(snap.order))

    def _pixels_needed(self, layer) -> bool:
        if not layer.visible:
            return False
        reading = self._roles.get(layer.uid)
        return not (reading and reading.get("name") == layer.name and reading.get("reason_code") in NO_PIXELS_NEEDED)

    def _is_control(self, layer) -> bool:
        """Whether the daemon read the layer, as it is now, as a control layer (used or left out)."""
        reading = self._roles.get(layer.uid)
        return bool(layer.visible and reading and reading.get("name") == layer.name and reading.get("kind"))

    def _picture_due(self, layer, snap: Snapshot) -> bool:
        """A control layer whose picture the daemon lacks: it just became one, or changed since."""
        return self._is_control(layer) and self._pictured.get(layer.uid) != _looks(snap.fps[layer.uid])

    def _joins(self, layer) -> bool | None:
        """Whether the layer's pixels join the background image, as the daemon read it; None while
        its reading does not match the layer as it is now (new, renamed, shown or hidden since)."""
        reading = self._roles.get(layer.uid)
        if reading is None or reading.get("name") != layer.name:
            return None
        if (reading.get("reason_code") == "hidden") == layer.visible:
            return None
        return reading.get("joins_background") is True  # a daemon without the flag: none joins

    def _background(self, doc, snap: Snapshot) -> bytes | None:
        """The layers the daemon flags ``joins_background`` as RGB bytes, or None if unchanged or
        not known yet (then it follows the daemon's reading of this update)."""
        joins = [(l.uid, self._joins(l)) for l in snap.sent_layers if l.visible]
        if any(j is None for _, j in joins):
            self._bg_waiting = True
            return None
        self._bg_waiting = False
        chosen = {uid for uid, j in joins if j}
        data = kritaapi.read_composite(doc, snap.layers, chosen, *snap.size)
        crc = zlib.crc32(data)
        if crc == self._sent_bg_crc:
            return None
        self._sent_bg_crc = crc
        return data

    def sent(self, revision: int, snap: Snapshot) -> None:
        self._sent_fp, self._sent_order = dict(snap.fps), list(snap.order)
        self._sent_size, self._sent_settings = snap.size, dict(snap.settings)
        self._order_at[revision] = list(snap.order)
        self._last_revision = revision
        for r in [r for r in self._order_at if r < revision - 20]:
            del self._order_at[r]
        self.bg_dirty = False

    # ---------------------------------------------------------------- the daemon's reading

    def read(self, revision: int, parsed: list) -> bool:
        """Take the daemon's reading of ``revision``; True when a reading changed (which layers
        join the background image may have: it is recomposed)."""
        order = self._order_at.get(revision)
        if order is None or len(order) != len(parsed):
            if len(self._sent_order) != len(parsed):
                return False  # a reply to something no longer known: the next one will do
            order = self._sent_order
        roles = dict(zip(order, parsed))

        def reading(r):
            return {k: (d.get("role"), d.get("reason_code"), d.get("joins_background")) for k, d in r.items()}

        changed = reading(roles) != reading(self._roles)
        self._roles = roles
        # A held-back image goes with the next update once the newest revision is read (not on older
        # replies: a reading that still does not match must not make updates chase each other).
        if changed or (self._bg_waiting and revision == self._last_revision):
            self.bg_dirty = True
        return changed

    def reading(self, uid: str) -> dict | None:
        return self._roles.get(uid)

    def role(self, uid: str) -> str | None:
        return self._roles.get(uid, {}).get("role")

    def code(self, uid: str) -> str | None:
        return self._roles.get(uid, {}).get("reason_code")

"""A scene as the wire describes it, and how one update changes it.

Pure and standard-library only. The daemon keeps one ``SceneState`` per
session (holding decoded planes), the client one per connection (holding the
bytes it sends), and both apply full and partial updates with these rules
(``docs/protocol.md``, "update"):

- a full update replaces everything and must name ``width`` and ``height``;
- a partial update needs a scene first, keeps every setting it leaves out,
  and cannot change the output size;
- a layer named again keeps what its entry leaves out (a rename keeps the
  plane and a control layer's picture); a new layer in a partial update must
  bring a plane;
- ``order`` lists every key bottom to top and removes the others; without
  it, new layers go on top.

An update is applied all or nothing: ``apply`` returns a new state or raises
``protocol.ProtocolError`` and leaves the old one as it was. The Krita plugin
vendors this file with ``protocol.py`` and ``client.py``, unchanged.
"""

from __future__ import annotations

import zlib
from dataclasses import dataclass, field, replace
from typing import cast

from . import protocol

E = protocol.ErrorCode


class _Keep:
    """The value of a field an update leaves out."""

    def __repr__(self) -> str:
        return "KEEP"


KEEP = _Keep()

# Scene settings and background fields, as the protocol's schema names them.
SETTING_NAMES = tuple(k for k in protocol.SETTINGS if k != "background")
BACKGROUND_NAMES = tuple(k for k in protocol.BACKGROUND if k != "image")


@dataclass(frozen=True)
class LayerState:
    key: str
    name: str = ""
    visible: bool = True
    alpha: object = None  # the 8-bit plane at output size (bytes or a uint8 array), or None
    group: bool = False  # a group layer: listed in the reply, never read
    image: object = None  # a control layer's RGB picture at output size (bytes or a uint8 array), or None


@dataclass(frozen=True)
class LayerChange:
    """One layer entry of an update; None/KEEP keep the layer's previous value."""

    key: str
    name: str | None = None
    visible: bool | None = None
    alpha: object = KEEP  # KEEP, None (no plane), or the new plane (or, before decoding, its reference)
    group: bool | None = None
    image: object = KEEP  # KEEP, None (none), or a control layer's new picture (or its reference)


@dataclass(frozen=True)
class SceneChange:
    """One ``update``: what it sets; everything else keeps its value."""

    full: bool
    settings: dict = field(default_factory=dict)  # any of SETTING_NAMES
    background: dict = field(default_factory=dict)  # any of BACKGROUND_NAMES
    background_image: object = KEEP  # KEEP, None (remove) or the new image
    layers: tuple = ()  # LayerChange, bottom to top
    order: tuple | None = None  # every key, bottom to top

    @classmethod
    def from_header(cls, h: dict) -> SceneChange:
        """The change an ``update`` header describes (already checked against
        ``protocol.REQUESTS``); planes and images stay as their ``{"part": ...}``
        references until ``resolve``."""
        bg = h.get("background") or {}
        return cls(
            full=h["full"],
            settings={k: h[k] for k in SETTING_NAMES if k in h},
            background={k: bg[k] for k in BACKGROUND_NAMES if k in bg},
            background_image=bg["image"] if "image" in bg else KEEP,
            layers=tuple(
                LayerChange(
                    e["key"],
                    e.get("name"),
                    e.get("visible"),
                    e["alpha"] if "alpha" in e else KEEP,
                    e.get("group"),
                    e["image"] if "image" in e else KEEP,
                )
                for e in h.get("layers", ())
            ),
            order=tuple(h["order"]) if "order" in h else None,
        )

    def resolve(self, alpha, image, layer_image=None) -> SceneChange:
        """The same change with every plane reference turned into a plane: ``alpha(ref, layer_change)``,
        ``image(ref)`` and ``layer_image(ref, layer_change)`` (None and KEEP stay)."""

        def given(v) -> bool:
            return v is not KEEP and v is not None

        layers = tuple(
            replace(
                c,
                alpha=alpha(c.alpha, c) if given(c.alpha) else c.alpha,
                image=(layer_image or (lambda ref, _: image(ref)))(c.image, c) if given(c.image) else c.image,
            )
            for c in self.layers
        )
        bg = self.background_image
        return replace(self, layers=layers, background_image=bg if bg is KEEP or bg is None else image(bg))

    def new_planes(self) -> tuple[int, bool]:
        """(alpha planes, whether a background image) this change brings."""
        n = sum(1 for c in self.layers if c.alpha is not KEEP and c.alpha is not None)
        bg = self.background_image
        return n, not (bg is KEEP or bg is None)

    def new_images(self) -> int:
        """The control layers' pictures this change brings (RGB, three bytes a pixel)."""
        return sum(1 for c in self.layers if c.image is not KEEP and c.image is not None)


@dataclass(frozen=True)
class SceneState:
    settings: dict = field(default_factory=dict)  # width, height and whatever else was set
    background: dict = field(default_factory=dict)  # prompt, negative_prompt, strength as set
    background_image: object = None
    layers: dict = field(default_factory=dict)  # key -> LayerState, bottom to top

    @property
    def has_scene(self) -> bool:
        return bool(self.settings)

    @property
    def size(self) -> tuple[int, int]:
        return self.settings.get("width", 0), self.settings.get("height", 0)

    @property
    def order(self) -> list[str]:
        return list(self.layers)

    def next_size(self, change: SceneChange) -> tuple[int, int]:
        """The output size after ``change``: checked before any plane is decoded."""
        if not change.full and not self.has_scene:
            raise protocol.ProtocolError(E.NO_SCENE, "a partial update needs a full update first")
        s = change.settings
        if change.full:
            if "width" not in s or "height" not in s:
                raise protocol.ProtocolError(E.BAD_FIELD, "a full update needs width and height")
            return s["width"], s["height"]
        size = (s.get("width", self.size[0]), s.get("height", self.size[1]))
        if size != self.size:
            raise protocol.ProtocolError(E.BAD_FIELD, "changing the output size needs a full update")
        return size

    def apply(self, change: SceneChange, max_layers: int | None = None) -> SceneState:
        """The state after ``change``, or a ``ProtocolError`` (this state is never modified)."""
        self.next_size(change)
        base = SceneState() if change.full else self
        if max_layers is not None and len(change.layers) > max_layers:
            raise protocol.ProtocolError(E.TOO_LARGE, f"{len(change.layers)} layers, at most {max_layers} allowed")
        layers = dict(base.layers)
        for i, c in enumerate(change.layers):
            prior = layers.get(c.key)
            alpha = c.alpha
            if alpha is KEEP:
                if prior is None and not change.full:
                    raise protocol.ProtocolError(
                        E.BAD_FIELD, f"layers[{i}]: new layer {c.key[:60]!r} needs an alpha plane"
                    )
                alpha = prior.alpha if prior is not None else None
            layers[c.key] = LayerState(
                c.key,
                c.name if c.name is not None else prior.name if prior is not None else "",
                c.visible if c.visible is not None else prior.visible if prior is not None else True,
                alpha,
                c.group if c.group is not None else prior is not None and prior.group,
                (prior.image if prior is not None else None) if c.image is KEEP else c.image,
            )
        if change.order is not None:
            unknown = [k for k in change.order if k not in layers]
            if unknown:
                raise protocol.ProtocolError(E.BAD_FIELD, f"order names unknown layer {unknown[0][:60]!r}")
            layers = {k: layers[k] for k in dict.fromkeys(change.order)}
        if max_layers is not None and len(layers) > max_layers:
            raise protocol.ProtocolError(E.TOO_LARGE, f"{len(layers)} layers, at most {max_layers} allowed")
        image = change.background_image
        return SceneState(
            settings={**base.settings, **change.settings},
            background={**base.background, **change.background},
            background_image=base.background_image if image is KEEP else image,
            layers=layers,
        )

    def to_change(self) -> SceneChange:
        """This whole state as one full update (what a client resends after a reconnect)."""
        return SceneChange(
            True,
            dict(self.settings),
            dict(self.background),
            self.background_image,
            tuple(LayerChange(s.key, s.name, s.visible, s.alpha, s.group, s.image) for s in self.layers.values()),
        )


def layer_changes(state: SceneState, layers) -> tuple:
    """Entries for ``layers`` (objects with ``key``, ``name``, ``visible``, ``alpha``, ``group`` and
    optionally ``image``) on top of ``state``: a plane or picture the layer already has is left out (a
    rename costs no pixels), and so is a picture not given (None: the layer keeps the one it has)."""
    out = []
    for layer in layers:
        prior = state.layers.get(layer.key)
        same = prior is not None and layer.alpha is not None and prior.alpha == layer.alpha
        image = getattr(layer, "image", None)
        same_image = image is None or prior is not None and prior.image == image
        out.append(
            LayerChange(
                layer.key,
                layer.name,
                layer.visible,
                KEEP if same else layer.alpha,
                getattr(layer, "group", False),
                KEEP if same_image else image,
            )
        )
    return tuple(out)


def header_fields(change: SceneChange, compress: bool = False, compress_image: bool | None = None) -> tuple[dict, list]:
    """An ``update``'s header fields (without ``revision`` and ``full``) and binary parts
    for ``change``, whose planes and control layers' pictures are bytes and whose image is
    ``(bytes, encoding)``. ``compress`` sends raw planes zlib-compressed, and raw images (the
    background's, control layers') too unless ``compress_image`` says otherwise."""
    parts: list = []
    squeeze_image = compress if compress_image is None else compress_image

    def ref(data: bytes, encoding: str, squeeze: bool) -> dict:
        if squeeze and encoding == "raw":
            data, encoding = zlib.compress(data, 1), "zlib"
        parts.append(data)
        return {"part": len(parts) - 1, "encoding": encoding}

    fields = dict(change.settings)
    background = dict(change.background)
    if change.background_image is not KEEP:
        image = change.background_image
        background["image"] = None if image is None else ref(*cast("tuple[bytes, str]", image), squeeze=squeeze_image)
    if background or change.full:
        fields["background"] = background
    entries = []
    for c in change.layers:
        entry = {"key": c.key}
        if c.name is not None:
            entry["name"] = c.name
        if c.visible is not None:
            entry["visible"] = c.visible
        if c.alpha is not KEEP:
            entry["alpha"] = None if c.alpha is None else ref(c.alpha, "raw", squeeze=compress)
        if c.group:
            entry["group"] = True
        if c.image is not KEEP and c.image is not None:  # a layer without a picture says nothing of one
            entry["image"] = ref(c.image, "raw", squeeze=squeeze_image)
        entries.append(entry)
    fields["layers"] = entries
    if change.order is not None:
        fields["order"] = list(change.order)
    return fields, parts

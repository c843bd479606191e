"""Getting the client's scene to the daemon (standard library and pyzmq only;
the Krita plugin vendors this file with ``client.py``).

``SceneUpload`` keeps the scene as the client last described it
(``scenestate.SceneState``) and its revisions, sends each change as a full or
partial ``update``, resends the whole scene when the daemon needs it (a new
session, a refused update) and makes every update fit the daemon's message
limit: on loopback planes travel raw, except in an update too big for the
limit, which goes zlib-compressed (masks shrink ~50× and more). It also
records the output size of each revision (``framecheck.AskedSizes``): the
frames that come back must be that size.
"""

from __future__ import annotations

from . import framecheck, protocol, scenestate
from .events import ErrorEvent
from .link import ClientError

MIB = 2**20
DEFAULT_MAX_MESSAGE_BYTES = 64 * MIB  # the daemon's default, until its welcome says


class SceneUpload:
    def __init__(self, conn, events: list, compress: bool):
        self._conn, self._events = conn, events
        self.compress = compress  # always compress planes and raw images (a remote daemon)
        self.state = scenestate.SceneState()
        self.revision = 0
        self.asked = framecheck.AskedSizes()
        self.need_full = False  # the daemon must get the whole scene before anything else
        self.resync = False  # the daemon refused an update: send the next change as a full update
        self.sent_bytes = 0  # the size of the last update sent, as it went (compressed or not)

    def set(self, width: int, height: int, layers, settings: dict, background: dict, image) -> int:
        """Replace the whole scene; returns its revision."""
        self._check_planes(layers, width, height)
        change = scenestate.SceneChange(
            True,
            settings,
            background,
            image,
            tuple(
                scenestate.LayerChange(l.key, l.name, l.visible, l.alpha, l.group, getattr(l, "image", None))
                for l in layers
            ),
        )
        self.state = self._apply(scenestate.SceneState(), change)
        self.revision += 1
        self.asked.asked(self.revision, (width, height))
        self._conn.expect_side(max(width, height))
        self.need_full = True
        self.flush()
        return self.revision

    def update(self, layers, order, settings: dict, background: dict, image) -> int:
        """Send what changed; returns the new revision."""
        if not self.state.has_scene:
            raise ClientError("set_scene() must come before update_scene()")
        w, h = settings.get("width", self.state.size[0]), settings.get("height", self.state.size[1])
        self._check_planes(layers, w, h)
        if order is not None:  # keys the daemon never heard of are left out
            known = set(self.state.layers) | {layer.key for layer in layers}
            order = tuple(k for k in order if k in known)
        change = scenestate.SceneChange(
            False, settings, background, image, scenestate.layer_changes(self.state, layers), order
        )
        self.state = self._apply(self.state, change)
        self.revision += 1
        self.asked.asked(self.revision, self.state.size)
        if self.need_full or self.resync or not self._conn.session:
            self.need_full, self.resync = True, False
            self.flush()
        elif not self._send(change):
            self.need_full = True  # the daemon missed this change: resend everything
        return self.revision

    def flush(self) -> None:
        """Send the full scene when the daemon needs it and a session is open."""
        if self.need_full and self._conn.session and self.state.has_scene and self._send(self.state.to_change()):
            self.need_full = False

    def opened(self) -> None:
        """A new session: it knows nothing of the scene yet."""
        self.need_full = self.state.has_scene

    def _send(self, change) -> bool:
        """Send ``change`` (False: it could not be queued). One that would not fit
        even compressed is not sent (a part over the daemon's limit closes the
        connection unread): it is answered here with ``too_large``, and the
        next change goes as a full update."""
        limit = self.message_limit()
        # As it is; else with the planes compressed (cheap: ~100x smaller when painted); else the image too.
        tries = list(dict.fromkeys([(self.compress, self.compress), (True, self.compress), (True, True)]))
        fields, parts = scenestate.header_fields(change, *tries[0])
        size = self._size(change, fields, parts)
        for planes, image in tries[1:]:
            if size <= limit:
                break
            fields, parts = scenestate.header_fields(change, planes, image)
            size = self._size(change, fields, parts)
        if size > limit:
            self.resync = True
            message = (
                f"this scene's update takes {size / MIB:.1f} MiB even compressed, more than the "
                f"{limit / MIB:.1f} MiB a message to this daemon may hold: use fewer layers or a smaller size"
            )
            fields = {"code": protocol.ErrorCode.TOO_LARGE, "message": message, "revision": self.revision}
            self._events.append(ErrorEvent(fields["code"], message, None, fields))
            return True
        if not self._conn.send("update", parts, revision=self.revision, full=change.full, **fields):
            return False
        self.sent_bytes = size
        return True

    def _size(self, change, fields: dict, parts: list) -> int:
        """The whole message's bytes, as the daemon counts them against its limit."""
        head = protocol.encode("update", (), revision=self.revision, full=change.full, **fields)[0]
        return len(head) + sum(len(p) for p in parts)

    def message_limit(self) -> int:
        """The most bytes one message to this daemon may take (its ``max_message_bytes``)."""
        advertised = self._conn.info.get("limits", {}).get("max_message_bytes")
        if isinstance(advertised, bool) or not isinstance(advertised, int) or advertised <= 0:
            return DEFAULT_MAX_MESSAGE_BYTES
        return advertised

    @staticmethod
    def _apply(state, change):
        try:
            return state.apply(change)
        except protocol.ProtocolError as e:
            raise ClientError(e.message) from None

    @staticmethod
    def _check_planes(layers, width: int, height: int) -> None:
        for layer in layers:
            if layer.alpha is not None and len(layer.alpha) != width * height:
                raise ClientError(
                    f"layer {layer.name!r}: alpha plane has {len(layer.alpha)} bytes, "
                    f"expected {width}x{height} = {width * height}"
                )
            image = getattr(layer, "image", None)
            if image is not None and len(image) != width * height * 3:
                raise ClientError(
                    f"layer {layer.name!r}: picture has {len(image)} bytes, "
                    f"expected {width}x{height}x3 = {width * height * 3}"
                )

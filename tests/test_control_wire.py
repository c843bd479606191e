"""Control layers on the wire: a ``control:`` layer travels like any layer, named, with its alpha plane
and its picture (RGB as the artist sees it over white, encoded like the background image); partial
updates resend only a changed control layer; the daemon's scene workers turn it into
``Scene.controls`` with the pixels sent. Scenestate and the scene workers without sockets, then a
real daemon (in this process, to see the scene it plans, and as ``smd-daemon serve``)."""

from __future__ import annotations

import threading
import zlib

import numpy as np
import pytest
from daemon_util import Raw, S, connect, free_port, half_mask, running, serving

from smd_daemon import protocol
from smd_daemon.client import ErrorEvent, Layer, SceneEvent
from smd_daemon.engine.core import Engine
from smd_daemon.scenestate import KEEP, LayerChange, SceneChange, SceneState, header_fields, layer_changes
from smd_daemon.server import Server
from smd_daemon.server.limits import Limits
from smd_daemon.server.memory import MemoryBudget
from smd_daemon.server.scenes import SceneSession, SceneWorkers

E = protocol.ErrorCode


def sketch(side: int = S, row: int = 10) -> bytes:
    """A black line across white paper: RGB bytes."""
    rgb = np.full((side, side, 3), 255, np.uint8)
    rgb[row : row + 2] = 0
    return rgb.tobytes()


def lines_alpha(side: int = S, row: int = 10) -> bytes:
    a = np.zeros((side, side), np.uint8)
    a[row : row + 2] = 255
    return a.tobytes()


# ---------------------------------------------------------------- the rules both ends share


def test_a_control_layers_picture_travels_compressed_like_the_background_image():
    change = SceneChange(
        True,
        {"width": S, "height": S},
        {},
        None,
        (
            LayerChange("r", "a fox", True, half_mask()),
            LayerChange("c", "control: lineart", True, lines_alpha(), False, sketch()),
        ),
    )
    fields, parts = header_fields(change, compress=True)
    region, control = fields["layers"]
    assert "image" not in region  # only a layer with a picture says anything of one
    assert control["image"]["encoding"] == "zlib" and zlib.decompress(parts[control["image"]["part"]]) == sketch()
    fields, parts = header_fields(change, compress=True, compress_image=False)  # images go as the background's
    assert fields["layers"][1]["image"]["encoding"] == "raw" and parts[fields["layers"][1]["image"]["part"]] == sketch()
    header = protocol.decode(
        protocol.encode("update", parts, revision=1, full=True, **fields), protocol.REQUESTS
    ).header
    back = SceneChange.from_header(header)
    assert back.layers[0].image is KEEP and back.layers[1].image == {"part": 2, "encoding": "raw"}
    assert back.new_images() == 1


def test_partial_updates_keep_a_picture_and_resend_only_a_changed_control_layer():
    class L:
        def __init__(self, key, name, alpha, image=None):
            self.key, self.name, self.alpha, self.image, self.visible, self.group = key, name, alpha, image, True, False

    s = SceneState().apply(
        SceneChange(
            True,
            {"width": S, "height": S},
            {},
            None,
            layer_changes(
                SceneState(), [L("r", "a fox", half_mask()), L("c", "control: lineart", lines_alpha(), sketch())]
            ),
        )
    )
    assert s.layers["c"].image == sketch() and s.layers["r"].image is None
    # The region repainted: the control layer's picture stays, unsent.
    (entry,) = layer_changes(s, [L("r", "a fox", half_mask(left=False))])
    assert entry.image is KEEP
    s2 = s.apply(SceneChange(False, layers=(entry,)))
    assert s2.layers["c"].image == sketch()
    # Same picture again (a rename): nothing of it is sent; a new stroke: only the picture and plane change.
    renamed, redrawn = layer_changes(
        s2,
        [
            L("c", "control: lineart | strength: 0.5", lines_alpha(), sketch()),
            L("c", "control: lineart", lines_alpha(row=20), sketch(row=20)),
        ],
    )
    assert renamed.image is KEEP and renamed.alpha is KEEP
    assert redrawn.image == sketch(row=20) and redrawn.alpha == lines_alpha(row=20)
    fields, parts = header_fields(SceneChange(False, layers=(redrawn,)))
    assert [e["key"] for e in fields["layers"]] == ["c"] and len(parts) == 2
    # The full resend after a reconnect carries every picture.
    assert s2.to_change().layers[1].image == sketch()


def test_the_schema_bounds_a_layers_picture_reference():
    def update(image):
        layer = {"key": "c", "name": "control: depth", "alpha": {"part": 0}, "image": image}
        return protocol.encode("update", [b""], revision=1, full=True, width=S, height=S, layers=[layer])

    protocol.decode(update({"part": 0, "encoding": "png"}), protocol.REQUESTS)
    protocol.decode(update(None), protocol.REQUESTS)
    for bad in ({"part": protocol.MAX_PARTS + 1}, {"part": 0, "encoding": "gif"}, {"encoding": "raw"}, "p0"):
        with pytest.raises(protocol.ProtocolError) as e:
            protocol.decode(update(bad), protocol.REQUESTS)
        assert e.value.code == E.BAD_FIELD


# ---------------------------------------------------------------- the daemon's scene assembly


def _update_msg(revision: int, layers: list, parts: list, full: bool = True):
    extra = {"width": S, "height": S} if full else {}
    frames = protocol.encode("update", parts, revision=revision, full=full, layers=layers, **extra)
    return protocol.decode(frames, protocol.REQUESTS)


def test_scene_workers_build_scene_controls_with_the_pixels_sent(engine):
    limits = Limits()
    workers = SceneWorkers(engine, limits, MemoryBudget(limits.max_memory_bytes, limits.max_session_bytes), post=None)
    s = SceneSession("s1")
    try:
        layers = [
            {"key": "r", "name": "a red fox", "alpha": {"part": 0}},
            {
                "key": "c",
                "name": "control: lineart | strength: 0.8 | end: 0.6",
                "alpha": {"part": 1, "encoding": "zlib"},
                "image": {"part": 2, "encoding": "zlib"},
            },
        ]
        parts = [half_mask(), zlib.compress(lines_alpha()), zlib.compress(sketch())]
        done = workers._update(s, _update_msg(1, layers, parts), 1, plan_now=False)
        assert done.error is None, done.error
        (control,) = done.scene.controls
        assert (control.kind, control.strength, control.start, control.end) == ("lineart", 0.8, 0.0, 0.6)
        np.testing.assert_array_equal(control.image, np.frombuffer(sketch(), np.uint8).reshape(S, S, 3))
        assert [r.prompt for r in done.scene.regions] == ["a red fox"]
        assert done.layers[1]["role"] == "control" and done.layers[1]["kind"] == "lineart"
        # A partial update with only the control layer's new picture: the region stays as it was.
        new = [{"key": "c", "alpha": {"part": 0}, "image": {"part": 1, "encoding": "raw"}}]
        done = workers._update(s, _update_msg(2, new, [lines_alpha(row=30), sketch(row=30)], full=False), 2, False)
        assert done.error is None and done.scene.controls[0].image[30, 0].max() == 0
        assert done.scene.controls[0].image[10, 0].min() == 255
        assert done.scene.regions[0].mask[0, 0] == 255 and done.scene.regions[0].mask[0, -1] == 0
        # A picture of the wrong size: one line, and the scene before it stays.
        bad = [{"key": "c", "image": {"part": 0, "encoding": "raw"}}]
        done = workers._update(s, _update_msg(3, bad, [sketch(side=S // 2)], full=False), 3, False)
        assert done.error[0] == E.BAD_IMAGE and "layer 'c' image" in done.error[1] and "\n" not in done.error[1]
        assert s.revision == 2 and s.scene is not None and s.scene.controls[0].image[30, 0].max() == 0
        # Fully transparent: left out with its reason, its kind kept (a client keeps sending it).
        empty = [{"key": "c", "alpha": {"part": 0}, "image": {"part": 1}}]
        done = workers._update(s, _update_msg(4, empty, [bytes(S * S), sketch()], full=False), 4, False)
        assert done.error is None and done.scene.controls == []
        assert {k: done.layers[1][k] for k in ("role", "reason_code", "kind")} == {
            "role": "ignored",
            "reason_code": "empty",
            "kind": "lineart",
        }
    finally:
        workers.shutdown()


# ---------------------------------------------------------------- a real daemon


class RecordingEngine(Engine):
    """The real engine, remembering each scene the daemon asked it to plan."""

    def __init__(self, components):
        super().__init__(components)
        self.planned: list = []
        self.lock = threading.Lock()

    def plan(self, scene, cancel=None):
        with self.lock:
            self.planned.append(scene)
        return super().plan(scene, cancel=cancel)


def _scene_reply(c, rev):
    ev = c.wait_for(lambda e: isinstance(e, ErrorEvent) or isinstance(e, SceneEvent) and e.revision == rev, 30)
    assert isinstance(ev, SceneEvent), ev
    return ev


def test_a_control_layer_reaches_the_daemons_planned_scene_with_its_pixels(tiny_components):
    engine = RecordingEngine(tiny_components)
    with serving(Server(engine, {"name": "tiny"}, f"tcp://127.0.0.1:{free_port()}", Limits())) as srv:
        c = connect(srv.bind, name="artist", compress_planes=True)
        try:
            region = Layer("r", "a red fox", half_mask())
            control = Layer("c", "control: lineart | strength: 0.8", lines_alpha(), image=sketch())
            rev = c.set_scene(S, S, [region, control])
            ev = _scene_reply(c, rev)
            assert [d["role"] for d in ev.layers] == ["region", "control"] and ev.layers[1]["strength"] == 0.8
            (got,) = engine.planned[-1].controls
            assert got.kind == "lineart" and got.strength == 0.8
            np.testing.assert_array_equal(got.image, np.frombuffer(sketch(), np.uint8).reshape(S, S, 3))
            # An edit of the control layer alone: only it travels, and the next scene has its new pixels.
            rev = c.update_scene(
                [Layer("c", "control: lineart | strength: 0.8", lines_alpha(row=40), image=sketch(row=40))]
            )
            _scene_reply(c, rev)
            (got,) = engine.planned[-1].controls
            assert got.image[40].max() == 0 and got.image[10].min() == 255
            assert engine.planned[-1].regions[0].prompt == "a red fox"
        finally:
            c.close()


def test_a_real_daemon_accepts_control_layers_and_refuses_bad_ones_in_one_line():
    with running() as d:
        raw = Raw(d.address)
        try:
            raw.handshake()
            layers = [
                {"key": "r", "name": "a red fox", "alpha": {"part": 0}},
                {"key": "c", "name": "control: scribble", "alpha": {"part": 1}, "image": {"part": 2}},
                {"key": "u", "name": "control: linart", "alpha": {"part": 1}},
                {"key": "e", "name": "control: depth", "alpha": {"part": 3}, "image": {"part": 2}},
                {"key": "o", "name": "control: canny", "alpha": {"part": 1}},
            ]
            raw.send(
                "update",
                [half_mask(), lines_alpha(), sketch(), bytes(S * S)],
                revision=1,
                full=True,
                width=S,
                height=S,
                layers=layers,
            )
            reply = raw.expect("scene", 60)
            read = {(e["name"], e["role"], e.get("reason_code", ""), e.get("kind", "")) for e in reply.header["layers"]}
            assert read == {
                ("a red fox", "region", "", ""),
                ("control: scribble", "control", "", "scribble"),
                ("control: linart", "ignored", "unknown_kind", ""),
                ("control: depth", "ignored", "empty", "depth"),
                ("control: canny", "ignored", "no_image", "canny"),
            }
            # A picture of the wrong size: bad_image in one line; the scene before it keeps serving.
            raw.send(
                "update", [sketch(side=32)], id=7, revision=2, full=False, layers=[{"key": "c", "image": {"part": 0}}]
            )
            err = raw.expect("error", 30)
            assert err.header["code"] == E.BAD_IMAGE and err.header["re"] == 7 and "\n" not in err.header["message"]
            raw.send("live_start", encoding="raw")
            raw.expect("live", 30)
            assert raw.expect("frame", 120).header["revision"] == 1
        finally:
            raw.close()


def test_more_control_layers_than_the_engine_takes_are_refused_in_one_line(engine):
    from smd_daemon.engine.scene import MAX_CONTROLS

    limits = Limits()
    workers = SceneWorkers(engine, limits, MemoryBudget(limits.max_memory_bytes, limits.max_session_bytes), post=None)
    try:
        n = MAX_CONTROLS + 1
        layers = [{"key": "r", "name": "a fox", "alpha": {"part": 0}}] + [
            {"key": f"c{i}", "name": "control: scribble", "alpha": {"part": 1}, "image": {"part": 2}} for i in range(n)
        ]
        done = workers._update(
            SceneSession("s"), _update_msg(1, layers, [half_mask(), lines_alpha(), sketch()]), 1, False
        )
        assert done.error[0] == E.BAD_SCENE and f"at most {MAX_CONTROLS}" in done.error[1] and "\n" not in done.error[1]
    finally:
        workers.shutdown()


def test_a_pictures_bytes_are_reserved_before_it_is_decoded(engine, monkeypatch):
    """Pictures count three bytes a pixel in the session's reservation, made before any decoding: a
    budget that holds the scene without them refuses it with them, and nothing is inflated."""
    import smd_daemon.server.scenes as scenes_mod

    limits = Limits()
    layers = [{"key": "r", "name": "a fox", "alpha": {"part": 0}}] + [
        {"key": f"c{i}", "name": "control: scribble", "alpha": {"part": 1}, "image": {"part": 2, "encoding": "zlib"}}
        for i in range(4)
    ]
    bomb = zlib.compress(bytes(S * S * 3 * 100))  # inflates far past a picture

    def held(budget_bytes: int):
        workers = SceneWorkers(engine, limits, MemoryBudget(budget_bytes, budget_bytes), post=None)
        try:
            return workers._update(
                SceneSession("s"), _update_msg(1, layers, [half_mask(), lines_alpha(), bomb]), 1, False
            )
        finally:
            workers.shutdown()

    without_pictures = SceneWorkers(engine, limits, MemoryBudget(10**9, 10**9), post=None)
    try:
        shape = without_pictures._shape_scene(S, S, 5, {})
        need = 5 * S * S + without_pictures._frame_bytes(S, S) + engine.session_bytes(shape)
    finally:
        without_pictures.shutdown()
    done = held(need + 4 * 3 * S * S)  # room for the four: reserved, then decoded, the bomb bounded
    assert done.error[0] == E.BAD_IMAGE and "does not inflate to 64x64x3" in done.error[1]
    decoded = []
    monkeypatch.setattr(scenes_mod, "decode_plane", lambda *a: decoded.append(a) or None)
    done = held(need + 3 * S * S)  # room for one picture, not four
    assert done.error[0] == E.TOO_LARGE and "per session" in done.error[1] and decoded == []

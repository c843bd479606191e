"""The scene-state rules both ends share, without sockets: full and partial
updates, order, settings merge, all or nothing."""

from __future__ import annotations

import zlib

import pytest

from smd_daemon import protocol
from smd_daemon.scenestate import KEEP, LayerChange, SceneChange, SceneState, header_fields, layer_changes

E = protocol.ErrorCode


def full(*layers, **settings):
    return SceneChange(
        True,
        {"width": 64, "height": 64, **settings},
        {"prompt": "forest"},
        None,
        tuple(LayerChange(k, n, True, a) for k, n, a in layers),
    )


def test_full_then_partial_updates_merge_settings_layers_and_order():
    s = SceneState().apply(full(("a", "a fox", b"A"), ("b", "Paint Layer 2", b"B"), seed=3))
    assert s.order == ["a", "b"] and s.settings["seed"] == 3 and s.background == {"prompt": "forest"}
    # A rename keeps the plane; a new layer goes on top; settings left out keep their value.
    s2 = s.apply(
        SceneChange(
            False,
            {"steps": 2},
            {"strength": 0.5},
            KEEP,
            (LayerChange("a", "a wolf"), LayerChange("c", "a kite", alpha=b"C")),
        )
    )
    assert s2.order == ["a", "b", "c"] and s2.layers["a"].name == "a wolf" and s2.layers["a"].alpha == b"A"
    assert s2.settings == {"width": 64, "height": 64, "seed": 3, "steps": 2}
    assert s2.background == {"prompt": "forest", "strength": 0.5}
    # An order lists every layer bottom to top and removes the others.
    s3 = s2.apply(SceneChange(False, order=("c", "a")))
    assert s3.order == ["c", "a"]
    # The old states never changed.
    assert s.order == ["a", "b"] and s2.order == ["a", "b", "c"]


@pytest.mark.parametrize(
    "change,code",
    [
        (SceneChange(False, {"seed": 1}), E.NO_SCENE),
    ],
)
def test_a_partial_update_needs_a_scene(change, code):
    with pytest.raises(protocol.ProtocolError) as e:
        SceneState().apply(change)
    assert e.value.code == code


@pytest.mark.parametrize(
    "change,code,words",
    [
        (SceneChange(True, {"width": 64}), E.BAD_FIELD, "width and height"),
        (SceneChange(False, {"width": 128}), E.BAD_FIELD, "full update"),
        (SceneChange(False, layers=(LayerChange("new", "a cat"),)), E.BAD_FIELD, "needs an alpha plane"),
        (SceneChange(False, order=("a", "ghost")), E.BAD_FIELD, "unknown layer"),
        (
            SceneChange(False, layers=tuple(LayerChange(str(i), "x", alpha=b"") for i in range(3))),
            E.TOO_LARGE,
            "at most 2",
        ),
    ],
)
def test_refused_updates_change_nothing(change, code, words):
    s = SceneState().apply(full(("a", "a fox", b"A")))
    with pytest.raises(protocol.ProtocolError) as e:
        s.apply(change, max_layers=2)
    assert e.value.code == code and words in e.value.message
    assert s.order == ["a"] and s.settings == {"width": 64, "height": 64}


def test_headers_round_trip_through_the_wire_rules():
    s = SceneState().apply(full(("a", "a fox", b"\xff" * 4)))
    partial = SceneChange(
        False,
        {"seed": 9},
        {},
        (b"\x01\x02\x03", "raw"),
        layer_changes(
            s, [LayerChange("a", "a wolf", True, b"\xff" * 4), LayerChange("b", "a kite", True, b"\x00" * 4)]
        ),
        ("b", "a"),
    )
    fields, parts = header_fields(partial, compress=True)
    # The unchanged plane is left out; the new one and the image travel zlib-compressed.
    assert "alpha" not in fields["layers"][0] and fields["layers"][1]["alpha"]["encoding"] == "zlib"
    assert fields["background"]["image"]["encoding"] == "zlib" and zlib.decompress(parts[0]) == b"\x01\x02\x03"
    msg = protocol.decode(protocol.encode("update", parts, revision=2, full=False, **fields), protocol.REQUESTS)
    change = SceneChange.from_header(msg.header).resolve(
        alpha=lambda ref, c: zlib.decompress(msg.part(ref["part"])),
        image=lambda ref: zlib.decompress(msg.part(ref["part"])),
    )
    s2 = s.apply(change)
    assert s2.order == ["b", "a"] and s2.layers["a"].alpha == b"\xff" * 4 and s2.layers["b"].alpha == b"\x00" * 4
    assert s2.settings["seed"] == 9 and s2.background_image == b"\x01\x02\x03"
    # A full resend (after a reconnect) describes the same state.
    assert SceneState().apply(s2.to_change()) == s2

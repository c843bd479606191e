"""Control layers in the plugin, against the fake ``krita`` and a fake client on a clock the test
moves: a ``control:`` layer is read as the artist sees it over white and sent as RGB once the daemon
reads it as a control layer; only an edit of it resends it; the docker lists it with its kind.
Then the plugin's real client against a real daemon."""

import krita  # the fake
import pytest
from daemon_util import running
from plugin_unit import env  # noqa: F401  (Qt, the fake krita, the plugin on sys.path)
from plugin_unit.fakes import (
    Clock,
    FakeClient,
    add,
    bgra,
    frame_event,
    ignored,
    live_controller,
    new_doc,
    region,
    run_until,
    scene_event,
)
from smd_krita import live
from smd_krita.layerlist import describe
from smd_krita.managed import ManagedDaemon
from smd_krita.scheduler import DEBOUNCE_S, MIN_GAP_S

PAUSE = max(DEBOUNCE_S, MIN_GAP_S) + 0.01
SIZE = 64  # the output size: the 16x16 document scaled by 4


def control(name, kind, **extra):
    reading = {"name": name, "role": "control", "prompt": "", "joins_background": False, "kind": kind}
    return {**reading, "strength": 1.0, "start": 0.0, "end": 1.0, **extra}


@pytest.fixture
def setup(tmp_path):
    krita.Krita.instance().settings.clear()
    doc, bg = new_doc(16, 16)
    fox = add(doc, "a fox")
    fox.setPixelData(bgra(0, 0, 255, 255, 4), 0, 0, 2, 2)
    lines = add(doc, "control: lineart | strength: 0.8")
    lines.setPixelData(bgra(0, 0, 0, 255, 16), 0, 8, 16, 1)  # a black line across row 8
    clock = Clock()
    ctl = live.Controller(clock=clock, managed=ManagedDaemon(folder=str(tmp_path)))
    ctl.timer.stop()
    ctl.settings["size"] = SIZE
    client = FakeClient()
    ctl.conn.client = client
    ctl.conn.set_state("connected", "", "connected")
    ctl._follow_document()
    ctl.live = True
    ctl.output.start()
    return ctl, client, clock, doc, fox, lines


def answer(ctl, client, *reading):
    """The daemon's reply to the newest update, and a frame of it."""
    ctl._handle(scene_event(client.revision, *reading))
    ctl._handle(frame_event(client.revision))


def later(ctl, clock):
    clock.advance(PAUSE)
    ctl._scan()


def pictures(client) -> dict:
    return {l.name: l.image for l in client.last_layers}


def row(rgb: bytes, y: int) -> bytes:
    return rgb[y * SIZE * 3 : (y + 1) * SIZE * 3]


def readings(lines_name="control: lineart | strength: 0.8", **extra):
    return (ignored("Background", "automatic_name"), region("a fox"), control(lines_name, "lineart", **extra))


def test_a_control_layer_is_sent_as_rgb_over_white_once_the_daemon_reads_it_so(setup):
    ctl, client, clock, doc, fox, lines = setup
    ctl._send(force=True)
    assert all(image is None for image in pictures(client).values()), "before the daemon's reading: no picture"
    answer(ctl, client, *readings())
    later(ctl, clock)
    kind, _, order, kw = client.calls[-1]
    layers = client.last_layers
    assert [l.name for l in layers] == ["control: lineart | strength: 0.8"], "only the control layer goes"
    (picture,) = [l.image for l in layers]
    assert layers[0].alpha is not None and len(picture) == SIZE * SIZE * 3
    assert row(picture, 33) == b"\x00" * SIZE * 3, "its black line, at output size"
    assert row(picture, 0) == b"\xff" * SIZE * 3, "unpainted: white paper, not the layers below it"
    assert kw.get("background_image") is None or kw["background_image"][33 * SIZE * 3] == 255
    # Nothing changed: nothing more is sent.
    answer(ctl, client, *readings())
    n = len(client.calls)
    later(ctl, clock)
    assert len(client.calls) == n


def test_only_an_edit_of_the_control_layer_resends_its_picture(setup):
    ctl, client, clock, doc, fox, lines = setup
    ctl._send(force=True)
    answer(ctl, client, *readings())
    later(ctl, clock)
    answer(ctl, client, *readings())
    # The region repainted: it goes alone, without any picture.
    fox.setPixelData(bgra(0, 0, 255, 255, 4), 4, 4, 2, 2)
    later(ctl, clock)
    answer(ctl, client, *readings())
    assert [(l.name, l.image) for l in client.last_layers] == [("a fox", None)]
    # The control layer repainted: it goes alone, with its new picture.
    lines.setPixelData(bgra(0, 0, 255, 255, 16), 0, 2, 16, 1)  # a red line across row 2
    later(ctl, clock)
    answer(ctl, client, *readings())
    (sent,) = client.last_layers
    assert sent.name.startswith("control:") and row(sent.image, 9)[:3] == b"\xff\x00\x00"
    # Renamed (a new strength): the name goes, the picture is not read again.
    lines.setName("control: lineart | strength: 0.5")
    later(ctl, clock)
    assert [(l.name, l.image) for l in client.last_layers] == [("control: lineart | strength: 0.5", None)]
    answer(ctl, client, *readings("control: lineart | strength: 0.5", strength=0.5))
    later(ctl, clock)
    assert not any(l.image for l in client.last_layers), "the same picture is not read again"


def test_a_layer_renamed_into_a_control_layer_sends_its_picture_after_the_reading(setup):
    ctl, client, clock, doc, fox, lines = setup
    ctl._send(force=True)
    answer(ctl, client, *readings())
    later(ctl, clock)
    answer(ctl, client, *readings())
    fox.setName("control: scribble")
    later(ctl, clock)
    assert [(l.name, l.image) for l in client.last_layers] == [("control: scribble", None)]
    ctl._handle(
        scene_event(
            client.revision,
            ignored("Background", "automatic_name"),
            ignored("control: scribble", "no_image", kind="scribble"),
            control("control: lineart | strength: 0.8", "lineart"),
        )
    )
    later(ctl, clock)
    (sent,) = client.last_layers
    assert sent.name == "control: scribble" and sent.image is not None and sent.image[:3] == b"\xff\x00\x00"


def test_the_docker_lists_a_control_layer_with_its_kind(setup):
    ctl, client, clock, doc, fox, lines = setup
    ctl._send(force=True)
    ctl._handle(scene_event(client.revision, *readings(end=0.6)))
    rows = {r.name: r for r in ctl.sync.rows(doc, True)}
    r = rows["control: lineart | strength: 0.8"]
    assert r.role == "control" and r.text == "control layer: lineart, strength 1, from 0 to 0.6 of the denoising"
    assert describe(control("control: depth", "depth", strength=0.8)) == "control layer: depth, strength 0.8"
    left_out = ignored("control: depth", "empty", "empty: nothing is painted on it", kind="depth")
    assert describe(left_out) == "control layer (depth) left out: empty: nothing is painted on it"
    waiting = ignored("control: pose", "no_image", kind="pose")
    assert describe(waiting) == "control layer: pose, its picture on its way"
    unknown = ignored("control: linart", "unknown_kind", "not a control kind: lineart, ...")
    assert describe(unknown) == "ignored: not a control kind: lineart, ..."


# ---------------------------------------------------------------- the real client, a real daemon


@pytest.fixture
def daemon():
    with running() as d:
        yield d


def test_a_control_layer_reaches_a_real_daemon_as_a_control(daemon, tmp_path):
    with live_controller(str(tmp_path), "a red fox") as (ctl, doc, _):
        lines = add(doc, "control: lineart | strength: 0.8")
        lines.setPixelData(bgra(0, 0, 0, 255, 64), 0, 20, 64, 1)
        empty = add(doc, "control: depth")
        ctl.set_setting("address", daemon.address)
        ctl.connect_daemon()

        def reading(layer):
            return ctl.sync.reader.reading(layer.uniqueId().toString()) or {}

        assert run_until(lambda: reading(lines).get("role") == "control", 60), reading(lines)
        assert reading(lines)["kind"] == "lineart" and reading(lines)["strength"] == 0.8
        # The empty one is told, its kind kept; nothing was lost.
        assert run_until(lambda: reading(empty).get("reason_code") == "empty", 30), reading(empty)
        assert reading(empty)["kind"] == "depth"
        state = ctl.conn.client._scene.state
        picture = state.layers[lines.uniqueId().toString()].image
        assert picture is not None and picture[20 * 64 * 3 : 21 * 64 * 3] == b"\x00" * 64 * 3

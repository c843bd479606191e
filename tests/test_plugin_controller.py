"""The plugin's controller against the fake ``krita`` and a fake client, on a
clock the test moves: what is sent when, how layers are explained, what
the status says. No sleeping, no sockets."""

import krita  # the fake
import pytest
from plugin_unit import env  # noqa: F401  (Qt, the fake krita, the plugin on sys.path)
from plugin_unit.fakes import (
    Clock,
    ErrorEvent,
    FakeClient,
    add,
    background,
    bgra,
    frame_event,
    ignored,
    new_doc,
    region,
    scene_event,
    state_event,
)
from smd_krita import kritaapi, live, settings
from smd_krita.managed import ManagedDaemon
from smd_krita.scheduler import DEBOUNCE_S, MAX_IN_FLIGHT, MIN_GAP_S

PAUSE = max(DEBOUNCE_S, MIN_GAP_S) + 0.01


@pytest.fixture
def setup(tmp_path):
    krita.Krita.instance().settings.clear()
    doc, bg = new_doc(16, 16)
    fox = add(doc, "a fox")
    fox.setPixelData(bgra(0, 0, 255, 255, 4), 0, 0, 2, 2)
    clock = Clock()
    ctl = live.Controller(clock=clock, managed=ManagedDaemon(folder=str(tmp_path)))
    ctl.timer.stop()
    ctl.settings["size"] = 64
    client = FakeClient()
    ctl.conn.client = client
    ctl.conn.set_state("connected", "", "connected")
    ctl._follow_document()
    return ctl, client, clock, doc, bg, fox


def go_live(ctl):
    ctl.live = True
    ctl.output.start()


def later(ctl, clock, seconds=PAUSE):
    clock.advance(seconds)
    ctl._scan()


def test_full_scene_then_only_changed_layers_after_a_pause(setup):
    ctl, client, clock, doc, bg, fox = setup
    go_live(ctl)
    ctl._send(force=True)
    kind, layers, kw = client.calls[-1]
    assert kind == "full" and layers == [("Background", True), ("a fox", True)]
    assert kw["background_image"] is None, "no background image before the daemon says which layers join it"
    ctl._handle(scene_event(client.revision, ignored("Background", "automatic_name"), region("a fox")))
    later(ctl, clock)
    kind, layers, order, kw = client.calls[-1]
    assert (kind, layers) == ("update", []) and kw["background_image"] is not None, "it follows the reading"
    ctl._handle(frame_event(client.revision))
    n = len(client.calls)
    fox.setPixelData(bgra(0, 0, 255, 255, 1), 5, 5, 1, 1)
    ctl._scan()  # seen, but held back: too soon after the last update
    assert len(client.calls) == n
    later(ctl, clock)
    kind, layers, order, kw = client.calls[-1]
    assert (kind, layers, order) == ("update", [("a fox", True)], None)
    assert kw["background_image"] is None, "painting a region needs no new background image"
    ctl._handle(frame_event(client.revision))
    n = len(client.calls)
    later(ctl, clock)
    assert len(client.calls) == n, "nothing changed: nothing sent"


def test_first_change_after_a_pause_goes_out_at_once(setup):
    ctl, client, clock, doc, bg, fox = setup
    go_live(ctl)
    ctl._send(force=True)
    ctl._handle(frame_event(client.revision))
    clock.advance(PAUSE)
    n = len(client.calls)
    fox.setPixelData(bgra(0, 0, 255, 255, 1), 9, 9, 1, 1)
    ctl._scan()
    assert len(client.calls) == n + 1
    fox.setPixelData(bgra(0, 0, 255, 255, 1), 10, 9, 1, 1)
    ctl._scan()  # mid-stroke: held back
    assert len(client.calls) == n + 1


def test_a_new_hidden_layer_still_brings_a_plane(setup):
    ctl, client, clock, doc, bg, fox = setup
    go_live(ctl)
    ctl._send(force=True)
    ctl._handle(frame_event(client.revision))
    cat = add(doc, "a cat")
    cat.setVisible(False)
    later(ctl, clock)
    kind, layers, order, kw = client.calls[-1]
    assert (kind, layers) == ("update", [("a cat", True)])
    assert order == [l.uid for l in kritaapi.layers(doc)]


def test_in_flight_updates_are_bounded(setup):
    ctl, client, clock, doc, bg, fox = setup
    go_live(ctl)
    ctl._send(force=True)
    sent = len(client.calls)
    for i in range(6):
        fox.setName(f"a fox {i}")
        later(ctl, clock)
        later(ctl, clock)
    assert len(client.calls) - sent == MAX_IN_FLIGHT - 1
    ctl._handle(frame_event(client.revision))  # the daemon caught up: the newest name goes out
    ctl._scan()
    assert client.calls[-1][1] == [("a fox 5", True)]


def test_a_refused_update_is_no_longer_in_flight(setup):
    ctl, client, clock, doc, bg, fox = setup
    go_live(ctl)
    ctl._send(force=True)
    for i in range(2):
        fox.setName(f"a fox {i}")
        later(ctl, clock)
        ctl._handle(ErrorEvent("too_many_regions", "too many regions", None, {"revision": client.revision}))
    fox.setName("a fox again")
    later(ctl, clock)
    assert client.calls[-1][1] == [("a fox again", True)], "refusals answer their revisions"


def test_roles_come_from_codes_never_from_sentences(setup):
    ctl, client, clock, doc, bg, fox = setup
    sketch = add(doc, "# sketch")
    sketch.setPixelData(bgra(0, 0, 0, 255, 1), 15, 0, 1, 1)
    go_live(ctl)
    ctl._send(force=True)
    px = (1 * 64 + 62) * 3  # the sketch's pixel, at the 64x64 output size
    assert client.calls[-1][2]["background_image"] is None, "before the daemon's reading, no picture at all"
    # The sentences are anything at all: only the codes and flags count.
    ctl._handle(
        scene_event(
            client.revision,
            ignored("Background", "automatic_name", "zzz"),
            region("a fox"),
            ignored("# sketch", "marker", "qqq"),
        )
    )
    assert ctl.sync.reader.bg_dirty
    later(ctl, clock)
    kind, layers, order, kw = client.calls[-1]
    assert layers == []
    bg_image = kw["background_image"]
    assert bg_image[:3] == b"\xff\xff\xff", "the red fox region is not part of the background image"
    assert bg_image[px : px + 3] == b"\xff\xff\xff", "nor is the # sketch"
    ctl._handle(frame_event(client.revision))
    bg.setPixelData(bgra(0, 0, 0, 255, 1), 15, 15, 1, 1)
    later(ctl, clock)
    kind, layers, order, kw = client.calls[-1]
    assert layers == [("Background", False)], "an automatic name needs no plane"
    assert kw["background_image"] is not None


def test_without_codes_every_layer_is_read_in_full(setup):
    """An older daemon gives sentences only: the plugin reads everything rather than guess."""
    ctl, client, clock, doc, bg, fox = setup
    go_live(ctl)
    ctl._send(force=True)
    ctl._handle(
        scene_event(
            client.revision,
            {"name": "Background", "role": "ignored", "reason": "automatic layer name"},
            region("a fox"),
        )
    )
    ctl._handle(frame_event(client.revision))
    bg.setPixelData(bgra(0, 0, 0, 255, 1), 15, 15, 1, 1)
    later(ctl, clock)
    assert client.calls[-1][1] == [("Background", True)]


def test_layers_are_explained_when_connected_without_live(setup):
    ctl, client, clock, doc, bg, fox = setup
    grp = add(doc, "characters", kind="grouplayer")
    add(doc, "Paint Layer 3", parent=grp)
    ctl._scan()
    kind, layers, kw = client.calls[-1]
    assert kind == "full" and "live" not in [c[0] for c in client.calls], "read at once, no Live needed"
    ctl._handle(
        scene_event(
            client.revision,
            ignored("Background", "automatic_name", "automatic name: rename it with a prompt"),
            region("a fox", warnings=["unknown option 'strenght' (ignored)"]),
            ignored("Paint Layer 3", "automatic_name", "automatic name: rename it with a prompt"),
        )
    )
    rows = [(r.name, r.role, r.code) for r in ctl.rows]
    assert rows == [
        ("characters", "group", "group"),
        ("Paint Layer 3", "ignored", "automatic_name"),
        ("a fox", "region", ""),
        ("Background", "ignored", "automatic_name"),
    ]
    fox_row = ctl.rows[2]
    assert fox_row.warnings == ["unknown option 'strenght' (ignored)"]
    assert ctl.rows[3].text == "ignored: automatic name: rename it with a prompt"
    # Layers change: a new reading follows without Live (bounded by scene replies).
    add(doc, "a cat")
    later(ctl, clock)
    assert client.calls[-1][1] == [("a cat", True)]


def test_rows_before_any_connection_say_so(setup):
    ctl, client, clock, doc, bg, fox = setup
    ctl.conn.client = None
    ctl.conn.set_state("disconnected", "closed", "not connected")
    ctl.sync.layers = []
    ctl._scan()
    assert [(r.name, r.text) for r in ctl.rows] == [
        ("a fox", "not read yet: connect to the daemon"),
        ("Background", "not read yet: connect to the daemon"),
    ]
    assert ctl.status_text() == ("not connected: press Connect", "problem")


def test_status_and_numbers_tell_the_truth_across_an_outage(setup):
    ctl, client, clock, doc, bg, fox = setup
    go_live(ctl)
    ctl._send(force=True)
    clock.advance(0.3)
    ctl._handle(frame_event(client.revision))
    clock.advance(0.5)
    ctl._handle(frame_event(client.revision))
    assert ctl.stats.fps == pytest.approx(2.0) and ctl.stats.latency_ms == pytest.approx(300)
    ctl._handle(state_event("disconnected", "no reply from the daemon for 5 s", "no_answer"))
    text, kind = ctl.status_text()
    assert "is the daemon running?" in text and "reconnects by itself" in text and kind == "problem"
    assert ctl.stats.fps == 0 and ctl.stats.latency_ms == 0 and ctl.stats.text(True) == ""
    clock.advance(30)  # a long outage
    ctl._handle(state_event("connected", "connected", ""))
    fox.setName("a red fox")
    later(ctl, clock)
    clock.advance(0.2)
    ctl._handle(frame_event(client.revision))
    assert ctl.stats.latency_ms < 1000, "never counted across the outage"
    assert ctl.stats.fps == 0, "one frame after the outage: no rate yet"
    ctl.set_live(False)
    assert ctl.stats.text(False) == ""


def test_nothing_is_sent_or_timed_while_reconnecting(setup):
    ctl, client, clock, doc, bg, fox = setup
    go_live(ctl)
    ctl._send(force=True)
    ctl._handle(frame_event(client.revision))
    ctl._handle(state_event("connecting", "the daemon restarted; reconnecting", "connecting"))
    sent = len(client.calls)
    fox.setName("a red fox")  # painted during the outage
    later(ctl, clock)
    assert len(client.calls) == sent, "nothing goes out while the session is not open"
    clock.advance(20)
    ctl._handle(state_event("connected", "connected", ""))
    later(ctl, clock)
    assert client.calls[-1][1] == [("a red fox", True)], "the change made meanwhile goes out now"
    clock.advance(0.3)
    ctl._handle(frame_event(client.revision))
    assert ctl.stats.latency_ms < 1000, "measured from the send after the outage, not from the edit before it"


@pytest.mark.parametrize(
    "code,words",
    [
        ("auth_failed", "did not accept this key"),
        ("refused", "refused"),
        ("bye", "closed the connection"),
        ("connecting", "connecting to"),
        ("closed", "press Connect"),
    ],
)
def test_status_words_come_from_state_codes(setup, code, words):
    ctl, client, clock, doc, bg, fox = setup
    ctl._handle(state_event("disconnected" if code != "connecting" else "connecting", "some reason", code))
    assert words in ctl.status_text()[0]


def test_result_shown_with_live_off_numbered_from_one_and_cleared_by_apply(setup):
    ctl, client, clock, doc, bg, fox = setup
    ctl.generate()
    assert client.calls[-1][0] == "generate"
    ctl._handle(frame_event(client.revision, job=1, color=(9, 8, 7)))
    assert ctl.progress == "result ready: press Apply"
    preview = kritaapi.find_preview(doc)
    assert preview is not None and preview.visible(), "with Live off, the preview shows the result"
    assert bytes(preview.pixelData(0, 0, 1, 1)) == bgra(7, 8, 9, 255, 1)
    assert ctl.apply()
    assert ctl.progress == "" and ctl.result is None
    names = [n.name() for n in doc.rootNode().childNodes()]
    assert "SMD Result 1" in names
    assert not preview.visible(), "applied: the preview steps aside"


def test_the_artists_layer_stays_active(setup):
    ctl, client, clock, doc, bg, fox = setup
    doc.setActiveNode(fox)
    go_live(ctl)
    ctl._send(force=True)
    ctl._handle(frame_event(client.revision))
    krita.Krita.instance().process_queued()  # Krita activates the new preview layer
    ctl.output.keeper.check()
    assert doc.activeNode() is fox


def test_preview_in_the_docker_adds_no_layer_and_settings_are_per_document(setup):
    ctl, client, clock, doc, bg, fox = setup
    ctl.set_setting("preview_mode", "docker")
    go_live(ctl)
    ctl._send(force=True)
    ctl._handle(frame_event(client.revision))
    assert kritaapi.find_preview(doc) is None and ctl.output.image is not None
    ctl.set_setting("preview_mode", "canvas")
    ctl.set_setting("preview_opacity", 0.25)
    ctl._handle(frame_event(client.revision))  # adds the layer (its look follows a moment later)
    ctl._handle(frame_event(client.revision))
    assert kritaapi.find_preview(doc).opacity() == 64
    stored = kritaapi.load_document_settings(doc)
    assert stored["preview_mode"] == "canvas" and stored["preview_opacity"] == 0.25


def test_a_preview_removed_during_live_is_not_added_again(setup):
    ctl, client, clock, doc, bg, fox = setup
    go_live(ctl)
    ctl._send(force=True)
    ctl._handle(frame_event(client.revision))
    kritaapi.find_preview(doc).remove()  # the artist undid its creation
    ctl._handle(frame_event(client.revision))
    assert kritaapi.find_preview(doc) is None, "adding it again would wipe the artist's redo steps"
    assert ctl.output.in_docker(ctl.settings)
    ctl.set_live(False)
    ctl.set_live(True)
    ctl._handle(frame_event(client.revision))
    assert kritaapi.find_preview(doc) is not None


def test_live_off_hides_the_preview_without_an_undo_step(setup):
    ctl, client, clock, doc, bg, fox = setup
    app = krita.Krita.instance()
    go_live(ctl)
    ctl._send(force=True)
    ctl._handle(frame_event(client.revision))
    steps = len(app.undo_stack)
    ctl.set_live(False)
    assert client.calls[-1] == ("stop",)
    assert not kritaapi.find_preview(doc).visible() and len(app.undo_stack) == steps


def test_region_mode_is_offered_only_by_daemons_that_have_it(setup):
    ctl, client, clock, doc, bg, fox = setup
    ctl.set_setting("region_mode", "attention")
    assert "region_mode" not in ctl.scene_settings()
    client.info["capabilities"]["region_modes"] = ["latent", "attention"]
    assert ctl.scene_settings()["region_mode"] == "attention"
    ctl._send(force=True)
    assert client.calls[-1][2]["region_mode"] == "attention"
    ctl._handle(scene_event(client.revision, ignored("Background", "automatic_name"), region("a fox")))
    ctl.set_setting("region_mode", "latent")
    later(ctl, clock)
    assert client.calls[-1][-1]["region_mode"] == "latent"
    assert kritaapi.load_document_settings(doc)["region_mode"] == "latent"


def test_steps_and_strength_are_the_daemons_defaults_until_set(setup):
    ctl, client, clock, doc, bg, fox = setup
    scene = ctl.scene_settings()
    assert scene["steps"] == 4 and scene["background_strength"] == 0.3, "from welcome.defaults"
    ctl.set_setting("steps", 2)
    ctl.set_setting("strength", 0.8)
    scene = ctl.scene_settings()
    assert scene["steps"] == 2 and scene["background_strength"] == 0.8
    assert kritaapi.load_document_settings(doc)["steps"] == 2
    ctl.set_setting("steps", None)
    assert ctl.scene_settings()["steps"] == 4


def test_limits_come_from_the_handshake(setup):
    ctl, client, clock, doc, bg, fox = setup
    client.info["limits"] = {"max_side": 256, "min_side": 128, "max_steps": 8}
    ctl.set_setting("steps", 20)
    ctl.set_setting("size", 1024)
    assert ctl.settings["steps"] == 8 and ctl.output_size() == (256, 256)
    ctl.set_setting("size", 16)
    assert ctl.output_size() == (128, 128)
    client.info["limits"] = {"max_side": 8192, "min_side": 8, "max_steps": 100}
    ctl.set_setting("steps", 60)
    assert ctl.settings["steps"] == 60


def test_output_size_follows_aspect_and_limits():
    assert settings.output_size(2048, 1024, 512) == (512, 256)
    assert settings.output_size(1000, 3000, 768) == (256, 768)
    assert settings.output_size(4000, 4000, 4096, {"max_side": 1024}) == (1024, 1024)
    assert settings.output_size(100, 10000, 512, {"min_side": 64}) == (64, 512)


def test_settings_clean_bad_values():
    s = settings.clean(
        {
            "steps": "999",
            "seed": "x",
            "background_source": "moon",
            "strength": 3,
            "preview_mode": "wall",
            "region_mode": 5,
        },
        {"max_steps": 50},
    )
    assert (s["steps"], s["seed"], s["background_source"], s["strength"]) == (50, 0, "canvas", 1.0)
    assert (s["preview_mode"], s["region_mode"]) == ("canvas", "latent")
    settings.save_global({**settings.DEFAULTS, "address": "10.0.0.2:7555"})
    assert settings.load_global()["address"] == "10.0.0.2:7555"


def test_switching_documents_resends_everything(setup):
    ctl, client, clock, doc, bg, fox = setup
    go_live(ctl)
    ctl._send(force=True)
    ctl._handle(frame_event(client.revision))
    old = doc
    other, _ = new_doc(32, 16)
    hidden = add(other, "a hidden cat")
    hidden.setVisible(False)
    hidden.setLocked(True)
    ctl._follow_document()
    assert not kritaapi.find_preview(old).visible()
    ctl.settings["size"] = 128
    assert ctl.output_size() == (128, 64)
    ctl._scan()
    kind, layers, kw = client.calls[-1]
    assert kind == "full" and layers == [("Background", True), ("a hidden cat", False)]
    assert hidden.locked()  # read, never changed


def test_a_failing_tick_is_shown_not_raised(setup, monkeypatch):
    ctl, client, clock, doc, bg, fox = setup
    monkeypatch.setattr(kritaapi, "layers", lambda doc: 1 / 0)
    ctl.tick()  # must not raise: Krita would open a modal "Script error"
    assert "internal error" in ctl.error


def test_no_document(setup):
    ctl, client, clock, doc, bg, fox = setup
    krita.Krita.instance()._doc = None
    ctl._follow_document()
    ctl._send(force=True)
    ctl._scan()
    assert ctl.output_size() == (0, 0) and ctl.rows == []


def test_the_background_image_is_exactly_what_the_daemon_flags(setup):
    """A filter layer's pixels are the whole picture below it: it is never sent nor composited, and
    neither regions nor # layers reach the background image, in any update."""
    ctl, client, clock, doc, bg, fox = setup
    fox.setPixelData(bgra(0, 0, 255, 255, 16), 0, 0, 4, 4)
    sketch = add(doc, "# sketch lines")
    sketch.setPixelData(bgra(0, 0, 0, 255, 16), 12, 0, 4, 4)
    meadow = add(doc, "bg: a meadow | strength: 0.5")
    meadow.setPixelData(bgra(0, 160, 0, 255, 16 * 4), 0, 12, 16, 4)
    add(doc, "Filter Layer 1 (Levels)", kind="filterlayer")
    go_live(ctl)
    ctl._send(force=True)
    kind, layers, kw = client.calls[-1]
    assert [n for n, _ in layers] == ["Background", "a fox", "# sketch lines", "bg: a meadow | strength: 0.5"]
    readings = (
        ignored("Background", "automatic_name"),
        region("a fox"),
        ignored("# sketch lines", "marker"),
        background("bg: a meadow | strength: 0.5", "a meadow"),
    )
    ctl._handle(scene_event(client.revision, *readings))
    later(ctl, clock)
    image = client.calls[-1][-1]["background_image"]

    def at(x, y):  # a canvas pixel at the 64x64 output size
        o = (y * 4 * 64 + x * 4) * 3
        return image[o : o + 3]

    assert at(1, 1) == b"\xff\xff\xff", "the fox region is not in it"
    assert at(14, 1) == b"\xff\xff\xff", "nor the # sketch"
    assert at(1, 14) == b"\x00\xa0\x00", "the bg: layer is"
    assert [r.role for r in ctl.rows][:1] == ["filter"] and "never read" in ctl.rows[0].text
    # Painting the bg: layer sends a new image; still without regions, sketch or filter.
    ctl._handle(frame_event(client.revision))
    meadow.setPixelData(bgra(0, 160, 0, 255, 4), 0, 0, 2, 2)
    later(ctl, clock)
    image = client.calls[-1][-1]["background_image"]
    assert at(0, 0) == b"\x00\xa0\x00" and at(14, 1) == b"\xff\xff\xff"


def test_unusable_saved_settings_fall_back_to_the_defaults_and_are_said_once(setup):
    """A .kra whose settings hold NaN or 1e400 (JSON readers take both): defaults, one notice, Live works."""
    ctl, client, clock, doc, bg, fox = setup
    other, _ = new_doc(16, 16)
    add(other, "a cat").setPixelData(bgra(0, 0, 255, 255, 4), 0, 0, 2, 2)
    other.setAnnotation(
        kritaapi.ANNOTATION,
        "",
        b'{"preview_opacity": NaN, "seed": 1e400, "size": 1e400, "steps": -Infinity, "strength": NaN,'
        b' "background_prompt": "a meadow", "preview_show": "preview"}',
    )
    other.setModified(False)
    ctl._follow_document()
    s = ctl.settings
    assert (s["preview_opacity"], s["seed"], s["steps"], s["strength"]) == (0.5, 0, None, None)
    assert (s["background_prompt"], s["preview_show"]) == ("a meadow", "preview"), "usable ones are kept"
    assert s["size"] == settings.DEFAULTS["size"]
    assert "unusable values (preview_opacity, seed, size, steps, strength)" in ctl.notice
    stored = kritaapi.load_document_settings(other)
    assert stored["preview_opacity"] == 0.5 and stored["seed"] == 0, "cleaned in the document"
    assert not other.modified(), "cleaning is no edit"
    go_live(ctl)
    ctl._send(force=True)
    ctl._handle(frame_event(client.revision))
    assert ctl.error == "" and kritaapi.find_preview(other).opacity() == 255  # "preview" shows it alone
    ctl._follow_document()
    assert ctl.notice, "said while this document is active"
    krita.Krita.instance()._doc = doc
    ctl._follow_document()
    krita.Krita.instance()._doc = other
    ctl._follow_document()
    assert ctl.notice == "", "said once: the document holds clean values now"


def test_the_canvas_shows_both_by_default_and_one_key_swaps(setup):
    ctl, client, clock, doc, bg, fox = setup
    assert ctl.settings["preview_show"] == "both" and ctl.settings["preview_opacity"] == 0.5
    go_live(ctl)
    ctl._send(force=True)
    ctl._handle(frame_event(client.revision))
    krita.Krita.instance().process_queued()
    ctl._handle(frame_event(client.revision))
    preview = kritaapi.find_preview(doc)
    assert preview.visible() and preview.opacity() == 128, "painting and preview both seen"
    looks = []
    for _ in range(3):
        ctl.swap_show()
        looks.append((ctl.settings["preview_show"], preview.visible(), preview.opacity() if preview.visible() else 0))
    assert looks == [("preview", True, 255), ("painting", False, 0), ("both", True, 128)]


def test_looking_differently_does_not_mark_the_document_modified(setup):
    ctl, client, clock, doc, bg, fox = setup
    doc.setModified(False)
    for key, value in (("preview_mode", "docker"), ("preview_show", "painting"), ("preview_opacity", 0.3)):
        ctl.set_setting(key, value)
        assert not doc.modified(), key
    assert kritaapi.load_document_settings(doc)["preview_mode"] == "docker", "still saved with the document"
    ctl.set_setting("seed", 77)
    assert doc.modified(), "a scene setting is an edit"


def test_latency_counts_from_the_request_never_from_before_it(setup):
    """Live pressed 15 s after the last edit, and a Generate meanwhile: latency is the wait for the frame."""
    ctl, client, clock, doc, bg, fox = setup
    ctl._scan()  # connected: the document is read without Live
    ctl._handle(scene_event(client.revision, ignored("Background", "automatic_name"), region("a fox")))
    later(ctl, clock)
    ctl._handle(scene_event(client.revision, ignored("Background", "automatic_name"), region("a fox")))
    clock.advance(40.0)
    ctl.generate()
    clock.advance(2.0)
    ctl._handle(frame_event(client.revision, job=1))
    clock.advance(15.0)  # the artist looks, then presses Live
    ctl.set_live(True)
    clock.advance(0.4)
    ctl._handle(frame_event(client.revision))
    assert ctl.stats.latency_ms == pytest.approx(400)


def test_the_daemons_goodbye_is_said_once(setup):
    ctl, client, clock, doc, bg, fox = setup
    ctl._handle(state_event("disconnected", "daemon shutting down", "bye"))
    text = ctl.status_text()[0]
    assert text.count("closed the connection") == 1 and "daemon shutting down" in text

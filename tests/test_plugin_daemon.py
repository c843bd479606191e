"""The plugin's controller in the test process (Qt offscreen, the fake krita)
against a real ``smd-daemon serve --model tiny``: the daemon's reading of
every layer before Live, state codes in words, and the region-mode choice."""

import pytest
from daemon_util import Daemon, connect, running
from plugin_unit import env  # noqa: F401  (Qt, the fake krita, the plugin on sys.path)
from plugin_unit.fakes import add, bgra, live_controller, run_until
from smd_krita.managed import ManagedDaemon


@pytest.fixture
def daemon():
    with running() as d:
        yield d


@pytest.fixture
def controller(tmp_path):
    with live_controller(str(tmp_path), "a red fox | strenght: 2", "Paint Layer 2") as (ctl, doc, _):
        yield ctl, doc


def test_every_layer_explained_before_live(daemon, controller):
    ctl, doc = controller
    ctl.set_setting("address", daemon.address.replace("tcp://", ""))  # as an artist types it
    ctl.connect_daemon()
    assert run_until(lambda: ctl.rows and all(r.role for r in ctl.rows)), ctl.status_text()
    rows = {r.name: r for r in ctl.rows}
    assert not ctl.live
    assert (rows["Paint Layer 2"].role, rows["Paint Layer 2"].code) == ("ignored", "automatic_name")
    assert (rows["Background"].role, rows["Background"].code) == ("ignored", "automatic_name")
    assert rows["a red fox | strenght: 2"].role == "region" and rows["a red fox | strenght: 2"].warnings


def test_the_region_choice_reaches_the_daemon(daemon, controller):
    ctl, doc = controller
    ctl.set_setting("address", daemon.address)
    ctl.connect_daemon()
    assert run_until(lambda: ctl.state == "connected"), ctl.status_text()
    modes = ctl.conn.region_modes()
    if "attention" not in modes:  # daemons before the attention mode (contract 2) offer no choice
        pytest.skip(f"this daemon offers no region choice ({modes})")
    ctl.set_setting("region_mode", "attention")
    ctl.set_live(True)
    assert run_until(lambda: ctl.frame_event is not None), ctl.error
    assert ctl.error == "", ctl.error  # the daemon took region_mode (an unknown value would be bad_field)


def test_a_stopped_daemon_is_told_in_words(daemon, controller):
    ctl, doc = controller
    ctl.set_setting("address", daemon.address)
    ctl.connect_daemon()
    assert run_until(lambda: ctl.state == "connected")
    daemon.stop()
    assert run_until(lambda: "is the daemon running?" in ctl.status_text()[0], 60), ctl.status_text()
    assert "reconnects by itself" in ctl.status_text()[0]


def test_the_daemons_goodbye_is_said_once(daemon, controller):
    ctl, doc = controller
    ctl.set_setting("address", daemon.address)
    ctl.connect_daemon()
    assert run_until(lambda: ctl.state == "connected")
    said = []
    ctl.changed.connect(lambda: said.append(ctl.status_text()[0]))
    daemon.stop()  # SIGTERM: the daemon says bye
    assert run_until(lambda: any("closed the connection" in t for t in said), 30), said
    bye = next(t for t in said if "closed the connection" in t)
    assert bye.count("closed the connection") == 1 and "daemon shutting down" in bye, bye


def test_stopping_the_local_daemon_disconnects_without_promising_to_reconnect(controller, tmp_path):
    """The artist pressed Stop: the docker does not say it reconnects, and nothing does."""
    import json
    import sys

    from daemon_util import ROOT, free_port

    ctl, doc = controller
    port = free_port()
    address = f"tcp://127.0.0.1:{port}"
    command = [sys.executable, "-m", "smd_daemon", "serve", "--model", "tiny", "--bind", address, "--threads", "1"]
    (tmp_path / "managed_daemon.json").write_text(
        json.dumps({"command": command, "address": address, "log": str(tmp_path / "d.log"), "venv": ROOT})
    )
    ctl.managed = ManagedDaemon(folder=str(tmp_path))
    ctl.start_managed()
    try:
        assert run_until(lambda: ctl.state == "connected", 120), (tmp_path / "d.log").read_text()
        ctl.stop_managed()
        assert ctl.client is None and ctl.status_text()[0] == "not connected: press Connect"
        assert run_until(lambda: not ctl.managed.running, 30)
        run_until(lambda: False, 2.0)  # a while later: still nothing reconnects
        assert ctl.client is None and "reconnects" not in ctl.status_text()[0]
    finally:
        ctl.managed.stop(wait=True)


def test_the_background_image_holds_only_what_the_daemon_flags(daemon, controller):
    """Against the daemon's own reading: a region, a # sketch and a filter layer (whose pixels are the
    whole picture below it) stay out of every background image sent; the bg: layer is in it."""
    from smd_krita.transport import client as client_mod

    ctl, doc = controller
    sketch = add(doc, "# sketch lines")
    sketch.setPixelData(bgra(0, 0, 0, 255, 64 * 4), 0, 60, 64, 4)
    meadow = add(doc, "bg: a meadow | strength: 0.5")
    meadow.setPixelData(bgra(0, 160, 0, 255, 32 * 16), 32, 0, 32, 16)
    add(doc, "Filter Layer 1 (Levels)", kind="filterlayer")
    sent = []
    real = client_mod.Client.update_scene, client_mod.Client.set_scene

    def spy(fn):
        def wrapped(self, *a, **kw):
            sent.append(kw.get("background_image"))
            return fn(self, *a, **kw)

        return wrapped

    client_mod.Client.update_scene, client_mod.Client.set_scene = spy(real[0]), spy(real[1])
    try:
        ctl.set_setting("address", daemon.address)
        ctl.connect_daemon()
        assert run_until(lambda: any(b is not None for b in sent), 60), ctl.status_text()
        ctl.set_live(True)
        assert run_until(lambda: ctl.frame_event is not None, 60), ctl.error
    finally:
        client_mod.Client.update_scene, client_mod.Client.set_scene = real
    images = [b for b in sent if b is not None]
    assert images and sent[0] is None, "none before the daemon said which layers join"
    for image in images:

        def at(x, y):
            o = (y * 64 + x) * 3
            return image[o : o + 3]

        assert at(4, 4) == b"\xff\xff\xff", "the fox region is not in it"
        assert at(4, 62) == b"\xff\xff\xff", "nor the # sketch"
        assert at(40, 4) == b"\x00\xa0\x00", "the bg: layer is"
    rows = {r.name: r.role for r in ctl.rows}
    assert rows["Filter Layer 1 (Levels)"] == "filter" and rows["# sketch lines"] == "ignored"


def test_a_refusal_for_the_origins_share_is_shown_in_words(controller, tmp_path):
    """Beyond its share of sessions (here: one local user on ipc://), the docker says
    whose share is taken; it tries again by itself and gets in once one is free."""
    d = Daemon("--max-sessions", "2", bind=f"ipc://{tmp_path}/smd.sock")
    other = None
    try:
        d.wait_serving()
        other = connect(d.address, name="another window")
        ctl, doc = controller
        ctl.set_setting("address", d.address)
        ctl.connect_daemon()
        assert run_until(lambda: "refused" in ctl.status_text()[0], 30), ctl.status_text()
        words = ctl.status_text()[0]
        assert "the daemon refused the connection: local user" in words and "already holds 1 of the 2" in words
        other.close()
        assert run_until(lambda: ctl.state == "connected", 30), ctl.status_text()
    finally:
        if other is not None:
            other.close()
        d.stop()
        d.close()

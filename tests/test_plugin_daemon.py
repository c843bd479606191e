"""The plugin's controller in the test process (Qt offscreen, the fake krita)
against a real ``smd-daemon serve --model tiny``: the daemon's reading of
every layer before Live, state codes in words, and the region-mode choice."""

import pytest
from daemon_util import running
from plugin_unit import env  # noqa: F401  (Qt, the fake krita, the plugin on sys.path)
from plugin_unit.fakes import live_controller, run_until


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

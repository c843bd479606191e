"""The live scheduler: throttle and debounce on a clock the test moves (no sleeping)."""

from plugin_unit import env  # noqa: F401  (Qt, the fake krita, the plugin on sys.path)
from plugin_unit.fakes import Clock
from smd_krita.scheduler import DEBOUNCE_S, MAX_IN_FLIGHT, MAX_WAIT_S, MIN_GAP_S, LiveScheduler

EPS = 1e-6  # the clock is a float: land just past a threshold


def make():
    clock = Clock()
    return LiveScheduler(clock), clock


def test_first_change_after_a_pause_goes_out_at_once():
    s, clock = make()
    s.notice("a")
    assert s.due(pending=True)
    s.sent(1)
    s.answered(1)
    clock.advance(5)
    s.notice("b")
    assert s.due(pending=True), "idle daemon, long pause: no waiting"


def test_nothing_pending_is_never_due():
    s, clock = make()
    s.notice("a")
    clock.advance(10)
    assert not s.due(pending=False)


def test_a_stroke_is_held_until_the_artist_pauses():
    s, clock = make()
    s.notice("a")
    s.sent(1)  # unanswered: not idle
    clock.advance(MIN_GAP_S + EPS)
    s.notice("b")
    assert not s.due(pending=True), "still changing, daemon busy: held"
    clock.advance(DEBOUNCE_S + EPS)
    assert s.due(pending=True), "quiet for the debounce time: sent"


def test_a_long_stroke_is_sent_at_least_every_max_wait():
    s, clock = make()
    s.notice(0)
    s.sent(1)
    t0 = clock.now
    i = 0
    while not s.due(pending=True):
        i += 1
        clock.advance(0.02)
        s.notice(i)  # changes every 20 ms, never quiet
        assert clock.now - t0 <= MAX_WAIT_S + 0.05
    assert clock.now - t0 >= MAX_WAIT_S - 1e-9


def test_never_closer_than_min_gap():
    s, clock = make()
    s.notice("a")
    s.sent(1)
    s.answered(1)
    s.notice("b")
    clock.advance(MIN_GAP_S / 2)
    assert not s.due(pending=True)
    clock.advance(MIN_GAP_S / 2 + EPS)
    assert s.due(pending=True)


def test_in_flight_revisions_are_bounded_until_answered():
    s, clock = make()
    for rev in range(1, MAX_IN_FLIGHT + 1):
        s.notice(rev)
        clock.advance(1)
        assert s.due(pending=True)
        s.sent(rev)
    clock.advance(1)
    s.notice("more")
    clock.advance(1)
    assert s.in_flight() == MAX_IN_FLIGHT
    assert not s.due(pending=True)
    assert s.due(pending=True, bounded=False)
    s.answered(MAX_IN_FLIGHT)  # answering the newest answers the older ones too
    assert s.in_flight() == 0
    assert s.due(pending=True)


def test_latency_is_measured_from_noticing_once_per_revision():
    s, clock = make()
    s.notice("a")
    clock.advance(0.5)
    s.sent(1)
    clock.advance(0.25)
    assert abs(s.answered(1) - 0.75) < 1e-9
    assert s.answered(1) is None, "a later frame of the same revision measures nothing"


def test_a_request_without_an_edit_is_timed_from_the_request():
    """Live pressed (or Generate) long after the last edit: the latency is not the time since that edit."""
    s, clock = make()
    s.notice("a")
    s.sent(1)
    s.answered(1)
    clock.advance(15.0)  # the artist looks at the painting, then presses Live
    s.notice("a")  # nothing changed
    s.sent(2)
    clock.advance(0.3)
    assert abs(s.answered(2) - 0.3) < 1e-9
    clock.advance(40.0)
    s.notice("b")  # an edit, noticed now
    clock.advance(0.1)
    s.sent(3)
    clock.advance(0.2)
    assert abs(s.answered(3) - 0.3) < 1e-9, "timed from the edit it carries"


def test_reset_forgets_unanswered_revisions():
    s, clock = make()
    s.notice("a")
    s.sent(1)
    s.sent(2)
    s.reset()
    assert s.in_flight() == 0
    assert s.answered(2) is None, "an outage: nothing counted across it"

"""The daemon as artists meet it: a real ``smd-daemon serve --model tiny``
subprocess on a loopback port, driven through the client library and raw pyzmq."""

from __future__ import annotations

import io
import time

import pytest
from daemon_util import Daemon, Raw, S, connect, half_mask
from PIL import Image

from smd_daemon import protocol
from smd_daemon.client import CancelledEvent, ErrorEvent, FrameEvent, Layer, ProgressEvent, SceneEvent

E = protocol.ErrorCode


@pytest.fixture(scope="module")
def daemon():
    d = Daemon("--heartbeat-timeout", "2", "--max-message-mb", "1", "--max-fps", "60")
    try:
        d.wait_serving()
        yield d
        assert d.stop() == 0, d.text()
    finally:
        d.close()


@pytest.fixture
def client(daemon):
    c = connect(daemon.address, name="test")
    yield c
    c.close()


def fox_scene(c, prompt="a red fox", **kw) -> int:
    return c.set_scene(
        S,
        S,
        [Layer("1", prompt, half_mask()), Layer("2", "Paint Layer 2", half_mask(left=False))],
        background_prompt="snowy forest",
        **kw,
    )


def next_frame(c, timeout=20.0, job=None) -> FrameEvent:
    ev = c.wait_for(lambda e: isinstance(e, FrameEvent) and e.job == job, timeout)
    assert ev is not None, f"no frame within {timeout} s ({c.state}: {c.state_reason})"
    return ev


def test_handshake_reports_model_limits_and_capabilities(daemon):
    raw = Raw(daemon.address)
    try:
        w = raw.handshake(open_session=False).header
        assert w["protocol"] == protocol.PROTOCOL_VERSION
        assert w["model"]["name"] == "tiny"
        lim = w["limits"]
        for key in (
            "max_sessions",
            "max_regions",
            "max_side",
            "max_prompt_chars",
            "max_message_bytes",
            "max_fps",
            "heartbeat_timeout",
        ):
            assert key in lim
        assert lim["max_message_bytes"] == 2**20 and lim["heartbeat_timeout"] == 2
        assert {"raw", "png", "jpeg"} <= set(w["capabilities"]["frame_encodings"])
    finally:
        raw.close()


def test_scene_reply_reads_layer_names(client):
    rev = fox_scene(client)
    ev = client.wait_for(lambda e: isinstance(e, (SceneEvent, ErrorEvent)), 10)
    assert isinstance(ev, SceneEvent) and ev.revision == rev and ev.regions == 1
    roles = {d["name"]: d["role"] for d in ev.layers}
    assert roles == {"a red fox": "region", "Paint Layer 2": "ignored"}
    assert ev.layers[1]["reason_code"] == "automatic_name"


def test_scene_reply_explains_every_layer_with_a_code(client):
    layers = [
        Layer("g", "characters", None, group=True),
        Layer("1", "a fox | strenght: 2", half_mask()),
        Layer("2", "Ebene 2", half_mask()),
        Layer("3", "# sketch", half_mask()),
        Layer("4", "a cat", half_mask(), visible=False),
        Layer("5", "an owl", bytes(S * S)),
        Layer("6", "SMD Preview", half_mask()),
    ]
    rev = client.set_scene(S, S, layers)
    ev = client.wait_for(lambda e: isinstance(e, (SceneEvent, ErrorEvent)) and getattr(e, "revision", rev) == rev, 10)
    assert isinstance(ev, SceneEvent), ev
    read = [(d["name"], d["role"], d.get("reason_code"), d.get("warning_codes")) for d in ev.layers]
    assert read == [
        ("characters", "ignored", "group", None),
        ("a fox | strenght: 2", "region", None, ["unknown_option"]),
        ("Ebene 2", "ignored", "automatic_name", None),
        ("# sketch", "ignored", "marker", None),
        ("a cat", "ignored", "hidden", None),
        ("an owl", "ignored", "empty", None),
        ("SMD Preview", "ignored", "plugin_layer", None),
    ]
    assert ev.layers[0]["reason"] == "a group: its layers are read one by one"
    # A partial update keeps a layer a group until it says otherwise.
    rev = client.update_scene([Layer("g", "renamed group", None, group=True)])
    ev = client.wait_for(lambda e: isinstance(e, SceneEvent) and e.revision == rev, 10)
    assert ev.layers[0]["reason_code"] == "group"


def test_stream_reflects_midstream_partial_update_within_bound(client):
    fox_scene(client)
    client.start_live("raw")
    f = next_frame(client)
    assert (f.width, f.height, f.channels, f.encoding) == (S, S, 3, "raw") and len(f.data) == S * S * 3
    bound = f.header["steps_in_flight"]
    assert bound >= 1
    rev = client.update_scene([Layer("1", "a blue fox | blur: 2", half_mask())])
    scene = client.wait_for(lambda e: isinstance(e, SceneEvent) and e.revision == rev, 10)
    assert scene.layers[0]["prompt"] == "a blue fox" and scene.layers[0]["blur"] == 2
    # Frames already computed or in flight (window + one pending) may still
    # show the old revision; after that the update is fully visible within
    # the engine's bound of steps in flight.
    seen = []
    for _ in range(bound + 4):
        f = next_frame(client)
        seen.append((f.revision, f.settled))
        if f.revision == rev and f.settled:
            break
    assert seen[-1] == (rev, True), seen
    seqs_before = f.seq
    g = next_frame(client)
    assert g.seq > seqs_before


def test_partial_updates_rename_reorder_and_remove(client):
    fox_scene(client)
    client.wait_for(lambda e: isinstance(e, SceneEvent), 10)
    parts_before = client.revision
    # Rename only: the alpha plane is not resent, the daemon keeps it.
    rev = client.update_scene([Layer("1", "a grey wolf", half_mask())])
    ev = client.wait_for(lambda e: isinstance(e, (SceneEvent, ErrorEvent)), 10)
    assert isinstance(ev, SceneEvent) and ev.revision == rev == parts_before + 1
    assert [d["prompt"] for d in ev.layers] == ["a grey wolf", ""] and ev.regions == 1
    # A new layer on top, then a new order without layer "2".
    rev = client.update_scene([Layer("3", "a red kite", half_mask(left=False))], order=["3", "1"], seed=9)
    ev = client.wait_for(lambda e: isinstance(e, (SceneEvent, ErrorEvent)), 10)
    assert isinstance(ev, SceneEvent) and ev.revision == rev
    assert [d["name"] for d in ev.layers] == ["a red kite", "a grey wolf"] and ev.regions == 2


def test_compressed_frames_decode(client):
    fox_scene(client)
    for enc in ("png", "jpeg", "webp"):
        client.start_live(enc, quality=70)
        f = next_frame(client)
        while f.encoding != enc:
            f = next_frame(client)
        im = Image.open(io.BytesIO(f.data))
        assert im.format.lower() == enc and im.size == (S, S)
    client.stop_live()


def test_live_can_stop_and_start_again(client):
    fox_scene(client)
    for _ in range(4):
        client.start_live("raw")
        next_frame(client)
        client.stop_live()
        client.poll(timeout_ms=100)  # frames made meanwhile are dropped, not left in the window
    client.start_live("raw")
    seqs = [next_frame(client).seq for _ in range(3)]
    assert seqs == sorted(seqs) and len(set(seqs)) == 3


def test_generate_reports_progress_and_returns_png(client):
    fox_scene(client, steps=3)
    job = client.generate("png")
    progress = []
    result = client.wait_for(
        lambda e: isinstance(e, FrameEvent) and e.job == job,
        30,
        on_event=lambda e: isinstance(e, ProgressEvent) and progress.append(e.step),
    )
    assert result is not None
    assert progress == [1, 2, 3]
    im = Image.open(io.BytesIO(result.data))
    assert im.format == "PNG" and im.size == (S, S)


def test_generate_with_steps_override_and_cancel(client):
    fox_scene(client)
    job = client.generate("png", steps=50)
    assert client.wait_for(lambda e: isinstance(e, ProgressEvent) and e.job == job, 30) is not None
    client.cancel(job)
    ev = client.wait_for(lambda e: isinstance(e, (CancelledEvent, FrameEvent)) and e.job == job, 30)
    assert isinstance(ev, CancelledEvent)
    # The daemon is free again: a new job runs to the end.
    job2 = client.generate("jpeg", steps=1)
    assert next_frame(client, job=job2).encoding == "jpeg"


def test_two_clients_stream_at_once(daemon):
    a, b = connect(daemon.address, name="a"), connect(daemon.address, name="b")
    try:
        fox_scene(a, "a red fox")
        fox_scene(b, "a green frog")
        a.start_live("raw")
        b.start_live("raw")
        got = {"a": 0, "b": 0}
        deadline = time.monotonic() + 30
        while min(got.values()) < 3 and time.monotonic() < deadline:
            for name, c in (("a", a), ("b", b)):
                got[name] += sum(isinstance(e, FrameEvent) for e in c.poll(timeout_ms=10))
        assert min(got.values()) >= 3, got
        # The busiest client (streaming and keeping its job queue full) does not
        # starve the other: rounds alternate, so b gets frames while a's jobs run.
        pending, done, b_seqs = set(), 0, []
        deadline = time.monotonic() + 60
        while done < 6 and time.monotonic() < deadline:
            while len(pending) < 3:
                pending.add(a.generate("jpeg", steps=2))
            for e in a.poll(timeout_ms=5):
                if isinstance(e, (FrameEvent, CancelledEvent)) and e.job in pending:
                    pending.discard(e.job)
                    done += isinstance(e, FrameEvent)
                elif isinstance(e, ErrorEvent):
                    pending.discard(e.header.get("job", e.re))
            b_seqs += [e.seq for e in b.poll(timeout_ms=5) if isinstance(e, FrameEvent)]
        assert done >= 6, done
        assert len(b_seqs) >= 2 and b_seqs[-1] - b_seqs[0] >= done // 2, (done, b_seqs)
    finally:
        a.close()
        b.close()


def test_stalled_client_gets_no_backlog_and_does_not_slow_others(daemon):
    slow = Raw(daemon.address)
    fast = connect(daemon.address, name="fast")
    try:
        slow.handshake()
        slow.live()
        fox_scene(fast)
        fast.start_live("raw")
        # The stalled client never acknowledges: the fast one keeps streaming.
        t0 = time.monotonic()
        frames = []
        for _ in range(8):
            frames.append(next_frame(fast))
            slow.send("ping")  # alive, but never acknowledging a frame
        elapsed = time.monotonic() - t0
        assert frames[-1].seq - frames[0].seq == 7
        stalled, tokens = [], []
        while (m := slow.recv(0.2)) is not None:
            if m.type == "frame":
                stalled.append(m.header["seq"])
                tokens.append(m.header["token"])
        window = fast.limits["frame_window"]
        assert stalled == list(range(1, window + 1)), stalled  # the window, nothing more
        # Acknowledging delivers the newest frame, not a backlog: one pending frame
        # at most was kept while stalled.
        slow.send("ack", seq=stalled[-1], token=tokens[-1])
        m = slow.expect("frame", 10)
        assert m.header["seq"] == window + 1
        # The stalled session was stepped only for the frames it could take
        # (the window plus one pending); after that the fast one ran alone.
        batches = [f.header["batch"] for f in frames]
        assert sum(b > 1 for b in batches) <= window + 1 and batches[-1] == 1, batches
        assert elapsed < 60
    finally:
        slow.close()
        fast.close()


def test_heartbeat_timeout_frees_session(daemon):
    raw = Raw(daemon.address)
    try:
        raw.handshake()
        # Silent for longer than the 2 s timeout: the daemon frees the session and says so.
        bye = raw.expect("bye", 6)
        assert "heartbeat" in bye.header["reason"]
        raw.send("live_start")
        err = raw.expect("error")
        assert err.header["code"] == E.HANDSHAKE_REQUIRED
    finally:
        raw.close()
    assert "no heartbeat" in daemon.text()


def test_client_heartbeats_keep_session_alive(client):
    fox_scene(client)
    session = client.session
    end = time.monotonic() + 3.5  # longer than the daemon's 2 s timeout
    while time.monotonic() < end:
        client.poll(timeout_ms=50)
    assert client.state == "connected" and client.session == session


# --- bad input: each row gets an error reply with a code, and the daemon keeps serving -------------


def _update(**over):
    fields = dict(
        revision=1, full=True, width=S, height=S, layers=[{"key": "1", "name": "a red fox", "alpha": {"part": 0}}]
    )
    fields.update(over)
    return fields


BAD_REQUESTS = [
    # (id, frames or (type, parts, fields), expected code, opened session first)
    ("non-json header", [b"\x00not json"], E.BAD_MESSAGE, False),
    ("json but not an object", [b"[1, 2, 3]"], E.BAD_MESSAGE, False),
    ("invalid utf-8", [b'{"v": 2, "type": "\xff"}'], E.BAD_MESSAGE, False),
    ("wrong protocol version", [b'{"v": 99, "type": "hello", "protocol": 99}'], E.BAD_VERSION, False),
    ("unknown type", ("reboot", [], {}), E.UNKNOWN_TYPE, True),
    ("missing field", ("ack", [], {}), E.BAD_FIELD, True),
    ("wrongly typed field", ("update", [half_mask()], _update(revision="1")), E.BAD_FIELD, True),
    ("bool for an int", ("ack", [], {"seq": True}), E.BAD_FIELD, True),
    ("NaN", [b'{"v":2,"type":"live_start","max_fps":NaN}'], E.BAD_MESSAGE, True),
    ("negative seed", ("update", [half_mask()], _update(seed=-1)), E.BAD_FIELD, True),
    ("huge width", ("update", [half_mask()], _update(width=10**9)), E.BAD_FIELD, True),
    ("width over the limit", ("update", [b"\xff" * 8192 * 64], _update(width=8192)), E.TOO_LARGE, True),
    ("width not a multiple of 8", ("update", [half_mask()], _update(width=65)), E.BAD_FIELD, True),
    ("strength out of range", ("update", [half_mask()], _update(background={"strength": 2})), E.BAD_FIELD, True),
    ("alpha plane of the wrong size", ("update", [b"\xff" * 100], _update()), E.BAD_IMAGE, True),
    ("missing binary part", ("update", [], _update()), E.BAD_FIELD, True),
    (
        "undecodable png alpha",
        (
            "update",
            [b"\x89PNG\r\n\x1a\nrubbish"],
            _update(layers=[{"key": "1", "name": "fox", "alpha": {"part": 0, "encoding": "png"}}]),
        ),
        E.BAD_IMAGE,
        True,
    ),
    (
        "zlib bomb",
        (
            "update",
            [__import__("zlib").compress(b"\0" * (50 * 2**20))],
            _update(layers=[{"key": "1", "name": "fox", "alpha": {"part": 0, "encoding": "zlib"}}]),
        ),
        E.BAD_IMAGE,
        True,
    ),
    (
        "undecodable background image",
        ("update", [half_mask(), b"GIF89a-not-really"], _update(background={"image": {"part": 1, "encoding": "webp"}})),
        E.BAD_IMAGE,
        True,
    ),
    (
        "too many regions",
        (
            "update",
            [half_mask()] * 17,
            _update(layers=[{"key": str(i), "name": f"fox {i}", "alpha": {"part": i}} for i in range(17)]),
        ),
        E.TOO_MANY_REGIONS,
        True,
    ),
    (
        "prompt too long",
        ("update", [half_mask()], _update(layers=[{"key": "1", "name": "x" * 1500, "alpha": {"part": 0}}])),
        E.TOO_LARGE,
        True,
    ),
    ("steps over the limit", ("update", [half_mask()], _update(steps=500)), E.BAD_FIELD, True),
    ("too many parts in total", ("update", [b"\0" * (600 * 1024)] * 2, _update()), E.TOO_LARGE, True),
    ("update before hello", ("update", [half_mask()], _update()), E.HANDSHAKE_REQUIRED, False),
    ("update before open", ("update", [half_mask()], _update()), E.NO_SESSION, False),
    ("live before open", ("live_start", [], {}), E.NO_SESSION, False),
    ("partial update first", ("update", [], _update(full=False)), E.NO_SCENE, True),
    ("generate before a scene", ("generate", [], {}), E.NO_SCENE, True),
    ("cancel of an unknown job", ("cancel", [], {"job": 12345}), E.BAD_FIELD, True),
    ("unknown frame encoding", ("live_start", [], {"encoding": "gif"}), E.BAD_FIELD, True),
]


@pytest.mark.parametrize("frames,code,opened", [r[1:] for r in BAD_REQUESTS], ids=[r[0] for r in BAD_REQUESTS])
def test_bad_request_gets_error_and_daemon_keeps_serving(daemon, client, frames, code, opened):
    raw = Raw(daemon.address)
    try:
        if opened:
            raw.handshake()
        elif code not in (E.HANDSHAKE_REQUIRED, E.BAD_VERSION):
            raw.handshake(open_session=False)
        if isinstance(frames, tuple):
            type_, parts, fields = frames
            raw.send(type_, parts, id=7, **fields)
        else:
            raw.send_frames(frames)
        err = raw.expect("error")
        assert err.header["code"] == code, err.header
        assert err.header["message"]
        if isinstance(frames, tuple):
            assert err.header.get("re") == 7
        # The same connection still works, and so does everyone else.
        raw.send("hello", protocol=protocol.PROTOCOL_VERSION)
        raw.expect("welcome")
    finally:
        raw.close()
    fox_scene(client)
    assert client.wait_for(lambda e: isinstance(e, SceneEvent), 10) is not None


JUNK = [None, -1, 0, 1e308, -1e308, "x", "", [], {}, True, 2**64, "a" * 5000, [1, "b"], {"part": 0}, 3.5, 65]


def _mutate(fields: dict, rng) -> None:
    value = rng.choice(JUNK)
    where = rng.choice(["top", "layer", "alpha", "background"])
    layer = (
        fields["layers"][0]
        if isinstance(fields.get("layers"), list) and fields["layers"] and isinstance(fields["layers"][0], dict)
        else None
    )
    if where == "top":
        fields[
            rng.choice(
                [
                    "revision",
                    "full",
                    "width",
                    "height",
                    "seed",
                    "steps",
                    "guidance_scale",
                    "mask_mode",
                    "negative_prompt",
                    "layers",
                    "order",
                    "background",
                ]
            )
        ] = value
    elif where == "layer" and layer is not None:
        layer[rng.choice(["key", "name", "visible", "alpha"])] = value
    elif where == "alpha" and layer is not None and isinstance(layer.get("alpha"), dict):
        layer["alpha"][rng.choice(["part", "encoding"])] = value
    else:
        fields["background"] = {rng.choice(["prompt", "negative_prompt", "strength", "image"]): value}


def test_random_malformed_updates_each_get_one_reply_and_break_nothing(daemon, client):
    import json
    import random

    rng = random.Random(3)
    raw = Raw(daemon.address)
    n = 150
    try:
        raw.handshake()
        for i in range(n):
            fields = json.loads(json.dumps(_update(revision=i + 1)))
            for _ in range(rng.randint(1, 3)):
                _mutate(fields, rng)
            raw.send("update", [half_mask()] * rng.randint(0, 2), id=i, **fields)
        replies = {}
        while len(replies) < n and (m := raw.recv(10)) is not None:
            if m.type in ("scene", "error"):
                replies[m.header.get("re")] = m.header.get("code", "ok")
        assert len(replies) == n, f"{n - len(replies)} requests got no reply"
        assert "internal_error" not in replies.values()
        assert set(replies.values()) - {"ok"}, "the mutations should have produced errors"
    finally:
        raw.close()
    fox_scene(client)
    assert client.wait_for(lambda e: isinstance(e, SceneEvent), 10) is not None


def test_rejected_update_keeps_the_previous_scene(daemon):
    raw = Raw(daemon.address)
    try:
        raw.handshake()
        raw.send("update", [half_mask()], **_update(revision=5))
        assert raw.expect("scene").header["revision"] == 5
        raw.send("update", [b"short"], **_update(revision=6, full=False))
        err = raw.expect("error")
        assert err.header["code"] == E.BAD_IMAGE and err.header["revision"] == 6
        raw.send("update", [], **_update(revision=5, full=False, layers=[]))
        assert raw.expect("error").header["code"] == E.STALE_REVISION
        # A rename alone (no alpha) reuses the kept plane: nothing was lost.
        raw.send("update", revision=7, full=False, layers=[{"key": "1", "name": "a grey wolf"}])
        scene = raw.expect("scene").header
        assert scene["regions"] == 1 and scene["layers"][0]["prompt"] == "a grey wolf"
    finally:
        raw.close()


def test_oversized_part_is_dropped_before_allocation(daemon, client):
    raw = Raw(daemon.address)
    try:
        raw.handshake()
        # Over MAXMSGSIZE (1 MiB here): ZeroMQ drops the connection unread, so no reply.
        raw.send("update", [b"\0" * (2 * 2**20)], **_update())
        assert raw.recv(1.0) is None
    finally:
        raw.close()
    fox_scene(client)
    assert client.wait_for(lambda e: isinstance(e, SceneEvent), 10) is not None


def test_flood_is_rate_limited_and_daemon_recovers(daemon, client):
    raw = Raw(daemon.address, sndhwm=100000)
    try:
        raw.handshake()
        for _ in range(3000):
            raw.send("ping")
        codes = []
        while (m := raw.recv(1.0)) is not None:
            if m.type == "error":
                codes.append(m.header["code"])
        assert E.RATE_LIMITED in codes
        time.sleep(1.0)
        raw.send("ping")
        raw.expect("pong")
    finally:
        raw.close()
    fox_scene(client)
    assert client.wait_for(lambda e: isinstance(e, SceneEvent), 10) is not None


def test_client_refuses_alpha_of_wrong_size(client):
    from smd_daemon.client import ClientError

    with pytest.raises(ClientError, match="alpha plane"):
        client.set_scene(S, S, [Layer("1", "fox", b"\xff" * 10)])


def test_region_mode_is_a_scene_setting_and_unknown_modes_are_refused(daemon, client):
    raw = Raw(daemon.address)
    try:
        assert raw.handshake(open_session=False).header["capabilities"]["region_modes"] == ["latent", "attention"]
    finally:
        raw.close()
    fox_scene(client, region_mode="attention", steps=2)
    assert isinstance(client.wait_for(lambda e: isinstance(e, (SceneEvent, ErrorEvent)), 10), SceneEvent)
    client.start_live("raw")
    assert next_frame(client).header["steps_in_flight"] == 2
    rev = client.update_scene(region_mode="fancy")
    err = client.wait_for(lambda e: isinstance(e, ErrorEvent), 10)
    assert err.code == E.BAD_FIELD and "region_mode" in err.message
    # The previous scene keeps streaming; a valid partial update switches the mode.
    assert next_frame(client).revision == rev - 1
    rev = client.update_scene(region_mode="latent", steps=1)
    ev = client.wait_for(lambda e: isinstance(e, (SceneEvent, ErrorEvent)), 10)
    assert isinstance(ev, SceneEvent) and ev.revision == rev
    f = next_frame(client)
    while f.revision != rev:
        f = next_frame(client)
    assert f.header["steps_in_flight"] == 1 and f.settled

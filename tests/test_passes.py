"""Engine work in bounded passes: what the daemon's scheduler relies on."""

import threading

import numpy as np
import pytest
import torch
from engine_util import count_unet_forwards, max_diff, recording

from smd_daemon.engine import vae as V
from smd_daemon.engine.scene import Background, Cancelled, Region, Scene

S = 128


def _scene(prompt_b="snowy pine forest", seed=1, size=S, **kw):
    a = np.zeros((size, size), np.uint8)
    a[:, : size // 2] = 255
    b = np.zeros((size, size), np.uint8)
    b[size // 4 : size - 8, size // 3 : size - 4] = 200
    return Scene(
        size,
        size,
        [Region("a red fox", a), Region(prompt_b, b)],
        background=Background("a blue sky"),
        seed=seed,
        steps=4,
        **kw,
    )


def _run_passes(work, max_samples):
    ran = []
    while not work.done:
        left = work.samples_left
        n = work.run(max_samples)
        assert work.samples_left == left - n
        ran.append(n)
    return ran


@pytest.mark.parametrize("max_samples", [1, 4])
def test_passes_of_any_size_give_the_frames_of_one_whole_step(engine, max_samples):
    scenes = [
        _scene(seed=1),
        _scene(prompt_b="a castle on a hill", seed=2, guidance_scale=2.0),
        _scene(seed=3, region_mode="attention"),
    ]
    whole = [engine.open_stream(s) for s in scenes]
    passes = [engine.open_stream(s) for s in scenes]
    sizes, restore = count_unet_forwards(engine)
    try:
        for _ in range(5):
            expect = engine.step_streams(whole)
            sizes.clear()
            work = engine.begin_streams(passes)
            total = work.samples_total
            ran = _run_passes(work, max_samples)
            got = work.frames()
            assert sum(ran) == total == sum(sizes)
            if max_samples is not None:
                # one sample of a guided scene is two rows (conditional and unconditional)
                assert max(sizes) <= max(max_samples, 2)
            assert ran[-len(scenes) :] == [0] * len(scenes)  # one finishing pass per stream
            for g, e in zip(got, expect):
                assert (g.index, g.revision, g.settled) == (e.index, e.revision, e.settled)
                assert max_diff(g.image, e.image) <= 1
    finally:
        restore()


def test_generate_in_passes_reports_progress_and_matches(engine):
    scene = _scene()
    expect = engine.generate(scene)
    work = engine.begin_generate(scene)
    assert work.progress == (0, 4) and work.samples_total == work.samples_left > 0
    seen = []
    while not work.done:
        work.run(2)
        seen.append(work.progress[0])
    assert seen[-1] == 4 and seen == sorted(seen)
    assert max_diff(work.image(), expect) <= 1


def test_share_splits_the_samples_between_streams(engine):
    one = _scene()
    one.regions = one.regions[:1]
    small, big = engine.open_stream(one), engine.open_stream(_scene(guidance_scale=3.0))
    for _ in range(4):
        engine.step_streams([small, big])
    work = engine.begin_streams([small, big])
    assert sum(work.share) == pytest.approx(1)
    rows = [sum(lv.n for lv in small.plan.levels), 2 * sum(lv.n for lv in big.plan.levels)]  # guided: 2 rows
    assert work.share == pytest.approx([rows[0] / sum(rows), rows[1] / sum(rows)])
    assert work.samples_total == sum(rows)
    with pytest.raises(RuntimeError):
        work.frames()


def test_work_dropped_before_its_finishing_pass_leaves_the_stream_as_it_was(engine):
    a, b = engine.open_stream(_scene()), engine.open_stream(_scene())
    for _ in range(3):
        engine.step_streams([a, b])
    work = engine.begin_streams([a])
    work.run(1)
    del work
    assert max_diff(a.step().image, b.step().image) == 0


def test_large_canvas_decodes_one_tile_per_pass(engine):
    m = np.zeros((128, 1024), np.uint8)
    m[:, 400:700] = 255
    scene = Scene(
        1024, 128, [Region("a red fox", m)], background=Background("a long beach"), steps=2, bootstrap_steps=0
    )
    with recording(engine.model.components.vae, "decode", lambda z: tuple(z.shape[-2:])) as decoded:
        stream = engine.open_stream(scene)
        work = engine.begin_streams([stream])
        ran = _run_passes(work, None)
        frame = work.frames()[0]
    assert frame.image.shape == (128, 1024, 3)
    tiles = V.tile_grid(16, 128, engine.model.window)
    assert len(tiles) == 3 and decoded == [(16, 64)] * 3
    assert ran == [work.samples_total, 0, 0, 0]  # one UNet pass, then one pass per decoder tile


def test_tiled_decode_blends_tiles_without_seams():
    # A smooth latent decodes to a smooth image: where tiles overlap, the
    # ramp-weighted blend leaves no step between neighbouring columns.
    from smd_daemon.engine.tiny import build_tiny_autoencoder

    vae = build_tiny_autoencoder()
    z = torch.linspace(-1, 1, 128).view(1, 1, 1, 128).expand(1, 4, 16, 128).contiguous()
    dec = V.Autoencoder(vae, torch.device("cpu"), torch.float32, 8, 64, 1.0).decoder(z)
    while not dec.done:
        dec.run()
    img, finite = dec.result()
    whole = V.Autoencoder(vae, torch.device("cpu"), torch.float32, 8, 1024, 1.0).decoder(z)
    whole.run()
    ref, _ = whole.result()
    assert finite and img.shape == ref.shape == (128, 1024, 3)
    # TAESD's receptive field is local: blended tiles agree with the whole decode.
    assert np.abs(img.astype(int) - ref.astype(int)).mean() < 1.0


def test_large_background_image_is_encoded_in_tiles(engine):
    rng = np.random.default_rng(0)
    img = rng.integers(0, 255, (128, 1024, 3), dtype=np.uint8)
    with recording(engine.model.components.vae, "encode", lambda x: tuple(x.shape[-2:])) as sizes:
        z = engine.model.encode_image(img)
    assert z.shape == (1, 4, 16, 128)
    assert len(sizes) == 3 and all(h <= 512 and w <= 512 for h, w in sizes)


@pytest.mark.parametrize("height, width", [(768, 640), (128, 1024), (256, 256)])
def test_white_latent_is_one_tile_encode_that_equals_the_full_encode(engine, height, width):
    full = engine.model.autoencoder.encode(np.full((height, width, 3), 255, np.uint8))
    with recording(engine.model.components.vae, "encode", lambda x: tuple(x.shape[-2:])) as encoded:
        white = engine.model.white_latent(height, width)
    assert encoded == [(min(height, 512), min(width, 512))]  # one tile, whatever the canvas
    assert white.shape == full.shape
    assert torch.allclose(white.float(), full.float(), rtol=0, atol=1e-5)


def test_a_new_canvas_size_with_the_same_tiles_needs_no_vae_call(engine):
    engine.model.white_latent(768, 640)
    with recording(engine.model.components.vae, "encode", lambda x: tuple(x.shape[-2:])) as encoded:
        white = engine.model.white_latent(2048, 1536)
    assert encoded == [] and white.shape == (1, 4, 256, 192)


def test_a_plan_stops_between_image_tiles_when_cancelled(engine):
    img = np.random.default_rng(0).integers(0, 256, (1024, 1024, 3), dtype=np.uint8)  # nine VAE tiles
    scene = _scene(size=1024)
    scene.background = Background("a blue sky", image=img, strength=0.5)
    with recording(engine.model.components.vae, "encode", lambda x: tuple(x.shape[-2:])) as encoded:
        with pytest.raises(Cancelled):
            engine.plan(scene, cancel=lambda: len(encoded) >= 3)  # the white tile, then two of the image's
        assert len(encoded) == 3
        plan = engine.plan(scene)  # nothing half-encoded was kept
    assert len(encoded) == 3 + 9 and plan.bg_image.shape == (1, 4, 128, 128)


def test_a_cancelled_plan_asks_before_any_work(engine):
    calls, restore = count_unet_forwards(engine)
    with recording(engine.model.components.text_encoder, "forward", lambda ids: ids.shape[0]) as encoded:
        with pytest.raises(Cancelled):
            engine.generate(_scene(prompt_b="a prompt never encoded before"), cancel=lambda: True)
    restore()
    assert encoded == [] and calls == []


def test_plan_runs_on_another_thread_while_passes_run(engine):
    stream = engine.open_stream(_scene())
    twin = engine.open_stream(_scene())
    plans, errors = [], []

    def planner():
        try:
            for k in range(6):
                plans.append(engine.plan(_scene(prompt_b=f"a castle number {k}", region_mode="attention")))
        except Exception as e:  # noqa: BLE001 - reported below
            errors.append(e)

    t = threading.Thread(target=planner)
    t.start()
    while t.is_alive():
        work = engine.begin_streams([stream])
        while not work.done:
            work.run(1)
        work.frames()
    t.join()
    assert not errors and len(plans) == 6
    # A plan made elsewhere is used as it is, and equals one made on this thread.
    edited = _scene(prompt_b="a castle number 5", region_mode="attention")
    stream.update(plans[-1].scene, revision=1, plan=plans[-1])
    twin.update(edited, revision=1)
    for _ in range(5):
        a, b = stream.step(), twin.step()
    assert a.revision == b.revision == 1 and max_diff(a.image, b.image) <= 1


def test_uint8_masks_draw_exactly_like_their_float_values(engine):
    as_u8 = _scene()
    as_float = _scene()
    for r in as_float.regions:
        r.mask = r.mask.astype(np.float32) / 255
    assert np.array_equal(engine.generate(as_u8), engine.generate(as_float))


def _tensor_bytes(*objs) -> int:
    seen, total = set(), 0

    def walk(o):
        nonlocal total
        if isinstance(o, torch.Tensor):
            st = o.untyped_storage()
            if st.data_ptr() not in seen:
                seen.add(st.data_ptr())
                total += st.nbytes()
        elif isinstance(o, (list, tuple)):
            for v in o:
                walk(v)
        elif hasattr(o, "__dataclass_fields__"):
            for k in o.__dataclass_fields__:
                walk(getattr(o, k))

    for o in objs:
        walk(o)
    return total


@pytest.mark.parametrize("mode", ["latent", "attention"])
def test_session_bytes_is_an_upper_estimate_from_shapes_alone(engine, mode):
    scene = _scene(size=256, region_mode=mode, guidance_scale=2.0)
    with recording(engine.model.components.text_encoder, "forward", len) as calls:
        estimate = engine.session_bytes(scene)
    assert not calls  # nothing planned or encoded
    stream = engine.open_stream(scene)
    stream.step()
    kept = _tensor_bytes(stream.plan, stream.x, stream.noise, stream.white_noise)
    assert kept < estimate < 20 * kept
    bigger = _scene(size=512, region_mode=mode)
    assert engine.session_bytes(bigger) > 3 * engine.session_bytes(_scene(size=256, region_mode=mode))


class _HostTouch(AssertionError):
    pass


@pytest.fixture
def no_host_values(monkeypatch):
    """Inside passes: no tensors made from Python values, no device value
    read back (each would be a host synchronisation on a GPU), except the
    frame's copy to the host (``Tensor.cpu``), counted."""
    copies = []

    def arm(copy_allowed=False):
        def refuse(name):
            def refuse(*a, **k):
                raise _HostTouch(f"{name} inside a pass")

            return refuse

        monkeypatch.setattr(torch, "tensor", refuse("torch.tensor"))
        for name in ("item", "tolist", "__bool__", "__int__", "__float__", "__index__", "numpy"):
            monkeypatch.setattr(torch.Tensor, name, refuse(f"Tensor.{name}"))
        real_cpu = torch.Tensor.cpu
        monkeypatch.setattr(
            torch.Tensor,
            "cpu",
            (lambda t, *a, **k: (copies.append(1), real_cpu(t, *a, **k))[1]) if copy_allowed else refuse("Tensor.cpu"),
        )

    return arm, monkeypatch.undo, copies


@pytest.mark.parametrize("mode", ["latent", "attention"])
def test_passes_touch_no_host_values_but_the_frame_copy(engine, no_host_values, mode):
    arm, disarm, copies = no_host_values
    streams = [
        engine.open_stream(_scene(region_mode=mode, bootstrap_steps=2)),
        engine.open_stream(_scene(seed=4, region_mode=mode, guidance_scale=2.0)),
    ]
    wide = np.zeros((128, 1024), np.uint8)
    wide[:, 300:700] = 255
    streams.append(
        engine.open_stream(
            Scene(
                1024, 128, [Region("a fox", wide)], background=Background("sand"), region_mode=mode, bootstrap_steps=1
            )
        )
    )
    for _ in range(3):  # bootstrap and plain levels
        work = engine.begin_streams(streams)
        copies.clear()
        arm()
        try:
            while work.samples_left:
                work.run(3)
            disarm()
            arm(copy_allowed=True)
            while not work.done:
                work.run()
        finally:
            disarm()
        assert len(copies) == len(streams)  # one copy per frame, nothing else
        work.frames()

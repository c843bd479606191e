"""Attention-region mode: every region in one UNet sample per latent."""

import numpy as np
import pytest
import torch
from engine_util import batched_and_solo, count_unet_forwards, edit_in_flight, frame_batches, max_diff

from smd_daemon.engine import attention as A
from smd_daemon.engine.core import Engine
from smd_daemon.engine.scene import Background, Region, Scene
from smd_daemon.grammar import LayerInput, build_scene

S = 128


def _masks():
    a = np.zeros((S, S), np.uint8)
    a[:, : S // 2] = 255
    b = np.zeros((S, S), np.uint8)
    b[S // 4 : S - 8, S // 2 + 8 : S - 4] = 255
    return a, b


def _scene(prompt_b="snowy pine forest", seed=1, **kw):
    a, b = _masks()
    kw.setdefault("region_mode", "attention")
    return Scene(
        S,
        S,
        [Region("a red fox", a, mask_std=2), Region(prompt_b, b, mask_std=2)],
        background=Background("a blue sky"),
        seed=seed,
        steps=4,
        **kw,
    )


@pytest.mark.parametrize("guidance", [1.0, 3.0])
def test_one_full_canvas_region_equals_plain_generation_with_its_prompt(engine, guidance):
    full = np.full((256, 256), 255, np.uint8)
    region = Region("a red fox", full, negative_prompt="blurry", mask_std=0, prompt_strength=1.0)
    attention = Scene(
        256,
        256,
        [region],
        background=Background("a blue sky", "ugly"),
        seed=3,
        guidance_scale=guidance,
        region_mode="attention",
    )
    # Plain generation: the prompt as the background of a scene without regions.
    plain = Scene(
        256, 256, [], background=Background("a red fox", "blurry"), seed=3, guidance_scale=guidance, bootstrap_steps=0
    )
    got, expect = engine.generate(attention), engine.generate(plain)
    assert got.std() > 5 and max_diff(got, expect) <= 1


def test_a_frame_is_one_sample_per_level_whatever_the_regions(engine):
    stream = engine.open_stream(_scene())
    calls = frame_batches(engine, stream, 6)
    assert calls[5] == stream.steps_in_flight == 4  # steady state: T samples, not T x (regions + 1)
    calls, restore = count_unet_forwards(engine)
    try:
        engine.generate(_scene())
    finally:
        restore()
    assert calls == [1, 1, 1, 1]


def test_changing_one_prompt_changes_mostly_its_own_area(engine):
    a = engine.generate(_scene())
    b = engine.generate(_scene(prompt_b="a castle on a hill"))
    change = np.abs(a.astype(int) - b.astype(int)).mean(-1)
    _, mask_b = _masks()
    inside, outside = change[mask_b > 0].mean(), change[mask_b == 0].mean()
    assert inside > 2 * outside and inside > 1


def test_ignored_layers_change_nothing(engine):
    a, b = _masks()
    base = [LayerInput("a red fox", a), LayerInput("snowy pine forest", b)]
    extra = [
        LayerInput("a hidden cat", b, visible=False),
        LayerInput("an empty layer", np.zeros_like(a)),
        LayerInput("# a note to self", a),
        LayerInput("Paint Layer 3", b),
    ]
    kw = dict(background_prompt="a blue sky", seed=2, region_mode="attention")
    plain, _ = build_scene(base, S, S, **kw)
    noisy, parsed = build_scene(base[:1] + extra + base[1:], S, S, **kw)
    assert [p.role for p in parsed].count("region") == 2
    assert np.array_equal(engine.generate(plain), engine.generate(noisy))


def test_deterministic_for_a_seed(engine):
    a, b, c = (engine.generate(_scene(seed=s)) for s in (7, 7, 8))
    assert np.array_equal(a, b) and max_diff(a, c) > 10


def test_regions_follow_their_masks_at_every_resolution():
    masks = torch.zeros(1, 2, 16, 16)
    masks[0, 0, :, :8] = 1
    masks[0, 1, 4:, 8:] = 0.5
    uncovered = (1 - masks.sum(1, keepdim=True)).clamp(0, 1)
    maps = A.region_weights(masks, uncovered, A.layer_sizes(16, 16, 4))
    assert [tuple(m.shape) for m in maps] == [(1, 3, 16, 16), (1, 3, 8, 8), (1, 3, 4, 4), (1, 3, 2, 2)]
    for m in maps:
        assert torch.allclose(m.sum(1), torch.ones(1, *m.shape[-2:]))
    full = maps[0][0]
    assert torch.all(full[1, :, :8] == 1) and torch.all(full[0, :4, 8:] == 1)
    assert torch.allclose(full[2, 4:, 8:], torch.full((12, 8), 0.5))  # half region, half background
    assert A.layer_sizes(13, 40, 4) == [(13, 40), (7, 20), (4, 10), (2, 5)]


def test_stream_edits_apply_without_a_flush(engine):
    stream, _, expect = edit_in_flight(engine, _scene(), _scene(prompt_b="a castle on a hill"), 4)
    assert max_diff(stream.step().image, expect) <= 1
    # ... and switching mode in a running stream keeps its levels in flight.
    stream.update(_scene(prompt_b="a castle on a hill", region_mode="latent"), revision=3)
    assert stream.step().revision == 3


def test_large_canvas_is_one_sample_per_window(engine):
    m = np.zeros((128, 1024), np.uint8)
    m[:, 400:700] = 255
    scene = Scene(
        1024,
        128,
        [Region("a red fox", m), Region("a boat", m[:, ::-1].copy())],
        background=Background("a long beach"),
        steps=2,
        region_mode="attention",
    )
    calls, restore = count_unet_forwards(engine)
    try:
        out = engine.generate(scene)
    finally:
        restore()
    assert out.shape == (128, 1024, 3) and out.std() > 5
    assert calls == [3, 3]  # three windows, every region inside each


def test_several_clients_with_different_region_counts_share_one_call_and_match_solo(engine):
    one = _scene(seed=2)
    one.regions = one.regions[:1]
    scenes = [_scene(seed=1), one, Scene(S, S, [], background=Background("a meadow"), seed=3, region_mode="attention")]
    batch, solo = batched_and_solo(engine, scenes, 5)
    for got, expect in zip(batch, solo):
        assert max_diff(got.image, expect.image) <= 1


def test_background_image_fills_the_uncovered_area(engine):
    rng = np.random.default_rng(0)
    img = np.kron(rng.integers(0, 255, (8, 8, 3)), np.ones((16, 16, 1))).astype(np.uint8)
    scene = Scene(S, S, [], background=Background(image=img, strength=1.0), seed=0, region_mode="attention")
    assert np.array_equal(engine.generate(scene), engine.model.decode(engine.model.encode_image(img)))


def test_a_model_without_cross_attention_refuses_attention_mode(tiny_components):
    from smd_daemon.engine.scene import SceneError

    engine = Engine(tiny_components)
    engine.model.region_ctx = None  # what install() leaves for a model it cannot hook
    with pytest.raises(SceneError, match="region mode 'attention' is not available"):
        engine.open_stream(_scene())


def test_the_daemon_refuses_a_mode_its_model_cannot_do(tiny_components):
    from daemon_util import S as SIDE
    from daemon_util import connect, free_port, half_mask, serving

    from smd_daemon import protocol
    from smd_daemon.client import ErrorEvent, Layer, SceneEvent
    from smd_daemon.server import Server

    engine = Engine(tiny_components)
    engine.model.region_ctx = None
    with serving(Server(engine, {"name": "tiny"}, f"tcp://127.0.0.1:{free_port()}")) as srv:
        c = connect(srv.bind, name="artist")
        try:
            assert srv.capabilities()["region_modes"] == ["latent"]
            c.set_scene(SIDE, SIDE, [Layer("1", "a red fox", half_mask())], region_mode="attention")
            err = c.wait_for(lambda e: isinstance(e, (ErrorEvent, SceneEvent)), 10)
            assert isinstance(err, ErrorEvent) and err.code == protocol.ErrorCode.BAD_FIELD
            assert err.message.count(".") <= 1 and "not available with this model" in err.message
            rev = c.set_scene(SIDE, SIDE, [Layer("1", "a red fox", half_mask())], region_mode="latent")
            ev = c.wait_for(lambda e: isinstance(e, (ErrorEvent, SceneEvent)), 10)
            assert isinstance(ev, SceneEvent) and ev.revision == rev
        finally:
            c.close()

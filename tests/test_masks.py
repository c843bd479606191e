import pytest
import torch

from smd_daemon.engine import masks as M


def _sigmas():
    from smd_daemon.engine.tiny import lcm_scheduler

    s = lcm_scheduler()
    s.set_timesteps(4)
    return M.noise_levels(s.alphas_cumprod, [int(t) for t in s.timesteps])


def _disc():
    m = torch.zeros(1, 64, 64)
    m[0, 16:48, 16:48] = 1
    return m


@pytest.mark.parametrize("mode", ["continuous", "discrete"])
def test_masks_grow_monotonically_as_noise_falls(mode):
    q = M.quantize_masks(_disc(), [0.99], [6.0], _sigmas(), (8, 8), mode)
    assert q.shape == (4, 1, 8, 8)
    for t in range(3):
        assert torch.all(q[t + 1] >= q[t])
    assert q[-1].sum() > q[0].sum()  # the blurred edge really is added later


def test_strength_zero_gives_empty_mask():
    for mode in ("continuous", "discrete"):
        assert M.quantize_masks(_disc(), [0.0], [4.0], _sigmas(), (8, 8), mode).sum() == 0


def test_discrete_mode_is_a_threshold_against_noise_levels():
    sig = _sigmas()
    m = torch.linspace(0, 1, 64).repeat(64, 1)[None]  # a horizontal ramp
    q = M.quantize_masks(m, [1.0], [0.0], sig, (64, 64), "discrete")
    for t in range(4):
        assert torch.equal(q[t, 0], (m[0] > sig[t]).float())


def test_continuous_mode_ramps_between_levels():
    sig = _sigmas()
    m = torch.linspace(0, 1, 64).repeat(64, 1)[None]
    q = M.quantize_masks(m, [1.0], [0.0], sig, (64, 64), "continuous")
    assert q.min() >= 0 and q.max() <= 1
    nxt = torch.cat([sig[1:], torch.zeros(1)])
    expect = ((m[0] - nxt[1]) / (sig[1] - nxt[1])).clamp(0, 1)
    assert torch.allclose(q[1, 0], expect, atol=1e-6)


def test_upper_region_takes_precedence_where_masks_overlap():
    lower = torch.ones(1, 32, 32)
    upper = torch.zeros(1, 32, 32)
    upper[0, :, 16:] = 1
    # Discrete levels 0.2 and 0.5: the covered part of the lower mask weighs 0.3.
    q = M.quantize_masks(
        torch.cat([lower, upper]),
        [1.0, 1.0],
        [0.0, 0.0],
        torch.tensor([0.5, 0.2]),
        (32, 32),
        "discrete",
        cover_alpha=0.3,
    )
    assert torch.all(q[0, 0, :, 16:] == 0) and torch.all(q[1, 0, :, 16:] == 1)
    assert torch.all(q[:, 0, :, :16] == 1) and torch.equal(q[:, 1], upper.expand(2, -1, -1))


def test_uint8_masks_quantize_like_their_float_values():
    rng = torch.Generator().manual_seed(0)
    alpha = torch.randint(0, 256, (2, 64, 48), generator=rng, dtype=torch.uint8)
    args = ([0.9, 1.0], [3.0, 0.0], _sigmas(), (8, 6))
    for mode in ("continuous", "discrete"):
        as_float = M.quantize_masks(alpha.float() / 255, *args, mode, cover_alpha=0.3)
        assert torch.equal(M.quantize_masks([a.numpy() for a in alpha], *args, mode, cover_alpha=0.3), as_float)


def test_blur_keeps_mass_and_softens_edges():
    m = _disc()[0]
    b = M.gaussian_blur(m, 3.0)
    assert abs(float(b.sum() - m.sum())) < 1.0
    assert 0 < float(b[16, 14]) < 1
    assert torch.equal(M.gaussian_blur(m, 0), m)


@pytest.mark.parametrize("std", [0.0, 2.5, 8.0])
def test_blur_at_the_kept_pixels_equals_blur_then_nearest_downsampling(std):
    m = (torch.rand(256, 192, generator=torch.Generator().manual_seed(0)) > 0.7).float()
    whole = torch.nn.functional.interpolate(M.gaussian_blur(m, std)[None, None], size=(32, 24), mode="nearest")
    assert torch.allclose(M.blur_sampled(m, std, (8, 8)), whole[0, 0], rtol=0, atol=1e-6)


def test_centering_shift_and_unshift_are_inverse_and_centre_the_box():
    mask = torch.zeros(32, 48)
    mask[2:10, 30:46] = 1
    off = M.center_offset(mask)
    moved = M.center(mask, off)
    ys, xs = torch.nonzero(moved, as_tuple=True)
    assert ((int(ys.min()) + int(ys.max()) + 1) // 2, (int(xs.min()) + int(xs.max()) + 1) // 2) == (16, 24)
    x = torch.randn(2, 4, 32, 48)
    assert torch.equal(M.uncenter(M.center(x, off), off), x)
    assert M.center_offset(torch.zeros(8, 8)) == (0, 0)


def test_tiles_cover_the_canvas_with_positive_weights():
    assert M.tile_origins(128, 64, 32) == [0, 32, 64]
    assert M.tile_origins(100, 64, 32) == [0, 32, 36]
    assert M.tile_origins(40, 64, 32) == [0]
    w = M.ramp_weights(8, 8)
    assert w.min() > 0 and w[4, 4] == w.max()

"""Planning: a scene compiled once for the model (``Plan``), and its cost.

``make_plan`` checks the scene against the model, picks its region strategy
(``modes.strategy_for``), encodes its prompts and images, quantizes its
masks, lays out its windows and centring rolls, and has the strategy lay
out each level's samples. ``session_bytes`` says, from shapes alone, what a
live session of a scene will keep.
"""

from __future__ import annotations

import torch

from smd_daemon.engine import masks as M
from smd_daemon.engine.model import Model
from smd_daemon.engine.modes import available, strategy_for
from smd_daemon.engine.plan import TILE_STRIDE, Coverage, Plan, Rolls, Windows
from smd_daemon.engine.scene import Scene, SceneError, cancel_check


def check(model: Model, scene: Scene) -> Scene:
    """Validate ``scene`` and refuse what ``model`` cannot do, in one sentence,
    before any work (``SceneError``)."""
    scene = scene.check_model(available(model), model.max_steps, model.kind)
    m = model.size_multiple
    if scene.width % m or scene.height % m:  # a patchifying transformer's latent is whole patches
        raise SceneError(
            f"canvas {scene.width}x{scene.height}: this model needs width and height in multiples of {m} pixels"
        )
    return scene


def windows_of(model: Model, h: int, w: int) -> Windows:
    """The windows of an (h, w) latent: the whole canvas up to the model's
    native size, overlapping windows of that size above it."""
    th, tw = min(h, model.window), min(w, model.window)
    origins = [(y, x) for y in M.tile_origins(h, th, TILE_STRIDE) for x in M.tile_origins(w, tw, TILE_STRIDE)]
    if len(origins) == 1:
        return Windows(origins, (th, tw), None, torch.ones(th, tw, device=model.device, dtype=model.dtype))
    grid = torch.arange(h * w).view(h, w)
    index = torch.stack([grid[y : y + th, x : x + tw].flatten() for y, x in origins]).to(model.device)
    return Windows(origins, (th, tw), index, M.ramp_weights(th, tw).to(model.device, model.dtype))


def _rolls(model: Model, offsets: list[list[tuple[int, int]]], h: int, w: int) -> tuple[Rolls | None, list[list[int]]]:
    """The distinct centring rolls of bootstrap steps as a table, and each
    (step, region)'s row of it (0: no roll)."""
    distinct = {(0, 0): 0}
    ids = [[distinct.setdefault(o, len(distinct)) for o in step] for step in offsets]
    if len(distinct) == 1:
        return None, ids
    grid = torch.arange(h * w).view(h, w)

    def table(sign: int) -> torch.Tensor:
        return torch.stack([torch.roll(grid, (sign * dy, sign * dx), (0, 1)).flatten() for dy, dx in distinct])

    return Rolls(table(1).to(model.device), table(-1).to(model.device)), ids


@torch.no_grad()
def make_plan(model: Model, scene: Scene, cancel=None) -> Plan:
    """Compile ``scene`` for ``model``; ``cancel()`` is asked before each
    expensive piece (prompt encodes, masks, image tiles) and raises
    ``Cancelled`` when it says so."""
    check(model, scene)
    between = cancel_check(cancel)
    between()
    strategy = strategy_for(scene.region_mode)
    dev, dt = model.device, model.dtype
    schedule = model.schedule(scene.steps)
    T = len(schedule)
    h, w = scene.height // model.factor, scene.width // model.factor

    bg, regions = scene.background, scene.regions
    P = len(regions)
    encoded = model.encode_prompts([bg.prompt] + [r.prompt for r in regions])
    bg_cond, region_cond = encoded.rows(slice(0, 1)), encoded.rows(slice(1, None))
    if regions:
        strength = torch.tensor([r.prompt_strength for r in regions], device=dev, dtype=dt)
        region_cond = bg_cond.toward(region_cond, strength)
    between()
    cfg = scene.guidance_scale > 1 and not model.family.embeds_guidance
    neg = None
    if cfg:
        negs = model.encode_prompts([bg.negative_prompt] + [r.negative_prompt for r in regions])
        neg = strategy.conditioning(negs.rows(slice(0, 1)), negs.rows(slice(1, None)))
        between()

    masks = M.quantize_masks(
        [r.mask for r in regions],
        [r.mask_strength for r in regions],
        [r.mask_std for r in regions],
        schedule.sigmas,
        (h, w),
        scene.mask_mode,
        scene.cover_alpha,
        between,
    )
    uncovered = (1 - masks.sum(1, keepdim=True)).clamp(0, 1)
    windows = windows_of(model, h, w)
    th, tw = windows.size
    # Which regions (and whether uncovered area) each window sees at each step.
    both = torch.cat([masks, uncovered], 1)
    peak = torch.stack([both[..., y : y + th, x : x + tw].amax(dim=(-2, -1)) for y, x in windows.origins], 1) > 0
    # Centring moves a region within the whole canvas; on a tiled canvas
    # a window is not the canvas, so only the white bootstrap applies.
    boot = strategy.bootstrap_steps(scene, T)
    offsets = [[(0, 0) if windows.tiled else M.center_offset(masks[i, p]) for p in range(P)] for i in range(boot)]
    rolls, roll_ids = _rolls(model, offsets, h, w)
    white = model.white_latent(scene.height, scene.width, cancel) if boot else None
    bg_image = model.encode_image(bg.image, cancel) if bg.image is not None and bg.strength > 0 else None

    plan = Plan(
        scene=scene,
        strategy=strategy,
        schedule=schedule,
        latent_hw=(h, w),
        cond=strategy.conditioning(bg_cond, region_cond),
        neg=neg,
        cfg=cfg,
        guidance=model.family.guidance_inputs(scene.guidance_scale),
        window_inputs=model.family.window_inputs((h, w), windows.origins, windows.size),
        masks=torch.cat([masks, masks.new_ones((T, 1, h, w))], 1).to(dev, dt),
        uncovered=uncovered.to(dev, dt),
        white=white,
        bg_image=bg_image,
        windows=windows,
        rolls=rolls,
        levels=[],
        prompts=strategy.prompts(P),
    )
    coverage = Coverage(
        masks, uncovered, peak[..., :P].tolist(), peak[..., P].tolist(), roll_ids, model.family.resolutions
    )
    plan.levels = strategy.levels(plan, coverage)
    return plan


def session_bytes(model: Model, scene: Scene, max_batch: int | None) -> int:
    """An upper estimate, from shapes alone (nothing is planned or encoded),
    of the bytes a live session of ``scene`` keeps on the host and the
    device: plan, masks, latents in flight, noise, encoded images, one
    step's sums and passes, and one frame's decoding."""
    strategy = strategy_for(scene.region_mode)
    b = torch.finfo(model.dtype).bits // 8
    T, P, C = scene.steps, len(scene.regions), model.channels
    h, w = scene.height // model.factor, scene.width // model.factor
    th, tw = min(h, model.window), min(w, model.window)
    V = len(M.tile_origins(h, th, TILE_STRIDE)) * len(M.tile_origins(w, tw, TILE_STRIDE))
    hw = h * w
    cfg = 2 if scene.guidance_scale > 1 else 1
    shape = dict(T=T, regions=P, hw=hw, windows=V, window_hw=th * tw, bytes=b, boot=min(scene.bootstrap_steps, T))
    f = model.family
    plan = (
        T * (P + 2) * hw * b  # masks (and the background's row), uncovered
        + 2 * C * hw * b  # white and background latents
        + (P + 1) * f.tokens * f.width * b * cfg  # the conditioning table
        + (V * th * tw * 8 if V > 1 else 0)  # windows' positions
        + strategy.plan_bytes(shape)
    )
    session = 3 * T * C * hw * b  # latents in flight, their noise, the bootstrap's noise
    per_window = 1 if strategy.prompts(P) > 1 else P + 1  # one sample for every prompt, or one per prompt
    samples = T * V * per_window * cfg
    rows = samples if max_batch is None else min(samples, max_batch)
    step = T * strategy.slots * (C + 1) * hw * b + rows * (C + 1) * th * tw * b * 4
    frame = scene.height * scene.width * (3 * 4 + 4 + 2)  # decode sums, uint8 on device and host
    return int(1.1 * (plan + session + step + frame)) + (1 << 16)

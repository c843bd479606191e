"""Planning: a scene compiled once for the model (``Plan``), and its cost.

``make_plan`` checks the scene against the model, picks its region strategy
(``modes.strategy_for``), encodes its prompts and images, quantizes its
masks, lays out its windows and centring rolls, and has the strategy lay
out each level's samples. ``session_bytes`` says, from shapes alone, what a
live session of a scene will keep.
"""

from __future__ import annotations

from typing import Any, cast

import torch

from smd_daemon.engine import attention as A
from smd_daemon.engine import control as K
from smd_daemon.engine import masks as M
from smd_daemon.engine.model import Model
from smd_daemon.engine.modes import available, strategy_for
from smd_daemon.engine.plan import TILE_STRIDE, ControlPlan, Coverage, Plan, Rolls, Windows, window_rows
from smd_daemon.engine.runner import controlnet_key
from smd_daemon.engine.scene import Scene, SceneError, cancel_check


def check(model: Model, scene: Scene) -> Scene:
    """Validate ``scene`` and refuse what ``model`` cannot do, in one sentence,
    before any work (``SceneError``)."""
    scene = scene.check_model(available(model), model.max_steps, model.kind, model.control_kinds)
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
    negs = None
    if cfg:
        negs = model.encode_negative_prompts([bg.negative_prompt] + [r.negative_prompt for r in regions])
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
    # Each prompt's share of the picture (background first): its per-pixel
    # weight in attention mode (``attention.region_weights``), averaged over
    # the canvas and the levels. Attention mode's one sample gets the prompts'
    # pooled embeddings in these shares (families that have one).
    prompt_weights = torch.cat([uncovered, masks], 1)
    shares = (prompt_weights / prompt_weights.sum(1, keepdim=True).clamp_min(1e-6)).mean((0, 2, 3))
    windows = windows_of(model, h, w)
    th, tw = windows.size
    # Which regions (and whether uncovered area) each window sees at each step.
    both = torch.cat([masks, uncovered], 1)
    peak = torch.stack([both[..., y : y + th, x : x + tw].amax(dim=(-2, -1)) for y, x in windows.origins], 1) > 0
    neg = None if negs is None else strategy.conditioning(negs.rows(slice(0, 1)), negs.rows(slice(1, None)), shares)
    # Centring moves a region within the whole canvas; on a tiled canvas
    # a window is not the canvas, so only the white bootstrap applies. A
    # control layer fixes where things are drawn: centring would move a
    # region's samples away from its sketch.
    boot = strategy.bootstrap_steps(scene, T)
    fixed = windows.tiled or any(c.strength > 0 for c in scene.controls)
    offsets = [[(0, 0) if fixed else M.center_offset(masks[i, p]) for p in range(P)] for i in range(boot)]
    rolls, roll_ids = _rolls(model, offsets, h, w)
    white = model.white_latent(scene.height, scene.width, cancel) if boot else None
    bg_image = model.encode_image(bg.image, cancel) if bg.image is not None and bg.strength > 0 else None

    plan = Plan(
        scene=scene,
        strategy=strategy,
        schedule=schedule,
        latent_hw=(h, w),
        cond=strategy.conditioning(bg_cond, region_cond, shares),
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
        controls=_control_plan(model, scene, T, windows, between) if scene.controls else None,
    )
    coverage = Coverage(
        masks, uncovered, peak[..., :P].tolist(), peak[..., P].tolist(), roll_ids, model.family.resolutions
    )
    plan.levels = strategy.levels(plan, coverage)
    return plan


def _control_plan(model: Model, scene: Scene, T: int, windows: Windows, between) -> ControlPlan:
    """The scene's controls for a plan (``ControlPlan``): adapter residuals
    come from the model's cache (computed once per control image), scaled and
    summed here per set of controls steering a level."""
    dev, dt, f = model.device, model.dtype, model.factor
    active = [[K.level_active(c.start, c.end, i, T) for c in scene.controls] for i in range(T)]
    adapters = [j for j, c in enumerate(scene.controls) if model.is_adapter(c.kind)]
    features: dict[int, list] = {}
    nets = []
    for j, c in enumerate(scene.controls):
        between()
        if j in adapters:
            features[j] = model.control_input(c)
            continue
        image = model.control_input(c)[0]
        if windows.tiled:
            (th, tw), image = windows.size, image[0]
            image = torch.stack([image[:, y * f : (y + th) * f, x * f : (x + tw) * f] for y, x in windows.origins])
        scales = [c.strength if active[i][j] else 0.0 for i in range(T)]
        nets.append((controlnet_key(c.kind, j), image, scales, torch.tensor(scales, device=dev, dtype=dt)))
    sums: dict[tuple, list | None] = {}
    per_level: list[list | None] = []
    for i in range(T):
        steering = tuple(j for j in adapters if active[i][j])
        if steering not in sums:  # levels steered by the same controls share one sum
            resolutions = range(len(features[steering[0]])) if steering else range(0)
            summed = [sum(scene.controls[j].strength * features[j][k] for j in steering) for k in resolutions]
            sums[steering] = summed if steering else None
        per_level.append(sums[steering])
    zeros, index = [], None
    if adapters:
        h, w = scene.height // f, scene.width // f
        shapes = [r.shape for r in features[adapters[0]]]
        ks = [_halvings(h, w, s[-2], s[-1]) for s in shapes]
        th, tw = windows.size
        zeros = [torch.zeros(1, s[1], -(-th // 2**k), -(-tw // 2**k), device=dev, dtype=dt) for s, k in zip(shapes, ks)]
        if windows.tiled:
            index = [window_rows(windows.origins, windows.size, s[-2:], k).to(dev) for s, k in zip(shapes, ks)]
    return ControlPlan(per_level, index, zeros, nets)


def _halvings(h: int, w: int, hk: int, wk: int) -> int:
    """How many halvings (rounding up) take an (h, w) latent to an adapter residual's (hk, wk)."""
    for k, size in enumerate(A.layer_sizes(h, w, 8)):
        if size == (hk, wk):
            return k
    raise ValueError(f"an adapter residual of {hk}x{wk} does not fit a {h}x{w} latent")


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
    controls = _control_bytes(model, scene, T, V, rows, (th, tw), b)
    return int(1.1 * (plan + session + step + frame + controls)) + (1 << 16)


def _control_bytes(model: Model, scene: Scene, T: int, V: int, rows: int, window: tuple[int, int], b: int) -> int:
    """What a scene's controls keep: an adapter's cached residuals, their sums
    per level and one pass's rows of them; a ControlNet's image, its windows
    and one pass's rows of them."""
    h, w = scene.height // model.factor, scene.width // model.factor
    total = 0
    for c in scene.controls:
        if c.kind not in model.controls:
            continue  # refused when planned
        if model.is_adapter(c.kind):
            widths = list(cast(Any, model.controls[c.kind]).config.channels)
            canvas = sum(ck * hk * wk for ck, (hk, wk) in zip(widths, A.layer_sizes(h, w, len(widths))))
            per_window = sum(ck * hk * wk for ck, (hk, wk) in zip(widths, A.layer_sizes(*window, len(widths))))
            total += (T + 1) * canvas * b + rows * per_window * b
        else:
            pixels = window[0] * window[1] * model.factor**2
            total += 3 * (scene.height * scene.width * 4 + (V if V > 1 else 0) * pixels * b + rows * pixels * b)
    return total

"""What the engine is asked to draw: regions, a background, a seed, steps.

Plain data: the server and the CLI build these; the engine only reads them.
Masks are at canvas size (H, W): uint8 (0..255, as layer alpha arrives) or
float32 in [0, 1].
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

# Limits that keep one request from exhausting the machine. The daemon
# advertises them in its handshake; ``validate`` enforces them everywhere.
MAX_REGIONS = 16
MAX_SIDE = 4096
MIN_SIDE = 64
MAX_STEPS = 50
MAX_PROMPT_CHARS = 1000
# What a scene gets when nobody says otherwise (the daemon tells clients in its handshake).
DEFAULT_STEPS = 4
# How regions enter the model, the default first: one UNet sample per region
# and latent pre-averaging (follows shapes tightly), or one sample for all
# regions with per-region cross-attention (much faster with several regions).
# The engine turns the name into a strategy once, when it plans
# (``modes.strategy_for``). The engine's own list (this room imports nothing
# of the daemon's); the wire's, protocol.REGION_MODES, is held equal to it by a test.
LATENT = "latent"
ATTENTION = "attention"
REGION_MODES = (LATENT, ATTENTION)
# Control layers (a sketch, a depth map...) steer the whole canvas's shapes.
# Line art and scribble are the artist's own strokes; depth and pose must
# already be such maps; canny edges are found by the engine.
CONTROL_KINDS = ("lineart", "scribble", "softedge", "depth", "canny", "pose")
MAX_CONTROLS = 4


class SceneError(ValueError):
    """A scene the engine cannot draw, with a message fit for an artist."""


class UnknownControl(SceneError):
    """A control layer of a kind this daemon has no model for (the wire's
    ``unknown_control``)."""


class Cancelled(Exception):
    """Planning or generation stopped between two pieces of work because the
    caller's ``cancel()`` said so (defined here so the daemon can catch it
    without importing torch)."""


def cancel_check(cancel=None):
    """``cancel() -> bool`` as a check to call between pieces of work, which
    raises ``Cancelled`` when asked to; a no-op without ``cancel``."""

    def check() -> None:
        if cancel is not None and cancel():
            raise Cancelled()

    return check


@dataclass
class Region:
    prompt: str
    mask: np.ndarray  # (H, W) at canvas size: uint8 0..255 or float32 0..1
    negative_prompt: str = ""
    mask_strength: float = 1.0
    mask_std: float = 8.0  # Gaussian blur std in canvas pixels; 0 = none
    prompt_strength: float = 0.95  # lerp(background embedding, region embedding)
    name: str = ""  # the layer it came from, for messages


@dataclass
class Background:
    prompt: str = ""
    negative_prompt: str = ""
    image: np.ndarray | None = None  # uint8 (H, W, 3) at canvas size
    strength: float = 0.0  # how strongly uncovered area follows the image


@dataclass
class Control:
    """A control image for the whole canvas, as the artist sees it: the
    engine preprocesses it for its kind's adapter or ControlNet."""

    kind: str  # one of CONTROL_KINDS
    image: np.ndarray  # uint8 (H, W, 3) at canvas size
    strength: float = 1.0
    start: float = 0.0  # the fraction of the denoising where it starts steering
    end: float = 1.0  # ... and where it stops
    name: str = ""  # the layer it came from, for messages


@dataclass
class Scene:
    width: int
    height: int
    regions: list[Region] = field(default_factory=list)  # bottom to top
    background: Background = field(default_factory=Background)
    seed: int = 0
    steps: int = DEFAULT_STEPS
    bootstrap_steps: int = 1
    guidance_scale: float = 1.0
    mask_mode: str = "continuous"  # or "discrete"
    cover_alpha: float = 0.3  # lower masks' weight where an upper one covers them
    region_mode: str = REGION_MODES[0]
    controls: list[Control] = field(default_factory=list)

    def validate(self) -> Scene:
        if not (MIN_SIDE <= self.width <= MAX_SIDE and MIN_SIDE <= self.height <= MAX_SIDE):
            raise SceneError(f"canvas {self.width}x{self.height} is outside {MIN_SIDE}..{MAX_SIDE} pixels per side")
        if self.width % 8 or self.height % 8:
            raise SceneError(f"canvas {self.width}x{self.height}: width and height must be multiples of 8")
        if len(self.regions) > MAX_REGIONS:
            raise SceneError(f"{len(self.regions)} regions: at most {MAX_REGIONS} are allowed")
        if not 1 <= self.steps <= MAX_STEPS:
            raise SceneError(f"steps must be between 1 and {MAX_STEPS}, got {self.steps}")
        if not 0 <= self.bootstrap_steps <= self.steps:
            raise SceneError(f"bootstrap steps must be between 0 and steps ({self.steps}), got {self.bootstrap_steps}")
        if self.mask_mode not in ("continuous", "discrete"):
            raise SceneError(f"mask mode must be 'continuous' or 'discrete', got {self.mask_mode!r}")
        if self.region_mode not in REGION_MODES:
            raise SceneError(f"region mode must be {' or '.join(map(repr, REGION_MODES))}, got {self.region_mode!r}")
        if not (np.isfinite(self.guidance_scale) and 0 <= self.guidance_scale <= 30):
            raise SceneError("guidance scale must be between 0 and 30")
        if not (np.isfinite(self.cover_alpha) and 0 <= self.cover_alpha <= 1):
            raise SceneError("cover alpha must be between 0 and 1")
        if not 0 <= int(self.seed) < 2**63:
            raise SceneError("seed must be a non-negative 63-bit integer")
        for p in [self.background.prompt, self.background.negative_prompt]:
            _check_prompt(p, "background")
        if not (np.isfinite(self.background.strength) and 0 <= self.background.strength <= 1):
            raise SceneError("background strength must be between 0 and 1")
        img = self.background.image
        if img is not None and (img.dtype != np.uint8 or img.shape != (self.height, self.width, 3)):
            raise SceneError(
                f"background image must be uint8 {self.height}x{self.width}x3, got {img.dtype} {tuple(img.shape)}"
            )
        for r in self.regions:
            label = r.name or r.prompt[:40]
            _check_prompt(r.prompt, label)
            _check_prompt(r.negative_prompt, label)
            if r.mask.shape != (self.height, self.width):
                raise SceneError(f"region {label!r}: mask is {r.mask.shape}, canvas is {(self.height, self.width)}")
            if not (r.mask.dtype == np.uint8 or np.issubdtype(r.mask.dtype, np.floating)):
                raise SceneError(f"region {label!r}: mask must be uint8 (0..255) or float (0..1), got {r.mask.dtype}")
            for what, v, hi in [
                ("mask strength", r.mask_strength, 1),
                ("prompt strength", r.prompt_strength, 1),
                ("blur", r.mask_std, 256),
            ]:
                if not (np.isfinite(v) and 0 <= v <= hi):
                    raise SceneError(f"region {label!r}: {what} must be between 0 and {hi}, got {v}")
        if len(self.controls) > MAX_CONTROLS:
            raise SceneError(f"{len(self.controls)} control layers: at most {MAX_CONTROLS} are allowed")
        for c in self.controls:
            label = c.name or c.kind
            if c.kind not in CONTROL_KINDS:
                raise SceneError(f"control {label!r}: unknown kind {c.kind!r} (known: {', '.join(CONTROL_KINDS)})")
            if c.image.dtype != np.uint8 or c.image.shape != (self.height, self.width, 3):
                raise SceneError(
                    f"control {label!r}: image must be uint8 {self.height}x{self.width}x3, "
                    f"got {c.image.dtype} {tuple(c.image.shape)}"
                )
            if not (np.isfinite(c.strength) and 0 <= c.strength <= 2):
                raise SceneError(f"control {label!r}: strength must be between 0 and 2, got {c.strength}")
            if not (np.isfinite(c.start) and np.isfinite(c.end) and 0 <= c.start < c.end <= 1):
                raise SceneError(f"control {label!r}: start and end must satisfy 0 <= start < end <= 1")
        return self

    def check_model(self, region_modes: tuple, max_steps: int, kind: str, control_kinds: tuple | None = None) -> Scene:
        """``validate``, then refuse what a model with these abilities cannot
        do, in one sentence (the engine's own check, and a cluster front end's
        on what its workers reported; ``control_kinds`` None: not known here)."""
        self.validate()
        for c in self.controls:
            if control_kinds is not None and c.kind not in control_kinds:
                have = f"it has {', '.join(control_kinds)}" if control_kinds else "it has none"
                raise UnknownControl(
                    f"control {c.name or c.kind!r}: this daemon has no {c.kind} model ({have}; "
                    f"start it with --control {c.kind})"
                )
        if self.region_mode not in region_modes:
            raise SceneError(
                f"region mode {self.region_mode!r} is not available with this model "
                f"(available: {', '.join(region_modes)})"
            )
        if self.steps > max_steps:
            raise SceneError(f"this {kind} model takes at most {max_steps} steps, got {self.steps}")
        return self


def _check_prompt(p: str, label: str) -> None:
    if not isinstance(p, str):
        raise SceneError(f"{label}: prompt must be text")
    if len(p) > MAX_PROMPT_CHARS:
        raise SceneError(f"{label}: prompt is {len(p)} characters, at most {MAX_PROMPT_CHARS} allowed")

"""``smd-daemon render``: draw a layered scene (.ora or .json) to an image, without Krita.

The scene is read and checked, and the output path too, before the model is
loaded: a bad input never costs a model load. See ``docs/render.md``.
"""

from __future__ import annotations

import argparse
import logging
import os
import tempfile
import time

from smd_daemon.engine.scene import DEFAULT_STEPS, REGION_MODES
from smd_daemon.errors import UsageError
from smd_daemon.options import (
    add_model_arguments,
    add_speed_arguments,
    engine_options,
    load_model_from_options,
    make_engine,
)
from smd_daemon.scenefile import Overrides, dockersettings, load_scene

log = logging.getLogger(__name__)


def configure(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("scene", metavar="SCENE", help="an OpenRaster file (.ora) or a JSON scene (.json)")
    parser.add_argument("-o", "--output", required=True, metavar="OUT.png", help="the image to write")
    parser.add_argument("--seed", type=int, help="random seed (default: the scene's, else 0)")
    parser.add_argument("--steps", type=int, help=f"denoising steps (default: the scene's, else {DEFAULT_STEPS})")
    parser.add_argument("--width", type=int, help="output width (default: the document's; multiple of 8)")
    parser.add_argument("--height", type=int, help="output height (default: the document's; multiple of 8)")
    parser.add_argument("--bootstrap-steps", type=int, help="mask-centering bootstrap steps (default 1)")
    parser.add_argument("--background-prompt", help="background prompt (overrides the scene's and any 'bg:' layer's)")
    parser.add_argument("--negative-prompt", help="negative prompt for regions without their own")
    parser.add_argument(
        "--background-strength",
        type=float,
        help="how strongly the uncovered area follows the non-region layers' image, 0..1 (overrides the scene's)",
    )
    parser.add_argument(
        "--region-mode",
        metavar="|".join(REGION_MODES),
        help="how regions enter the model: 'latent' (one UNet sample per region, follows shapes "
        "tightly; the default) or 'attention' (one sample for all regions, much faster)",
    )
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    add_model_arguments(parser)
    add_speed_arguments(parser)


def run(args: argparse.Namespace) -> int:
    speed = engine_options(args)
    out_format = _check_output(args.output)
    loaded = load_scene(
        args.scene,
        Overrides(
            width=args.width,
            height=args.height,
            seed=args.seed,
            steps=args.steps,
            bootstrap_steps=args.bootstrap_steps,
            background_prompt=args.background_prompt,
            negative_prompt=args.negative_prompt,
            background_strength=args.background_strength,
            region_mode=args.region_mode,
        ),
    )
    scene = loaded.scene
    docker = dockersettings.find(args.scene)

    components = load_model_from_options(args)
    # Told after the model loads, so that a model error stays the only line on stderr.
    for p in loaded.layers:
        if p.role == "control":
            log.info(
                "layer %r: control %s, strength %g from %g to %g",
                p.name,
                p.kind,
                p.control_strength,
                p.control_start,
                p.control_end,
            )
        elif p.kind:  # a control layer left out (empty, mis-sized): the artist meant it to steer
            log.warning("layer %r: control %s left out: %s", p.name, p.kind, p.reason)
        else:
            how = p.role if p.role != "ignored" else f"ignored ({p.reason})"
            log.info("layer %r: %s%s", p.name, how, f", prompt {p.prompt!r}" if p.role != "ignored" else "")
        for w in p.warnings:
            log.warning("layer %r: %s", p.name, w)
    for w in loaded.warnings:
        log.warning("%s", w)
    if docker is not None:
        _compare_with_docker(*docker, scene)
    d = components.describe()
    log.info(
        "rendering %dx%d, %d region(s) (%s mode), %d steps, seed %d with %s on %s %s",
        scene.width,
        scene.height,
        len(scene.regions),
        scene.region_mode,
        scene.steps,
        scene.seed,
        d["name"],
        d["device"],
        d["dtype"],
    )
    engine = make_engine(components, **speed)
    engine.check(scene)  # what this model cannot do (region mode, steps): one line, exit 2
    bar = _ProgressBar(disable=True if args.no_progress else None)
    start = time.perf_counter()
    try:
        image = engine.generate(scene, progress=bar.update)
    finally:
        bar.close()
    _write_image(image, args.output, out_format)
    log.info("wrote %s (%.1f s)", args.output, time.perf_counter() - start)
    return 0


def _compare_with_docker(where: str, settings: dict, scene) -> None:
    """Say where this render differs from the SMD Live docker's settings saved with the document."""
    diff = dockersettings.differences(settings, scene)
    if not diff:
        log.info("%s holds the SMD Live docker's settings for this document: this render matches them", where)
        return
    log.warning(
        "%s holds the SMD Live docker's settings for this document, and this render differs: %s. "
        "To render as the docker does, add: %s",
        where,
        "; ".join(f"{d.what} {d.docker} there, {d.render} here" for d in diff),
        " ".join(d.flag for d in diff),
    )


def _check_output(path: str) -> str:
    """Fail now, not after the render, for an output we could not write."""
    from PIL import Image

    if os.path.isdir(path):
        raise UsageError(f"{path} is a folder; give a file name such as {os.path.join(path, 'out.png')}")
    folder = os.path.dirname(os.path.abspath(path))
    ext = os.path.splitext(path)[1].lower()
    fmt = Image.registered_extensions().get(ext)
    if fmt is None or fmt not in Image.SAVE:
        raise UsageError(f"{path}: cannot write {ext or 'files without an extension'}; use .png")
    if not os.path.isdir(folder):
        raise UsageError(f"{path}: folder {folder} does not exist")
    if not os.access(folder, os.W_OK) or (os.path.exists(path) and not os.access(path, os.W_OK)):
        raise UsageError(f"{path}: not writable")
    return fmt


def _write_image(image, path: str, fmt: str) -> None:
    """Write via a temporary file so a failed write never leaves a truncated image behind."""
    from PIL import Image

    folder = os.path.dirname(os.path.abspath(path))
    fd, tmp = tempfile.mkstemp(prefix=".render-", suffix=os.path.splitext(path)[1], dir=folder)
    try:
        with os.fdopen(fd, "wb") as f:
            Image.fromarray(image, "RGB").save(f, format=fmt)
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)  # mkstemp makes it private; give it a normal file's mode
        os.replace(tmp, path)
    except BaseException:
        os.unlink(tmp)
        raise


class _ProgressBar:
    """A tqdm bar on stderr, created at the first step (the engine knows the total). By default it
    shows only on a terminal, so piped logs stay clean."""

    def __init__(self, disable: bool | None = None, file=None):
        self.disable, self.file = disable, file
        self.bar = None

    def update(self, step: int, total: int) -> None:
        if self.disable:
            return
        if self.bar is None:
            from tqdm import tqdm

            self.bar = tqdm(total=total, desc="render", unit="step", leave=False, disable=self.disable, file=self.file)
        self.bar.update(step - self.bar.n)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()

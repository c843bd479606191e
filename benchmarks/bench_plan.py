"""Planning a large canvas: what an artist waits for before the first frame
at a new canvas size, and how soon a plan stops when cancelled.

    python benchmarks/bench_plan.py --model tiny --sizes 2048 4096 --threads 1

For each size a fresh engine plans a scene of three regions (so the white
bootstrap latent is needed): the first plan, the same scene planned again
(every cache warm), the white latent alone on a second fresh engine, and,
side by side, a full-canvas tiled encode of a white image -- what the first
plan at a new size used to do. Then the time from asking a plan to cancel
(while it encodes a background image of that size) to ``Cancelled``.
Figures are medians of ``--repeat`` runs.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import threading
import time

import numpy as np
import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from smd_daemon.engine.core import Engine  # noqa: E402
from smd_daemon.engine.models import load_model  # noqa: E402
from smd_daemon.engine.scene import Background, Cancelled, Region, Scene  # noqa: E402

PROMPTS = ["a red fox", "snowy pine forest", "a castle on a hill"]


def scene_at(size: int, image: np.ndarray | None = None) -> Scene:
    regions = []
    for k, prompt in enumerate(PROMPTS):
        m = np.zeros((size, size), np.uint8)
        m[size // 8 : size - size // 8, k * size // 4 : (k + 2) * size // 4] = 255
        regions.append(Region(prompt, m))
    bg = Background("a wide landscape", image=image, strength=0.5 if image is not None else 0.0)
    return Scene(size, size, regions, background=bg, steps=4)


def seconds(fn) -> float:
    t = time.perf_counter()
    fn()
    return time.perf_counter() - t


def cancel_latency(engine: Engine, scene: Scene, after: float) -> float | None:
    """Seconds from asking a running plan to cancel to its ``Cancelled``
    (None when the plan finished first)."""
    stop = threading.Event()
    asked: list[float] = []
    threading.Timer(after, lambda: (asked.append(time.perf_counter()), stop.set())).start()
    try:
        engine.plan(scene, cancel=stop.is_set)
    except Cancelled:
        return time.perf_counter() - asked[0]
    return None


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="tiny")
    ap.add_argument("--sizes", type=int, nargs="+", default=[2048, 4096])
    ap.add_argument("--repeat", type=int, default=1, help="runs per figure (each first plan needs a fresh engine)")
    ap.add_argument("--no-full", action="store_true", help="skip the full-canvas white encode (the slow part)")
    ap.add_argument("--no-cancel", action="store_true", help="skip the cancel measure")
    ap.add_argument("--threads", type=int, help="CPU threads for torch (default: torch's choice)")
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    components = load_model(args.model)
    print(f"model {args.model}, {components.device}, {torch.get_num_threads()} threads")
    print(
        "| canvas | first plan (s) | plan again (s) | white latent (s) | full white encode (s) "
        "| cancel -> stopped (s) |"
    )
    print("|---|---|---|---|---|---|")
    for size in args.sizes:
        scene = scene_at(size)
        first, again, white, full, stop = [], [], [], [], []
        for _ in range(args.repeat):
            e = Engine(components)
            first.append(seconds(lambda: e.plan(scene)))
            again.append(seconds(lambda: e.plan(scene)))
            white.append(seconds(lambda: Engine(components).model.white_latent(size, size)))
            if not args.no_full:
                image = np.full((size, size, 3), 255, np.uint8)
                full.append(seconds(lambda: e.model.autoencoder.encode(image)))
            if not args.no_cancel:
                picture = np.random.default_rng(0).integers(0, 256, (size, size, 3), dtype=np.uint8)
                latency = cancel_latency(Engine(components), scene_at(size, picture), after=0.5)
                if latency is not None:
                    stop.append(latency)

        def med(xs):
            return f"{statistics.median(xs):.2f}" if xs else "-"

        print(f"| {size}x{size} | {med(first)} | {med(again)} | {med(white)} | {med(full)} | {med(stop)} |", flush=True)


if __name__ == "__main__":
    main()

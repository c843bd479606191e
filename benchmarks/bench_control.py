"""Control layers' price per frame: a steady stream with no control, with one
T2I-Adapter control and with one ControlNet control, side by side, in both
region modes; and how often each control model runs.

    python benchmarks/bench_control.py --model tiny --size 256 --regions 3
    python benchmarks/bench_control.py --model random-sd15 --size 256 --regions 1 --steps 2 --frames 3
    bash benchmarks/gpu_figures.sh     # the prepared GPU run (see docs/benchmarks.md)

The three streams of a mode run frame by frame in turn, so machine noise hits
all alike; figures are medians. The control models are random (``--control
KIND=random``): a T2I-Adapter for ``lineart`` and a ControlNet for
``softedge``, shaped for the loaded UNet, so their cost is a trained one's.
Forward counts: T2I-Adapter forwards per frame of a steady stream (goal 0),
for a frame after an edit of the control image (goal 1) and after an edit of
a region (goal 0); ControlNet forwards per frame (one per UNet call).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import statistics
import sys
import time

import numpy as np
import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import bench_engine  # noqa: E402

from smd_daemon.engine.control_models import load_controls  # noqa: E402
from smd_daemon.engine.core import Engine  # noqa: E402
from smd_daemon.engine.models import load_model  # noqa: E402
from smd_daemon.engine.scene import REGION_MODES, Control, Scene  # noqa: E402

ADAPTER, CONTROLNET = "lineart", "softedge"


def sketch(size: int, shift: int = 0) -> np.ndarray:
    """Dark strokes on white paper: a frame and a diagonal."""
    img = np.full((size, size, 3), 255, np.uint8)
    a, b = size // 8 + shift, size - size // 8
    img[a : a + 3, a:b] = img[b - 3 : b, a:b] = 0
    img[a:b, a : a + 3] = img[a:b, b - 3 : b] = 0
    for k in range(a, b):
        img[k, k : k + 3] = 0
    return img


def scene_with(n: int, size: int, steps: int, mode: str, controls: list[Control]) -> Scene:
    """The engine benchmark's scene of ``n`` regions, with ``controls``."""
    return dataclasses.replace(bench_engine.scene_with(n, size, steps, mode=mode), controls=controls)


def timed(device: torch.device, fn) -> float:
    if device.type == "cuda":
        torch.cuda.synchronize()
    t = time.perf_counter()
    fn()
    if device.type == "cuda":
        torch.cuda.synchronize()
    return time.perf_counter() - t


def measure(engine: Engine, args, mode: str) -> dict:
    model, size = engine.model, args.size
    variants = {
        "none": [],
        "adapter": [Control(ADAPTER, sketch(size))],
        "controlnet": [Control(CONTROLNET, sketch(size))],
    }
    streams = {k: engine.open_stream(scene_with(args.regions, size, args.steps, mode, c)) for k, c in variants.items()}
    for s in streams.values():
        for _ in range(args.steps + args.warmup):
            s.step()
    times: dict[str, list[float]] = {k: [] for k in streams}
    adapter_before, nets_before = model.adapter_calls, model.runner.controlnet_calls
    for _ in range(args.frames):
        for k, s in streams.items():
            times[k].append(timed(model.device, s.step))
    steady_adapter = (model.adapter_calls - adapter_before) / (args.frames * len(streams))
    steady_nets = (model.runner.controlnet_calls - nets_before) / args.frames

    def forwards_after(edit) -> int:
        s = streams["adapter"]
        before = model.adapter_calls
        s.update(edit(s.plan.scene), s.revision + 1)
        s.step()
        return model.adapter_calls - before

    new = sketch(size, shift=4 + 4 * REGION_MODES.index(mode))  # an image no mode has drawn (the cache is the model's)
    moved = forwards_after(lambda sc: dataclasses.replace(sc, controls=[Control(ADAPTER, new)]))
    region = forwards_after(
        lambda sc: dataclasses.replace(sc, regions=[dataclasses.replace(sc.regions[0], prompt="a grey wolf")])
    )
    med = {k: statistics.median(v) for k, v in times.items()}
    return {
        "mode": mode,
        "regions": args.regions,
        "size": size,
        "steps": args.steps,
        "frames": args.frames,
        "frame_s": med,
        "adapter_ratio": med["adapter"] / med["none"],
        "controlnet_ratio": med["controlnet"] / med["none"],
        "adapter_forwards_per_frame": steady_adapter,
        "adapter_forwards_after_control_edit": moved,
        "adapter_forwards_after_region_edit": region,
        "controlnet_forwards_per_frame": steady_nets,
    }


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default="tiny")
    p.add_argument("--device", default=None)
    p.add_argument("--dtype", default=None)
    p.add_argument("--size", type=int, default=256)
    p.add_argument("--steps", type=int, default=4)
    p.add_argument("--regions", type=int, nargs="+", default=[3])
    p.add_argument("--modes", nargs="+", default=list(REGION_MODES), choices=REGION_MODES)
    p.add_argument("--frames", type=int, default=10, help="timed frames per stream")
    p.add_argument("--warmup", type=int, default=2, help="untimed frames once the stream is full")
    p.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: torch's default)")
    p.add_argument("--json", default=None, help="write the figures here")
    # gpu_figures.sh hands the engine benchmark's arguments to this one too: those it has no use for are ignored.
    args, _ = p.parse_known_args(argv)
    args.regions = args.regions[0]
    torch.set_grad_enabled(False)
    if args.threads:
        torch.set_num_threads(args.threads)
    components = load_model(args.model, device=args.device, dtype=args.dtype)
    components.controls = load_controls(args.model, {ADAPTER: "random", CONTROLNET: "random"}, components)
    engine = Engine(components)
    rows = [measure(engine, args, mode) for mode in args.modes if mode in engine.region_modes]
    print(
        f"\nmodel {args.model} on {components.device} ({components.dtype}), {args.size} px, {args.steps} steps, "
        f"{args.regions} regions + background, median of {args.frames} frames\n"
    )
    print(
        "| mode | frame, no control | T2I-Adapter | ratio | ControlNet | ratio "
        "| adapter forwards / frame | after a control edit | after a region edit | ControlNet forwards / frame |"
    )
    print("|---|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        f = r["frame_s"]
        print(
            f"| {r['mode']} | {f['none'] * 1e3:.1f} ms | {f['adapter'] * 1e3:.1f} ms | {r['adapter_ratio']:.3f} "
            f"| {f['controlnet'] * 1e3:.1f} ms | {r['controlnet_ratio']:.3f} | {r['adapter_forwards_per_frame']:g} "
            f"| {r['adapter_forwards_after_control_edit']} | {r['adapter_forwards_after_region_edit']} "
            f"| {r['controlnet_forwards_per_frame']:g} |"
        )
    if args.json:
        meta = {"model": args.model, "device": str(components.device), "dtype": str(components.dtype)}
        with open(args.json, "w") as f:
            json.dump({**meta, "rows": rows}, f, indent=1)


if __name__ == "__main__":
    main()

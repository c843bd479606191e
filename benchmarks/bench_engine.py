"""Engine benchmark: latent vs attention region mode, eager vs compiled vs
CUDA graphs, the bare floor each frame must pay, peak memory, and
StreamMultiDiffusion against MultiDiffusion as published.

    python benchmarks/bench_engine.py --model tiny --size 512 --regions 1 3 6
    python benchmarks/bench_engine.py --model random-sd15 --size 256 --regions 3 --frames 3
    python benchmarks/bench_engine.py --model random-sdxl --size 256 --regions 3 --frames 3   # SDXL's UNet
    python benchmarks/bench_engine.py --model tiny --size 256 --width 1024 --before main   # a tiled canvas,
                                        # against the engine of another git revision, side by side
    bash benchmarks/gpu_figures.sh     # the prepared GPU run (see docs/benchmarks.md)

Everything is measured side by side in one run (for each region count both
modes, every variant, the other revision's engine and the bare floor are
timed in turn, frame by frame, so machine noise hits all alike); figures are
medians.
"""

from __future__ import annotations

import argparse
import importlib
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from typing import cast

import numpy as np
import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from smd_daemon.engine.core import Engine  # noqa: E402
from smd_daemon.engine.models import load_model  # noqa: E402
from smd_daemon.engine.runner import WEIGHTS, DenoiserRunner  # noqa: E402
from smd_daemon.engine.scene import REGION_MODES, Background, Region, Scene  # noqa: E402

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

PROMPTS = ["a red fox", "snowy pine forest", "a castle on a hill", "a hot air balloon", "a river", "an old oak tree"]
VARIANTS = {
    "eager": {},
    "graphs": {"cuda_graphs": True},
    "compiled": {"compile": True},
    "compiled+graphs": {"compile": True, "cuda_graphs": True},
}


def scene_with(n: int, size: int, steps: int = 4, seed: int = 0, mode: str = REGION_MODES[0], width: int = 0) -> Scene:
    """``n`` overlapping regions spread over the canvas (``size`` high, ``width``
    or ``size`` wide), plus a background prompt."""
    width = width or size
    regions = []
    for k in range(n):
        m = np.zeros((size, width), np.uint8)
        left = int(k * width / (n + 1))
        m[size // 8 : size - size // 8, left : left + 2 * width // (n + 1)] = 255
        regions.append(Region(PROMPTS[k % len(PROMPTS)], m))
    return Scene(
        width, size, regions, background=Background("a wide landscape"), seed=seed, steps=steps, region_mode=mode
    )


def engine_of_revision(rev: str):
    """The ``Engine`` class of git revision ``rev``: its engine room copied into a
    package of its own (imports renamed), so it runs beside this one on the
    same loaded components."""
    files = subprocess.run(
        ["git", "ls-tree", "--name-only", rev, "smd_daemon/engine/"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        check=True,
    ).stdout.split()
    package = "smd_engine_" + "".join(c if c.isalnum() else "_" for c in rev)
    folder = tempfile.mkdtemp(prefix="bench-engine-")
    os.makedirs(os.path.join(folder, package))
    for path in files:
        text = subprocess.run(["git", "show", f"{rev}:{path}"], cwd=ROOT, capture_output=True, text=True, check=True)
        with open(os.path.join(folder, package, os.path.basename(path)), "w") as f:
            f.write(text.stdout.replace("smd_daemon.engine", package))
    sys.path.insert(0, folder)
    return importlib.import_module(f"{package}.core").Engine


class Timer:
    def __init__(self, device: torch.device, cpu_time: bool = False):
        self.cuda = device.type == "cuda"
        self.clock = time.process_time if cpu_time and not self.cuda else time.perf_counter

    def __call__(self, fn, repeat: int = 1, warmup: int = 0) -> float:
        for _ in range(warmup):
            fn()
        times = []
        for _ in range(repeat):
            if self.cuda:
                torch.cuda.synchronize()
            t = self.clock()
            fn()
            if self.cuda:
                torch.cuda.synchronize()
            times.append(self.clock() - t)
        return statistics.median(times)


@torch.no_grad()
def multidiffusion(engine: Engine, scene: Scene, steps: int = 50, guidance: float = 7.5) -> tuple[np.ndarray, int]:
    """MultiDiffusion as published: DDIM, classifier-free guidance (a doubled
    batch), each region stepped on its own and the *stepped* latents averaged
    with the masks after every scheduler step. Returns (image, UNet samples)."""
    from diffusers import DDIMScheduler

    model = engine.model
    c = model.components
    # from_config returns (scheduler, unused keys) only when asked to; its annotation always says both.
    sched = cast(DDIMScheduler, DDIMScheduler.from_config(model.scheduler.config))
    sched.set_timesteps(steps)
    h, w = scene.height // model.factor, scene.width // model.factor
    prompts = [scene.background.prompt] + [r.prompt for r in scene.regions]
    cond = model.encode_prompts(prompts).tokens
    uncond = model.encode_prompts([""] * len(prompts)).tokens
    masks = [torch.ones(h, w)] + [
        torch.nn.functional.interpolate(torch.from_numpy(r.mask)[None, None].float(), (h, w), mode="nearest")[
            0, 0
        ].clamp(0, 1)
        for r in scene.regions
    ]
    masks = torch.stack(masks)[:, None].to(c.device, c.dtype)  # (P, 1, h, w)
    gen = torch.Generator().manual_seed(scene.seed)
    x = torch.randn((1, 4, h, w), generator=gen, dtype=c.dtype).to(c.device)
    P = len(prompts)
    samples = 0
    for t in sched.timesteps:
        xin = x.expand(2 * P, -1, -1, -1)
        eps = c.unet(xin, t, encoder_hidden_states=torch.cat([uncond, cond]), return_dict=False)[0]
        samples += 2 * P
        eu, ec = eps.chunk(2)
        eps = eu + guidance * (ec - eu)
        stepped = torch.cat([sched.step(eps[p : p + 1], int(t), x, return_dict=False)[0] for p in range(P)])
        x = (masks * stepped).sum(0, keepdim=True) / masks.sum(0, keepdim=True)
    return model.decode(x), samples


def samples_per_generate(engine: Engine, scene: Scene) -> int:
    plan = engine.plan(scene)
    return sum(level.n for level in plan.levels) * (2 if plan.cfg else 1)


class RecordingRunner(DenoiserRunner):
    """An eager runner that keeps the inputs of each call."""

    def __init__(self, model):
        super().__init__(model.family, model.region_ctx)
        self.seen: list[dict[str, torch.Tensor]] = []

    def __call__(self, inputs: dict[str, torch.Tensor]) -> torch.Tensor:
        self.seen.append(inputs)
        return super().__call__(inputs)


class Floor:
    """The bare work of one steady-state frame: the frame's own UNet call
    (same inputs, region weights included) run directly, plus one decode of
    its latent, with no engine code around them."""

    def __init__(self, engine: Engine, stream):
        model = engine.model
        runner, recorder = model.runner, RecordingRunner(model)
        model.runner = recorder
        try:
            stream.step()
        finally:
            model.runner = runner
        self.calls = recorder.seen
        self.plain = DenoiserRunner(model.family, model.region_ctx)
        self.autoencoder = model.autoencoder
        self.tokens = model.family.tokens
        self.z = torch.zeros((1, model.channels, *stream.plan.latent_hw), dtype=model.dtype, device=model.device)

    @torch.no_grad()
    def __call__(self) -> None:
        self.unet_call()
        ae = self.autoencoder
        img = ae.vae.decode(self.z / ae.scale + ae.shift, return_dict=False)[0]
        img.float().cpu()

    @torch.no_grad()
    def without_regions(self) -> None:
        """The same UNet call with plain cross-attention to one prompt (attention
        mode: what the regional attention itself costs, against ``unet_call``)."""
        for inputs in self.calls:
            plain = {k: v for k, v in inputs.items() if not k.startswith(WEIGHTS)}
            plain["emb"] = plain["emb"][:, : self.tokens].contiguous()
            self.plain(plain)

    @torch.no_grad()
    def unet_call(self) -> None:
        for inputs in self.calls:
            self.plain(inputs)


@torch.no_grad()
def locality(engine: Engine, scene: Scene) -> float:
    """How tightly a region's prompt stays in its shape: change the middle
    region's prompt; mean image change inside its mask over the change outside."""
    k = len(scene.regions) // 2
    a = engine.generate(scene)
    scene.regions[k].prompt, old = "a bright yellow submarine", scene.regions[k].prompt
    try:
        b = engine.generate(scene)
    finally:
        scene.regions[k].prompt = old
    change = np.abs(a.astype(float) - b.astype(float)).mean(-1)
    inside = scene.regions[k].mask > 0
    return float(change[inside].mean() / max(change[~inside].mean(), 1e-6))


def peak_bytes(device: torch.device) -> int:
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device)
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def peak_memory(device: torch.device) -> str:
    if device.type == "cuda":
        return f"{torch.cuda.max_memory_allocated(device) / 2**30:.2f} GiB"
    return f"{resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20:.2f} GiB RSS (process)"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="tiny")
    ap.add_argument("--model-kind", default=None)
    ap.add_argument(
        "--tiny-vae",
        default=None,
        help="decode frames with this tiny autoencoder (hub id, folder); default: the model's",
    )
    ap.add_argument("--device")
    ap.add_argument("--dtype")
    ap.add_argument("--size", type=int, default=512, help="canvas height, and width unless --width")
    ap.add_argument("--width", type=int, default=0, help="canvas width; above the model's native size it is tiled")
    ap.add_argument("--steps", type=int, default=4)
    ap.add_argument("--regions", type=int, nargs="+", default=[1, 3, 6])
    ap.add_argument("--modes", nargs="+", default=list(REGION_MODES), choices=REGION_MODES)
    ap.add_argument(
        "--variants",
        nargs="+",
        default=["eager"],
        choices=list(VARIANTS),
        help="UNet call paths to compare (all but eager need CUDA)",
    )
    ap.add_argument("--frames", type=int, default=10, help="timed stream frames per case")
    ap.add_argument(
        "--warmup",
        type=int,
        default=2,
        help="untimed frames after the T frames that fill the stream (compiles, captures)",
    )
    ap.add_argument("--repeat", type=int, default=3, help="timed one-shot generations per case (0: none)")
    ap.add_argument("--baseline", action="store_true", help="also time MultiDiffusion as published (slow)")
    ap.add_argument("--no-locality", action="store_true", help="skip the shape-locality measure")
    ap.add_argument(
        "--time-limit", type=float, default=None, help="seconds; cases left when it is reached are skipped and listed"
    )
    ap.add_argument("--threads", type=int, help="CPU threads for torch (default: torch's choice)")
    ap.add_argument("--json", help="also write the rows to this file")
    ap.add_argument("--goal-fps", type=float, help="print each attention-mode row against this frame rate")
    ap.add_argument("--goal-gb", type=float, help="... and this peak memory, in GB (10^9 bytes)")
    ap.add_argument(
        "--before", metavar="REV", help="also time the engine of this git revision (e.g. main), side by side"
    )
    ap.add_argument(
        "--engine-only",
        action="store_true",
        help="the denoiser and the decoder answer at once, so only the engine's own work is timed "
        "(in CPU time of this process on a CPU); for --before comparisons",
    )
    args = ap.parse_args()
    start = time.monotonic()
    if args.threads:
        torch.set_num_threads(args.threads)

    comps = load_model(args.model, device=args.device, dtype=args.dtype, kind=args.model_kind, tiny_vae=args.tiny_vae)
    if args.baseline and comps.family != "sd15":
        ap.error(f"--baseline: MultiDiffusion as published is timed on SD-1.5 models, not {comps.family}")
    if args.engine_only:
        args.no_locality = True
        answer_at_once(comps)
    engines = {v: Engine(comps, **VARIANTS[v]) for v in args.variants}
    if args.before:
        # Made last, so its attention-region processors wrap this engine's: this
        # engine's calls pass through them, never the other way round.
        engines["before"] = engine_of_revision(args.before)(comps)
    timer = Timer(comps.device, cpu_time=args.engine_only)
    print(
        f"model {comps.name} ({comps.family}, {comps.kind}) on {comps.device} {comps.dtype}, "
        f"{args.width or args.size}x{args.size}, "
        f"{args.steps} steps, torch threads {torch.get_num_threads()}, variants {', '.join(args.variants)}\n",
        flush=True,
    )

    rows, skipped = [], []
    eager = next(iter(engines.values()))
    for n in args.regions:
        if args.time_limit and time.monotonic() - start > args.time_limit:
            skipped.append(f"{n} regions")
            continue
        # Both modes (and every variant) are set up first, then timed in turn, frame by frame.
        cases = {}
        for mode in args.modes:
            scene = scene_with(n, args.size, args.steps, mode=mode, width=args.width)
            row = dict(regions=n, mode=mode, gen_samples=samples_per_generate(eager, scene))
            streams = {}
            for v, e in list(engines.items()):
                if args.time_limit and time.monotonic() - start > args.time_limit and e is not eager:
                    skipped.append(f"{v}: {n} regions {mode} and after")  # e.g. a compile that took too long
                    del engines[v]
                    continue
                if comps.device.type == "cuda":
                    torch.cuda.reset_peak_memory_stats(comps.device)
                st = e.open_stream(scene)
                for _ in range(st.steps_in_flight + args.warmup):  # every level in flight from frame T on
                    st.step()
                streams[v] = st
                row[f"peak_{v}"], row[f"peak_{v}_bytes"] = peak_memory(comps.device), peak_bytes(comps.device)
            first = streams[args.variants[0]]
            row["T"] = first.steps_in_flight
            row["frame_samples"] = eager.begin_streams([first]).samples_total  # dropped: nothing changes
            if "before" in streams:
                row["frame_samples_before"] = engines["before"].begin_streams([streams["before"]]).samples_total
            cases[mode] = dict(
                scene=scene,
                row=row,
                streams=streams,
                floor=Floor(eager, first),
                times={v: [] for v in engines} | {"floor": [], "gen": [], "unet": [], "unet_plain": []},
                last={},
            )
        for _ in range(args.repeat):
            for c in cases.values():
                c["times"]["gen"].append(timer(lambda: eager.generate(c["scene"])))
        if comps.device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(comps.device)
        for _ in range(args.frames):
            for c in cases.values():
                for v in c["streams"]:
                    if v not in engines:
                        continue
                    c["times"][v].append(timer(lambda: c["last"].__setitem__(v, c["streams"][v].step().image)))
                c["times"]["floor"].append(timer(c["floor"]))
                if c["row"]["mode"] == "attention":
                    c["times"]["unet"].append(timer(c["floor"].unet_call))
                    c["times"]["unet_plain"].append(timer(c["floor"].without_regions))
        timed_peak = peak_memory(comps.device)  # while every mode, variant and floor ran
        for mode, c in cases.items():
            row, times = c["row"], c["times"]
            if times["gen"]:  # --repeat 0 skips the one-shot generate (large models on a CPU)
                row["gen_s"] = statistics.median(times["gen"])
            for v in engines:
                if not times[v]:
                    continue
                row[f"frame_{v}_s"] = statistics.median(times[v])
                row[f"diff_{v}"] = int(np.abs(c["last"][v].astype(int) - c["last"][args.variants[0]].astype(int)).max())
            row["floor_s"] = statistics.median(times["floor"])
            if times["unet"]:
                row["regional_attention_cost"] = (
                    statistics.median(times["unet"]) / statistics.median(times["unet_plain"]) - 1
                )
            row["peak_timed"] = timed_peak
            if not args.no_locality and n > 1:
                row["locality"] = locality(eager, c["scene"])
            if args.baseline and mode == "latent":
                out = {}
                row["md_s"] = timer(lambda: out.update(samples=multidiffusion(eager, c["scene"])[1]))
                row["md_samples"] = out["samples"]
            rows.append(row)
            print(json.dumps(row), flush=True)
    if not args.engine_only:
        print_tables(rows, args.variants)
    if args.goal_fps or args.goal_gb:
        print_goals(rows, args.variants, args.goal_fps, args.goal_gb, f"{args.width or args.size}x{args.size}")
    if args.before:
        print_before(rows, args.variants[0], args.before)
    if skipped:
        print(f"\nskipped (time limit {args.time_limit:g} s): {'; '.join(skipped)}")
    print(f"\ntotal {time.monotonic() - start:.0f} s")
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"model": comps.describe(), "args": vars(args), "rows": rows, "skipped": skipped}, f, indent=1)


def answer_at_once(comps) -> None:
    """The denoiser returns half its input and the decoder a black image, at once."""
    factor = comps.vae_scale_factor
    comps.unet.forward = lambda sample, *a, **k: (sample * 0.5,)

    def black(z, return_dict=False):
        return (z.new_zeros((z.shape[0], 3, z.shape[2] * factor, z.shape[3] * factor)),)

    comps.vae.decode = black


def print_goals(rows: list[dict], variants: list[str], fps: float | None, gb: float | None, size: str) -> None:
    """Each attention-mode row's stream rate and peak memory beside the goals."""
    goal = " and ".join(([f"≥ {fps:g} frames/s"] if fps else []) + ([f"≤ {gb:g} GB"] if gb else []))
    print(f"\n| goal: attention mode, {size}, {goal} | frame rate | peak memory | goal met |")
    print("|---|---|---|---|")
    for r in rows:
        if r["mode"] != "attention":
            continue
        for v in variants:
            if f"frame_{v}_s" not in r:
                continue
            rate, peak = 1 / r[f"frame_{v}_s"], r[f"peak_{v}_bytes"] / 1e9
            met = (not fps or rate >= fps) and (not gb or peak <= gb)
            print(f"| {r['regions']} regions, {v} | {rate:.1f} FPS | {peak:.2f} GB | {'yes' if met else 'no'} |")


def print_before(rows: list[dict], v0: str, rev: str) -> None:
    print(
        f"\n| regions | mode | UNet samples / frame, {rev} → this | stream frame, {rev} → this | change "
        f"| max pixel difference |"
    )
    print("|---|---|---|---|---|---|")
    for r in rows:
        if "frame_before_s" in r:
            old, new = r["frame_before_s"], r[f"frame_{v0}_s"]
            print(
                f"| {r['regions']} | {r['mode']} | {r['frame_samples_before']} → {r['frame_samples']} | "
                f"{old * 1000:.{1 if old < 0.1 else 0}f} → {new * 1000:.{1 if old < 0.1 else 0}f} ms | "
                f"{(new / old - 1) * 100:+.1f}% | {r['diff_before']} |"
            )


def print_tables(rows: list[dict], variants: list[str]) -> None:
    v0 = variants[0]
    print(
        f"\n| regions | mode | UNet samples / frame | frame ({v0}) | bare floor | engine overhead | stream FPS "
        f"| one-shot generate | shape locality |"
    )
    print("|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        loc = f"{r['locality']:.1f}" if "locality" in r else "-"
        gen = f"{r['gen_s']:.3f} s" if "gen_s" in r else "-"
        print(
            f"| {r['regions']} | {r['mode']} | {r['frame_samples']} | {r[f'frame_{v0}_s'] * 1000:.0f} ms | "
            f"{r['floor_s'] * 1000:.0f} ms | {(r[f'frame_{v0}_s'] / r['floor_s'] - 1) * 100:+.1f}% | "
            f"{1 / r[f'frame_{v0}_s']:.2f} | {gen} ({r['gen_samples']} samples) | {loc} |"
        )
    by = {(r["regions"], r["mode"]): r for r in rows}
    pairs = [
        (n, by[(n, "latent")], by[(n, "attention")])
        for n in sorted({r["regions"] for r in rows})
        if (n, "latent") in by and (n, "attention") in by
    ]
    if any("regional_attention_cost" in r for r in rows):
        print("\n| regions | UNet call with every region's prompt vs the same call with one plain prompt |")
        print("|---|---|")
        for r in rows:
            if "regional_attention_cost" in r:
                print(f"| {r['regions']} | {r['regional_attention_cost'] * 100:+.1f}% |")
    if pairs:
        print(
            "\n| regions | UNet samples / frame, attention : latent | frame time, attention : latent "
            "| shape locality, latent / attention |"
        )
        print("|---|---|---|---|")
        for n, lat, att in pairs:
            loc = f"{lat['locality']:.1f} / {att['locality']:.1f}" if "locality" in lat else "-"
            print(
                f"| {n} | {att['frame_samples']} : {lat['frame_samples']} "
                f"(1/{lat['frame_samples'] / att['frame_samples']:.1f}) | "
                f"{att[f'frame_{v0}_s'] * 1000:.0f} : {lat[f'frame_{v0}_s'] * 1000:.0f} ms "
                f"(1/{lat[f'frame_{v0}_s'] / att[f'frame_{v0}_s']:.1f}) | {loc} |"
            )
    if len(variants) > 1:
        print(
            "\n| regions | mode | "
            + " | ".join(f"{v}: frame (FPS), max pixel diff vs {v0}, peak memory" for v in variants)
            + " | peak memory, all timed |"
        )
        print("|---|---|" + "---|" * (len(variants) + 1))
        for r in rows:
            cells = [
                f"{r[f'frame_{v}_s'] * 1000:.1f} ms ({1 / r[f'frame_{v}_s']:.1f}), {r[f'diff_{v}']}, {r[f'peak_{v}']}"
                if f"frame_{v}_s" in r
                else "skipped"
                for v in variants
            ]
            print(f"| {r['regions']} | {r['mode']} | " + " | ".join(cells) + f" | {r['peak_timed']} |")
    if any("md_s" in r for r in rows):
        print(
            "\n| regions | SMD generate (4 LCM steps) | UNet samples | MultiDiffusion (50 DDIM, CFG 7.5) "
            "| UNet samples | speed-up |"
        )
        print("|---|---|---|---|---|---|")
        for r in rows:
            if "md_s" in r and "gen_s" in r:
                print(
                    f"| {r['regions']} | {r['gen_s']:.3f} s | {r['gen_samples']} | {r['md_s']:.2f} s | "
                    f"{r['md_samples']} | {r['md_s'] / r['gen_s']:.1f}x |"
                )


if __name__ == "__main__":
    main()

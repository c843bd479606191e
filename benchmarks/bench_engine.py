"""Engine benchmark: StreamMultiDiffusion against MultiDiffusion as published,
and the stream's own overhead against the bare work each frame must do.

    python benchmarks/bench_engine.py --model tiny --size 512 --regions 1 3 6
    python benchmarks/bench_engine.py --model random-sd15 --device cuda --dtype fp16 --size 512 --regions 1 3 6

Everything is measured side by side in one run; figures are medians.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time

import numpy as np
import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from smd_daemon.engine.core import Engine  # noqa: E402
from smd_daemon.engine.models import load_model  # noqa: E402
from smd_daemon.engine.scene import Background, Region, Scene  # noqa: E402

PROMPTS = ["a red fox", "snowy pine forest", "a castle on a hill", "a hot air balloon", "a river", "an old oak tree"]


def scene_with(n: int, size: int, steps: int = 4, seed: int = 0) -> Scene:
    """``n`` overlapping regions spread over the canvas, plus a background prompt."""
    regions = []
    for k in range(n):
        m = np.zeros((size, size), np.float32)
        x0 = int(k * size / (n + 1))
        m[size // 8: size - size // 8, x0: x0 + 2 * size // (n + 1)] = 1
        regions.append(Region(PROMPTS[k % len(PROMPTS)], m))
    return Scene(size, size, regions, background=Background("a wide landscape"), seed=seed, steps=steps)


class Timer:
    def __init__(self, device: torch.device):
        self.cuda = device.type == "cuda"

    def __call__(self, fn, repeat: int, warmup: int = 1) -> float:
        for _ in range(warmup):
            fn()
        times = []
        for _ in range(repeat):
            if self.cuda:
                torch.cuda.synchronize()
            t = time.perf_counter()
            fn()
            if self.cuda:
                torch.cuda.synchronize()
            times.append(time.perf_counter() - t)
        return statistics.median(times)


@torch.no_grad()
def multidiffusion(engine: Engine, scene: Scene, steps: int = 50, guidance: float = 7.5) -> tuple[np.ndarray, int]:
    """MultiDiffusion as published: DDIM, classifier-free guidance (a doubled
    batch), each region stepped on its own and the *stepped* latents averaged
    with the masks after every scheduler step. Returns (image, UNet samples)."""
    from diffusers import DDIMScheduler

    c = engine.c
    sched = DDIMScheduler.from_config(engine.scheduler.config)
    sched.set_timesteps(steps)
    h, w = scene.height // engine.vae_scale, scene.width // engine.vae_scale
    prompts = [scene.background.prompt] + [r.prompt for r in scene.regions]
    cond = engine.encode_prompts(prompts)
    uncond = engine.encode_prompts([""] * len(prompts))
    masks = [torch.ones(h, w)] + [torch.nn.functional.interpolate(torch.from_numpy(r.mask)[None, None], (h, w),
                                                                  mode="nearest")[0, 0] for r in scene.regions]
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
        stepped = torch.cat([sched.step(eps[p:p + 1], t, x).prev_sample for p in range(P)])
        x = (masks * stepped).sum(0, keepdim=True) / masks.sum(0, keepdim=True)
    return engine.decode(x), samples


def count_samples(engine: Engine, fn) -> int:
    n = []
    orig = engine.c.unet.forward

    def counting(sample, *a, **k):
        n.append(sample.shape[0])
        return orig(sample, *a, **k)

    engine.c.unet.forward = counting
    try:
        fn()
    finally:
        engine.c.unet.forward = orig
    return sum(n)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="tiny")
    ap.add_argument("--device")
    ap.add_argument("--dtype")
    ap.add_argument("--size", type=int, default=512)
    ap.add_argument("--regions", type=int, nargs="+", default=[1, 3, 6])
    ap.add_argument("--frames", type=int, default=10, help="timed stream frames per case")
    ap.add_argument("--repeat", type=int, default=3, help="timed one-shot generations per case")
    ap.add_argument("--baseline-repeat", type=int, default=1)
    ap.add_argument("--no-baseline", action="store_true")
    args = ap.parse_args()

    comps = load_model(args.model, device=args.device, dtype=args.dtype)
    engine = Engine(comps)
    timer = Timer(comps.device)
    print(f"model {comps.name} on {comps.device} {comps.dtype}, {args.size}x{args.size}, "
          f"torch threads {torch.get_num_threads()}\n")

    rows = []
    for n in args.regions:
        scene = scene_with(n, args.size)
        ours_t = timer(lambda: engine.generate(scene), args.repeat)
        ours_samples = count_samples(engine, lambda: engine.generate(scene))

        stream = engine.open_stream(scene)
        T = stream.steps_in_flight
        for _ in range(2 * T):
            stream.step()

        # The bare work of one steady-state frame: one UNet call at the same
        # batch size and one decode, with no engine code around them.
        plan = stream.plan
        batch = count_samples(engine, stream.step)
        h, w = plan.latent_hw
        xb = torch.randn((batch, 4, h, w), dtype=comps.dtype).to(comps.device)
        tb = torch.full((batch,), plan.timesteps[0], device=comps.device)
        eb = plan.bg_emb.expand(batch, -1, -1)
        kw = {"timestep_cond": plan.time_cond.expand(batch, -1)} if plan.time_cond is not None else {}
        z = xb[:1]

        def bare():
            with torch.no_grad():
                comps.unet(xb, tb, encoder_hidden_states=eb, return_dict=False, **kw)
                comps.vae.decode(z / comps.vae.config.scaling_factor, return_dict=False)

        # Interleaved so that machine noise hits both sides alike.
        frame_ts, bare_ts = [], []
        for _ in range(args.frames):
            frame_ts.append(timer(stream.step, 1, warmup=0))
            bare_ts.append(timer(bare, 1, warmup=0))
        frame_t, bare_t = statistics.median(frame_ts), statistics.median(bare_ts)

        row = dict(regions=n, gen_s=ours_t, gen_samples=ours_samples, frame_s=frame_t, bare_s=bare_t,
                   batch=batch, T=T)
        if not args.no_baseline:
            out = {}
            md_t = timer(lambda: out.update(samples=multidiffusion(engine, scene)[1]), args.baseline_repeat, warmup=0)
            row.update(md_s=md_t, md_samples=out["samples"])
        rows.append(row)
        print(row, flush=True)

    print("\n| regions | SMD generate (4 LCM steps) | UNet samples | MultiDiffusion (50 DDIM, CFG 7.5) | UNet samples "
          "| speed-up |")
    print("|---|---|---|---|---|---|")
    for r in rows:
        md = f"{r['md_s']:.2f} s | {r['md_samples']} | {r['md_s'] / r['gen_s']:.1f}x" if "md_s" in r else "- | - | -"
        print(f"| {r['regions']} | {r['gen_s']:.3f} s | {r['gen_samples']} | {md} |")
    print("\n| regions | stream batch (T x samples) | stream frame | bare UNet call + decode | engine overhead "
          "| stream FPS | one-shot generate FPS | stream / one-shot |")
    print("|---|---|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['regions']} | {r['batch']} | {r['frame_s'] * 1000:.0f} ms | {r['bare_s'] * 1000:.0f} ms | "
              f"{(r['frame_s'] / r['bare_s'] - 1) * 100:+.1f}% | {1 / r['frame_s']:.2f} | {1 / r['gen_s']:.2f} | "
              f"{r['gen_s'] / r['frame_s']:.1f}x |")


if __name__ == "__main__":
    main()

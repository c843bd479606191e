#!/usr/bin/env bash
# The prepared GPU run behind docs/benchmarks.md: one CUDA GPU, under 9 minutes.
#
#   bash benchmarks/gpu_figures.sh            # writes gpu_figures.json and gpu_control.json, prints the tables
#
# Nothing is downloaded: the real SD-1.5 architecture with random weights
# (`random-sd15`, same FLOPs as trained weights) and a tiny autoencoder, fp16,
# 512x512, 4 steps, 3 regions + background, latent and attention mode, each
# with the UNet run eagerly, replayed from CUDA graphs and torch.compiled.
# 10 untimed frames once the stream is full, 100 timed frames per variant
# (StreamDiffusion's method). Cases still left after 400 s are skipped and
# listed, so the run ends in time even if compiling is slow. Then the control
# layers' price (bench_control.py: 100 frames each of no control, a
# T2I-Adapter, a ControlNet). Extra arguments go to both (later ones win;
# bench_control.py ignores those it has no use for), e.g. a CPU dry run:
#   bash benchmarks/gpu_figures.sh --model tiny --device cpu --dtype fp32 --variants eager --frames 2 --size 128
set -euo pipefail
cd "$(dirname "$0")/.."
PY="${PYTHON:-.venv/bin/python}"
[ -x "$PY" ] || PY=python3
export HF_HUB_OFFLINE=1
"$PY" benchmarks/bench_engine.py --model random-sd15 --device cuda --dtype fp16 --size 512 --steps 4 \
    --regions 3 --modes latent attention --variants eager graphs compiled --frames 100 --warmup 10 --repeat 5 \
    --time-limit 400 --json "${OUT:-gpu_figures.json}" "$@"
# Control layers: no control, one T2I-Adapter, one ControlNet (random, SD-1.5-sized), both modes, eager.
exec "$PY" benchmarks/bench_control.py --model random-sd15 --device cuda --dtype fp16 --size 512 --steps 4 \
    --regions 3 --frames 100 --warmup 10 --json "${OUT_CONTROL:-gpu_control.json}" "$@"

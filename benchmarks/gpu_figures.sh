#!/usr/bin/env bash
# The prepared GPU run behind docs/benchmarks.md: one CUDA GPU.
#
#   bash benchmarks/gpu_figures.sh                         # every case: writes gpu_figures*.json, prints the tables
#   CASES="sdxl-turbo-4 sdxl-1024" bash benchmarks/gpu_figures.sh   # some of them
#
# Every case: 3 regions + background, latent and attention mode, fp16, the
# UNet run eagerly, replayed from CUDA graphs and torch.compiled; 10 untimed
# frames once the stream is full, 100 timed frames per variant
# (StreamDiffusion's method). Cases of a run still left after its time limit
# are skipped and listed, so each run ends in time even if compiling is slow.
#
#   case          model                                  size   steps  time limit  goal (H100/H200, attention mode)
#   sd15          SD-1.5 architecture                    512²   4      400 s       -
#   sdxl-turbo-1  SDXL-Turbo                             512²   1      150 s       -
#   sdxl-turbo-4  SDXL-Turbo                             512²   4      150 s       ≥ 20 frames/s, ≤ 12 GB
#   sdxl-1024     SDXL (Lightning's trailing schedule)   1024²  4      150 s       ≥ 5 frames/s, ≤ 12 GB
#   control       SD-1.5 architecture: no control, a     512²   4      -           adapter ≤ 10 % per frame
#                 T2I-Adapter, a ControlNet (random)
#
# A device call is at most 10 minutes: run sd15 and control in one call,
# the SDXL cases in another (CASES=...).
#
# Nothing is downloaded (HF_HUB_OFFLINE=1). SD-1.5 is the real architecture
# with random weights (`random-sd15`, same FLOPs as trained weights). SDXL
# comes from the hub cache of the machine when it holds the model and TAESDXL
# (stabilityai/sdxl-turbo, stabilityai/stable-diffusion-xl-base-1.0,
# madebyollin/taesdxl for the live frames), else it is `random-sdxl` (SDXL's
# UNet with random weights and a TAESDXL-sized decoder: the same UNet FLOPs).
# SD15_MODEL, SDXL_TURBO_MODEL and SDXL_MODEL choose other models. A fused
# LoRA (Lightning, LCM) costs nothing per step, so the figures hold for them.
#
# SD-1.5 writes $OUT (gpu_figures.json), each SDXL case ${OUT%.json}-CASE.json,
# the control case $OUT_CONTROL (gpu_control.json).
# Extra arguments go to every run (later ones win; bench_control.py ignores
# those it has no use for), e.g. a CPU dry run:
#   SD15_MODEL=tiny SDXL_MODEL=tiny-xl SDXL_TURBO_MODEL=tiny-xl \
#       bash benchmarks/gpu_figures.sh --device cpu --dtype fp32 --variants eager --frames 2 --size 128
set -euo pipefail
cd "$(dirname "$0")/.."
PY="${PYTHON:-.venv/bin/python}"
[ -x "$PY" ] || PY=python3
export HF_HUB_OFFLINE=1
OUT="${OUT:-gpu_figures.json}"
CASES="${CASES:-sd15 control sdxl-turbo-1 sdxl-turbo-4 sdxl-1024}"

# "true" when the hub cache holds every file named (repo:path ...): nothing is fetched.
cached() {
    "$PY" - "$@" <<'EOF'
import sys
from huggingface_hub import try_to_load_from_cache

wanted = [a.split(":", 1) for a in sys.argv[1:]]
sys.exit(0 if all(isinstance(try_to_load_from_cache(repo, path), str) for repo, path in wanted) else 1)
EOF
}

# An SDXL hub model and TAESDXL when cached, else the random SDXL architecture.
sdxl_model() {
    local repo=$1
    if cached "$repo:unet/diffusion_pytorch_model.safetensors" "$repo:model_index.json" \
        madebyollin/taesdxl:diffusion_pytorch_model.safetensors; then
        echo "$repo --tiny-vae madebyollin/taesdxl"
    else
        echo "random-sdxl"
    fi
}

run() {  # run CASE MODEL-ARGS -- BENCH-ARGS...
    local case=$1 model=$2 json
    shift 3
    json=$([ "$case" = sd15 ] && echo "$OUT" || echo "${OUT%.json}-$case.json")
    echo "=== $case: --model $model $* ==="
    # shellcheck disable=SC2086 # the model arguments are words on purpose
    "$PY" benchmarks/bench_engine.py --model $model --device cuda --dtype fp16 --regions 3 --modes latent attention \
        --variants eager graphs compiled --frames 100 --warmup 10 --repeat 5 "$@" --json "$json" "${EXTRA[@]}"
}

EXTRA=("$@")
for case in $CASES; do
    case $case in
    sd15) run sd15 "${SD15_MODEL:-random-sd15}" -- --size 512 --steps 4 --time-limit 400 ;;
    sdxl-turbo-1 | sdxl-turbo-4)
        model=${SDXL_TURBO_MODEL:-$(sdxl_model stabilityai/sdxl-turbo)}
        run "$case" "$model" -- --size 512 --steps "${case#sdxl-turbo-}" --model-kind turbo --time-limit 150 \
            $([ "$case" = sdxl-turbo-4 ] && echo --goal-fps 20 --goal-gb 12)
        ;;
    sdxl-1024)
        model=${SDXL_MODEL:-$(sdxl_model stabilityai/stable-diffusion-xl-base-1.0)}
        run sdxl-1024 "$model" -- --size 1024 --steps 4 --model-kind turbo --time-limit 150 --goal-fps 5 --goal-gb 12
        ;;
    control)
        echo "=== control: --model ${SD15_MODEL:-random-sd15} ==="
        "$PY" benchmarks/bench_control.py --model "${SD15_MODEL:-random-sd15}" --device cuda --dtype fp16 --size 512 \
            --steps 4 --regions 3 --frames 100 --warmup 10 --json "${OUT_CONTROL:-gpu_control.json}" "${EXTRA[@]}"
        ;;
    *)
        echo "unknown case $case: use sd15, control, sdxl-turbo-1, sdxl-turbo-4, sdxl-1024" >&2
        exit 2
        ;;
    esac
done

"""The prepared GPU benchmark run must not break unnoticed: its exact script,
dry-run on this CPU with the tiny model."""

import json
import os
import subprocess
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_gpu_figures_script_dry_runs_on_cpu(tmp_path):
    """Every case of the GPU run, on the tiny presets: SD-1.5, its control layers and the three SDXL ones."""
    out = tmp_path / "figures.json"
    control = tmp_path / "control.json"
    env = {
        **os.environ,
        "OUT": str(out),
        "OUT_CONTROL": str(control),
        "PYTHON": sys.executable,
        "OMP_NUM_THREADS": "1",
        "SD15_MODEL": "tiny",
        "SDXL_TURBO_MODEL": "tiny-xl",
        "SDXL_MODEL": "tiny-xl",
    }
    proc = subprocess.run(
        [
            "bash",
            "benchmarks/gpu_figures.sh",
            "--device",
            "cpu",
            "--dtype",
            "fp32",
            "--variants",
            "eager",
            "--frames",
            "1",
            "--warmup",
            "0",
            "--repeat",
            "1",
            "--size",
            "64",
            "--regions",
            "2",
        ],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=900,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    rows = json.loads(out.read_text())["rows"]
    assert [(r["regions"], r["mode"]) for r in rows] == [(2, "latent"), (2, "attention")]
    latent, attention = rows
    assert attention["frame_samples"] == attention["T"] == 4 < latent["frame_samples"]
    assert "| regions | UNet samples / frame, attention : latent |" in proc.stdout
    # The control case: no control, a T2I-Adapter, a ControlNet, in both modes.
    rows = json.loads(control.read_text())["rows"]
    assert [r["mode"] for r in rows] == ["latent", "attention"]
    for r in rows:
        assert set(r["frame_s"]) == {"none", "adapter", "controlnet"}
        assert r["adapter_forwards_per_frame"] == 0 and r["adapter_forwards_after_control_edit"] == 1
        assert r["adapter_forwards_after_region_edit"] == 0 and r["controlnet_forwards_per_frame"] == 1
    assert "| mode | frame, no control | T2I-Adapter |" in proc.stdout
    for case, steps in (("sdxl-turbo-1", 1), ("sdxl-turbo-4", 4), ("sdxl-1024", 4)):
        figures = json.loads((tmp_path / f"figures-{case}.json").read_text())
        assert figures["model"]["family"] == "sdxl" and figures["model"]["kind"] == "turbo", case
        assert figures["args"]["steps"] == steps and figures["args"]["dtype"] == "fp32", case
        latent, attention = figures["rows"]
        assert attention["mode"] == "attention" and attention["frame_samples"] == attention["T"] == steps, case
        assert latent["frame_samples"] > steps, case
    # The goals are printed beside the figures, for the cases that have them.
    assert "| goal: attention mode, 64x64, ≥ 20 frames/s and ≤ 12 GB |" in proc.stdout
    assert "| goal: attention mode, 64x64, ≥ 5 frames/s and ≤ 12 GB |" in proc.stdout
    assert proc.stdout.count("| goal: ") == 2 and proc.stdout.count("=== ") == 5


def test_plan_benchmark_dry_runs_on_cpu():
    proc = subprocess.run(
        [
            sys.executable,
            "benchmarks/bench_plan.py",
            "--model",
            "tiny",
            "--sizes",
            "512",
            "--no-full",
            "--threads",
            "1",
        ],
        cwd=ROOT,
        env={**os.environ, "OMP_NUM_THREADS": "1"},
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    row = [line for line in proc.stdout.splitlines() if line.startswith("| 512x512 |")]
    assert len(row) == 1 and row[0].count("|") == 7, proc.stdout

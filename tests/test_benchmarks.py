"""The prepared GPU benchmark run must not break unnoticed: its exact script,
dry-run on this CPU with the tiny model."""

import json
import os
import subprocess
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_gpu_figures_script_dry_runs_on_cpu(tmp_path):
    out = tmp_path / "figures.json"
    control = tmp_path / "control.json"
    env = {**os.environ, "OUT": str(out), "OUT_CONTROL": str(control), "PYTHON": sys.executable, "OMP_NUM_THREADS": "1"}
    proc = subprocess.run(
        [
            "bash",
            "benchmarks/gpu_figures.sh",
            "--model",
            "tiny",
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
        timeout=600,
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

"""Every command, given bad input, says what is wrong in one line and exits 2: never a traceback."""

import subprocess
import sys

import pytest
from daemon_util import daemon_env, free_port
from test_models import _make_lora

CASES = {
    "serve: an http address": (
        ["serve", "--model", "tiny", "--bind", "http://127.0.0.1:7555"],
        "an address looks like",
    ),
    "serve: a port that is not a number": (["serve", "--bind", "127.0.0.1:port"], "from 1 to 65535"),
    "serve: a flag's value": (["serve", "--max-fps", "fast"], "invalid float value: 'fast'"),
    "check: an http address": (["check", "http://gpu-box"], "http:// is not spoken here"),
    "check: a timeout below zero": (["check", "--timeout", "-3"], "--timeout must be"),
    "check: an unknown flag": (["check", "--colour"], "unrecognized arguments: --colour"),
    "render: no output": (["render", "scene.ora"], "required: -o/--output"),
    "render: a missing scene": (["render", "nothing.ora", "-o", "out.png"], "no such file"),
    "keys: a bad client name": (["keys", "KEYDIR", "--client", "a/b"], "client name 'a/b'"),
    "an unknown command": (["paint"], "invalid choice: 'paint'"),
}


def _fails_in_one_line(args, cwd, needle):
    res = subprocess.run(
        [sys.executable, "-m", "smd_daemon", *args],
        capture_output=True,
        text=True,
        env=daemon_env(),
        cwd=cwd,
        timeout=120,
    )
    lines = [ln for ln in res.stderr.strip().splitlines() if not ln.startswith("[transformers] ")]
    assert res.returncode == 2, res.stdout + res.stderr
    assert "Traceback" not in res.stderr and len(lines) == 1, res.stderr
    assert lines[0].startswith("smd-daemon") and "error: " in lines[0] and needle in lines[0], lines[0]


@pytest.mark.parametrize("case", sorted(CASES))
def test_bad_input_is_one_line_and_exit_2(case, tmp_path):
    args, needle = CASES[case]
    args = [str(tmp_path / "keys") if a == "KEYDIR" else a for a in args]
    _fails_in_one_line(args, tmp_path, needle)


# Model files of the wrong family, refused as the daemon starts (before any client).
MODEL_CASES = {
    "an SDXL checkpoint with an SD-1.5 --model-config": (
        ["--model", "SDXL_FILE", "--model-config", "SD15_DIR"],
        "is an SDXL model but --model-config",
    ),
    "a checkpoint whose family cannot be told": (["--model", "VAE_FILE"], "family cannot be told from its keys"),
    "an SD-1.5 LoRA on an SDXL checkpoint": (
        ["--model", "SDXL_FILE", "--model-config", "SDXL_DIR", "--lora", "SD15_LORA"],
        "not for this SDXL model",
    ),
}


@pytest.fixture(scope="module")
def model_files(tmp_path_factory):
    from safetensors.torch import save_file

    from smd_daemon.engine.single_file import save_sdxl_single_file, sgm_state_dict
    from smd_daemon.engine.tiny import build_tiny_pipeline
    from smd_daemon.engine.tiny_xl import build_tiny_xl_pipeline

    d = tmp_path_factory.mktemp("models")
    xl = build_tiny_xl_pipeline(0)
    save_sdxl_single_file(xl, str(d / "xl.safetensors"))
    xl.save_pretrained(d / "xl")
    sd15 = build_tiny_pipeline(0)
    sd15.save_pretrained(d / "sd15")
    vae_only = {k: v for k, v in sgm_state_dict(xl).items() if k.startswith("first_stage_model.")}
    save_file(vae_only, d / "vae.safetensors")
    (d / "lora").mkdir()
    lora, _ = _make_lora(d / "lora")  # an SD-1.5 LoRA as diffusers saves one
    return {
        "SDXL_FILE": d / "xl.safetensors",
        "SDXL_DIR": d / "xl",
        "SD15_DIR": d / "sd15",
        "VAE_FILE": d / "vae.safetensors",
        "SD15_LORA": lora,
    }


@pytest.mark.parametrize("case", sorted(MODEL_CASES))
def test_bad_model_files_are_one_line_and_exit_2(case, model_files, tmp_path):
    args, needle = MODEL_CASES[case]
    args = [str(model_files.get(a, a)) for a in args]
    serve = ["serve", "--bind", f"127.0.0.1:{free_port()}", "--tiny-vae", "none", "--log-level", "error"]
    _fails_in_one_line([*serve, *args], tmp_path, needle)

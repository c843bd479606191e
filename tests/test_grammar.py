import numpy as np
import pytest

from smd_daemon.grammar import LayerInput, build_scene, parse_layer_name


@pytest.mark.parametrize("name, reason", [
    ("Paint Layer 3", "automatic"), ("Background", "automatic"), ("Group 2", "automatic"),
    ("Copy of a fox", "automatic"), ("Layer 12", "automatic"), ("# my sketch", "#"), ("", "no name"),
    ("   ", "no name"), ("SMD Preview", "plugin"), ("| neg: ugly", "no prompt"),
])
def test_ignored_names(name, reason):
    p = parse_layer_name(name)
    assert p.role == "ignored" and reason in p.reason


def test_hidden_layers_are_ignored():
    assert parse_layer_name("a red fox", visible=False).reason == "hidden"


def test_plain_name_is_a_region_prompt_with_defaults():
    p = parse_layer_name("  a red fox ")
    assert (p.role, p.prompt, p.mask_strength, p.mask_std, p.prompt_strength) == ("region", "a red fox", 1.0, 8.0, 0.95)


def test_options_after_bars():
    p = parse_layer_name("a red fox | neg: blurry, ugly | blur: 4 | strength: 0.98 | prompt-strength: 1")
    assert p.prompt == "a red fox" and p.negative_prompt == "blurry, ugly"
    assert (p.mask_std, p.mask_strength, p.prompt_strength) == (4.0, 0.98, 1.0)
    assert not p.warnings


def test_bad_options_become_warnings_not_errors():
    p = parse_layer_name("a fox | blur: lots | strength: 3 | colour: red | nonsense")
    assert p.role == "region" and p.mask_std == 8.0 and p.mask_strength == 1.0
    assert len(p.warnings) == 4


def test_background_layer():
    p = parse_layer_name("BG: snowy pine forest | strength: 0.4 | neg: people")
    assert (p.role, p.prompt, p.background_strength, p.negative_prompt) == ("background", "snowy pine forest", 0.4,
                                                                            "people")


def test_build_scene_reads_layers_bottom_to_top():
    a = np.zeros((64, 64), np.uint8)
    a[:, :32] = 255
    b = np.zeros((64, 64), np.uint8)
    b[10:20, 10:20] = 128
    layers = [
        LayerInput("Background", np.full((64, 64), 255, np.uint8)),
        LayerInput("bg: a meadow | strength: 0.5", np.full((64, 64), 255, np.uint8)),
        LayerInput("a red fox | blur: 2", a),
        LayerInput("a hidden cat", a, visible=False),
        LayerInput("an empty layer", np.zeros((64, 64), np.uint8)),
        LayerInput("a bird", b),
        LayerInput("wrong size", np.zeros((32, 32), np.uint8) + 255),
    ]
    scene, parsed = build_scene(layers, 64, 64, background_prompt="ignored", negative_prompt="blurry", seed=9)
    assert [r.prompt for r in scene.regions] == ["a red fox", "a bird"]
    assert scene.regions[0].mask_std == 2 and scene.regions[0].negative_prompt == "blurry"
    assert scene.regions[1].mask.dtype == np.uint8 and scene.regions[1].mask.max() == 128  # alpha as it came
    assert scene.background.prompt == "a meadow" and scene.background.strength == 0.5
    assert [p.role for p in parsed] == ["ignored", "background", "region", "ignored", "ignored", "region", "ignored"]
    assert "empty" in parsed[4].reason and "does not match" in parsed[6].reason
    assert parsed[2].to_dict()["blur"] == 2
    scene.validate()

from pathlib import Path

import numpy as np
import pytest

from smd_daemon.grammar import REASON_CODES, WARNING_CODES, LayerInput, build_scene, is_automatic_name, parse_layer_name

REPO = Path(__file__).resolve().parents[1]


# Default names other programs give layers; Krita's were read from Krita 5.1 itself (en, de, fr, es).
AUTOMATIC = [
    # Krita 5.1, English: new layers, masks, filter layers with the filter's name, duplicates
    "Paint Layer 1",
    "Paint Layer 12",
    "Background",
    "background",
    "Group 3",
    "Clone Layer 4",
    "Vector Layer 5",
    "Fill Layer 6",
    "File Layer 2",
    "Filter Layer 6 (Levels)",
    "Filter Mask 1 (Levels)",
    "Transparency Mask 1",
    "Colorize Mask 1",
    "Transform Mask 1",
    "Selection 1",
    "Selection Mask",
    "Visible",
    "Layer 2 (pasted)",
    "Copy of Group 3",
    "Copy of Copy of Paint Layer 1",
    "Paint Layer 3 (merged)",
    "Layer 12",
    # Krita 5.1, German / French / Spanish
    "Hintergrund",
    "Malebene 2",
    "Gruppe 1",
    "Kopie von Gruppe 2",
    "Ebene klonen 3",
    "Vektorebene 4",
    "Transparenzmaske 1",
    "Einfärben der Maske 1",
    "Filtermaske 1 (Stufen)",
    "Auswahl 1",
    "Filterebene 5 (Stufen)",
    "Füllebene 5",
    "Sichtbar",
    "Arrière-plan",
    "Calque de dessin 2",
    "Calque de groupe 2",
    "Copier de Calque de groupe 2",
    "Calque de clonage 3",
    "Calque vectoriel 4",
    "Masque de transparence 1",
    "Masque de filtrage 1 (Niveaux)",
    "Sélection 1",
    "Calque de filtrage 5 (Niveaux)",
    "Calque de remplissage 5",
    "Fondo",
    "Capa de pintura 2",
    "Agrupar 2",
    "Copia de Agrupar 2",
    "Clonar capa 3",
    "Capa vectorial 4",
    "Máscara de transparencia 1",
    "Máscara de filtro 1 (Niveles)",
    "Selección 1",
    "Capa de filtro 5 (Niveles)",
    # GIMP 2.10 (en, de, fr, es)
    "New Layer",
    "New Layer #2",
    "Layer 1 copy",
    "Background copy",
    "Background copy #1",
    "Pasted Layer",
    "Pasted Layer #3",
    "Layer Group",
    "Layer Group #1",
    "Clipboard",
    "Floating Selection\n(Pasted Layer)",
    "Neue Ebene",
    "Neue Ebene #2",
    "Hintergrund-Kopie",
    "Eingefügte Ebene",
    "Ebenengruppe",
    "Nouveau calque",
    "Nouveau calque #1",
    "Copie de Arrière-plan",
    "Calque copié",
    "Groupe de calques",
    "Capa nueva",
    "Capa nueva #2",
    "Copia de Fondo",
    "Capa pegada",
    "Grupo de capas",
    # Photoshop and MyPaint (en, de, fr, es)
    "Layer 1",
    "Layer 1 copy 2",
    "Group 1",
    "Ebene 2",
    "Ebene 1 Kopie",
    "Calque 1",
    "Calque 1 copie",
    "Groupe 1",
    "Capa 1",
    "Capa 1 copia",
    "Grupo 1",
    "Layer 3",
    # spacing and case as typed
    "  paint layer 3 ",
    "LAYER 2",
]
# Names that look close but are prompts and must stay regions.
PROMPTS = [
    ("a red fox", "a red fox"),
    ("layer cake", "layer cake"),
    ("a group of birds", "a group of birds"),
    ("background trees", "background trees"),
    ("Fondo marino", "Fondo marino"),
    ("fondo del mar", "fondo del mar"),
    ("Visible light", "Visible light"),
    ("selection of fruit", "selection of fruit"),
    ("copy of the mona lisa", "copy of the mona lisa"),
    ("Layer cake 2", "Layer cake 2"),
    ("background (blurry)", "background (blurry)"),
    ("a paper copy", "a paper copy"),
    ("Copy of a red fox", "a red fox"),
    ("Kopie von ein roter Fuchs", "ein roter Fuchs"),
    ("Copy of Copy of a cat | blur: 2", "a cat"),
    ("capa roja", "capa roja"),
    ("calque 1 of a cat", "calque 1 of a cat"),
]


@pytest.mark.parametrize("name", AUTOMATIC)
def test_automatic_names_of_every_program_and_language_are_ignored(name):
    p = parse_layer_name(name)
    assert (p.role, p.reason_code) == ("ignored", "automatic_name"), name
    assert p.to_dict()["reason"] == "automatic name: rename it with a prompt"
    assert is_automatic_name(name)


@pytest.mark.parametrize("name, prompt", PROMPTS)
def test_prompts_that_look_like_automatic_names_stay_prompts(name, prompt):
    p = parse_layer_name(name)
    assert (p.role, p.prompt, p.reason_code) == ("region", prompt, ""), name


@pytest.mark.parametrize(
    "name, code",
    [
        ("# my sketch", "marker"),
        ("  #notes", "marker"),
        ("", "no_name"),
        ("   ", "no_name"),
        ("SMD Preview", "plugin_layer"),
        ("SMD Result 3", "plugin_layer"),
        ("| neg: ugly", "no_prompt"),
        ("bg:", None),
        ("Copy of Paint Layer 2", "automatic_name"),
    ],
)
def test_ignored_names_carry_a_code_and_a_sentence(name, code):
    p = parse_layer_name(name)
    if code is None:  # a bg: layer without a prompt still marks its pixels as background
        assert p.role == "background" and not p.reason_code
        return
    d = p.to_dict()
    assert p.role == "ignored" and d["reason_code"] == code and d["reason"] == REASON_CODES[code]


def test_hidden_layers_are_ignored():
    p = parse_layer_name("a red fox", visible=False)
    assert (p.reason_code, p.reason) == ("hidden", REASON_CODES["hidden"])


@pytest.mark.parametrize(
    "name, joins",
    [
        ("bg: a meadow", True),
        ("Filter Layer 1 (Levels)", True),  # an automatic name: a picture (a Krita filter layer is never sent)
        ("", True),
        ("a red fox", False),
        ("# sketch lines", False),
        ("SMD Preview", False),
        ("| blur: 4", False),  # options but no prompt: meant as a region
    ],
)
def test_which_names_join_the_background_image(name, joins):
    p = parse_layer_name(name)
    assert p.joins_background is joins and p.to_dict()["joins_background"] is joins
    assert parse_layer_name(name, visible=False).joins_background is False


def test_reason_codes_are_the_documented_closed_set():
    doc = (REPO / "docs" / "protocol.md").read_text()
    assert set(REASON_CODES) >= {
        "hidden",
        "empty",
        "automatic_name",
        "marker",
        "plugin_layer",
        "no_name",
        "no_prompt",
        "size_mismatch",
        "group",
    }
    for code in list(REASON_CODES) + list(WARNING_CODES):
        assert f"`{code}`" in doc, code


def test_plain_name_is_a_region_prompt_with_defaults():
    p = parse_layer_name("  a red fox ")
    assert (p.role, p.prompt, p.mask_strength, p.mask_std, p.prompt_strength) == ("region", "a red fox", 1.0, 8.0, 0.95)


def test_options_after_bars():
    p = parse_layer_name("a red fox | neg: blurry, ugly | blur: 4 | strength: 0.98 | prompt-strength: 1")
    assert p.prompt == "a red fox" and p.negative_prompt == "blurry, ugly"
    assert (p.mask_std, p.mask_strength, p.prompt_strength) == (4.0, 0.98, 1.0)
    assert not p.warnings


def test_bad_options_become_warnings_with_codes_not_errors():
    p = parse_layer_name("a fox | blur: lots | strength: 3 | colour: red | nonsense | strenght: 0.5")
    assert p.role == "region" and p.mask_std == 8.0 and p.mask_strength == 1.0
    assert p.warning_codes == ["bad_value", "bad_value", "unknown_option", "not_key_value", "unknown_option"]
    assert len(p.warnings) == 5 and "did you mean 'strength'?" in p.warnings[4]
    d = p.to_dict()
    assert d["warning_codes"] == p.warning_codes and d["warnings"] == p.warnings and "reason_code" not in d
    bg = parse_layer_name("bg: a meadow | blur: 3")
    assert bg.warning_codes == ["unknown_option"] and "regions only" in bg.warnings[0]


def test_warnings_stay_on_a_layer_that_is_ignored_for_another_reason():
    p = parse_layer_name("| strenght: 1")
    assert p.reason_code == "no_prompt" and p.warning_codes == ["unknown_option"]
    scene, parsed = build_scene([LayerInput("a fox | blur: lots", np.zeros((8, 8), np.uint8))], 8, 8)
    assert parsed[0].reason_code == "empty" and parsed[0].warning_codes == ["bad_value"]


def test_background_layer():
    p = parse_layer_name("BG: snowy pine forest | strength: 0.4 | neg: people")
    assert (p.role, p.prompt, p.background_strength, p.negative_prompt) == (
        "background",
        "snowy pine forest",
        0.4,
        "people",
    )


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
        LayerInput("wrong size", np.zeros((32, 16), np.uint8) + 255),
        LayerInput("characters", None, group=True),
        LayerInput("no pixels sent", None),
    ]
    scene, parsed = build_scene(layers, 64, 64, background_prompt="ignored", negative_prompt="blurry", seed=9)
    assert [r.prompt for r in scene.regions] == ["a red fox", "a bird"]
    assert scene.regions[0].mask_std == 2 and scene.regions[0].negative_prompt == "blurry"
    assert scene.regions[1].mask.dtype == np.uint8 and scene.regions[1].mask.max() == 128  # alpha as it came
    assert scene.background.prompt == "a meadow" and scene.background.strength == 0.5
    assert [p.role for p in parsed] == [
        "ignored",
        "background",
        "region",
        "ignored",
        "ignored",
        "region",
        "ignored",
        "ignored",
        "ignored",
    ]
    assert [p.reason_code for p in parsed] == [
        "automatic_name",
        "",
        "",
        "hidden",
        "empty",
        "",
        "size_mismatch",
        "group",
        "empty",
    ]
    assert parsed[6].reason == "its pixels do not match the canvas size (16x32, the canvas is 64x64)"
    # The background image: layers whose names are no prompts; never a region, even empty or mis-sized.
    assert [p.joins_background for p in parsed] == [True, True, False, False, False, False, False, False, False]
    assert parsed[7].to_dict() == {
        "name": "characters",
        "role": "ignored",
        "prompt": "",
        "joins_background": False,
        "reason_code": "group",
        "reason": "a group: its layers are read one by one",
    }
    assert parsed[2].to_dict()["blur"] == 2
    scene.validate()


# ---------------------------------------------------------------- control layers


@pytest.mark.parametrize("kind", ["lineart", "scribble", "softedge", "depth", "canny", "pose"])
def test_a_control_layer_is_read_with_its_kind_and_options(kind):
    p = parse_layer_name(f"Control: {kind.upper()} | strength: 0.8 | start: 0 | end: 0.6")
    assert (p.role, p.kind, p.control_strength, p.control_start, p.control_end) == ("control", kind, 0.8, 0.0, 0.6)
    assert not p.joins_background and not p.warnings
    assert p.to_dict() == {
        "name": f"Control: {kind.upper()} | strength: 0.8 | start: 0 | end: 0.6",
        "role": "control",
        "prompt": "",
        "joins_background": False,
        "kind": kind,
        "strength": 0.8,
        "start": 0.0,
        "end": 0.6,
    }


@pytest.mark.parametrize(
    "name, codes, sentence",
    [
        ("control: lineart | strength: 3", ["bad_value"], "strength: 3 is outside 0..2 (ignored)"),
        ("control: lineart | end: 1.5", ["bad_value"], "end: 1.5 is outside 0..1 (ignored)"),
        ("control: lineart | start: 0.7 | end: 0.6", ["bad_value"], "start: 0.7 is not before end: 0.6"),
        ("control: lineart | strenght: 1", ["unknown_option"], "did you mean 'strength'?"),
        ("control: lineart | blur: 1", ["unknown_option"], "'blur' applies to regions only, not to a control:"),
        ("control: lineart | bold", ["not_key_value"], "'bold' is not 'key: value'"),
    ],
)
def test_control_options_warn_like_other_layers(name, codes, sentence):
    p = parse_layer_name(name)
    assert p.role == "control" and p.warning_codes == codes and sentence in p.warnings[0]
    assert (p.control_strength, p.control_start, p.control_end) == (1.0, 0.0, 1.0)  # the defaults stay


def test_an_unknown_control_kind_is_ignored_with_a_suggestion():
    p = parse_layer_name("control: linart | strength: 0.5")
    assert (p.role, p.reason_code, p.kind, p.joins_background) == ("ignored", "unknown_kind", "", False)
    assert "did you mean 'lineart'?" in p.reason and "kind" not in p.to_dict()
    assert parse_layer_name("control:").reason_code == "unknown_kind"
    assert parse_layer_name("# control: lineart").reason_code == "marker"
    assert parse_layer_name("control: lineart", visible=False).reason_code == "hidden"


def test_control_layers_fill_scene_controls_never_regions_nor_the_background():
    W, H = 80, 64
    painted = np.zeros((H, W), np.uint8)
    painted[10:20, 5:30] = 255
    picture = np.full((H, W, 3), 255, np.uint8)
    picture[10:20, 5:30] = 0
    layers = [
        LayerInput("control: lineart | strength: 0.8 | end: 0.6", painted, image=picture),
        LayerInput("control: depth", np.zeros((H, W), np.uint8), image=picture),  # nothing painted
        LayerInput("control: canny", painted),  # only its alpha came (an old client, a first update)
        LayerInput("control: pose", painted, image=picture[:32]),
        LayerInput("a red fox", painted),
    ]
    scene, parsed = build_scene(layers, W, H)
    assert [r.prompt for r in scene.regions] == ["a red fox"]
    (c,) = scene.controls
    assert (c.kind, c.strength, c.start, c.end, c.name) == ("lineart", 0.8, 0.0, 0.6, layers[0].name)
    np.testing.assert_array_equal(c.image, picture)
    assert [p.role for p in parsed] == ["control", "ignored", "ignored", "ignored", "region"]
    assert [p.reason_code for p in parsed[1:4]] == ["empty", "no_image", "size_mismatch"]
    assert parsed[3].reason == "its pixels do not match the canvas size (80x32, the canvas is 80x64)"
    # Left out but still control layers: a client keeps sending their pictures.
    assert [p.to_dict().get("kind") for p in parsed] == ["lineart", "depth", "canny", "pose", None]
    assert not any(p.joins_background for p in parsed)
    scene.validate()

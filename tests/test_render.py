"""`smd-daemon render` and the scene-file readers (OpenRaster and JSON).

Scenes are built here with Pillow and zipfile; the CLI runs as a real
subprocess on the offline ``tiny`` model.
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import re
import subprocess
import sys
import zipfile

import numpy as np
import pytest
from ora_util import Group, Layer, krita_missing, kritarunner, make_ora, rgba
from PIL import Image

from smd_daemon.engine.masks import as_float_mask
from smd_daemon.engine.scene import MAX_SIDE, SceneError
from smd_daemon.scenefile import Overrides, dockersettings, load_scene

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def alpha8(region) -> np.ndarray:
    """A region's mask as 0..255 integers, whether the scene keeps it as uint8 alpha or in [0, 1]."""
    mask = np.asarray(region.mask)
    return mask.astype(int) if mask.dtype == np.uint8 else np.round(mask * 255).astype(int)


def _fmask(region) -> np.ndarray:
    """A region's mask in [0, 1], whatever its dtype (layer alpha stays uint8)."""
    return as_float_mask(region.mask).numpy()


# ---------------------------------------------------------------- building scenes


def make_json(folder, doc: dict, images: dict[str, np.ndarray]) -> str:
    for name, arr in images.items():
        Image.fromarray(arr).save(os.path.join(folder, name))
    path = os.path.join(folder, "scene.json")
    with open(path, "w") as f:
        json.dump(doc, f)
    return path


def run_render(*args, timeout=240):
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONPATH": ROOT + os.pathsep + os.environ.get("PYTHONPATH", "")}
    return subprocess.run(
        [sys.executable, "-m", "smd_daemon", "render", *map(str, args)],
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def render_here(*args):
    """The same CLI entry point, in this process: for the many bad-input cases, which fail before any
    model is loaded, without paying a fresh interpreter each (a few cases also run as a subprocess)."""
    from smd_daemon.cli import main

    err = io.StringIO()
    with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
        code = main(["render", *map(str, args)])
    return subprocess.CompletedProcess(args, code, "", err.getvalue())


# transformers prints advisories when diffusers' pipelines are imported (torchvision is not a dependency);
# they are not ours to word, so they do not count against the one line.
THIRD_PARTY_NOISE = ("[transformers] ",)


def assert_one_line_error(proc):
    assert proc.returncode != 0, proc.stdout + proc.stderr
    assert "Traceback" not in proc.stderr
    lines = [ln for ln in proc.stderr.strip().splitlines() if not ln.startswith(THIRD_PARTY_NOISE)]
    assert len(lines) == 1, proc.stderr
    assert lines[0].startswith("smd-daemon render: error: "), lines[0]
    return lines[0]


# ---------------------------------------------------------------- OpenRaster reading


def test_ora_layer_order_grammar_and_ignored_layers(tmp_path):
    W = H = 64
    path = make_ora(
        tmp_path / "s.ora",
        W,
        H,
        [  # top first
            Layer("a blue bird | neg: blurry | blur: 2 | strength: 0.9", rgba(W, H, box=(0, 0, 16, 16))),
            Layer("# sketch", rgba(W, H)),
            Layer("Paint Layer 3", rgba(W, H)),
            Layer("a hidden cat", rgba(W, H), visible=False),
            Layer("SMD preview", rgba(W, H)),
            Layer("an empty one", rgba(W, H, alpha=0)),
            Layer("a red fox", rgba(W, H, box=(32, 32, 64, 64))),
            Layer("bg: snowy forest | strength: 0.5", rgba(W, H, color=(0, 0, 255))),
        ],
    )
    loaded = load_scene(path, Overrides(negative_prompt="ugly"))
    scene = loaded.scene
    assert [r.prompt for r in scene.regions] == ["a red fox", "a blue bird"]  # bottom to top
    fox, bird = scene.regions
    assert fox.negative_prompt == "ugly" and bird.negative_prompt == "blurry"
    assert bird.mask_std == 2 and bird.mask_strength == 0.9
    assert _fmask(fox)[32:, 32:].min() == 1.0 and _fmask(fox).sum() == 32 * 32
    assert _fmask(bird).sum() == 16 * 16
    assert scene.background.prompt == "snowy forest" and scene.background.strength == 0.5
    roles = {p.name: p.role for p in loaded.layers}
    assert roles == {
        "bg: snowy forest | strength: 0.5": "background",
        "a red fox": "region",
        "an empty one": "ignored",
        "SMD preview": "ignored",
        "a hidden cat": "ignored",
        "Paint Layer 3": "ignored",
        "# sketch": "ignored",
        "a blue bird | neg: blurry | blur: 2 | strength: 0.9": "region",
    }
    assert [p.name for p in loaded.layers][0].startswith("bg:")  # bottom first
    assert (scene.width, scene.height) == (W, H)


def test_ora_offsets_crop_layers_sticking_out(tmp_path):
    W, H = 128, 96
    small = rgba(40, 30)  # fully opaque 40x30
    path = make_ora(
        tmp_path / "s.ora",
        W,
        H,
        [
            Layer("top left out", small, x=-10, y=-20),
            Layer("bottom right out", small, x=100, y=80),
            Layer("inside", small, x=50, y=40),
        ],
    )
    scene = load_scene(path).scene
    masks = {r.prompt: _fmask(r) for r in scene.regions}
    expect = np.zeros((H, W), np.float32)
    expect[0:10, 0:30] = 1
    np.testing.assert_array_equal(masks["top left out"], expect)
    expect = np.zeros((H, W), np.float32)
    expect[80:96, 100:128] = 1
    np.testing.assert_array_equal(masks["bottom right out"], expect)
    expect = np.zeros((H, W), np.float32)
    expect[40:70, 50:90] = 1
    np.testing.assert_array_equal(masks["inside"], expect)


def test_ora_masks_are_alpha_times_opacity_not_colour(tmp_path):
    W = H = 64
    pixels = rgba(W, H, color=(0, 0, 0), alpha=128)  # black paint at half alpha, layer opacity 0.2
    scene = load_scene(make_ora(tmp_path / "s.ora", W, H, [Layer("fog", pixels, opacity=0.2)])).scene
    assert (alpha8(scene.regions[0]) == 26).all()  # 128 * 0.2 = 25.6, rounded half up


def test_ora_group_rule_names_never_read_layers_as_the_artist_sees_them(tmp_path):
    """A group named like a prompt is not a region; its layers are, with every group's opacity applied."""
    W = H = 64
    path = make_ora(
        tmp_path / "s.ora",
        W,
        H,
        [
            Group(
                "characters",
                [
                    Group("Group 2", [Layer("an owl", rgba(16, 16), x=48)], opacity=0.501961),
                    Layer("a cat", rgba(48, 32), x=16, y=16, opacity=0.8),
                    Layer("a red fox", rgba(32, 32)),
                ],
                opacity=0.501961,
            ),
            Group("hidden things", [Layer("a ghost", rgba(16, 16), y=48)], visible=False),
            Layer("Background", rgba(W, H, color=(255, 255, 255))),
        ],
    )
    loaded = load_scene(path)
    assert [r.prompt for r in loaded.scene.regions] == ["a red fox", "a cat", "an owl"]
    fox, cat, owl = (alpha8(r) for r in loaded.scene.regions)
    assert fox.max() == 128 and fox[0:32, 0:32].min() == 128 and (fox > 0).sum() == 32 * 32
    assert cat.max() == 102 and (cat > 0).sum() == 48 * 32  # 255 * 0.8 * 0.502 = 102.4
    assert owl.max() == 64 and (owl > 0).sum() == 16 * 16  # 255 * 0.502 * 0.502 = 64.25
    read = [(p.name, p.role, p.reason_code) for p in loaded.layers]
    assert read == [
        ("Background", "ignored", "automatic_name"),
        ("a ghost", "ignored", "hidden"),
        ("hidden things", "ignored", "group"),
        ("a red fox", "region", ""),
        ("a cat", "region", ""),
        ("an owl", "region", ""),
        ("Group 2", "ignored", "group"),
        ("characters", "ignored", "group"),
    ]
    ghost = next(p for p in loaded.layers if p.name == "a ghost")
    assert ghost.reason == "hidden: show the layer to use it (the group 'hidden things' is hidden)"


def test_ora_background_image_composites_groups_at_their_opacity(tmp_path):
    """A 50 % group is composited at 50 % as a whole (its layers together first), as Krita shows it;
    a hidden group or a layer's transparent part adds nothing."""
    W = H = 64
    red, blue = rgba(W, H, color=(255, 0, 0)), rgba(W, H, color=(0, 0, 255), box=(0, 0, 32, 64))
    path = make_ora(
        tmp_path / "s.ora",
        W,
        H,
        [
            Layer("a cat", rgba(W, H, box=(0, 0, 8, 8))),
            Group("sky", [Layer("bg: blue sky | strength: 0.6", blue), Layer("Paint Layer 2", red)], opacity=0.5),
            Group("hidden", [Layer("Paint Layer 3", rgba(W, H, color=(0, 255, 0)))], visible=False),
            Layer("bg: green | strength: 0.5", rgba(W, H, color=(0, 255, 0), box=(0, 48, 64, 64))),
        ],
    )
    scene = load_scene(path).scene
    assert scene.background.prompt == "blue sky" and scene.background.strength == 0.6
    img = scene.background.image.astype(int)
    # left: blue over red inside the group -> blue at 50 % over white (each layer at 50 % on its own
    # would give 127.5, 63.75, 191.25); right: red at 50 % over white
    np.testing.assert_allclose(img[8, 8], [127.5, 127.5, 255], atol=1)
    np.testing.assert_allclose(img[8, 56], [255, 127.5, 127.5], atol=1)
    np.testing.assert_allclose(img[56, 56], [127.5, 127.5, 0], atol=1)  # the 50 % red over the opaque green band


def test_ora_groups_flatten_hide_and_offset(tmp_path):
    W = H = 64
    dot = rgba(8, 8)
    path = make_ora(
        tmp_path / "s.ora",
        W,
        H,
        [
            Layer("a moon", dot, x=0, y=0),
            Group(
                "Group 1",
                [Layer("a star", dot, x=2, y=2), Group("inner", [Layer("a comet", dot)], x=10, y=0)],
                x=20,
                y=20,
            ),
            Group(
                "hidden group", [Layer("a ghost", dot), Group("visible inside", [Layer("a bat", dot)])], visible=False
            ),
            Layer("a hill", dot, x=56, y=56),
        ],
    )
    loaded = load_scene(path)
    assert [r.prompt for r in loaded.scene.regions] == ["a hill", "a comet", "a star", "a moon"]
    masks = {r.prompt: _fmask(r) for r in loaded.scene.regions}
    assert masks["a star"][22:30, 22:30].all() and masks["a star"].sum() == 64
    assert masks["a comet"][20:28, 30:38].all() and masks["a comet"].sum() == 64
    hidden = {p.name: p.reason_code for p in loaded.layers if p.role == "ignored"}
    assert hidden == {
        "a ghost": "hidden",
        "a bat": "hidden",
        "Group 1": "group",
        "inner": "group",
        "hidden group": "group",
        "visible inside": "group",
    }


def test_ora_background_image_composites_non_region_layers_over_white(tmp_path):
    W = H = 64
    path = make_ora(
        tmp_path / "s.ora",
        W,
        H,
        [
            Layer("a red fox", rgba(W, H, color=(255, 0, 0), box=(0, 0, 32, 64))),  # a region: not in the image
            Layer("# notes", rgba(W, H, color=(0, 0, 0))),  # explicitly ignored: not in the image
            Layer("SMD preview", rgba(W, H, color=(0, 0, 0))),  # the plugin's own: not in the image
            Layer("Paint Layer 2", rgba(W, H, color=(0, 0, 255), box=(0, 0, 64, 16)), opacity=0.5),
            Layer("bg: a field | strength: 0.7", rgba(W, H, color=(0, 255, 0), box=(0, 0, 64, 32))),
        ],
    )
    scene = load_scene(path).scene
    img = scene.background.image
    assert scene.background.strength == 0.7 and img.shape == (H, W, 3) and img.dtype == np.uint8
    np.testing.assert_array_equal(img[40, 40], [255, 255, 255])  # nothing painted: white
    np.testing.assert_array_equal(img[20, 40], [0, 255, 0])  # the bg: layer
    np.testing.assert_allclose(img[5, 40], [0, 128, 128], atol=1)  # half-opacity blue over green

    # Strength 0 (the default without a bg: strength): no image is made at all.
    path = make_ora(tmp_path / "t.ora", W, H, [Layer("a red fox", rgba(W, H)), Layer("Background", rgba(W, H))])
    assert load_scene(path).scene.background.image is None
    assert load_scene(path, Overrides(background_strength=0.3)).scene.background.image is not None

    # The command line wins over a bg: layer.
    bg = load_scene(path, Overrides(background_prompt="dunes", background_strength=0)).scene.background
    assert (bg.prompt, bg.strength, bg.image) == ("dunes", 0, None)


def test_ora_scene_checked_before_background_pixels_are_decoded(tmp_path):
    path = make_ora(
        tmp_path / "s.ora",
        64,
        64,
        [Layer("a fox", rgba(64, 64)), Layer("Background", src="data/bad.png")],
        members={"data/bad.png": b"not a png"},
    )
    with pytest.raises(SceneError, match="background strength must be between 0 and 1"):
        load_scene(path, Overrides(background_strength=5))
    with pytest.raises(SceneError, match="'Background': 'data/bad.png' is not a PNG image"):
        load_scene(path, Overrides(background_strength=0.5))
    assert load_scene(path).scene.background.image is None  # not needed, not read


def test_output_size_follows_document_and_flags(tmp_path):
    path = make_ora(tmp_path / "s.ora", 200, 100, [Layer("a fox", rgba(200, 100, box=(100, 0, 200, 100)))])
    scene = load_scene(path).scene
    assert (scene.width, scene.height) == (200, 104)  # nearest multiples of 8
    scene = load_scene(path, Overrides(width=128)).scene
    assert (scene.width, scene.height) == (128, 64)
    mask = _fmask(scene.regions[0])
    assert mask.shape == (64, 128) and mask[:, 70:].min() == 1 and mask[:, :58].max() == 0
    scene = load_scene(path, Overrides(width=96, height=96, seed=7, steps=2, bootstrap_steps=0)).scene
    assert (scene.width, scene.height, scene.seed, scene.steps, scene.bootstrap_steps) == (96, 96, 7, 2, 0)


# ---------------------------------------------------------------- JSON reading


def test_json_scene(tmp_path):
    W, H = 96, 64
    grey = np.zeros((H, W), np.uint8)
    grey[:, :48] = 255
    alpha_mask = rgba(W, H, color=(0, 0, 0), box=(48, 0, 96, 64))
    os.mkdir(tmp_path / "masks")
    doc = {
        "width": W,
        "height": H,
        "seed": 3,
        "steps": 3,
        "negative_prompt": "blurry",
        "background": {"prompt": "a meadow", "image": "bg.png", "strength": 0.4},
        "regions": [
            {"prompt": "a red fox | not an option", "mask": "masks/left.png", "blur": 0, "strength": 0.8},
            {"prompt": "a tree", "mask": "masks/right.png", "negative_prompt": "snow", "prompt_strength": 1},
            {"layer": "a bird | neg: cage | blur: 3 | strength: 0.5", "mask": "masks/right.png", "strength": 0.9},
        ],
    }
    path = make_json(
        tmp_path,
        doc,
        {"masks/left.png": grey, "masks/right.png": alpha_mask, "bg.png": rgba(W, H, color=(10, 20, 30))[..., :3]},
    )
    scene = load_scene(path).scene
    fox, tree, bird = scene.regions
    assert fox.prompt == "a red fox | not an option"  # JSON prompts are literal: no layer-name grammar
    # A layer name goes through the grammar; a JSON field wins over the name's option.
    assert (bird.prompt, bird.negative_prompt, bird.mask_std, bird.mask_strength) == ("a bird", "cage", 3, 0.9)
    assert (fox.mask_std, fox.mask_strength, fox.negative_prompt) == (0, 0.8, "blurry")
    assert (tree.negative_prompt, tree.prompt_strength) == ("snow", 1.0)
    assert _fmask(fox)[:, :48].min() == 1 and _fmask(fox)[:, 48:].max() == 0
    assert _fmask(tree)[:, 48:].min() == 1 and _fmask(tree)[:, :48].max() == 0
    assert (scene.seed, scene.steps, scene.background.prompt, scene.background.strength) == (3, 3, "a meadow", 0.4)
    np.testing.assert_array_equal(scene.background.image[0, 0], [10, 20, 30])
    scene = load_scene(path, Overrides(seed=9, width=192)).scene
    assert (scene.seed, scene.width, scene.height, scene.regions[0].mask.shape) == (9, 192, 128, (128, 192))


def test_json_mask_kinds(tmp_path):
    """Masks from alpha, 8-bit grey, 16-bit grey (scaled, not clipped) and palette transparency."""
    W = H = 64
    ramp16 = np.tile(np.linspace(0, 65535, W).round().astype(np.uint16), (H, 1))
    Image.fromarray(ramp16).save(tmp_path / "grey16.png")
    pal = Image.new("P", (W, H), 1)
    pal.putpalette([0, 0, 0, 255, 255, 255])
    pal.paste(0, (0, 0, 32, 64))
    pal.save(tmp_path / "pal.png", transparency=0)
    path = make_json(
        tmp_path,
        {
            "width": W,
            "height": H,
            "regions": [{"prompt": "a", "mask": "grey16.png"}, {"prompt": "b", "mask": "pal.png"}],
        },
        {},
    )
    grey16, pal = (_fmask(r) for r in load_scene(path).scene.regions)
    np.testing.assert_allclose(grey16[0], np.linspace(0, 1, W), atol=1 / 255)
    assert pal[:, :32].max() == 0 and pal[:, 32:].min() == 1


@pytest.mark.parametrize(
    "doc, message",
    [
        ({"height": 64, "regions": []}, "'width' is missing"),
        ({"width": "64", "height": 64, "regions": []}, "'width' must be a whole number"),
        ({"width": 64, "height": 64}, "'regions' is missing"),
        ({"width": 64, "height": 64, "regions": [{"mask": "m.png"}]}, "region 1 has no prompt"),
        ({"width": 64, "height": 64, "regions": [{"prompt": "a fox"}]}, 'region 1 has no "mask"'),
        ({"width": 64, "height": 64, "regions": [{"prompt": "a fox", "mask": "nope.png"}]}, "'nope.png' not found"),
        (
            {"width": 64, "height": 64, "regions": [{"prompt": "a fox", "mask": "m.png", "blur": "x"}]},
            "'blur' must be a number",
        ),
        ({"width": 64, "height": 64, "regions": ["a fox"]}, "region 1 must be an object"),
        ({"width": 64, "height": 64, "steps": 0, "regions": []}, "steps must be between"),
        (
            {"width": 72, "height": 64, "regions": [{"prompt": "a fox", "mask": "m.png"}]},
            "is 64x64, the scene is 72x64",
        ),
        (
            {"width": 64, "height": 64, "regions": [{"prompt": "a fox", "mask": "m.png", "strength": 2}]},
            "mask strength must be between 0 and 1",
        ),
        ([1, 2], "a JSON scene is an object"),
        (
            {"width": 64, "height": 64, "regions": [{"layer": "Paint Layer 2", "mask": "m.png"}]},
            "layer name 'Paint Layer 2' is not a region (automatic name: rename it with a prompt)",
        ),
        ({"width": 64, "height": 64, "regions": [{"layer": "bg: sea", "mask": "m.png"}]}, 'use the "background" field'),
        (
            {"width": 64, "height": 64, "regions": [{"layer": "a fox", "prompt": "a fox", "mask": "m.png"}]},
            "gives both",
        ),
    ],
)
def test_json_bad_fields(tmp_path, doc, message):
    path = make_json(tmp_path, doc, {"m.png": np.full((64, 64), 255, np.uint8)})
    with pytest.raises(SceneError, match=re.escape(message)):
        load_scene(path)


# ---------------------------------------------------------------- the CLI, bad input


def _ok_layers(w=64, h=64):
    return [Layer("a fox", rgba(w, h))]


BAD_ORA = {
    "not a zip": lambda p: p.write_bytes(b"this is not a zip file") and str(p),
    "missing stack.xml": lambda p: make_ora(p, 64, 64, [], stack_xml=False),
    "a Krita .kra renamed": lambda p: make_ora(p, 64, 64, [], stack_xml=False, members={"maindoc.xml": b"<DOC/>"}),
    "malformed stack.xml": lambda p: make_ora(p, 64, 64, [], stack_xml="<image w='64' h='64'><stack>"),
    "layer PNG that does not decode": lambda p: make_ora(
        p, 64, 64, [Layer("a fox", src="data/x.png")], members={"data/x.png": b"\x89PNG\r\n\x1a\nbroken"}
    ),
    "layer PNG missing from the zip": lambda p: make_ora(p, 64, 64, [Layer("a fox", src="data/gone.png")]),
    "no region layers": lambda p: make_ora(
        p, 64, 64, [Layer("Paint Layer 1", rgba(64, 64)), Layer("a cat", rgba(64, 64), visible=False)]
    ),
    "document over the size limit": lambda p: make_ora(p, MAX_SIDE * 4, 64, _ok_layers()),
    "decompression bomb layer": lambda p: make_ora(
        p,
        64,
        64,
        [Layer("a fox", src="data/bomb.png")],
        members={"data/bomb.png": b"\x89PNG\r\n\x1a\n" + _ihdr(60000, 60000)},
    ),
    "layer over the size limit": lambda p: make_ora(
        p,
        64,
        64,
        [Layer("a fox", src="data/big.png")],
        members={"data/big.png": b"\x89PNG\r\n\x1a\n" + _ihdr(9000, 9000)},
    ),
    "size not a number": lambda p: make_ora(p, 64, 64, [], stack_xml="<image w='big' h='64'><stack/></image>"),
    "groups nested too deep": lambda p: make_ora(p, 64, 64, [_nested(20)]),
    "too many layers": lambda p: make_ora(p, 64, 64, [Layer(f"a fox {i}", src="data/x.png") for i in range(600)]),
    "group opacity not a number": lambda p: make_ora(
        p, 64, 64, [], stack_xml="<image w='64' h='64'><stack><stack name='g' opacity='half'/></stack></image>"
    ),
}


def _nested(depth: int):
    return Layer("a fox", rgba(8, 8)) if depth == 0 else Group(f"group {depth}", [_nested(depth - 1)])


def _ihdr(w: int, h: int) -> bytes:
    """A PNG header declaring a huge image (no pixel data follows)."""
    import struct
    import zlib

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    return (
        chunk(b"IHDR", struct.pack(">IIBBBBB", w, h, 8, 0, 0, 0, 0))
        + chunk(b"IDAT", zlib.compress(b"\x00" * 100000))
        + chunk(b"IEND", b"")
    )


EXPECTED = {
    "not a zip": "not a zip archive",
    "missing stack.xml": "stack.xml is missing",
    "malformed stack.xml": "not valid XML",
    "a Krita .kra renamed": "export it with File > Export as OpenRaster",
    "layer PNG that does not decode": "not a PNG image",
    "layer PNG missing from the zip": "is missing from the file",
    "no region layers": "no region layers",
    "document over the size limit": f"at most {MAX_SIDE} per side",
    "decompression bomb layer": "decompression bomb",
    "layer over the size limit": "9000x9000 pixels",
    "size not a number": "expected a whole number",
    "groups nested too deep": "nested more than 16 deep",
    "too many layers": "more than 512 layers and groups",
    "group opacity not a number": "stack 'g' has opacity 'half'",
}


@pytest.mark.parametrize("case", sorted(BAD_ORA))
def test_cli_bad_ora_one_line_error(tmp_path, case):
    path = tmp_path / "bad.ora"
    BAD_ORA[case](path)
    out = tmp_path / "out.png"
    line = assert_one_line_error(render_here(path, "-o", out, "--model", "tiny"))
    assert EXPECTED[case] in line
    assert not out.exists()


@pytest.mark.parametrize("case", ["not a zip", "no region layers"])
def test_cli_bad_ora_one_line_error_subprocess(tmp_path, case):
    path = tmp_path / "bad.ora"
    BAD_ORA[case](path)
    line = assert_one_line_error(run_render(path, "-o", tmp_path / "out.png", "--model", "tiny"))
    assert EXPECTED[case] in line


def test_cli_bad_json_one_line_error(tmp_path):
    (tmp_path / "scene.json").write_text('{"width": 64, "height": ')
    line = assert_one_line_error(run_render(tmp_path / "scene.json", "-o", tmp_path / "o.png", "--model", "tiny"))
    assert "not valid JSON" in line
    path = make_json(tmp_path, {"width": 64, "height": 64, "regions": [{"prompt": "a fox", "mask": "none.png"}]}, {})
    line = assert_one_line_error(render_here(path, "-o", tmp_path / "o.png", "--model", "tiny"))
    assert "'none.png' not found" in line


@pytest.mark.parametrize(
    "case",
    [
        "missing scene",
        "unknown extension",
        "missing output folder",
        "output is a folder",
        "unknown output format",
        "bad size flag",
    ],
)
def test_cli_bad_arguments_one_line_error(tmp_path, case):
    scene = make_ora(tmp_path / "s.ora", 64, 64, _ok_layers())
    args = [scene, "-o", tmp_path / "o.png", "--model", "tiny"]
    if case == "missing scene":
        args[0] = tmp_path / "nothing.ora"
    elif case == "unknown extension":
        args[0] = tmp_path / "scene.psd"
        args[0].write_bytes(b"8BPS")
    elif case == "missing output folder":
        args[2] = tmp_path / "no" / "such" / "o.png"
    elif case == "output is a folder":
        args[2] = tmp_path
    elif case == "unknown output format":
        args[2] = tmp_path / "o.xyz"
    elif case == "bad size flag":
        args += ["--width", "100"]
    line = assert_one_line_error(render_here(*args))
    expected = {
        "missing scene": "no such file",
        "unknown extension": "unknown scene type",
        "missing output folder": "does not exist",
        "output is a folder": "is a folder",
        "unknown output format": "cannot write",
        "bad size flag": "multiples of 8",
    }[case]
    assert expected in line


@pytest.mark.skipif(hasattr(os, "geteuid") and os.geteuid() == 0, reason="root can write anywhere")
def test_cli_unwritable_output_one_line_error(tmp_path):
    scene = make_ora(tmp_path / "s.ora", 64, 64, _ok_layers())
    locked = tmp_path / "locked"
    locked.mkdir()
    locked.chmod(0o500)
    try:
        line = assert_one_line_error(render_here(scene, "-o", locked / "o.png", "--model", "tiny"))
    finally:
        locked.chmod(0o700)
    assert "not writable" in line


def test_cli_unknown_model_one_line_error_keeps_old_output(tmp_path):
    scene = make_ora(tmp_path / "s.ora", 64, 64, _ok_layers())
    out = tmp_path / "o.png"
    out.write_bytes(b"an earlier render")
    line = assert_one_line_error(run_render(scene, "-o", out, "--model", tmp_path / "no-such-model.safetensors"))
    assert "no-such-model" in line
    assert out.read_bytes() == b"an earlier render"


# ---------------------------------------------------------------- the CLI, real renders


def test_progress_bar_counts_steps():
    from smd_daemon.render import _ProgressBar

    out = io.StringIO()
    bar = _ProgressBar(disable=False, file=out)
    for step in range(1, 4):
        bar.update(step, 3)
    assert bar.bar.n == 3 and "render:" in out.getvalue() and "/3" in out.getvalue()
    bar.close()
    quiet = _ProgressBar(disable=True)
    quiet.update(1, 3)
    assert quiet.bar is None


def test_cli_renders_ora(tmp_path):
    W, H = 192, 128
    path = make_ora(
        tmp_path / "scene.ora",
        W,
        H,
        [
            Layer("a red fox | blur: 4", rgba(96, 96), x=80, y=40),
            Layer("Paint Layer 1", rgba(W, H, color=(250, 250, 250))),
            Layer("bg: a snowy field | strength: 0.3", rgba(W, H, color=(40, 90, 200), box=(0, 64, W, H))),
        ],
    )
    out = tmp_path / "out.png"
    proc = run_render(path, "-o", out, "--model", "tiny", "--seed", "5", "--steps", "2", "--no-progress")
    assert proc.returncode == 0, proc.stderr
    with Image.open(out) as im:
        assert im.size == (W, H) and im.mode == "RGB"
        assert np.asarray(im).std() > 0  # an image, not a blank
    assert "no meaningful images" in proc.stderr  # the tiny preset says what it is


def test_cli_renders_json(tmp_path):
    W = H = 128
    left = np.zeros((H, W), np.uint8)
    left[:, :64] = 255
    right = 255 - left
    path = make_json(
        tmp_path,
        {
            "width": W,
            "height": H,
            "seed": 1,
            "steps": 2,
            "background": {"prompt": "a meadow"},
            "regions": [{"prompt": "a fox", "mask": "l.png"}, {"prompt": "a tree", "mask": "r.png", "blur": 2}],
        },
        {"l.png": left, "r.png": right},
    )
    out = tmp_path / "out.png"
    proc = run_render(path, "-o", out, "--model", "tiny", "--width", "64")  # size flag: aspect ratio kept
    assert proc.returncode == 0, proc.stderr
    with Image.open(out) as im:
        assert im.size == (64, 64)
        assert np.asarray(im).std() > 0  # an image, not a blank


def test_json_keys_nothing_reads_are_named_in_one_warning_line(tmp_path):
    mask = np.full((64, 64), 255, np.uint8)
    doc = {
        "width": 64,
        "height": 64,
        "loras": [{"name": "watercolor"}],
        "backgroud": {"prompt": "a meadow"},
        "regions": [{"prompt": "a fox", "mask": "m.png", "stength": 0.5}],
    }
    loaded = load_scene(make_json(tmp_path, doc, {"m.png": mask}))
    assert loaded.scene.background.prompt == "" and loaded.scene.regions[0].mask_strength == 1  # as if absent
    (line,) = loaded.warnings
    assert "'loras'" in line and "'backgroud' (did you mean 'background'?)" in line
    assert "'stength' in region 1 (did you mean 'strength'?)" in line
    doc = {
        "width": 64,
        "height": 64,
        "background": {"prompt": "a meadow"},
        "regions": [{"prompt": "a", "mask": "m.png"}],
    }
    assert load_scene(make_json(tmp_path, doc, {"m.png": mask})).warnings == []  # a clean file says nothing

    out = tmp_path / "out.png"
    proc = run_render(tmp_path / "scene.json", "-o", out, "--model", "tiny", "--steps", "1", "--no-progress")
    assert proc.returncode == 0 and "does not know" not in proc.stderr, proc.stderr
    make_json(tmp_path, {**doc, "backgroud": {}, "loras": []}, {})
    proc = run_render(tmp_path / "scene.json", "-o", out, "--model", "tiny", "--steps", "1", "--no-progress")
    told = [line for line in proc.stderr.splitlines() if "does not know" in line]
    assert proc.returncode == 0 and len(told) == 1 and "WARNING" in told[0], proc.stderr
    assert "'backgroud'" in told[0] and "'loras'" in told[0]


# ---------------------------------------------------------------- a file written by real Krita

KRITA_EXPORT = """
import os
import shutil
from krita import Krita, InfoObject


def export(*_):
    k = Krita.instance()
    k.setBatchmode(True)
    doc = k.createDocument(128, 96, "scene", "RGBA", "U8", "", 300.0)  # comes with a white "Background"
    doc.setBatchmode(True)
    root = doc.rootNode()

    def paint(name, x, y, w, h, parent, bgra=(255, 0, 0, 255)):
        node = doc.createNode(name, "paintlayer")
        node.setPixelData(bytes(bgra) * (w * h), x, y, w, h)
        parent.addChildNode(node, None)
        return node

    paint("a red fox | blur: 2", -10, -20, 40, 30, root)  # sticks out of the canvas
    group = doc.createNode("Group 1", "grouplayer")
    root.addChildNode(group, None)
    paint("a star", 60, 40, 20, 10, group)
    hidden = doc.createNode("hidden group", "grouplayer")
    root.addChildNode(hidden, None)
    paint("a ghost", 0, 0, 10, 10, hidden)
    hidden.setVisible(False)
    paint("a mist", 100, 80, 50, 50, root, bgra=(0, 0, 0, 128)).setOpacity(100)
    doc.refreshProjection()
    doc.waitForDone()
    ok = doc.exportImage(os.environ["ORA_OUT"], InfoObject())
    doc.setModified(False)
    doc.close()
    print("exported", ok)
"""


@pytest.mark.krita
@krita_missing
def test_reads_an_ora_written_by_krita(tmp_path):
    proc = kritarunner(tmp_path, KRITA_EXPORT, "export", ORA_OUT=str(tmp_path / "k.ora"))
    assert (tmp_path / "k.ora").exists(), proc.stdout[-2000:] + proc.stderr[-2000:]

    loaded = load_scene(str(tmp_path / "k.ora"), Overrides(background_strength=0.5))
    scene = loaded.scene
    assert [r.prompt for r in scene.regions] == ["a red fox", "a star", "a mist"]
    fox, star, mist = (_fmask(r) for r in scene.regions)
    expect = np.zeros((96, 128), np.float32)
    expect[0:10, 0:30] = 1
    np.testing.assert_array_equal(fox, expect)
    expect[:] = 0
    expect[40:50, 60:80] = 1
    np.testing.assert_array_equal(star, expect)
    expect[:] = 0
    expect[80:96, 100:128] = 50 / 255  # alpha 128 at Krita opacity 100/255: 50.2, half up
    np.testing.assert_allclose(mist, expect)
    assert scene.regions[0].mask_std == 2
    reasons = {p.name: p.reason_code for p in loaded.layers if p.role == "ignored"}
    assert reasons == {"Background": "automatic_name", "a ghost": "hidden", "Group 1": "group", "hidden group": "group"}
    np.testing.assert_array_equal(np.unique(scene.background.image), [255])  # Krita's white Background


# tests/data/krita_groups_masks.kra was made in Krita 5.1.5 with its own layer actions (transparency
# masks cannot be made from Python there): a group "characters" at 50 % holding "a red fox", "a cat"
# (opacity 80 %, a transparency mask keeping x 16..40) and a group "Group 2" at 50 % with "an owl"; a
# hidden group with "a ghost"; "bg: a meadow | strength: 0.5" (green band y 48..64, a transparency
# mask keeping x < 32); "Filter Layer 1 (Levels)"; the white "Background".
KRITA_REEXPORT = """
import os
from krita import Krita, InfoObject


def export(*_):
    k = Krita.instance()
    k.setBatchmode(True)
    doc = k.openDocument(os.environ["KRA_IN"])
    doc.setBatchmode(True)
    doc.refreshProjection()
    doc.waitForDone()
    print("exported", doc.exportImage(os.environ["ORA_OUT"], InfoObject()))
    doc.close()
"""


@pytest.mark.krita
@krita_missing
def test_krita_export_of_groups_masks_and_a_filter_layer_reads_as_the_artist_sees_it(tmp_path):
    ora = tmp_path / "k.ora"
    proc = kritarunner(
        tmp_path,
        KRITA_REEXPORT,
        "export",
        ORA_OUT=str(ora),
        KRA_IN=os.path.join(ROOT, "tests", "data", "krita_groups_masks.kra"),
    )
    assert ora.exists(), proc.stdout[-2000:] + proc.stderr[-2000:]
    loaded = load_scene(str(ora))
    scene = loaded.scene
    assert [r.prompt for r in scene.regions] == ["a red fox", "a cat", "an owl"]
    fox, cat, owl = (alpha8(r) for r in scene.regions)
    expect = np.zeros((64, 64), int)
    expect[0:32, 0:32] = 128  # the group's 50 % (Krita stores 128/255)
    np.testing.assert_array_equal(fox, expect)
    expect[:] = 0
    expect[16:48, 16:40] = 102  # its mask keeps 24 of 48 columns; 255 * 0.8 * 128/255
    np.testing.assert_array_equal(cat, expect)
    expect[:] = 0
    expect[0:16, 48:64] = 64  # two groups at 50 %
    np.testing.assert_array_equal(owl, expect)
    read = {p.name: (p.role, p.reason_code) for p in loaded.layers}
    assert read == {
        "Background": ("ignored", "automatic_name"),
        "a ghost": ("ignored", "hidden"),
        "hidden things": ("ignored", "group"),
        "characters": ("ignored", "group"),
        "Group 2": ("ignored", "group"),
        "a red fox": ("region", ""),
        "a cat": ("region", ""),
        "an owl": ("region", ""),
        "bg: a meadow | strength: 0.5": ("background", ""),
    }
    # Krita leaves filter layers out of OpenRaster files; its masks are applied to the layer pixels.
    assert "Filter Layer 1 (Levels)" not in read
    bg = scene.background
    assert bg.prompt == "a meadow" and bg.strength == 0.5
    np.testing.assert_array_equal(bg.image[48:64, 0:32], np.broadcast_to([0, 255, 0], (16, 32, 3)))
    np.testing.assert_array_equal(bg.image[48:64, 32:64], 255)  # the masked half does not leak
    np.testing.assert_array_equal(bg.image[0:48], 255)  # regions are not in the picture; the ghost is hidden

    # Every layer composited as the reader sees it matches Krita's own flattened image within 1/255.
    from smd_daemon.scenefile import ora as ora_reader

    with zipfile.ZipFile(ora) as zf:
        _, _, tree = ora_reader.read_stack(zf, str(ora))
        everything = {id(n) for n in ora_reader.bottom_first(tree) if not n.group}
        ours = ora_reader.background_image(zf, tree, everything, 64, 64, 64, 64, str(ora))
        krita = np.asarray(Image.open(io.BytesIO(zf.read("mergedimage.png"))).convert("RGB"))
    assert np.abs(ours.astype(int) - krita.astype(int)).max() <= 1


# The plugin saves its per-document settings as it does in kritaapi.document.save_document_settings.
KRITA_SAVE_WITH_DOCKER_SETTINGS = """
import os
from krita import Krita, InfoObject
from PyQt5.QtCore import QByteArray


def save(*_):
    k = Krita.instance()
    k.setBatchmode(True)
    doc = k.createDocument(256, 128, "drawing", "RGBA", "U8", "", 300.0)
    doc.setBatchmode(True)
    fox = doc.createNode("a red fox", "paintlayer")
    fox.setPixelData(bytes((0, 0, 255, 255)) * (64 * 64), 32, 32, 64, 64)
    doc.rootNode().addChildNode(fox, None)
    doc.setAnnotation(os.environ["NAME"], "SMD Live settings", QByteArray(os.environ["SETTINGS"].encode()))
    doc.refreshProjection()
    doc.waitForDone()
    print("saved", doc.saveAs(os.environ["KRA_OUT"]), doc.exportImage(os.environ["ORA_OUT"], InfoObject()))
    doc.setModified(False)
    doc.close()
"""


def test_the_docker_settings_name_is_the_plugins():
    source = open(os.path.join(ROOT, "krita_plugin", "smd_krita", "kritaapi", "document.py"), encoding="utf-8").read()
    assert re.search(r'^ANNOTATION = "([^"]+)"', source, re.M).group(1) == dockersettings.ANNOTATION


@pytest.mark.krita
@krita_missing
def test_render_says_where_it_differs_from_the_docker_settings_saved_in_the_kra(tmp_path):
    settings = {"size": 128, "region_mode": "attention", "steps": 2, "seed": 42, "seed_locked": True, "strength": None}
    kra, ora = tmp_path / "drawing.kra", tmp_path / "drawing.ora"
    proc = kritarunner(
        tmp_path,
        KRITA_SAVE_WITH_DOCKER_SETTINGS,
        "save",
        NAME=dockersettings.ANNOTATION,
        SETTINGS=json.dumps(settings, sort_keys=True),
        KRA_OUT=str(kra),
        ORA_OUT=str(ora),
    )
    assert kra.exists() and ora.exists(), proc.stdout[-2000:] + proc.stderr[-2000:]
    # What Krita writes: the settings inside the .kra, none in its OpenRaster export.
    assert dockersettings.read(str(kra)) == settings and dockersettings.read(str(ora)) is None
    assert "drawing/annotations/smd-live" in zipfile.ZipFile(kra).namelist()

    out = tmp_path / "out.png"
    proc = run_render(ora, "-o", out, "--model", "tiny", "--no-progress")
    told = [line for line in proc.stderr.splitlines() if "docker's settings" in line]
    assert proc.returncode == 0 and len(told) == 1 and "WARNING" in told[0], proc.stderr
    assert "long side 128 px there, 256 px here; region mode attention there, latent here" in told[0], told
    assert "steps 2 there, 4 here; seed 42 there, 0 here" in told[0], told
    flags = told[0].split("add: ")[1].split()
    assert flags == ["--width", "128", "--region-mode", "attention", "--steps", "2", "--seed", "42"], told

    proc = run_render(ora, "-o", out, "--model", "tiny", "--no-progress", *flags)
    assert proc.returncode == 0 and "this render matches them" in proc.stderr, proc.stderr
    with Image.open(out) as im:
        assert im.size == (128, 64)

    line = assert_one_line_error(render_here(kra, "-o", out, "--model", "tiny"))
    assert "export it as OpenRaster" in line


def test_damaged_docker_settings_are_skipped(tmp_path):
    ora = make_ora(tmp_path / "s.ora", 64, 64, _ok_layers())
    kra = tmp_path / "s.kra"
    for payload in (b"[1, 2]", b"\xff\xfe", b"{" * 70000, b'{"size": NaN, "region_mode": "attention", "steps": 1e400}'):
        with zipfile.ZipFile(kra, "w") as zf:
            zf.writestr("s/annotations/smd-live", payload)
        found = dockersettings.find(str(ora))
        assert (found is None) == (not payload.startswith(b'{"')), payload[:20]
    where, values = found
    assert where == str(kra)
    scene = load_scene(ora).scene
    assert [d.what for d in dockersettings.differences(values, scene)] == ["region mode"]  # NaN, 1e400: unset


# ---------------------------------------------------------------- region modes


def test_region_mode_from_json_and_the_command_line(tmp_path):
    doc = {"width": 64, "height": 64, "region_mode": "attention", "regions": [{"prompt": "a fox", "mask": "m.png"}]}
    path = make_json(tmp_path, doc, {"m.png": np.full((64, 64), 255, np.uint8)})
    assert load_scene(path).scene.region_mode == "attention"
    assert load_scene(path, Overrides(region_mode="latent")).scene.region_mode == "latent"
    ora = make_ora(tmp_path / "s.ora", 64, 64, _ok_layers())
    assert load_scene(ora).scene.region_mode == "latent"
    assert load_scene(ora, Overrides(region_mode="attention")).scene.region_mode == "attention"
    for bad in ({**doc, "region_mode": "fancy"}, {**doc, "region_mode": 1}):
        with pytest.raises(SceneError, match="region mode must be 'latent' or 'attention'|'region_mode' must be text"):
            load_scene(make_json(tmp_path, bad, {"m.png": np.full((64, 64), 255, np.uint8)}))


def test_cli_renders_in_attention_mode_and_refuses_unknown_modes_in_one_line(tmp_path):
    scene = make_ora(tmp_path / "s.ora", 64, 64, _ok_layers())
    line = assert_one_line_error(
        render_here(scene, "-o", tmp_path / "o.png", "--model", "tiny", "--region-mode", "fancy")
    )
    assert "region mode must be 'latent' or 'attention'" in line
    out = tmp_path / "out.png"
    proc = run_render(scene, "-o", out, "--model", "tiny", "--region-mode", "attention", "--steps", "2")
    assert proc.returncode == 0, proc.stderr
    assert "attention mode" in proc.stderr
    with Image.open(out) as im:
        assert im.size == (64, 64) and np.asarray(im).std() > 0


# ---------------------------------------------------------------- control layers


def test_ora_control_layer_is_its_pixels_over_white_never_a_region_nor_background(tmp_path):
    W = H = 64
    lines = rgba(W, H, color=(0, 0, 0), box=(8, 8, 40, 12))
    lines[30:34, 8:40] = (255, 0, 0, 128)  # a half-transparent red stroke
    path = make_ora(
        tmp_path / "c.ora",
        W,
        H,
        [  # top first
            Layer("control: lineart | strength: 0.8 | end: 0.6", lines),
            Group("half", [Layer("control: depth", rgba(W, H, color=(0, 0, 0)))], opacity=0.5),
            Layer("control: scribble", rgba(W, H, alpha=0)),
            Layer("a red fox", rgba(W, H, box=(32, 32, 64, 64))),
            Layer("Paint Layer 1", rgba(W, H, color=(0, 0, 255))),
            Layer("bg: a meadow | strength: 0.5", rgba(W, H, alpha=0)),
        ],
    )
    loaded = load_scene(path)
    scene = loaded.scene
    assert [r.prompt for r in scene.regions] == ["a red fox"]
    depth, lineart = scene.controls  # bottom to top
    assert (lineart.kind, lineart.strength, lineart.start, lineart.end) == ("lineart", 0.8, 0.0, 0.6)
    assert lineart.image.dtype == np.uint8 and lineart.image.shape == (H, W, 3)
    np.testing.assert_array_equal(lineart.image[10, 10], [0, 0, 0])
    np.testing.assert_array_equal(lineart.image[0, 0], [255, 255, 255])  # unpainted: white paper
    np.testing.assert_array_equal(lineart.image[31, 10], [255, 127, 127])  # red at 128/255 over white
    # Seen through its group's opacity: black at half over white.
    assert depth.kind == "depth" and set(np.unique(depth.image)) == {128}
    empty = next(p for p in loaded.layers if p.name == "control: scribble")
    assert (empty.role, empty.reason_code, empty.kind) == ("ignored", "empty", "scribble")
    # The background image holds the blue paint layer only: no control layer's black.
    np.testing.assert_array_equal(scene.background.image[10, 10], [0, 0, 255])
    # At another output size the picture is resized like the background image.
    big = load_scene(path, Overrides(width=96)).scene
    assert big.controls[1].image.shape == (96, 96, 3)


def test_json_controls(tmp_path):
    W, H = 96, 64
    sketch = np.full((H, W, 3), 255, np.uint8)
    sketch[20:24, :] = 0
    strokes = np.zeros((H, W, 4), np.uint8)
    strokes[40:44, :] = (0, 0, 0, 255)
    doc = {
        "width": W,
        "height": H,
        "regions": [{"prompt": "a fox", "mask": "m.png"}],
        "controls": [
            {"kind": "lineart", "image": "sketch.png", "strength": 0.8, "start": 0, "end": 0.6},
            {"kind": "scribble", "image": "strokes.png"},
            {"kind": "depth", "image": "clear.png", "name": "an empty one"},
        ],
    }
    images = {"m.png": np.full((H, W), 255, np.uint8), "sketch.png": sketch, "strokes.png": strokes}
    images["clear.png"] = np.zeros((H, W, 4), np.uint8)
    loaded = load_scene(make_json(tmp_path, doc, images))
    lineart, scribble = loaded.scene.controls
    assert (lineart.kind, lineart.strength, lineart.start, lineart.end) == ("lineart", 0.8, 0.0, 0.6)
    np.testing.assert_array_equal(lineart.image, sketch)
    assert scribble.kind == "scribble" and scribble.image[41].max() == 0 and scribble.image[0].min() == 255
    empty = loaded.layers[-1]
    assert (empty.name, empty.role, empty.reason_code, empty.kind) == ("an empty one", "ignored", "empty", "depth")
    assert load_scene(make_json(tmp_path, doc, images), Overrides(width=192)).scene.controls[0].image.shape == (
        128,
        192,
        3,
    )


@pytest.mark.parametrize(
    "control, message",
    [
        ({"kind": "linart", "image": "c.png"}, "control 1: unknown kind 'linart' (did you mean 'lineart'?)"),
        ({"image": "c.png"}, 'control 1 has no "kind" (one of lineart, scribble'),
        ({"kind": "depth"}, 'control 1 has no "image"'),
        ({"kind": "depth", "image": "nope.png"}, "control 1 image 'nope.png' not found"),
        ({"kind": "depth", "image": "small.png"}, "control 1 image 'small.png' is 32x32, the scene is 64x64"),
        ({"kind": "depth", "image": "c.png", "strength": 3}, "control 1: strength must be between 0 and 2"),
        ({"kind": "depth", "image": "c.png", "start": 0.5, "end": 0.5}, "0 <= start < end <= 1"),
        ({"kind": "depth", "image": "m.png.txt"}, "control 1 image 'm.png.txt'"),
        ("depth", "control 1 must be an object"),
    ],
)
def test_json_bad_controls_one_line(tmp_path, control, message):
    (tmp_path / "m.png.txt").write_text("not an image")
    doc = {"width": 64, "height": 64, "regions": [{"prompt": "a fox", "mask": "m.png"}], "controls": [control]}
    images = {"m.png": np.full((64, 64), 255, np.uint8), "c.png": np.zeros((64, 64, 3), np.uint8)}
    images["small.png"] = np.zeros((32, 32, 3), np.uint8)
    with pytest.raises(SceneError, match=re.escape(message)) as e:
        load_scene(make_json(tmp_path, doc, images))
    assert "\n" not in str(e.value)


def test_cli_renders_a_scene_with_a_control_and_says_an_empty_one_is_left_out(tmp_path):
    W = H = 64
    path = make_ora(
        tmp_path / "c.ora",
        W,
        H,
        [Layer("control: scribble", rgba(W, H, alpha=0)), Layer("a red fox", rgba(W, H, box=(0, 0, 32, 64)))],
    )
    out = tmp_path / "out.png"
    proc = run_render(path, "-o", out, "--model", "tiny", "--steps", "1", "--no-progress")
    assert proc.returncode == 0 and out.exists(), proc.stderr
    assert "control scribble left out: empty: nothing is painted on it" in proc.stderr

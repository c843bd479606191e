"""The rooms' doors open one way: checked on the source, not by convention."""

import ast
import pathlib

from install import VENDORED as WIRE  # the modules the plugin vendors: the wire layer

ROOT = pathlib.Path(__file__).resolve().parents[1]


def _imports(path: pathlib.Path) -> set[str]:
    names = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            names.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module)
    return names


def test_engine_imports_nothing_from_the_daemon_room():
    for path in (ROOT / "smd_daemon" / "engine").rglob("*.py"):
        for name in _imports(path):
            if name.startswith("smd_daemon"):
                assert name.startswith("smd_daemon.engine"), f"{path.name} imports {name}"
            assert not name.startswith(("zmq", "krita", "PyQt5", "PyQt6")), f"{path.name} imports {name}"


def _plugin_files():
    files = list((ROOT / "krita_plugin").rglob("*.py"))
    assert files
    return files


def test_plugin_never_imports_the_engine_torch_or_numpy():
    for path in _plugin_files():
        for name in _imports(path):
            top = name.split(".")[0]
            assert top not in ("torch", "numpy", "diffusers", "transformers", "PIL"), (
                f"{path.relative_to(ROOT)} imports {name}"
            )


def test_only_the_qt_layer_imports_a_qt_binding():
    """Krita 6 refuses every import of PyQt5: the plugin chooses its binding in one place."""
    layer = ROOT / "krita_plugin" / "smd_krita" / "qt.py"
    for path in _plugin_files():
        for name in _imports(path):
            if name.split(".")[0] in ("PyQt5", "PyQt6", "sip", "PySide2", "PySide6"):
                assert path == layer, f"{path.relative_to(ROOT)} imports {name}: import it from smd_krita.qt"
    assert {"PyQt5", "PyQt6"} <= {name.split(".")[0] for name in _imports(layer)}


def test_plugin_reaches_the_daemon_package_only_through_the_wire_modules():
    wire = {"smd_daemon." + name.removesuffix(".py") for name in WIRE}
    for path in _plugin_files():
        tree = ast.parse(path.read_text(encoding="utf-8"))
        for node in ast.walk(tree):
            if isinstance(node, ast.ImportFrom) and node.module == "smd_daemon" and node.level == 0:
                assert {f"smd_daemon.{a.name}" for a in node.names} <= wire, f"{path.name}: {ast.dump(node)}"
            elif isinstance(node, (ast.Import, ast.ImportFrom)):
                for name in _imports_of(node):
                    if name.startswith("smd_daemon."):
                        assert name in wire, f"{path.name} imports {name}"


def test_wire_modules_import_only_the_standard_library_and_zmq():
    import sys

    for mod in WIRE:
        for name in _imports(ROOT / "smd_daemon" / mod):
            top = name.split(".")[0]
            assert top in sys.stdlib_module_names or top in ("zmq", "__future__"), f"{mod} imports {name}"
        tree = ast.parse((ROOT / "smd_daemon" / mod).read_text(encoding="utf-8"))
        relative = set()
        for node in ast.walk(tree):
            if isinstance(node, ast.ImportFrom) and node.level:  # "from . import x" or "from .x import y"
                relative |= {node.module + ".py"} if node.module else {a.name + ".py" for a in node.names}
        assert relative <= set(WIRE), f"{mod} imports {relative - set(WIRE)}, which the plugin does not vendor"


def _imports_of(node) -> list[str]:
    if isinstance(node, ast.Import):
        return [a.name for a in node.names]
    return [node.module] if node.module and node.level == 0 else []


def test_daemon_and_plugin_modules_and_classes_stay_readable():
    """No module over 500 lines, no class over 300: past that, split by concern."""
    files = [*(ROOT / "smd_daemon").rglob("*.py"), *(ROOT / "krita_plugin").rglob("*.py")]
    assert {
        ROOT / "smd_daemon" / "scenefile" / "ora.py",
        ROOT / "smd_daemon" / "engine" / "core.py",
        ROOT / "krita_plugin" / "smd_krita" / "live.py",
    } <= set(files)
    for path in files:
        text = path.read_text(encoding="utf-8")
        assert text.count("\n") <= 500, f"{path.relative_to(ROOT)} has {text.count(chr(10))} lines"
        for node in ast.walk(ast.parse(text)):
            if isinstance(node, ast.ClassDef):
                length = node.end_lineno - node.lineno + 1
                assert length <= 300, f"{path.relative_to(ROOT)}: class {node.name} has {length} lines"


def test_the_region_mode_vocabulary_is_written_once_per_room():
    """The wire's list (protocol.py: the daemon and the plugin) and the engine's own (the engine may
    not import the wire) are equal, and no other module spells the list again."""
    from smd_daemon import protocol
    from smd_daemon.engine import scene

    assert protocol.REGION_MODES == scene.REGION_MODES
    owners = {ROOT / "smd_daemon" / "protocol.py", ROOT / "smd_daemon" / "engine" / "scene.py"}
    files = [*(ROOT / "smd_daemon").rglob("*.py"), *(ROOT / "krita_plugin").rglob("*.py"), ROOT / "install.py"]
    files += list((ROOT / "benchmarks").rglob("*.py"))
    for path in files:
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, (ast.Tuple, ast.List, ast.Set)):
                words = {e.value for e in node.elts if isinstance(e, ast.Constant)}
                assert not set(scene.REGION_MODES) <= words or path in owners, (
                    f"{path.relative_to(ROOT)}:{node.lineno} spells the region modes again"
                )

"""The rooms' doors open one way: checked on the source, not by convention."""

import ast
import pathlib

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
            assert not name.startswith(("zmq", "krita", "PyQt5")), f"{path.name} imports {name}"


def test_plugin_never_imports_the_engine_torch_or_numpy():
    files = list((ROOT / "krita_plugin").rglob("*.py"))
    for path in files:
        for name in _imports(path):
            top = name.split(".")[0]
            assert top not in ("torch", "numpy", "diffusers", "transformers", "PIL", "smd_daemon"), \
                f"{path.relative_to(ROOT)} imports {name}"

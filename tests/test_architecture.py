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


def _module_name(path: pathlib.Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _import_graph() -> dict[str, set[str]]:
    """Every module of smd_daemon -> the modules of smd_daemon it imports,
    wherever in its code (top level, inside functions, under TYPE_CHECKING).
    ``from package import module`` counts as importing the module."""
    modules = {_module_name(p): p for p in (ROOT / "smd_daemon").rglob("*.py")}
    graph = {}
    for name, path in modules.items():
        package = name if path.name == "__init__.py" else name.rpartition(".")[0]
        deps = set()
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.Import):
                targets = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom):
                base = node.module or ""
                if node.level:
                    up = package.split(".")[: len(package.split(".")) - node.level + 1]
                    base = ".".join(up + ([base] if base else []))
                targets = [f"{base}.{a.name}" if f"{base}.{a.name}" in modules else base for a in node.names]
            else:
                continue
            deps |= {t for t in targets if t in modules and t != name}
        graph[name] = deps
    return graph


def _circles(graph: dict[str, set[str]]) -> list[set[str]]:
    """The strongly connected components of more than one module (Tarjan)."""
    index, low, stack, on_stack, out = {}, {}, [], set(), []

    def visit(v):
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in graph[v]:
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = set()
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.add(w)
                if w == v:
                    break
            if len(component) > 1:
                out.append(component)

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return out


def test_no_import_circles_in_the_engine_room_between_server_and_cluster_or_anywhere():
    graph = _import_graph()
    assert {"smd_daemon.engine.core", "smd_daemon.server.router", "smd_daemon.cluster.worker"} <= set(graph)
    assert _circles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [{"a", "b", "c"}]
    assert not _circles(graph), "modules that import each other, directly or round about"
    # The cluster builds on the server; of the server, only the serve command reaches into the cluster.
    for name, deps in graph.items():
        if name.startswith("smd_daemon.server.") and name != "smd_daemon.server.command":
            assert not any(d.startswith("smd_daemon.cluster") for d in deps), f"{name} imports the cluster"


def test_the_engine_room_is_layered_without_back_doors():
    """Each engine module imports only modules below it: a model never knows its plans."""
    graph = _import_graph()
    order = [
        "scene",
        "masks",
        "attention",
        "control",
        "vae",
        "runner",
        "families",
        "model",
        "plan",
        "modes",
        "planner",
        "work",
        "stream",
        "core",
    ]
    rank = {f"smd_daemon.engine.{m}": k for k, m in enumerate(order)}
    for name, k in rank.items():
        above = {d for d in graph[name] if rank.get(d, -1) >= k}
        assert not above, f"{name} imports {sorted(above)}, which build on it"


def test_region_mode_names_are_compared_only_where_a_plan_picks_its_strategy():
    """A region mode is a strategy object (engine/modes.py) everywhere else."""
    from smd_daemon.engine.scene import REGION_MODES

    def is_mode(node) -> bool:
        if isinstance(node, ast.Constant):
            return node.value in REGION_MODES
        if isinstance(node, (ast.Tuple, ast.List, ast.Set)):
            return any(is_mode(e) for e in node.elts)
        return (isinstance(node, ast.Name) and node.id in ("LATENT", "ATTENTION")) or (
            isinstance(node, ast.Attribute) and node.attr in ("LATENT", "ATTENTION")
        )

    allowed = ("smd_daemon/engine/modes.py", "strategy_for")
    found = []
    for path in (ROOT / "smd_daemon").rglob("*.py"):
        tree = ast.parse(path.read_text(encoding="utf-8"))
        for func in [tree, *(n for n in ast.walk(tree) if isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef)))]:
            body = [func] if func is tree else func.body
            for node in (n for stmt in body for n in ast.walk(stmt)):
                if isinstance(node, ast.Compare) and any(is_mode(x) for x in [node.left, *node.comparators]):
                    where = (path.relative_to(ROOT).as_posix(), getattr(func, "name", ""))
                    if where != allowed:
                        found.append(f"{where[0]}:{node.lineno}")
    assert not found, f"region mode names compared at {sorted(set(found))}"


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

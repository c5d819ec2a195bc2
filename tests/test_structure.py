"""The package's shape, read from its source with ``ast``: imports flow one way (no cycle among fcnseg modules,
counting the imports inside functions and the parent packages an import runs), lower layers never import upper
ones, and no function is longer than a screenful or two."""
from __future__ import annotations

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "fcnseg"
MAX_FUNCTION_LINES = 120


def modules() -> dict[str, Path]:
    """fcnseg module name → file (a package by its ``__init__.py``)."""
    out = {}
    for path in sorted(PACKAGE.rglob("*.py")):
        parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
        out[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path
    return out


def _imports(name: str, path: Path, known: dict[str, Path]) -> set[str]:
    """The fcnseg modules that running ``name`` imports, at module level or inside functions: each imported module,
    and the packages above it that are not already running (importing ``a.b.c`` runs ``a/b/__init__.py``)."""
    tree = ast.parse(path.read_text())
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    targets = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            targets |= {a.name for a in node.names}
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = ".".join(package.split(".")[:len(package.split(".")) - node.level + 1] +
                                ([node.module] if node.module else []))
            else:
                base = node.module or ""
            targets |= {f"{base}.{a.name}" if f"{base}.{a.name}" in known else base for a in node.names}
        elif isinstance(node, ast.Assign) and any(getattr(t, "id", None) == "READERS" for t in node.targets):
            # fcnseg.data imports its readers on use, by name: "module:Class"
            targets |= {f"{name}.{v.value.split(':')[0]}" for v in node.value.values}
    out = set()
    for target in targets:
        while target and target not in known:  # `import fcnseg.x.y` of a name inside a module
            target = target.rpartition(".")[0]
        if not target.startswith("fcnseg"):
            continue
        parts = target.split(".")
        for i in range(1, len(parts) + 1):
            ancestor = ".".join(parts[:i])
            if ancestor == target or not (name == ancestor or name.startswith(ancestor + ".")):
                out.add(ancestor)
    out.discard(name)
    return out


def import_graph() -> dict[str, set[str]]:
    known = modules()
    return {name: _imports(name, path, known) for name, path in known.items()}


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    state: dict[str, int] = {}  # 1: on the current path, 2: done
    path: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        path.append(node)
        for nxt in sorted(graph.get(node, ())):
            if state.get(nxt) == 1:
                return path[path.index(nxt):] + [nxt]
            if nxt not in state:
                cycle = visit(nxt)
                if cycle:
                    return cycle
        path.pop()
        state[node] = 2
        return None

    for node in sorted(graph):
        if node not in state:
            cycle = visit(node)
            if cycle:
                return cycle
    return None


def test_the_graph_sees_function_level_and_package_imports():
    graph = import_graph()
    assert "fcnseg.train.checkpoint" in graph["fcnseg.viz"]
    assert "fcnseg.train" in graph["fcnseg.viz"]  # importing fcnseg.train.checkpoint runs fcnseg/train/__init__.py
    assert "fcnseg.data.camvid" in graph["fcnseg.data"]  # the readers imported by name
    assert "fcnseg.crf" in graph["fcnseg.evaluation"]
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b"}, "b": set()}) is None


def test_no_import_cycle():
    cycle = find_cycle(import_graph())
    assert cycle is None, f"import cycle: {' → '.join(cycle)}"


def test_imports_flow_one_way():
    """cli → train / evaluation / serve / export → models / data / weights → runtime / files / errors."""
    graph = import_graph()
    lowest = {"fcnseg.errors", "fcnseg.files", "fcnseg.runtime", "fcnseg.distributed", "fcnseg.normalization",
              "fcnseg.metrics", "fcnseg.imagefile"}
    middle = ("fcnseg.models", "fcnseg.data", "fcnseg.weights")
    for name, targets in graph.items():
        if name in lowest:
            assert targets <= {"fcnseg.errors"}, (name, targets)
        if name.startswith(middle):
            assert all(t in lowest or t.startswith(middle) for t in targets), (name, targets - lowest)
        if not name.startswith(("fcnseg.cli", "fcnseg.__main__")):
            assert not any(t.startswith("fcnseg.cli") for t in targets), (name, targets)


def test_no_dynamic_imports_besides_the_dataset_readers():
    for name, path in modules().items():
        text = path.read_text()
        calls = text.count("__import__(") + text.count("import_module(")
        assert calls == (1 if name == "fcnseg.data" else 0), f"{path}: import by name hides a dependency"


def test_no_function_is_longer_than_a_screenful_or_two():
    long = []
    for path in modules().values():
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                lines = node.end_lineno - node.lineno + 1
                if lines > MAX_FUNCTION_LINES:
                    long.append(f"{path.relative_to(PACKAGE.parent)}:{node.lineno} {node.name} ({lines} lines)")
    assert not long, f"functions over {MAX_FUNCTION_LINES} lines: {long}"

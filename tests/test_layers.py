"""The house's rules, read from the source with `ast` (no import runs): cgan/'s folders are floors that
only import downward, and no module imports itself back through others (no import circles), counting
the imports inside functions too; no module over 400 lines, no function over 80. Run it alone with
`python -m pytest -q tests/test_layers.py`, or `python tests/test_layers.py` for a report.

Floors, bottom first (a module may import its own floor and the floors below):
    core       errors, config, files (every write), images (tensors <-> PIL, grids, saving), layers
    condition  text encoder, attributes, fusion, vocabulary (the training captions' words)
    data       data sets, the image cache
    nets       G, the Ds, the factory, export (model folders), sampling
    eval       FID, faithfulness, the in-training evaluation
    train      loop, steps, losses, augmentation, EMA, recovery, checkpoints, precision, the caption table
    app        cgan/*.py: pipeline, batch generation, demo, CLI, the fid/faithfulness commands
"""
from __future__ import annotations

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parent.parent / "cgan"
FLOORS = ("core", "condition", "data", "nets", "eval", "train", "app")


def module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def modules() -> dict[str, Path]:
    return {module_name(p): p for p in sorted(PACKAGE.rglob("*.py"))}


def floor(module: str) -> str:
    parts = module.split(".")
    if len(parts) >= 2 and parts[1] in FLOORS:
        return parts[1]
    return "app"  # cgan itself and the modules at its top


def imports(path: Path, known: dict[str, Path]) -> list[tuple[str, int]]:
    """The cgan modules `path` imports, anywhere in it (also inside functions), with their line numbers."""
    found = []
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            found += [(alias.name, node.lineno) for alias in node.names if alias.name.split(".")[0] == "cgan"]
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and (node.module or "").split(".")[0] == "cgan":
            for alias in node.names:  # `from cgan.eval import fid` imports the module cgan.eval.fid
                sub = f"{node.module}.{alias.name}"
                found.append((sub if sub in known else node.module, node.lineno))
    return sorted(set(found), key=lambda item: item[1])


def import_graph() -> dict[str, set[str]]:
    known = modules()
    return {name: {target for target, _ in imports(path, known) if target != name} for name, path in known.items()}


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One import circle as a path [a, b, ..., a], or None."""
    state: dict[str, int] = {}  # 1: on the current path, 2: done
    path: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        path.append(node)
        for nxt in sorted(graph.get(node, ())):
            if state.get(nxt) == 1:
                return path[path.index(nxt):] + [nxt]
            if nxt not in state and (cycle := visit(nxt)):
                return cycle
        path.pop()
        state[node] = 2
        return None

    for start in sorted(graph):
        if start not in state and (cycle := visit(start)):
            return cycle
    return None


def upward_imports() -> list[str]:
    known = modules()
    found = []
    for name, path in known.items():
        for target, line in imports(path, known):
            if FLOORS.index(floor(target)) > FLOORS.index(floor(name)):
                found.append(f"{path.relative_to(PACKAGE.parent)}:{line}: {name} ({floor(name)}) imports {target} "
                             f"({floor(target)})")
    return found


MAX_FILE_LINES, MAX_FUNCTION_LINES = 400, 80


def too_long() -> list[str]:
    """Modules over MAX_FILE_LINES lines and functions (methods, nested ones) over MAX_FUNCTION_LINES."""
    found = []
    for name, path in modules().items():
        source = path.read_text()
        if len(source.splitlines()) > MAX_FILE_LINES:
            found.append(f"{path.relative_to(PACKAGE.parent)}: {len(source.splitlines())} lines")
        for node in ast.walk(ast.parse(source)):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                length = node.end_lineno - node.lineno + 1
                if length > MAX_FUNCTION_LINES:
                    found.append(f"{path.relative_to(PACKAGE.parent)}:{node.lineno}: {node.name}, {length} lines")
    return found


def test_every_module_sits_on_a_known_floor():
    folders = {p.name for p in PACKAGE.iterdir() if p.is_dir() and (p / "__init__.py").is_file()}
    assert folders <= set(FLOORS), f"folders that are no floor: {sorted(folders - set(FLOORS))}"


def test_no_import_runs_up_a_floor():
    assert upward_imports() == []


def test_no_import_circles():
    assert find_cycle(import_graph()) is None


def test_no_long_modules_or_functions():
    assert too_long() == []


def test_every_imported_cgan_name_exists():
    """Imports inside functions run late: a name moved away would fail only when that function runs."""
    import importlib

    missing = []
    for name, path in modules().items():
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and node.level == 0 and (node.module or "").split(".")[0] == "cgan":
                module = importlib.import_module(node.module)
                missing += [f"{path.relative_to(PACKAGE.parent)}:{node.lineno}: {node.module}.{alias.name}"
                            for alias in node.names if not hasattr(module, alias.name)
                            and f"{node.module}.{alias.name}" not in modules()]
    assert missing == []


def test_the_checks_see_a_circle_and_an_upward_import():
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b"}, "b": set()}) is None
    assert floor("cgan.core.files") == "core" and floor("cgan.pipeline") == "app" and floor("cgan") == "app"
    graph = import_graph()
    assert "cgan.core.files" in graph["cgan.train.checkpoint"]  # sees top-level imports
    assert "cgan.nets.export" in graph["cgan.eval.evaluation"]  # and imports inside functions


if __name__ == "__main__":
    print("\n".join(upward_imports()) or "no upward imports")
    print(f"import circle: {find_cycle(import_graph())}")
    print("\n".join(too_long()) or f"no module over {MAX_FILE_LINES} lines, no function over {MAX_FUNCTION_LINES}")

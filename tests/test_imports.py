"""The package's shape: no import cycles (late imports inside functions count too), every module
imports on its own, and only the CLI imports click."""
from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
# Where each installed package lives in the source tree (pyproject's package-dir mapping).
SOURCES = {"ghosttrack": ROOT / "ghosttrack", "ghosttrack.store": ROOT / "store", "ghosttrack.kernels": ROOT / "kernels"}


def _modules() -> dict[str, Path]:
    found = {}
    for package, folder in SOURCES.items():
        for path in folder.rglob("*.py"):
            parts = path.relative_to(folder).with_suffix("").parts
            if parts[-1] == "__main__":
                continue
            if parts[-1] == "__init__":
                parts = parts[:-1]
            name = ".".join((package, *parts))
            if name.startswith("ghosttrack.store.") or name.startswith("ghosttrack.kernels.") or \
                    not any(name.startswith(p + ".") for p in SOURCES if p != package and p != "ghosttrack"):
                found.setdefault(name, path)
    return found


MODULES = _modules()


def _resolve(module: str, node: ast.ImportFrom) -> str:
    if node.level == 0:
        return node.module or ""
    base = module.split(".")
    is_package = MODULES[module].name == "__init__.py"
    base = base[: len(base) - node.level + (1 if is_package else 0)]
    return ".".join([*base, *(node.module.split(".") if node.module else [])])


def _imports(module: str) -> set[str]:
    """Every ghosttrack module `module` imports, at the top or inside functions (not under TYPE_CHECKING)."""
    tree = ast.parse(MODULES[module].read_text())
    skip: set[int] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
            skip.update(id(child) for child in ast.walk(node))
    targets: set[str] = set()
    for node in ast.walk(tree):
        if id(node) in skip:
            continue
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            source = _resolve(module, node)
            names = [f"{source}.{alias.name}" if f"{source}.{alias.name}" in MODULES else source
                     for alias in node.names]
        else:
            continue
        for name in names:
            while name and name not in MODULES:
                name = name.rpartition(".")[0]
            if name and name != module:
                targets.add(name)
    return targets


def _find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        stack.append(node)
        for nxt in sorted(graph.get(node, ())):
            if state.get(nxt) == 1:
                return stack[stack.index(nxt):] + [nxt]
            if nxt not in state and (cycle := visit(nxt)):
                return cycle
        stack.pop()
        state[node] = 2
        return None

    for node in sorted(graph):
        if node not in state and (cycle := visit(node)):
            return cycle
    return None


def test_the_cycle_finder_finds_a_planted_cycle():
    assert _find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert _find_cycle({"a": {"b"}, "b": {"c"}, "c": set()}) is None


def test_the_import_graph_has_no_cycle():
    # A package's __init__ re-exports its modules, so those edges are expected; a module that imports
    # its own package (instead of the module that defines the name) closes a cycle through it.
    graph = {module: _imports(module) for module in MODULES}
    assert _find_cycle(graph) is None, f"import cycle: {' -> '.join(_find_cycle(graph))}"


def _in_store_or_kernels(module: str) -> bool:
    """ghosttrack.store(.*) and ghosttrack.kernels(.*), not a sibling whose name starts alike (ghosttrack.stores)."""
    return any(module == p or module.startswith(p + ".") for p in ("ghosttrack.store", "ghosttrack.kernels"))


def test_store_and_kernels_never_import_the_rest_of_ghosttrack():
    for module in MODULES:
        if _in_store_or_kernels(module):
            outside = {t for t in _imports(module) if not _in_store_or_kernels(t)}
            assert not outside, f"{module} imports {sorted(outside)}"


def test_only_the_cli_imports_click():
    for module, path in MODULES.items():
        if module.startswith("ghosttrack.cli"):
            continue
        tree = ast.parse(path.read_text())
        for node in ast.walk(tree):
            names = ([a.name for a in node.names] if isinstance(node, ast.Import)
                     else [node.module or ""] if isinstance(node, ast.ImportFrom) and node.level == 0 else [])
            assert not any(n == "click" or n.startswith("click.") for n in names), f"{module} imports click"
            if isinstance(node, ast.ImportFrom) and node.level == 0 and (node.module or "").startswith("ghosttrack.cli"):
                pytest.fail(f"{module} imports the CLI ({node.module})")


def test_every_module_imports_on_its_own():
    """Each module in a state where no other ghosttrack module was imported before it (one
    interpreter, the ghosttrack modules dropped from sys.modules before each import)."""
    code = (
        "import importlib, sys, traceback\n"
        "failed = []\n"
        "for name in sys.argv[1:]:\n"
        "    for loaded in [m for m in sys.modules if m == 'ghosttrack' or m.startswith('ghosttrack.')]:\n"
        "        del sys.modules[loaded]\n"
        "    try:\n"
        "        importlib.import_module(name)\n"
        "    except Exception:\n"
        "        failed.append(name + ': ' + traceback.format_exc(limit=-1).strip().splitlines()[-1])\n"
        "print('\\n'.join(failed))\n"
        "sys.exit(1 if failed else 0)\n"
    )
    result = subprocess.run([sys.executable, "-c", code, *sorted(MODULES)], capture_output=True, text=True,
                            timeout=300)
    assert result.returncode == 0, result.stdout + result.stderr[-2000:]

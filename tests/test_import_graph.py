"""The modules of ``uwm_d2`` import each other without a circle, lazy imports inside functions and
imports for type checking included: the layers of docs/design.md only ever point down.

The graph is read from the source with ``ast`` (nothing is imported): an edge for every
``import uwm_d2.x`` / ``from uwm_d2.x import y`` anywhere in a module, to the module ``y`` when it
is one, else to ``uwm_d2.x``.
"""

from __future__ import annotations

import ast

from .conftest import REPO_ROOT


def _module_names() -> dict[str, bool]:
    """``{dotted name: is a package}`` of every module of ``uwm_d2``."""
    names = {}
    for path in (REPO_ROOT / "uwm_d2").rglob("*.py"):
        parts = list(path.relative_to(REPO_ROOT).with_suffix("").parts)
        is_package = parts[-1] == "__init__"
        names[".".join(parts[:-1] if is_package else parts)] = is_package
    return names


def _imports(module: str, is_package: bool, modules: dict[str, bool]) -> set[str]:
    path = REPO_ROOT / module.replace(".", "/")
    path = path / "__init__.py" if is_package else path.with_suffix(".py")
    edges = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            edges |= {alias.name for alias in node.names if alias.name in modules}
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:  # relative: from the module's package, up level - 1 packages
                package = module.split(".") if is_package else module.split(".")[:-1]
                package = package[: len(package) - node.level + 1]
                base = ".".join([*package, base] if base else package)
            for alias in node.names:
                target = f"{base}.{alias.name}"
                if target in modules:
                    edges.add(target)
                elif base in modules:
                    edges.add(base)
    return edges - {module}


def import_graph() -> dict[str, set[str]]:
    modules = _module_names()
    return {name: _imports(name, package, modules) for name, package in modules.items()}


def find_cycle(graph: dict[str, set[str]]) -> list[str]:
    """A circle of imports (its modules, the first repeated at the end), or ``[]``."""
    state: dict[str, str] = {}  # "open" while on the path, "done" once every edge was followed
    path: list[str] = []

    def visit(node: str) -> list[str]:
        state[node] = "open"
        path.append(node)
        for target in sorted(graph[node]):
            if state.get(target) == "open":
                return [*path[path.index(target) :], target]
            if target not in state and (cycle := visit(target)):
                return cycle
        path.pop()
        state[node] = "done"
        return []

    for node in sorted(graph):
        if node not in state and (cycle := visit(node)):
            return cycle
    return []


def test_the_finder_sees_a_circle_and_a_lazy_import() -> None:
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b", "c"}, "b": {"c"}, "c": set()}) == []
    graph = import_graph()
    # A lazy import inside a function is an edge too (cli builds the predictor on demand).
    assert "uwm_d2.inference.ensemble" in graph["uwm_d2.cli"]
    assert "uwm_d2.core.readings.tally" in graph["uwm_d2.core.readings"]


def test_uwm_d2_imports_without_a_circle() -> None:
    assert find_cycle(import_graph()) == []

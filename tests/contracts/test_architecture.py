"""The import rules of DESIGN.md, read from the source with ast (no module is imported).

`scp_node` uses `storage` and `classifier`; `classifier` and `storage` never import `scp_node`;
`storage` never imports `classifier`. Inside each package the modules import each other without
a cycle, and `scp_node`'s rooms import only downward: app -> web -> pipeline -> receive -> ops ->
dicom -> the shared modules (config, credentials, logs, metrics). Every import counts: at module
level, inside a function (a "lazy"
import is still a dependency) and under `if TYPE_CHECKING:` (a cycle there is one a refactoring
turns into a run-time cycle).
"""

from __future__ import annotations

import ast
from collections.abc import Iterator
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
PACKAGES = ("scp_node", "classifier", "storage")


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def _modules() -> dict[str, Path]:
    """Every module of the three packages: dotted name -> file."""
    return {
        _module_name(path): path
        for package in PACKAGES
        for path in sorted((ROOT / package).rglob("*.py"))
    }


MODULES = _modules()


def _imported_names(name: str, path: Path) -> Iterator[tuple[str, int]]:
    """(dotted name, line) of everything a module imports, anywhere in its body."""
    is_package = path.name == "__init__.py"
    package = name if is_package else name.rpartition(".")[0]
    for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
        if isinstance(node, ast.Import):
            for alias in node.names:
                yield alias.name, node.lineno
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")
                base = base[: len(base) - (node.level - 1)]
                module = ".".join(base + ([node.module] if node.module else []))
            else:
                module = node.module or ""
            yield module, node.lineno
            # `from classifier.model import training` imports the submodule training.
            for alias in node.names:
                yield f"{module}.{alias.name}", node.lineno


def _resolve(imported: str) -> str | None:
    """The module of ours an imported name lands in (the longest known prefix), or None."""
    parts = imported.split(".")
    for n in range(len(parts), 0, -1):
        candidate = ".".join(parts[:n])
        if candidate in MODULES:
            return candidate
    return None


def _edges() -> dict[str, dict[str, int]]:
    """module -> {module of ours it imports: first line}."""
    graph: dict[str, dict[str, int]] = {}
    for name, path in MODULES.items():
        out: dict[str, int] = {}
        for imported, line in _imported_names(name, path):
            target = _resolve(imported)
            if target is not None and target != name:
                out.setdefault(target, line)
        graph[name] = out
    return graph


GRAPH = _edges()


def _top(module: str) -> str:
    return module.split(".")[0]


def _find_cycle(nodes: set[str]) -> list[str] | None:
    """One import cycle among `nodes` as a path [a, b, ..., a], or None (iterative DFS)."""
    white, grey, black = 0, 1, 2
    colour = dict.fromkeys(nodes, white)
    for start in sorted(nodes):
        if colour[start] != white:
            continue
        stack: list[tuple[str, Iterator[str]]] = [
            (start, iter(sorted(t for t in GRAPH[start] if t in nodes)))
        ]
        colour[start] = grey
        while stack:
            node, children = stack[-1]
            child = next(children, None)
            if child is None:
                colour[node] = black
                stack.pop()
            elif colour[child] == grey:
                path = [n for n, _ in stack]
                return path[path.index(child) :] + [child]
            elif colour[child] == white:
                colour[child] = grey
                stack.append((child, iter(sorted(t for t in GRAPH[child] if t in nodes))))
    return None


def _describe(cycle: list[str]) -> str:
    """'a (line 3) -> b (line 7) -> a': each module with the line of its import of the next."""
    steps = [f"{a} (line {GRAPH[a][b]})" for a, b in zip(cycle, cycle[1:], strict=False)]
    return " -> ".join(steps + [cycle[-1]])


def test_the_packages_are_found() -> None:
    for package in PACKAGES:
        assert package in MODULES, f"{package}/__init__.py not found under {ROOT}"
    assert sum(m.startswith("classifier.") for m in MODULES) > 10
    assert "classifier.model.training" in GRAPH


@pytest.mark.parametrize(
    ("package", "forbidden"),
    [("classifier", {"scp_node"}), ("storage", {"scp_node", "classifier"})],
)
def test_layers_import_one_way(package: str, forbidden: set[str]) -> None:
    wrong = [
        f"{module} imports {target} ({MODULES[module].relative_to(ROOT)}:{line})"
        for module, targets in sorted(GRAPH.items())
        if _top(module) == package
        for target, line in sorted(targets.items())
        if _top(target) in forbidden
    ]
    assert not wrong, f"{package} must not import {sorted(forbidden)}:\n" + "\n".join(wrong)


@pytest.mark.parametrize("package", PACKAGES)
def test_no_import_cycle_inside(package: str) -> None:
    nodes = {m for m in GRAPH if _top(m) == package}
    cycle = _find_cycle(nodes)
    assert cycle is None, f"import cycle inside {package}: {_describe(cycle)}"


def test_the_cycle_finder_finds_a_planted_cycle() -> None:
    GRAPH["__a"] = {"__b": 1}
    GRAPH["__b"] = {"__c": 2}
    GRAPH["__c"] = {"__a": 3}
    try:
        cycle = _find_cycle({"__a", "__b", "__c"})
        assert cycle == ["__a", "__b", "__c", "__a"]
        assert _describe(cycle) == "__a (line 1) -> __b (line 2) -> __c (line 3) -> __a"
    finally:
        for name in ("__a", "__b", "__c"):
            del GRAPH[name]


# scp_node's rooms, lowest first: a module may import its own room, the rooms below it and the
# shared modules; a shared module imports only shared modules.
SCP_NODE_ROOMS = ("dicom", "ops", "receive", "pipeline", "web", "app")
SCP_NODE_SHARED = {"scp_node", "scp_node.config", "scp_node.credentials", "scp_node.logs"}
SCP_NODE_SHARED |= {"scp_node.metrics"}
SCP_NODE_ENTRY = {"scp_node.__main__"}  # `python -m scp_node`: above every room


def _rank(module: str) -> int:
    """0 for a shared module, 1 + the room's place for a module in a room, above all for the entry
    point; ValueError for a module of scp_node in no room (a new flat module must find its room)."""
    if module in SCP_NODE_SHARED:
        return 0
    if module in SCP_NODE_ENTRY:
        return len(SCP_NODE_ROOMS) + 1
    room = module.split(".")[1]
    if room not in SCP_NODE_ROOMS:
        raise ValueError(f"{module} is in no room of scp_node ({', '.join(SCP_NODE_ROOMS)})")
    return 1 + SCP_NODE_ROOMS.index(room)


def _upward_imports(graph: dict[str, dict[str, int]]) -> list[str]:
    """Every import in `graph` from a module of scp_node to one in a higher room."""
    return [
        f"{module} imports {target} (line {line})"
        for module, targets in sorted(graph.items())
        if _top(module) == "scp_node"
        for target, line in sorted(targets.items())
        if _top(target) == "scp_node" and _rank(target) > _rank(module)
    ]


def test_every_scp_node_module_has_a_room() -> None:
    homeless = []
    for module in MODULES:
        if _top(module) == "scp_node":
            try:
                _rank(module)
            except ValueError as exc:
                homeless.append(str(exc))
    assert not homeless, "\n".join(homeless)


def test_scp_node_rooms_import_only_downward() -> None:
    wrong = _upward_imports(GRAPH)
    assert not wrong, "scp_node imports up its rooms:\n" + "\n".join(wrong)


def test_an_upward_import_is_found() -> None:
    planted = {
        "scp_node.receive.receiver": {"scp_node.pipeline.worker": 7, "scp_node.dicom.tls": 8},
        "scp_node.config": {"scp_node.dicom.status": 3},
        "scp_node.app.cli": {"scp_node.receive.receiver": 9},
    }
    assert _upward_imports(planted) == [
        "scp_node.config imports scp_node.dicom.status (line 3)",
        "scp_node.receive.receiver imports scp_node.pipeline.worker (line 7)",
    ]

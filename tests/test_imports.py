"""No import cycles, and the layers import downwards only (issue 14 §2).

AST-based over collector/, drivers/, protocols/, simulators/: every import counts,
``if TYPE_CHECKING:`` ones and those inside functions included (a cycle hidden behind
either is still two modules that need each other).
"""

from __future__ import annotations

import ast
import functools
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("collector", "drivers", "protocols", "simulators")

# Cycles (as sorted member tuples) still to go; each names who removes it.  An entry that
# is no longer found fails the test: delete it.
ALLOWED_CYCLES: frozenset[tuple[str, ...]] = frozenset()


def _module_name(path: Path) -> tuple[str, str]:
    """(module, the package its relative imports start from) of a source file."""
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
        return ".".join(parts), ".".join(parts)
    return ".".join(parts), ".".join(parts[:-1])


def _resolve(node: ast.ImportFrom, package: str) -> str:
    if not node.level:
        return node.module or ""
    base = package.split(".")[: len(package.split(".")) - (node.level - 1)]
    return ".".join(base + ([node.module] if node.module else []))


def import_graph(sources: dict[str, tuple[str, str]]) -> dict[str, set[str]]:
    """module -> the modules of ``sources`` it imports; ``sources`` maps a module to
    (its package, its source text).  ``from pkg import sub`` counts as importing the
    submodule ``pkg.sub`` when there is one, else the package."""
    graph: dict[str, set[str]] = {m: set() for m in sources}
    for module, (package, text) in sources.items():
        for node in ast.walk(ast.parse(text, module)):
            targets: list[str] = []
            if isinstance(node, ast.Import):
                targets = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom):
                base = _resolve(node, package)
                targets = [f"{base}.{a.name}" if f"{base}.{a.name}" in sources else base
                           for a in node.names]
            for target in targets:
                # ``import a.b.c`` of a name that is not a module: its nearest module.
                while target and target not in sources:
                    target = target.rpartition(".")[0]
                if target and target != module:
                    graph[module].add(target)
    return graph


def cycles(graph: dict[str, set[str]]) -> list[tuple[str, ...]]:
    """The strongly connected components of more than one module (Tarjan), each sorted."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    out: list[tuple[str, ...]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in sorted(graph[v]):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                out.append(tuple(sorted(component)))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return sorted(out)


def a_cycle(graph: dict[str, set[str]], members: tuple[str, ...]) -> list[str]:
    """One closed path through ``members`` (for the failure message): a -> b -> ... -> a."""
    inside = set(members)
    start = members[0]
    # Breadth-first from start's successors back to start, inside the component.
    paths = {w: [start, w] for w in sorted(graph[start] & inside)}
    queue = list(paths)
    while queue:
        v = queue.pop(0)
        if v == start:
            return paths[v]
        for w in sorted(graph[v] & inside):
            if w not in paths:
                paths[w] = [*paths[v], w]
                queue.append(w)
    return [*members, start]


@functools.cache
def _graph() -> dict[str, set[str]]:
    sources: dict[str, tuple[str, str]] = {}
    for top in PACKAGES:
        for path in sorted((ROOT / top).rglob("*.py")):
            module, package = _module_name(path)
            sources[module] = (package, path.read_text())
    return import_graph(sources)


def test_no_import_cycles() -> None:
    graph = _graph()
    found = cycles(graph)
    new = [c for c in found if c not in ALLOWED_CYCLES]
    assert new == [], "import cycles:\n" + "\n".join(
        f"{len(c)} modules {', '.join(c)}; e.g. {' -> '.join(a_cycle(graph, c))}"
        for c in new)
    stale = sorted(ALLOWED_CYCLES - set(found))
    assert stale == [], f"gone, remove from ALLOWED_CYCLES: {stale}"


def _imports_of(prefix: str) -> dict[str, set[str]]:
    return {m: targets for m, targets in _graph().items()
            if m == prefix or m.startswith(prefix + ".")}


def _all_imports(prefix: str) -> dict[str, set[str]]:
    """Every absolute top-level name the modules under ``prefix`` import (stdlib too)."""
    out: dict[str, set[str]] = {}
    for path in sorted((ROOT / prefix).rglob("*.py")):
        module, _ = _module_name(path)
        names: set[str] = set()
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.Import):
                names |= {a.name.split(".")[0] for a in node.names}
            elif isinstance(node, ast.ImportFrom) and not node.level and node.module:
                names.add(node.module.split(".")[0])
        out[module] = names
    return out


def test_simulators_never_import_the_collector() -> None:
    bad = {m: sorted(t for t in ts if t.startswith("collector"))
           for m, ts in _imports_of("simulators").items()}
    assert {m: ts for m, ts in bad.items() if ts} == {}


def test_protocols_import_no_drivers_collector_or_asyncio() -> None:
    """The codecs are sans-I/O: no transport, no daemon, no event loop."""
    bad = {m: sorted(names & {"drivers", "collector", "asyncio"})
           for m, names in _all_imports("protocols").items()}
    assert {m: ts for m, ts in bad.items() if ts} == {}


def test_the_checker_finds_a_cycle_behind_type_checking() -> None:
    """The scan sees TYPE_CHECKING and function-local imports (so the tests above cannot
    pass empty)."""
    sources = {
        "pkg": ("pkg", ""),
        "pkg.a": ("pkg", "from typing import TYPE_CHECKING\n"
                         "if TYPE_CHECKING:\n    from .b import B\n"),
        "pkg.b": ("pkg", "def f():\n    from pkg import c\n"),
        "pkg.c": ("pkg", "from . import a\n"),
        "pkg.d": ("pkg", "import pkg.a\n"),
    }
    graph = import_graph(sources)
    assert graph["pkg.c"] == {"pkg.a"} and graph["pkg.d"] == {"pkg.a"}
    assert cycles(graph) == [("pkg.a", "pkg.b", "pkg.c")]
    assert a_cycle(graph, ("pkg.a", "pkg.b", "pkg.c")) == ["pkg.a", "pkg.b", "pkg.c",
                                                             "pkg.a"]
    assert _all_imports("protocols")  # the real tree is scanned
    assert any(_imports_of("collector").values())


def package_graph(graph: dict[str, set[str]], top: str) -> dict[str, set[str]]:
    """The sub-packages of ``top`` (``collector.store``, ...) and which import which."""
    def pkg(m: str) -> str | None:
        parts = m.split(".")
        return ".".join(parts[:2]) if parts[0] == top and len(parts) > 1 else None
    out: dict[str, set[str]] = {}
    for m, targets in graph.items():
        p = pkg(m)
        if p is None:
            continue
        out.setdefault(p, set())
        for t in targets:
            q = pkg(t)
            if q is not None and q != p:
                out[p].add(q)
    return out


def test_the_collector_is_sub_packages_that_import_each_other_without_cycles() -> None:
    """collector/ holds sub-packages only (README "Layout"), and they form layers: no
    package imports one that imports it back."""
    flat = sorted(p.name for p in (ROOT / "collector").glob("*.py") if p.name != "__init__.py")
    assert flat == [], f"modules outside a sub-package: {flat}"
    graph = package_graph(_graph(), "collector")
    assert {"collector.config", "collector.store", "collector.polling", "collector.commands",
            "collector.daily", "collector.forward", "collector.api", "collector.service",
            "collector.cli"} <= set(graph)
    found = cycles(graph)
    assert found == [], "package cycles:\n" + "\n".join(
        " -> ".join(a_cycle(graph, c)) for c in found)
    # the layers README "Layout" names, bottom first: each imports only layers below it
    layers = [{"config"}, {"store"}, {"polling", "forward"}, {"commands", "daily", "notify"},
              {"api"}, {"service"}, {"cli"}]
    rank = {f"collector.{p}": i for i, layer in enumerate(layers) for p in layer}
    upward = sorted(f"{p} imports {q}" for p, qs in graph.items() for q in qs
                    if rank[q] >= rank[p])
    assert upward == []


def test_the_package_check_sees_a_cycle() -> None:
    graph = package_graph({"c.a.x": {"c.b.y"}, "c.b.y": {"c.a.z"}, "c.a.z": set(),
                           "c.d.w": {"c.a.x"}}, "c")
    assert graph == {"c.a": {"c.b"}, "c.b": {"c.a"}, "c.d": {"c.a"}}
    assert cycles(graph) == [("c.a", "c.b")]

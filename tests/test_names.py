"""One name per concept, and no private names used across modules (issue 14 §2).

AST-based, over the packages (not the tests, which may poke at internals).
"""

from __future__ import annotations

import ast
import datetime as dt
import functools
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import pytest

from collector.store.records import assume_utc, require_aware

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("collector", "drivers", "protocols", "simulators")

# (using module, private name) still to go; each names who removes it.  An entry that is
# no longer needed fails the test: delete it.
ALLOWED: frozenset[tuple[str, str]] = frozenset()


def _private(name: str) -> bool:
    return name.startswith("_") and not name.startswith("__")


def _modules() -> Iterator[tuple[str, str, ast.Module]]:
    """(module, its package, tree) of every source file of the packages."""
    for top in PACKAGES:
        for path in sorted((ROOT / top).rglob("*.py")):
            parts = list(path.relative_to(ROOT).with_suffix("").parts)
            if parts[-1] == "__init__":
                parts.pop()
                package = ".".join(parts)
            else:
                package = ".".join(parts[:-1])
            yield ".".join(parts), package, ast.parse(path.read_text(), str(path))


def _imported(node: ast.ImportFrom, package: str) -> str:
    if not node.level:
        return node.module or ""
    base = package.split(".")[: len(package.split(".")) - (node.level - 1)]
    return ".".join(base + ([node.module] if node.module else []))


def _own_names(tree: ast.Module) -> set[str]:
    """Names a module defines itself (functions, classes, attributes it assigns)."""
    own: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef):
            own.add(node.name)
        elif isinstance(node, ast.Attribute) and isinstance(node.ctx, ast.Store):
            own.add(node.attr)
        elif isinstance(node, ast.Name) and isinstance(node.ctx, ast.Store):
            own.add(node.id)
    return own


@functools.cache
def _violations() -> tuple[list[str], Counter[tuple[str, str]]]:
    """(private modules imported from outside their package, uses of another module's
    private names by (module, name))."""
    modules: list[str] = []
    names: Counter[tuple[str, str]] = Counter()
    for module, package, tree in _modules():
        own = _own_names(tree)
        for node in ast.walk(tree):
            targets: list[str] = []
            if isinstance(node, ast.ImportFrom):
                target = _imported(node, package)
                targets.append(target)
                names.update((module, a.name) for a in node.names if _private(a.name))
            elif isinstance(node, ast.Import):
                targets += [a.name for a in node.names]
            elif (isinstance(node, ast.Attribute) and _private(node.attr)
                  and node.attr not in own
                  and not (isinstance(node.value, ast.Name)
                           and node.value.id in ("self", "cls"))):
                names[module, node.attr] += 1
            for target in targets:
                parts = target.split(".")
                for i, part in enumerate(parts):
                    owner = ".".join(parts[:i])
                    if _private(part) and module != owner \
                            and not module.startswith(owner + "."):
                        modules.append(f"{module} imports {target}")
    return modules, names


def test_no_private_module_imported_from_another_package() -> None:
    """``from protocols.dlt645._catalogue import ...`` outside protocols.dlt645: use the
    package's public names."""
    modules, _ = _violations()
    assert modules == []


def test_no_private_name_used_across_modules() -> None:
    _, names = _violations()
    assert sorted(set(names) - ALLOWED) == []
    stale = sorted(ALLOWED - set(names))
    assert stale == [], f"fixed, remove from ALLOWED: {stale}"


def test_the_checker_sees_both_kinds() -> None:
    """The scan finds what it is meant to find (so the tests above cannot pass empty)."""
    tree = ast.parse("from protocols.dlt645._frame import START\n"
                     "from .config import _Loader\nx = other._secret\n")
    own = _own_names(tree)
    found = [n for n in ast.walk(tree)
             if (isinstance(n, ast.ImportFrom) and "._" in _imported(n, "collector"))
             or (isinstance(n, ast.ImportFrom) and any(_private(a.name) for a in n.names))
             or (isinstance(n, ast.Attribute) and _private(n.attr) and n.attr not in own)]
    assert len(found) == 3


ONE_DEFINITION = ("parse_listen", "parse_broker_url", "expand_quantities", "assume_utc",
                  "require_aware", "escape_tag", "escape_measurement")


def test_one_definition_per_concept() -> None:
    """Each of these is defined once in the packages; the helpers they replaced (the
    ``_aware`` functions, ``reports._escape_tag``) are gone."""
    defined: Counter[str] = Counter()
    for _, _, tree in _modules():
        defined.update(n.name for n in tree.body
                       if isinstance(n, ast.FunctionDef | ast.AsyncFunctionDef))
    assert {name: defined[name] for name in ONE_DEFINITION} == \
        dict.fromkeys(ONE_DEFINITION, 1)
    assert defined["_aware"] == 0 and defined["_escape_tag"] == 0


def test_assume_utc_and_require_aware() -> None:
    naive = dt.datetime(2026, 1, 2, 3, 4, 5)
    shanghai = dt.datetime(2026, 1, 2, 3, 4, 5, tzinfo=dt.timezone(dt.timedelta(hours=8)))
    assert assume_utc(naive) == naive.replace(tzinfo=dt.UTC)
    assert assume_utc(shanghai) is shanghai  # aware: unchanged, not converted
    assert require_aware(shanghai) is shanghai
    with pytest.raises(ValueError, match="expected an aware datetime, got naive "
                                         "2026-01-02T03:04:05"):
        require_aware(naive)

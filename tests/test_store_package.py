"""The store is a package of one-job modules (issue 14 §2), and every name the rest of
the code imports from ``collector.store`` is still there."""

from __future__ import annotations

import ast
import importlib
from pathlib import Path

import collector.store

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "collector" / "store"

# Where each job lives: a name of each module's job, defined there.
JOBS = {
    "schema": ("MIGRATIONS", "SCHEMA_VERSION", "INSERT_READING", "split_sql"),
    "rows": ("reading_rows", "cycle_row", "StoredReading", "Cursor"),
    "store": ("Store", "StoreError"),
    "retention": ("purge_steps", "purge_shipped", "has_shipped"),
    "writer": ("StoreWriter", "CommitInfo", "WriterStats", "is_full"),
}


def _names_imported_from_the_store() -> set[str]:
    """Names of ``from collector.store import ...`` / ``from .store import ...`` (in
    collector/) anywhere in the code, tests and benchmarks."""
    names: set[str] = set()
    for top in ("collector", "drivers", "protocols", "simulators", "tests"):
        for path in (ROOT / top).rglob("*.py"):
            if PACKAGE in path.parents:
                continue
            in_collector = path.parent == ROOT / "collector"
            for node in ast.walk(ast.parse(path.read_text(), str(path))):
                if not isinstance(node, ast.ImportFrom):
                    continue
                if (node.level == 0 and node.module == "collector.store") or (
                        in_collector and node.level == 1 and node.module == "store"):
                    names.update(a.name for a in node.names)
    return names


def test_the_store_is_a_package_of_one_job_modules() -> None:
    assert hasattr(collector.store, "__path__"), "collector.store is still one module"
    for module, names in JOBS.items():
        mod = importlib.import_module(f"collector.store.{module}")
        for name in names:
            assert name in vars(mod), f"{name} is not in collector.store.{module}"
            # the package re-exports the very object, not a copy
            assert getattr(collector.store, name) is getattr(mod, name)
    for cls in (collector.store.Store, collector.store.StoreWriter):
        assert cls.__module__.startswith("collector.store."), cls


def test_no_module_of_the_store_is_a_grab_bag() -> None:
    """The 1.7k-line module is gone: no module of the package over 900 lines."""
    sizes = {p.name: len(p.read_text().splitlines()) for p in PACKAGE.glob("*.py")}
    assert {"schema.py", "rows.py", "store.py", "retention.py", "writer.py"} <= set(sizes)
    assert {name: n for name, n in sizes.items() if n > 900} == {}


def test_every_name_imported_from_the_store_is_exported() -> None:
    imported = _names_imported_from_the_store()
    assert {"Store", "StoreWriter", "DB_NAME", "split_sql"} <= imported  # the scan works
    exported = set(collector.store.__all__)
    assert sorted(imported - exported) == []
    for name in exported:
        assert getattr(collector.store, name) is not None, name

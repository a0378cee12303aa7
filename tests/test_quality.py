"""Project checks: ruff clean everywhere, mypy --strict clean for every package."""

from __future__ import annotations

import subprocess
import sys
import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent


def test_ruff_clean() -> None:
    r = subprocess.run([str(BIN / "ruff"), "check", "."], cwd=ROOT, capture_output=True,
                       text=True)
    assert r.returncode == 0, r.stdout + r.stderr


def test_mypy_strict_every_package(tmp_path: Path) -> None:
    # What CI checks is pyproject's [tool.mypy]: strict, over every package.
    conf = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["mypy"]
    assert conf.get("strict") is True
    packages = {p.parent.name for p in ROOT.glob("*/__init__.py")} - {"config"}  # data
    assert packages <= set(conf["files"]), f"not type-checked: {packages - set(conf['files'])}"
    r = subprocess.run([str(BIN / "mypy"), "--cache-dir", str(tmp_path)], cwd=ROOT,
                       capture_output=True, text=True)
    assert r.returncode == 0, r.stdout + r.stderr


def test_protocols_do_no_io() -> None:
    # Sans-I/O: no sockets, serial ports, asyncio or file access inside protocols/.
    forbidden = ("import asyncio", "import socket", "import serial", "open(", "import os")
    for path in (ROOT / "protocols").rglob("*.py"):
        text = path.read_text()
        for word in forbidden:
            assert word not in text, f"{path.relative_to(ROOT)} uses {word!r}"


def test_simulators_do_not_use_the_collector() -> None:
    for path in (ROOT / "simulators").rglob("*.py"):
        text = path.read_text()
        assert "from collector" not in text and "import collector" not in text, path

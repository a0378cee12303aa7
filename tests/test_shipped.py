"""The shipped data (config/, installed as amic_config) and ``amic config example``."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
from click.testing import CliRunner

from collector.cli import main
from collector.config.profiles import SHIPPED_DIR
from collector.config.shipped import EXAMPLES, shipped_dir

ROOT = Path(__file__).resolve().parents[1]


def test_shipped_data_is_the_repository_config_folder() -> None:
    # One copy: the editable install maps amic_config onto config/ itself.
    assert shipped_dir().resolve() == (ROOT / "config").resolve()
    assert SHIPPED_DIR.resolve() == (ROOT / "config" / "profiles").resolve()


def test_a_source_tree_without_amic_config_installed_uses_config(
        monkeypatch: pytest.MonkeyPatch) -> None:
    # An editable install made before amic_config existed, or PYTHONPATH=. alone.
    monkeypatch.setitem(sys.modules, "amic_config", None)  # import raises
    assert shipped_dir() == ROOT / "config"


def test_config_example_writes_a_config_that_checks(tmp_path: Path) -> None:
    r = CliRunner().invoke(main, ["config", "example", str(tmp_path / "site")])
    assert r.exit_code == 0, r.output
    assert r.output.split() == [str(tmp_path / "site" / n) for n in EXAMPLES]
    r = CliRunner().invoke(main, ["config", "check", str(tmp_path / "site" / "amic.example.toml")])
    assert r.exit_code == 0, r.output
    assert ": OK: 2 buses, 12 meters" in r.output


def test_config_example_refuses_to_overwrite_and_writes_nothing(tmp_path: Path) -> None:
    (tmp_path / "ledger.example.csv").write_text("mine\n")
    r = CliRunner().invoke(main, ["config", "example", str(tmp_path)])
    assert r.exit_code == 1
    assert f"{tmp_path / 'ledger.example.csv'}: already exists (--force replaces it)" in r.output
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ledger.example.csv"]
    assert (tmp_path / "ledger.example.csv").read_text() == "mine\n"
    r = CliRunner().invoke(main, ["config", "example", "--force", str(tmp_path)])
    assert r.exit_code == 0, r.output
    assert (tmp_path / "ledger.example.csv").read_bytes() == \
        (ROOT / "config" / "ledger.example.csv").read_bytes()

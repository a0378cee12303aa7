"""``amic demo`` (README's first command): the daemon polls built-in simulators."""

from __future__ import annotations

import re
import sqlite3
from pathlib import Path

from click.testing import CliRunner

from collector.cli import main


def test_demo_runs_a_cycle_and_commits_every_reading(tmp_path: Path) -> None:
    data = tmp_path / "store"
    result = CliRunner().invoke(main, ["demo", "--buses", "2", "--meters", "12", "--baud",
                                       "19200", "--data-dir", str(data)])
    assert result.exit_code == 0, result.output
    out = result.output
    # Per bus: one dead, one garbling and one wrong-address meter are not collected.
    assert "cycle: 18/24 meters read (75.0%)" in out
    areas = re.findall(r"^(TQ-\d+)\s+(\d+)\s+(\d+)\s+([\d.]+)%\s+(\d+)$", out, re.M)
    assert [a[0] for a in areas] == ["TQ-011", "TQ-012", "TQ-021", "TQ-022"]
    assert sum(int(a[2]) for a in areas) == 18
    stored = sum(int(a[4]) for a in areas)
    assert stored == 18 * 8  # 8 quantities a meter
    assert "store integrity: ok" in out and "slowest bus conc-" in out
    with sqlite3.connect(data / "amic.db") as c:
        assert c.execute("SELECT count(*) FROM readings").fetchone()[0] == stored
        wrong = c.execute("SELECT count(*) FROM readings WHERE meter IN ('M01011', 'M02011')")
        assert wrong.fetchone()[0] == 0  # nothing stored from a wrong-address reply


def test_a_second_demo_run_reports_only_its_own_readings(tmp_path: Path) -> None:
    data = tmp_path / "store"
    args = ["demo", "--buses", "1", "--meters", "4", "--baud", "19200", "--data-dir",
            str(data)]
    first = CliRunner().invoke(main, args)
    assert first.exit_code == 0, first.output
    with sqlite3.connect(data / "amic.db") as c:
        before = c.execute("SELECT max(id) FROM readings").fetchone()[0]
    second = CliRunner().invoke(main, args)
    assert second.exit_code == 0, second.output
    with sqlite3.connect(data / "amic.db") as c:
        this_run = c.execute("SELECT count(*) FROM readings WHERE id > ?",
                             (before,)).fetchone()[0]
        total = c.execute("SELECT count(*) FROM readings").fetchone()[0]
    assert this_run == 4 * 8 and total == 2 * this_run
    areas = re.findall(r"^(TQ-\d+)\s+(\d+)\s+(\d+)\s+([\d.]+)%\s+(\d+)$", second.output,
                       re.M)
    assert sum(int(a[4]) for a in areas) == this_run
    assert f"{this_run} readings stored and committed" in second.output

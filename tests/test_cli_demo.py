"""``amic demo`` (README's first command): the daemon polls built-in simulators: RS-485
lines behind serial servers, and one transformer area behind a Q/GDW 1376.1 concentrator
that dials in."""

from __future__ import annotations

import re
import sqlite3
from pathlib import Path

from click.testing import CliRunner

from collector.cli import main
from protocols.quantities import QUANTITIES

AREAS = re.compile(r"^(TQ-\d+)\s+(\d+)\s+(\d+)\s+([\d.]+)%\s+(\d+)$", re.M)
CONCENTRATOR = re.compile(r"^tq-3761\s+4403/1\s+(\d+)\s+([\d.]+)%\s+(\d+)\s+(\d+)\s+(\d+)"
                          r"\s+(\d+)$", re.M)
LOSS = re.compile(r"^line loss of TQ-3761 on (\S+) from its daily freezes: supplied "
                  r"([\d.]+) kWh, sold ([\d.]+) kWh, loss (-?[\d.]+) kWh \((-?[\d.]+)%\)$",
                  re.M)
BACKFILLED = 2  # quality flag


def test_demo_runs_a_cycle_and_commits_every_reading(tmp_path: Path) -> None:
    data = tmp_path / "store"
    result = CliRunner().invoke(main, ["demo", "--buses", "2", "--meters", "12", "--baud",
                                       "19200", "--data-dir", str(data)])
    assert result.exit_code == 0, result.output
    out = result.output
    # Per bus: one dead, one garbling and one wrong-address meter are not collected; the
    # six meters behind the concentrator are.
    assert "cycle: 18/24 meters read (75.0%), 6/6 behind concentrator tq-3761, " in out
    areas = AREAS.findall(out)
    assert [a[0] for a in areas] == ["TQ-011", "TQ-012", "TQ-021", "TQ-022", "TQ-3761"]
    assert sum(int(a[2]) for a in areas[:4]) == 18
    assert sum(int(a[4]) for a in areas[:4]) == 18 * 8  # 8 quantities a meter
    assert areas[4][1:4] == ("6", "6", "100.0")
    assert "store integrity: ok" in out and "slowest bus conc-" in out
    with sqlite3.connect(data / "amic.db") as c:
        assert c.execute("SELECT count(*) FROM readings").fetchone()[0] == \
            sum(int(a[4]) for a in areas)
        wrong = c.execute("SELECT count(*) FROM readings WHERE meter IN ('M01011', 'M02011')")
        assert wrong.fetchone()[0] == 0  # nothing stored from a wrong-address reply
        # the area's meters: read through 376.1, stored as a direct meter's readings
        live = c.execute("SELECT meter, quantity, unit FROM readings WHERE meter LIKE 'Q%' "
                         "AND quality = 0").fetchall()
        frozen = c.execute("SELECT count(*), count(DISTINCT meter) FROM readings "
                           "WHERE meter LIKE 'Q%' AND quality & ?", (BACKFILLED,)).fetchone()
    assert len(live) == 6 * 8 and {m for m, _, _ in live} == {f"Q{i:03d}" for i in range(1, 7)}
    assert all(unit == QUANTITIES[q].unit for _, q, unit in live)
    assert frozen[1] == 6 and int(areas[4][4]) == 6 * 8 + frozen[0]

    (row,) = CONCENTRATOR.findall(out)
    meters, success, afn0c, afn0d, afn10, logins = row
    assert (meters, success, logins) == ("6", "100.0", "1")
    # one class-1 request a meter (F129 + F25), then the freezes by date (AFN0D F161)
    assert int(afn0c) >= 6 and int(afn0d) >= 6 and afn10 == "0"
    (loss,) = LOSS.findall(out)
    supplied, sold, lost, pct = (float(x) for x in loss[1:])
    assert abs(supplied - sold - lost) < 0.015
    assert pct == 6.0  # the simulated master supplies the customers and 6 % more


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
    # 4 meters on the line and 6 behind the concentrator, 8 quantities each; the daily
    # freezes were backfilled by the first run, none is read again
    assert this_run == (4 + 6) * 8
    areas = AREAS.findall(second.output)
    assert sum(int(a[4]) for a in areas) == this_run
    assert f"{this_run} readings stored and committed" in second.output
    assert "0 days backfilled" in second.output
    assert LOSS.findall(second.output) == LOSS.findall(first.output)


def test_the_demo_without_a_concentrator(tmp_path: Path) -> None:
    result = CliRunner().invoke(main, ["demo", "--buses", "1", "--meters", "4", "--baud",
                                       "19200", "--area-meters", "0", "--data-dir",
                                       str(tmp_path / "store")])
    assert result.exit_code == 0, result.output
    assert "cycle: 4/4 meters read (100.0%), 32 readings" in result.output
    assert "tq-3761" not in result.output and "TQ-3761" not in result.output
    bad = CliRunner().invoke(main, ["demo", "--area-meters", "1"])
    assert bad.exit_code == 2 and "--area-meters" in bad.output

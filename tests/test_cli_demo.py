"""``amic demo`` (README's first command) reads the built-in simulators end to end."""

from __future__ import annotations

import re

from click.testing import CliRunner

from collector.cli import main


def test_demo_reads_meters_and_reports_the_faulty_ones() -> None:
    result = CliRunner().invoke(main, ["demo", "--buses", "2", "--meters", "4", "--baud", "9600"])
    assert result.exit_code == 0, result.output
    rows = [line for line in result.output.splitlines() if re.match(r"^0[12]\d{10}  bus", line)]
    # Per bus: meter 4 is dead, meter 3 answers with a wrong address (never stored).
    assert len(rows) == 4
    for row in rows:
        kwh, volts = row.split()[2:4]
        assert float(kwh) > 0 and 190 < float(volts) < 250
    assert "meters read: 4/8 (50%)" in result.output
    assert "has address 010000000004, expected 010000000003" in result.output
    assert "010000000004: no reply" in result.output

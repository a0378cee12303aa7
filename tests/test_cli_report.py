"""``amic report lineloss|success``, ``amic export``, ``amic ledger check`` on a small store."""

from __future__ import annotations

import csv
import datetime as dt
import io
import json
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import pytest
from click.testing import CliRunner, Result

from collector.cli import main
from collector.cli.report import missing_text, parse_day
from collector.config.settings import MeterSettings, Role
from collector.daily.reports import BILLING_HEADER
from collector.store import DB_NAME, INSERT_CYCLE, Store, cycle_row
from collector.store.records import CycleRecord, Quality, Reading

SH = ZoneInfo("Asia/Shanghai")
DAY = dt.date(2026, 3, 1)
NEXT = dt.date(2026, 3, 2)
FROZEN = "freeze_daily_energy_active_forward_total"


def local(day: dt.date, hour: int = 0, minute: int = 0) -> dt.datetime:
    return dt.datetime(day.year, day.month, day.day, hour, minute, tzinfo=SH)


def meter(mid: str, area: str, bus: str = "conc-1", role: Role = "customer") -> MeterSettings:
    n = 100 * ord(mid[0]) + int(mid[-2:])  # A-M01 -> 6501
    return MeterSettings(meter_id=mid, address=f"{n:012d}", bus=bus, area=area, role=role)


METERS = [
    meter("A-M00", "TQ-A", role="area_master"),
    meter("A-M01", "TQ-A"), meter("A-M02", "TQ-A"), meter("A-M03", "TQ-A"),
    meter("B-M00", "TQ-B", role="area_master"),
    meter("B-M01", "TQ-B"), meter("B-M02", "TQ-B"),
]

CONFIG = """\
[collector]
id = "report-gw"
data_dir = "data"

[[bus]]
name = "conc-1"
type = "tcp"
host = "127.0.0.1"
port = 10001

[[bus]]
name = "rs485-1"
type = "tcp"
host = "127.0.0.1"
port = 10002
{meters}
[schedule.daily]
interval = "1d"
quantities = ["freeze_daily_energy_active_forward_total"]
"""


def write_config(tmp: Path, ledger: str | None = None) -> Path:
    if ledger is None:
        meters = "".join(f'\n[[meter]]\nmeter_id = "{m.meter_id}"\naddress = "{m.address}"\n'
                         f'bus = "{m.bus}"\narea = "{m.area}"\nrole = "{m.role}"\n'
                         for m in METERS)
    else:
        meters = f'\n[meters]\nledger = "{ledger}"\n'
    cfg = tmp / "amic.toml"
    cfg.write_text(CONFIG.format(meters=meters), encoding="utf-8")
    return cfg


def frozen(mid: str, value: float, at: dt.datetime) -> Reading:
    return Reading(mid, FROZEN, value, "kWh", at.astimezone(dt.UTC), None, Quality.GOOD)


def cycle(name: str, started: dt.datetime, failed: list[str]) -> CycleRecord:
    per_bus: dict[str, tuple[int, int]] = {}
    per_area: dict[str, tuple[int, int]] = {}
    for m in METERS:
        ok = m.meter_id not in failed
        for table, key in ((per_bus, m.bus), (per_area, m.area or "-")):
            good, total = table.get(key, (0, 0))
            table[key] = (good + ok, total + 1)
    n_ok = sum(m.meter_id not in failed for m in METERS)
    start = started.astimezone(dt.UTC)
    return CycleRecord(name, "fifteen_min", start, start + dt.timedelta(minutes=1),
                       len(METERS), n_ok, len(METERS) - n_ok, per_bus, per_area, failed)


@pytest.fixture(scope="module")
def cfg(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A configuration whose store has DAY's frozen values and cycles (built once)."""
    tmp = tmp_path_factory.mktemp("report")
    path = write_config(tmp)
    (tmp / "data").mkdir()
    with Store(tmp / "data" / DB_NAME) as s:
        s.sync_meters(METERS)
        values = {"A-M00": (1000.0, 1100.0),  # supplied 100
                  "A-M01": (200.0, 230.0), "A-M02": (300.0, 340.0),
                  "A-M03": (50.5, 72.5),  # sold 30 + 40 + 22 = 92: loss 8 kWh, 8 %
                  "B-M00": (10.0, 60.0), "B-M01": (1.0, 21.0),
                  "B-M02": (5.0, None)}  # B-M02 not read on NEXT: TQ-B incomplete
        rows = []
        for mid, (opening, closing) in values.items():
            rows.append(frozen(mid, opening, local(DAY, 0, 15)))
            if closing is not None:
                rows.append(frozen(mid, closing, local(NEXT, 0, 15)))
        s.write_readings(rows)
        conn = s.connect()
        try:
            conn.executemany(INSERT_CYCLE, [
                cycle_row(cycle("c1", local(DAY, 8), ["A-M03", "B-M02"])),
                cycle_row(cycle("c2", local(DAY, 12), ["B-M02"]))])
        finally:
            s.release(conn)
    return path


def amic(*args: str) -> Result:
    return CliRunner().invoke(main, list(args))


def as_json(r: Result) -> list[Any]:
    """--json prints JSON Lines."""
    return [json.loads(line) for line in r.stdout.splitlines()]


# ---- report lineloss -------------------------------------------------------------------

def test_lineloss_table_and_incomplete_area(cfg: Path) -> None:
    r = amic("report", "lineloss", "--config", str(cfg), "--day", "2026-03-01")
    assert r.exit_code == 3, r.output  # TQ-B is incomplete
    lines = r.stdout.splitlines()
    assert lines[0] == "line loss 2026-03-01 (Asia/Shanghai)"
    header = lines[1].split()
    assert header[:6] == ["AREA", "MASTER", "SUPPLIED_KWH", "SOLD_KWH", "LOSS_KWH", "LOSS_%"]
    a = next(line.split() for line in lines if line.startswith("TQ-A "))
    assert a == ["TQ-A", "A-M00", "100.00", "92.00", "8.00", "8.00", "complete", "-",
                 "frozen"]
    b = next(line for line in lines if line.startswith("TQ-B "))
    assert b.split()[:7] == ["TQ-B", "B-M00", "50.00", "-", "-", "-", "incomplete"]
    assert "1: B-M02" in b
    assert any(line.startswith("TQ-B: incomplete:") and "B-M02" in line for line in lines)
    assert lines[-1] == "1 of 2 area(s) complete"


def test_lineloss_json(cfg: Path) -> None:
    r = amic("report", "lineloss", "-c", str(cfg), "--day", "2026-03-01", "--json")
    assert r.exit_code == 3, r.output
    doc = as_json(r)
    assert {x["day"] for x in doc} == {"2026-03-01"}
    areas = {x["area"]: x for x in doc}
    assert (areas["TQ-A"]["loss_kwh"], areas["TQ-A"]["loss_pct"]) == (8.0, 8.0)
    assert areas["TQ-A"]["complete"] is True
    assert areas["TQ-B"]["missing"] == ["B-M02"] and areas["TQ-B"]["loss_kwh"] is None


def test_lineloss_in_utc_and_default_day(cfg: Path) -> None:
    # In UTC the readings at 00:15 Shanghai fall on the day before: nothing closes DAY.
    r = amic("report", "lineloss", "-c", str(cfg), "--day", "2026-03-01", "--tz", "UTC")
    assert r.exit_code == 3
    # The default is yesterday (nothing stored then): every area incomplete.
    before = dt.datetime.now(SH).date() - dt.timedelta(days=1)
    r = amic("report", "lineloss", "-c", str(cfg), "--json")
    after = dt.datetime.now(SH).date() - dt.timedelta(days=1)
    assert r.exit_code == 3
    assert as_json(r)[0]["day"] in {before.isoformat(), after.isoformat()}


def test_parse_day_and_missing_text() -> None:
    now = dt.datetime(2026, 3, 1, 16, 30, tzinfo=dt.UTC)  # 00:30 on 2 March in Shanghai
    assert parse_day(None, SH, now) == DAY
    assert parse_day(None, dt.UTC, now) == DAY - dt.timedelta(days=1)
    assert parse_day("2026-03-01", SH) == DAY
    with pytest.raises(ValueError, match="YYYY-MM-DD"):
        parse_day("01/03/2026", SH)
    assert missing_text([]) == "-"
    assert missing_text(["M1", "M2"]) == "2: M1, M2"
    assert missing_text([f"M{i}" for i in range(5)]) == "5: M0, M1, M2, ..."


def test_bad_arguments_exit_2(cfg: Path, tmp_path: Path) -> None:
    r = amic("report", "lineloss", "-c", str(cfg), "--day", "2026-13-01")
    assert r.exit_code == 2 and "--day" in r.stderr and "YYYY-MM-DD" in r.stderr
    r = amic("report", "lineloss", "-c", str(cfg), "--tz", "Mars/Olympus")
    assert r.exit_code == 2 and "Mars/Olympus" in r.stderr
    r = amic("report", "success", "-c", str(tmp_path / "nope.toml"))
    assert r.exit_code == 2 and "nope.toml" in r.stderr
    r = amic("report", "lineloss", "--day", "2026-03-01")
    assert r.exit_code == 2 and "--config" in r.output
    r = amic("report", "success", "-c", str(cfg), "--by", "feeder")
    assert r.exit_code == 2
    # A valid configuration whose store was never created.
    empty = write_config(tmp_path)
    r = amic("export", "-c", str(empty), "--day", "2026-03-01")
    assert r.exit_code == 2 and "no store" in r.stderr and "amic run" in r.stderr


# ---- report success --------------------------------------------------------------------

def test_success_per_area_and_bus(cfg: Path) -> None:
    r = amic("report", "success", "-c", str(cfg), "--day", "2026-03-01")
    assert r.exit_code == 0, r.output
    rows = {line.split()[0]: line.split() for line in r.stdout.splitlines()[2:]}
    # key, planned, succeeded, failed, %: A-M03 failed c1 but was read in c2.
    assert rows["TQ-A"][:5] == ["TQ-A", "4", "4", "0", "100.00"]
    assert rows["TQ-B"][:5] == ["TQ-B", "3", "2", "1", "66.67"]
    assert rows["total"][:5] == ["total", "7", "6", "1", "85.71"]
    assert r.stdout.splitlines()[1].split()[:5] == ["AREA", "PLANNED", "SUCCEEDED", "FAILED",
                                                    "SUCCESS_%"]

    r = amic("report", "success", "-c", str(cfg), "--day", "2026-03-01", "--by", "bus",
             "--json")
    assert r.exit_code == 0, r.output
    doc = as_json(r)
    assert {x["by"] for x in doc} == {"bus"}
    by_bus = {x["bus"]: x for x in doc}
    assert (by_bus["conc-1"]["planned"], by_bus["conc-1"]["succeeded"]) == (7, 6)
    assert by_bus[None]["total"] is True and by_bus[None]["pct"] == pytest.approx(85.71)
    assert (by_bus[None]["reads_ok"], by_bus[None]["reads_total"]) == (11, 14)


def test_success_without_cycles(cfg: Path) -> None:
    r = amic("report", "success", "-c", str(cfg), "--day", "2026-02-01")
    assert r.exit_code == 0
    assert "no collection cycles" in r.stderr
    assert r.stdout.splitlines()[-1].split()[:5] == ["total", "0", "0", "0", "-"]


# ---- export ----------------------------------------------------------------------------

def test_export_csv_to_stdout_and_file(cfg: Path, tmp_path: Path) -> None:
    r = amic("export", "-c", str(cfg), "--day", "2026-03-01", "--format", "csv")
    assert r.exit_code == 0, r.output
    table = list(csv.reader(io.StringIO(r.stdout)))
    assert table[0] == list(BILLING_HEADER)
    rows = {row[1]: dict(zip(table[0], row, strict=True)) for row in table[1:]}
    assert sorted(rows) == sorted(m.meter_id for m in METERS)
    assert rows["A-M03"]["usage_total_kwh"] == "22.00"
    assert rows["A-M03"]["opening_total_kwh"] == "50.50"
    assert rows["A-M03"]["area"] == "TQ-A"
    assert rows["B-M02"]["status"] == "missing" and rows["B-M02"]["usage_total_kwh"] == ""
    assert "7 meter(s) for 2026-03-01" in r.stderr and "1 missing" in r.stderr

    out = tmp_path / "bill.csv"
    r = amic("export", "-c", str(cfg), "--day", "2026-03-01", "--output", str(out))
    assert r.exit_code == 0, r.output
    assert r.stdout == ""
    raw = out.read_bytes()
    assert raw.startswith(b"\xef\xbb\xbf")  # BOM, for Excel
    assert raw.decode("utf-8-sig").splitlines() == r_lines(cfg)

    r = amic("export", "-c", str(cfg), "--format", "xlsx")
    assert r.exit_code == 2 and "xlsx" in r.output
    r = amic("export", "-c", str(cfg), "--day", "2026-03-01", "-o", str(tmp_path / "no" / "x"))
    assert r.exit_code == 2 and "cannot write" in r.stderr


def r_lines(cfg: Path) -> list[str]:
    return amic("export", "-c", str(cfg), "--day", "2026-03-01").stdout.splitlines()


# ---- ledger check ----------------------------------------------------------------------

LEDGER = """\
# meters of TQ-1
meter_id,address,bus,area,role
M1,202301150101,conc-1,TQ-1,area_master
M2,202301150102,conc-1,TQ-1,
M3,202301150102,conc-1,TQ-1,
M4,,conc-1,TQ-1,
M5,202301150105,conc-9,TQ-1,
M2,202301150106,rs485-1,TQ-1,
"""


def test_ledger_check_problems_with_line_numbers(tmp_path: Path) -> None:
    ledger = tmp_path / "meters.csv"
    ledger.write_text(LEDGER, encoding="utf-8")
    # The configuration names this very ledger: it fails to load, but only because of
    # the ledger, so its buses are still taken.
    cfg = write_config(tmp_path, ledger="meters.csv")
    r = amic("ledger", "check", str(ledger), "--config", str(cfg))
    assert r.exit_code == 1, r.output
    lines = r.stdout.splitlines()
    assert f"{ledger}:5: duplicate address: " in lines[0]
    assert "202301150102" in lines[0] and "M2 at line 4" in lines[0]
    assert any(line.startswith(f"{ledger}:6: missing field: address is empty")
               for line in lines)
    assert any(line.startswith(f"{ledger}:7: unknown bus: ") and "conc-9" in line
               for line in lines)
    assert any(line.startswith(f"{ledger}:8: duplicate meter id: ") for line in lines)
    assert lines[-1].startswith(f"{ledger}: 4 problems (1 duplicate address, "
                                "1 duplicate meter id, 1 missing field, 1 unknown bus)")

    r = amic("ledger", "check", str(ledger), "-c", str(cfg), "--json")
    assert r.exit_code == 1
    doc = as_json(r)
    assert len(doc) == 4 and {i["file"] for i in doc} == {str(ledger)}
    assert r.stderr.startswith(f"{ledger}: 4 problems")
    [dup] = [i for i in doc if i["kind"] == "duplicate_address"]
    assert (dup["line"], dup["lines"], dup["meter"]) == (5, [4, 5], "M3")


def test_ledger_check_clean_and_unusable(tmp_path: Path) -> None:
    cfg = write_config(tmp_path)
    ledger = tmp_path / "ok.csv"
    ledger.write_text("\ufeffmeter_id,address,bus\nM1,1,conc-1\nM2,2,rs485-1\n",
                      encoding="utf-8")
    r = amic("ledger", "check", str(ledger), "-c", str(cfg))
    assert r.exit_code == 0, r.output
    assert r.stdout.strip() == f"{ledger}: OK: 2 meters"

    gbk = tmp_path / "gbk.csv"
    gbk.write_bytes("meter_id,address,bus,customer\nM1,1,conc-1,张三\n".encode("gbk"))
    r = amic("ledger", "check", str(gbk), "-c", str(cfg))
    assert r.exit_code == 1
    assert f"{gbk}:2: invalid: not UTF-8" in r.stdout and "CSV UTF-8" in r.stdout

    r = amic("ledger", "check", str(tmp_path / "missing.csv"), "-c", str(cfg))
    assert r.exit_code == 2 and "missing.csv" in r.stderr
    broken = tmp_path / "broken.toml"
    broken.write_text("[collector]\nid = \n", encoding="utf-8")
    r = amic("ledger", "check", str(ledger), "-c", str(broken))
    assert r.exit_code == 2 and "broken.toml" in r.stderr

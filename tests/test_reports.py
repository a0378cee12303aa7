"""Daily reports: line loss, read success, billing export, ledger validation."""

from __future__ import annotations

import csv
import datetime as dt
import io
from collections.abc import Iterator
from pathlib import Path
from zoneinfo import ZoneInfo

import pytest

from collector.config.settings import MeterSettings, Role
from collector.daily import reports
from collector.daily.reports import (
    BILLING_HEADER,
    billing_export,
    day_bounds,
    line_loss,
    lineloss_line,
    local_date,
    success_report,
    validate_ledger,
    validate_ledger_file,
    write_csv,
)
from collector.store import DB_NAME, INSERT_CYCLE, Store, cycle_row
from collector.store.records import CycleRecord, Quality, Reading

ROOT = Path(__file__).resolve().parents[1]
SH = ZoneInfo("Asia/Shanghai")
DAY = dt.date(2026, 3, 1)
NEXT = dt.date(2026, 3, 2)
FROZEN = "freeze_daily_energy_active_forward_total"


def local(day: dt.date, hour: int = 0, minute: int = 0, second: int = 0) -> dt.datetime:
    return dt.datetime(day.year, day.month, day.day, hour, minute, second, tzinfo=SH)


def meter(mid: str, area: str, bus: str = "conc-1", role: Role = "customer") -> MeterSettings:
    n = sum(ord(c) for c in mid)
    return MeterSettings(meter_id=mid, address=f"{n:012d}", bus=bus, area=area, role=role)


METERS = [
    meter("A-M00", "TQ-A", role="area_master"),
    meter("A-M01", "TQ-A"), meter("A-M02", "TQ-A"), meter("A-M03", "TQ-A"),
    meter("B-M00", "TQ-B", role="area_master"),
    meter("B-M01", "TQ-B"), meter("B-M02", "TQ-B"),
    meter("C-M01", "TQ-C", bus="rs485-1"), meter("C-M02", "TQ-C", bus="rs485-1"),
]


def frozen(mid: str, value: float, at: dt.datetime, quantity: str = FROZEN,
           meter_ts: dt.datetime | None = None) -> Reading:
    return Reading(mid, quantity, value, "kWh", at.astimezone(dt.UTC),
                   None if meter_ts is None else meter_ts.astimezone(dt.UTC),
                   Quality.BACKFILLED if meter_ts is not None else Quality.GOOD)


@pytest.fixture
def store(tmp_path: Path) -> Iterator[Store]:
    with Store(tmp_path / DB_NAME) as s:
        s.sync_meters(METERS)
        yield s


def put_frozen(store: Store, values: dict[str, tuple[float | None, float | None]]) -> None:
    """Frozen totals per meter: (start of DAY, start of NEXT), each read twice a day."""
    rows: list[Reading] = []
    for mid, (opening, closing) in values.items():
        if opening is not None:
            rows += [frozen(mid, opening, local(DAY, 0, 5)), frozen(mid, opening, local(DAY, 8))]
        if closing is not None:
            # 00:00:10: the meter has not frozen yet (its clock is slow) and still
            # returns the day before's freeze; the later read of NEXT wins.
            rows += [frozen(mid, opening or 0.0, local(NEXT, 0, 0, 10)),
                     frozen(mid, closing, local(NEXT, 0, 15))]
    store.write_readings(rows)


def put_cycles(store: Store, cycles: list[CycleRecord]) -> None:
    conn = store.connect()
    try:
        conn.executemany(INSERT_CYCLE, [cycle_row(c) for c in cycles])
    finally:
        store.release(conn)


# ---- time ------------------------------------------------------------------------------

def test_local_day_boundaries() -> None:
    start, end = day_bounds(DAY)
    assert start == int(dt.datetime(2026, 2, 28, 16, tzinfo=dt.UTC).timestamp() * 1000)
    assert end - start == 86_400_000
    half_past_4 = int(dt.datetime(2026, 3, 1, 16, 30, tzinfo=dt.UTC).timestamp() * 1000)
    assert local_date(half_past_4) == NEXT  # 00:30 the next day in Shanghai
    assert local_date(half_past_4, "UTC") == DAY
    assert day_bounds(DAY, dt.UTC)[0] == start + 8 * 3_600_000


# ---- line loss -------------------------------------------------------------------------

def test_line_loss_by_hand(store: Store) -> None:
    put_frozen(store, {
        "A-M00": (1000.0, 1100.0),  # supplied 100
        "A-M01": (200.0, 230.0), "A-M02": (300.0, 340.0), "A-M03": (50.5, 72.5),  # 30+40+22
        "B-M00": (10.0, 60.0), "B-M01": (1.0, 21.0), "B-M02": (5.0, None),  # B-M02: no close
        "C-M01": (1.0, 2.0), "C-M02": (1.0, 2.0),
    })
    by_area = {r.area: r for r in line_loss(store, DAY)}
    assert sorted(by_area) == ["TQ-A", "TQ-B", "TQ-C"]

    a = by_area["TQ-A"]
    assert a.complete and a.reason == "" and a.missing == ()
    assert (a.master, a.customers) == ("A-M00", 3)
    assert a.supplied_kwh == pytest.approx(100.0)
    assert a.sold_kwh == pytest.approx(92.0)
    assert a.loss_kwh == pytest.approx(8.0)
    assert a.loss_pct == pytest.approx(8.0)
    assert a.source == "frozen"
    assert [(u.meter, u.usage) for u in a.meters] == [
        ("A-M00", 100.0), ("A-M01", 30.0), ("A-M02", 40.0), ("A-M03", 22.0)]

    b = by_area["TQ-B"]
    assert not b.complete
    assert b.missing == ("B-M02",)
    assert b.loss_kwh is None and b.loss_pct is None and b.sold_kwh is None
    assert b.supplied_kwh == pytest.approx(50.0)
    assert "B-M02" in b.reason

    c = by_area["TQ-C"]
    assert not c.complete and c.master is None
    assert "no area master" in c.reason
    assert c.supplied_kwh is None and c.loss_kwh is None


def test_line_loss_day_is_local(store: Store) -> None:
    """Frozen values read at 16:30 UTC belong to the next local day (00:30 Shanghai)."""
    utc = dt.UTC
    rows = []
    for mid, opening, closing in (("A-M00", 0.0, 10.0), ("A-M01", 0.0, 4.0),
                                  ("A-M02", 0.0, 3.0), ("A-M03", 0.0, 2.0)):
        rows.append(Reading(mid, FROZEN, opening, "kWh", dt.datetime(2026, 2, 28, 16, 30,
                                                                      tzinfo=utc)))
        rows.append(Reading(mid, FROZEN, closing, "kWh", dt.datetime(2026, 3, 1, 16, 30,
                                                                      tzinfo=utc)))
    store.write_readings(rows)
    a = next(r for r in line_loss(store, DAY) if r.area == "TQ-A")
    assert a.complete
    assert (a.supplied_kwh, a.sold_kwh, a.loss_kwh) == (10.0, 9.0, 1.0)
    assert a.loss_pct == pytest.approx(10.0)
    # The same readings in UTC days: 2026-03-01 has only the second set (an opening).
    utc_a = next(r for r in line_loss(store, DAY, "UTC") if r.area == "TQ-A")
    assert not utc_a.complete
    assert set(utc_a.missing) == {"A-M00", "A-M01", "A-M02", "A-M03"}


def test_meter_ts_places_backfilled_freezes(store: Store) -> None:
    """A frozen value read days later with its freeze time as meter_ts counts for the
    boundary of the freeze, not for the day it was read."""
    late = local(NEXT + dt.timedelta(days=1), 9)  # read two days later
    store.write_readings([
        frozen("A-M00", 100.0, local(DAY, 1)), frozen("A-M00", 150.0, late, meter_ts=local(NEXT)),
        frozen("A-M01", 10.0, local(DAY, 1)), frozen("A-M01", 30.0, local(NEXT, 1)),
        frozen("A-M02", 10.0, local(DAY, 1)), frozen("A-M02", 30.0, local(NEXT, 1)),
        frozen("A-M03", 10.0, local(DAY, 1)), frozen("A-M03", 15.0, local(NEXT, 1)),
        # read on NEXT, but the freeze of DAY + 2: not NEXT's closing value
        frozen("A-M03", 99.0, local(NEXT, 23), meter_ts=local(NEXT + dt.timedelta(days=1))),
    ])
    a = next(r for r in line_loss(store, DAY) if r.area == "TQ-A")
    assert a.complete
    assert (a.supplied_kwh, a.sold_kwh, a.loss_kwh, a.loss_pct) == (50.0, 45.0, 5.0, 10.0)


def test_live_registers_stand_in_only_without_frozen_values(store: Store) -> None:
    live = "energy_active_forward_total"
    put_frozen(store, {"A-M00": (1000.0, 1100.0), "A-M01": (0.0, 50.0), "A-M02": (0.0, 30.0)})
    store.write_readings([
        # A-M03 has no frozen values: the live register closest to each local midnight
        frozen("A-M03", 499.0, local(DAY - dt.timedelta(days=1), 23, 0), quantity=live),
        frozen("A-M03", 500.0, local(DAY - dt.timedelta(days=1), 23, 50), quantity=live),
        frozen("A-M03", 501.0, local(DAY, 0, 20), quantity=live),
        frozen("A-M03", 515.0, local(DAY, 12), quantity=live),
        frozen("A-M03", 518.0, local(NEXT, 0, 5), quantity=live),
        # A live value of a meter that has frozen ones is not used
        frozen("A-M01", 7777.0, local(NEXT, 0, 1), quantity=live),
    ])
    a = next(r for r in line_loss(store, DAY) if r.area == "TQ-A")
    assert a.complete
    assert a.source == "mixed"
    m3 = next(u for u in a.meters if u.meter == "A-M03")
    assert (m3.opening, m3.closing, m3.source) == (500.0, 518.0, "live")
    assert a.sold_kwh == pytest.approx(50 + 30 + 18)
    assert a.loss_kwh == pytest.approx(2.0)
    # Too far from midnight, or the fallback turned off: missing.
    narrow = next(r for r in line_loss(store, DAY, window=dt.timedelta(minutes=3))
                  if r.area == "TQ-A")
    assert narrow.missing == ("A-M03",) and not narrow.complete
    frozen_only = next(r for r in line_loss(store, DAY, window=None) if r.area == "TQ-A")
    assert frozen_only.missing == ("A-M03",)


def test_lineloss_line_protocol(store: Store) -> None:
    put_frozen(store, {"A-M00": (1000.0, 1100.0), "A-M01": (200.0, 230.0),
                       "A-M02": (300.0, 340.0), "A-M03": (50.0, 72.0),
                       "B-M00": (0.0, 1.0)})
    by_area = {r.area: r for r in line_loss(store, DAY)}
    ts = int(local(DAY).timestamp() * 1000)
    assert lineloss_line(by_area["TQ-A"]) == (
        f"lineloss,area=TQ-A,complete=true loss_pct=8.0,loss_kwh=8.0,supplied_kwh=100.0,"
        f"sold_kwh=92.0 {ts}")
    assert lineloss_line(by_area["TQ-B"]) == (
        f"lineloss,area=TQ-B,complete=false supplied_kwh=1.0 {ts}")
    assert lineloss_line(by_area["TQ-C"]) is None
    assert set(reports.LINELOSS_FIELDS) == {"loss_pct", "loss_kwh", "supplied_kwh", "sold_kwh"}


# ---- read success ----------------------------------------------------------------------

def cycle(name: str, started: dt.datetime, failed: list[str], schedule: str = "fifteen_min",
          only: list[str] | None = None) -> CycleRecord:
    ms = [m for m in METERS if only is None or m.meter_id in only]
    per_bus: dict[str, tuple[int, int]] = {}
    per_area: dict[str, tuple[int, int]] = {}
    for m in ms:
        ok = m.meter_id not in failed
        for table, key in ((per_bus, m.bus), (per_area, m.area or "-")):
            good, total = table.get(key, (0, 0))
            table[key] = (good + ok, total + 1)
    n_ok = sum(m.meter_id not in failed for m in ms)
    return CycleRecord(name, schedule, started.astimezone(dt.UTC),
                       started.astimezone(dt.UTC) + dt.timedelta(minutes=1), len(ms), n_ok,
                       len(ms) - n_ok, per_bus, per_area, failed)


def test_success_per_area_and_bus(store: Store) -> None:
    every = [m.meter_id for m in METERS]
    put_cycles(store, [
        cycle("c1", local(DAY, 8), ["A-M03", "B-M02"]),
        cycle("c2", local(DAY, 12), ["B-M02", "C-M02"]),
        # 23:59 the day before and 00:30 the day after (16:30 UTC on DAY): not DAY's
        cycle("c0", local(DAY - dt.timedelta(days=1), 23, 59), every),
        cycle("c3", dt.datetime(2026, 3, 1, 16, 30, tzinfo=dt.UTC), every),
    ])
    rows = success_report(store, DAY)
    by_key = {r.key: r for r in rows}
    assert [r.key for r in rows] == ["TQ-A", "TQ-B", "TQ-C", None]
    a, b, c, total = (by_key[k] for k in ("TQ-A", "TQ-B", "TQ-C", None))
    assert (a.planned, a.succeeded, a.failed, a.cycles) == (4, 4, 0, 2)  # A-M03 read in c2
    assert (a.reads_ok, a.reads_total) == (7, 8)
    assert (b.planned, b.succeeded, b.failed) == (3, 2, 1)  # B-M02 failed in both
    assert b.pct == pytest.approx(66.67)
    assert (c.planned, c.succeeded) == (2, 2)  # C-M02 read in c1
    assert (total.planned, total.succeeded, total.cycles) == (9, 8, 2)
    assert (total.reads_ok, total.reads_total) == (14, 18)  # 7 + 7 of 9 + 9
    assert total.is_total and total.ratio == pytest.approx(8 / 9)

    buses = {r.key: r for r in success_report(store, DAY, by="bus")}
    assert (buses["conc-1"].planned, buses["conc-1"].succeeded) == (7, 6)
    assert (buses["conc-1"].reads_ok, buses["conc-1"].reads_total) == (11, 14)
    assert (buses["rs485-1"].planned, buses["rs485-1"].succeeded) == (2, 2)
    assert (buses[None].planned, buses[None].succeeded) == (9, 8)

    # The day after (local): only c3, where everything failed.
    after = {r.key: r for r in success_report(store, NEXT)}
    assert (after[None].planned, after[None].succeeded, after[None].cycles) == (9, 0, 1)
    with pytest.raises(ValueError):
        success_report(store, DAY, by="feeder")  # type: ignore[arg-type]


def test_success_of_a_schedule_over_part_of_an_area(store: Store) -> None:
    """A cycle of the area masters only: customers were not due; the masters read are
    found by their readings."""
    put_cycles(store, [cycle("m1", local(DAY, 1), ["B-M00"], schedule="masters",
                             only=["A-M00", "B-M00"])])
    store.write_readings([frozen("A-M00", 1.0, local(DAY, 1))])
    rows = {r.key: r for r in success_report(store, DAY)}
    assert (rows["TQ-A"].planned, rows["TQ-A"].succeeded) == (1, 1)
    assert (rows["TQ-B"].planned, rows["TQ-B"].succeeded) == (1, 0)
    assert "TQ-C" not in rows
    assert (rows[None].planned, rows[None].succeeded) == (2, 1)


def test_success_without_cycles(store: Store) -> None:
    rows = success_report(store, DAY)
    assert len(rows) == 1 and rows[0].key is None
    assert rows[0].planned == 0 and rows[0].ratio is None and rows[0].pct is None


# ---- billing ---------------------------------------------------------------------------

def test_billing_export_and_csv(store: Store, tmp_path: Path) -> None:
    rows: list[Reading] = []
    for t, (o, c) in {"total": (1000.0, 1012.345), "t1": (100.0, 101.0), "t2": (200.0, 203.0),
                      "t3": (300.0, 305.0), "t4": (400.0, 403.345)}.items():
        q = f"freeze_daily_energy_active_forward_{t}"
        rows += [frozen("A-M01", o, local(DAY, 0, 5), q), frozen("A-M01", c, local(NEXT, 0, 5), q)]
    rows += [frozen("A-M02", 10.0, local(DAY, 1)), frozen("A-M02", 20.0, local(NEXT, 1))]
    rows += [frozen("B-M02", 10.0, local(DAY, 1))]
    balance = "balance_amount"
    rows += [Reading("A-M01", balance, 88.5, "yuan", local(DAY, 9).astimezone(dt.UTC)),
             Reading("A-M01", balance, 80.5, "yuan", local(DAY, 21).astimezone(dt.UTC)),
             Reading("A-M01", balance, 1.0, "yuan", local(NEXT, 9).astimezone(dt.UTC))]
    store.write_readings(rows)

    bill = billing_export(store, DAY)
    assert [r.meter_id for r in bill] == sorted(m.meter_id for m in METERS)
    by_id = {r.meter_id: r for r in bill}
    m1 = by_id["A-M01"]
    assert (m1.status, m1.source, m1.balance) == ("complete", "frozen", 80.5)
    assert m1.usage["total"] == pytest.approx(12.345)
    assert m1.usage["t4"] == pytest.approx(3.345)
    assert by_id["A-M02"].status == "partial"  # totals only
    assert by_id["B-M02"].status == "missing"
    assert by_id["C-M01"].status == "missing" and by_id["C-M01"].source == "missing"

    out = io.StringIO()
    assert write_csv(bill, out) == len(METERS)
    table = list(csv.reader(io.StringIO(out.getvalue())))
    assert table[0] == list(BILLING_HEADER)
    assert table[0][:8] == ["day", "meter_id", "address", "area", "bus", "role", "status",
                            "source"]
    assert all(h == h.lower() and " " not in h for h in table[0])
    cells = dict(zip(table[0], next(r for r in table[1:] if r[1] == "A-M01"), strict=True))
    assert cells["day"] == "2026-03-01"
    assert cells["opening_total_kwh"] == "1000.00"
    assert cells["closing_total_kwh"] == "1012.35"  # 2 decimals
    assert cells["usage_total_kwh"] == "12.35"
    assert cells["usage_t1_kwh"] == "1.00"
    assert cells["balance_yuan"] == "80.50"
    assert cells["area"] == "TQ-A" and cells["bus"] == "conc-1"
    missing = dict(zip(table[0], next(r for r in table[1:] if r[1] == "B-M02"), strict=True))
    assert missing["status"] == "missing"
    assert missing["opening_total_kwh"] == "10.00"
    assert missing["closing_total_kwh"] == "" and missing["usage_total_kwh"] == ""
    assert missing["balance_yuan"] == ""

    path = tmp_path / "bill.csv"
    write_csv(bill, path)
    raw = path.read_bytes()
    assert raw.startswith(b"\xef\xbb\xbf")  # a BOM, for Excel
    assert raw.decode("utf-8-sig") == out.getvalue()


# ---- ledger ----------------------------------------------------------------------------

LEDGER = """\
# a comment line
meter_id,address,bus,protocol,area,role
M1,202301150101,conc-1,,TQ-1,area_master
M2,202301150102,conc-1,,TQ-1,

M3,202301150102,conc-1,,TQ-1,
M2,202301150109,conc-1,,TQ-1,
M4,,conc-1,,TQ-1,
M5,202301150105,conc-9,,TQ-1,
M6,202301150101,rs485-1,,TQ-1,
M7,202301150107,conc-1,dlt645-2099,TQ-1,
,202301150108,rs485-1,,TQ-1,
M8,202301150110,conc-1,,TQ-1,area_master
"""


def test_ledger_problems_with_line_numbers() -> None:
    report = validate_ledger(LEDGER.splitlines(keepends=True), ["conc-1", "rs485-1"])
    assert not report.ok
    assert report.rows == 10

    [dup_addr] = report.duplicate_addresses
    assert (dup_addr.line, dup_addr.meter, dup_addr.lines) == (6, "M3", (4, 6))
    assert "M2" in dup_addr.message and "line 4" in dup_addr.message
    [dup_id] = report.duplicate_meter_ids
    assert (dup_id.line, dup_id.meter, dup_id.lines) == (7, "M2", (4, 7))
    missing = {(i.line, i.column) for i in report.missing_fields}
    assert missing == {(8, "address"), (12, "meter_id")}
    [bus] = report.unknown_buses
    assert (bus.line, bus.meter, bus.column) == (9, "M5", "bus")
    assert "conc-9" in bus.message
    invalid = {(i.line, i.column) for i in report.invalid}
    assert (11, "protocol") in invalid
    assert (13, "role") in invalid  # a second area master in TQ-1 (from collector.config)
    assert all(i.line is not None for i in report.issues)
    assert [i.line for i in report.issues] == sorted(i.line or 0 for i in report.issues)
    # the issues amic run reports are not repeated as "invalid"
    assert not {(6, "address"), (7, "meter_id"), (8, "address"), (9, "bus")} & invalid


def test_ledger_duplicate_address_after_excel() -> None:
    text = ("meter_id,address,bus\n"
            "M1,012345678901,conc-1\n"
            "M2,12345678901,conc-1\n"  # Excel dropped the leading zero: the same meter
            "M3,12345678901,rs485-1\n")  # another bus: fine
    report = validate_ledger(text, ["conc-1", "rs485-1"])
    [dup] = report.issues
    assert dup.kind == "duplicate_address"
    assert (dup.line, dup.meter, dup.lines) == (3, "M2", (2, 3))
    assert "012345678901" in dup.message and "conc-1" in dup.message
    assert report.valid == 2


def test_ledger_header_without_required_column() -> None:
    report = validate_ledger("meter_id,bus\nM1,conc-1\n", ["conc-1"])
    assert [(i.kind, i.line, i.column) for i in report.issues] == [
        ("missing_field", 1, "address")]


def test_example_ledger_is_valid() -> None:
    report = validate_ledger_file(ROOT / "config" / "ledger.example.csv", ["conc-1", "rs485-1"])
    assert report.ok, [str(i) for i in report.issues]
    assert report.rows == report.valid == 11
    unknown = validate_ledger_file(ROOT / "config" / "ledger.example.csv", ["conc-1"])
    assert {i.line for i in unknown.unknown_buses} == {22, 23, 24, 25}

"""Which energy a meter is billed on: forward where it has it, else combined (Acrel).

Line loss and the billing export take each meter's energy from what its profile (or the
DL/T645 catalogue) offers, so an Acrel meter, which has only combined energy, appears
with values, and the export's status column says the choice.
"""

from __future__ import annotations

import csv
import datetime as dt
import io
import json
from pathlib import Path
from zoneinfo import ZoneInfo

import pytest
from click.testing import CliRunner

from collector.cli import main
from collector.config import load_settings
from collector.config.profiles import load_profile
from collector.daily.reports import BILLING_HEADER, TARIFFS, meter_energies
from collector.store import DB_NAME, Store
from collector.store.records import Quality, Reading
from protocols.quantities import billing_energy

SH = ZoneInfo("Asia/Shanghai")
DAY = dt.date(2026, 3, 1)
NEXT = dt.date(2026, 3, 2)

CONFIG = """\
[collector]
id = "energy-gw"
data_dir = "data"

[[bus]]
name = "conc-1"
type = "tcp"
host = "127.0.0.1"
port = 10001

[[bus]]
name = "mb-1"
type = "tcp"
host = "127.0.0.1"
port = 10002
modbus = "tcp"

[[meter]]
meter_id = "M00"
address = "000000000100"
bus = "conc-1"
area = "TQ-A"
role = "area_master"

[[meter]]
meter_id = "M01"
address = "000000000101"
bus = "conc-1"
area = "TQ-A"

[[meter]]
meter_id = "P1"
address = "1"
bus = "mb-1"
area = "TQ-A"
protocol = "modbus"
profile = "acrel-ddsy1352"

[schedule.daily]
interval = "1d"
quantities = ["freeze_daily_energy_active_forward_total"]
meters = ["protocol:dlt645-2007"]

[schedule.acrel]
interval = "15m"
quantities = ["energy_active_combined_total"]
meters = ["protocol:modbus"]
"""


def local(day: dt.date, hour: int = 0, minute: int = 0) -> dt.datetime:
    return dt.datetime(day.year, day.month, day.day, hour, minute, tzinfo=SH)


def reading(mid: str, name: str, value: float, at: dt.datetime) -> Reading:
    return Reading(mid, name, value, "kWh", at.astimezone(dt.UTC), None, Quality.GOOD)


@pytest.fixture
def cfg(tmp_path: Path) -> Path:
    """A DL/T645 area master and customer (frozen forward energy) and an Acrel customer
    read every 15 minutes (live combined energy only, as its profile offers)."""
    path = tmp_path / "amic.toml"
    path.write_text(CONFIG, encoding="utf-8")
    (tmp_path / "data").mkdir()
    settings = load_settings(path)
    frozen = "freeze_daily_energy_active_forward_total"
    rows = [reading("M00", frozen, 1000.0, local(DAY, 0, 15)),
            reading("M00", frozen, 1100.0, local(NEXT, 0, 15)),
            reading("M01", frozen, 200.0, local(DAY, 0, 15)),
            reading("M01", frozen, 230.0, local(NEXT, 0, 15))]
    # The Acrel meter: 500 -> 560 kWh total (t1..t4: 100+k -> 115+k), read at 23:55 and
    # 00:10 around each midnight; the reading closest to midnight counts.
    for day, base in ((DAY, 0.0), (NEXT, 60.0)):
        for at, drift in ((local(day, 0, 10), 0.5),
                          (local(day - dt.timedelta(days=1), 23, 55), -0.2)):
            rows.append(reading("P1", "energy_active_combined_total", 500 + base + drift, at))
            for k, t in enumerate(TARIFFS[1:]):
                rows.append(reading("P1", f"energy_active_combined_{t}",
                                    100 + k + base / 4 + drift, at))
    with Store(tmp_path / "data" / DB_NAME) as s:
        s.sync_meters(settings.meters)
        s.write_readings(rows)
    return path


def amic(*args: str) -> tuple[int, str, str]:
    r = CliRunner().invoke(main, list(args))
    return r.exit_code, r.stdout, r.stderr


def test_billing_energy_from_what_a_meter_offers() -> None:
    assert billing_energy({"energy_active_forward_total", "energy_active_combined_total"}) \
        == "forward"
    assert billing_energy({"energy_active_combined_total", "voltage_a"}) == "combined"
    assert billing_energy({"voltage_a", "energy_active_reverse_total"}) is None
    for name, expected in (("acrel-ddsy1352", "combined"), ("acrel-dtsy1352", "combined"),
                           ("generic-energy-meter", "forward")):
        assert billing_energy(r.name for r in load_profile(name).registers) == expected, name


def test_meter_energies_of_a_configuration(cfg: Path) -> None:
    settings = load_settings(cfg)
    assert meter_energies(settings.meters, [cfg.parent]) == {
        "M00": "forward", "M01": "forward", "P1": "combined"}


def test_acrel_meter_in_the_billing_export_with_combined_energy(cfg: Path) -> None:
    code, out, err = amic("export", "-c", str(cfg), "--day", DAY.isoformat())
    assert code == 0, out + err
    table = list(csv.reader(io.StringIO(out)))
    assert table[0] == list(BILLING_HEADER)
    rows = {row[1]: dict(zip(table[0], row, strict=True)) for row in table[1:]}
    p1 = rows["P1"]
    assert p1["status"] == "complete (combined)", p1
    assert p1["source"] == "live"
    assert (p1["opening_total_kwh"], p1["closing_total_kwh"], p1["usage_total_kwh"]) \
        == ("499.80", "559.80", "60.00")
    assert p1["usage_t1_kwh"] == "15.00" and p1["usage_t4_kwh"] == "15.00"
    # DL/T645 meters stay on forward energy, and their status has no suffix.
    assert rows["M01"]["status"] == "partial" and rows["M01"]["usage_total_kwh"] == "30.00"
    assert "2 partial" in err and "0 missing" in err


def test_acrel_meter_in_line_loss(cfg: Path) -> None:
    code, out, err = amic("report", "lineloss", "-c", str(cfg), "--day", DAY.isoformat(),
                          "--json")
    assert code == 0, out + err
    (area,) = [json.loads(line) for line in out.splitlines()]
    assert area["area"] == "TQ-A" and area["complete"] is True, area
    # supplied 100 (M00), sold 30 (M01) + 60 (P1, combined energy): loss 10 kWh, 10 %.
    assert area["supplied_kwh"] == 100.0 and area["sold_kwh"] == 90.0
    assert area["loss_kwh"] == 10.0 and area["loss_pct"] == 10.0
    assert {m["meter"]: (m["energy"], m["source"], m["usage_kwh"]) for m in area["meters"]} == {
        "M00": ("forward", "frozen", 100.0), "M01": ("forward", "frozen", 30.0),
        "P1": ("combined", "live", 60.0)}


# ---- prepaid accounting ----------------------------------------------------------------

PREPAID = """
[prepaid]
warn1 = 20
warn2 = 5
price = "0.5"
computed = ["*"]
"""


def test_computed_prepaid_balance_of_an_acrel_meter_charges_combined_energy(
        cfg: Path) -> None:
    from decimal import Decimal

    from collector.service.control import build_engine

    text = cfg.read_text(encoding="utf-8").replace(
        'profile = "acrel-ddsy1352"\n', 'profile = "acrel-ddsy1352"\nprepaid = true\n')
    cfg.write_text(text + PREPAID, encoding="utf-8")
    engine = build_engine(load_settings(cfg))
    assert engine is not None and set(engine.accounts) == {"P1"}
    assert engine.accounts["P1"].energy == "combined"
    t = local(DAY, 12)
    engine.observe("P1", [reading("P1", "energy_active_combined_total", 500.0, t)], t)
    later = t + dt.timedelta(hours=1)
    engine.observe("P1", [reading("P1", "energy_active_combined_total", 510.0, later),
                          reading("P1", "energy_active_forward_total", 900.0, later)], later)
    # 10 kWh of combined energy at 0.5 yuan; the (stray) forward reading is not charged.
    assert engine.balance("P1") == Decimal("-5.0")


def test_prepaid_account_energy_is_checked() -> None:
    from collector.commands.prepaid import PrepaidAccount

    with pytest.raises(ValueError, match="energy must be one of forward, combined"):
        PrepaidAccount("m1", energy="reverse")


def test_the_daemons_daily_line_loss_counts_the_acrel_meter(cfg: Path) -> None:
    """The daily job (stored ``lineloss`` rows) picks the energy as ``amic report`` does."""
    from types import SimpleNamespace

    from collector.config.settings import DailySettings
    from collector.daily.jobs import DailyJobs
    from collector.store.records import DailyRecord, Event

    settings = load_settings(cfg)
    stored: list[DailyRecord] = []
    events: list[Event] = []
    with Store(cfg.parent / "data" / DB_NAME) as store:
        writer = SimpleNamespace(put_daily=stored.append)
        ctx = SimpleNamespace(settings=lambda: settings, store=lambda: store,
                              writer=lambda: writer, on_event=events.append)
        jobs = DailyJobs(ctx, DailySettings(tz="Asia/Shanghai"))  # type: ignore[arg-type]
        jobs.report(DAY)
    (loss,) = [r for r in stored if r.kind == "lineloss"]
    assert loss.key == "TQ-A" and loss.complete, loss
    assert dict(loss.fields)["loss_kwh"] == 10.0 and dict(loss.fields)["sold_kwh"] == 90.0
    assert not [e for e in events if e.kind == "lineloss_incomplete"]

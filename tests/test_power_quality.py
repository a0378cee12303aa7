"""Power quality: 电压合格率 per meter and area (collector/daily/voltage.py, ``amic report
voltage``), and the rules on readings (status words 4-7, voltage loss while the bus is
up, frequency, voltage unbalance, sags)."""

from __future__ import annotations

import datetime as dt
import json
from decimal import Decimal
from pathlib import Path
from zoneinfo import ZoneInfo

from click.testing import CliRunner

from collector.cli import main
from collector.config.alarms import KNOWN_RULES
from collector.config.settings import DailySettings, MeterSettings
from collector.daily.voltage import voltage_records, voltage_report
from collector.polling.rules import AlarmEngine, AlarmSettings
from collector.store import DB_NAME, Store
from collector.store.records import Event, Reading
from simulators.meter import ManualClock, MeterConfig, MeterModel

SH = ZoneInfo("Asia/Shanghai")
DAY = dt.date(2026, 3, 1)
METERS = [MeterSettings(meter_id="m1", address="000000000001", bus="b1", area="TQ-A"),
          MeterSettings(meter_id="m2", address="000000000002", bus="b1", area="TQ-B")]


def poll_day(model: MeterModel, clock: ManualClock, meter: str) -> list[Reading]:
    """A schedule reading the phase voltages every 15 minutes for the whole day."""
    out: list[Reading] = []
    for _ in range(96):
        ts = clock.now().replace(tzinfo=SH).astimezone(dt.UTC)
        for i, p in enumerate("abc"):
            out.append(Reading(meter, f"voltage_{p}", float(model.sample().voltage[i]), "V", ts))
        clock.advance(15 * 60)
    return out


def day_store(tmp: Path, nominal_b: float = 220.0) -> Path:
    """m1: two hours at 85 % (10:00-12:00) and 30 minutes at 110 %; m2 in band all day."""
    data = tmp / "data"
    data.mkdir()
    with Store(data / DB_NAME) as store:
        store.sync_meters(METERS)
        for m, deviate in (("m1", True), ("m2", False)):
            clock = ManualClock(dt.datetime.combine(DAY, dt.time()))
            model = MeterModel(m, MeterConfig(nominal_voltage=nominal_b if m == "m2" else 220.0,
                                              voltage_noise=0.002), seed=m, clock=clock)
            if deviate:
                model.deviate_voltage(dt.datetime.combine(DAY, dt.time(10)),
                                      dt.datetime.combine(DAY, dt.time(12)), 0.85)
                model.deviate_voltage(dt.datetime.combine(DAY, dt.time(18)),
                                      dt.datetime.combine(DAY, dt.time(18, 30)), 1.10, "b")
            store.write_readings(poll_day(model, clock, m))
    return data


def test_a_day_with_voltage_out_of_band_for_150_minutes(tmp_path: Path) -> None:
    day_store(tmp_path)
    with Store(tmp_path / "data" / DB_NAME) as store:
        rows = {r.key: r for r in voltage_report(store, DAY, SH)}
        m1, m2 = rows["m1"], rows["m2"]
        assert m1.monitored_min == 1440
        assert (m1.low_min, m1.high_min, m1.out_min) == (120, 30, 150)
        assert round(m1.rate or 0, 6) == round(1 - 150 / 1440, 6)  # 89.583 %
        assert m1.v_min is not None and m1.v_min < 198 < 235.4 < (m1.v_max or 0)
        assert m2.rate == 1.0 and m2.area == "TQ-B"
        areas = {r.key: r for r in voltage_report(store, DAY, SH, by="area")}
        assert round(areas["TQ-A"].rate or 0, 6) == round(1 - 150 / 1440, 6)
        assert areas["TQ-B"].rate == 1.0
        # stored like read success: one daily row per meter and per area
        recs = {(r.kind, r.key): dict(r.fields)
                for r in voltage_records(store, DAY, SH, DailySettings(tz="Asia/Shanghai"))}
        assert recs[("voltage_meter", "m1")]["out_min"] == 150
        assert recs[("voltage_area", "TQ-A")]["rate"] == round(1 - 150 / 1440, 6)


def test_nominal_voltage_per_area(tmp_path: Path) -> None:
    day_store(tmp_path, nominal_b=240.0)  # TQ-B's supply runs at 240 V
    with Store(tmp_path / "data" / DB_NAME) as store:
        default = {r.key: r for r in voltage_report(store, DAY, SH, by="area")}
        assert default["TQ-B"].rate == 0.0  # 240 V is above 220 V + 7 %
        settings = DailySettings(voltage_areas=(("TQ-B", 240.0),))
        per_area = {r.key: r for r in voltage_report(store, DAY, SH, by="area",
                                                     nominal=settings.nominal)}
        assert per_area["TQ-B"].rate == 1.0 and per_area["TQ-B"].nominal == 240.0


def test_amic_report_voltage_by_meter_and_area(tmp_path: Path) -> None:
    data = day_store(tmp_path)
    cfg = tmp_path / "amic.toml"
    meters = "".join(f'\n[[meter]]\nmeter_id = "{m.meter_id}"\naddress = "{m.address}"\n'
                     f'bus = "b1"\narea = "{m.area}"\n' for m in METERS)
    cfg.write_text(f'[collector]\nid = "pq"\ndata_dir = "{data}"\n\n[[bus]]\nname = "b1"\n'
                   f'type = "tcp"\nhost = "127.0.0.1"\nport = 10001\n{meters}\n'
                   '[schedule.v]\ninterval = "15m"\nquantities = ["voltage"]\n\n'
                   '[daily]\nvoltage_nominal = 220.0\n', encoding="utf-8")
    runner = CliRunner()
    got = runner.invoke(main, ["report", "voltage", "-c", str(cfg), "--day", "2026-03-01",
                               "--json"])
    assert got.exit_code == 0, got.output
    rows = [json.loads(line) for line in got.output.splitlines()]
    assert [(r["meter"], r["rate"], r["out_min"]) for r in rows] == [
        ("m1", round(1 - 150 / 1440, 6), 150.0), ("m2", 1.0, 0.0)]
    got = runner.invoke(main, ["report", "voltage", "-c", str(cfg), "--day", "2026-03-01",
                               "--by", "area"])
    assert got.exit_code == 0, got.output
    assert "TQ-A" in got.output and "89.583" in got.output and "100.000" in got.output


# ---- rules on the readings ---------------------------------------------------------------

T = dt.datetime(2026, 3, 1, 10, 0, tzinfo=dt.UTC)


def r(meter: str, quantity: str, value: float, ts: dt.datetime = T) -> Reading:
    return Reading(meter, quantity, value, "", ts)


def kinds(events: list[Event]) -> list[str]:
    return [e.kind for e in events]


def test_phase_a_voltage_loss_from_the_simulator_is_an_alarm_only_while_the_bus_is_up() -> None:
    clock = ManualClock(dt.datetime(2026, 3, 1, 9, 0))
    model = MeterModel("000000000001", MeterConfig(base_kw=Decimal(2)), seed=1, clock=clock)
    model.lose_voltage("a", dt.datetime(2026, 3, 1, 9, 0))
    sample = model.sample()
    polled = [r("m1", f"voltage_{p}", float(v)) for p, v in zip("abc", sample.voltage,
                                                                   strict=True)]
    polled += [r("m1", f"status_word_{n}", model.status_word(n)) for n in (4, 5, 6, 7)]
    alone = AlarmEngine()
    assert "voltage_loss" not in kinds(alone.observe("m1", polled, bus="b1"))  # nobody else
    engine = AlarmEngine()
    engine.observe("m2", [r("m2", "voltage_a", 221.0, T - dt.timedelta(minutes=5))], bus="b1")
    events = engine.observe("m1", polled, bus="b1")
    loss = [e for e in events if e.kind == "voltage_loss"]
    assert len(loss) == 1 and loss[0].severity == 2 and "phase A" in loss[0].detail
    assert engine.active("m1") >= {"voltage_loss:a"}
    # the voltage is back: cleared once
    back = [r("m1", "voltage_a", 220.0, T + dt.timedelta(minutes=15)),
            r("m1", "status_word_4", 0, T + dt.timedelta(minutes=15))]
    assert kinds(engine.observe("m1", back, bus="b1")) == ["voltage_loss_cleared"]


def test_status_word_bits_current_loss_overload_and_phase_sequence() -> None:
    engine = AlarmEngine()
    events = engine.observe("m1", [r("m1", "status_word_5", (1 << 3) | (1 << 5)),
                                   r("m1", "status_word_7", 1)], bus="b1")
    assert sorted(kinds(events)) == ["current_loss", "overload", "phase_sequence"]
    assert all("phase B" in e.detail for e in events if e.kind != "phase_sequence")
    # still on at the next poll: no new event
    assert kinds(engine.observe("m1", [r("m1", "status_word_5", (1 << 3) | (1 << 5)),
                                       r("m1", "status_word_7", 1)], bus="b1")) == []
    assert kinds(engine.observe("m1", [r("m1", "status_word_5", 0),
                                       r("m1", "status_word_7", 0)], bus="b1")) == [
        "current_loss_cleared", "overload_cleared", "phase_sequence_cleared"]


def test_frequency_unbalance_and_sag() -> None:
    assert kinds(AlarmEngine().observe("m1", [r("m1", "frequency", 50.25)])) == []  # opt-in
    engine = AlarmEngine(AlarmSettings(rules=frozenset(KNOWN_RULES)))
    events = engine.observe("m1", [r("m1", "frequency", 50.25), r("m1", "voltage_a", 230.0),
                                   r("m1", "voltage_b", 220.0), r("m1", "voltage_c", 205.0)])
    # mean 218.33: max deviation 13.33 V = 6.1 % > 2 %
    assert sorted(kinds(events)) == ["frequency_deviation", "voltage_unbalance"]
    assert "6.1%" in next(e.detail for e in events if e.kind == "voltage_unbalance")
    assert kinds(engine.observe("m1", [r("m1", "frequency", 50.15)])) == [
        "frequency_deviation_cleared"]
    sag = engine.observe("m1", [r("m1", "voltage_a", 190.0), r("m1", "voltage_b", 220.0),
                                r("m1", "voltage_c", 220.0)])
    assert "voltage_sag" in kinds(sag)
    strict = AlarmEngine(AlarmSettings(frequency_band_hz=0.1, rules=frozenset(KNOWN_RULES)))
    assert kinds(strict.observe("m1", [r("m1", "frequency", 50.15)])) == [
        "frequency_deviation"]


def test_a_cover_open_counter_still_raises_its_counter_event() -> None:
    engine = AlarmEngine()
    engine.observe("m1", [r("m1", "cover_open_count", 1)])
    assert kinds(engine.observe("m1", [r("m1", "cover_open_count", 2)])) == [
        "cover_open_counter"]


def test_a_phase_never_wired_is_no_voltage_loss_but_one_that_drops_is() -> None:
    engine = AlarmEngine()
    engine.observe("m2", [r("m2", "voltage_a", 221.0)], bus="b1")
    three_wire = [r("m1", "voltage_a", 220.0), r("m1", "voltage_b", 0.0),
                  r("m1", "voltage_c", 221.0)]
    assert "voltage_loss" not in kinds(engine.observe("m1", three_wire, bus="b1"))
    later = T + dt.timedelta(minutes=15)
    dropped = [r("m1", "voltage_a", 0.0, later), r("m1", "voltage_b", 0.0, later),
               r("m1", "voltage_c", 221.0, later)]
    engine.observe("m2", [r("m2", "voltage_a", 221.0, later)], bus="b1")
    loss = [e for e in engine.observe("m1", dropped, bus="b1") if e.kind == "voltage_loss"]
    assert [e.detail.split(" lost")[0] for e in loss] == ["phase A"]

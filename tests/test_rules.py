"""Alarm rules: each rule driven with synthetic readings, once per condition."""

from __future__ import annotations

import datetime as dt
import json

import pytest

from collector.polling.rules import (
    RULES,
    AlarmEngine,
    AlarmSettings,
    CommLossTracker,
    ScheduleWatch,
    relay_bits,
    schedule_overdue,
)
from collector.store.records import Event, Quality, Reading

T0 = dt.datetime(2024, 3, 1, 0, 0, tzinfo=dt.UTC)
M = "000000000001"
RELAY_OPEN = 1 << 4
TRIP_CMD = 1 << 6
HOLD = 1 << 12


def at(hours: float = 0.0) -> dt.datetime:
    return T0 + dt.timedelta(hours=hours)


def rd(quantity: str, value: float, hours: float = 0.0, *, meter_ts: dt.datetime | None = None,
       quality: Quality = Quality.GOOD) -> Reading:
    return Reading(M, quantity, value, "", at(hours), meter_ts, quality)


def poll(engine: AlarmEngine, hours: float, **values: float) -> list[Event]:
    return engine.observe(M, [rd(q, v, hours) for q, v in values.items()], bus="bus1")


def kinds(events: list[Event]) -> list[str]:
    return [e.kind for e in events]


# -- settings -------------------------------------------------------------------------


def test_settings_defaults_and_limits() -> None:
    s = AlarmSettings()
    assert s.nominal_voltage == 220.0
    assert s.voltage_high_limit == pytest.approx(235.4)
    assert s.voltage_low_limit == pytest.approx(198.0)
    assert s.rules == frozenset(RULES)


def test_settings_rejects_bad_values() -> None:
    with pytest.raises(ValueError, match="voltage_low_pct"):
        AlarmSettings(voltage_low_pct=10.0)
    with pytest.raises(ValueError, match="unknown rule"):
        AlarmSettings(rules=frozenset({"voltage_hihg"}))
    assert AlarmSettings(rules=["zero_use"]).rules == frozenset({"zero_use"})  # type: ignore[arg-type]


# -- energy -----------------------------------------------------------------------------


def test_energy_jump_once_then_cleared() -> None:
    e = AlarmEngine()
    assert poll(e, 0, energy_active_forward_total=1000.0) == []
    ev = poll(e, 1, energy_active_forward_total=1080.0)  # 80 kWh in 1 h
    assert kinds(ev) == ["energy_jump"]
    assert ev[0].severity == 1 and ev[0].value == pytest.approx(80.0)
    assert ev[0].meter == M and ev[0].bus == "bus1"
    assert poll(e, 2, energy_active_forward_total=1160.0) == []  # still on: no storm
    ev = poll(e, 3, energy_active_forward_total=1165.0)
    assert kinds(ev) == ["energy_jump_cleared"] and ev[0].severity == 0


def test_energy_jump_rate_uses_meter_clock() -> None:
    e = AlarmEngine()
    m0 = at(0)
    e.observe(M, [rd("energy_active_forward_total", 100.0, 0, meter_ts=m0)])
    # Collector saw it 1 minute later, but the meter says 2 hours passed: 40 kWh/h, fine.
    ev = e.observe(M, [rd("energy_active_forward_total", 180.0, 1 / 60,
                          meter_ts=m0 + dt.timedelta(hours=2))])
    assert ev == []
    # A suspect meter clock falls back to the collector's: 40 kWh in 1 h.
    e2 = AlarmEngine(AlarmSettings(jump_kwh_per_hour=30))
    e2.observe(M, [rd("energy_active_forward_total", 100.0, 0, meter_ts=m0)])
    ev = e2.observe(M, [rd("energy_active_forward_total", 140.0, 1,
                           meter_ts=m0 + dt.timedelta(hours=10), quality=Quality.CLOCK_SUSPECT)])
    assert kinds(ev) == ["energy_jump"] and ev[0].value == pytest.approx(40.0)


def test_energy_jump_needs_positive_interval() -> None:
    e = AlarmEngine()
    poll(e, 1, energy_active_forward_total=100.0)
    assert poll(e, 1, energy_active_forward_total=200.0) == []


def test_energy_backwards_alarm_and_glitch_recovery() -> None:
    e = AlarmEngine()
    poll(e, 0, energy_active_forward_total=500.0)
    ev = poll(e, 1, energy_active_forward_total=400.0)
    assert kinds(ev) == ["energy_backwards"]
    assert ev[0].severity == 2 and ev[0].value == pytest.approx(-100.0)
    assert poll(e, 2, energy_active_forward_total=400.5) == []  # stays low: no new event
    # Back above the pre-drop value: cleared, and the rate is against 500 -> no jump.
    ev = poll(e, 3, energy_active_forward_total=501.0)
    assert kinds(ev) == ["energy_backwards_cleared"]


def test_energy_backwards_within_tolerance_is_ignored() -> None:
    e = AlarmEngine()
    poll(e, 0, energy_active_forward_total=500.0)
    assert poll(e, 1, energy_active_forward_total=499.995) == []
    assert e.active(M) == frozenset()


# -- zero use -------------------------------------------------------------------------


def test_zero_use_with_relay_closed() -> None:
    e = AlarmEngine()
    for day in range(3):
        assert poll(e, 24 * day, energy_active_forward_total=42.0, status_word_3=0) == []
    ev = poll(e, 72, energy_active_forward_total=42.0, status_word_3=0)
    assert kinds(ev) == ["zero_use"]
    assert ev[0].severity == 1 and ev[0].value == pytest.approx(3.0)
    assert poll(e, 96, energy_active_forward_total=42.0, status_word_3=0) == []
    ev = poll(e, 97, energy_active_forward_total=42.5, status_word_3=0)
    assert kinds(ev) == ["zero_use_cleared"]


def test_zero_use_not_raised_with_relay_open() -> None:
    e = AlarmEngine()
    for day in range(6):
        assert poll(e, 24 * day, energy_active_forward_total=42.0,
                    status_word_3=RELAY_OPEN) == []
    # Reconnected: the flat clock counts from when the relay was last seen open (day 5).
    assert poll(e, 24 * 6, energy_active_forward_total=42.0, status_word_3=0) == []
    assert poll(e, 24 * 7.9, energy_active_forward_total=42.0) == []  # relay state remembered
    assert kinds(poll(e, 24 * 8, energy_active_forward_total=42.0)) == ["zero_use"]


# -- voltage ----------------------------------------------------------------------------


def test_voltage_high_low_ok() -> None:
    e = AlarmEngine()
    ev = poll(e, 0, voltage_a=240.0, voltage_b=197.0, voltage_c=199.0)
    assert kinds(ev) == ["voltage_high", "voltage_low"]
    assert ev[0].value == 240.0 and ev[0].detail == "voltage_a 240.0 V > 235.4 V (+7%)"
    assert ev[1].value == 197.0 and ev[1].detail == "voltage_b 197.0 V < 198.0 V (-10%)"
    assert e.active(M) == {"voltage_high:a", "voltage_low:b"}


def test_voltage_hysteresis() -> None:
    e = AlarmEngine()
    poll(e, 0, voltage_a=238.1)
    assert poll(e, 1, voltage_a=240.0) == []  # still high: no storm
    assert poll(e, 2, voltage_a=234.0) == []  # below 235.4 but above 233.2: still on
    ev = poll(e, 3, voltage_a=233.0)
    assert kinds(ev) == ["voltage_high_cleared"] and ev[0].severity == 0
    poll(e, 4, voltage_a=197.0)
    assert poll(e, 5, voltage_a=199.0) == []  # 199 < 200.2: still low
    assert kinds(poll(e, 6, voltage_a=201.0)) == ["voltage_low_cleared"]


def test_voltage_absent_phase_not_judged() -> None:
    e = AlarmEngine()
    assert poll(e, 0, voltage_a=221.0, voltage_b=0.0, voltage_c=220.0) == []


# -- current, power factor ------------------------------------------------------------


def test_current_imbalance() -> None:
    e = AlarmEngine()
    assert poll(e, 0, current_a=10.0, current_b=9.0, current_c=8.0) == []  # 20 %
    ev = poll(e, 1, current_a=10.0, current_b=-9.0, current_c=5.0)  # 50 %, sign ignored
    assert kinds(ev) == ["current_imbalance"] and ev[0].value == pytest.approx(50.0)
    assert poll(e, 2, current_a=0.5, current_b=0.0, current_c=0.0) == []  # too little load
    assert poll(e, 3, current_a=10.0, current_b=9.0, current_c=7.2) == []  # 28 %: hysteresis
    assert kinds(poll(e, 4, current_a=10.0, current_b=9.0, current_c=8.0)) == [
        "current_imbalance_cleared"]


def test_current_imbalance_needs_three_phases() -> None:
    e = AlarmEngine()
    assert poll(e, 0, current_a=10.0) == []


def test_low_power_factor() -> None:
    e = AlarmEngine()
    ev = poll(e, 0, power_factor_total=0.3, power_active_total=2.0)
    assert kinds(ev) == ["low_power_factor"] and ev[0].value == pytest.approx(0.3)
    assert poll(e, 1, power_factor_total=0.2, power_active_total=2.0) == []
    assert kinds(poll(e, 2, power_factor_total=0.9, power_active_total=2.0)) == [
        "low_power_factor_cleared"]
    # No meaningful power: not judged.  No power reading at all: judged.
    e2 = AlarmEngine()
    assert poll(e2, 0, power_factor_total=0.1, power_active_total=0.05) == []
    assert kinds(poll(e2, 1, power_factor_total=-0.4)) == ["low_power_factor"]


# -- counters ---------------------------------------------------------------------------


def test_counters_event_each_increase() -> None:
    e = AlarmEngine()
    assert poll(e, 0, power_down_count=12, cover_open_count=0) == []  # baseline
    assert poll(e, 1, power_down_count=12, cover_open_count=0) == []
    ev = poll(e, 2, power_down_count=13, cover_open_count=1)
    assert kinds(ev) == ["power_down_counter", "cover_open_counter"]
    assert [x.severity for x in ev] == [1, 2]
    assert [x.value for x in ev] == [13, 1]
    assert kinds(poll(e, 3, power_down_count=15)) == ["power_down_counter"]


# -- relay ------------------------------------------------------------------------------


def test_relay_unexpected() -> None:
    e = AlarmEngine()
    r = [rd("status_word_3", HOLD, 0)]
    ev = e.observe(M, r, expected_relay_open=True)
    assert kinds(ev) == ["relay_unexpected"] and ev[0].severity == 2
    assert "hold power" in ev[0].detail
    assert e.observe(M, [rd("status_word_3", HOLD, 1)], expected_relay_open=True) == []
    assert e.observe(M, [rd("status_word_3", 0, 2)]) == []  # nothing expected: not judged
    ev = e.observe(M, [rd("status_word_3", RELAY_OPEN | TRIP_CMD, 3)],
                   expected_relay_open=True)
    assert kinds(ev) == ["relay_unexpected_cleared"]
    assert relay_bits(RELAY_OPEN | TRIP_CMD) == (True, True, False)


# -- once per condition, disabled rules, quality ------------------------------------


def test_disabled_rule_and_skipped_quality() -> None:
    e = AlarmEngine(AlarmSettings(rules=frozenset(RULES) - {"voltage_high"}))
    assert poll(e, 0, voltage_a=250.0) == []
    e2 = AlarmEngine()
    assert e2.observe(M, [rd("voltage_a", 250.0, quality=Quality.ESTIMATED)]) == []
    assert e2.observe(M, [rd("voltage_a", float("nan"))]) == []


def test_state_survives_restart() -> None:
    e = AlarmEngine()
    poll(e, 0, energy_active_forward_total=10.0, status_word_3=0, cover_open_count=2,
         voltage_a=240.0)
    data = json.loads(json.dumps(e.state_dump()))
    e2 = AlarmEngine()
    e2.state_load(data)
    assert e2.active(M) == {"voltage_high:a"}
    assert poll(e2, 1, voltage_a=241.0, cover_open_count=2) == []
    assert kinds(poll(e2, 72, energy_active_forward_total=10.0)) == ["zero_use"]
    with pytest.raises(ValueError):
        e2.state_load({"version": 99, "meters": {}})


# -- comm loss, schedules ---------------------------------------------------------------


def test_comm_loss_at_exactly_n_then_restored() -> None:
    c = CommLossTracker(3)
    assert c.failure(M, "bus1", at(0)) is None
    assert c.failure(M, "bus1", at(1)) is None
    ev = c.failure(M, "bus1", at(2))
    assert ev is not None and ev.kind == "comm_loss" and ev.value == 3 and ev.bus == "bus1"
    assert c.failure(M, "bus1", at(3)) is None  # no storm
    ev = c.success(M, at(4))
    assert ev is not None and ev.kind == "comm_restored" and ev.severity == 0
    assert ev.value == 4 and ev.bus == "bus1"
    assert c.success(M, at(5)) is None
    c.failure(M, "bus1", at(6))
    c.failure(M, "bus1", at(7))
    assert c.success(M, at(8)) is None  # short of N: nothing to restore
    assert c.failure(M, "bus1", at(9)) is None  # count restarted


def test_schedule_overdue() -> None:
    end = at(1)
    assert schedule_overdue("daily", end, False, at(0.5)) is None
    assert schedule_overdue("daily", end, True, at(2)) is None
    ev = schedule_overdue("daily", end, False, at(1.5))
    assert ev is not None and ev.kind == "schedule_overdue" and ev.value == pytest.approx(30)
    w = ScheduleWatch()
    assert w.check("daily", end, False, at(1.5)) is not None
    assert w.check("daily", end, False, at(2)) is None  # once per window
    assert w.check("daily", at(25), False, at(26)) is not None

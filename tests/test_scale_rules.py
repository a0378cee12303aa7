"""The alarm engine's "is the bus up" judgement looks at the meter's own bus only."""

from __future__ import annotations

import datetime as dt

from collector.polling.rules import AlarmEngine
from collector.store.records import Reading

T0 = dt.datetime(2026, 12, 5, 12, 0, tzinfo=dt.UTC)


def poll(engine: AlarmEngine, meter: str, bus: str, at: dt.datetime) -> None:
    engine.observe(meter, [Reading(meter, "voltage_a", 220.0, "V", at)], bus=bus)


def test_bus_up_counts_other_meters_of_the_same_bus_within_the_window() -> None:
    engine = AlarmEngine()
    window = dt.timedelta(seconds=engine.settings.bus_up_window_s)
    for b in range(50):  # a fleet around it: none of it is on bus b1
        poll(engine, f"x{b}", f"c{b}", T0)
    poll(engine, "m1", "b1", T0)
    assert engine.bus_up("m2", "b1", T0 + window / 2)
    assert not engine.bus_up("m1", "b1", T0)  # a meter alone does not vouch for its bus
    assert not engine.bus_up("m2", "b2", T0)
    assert not engine.bus_up("m2", "b1", T0 + 2 * window)


def test_a_meter_moved_to_another_bus_counts_there_only_and_forget_drops_it() -> None:
    engine = AlarmEngine()
    poll(engine, "m1", "b1", T0)
    poll(engine, "m1", "b2", T0)
    assert not engine.bus_up("m2", "b1", T0)
    assert engine.bus_up("m2", "b2", T0)
    engine.forget("m1")
    assert not engine.bus_up("m2", "b2", T0)


def volts(engine: AlarmEngine, meter: str, at: dt.datetime, **phases: float) -> list[str]:
    rows = [Reading(meter, f"voltage_{p}", v, "V", at) for p, v in phases.items()]
    return [e.kind for e in engine.observe(meter, rows, bus="b1")]


def test_meters_sharing_a_state_keep_their_own_wired_phases_and_alarms() -> None:
    # The per-meter condition sets are shared between meters in the same state: a
    # change to one meter's must never show in another's.
    engine = AlarmEngine()
    poll(engine, "witness", "b1", T0)  # another meter of the bus answers
    assert volts(engine, "m3", T0, a=220, b=221, c=219) == []
    assert volts(engine, "m1", T0, a=220, b=0.0, c=0.0) == []  # b, c never wired
    assert volts(engine, "m3", T0, a=220, b=0.0, c=219) == ["voltage_loss"]
    assert engine.active("m3") == {"voltage_loss:b"}
    assert engine.active("m1") == frozenset()
    assert volts(engine, "m1", T0, a=220, b=0.0, c=0.0) == []
    assert volts(engine, "m3", T0, a=220, b=220, c=219) == ["voltage_loss_cleared"]
    assert engine.active("m3") == frozenset()

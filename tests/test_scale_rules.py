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

"""AFN0D F97-F100 of the concentrator simulator: 15-min energy curves from the meter
model's load curve, read by the master station over loopback TCP."""

from __future__ import annotations

import datetime as dt
import math
from decimal import Decimal

from drivers.qgdw3761 import MasterStation, TerminalId, units_by_fn
from protocols.qgdw3761 import AFN, Curve, CurveTag, DataUnit
from simulators.concentrator import ConcentratorSimulator
from simulators.meter import ManualClock, MeterConfig

NOW = dt.datetime(2024, 5, 6, 10, 30, 15)  # the meters' (and terminal's) clock
A1 = "4401"
TID = TerminalId(A1, 3)
QUARTER = Decimal("0.0001")


async def read_curves(tag: CurveTag, *fns: int, pn: int = 1) -> tuple[list[Curve], Decimal,
                                                                       list[Decimal]]:
    """Curves Fn of point ``pn``, the meter's base kW and its freezes 1-2 (forward total)."""
    clock = ManualClock(NOW)
    async with MasterStation("127.0.0.1", 0, terminals=lambda t: t == TID) as master:
        sim = ConcentratorSimulator("127.0.0.1", master.port, a1=A1, a2=3, meters=2,
                                    clock=clock, config=MeterConfig(prepaid=False))
        sim.start()
        try:
            session = await master.wait_online(TID, 5)
            units = await session.request(AFN.CLASS2, [DataUnit(pn, fn, tag) for fn in fns])
        finally:
            await sim.stop()
    values = units_by_fn(units)
    meter = sim.meter(1)
    assert meter is not None
    freezes = [Decimal(str(meter.model.read("freeze_daily_energy_active_forward_total",
                                             freeze=n))) for n in (1, 2)]
    return [values[(pn, fn)] for fn in fns], meter.model.base_kw, freezes


async def test_yesterdays_96_points_add_up_to_the_days_frozen_usage() -> None:
    yesterday = NOW.replace(hour=0, minute=0, second=0) - dt.timedelta(days=1)
    tag = CurveTag(yesterday, 1, 96)  # density 1: 15 min
    (f97, f98, f99, f100), _, (today, before) = await read_curves(tag, 97, 98, 99, 100)
    assert all(c.tag == tag and len(c.values) == 96 for c in (f97, f98, f99, f100))
    assert None not in f97.values and all(v is not None and v > 0 for v in f97.values)
    # the day's usage is what the freezes at 00:00 of today and of yesterday differ by
    day = sum(v for v in f97.values if v is not None)
    assert abs(day - (today - before)) <= Decimal("0.01")
    tan_phi = Decimal(math.tan(math.acos(0.95)))  # MeterConfig's power factor
    for p, q in zip(f97.values, f99.values, strict=True):
        assert p is not None and q is not None and abs(q - p * tan_phi) <= QUARTER
    # the model's meters never export: no reverse energy
    assert set(f98.values) == set(f100.values) == {Decimal(0)}


async def test_points_not_over_yet_are_absent_and_a_quarter_is_a_quarter_hour() -> None:
    midnight = NOW.replace(hour=0, minute=0, second=0)
    tag = CurveTag(midnight, 1, 48)  # 00:00-12:00 today; it is 10:30:15
    (f97,), base_kw, _ = await read_curves(tag, 97)
    done = [v for v in f97.values if v is not None]
    assert len(done) == 42 and f97.values[42:] == (None,) * 6  # 10:30-10:45 is not over
    hour_kw = [base_kw * Decimal(str(f)) for f in MeterConfig().load_curve]
    for i, v in enumerate(done):
        assert v == (hour_kw[i // 4] / 4).quantize(QUARTER)
    # hourly density, and a point without a meter
    (hourly,), _, _ = await read_curves(CurveTag(midnight, 3, 2), 97)
    assert hourly.values == tuple(k.quantize(QUARTER) for k in hour_kw[:2])
    (nobody,), _, _ = await read_curves(CurveTag(midnight, 1, 4), 97, pn=9)
    assert nobody.values == (None,) * 4

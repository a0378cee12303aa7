"""A load curve read through a concentrator: the meter's own 0610xxxx records, every frame
(follow-ups too) forwarded by AFN10 F1 from the concentrator simulator."""

from __future__ import annotations

import datetime as dt
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from drivers.concentrator_meter import ConcentratorMeter, concentrator_line
from drivers.device import MeterRef, Route
from drivers.meters import open_meter
from drivers.qgdw3761 import MasterStation, TerminalId
from simulators.concentrator import ConcentratorSimulator, meter_address
from simulators.meter import ManualClock

TID = TerminalId("4403", 7)
NOW = dt.datetime(2024, 5, 6, 12, 0, 0)


@asynccontextmanager
async def fleet() -> AsyncIterator[tuple[MasterStation, ConcentratorSimulator]]:
    async with MasterStation("127.0.0.1", 0, terminals=lambda t: t == TID,
                             request_timeout=1.0, retries=0) as master:
        sim = ConcentratorSimulator("127.0.0.1", master.port, a1=TID.a1, a2=TID.a2,
                                    meters=2, seed=5, clock=ManualClock(NOW))
        async with sim:
            await master.wait_online(TID, 5)
            yield master, sim


async def test_curve_through_the_concentrator_keeps_the_gap() -> None:
    async with fleet() as (master, sim):
        simulated = sim.meter(2)
        assert simulated is not None
        simulated.model.power_down(dt.datetime(2024, 5, 5, 8, 0), dt.datetime(2024, 5, 5, 9, 0))
        meter = open_meter(concentrator_line(master, TID),
                           MeterRef("m2", "dlt645-2007", meter_address(TID.a2, 2),
                                    route=Route(2)))
        assert isinstance(meter, ConcentratorMeter)
        assert "energy_active_forward_total" in meter.capabilities.curve
        day = dt.datetime(2024, 5, 5)
        got = await meter.read_curve(["energy_active_forward_total"], day,
                                     day + dt.timedelta(days=1), tz=dt.UTC)
        assert len(got.points) == 96
        assert got.gaps == [dt.datetime(2024, 5, 5, 8, m) for m in (0, 15, 30, 45)]
        assert len(got.readings) == 92
        assert got.readings[0].meter_ts == dt.datetime(2024, 5, 5, tzinfo=dt.UTC)
        expected = simulated.model.curve(day, 1)[0][1]
        assert expected is not None
        assert got.readings[0].value == float(expected["energy_active_forward_total"])
        # 96 points of 4 bytes (389 bytes after the DI): a first frame and one follow-up.
        assert simulated.counters["follow_up_started"] == 1
        assert meter.requests == 2

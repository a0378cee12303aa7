"""Meters behind the concentrator simulator (simulators/concentrator.py), read through the
device model from a MasterStation on loopback TCP."""

from __future__ import annotations

import datetime as dt
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from decimal import Decimal

from drivers.concentrator_meter import ConcentratorMeter, concentrator_line
from drivers.device import Credentials, MeterRef, Route
from drivers.meters import open_meter
from drivers.options import CallOptions
from drivers.qgdw3761 import MasterStation, TerminalId
from simulators.concentrator import ConcentratorSimulator, meter_address
from simulators.meter import ManualClock, MeterModel

TID = TerminalId("4403", 7)
NOW = dt.datetime(2024, 5, 6, 12, 0, 0)


def num(model: MeterModel, name: str, **kw: int) -> float:
    v = model.read(name, **kw)
    assert isinstance(v, Decimal)
    return float(v)


@asynccontextmanager
async def fleet() -> AsyncIterator[tuple[MasterStation, ConcentratorSimulator]]:
    async with MasterStation("127.0.0.1", 0, terminals=lambda t: t == TID,
                             request_timeout=1.0, retries=0) as master:
        sim = ConcentratorSimulator("127.0.0.1", master.port, a1=TID.a1, a2=TID.a2,
                                    meters=3, seed=5, clock=ManualClock(NOW))
        async with sim:
            await master.wait_online(TID, 5)
            yield master, sim


def meter_at(master: MasterStation, pn: int) -> ConcentratorMeter:
    m = open_meter(concentrator_line(master, TID),
                   MeterRef(f"m{pn}", "dlt645-2007", meter_address(TID.a2, pn),
                            route=Route(pn)))
    assert isinstance(m, ConcentratorMeter)
    return m


async def test_class1_forwarded_relay_and_freezes_against_the_simulator() -> None:
    async with fleet() as (master, sim):
        meter = meter_at(master, 2)
        model_meter = sim.meter(2)
        assert model_meter is not None
        model = model_meter.model
        asked = ["energy_active_forward_total", "voltage_a", "current_a",
                 "power_active_total", "status_word_3", "balance_amount"]
        got = await meter.read(asked, CallOptions(retries=1))
        assert not got.failed and [r.quantity for r in got.readings] == asked
        by = {r.quantity: r.value for r in got.readings}
        for q in ("energy_active_forward_total", "voltage_a", "current_a",
                  "power_active_total", "balance_amount"):
            assert by[q] == num(model, q), q
        assert by["status_word_3"] == model.status_word(3)

        creds = Credentials("02000000", "00000001", NOW + dt.timedelta(hours=1))
        plan = meter.relay_plan("trip")
        await meter.relay(plan, creds)
        assert plan.expected(await meter.relay_state()) and model.relay_open

        freeze = await meter.read_freeze(1, tz=dt.UTC)
        assert freeze.taken == dt.datetime(2024, 5, 6)
        total = {r.quantity: r.value for r in freeze.readings}
        assert total["freeze_daily_energy_active_forward_total"] == num(
            model, "freeze_daily_energy_active_forward_total", freeze=1)
        await meter.ping()

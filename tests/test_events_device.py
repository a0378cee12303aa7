"""Event records and maximum demand through the device model (drivers.device):
DL/T645-2007 over TCP, behind a concentrator, and the kinds that keep none."""

from __future__ import annotations

import datetime as dt
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from decimal import Decimal
from zoneinfo import ZoneInfo

import pytest

from drivers.device import Line, Meter, MeterRef, Unsupported
from drivers.meters import open_meter
from drivers.tcp import TcpBus
from simulators.bus import BusServer
from simulators.dlt645 import SimulatedMeter
from simulators.meter import ManualClock, MeterConfig, MeterModel

ADDR = "000000000001"
T0 = dt.datetime(2026, 3, 2, 8, 0)
SHANGHAI = ZoneInfo("Asia/Shanghai")


@asynccontextmanager
async def meter_on_bus(kind: str = "dlt645-2007"
                       ) -> AsyncIterator[tuple[MeterModel, Meter, ManualClock]]:
    clock = ManualClock(T0)
    model = MeterModel(ADDR, MeterConfig(base_kw=Decimal(2)), seed=1, clock=clock)
    async with BusServer([SimulatedMeter(model, version=kind.removeprefix("dlt645-"))],
                         baud=9600, td=0.01) as srv, \
            TcpBus("127.0.0.1", srv.port, td=0.3, tb=0.2) as bus:
        yield model, open_meter(Line(bus), MeterRef("m1", kind, ADDR)), clock


def utc(local: dt.datetime) -> dt.datetime:
    return local.replace(tzinfo=SHANGHAI).astimezone(dt.UTC)


async def test_phase_a_voltage_loss_and_cover_open_records_with_meter_times() -> None:
    async with meter_on_bus() as (model, meter, _clock):
        assert "cover_open" in meter.event_kinds()
        loss_start, loss_end = T0 - dt.timedelta(hours=3), T0 - dt.timedelta(hours=2)
        model.lose_voltage("a", loss_start, loss_end)
        cover_at = T0 - dt.timedelta(minutes=30)
        model.open_cover(cover_at)
        got = await meter.read_events({"voltage_loss_a": 10, "cover_open": 10,
                                       "voltage_loss_b": 10}, tz=SHANGHAI)
        assert not got.failed and not got.refused
        by_kind = {e.kind: e for e in got.events}
        assert set(by_kind) == {"voltage_loss_a", "cover_open"}  # phase B: no record
        loss = by_kind["voltage_loss_a"]
        assert (loss.n, loss.start, loss.end) == (1, utc(loss_start), utc(loss_end))
        cover = by_kind["cover_open"]
        assert cover.start == utc(cover_at) and cover.end is None
        assert cover.detail["before_forward_kwh"] > 0
        # counters come with an ordinary read
        read = await meter.read(["cover_open_count", "voltage_loss_count_a"])
        values = {r.quantity: r.value for r in read.readings}
        assert values["voltage_loss_count_a"] == 1
        assert values["cover_open_count"] == model.cover_open_count


async def test_only_as_many_records_as_asked_newest_first() -> None:
    async with meter_on_bus() as (model, meter, _clock):
        for h in (5, 4, 3):
            model.power_down_event(T0 - dt.timedelta(hours=h),
                                   T0 - dt.timedelta(hours=h, minutes=-2))
        got = await meter.read_events({"power_down": 2}, tz=SHANGHAI)
        assert [(e.n, e.start) for e in got.events] == [
            (1, utc(T0 - dt.timedelta(hours=3))), (2, utc(T0 - dt.timedelta(hours=4)))]


async def test_demand_is_a_reading_timed_by_its_peak() -> None:
    async with meter_on_bus() as (model, meter, _clock):
        peak = T0 - dt.timedelta(minutes=15)
        model.demand_peak(Decimal("6.25"), peak)
        got = await meter.read(["demand_active_forward_total", "voltage_a"])
        assert not got.failed
        demand = got.readings[0]
        assert demand.quantity == "demand_active_forward_total" and demand.unit == "kW"
        assert demand.value == 6.25
        # the peak's time, meter local time taken in the collector's zone as every
        # DL/T645 meter_ts of a plain read
        assert demand.meter_ts == peak.astimezone().astimezone(dt.UTC)
        assert got.readings[1].meter_ts is None


async def test_dlt645_1997_keeps_no_event_records() -> None:
    async with meter_on_bus("dlt645-1997") as (_model, meter, _clock):
        assert meter.event_kinds() == frozenset()
        with pytest.raises(Unsupported):
            await meter.read_events({"cover_open": 1})


async def test_a_meter_behind_a_concentrator_reads_its_records_through_forwarding() -> None:
    from test_concentrator_meter import concentrator, opened

    async with concentrator() as (master, conc):
        behind = opened(master)
        model = conc.meters[1].model
        at = model.now() - dt.timedelta(hours=1)
        model.open_cover(at, at + dt.timedelta(minutes=2))
        assert behind.event_kinds() == frozenset(
            open_meter(Line(behind.line.bus), MeterRef("x", "dlt645-2007", ADDR)).event_kinds())
        got = await behind.read_events({"cover_open": 1}, tz=SHANGHAI)
        assert [(e.kind, e.start, e.end) for e in got.events] == [
            ("cover_open", utc(at), utc(at + dt.timedelta(minutes=2)))]
        assert conc.forwarded  # AFN10 forwarding, not class-1 data


async def test_a_modbus_meter_keeps_no_event_records_and_nothing_is_sent() -> None:
    from collector.config.profiles import load_profile

    bus = TcpBus("127.0.0.1", 9)  # never opened: the refusal comes before any I/O
    meter = open_meter(Line(bus), MeterRef("mb", "modbus", "5",
                                           load_profile("acrel-ddsy1352")))
    assert meter.event_kinds() == frozenset()
    with pytest.raises(Unsupported):
        await meter.read_events({"cover_open": 1})
    assert meter.requests == 0

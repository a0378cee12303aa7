"""Load curves: the simulated meter keeps one (with a gap while powered down) and the device
model reads it by time range over a real BusServer, follow-up frames and all."""

from __future__ import annotations

import datetime as dt
from collections.abc import AsyncIterator
from decimal import Decimal

import pytest

from drivers.device import Line, MeterRef, Unsupported
from drivers.meters import open_meter
from drivers.tcp import TcpBus
from protocols.dlt645 import (
    AbnormalReply,
    ReadFollowUpReply,
    ReadFollowUpRequest,
    ReadReply,
    ReadRequest,
    curve_item,
    curve_request_extra,
    decode_curve,
    decode_message,
)
from protocols.readings import Quality
from simulators.bus import BusServer
from simulators.dlt645 import SimulatedMeter, make_meters
from simulators.meter import ManualClock, MeterModel

ADDR = "000000000001"


def test_model_curve_has_96_points_a_day_and_a_gap() -> None:
    clock = ManualClock(dt.datetime(2024, 3, 5, 10, 7, 30))
    model = MeterModel(ADDR, seed=1, clock=clock)
    model.power_down(dt.datetime(2024, 3, 4, 10, 0), dt.datetime(2024, 3, 4, 11, 0))
    day = model.curve(dt.datetime(2024, 3, 4), 96)
    assert len(day) == 96
    assert [at for at, v in day if v is None] == [
        dt.datetime(2024, 3, 4, 10, m) for m in (0, 15, 30, 45)]
    energy = [v["energy_active_forward_total"] for _, v in day if v is not None]
    assert energy == sorted(energy) and energy[-1] > energy[0]
    assert all(200 < v["voltage_a"] < 240 for _, v in day if v is not None)
    # Points stop at the meter's present: 10:07:30 has 00:00 .. 10:00 of today.
    today = model.curve(dt.datetime(2024, 3, 5), 96)
    assert today[-1][0] == dt.datetime(2024, 3, 5, 10, 0) and len(today) == 41


def test_model_records_new_points_and_a_future_power_down() -> None:
    clock = ManualClock(dt.datetime(2024, 3, 5, 10, 7, 30))
    model = MeterModel(ADDR, seed=1, clock=clock)
    model.power_down(dt.datetime(2024, 3, 5, 10, 30), dt.datetime(2024, 3, 5, 11, 0))
    before = model.read("energy_active_forward_total")
    assert isinstance(before, Decimal)
    clock.advance(3600)
    points = dict(model.curve(dt.datetime(2024, 3, 5, 10, 15), 10))
    assert list(points) == [dt.datetime(2024, 3, 5, 10, m) for m in (15, 30, 45)] + \
        [dt.datetime(2024, 3, 5, 11, 0)]
    assert points[dt.datetime(2024, 3, 5, 10, 30)] is None
    assert points[dt.datetime(2024, 3, 5, 10, 45)] is None
    at_10_15 = points[dt.datetime(2024, 3, 5, 10, 15)]
    at_11 = points[dt.datetime(2024, 3, 5, 11, 0)]
    assert at_10_15 is not None and at_11 is not None
    # No energy while powered down: 10:15 to 11:00 adds a quarter hour's worth only.
    quarter = at_10_15["energy_active_forward_total"] - before
    assert Decimal(0) < at_11["energy_active_forward_total"] - at_10_15[
        "energy_active_forward_total"] <= quarter * 2 + Decimal("0.02")


@pytest.fixture
async def line() -> AsyncIterator[tuple[BusServer, Line]]:
    sims = make_meters([ADDR], seed=3)
    yesterday = dt.datetime.combine(dt.date.today() - dt.timedelta(days=1), dt.time())
    sims[0].model.power_down(yesterday.replace(hour=3), yesterday.replace(hour=4, minute=30))
    async with BusServer(sims, baud=19200, td=0.002) as server, \
            TcpBus("127.0.0.1", server.port, td=0.5, tb=0.3) as bus:
        yield server, Line(bus)


async def test_read_a_day_through_the_device_model(line: tuple[BusServer, Line]) -> None:
    server, ln = line
    meter = open_meter(ln, MeterRef("m1", "dlt645-2007", ADDR))
    assert "voltage_a" in meter.capabilities.curve
    day = dt.datetime.combine(dt.date.today() - dt.timedelta(days=1), dt.time())
    got = await meter.read_curve(["energy_active_forward_total", "voltage_a", "frequency"],
                                 day, day + dt.timedelta(days=1))
    assert got.refused == ["frequency"]
    assert len(got.points) == 96 and got.points[0] == day
    assert got.gaps == [day.replace(hour=3, minute=m) for m in (0, 15, 30, 45)] + \
        [day.replace(hour=4, minute=m) for m in (0, 15)]
    energy = [r for r in got.readings if r.quantity == "energy_active_forward_total"]
    volts = [r for r in got.readings if r.quantity == "voltage_a"]
    assert len(energy) == len(volts) == 90
    assert energy[0].meter_ts == day.astimezone(dt.UTC) and energy[0].unit == "kWh"
    assert [r.value for r in energy] == sorted(r.value for r in energy)
    assert all(r.quality is Quality.GOOD and r.unit == "V" for r in volts)
    # The energy curve (4 bytes a point) does not fit one frame: follow-up frames.
    assert server.meters[0].counters["follow_up_started"] >= 1
    assert meter.requests >= 3


async def test_two_voltages_come_in_one_block(line: tuple[BusServer, Line]) -> None:
    _, ln = line
    meter = open_meter(ln, MeterRef("m1", "dlt645-2007", ADDR))
    now = dt.datetime.now().replace(second=0, microsecond=0)
    start = now - dt.timedelta(hours=2)
    got = await meter.read_curve(["voltage_a", "voltage_b"], start, now)
    assert 7 <= len(got.points) <= 8 and not got.gaps
    assert {r.quantity for r in got.readings} == {"voltage_a", "voltage_b"}
    assert meter.requests == 1  # 061001FF, not one request a phase


async def test_a_future_range_has_no_points(line: tuple[BusServer, Line]) -> None:
    _, ln = line
    meter = open_meter(ln, MeterRef("m1", "dlt645-2007", ADDR))
    start = dt.datetime.now() + dt.timedelta(hours=2)
    got = await meter.read_curve(["voltage_a"], start, start + dt.timedelta(hours=1))
    assert got.points == [] and got.readings == []


async def test_a_1997_meter_keeps_no_curve(line: tuple[BusServer, Line]) -> None:
    _, ln = line
    meter = open_meter(ln, MeterRef("m97", "dlt645-1997", "000000000097"))
    with pytest.raises(Unsupported, match="no load curve"):
        await meter.read_curve(["voltage_a"], dt.datetime(2024, 1, 1), dt.datetime(2024, 1, 2))


def test_simulated_meter_answers_frames_with_follow_ups_and_no_data() -> None:
    clock = ManualClock(dt.datetime(2024, 3, 5, 10, 7, 30))
    meter = SimulatedMeter(MeterModel(ADDR, seed=1, clock=clock))
    ask = ReadRequest(address=ADDR, di=0x06100601,
                      extra=curve_request_extra(dt.datetime(2024, 3, 4), 96))
    first = meter.handle(ask.to_frame())
    assert first is not None and first.control == 0xB1 and len(first.data) == 200
    reply = decode_message(first)
    assert isinstance(reply, ReadReply)
    follow = meter.handle(ReadFollowUpRequest(address=ADDR, di=0x06100601, seq=1).to_frame())
    assert follow is not None and follow.control == 0x92
    part = decode_message(follow)
    assert isinstance(part, ReadFollowUpReply) and part.seq == 1
    item = curve_item(0x06100601)
    assert item is not None
    points = decode_curve(item, reply.body + part.body)
    assert len(points) == 96 and points[0].at == dt.datetime(2024, 3, 4)
    # Nothing recorded from two hours ahead of the meter's clock: "no requested data".
    late = ReadRequest(address=ADDR, di=0x06100101,
                       extra=curve_request_extra(dt.datetime(2024, 3, 5, 12, 0), 4))
    refused = meter.handle(late.to_frame())
    assert refused is not None
    no_data = decode_message(refused)
    assert isinstance(no_data, AbnormalReply) and no_data.errors == ("no_requested_data",)

"""End to end: drivers/ against simulators/ over loopback TCP and a pseudo-terminal, with faults."""

from __future__ import annotations

import datetime as dt
import time
from collections.abc import AsyncIterator
from decimal import Decimal

import pytest

from drivers.bus import Bus
from drivers.dlt645 import Dlt645Session
from drivers.errors import BadReply, IncompleteReply, MeterError, NoReply, WrongReply
from drivers.serial import SerialBus
from drivers.tcp import TcpBus
from protocols.dlt645 import RelayCommand, StatusWord, Version
from simulators.bus import BusServer
from simulators.dlt645 import make_meters

ADDRESSES = [f"{i:012d}" for i in range(1, 7)]
GOOD, DEAD, GARBLE, SLOW, TRUNC, WRONG = ADDRESSES
FAULTS = f"dead:{DEAD},garble:{GARBLE},slow:{SLOW},truncate:{TRUNC},wrong-address:{WRONG}"
BAUD = 9600
PASSWORD = "02000000"  # the simulator's default level-02 password


@pytest.fixture(params=["tcp", "pty"])
async def line(request: pytest.FixtureRequest) -> AsyncIterator[tuple[BusServer, Bus]]:
    """A bus of six meters, five of them faulty, and a client Bus on it."""
    pty = request.param == "pty"
    server = BusServer(make_meters(ADDRESSES, seed=7), host=None if pty else "127.0.0.1",
                       pty=pty, baud=BAUD, td=0.02, faults=FAULTS, slow_delay=1.0)
    async with server:
        bus: Bus
        if pty:
            assert server.pty_path is not None
            # Linux ptys refuse PARENB, so the pty line runs 8N1; TCP carries 8E1 timing.
            bus = SerialBus(server.pty_path, baud=BAUD, parity="N", td=0.3, tb=0.2)
        else:
            bus = TcpBus("127.0.0.1", server.port, td=0.3, tb=0.2)
        async with bus:
            yield server, bus


async def test_reads_over_the_line(line: tuple[BusServer, Bus]) -> None:
    _, bus = line
    s = Dlt645Session(bus, retries=0)
    energy = await s.read(GOOD, "energy_active_forward_total")
    assert isinstance(energy.value, Decimal) and energy.value > 0 and energy.unit == "kWh"
    readings = await s.read_many(GOOD, ["voltage_a", "voltage_b", "voltage_c"])
    for r in readings:
        assert isinstance(r.value, Decimal)
        assert Decimal(190) < r.value < Decimal(250), r
    freq = await s.read(GOOD, 0x02800002)
    assert isinstance(freq.value, Decimal) and abs(freq.value - 50) < 1
    again = await s.read(GOOD, "energy_active_forward_total")
    assert isinstance(again.value, Decimal) and again.value >= energy.value


async def test_each_fault_is_a_typed_error(line: tuple[BusServer, Bus]) -> None:
    server, bus = line
    s = Dlt645Session(bus, retries=0)
    with pytest.raises(NoReply):
        await s.read(DEAD, "voltage_a")
    with pytest.raises(BadReply, match="garbled"):  # checksum fails
        await s.read(GARBLE, "voltage_a")
    with pytest.raises(NoReply):  # slower than Td
        await s.read(SLOW, "voltage_a")
    with pytest.raises(IncompleteReply):
        await s.read(TRUNC, "voltage_a")
    with pytest.raises(WrongReply) as wrong:
        await s.read(WRONG, "voltage_a")
    assert wrong.value.expected == WRONG
    # After every fault the line still serves the good meter.
    r = await s.read(GOOD, "voltage_a")
    assert isinstance(r.value, Decimal)
    assert server.stats.requests >= 6


async def test_slow_meter_answers_with_a_longer_td(line: tuple[BusServer, Bus]) -> None:
    _, bus = line
    s = Dlt645Session(bus, retries=0, td=1.5)
    r = await s.read(SLOW, "voltage_a")
    assert isinstance(r.value, Decimal)


async def test_unknown_di_is_a_meter_error(line: tuple[BusServer, Bus]) -> None:
    _, bus = line
    with pytest.raises(MeterError) as e:
        await Dlt645Session(bus).read(GOOD, 0x04A00101)
    assert e.value.errors == ("no_requested_data",)


async def test_remote_trip_and_restore_show_in_status_word_3(line: tuple[BusServer, Bus]) -> None:
    server, bus = line
    s = Dlt645Session(bus, retries=0)
    meter_now = server.meter(GOOD).model.now()
    expiry = meter_now + dt.timedelta(minutes=10)
    await s.remote_control(GOOD, RelayCommand.TRIP, password=PASSWORD, operator="00000001",
                           expiry=expiry)
    sw3 = (await s.read(GOOD, "status_word_3")).value
    assert isinstance(sw3, StatusWord)
    assert sw3.fields["relay_open"] == 1 and sw3.fields["relay_command_open"] == 1
    power = (await s.read(GOOD, "power_active_total")).value
    assert power == 0
    with pytest.raises(MeterError) as refused:
        await s.remote_control(GOOD, RelayCommand.CLOSE_DIRECT, password="02999999",
                               expiry=expiry)
    assert refused.value.errors == ("unauthorised",)
    await s.remote_control(GOOD, RelayCommand.CLOSE_DIRECT, password=PASSWORD, expiry=expiry)
    sw3 = (await s.read(GOOD, "status_word_3")).value
    assert isinstance(sw3, StatusWord) and sw3.fields["relay_open"] == 0
    # An expired command is refused by the meter.
    with pytest.raises(MeterError):
        await s.remote_control(GOOD, RelayCommand.TRIP, password=PASSWORD,
                               expiry=meter_now - dt.timedelta(minutes=1))


async def test_time_sync_moves_the_meter_clock(line: tuple[BusServer, Bus]) -> None:
    server, bus = line
    s = Dlt645Session(bus)
    target = server.meter(GOOD).model.now() + dt.timedelta(minutes=5)
    await s.broadcast_time(target)
    await bus.send(b"")  # let the broadcast drain before the next request
    t = (await s.read(GOOD, "meter_time")).value
    assert isinstance(t, dt.time)
    got = dt.datetime.combine(target.date(), t)
    assert abs((got - target).total_seconds()) < 5


async def test_1997_meters() -> None:
    server = BusServer(make_meters(ADDRESSES[:1], version=Version.V1997), baud=BAUD, td=0.02)
    async with server, TcpBus("127.0.0.1", server.port, td=0.3) as bus:
        s = Dlt645Session(bus, version=Version.V1997)
        energy = await s.read(GOOD, 0x9010)
        volts = await s.read(GOOD, "voltage_a")
        assert energy.name == "energy_active_forward_total" and energy.di_hex == "9010"
        assert isinstance(volts.value, Decimal) and 190 < volts.value < 250


async def test_read_address_with_wildcard() -> None:
    server = BusServer(make_meters(["202611240042"]), baud=BAUD, td=0.02)
    async with server, TcpBus("127.0.0.1", server.port, td=0.3) as bus:
        assert await Dlt645Session(bus).read_address() == "202611240042"


async def test_rs485_timing_at_2400_baud() -> None:
    # One read: request + reply bytes at 11 bits each, plus Td, is the floor.
    server = BusServer(make_meters(ADDRESSES[:1]), baud=2400, td=0.02)
    async with server, TcpBus("127.0.0.1", server.port, td=0.5) as bus:
        s = Dlt645Session(bus)
        await s.read(GOOD, "voltage_a")  # connect outside the timing
        t0 = time.perf_counter()
        await s.read(GOOD, "energy_active_forward_total")
        elapsed = time.perf_counter() - t0
    wire = (20 + 24) * 11 / 2400 + 0.02
    assert wire <= elapsed < wire + 0.15, elapsed

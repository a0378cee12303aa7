"""Dial-in DTUs over loopback TCP: registration, heartbeats, replacement, and meters read
through Dlt645Session and ModbusSession on a DialInBus."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager

import pytest

import protocols.dlt645 as d645
from collector.config.profiles import load_profile
from drivers.device import Line, MeterRef
from drivers.dialin import DialInBus, DialInListener, DtuEvent, RegistrationFormat
from drivers.dlt645 import Dlt645Session
from drivers.errors import NoReply
from drivers.meters import open_meter
from simulators.dlt645 import make_meters
from simulators.modbus import make_modbus_meters, rtu_reply

HEARTBEAT = b"\xfe\xfeHB"
FMT = RegistrationFormat.ascii(heartbeat=HEARTBEAT)
ADDR = "000000000001"


class Dtu:
    """A scripted DTU: registers, then answers each request with ``answer(request)``,
    sending a heartbeat packet before every reply."""

    def __init__(self, answer: Callable[[bytes], bytes]) -> None:
        self.answer = answer
        self.requests = 0
        self.task: asyncio.Task[None] | None = None
        self.writer: asyncio.StreamWriter | None = None

    async def dial(self, port: int, dtu_id: bytes) -> None:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        self.writer = writer
        writer.write(dtu_id)
        await writer.drain()
        self.task = asyncio.create_task(self._run(reader, writer))

    async def _run(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while data := await reader.read(4096):
                self.requests += 1
                writer.write(HEARTBEAT)
                await writer.drain()
                await asyncio.sleep(0.02)  # its own packet, as a DTU sends it
                reply = self.answer(data)
                if reply:
                    writer.write(reply)
                    await writer.drain()
        except ConnectionError:
            pass

    async def close(self) -> None:
        if self.writer is not None:
            self.writer.close()
        if self.task is not None:
            await self.task


def dlt645_answer() -> Callable[[bytes], bytes]:
    (meter,) = make_meters([ADDR], seed=4)

    def answer(request: bytes) -> bytes:
        reply = meter.handle(d645.parse_frame(request))
        return d645.build_frame(reply) if reply is not None else b""
    return answer


@asynccontextmanager
async def listening(**kw: object) -> AsyncIterator[tuple[DialInListener, list[DtuEvent]]]:
    events: list[DtuEvent] = []
    kw.setdefault("idle_timeout", 5.0)
    async with DialInListener("127.0.0.1", 0, registration=FMT,
                              known=lambda i: i.startswith("DTU"), on_event=events.append,
                              **kw) as listener:  # type: ignore[arg-type]
        yield listener, events


async def test_dlt645_meter_read_through_a_dtu_with_heartbeats_stripped() -> None:
    async with listening() as (listener, events):
        dtu = Dtu(dlt645_answer())
        bus = DialInBus(listener, "DTU0001", td=1.0, tb=0.3, connect_timeout=2)
        opening = asyncio.create_task(bus.open())  # waits for the DTU to dial in
        await asyncio.sleep(0.1)
        await dtu.dial(listener.port, b"DTU0001")
        try:
            assert await opening is True
            session = Dlt645Session(bus)
            value = await session.read(ADDR, "voltage_a")
            assert value.value is not None
            energy = await session.read(ADDR, "energy_active_forward_total")
            assert energy.value is not None
        finally:
            await bus.close()
        assert listener.online() == ["DTU0001"]
        c = listener.counters()
        assert c["registrations"] == 1 and c["heartbeats"] == dtu.requests == 2
        await dtu.close()
        await asyncio.sleep(0.05)
        assert [e.kind for e in events] == ["online", "offline"]
        assert listener.online() == []


async def test_modbus_meter_read_through_a_dtu() -> None:
    profile = load_profile("acrel-ddsy1352")
    (unit,) = make_modbus_meters(profile, [1], seed=2)
    async with listening() as (listener, _):
        dtu = Dtu(lambda request: rtu_reply(unit, request))
        await dtu.dial(listener.port, b"DTU-MB-7")
        async with DialInBus(listener, "DTU-MB-7", td=1.0, tb=0.3) as bus:
            meter = open_meter(Line(bus, modbus="rtu"), MeterRef("P1", "modbus", "1", profile))
            got = await meter.read(["voltage_a", "energy_active_combined_total"])
            assert not got.failed and len(got.readings) == 2, got
        assert unit.stats.requests >= 1
        await dtu.close()


async def test_reconnect_replaces_the_connection_and_the_bus_follows() -> None:
    async with listening() as (listener, events):
        first = Dtu(dlt645_answer())
        await first.dial(listener.port, b"DTU0001")
        async with DialInBus(listener, "DTU0001", td=1.0, tb=0.3,
                             reconnect_min=0.01) as bus:
            session = Dlt645Session(bus, retries=0)
            await session.read(ADDR, "voltage_a")
            second = Dtu(dlt645_answer())
            await second.dial(listener.port, b"DTU0001")
            await first.task  # type: ignore[misc]  # the listener closed the old socket
            await asyncio.sleep(0.05)
            # dropped while idle: the bus reopens on the new connection, nobody fails
            await session.read(ADDR, "voltage_a")
            assert second.requests == 1 and bus.link_drops == 1 and bus.connects == 2
        await asyncio.sleep(0.05)
        assert [e.kind for e in events] == ["online", "replaced"]  # no offline
        assert listener.online() == ["DTU0001"]
        await second.close()


async def test_unknown_dtu_refused_and_idle_dtu_dropped() -> None:
    async with listening(idle_timeout=0.3) as (listener, events):
        r, w = await asyncio.open_connection("127.0.0.1", listener.port)
        w.write(b"XYZ123")
        assert await asyncio.wait_for(r.read(), 2) == b""
        assert listener.counters()["refused_unknown"] == 1
        silent = Dtu(lambda request: b"")
        await silent.dial(listener.port, b"DTU0002")
        async with DialInBus(listener, "DTU0002", td=0.2, tb=0.1, guard=0) as bus:
            with pytest.raises(NoReply):
                await Dlt645Session(bus, retries=0).read(ADDR, "voltage_a")
        await asyncio.wait_for(silent.task, 2)  # type: ignore[arg-type]
        offline = [e for e in events if e.kind == "offline"]
        assert len(offline) == 1 and "nothing received for 0.3 s" in offline[0].reason
        assert listener.counters()["timeouts"] == 1


def test_registration_formats() -> None:
    fixed = RegistrationFormat.ascii(8)
    assert fixed.match(b"DTU0") is None  # not all of it yet
    assert fixed.match(b"DTU00001\x68") == ("DTU00001", 8)
    rx = RegistrationFormat.regex(rb"\xaa(?P<id>\d{6})\x55", heartbeat=rb"\xaa\x00\x55")
    assert rx.match(b"\xaa123456\x55") == ("123456", 8)
    assert rx.match(b"garbage") is None
    assert rx.strip(b"\xaa\x00\x55\xaa\x00\x55\x68\x01") == (b"\x68\x01", 2)


async def test_a_lazy_open_does_not_wait_for_an_offline_dtu_and_a_read_then_finds_it() -> None:
    async with listening() as (listener, _):
        bus = DialInBus(listener, "DTU0003", td=1.0, tb=0.3, connect_timeout=2.0,
                        reconnect_min=0.0)
        t0 = asyncio.get_running_loop().time()
        assert await bus.open(lazy=True) is False
        assert asyncio.get_running_loop().time() - t0 < 0.5  # not the 1.8 s a read waits
        dtu = Dtu(dlt645_answer())
        # a read waits (up to connect_timeout) for the DTU to register
        read = asyncio.create_task(Dlt645Session(bus, retries=0).read(ADDR, "voltage_a"))
        await asyncio.sleep(0.2)
        await dtu.dial(listener.port, b"DTU0003")
        await asyncio.wait_for(read, 3)
        assert dtu.requests == 1 and bus.connects == 1
        await bus.close()
        await dtu.close()


async def test_hang_up_closes_a_dtu_and_says_why() -> None:
    async with listening() as (listener, events):
        dtu = Dtu(dlt645_answer())
        await dtu.dial(listener.port, b"DTU0004")
        await asyncio.sleep(0.05)
        assert listener.hang_up("DTU0004", "no longer configured") is True
        await asyncio.wait_for(dtu.task, 2)  # type: ignore[arg-type]  # the DTU sees EOF
        await asyncio.sleep(0.05)
        assert [e.kind for e in events] == ["online", "offline"]
        assert events[1].reason == "no longer configured"
        assert listener.online() == [] and listener.hang_up("DTU0004", "again") is False

"""ModbusSession against pymodbus's own servers (TCP, RTU over TCP, RTU over a pty) and a
small scripted raw device for the faults pymodbus will not produce (other unit ids, bad
CRCs, garbage, silence)."""

from __future__ import annotations

import asyncio
import contextlib
import os
import random
import struct
import time
import tty
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from decimal import Decimal
from typing import Any, Unpack

import pytest
from fake_dlt645 import FakeMeter, Send
from pymodbus.constants import ExcCodes
from pymodbus.framer import FramerRTU, FramerType
from pymodbus.pdu import DecodePDU
from pymodbus.server import ModbusSerialServer, ModbusTcpServer
from pymodbus.simulator import DataType, SimAction, SimData, SimDevice

from drivers.bus import Bus, BusOptions
from drivers.dlt645 import DataValue, Dlt645Session
from drivers.errors import (
    BadReply,
    DriverError,
    IncompleteReply,
    MeterError,
    NoReply,
    ReplyError,
    UnknownQuantity,
    WrongReply,
)
from drivers.modbus import (
    EXCEPTION_REPLIES,
    Framing,
    GatewayNoReply,
    ModbusBusy,
    ModbusError,
    ModbusSession,
    exception_name,
)
from drivers.serial import SerialBus
from drivers.tcp import TcpBus
from protocols.dlt645 import FrameExtractor, decode_message
from protocols.modbus import Profile, Register, RelayControl, plan_reads

BUS_OPTIONS: BusOptions = {"td": 0.3, "tb": 0.05, "guard": 0.02, "reconnect_min": 0.01}
UNITS = (1, 2, 17)
PROFILE_UNIT = 3
BUSY_UNIT = 5
GATEWAY_UNIT = 6

# ---- a pymodbus server ----------------------------------------------------------------------

PROFILE = Profile(
    name="test-meter", manufacturer="amic", model="T1", manual="inline test profile",
    registers=(
        Register("voltage_a", 3, 0, "uint16", "V", Decimal("0.1")),
        Register("current_a", 3, 1, "int16", "A", Decimal("0.01")),
        Register("energy_active_forward_total", 3, 2, "uint32", "kWh", Decimal("0.01")),
        Register("power_active_total", 3, 10, "int32", "kW", Decimal("0.001"),
                 word_order="little"),
        Register("frequency", 4, 0, "float32", "Hz"),
    ),
    relay=RelayControl(kind="register", address=20, trip=1, close=0, readback_function=3,
                       readback_address=20, readback_bit=0, open_when=1),
)
PROFILE_VALUES = {
    "voltage_a": Decimal("220.1"),
    "current_a": Decimal("-0.10"),
    "energy_active_forward_total": Decimal("655.38"),
    "power_active_total": Decimal("-1.500"),
    "frequency": Decimal("49.5"),
}
PROFILE_HOLDING = [2201, 0xFFF6, 0x0001, 0x0002, 0, 0, 0, 0, 0, 0, 0xFA24, 0xFFFF] + [0] * 9
PROFILE_INPUT = [0x4246, 0x0000, 0, 0]

COIL_PROFILE = Profile(
    name="coil-meter", manufacturer="amic", model="T2", manual="inline test profile",
    registers=(Register("voltage_a", 3, 0, "uint16", "V", Decimal("0.1")),),
    relay=RelayControl(kind="coil", address=3, trip=1, close=0),
)


def holding(unit: int) -> list[int]:
    return [unit * 100 + k for k in range(20)]


def inputs(unit: int) -> list[int]:
    return [unit * 1000 + k for k in range(20)]


@dataclass
class Recorder:
    """Writes the pymodbus devices saw: (unit, function, address, values)."""

    writes: list[tuple[int, int, int, list[int] | list[bool]]] = field(default_factory=list)

    def action(self, unit: int) -> SimAction:
        async def record(function: int, _start: int, address: int, _count: int,
                         _registers: list[int], values: list[int] | list[bool] | None
                         ) -> ExcCodes | None:
            if values is not None:
                self.writes.append((unit, function, address, list(values)))
            return None
        return record


def device(unit: int, hr: list[int], ir: list[int], recorder: Recorder,
           fail: ExcCodes | None = None) -> SimDevice:
    async def failing(_function: int, _start: int, _address: int, _count: int,
                      _registers: list[int], _values: list[int] | list[bool] | None
                      ) -> ExcCodes | None:
        return fail
    return SimDevice(
        unit,
        simdata=(
            [SimData(0, count=16, values=False, datatype=DataType.BITS)],
            [SimData(0, count=16, values=False, datatype=DataType.BITS)],
            [SimData(0, values=hr, datatype=DataType.REGISTERS)],
            [SimData(0, values=ir, datatype=DataType.REGISTERS)],
        ),
        action=failing if fail is not None else recorder.action(unit),
    )


def devices(recorder: Recorder) -> list[SimDevice]:
    out = [device(u, holding(u), inputs(u), recorder) for u in UNITS]
    out.append(device(PROFILE_UNIT, list(PROFILE_HOLDING), list(PROFILE_INPUT), recorder))
    out.append(device(BUSY_UNIT, holding(1), inputs(1), recorder, ExcCodes.DEVICE_BUSY))
    out.append(device(GATEWAY_UNIT, holding(1), inputs(1), recorder,
                      ExcCodes.GATEWAY_NO_RESPONSE))
    return out


@contextlib.asynccontextmanager
async def pymodbus_tcp(framer: FramerType, recorder: Recorder) -> AsyncIterator[int]:
    server = ModbusTcpServer(devices(recorder), framer=framer, address=("127.0.0.1", 0))
    await server.serve_forever(background=True)
    try:
        listener: Any = server.transport
        yield listener.sockets[0].getsockname()[1]
    finally:
        await server.shutdown()


@pytest.fixture
def recorder() -> Recorder:
    return Recorder()


@pytest.fixture(params=["tcp", "rtu"])
async def session(request: pytest.FixtureRequest, recorder: Recorder
                  ) -> AsyncIterator[ModbusSession]:
    """A session on pymodbus's TCP server: Modbus TCP, or RTU framing over TCP."""
    framing = request.param
    framer = FramerType.SOCKET if framing == "tcp" else FramerType.RTU
    async with pymodbus_tcp(framer, recorder) as port, \
            TcpBus("127.0.0.1", port, **BUS_OPTIONS) as bus:
        yield ModbusSession(bus, framing=framing)


# ---- reading ---------------------------------------------------------------------------------


async def test_read_holding_and_input_registers(session: ModbusSession) -> None:
    assert await session.read_registers(1, 3, 0, 10) == holding(1)[:10]
    assert await session.read_registers(1, 4, 5, 3) == inputs(1)[5:8]
    assert await session.read_registers(1, 3, 19, 1) == [119]
    c = session.counters()
    assert c["requests"] == 3 and c["frames"] == 3
    assert c["retried"] == c["no_replies"] == c["bad_replies"] == c["wrong_replies"] == 0


async def test_several_units_on_one_bus(session: ModbusSession) -> None:
    for unit in UNITS:
        assert await session.read_registers(unit, 3, 0, 4) == holding(unit)[:4]
        assert await session.read_registers(unit, 4, 10, 2) == inputs(unit)[10:12]


async def test_concurrent_callers_take_turns_on_the_line(session: ModbusSession) -> None:
    jobs = [session.read_registers(u, f, 0, 8) for _ in range(5) for u in UNITS for f in (3, 4)]
    results = await asyncio.gather(*jobs)
    expected = [holding(u)[:8] if f == 3 else inputs(u)[:8]
                for _ in range(5) for u in UNITS for f in (3, 4)]
    assert results == expected
    assert session.bus.transactions == len(jobs)


async def test_exception_reply_is_a_typed_meter_error(session: ModbusSession) -> None:
    with pytest.raises(ModbusError) as info:
        await session.read_registers(1, 3, 100, 5)
    e = info.value
    assert isinstance(e, MeterError)
    assert e.exception == "ILLEGAL_DATA_ADDRESS" and e.errors == ("ILLEGAL_DATA_ADDRESS",)
    assert e.code == 2 and e.function == 3 and e.unit == 1 and e.address == "1"
    assert "ILLEGAL_DATA_ADDRESS" in str(e)
    assert session.meter_errors == 1 and session.requests == 1  # refusals are not retried
    # The line is fine afterwards.
    assert await session.read_registers(1, 3, 0, 2) == holding(1)[:2]


async def test_busy_and_gateway_replies_are_not_refusals(session: ModbusSession) -> None:
    with pytest.raises(ModbusBusy) as busy:
        await session.read_registers(BUSY_UNIT, 3, 0, 2)
    assert not isinstance(busy.value, MeterError) and isinstance(busy.value, ReplyError)
    assert busy.value.exception == "SERVER_DEVICE_BUSY" and busy.value.code == 6
    assert session.requests == 1
    with pytest.raises(GatewayNoReply) as gateway:
        await session.read_registers(GATEWAY_UNIT, 3, 0, 2)
    assert isinstance(gateway.value, NoReply)
    assert gateway.value.exception == "GATEWAY_TARGET_DEVICE_FAILED_TO_RESPOND"
    assert session.requests == 3 and session.retried == 1  # a NoReply: retried once
    assert session.meter_errors == 3
    assert all(issubclass(c, DriverError) for c in EXCEPTION_REPLIES)
    assert exception_name(0x0C) == "EXCEPTION_0C"


# ---- writing ---------------------------------------------------------------------------------


async def test_write_register_and_read_it_back(session: ModbusSession,
                                               recorder: Recorder) -> None:
    await session.write_register(2, 7, 0xBEEF)
    assert await session.read_registers(2, 3, 6, 3) == [206, 0xBEEF, 208]
    assert recorder.writes == [(2, 6, 7, [0xBEEF])]
    assert session.requests == 2


async def test_write_coil(session: ModbusSession, recorder: Recorder) -> None:
    await session.write_coil(17, 4, True)
    await session.write_coil(17, 4, False)
    assert recorder.writes == [(17, 5, 4, [True]), (17, 5, 4, [False])]


async def test_write_exception(session: ModbusSession) -> None:
    with pytest.raises(ModbusError) as info:
        await session.write_register(1, 500, 1)
    assert info.value.function == 6 and info.value.exception == "ILLEGAL_DATA_ADDRESS"


# ---- profiles --------------------------------------------------------------------------------


async def test_read_profile(session: ModbusSession) -> None:
    names = list(PROFILE_VALUES)
    values = await session.read_profile(PROFILE_UNIT, PROFILE, reversed(names))
    assert values == PROFILE_VALUES
    assert list(values) == names[::-1]  # in the order asked
    assert session.requests == len(plan_reads(PROFILE, names)) == 3  # one request per block
    one = await session.read_profile(PROFILE_UNIT, PROFILE, ["frequency"])
    assert one == {"frequency": Decimal("49.5")}


async def test_read_profile_unknown_name_before_any_io(session: ModbusSession) -> None:
    with pytest.raises(UnknownQuantity, match="voltage_b"):
        await session.read_profile(PROFILE_UNIT, PROFILE, ["voltage_a", "voltage_b"])
    assert session.requests == 0


async def test_relay_trip_close_and_readback(session: ModbusSession,
                                            recorder: Recorder) -> None:
    assert await session.relay_open(PROFILE_UNIT, PROFILE) is False
    await session.relay(PROFILE_UNIT, PROFILE, trip=True)
    assert await session.relay_open(PROFILE_UNIT, PROFILE) is True
    await session.relay(PROFILE_UNIT, PROFILE, trip=False)
    assert await session.relay_open(PROFILE_UNIT, PROFILE) is False
    assert recorder.writes == [(PROFILE_UNIT, 6, 20, [1]), (PROFILE_UNIT, 6, 20, [0])]


async def test_relay_by_coil(session: ModbusSession, recorder: Recorder) -> None:
    await session.relay(1, COIL_PROFILE, trip=True)
    await session.relay(1, COIL_PROFILE, trip=False)
    assert recorder.writes == [(1, 5, 3, [True]), (1, 5, 3, [False])]
    with pytest.raises(ValueError, match="read back"):
        await session.relay_open(1, COIL_PROFILE)
    with pytest.raises(ValueError, match="no relay"):
        await session.relay(1, Profile("x", "m", "y", "z", registers=()), trip=True)


# ---- RTU on a serial line (a pty) ---------------------------------------------------------


def _raw_pty() -> tuple[int, int, str]:
    master, slave = os.openpty()
    tty.setraw(master)
    tty.setraw(slave)
    os.set_blocking(master, False)
    return master, slave, os.ttyname(slave)


@contextlib.asynccontextmanager
async def pty_line() -> AsyncIterator[tuple[str, str]]:
    """Two pseudo-terminals joined master to master: a null-modem cable; yields both ends."""
    loop = asyncio.get_running_loop()
    (m1, s1, p1), (m2, s2, p2) = _raw_pty(), _raw_pty()

    def copy(src: int, dst: int) -> Callable[[], None]:
        def run() -> None:
            try:
                data = os.read(src, 4096)
            except OSError:
                return
            with contextlib.suppress(OSError):
                os.write(dst, data)
        return run

    loop.add_reader(m1, copy(m1, m2))
    loop.add_reader(m2, copy(m2, m1))
    try:
        yield p1, p2
    finally:
        for fd in (m1, m2):
            loop.remove_reader(fd)
        for fd in (m1, s1, m2, s2):
            os.close(fd)


async def test_rtu_over_a_pty(recorder: Recorder) -> None:
    # Pseudo-terminals here reject PARENB, so the line runs 8N1.
    async with pty_line() as (device_end, bus_end):
        server = ModbusSerialServer(devices(recorder), port=device_end, baudrate=19200,
                                    parity="N")
        await server.serve_forever(background=True)
        try:
            async with SerialBus(bus_end, 19200, parity="N", **BUS_OPTIONS) as bus:
                session = ModbusSession(bus, framing="rtu")
                for unit in UNITS:
                    assert await session.read_registers(unit, 3, 0, 10) == holding(unit)[:10]
                    assert await session.read_registers(unit, 4, 3, 2) == inputs(unit)[3:5]
                with pytest.raises(ModbusError, match="ILLEGAL_DATA_ADDRESS"):
                    await session.read_registers(1, 4, 30, 2)
                await session.write_coil(2, 1, True)
                await session.relay(PROFILE_UNIT, PROFILE, trip=True)
                assert await session.relay_open(PROFILE_UNIT, PROFILE) is True
                values = await session.read_profile(PROFILE_UNIT, PROFILE, PROFILE_VALUES)
                assert values == PROFILE_VALUES
                assert session.bad_checksums == 0 and session.no_replies == 0
        finally:
            await server.shutdown()
    assert (2, 5, 1, [True]) in recorder.writes


# ---- a scripted raw device --------------------------------------------------------------------

Script = Callable[[bytes], bytes | None]
Answer = Callable[[bytes], bytes]
_RTU = FramerRTU(DecodePDU(is_server=False))


def rtu(unit: int, pdu: bytes) -> bytes:
    return _RTU.encode(pdu, unit, 0)


def mbap(tid: int, unit: int, pdu: bytes, pid: int = 0) -> bytes:
    return struct.pack(">HHHB", tid, pid, len(pdu) + 1, unit) + pdu


def words_pdu(function: int, words: list[int]) -> bytes:
    return bytes([function, 2 * len(words)]) + b"".join(w.to_bytes(2, "big") for w in words)


@dataclass
class Request:
    tid: int
    unit: int
    function: int
    address: int
    value: int  # count for reads
    pdu: bytes


def parse(raw: bytes, framing: Framing) -> Request:
    if framing == "rtu":
        assert FramerRTU.check_CRC(raw[:-2], int.from_bytes(raw[-2:], "big"))
        tid, unit, pdu = 0, raw[0], raw[1:-2]
    else:
        tid, pid, length, unit = struct.unpack(">HHHB", raw[:7])
        assert pid == 0 and length == len(raw) - 6
        pdu = raw[7:]
    function, address, value = struct.unpack(">BHH", pdu)
    return Request(tid, unit, function, address, value, pdu)


class RawDevice:
    """A TCP port where ``script(request)`` decides the reply bytes (None: silence)."""

    def __init__(self, framing: Framing, script: Script) -> None:
        self.framing = framing
        self.script = script
        self.requests: list[Request] = []
        self.received_at: list[float] = []
        self.replied_at: list[float] = []
        self.port = 0

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
                     ) -> None:
        size = 8 if self.framing == "rtu" else 12  # 03/04/05/06 requests are fixed size
        try:
            while True:
                raw = await reader.readexactly(size)
                self.received_at.append(time.monotonic())
                self.requests.append(parse(raw, self.framing))
                reply = self.script(raw)
                if reply:
                    writer.write(reply)
                    await writer.drain()
                    self.replied_at.append(time.monotonic())
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        finally:
            writer.close()

    @contextlib.asynccontextmanager
    async def running(self) -> AsyncIterator[RawDevice]:
        server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        self.port = server.sockets[0].getsockname()[1]
        try:
            yield self
        finally:
            server.close()


def answer(framing: Framing, words: list[int] | None = None, *, unit: int | None = None,
           tid_offset: int = 0) -> Answer:
    """A script answering reads with ``words`` (default: address + k) and echoing writes."""
    def script(raw: bytes) -> bytes:
        r = parse(raw, framing)
        if r.function in (3, 4):
            data = words if words is not None else [r.address + k for k in range(r.value)]
            pdu = words_pdu(r.function, data)
        else:
            pdu = r.pdu
        u = r.unit if unit is None else unit
        return rtu(u, pdu) if framing == "rtu" else mbap(r.tid + tid_offset, u, pdu)
    return script


@contextlib.asynccontextmanager
async def raw_session(framing: Framing, script: Script, *, retries: int = 1,
                      line_baud: int | None = None, **options: Unpack[BusOptions]
                      ) -> AsyncIterator[tuple[ModbusSession, RawDevice]]:
    raw = RawDevice(framing, script)
    merged: BusOptions = {**BUS_OPTIONS, **options}
    async with raw.running(), \
            TcpBus("127.0.0.1", raw.port, line_baud=line_baud, **merged) as bus:
        yield ModbusSession(bus, framing=framing, retries=retries), raw


FRAMINGS = pytest.mark.parametrize("framing", ["rtu", "tcp"])


@FRAMINGS
async def test_reply_from_another_unit_is_rejected(framing: Framing) -> None:
    async with raw_session(framing, answer(framing, [1, 2], unit=9)) as (session, raw):
        with pytest.raises(WrongReply) as info:
            await session.read_registers(4, 3, 0, 2)
    e = info.value
    assert e.field == "unit" and e.expected == "4" and e.got == "9" and e.address == "4"
    assert session.wrong_replies == 2 and session.retried == 1 and len(raw.requests) == 2


@FRAMINGS
async def test_write_echo_of_another_register_is_rejected(framing: Framing) -> None:
    def script(raw: bytes) -> bytes:
        r = parse(raw, framing)
        pdu = struct.pack(">BHH", r.function, r.address + 1, r.value)
        return rtu(r.unit, pdu) if framing == "rtu" else mbap(r.tid, r.unit, pdu)
    async with raw_session(framing, script) as (session, raw):
        with pytest.raises(WrongReply) as info:
            await session.write_register(1, 10, 5)
    assert info.value.field == "register" and info.value.got == "11"
    assert len(raw.requests) == 1  # writes are not retried


@FRAMINGS
async def test_coil_echo_of_another_value_is_a_wrong_reply(framing: Framing) -> None:
    """Even a value no coil can hold (not FF00/0000): the device echoed something else."""
    def script(raw: bytes) -> bytes:
        r = parse(raw, framing)
        pdu = struct.pack(">BHH", r.function, r.address, 0x1234)
        return rtu(r.unit, pdu) if framing == "rtu" else mbap(r.tid, r.unit, pdu)
    async with raw_session(framing, script) as (session, raw):
        with pytest.raises(WrongReply) as info:
            await session.write_coil(1, 5, True)
    assert (info.value.field, info.value.expected, info.value.got) == ("value", "FF00", "1234")
    assert len(raw.requests) == 1

@FRAMINGS
async def test_byte_count_mismatch_is_a_bad_reply(framing: Framing) -> None:
    async with raw_session(framing, answer(framing, [1, 2, 3]), retries=0) as (session, _):
        with pytest.raises(BadReply, match="6 data bytes"):
            await session.read_registers(1, 3, 0, 2)
    assert session.bad_replies == 1


@FRAMINGS
async def test_silence_is_no_reply(framing: Framing) -> None:
    async with raw_session(framing, lambda raw: None, td=0.05) as (session, raw):
        started = time.monotonic()
        with pytest.raises(NoReply) as info:
            await session.read_registers(1, 3, 0, 2)
    assert not isinstance(info.value, IncompleteReply)
    assert info.value.timeout == "Td" and info.value.address == "1"
    assert time.monotonic() - started < 1.0
    assert session.no_replies == 2 and session.retried == 1 and len(raw.requests) == 2
    assert session.bus.timeouts == 2


@FRAMINGS
async def test_truncated_reply_is_incomplete(framing: Framing) -> None:
    full = answer(framing, [1, 2, 3])
    async with raw_session(framing, lambda raw: full(raw)[:-3], retries=0) as (session, _):
        with pytest.raises(IncompleteReply) as info:
            await session.read_registers(1, 3, 0, 3)
    assert info.value.timeout == "Tb" and len(info.value.received) in (8, 12)


async def test_bad_crc_is_counted_and_retried() -> None:
    replies = 0
    good = answer("rtu", [7, 8])

    def script(raw: bytes) -> bytes:
        nonlocal replies
        replies += 1
        frame = bytearray(good(raw))
        if replies == 1:
            frame[-1] ^= 0xFF
        return bytes(frame)
    async with raw_session("rtu", script) as (session, raw):
        assert await session.read_registers(1, 3, 0, 2) == [7, 8]
    assert session.bad_checksums == 1 and session.no_replies == 1 and session.retried == 1
    assert len(raw.requests) == 2


async def test_bad_crc_only_ends_incomplete() -> None:
    good = answer("rtu", [7, 8])
    async with raw_session("rtu", lambda raw: good(raw)[:-1] + b"\x00",
                           retries=0) as (session, _):
        with pytest.raises(IncompleteReply, match="bad CRC"):
            await session.read_registers(1, 3, 0, 2)
    assert session.bad_checksums == 1


async def test_rtu_garbage_around_the_reply_is_skipped() -> None:
    good = answer("rtu", [0x0103, 0x0304])
    # Leading garbage that itself looks like the start of a reply (01 03 ...).
    async with raw_session("rtu", lambda raw: b"\x00\x01\x03\x04\xff" + good(raw) + b"\x00"
                           ) as (session, _):
        assert await session.read_registers(1, 3, 0, 2) == [0x0103, 0x0304]
    assert session.garbage_bytes == 6 and session.retried == 0


async def test_rtu_reply_to_another_function_times_out() -> None:
    def script(raw: bytes) -> bytes:
        return rtu(1, words_pdu(4, [1, 2]))  # a 04 reply to a 03 request
    async with raw_session("rtu", script, retries=0) as (session, _):
        with pytest.raises(IncompleteReply):
            await session.read_registers(1, 3, 0, 2)


async def test_tcp_reply_to_another_function_is_wrong() -> None:
    def script(raw: bytes) -> bytes:
        r = parse(raw, "tcp")
        return mbap(r.tid, r.unit, words_pdu(4, [1, 2]))
    async with raw_session("tcp", script, retries=0) as (session, _):
        with pytest.raises(WrongReply) as info:
            await session.read_registers(1, 3, 0, 2)
    assert info.value.field == "function" and info.value.got == "04"


async def test_tcp_transaction_ids_increment_and_late_replies_are_skipped() -> None:
    good = answer("tcp")
    stale = answer("tcp", [9, 9], tid_offset=-1)
    async with raw_session("tcp", lambda raw: stale(raw) + good(raw)) as (session, raw):
        assert await session.read_registers(1, 3, 10, 2) == [10, 11]
        assert await session.read_registers(1, 4, 20, 1) == [20]
    assert [r.tid for r in raw.requests] == [1, 2]
    assert session.skipped_frames == 2 and session.retried == 0


async def test_tcp_reply_with_another_transaction_id_only_is_not_taken() -> None:
    async with raw_session("tcp", answer("tcp", tid_offset=5), retries=0) as (session, _):
        with pytest.raises(IncompleteReply):
            await session.read_registers(1, 3, 0, 2)
    assert session.skipped_frames == 1


async def test_tcp_garbage_header_is_a_bad_reply() -> None:
    async with raw_session("tcp", lambda raw: b"HTTP/1.1 400 Bad Request\r\n\r\n",
                           retries=0) as (session, _):
        with pytest.raises(BadReply, match="protocol id"):
            await session.read_registers(1, 3, 0, 2)
    assert session.bad_replies == 1


@FRAMINGS
async def test_garbage_never_crashes(framing: Framing) -> None:
    rng = random.Random(645)
    good = answer(framing)
    # TCP carries no checksum: corruption there is only detectable in the framing.
    damaged = 9 if framing == "tcp" else None  # MBAP header, function, byte count

    def script(raw: bytes) -> bytes:
        reply = good(raw)
        match rng.randrange(5):
            case 0:
                return rng.randbytes(rng.randrange(1, 40))
            case 1:
                cut = rng.randrange(1, damaged or len(reply))
                return reply[:cut] + rng.randbytes(rng.randrange(1, 8)) + reply[cut:]
            case 2:
                flip = bytearray(reply)
                flip[rng.randrange(damaged or len(flip))] ^= 1 << rng.randrange(8)
                return bytes(flip)
            case 3:
                return reply
            case _:
                return rng.randbytes(rng.randrange(1, 6)) + reply
    outcomes: dict[str, int] = {}
    async with raw_session(framing, script, retries=0, tb=0.02, guard=0.005,
                           td=0.1) as (session, _):
        for i in range(24):
            try:
                words = await session.read_registers(1, 3, i, 3)
            except DriverError as e:
                outcomes[type(e).__name__] = outcomes.get(type(e).__name__, 0) + 1
            else:
                assert words == [i, i + 1, i + 2]
                outcomes["ok"] = outcomes.get("ok", 0) + 1
    assert sum(outcomes.values()) == 24 and outcomes.get("ok", 0) >= 3, outcomes
    assert session.frames >= outcomes["ok"]


# ---- RTU line discipline ----------------------------------------------------------------------


async def test_rtu_broadcast_write_is_not_awaited() -> None:
    async with raw_session("rtu", answer("rtu")) as (session, raw):
        await session.write_register(0, 5, 42)
        await session.write_coil(0, 1, True)
        assert await session.read_registers(1, 3, 0, 1) == [0]
    assert [(r.unit, r.function) for r in raw.requests] == [(0, 6), (0, 5), (1, 3)]
    assert session.requests == 3 and session.no_replies == 0


async def test_rtu_requests_keep_a_frame_gap_on_a_known_baud_rate() -> None:
    async with raw_session("rtu", answer("rtu"), line_baud=1200) as (session, raw):
        for _ in range(3):
            await session.read_registers(1, 3, 0, 1)
    gap = 3.5 * 11 / 1200  # 32 ms at 1200 baud
    for replied, received in zip(raw.replied_at, raw.received_at[1:], strict=False):
        assert received - replied >= gap * 0.9


async def test_no_frame_gap_over_plain_tcp() -> None:
    async with raw_session("rtu", answer("rtu")) as (session, _):
        started = time.monotonic()
        for _ in range(20):
            await session.read_registers(1, 3, 0, 1)
    assert time.monotonic() - started < 0.5


# ---- one line, two protocols ------------------------------------------------------------------


@contextlib.asynccontextmanager
async def mixed_line(meter: FakeMeter, modbus: Answer) -> AsyncIterator[int]:
    """A serial server port with a DL/T645 meter and Modbus RTU devices on its line."""
    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        extractor = FrameExtractor(lambda _a, control: not control & 0x80)
        pending = b""
        try:
            while data := await reader.read(4096):
                pending += data
                if pending[0] in (0xFE, 0x68):  # DL/T645 (preamble or start byte)
                    extractor.feed(pending)
                    pending = b""
                    for frame in extractor:
                        for action in meter.respond(decode_message(frame)):
                            if isinstance(action, Send):
                                writer.write(action.data)
                elif len(pending) >= 8:  # a Modbus RTU request
                    writer.write(modbus(pending[:8]))
                    pending = pending[8:]
                await writer.drain()
        except ConnectionError:
            pass
        finally:
            writer.close()

    server = await asyncio.start_server(handle, "127.0.0.1", 0)
    try:
        yield server.sockets[0].getsockname()[1]
    finally:
        server.close()


async def test_dlt645_and_modbus_meters_share_one_bus() -> None:
    meter = FakeMeter("000000000123")
    meter.set("voltage_a", Decimal("220.1"))
    async with mixed_line(meter, answer("rtu")) as port, \
            TcpBus("127.0.0.1", port, line_baud=115200, **BUS_OPTIONS) as bus:
        dlt = Dlt645Session(bus)
        modbus = ModbusSession(bus, framing="rtu")
        jobs: list[Awaitable[object]] = []
        for i in range(10):
            jobs.append(dlt.read("000000000123", "voltage_a"))
            jobs.append(modbus.read_registers(1 + i % 3, 3 + i % 2, i, 4))
        results = await asyncio.gather(*jobs)
    for i in range(10):
        reading = results[2 * i]
        assert isinstance(reading, DataValue) and reading.value == Decimal("220.1")
        assert results[2 * i + 1] == [i, i + 1, i + 2, i + 3]
    assert bus.transactions == 20 and bus.timeouts == 0 and bus.bytes_discarded == 0
    assert dlt.counters()["requests"] == modbus.requests == 10


# ---- arguments ---------------------------------------------------------------------------------


async def test_argument_mistakes_are_value_errors() -> None:
    async with raw_session("rtu", answer("rtu")) as (session, raw):
        for call in (
            session.read_registers(1, 5, 0, 1),
            session.read_registers(1, 3, 0, 0),
            session.read_registers(1, 3, 0, 126),
            session.read_registers(1, 3, 65535, 2),
            session.read_registers(0, 3, 0, 1),
            session.read_registers(248, 3, 0, 1),
            session.write_register(1, 0, 0x10000),
            session.write_register(1, -1, 0),
            session.write_coil(256, 0, True),
        ):
            with pytest.raises(ValueError):
                await call
    assert raw.requests == []
    with pytest.raises(ValueError):
        ModbusSession(session.bus, framing="ascii")  # type: ignore[arg-type]
    with pytest.raises(ValueError):
        ModbusSession(session.bus, framing="tcp", retries=-1)


async def test_tcp_accepts_unit_0_and_255() -> None:
    async with raw_session("tcp", answer("tcp")) as (session, raw):
        assert await session.read_registers(0, 3, 0, 1) == [0]
        assert await session.read_registers(255, 4, 3, 1) == [3]
    assert [r.unit for r in raw.requests] == [0, 255]


def test_session_is_bus_neutral() -> None:
    assert issubclass(TcpBus, Bus) and issubclass(SerialBus, Bus)
    assert repr(ModbusSession(TcpBus("127.0.0.1", 502), framing="tcp")) \
        == "<ModbusSession tcp on tcp://127.0.0.1:502>"

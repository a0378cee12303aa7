"""Dlt645Session against a fake meter (tests/fake_dlt645.py) over TCP and a pty."""

from __future__ import annotations

import asyncio
import datetime as dt
import time
from collections.abc import AsyncIterator
from decimal import Decimal

import pytest
from fake_dlt645 import Action, FakeMeter, Send, pty_meter, tcp_meter

from drivers.dlt645 import DataValue, Dlt645Session, resolve_quantity
from drivers.errors import (
    BadReply,
    IncompleteReply,
    LinkDown,
    MeterError,
    NoReply,
    UnknownQuantity,
    WrongReply,
)
from drivers.serial import SerialBus
from drivers.tcp import TcpBus
from protocols.dlt645 import (
    Message,
    ReadAddressRequest,
    ReadFollowUpRequest,
    ReadReply,
    ReadRequest,
    RelayCommand,
    RemoteControlRequest,
    StatusWord,
    TimeSyncRequest,
    Version,
    WriteRequest,
    build_frame,
    encode_value,
    lookup,
)

ADDR = "000000000123"
VOLTAGES = {"voltage_a": Decimal("220.1"), "voltage_b": Decimal("221.0"),
            "voltage_c": Decimal("219.9")}


def standard_meter() -> FakeMeter:
    m = FakeMeter(ADDR)
    for name, value in VOLTAGES.items():
        m.set(name, value)
    m.set("energy_active_forward_total", Decimal("1234.56"))
    m.set("current_a", Decimal("-1.250"))
    m.set("status_word_3", 0x0010)
    return m


@pytest.fixture
def meter() -> FakeMeter:
    return standard_meter()


@pytest.fixture
async def bus(meter: FakeMeter) -> AsyncIterator[TcpBus]:
    async with tcp_meter(meter) as port, \
            TcpBus("127.0.0.1", port, td=0.2, tb=0.1, guard=0.05, reconnect_min=0.01) as b:
        yield b


@pytest.fixture
def session(bus: TcpBus) -> Dlt645Session:
    return Dlt645Session(bus)


def reads(meter: FakeMeter) -> list[str]:
    """DIs of the read-type requests the meter received, in hex."""
    out = []
    for m in meter.requests:
        if isinstance(m, ReadRequest):
            out.append(f"{m.di:08X}")
        elif isinstance(m, ReadFollowUpRequest):
            out.append(f"{m.di:08X}+{m.seq}")
    return out


# ---- reading ---------------------------------------------------------------------------


async def test_read_by_name(session: Dlt645Session, meter: FakeMeter) -> None:
    r = await session.read(ADDR, "voltage_a")
    assert isinstance(r, DataValue)
    assert r.address == ADDR
    assert r.name == "voltage_a" and r.di == 0x02010100 and r.di_hex == "02010100"
    assert r.value == Decimal("220.1") and r.unit == "V"
    assert r.raw == bytes.fromhex("0122")  # 220.1 as BCD, low byte first
    assert r.timestamp is None
    assert r.as_json() == {"name": "voltage_a", "di": "02010100", "value": 220.1, "unit": "V"}
    assert reads(meter) == ["02010100"]


async def test_read_by_di_and_short_address(session: Dlt645Session) -> None:
    r = await session.read("123", 0x02020100)
    assert r.value == Decimal("-1.250") and r.unit == "A"
    s = await session.read(ADDR, "status_word_3")
    assert isinstance(s.value, StatusWord) and s.value.fields["relay_open"] == 1


async def test_read_uncatalogued_di_gives_hex(session: Dlt645Session,
                                              meter: FakeMeter) -> None:
    meter.values[0x04800001] = b"\x01\x02\x03"
    r = await session.read(ADDR, 0x04800001)
    assert r.item is None and r.value == "010203" and r.name == "di_04800001"


async def test_read_over_a_pty(meter: FakeMeter) -> None:
    # This sandbox's pseudo-terminals reject PARENB, so the line runs 8N1 here.
    async with pty_meter(meter) as pty, SerialBus(pty.path, 9600, parity="N", td=0.3) as bus:
        session = Dlt645Session(bus)
        r = await session.read(ADDR, "voltage_b")
        assert r.value == Decimal("221.0")
        rs = await session.read_many(ADDR, ["energy_active_forward_total", "current_a"])
        assert [x.value for x in rs] == [Decimal("1234.56"), Decimal("-1.250")]


async def test_wildcard_address_reading_names_the_real_meter(session: Dlt645Session) -> None:
    r = await session.read("AAAAAAAAAAAA", "voltage_a")
    assert r.address == ADDR


async def test_read_address(session: Dlt645Session, meter: FakeMeter) -> None:
    assert await session.read_address() == ADDR
    assert isinstance(meter.requests[0], ReadAddressRequest)
    assert meter.requests[0].address == "AAAAAAAAAAAA"


async def test_dlt645_1997(meter: FakeMeter, bus: TcpBus) -> None:
    meter.version = Version.V1997
    meter.set("voltage_a", Decimal("231"))
    session = Dlt645Session(bus, version=Version.V1997)
    r = await session.read(ADDR, "voltage_a")
    assert r.di == 0xB611 and r.di_hex == "B611" and r.value == Decimal("231")


# ---- replies that must not be used --------------------------------------------------


async def test_reply_from_another_meter_is_rejected(session: Dlt645Session,
                                                    meter: FakeMeter) -> None:
    meter.reply_address = "000000000999"
    with pytest.raises(WrongReply) as info:
        await session.read(ADDR, "voltage_a")
    e = info.value
    assert (e.field, e.expected, e.got) == ("address", ADDR, "000000000999")
    assert "000000000999" in str(e) and "voltage_a" in str(e)
    assert session.wrong_replies == 2 and session.retried == 1  # retried once, then raised


async def test_reply_for_another_di_is_rejected(session: Dlt645Session,
                                                meter: FakeMeter) -> None:
    meter.reply_di[0x02010100] = 0x02010200  # answers voltage_b when asked voltage_a
    with pytest.raises(WrongReply) as info:
        await session.read(ADDR, "voltage_a")
    assert (info.value.field, info.value.expected, info.value.got) == (
        "DI", "02010100", "02010200")
    # The session is not confused afterwards.
    assert (await session.read(ADDR, "voltage_c")).value == Decimal("219.9")


async def test_abnormal_reply_is_a_meter_error(session: Dlt645Session,
                                               meter: FakeMeter) -> None:
    meter.abnormal[0x02010100] = 0x02
    with pytest.raises(MeterError) as info:
        await session.read(ADDR, "voltage_a")
    e = info.value
    assert e.errors == ("no_requested_data",) and e.code == 0x02 and e.function == 0x11
    assert e.address == ADDR
    assert str(e) == f"meter {ADDR} refused read voltage_a (02010100): no_requested_data"
    assert len(meter.requests) == 1  # a refusal is not retried
    meter.abnormal[0x02010100] = 0x05
    with pytest.raises(MeterError) as info:
        await session.read(ADDR, "voltage_a")
    assert info.value.errors == ("other_error", "unauthorised")


async def test_no_reply(session: Dlt645Session, meter: FakeMeter) -> None:
    meter.silent.add(0x02010100)
    started = time.monotonic()
    with pytest.raises(NoReply) as info:
        await session.read(ADDR, "voltage_a")
    assert time.monotonic() - started >= 0.4  # two attempts of Td 0.2 s
    assert not isinstance(info.value, IncompleteReply)
    assert info.value.address == ADDR
    assert str(info.value) == f"meter {ADDR}: no reply to read voltage_a (02010100) within 200 ms"
    assert reads(meter) == ["02010100", "02010100"]
    assert session.no_replies == 2


async def test_retries_zero_means_one_attempt(bus: TcpBus, meter: FakeMeter) -> None:
    meter.silent.add(0x02010100)
    with pytest.raises(NoReply):
        await Dlt645Session(bus, retries=0, td=0.05).read(ADDR, "voltage_a")
    assert len(meter.requests) == 1


async def test_slow_meter_within_td_is_fine(bus: TcpBus, meter: FakeMeter) -> None:
    meter.delay = 0.1
    meter.split_gap = 0.05
    r = await Dlt645Session(bus, td=0.3, tb=0.2).read(ADDR, "voltage_a")
    assert r.value == Decimal("220.1")


async def test_split_reply_with_long_gap_is_incomplete(session: Dlt645Session,
                                                       meter: FakeMeter) -> None:
    meter.split_gap = 0.3  # > Tb 0.1
    with pytest.raises(IncompleteReply) as info:
        await session.read(ADDR, "voltage_a")
    assert "incomplete reply to read voltage_a" in str(info.value)
    assert info.value.received


async def test_garbage_before_the_reply_is_tolerated(session: Dlt645Session,
                                                     meter: FakeMeter) -> None:
    meter.garbage = b"\x00\x68\x11\xff\x16\x68\x01\x02"
    r = await session.read(ADDR, "voltage_a")
    assert r.value == Decimal("220.1")
    assert session.extractor_stats.garbage_bytes >= len(meter.garbage) - 1


async def test_false_frame_start_in_garbage_does_not_hide_the_reply(
        session: Dlt645Session, meter: FakeMeter) -> None:
    # 68, six bytes, 68, C, L=C8: looks like the header of a 200-byte frame.
    meter.garbage = bytes.fromhex("681122334455666891C8")
    r = await session.read(ADDR, "voltage_a")
    assert r.value == Decimal("220.1")
    assert session.retried == 0
    assert session.extractor_stats.garbage_bytes >= len(meter.garbage)


async def test_false_frame_start_cannot_smuggle_a_wrong_reply(
        session: Dlt645Session, meter: FakeMeter) -> None:
    meter.garbage = bytes.fromhex("681122334455666891C8")
    meter.reply_address = "000000000999"
    with pytest.raises(WrongReply):
        await session.read(ADDR, "voltage_a")


async def test_only_garbage_fails_typed_and_is_counted(session: Dlt645Session,
                                                       meter: FakeMeter) -> None:
    meter.hook = lambda request: [Send(b"\x68\x01garbage\x16" * 3)]
    with pytest.raises(IncompleteReply) as info:
        await session.read(ADDR, "voltage_a")
    assert "not a valid frame" in str(info.value)
    assert session.extractor_stats.garbage_bytes > 0


async def test_bad_checksum_is_counted_not_used(session: Dlt645Session,
                                                meter: FakeMeter) -> None:
    def corrupt(request: Message) -> list[Action] | None:
        assert isinstance(request, ReadRequest)
        wire = bytearray(build_frame(ReadReply(address=ADDR, di=request.di,
                                               body=b"\x01\x22").to_frame()))
        wire[-2] ^= 0xFF  # checksum
        return [Send(bytes(wire))]

    meter.hook = corrupt
    # A garbled reply ends the transaction at once (no wait for Tb); it is retried.
    with pytest.raises(BadReply, match="garbled reply to read voltage_a"):
        await session.read(ADDR, "voltage_a")
    assert session.extractor_stats.bad_checksums == 2


async def test_malformed_value_is_bad_reply(session: Dlt645Session, meter: FakeMeter) -> None:
    meter.values[0x02010100] = b"\x01\x02\x03"  # 3 bytes where voltage has 2
    with pytest.raises(BadReply, match="voltage_a"):
        await session.read(ADDR, "voltage_a")
    meter.values[0x02010100] = b"\x1a\x22"  # not BCD
    with pytest.raises(BadReply, match="not BCD"):
        await session.read(ADDR, "voltage_a")


async def test_unknown_quantity_fails_before_any_io(session: Dlt645Session,
                                                    meter: FakeMeter) -> None:
    with pytest.raises(UnknownQuantity, match="unknown quantity 'voltage_x'"):
        await session.read(ADDR, "voltage_x")
    with pytest.raises(UnknownQuantity, match="no DL/T645-1997"):
        resolve_quantity("frequency", Version.V1997)
    with pytest.raises(UnknownQuantity):
        await session.read_many(ADDR, ["voltage_a", "nope"])
    assert meter.requests == []
    with pytest.raises(ValueError, match="meter address"):
        await session.read("12345678901234", "voltage_a")


# ---- multi-frame and block reads ---------------------------------------------------


async def test_follow_up_frames_are_joined(session: Dlt645Session, meter: FakeMeter) -> None:
    item = lookup(0x0001FF00)
    assert item is not None
    values = {"energy_active_forward_total": Decimal("100.00"),
              "energy_active_forward_t1": Decimal("10.00"),
              "energy_active_forward_t2": Decimal("20.00"),
              "energy_active_forward_t3": Decimal("30.00"),
              "energy_active_forward_t4": Decimal("40.00")}
    body = encode_value(item, values)
    meter.follow_ups[0x0001FF00] = [body[:8], body[8:16], body[16:]]
    r = await session.read(ADDR, 0x0001FF00)
    assert r.value == values
    assert r.raw == body
    assert reads(meter) == ["0001FF00", "0001FF00+1", "0001FF00+2"]
    assert [m.value for m in r.members()] == list(values.values())
    assert [m.di_hex for m in r.members()] == ["00010000", "00010100", "00010200", "00010300",
                                               "00010400"]


async def test_block_di_used_when_names_share_a_block(session: Dlt645Session,
                                                      meter: FakeMeter) -> None:
    meter.set_di(0x0201FF00, VOLTAGES)
    rs = await session.read_many(ADDR, ["voltage_c", "voltage_a", "voltage_b"])
    assert [r.name for r in rs] == ["voltage_c", "voltage_a", "voltage_b"]
    assert [r.value for r in rs] == [VOLTAGES["voltage_c"], VOLTAGES["voltage_a"],
                                     VOLTAGES["voltage_b"]]
    assert [r.di_hex for r in rs] == ["02010300", "02010100", "02010200"]
    assert rs[0].raw == bytes.fromhex("9921")
    assert reads(meter) == ["0201FF00"]


async def test_block_refused_falls_back_to_single_reads(session: Dlt645Session,
                                                        meter: FakeMeter) -> None:
    # The fake meter has no 0201FF00: it answers "no requested data".
    rs = await session.read_many(ADDR, ["voltage_a", "voltage_b", "energy_active_forward_total"])
    assert [r.value for r in rs] == [VOLTAGES["voltage_a"], VOLTAGES["voltage_b"],
                                     Decimal("1234.56")]
    assert reads(meter) == ["0201FF00", "02010100", "02010200", "00010000"]
    # Remembered: the next poll goes straight to single reads.
    meter.received.clear()
    await session.read_many(ADDR, ["voltage_a", "voltage_b"])
    assert reads(meter) == ["02010100", "02010200"]
    assert (ADDR, 0x0201FF00) in session.blocks_refused


async def test_short_block_reads_missing_members_singly(session: Dlt645Session,
                                                        meter: FakeMeter) -> None:
    item = lookup(0x0201FF00)
    assert item is not None
    meter.values[0x0201FF00] = encode_value(item, {"voltage_a": Decimal("220.1")})
    rs = await session.read_many(ADDR, ["voltage_a", "voltage_b"])
    assert [r.value for r in rs] == [VOLTAGES["voltage_a"], VOLTAGES["voltage_b"]]
    assert reads(meter) == ["0201FF00", "02010200"]


async def test_quantity_only_in_a_block(session: Dlt645Session, meter: FakeMeter) -> None:
    # The catalogue gives the daily-freeze energies no DI of their own.
    item = lookup(0x05060101)
    assert item is not None
    meter.values[0x05060101] = encode_value(item, {
        "freeze_daily_energy_active_forward_total": Decimal("99.50"),
        "freeze_daily_energy_active_forward_t1": Decimal("9.50")})
    r = await session.read(ADDR, "freeze_daily_energy_active_forward_t1")
    assert r.value == Decimal("9.50") and r.di == 0x05060101 and r.unit == "kWh"
    assert reads(meter) == ["05060101"]


# ---- commands ----------------------------------------------------------------------


async def test_broadcast_time_is_write_only(session: Dlt645Session, meter: FakeMeter,
                                            bus: TcpBus) -> None:
    when = dt.datetime(2024, 5, 6, 12, 34, 56)
    started = time.monotonic()
    await session.broadcast_time(when)
    assert time.monotonic() - started < 0.15  # nothing awaited
    await asyncio.sleep(0.05)
    sent = meter.requests[0]
    assert isinstance(sent, TimeSyncRequest)
    assert sent.address == "999999999999" and sent.when == when
    assert bus.transactions == 1 and bus.timeouts == 0
    assert (await session.read(ADDR, "voltage_a")).value == Decimal("220.1")


async def test_remote_control_plain(session: Dlt645Session, meter: FakeMeter) -> None:
    expiry = dt.datetime(2030, 1, 2, 3, 4, 5)
    await session.remote_control(ADDR, RelayCommand.TRIP, password="02123456",
                                 operator="00000001", expiry=expiry)
    sent = meter.requests[0]
    assert isinstance(sent, RemoteControlRequest)
    assert sent.command is RelayCommand.TRIP and sent.expiry == expiry
    assert sent.password == "02123456" and sent.operator == "00000001"


async def test_remote_control_with_encrypt_hook(session: Dlt645Session,
                                                meter: FakeMeter) -> None:
    seen: list[tuple[str, bytes]] = []

    async def encrypt(address: str, plain: bytes) -> bytes:
        seen.append((address, plain))
        return bytes(b ^ 0x5A for b in plain) * 2 + b"MAC!"  # 16 bytes + MAC, as ESAM

    await session.remote_control(ADDR, RelayCommand.CLOSE_PERMITTED, password="98000000",
                                 expiry=dt.datetime(2030, 1, 2, 3, 4, 5), encrypt=encrypt)
    (address, plain), = seen
    assert address == ADDR
    assert plain == bytes.fromhex("1B00" "050403020130")  # N1 N2, then ssmmhhDDMMYY
    sent = meter.requests[0]
    assert isinstance(sent, RemoteControlRequest)
    assert sent.ciphertext == bytes(b ^ 0x5A for b in plain) * 2 + b"MAC!"


async def test_remote_control_refused(session: Dlt645Session, meter: FakeMeter) -> None:
    from protocols.dlt645 import AbnormalReply

    meter.hook = lambda request: (
        [Send(build_frame(AbnormalReply(address=ADDR, request_function=0x1C,
                                        error=0x04).to_frame()))]
        if isinstance(request, RemoteControlRequest) else None)
    with pytest.raises(MeterError) as info:
        await session.remote_control(ADDR, RelayCommand.TRIP, password="02123456",
                                     expiry=dt.datetime(2030, 1, 1))
    assert info.value.errors == ("unauthorised",)
    assert "remote control trip" in str(info.value)
    with pytest.raises(ValueError, match="password"):
        await session.remote_control(ADDR, RelayCommand.TRIP, password="12",
                                     expiry=dt.datetime(2030, 1, 1))


async def test_write(session: Dlt645Session, meter: FakeMeter) -> None:
    await session.write(ADDR, "meter_time", dt.time(1, 2, 3), password="02123456")
    sent = meter.requests[0]
    assert isinstance(sent, WriteRequest)
    assert sent.di == 0x04000102 and sent.body == bytes.fromhex("030201")
    await session.write(ADDR, 0x04800001, b"\x01", password="02123456")
    with pytest.raises(ValueError, match="bytes"):
        await session.write(ADDR, 0x04800001, 5, password="02123456")


# ---- the bus underneath --------------------------------------------------------------


async def test_concurrent_reads_share_one_bus(session: Dlt645Session, meter: FakeMeter) -> None:
    meter.delay = 0.005
    names = ["voltage_a", "voltage_b", "voltage_c", "energy_active_forward_total",
             "current_a"] * 2
    rs = await asyncio.gather(*(session.read(ADDR, n) for n in names))
    assert [r.name for r in rs] == names
    # Never a request while the meter was still answering the previous one.
    arrivals = [r.at for r in meter.received]
    for replied, next_arrival in zip(meter.replied_at, arrivals[1:], strict=False):
        assert next_arrival >= replied


async def test_link_drop_then_reconnect(session: Dlt645Session, meter: FakeMeter,
                                        bus: TcpBus) -> None:
    meter.drop_on.add(0x02010200)
    assert (await session.read(ADDR, "voltage_a")).value == Decimal("220.1")
    with pytest.raises(LinkDown):
        await session.read(ADDR, "voltage_b")  # hangs up at every attempt
    assert session.retried == 1
    assert (await session.read(ADDR, "voltage_c")).value == Decimal("219.9")
    assert meter.connections == 3 and bus.link_drops == 2


async def test_link_drop_fails_the_read_without_retries(bus: TcpBus, meter: FakeMeter) -> None:
    session = Dlt645Session(bus, retries=0)
    meter.drop_on.add(0x02010200)
    with pytest.raises(LinkDown):
        await session.read(ADDR, "voltage_b")
    meter.drop_on.clear()
    assert (await session.read(ADDR, "voltage_b")).value == Decimal("221.0")
    assert meter.connections == 2 and bus.link_drops == 1


async def test_meter_dropping_after_each_reply(session: Dlt645Session,
                                               meter: FakeMeter) -> None:
    # A server that hangs up right after replying races the next request; the read's
    # retry reconnects.
    meter.drop_after_reply = True
    for name in ("voltage_a", "voltage_b", "voltage_c"):
        assert (await session.read(ADDR, name)).value == VOLTAGES[name]
    assert meter.connections >= 3


async def test_session_rejects_silly_arguments(bus: TcpBus) -> None:
    with pytest.raises(ValueError):
        Dlt645Session(bus, retries=-1)
    with pytest.raises(ValueError):
        Dlt645Session(bus, preamble=99)

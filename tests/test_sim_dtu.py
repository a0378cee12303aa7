"""The dial-in DTU simulator: registration, heartbeats, DL/T645 and Modbus pass-through."""

from __future__ import annotations

import asyncio
import struct
from decimal import Decimal

import pytest

from collector.config.profiles import load_profile
from protocols import dlt645
from simulators.dlt645 import make_meters
from simulators.dtu import DtuSimulator, parse_packet
from simulators.modbus import make_modbus_meters


def _crc(data: bytes) -> bytes:
    """CRC-16/Modbus, low byte first."""
    crc = 0xFFFF
    for b in data:
        crc ^= b
        for _ in range(8):
            crc = crc >> 1 ^ 0xA001 if crc & 1 else crc >> 1
    return crc.to_bytes(2, "little")


class Line:
    """The master's end of one DTU connection."""

    def __init__(self) -> None:
        self.links: asyncio.Queue[tuple[asyncio.StreamReader, asyncio.StreamWriter]] = \
            asyncio.Queue()

    async def accept(self, r: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
        await self.links.put((r, w))


async def serve() -> tuple[Line, asyncio.Server, int]:
    line = Line()
    server = await asyncio.start_server(line.accept, "127.0.0.1", 0)
    return line, server, server.sockets[0].getsockname()[1]


def test_parse_packet() -> None:
    assert parse_packet("DTU00000001") == b"DTU00000001"
    assert parse_packet("hex:0102ab") == b"\x01\x02\xab"
    for bad in ("hex:0g", "", "hex:", "电表"):
        with pytest.raises(ValueError, match="packet"):
            parse_packet(bad)


async def test_dlt645_dtu_registers_beats_and_passes_frames_through() -> None:
    line, server, port = await serve()
    meters = make_meters(["000000000001", "000000000002"])
    dtu = DtuSimulator("127.0.0.1", port, registration=b"DTU00000001", meters=meters,
                       heartbeat=0.2, heartbeat_packet=b"\xfe\xfe", reconnect_delay=0.05)
    async with dtu:
        r, w = await asyncio.wait_for(line.links.get(), 3)
        assert await asyncio.wait_for(r.readexactly(11), 3) == b"DTU00000001"
        assert await asyncio.wait_for(r.readexactly(2), 1) == b"\xfe\xfe"
        w.write(dlt645.build_frame(dlt645.ReadRequest(address="000000000002",
                                                      di=0x00010000).to_frame()))
        ex = dlt645.FrameExtractor()
        while True:
            ex.feed(await asyncio.wait_for(r.read(100), 3))
            frames = [f for f in ex if f.is_reply]
            if frames:
                break
        msg = dlt645.decode_message(frames[0], dlt645.Version.V2007)
        assert isinstance(msg, dlt645.ReadReply) and msg.address == "000000000002"
        assert msg.value() == meters[1].model.read("energy_active_forward_total")
        w.close()
        r2, _ = await asyncio.wait_for(line.links.get(), 3)
        assert await asyncio.wait_for(r2.readexactly(11), 3) == b"DTU00000001"
        assert dtu.stats.reconnects == 1 and dtu.stats.replies == 1
    server.close()


async def test_modbus_dtu_answers_rtu_by_unit_id() -> None:
    line, server, port = await serve()
    profile = load_profile("acrel-ddsy1352")
    meters = make_modbus_meters(profile, [1, 3])
    reg = profile.registers[0]
    async with DtuSimulator("127.0.0.1", port, registration=bytes.fromhex("0102"),
                            meters=meters, reconnect_delay=0.05):
        r, w = await asyncio.wait_for(line.links.get(), 3)
        assert await asyncio.wait_for(r.readexactly(2), 3) == b"\x01\x02"
        pdu = struct.pack(">BBHH", 3, reg.function, reg.address, 2)
        w.write(b"\x00garbage" + pdu + _crc(pdu))
        head = await asyncio.wait_for(r.readexactly(3), 3)
        assert head == bytes((3, reg.function, 4))
        body = await asyncio.wait_for(r.readexactly(6), 3)
        assert body[4:] == _crc(head + body[:4])
        assert body[:4] != bytes(4) or meters[1].model.read(reg.name) == Decimal(0)
    server.close()

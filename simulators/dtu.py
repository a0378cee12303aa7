"""An Acrel-style 4G DTU: dials in, registers, beats, and passes meter frames through.

After the registration packet the link is a transparent serial line: DL/T645 frames
reach :class:`~simulators.dlt645.SimulatedMeter` by address, Modbus RTU requests reach
:class:`~simulators.modbus.SimulatedModbusMeter` by unit id.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Sequence
from dataclasses import dataclass

from protocols import dlt645

from .dlt645 import SimulatedMeter
from .modbus import SimulatedModbusMeter, rtu_reply, rtu_request

_log = logging.getLogger(__name__)


def parse_packet(text: str) -> bytes:
    """``hex:0102AB`` as bytes, anything else as its ASCII text; ValueError if neither."""
    if text.lower().startswith("hex:"):
        try:
            raw = bytes.fromhex(text[4:])
        except ValueError:
            raise ValueError(f"packet {text!r}: not hexadecimal") from None
    else:
        try:
            raw = text.encode("ascii")
        except UnicodeEncodeError:
            raise ValueError(f"packet {text!r}: not ASCII (use hex:...)") from None
    if not raw:
        raise ValueError("packet: empty")
    return raw


@dataclass(slots=True)
class DtuStats:
    connections: int = 0
    reconnects: int = 0
    registrations: int = 0
    heartbeats: int = 0
    requests: int = 0
    replies: int = 0


class DtuSimulator:
    """A DTU with ``meters`` (all DL/T645 or all Modbus) behind it."""

    def __init__(self, host: str, port: int, *, registration: bytes,
                 meters: Sequence[SimulatedMeter] | Sequence[SimulatedModbusMeter],
                 heartbeat: float = 60.0, heartbeat_packet: bytes | None = None,
                 reconnect_delay: float = 1.0) -> None:
        if heartbeat <= 0:
            raise ValueError("heartbeat: a positive number of seconds")
        self.host, self.port = host, port
        self.registration = registration
        self.heartbeat_packet = registration if heartbeat_packet is None else heartbeat_packet
        self.heartbeat, self.reconnect_delay = heartbeat, reconnect_delay
        self.dlt645 = {m.address: m for m in meters if isinstance(m, SimulatedMeter)}
        self.modbus = {m.unit: m for m in meters if isinstance(m, SimulatedModbusMeter)}
        self.stats = DtuStats()
        self.registered = asyncio.Event()
        self._writer: asyncio.StreamWriter | None = None
        self._task: asyncio.Task[None] | None = None

    async def __aenter__(self) -> DtuSimulator:
        self._task = asyncio.create_task(self.run())
        return self

    async def __aexit__(self, *exc: object) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task

    def drop(self) -> None:
        """Close the link now; the DTU dials in again."""
        if self._writer is not None:
            self._writer.close()

    async def run(self) -> None:
        while True:
            try:
                reader, writer = await asyncio.open_connection(self.host, self.port)
            except OSError:
                await asyncio.sleep(self.reconnect_delay)
                continue
            self.stats.connections += 1
            if self.stats.connections > 1:
                self.stats.reconnects += 1
            self._writer = writer
            beats = asyncio.create_task(self._beat(writer))
            try:
                writer.write(self.registration)
                self.stats.registrations += 1
                await writer.drain()
                self.registered.set()
                await self._pass_through(reader, writer)
            except OSError:
                pass
            finally:
                self.registered.clear()
                beats.cancel()
                with contextlib.suppress(asyncio.CancelledError, OSError):
                    await beats
                self._writer = None
                writer.close()
            await asyncio.sleep(self.reconnect_delay)

    async def _beat(self, writer: asyncio.StreamWriter) -> None:
        while True:
            await asyncio.sleep(self.heartbeat)
            writer.write(self.heartbeat_packet)
            self.stats.heartbeats += 1
            await writer.drain()

    async def _pass_through(self, reader: asyncio.StreamReader,
                            writer: asyncio.StreamWriter) -> None:
        extractor = dlt645.FrameExtractor(lambda _address, control: not control & 0x80)
        buf = bytearray()
        units = set(self.modbus)
        while data := await reader.read(4096):
            if self.modbus:
                buf += data
                while buf:
                    n = rtu_request(buf, units)
                    if n:
                        self.stats.requests += 1
                        writer.write(rtu_reply(self.modbus[buf[0]], bytes(buf[:n])))
                        self.stats.replies += 1
                        del buf[:n]
                    elif len(buf) >= 8:
                        del buf[0]  # not a request for us: resynchronise
                    else:
                        break
            else:
                extractor.feed(data)
                for frame in extractor:
                    self.stats.requests += 1
                    meter = self.dlt645.get(frame.address)
                    reply = meter.handle(frame) if meter is not None else None
                    if reply is not None:
                        writer.write(dlt645.build_frame(reply))
                        self.stats.replies += 1
            await writer.drain()

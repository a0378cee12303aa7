"""A bus on a local serial port (RS-485 adapter), through pyserial-asyncio-fast."""

from __future__ import annotations

import asyncio
from typing import Any, Unpack

import serial_asyncio_fast

from .bus import Bus, BusOptions

PARITIES = ("N", "E", "O", "M", "S")
BYTESIZES = (5, 6, 7, 8)
STOPBITS = (1, 1.5, 2)


class SerialBus(Bus):
    """``SerialBus("/dev/ttyUSB0", baud=2400)``: 8E1 by default, as DL/T645 lines are.

    Td starts once the request has had time to leave at ``baud``.  Other keyword
    arguments are those of :class:`~drivers.bus.Bus` (``td``, ``tb``, ...).
    """

    def __init__(
        self,
        device: str,
        baud: int = 2400,
        bytesize: int = 8,
        parity: str = "E",
        stopbits: float = 1,
        **options: Unpack[BusOptions],
    ) -> None:
        if not device:
            raise ValueError("serial bus: device is empty")
        if not isinstance(baud, int) or baud <= 0:
            raise ValueError(f"serial bus: baud {baud!r} must be a positive integer")
        if bytesize not in BYTESIZES:
            raise ValueError(f"serial bus: bytesize {bytesize!r} is not one of 5, 6, 7, 8")
        parity = parity.upper()
        if parity not in PARITIES:
            raise ValueError(f"serial bus: parity {parity!r} is not one of N, E, O, M, S")
        if stopbits not in STOPBITS:
            raise ValueError(f"serial bus: stopbits {stopbits!r} is not one of 1, 1.5, 2")
        super().__init__(name=f"serial://{device}", **options)
        self.device = device
        self.baud = baud
        self.bytesize = bytesize
        self.parity = parity
        self.stopbits = stopbits

    @property
    def bits_per_byte(self) -> float:
        return 1 + self.bytesize + (0 if self.parity == "N" else 1) + self.stopbits

    async def _connect(self) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
        reader, writer = await serial_asyncio_fast.open_serial_connection(
            url=self.device, baudrate=self.baud, bytesize=self.bytesize, parity=self.parity,
            stopbits=self.stopbits,
        )
        return reader, writer

    def tx_time(self, nbytes: int) -> float:
        return nbytes * self.bits_per_byte / self.baud

    def _discard_device_input(self, writer: asyncio.StreamWriter) -> None:
        port: Any = writer.get_extra_info("serial")
        if port is not None and port.is_open:
            port.reset_input_buffer()


__all__ = ["SerialBus"]

"""A light DL/T645-2007 simulator farm for tests/bench/bench_scale.py: many concentrator
ports in one process, no state per meter.

    python tests/bench/_lightfarm.py --buses 500 --meters 100 --first 1

Every port is one concentrator (bus number ``first`` upwards); it answers a read (11)
addressed to one of its meters, ``BBBBMMMMMMMM`` with the bus number then the meter
number 1..meters, with a value derived from the address, the data identifier and the
minute, encoded by protocols.dlt645 (numbers and blocks of numbers; any other DI gets an
abnormal reply "no data requested").  Other addresses and functions stay silent.  What a
meter costs here is nothing but its number: 100k meters fit in a few MB.

Prints one JSON line {"ports": [...]} once every port listens; serves until SIGTERM,
then exits at once (the collector has hung up by then).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import signal
import sys
import time
from decimal import Decimal
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from protocols.dlt645 import (
    AbnormalReply,
    DataItem,
    Format,
    FrameError,
    ReadReply,
    Version,
    build_frame,
    encode_value,
    lookup,
    parse_frame,
)

START = 0x68
READ = 0x11
NO_DATA = 0x02  # error bit: no data requested
# Plausible values for what the benchmark reads, so the collector's alarm rules stay
# quiet as in a healthy fleet; other numbers get a value that fits their format.
NOMINAL = {
    "voltage": (220.0, 6.0),
    "current": (5.0, 4.0),
    "power_active": (1.1, 0.9),
}


def number(item: DataItem, meter: int, minute: int) -> Decimal:
    """A value of ``item`` for ``meter`` this ``minute``: the same on every ask."""
    spread = (meter * 2654435761 + item.di) % 1000 / 1000  # 0..1, fixed per meter and DI
    base = item.name.rsplit("_", 1)[0]
    if item.name.startswith("energy"):
        value = 1000 * spread + 1000 + (meter % 97) * 10 + minute % 100_000 / 600
    elif base in NOMINAL or item.name in NOMINAL:
        mid, half = NOMINAL.get(base) or NOMINAL[item.name]
        value = mid + half * (2 * spread - 1)
    else:
        digits = item.size * 2 - (1 if item.signed else 0) - item.decimals
        value = (meter + minute) % 10 ** max(digits - 1, 0)
    return Decimal(f"{value:.{item.decimals}f}")


def body_of(item: DataItem, meter: int, minute: int) -> bytes | None:
    if item.format is Format.NUMBER:
        return encode_value(item, number(item, meter, minute))
    if item.format is Format.BLOCK and all(m.format is Format.NUMBER for m in item.members):
        return encode_value(item, {m.name: number(m, meter, minute) for m in item.members})
    return None


def answer(bus: str, meters: int, raw: bytes) -> bytes | None:
    """The reply of the meter ``raw`` is addressed to, or None (silent)."""
    try:
        frame = parse_frame(raw)
    except FrameError:
        return None
    address = frame.address
    if frame.control != READ or address[:4] != bus or len(frame.data) < 4:
        return None
    meter = int(address[4:])
    if not 1 <= meter <= meters:
        return None
    di = int.from_bytes(frame.data[:4], "little")
    item = lookup(di, Version.V2007)
    body = body_of(item, meter, int(time.time() // 60)) if item is not None else None
    if body is None:
        reply = AbnormalReply(address=address, request_function=READ,
                              error=NO_DATA).to_frame()
    else:
        reply = ReadReply(address=address, di=di, body=body).to_frame()
    return build_frame(reply, preamble=4)


class Port(asyncio.Protocol):
    """One concentrator connection: frames in, replies out, nothing kept between them."""

    def __init__(self, bus: str, meters: int) -> None:
        self.bus = bus
        self.meters = meters
        self.buf = bytearray()
        self.transport: asyncio.Transport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport

    def data_received(self, data: bytes) -> None:
        buf = self.buf
        buf += data
        while True:
            start = buf.find(START)
            if start < 0:
                buf.clear()
                return
            if len(buf) < start + 10:
                del buf[:start]
                return
            end = start + 12 + buf[start + 9]
            if len(buf) < end:
                del buf[:start]
                return
            raw = bytes(buf[start:end])
            del buf[:end]
            reply = answer(self.bus, self.meters, raw)
            if reply is not None and self.transport is not None:
                self.transport.write(reply)


async def main(buses: int, meters: int, first: int) -> None:
    loop = asyncio.get_running_loop()
    servers = []
    for b in range(first, first + buses):
        bus = f"{b:04d}"
        servers.append(await loop.create_server(lambda bus=bus: Port(bus, meters),  # type: ignore[misc]
                                                "127.0.0.1", 0, backlog=16))
    ports = [s.sockets[0].getsockname()[1] for s in servers]
    print(json.dumps({"ports": ports}), flush=True)
    stop = asyncio.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    await stop.wait()
    # Nothing to save: leave without closing a thousand connections one by one.
    sys.stdout.flush()
    os._exit(0)


if __name__ == "__main__":
    ap = argparse.ArgumentParser()
    ap.add_argument("--buses", type=int, required=True)
    ap.add_argument("--meters", type=int, required=True)
    ap.add_argument("--first", type=int, default=1)
    a = ap.parse_args()
    asyncio.run(main(a.buses, a.meters, a.first))

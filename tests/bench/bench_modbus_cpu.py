#!/usr/bin/env python
"""CPU per Modbus read in amic's client path, without a socket.

    .venv/bin/python tests/bench/bench_modbus_cpu.py [--reads 20000] [--repeat 3] [--count 10]

``ModbusSession.read_registers(1, 3, 0, count)`` on a bus that hands the reply to the
session's completion at once (replies precomputed per request): what is timed is the
request building, the reply hunting (RTU: CRC) and the decoding and checking, i.e. the
protocol work of protocols.modbus and drivers.modbus.  bench_modbus.py times the same
reads over a socket against pymodbus, where the I/O and the server dominate and the
machine's load makes the ratio noisy; this one moves only with the codec.  Nothing is
asserted on time.
"""

from __future__ import annotations

import argparse
import asyncio
import struct
import sys
import time
from collections.abc import Callable
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

from drivers.modbus import Framing, ModbusSession  # noqa: E402


def _crc(data: bytes) -> bytes:
    crc = 0xFFFF
    for b in data:
        crc ^= b
        for _ in range(8):
            crc = (crc >> 1) ^ 0xA001 if crc & 1 else crc >> 1
    return crc.to_bytes(2, "little")


class InstantBus:
    """Just what ModbusSession uses of a Bus: the reply comes with the request."""

    name = "instant"

    def __init__(self, framing: Framing) -> None:
        self.framing = framing
        self.transactions = 0
        self._replies: dict[bytes, bytes] = {}

    def tx_time(self, n: int) -> float:
        return 0.0

    def _reply(self, wire: bytes) -> bytes:
        if self.framing == "rtu":
            unit, fn, start, count = struct.unpack(">BBHH", wire[:6])
            pdu = bytes((unit, fn, 2 * count)) + struct.pack(
                f">{count}H", *(start + k for k in range(count)))
            return pdu + _crc(pdu)
        tid, _, _, unit, fn, start, count = struct.unpack(">HHHBBHH", wire)
        body = bytes((fn, 2 * count)) + struct.pack(
            f">{count}H", *(start + k for k in range(count)))
        return struct.pack(">HHHB", tid, 0, len(body) + 1, unit) + body

    async def transaction(self, wire: bytes, feed: Callable[[bytes], bool],
                          td: float | None = None, tb: float | None = None) -> None:
        self.transactions += 1
        reply = self._replies.get(wire)
        if reply is None:
            reply = self._replies[wire] = self._reply(wire)
        if not feed(reply):
            raise AssertionError("the session did not take its reply")


async def run(framing: Framing, reads: int, count: int) -> float:
    session = ModbusSession(InstantBus(framing), framing=framing)  # type: ignore[arg-type]
    for _ in range(min(reads, 0x10000)):  # every TCP transaction id's reply precomputed
        await session.read_registers(1, 3, 0, count)
    started = time.perf_counter()
    for _ in range(reads):
        words = await session.read_registers(1, 3, 0, count)
    elapsed = time.perf_counter() - started
    assert words == list(range(count))
    return elapsed / reads * 1e6


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--reads", type=int, default=20000)
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--count", type=int, default=10, help="registers per request (1-125)")
    args = ap.parse_args()
    print(f"Python {sys.version.split()[0]}; {args.reads} reads of {args.count} registers "
          f"per run, best of {args.repeat}")
    for framing in ("tcp", "rtu"):
        runs = [asyncio.run(run(framing, args.reads, args.count))  # type: ignore[arg-type]
                for _ in range(args.repeat)]
        print(f"  {framing}: {min(runs):6.2f} us per read_registers "
              f"(runs: {', '.join(f'{r:.2f}' for r in runs)})")


if __name__ == "__main__":
    main()

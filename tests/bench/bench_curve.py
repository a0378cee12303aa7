#!/usr/bin/env python
"""Load-curve read: N meters x 1 day of 15-minute points on a simulated 2400-baud bus.

    .venv/bin/python tests/bench/bench_curve.py [--meters 100] [--baud 2400] [--td-ms 20]

Each meter's curve of yesterday (96 points of forward active energy and phase-A
voltage: 0610 0601 and 0610 0101 by given time and count, each a first frame and one
follow-up frame) is read through the collector's path: BusWorker -> device model
(Dlt645Meter.read_curve) -> Dlt645Session -> TcpBus -> BusServer (bytes paced at 11 bits
each at the baud rate, reply after Td).  Bus seconds per meter are compared with the wire
limit, bytes x 11 / baud (and with Td added per transaction).  Then the points are
written to a SQLite store as the daemon's writer batches them (one batch per meter) and
timed: points stored per second.
"""

from __future__ import annotations

import argparse
import asyncio
import datetime as dt
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

from collector.config.settings import MeterSettings  # noqa: E402
from collector.polling.scheduler import BusWorker, Lane  # noqa: E402
from collector.store import Store  # noqa: E402
from collector.store.records import Reading  # noqa: E402
from drivers.device import CurveRead  # noqa: E402
from drivers.tcp import TcpBus  # noqa: E402
from simulators.bus import BusServer  # noqa: E402
from simulators.dlt645 import make_meters  # noqa: E402

CURVE = ("energy_active_forward_total", "voltage_a")


async def main(meters: int, baud: int, td_ms: int) -> None:
    addresses = [f"{i:012d}" for i in range(1, meters + 1)]
    day = dt.datetime.combine(dt.date.today() - dt.timedelta(days=1), dt.time())
    per_meter: list[tuple[float, int, int]] = []  # (seconds, bytes, transactions)
    batches: list[list[Reading]] = []
    async with BusServer(make_meters(addresses), baud=baud, td=td_ms / 1000) as server:
        bus = TcpBus("127.0.0.1", server.port, line_baud=baud, td=1.0, tb=0.5)
        worker = BusWorker("bench", bus)
        await worker.start()
        for a in addresses:
            m = MeterSettings(meter_id=a, address=a, bus="bench")

            async def job(w: BusWorker, m: MeterSettings = m) -> CurveRead:
                return await w.device(m).read_curve(CURVE, day, day + dt.timedelta(days=1))

            out0, in0, tx0 = bus.bytes_out, bus.bytes_in, bus.transactions
            t0 = time.perf_counter()
            got = await worker.submit(Lane.SCHEDULED, job)
            per_meter.append((time.perf_counter() - t0,
                              bus.bytes_out - out0 + bus.bytes_in - in0,
                              bus.transactions - tx0))
            batches.append(got.readings)
        await worker.stop()

    points = sum(len(b) for b in batches)
    seconds = [s for s, _, _ in per_meter]
    size = statistics.mean(b for _, b, _ in per_meter)
    tx = statistics.mean(t for _, _, t in per_meter)
    wire = size * 11 / baud
    print(f"bus: {baud} baud 8E1 (11 bits/byte), Td {td_ms} ms; {meters} meters x 1 day "
          f"({day:%Y-%m-%d}) of {', '.join(CURVE)}")
    print(f"points read: {points} ({points / meters / len(CURVE):.0f} a quantity a meter)")
    print(f"per meter: {tx:.1f} transactions, {size:.0f} bytes on the wire")
    print(f"bus seconds per meter: mean {statistics.mean(seconds):.3f} s, "
          f"max {max(seconds):.3f} s; total {sum(seconds):.1f} s")
    print(f"wire limit per meter: {wire:.3f} s (bytes x 11 / {baud}); with Td "
          f"{wire + tx * td_ms / 1000:.3f} s")
    print(f"efficiency: {(wire + tx * td_ms / 1000) / statistics.mean(seconds):.3f} of the "
          f"wire limit with Td, {wire / statistics.mean(seconds):.3f} without")

    with tempfile.TemporaryDirectory() as tmp, Store.in_dir(tmp) as store:
        t0 = time.perf_counter()
        for b in batches:
            store.write_readings(b)
        elapsed = time.perf_counter() - t0
        stored = store.count("readings")
    print(f"store: {stored} points in {elapsed:.3f} s = {stored / elapsed:,.0f} points/s "
          f"(one transaction a meter); the bus delivers "
          f"{points / sum(seconds):.1f} points/s")


if __name__ == "__main__":
    ap = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    ap.add_argument("--meters", type=int, default=100)
    ap.add_argument("--baud", type=int, default=2400)
    ap.add_argument("--td-ms", type=int, default=20)
    a = ap.parse_args()
    asyncio.run(main(a.meters, a.baud, a.td_ms))

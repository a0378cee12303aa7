#!/usr/bin/env python
"""Bus efficiency: scheduled reads on a simulated 2400-baud 8E1 RS-485 bus, Td = 20 ms.

    .venv/bin/python tests/bench/bench_bus_efficiency.py [--seconds 20] [--meters 10]

Efficiency = achieved transactions/s divided by the wire limit, where one
transaction's wire time is (request + reply bytes) x 11 / baud + Td.  The collector
path is the real one: Poller cycles -> BusWorker -> Dlt645Session -> TcpBus ->
simulated concentrator (bytes paced at 11 bits each, reply after Td).
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

from collector.config.settings import MeterSettings, ScheduleSettings  # noqa: E402
from collector.polling.scheduler import BusWorker, Poller, Sinks  # noqa: E402
from collector.store.records import CycleRecord, Event, Reading  # noqa: E402
from drivers.tcp import TcpBus  # noqa: E402
from simulators.bus import BusServer  # noqa: E402
from simulators.dlt645 import make_meters  # noqa: E402


async def main(seconds: float, meters: int, baud: int, td_ms: int, quantity: str) -> None:
    addresses = [f"{i:012d}" for i in range(1, meters + 1)]
    server = BusServer(make_meters(addresses), baud=baud, td=td_ms / 1000)
    rows: list[Reading] = []
    cycles: list[CycleRecord] = []
    events: list[Event] = []
    async with server:
        bus = TcpBus("127.0.0.1", server.port, line_baud=baud, td=0.5, tb=0.5)
        worker = BusWorker("bench", bus)
        await worker.start()
        poller = Poller({"bench": worker}, Sinks(rows.extend, events.append, cycles.append))
        sched = ScheduleSettings(name="bench", interval=1.0, quantities=(quantity,), retries=0)
        ms = [MeterSettings(meter_id=a, address=a, bus="bench") for a in addresses]
        await poller.run_cycle(sched, ms[:1])  # connect outside the measurement
        out0, in0, tx0 = bus.bytes_out, bus.bytes_in, bus.transactions
        t0 = time.perf_counter()
        while time.perf_counter() - t0 < seconds:
            await poller.run_cycle(sched, ms)
        elapsed = time.perf_counter() - t0
        tx = bus.transactions - tx0
        wire_bytes = (bus.bytes_out - out0) + (bus.bytes_in - in0)
        await worker.stop()
    wire_time = wire_bytes * 11 / baud + tx * td_ms / 1000
    ok = sum(c.succeeded for c in cycles[1:])
    print(f"bus: {baud} baud 8E1 (11 bits/byte), Td {td_ms} ms, {meters} meters, "
          f"quantity {quantity}")
    print(f"transactions: {tx} in {elapsed:.2f} s = {tx / elapsed:.3f} tx/s "
          f"({ok} successful reads, {len(events)} events)")
    print(f"bytes on the wire: {wire_bytes} ({wire_bytes / tx:.1f} per transaction)")
    print(f"wire limit: {tx / wire_time:.3f} tx/s "
          f"({1000 * wire_time / tx:.1f} ms per transaction)")
    print(f"efficiency: {wire_time / elapsed:.3f}  (goal >= 0.95)")


if __name__ == "__main__":
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seconds", type=float, default=20.0)
    ap.add_argument("--meters", type=int, default=10)
    ap.add_argument("--baud", type=int, default=2400)
    ap.add_argument("--td-ms", type=int, default=20)
    ap.add_argument("--quantity", default="energy_active_forward_total")
    a = ap.parse_args()
    asyncio.run(main(a.seconds, a.meters, a.baud, a.td_ms, a.quantity))

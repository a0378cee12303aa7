#!/usr/bin/env python
"""Noisy line: 50 meters, 5 % of replies garbled, default settings, 10 cycles.

    .venv/bin/python tests/bench/bench_noisy_line.py [--meters 50] [--cycles 10]
        [--garble 0.05] [--baud 9600] [--td-ms 20] [--seed 1]

Every meter is healthy; the simulated concentrator flips one bit in 5 % of all replies
(``garble:*:0.05``), so their checksum fails.  The collector runs with the defaults of
a ``[[bus]]`` (td 500 ms, tb 500 ms), a ``[schedule]`` (retries) and ``[alarms]``
(comm_loss_after), reading the 8 quantities of ``amic demo``.  Printed: the share of
meters collected (every scheduled value obtained) over the cycles, the values stored
against the values scheduled, and the bus seconds per cycle (one bus: a cycle's wall
time is its bus time).
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

from collector.config.settings import (  # noqa: E402
    AlarmConfig,
    BusSettings,
    MeterSettings,
    ScheduleSettings,
)
from collector.polling.scheduler import BusWorker, Poller, Sinks  # noqa: E402
from collector.service.daemon import make_bus  # noqa: E402
from collector.store.records import CycleRecord, Event, Reading  # noqa: E402
from simulators.bus import BusServer  # noqa: E402
from simulators.dlt645 import make_meters  # noqa: E402

QUANTITIES = ("energy_active_forward_total", "voltage_a", "voltage_b", "voltage_c",
              "current_a", "current_b", "current_c", "power_active_total")


async def main(meters: int, cycles: int, garble: float, baud: int, td_ms: int,
               seed: int) -> None:
    addresses = [f"{i:012d}" for i in range(1, meters + 1)]
    server = BusServer(make_meters(addresses, seed=seed), baud=baud, td=td_ms / 1000,
                       faults=f"garble:*:{garble}", seed=seed)
    rows: list[Reading] = []
    done: list[CycleRecord] = []
    events: list[Event] = []
    async with server:
        bus = make_bus(BusSettings(name="noisy", kind="tcp", host="127.0.0.1",
                                   port=server.port, line_baud=baud))
        worker = BusWorker("noisy", bus)
        await worker.start()
        poller = Poller({"noisy": worker}, Sinks(rows.extend, events.append, done.append),
                        dead_after=AlarmConfig().comm_loss_after)
        sched = ScheduleSettings(name="noisy", interval=900.0, quantities=QUANTITIES)
        ms = [MeterSettings(meter_id=a, address=a, bus="noisy") for a in addresses]
        seconds: list[float] = []
        for n in range(cycles):
            t0 = time.perf_counter()
            c = await poller.run_cycle(sched, ms)
            seconds.append(time.perf_counter() - t0)
            print(f"cycle {n + 1:2d}: {c.succeeded}/{c.planned} meters, "
                  f"{seconds[-1]:.1f} s", flush=True)
        await worker.stop()
    planned = sum(c.planned for c in done)
    ok = sum(c.succeeded for c in done)
    values = len(rows)
    print(f"line: {baud} baud 8E1, Td {td_ms} ms, {meters} meters, "
          f"{100 * garble:g} % of replies garbled; schedule retries = {sched.retries}, "
          f"bus td {bus.td * 1000:.0f} ms / tb {bus.tb * 1000:.0f} ms")
    print(f"meters collected: {ok}/{planned} = {100 * ok / planned:.2f} % over {cycles} cycles")
    print(f"values stored: {values}/{planned * len(QUANTITIES)} = "
          f"{100 * values / (planned * len(QUANTITIES)):.2f} %")
    print(f"bus seconds per cycle: mean {statistics.mean(seconds):.1f}, "
          f"max {max(seconds):.1f}")
    print(f"garbled replies: {server.stats.faults.get('garble', 0)} of {server.stats.replies}; "
          f"events: {', '.join(sorted({e.kind for e in events})) or 'none'}")


if __name__ == "__main__":
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--meters", type=int, default=50)
    ap.add_argument("--cycles", type=int, default=10)
    ap.add_argument("--garble", type=float, default=0.05)
    ap.add_argument("--baud", type=int, default=9600)
    ap.add_argument("--td-ms", type=int, default=20)
    ap.add_argument("--seed", type=int, default=1)
    a = ap.parse_args()
    asyncio.run(main(a.meters, a.cycles, a.garble, a.baud, a.td_ms, a.seed))

"""On demand: what a relay command costs beyond the meter round trips.

    .venv/bin/python tests/bench/bench_command.py [--commands 400] [--meters 10]

Simulated DL/T645 meters on one TCP bus (the BusServer, paced like a 115200 baud line
with Td 2 ms); a BusWorker and the RelayService as the daemon uses them (audit records to
a real StoreWriter, rate limit 0).  Each command is a trip or a restore, verified.

overhead = wall time of the command (RelayService.run, as the CLI or the broker channel
calls it, to its result) minus the time
the bus was held by its transactions (read state, read energy, the command, the
verification read, the energy at switching).  Goal: p99 < 50 ms.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from collector.commands.relay_service import RelayService
from collector.config.secrets import parse_secrets
from collector.config.settings import CommandSettings, MeterSettings
from collector.polling.scheduler import BusWorker
from collector.store import Store, StoreWriter
from drivers.tcp import TcpBus
from simulators.bus import BusServer
from simulators.dlt645 import make_meters

SECRETS = """
[default]
password = "02000000"
[operators.bench]
operator_code = "00000001"
"""


async def main(commands: int, n_meters: int) -> None:
    addresses = [f"{i:012d}" for i in range(1, n_meters + 1)]
    meters = [MeterSettings(f"M{i}", a, "bus-1") for i, a in enumerate(addresses, 1)]
    server = BusServer(make_meters(addresses), baud=115200, td=0.002)
    with tempfile.TemporaryDirectory() as d:
        async with server:
            store = Store(Path(d) / "amic.db")
            writer = StoreWriter(store)
            await writer.start()
            worker = BusWorker("bus-1", TcpBus("127.0.0.1", server.port, td=0.3, tb=0.05))
            await worker.start()
            service = RelayService(
                meters=lambda: meters, workers=lambda: {"bus-1": worker},
                secrets=parse_secrets(SECRETS), profile=lambda n: None,  # type: ignore
                record=writer.put_command,
                settings=CommandSettings(min_interval=0.0, verify_timeout=3.0,
                                         poll_interval=0.01))
            walls: list[float] = []
            over: list[float] = []  # per command: wall minus the bus time
            statuses: dict[str, int] = {}
            t_all = time.perf_counter()
            for i in range(commands):
                m = meters[i % n_meters]
                action = "trip" if (i // n_meters) % 2 == 0 else "restore"
                busy = worker.bus.busy_time
                t = time.perf_counter()
                (r,) = await service.run(action, [m.meter_id], operator="bench",
                                         reason="bench")
                walls.append((time.perf_counter() - t) * 1000)
                over.append(walls[-1] - (worker.bus.busy_time - busy) * 1000)
                statuses[r["status"]] = statuses.get(r["status"], 0) + 1
            total = time.perf_counter() - t_all
            await worker.stop(2.0)
            await worker.bus.close()
            await writer.close()
            store.close()
    over.sort()
    q = statistics.quantiles(over, n=100)
    print(f"{commands} commands on {n_meters} meters in {total:.1f} s: {statuses}")
    print(f"wall per command: median {statistics.median(walls):.1f} ms")
    print(f"overhead beyond the meter round trips: median {statistics.median(over):.2f} ms, "
          f"p95 {q[94]:.2f} ms, p99 {q[98]:.2f} ms, max {over[-1]:.2f} ms (goal p99 < 50 ms)")


if __name__ == "__main__":
    ap = argparse.ArgumentParser()
    ap.add_argument("--commands", type=int, default=400)
    ap.add_argument("--meters", type=int, default=10)
    args = ap.parse_args()
    asyncio.run(main(args.commands, args.meters))

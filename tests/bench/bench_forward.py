"""On demand: forwarder throughput, SQLite outbox -> VictoriaMetrics, vs a bare client.

    .venv/bin/python tests/bench/bench_forward.py [--rows 500000] [--batch 5000] [--no-gzip]

1. Forwarder: ``--rows`` readings in a store, one Forwarder run until its cursor
   reaches the last id (read outbox, build line protocol, POST, advance cursor).
2. Bare: the same number of points as pre-built line-protocol batches of the same size,
   written by influxdb-client's synchronous WriteApi in a loop to the same server.
Goal: forwarder >= 50k points/s and >= 0.8x bare.
"""

from __future__ import annotations

import argparse
import asyncio
import datetime as dt
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from influxdb_client import InfluxDBClient, WritePrecision  # type: ignore[attr-defined]
from influxdb_client.client.write_api import SYNCHRONOUS
from victoria import VictoriaMetrics

from collector.config.settings import MeterSettings
from collector.forward.forwarder import Forwarder
from collector.store import Store
from collector.store.records import Reading

T0 = dt.datetime(2026, 1, 1, tzinfo=dt.UTC)
QUANTITIES = ("voltage_a", "voltage_b", "voltage_c", "current_a", "current_b", "current_c",
              "power_active_total", "energy_active_forward_total")


def fill(store: Store, rows: int, meters: list[MeterSettings]) -> None:
    batch: list[Reading] = []
    i = 0
    while i < rows:
        ts = T0 + dt.timedelta(minutes=i // (len(meters) * len(QUANTITIES)))
        for m in meters:
            for q in QUANTITIES:
                batch.append(Reading(m.meter_id, q, 220.0 + (i % 100) / 10, "V", ts))
                i += 1
        if len(batch) >= 50_000 or i >= rows:
            store.write_readings(batch[: max(0, rows - (i - len(batch)))])
            batch = []


async def run_forwarder(store: Store, url: str, batch: int, gzip: bool,
                        meters: list[MeterSettings]) -> tuple[float, int]:
    fwd = Forwarder(store, url, org="amic", bucket="amic", token="t", batch=batch,
                    gzip=gzip, meters=meters, idle_interval=0.01, name="bench")
    t = time.perf_counter()
    task = asyncio.create_task(fwd.run())
    await wait_shipped(store, "bench", task, poll=0.005)
    dt_ = time.perf_counter() - t
    fwd.stop()
    await task
    return dt_, fwd.stats.points_sent


async def wait_shipped(store: Store, name: str, task: asyncio.Task[None],
                       poll: float = 0.002) -> None:
    """Until forwarder ``name`` has shipped every stored reading; raises what its task
    raised."""
    last = store.last_id("readings")
    while store.cursor(name, "readings") < last:
        if task.done():
            task.result()
        await asyncio.sleep(poll)


def run_bare(url: str, lines: list[str], batch: int, gzip: bool) -> float:
    payloads = ["\n".join(lines[i:i + batch]) for i in range(0, len(lines), batch)]
    with InfluxDBClient(url=url, token="t", org="amic", enable_gzip=gzip) as client:
        w = client.write_api(write_options=SYNCHRONOUS)
        t = time.perf_counter()
        for p in payloads:
            w.write(bucket="amic", org="amic", record=p, write_precision=WritePrecision.MS)
        return time.perf_counter() - t


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--rows", type=int, default=500_000)
    ap.add_argument("--batch", type=int, default=5000)
    ap.add_argument("--no-gzip", action="store_true")
    args = ap.parse_args()
    gzip = not args.no_gzip
    meters = [MeterSettings(f"M{i:05d}", f"{i:012d}", f"bus-{i % 16}", area=f"TQ-{i % 40:02d}")
              for i in range(1000)]
    with (tempfile.TemporaryDirectory() as d,
          Store(Path(d) / "amic.db", synchronous="NORMAL") as store):
        t = time.perf_counter()
        fill(store, args.rows, meters)
        print(f"filled {args.rows} readings in {time.perf_counter() - t:.1f} s")
        with VictoriaMetrics(Path(d) / "vm1") as vm:
            secs, points = asyncio.run(run_forwarder(store, vm.url, args.batch, gzip,
                                                     meters))
        fwd_rate = points / secs
        print(f"forwarder: {points} points in {secs:.2f} s = {fwd_rate:,.0f} points/s "
              f"(batch {args.batch}, gzip {gzip})")
        # The same lines, pre-built, to a fresh server.
        conv = Forwarder(store, "http://unused", org="o", bucket="b", meters=meters)
        lines: list[str] = []
        after = 0
        while rows := store.outbox("x", "readings", after_id=after, limit=50_000):
            lines += conv.reading_lines(rows)
            after = rows[-1]["id"]
        with VictoriaMetrics(Path(d) / "vm2") as vm:
            secs = run_bare(vm.url, lines, args.batch, gzip)
        bare_rate = len(lines) / secs
        print(f"bare influxdb-client: {len(lines)} points in {secs:.2f} s = "
              f"{bare_rate:,.0f} points/s")
        print(f"ratio forwarder/bare: {fwd_rate / bare_rate:.2f} "
              f"(goal >= 50,000 points/s and >= 0.8)")


if __name__ == "__main__":
    main()

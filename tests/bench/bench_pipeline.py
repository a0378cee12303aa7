"""On demand: sustained points/s from the poller's sink through SQLite to the time-series
store, against a bare influxdb-client write loop.

    .venv/bin/python tests/bench/bench_pipeline.py [--rows 1000000] [--batch 5000]
                                                   [--gzip-level 6]

1. Pipeline: readings are handed over the way the poller hands them to the daemon (one
   ``put_many`` of 8 readings per meter read, as ``Daemon._on_readings`` does), the
   StoreWriter commits them to SQLite (WAL, synchronous=FULL as in production) and the
   Forwarder ships the outbox to VictoriaMetrics at the same time.  Timed from the first
   reading handed over until the server acknowledged the last one.
2. Bare: the same readings written straight to a fresh server by influxdb-client's
   synchronous WriteApi in a loop, batches of the same size, gzip: each batch turned
   into line protocol with f-strings (the fastest conversion in Python; influxdb-client's
   Point objects are several times slower), no store in between.  Once with the
   client's own gzip (level 9), once at the pipeline's level (``--gzip-level``).
3. Bare, pre-built: the same lines built beforehand, only the writes timed (the
   ceiling: HTTP, gzip and the server).
Goal: pipeline >= 50k points/s and >= 0.8x bare.

Each phase also prints its CPU seconds: this process (all threads), the forwarder's
worker process and the VictoriaMetrics server.  On a shared machine the wall-clock
ratios move with the load; the CPU seconds hardly do.

The meter reads themselves are not in this figure: a bus delivers a few readings per
second, and tests/bench/bench_scale.py measures polling (CPU per 1000 reads).  This
measures whether everything after the poll keeps up with any number of buses.
"""

from __future__ import annotations

import argparse
import asyncio
import datetime as dt
import gzip
import os
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from bench_forward import run_bare, wait_shipped  # the same pre-built-lines loop
from influxdb_client import InfluxDBClient, WritePrecision  # type: ignore[attr-defined]
from influxdb_client.client.write_api import SYNCHRONOUS
from victoria import VictoriaMetrics

from collector.config.settings import MeterSettings
from collector.forward._shim_influxdb import set_body_hook
from collector.forward.forwarder import DEFAULT_GZIP_LEVEL, Forwarder
from collector.store import Store, StoreWriter
from collector.store.records import Reading

T0 = dt.datetime(2026, 1, 1, tzinfo=dt.UTC)
QUANTITIES = ("voltage_a", "voltage_b", "voltage_c", "current_a", "current_b", "current_c",
              "power_active_total", "energy_active_forward_total")


class CpuMeter:
    """CPU seconds of this process, its reaped children (the worker process) and a
    running server process, from start() to stop()."""

    def __init__(self, server_pid: int) -> None:
        self.server_pid = server_pid

    def _server(self) -> float:
        fields = Path(f"/proc/{self.server_pid}/stat").read_text().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")

    def start(self) -> CpuMeter:
        t = os.times()
        self._own, self._children, self._srv = t.user + t.system, \
            t.children_user + t.children_system, self._server()
        return self

    def stop(self) -> tuple[float, float, float]:
        """(this process, children, server) seconds."""
        t = os.times()
        return (t.user + t.system - self._own,
                t.children_user + t.children_system - self._children,
                self._server() - self._srv)


def cpu_text(cpu: tuple[float, float, float], points: int) -> str:
    own, children, server = (c * 1e6 / points for c in cpu)
    return (f"{own + children + server:.2f} CPU-s per 1M points (this process {own:.2f}, "
            f"worker process {children:.2f}, server {server:.2f})")


def meter_reads(rows: int, meters: list[MeterSettings]) -> list[list[Reading]]:
    """The readings of successive meter reads (8 each), as the poller produces them."""
    out: list[list[Reading]] = []
    i = 0
    while i < rows:
        m = meters[(i // len(QUANTITIES)) % len(meters)]
        ts = T0 + dt.timedelta(milliseconds=i)
        out.append([Reading(m.meter_id, q, 220.0 + (i % 100) / 10, "V", ts)
                    for q in QUANTITIES])
        i += len(QUANTITIES)
    return out


async def run_pipeline(path: Path, url: str, reads: list[list[Reading]], batch: int,
                       meters: list[MeterSettings],
                       gzip_level: int = DEFAULT_GZIP_LEVEL) -> tuple[float, float, int, int]:
    """(seconds to committed, seconds to acknowledged, points sent, max outbox lag)."""
    store = Store(path)
    writer = StoreWriter(store)  # the daemon's defaults: 1 s or 2000 rows per commit
    fwd = Forwarder(store, url, org="amic", bucket="amic", token="t", batch=batch,
                    gzip_level=gzip_level,
                    meters=meters, idle_interval=0.05)
    await writer.start()
    task = asyncio.create_task(fwd.run())
    await asyncio.sleep(0.2)  # the forwarder is connected and idle
    max_lag = 0
    t = time.perf_counter()
    for n, rows in enumerate(reads):
        writer.put_many(rows)
        if n % 500 == 499:
            await asyncio.sleep(0)  # the poller yields between jobs
            if n % 20_000 == 19_999:
                # by id, not outbox_lag's count(*): that scans the backlog in this loop
                max_lag = max(max_lag, writer.pending + store.last_id("readings")
                              - store.cursor("timeseries", "readings"))
    await writer.flush()
    committed = time.perf_counter() - t
    await wait_shipped(store, "timeseries", task)
    acked = time.perf_counter() - t
    fwd.stop()
    await task
    await writer.close()
    store.close()
    return committed, acked, fwd.stats.points_sent, max_lag


def run_bare_readings(url: str, reads: list[list[Reading]], batch: int,
                      tags: dict[str, str], gzip_level: int | None = None) -> tuple[float, int]:
    """Readings to the server directly: (seconds, points).  ``gzip_level``: compress at
    this level instead of influxdb-client's own (9)."""
    flat = [r for rows in reads for r in rows]
    points = 0
    with InfluxDBClient(url=url, token="t", org="amic", enable_gzip=True) as client:
        if gzip_level is not None:
            def body(path: str, data: bytes | str, default: object) -> bytes:
                raw = data if isinstance(data, bytes) else data.encode()
                return gzip.compress(raw, compresslevel=gzip_level)
            set_body_hook(client, body)
        w = client.write_api(write_options=SYNCHRONOUS)
        t = time.perf_counter()
        for i in range(0, len(flat), batch):
            lines = [f"reading,meter={r.meter},quantity={r.quantity}{tags[r.meter]} "
                     f"value={r.value!r} {int(r.ts.timestamp() * 1000)}"
                     for r in flat[i:i + batch]]
            w.write(bucket="amic", org="amic", record="\n".join(lines),
                    write_precision=WritePrecision.MS)
            points += len(lines)
        return time.perf_counter() - t, points


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--rows", type=int, default=1_000_000)
    ap.add_argument("--batch", type=int, default=5000)
    ap.add_argument("--gzip-level", type=int, default=DEFAULT_GZIP_LEVEL,
                    help="the pipeline's [timeseries] gzip_level (influxdb-client's own: 9)")
    args = ap.parse_args()
    meters = [MeterSettings(f"M{i:05d}", f"{i:012d}", f"bus-{i % 16}", area=f"TQ-{i % 40:02d}")
              for i in range(1000)]
    reads = meter_reads(args.rows, meters)
    points = sum(len(r) for r in reads)
    with tempfile.TemporaryDirectory() as d:
        with VictoriaMetrics(Path(d) / "vm1") as vm:
            assert vm.proc is not None
            cpu = CpuMeter(vm.proc.pid).start()
            committed, acked, sent, lag = asyncio.run(
                run_pipeline(Path(d) / "amic.db", vm.url, reads, args.batch, meters,
                             args.gzip_level))
            pipe_cpu = cpu.stop()
        rate = sent / acked
        print(f"pipeline: {points:,} points handed over, {sent:,} acknowledged in "
              f"{acked:.2f} s = {rate:,.0f} points/s (all committed after {committed:.2f} s;"
              f" largest backlog seen {lag:,} rows); {cpu_text(pipe_cpu, sent)}")
        conv = Forwarder(Store(Path(d) / "amic.db"), "http://unused", org="o", bucket="b",
                         meters=meters)
        lines = conv.reading_lines(conv.store.outbox("x", "readings", after_id=0,
                                                     limit=points))
        conv.store.close()
        with VictoriaMetrics(Path(d) / "vm2") as vm:
            assert vm.proc is not None
            cpu = CpuMeter(vm.proc.pid).start()
            secs, n = run_bare_readings(vm.url, reads, args.batch, conv._meter_tags)
            bare_cpu = cpu.stop()
        bare = n / secs
        print(f"bare influxdb-client from readings: {n:,} points in {secs:.2f} s = "
              f"{bare:,.0f} points/s; {cpu_text(bare_cpu, n)}")
        with VictoriaMetrics(Path(d) / "vm4") as vm:
            assert vm.proc is not None
            cpu = CpuMeter(vm.proc.pid).start()
            secs, n = run_bare_readings(vm.url, reads, args.batch, conv._meter_tags,
                                        args.gzip_level)
            same_cpu = cpu.stop()
        same = n / secs
        print(f"bare influxdb-client from readings, gzip level {args.gzip_level} as the "
              f"pipeline: {n:,} points in {secs:.2f} s = {same:,.0f} points/s; "
              f"{cpu_text(same_cpu, n)}")
        with VictoriaMetrics(Path(d) / "vm3") as vm:
            secs = run_bare(vm.url, lines, args.batch, True)
        ceiling = len(lines) / secs
        print(f"bare influxdb-client, pre-built lines: {len(lines):,} points in {secs:.2f} s"
              f" = {ceiling:,.0f} points/s")
        print(f"ratio pipeline/bare: {rate / bare:.2f}; at the same gzip level: "
              f"{rate / same:.2f}; pipeline/pre-built: {rate / ceiling:.2f} "
              f"(goal >= 50,000 points/s and >= 0.8)")
        print(f"CPU ratio bare/pipeline: {sum(bare_cpu) / sum(pipe_cpu):.2f}; at the same "
              f"gzip level: {sum(same_cpu) / sum(pipe_cpu):.2f}")


if __name__ == "__main__":
    main()

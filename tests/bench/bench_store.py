#!/usr/bin/env python
"""Store write throughput: readings committed per second through StoreWriter.

    .venv/bin/python tests/bench/bench_store.py [--readings 200000] [--synchronous FULL]
        [--commit-rows 2000] [--commit-interval 1.0] [--cycle 400000] [--dir DIR]

Scenarios, each on a fresh store file (in a temporary directory on the same file system
as ``--dir``, default: the system temp dir; use the disk the collector will use, fsync
cost is most of the commit time with synchronous=FULL):

- ``put_many x20``: ``--readings`` readings queued as one ``put_many`` of 20 per meter
  (one meter poll of 20 quantities), as fast as the event loop can; the clock stops when
  ``flush()`` returns, i.e. everything is committed.
- ``put x1``: the same readings, queued one ``put`` at a time.
- ``flush every N``: the same, waiting for the commit every ``--commit-rows`` readings:
  transactions of commit_rows rows, the size a slower producer (a real poll) gets.
- ``one cycle``: ``--cycle`` readings queued at once (a whole polling cycle), then flushed.

Figures: readings/s committed, commits and commit latency (median, p95, max, from the
writer's ``on_commit``), event-loop time spent inside ``put*`` per reading, the
longest stall the event loop saw while the writer worked (a 5 ms ticker), and the file
size per million readings (database + WAL after a TRUNCATE checkpoint).  No asserts.
"""

from __future__ import annotations

import argparse
import asyncio
import datetime as dt
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

from collector.store import DB_NAME, CommitInfo, Store, StoreWriter  # noqa: E402
from collector.store.records import Reading  # noqa: E402
from protocols.quantities import QUANTITIES  # noqa: E402

PER_METER = 20
NAMES = [q for q in QUANTITIES if q.startswith(("energy_active", "voltage", "current"))]
NAMES = (NAMES * 2)[:PER_METER]


def make_polls(n: int, start: dt.datetime) -> list[list[Reading]]:
    """n readings as polls of PER_METER quantities of one meter; one ts per poll."""
    polls: list[list[Reading]] = []
    for i in range(0, n, PER_METER):
        meter = f"M{(i // PER_METER) % 20_000:06d}"
        ts = start + dt.timedelta(milliseconds=i)
        polls.append([Reading(meter, q, 1000.0 + i + k * 0.01, QUANTITIES[q].unit, ts)
                      for k, q in enumerate(NAMES[:min(PER_METER, n - i)])])
    return polls


async def ticker(stop: asyncio.Event, worst: list[float]) -> None:
    period = 0.005
    last = time.perf_counter()
    while not stop.is_set():
        await asyncio.sleep(period)
        now = time.perf_counter()
        worst[0] = max(worst[0], now - last - period)
        last = now


def pct(values: list[float], p: float) -> float:
    if not values:
        return 0.0
    values = sorted(values)
    return values[min(len(values) - 1, int(p * len(values)))]


async def scenario(name: str, store: Store, polls: list[list[Reading]], mode: str,
                   args: argparse.Namespace) -> int:
    infos: list[CommitInfo] = []
    writer = StoreWriter(store, commit_interval=args.commit_interval,
                         commit_rows=args.commit_rows, on_commit=infos.append)
    await writer.start()
    n = sum(len(p) for p in polls)
    stop = asyncio.Event()
    worst = [0.0]
    tick = asyncio.create_task(ticker(stop, worst))
    await asyncio.sleep(0.02)
    in_put = 0.0
    t0 = time.perf_counter()
    if mode == "single":
        put: Callable[[Reading], None] = writer.put
        for poll in polls:
            t = time.perf_counter()
            for r in poll:
                put(r)
            in_put += time.perf_counter() - t
            await asyncio.sleep(0)
    elif mode == "small":  # a trickle: every commit_rows readings wait for their commit
        since_flush = 0
        for poll in polls:
            t = time.perf_counter()
            writer.put_many(poll)
            in_put += time.perf_counter() - t
            since_flush += len(poll)
            if since_flush >= args.commit_rows:
                await writer.flush()
                since_flush = 0
    elif mode == "many":
        for poll in polls:
            t = time.perf_counter()
            writer.put_many(poll)
            in_put += time.perf_counter() - t
            await asyncio.sleep(0)
    else:  # one cycle: everything queued, then committed
        t = time.perf_counter()
        for poll in polls:
            writer.put_many(poll)
        in_put = time.perf_counter() - t
    queued = time.perf_counter() - t0
    await writer.flush()
    took = time.perf_counter() - t0
    stop.set()
    await tick
    await writer.close()
    lat = [i.seconds * 1000 for i in infos]
    print(f"{name:<22} {n:>8,} readings  {n / took:>9,.0f} /s committed  "
          f"(queued in {queued:.2f} s, all committed at {took:.2f} s)")
    print(f"{'':<22} {writer.commits:>5} commits, rows/commit {n / max(1, writer.commits):,.0f}; "
          f"commit ms median {statistics.median(lat) if lat else 0:.1f} "
          f"p95 {pct(lat, 0.95):.1f} max {max(lat, default=0):.1f}")
    print(f"{'':<22} event loop: {in_put / n * 1e6:.2f} us per reading inside put*, "
          f"longest stall {worst[0] * 1000:.1f} ms")
    return n


async def main(args: argparse.Namespace) -> None:
    print(f"Python {sys.version.split()[0]}, SQLite {__import__('sqlite3').sqlite_version}, "
          f"synchronous={args.synchronous}, commit_rows={args.commit_rows}, "
          f"commit_interval={args.commit_interval}")
    start = dt.datetime(2026, 3, 1, tzinfo=dt.UTC)
    with tempfile.TemporaryDirectory(dir=args.dir, prefix="amic-bench-") as tmp:
        runs = [("put_many x20", "many", args.readings), ("put x1", "single", args.readings),
                (f"flush every {args.commit_rows}", "small", args.readings)]
        if args.cycle:
            runs.append((f"one cycle of {args.cycle:,}", "cycle", args.cycle))
        total_readings = 0
        size_store: Store | None = None
        for i, (name, mode, n) in enumerate(runs):
            path = Path(tmp) / f"{i}-{DB_NAME}"
            store = Store(path, synchronous=args.synchronous)
            polls = make_polls(n, start)
            await scenario(name, store, polls, mode, args)
            if i == 0:
                size_store, total_readings = store, n
            else:
                store.close()
        assert size_store is not None
        # Size: append until about a million readings, then checkpoint.
        writer = StoreWriter(size_store, commit_interval=args.commit_interval,
                             commit_rows=args.commit_rows)
        await writer.start()
        t = start + dt.timedelta(days=1)
        while total_readings < args.size_readings:
            n = min(200_000, args.size_readings - total_readings)
            for poll in make_polls(n, t):
                writer.put_many(poll)
            await writer.flush()
            total_readings += n
            t += dt.timedelta(days=1)
        await writer.close()
        size_store.checkpoint("TRUNCATE")
        size = size_store.store_size_bytes()
        t0 = time.perf_counter()
        rows = size_store.recent_readings(meter="M000123", limit=50)
        q_ms = (time.perf_counter() - t0) * 1000
        print(f"file size: {size / 1e6:.1f} MB for {total_readings:,} readings = "
              f"{size / total_readings * 1e6 / 1e6:.1f} MB per million "
              f"({size / total_readings:.0f} bytes per reading incl. 2 indexes)")
        print(f"query: 50 newest readings of one meter in {q_ms:.1f} ms ({len(rows)} rows)")
        size_store.close()


if __name__ == "__main__":
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--readings", type=int, default=200_000)
    ap.add_argument("--cycle", type=int, default=400_000, help="0: skip the one-cycle run")
    ap.add_argument("--size-readings", type=int, default=1_000_000,
                    help="readings in the store whose size is reported")
    ap.add_argument("--synchronous", default="FULL", choices=["FULL", "NORMAL", "OFF"])
    ap.add_argument("--commit-rows", type=int, default=2000)
    ap.add_argument("--commit-interval", type=float, default=1.0)
    ap.add_argument("--dir", default=None, help="where to create the temporary store")
    asyncio.run(main(ap.parse_args()))

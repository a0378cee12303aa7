#!/usr/bin/env python
"""Scale: 1,000 simulated TCP concentrators x 100 meters x 4 quantities in one cycle.

    .venv/bin/python tests/bench/bench_scale.py [--buses 1000] [--meters 100] [--farms 2]
        [--farm light|full] [--profile FILE]

The simulators run in ``--farms`` separate processes (no line timing: this measures the
collector, not RS-485): by default the light farm (tests/bench/_lightfarm.py, no state
per meter, so 100k meters fit), ``--farm full`` the full simulators (tests/bench/_farm.py,
about 115 KB a meter).  The collector runs here, as ``amic run`` would: the Daemon with
its bus workers, scheduler and store writer on the embedded SQLite store, one cycle,
then the SIGTERM path (drain + commit).  Figures: completion time, success rate,
collector CPU seconds per 1,000 reads (user + system of this process, all threads, from
the daemon's start to the store's last commit), the share of it spent in the garbage
collector (per generation, timed by gc.callbacks), peak RSS, and the rows committed.
``--profile FILE``: cProfile of the collector's run written to FILE (it slows the run).
"""

from __future__ import annotations

import argparse
import asyncio
import cProfile
import gc
import json
import resource
import sqlite3
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

from collector.config.settings import (  # noqa: E402
    BusSettings,
    CollectorSettings,
    MeterSettings,
    ScheduleSettings,
    Settings,
)
from collector.service.daemon import Daemon  # noqa: E402
from collector.service.notify import Notifier  # noqa: E402

QUANTITIES = ("energy_active_forward_total", "voltage_a", "current_a", "power_active_total")


FARMS = {"light": "tests/bench/_lightfarm.py", "full": "tests/bench/_farm.py"}


def start_farms(buses: int, meters: int, farms: int, kind: str = "light"
                ) -> tuple[list[subprocess.Popen[str]], list[int]]:
    procs, ports = [], []
    per = -(-buses // farms)
    for f in range(farms):
        first = f * per + 1
        n = min(per, buses - f * per)
        if n <= 0:
            break
        procs.append(subprocess.Popen(
            [sys.executable, str(ROOT / FARMS[kind]), "--buses", str(n),
             "--meters", str(meters), "--first", str(first)],
            stdout=subprocess.PIPE, text=True))
    for p in procs:
        assert p.stdout is not None
        ports.extend(json.loads(p.stdout.readline())["ports"])
    return procs, ports


def stop_farms(procs: list[subprocess.Popen[str]]) -> None:
    for p in procs:
        p.terminate()
    for p in procs:
        try:
            p.wait(timeout=20)
        except subprocess.TimeoutExpired:  # a farm busy closing sockets: no need to wait
            p.kill()
            p.wait()


def cpu() -> float:
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime


def sys_cpu() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_stime


class GcTimer:
    """CPU seconds spent in each generation's collections (any thread), via gc.callbacks."""

    def __init__(self) -> None:
        self.seconds = [0.0, 0.0, 0.0]
        self.counts = [0, 0, 0]
        self._started: dict[int, float] = {}

    def __call__(self, phase: str, info: dict[str, int]) -> None:
        # A collection runs in the thread that triggered it, holding the GIL: that
        # thread's CPU clock times it.
        now = time.thread_time()
        me = threading.get_ident()
        if phase == "start":
            self._started[me] = now
        elif (t0 := self._started.pop(me, None)) is not None:
            self.seconds[info["generation"]] += now - t0
            self.counts[info["generation"]] += 1

    def __enter__(self) -> GcTimer:
        gc.callbacks.append(self)
        return self

    def __exit__(self, *exc: object) -> None:
        gc.callbacks.remove(self)


GC_SEEN: dict[str, object] = {}  # the daemon's GC settings once its cycle ended


async def collect(ports: list[int], meters: int, data_dir: Path
                  ) -> tuple[Daemon, float, float, float]:
    buses = tuple(BusSettings(name=f"c{b:04d}", kind="tcp", host="127.0.0.1", port=port,
                              td=5.0, tb=2.0) for b, port in enumerate(ports, 1))
    ms = tuple(MeterSettings(meter_id=f"{b:04d}{m:08d}", address=f"{b:04d}{m:08d}",
                             bus=f"c{b:04d}", area=f"TQ-{b:04d}")
               for b in range(1, len(ports) + 1) for m in range(1, meters + 1))
    settings = Settings(
        source=Path("<bench>"),
        collector=CollectorSettings(id="bench", data_dir=data_dir, commit_interval=1.0,
                                    commit_rows=20_000),
        buses=buses, meters=ms,
        schedules=(ScheduleSettings(name="scale", interval=86400, quantities=QUANTITIES,
                                    retries=1),))
    daemon = Daemon(settings, notifier=Notifier.from_env({}), align=False)
    cpu0, sys0, t0 = cpu(), sys_cpu(), time.monotonic()

    async def stop_after_cycle() -> None:
        while daemon.poller is None or "scale" not in daemon.poller.last_cycle:
            await asyncio.sleep(0.2)
        GC_SEEN.update(threshold=gc.get_threshold(), frozen=gc.get_freeze_count())
        daemon.stop_requested.set()

    watcher = asyncio.create_task(stop_after_cycle())
    await daemon.run()
    await watcher
    return daemon, cpu() - cpu0, sys_cpu() - sys0, time.monotonic() - t0


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--buses", type=int, default=1000)
    ap.add_argument("--meters", type=int, default=100)
    ap.add_argument("--farms", type=int, default=2)
    ap.add_argument("--farm", choices=sorted(FARMS), default="light")
    ap.add_argument("--profile", type=Path, help="write a cProfile of the collector here")
    a = ap.parse_args()
    t = time.monotonic()
    procs, ports = start_farms(a.buses, a.meters, a.farms, a.farm)
    print(f"simulators ({a.farm}): {len(ports)} concentrators x {a.meters} meters in "
          f"{len(procs)} processes, up in {time.monotonic() - t:.1f} s")
    try:
        with tempfile.TemporaryDirectory() as tmp:
            profiler = cProfile.Profile() if a.profile else None
            with GcTimer() as gct:
                if profiler is not None:
                    profiler.enable()
                try:
                    daemon, cpu_s, sys_s, wall = asyncio.run(collect(ports, a.meters, Path(tmp)))
                finally:
                    if profiler is not None:
                        profiler.disable()
                        profiler.dump_stats(a.profile)
            cycle = daemon.poller.last_cycle["scale"] if daemon.poller else None
            assert cycle is not None and cycle.ended is not None
            with sqlite3.connect(Path(tmp) / "amic.db") as c:
                rows = c.execute("SELECT count(*) FROM readings").fetchone()[0]
                ok = c.execute("PRAGMA integrity_check").fetchone()[0]
            rss_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
            took = (cycle.ended - cycle.started).total_seconds()
            reads = cycle.succeeded * len(QUANTITIES)
            print(f"cycle: {cycle.succeeded}/{cycle.planned} meters "
                  f"({100 * cycle.success_rate:.2f}% success) in {took:.1f} s; "
                  f"{rows} readings committed (expected {cycle.planned * len(QUANTITIES)}), "
                  f"integrity {ok}")
            print(f"collector: {cpu_s:.1f} CPU-s ({sys_s:.1f} s system) over {wall:.1f} s wall "
                  f"(start to last commit) = {1000 * cpu_s / max(reads, 1):.3f} CPU-s per "
                  f"1,000 reads (goal <= 0.2); peak RSS {rss_mb:.0f} MB (goal <= 300)")
            g = gct.seconds
            print(f"gc: gen0 {g[0]:.1f} s ({gct.counts[0]}) + gen1 {g[1]:.1f} s "
                  f"({gct.counts[1]}) + gen2 {g[2]:.1f} s ({gct.counts[2]}) = {sum(g):.1f} s, "
                  f"{100 * sum(g) / max(cpu_s, 1e-9):.1f}% of the collector's CPU (goal <= 10%); "
                  f"daemon's thresholds {GC_SEEN.get('threshold')}, "
                  f"{GC_SEEN.get('frozen')} objects frozen")
    finally:
        stop_farms(procs)


if __name__ == "__main__":
    main()

"""A concentrator's own clock under the meters' time-sync policy: read (AFN0C F2), set
(AFN05 F31) when off by more than ``min_drift`` and at most ``max_sync_drift``, once a
day; left alone within tolerance; ``clock_drift_large`` beyond.  Then the same through
``amic run``'s daily job."""

from __future__ import annotations

import asyncio
import datetime as dt
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

from conftest import free_port
from daemonproc import Daemon
from test_daemon_concentrator import A1, query, until

from collector.daily.timesync import TimeSync, TimeSyncSettings
from collector.polling.scheduler import BusWorker
from drivers.concentrator_meter import concentrator_line
from drivers.qgdw3761 import MasterStation, TerminalId
from protocols.qgdw3761 import AFN
from simulators.concentrator import ConcentratorSimulator

OFFSETS = {1: dt.timedelta(minutes=5), 2: dt.timedelta(seconds=10),
           3: dt.timedelta(minutes=20)}


@asynccontextmanager
async def fleet() -> AsyncIterator[tuple[dict[int, ConcentratorSimulator],
                                         dict[int, BusWorker]]]:
    known = {TerminalId(A1, a2) for a2 in OFFSETS}
    async with MasterStation("127.0.0.1", 0, terminals=known.__contains__,
                             request_timeout=3.0) as master:
        sims = {a2: ConcentratorSimulator("127.0.0.1", master.port, a1=A1, a2=a2, meters=1)
                for a2 in OFFSETS}
        workers: dict[int, BusWorker] = {}
        for a2, sim in sims.items():
            sim.clock_offset = OFFSETS[a2]
            sim.start()
            line = concentrator_line(master, TerminalId(A1, a2))
            worker = BusWorker(f"tq-{a2}", line.bus)
            worker.line = line
            await worker.start()
            workers[a2] = worker
        try:
            for a2 in OFFSETS:
                await master.wait_online(TerminalId(A1, a2), 10)
            yield sims, workers
        finally:
            for w in workers.values():
                await w.stop(1.0)
            for s in sims.values():
                await s.stop()


def off_by(sim: ConcentratorSimulator) -> float:
    return (sim.now() - dt.datetime.now()).total_seconds()


async def test_off_by_minutes_is_set_within_tolerance_left_alone_far_off_reported() -> None:
    # host local time, as the simulators keep it; noon, away from the midnight guard
    sync = TimeSync(TimeSyncSettings(tz=None, settle=0.0))
    noon = dt.datetime.combine(dt.date.today(), dt.time(12)).astimezone(dt.UTC)
    async with fleet() as (sims, workers):
        results = {a2: await sync.run_concentrator(w, w.line.terminal, noon)  # type: ignore[arg-type]
                   for a2, w in workers.items()}

        # 5 minutes fast: set, read again, corrected
        r = results[1]
        assert 295 <= r.drifts["tq-1"] <= 305
        assert r.broadcast and r.corrected == ["tq-1"] and abs(r.after["tq-1"]) <= 2
        assert abs(off_by(sims[1])) <= 2
        assert sims[1].stats.requests[AFN.CONTROL] == 1
        assert [(e.kind, e.meter, e.bus, e.value, e.detail) for e in r.events] == [
            ("clock_synced", None, "tq-1", 1.0, "tq-1")]

        # 10 s: within min_drift (30 s), nothing sent, no event
        r = results[2]
        assert 8 <= r.drifts["tq-2"] <= 12 and not r.broadcast and not r.events
        assert sims[2].stats.requests[AFN.CONTROL] == 0
        assert 9 <= off_by(sims[2]) <= 11

        # 20 minutes: beyond max_sync_drift (10 min): reported, not set
        r = results[3]
        assert not r.broadcast and sims[3].stats.requests[AFN.CONTROL] == 0
        assert [(e.kind, e.meter, e.bus, e.severity) for e in r.events] == [
            ("clock_drift_large", None, "tq-3", 2)]
        assert r.events[0].value is not None and 1195 <= r.events[0].value <= 1205

        # once a day: tq-1 off again the same day is not set again (the next day it is)
        sims[1].clock_offset = dt.timedelta(minutes=2)
        again = await sync.run_concentrator(workers[1], workers[1].line.terminal, noon)  # type: ignore[arg-type]
        assert not again.broadcast and again.reason.startswith("already")
        assert sims[1].stats.requests[AFN.CONTROL] == 1
        nextday = await sync.run_concentrator(workers[1], workers[1].line.terminal,  # type: ignore[arg-type]
                                              noon + dt.timedelta(days=1))
        assert nextday.corrected == ["tq-1"] and sims[1].stats.requests[AFN.CONTROL] == 2


class ZoneClock:
    """The simulator's clock in a given fixed-offset zone (naive local time)."""

    def __init__(self, offset: dt.timedelta) -> None:
        self.tz = dt.timezone(offset)

    def now(self) -> dt.datetime:
        return dt.datetime.now(self.tz).replace(tzinfo=None)

    def monotonic(self) -> float:
        return time.monotonic()


def noon_zone() -> tuple[str, dt.timedelta]:
    """A fixed-offset zone where it is about noon now: the daily job's time sync is due
    and far from the midnight guard."""
    hours = 12 - dt.datetime.now(dt.UTC).hour
    name = "Etc/GMT" if hours == 0 else f"Etc/GMT{'-' if hours > 0 else '+'}{abs(hours)}"
    return name, dt.timedelta(hours=hours)


async def test_the_daily_job_sets_a_concentrators_clock(tmp_path: Path) -> None:
    port = free_port()
    tz, offset = noon_zone()
    cfg = tmp_path / "amic.toml"
    cfg.write_text(f"""
[collector]
id = "conc-gw"
data_dir = "data"
commit_interval = "200ms"

[[listener]]
name = "dialin"
listen = "127.0.0.1:{port}"
protocol = "3761"
request_timeout = "3s"

[[concentrator]]
name = "tq-1"
a1 = "{A1}"
a2 = 1
listener = "dialin"

[[concentrator]]
name = "tq-2"
a1 = "{A1}"
a2 = 2
listener = "dialin"

[[meter]]
meter_id = "C1-M1"
address = "000001000001"
bus = "tq-1"
pn = 1

[schedule.slow]
interval = "1h"
quantities = ["energy_active_forward_total"]

[daily]
tz = "{tz}"
timesync_at = "00:00"
report_at = "23:59"
backfill_days = 0
audit_fraction = 0
""")
    sims = [ConcentratorSimulator("127.0.0.1", port, a1=A1, a2=a2, meters=1,
                                  clock=ZoneClock(offset), reconnect_delay=0.3)
            for a2 in (1, 2)]
    sims[0].clock_offset = dt.timedelta(minutes=-5)
    sims[1].clock_offset = dt.timedelta(seconds=5)
    for s in sims:
        s.start()
    daemon = Daemon(cfg, tmp_path)
    try:
        await asyncio.to_thread(daemon.wait_for, "READY=1", 20.0)

        def synced() -> list[tuple[object, ...]]:
            return query(tmp_path, "SELECT kind, meter, bus, value, detail FROM events "
                                   "WHERE kind LIKE 'clock%' ORDER BY id")

        await until(lambda: any(r[0] == "clock_synced" for r in synced()), 30,
                    "the concentrator's clock set")
        assert [r for r in synced() if r[2] == "tq-1"] == [
            ("clock_synced", None, "tq-1", 1.0, "tq-1")]
        assert abs((sims[0].now() - ZoneClock(offset).now()).total_seconds()) <= 2
        assert sims[0].stats.requests[AFN.CONTROL] == 1
        # within tolerance: left alone, no event
        assert sims[1].stats.requests[AFN.CONTROL] == 0
        assert sims[1].clock_offset == dt.timedelta(seconds=5)
        assert not [r for r in synced() if r[2] == "tq-2"]
    finally:
        for s in sims:
            await s.stop()
        code = await asyncio.to_thread(daemon.stop)
    assert code == 0
    assert "Traceback" not in daemon.log.read_text()

"""The daemon's daily jobs against simulated meters: backfill of frozen days, line loss
per area (complete, and incomplete with the missing meter listed), read success, time
sync (3 min synced, 20 min reported), audit re-reads; stored as daily rows and events."""

from __future__ import annotations

import asyncio
import datetime as dt
import json
import sqlite3
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

from click.testing import CliRunner
from conftest import until

from collector.cli import main
from collector.config import load_settings
from collector.service.daemon import Daemon
from collector.service.notify import Notifier
from collector.store.records import utcnow
from simulators.bus import BusServer
from simulators.dlt645 import make_meters
from simulators.meter import MeterConfig

# The simulated meters keep the host's local time: the jobs must use the same zone.
_OFFSET = int((dt.datetime.now().astimezone().utcoffset() or dt.timedelta()).total_seconds()
              // 3600)
ZONE = "UTC" if _OFFSET == 0 else f"Etc/GMT{-_OFFSET:+d}"
TZ = ZoneInfo(ZONE)
CONFIG = """
[collector]
id = "daily-gw"
data_dir = "data"
commit_interval = "100ms"

[daily]
tz = "{zone}"
report_at = "23:59:59"
timesync_at = "23:59:59"
backfill_at = "23:59:59"
backfill_days = 2
audit_fraction = 1.0

[[bus]]
name = "conc-1"
type = "tcp"
host = "127.0.0.1"
port = {port}
td_ms = 200
{meters}
[schedule.daily]
interval = "1h"
retries = 0
quantities = ["freeze_daily_energy_active_forward_total"]
"""
AREAS = {"M1": ("TQ-1", "area_master"), "M2": ("TQ-1", "customer"),
         "M3": ("TQ-1", "customer"), "M4": ("TQ-2", "area_master"),
         "M5": ("TQ-2", "customer")}
CONFIGS = {"M2": MeterConfig(clock_offset=dt.timedelta(minutes=3)),
           "M3": MeterConfig(clock_offset=dt.timedelta(minutes=20))}


def q(tmp: Path, sql: str, *args: object) -> list[tuple[Any, ...]]:
    with sqlite3.connect(tmp / "data" / "amic.db") as c:
        return c.execute(sql, args).fetchall()


async def test_daily_jobs(tmp_path: Path) -> None:
    addresses = {m: f"{i:012d}" for i, m in enumerate(AREAS, 1)}
    sims = [s for m, a in addresses.items()
            for s in make_meters([a], config=CONFIGS.get(m, MeterConfig()), seed=int(a))]
    model = {m: s.model for m, s in zip(addresses, sims, strict=True)}
    tables = "".join(f'\n[[meter]]\nmeter_id = "{m}"\naddress = "{a}"\nbus = "conc-1"\n'
                     f'area = "{AREAS[m][0]}"\nrole = "{AREAS[m][1]}"\n'
                     for m, a in addresses.items())
    async with BusServer(sims, baud=19200, td=0.003,
                         faults=f"dead:{addresses['M5']}") as server:
        cfg = tmp_path / "amic.toml"
        cfg.write_text(CONFIG.format(port=server.port, meters=tables, zone=ZONE))
        daemon = Daemon(load_settings(cfg), notifier=Notifier.from_env({}), align=False)
        run = asyncio.create_task(daemon.run())
        try:
            await until(lambda: daemon.poller is not None
                        and "daily" in daemon.poller.last_cycle, timeout=20)
            jobs = daemon.daily
            assert jobs is not None
            now = utcnow()
            today = now.astimezone(TZ).date()
            yesterday = today - dt.timedelta(days=1)
            # 1. Backfill: yesterday's and today's freezes, with the meters' timestamps.
            await jobs.backfill(now)
            await daemon.writer.flush()  # type: ignore[union-attr]
            filled = q(tmp_path, "SELECT meter, meter_ts FROM readings WHERE quality & 2 "
                       "AND quantity = 'freeze_daily_energy_active_forward_total'")
            assert {m for m, _ in filled} == {"M1", "M2", "M3", "M4"}  # M5 is dead
            # 2. Yesterday's line loss: TQ-1 complete, its loss the master's usage minus
            # the customers' (from the meters' own freezes); TQ-2 incomplete, M5 missing.
            records = jobs.report(yesterday)
            await daemon.writer.flush()  # type: ignore[union-attr]
            loss = {r.key: dict(r.fields) for r in records if r.kind == "lineloss"}
            complete = {r.key: r.complete for r in records if r.kind == "lineloss"}

            def usage(m: str) -> float:
                name = "freeze_daily_energy_active_forward_total"
                return float(model[m].read(name, freeze=1) - model[m].read(name, freeze=2))

            assert complete == {"TQ-1": True, "TQ-2": False}
            want = usage("M1") - usage("M2") - usage("M3")
            assert abs(loss["TQ-1"]["loss_kwh"] - want) < 0.02
            assert abs(loss["TQ-1"]["supplied_kwh"] - usage("M1")) < 0.02
            assert "loss_kwh" not in loss["TQ-2"] and loss["TQ-2"]["missing"] == 1
            events = q(tmp_path, "SELECT kind, detail FROM events WHERE kind = "
                       "'lineloss_incomplete'")
            tq2 = next(d for k, d in events if "TQ-2" in d)
            assert "M5" in tq2 and "M4" not in tq2.split("missing:")[1]
            stored = q(tmp_path, "SELECT kind, key, complete, fields FROM daily WHERE day = ?",
                       yesterday.isoformat())
            assert {(k, key) for k, key, _, _ in stored} >= {("lineloss", "TQ-1"),
                                                           ("lineloss", "TQ-2")}
            # 3. Time sync: M2 (+3 min) is synced by the broadcast, M3 (+20 min) reported.
            await jobs.sync_clocks(now)
            await daemon.writer.flush()  # type: ignore[union-attr]
            kinds = {(k, m) for k, m in q(tmp_path, "SELECT kind, meter FROM events")}
            assert ("clock_drift_large", "M3") in kinds
            drifts = dict(q(tmp_path, "SELECT meter, value FROM readings WHERE quantity = "
                            "'clock_drift' ORDER BY id"))  # the last per meter
            assert 170 < drifts["M2"] < 190 and 1190 < drifts["M3"] < 1210
            assert abs((model["M2"].now() - dt.datetime.now()).total_seconds()) < 5
            assert (model["M3"].now() - dt.datetime.now()).total_seconds() > 1000
            # 4. Audit re-reads of every meter: what was read this morning still holds;
            # the dead meter has nothing to compare with.
            results = await jobs.audit_reads(now)
            assert {r.meter: str(r.status) for r in results} == {
                "M1": "ok", "M2": "ok", "M3": "ok", "M4": "ok", "M5": "no_reference"}
            await daemon.writer.flush()  # type: ignore[union-attr]
            kinds = {(k, m) for k, m in q(tmp_path, "SELECT kind, meter FROM events")}
            assert not any(k == "audit_mismatch" for k, _ in kinds)
            # 5. Today's read success per area: TQ-1 all read, TQ-2 half.
            jobs.report(today)
            await daemon.writer.flush()  # type: ignore[union-attr]
            success = {key: json.loads(f) for key, f in q(
                tmp_path, "SELECT key, fields FROM daily WHERE kind = 'success_area' AND "
                "day = ?", today.isoformat())}
            assert success["TQ-1"]["ratio"] == 1.0 and success["TQ-2"]["ratio"] == 0.5
        finally:
            daemon.stop_requested.set()
            assert await asyncio.wait_for(run, 15) == 0
    # The CLI view of the same day.
    r = CliRunner().invoke(main, ["report", "lineloss", "--config", str(cfg), "--day",
                                  yesterday.isoformat()])
    assert r.exit_code == 3 and "TQ-2" in r.output

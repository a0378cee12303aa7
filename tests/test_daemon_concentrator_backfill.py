"""The daemon's daily backfill for meters behind a dialled-in concentrator: the days the
store lacks come from the concentrator's AFN 0DH F161 daily freezes, stored as a direct
DL/T645 meter's backfill stores them (names, BACKFILLED quality, the freeze time); line
loss of an area read only through its concentrator is computed from them."""

from __future__ import annotations

import asyncio
import csv
import datetime as dt
import io
import json
import sqlite3
import time
from decimal import Decimal
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

from click.testing import CliRunner
from conftest import free_port, until

from collector.cli import main
from collector.config import load_settings
from collector.service.daemon import Daemon
from collector.service.notify import Notifier
from collector.store.records import utcnow
from protocols.quantities import QUANTITIES
from simulators.concentrator import ConcentratorSimulator, meter_address
from simulators.meter import MeterModel

# The simulated meters keep the host's local time: the jobs must use the same zone.
_OFFSET = int((dt.datetime.now().astimezone().utcoffset() or dt.timedelta()).total_seconds()
              // 3600)
ZONE = "UTC" if _OFFSET == 0 else f"Etc/GMT{-_OFFSET:+d}"
TZ = ZoneInfo(ZONE)
A1 = "4403"
FORWARD = "freeze_daily_energy_active_forward_total"
BACKFILLED = 2
ROLES = {1: "area_master", 2: "customer", 3: "customer"}


def config(port: int) -> str:
    meters = "".join(
        f'\n[[meter]]\nmeter_id = "C1-M{pn}"\naddress = "{meter_address(1, pn)}"\n'
        f'bus = "tq-1"\npn = {pn}\narea = "TQ-C"\nrole = "{role}"\n'
        for pn, role in ROLES.items())
    # tq-2 never dials in: its meter is skipped, nothing waits on it for long
    meters += (f'\n[[meter]]\nmeter_id = "C2-M1"\naddress = "{meter_address(2, 1)}"\n'
               f'bus = "tq-2"\npn = 1\narea = "TQ-D"\nrole = "area_master"\n')
    return f"""
[collector]
id = "conc-daily"
data_dir = "data"
commit_interval = "100ms"

[daily]
tz = "{ZONE}"
report_at = "23:59:59"
timesync_at = "23:59:59"
backfill_at = "23:59:59"
backfill_days = 2

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
{meters}
[schedule.poll]
interval = "1h"
quantities = ["voltage_a"]
"""


def energy(model: MeterModel, n: int) -> Decimal:
    value = model.read(FORWARD, freeze=n)
    assert isinstance(value, Decimal), value
    return value


def q(tmp: Path, sql: str, *args: object) -> list[tuple[Any, ...]]:
    with sqlite3.connect(tmp / "data" / "amic.db") as c:
        return c.execute(sql, args).fetchall()


async def test_backfill_and_line_loss_from_concentrator_freezes(tmp_path: Path) -> None:
    port = free_port()
    cfg = tmp_path / "amic.toml"
    cfg.write_text(config(port))
    sim = ConcentratorSimulator("127.0.0.1", port, a1=A1, a2=1, meters=3, seed=7,
                                reconnect_delay=0.3)
    daemon = Daemon(load_settings(cfg), notifier=Notifier.from_env({}), align=False)
    run = asyncio.create_task(daemon.run())
    try:
        await until(lambda: daemon.daily is not None and daemon.writer is not None, timeout=20)
        sim.start()
        await asyncio.wait_for(sim.logged_in.wait(), 10)
        jobs = daemon.daily
        assert jobs is not None and daemon.writer is not None
        now = utcnow()
        today = now.astimezone(TZ).date()
        yesterday = today - dt.timedelta(days=1)
        models = {pn: m.model for pn in ROLES if (m := sim.meter(pn)) is not None}
        assert len(models) == 3

        t0 = time.monotonic()
        await jobs.backfill(now)
        assert time.monotonic() - t0 < 10
        await daemon.writer.flush()
        assert sim.stats.requests[0x0D] >= 1  # read as AFN 0DH class-2 data
        rows = q(tmp_path, "SELECT meter, quantity, value, meter_ts, quality FROM readings "
                           "WHERE quality & ? ORDER BY meter, meter_ts", BACKFILLED)
        forward = [r for r in rows if r[1] == FORWARD]
        # a direct DL/T645 meter's names: the freeze time and the forward energy by
        # tariff (F161 carries no reverse energy, so no reverse freeze here)
        assert {r[1] for r in rows} == {"freeze_daily_time", FORWARD} | {
            f"freeze_daily_energy_active_forward_t{t}" for t in range(1, 5)}
        units = q(tmp_path, "SELECT DISTINCT quantity, unit FROM readings WHERE quality & ?",
                  BACKFILLED)
        assert all(u == QUANTITIES[name].unit for name, u in units), units
        times = {(m, ts) for m, name, _, ts, _ in rows if name == "freeze_daily_time"}
        assert times == {(m, ts) for m, _, _, ts, _ in forward}
        assert {r[0] for r in forward} == {f"C1-M{pn}" for pn in ROLES}
        for meter, _, value, meter_ts, _ in forward:
            model = models[int(meter.rsplit("M", 1)[1])]
            taken = dt.datetime.fromtimestamp(meter_ts / 1000, TZ).replace(tzinfo=None)
            # the freeze of day D is taken at 00:00 of D+1 (the meter's local time)
            assert taken.time() == dt.time(0, 0), taken
            n = next(n for n in range(1, model.daily_freezes + 1)
                     if model.read("freeze_daily_time", freeze=n) == taken)
            assert abs(float(value) - float(energy(model, n))) < 0.01
        # yesterday's freeze (taken today at 00:00) is there for every meter
        days = {(m, dt.datetime.fromtimestamp(ts / 1000, TZ).date())
                for m, _, _, ts, _ in forward}
        assert all((f"C1-M{pn}", today) in days for pn in ROLES), days
        # a second backfill finds nothing missing and stores nothing more
        await jobs.backfill(utcnow())
        await daemon.writer.flush()
        again = q(tmp_path, "SELECT count(*) FROM readings WHERE quality & ? AND quantity = ?",
                  BACKFILLED, FORWARD)
        assert again == [(len(forward),)]

        records = jobs.report(yesterday)
        await daemon.writer.flush()
        loss = {r.key: (r.complete, dict(r.fields)) for r in records if r.kind == "lineloss"}

        def usage(pn: int) -> float:
            m = models[pn]
            return float(energy(m, 1) - energy(m, 2))

        assert loss["TQ-D"][0] is False
        complete, fields = loss["TQ-C"]
        assert complete, fields
        assert abs(fields["supplied_kwh"] - usage(1)) < 0.02
        assert abs(fields["loss_kwh"] - (usage(1) - usage(2) - usage(3))) < 0.02
    finally:
        await sim.stop()
        daemon.stop_requested.set()
        assert await asyncio.wait_for(run, 15) == 0
    # what an operator sees: the area's loss, not missing
    r = CliRunner().invoke(main, ["report", "lineloss", "-c", str(cfg), "--tz", ZONE,
                                  "--day", yesterday.isoformat(), "--json"])
    assert r.exit_code == 3, r.output  # TQ-D is incomplete
    docs = {d["area"]: d for d in map(json.loads, r.stdout.splitlines())}
    assert docs["TQ-D"]["complete"] is False
    doc = docs["TQ-C"]
    assert doc["area"] == "TQ-C" and doc["complete"] is True, doc
    assert abs(doc["loss_kwh"] - (usage(1) - usage(2) - usage(3))) < 0.02, doc
    r = CliRunner().invoke(main, ["export", "-c", str(cfg), "--tz", ZONE,
                                  "--day", yesterday.isoformat()])
    assert r.exit_code == 0, r.output
    billed = {row["meter_id"]: row for row in csv.DictReader(io.StringIO(r.stdout))}
    assert set(billed) == {f"C1-M{pn}" for pn in ROLES} | {"C2-M1"}
    assert billed.pop("C2-M1")["status"] == "missing"
    for meter, row in billed.items():
        assert (row["status"], row["source"]) == ("complete", "frozen"), row
        pn = int(meter.rsplit("M", 1)[1])
        assert abs(float(row["usage_total_kwh"]) - usage(pn)) < 0.02, row
    assert "3 complete, 0 partial, 1 missing" in r.stderr

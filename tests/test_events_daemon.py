"""End to end through ``amic run``: a meter whose cover was opened and whose phase A lost
its voltage; the daemon stores the meter's records at the meter's times (the cover an
alarm) and raises voltage_loss from the poll while the other meter of the bus answers."""

from __future__ import annotations

import asyncio
import datetime as dt
import sqlite3
import time
from decimal import Decimal
from pathlib import Path

from daemonproc import Daemon

from simulators.bus import BusServer
from simulators.dlt645 import SimulatedMeter
from simulators.meter import MeterConfig, MeterModel

# The simulated meters keep the host's local time: the daemon's [daily] uses that zone.
_OFFSET = int((dt.datetime.now().astimezone().utcoffset() or dt.timedelta()).total_seconds()
              // 3600)
ZONE = "UTC" if _OFFSET == 0 else f"Etc/GMT{-_OFFSET:+d}"

CONFIG = """
[collector]
id = "events-gw"
data_dir = "data"
commit_interval = "200ms"

[[bus]]
name = "line-1"
type = "tcp"
host = "127.0.0.1"
port = {port}
line_baud = 19200
td_ms = 300

[[meter]]
meter_id = "M1"
address = "000000000001"
bus = "line-1"
area = "TQ-1"

[[meter]]
meter_id = "M2"
address = "000000000002"
bus = "line-1"
area = "TQ-1"

[schedule.fast]
interval = "2s"
quantities = ["voltage", "status_word_4", "cover_open_count", "voltage_loss_count_a",
              "demand_active_forward_total"]

[daily]
tz = "{zone}"
events_at = "00:00"
report_at = "23:59"
timesync = false
backfill_days = 0
audit_fraction = 0.0
"""


def events(db: Path) -> list[tuple[str, str, int, int, str]]:
    if not db.exists():
        return []
    with sqlite3.connect(db) as c:
        return [(str(k), str(m), int(ts), int(s), str(d)) for k, m, ts, s, d in c.execute(
            "SELECT kind, meter, ts, severity, detail FROM events WHERE meter IS NOT NULL")]


def ms(local: dt.datetime) -> int:
    return int(local.astimezone().timestamp() * 1000)


async def test_records_and_alarms_through_amic_run(tmp_path: Path) -> None:
    models = [MeterModel(a, MeterConfig(base_kw=Decimal(2)), seed=a)
              for a in ("000000000001", "000000000002")]
    m1 = models[0]
    now = m1.now()
    opened = now - dt.timedelta(hours=2, minutes=7, seconds=3)
    m1.open_cover(opened, opened + dt.timedelta(minutes=4))
    lost = now - dt.timedelta(minutes=20)
    m1.lose_voltage("a", lost)  # still going on
    peak = now.replace(second=0) - dt.timedelta(minutes=30)
    m1.demand_peak(Decimal("8.8"), peak)
    async with BusServer([SimulatedMeter(m) for m in models], baud=19200, td=0.005) as srv:
        cfg = tmp_path / "amic.toml"
        cfg.write_text(CONFIG.format(port=srv.port, zone=ZONE))
        db = tmp_path / "data" / "amic.db"
        d = Daemon(cfg, tmp_path)
        try:
            await asyncio.to_thread(d.wait_for, "READY=1")
            deadline = time.monotonic() + 40
            want = {"meter_cover_open", "meter_voltage_loss_a", "voltage_loss"}
            while not want <= {k for k, *_ in events(db)}:
                assert time.monotonic() < deadline, (events(db), d.log.read_text()[-3000:])
                await asyncio.sleep(0.3)
        finally:
            await asyncio.to_thread(d.stop)
    got = events(db)
    cover = [e for e in got if e[0] == "meter_cover_open"]
    assert [(m, ts, sev) for _, m, ts, sev, _ in cover] == [("M1", ms(opened), 2)]
    record = [e for e in got if e[0] == "meter_voltage_loss_a"]
    assert [(m, ts) for _, m, ts, _, _ in record] == [("M1", ms(lost))]
    assert "going on" in record[0][4]
    alarm = [e for e in got if e[0] == "voltage_loss"]
    assert alarm and all(m == "M1" and sev == 2 for _, m, _, sev, _ in alarm)
    assert not any(m == "M2" for _, m, *_ in got)
    with sqlite3.connect(db) as c:
        demand = c.execute("SELECT value, meter_ts FROM readings WHERE meter = 'M1' AND "
                           "quantity = 'demand_active_forward_total' LIMIT 1").fetchone()
    assert demand == (8.8, ms(peak))

"""Load curves end to end: ``amic run`` with a ``curve`` schedule against simulated meters (one
powered down for an hour and a half yesterday), then ``amic query --curve`` and
``amic export --curve`` on what it stored."""

from __future__ import annotations

import asyncio
import csv
import datetime as dt
import io
import sqlite3
import subprocess
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from conftest import amic_command, free_port
from daemonproc import Daemon

from simulators.bus import BusServer
from simulators.dlt645 import make_meters

CONFIG = """
[collector]
id = "curve-gw"
data_dir = "data"
commit_interval = "200ms"
metrics_listen = "127.0.0.1:{mport}"

[[bus]]
name = "b1"
type = "tcp"
host = "127.0.0.1"
port = {port}
line_baud = 19200
td_ms = 500

[[meter]]
meter_id = "M1"
address = "000000000001"
bus = "b1"
area = "TQ-1"

[[meter]]
meter_id = "M2"
address = "000000000002"
bus = "b1"
area = "TQ-1"

[[meter]]
meter_id = "M3"
address = "000000000003"
bus = "b1"
area = "TQ-2"

[schedule.curves]
interval = "2s"
quantities = ["energy_active_forward_total"]
curve = ["energy_active_forward_total", "voltage_a"]
curve_days = 1
"""

# The simulated meters keep the host's local time, and so does the daemon by default.
_OFFSET = int((dt.datetime.now().astimezone().utcoffset() or dt.timedelta()).total_seconds()
              // 3600)
ZONE = "UTC" if _OFFSET == 0 else f"Etc/GMT{-_OFFSET:+d}"
YESTERDAY = dt.date.today() - dt.timedelta(days=1)
GAP = [dt.datetime.combine(YESTERDAY, dt.time(h, m)) for h, m in
       ((3, 0), (3, 15), (3, 30), (3, 45), (4, 0), (4, 15))]


@pytest.fixture
def bus_port() -> Iterator[int]:
    """Three meters on a BusServer in a thread of its own; M1 was without supply
    yesterday from 03:00 to 04:30."""
    sims = make_meters(["000000000001", "000000000002", "000000000003"], seed=5)
    sims[0].model.power_down(GAP[0], GAP[-1] + dt.timedelta(minutes=15))
    port: list[int] = []
    ready = threading.Event()
    loop = asyncio.new_event_loop()
    stop = asyncio.Event()

    async def serve() -> None:
        async with BusServer(sims, baud=19200, td=0.002) as server:
            port.append(server.port)
            ready.set()
            await stop.wait()

    thread = threading.Thread(target=loop.run_until_complete, args=(serve(),), daemon=True)
    thread.start()
    assert ready.wait(10)
    try:
        yield port[0]
    finally:
        loop.call_soon_threadsafe(stop.set)
        thread.join(10)
        loop.close()


def _rows(db: Path, sql: str, *args: object) -> list[tuple[object, ...]]:
    with sqlite3.connect(db) as c:
        return c.execute(sql, args).fetchall()


def _cycles(db: Path) -> int:
    try:
        return int(_rows(db, "SELECT count(*) FROM cycles")[0][0])  # type: ignore[call-overload]
    except sqlite3.OperationalError:
        return 0  # not created yet


def _amic(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*amic_command(), *args], capture_output=True, text=True, timeout=60)


def test_curve_schedule_stores_points_once_and_keeps_the_gap(bus_port: int,
                                                             tmp_path: Path) -> None:
    cfg = tmp_path / "amic.toml"
    cfg.write_text(CONFIG.format(port=bus_port, mport=free_port()))
    db = tmp_path / "data" / "amic.db"
    d = Daemon(cfg, tmp_path)
    try:
        d.wait_for("READY=1", timeout=30)
        deadline = time.monotonic() + 60
        while _cycles(db) < 3 and time.monotonic() < deadline:
            time.sleep(0.2)
        time.sleep(0.5)  # the last cycle's rows committed
    finally:
        assert d.stop() == 0, d.log.read_text()
    assert _cycles(db) >= 3

    lo = int(dt.datetime.combine(YESTERDAY, dt.time()).astimezone().timestamp() * 1000)
    hi = lo + 86_400_000
    per_meter = dict(_rows(db, "SELECT meter, count(*) FROM readings WHERE meter_ts >= ? "
                               "AND meter_ts < ? AND quantity = 'voltage_a' GROUP BY meter",
                           lo, hi))
    # Yesterday: 96 points, less M1's six quarter hours without supply; stored once although
    # every cycle read the curve again from the last point read.
    assert per_meter == {"M1": 90, "M2": 96, "M3": 96}
    dupes = _rows(db, "SELECT meter, quantity, meter_ts, count(*) FROM readings "
                      "WHERE meter_ts IS NOT NULL GROUP BY meter, quantity, meter_ts "
                      "HAVING count(*) > 1")
    assert dupes == []
    gap_ms = [int(t.astimezone().timestamp() * 1000) for t in GAP]
    assert _rows(db, f"SELECT count(*) FROM readings WHERE meter = 'M1' AND meter_ts IN "
                     f"({','.join(map(str, gap_ms))})") == [(0,)]
    # BACKFILLED when late (yesterday's); today's newest points are live values
    late = _rows(db, "SELECT DISTINCT quality FROM readings WHERE meter_ts IS NOT NULL AND "
                     "meter_ts < ?", hi)
    assert late == [(2,)]
    recent = int((dt.datetime.now(dt.UTC) - dt.timedelta(minutes=29)).timestamp() * 1000)
    assert {q for (q,) in _rows(db, "SELECT DISTINCT quality FROM readings WHERE meter_ts "
                                    "> ?", recent)} <= {0}
    # The rules took no curve point for a live value (a quarter hour's energy in a second).
    assert _rows(db, "SELECT kind FROM events WHERE kind LIKE 'energy%'") == []
    energy = [v for (v,) in _rows(db, "SELECT value FROM readings WHERE meter = 'M2' AND "
                                      "quantity = 'energy_active_forward_total' AND meter_ts "
                                      ">= ? AND meter_ts < ? ORDER BY meter_ts", lo, hi)]
    assert len(energy) == 96 and energy == sorted(energy)

    shown = _amic("query", "-c", str(cfg), "--curve", "M1", "--day", YESTERDAY.isoformat())
    assert shown.returncode == 0, shown.stderr
    lines = shown.stdout.splitlines()
    assert lines[0].startswith(f"load curve of M1 on {YESTERDAY.isoformat()} (local time")
    assert lines[0].endswith("90 of 96 points")
    assert lines[1].split() == ["TIME", "energy_active_forward_total", "(kWh)", "voltage_a",
                                "(V)"]
    body = lines[2:]
    assert len(body) == 96 and body[0].startswith("00:00") and body[-1].startswith("23:45")
    missing = [row.split()[0] for row in body if row.split()[1:] == ["-", "-"]]
    assert missing == [t.strftime("%H:%M") for t in GAP]

    out = _amic("export", "-c", str(cfg), "--format", "csv", "--curve", "--day",
                YESTERDAY.isoformat(), "--area", "TQ-1", "--tz", ZONE)
    assert out.returncode == 0, out.stderr
    rows = list(csv.reader(io.StringIO(out.stdout)))
    assert rows[0] == ["meter", "time", "utc", "energy_active_forward_total (kWh)",
                       "voltage_a (V)"]
    assert len(rows) == 1 + 2 * 96 and {r[0] for r in rows[1:]} == {"M1", "M2"}
    empty = [r[1] for r in rows[1:] if r[0] == "M1" and r[3] == r[4] == ""]
    assert [dt.datetime.fromisoformat(t).replace(tzinfo=None) for t in empty] == GAP
    assert "2 meter(s), 192 row(s)" in out.stderr and "6 missing" in out.stderr

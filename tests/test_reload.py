"""SIGHUP reload without cutting anything, and cycles cut by a shutdown.

An in-process daemon against a slow simulated bus (a 0.25 s reply delay: a cycle of
10 meters takes about 3 s): a reload 1 s into a cycle lets it finish on its old bus
and settings; a daily backfill in progress is not cut; a removed bus leaves /metrics;
[daily], [timeseries] and metrics_listen are applied and the other sections named; a
cycle cut by a stop is stored and forwarded as cut.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import json
import logging
import socket
import sqlite3
import urllib.error
import urllib.request
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import pytest
from conftest import free_port, until

from collector.config import load_settings
from collector.daily.reports import success_report
from collector.forward.forwarder import Forwarder
from collector.service.daemon import Daemon
from collector.service.notify import Notifier
from collector.store import (
    DB_NAME,
    INSERT_CYCLE,
    MIGRATIONS,
    SCHEMA_VERSION,
    Store,
    cycle_row,
    split_sql,
)
from collector.store.records import CycleRecord
from simulators.bus import BusServer
from simulators.dlt645 import make_meters

N = 10
ADDRESSES = [f"{i:012d}" for i in range(1, N + 1)]
REPLY_DELAY = 0.25  # seconds the simulated meters take to answer

HEAD = """
[collector]
id = "reload-gw"
data_dir = "data"
commit_interval = "{commit}"
{listen}
"""
BUS = """
[[bus]]
name = "{name}"
type = "tcp"
host = "127.0.0.1"
port = {port}
td_ms = {td_ms}
"""
METER = """
[[meter]]
meter_id = "{bus}-{i}"
address = "{address}"
bus = "{bus}"
area = "TQ-{bus}"
"""
SCHEDULE = """
[schedule.s]
interval = "{interval}"
retries = 0
quantities = ["energy_active_forward_total"]
"""


def config(path: Path, buses: dict[str, int], *, td_ms: int = 1000, interval: str = "1h",
           commit: str = "100ms", listen: str = "", extra: str = "",
           meters: int = N) -> Path:
    """A configuration of ``buses`` (name -> simulator port), each with ``meters``."""
    text = HEAD.format(commit=commit, listen=listen) + extra
    for name, port in buses.items():
        text += BUS.format(name=name, port=port, td_ms=td_ms)
        text += "".join(METER.format(bus=name, i=i, address=a)
                        for i, a in enumerate(ADDRESSES[:meters], 1))
    path.write_text(text + SCHEDULE.format(interval=interval))
    return path


def put_cycles(store: Store, cycles: list[CycleRecord]) -> None:
    with sqlite3.connect(store.path) as c:
        c.executemany(INSERT_CYCLE, map(cycle_row, cycles))


def q(tmp: Path, sql: str, *args: object) -> list[tuple[Any, ...]]:
    with sqlite3.connect(tmp / "data" / DB_NAME) as c:
        return c.execute(sql, args).fetchall()


@pytest.fixture
async def slow_bus() -> AsyncIterator[BusServer]:
    async with BusServer(make_meters(ADDRESSES, seed=5), baud=19200,
                         td=REPLY_DELAY) as server:
        yield server


async def start(cfg: Path) -> tuple[Daemon, asyncio.Task[int]]:
    daemon = Daemon(load_settings(cfg), notifier=Notifier.from_env({}), align=False)
    return daemon, asyncio.create_task(daemon.run())


async def stop(daemon: Daemon, run: asyncio.Task[int]) -> None:
    daemon.stop_requested.set()
    assert await asyncio.wait_for(run, 15) == 0


def tried(daemon: Daemon, n: int) -> Callable[[], bool]:
    """The cycle of schedule ``s`` in progress has tried ``n`` meters."""
    def check() -> bool:
        c = daemon.poller.current.get("s") if daemon.poller is not None else None
        return c is not None and c.succeeded + c.failed >= n
    return check


async def test_reload_mid_cycle_lets_the_cycle_finish_on_its_old_bus(
        tmp_path: Path, slow_bus: BusServer) -> None:
    cfg = config(tmp_path / "amic.toml", {"b1": slow_bus.port})
    daemon, run = await start(cfg)
    try:
        await until(tried(daemon, 4), timeout=20)  # about 1 s into the cycle
        assert daemon.poller is not None
        first = daemon.poller.current["s"]
        old_worker = daemon.buses["b1"].worker
        # The bus (its reply timeout) and the schedule (its interval) change.
        config(cfg, {"b1": slow_bus.port}, td_ms=900, interval="30m")
        assert await daemon.reload()
        # The cycle in progress ran to its end, on the old bus, every meter read.
        assert first.ended is not None
        assert first.planned == first.succeeded == N and first.failed_meters == []
        assert not first.cut
        assert not old_worker.alive
        entry = daemon.buses["b1"]
        assert entry.worker is not old_worker and entry.settings.td == 0.9
        assert daemon.writer is not None
        await daemon.writer.flush()
        assert q(tmp_path, "SELECT planned, succeeded, failed, cut FROM cycles WHERE "
                 "cycle_id = ?", first.cycle_id) == [(N, N, 0, 0)]
        assert len(q(tmp_path, "SELECT DISTINCT meter FROM readings")) == N
        # Then the new schedule runs, on the new bus.
        await until(lambda: daemon.poller is not None
                    and daemon.poller.last_cycle["s"] is not first, timeout=20)
        second = daemon.poller.last_cycle["s"]
        assert second.succeeded == N and not second.cut
        assert [r.settings.interval for r in daemon.runs] == [1800.0]
    finally:
        await stop(daemon, run)


async def test_reload_keeps_an_unchanged_schedule_running(
        tmp_path: Path, slow_bus: BusServer) -> None:
    """Only the alarms change: the schedule and its bus go on as they were."""
    cfg = config(tmp_path / "amic.toml", {"b1": slow_bus.port})
    daemon, run = await start(cfg)
    try:
        await until(tried(daemon, 3), timeout=20)
        assert daemon.poller is not None
        first = daemon.poller.current["s"]
        (task,), worker = daemon.schedule_tasks, daemon.buses["b1"].worker
        cfg.write_text(cfg.read_text() + "\n[alarms]\ncomm_loss_after = 3\n")
        assert await daemon.reload()
        # Applied at once: nothing had to wait for the cycle in progress.
        assert first.ended is None
        assert daemon.schedule_tasks == [task] and daemon.buses["b1"].worker is worker
        assert daemon.poller.dead_after == 3
        await until(lambda: first.ended is not None, timeout=20)
        assert first.succeeded == N and not first.cut
    finally:
        await stop(daemon, run)


async def test_reload_during_a_backfill_does_not_cut_it(tmp_path: Path) -> None:
    """The daily backfill (due at start) is running when a reload replaces its bus."""
    daily = ('\n[daily]\ntz = "UTC"\nbackfill_at = "00:00"\nbackfill_days = 2\n'
             'report_at = "23:59:59"\ntimesync = false\naudit_fraction = 0\n')
    async with BusServer(make_meters(ADDRESSES[:4], seed=7), baud=19200, td=0.1) as bus:
        await backfill_and_reload(tmp_path, bus.port, daily)


async def backfill_and_reload(tmp_path: Path, port: int, daily: str) -> None:
    cfg = config(tmp_path / "amic.toml", {"b1": port}, extra=daily, meters=4)

    def backfilled() -> set[str]:
        return {m for (m,) in q(tmp_path, "SELECT DISTINCT meter FROM readings "
                                "WHERE quality & 2")}

    daemon, run = await start(cfg)
    try:
        await until(lambda: (tmp_path / "data" / DB_NAME).exists() and backfilled(),
                    timeout=30)
        assert len(backfilled()) < 4  # still going
        config(cfg, {"b1": port}, td_ms=900, extra=daily, meters=4)
        assert await daemon.reload()
        assert daemon.writer is not None
        await daemon.writer.flush()
        # Every meter's two frozen days were read back: none was lost to the reload.
        assert backfilled() == {f"b1-{i}" for i in range(1, 5)}
        per_meter = q(tmp_path, "SELECT meter, count(DISTINCT meter_ts) FROM readings "
                      "WHERE quality & 2 GROUP BY meter")
        assert all(n >= 2 for _, n in per_meter), per_meter
        assert daemon.buses["b1"].settings.td == 0.9
    finally:
        await stop(daemon, run)


async def test_reload_removing_a_bus_drops_its_metrics(tmp_path: Path,
                                                      slow_bus: BusServer) -> None:
    async with BusServer(make_meters(ADDRESSES[:2], seed=6), baud=19200,
                         td=0.005) as fast:
        cfg = config(tmp_path / "amic.toml", {"b1": fast.port, "b2": slow_bus.port},
                     meters=2)
        daemon, run = await start(cfg)
        try:
            await until(lambda: daemon.poller is not None
                        and "s" in daemon.poller.last_cycle, timeout=20)
            await until(lambda: 'amic_bus_requests_total{bus="b2"}'
                        in daemon.metrics.render().decode(), timeout=10)  # housekeeping
            assert 'bus="b2"' in daemon.metrics.render().decode()
            config(cfg, {"b1": fast.port}, meters=2)
            assert await daemon.reload()
            assert "b2" not in daemon.buses
            text = daemon.metrics.render().decode()
            assert 'bus="b1"' in text
            assert 'bus="b2"' not in text, [ln for ln in text.splitlines() if "b2" in ln]
        finally:
            await stop(daemon, run)


def get(url: str) -> int:
    with urllib.request.urlopen(url, timeout=3) as r:
        return int(r.status)


async def test_reload_applies_daily_timeseries_metrics_listen_and_names_the_rest(
        tmp_path: Path, slow_bus: BusServer, caplog: pytest.LogCaptureFixture) -> None:
    with socket.socket() as s:  # a time-series server that is not there (retried)
        s.bind(("127.0.0.1", 0))
        dead = s.getsockname()[1]
    port_a, port_b = free_port(), free_port()

    def sections(port: int, bucket: str, audit: str) -> str:
        return (f'\n[daily]\ntz = "UTC"\nreport_at = "23:59:59"\ntimesync_at = "23:59:59"\n'
                f'backfill_at = "23:59:59"\naudit_fraction = {audit}\n'
                f'\n[timeseries]\nurl = "http://127.0.0.1:{dead}"\nbucket = "{bucket}"\n')

    cfg = config(tmp_path / "amic.toml", {"b1": slow_bus.port}, meters=2,
                 listen=f'metrics_listen = "127.0.0.1:{port_a}"',
                 extra=sections(port_a, "amic", "0"))
    daemon, run = await start(cfg)
    try:
        await until(lambda: daemon.forwarder is not None and daemon.daily is not None)
        assert get(f"http://127.0.0.1:{port_a}/metrics") == 200
        forwarder, jobs = daemon.forwarder, daemon.daily
        config(cfg, {"b1": slow_bus.port}, meters=2, commit="300ms",
               listen=f'metrics_listen = "127.0.0.1:{port_b}"',
               extra=sections(port_b, "other", "0.5"))
        with caplog.at_level(logging.INFO, logger="amic.daemon"):
            assert await daemon.reload()
        # metrics_listen: served on the new address only.
        assert get(f"http://127.0.0.1:{port_b}/metrics") == 200
        with pytest.raises(urllib.error.URLError):
            get(f"http://127.0.0.1:{port_a}/metrics")
        # [timeseries]: a new forwarder on the new bucket, the old one ended.
        assert daemon.forwarder is not None and daemon.forwarder is not forwarder
        assert daemon.forwarder.bucket == "other"
        assert sum(t.get_name() == "forwarder" and not t.done() for t in daemon._tasks) == 1
        # [daily]: re-created with the new settings.
        assert daemon.daily is not None and daemon.daily is not jobs
        assert daemon.daily.settings.audit_fraction == 0.5
        assert sum(t.get_name() == "daily" and not t.done() for t in daemon._tasks) == 1
        # [collector] commit_interval needs a restart: named, and the last line says so.
        msgs = [(r.levelno, r.getMessage()) for r in caplog.records
                if r.name == "amic.daemon"]
        assert (logging.WARNING, "reload: [collector] commit_interval changed; it takes "
                "effect only after a restart") in msgs
        level, last = msgs[-1]
        assert level == logging.WARNING and "reload partly applied" in last
        assert "restart needed for [collector] commit_interval" in last
        assert not any("reload applied" in m for _, m in msgs)
    finally:
        await stop(daemon, run)


# ---- cut cycles ------------------------------------------------------------------------

async def test_a_cycle_cut_by_a_stop_is_stored_and_forwarded_as_cut(
        tmp_path: Path, slow_bus: BusServer) -> None:
    cfg = config(tmp_path / "amic.toml", {"b1": slow_bus.port})
    daemon, run = await start(cfg)
    await until(tried(daemon, 3), timeout=20)
    await stop(daemon, run)
    with Store(tmp_path / "data" / DB_NAME) as store:
        rows = store.outbox("test", "cycles")
        assert len(rows) == 1
        row = rows[0]
        assert row["cut"] == 1 and row["planned"] == N
        tried_n = row["succeeded"] + row["failed"]
        assert 3 <= tried_n < N and row["failed"] == 0
        cycle = store.cycle(row["cycle_id"])
        assert cycle is not None and cycle.cut
        lines = Forwarder(store, "http://127.0.0.1:1", org="", bucket="b").cycle_lines(rows)
    line = next(ln for ln in lines if ln.startswith("cycle,"))
    fields = dict(f.split("=") for f in line.split(" ")[1].split(","))
    # Flagged, with the meters tried; its ratio is over them, so not a failure ratio.
    assert fields["cut"] == "1.0" and fields["attempted"] == f"{float(tried_n)}"
    assert fields["success_ratio"] == "1.0"


def test_a_cut_cycle_with_no_meter_tried_has_no_success_ratio(tmp_path: Path) -> None:
    t0 = dt.datetime(2026, 1, 2, 3, 0, tzinfo=dt.UTC)
    with Store(tmp_path / DB_NAME) as store:
        put_cycles(store, [CycleRecord("c1", "s", t0, t0 + dt.timedelta(seconds=1), 14,
                                      cut=True),
                          CycleRecord("c2", "s", t0, t0 + dt.timedelta(seconds=9), 4, 3, 1,
                                      per_area={"A": (3, 4)})])
        lines = Forwarder(store, "http://127.0.0.1:1", org="",
                          bucket="b").cycle_lines(store.outbox("t", "cycles"))
    cut = next(ln for ln in lines if ln.startswith("cycle,"))
    assert "cut=1.0" in cut and "attempted=0.0" in cut and "success_ratio" not in cut
    # A complete cycle's line is as before: no cut field.
    full = [ln for ln in lines if ln.startswith("cycle,")][1]
    assert "success_ratio=0.75," in full and "cut=" not in full


def test_store_upgrade_from_version_4_adds_the_cut_flag(tmp_path: Path) -> None:
    path = tmp_path / DB_NAME
    conn = sqlite3.connect(path)
    for script in MIGRATIONS[:4]:
        for statement in split_sql(script):
            conn.execute(statement)
    conn.execute("INSERT INTO cycles (cycle_id, schedule, started, ended, planned, "
                 "succeeded, failed, per_bus, per_area) VALUES ('old', 's', 1000, 2000, 3, "
                 "3, 0, '{}', '{}')")
    conn.execute("PRAGMA user_version = 4")
    conn.commit()
    conn.close()
    with Store(path) as s:
        assert s.schema_version == SCHEMA_VERSION == 7
        old = s.cycle("old")
        assert old is not None and not old.cut and old.succeeded == 3


def test_success_report_leaves_out_the_meters_a_cut_cycle_never_tried(
        tmp_path: Path) -> None:
    """Guard: a cut cycle's untried meters are not read failures in the daily report."""
    from collector.config.settings import MeterSettings
    from collector.store.records import Reading
    day = dt.date(2026, 1, 2)
    t0 = dt.datetime(2026, 1, 2, 3, 0, tzinfo=dt.UTC)
    meters = [MeterSettings(f"M{i}", f"{i:012d}", "b1", area="A") for i in range(1, 5)]
    with Store(tmp_path / DB_NAME) as store:
        store.sync_meters(meters)
        store.write_readings([Reading("M1", "energy_active_forward_total", 1.0, "kWh", t0)])
        put_cycles(store, [CycleRecord("c1", "s", t0, t0 + dt.timedelta(seconds=2), 4, 1, 0,
                                      per_bus={"b1": (1, 1)}, per_area={"A": (1, 1)},
                                      cut=True)])
        rows = {r.key: r for r in success_report(store, day, "UTC", by="area")}
    assert (rows["A"].planned, rows["A"].succeeded, rows["A"].failed) == (1, 1, 0)
    assert json.dumps(rows["A"].ratio) == "1.0"


async def test_a_stop_during_a_waiting_reload_is_not_held_up(tmp_path: Path,
                                                            slow_bus: BusServer) -> None:
    """SIGTERM while a reload waits for the cycle in progress: the stop wins at once."""
    cfg = config(tmp_path / "amic.toml", {"b1": slow_bus.port})
    daemon, run = await start(cfg)
    await until(tried(daemon, 2), timeout=20)
    assert daemon.poller is not None
    first = daemon.poller.current["s"]
    config(cfg, {"b1": slow_bus.port}, td_ms=900)
    reload = asyncio.create_task(daemon.reload())
    await until(lambda: first.succeeded + first.failed >= 3, timeout=10)
    assert not reload.done()  # waiting for the cycle
    loop = asyncio.get_running_loop()
    t0 = loop.time()
    await stop(daemon, run)
    assert loop.time() - t0 < 8.0  # within systemd's stop budget
    # The reload gave up instead of holding the stop until the cycle's end: cut.
    assert await reload is False
    assert first.cut and first.succeeded < N


def test_restart_needed_names_each_section_a_reload_cannot_apply(tmp_path: Path) -> None:
    from dataclasses import replace
    from decimal import Decimal

    from collector.config.settings import CommandSettings, MqttSettings, PrepaidSettings
    from collector.service.daemon import restart_needed

    old = load_settings(config(tmp_path / "amic.toml", {"b1": 1}, meters=2))
    assert restart_needed(old, old) == []
    # Applied by a reload: not named.
    same = replace(old, collector=replace(old.collector, metrics_listen="127.0.0.1:1"),
                   meters=old.meters[:1], schedules=())
    assert restart_needed(old, same) == []
    new = replace(old, collector=replace(old.collector, retention_days=30, min_free_mb=5),
                  mqtt=MqttSettings("mqtt://127.0.0.1:1883", "c"),
                  commands=CommandSettings(min_interval=5.0))
    assert restart_needed(old, new) == ["[collector] retention_days, min_free_mb", "[mqtt]",
                                        "[commands]"]
    p = PrepaidSettings(warn1=Decimal(10), warn2=Decimal(5))
    with_prepaid = replace(old, prepaid=p)
    assert restart_needed(old, with_prepaid) == ["[prepaid]"]
    one_more = replace(with_prepaid, meters=(replace(old.meters[0], prepaid=True),
                                             *old.meters[1:]))
    assert restart_needed(with_prepaid, one_more) == [
        "[[meter]] prepaid meters (the prepaid engine's accounts)"]
    assert restart_needed(with_prepaid, replace(with_prepaid, prepaid=replace(
        p, grace=60.0))) == ["[prepaid] grace"]

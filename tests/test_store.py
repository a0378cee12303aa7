"""The embedded store: schema, batching writer, durability under kill -9, outbox,
retention, and ``amic query``."""

from __future__ import annotations

import asyncio
import datetime as dt
import json
import os
import queue
import signal
import sqlite3
import subprocess
import sys
import textwrap
import threading
import time
import types
from collections.abc import Iterator
from pathlib import Path

import pytest
from click.testing import CliRunner

from collector.cli.query import parse_since, query
from collector.config.settings import MeterSettings
from collector.store import (
    DB_NAME,
    SCHEMA_VERSION,
    CommitInfo,
    Store,
    StoreError,
    StoreWriter,
)
from collector.store.records import CommandRecord, CycleRecord, Event, Quality, Reading, to_ms

ROOT = Path(__file__).resolve().parents[1]
T0 = dt.datetime(2026, 3, 1, 0, 30, tzinfo=dt.UTC)


def raw(store: Store, sql: str, *args: object) -> list[tuple[object, ...]]:
    """Rows through a separate connection, as another process would see them."""
    conn = sqlite3.connect(store.path)
    try:
        return conn.execute(sql, args).fetchall()
    finally:
        conn.close()


def readings(n: int, *, meter: str = "m1", start: int = 0,
             ts: dt.datetime = T0) -> list[Reading]:
    return [Reading(meter, "energy_active_forward_total", float(start + i), "kWh",
                    ts + dt.timedelta(seconds=start + i)) for i in range(n)]


@pytest.fixture
def store(tmp_path: Path) -> Iterator[Store]:
    with Store(tmp_path / DB_NAME) as s:
        yield s


# ---- schema ----------------------------------------------------------------------------

def test_schema_wal_and_version(tmp_path: Path) -> None:
    path = tmp_path / DB_NAME
    with Store(path) as s:
        assert s.pragma("journal_mode") == "wal"
        assert s.pragma("synchronous") == 2  # FULL
        assert s.pragma("busy_timeout") == 5000
        assert s.schema_version == SCHEMA_VERSION
        names = {r[0] for r in raw(s, "SELECT name FROM sqlite_schema")}
        assert {"readings", "events", "commands", "cycles", "meters", "cursors",
                "reads", "reads_meter_ts", "reads_ts", "indexed_readings"} <= names
        columns = [r[1] for r in raw(s, "PRAGMA table_info(readings)")]
        assert columns == ["id", "meter", "quantity", "value", "unit", "ts", "meter_ts",
                           "quality"]
        assert "customer" not in [r[1] for r in raw(s, "PRAGMA table_info(meters)")]
    # WAL is a property of the file: another connection sees it.
    assert raw(s, "PRAGMA journal_mode") == [("wal",)]
    with Store(path, synchronous="normal") as s:  # re-open: no migration, NORMAL is allowed
        assert s.pragma("synchronous") == 1
        assert s.schema_version == SCHEMA_VERSION


def test_open_refuses_missing_foreign_and_newer(tmp_path: Path) -> None:
    with pytest.raises(StoreError, match="no store at"):
        Store(tmp_path / "missing.db", create=False)
    foreign = tmp_path / "foreign.db"
    conn = sqlite3.connect(foreign)
    conn.execute("CREATE TABLE t (x)")
    conn.close()
    with pytest.raises(StoreError, match="not an amic store"):
        Store(foreign)
    newer = tmp_path / "newer.db"
    Store(newer).close()
    conn = sqlite3.connect(newer)
    conn.execute(f"PRAGMA user_version = {SCHEMA_VERSION + 1}")
    conn.close()
    with pytest.raises(StoreError, match="newer"):
        Store(newer)
    with pytest.raises(ValueError):
        Store(tmp_path / "x.db", synchronous="sometimes")


# ---- writer ----------------------------------------------------------------------------

async def test_reading_round_trips_in_utc_ms(store: Store) -> None:
    shanghai = dt.timezone(dt.timedelta(hours=8))
    ts = dt.datetime(2026, 3, 1, 8, 0, 0, 123000, tzinfo=shanghai)  # 00:00:00.123 UTC
    meter_ts = dt.datetime(2026, 2, 28, 23, 59, 58, tzinfo=dt.UTC)
    r = Reading("m7", "voltage_a", 220.125, "V", ts, meter_ts,
                Quality.CLOCK_SUSPECT | Quality.BLOCK_READ)
    async with StoreWriter(store) as w:
        w.put(r)
        await w.flush()
        assert w.readings_committed == 1
    assert raw(store, "SELECT meter, quantity, value, unit, ts, meter_ts, quality "
                      "FROM readings") == [("m7", "voltage_a", 220.125, "V", 1772323200123,
                                           1772323198000, 12)]
    [got] = store.recent_readings()
    assert (got.meter, got.quantity, got.value, got.unit) == ("m7", "voltage_a", 220.125, "V")
    assert got.ts == ts and got.ts.tzinfo == dt.UTC
    assert got.meter_ts == meter_ts
    assert got.quality == Quality.CLOCK_SUSPECT | Quality.BLOCK_READ
    assert got.area is None  # not a configured meter


async def test_batching_makes_few_commits(store: Store) -> None:
    infos: list[CommitInfo] = []
    w = StoreWriter(store, commit_interval=60.0, commit_rows=1000, on_commit=infos.append)
    await w.start()
    for r in readings(10_000):
        w.put(r)  # one at a time: they still go in batches
    for i in range(5):
        w.put_many(readings(300, meter=f"batch{i}"))
    await w.flush()
    assert w.readings_committed == 11_500 == store.count("readings")
    assert w.commits <= 13, w.commits
    assert w.pending == 0
    assert sum(i.rows for i in infos) == 11_500 and len(infos) == w.commits
    assert w.last_commit_seconds > 0 and w.max_commit_seconds >= w.last_commit_seconds
    # A put_many list is never split across transactions; ids follow queue order.
    ids = raw(store, "SELECT id FROM readings ORDER BY id")
    assert [i for (i,) in ids] == list(range(1, 11_501))
    await w.close()


async def test_commit_interval_commits_without_flush(store: Store) -> None:
    async with StoreWriter(store, commit_interval=0.05, commit_rows=10_000) as w:
        w.put_many(readings(3))
        deadline = time.monotonic() + 3.0
        while not raw(store, "SELECT count(*) FROM readings")[0][0]:
            assert time.monotonic() < deadline, "not committed after the commit interval"
            await asyncio.sleep(0.02)
        assert w.commits == 1


async def test_close_drains_50k_rows_quickly(store: Store) -> None:
    w = StoreWriter(store, commit_interval=3600.0, commit_rows=10_000_000)
    await w.start()
    for i in range(100):
        w.put_many(readings(500, meter=f"m{i}"))
    w.put_event(Event("collector_stopped", T0, severity=0))
    assert w.pending == 50_001
    await asyncio.sleep(0.05)
    assert w.commits == 0  # neither the interval nor the row count is reached
    t = time.monotonic()
    await w.close()
    assert time.monotonic() - t < 5.0
    assert w.pending == 0 and w.rows_dropped == 0
    assert raw(store, "SELECT count(*) FROM readings") == [(50_000,)]
    assert raw(store, "SELECT kind FROM events") == [("collector_stopped",)]
    await w.close()  # idempotent
    with pytest.raises(RuntimeError, match="closed"):
        w.put_many(readings(1))


async def test_flush_waits_for_the_commit(store: Store) -> None:
    async with StoreWriter(store, commit_interval=3600.0, commit_rows=10_000_000) as w:
        await w.flush()  # nothing queued: returns at once
        w.put_many(readings(2000))
        assert raw(store, "SELECT count(*) FROM readings") == [(0,)]
        await w.flush()
        assert raw(store, "SELECT count(*) FROM readings") == [(2000,)]
        assert w.pending == 0


async def test_back_pressure_waits_instead_of_dropping(store: Store) -> None:
    async with StoreWriter(store, commit_interval=3600.0, commit_rows=10_000_000,
                           max_pending=1000) as w:
        for i in range(3):
            w.put_many(readings(600, meter=f"m{i}"))  # never blocks, never drops
        assert w.pending == 1800 and w.backlogged
        await asyncio.wait_for(w.put_many_wait(readings(10, meter="late")), 5.0)
        await w.put_wait(readings(1, meter="single")[0])
        await w.flush()
    assert store.count("readings") == 1811


async def test_events_commands_and_cycles(store: Store) -> None:
    async with StoreWriter(store) as w:
        w.put_event(Event("meter_dead", T0, meter="m1", bus="b1", severity=2, value=3.0,
                          detail="3 cycles without reply"))
        cmd = CommandRecord("c-1", "m1", "relay_open", T0, operator="ops", status="queued")
        w.put_command(cmd)
        await w.flush()
        [row] = store.outbox("fwd", "commands")
        first = row["id"]
        w.put_command(CommandRecord("c-1", "m1", "relay_open", T0, operator="ops",
                                    status="verified", detail="relay open"))
        cycle = CycleRecord("cy-1", "energy", T0, planned=10, per_bus={"b1": (9, 10)},
                            per_area={"A1": (9, 10)})
        w.put_cycle(cycle)
        await w.flush()
        cycle.ended = T0 + dt.timedelta(seconds=30)
        cycle.succeeded, cycle.failed = 9, 1
        w.put_cycle(cycle)
    [e] = store.events()
    assert (e.kind, e.meter, e.bus, e.severity, e.value, e.ts) == \
        ("meter_dead", "m1", "b1", 2, 3.0, T0)
    got = store.command("c-1")
    assert got is not None and got.status == "verified" and got.detail == "relay open"
    # The new status has a new id, so a forwarder's outbox shows it.
    assert [r["status"] for r in store.outbox("fwd", "commands", after_id=first)] == \
        ["verified"]
    assert store.count("commands") == 1 and store.count("cycles") == 1
    assert store.cycle("cy-1") == cycle


async def test_a_bad_row_is_skipped_the_rest_committed(store: Store) -> None:
    bad = Reading("m1", "q", object(), "V", T0)  # type: ignore[arg-type]
    async with StoreWriter(store) as w:
        w.put_many([*readings(5), bad, *readings(5, start=5)])
        await w.flush()
        assert w.rows_rejected == 1 and w.readings_committed == 10
    assert store.count("readings") == 10


async def test_failed_commit_is_retried_not_lost(tmp_path: Path) -> None:
    path = tmp_path / DB_NAME
    store = Store(path, busy_timeout=0.05)
    blocker = sqlite3.connect(path, isolation_level=None)
    blocker.execute("BEGIN IMMEDIATE")  # another writer holds the lock
    try:
        w = StoreWriter(store, commit_interval=0.01)
        await w.start()
        w.put_many(readings(100))
        deadline = time.monotonic() + 5
        while w.errors == 0:
            assert time.monotonic() < deadline
            await asyncio.sleep(0.01)
        assert w.rows_committed == 0 and w.pending == 100
    finally:
        blocker.execute("ROLLBACK")
        blocker.close()
    await asyncio.wait_for(w.flush(), 10)
    await w.close()
    assert store.count("readings") == 100 and w.rows_dropped == 0
    store.close()


# ---- kill -9 ---------------------------------------------------------------------------

CHILD = textwrap.dedent("""
    import asyncio, datetime as dt, sys
    from pathlib import Path
    from collector.store.records import Reading
    from collector.store import Store, StoreWriter

    BATCH = 100

    async def main() -> None:
        writer = StoreWriter(Store(Path(sys.argv[1])), commit_interval=0.01,
                             commit_rows=500, max_pending=20_000)
        await writer.start()
        t0 = dt.datetime(2026, 3, 1, tzinfo=dt.UTC)
        seq = batch = 0
        last = -1
        while True:
            batch += 1
            rows = []
            for _ in range(BATCH):
                seq += 1  # the value is the id the row must get
                rows.append(Reading(f"b{batch}", "seq", float(seq), "",
                                    t0 + dt.timedelta(milliseconds=seq)))
            await writer.put_many_wait(rows)
            done = writer.readings_committed
            if done != last:
                print(done, flush=True)
                last = done
            await asyncio.sleep(0)

    asyncio.run(main())
""")


def test_kill_9_loses_no_committed_row(tmp_path: Path) -> None:
    path = tmp_path / DB_NAME
    script = tmp_path / "child.py"
    script.write_text(CHILD)
    proc = subprocess.Popen([sys.executable, str(script), str(path)], cwd=ROOT,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env=dict(os.environ, PYTHONPATH=str(ROOT)))
    lines: queue.Queue[str | None] = queue.Queue()

    def drain() -> None:
        assert proc.stdout is not None
        for line in proc.stdout:
            lines.put(line)
        lines.put(None)

    reader = threading.Thread(target=drain, daemon=True)
    reader.start()
    reported = 0
    try:
        deadline = time.monotonic() + 15
        while reported < 30_000:
            assert time.monotonic() < deadline, f"child too slow: {reported} rows reported"
            line = lines.get(timeout=max(0.1, deadline - time.monotonic()))
            assert line is not None, proc.stderr.read() if proc.stderr else ""
            reported = max(reported, int(line))
    finally:
        proc.send_signal(signal.SIGKILL)  # mid-stream: it commits every ~10 ms
        proc.wait(timeout=5)
    reader.join(timeout=5)
    while (line := lines.get_nowait()) is not None:  # printed before the kill: also claims
        reported = max(reported, int(line))
    assert proc.returncode == -signal.SIGKILL

    with Store(path, create=False) as s:
        assert s.integrity_check() == "ok"
        count, low, high = raw(s, "SELECT count(*), min(id), max(id) FROM readings")[0]
        assert isinstance(count, int) and count >= reported
        assert (low, high) == (1, count)  # contiguous: a prefix of what was queued
        assert raw(s, "SELECT count(*) FROM readings WHERE value != id") == [(0,)]
        # Whole put_many batches only: every batch's 100 rows or none of them.
        assert raw(s, "SELECT meter, count(*) FROM readings GROUP BY meter "
                      "HAVING count(*) != 100") == []

    async def more() -> None:
        with Store(path) as s:
            async with StoreWriter(s) as w:
                w.put_many(readings(1000, meter="after"))
            assert raw(s, "SELECT min(id), max(id), count(*) FROM readings "
                          "WHERE meter = 'after'") == [(count + 1, count + 1000, 1000)]
            assert s.integrity_check() == "ok"

    asyncio.run(more())


# ---- outbox ----------------------------------------------------------------------------

def test_outbox_cursor_only_moves_forward(store: Store) -> None:
    store.write_readings(readings(100))
    rows = store.outbox("fwd", "readings", limit=30)
    assert [r["id"] for r in rows] == list(range(1, 31))
    assert rows[0]["ts"] == to_ms(T0) and rows[0]["value"] == 0.0
    assert store.outbox_lag("fwd", "readings") == 100
    assert store.advance("fwd", "readings", rows[-1]["id"]) == 30
    assert store.advance("fwd", "readings", 10) == 30  # never backwards
    assert store.cursor("fwd", "readings") == 30
    assert store.outbox_lag("fwd", "readings") == 70
    assert [r["id"] for r in store.outbox("fwd", "readings", limit=5)] == [31, 32, 33, 34, 35]
    assert store.outbox_lag("other", "readings") == 100  # cursors are per forwarder
    assert store.outbox_lag("fwd", "events") == 0
    assert [(c.name, c.table, c.last_id) for c in store.cursors()] == [("fwd", "readings", 30)]
    with pytest.raises(ValueError, match="unknown table"):
        store.outbox("fwd", "readings; DROP TABLE readings")


# ---- retention -------------------------------------------------------------------------

NOW = dt.datetime(2026, 6, 1, tzinfo=dt.UTC)


def aged(days: float, n: int, meter: str) -> list[Reading]:
    return readings(n, meter=meter, ts=NOW - dt.timedelta(days=days))


def test_retention_without_forwarders(store: Store) -> None:
    store.write_readings(aged(40, 10, "old") + aged(5, 10, "new"))
    assert store.purge(30, now=NOW)["readings"] == 10
    assert {r.meter for r in store.recent_readings(limit=100)} == {"new"}


def test_retention_keeps_what_a_forwarder_has_not_passed(store: Store) -> None:
    store.write_readings(aged(70, 10, "very_old") + aged(45, 10, "old") + aged(5, 10, "new"))
    with StoreWriterless(store) as events:
        events.add(Event("old_event", NOW - dt.timedelta(days=45)))
        events.add(Event("new_event", NOW - dt.timedelta(days=1)))
    store.advance("fwd", "readings", 5)  # shipped half of the very old ones
    deleted = store.purge(30, now=NOW)
    # Older than 2 x retention: deleted although not shipped.  Between 1x and 2x: kept.
    assert deleted == {"readings": 10, "events": 1, "cycles": 0}
    assert {r.meter for r in store.recent_readings(limit=100)} == {"old", "new"}
    store.advance("fwd", "readings", 20)  # the forwarder ships the old ones
    assert store.purge(30, now=NOW)["readings"] == 10
    assert {r.meter for r in store.recent_readings(limit=100)} == {"new"}
    # The newest row stays whatever its age, so ids are never reused.
    later = NOW + dt.timedelta(days=400)
    store.advance("fwd", "readings", 10**9)
    assert store.purge(30, now=later)["readings"] == 9
    assert [r.id for r in store.recent_readings()] == [30]
    assert store.write_readings(readings(1)) == 31
    # The reads index keeps exactly the reads that still have readings.
    assert reads_consistent(store)


def reads_consistent(store: Store) -> bool:
    """Every reading is reached through exactly one read, and every read reaches one."""
    (per_reading,) = raw(store, "SELECT count(*) FROM indexed_readings")
    (readings_n,) = raw(store, "SELECT count(*) FROM readings")
    (empty_reads,) = raw(store, "SELECT count(*) FROM reads x WHERE NOT EXISTS (SELECT 1 "
                                "FROM readings r WHERE r.id BETWEEN x.first_id AND x.last_id "
                                "AND r.meter = x.meter AND r.ts = x.ts)")
    (distinct,) = raw(store, "SELECT count(DISTINCT id) FROM indexed_readings")
    return per_reading == readings_n == distinct and empty_reads == (0,)


async def test_reads_index_one_row_per_read(store: Store) -> None:
    """A meter read's readings get one index row; queries by meter and time through it
    return each reading once, also when reads of several meters are interleaved."""
    at = [T0 + dt.timedelta(minutes=k) for k in range(3)]
    polls = [[Reading(m, q, float(k), "V", at[k]) for q in ("voltage_a", "voltage_b")]
             for k in range(3) for m in ("m1", "m2", "m3")]
    mixed = [Reading(m, "current_a", 1.0, "A", at[2]) for m in ("m1", "m2", "m1", "m2")]
    async with StoreWriter(store) as w:
        for p in polls:
            w.put_many(p)
        w.put_many(mixed)  # m1 and m2 interleaved, same time: they were read together
    # 9 reads; the mixed one joins m1's and m2's reads at at[2] when committed with them
    assert raw(store, "SELECT count(*) FROM reads")[0][0] in (9, 11)
    m1 = store.recent_readings(meter="m1", limit=100)
    assert len(m1) == 3 * 2 + 2 and {r.meter for r in m1} == {"m1"}
    since = store.recent_readings(since=at[1], until=at[2], limit=100)
    assert len(since) == 3 * 2 and {r.ts for r in since} == {at[1]}
    assert [r.ts for r in store.recent_readings(limit=4)] == [at[2]] * 4
    assert reads_consistent(store)


def test_upgrade_from_version_3_indexes_stored_readings(tmp_path: Path) -> None:
    """A store of the previous schema is upgraded in place: its readings are found by
    meter and time through the new reads index, and nothing is lost."""
    from collector.store import MIGRATIONS, split_sql
    path = tmp_path / DB_NAME
    conn = sqlite3.connect(path)
    for script in MIGRATIONS[:3]:
        for statement in split_sql(script):
            conn.execute(statement)
    rows = [(m, "voltage_a", 220.0 + i, "V", to_ms(T0) + 60_000 * (i // 2), None, 0)
            for i in range(20) for m in ("m1", "m2")]
    rows += [("m1", "voltage_b", 1.0, "V", to_ms(T0), None, 0)]  # same read, later row
    conn.executemany("INSERT INTO readings (meter, quantity, value, unit, ts, meter_ts, "
                     "quality) VALUES (?, ?, ?, ?, ?, ?, ?)", rows)
    conn.execute("PRAGMA user_version = 3")
    conn.commit()
    conn.close()
    with Store(path) as s:
        assert s.schema_version == SCHEMA_VERSION
        assert s.count("readings") == len(rows)
        m1 = s.recent_readings(meter="m1", limit=1000)
        assert len(m1) == 21 and {r.meter for r in m1} == {"m1"}
        assert {r.quantity for r in m1 if r.ts == T0} == {"voltage_a", "voltage_b"}
        assert reads_consistent(s)
        names = {r[0] for r in raw(s, "SELECT name FROM sqlite_schema")}
        assert "readings_meter_ts" not in names and "readings_ts" not in names


async def test_upgrade_from_version_4_keeps_the_commands_outbox(tmp_path: Path) -> None:
    """Version 5 forwards every command status from command_log: a store upgraded with
    a forwarder half-way through its commands goes on after its cursor, nothing twice,
    and from then on each status is a row of its own."""
    from collector.store import MIGRATIONS, split_sql
    path = tmp_path / DB_NAME
    conn = sqlite3.connect(path)
    for script in MIGRATIONS[:4]:
        for statement in split_sql(script):
            conn.execute(statement)
    for i, status in enumerate(("queued", "sent", "verified")):
        conn.execute("INSERT OR REPLACE INTO commands (command_id, meter, kind, ts, status, "
                     "updated) VALUES (?, 'm1', 'trip', 0, ?, ?)", (f"c{i % 2}", status, i))
    conn.execute("INSERT INTO cursors VALUES ('fwd', 'commands', 2, 0)")  # shipped "sent"
    conn.execute("PRAGMA user_version = 4")
    conn.commit()
    conn.close()
    with Store(path) as s:
        assert s.schema_version == SCHEMA_VERSION == 7
        assert [r["status"] for r in s.outbox("fwd", "commands")] == ["verified"]
        async with StoreWriter(s) as w:
            w.put_command(CommandRecord("c1", "m1", "trip", T0, status="received"))
            w.put_command(CommandRecord("c1", "m1", "trip", T0, status="done"))
        assert [r["status"] for r in s.outbox("fwd", "commands")] == \
            ["verified", "received", "done"]
        assert s.last_id("commands") == 5 and s.outbox_lag("fwd", "commands") == 3
        assert s.count("commands") == 2 and s.command("c1").status == "done"  # type: ignore[union-attr]


class StoreWriterless:
    """Events written straight through a connection (retention tests need old times)."""

    def __init__(self, store: Store) -> None:
        self.store = store
        self.items: list[Event] = []

    def add(self, e: Event) -> None:
        self.items.append(e)

    def __enter__(self) -> StoreWriterless:
        return self

    def __exit__(self, *exc: object) -> None:
        conn = sqlite3.connect(self.store.path)
        with conn:
            conn.executemany("INSERT INTO events (ts, kind, severity, detail) "
                             "VALUES (?, ?, 1, '')", [(to_ms(e.ts), e.kind) for e in self.items])
        conn.close()


async def test_writer_purges_in_its_thread(store: Store) -> None:
    now = time.time() + 7200  # the first purge is due a minute after start
    at = dt.datetime.fromtimestamp(now, dt.UTC)
    store.write_readings(readings(50, meter="old", ts=at - dt.timedelta(days=40)) +
                         readings(5, meter="new", ts=at - dt.timedelta(days=1)))
    async with StoreWriter(store, retention_days=30) as w:
        assert not w.maybe_purge()  # not yet: a minute after start, then hourly
        assert w.maybe_purge(now)
        assert not w.maybe_purge(now)  # one at a time
        deadline = time.monotonic() + 5
        while w.purged_rows < 50:
            assert time.monotonic() < deadline
            await asyncio.sleep(0.01)
    assert store.count("readings") == 5
    assert not StoreWriter(store).maybe_purge()  # no retention configured


# ---- meters, queries, health -----------------------------------------------------------

METERS = [MeterSettings("m1", "000000000001", "b1", area="A1", customer="CUST-SECRET-0001"),
          MeterSettings("m2", "000000000002", "b1", area="A1", feeder="F3"),
          MeterSettings("m3", "000000000003", "b2", area="A2", role="area_master")]


def test_sync_meters_and_query_by_area(store: Store) -> None:
    store.sync_meters(METERS)
    store.write_readings([r for m in ("m1", "m2", "m3", "m9")
                          for r in readings(3, meter=m)])
    got = store.recent_readings(area="A1", limit=100)
    assert {r.meter for r in got} == {"m1", "m2"} and {r.area for r in got} == {"A1"}
    assert [r.ts for r in got] == sorted((r.ts for r in got), reverse=True)  # newest first
    assert len(store.recent_readings(meter="m3", limit=2)) == 2
    assert store.recent_readings(meter="m3")[0].bus == "b2"
    since = T0 + dt.timedelta(seconds=2)
    assert {r.id for r in store.recent_readings(since=since)} == {3, 6, 9, 12}
    # Re-sync: m2 moves to A2, m1 leaves the configuration.
    store.sync_meters([MeterSettings("m2", "000000000002", "b1", area="A2"), METERS[2]])
    assert [m["meter_id"] for m in store.meters("A2")] == ["m2", "m3"]
    assert store.meters("A1") == []
    store.checkpoint("TRUNCATE")
    assert b"CUST-SECRET" not in store.path.read_bytes()


def test_size_and_integrity(store: Store) -> None:
    empty = store.store_size_bytes()
    store.write_readings(readings(5000))
    assert store.store_size_bytes() > empty > 0
    wal = store.path.with_name(store.path.name + "-wal")
    assert wal.exists() and store.store_size_bytes() == \
        store.path.stat().st_size + wal.stat().st_size
    assert store.integrity_check() == "ok"
    assert store.integrity_check(quick=True) == "ok"


# ---- amic query ------------------------------------------------------------------------

@pytest.fixture
def shanghai() -> Iterator[None]:
    old = os.environ.get("TZ")
    os.environ["TZ"] = "Asia/Shanghai"
    time.tzset()
    try:
        yield
    finally:
        if old is None:
            del os.environ["TZ"]
        else:
            os.environ["TZ"] = old
        time.tzset()


@pytest.fixture
def data_dir(tmp_path: Path) -> Path:
    d = tmp_path / "data"
    d.mkdir()
    with Store.in_dir(d) as s:
        s.sync_meters(METERS)
        s.write_readings([
            Reading("m1", "voltage_a", 220.1, "V", T0),  # 00:30 UTC = 08:30 in Shanghai
            Reading("m2", "energy_active_forward_total", 812345.67, "kWh",
                    T0 + dt.timedelta(minutes=1), quality=Quality.ESTIMATED),
            Reading("m3", "voltage_a", 230.0, "V", T0 + dt.timedelta(minutes=2)),
        ])
    return d


def test_query_shows_local_time(data_dir: Path, shanghai: None) -> None:
    r = CliRunner().invoke(query, ["--data-dir", str(data_dir), "--meter", "m1"])
    assert r.exit_code == 0, r.output
    header, row = r.output.splitlines()
    assert header.split() == ["TIME", "METER", "QUANTITY", "VALUE", "UNIT", "QUALITY"]
    assert row.startswith("2026-03-01 08:30:00+08:00  m1")  # stored 00:30 UTC
    assert row.split()[-4:] == ["voltage_a", "220.1", "V", "good"]


def test_query_area_order_limit_and_json(data_dir: Path, shanghai: None) -> None:
    r = CliRunner().invoke(query, ["-d", str(data_dir), "--area", "A1"])
    assert r.exit_code == 0, r.output
    lines = r.output.splitlines()[1:]
    assert [line.split()[2] for line in lines] == ["m1", "m2"]  # oldest first
    assert "812345.67" in lines[1] and lines[1].endswith("estimated")
    r = CliRunner().invoke(query, ["-d", str(data_dir), "--limit", "1", "--json"])
    assert r.exit_code == 0, r.output
    [obj] = [json.loads(line) for line in r.output.splitlines()]
    assert obj["meter"] == "m3" and obj["time"] == "2026-03-01T08:32:00.000+08:00"
    assert obj["ts_ms"] == to_ms(T0) + 120_000 and obj["area"] == "A2"


def test_query_since(data_dir: Path) -> None:
    now = dt.datetime.now(dt.UTC)
    with Store.in_dir(data_dir) as s:
        s.write_readings([Reading("m1", "voltage_a", 1.0, "V", now - dt.timedelta(hours=3)),
                          Reading("m1", "voltage_a", 2.0, "V", now - dt.timedelta(minutes=30))])
    r = CliRunner().invoke(query, ["-d", str(data_dir), "-m", "m1", "--since", "1h"])
    assert r.exit_code == 0, r.output
    assert len(r.output.splitlines()) == 2 and " 2 " in r.output.splitlines()[1]
    r = CliRunner().invoke(query, ["-d", str(data_dir), "-m", "m1", "--since", "2026-02-28"])
    assert len(r.output.splitlines()) == 4  # header + all three of m1
    r = CliRunner().invoke(query, ["-d", str(data_dir), "--since", "yesterday"])
    assert r.exit_code == 2 and "--since" in r.output


def test_parse_since() -> None:
    now = dt.datetime(2026, 3, 1, 12, tzinfo=dt.UTC)
    assert parse_since("2h", now) == now - dt.timedelta(hours=2)
    assert parse_since("1d", now) == now - dt.timedelta(days=1)
    assert parse_since("90s", now) == now - dt.timedelta(seconds=90)
    assert parse_since("2026-03-01T08:00+08:00") == dt.datetime(2026, 3, 1, tzinfo=dt.UTC)
    assert parse_since("2026-03-01T00:00Z") == dt.datetime(2026, 3, 1, tzinfo=dt.UTC)


def test_query_without_store_exits_2_naming_the_path(tmp_path: Path) -> None:
    r = CliRunner().invoke(query, ["--data-dir", str(tmp_path)])
    assert r.exit_code == 2
    assert str(tmp_path / DB_NAME) in r.output
    assert not (tmp_path / DB_NAME).exists()  # looking does not create one
    r = CliRunner().invoke(query, ["--meter", "m1"])
    assert r.exit_code == 2 and "--data-dir" in r.output
    r = CliRunner().invoke(query, ["-d", str(tmp_path), "--meter", "m1", "--area", "A1"])
    assert r.exit_code == 2


def test_query_config_gives_the_data_dir(data_dir: Path, tmp_path: Path,
                                         monkeypatch: pytest.MonkeyPatch) -> None:
    class ConfigError(Exception):
        def __init__(self) -> None:
            super().__init__("bad")
            self.problems = ["line 3: unknown key 'x'"]

    def load_settings(path: Path) -> object:
        if path.name == "bad.toml":
            raise ConfigError()
        return types.SimpleNamespace(collector=types.SimpleNamespace(data_dir=data_dir))

    fake = types.ModuleType("collector.config")
    fake.load_settings = load_settings  # type: ignore[attr-defined]
    fake.ConfigError = ConfigError  # type: ignore[attr-defined]
    monkeypatch.setitem(sys.modules, "collector.config", fake)
    r = CliRunner().invoke(query, ["--config", str(tmp_path / "amic.toml"), "-m", "m2"])
    assert r.exit_code == 0, r.output
    assert "812345.67" in r.output
    r = CliRunner().invoke(query, ["--config", str(tmp_path / "bad.toml")])
    assert r.exit_code == 2 and "unknown key" in r.output

    # Without collector.config: --data-dir is the fall-back.
    monkeypatch.setitem(sys.modules, "collector.config", None)
    r = CliRunner().invoke(query, ["--config", str(tmp_path / "amic.toml")])
    assert r.exit_code == 2 and "--data-dir" in r.output
    r = CliRunner().invoke(query, ["--config", str(tmp_path / "amic.toml"),
                                   "--data-dir", str(data_dir)])
    assert r.exit_code == 0 and len(r.output.splitlines()) == 4

"""The embedded store: SQLite in WAL mode, and the outbox of the forwarders.

One file, ``<data_dir>/amic.db`` (plus ``-wal`` and ``-shm`` while open).

Durability: ``journal_mode=WAL`` with ``synchronous=FULL`` (the default; ``NORMAL`` is
configurable): once a COMMIT returns, the transaction is on disk and survives kill -9 and
power loss; a transaction that did not finish is rolled back whole on the next open.

Writes go through :class:`StoreWriter`: the event loop only enqueues; one thread owns
the write connection and commits batches (``executemany`` in one transaction) every
``commit_interval`` seconds or as soon as ``commit_rows`` rows wait.  Readers (queries,
forwarders, ``amic query``) use their own connections; WAL lets them read while the
writer writes.  Only the writer inserts readings and events, so ids are committed in
increasing order: a forwarder that has read every id up to N never sees a smaller id
appear later.

Outbox: a forwarder reads ``outbox(name, table)`` (rows after its cursor, in id order),
ships them, then ``advance(name, table, last_id)``.  Cursors only move forward.

Retention (:meth:`Store.purge`): readings, events and cycles older than the retention are
deleted, except rows some forwarder cursor on that table has not passed yet; those are
kept until they are twice the retention old, then deleted anyway (a forwarder down for
that long must not fill the disk).  The newest row of each table is never deleted, so
ids are never reused (readings and events have no AUTOINCREMENT, which costs ~20 % of the
insert rate).  Commands are never purged: they are the audit trail of what was sent to
meters.

Timestamps are UTC epoch milliseconds (``records.to_ms``); local time is for display.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import itertools
import json
import logging
import math
import os
import shutil
import sqlite3
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final, Literal

from .records import (
    CommandRecord,
    CycleRecord,
    DailyRecord,
    Event,
    Quality,
    Reading,
    from_ms,
    to_ms,
)
from .settings import MeterSettings

log = logging.getLogger("amic.store")

DB_NAME: Final = "amic.db"
SCHEMA_VERSION: Final = 6
DAY_MS: Final = 86_400_000
ROOM_RECHECK_SECONDS: Final = 0.5  # how often a full, quiet store looks for room

Table = Literal["readings", "events", "commands", "cycles"]
OUTBOX_TABLES: Final[tuple[str, ...]] = ("readings", "events", "commands", "cycles", "daily")
# The time column retention looks at, per purged table.
PURGED: Final[dict[str, str]] = {"readings": "ts", "events": "ts", "cycles": "started"}
# Outbox tables read from another table: commands keeps each command's latest status
# only; command_log every status it went through (so "received" is forwarded too).
_OUTBOX_SOURCE: Final[dict[str, str]] = {"commands": "command_log"}

# Each entry brings the schema from version i to i + 1; run in one transaction each.
MIGRATIONS: Final[tuple[str, ...]] = (
    """
    CREATE TABLE readings (
        id INTEGER PRIMARY KEY,
        meter TEXT NOT NULL,
        quantity TEXT NOT NULL,
        value REAL,                -- NULL for a NaN
        unit TEXT NOT NULL,
        ts INTEGER NOT NULL,       -- when the collector got it, UTC epoch ms
        meter_ts INTEGER,          -- the meter's own timestamp, UTC epoch ms
        quality INTEGER NOT NULL DEFAULT 0
    );
    CREATE INDEX readings_meter_ts ON readings (meter, ts);
    CREATE INDEX readings_ts ON readings (ts);

    CREATE TABLE events (
        id INTEGER PRIMARY KEY,
        ts INTEGER NOT NULL,
        kind TEXT NOT NULL,
        meter TEXT,
        bus TEXT,
        severity INTEGER NOT NULL,
        value REAL,
        detail TEXT NOT NULL DEFAULT ''
    );
    CREATE INDEX events_ts ON events (ts);

    -- A command's new status replaces its row under a new id (AUTOINCREMENT: never
    -- reused), so the outbox shows the forwarder every status change.
    CREATE TABLE commands (
        id INTEGER PRIMARY KEY AUTOINCREMENT,
        command_id TEXT NOT NULL UNIQUE,
        meter TEXT NOT NULL,
        kind TEXT NOT NULL,
        ts INTEGER NOT NULL,
        operator TEXT NOT NULL DEFAULT '',
        status TEXT NOT NULL,
        detail TEXT NOT NULL DEFAULT '',
        updated INTEGER NOT NULL   -- when this status was stored, UTC epoch ms
    );
    CREATE INDEX commands_meter_ts ON commands (meter, ts);

    CREATE TABLE cycles (
        id INTEGER PRIMARY KEY AUTOINCREMENT,
        cycle_id TEXT NOT NULL UNIQUE,
        schedule TEXT NOT NULL,
        started INTEGER NOT NULL,
        ended INTEGER,
        planned INTEGER NOT NULL,
        succeeded INTEGER NOT NULL,
        failed INTEGER NOT NULL,
        per_bus TEXT NOT NULL,     -- JSON {bus: [ok, total]}
        per_area TEXT NOT NULL,    -- JSON {area: [ok, total]}
        failed_meters TEXT NOT NULL DEFAULT '[]'  -- JSON [meter_id, ...] not read
    );
    CREATE INDEX cycles_started ON cycles (started);

    -- Mirror of the configured meters (no customer numbers), for queries by area.
    CREATE TABLE meters (
        meter_id TEXT PRIMARY KEY,
        address TEXT NOT NULL,
        bus TEXT NOT NULL,
        area TEXT NOT NULL DEFAULT '',
        feeder TEXT NOT NULL DEFAULT '',
        station TEXT NOT NULL DEFAULT '',
        role TEXT NOT NULL DEFAULT 'customer'
    ) WITHOUT ROWID;
    CREATE INDEX meters_area ON meters (area);

    -- Forwarder positions: the last id of `table_name` that forwarder `name` has shipped.
    CREATE TABLE cursors (
        name TEXT NOT NULL,
        table_name TEXT NOT NULL,
        last_id INTEGER NOT NULL,
        updated INTEGER NOT NULL,
        PRIMARY KEY (name, table_name)
    ) WITHOUT ROWID;
    """,
    """
    -- Rows a time-series server refused for good (HTTP 400/422: e.g. a point older than
    -- the bucket's retention): kept here with the server's answer, so the outbox moves on
    -- and nothing disappears silently.
    CREATE TABLE dead_letters (
        id INTEGER PRIMARY KEY AUTOINCREMENT,
        forwarder TEXT NOT NULL,
        table_name TEXT NOT NULL,
        row_id INTEGER NOT NULL,
        ts INTEGER NOT NULL,       -- when it was refused, UTC epoch ms
        status INTEGER NOT NULL,   -- the HTTP status
        error TEXT NOT NULL,
        line TEXT NOT NULL         -- the line protocol that was refused
    );
    """,
    """
    -- Daily figures (line loss per area, read success per area and bus), forwarded.
    CREATE TABLE daily (
        id INTEGER PRIMARY KEY AUTOINCREMENT,
        day TEXT NOT NULL,         -- local date YYYY-MM-DD
        kind TEXT NOT NULL,        -- lineloss, success_area, success_bus
        key TEXT NOT NULL,         -- the area or bus
        ts INTEGER NOT NULL,       -- the local midnight starting the day, UTC epoch ms
        complete INTEGER NOT NULL,
        fields TEXT NOT NULL,      -- JSON {name: number}
        detail TEXT NOT NULL DEFAULT '',
        UNIQUE (day, kind, key)
    );
    """,
    """
    -- One row per meter read (the readings of one meter with one collector time) instead
    -- of index entries per reading: a read gives 8 to 30 readings, and the old
    -- (meter, ts) index took more time to keep than the readings themselves (its pages,
    -- spread over every meter, rewritten on each commit).  Query readings by meter or
    -- time through the view indexed_readings; by id (the outbox) through readings.
    CREATE TABLE reads (
        first_id INTEGER PRIMARY KEY,  -- the read's readings have ids first_id..last_id
        last_id INTEGER NOT NULL,      -- (other meters' rows may sit in between)
        meter TEXT NOT NULL,
        ts INTEGER NOT NULL            -- the readings' ts
    );
    INSERT INTO reads (first_id, last_id, meter, ts)
        SELECT min(id), max(id), meter, ts FROM readings GROUP BY meter, ts;
    CREATE INDEX reads_meter_ts ON reads (meter, ts);
    CREATE INDEX reads_ts ON reads (ts);
    DROP INDEX readings_meter_ts;
    DROP INDEX readings_ts;
    CREATE VIEW indexed_readings AS
        SELECT r.id AS id, x.meter AS meter, r.quantity AS quantity, r.value AS value,
               r.unit AS unit, x.ts AS ts, r.meter_ts AS meter_ts, r.quality AS quality
        FROM reads x CROSS JOIN readings r  -- CROSS: reads drives (an index), never a scan
            ON r.id BETWEEN x.first_id AND x.last_id AND +r.meter = x.meter AND +r.ts = x.ts;
    """,
    """
    -- Every status a command went through, in order: the forwarder's outbox of commands.
    -- In commands a new status replaces the row, so a status replaced before the
    -- forwarder read it (a remote request's "received", then "done" in the same commit)
    -- never reached the time-series store.  Existing rows keep their ids: the
    -- forwarders' cursors on "commands" stay valid.
    CREATE TABLE command_log (
        id INTEGER PRIMARY KEY AUTOINCREMENT,
        command_id TEXT NOT NULL,
        meter TEXT NOT NULL,
        kind TEXT NOT NULL,
        ts INTEGER NOT NULL,
        operator TEXT NOT NULL DEFAULT '',
        status TEXT NOT NULL,
        detail TEXT NOT NULL DEFAULT '',
        updated INTEGER NOT NULL
    );
    INSERT INTO command_log (id, command_id, meter, kind, ts, operator, status, detail,
                             updated)
        SELECT id, command_id, meter, kind, ts, operator, status, detail, updated
        FROM commands ORDER BY id;
    CREATE TRIGGER command_log_insert AFTER INSERT ON commands BEGIN
        INSERT INTO command_log (command_id, meter, kind, ts, operator, status, detail,
                                 updated)
        VALUES (NEW.command_id, NEW.meter, NEW.kind, NEW.ts, NEW.operator, NEW.status,
                NEW.detail, NEW.updated);
    END;
    """,
    """
    -- A cycle ended before every planned meter was tried (the collector stopped): its
    -- untried meters are neither succeeded nor failed (planned > succeeded + failed).
    ALTER TABLE cycles ADD COLUMN cut INTEGER NOT NULL DEFAULT 0;
    """,
)
assert len(MIGRATIONS) == SCHEMA_VERSION

INSERT_READING: Final = ("INSERT INTO readings (meter, quantity, value, unit, ts, meter_ts, "
                         "quality) VALUES (?, ?, ?, ?, ?, ?, ?)")
# After inserting readings with ids above ?: their reads (one per meter and time).
INDEX_READS: Final = ("INSERT INTO reads (first_id, last_id, meter, ts) SELECT min(id), "
                      "max(id), meter, ts FROM readings WHERE id > ? GROUP BY meter, ts")
INSERT_EVENT: Final = ("INSERT INTO events (ts, kind, meter, bus, severity, value, detail) "
                       "VALUES (?, ?, ?, ?, ?, ?, ?)")
INSERT_COMMAND: Final = ("INSERT OR REPLACE INTO commands (command_id, meter, kind, ts, "
                         "operator, status, detail, updated) VALUES (?, ?, ?, ?, ?, ?, ?, ?)")
INSERT_DAILY: Final = ("INSERT OR REPLACE INTO daily (day, kind, key, ts, complete, fields, "
                       "detail) VALUES (?, ?, ?, ?, ?, ?, ?)")
INSERT_CYCLE: Final = ("INSERT OR REPLACE INTO cycles (cycle_id, schedule, started, ended, "
                       "planned, succeeded, failed, per_bus, per_area, failed_meters, cut) "
                       "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)")


class StoreError(Exception):
    """The store cannot be opened or used (missing, not an amic store, too new)."""


# ---- row conversion --------------------------------------------------------------------

ReadingRow = tuple[str, str, float, str, int, int | None, int]


def reading_rows(readings: Iterable[Reading]) -> Iterator[ReadingRow]:
    """Readings as insert parameters.

    Readings of one poll share one ``ts`` object, so its conversion is reused.
    """
    last_ts: dt.datetime | None = None
    last_ms = 0
    for r in readings:
        ts = r.ts
        if ts is not last_ts:
            last_ms = to_ms(ts)
            last_ts = ts
        mts = r.meter_ts
        yield (r.meter, r.quantity, r.value, r.unit, last_ms,
               None if mts is None else to_ms(mts), int(r.quality))


def event_row(e: Event) -> tuple[Any, ...]:
    return (to_ms(e.ts), e.kind, e.meter, e.bus, e.severity, e.value, e.detail)


def command_row(c: CommandRecord, now_ms: int) -> tuple[Any, ...]:
    return (c.command_id, c.meter, c.kind, to_ms(c.ts), c.operator, c.status, c.detail, now_ms)


def daily_row(d: DailyRecord) -> tuple[Any, ...]:
    return (d.day.isoformat(), d.kind, d.key, to_ms(d.ts), int(d.complete),
            json.dumps(dict(d.fields), sort_keys=True), d.detail)


def cycle_row(c: CycleRecord) -> tuple[Any, ...]:
    return (c.cycle_id, c.schedule, to_ms(c.started),
            None if c.ended is None else to_ms(c.ended), c.planned, c.succeeded, c.failed,
            json.dumps({k: list(v) for k, v in c.per_bus.items()}, sort_keys=True),
            json.dumps({k: list(v) for k, v in c.per_area.items()}, sort_keys=True),
            json.dumps(sorted(c.failed_meters)), int(c.cut))


def _as_ms(t: dt.datetime | int | float | None) -> int | None:
    if t is None:
        return None
    if isinstance(t, dt.datetime):
        return to_ms(t)
    return int(t)


# ---- query results ---------------------------------------------------------------------

@dataclass(frozen=True, slots=True)
class StoredReading:
    """A reading as stored, with the meter's configured bus and area (None: not in config)."""

    id: int
    meter: str
    quantity: str
    value: float | None
    unit: str
    ts: dt.datetime  # UTC
    meter_ts: dt.datetime | None
    quality: Quality
    area: str | None
    bus: str | None

    @classmethod
    def from_row(cls, row: sqlite3.Row | tuple[Any, ...]) -> StoredReading:
        (id_, meter, quantity, value, unit, ts, meter_ts, quality, area, bus) = row
        return cls(id_, meter, quantity, value, unit, from_ms(ts),
                   None if meter_ts is None else from_ms(meter_ts), Quality(quality), area, bus)


@dataclass(frozen=True, slots=True)
class Cursor:
    name: str
    table: str
    last_id: int
    updated: dt.datetime


# ---- the store -------------------------------------------------------------------------

class Store:
    """The SQLite file: schema, reads, maintenance.  Writes of records: :class:`StoreWriter`.

    ``create=False`` opens an existing store only, and neither creates nor upgrades its
    schema (for readers such as ``amic query``).  Each thread that uses a Store gets its
    own connection (created on first use); the writer thread opens a dedicated one with
    :meth:`connect`.  Close a StoreWriter before its Store.
    """

    def __init__(self, path: Path | str, *, synchronous: str = "FULL",
                 busy_timeout: float = 5.0, create: bool = True,
                 max_size_mb: float | None = None) -> None:
        self.path = Path(path)
        if max_size_mb is not None and not max_size_mb > 0:
            raise ValueError(f"max_size_mb must be positive, not {max_size_mb!r}")
        self.max_size_mb = max_size_mb
        if synchronous.upper() not in ("OFF", "NORMAL", "FULL", "EXTRA"):
            raise ValueError(f"synchronous must be OFF, NORMAL, FULL or EXTRA, "
                             f"not {synchronous!r}")
        self.synchronous = synchronous.upper()
        self.busy_timeout = busy_timeout
        if not create and not self.path.is_file():
            raise StoreError(f"no store at {self.path}")
        self._local = threading.local()
        self._lock = threading.Lock()
        self._conns: list[sqlite3.Connection] = []
        self._closed = False
        conn = self._conn()
        try:
            self._migrate(conn, create=create)
        except BaseException:
            self.close()
            raise

    @classmethod
    def in_dir(cls, data_dir: Path | str, **kwargs: Any) -> Store:
        return cls(Path(data_dir) / DB_NAME, **kwargs)

    # ---- connections -----------------------------------------------------------------

    def connect(self, *, cache_mb: int = 16) -> sqlite3.Connection:
        """A new connection with the store's settings, for the calling thread to own.

        Autocommit mode: transactions are explicit (``BEGIN IMMEDIATE`` ... ``COMMIT``).
        """
        uri = f"file:{self.path}?mode=rwc"
        conn = sqlite3.connect(uri, uri=True, isolation_level=None, check_same_thread=False,
                               timeout=self.busy_timeout, cached_statements=64)
        try:
            conn.execute(f"PRAGMA busy_timeout = {int(self.busy_timeout * 1000)}")
            mode = conn.execute("PRAGMA journal_mode = WAL").fetchone()[0]
            if str(mode).lower() != "wal":
                raise StoreError(f"{self.path}: cannot switch to WAL mode (got {mode!r})")
            conn.execute(f"PRAGMA synchronous = {self.synchronous}")
            conn.execute(f"PRAGMA cache_size = {-1024 * cache_mb}")
            conn.execute("PRAGMA journal_size_limit = 67108864")  # WAL kept <= 64 MiB at rest
            conn.execute("PRAGMA temp_store = MEMORY")
            conn.execute("PRAGMA foreign_keys = OFF")
            if self.max_size_mb is not None:
                page = int(conn.execute("PRAGMA page_size").fetchone()[0])
                pages = max(16, int(self.max_size_mb * 1024 * 1024 // page))
                conn.execute(f"PRAGMA max_page_count = {pages}")
        except BaseException:
            conn.close()
            raise
        with self._lock:
            self._conns.append(conn)
        return conn

    def thread_connection(self) -> sqlite3.Connection:
        """This thread's connection, for read queries a component builds itself (the
        forwarder builds line protocol in SQL).  Do not write through it."""
        return self._conn()

    def _conn(self) -> sqlite3.Connection:
        if self._closed:
            raise StoreError(f"{self.path}: store closed")
        conn: sqlite3.Connection | None = getattr(self._local, "conn", None)
        if conn is None:
            conn = self.connect()
            self._local.conn = conn
        return conn

    def release(self, conn: sqlite3.Connection) -> None:
        """Close a connection from :meth:`connect`."""
        with self._lock:
            if conn in self._conns:
                self._conns.remove(conn)
        conn.close()

    def close(self) -> None:
        """Close every connection this Store opened (the owners must be done with them)."""
        self._closed = True
        with self._lock:
            conns, self._conns = self._conns, []
        for c in conns:
            with contextlib.suppress(sqlite3.Error):
                c.close()

    def __enter__(self) -> Store:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    @contextlib.contextmanager
    def _write(self, conn: sqlite3.Connection | None = None, *,
               begun: bool = False) -> Iterator[sqlite3.Connection]:
        """A write transaction (``begun``: the caller has already begun it)."""
        conn = conn or self._conn()
        if not begun:
            conn.execute("BEGIN IMMEDIATE")
        try:
            yield conn
        except BaseException:
            conn.execute("ROLLBACK")
            raise
        conn.execute("COMMIT")

    # ---- schema ----------------------------------------------------------------------

    def _migrate(self, conn: sqlite3.Connection, *, create: bool) -> None:
        version = conn.execute("PRAGMA user_version").fetchone()[0]
        if version == SCHEMA_VERSION:
            return
        if version > SCHEMA_VERSION:
            raise StoreError(f"{self.path}: schema version {version} is newer than this "
                             f"amic knows ({SCHEMA_VERSION})")
        if version == 0:
            tables = conn.execute("SELECT count(*) FROM sqlite_schema").fetchone()[0]
            if tables or not create:
                raise StoreError(f"{self.path}: not an amic store (no amic schema version)")
        elif not create:
            raise StoreError(f"{self.path}: schema version {version} is older than this amic "
                             f"uses ({SCHEMA_VERSION}); amic run upgrades it")
        with self._write(conn):
            # Another process may have migrated while we waited for the write lock.
            version = conn.execute("PRAGMA user_version").fetchone()[0]
            for i in range(version, SCHEMA_VERSION):
                for statement in _split_sql(MIGRATIONS[i]):
                    conn.execute(statement)
                conn.execute(f"PRAGMA user_version = {i + 1}")
        if version < SCHEMA_VERSION:  # one line, not one per migration step
            log.info("store %s: schema version %d (%s)", self.path, SCHEMA_VERSION,
                     f"upgraded from {version}" if version else "created")

    @property
    def schema_version(self) -> int:
        return int(self._conn().execute("PRAGMA user_version").fetchone()[0])

    def pragma(self, name: str) -> Any:
        """The value of a read-only PRAGMA on this thread's connection (for checks)."""
        if not name.replace("_", "").isalnum():
            raise ValueError(f"bad pragma name {name!r}")
        row = self._conn().execute(f"PRAGMA {name}").fetchone()
        return None if row is None else row[0]

    # ---- meters ----------------------------------------------------------------------

    def sync_meters(self, meters: Sequence[MeterSettings]) -> None:
        """Make the meters table the configured meters (customer numbers are not stored)."""
        rows = [(m.meter_id, m.address, m.bus, m.area, m.feeder, m.station, m.role)
                for m in meters]
        with self._write() as conn:
            conn.execute("CREATE TEMP TABLE IF NOT EXISTS wanted (meter_id TEXT PRIMARY KEY)")
            conn.execute("DELETE FROM temp.wanted")
            conn.executemany("INSERT OR IGNORE INTO temp.wanted VALUES (?)",
                             ((r[0],) for r in rows))
            conn.execute("DELETE FROM meters WHERE meter_id NOT IN "
                         "(SELECT meter_id FROM temp.wanted)")
            conn.executemany(
                "INSERT INTO meters (meter_id, address, bus, area, feeder, station, role) "
                "VALUES (?, ?, ?, ?, ?, ?, ?) ON CONFLICT (meter_id) DO UPDATE SET "
                "address = excluded.address, bus = excluded.bus, area = excluded.area, "
                "feeder = excluded.feeder, station = excluded.station, role = excluded.role "
                "WHERE (address, bus, area, feeder, station, role) IS NOT "
                "(excluded.address, excluded.bus, excluded.area, excluded.feeder, "
                "excluded.station, excluded.role)", rows)
            conn.execute("DELETE FROM temp.wanted")

    def meters(self, area: str | None = None) -> list[dict[str, str]]:
        conn = self._conn()
        sql = "SELECT meter_id, address, bus, area, feeder, station, role FROM meters"
        cur = (conn.execute(sql + " WHERE area = ? ORDER BY meter_id", (area,))
               if area is not None else conn.execute(sql + " ORDER BY meter_id"))
        names = [d[0] for d in cur.description]
        return [dict(zip(names, row, strict=True)) for row in cur]

    # ---- direct writes (tests, tools; the daemon uses StoreWriter) -------------------

    def write_readings(self, readings: Iterable[Reading]) -> int:
        """Insert readings in one transaction now; returns the last id."""
        with self._write() as conn:
            before = _max_id(conn, "readings")
            conn.executemany(INSERT_READING, reading_rows(readings))
            conn.execute(INDEX_READS, (before,))
            return _max_id(conn, "readings")

    # ---- queries ---------------------------------------------------------------------

    def recent_readings(self, meter: str | None = None, area: str | None = None,
                        since: dt.datetime | int | None = None, until: dt.datetime | int |
                        None = None, quantity: str | None = None,
                        limit: int = 100) -> list[StoredReading]:
        """The newest readings first, with the meter's bus and area from the meters table.

        ``area`` selects the meters the configuration puts in that area (see
        :meth:`sync_meters`); ``since``/``until`` are aware datetimes or epoch ms.
        """
        where: list[str] = []
        args: list[Any] = []
        if meter is not None:
            where.append("r.meter = ?")
            args.append(meter)
        if area is not None:
            where.append("r.meter IN (SELECT meter_id FROM meters WHERE area = ?)")
            args.append(area)
        if quantity is not None:
            where.append("r.quantity = ?")
            args.append(quantity)
        if since is not None:
            where.append("r.ts >= ?")
            args.append(_as_ms(since))
        if until is not None:
            where.append("r.ts < ?")
            args.append(_as_ms(until))
        sql = ("SELECT r.id, r.meter, r.quantity, r.value, r.unit, r.ts, r.meter_ts, "
               "r.quality, m.area, m.bus FROM indexed_readings r "
               "LEFT JOIN meters m ON m.meter_id = r.meter")
        if where:
            sql += " WHERE " + " AND ".join(where)
        sql += " ORDER BY r.ts DESC, r.id DESC LIMIT ?"
        args.append(max(0, int(limit)))
        return [StoredReading.from_row(row) for row in self._conn().execute(sql, args)]

    def count(self, table: str) -> int:
        _check_table(table, (*OUTBOX_TABLES, "meters", "cursors"))
        return int(self._conn().execute(f"SELECT count(*) FROM {table}").fetchone()[0])

    def events(self, since: dt.datetime | int | None = None,
               limit: int = 100, *, meter: str | None = None, kind: str | None = None,
               min_severity: int = 0) -> list[Event]:
        """The newest events first."""
        sql = "SELECT ts, kind, meter, bus, severity, value, detail FROM events WHERE 1"
        args: list[Any] = []
        if since is not None:
            sql += " AND ts >= ?"
            args.append(_as_ms(since))
        if meter is not None:
            sql += " AND meter = ?"
            args.append(meter)
        if kind is not None:
            sql += " AND kind = ?"
            args.append(kind)
        if min_severity:
            sql += " AND severity >= ?"
            args.append(min_severity)
        sql += " ORDER BY ts DESC, id DESC LIMIT ?"
        args.append(limit)
        return [Event(kind, from_ms(ts), meter, bus, severity, value, detail)
                for ts, kind, meter, bus, severity, value, detail
                in self._conn().execute(sql, args)]

    def command(self, command_id: str) -> CommandRecord | None:
        row = self._conn().execute(
            "SELECT command_id, meter, kind, ts, operator, status, detail FROM commands "
            "WHERE command_id = ?", (command_id,)).fetchone()
        if row is None:
            return None
        cid, meter, kind, ts, operator, status, detail = row
        return CommandRecord(cid, meter, kind, from_ms(ts), operator, status, detail)

    def cycle(self, cycle_id: str) -> CycleRecord | None:
        row = self._conn().execute(
            "SELECT cycle_id, schedule, started, ended, planned, succeeded, failed, per_bus, "
            "per_area, failed_meters, cut FROM cycles WHERE cycle_id = ?",
            (cycle_id,)).fetchone()
        if row is None:
            return None
        cid, schedule, started, ended, planned, ok, failed, per_bus, per_area, bad, cut = row

        def pairs(text: str) -> dict[str, tuple[int, int]]:
            return {k: (int(v[0]), int(v[1])) for k, v in json.loads(text).items()}

        return CycleRecord(cid, schedule, from_ms(started),
                           None if ended is None else from_ms(ended), planned, ok, failed,
                           pairs(per_bus), pairs(per_area), json.loads(bad), bool(cut))

    # ---- outbox ----------------------------------------------------------------------

    def cursor(self, name: str, table: str) -> int:
        """The last id forwarder ``name`` has shipped from ``table`` (0: none yet)."""
        _check_table(table)
        row = self._conn().execute(
            "SELECT last_id FROM cursors WHERE name = ? AND table_name = ?",
            (name, table)).fetchone()
        return 0 if row is None else int(row[0])

    def cursors(self) -> list[Cursor]:
        return [Cursor(n, t, i, from_ms(u)) for n, t, i, u in self._conn().execute(
            "SELECT name, table_name, last_id, updated FROM cursors ORDER BY name, table_name")]

    def outbox(self, name: str, table: str, after_id: int | None = None,
               limit: int = 1000) -> list[sqlite3.Row]:
        """Rows of ``table`` after ``after_id`` (default: the forwarder's cursor), by id.

        Rows support ``row["column"]`` and ``row[i]``; times are UTC epoch ms.
        """
        _check_table(table)
        if after_id is None:
            after_id = self.cursor(name, table)
        cur = self._conn().execute(f"SELECT * FROM {_OUTBOX_SOURCE.get(table, table)} "
                                   "WHERE id > ? ORDER BY id LIMIT ?",
                                   (after_id, max(0, int(limit))))
        cur.row_factory = sqlite3.Row
        return list(cur)

    def advance(self, name: str, table: str, last_id: int) -> int:
        """Move forwarder ``name``'s cursor on ``table`` to ``last_id``; never backwards.

        Returns the cursor's position afterwards.  A forwarder holds back retention only
        once it has a cursor: register it with ``advance(name, table, 0)``.
        """
        pos = self._advance(name, table, last_id, wait=True)
        assert pos is not None
        return pos

    def try_advance(self, name: str, table: str, last_id: int) -> int | None:
        """:meth:`advance`, or None at once when another connection holds the write lock
        (the StoreWriter's large transactions) rather than waiting for it."""
        return self._advance(name, table, last_id, wait=False)

    def _advance(self, name: str, table: str, last_id: int, *, wait: bool) -> int | None:
        _check_table(table)
        conn = self._conn()
        if not wait:
            conn.execute("PRAGMA busy_timeout = 0")
            try:
                conn.execute("BEGIN IMMEDIATE")
            except sqlite3.OperationalError as e:
                if "locked" not in str(e) and "busy" not in str(e):
                    raise
                return None
            finally:
                conn.execute(f"PRAGMA busy_timeout = {int(self.busy_timeout * 1000)}")
        with self._write(conn, begun=not wait):
            conn.execute(
                "INSERT INTO cursors (name, table_name, last_id, updated) VALUES (?, ?, ?, ?) "
                "ON CONFLICT (name, table_name) DO UPDATE SET last_id = excluded.last_id, "
                "updated = excluded.updated WHERE excluded.last_id > cursors.last_id",
                (name, table, int(last_id), to_ms(dt.datetime.now(dt.UTC))))
            return int(conn.execute(
                "SELECT last_id FROM cursors WHERE name = ? AND table_name = ?",
                (name, table)).fetchone()[0])

    def drop_cursor(self, name: str, table: str | None = None) -> int:
        """Forget a forwarder (so it no longer holds back retention); returns rows removed."""
        with self._write() as conn:
            if table is None:
                cur = conn.execute("DELETE FROM cursors WHERE name = ?", (name,))
            else:
                _check_table(table)
                cur = conn.execute("DELETE FROM cursors WHERE name = ? AND table_name = ?",
                                   (name, table))
            return cur.rowcount

    def add_dead_letters(self, name: str, table: str,
                         rows: Sequence[tuple[int, int, str, str]]) -> None:
        """Record rows forwarder ``name`` could not deliver: (row id, HTTP status, error,
        line protocol)."""
        _check_table(table)
        now = to_ms(dt.datetime.now(dt.UTC))
        with self._write() as conn:
            conn.executemany(
                "INSERT INTO dead_letters (forwarder, table_name, row_id, ts, status, error, "
                "line) VALUES (?, ?, ?, ?, ?, ?, ?)",
                [(name, table, rid, now, status, error, line)
                 for rid, status, error, line in rows])

    def audit(self, *, since: dt.datetime | None = None, meter: str | None = None,
              limit: int = 10_000) -> list[sqlite3.Row]:
        """Relay commands and top-ups (not the journal of remote requests), and remote
        requests refused for security (status ``denied``), oldest first."""
        kinds = ("trip", "restore", "hold", "release", "alarm", "alarm_release", "dry_run",
                 "topup")
        # The remote channel's journal shares the table (status received / done); a
        # denied request is its journal row, kept as the audit of the attempt.
        sql = (f"SELECT * FROM commands WHERE ((kind IN ({','.join('?' * len(kinds))}) "
               "AND status NOT IN ('received', 'done')) OR status = 'denied') AND ts >= ?")
        args: list[Any] = [*kinds, to_ms(since) if since is not None else 0]
        if meter is not None:
            sql += " AND meter = ?"
            args.append(meter)
        cur = self._conn().execute(sql + " ORDER BY ts, id LIMIT ?", (*args, limit))
        cur.row_factory = sqlite3.Row
        return list(cur)

    def daily(self, kind: str, day: dt.date | None = None) -> list[sqlite3.Row]:
        """Stored daily figures of ``kind`` (for one day, or all), by day and key."""
        sql = "SELECT * FROM daily WHERE kind = ?"
        args: list[Any] = [kind]
        if day is not None:
            sql += " AND day = ?"
            args.append(day.isoformat())
        cur = self._conn().execute(sql + " ORDER BY day, key", args)
        cur.row_factory = sqlite3.Row
        return list(cur)

    def dead_letters(self, name: str | None = None, limit: int = 1000) -> list[sqlite3.Row]:
        """Refused rows, newest first."""
        sql = "SELECT * FROM dead_letters"
        args: tuple[Any, ...] = ()
        if name is not None:
            sql += " WHERE forwarder = ?"
            args = (name,)
        cur = self._conn().execute(sql + " ORDER BY id DESC LIMIT ?", (*args, limit))
        cur.row_factory = sqlite3.Row
        return list(cur)

    def last_id(self, table: str) -> int:
        """The highest row id of ``table`` (0 when empty); O(1) on the rowid."""
        _check_table(table)
        return int(self._conn().execute(
            f"SELECT coalesce(max(id), 0) FROM {_OUTBOX_SOURCE.get(table, table)}"
        ).fetchone()[0])

    def outbox_lag(self, name: str, table: str) -> int:
        """Rows of ``table`` forwarder ``name`` has not shipped yet."""
        _check_table(table)
        return int(self._conn().execute(
            f"SELECT count(*) FROM {_OUTBOX_SOURCE.get(table, table)} WHERE id > ?",
            (self.cursor(name, table),)).fetchone()[0])

    # ---- retention -------------------------------------------------------------------

    def purge(self, older_than_days: float, now: dt.datetime | float | None = None, *,
              chunk: int = 20_000) -> dict[str, int]:
        """Delete readings, events and cycles older than ``older_than_days``.

        Rows a forwarder cursor on their table has not passed yet are kept until they are
        ``2 * older_than_days`` old.  ``now``: an aware datetime or epoch seconds (default:
        the clock).  Deletes in transactions of at most ``chunk`` rows.  Returns the rows
        deleted per table.
        """
        deleted: dict[str, int] = dict.fromkeys(PURGED, 0)
        for table, n in purge_steps(self._conn(), older_than_days, now, chunk=chunk):
            if table in deleted:  # not the reads index
                deleted[table] += n
        return deleted

    # ---- health ----------------------------------------------------------------------

    def store_size_bytes(self) -> int:
        """Bytes on disk: the database file and its WAL."""
        total = 0
        for p in (self.path, self.path.with_name(self.path.name + "-wal")):
            with contextlib.suppress(OSError):
                total += p.stat().st_size
        return total

    def integrity_check(self, *, quick: bool = False) -> str:
        """``"ok"``, or the problems SQLite finds, one per line."""
        pragma = "quick_check" if quick else "integrity_check"
        rows = [str(r[0]) for r in self._conn().execute(f"PRAGMA {pragma}")]
        return "ok" if rows == ["ok"] else "\n".join(rows)

    def checkpoint(self, mode: str = "PASSIVE") -> tuple[int, int, int]:
        """Copy the WAL into the database file: (busy, wal frames, frames checkpointed)."""
        if mode.upper() not in ("PASSIVE", "FULL", "RESTART", "TRUNCATE"):
            raise ValueError(f"bad checkpoint mode {mode!r}")
        busy, frames, done = self._conn().execute(
            f"PRAGMA wal_checkpoint({mode.upper()})").fetchone()
        return int(busy), int(frames), int(done)


def _max_id(conn: sqlite3.Connection, table: str) -> int:
    return int(conn.execute(f"SELECT max(id) FROM {table}").fetchone()[0] or 0)


def _check_table(table: str, allowed: Sequence[str] = OUTBOX_TABLES) -> None:
    if table not in allowed:
        raise ValueError(f"unknown table {table!r}: one of {', '.join(allowed)}")


def _split_sql(script: str) -> list[str]:
    """Statements of a migration script (no semicolons inside strings or comments; a
    trigger's body is kept whole)."""
    lines = [line.split("--", 1)[0] for line in script.splitlines()]
    out: list[str] = []
    pending = ""
    for part in "\n".join(lines).split(";"):
        pending += part + ";"
        if sqlite3.complete_statement(pending):  # false inside a trigger's BEGIN ... END
            if pending.strip(" \n;"):
                out.append(pending.strip()[:-1].strip())
            pending = ""
    if pending.strip(" \n;"):
        out.append(pending.strip(" \n;"))
    return out


def purge_steps(conn: sqlite3.Connection, older_than_days: float,
                now: dt.datetime | float | None = None, *,
                chunk: int = 20_000) -> Iterator[tuple[str, int]]:
    """Retention as a sequence of short transactions: yields (table, rows deleted).

    The writer thread runs one step at a time between its batches.  See
    :meth:`Store.purge` for the rules.
    """
    if older_than_days <= 0 or not math.isfinite(older_than_days):
        raise ValueError(f"retention must be a positive number of days, not {older_than_days}")
    if now is None:
        now_ms = to_ms(dt.datetime.now(dt.UTC))
    elif isinstance(now, dt.datetime):
        now_ms = to_ms(now)
    else:
        now_ms = int(now * 1000)
    cutoff = now_ms - int(older_than_days * DAY_MS)
    hard_cutoff = now_ms - int(2 * older_than_days * DAY_MS)
    for table, column in PURGED.items():
        guard_row = conn.execute("SELECT min(last_id) FROM cursors WHERE table_name = ?",
                                 (table,)).fetchone()
        guard = guard_row[0] if guard_row[0] is not None else 2**62
        top_row = conn.execute(f"SELECT max(id) FROM {table}").fetchone()
        if top_row[0] is None:
            continue
        top = int(top_row[0])  # the newest row stays: ids are never reused
        bound = 2**62
        if table == "readings":
            # readings has no time index: old rows are the first ids, up to the last id
            # of a read before the cutoff
            last = conn.execute("SELECT max(last_id) FROM reads WHERE ts < ?",
                                (cutoff,)).fetchone()[0]
            if last is None:
                continue
            bound = int(last)
        yield from _delete_steps(
            conn, table, f"DELETE FROM {table} WHERE id IN (SELECT id FROM {table} WHERE "
            f"id <= ? AND {column} < ? AND id < ? AND (id <= ? OR {column} < ?) LIMIT ?)",
            (bound, cutoff, top, guard, hard_cutoff, chunk))
        if table == "readings":
            # the reads whose readings are all gone, by the same rules
            yield from _delete_steps(
                conn, "reads", "DELETE FROM reads WHERE first_id IN (SELECT first_id FROM "
                "reads WHERE ts < ? AND last_id < ? AND (last_id <= ? OR ts < ?) LIMIT ?)",
                (cutoff, top, guard, hard_cutoff, chunk))


def _delete_steps(conn: sqlite3.Connection, table: str, sql: str,
                  args: tuple[int, ...]) -> Iterator[tuple[str, int]]:
    """Run a ``DELETE .. LIMIT`` (its last argument) in transactions until it deletes
    fewer rows than that; yields (table, rows deleted) per transaction."""
    while True:
        conn.execute("BEGIN IMMEDIATE")
        try:
            n = conn.execute(sql, args).rowcount
        except BaseException:
            conn.execute("ROLLBACK")
            raise
        conn.execute("COMMIT")
        if n:
            yield table, n
        if n < args[-1]:
            break


def purge_shipped(conn: sqlite3.Connection, *, chunk: int = 20_000) -> int:
    """Emergency room when the store is full: delete the oldest rows that every forwarder
    has shipped (readings, events, cycles; up to ``chunk`` per table).

    A table no forwarder reads is left alone: the store holds its only copy.  The newest
    row of each table stays, so ids are never reused.  Returns the rows deleted.
    """
    total = 0
    for table in PURGED:
        guard = conn.execute("SELECT min(last_id) FROM cursors WHERE table_name = ?",
                             (table,)).fetchone()[0]
        if not guard:
            continue
        top = conn.execute(f"SELECT max(id) FROM {table}").fetchone()[0]
        if top is None:
            continue
        conn.execute("BEGIN IMMEDIATE")
        try:
            n = conn.execute(f"DELETE FROM {table} WHERE id IN (SELECT id FROM {table} "
                             f"WHERE id <= ? AND id < ? ORDER BY id LIMIT ?)",
                             (int(guard), int(top), chunk)).rowcount
            if table == "readings":  # reads whose readings are all gone
                conn.execute("DELETE FROM reads WHERE first_id < ? AND last_id < "
                             "(SELECT min(id) FROM readings)", (int(top),))
            conn.execute("COMMIT")
        except BaseException:
            if conn.in_transaction:
                with contextlib.suppress(sqlite3.Error):
                    conn.execute("ROLLBACK")
            raise
        total += n
    return total


def has_shipped(conn: sqlite3.Connection) -> bool:
    """Whether :func:`purge_shipped` would find a row to delete."""
    for table in PURGED:
        guard = conn.execute("SELECT min(last_id) FROM cursors WHERE table_name = ?",
                             (table,)).fetchone()[0]
        if not guard:
            continue
        low, top = conn.execute(f"SELECT min(id), max(id) FROM {table}").fetchone()
        if low is not None and low <= int(guard) and low < top:
            return True
    return False


def is_full(e: BaseException) -> bool:
    """Whether a SQLite error means no room: disk full, or the store's size cap reached."""
    code = getattr(e, "sqlite_errorcode", None)
    if code == 13:  # SQLITE_FULL
        return True
    text = str(e).lower()
    return "disk is full" in text or "no space left" in text


# ---- the batching writer ---------------------------------------------------------------

_READINGS: Final = 0
_EVENTS: Final = 1
_COMMANDS: Final = 2
_CYCLES: Final = 3
_DAILY: Final = 4

_Chunk = tuple[int, list[Any]]
_DATA_ERRORS = (sqlite3.IntegrityError, sqlite3.InterfaceError, sqlite3.ProgrammingError,
                sqlite3.DataError, TypeError, ValueError, OverflowError, AttributeError)


@dataclass(frozen=True, slots=True)
class CommitInfo:
    """Passed to ``on_commit`` (in the writer thread) after each commit."""

    rows: int  # rows in this transaction
    readings: int  # readings in this transaction
    seconds: float
    rows_committed: int  # totals since the writer started
    readings_committed: int


@dataclass(frozen=True, slots=True)
class WriterStats:
    rows_committed: int
    readings_committed: int
    commits: int
    last_commit_seconds: float
    max_commit_seconds: float
    pending: int
    errors: int  # failed commit attempts (retried)
    rows_rejected: int  # rows SQLite refused (bad values); logged
    rows_dropped: int  # rows abandoned at a close() deadline; logged
    purged_rows: int


def _resolve(fut: asyncio.Future[None]) -> None:
    if not fut.done():
        fut.set_result(None)


class StoreWriter:
    """Batches records from the event loop into transactions on a dedicated thread.

    ``put*`` never block and never drop: rows wait in memory until committed.  Past
    ``max_pending`` waiting rows, producers that can wait should use :meth:`put_wait` /
    :meth:`put_many_wait` (back-pressure).  A ``put_many`` list is committed in one
    transaction (never split).  A commit that fails (disk full, I/O error, lock
    timeout) is rolled back and retried with back-off; rows SQLite refuses outright
    (e.g. a value of a type it cannot store) are logged and skipped, the rest of their
    batch is committed.
    """

    def __init__(self, store: Store, *, commit_interval: float = 1.0, commit_rows: int = 2000,
                 retention_days: float | None = None, purge_interval: float = 3600.0,
                 max_batch: int = 50_000, max_pending: int = 1_000_000,
                 on_commit: Callable[[CommitInfo], None] | None = None,
                 cache_mb: int = 32, on_alert: Callable[[Event], None] | None = None,
                 min_free_mb: float = 100.0, disk_check_interval: float = 30.0,
                 purge_shipped_when_full: bool = True, reserve_mb: float = 8.0) -> None:
        if commit_interval <= 0 or commit_rows <= 0:
            raise ValueError("commit_interval and commit_rows must be positive")
        self.store = store
        self.commit_interval = float(commit_interval)
        self.commit_rows = int(commit_rows)
        self.retention_days = retention_days if retention_days else None
        self.purge_interval = purge_interval
        self.max_batch = max(int(max_batch), self.commit_rows)
        self.max_pending = max_pending
        self.on_commit = on_commit
        self.cache_mb = cache_mb
        self.on_alert = on_alert
        self.min_free_mb = min_free_mb
        self.disk_check_interval = disk_check_interval
        self.purge_shipped_when_full = purge_shipped_when_full
        self.full_since: float | None = None  # monotonic; the store has no room since then
        self._full_wall: dt.datetime | None = None
        self._disk_low = False
        self._next_disk_check = 0.0
        self._next_room_check = 0.0  # while full and idle: is there room again?
        self.full_episodes = 0
        self.rows_purged_for_room = 0
        # A file of reserve_mb (at most 1/8 of the file system) released when the file
        # system is full: the WAL checkpoint that must precede deleting shipped rows
        # grows the database file by up to the WAL's size, which the writer keeps under
        # half the reserve (wal_autocheckpoint).
        self.reserve_mb = max(float(reserve_mb), 0.0)
        self.reserve_path = store.path.with_name(store.path.name + "-reserve")
        self._tight = False  # ran out of room once: keep room ahead of the commits
        self.room_attempts = 0  # room-making runs (delete shipped rows)
        self.room_failures = 0  # of those, how many failed (SQLite error)
        self.reserve_releases = 0
        self._wal_budget = 8 << 20  # bytes of file system the WAL may need; set at start

        self._cond = threading.Condition(threading.Lock())
        self._queue: list[_Chunk] = []
        self._queued = 0  # rows ever enqueued
        self._done = 0  # rows ever committed, rejected or dropped
        self._oldest = 0.0  # monotonic time the oldest waiting row was queued
        self._flush_to = 0  # commit at once until _done reaches this
        self._flush_waiters: list[tuple[int, asyncio.AbstractEventLoop,
                                        asyncio.Future[None]]] = []
        self._room_waiters: list[tuple[asyncio.AbstractEventLoop, asyncio.Future[None]]] = []
        self._stopping = False
        self._closed = False  # the writer thread has ended: nothing will be committed
        self._close_deadline: float | None = None
        self._purge_requested: float | None = None  # epoch seconds of the purge's "now"
        self._last_purge: float | None = None  # epoch seconds
        self._warned_backlog = False
        self._thread: threading.Thread | None = None
        self._started: asyncio.Future[None] | None = None
        self._finished: asyncio.Future[None] | None = None
        self._loop: asyncio.AbstractEventLoop | None = None

        self.rows_committed = 0
        self.readings_committed = 0
        self.commits = 0
        self.last_commit_seconds = 0.0
        self.max_commit_seconds = 0.0
        self.errors = 0
        self.rows_rejected = 0
        self.rows_dropped = 0
        self.purged_rows = 0

    # ---- state -----------------------------------------------------------------------

    @property
    def pending(self) -> int:
        """Rows queued and not committed yet."""
        return self._queued - self._done

    @property
    def running(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

    @property
    def backlogged(self) -> bool:
        return self.pending >= self.max_pending

    def stats(self) -> WriterStats:
        return WriterStats(self.rows_committed, self.readings_committed, self.commits,
                           self.last_commit_seconds, self.max_commit_seconds, self.pending,
                           self.errors, self.rows_rejected, self.rows_dropped,
                           self.purged_rows)

    # ---- life cycle ------------------------------------------------------------------

    async def start(self) -> None:
        """Open the write connection in the writer thread; raises if it cannot."""
        if self._thread is not None:
            return
        loop = asyncio.get_running_loop()
        self._loop = loop
        self._started = loop.create_future()
        self._finished = loop.create_future()
        if self.retention_days:
            # First purge a minute after start-up, then every purge_interval.
            self._last_purge = time.time() - self.purge_interval + 60.0
        self._thread = threading.Thread(target=self._run, name="amic-store-writer",
                                        daemon=True)
        self._thread.start()
        await self._started

    async def close(self, timeout: float | None = None) -> None:
        """Commit everything queued, then close the write connection.

        With ``timeout``, rows still waiting after that many seconds are abandoned
        (logged, counted in ``rows_dropped``); without, it waits until all are committed.
        """
        if self._thread is None:
            if not self._queue:
                return
            await self.start()
        assert self._finished is not None
        with self._cond:
            if not self._stopping:
                self._stopping = True
                if timeout is not None:
                    self._close_deadline = time.monotonic() + timeout
            self._cond.notify_all()
        await asyncio.shield(self._finished)

    async def __aenter__(self) -> StoreWriter:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    # ---- enqueueing (event loop side; thread-safe) -----------------------------------

    def _enqueue(self, kind: int, items: list[Any]) -> None:
        n = len(items)
        if not n:
            return
        with self._cond:
            if self._closed:
                raise RuntimeError("StoreWriter is closed: the row cannot be stored")
            if not self._queue:
                self._oldest = time.monotonic()
            self._queue.append((kind, items))
            self._queued += n
            pending = self._queued - self._done
            if pending >= self.commit_rows:
                self._cond.notify()
        if pending >= self.max_pending and not self._warned_backlog:
            self._warned_backlog = True
            log.warning("store writer: %d rows waiting to be committed (max_pending %d)",
                        pending, self.max_pending)

    def put(self, reading: Reading) -> None:
        with self._cond:
            if self._queue and not self._closed:
                kind, items = self._queue[-1]
                if kind == _READINGS and len(items) < self.commit_rows:
                    items.append(reading)
                    self._queued += 1
                    if self._queued - self._done >= self.commit_rows:
                        self._cond.notify()
                    return
        self._enqueue(_READINGS, [reading])

    def put_many(self, readings: Iterable[Reading]) -> None:
        """Queue readings; they are committed together in one transaction."""
        self._enqueue(_READINGS, list(readings))

    def put_event(self, event: Event) -> None:
        self._enqueue(_EVENTS, [event])

    def put_command(self, command: CommandRecord) -> None:
        """Store a command's status (a later put of the same command_id replaces it)."""
        self._enqueue(_COMMANDS, [command])

    def put_daily(self, record: DailyRecord) -> None:
        """Store a daily figure (a later put of the same day, kind and key replaces it)."""
        self._enqueue(_DAILY, [record])

    def put_cycle(self, cycle: CycleRecord) -> None:
        """Store a cycle (a later put of the same cycle_id replaces it)."""
        self._enqueue(_CYCLES, [cycle])

    async def wait_for_room(self) -> None:
        """Return once fewer than ``max_pending`` rows wait."""
        while self.pending >= self.max_pending:
            if not self.running:
                raise RuntimeError("StoreWriter is not running: its backlog cannot drain")
            loop = asyncio.get_running_loop()
            fut: asyncio.Future[None] = loop.create_future()
            with self._cond:
                if self._queued - self._done < self.max_pending:
                    return
                self._room_waiters.append((loop, fut))
                self._cond.notify()
            await fut

    async def put_wait(self, reading: Reading) -> None:
        """:meth:`put`, waiting first while the backlog is at ``max_pending``."""
        await self.wait_for_room()
        self.put(reading)

    async def put_many_wait(self, readings: Iterable[Reading]) -> None:
        """:meth:`put_many`, waiting first while the backlog is at ``max_pending``."""
        await self.wait_for_room()
        self.put_many(readings)

    async def flush(self) -> None:
        """Return once everything queued before the call is committed."""
        loop = asyncio.get_running_loop()
        with self._cond:
            target = self._queued
            if self._done >= target:
                return
            if self._thread is None:
                raise RuntimeError("StoreWriter.flush() before start()")
            fut: asyncio.Future[None] = loop.create_future()
            self._flush_waiters.append((target, loop, fut))
            self._flush_to = max(self._flush_to, target)
            self._cond.notify()
        await fut

    def maybe_purge(self, now: float | None = None) -> bool:
        """Ask the writer thread to apply retention if ``purge_interval`` has passed.

        ``now``: epoch seconds (default: the clock), used for the cutoff too.  The writer
        thread also does this by itself; returns whether a purge was requested.
        """
        if not self.retention_days:
            return False
        now = time.time() if now is None else now
        with self._cond:
            if self._purge_requested is not None:
                return False
            if not self._interval_passed(now):
                return False
            self._purge_requested = now
            self._cond.notify()
        return True

    # ---- the writer thread -----------------------------------------------------------

    def _call_loop(self, fn: Callable[..., Any], *args: Any) -> None:
        loop = self._loop
        if loop is None:
            return
        with contextlib.suppress(RuntimeError):  # the loop is closed
            loop.call_soon_threadsafe(fn, *args)

    def _run(self) -> None:
        try:
            conn = self.store.connect(cache_mb=self.cache_mb)
        except BaseException as e:
            started = self._started
            if started is not None:
                self._call_loop(_set_exception, started, e)
            self._thread = None
            return
        self._ensure_reserve()
        reserve = self._reserve_bytes()
        page = int(conn.execute("PRAGMA page_size").fetchone()[0])
        pages = min(max(reserve // 2 // page, 64), 1000)  # 1000: SQLite's default
        conn.execute(f"PRAGMA wal_autocheckpoint = {pages}")
        self._wal_budget = 2 * pages * page
        assert self._started is not None
        self._call_loop(_resolve, self._started)
        purge: Iterator[tuple[str, int]] | None = None
        try:
            while True:
                batch, do_purge_step, stop = self._next_work(purge is not None)
                if batch:
                    self._commit(conn, batch)
                elif do_purge_step:
                    purge = self._purge_step(conn, purge)
                elif stop:
                    break
                else:
                    self._recheck_room(conn)
        except BaseException:  # a bug: never leave flush() or close() waiting
            log.exception("store writer thread failed")
            raise
        finally:
            with self._cond:
                self._closed = True
                lost = self._queued - self._done
                if lost:
                    self._done = self._queued
                    self.rows_dropped += lost
                    log.error("store writer: %d rows not committed at close", lost)
                self._wake_waiters()
            self.store.release(conn)
            assert self._finished is not None
            self._call_loop(_resolve, self._finished)

    def _next_work(self, purging: bool) -> tuple[list[_Chunk], bool, bool]:
        """Wait for work: (batch to commit, run a purge step, stop)."""
        with self._cond:
            while True:
                pending = self._queued - self._done
                now = time.monotonic()
                if pending:
                    due = (pending >= self.commit_rows or self._stopping
                           or self._done < self._flush_to or bool(self._room_waiters)
                           or now - self._oldest >= self.commit_interval)
                    if due:
                        return self._take(), False, False
                elif self._stopping:
                    return [], False, True
                if purging:
                    return [], True, False
                if self._purge_due():
                    return [], True, False
                if not pending and self.full_since is not None \
                        and now >= self._next_room_check:
                    return [], False, False  # the room check of a full, quiet store
                timeout = (self.commit_interval - (now - self._oldest) if pending
                           else self.commit_interval)
                if self.retention_days:
                    timeout = min(timeout, 60.0)  # look at the purge clock now and then
                if self.full_since is not None:
                    timeout = min(timeout, max(self._next_room_check - now, 0.001))
                self._cond.wait(max(timeout, 0.001))

    def _take(self) -> list[_Chunk]:
        """Whole chunks from the queue, up to max_batch rows (commit_rows while the store
        has no room); at least one chunk."""
        q = self._queue
        rows = 0
        i = 0
        limit = self.commit_rows if self.full_since is not None else self.max_batch
        while i < len(q) and (i == 0 or rows + len(q[i][1]) <= limit):
            rows += len(q[i][1])
            i += 1
        batch, self._queue = q[:i], q[i:]
        self._oldest = time.monotonic() if self._queue else 0.0
        return batch

    def _purge_due(self) -> bool:
        if not self.retention_days:
            return False
        if self._purge_requested is not None:
            return True
        return self._interval_passed(time.time())

    def _interval_passed(self, now: float) -> bool:
        """Whether purge_interval has passed since the last purge (caller holds the lock)."""
        last = self._last_purge
        if last is None:
            return True
        if now < last:  # the clock was set back: count the interval from now
            self._last_purge = now
            return False
        return now - last >= self.purge_interval

    def _purge_step(self, conn: sqlite3.Connection,
                    purge: Iterator[tuple[str, int]] | None) -> Iterator[tuple[str, int]] | None:
        assert self.retention_days
        if purge is None:
            with self._cond:
                now = self._purge_requested if self._purge_requested is not None \
                    else time.time()
                self._purge_requested = None
                self._last_purge = now
            purge = purge_steps(conn, self.retention_days, now)
            log.debug("store: retention purge started (%g days)", self.retention_days)
        try:
            table, n = next(purge)
        except StopIteration:
            return None
        except sqlite3.Error as e:
            log.error("store: retention purge failed: %s", e)
            return None
        if table in PURGED:  # not the reads index
            self.purged_rows += n
        log.info("store: retention purged %d %s rows", n, table)
        return purge

    def _commit(self, conn: sqlite3.Connection, batch: list[_Chunk]) -> None:
        n = sum(len(items) for _, items in batch)
        readings = sum(len(items) for kind, items in batch if kind == _READINGS)
        delay = 0.05
        careful = False
        if self._tight:
            self._keep_room(conn)
        while True:
            t0 = time.perf_counter()
            try:
                rejected, rejected_readings = self._write(conn, batch, careful)
                break
            except _DATA_ERRORS as e:
                self._rollback(conn)
                if careful:  # cannot happen: careful mode skips bad rows
                    raise
                log.warning("store: batch of %d rows refused (%s); retrying row by row", n, e)
                careful = True
            except sqlite3.Error as e:
                self._rollback(conn)
                self.errors += 1
                if is_full(e):
                    self._no_room(n, e)
                    if self.purge_shipped_when_full and self._make_room(conn):
                        continue
                    if len(batch) > 1:  # smaller transactions fit in what room is left
                        half = len(batch) // 2
                        with self._cond:
                            self._queue[:0] = batch[half:]
                            self._oldest = time.monotonic()
                        batch = batch[:half]
                        n = sum(len(items) for _, items in batch)
                        readings = sum(len(items) for kind, items in batch
                                       if kind == _READINGS)
                        continue
                    if self.errors % 20 == 1:
                        log.error("store: no room for %d rows (%s); %d rows held in memory, "
                                  "retrying", n, e, self.pending)
                else:
                    log.error("store: commit of %d rows failed (%s); retrying in %.2f s", n,
                              e, delay)
                with self._cond:
                    deadline = self._close_deadline
                    if deadline is not None and time.monotonic() + delay > deadline:
                        break_out = True
                    else:
                        break_out = False
                        self._cond.wait(delay)
                if break_out:
                    with self._cond:
                        self._done += n
                        self.rows_dropped += n
                        self._wake_waiters()
                    log.error("store: close deadline reached: %d rows abandoned", n)
                    return
                delay = min(delay * 2, 5.0)
        took = time.perf_counter() - t0
        stored = n - rejected
        # Room again once the backlog is written and there is room for more than the
        # next commit, not at the first small commit that fits: a store hovering at its
        # limit would raise an event pair per commit.
        if (self.full_since is not None and self.pending - n < self.commit_rows
                and self._room_bytes(conn) >= self._low_water()):
            self._room_again()
        if time.monotonic() >= self._next_disk_check:
            self._check_disk()
        committed_readings = readings - rejected_readings
        # Before the flush waiters wake: after flush(), on_commit has seen these rows.
        if self.on_commit is not None:
            try:
                self.on_commit(CommitInfo(stored, committed_readings, took,
                                          self.rows_committed + stored,
                                          self.readings_committed + committed_readings))
            except Exception:
                log.exception("store: on_commit callback failed")
        with self._cond:
            self._done += n
            self.rows_committed += stored
            self.readings_committed += committed_readings
            self.rows_rejected += rejected
            self.commits += 1
            self.last_commit_seconds = took
            self.max_commit_seconds = max(self.max_commit_seconds, took)
            if self._queued - self._done < self.max_pending:
                self._warned_backlog = False
            self._wake_waiters()

    # ---- disk-full policy (docs/storage.md) ------------------------------------------

    def _alert(self, event: Event) -> None:
        """Store the event (it waits in the queue like any row) and tell the daemon now."""
        with self._cond:
            if not self._queue:
                self._oldest = time.monotonic()
            self._queue.append((_EVENTS, [event]))
            self._queued += 1
        if self.on_alert is not None:
            self._call_loop(self.on_alert, event)

    def _no_room(self, rows: int, e: BaseException) -> None:
        if self.full_since is not None:
            return
        self.full_since = time.monotonic()
        self._full_wall = dt.datetime.now(dt.UTC)
        self.full_episodes += 1
        self._alert(Event("store_full", self._full_wall, severity=2, value=float(self.pending),
                          detail=f"{self.store.path}: no room to commit ({e}); rows are held "
                                 f"in memory (up to {self.max_pending}), then polling waits"))

    def _room_again(self) -> None:
        assert self.full_since is not None
        seconds = time.monotonic() - self.full_since
        self.full_since = None
        log.warning("store: committing again after %.1f s without room", seconds)
        self._alert(Event("store_recovered", dt.datetime.now(dt.UTC), severity=0,
                          value=round(seconds, 3),
                          detail=f"{self.store.path}: commits resume after {seconds:.1f} s "
                                 f"without room; nothing was lost"))

    def _make_room(self, conn: sqlite3.Connection) -> bool:
        """Delete shipped rows to make room; True when some were deleted.

        On a full file system the deletes need room in the WAL themselves: the reserve
        file goes first, and the WAL is checkpointed and truncated before and after, so
        its space is the file system's again.
        """
        self._tight = True
        if not has_shipped(conn):  # nothing to delete: keep the reserve for later
            return False
        self.room_attempts += 1
        self._release_reserve()
        self._truncate_wal(conn)
        try:
            n = purge_shipped(conn)
        except sqlite3.Error as e:
            self.room_failures += 1
            log.error("store: cannot delete shipped rows to make room: %s", e)
            return False
        self._truncate_wal(conn)
        if n:
            self.rows_purged_for_room += n
            log.warning("store: full: deleted the %d oldest rows already forwarded", n)
        return n > 0

    def _recheck_room(self, conn: sqlite3.Connection) -> None:
        """A full store with nothing to commit: recovered once the forwarder's progress
        (or freed disk space) leaves room, not only at the next commit, which may be a
        cycle away."""
        self._next_room_check = time.monotonic() + ROOM_RECHECK_SECONDS
        if self.full_since is None:
            return
        if self._tight:
            self._keep_room(conn)
        if self.pending < self.commit_rows and self._room_bytes(conn) >= self._low_water():
            self._room_again()

    def _keep_room(self, conn: sqlite3.Connection) -> None:
        """Once the store ran out of room: make room before it runs out again, so a
        store kept at its limit by a forwarder that keeps up raises no new episode."""
        with contextlib.suppress(OSError):
            if shutil.disk_usage(self.store.path.parent).free < self._wal_budget:
                self._truncate_wal(conn)  # a reader kept the WAL from starting over
        for _ in range(8):  # bounded: each round deletes up to 20,000 rows a table
            if self._room_bytes(conn) >= self._low_water():
                return
            if not self._make_room(conn):
                return

    def _low_water(self) -> int:
        """Room (bytes) the store keeps ahead of its commits once it was full."""
        cap = self.store.max_size_mb
        if cap is not None:
            return max(65536, min(1 << 20, int(cap * 1048576 / 8)))
        return 1 << 20

    def _room_bytes(self, conn: sqlite3.Connection) -> int:
        """Free pages in the file, plus what it may still grow (cap, free disk space
        beyond what the WAL needs)."""
        try:
            page = int(conn.execute("PRAGMA page_size").fetchone()[0])
            free_pages = int(conn.execute("PRAGMA freelist_count").fetchone()[0])
            grow = max(shutil.disk_usage(self.store.path.parent).free - self._wal_budget, 0)
            if self.store.max_size_mb is not None:
                pages = int(conn.execute("PRAGMA page_count").fetchone()[0])
                limit = int(conn.execute("PRAGMA max_page_count").fetchone()[0])
                grow = min(grow, max(limit - pages, 0) * page)
        except (sqlite3.Error, OSError):
            return 0
        return free_pages * page + grow

    @staticmethod
    def _truncate_wal(conn: sqlite3.Connection) -> None:
        """Copy the WAL into the database and truncate it to zero bytes (best effort:
        a reader may hold it)."""
        try:
            conn.execute("PRAGMA wal_checkpoint(TRUNCATE)").fetchone()
        except sqlite3.Error as e:
            log.debug("store: WAL checkpoint failed: %s", e)

    def _reserve_bytes(self) -> int:
        if not self.reserve_mb:
            return 0
        try:
            total = shutil.disk_usage(self.store.path.parent).total
        except OSError:
            return 0
        return min(int(self.reserve_mb * 1048576), total // 8) // 4096 * 4096

    def _ensure_reserve(self) -> None:
        """(Re)create the reserve file while the file system has room for it twice."""
        size = self._reserve_bytes()
        if not size:
            return
        try:
            if self.reserve_path.stat().st_size >= size:
                return
        except FileNotFoundError:
            pass
        except OSError:
            return
        try:
            if shutil.disk_usage(self.store.path.parent).free < 2 * size + (1 << 20):
                return
            fd = os.open(self.reserve_path, os.O_WRONLY | os.O_CREAT, 0o600)
            try:
                os.posix_fallocate(fd, 0, size)
            finally:
                os.close(fd)
        except OSError as e:
            log.warning("store: cannot create the reserve file %s: %s", self.reserve_path, e)
            with contextlib.suppress(OSError):
                self.reserve_path.unlink()
            return
        log.info("store: reserve file %s (%d kB)", self.reserve_path, size // 1024)
        if self.store.max_size_mb is None and self.full_since is None:
            self._tight = False  # the file system has room again

    def _release_reserve(self) -> None:
        """Delete the reserve file when the file system (not a size cap) is short."""
        try:
            if shutil.disk_usage(self.store.path.parent).free >= self._wal_budget:
                return
            size = self.reserve_path.stat().st_size
            self.reserve_path.unlink()
        except FileNotFoundError:
            return
        except OSError as e:
            log.error("store: cannot remove the reserve file %s: %s", self.reserve_path, e)
            return
        self.reserve_releases += 1
        log.warning("store: file system full: released the reserve file (%d kB)",
                    size // 1024)

    def _check_disk(self) -> None:
        self._next_disk_check = time.monotonic() + self.disk_check_interval
        if self.full_since is None:
            self._ensure_reserve()
        if not self.min_free_mb:
            return
        try:
            free_mb = shutil.disk_usage(self.store.path.parent).free / 1048576
        except OSError:
            return
        if free_mb < self.min_free_mb and not self._disk_low:
            self._disk_low = True
            self._alert(Event("disk_low", dt.datetime.now(dt.UTC), severity=1,
                              value=round(free_mb, 1),
                              detail=f"{self.store.path.parent}: {free_mb:.0f} MB free, "
                                     f"below min_free_mb {self.min_free_mb:g}"))
        elif free_mb >= 1.1 * self.min_free_mb and self._disk_low:
            self._disk_low = False
            self._alert(Event("disk_low_cleared", dt.datetime.now(dt.UTC), severity=0,
                              value=round(free_mb, 1),
                              detail=f"{self.store.path.parent}: {free_mb:.0f} MB free"))

    @staticmethod
    def _rollback(conn: sqlite3.Connection) -> None:
        if conn.in_transaction:
            with contextlib.suppress(sqlite3.Error):
                conn.execute("ROLLBACK")

    def _write(self, conn: sqlite3.Connection, batch: list[_Chunk],
               careful: bool) -> tuple[int, int]:
        """One transaction; returns the rows and readings skipped (careful mode only)."""
        now_ms = to_ms(dt.datetime.now(dt.UTC))
        rejected = rejected_readings = 0
        conn.execute("BEGIN IMMEDIATE")
        if not careful:
            # One executemany per run of chunks of one kind: the poller hands over a few
            # readings per meter, and a statement per chunk would cost more than the rows.
            for kind, group in itertools.groupby(batch, key=lambda c: c[0]):
                items = list(itertools.chain.from_iterable(c[1] for c in group))
                before = _max_id(conn, "readings") if kind == _READINGS else -1
                conn.executemany(*self._rows(kind, items, now_ms))
                if before >= 0:
                    conn.execute(INDEX_READS, (before,))
            conn.execute("COMMIT")
            return 0, 0
        before = _max_id(conn, "readings")
        for kind, items in batch:
            sql = self._rows(kind, items, now_ms)[0]
            for item in items:
                try:
                    conn.executemany(sql, self._rows(kind, [item], now_ms)[1])
                except _DATA_ERRORS as e:
                    rejected += 1
                    rejected_readings += kind == _READINGS
                    log.error("store: row refused and skipped: %r: %s", item, e)
        conn.execute(INDEX_READS, (before,))
        conn.execute("COMMIT")
        return rejected, rejected_readings

    @staticmethod
    def _rows(kind: int, items: list[Any], now_ms: int) -> tuple[str, Iterable[Any]]:
        if kind == _READINGS:
            return INSERT_READING, reading_rows(items)
        if kind == _EVENTS:
            return INSERT_EVENT, map(event_row, items)
        if kind == _COMMANDS:
            return INSERT_COMMAND, [command_row(c, now_ms) for c in items]
        if kind == _DAILY:
            return INSERT_DAILY, map(daily_row, items)
        return INSERT_CYCLE, map(cycle_row, items)

    def _wake_waiters(self) -> None:
        """Resolve the flush and room waiters that are satisfied (caller holds the lock)."""
        if self._flush_waiters:
            still = []
            for target, loop, fut in self._flush_waiters:
                if self._done >= target:
                    with contextlib.suppress(RuntimeError):
                        loop.call_soon_threadsafe(_resolve, fut)
                else:
                    still.append((target, loop, fut))
            self._flush_waiters = still
        if self._room_waiters and (self._queued - self._done < self.max_pending
                                   or self._thread is None or self._stopping):
            for loop, fut in self._room_waiters:
                with contextlib.suppress(RuntimeError):
                    loop.call_soon_threadsafe(_resolve, fut)
            self._room_waiters = []


def _set_exception(fut: asyncio.Future[None], exc: BaseException) -> None:
    if not fut.done():
        fut.set_exception(exc)

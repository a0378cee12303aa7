"""The :class:`Store`: the SQLite file, its connections, queries and maintenance."""

from __future__ import annotations

import contextlib
import datetime as dt
import json
import logging
import sqlite3
import threading
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path
from typing import Any, Final

from collector.config.settings import MeterSettings

from .records import CommandRecord, CycleRecord, Event, Reading, from_ms, to_ms
from .retention import purge_steps
from .rows import Cursor, StoredReading, reading_rows
from .schema import (
    DB_NAME,
    INDEX_READS,
    INSERT_READING,
    MIGRATIONS,
    OUTBOX_TABLES,
    PURGED,
    SCHEMA_VERSION,
    max_id,
    split_sql,
)

log = logging.getLogger("amic.store")

# Outbox tables read from another table: commands keeps each command's latest status
# only; command_log every status it went through (so "received" is forwarded too).
_OUTBOX_SOURCE: Final[dict[str, str]] = {"commands": "command_log"}


class StoreError(Exception):
    """The store cannot be opened or used (missing, not an amic store, too new)."""


def _as_ms(t: dt.datetime | int | float | None) -> int | None:
    if t is None:
        return None
    if isinstance(t, dt.datetime):
        return to_ms(t)
    return int(t)


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
                for statement in split_sql(MIGRATIONS[i]):
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
            before = max_id(conn, "readings")
            conn.executemany(INSERT_READING, reading_rows(readings))
            conn.execute(INDEX_READS, (before,))
            return max_id(conn, "readings")

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
                 "topup", "topup_write", "sync_archive")
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

    @property
    def wal_path(self) -> Path:
        """The database's write-ahead log (WAL mode), beside it."""
        return self.path.with_name(self.path.name + "-wal")

    def store_size_bytes(self) -> int:
        """Bytes on disk: the database file and its WAL."""
        total = 0
        for p in (self.path, self.wal_path):
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


def _check_table(table: str, allowed: Sequence[str] = OUTBOX_TABLES) -> None:
    if table not in allowed:
        raise ValueError(f"unknown table {table!r}: one of {', '.join(allowed)}")

"""The batching writer thread, and its disk-full policy (free-space checks, the reserve
file, deleting shipped rows to make room)."""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import itertools
import logging
import os
import shutil
import sqlite3
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from typing import Any, Final

from .records import CommandRecord, CycleRecord, DailyRecord, Event, Reading, to_ms
from .retention import has_shipped, purge_shipped, purge_steps
from .rows import command_row, cycle_row, daily_row, event_row, reading_rows
from .schema import (
    INDEX_READS,
    INSERT_COMMAND,
    INSERT_CYCLE,
    INSERT_DAILY,
    INSERT_EVENT,
    INSERT_READING,
    PURGED,
    max_id,
)
from .store import Store

log = logging.getLogger("amic.store")

ROOM_RECHECK_SECONDS: Final = 0.5  # how often a full, quiet store looks for room


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
        self._cap_pages = 0  # max_page_count as configured (the size cap, or SQLite's)
        self._floored = False  # max_page_count lowered to keep the WAL's room free

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
        self._cap_pages = int(conn.execute("PRAGMA max_page_count").fetchone()[0])
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
        elif self._floored:  # the file system has room again
            self._release_floor(conn)
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
        n = 0
        error: sqlite3.Error | None = None
        for chunk in (20_000, 2_000, 200):  # a smaller delete needs fewer pages of WAL
            try:
                n = purge_shipped(conn, chunk=chunk)
                break
            except sqlite3.Error as e:
                error = e
                self._truncate_wal(conn)
        else:
            self.room_failures += 1
            log.error("store: cannot delete shipped rows to make room: %s", error)
            return False
        self._truncate_wal(conn)
        self._keep_floor(conn)
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

    def _keep_floor(self, conn: sqlite3.Connection) -> None:
        """Once the store ran out of room: the database file may grow only while the file
        system keeps the WAL's budget free.  A store that filled the file system to the
        last byte could not delete a row again (a delete is written to the WAL first),
        and the reserve file is gone by then."""
        try:
            page = int(conn.execute("PRAGMA page_size").fetchone()[0])
            pages = int(conn.execute("PRAGMA page_count").fetchone()[0])
            free = shutil.disk_usage(self.store.path.parent).free
            with contextlib.suppress(FileNotFoundError):  # the WAL's pages are reused
                free += self.store.wal_path.stat().st_size
            grow = max(free - self._wal_budget, 0) // page
            limit = min(self._cap_pages, pages + grow)
            conn.execute(f"PRAGMA max_page_count = {max(limit, pages)}").fetchone()
            self._floored = True
        except (sqlite3.Error, OSError) as e:
            log.debug("store: cannot set the page limit: %s", e)

    def _release_floor(self, conn: sqlite3.Connection) -> None:
        with contextlib.suppress(sqlite3.Error):
            conn.execute(f"PRAGMA max_page_count = {self._cap_pages}").fetchone()
            self._floored = False

    def _keep_room(self, conn: sqlite3.Connection) -> None:
        """Once the store ran out of room: make room before it runs out again, so a
        store kept at its limit by a forwarder that keeps up raises no new episode."""
        with contextlib.suppress(OSError):
            if shutil.disk_usage(self.store.path.parent).free < self._wal_budget:
                self._truncate_wal(conn)  # a reader kept the WAL from starting over
        self._keep_floor(conn)
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
                before = max_id(conn, "readings") if kind == _READINGS else -1
                conn.executemany(*self._rows(kind, items, now_ms))
                if before >= 0:
                    conn.execute(INDEX_READS, (before,))
            conn.execute("COMMIT")
            return 0, 0
        before = max_id(conn, "readings")
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

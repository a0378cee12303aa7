"""Retention, and the emergency deletion of shipped rows when the store is full."""

from __future__ import annotations

import contextlib
import datetime as dt
import math
import sqlite3
from collections.abc import Iterator
from typing import Final

from .records import to_ms
from .schema import PURGED

DAY_MS: Final = 86_400_000


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

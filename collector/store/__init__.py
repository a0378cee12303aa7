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

Modules: :mod:`.schema` (tables, migrations, insert statements), :mod:`.rows` (records as
rows and back), :mod:`.store` (the :class:`Store`: connections, queries, maintenance),
:mod:`.retention` (purges), :mod:`.writer` (the writer thread and its disk-full policy).
"""

from __future__ import annotations

from .retention import DAY_MS, has_shipped, purge_shipped, purge_steps
from .rows import (
    Cursor,
    ReadingRow,
    StoredReading,
    command_row,
    cycle_row,
    daily_row,
    event_row,
    reading_rows,
)
from .schema import (
    DB_NAME,
    INDEX_READS,
    INSERT_COMMAND,
    INSERT_CYCLE,
    INSERT_DAILY,
    INSERT_EVENT,
    INSERT_READING,
    MIGRATIONS,
    OUTBOX_TABLES,
    PURGED,
    SCHEMA_VERSION,
    Table,
    max_id,
    split_sql,
)
from .store import Store, StoreError
from .writer import ROOM_RECHECK_SECONDS, CommitInfo, StoreWriter, WriterStats, is_full

__all__ = [
    "DAY_MS",
    "DB_NAME",
    "INDEX_READS",
    "INSERT_COMMAND",
    "INSERT_CYCLE",
    "INSERT_DAILY",
    "INSERT_EVENT",
    "INSERT_READING",
    "MIGRATIONS",
    "OUTBOX_TABLES",
    "PURGED",
    "ROOM_RECHECK_SECONDS",
    "SCHEMA_VERSION",
    "CommitInfo",
    "Cursor",
    "ReadingRow",
    "Store",
    "StoreError",
    "StoreWriter",
    "StoredReading",
    "Table",
    "WriterStats",
    "command_row",
    "cycle_row",
    "daily_row",
    "event_row",
    "has_shipped",
    "is_full",
    "max_id",
    "purge_shipped",
    "purge_steps",
    "reading_rows",
    "split_sql",
]

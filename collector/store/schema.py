"""The schema: tables, their migrations (one per version), the insert statements."""

from __future__ import annotations

import sqlite3
from typing import Final, Literal

DB_NAME: Final = "amic.db"
SCHEMA_VERSION: Final = 7

Table = Literal["readings", "events", "commands", "cycles"]
OUTBOX_TABLES: Final[tuple[str, ...]] = ("readings", "events", "commands", "cycles", "daily")
# The time column retention looks at, per purged table.
PURGED: Final[dict[str, str]] = {"readings": "ts", "events": "ts", "cycles": "started"}

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
    """
    -- Notifications (collector/notify): a message is committed here before any delivery
    -- attempt, and kept until delivered (or refused for good).  `key` is the message's
    -- idempotency key (its source row and channel): a source row becomes a message once,
    -- and receivers de-duplicate on it.  The recipient's phone is not stored: it is
    -- looked up in the ledger when the message is sent.
    CREATE TABLE notify_outbox (
        id INTEGER PRIMARY KEY AUTOINCREMENT,
        key TEXT NOT NULL UNIQUE,
        channel TEXT NOT NULL,     -- the channel's name in [notify]
        kind TEXT NOT NULL,        -- the event kind (or relay_tripped, relay_restored)
        meter TEXT,
        severity INTEGER NOT NULL,
        created INTEGER NOT NULL,  -- UTC epoch ms
        not_before INTEGER NOT NULL,  -- held until (quiet hours, rate limit, back-off)
        state TEXT NOT NULL DEFAULT 'pending',  -- pending, delivered, failed (for good)
        attempts INTEGER NOT NULL DEFAULT 0,
        done INTEGER,              -- when delivered or given up, UTC epoch ms
        error TEXT NOT NULL DEFAULT '',
        payload TEXT NOT NULL      -- JSON: the event
    );
    CREATE INDEX notify_outbox_due ON notify_outbox (state, not_before);
    CREATE INDEX notify_outbox_sent ON notify_outbox (channel, meter, done);
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


def max_id(conn: sqlite3.Connection, table: str) -> int:
    """The highest id of a table (0 when empty)."""
    return int(conn.execute(f"SELECT max(id) FROM {table}").fetchone()[0] or 0)


def split_sql(script: str) -> list[str]:
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

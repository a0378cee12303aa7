"""The notification outbox in the store (table ``notify_outbox``, schema version 7).

Messages come from stored rows: events, and the confirmed relay trips and restores of
``command_log``, read after this module's cursors (name :data:`CURSOR` in ``cursors``).
The new messages and the cursors' advance commit in one transaction, so a row becomes
its messages exactly once, across restarts.  Each message's ``key`` (source, row id,
channel) is its idempotency key.
"""

from __future__ import annotations

import datetime as dt
import json
import sqlite3
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any, Final

from collector.store import Store
from collector.store.records import to_ms

CURSOR: Final = "notify"  # the cursor name, on "events" and "commands"
RELAY_KINDS: Final[dict[str, tuple[str, int]]] = {
    # command kind -> (message kind, severity); a confirmed switching only
    "trip": ("relay_tripped", 2),
    "restore": ("relay_restored", 0),
}


@dataclass(frozen=True, slots=True)
class Source:
    """A stored row a message is made of: an event, or a relay switching."""

    key: str  # "event:<id>" or "command:<id>"
    kind: str
    meter: str | None
    bus: str | None
    severity: int
    ts: int  # UTC epoch ms
    value: float | None
    detail: str

    def payload(self) -> dict[str, Any]:
        return {"kind": self.kind, "ts": self.ts, "meter": self.meter, "bus": self.bus,
                "severity": self.severity, "value": self.value, "detail": self.detail,
                "source": self.key}


@dataclass(frozen=True, slots=True)
class Message:
    """A row of the outbox."""

    id: int
    key: str
    channel: str
    kind: str
    meter: str | None
    severity: int
    created: int
    attempts: int
    payload: dict[str, Any]


# A source -> the channels that take it (the rules); empty: no message.
Route = Callable[[Source], Iterable[str]]


def _now_ms(now: dt.datetime | None) -> int:
    return to_ms(now or dt.datetime.now(dt.UTC))


class Outbox:
    """The outbox over a connection of its own (one thread at a time uses it)."""

    def __init__(self, store: Store) -> None:
        self.store = store
        self.conn = store.connect(cache_mb=2)

    def close(self) -> None:
        self.store.release(self.conn)

    def _tx(self) -> _Tx:
        return _Tx(self.conn)

    # ---- from stored rows to messages -------------------------------------------------

    def start_cursors(self) -> None:
        """A first start notifies what happens from now on, not the store's history."""
        with self._tx() as c:
            for table, source in (("events", "events"), ("commands", "command_log")):
                c.execute("INSERT OR IGNORE INTO cursors (name, table_name, last_id, "
                          "updated) VALUES (?, ?, (SELECT coalesce(max(id), 0) FROM "
                          f"{source}), ?)", (CURSOR, table, _now_ms(None)))

    def pump(self, route: Route, *, limit: int = 1000,
             now: dt.datetime | None = None) -> int:
        """Turn stored rows after the cursors into messages; returns how many were made."""
        made = 0
        with self._tx() as c:
            ms = _now_ms(now)
            for table, source, read in (("events", "events", _event_source),
                                        ("commands", "command_log", _command_source)):
                last = int(c.execute("SELECT last_id FROM cursors WHERE name = ? AND "
                                     "table_name = ?", (CURSOR, table)).fetchone()[0])
                rows = c.execute(f"SELECT * FROM {source} WHERE id > ? ORDER BY id LIMIT ?",
                                 (last, limit)).fetchall()
                for row in rows:
                    src = read(row)
                    if src is None:
                        continue
                    for channel in route(src):
                        cur = c.execute(
                            "INSERT OR IGNORE INTO notify_outbox (key, channel, kind, meter, "
                            "severity, created, not_before, payload) VALUES "
                            "(?, ?, ?, ?, ?, ?, ?, ?)",
                            (f"{src.key}:{channel}", channel, src.kind, src.meter,
                             src.severity, ms, ms, json.dumps(src.payload(),
                                                              ensure_ascii=False)))
                        made += cur.rowcount
                if rows:
                    c.execute("UPDATE cursors SET last_id = ?, updated = ? WHERE name = ? "
                              "AND table_name = ?", (int(rows[-1]["id"]), ms, CURSOR, table))
        return made

    # ---- delivery ---------------------------------------------------------------------

    def due(self, now: dt.datetime | None = None, limit: int = 200) -> list[Message]:
        """Pending messages whose time has come, oldest first."""
        cur = self.conn.execute(
            "SELECT id, key, channel, kind, meter, severity, created, attempts, payload "
            "FROM notify_outbox WHERE state = 'pending' AND not_before <= ? ORDER BY id "
            "LIMIT ?", (_now_ms(now), limit))
        return [Message(int(r[0]), r[1], r[2], r[3], r[4], int(r[5]), int(r[6]), int(r[7]),
                        json.loads(r[8])) for r in cur]

    def delivered(self, msg_id: int, now: dt.datetime | None = None) -> None:
        with self._tx() as c:
            c.execute("UPDATE notify_outbox SET state = 'delivered', done = ?, "
                      "attempts = attempts + 1, error = '' WHERE id = ?",
                      (_now_ms(now), msg_id))

    def retry_at(self, msg_id: int, when: dt.datetime, error: str) -> None:
        """A failed attempt: kept, tried again at ``when``."""
        with self._tx() as c:
            c.execute("UPDATE notify_outbox SET attempts = attempts + 1, not_before = ?, "
                      "error = ? WHERE id = ?", (to_ms(when), error[:500], msg_id))

    def hold(self, msg_id: int, until: dt.datetime) -> None:
        """Not sent yet (quiet hours, rate limit): no attempt counted."""
        with self._tx() as c:
            c.execute("UPDATE notify_outbox SET not_before = ? WHERE id = ?",
                      (to_ms(until), msg_id))

    def give_up(self, msg_id: int, error: str, now: dt.datetime | None = None) -> None:
        """Refused for good (a 4xx answer, no phone in the ledger): kept, marked failed."""
        with self._tx() as c:
            c.execute("UPDATE notify_outbox SET state = 'failed', done = ?, "
                      "attempts = attempts + 1, error = ? WHERE id = ?",
                      (_now_ms(now), error[:500], msg_id))

    def sent_since(self, channel: str, meter: str, since: dt.datetime) -> list[int]:
        """When the messages of ``meter`` on ``channel`` delivered since ``since`` were
        delivered (epoch ms, oldest first): what a rate limit counts."""
        return [int(r[0]) for r in self.conn.execute(
            "SELECT done FROM notify_outbox WHERE channel = ? AND meter = ? AND "
            "state = 'delivered' AND done >= ? ORDER BY done", (channel, meter, to_ms(since)))]

    def counts(self) -> dict[str, int]:
        """Messages per state."""
        return {str(s): int(n) for s, n in self.conn.execute(
            "SELECT state, count(*) FROM notify_outbox GROUP BY state")}

    def rows(self, channel: str | None = None) -> list[sqlite3.Row]:
        """The outbox's rows (for ``amic`` views and tests), by id."""
        cur = self.conn.execute(
            "SELECT * FROM notify_outbox" + (" WHERE channel = ?" if channel else "") +
            " ORDER BY id", (channel,) if channel else ())
        cur.row_factory = sqlite3.Row
        return list(cur)


class _Tx:
    """``BEGIN IMMEDIATE`` ... ``COMMIT`` (or ``ROLLBACK``) on the outbox connection."""

    def __init__(self, conn: sqlite3.Connection) -> None:
        self.conn = conn

    def __enter__(self) -> sqlite3.Connection:
        self.conn.execute("BEGIN IMMEDIATE")
        self.conn.row_factory = sqlite3.Row
        return self.conn

    def __exit__(self, kind: type[BaseException] | None, *rest: object) -> None:
        self.conn.row_factory = None
        self.conn.execute("COMMIT" if kind is None else "ROLLBACK")


def _event_source(row: sqlite3.Row) -> Source | None:
    return Source(f"event:{row['id']}", row["kind"], row["meter"], row["bus"],
                  int(row["severity"]), int(row["ts"]), row["value"], row["detail"])


def _command_source(row: sqlite3.Row) -> Source | None:
    relay = RELAY_KINDS.get(row["kind"])
    if relay is None or row["status"] != "confirmed":
        return None
    try:
        detail = json.loads(row["detail"] or "{}")
    except ValueError:
        detail = {}
    reason = detail.get("reason", "") if isinstance(detail, dict) else ""
    return Source(f"command:{row['id']}", relay[0], row["meter"], None, relay[1],
                  int(row["updated"]), None, str(reason or ""))

"""Records as insert parameters, and stored rows as query results."""

from __future__ import annotations

import datetime as dt
import json
import sqlite3
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from typing import Any

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

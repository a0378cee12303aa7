"""What the collector stores: readings, events, commands and cycles.

Timestamps are UTC (aware datetimes, stored as epoch milliseconds); local time
appears only on display.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass, field

# Defined with the protocols (one vocabulary); the collector stores them as they are.
from protocols.readings import Quality as Quality
from protocols.readings import Reading as Reading

UTC = dt.UTC


def utcnow() -> dt.datetime:
    return dt.datetime.now(UTC)


def assume_utc(t: dt.datetime) -> dt.datetime:
    """``t`` aware: a naive datetime is taken as UTC (the store's time), an aware one is
    returned as it is."""
    return t if t.tzinfo is not None else t.replace(tzinfo=UTC)


def require_aware(t: dt.datetime) -> dt.datetime:
    """``t`` if it is aware; ValueError for a naive one, where guessing its zone could
    shift a local day (tariff windows, prepaid no-trip hours)."""
    if t.tzinfo is None or t.utcoffset() is None:
        raise ValueError(f"expected an aware datetime, got naive {t.isoformat()}")
    return t


def to_ms(t: dt.datetime) -> int:
    """Epoch milliseconds of an aware datetime (naive ones are taken as UTC)."""
    if t.tzinfo is None:
        t = t.replace(tzinfo=UTC)
    return int(t.timestamp() * 1000)


def from_ms(ms: int) -> dt.datetime:
    return dt.datetime.fromtimestamp(ms / 1000, UTC)


@dataclass(frozen=True, slots=True)
class Event:
    """Something that happened: a meter went dead, recovered, a config was reloaded..."""

    kind: str
    ts: dt.datetime
    meter: str | None = None
    bus: str | None = None
    severity: int = 1  # 0 info, 1 warning, 2 alarm
    value: float | None = None
    detail: str = ""


@dataclass(frozen=True, slots=True)
class CommandRecord:
    """One command sent to a meter and its outcome (never the password)."""

    command_id: str
    meter: str
    kind: str
    ts: dt.datetime
    operator: str = ""
    status: str = "queued"  # queued, sent, acknowledged, refused, failed, verified
    detail: str = ""


@dataclass(slots=True)
class CycleRecord:
    """One pass of a schedule over its due reads."""

    cycle_id: str
    schedule: str
    started: dt.datetime
    ended: dt.datetime | None = None
    planned: int = 0  # meter reads due
    succeeded: int = 0
    failed: int = 0
    per_bus: dict[str, tuple[int, int]] = field(default_factory=dict)  # bus -> (ok, total)
    per_area: dict[str, tuple[int, int]] = field(default_factory=dict)
    failed_meters: list[str] = field(default_factory=list)  # meter ids not read this cycle
    # Ended before every planned meter was tried (shutdown): the meters never tried are
    # neither succeeded nor failed, and the ratios cover the meters tried.
    cut: bool = False

    @property
    def success_rate(self) -> float:
        done = self.succeeded + self.failed
        return self.succeeded / done if done else 0.0


@dataclass(frozen=True, slots=True)
class DailyRecord:
    """A daily figure: line loss of an area, read success of an area or bus.

    ``day``: the local date; ``ts``: the local midnight starting it (UTC); ``fields``:
    numbers only (so every store keeps them).  A later record of the same (day, kind,
    key) replaces it (a recomputation once late readings arrived).
    """

    day: dt.date
    kind: str  # "lineloss", "success_area", "success_bus"
    key: str  # the area or bus
    ts: dt.datetime
    complete: bool
    fields: tuple[tuple[str, float], ...]
    detail: str = ""

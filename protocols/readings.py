"""One reading of one quantity of one meter: the record every protocol yields and every
store keeps.  Pure data: no I/O.

Timestamps are UTC (aware datetimes); local time appears only on display.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass
from enum import IntFlag


class Quality(IntFlag):
    """Quality flags of a reading (0 = good, read live from the meter)."""

    GOOD = 0
    ESTIMATED = 1  # not read from the meter
    BACKFILLED = 2  # read later from the meter's frozen data
    CLOCK_SUSPECT = 4  # the meter clock was off by more than the allowed drift
    BLOCK_READ = 8  # came from a block DI read


@dataclass(frozen=True, slots=True)
class Reading:
    """One value of one quantity of one meter.

    ``value`` is numeric (status words as their raw integer, dates as epoch seconds)
    so every store, including those that keep numeric fields only, keeps it.
    """

    meter: str
    quantity: str
    value: float
    unit: str
    ts: dt.datetime  # when the collector got it (UTC)
    meter_ts: dt.datetime | None = None  # the meter's own timestamp, when it gives one (UTC)
    quality: Quality = Quality.GOOD


__all__ = ["Quality", "Reading"]

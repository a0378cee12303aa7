"""Prepaid no-trip windows ([prepaid] no_trip_windows): parsed when the configuration is
loaded, used by the prepaid engine (collector/commands/prepaid.py)."""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass

_DAY_NAMES = ("mon", "tue", "wed", "thu", "fri", "sat", "sun")
_FULL_DAY_NAMES = ("monday", "tuesday", "wednesday", "thursday", "friday", "saturday",
                   "sunday")
_ALL_DAYS = frozenset(range(7))


@dataclass(frozen=True, slots=True)
class NoTripWindow:
    """A recurring local-time period in which nobody is tripped.

    ``days`` are the weekdays (0 = Monday) on which the window *starts*; a window
    crossing midnight (``start > end``) runs into the next morning.  ``start``/``end``
    ``None`` means the whole day.
    """

    text: str
    days: frozenset[int] = _ALL_DAYS
    start: dt.time | None = None
    end: dt.time | None = None

    def contains(self, local: dt.datetime) -> bool:
        """Whether the (local, wall-clock) time is inside the window."""
        wd = local.weekday()
        if self.start is None or self.end is None:
            return wd in self.days
        t = local.time().replace(tzinfo=None)
        if self.start < self.end:
            return self.start <= t < self.end and wd in self.days
        return (t >= self.start and wd in self.days) or (
            t < self.end and (wd - 1) % 7 in self.days
        )


def _parse_day(token: str, text: str) -> int:
    t = token.lower()
    for i, (short, full) in enumerate(zip(_DAY_NAMES, _FULL_DAY_NAMES, strict=True)):
        if t in (short, full):
            return i
    raise ValueError(f"no-trip window {text!r}: unknown weekday {token!r} "
                     f"(expected Mon, Tue, Wed, Thu, Fri, Sat or Sun)")


def _parse_days(token: str, text: str) -> frozenset[int]:
    first, sep, last = token.partition("-")
    a = _parse_day(first, text)
    b = _parse_day(last, text) if sep else a
    n = (b - a) % 7
    return frozenset((a + i) % 7 for i in range(n + 1))


def _parse_time(token: str, text: str) -> dt.time:
    hh, sep, mm = token.partition(":")
    if not (sep and hh.isdigit() and mm.isdigit() and len(mm) == 2 and 1 <= len(hh) <= 2):
        raise ValueError(f"no-trip window {text!r}: expected HH:MM, got {token!r}")
    h, m = int(hh), int(mm)
    if (h, m) == (24, 0):
        return dt.time(0, 0)
    if h > 23 or m > 59:
        raise ValueError(f"no-trip window {text!r}: no such time of day {token!r}")
    return dt.time(h, m)


def parse_window(text: str) -> NoTripWindow:
    """Parse a no-trip window; ValueError says what is wrong.

    Forms (weekdays Mon..Sun, case-insensitive, a range may wrap: ``Fri-Mon``)::

        "18:00-08:00"          every day, crossing midnight
        "Sat-Sun"              whole days
        "Mon-Fri 12:00-13:30"  those days (the day a window starts counts)
    """
    parts = text.split()
    days: frozenset[int] = _ALL_DAYS
    times: str | None = None
    if len(parts) == 1:
        if ":" in parts[0]:
            times = parts[0]
        else:
            days = _parse_days(parts[0], text)
    elif len(parts) == 2:
        days = _parse_days(parts[0], text)
        times = parts[1]
    else:
        raise ValueError(f"no-trip window {text!r}: expected \"HH:MM-HH:MM\", \"Sat-Sun\" "
                         f"or \"Mon-Fri HH:MM-HH:MM\"")
    if times is None:
        return NoTripWindow(text=text, days=days)
    a, sep, b = times.partition("-")
    if not sep:
        raise ValueError(f"no-trip window {text!r}: expected HH:MM-HH:MM, got {times!r}")
    start, end = _parse_time(a, text), _parse_time(b, text)
    if start == end:
        raise ValueError(f"no-trip window {text!r}: start and end are the same time "
                         f"(use a weekday range such as \"Mon-Sun\" for whole days)")
    return NoTripWindow(text=text, days=days, start=start, end=end)


__all__ = ["NoTripWindow", "parse_window"]

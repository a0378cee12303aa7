"""One way to show an instant in the CLI: local time with its UTC offset.

The store keeps UTC; tables show ``2026-12-04 18:03:05+08:00`` (this machine's zone,
``TZ``), JSON the same instant in ISO 8601 (``2026-12-04T18:03:05+08:00``).  The offset
makes every line unambiguous, across a DST change or a machine in another zone.
"""

from __future__ import annotations

import datetime as dt

from collector.store.records import assume_utc


def show_time(t: dt.datetime) -> str:
    """For tables: ``2026-12-04 18:03:05+08:00`` (a naive ``t`` is taken as UTC)."""
    return assume_utc(t).astimezone().isoformat(sep=" ", timespec="seconds")


def json_time(t: dt.datetime, timespec: str = "seconds") -> str:
    """For JSON: ``2026-12-04T18:03:05+08:00`` (a naive ``t`` is taken as UTC)."""
    return assume_utc(t).astimezone().isoformat(timespec=timespec)

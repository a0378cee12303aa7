"""InfluxDB line protocol, escaped and formatted in this one module.

``measurement,tag=value,... field=number,... timestamp``: :func:`escape_measurement` for
the measurement, :func:`escape_tag` for tag keys, tag values and field keys,
:func:`number` for every field value (a float, as the TSDB stores it), :func:`line` to put
them together.  :func:`sql_number` is the same number format as an SQLite expression, for
the forwarder's readings built by SQLite itself; it yields NULL where it cannot give the
very text of :func:`number`, and the caller converts those rows here.

Standard library only, so any process can import it.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Final

_TAG_ESCAPES: Final = str.maketrans({",": "\\,", "=": "\\=", " ": "\\ ", "\\": "\\\\",
                                     "\n": "\\n"})
# '=' needs no escape in a measurement: a backslash before it would become part of the name
_MEASUREMENT_ESCAPES: Final = str.maketrans({",": "\\,", " ": "\\ ", "\\": "\\\\",
                                             "\n": "\\n"})


def escape_tag(text: str) -> str:
    """A tag key, tag value or field key escaped (comma, equals, space, backslash,
    newline)."""
    return text.translate(_TAG_ESCAPES)


def escape_measurement(text: str) -> str:
    """A measurement name escaped (comma, space, backslash, newline)."""
    return text.translate(_MEASUREMENT_ESCAPES)


def number(value: float) -> str:
    """A field value: the shortest text giving back the same double (``220.1``,
    ``3.0``, ``1e-05``); ints are sent as floats, so a series keeps one type."""
    return repr(float(value))


def tags(pairs: Iterable[tuple[str, str | None]]) -> str:
    """``,k=v`` for each pair with a non-empty value (keys are given escaped)."""
    return "".join(f",{k}={escape_tag(v)}" for k, v in pairs if v)


def line(measurement: str, tag_text: str, field_text: str, ts: int) -> str:
    """One point: ``measurement`` (escaped here), ``tag_text`` as from :func:`tags`,
    ``field_text`` as ``k=number,...``, integer timestamp."""
    return f"{escape_measurement(measurement)}{tag_text} {field_text} {ts}"


# Why 15 digits: SQLite's printf (3.40) rounds the 16th and 17th digit wrongly now and
# then; 15 digits are exact, and when they give back the double they are repr's digits
# (any shorter text that does is the same number with the zeros stripped).  The '!' flag
# writes '220.0' as repr does.  Below 1e-4 repr switches to '1e-05', SQLite to '1.0e-05';
# from 1e15 on 15 digits cannot hold every double; those and the other values needing
# 16 or 17 digits give NULL.  SQLite keeps no negative zero, so 0 is '0.0'.
_SQL_NUMBER: Final = (
    "CASE WHEN {v} = 0 THEN '0.0' "
    "WHEN abs({v}) >= 1e-4 AND abs({v}) < 1e15 AND CAST(printf('%!.15g', {v}) AS REAL) = {v} "
    "THEN printf('%!.15g', {v}) END")


def sql_number(expr: str) -> str:
    """An SQLite expression of the text :func:`number` gives for the REAL ``expr``, or
    NULL where it cannot be sure to give that very text."""
    return "(" + _SQL_NUMBER.format(v=expr) + ")"


__all__ = ["escape_measurement", "escape_tag", "line", "number", "sql_number", "tags"]

"""InfluxDB line protocol, escaped and formatted in this one module.

``measurement,tag=value,... field=number,... timestamp``: :func:`escape_measurement` for
the measurement, :func:`escape_tag` for tag keys, tag values and field keys,
:func:`number` for every field value (a float, as the TSDB stores it), :func:`line` to put
them together; :func:`value_line` for a reading's line from its prepared head.
SQLite never writes a number: its printf gets the 16th and 17th digit wrong now and then
(3.40) and its text-to-real conversion is off by one unit in the last place at times, so
its lines could not be the same text, nor always the same double.

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


def value_line(head: str, value: float, ts: int) -> str:
    """``head`` (``measurement,tags field=``, escaped), the float ``value`` as
    :func:`number` writes it, the timestamp: a reading's line."""
    return f"{head}{float(value)!r} {ts}"  # number() inlined: once per reading


__all__ = ["escape_measurement", "escape_tag", "line", "number", "tags", "value_line"]

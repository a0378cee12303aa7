"""DL/T645-2007 event records: the last N records a meter keeps of each kind of event.

Each kind has a counter in the catalogue (see :data:`protocols.quantities.EVENT_COUNTERS`)
and up to ten records, ``record_di(kind, n)`` for the ``n``-th last (1 the latest).  A
record starts with the event's start time (YYMMDDhhmmss, meter local time), then, for
events that last, its end time (all zeros while the event goes on); the fields after
are kept by name.  A record of all-zero start is one the meter does not hold yet.

Layouts (DL/T645-2007 appendix A, as the public C implementation
bobyuxinyang/dlt645_2007 lays them out; relay records from the 2013 amendment, check):

==================  =============  =====  ==================================================
kind                DI (n = 1..10)  bytes  fields
==================  =============  =====  ==================================================
voltage_loss_X      0301 0P NN     131    start, end, energy increments total/A/B/C with
                                          V, I, P, Q, pf of each phase, Ah total/A/B/C
current_loss_X      030B 0P NN     115    as voltage loss without the Ah
power_reverse_X     030E 0P NN     115    as current loss
power_down          0311 00 NN     12     start, end
programming         0330 00 NN     50     time, operator, the first ten DIs written
meter_clear         0330 01 NN     106    time, operator, energies total/A/B/C before
cover_open          0330 0D NN     60     start, end, energies before and after
relay_trip          1D00 FF NN     34     time, operator, energies at the trip (check)
relay_close         1E00 FF NN     34     time, operator, energies at the close (check)
==================  =============  =====  ==================================================

(P: 01 phase A, 02 B, 03 C.)
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from ..quantities import EVENT_KINDS
from ._catalogue import DataItem, Format, Value, decode_value, encode_value
from ._errors import PayloadError, UnknownDataItem
from ._frame import Version

RECORDS_KEPT = 10
"""Records a meter keeps of each kind (DI0 01..0A)."""

_N = Format.NUMBER


def _f(name: str, fmt: Format, size: int, decimals: int = 0, signed: bool = False) -> DataItem:
    return DataItem(0, Version.V2007, name, fmt, size, decimals, signed)


def _energies(prefix: str) -> list[DataItem]:
    # increments during the event: forward, reverse active, combined reactive 1 and 2
    return [_f(f"{prefix}_{e}", _N, 4, 2)
            for e in ("forward_kwh", "reverse_kwh", "reactive1_kvarh", "reactive2_kvarh")]


def _quadrants(prefix: str) -> list[DataItem]:
    return [_f(f"{prefix}_forward_kwh", _N, 4, 2), _f(f"{prefix}_reverse_kwh", _N, 4, 2),
            *(_f(f"{prefix}_q{q}_kvarh", _N, 4, 2) for q in range(1, 5))]


def _factors(p: str) -> list[DataItem]:
    return [_f(f"voltage_{p}", _N, 2, 1), _f(f"current_{p}", _N, 3, 3, True),
            _f(f"power_active_{p}", _N, 3, 4, True), _f(f"power_reactive_{p}", _N, 3, 4, True),
            _f(f"power_factor_{p}", _N, 2, 3, True)]


_START = _f("start", Format.DATETIME6, 6)
_END = _f("end", Format.DATETIME6, 6)
_OPERATOR = _f("operator", Format.ADDRESS, 4)


def _phase_layout(ampere_hours: bool) -> tuple[DataItem, ...]:
    out = [_START, _END, *_energies("total")]
    for p in ("a", "b", "c"):
        out += _energies(p) + _factors(p)
    if ampere_hours:
        out += [_f(f"ah_{p}", _N, 4, 2) for p in ("total", "a", "b", "c")]
    return tuple(out)


@dataclass(frozen=True, slots=True)
class RecordLayout:
    """How one kind of record is addressed and laid out."""

    kind: str
    base: int  # the DI of record 0 (DI0 = n)
    fields: tuple[DataItem, ...]
    lasts: bool  # the second field is the end time

    @property
    def size(self) -> int:
        return sum(f.size for f in self.fields)

    def di(self, n: int) -> int:
        if isinstance(n, bool) or not 1 <= n <= RECORDS_KEPT:
            raise ValueError(f"event record {n!r}: 1 (the latest) to {RECORDS_KEPT}")
        return self.base | n


def _layouts() -> dict[str, RecordLayout]:
    out: dict[str, RecordLayout] = {}
    for event, di2, ah in (("voltage_loss", 0x01, True), ("current_loss", 0x0B, False),
                           ("power_reverse", 0x0E, False)):
        for i, p in enumerate(("a", "b", "c"), start=1):
            kind = f"{event}_{p}"
            out[kind] = RecordLayout(kind, 0x03000000 | (di2 << 16) | (i << 8),
                                     _phase_layout(ah), True)
    out["power_down"] = RecordLayout("power_down", 0x03110000, (_START, _END), True)
    out["programming"] = RecordLayout(
        "programming", 0x03300000,
        (_START, _OPERATOR, *(_f(f"di_{i}", Format.ADDRESS, 4) for i in range(1, 11))), False)
    out["meter_clear"] = RecordLayout(
        "meter_clear", 0x03300100,
        (_START, _OPERATOR, *(f for p in ("total", "a", "b", "c") for f in _quadrants(p))),
        False)
    out["cover_open"] = RecordLayout(
        "cover_open", 0x03300D00, (_START, _END, *_quadrants("before"), *_quadrants("after")),
        True)
    for kind, base in (("relay_trip", 0x1D00FF00), ("relay_close", 0x1E00FF00)):
        out[kind] = RecordLayout(kind, base, (_START, _OPERATOR, *_quadrants("at")), False)
    return out


LAYOUTS: dict[str, RecordLayout] = _layouts()
assert set(LAYOUTS) == set(EVENT_KINDS), "one record layout per event kind of the vocabulary"
_BY_BASE: dict[int, RecordLayout] = {r.base: r for r in LAYOUTS.values()}


@dataclass(frozen=True, slots=True)
class EventRecord:
    """One event record as the meter keeps it: ``start`` and ``end`` in meter local time
    (naive; ``end`` None while the event goes on or for events without one), ``n`` the
    record's place (1 the latest), ``fields`` the rest by name."""

    kind: str
    n: int
    start: dt.datetime
    end: dt.datetime | None = None
    fields: Mapping[str, Value] = field(default_factory=dict)

    def as_json(self) -> dict[str, Any]:
        from ._catalogue import value_to_json
        return {"kind": self.kind, "n": self.n, "start": self.start.isoformat(),
                "end": None if self.end is None else self.end.isoformat(),
                "fields": {k: value_to_json(v) for k, v in self.fields.items()}}


def record_di(kind: str, n: int = 1) -> int:
    """The DI of the ``n``-th last record of ``kind``: ``record_di("cover_open", 1)`` is
    ``0x03300D01``."""
    layout = LAYOUTS.get(kind)
    if layout is None:
        raise UnknownDataItem(f"{kind!r} is no DL/T645-2007 event record")
    return layout.di(n)


def record_of(di: int) -> tuple[RecordLayout, int] | None:
    """(layout, n) of an event record DI, None for any other DI."""
    n = di & 0xFF
    layout = _BY_BASE.get(di & ~0xFF)
    if layout is None or not 1 <= n <= RECORDS_KEPT:
        return None
    return layout, n


def decode_record(kind: str, n: int, data: bytes) -> EventRecord | None:
    """The record in ``data`` (value bytes, without +33H); None for an empty slot (start
    all zeros).  :class:`PayloadError` when the length or a field is wrong."""
    layout = LAYOUTS[kind]
    if len(data) != layout.size:
        raise PayloadError(f"event record {kind} {n}: {len(data)} bytes, expected "
                           f"{layout.size}")
    values: dict[str, Value | None] = {}
    pos = 0
    for f in layout.fields:
        chunk = data[pos:pos + f.size]
        pos += f.size
        if f.format is Format.DATETIME6 and not any(chunk):
            values[f.name] = None
        else:
            values[f.name] = decode_value(f, chunk)
    start = values.pop("start")
    if start is None:
        return None
    end = values.pop("end", None) if layout.lasts else None
    assert isinstance(start, dt.datetime) and (end is None or isinstance(end, dt.datetime))
    return EventRecord(kind, n, start, end,
                       {k: v for k, v in values.items() if v is not None})


def encode_record(record: EventRecord | None, kind: str | None = None) -> bytes:
    """The value bytes of ``record`` (None: an empty slot of ``kind``); fields missing
    from ``record.fields`` are zero."""
    layout = LAYOUTS[record.kind if record is not None else str(kind)]
    if record is None:
        return bytes(layout.size)
    given: dict[str, Any] = {**record.fields, "start": record.start, "end": record.end}
    out = b""
    for f in layout.fields:
        v = given.get(f.name)
        if v is None:
            out += bytes(f.size)
        elif f.format is Format.ADDRESS and isinstance(v, int):
            out += v.to_bytes(f.size, "little")
        else:
            out += encode_value(f, v)
    return out


__all__ = ["LAYOUTS", "RECORDS_KEPT", "EventRecord", "RecordLayout", "decode_record",
           "encode_record", "record_di", "record_of"]

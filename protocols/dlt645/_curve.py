"""DL/T645-2007 load records (负荷记录): the 0610xxxx curve DIs, read by given time and count.

Layout (the State Grid filing of the 2007 edition's 0610 block, "给定时间记录块"):

- request (11): ``DI0..DI3  NN  mm hh DD MM YY``: NN points (one BCD byte, 1-99) from
  the given start time (BCD, minute first on the wire, like every 645 time);
- reply (91, B1 when follow-up frames wait): ``DI0..DI3  mm hh DD MM YY  point1 .. pointN``:
  the time of the first point returned, then the points back to back in the DI's
  format; a point the meter did not record (powered down) is all ``FF`` bytes;
  the meter stops at its present, so a reply may hold fewer points than asked;
- a reply longer than one frame continues in follow-up frames (12 / 92, B2 while more
  wait): their bodies, joined after the first, are the rest of the same layout.

The points are :data:`CURVE_INTERVAL` apart (the meter's load-record interval,
04000A02; 15 minutes is the usual setting).  Where the filing is unclear (check): the
start time in the reply and FF for a missing point; the simulator does the same.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from decimal import Decimal

from ..quantities import QUANTITIES
from ._bcd import bcd_to_int, digits_to_bcd, int_to_bcd
from ._catalogue import DataItem, Format, decode_value, encode_value
from ._errors import PayloadError, UnknownDataItem
from ._frame import Version

CURVE_INTERVAL = dt.timedelta(minutes=15)
MAX_POINTS = 99  # NN is one BCD byte
_TIME_SIZE = 5
MISSING = 0xFF


@dataclass(frozen=True, slots=True)
class CurveItem:
    """One load-record DI: ``point`` is the format of one point (a number, or a block
    whose members are the quantities)."""

    di: int
    point: DataItem

    @property
    def name(self) -> str:
        return self.point.name

    @property
    def quantities(self) -> tuple[str, ...]:
        if self.point.format is Format.BLOCK:
            return tuple(m.name for m in self.point.members)
        return (self.point.name,)


@dataclass(frozen=True, slots=True)
class CurvePoint:
    """One point of a curve at ``at`` (meter local time, naive); ``values`` None: the
    meter recorded nothing then."""

    at: dt.datetime
    values: Mapping[str, Decimal] | None


def _number(name: str, size: int, decimals: int, signed: bool) -> DataItem:
    # DI 0: a point has no DI of its own; the CurveItem carries the load-record DI.
    return DataItem(0, Version.V2007, name, Format.NUMBER, size, decimals, signed,
                    unit=QUANTITIES[name].unit)


def _block(name: str, members: list[DataItem]) -> DataItem:
    return DataItem(0, Version.V2007, name, Format.BLOCK, sum(m.size for m in members),
                    members=tuple(members), unit=members[0].unit)


def _curve_items() -> tuple[CurveItem, ...]:
    out: list[CurveItem] = []

    def group(di1: int, prefix: str, size: int, decimals: int, signed: bool,
              phases: tuple[tuple[str, int], ...]) -> None:
        members = [_number(f"{prefix}_{p}", size, decimals, signed) for p, _ in phases]
        for m, (_, di0) in zip(members, phases, strict=True):
            out.append(CurveItem(0x06100000 | (di1 << 8) | di0, m))
        out.append(CurveItem(0x061000FF | (di1 << 8), _block(f"{prefix}_block", members)))

    abc = (("a", 1), ("b", 2), ("c", 3))
    group(0x01, "voltage", 2, 1, False, abc)
    group(0x02, "current", 3, 3, True, abc)
    group(0x03, "power_active", 3, 4, True, (("total", 0), *abc))
    group(0x04, "power_reactive", 3, 4, True, (("total", 0), *abc))
    group(0x05, "power_factor", 2, 3, True, (("total", 0), *abc))
    energies = [
        _number(name, 4, 2, name.startswith("energy_reactive"))
        for name in ("energy_active_forward_total", "energy_active_reverse_total",
                     "energy_reactive_combined1_total", "energy_reactive_combined2_total")
    ]
    for di0, m in enumerate(energies, start=1):
        out.append(CurveItem(0x06100600 | di0, m))
    out.append(CurveItem(0x061006FF, _block("energy_block", energies)))
    return tuple(out)


CURVE_ITEMS: tuple[CurveItem, ...] = _curve_items()
_BY_DI = {c.di: c for c in CURVE_ITEMS}
_BY_QUANTITY = {c.point.name: c for c in CURVE_ITEMS if c.point.format is not Format.BLOCK}
CURVE_QUANTITIES: frozenset[str] = frozenset(_BY_QUANTITY)
"""Quantities a DL/T645-2007 meter can keep a load curve of."""


def curve_item(di: int) -> CurveItem | None:
    """The load-record DI ``di`` (None: not one)."""
    return _BY_DI.get(di)


def curve_di(quantity: str) -> int:
    """The load-record DI of one quantity: ``curve_di("voltage_a")`` is ``0x06100101``."""
    item = _BY_QUANTITY.get(quantity)
    if item is None:
        raise UnknownDataItem(f"quantity {quantity!r} has no DL/T645-2007 load-record DI")
    return item.di


def _time_wire(when: dt.datetime) -> bytes:
    return digits_to_bcd(f"{when:%y%m%d%H%M}", _TIME_SIZE)


def _time_from(raw: bytes, what: str) -> dt.datetime:
    s = raw[::-1].hex()
    try:
        if not s.isdigit():
            raise ValueError(s)
        return dt.datetime(2000 + int(s[0:2]), int(s[2:4]), int(s[4:6]), int(s[6:8]),
                           int(s[8:10]))
    except ValueError:
        raise PayloadError(f"{what}: {s.upper()} is not a YYMMDDhhmm time") from None


def curve_request_extra(start: dt.datetime, count: int) -> bytes:
    """The bytes after the DI of a given-time read: NN, then the start time."""
    if not 1 <= count <= MAX_POINTS:
        raise PayloadError(f"load record count {count}: 1-{MAX_POINTS} points a request")
    return int_to_bcd(count, 1, what="load record count") + _time_wire(start)


def parse_curve_request(extra: bytes) -> tuple[dt.datetime, int]:
    """(start, count) of a given-time read's bytes after the DI."""
    if len(extra) != 1 + _TIME_SIZE:
        raise PayloadError(f"load record request: {len(extra)} bytes after the DI, "
                           f"expected {1 + _TIME_SIZE} (NN + mmhhDDMMYY)")
    count = bcd_to_int(extra[:1], what="load record count")
    if not 1 <= count <= MAX_POINTS:
        raise PayloadError(f"load record count {count}: 1-{MAX_POINTS}")
    return _time_from(extra[1:], "load record start"), count


def encode_curve(item: CurveItem, start: dt.datetime,
                 points: Sequence[Mapping[str, Decimal] | None]) -> bytes:
    """The reply body (after the DI) of ``points`` from ``start``; None is a gap."""
    size = item.point.size
    out = bytearray(_time_wire(start))
    for p in points:
        if p is None:
            out += bytes((MISSING,)) * size
        elif item.point.format is Format.BLOCK:
            out += encode_value(item.point, p)
        else:
            out += encode_value(item.point, p[item.name])
    return bytes(out)


def decode_curve(item: CurveItem, body: bytes,
                 interval: dt.timedelta = CURVE_INTERVAL) -> list[CurvePoint]:
    """The points of a reply body (every frame's body joined, DI and sequence removed)."""
    what = f"load record {item.di:08X}"
    if len(body) < _TIME_SIZE:
        raise PayloadError(f"{what}: {len(body)} bytes, no start time")
    start = _time_from(body[:_TIME_SIZE], what)
    data = body[_TIME_SIZE:]
    size = item.point.size
    if len(data) % size:
        raise PayloadError(f"{what}: {len(data)} bytes of points is not a multiple of "
                           f"{size}")
    out: list[CurvePoint] = []
    for k in range(len(data) // size):
        chunk = data[k * size:(k + 1) * size]
        at = start + k * interval
        if chunk == bytes((MISSING,)) * size:
            out.append(CurvePoint(at, None))
            continue
        value = decode_value(item.point, chunk)
        values = ({str(n): v for n, v in value.items()} if isinstance(value, dict)
                  else {item.name: value})
        if not all(isinstance(v, Decimal) for v in values.values()):  # pragma: no cover
            raise PayloadError(f"{what}: point {k} is not a number")
        out.append(CurvePoint(at, {n: v for n, v in values.items()
                                   if isinstance(v, Decimal)}))
    return out


__all__ = ["CURVE_INTERVAL", "CURVE_ITEMS", "CURVE_QUANTITIES", "MAX_POINTS", "CurveItem",
           "CurvePoint", "curve_di", "curve_item", "curve_request_extra", "decode_curve",
           "encode_curve", "parse_curve_request"]

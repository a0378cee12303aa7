"""DA (pn) and DT (Fn): bitmask per group of 8, several points or items per identifier."""

from __future__ import annotations

from collections.abc import Iterable

from ._errors import PayloadError

MAX_PN = 2040
MAX_FN = 248
ALL_POINTS = -1
"""The pn of DA ``FF 00``: every valid measuring point (p0 excluded), in requests."""


def encode_da(pns: Iterable[int]) -> bytes:
    """DA of one or more points of one group; p0 alone is ``00 00``."""
    points = sorted(set(pns))
    if points == [0]:
        return b"\x00\x00"
    if points == [ALL_POINTS]:
        return b"\xff\x00"
    if not points or points[0] < 1 or points[-1] > MAX_PN:
        raise ValueError(f"points {points}: p0 alone, or pn 1..{MAX_PN}")
    group = (points[0] - 1) // 8
    mask = 0
    for pn in points:
        if (pn - 1) // 8 != group:
            raise ValueError(f"points {points} are not in one group of 8")
        mask |= 1 << ((pn - 1) % 8)
    return bytes((mask, group + 1))


def decode_da(da1: int, da2: int) -> list[int]:
    """The points a DA names, ascending; ``[0]`` for p0, ``[ALL_POINTS]`` for ``FF 00``."""
    if da1 == 0 and da2 == 0:
        return [0]
    if da1 == 0xFF and da2 == 0:
        return [ALL_POINTS]
    if da2 == 0 or da1 == 0:
        raise ValueError(f"DA {da1:02X} {da2:02X} names no point")
    base = (da2 - 1) * 8
    return [base + i + 1 for i in range(8) if da1 >> i & 1]


def encode_dt(fns: Iterable[int]) -> bytes:
    """DT of one or more Fn of one group of 8."""
    items = sorted(set(fns))
    if not items or items[0] < 1 or items[-1] > MAX_FN:
        raise ValueError(f"Fn {items}: 1..{MAX_FN}")
    group = (items[0] - 1) // 8
    mask = 0
    for fn in items:
        if (fn - 1) // 8 != group:
            raise ValueError(f"Fn {items} are not in one group of 8")
        mask |= 1 << ((fn - 1) % 8)
    return bytes((mask, group))


def decode_dt(dt1: int, dt2: int) -> list[int]:
    """The Fn a DT names, ascending (empty when DT1 is 0)."""
    base = dt2 * 8
    return [base + i + 1 for i in range(8) if dt1 >> i & 1]


def encode_id(pn: int, fn: int) -> bytes:
    """DA DT of one point and one Fn."""
    return encode_da((pn,)) + encode_dt((fn,))


def decode_id(raw: bytes, offset: int = 0) -> tuple[list[int], list[int]]:
    """(points, Fn) of the 4 bytes DA DT at ``raw[offset:]``; PayloadError if it names none."""
    if len(raw) - offset < 4:
        raise PayloadError(offset, "data unit identifier truncated: DA DT needs 4 bytes")
    try:
        pns = decode_da(raw[offset], raw[offset + 1])
    except ValueError as e:
        raise PayloadError(offset, str(e)) from None
    fns = decode_dt(raw[offset + 2], raw[offset + 3])
    if not fns:
        raise PayloadError(offset + 2, "DT names no Fn")
    return pns, fns

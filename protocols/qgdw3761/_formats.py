"""Appendix A data formats (little-endian packed BCD) used by the Fn layouts.

Every decoder returns None for an absent value: all bytes ``EE`` (the standard's
"missing") and any non-BCD nibble (the ``EF`` fill some terminals send) alike.
Encoders write None as ``EE`` bytes, so an absent value round-trips.
"""

from __future__ import annotations

import datetime as dt
from decimal import Decimal
from typing import NamedTuple

ABSENT = 0xEE


def _to_bcd(n: int, size: int) -> bytearray:
    out = bytearray(size)
    for i in range(size):
        n, r = divmod(n, 100)
        out[i] = (r // 10) << 4 | r % 10
    return out


def is_absent(raw: bytes | bytearray) -> bool:
    return raw == b"\xee" * len(raw)


# The first hex digit of a signed value (bit 7 of its last byte is the sign):
# (negative, the digit with the sign masked off).
_SIGNED_TOP = {c: (int(c, 16) >= 8, str(int(c, 16) & 7)) for c in "0123456789abcdef"}


def _hex_number(s: str, decimals: int, signed: bool) -> Decimal | None:
    """The number of ``s``, the hex of its bytes most significant first.

    A hex digit a-f is a non-BCD nibble, so ``EE`` (absent) and ``EF`` fill both give
    None without a separate check.  Decimal of the digit string is exact, as is
    ``Decimal(n).scaleb(-decimals)`` for the at most 28 digits the fast path takes.
    """
    negative = False
    if signed:
        negative, top = _SIGNED_TOP[s[0]]
        s = top + s[1:]
    if not s.isdigit():
        return None
    if 0 < decimals < len(s) <= 28:
        value = Decimal(s[:-decimals] + "." + s[-decimals:])
    else:
        value = Decimal(int(s)).scaleb(-decimals)
    return -value if negative else value


def decode_number(raw: bytes | bytearray, decimals: int, *, signed: bool = False
                  ) -> Decimal | None:
    """A fixed-point BCD number; ``signed`` formats keep the sign in bit 7 of the last byte."""
    if not raw:
        return None  # no digits: as absent (all of nothing is EE)
    return _hex_number(raw[::-1].hex(), decimals, signed)


def decode_numbers(raw: bytes | bytearray, size: int, decimals: int, *,
                   signed: bool = False) -> tuple[Decimal | None, ...]:
    """``len(raw) // size`` numbers of ``size`` bytes each, in wire order."""
    # Reversing the whole block puts each value's bytes most significant first and the
    # values last to first: one hex() for all of them.
    s = raw[::-1].hex()
    w = 2 * size
    if not 0 < decimals < w <= 28:
        return tuple(_hex_number(s[i - w : i], decimals, signed)
                     for i in range(len(s), 0, -w))
    # Inline for the common case (a digit string, no sign bit): one Decimal per value
    # and no call; anything else (absent, fill, negative) goes the general way.
    cut = w - decimals
    out: list[Decimal | None] = []
    for i in range(len(s), 0, -w):
        v = s[i - w : i]
        if v.isdigit() and (not signed or v[0] < "8"):
            out.append(Decimal(v[:cut] + "." + v[cut:]))
        else:
            out.append(_hex_number(v, decimals, signed))
    return tuple(out)


def encode_number(value: Decimal | None, size: int, decimals: int, *, signed: bool = False,
                  top_digit_max: int = 9) -> bytes:
    """Wire bytes of ``value``; ValueError if it has too many digits or decimals."""
    if value is None:
        return bytes((ABSENT,)) * size
    scaled = value.scaleb(decimals)
    n = int(scaled)
    if scaled != n:
        raise ValueError(f"{value} has more than {decimals} decimals")
    negative = value.is_signed()
    if negative and not signed:
        raise ValueError(f"{value} is negative in an unsigned format")
    n = abs(n)
    limit = (top_digit_max + 1) * 10 ** (2 * size - 1)
    if n >= limit:
        raise ValueError(f"{value} does not fit {size} BCD bytes with {decimals} decimals")
    out = _to_bcd(n, size)
    if negative:
        out[-1] |= 0x80
    return bytes(out)


# ---- the numeric formats: (size, decimals, signed, top digit limit) --------------------

class NumberFormat(NamedTuple):
    name: str
    size: int
    decimals: int
    signed: bool = False
    top_digit_max: int = 9

    def decode(self, raw: bytes | bytearray) -> Decimal | None:
        return decode_number(raw, self.decimals, signed=self.signed)

    def decode_many(self, raw: bytes | bytearray) -> tuple[Decimal | None, ...]:
        """Consecutive values; ``len(raw)`` is a multiple of the size."""
        return decode_numbers(raw, self.size, self.decimals, signed=self.signed)

    def encode(self, value: Decimal | None) -> bytes:
        return encode_number(value, self.size, self.decimals, signed=self.signed,
                             top_digit_max=self.top_digit_max)


A5 = NumberFormat("A.5", 2, 1, True, 7)  # ±XXX.X (%)
A7 = NumberFormat("A.7", 2, 1)  # XXX.X V
A9 = NumberFormat("A.9", 3, 4, True, 7)  # ±XX.XXXX kW, kvar, kVA
A11 = NumberFormat("A.11", 4, 2)  # XXXXXX.XX kWh, kvarh
A13 = NumberFormat("A.13", 4, 4)  # XXXX.XXXX kWh, kvarh
A14 = NumberFormat("A.14", 5, 4)  # XXXXXX.XXXX kWh
A25 = NumberFormat("A.25", 3, 3, True, 7)  # ±XXX.XXX A


# ---- dates and times ------------------------------------------------------------------

def decode_a1(raw: bytes | bytearray) -> dt.datetime | None:
    """A.1, 6 bytes ``ss mm hh DD (wk<<5 | MM) YY``; the weekday is not kept."""
    if is_absent(raw):
        return None
    parts = _each(bytes((raw[0], raw[1], raw[2], raw[3], raw[4] & 0x1F, raw[5])))
    if parts is None:
        return None
    ss, mi, hh, dd, mo, yy = parts
    try:
        return dt.datetime(2000 + yy, mo, dd, hh, mi, ss)
    except ValueError:
        return None


def encode_a1(when: dt.datetime | None) -> bytes:
    """A.1 bytes of ``when``; the weekday is computed (1 = Monday)."""
    if when is None:
        return bytes((ABSENT,)) * 6
    _check_year(when.year)
    out = _to_bcd_each((when.second, when.minute, when.hour, when.day, when.month,
                        when.year - 2000))
    out[4] |= when.isoweekday() << 5
    return bytes(out)


def decode_a15(raw: bytes | bytearray) -> dt.datetime | None:
    """A.15, 5 bytes ``mm hh DD MM YY``."""
    s = raw.hex()  # EE (absent) and EF fill show as a-f: not digits
    if len(s) != 10 or not s.isdigit():
        return _datetime5(_each(raw))
    try:
        return dt.datetime(2000 + int(s[8:]), int(s[6:8]), int(s[4:6]), int(s[2:4]),
                           int(s[:2]))
    except ValueError:
        return None


def _datetime5(parts: list[int] | None) -> dt.datetime | None:
    if parts is None:
        return None
    mi, hh, dd, mo, yy = parts
    try:
        return dt.datetime(2000 + yy, mo, dd, hh, mi)
    except ValueError:
        return None


def encode_a15(when: dt.datetime | None) -> bytes:
    if when is None:
        return bytes((ABSENT,)) * 5
    _check_year(when.year)
    if when.second or when.microsecond:
        raise ValueError(f"{when} has seconds; A.15 holds minutes")
    return bytes(_to_bcd_each((when.minute, when.hour, when.day, when.month,
                               when.year - 2000)))


def decode_a20(raw: bytes | bytearray) -> dt.date | None:
    """A.20, 3 bytes ``DD MM YY``."""
    parts = _each(raw)
    if parts is None:
        return None
    dd, mo, yy = parts
    try:
        return dt.date(2000 + yy, mo, dd)
    except ValueError:
        return None


def encode_a20(day: dt.date | None) -> bytes:
    if day is None:
        return bytes((ABSENT,)) * 3
    _check_year(day.year)
    return bytes(_to_bcd_each((day.day, day.month, day.year - 2000)))


def decode_a21(raw: bytes | bytearray) -> dt.date | None:
    """A.21, 2 bytes ``MM YY``, as the first day of that month."""
    parts = _each(raw)
    if parts is None:
        return None
    mo, yy = parts
    try:
        return dt.date(2000 + yy, mo, 1)
    except ValueError:
        return None


def encode_a21(month: dt.date | None) -> bytes:
    if month is None:
        return bytes((ABSENT,)) * 2
    _check_year(month.year)
    if month.day != 1:
        raise ValueError(f"{month}: a month (A.21) is given as its first day")
    return bytes(_to_bcd_each((month.month, month.year - 2000)))


def decode_a12(raw: bytes | bytearray) -> str | None:
    """A.12, a 12-digit address (like DL/T645's), as text."""
    if is_absent(raw):
        return None
    return bytes(raw[::-1]).hex().upper()


def encode_a12(address: str | None) -> bytes:
    if address is None:
        return bytes((ABSENT,)) * 6
    if len(address) != 12:
        raise ValueError(f"address {address!r}: expected 12 digits")
    return bytes.fromhex(address)[::-1]


def decode_bin(raw: bytes | bytearray) -> int | None:
    """Little-endian binary; all ``EE`` is absent."""
    if is_absent(raw):
        return None
    return int.from_bytes(raw, "little")


def encode_bin(value: int | None, size: int) -> bytes:
    if value is None:
        return bytes((ABSENT,)) * size
    return value.to_bytes(size, "little")


def decode_ascii(raw: bytes | bytearray) -> str:
    return bytes(raw).decode("latin-1")


def encode_ascii(text: str, size: int) -> bytes:
    raw = text.encode("latin-1")
    if len(raw) != size:
        raise ValueError(f"{text!r}: expected {size} characters")
    return raw


def _each(raw: bytes | bytearray) -> list[int] | None:
    """The two-digit BCD value of each byte; None if absent or a nibble is not 0-9."""
    s = raw.hex()  # EE (absent) and EF fill show as a-f: not digits
    if not s or not s.isdigit():
        return None
    return [int(s[i : i + 2]) for i in range(0, len(s), 2)]


def _to_bcd_each(values: tuple[int, ...]) -> bytearray:
    return bytearray((v // 10) << 4 | v % 10 for v in values)


def _check_year(year: int) -> None:
    if not 2000 <= year <= 2099:
        raise ValueError(f"year {year}: the formats hold 2000-2099")

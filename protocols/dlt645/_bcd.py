"""BCD helpers: DL/T645 puts every number low byte first, two digits a byte."""

from __future__ import annotations

from decimal import Decimal

from ._errors import PayloadError

# Data bytes travel with +33H added; translate() does the whole field in C.
PLUS_33 = bytes((i + 0x33) & 0xFF for i in range(256))
MINUS_33 = bytes((i - 0x33) & 0xFF for i in range(256))


def add_33(data: bytes) -> bytes:
    return data.translate(PLUS_33)


def sub_33(data: bytes) -> bytes:
    return data.translate(MINUS_33)


def bcd_digits(data: bytes) -> str:
    """Digits of a low-byte-first BCD field, most significant first; A-F kept for wildcards."""
    return data[::-1].hex().upper()


def digits_to_bcd(digits: str, size: int) -> bytes:
    """Inverse of :func:`bcd_digits`: ``digits`` is left-padded to ``size`` bytes."""
    if len(digits) > size * 2:
        raise PayloadError(f"{digits!r} does not fit in {size} BCD bytes")
    return bytes.fromhex(digits.rjust(size * 2, "0"))[::-1]


def bcd_to_int(data: bytes, *, what: str = "value") -> int:
    s = data[::-1].hex()
    if not s.isdigit():
        raise PayloadError(f"{what}: {s.upper()} is not BCD")
    return int(s)


def int_to_bcd(value: int, size: int, *, what: str = "value") -> bytes:
    if value < 0 or value >= 10 ** (size * 2):
        raise PayloadError(f"{what}: {value} does not fit in {size} BCD bytes")
    return bytes.fromhex(f"{value:0{size * 2}d}")[::-1]


def decode_number(data: bytes, decimals: int, signed: bool, *, what: str = "value") -> Decimal:
    """A BCD number; for signed formats bit 7 of the most significant byte is the sign."""
    negative = signed and bool(data) and data[-1] >= 0x80
    if negative:
        data = data[:-1] + bytes((data[-1] & 0x7F,))
    s = data[::-1].hex()
    if not s.isdigit():
        raise PayloadError(f"{what}: {s.upper()} is not BCD")
    if decimals:
        s = f"{s[:-decimals]}.{s[-decimals:]}"
    return Decimal("-" + s) if negative else Decimal(s)


def encode_number(
    value: Decimal | int | float | str,
    size: int,
    decimals: int,
    signed: bool,
    *,
    what: str = "value",
) -> bytes:
    d = Decimal(str(value)) if not isinstance(value, Decimal) else value
    scaled = d.scaleb(decimals).to_integral_value()
    negative = scaled < 0
    if negative and not signed:
        raise PayloadError(f"{what}: {value} is negative but the format is unsigned")
    magnitude = int(-scaled if negative else scaled)
    # The sign bit takes the top of the most significant digit, leaving it 0-7.
    limit = 8 * 10 ** (size * 2 - 1) if signed else 10 ** (size * 2)
    if magnitude >= limit:
        raise PayloadError(f"{what}: {value} does not fit in {size} BCD bytes")
    raw = bytearray(int_to_bcd(magnitude, size, what=what))
    if negative:
        raw[-1] |= 0x80
    return bytes(raw)

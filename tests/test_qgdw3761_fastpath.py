"""The fast data-format decoders equal a plain nibble-by-nibble reading of the bytes.

The reference functions below are the straightforward Appendix A reading (the codec's
first implementation): absent when every byte is EE, None for any non-BCD nibble.
"""

from __future__ import annotations

import datetime as dt
from decimal import Decimal

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from protocols.qgdw3761 import (
    ActiveEnergy,
    DataUnit,
    Direction,
    Frame,
    FrameError,
    PayloadError,
    PresentValues,
    build_frame,
    decode_units,
    encode_units,
    parse_frame,
)
from protocols.qgdw3761 import _formats as fmt

FORMATS = [fmt.A5, fmt.A7, fmt.A9, fmt.A11, fmt.A13, fmt.A14, fmt.A25]

# bytes a terminal may send: BCD, EE (absent), EF fill, anything
wire_byte = st.one_of(st.sampled_from([0x00, 0x09, 0x10, 0x99, 0xEE, 0xEF, 0x80, 0xF9]),
                      st.integers(0, 255))


def blob(size: int) -> st.SearchStrategy[bytes]:
    return st.one_of(st.lists(wire_byte, min_size=size, max_size=size).map(bytes),
                     st.sampled_from([b"\xee" * size, b"\xef" * size]))


def ref_digits(raw: bytes, top_mask: int = 0xFF) -> int | None:
    n = 0
    for i in range(len(raw) - 1, -1, -1):
        b = raw[i] & top_mask if i == len(raw) - 1 else raw[i]
        hi, lo = b >> 4, b & 0x0F
        if hi > 9 or lo > 9:
            return None
        n = n * 100 + hi * 10 + lo
    return n


def ref_number(raw: bytes, decimals: int, signed: bool) -> Decimal | None:
    if all(b == 0xEE for b in raw):
        return None
    n = ref_digits(raw, 0x7F if signed else 0xFF)
    if n is None:
        return None
    value = Decimal(n).scaleb(-decimals)
    return -value if signed and raw[-1] & 0x80 else value


def ref_each(raw: bytes) -> list[int] | None:
    if all(b == 0xEE for b in raw):
        return None
    out = []
    for b in raw:
        if b >> 4 > 9 or b & 0x0F > 9:
            return None
        out.append((b >> 4) * 10 + (b & 0x0F))
    return out


def same(a: Decimal | None, b: Decimal | None) -> bool:
    """Equal and written alike: sign, digits and exponent (0.10 is not 0.1)."""
    return a is b is None or (a is not None and b is not None
                               and a.as_tuple() == b.as_tuple())


@settings(max_examples=300)
@given(data=st.data(), form=st.sampled_from(FORMATS))
def test_number_formats_equal_the_reference(data: st.DataObject,
                                            form: fmt.NumberFormat) -> None:
    raw = data.draw(blob(form.size))
    assert same(form.decode(raw), ref_number(raw, form.decimals, form.signed))
    assert same(form.decode(bytearray(raw)), ref_number(raw, form.decimals, form.signed))


@settings(max_examples=300)
@given(data=st.data(), form=st.sampled_from(FORMATS), count=st.integers(1, 12))
def test_a_block_of_values_equals_one_at_a_time(data: st.DataObject, form: fmt.NumberFormat,
                                                count: int) -> None:
    parts = [data.draw(blob(form.size)) for _ in range(count)]
    got = form.decode_many(b"".join(parts))
    assert len(got) == count
    for value, raw in zip(got, parts, strict=True):
        assert same(value, ref_number(raw, form.decimals, form.signed))


@settings(max_examples=200)
@given(raw=st.binary(min_size=0, max_size=16), decimals=st.integers(0, 12),
       signed=st.booleans())
def test_decode_number_any_size_and_scale(raw: bytes, decimals: int, signed: bool) -> None:
    want = None if not raw else ref_number(raw, decimals, signed)
    assert same(fmt.decode_number(raw, decimals, signed=signed), want)


def ref_datetime(parts: list[int] | None, *, seconds: bool) -> dt.datetime | None:
    if parts is None:
        return None
    if seconds:
        ss, mi, hh, dd, mo, yy = parts
    else:
        ss, (mi, hh, dd, mo, yy) = 0, parts
    try:
        return dt.datetime(2000 + yy, mo, dd, hh, mi, ss)
    except ValueError:
        return None


def ref_date(parts: list[int] | None, day: bool) -> dt.date | None:
    if parts is None:
        return None
    dd, mo, yy = parts if day else (1, *parts)
    try:
        return dt.date(2000 + yy, mo, dd)
    except ValueError:
        return None


date_byte = st.one_of(wire_byte, st.sampled_from([0x01, 0x12, 0x24, 0x28, 0x31, 0x59]))


def date_blob(size: int) -> st.SearchStrategy[bytes]:
    return st.one_of(st.lists(date_byte, min_size=size, max_size=size).map(bytes),
                     st.sampled_from([b"\xee" * size, b"\xef" * size]))


@settings(max_examples=300)
@given(a15=date_blob(5), a20=date_blob(3), a21=date_blob(2), a1=date_blob(6))
def test_dates_equal_the_reference(a15: bytes, a20: bytes, a21: bytes, a1: bytes) -> None:
    assert fmt.decode_a15(a15) == ref_datetime(ref_each(a15), seconds=False)
    assert fmt.decode_a20(a20) == ref_date(ref_each(a20), True)
    assert fmt.decode_a21(a21) == ref_date(ref_each(a21), False)
    masked = ref_each(bytes((*a1[:4], a1[4] & 0x1F, a1[5])))
    want = None if a1 == b"\xee" * 6 else ref_datetime(masked, seconds=True)
    assert fmt.decode_a1(a1) == want


@given(raw=st.binary(max_size=8))
def test_is_absent_means_every_byte_ee(raw: bytes) -> None:
    assert fmt.is_absent(raw) == all(b == 0xEE for b in raw)
    assert fmt.is_absent(b"\xee" * len(raw))


def test_known_values_of_the_fast_path() -> None:
    """A sign bit on zero gives +0 as before; EF fill in one tariff spares the others."""
    assert same(fmt.A9.decode(bytes.fromhex("000080")), Decimal("0.0000"))
    assert fmt.A9.decode(bytes.fromhex("452301")) == Decimal("1.2345")
    assert fmt.A9.decode(bytes.fromhex("452381")) == Decimal("-1.2345")
    assert fmt.A14.decode_many(bytes.fromhex("3412000000" "efefefefef" "eeeeeeeeee")) == (
        Decimal("0.1234"), None, None)


def _f25_units(when: dt.datetime) -> bytes:
    d = Decimal
    pv = PresentValues(when, d("-1.2345"), None, d("0"), d("79.9999"), d("0.3"), None,
                       None, None, d("0.95"), d("-0.5"), None, None, d("220.1"), None,
                       d("999.9"), d("-5.123"), None, d("0"), d("1"), d("-0.0001"), None,
                       None, None)
    return encode_units(0x0C, Direction.UP, [DataUnit(3, 25, pv),
                                             DataUnit(3, 129, ActiveEnergy(when, (
                                                 d("1.5"), None, d("999999.9999"))))])


def test_f25_and_f129_values_round_trip_through_a_frame() -> None:
    when = dt.datetime(2024, 5, 6, 10, 15)
    units = _f25_units(when)
    frame = parse_frame(build_frame(Frame(0x88, "4403", 7, 0, 0x0C, 0x60, units)))
    got = decode_units(frame)
    assert [(u.pn, u.fn) for u in got if isinstance(u, DataUnit)] == [(3, 25), (3, 129)]
    pv, energy = (u.value for u in got if isinstance(u, DataUnit))
    assert pv.power_factor_total == Decimal("0.95") and pv.read_time == when
    assert energy.values == (Decimal("1.5"), None, Decimal("999999.9999"))


@pytest.mark.parametrize("cut", [1, 3, 4, 20, 60])
def test_a_cut_f25_names_the_offset_of_the_value_cut_short(cut: int) -> None:
    """The error offset is where the truncated value starts, as one value at a time."""
    units = _f25_units(dt.datetime(2024, 5, 6, 10, 15))
    f25_len = 4 + 5 + 4 * 3 * 2 + 4 * 2 + 3 * 2 + 4 * 3 + 4 * 3
    short = units[: f25_len - cut]
    frame = Frame(0x88, "4403", 7, 0, 0x0C, 0x60, short)
    with pytest.raises(PayloadError) as e:
        decode_units(frame, base=100)
    # the value sizes of F25 after DA DT (4) and the A.15 time (5)
    sizes = [3] * 8 + [2] * 4 + [2] * 3 + [3] * 4 + [3] * 4
    start, left = 9, len(short)
    for size in sizes:
        if start + size > left:
            break
        start += size
    assert e.value.offset == 100 + start


K1 = bytes.fromhex("683A003A0068E94924455800027000000100090170 16".replace(" ", ""))
F25 = build_frame(Frame(0x88, "4403", 7, 0, 0x0C, 0x60,
                        _f25_units(dt.datetime(2024, 5, 6, 10, 15))))


def _outcome(raw: bytes | bytearray, compiled: bool) -> object:
    try:
        f = parse_frame(raw, compiled=compiled)  # type: ignore[arg-type]
    except FrameError as e:
        return ("error", e.offset, e.problem)
    return (f, type(f.units), type(f.pw))


@settings(max_examples=400)
@given(base=st.sampled_from([K1, F25]), data=st.data(), as_array=st.booleans())
def test_the_struct_frame_path_equals_the_construct_one(base: bytes, data: st.DataObject,
                                                        as_array: bool) -> None:
    """Any byte changed, cut or appended: the same Frame or the same FrameError."""
    raw = bytearray(base)
    for _ in range(data.draw(st.integers(0, 3))):
        raw[data.draw(st.integers(0, len(raw) - 1))] = data.draw(wire_byte)
    raw = raw[: data.draw(st.integers(1, len(raw) + 2))] + data.draw(st.binary(max_size=2))
    wire = raw if as_array else bytes(raw)
    assert _outcome(wire, True) == _outcome(wire, False)


def test_the_struct_frame_path_reads_every_field() -> None:
    f = parse_frame(K1)
    assert (f.control, f.a1, f.a2, f.a3, f.afn, f.seq) == (0xE9, "2449", 0x5845, 0, 2, 0x70)
    assert (f.units, f.pw, f.ec, f.tp) == (b"\x00\x00\x01\x00", None, (9, 1), None)


def test_a_repeated_identifier_decodes_alike_and_a_bad_one_always_raises() -> None:
    """DA/DT are remembered between frames: later frames get the same points, and a DA
    naming no point still raises each time (it is never remembered)."""
    frame = parse_frame(F25)
    first, again = decode_units(frame), decode_units(frame)
    assert first == again and [u.pn for u in first if isinstance(u, DataUnit)] == [3, 3]
    bad = Frame(0x88, "4403", 7, 0, 0x0C, 0x60, b"\x00\x01\x01\x03")  # DA1 0: no point
    for _ in range(2):
        with pytest.raises(PayloadError) as e:
            decode_units(bad)
        assert "names no point" in e.value.problem

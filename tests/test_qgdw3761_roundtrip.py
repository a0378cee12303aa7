"""Hypothesis: every Fn layout builds and parses back equal; whole frames too."""

from __future__ import annotations

import datetime as dt
from decimal import Decimal
from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st

from protocols.qgdw3761 import (
    REGISTRY,
    ActiveEnergy,
    ArchiveQuery,
    CommParams,
    Curve,
    CurveTag,
    DailySupply,
    DataUnit,
    Direction,
    EnergyReadings,
    Erc1,
    Erc3,
    Erc14,
    EventQuery,
    EventRecord,
    EventRecords,
    ForwardReply,
    ForwardRequest,
    Frame,
    FrozenActiveEnergy,
    FrozenEnergy,
    Heartbeat,
    ItemResult,
    ItemResults,
    MeterArchive,
    MeterEntry,
    PresentValues,
    TerminalVersion,
    TimeTag,
    build_frame,
    decode_units,
    encode_units,
    parse_frame,
)
from protocols.qgdw3761._formats import A5, A7, A9, A11, A13, A14, A25, NumberFormat


def number(form: NumberFormat) -> st.SearchStrategy[Decimal | None]:
    top = (form.top_digit_max + 1) * 10 ** (2 * form.size - 1) - 1
    mag = st.integers(0, top).map(lambda n: Decimal(n).scaleb(-form.decimals))
    signed = st.tuples(mag, st.booleans()).map(lambda t: -t[0] if t[1] else t[0])
    return st.none() | (signed if form.signed else mag)


def tariffs(form: NumberFormat, m: int) -> st.SearchStrategy[tuple[Decimal | None, ...]]:
    return st.tuples(*[number(form)] * (m + 1))


datetimes = st.datetimes(dt.datetime(2000, 1, 1), dt.datetime(2099, 12, 31, 23, 59, 59)).map(
    lambda d: d.replace(microsecond=0))
minutes = st.none() | datetimes.map(lambda d: d.replace(second=0))
days = st.none() | st.dates(dt.date(2000, 1, 1), dt.date(2099, 12, 31))
months = days.map(lambda d: d and d.replace(day=1))
byte = st.integers(0, 255)
ascii_text = st.text(st.characters(min_codepoint=0x20, max_codepoint=0x7E), min_size=1,
                     max_size=1)
address = st.integers(0, 10**12 - 1).map(lambda n: f"{n:012d}")
points = st.integers(1, 2040)
fns = st.integers(1, 248)


def fixed_text(n: int) -> st.SearchStrategy[str]:
    return st.lists(ascii_text, min_size=n, max_size=n).map("".join)


def energy(reverse: bool) -> st.SearchStrategy[EnergyReadings]:
    return st.integers(0, 12).flatmap(lambda m: st.builds(
        EnergyReadings, minutes, tariffs(A14, m), tariffs(A11, m), tariffs(A11, m),
        tariffs(A11, m), st.just(reverse)))


def frozen(monthly: bool) -> st.SearchStrategy[FrozenEnergy]:
    return st.integers(0, 12).flatmap(lambda m: st.builds(
        FrozenEnergy, months if monthly else days, minutes, tariffs(A14, m), tariffs(A11, m),
        tariffs(A11, m), tariffs(A11, m), st.just(monthly)))


entry = st.builds(
    MeterEntry, serial=st.integers(0, 0xFFFF), pn=st.integers(0, 2040), port=st.integers(0, 31),
    address=address, protocol=byte, baud=st.sampled_from((0, 600, 1200, 2400, 4800, 7200,
                                                          9600, 19200)),
    password=st.binary(min_size=6, max_size=6), tariffs=st.integers(0, 63),
    integer_digits=st.integers(4, 7), decimal_digits=st.integers(1, 4), collector=address,
    major_class=st.integers(0, 15), minor_class=st.integers(0, 15))
item = st.builds(ItemResult, points.map(lambda p: (p,)), fns.map(lambda f: (f,)), byte)
ident = st.tuples(points.map(lambda p: (p,)), fns.map(lambda f: (f,)))
curve_tag = st.builds(CurveTag, minutes, st.sampled_from((1, 2, 3, 254, 255)),
                      st.integers(0, 96))
erc = st.one_of(
    st.builds(EventRecord, st.just(1), st.builds(Erc1, minutes, byte, fixed_text(4),
                                                 fixed_text(4))),
    st.builds(EventRecord, st.just(3), st.builds(Erc3, minutes, byte, st.lists(
        ident, max_size=8).map(tuple))),
    st.builds(EventRecord, st.just(14), st.builds(Erc14, minutes, minutes,
                                                  st.binary(max_size=1))),
    st.builds(EventRecord, st.integers(20, 60), st.binary(max_size=30)),
)


def events() -> st.SearchStrategy[EventRecords]:
    return st.tuples(byte, byte, byte, st.lists(erc, max_size=5)).map(
        lambda t: EventRecords(t[0], t[1], t[2], (t[2] + len(t[3])) % 256, tuple(t[3])))


NONE: st.SearchStrategy[Any] = st.none()
D, U = Direction.DOWN, Direction.UP
STRATEGIES: dict[tuple[int, int, Direction], st.SearchStrategy[Any]] = {
    **{(0x00, fn, d): NONE for fn in (1, 2) for d in (D, U)},
    **{(0x00, 3, d): st.builds(ItemResults, byte, st.lists(item, max_size=6).map(tuple))
       for d in (D, U)},
    **{(0x01, fn, D): NONE for fn in (1, 2, 3, 4)},
    **{(0x02, fn, d): st.none() | st.binary(min_size=1, max_size=8) for fn in (1, 2)
       for d in (D, U)},
    **{(0x02, 3, d): st.none() | st.builds(Heartbeat, st.none() | datetimes) for d in (D, U)},
    (0x04, 1, D): st.builds(CommParams, byte, byte, st.integers(0, 0xFFF), st.integers(0, 3),
                            byte, byte),
    (0x04, 10, D): st.lists(entry, max_size=4).map(lambda e: MeterArchive(tuple(e))),
    (0x05, 31, D): st.none() | datetimes,
    (0x09, 1, D): NONE,
    (0x09, 1, U): st.builds(TerminalVersion, fixed_text(4), fixed_text(8), fixed_text(4), days,
                            fixed_text(11), st.none() | fixed_text(4), fixed_text(4), days),
    (0x0A, 1, D): NONE,
    (0x0A, 1, U): st.builds(CommParams, byte, byte, st.integers(0, 0xFFF), st.integers(0, 3),
                            byte, byte),
    (0x0A, 10, D): st.lists(st.integers(0, 0xFFFF), max_size=10).map(
        lambda s: ArchiveQuery(tuple(s))),
    (0x0A, 10, U): st.lists(entry, max_size=4).map(lambda e: MeterArchive(tuple(e))),
    **{(0x0C, fn, D): NONE for fn in (2, 25, 33, 34, 129)},
    (0x0C, 2, U): st.none() | datetimes,
    (0x0C, 25, U): st.builds(PresentValues, minutes, *[number(A9)] * 8, *[
        number(A5).map(lambda v: None if v is None else v / 100)] * 4, *[number(A7)] * 3,
        *[number(A25)] * 4, *[number(A9)] * 4),
    (0x0C, 33, U): energy(False),
    (0x0C, 34, U): energy(True),
    (0x0C, 129, U): st.integers(0, 12).flatmap(lambda m: st.builds(ActiveEnergy, minutes,
                                                                   tariffs(A14, m))),
    (0x0D, 1, D): days,
    (0x0D, 1, U): frozen(False),
    (0x0D, 17, D): months,
    (0x0D, 17, U): frozen(True),
    (0x0D, 49, D): days,
    (0x0D, 49, U): st.builds(DailySupply, days, st.none() | st.integers(0, 1440),
                             st.none() | st.integers(0, 0xEEED)),
    (0x0D, 161, D): days,
    (0x0D, 161, U): st.integers(0, 12).flatmap(lambda m: st.builds(
        FrozenActiveEnergy, days, minutes, tariffs(A14, m))),
    **{(0x0D, fn, D): curve_tag for fn in (97, 98, 99, 100)},
    **{(0x0D, fn, U): curve_tag.flatmap(lambda t: st.builds(
        Curve, st.just(t), st.tuples(*[number(A13)] * t.points))) for fn in (97, 98, 99, 100)},
    **{(0x0E, fn, D): st.builds(EventQuery, byte, byte) for fn in (1, 2)},
    **{(0x0E, fn, U): events() for fn in (1, 2)},
    (0x10, 1, D): st.builds(ForwardRequest, st.integers(1, 31), st.binary(max_size=300), byte,
                            byte, byte),
    (0x10, 1, U): st.builds(ForwardReply, st.integers(1, 31), st.binary(max_size=300)),
}


def test_every_fn_has_a_strategy() -> None:
    assert set(STRATEGIES) == set(REGISTRY)


def test_greedy_unit_must_be_last() -> None:
    import pytest

    with pytest.raises(ValueError, match="must be last"):
        encode_units(0x00, Direction.UP, [DataUnit(0, 3, ItemResults(2, ())), DataUnit(0, 1)])


@st.composite
def units_of_one_frame(draw: st.DrawFn) -> tuple[int, Direction, list[DataUnit]]:
    key = draw(st.sampled_from(sorted(REGISTRY)))
    afn, _, direction = key
    same = [k for k in REGISTRY if k[0] == afn and k[2] == direction
            and not REGISTRY[k].greedy]
    # a greedy layout takes the rest of the frame: it comes last
    keys = draw(st.lists(st.sampled_from(same), max_size=3)) if same else []
    if REGISTRY[key].greedy or not keys:
        keys.append(key)
    out = []
    for k in keys:
        pn = 0 if afn in (0x00, 0x01, 0x02, 0x04, 0x05, 0x09, 0x0A, 0x0E, 0x10) else draw(
            points)
        out.append(DataUnit(pn, k[1], draw(STRATEGIES[k])))
    return afn, direction, out


@settings(max_examples=400, deadline=None)
@given(units_of_one_frame())
def test_units_build_then_parse_equal(case: tuple[int, Direction, list[DataUnit]]) -> None:
    afn, direction, units = case
    data = encode_units(afn, direction, units)
    control = 0x88 if direction is Direction.UP else 0x4B
    pw = bytes(16) if direction is Direction.DOWN and afn in (1, 4, 5, 6, 15, 16) else None
    frame = Frame(control, "0200", 0x1234, 2, afn, 0x60, data, pw=pw)
    raw = build_frame(frame)
    assert decode_units(parse_frame(raw)) == units


@st.composite
def frames(draw: st.DrawFn) -> Frame:
    control, afn, seq = draw(byte), draw(byte), draw(byte)
    up = bool(control & 0x80)
    return Frame(
        control=control, a1=f"{draw(st.integers(0, 9999)):04d}", a2=draw(st.integers(0, 0xFFFF)),
        a3=draw(byte), afn=afn, seq=seq, units=draw(st.binary(min_size=4, max_size=200)),
        pw=draw(st.binary(min_size=16, max_size=16))
        if not up and afn in (1, 4, 5, 6, 15, 16) else None,
        ec=(draw(byte), draw(byte)) if up and control & 0x20 else None,
        tp=draw(st.builds(TimeTag, byte, st.integers(0, 59), st.integers(0, 59),
                          st.integers(0, 23), st.integers(1, 31), byte)) if seq & 0x80 else None,
    )


@settings(max_examples=400, deadline=None)
@given(frames())
def test_frames_parse_build_roundtrip(frame: Frame) -> None:
    raw = build_frame(frame)
    assert parse_frame(raw) == frame
    assert parse_frame(raw, compiled=False) == frame
    assert build_frame(frame, compiled=False) == raw

"""Refusals with the byte offset, the stream extractor, EE/EF absent values, several
pn/Fn per DA/DT, and multi-frame reassembly."""

from __future__ import annotations

import contextlib
import datetime as dt
from decimal import Decimal

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from protocols.qgdw3761 import (
    ALL_POINTS,
    ActiveEnergy,
    DataUnit,
    Direction,
    EventRecords,
    Frame,
    FrameError,
    FrameExtractor,
    PayloadError,
    PresentValues,
    RawUnit,
    Reassembler,
    SequenceError,
    UnknownFn,
    build_frame,
    decode_da,
    decode_dt,
    decode_units,
    encode_da,
    encode_dt,
    encode_units,
    parse_frame,
    request,
)
from protocols.qgdw3761 import _formats as fmt

K1 = bytes.fromhex("683A003A0068E94924455800027000000100090170 16".replace(" ", ""))
K3 = bytes.fromhex("684A004A0068C949244558000270000004001741170367193B16")
K5 = bytes.fromhex("6832003200687B0158112802 0C60020101108F16".replace(" ", ""))


def _refused(raw: bytes) -> FrameError:
    with pytest.raises(FrameError) as info:
        parse_frame(raw)
    return info.value


# ---- refusals ----------------------------------------------------------------------

def test_bad_checksum_names_the_cs_byte() -> None:
    bad = bytearray(K1)
    bad[-2] ^= 1
    e = _refused(bytes(bad))
    assert e.offset == len(K1) - 2 and "checksum 71 does not match computed 70" in e.problem


def test_l_copies_differ() -> None:
    bad = bytearray(K1)
    bad[3] = 0x3E
    e = _refused(bytes(bad))
    assert e.offset == 3 and "two copies of L differ" in e.problem


def test_wrong_protocol_id() -> None:
    bad = bytearray(K1)
    bad[1] = bad[3] = 0x39  # protocol id 1: Q/GDW 130-2005
    e = _refused(bytes(bad))
    assert e.offset == 1 and "protocol id 1" in e.problem


def test_bad_end_byte() -> None:
    bad = bytearray(K1)
    bad[-1] = 0x17
    e = _refused(bytes(bad))
    assert e.offset == len(K1) - 1 and "expected end byte 16, got 17" in e.problem
    with pytest.raises(FrameError) as plain:
        parse_frame(bytes(bad), compiled=False)
    assert plain.value.offset == len(K1) - 1


def test_truncated() -> None:
    e = _refused(K1[:-3])
    assert e.offset == len(K1) - 3 and "truncated" in e.problem
    assert _refused(K1[:4]).offset == 4


def test_bad_start_bytes_and_trailing_bytes() -> None:
    assert _refused(b"\x12" + K1[1:]).offset == 0
    bad = bytearray(K1)
    bad[5] = 0x00
    assert _refused(bytes(bad)).offset == 5
    e = _refused(K1 + b"\x00")
    assert e.offset == len(K1) and "after the end byte" in e.problem


def test_preamble_offsets_count_the_fe_bytes() -> None:
    assert parse_frame(b"\xfe\xfe" + K1) == parse_frame(K1)
    bad = bytearray(b"\xfe\xfe" + K1)
    bad[-2] ^= 1
    assert _refused(bytes(bad)).offset == len(bad) - 2


def test_l1_too_small_for_aux() -> None:
    # Uplink ACD=1 (EC expected) with L1 = 12: only the DA/DT fits, no EC.
    raw = build_frame(Frame(0x88, "0200", 1, 0, 0x00, 0x60, b"\x00\x00\x01\x00"))
    bad = bytearray(raw)
    bad[6] = 0xA8
    bad[-2] = (bad[-2] + 0x20) & 0xFF
    e = _refused(bytes(bad))
    assert e.offset == 14 and "AUX" in e.problem


def test_build_refuses_missing_or_stray_aux() -> None:
    with pytest.raises(ValueError, match="PW"):
        build_frame(Frame(0x4A, "0200", 1, 2, 0x04, 0x70, b"\x00\x00\x02\x01"))
    with pytest.raises(ValueError, match="EC"):
        build_frame(Frame(0xA8, "0200", 1, 0, 0x0C, 0x60, b"\x00\x00\x02\x00"))
    with pytest.raises(ValueError, match="Tp"):
        build_frame(Frame(0x4B, "0200", 1, 2, 0x0C, 0xE0, b"\x00\x00\x02\x00"))


def test_truncated_data_unit_names_its_offset() -> None:
    frame = Frame(0x88, "0200", 1, 0, 0x0C, 0x60, bytes.fromhex("01010110") + b"\x00" * 10)
    with pytest.raises(PayloadError) as info:
        decode_units(frame)
    # DA/DT at 14, read time 18-22, M at 23, the 5-byte values start at 24
    assert info.value.offset == 24 and "A.14" in info.value.problem


def test_unknown_fn_strict_and_lenient() -> None:
    frame = Frame(0x88, "0200", 1, 0, 0x0C, 0x60, bytes.fromhex("00000200") + bytes.fromhex(
        "0000" "0100") + b"\x00" * 12)
    parsed = parse_frame(build_frame(Frame(
        0x88, "0200", 1, 0, 0x0C, 0x60,
        encode_units(0x0C, Direction.UP, [DataUnit(0, 2, dt.datetime(2024, 1, 2, 3, 4, 5))])
        + bytes.fromhex("00000100") + b"\x01\x02")))
    with pytest.raises(UnknownFn) as info:
        decode_units(parsed)
    assert info.value.offset == 14 + 10 + 2 and "F1" in info.value.problem
    lenient = decode_units(parsed, strict=False)
    assert lenient[0] == DataUnit(0, 2, dt.datetime(2024, 1, 2, 3, 4, 5))
    assert lenient[1] == RawUnit((0,), (1,), bytes.fromhex("00000100") + b"\x01\x02")
    with pytest.raises(PayloadError):
        decode_units(frame)


# ---- DA/DT --------------------------------------------------------------------------

@pytest.mark.parametrize(("pn", "da"), [(0, "0000"), (1, "0101"), (2, "0201"), (5, "1001"),
                                        (8, "8001"), (9, "0102"), (16, "8002")])
def test_da_table(pn: int, da: str) -> None:
    assert encode_da((pn,)).hex() == da
    assert decode_da(*bytes.fromhex(da)) == [pn]


@pytest.mark.parametrize(("fn", "dt_"), [(1, "0100"), (2, "0200"), (3, "0400"), (9, "0101"),
                                         (10, "0201"), (16, "8001"), (25, "0103"),
                                         (31, "4003"), (33, "0104"), (129, "0110"),
                                         (161, "0114"), (248, "801e")])
def test_dt_table(fn: int, dt_: str) -> None:
    assert encode_dt((fn,)).hex() == dt_
    assert decode_dt(*bytes.fromhex(dt_)) == [fn]


def test_several_points_and_fn_in_one_identifier() -> None:
    assert encode_da((1, 3, 8)).hex() == "8501" and decode_da(0x85, 1) == [1, 3, 8]
    assert decode_dt(0x03, 0x10) == [129, 130]
    with pytest.raises(ValueError, match="one group"):
        encode_da((8, 9))
    # p1 and p2, F129: data follows pn by pn
    one = ActiveEnergy(dt.datetime(2024, 5, 6, 10, 15), (Decimal("1.5"),))
    two = ActiveEnergy(dt.datetime(2024, 5, 6, 10, 15), (Decimal("2.5"),))
    body = encode_units(0x0C, Direction.UP, [DataUnit(1, 129, one), DataUnit(2, 129, two)])
    merged = bytes.fromhex("03010110") + body[4:15] + body[19:]
    units = decode_units(Frame(0x88, "0200", 1, 0, 0x0C, 0x60, merged))
    assert units == [DataUnit(1, 129, one), DataUnit(2, 129, two)]


def test_all_points_da() -> None:
    assert decode_da(0xFF, 0x00) == [ALL_POINTS] and encode_da((ALL_POINTS,)) == b"\xff\x00"
    frame = request("0200", 1, 0x0C, [DataUnit(ALL_POINTS, 129)], pseq=2)
    assert frame.units == bytes.fromhex("ff000110")
    assert decode_units(parse_frame(build_frame(frame))) == [DataUnit(ALL_POINTS, 129)]
    with pytest.raises(ValueError, match="names no point"):
        decode_da(0x01, 0x00)


# ---- EE / EF ------------------------------------------------------------------------

def test_ee_and_ef_decode_as_absent() -> None:
    assert fmt.A14.decode(b"\xee" * 5) is None
    assert fmt.A14.decode(bytes.fromhex("89674523ef")) is None  # EF fill: invalid, absent
    assert fmt.A9.decode(bytes.fromhex("ee23ef")) is None
    assert fmt.A7.decode(bytes.fromhex("05ee")) is None  # partly EE
    assert fmt.decode_a15(b"\xee" * 5) is None and fmt.decode_a15(b"\xef" * 5) is None
    assert fmt.decode_a1(bytes.fromhex("171741036719")) is None  # minute 71? hour 41: none
    assert fmt.decode_a20(bytes.fromhex("320524")) is None  # 32 May
    assert fmt.A14.encode(None) == b"\xee" * 5


def test_f25_all_ee_unit_is_every_value_absent() -> None:
    data = bytes.fromhex("01010103") + b"\xee" * 67
    [unit] = decode_units(Frame(0x88, "0200", 1, 0, 0x0C, 0x60, data))
    assert isinstance(unit, DataUnit) and unit.value == PresentValues(None)
    assert all(v is None for v in unit.value.readings().values())


def test_event_records_erc1_3_14() -> None:
    data = bytes.fromhex(
        "0000" "0100"  # p0 F1
        "05" "02" "03" "06"  # EC1 EC2 Pm=3 Pn=6: three records
        "010e" "1510060524" "01" "31303030" "31303031"  # ERC1
        "030a" "1510060524" "02" "00000201"  # ERC3: p0 F10
        "0e0b" "0000060524" "0500060524" "ff"  # ERC14 with Le=11
    )
    frame = parse_frame(build_frame(Frame(0xC4, "0200", 1, 0, 0x0E, 0x60, data)))
    [unit] = decode_units(frame)
    assert isinstance(unit, DataUnit)
    value = unit.value
    assert isinstance(value, EventRecords)
    assert (value.ec1, value.ec2, value.start, value.end) == (5, 2, 3, 6)
    erc1, erc3, erc14 = (r.content for r in value.records)
    assert erc1.old_version == "1000" and erc1.new_version == "1001"  # type: ignore[union-attr]
    assert erc3.idents == (((0,), (10,)),)  # type: ignore[union-attr]
    assert erc14.off == dt.datetime(2024, 5, 6, 0, 0)  # type: ignore[union-attr]
    assert erc14.on == dt.datetime(2024, 5, 6, 0, 5) and erc14.extra == b"\xff"  # type: ignore[union-attr]
    assert encode_units(0x0E, Direction.UP, [unit]) == data


# ---- extractor ----------------------------------------------------------------------

def test_extractor_garbage_preamble_split_and_rejects() -> None:
    ex = FrameExtractor()
    bad_cs = bytearray(K1)
    bad_cs[-2] ^= 0x55
    bad_l = bytearray(K3)
    bad_l[3] ^= 0x04
    stream = b"\x01\x02\xfe\xfe" + K1 + bytes(bad_cs) + bytes(bad_l) + b"\x68\x68" + K3 + K5
    for i in range(0, len(stream), 7):
        ex.feed(stream[i : i + 7])
    got = list(ex)
    assert [f.afn for f in got] == [0x02, 0x02, 0x0C]
    assert ex.stats.frames == 3 and ex.stats.bad_checksums == 1 and ex.stats.bad_lengths == 1
    first_bad = ex.stats.rejects[0]
    assert first_bad.offset == 4 + len(K1) and "checksum" in first_bad.reason
    assert ex.pending == 0


def test_extractor_waits_for_the_rest() -> None:
    ex = FrameExtractor()
    ex.feed(K3[:10])
    assert ex.next_frame() is None and ex.pending == 10
    ex.feed(K3[10:])
    assert ex.next_frame() == parse_frame(K3)


def test_extractor_false_long_header_does_not_hide_a_frame() -> None:
    ex = FrameExtractor()
    ex.feed(bytes.fromhex("68 fe 0f fe 0f 68".replace(" ", "")) + K1)
    assert list(ex) == [parse_frame(K1)]


@settings(max_examples=200, deadline=None)
@given(st.lists(st.one_of(st.binary(max_size=40), st.sampled_from([K1, K3, K5])),
                max_size=12), st.integers(1, 64))
def test_extractor_finds_every_frame_in_garbage(parts: list[bytes], chunk: int) -> None:
    frames = [p for p in parts if p in (K1, K3, K5)]
    stream = b"".join(parts)
    ex = FrameExtractor()
    out: list[Frame] = []
    for i in range(0, len(stream), chunk):
        ex.feed(stream[i : i + chunk])
        out.extend(ex)
    raws = [build_frame(f) for f in out]
    it = iter(raws)
    assert all(any(r == f for r in it) for f in frames)  # every frame, in order


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=300))
def test_parsing_random_bytes_raises_only_typed_errors(data: bytes) -> None:
    try:
        frame = parse_frame(data)
    except FrameError:
        return
    with contextlib.suppress(PayloadError):
        decode_units(frame, strict=False)


# ---- reassembly ---------------------------------------------------------------------

def _reply(seq: int, afn: int = 0x0D) -> Frame:
    return Frame(0x88, "0200", 0x1234, 0, afn, seq, b"\x01\x01\x01\x14")


def test_multi_frame_reassembly_in_order() -> None:
    r = Reassembler()
    r.expect(5)
    assert r.feed(_reply(0x45)) is None  # FIR, RSEQ 5
    assert r.feed(_reply(0x06)) is None  # middle
    done = r.feed(_reply(0x27))  # FIN
    assert done is not None and [f.pseq for f in done] == [5, 6, 7] and r.pending == 0


def test_reassembly_wraps_rseq_and_accepts_single_frames() -> None:
    r = Reassembler()
    assert r.feed(_reply(0x4F)) is None
    assert r.feed(_reply(0x20)) is not None  # 15 -> 0
    assert r.feed(_reply(0x63)) == [_reply(0x63)]
    assert r.feed(_reply(0x23)) == [_reply(0x23)]  # FIR=0 FIN=1 alone: a single frame


def test_reassembly_wrong_sequence_is_a_typed_error() -> None:
    r = Reassembler()
    r.expect(5)
    with pytest.raises(SequenceError, match="does not answer PSEQ 5"):
        r.feed(_reply(0x64))
    r.expect(None)
    r.feed(_reply(0x41))
    with pytest.raises(SequenceError, match=r"RSEQ 3 .* does not follow RSEQ 1"):
        r.feed(_reply(0x03))
    assert r.pending == 0
    with pytest.raises(SequenceError, match="without a first frame"):
        r.feed(_reply(0x02))
    r.feed(_reply(0x41))
    with pytest.raises(SequenceError, match="another response"):
        r.feed(_reply(0x47))
    r.feed(_reply(0x41))
    with pytest.raises(SequenceError, match="AFN 0C"):
        r.feed(_reply(0x22, afn=0x0C))

"""DL/T645-2007 load records (负荷记录, 0610xxxx) on the wire: every frame form, byte for byte.

The frames are built by hand from the layout of the State Grid filing of the 2007
edition's 0610 block ("给定时间记录块", as protocols/dlt645/_curve.py describes it):
request ``68 A0..A5 68 11 L  DI0..DI3 NN mm hh DD MM YY  CS 16``, reply
``68 A0..A5 68 91|B1 L  DI0..DI3 mm hh DD MM YY points  CS 16``, follow-up request
``68 .. 68 12 05 DI0..DI3 SEQ CS 16`` and reply ``68 .. 68 92|B2 L DI .. points SEQ CS 16``;
every data byte +33H, CS the sum from the first 68.
"""

from __future__ import annotations

import datetime as dt
from decimal import Decimal

import pytest

from protocols.dlt645 import (
    CURVE_ITEMS,
    PayloadError,
    ReadFollowUpReply,
    ReadFollowUpRequest,
    ReadReply,
    ReadRequest,
    UnknownDataItem,
    build_frame,
    curve_di,
    curve_item,
    curve_request_extra,
    decode_curve,
    decode_message,
    encode_curve,
    parse_curve_request,
    parse_frame,
)

ADDR = "000000000123"
ADDR_WIRE = "230100000000"


def _wire(control: int, data_hex: str) -> bytes:
    """A frame from its plain data field, +33H and checksum worked out here by hand."""
    data = bytes((b + 0x33) & 0xFF for b in bytes.fromhex(data_hex))
    head = bytes.fromhex(f"68{ADDR_WIRE}68") + bytes((control, len(data)))
    return head + data + bytes(((sum(head) + sum(data)) & 0xFF, 0x16))


def test_request_voltage_a_96_points_from_midnight() -> None:
    # DI 06100101 low byte first: 01 01 10 06; NN 96 (BCD 96); 2024-03-04 00:00 as mm hh DD MM YY.
    wire = _wire(0x11, "01011006" "96" "0000040324")
    assert wire.hex() == ("6823010000000068110a" "34344339" "c9" "3333373657" "e616")
    req = ReadRequest(address=ADDR, di=0x06100101,
                      extra=curve_request_extra(dt.datetime(2024, 3, 4), 96))
    assert build_frame(req.to_frame(), preamble=0) == wire
    got = decode_message(parse_frame(b"\xfe" * 4 + wire))
    assert isinstance(got, ReadRequest) and got.di == 0x06100101
    assert parse_curve_request(got.extra) == (dt.datetime(2024, 3, 4), 96)


def test_reply_two_points_and_a_gap() -> None:
    # Voltage A from 2024-03-04 10:15: 220.1 V, 219.8 V, then a point not recorded (FF FF).
    item = curve_item(0x06100101)
    assert item is not None
    body = encode_curve(item, dt.datetime(2024, 3, 4, 10, 15),
                        [{"voltage_a": Decimal("220.1")}, {"voltage_a": Decimal("219.8")}, None])
    assert body.hex() == "1510040324" "0122" "9821" "ffff"
    wire = _wire(0x91, "01011006" + body.hex())
    assert build_frame(ReadReply(address=ADDR, di=0x06100101, body=body).to_frame(),
                       preamble=0) == wire
    reply = decode_message(parse_frame(wire))
    assert isinstance(reply, ReadReply) and not reply.follow_up
    points = decode_curve(item, reply.body)
    assert [(p.at.strftime("%H:%M"), p.values) for p in points] == [
        ("10:15", {"voltage_a": Decimal("220.1")}),
        ("10:30", {"voltage_a": Decimal("219.8")}),
        ("10:45", None),
    ]


def test_follow_up_request_and_replies() -> None:
    # First part (B1: follow-up frames wait), the 12 request for frame 1, its last reply (92).
    # 1000.00 kWh is 00 00 10 00 (low byte first), 1025.00 is 00 25 10 00.
    first = _wire(0xB1, "01061006" "0000040324" "00001000")
    msg = decode_message(parse_frame(first))
    assert isinstance(msg, ReadReply) and msg.follow_up and msg.di == 0x06100601
    ask = _wire(0x12, "01061006" "01")
    assert ask.hex() == "68230100000000681205" "3439433934" "2816"
    assert build_frame(ReadFollowUpRequest(address=ADDR, di=0x06100601, seq=1).to_frame(),
                       preamble=0) == ask
    more = _wire(0xB2, "01061006" "00251000" "01")
    last = _wire(0x92, "01061006" "00501000" "02")
    parts = [decode_message(parse_frame(f)) for f in (more, last)]
    assert all(isinstance(p, ReadFollowUpReply) for p in parts)
    assert [(p.seq, p.follow_up) for p in parts if isinstance(p, ReadFollowUpReply)] == \
        [(1, True), (2, False)]
    body = msg.body + b"".join(p.body for p in parts if isinstance(p, ReadFollowUpReply))
    item = curve_item(0x06100601)
    assert item is not None
    points = decode_curve(item, body)
    assert [str(p.values["energy_active_forward_total"]) for p in points if p.values] == \
        ["1000.00", "1025.00", "1050.00"]
    assert points[-1].at == dt.datetime(2024, 3, 4, 0, 30)


def test_block_point_and_signed_members() -> None:
    item = curve_item(0x061002FF)
    assert item is not None and item.quantities == ("current_a", "current_b", "current_c")
    body = encode_curve(item, dt.datetime(2024, 3, 4, 0, 0),
                        [{"current_a": Decimal("1.5"), "current_b": Decimal("-0.25"),
                          "current_c": Decimal("0")}])
    # 001.500 -> 00 15 00 low byte first; -000.250 -> 50 02 80 (sign in the top bit)
    assert body.hex() == "0000040324" "001500" "500280" "000000"
    (point,) = decode_curve(item, body)
    assert point.values == {"current_a": Decimal("1.500"), "current_b": Decimal("-0.250"),
                            "current_c": Decimal("0.000")}


def test_catalogue_names_the_quantities() -> None:
    assert curve_di("voltage_a") == 0x06100101
    assert curve_di("energy_active_forward_total") == 0x06100601
    assert curve_di("power_active_total") == 0x06100300
    assert len({c.di for c in CURVE_ITEMS}) == len(CURVE_ITEMS)
    with pytest.raises(UnknownDataItem, match="frequency"):
        curve_di("frequency")


@pytest.mark.parametrize("extra, problem", [
    ("00" "0000040324", "count 0"),
    ("9A" "0000040324", "not BCD"),
    ("96" "00000403", "expected 6"),
    ("96" "0025040324", "not a YYMMDDhhmm"),
])
def test_bad_requests_are_payload_errors(extra: str, problem: str) -> None:
    with pytest.raises(PayloadError, match=problem):
        parse_curve_request(bytes.fromhex(extra))


def test_bad_replies_are_payload_errors() -> None:
    item = curve_item(0x06100101)
    assert item is not None
    with pytest.raises(PayloadError, match="not a multiple of 2"):
        decode_curve(item, bytes.fromhex("0000040324" "012201"))
    with pytest.raises(PayloadError, match="no start time"):
        decode_curve(item, b"\x00\x00")
    with pytest.raises(PayloadError, match="1-99"):
        curve_request_extra(dt.datetime(2024, 3, 4), 100)

"""Every example frame of the 376.1 reference (§10) and every constructed unit (§11).

Each frame round-trips (parse, then build, gives the same bytes) and decodes to the
values the reference states.  Sources: K = kylecui/3761_Parser captures, J = the public
JavaScript master snippet (see /work/shared/reference/qgdw3761.md).
"""

from __future__ import annotations

import datetime as dt
from decimal import Decimal

import pytest

from protocols.dlt645 import ReadReply, ReadRequest, decode_message
from protocols.dlt645 import parse_frame as parse_645
from protocols.qgdw3761 import (
    ActiveEnergy,
    ConfirmStyle,
    DataUnit,
    Direction,
    ForwardReply,
    ForwardRequest,
    Frame,
    FrozenActiveEnergy,
    Heartbeat,
    MeterArchive,
    MeterEntry,
    MeterProtocol,
    PresentValues,
    TimeTag,
    build_frame,
    confirm,
    decode_units,
    encode_units,
    parse_frame,
    request,
)
from protocols.qgdw3761 import _formats as fmt


def _raw(text: str) -> bytes:
    return bytes.fromhex(text.replace(" ", ""))


def _roundtrip(text: str) -> tuple[Frame, list[DataUnit]]:
    raw = _raw(text)
    frame = parse_frame(raw)
    assert build_frame(frame) == raw
    assert parse_frame(raw, compiled=False) == frame
    assert build_frame(frame, compiled=False) == raw
    units = decode_units(frame)
    assert all(isinstance(u, DataUnit) for u in units)
    typed = [u for u in units if isinstance(u, DataUnit)]
    assert encode_units(frame.afn, frame.direction, typed) == frame.units
    return frame, typed


K1 = "68 3A 00 3A 00 68 E9 49 24 45 58 00 02 70 00 00 01 00 09 01 70 16"
K2 = "68 32 00 32 00 68 0B 49 24 45 58 02 00 60 00 00 01 00 78 16"
K3 = "68 4A 00 4A 00 68 C9 49 24 45 58 00 02 70 00 00 04 00 17 41 17 03 67 19 3B 16"
K3_CONFIRM_2 = "68 32 00 32 00 68 0B 49 24 45 58 02 00 61 00 00 01 00 79 16"
K4 = "68 32 00 32 00 68 C9 49 24 45 58 00 02 71 00 00 02 00 48 16"
K4_CONFIRM = "68 32 00 32 00 68 0B 49 24 45 58 02 00 61 00 00 01 00 79 16"
K5 = "68 32 00 32 00 68 7B 01 58 11 28 02 0C 60 02 01 01 10 8F 16"
J1_LOGIN = "68 32 00 32 00 68 C9 00 02 34 12 00 02 71 00 00 01 00 85 16"
J1_CONFIRM = "68 32 00 32 00 68 0B 00 02 34 12 00 00 61 00 00 01 00 B5 16"
J1_HEARTBEAT = "68 32 00 32 00 68 C9 00 02 34 12 00 02 71 00 00 04 00 88 16"
J2_REQUEST = (
    "68 E2 00 E2 00 68 4B 00 02 34 12 04 10 E0 00 00 01 00 1F 6B BC 0A 10 00 68 61 10 01 30"
    " 12 15 68 11 04 33 33 34 33 7B 16 00 00 00 00 00 00 00 00 00 00 00 00 00 00 00 00 00"
    " 13 51 23 21 05 A1 16")
J2_REPLY = (
    "68 AE 00 AE 00 68 A8 00 02 34 12 04 10 E0 00 00 01 00 1F 14 00 68 61 10 01 30 12 15 68"
    " 91 08 33 33 34 33 AB 39 33 33 49 16 4F 00 00 06 50 23 21 05 AE 16")
J4_RESET = ("68 8A 00 8A 00 68 41 00 02 34 12 04 01 F0 00 00 01 00" + " 00" * 16
            + " 00 28 53 13 07 05 19 16")
J4_ACK = "68 52 00 52 00 68 A0 00 02 34 12 04 00 E0 00 00 01 00 11 00 00 27 52 13 07 05 76 16"


def test_k1_login_with_acd_and_ec() -> None:
    frame, units = _roundtrip(K1)
    assert (frame.direction, frame.prm, frame.acd, frame.function) == (Direction.UP, True,
                                                                       True, 9)
    assert (frame.a1, frame.a2, frame.a3) == ("2449", 22597, 0)
    assert (frame.afn, frame.seq, frame.fir, frame.fin, frame.con, frame.pseq) == (
        2, 0x70, True, True, True, 0)
    assert frame.ec == (9, 1)
    assert units == [DataUnit(0, 1)]


def test_k1_login_variant_from_2_pcapng_with_ec_0a_01() -> None:
    frame = parse_frame(_raw(K1))
    variant = Frame(frame.control, frame.a1, frame.a2, frame.a3, frame.afn, frame.seq,
                    frame.units, ec=(0x0A, 0x01))
    raw = build_frame(variant)
    assert raw[-4:-2] == b"\x0a\x01"
    assert parse_frame(raw).ec == (10, 1)


def test_k2_master_confirm() -> None:
    frame, units = _roundtrip(K2)
    assert (frame.direction, frame.prm, frame.function) == (Direction.DOWN, False, 11)
    assert frame.msa == 1 and frame.afn == 0 and frame.seq == 0x60 and frame.pseq == 0
    assert units == [DataUnit(0, 1)]
    # The builder answers K1 with these very bytes when told MSA 1.
    assert build_frame(confirm(parse_frame(_raw(K1)), msa=1)) == _raw(K2)


def test_k3_heartbeat_with_clock_2013() -> None:
    frame, units = _roundtrip(K3)
    assert frame.afn == 2 and frame.ec is None
    assert units == [DataUnit(0, 3, Heartbeat(dt.datetime(2019, 7, 3, 17, 41, 17)))]
    assert build_frame(confirm(frame, msa=1)) == _raw(K2)


def test_k3_next_heartbeat_confirm_seq_61() -> None:
    frame, units = _roundtrip(K3_CONFIRM_2)
    assert frame.seq == 0x61 and units == [DataUnit(0, 1)]


def test_k4_logout_and_its_confirm() -> None:
    frame, units = _roundtrip(K4)
    assert units == [DataUnit(0, 2)] and frame.pseq == 1 and frame.con
    _, answer_units = _roundtrip(K4_CONFIRM)
    assert answer_units == [DataUnit(0, 1)]
    assert build_frame(confirm(frame, msa=1)) == _raw(K4_CONFIRM)


def test_k5_read_f129_of_p2() -> None:
    frame, units = _roundtrip(K5)
    assert (frame.prm, frame.fcb, frame.fcv, frame.function) == (True, True, True, 11)
    assert (frame.a1, frame.a2, frame.msa) == ("5801", 0x2811, 1)
    assert frame.afn == 0x0C and frame.seq == 0x60
    assert units == [DataUnit(2, 129)]
    built = request("5801", 0x2811, 0x0C, [DataUnit(2, 129)], pseq=0, msa=1, fcb=True,
                    fcv=True)
    assert build_frame(built) == _raw(K5)


def test_j1_login_confirm_heartbeat() -> None:
    login, units = _roundtrip(J1_LOGIN)
    assert (login.a1, login.a2, login.seq) == ("0200", 0x1234, 0x71) and units == [
        DataUnit(0, 1)]
    answer, answer_units = _roundtrip(J1_CONFIRM)
    assert answer.a3 == 0 and answer_units == [DataUnit(0, 1)]
    assert build_frame(confirm(login)) == _raw(J1_CONFIRM)
    beat, beat_units = _roundtrip(J1_HEARTBEAT)
    assert beat_units == [DataUnit(0, 3)]  # 2009 style: no clock
    assert build_frame(confirm(beat)) == _raw(J1_CONFIRM)


def test_j2_afn10_forward_request() -> None:
    frame, units = _roundtrip(J2_REQUEST)
    assert frame.control == 0x4B and frame.msa == 2 and frame.tpv and frame.pseq == 0
    assert frame.pw == bytes(16)
    assert frame.tp == TimeTag(pfc=0, second=13, minute=51, hour=23, day=21, delay=5)
    [unit] = units
    fwd = unit.value
    assert isinstance(fwd, ForwardRequest)
    assert (unit.pn, unit.fn, fwd.port, fwd.control, fwd.baud) == (0, 1, 31, 0x6B, 2400)
    assert fwd.frame_timeout_seconds == 60 and fwd.byte_timeout == 10
    assert len(fwd.content) == 16
    meter = decode_message(parse_645(fwd.content))
    assert isinstance(meter, ReadRequest)
    assert meter.address == "151230011061" and meter.di == 0x00010000
    again = request("0200", 0x1234, 0x10, [DataUnit(0, 1, ForwardRequest.make(
        31, fwd.content, frame_timeout_s=60, byte_timeout_ms=100))], pseq=0, msa=2,
        function=11, tp=frame.tp)
    assert build_frame(again) == _raw(J2_REQUEST)


def test_j2_afn10_forward_reply() -> None:
    frame, units = _roundtrip(J2_REPLY)
    assert frame.control == 0xA8 and frame.acd and frame.ec == (0x4F, 0)
    assert frame.tp is not None and frame.tp.pfc == 0
    [unit] = units
    reply = unit.value
    assert isinstance(reply, ForwardReply) and reply.port == 31 and len(reply.content) == 20
    meter = decode_message(parse_645(reply.dlt645()))
    assert isinstance(meter, ReadReply) and meter.di == 0x00010000
    assert meter.value() == Decimal("6.78")


def test_j4_reset_and_ack() -> None:
    frame, units = _roundtrip(J4_RESET)
    assert frame.control == 0x41 and frame.function == 1 and frame.seq == 0xF0
    assert frame.pw == bytes(16) and units == [DataUnit(0, 1)]
    assert frame.tp == TimeTag(0, 28, 53, 13, 7, 5)
    built = request("0200", 0x1234, 0x01, [DataUnit(0, 1)], pseq=0, msa=2, tp=frame.tp)
    assert build_frame(built) == _raw(J4_RESET)
    ack, ack_units = _roundtrip(J4_ACK)
    assert ack.control == 0xA0 and ack.acd and ack.ec == (0x11, 0)
    assert ack.tp == TimeTag(0, 27, 52, 13, 7, 5) and ack_units == [DataUnit(0, 1)]


# ---- §11 constructed data units -----------------------------------------------------

@pytest.mark.parametrize(
    ("form", "value", "wire"),
    [
        (fmt.A9, "1.2345", "45 23 01"),
        (fmt.A9, "-0.1500", "00 15 80"),
        (fmt.A5, "98.7", "87 09"),
        (fmt.A7, "230.5", "05 23"),
        (fmt.A25, "5.123", "23 51 00"),
        (fmt.A25, "-5.123", "23 51 80"),
        (fmt.A14, "12345.6789", "89 67 45 23 01"),
        (fmt.A11, "1234.56", "56 34 12 00"),
    ],
)
def test_s11_f25_fields_and_energy_formats(form: fmt.NumberFormat, value: str, wire: str
                                           ) -> None:
    assert form.encode(Decimal(value)) == _raw(wire)
    assert form.decode(_raw(wire)) == Decimal(value)


def test_s11_f25_read_time() -> None:
    when = dt.datetime(2024, 5, 6, 10, 15)
    assert fmt.encode_a15(when) == _raw("15 10 06 05 24")
    assert fmt.decode_a15(_raw("15 10 06 05 24")) == when


def test_s11_f25_unit_with_the_constructed_fields() -> None:
    values = PresentValues(
        dt.datetime(2024, 5, 6, 10, 15), power_active_total=Decimal("1.2345"),
        power_reactive_total=Decimal("-0.15"), power_factor_total=Decimal("0.987"),
        voltage_a=Decimal("230.5"), current_a=Decimal("5.123"), current_b=Decimal("-5.123"))
    data = encode_units(0x0C, Direction.UP, [DataUnit(1, 25, values)])
    assert len(data) == 4 + 67
    assert data[4:9] == _raw("15 10 06 05 24") and data[9:12] == _raw("45 23 01")
    assert data[21:24] == _raw("00 15 80") and data[33:35] == _raw("87 09")
    assert data[41:43] == _raw("05 23") and data[47:50] == _raw("23 51 00")
    assert data[50:53] == _raw("23 51 80")
    frame = Frame(0x88, "0200", 0x1234, 0, 0x0C, 0x60, data)
    [unit] = decode_units(parse_frame(build_frame(frame)))
    assert isinstance(unit, DataUnit) and unit.value == values
    readings = values.readings()
    assert readings["voltage_a"] == Decimal("230.5")
    assert readings["power_factor_total"] == Decimal("0.987") and readings["voltage_b"] is None


def test_s11_f161_reply_for_p1_one_tariff() -> None:
    data = _raw("01 01 01 14 05 05 24 05 00 06 05 24 01 00 50 00 01 00 00 30 00 01 00")
    frame = Frame(0x88, "0200", 0x1234, 0, 0x0D, 0x60, data)
    [unit] = decode_units(frame)
    assert isinstance(unit, DataUnit) and (unit.pn, unit.fn) == (1, 161)
    assert unit.value == FrozenActiveEnergy(dt.date(2024, 5, 5), dt.datetime(2024, 5, 6, 0, 5),
                                            (Decimal("100.5"), Decimal("100.3")))
    assert unit.value.readings() == {"freeze_daily_energy_active_forward_total": Decimal(
        "100.5"), "freeze_daily_energy_active_forward_t1": Decimal("100.3")}
    assert encode_units(0x0D, Direction.UP, [unit]) == data


def test_s11_f10_archive_item() -> None:
    item = _raw("01 00 01 00 62 1E 78 56 34 12 00 00 00 00 00 00 00 00 04 09 00 00 00 00 00 00"
                " 00")
    entry = MeterEntry(serial=1, pn=1, port=2, baud=2400, protocol=MeterProtocol.DLT645_2007,
                       address="000012345678", tariffs=4, integer_digits=6, decimal_digits=2)
    data = encode_units(0x04, Direction.DOWN, [DataUnit(0, 10, MeterArchive((entry,)))])
    assert data == _raw("00 00 02 01 01 00") + item
    frame = request("0200", 0x1234, 0x04, [DataUnit(0, 10, MeterArchive((entry,)))], pseq=3)
    assert frame.pw == bytes(16) and frame.con and frame.function == 10
    [unit] = decode_units(parse_frame(build_frame(frame)))
    assert isinstance(unit, DataUnit) and unit.value == MeterArchive((entry,))


def test_s11_f31_time_set_data() -> None:
    when = dt.datetime(2024, 5, 6, 10, 15, 30)  # a Monday
    assert fmt.encode_a1(when) == _raw("30 15 10 06 25 24")
    frame = request("0200", 0x1234, 0x05, [DataUnit(0, 31, when)], pseq=1)
    assert frame.units == _raw("00 00 40 03 30 15 10 06 25 24")
    [unit] = decode_units(parse_frame(build_frame(frame)))
    assert isinstance(unit, DataUnit) and unit.value == when


def test_f129_reply_readings() -> None:
    value = ActiveEnergy(dt.datetime(2024, 5, 6, 10, 15), (Decimal("12345.6789"), None))
    data = encode_units(0x0C, Direction.UP, [DataUnit(2, 129, value)])
    assert data[:4] == _raw("02 01 01 10") and data[-5:] == b"\xee" * 5
    assert value.readings() == {"energy_active_forward_total": Decimal("12345.6789"),
                                "energy_active_forward_t1": None}


def test_confirm_f3_echoes_afn_and_item() -> None:
    answer = confirm(parse_frame(_raw(K3)), style=ConfirmStyle.F3)
    assert answer.units == _raw("00 00 04 00 02 00 00 04 00 00")

"""protocols.modbus RTU framing: CRC, PDUs, frames, the hunters, and their users."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
from hypothesis import given
from hypothesis import strategies as st
from pymodbus.framer import FramerRTU
from pymodbus.pdu import DecodePDU
from pymodbus.pdu.bit_message import WriteSingleCoilRequest
from pymodbus.pdu.register_message import (
    ReadHoldingRegistersRequest,
    ReadInputRegistersRequest,
    WriteMultipleRegistersRequest,
    WriteSingleRegisterRequest,
)

from collector.config.profiles import load_profile
from collector.config.settings import MeterSettings
from collector.polling import gateway
from collector.polling.gateway import RejectReason, ReportIngestor
from protocols.modbus import (
    CrcError,
    FrameHunter,
    FrameKind,
    ReplyHunter,
    RtuError,
    crc16,
    exception_pdu,
    parse_pdu,
    parse_rtu,
    read_reply_pdu,
    read_request_pdu,
    rtu_frame,
    write_coil_pdu,
    write_multiple_pdu,
    write_multiple_reply_pdu,
    write_register_pdu,
)
from protocols.modbus._rtu import ADDRESS_COUNT, READ_REPLY

_PYMODBUS = FramerRTU(DecodePDU(is_server=False))


# ---- CRC and building ---------------------------------------------------------------------

@given(st.binary(max_size=300))
def test_crc_is_pymodbus_crc(data: bytes) -> None:
    assert crc16(data).to_bytes(2, "little") == \
        int(FramerRTU.compute_CRC(data)).to_bytes(2, "big")


def test_crc_check_value() -> None:
    assert crc16(b"123456789") == 0x4B37  # the catalogued check value of CRC-16/MODBUS


@pytest.mark.parametrize("ours, theirs", [
    (rtu_frame(1, read_request_pdu(3, 0, 10)),
     ReadHoldingRegistersRequest(address=0, count=10, dev_id=1)),
    (rtu_frame(247, read_request_pdu(4, 0xFF80, 125)),
     ReadInputRegistersRequest(address=0xFF80, count=125, dev_id=247)),
    (rtu_frame(5, write_coil_pdu(7, True)),
     WriteSingleCoilRequest(address=7, bits=[True], dev_id=5)),
    (rtu_frame(5, write_register_pdu(0x1234, 0xBEEF)),
     WriteSingleRegisterRequest(address=0x1234, registers=[0xBEEF], dev_id=5)),
    (rtu_frame(9, write_multiple_pdu(16, [1, 2, 0xFFFF])),
     WriteMultipleRegistersRequest(address=16, registers=[1, 2, 0xFFFF], dev_id=9)),
], ids=["03", "04", "05", "06", "10"])
def test_requests_are_the_bytes_pymodbus_sends(ours: bytes, theirs: object) -> None:
    assert ours == _PYMODBUS.buildFrame(theirs)  # type: ignore[arg-type]


@pytest.mark.parametrize("call, message", [
    (lambda: read_request_pdu(1, 0, 1), "function 1"),
    (lambda: read_request_pdu(3, 0, 126), "count 126"),
    (lambda: read_request_pdu(3, 0xFFFF, 2), "do not fit"),
    (lambda: write_register_pdu(0, 0x10000), "65536"),
    (lambda: write_multiple_pdu(0, []), "0 registers"),
    (lambda: rtu_frame(256, b"\x03"), "unit id 256"),
])
def test_builders_name_a_bad_argument(call: object, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        call()  # type: ignore[operator]


# ---- parsing -----------------------------------------------------------------------------------

def test_every_frame_parses_back() -> None:
    cases = [
        (read_request_pdu(3, 11, 6), FrameKind.REQUEST, (FrameKind.REQUEST, 3, 11, 6, ())),
        (read_reply_pdu(4, [1, 0xFFFF]), FrameKind.RESPONSE,
         (FrameKind.RESPONSE, 4, None, 2, (1, 0xFFFF))),
        (write_coil_pdu(3, False), FrameKind.RESPONSE, (FrameKind.RESPONSE, 5, 3, 1, (0,))),
        (write_register_pdu(3, 9), FrameKind.REQUEST, (FrameKind.REQUEST, 6, 3, 1, (9,))),
        (write_multiple_pdu(3, [7, 8]), FrameKind.REQUEST,
         (FrameKind.REQUEST, 0x10, 3, 2, (7, 8))),
        (write_multiple_reply_pdu(3, 2), FrameKind.RESPONSE,
         (FrameKind.RESPONSE, 0x10, 3, 2, ())),
        (exception_pdu(3, 2), FrameKind.RESPONSE, (FrameKind.EXCEPTION, 3, None, None, ())),
    ]
    for pdu, kind, (k, fn, address, quantity, values) in cases:
        frame = parse_rtu(rtu_frame(17, pdu), kind)
        assert frame.unit == 17
        assert (frame.kind, frame.function, frame.pdu.address, frame.pdu.quantity,
                frame.pdu.values) == (k, fn, address, quantity, values)
    assert parse_rtu(rtu_frame(1, exception_pdu(4, 0x0B)), "response").pdu.exception == 0x0B


@pytest.mark.parametrize("raw, kind, offset, problem", [
    (rtu_frame(1, read_reply_pdu(3, [1]))[:-1] + b"\x00", "response", 5, "CRC"),
    (rtu_frame(1, bytes((3, 4, 0, 1))), "response", 2, "byte count 4, 2 data bytes"),
    (rtu_frame(1, bytes((3, 3, 0, 1, 2))), "response", 2, "odd"),
    (rtu_frame(1, bytes((0x2B, 0))), "response", 1, "function 2B"),
    (rtu_frame(1, bytes((0x83, 2, 0))), "response", 3, "exception reply has 1 data byte"),
    (rtu_frame(1, bytes((3, 0, 0, 0, 0))), "request", 4, "register count 0"),
    (rtu_frame(1, bytes((6, 0, 0, 0))), "request", 5, "4 data bytes, got 3"),
    (rtu_frame(1, bytes((5, 0, 0, 0x12, 0x34))), "request", 4, "coil value 1234"),
    (rtu_frame(1, bytes((0x10, 0, 0, 0, 2, 4, 0, 1))), "request", 6, "byte count 4, 2"),
    (rtu_frame(1, exception_pdu(3, 1)), "request", 1, "not a request"),
    (b"\x01\x03\x00", "response", 3, "3 bytes"),
])
def test_bad_frames_name_the_byte(raw: bytes, kind: str, offset: int, problem: str) -> None:
    with pytest.raises(RtuError) as e:
        parse_rtu(raw, kind)
    assert e.value.offset == offset
    assert problem in str(e.value)
    assert str(e.value).startswith(f"byte {offset}: ")


def test_a_crc_error_shows_the_crc_as_sent() -> None:
    good = rtu_frame(1, read_request_pdu(3, 0, 10))  # 01 03 00 00 00 0A C5 CD
    with pytest.raises(CrcError) as e:
        parse_rtu(good[:-2] + b"\x12\x34", "request")
    assert (e.value.received, e.value.computed) == (0x1234, 0xC5CD)
    assert "CRC 1234 does not match computed C5CD" in str(e.value)


@given(st.integers(1, 125), st.integers(0, 0xFFFF))
def test_struct_fast_paths_agree_with_the_construct_layouts(count: int, start: int) -> None:
    words = [(start + i * 7919) & 0xFFFF for i in range(count)]
    body = read_reply_pdu(3, words)[1:]
    assert READ_REPLY.parse(body).data == body[1:]
    assert parse_pdu(b"\x03" + body, "response").values == tuple(words)
    if start + count <= 0x10000:
        assert read_request_pdu(4, start, count)[1:] == \
            ADDRESS_COUNT.build({"address": start, "count": count})


# ---- hunting ------------------------------------------------------------------------------------

def _feed_in(hunter: ReplyHunter, data: bytes, cuts: list[int]) -> bool:
    last = 0
    for cut in sorted({min(c, len(data)) for c in cuts} | {len(data)}):
        if hunter.feed(data[last:cut]):
            return True
        last = cut
    return False


@given(st.binary(max_size=20), st.lists(st.integers(0, 60), max_size=6))
def test_reply_hunter_finds_the_reply_after_garbage_and_bad_crcs(
        garbage: bytes, cuts: list[int]) -> None:
    reply = rtu_frame(1, read_reply_pdu(3, [220, 5, 50]))
    corrupt = bytearray(reply)
    corrupt[4] ^= 0xFF
    hunter = ReplyHunter(3)
    assert _feed_in(hunter, garbage + bytes(corrupt) + reply, cuts)
    assert hunter.unit == 1
    assert parse_pdu(hunter.pdu, "response").values == (220, 5, 50)
    assert hunter.bad_checksums >= 1


def test_reply_hunter_takes_an_exception_and_a_write_echo() -> None:
    hunter = ReplyHunter(6)
    assert not hunter.feed(b"\x00\x07" + rtu_frame(2, write_register_pdu(1, 1))[:5])
    assert hunter.feed(rtu_frame(2, write_register_pdu(1, 1))[5:])
    assert hunter.pdu == write_register_pdu(1, 1)
    exc = ReplyHunter(4)
    assert exc.feed(rtu_frame(3, exception_pdu(4, 2)))
    assert exc.pdu == b"\x84\x02"


def test_reply_hunter_waits_and_never_takes_a_corrupt_frame() -> None:
    hunter = ReplyHunter(3)
    reply = bytearray(rtu_frame(1, read_reply_pdu(3, [1, 2])))
    reply[-1] ^= 1
    assert not hunter.feed(bytes(reply))
    assert hunter.bad_checksums == 1
    assert hunter.unit == -1


@given(st.lists(st.integers(1, 9), max_size=8))
def test_frame_hunter_splits_a_line_into_requests_and_replies(cuts: list[int]) -> None:
    request = rtu_frame(5, read_request_pdu(3, 11, 2))
    reply = rtu_frame(5, read_reply_pdu(3, [2201, 2202]))
    write = rtu_frame(6, write_multiple_pdu(0, [1, 2, 3]))
    echo = rtu_frame(6, write_multiple_reply_pdu(0, 3))
    stream = b"\xfe\xfe" + request + reply + b"\x68\x00" + write + echo + b"\x00"
    hunter = FrameHunter()
    frames = []
    pos = 0
    for size in [*cuts, len(stream)]:
        hunter.feed(stream[pos:pos + size])
        pos += size
        while (f := hunter.next_frame()) is not None:
            frames.append(f)
    assert [(f.unit, f.function, f.kind) for f in frames] == [
        (5, 3, FrameKind.REQUEST), (5, 3, FrameKind.RESPONSE),
        (6, 0x10, FrameKind.REQUEST), (6, 0x10, FrameKind.RESPONSE)]
    assert frames[1].pdu.values == (2201, 2202)
    assert hunter.stats.frames == 4
    assert hunter.stats.garbage_bytes == 4  # FE FE, 68 00; the last 00 may start a frame
    assert hunter.pending == 1


def test_frame_hunter_can_keep_to_some_units() -> None:
    hunter = FrameHunter(frozenset({7}))
    hunter.feed(rtu_frame(5, read_request_pdu(3, 0, 1)) + rtu_frame(7, read_request_pdu(3, 0, 1)))
    frame = hunter.next_frame()
    assert frame is not None and frame.unit == 7
    assert hunter.next_frame() is None


# ---- the users -----------------------------------------------------------------------------

def test_driver_and_gateway_use_this_codec() -> None:
    """One RTU codec: the driver's reply finder and the gateway's CRC are this module's,
    and neither needs pymodbus any more."""
    from drivers import modbus as driver
    assert issubclass(driver._RtuReply, ReplyHunter)
    assert gateway.modbus_crc is crc16
    code = "import sys, drivers.modbus, collector.polling.gateway; print('pymodbus' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True)
    assert out.stdout.strip() == "False"


def _gateway_rejects(doc: dict[str, object]) -> list[tuple[RejectReason, str]]:
    rejects: list[object] = []
    meters = [MeterSettings("MB05", "5", "gw-01", protocol="modbus",
                            profile="acrel-ddsy1352")]
    ing = ReportIngestor(meters, load_profile, lambda rows: None, rejects.append)
    ing.handle("amic-gw/gw-01/raw", json.dumps(doc).encode())
    return [(r.reason, r.detail) for r in rejects]  # type: ignore[attr-defined]


def test_gateway_rejects_a_malformed_exception_reply_as_a_bad_frame() -> None:
    """An exception reply is 5 bytes; one with extra bytes is a bad frame, not a meter's
    exception (before, its first data byte was taken as the exception code)."""
    frame = rtu_frame(5, bytes((0x83, 2, 0))).hex()
    [(reason, detail)] = _gateway_rejects({"start": 11, "frame": frame})
    assert reason is RejectReason.BAD_FRAME
    assert "byte 3" in detail and "exception reply" in detail


def test_gateway_rejects_a_request_for_no_registers() -> None:
    request = rtu_frame(5, bytes((3, 0, 11, 0, 0))).hex()
    reply = rtu_frame(5, read_reply_pdu(3, [2201])).hex()
    [(reason, detail)] = _gateway_rejects({"request": request, "frame": reply})
    assert reason is RejectReason.BAD_FRAME
    assert "register count 0" in detail

"""Property tests: every function code of both editions builds, then parses back equal."""

from __future__ import annotations

import contextlib
import datetime as dt

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from protocols.dlt645 import (
    AbnormalReply,
    Ack,
    ChangeBaudReply,
    ChangeBaudRequest,
    ChangePasswordReply,
    ChangePasswordRequest,
    ClearDemandRequest,
    ClearEventsRequest,
    ClearMeterRequest,
    FrameError,
    FreezeRequest,
    Message,
    ReadAddressReply,
    ReadAddressRequest,
    ReadFollowUpReply,
    ReadFollowUpRequest,
    ReadReply,
    ReadRequest,
    RelayCommand,
    RemoteControlRequest,
    TimeSyncRequest,
    Version,
    WriteAddressRequest,
    WriteRequest,
    build_frame,
    decode_message,
    parse_frame,
)

V7, V97 = Version.V2007, Version.V1997

address = st.text("0123456789", min_size=12, max_size=12)
hex8 = st.text("0123456789ABCDEF", min_size=8, max_size=8)
digits8 = st.text("0123456789", min_size=8, max_size=8)
di7 = st.integers(0, 0xFFFFFFFF)
di97 = st.integers(0, 0xFFFF)
body = st.binary(max_size=150)
when = st.datetimes(dt.datetime(2000, 1, 1), dt.datetime(2099, 12, 31, 23, 59, 59)).map(
    lambda d: d.replace(microsecond=0)
)
byte = st.integers(0, 255)


def _both(v: Version, **kw: st.SearchStrategy[object]) -> dict[str, st.SearchStrategy[object]]:
    return {"address": address, "version": st.just(v), **kw}


MESSAGES: dict[str, st.SearchStrategy[Message]] = {
    "08 time sync": st.builds(TimeSyncRequest, **_both(V7, when=when)),
    "08 time sync 1997": st.builds(TimeSyncRequest, **_both(V97, when=when)),
    "11 read": st.builds(ReadRequest, **_both(V7, di=di7, extra=st.binary(max_size=6))),
    "91 read reply": st.builds(ReadReply, **_both(V7, di=di7, body=body, follow_up=st.booleans())),
    "12 follow-up": st.builds(ReadFollowUpRequest, **_both(V7, di=di7, seq=byte)),
    "92 follow-up reply": st.builds(
        ReadFollowUpReply, **_both(V7, di=di7, body=body, seq=byte, follow_up=st.booleans())
    ),
    "13 read address": st.builds(ReadAddressRequest, **_both(V7)),
    "93 read address reply": st.builds(ReadAddressReply, **_both(V7, meter_address=address)),
    "14 write": st.builds(
        WriteRequest, **_both(V7, di=di7, password=hex8, operator=hex8, body=st.binary(max_size=40))
    ),
    "15 write address": st.builds(WriteAddressRequest, **_both(V7, new_address=address)),
    "16 freeze": st.builds(FreezeRequest, **_both(V7, pattern=digits8)),
    "17 change baud": st.builds(ChangeBaudRequest, **_both(V7, feature=byte)),
    "97 change baud reply": st.builds(ChangeBaudReply, **_both(V7, feature=byte)),
    "18 change password": st.builds(
        ChangePasswordRequest, **_both(V7, di=di7, old=hex8, new=hex8)
    ),
    "98 change password reply": st.builds(ChangePasswordReply, **_both(V7, new=hex8)),
    "19 clear demand": st.builds(ClearDemandRequest, **_both(V7, password=hex8, operator=hex8)),
    "1A clear meter": st.builds(ClearMeterRequest, **_both(V7, password=hex8, operator=hex8)),
    "1B clear events": st.builds(
        ClearEventsRequest, **_both(V7, password=hex8, operator=hex8, di=di7)
    ),
    "1C remote control": st.builds(
        RemoteControlRequest,
        **_both(V7, password=hex8, operator=hex8, command=st.sampled_from(RelayCommand),
                expiry=when, n2=byte),
    ),
    "1C remote control, encrypted": st.builds(
        RemoteControlRequest,
        **_both(V7, password=hex8, operator=hex8,
                ciphertext=st.binary(min_size=16, max_size=32)),
    ),
    "ack 94..9C": st.builds(
        Ack, **_both(V7, ack_function=st.sampled_from([0x14, 0x15, 0x16, 0x19, 0x1A, 0x1B, 0x1C]))
    ),
    "abnormal C0|fn": st.builds(
        AbnormalReply,
        **_both(V7, request_function=st.sampled_from([0x11, 0x12, 0x14, 0x18, 0x1C]), error=byte,
                extra=st.binary(max_size=2)),
    ),
    "01 read 1997": st.builds(ReadRequest, **_both(V97, di=di97)),
    "81 read reply 1997": st.builds(
        ReadReply, **_both(V97, di=di97, body=body, follow_up=st.booleans())
    ),
    "02 follow-up 1997": st.builds(ReadFollowUpRequest, **_both(V97, di=di97, seq=st.just(0))),
    "82 follow-up reply 1997": st.builds(
        ReadFollowUpReply, **_both(V97, di=di97, body=body, follow_up=st.booleans())
    ),
    "04 write 1997": st.builds(
        WriteRequest, **_both(V97, di=di97, password=hex8, body=st.binary(max_size=40))
    ),
    "0A write address 1997": st.builds(WriteAddressRequest, **_both(V97, new_address=address)),
    "0C change baud 1997": st.builds(ChangeBaudRequest, **_both(V97, feature=byte)),
    "0F change password 1997": st.builds(
        ChangePasswordRequest, **_both(V97, old=hex8, new=hex8, di=st.just(0))
    ),
    "10 clear demand 1997": st.builds(ClearDemandRequest, **_both(V97)),
    "ack 1997": st.builds(Ack, **_both(V97, ack_function=st.sampled_from([0x04, 0x0A, 0x10]))),
    "abnormal 1997": st.builds(
        AbnormalReply, **_both(V97, request_function=st.sampled_from([0x01, 0x04]), error=byte)
    ),
}


@pytest.mark.parametrize("kind", sorted(MESSAGES))
@settings(max_examples=60, deadline=None)
@given(data=st.data(), preamble=st.integers(0, 4))
def test_build_then_parse(kind: str, data: st.DataObject, preamble: int) -> None:
    message = data.draw(MESSAGES[kind])
    raw = build_frame(message.to_frame(), preamble=preamble)
    assert raw[:preamble] == b"\xfe" * preamble
    assert raw[preamble] == 0x68 and raw[-1] == 0x16
    # The checksum covers 68 .. last data byte, mod 256.
    assert raw[-2] == sum(raw[preamble:-2]) & 0xFF
    decoded = decode_message(parse_frame(raw), message.version)
    assert decoded == message


def test_every_function_code_is_covered() -> None:
    # Keys start with the control code they exercise; requests are codes below 0x80.
    requests = {
        (V97 if k.endswith("1997") else V7, int(k[:2], 16))
        for k in MESSAGES
        if k[:2] != "ac" and k[:2] != "ab" and int(k[:2], 16) < 0x80
    }
    assert {(V7, c) for c in [0x08, *range(0x11, 0x1D)]} <= requests
    assert {(V97, c) for c in [0x01, 0x02, 0x04, 0x08, 0x0A, 0x0C, 0x0F, 0x10]} <= requests


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=64))
def test_parse_frame_never_raises_anything_but_frame_error(raw: bytes) -> None:
    try:
        parse_frame(raw)
    except FrameError as e:
        assert 0 <= e.offset <= len(raw)


def test_remote_control_layout_matches_the_standard() -> None:
    # PA P0 P1 P2, C0..C3, N1 N2 N3..N8 (ssmmhhDDMMYY), every byte +33H.
    msg = RemoteControlRequest(
        address="000000000001", password="02123456", operator="12345678",
        command=RelayCommand.TRIP, expiry=dt.datetime(2026, 11, 24, 10, 30, 15),
    )
    raw = build_frame(msg.to_frame(), preamble=0)
    data = bytes((b - 0x33) & 0xFF for b in raw[10:-2])
    assert data == bytes.fromhex("02563412" "78563412" "1A00" "153010241126")
    assert raw[8] == 0x1C and raw[9] == 16
    assert "02123456" not in repr(msg)  # passwords stay out of logs


@settings(max_examples=500, deadline=None)
@given(control=st.integers(0, 255), data=st.binary(max_size=40))
def test_decode_message_raises_only_payload_errors(control: int, data: bytes) -> None:
    from protocols.dlt645 import Frame, PayloadError

    # Anything else (IndexError, construct errors) would escape to the daemon.
    with contextlib.suppress(PayloadError):
        decode_message(Frame("000000000001", control, data))


def test_short_data_fields_are_refused() -> None:
    from protocols.dlt645 import Frame, PayloadError

    for control, data in [(0x11, b"\x01\x02"), (0x14, b""), (0xD1, b""), (0x98, b"\x01"),
                          (0x1C, b"\x00" * 9), (0x93, b"\x01" * 5)]:
        with pytest.raises(PayloadError, match=r"data field|bytes"):
            decode_message(Frame("000000000001", control, data))

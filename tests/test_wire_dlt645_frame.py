"""The hand-sliced DL/T645 frame codec against its construct definition (the reference).

Both must give the same frame, the same bytes and the same error (byte offset and text)
on every reference frame, on every truncation and one-byte change of them, and on
random bytes; and the driver's decode path must never reach construct.
"""

from __future__ import annotations

import asyncio
import sys
from types import FrameType
from typing import Any

import pytest
from fake_dlt645 import FakeMeter, Send, tcp_meter
from hypothesis import given, settings
from hypothesis import strategies as st

from drivers.dlt645 import Dlt645Session
from drivers.errors import BadReply
from drivers.tcp import TcpBus
from protocols.dlt645 import (
    Frame,
    FrameError,
    FrameExtractor,
    ReadReply,
    Version,
    build_frame,
    by_name,
    encode_value,
    parse_frame,
)
from tests.test_dlt645_reference import FRAMES as REFERENCE_FRAMES
from tests.test_dlt645_reference import LOCAL_COPY


def _reference_frames() -> list[bytes]:
    # test_dlt645_reference checks that the local copy equals ../shared's file
    return [bytes.fromhex(str(case["hex"])) for case in REFERENCE_FRAMES]


def _built_frames() -> list[bytes]:
    """Replies of other shapes: other addresses, 1997, no preamble, long data."""
    out = []
    for address, name, value in (("000000000123", "voltage_a", "220.1"),
                                 ("112233445566", "current_a", "-5.125"),
                                 ("999999999998", "energy_active_forward_total", "12345.67")):
        item = by_name(name, Version.V2007)
        reply = ReadReply(address=address, version=Version.V2007, di=item.di,
                          body=encode_value(item, value))
        out.append(build_frame(reply.to_frame()))
        out.append(build_frame(reply.to_frame(), preamble=0))
    out.append(build_frame(Frame("AAAAAAAAAAAA", 0x13), preamble=1))
    out.append(build_frame(Frame("000000000001", 0x91, bytes(range(200)))))
    out.append(build_frame(Frame("000000000001", 0x81, b"\x10\x90\x20\x02")))
    return out


FRAMES = _reference_frames() + _built_frames()


def outcome(raw: bytes, *, compiled: bool) -> tuple[Any, ...]:
    try:
        return ("frame", parse_frame(raw, compiled=compiled))
    except FrameError as e:
        return ("error", e.offset, e.problem)


def mutations(raw: bytes) -> list[bytes]:
    out = [raw[:i] for i in range(len(raw))]
    for i, b in enumerate(raw):
        for v in {0x00, 0x16, 0x68, 0xFE, b ^ 0x01, (b + 1) & 0xFF}:
            out.append(raw[:i] + bytes((v,)) + raw[i + 1:])
    out += [raw + b"\x16", raw + b"\xaa\xbb", b"\x00" + raw]
    return out


def test_the_reference_frames_are_all_there() -> None:
    assert len(_reference_frames()) >= 28  # the jsonl's requests and replies
    assert all(f.hex() in LOCAL_COPY.read_text() for f in _reference_frames())


@pytest.mark.parametrize("raw", FRAMES, ids=lambda r: r.hex()[:40])
def test_every_frame_parses_and_builds_alike_on_both_paths(raw: bytes) -> None:
    frame = parse_frame(raw)
    assert frame == parse_frame(raw, compiled=False)
    preamble = len(raw) - len(raw.lstrip(b"\xfe"))
    assert build_frame(frame, preamble=preamble) == raw
    assert build_frame(frame, preamble=preamble, compiled=False) == raw
    # The drivers' extractor slices the same frame out of a byte stream.
    extractor = FrameExtractor()
    extractor.feed(b"\x00\x11" + raw + b"\x68\x01")
    assert extractor.next_frame() == frame


@pytest.mark.parametrize("raw", FRAMES, ids=lambda r: r.hex()[:40])
def test_every_truncation_and_one_byte_change_gives_the_same_result(raw: bytes) -> None:
    for bad in mutations(raw):
        assert outcome(bad, compiled=True) == outcome(bad, compiled=False), bad.hex()


def test_errors_name_the_byte_at_fault() -> None:
    good = bytes.fromhex("fefe6801000000000068910833333433833334335416")
    cases = {
        good[:12]: (12, "frame too short: 10 bytes, a frame has at least 12"),
        good[:16]: (16, "frame truncated: data length 8 needs 20 bytes, got 14"),
        good[:-1]: (21, "frame truncated: data length 8 needs 20 bytes, got 19"),
        good[:2] + b"\x12" + good[3:]: (2, "expected start byte 68, got 12"),
        good[:9] + b"\x12" + good[10:]: (9, "expected second start byte 68 after the "
                                            "address, got 12"),
        good[:-1] + b"\x17": (21, "expected end byte 16, got 17"),
        good + b"\x00": (22, "1 bytes after the end byte 16"),
        good[:-2] + b"\x55\x16": (20, "checksum 55 does not match computed 54"),
    }
    for raw, (offset, problem) in cases.items():
        for compiled in (True, False):
            assert outcome(raw, compiled=compiled) == ("error", offset, problem), raw.hex()


@settings(max_examples=400, deadline=None)
@given(st.binary(max_size=40), st.integers(0, 3))
def test_random_bytes_give_the_same_result(tail: bytes, preamble: int) -> None:
    for raw in (b"\xfe" * preamble + tail, b"\xfe" * preamble + b"\x68" + tail[:6] + b"\x68"
                + tail[6:]):
        assert outcome(raw, compiled=True) == outcome(raw, compiled=False)


def test_a_short_address_is_refused_when_building() -> None:
    with pytest.raises(ValueError, match="not 12 digits"):
        build_frame(Frame("0001", 0x11))


def _reaches_construct(frame: FrameType, event: str, arg: object) -> bool:
    code = frame.f_code.co_filename
    # construct's own modules, our shim of it, and the code Construct.compile() makes
    # (compiled with the file name "").
    return event == "call" and ("construct" in code or code == "")


async def test_the_driver_never_reaches_construct() -> None:
    meter = FakeMeter("000000000123")
    meter.set("voltage_a", "220.1")
    item = by_name("voltage_a", Version.V2007)
    good = build_frame(ReadReply(address="000000000123", version=Version.V2007, di=item.di,
                                 body=encode_value(item, "220.1")).to_frame())
    garbled = good[:-2] + bytes((good[-2] ^ 1,)) + good[-1:]
    async with tcp_meter(meter) as port, TcpBus("127.0.0.1", port, td=1.0, tb=0.2) as bus:
        session = Dlt645Session(bus, retries=0)
        seen: list[str] = []
        mine = asyncio.current_task()  # the driver's calls, not the fake meter's

        def profile(frame: FrameType, event: str, arg: object) -> None:
            if _reaches_construct(frame, event, arg) and asyncio.current_task() is mine:
                seen.append(f"{frame.f_code.co_filename}:{frame.f_code.co_name}")

        sys.setprofile(profile)
        try:
            values = [(await session.read("000000000123", "voltage_a")).value]
            meter.garbage = bytes.fromhex("681122334455666891C8")  # a false frame start
            values.append((await session.read("000000000123", "voltage_a")).value)
            meter.garbage = b""
            meter.hook = lambda request: [Send(garbled)]
            with pytest.raises(BadReply, match="garbled"):
                await session.read("000000000123", "voltage_a")
        finally:
            sys.setprofile(None)
        assert [str(v) for v in values] == ["220.1", "220.1"]
        assert seen == []
        # The check itself sees construct when it is used.
        sys.setprofile(profile)
        try:
            parse_frame(good, compiled=False)
        finally:
            sys.setprofile(None)
        assert seen

"""The stream extractor: garbage, split frames, frames for others, never an exception."""

from __future__ import annotations

from decimal import Decimal

from hypothesis import given, settings
from hypothesis import strategies as st

from protocols.dlt645 import (
    Frame,
    FrameExtractor,
    ReadReply,
    ReadRequest,
    address_matches,
    build_frame,
    by_name,
    decode_message,
    encode_value,
)


def _reply(address: str, volts: str) -> bytes:
    item = by_name("voltage_a")
    msg = ReadReply(address=address, di=item.di, body=encode_value(item, Decimal(volts)))
    return build_frame(msg.to_frame())


def _request(address: str) -> bytes:
    return build_frame(ReadRequest(address=address, di=0x00010000).to_frame())


FRAMES = [_reply(f"{i:012d}", f"{220 + i}.{i % 10}") for i in range(1, 6)]


def _values(frames: list[Frame]) -> list[tuple[str, Decimal]]:
    out = []
    for f in frames:
        m = decode_message(f)
        assert isinstance(m, ReadReply)
        v = m.value()
        assert isinstance(v, Decimal)
        out.append((f.address, v))
    return out


EXPECTED = [(f"{i:012d}", Decimal(f"{220 + i}.{i % 10}")) for i in range(1, 6)]


def test_byte_by_byte() -> None:
    ex = FrameExtractor()
    got: list[Frame] = []
    for b in b"".join(FRAMES):
        ex.feed(bytes((b,)))
        got.extend(ex)
    assert _values(got) == EXPECTED
    assert ex.stats.garbage_bytes == 0 and ex.stats.frames == 5


def test_waits_for_partial_frame() -> None:
    ex = FrameExtractor()
    raw = FRAMES[0]
    ex.feed(raw[:-3])
    assert ex.next_frame() is None
    assert ex.pending > 0
    ex.feed(raw[-3:])
    assert _values(list(ex)) == EXPECTED[:1]


def test_resynchronises_after_garbage_and_bad_frames() -> None:
    corrupted = bytearray(FRAMES[1])
    corrupted[-5] ^= 0x01  # a data byte flipped: checksum fails
    noise = b"\x68\x00\x12\x68\xff\x16garbage\x68"
    stream = noise + FRAMES[0] + bytes(corrupted) + b"\x00\x16\x68" + FRAMES[2]
    ex = FrameExtractor()
    ex.feed(stream)
    assert _values(list(ex)) == [EXPECTED[0], EXPECTED[2]]
    assert ex.stats.bad_checksums >= 1
    assert ex.stats.garbage_bytes > 0


def test_skips_frames_not_addressed_to_us() -> None:
    mine = "000000000003"
    ex = FrameExtractor(lambda address, control: address_matches(address, mine))
    ex.feed(b"".join(_request(f"{i:012d}") for i in range(1, 6)))
    got = list(ex)
    assert [f.address for f in got] == [mine]
    assert ex.stats.skipped_frames == 4


def test_wildcard_addresses() -> None:
    assert address_matches("AAAAAAAAAAAA", "000000001234")
    assert address_matches("0000000012AA", "000000001234")
    assert not address_matches("0000000013AA", "000000001234")


def test_buffer_is_bounded() -> None:
    ex = FrameExtractor(max_buffer=256)
    ex.feed(b"\x68" * 10_000)
    assert ex.next_frame() is None
    assert ex.pending <= 256
    ex.clear()
    ex.feed(FRAMES[4])
    assert _values(list(ex)) == EXPECTED[4:]


@settings(max_examples=300, deadline=None)
@given(
    junk=st.lists(st.binary(max_size=40), min_size=6, max_size=6),
    cuts=st.lists(st.integers(1, 30), min_size=1, max_size=40),
)
def test_random_garbage_and_splits(junk: list[bytes], cuts: list[int]) -> None:
    # Garbage that happens to hold no 68 cannot fake a frame; every real frame comes out.
    clean = [j.replace(b"\x68", b"\x00") for j in junk]
    stream = b"".join(c + f for c, f in zip(clean, FRAMES, strict=False)) + clean[-1]
    ex = FrameExtractor()
    got: list[Frame] = []
    pos = 0
    i = 0
    while pos < len(stream):
        step = cuts[i % len(cuts)]
        ex.feed(stream[pos : pos + step])
        got.extend(ex)
        pos += step
        i += 1
    assert _values(got) == EXPECTED


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=300))
def test_arbitrary_bytes_never_raise(data: bytes) -> None:
    ex = FrameExtractor()
    ex.feed(data)
    for frame in ex:
        assert len(frame.address) == 12
    ex.feed(FRAMES[0])
    # Whatever came before, a complete valid frame after it is still found
    # unless the junk left a long half-header that swallows it; feed more to flush.
    ex.feed(FRAMES[0] * 12)  # more than the longest frame (267 bytes)
    assert any(f.address == EXPECTED[0][0] for f in ex)


def test_false_long_header_does_not_hide_the_real_frame() -> None:
    # Garbage shaped like the header of a 200-byte frame, then a real reply.
    false_header = bytes.fromhex("681122334455666891C8")
    ex = FrameExtractor()
    ex.feed(false_header + FRAMES[3])
    assert _values(list(ex)) == [EXPECTED[3]]
    assert ex.stats.garbage_bytes >= len(false_header)


def test_long_frame_arriving_slowly_is_still_awaited() -> None:
    item = by_name("energy_active_forward_block")
    body = encode_value(item, {m.name: Decimal("1.68") for m in item.members})
    long = build_frame(ReadReply(address="000000000068", di=item.di, body=body * 1).to_frame())
    ex = FrameExtractor()
    for i in range(0, len(long), 3):
        ex.feed(long[i : i + 3])
        got = list(ex)
        if i + 3 < len(long):
            assert got == []
    assert ex.stats.frames == 1

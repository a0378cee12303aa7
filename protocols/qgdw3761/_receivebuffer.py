"""Find 376.1 frames in a TCP or serial byte stream: skip garbage and FE, wait for the rest.

Never raises on bad bytes.  Every rejected candidate is counted and remembered with its
offset in the stream, so a driver can log what it threw away.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Iterator
from dataclasses import dataclass, field

from ._errors import FrameError
from ._frame import END, FIXED_SIZE, HEADER_SIZE, MAX_L1, MIN_L1, START, Frame, parse_frame

PROTOCOL_ID = 2


@dataclass(frozen=True, slots=True)
class Reject:
    """A candidate frame thrown away: its stream offset and why."""

    offset: int
    reason: str


@dataclass(slots=True)
class ExtractorStats:
    frames: int = 0
    garbage_bytes: int = 0  # bytes that belonged to no frame (FE bytes are not counted)
    bad_lengths: int = 0  # the two L copies differ
    bad_protocol: int = 0  # protocol id in L is not 2, or L1 out of range
    bad_checksums: int = 0
    bad_end: int = 0  # no 16 where L1 puts the end byte
    rejects: deque[Reject] = field(default_factory=lambda: deque(maxlen=32))


class FrameExtractor:
    """Feed bytes in any chunks; take complete, valid frames out in order.

    ``stream_offset`` of a reject counts every byte ever fed.
    """

    def __init__(self, *, max_buffer: int = MAX_L1 + FIXED_SIZE + 64) -> None:
        self._buf = bytearray()
        self._max = max_buffer
        self._dropped = 0  # bytes removed from the front so far
        self.stats = ExtractorStats()
        self.last_raw = b""

    def feed(self, data: bytes) -> None:
        self._buf += data
        if len(self._buf) > self._max:
            drop = len(self._buf) - self._max
            self._garbage(drop)

    @property
    def pending(self) -> int:
        """Bytes held that may still become a frame."""
        return len(self._buf)

    def clear(self) -> None:
        self._dropped += len(self._buf)
        self._buf.clear()

    def __iter__(self) -> Iterator[Frame]:
        while (f := self.next_frame()) is not None:
            yield f

    def _garbage(self, n: int) -> None:
        self.stats.garbage_bytes += n - self._buf.count(0xFE, 0, n)
        del self._buf[:n]
        self._dropped += n

    def _reject(self, kind: str, reason: str) -> None:
        s = self.stats
        setattr(s, kind, getattr(s, kind) + 1)
        s.rejects.append(Reject(self._dropped, reason))

    def _header(self, pos: int) -> int:
        """Frame length of a plausible header at ``pos``, 0 if none, -1 if too few bytes."""
        buf = self._buf
        if pos + HEADER_SIZE > len(buf):
            return -1
        length = buf[pos + 1] | buf[pos + 2] << 8
        if buf[pos + 5] != START or buf[pos + 3] | buf[pos + 4] << 8 != length \
                or length & 3 != PROTOCOL_ID or not MIN_L1 <= length >> 2 <= MAX_L1:
            return 0
        return (length >> 2) + FIXED_SIZE

    def _complete_frame_after(self, pos: int) -> int:
        """Offset of the first complete, valid frame at or after ``pos``, or -1."""
        buf = self._buf
        while (pos := buf.find(START, pos)) >= 0:
            total = self._header(pos)
            if total > 0 and pos + total <= len(buf) and buf[pos + total - 1] == END \
                    and sum(buf[pos + HEADER_SIZE : pos + total - 2]) & 0xFF \
                    == buf[pos + total - 2]:
                return pos
            pos += 1
        return -1

    def next_frame(self) -> Frame | None:
        buf = self._buf
        while True:
            start = buf.find(START)
            if start < 0:
                self._garbage(len(buf))
                return None
            if start:
                self._garbage(start)
            if len(buf) < HEADER_SIZE:
                return None
            length = buf[1] | buf[2] << 8
            if buf[5] != START:
                self._garbage(1)
                continue
            if buf[3] | buf[4] << 8 != length:
                self._reject("bad_lengths", "the two copies of L differ")
                self._garbage(1)
                continue
            if length & 3 != PROTOCOL_ID or not MIN_L1 <= length >> 2 <= MAX_L1:
                self._reject("bad_protocol", f"L {length:04X}: protocol id {length & 3}, "
                                             f"L1 {length >> 2}")
                self._garbage(1)
                continue
            total = (length >> 2) + FIXED_SIZE
            if len(buf) < total:
                # Garbage can look like the header of a long frame; if a complete valid
                # frame already follows, the header was false: skip to that frame.
                later = self._complete_frame_after(1)
                if later < 0:
                    return None
                self._reject("bad_end", "a later frame starts inside this one")
                self._garbage(later)
                continue
            if buf[total - 1] != END:
                self._reject("bad_end", f"expected end byte 16 at +{total - 1}, "
                                        f"got {buf[total - 1]:02X}")
                self._garbage(1)
                continue
            cs = sum(buf[HEADER_SIZE : total - 2]) & 0xFF
            if cs != buf[total - 2]:
                self._reject("bad_checksums", f"checksum {buf[total - 2]:02X}, computed {cs:02X}")
                self._garbage(1)
                continue
            raw = bytes(buf[:total])
            try:
                frame = parse_frame(raw)
            except FrameError as e:
                # Valid framing but no room for the AUX its C/AFN/SEQ announce.
                self._reject("bad_protocol", e.problem)
                self._garbage(1)
                continue
            del buf[:total]
            self._dropped += total
            self.stats.frames += 1
            self.last_raw = raw
            return frame

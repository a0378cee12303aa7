"""Find frames in a byte stream: skip garbage and wake-up bytes, wait for partial frames.

Never raises on bad bytes; what it throws away is counted so a driver can log it.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass

from ._frame import END, HEADER_SIZE, START, Frame, frame_of

AddressFilter = Callable[[str, int], bool]


@dataclass(slots=True)
class ExtractorStats:
    frames: int = 0
    garbage_bytes: int = 0  # bytes that belonged to no frame (FE bytes are not counted)
    bad_checksums: int = 0
    skipped_frames: int = 0  # valid frames the filter refused (not addressed to us)


def address_matches(pattern: str, address: str) -> bool:
    """True if ``address`` fits ``pattern`` where ``A`` nibbles in the pattern match anything."""
    if pattern == address:
        return True
    return len(pattern) == len(address) and all(
        p == "A" or p == a for p, a in zip(pattern, address, strict=True)
    )


class FrameExtractor:
    """Feed bytes in any chunks; take complete, checksum-valid frames out in order.

    ``accept(address, control)`` decides which frames are for us (e.g. this
    meter's address, or replies only); refused frames are counted and dropped.
    """

    def __init__(self, accept: AddressFilter | None = None, *, max_buffer: int = 4096) -> None:
        self._buf = bytearray()
        self._accept = accept
        self._max = max_buffer
        self.stats = ExtractorStats()
        self.last_raw = b""

    def feed(self, data: bytes) -> None:
        self._buf += data
        if len(self._buf) > self._max:
            # Only the tail can still start a frame; count the rest as garbage.
            drop = len(self._buf) - self._max
            self.stats.garbage_bytes += drop
            del self._buf[:drop]

    @property
    def pending(self) -> int:
        """Bytes held that may still become a frame."""
        return len(self._buf)

    def clear(self) -> None:
        self._buf.clear()

    def __iter__(self) -> Iterator[Frame]:
        while (f := self.next_frame()) is not None:
            yield f

    def _complete_frame_after(self, pos: int) -> int:
        """Offset of the first complete, checksum-valid frame at or after ``pos``, or -1."""
        buf = self._buf
        n = len(buf)
        while (pos := buf.find(START, pos)) >= 0:
            if pos + HEADER_SIZE <= n and buf[pos + 7] == START:
                end = pos + HEADER_SIZE + buf[pos + 9] + 2
                if end <= n and buf[end - 1] == END \
                        and (sum(buf[pos : end - 2]) & 0xFF) == buf[end - 2]:
                    return pos
            pos += 1
        return -1

    def next_frame(self) -> Frame | None:
        buf = self._buf
        stats = self.stats
        while True:
            start = buf.find(START)
            if start < 0:
                stats.garbage_bytes += len(buf) - buf.count(0xFE)
                buf.clear()
                return None
            if start:
                stats.garbage_bytes += start - buf.count(0xFE, 0, start)
                del buf[:start]
            if len(buf) < HEADER_SIZE:
                return None
            if buf[7] != START:
                stats.garbage_bytes += 1
                del buf[:1]
                continue
            length = buf[9]
            total = HEADER_SIZE + length + 2
            if len(buf) < total:
                # Garbage can look like the header of a long frame; if a complete valid
                # frame already follows, the header was false: skip to that frame.
                later = self._complete_frame_after(1)
                if later < 0:
                    return None
                stats.garbage_bytes += later - buf.count(0xFE, 0, later)
                del buf[:later]
                continue
            if buf[total - 1] != END or (sum(buf[: total - 2]) & 0xFF) != buf[total - 2]:
                # Not a frame after all: resynchronise on the next 68.
                if buf[total - 1] == END:
                    stats.bad_checksums += 1
                stats.garbage_bytes += 1
                del buf[:1]
                continue
            raw = bytes(buf[:total])
            del buf[:total]
            frame = frame_of(raw, 0, length)  # parse_frame's own slicing, checks done here
            if self._accept is not None and not self._accept(frame.address, frame.control):
                stats.skipped_frames += 1
                continue
            stats.frames += 1
            self.last_raw = raw
            return frame

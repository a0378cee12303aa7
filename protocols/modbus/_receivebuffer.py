"""Find RTU frames in a byte stream (sans-I/O).

RTU has no start byte: a frame is a unit id, a function, a length implied by the
function (and a byte count), and a CRC.  :class:`ReplyHunter` knows the request
outstanding, so it looks only for a frame of that function (or its exception reply);
:class:`FrameHunter` knows nothing and tries every offset for any frame this codec
knows, request or response.  Both skip garbage before a frame, pass over candidates whose
CRC fails (counted), and wait when a candidate is still arriving.  Neither raises on bad
bytes.
"""

from __future__ import annotations

from dataclasses import dataclass

from ._rtu import (
    FrameKind,
    RtuError,
    RtuFrame,
    crc16,
    parse_pdu,
    request_length,
    response_length,
)

__all__ = ["FrameHunter", "HunterStats", "ReplyHunter", "reply_size"]

_WRITE_REPLY = 8  # unit, function, address (2), value/count (2), CRC (2)
_EXCEPTION_REPLY = 5  # unit, function | 0x80, code, CRC (2)


def reply_size(function: int) -> int:
    """Length of the normal RTU reply to ``function``; 0: byte count at [2] + 5 (reads)."""
    return 0 if function in (3, 4) else _WRITE_REPLY


@dataclass(slots=True)
class HunterStats:
    frames: int = 0
    garbage_bytes: int = 0  # bytes that belonged to no frame


class ReplyHunter:
    """Completion for one RTU request: ``feed(chunk)`` is True once the reply is in.

    The reply is the first frame, at any offset, whose function is ``function`` (length
    per :func:`reply_size`) or ``function | 0x80`` (5 bytes) and whose CRC holds; its
    unit id is not checked here (a reply from another unit is the caller's error to
    report).  Then ``unit`` and ``pdu`` (function byte onwards, without the CRC) are set
    and ``garbage`` counts the bytes around it.
    """

    __slots__ = ("bad_checksums", "buffer", "exception", "function", "garbage", "pdu",
                 "rejected", "size", "start", "unit")

    def __init__(self, function: int) -> None:
        self.buffer = bytearray()
        self.function = function
        self.exception = function | 0x80
        self.size = reply_size(function)
        self.start = 0  # nothing before this can start the reply
        self.rejected: set[int] = set()  # candidate offsets whose CRC failed
        self.unit = -1
        self.pdu = b""
        self.bad_checksums = 0
        self.garbage = 0

    def feed(self, chunk: bytes) -> bool:
        buf = self.buffer
        buf += chunk
        n = len(buf)
        first_pending = -1
        i = self.start
        while i + 1 < n:
            fn = buf[i + 1]
            if fn == self.function:
                size = self.size
                if not size:
                    if i + 2 >= n:
                        if first_pending < 0:
                            first_pending = i
                        break
                    size = buf[i + 2] + 5
            elif fn == self.exception:
                size = _EXCEPTION_REPLY
            else:
                i += 1
                continue
            end = i + size
            if end > n:  # may be the reply, still arriving; a later offset may be it too
                if first_pending < 0:
                    first_pending = i
            elif i not in self.rejected:
                if crc16(memoryview(buf)[i : end - 2]) == buf[end - 2] | (buf[end - 1] << 8):
                    self.unit = buf[i]
                    self.pdu = bytes(buf[i + 1 : end - 2])
                    self.garbage = n - size
                    return True
                self.rejected.add(i)
                self.bad_checksums += 1
            i += 1
        self.start = first_pending if first_pending >= 0 else max(n - 1, 0)
        return False


class FrameHunter:
    """Any RTU frames, requests and responses, in a stream fed in any chunks.

    ``feed(data)``, then ``next_frame()`` until None.  At each offset a request and a
    response are both tried (a read request and a read reply can start alike); the one
    whose CRC holds and whose PDU decodes wins, the request first.  ``units`` limits the
    unit ids taken (None: any).  Bytes that start no frame are counted as garbage once
    more bytes could no longer make them one.
    """

    def __init__(self, units: frozenset[int] | None = None, *, max_buffer: int = 4096) -> None:
        self._buf = bytearray()
        self._units = units
        self._max = max_buffer
        self.stats = HunterStats()

    def feed(self, data: bytes) -> None:
        self._buf += data
        if len(self._buf) > self._max:
            drop = len(self._buf) - self._max
            self.stats.garbage_bytes += drop
            del self._buf[:drop]

    @property
    def pending(self) -> int:
        return len(self._buf)

    def next_frame(self) -> RtuFrame | None:
        buf = self._buf
        n = len(buf)
        waiting = -1  # first offset that may still become a frame
        for i in range(n - 1):
            if self._units is not None and buf[i] not in self._units:
                continue
            found, incomplete = self._frame_at(i)
            if found is not None:
                self.stats.garbage_bytes += i
                self.stats.frames += 1
                del buf[: i + len(found.raw)]
                return found
            if incomplete and waiting < 0:
                waiting = i
        keep = waiting if waiting >= 0 else max(n - 1, 0)
        # Nothing before ``keep`` can start a frame any more.
        if keep:
            self.stats.garbage_bytes += keep
            del buf[:keep]
        return None

    def _frame_at(self, i: int) -> tuple[RtuFrame | None, bool]:
        buf = self._buf
        incomplete = False
        for kind, length in ((FrameKind.REQUEST, request_length(buf, i)),
                             (FrameKind.RESPONSE, response_length(buf, i))):
            if length is None or i + length > len(buf):
                incomplete = True
                continue
            if length < 4:
                continue
            end = i + length
            if crc16(memoryview(buf)[i : end - 2]) != buf[end - 2] | (buf[end - 1] << 8):
                continue
            try:
                pdu = parse_pdu(bytes(buf[i + 1 : end - 2]), kind)
            except RtuError:
                continue
            return RtuFrame(buf[i], pdu, bytes(buf[i:end])), False
        return None, incomplete

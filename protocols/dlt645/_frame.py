"""The DL/T645 link frame, shared by the 2007 and 1997 editions.

``[FE..] 68 A0..A5 68 C L D0..D(L-1) CS 16``.  :data:`FRAME_FORMAT`, a construct
definition, is the declarative reference; :func:`parse_frame` and :func:`build_frame`
are that layout sliced by hand, which every caller (the drivers' frame extractor too)
uses: construct parsing cost more than the rest of a reply's decode.  The construct
path stays behind ``compiled=False`` for the tests, which check that both give the same
frame, bytes and error (byte offset and text) on every reference frame and on
mutations of them.
"""

from __future__ import annotations

from enum import IntEnum, StrEnum
from functools import lru_cache
from typing import NamedTuple

from construct import Bytes, Const, ConstructError, Int8ub, Struct, this

from ._bcd import MINUS_33, PLUS_33
from ._errors import FrameError

PREAMBLE = 0xFE
START = 0x68
END = 0x16
HEADER_SIZE = 10  # 68 + address + 68 + C + L
MAX_DATA = 255


class Version(StrEnum):
    V2007 = "2007"
    V1997 = "1997"


class Function2007(IntEnum):
    TIME_SYNC = 0x08
    READ = 0x11
    READ_FOLLOW_UP = 0x12
    READ_ADDRESS = 0x13
    WRITE = 0x14
    WRITE_ADDRESS = 0x15
    FREEZE = 0x16
    CHANGE_BAUD = 0x17
    CHANGE_PASSWORD = 0x18
    CLEAR_DEMAND = 0x19
    CLEAR_METER = 0x1A
    CLEAR_EVENTS = 0x1B
    REMOTE_CONTROL = 0x1C
    SECURITY = 0x03  # 安全认证: the State Grid cost-control extension (ESAM)


class Function1997(IntEnum):
    READ = 0x01
    READ_FOLLOW_UP = 0x02
    WRITE = 0x04
    TIME_SYNC = 0x08
    WRITE_ADDRESS = 0x0A
    CHANGE_BAUD = 0x0C
    CHANGE_PASSWORD = 0x0F
    CLEAR_DEMAND = 0x10


Function = Function2007 | Function1997

FUNCTIONS_2007 = frozenset(int(f) for f in Function2007)
FUNCTIONS_1997 = frozenset(int(f) for f in Function1997)

DIRECTION_BIT = 0x80
ABNORMAL_BIT = 0x40
FOLLOW_UP_BIT = 0x20
FUNCTION_MASK = 0x1F


def version_of(function: int) -> Version:
    """Which edition a function code belongs to (08, shared by both, counts as 2007)."""
    if function in FUNCTIONS_2007:
        return Version.V2007
    if function in FUNCTIONS_1997:
        return Version.V1997
    raise ValueError(f"function code {function:02X} is in neither DL/T645-2007 nor -1997")


def function_enum(function: int, version: Version) -> Function:
    if version is Version.V1997:
        return Function1997(function)
    return Function2007(function)


def control_code(
    function: int, *, reply: bool = False, abnormal: bool = False, follow_up: bool = False
) -> int:
    return (
        (function & FUNCTION_MASK)
        | (DIRECTION_BIT if reply else 0)
        | (ABNORMAL_BIT if abnormal else 0)
        | (FOLLOW_UP_BIT if follow_up else 0)
    )


FRAME_FORMAT = Struct(
    "start" / Const(bytes((START,))),
    "address" / Bytes(6),
    "start2" / Const(bytes((START,))),
    "control" / Int8ub,
    "length" / Int8ub,
    "data" / Bytes(this.length),
    "checksum" / Int8ub,
    "end" / Const(bytes((END,))),
)
# Where each field of FRAME_FORMAT starts, so a construct error maps to a byte offset.
_FIELD_OFFSETS = {"start": 0, "address": 1, "start2": 7, "control": 8, "length": 9, "data": 10}
_FIELD_PROBLEMS = {
    "start": "expected start byte 68",
    "start2": "expected second start byte 68 after the address",
    "end": "expected end byte 16",
}


class Frame(NamedTuple):
    """One link frame: ``address`` as 12 digits (``A`` for wildcards), ``data`` without +33H."""

    address: str
    control: int
    data: bytes = b""

    @property
    def function(self) -> int:
        return self.control & FUNCTION_MASK

    @property
    def is_reply(self) -> bool:
        return bool(self.control & DIRECTION_BIT)

    @property
    def abnormal(self) -> bool:
        return bool(self.control & ABNORMAL_BIT)

    @property
    def follow_up(self) -> bool:
        return bool(self.control & FOLLOW_UP_BIT)


def address_to_wire(address: str) -> bytes:
    return bytes.fromhex(address)[::-1]


@lru_cache(maxsize=4096)
def address_from_wire(raw: bytes) -> str:
    return raw[::-1].hex().upper()


def checksum(frame_bytes: bytes | bytearray | memoryview) -> int:
    return sum(frame_bytes) & 0xFF


def skip_preamble(raw: bytes) -> int:
    """Number of FE wake-up bytes at the start of ``raw``."""
    return len(raw) - len(raw.lstrip(b"\xfe"))


def frame_of(raw: bytes, start: int, length: int) -> Frame:
    """The frame whose first 68 is at ``raw[start]``, its data ``length`` bytes long,
    once the caller has checked it (start bytes, checksum, end byte)."""
    data = start + HEADER_SIZE
    return Frame(address_from_wire(raw[start + 1 : start + 7]), raw[start + 8],
                 raw[data : data + length].translate(MINUS_33))


def parse_frame(raw: bytes, *, compiled: bool = True) -> Frame:
    """Parse exactly one frame (with optional FE preamble); FrameError names the byte at fault.

    ``compiled=False``: through the construct definition, the reference (tests only).
    """
    if not compiled:
        return _parse_with_construct(raw)
    size = len(raw)
    base = size - len(raw.lstrip(b"\xfe"))
    n = size - base
    if n < HEADER_SIZE + 2:
        raise FrameError(size, f"frame too short: {n} bytes, a frame has at least 12")
    if raw[base] != START:
        raise FrameError(base, f"expected start byte 68, got {raw[base]:02X}")
    if raw[base + 7] != START:
        raise FrameError(base + 7, "expected second start byte 68 after the address, "
                                   f"got {raw[base + 7]:02X}")
    length = raw[base + 9]
    total = HEADER_SIZE + length + 2
    if n < total:
        raise _truncated(base, n, length)
    cs = base + total - 2
    if raw[cs + 1] != END:
        raise FrameError(cs + 1, f"expected end byte 16, got {raw[cs + 1]:02X}")
    if n > total:
        raise FrameError(base + total, f"{n - total} bytes after the end byte 16")
    expected = sum(raw[base:cs]) & 0xFF
    if raw[cs] != expected:
        raise FrameError(cs, f"checksum {raw[cs]:02X} does not match computed {expected:02X}")
    return frame_of(raw, base, length)


def _truncated(base: int, n: int, length: int) -> FrameError:
    return FrameError(base + n, f"frame truncated: data length {length} needs "
                                f"{HEADER_SIZE + length + 2} bytes, got {n}")


def _parse_with_construct(raw: bytes) -> Frame:
    base = skip_preamble(raw)
    body = raw[base:] if base else raw
    if len(body) < HEADER_SIZE + 2:
        raise FrameError(
            base + len(body), f"frame too short: {len(body)} bytes, a frame has at least 12"
        )
    try:
        c = FRAME_FORMAT.parse(body)
    except ConstructError as e:
        raise _frame_error(e, body, base) from None
    length = c.length
    total = HEADER_SIZE + length + 2
    if len(body) > total:
        raise FrameError(base + total, f"{len(body) - total} bytes after the end byte 16")
    expected = sum(body[: HEADER_SIZE + length]) & 0xFF
    if c.checksum != expected:
        raise FrameError(
            base + HEADER_SIZE + length,
            f"checksum {c.checksum:02X} does not match computed {expected:02X}",
        )
    return Frame(address_from_wire(c.address), c.control, c.data.translate(MINUS_33))


def _frame_error(e: ConstructError, body: bytes, base: int) -> FrameError:
    path = str(getattr(e, "path", "") or "")
    field = path.rsplit("-> ", 1)[-1].strip() if path else ""
    length = body[9] if len(body) > 9 else 0
    offsets = dict(_FIELD_OFFSETS, checksum=HEADER_SIZE + length, end=HEADER_SIZE + length + 1)
    if field in offsets:
        offset = offsets[field]
        if offset >= len(body) or field == "data":  # data: fewer bytes than L says
            return FrameError(
                base + len(body),
                f"frame truncated: data length {length} needs {HEADER_SIZE + length + 2} bytes, "
                f"got {len(body)}",
            )
        got = f", got {body[offset]:02X}" if offset < len(body) else ""
        return FrameError(base + offset, _FIELD_PROBLEMS.get(field, f"bad {field}") + got)
    return FrameError(base, f"not a DL/T645 frame ({e})")


def build_frame(frame: Frame, *, preamble: int = 4, compiled: bool = True) -> bytes:
    """Wire bytes of ``frame``: data gets +33H, checksum computed, ``preamble`` FE bytes first.

    ``compiled=False``: through the construct definition, the reference (tests only).
    """
    if len(frame.data) > MAX_DATA:
        raise ValueError(f"data field of {len(frame.data)} bytes exceeds {MAX_DATA}")
    address = address_to_wire(frame.address)
    if len(address) != 6:
        raise ValueError(f"address {frame.address!r} is not 12 digits")
    data = frame.data.translate(PLUS_33)
    head = bytes((START,)) + address + bytes((START, frame.control, len(data)))
    cs = (sum(head) + sum(data)) & 0xFF
    if compiled:
        return b"\xfe" * preamble + head + data + bytes((cs, END))
    body: bytes = FRAME_FORMAT.build(
        {"address": address, "control": frame.control, "length": len(data), "data": data,
         "checksum": cs}
    )
    return b"\xfe" * preamble + body

"""Modbus PDUs and RTU frames (ADUs), built and parsed without I/O.

RTU frame: ``unit | function | data | CRC`` with CRC-16/MODBUS sent low byte first.
Only the function codes the collector uses are known: 03/04 (read holding / input
registers), 05 (write single coil), 06 (write single register), 10H (write multiple
registers), and their exception replies (``function | 0x80``).  The data field of each
is one construct definition, compiled once at import.  The two steps every poll takes,
building a read request and parsing a read reply, use ``struct`` instead (half the time
of the compiled construct, which matters at thousands of polls a second); a test keeps
them in agreement with the construct layouts.

Errors are :class:`RtuError` (``offset``: the byte where the frame went wrong) and its
subclass :class:`CrcError`.
"""

from __future__ import annotations

import struct
from collections.abc import Sequence
from dataclasses import dataclass
from enum import StrEnum
from typing import Any, NamedTuple

from construct import Bytes, ConstructError, Int8ub, Int16ub, Struct, this

__all__ = [
    "COIL_ON",
    "EXCEPTION_NAMES",
    "FUNCTIONS",
    "MAX_READ_COUNT",
    "MAX_WRITE_COUNT",
    "CrcError",
    "FrameKind",
    "ModbusPdu",
    "RtuError",
    "RtuFrame",
    "check_crc",
    "crc16",
    "exception_name",
    "exception_pdu",
    "parse_pdu",
    "parse_rtu",
    "read_reply_pdu",
    "read_request_pdu",
    "request_length",
    "response_length",
    "rtu_frame",
    "write_coil_pdu",
    "write_multiple_pdu",
    "write_multiple_reply_pdu",
    "write_register_pdu",
]

FUNCTIONS: dict[int, str] = {
    0x03: "read_holding_registers",
    0x04: "read_input_registers",
    0x05: "write_single_coil",
    0x06: "write_single_register",
    0x10: "write_multiple_registers",
}
"""Function codes this codec knows, by their names in the specification."""

EXCEPTION_NAMES: dict[int, str] = {
    0x01: "ILLEGAL_FUNCTION",
    0x02: "ILLEGAL_DATA_ADDRESS",
    0x03: "ILLEGAL_DATA_VALUE",
    0x04: "SERVER_DEVICE_FAILURE",
    0x05: "ACKNOWLEDGE",
    0x06: "SERVER_DEVICE_BUSY",
    0x07: "NEGATIVE_ACKNOWLEDGE",
    0x08: "MEMORY_PARITY_ERROR",
    0x0A: "GATEWAY_PATH_UNAVAILABLE",
    0x0B: "GATEWAY_TARGET_DEVICE_FAILED_TO_RESPOND",
}
"""Exception codes by their names in the Modbus application protocol specification."""


def exception_name(code: int) -> str:
    """The specification's name of an exception code (``EXCEPTION_0C`` if none)."""
    return EXCEPTION_NAMES.get(code, f"EXCEPTION_{code:02X}")


MAX_READ_COUNT = 125  # registers per 03/04 request
MAX_WRITE_COUNT = 123  # registers per 10H request
COIL_ON = 0xFF00

_READS = (3, 4)
_SINGLE_WRITES = (5, 6)


class RtuError(ValueError):
    """Bytes that are not a valid Modbus frame; ``offset`` is the byte where it went wrong."""

    def __init__(self, offset: int, problem: str) -> None:
        super().__init__(f"byte {offset}: {problem}")
        self.offset = offset
        self.problem = problem


class CrcError(RtuError):
    """A frame whose CRC does not match: ``received`` and ``computed`` as sent-order ints
    (the low byte first, as the frame shows them: ``0xC40B`` reads ``C4 0B``)."""

    def __init__(self, offset: int, received: int, computed: int) -> None:
        super().__init__(offset, f"CRC {received:04X} does not match computed {computed:04X}")
        self.received = received
        self.computed = computed


# ---- CRC-16/MODBUS ---------------------------------------------------------------------------

def _table() -> tuple[int, ...]:
    out = []
    for byte in range(256):
        crc = byte
        for _ in range(8):
            crc = (crc >> 1) ^ 0xA001 if crc & 1 else crc >> 1
        out.append(crc)
    return tuple(out)


_CRC_TABLE = _table()


def crc16(data: bytes | bytearray | memoryview) -> int:
    """CRC-16/MODBUS of ``data`` as a number (put on the wire low byte first)."""
    crc = 0xFFFF
    table = _CRC_TABLE
    for b in data:
        crc = (crc >> 8) ^ table[(crc ^ b) & 0xFF]
    return crc


def rtu_frame(unit: int, pdu: bytes) -> bytes:
    """The RTU frame of ``pdu`` for ``unit``: unit id, PDU, CRC (low byte first)."""
    if not 0 <= unit <= 255:
        raise ValueError(f"unit id {unit} is not 0-255")
    body = bytes((unit,)) + pdu
    return body + crc16(body).to_bytes(2, "little")


# ---- data field layouts ------------------------------------------------------------------------

_ADDRESS_COUNT = Struct("address" / Int16ub, "count" / Int16ub)
_ADDRESS_VALUE = Struct("address" / Int16ub, "value" / Int16ub)
_READ_REPLY = Struct("byte_count" / Int8ub, "data" / Bytes(this.byte_count))
_WRITE_MULTIPLE = Struct("address" / Int16ub, "count" / Int16ub, "byte_count" / Int8ub,
                         "data" / Bytes(this.byte_count))
_EXCEPTION = Struct("code" / Int8ub)

ADDRESS_COUNT = _ADDRESS_COUNT.compile()
ADDRESS_VALUE = _ADDRESS_VALUE.compile()
READ_REPLY = _READ_REPLY.compile()
WRITE_MULTIPLE = _WRITE_MULTIPLE.compile()
EXCEPTION = _EXCEPTION.compile()


def _build(layout: Any, fields: dict[str, Any]) -> bytes:
    return bytes(layout.build(fields))


_READ_REQUEST = struct.Struct(">BHH")  # function, then ADDRESS_COUNT


def _check_u16(value: int, what: str) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= 0xFFFF:
        raise ValueError(f"{what} {value!r} is not 0-65535")


def read_request_pdu(function: int, start: int, count: int) -> bytes:
    """03/04: ``count`` registers from ``start``."""
    if function not in _READS:
        raise ValueError(f"function {function!r} is not 3 (holding) or 4 (input registers)")
    if not 1 <= count <= MAX_READ_COUNT:
        raise ValueError(f"register count {count!r} is not 1-{MAX_READ_COUNT}")
    _check_u16(start, "start address")
    if start + count > 0x10000:
        raise ValueError(f"registers {start}+{count} do not fit 0-65535")
    return _READ_REQUEST.pack(function, start, count)


def read_reply_pdu(function: int, words: Sequence[int]) -> bytes:
    """03/04 reply carrying ``words``."""
    if function not in _READS:
        raise ValueError(f"function {function!r} is not 3 or 4")
    if not 1 <= len(words) <= MAX_READ_COUNT:
        raise ValueError(f"{len(words)} registers: a read reply carries 1-{MAX_READ_COUNT}")
    for w in words:
        _check_u16(w, "register value")
    data = struct.pack(f">{len(words)}H", *words)
    return bytes((function,)) + _build(READ_REPLY, {"byte_count": len(data), "data": data})


def write_coil_pdu(address: int, on: bool) -> bytes:
    """05 request (and its echo reply): coil on (FF00) or off (0000)."""
    _check_u16(address, "coil address")
    return b"\x05" + _build(ADDRESS_VALUE, {"address": address, "value": COIL_ON if on else 0})


def write_register_pdu(address: int, value: int) -> bytes:
    """06 request (and its echo reply)."""
    _check_u16(address, "register address")
    _check_u16(value, "register value")
    return b"\x06" + _build(ADDRESS_VALUE, {"address": address, "value": value})


def write_multiple_pdu(address: int, values: Sequence[int]) -> bytes:
    """10H request: ``values`` into consecutive holding registers from ``address``."""
    _check_u16(address, "register address")
    if not 1 <= len(values) <= MAX_WRITE_COUNT:
        raise ValueError(f"{len(values)} registers: a write carries 1-{MAX_WRITE_COUNT}")
    if address + len(values) > 0x10000:
        raise ValueError(f"registers {address}+{len(values)} do not fit 0-65535")
    for v in values:
        _check_u16(v, "register value")
    data = struct.pack(f">{len(values)}H", *values)
    return b"\x10" + _build(WRITE_MULTIPLE, {"address": address, "count": len(values),
                                           "byte_count": len(data), "data": data})


def write_multiple_reply_pdu(address: int, count: int) -> bytes:
    """10H reply: the address and count written."""
    _check_u16(address, "register address")
    _check_u16(count, "register count")
    return b"\x10" + _build(ADDRESS_COUNT, {"address": address, "count": count})


def exception_pdu(function: int, code: int) -> bytes:
    """Exception reply to ``function`` with exception ``code``."""
    if not 1 <= function <= 0x7F or not 0 <= code <= 255:
        raise ValueError(f"function {function!r} / exception code {code!r} out of range")
    return bytes((function | 0x80, code))


# ---- parsing ------------------------------------------------------------------------------------

class FrameKind(StrEnum):
    REQUEST = "request"
    RESPONSE = "response"
    EXCEPTION = "exception"


class ModbusPdu(NamedTuple):
    """One decoded PDU.

    ``function`` is the request's function (without 0x80 on an exception); ``address``
    the start address (03/04 requests, 05/06/10H both ways; None on a read reply, which
    does not carry it); ``quantity`` the number of registers (reads, 10H); ``values`` the
    register words (read replies, 06, 10H requests; 05: FF00/0000); ``exception`` the
    exception code.  A NamedTuple: made for every reply, and a third of the cost of a
    frozen dataclass.
    """

    kind: FrameKind
    function: int
    address: int | None = None
    quantity: int | None = None
    values: tuple[int, ...] = ()
    exception: int | None = None


@dataclass(frozen=True, slots=True)
class RtuFrame:
    """One RTU frame: its unit id, its PDU decoded, and the frame bytes."""

    unit: int
    pdu: ModbusPdu
    raw: bytes

    @property
    def function(self) -> int:
        return self.pdu.function

    @property
    def kind(self) -> FrameKind:
        return self.pdu.kind


def _words(data: bytes) -> tuple[int, ...]:
    return struct.unpack(f">{len(data) // 2}H", data)


def parse_pdu(pdu: bytes, kind: FrameKind | str, *, offset: int = 0) -> ModbusPdu:
    """Decode a PDU as a ``request`` or a ``response`` (an exception reply is a response).

    RtuError (offsets counted from ``offset``) when the PDU does not fit its function.
    """
    if not pdu:
        raise RtuError(offset, "no function code")
    fn = pdu[0]
    body = pdu[1:]
    at = offset + 1
    if kind is not FrameKind.RESPONSE and kind is not FrameKind.REQUEST:
        try:
            kind = FrameKind(kind)
        except ValueError:
            raise ValueError(f"kind {kind!r} is not request or response") from None
        if kind is FrameKind.EXCEPTION:
            kind = FrameKind.RESPONSE
    if fn & 0x80:
        if kind == FrameKind.REQUEST:
            raise RtuError(offset, f"function {fn:02X} is an exception reply, not a request")
        if len(body) != 1:
            raise RtuError(at + min(len(body), 1),
                           f"an exception reply has 1 data byte (the code), got {len(body)}")
        return ModbusPdu(FrameKind.EXCEPTION, fn & 0x7F, exception=body[0])
    if fn not in FUNCTIONS:
        raise RtuError(offset, f"function {fn:02X} is not one of "
                               f"{', '.join(f'{f:02X}' for f in FUNCTIONS)}")
    try:
        if kind is FrameKind.REQUEST:
            return _parse_request(fn, body, at)
        return _parse_response(fn, body, at)
    except ConstructError:
        raise RtuError(at, f"function {fn:02X}: {len(body)} data bytes do not fit a "
                           f"{kind}") from None


def _exact(body: bytes, size: int, at: int, what: str) -> None:
    if len(body) != size:
        raise RtuError(at + min(len(body), size),
                       f"{what} has {size} data bytes, got {len(body)}")


def _parse_request(fn: int, body: bytes, at: int) -> ModbusPdu:
    if fn in _READS:
        _exact(body, 4, at, f"a {fn:02X} request")
        c: Any = ADDRESS_COUNT.parse(body)
        if not 1 <= c.count <= MAX_READ_COUNT:
            raise RtuError(at + 2, f"register count {c.count} is not 1-{MAX_READ_COUNT}")
        return ModbusPdu(FrameKind.REQUEST, fn, c.address, c.count)
    if fn in _SINGLE_WRITES:
        _exact(body, 4, at, f"a {fn:02X} request")
        return _single_write(FrameKind.REQUEST, fn, body, at)
    if len(body) < 5:
        raise RtuError(at + len(body), f"a 10 request has at least 5 data bytes, got "
                                       f"{len(body)}")
    c = WRITE_MULTIPLE.parse(body)
    if len(body) != 5 + c.byte_count:
        raise RtuError(at + 4, f"byte count {c.byte_count}, {len(body) - 5} data bytes follow")
    if c.byte_count != 2 * c.count or not 1 <= c.count <= MAX_WRITE_COUNT:
        raise RtuError(at + 4, f"byte count {c.byte_count} for {c.count} registers")
    return ModbusPdu(FrameKind.REQUEST, fn, c.address, c.count, _words(c.data))


def _parse_response(fn: int, body: bytes, at: int) -> ModbusPdu:
    if fn in _READS:
        if not body:
            raise RtuError(at, "a read reply has a byte count")
        count_bytes = body[0]
        if len(body) - 1 != count_bytes:
            raise RtuError(at, f"byte count {count_bytes}, {len(body) - 1} data bytes follow")
        if count_bytes % 2:
            raise RtuError(at, f"byte count {count_bytes} is odd (registers are 2 bytes)")
        # READ_REPLY's layout, checked above; the words unpacked directly (see top).
        return ModbusPdu(FrameKind.RESPONSE, fn, None, count_bytes // 2, _words(body[1:]))
    if fn in _SINGLE_WRITES:
        _exact(body, 4, at, f"a {fn:02X} reply")
        return _single_write(FrameKind.RESPONSE, fn, body, at)
    _exact(body, 4, at, "a 10 reply")
    c: Any = ADDRESS_COUNT.parse(body)
    return ModbusPdu(FrameKind.RESPONSE, fn, c.address, c.count)


def _single_write(kind: FrameKind, fn: int, body: bytes, at: int) -> ModbusPdu:
    c: Any = ADDRESS_VALUE.parse(body)
    if fn == 5 and c.value not in (0, COIL_ON):
        raise RtuError(at + 2, f"coil value {c.value:04X} is not FF00 or 0000")
    return ModbusPdu(kind, fn, c.address, 1, (c.value,))


def check_crc(frame: bytes | bytearray, *, offset: int = 0) -> None:
    """CrcError unless the last two bytes of ``frame`` are the CRC of the rest."""
    received = int.from_bytes(frame[-2:], "little")
    computed = crc16(frame[:-2])
    if received != computed:
        raise CrcError(offset + len(frame) - 2, _swap(received), _swap(computed))


def _swap(crc: int) -> int:
    """As the bytes read on the wire (low byte first)."""
    return ((crc & 0xFF) << 8) | (crc >> 8)


def parse_rtu(frame: bytes, kind: FrameKind | str, *, offset: int = 0) -> RtuFrame:
    """One complete RTU frame as a ``request`` or a ``response``.

    CrcError for a CRC mismatch (checked first: a corrupted frame says nothing),
    RtuError for anything else; offsets counted from ``offset``.
    """
    if len(frame) < 4:
        raise RtuError(offset + len(frame), f"{len(frame)} bytes, an RTU frame has at "
                                            "least 4")
    check_crc(frame, offset=offset)
    pdu = parse_pdu(bytes(frame[1:-2]), kind, offset=offset + 1)
    return RtuFrame(frame[0], pdu, bytes(frame))


def request_length(buf: bytes | bytearray, i: int = 0) -> int | None:
    """Length of the RTU request starting at ``buf[i]``: 0 if its function is unknown,
    None if more bytes are needed to tell."""
    if len(buf) - i < 2:
        return None
    fn = buf[i + 1]
    if fn in _READS or fn in _SINGLE_WRITES:
        return 8
    if fn == 0x10:
        return None if len(buf) - i < 7 else 9 + buf[i + 6]
    return 0


def response_length(buf: bytes | bytearray, i: int = 0) -> int | None:
    """Length of the RTU response starting at ``buf[i]`` (as :func:`request_length`)."""
    if len(buf) - i < 2:
        return None
    fn = buf[i + 1]
    if fn & 0x80:
        return 5
    if fn in _READS:
        return None if len(buf) - i < 3 else 5 + buf[i + 2]
    if fn in _SINGLE_WRITES or fn == 0x10:
        return 8
    return 0

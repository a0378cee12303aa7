"""``amic decode --protocol modbus-rtu``: one JSON object per Modbus RTU frame.

Frames are back to back (or one per argument); at each offset a request and a response
are tried, the one whose CRC holds and whose data field fits wins (the one ending the
input, then the request, when both do).  A read reply does not carry its start
address: it is the address of the read request just before it (same unit, function
and count), else ``--start``.  With a profile the registers a frame carries are named
and scaled.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from protocols.dlt645 import value_to_json
from protocols.modbus import (
    FUNCTIONS,
    CrcError,
    FrameKind,
    ModbusPdu,
    Profile,
    RtuError,
    RtuFrame,
    decode_register,
    exception_name,
    parse_rtu,
    request_length,
    response_length,
)


class ModbusInputError(Exception):
    """Input that is not Modbus RTU frames, naming the byte offset; ``objects`` holds
    the frames decoded before it (a frame with a bad CRC included, ``crc_ok`` false)."""

    def __init__(self, message: str, objects: list[dict[str, Any]]) -> None:
        super().__init__(message)
        self.objects = objects


@dataclass(frozen=True, slots=True)
class _Found:
    offset: int
    frame: RtuFrame | None  # None: bad CRC (then ``raw``/``kind`` say what it would be)
    raw: bytes
    kind: FrameKind
    crc: CrcError | None = None


def _split_one(data: bytes, pos: int) -> _Found:
    """The frame at ``pos``; ModbusInputError (no objects) when there is none."""
    rest = len(data) - pos
    candidates: list[tuple[FrameKind, int]] = []
    short: list[str] = []
    for kind, length in ((FrameKind.REQUEST, request_length(data, pos)),
                         (FrameKind.RESPONSE, response_length(data, pos))):
        if length == 0:
            continue
        if length is None or length > rest:
            short.append(f"a {kind} of {length or 'more'} bytes")
            continue
        candidates.append((kind, length))
    if not candidates:
        if rest < 2:
            raise ModbusInputError(f"byte {pos}: {rest} byte(s) left, not a frame", [])
        if not short:
            fn = data[pos + 1]
            raise ModbusInputError(
                f"byte {pos + 1}: function {fn:02X} is not one of "
                f"{', '.join(f'{f:02X}' for f in FUNCTIONS)} (or an exception reply)", [])
        raise ModbusInputError(f"byte {len(data)}: frame at byte {pos} truncated "
                               f"({rest} bytes; {' or '.join(short)})", [])
    # The one ending the input first, then the request (a read request and a read reply
    # of the same function start alike).
    candidates.sort(key=lambda c: c[1] != rest)
    first_error: RtuError | None = None
    for kind, length in candidates:
        raw = data[pos:pos + length]
        try:
            return _Found(pos, parse_rtu(raw, kind, offset=pos), raw, kind)
        except RtuError as e:
            if first_error is None or (isinstance(first_error, CrcError)
                                       and not isinstance(e, CrcError)):
                first_error = e
    assert first_error is not None
    if isinstance(first_error, CrcError):
        kind, length = candidates[0]
        return _Found(pos, None, data[pos:pos + length], kind, first_error)
    raise ModbusInputError(str(first_error), [])


def _registers(profile: Profile, table: int, start: int, words: tuple[int, ...]
               ) -> list[dict[str, Any]]:
    end = start + len(words)
    out: list[dict[str, Any]] = []
    for reg in profile.registers:
        if reg.function != table or not (start <= reg.address and reg.end <= end):
            continue
        offset = reg.address - start
        item: dict[str, Any] = {"name": reg.name, "address": reg.address, "unit": reg.unit}
        try:
            item["value"] = value_to_json(decode_register(
                reg, words[offset:offset + reg.words]))
        except ValueError as e:
            item["value"] = None
            item["error"] = str(e)
        out.append(item)
    return out


def _describe(found: _Found, start: int | None, profile: Profile | None
              ) -> dict[str, Any]:
    raw = found.raw
    out: dict[str, Any] = {"offset": found.offset, "unit": raw[0],
                           "function": raw[1] & 0x7F,
                           "function_name": FUNCTIONS.get(raw[1] & 0x7F, None),
                           "kind": "exception" if raw[1] & 0x80 else found.kind.value,
                           "crc_ok": found.frame is not None}
    if found.frame is None:
        out["frame"] = raw.hex().upper()
        return out
    pdu: ModbusPdu = found.frame.pdu
    out["kind"] = pdu.kind.value
    if pdu.kind is FrameKind.EXCEPTION:
        out["exception"] = pdu.exception
        out["exception_name"] = exception_name(pdu.exception or 0)
        return out
    fn = pdu.function
    address = pdu.address
    if fn in (3, 4) and pdu.kind is FrameKind.RESPONSE:
        address = start
    out["address"] = address
    out["count"] = pdu.quantity
    if fn == 5:
        out["on"] = pdu.values[0] == 0xFF00
    elif pdu.values:
        out["registers"] = list(pdu.values)
    if profile is not None and pdu.values and fn != 5:
        if address is None:
            raise ModbusInputError(
                f"byte {found.offset}: a read reply does not carry its start address: "
                "give its request before it, or --start ADDR", [])
        table = fn if fn in (3, 4) else 3  # 06/10H write holding registers
        out["values"] = _registers(profile, table, address, pdu.values)
    return out


def decode_modbus(data: bytes, *, profile: Profile | None = None,
                  start: int | None = None) -> list[dict[str, Any]]:
    """The JSON objects of the RTU frames in ``data``; ModbusInputError at the first
    problem (a bad CRC after its object is made)."""
    if not data:
        raise ModbusInputError("byte 0: no input", [])
    objects: list[dict[str, Any]] = []
    pos = 0
    last_request: RtuFrame | None = None
    while pos < len(data):
        try:
            found = _split_one(data, pos)
        except ModbusInputError as e:
            raise ModbusInputError(str(e), objects) from None
        frame = found.frame
        reply_start = start
        if frame is not None and frame.kind is FrameKind.RESPONSE and last_request is not None \
                and (last_request.unit, last_request.function,
                     last_request.pdu.quantity) == (frame.unit, frame.function,
                                                    frame.pdu.quantity):
            reply_start = last_request.pdu.address
        try:
            objects.append(_describe(found, reply_start, profile))
        except ModbusInputError as e:
            raise ModbusInputError(str(e), objects) from None
        if found.crc is not None:
            raise ModbusInputError(str(found.crc), objects)
        last_request = frame if frame is not None and frame.kind is FrameKind.REQUEST \
            else None
        pos += len(found.raw)
    return objects

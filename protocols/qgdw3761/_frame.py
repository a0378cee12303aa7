"""The 376.1 link frame, both directions.

``68 L L 68 C A1 A1 A2 A2 A3 AFN SEQ {DA DT data}... [PW] [EC] [Tp] CS 16``; one
construct definition parses and builds it, compiled once at import (parsing by default
reads the checked fixed offsets with struct instead, the faster way).  ``L`` carries the
protocol id in D0-D1 and L1 (the byte count from C to the end of AUX) in D2-D15.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass
from enum import IntEnum
from typing import Any

from construct import Bytes, Const, Int8ub, Int16ul, Struct, this

from ._errors import FrameError

PREAMBLE = 0xFE
START = 0x68
END = 0x16
PROTOCOL_ID = 2  # 376.1; 1 is Q/GDW 130-2005, 0 forbidden, 3 reserved
HEADER_SIZE = 6  # 68 L L 68
FIXED_SIZE = 8  # C + A(5) + AFN + SEQ, counted in L1
MIN_L1 = FIXED_SIZE + 4  # one DA/DT at least
MAX_L1 = 16383
PW_SIZE = 16
EC_SIZE = 2
TP_SIZE = 6
# Downlink AFNs that carry the 16-byte password (reference §6).
PW_AFNS = frozenset((0x01, 0x04, 0x05, 0x06, 0x0F, 0x10))

DIR_BIT = 0x80
PRM_BIT = 0x40
FCB_ACD_BIT = 0x20
FCV_BIT = 0x10
FUNCTION_MASK = 0x0F

TPV_BIT = 0x80
FIR_BIT = 0x40
FIN_BIT = 0x20
CON_BIT = 0x10
SEQ_MASK = 0x0F


class Direction(IntEnum):
    """DIR of the control byte: who sends the frame."""

    DOWN = 0  # master -> terminal
    UP = 1  # terminal -> master


class AFN(IntEnum):
    CONFIRM = 0x00
    RESET = 0x01
    LINK = 0x02
    RELAY_STATION = 0x03
    SET_PARAMETERS = 0x04
    CONTROL = 0x05
    AUTHENTICATION = 0x06
    CASCADE = 0x08
    CONFIGURATION = 0x09
    QUERY_PARAMETERS = 0x0A
    TASK_DATA = 0x0B
    CLASS1 = 0x0C
    CLASS2 = 0x0D
    CLASS3 = 0x0E
    FILE_TRANSFER = 0x0F
    FORWARD = 0x10


class Function(IntEnum):
    """Link function codes (D3-D0 of C); the meaning depends on PRM."""

    # PRM = 1
    RESET = 1
    USER_DATA = 4
    LINK_TEST = 9
    REQUEST_CLASS1 = 10
    REQUEST_CLASS2 = 11
    # PRM = 0 (CONFIRM = 0, RESPONSE = 8, DENY = 9, LINK_STATUS = 11)


FN_CONFIRM = 0
FN_RESPONSE = 8
FN_DENY = 9
FN_LINK_STATUS = 11


def control_byte(direction: Direction, *, prm: bool, function: int, acd: bool = False,
                 fcb: bool = False, fcv: bool = False) -> int:
    """C from its fields; ``acd`` is for uplink frames, ``fcb``/``fcv`` for downlink."""
    c = (DIR_BIT if direction is Direction.UP else 0) | (PRM_BIT if prm else 0)
    if direction is Direction.UP:
        c |= FCB_ACD_BIT if acd else 0
    else:
        c |= (FCB_ACD_BIT if fcb else 0) | (FCV_BIT if fcv else 0)
    return c | (function & FUNCTION_MASK)


def seq_byte(pseq: int, *, fir: bool = True, fin: bool = True, con: bool = False,
             tpv: bool = False) -> int:
    """SEQ from its fields; ``pseq`` is PSEQ (requests) or RSEQ (responses), 0-15."""
    if not 0 <= pseq <= SEQ_MASK:
        raise ValueError(f"PSEQ/RSEQ {pseq} is not 0-15")
    return ((TPV_BIT if tpv else 0) | (FIR_BIT if fir else 0) | (FIN_BIT if fin else 0)
            | (CON_BIT if con else 0) | pseq)


def a3_byte(msa: int = 0, *, group: bool = False) -> int:
    """A3 from the master address (0-127) and the group flag."""
    if not 0 <= msa <= 127:
        raise ValueError(f"MSA {msa} is not 0-127")
    return msa << 1 | (1 if group else 0)


@dataclass(frozen=True, slots=True)
class TimeTag:
    """Tp: the initiator's frame counter, send time (A.16) and allowed delay in minutes."""

    pfc: int
    second: int
    minute: int
    hour: int
    day: int
    delay: int = 0

    def to_bytes(self) -> bytes:
        bcd = [(v // 10) << 4 | v % 10 for v in (self.second, self.minute, self.hour,
                                                 self.day)]
        return bytes((self.pfc, *bcd, self.delay))

    @classmethod
    def from_bytes(cls, raw: bytes) -> TimeTag:
        s, mi, h, d = (((b >> 4) * 10 + (b & 0x0F)) for b in raw[1:5])
        return cls(raw[0], s, mi, h, d, raw[5])


@dataclass(frozen=True, slots=True)
class Frame:
    """One link frame; ``units`` is the data-unit area (DA DT data ...) without AUX.

    ``a1`` is the area code as 4 digits ("2449"), ``a2`` the terminal address.
    ``pw`` is present on downlink AFN 01/04/05/06/0F/10, ``ec`` (EC1, EC2) on uplink
    frames with ACD=1, ``tp`` when SEQ has TpV.
    """

    control: int
    a1: str
    a2: int
    a3: int
    afn: int
    seq: int
    units: bytes = b""
    pw: bytes | None = None
    ec: tuple[int, int] | None = None
    tp: TimeTag | None = None

    @property
    def direction(self) -> Direction:
        return Direction.UP if self.control & DIR_BIT else Direction.DOWN

    @property
    def prm(self) -> bool:
        return bool(self.control & PRM_BIT)

    @property
    def acd(self) -> bool:
        """Uplink only: important events pending (EC present)."""
        return bool(self.control & DIR_BIT and self.control & FCB_ACD_BIT)

    @property
    def fcb(self) -> bool:
        return bool(not self.control & DIR_BIT and self.control & FCB_ACD_BIT)

    @property
    def fcv(self) -> bool:
        return bool(not self.control & DIR_BIT and self.control & FCV_BIT)

    @property
    def function(self) -> int:
        return self.control & FUNCTION_MASK

    @property
    def msa(self) -> int:
        return self.a3 >> 1

    @property
    def group(self) -> bool:
        return bool(self.a3 & 1)

    @property
    def tpv(self) -> bool:
        return bool(self.seq & TPV_BIT)

    @property
    def fir(self) -> bool:
        return bool(self.seq & FIR_BIT)

    @property
    def fin(self) -> bool:
        return bool(self.seq & FIN_BIT)

    @property
    def con(self) -> bool:
        return bool(self.seq & CON_BIT)

    @property
    def pseq(self) -> int:
        """PSEQ of a request, RSEQ of a response (the low nibble of SEQ)."""
        return self.seq & SEQ_MASK


def aux_layout(control: int, afn: int, seq: int) -> tuple[int, int, int]:
    """(PW, EC, Tp) sizes that follow the data units of such a frame."""
    up = control & DIR_BIT
    pw = PW_SIZE if not up and afn in PW_AFNS else 0
    ec = EC_SIZE if up and control & FCB_ACD_BIT else 0
    tp = TP_SIZE if seq & TPV_BIT else 0
    return pw, ec, tp


FRAME_FORMAT = Struct(
    "start" / Const(bytes((START,))),
    "length" / Int16ul,
    "length2" / Int16ul,
    "start2" / Const(bytes((START,))),
    "control" / Int8ub,
    "a1" / Bytes(2),
    "a2" / Int16ul,
    "a3" / Int8ub,
    "afn" / Int8ub,
    "seq" / Int8ub,
    # data units + AUX: L1 minus C, A, AFN and SEQ
    "data" / Bytes((this.length >> 2) - FIXED_SIZE),
    "checksum" / Int8ub,
    "end" / Const(bytes((END,))),
)
FRAME = FRAME_FORMAT.compile()
_FIXED = struct.Struct("<B2sHBBB")  # C, A1, A2, A3, AFN, SEQ after the header


def length_field(l1: int) -> int:
    return l1 << 2 | PROTOCOL_ID


def check_header(raw: bytes | bytearray, base: int = 0) -> int:
    """L1 of the frame whose 6 header bytes start ``raw``; FrameError names the bad byte."""
    if raw[0] != START:
        raise FrameError(base, f"expected start byte 68, got {raw[0]:02X}")
    if len(raw) < HEADER_SIZE:
        raise FrameError(base + len(raw), "frame truncated inside its header")
    length = raw[1] | raw[2] << 8
    if raw[3] | raw[4] << 8 != length:
        raise FrameError(base + 3, f"the two copies of L differ: {raw[1]:02X}{raw[2]:02X} "
                                   f"then {raw[3]:02X}{raw[4]:02X}")
    if length & 3 != PROTOCOL_ID:
        raise FrameError(base + 1, f"protocol id {length & 3} in L is not 2 (376.1)")
    if raw[5] != START:
        raise FrameError(base + 5, f"expected second start byte 68, got {raw[5]:02X}")
    l1 = length >> 2
    if l1 < MIN_L1:
        raise FrameError(base + 1, f"L1 {l1} is below the minimum {MIN_L1}")
    return l1


def skip_preamble(raw: bytes) -> int:
    """Number of FE wake-up bytes at the start of ``raw``."""
    return len(raw) - len(raw.lstrip(b"\xfe"))


def checksum(data: bytes | bytearray) -> int:
    return sum(data) & 0xFF


def parse_frame(raw: bytes, *, compiled: bool = True) -> Frame:
    """Parse exactly one frame (FE preamble allowed); FrameError names the byte at fault."""
    base = skip_preamble(raw)
    body = raw[base:] if base else raw
    if not body:
        raise FrameError(base, "no frame: no bytes after the preamble")
    l1 = check_header(body, base)
    total = l1 + FIXED_SIZE
    if len(body) < total:
        raise FrameError(base + len(body),
                         f"frame truncated: L1 {l1} needs {total} bytes, got {len(body)}")
    if compiled:
        # The header and the length are checked: fixed offsets from here on.  The
        # construct definition stays the reference (compiled=False; tests compare both).
        if body[total - 1] != END:
            raise FrameError(base + total - 1,
                             f"expected end byte 16, got {body[total - 1]:02X}")
        if not isinstance(body, bytes):
            body = bytes(body)
        control, a1_raw, a2, a3, afn, seq = _FIXED.unpack_from(body, HEADER_SIZE)
        data = body[HEADER_SIZE + FIXED_SIZE : total - 2]
        received = body[total - 2]
    else:
        try:
            c = FRAME_FORMAT.parse(body)
        except Exception:
            # The header and the length are checked above: only the end byte can be left.
            raise FrameError(base + total - 1,
                             f"expected end byte 16, got {body[total - 1]:02X}") from None
        control, a1_raw, a2, a3 = c["control"], c["a1"], c["a2"], c["a3"]
        afn, seq, data, received = c["afn"], c["seq"], c["data"], c["checksum"]
    if len(body) > total:
        raise FrameError(base + total, f"{len(body) - total} bytes after the end byte 16")
    expected = checksum(body[HEADER_SIZE : total - 2])
    if received != expected:
        raise FrameError(base + total - 2,
                         f"checksum {received:02X} does not match computed {expected:02X}")
    pw, ec, tp = aux_layout(control, afn, seq)
    n = len(data) - pw - ec - tp
    if n < 4:
        raise FrameError(base + HEADER_SIZE + FIXED_SIZE,
                         f"{len(data)} bytes after SEQ cannot hold a DA/DT (4) and AUX of "
                         f"{pw + ec + tp} bytes")
    return Frame(
        control=control,
        a1=bytes(a1_raw[::-1]).hex().upper(),
        a2=a2,
        a3=a3,
        afn=afn,
        seq=seq,
        units=data[:n],
        pw=data[n : n + pw] if pw else None,
        ec=(data[n + pw], data[n + pw + 1]) if ec else None,
        tp=TimeTag.from_bytes(data[n + pw + ec :]) if tp else None,
    )


def build_frame(frame: Frame, *, compiled: bool = True) -> bytes:
    """Wire bytes of ``frame``; ValueError if its AUX does not match C, AFN and SEQ."""
    pw, ec, tp = aux_layout(frame.control, frame.afn, frame.seq)
    aux = bytearray()
    if pw:
        if frame.pw is None or len(frame.pw) != PW_SIZE:
            raise ValueError(f"downlink AFN {frame.afn:02X} needs a 16-byte PW")
        aux += frame.pw
    elif frame.pw is not None:
        raise ValueError("PW belongs to downlink AFN 01/04/05/06/0F/10 only")
    if ec:
        if frame.ec is None:
            raise ValueError("an uplink frame with ACD=1 needs EC")
        aux += bytes(frame.ec)
    elif frame.ec is not None:
        raise ValueError("EC belongs to uplink frames with ACD=1 only")
    if tp:
        if frame.tp is None:
            raise ValueError("SEQ has TpV: the frame needs Tp")
        aux += frame.tp.to_bytes()
    elif frame.tp is not None:
        raise ValueError("Tp given but SEQ has no TpV")
    if len(frame.units) < 4:
        raise ValueError("a frame carries at least one DA/DT (4 bytes)")
    data = frame.units + bytes(aux)
    l1 = FIXED_SIZE + len(data)
    if l1 > MAX_L1:
        raise ValueError(f"L1 {l1} exceeds {MAX_L1}")
    a1 = bytes.fromhex(frame.a1)[::-1]
    if len(a1) != 2:
        raise ValueError(f"A1 {frame.a1!r}: expected 4 digits")
    head = bytes((frame.control, *a1)) + frame.a2.to_bytes(2, "little") + bytes(
        (frame.a3, frame.afn, frame.seq))
    length = length_field(l1)
    fmt: Any = FRAME if compiled else FRAME_FORMAT
    out: bytes = fmt.build({
        "length": length, "length2": length, "control": frame.control, "a1": a1,
        "a2": frame.a2, "a3": frame.a3, "afn": frame.afn, "seq": frame.seq, "data": data,
        "checksum": checksum(head + data),
    })
    return out

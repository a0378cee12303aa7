"""Typed messages, one class per function and direction, and their data-field layouts.

Each layout is a construct definition used both to parse and to build the data
field; the classes convert between those raw fields and typed values.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable
from dataclasses import dataclass, field
from enum import IntEnum
from typing import Any, ClassVar

from construct import Bytes, GreedyBytes, Int8ub, Int32ub, SizeofError, Struct

from ..quantities import BROADCAST_ADDRESS, WILDCARD_ADDRESS
from ._bcd import bcd_digits, decode_number, digits_to_bcd
from ._catalogue import DataItem, Format, Value, decode_value, lookup
from ._errors import PayloadError
from ._frame import Frame, Version, control_code, version_of

V7 = Version.V2007
V97 = Version.V1997


class RelayCommand(IntEnum):
    """N1 of a 1C remote-control command."""

    TRIP = 0x1A
    CLOSE_PERMITTED = 0x1B
    CLOSE_DIRECT = 0x1C
    ALARM = 0x2A
    ALARM_RELEASE = 0x2B
    HOLD_POWER = 0x3A
    HOLD_POWER_RELEASE = 0x3B


ERROR_BITS: dict[Version, dict[int, str]] = {
    V7: {
        0: "other_error", 1: "no_requested_data", 2: "unauthorised",
        3: "baud_rate_unchangeable", 4: "too_many_year_zones", 5: "too_many_day_periods",
        6: "too_many_tariffs",
    },
    V97: {
        0: "illegal_data", 1: "data_identifier_error", 2: "password_error",
        4: "too_many_year_zones", 5: "too_many_day_periods", 6: "too_many_tariffs",
    },
}


def error_names(code: int, version: Version = V7) -> tuple[str, ...]:
    table = ERROR_BITS[version]
    return tuple(table.get(b, f"reserved_bit_{b}") for b in range(8) if code >> b & 1)


# ---- field helpers -----------------------------------------------------------------------

def _di_bytes(di: int, version: Version) -> bytes:
    return di.to_bytes(2 if version is V97 else 4, "little")


def _password_wire(password: str) -> bytes:
    """``LLPPPPPP`` (level then six digits) to PA P0 P1 P2."""
    p = password.strip()
    if len(p) != 8 or any(c not in "0123456789abcdefABCDEF" for c in p):
        raise PayloadError("password: expected 8 hex digits, level then code (e.g. 02123456)")
    return bytes.fromhex(p[:2]) + bytes.fromhex(p[2:])[::-1]


def _password_text(raw: bytes) -> str:
    return f"{raw[0]:02X}{raw[1:4][::-1].hex().upper()}"


def _operator_wire(operator: str) -> bytes:
    o = operator.strip()
    if len(o) != 8 or any(c not in "0123456789abcdefABCDEF" for c in o):
        raise PayloadError("operator code: expected 8 hex digits")
    return bytes.fromhex(o)[::-1]


def _datetime_digits(raw: bytes, what: str) -> dt.datetime:
    s = bcd_digits(raw)  # YYMMDDhhmmss
    try:
        return dt.datetime(2000 + int(s[0:2]), int(s[2:4]), int(s[4:6]), int(s[6:8]),
                           int(s[8:10]), int(s[10:12]))
    except ValueError:
        raise PayloadError(f"{what}: {s} is not a valid YYMMDDhhmmss time") from None


def _datetime_wire(when: dt.datetime) -> bytes:
    return digits_to_bcd(f"{when:%y%m%d%H%M%S}", 6)


# ---- data-field layouts (construct: one definition parses and builds) ---------------------

PASSWORD = Bytes(4)
OPERATOR = Bytes(4)
LAYOUTS: dict[str, Any] = {
    "read7": Struct("di" / Bytes(4), "extra" / GreedyBytes),
    "read97": Struct("di" / Bytes(2), "extra" / GreedyBytes),
    "follow7": Struct("di" / Bytes(4), "seq" / Int8ub),
    "follow_reply7": Struct("di" / Bytes(4), "body" / GreedyBytes),
    "reply": Struct("di" / Bytes(4), "body" / GreedyBytes),
    "reply97": Struct("di" / Bytes(2), "body" / GreedyBytes),
    "write7": Struct("di" / Bytes(4), "password" / PASSWORD, "operator" / OPERATOR,
                     "body" / GreedyBytes),
    "write97": Struct("di" / Bytes(2), "password" / PASSWORD, "body" / GreedyBytes),
    "address": Struct("address" / Bytes(6)),
    "time": Struct("time" / Bytes(6)),
    "freeze": Struct("pattern" / Bytes(4)),
    "baud": Struct("feature" / Int8ub),
    "password7": Struct("di" / Bytes(4), "old" / PASSWORD, "new" / PASSWORD),
    "password97": Struct("old" / PASSWORD, "new" / PASSWORD),
    "new_password": Struct("new" / PASSWORD),
    "auth": Struct("password" / PASSWORD, "operator" / OPERATOR),
    "auth_di": Struct("password" / PASSWORD, "operator" / OPERATOR, "di" / Bytes(4)),
    "control": Struct("password" / PASSWORD, "operator" / OPERATOR, "body" / GreedyBytes),
    "control_plain": Struct("command" / Int8ub, "n2" / Int8ub, "expiry" / Bytes(6)),
    "error": Struct("code" / Int8ub, "extra" / GreedyBytes),
    # 03 security (安全认证, the State Grid cost-control extension): DI, operator, payload
    "security": Struct("di" / Bytes(4), "operator" / OPERATOR, "body" / GreedyBytes),
    "security_reply": Struct("di" / Bytes(4), "body" / GreedyBytes),
    "auth_payload": Struct("ciphertext" / Bytes(8), "random" / Bytes(8), "factor" / Bytes(8)),
    "auth_reply": Struct("random" / Bytes(4), "esam_serial" / Bytes(8)),
    "topup_payload": Struct("amount" / Int32ub, "count" / Int32ub, "mac1" / Bytes(4),
                            "customer" / Bytes(6), "mac2" / Bytes(4)),
}
COMPILED: dict[str, Any] = {k: v.compile() for k, v in LAYOUTS.items()}


def _sizes(layout: Any) -> tuple[int, bool]:
    """(bytes of the fixed fields, whether the layout is fixed-size)."""
    total, fixed = 0, True
    for sub in layout.subcons:
        try:
            total += sub.sizeof()
        except SizeofError:
            fixed = False
    return total, fixed


# Compiled layouts do not check lengths (Bytes(4) returns what is there): check first.
SIZES: dict[str, tuple[int, bool]] = {k: _sizes(v) for k, v in LAYOUTS.items()}


def _parse(layout: str, data: bytes, what: str) -> Any:
    need, fixed = SIZES[layout]
    if len(data) < need or (fixed and len(data) != need):
        expected = f"{need}" if fixed else f"at least {need}"
        raise PayloadError(f"{what}: data field of {len(data)} bytes, expected {expected}")
    return COMPILED[layout].parse(data)


def _build(layout: str, **values: Any) -> bytes:
    out: bytes = COMPILED[layout].build(values)
    return out


# ---- messages ----------------------------------------------------------------------------

@dataclass(slots=True, kw_only=True)
class Message:
    """Every message has the meter address and the edition it belongs to."""

    address: str
    version: Version = V7

    FUNCTION: ClassVar[dict[Version, int]] = {}
    REPLY: ClassVar[bool] = False

    @property
    def function(self) -> int:
        return self.FUNCTION[self.version]

    def data(self) -> bytes:
        return b""

    def control(self) -> int:
        return control_code(self.function, reply=self.REPLY)

    def to_frame(self) -> Frame:
        return Frame(self.address, self.control(), self.data())


@dataclass(slots=True, kw_only=True)
class ReadRequest(Message):
    """11 / 01: read one DI; ``extra`` carries N (+ time) for load-profile reads."""

    di: int
    extra: bytes = b""
    FUNCTION: ClassVar[dict[Version, int]] = {V7: 0x11, V97: 0x01}

    def data(self) -> bytes:
        return _di_bytes(self.di, self.version) + self.extra


@dataclass(slots=True, kw_only=True)
class ReadReply(Message):
    """91 / 81: the DI and its value bytes; ``follow_up`` says more frames wait (12)."""

    di: int
    body: bytes
    follow_up: bool = False
    FUNCTION: ClassVar[dict[Version, int]] = {V7: 0x11, V97: 0x01}
    REPLY: ClassVar[bool] = True

    def data(self) -> bytes:
        return _di_bytes(self.di, self.version) + self.body

    def control(self) -> int:
        return control_code(self.function, reply=True, follow_up=self.follow_up)

    @property
    def item(self) -> DataItem | None:
        return lookup(self.di, self.version)

    def value(self) -> Value:
        item = lookup(self.di, self.version)
        if item is None:
            width = 4 if self.version is V97 else 8
            raise PayloadError(f"DI {self.di:0{width}X} is not in the catalogue")
        if item.format is Format.NUMBER and len(self.body) == item.size:
            return decode_number(self.body, item.decimals, item.signed, what=item.name)
        return decode_value(item, self.body)


@dataclass(slots=True, kw_only=True)
class ReadFollowUpRequest(Message):
    """12 / 02: ask for the next frame of a multi-frame reply (1997 has no sequence)."""

    di: int
    seq: int = 1
    FUNCTION: ClassVar[dict[Version, int]] = {V7: 0x12, V97: 0x02}

    def data(self) -> bytes:
        if self.version is V97:
            return _di_bytes(self.di, V97)
        return _build("follow7", di=_di_bytes(self.di, V7), seq=self.seq)


@dataclass(slots=True, kw_only=True)
class ReadFollowUpReply(Message):
    """92 / 82: DI, value bytes and (2007) the frame sequence number at the end."""

    di: int
    body: bytes
    seq: int | None = None
    follow_up: bool = False
    FUNCTION: ClassVar[dict[Version, int]] = {V7: 0x12, V97: 0x02}
    REPLY: ClassVar[bool] = True

    def data(self) -> bytes:
        tail = bytes((self.seq,)) if self.seq is not None else b""
        return _di_bytes(self.di, self.version) + self.body + tail

    def control(self) -> int:
        return control_code(self.function, reply=True, follow_up=self.follow_up)


@dataclass(slots=True, kw_only=True)
class ReadAddressRequest(Message):
    """13: sent to AAAAAAAAAAAA; the only meter on the line answers with its address."""

    address: str = WILDCARD_ADDRESS
    FUNCTION: ClassVar[dict[Version, int]] = {V7: 0x13}


@dataclass(slots=True, kw_only=True)
class ReadAddressReply(Message):
    meter_address: str
    FUNCTION: ClassVar[dict[Version, int]] = {V7: 0x13}
    REPLY: ClassVar[bool] = True

    def data(self) -> bytes:
        return _build("address", address=digits_to_bcd(self.meter_address, 6))


@dataclass(slots=True, kw_only=True)
class WriteRequest(Message):
    """14 / 04: DI, password (``LLPPPPPP``), operator code (2007 only), value bytes."""

    di: int
    password: str = field(repr=False)
    operator: str = "00000000"
    body: bytes = b""
    FUNCTION: ClassVar[dict[Version, int]] = {V7: 0x14, V97: 0x04}

    def data(self) -> bytes:
        if self.version is V97:
            return _build("write97", di=_di_bytes(self.di, V97),
                          password=_password_wire(self.password), body=self.body)
        return _build("write7", di=_di_bytes(self.di, V7), password=_password_wire(self.password),
                      operator=_operator_wire(self.operator), body=self.body)


@dataclass(slots=True, kw_only=True)
class WriteAddressRequest(Message):
    """15 / 0A: set a new address (sent to AAAAAAAAAAAA)."""

    address: str = WILDCARD_ADDRESS
    new_address: str
    FUNCTION: ClassVar[dict[Version, int]] = {V7: 0x15, V97: 0x0A}

    def data(self) -> bytes:
        return _build("address", address=digits_to_bcd(self.new_address, 6))


@dataclass(slots=True, kw_only=True)
class TimeSyncRequest(Message):
    """08: broadcast time sync, ssmmhhDDMMYY; never answered."""

    address: str = BROADCAST_ADDRESS
    when: dt.datetime
    FUNCTION: ClassVar[dict[Version, int]] = {V7: 0x08, V97: 0x08}

    def data(self) -> bytes:
        return _build("time", time=_datetime_wire(self.when))


@dataclass(slots=True, kw_only=True)
class FreezeRequest(Message):
    """16: freeze at ``pattern`` = MMDDhhmm digits, 99 meaning every (9999 9999 = now)."""

    pattern: str = "99999999"
    FUNCTION: ClassVar[dict[Version, int]] = {V7: 0x16}

    def data(self) -> bytes:
        return _build("freeze", pattern=digits_to_bcd(self.pattern, 4))


@dataclass(slots=True, kw_only=True)
class ChangeBaudRequest(Message):
    """17 / 0C: the baud feature byte (bit 1 600 ... bit 6 19200)."""

    feature: int
    FUNCTION: ClassVar[dict[Version, int]] = {V7: 0x17, V97: 0x0C}

    def data(self) -> bytes:
        return _build("baud", feature=self.feature)


@dataclass(slots=True, kw_only=True)
class ChangeBaudReply(Message):
    feature: int
    FUNCTION: ClassVar[dict[Version, int]] = {V7: 0x17, V97: 0x0C}
    REPLY: ClassVar[bool] = True

    def data(self) -> bytes:
        return _build("baud", feature=self.feature)


@dataclass(slots=True, kw_only=True)
class ChangePasswordRequest(Message):
    """18 / 0F: DI (2007, 04000C01..0A selects the level), old and new password."""

    old: str = field(repr=False)
    new: str = field(repr=False)
    di: int = 0x04000C01
    FUNCTION: ClassVar[dict[Version, int]] = {V7: 0x18, V97: 0x0F}

    def data(self) -> bytes:
        if self.version is V97:
            return _build("password97", old=_password_wire(self.old), new=_password_wire(self.new))
        return _build("password7", di=_di_bytes(self.di, V7), old=_password_wire(self.old),
                      new=_password_wire(self.new))


@dataclass(slots=True, kw_only=True)
class ChangePasswordReply(Message):
    new: str = field(repr=False)
    FUNCTION: ClassVar[dict[Version, int]] = {V7: 0x18, V97: 0x0F}
    REPLY: ClassVar[bool] = True

    def data(self) -> bytes:
        return _build("new_password", new=_password_wire(self.new))


@dataclass(slots=True, kw_only=True)
class ClearDemandRequest(Message):
    """19 (password + operator) / 10 (1997: no data)."""

    password: str = field(default="00000000", repr=False)
    operator: str = "00000000"
    FUNCTION: ClassVar[dict[Version, int]] = {V7: 0x19, V97: 0x10}

    def data(self) -> bytes:
        if self.version is V97:
            return b""
        return _build("auth", password=_password_wire(self.password),
                      operator=_operator_wire(self.operator))


@dataclass(slots=True, kw_only=True)
class ClearMeterRequest(Message):
    """1A: clear energy and events (password + operator)."""

    password: str = field(repr=False)
    operator: str = "00000000"
    FUNCTION: ClassVar[dict[Version, int]] = {V7: 0x1A}

    def data(self) -> bytes:
        return _build("auth", password=_password_wire(self.password),
                      operator=_operator_wire(self.operator))


@dataclass(slots=True, kw_only=True)
class ClearEventsRequest(Message):
    """1B: clear the event records of ``di`` (FFFFFFFF = all)."""

    password: str = field(repr=False)
    operator: str = "00000000"
    di: int = 0xFFFFFFFF
    FUNCTION: ClassVar[dict[Version, int]] = {V7: 0x1B}

    def data(self) -> bytes:
        return _build("auth_di", password=_password_wire(self.password),
                      operator=_operator_wire(self.operator), di=_di_bytes(self.di, V7))


@dataclass(slots=True, kw_only=True)
class RemoteControlRequest(Message):
    """1C: relay command N1 with expiry N3..N8; ``ciphertext`` replaces N1..N8 on ESAM meters."""

    password: str = field(repr=False)
    operator: str = "00000000"
    command: RelayCommand | int | None = None
    expiry: dt.datetime | None = None
    n2: int = 0
    ciphertext: bytes | None = field(default=None, repr=False)
    FUNCTION: ClassVar[dict[Version, int]] = {V7: 0x1C}

    def data(self) -> bytes:
        if self.ciphertext is not None:
            body = self.ciphertext
        else:
            if self.command is None or self.expiry is None:
                raise PayloadError("remote control: a command and an expiry time are required")
            body = _build("control_plain", command=int(self.command), n2=self.n2,
                          expiry=_datetime_wire(self.expiry))
        return _build("control", password=_password_wire(self.password),
                      operator=_operator_wire(self.operator), body=body)


# Security DIs of the 03 function (the State Grid cost-control extension, Q/GDW 1354).
DI_AUTHENTICATE = 0x070000FF  # identity authentication (身份认证)
DI_TOPUP = 0x070102FF  # remote top-up (远程充值)

# SERR, the 2-byte error word of an abnormal 03 reply (C3), bit by bit (check: vendor
# documents number them alike; the software module and the simulator use these).
SECURITY_ERROR_BITS: dict[int, str] = {
    0: "other_error", 1: "repeated_topup", 2: "esam_verification_failed",
    3: "authentication_failed", 4: "customer_mismatch", 5: "purchase_count_wrong",
    6: "over_hoarding_limit",
}


def security_error_names(code: int) -> tuple[str, ...]:
    return tuple(SECURITY_ERROR_BITS.get(b, f"reserved_bit_{b}") for b in range(16)
                 if code >> b & 1)


@dataclass(frozen=True, slots=True)
class AuthChallenge:
    """Identity authentication request payload: ciphertext 1, random 1, the
    diversification factor (the meter address padded to 8 bytes, usually)."""

    ciphertext: bytes
    random: bytes
    factor: bytes

    def payload(self) -> bytes:
        return _build("auth_payload", ciphertext=self.ciphertext, random=self.random,
                      factor=self.factor)

    @classmethod
    def parse(cls, data: bytes) -> AuthChallenge:
        c = _parse("auth_payload", data, "identity authentication")
        return cls(bytes(c.ciphertext), bytes(c.random), bytes(c.factor))


@dataclass(frozen=True, slots=True)
class AuthAnswer:
    """The meter's answer to identity authentication: random 2 and its ESAM serial."""

    random: bytes
    esam_serial: bytes

    def payload(self) -> bytes:
        return _build("auth_reply", random=self.random, esam_serial=self.esam_serial)

    @classmethod
    def parse(cls, data: bytes) -> AuthAnswer:
        c = _parse("auth_reply", data, "identity authentication reply")
        return cls(bytes(c.random), bytes(c.esam_serial))


@dataclass(frozen=True, slots=True)
class TopupPayload:
    """Remote top-up payload: amount in fen, the purchase count it makes, the customer
    number (6 bytes) and the two MACs of the security module."""

    amount_fen: int
    count: int
    customer: bytes
    mac1: bytes
    mac2: bytes

    def payload(self) -> bytes:
        return _build("topup_payload", amount=self.amount_fen, count=self.count,
                      mac1=self.mac1, customer=self.customer, mac2=self.mac2)

    @classmethod
    def parse(cls, data: bytes) -> TopupPayload:
        c = _parse("topup_payload", data, "remote top-up")
        return cls(c.amount, c.count, bytes(c.customer), bytes(c.mac1), bytes(c.mac2))


@dataclass(slots=True, kw_only=True)
class SecurityRequest(Message):
    """03: a security operation ``di`` (identity authentication, remote top-up ...) with
    the protected ``payload`` a security module made."""

    di: int
    operator: str = "00000000"
    payload: bytes = field(default=b"", repr=False)
    FUNCTION: ClassVar[dict[Version, int]] = {V7: 0x03}

    def data(self) -> bytes:
        return _build("security", di=_di_bytes(self.di, V7),
                      operator=_operator_wire(self.operator), body=self.payload)


@dataclass(slots=True, kw_only=True)
class SecurityReply(Message):
    """83: the meter's answer to a security operation (payload may be empty)."""

    di: int
    payload: bytes = b""
    FUNCTION: ClassVar[dict[Version, int]] = {V7: 0x03}
    REPLY: ClassVar[bool] = True

    def data(self) -> bytes:
        return _build("security_reply", di=_di_bytes(self.di, V7), body=self.payload)


@dataclass(slots=True, kw_only=True)
class Ack(Message):
    """A normal reply without data (94, 95, 96, 99, 9A, 9B, 9C and the 1997 ones)."""

    ack_function: int

    @property
    def function(self) -> int:
        return self.ack_function

    def control(self) -> int:
        return control_code(self.ack_function, reply=True)


@dataclass(slots=True, kw_only=True)
class AbnormalReply(Message):
    """C0 | function: one error byte (bits named by :data:`ERROR_BITS`)."""

    request_function: int
    error: int
    extra: bytes = b""

    @property
    def function(self) -> int:
        return self.request_function

    def control(self) -> int:
        return control_code(self.request_function, reply=True, abnormal=True)

    def data(self) -> bytes:
        return _build("error", code=self.error, extra=self.extra)

    @property
    def errors(self) -> tuple[str, ...]:
        return error_names(self.error, self.version)


@dataclass(slots=True, kw_only=True)
class Unknown(Message):
    """A well-framed message whose function code neither edition defines."""

    frame: Frame

    def to_frame(self) -> Frame:
        return self.frame


# ---- decoding ----------------------------------------------------------------------------

_Decoder = Callable[[Frame, Version], Message]


def _di(raw: bytes) -> int:
    return int.from_bytes(raw, "little")


def _dec_read_request(f: Frame, v: Version) -> Message:
    c = _parse("read97" if v is V97 else "read7", f.data, "read request")
    return ReadRequest(address=f.address, version=v, di=_di(c.di), extra=c.extra)


def _dec_read_reply(f: Frame, v: Version) -> Message:
    d = f.data
    n = 2 if v is V97 else 4
    if len(d) < n:
        raise PayloadError(f"read reply: data field of {len(d)} bytes has no {n}-byte DI")
    return ReadReply(address=f.address, version=v, di=int.from_bytes(d[:n], "little"),
                     body=d[n:], follow_up=f.follow_up)


def _dec_follow_request(f: Frame, v: Version) -> Message:
    if v is V97:
        c = _parse("read97", f.data, "follow-up request")
        return ReadFollowUpRequest(address=f.address, version=v, di=_di(c.di), seq=0)
    c = _parse("follow7", f.data, "follow-up request")
    return ReadFollowUpRequest(address=f.address, version=v, di=_di(c.di), seq=c.seq)


def _dec_follow_reply(f: Frame, v: Version) -> Message:
    if v is V97:
        c = _parse("reply97", f.data, "follow-up reply")
        return ReadFollowUpReply(address=f.address, version=v, di=_di(c.di), body=c.body,
                                 follow_up=f.follow_up)
    c = _parse("follow_reply7", f.data, "follow-up reply")
    if not c.body:
        raise PayloadError("follow-up reply: no sequence byte after the DI")
    return ReadFollowUpReply(address=f.address, version=v, di=_di(c.di), body=c.body[:-1],
                             seq=c.body[-1], follow_up=f.follow_up)


def _dec_write(f: Frame, v: Version) -> Message:
    if v is V97:
        c = _parse("write97", f.data, "write request")
        return WriteRequest(address=f.address, version=v, di=_di(c.di),
                            password=_password_text(c.password), body=c.body)
    c = _parse("write7", f.data, "write request")
    return WriteRequest(address=f.address, version=v, di=_di(c.di),
                        password=_password_text(c.password), operator=bcd_digits(c.operator),
                        body=c.body)


def _dec_write_address(f: Frame, v: Version) -> Message:
    c = _parse("address", f.data, "write address request")
    return WriteAddressRequest(address=f.address, version=v, new_address=bcd_digits(c.address))


def _dec_read_address_reply(f: Frame, v: Version) -> Message:
    c = _parse("address", f.data, "read address reply")
    return ReadAddressReply(address=f.address, version=v, meter_address=bcd_digits(c.address))


def _dec_time(f: Frame, v: Version) -> Message:
    c = _parse("time", f.data, "time sync")
    return TimeSyncRequest(address=f.address, version=v, when=_datetime_digits(c.time, "time sync"))


def _dec_freeze(f: Frame, v: Version) -> Message:
    c = _parse("freeze", f.data, "freeze request")
    return FreezeRequest(address=f.address, version=v, pattern=bcd_digits(c.pattern))


def _dec_baud(f: Frame, v: Version) -> Message:
    c = _parse("baud", f.data, "change baud")
    cls = ChangeBaudReply if f.is_reply else ChangeBaudRequest
    return cls(address=f.address, version=v, feature=c.feature)


def _dec_password(f: Frame, v: Version) -> Message:
    if f.is_reply:
        c = _parse("new_password", f.data, "change password reply")
        return ChangePasswordReply(address=f.address, version=v, new=_password_text(c.new))
    if v is V97:
        c = _parse("password97", f.data, "change password request")
        return ChangePasswordRequest(address=f.address, version=v, old=_password_text(c.old),
                                     new=_password_text(c.new), di=0)
    c = _parse("password7", f.data, "change password request")
    return ChangePasswordRequest(address=f.address, version=v, di=_di(c.di),
                                 old=_password_text(c.old), new=_password_text(c.new))


def _dec_auth(cls: type[ClearDemandRequest] | type[ClearMeterRequest]) -> _Decoder:
    def dec(f: Frame, v: Version) -> Message:
        if v is V97:
            return ClearDemandRequest(address=f.address, version=v)
        c = _parse("auth", f.data, cls.__name__)
        return cls(address=f.address, version=v, password=_password_text(c.password),
                   operator=bcd_digits(c.operator))
    return dec


def _dec_clear_events(f: Frame, v: Version) -> Message:
    c = _parse("auth_di", f.data, "clear events request")
    return ClearEventsRequest(address=f.address, version=v, password=_password_text(c.password),
                              operator=bcd_digits(c.operator), di=_di(c.di))


def _dec_security(f: Frame, v: Version) -> Message:
    if f.is_reply:
        c = _parse("security_reply", f.data, "security reply")
        return SecurityReply(address=f.address, version=v, di=_di(c.di), payload=c.body)
    c = _parse("security", f.data, "security request")
    return SecurityRequest(address=f.address, version=v, di=_di(c.di),
                           operator=bcd_digits(c.operator), payload=c.body)


def _dec_control(f: Frame, v: Version) -> Message:
    c = _parse("control", f.data, "remote control request")
    password, operator = _password_text(c.password), bcd_digits(c.operator)
    if len(c.body) != 8:
        if len(c.body) < 16:
            raise PayloadError(f"remote control request: {len(c.body)} bytes after the operator "
                               "code: neither N1..N8 (8) nor ciphertext (16 or more)")
        return RemoteControlRequest(address=f.address, version=v, password=password,
                                    operator=operator, ciphertext=c.body)
    p = _parse("control_plain", c.body, "remote control request")
    try:
        command: RelayCommand | int = RelayCommand(p.command)
    except ValueError:
        command = p.command
    return RemoteControlRequest(address=f.address, version=v, password=password,
                                operator=operator, command=command, n2=p.n2,
                                expiry=_datetime_digits(p.expiry, "remote control expiry"))


_REQUESTS: dict[tuple[Version, int], _Decoder] = {
    (V7, 0x08): _dec_time, (V97, 0x08): _dec_time,
    (V7, 0x11): _dec_read_request, (V97, 0x01): _dec_read_request,
    (V7, 0x12): _dec_follow_request, (V97, 0x02): _dec_follow_request,
    (V7, 0x13): lambda f, v: ReadAddressRequest(address=f.address, version=v),
    (V7, 0x14): _dec_write, (V97, 0x04): _dec_write,
    (V7, 0x15): _dec_write_address, (V97, 0x0A): _dec_write_address,
    (V7, 0x16): _dec_freeze,
    (V7, 0x17): _dec_baud, (V97, 0x0C): _dec_baud,
    (V7, 0x18): _dec_password, (V97, 0x0F): _dec_password,
    (V7, 0x19): _dec_auth(ClearDemandRequest), (V97, 0x10): _dec_auth(ClearDemandRequest),
    (V7, 0x1A): _dec_auth(ClearMeterRequest),
    (V7, 0x1B): _dec_clear_events,
    (V7, 0x1C): _dec_control,
    (V7, 0x03): _dec_security,
}
_REPLIES: dict[tuple[Version, int], _Decoder] = {
    (V7, 0x11): _dec_read_reply, (V97, 0x01): _dec_read_reply,
    (V7, 0x12): _dec_follow_reply, (V97, 0x02): _dec_follow_reply,
    (V7, 0x13): _dec_read_address_reply,
    (V7, 0x17): _dec_baud, (V97, 0x0C): _dec_baud,
    (V7, 0x18): _dec_password, (V97, 0x0F): _dec_password,
    (V7, 0x03): _dec_security,
}


def decode_message(frame: Frame, version: Version | None = None) -> Message:
    """Typed message of ``frame``; ``version`` settles the shared 08 code (default 2007)."""
    control = frame.control
    if (control == 0x91 or control == 0xB1) and len(frame.data) >= 4:
        # The reply a collector handles millions of times a day: no table lookups.
        d = frame.data
        return ReadReply(address=frame.address, version=V7, di=int.from_bytes(d[:4], "little"),
                         body=d[4:], follow_up=control == 0xB1)
    fn = frame.function
    if version is None:
        try:
            version = version_of(fn)
        except ValueError:
            return Unknown(address=frame.address, frame=frame)
    if frame.is_reply:
        if frame.abnormal:
            c = _parse("error", frame.data, "abnormal reply")
            return AbnormalReply(address=frame.address, version=version, request_function=fn,
                                 error=c.code, extra=c.extra)
        dec = _REPLIES.get((version, fn))
        if dec is None:
            if frame.data:
                return Unknown(address=frame.address, version=version, frame=frame)
            return Ack(address=frame.address, version=version, ack_function=fn)
        return dec(frame, version)
    dec = _REQUESTS.get((version, fn))
    if dec is None:
        return Unknown(address=frame.address, version=version, frame=frame)
    return dec(frame, version)

"""The Fn layouts: a registry keyed by (AFN, Fn, direction), each with parse and build.

A layout's length may depend on its content (the tariff count M, a record count), so
units are parsed one after another; an Fn without a layout stops the parse.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from decimal import Decimal
from typing import Any

from ._errors import PayloadError, UnknownFn
from ._formats import (
    A5,
    A7,
    A9,
    A11,
    A13,
    A14,
    A25,
    NumberFormat,
    decode_a1,
    decode_a15,
    decode_a20,
    decode_a21,
    decode_ascii,
    decode_bin,
    encode_a1,
    encode_a12,
    encode_a15,
    encode_a20,
    encode_a21,
    encode_ascii,
    encode_bin,
)
from ._frame import FIXED_SIZE, HEADER_SIZE, Direction, Frame
from ._units import decode_dt, decode_id, encode_da, encode_dt, encode_id
from ._values import (
    BAUD_CODES,
    ActiveEnergy,
    ArchiveQuery,
    CommParams,
    Curve,
    CurveTag,
    DailySupply,
    EnergyReadings,
    Erc1,
    Erc3,
    Erc14,
    EventQuery,
    EventRecord,
    EventRecords,
    ForwardReply,
    ForwardRequest,
    FrozenActiveEnergy,
    FrozenEnergy,
    Heartbeat,
    ItemResult,
    ItemResults,
    MeterArchive,
    MeterEntry,
    PresentValues,
    Tariffs,
    TerminalVersion,
)

UNITS_OFFSET = HEADER_SIZE + FIXED_SIZE  # where DA of the first unit sits in a frame


class Reader:
    """Bytes of the data-unit area with a cursor; errors name the frame offset."""

    __slots__ = ("base", "buf", "end", "pos")

    def __init__(self, buf: bytes, pos: int, end: int, base: int) -> None:
        self.buf, self.pos, self.end, self.base = buf, pos, end, base

    @property
    def left(self) -> int:
        return self.end - self.pos

    def take(self, n: int, what: str) -> bytes:
        if self.pos + n > self.end:
            raise PayloadError(self.base + self.pos,
                               f"{what} needs {n} bytes, {self.left} left in the frame")
        out = self.buf[self.pos : self.pos + n]
        self.pos += n
        return out

    def byte(self, what: str) -> int:
        return self.take(1, what)[0]

    def error(self, problem: str) -> PayloadError:
        return PayloadError(self.base + self.pos, problem)


Parse = Callable[[Reader], Any]
Build = Callable[[Any], bytes]


@dataclass(frozen=True, slots=True)
class FnSpec:
    """The layout of one (AFN, Fn, direction).

    A ``greedy`` layout's length depends on the bytes left in the frame: its unit is last.
    """

    afn: int
    fn: int
    direction: Direction
    name: str
    parse: Parse
    build: Build
    greedy: bool = False


REGISTRY: dict[tuple[int, int, Direction], FnSpec] = {}


def _register(afn: int, fn: int, direction: Direction | None, name: str, parse: Parse,
              build: Build, *, greedy: bool = False) -> None:
    for d in (Direction.DOWN, Direction.UP) if direction is None else (direction,):
        REGISTRY[(afn, fn, d)] = FnSpec(afn, fn, d, name, parse, build, greedy)


def fn_spec(afn: int, fn: int, direction: Direction) -> FnSpec | None:
    """The layout of an Fn, or None if the codec does not know it."""
    return REGISTRY.get((afn, fn, direction))


# ---- building blocks -------------------------------------------------------------------

def _none(r: Reader) -> None:
    return None


def _build_none(value: Any) -> bytes:
    if value is not None:
        raise ValueError(f"this Fn carries no data, got {value!r}")
    return b""


def _num(r: Reader, fmt: NumberFormat) -> Decimal | None:
    return fmt.decode(r.take(fmt.size, fmt.name))


def _tariffs(r: Reader, fmt: NumberFormat, m: int) -> Tariffs:
    return fmt.decode_many(r.take(fmt.size * (m + 1), f"{m + 1} x {fmt.name}"))


def _build_tariffs(fmt: NumberFormat, values: Tariffs, m: int) -> bytes:
    if len(values) != m + 1:
        raise ValueError(f"{len(values)} values where M={m} needs {m + 1}")
    return b"".join(fmt.encode(v) for v in values)


def _m(r: Reader) -> int:
    m = r.byte("tariff count M")
    if m > 63:
        raise PayloadError(r.base + r.pos - 1, f"tariff count M {m} is implausible")
    return m


def _check_m(values: Tariffs) -> int:
    m = len(values) - 1
    if not 0 <= m <= 63:
        raise ValueError(f"{len(values)} values: total plus 0..63 tariffs")
    return m


def _a1(r: Reader) -> dt.datetime | None:
    return decode_a1(r.take(6, "clock (A.1)"))


def _a15(r: Reader) -> dt.datetime | None:
    return decode_a15(r.take(5, "time (A.15)"))


def _a20(r: Reader) -> dt.date | None:
    return decode_a20(r.take(3, "day (A.20)"))


def _a21(r: Reader) -> dt.date | None:
    return decode_a21(r.take(2, "month (A.21)"))


def _u16(r: Reader, what: str) -> int:
    return int.from_bytes(r.take(2, what), "little")


def _p16(v: int) -> bytes:
    return v.to_bytes(2, "little")


# ---- AFN00 -----------------------------------------------------------------------------

def _parse_items(r: Reader) -> ItemResults:
    afn = r.byte("AFN of the confirmed frame")
    items = []
    while r.left:
        raw = r.take(5, "DA DT ERR")
        pns, fns = decode_id(raw)
        items.append(ItemResult(tuple(pns), tuple(fns), raw[4]))
    return ItemResults(afn, tuple(items))


def _build_items(v: ItemResults) -> bytes:
    return bytes((v.afn,)) + b"".join(
        encode_da(i.pns) + encode_dt(i.fns) + bytes((i.error,)) for i in v.items)


_register(0x00, 1, None, "confirm_all", _none, _build_none)
_register(0x00, 2, None, "deny_all", _none, _build_none)
_register(0x00, 3, None, "confirm_per_item", _parse_items, _build_items, greedy=True)


# ---- AFN01 reset, AFN02 link check ------------------------------------------------------

for _fn, _name in ((1, "hardware_reset"), (2, "data_reset"), (3, "parameter_reset"),
                   (4, "parameter_data_reset")):
    _register(0x01, _fn, Direction.DOWN, _name, _none, _build_none)


def _parse_rest(r: Reader) -> bytes | None:
    # Extra bytes after a login/logout DA/DT are seen in the wild; keep them, don't fail.
    return r.take(r.left, "rest") if r.left else None


def _build_rest(v: bytes | None) -> bytes:
    return v or b""


def _parse_heartbeat(r: Reader) -> Heartbeat | None:
    if not r.left:
        return None  # 2009 style
    return Heartbeat(_a1(r))


def _build_heartbeat(v: Heartbeat | None) -> bytes:
    return b"" if v is None else encode_a1(v.clock)


_register(0x02, 1, None, "login", _parse_rest, _build_rest, greedy=True)
_register(0x02, 2, None, "logout", _parse_rest, _build_rest, greedy=True)
_register(0x02, 3, None, "heartbeat", _parse_heartbeat, _build_heartbeat, greedy=True)


# ---- AFN04 / AFN0A parameters ----------------------------------------------------------

def _parse_comm(r: Reader) -> CommParams:
    raw = r.take(6, "F1 link parameters")
    word = raw[2] | raw[3] << 8
    return CommParams(raw[0], raw[1], word & 0x0FFF, word >> 12 & 0x03, raw[4], raw[5])


def _build_comm(v: CommParams) -> bytes:
    if v.timeout > 0x0FFF or v.retries > 3:
        raise ValueError("timeout is 12 bits, retries 0-3")
    word = v.timeout | v.retries << 12
    return bytes((v.rts, v.send_delay, word & 0xFF, word >> 8, v.con_flags, v.heartbeat))


ENTRY_SIZE = 27


def _parse_entry(raw: bytes) -> MeterEntry:
    return MeterEntry(
        serial=raw[0] | raw[1] << 8,
        pn=raw[2] | raw[3] << 8,
        port=raw[4] & 0x1F,
        baud=BAUD_CODES[raw[4] >> 5],
        protocol=raw[5],
        address=raw[6:12][::-1].hex().upper(),
        password=bytes(raw[12:18]),
        tariffs=raw[18] & 0x3F,
        integer_digits=(raw[19] >> 2 & 3) + 4,
        decimal_digits=(raw[19] & 3) + 1,
        collector=raw[20:26][::-1].hex().upper(),
        major_class=raw[26] >> 4,
        minor_class=raw[26] & 0x0F,
    )


def _build_entry(e: MeterEntry) -> bytes:
    if e.baud not in BAUD_CODES or not 0 <= e.port <= 31:
        raise ValueError(f"entry {e.serial}: baud {e.baud} or port {e.port} not codable")
    if not (4 <= e.integer_digits <= 7 and 1 <= e.decimal_digits <= 4 and len(e.password) == 6
            and 0 <= e.tariffs <= 63 and e.major_class < 16 and e.minor_class < 16):
        raise ValueError(f"entry {e.serial}: a field is outside its range")
    return (_p16(e.serial) + _p16(e.pn)
            + bytes((BAUD_CODES.index(e.baud) << 5 | e.port, e.protocol))
            + encode_a12(e.address) + e.password
            + bytes((e.tariffs, (e.integer_digits - 4) << 2 | (e.decimal_digits - 1)))
            + encode_a12(e.collector) + bytes((e.major_class << 4 | e.minor_class,)))


def _parse_archive(r: Reader) -> MeterArchive:
    n = _u16(r, "item count n")
    raw = r.take(n * ENTRY_SIZE, f"{n} archive items of 27 bytes")
    return MeterArchive(tuple(_parse_entry(raw[i : i + ENTRY_SIZE])
                              for i in range(0, len(raw), ENTRY_SIZE)))


def _build_archive(v: MeterArchive) -> bytes:
    return _p16(len(v.entries)) + b"".join(_build_entry(e) for e in v.entries)


def _parse_archive_query(r: Reader) -> ArchiveQuery:
    n = _u16(r, "serial count n")
    raw = r.take(2 * n, f"{n} serial numbers")
    return ArchiveQuery(tuple(raw[i] | raw[i + 1] << 8 for i in range(0, len(raw), 2)))


def _build_archive_query(v: ArchiveQuery) -> bytes:
    return _p16(len(v.serials)) + b"".join(_p16(s) for s in v.serials)


_register(0x04, 1, Direction.DOWN, "link_parameters", _parse_comm, _build_comm)
_register(0x04, 10, Direction.DOWN, "meter_archive", _parse_archive, _build_archive)
_register(0x0A, 1, Direction.DOWN, "link_parameters", _none, _build_none)
_register(0x0A, 1, Direction.UP, "link_parameters", _parse_comm, _build_comm)
_register(0x0A, 10, Direction.DOWN, "meter_archive", _parse_archive_query,
          _build_archive_query)
_register(0x0A, 10, Direction.UP, "meter_archive", _parse_archive, _build_archive)


# ---- AFN05 F31 time set, AFN09 F1 version ----------------------------------------------

def _build_clock(v: dt.datetime | None) -> bytes:
    return encode_a1(v)


_register(0x05, 31, Direction.DOWN, "time_set", _a1, _build_clock)


def _parse_version(r: Reader) -> TerminalVersion:
    asc = decode_ascii
    with_protocol = r.left != 37  # 2009 layout: no protocol version
    vendor = asc(r.take(4, "vendor code"))
    device = asc(r.take(8, "device number"))
    sw = asc(r.take(4, "software version"))
    sw_date = _a20(r)
    capacity = asc(r.take(11, "capacity code"))
    proto = asc(r.take(4, "protocol version")) if with_protocol else None
    hw = asc(r.take(4, "hardware version"))
    return TerminalVersion(vendor, device, sw, sw_date, capacity, proto, hw, _a20(r))


def _build_version(v: TerminalVersion) -> bytes:
    a = encode_ascii
    return (a(v.vendor, 4) + a(v.device_number, 8) + a(v.software_version, 4)
            + encode_a20(v.software_date) + a(v.capacity_code, 11)
            + (b"" if v.protocol_version is None else a(v.protocol_version, 4))
            + a(v.hardware_version, 4) + encode_a20(v.hardware_date))


_register(0x09, 1, Direction.DOWN, "terminal_version", _none, _build_none)
# Its length (37 or 41) is told by what is left in the frame: it must be the last unit.
_register(0x09, 1, Direction.UP, "terminal_version", _parse_version, _build_version,
          greedy=True)


# ---- AFN0C class 1 ---------------------------------------------------------------------

_F25 = ((A9, 4), (A9, 4), (A5, 4), (A7, 3), (A25, 4), (A9, 4))
_HUNDRED = Decimal(100)


def _parse_f25(r: Reader) -> PresentValues:
    t = _a15(r)
    vals: list[Decimal | None] = []
    for fmt, n in _F25:
        if r.left < fmt.size * n:
            for _ in range(n):  # truncated: raise at the value cut short, as before
                _num(r, fmt)
        group = fmt.decode_many(r.take(fmt.size * n, fmt.name))
        if fmt is A5:
            # A.5 carries %; the quantity power_factor_* is a fraction
            group = tuple(v / _HUNDRED if v is not None else v for v in group)
        vals += group
    return PresentValues(t, *vals)


def _build_f25(v: PresentValues) -> bytes:
    out = bytearray(encode_a15(v.read_time))
    names = iter(list(v.readings()))
    for fmt, n in _F25:
        for _ in range(n):
            x = getattr(v, next(names))
            out += fmt.encode(x * _HUNDRED if x is not None and fmt is A5 else x)
    return bytes(out)


def _energy_parser(reverse: bool) -> Parse:
    def parse(r: Reader) -> EnergyReadings:
        t = _a15(r)
        m = _m(r)
        return EnergyReadings(t, _tariffs(r, A14, m), _tariffs(r, A11, m),
                              _tariffs(r, A11, m), _tariffs(r, A11, m), reverse)
    return parse


def _build_energy(v: EnergyReadings) -> bytes:
    m = _check_m(v.active)
    return (encode_a15(v.read_time) + bytes((m,)) + _build_tariffs(A14, v.active, m)
            + b"".join(_build_tariffs(A11, x, m)
                       for x in (v.reactive, v.quadrant_1st, v.quadrant_2nd)))


def _parse_f129(r: Reader) -> ActiveEnergy:
    t = _a15(r)
    return ActiveEnergy(t, _tariffs(r, A14, _m(r)))


def _build_f129(v: ActiveEnergy) -> bytes:
    m = _check_m(v.values)
    return encode_a15(v.read_time) + bytes((m,)) + _build_tariffs(A14, v.values, m)


for _fn, _name in ((2, "terminal_clock"), (25, "present_values"),
                   (33, "forward_energy"), (34, "reverse_energy"),
                   (129, "forward_active_energy")):
    _register(0x0C, _fn, Direction.DOWN, _name, _none, _build_none)
_register(0x0C, 2, Direction.UP, "terminal_clock", _a1, _build_clock)
_register(0x0C, 25, Direction.UP, "present_values", _parse_f25, _build_f25)
_register(0x0C, 33, Direction.UP, "forward_energy", _energy_parser(False), _build_energy)
_register(0x0C, 34, Direction.UP, "reverse_energy", _energy_parser(True), _build_energy)
_register(0x0C, 129, Direction.UP, "forward_active_energy", _parse_f129, _build_f129)


# ---- AFN0D class 2 ---------------------------------------------------------------------

def _build_day(v: dt.date | None) -> bytes:
    return encode_a20(v)


def _build_month(v: dt.date | None) -> bytes:
    return encode_a21(v)


def _parse_curve_tag(r: Reader) -> CurveTag:
    start = _a15(r)
    return CurveTag(start, r.byte("curve density m"), r.byte("curve point count n"))


def _build_curve_tag(v: CurveTag) -> bytes:
    return encode_a15(v.start) + bytes((v.density, v.points))


def _frozen_parser(monthly: bool) -> Parse:
    def parse(r: Reader) -> FrozenEnergy:
        tag = _a21(r) if monthly else _a20(r)
        t = _a15(r)
        m = _m(r)
        return FrozenEnergy(tag, t, _tariffs(r, A14, m), _tariffs(r, A11, m),
                            _tariffs(r, A11, m), _tariffs(r, A11, m), monthly)
    return parse


def _build_frozen(v: FrozenEnergy) -> bytes:
    m = _check_m(v.active)
    tag = encode_a21(v.tag) if v.monthly else encode_a20(v.tag)
    return (tag + encode_a15(v.read_time) + bytes((m,)) + _build_tariffs(A14, v.active, m)
            + b"".join(_build_tariffs(A11, x, m)
                       for x in (v.reactive, v.quadrant_1, v.quadrant_4)))


def _parse_f161(r: Reader) -> FrozenActiveEnergy:
    tag = _a20(r)
    t = _a15(r)
    return FrozenActiveEnergy(tag, t, _tariffs(r, A14, _m(r)))


def _build_f161(v: FrozenActiveEnergy) -> bytes:
    m = _check_m(v.values)
    return (encode_a20(v.tag) + encode_a15(v.read_time) + bytes((m,))
            + _build_tariffs(A14, v.values, m))


def _parse_f49(r: Reader) -> DailySupply:
    tag = _a20(r)
    return DailySupply(tag, decode_bin(r.take(2, "supply minutes")),
                       decode_bin(r.take(2, "reset count")))


def _build_f49(v: DailySupply) -> bytes:
    return encode_a20(v.tag) + encode_bin(v.supply_minutes, 2) + encode_bin(v.resets, 2)


def _parse_curve(r: Reader) -> Curve:
    tag = _parse_curve_tag(r)
    raw = r.take(4 * tag.points, f"{tag.points} curve points (A.13)")
    return Curve(tag, A13.decode_many(raw))


def _build_curve(v: Curve) -> bytes:
    if len(v.values) != v.tag.points:
        raise ValueError(f"{len(v.values)} values for a tag of {v.tag.points} points")
    return _build_curve_tag(v.tag) + b"".join(A13.encode(x) for x in v.values)


_register(0x0D, 1, Direction.DOWN, "daily_forward_energy", _a20, _build_day)
_register(0x0D, 1, Direction.UP, "daily_forward_energy", _frozen_parser(False), _build_frozen)
_register(0x0D, 17, Direction.DOWN, "monthly_forward_energy", _a21, _build_month)
_register(0x0D, 17, Direction.UP, "monthly_forward_energy", _frozen_parser(True),
          _build_frozen)
_register(0x0D, 49, Direction.DOWN, "daily_supply", _a20, _build_day)
_register(0x0D, 49, Direction.UP, "daily_supply", _parse_f49, _build_f49)
_register(0x0D, 161, Direction.DOWN, "daily_forward_active_energy", _a20, _build_day)
_register(0x0D, 161, Direction.UP, "daily_forward_active_energy", _parse_f161, _build_f161)
for _fn, _name in ((97, "curve_forward_active"), (98, "curve_forward_reactive"),
                   (99, "curve_reverse_active"), (100, "curve_reverse_reactive")):
    _register(0x0D, _fn, Direction.DOWN, _name, _parse_curve_tag, _build_curve_tag)
    _register(0x0D, _fn, Direction.UP, _name, _parse_curve, _build_curve)


# ---- AFN0E events ----------------------------------------------------------------------

def _parse_event_query(r: Reader) -> EventQuery:
    return EventQuery(r.byte("pointer Pm"), r.byte("pointer Pn"))


def _build_event_query(v: EventQuery) -> bytes:
    return bytes((v.start, v.end))


def _parse_erc(erc: int, raw: bytes) -> Erc1 | Erc3 | Erc14 | bytes:
    if erc == 1 and len(raw) == 14:
        return Erc1(decode_a15(raw[:5]), raw[5], decode_ascii(raw[6:10]),
                    decode_ascii(raw[10:14]))
    if erc == 3 and len(raw) >= 6 and (len(raw) - 6) % 4 == 0:
        try:
            idents = tuple((tuple(p), tuple(q))
                           for p, q in (decode_id(raw, i) for i in range(6, len(raw), 4)))
        except PayloadError:
            return bytes(raw)
        return Erc3(decode_a15(raw[:5]), raw[5], idents)
    if erc == 14 and len(raw) >= 10:
        return Erc14(decode_a15(raw[:5]), decode_a15(raw[5:10]), bytes(raw[10:]))
    return bytes(raw)


def _build_erc(rec: EventRecord) -> bytes:
    c = rec.content
    if isinstance(c, Erc1):
        body = (encode_a15(c.time) + bytes((c.flags,)) + encode_ascii(c.old_version, 4)
                + encode_ascii(c.new_version, 4))
    elif isinstance(c, Erc3):
        body = encode_a15(c.time) + bytes((c.master,)) + b"".join(
            encode_da(p) + encode_dt(q) for p, q in c.idents)
    elif isinstance(c, Erc14):
        body = encode_a15(c.off) + encode_a15(c.on) + c.extra
    else:
        body = c
    if len(body) > 255:
        raise ValueError(f"ERC{rec.erc} record of {len(body)} bytes exceeds 255")
    return bytes((rec.erc, len(body))) + body


def _parse_events(r: Reader) -> EventRecords:
    ec1, ec2, pm, pn = r.take(4, "EC1 EC2 Pm Pn")
    records = []
    for _ in range((pn - pm) % 256):
        erc = r.byte("ERC code")
        le = r.byte("ERC length Le")
        records.append(EventRecord(erc, _parse_erc(erc, r.take(le, f"ERC{erc} content"))))
    return EventRecords(ec1, ec2, pm, pn, tuple(records))


def _build_events(v: EventRecords) -> bytes:
    if (v.end - v.start) % 256 != len(v.records):
        raise ValueError(f"pointers {v.start}..{v.end} do not count {len(v.records)} records")
    return bytes((v.ec1, v.ec2, v.start, v.end)) + b"".join(_build_erc(x) for x in v.records)


for _fn, _name in ((1, "important_events"), (2, "normal_events")):
    _register(0x0E, _fn, Direction.DOWN, _name, _parse_event_query, _build_event_query)
    _register(0x0E, _fn, Direction.UP, _name, _parse_events, _build_events)


# ---- AFN10 F1 transparent forwarding ---------------------------------------------------

def _parse_forward(r: Reader) -> ForwardRequest:
    port, control, ft, bt = r.take(4, "port, control, timeouts")
    k = _u16(r, "content length k")
    return ForwardRequest(port, r.take(k, f"{k} bytes of forwarded content"), control, ft, bt)


def _build_forward(v: ForwardRequest) -> bytes:
    return (bytes((v.port, v.control, v.frame_timeout, v.byte_timeout)) + _p16(len(v.content))
            + v.content)


def _parse_forward_reply(r: Reader) -> ForwardReply:
    port = r.byte("port")
    k = _u16(r, "content length k")
    return ForwardReply(port, r.take(k, f"{k} bytes of forwarded reply"))


def _build_forward_reply(v: ForwardReply) -> bytes:
    return bytes((v.port,)) + _p16(len(v.content)) + v.content


_register(0x10, 1, Direction.DOWN, "transparent_forward", _parse_forward, _build_forward)
_register(0x10, 1, Direction.UP, "transparent_forward", _parse_forward_reply,
          _build_forward_reply)


# ---- data units ------------------------------------------------------------------------

@dataclass(frozen=True, slots=True)
class DataUnit:
    """One Fn of one point and its typed value (None for Fn without data)."""

    pn: int
    fn: int
    value: Any = None


@dataclass(frozen=True, slots=True)
class RawUnit:
    """Where a lenient parse stopped: an Fn without a layout and every byte after it."""

    pns: tuple[int, ...]
    fns: tuple[int, ...]
    data: bytes


def unit_name(afn: int, fn: int, direction: Direction) -> str | None:
    spec = REGISTRY.get((afn, fn, direction))
    return spec.name if spec else None


def decode_units(frame: Frame, *, strict: bool = True, base: int = UNITS_OFFSET
                 ) -> list[DataUnit | RawUnit]:
    """Every data unit of ``frame``, in wire order (pn, then Fn within one DA/DT).

    ``base`` is where the unit area starts in the frame, for the offsets of PayloadError.
    An Fn without a layout raises UnknownFn, or with ``strict=False`` ends the list
    with a RawUnit holding the rest.
    """
    units = frame.units
    afn, direction = frame.afn, frame.direction
    out: list[DataUnit | RawUnit] = []
    pos, end = 0, len(units)
    r = Reader(units, 0, end, base)
    while pos < end:
        pns, fns = _ident(units, pos) if end - pos >= 4 else _short(pos, end, base)
        ident_at = pos
        r.pos = pos + 4
        for pn in pns:
            for fn in fns:
                spec = REGISTRY.get((afn, fn, direction))
                if spec is None:
                    if strict:
                        raise UnknownFn(base + ident_at + 2, f"no layout for AFN {afn:02X} "
                                        f"F{fn} {direction.name.lower()}")
                    out.append(RawUnit(tuple(pns), tuple(fns), units[ident_at:]))
                    return out
                out.append(DataUnit(pn, fn, spec.parse(r)))
        pos = r.pos
    return out


_IDENTS: dict[bytes, tuple[tuple[int, ...], tuple[int, ...]]] = {}
_IDENTS_MAX = 4096  # a master sees few distinct DA/DT: bounded in case of garbage


def _ident(units: bytes, pos: int) -> tuple[tuple[int, ...], tuple[int, ...]]:
    """decode_id of the DA DT at ``pos``, remembered (the same few recur in every frame)."""
    key = bytes(units[pos : pos + 4])
    got = _IDENTS.get(key)
    if got is None:
        pns, fns = decode_id(units, pos)  # raises for a DA/DT naming nothing: not kept
        if len(_IDENTS) >= _IDENTS_MAX:
            _IDENTS.clear()
        got = _IDENTS[key] = (tuple(pns), tuple(fns))
    return got


def _short(pos: int, end: int, base: int) -> tuple[list[int], list[int]]:
    raise PayloadError(base + pos, f"{end - pos} bytes left: too few for DA DT (4 bytes)")


def encode_units(afn: int, direction: Direction, units: Iterable[DataUnit]) -> bytes:
    """The data-unit area for ``units``: one DA/DT per unit, in the order given.

    ValueError for an Fn without a layout, or a greedy one (FnSpec) that is not last.
    """
    out = bytearray()
    greedy: FnSpec | None = None
    for u in units:
        spec = REGISTRY.get((afn, u.fn, direction))
        if spec is None:
            raise ValueError(f"no layout for AFN {afn:02X} F{u.fn} {direction.name.lower()}")
        if greedy is not None:
            raise ValueError(f"{greedy.name} takes the rest of the frame: it must be last")
        if spec.greedy:
            greedy = spec
        out += encode_id(u.pn, u.fn) + spec.build(u.value)
    return bytes(out)


def idents(frame: Frame) -> list[tuple[list[int], list[int]]]:
    """The DA/DT of a frame whose units carry no data (requests of AFN0C and the like)."""
    units = frame.units
    return [decode_id(units, i) for i in range(0, len(units) - len(units) % 4, 4)]


__all__ = ["REGISTRY", "DataUnit", "FnSpec", "RawUnit", "decode_dt", "decode_units",
           "encode_units", "fn_spec", "idents", "unit_name"]

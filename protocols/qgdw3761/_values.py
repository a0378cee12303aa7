"""Typed values of the data units (one dataclass per Fn layout).

Fields that are meter quantities carry the :mod:`protocols.quantities` names, and
``readings()`` maps a value to those names; tariff tuples hold the total first.
"""

from __future__ import annotations

import datetime as dt
import functools
from dataclasses import dataclass, field
from decimal import Decimal
from enum import IntEnum

from ..quantities import QUANTITIES

Number = Decimal | None
Tariffs = tuple[Number, ...]  # total, then tariff 1..M

BAUD_CODES = (0, 600, 1200, 2400, 4800, 7200, 9600, 19200)  # AFN04 F10 rate codes
FORWARD_BAUDS = (300, 600, 1200, 2400, 4800, 7200, 9600, 19200)  # AFN10 F1 control


@functools.cache
def _known_names(prefix: str, count: int) -> tuple[tuple[int, str], ...]:
    """(index, quantity) of the first ``count`` tariff values that name a quantity."""
    names = (f"{prefix}_{'total' if i == 0 else f't{i}'}" for i in range(count))
    return tuple((i, name) for i, name in enumerate(names) if name in QUANTITIES)


def _tariff_names(prefix: str, values: Tariffs) -> dict[str, Number]:
    return {name: values[i] for i, name in _known_names(prefix, len(values))}


class ConfirmStyle(IntEnum):
    """How the master answers AFN02: F1 (common practice) or F3 (the 2013 text)."""

    F1 = 1
    F3 = 3


@dataclass(frozen=True, slots=True)
class ItemResult:
    """One item of AFN00 F3: the DA/DT it answers and ERR (0 OK, 1 other, 2 duplicate)."""

    pns: tuple[int, ...]
    fns: tuple[int, ...]
    error: int = 0


@dataclass(frozen=True, slots=True)
class ItemResults:
    """AFN00 F3: confirm/deny per item of the AFN it answers."""

    afn: int
    items: tuple[ItemResult, ...]


@dataclass(frozen=True, slots=True)
class Heartbeat:
    """AFN02 F3 with data (2013): the terminal clock; 2009 heartbeats have no value."""

    clock: dt.datetime | None


@dataclass(frozen=True, slots=True)
class CommParams:
    """AFN04/0A F1: link parameters, among them the heartbeat period in minutes."""

    rts: int  # x20 ms
    send_delay: int  # minutes
    timeout: int  # seconds, 12 bits
    retries: int  # 0-3
    con_flags: int
    heartbeat: int  # minutes


class MeterProtocol(IntEnum):
    NONE = 0
    DLT645_1997 = 1
    AC_SAMPLING = 2
    DLT645_2007 = 30
    CARRIER = 31


@dataclass(frozen=True, slots=True)
class MeterEntry:
    """One item of the meter archive (AFN04 F10, read back with AFN0A F10)."""

    serial: int
    pn: int  # 0 deletes the item
    port: int  # 1..31
    address: str  # 12 digits
    protocol: int = MeterProtocol.DLT645_2007
    baud: int = 0  # bps; 0 = the port's default
    password: bytes = bytes(6)
    tariffs: int = 4
    integer_digits: int = 6  # 4..7
    decimal_digits: int = 2  # 1..4
    collector: str = "000000000000"  # 0: wired straight to the terminal
    major_class: int = 0
    minor_class: int = 0


@dataclass(frozen=True, slots=True)
class MeterArchive:
    entries: tuple[MeterEntry, ...]


@dataclass(frozen=True, slots=True)
class ArchiveQuery:
    """AFN0A F10 request: which serial numbers to read back."""

    serials: tuple[int, ...]


@dataclass(frozen=True, slots=True)
class TerminalVersion:
    """AFN09 F1; ``protocol_version`` is absent from the 2009 layout (37 bytes)."""

    vendor: str
    device_number: str
    software_version: str
    software_date: dt.date | None
    capacity_code: str
    protocol_version: str | None
    hardware_version: str
    hardware_date: dt.date | None


@dataclass(frozen=True, slots=True)
class PresentValues:
    """AFN0C F25: power, power factor (as a fraction), voltage and current now."""

    read_time: dt.datetime | None
    power_active_total: Number = None
    power_active_a: Number = None
    power_active_b: Number = None
    power_active_c: Number = None
    power_reactive_total: Number = None
    power_reactive_a: Number = None
    power_reactive_b: Number = None
    power_reactive_c: Number = None
    power_factor_total: Number = None
    power_factor_a: Number = None
    power_factor_b: Number = None
    power_factor_c: Number = None
    voltage_a: Number = None
    voltage_b: Number = None
    voltage_c: Number = None
    current_a: Number = None
    current_b: Number = None
    current_c: Number = None
    current_n: Number = None  # zero-sequence current
    power_apparent_total: Number = None
    power_apparent_a: Number = None
    power_apparent_b: Number = None
    power_apparent_c: Number = None

    def readings(self) -> dict[str, Number]:
        return {k: getattr(self, k) for k in self.__dataclass_fields__ if k != "read_time"}


@dataclass(frozen=True, slots=True)
class EnergyReadings:
    """AFN0C F33 (forward) / F34 (reverse): active, combined reactive and two quadrants."""

    read_time: dt.datetime | None
    active: Tariffs
    reactive: Tariffs
    quadrant_1st: Tariffs  # F33: quadrant I, F34: quadrant II
    quadrant_2nd: Tariffs  # F33: quadrant IV, F34: quadrant III
    reverse: bool = False

    def readings(self) -> dict[str, Number]:
        d, c, qa, qb = (("reverse", "2", 2, 3) if self.reverse else ("forward", "1", 1, 4))
        out = _tariff_names(f"energy_active_{d}", self.active)
        out.update(_tariff_names(f"energy_reactive_combined{c}", self.reactive))
        out[f"energy_reactive_q{qa}_total"] = self.quadrant_1st[0]
        out[f"energy_reactive_q{qb}_total"] = self.quadrant_2nd[0]
        return out


@dataclass(frozen=True, slots=True)
class ActiveEnergy:
    """AFN0C F129: the forward active reading, total then tariffs."""

    read_time: dt.datetime | None
    values: Tariffs

    def readings(self) -> dict[str, Number]:
        return _tariff_names("energy_active_forward", self.values)


@dataclass(frozen=True, slots=True)
class FrozenEnergy:
    """AFN0D F1 (daily, ``tag`` a day) / F17 (monthly, ``tag`` the month's first day)."""

    tag: dt.date | None
    read_time: dt.datetime | None
    active: Tariffs
    reactive: Tariffs
    quadrant_1: Tariffs
    quadrant_4: Tariffs
    monthly: bool = False

    def readings(self) -> dict[str, Number]:
        return {} if self.monthly else _tariff_names("freeze_daily_energy_active_forward",
                                                     self.active)


@dataclass(frozen=True, slots=True)
class FrozenActiveEnergy:
    """AFN0D F161: daily frozen forward active reading."""

    tag: dt.date | None
    read_time: dt.datetime | None
    values: Tariffs

    def readings(self) -> dict[str, Number]:
        return _tariff_names("freeze_daily_energy_active_forward", self.values)


@dataclass(frozen=True, slots=True)
class DailySupply:
    """AFN0D F49: the terminal's supply minutes and reset count on one day."""

    tag: dt.date | None
    supply_minutes: int | None
    resets: int | None


CURVE_DENSITIES = {1: 15, 2: 30, 3: 60, 254: 5, 255: 1}  # density code -> minutes


@dataclass(frozen=True, slots=True)
class CurveTag:
    """Td_c: curve start (A.15), density code and point count."""

    start: dt.datetime | None
    density: int
    points: int

    @property
    def minutes(self) -> int | None:
        return CURVE_DENSITIES.get(self.density)


@dataclass(frozen=True, slots=True)
class Curve:
    """AFN0D F97-F100: energy per interval (A.13), one value per point of the tag."""

    tag: CurveTag
    values: tuple[Number, ...]


@dataclass(frozen=True, slots=True)
class EventQuery:
    """AFN0E F1/F2 request: records from pointer ``start`` up to ``end`` (exclusive)."""

    start: int
    end: int


@dataclass(frozen=True, slots=True)
class Erc1:
    """Initialisation / version change."""

    time: dt.datetime | None
    flags: int
    old_version: str
    new_version: str


@dataclass(frozen=True, slots=True)
class Erc3:
    """Parameter change: when, by which master, which data units."""

    time: dt.datetime | None
    master: int
    idents: tuple[tuple[tuple[int, ...], tuple[int, ...]], ...]


@dataclass(frozen=True, slots=True)
class Erc14:
    """Power off / on; ``extra`` keeps bytes beyond the 10 of the text (Le=11 seen)."""

    off: dt.datetime | None
    on: dt.datetime | None
    extra: bytes = b""


@dataclass(frozen=True, slots=True)
class EventRecord:
    """One ERC record; ``content`` is raw bytes for ERC codes without a layout here."""

    erc: int
    content: Erc1 | Erc3 | Erc14 | bytes


@dataclass(frozen=True, slots=True)
class EventRecords:
    """AFN0E F1/F2 reply: event counters, pointers and the records."""

    ec1: int
    ec2: int
    start: int
    end: int
    records: tuple[EventRecord, ...] = field(default=())


@dataclass(frozen=True, slots=True)
class ForwardRequest:
    """AFN10 F1 request: send ``content`` (a DL/T645 frame) out of terminal ``port``."""

    port: int
    content: bytes
    control: int = 0x6B  # 2400 bps, 8E1
    frame_timeout: int = 0xBC  # D7 unit (0 = 10 ms, 1 = s), D6-D0 value: 60 s
    byte_timeout: int = 10  # x10 ms

    @classmethod
    def make(cls, port: int, content: bytes, *, baud: int = 2400, parity: str = "even",
             data_bits: int = 8, stop_bits: int = 1, frame_timeout_s: float = 60,
             byte_timeout_ms: int = 100) -> ForwardRequest:
        """A request from plain settings (bps, "none"/"even"/"odd", seconds, ms)."""
        if baud not in FORWARD_BAUDS or parity not in ("none", "even", "odd") \
                or not 5 <= data_bits <= 8 or stop_bits not in (1, 2):
            raise ValueError("serial settings outside what AFN10 F1 can carry")
        control = (FORWARD_BAUDS.index(baud) << 5 | (stop_bits - 1) << 4
                   | (0 if parity == "none" else 0x08 | (0x04 if parity == "odd" else 0))
                   | data_bits - 5)
        if frame_timeout_s < 1.28 and frame_timeout_s * 100 == int(frame_timeout_s * 100):
            ft = int(frame_timeout_s * 100)
        elif frame_timeout_s == int(frame_timeout_s) and 1 <= frame_timeout_s <= 127:
            ft = 0x80 | int(frame_timeout_s)
        else:
            raise ValueError(f"frame timeout {frame_timeout_s} s cannot be carried")
        return cls(port, content, control, ft, byte_timeout_ms // 10)

    @property
    def baud(self) -> int:
        return FORWARD_BAUDS[self.control >> 5]

    @property
    def frame_timeout_seconds(self) -> float:
        v = self.frame_timeout & 0x7F
        return float(v) if self.frame_timeout & 0x80 else v / 100


@dataclass(frozen=True, slots=True)
class ForwardReply:
    """AFN10 F1 reply: the meter's raw answer (may start with FE; empty if none)."""

    port: int
    content: bytes

    def dlt645(self) -> bytes:
        """The content without leading FE, ready for a DL/T645 parser."""
        return self.content.lstrip(b"\xfe")


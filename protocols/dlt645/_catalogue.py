"""The data-identifier catalogue: one table from DI to quantity, unit and BCD format.

Names are the shared vocabulary of :mod:`protocols.quantities`.  Units come from
there too, so a unit is never written twice.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field, replace
from decimal import Decimal
from enum import StrEnum
from typing import Any

from ..quantities import QUANTITIES
from ._bcd import bcd_digits, bcd_to_int, decode_number, digits_to_bcd, encode_number, int_to_bcd
from ._errors import PayloadError, UnknownDataItem
from ._frame import Version


class Format(StrEnum):
    NUMBER = "number"  # BCD with decimals and optional sign bit
    COUNT = "count"  # BCD integer
    DATE = "date"  # YYMMDDWW
    TIME = "time"  # hhmmss
    DATETIME5 = "datetime5"  # YYMMDDhhmm
    DATETIME7 = "datetime7"  # YYMMDDWWhhmmss
    DATETIME6 = "datetime6"  # YYMMDDhhmmss (event records)
    ADDRESS = "address"  # 12 BCD digits
    STATUS = "status"  # little-endian bit field
    BLOCK = "block"  # members back to back


@dataclass(frozen=True, slots=True)
class Bit:
    """A named field of a status word: ``width`` bits from bit ``start``."""

    name: str
    start: int
    width: int = 1
    meaning: str = ""


@dataclass(frozen=True, slots=True)
class StatusWord:
    """A decoded status word: the raw integer and every named field."""

    raw: int
    fields: Mapping[str, int]

    def as_dict(self) -> dict[str, int]:
        return {"raw": self.raw, **self.fields}


Value = Decimal | int | str | dt.date | dt.time | dt.datetime | StatusWord | dict[str, Any]


@dataclass(frozen=True, slots=True)
class DataItem:
    di: int
    version: Version
    name: str
    format: Format
    size: int  # bytes; for blocks, the size of a full block
    decimals: int = 0
    signed: bool = False
    members: tuple[DataItem, ...] = ()
    bits: tuple[Bit, ...] = ()
    note: str = ""
    unit: str = field(default="", compare=False)
    settlement: int = 0  # 0 current; N = as of the Nth previous settlement day (DI0 of energies)
    freeze: int = 0  # 0 not frozen data; N = the Nth last daily freeze (DI0 of 0506xxNN)

    @property
    def di_hex(self) -> str:
        return f"{self.di:04X}" if self.version is Version.V1997 else f"{self.di:08X}"

    @property
    def di_size(self) -> int:
        return 2 if self.version is Version.V1997 else 4

    @property
    def is_block(self) -> bool:
        return self.format is Format.BLOCK


def _item(
    di: int,
    name: str,
    fmt: Format,
    size: int,
    decimals: int = 0,
    signed: bool = False,
    *,
    version: Version = Version.V2007,
    members: tuple[DataItem, ...] = (),
    bits: tuple[Bit, ...] = (),
    note: str = "",
) -> DataItem:
    unit = QUANTITIES[name].unit if name in QUANTITIES else (members[0].unit if members else "")
    return DataItem(di, version, name, fmt, size, decimals, signed, members, bits, note, unit)


def _block(di: int, name: str, members: Iterable[DataItem], *, version: Version = Version.V2007,
           note: str = "") -> DataItem:
    m = tuple(members)
    return _item(di, name, Format.BLOCK, sum(x.size for x in m), version=version, members=m,
                 note=note)


N = Format.NUMBER
_TARIFF_NAMES = ("total", "t1", "t2", "t3", "t4")

DAILY_FREEZES = 62
"""Daily freeze records a DL/T645-2007 meter keeps: DI0 01..3E of ``0506xxNN``."""
_DAILY_FREEZE_BASE = 0x05060000
# DI1 of the daily freeze records this catalogue knows, by record name.
_DAILY_FREEZE_DI1: dict[str, int] = {
    "freeze_daily_time": 0x00,
    "freeze_daily_energy_active_forward": 0x01,
    "freeze_daily_energy_active_reverse": 0x02,
}
_PHASES = ("a", "b", "c")

_FAULT_BITS = (
    Bit("loss_of_voltage", 0), Bit("undervoltage", 1), Bit("overvoltage", 2),
    Bit("loss_of_current", 3), Bit("overcurrent", 4), Bit("overload", 5),
    Bit("power_reverse", 6), Bit("phase_break", 7), Bit("current_break", 8),
)
STATUS_BITS: dict[int, tuple[Bit, ...]] = {
    1: (
        Bit("demand_interval_mode", 1, meaning="0 sliding, 1 interval"),
        Bit("clock_battery_low", 2), Bit("reading_battery_low", 3),
        Bit("active_power_reverse", 4), Bit("reactive_power_reverse", 5),
    ),
    2: (
        Bit("phase_a_active_reverse", 0), Bit("phase_b_active_reverse", 1),
        Bit("phase_c_active_reverse", 2), Bit("phase_a_reactive_reverse", 4),
        Bit("phase_b_reactive_reverse", 5), Bit("phase_c_reactive_reverse", 6),
    ),
    3: (
        Bit("period_set", 0, meaning="0 first, 1 second time-period table"),
        Bit("supply_mode", 1, 2, meaning="0 main, 1 auxiliary, 2 battery"),
        Bit("programming_allowed", 3),
        Bit("relay_open", 4, meaning="relay state: 0 closed, 1 open"),
        Bit("zone_set", 5, meaning="0 first, 1 second time-zone table"),
        Bit("relay_command_open", 6, meaning="relay command state: 0 close, 1 trip"),
        Bit("pre_trip_alarm", 7),
        Bit("prepaid_type", 8, 2, meaning="0 not prepaid, 1 energy-prepaid, 2 money-prepaid"),
        Bit("tariff_set", 10), Bit("step_set", 11),
        Bit("hold_power", 12, meaning="保电 (2013 amendment; check against the meter)"),
    ),
    4: _FAULT_BITS,
    5: _FAULT_BITS,
    6: _FAULT_BITS,
    7: (
        Bit("voltage_reverse_sequence", 0), Bit("current_reverse_sequence", 1),
        Bit("voltage_imbalance", 2), Bit("current_imbalance", 3),
        Bit("auxiliary_power_loss", 4), Bit("power_down", 5), Bit("demand_over_limit", 6),
        Bit("power_factor_low", 7), Bit("current_severe_imbalance", 8),
    ),
}


def _catalogue_2007() -> list[DataItem]:
    items: list[DataItem] = []
    # Energy: DI2 selects the register, DI1 the tariff (FF = block), DI0 the settlement
    # period (00 current, 01..0C the last 1..12 settlement days).
    for di2, base in (
        (0x00, "energy_active_combined"), (0x01, "energy_active_forward"),
        (0x02, "energy_active_reverse"), (0x03, "energy_reactive_combined1"),
        (0x04, "energy_reactive_combined2"),
    ):
        signed = di2 in (0x00, 0x03, 0x04)  # combined registers can go negative
        for period in range(13):
            tariffs = [
                replace(_item((di2 << 16) | (t << 8) | period, f"{base}_{tn}", N, 4, 2, signed),
                        settlement=period)
                for t, tn in enumerate(_TARIFF_NAMES)
            ]
            items += tariffs
            items.append(replace(_block((di2 << 16) | 0xFF00 | period, f"{base}_block", tariffs),
                                 settlement=period))
    for quad in range(1, 5):
        items.append(_item(((4 + quad) << 16), f"energy_reactive_q{quad}_total", N, 4, 2))

    def phase_group(di2: int, prefix: str, size: int, decimals: int, signed: bool,
                    total: bool) -> None:
        names = (("total", 0),) if total else ()
        members = [
            _item(0x02000000 | (di2 << 16) | (idx << 8), f"{prefix}_{p}", N, size, decimals,
                  signed)
            for p, idx in (*names, ("a", 1), ("b", 2), ("c", 3))
        ]
        items.extend(members)
        items.append(_block(0x02000000 | (di2 << 16) | 0xFF00, f"{prefix}_block", members))

    phase_group(0x01, "voltage", 2, 1, False, total=False)
    phase_group(0x02, "current", 3, 3, True, total=False)
    phase_group(0x03, "power_active", 3, 4, True, total=True)
    phase_group(0x04, "power_reactive", 3, 4, True, total=True)
    phase_group(0x05, "power_apparent", 3, 4, True, total=True)
    phase_group(0x06, "power_factor", 2, 3, True, total=True)
    items.append(_item(0x02800001, "current_n", N, 3, 3, True))
    items.append(_item(0x02800002, "frequency", N, 2, 2))

    items.append(_item(0x04000101, "meter_date", Format.DATE, 4))
    items.append(_item(0x04000102, "meter_time", Format.TIME, 3))
    items.append(_item(0x0400010C, "meter_datetime", Format.DATETIME7, 7,
                       note="date, week and time in one read (2013 amendment)"))
    items.append(_item(0x04000401, "meter_address", Format.ADDRESS, 6))
    words = [
        _item(0x04000500 | i, f"status_word_{i}", Format.STATUS, 2, bits=STATUS_BITS[i])
        for i in range(1, 8)
    ]
    items += words
    items.append(_block(0x040005FF, "status_word_block", words))

    items.append(_item(0x00900100, "balance_energy", N, 4, 2,
                       note="energy-prepaid meters (check)"))
    items.append(_item(0x00900101, "overdraft_energy", N, 4, 2))
    items.append(_item(0x00900200, "balance_amount", N, 4, 2))
    items.append(_item(0x00900201, "overdraft_amount", N, 4, 2))
    items.append(_item(0x03330201, "purchase_count", Format.COUNT, 2,
                       note="total purchases after the last purchase (check)"))

    # Daily freezes: DI1 selects the record (00 freeze time, 01 forward, 02 reverse active
    # energy blocks), DI0 the freeze (01 the last .. 3E the 62nd last).  Every freeze has
    # the same names: ``DataItem.freeze`` tells them apart (the last one, 01, is the one
    # :func:`by_name` finds).
    for nn in range(1, DAILY_FREEZES + 1):
        items.append(replace(_item(freeze_di("freeze_daily_time", nn), "freeze_daily_time",
                                   Format.DATETIME5, 5), freeze=nn))
        for direction in ("forward", "reverse"):
            members = tuple(
                _item(0, f"freeze_daily_energy_active_{direction}_{tn}", N, 4, 2)
                for tn in _TARIFF_NAMES
            )
            name = f"freeze_daily_energy_active_{direction}"
            items.append(replace(_block(freeze_di(name, nn), name, members), freeze=nn))
    items.append(_item(0x03110000, "power_down_count", Format.COUNT, 3, note="(check)"))
    items.append(_item(0x03300D00, "cover_open_count", Format.COUNT, 3, note="(check)"))
    items += _event_counters() + _demand()
    return items


# Event counters: 03 xx 00 00 per kind (phase events: count and total minutes of A, B, C,
# 18 bytes), 0330 xx 00 (programming, meter clear, cover open: one count), 1D000001 /
# 1E000001 relay trip / close records (2013 amendment).  The records themselves are in
# _records.py.
_PHASE_EVENT_DI2 = {"voltage_loss": 0x01, "current_loss": 0x0B, "power_reverse": 0x0E}


def _event_counters() -> list[DataItem]:
    out: list[DataItem] = []
    for event, di2 in _PHASE_EVENT_DI2.items():
        members = [
            _item(0, f"{event}_{what}_{p}", Format.COUNT, 3)
            for p in _PHASES for what in ("count", "minutes")
        ]
        out.append(_block(0x03000000 | (di2 << 16), f"{event}_counts", members,
                          note="per phase: count, total minutes"))
    out.append(_item(0x03300000, "programming_count", Format.COUNT, 3))
    out.append(_item(0x03300100, "meter_clear_count", Format.COUNT, 3))
    out.append(_item(0x1D000001, "relay_trip_count", Format.COUNT, 3, note="(check)"))
    out.append(_item(0x1E000001, "relay_close_count", Format.COUNT, 3, note="(check)"))
    return out


def _demand() -> list[DataItem]:
    """Maximum demand 01 DI2 DI1 00 (DI2 01 forward, 02 reverse active; DI1 the tariff):
    XX.XXXX kW then YYMMDDhhmm, 8 bytes.  The block carries the demand's own name (reading
    ``demand_active_forward_total`` brings its time along)."""
    out: list[DataItem] = []
    for di2, direction in ((0x01, "forward"), (0x02, "reverse")):
        for t, tn in enumerate(_TARIFF_NAMES):
            name = f"demand_active_{direction}_{tn}"
            members = (_item(0, name, N, 3, 4), _item(0, f"{name}_time", Format.DATETIME5, 5))
            out.append(_block(0x01000000 | (di2 << 16) | (t << 8), name, members))
    return out


def freeze_di(name: str, n: int = 1) -> int:
    """The DL/T645-2007 DI of daily freeze record ``name`` of the ``n``-th last freeze.

    ``name`` is ``freeze_daily_time``, a block (``freeze_daily_energy_active_forward`` /
    ``_reverse``) or one of its members (``..._forward_t1``: the DI of its block, the
    members have none of their own); ``n`` is 1 (the last freeze) to
    :data:`DAILY_FREEZES`.  ``freeze_di("freeze_daily_energy_active_forward", 3)`` is
    ``0x05060103``.
    """
    if isinstance(n, bool) or not isinstance(n, int) or not 1 <= n <= DAILY_FREEZES:
        raise ValueError(f"daily freeze {n!r}: 1 (the last) to {DAILY_FREEZES}")
    di1 = _DAILY_FREEZE_DI1.get(name)
    if di1 is None:
        block, _, tariff = name.rpartition("_")
        if tariff in _TARIFF_NAMES and block.startswith("freeze_daily_energy_active_"):
            di1 = _DAILY_FREEZE_DI1.get(block)
    if di1 is None:
        raise UnknownDataItem(f"{name!r} is not a DL/T645-2007 daily freeze record")
    return _DAILY_FREEZE_BASE | (di1 << 8) | n


def _catalogue_1997() -> list[DataItem]:
    v = Version.V1997
    items: list[DataItem] = []
    for di_base, base in ((0x9010, "energy_active_forward"), (0x9020, "energy_active_reverse")):
        tariffs = [
            _item(di_base + t, f"{base}_{tn}", N, 4, 2, version=v)
            for t, tn in enumerate(_TARIFF_NAMES)
        ]
        items += tariffs
        items.append(_block(di_base | 0xF, f"{base}_block", tariffs, version=v))

    def phases(di_base: int, prefix: str, size: int, decimals: int, total: bool) -> None:
        members = [
            _item(di_base + idx, f"{prefix}_{p}", N, size, decimals, version=v)
            for p, idx in ((("total", 0),) if total else ()) + (("a", 1), ("b", 2), ("c", 3))
        ]
        items.extend(members)
        items.append(_block(di_base | 0xF, f"{prefix}_block", members, version=v))

    phases(0xB610, "voltage", 2, 0, total=False)
    phases(0xB620, "current", 2, 2, total=False)
    phases(0xB630, "power_active", 3, 4, total=True)
    items.append(_item(0xB640, "power_reactive_total", N, 2, 2, version=v))
    items.append(_item(0xB650, "power_factor_total", N, 2, 3, version=v))
    items.append(_item(0xC010, "meter_date", Format.DATE, 4, version=v))
    items.append(_item(0xC011, "meter_time", Format.TIME, 3, version=v))
    items.append(_item(0xC032, "meter_address", Format.ADDRESS, 6, version=v))
    return items


CATALOGUE: tuple[DataItem, ...] = (*_catalogue_2007(), *_catalogue_1997())

_BY_DI: dict[tuple[Version, int], DataItem] = {}
_BY_NAME: dict[tuple[Version, str], DataItem] = {}
for _it in CATALOGUE:
    assert (_it.version, _it.di) not in _BY_DI, f"duplicate DI {_it.di_hex}"
    _BY_DI[(_it.version, _it.di)] = _it
    if not _it.settlement and _it.freeze <= 1:
        _BY_NAME[(_it.version, _it.name)] = _it


def lookup(di: int, version: Version = Version.V2007) -> DataItem | None:
    return _BY_DI.get((version, di))


def by_di(di: int, version: Version = Version.V2007) -> DataItem:
    item = _BY_DI.get((version, di))
    if item is None:
        width = 4 if version is Version.V1997 else 8
        raise UnknownDataItem(f"DI {di:0{width}X} is not in the DL/T645-{version} catalogue")
    return item


def by_name(name: str, version: Version = Version.V2007) -> DataItem:
    item = _BY_NAME.get((version, name))
    if item is None:
        raise UnknownDataItem(f"quantity {name!r} has no DL/T645-{version} data identifier")
    return item


def items(version: Version) -> list[DataItem]:
    return [i for i in _BY_DI.values() if i.version is version]


def parse_di(text: str, version: Version | None = None) -> tuple[int, Version]:
    """A DI typed by a person: 8 hex digits for 2007, 4 for 1997."""
    t = text.strip().upper().removeprefix("0X")
    if len(t) not in (4, 8) or any(c not in "0123456789ABCDEF" for c in t):
        raise UnknownDataItem(f"{text!r} is not a data identifier (4 or 8 hex digits)")
    v = version or (Version.V1997 if len(t) == 4 else Version.V2007)
    if (len(t) == 4) != (v is Version.V1997):
        raise UnknownDataItem(f"DI {t} does not have the length of a DL/T645-{v} identifier")
    return int(t, 16), v


# ---- values -------------------------------------------------------------------------------

def _two(s: str, i: int) -> int:
    return int(s[i : i + 2])


def decode_value(item: DataItem, data: bytes) -> Value:
    """Decode the value bytes of ``item`` (already without +33H)."""
    fmt = item.format
    if fmt is Format.NUMBER:
        if len(data) != item.size:
            raise PayloadError(f"{item.name} ({item.di_hex}): {len(data)} bytes, "
                               f"expected {item.size}")
        return decode_number(data, item.decimals, item.signed, what=item.name)
    if fmt is Format.BLOCK:
        out: dict[str, Any] = {}
        pos = 0
        for m in item.members:
            if pos >= len(data):
                break  # meters with fewer tariffs or phases send shorter blocks
            chunk = data[pos : pos + m.size]
            if len(chunk) < m.size:
                raise PayloadError(f"{item.name} ({item.di_hex}): block ends inside {m.name} "
                                   f"at data byte {pos}")
            out[m.name] = decode_value(m, chunk)
            pos += m.size
        if pos < len(data):
            raise PayloadError(f"{item.name} ({item.di_hex}): {len(data) - pos} bytes beyond "
                               f"the last member")
        if not out:
            raise PayloadError(f"{item.name} ({item.di_hex}): empty block")
        return out
    if len(data) != item.size:
        raise PayloadError(f"{item.name} ({item.di_hex}): {len(data)} bytes, expected {item.size}")
    if fmt is Format.COUNT:
        return bcd_to_int(data, what=item.name)
    if fmt is Format.STATUS:
        raw = int.from_bytes(data, "little")
        return StatusWord(
            raw, {b.name: (raw >> b.start) & ((1 << b.width) - 1) for b in item.bits}
        )
    if fmt is Format.ADDRESS:
        return bcd_digits(data)
    s = bcd_digits(data)
    if not s.isdigit():
        raise PayloadError(f"{item.name} ({item.di_hex}): {s} is not BCD")
    try:
        if fmt is Format.DATE:
            return dt.date(2000 + _two(s, 0), _two(s, 2), _two(s, 4))
        if fmt is Format.TIME:
            return dt.time(_two(s, 0), _two(s, 2), _two(s, 4))
        if fmt is Format.DATETIME5:
            return dt.datetime(2000 + _two(s, 0), _two(s, 2), _two(s, 4), _two(s, 6), _two(s, 8))
        if fmt is Format.DATETIME7:
            return dt.datetime(2000 + _two(s, 0), _two(s, 2), _two(s, 4), _two(s, 8),
                               _two(s, 10), _two(s, 12))
        if fmt is Format.DATETIME6:
            return dt.datetime(2000 + _two(s, 0), _two(s, 2), _two(s, 4), _two(s, 6),
                               _two(s, 8), _two(s, 10))
    except ValueError as e:
        raise PayloadError(f"{item.name} ({item.di_hex}): {s} is not a valid date/time ({e})") \
            from None
    raise PayloadError(f"{item.name}: unsupported format {fmt}")  # pragma: no cover


def _week(d: dt.date) -> int:
    return d.isoweekday() % 7  # DL/T645 counts Sunday as 0


def encode_value(item: DataItem, value: Any) -> bytes:
    """Inverse of :func:`decode_value`."""
    fmt = item.format
    if fmt is Format.NUMBER:
        return encode_number(value, item.size, item.decimals, item.signed, what=item.name)
    if fmt is Format.BLOCK:
        if not isinstance(value, Mapping):
            raise PayloadError(f"{item.name}: a block needs a mapping of member values")
        out = b""
        for m in item.members:
            if m.name not in value:
                break
            out += encode_value(m, value[m.name])
        return out
    if fmt is Format.COUNT:
        return int_to_bcd(int(value), item.size, what=item.name)
    if fmt is Format.STATUS:
        raw = value.raw if isinstance(value, StatusWord) else int(value)
        return raw.to_bytes(item.size, "little")
    if fmt is Format.ADDRESS:
        return digits_to_bcd(str(value), item.size)
    if fmt is Format.DATE:
        d = value.date() if isinstance(value, dt.datetime) else value
        return digits_to_bcd(f"{d:%y%m%d}{_week(d):02d}", 4)
    if fmt is Format.TIME:
        return digits_to_bcd(f"{value:%H%M%S}", 3)
    if fmt is Format.DATETIME5:
        return digits_to_bcd(f"{value:%y%m%d%H%M}", 5)
    if fmt is Format.DATETIME7:
        return digits_to_bcd(f"{value:%y%m%d}{_week(value):02d}{value:%H%M%S}", 7)
    if fmt is Format.DATETIME6:
        return digits_to_bcd(f"{value:%y%m%d%H%M%S}", 6)
    raise PayloadError(f"{item.name}: unsupported format {fmt}")  # pragma: no cover


def value_to_json(value: Value) -> Any:
    """A JSON-friendly form: numbers as numbers, dates as ISO text, blocks as objects."""
    if isinstance(value, Decimal):
        exponent = value.as_tuple().exponent
        return int(value) if isinstance(exponent, int) and exponent >= 0 else float(value)
    if isinstance(value, StatusWord):
        return value.as_dict()
    if isinstance(value, dict):
        return {k: value_to_json(v) for k, v in value.items()}
    if isinstance(value, (dt.date, dt.time)):
        return value.isoformat()
    return value

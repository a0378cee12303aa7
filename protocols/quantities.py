"""The one vocabulary: quantity names, units and meter identities.

Every protocol codec, device profile, store and the CLI use these names, so a
reading of ``voltage_a`` means the same whether it came from DL/T645, Modbus or
an MQTT gateway.  Names are identifier-safe because time-series stores build
series names from them (``measurement_field``).
"""

from __future__ import annotations

import math
import re
from collections.abc import Iterable
from dataclasses import dataclass
from enum import StrEnum


class Kind(StrEnum):
    """What a quantity's value is."""

    NUMBER = "number"  # exact decimal with a unit
    COUNT = "count"  # integer counter
    STATUS = "status"  # bit field with named bits
    DATE = "date"
    TIME = "time"
    DATETIME = "datetime"
    ADDRESS = "address"


@dataclass(frozen=True, slots=True)
class Quantity:
    name: str
    unit: str
    kind: Kind
    description: str


KWH = "kWh"
KVARH = "kvarh"
VOLT = "V"
AMP = "A"
KW = "kW"
KVAR = "kvar"
KVA = "kVA"
HZ = "Hz"
YUAN = "yuan"
MINUTE = "min"
NONE = ""

_TARIFFS = ("total", "t1", "t2", "t3", "t4")
_PHASES = ("a", "b", "c")


def _build() -> dict[str, Quantity]:
    q: list[Quantity] = []
    N = Kind.NUMBER
    for direction, text in (
        ("combined", "combined active energy"),
        ("forward", "forward (import) active energy"),
        ("reverse", "reverse (export) active energy"),
    ):
        for t in _TARIFFS:
            q.append(Quantity(f"energy_active_{direction}_{t}", KWH, N, f"{text}, {t}"))
    for t in _TARIFFS:
        q.append(Quantity(f"energy_reactive_combined1_{t}", KVARH, N, f"combined reactive 1, {t}"))
        q.append(Quantity(f"energy_reactive_combined2_{t}", KVARH, N, f"combined reactive 2, {t}"))
    for quad in range(1, 5):
        q.append(Quantity(f"energy_reactive_q{quad}_total", KVARH, N, f"quadrant {quad} reactive"))
    for p in _PHASES:
        q.append(Quantity(f"voltage_{p}", VOLT, N, f"phase {p.upper()} voltage"))
    for p in _PHASES:
        q.append(Quantity(f"current_{p}", AMP, N, f"phase {p.upper()} current (signed)"))
    q.append(Quantity("current_n", AMP, N, "neutral current"))
    for kind, unit, text in (
        ("active", KW, "active power"),
        ("reactive", KVAR, "reactive power"),
        ("apparent", KVA, "apparent power"),
    ):
        for p in ("total", *_PHASES):
            q.append(Quantity(f"power_{kind}_{p}", unit, N, f"{text}, {p} (signed)"))
    for p in ("total", *_PHASES):
        q.append(Quantity(f"power_factor_{p}", NONE, N, f"power factor, {p} (signed)"))
    q.append(Quantity("frequency", HZ, N, "grid frequency"))
    q.append(Quantity("meter_date", NONE, Kind.DATE, "meter date (meter local time)"))
    q.append(Quantity("meter_time", NONE, Kind.TIME, "meter time of day (meter local time)"))
    q.append(Quantity("meter_datetime", NONE, Kind.DATETIME, "meter clock (meter local time)"))
    q.append(Quantity("meter_address", NONE, Kind.ADDRESS, "communication address"))
    # Derived by the collector (meter clock minus true time), not read from a register.
    q.append(Quantity("clock_drift", "s", N, "meter clock minus collector clock, seconds"))
    for i in range(1, 8):
        q.append(Quantity(f"status_word_{i}", NONE, Kind.STATUS, f"meter run status word {i}"))
    q.append(Quantity("balance_energy", KWH, N, "prepaid remaining energy"))
    q.append(Quantity("overdraft_energy", KWH, N, "prepaid overdraft energy"))
    q.append(Quantity("balance_amount", YUAN, N, "prepaid remaining amount"))
    q.append(Quantity("overdraft_amount", YUAN, N, "prepaid overdraft amount"))
    q.append(Quantity("purchase_count", NONE, Kind.COUNT, "total purchase count"))
    q.append(Quantity("freeze_daily_time", NONE, Kind.DATETIME, "last daily freeze time"))
    for direction in ("forward", "reverse"):
        for t in _TARIFFS:
            q.append(
                Quantity(
                    f"freeze_daily_energy_active_{direction}_{t}",
                    KWH,
                    N,
                    f"{direction} active energy at the last daily freeze, {t}",
                )
            )
    q.append(Quantity("power_down_count", NONE, Kind.COUNT, "total power-down count"))
    q.append(Quantity("cover_open_count", NONE, Kind.COUNT, "meter cover opened count"))
    q.extend(_event_and_demand())
    return {x.name: x for x in q}


# Event counters (a meter's own count of each kind of event record it keeps) and maximum
# demand.  EVENT_COUNTERS maps an event kind to the quantity that counts it.
_PHASE_EVENTS = (("voltage_loss", "voltage loss (失压)"), ("current_loss", "current loss (失流)"),
                 ("power_reverse", "reverse power flow (潮流反向)"))
EVENT_COUNTERS: dict[str, str] = {
    **{f"{e}_{p}": f"{e}_count_{p}" for e, _ in _PHASE_EVENTS for p in _PHASES},
    "power_down": "power_down_count",
    "cover_open": "cover_open_count",
    "programming": "programming_count",
    "meter_clear": "meter_clear_count",
    "relay_trip": "relay_trip_count",
    "relay_close": "relay_close_count",
}
"""Event kind -> the counter quantity read with the regular poll."""
EVENT_KINDS: tuple[str, ...] = tuple(EVENT_COUNTERS)
DEMAND_DIRECTIONS: tuple[str, ...] = ("forward", "reverse")


def _event_and_demand() -> list[Quantity]:
    q: list[Quantity] = []
    for event, text in _PHASE_EVENTS:
        for p in _PHASES:
            q.append(Quantity(f"{event}_count_{p}", NONE, Kind.COUNT,
                              f"phase {p.upper()} {text} count"))
            q.append(Quantity(f"{event}_minutes_{p}", MINUTE, Kind.COUNT,
                              f"phase {p.upper()} {text} total minutes"))
    for name, text in (("programming_count", "programming (编程) count"),
                       ("meter_clear_count", "meter clear (电表清零) count"),
                       ("relay_trip_count", "relay trip (跳闸) record count"),
                       ("relay_close_count", "relay close (合闸) record count")):
        q.append(Quantity(name, NONE, Kind.COUNT, text))
    for direction in DEMAND_DIRECTIONS:
        for t in _TARIFFS:
            q.append(Quantity(f"demand_active_{direction}_{t}", KW, Kind.NUMBER,
                              f"{direction} active maximum demand, {t}"))
            q.append(Quantity(f"demand_active_{direction}_{t}_time", NONE, Kind.DATETIME,
                              f"when the {direction} active maximum demand ({t}) occurred "
                              "(meter local time)"))
    return q


QUANTITIES: dict[str, Quantity] = _build()

# Plausible values per unit: what a metering point can physically show, generous enough
# for primary-side values behind CT/PT ratios (a 35 kV feeder, a 4000 A busbar).  A value
# outside is a decoding fault or a gateway bug (1e308 V), not a reading; these are not
# alarm limits (collector/polling/rules.py has those).
_UNIT_RANGES: dict[str, tuple[float, float]] = {
    VOLT: (0.0, 1e6),
    AMP: (-1e6, 1e6),
    KW: (-1e7, 1e7),
    KVAR: (-1e7, 1e7),
    KVA: (-1e7, 1e7),
    HZ: (0.0, 100.0),  # 0: some meters report 0 Hz without voltage
    KWH: (-1e12, 1e12),  # combined energy may be negative
    KVARH: (-1e12, 1e12),
    YUAN: (-1e10, 1e10),
    "s": (-1e10, 1e10),  # clock drift: a meter clock decades off is still a reading
}
_NAME_RANGES: dict[str, tuple[float, float]] = {
    **{f"power_factor_{p}": (-1.0, 1.0) for p in ("total", *_PHASES)},
    **{f"status_word_{i}": (0.0, 65535.0) for i in range(1, 8)},
    "purchase_count": (0.0, 1e9),
    "power_down_count": (0.0, 1e9),
    "cover_open_count": (0.0, 1e9),
    **{c: (0.0, 1e9) for c in EVENT_COUNTERS.values()},
}


def _ranges() -> dict[str, tuple[float, float]]:
    out: dict[str, tuple[float, float]] = {}
    for name, q in QUANTITIES.items():
        if name in _NAME_RANGES:
            out[name] = _NAME_RANGES[name]
        elif q.kind is Kind.NUMBER and q.unit in _UNIT_RANGES:
            out[name] = _UNIT_RANGES[q.unit]
    return out


#: Quantity name -> (lowest, highest) plausible value, in the quantity's unit.
PLAUSIBLE: dict[str, tuple[float, float]] = _ranges()


def implausible(name: str, value: float) -> str | None:
    """Why ``value`` cannot be a reading of quantity ``name`` (None if it can).

    Not finite, or outside :data:`PLAUSIBLE` for the quantity, e.g.
    ``"1e+308 V is outside the plausible range 0 to 1e+06 V"``.
    """
    unit = QUANTITIES[name].unit if name in QUANTITIES else ""
    shown = f"{value:g}" + (f" {unit}" if unit else "")
    if not math.isfinite(value):
        return f"{shown} is not a finite number"
    limits = PLAUSIBLE.get(name)
    if limits is not None and not limits[0] <= value <= limits[1]:
        low, high = limits
        return (f"{shown} is outside the plausible range {low:g} to {high:g}"
                + (f" {unit}" if unit else ""))
    return None


# Names an operator types at the CLI, expanded to quantities.
GROUPS: dict[str, tuple[str, ...]] = {
    "energy": (
        "energy_active_combined_total",
        "energy_active_forward_total",
        "energy_active_reverse_total",
    ),
    "voltage": tuple(f"voltage_{p}" for p in _PHASES),
    "current": tuple(f"current_{p}" for p in _PHASES),
    "power": tuple(f"power_active_{p}" for p in ("total", *_PHASES)),
    "pf": ("power_factor_total",),
    "frequency": ("frequency",),
    "balance": ("balance_amount", "overdraft_amount"),
    "status": ("status_word_1", "status_word_3"),
    "datetime": ("meter_date", "meter_time"),
    "address": ("meter_address",),
}


def quantity(name: str) -> Quantity:
    """Look up a quantity by name; KeyError names the unknown one."""
    try:
        return QUANTITIES[name]
    except KeyError:
        raise KeyError(f"unknown quantity {name!r}") from None


_ADDRESS_RE = re.compile(r"^[0-9A]{12}$")
BROADCAST_ADDRESS = "999999999999"
WILDCARD_ADDRESS = "AAAAAAAAAAAA"


def normalise_address(text: str) -> str:
    """A DL/T645 meter address as 12 digits (left-padded); ``A`` marks wildcard nibbles.

    Raises ValueError naming what is wrong.
    """
    t = text.strip().upper()
    if not t or len(t) > 12:
        raise ValueError(f"meter address {text!r}: expected 1-12 digits")
    t = t.rjust(12, "0")
    if not _ADDRESS_RE.match(t):
        raise ValueError(f"meter address {text!r}: only digits 0-9 and wildcard A allowed")
    return t


# ---- which energy a meter is billed on ---------------------------------------------------

ENERGY_DIRECTIONS: tuple[str, ...] = ("forward", "combined")
"""Active energy a meter may be billed on, in order of preference."""


def billing_energy(offered: Iterable[str]) -> str | None:
    """``"forward"`` or ``"combined"``: the active energy that billing, line loss and
    prepaid accounting take from a meter offering the quantities ``offered``.

    Forward energy where the meter has ``energy_active_forward_total``; combined energy
    where ``energy_active_combined_total`` is its only total (some prepaid Modbus meters);
    None with neither.  The tariff registers are ``energy_active_<direction>_<tariff>``.
    """
    names = set(offered)
    for direction in ENERGY_DIRECTIONS:
        if f"energy_active_{direction}_total" in names:
            return direction
    return None

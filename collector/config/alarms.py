"""The alarm rules' names and limits ([alarms]): checked when the configuration is loaded,
used by the alarm engine (collector/polling/rules.py)."""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import dataclass

# Rule names, as listed in AlarmSettings.rules (and in a TOML [alarms] rules = [...]).
RULES: tuple[str, ...] = (
    "energy_backwards",
    "energy_jump",
    "zero_use",
    "voltage_high",
    "voltage_low",
    "current_imbalance",
    "low_power_factor",
    "power_down_counter",
    "cover_open_counter",
    "relay_unexpected",
    # event records, status words 4-7 and power quality (issue 16)
    "meter_cover_open",
    "voltage_loss",
    "current_loss",
    "overload",
    "phase_sequence",
)


# Power-quality rules judge every poll's voltages and frequency: on only when named in
# ``rules`` (they would otherwise add events beside voltage_high / voltage_low).
OPT_IN: tuple[str, ...] = ("frequency_deviation", "voltage_unbalance", "voltage_sag")
KNOWN_RULES: tuple[str, ...] = RULES + OPT_IN


@dataclass(frozen=True, slots=True)
class AlarmSettings:
    """Alarm limits; defaults follow GB/T 12325 for a 220 V supply (+7 % / -10 %)."""

    nominal_voltage: float = 220.0  # V
    voltage_high_pct: float = 7.0  # % of nominal above it
    voltage_low_pct: float = -10.0  # % of nominal (negative: below it)
    voltage_hysteresis_pct: float = 1.0  # % of nominal back inside the limit to clear
    voltage_absent_v: float = 5.0  # below this a phase is taken as not wired; not judged
    jump_kwh_per_hour: float = 50.0
    zero_use_days: float = 3.0
    imbalance_pct: float = 30.0  # (max-min)/max of |phase currents|, in %
    imbalance_min_current: float = 1.0  # A; judged only when the largest reaches this
    imbalance_hysteresis_pct: float = 5.0  # points below the limit to clear
    low_pf: float = 0.5
    pf_min_kw: float = 0.1  # |power_active_total| needed to judge pf (if read)
    pf_hysteresis: float = 0.05
    backwards_tolerance_kwh: float = 0.01
    frequency_nominal: float = 50.0  # Hz
    frequency_band_hz: float = 0.2  # GB/T 15945: +-0.2 Hz
    voltage_unbalance_pct: float = 2.0  # GB/T 15543: 2 % normally allowed
    voltage_sag_pct: float = -10.0  # a reading below nominal + this (90 %) is a sag
    bus_up_window_s: float = 3600.0  # another meter of the bus answered this recently
    rules: frozenset[str] = frozenset(RULES)  # enabled rules

    def __post_init__(self) -> None:
        def need(ok: bool, name: str, what: str) -> None:
            if not ok:
                raise ValueError(f"alarms.{name} = {getattr(self, name)!r}: {what}")

        for name in (
            "nominal_voltage", "voltage_high_pct", "voltage_low_pct", "voltage_hysteresis_pct",
            "voltage_absent_v", "jump_kwh_per_hour", "zero_use_days", "imbalance_pct",
            "imbalance_min_current", "imbalance_hysteresis_pct", "low_pf", "pf_min_kw",
            "pf_hysteresis", "backwards_tolerance_kwh", "frequency_nominal",
            "frequency_band_hz", "voltage_unbalance_pct", "voltage_sag_pct", "bus_up_window_s",
        ):
            v = getattr(self, name)
            need(isinstance(v, int | float) and not isinstance(v, bool) and math.isfinite(v),
                 name, "expected a number")
        need(self.nominal_voltage > 0, "nominal_voltage", "must be > 0")
        need(self.voltage_high_pct > 0, "voltage_high_pct", "must be > 0")
        need(-100 < self.voltage_low_pct < 0, "voltage_low_pct", "must be between -100 and 0")
        need(self.voltage_hysteresis_pct >= 0, "voltage_hysteresis_pct", "must be >= 0")
        need(self.voltage_absent_v >= 0, "voltage_absent_v", "must be >= 0")
        need(self.jump_kwh_per_hour > 0, "jump_kwh_per_hour", "must be > 0")
        need(self.zero_use_days > 0, "zero_use_days", "must be > 0")
        need(0 < self.imbalance_pct < 100, "imbalance_pct", "must be between 0 and 100")
        need(self.imbalance_min_current >= 0, "imbalance_min_current", "must be >= 0")
        need(self.imbalance_hysteresis_pct >= 0, "imbalance_hysteresis_pct", "must be >= 0")
        need(0 <= self.low_pf <= 1, "low_pf", "must be between 0 and 1")
        need(self.pf_min_kw >= 0, "pf_min_kw", "must be >= 0")
        need(self.pf_hysteresis >= 0, "pf_hysteresis", "must be >= 0")
        need(self.backwards_tolerance_kwh >= 0, "backwards_tolerance_kwh", "must be >= 0")
        need(self.frequency_nominal > 0, "frequency_nominal", "must be > 0")
        need(self.frequency_band_hz > 0, "frequency_band_hz", "must be > 0")
        need(self.voltage_unbalance_pct > 0, "voltage_unbalance_pct", "must be > 0")
        need(-100 < self.voltage_sag_pct < 0, "voltage_sag_pct", "must be between -100 and 0")
        need(self.bus_up_window_s > 0, "bus_up_window_s", "must be > 0")
        if isinstance(self.rules, str) or not isinstance(self.rules, Iterable):
            raise ValueError(f"alarms.rules = {self.rules!r}: expected a list of rule names")
        if not isinstance(self.rules, frozenset):
            object.__setattr__(self, "rules", frozenset(self.rules))
        unknown = sorted(str(r) for r in self.rules if r not in KNOWN_RULES)
        if unknown:
            raise ValueError(f"alarms.rules: unknown rule(s) {', '.join(unknown)}; "
                             f"known: {', '.join(KNOWN_RULES)}")

    @property
    def voltage_high_limit(self) -> float:
        return self.nominal_voltage * (1 + self.voltage_high_pct / 100)

    @property
    def voltage_low_limit(self) -> float:
        return self.nominal_voltage * (1 + self.voltage_low_pct / 100)

    @property
    def voltage_hysteresis(self) -> float:
        return self.nominal_voltage * self.voltage_hysteresis_pct / 100


__all__ = ["KNOWN_RULES", "OPT_IN", "RULES", "AlarmSettings"]

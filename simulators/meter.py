"""A protocol-neutral electricity meter: registers, live values, clock, relay and prepaid balance.

State is keyed by the quantity names of :mod:`protocols.quantities`, so a DL/T645 and a
Modbus simulator can serve the same meter.  Everything is deterministic given a seed
and a :class:`Clock`:

* energy is the exact integral of a load curve (24 hourly factors x base kW), split into
  tariffs t1..t4 by the hour of the *meter* clock, and stops while the relay is open;
* live values (voltage, current, power, pf, frequency) carry seeded noise that depends
  only on the current meter second, so every read within one second agrees;
* the meter clock is a free-running RTC started at host time + offset (optionally with
  drift); time sync re-anchors it.
"""

from __future__ import annotations

import cmath
import contextlib
import datetime as dt
import math
import random
import time
from collections import deque
from collections.abc import Mapping
from dataclasses import dataclass, field
from decimal import ROUND_DOWN, ROUND_HALF_UP, Decimal
from typing import Protocol

from protocols.dlt645 import DAILY_FREEZES, RECORDS_KEPT, EventRecord, Format, Version, items
from protocols.quantities import EVENT_COUNTERS, QUANTITIES

Reading = Decimal | int | str | dt.date | dt.time | dt.datetime

# Decimals of every number quantity, as the DL/T645-2007 catalogue encodes it: the
# model rounds to what a meter would show, whatever protocol serves it.
DECIMALS: dict[str, int] = {
    i.name: i.decimals
    for i in items(Version.V2007)
    if i.format is Format.NUMBER and not i.settlement
}

# A household-like day: low at night, a morning bump, the evening peak (fractions of base kW).
DEFAULT_LOAD_CURVE: tuple[float, ...] = (
    0.35, 0.30, 0.28, 0.27, 0.27, 0.30, 0.45, 0.70, 0.80, 0.65, 0.55, 0.55,
    0.60, 0.55, 0.50, 0.50, 0.60, 0.85, 1.00, 1.00, 0.95, 0.85, 0.65, 0.45,
)
# Tariff of each hour: 1 sharp, 2 peak, 3 flat, 4 valley (a typical Chinese TOU table).
DEFAULT_TARIFFS: tuple[int, ...] = (
    4, 4, 4, 4, 4, 4, 4, 3, 2, 2, 2, 1, 1, 3, 3, 3, 3, 2, 2, 1, 1, 2, 3, 4,
)

_HOUR_US = 3_600_000_000
_DAY_US = 24 * _HOUR_US
_KWH_PER_KW_US = Decimal(_HOUR_US)
_ENERGY_Q = Decimal("0.01")
_PHASE_INDEX = {"a": 0, "b": 1, "c": 2}
_POWER_GROUPS = ("power_active", "power_reactive", "power_apparent", "power_factor")


class Unavailable(LookupError):
    """The meter does not hold this quantity (e.g. phase B of a single-phase meter)."""


class Clock(Protocol):
    """Host time: wall clock for the meter's start, monotonic seconds for its running."""

    def now(self) -> dt.datetime: ...

    def monotonic(self) -> float: ...


class SystemClock:
    """The real host clock (naive local time)."""

    def now(self) -> dt.datetime:
        return dt.datetime.now()

    def monotonic(self) -> float:
        return time.monotonic()


class ManualClock:
    """A clock that moves only when told to: for tests and reproducible runs."""

    def __init__(self, start: dt.datetime = dt.datetime(2024, 1, 1), monotonic: float = 0.0):
        self._now = start
        self._mono = monotonic

    def now(self) -> dt.datetime:
        return self._now

    def monotonic(self) -> float:
        return self._mono

    def advance(self, seconds: float) -> None:
        if seconds < 0:
            raise ValueError("a clock cannot run backwards")
        self._now += dt.timedelta(seconds=seconds)
        self._mono += seconds


@dataclass(frozen=True, slots=True)
class MeterConfig:
    """How a simulated meter behaves; ``None`` values are drawn from the meter's seed."""

    base_kw: Decimal | None = None  # load at factor 1.0; seeded 1.0-3.0 kW
    load_curve: tuple[float, ...] = DEFAULT_LOAD_CURVE
    tariff_by_hour: tuple[int, ...] = DEFAULT_TARIFFS
    phases: int = 3  # 1 or 3
    phase_weights: tuple[float, float, float] | None = None  # load split a, b, c (unbalanced)
    nominal_voltage: float = 220.0
    voltage_noise: float = 0.01  # relative standard deviation
    load_noise: float = 0.03  # relative noise of the displayed load around the curve
    power_factor: float = 0.95
    frequency: float = 50.0
    initial_energy: Decimal | None = None  # forward active kWh; seeded 1000-20000
    prepaid: bool = True  # money-prepaid (status word 3 prepaid_type = 2)
    price: Decimal = Decimal("0.5")  # yuan per kWh
    initial_balance: Decimal = Decimal("100")
    alarm_amount: Decimal = Decimal("10")  # pre-trip alarm below this balance
    overdraft_limit: Decimal = Decimal("10")  # trip once the overdraft reaches this
    clock_offset: dt.timedelta = dt.timedelta(0)  # meter clock - host clock at start
    drift_ppm: float = 0.0  # meter clock rate error
    settlement_day: int = 1  # monthly settlement at 00:00 of this day
    daily_freezes: int = DAILY_FREEZES  # daily freezes held at start (history), 0-62
    auto_close_on_permit: bool = True  # the customer presses the button at once

    def __post_init__(self) -> None:
        if len(self.load_curve) != 24 or any(f < 0 for f in self.load_curve):
            raise ValueError("load_curve: 24 non-negative hourly factors")
        if len(self.tariff_by_hour) != 24 or any(t not in (1, 2, 3, 4)
                                                  for t in self.tariff_by_hour):
            raise ValueError("tariff_by_hour: 24 tariff numbers 1-4")
        if self.phases not in (1, 3):
            raise ValueError("phases: 1 or 3")
        if not 0 < self.power_factor <= 1:
            raise ValueError("power_factor: in (0, 1]")
        if not 1 <= self.settlement_day <= 28:
            raise ValueError("settlement_day: 1-28")
        if not 0 <= self.daily_freezes <= DAILY_FREEZES:
            raise ValueError(f"daily_freezes: 0-{DAILY_FREEZES}")


@dataclass(frozen=True, slots=True)
class Sample:
    """Live values of one meter second (phase tuples are a, b, c; power tuples total, a, b, c)."""

    voltage: tuple[Decimal, ...]
    current: tuple[Decimal, ...]
    current_n: Decimal
    power_active: tuple[Decimal, ...]
    power_reactive: tuple[Decimal, ...]
    power_apparent: tuple[Decimal, ...]
    power_factor: tuple[Decimal, ...]
    frequency: Decimal


@dataclass(slots=True)
class _Registers:
    """Energy per tariff (index 0..3 = t1..t4); reactive per quadrant and tariff."""

    forward: list[Decimal] = field(default_factory=lambda: [Decimal(0)] * 4)
    reverse: list[Decimal] = field(default_factory=lambda: [Decimal(0)] * 4)
    reactive: list[list[Decimal]] = field(
        default_factory=lambda: [[Decimal(0)] * 4 for _ in range(4)])

    def copy(self) -> _Registers:
        return _Registers(list(self.forward), list(self.reverse),
                          [list(q) for q in self.reactive])

    def values(self) -> dict[str, Decimal]:
        """Every energy quantity, unrounded."""
        out: dict[str, Decimal] = {}
        regs = {
            "energy_active_forward": self.forward,
            "energy_active_reverse": self.reverse,
            # Combined active in the usual mode word: forward + reverse.
            "energy_active_combined": [f + r for f, r in
                                       zip(self.forward, self.reverse, strict=True)],
            "energy_reactive_combined1": [a + b for a, b in
                                          zip(self.reactive[0], self.reactive[1], strict=True)],
            "energy_reactive_combined2": [a + b for a, b in
                                          zip(self.reactive[2], self.reactive[3], strict=True)],
        }
        for base, per_tariff in regs.items():
            out[f"{base}_total"] = sum(per_tariff, Decimal(0))
            for i, v in enumerate(per_tariff):
                out[f"{base}_t{i + 1}"] = v
        for quad in range(4):
            out[f"energy_reactive_q{quad + 1}_total"] = sum(self.reactive[quad], Decimal(0))
        return out


def _q(value: float | Decimal, decimals: int) -> Decimal:
    return Decimal(value).quantize(Decimal(1).scaleb(-decimals), ROUND_HALF_UP)


def _energy(value: Decimal) -> Decimal:
    # A register shows whole hundredths and never rounds up (it must not run ahead).
    return value.quantize(_ENERGY_Q, ROUND_DOWN)


class MeterModel:
    """One meter's state; every read first brings it up to the clock's present."""

    def __init__(self, address: str, config: MeterConfig | None = None, *,
                 seed: int | str = 0, clock: Clock | None = None) -> None:
        self.address = address
        self.config = cfg = config or MeterConfig()
        self._seed = f"{seed}"
        self._clock = clock or SystemClock()
        setup = random.Random(f"{self._seed}/setup")
        self.base_kw = cfg.base_kw if cfg.base_kw is not None else \
            Decimal(setup.randint(100, 300)) / 100
        self._tan_phi = Decimal(math.tan(math.acos(cfg.power_factor)))
        # kW of each hour while the relay is closed, and the kWh a full day adds per tariff.
        self._hour_kw = [self.base_kw * Decimal(str(f)) for f in cfg.load_curve]
        self._daily = [Decimal(0)] * 4
        for hour, kw in enumerate(self._hour_kw):
            self._daily[cfg.tariff_by_hour[hour] - 1] += kw

        start_energy = cfg.initial_energy if cfg.initial_energy is not None else \
            Decimal(setup.randint(100_000, 2_000_000)) / 100
        day_total = sum(self._daily, Decimal(0)) or Decimal(1)
        self._regs = _Registers()
        for t in range(4):
            share = start_energy * self._daily[t] / day_total
            self._regs.forward[t] = share
            self._regs.reactive[0][t] = share * self._tan_phi
            self._regs.reactive[3][t] = share / 50  # a little capacitive energy at night

        self._mono0 = self._clock.monotonic()
        self._anchor = self._clock.now().replace(microsecond=0) + cfg.clock_offset
        self._local = self._anchor
        self._done_us = 0  # meter-clock microseconds since the anchor already integrated

        self._remaining = cfg.initial_balance  # yuan; negative = overdraft
        self.purchase_count = 0
        self.power_down_count = setup.randint(0, 30)
        self.cover_open_count = setup.randint(0, 2)

        self._relay_open = False
        self.relay_command_open = False
        self.hold_power = False
        self.alarm_commanded = False
        self._tripped_by_balance = False
        self.programming_allowed = False

        # The last daily freezes (newest first, each at a local midnight of the meter
        # clock) and the last 12 monthly settlements, as if the meter had run on its
        # curve before we started it.
        midnight = self._local.replace(hour=0, minute=0, second=0)
        self._freezes: deque[tuple[dt.datetime, _Registers]] = deque(maxlen=DAILY_FREEZES)
        if cfg.daily_freezes:
            frozen = self._rewound(midnight)
            for day in range(cfg.daily_freezes):
                self._freezes.append((midnight - dt.timedelta(days=day), frozen))
                frozen = self._minus(frozen, self._daily)  # a whole day of the curve before
        self._settlements: deque[_Registers] = deque(maxlen=12)
        month = midnight.replace(day=cfg.settlement_day)
        if month > self._local:
            month = _previous_month(month)
        for _ in range(12):
            self._settlements.append(self._rewound(month))
            month = _previous_month(month)

        self._sample_second = -1
        self._sample: Sample | None = None
        self._init_events()
        self._init_curve(midnight)

    # ---- time -------------------------------------------------------------------------

    def update(self) -> None:
        """Integrate energy and balance from the last update to the clock's present."""
        elapsed_s = max(0.0, self._clock.monotonic() - self._mono0)
        local_us = round(elapsed_s * 1e6 * (1 + self.config.drift_ppm / 1e6))
        if local_us > self._done_us:
            self._advance(local_us - self._done_us)
            self._done_us = local_us
        self._check_balance()  # e.g. a meter started, or closed, without credit

    def now(self) -> dt.datetime:
        """The meter clock (whole seconds, as a meter shows it)."""
        self.update()
        return self._local.replace(microsecond=0)

    def set_clock(self, when: dt.datetime) -> None:
        """Set the meter clock (time sync or write): energy so far is booked on the old one."""
        self.update()
        self._mono0 = self._clock.monotonic()
        self._anchor = self._local = when.replace(microsecond=0)
        self._done_us = 0
        self._sample_second = -1

    def _advance(self, us: int) -> None:
        # Piecewise per meter-clock hour: load and tariff are constant inside one hour.
        while us > 0:
            hour_start = self._local.replace(minute=0, second=0, microsecond=0)
            boundary = hour_start + dt.timedelta(hours=1)
            # Load-curve points fall on quarter hours: steps end there too.
            quarter = _next_quarter(self._local)
            gap = (quarter - self._local) // dt.timedelta(microseconds=1)
            step = min(us, gap)
            if not self._powered_down(self._local):
                self._accrue(self._local.hour, step)
            self._local += dt.timedelta(microseconds=step)
            us -= step
            if self._local == quarter:
                self._record_point(quarter)
            if self._local == boundary and boundary.hour == 0:
                self._midnight(boundary)

    def _accrue(self, hour: int, us: int) -> None:
        cfg = self.config
        self._check_balance()
        if self._relay_open:
            return
        kw = self._hour_kw[hour]
        if kw <= 0:
            return
        self._note_demand(kw)
        kwh = kw * us / _KWH_PER_KW_US
        if cfg.prepaid and not self.hold_power:
            headroom = self._remaining + cfg.overdraft_limit  # yuan until the trip
            if kwh * cfg.price >= headroom:
                # The balance runs out inside this step: book up to that instant, then trip.
                kwh = headroom / cfg.price
                self._book(hour, kwh)
                self._trip_for_balance()
                return
        self._book(hour, kwh)

    def _book(self, hour: int, kwh: Decimal) -> None:
        t = self.config.tariff_by_hour[hour] - 1
        self._regs.forward[t] += kwh
        self._regs.reactive[0][t] += kwh * self._tan_phi
        if self.config.prepaid:
            self._remaining -= kwh * self.config.price

    def _check_balance(self) -> None:
        cfg = self.config
        if cfg.prepaid and not self.hold_power and not self._relay_open \
                and self._remaining + cfg.overdraft_limit <= 0:
            self._trip_for_balance()

    def _trip_for_balance(self) -> None:
        self._relay_open = True
        self._tripped_by_balance = True

    def _midnight(self, when: dt.datetime) -> None:
        self._freezes.appendleft((when, self._regs.copy()))
        if when.day == self.config.settlement_day:
            self._settlements.appendleft(self._regs.copy())

    def _rewound(self, when: dt.datetime) -> _Registers:
        """Registers as they were at ``when`` (before start), assuming the curve ran."""
        return self._minus(self._regs, self._curve_energy(when, self._local))

    def _minus(self, regs: _Registers, used: list[Decimal]) -> _Registers:
        """``regs`` less the forward energy ``used`` per tariff (and its reactive share)."""
        out = regs.copy()
        for t in range(4):
            out.forward[t] = max(Decimal(0), out.forward[t] - used[t])
            out.reactive[0][t] = max(Decimal(0), out.reactive[0][t] - used[t] * self._tan_phi)
        return out

    def _curve_energy(self, a: dt.datetime, b: dt.datetime) -> list[Decimal]:
        """kWh per tariff the load curve adds between ``a`` and ``b``."""
        out = [Decimal(0)] * 4
        t = a
        while t < b:
            if t.hour == 0 and t.minute == 0 and t.second == 0 and t.microsecond == 0 \
                    and b - t >= dt.timedelta(days=1):
                days = (b - t).days  # whole days at once
                for i in range(4):
                    out[i] += self._daily[i] * days
                t += dt.timedelta(days=days)
                continue
            boundary = t.replace(minute=0, second=0, microsecond=0) + dt.timedelta(hours=1)
            end = min(boundary, b)
            us = (end - t) // dt.timedelta(microseconds=1)
            out[self.config.tariff_by_hour[t.hour] - 1] += \
                self._hour_kw[t.hour] * us / _KWH_PER_KW_US
            t = end
        return out

    # ---- live values ------------------------------------------------------------------

    def sample(self) -> Sample:
        """Live values of the current meter second (same second, same values)."""
        self.update()
        second = self._done_us // 1_000_000
        if self._sample is None or second != self._sample_second:
            self._sample = self._make_sample(second)
            self._sample_second = second
        return self._with_events(self._sample)

    def _make_sample(self, second: int) -> Sample:
        cfg = self.config
        rng = random.Random(f"{self._seed}/{self._anchor.isoformat()}/{second}")
        kw = 0.0 if self._relay_open else float(self._hour_kw[self._local.hour])
        kw = max(0.0, kw * (1 + rng.gauss(0, cfg.load_noise)))
        weights = [max(0.1, (cfg.phase_weights[ph] if cfg.phase_weights else 1)
                       + rng.gauss(0, 0.1)) for ph in range(cfg.phases)]
        share = [w / sum(weights) for w in weights]
        zero = Decimal(0)
        v, i, p, q, s, pf = [], [], [], [], [], []
        for ph in range(3):
            if ph >= cfg.phases:
                continue
            volts = _q(cfg.nominal_voltage * (1 + rng.gauss(0, cfg.voltage_noise)), 1)
            phase_pf = _q(min(1.0, max(0.5, cfg.power_factor + rng.gauss(0, 0.01))), 3)
            amps = _q(kw * share[ph] * 1000 / (float(volts) * float(phase_pf)), 3)
            # Power from the values the meter shows, so V x I x pf checks out on the reading.
            va = volts * amps / 1000
            watts = va * phase_pf
            v.append(volts)
            i.append(amps)
            p.append(_q(watts, 4))
            s.append(_q(va, 4))
            q.append(_q(Decimal(math.sqrt(max(0.0, float(va * va - watts * watts)))), 4))
            pf.append(phase_pf if amps else Decimal("1.000"))
        p_total, s_total = sum(p, zero), sum(s, zero)
        pf_total = _q(p_total / s_total, 3) if s_total else Decimal("1.000")
        if cfg.phases == 1:
            neutral = i[0]
        else:
            # Phasor sum of the three phase currents, 120 degrees apart.
            phasor = sum(float(x) * cmath.exp(-2j * math.pi * k / 3) for k, x in enumerate(i))
            neutral = _q(abs(phasor), 3)
        return Sample(
            voltage=tuple(v), current=tuple(i), current_n=neutral,
            power_active=(p_total, *p), power_reactive=(sum(q, zero), *q),
            power_apparent=(s_total, *s), power_factor=(pf_total, *pf),
            frequency=_q(cfg.frequency + rng.gauss(0, 0.02), 2),
        )

    # ---- reading ----------------------------------------------------------------------

    @property
    def remaining(self) -> Decimal:
        """Prepaid balance in yuan, negative in overdraft (unrounded)."""
        self.update()
        return self._remaining

    @property
    def daily_freezes(self) -> int:
        """How many daily freezes the meter holds (at most 62)."""
        self.update()
        return len(self._freezes)

    def curve_energy(self, start: dt.datetime, end: dt.datetime) -> Decimal | None:
        """Forward active kWh the load curve adds from ``start`` to ``end`` (meter clock),
        as the meter's history assumes (relay closed); None while ``end`` is to come."""
        if end > self.now():
            return None
        return sum(self._curve_energy(start, end), Decimal(0))

    def read(self, name: str, settlement: int = 0, *, freeze: int = 0) -> Reading:
        """A quantity's present value (``settlement`` N: as of the Nth last settlement day).

        ``freeze`` N: a ``freeze_daily_*`` quantity of the Nth last daily freeze (0 and 1:
        the last).  Numbers are Decimals with the catalogue's decimals; raises
        :class:`Unavailable`.
        """
        self.update()
        if name.startswith("freeze_daily_") or freeze:
            return self._frozen(name, max(freeze, 1))
        if settlement:
            if name.startswith("energy_") and 1 <= settlement <= len(self._settlements):
                values = self._settlements[settlement - 1].values()
                if name in values:
                    return _energy(values[name])
            raise Unavailable(f"{name} of settlement {settlement}")
        if name.startswith("energy_"):
            values = self._regs.values()
            if name in values:
                return _energy(values[name])
        live = self._live(name)
        if live is not None:
            return live
        return self._other(name)

    def _frozen(self, name: str, n: int) -> Reading:
        if not 1 <= n <= len(self._freezes):
            raise Unavailable(f"{name} of daily freeze {n}: the meter holds "
                              f"{len(self._freezes)}")
        when, regs = self._freezes[n - 1]
        if name == "freeze_daily_time":
            return when
        if name.startswith("freeze_daily_energy_active_"):
            values = regs.values()
            key = name.removeprefix("freeze_daily_")
            if key in values:
                return _energy(values[key])
        raise Unavailable(f"{name} of daily freeze {n}")

    def _live(self, name: str) -> Decimal | None:
        if name == "frequency":
            return self.sample().frequency
        if name == "current_n":
            return self.sample().current_n
        prefix, _, part = name.rpartition("_")
        phases = self.config.phases
        if prefix in ("voltage", "current") and part in _PHASE_INDEX:
            if _PHASE_INDEX[part] >= phases:
                raise Unavailable(f"{name}: single-phase meter")
            return getattr(self.sample(), prefix)[_PHASE_INDEX[part]]  # type: ignore[no-any-return]
        if prefix in _POWER_GROUPS and (part == "total" or part in _PHASE_INDEX):
            pos = 0 if part == "total" else _PHASE_INDEX[part] + 1
            if pos > phases:
                raise Unavailable(f"{name}: single-phase meter")
            values: tuple[Decimal, ...] = getattr(self.sample(), prefix)
            return values[pos]
        return None

    def _other(self, name: str) -> Reading:
        cfg = self.config
        if name == "meter_address":
            return self.address
        if name in ("meter_date", "meter_time", "meter_datetime"):
            now = self.now()
            if name == "meter_date":
                return now.date()
            return now.time() if name == "meter_time" else now
        if name.startswith("status_word_"):
            n = int(name.removeprefix("status_word_") or 0)
            if 1 <= n <= 7:
                return self.status_word(n)
        if name == "power_down_count":
            return self.power_down_count
        if name == "cover_open_count":
            return self.cover_open_count
        event_value = self._event_value(name)
        if event_value is not None:
            return event_value
        if cfg.prepaid:  # a money-prepaid meter: no energy balance registers
            if name == "balance_amount":
                return _q(max(self._remaining, Decimal(0)), 2)
            if name == "overdraft_amount":
                return _q(max(-self._remaining, Decimal(0)), 2)
            if name == "purchase_count":
                return self.purchase_count
        raise Unavailable(name)

    def status_word(self, n: int) -> int:
        """Run status word ``n`` (1-7) as an integer; bits as in DL/T645 STATUS_BITS."""
        self.update()
        if n == 3:
            balance_alarm = self.config.prepaid and self._remaining < self.config.alarm_amount
            return (
                (self.programming_allowed << 3)
                | (self._relay_open << 4)
                | (self.relay_command_open << 6)
                | ((self.alarm_commanded or balance_alarm) << 7)
                | ((2 if self.config.prepaid else 0) << 8)
                | (self.hold_power << 12)
            )
        if 4 <= n <= 7:
            return self._fault_word(n)
        return 0  # no battery or reverse-power condition is simulated

    # ---- relay, payment, clearing -------------------------------------------------------

    @property
    def relay_open(self) -> bool:
        """Relay state now (a prepaid meter may have tripped since the last look)."""
        self.update()
        return self._relay_open

    @property
    def tripped_by_balance(self) -> bool:
        self.update()
        return self._tripped_by_balance

    def trip(self) -> bool:
        """Remote trip; refused (False) while hold power is on."""
        self.update()
        if self.hold_power:
            return False
        self.relay_command_open = True
        if not self._relay_open:
            self._relay_record("relay_trip")
        self._relay_open = True
        return True

    def permit_close(self) -> None:
        """Close permitted: the relay closes when the customer presses the button."""
        self.update()
        self.relay_command_open = False
        if self.config.auto_close_on_permit:
            self.press_button()

    def press_button(self) -> None:
        """The customer's button: closes the relay unless a trip command is in force."""
        self.update()
        if not self.relay_command_open:
            self._close()

    def close(self) -> None:
        """Direct close."""
        self.update()
        self.relay_command_open = False
        self._close()

    def _close(self) -> None:
        if self._relay_open:
            self._relay_record("relay_close")
        self._relay_open = False
        self._tripped_by_balance = False
        # Without credit a prepaid meter trips again straight away.
        self._check_balance()

    def set_alarm(self, on: bool) -> None:
        self.update()
        self.alarm_commanded = on

    def set_hold_power(self, on: bool) -> None:
        """Hold power (保电): no trip, remote or for balance, while it is on."""
        self.update()
        self.hold_power = on

    def purchase(self, amount: Decimal) -> None:
        """A payment: credit the balance; a meter tripped for balance closes again."""
        self.update()
        if not self.config.prepaid:
            raise Unavailable("not a prepaid meter")
        self._remaining += amount
        self.purchase_count += 1
        if self._tripped_by_balance and self._remaining + self.config.overdraft_limit > 0:
            if self.config.auto_close_on_permit and not self.relay_command_open:
                self._close()
            else:
                self._tripped_by_balance = False

    def clear_energy(self) -> None:
        """Meter clear: energy registers, freezes, settlements and event counts to zero."""
        self.update()
        self._regs = _Registers()
        self._freezes = deque(((when, _Registers()) for when, _ in self._freezes),
                              maxlen=DAILY_FREEZES)
        self._settlements = deque([_Registers() for _ in self._settlements], maxlen=12)
        self.clear_events()
        self.record_event("meter_clear", self.now())

    def clear_events(self, which: str = "all") -> None:
        """Event clear: ``all``, ``power_down`` or ``cover_open``."""
        if which in ("all", "power_down"):
            self.power_down_count = 0
        if which in ("all", "cover_open"):
            self.cover_open_count = 0
        for kind in EVENT_COUNTERS:
            if which in ("all", kind):
                self._records[kind].clear()
                self._counts[kind] = 0
                self._minutes[kind] = 0

    # ---- load curve (负荷记录) -----------------------------------------------------------

    def _init_curve(self, midnight: dt.datetime) -> None:
        """The points of the day before start and of today so far are made when asked,
        as if the meter had run on its curve (energy walked back from the registers)."""
        self._curve: dict[dt.datetime, dict[str, Decimal]] = {}
        self._down: list[tuple[dt.datetime, dt.datetime]] = []
        self._history = (midnight - dt.timedelta(days=CURVE_HISTORY_DAYS),
                         _next_quarter(self._local) - CURVE_STEP, self._local,
                         self._regs.copy())

    def _curve_point(self, at: dt.datetime) -> dict[str, Decimal] | None:
        if self._powered_down(at):
            return None
        point = self._curve.get(at)
        first, last, origin, regs = self._history
        if point is None and first <= at <= last:
            point = self._point_values(at, self._minus(regs, self._curve_energy(at, origin)))
        return point

    def _record_point(self, at: dt.datetime) -> None:
        if self._powered_down(at):
            return
        self._curve[at] = self._point_values(at, self._regs)
        oldest = at - dt.timedelta(days=CURVE_KEEP_DAYS)
        while self._curve:
            first = next(iter(self._curve))
            if first >= oldest:
                break
            del self._curve[first]

    def _point_values(self, at: dt.datetime, regs: _Registers) -> dict[str, Decimal]:
        """What the meter records at point ``at``: energies from ``regs``, the rest a
        seeded draw around the load of that hour."""
        cfg = self.config
        rng = random.Random(f"{self._seed}/curve/{at.isoformat()}")
        energies = regs.values()
        out = {name: _energy(energies[name]) for name in _CURVE_ENERGIES}
        kw = 0.0 if self._relay_open else float(self._hour_kw[at.hour])
        kw = max(0.0, kw * (1 + rng.gauss(0, cfg.load_noise)))
        pf = cfg.power_factor
        p_total = Decimal(0)
        q_total = Decimal(0)
        for ph in "abc"[:cfg.phases]:
            volts = _q(cfg.nominal_voltage * (1 + rng.gauss(0, cfg.voltage_noise)), 1)
            watts = kw / cfg.phases
            out[f"voltage_{ph}"] = volts
            out[f"current_{ph}"] = _q(watts * 1000 / (float(volts) * pf), 3)
            out[f"power_active_{ph}"] = _q(watts, 4)
            out[f"power_reactive_{ph}"] = _q(watts * float(self._tan_phi), 4)
            out[f"power_factor_{ph}"] = _q(pf, 3)
            p_total += out[f"power_active_{ph}"]
            q_total += out[f"power_reactive_{ph}"]
        out["power_active_total"] = p_total
        out["power_reactive_total"] = q_total
        out["power_factor_total"] = _q(pf, 3)
        return out

    def _powered_down(self, at: dt.datetime) -> bool:
        return any(a <= at < b for a, b in self._down)

    def power_down(self, start: dt.datetime, end: dt.datetime) -> None:
        """The meter is without supply from ``start`` to ``end`` (meter clock): it keeps no
        curve point and adds no energy then (at quarter-hour granularity).  A period in
        the past removes the points it covers."""
        if end <= start:
            raise ValueError("power_down: end must be after start")
        self.update()
        self._down.append((start, end))
        self.power_down_count += 1

    def curve(self, start: dt.datetime, count: int) -> list[tuple[dt.datetime,
                                                                  dict[str, Decimal] | None]]:
        """Up to ``count`` load-curve points from ``start`` (rounded up to a quarter
        hour), none after the meter's present; None where nothing was recorded."""
        now = self.now()
        at = start.replace(second=0, microsecond=0)
        if at != start or at.minute % 15:
            at = _next_quarter(at - dt.timedelta(microseconds=1))
        out: list[tuple[dt.datetime, dict[str, Decimal] | None]] = []
        while len(out) < count and at <= now:
            out.append((at, self._curve_point(at)))
            at += CURVE_STEP
        return out

    def snapshot(self) -> Mapping[str, Reading]:
        """Every quantity this meter holds, by name (for logs and other protocols)."""
        out: dict[str, Reading] = {}
        for name in QUANTITIES:
            with contextlib.suppress(Unavailable):
                out[name] = self.read(name)
        return out


    # ---- event records and maximum demand ----------------------------------------------
    # A meter keeps the last RECORDS_KEPT records of each event kind (newest first) and
    # its count; phase events also their total minutes.  power_down and cover_open keep
    # their counts in the attributes above (tests set them directly).

    def _init_events(self) -> None:
        self._records: dict[str, deque[EventRecord]] = {
            k: deque(maxlen=RECORDS_KEPT) for k in EVENT_COUNTERS}
        self._counts: dict[str, int] = dict.fromkeys(EVENT_COUNTERS, 0)
        self._minutes: dict[str, int] = dict.fromkeys(EVENT_COUNTERS, 0)
        self._deviations: list[tuple[dt.datetime, dt.datetime, Decimal, str]] = []
        month = self._local.replace(day=1, hour=0, minute=0, second=0)
        self._demand: dict[str, tuple[Decimal, dt.datetime]] = {
            f"{d}_{t}": (Decimal(0), month) for d in ("forward", "reverse")
            for t in ("total", "t1", "t2", "t3", "t4")}

    def event_count(self, kind: str) -> int:
        if kind == "power_down":
            return self.power_down_count
        if kind == "cover_open":
            return self.cover_open_count
        return self._counts[kind]

    def record_event(self, kind: str, start: dt.datetime, end: dt.datetime | None = None,
                     **fields: object) -> EventRecord:
        """The meter notes an event of ``kind`` from ``start`` (meter local time) to ``end``
        (None: still going on): its count goes up and it becomes record 1."""
        self.update()
        if kind not in EVENT_COUNTERS:
            raise ValueError(f"unknown event kind {kind!r}")
        if kind == "power_down":
            self.power_down_count += 1
        elif kind == "cover_open":
            self.cover_open_count += 1
        else:
            self._counts[kind] += 1
        if end is not None and kind.rsplit("_", 1)[-1] in _PHASE_INDEX:
            self._minutes[kind] += int((end - start).total_seconds() // 60)
        record = EventRecord(kind, 1, start.replace(microsecond=0),
                             None if end is None else end.replace(microsecond=0),
                             {k: v for k, v in fields.items()})  # type: ignore[misc]
        self._records[kind].appendleft(record)
        return record

    def event_record(self, kind: str, n: int) -> EventRecord | None:
        """Record ``n`` (1 the latest) of ``kind`` as the meter shows it now: an end still
        in the future is not shown yet; None for a slot it does not hold."""
        self.update()
        records = self._records[kind]
        if not 1 <= n <= len(records):
            return None
        r = records[n - 1]
        end = r.end if r.end is not None and r.end <= self._local else None
        return EventRecord(kind, n, r.start, end, r.fields)

    def _active(self, kind: str) -> bool:
        now = self._local
        return any(r.start <= now and (r.end is None or now < r.end)
                   for r in self._records[kind])

    def lose_voltage(self, phase: str, start: dt.datetime,
                     end: dt.datetime | None = None) -> EventRecord:
        """Phase ``phase`` loses its voltage (失压) from ``start`` to ``end``: the phase
        reads 0 V and status word 4/5/6 bit 0 is set meanwhile."""
        return self.record_event(f"voltage_loss_{phase}", start, end)

    def lose_current(self, phase: str, start: dt.datetime,
                     end: dt.datetime | None = None) -> EventRecord:
        return self.record_event(f"current_loss_{phase}", start, end)

    def open_cover(self, at: dt.datetime, until: dt.datetime | None = None) -> EventRecord:
        """The meter cover is opened at ``at`` (and closed at ``until``)."""
        before = self._quadrant_energies("before")
        return self.record_event("cover_open", at, until, **before)

    def power_down_event(self, start: dt.datetime, end: dt.datetime) -> EventRecord:
        """The meter was without supply from ``start`` to ``end``."""
        return self.record_event("power_down", start, end)

    def program(self, at: dt.datetime, operator: str = "00000000",
                dis: tuple[str, ...] = ()) -> EventRecord:
        """A programming (编程) record: up to ten DIs written, unused ones FFFFFFFF."""
        written = {f"di_{i + 1}": (dis[i] if i < len(dis) else "FFFFFFFF") for i in range(10)}
        return self.record_event("programming", at, None, operator=operator, **written)

    def _relay_record(self, kind: str) -> None:
        self.record_event(kind, self._local, None, operator="00000000",
                          **self._quadrant_energies("at"))

    def _quadrant_energies(self, prefix: str) -> dict[str, Decimal]:
        regs = self._regs
        out = {f"{prefix}_forward_kwh": _energy(sum(regs.forward, Decimal(0))),
               f"{prefix}_reverse_kwh": _energy(sum(regs.reverse, Decimal(0)))}
        for q in range(4):
            out[f"{prefix}_q{q + 1}_kvarh"] = _energy(sum(regs.reactive[q], Decimal(0)))
        return out

    def deviate_voltage(self, start: dt.datetime, end: dt.datetime, factor: float,
                        phases: str = "abc") -> None:
        """The supply of ``phases`` runs at ``factor`` x its voltage from ``start`` to
        ``end`` (meter local time): a sag, a swell or a day out of band."""
        self._deviations.append((start, end, Decimal(str(factor)), phases))

    def _with_events(self, sample: Sample) -> Sample:
        lost = [p for p in _PHASE_INDEX if self._active(f"voltage_loss_{p}")]
        now = self._local
        scaled = [(f, ph) for a, b, f, ph in self._deviations if a <= now < b]
        if not lost and not scaled:
            return sample
        volts = list(sample.voltage)
        for factor, phases in scaled:
            for p in phases:
                if _PHASE_INDEX[p] < len(volts):
                    volts[_PHASE_INDEX[p]] = _q(volts[_PHASE_INDEX[p]] * factor, 1)
        for p in lost:
            if _PHASE_INDEX[p] < len(volts):
                volts[_PHASE_INDEX[p]] = Decimal("0.0")
        return Sample(tuple(volts), sample.current, sample.current_n, sample.power_active,
                      sample.power_reactive, sample.power_apparent, sample.power_factor,
                      sample.frequency)

    def _fault_word(self, n: int) -> int:
        """Status words 4-6 (phase A-C faults: bit 0 loss of voltage, 3 loss of current,
        6 reverse power); 7 (bit 0 voltage phase sequence reversed) is never set here."""
        if n == 7:
            return 0
        p = "abc"[n - 4]
        return (self._active(f"voltage_loss_{p}") | self._active(f"current_loss_{p}") << 3
                | self._active(f"power_reverse_{p}") << 6)

    def _event_value(self, name: str) -> Reading | None:
        for kind, counter in EVENT_COUNTERS.items():
            if name == counter:
                return self.event_count(kind)
            if name == counter.replace("_count_", "_minutes_") and "_count_" in counter:
                return self._minutes[kind]
        if name.startswith("demand_active_"):
            key = name.removeprefix("demand_active_").removesuffix("_time")
            if key in self._demand:
                value, when = self._demand[key]
                return when if name.endswith("_time") else _q(value, 4)
        return None

    def _note_demand(self, kw: Decimal) -> None:
        # The load is constant within an hour: the 15-min demand equals its kW, first
        # reached at the end of the quarter under way.
        tariff = self.config.tariff_by_hour[self._local.hour]
        end = self._local.replace(minute=self._local.minute // 15 * 15, second=0,
                                  microsecond=0) + dt.timedelta(minutes=15)
        for key in ("forward_total", f"forward_t{tariff}"):
            if kw > self._demand[key][0]:
                self._demand[key] = (kw, end)

    def demand_peak(self, kw: Decimal, at: dt.datetime, direction: str = "forward") -> None:
        """A demand of ``kw`` (15-min average) ending at ``at`` (meter local time)."""
        self.update()
        tariff = self.config.tariff_by_hour[at.hour]
        for key in (f"{direction}_total", f"{direction}_t{tariff}"):
            if kw > self._demand[key][0]:
                self._demand[key] = (Decimal(kw), at.replace(second=0, microsecond=0))
CURVE_STEP = dt.timedelta(minutes=15)
CURVE_HISTORY_DAYS = 1  # whole days of curve before the day the model starts
CURVE_KEEP_DAYS = 10
_CURVE_ENERGIES = ("energy_active_forward_total", "energy_active_reverse_total",
                   "energy_reactive_combined1_total", "energy_reactive_combined2_total")


def _next_quarter(when: dt.datetime) -> dt.datetime:
    """The first quarter hour strictly after ``when``."""
    base = when.replace(minute=when.minute - when.minute % 15, second=0, microsecond=0)
    return base + CURVE_STEP


def _previous_month(when: dt.datetime) -> dt.datetime:
    if when.month == 1:
        return when.replace(year=when.year - 1, month=12)
    return when.replace(month=when.month - 1)

"""Alarm rules: turn each poll's readings into events, once per condition.

Pure logic: no I/O, no asyncio.  The daemon hands :meth:`AlarmEngine.observe` the
readings of one meter after each poll; the engine keeps a little state per meter
(last energy and when, counters, relay state, the conditions now active) so a
condition raises one event when it starts and one ``<kind>_cleared`` info event
when it ends, never one per poll.

=====================  ========  ==============================================
kind                   severity  raised when (``_cleared`` at severity 0 when)
=====================  ========  ==============================================
energy_backwards       2 alarm   forward energy fell by more than the tolerance
                                 (energy climbs back to the value before the drop)
energy_jump            1 warn    kWh per hour between two readings above the limit
                                 (a later interval is within the limit)
zero_use               1 warn    forward energy flat for ``zero_use_days`` with the
                                 relay closed or unknown (energy moves, relay opens)
voltage_high           1 warn    a phase above nominal + ``voltage_high_pct``
                                 (back 1 % of nominal below the limit)
voltage_low            1 warn    a phase below nominal + ``voltage_low_pct``
                                 (back 1 % of nominal above the limit)
current_imbalance      1 warn    (max-min)/max of phase currents above the limit
                                 (5 points below the limit)
low_power_factor       1 warn    abs(pf) below ``low_pf`` while power is drawn
                                 (0.05 above the limit)
power_down_counter     1 warn    the power-down count grew (no cleared event)
cover_open_counter     2 alarm   the cover-open count grew (no cleared event)
relay_unexpected       2 alarm   status word 3 relay bit disagrees with the
                                 expected state (it agrees again)
comm_loss              1 warn    N consecutive failed reads (:class:`CommLossTracker`)
comm_restored          0 info    first good read after a ``comm_loss``
schedule_overdue       1 warn    a schedule not done by the end of its window
=====================  ========  ==============================================

Readings flagged ESTIMATED or BACKFILLED are ignored (not live from the meter), as
are non-finite values.  A meter's clock (``meter_ts``) times the energy rate when
both readings have one and neither is CLOCK_SUSPECT; otherwise the collector's
``ts`` does.  Events carry the collector ``ts`` of the reading that raised them.
"""

from __future__ import annotations

import datetime as dt
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from collector.config.alarms import RULES, AlarmSettings
from collector.store.records import Event, Quality, Reading, from_ms, to_ms

__all__ = [
    "RULES",
    "SEVERITY",
    "AlarmEngine",
    "AlarmSettings",
    "CommLossTracker",
    "ScheduleWatch",
    "relay_bits",
    "schedule_overdue",
    "severity",
]

ENERGY = "energy_active_forward_total"
POWER = "power_active_total"
PF = "power_factor_total"
STATUS3 = "status_word_3"
PHASES = ("a", "b", "c")
COUNTERS = {"power_down_count": "power_down_counter", "cover_open_count": "cover_open_counter"}

# status word 3 (DL/T645-2007 run status word 3)
RELAY_OPEN_BIT = 1 << 4  # relay state: 1 = open (tripped)
RELAY_TRIP_CMD_BIT = 1 << 6  # relay command: 1 = trip in force
HOLD_POWER_BIT = 1 << 12  # hold power (保电) in force

# The one table of event kinds and their severity (0 info, 1 warning, 2 alarm: what
# ``amic events --alarms`` shows), for every event the collector raises; docs/schema.md
# lists the same (tests/test_event_severity.py checks both, and every Event(...) in
# collector/).  The ``<rule>_cleared`` events of the alarm rules are all 0.
SEVERITY: dict[str, int] = {
    # alarm rules (this module)
    "energy_backwards": 2,
    "energy_jump": 1,
    "zero_use": 1,
    "voltage_high": 1,
    "voltage_low": 1,
    "current_imbalance": 1,
    "low_power_factor": 1,
    "power_down_counter": 1,
    "cover_open_counter": 2,
    "relay_unexpected": 2,
    "comm_loss": 1,
    "comm_restored": 0,
    "schedule_overdue": 1,
    # polling (scheduler.py)
    "meter_dead": 1,
    "meter_recovered": 0,
    "bus_down": 2,
    "bus_up": 0,
    # clocks (timesync.py)
    "clock_drift_large": 2,
    "clock_sync_failed": 1,
    "clock_synced": 0,
    # prepaid (prepaid.py)
    "balance_warning_1": 1,
    "balance_warning_2": 1,
    "balance_exhausted": 2,
    "balance_register_backwards": 2,
    "trip_deferred": 1,
    "trip_skipped_protected": 1,
    "restore_requested": 0,
    "topup": 0,
    "topup_duplicate": 1,
    "topup_written": 0,
    "topup_not_written": 2,
    "purchase_unknown": 1,
    # read audits (audit_reads.py)
    "audit_failed": 1,
    "audit_mismatch": 2,
    # store, forwarder, daily figures, MQTT reports, the daemon
    "store_full": 2,
    "store_recovered": 0,
    "disk_low": 1,
    "disk_low_cleared": 0,
    "forward_rejected": 2,
    "lineloss_incomplete": 1,
    "report_rejected": 1,
    "collector_started": 0,
    "collector_stopped": 0,
    "dtu_offline": 1,
    "dtu_online": 0,
    "concentrator_erc1": 1,
    "concentrator_erc3": 0,
    "concentrator_erc14": 1,
    "concentrator_offline": 1,
    "concentrator_online": 0,
    # the command channel and the broker (control.py, mqttlink.py)
    "command_refused": 2,
    "broker_session_lost": 2,
}


def severity(kind: str) -> int:
    """The severity of an event kind (KeyError for a kind not in :data:`SEVERITY`)."""
    if kind not in SEVERITY and kind.removesuffix("_cleared") in SEVERITY:
        return 0
    return SEVERITY[kind]


_EPS = 1e-6  # energy "moved" when it grew by more than this (kWh)
_SKIP = Quality.ESTIMATED | Quality.BACKFILLED
_STATE_VERSION = 1


def relay_bits(status_word_3: float) -> tuple[bool, bool, bool]:
    """(relay open, trip command in force, hold power in force) from status word 3."""
    w = int(status_word_3)
    return bool(w & RELAY_OPEN_BIT), bool(w & RELAY_TRIP_CMD_BIT), bool(w & HOLD_POWER_BIT)


@dataclass(slots=True)
class _Energy:
    value: float
    ts: dt.datetime  # collector time
    mts: dt.datetime | None  # meter time, when trustworthy


@dataclass(slots=True)
class _MeterState:
    energy: _Energy | None = None
    flat_since: dt.datetime | None = None  # collector time energy last moved (relay closed)
    pre_drop: _Energy | None = None  # the energy before a drop, while energy_backwards is on
    counters: dict[str, float] = field(default_factory=dict)
    relay_open: bool | None = None  # last known relay state
    active: set[str] = field(default_factory=set)  # "voltage_high:a", "zero_use", ...


def _fmt(x: float) -> str:
    return f"{x:g}"


class AlarmEngine:
    """Evaluates the alarm rules on each poll of each meter; see the module table."""

    def __init__(self, settings: AlarmSettings | None = None) -> None:
        self.settings = settings or AlarmSettings()
        self._meters: dict[str, _MeterState] = {}

    # -- public -----------------------------------------------------------------

    def observe(self, meter: str, readings: Sequence[Reading], *, bus: str | None = None,
                expected_relay_open: bool | None = None) -> list[Event]:
        """The events one poll of ``meter`` raises or clears (oldest rule first).

        ``readings`` are taken as ``meter``'s; of several readings of one quantity the
        latest (by ``ts``) counts.  ``expected_relay_open`` is what the head-end last
        commanded (None: not checked).
        """
        st = self._meters.setdefault(meter, _MeterState())
        latest: dict[str, Reading] = {}
        for r in readings:
            if r.quality & _SKIP or not math.isfinite(r.value):
                continue
            old = latest.get(r.quantity)
            if old is None or r.ts >= old.ts:
                latest[r.quantity] = r
        out: list[Event] = []
        ctx = _Ctx(self.settings, meter, bus, st, out)
        ctx.relay(latest.get(STATUS3), expected_relay_open)
        if ENERGY in latest:
            ctx.energy(latest[ENERGY])
        ctx.voltages(latest)
        ctx.imbalance(latest)
        ctx.power_factor(latest.get(PF), latest.get(POWER))
        for quantity, rule in COUNTERS.items():
            if quantity in latest:
                ctx.counter(rule, latest[quantity])
        return out

    def active(self, meter: str) -> frozenset[str]:
        """The conditions now on for a meter, e.g. ``{"voltage_low:b", "zero_use"}``."""
        st = self._meters.get(meter)
        return frozenset(st.active) if st else frozenset()

    def forget(self, meter: str) -> None:
        """Drop a meter's baselines (meter replaced or removed); no events."""
        self._meters.pop(meter, None)

    def state_dump(self) -> dict[str, Any]:
        """Baselines and active conditions as a JSON-able dict (times in epoch ms)."""

        def energy(e: _Energy | None) -> list[Any] | None:
            if e is None:
                return None
            return [e.value, to_ms(e.ts), None if e.mts is None else to_ms(e.mts)]

        meters: dict[str, Any] = {}
        for name, st in self._meters.items():
            meters[name] = {
                "energy": energy(st.energy),
                "flat_since": None if st.flat_since is None else to_ms(st.flat_since),
                "pre_drop": energy(st.pre_drop),
                "counters": dict(st.counters),
                "relay_open": st.relay_open,
                "active": sorted(st.active),
            }
        return {"version": _STATE_VERSION, "meters": meters}

    def state_load(self, data: Mapping[str, Any]) -> None:
        """Restore what :meth:`state_dump` gave; ValueError if it is not that shape."""
        try:
            if data.get("version") != _STATE_VERSION:
                raise ValueError(f"unsupported alarm state version {data.get('version')!r}")
            loaded: dict[str, _MeterState] = {}

            def energy(x: Any) -> _Energy | None:
                if x is None:
                    return None
                value, ts, mts = x
                return _Energy(float(value), from_ms(int(ts)),
                               None if mts is None else from_ms(int(mts)))

            for name, m in data["meters"].items():
                flat = m.get("flat_since")
                relay = m.get("relay_open")
                loaded[str(name)] = _MeterState(
                    energy=energy(m.get("energy")),
                    flat_since=None if flat is None else from_ms(int(flat)),
                    pre_drop=energy(m.get("pre_drop")),
                    counters={str(k): float(v) for k, v in m.get("counters", {}).items()},
                    relay_open=None if relay is None else bool(relay),
                    active={str(a) for a in m.get("active", [])},
                )
        except (KeyError, TypeError, AttributeError) as e:
            raise ValueError(f"bad alarm state: {e!r}") from None
        self._meters = loaded


class _Ctx:
    """One observe() call: settings, meter, its state and the events raised so far."""

    def __init__(self, s: AlarmSettings, meter: str, bus: str | None, st: _MeterState,
                 out: list[Event]) -> None:
        self.s = s
        self.meter = meter
        self.bus = bus
        self.st = st
        self.out = out

    def on(self, rule: str) -> bool:
        return rule in self.s.rules

    def emit(self, kind: str, ts: dt.datetime, value: float | None, detail: str) -> None:
        self.out.append(Event(kind, ts, self.meter, self.bus, SEVERITY[kind], value, detail))

    def raise_(self, key: str, ts: dt.datetime, value: float | None, detail: str) -> None:
        """Raise condition ``key`` (``kind`` or ``kind:phase``) unless already on."""
        if key not in self.st.active:
            self.st.active.add(key)
            self.emit(key.partition(":")[0], ts, value, detail)

    def clear(self, key: str, ts: dt.datetime, value: float | None, detail: str) -> None:
        if key in self.st.active:
            self.st.active.discard(key)
            kind = key.partition(":")[0]
            self.out.append(Event(f"{kind}_cleared", ts, self.meter, self.bus, 0, value, detail))

    # -- rules ------------------------------------------------------------------

    def relay(self, r: Reading | None, expected_open: bool | None) -> None:
        if r is None:
            return
        is_open, trip_cmd, hold = relay_bits(r.value)
        self.st.relay_open = is_open
        if expected_open is None or not self.on("relay_unexpected"):
            return
        state = "open" if is_open else "closed"
        if is_open == expected_open:
            self.clear("relay_unexpected", r.ts, r.value, f"relay {state} as expected")
            return
        notes = []
        if trip_cmd:
            notes.append("trip command in force")
        if hold:
            notes.append("hold power in force")
        extra = f" ({', '.join(notes)})" if notes else ""
        want = "open" if expected_open else "closed"
        self.raise_("relay_unexpected", r.ts, r.value,
                    f"relay {state}, expected {want}{extra}")

    def energy(self, r: Reading) -> None:
        s, st = self.s, self.st
        mts = r.meter_ts if r.meter_ts is not None and not r.quality & Quality.CLOCK_SUSPECT \
            else None
        new = _Energy(r.value, r.ts, mts)
        last = st.energy
        if last is None:
            st.energy = new
            st.flat_since = r.ts
            self.zero_use(r, moved=False)
            return
        delta = r.value - last.value
        if delta < -s.backwards_tolerance_kwh:
            if self.on("energy_backwards"):
                if st.pre_drop is None:
                    st.pre_drop = last
                # One event per drop: each drop is news, even with the condition on.
                st.active.add("energy_backwards")
                self.emit("energy_backwards", r.ts, delta,
                          f"energy {r.value:.2f} kWh < last {last.value:.2f} kWh "
                          f"({delta:+.2f} kWh)")
            st.energy = new
            st.flat_since = r.ts
            self.zero_use(r, moved=True)
            return
        base = last
        if st.pre_drop is not None and r.value >= st.pre_drop.value - s.backwards_tolerance_kwh:
            # Back at or above where it was before the drop: a glitch that passed.  Rate
            # against the pre-drop reading, not the glitch, so no false jump.
            base = st.pre_drop
            st.pre_drop = None
            self.clear("energy_backwards", r.ts, r.value,
                       f"energy {r.value:.2f} kWh back to {base.value:.2f} kWh or more")
        delta = r.value - base.value
        moved = delta > _EPS
        self.jump(r, base, new, delta)
        if moved:
            st.energy = new
        else:  # unchanged or within the tolerance below: keep the value, move the time on
            st.energy = _Energy(base.value, new.ts, new.mts)
        self.zero_use(r, moved=moved)

    def jump(self, r: Reading, base: _Energy, new: _Energy, delta: float) -> None:
        if not self.on("energy_jump"):
            return
        if base.mts is not None and new.mts is not None:
            seconds = (new.mts - base.mts).total_seconds()
        else:
            seconds = (new.ts - base.ts).total_seconds()
        if seconds <= 0:
            return
        hours = seconds / 3600
        rate = max(delta, 0.0) / hours
        limit = self.s.jump_kwh_per_hour
        if rate > limit:
            self.raise_("energy_jump", r.ts, rate,
                        f"energy +{delta:.2f} kWh in {hours:.2f} h = {rate:.1f} kWh/h "
                        f"> {_fmt(limit)} kWh/h")
        else:
            self.clear("energy_jump", r.ts, rate,
                       f"energy rate {rate:.1f} kWh/h <= {_fmt(limit)} kWh/h")

    def zero_use(self, r: Reading, *, moved: bool) -> None:
        st = self.st
        if moved:
            st.flat_since = r.ts
            self.clear("zero_use", r.ts, r.value, f"energy moving again ({r.value:.2f} kWh)")
            return
        if st.relay_open:
            # Disconnected: no use is expected; the clock restarts when it closes.
            st.flat_since = r.ts
            self.clear("zero_use", r.ts, r.value, "relay open")
            return
        if st.flat_since is None or not self.on("zero_use"):
            return
        days = (r.ts - st.flat_since).total_seconds() / 86400
        if days >= self.s.zero_use_days:
            relay = "closed" if st.relay_open is False else "state unknown"
            self.raise_("zero_use", r.ts, days,
                        f"energy flat at {r.value:.2f} kWh for {days:.1f} days, relay {relay}")

    def voltages(self, latest: Mapping[str, Reading]) -> None:
        s = self.s
        hi, lo, hyst = s.voltage_high_limit, s.voltage_low_limit, s.voltage_hysteresis
        for p in PHASES:
            r = latest.get(f"voltage_{p}")
            if r is None or r.value < s.voltage_absent_v:
                continue
            v, name = r.value, f"voltage_{p}"
            if self.on("voltage_high"):
                if v > hi:
                    self.raise_(f"voltage_high:{p}", r.ts, v,
                                f"{name} {v:.1f} V > {hi:.1f} V ({s.voltage_high_pct:+g}%)")
                elif v <= hi - hyst:
                    self.clear(f"voltage_high:{p}", r.ts, v,
                               f"{name} {v:.1f} V <= {hi - hyst:.1f} V")
            if self.on("voltage_low"):
                if v < lo:
                    self.raise_(f"voltage_low:{p}", r.ts, v,
                                f"{name} {v:.1f} V < {lo:.1f} V ({s.voltage_low_pct:+g}%)")
                elif v >= lo + hyst:
                    self.clear(f"voltage_low:{p}", r.ts, v,
                               f"{name} {v:.1f} V >= {lo + hyst:.1f} V")

    def imbalance(self, latest: Mapping[str, Reading]) -> None:
        if not self.on("current_imbalance"):
            return
        rs = [latest.get(f"current_{p}") for p in PHASES]
        if any(r is None for r in rs):
            return  # single-phase meter or a partial read: not judged
        amps = [abs(r.value) for r in rs if r is not None]
        ts = max(r.ts for r in rs if r is not None)
        top, bottom = max(amps), min(amps)
        if top <= 0 or top < self.s.imbalance_min_current:
            return  # too little load to judge; the condition stays as it was
        pct = (top - bottom) / top * 100
        limit = self.s.imbalance_pct
        currents = "/".join(f"{a:.2f}" for a in amps)
        if pct > limit:
            self.raise_("current_imbalance", ts, pct,
                        f"current imbalance {pct:.0f}% > {_fmt(limit)}% (A/B/C {currents} A)")
        elif pct <= limit - self.s.imbalance_hysteresis_pct:
            self.clear("current_imbalance", ts, pct,
                       f"current imbalance {pct:.0f}% (A/B/C {currents} A)")

    def power_factor(self, pf: Reading | None, power: Reading | None) -> None:
        if pf is None or not self.on("low_power_factor"):
            return
        if power is not None and abs(power.value) < self.s.pf_min_kw:
            return  # no meaningful load: pf means nothing; the condition stays
        limit = self.s.low_pf
        v = pf.value
        if abs(v) < limit:
            self.raise_("low_power_factor", pf.ts, v,
                        f"power factor {v:.3f} < {_fmt(limit)}")
        elif abs(v) >= limit + self.s.pf_hysteresis:
            self.clear("low_power_factor", pf.ts, v, f"power factor {v:.3f}")

    def counter(self, rule: str, r: Reading) -> None:
        last = self.st.counters.get(r.quantity)
        self.st.counters[r.quantity] = r.value
        if last is None or r.value <= last or not self.on(rule):
            return  # baseline, unchanged, or reset (meter cleared): no event
        self.emit(rule, r.ts, r.value,
                  f"{r.quantity} {last:.0f} -> {r.value:.0f} (+{r.value - last:.0f})")


class CommLossTracker:
    """``comm_loss`` on the Nth consecutive failed read of a meter, ``comm_restored``
    on the first success after it.  Failures short of N are forgotten on a success."""

    def __init__(self, n: int = 3) -> None:
        if n < 1:
            raise ValueError(f"comm loss after {n} failures: must be >= 1")
        self.n = n
        self._failures: dict[str, int] = {}
        self._bus: dict[str, str | None] = {}

    def failures(self, meter: str) -> int:
        return self._failures.get(meter, 0)

    def failure(self, meter: str, bus: str | None, now: dt.datetime) -> Event | None:
        count = self._failures.get(meter, 0) + 1
        self._failures[meter] = count
        self._bus[meter] = bus
        if count != self.n:
            return None
        return Event("comm_loss", now, meter, bus, SEVERITY["comm_loss"], float(count),
                     f"{count} consecutive failed reads")

    def success(self, meter: str, now: dt.datetime) -> Event | None:
        count = self._failures.pop(meter, 0)
        bus = self._bus.pop(meter, None)
        if count < self.n:
            return None
        return Event("comm_restored", now, meter, bus, SEVERITY["comm_restored"],
                     float(count), f"answers again after {count} failed reads")

    def state_dump(self) -> dict[str, Any]:
        return {m: [c, self._bus.get(m)] for m, c in self._failures.items()}

    def state_load(self, data: Mapping[str, Any]) -> None:
        try:
            self._failures = {str(m): int(v[0]) for m, v in data.items()}
            self._bus = {str(m): (None if v[1] is None else str(v[1])) for m, v in data.items()}
        except (TypeError, ValueError, IndexError, KeyError) as e:
            raise ValueError(f"bad comm loss state: {e!r}") from None


def schedule_overdue(schedule_name: str, window_end: dt.datetime, done: bool,
                     now: dt.datetime) -> Event | None:
    """``schedule_overdue`` if the schedule is not done and its window has ended.

    Stateless: it answers on every call; :class:`ScheduleWatch` reports once per window.
    ``value`` is the minutes past the window's end.
    """
    if done or now <= window_end:
        return None
    minutes = (now - window_end).total_seconds() / 60
    end = window_end.astimezone(dt.UTC).strftime("%Y-%m-%d %H:%M UTC")
    return Event("schedule_overdue", now, None, None, SEVERITY["schedule_overdue"], minutes,
                 f"schedule {schedule_name} not done by {end} ({minutes:.0f} min late)")


class ScheduleWatch:
    """:func:`schedule_overdue`, at most once per (schedule, window end)."""

    def __init__(self) -> None:
        self._reported: dict[str, dt.datetime] = {}  # schedule -> window end reported

    def check(self, schedule_name: str, window_end: dt.datetime, done: bool,
              now: dt.datetime) -> Event | None:
        if self._reported.get(schedule_name) == window_end:
            return None
        ev = schedule_overdue(schedule_name, window_end, done, now)
        if ev is not None:
            self._reported[schedule_name] = window_end
        return ev

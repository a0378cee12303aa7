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
voltage_loss           2 alarm   a phase lost its voltage (status word 4-6 bit 0,
                                 or 0 V on a phase seen with voltage before, while
                                 another phase has voltage) while
                                 the meter and another meter of its bus answer
current_loss           1 warn    status word 4-6 bit 3 (失流) (bit clear)
overload               1 warn    status word 4-6 bit 5 (过载) (bit clear)
phase_sequence         1 warn    status word 7 bit 0 or 1 (逆相序) (bits clear)
frequency_deviation    1 warn    frequency off nominal by more than the band
voltage_unbalance      1 warn    max deviation from the mean / mean of phase
                                 voltages above the limit (1 point below)
voltage_sag            1 warn    a phase below nominal + ``voltage_sag_pct``
meter_<kind>           see table a new event record of the meter (``records``):
                                 ``ts`` is the meter's start time
comm_loss              1 warn    N consecutive failed reads (:class:`CommLossTracker`)
comm_restored          0 info    first good read after a ``comm_loss``
schedule_overdue       1 warn    a schedule not done by the end of its window
=====================  ========  ==============================================

Unbalance: the phase magnitudes are all a poll gives (no angles), so the negative-
sequence definition of GB/T 15543 cannot be computed; voltage unbalance is the
largest deviation from the mean over the mean (NEMA MG-1, close to the negative-
sequence figure for small unbalance).  current_imbalance keeps (max - min) / max.

Readings flagged ESTIMATED or BACKFILLED are ignored (not live from the meter), as
are non-finite values.  A meter's clock (``meter_ts``) times the energy rate when
both readings have one and neither is CLOCK_SUSPECT; otherwise the collector's
``ts`` does.  Events carry the collector ``ts`` of the reading that raised them.
"""

from __future__ import annotations

import datetime as dt
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from functools import lru_cache
from typing import Any

from collector.config.alarms import RULES, AlarmSettings
from collector.store.records import Event, Quality, Reading, from_ms, to_ms
from drivers.device import MeterEvent
from protocols.quantities import EVENT_KINDS

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
FREQUENCY = "frequency"
FAULT_WORDS = {"a": "status_word_4", "b": "status_word_5", "c": "status_word_6"}
STATUS7 = "status_word_7"
# status words 4-6 (phase A-C faults) and 7 (DL/T645-2007 catalogue STATUS_BITS)
LOSS_OF_VOLTAGE_BIT = 1 << 0
LOSS_OF_CURRENT_BIT = 1 << 3
OVERLOAD_BIT = 1 << 5
REVERSE_SEQUENCE_BITS = (1 << 0) | (1 << 1)  # voltage, current phase sequence reversed

# status word 3 (DL/T645-2007 run status word 3)
RELAY_OPEN_BIT = 1 << 4  # relay state: 1 = open (tripped)
RELAY_TRIP_CMD_BIT = 1 << 6  # relay command: 1 = trip in force
HOLD_POWER_BIT = 1 << 12  # hold power (保电) in force

# Severity of a new event record by kind: a cover opened is an alarm with the meter's
# time; relay records follow commands amic usually sent itself.
RECORD_SEVERITY: dict[str, int] = {"cover_open": 2, "relay_trip": 0, "relay_close": 0}

# The one table of event kinds and their severity (0 info, 1 warning, 2 alarm: what
# ``amic events --alarms`` shows), for every event the collector raises; docs/schema.md
# lists the same (tests/test_event_severity.py checks both, and every Event(...) in
# collector/).  The ``<rule>_cleared`` events of the alarm rules are all 0.
SEVERITY: dict[str, int] = {
    # alarm rules (this module)
    "voltage_loss": 2,
    "current_loss": 1,
    "overload": 1,
    "phase_sequence": 1,
    "frequency_deviation": 1,
    "voltage_unbalance": 1,
    "voltage_sag": 1,
    # the meters' own event records (collector/daily/events.py), kind meter_<record kind>
    **{f"meter_{k}": RECORD_SEVERITY.get(k, 1) for k in EVENT_KINDS},
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
    counters: dict[str, float] | None = None  # made when the first counter is read
    relay_open: bool | None = None  # last known relay state
    # Immutable, replaced on a (rare) change: the empty one is shared, where an empty set
    # per meter costs 216 bytes (two of them: 43 MB at 100k meters).
    active: frozenset[str] = frozenset()  # "voltage_high:a", "zero_use", ...
    seen: dt.datetime | None = None  # collector time of its last readings
    wired: frozenset[str] = frozenset()  # phases seen with voltage


@lru_cache(maxsize=256)
def _plus(conditions: frozenset[str], key: str) -> frozenset[str]:
    """``conditions`` and ``key``: one shared set for meters in the same state (most are
    in a few: the three phases wired, nothing active)."""
    return conditions | {key}


def _fmt(x: float) -> str:
    return f"{x:g}"


class AlarmEngine:
    """Evaluates the alarm rules on each poll of each meter; see the module table."""

    def __init__(self, settings: AlarmSettings | None = None) -> None:
        self.settings = settings or AlarmSettings()
        self._meters: dict[str, _MeterState] = {}
        self._bus_of: dict[str, str] = {}  # meter -> the bus it was last seen on
        # bus -> its meters (as _bus_of says), so bus_up looks at one bus, not the fleet
        self._on_bus: dict[str, dict[str, None]] = {}

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
        if latest:
            st.seen = max(r.ts for r in latest.values())
            if bus is not None:
                self._seen_on(meter, bus)
        ctx = _Ctx(self.settings, meter, bus, st, out)
        ctx.bus_up = self.bus_up(meter, bus, st.seen)
        ctx.relay(latest.get(STATUS3), expected_relay_open)
        if ENERGY in latest:
            ctx.energy(latest[ENERGY])
        ctx.voltages(latest)
        ctx.imbalance(latest)
        ctx.power_factor(latest.get(PF), latest.get(POWER))
        for quantity, rule in COUNTERS.items():
            if quantity in latest:
                ctx.counter(rule, latest[quantity])
        ctx.power_quality(latest)
        return out

    def bus_up(self, meter: str, bus: str | None, at: dt.datetime | None) -> bool:
        """Whether another meter of ``bus`` answered within ``bus_up_window_s`` of ``at``:
        a phase lost on one meter is then its own, not the supply's or the line's."""
        if bus is None or at is None:
            return False
        window = dt.timedelta(seconds=self.settings.bus_up_window_s)
        meters = self._meters
        for other in self._on_bus.get(bus, ()):
            st = meters.get(other)
            seen = st.seen if st is not None else None
            if other != meter and seen is not None and abs(at - seen) <= window:
                return True
        return False

    def _seen_on(self, meter: str, bus: str) -> None:
        was = self._bus_of.get(meter)
        if was == bus:
            return
        if was is not None:
            self._on_bus[was].pop(meter, None)
        self._bus_of[meter] = bus
        self._on_bus.setdefault(bus, {})[meter] = None

    def records(self, meter: str, events: Sequence[MeterEvent], *, bus: str | None = None,
                bus_up: bool | None = None) -> list[Event]:
        """Events for a meter's *new* event records (the caller keeps those already
        stored out): ``meter_<kind>`` at the record's start (meter time), and a
        ``voltage_loss`` alarm at that time for a voltage loss while its bus is up
        (``bus_up``; None: judged from the meters this engine saw, as :meth:`bus_up`)."""
        st = self._meters.setdefault(meter, _MeterState())
        up = self.bus_up(meter, bus, st.seen) if bus_up is None else bus_up
        out: list[Event] = []
        for e in events:
            kind = f"meter_{e.kind}"
            end = "going on" if e.end is None else f"until {e.end.isoformat()}"
            detail = f"{e.kind} from {e.start.isoformat()} {end} (record {e.n})"
            if e.kind == "cover_open" and "meter_cover_open" not in self.settings.rules:
                continue
            out.append(Event(kind, e.start, meter, bus, SEVERITY[kind], float(e.n), detail))
            out.extend(self.ends(meter, [e], bus=bus))
            phase = e.kind.removeprefix("voltage_loss_")
            if e.kind.startswith("voltage_loss_") and "voltage_loss" in self.settings.rules \
                    and up:
                out.append(Event("voltage_loss", e.start, meter, bus, SEVERITY["voltage_loss"],
                                 None, f"phase {phase.upper()} lost its voltage at "
                                       f"{e.start.isoformat()} ({end}) while the bus is up "
                                       "(meter record)"))
        return out

    def ends(self, meter: str, events: Sequence[MeterEvent], *,
             bus: str | None = None) -> list[Event]:
        """``meter_<kind>_cleared`` (severity 0) at the end of each record that has one:
        an event that lasts is a start and a cleared event, whether its end was known at
        the first read or came with a later one (the caller keeps those stored out)."""
        out: list[Event] = []
        for e in events:
            if e.end is None or (e.kind == "cover_open"
                                 and "meter_cover_open" not in self.settings.rules):
                continue
            out.append(Event(f"meter_{e.kind}_cleared", e.end, meter, bus, 0, float(e.n),
                             f"{e.kind} from {e.start.isoformat()} ended at "
                             f"{e.end.isoformat()} (record {e.n})"))
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
                "counters": dict(st.counters or {}),
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
                    active=frozenset(str(a) for a in m.get("active", [])),
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

    bus_up = False

    def on(self, rule: str) -> bool:
        return rule in self.s.rules

    def emit(self, kind: str, ts: dt.datetime, value: float | None, detail: str) -> None:
        self.out.append(Event(kind, ts, self.meter, self.bus, SEVERITY[kind], value, detail))

    def raise_(self, key: str, ts: dt.datetime, value: float | None, detail: str) -> None:
        """Raise condition ``key`` (``kind`` or ``kind:phase``) unless already on."""
        if key not in self.st.active:
            self.st.active = _plus(self.st.active, key)
            self.emit(key.partition(":")[0], ts, value, detail)

    def clear(self, key: str, ts: dt.datetime, value: float | None, detail: str) -> None:
        if key in self.st.active:
            self.st.active -= {key}
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
                st.active = _plus(st.active, "energy_backwards")
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

    def power_quality(self, latest: Mapping[str, Reading]) -> None:
        """Status words 4-7, phase voltage loss, frequency, voltage unbalance and sags."""
        s = self.s
        volts = {p: latest[f"voltage_{p}"] for p in PHASES if f"voltage_{p}" in latest}
        powered = any(r.value >= s.voltage_absent_v for r in volts.values())
        for p, word in FAULT_WORDS.items():
            w = latest.get(word)
            v = volts.get(p)
            bit = w is not None and int(w.value) & LOSS_OF_VOLTAGE_BIT
            if v is not None and v.value >= s.voltage_absent_v and p not in self.st.wired:
                self.st.wired = _plus(self.st.wired, p)
            # 0 V on a phase never seen with voltage is one that is not wired
            dead = v is not None and v.value < s.voltage_absent_v and powered \
                and p in self.st.wired
            seen = w or v
            if seen is None:
                continue
            if self.on("voltage_loss"):
                if (bit or dead) and self.bus_up:
                    why = "status word bit" if bit else f"{v.value:g} V" if v else ""
                    self.raise_(f"voltage_loss:{p}", seen.ts, v.value if v else None,
                                f"phase {p.upper()} lost its voltage ({why}) while the meter "
                                "and its bus answer")
                elif not bit and not dead:
                    self.clear(f"voltage_loss:{p}", seen.ts, v.value if v else None,
                               f"phase {p.upper()} voltage back")
            if w is None:
                continue
            for rule, mask, text in (("current_loss", LOSS_OF_CURRENT_BIT, "current loss"),
                                     ("overload", OVERLOAD_BIT, "overload")):
                if not self.on(rule):
                    continue
                if int(w.value) & mask:
                    self.raise_(f"{rule}:{p}", w.ts, w.value,
                                f"phase {p.upper()} {text} ({word} = {int(w.value):#06x})")
                else:
                    self.clear(f"{rule}:{p}", w.ts, w.value, f"phase {p.upper()} no {text}")
        w7 = latest.get(STATUS7)
        if w7 is not None and self.on("phase_sequence"):
            if int(w7.value) & REVERSE_SEQUENCE_BITS:
                self.raise_("phase_sequence", w7.ts, w7.value,
                            f"phase sequence reversed (status_word_7 = {int(w7.value):#06x})")
            else:
                self.clear("phase_sequence", w7.ts, w7.value, "phase sequence normal")
        f = latest.get(FREQUENCY)
        if f is not None and f.value > 0 and self.on("frequency_deviation"):
            off = f.value - s.frequency_nominal
            if abs(off) > s.frequency_band_hz:
                self.raise_("frequency_deviation", f.ts, f.value,
                            f"frequency {f.value:.2f} Hz, {off:+.2f} Hz off "
                            f"{_fmt(s.frequency_nominal)} Hz (band +-{_fmt(s.frequency_band_hz)})")
            else:
                self.clear("frequency_deviation", f.ts, f.value, f"frequency {f.value:.2f} Hz")
        live = [r for r in volts.values() if r.value >= s.voltage_absent_v]
        if len(live) == 3 and self.on("voltage_unbalance"):
            values = [r.value for r in live]
            mean = sum(values) / 3
            pct = max(abs(v - mean) for v in values) / mean * 100
            ts = max(r.ts for r in live)
            shown = "/".join(f"{v:.1f}" for v in values)
            if pct > s.voltage_unbalance_pct:
                self.raise_("voltage_unbalance", ts, pct,
                            f"voltage unbalance {pct:.1f}% > {_fmt(s.voltage_unbalance_pct)}% "
                            f"(A/B/C {shown} V)")
            elif pct <= s.voltage_unbalance_pct - 1:
                self.clear("voltage_unbalance", ts, pct, f"voltage unbalance {pct:.1f}%")
        if self.on("voltage_sag"):
            sag = s.nominal_voltage * (1 + s.voltage_sag_pct / 100)
            for p, r in volts.items():
                if r.value < s.voltage_absent_v:
                    continue  # not wired or lost: voltage_loss, not a sag
                if r.value < sag:
                    self.raise_(f"voltage_sag:{p}", r.ts, r.value,
                                f"voltage_{p} {r.value:.1f} V < {sag:.1f} V (sag)")
                elif r.value >= sag + s.voltage_hysteresis:
                    self.clear(f"voltage_sag:{p}", r.ts, r.value,
                               f"voltage_{p} {r.value:.1f} V")

    def counter(self, rule: str, r: Reading) -> None:
        counters = self.st.counters
        if counters is None:
            counters = self.st.counters = {}
        last = counters.get(r.quantity)
        counters[r.quantity] = r.value
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

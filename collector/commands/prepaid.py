"""Prepaid accounts: balance warnings, trip after a grace period, restore after a top-up.

Pure logic, one :class:`PrepaidAccount` per prepaid meter, driven by the daemon:

* :meth:`PrepaidEngine.observe` with each batch of readings of a meter;
* :meth:`PrepaidEngine.tick` now and then (grace timers, end of no-trip windows,
  restore retries);
* :meth:`PrepaidEngine.topup` when a customer pays;
* :meth:`PrepaidEngine.relay_result` with the outcome of each trip/restore it asked for.

Each returns the :class:`Action` list to carry out: events to record (``kind="event"``,
see :meth:`Action.to_event`), relay trips and restores, and purchases to write to
meters that keep the money themselves.

Two kinds of account:

``mode="meter"``
    The meter keeps the money: the balance is ``balance_amount``, or minus
    ``overdraft_amount`` while that is above zero (meters that count energy instead give
    ``balance_energy``/``overdraft_energy``, turned into yuan by the account's flat price).
``mode="computed"``
    The meter keeps no money: the balance is computed from its forward active energy
    registers (combined where the meter has no forward ones) and a :class:`TariffPlan`:
    ``credit - sum((E_t - E0_t) * price_t)`` where
    ``credit`` is the opening balance plus top-ups less what was charged before the last
    top-up, and ``E0_t`` the register at the opening or at the last top-up.  A register
    going backwards (meter replaced or cleared) is flagged and never credited.

Money is :class:`~decimal.Decimal` throughout (readings arrive as floats and are taken
at their shortest decimal form, so ``0.1`` is ``Decimal("0.1")``).  Times are aware
datetimes given by the caller; no-trip windows are evaluated in the policy's time zone.
"""

from __future__ import annotations

import datetime as dt
import math
from collections.abc import Iterable, Mapping, Sequence
from collections.abc import Set as AbstractSet
from dataclasses import dataclass, field
from decimal import Decimal
from typing import Any, Literal
from zoneinfo import ZoneInfo

from collector.config.windows import NoTripWindow, parse_window
from collector.store.records import Event, Quality, Reading, require_aware
from protocols.quantities import ENERGY_DIRECTIONS

__all__ = [
    "Action",
    "ActionKind",
    "Mode",
    "NoTripWindow",
    "PrepaidAccount",
    "PrepaidEngine",
    "PrepaidPolicy",
    "TariffPlan",
    "TopUp",
    "parse_window",
]

UTC = dt.UTC

Mode = Literal["meter", "computed"]
ActionKind = Literal["event", "trip", "restore", "write_topup"]

# Event kinds (Action.event).
BALANCE_WARNING_1 = "balance_warning_1"
BALANCE_WARNING_2 = "balance_warning_2"
BALANCE_EXHAUSTED = "balance_exhausted"
TRIP_DEFERRED = "trip_deferred"
TRIP_SKIPPED_PROTECTED = "trip_skipped_protected"
TOPUP = "topup"
TOPUP_DUPLICATE = "topup_duplicate"
RESTORE_REQUESTED = "restore_requested"
BALANCE_REGISTER_BACKWARDS = "balance_register_backwards"

RELAY_OPEN_BIT = 1 << 4  # status word 3 bit 4: relay open
HOLD_POWER_BIT = 1 << 12  # status word 3 bit 12: hold power (保电)

TARIFFS = ("t1", "t2", "t3", "t4")
_UNUSABLE = Quality.ESTIMATED | Quality.BACKFILLED  # not a live value from the meter


def _decimal(value: object, name: str) -> Decimal:
    """A config number as a Decimal (floats by their shortest repr); ValueError if not."""
    if isinstance(value, bool):
        raise ValueError(f"{name}: expected a number, got {value!r}")
    if isinstance(value, Decimal):
        d = value
    elif isinstance(value, int | str):
        try:
            d = Decimal(str(value))
        except ArithmeticError:
            raise ValueError(f"{name}: expected a number, got {value!r}") from None
    elif isinstance(value, float):
        d = Decimal(repr(value))
    else:
        raise ValueError(f"{name}: expected a number, got {value!r}")
    if not d.is_finite():
        raise ValueError(f"{name}: expected a finite number, got {value!r}")
    return d


def _reading_decimal(value: float) -> Decimal | None:
    if isinstance(value, bool) or not math.isfinite(value):
        return None
    return Decimal(repr(value))


def _money(d: Decimal) -> str:
    return f"{d.quantize(Decimal('0.01'))}"


# ---------------------------------------------------------------- policy


@dataclass(frozen=True, slots=True)
class PrepaidPolicy:
    """Thresholds and timing shared by all prepaid accounts.

    Money in yuan.  The trip line is ``-overdraft_limit``: a meter is tripped ``grace``
    seconds after its balance reaches it (outside no-trip windows and holidays).  A
    relay opened for balance is closed again once the balance (net of any overdraft) is
    above ``restore_min_balance``.  Warnings re-arm once the balance is back above their
    threshold plus ``hysteresis``.
    """

    warn1: Decimal
    warn2: Decimal
    overdraft_limit: Decimal = Decimal(0)
    grace: float = 600.0  # seconds from reaching the trip line to tripping
    no_trip_windows: Sequence[str] = ()
    holidays: AbstractSet[dt.date] = frozenset()
    tz: str = "Asia/Shanghai"
    restore_min_balance: Decimal = Decimal(0)
    hysteresis: Decimal = Decimal(1)
    retry_interval: float = 300.0  # seconds between attempts of an unconfirmed relay command
    windows: tuple[NoTripWindow, ...] = field(init=False, repr=False, compare=False)
    zone: ZoneInfo = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        put = object.__setattr__
        for name in ("warn1", "warn2", "overdraft_limit", "restore_min_balance", "hysteresis"):
            put(self, name, _decimal(getattr(self, name), name))
        if not self.warn1 > self.warn2 >= 0:
            raise ValueError(f"warn1 ({self.warn1}) must be above warn2 ({self.warn2}), "
                             f"and warn2 at least 0")
        if self.overdraft_limit < 0:
            raise ValueError(f"overdraft_limit: expected >= 0, got {self.overdraft_limit}")
        if self.hysteresis < 0:
            raise ValueError(f"hysteresis: expected >= 0, got {self.hysteresis}")
        if self.restore_min_balance < -self.overdraft_limit:
            raise ValueError(f"restore_min_balance ({self.restore_min_balance}) is below the "
                             f"trip line (-{self.overdraft_limit})")
        if not (math.isfinite(self.grace) and self.grace >= 0):
            raise ValueError(f"grace: expected seconds >= 0, got {self.grace}")
        if not (math.isfinite(self.retry_interval) and self.retry_interval > 0):
            raise ValueError(f"retry_interval: expected seconds > 0, got {self.retry_interval}")
        if isinstance(self.no_trip_windows, str):
            raise ValueError("no_trip_windows: expected a list of windows, got one string")
        texts = tuple(self.no_trip_windows)
        put(self, "no_trip_windows", texts)
        put(self, "windows", tuple(parse_window(t) for t in texts))
        for d in self.holidays:
            if isinstance(d, dt.datetime) or not isinstance(d, dt.date):
                raise ValueError(f"holidays: expected dates, got {d!r}")
        put(self, "holidays", frozenset(self.holidays))
        try:
            put(self, "zone", ZoneInfo(self.tz))
        except (ValueError, KeyError) as e:  # ZoneInfoNotFoundError is a KeyError
            raise ValueError(f"tz: unknown time zone {self.tz!r}") from e

    @property
    def trip_line(self) -> Decimal:
        return -self.overdraft_limit

    def no_trip_reason(self, now: dt.datetime) -> str | None:
        """Why tripping is not allowed at ``now`` (a holiday or a window), else None."""
        local = require_aware(now).astimezone(self.zone)
        if local.date() in self.holidays:
            return f"holiday {local.date().isoformat()}"
        for w in self.windows:
            if w.contains(local):
                return f"no-trip window {w.text!r}"
        return None

    def no_trip_until(self, now: dt.datetime) -> dt.datetime | None:
        """The first instant (UTC) at or after ``now`` outside every window and holiday.

        None if none within 400 days (a window covering every day).
        """
        if self.no_trip_reason(now) is None:
            return now.astimezone(UTC)
        local = now.astimezone(self.zone)
        ends = sorted({dt.time(0, 0)} | {w.end for w in self.windows if w.end is not None})
        for offset in range(401):
            day = local.date() + dt.timedelta(days=offset)
            for t in ends:
                candidate = dt.datetime.combine(day, t, tzinfo=self.zone)
                if candidate > local and self.no_trip_reason(candidate) is None:
                    return candidate.astimezone(UTC)
        return None


# ---------------------------------------------------------------- tariffs


def _energy_quantity(tariff: str, energy: str = "forward") -> str:
    return f"energy_active_{energy}_{tariff}"


@dataclass(frozen=True, slots=True)
class TariffPlan:
    """Prices (yuan/kWh) for computed balances: one ``flat`` price on the total forward
    active energy, or a price per tariff register ``t1``..``t4`` (unpriced tariffs are
    free).  Meter-mode accounts use ``flat`` to turn ``balance_energy`` into yuan."""

    flat: Decimal | None = None
    t1: Decimal | None = None
    t2: Decimal | None = None
    t3: Decimal | None = None
    t4: Decimal | None = None

    def __post_init__(self) -> None:
        for name in ("flat", *TARIFFS):
            v = getattr(self, name)
            if v is None:
                continue
            d = _decimal(v, f"price {name}")
            if d < 0:
                raise ValueError(f"price {name}: expected >= 0, got {d}")
            object.__setattr__(self, name, d)
        per_tariff = [t for t in TARIFFS if getattr(self, t) is not None]
        if self.flat is not None and per_tariff:
            raise ValueError("tariff plan: give either a flat price or per-tariff prices "
                             f"(t1..t4), not both (got flat and {', '.join(per_tariff)})")
        if self.flat is None and not per_tariff:
            raise ValueError("tariff plan: no price (give flat or t1..t4)")

    def prices(self) -> dict[str, Decimal]:
        """Register key (``total`` or ``t1``..``t4``) -> price of the registers charged."""
        if self.flat is not None:
            return {"total": self.flat}
        out: dict[str, Decimal] = {}
        for t in TARIFFS:
            p: Decimal | None = getattr(self, t)
            if p is not None:
                out[t] = p
        return out

    def cost(self, baseline: Mapping[str, Decimal], energies: Mapping[str, Decimal]) -> Decimal:
        """Cost of the energy used since ``baseline`` (registers missing in either: 0)."""
        total = Decimal(0)
        for t, price in self.prices().items():
            if t in baseline and t in energies:
                total += (energies[t] - baseline[t]) * price
        return total


# ---------------------------------------------------------------- accounts and actions


@dataclass(frozen=True, slots=True)
class TopUp:
    ts: dt.datetime
    amount: Decimal
    ref: str


@dataclass(frozen=True, slots=True)
class Action:
    """Something for the daemon to do.

    ``kind="event"``: record the event ``event`` (see :meth:`to_event`); ``"trip"``/
    ``"restore"``: open/close the meter's relay, then call
    :meth:`PrepaidEngine.relay_result`; ``"write_topup"``: write the purchase
    ``amount`` (reference ``ref``) to a meter that keeps its own balance.
    ``value`` is the balance in yuan when known.
    """

    kind: ActionKind
    meter: str
    reason: str
    event: str | None = None
    value: Decimal | None = None
    amount: Decimal | None = None
    ref: str = ""
    severity: int = 1  # for events: 0 info, 1 warning, 2 alarm

    def to_event(self, ts: dt.datetime) -> Event:
        """The :class:`~collector.store.records.Event` to store for an ``"event"`` action."""
        if self.kind != "event" or self.event is None:
            raise ValueError(f"{self.kind} action is not an event")
        return Event(kind=self.event, ts=ts, meter=self.meter, severity=self.severity,
                     value=None if self.value is None else float(self.value),
                     detail=self.reason)


@dataclass(slots=True)
class PrepaidAccount:
    """One prepaid meter: its configuration, then the engine's state (read-only for others).

    ``protected`` customers (hold-power list) are never tripped.  ``plan`` is required for
    ``mode="computed"``; ``baseline`` gives the energy registers (``total`` or
    ``t1``..``t4``, kWh) at the opening, else the first reading is taken as baseline.
    ``energy``: the active energy a computed balance is charged on, ``forward`` or
    ``combined`` (a meter without forward registers; see
    :func:`protocols.quantities.billing_energy`).
    """

    meter: str
    mode: Mode = "meter"
    protected: bool = False
    plan: TariffPlan | None = None
    opening_balance: Decimal = Decimal(0)
    baseline: dict[str, Decimal] = field(default_factory=dict)
    energy: str = "forward"
    # -- state
    balance: Decimal | None = field(default=None, init=False)  # last known, yuan
    warn_level: int = field(default=0, init=False)  # 0, 1, 2: highest warning fired, armed
    exhausted_at: dt.datetime | None = field(default=None, init=False)  # trip line reached
    trip_due: dt.datetime | None = field(default=None, init=False)
    trip_outstanding: bool = field(default=False, init=False)  # trip sent, no result yet
    trip_retry_at: dt.datetime | None = field(default=None, init=False)
    tripped_by_us: bool = field(default=False, init=False)
    relay_open: bool | None = field(default=None, init=False)  # status word 3 bit 4
    hold_power: bool = field(default=False, init=False)  # status word 3 bit 12
    open_for_balance: bool = field(default=False, init=False)  # meter opened it itself
    deferred_reason: str | None = field(default=None, init=False)
    skip_notified: bool = field(default=False, init=False)
    restore_sent_at: dt.datetime | None = field(default=None, init=False)
    credit: Decimal = field(default=Decimal(0), init=False)  # computed mode
    energies: dict[str, Decimal] = field(default_factory=dict, init=False)  # last seen, kWh
    last_seen: dict[str, dt.datetime] = field(default_factory=dict, init=False)
    topups: list[TopUp] = field(default_factory=list, init=False)

    def __post_init__(self) -> None:
        if self.mode not in ("meter", "computed"):
            raise ValueError(f"meter {self.meter}: mode must be 'meter' or 'computed', "
                             f"got {self.mode!r}")
        if self.energy not in ENERGY_DIRECTIONS:
            raise ValueError(f"meter {self.meter}: energy must be one of "
                             f"{', '.join(ENERGY_DIRECTIONS)}, got {self.energy!r}")
        self.opening_balance = _decimal(self.opening_balance, "opening_balance")
        self.baseline = dict(self.baseline)  # ours to move on top-ups
        if self.mode == "computed":
            if self.plan is None:
                raise ValueError(f"meter {self.meter}: a computed balance needs a tariff plan")
            priced = self.plan.prices()
            for k, v in list(self.baseline.items()):
                if k not in priced:
                    raise ValueError(f"meter {self.meter}: baseline {k!r} has no price "
                                     f"(priced: {', '.join(priced)})")
                self.baseline[k] = _decimal(v, f"baseline {k}")
            self.credit = self.opening_balance
            self.balance = self.opening_balance

    @property
    def restore_pending(self) -> bool:
        """A relay opened for balance waits to be closed (balance or retry permitting)."""
        return self.tripped_by_us or self.open_for_balance


# ---------------------------------------------------------------- engine


class PrepaidEngine:
    """All prepaid accounts under one policy.  Not thread-safe; the caller serialises."""

    def __init__(self, policy: PrepaidPolicy, accounts: Iterable[PrepaidAccount]) -> None:
        self.policy = policy
        self.accounts: dict[str, PrepaidAccount] = {}
        for a in accounts:
            self.add(a)

    def add(self, account: PrepaidAccount) -> None:
        if account.meter in self.accounts:
            raise ValueError(f"meter {account.meter}: two prepaid accounts")
        self.accounts[account.meter] = account

    def _account(self, meter: str) -> PrepaidAccount:
        try:
            return self.accounts[meter]
        except KeyError:
            raise KeyError(f"meter {meter!r} has no prepaid account") from None

    def balance(self, meter: str) -> Decimal | None:
        return self._account(meter).balance

    # -- state across restarts

    def dump(self) -> dict[str, Any]:
        """Every account's state as JSON-able data (money as decimal strings)."""
        return {"version": 1, "accounts": {m: _dump_account(a)
                                           for m, a in self.accounts.items()}}

    def load(self, state: Mapping[str, Any]) -> int:
        """Take back :meth:`dump`'s state for the accounts configured now (others are
        ignored); returns how many were restored.  ValueError for a malformed state."""
        if not isinstance(state, Mapping) or state.get("version") != 1:
            raise ValueError("prepaid state: not a version 1 state")
        accounts = state.get("accounts")
        if not isinstance(accounts, Mapping):
            raise ValueError("prepaid state: no accounts")
        n = 0
        for meter, doc in accounts.items():
            acc = self.accounts.get(meter)
            if acc is None or not isinstance(doc, Mapping):
                continue
            if doc.get("mode") != acc.mode:  # computed <-> meter: start afresh
                continue
            _load_account(acc, doc)
            n += 1
        return n

    # -- inputs

    def observe(self, meter: str, readings: Iterable[Reading],
                now: dt.datetime) -> list[Action]:
        """Take a batch of the meter's readings; unknown meters are ignored (``[]``).

        Readings of other meters, estimated or backfilled readings and readings older
        than one already taken are ignored.
        """
        require_aware(now)
        acc = self.accounts.get(meter)
        if acc is None:
            return []
        latest: dict[str, Reading] = {}
        for r in readings:
            if r.meter != meter or r.quality & _UNUSABLE:
                continue
            seen = acc.last_seen.get(r.quantity)
            if seen is not None and r.ts < seen:
                continue
            if r.quantity not in latest or r.ts >= latest[r.quantity].ts:
                latest[r.quantity] = r
        for q, r in latest.items():
            acc.last_seen[q] = r.ts
        out: list[Action] = []
        if acc.mode == "computed":
            out += self._update_computed(acc, latest)
        else:
            self._update_meter_balance(acc, latest)
        self._update_status(acc, latest)
        out += self._evaluate(acc, now)
        return out

    def tick(self, now: dt.datetime) -> list[Action]:
        """Run the timers: trips whose grace or no-trip window ended, restore retries."""
        require_aware(now)
        out: list[Action] = []
        for acc in self.accounts.values():
            out += self._evaluate(acc, now)
        return out

    def topup(self, meter: str, amount: Decimal, now: dt.datetime, ref: str) -> list[Action]:
        """Record a purchase (``ref`` = the payment reference; a repeated ref is ignored
        with a ``topup_duplicate`` event).  Computed accounts are credited at once;
        meter-mode accounts get a ``write_topup`` action and their balance is taken from
        the meter's next reading."""
        require_aware(now)
        acc = self._account(meter)
        amount = _decimal(amount, "top-up amount")
        if amount <= 0:
            raise ValueError(f"meter {meter}: top-up amount must be above 0, got {amount}")
        if not ref:
            raise ValueError(f"meter {meter}: top-up needs a payment reference")
        if any(t.ref == ref for t in acc.topups):
            return [Action("event", meter, f"top-up {ref} already recorded; not credited again",
                           event=TOPUP_DUPLICATE, value=acc.balance, amount=amount, ref=ref)]
        acc.topups.append(TopUp(ts=now, amount=amount, ref=ref))
        out: list[Action] = []
        if acc.mode == "computed":
            before = self._computed_balance(acc)
            acc.credit = before + amount
            acc.baseline.update(acc.energies)
            acc.balance = acc.credit
            out.append(Action("event", meter,
                              f"top-up {_money(amount)} yuan ({ref}): balance "
                              f"{_money(before)} -> {_money(acc.balance)} yuan",
                              event=TOPUP, value=acc.balance, amount=amount, ref=ref,
                              severity=0))
        else:
            out.append(Action("event", meter,
                              f"top-up {_money(amount)} yuan ({ref}): to be written to the meter",
                              event=TOPUP, value=acc.balance, amount=amount, ref=ref,
                              severity=0))
            out.append(Action("write_topup", meter, f"write purchase {ref} to the meter",
                              amount=amount, ref=ref))
        out += self._evaluate(acc, now)
        return out

    def relay_result(self, meter: str, action: Action, confirmed: bool,
                     now: dt.datetime) -> list[Action]:
        """Feed back whether a trip/restore was carried out (relay state verified).

        An unconfirmed trip is retried after ``retry_interval``; an unconfirmed restore
        ``retry_interval`` after it was sent.  Returns what follows (a trip confirmed
        after a top-up already arrived gives the restore).
        """
        require_aware(now)
        acc = self._account(meter)
        if action.meter != meter:
            raise ValueError(f"relay result for meter {meter} with an action of {action.meter}")
        if action.kind == "trip":
            acc.trip_outstanding = False
            if confirmed:
                acc.tripped_by_us = True
                acc.trip_retry_at = None
                acc.restore_sent_at = None
            else:
                acc.trip_retry_at = now + dt.timedelta(seconds=self.policy.retry_interval)
        elif action.kind == "restore":
            if confirmed:
                acc.tripped_by_us = False
                acc.open_for_balance = False
                acc.restore_sent_at = None
        else:
            raise ValueError(f"relay result for a {action.kind} action")
        return self._evaluate(acc, now)

    def next_due(self, now: dt.datetime) -> dt.datetime | None:
        """When :meth:`tick` next has something to do (None: nothing pending on time).

        A trip waiting for a meter's hold power to end waits on :meth:`observe` instead.
        """
        require_aware(now)
        p = self.policy
        due: list[dt.datetime] = []
        for acc in self.accounts.values():
            if (acc.trip_due is not None and not acc.protected and not acc.hold_power
                    and not (acc.trip_outstanding or acc.tripped_by_us or acc.relay_open)):
                t = max(acc.trip_due, acc.trip_retry_at or acc.trip_due, now)
                end = p.no_trip_until(t)
                if end is not None:
                    due.append(end)
            if acc.restore_sent_at is not None and acc.restore_pending:
                due.append(acc.restore_sent_at + dt.timedelta(seconds=p.retry_interval))
        return min(due, default=None)

    # -- balance

    def _computed_balance(self, acc: PrepaidAccount) -> Decimal:
        assert acc.plan is not None
        return acc.credit - acc.plan.cost(acc.baseline, acc.energies)

    def _update_computed(self, acc: PrepaidAccount,
                         latest: Mapping[str, Reading]) -> list[Action]:
        assert acc.plan is not None
        out: list[Action] = []
        for t, price in acc.plan.prices().items():
            r = latest.get(_energy_quantity(t, acc.energy))
            e = None if r is None else _reading_decimal(r.value)
            if e is None:
                continue
            if t not in acc.baseline:
                acc.baseline[t] = e
            prev = acc.energies.get(t, acc.baseline[t])
            if e < prev:
                # Keep what was used up to the highest reading charged; count anew from e.
                acc.credit -= (prev - acc.baseline[t]) * price
                acc.baseline[t] = e
                acc.energies[t] = e
                acc.balance = self._computed_balance(acc)
                out.append(Action(
                    "event", acc.meter,
                    f"{_energy_quantity(t, acc.energy)} went backwards {prev} -> {e} kWh "
                    f"(meter replaced or cleared?); not credited, counting from {e} kWh",
                    event=BALANCE_REGISTER_BACKWARDS, value=acc.balance, severity=2))
            acc.energies[t] = e
        acc.balance = self._computed_balance(acc)
        return out

    def _update_meter_balance(self, acc: PrepaidAccount, latest: Mapping[str, Reading]) -> None:
        def value(q: str) -> Decimal | None:
            r = latest.get(q)
            return None if r is None else _reading_decimal(r.value)

        amount, overdraft = value("balance_amount"), value("overdraft_amount")
        if overdraft is not None and overdraft > 0:
            acc.balance = -overdraft
        elif amount is not None:
            acc.balance = amount
        elif acc.plan is not None and acc.plan.flat is not None:
            energy, od_energy = value("balance_energy"), value("overdraft_energy")
            if od_energy is not None and od_energy > 0:
                acc.balance = -od_energy * acc.plan.flat
            elif energy is not None:
                acc.balance = energy * acc.plan.flat

    def _update_status(self, acc: PrepaidAccount, latest: Mapping[str, Reading]) -> None:
        r = latest.get("status_word_3")
        if r is None or not math.isfinite(r.value):
            return
        word = int(r.value)
        acc.relay_open = bool(word & RELAY_OPEN_BIT)
        acc.hold_power = bool(word & HOLD_POWER_BIT)
        if not acc.relay_open:
            acc.open_for_balance = False
        elif acc.balance is not None and acc.balance <= self.policy.restore_min_balance:
            acc.open_for_balance = True  # the meter (or we) opened it for want of balance

    # -- rules

    def _evaluate(self, acc: PrepaidAccount, now: dt.datetime) -> list[Action]:
        out = self._thresholds(acc, now)
        out += self._trip_step(acc, now)
        out += self._restore_step(acc, now)
        return out

    def _thresholds(self, acc: PrepaidAccount, now: dt.datetime) -> list[Action]:
        b, p = acc.balance, self.policy
        if b is None:
            return []
        out: list[Action] = []
        if b <= p.trip_line:
            if acc.exhausted_at is None:
                acc.exhausted_at = now
                acc.trip_due = now + dt.timedelta(seconds=p.grace)
                acc.warn_level = 2  # exhausted says more than a warning would
                out.append(Action("event", acc.meter,
                                  f"balance {_money(b)} yuan at or below the trip line "
                                  f"{_money(p.trip_line)}; trip in {p.grace:g} s",
                                  event=BALANCE_EXHAUSTED, value=b, severity=2))
            return out
        if acc.exhausted_at is not None:  # topped up before the trip
            acc.exhausted_at = acc.trip_due = acc.trip_retry_at = None
            acc.deferred_reason = None
            acc.skip_notified = False
        if b <= p.warn2 and acc.warn_level < 2:
            acc.warn_level = 2
            out.append(Action("event", acc.meter,
                              f"balance {_money(b)} yuan at or below {_money(p.warn2)}",
                              event=BALANCE_WARNING_2, value=b))
        elif b <= p.warn1 and acc.warn_level < 1:
            acc.warn_level = 1
            out.append(Action("event", acc.meter,
                              f"balance {_money(b)} yuan at or below {_money(p.warn1)}",
                              event=BALANCE_WARNING_1, value=b))
        if acc.warn_level == 2 and b > p.warn2 + p.hysteresis:
            acc.warn_level = 1
        if acc.warn_level == 1 and b > p.warn1 + p.hysteresis:
            acc.warn_level = 0
        return out

    def _trip_step(self, acc: PrepaidAccount, now: dt.datetime) -> list[Action]:
        if acc.trip_due is None or now < acc.trip_due:
            return []
        if acc.trip_outstanding or acc.tripped_by_us or acc.relay_open:
            return []
        if acc.trip_retry_at is not None and now < acc.trip_retry_at:
            return []
        b = acc.balance
        if acc.protected:
            if acc.skip_notified:
                return []
            acc.skip_notified = True
            return [Action("event", acc.meter,
                           "balance exhausted but the customer is protected (hold-power "
                           "list): not tripped", event=TRIP_SKIPPED_PROTECTED, value=b)]
        if acc.hold_power:
            reason = "the meter reports hold power (status word 3 bit 12)"
        else:
            window = self.policy.no_trip_reason(now)
            if window is None:
                reason = None
            else:
                until = self.policy.no_trip_until(now)
                when = ("no end in sight" if until is None else
                        "until " + until.astimezone(self.policy.zone).strftime("%Y-%m-%d %H:%M"))
                reason = f"inside {window} ({when} local)"
        if reason is not None:
            if acc.deferred_reason is not None:
                return []
            acc.deferred_reason = reason
            return [Action("event", acc.meter, f"trip deferred: {reason}",
                           event=TRIP_DEFERRED, value=b)]
        acc.trip_outstanding = True
        acc.deferred_reason = None
        assert b is not None
        return [Action("trip", acc.meter,
                       f"balance {_money(b)} yuan at or below the trip line "
                       f"{_money(self.policy.trip_line)} since "
                       f"{acc.exhausted_at.isoformat() if acc.exhausted_at else '?'}",
                       value=b)]

    def _restore_step(self, acc: PrepaidAccount, now: dt.datetime) -> list[Action]:
        b, p = acc.balance, self.policy
        if not acc.restore_pending:
            acc.restore_sent_at = None  # closed (confirmed, or seen closed): a new episode
            return []
        if b is None or b <= p.restore_min_balance:
            return []
        if acc.trip_outstanding:
            return []  # wait for the trip's result first
        out: list[Action] = []
        if acc.restore_sent_at is None:
            out.append(Action("event", acc.meter,
                              f"balance {_money(b)} yuan above {_money(p.restore_min_balance)}: "
                              "closing the relay", event=RESTORE_REQUESTED, value=b, severity=0))
            reason = f"balance {_money(b)} yuan restored"
        elif now >= acc.restore_sent_at + dt.timedelta(seconds=p.retry_interval):
            reason = (f"balance {_money(b)} yuan restored; retry, previous restore at "
                      f"{acc.restore_sent_at.isoformat()} not confirmed")
        else:
            return []
        acc.restore_sent_at = now
        out.append(Action("restore", acc.meter, reason, value=b))
        return out


# ---------------------------------------------------------------- state (de)serialisation

_DECIMALS = ("balance", "credit")
_TIMES = ("exhausted_at", "trip_due", "trip_retry_at", "restore_sent_at")
_FLAGS = ("trip_outstanding", "tripped_by_us", "hold_power", "open_for_balance",
          "skip_notified")


def _t(value: dt.datetime | None) -> str | None:
    return None if value is None else value.isoformat()


def _dump_account(a: PrepaidAccount) -> dict[str, Any]:
    doc: dict[str, Any] = {"mode": a.mode, "warn_level": a.warn_level,
                           "relay_open": a.relay_open, "deferred_reason": a.deferred_reason}
    for k in _DECIMALS:
        v = getattr(a, k)
        doc[k] = None if v is None else str(v)
    for k in _TIMES:
        doc[k] = _t(getattr(a, k))
    for k in _FLAGS:
        doc[k] = bool(getattr(a, k))
    doc["baseline"] = {t: str(v) for t, v in a.baseline.items()}
    doc["energies"] = {t: str(v) for t, v in a.energies.items()}
    doc["last_seen"] = {q: _t(v) for q, v in a.last_seen.items()}
    doc["topups"] = [{"ts": _t(u.ts), "amount": str(u.amount), "ref": u.ref}
                     for u in a.topups]
    return doc


def _load_account(a: PrepaidAccount, doc: Mapping[str, Any]) -> None:
    try:
        a.warn_level = int(doc.get("warn_level", 0))
        relay = doc.get("relay_open")
        a.relay_open = relay if isinstance(relay, bool) else None
        reason = doc.get("deferred_reason")
        a.deferred_reason = reason if isinstance(reason, str) else None
        for k in _DECIMALS:
            v = doc.get(k)
            if v is not None:
                setattr(a, k, Decimal(str(v)))
        for k in _TIMES:
            v = doc.get(k)
            setattr(a, k, None if v is None else dt.datetime.fromisoformat(str(v)))
        for k in _FLAGS:
            setattr(a, k, bool(doc.get(k, False)))
        a.baseline = {str(t): Decimal(str(v)) for t, v in dict(doc.get("baseline", {})).items()}
        a.energies = {str(t): Decimal(str(v)) for t, v in dict(doc.get("energies", {})).items()}
        a.last_seen = {str(q): dt.datetime.fromisoformat(str(v))
                       for q, v in dict(doc.get("last_seen", {})).items() if v}
        a.topups = [TopUp(dt.datetime.fromisoformat(str(u["ts"])), Decimal(str(u["amount"])),
                          str(u["ref"])) for u in doc.get("topups", [])]
    except (ArithmeticError, ValueError, TypeError, KeyError) as e:
        raise ValueError(f"prepaid state of meter {a.meter}: {e}") from None

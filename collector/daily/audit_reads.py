"""Audit re-reads (监察性抄表): a daily random sample of meters read again and compared.

Each day :func:`choose_sample` draws a sample of the meters (deterministic for the day and
the site's seed, so a restart audits the same meters), :class:`AuditPlanner` picks a
random time inside a window that is not the regular read time, and :func:`audit_meter`
reads each sampled meter's daily frozen value again (on the on-demand lane, ahead of the
polls) and compares it with the value the collector stored earlier the same day.

The daily frozen value does not change during a day, so any difference beyond
``tolerance_kwh`` means the stored value is not what the meter holds (a tampered or
corrupted store, a mixed-up meter) and raises an ``audit_mismatch`` alarm; a meter that
cannot be read again raises ``audit_failed``.

"The same day" is the calendar day of ``now`` in ``now``'s own time zone (naive: the
system's local time): pass ``now`` in the zone of the meters' clocks, whose midnight is
when they freeze.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import logging
import math
import random
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, replace
from enum import StrEnum
from typing import Any

from collector.config.settings import MeterSettings
from collector.polling.scheduler import BusWorker, Lane, read_meter
from collector.store import Store, StoredReading
from collector.store.records import UTC, Event, Quality, Reading
from drivers.device import MeterRef
from drivers.errors import DriverError
from drivers.meters import kind_of
from protocols.modbus import Profile

log = logging.getLogger("amic.audit")

DEFAULT_QUANTITY = "freeze_daily_energy_active_forward_total"
_EPSILON = 1e-9  # float noise of differences such as 1234.57 - 1234.56

HasQuantity = Callable[[MeterSettings, str], bool]


@dataclass(frozen=True, slots=True)
class AuditSettings:
    """How many meters are audited each day, which quantity, and what counts as equal.

    The sample is ``ceil(sample_fraction x eligible meters)`` clamped to
    ``min_sample``..``max_sample`` (and to the number of eligible meters).  ``seed``
    (a per-site secret is best) makes the day's sample reproducible yet unpredictable
    to whoever does not know it; None still gives a fixed sample for each day.
    """

    sample_fraction: float = 0.02
    min_sample: int = 1
    max_sample: int = 200
    quantity: str = DEFAULT_QUANTITY
    tolerance_kwh: float = 0.01
    seed: int | str | None = None
    retries: int = 1  # extra attempts of the re-read after no or a bad reply

    def __post_init__(self) -> None:
        if not 0.0 <= self.sample_fraction <= 1.0:
            raise ValueError(f"sample_fraction {self.sample_fraction!r}: must be within 0-1")
        if not 0 <= self.min_sample <= self.max_sample:
            raise ValueError(f"min_sample {self.min_sample} / max_sample {self.max_sample}: "
                             "need 0 <= min_sample <= max_sample")
        if not self.tolerance_kwh >= 0:
            raise ValueError(f"tolerance_kwh {self.tolerance_kwh!r}: must not be negative")
        if self.retries < 0:
            raise ValueError(f"retries {self.retries}: must not be negative")
        if not self.quantity:
            raise ValueError("quantity: empty")


# ---- the sample ----------------------------------------------------------------------------

def dlt645_has_quantity(meter: MeterSettings, quantity: str) -> bool:
    """Meters whose kind offers ``quantity`` without a device profile (the DL/T645
    editions); never those that need one (Modbus) nor an unknown protocol."""
    try:
        kind = kind_of(meter.protocol)
    except KeyError:
        return False
    if kind.needs_profile():
        return False
    return kind.capabilities(MeterRef(meter.meter_id, meter.protocol, meter.address)
                             ).offers(quantity)


def profile_has_quantity(profiles: Callable[[str], Profile]) -> HasQuantity:
    """As :func:`dlt645_has_quantity`, and meters whose device profile has the quantity.

    ``profiles`` loads a profile by name (e.g. :func:`collector.config.profiles.load_profile`);
    a profile that cannot be loaded leaves its meters out.
    """
    def has(meter: MeterSettings, quantity: str) -> bool:
        try:
            kind = kind_of(meter.protocol)
        except KeyError:
            return False
        if not kind.needs_profile():
            return dlt645_has_quantity(meter, quantity)
        if not meter.profile:
            return False
        try:
            profile = profiles(meter.profile)
            caps = kind.capabilities(MeterRef(meter.meter_id, meter.protocol, meter.address,
                                              profile))
        except Exception as e:  # a broken profile must not stop the audit of the others
            log.warning("audit: meter %s left out, profile %s: %s", meter.meter_id,
                        meter.profile, e)
            return False
        return caps.offers(quantity)
    return has


def sample_size(eligible: int, settings: AuditSettings) -> int:
    """How many of ``eligible`` meters are audited."""
    n = math.ceil(settings.sample_fraction * eligible - _EPSILON)
    n = max(settings.min_sample, min(settings.max_sample, n))
    return max(0, min(eligible, n))


def choose_sample(meters: Iterable[MeterSettings], day: dt.date, settings: AuditSettings, *,
                  has_quantity: HasQuantity = dlt645_has_quantity) -> list[MeterSettings]:
    """The meters audited on ``day``, in meter id order.

    The same meters, day and seed always give the same sample, whatever the order of
    ``meters``; another day gives another draw.  Only meters for which
    ``has_quantity(meter, settings.quantity)`` holds take part (default: DL/T645 only).
    """
    by_id: dict[str, MeterSettings] = {}
    for m in meters:
        if m.meter_id not in by_id and has_quantity(m, settings.quantity):
            by_id[m.meter_id] = m
    eligible = sorted(by_id)
    rng = random.Random(f"amic-audit/{settings.seed!r}/{settings.quantity}/{day.isoformat()}")
    chosen = rng.sample(eligible, sample_size(len(eligible), settings))
    return [by_id[i] for i in sorted(chosen)]


# ---- one meter -----------------------------------------------------------------------------

class AuditStatus(StrEnum):
    OK = "ok"
    MISMATCH = "mismatch"
    NO_REFERENCE = "no_reference"  # nothing stored today to compare with (not re-read)
    FAILED = "failed"  # the meter could not be read again


@dataclass(frozen=True, slots=True)
class AuditResult:
    """The outcome of one meter's audit; ``event`` is what to store (None: nothing)."""

    meter: str  # meter id
    quantity: str
    status: AuditStatus
    stored: float | None = None  # the stored value compared with
    stored_ts: dt.datetime | None = None  # when it was read (UTC)
    reread: float | None = None  # the value read now
    reread_ts: dt.datetime | None = None  # UTC
    difference: float | None = None  # reread - stored
    event: Event | None = None
    reading: Reading | None = None  # the re-read as a reading (not stored by audit_meter)
    detail: str = ""

    @property
    def ok(self) -> bool:
        return self.status is AuditStatus.OK


def day_bounds(now: dt.datetime) -> tuple[dt.datetime, dt.datetime]:
    """Midnight of ``now``'s day (in ``now``'s zone; naive: system local) and ``now``."""
    midnight = dt.datetime.combine(now.date(), dt.time())
    if now.tzinfo is None:
        return midnight.astimezone(), now.astimezone()
    return midnight.replace(tzinfo=now.tzinfo), now


def reference_reading(store: Store, meter_id: str, quantity: str,
                      now: dt.datetime) -> StoredReading | None:
    """The latest stored value of ``quantity`` read from the meter today before ``now``.

    Estimated values (not read from the meter) are no reference, nor backfilled ones:
    those are older freezes read today, not today's value.
    """
    since, until = day_bounds(now)
    rows = store.recent_readings(meter=meter_id, quantity=quantity, since=since,
                                 until=until + dt.timedelta(milliseconds=1), limit=50)
    for row in rows:
        if row.value is not None \
                and not row.quality & (Quality.ESTIMATED | Quality.BACKFILLED):
            return row
    return None


def _num(x: float, *, sign: bool = False) -> str:
    """A value as the meter shows it (no exponent, no float noise): 16158.83, +0.5."""
    text = f"{x:{'+' if sign else ''}.6f}".rstrip("0").rstrip(".")
    return "0" if text in ("+0", "-0", "") else text


def _when(t: dt.datetime, zone: dt.tzinfo | None) -> str:
    return t.astimezone(zone).isoformat(timespec="seconds")


async def audit_meter(worker: BusWorker, meter: MeterSettings, store: Store,
                      settings: AuditSettings, now: dt.datetime, *,
                      profiles: Callable[[str], Profile] | None = None) -> AuditResult:
    """Re-read ``settings.quantity`` of ``meter`` and compare it with today's stored value.

    The reference is looked up first: with nothing stored today the meter is not read
    (``no_reference``; a meter the regular read missed is the poller's to report).  The
    re-read runs on the bus's on-demand lane; a device profile is loaded by ``profiles``
    (default: the worker's loader).
    """
    q = settings.quantity
    zone = (now if now.tzinfo is not None else now.astimezone()).tzinfo
    ref = reference_reading(store, meter.meter_id, q, now)
    if ref is None or ref.value is None:
        return AuditResult(meter.meter_id, q, AuditStatus.NO_REFERENCE,
                           detail=f"no {q} stored today before {_when(now, zone)}")
    stored = float(ref.value)
    now_utc = now.astimezone(UTC)

    async def job(w: BusWorker) -> list[Reading]:
        got = await read_meter(w, meter, (q,), retries=settings.retries, profiles=profiles)
        # The re-read is dated by the audit's clock, as the comparison is.
        return [replace(r, ts=now_utc) for r in got]

    try:
        records = await worker.submit(Lane.ON_DEMAND, job)
        reading = next((r for r in records if r.quantity == q), None)
        if reading is None:
            raise LookupError(f"meter {meter.meter_id}: the reply holds no {q}")
    except asyncio.CancelledError:
        raise
    except Exception as e:
        reason = f"{type(e).__name__}: {e}" if isinstance(e, DriverError) else repr(e)
        detail = (f"{q} could not be re-read at {_when(now, zone)} ({reason}); stored "
                  f"{_num(stored)} {ref.unit} at {_when(ref.ts, zone)}")
        log.warning("audit: meter %s: %s", meter.meter_id, detail)
        failed = Event("audit_failed", now_utc, meter=meter.meter_id, bus=meter.bus,
                       severity=1, detail=detail)
        return AuditResult(meter.meter_id, q, AuditStatus.FAILED, stored, ref.ts,
                           event=failed, detail=detail)

    reread = reading.value
    difference = reread - stored
    unit = reading.unit or ref.unit
    detail = (f"{q}: stored {_num(stored)} {unit} (read {_when(ref.ts, zone)}), re-read "
              f"{_num(reread)} {unit} (at {_when(now, zone)}), difference "
              f"{_num(difference, sign=True)} {unit}, tolerance {_num(settings.tolerance_kwh)}")
    if abs(difference) > settings.tolerance_kwh + _EPSILON:
        log.warning("audit: meter %s mismatch: %s", meter.meter_id, detail)
        event: Event | None = Event("audit_mismatch", now_utc, meter=meter.meter_id,
                                    bus=meter.bus, severity=2, value=difference,
                                    detail=detail)
        status = AuditStatus.MISMATCH
    else:
        event = None
        status = AuditStatus.OK
    return AuditResult(meter.meter_id, q, status, stored, ref.ts, reread, now_utc,
                       difference, event, reading, detail)


async def audit_sample(workers: Mapping[str, BusWorker], meters: Sequence[MeterSettings],
                       store: Store, settings: AuditSettings, now: dt.datetime, *,
                       profiles: Callable[[str], Profile] | None = None,
                       event: Callable[[Event], None] | None = None) -> list[AuditResult]:
    """Audit ``meters`` (e.g. a :func:`choose_sample`): buses side by side, one meter at a
    time per bus so on-demand reads of operators are not queued behind the whole sample.

    Each result's event is handed to ``event``; results come in the order of ``meters``.
    """
    results: dict[str, AuditResult] = {}
    per_bus: dict[str, list[MeterSettings]] = {}
    for m in meters:
        per_bus.setdefault(m.bus, []).append(m)

    async def run(bus: str, items: list[MeterSettings]) -> None:
        worker = workers.get(bus)
        for m in items:
            if worker is None:
                detail = f"{settings.quantity} could not be re-read: no worker for bus {bus}"
                r = AuditResult(m.meter_id, settings.quantity, AuditStatus.FAILED,
                                event=Event("audit_failed", now.astimezone(UTC),
                                            meter=m.meter_id, bus=bus, severity=1,
                                            detail=detail),
                                detail=detail)
            else:
                r = await audit_meter(worker, m, store, settings, now, profiles=profiles)
            results[m.meter_id] = r
            if r.event is not None and event is not None:
                event(r.event)

    await asyncio.gather(*(run(bus, items) for bus, items in per_bus.items()))
    return [results[m.meter_id] for m in meters if m.meter_id in results]


# ---- when ----------------------------------------------------------------------------------

class AuditPlanner:
    """When today's audit runs: once a day, at a random time in a local-hours window.

    ``window_start``/``window_end`` are hours of the day (0 <= start < end <= 24, e.g.
    10.5 for 10:30) in ``tz`` (None: the system's local zone); put the window away from
    the regular reads.  The day's time is drawn when first asked for (from ``seed`` and
    the day when given, else at random) and kept in the state, so a restart does not move
    it.  :meth:`due` holds from that time to the window's end, until :meth:`mark_done`.
    """

    def __init__(self, window_start: float = 9.0, window_end: float = 17.0, *,
                 tz: dt.tzinfo | None = None, seed: int | str | None = None) -> None:
        if not 0 <= window_start < window_end <= 24:
            raise ValueError(f"audit window {window_start}-{window_end}: need "
                             "0 <= start < end <= 24 (hours of the day)")
        self.window_start = float(window_start)
        self.window_end = float(window_end)
        self.tz = tz
        self.seed = seed
        self.last_done: dt.date | None = None
        self._planned: dict[dt.date, dt.datetime] = {}  # the days drawn (a few kept)

    def local(self, now: dt.datetime) -> dt.datetime:
        """``now`` as an aware time in the planner's zone (naive: taken as that zone)."""
        if now.tzinfo is None:
            return now.replace(tzinfo=self.tz) if self.tz is not None else now.astimezone()
        return now.astimezone(self.tz) if self.tz is not None else now.astimezone()

    def _at(self, day: dt.date, hours: float) -> dt.datetime:
        naive = dt.datetime.combine(day, dt.time()) + dt.timedelta(hours=hours)
        return naive.replace(tzinfo=self.tz) if self.tz is not None else naive.astimezone()

    def window(self, day: dt.date) -> tuple[dt.datetime, dt.datetime]:
        return self._at(day, self.window_start), self._at(day, self.window_end)

    def run_at(self, day: dt.date) -> dt.datetime:
        """The time ``day``'s audit is due (drawn once per day, then kept)."""
        planned = self._planned.get(day)
        if planned is not None:
            return planned
        span = (self.window_end - self.window_start) * 3600.0
        rng: random.Random = (random.Random(f"amic-audit-time/{self.seed!r}/{day.isoformat()}")
                              if self.seed is not None else random.SystemRandom())
        # Whole seconds, and a minute of room before the window closes.
        offset = int(rng.uniform(0.0, max(0.0, span - 60.0)))
        at = self._at(day, self.window_start) + dt.timedelta(seconds=offset)
        self._planned[day] = at
        for old in sorted(self._planned)[:-3]:
            del self._planned[old]
        return at

    def due(self, now: dt.datetime) -> bool:
        """Is today's audit due now (its time reached, the window open, not yet done)?"""
        local = self.local(now)
        day = local.date()
        if self.last_done is not None and day <= self.last_done:
            return False
        return self.run_at(day) <= local < self._at(day, self.window_end)

    def mark_done(self, day: dt.date) -> None:
        if self.last_done is None or day > self.last_done:
            self.last_done = day

    def next_run(self, now: dt.datetime) -> dt.datetime:
        """When the next audit is due (``now`` itself if due now)."""
        local = self.local(now)
        day = local.date()
        if self.due(local):
            return local
        if (self.last_done is None or day > self.last_done) \
                and local < self._at(day, self.window_end):
            return self.run_at(day)
        return self.run_at(day + dt.timedelta(days=1))

    # ---- state ---------------------------------------------------------------------------

    def dump(self) -> dict[str, Any]:
        """JSON-friendly state: the last day done and the times drawn for the days."""
        return {"version": 1,
                "last_done": self.last_done.isoformat() if self.last_done else None,
                "planned": {d.isoformat(): at.isoformat()
                            for d, at in sorted(self._planned.items())}}

    def load(self, state: Mapping[str, Any]) -> None:
        """Restore :meth:`dump`'s state; ValueError if it is not such a state."""
        if state.get("version") != 1:
            raise ValueError(f"audit planner state: unknown version {state.get('version')!r}")
        try:
            last = state.get("last_done")
            last_done = dt.date.fromisoformat(last) if last else None
            plans: dict[dt.date, dt.datetime] = {}
            for day_text, at_text in dict(state.get("planned") or {}).items():
                day = dt.date.fromisoformat(day_text)
                at = dt.datetime.fromisoformat(at_text)
                if at.tzinfo is None:
                    raise ValueError(f"planned time {at_text!r} has no time zone")
                start, end = self.window(day)
                if start <= at <= end:  # else the window changed since: drawn again
                    plans[day] = at
        except (TypeError, AttributeError, ValueError) as e:
            raise ValueError(f"audit planner state: {e}") from None
        self.last_done = last_done
        self._planned = plans

"""Backfill of daily frozen energy (日冻结补抄) from the meters' own freeze history.

A DL/T645-2007 meter keeps its last 62 daily freezes: ``0506 00 NN`` is the time of the
NN-th last freeze, ``0506 01 NN`` / ``0506 02 NN`` the forward / reverse active energy
(total, t1..t4) frozen then.  When the collector missed days (bus down, collector
stopped), :func:`backfill_meter` reads the freezes of the days the store lacks (through
:meth:`drivers.device.Meter.read_freeze`, for meters whose kind keeps freezes) and
returns them as readings with the freeze time as ``meter_ts`` and quality
``BACKFILLED``; :mod:`collector.daily.reports` then places them on their day.

Days are local days in ``tz`` (default ``Asia/Shanghai``), and the freeze *of* day D is
the one taken at local midnight starting D (as in :mod:`collector.daily.reports`: during day D
"the last freeze" is D's).  Which freeze holds day D follows from the meter's last
freeze time; every freeze read is checked against its expected day before its energies
are read, so a meter whose clock is wrong, or whose history has a gap, never files a
value under the wrong day.  The store is not written: the caller stores
``result.readings`` (a second run then finds nothing missing and sends nothing).
"""

from __future__ import annotations

import datetime as dt
import logging
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field, replace
from typing import Final, TypeVar

from collector.config.settings import MeterSettings
from collector.polling.scheduler import BusWorker, Lane
from collector.store import Store
from collector.store.records import UTC, Quality, Reading, assume_utc, to_ms, utcnow
from drivers.device import Freeze, Meter
from drivers.dlt645_meter import FREEZE_ENERGIES
from drivers.errors import DriverError, MeterError
from drivers.meters import kind_of
from drivers.options import CallOptions
from protocols.dlt645 import DAILY_FREEZES

from .reports import DEFAULT_TZ, FROZEN_PREFIX, TzLike, as_zone, local_date, midnight_ms

__all__ = [
    "ENERGY_RECORDS",
    "FROZEN_TOTAL",
    "SETTLE",
    "BackfillResult",
    "backfill_meter",
    "daily_freezes",
    "missing_days",
    "wanted_days",
]

log = logging.getLogger("amic.backfill")
T = TypeVar("T")

FROZEN_TOTAL: Final = FROZEN_PREFIX + "total"
"""The quantity whose presence marks a day as collected."""
ENERGY_RECORDS: Final[tuple[str, ...]] = FREEZE_ENERGIES
SETTLE: Final = dt.timedelta(minutes=15)
"""A frozen value read (without ``meter_ts``) this soon after local midnight may still be
the day before's freeze (a meter clock running slow): it does not count for its day."""
_DAY_MS: Final = 86_400_000


@dataclass(slots=True)
class BackfillResult:
    """What one backfill of one meter found and read.

    ``missing``: the days without a frozen value before the run (oldest first);
    ``filled``: those read now; ``skipped``: day -> why it was not; ``notes``: what the
    operator should know about the meter (clock wrong, refused records ...);
    ``readings``: for the caller to store; ``requests``: reads sent to the meter.
    """

    meter: str
    missing: list[dt.date]
    readings: list[Reading] = field(default_factory=list)
    filled: list[dt.date] = field(default_factory=list)
    skipped: dict[dt.date, str] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)
    requests: int = 0

    @property
    def complete(self) -> bool:
        """Every missing day was read."""
        return not self.skipped


# ---- what is missing -----------------------------------------------------------------

def wanted_days(days: int, tz: TzLike = DEFAULT_TZ, now: dt.datetime | None = None
                ) -> list[dt.date]:
    """The last ``days`` local days, today included, oldest first."""
    if days < 0:
        raise ValueError(f"days must not be negative, not {days}")
    today = assume_utc(utcnow() if now is None else now).astimezone(as_zone(tz)).date()
    return [today - dt.timedelta(days=k) for k in range(days - 1, -1, -1)]


def missing_days(store: Store, meter_id: str, days: int, tz: TzLike = DEFAULT_TZ,
                 now: dt.datetime | None = None) -> list[dt.date]:
    """Which of the last ``days`` local days (today included, oldest first) have no
    stored ``freeze_daily_energy_active_forward_total`` of ``meter_id``.

    A reading counts for the local date of its ``meter_ts`` (the freeze time, as
    backfilled values carry it), else for the local date of ``ts`` when it was read at
    least :data:`SETTLE` after that day's midnight, as :mod:`collector.daily.reports` places
    them.
    """
    wanted = wanted_days(days, tz, now)
    if not wanted:
        return []
    lo = midnight_ms(wanted[0], tz)
    # A value of day D is read at or after D's midnight (a day of margin for meter
    # clocks running ahead); the reads' (meter, ts) index does the rest.
    rows = store.thread_connection().execute(
        "SELECT ts, meter_ts FROM indexed_readings WHERE meter = ? AND ts >= ? "
        "AND quantity = ? AND value IS NOT NULL", (meter_id, lo - _DAY_MS, FROZEN_TOTAL))
    settle = int(SETTLE.total_seconds() * 1000)
    have: set[dt.date] = set()
    for ts, meter_ts in rows:
        if meter_ts is not None:
            have.add(local_date(meter_ts, tz))
            continue
        day = local_date(ts, tz)
        if ts - midnight_ms(day, tz) >= settle:
            have.add(day)
    return [d for d in wanted if d not in have]


# ---- reading the meter ---------------------------------------------------------------

def daily_freezes(meter: MeterSettings) -> int:
    """How many daily freezes ``meter``'s kind keeps to backfill from (no I/O; 0: none)."""
    try:
        return kind_of(meter.protocol).fixed_capabilities().daily_freezes
    except KeyError:
        return 0


class _Reader:
    """Reads of one meter's daily freezes, each batch one job on the bus worker."""

    def __init__(self, worker: BusWorker, meter: MeterSettings, lane: Lane, retries: int,
                 result: BackfillResult) -> None:
        self.worker = worker
        self.meter = meter
        self.lane = lane
        self.opts = CallOptions(retries=retries)
        self.result = result

    async def _run(self, body: Callable[[Meter], Awaitable[T]]) -> T:
        async def job(w: BusWorker) -> T:
            device = w.device(self.meter)
            before = device.requests
            try:
                return await body(device)
            finally:
                self.result.requests += device.requests - before
        return await self.worker.submit(self.lane, job)

    async def last_freeze(self) -> dt.datetime:
        """When the meter froze last (meter local time)."""
        return await self._run(lambda m: m.freeze_time(1, self.opts))

    async def day(self, n: int, day: dt.date, tz: dt.tzinfo) -> Freeze | str:
        """Freeze ``n``'s time and energies (one job), or why they are not ``day``'s.

        The time is read in the same job as the energies (never reused from an earlier
        job), so a freeze taken meanwhile cannot file another day's energies under ``day``.
        """
        got = await self._run(lambda m: m.read_freeze(n, self.opts, tz=tz, on=day))
        if got.taken.date() != day:
            return (f"daily freeze {n} was taken at {got.taken:%Y-%m-%d %H:%M}, not on {day} "
                    f"(meter clock or freeze history off)")
        return got


async def backfill_meter(
    worker: BusWorker,
    meter: MeterSettings,
    store: Store,
    *,
    days: int,
    tz: TzLike = DEFAULT_TZ,
    now: dt.datetime | None = None,
    lane: Lane = Lane.SCHEDULED,
    retries: int = 1,
) -> BackfillResult:
    """Read the daily freezes of the days among the last ``days`` (today included) that
    the store lacks for ``meter``; readings are returned, not stored.

    ``tz``: the meters' local time zone (freeze times are meter local time);
    ``now``: an aware UTC time (default: now), the readings' ``ts``.  Each day is one job
    on ``worker`` (``lane``): freeze time, then the forward and reverse energy blocks,
    so commands overtake a long backfill.  A meter that refuses a freeze, or whose freeze
    time is not on the day expected, has the day skipped with the reason; a meter whose
    last freeze is neither today nor yesterday (clock wrong) is skipped altogether.
    Communication failures end the run with what was read so far (and a note).
    """
    if not 1 <= days <= DAILY_FREEZES:
        raise ValueError(f"days: 1-{DAILY_FREEZES} (the daily freezes a meter keeps)")
    now = assume_utc(utcnow() if now is None else now)
    zone = as_zone(tz)
    today = now.astimezone(zone).date()
    result = BackfillResult(meter.meter_id, missing_days(store, meter.meter_id, days, tz, now))
    if not result.missing:
        return result

    def skip_all(reason: str, days_left: Sequence[dt.date] | None = None) -> BackfillResult:
        for d in result.missing if days_left is None else days_left:
            result.skipped.setdefault(d, reason)
        return result

    kept = daily_freezes(meter)
    if not kept:
        result.notes.append(f"{meter.protocol} meters keep no daily freeze history here")
        return skip_all("no daily freeze history")

    reader = _Reader(worker, meter, lane, retries, result)
    # The last freeze tells which freeze (NN) holds which day.
    try:
        anchor = await reader.last_freeze()
    except MeterError as e:
        result.notes.append(f"meter refuses its daily freeze time: {e}")
        return skip_all("meter refuses daily freezes")
    except DriverError as e:
        result.notes.append(f"communication failed: {e}")
        return skip_all("no reply")
    if not today - dt.timedelta(days=1) <= anchor.date() <= today:
        note = (f"meter clock wrong: its last daily freeze is at {anchor:%Y-%m-%d %H:%M}, "
                f"expected on {today} (or the day before); not backfilled")
        result.notes.append(note)
        log.warning("meter %s: %s", meter.meter_id, note)
        return skip_all("meter clock wrong")

    for i, day in enumerate(result.missing):
        n = (anchor.date() - day).days + 1
        if n < 1:
            result.skipped[day] = (f"not frozen yet (the meter's last freeze is "
                                   f"{anchor:%Y-%m-%d %H:%M})")
            continue
        if n > kept:
            result.skipped[day] = f"older than the meter's {kept} daily freezes"
            continue
        try:
            got = await reader.day(n, day, zone)
        except MeterError as e:
            result.skipped[day] = f"meter refused daily freeze {n}: {e}"
            continue
        except DriverError as e:
            result.notes.append(f"communication failed: {e}")
            skip_all("no reply", result.missing[i:])
            break
        if isinstance(got, str):
            result.skipped[day] = got
            continue
        result.notes += [f"{day}: {note}" for note in got.notes]
        meter_ts = got.taken.replace(tzinfo=zone).astimezone(UTC)
        result.readings.append(Reading(meter.meter_id, "freeze_daily_time",
                                       to_ms(meter_ts) / 1000, "", now, meter_ts,
                                       Quality.BACKFILLED))
        result.readings += [replace(r, ts=now) for r in got.readings]
        result.filled.append(day)

    if result.filled:
        # A freeze taken during the run shifts every NN by one: what was read after it
        # may belong to another day.  Rare (a run across midnight): drop it, run again.
        try:
            moved = await reader.last_freeze() != anchor
        except DriverError as e:
            moved = True
            result.notes.append(f"communication failed: {e}")
        if moved:
            result.notes.append("the last daily freeze changed during the backfill (or "
                                "could not be checked): nothing kept, run it again")
            for d in result.filled:
                result.skipped[d] = "freeze history moved during the backfill"
            result.filled.clear()
            result.readings.clear()
    if result.skipped:
        log.info("meter %s: backfilled %d of %d days; skipped %s", meter.meter_id,
                 len(result.filled), len(result.missing),
                 "; ".join(f"{d}: {why}" for d, why in sorted(result.skipped.items())))
    return result

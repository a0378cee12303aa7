"""Meter clock drift, and broadcast time sync once a day per bus.

DL/T645 meters keep *local* time (China: Asia/Shanghai, UTC+8, no daylight saving).
:func:`read_drift` reads one meter's clock and compares it with the collector's:

    drift = meter clock - collector clock   (seconds; positive: the meter runs ahead)

The collector's time is taken as the middle of the read's round trip (request sent to
reply received: the meter sampled its clock somewhere in between, most likely near
the middle), and half a second is added because a meter shows whole seconds, truncated.
The meter's kind reads its clock (:meth:`drivers.device.Meter.read_clock`: DL/T645-2007
with ``meter_datetime``, else ``meter_date`` then ``meter_time``).

:class:`TimeSync` runs one bus at a time (:meth:`TimeSync.run_bus`): it reads the drift
of every meter whose kind has a clock set by broadcast (DL/T645; the others, Modbus, are
skipped), then, when at least one meter is off by more than ``min_drift`` and at most
``max_sync_drift``, broadcasts the time (08 to 999999999999, one per clock group: a
DL/T645 edition) -- at most once per local day per bus -- and reads those meters again to
see whether they took it.  :meth:`TimeSync.run_concentrator` applies the same policy to
a concentrator's own clock, set directly (AFN05 F31) instead of by broadcast (its events
have the concentrator as bus and no meter).  A broadcast cannot be aimed at one meter
and meters accept one about once a day and only within some minutes of their own clock,
so a meter further
off than ``max_sync_drift`` is not a reason to broadcast: it raises ``clock_drift_large``
and must be set on site or by an authorised write.

Events (:class:`~collector.store.records.Event`), in :attr:`TimeSyncResult.events`:

``clock_drift_large``  severity 2, per meter, ``value`` = drift in seconds
``clock_synced``       severity 0, per bus after a broadcast, ``value`` = meters corrected,
                       ``detail`` = their ids, comma-separated
``clock_sync_failed``  severity 1, per meter still off by more than ``min_drift`` after
                       the broadcast (or not read again), ``value`` = drift after (if read)

The vocabulary (:mod:`protocols.quantities`) has no drift quantity yet: drifts are in
:attr:`TimeSyncResult.drifts`.  Readings of ``clock_drift`` (seconds) are produced only
once that name exists there.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import logging
import math
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from collector.config.settings import MeterSettings
from collector.polling.scheduler import BusWorker, Lane
from collector.store.records import Event, Quality, Reading, assume_utc
from drivers.bus import Bus
from drivers.concentrator_meter import TerminalLink
from drivers.device import Meter
from drivers.errors import DriverError
from drivers.meters import kind_of
from drivers.options import CallOptions
from protocols.quantities import QUANTITIES

log = logging.getLogger("amic.timesync")

DRIFT_QUANTITY = "clock_drift"
"""Quantity name of drift readings; emitted only if :mod:`protocols.quantities` has it."""

CHINA_TZ = dt.timezone(dt.timedelta(hours=8), "UTC+08:00")
DEFAULT_TZ = "Asia/Shanghai"
_DAY = 86400.0

Clock = Callable[[], float]
"""The collector's wall clock, epoch seconds (``time.time``)."""


def zone(tz: dt.tzinfo | str | None) -> dt.tzinfo | None:
    """The meters' time zone: a tzinfo, an IANA name, or None for the host's local time.

    ``Asia/Shanghai`` falls back to a fixed UTC+8 where no zone database is installed.
    """
    if tz is None or isinstance(tz, dt.tzinfo):
        return tz
    try:
        return ZoneInfo(tz)
    except (ZoneInfoNotFoundError, ValueError):
        if tz in ("Asia/Shanghai", "PRC"):
            return CHINA_TZ
        raise ValueError(f"unknown time zone {tz!r}") from None


def _to_epoch(local: dt.datetime, tz: dt.tzinfo | None) -> float:
    """Epoch seconds of a naive meter-local time."""
    return local.replace(tzinfo=tz).timestamp() if tz is not None else local.timestamp()


def _to_local(epoch: float, tz: dt.tzinfo | None) -> dt.datetime:
    """Naive meter-local time of epoch seconds."""
    return dt.datetime.fromtimestamp(epoch, tz).replace(tzinfo=None)


def _local_of(now: dt.datetime, tz: dt.tzinfo | None) -> dt.datetime:
    """Naive local time of an aware (or naive UTC) datetime."""
    aware = assume_utc(now)
    return (aware.astimezone(tz) if tz is not None else aware.astimezone()).replace(tzinfo=None)


# ---- one meter ---------------------------------------------------------------------------

@dataclass(frozen=True, slots=True)
class MeterClock:
    """One reading of a meter's clock."""

    meter_id: str
    meter_time: dt.datetime  # as the meter showed it (naive, meter local time)
    drift: float  # seconds, meter - collector (positive: the meter is ahead)
    round_trip: float  # seconds the timed read took


async def measure_clock(worker: BusWorker, meter: MeterSettings, *,
                        tz: dt.tzinfo | str | None = DEFAULT_TZ, clock: Clock = time.time,
                        retries: int = 1, td: float | None = None) -> MeterClock:
    """Read ``meter``'s clock now.  Call it from inside a job of ``worker`` (it does I/O).

    Raises :class:`~drivers.errors.DriverError` when the meter cannot be read, and
    ValueError for a meter whose clock cannot be read.
    """
    tzinfo = zone(tz)
    device = worker.device(meter)
    if not device.capabilities.clock:
        raise ValueError(f"meter {meter.meter_id}: {meter.protocol} meters have no clock "
                         f"to read")
    got = await device.read_clock(clock, CallOptions(retries=retries, td=td))
    return _result(meter, got.shown, got.t0, got.t1, tzinfo)


def _result(meter: MeterSettings, shown: dt.datetime, t0: float, t1: float,
            tz: dt.tzinfo | None) -> MeterClock:
    # The meter shows whole seconds (truncated): its clock is on average half a second on.
    drift = _to_epoch(shown, tz) + 0.5 - (t0 + t1) / 2
    return MeterClock(meter.meter_id, shown, round(drift, 3), t1 - t0)


async def read_clock(worker: BusWorker, meter: MeterSettings, *,
                     tz: dt.tzinfo | str | None = DEFAULT_TZ, clock: Clock = time.time,
                     lane: Lane = Lane.ON_DEMAND, retries: int = 1,
                     td: float | None = None) -> MeterClock:
    """:func:`measure_clock` as a job on ``worker`` (``lane``)."""
    return await worker.submit(lane, lambda w: measure_clock(w, meter, tz=tz, clock=clock,
                                                             retries=retries, td=td))


async def read_drift(worker: BusWorker, meter: MeterSettings, *,
                     tz: dt.tzinfo | str | None = DEFAULT_TZ, clock: Clock = time.time,
                     lane: Lane = Lane.ON_DEMAND, retries: int = 1,
                     td: float | None = None) -> float:
    """Seconds ``meter``'s clock is ahead of the collector's (negative: behind).

    ``tz``: the meters' local time zone (None: the host's).  Runs as a job on ``worker``
    in ``lane``; raises :class:`~drivers.errors.DriverError` if the meter cannot be read.
    Accurate to about the half round trip plus the meter's processing time.
    """
    found = await read_clock(worker, meter, tz=tz, clock=clock, lane=lane, retries=retries,
                             td=td)
    return found.drift


# ---- a bus -------------------------------------------------------------------------------

@dataclass(frozen=True, slots=True)
class TimeSyncSettings:
    """How :class:`TimeSync` decides (seconds unless told).

    ``max_sync_drift``: beyond it a meter is not synced by broadcast (``clock_drift_large``);
    ``min_drift``: at or below it a meter needs no sync, and counts as corrected after one;
    ``tz``: the meters' local time zone (None: the host's);
    ``time_of_day``: no broadcast before this local time (None: whenever run);
    ``midnight_guard``: no broadcast this close to local midnight (a clock stepped across
    midnight may freeze its day twice or not at all);
    ``lead``: how long the broadcast takes to reach the meters (None: its air time at the
    bus's baud, if the bus knows it); ``align``: send it so that it lands as a second
    begins (holds the bus up to 1 s; meters then read within the lead estimate), else
    at once (the time sent is rounded to the second: +-0.5 s); ``settle``: pause after
    it before the meters are read again; ``retries``/``td``: per read, as in the
    schedules.
    """

    max_sync_drift: float = 600.0
    min_drift: float = 30.0
    tz: str | None = DEFAULT_TZ
    time_of_day: dt.time | None = None
    midnight_guard: float = 900.0
    lead: float | None = None
    align: bool = True
    settle: float = 1.0
    retries: int = 1
    td: float | None = None

    def __post_init__(self) -> None:
        if not 0 <= self.min_drift < self.max_sync_drift:
            raise ValueError("time sync: need 0 <= min_drift < max_sync_drift")
        if not 0 <= self.midnight_guard < _DAY / 2:
            raise ValueError("time sync: midnight_guard must be within 0-12 h")
        if self.lead is not None and not 0 <= self.lead < 1:
            raise ValueError("time sync: lead must be within 0-1 s")
        if self.settle < 0 or self.retries < 0:
            raise ValueError("time sync: settle and retries must not be negative")
        zone(self.tz)


@dataclass(slots=True)
class TimeSyncResult:
    """What one :meth:`TimeSync.run_bus` saw and did."""

    bus: str
    day: dt.date  # collector local date of the run
    drifts: dict[str, float] = field(default_factory=dict)  # meter id -> drift before
    unread: dict[str, str] = field(default_factory=dict)  # meter id -> why not read
    skipped: dict[str, str] = field(default_factory=dict)  # meter id -> why not tried
    large: list[str] = field(default_factory=list)  # |drift| > max_sync_drift
    candidates: list[str] = field(default_factory=list)  # min < |drift| <= max
    broadcast: bool = False  # a time sync went out
    reason: str = ""  # why not, when it did not
    after: dict[str, float] = field(default_factory=dict)  # candidate -> drift after
    corrected: list[str] = field(default_factory=list)
    failed: list[str] = field(default_factory=list)
    events: list[Event] = field(default_factory=list)
    readings: list[Reading] = field(default_factory=list)  # clock_drift, if known


def clock_settable(meter: MeterSettings) -> bool:
    """Whether ``meter``'s kind has a clock amic reads and sets by broadcast (no I/O)."""
    try:
        caps = kind_of(meter.protocol).fixed_capabilities()
    except KeyError:
        return False
    return caps.clock and caps.clock_set == "broadcast"


def _air_time(bus: Bus, nbytes: int) -> float:
    baud = getattr(bus, "line_baud", None) or getattr(bus, "baud", None)
    return nbytes * 11 / baud if isinstance(baud, int) and baud > 0 else 0.0


class TimeSync:
    """Drift checks and daily broadcast time sync, bus by bus.

    Remembers the local date of each bus's last broadcast: keep :meth:`dump` and give it
    back to :meth:`load` after a restart so a bus is not synced twice in one day.
    ``clock`` is the collector's wall clock (epoch seconds).
    """

    def __init__(self, settings: TimeSyncSettings | None = None, *,
                 clock: Clock = time.time) -> None:
        self.settings = settings or TimeSyncSettings()
        self.tz = zone(self.settings.tz)
        self.clock = clock
        self.last_broadcast: dict[str, dt.date] = {}  # bus -> local date

    # ---- state -------------------------------------------------------------------------

    def dump(self) -> dict[str, str]:
        """``{bus: "YYYY-MM-DD"}`` of the last broadcasts (JSON-ready)."""
        return {bus: day.isoformat() for bus, day in sorted(self.last_broadcast.items())}

    def load(self, state: Mapping[str, object]) -> None:
        """Take back :meth:`dump`'s output; malformed entries are ignored (logged)."""
        for bus, text in state.items():
            try:
                day = dt.date.fromisoformat(str(text))
            except ValueError:
                log.warning("time sync state: bus %s: bad date %r ignored", bus, text)
                continue
            known = self.last_broadcast.get(bus)
            self.last_broadcast[bus] = max(day, known) if known else day

    # ---- timing ------------------------------------------------------------------------

    def local(self, now: dt.datetime | None = None) -> dt.datetime:
        """Naive meter-local time of ``now`` (default: the clock)."""
        if now is None:
            return _to_local(self.clock(), self.tz)
        return _local_of(now, self.tz)

    def blocked(self, bus: str, now: dt.datetime | None = None) -> str:
        """Why ``bus`` may not get a broadcast at ``now`` ("" if it may)."""
        s = self.settings
        local = self.local(now)
        if self.last_broadcast.get(bus) == local.date():
            return f"already broadcast on {local.date().isoformat()}"
        if s.time_of_day is not None and local.time() < s.time_of_day:
            return f"not before {s.time_of_day.isoformat('minutes')}"
        midnight = local.replace(hour=0, minute=0, second=0, microsecond=0)
        into_day = (local - midnight).total_seconds()
        if min(into_day, _DAY - into_day) < s.midnight_guard:
            return "too close to midnight"
        return ""

    def next_time(self, now: dt.datetime | None = None) -> dt.datetime | None:
        """The next ``time_of_day`` after ``now``, as an aware UTC datetime (None: unset)."""
        at = self.settings.time_of_day
        if at is None:
            return None
        local = self.local(now)
        target = dt.datetime.combine(local.date(), at)
        if target <= local:
            target = dt.datetime.combine(local.date() + dt.timedelta(days=1), at)
        return dt.datetime.fromtimestamp(_to_epoch(target, self.tz), dt.UTC)

    # ---- the run -----------------------------------------------------------------------

    async def _measure(self, worker: BusWorker, meter: MeterSettings) -> MeterClock:
        s = self.settings
        return await read_clock(worker, meter, tz=self.tz, clock=self.clock,
                                retries=s.retries, td=s.td)

    async def _read_all(self, worker: BusWorker, meters: Iterable[MeterSettings],
                        result: TimeSyncResult) -> dict[str, MeterClock]:
        # One job per meter, one at a time: commands and polls get the bus in between.
        found: dict[str, MeterClock] = {}
        for m in meters:
            try:
                found[m.meter_id] = await self._measure(worker, m)
            except DriverError as e:
                result.unread[m.meter_id] = str(e)
                log.info("time sync: meter %s on %s: clock not read: %s", m.meter_id,
                         worker.name, e)
        return found

    async def _broadcast(self, worker: BusWorker, meter: Meter) -> None:
        """A time broadcast to ``meter``'s clock group on the bus, timed so the meters hear
        it on a second boundary."""
        given = self.settings.lead
        lead = given if given is not None else _air_time(worker.bus, meter.broadcast_bytes())
        opts = CallOptions(retries=self.settings.retries, td=self.settings.td)

        align = self.settings.align

        async def job(w: BusWorker) -> None:
            if align:
                # A meter sets whole seconds: send second S so it lands as S begins.
                target = math.floor(self.clock() + lead) + 1
                await asyncio.sleep(max(0.0, target - lead - self.clock()))
            else:
                target = round(self.clock() + lead)
            await meter.broadcast_time(_to_local(target, self.tz), opts)

        await worker.submit(Lane.ON_DEMAND, job)

    async def run_bus(self, worker: BusWorker, meters: Iterable[MeterSettings],
                      now: dt.datetime | None = None) -> TimeSyncResult:
        """Read the drift of ``meters`` on ``worker``'s bus; broadcast the time if due.

        ``now`` (default: the clock) decides the day for the once-a-day limit and stamps
        the events; drifts are always measured against the clock.
        """
        s = self.settings
        bus = worker.name
        ts = assume_utc(now) if now is not None else dt.datetime.fromtimestamp(self.clock(), dt.UTC)
        result = TimeSyncResult(bus, self.local(ts).date())
        todo: list[MeterSettings] = []
        for m in meters:
            if not clock_settable(m):
                result.skipped[m.meter_id] = f"{m.protocol}: no broadcast time sync"
            elif m.bus != bus:
                result.skipped[m.meter_id] = f"on bus {m.bus}, not {bus}"
            else:
                todo.append(m)
        by_id = {m.meter_id: m for m in todo}

        found = await self._read_all(worker, todo, result)
        for meter_id, c in found.items():
            result.drifts[meter_id] = c.drift
            if abs(c.drift) > s.max_sync_drift:
                result.large.append(meter_id)
                result.events.append(Event(
                    "clock_drift_large", ts, meter=meter_id, bus=bus, severity=2,
                    value=c.drift,
                    detail=f"meter clock {c.drift:+.0f} s off (shows {c.meter_time.isoformat()})"
                           f"; beyond broadcast sync ({s.max_sync_drift:.0f} s): set it on "
                           f"site or by an authorised write"))
            elif abs(c.drift) > s.min_drift:
                result.candidates.append(meter_id)
        if DRIFT_QUANTITY in QUANTITIES:
            unit = QUANTITIES[DRIFT_QUANTITY].unit
            result.readings = [Reading(meter_id, DRIFT_QUANTITY, c.drift, unit, ts, None,
                                       Quality.GOOD) for meter_id, c in found.items()]

        if not result.candidates:
            result.reason = "no meter needs it"
            return result
        why = self.blocked(bus, ts)
        if why:
            result.reason = why
            log.info("time sync: bus %s: %d meters off, no broadcast: %s", bus,
                     len(result.candidates), why)
            return result

        # One broadcast per clock group (a DL/T645 edition), in the candidates' order.
        groups: dict[object, Meter] = {}
        for meter_id in result.candidates:
            device = worker.device(by_id[meter_id])
            group = device.clock_group()
            if group is not None:
                groups.setdefault(group, device)
        for device in groups.values():
            try:
                await self._broadcast(worker, device)
            except DriverError as e:
                result.reason = f"broadcast failed: {e}"
                log.warning("time sync: bus %s: broadcast failed: %s", bus, e)
                if not result.broadcast:
                    return result
                continue
            result.broadcast = True
            self.last_broadcast[bus] = result.day
        log.info("time sync: bus %s: time broadcast for %d meters", bus, len(result.candidates))
        if s.settle:
            await asyncio.sleep(s.settle)

        scratch = TimeSyncResult(bus, result.day)
        again = await self._read_all(worker, (by_id[i] for i in result.candidates), scratch)
        for meter_id in result.candidates:
            a = again.get(meter_id)
            if a is not None:
                result.after[meter_id] = a.drift
            if a is not None and abs(a.drift) <= s.min_drift:
                result.corrected.append(meter_id)
                continue
            result.failed.append(meter_id)
            detail = (f"still {a.drift:+.0f} s off after the broadcast" if a is not None
                      else f"not read after the broadcast: {scratch.unread.get(meter_id)}")
            result.events.append(Event("clock_sync_failed", ts, meter=meter_id, bus=bus,
                                       severity=1, value=a.drift if a else None,
                                       detail=detail))
        result.events.append(Event("clock_synced", ts, bus=bus, severity=0,
                                   value=float(len(result.corrected)),
                                   detail=",".join(result.corrected)))
        return result


    # ---- a concentrator's own clock ------------------------------------------------------

    @staticmethod
    def concentrator_key(name: str) -> str:
        """The key of concentrator ``name`` in :attr:`last_broadcast` (its meters' bus
        has the same name)."""
        return f"concentrator:{name}"

    async def _terminal_clock(self, worker: BusWorker, link: TerminalLink) -> float:
        s = self.settings
        opts = CallOptions(retries=s.retries, td=s.td)
        got = await worker.submit(Lane.ON_DEMAND, lambda w: link.read_clock(self.clock, opts))
        # whole seconds shown, as a meter's: on average half a second on
        return round(_to_epoch(got.shown, self.tz) + 0.5 - (got.t0 + got.t1) / 2, 3)

    async def run_concentrator(self, worker: BusWorker, link: TerminalLink,
                               now: dt.datetime | None = None) -> TimeSyncResult:
        """Read the clock of the concentrator behind ``worker`` (AFN0C F2) and set it
        (AFN05 F31) under the meters' policy: only when off by more than ``min_drift``
        and at most ``max_sync_drift`` (beyond: ``clock_drift_large``, set it on site),
        once per local day, not before ``time_of_day`` nor near midnight; then read it
        again (``clock_synced`` or ``clock_sync_failed``).  The events name the
        concentrator as their bus and no meter; ``drifts`` is keyed by its name."""
        s = self.settings
        name = worker.name
        key = self.concentrator_key(name)
        ts = assume_utc(now) if now is not None else dt.datetime.fromtimestamp(self.clock(), dt.UTC)
        result = TimeSyncResult(name, self.local(ts).date())
        try:
            drift = await self._terminal_clock(worker, link)
        except DriverError as e:
            result.unread[name] = str(e)
            result.reason = f"clock not read: {e}"
            log.info("time sync: concentrator %s: clock not read: %s", name, e)
            return result
        result.drifts[name] = drift
        if abs(drift) > s.max_sync_drift:
            result.large.append(name)
            result.reason = "beyond max_sync_drift"
            result.events.append(Event(
                "clock_drift_large", ts, bus=name, severity=2, value=drift,
                detail=f"concentrator {name} clock {drift:+.0f} s off; beyond automatic "
                       f"sync ({s.max_sync_drift:.0f} s): check it and set it on site"))
            return result
        if abs(drift) <= s.min_drift:
            result.reason = "within min_drift"
            return result
        result.candidates.append(name)
        why = self.blocked(key, ts)
        if why:
            result.reason = why
            log.info("time sync: concentrator %s %+.0f s off, not set: %s", name, drift, why)
            return result

        async def set_clock(w: BusWorker) -> None:
            await link.set_clock(_to_local(round(self.clock()), self.tz),
                                 CallOptions(retries=s.retries, td=s.td))

        try:
            await worker.submit(Lane.ON_DEMAND, set_clock)
        except DriverError as e:
            result.reason = f"time set failed: {e}"
            result.failed.append(name)
            log.warning("time sync: concentrator %s: time set failed: %s", name, e)
            result.events.append(Event("clock_sync_failed", ts, bus=name, severity=1,
                                       value=drift, detail=f"concentrator {name}: time set "
                                                           f"(AFN05 F31) failed: {e}"))
            return result
        result.broadcast = True
        self.last_broadcast[key] = result.day
        log.info("time sync: concentrator %s was %+.1f s off: time set", name, drift)
        if s.settle:
            await asyncio.sleep(s.settle)
        try:
            after: float | None = await self._terminal_clock(worker, link)
        except DriverError as e:
            after, unread = None, str(e)
        if after is not None:
            result.after[name] = after
        if after is not None and abs(after) <= s.min_drift:
            result.corrected.append(name)
        else:
            result.failed.append(name)
            result.events.append(Event(
                "clock_sync_failed", ts, bus=name, severity=1, value=after,
                detail=(f"concentrator {name} still {after:+.0f} s off after the time set"
                        if after is not None
                        else f"concentrator {name} not read after the time set: {unread}")))
        result.events.append(Event("clock_synced", ts, bus=name, severity=0,
                                   value=float(len(result.corrected)),
                                   detail=",".join(result.corrected)))
        return result


__all__ = [
    "CHINA_TZ",
    "DEFAULT_TZ",
    "DRIFT_QUANTITY",
    "MeterClock",
    "TimeSync",
    "TimeSyncResult",
    "TimeSyncSettings",
    "clock_settable",
    "measure_clock",
    "read_clock",
    "read_drift",
    "zone",
]

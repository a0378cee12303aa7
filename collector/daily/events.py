"""The meters' own event records (失压, 失流, 开盖, 掉电, 编程 ...) into the store.

Two ways in, both run by :class:`~collector.daily.jobs.DailyJobs` (so only with a
``[daily]`` table):

- **when a counter moves**: the event counters (``cover_open_count``,
  ``voltage_loss_count_a`` ..., :data:`protocols.quantities.EVENT_COUNTERS`) are read by
  the schedules like any quantity; every minute the counters stored since the last look
  are compared with the last value seen of each, and the records of a kind whose counter
  grew by N are fetched (the latest N, at most 10);
- **once a day** at ``[daily] events_at``: every meter that keeps records has its
  counters read and, for each kind that moved since the last stored counter (or whose
  counter is not known yet and is not zero), its latest records fetched (at most
  ``events_records`` of a kind).

A record becomes the event ``meter_<kind>`` at the meter's own start time (UTC), with
the end time and the record number in its detail, through the alarm engine's
:meth:`~collector.polling.rules.AlarmEngine.records` (a new cover-open record is an
alarm; a voltage loss record while another meter of the bus answered within
``bus_up_window_s`` also raises ``voltage_loss``).  The same record read twice is stored
once: an event of the same meter, kind and start time already stored is not stored
again.  An event that lasts (voltage loss, power down, cover open ...) also gets
``meter_<kind>_cleared`` at its end: at once when the record already has one, or from
a later read, since the daily run reads again the records stored while going on.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from collector.config.alarms import AlarmSettings
from collector.config.settings import MeterSettings
from collector.polling.rules import AlarmEngine
from collector.polling.scheduler import BusWorker, Lane
from collector.store import Store
from collector.store.records import Event, Reading
from drivers.device import EventsRead, Meter, MeterEvent
from drivers.errors import DriverError
from drivers.options import CallOptions
from protocols.dlt645 import RECORDS_KEPT
from protocols.quantities import EVENT_COUNTERS

if TYPE_CHECKING:
    from collector.polling.context import DaemonContext

log = logging.getLogger("amic.events")

COUNTER_KIND: dict[str, str] = {q: k for k, q in EVENT_COUNTERS.items()}
"""Counter quantity -> the event kind it counts."""


@dataclass(slots=True)
class EventsResult:
    """One meter's fetch: the ``events`` raised (stored by the caller), records read,
    ``counters`` read (daily run), what failed."""

    meter: str
    events: list[Event] = field(default_factory=list)
    records: list[MeterEvent] = field(default_factory=list)
    counters: list[Reading] = field(default_factory=list)
    failed: dict[str, str] = field(default_factory=dict)


def keeps_events(worker: BusWorker, meter: MeterSettings) -> bool:
    """Whether the meter's kind keeps event records (no I/O)."""
    try:
        return bool(worker.device(meter).event_kinds())
    except (DriverError, ValueError, KeyError):
        return False


def stored(store: Store, meter: str, e: MeterEvent) -> bool:
    """Whether the record ``e`` of ``meter`` is already an event in the store."""
    kind = f"meter_{e.kind}"
    return any(x.ts == e.start for x in store.events(e.start, 50, meter=meter, kind=kind))


def end_stored(store: Store, meter: str, e: MeterEvent) -> bool:
    """Whether the end of the record ``e`` (which has one) is already stored."""
    assert e.end is not None
    kind = f"meter_{e.kind}_cleared"
    return any(x.ts == e.end for x in store.events(e.end, 50, meter=meter, kind=kind))


ONGOING_DAYS = 62
"""How far back a record stored while going on is looked for, to read its end."""


def ongoing(store: Store, meter: str, kinds: Sequence[str], now: dt.datetime) -> dict[str, int]:
    """Kinds with records stored while going on and no end stored since: kind -> how
    many (their records are read again until the meter gives their end)."""
    since = now - dt.timedelta(days=ONGOING_DAYS)
    out: dict[str, int] = {}
    for kind in kinds:
        starts = [e for e in store.events(since, 50, meter=meter, kind=f"meter_{kind}")
                  if e.detail and " going on " in e.detail]
        if not starts:
            continue
        ended = store.events(min(e.ts for e in starts), 200, meter=meter,
                             kind=f"meter_{kind}_cleared")
        open_ = [e for e in starts
                 if not any(x.detail and e.ts.isoformat() in x.detail for x in ended)]
        if open_:
            out[kind] = len(open_)
    return out


def bus_up(store: Store, meters: Sequence[MeterSettings], meter: MeterSettings,
           now: dt.datetime, window_s: float) -> bool:
    """Another meter of ``meter``'s bus has readings within ``window_s`` before ``now``."""
    since = now - dt.timedelta(seconds=window_s)
    return any(store.recent_readings(meter=m.meter_id, since=since, limit=1)
               for m in meters if m.bus == meter.bus and m.meter_id != meter.meter_id)


def last_counter(store: Store, meter: str, quantity: str,
                 before: dt.datetime | None = None) -> float | None:
    got = store.recent_readings(meter=meter, quantity=quantity, until=before, limit=1)
    return got[0].value if got else None  # a stored NULL is unknown too


def wanted_records(counters: Mapping[str, float], previous: Mapping[str, float | None],
                   first: int) -> dict[str, int]:
    """Records to fetch per kind: the growth of its counter (at most 10); ``first`` (at
    most the count) for a counter seen for the first time; none for a counter that
    fell (the meter was cleared) or did not move."""
    out: dict[str, int] = {}
    for quantity, now in counters.items():
        kind = COUNTER_KIND.get(quantity)
        if kind is None:
            continue
        before = previous.get(quantity)
        grew = min(int(now), first) if before is None else int(now - before)
        if grew > 0:
            out[kind] = min(grew, RECORDS_KEPT)
    return out


async def fetch_records(worker: BusWorker, meter: MeterSettings, wanted: Mapping[str, int],
                        *, tz: dt.tzinfo, retries: int = 1,
                        lane: Lane = Lane.SCHEDULED) -> EventsRead:
    """The records ``wanted`` of ``meter``, as one job on its bus."""
    opts = CallOptions(retries=retries)

    async def job(w: BusWorker) -> EventsRead:
        device: Meter = w.device(meter)
        return await device.read_events(wanted, opts, tz=tz)
    return await worker.submit(lane, job)


async def read_counters(worker: BusWorker, meter: MeterSettings, *, retries: int = 1,
                        lane: Lane = Lane.SCHEDULED) -> list[Reading]:
    """The event counters the meter offers, as one job on its bus."""
    opts = CallOptions(retries=retries)

    async def job(w: BusWorker) -> list[Reading]:
        device = w.device(meter)
        kinds = device.event_kinds()
        asked = [q for k, q in EVENT_COUNTERS.items()
                 if k in kinds and device.capabilities.offers(q)]
        got = await device.read(asked, opts)
        return got.readings
    return await worker.submit(lane, job)


class EventRecords:
    """Fetches event records for :class:`~collector.daily.jobs.DailyJobs` (module doc)."""

    def __init__(self, ctx: DaemonContext, tz: dt.tzinfo, *, records: int = 2) -> None:
        self.ctx = ctx
        self.tz = tz
        self.records = records
        self.counts: dict[tuple[str, str], float] = {}  # (meter, counter) -> last seen
        self.checked: dt.datetime | None = None  # counters stored before this are seen

    def _engine(self) -> AlarmEngine:
        return AlarmEngine(AlarmSettings(**dict(self.ctx.settings().alarms.values)))  # type: ignore[arg-type]

    async def fetch(self, worker: BusWorker, meter: MeterSettings, wanted: Mapping[str, int],
                    now: dt.datetime, result: EventsResult | None = None) -> EventsResult:
        """Fetch ``wanted`` records of ``meter`` and raise the events of the new ones."""
        store = self.ctx.store()
        assert store is not None
        result = result or EventsResult(meter.meter_id)
        if not wanted:
            return result
        try:
            got = await fetch_records(worker, meter, wanted, tz=self.tz)
        except DriverError as err:
            for kind in wanted:
                result.failed[kind] = str(err)
            return result
        for kind, why in got.failed.items():
            result.failed[kind] = str(why)
        new, ended = [], []
        for e in got.events:
            if not stored(store, meter.meter_id, e):
                new.append(e)
            elif e.end is not None and not end_stored(store, meter.meter_id, e):
                ended.append(e)  # first read while going on; its end is known now
        result.records.extend(new)
        if new or ended:
            engine = self._engine()
        if new:
            up = bus_up(store, self.ctx.settings().meters, meter, now,
                        engine.settings.bus_up_window_s)
            result.events.extend(engine.records(meter.meter_id, new, bus=meter.bus,
                                                bus_up=up))
        if ended:
            result.events.extend(engine.ends(meter.meter_id, ended, bus=meter.bus))
        for ev in result.events:
            self.ctx.on_event(ev)
        return result

    async def daily(self, now: dt.datetime) -> list[EventsResult]:
        """The daily run over every meter that keeps records, bus by bus."""
        store = self.ctx.store()
        assert store is not None
        workers = self.ctx.workers()
        per_bus: dict[str, list[MeterSettings]] = {}
        for m in self.ctx.settings().meters:
            if m.bus in workers and keeps_events(workers[m.bus], m):
                per_bus.setdefault(m.bus, []).append(m)
        results: list[EventsResult] = []

        async def one(bus: str, meters: list[MeterSettings]) -> None:
            worker = workers[bus]
            for m in meters:
                result = EventsResult(m.meter_id)
                try:
                    counters = await read_counters(worker, m)
                except DriverError as e:
                    result.failed["counters"] = str(e)
                    results.append(result)
                    continue
                result.counters = counters
                values = {r.quantity: r.value for r in counters}
                previous = {q: last_counter(store, m.meter_id, q, before=now) for q in values}
                self.ctx.store_readings(counters)
                for q, v in values.items():
                    self.counts[(m.meter_id, q)] = v
                wanted = wanted_records(values, previous, self.records)
                # a record stored while going on is read again until it has an end: it
                # moved down by the counter's growth since
                kinds = [COUNTER_KIND[q] for q in values if q in COUNTER_KIND]
                for kind, n in ongoing(store, m.meter_id, kinds, now).items():
                    wanted[kind] = min(RECORDS_KEPT, wanted.get(kind, 0) + n)
                await self.fetch(worker, m, wanted, now, result)
                results.append(result)

        await asyncio.gather(*(one(b, ms) for b, ms in per_bus.items()))
        log.info("event records: %d meters, %d new records", len(results),
                 sum(len(r.records) for r in results))
        return results

    async def on_change(self, now: dt.datetime) -> list[EventsResult]:
        """Records of the counters stored since the last call that grew."""
        store = self.ctx.store()
        assert store is not None
        since, self.checked = self.checked, now
        if since is None:
            since = now - dt.timedelta(minutes=2)
        meters = {m.meter_id: m for m in self.ctx.settings().meters}
        moved: dict[str, dict[str, int]] = {}
        for quantity, kind in COUNTER_KIND.items():
            rows = store.recent_readings(quantity=quantity, since=since, until=now,
                                         limit=100_000)
            for r in sorted(rows, key=lambda r: r.ts):
                if r.value is None:
                    continue
                key = (r.meter, quantity)
                before = self.counts.get(key)
                if before is None:
                    before = last_counter(store, r.meter, quantity, before=r.ts)
                self.counts[key] = r.value
                if before is not None and r.value > before:
                    grew = min(int(r.value - before), RECORDS_KEPT)
                    wanted = moved.setdefault(r.meter, {})
                    wanted[kind] = max(wanted.get(kind, 0), grew)
        workers = self.ctx.workers()
        results = []
        for meter_id, wanted in moved.items():
            m = meters.get(meter_id)
            if m is None or m.bus not in workers:
                continue
            results.append(await self.fetch(workers[m.bus], m, wanted, now))
        return results


__all__ = [
    "COUNTER_KIND",
    "EventRecords",
    "EventsResult",
    "bus_up",
    "end_stored",
    "fetch_records",
    "keeps_events",
    "ongoing",
    "read_counters",
    "stored",
    "wanted_records",
]

"""Bus-aware scheduling: one job at a time per bus, commands first, dead meters backed off.

A :class:`BusWorker` owns one bus and runs its jobs one after another, always taking
the highest lane first (commands, then on-demand reads, then scheduled polls), so a
command waits for at most the job in flight.  :class:`Poller` turns a schedule into
cycles of per-meter read jobs, one per meter in a fixed order (fair: no meter reads
twice before every other due meter read once), and records each cycle's success per
meter, bus and area.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import logging
import random
import time
import uuid
from collections import deque
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field, replace
from decimal import Decimal
from enum import IntEnum
from typing import Any, TypeVar, TypeVarTuple

from collector.config.profiles import load_profile
from collector.config.settings import MeterSettings, ModbusFraming, ScheduleSettings
from collector.store import Store
from collector.store.records import CycleRecord, Event, Quality, Reading, utcnow
from drivers.bus import Bus
from drivers.device import Line, Meter, MeterRead, MeterRef, Route
from drivers.errors import (
    DriverError,
    IncompleteReply,
    LinkDown,
    MeterError,
    NoReply,
)
from drivers.meters import open_meter
from drivers.options import CallOptions
from protocols.dlt645 import StatusWord
from protocols.modbus import Profile

from .rules import SEVERITY

log = logging.getLogger("amic.scheduler")
T = TypeVar("T")
Ts = TypeVarTuple("Ts")


class Lane(IntEnum):
    COMMAND = 0
    ON_DEMAND = 1
    SCHEDULED = 2




@dataclass(slots=True)
class _Job:
    run: Callable[..., Awaitable[Any]]  # called with the worker, then ``args``
    future: asyncio.Future[Any]
    lane: Lane
    queued: float
    args: tuple[Any, ...] = ()


class WorkerStopped(Exception):
    """The bus worker was stopped before the job ran."""


class BusWorker:
    """Runs the jobs of one bus one at a time, highest lane first."""

    def __init__(self, name: str, bus: Bus, *, preamble: int = 4,
                 modbus: ModbusFraming = "rtu",
                 observe: Callable[[str, float, str], None] | None = None,
                 profiles: Callable[[str], Profile] | None = None) -> None:
        self.name = name
        self.bus = bus
        self.preamble = preamble
        # The line's sessions are shared by every meter of the bus (their counters and
        # what meters refused); the device model opens meters on it.
        self.line = Line(bus, preamble=preamble, modbus=modbus)
        self.profiles = profiles  # Modbus profile by name (default: the shipped/configured)
        self._queues: dict[Lane, deque[_Job]] = {lane: deque() for lane in Lane}
        self._wake = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._stopping = False
        self.current: _Job | None = None
        self.jobs_done = 0
        self.refused = self.line.refused  # (address, quantity) a meter refused
        self.observe = observe  # (bus, seconds, outcome) per job, for metrics

    @property
    def alive(self) -> bool:
        return self._task is not None and not self._task.done()

    def device(self, meter: MeterSettings,
               profiles: Callable[[str], Profile] | None = None) -> Meter:
        """``meter`` on this bus, in the device model (its profile loaded if it has one,
        by ``profiles``, else the worker's loader, else the shipped/configured ones)."""
        profile = None
        if meter.profile:
            profile = (profiles or self.profiles or load_profile)(meter.profile)
        route = None if meter.pn is None else Route(meter.pn, meter.port, meter.baud)
        return open_meter(self.line, MeterRef(meter.meter_id, meter.protocol, meter.address,
                                              profile, route=route))

    def submit(self, lane: Lane, run: Callable[[BusWorker, *Ts], Awaitable[T]],
               *args: *Ts) -> asyncio.Future[T]:
        """Queue ``run(worker, *args)``; its result (or exception) comes in the future.
        Passing ``args`` rather than a closure spares the closure for each job."""
        fut: asyncio.Future[T] = asyncio.get_running_loop().create_future()
        if self._stopping:
            fut.set_exception(WorkerStopped(f"bus {self.name} is stopping"))
            return fut
        self._queues[lane].append(_Job(run, fut, lane, time.monotonic(), args))
        self._wake.set()
        return fut

    def queue_depth(self, lane: Lane | None = None) -> int:
        if lane is not None:
            return len(self._queues[lane])
        return sum(len(q) for q in self._queues.values())

    def drop_queued(self, lane: Lane) -> int:
        """Cancel jobs of ``lane`` not yet started (a reload replaces the schedules)."""
        q = self._queues[lane]
        n = len(q)
        while q:
            q.popleft().future.cancel()
        return n

    async def start(self) -> bool:
        """Open the bus (lazily: a link that is down is retried by each job) and run."""
        up = await self.bus.open(lazy=True)
        self._task = asyncio.create_task(self._run(), name=f"bus:{self.name}")
        return up

    def _next(self) -> _Job | None:
        for lane in Lane:
            q = self._queues[lane]
            while q:
                job = q.popleft()
                if not job.future.cancelled():
                    return job
        return None

    async def _run(self) -> None:
        while True:
            job = self._next()
            if job is None:
                if self._stopping:
                    return
                self._wake.clear()
                await self._wake.wait()
                continue
            self.current = job
            t0 = time.monotonic()
            outcome = "ok"
            try:
                result = await job.run(self, *job.args)
            except asyncio.CancelledError:
                if not job.future.done():
                    job.future.cancel()
                raise
            except Exception as e:  # a job's failure is its caller's business
                outcome = type(e).__name__
                if not job.future.done():
                    job.future.set_exception(e)
            else:
                if not job.future.done():
                    job.future.set_result(result)
            finally:
                self.current = None
                self.jobs_done += 1
                if self.observe is not None:
                    self.observe(self.name, time.monotonic() - t0, outcome)

    async def stop(self, drain: float = 5.0) -> None:
        """Finish the job in flight (up to ``drain`` s), refuse queued ones, close the bus."""
        self._stopping = True
        for lane in Lane:
            q = self._queues[lane]
            while q:
                job = q.popleft()
                if not job.future.done():
                    job.future.set_exception(WorkerStopped(f"bus {self.name} stopped"))
        self._wake.set()
        if self._task is not None:
            try:
                await asyncio.wait_for(asyncio.shield(self._task), drain)
            except TimeoutError:
                log.warning("bus %s: job still running after %.1f s drain; cancelled",
                            self.name, drain)
                self._task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await self._task
        await self.bus.close()


# ---- readings --------------------------------------------------------------------------

def to_number(value: object) -> float | None:
    """A stored number for a decoded value (status words by their raw bits)."""
    if isinstance(value, bool):
        return float(value)
    if isinstance(value, (Decimal, int, float)):
        return float(value)
    if isinstance(value, StatusWord):
        return float(value.raw)
    if isinstance(value, dt.datetime):
        return value.timestamp()  # meter local time, read as the collector's local time
    if isinstance(value, dt.date):
        return dt.datetime(value.year, value.month, value.day).timestamp()
    if isinstance(value, dt.time):
        return float(value.hour * 3600 + value.minute * 60 + value.second)
    return None


async def read_meter_each(worker: BusWorker, meter: MeterSettings,
                          quantities: tuple[str, ...], *, retries: int = 1,
                          td: float | None = None,
                          profiles: Callable[[str], Profile] | None = None) -> MeterRead:
    """The ``quantities`` of one meter, keeping every value read (see
    :meth:`drivers.device.Meter.read`: what failed is asked once more, what the meter
    refuses is not asked again).  Raises when nothing at all was read: the meter failed.
    """
    device = worker.device(meter, profiles)
    got = await device.read(quantities, CallOptions(retries=retries, td=td))
    if got.refused:
        log.info("meter %s refuses %s; not asked again", meter.meter_id,
                 ", ".join(got.refused))
    if not got.readings:
        if got.failed:
            raise next(iter(got.failed.values()))
        raise MeterError(f"meter {meter.meter_id}: refuses every scheduled quantity",
                         address=meter.address, function=0x11, code=0, errors=())
    return got


async def read_meter(worker: BusWorker, meter: MeterSettings, quantities: tuple[str, ...],
                     *, retries: int = 1, td: float | None = None,
                     profiles: Callable[[str], Profile] | None = None) -> list[Reading]:
    """All ``quantities`` of one meter as stored readings; a quantity the meter refuses is
    left out.  A communication failure (no reply, wrong reply, link down) raises: the
    meter failed.
    """
    got = await read_meter_each(worker, meter, quantities, retries=retries, td=td,
                                profiles=profiles)
    if got.failed:
        raise next(iter(got.failed.values()))
    return got.readings


CURVE_STEP = dt.timedelta(minutes=15)  # the meters' load-record interval


def last_curve_point(store: Store, meter: str, quantities: tuple[str, ...]
                     ) -> dt.datetime | None:
    """The newest load-curve point stored for ``meter`` (readings of ``quantities``
    with a meter timestamp), UTC; None: none."""
    if not quantities:
        return None
    marks = ", ".join("?" * len(quantities))
    row = store.thread_connection().execute(
        "SELECT max(meter_ts) FROM indexed_readings WHERE meter = ? AND meter_ts IS NOT NULL "
        f"AND quantity IN ({marks})", (meter, *quantities)).fetchone()
    if row is None or row[0] is None:
        return None
    return dt.datetime.fromtimestamp(row[0] / 1000, dt.UTC)


# ---- polling ---------------------------------------------------------------------------

def _silent(error: Exception) -> bool:
    """Nothing came back at all: no reply byte within Td, or the link is down."""
    return isinstance(error, LinkDown) or (isinstance(error, NoReply)
                                           and not isinstance(error, IncompleteReply))


@dataclass(slots=True)
class MeterHealth:
    failures: int = 0  # consecutive failed cycles
    next_try: float = 0.0  # monotonic time before which the meter is skipped
    dead: bool = False
    last_ok: dt.datetime | None = None


@dataclass(slots=True)
class BusHealth:
    """A bus (its link, or the whole line behind it) as the poller sees it."""

    down: bool = False
    since: float = 0.0  # monotonic time it went down
    reason: str = ""
    # Meters silent one after another (none answering in between), with their health
    # before that failure: restored if it turns out the bus, not they, went away.
    silent: list[tuple[str, MeterHealth]] = field(default_factory=list)
    not_queued: int = 0  # meter reads not queued because the bus was down
    suspect: bool = False  # enough meters silent in a row: is the line itself down?
    probe_from: int = 0  # where the next probe starts among meters never read


# When does a bus count as down?  A link that cannot be (re)opened at once; otherwise
# this many meters in a row that stay silent (or all of a smaller bus's, from two up),
# and then a meter of the bus that answered before does not answer either.
BUS_DOWN_AFTER = 5
PROBE_METERS = 3  # meters tried (no retries) once per cycle while a bus is down


@dataclass(slots=True)
class Sinks:
    """Where the poller's results go (the store writer, metrics, logs)."""

    readings: Callable[[list[Reading]], None]
    event: Callable[[Event], None]
    cycle: Callable[[CycleRecord], None]
    progress: Callable[[CycleRecord], None] = field(default=lambda c: None)
    # Awaited before each read job is queued: the store's back-pressure (e.g. while the
    # disk is full and rows wait in memory, polling waits instead of piling them up).
    room: Callable[[], Awaitable[None]] | None = None
    # The newest stored load-curve point of a meter (UTC; None: none), so a restarted
    # collector reads a curve on from there (see last_curve_point).
    curve_last: Callable[[str, tuple[str, ...]], dt.datetime | None] | None = None
    # Load-curve points go here instead of ``readings`` when given: stored and forwarded,
    # never fed to the live alarm rules or the prepaid engine (they are past values).
    curve: Callable[[list[Reading]], None] | None = None


class Poller:
    """Runs schedules as cycles of per-meter read jobs on the bus workers."""

    def __init__(self, workers: dict[str, BusWorker], sinks: Sinks, *,
                 dead_after: int = 2, health: dict[str, MeterHealth] | None = None,
                 profiles: Callable[[str], Profile] | None = None,
                 bus_health: dict[str, BusHealth] | None = None,
                 elsewhere: Callable[[str], bool] | None = None) -> None:
        self.workers = workers
        # Buses another collector of the fleet serves: their meters are not ours to poll.
        self.elsewhere = elsewhere
        self.profiles = profiles  # Modbus profile by name (from the configuration)
        self.sinks = sinks
        self.dead_after = dead_after
        self.health: dict[str, MeterHealth] = health if health is not None else {}
        self.buses: dict[str, BusHealth] = bus_health if bus_health is not None else {}
        self.bus_meters: dict[str, dict[str, MeterSettings]] = {}  # every meter seen, by bus
        self.values_failed = 0  # quantities not obtained from meters that answered
        self.last_cycle: dict[str, CycleRecord] = {}
        self.current: dict[str, CycleRecord] = {}
        # Load curves: the meters' zone (None: the collector's) and, per (schedule,
        # meter), the last curve point read (meter local time).
        self.curve_tz: dt.tzinfo | None = None
        self.curve_read: dict[tuple[str, str], dt.datetime] = {}
        self.curve_points = 0  # curve readings handed to the sinks

    def backoff(self, failures: int, interval: float, cap: float) -> float:
        """Seconds a meter waits after ``failures`` consecutive failed cycles."""
        if failures < self.dead_after:
            return 0.0
        wait: float = interval * 2.0 ** (failures - self.dead_after + 1)
        return min(wait, max(cap, interval))

    async def run_cycle(self, schedule: ScheduleSettings,
                        meters: list[MeterSettings]) -> CycleRecord:
        now = time.monotonic()
        if self.elsewhere is not None:
            away = {b for b in {m.bus for m in meters} if self.elsewhere(b)}
            if away:
                meters = [m for m in meters if m.bus not in away]
        cycle = CycleRecord(uuid.uuid4().hex, schedule.name, utcnow())
        self.current[schedule.name] = cycle
        # Nothing per meter is made for a cycle (at 100k meters that is 100k objects
        # the garbage collector walks until the cycle ends): the due meters by bus, and
        # the few dead ones, which get one probe instead of the schedule's retries.
        due: dict[str, list[MeterSettings]] = {}
        dead: set[str] = set()
        skipped: list[MeterSettings] = []
        health, workers, bus_meters = self.health, self.workers, self.bus_meters
        for m in meters:
            h = health.get(m.meter_id)
            if h is None:
                h = health[m.meter_id] = MeterHealth()
            on_bus = bus_meters.get(m.bus)
            if on_bus is None:
                on_bus = bus_meters[m.bus] = {}
            on_bus[m.meter_id] = m
            if m.bus not in workers or h.next_try > now:
                skipped.append(m)  # backed off: counts as not collected this cycle
                continue
            if h.dead:
                dead.add(m.meter_id)
            due.setdefault(m.bus, []).append(m)
        cycle.planned = len(meters)
        for m in skipped:
            self._count(cycle, m, ok=False)
        self.sinks.progress(cycle)

        async def settle(m: MeterSettings, fut: asyncio.Future[list[str]]) -> bool:
            try:
                failed = await fut
            except asyncio.CancelledError:
                task = asyncio.current_task()
                if task is not None and task.cancelling():
                    raise
                return False  # dropped: the cycle ends cut
            except WorkerStopped:
                return False  # the bus stopped under the cycle: not tried, not failed
            except Exception as e:
                self._failed(cycle, schedule, m, e)
            else:
                self._succeeded(cycle, m, failed)
            self.sinks.progress(cycle)
            return True

        async def feed(worker: BusWorker, items: list[MeterSettings]) -> None:
            # Two jobs queued per bus at most: memory stays flat however many meters a
            # cycle has, the bus never idles between jobs, and commands still overtake
            # every poll not yet started.
            bus = self.buses.setdefault(worker.name, BusHealth())
            if bus.down:
                items = await self._probe(cycle, schedule, worker, items)
            pending = deque(items)
            items = []  # the deque alone holds the meters not yet queued
            queued: deque[tuple[MeterSettings, asyncio.Future[list[str]]]] = deque()
            try:
                while (pending or queued) and not bus.down:
                    if pending and len(queued) < 2:
                        m = pending.popleft()
                        retries = 0 if m.meter_id in dead else schedule.retries
                        if self.sinks.room is not None:
                            await self.sinks.room()
                        queued.append((m, worker.submit(Lane.SCHEDULED, self._read, schedule,
                                                        m, retries)))
                        if len(queued) < 2 and pending:
                            continue
                    if not await settle(*queued.popleft()):
                        return
                    if bus.suspect and not bus.down:
                        await self._check_line(schedule, worker, bus)
                if bus.down:
                    # The job in flight ends on its own; the rest is not queued at all.
                    in_flight = worker.current.future if worker.current is not None else None
                    if queued and queued[0][1] is in_flight \
                            and not await settle(*queued.popleft()):
                        return
                    self._not_queued(cycle, bus, [m for m, _ in queued] + list(pending))
            finally:
                for _, fut in queued:
                    fut.cancel()

        try:
            # Buses run side by side, each through its meters in order.
            feeds = [feed(self.workers[bus], items) for bus, items in due.items()]
            due.clear()  # each bus's list is its feed's, consumed as it goes
            await asyncio.gather(*feeds)
        finally:
            # Also when cancelled (shutdown): the cycle is recorded as far as it got, and
            # marked cut when some planned meter was never tried.
            cycle.ended = utcnow()
            cycle.cut = cycle.succeeded + cycle.failed < cycle.planned
            self.current.pop(schedule.name, None)
            self.last_cycle[schedule.name] = cycle
            self.sinks.cycle(cycle)
        return cycle

    async def _read(self, worker: BusWorker, schedule: ScheduleSettings, m: MeterSettings,
                    retries: int) -> list[str]:
        """The read of one meter, as a job of its bus worker; its result: the quantities
        that failed (none: all read)."""
        got = await read_meter_each(worker, m, schedule.quantities, retries=retries,
                                    td=schedule.td, profiles=self.profiles)
        records, errors = got.readings, got.failed
        failed = list(errors)
        if failed:
            log.warning("meter %s on %s: %s not read (%s); the other values kept",
                        m.meter_id, m.bus, ", ".join(failed),
                        type(next(iter(errors.values()))).__name__)
        # Handed over here, in the bus worker, so readings of a transaction that
        # completes after its cycle was cancelled are still stored.
        self.sinks.readings(records)
        if schedule.curve:
            try:
                await self.read_curve(worker, schedule, m, retries)
            except DriverError as e:
                log.warning("meter %s on %s: load curve not read (%s)", m.meter_id, m.bus, e)
                failed.append("curve")
        return failed

    async def read_curve(self, worker: BusWorker, schedule: ScheduleSettings,
                         m: MeterSettings, retries: int) -> int:
        """The load curve of ``m`` since its last point read (or stored; the first time
        ``schedule.curve_days`` back from local midnight), handed to the sinks: points at
        the meter's time, BACKFILLED when late (older than two intervals when read); they
        go to the ``curve`` sink, which the live alarm rules never see.
        A point the meter never recorded stays missing and is not asked again.  Returns
        the readings handed over."""
        tz = self.curve_tz
        now = dt.datetime.now(tz).replace(tzinfo=None) if tz is not None else dt.datetime.now()
        key = (schedule.name, m.meter_id)
        last = self.curve_read.get(key)
        if last is None and self.sinks.curve_last is not None:
            stored = self.sinks.curve_last(m.meter_id, schedule.curve)
            if stored is not None:
                last = stored.astimezone(tz).replace(tzinfo=None)
        if last is not None:
            start = last + CURVE_STEP
        else:
            start = now.replace(hour=0, minute=0, second=0, microsecond=0) \
                - dt.timedelta(days=schedule.curve_days)
        if start > now:
            return 0
        device = worker.device(m, self.profiles)
        got = await device.read_curve(schedule.curve, start, now,
                                      CallOptions(retries=retries, td=schedule.td), tz=tz)
        if got.refused:
            log.info("meter %s keeps no curve of %s", m.meter_id, ", ".join(got.refused))
        late = utcnow() - 2 * CURVE_STEP
        rows = [replace(r, quality=r.quality | Quality.BACKFILLED)
                if r.meter_ts is None or r.meter_ts < late else r for r in got.readings]
        if rows:
            (self.sinks.curve or self.sinks.readings)(rows)
            self.curve_points += len(rows)
        if got.points:
            self.curve_read[key] = max(got.points)
        return len(rows)

    async def _probe(self, cycle: CycleRecord, schedule: ScheduleSettings, worker: BusWorker,
                     items: list[MeterSettings]) -> list[MeterSettings]:
        """A down bus: try a few meters (last read first); the meters left to read if
        one answers (``bus_up``), else none, every meter counted as not collected."""
        bus = self.buses[worker.name]
        if worker.bus.reconnect_wait > 0:
            # The link failed moments ago: a probe would first sleep out the bus's
            # reconnect back-off (up to seconds) and overrun the cycle.  Next cycle.
            self._not_queued(cycle, bus, items)
            return []

        def last_ok(m: MeterSettings) -> float:
            when = self.health[m.meter_id].last_ok
            return when.timestamp() if when is not None else 0.0

        # Meters read before first (the latest first), then, in turn from one down cycle
        # to the next, those never read: a few dead meters at the head of the line must
        # not keep a working line "down".
        known = sorted((i for i in items if last_ok(i)), key=last_ok, reverse=True)
        never = [i for i in items if not last_ok(i)]
        if never:
            start = bus.probe_from % len(never)
            never = never[start:] + never[:start]
        candidates = (known + never)[:PROBE_METERS]
        bus.probe_from += sum(1 for i in candidates if not last_ok(i))
        for m in candidates:
            fut = worker.submit(Lane.SCHEDULED, self._read, schedule, m, 0)
            try:
                failed = await fut
            except asyncio.CancelledError:
                task = asyncio.current_task()
                if task is not None and task.cancelling():
                    raise
                return []  # dropped by a reload
            except Exception as e:
                if _silent(e):
                    if isinstance(e, LinkDown):
                        break  # the link itself: other meters cannot do better
                    continue
                self._bus_up(worker.name, bus, m)
                self._failed(cycle, schedule, m, e)
            else:
                self._bus_up(worker.name, bus, m)
                self._succeeded(cycle, m, failed)
            self.sinks.progress(cycle)
            return [other for other in items if other is not m]
        self._not_queued(cycle, bus, items)
        return []

    def _not_queued(self, cycle: CycleRecord, bus: BusHealth, meters: list[MeterSettings]
                    ) -> None:
        # Not the meters' fault: their own health (and back-off) is left as it was.
        for m in meters:
            self._count(cycle, m, ok=False)
        bus.not_queued += len(meters)
        if meters:
            self.sinks.progress(cycle)

    def _bus_up(self, name: str, bus: BusHealth, m: MeterSettings) -> None:
        down_for = time.monotonic() - bus.since
        bus.down = False
        bus.silent.clear()
        log.warning("bus %s is back (meter %s answers) after %.0f s down", name, m.meter_id,
                    down_for)
        self.sinks.event(Event("bus_up", utcnow(), bus=name, severity=SEVERITY["bus_up"],
                               value=round(down_for, 1),
                               detail=f"meter {m.meter_id} answers again; "
                                      f"{bus.not_queued} meter reads were not queued"))
        bus.not_queued = 0

    def _bus_failure(self, m: MeterSettings, error: Exception, before: MeterHealth) -> None:
        """After a meter failed: is its bus down?  A link down is; a run of silent meters
        makes the bus suspect (checked by :meth:`_check_line`)."""
        bus = self.buses.setdefault(m.bus, BusHealth())
        if bus.down:
            return
        if not _silent(error):
            bus.silent.clear()
            return
        if not before.dead:  # a meter known dead being silent is no news about the bus
            bus.silent.append((m.meter_id, before))
        size = len(self.bus_meters.get(m.bus, ()))
        if isinstance(error, LinkDown):
            self._bus_down(m.bus, bus, f"link down: {error}")
        elif size >= 2 and len(bus.silent) >= min(BUS_DOWN_AFTER, size):
            bus.suspect = True

    async def _check_line(self, schedule: ScheduleSettings, worker: BusWorker,
                          bus: BusHealth) -> None:
        """Meters silent in a row: ask one that answered before (not one of them).  If it
        answers too, those meters are just silent; if not, or none ever answered, the
        bus is down."""
        bus.suspect = False
        silent = {meter_id for meter_id, _ in bus.silent}
        reason = f"{len(silent)} meters in a row did not answer"
        known = [m for m in self.bus_meters.get(worker.name, {}).values()
                 if m.meter_id not in silent and (h := self.health.get(m.meter_id))
                 and h.last_ok is not None and not h.dead]
        if known:
            witness = max(known, key=lambda m: self.health[m.meter_id].last_ok
                          or dt.datetime.min.replace(tzinfo=dt.UTC))
            try:
                await worker.submit(Lane.SCHEDULED, self._ping(schedule, witness))
            except asyncio.CancelledError:
                task = asyncio.current_task()
                if task is not None and task.cancelling():
                    raise
                return
            except Exception as e:
                if not _silent(e):
                    bus.silent.clear()  # it answered: the line works
                    return
                reason += f", nor did {witness.meter_id}, which answered before"
            else:
                bus.silent.clear()
                return
        self._bus_down(worker.name, bus, reason)

    def _ping(self, schedule: ScheduleSettings, m: MeterSettings
              ) -> Callable[[BusWorker], Awaitable[object]]:
        """One request to ``m``, no retries, nothing stored: does it answer at all?"""
        async def run(worker: BusWorker) -> object:
            await worker.device(m, self.profiles).ping(CallOptions(retries=0, td=schedule.td))
            return None
        return run

    def _bus_down(self, name: str, bus: BusHealth, reason: str) -> None:
        bus.down = True
        bus.suspect = False
        bus.since = time.monotonic()
        bus.reason = reason
        # The bus, not these meters, failed: their count of failures is undone.
        for meter_id, health in bus.silent:
            self.health[meter_id] = health
        bus.silent.clear()
        size = len(self.bus_meters.get(name, ()))
        log.error("bus %s is down (%s): its meters are not queued until it answers again",
                  name, reason)
        self.sinks.event(Event("bus_down", utcnow(), bus=name, severity=SEVERITY["bus_down"],
                               value=float(size), detail=reason))

    def _count(self, cycle: CycleRecord, m: MeterSettings, *, ok: bool) -> None:
        if ok:
            cycle.succeeded += 1
        else:
            cycle.failed += 1
            cycle.failed_meters.append(m.meter_id)
        for table, key in ((cycle.per_bus, m.bus), (cycle.per_area, m.area or "-")):
            good, total = table.get(key, (0, 0))
            table[key] = (good + ok, total + 1)

    def _succeeded(self, cycle: CycleRecord, m: MeterSettings,
                   failed: list[str] | None = None) -> None:
        """The meter answered; collected if every scheduled value came (``failed`` empty)."""
        # Partly read: the values read are stored, but the meter is not collected.
        self._count(cycle, m, ok=not failed)
        self.values_failed += len(failed or ())
        self.buses.setdefault(m.bus, BusHealth()).silent.clear()
        h = self.health[m.meter_id]
        if h.dead:
            log.info("meter %s on %s answers again after %d failed cycles", m.meter_id, m.bus,
                     h.failures)
            self.sinks.event(Event("meter_recovered", utcnow(), meter=m.meter_id, bus=m.bus,
                                   severity=SEVERITY["meter_recovered"],
                                   value=float(h.failures)))
        h.failures = 0
        h.dead = False
        h.next_try = 0.0
        h.last_ok = utcnow()

    def _failed(self, cycle: CycleRecord, schedule: ScheduleSettings, m: MeterSettings,
                error: Exception) -> None:
        self._count(cycle, m, ok=False)
        bus = self.buses.get(m.bus)
        if bus is not None and bus.down and _silent(error):
            return  # the job was on the line when the bus went down: not the meter's fault
        h = self.health[m.meter_id]
        before = replace(h)
        h.failures += 1
        wait = self.backoff(h.failures, schedule.interval, schedule.backoff_max)
        # Half an interval of margin so the next due cycle is not missed by a hair.
        h.next_try = time.monotonic() + wait - schedule.interval / 2 if wait else 0.0
        reason = type(error).__name__ if isinstance(error, DriverError) else repr(error)
        if h.failures == self.dead_after and not h.dead:
            h.dead = True
            log.warning("meter %s on %s: %d failed cycles (%s); backing off", m.meter_id,
                        m.bus, h.failures, error)
            self.sinks.event(Event("meter_dead", utcnow(), meter=m.meter_id, bus=m.bus,
                                   severity=SEVERITY["meter_dead"], value=float(h.failures),
                                   detail=reason))
        else:
            log.debug("meter %s: %s", m.meter_id, error)
        self._bus_failure(m, error, before)

    async def run_schedule(self, schedule: ScheduleSettings, meters: list[MeterSettings],
                           *, align: bool = True, immediate: bool = True,
                           cycles: int | None = None,
                           stop: asyncio.Event | None = None) -> None:
        """Cycles at every interval boundary (UTC), plus jitter, until cancelled.

        ``immediate``: the first cycle starts at once rather than at the next boundary,
        so a (re)started collector does not sit idle for up to an interval.
        ``stop``: once set, return after the cycle in progress (a reload: that cycle
        ends on its old settings); cancelling instead cuts the cycle (shutdown).
        """
        done = 0
        rng = random.Random()
        while cycles is None or done < cycles:
            delay = 0.0
            if immediate and not done:
                pass
            elif align:
                period = schedule.interval
                delay = period - (time.time() % period) + rng.uniform(0, schedule.jitter)
            elif done:
                delay = schedule.interval + rng.uniform(0, schedule.jitter)
            if stop is None:
                if delay:
                    await asyncio.sleep(delay)
            elif delay and not stop.is_set():
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(stop.wait(), delay)
            if stop is not None and stop.is_set():
                return
            await self.run_cycle(schedule, meters)
            done += 1

"""``amic run``: the collector service.

Start-up: configuration validated (by the caller), store opened, buses opened
(lazily), READY=1.  SIGHUP reloads the file: a valid one is applied without cutting
anything in progress (cycles finish on their old settings and buses, a daily job
finishes before a bus or ``[daily]`` is replaced; see :meth:`Daemon.reload`), an
invalid one is logged and ignored.  SIGTERM stops the schedules (a cycle in progress
is recorded as cut), lets each bus finish its job in flight, commits the store and
exits 0 within 10 s.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import datetime as dt
import gc
import logging
import re
import signal
import ssl
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from collector.config import ConfigError, load_settings, select_meters
from collector.config.profiles import load_profile
from collector.config.secrets import load_secrets
from collector.config.settings import (
    BusSettings,
    ConcentratorSettings,
    DtuSettings,
    ListenerSettings,
    MeterSettings,
    ScheduleSettings,
    Settings,
)
from collector.daily.jobs import DailyJobs
from collector.daily.timesync import DEFAULT_TZ, zone
from collector.forward.forwarder import Forwarder
from collector.notify import Notifications
from collector.polling.context import DaemonContext
from collector.polling.rules import AlarmEngine, AlarmSettings, severity
from collector.polling.scheduler import (
    BusHealth,
    BusWorker,
    Lane,
    MeterHealth,
    Poller,
    Sinks,
    last_curve_point,
)
from collector.store import CommitInfo, Store, StoreWriter
from collector.store.records import CycleRecord, Event, Reading, utcnow
from drivers.bus import Bus
from drivers.concentrator_meter import (
    RecordBatch,
    TerminalLink,
    concentrator_line,
    terminal_records,
)
from drivers.dialin import DialInBus, DialInListener, DtuEvent, RegistrationFormat
from drivers.mqtt import MqttBus
from drivers.qgdw3761 import MasterStation, TerminalEvent, TerminalId, TerminalSession
from drivers.serial import SerialBus
from drivers.tcp import TcpBus
from protocols.modbus import Profile
from protocols.qgdw3761 import ConfirmStyle

from .control import Control
from .ctlsocket import CtlServer
from .fleet import FleetHooks, Terminal, terminal_key
from .metrics import Metrics, MetricsServer, parse_listen
from .mqttlink import MqttLink
from .notify import Notifier, watchdog_loop

if TYPE_CHECKING:
    from collector.api.context import ApiContext
    from collector.api.server import ApiServer

log = logging.getLogger("amic.daemon")

# ERC code -> event kind and severity of a concentrator's own records (others:
# concentrator_ercN, severity 1)
TERMINAL_EVENT_KINDS = {1: "concentrator_erc1", 3: "concentrator_erc3",
                        14: "concentrator_erc14"}
TERMINAL_EVENT_SEVERITY = {1: 1, 3: 0, 14: 1}

FORWARDER = "timeseries"  # outbox cursor name of the time-series forwarder
DRAIN_SECONDS = 6.0  # buses finish their job in flight; the store commits in what is left


def make_bus(b: BusSettings, mqtt: MqttLink | None = None) -> Bus:
    if b.kind == "mqtt":
        if mqtt is None:
            raise ValueError(f"bus {b.name}: an mqtt bus needs the [mqtt] connection")
        gateway = next(g for g in mqtt.ctx.settings().gateways if g.name == b.gateway)
        return MqttBus(mqtt.conn, gateway.prefix, gateway.name, td=b.td, tb=b.tb)
    if b.kind == "tcp":
        return TcpBus(b.host, b.port, line_baud=b.line_baud, td=b.td, tb=b.tb)
    return SerialBus(b.device, baud=b.baud, bytesize=b.bytesize, parity=b.parity,
                     stopbits=b.stopbits, td=b.td, tb=b.tb)


def make_station(li: ListenerSettings, known: Callable[[TerminalId], bool],
                 on_event: Callable[[TerminalEvent], None]) -> MasterStation:
    """The master station a ``[[listener]]`` describes (not started)."""
    host, port = parse_listen(li.listen)
    context = None
    if li.tls_cert_file is not None and li.tls_key_file is not None:
        context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        context.load_cert_chain(li.tls_cert_file, li.tls_key_file)
    return MasterStation(host, port, terminals=known, login_reply=ConfirmStyle[li.login_reply],
                         idle_timeout=li.idle_timeout, request_timeout=li.request_timeout,
                         ssl=context, on_event=on_event)


def make_dialin(li: ListenerSettings, known: Callable[[str], bool],
                on_event: Callable[[DtuEvent], None]) -> DialInListener:
    """The DTU listener a ``[[listener]]`` with a dtu-* protocol describes (not started)."""
    host, port = parse_listen(li.listen)
    beat = li.heartbeat
    if li.registration == "regex" and li.registration_regex is not None:
        fmt = RegistrationFormat.regex(li.registration_regex.encode(),
                                       re.escape(beat) if beat else None)
    else:
        fmt = RegistrationFormat.ascii(li.registration_length, heartbeat=beat)
    context = None
    if li.tls_cert_file is not None and li.tls_key_file is not None:
        context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        context.load_cert_chain(li.tls_cert_file, li.tls_key_file)
    return DialInListener(host, port, registration=fmt, known=known,
                          idle_timeout=li.idle_timeout, ssl=context, on_event=on_event)


LineSettings = BusSettings | ConcentratorSettings | DtuSettings  # what a bus worker serves


@dataclass
class _BusEntry:
    settings: LineSettings
    worker: BusWorker


@dataclass
class _ScheduleRun:
    """A running schedule; ``stop`` set: it returns after the cycle in progress."""

    settings: ScheduleSettings
    meters: list[MeterSettings]
    task: asyncio.Task[None]
    stop: asyncio.Event

    @property
    def buses(self) -> set[str]:
        return {m.bus for m in self.meters}


# Applied by a reload only after a restart: section -> the fields that matter.
RESTART_SECTIONS = ("collector", "mqtt", "commands", "prepaid", "api")


def restart_needed(old: Settings, new: Settings) -> list[str]:
    """``[section] key`` of each change a reload cannot apply (they need a restart)."""
    out: list[str] = []
    for section in RESTART_SECTIONS:
        a, b = getattr(old, section), getattr(new, section)
        if section == "collector":  # metrics_listen is rebound by a reload
            a = dataclasses.replace(a, metrics_listen=None)
            b = dataclasses.replace(b, metrics_listen=None)
        if a == b:
            continue
        if a is None or b is None:
            out.append(f"[{section}]")
            continue
        keys = [f.name for f in dataclasses.fields(a) if getattr(a, f.name) != getattr(b, f.name)]
        out.append(f"[{section}] {', '.join(keys)}")
    changed = {li.name for li in old.listeners} & {li.name for li in new.listeners}
    for name in sorted(changed):  # a listener's port stays bound: new ones start
        a = next(li for li in old.listeners if li.name == name)
        b = next(li for li in new.listeners if li.name == name)
        if a != b:
            out.append(f"[[listener]] {name}")
    if new.prepaid is not None and old.prepaid == new.prepaid and (
            {m for m in old.meters if m.prepaid} != {m for m in new.meters if m.prepaid}):
        out.append("[[meter]] prepaid meters (the prepaid engine's accounts)")
    return out


# Garbage collection for a long-running daemon.  Its old objects (configuration, and the
# per-meter state its first cycle makes) live as long as it does: frozen out of the
# collector's reach, full collections stop walking them.  The first generation is made
# big (700 by default) because a read in flight on each of up to thousands of buses is
# alive at every small collection: it got promoted and walked again by each older one
# only to die there.  50,000 young objects are a few MB; the older generations keep
# their ratios so cyclic garbage is still found.
GC_THRESHOLDS = (50_000, 20, 10)


MIRROR_BUSES_PER_ROUND = 100  # buses whose counters the metrics mirror every 2 s


def mirror_round(names: list[str], start: int, n: int = MIRROR_BUSES_PER_ROUND
                 ) -> tuple[list[str], int]:
    """The buses to mirror this round (``n`` of them from ``start``, wrapping) and where
    the next round starts: every bus once in ``ceil(len(names) / n)`` rounds."""
    if len(names) <= n:
        return names, 0
    start %= len(names)
    return (names[start:] + names[:start])[:n], start + n


def settle_heap(full: bool = False) -> int:
    """Freeze what is alive (out of later collections) and set :data:`GC_THRESHOLDS`;
    returns the number of objects frozen.  ``full`` collects every generation first:
    at start, before any poll is in flight.  Later only the young generations are: a
    full collection pauses as long as the heap is big, and a reply's timeout can run
    out during it (frozen objects are still freed once unreferenced; only cyclic
    garbage among them waits for the stop)."""
    gc.collect(2 if full else 1)
    gc.freeze()
    gc.set_threshold(*GC_THRESHOLDS)
    return gc.get_freeze_count()


class Daemon:
    """Owns the buses, the poller, the store writer and the service protocol."""

    def __init__(self, settings: Settings, *, notifier: Notifier | None = None,
                 metrics: Metrics | None = None, align: bool = True) -> None:
        self.settings = settings
        self.notifier = notifier or Notifier.from_env()
        self.metrics = metrics or Metrics()
        self.align = align
        self.buses: dict[str, _BusEntry] = {}
        self.stations: dict[str, MasterStation] = {}  # by [[listener]] name
        self.dialins: dict[str, DialInListener] = {}  # DTU listeners, by name
        self.health: dict[str, MeterHealth] = {}
        self.bus_health: dict[str, BusHealth] = {}  # kept across reloads, like health
        self.poller: Poller | None = None
        self.runs: list[_ScheduleRun] = []
        self.store: Store | None = None
        self.writer: StoreWriter | None = None
        self.stop_requested = asyncio.Event()
        self.mqtt: MqttLink | None = None
        self.forwarder: Forwarder | None = None
        self.notifications: Notifications | None = None  # [notify]
        self.reloads = 0
        self.reload_failures = 0
        self.readings_seen = 0
        self._last_progress = 0.0
        self._waiting_for_room = 0
        self._gc_before: tuple[int, int, int] | None = None  # thresholds before settle_heap
        self._settle_after_cycle = True  # the first cycle makes the per-meter state
        self.alarms: AlarmEngine | None = AlarmEngine(
            AlarmSettings(**dict(settings.alarms.values)))  # type: ignore[arg-type]
        self._meter_bus = {m.meter_id: m.bus for m in settings.meters}
        self._by_name: tuple[Settings, dict[str, ConcentratorSettings]] | None = None
        self.control: Control | None = None
        self.ctl: CtlServer | None = None
        self.daily: DailyJobs | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._tasks: list[asyncio.Task[None]] = []
        self.metrics_server: MetricsServer | None = None
        self.api: ApiServer | None = None  # [api]: the HTTP API
        self._reloading = asyncio.Lock()  # one reload at a time, in signal order
        # concentrator name -> (next event pointer to read, keys of the records stored)
        self._terminal_records: dict[str, tuple[int | None, set[tuple[object, ...]]]] = {}
        # What Control, MqttLink, DailyJobs and the control socket see of the daemon.
        self.context = DaemonContext(
            settings=lambda: self.settings,
            workers=lambda: {n: e.worker for n, e in self.buses.items()},
            profile=self._profile, on_readings=self._on_readings,
            store_readings=self._store_readings, on_event=self._on_event,
            store=lambda: self.store, writer=lambda: self.writer)

    # ---- sinks -------------------------------------------------------------------------

    def _on_readings(self, rows: list[Reading]) -> None:
        assert self.writer is not None
        self.readings_seen += len(rows)
        self.writer.put_many(rows)
        # One meter per poll, several from a gateway report: the rules go meter by meter.
        by_meter: dict[str, list[Reading]] = {}
        for r in rows:
            by_meter.setdefault(r.meter, []).append(r)
        expected = self.control.relay.expected_open if self.control is not None else {}
        for meter, readings in by_meter.items():
            if self.control is not None:
                self.control.observe(meter, readings)
            if self.alarms is not None:
                for event in self.alarms.observe(meter, readings,
                                                 bus=self._meter_bus.get(meter),
                                                 expected_relay_open=expected.get(meter)):
                    self._on_event(event)

    def _store_readings(self, rows: list[Reading]) -> None:
        """On-demand reads: stored and counted, no rules (dropped before the store)."""
        if self.writer is not None:
            self.readings_seen += len(rows)
            self.writer.put_many(rows)

    def _on_event(self, event: Event) -> None:
        assert self.writer is not None
        log.log(logging.WARNING if event.severity >= 1 else logging.INFO,  # alarms: WARNING
                "event %s meter=%s bus=%s %s", event.kind, event.meter or "-",
                event.bus or "-", event.detail)
        self.writer.put_event(event)
        if self.mqtt is not None and self.settings.alarms.publish:
            self.mqtt.publish_event(event)

    def _on_event_threadsafe(self, event: Event) -> None:
        """An event from another thread (the forwarder's)."""
        if self._loop is not None:
            self._loop.call_soon_threadsafe(self._on_event, event)

    def _on_cycle(self, cycle: CycleRecord) -> None:
        assert self.writer is not None
        self.writer.put_cycle(cycle)
        took = (cycle.ended - cycle.started).total_seconds() if cycle.ended else 0.0
        if cycle.cut:
            # Not a completed cycle: the success gauges and durations stay as they were.
            log.info("cycle %s cut: %d/%d meters tried, %d read, in %.1f s", cycle.schedule,
                     cycle.succeeded + cycle.failed, cycle.planned, cycle.succeeded, took)
            return
        log.info("cycle %s done: %d/%d meters read (%.1f%%) in %.1f s", cycle.schedule,
                 cycle.succeeded, cycle.planned, 100 * cycle.success_rate, took)
        if self._settle_after_cycle:
            self._settle_after_cycle = False
            self._settle_heap("first cycle")
        self.metrics.observe_cycle(cycle.schedule, took)
        interval = next((s.interval for s in self.settings.schedules
                         if s.name == cycle.schedule), None)
        if interval is not None and took > interval:
            self._on_event(Event("schedule_overdue", utcnow(), severity=1,
                                 value=round(took - interval, 1),
                                 detail=f"schedule {cycle.schedule}: cycle took {took:.0f} s, "
                                        f"longer than its {interval:g} s window; "
                                        f"{cycle.planned - cycle.succeeded} meters not read"))
        for area, (ok, total) in cycle.per_area.items():
            self.metrics.set_area_success(area, ok / total if total else 0.0)
        for bus, (ok, total) in cycle.per_bus.items():
            self.metrics.set_bus_success(bus, ok / total if total else 0.0)
        self._report_status()

    async def _room(self) -> None:
        assert self.writer is not None
        if self.writer.backlogged:
            if not self._waiting_for_room:
                log.warning("store backlog at %d rows: polling waits for the store",
                            self.writer.pending)
            self._waiting_for_room += 1
            try:
                await self.writer.wait_for_room()
            finally:
                self._waiting_for_room -= 1

    def _on_store_alert(self, event: Event) -> None:
        """From the store writer (disk full, room again, disk low); it stores the event."""
        level = logging.ERROR if event.severity >= 2 else logging.WARNING
        log.log(level, "event %s %s", event.kind, event.detail)
        if event.kind == "store_full":
            self.metrics.set_store_full(True)
            self.notifier.status(f"STORE FULL: {event.detail}")
        elif event.kind == "store_recovered":
            self.metrics.set_store_full(False)
            self._report_status()

    def _on_commit(self, info: CommitInfo) -> None:
        """From the store writer's thread (prometheus_client counters are thread-safe)."""
        self.metrics.add_readings_committed(info.readings)

    def _on_progress(self, cycle: CycleRecord) -> None:
        now = time.monotonic()
        if now - self._last_progress >= 1.0:
            self._last_progress = now
            self._report_status()

    def status_text(self) -> str:
        parts = []
        if self.poller is not None:
            for name, c in sorted(self.poller.current.items()):
                parts.append(f"{name}: {c.succeeded + c.failed}/{c.planned} meters, "
                             f"{c.failed} failed")
            if not parts:
                for name, c in sorted(self.poller.last_cycle.items()):
                    parts.append(f"{name}: last cycle {100 * c.success_rate:.1f}% "
                                 f"of {c.planned}")
        return "; ".join(parts) or "idle"

    def _report_status(self) -> None:
        self.notifier.status(self.status_text())

    def _observe(self, bus: str, seconds: float, outcome: str) -> None:
        self.metrics.observe_job(bus, seconds, outcome)

    def _settle_heap(self, why: str, *, full: bool = False) -> None:
        if self._gc_before is None:
            self._gc_before = gc.get_threshold()
        t0 = time.monotonic()
        frozen = settle_heap(full)
        log.info("heap settled (%s): %d objects frozen in %.2f s", why, frozen,
                 time.monotonic() - t0)

    def _release_heap(self) -> None:
        """At stop: the frozen objects can be collected again, the thresholds restored."""
        gc.unfreeze()
        if self._gc_before is not None:
            gc.set_threshold(*self._gc_before)
            self._gc_before = None

    # ---- applying a configuration ------------------------------------------------------

    async def _start_bus(self, b: LineSettings) -> _BusEntry:
        if isinstance(b, ConcentratorSettings):
            return await self._start_concentrator(b)
        if isinstance(b, DtuSettings):
            return await self._start_dtu(b)
        worker = BusWorker(b.name, make_bus(b, self.mqtt), preamble=b.preamble,
                           modbus=b.modbus, observe=self._observe, profiles=self._profile)
        if not await worker.start():
            log.warning("bus %s: %s not reachable yet; will retry", b.name, worker.bus.name)
        return _BusEntry(b, worker)

    async def _start_concentrator(self, c: ConcentratorSettings) -> _BusEntry:
        """A worker whose line reaches the meters behind ``c`` through its listener's
        master station (schedules, lanes, health and events apply as to a bus)."""
        line = concentrator_line(await self._station(c.listener), TerminalId(c.a1, c.a2),
                                 group=c.group)
        worker = BusWorker(c.name, line.bus, observe=self._observe, profiles=self._profile)
        worker.line = line
        worker.refused = line.refused
        await worker.start()
        return _BusEntry(c, worker)

    async def _station(self, name: str) -> MasterStation:
        """The started master station of the ``[[listener]]`` ``name`` (started on first
        use; a changed listener needs a restart)."""
        station = self.stations.get(name)
        if station is None:
            li = next(x for x in self.settings.listeners if x.name == name)
            station = make_station(li, lambda tid: self._concentrator_of(name, tid) is not None,
                                   lambda ev: self._on_terminal(name, ev))
            await station.start()
            self.stations[name] = station
            log.info("listener %s: waiting for concentrators on port %d", name, station.port)
        return station

    def _concentrator_of(self, listener: str, tid: TerminalId) -> str | None:
        for c in self.settings.concentrators:
            if c.listener == listener and (c.a1, c.a2) == (tid.a1, tid.a2):
                return c.name
        return None

    # ---- the fleet: several collectors, one set of concentrators (see fleet.py) ---------

    def _fleet_hooks(self) -> FleetHooks:
        def concentrator(key: str) -> ConcentratorSettings | None:
            return next((c for c in self.settings.concentrators
                         if terminal_key(c.a1, c.a2) == key), None)

        def terminal_of(meter_id: str) -> Terminal | None:
            c = self._concentrators().get(self._meter_bus.get(meter_id) or "")
            return Terminal(terminal_key(c.a1, c.a2), c.name) if c is not None else None

        def session(key: str) -> TerminalSession | None:
            c = concentrator(key)
            station = self.stations.get(c.listener) if c is not None else None
            if c is None or station is None:
                return None
            s = station.terminal(TerminalId(c.a1, c.a2))
            return s if s is not None and not s.closed else None

        def session_since(key: str) -> dt.datetime | None:
            s = session(key)
            return s.logged_in if s is not None else None

        def drop(key: str, reason: str) -> None:
            c = concentrator(key)
            station = self.stations.get(c.listener) if c is not None else None
            if c is not None and station is not None:
                station.drop(TerminalId(c.a1, c.a2), reason)

        def runs_bus(meter_id: str) -> bool:
            bus = self._meter_bus.get(meter_id)
            return bus is not None and bus in self.buses

        return FleetHooks(terminal_of=terminal_of, session_since=session_since, drop=drop,
                          runs_bus=runs_bus, known_meter=lambda m: m in self._meter_bus)

    def _curve_last(self, meter: str, quantities: tuple[str, ...]) -> dt.datetime | None:
        """The newest curve point stored for ``meter``: a restart resumes after it."""
        return last_curve_point(self.store, meter, quantities) if self.store else None

    def _elsewhere(self, bus: str) -> bool:
        """A concentrator whose session another collector of the fleet holds: its meters
        are polled there."""
        fleet = self.mqtt.fleet if self.mqtt is not None else None
        if fleet is None:
            return False
        c = self._concentrators().get(bus)
        return c is not None and fleet.elsewhere(terminal_key(c.a1, c.a2))

    def _concentrators(self) -> dict[str, ConcentratorSettings]:
        """The configured concentrators by name (cached per configuration)."""
        cached = self._by_name
        if cached is None or cached[0] is not self.settings:
            cached = (self.settings, {c.name: c for c in self.settings.concentrators})
            self._by_name = cached
        return cached[1]

    def _on_terminal(self, listener: str, ev: TerminalEvent) -> None:
        name = self._concentrator_of(listener, ev.terminal) or str(ev.terminal)
        if self.stop_requested.is_set():
            return  # the stop closes every link: no event for each concentrator
        fleet = self.mqtt.fleet if self.mqtt is not None else None
        if fleet is not None and ev.kind in ("online", "replaced", "offline"):
            key = terminal_key(ev.terminal.a1, ev.terminal.a2)
            session = self.stations[listener].terminal(ev.terminal)
            if ev.kind == "offline":
                fleet.offline(key)
            elif session is not None:
                fleet.online(key, name, session.logged_in)
        if ev.kind in ("online", "offline"):
            kind = f"concentrator_{ev.kind}"
            log.log(logging.WARNING if ev.kind == "offline" else logging.INFO,
                    "concentrator %s (%s) %s%s", name, ev.terminal, ev.kind,
                    f": {ev.reason}" if ev.reason else "")
            self._on_event(Event(kind, utcnow(), bus=name, severity=severity(kind),
                                 detail=f"{ev.terminal} {ev.reason}".strip()))
        elif ev.kind == "replaced":
            log.warning("concentrator %s (%s): a new connection replaced the old one%s", name,
                        ev.terminal, f" ({ev.reason})" if ev.reason else "")
        elif ev.kind == "report":
            for batch in terminal_records(ev.units):
                self._store_records(name, batch)
        elif ev.kind == "events" and ev.ec is not None:
            self._read_records(name, ev.ec)
        else:
            log.debug("concentrator %s (%s): %s", name, ev.terminal, ev.kind)

    # ---- a concentrator's own event records (AFN0E): reported or read ------------------

    def _records_state(self, name: str) -> tuple[int | None, set[tuple[object, ...]]]:
        """The next pointer to read and the records already stored (first: from the
        store, so a restart does not store them again)."""
        state = self._terminal_records.get(name)
        if state is None:
            seen: set[tuple[object, ...]] = set()
            if self.store is not None:
                for kind in TERMINAL_EVENT_KINDS.values():
                    for e in self.store.events(kind=kind, limit=512):
                        if e.bus == name and e.detail.startswith("EC "):
                            seen.add((e.kind, e.detail.split(":", 1)[0], e.ts))
            state = self._terminal_records[name] = (None, seen)
        return state

    def _store_records(self, name: str, batch: RecordBatch) -> None:
        """Each record as an event (kind ``concentrator_ercN``, the terminal's own time),
        once: keyed by its EC pointer and time."""
        _, seen = self._records_state(name)
        tz = zone(self.settings.daily.tz if self.settings.daily is not None else DEFAULT_TZ)
        for r in batch.records:
            kind = TERMINAL_EVENT_KINDS.get(r.code, f"concentrator_erc{r.code}")
            ts = (r.time.replace(tzinfo=tz).astimezone(dt.UTC) if r.time is not None
                  else utcnow()).replace(microsecond=0)
            tag = f"EC {r.pointer}"
            if (kind, tag, ts) in seen:
                continue
            seen.add((kind, tag, ts))
            self._on_event(Event(kind, ts, bus=name, severity=TERMINAL_EVENT_SEVERITY.get(
                r.code, 1), value=float(r.code), detail=f"{tag}: {name}: {r.detail}"))
        self._terminal_records[name] = (batch.end, seen)

    def _read_records(self, name: str, ec: int, tries: int = 30) -> None:
        """The terminal says it holds records up to ``ec``: read those not yet read
        (all it keeps, the first time) on its worker, behind commands."""
        entry = self.buses.get(name)
        link = entry.worker.line.terminal if entry is not None else None
        if entry is None or not isinstance(link, TerminalLink):
            if tries and not self.stop_requested.is_set():
                # a login while the daemon starts comes before the concentrator's worker
                asyncio.get_running_loop().call_later(1.0, self._read_records, name, ec,
                                                      tries - 1)
            return
        start = self._records_state(name)[0]
        if start is None:
            start = (ec + 1) % 256  # the ring's oldest possible record
        if start == ec:
            return
        worker = entry.worker

        async def read(_: BusWorker) -> RecordBatch:
            begin = self._records_state(name)[0]  # a report may have come meanwhile
            first = begin if begin is not None else start
            if first == ec:
                return RecordBatch(ec, ec)
            return await link.read_records(first, ec)

        def done(fut: asyncio.Future[RecordBatch]) -> None:
            if fut.cancelled():
                return
            if fut.exception() is not None:
                log.info("concentrator %s: event records not read: %s", name,
                         fut.exception())
                return
            self._store_records(name, fut.result())

        worker.submit(Lane.ON_DEMAND, read).add_done_callback(done)

    def _start_run(self, s: ScheduleSettings, meters: list[MeterSettings], *,
                   immediate: bool) -> None:
        assert self.poller is not None
        stop = asyncio.Event()
        task = asyncio.create_task(
            self.poller.run_schedule(s, meters, align=self.align, immediate=immediate,
                                     stop=stop), name=f"schedule:{s.name}")
        self.runs.append(_ScheduleRun(s, meters, task, stop))

    async def _unless_stopping(self, aw: Awaitable[Any]) -> bool:
        """Await ``aw``; False (and ``aw`` cancelled) if a stop is requested first."""
        job = asyncio.ensure_future(aw)
        stop = asyncio.ensure_future(self.stop_requested.wait())
        try:
            await asyncio.wait([job, stop], return_when=asyncio.FIRST_COMPLETED)
        finally:
            stop.cancel()
        if job.done():
            return True
        job.cancel()
        return False

    async def _apply(self, settings: Settings, *, first: bool) -> bool:
        """Apply the buses, meters and schedules of ``settings``.

        Nothing in progress is cut: a schedule that did not change (nor its meters or
        their buses) keeps running; the others finish the cycle in progress on their
        old settings, then the new ones start; a bus whose settings changed (or that
        was removed) is replaced only once no cycle and no daily job uses it.  Returns
        False if a stop came before all of it was done.
        """
        old = self.buses
        self.settings = settings  # before any bus starts: mqtt buses find their gateway
        keep: dict[str, _BusEntry] = {}
        replaced: list[LineSettings] = []
        lines: list[LineSettings] = [*settings.buses, *settings.concentrators, *settings.dtus]
        for li in settings.listeners:  # before the buses: concentrators dial in to them
            await (self._dialin(li.name) if li.dtu else self._station(li.name))
        for b in lines:
            entry = old.get(b.name)
            if entry is not None and entry.settings == b:
                entry.worker.refused.clear()  # a reload asks refused quantities again
                keep[b.name] = entry
            elif entry is not None:
                replaced.append(b)
            else:
                keep[b.name] = await self._start_bus(b)
        removed = [n for n in old if n not in {b.name for b in lines}]
        changed = {b.name for b in replaced} | set(removed)
        # Old workers stay reachable (commands, daily jobs) until they are replaced.
        self.buses = {**{n: old[n] for n in changed}, **keep}
        self._meter_bus = {m.meter_id: m.bus for m in settings.meters}
        if self.mqtt is not None and self.mqtt.ingestor is not None:
            await self.mqtt.apply(settings)
        if self.poller is None:
            self.poller = Poller({}, Sinks(self._on_readings, self._on_event, self._on_cycle,
                                           self._on_progress, room=self._room,
                                           curve_last=self._curve_last,
                                           curve=self._store_readings),
                                 health=self.health, profiles=self._profile,
                                 bus_health=self.bus_health, elsewhere=self._elsewhere)
        poller = self.poller
        # No new cycle reaches a bus that is being replaced (running ones keep theirs).
        poller.workers = {n: e.worker for n, e in keep.items()}
        poller.dead_after = settings.alarms.comm_loss_after
        wanted = [(s, select_meters(settings, s)) for s in settings.schedules]
        retired: list[_ScheduleRun] = []
        kept: set[str] = set()
        for run in self.runs:
            if ((run.settings, run.meters) in wanted and not run.buses & changed
                    and not run.task.done()):
                kept.add(run.settings.name)
            else:
                run.stop.set()
                retired.append(run)
        busy = {r.settings.name for r in retired if not r.task.done()}
        later: list[tuple[ScheduleSettings, list[MeterSettings]]] = []
        for s, meters in wanted:
            if s.name in kept:
                continue
            if s.name in busy or {m.bus for m in meters} & changed:
                later.append((s, meters))
            else:
                self._start_run(s, meters, immediate=first)
        names = {s.name for s in settings.schedules}
        for name in [n for n in poller.last_cycle if n not in names]:
            del poller.last_cycle[name]
        assert self.store is not None
        self.store.sync_meters(list(settings.meters))
        waiting = [r.task for r in retired if not r.task.done()]
        if waiting:
            log.info("reload: %d cycle(s) in progress finish on the previous configuration "
                     "first", len(busy))
        if waiting or changed:
            # The new configuration is accepted: systemd's reload timeout must not run
            # out while a long (daily) cycle or job finishes.
            self.notifier.ready()
        if waiting and not await self._unless_stopping(asyncio.wait(waiting)):
            return False
        self.runs = [r for r in self.runs if not r.task.done()]
        if changed:
            lock = self.daily.lock if self.daily is not None else asyncio.Lock()
            if not await self._unless_stopping(lock.acquire()):
                return False
            try:  # a daily job in progress has ended; the next waits for the new buses
                await asyncio.gather(*(old[n].worker.stop(DRAIN_SECONDS) for n in changed))
                for n in removed:
                    del self.buses[n]
                    self.metrics.forget_bus(n)
                for b in replaced:
                    self.buses[b.name] = await self._start_bus(b)
            finally:
                lock.release()
            poller.workers = {n: e.worker for n, e in self.buses.items()}
        for s, meters in later:
            self._start_run(s, meters, immediate=first)
        self._hang_up_dtus()  # after their workers stopped: no job of theirs is cut
        return True

    @property
    def schedule_tasks(self) -> list[asyncio.Task[None]]:
        return [r.task for r in self.runs]

    def _profile(self, name: str) -> Profile:
        # Validated when the configuration was loaded; found the same way here.
        return load_profile(name, search=[self.settings.source.absolute().parent])

    async def _stop_schedules(self) -> None:
        """Cancel every schedule: a cycle in progress ends cut (shutdown)."""
        tasks = [r.task for r in self.runs]
        self.runs = []
        for t in tasks:
            t.cancel()
        for t in tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await t

    async def reload(self) -> bool:
        """Re-read the configuration file; apply it only if it is entirely valid.

        Buses, meters, schedules (see :meth:`_apply`: nothing in progress is cut),
        gateways, ``[alarms]``, ``[daily]`` (re-created once a job in progress ends),
        ``[timeseries]`` (the forwarder restarts on its cursor) and ``metrics_listen``
        (rebound) are applied; a change to ``[collector]`` (other keys), ``[mqtt]``,
        ``[commands]`` or ``[prepaid]`` is logged as needing a restart.
        """
        if not await self._unless_stopping(self._reloading.acquire()):
            return False
        try:
            return await self._reload()
        finally:
            self._reloading.release()

    async def _reload(self) -> bool:
        path = self.settings.source
        log.info("reload requested: %s", path)
        try:
            settings = load_settings(path)
        except ConfigError as e:
            self.reload_failures += 1
            for p in e.problems:
                log.error("reload rejected: %s", p)
            log.error("reload rejected: %d problem(s); still running on the previous "
                      "configuration", len(e.problems))
            self.metrics.observe_reload(False)
            return False
        except OSError as e:
            self.reload_failures += 1
            log.error("reload rejected: cannot read %s: %s", path, e)
            return False
        old = self.settings
        self.notifier.reloading()
        try:
            done = await self._apply(settings, first=False)
            if done:
                done = await self._apply_sections(old, settings)
        finally:
            self.notifier.ready()  # systemd must not wait for a reload that failed
        if not done:
            log.warning("reload not finished: the collector is stopping")
            return False
        self.reloads += 1
        self.metrics.observe_reload(True)
        self._settle_heap("reload")
        self._settle_after_cycle = True  # meters the reload added get their state then
        summary = (f"{len(settings.buses)} buses, {len(settings.meters)} meters, "
                   f"{len(settings.schedules)} schedules")
        pending = restart_needed(old, settings)
        for change in pending:
            log.warning("reload: %s changed; it takes effect only after a restart", change)
        if pending:
            log.warning("reload partly applied: %s; restart needed for %s", summary,
                        "; ".join(pending))
        else:
            log.info("reload applied: %s", summary)
        self._report_status()
        return True

    async def _apply_sections(self, old: Settings, new: Settings) -> bool:
        """``[alarms]``, ``metrics_listen``, ``[timeseries]``, ``[notify]``, ``[daily]`` of a
        reload."""
        if self.alarms is not None and old.alarms.values != new.alarms.values:
            self.alarms.settings = AlarmSettings(**dict(new.alarms.values))  # type: ignore[arg-type]
        if old.collector.metrics_listen != new.collector.metrics_listen:
            if self.metrics_server is not None:
                self.metrics_server.close()
                self.metrics_server = None
            self._serve_metrics()
        if old.timeseries != new.timeseries:
            if not await self._stop_forwarder():
                return False
            self._start_forwarder()
            log.info("reload: [timeseries] applied (forwarder restarted on its cursor)")
        elif self.forwarder is not None and old.meters != new.meters:
            self.forwarder.set_meters(new.meters)
        if old.notify != new.notify:
            await self._reload_notify(new)
        if old.daily != new.daily:
            if self.daily is not None:
                jobs = self.daily
                if not await self._unless_stopping(jobs.lock.acquire()):
                    return False
                try:  # between ticks: nothing of the old jobs is cut
                    for t in [t for t in self._tasks if t.get_name() == "daily"]:
                        t.cancel()
                        with contextlib.suppress(asyncio.CancelledError):
                            await t
                        self._tasks.remove(t)
                    self.daily = None
                finally:
                    jobs.lock.release()
            self._start_daily()
            log.info("reload: [daily] applied")
        return True

    def _serve_metrics(self) -> None:
        listen = self.settings.collector.metrics_listen
        if not listen:
            return
        try:
            self.metrics_server = self.metrics.start_server(listen)
        except (OSError, ValueError) as e:
            log.error("metrics_listen %s: cannot serve /metrics: %s", listen, e)

    def _start_daily(self) -> None:
        if self.settings.daily is not None:
            self.daily = DailyJobs(self.context, self.settings.daily)
            self._tasks.append(asyncio.create_task(self.daily.run(), name="daily"))

    def _start_forwarder(self) -> None:
        ts = self.settings.timeseries
        assert self.store is not None
        if ts is None:
            return
        self.forwarder = Forwarder(self.store, ts.url, org=ts.org, bucket=ts.bucket,
                                   token=ts.token, name=FORWARDER, batch=ts.batch,
                                   precision=ts.precision, gzip=ts.gzip,
                                   gzip_level=ts.gzip_level,
                                   process_backlog=ts.worker_backlog,
                                   meters=self.settings.meters,
                                   on_event=self._on_event_threadsafe,
                                   collector=self.settings.collector.id)
        self._tasks.append(asyncio.create_task(self.forwarder.run(), name="forwarder"))

    def _start_notify(self) -> None:
        """Notifications read the events once stored (see collector/notify)."""
        if self.settings.notify is None or self.store is None:
            return
        by_id: dict[str, tuple[Settings, dict[str, MeterSettings]]] = {}

        def meters() -> dict[str, MeterSettings]:  # the ledger as now, indexed once
            s = self.settings
            if "m" not in by_id or by_id["m"][0] is not s:
                by_id["m"] = (s, {m.meter_id: m for m in s.meters})
            return by_id["m"][1]

        self.notifications = Notifications(self.settings.notify, self.store, meters)
        self.notifications.start()

    async def _reload_notify(self, new: Settings) -> None:
        if self.notifications is not None and new.notify is not None:
            await self.notifications.reload(new.notify)
        elif self.notifications is not None:  # [notify] removed: the outbox keeps the rest
            await self.notifications.stop()
            self.notifications = None
        else:
            self._start_notify()
        log.info("reload: [notify] applied")

    async def _stop_forwarder(self) -> bool:
        """Stop the forwarder after its batch in flight; its cursor stays in the store.

        False if a stop comes first (shutdown then waits for it as usual)."""
        if self.forwarder is not None:
            self.forwarder.stop()
        for t in [t for t in self._tasks if t.get_name() == "forwarder"]:
            if not await self._unless_stopping(asyncio.wait([t])):
                return False
            self._tasks.remove(t)
            if not t.cancelled() and t.exception() is not None:
                log.warning("forwarder ended with %r", t.exception())
        self.forwarder = None
        return True

    # ---- dial-in DTUs ------------------------------------------------------------------

    async def _start_dtu(self, d: DtuSettings) -> _BusEntry:
        """A worker on the line behind DTU ``d``: its registered connection to the DTU
        listener (schedules, lanes, health and events apply as to a bus)."""
        listener = await self._dialin(d.listener)
        li = next(x for x in self.settings.listeners if x.name == d.listener)
        # connecting waits briefly for the DTU: a read fails fast while it is offline
        bus = DialInBus(listener, d.id, td=li.request_timeout, connect_timeout=2.0,
                        reconnect_min=0.0)
        worker = BusWorker(d.name, bus, observe=self._observe, profiles=self._profile)
        await worker.start()
        return _BusEntry(d, worker)

    async def _dialin(self, name: str) -> DialInListener:
        """The started DTU listener of the ``[[listener]]`` ``name`` (started on first use;
        a changed listener needs a restart, a DTU added by a reload is known at once)."""
        listener = self.dialins.get(name)
        if listener is None:
            li = next(x for x in self.settings.listeners if x.name == name)
            listener = make_dialin(li, lambda dtu: self._dtu_of(name, dtu) is not None,
                                   lambda ev: self._on_dtu(name, ev))
            await listener.start()
            self.dialins[name] = listener
            log.info("listener %s: waiting for DTUs (%s) on port %d", name, li.protocol,
                     listener.port)
        return listener

    def _dtu_of(self, listener: str, dtu_id: str) -> str | None:
        for d in self.settings.dtus:
            if d.listener == listener and d.id == dtu_id:
                return d.name
        return None

    def _hang_up_dtus(self) -> None:
        """Close the connections of DTUs a reload took out of the configuration."""
        for name, listener in self.dialins.items():
            for dtu in listener.online():
                if self._dtu_of(name, dtu) is None:
                    listener.hang_up(dtu, "no longer configured")

    def _on_dtu(self, listener: str, ev: DtuEvent) -> None:
        if self.stop_requested.is_set():
            return  # the stop closes every link: no event for each DTU
        name = self._dtu_of(listener, ev.dtu)
        if name is None:  # taken out by a reload: its events went with it
            log.info("DTU %s (no longer configured): %s %s", ev.dtu, ev.kind, ev.reason)
        elif ev.kind in ("online", "offline"):
            kind = f"dtu_{ev.kind}"
            log.log(logging.WARNING if ev.kind == "offline" else logging.INFO,
                    "DTU %s (%s) %s%s", name, ev.dtu, ev.kind,
                    f": {ev.reason}" if ev.reason else "")
            self._on_event(Event(kind, utcnow(), bus=name, severity=severity(kind),
                                 detail=f"{ev.dtu}: {ev.reason}" if ev.reason else ev.dtu))
        else:  # replaced: the DTU stays online on its new connection
            log.warning("DTU %s (%s): %s", name, ev.dtu, ev.reason)

    async def _close_dialins(self) -> None:
        for listener in self.dialins.values():
            with contextlib.suppress(Exception):
                await listener.close()

    # ---- the HTTP API ([api], collector/api) --------------------------------------------

    def _api_context(self) -> ApiContext:
        from collector.api.context import ApiContext

        def buses() -> dict[str, dict[str, Any]]:
            out: dict[str, dict[str, Any]] = {}
            for name, e in self.buses.items():
                h = self.bus_health.get(name)
                out[name] = {"kind": type(e.settings).__name__.removesuffix("Settings")
                             .lower(), "alive": e.worker.alive,
                             "down": bool(h and h.down), "reason": h.reason if h else ""}
            return out

        return ApiContext(
            settings=lambda: self.settings, store=lambda: self.store,
            writer=lambda: self.writer, control=lambda: self.control, reload=self.reload,
            buses=buses, on_event=self._on_event,
            cycles=lambda: list(self.poller.current.values()) if self.poller else [])

    async def _start_api(self) -> None:
        if self.settings.api is None:
            return
        from collector.api.server import ApiServer
        host, port = parse_listen(self.settings.api.listen)
        self.api = ApiServer(self._api_context(), host, port)
        await self.api.start()

    async def _stop_api(self) -> None:
        if self.api is not None:
            await self.api.close()
            self.api = None

    # ---- running -----------------------------------------------------------------------

    def listener_status(self) -> dict[str, tuple[MasterStation, dict[str, bool]]]:
        """Per ``[[listener]]`` started: its master station and, for each of its
        concentrators (by name), whether it is logged in now (for /metrics)."""
        out: dict[str, tuple[MasterStation, dict[str, bool]]] = {}
        for name, station in self.stations.items():
            online = set(station.online())
            out[name] = (station, {c.name: TerminalId(c.a1, c.a2) in online
                                   for c in self.settings.concentrators
                                   if c.listener == name})
        return out

    def healthy(self) -> bool:
        """For the watchdog: the event loop runs and every bus worker is alive."""
        return all(e.worker.alive for e in self.buses.values())

    async def _housekeeping(self) -> None:
        start = 0
        while True:
            await asyncio.sleep(2.0)
            # A slice of the buses a round: the mirror's cost per second stays the same
            # however many buses there are (at 1,000 buses each is mirrored every 20 s;
            # mirroring all every round cost ~4 % of the CPU per read at 100k meters).
            names, start = mirror_round(list(self.buses), start)
            for name in names:  # no await in this loop: every name is still a bus
                w = self.buses[name].worker
                self.metrics.set_bus_counters(name, w.bus)
                for lane in Lane:
                    self.metrics.set_queue_depth(name, lane.name.lower(), w.queue_depth(lane))
            for name, (station, concentrators) in self.listener_status().items():
                self.metrics.set_listener(name, station, online=len(station.online()),
                                          concentrators=concentrators)
            if self.store is not None and self.writer is not None:
                self.metrics.set_store_size(self.store.store_size_bytes())
                # Rows the time-series forwarder has not shipped, plus those not yet
                # committed; max(id) keeps this O(1) on a large table.  Without a
                # forwarder nothing waits to be shipped: only the uncommitted rows.
                lag = self.writer.pending
                if self.forwarder is not None:
                    shipped = self.store.cursor(FORWARDER, "readings")
                    lag += max(self.store.last_id("readings") - shipped, 0)
                self.metrics.set_outbox_lag(lag)
                self.writer.maybe_purge()

    async def run(self) -> int:
        """Run until SIGTERM/SIGINT; returns the exit status."""
        loop = asyncio.get_running_loop()
        self._loop = loop
        pending_reload: list[asyncio.Task[bool]] = []

        def on_hup() -> None:
            pending_reload.append(loop.create_task(self.reload()))

        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, self.stop_requested.set)
        loop.add_signal_handler(signal.SIGHUP, on_hup)

        c = self.settings.collector
        if c.metrics_listen:  # first: a port in use stops the start before anything runs
            self.metrics_server = self.metrics.start_server(c.metrics_listen)
        c.data_dir.mkdir(parents=True, exist_ok=True)
        # First: refuses to start while another daemon serves this data directory.
        self.ctl = CtlServer(self.context, relay=lambda: (
            self.control.relay if self.control is not None else None))
        await self.ctl.start()
        self.store = Store(c.data_dir / "amic.db", max_size_mb=c.max_store_mb)
        self.writer = StoreWriter(self.store, commit_interval=c.commit_interval,
                                  commit_rows=c.commit_rows,
                                  retention_days=c.retention_days,
                                  min_free_mb=c.min_free_mb, on_alert=self._on_store_alert,
                                  on_commit=self._on_commit)
        await self.writer.start()
        self.writer.put_event(Event("collector_started", utcnow(), severity=0,
                                    detail=f"config {self.settings.source}"))
        cs = self.settings.commands
        secrets = load_secrets(cs.secrets_file) if cs is not None and cs.secrets_file \
            else None
        self.control = Control(self.context, secrets)
        if self.settings.mqtt is not None:
            # Before the buses: mqtt buses talk through this connection.
            self.mqtt = MqttLink(self.context, self.control, self._fleet_hooks())
            await self.mqtt.start()
        self._settle_heap("configuration loaded", full=True)  # no poll in flight yet
        await self._apply(self.settings, first=True)
        await self._start_api()
        self.control.start()
        self._start_daily()
        self._start_forwarder()
        self._start_notify()
        self.notifier.ready()
        log.info("collector %s ready: %d buses, %d meters, %d schedules; store %s", c.id,
                 len(self.buses), len(self.settings.meters), len(self.settings.schedules),
                 self.store.path)
        self._report_status()
        self._tasks += [asyncio.create_task(watchdog_loop(self.notifier, self.healthy)),
                        asyncio.create_task(self._housekeeping())]
        try:
            await self.stop_requested.wait()
        finally:
            await self.shutdown(pending_reload)
            if self.metrics_server is not None:
                with contextlib.suppress(Exception):
                    self.metrics_server.close()
            for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
                loop.remove_signal_handler(sig)
        return 0

    async def shutdown(self, pending: list[asyncio.Task[bool]] | None = None) -> None:
        t0 = time.monotonic()
        log.info("stopping: draining buses and the store")
        self.notifier.stopping()
        for reload_task in pending or ():
            with contextlib.suppress(Exception):
                await reload_task
        if self.forwarder is not None:
            self.forwarder.stop()
        for t in self._tasks:
            if t.get_name() != "forwarder":
                t.cancel()
        await self._stop_schedules()
        await self._stop_api()
        if self.ctl is not None:
            await self.ctl.close()
        if self.control is not None:
            await self.control.stop()
        await asyncio.gather(*(e.worker.stop(DRAIN_SECONDS) for e in self.buses.values()))
        for station in self.stations.values():
            with contextlib.suppress(Exception):
                await station.close()
        await self._close_dialins()
        if self.mqtt is not None:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self.mqtt.stop(), 2.0)
        for t in self._tasks:
            if t.get_name() == "forwarder":  # finishes the batch in flight, keeps its cursor
                with contextlib.suppress(Exception):
                    await asyncio.wait_for(t, 3.0)
        if self.notifications is not None:  # undelivered messages wait in the store
            await self.notifications.stop(timeout=3.0)
        if self.writer is not None:
            self.writer.put_event(Event("collector_stopped", utcnow(), severity=0))
            # Without room the rows in memory cannot be saved: leave before systemd's
            # kill, and say how many were lost (logged by the writer).
            await self.writer.close(timeout=3.0 if self.writer.full_since else None)
        self._release_heap()
        log.info("stopped in %.1f s; %d readings this run", time.monotonic() - t0,
                 self.readings_seen)


def run_daemon(config: Path, *, align: bool = True) -> int:
    """Load and validate ``config`` (refusing to start on any problem), then run."""
    settings = load_settings(config)
    return asyncio.run(Daemon(settings, align=align).run())

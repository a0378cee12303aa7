"""``amic run``: the collector service.

Start-up: configuration validated (by the caller), store opened, buses opened
(lazily), READY=1.  SIGHUP reloads the file: a valid one is applied without
dropping the job in flight, an invalid one is logged and ignored.  SIGTERM stops
the schedules, lets each bus finish its job in flight, commits the store and exits 0
within 10 s.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
import time
from dataclasses import dataclass
from pathlib import Path

from drivers.bus import Bus
from drivers.mqtt import MqttBus
from drivers.serial import SerialBus
from drivers.tcp import TcpBus
from protocols.modbus import Profile

from .config import ConfigError, load_settings, select_meters
from .control import Control
from .daily import DailyJobs
from .forwarder import Forwarder
from .metrics import Metrics
from .mqttlink import MqttLink
from .notify import Notifier, watchdog_loop
from .profiles import load_profile
from .records import CycleRecord, Event, Reading, utcnow
from .rules import AlarmEngine, AlarmSettings
from .scheduler import BusWorker, Lane, MeterHealth, Poller, Sinks
from .secrets import load_secrets
from .settings import BusSettings, Settings
from .store import CommitInfo, Store, StoreWriter

log = logging.getLogger("amic.daemon")

FORWARDER = "timeseries"  # outbox cursor name of the time-series forwarder
DRAIN_SECONDS = 6.0  # buses finish their job in flight; the store commits in what is left


def make_bus(b: BusSettings, mqtt: MqttLink | None = None) -> Bus:
    if b.kind == "mqtt":
        if mqtt is None:
            raise ValueError(f"bus {b.name}: an mqtt bus needs the [mqtt] connection")
        gateway = next(g for g in mqtt.daemon.settings.gateways if g.name == b.gateway)
        return MqttBus(mqtt.conn, gateway.prefix, gateway.name, td=b.td, tb=b.tb)
    if b.kind == "tcp":
        return TcpBus(b.host, b.port, line_baud=b.line_baud, td=b.td, tb=b.tb)
    return SerialBus(b.device, baud=b.baud, bytesize=b.bytesize, parity=b.parity,
                     stopbits=b.stopbits, td=b.td, tb=b.tb)


@dataclass
class _BusEntry:
    settings: BusSettings
    worker: BusWorker


class Daemon:
    """Owns the buses, the poller, the store writer and the service protocol."""

    def __init__(self, settings: Settings, *, notifier: Notifier | None = None,
                 metrics: Metrics | None = None, align: bool = True) -> None:
        self.settings = settings
        self.notifier = notifier or Notifier.from_env()
        self.metrics = metrics or Metrics()
        self.align = align
        self.buses: dict[str, _BusEntry] = {}
        self.health: dict[str, MeterHealth] = {}
        self.poller: Poller | None = None
        self.schedule_tasks: list[asyncio.Task[None]] = []
        self.store: Store | None = None
        self.writer: StoreWriter | None = None
        self.stop_requested = asyncio.Event()
        self.mqtt: MqttLink | None = None
        self.forwarder: Forwarder | None = None
        self.reloads = 0
        self.reload_failures = 0
        self.readings_seen = 0
        self._last_progress = 0.0
        self._waiting_for_room = 0
        self.alarms: AlarmEngine | None = AlarmEngine(
            AlarmSettings(**dict(settings.alarms.values)))  # type: ignore[arg-type]
        self._meter_bus = {m.meter_id: m.bus for m in settings.meters}
        self.control: Control | None = None
        self.daily: DailyJobs | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._tasks: list[asyncio.Task[None]] = []

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

    def _on_event(self, event: Event) -> None:
        assert self.writer is not None
        log.info("event %s meter=%s bus=%s %s", event.kind, event.meter or "-",
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
        log.info("cycle %s done: %d/%d meters read (%.1f%%) in %.1f s", cycle.schedule,
                 cycle.succeeded, cycle.planned, 100 * cycle.success_rate, took)
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

    # ---- applying a configuration ------------------------------------------------------

    async def _apply(self, settings: Settings, *, first: bool) -> None:
        old = self.buses
        new: dict[str, _BusEntry] = {}
        stopping: list[BusWorker] = []
        for b in settings.buses:
            entry = old.get(b.name)
            if entry is not None and entry.settings == b:
                entry.worker.refused.clear()  # a reload asks refused quantities again
                new[b.name] = entry
                continue
            if entry is not None:
                stopping.append(entry.worker)
            worker = BusWorker(b.name, make_bus(b, self.mqtt), preamble=b.preamble,
                               modbus=b.modbus,
                               observe=self._observe)
            up = await worker.start()
            if not up:
                log.warning("bus %s: %s not reachable yet; will retry", b.name,
                            worker.bus.name)
            new[b.name] = _BusEntry(b, worker)
        stopping.extend(e.worker for name, e in old.items() if name not in new)
        # The schedules go first, so no new job lands on a bus that is being replaced.
        await self._stop_schedules()
        for entry in new.values():
            entry.worker.drop_queued(Lane.SCHEDULED)
        self.buses = new
        self.settings = settings
        self._meter_bus = {m.meter_id: m.bus for m in settings.meters}
        if self.mqtt is not None and self.mqtt.ingestor is not None:
            await self.mqtt.apply(settings)
        await asyncio.gather(*(w.stop(DRAIN_SECONDS) for w in stopping))
        self.poller = Poller({n: e.worker for n, e in new.items()},
                             Sinks(self._on_readings, self._on_event, self._on_cycle,
                                   self._on_progress, room=self._room), health=self.health,
                             dead_after=settings.alarms.comm_loss_after,
                             profiles=self._profile)
        for s in settings.schedules:
            meters = select_meters(settings, s)
            self.schedule_tasks.append(asyncio.create_task(
                self.poller.run_schedule(s, meters, align=self.align, immediate=first),
                name=f"schedule:{s.name}"))
        assert self.store is not None
        self.store.sync_meters(list(settings.meters))

    def _profile(self, name: str) -> Profile:
        # Validated when the configuration was loaded; found the same way here.
        return load_profile(name, search=[self.settings.source.absolute().parent])

    async def _stop_schedules(self) -> None:
        tasks, self.schedule_tasks = self.schedule_tasks, []
        for t in tasks:
            t.cancel()
        for t in tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await t

    async def reload(self) -> bool:
        """Re-read the configuration file; apply it only if it is entirely valid."""
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
        self.notifier.reloading()
        try:
            await self._apply(settings, first=False)
        finally:
            self.notifier.ready()  # systemd must not wait for a reload that failed
        self.reloads += 1
        self.metrics.observe_reload(True)
        log.info("reload applied: %d buses, %d meters, %d schedules", len(settings.buses),
                 len(settings.meters), len(settings.schedules))
        self._report_status()
        return True

    # ---- running -----------------------------------------------------------------------

    def healthy(self) -> bool:
        """For the watchdog: the event loop runs and every bus worker is alive."""
        return all(e.worker.alive for e in self.buses.values())

    async def _housekeeping(self) -> None:
        while True:
            await asyncio.sleep(2.0)
            for name, e in self.buses.items():
                w = e.worker
                self.metrics.set_bus_counters(name, w.bus)
                for lane in Lane:
                    self.metrics.set_queue_depth(name, lane.name.lower(), w.queue_depth(lane))
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
        c.data_dir.mkdir(parents=True, exist_ok=True)
        self.store = Store(c.data_dir / "amic.db", max_size_mb=c.max_store_mb)
        self.writer = StoreWriter(self.store, commit_interval=c.commit_interval,
                                  commit_rows=c.commit_rows,
                                  retention_days=c.retention_days,
                                  min_free_mb=c.min_free_mb, on_alert=self._on_store_alert,
                                  on_commit=self._on_commit)
        await self.writer.start()
        metrics_server = None
        if c.metrics_listen:
            metrics_server = self.metrics.start_server(c.metrics_listen)
        self.writer.put_event(Event("collector_started", utcnow(), severity=0,
                                    detail=f"config {self.settings.source}"))
        cs = self.settings.commands
        secrets = load_secrets(cs.secrets_file) if cs is not None and cs.secrets_file \
            else None
        self.control = Control(self, secrets)
        if self.settings.mqtt is not None:
            # Before the buses: mqtt buses talk through this connection.
            self.mqtt = MqttLink(self)
            await self.mqtt.start()
        await self._apply(self.settings, first=True)
        self.control.start()
        if self.settings.daily is not None:
            self.daily = DailyJobs(self, self.settings.daily)
            self._tasks.append(asyncio.create_task(self.daily.run(), name="daily"))
        ts = self.settings.timeseries
        if ts is not None:
            self.forwarder = Forwarder(self.store, ts.url, org=ts.org, bucket=ts.bucket,
                                       token=ts.token, name=FORWARDER, batch=ts.batch,
                                       precision=ts.precision, gzip=ts.gzip,
                                       gzip_level=ts.gzip_level,
                                       process_backlog=ts.worker_backlog,
                                       meters=self.settings.meters,
                                       on_event=self._on_event_threadsafe)
            self._tasks.append(asyncio.create_task(self.forwarder.run(), name="forwarder"))
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
            if metrics_server is not None:
                with contextlib.suppress(Exception):
                    metrics_server.close()
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
        if self.control is not None:
            await self.control.stop()
        await asyncio.gather(*(e.worker.stop(DRAIN_SECONDS) for e in self.buses.values()))
        if self.mqtt is not None:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self.mqtt.stop(), 2.0)
        for t in self._tasks:
            if t.get_name() == "forwarder":  # finishes the batch in flight, keeps its cursor
                with contextlib.suppress(Exception):
                    await asyncio.wait_for(t, 3.0)
        if self.writer is not None:
            self.writer.put_event(Event("collector_stopped", utcnow(), severity=0))
            # Without room the rows in memory cannot be saved: leave before systemd's
            # kill, and say how many were lost (logged by the writer).
            await self.writer.close(timeout=3.0 if self.writer.full_since else None)
        log.info("stopped in %.1f s; %d readings this run", time.monotonic() - t0,
                 self.readings_seen)


def run_daemon(config: Path, *, align: bool = True) -> int:
    """Load and validate ``config`` (refusing to start on any problem), then run."""
    settings = load_settings(config)
    return asyncio.run(Daemon(settings, align=align).run())

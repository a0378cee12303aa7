"""What the daemon does once a day (times in ``[daily] tz``, default Asia/Shanghai):

- ``report_at`` (06:00): yesterday's line loss per transformer area (线损), read-success
  rate per area and bus (采集成功率) and voltage qualification per meter and area
  (电压合格率, collector/daily/voltage.py) are computed from the store and stored as
  ``daily`` rows (forwarded: measurements ``lineloss``, ``success_daily``,
  ``voltage_meter`` and ``voltage_area``); an area whose
  collection is incomplete gets a ``lineloss_incomplete`` event listing the missing meters;
- ``timesync_at`` (02:00): clock drift read on every meter whose clock amic sets by
  broadcast (DL/T645), one broadcast time sync per bus when some meter is off by more
  than ``min_drift`` and at most 10 min (collector/daily/timesync.py); each
  concentrator's own clock read and set (AFN05 F31) under the same policy, before its
  meters;
- ``backfill_at`` (01:30): missed days of daily frozen energy read back from the meters
  that keep daily freezes (collector/daily/backfill.py), with the meters' own timestamps,
  idempotently;
- ``events_at`` (03:00) and every minute: the meters' own event records
  (collector/daily/events.py): every meter's event counters and the records of the
  kinds that moved, daily; the records of a counter the schedules saw grow, within a
  minute; stored as ``meter_<kind>`` events at the meter's times, once each;
- audit re-reads (监察性抄表) once a day at a random time in ``audit_window``: a sample
  of meters read again and compared (collector/daily/audit_reads.py).

Which day each job last ran is kept in ``<data_dir>/daily-state.json``, so a restart
neither repeats a time sync nor skips a day.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import json
import logging
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, Literal
from zoneinfo import ZoneInfo

from collector.config.settings import DailySettings, MeterSettings
from collector.store.records import DailyRecord, Event, utcnow
from drivers.concentrator_meter import TerminalLink

from .audit_reads import AuditPlanner, AuditResult, AuditSettings, audit_sample, choose_sample
from .backfill import backfill_meter, daily_freezes
from .events import EventRecords
from .reports import line_loss, meter_energies, midnight_ms, success_report
from .timesync import TimeSync, TimeSyncSettings, clock_settable
from .voltage import voltage_records

if TYPE_CHECKING:
    from collector.polling.context import DaemonContext

log = logging.getLogger("amic.daily")


# How long the daily time sync waits for a concentrator that is not logged in (s).
CONCENTRATOR_WAIT = 60.0


class DailyJobs:
    """The daemon's daily jobs (see the module doc)."""

    def __init__(self, ctx: DaemonContext, settings: DailySettings) -> None:
        self.ctx = ctx
        self.settings = settings
        self.zone = ZoneInfo(settings.tz)
        self.state_path = ctx.settings().collector.data_dir / "daily-state.json"
        self.done: dict[str, str] = {}  # job -> local date it last ran
        self.timesync = TimeSync(TimeSyncSettings(tz=settings.tz))
        self.planner = AuditPlanner(settings.audit_window[0], settings.audit_window[1],
                                    tz=self.zone)
        self.audit = AuditSettings(sample_fraction=settings.audit_fraction)
        self.events = EventRecords(ctx, self.zone, records=settings.events_records)
        # Held while a tick runs: a reload takes it before replacing a bus or these jobs,
        # so a backfill or time sync in progress is never cut.
        self.lock = asyncio.Lock()
        self._load()

    # ---- state -------------------------------------------------------------------------

    def _load(self) -> None:
        with contextlib.suppress(OSError, ValueError, TypeError):
            doc = json.loads(self.state_path.read_text())
            self.done = {str(k): str(v) for k, v in doc.get("done", {}).items()}
            self.timesync.load(doc.get("timesync", {}))
            self.planner.load(doc.get("audit", {}))

    def _save(self) -> None:
        doc = {"done": self.done, "timesync": self.timesync.dump(),
               "audit": self.planner.dump()}
        tmp = self.state_path.with_suffix(".tmp")
        try:
            tmp.write_text(json.dumps(doc, default=str))
            tmp.replace(self.state_path)
        except OSError as e:
            log.warning("daily state not saved: %s", e)

    # ---- the loop ----------------------------------------------------------------------

    async def run(self) -> None:
        while True:
            try:
                await self.tick(utcnow())
            except asyncio.CancelledError:
                raise
            except Exception:
                log.exception("daily jobs failed; trying again in a minute")
            await asyncio.sleep(60.0)

    def _due(self, job: str, at: dt.time, now: dt.datetime) -> dt.date | None:
        """Today's local date if ``job`` is due (past ``at``, not done today)."""
        local = now.astimezone(self.zone)
        if local.time() < at or self.done.get(job) == local.date().isoformat():
            return None
        return local.date()

    async def tick(self, now: dt.datetime) -> None:
        async with self.lock:
            await self._tick(now)

    async def _tick(self, now: dt.datetime) -> None:
        s = self.settings
        # Backfill first: yesterday's line loss needs the freezes it fetches.
        today = self._due("backfill", s.backfill_at, now)
        if today is not None and s.backfill_days:
            await self.backfill(now)
            self._mark("backfill", today)
        today = self._due("timesync", s.timesync_at, now)
        if today is not None and s.timesync:
            await self.sync_clocks(now)
            self._mark("timesync", today)
        today = self._due("report", s.report_at, now)
        if today is not None:
            self.report(today - dt.timedelta(days=1))
            self._mark("report", today)
        if s.events:
            today = self._due("events", s.events_at, now)
            if today is not None:
                await self.events.daily(now)
                self._mark("events", today)
            await self.events.on_change(now)
        if s.audit_fraction and self.planner.due(now):
            await self.audit_reads(now)
            self.planner.mark_done(now.astimezone(self.zone).date())
            self._save()

    def _mark(self, job: str, day: dt.date) -> None:
        self.done[job] = day.isoformat()
        self._save()

    # ---- the jobs ----------------------------------------------------------------------

    def _event(self, e: Event) -> None:
        self.ctx.on_event(e)

    def report(self, day: dt.date) -> list[DailyRecord]:
        """Line loss and read success of ``day``, stored (and so forwarded)."""
        settings, store, writer = self.ctx.settings(), self.ctx.store(), self.ctx.writer()
        assert store is not None and writer is not None
        ts = dt.datetime.fromtimestamp(midnight_ms(day, self.zone) / 1000, dt.UTC)
        out: list[DailyRecord] = []
        energy = meter_energies(settings.meters, [settings.source.absolute().parent])
        for a in line_loss(store, day, self.zone, energy=energy):
            fields = tuple((k, float(v)) for k, v in (
                ("loss_pct", a.loss_pct), ("loss_kwh", a.loss_kwh),
                ("supplied_kwh", a.supplied_kwh), ("sold_kwh", a.sold_kwh),
                ("missing", len(a.missing))) if v is not None)
            out.append(DailyRecord(day, "lineloss", a.area, ts, a.complete, fields,
                                   detail=a.reason))
            if not a.complete:
                shown = ", ".join(a.missing[:20]) + (" ..." if len(a.missing) > 20 else "")
                self._event(Event("lineloss_incomplete", utcnow(), severity=1,
                                  value=float(len(a.missing)),
                                  detail=f"area {a.area} {day}: {a.reason}"
                                         f"{'; missing: ' + shown if shown else ''}"))
        by: Literal["area", "bus"]
        for by in ("area", "bus"):
            for r in success_report(store, day, self.zone, by=by):
                if r.key is None or r.ratio is None:
                    continue
                fields = (("ratio", float(r.ratio)), ("planned", float(r.planned)),
                          ("succeeded", float(r.succeeded)), ("failed", float(r.failed)))
                out.append(DailyRecord(day, f"success_{by}", str(r.key), ts, True, fields))
        out += voltage_records(store, day, self.zone, self.settings)
        for rec in out:
            writer.put_daily(rec)
        log.info("daily report %s: %d area(s) of line loss, %d success rows", day,
                 sum(r.kind == "lineloss" for r in out),
                 sum(r.kind != "lineloss" for r in out))
        return out

    def _bus_meters(self, able: Callable[[MeterSettings], bool]) -> dict[str, list[Any]]:
        """The meters that can take part (``able``: by what their kind offers), by bus."""
        workers = self.ctx.workers()
        per_bus: dict[str, list[Any]] = {}
        for m in self.ctx.settings().meters:
            if m.bus in workers and able(m):
                per_bus.setdefault(m.bus, []).append(m)
        return per_bus

    async def sync_clocks(self, now: dt.datetime) -> None:
        ctx = self.ctx

        async def one(bus: str, meters: list[Any]) -> None:
            worker = ctx.workers()[bus]
            link = worker.line.terminal
            if isinstance(link, TerminalLink):
                if not link.online:
                    # Just started, or a 4G link being re-dialled: the concentrators dial
                    # in within moments (all waited for at once, not one after another).
                    with contextlib.suppress(TimeoutError):
                        await link.master.wait_online(link.terminal, CONCENTRATOR_WAIT)
                # the concentrator first: it keeps its meters' time too
                done = await self.timesync.run_concentrator(worker, link, now)
                for e in done.events:
                    self._event(e)
            if not meters:
                return
            result = await self.timesync.run_bus(worker, meters, now)
            for e in result.events:
                self._event(e)
            writer = ctx.writer()
            if result.readings and writer is not None:
                writer.put_many(result.readings)

        per_bus = self._bus_meters(clock_settable)
        workers = ctx.workers()
        for c in ctx.settings().concentrators:
            if c.name in workers:
                per_bus.setdefault(c.name, [])
        await asyncio.gather(*(one(b, ms) for b, ms in per_bus.items()))
        self._save()

    async def backfill(self, now: dt.datetime) -> None:
        ctx = self.ctx
        store, writer = ctx.store(), ctx.writer()
        assert store is not None and writer is not None

        async def one(bus: str, meters: list[Any]) -> None:
            for m in meters:
                try:
                    result = await backfill_meter(ctx.workers()[bus], m, store,
                                                  days=self.settings.backfill_days,
                                                  tz=self.zone, now=now)
                except Exception as e:
                    log.info("backfill of meter %s: %s", m.meter_id, e)
                    continue
                if result.readings:
                    writer.put_many(result.readings)

        keeps = self._bus_meters(lambda m: daily_freezes(m) > 0)
        await asyncio.gather(*(one(b, ms) for b, ms in keeps.items()))

    async def audit_reads(self, now: dt.datetime) -> list[AuditResult]:
        store = self.ctx.store()
        assert store is not None
        day = now.astimezone(self.zone).date()
        sample = choose_sample(self.ctx.settings().meters, day, self.audit)
        results = await audit_sample(self.ctx.workers(), sample,
                                     store, self.audit, now.astimezone(self.zone),
                                     event=self._event)
        log.info("audit re-reads %s: %d meters, %d mismatches", day, len(results),
                 sum(r.status == "mismatch" for r in results))
        return results


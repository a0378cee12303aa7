"""Event records into the store (collector/daily/events.py): read daily and when a polled
counter grows, stored once with the meter's times, alarms for a cover opened and a phase
that lost its voltage while the bus is up."""

from __future__ import annotations

import datetime as dt
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from decimal import Decimal
from pathlib import Path

from collector.config.profiles import load_profile
from collector.config.settings import CollectorSettings, MeterSettings, Settings
from collector.daily.events import EventRecords, wanted_records
from collector.polling.context import DaemonContext
from collector.polling.scheduler import BusWorker
from collector.store import Store, StoreWriter
from collector.store.records import Event, Reading
from drivers.tcp import TcpBus
from simulators.bus import BusServer
from simulators.dlt645 import SimulatedMeter
from simulators.meter import ManualClock, MeterConfig, MeterModel

M1 = MeterSettings(meter_id="m1", address="000000000001", bus="b1")
M2 = MeterSettings(meter_id="m2", address="000000000002", bus="b1")
START = dt.datetime(2026, 3, 2, 8, 0)  # meter local time = UTC here (tz=UTC)
NOW = START.replace(tzinfo=dt.UTC)


def utc(t: dt.datetime) -> dt.datetime:
    return t.replace(tzinfo=dt.UTC)


CLOCKS: dict[Path, ManualClock] = {}
"""The simulated meters' clock of each test's setup, by its tmp path."""


@asynccontextmanager
async def setup(tmp: Path) -> AsyncIterator[tuple[EventRecords, dict[str, MeterModel], Store,
                                                 StoreWriter]]:
    clock = CLOCKS[tmp] = ManualClock(START)
    models = {m.meter_id: MeterModel(m.address, MeterConfig(base_kw=Decimal(2)), seed=m.address,
                                     clock=clock) for m in (M1, M2)}
    settings = Settings(source=tmp / "amic.toml",
                        collector=CollectorSettings(id="t", data_dir=tmp), buses=(),
                        meters=(M1, M2), schedules=())
    async with BusServer([SimulatedMeter(m) for m in models.values()], baud=19200,
                         td=0.003) as server:
        worker = BusWorker("b1", TcpBus("127.0.0.1", server.port, td=0.3, tb=0.2))
        await worker.start()
        with Store(tmp / "amic.db") as store:
            writer = StoreWriter(store, commit_interval=0.01)
            await writer.start()
            ctx = DaemonContext(settings=lambda: settings, workers=lambda: {"b1": worker},
                                profile=load_profile, on_readings=writer.put_many,
                                store_readings=writer.put_many, on_event=writer.put_event,
                                store=lambda: store, writer=lambda: writer)
            try:
                yield EventRecords(ctx, dt.UTC, records=2), models, store, writer
            finally:
                await writer.close()
                await worker.stop()


def meter_events(store: Store, meter: str = "m1") -> list[Event]:
    return sorted(store.events(meter=meter, limit=1000), key=lambda e: (e.ts, e.kind))


async def test_a_cover_opened_at_a_given_time_is_an_alarm_at_that_time_stored_once(
        tmp_path: Path) -> None:
    async with setup(tmp_path) as (records, models, store, writer):
        opened = START - dt.timedelta(hours=1, minutes=17, seconds=5)
        models["m1"].open_cover(opened, opened + dt.timedelta(minutes=3))
        results = await records.daily(NOW)
        await writer.flush()
        got = [e for e in meter_events(store) if e.kind == "meter_cover_open"]
        assert len(got) == 1
        alarm = got[0]
        assert alarm.ts == utc(opened) and alarm.severity == 2  # amic events --alarms
        assert "until 2026-03-02T06:45:55" in alarm.detail
        assert {r.meter for r in results} == {"m1", "m2"}
        # the counters read were stored as readings
        assert store.recent_readings(meter="m1", quantity="cover_open_count", limit=1)
        # the same record read again (a second fetch) is not stored twice
        await records.fetch(records.ctx.workers()["b1"], M1, {"cover_open": 3}, NOW)
        await records.daily(NOW + dt.timedelta(days=1))
        await writer.flush()
        assert len([e for e in meter_events(store) if e.kind == "meter_cover_open"]) == 1


async def test_phase_a_voltage_loss_while_the_bus_is_up_is_an_alarm(tmp_path: Path) -> None:
    async with setup(tmp_path) as (records, models, store, writer):
        t1, t2 = START - dt.timedelta(hours=3), START - dt.timedelta(hours=2, minutes=30)
        models["m1"].lose_voltage("a", t1, t2)
        # m2 answered the last poll: the bus is up
        store.write_readings([Reading("m2", "voltage_a", 221.0, "V", NOW)])
        await records.daily(NOW)
        await writer.flush()
        kinds = {(e.kind, e.ts, e.severity) for e in meter_events(store)}
        assert ("meter_voltage_loss_a", utc(t1), 1) in kinds
        assert ("voltage_loss", utc(t1), 2) in kinds
        assert not any(e.kind == "voltage_loss" for e in meter_events(store, "m2"))


async def test_a_voltage_loss_record_without_the_bus_up_is_only_a_record(
        tmp_path: Path) -> None:
    async with setup(tmp_path) as (records, models, store, writer):
        t1 = START - dt.timedelta(hours=3)
        models["m1"].lose_voltage("a", t1, t1 + dt.timedelta(minutes=5))
        await records.daily(NOW)
        await writer.flush()
        kinds = [e.kind for e in meter_events(store)]
        assert "meter_voltage_loss_a" in kinds and "voltage_loss" not in kinds


async def test_records_are_fetched_when_a_polled_counter_grows(tmp_path: Path) -> None:
    async with setup(tmp_path) as (records, models, store, writer):
        model = models["m1"]
        before = model.cover_open_count
        store.write_readings([Reading("m1", "cover_open_count", float(before), "",
                                      NOW - dt.timedelta(minutes=15))])
        first = START - dt.timedelta(minutes=9)
        second = START - dt.timedelta(minutes=4)
        model.open_cover(first, first + dt.timedelta(minutes=1))
        model.open_cover(second)
        # the schedule's poll stores the grown counter
        store.write_readings([Reading("m1", "cover_open_count", float(before + 2), "", NOW)])
        results = await records.on_change(NOW + dt.timedelta(seconds=1))
        await writer.flush()
        assert [r.meter for r in results] == ["m1"]
        got = [e for e in meter_events(store) if e.kind == "meter_cover_open"]
        assert [e.ts for e in got] == [utc(first), utc(second)]
        # nothing moved since: no read at all
        assert await records.on_change(NOW + dt.timedelta(minutes=1)) == []


def test_records_wanted_follow_the_counters() -> None:
    counters = {"cover_open_count": 5.0, "power_down_count": 3.0, "voltage_loss_count_a": 0.0,
                "programming_count": 14.0}
    previous: dict[str, float | None] = {"cover_open_count": 4.0, "power_down_count": 3.0,
                                         "voltage_loss_count_a": None, "programming_count": 1.0}
    assert wanted_records(counters, previous, first=2) == {"cover_open": 1, "programming": 10}
    assert wanted_records({"power_down_count": 7.0}, {"power_down_count": None}, first=2) == \
        {"power_down": 2}
    assert wanted_records({"power_down_count": 0.0}, {"power_down_count": 9.0}, first=2) == {}


async def test_an_event_read_while_going_on_gets_its_end_from_a_later_read(
        tmp_path: Path) -> None:
    async with setup(tmp_path) as (records, models, store, writer):
        lost = START - dt.timedelta(hours=1)
        back = START + dt.timedelta(hours=2)  # still to come at the first read
        models["m1"].lose_voltage("a", lost, back)
        await records.daily(NOW)
        await writer.flush()
        starts = [e for e in meter_events(store) if e.kind == "meter_voltage_loss_a"]
        assert len(starts) == 1 and "going on" in (starts[0].detail or "")
        assert not [e for e in meter_events(store) if e.kind.endswith("_cleared")]
        # the counter does not move again; the daily run reads the record once more
        CLOCKS[tmp_path].advance(86400)
        await records.daily(NOW + dt.timedelta(days=1))
        await writer.flush()
        ends = [e for e in meter_events(store) if e.kind == "meter_voltage_loss_a_cleared"]
        assert [(e.ts, e.severity) for e in ends] == [(utc(back), 0)]
        assert lost.isoformat() in (ends[0].detail or "")
        # read again: nothing new, neither the start nor the end
        await records.daily(NOW + dt.timedelta(days=2))
        await writer.flush()
        kinds = [e.kind for e in meter_events(store)]
        assert kinds.count("meter_voltage_loss_a") == 1
        assert kinds.count("meter_voltage_loss_a_cleared") == 1


async def test_an_event_already_over_at_the_first_read_has_its_end_stored_once(
        tmp_path: Path) -> None:
    async with setup(tmp_path) as (records, models, store, writer):
        down, up = START - dt.timedelta(hours=5), START - dt.timedelta(hours=4, minutes=50)
        models["m1"].power_down_event(down, up)
        await records.daily(NOW)
        await records.fetch(records.ctx.workers()["b1"], M1, {"power_down": 2}, NOW)
        await writer.flush()
        got = [(e.kind, e.ts) for e in meter_events(store) if e.kind.startswith("meter_power")]
        assert got == [("meter_power_down", utc(down)), ("meter_power_down_cleared", utc(up))]

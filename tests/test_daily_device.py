"""The daily jobs (time sync, backfill) and the gateway on the device model: a meter takes
part by what its kind offers, never by its protocol name, and no job changes the shared
sessions of its bus (issue 14 §1)."""

from __future__ import annotations

import datetime as dt
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from decimal import Decimal
from pathlib import Path
from typing import Any, cast
from zoneinfo import ZoneInfo

import pytest

from collector.config.profiles import load_profile
from collector.config.settings import (
    CollectorSettings,
    DailySettings,
    MeterSettings,
    Settings,
)
from collector.daily.backfill import backfill_meter, daily_freezes
from collector.daily.jobs import DailyJobs
from collector.daily.timesync import TimeSync, TimeSyncSettings, clock_settable
from collector.polling.context import DaemonContext
from collector.polling.scheduler import BusWorker, Lane
from collector.store import Store
from collector.store.records import Event, Quality, Reading, utcnow
from drivers.device import MeterRef, Unsupported
from drivers.meters import KINDS, kind_of, open_meter
from drivers.tcp import TcpBus
from protocols.dlt645 import DAILY_FREEZES, ReadReply, Version, by_name, encode_value
from protocols.modbus import RtuError, crc16
from simulators.bus import BusServer
from simulators.dlt645 import make_meters
from simulators.meter import MeterConfig

D1 = MeterSettings(meter_id="d1", address="000000000001", bus="b1")  # DL/T645-2007
D97 = MeterSettings(meter_id="d97", address="000000000097", bus="b1", protocol="dlt645-1997")
MB = MeterSettings(meter_id="mb", address="5", bus="b1", protocol="modbus",
                   profile="acrel-ddsy1352")
# The simulated meters keep the host's local time: the jobs use the same zone.
_OFFSET = int((dt.datetime.now().astimezone().utcoffset() or dt.timedelta()).total_seconds()
              // 3600)
ZONE = "UTC" if _OFFSET == 0 else f"Etc/GMT{-_OFFSET:+d}"
FAST = TimeSyncSettings(tz=None, settle=0.0, align=False, midnight_guard=0.0, retries=0)


@asynccontextmanager
async def bus(config: MeterConfig) -> AsyncIterator[tuple[BusServer, BusWorker]]:
    """d1 (2007) and d97 (1997) on one simulated bus; the Modbus meter is in the ledger
    only: nothing may be sent to it."""
    sims = [*make_meters([D1.address], config=config, seed=1),
            *make_meters([D97.address], config=config, seed=2, version=Version.V1997)]
    async with BusServer(sims, baud=19200, td=0.003) as server:
        worker = BusWorker("b1", TcpBus("127.0.0.1", server.port, td=0.3, tb=0.2,
                                        reconnect_min=0.01))
        await worker.start()
        try:
            yield server, worker
        finally:
            await worker.stop()


def retries(worker: BusWorker) -> list[int]:
    return [s.retries for s in worker.line.sessions()]


# ---- what takes part: the kind's capabilities --------------------------------------------

def test_kinds_declare_clock_and_freezes_without_a_profile() -> None:
    assert clock_settable(D1) and clock_settable(D97) and not clock_settable(MB)
    assert daily_freezes(D1) == DAILY_FREEZES
    assert daily_freezes(D97) == 0 and daily_freezes(MB) == 0
    for name, kind in KINDS.items():
        fixed = kind.fixed_capabilities()
        assert fixed.clock == (name != "modbus"), name
        if kind.needs_profile():  # what a profile adds never takes its clock away
            full = kind.capabilities(MeterRef("m", name, "5", load_profile(MB.profile)))
            assert (full.clock, full.daily_freezes) == (fixed.clock, fixed.daily_freezes)
        else:
            assert kind.capabilities(MeterRef("m", name, "1")) == fixed


# ---- time sync -----------------------------------------------------------------------------

async def test_time_sync_skips_a_kind_without_a_settable_clock_and_syncs_the_others() -> None:
    async with bus(MeterConfig(clock_offset=dt.timedelta(minutes=3))) as (server, worker):
        sync = TimeSync(FAST)
        result = await sync.run_bus(worker, [D1, D97, MB])
        assert result.skipped == {"mb": "modbus: no broadcast time sync"}
        assert set(result.drifts) == {"d1", "d97"}
        assert all(d == pytest.approx(180, abs=3) for d in result.drifts.values())
        assert result.candidates == ["d1", "d97"] and result.broadcast
        assert server.stats.broadcasts == 2  # one per edition (clock group)
        assert result.corrected == ["d1", "d97"] and result.failed == []
        assert result.events[-1].kind == "clock_synced"
        assert retries(worker) == [1, 1]  # the job's retries=0 went with its calls only


@dataclass
class Writer:
    readings: list[Reading] = field(default_factory=list)

    def put_many(self, rows: list[Reading]) -> None:
        self.readings += rows


def daily(tmp: Path, worker: BusWorker, store: Store, writer: Writer,
          events: list[Event]) -> DailyJobs:
    settings = Settings(source=tmp / "amic.toml",
                        collector=CollectorSettings(id="t", data_dir=tmp), buses=(),
                        meters=(D1, D97, MB), schedules=())

    def nothing(_: Any) -> None:
        return None

    ctx = DaemonContext(settings=lambda: settings, workers=lambda: {"b1": worker},
                        profile=load_profile, on_readings=nothing, store_readings=nothing,
                        on_event=events.append, store=lambda: store,
                        writer=lambda: cast(Any, writer))
    return DailyJobs(ctx, DailySettings(tz=ZONE, backfill_days=2))


async def test_daily_jobs_take_the_meters_whose_kind_can(tmp_path: Path) -> None:
    events: list[Event] = []
    writer = Writer()
    async with bus(MeterConfig(daily_freezes=5, clock_offset=dt.timedelta(minutes=2))
                   ) as (server, worker):
        with Store(tmp_path / "amic.db") as store:
            jobs = daily(tmp_path, worker, store, writer, events)
            jobs.timesync = TimeSync(FAST)
            await jobs.sync_clocks(utcnow())
            assert server.stats.broadcasts == 2
            synced = [e for e in events if e.kind == "clock_synced"]
            assert [e.detail for e in synced] == ["d1,d97"]
            # Only the 2007 meter keeps daily freezes: the others are not asked.
            before, drifts = server.stats.requests, len(writer.readings)
            await jobs.backfill(utcnow())
            filled = writer.readings[drifts:]
            assert {r.meter for r in filled} == {"d1"}
            assert {r.quality for r in filled} == {Quality.BACKFILLED}
            # last freeze, (time, forward, reverse) per day, last freeze again
            assert server.stats.requests - before == 2 + 3 * 2
    assert retries(worker) == [1, 1]


async def test_backfill_of_a_kind_without_freezes_sends_nothing(tmp_path: Path) -> None:
    async with bus(MeterConfig(daily_freezes=5)) as (server, worker):
        with Store(tmp_path / "amic.db") as store:
            for m in (D97, MB):
                got = await backfill_meter(worker, m, store, days=2, tz=ZONE, retries=0)
                assert set(got.skipped.values()) == {"no daily freeze history"}
                assert got.notes == [f"{m.protocol} meters keep no daily freeze history here"]
                assert got.requests == 0 and got.readings == []
            assert server.stats.requests == 0
            got = await backfill_meter(worker, D1, store, days=1, tz=ZONE, retries=0)
            assert got.requests == server.stats.requests > 0
            assert retries(worker) == [1]


# ---- the meter: a freeze of another day ----------------------------------------------------

async def test_read_freeze_on_another_day_reads_no_energies() -> None:
    async with bus(MeterConfig(daily_freezes=5)) as (server, worker):
        meter = open_meter(worker.line, MeterRef("d1", D1.protocol, D1.address))

        async def job(_: BusWorker) -> None:
            taken = await meter.freeze_time(1)
            other = await meter.read_freeze(1, on=taken.date() - dt.timedelta(days=1))
            assert other.taken == taken and other.readings == []
            assert server.stats.requests == 2  # the freeze time, twice
            same = await meter.read_freeze(1, on=taken.date(), tz=ZoneInfo(ZONE))
            assert server.stats.requests == 5
            assert {r.quantity for r in same.readings} >= {
                "freeze_daily_energy_active_forward_total"}
        await worker.submit(Lane.ON_DEMAND, job)


# ---- raw gateway frames: decoded by the meter's kind ----------------------------------------

def test_raw_replies_are_decoded_by_the_kind() -> None:
    d7, d97, mb = kind_of("dlt645-2007"), kind_of("dlt645-1997"), kind_of("modbus")
    assert d7.frame_family() == d97.frame_family() != mb.frame_family()
    item = by_name("energy_active_forward_total", Version.V2007)
    frame = ReadReply(address=D1.address, di=item.di,
                      body=encode_value(item, Decimal("1234.56"))).to_frame()
    message = d7.decode_reply(frame)
    assert isinstance(message, ReadReply) and message.item is not None
    with pytest.raises(Unsupported, match="is not a DL/T645-1997 read reply"):
        d97.decode_reply(frame)
    pdu = bytes((5, 3, 2, 0x12, 0x34))
    reply = pdu + crc16(pdu).to_bytes(2, "little")
    assert list(mb.decode_reply(reply).pdu.values) == [0x1234]
    with pytest.raises(RtuError):
        mb.decode_reply(reply[:-1] + b"\x00")

"""collector.daily.timesync against the simulated DL/T645 bus over TCP: drift, broadcast sync."""

from __future__ import annotations

import datetime as dt
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from zoneinfo import ZoneInfo

import pytest

from collector.config.settings import MeterSettings
from collector.daily.timesync import (
    DRIFT_QUANTITY,
    TimeSync,
    TimeSyncSettings,
    read_clock,
    read_drift,
)
from collector.polling.scheduler import BusWorker
from collector.store.records import Event
from drivers.tcp import TcpBus
from protocols.dlt645 import Frame, ReadRequest, Version
from protocols.quantities import QUANTITIES, Kind, Quantity
from simulators.bus import BusServer
from simulators.dlt645 import ERR_NO_DATA, SimulatedMeter
from simulators.meter import MeterConfig, MeterModel

TZ = ZoneInfo("Asia/Shanghai")
NOON = dt.datetime(2024, 6, 1, 12, 0, 0)  # Shanghai time when each test starts
BAUD = 19200
FAST = TimeSyncSettings(settle=0.0, align=False)  # align: up to 1 s per broadcast

# meter id -> (address, edition, clock offset at start)
SPEC: dict[str, tuple[str, Version, dt.timedelta]] = {
    "m0": ("000000000001", Version.V2007, dt.timedelta(0)),
    "m3": ("000000000002", Version.V2007, dt.timedelta(minutes=3)),
    "m20": ("000000000003", Version.V2007, dt.timedelta(minutes=20)),
    "m97": ("000000000004", Version.V1997, dt.timedelta(minutes=-2)),
    "old": ("000000000005", Version.V2007, dt.timedelta(seconds=10)),  # no 0400010C
}
PROTOCOL = {Version.V2007: "dlt645-2007", Version.V1997: "dlt645-1997"}
METERS = [MeterSettings(meter_id=mid, address=a, bus="b1", protocol=PROTOCOL[v])  # type: ignore[arg-type]
          for mid, (a, v, _) in SPEC.items()]
MODBUS = MeterSettings(meter_id="mb", address="5", bus="b1", protocol="modbus", profile="x")
BY_ID = {m.meter_id: m for m in METERS}


class SharedClock:
    """Host time of the simulated meters and of the collector: Shanghai NOON at start."""

    def __init__(self) -> None:
        self._m0 = time.monotonic()
        self.shift = 0.0

    def _elapsed(self) -> float:
        return time.monotonic() - self._m0 + self.shift

    def now(self) -> dt.datetime:  # simulator Clock: naive local time
        return NOON + dt.timedelta(seconds=self._elapsed())

    def monotonic(self) -> float:  # simulator Clock
        return time.monotonic() + self.shift

    def time(self) -> float:  # the collector's wall clock
        return NOON.replace(tzinfo=TZ).timestamp() + self._elapsed()

    def utcnow(self) -> dt.datetime:
        return dt.datetime.fromtimestamp(self.time(), dt.UTC)

    def jump(self, seconds: float) -> None:
        self.shift += seconds


class OldMeter(SimulatedMeter):
    """A DL/T645-2007 meter from before the 2013 amendment: no 0400010C."""

    def _read(self, msg: ReadRequest) -> Frame:
        if msg.di == 0x0400010C:
            return self._abnormal(msg.function, ERR_NO_DATA)
        return super()._read(msg)


@dataclass
class Line:
    server: BusServer
    worker: BusWorker
    clock: SharedClock

    def model(self, meter_id: str) -> MeterModel:
        return self.server.meter(SPEC[meter_id][0]).model

    def sim(self, meter_id: str) -> SimulatedMeter:
        return self.server.meter(SPEC[meter_id][0])

    async def drift(self, meter_id: str) -> float:
        return await read_drift(self.worker, BY_ID[meter_id], clock=self.clock.time)


@pytest.fixture
async def line() -> AsyncIterator[Line]:
    clock = SharedClock()
    sims: list[SimulatedMeter] = []
    for mid, (address, version, offset) in SPEC.items():
        model = MeterModel(address, MeterConfig(clock_offset=offset), seed=f"7/{address}",
                           clock=clock)
        kind = OldMeter if mid == "old" else SimulatedMeter
        sims.append(kind(model, version=version))
    async with BusServer(sims, baud=BAUD, td=0.005) as server:
        bus = TcpBus("127.0.0.1", server.port, td=0.15, tb=0.1, guard=0.02, line_baud=BAUD)
        worker = BusWorker("b1", bus)
        await worker.start()
        try:
            yield Line(server, worker, clock)
        finally:
            await worker.stop()


def kinds(events: list[Event]) -> list[tuple[str, str | None]]:
    return [(e.kind, e.meter) for e in events]


# ---- drift ---------------------------------------------------------------------------------

async def test_drift_read_matches_the_clock_offsets(line: Line) -> None:
    for mid, (_, _, offset) in SPEC.items():
        drift = await line.drift(mid)
        assert drift == pytest.approx(offset.total_seconds(), abs=2), mid
    # The old meter refused 0400010C once and is read as date + time from then on.
    assert (SPEC["old"][0], "meter_datetime") in line.worker.refused
    before = line.server.stats.requests
    found = await read_clock(line.worker, BY_ID["old"], clock=line.clock.time)
    assert line.server.stats.requests - before == 2
    assert found.meter_time.date() == NOON.date()
    assert 0 <= found.round_trip < 1


async def test_drift_in_host_local_time_with_tz_none() -> None:
    sim = SimulatedMeter(MeterModel("000000000009", seed=1))  # the real host clock
    async with BusServer([sim], baud=BAUD, td=0.005) as server:
        bus = TcpBus("127.0.0.1", server.port, td=0.15, tb=0.1, line_baud=BAUD)
        worker = BusWorker("b9", bus)
        await worker.start()
        try:
            meter = MeterSettings(meter_id="h", address="000000000009", bus="b9")
            assert await read_drift(worker, meter, tz=None) == pytest.approx(0, abs=2)
        finally:
            await worker.stop()


# ---- broadcast sync ------------------------------------------------------------------------

async def test_small_drift_synced_large_drift_left_and_reported(line: Line) -> None:
    sync = TimeSync(TimeSyncSettings(settle=0.0), clock=line.clock.time)
    result = await sync.run_bus(line.worker, [*METERS, MODBUS], line.clock.utcnow())

    assert result.day == NOON.date() and result.bus == "b1"
    assert set(result.skipped) == {"mb"}
    for mid, (_, _, offset) in SPEC.items():
        assert result.drifts[mid] == pytest.approx(offset.total_seconds(), abs=2), mid
    assert result.large == ["m20"]
    assert result.candidates == ["m3", "m97"]  # m0 and "old" (10 s) need nothing
    assert result.broadcast and result.reason == ""
    assert line.server.stats.broadcasts == 2  # a 2007 and a 1997 time sync frame
    assert result.corrected == ["m3", "m97"] and result.failed == []
    assert all(abs(d) < 2 for d in result.after.values())
    assert kinds(result.events) == [("clock_drift_large", "m20"), ("clock_synced", None)]
    large, synced = result.events
    assert large.severity == 2 and large.bus == "b1"
    assert large.value == pytest.approx(1200, abs=2)
    assert synced.severity == 0 and synced.value == 2 and synced.detail == "m3,m97"
    # Readings of the drift only once the vocabulary has the quantity.
    assert bool(result.readings) == (DRIFT_QUANTITY in QUANTITIES)

    # Really corrected on the meters; the 20-minute meter refused the step and is as it was.
    assert abs(await line.drift("m3")) < 2
    assert abs(await line.drift("m97")) < 2
    assert await line.drift("m20") == pytest.approx(1200, abs=2)
    assert line.sim("m20").counters["time_sync_rejected"] >= 1
    assert sync.dump() == {"b1": "2024-06-01"}


async def test_once_a_day_per_bus_even_after_restart_and_again_next_day(line: Line) -> None:
    meters = [BY_ID["m0"], BY_ID["m3"]]
    sync = TimeSync(FAST, clock=line.clock.time)
    first = await sync.run_bus(line.worker, meters, line.clock.utcnow())
    assert first.broadcast and first.corrected == ["m3"]
    assert line.server.stats.broadcasts == 1

    # The meter runs off again the same day: no second broadcast.
    m3 = line.model("m3")
    m3.set_clock(m3.now() + dt.timedelta(minutes=3))
    second = await sync.run_bus(line.worker, meters, line.clock.utcnow())
    assert second.candidates == ["m3"] and not second.broadcast
    assert second.reason == "already broadcast on 2024-06-01"
    assert line.server.stats.broadcasts == 1
    assert [e.kind for e in second.events] == []

    # Nor after a restart that kept the state.
    restarted = TimeSync(FAST, clock=line.clock.time)
    restarted.load(sync.dump())
    third = await restarted.run_bus(line.worker, meters, line.clock.utcnow())
    assert not third.broadcast and line.server.stats.broadcasts == 1

    # The next day (collector and meters a day on): broadcast again, accepted again.
    line.clock.jump(86400)
    tomorrow = line.clock.utcnow()
    fourth = await restarted.run_bus(line.worker, meters, tomorrow)
    assert fourth.day == dt.date(2024, 6, 2)
    assert fourth.broadcast and fourth.corrected == ["m3"]
    assert line.server.stats.broadcasts == 2
    assert abs(await line.drift("m3")) < 2
    assert restarted.dump() == {"b1": "2024-06-02"}


async def test_injected_now_decides_the_day(line: Line) -> None:
    meters = [BY_ID["m3"]]
    sync = TimeSync(FAST, clock=line.clock.time)
    sync.load({"b1": "2024-06-01"})
    today = await sync.run_bus(line.worker, meters, line.clock.utcnow())
    assert not today.broadcast
    tomorrow = line.clock.utcnow() + dt.timedelta(days=1)
    nxt = await sync.run_bus(line.worker, meters, tomorrow)
    assert nxt.broadcast and line.server.stats.broadcasts == 1
    assert nxt.events[-1].ts == tomorrow


async def test_meter_refusing_the_broadcast_is_reported(line: Line) -> None:
    line.sim("m3").time_sync_window = dt.timedelta(minutes=1)  # a stricter meter
    sync = TimeSync(FAST, clock=line.clock.time)
    result = await sync.run_bus(line.worker, [BY_ID["m3"], BY_ID["m97"]],
                                line.clock.utcnow())
    assert result.broadcast
    assert result.corrected == ["m97"] and result.failed == ["m3"]
    assert result.after["m3"] == pytest.approx(180, abs=2)
    failed = [e for e in result.events if e.kind == "clock_sync_failed"]
    assert len(failed) == 1 and failed[0].meter == "m3" and failed[0].severity == 1
    assert failed[0].value == pytest.approx(180, abs=2)
    assert result.events[-1].kind == "clock_synced" and result.events[-1].value == 1


async def test_no_broadcast_without_a_meter_that_needs_it(line: Line) -> None:
    ghost = MeterSettings(meter_id="ghost", address="000000000077", bus="b1")
    other = MeterSettings(meter_id="far", address="000000000001", bus="b2")
    sync = TimeSync(TimeSyncSettings(settle=0.0, retries=0), clock=line.clock.time)
    result = await sync.run_bus(line.worker, [BY_ID["m0"], BY_ID["m20"], ghost, other],
                                line.clock.utcnow())
    assert not result.broadcast and result.reason == "no meter needs it"
    assert list(result.unread) == ["ghost"] and "no reply" in result.unread["ghost"]
    assert result.skipped == {"far": "on bus b2, not b1"}
    assert kinds(result.events) == [("clock_drift_large", "m20")]
    assert line.server.stats.broadcasts == 0 and sync.dump() == {}


async def test_drift_readings_once_the_quantity_exists(line: Line,
                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(QUANTITIES, DRIFT_QUANTITY,
                        Quantity(DRIFT_QUANTITY, "s", Kind.NUMBER, "meter clock drift"))
    sync = TimeSync(FAST, clock=line.clock.time)
    result = await sync.run_bus(line.worker, [BY_ID["m0"], BY_ID["m20"]], line.clock.utcnow())
    assert [(r.meter, r.quantity, r.unit) for r in result.readings] == [
        ("m0", DRIFT_QUANTITY, "s"), ("m20", DRIFT_QUANTITY, "s")]
    assert result.readings[1].value == pytest.approx(1200, abs=2)


# ---- rules without a bus -------------------------------------------------------------------

def shanghai(hour: int, minute: int = 0, day: int = 1) -> dt.datetime:
    return dt.datetime(2024, 6, day, hour, minute, tzinfo=TZ).astimezone(dt.UTC)


def test_broadcast_windows() -> None:
    anytime = TimeSync()
    assert anytime.blocked("b1", shanghai(23, 50)) == "too close to midnight"
    assert anytime.blocked("b1", shanghai(0, 5)) == "too close to midnight"
    assert anytime.blocked("b1", shanghai(0, 20)) == ""
    sync = TimeSync(TimeSyncSettings(time_of_day=dt.time(3, 30)))
    assert sync.blocked("b1", shanghai(2, 0)) == "not before 03:30"
    assert sync.blocked("b1", shanghai(3, 30)) == ""
    sync.last_broadcast["b1"] = dt.date(2024, 6, 1)
    assert sync.blocked("b1", shanghai(12)).startswith("already broadcast")
    assert sync.blocked("b1", shanghai(12, day=2)) == ""
    assert sync.blocked("b2", shanghai(12)) == ""
    # The day is the local one: 17:00 UTC is 01:00 the next day in Shanghai.
    assert sync.local(dt.datetime(2024, 6, 1, 17, 0)).date() == dt.date(2024, 6, 2)
    assert sync.next_time(shanghai(2)) == shanghai(3, 30)
    assert sync.next_time(shanghai(4)) == shanghai(3, 30, day=2)
    assert TimeSync().next_time(shanghai(4)) is None


def test_state_and_settings_checks() -> None:
    sync = TimeSync()
    sync.load({"b1": "2024-06-01", "b2": "garbage", "b3": 7})
    assert sync.dump() == {"b1": "2024-06-01"}
    sync.load({"b1": "2024-05-30"})  # an older state does not move the date back
    assert sync.dump() == {"b1": "2024-06-01"}
    for bad in ({"min_drift": 700.0}, {"tz": "Mars/Olympus"}, {"midnight_guard": -1.0},
                {"lead": 2.0}, {"settle": -1.0}):
        with pytest.raises(ValueError):
            TimeSyncSettings(**bad)

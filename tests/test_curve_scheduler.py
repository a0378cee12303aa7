"""The poller's curve read: from the last point read or stored on, so a restarted collector
adds nothing twice and missed intervals come back from the meter's own curve."""

from __future__ import annotations

import datetime as dt
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from collector.config.settings import MeterSettings, ScheduleSettings
from collector.polling.scheduler import BusWorker, Poller, Sinks, last_curve_point
from collector.store import Store
from collector.store.records import CycleRecord, Event, Quality, Reading
from drivers.tcp import TcpBus
from simulators.bus import BusServer
from simulators.dlt645 import make_meters

ADDR = "000000000001"
M1 = MeterSettings(meter_id="m1", address=ADDR, bus="b1")
CURVES = ScheduleSettings(name="curves", interval=900.0, quantities=("voltage_a",),
                          curve=("energy_active_forward_total", "voltage_a"), curve_days=1)


@pytest.fixture
async def worker() -> AsyncIterator[BusWorker]:
    async with BusServer(make_meters([ADDR], seed=9), baud=19200, td=0.002) as server:
        w = BusWorker("b1", TcpBus("127.0.0.1", server.port, td=0.5, tb=0.3))
        await w.start()
        try:
            yield w
        finally:
            await w.stop()


def _poller(worker: BusWorker, rows: list[Reading], store: Store | None = None) -> Poller:
    events: list[Event] = []
    cycles: list[CycleRecord] = []
    hook = None if store is None else (lambda m, q: last_curve_point(store, m, q))
    return Poller({"b1": worker}, Sinks(rows.extend, events.append, cycles.append,
                                        curve_last=hook))


async def test_restart_resumes_from_the_store_and_fills_what_was_missed(
        worker: BusWorker, tmp_path: Path) -> None:
    first: list[Reading] = []
    poller = _poller(worker, first)
    await poller.read_curve(worker, CURVES, M1, 0)
    midnight = dt.datetime.combine(dt.date.today() - dt.timedelta(days=1), dt.time())
    times = sorted({r.meter_ts for r in first if r.meter_ts is not None})
    assert times[0] == midnight.astimezone(dt.UTC)
    assert len(first) == 2 * len(times) and len(times) >= 96
    # late points (older than two intervals) are BACKFILLED; the newest are live values
    late = dt.datetime.now(dt.UTC) - dt.timedelta(minutes=30)
    assert {r.quality for r in first if r.meter_ts is not None and r.meter_ts < late
            - dt.timedelta(minutes=1)} == {Quality.BACKFILLED}
    assert {r.quality for r in first if r.meter_ts is not None and r.meter_ts > late
            + dt.timedelta(minutes=1)} <= {Quality.GOOD}
    again: list[Reading] = []
    poller.sinks = Sinks(again.extend, lambda e: None, lambda c: None)
    await poller.read_curve(worker, CURVES, M1, 0)  # the same poller: nothing new yet
    assert all(r.meter_ts is not None and r.meter_ts > times[-1] for r in again)

    # The collector stored all but the last two hours, then stopped.
    cut = times[-1] - dt.timedelta(hours=2)
    with Store.in_dir(tmp_path) as store:
        store.write_readings(r for r in first if r.meter_ts is not None and r.meter_ts <= cut)
        assert last_curve_point(store, "m1", CURVES.curve) == cut
        assert last_curve_point(store, "m1", ("current_a",)) is None
        resumed: list[Reading] = []
        await _poller(worker, resumed, store).read_curve(worker, CURVES, M1, 0)
    got = sorted({r.meter_ts for r in resumed if r.meter_ts is not None})
    assert got[0] == cut + dt.timedelta(minutes=15)
    assert got[:8] == times[-8:]  # the eight missed quarter hours, from the meter's curve


async def test_curve_job_in_a_cycle_keeps_the_meter_collected(worker: BusWorker) -> None:
    rows: list[Reading] = []
    poller = _poller(worker, rows)
    cycle = await poller.run_cycle(CURVES, [M1])
    assert cycle.succeeded == 1 and cycle.failed == 0
    live = [r for r in rows if r.meter_ts is None]
    assert [r.quantity for r in live] == ["voltage_a"] and live[0].quality is Quality.GOOD
    assert poller.curve_points == len(rows) - 1 >= 2 * 96

"""A cycle's counts and retries, now that a cycle keeps nothing per meter beyond its
bus's list: what is counted per bus, per area and per meter, who is skipped, and that
a dead meter gets one probe where a live one gets the schedule's retries."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import pytest

from collector.config.settings import MeterSettings, ScheduleSettings
from collector.polling.scheduler import BusWorker, Poller, Sinks
from collector.store.records import CycleRecord, Reading
from drivers.tcp import TcpBus
from simulators.bus import BusServer, parse_faults
from simulators.dlt645 import make_meters

ADDRESSES = [f"{i:012d}" for i in range(1, 6)]
METERS = [MeterSettings(meter_id=f"m{i}", address=a, bus="b1", area="A1" if i <= 2 else "A2")
          for i, a in enumerate(ADDRESSES, 1)]
ELSEWHERE = MeterSettings(meter_id="x1", address="000000000099", bus="b9", area="A2")


@pytest.fixture
async def line() -> AsyncIterator[tuple[BusServer, BusWorker]]:
    async with BusServer(make_meters(ADDRESSES, seed=7), baud=1_000_000) as server:
        worker = BusWorker("b1", TcpBus("127.0.0.1", server.port, td=0.1, tb=0.05))
        await worker.start()
        try:
            yield server, worker
        finally:
            await worker.stop()


async def test_counts_per_bus_area_and_meter_and_one_probe_for_a_dead_meter(
        line: tuple[BusServer, BusWorker]) -> None:
    server, worker = line
    server.faults = parse_faults(f"dead:{ADDRESSES[1]}")
    readings: list[Reading] = []
    cycles: list[CycleRecord] = []
    poller = Poller({"b1": worker}, Sinks(readings.extend, lambda e: None, cycles.append),
                    dead_after=1)
    sched = ScheduleSettings(name="s", interval=0.2, quantities=("voltage_a",), retries=1,
                             backoff_max=0.4)
    meters = [*METERS, ELSEWHERE]
    asked: list[int] = []
    for _ in range(2):
        before = server.stats.requests
        await poller.run_cycle(sched, meters)
        asked.append(server.stats.requests - before - 4)  # one request per live meter
        await asyncio.sleep(0.35)  # past the dead meter's back-off
    # Live: its first silence is asked once more (retries=1); dead: one probe.
    assert asked == [2, 1]
    for c in cycles:
        assert (c.planned, c.succeeded, c.failed, c.cut) == (6, 4, 2, False)
        assert c.per_bus == {"b1": (4, 5), "b9": (0, 1)}
        assert c.per_area == {"A1": (1, 2), "A2": (3, 4)}
        assert sorted(c.failed_meters) == ["m2", "x1"]
    assert [r.meter for r in readings] == ["m1", "m3", "m4", "m5"] * 2  # in order, once

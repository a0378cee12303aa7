"""The scheduler against the simulator: priority lanes, fairness, back-off, block reads."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import pytest

from collector.records import CycleRecord, Event, Reading
from collector.scheduler import BusWorker, Lane, Poller, Sinks, read_meter
from collector.settings import MeterSettings, ScheduleSettings
from drivers.tcp import TcpBus
from simulators.bus import BusServer, parse_faults
from simulators.dlt645 import make_meters

N = 8
ADDRESSES = [f"{i:012d}" for i in range(1, N + 1)]
METERS = [MeterSettings(meter_id=f"m{i}", address=a, bus="b1", area="A1" if i <= 4 else "A2")
          for i, a in enumerate(ADDRESSES, 1)]


class Collect:
    def __init__(self) -> None:
        self.readings: list[Reading] = []
        self.events: list[Event] = []
        self.cycles: list[CycleRecord] = []

    def sinks(self) -> Sinks:
        return Sinks(self.readings.extend, self.events.append, self.cycles.append)


@pytest.fixture
async def line() -> AsyncIterator[tuple[BusServer, BusWorker]]:
    server = BusServer(make_meters(ADDRESSES, seed=3), baud=19200, td=0.005)
    async with server:
        bus = TcpBus("127.0.0.1", server.port, td=0.15, tb=0.1, guard=0.02)
        worker = BusWorker("b1", bus)
        await worker.start()
        try:
            yield server, worker
        finally:
            await worker.stop()


def schedule(quantities: tuple[str, ...] = ("energy_active_forward_total",), *,
             interval: float = 1.0, retries: int = 0) -> ScheduleSettings:
    return ScheduleSettings(name="s", interval=interval, quantities=quantities, retries=retries,
                            backoff_max=8.0)


async def test_command_jumps_the_queue_of_a_busy_bus(
        line: tuple[BusServer, BusWorker]) -> None:
    _, worker = line
    done: list[str] = []

    def poll(m: MeterSettings):  # type: ignore[no-untyped-def]
        async def run(w: BusWorker) -> None:
            await read_meter(w, m, ("voltage_a", "voltage_b", "voltage_c", "current_a"))
            done.append(m.meter_id)
        return run

    async def command(w: BusWorker) -> None:
        await read_meter(w, METERS[0], ("status_word_3",))
        done.append("command")

    polls = [worker.submit(Lane.SCHEDULED, poll(m)) for m in METERS]
    await asyncio.sleep(0.01)  # the first poll is now in flight
    assert worker.queue_depth(Lane.SCHEDULED) == N - 1
    cmd = worker.submit(Lane.COMMAND, command)
    await asyncio.gather(cmd, *polls)
    # The command ran right after the job in flight, before the 7 queued polls.
    assert done.index("command") == 1
    assert sorted(done[2:]) == sorted(m.meter_id for m in METERS[1:])


async def test_on_demand_before_scheduled_and_command_before_both(
        line: tuple[BusServer, BusWorker]) -> None:
    _, worker = line
    order: list[str] = []

    def job(tag: str):  # type: ignore[no-untyped-def]
        async def run(w: BusWorker) -> None:
            await read_meter(w, METERS[1], ("frequency",))
            order.append(tag)
        return run

    blocker = worker.submit(Lane.SCHEDULED, job("first"))
    await asyncio.sleep(0.005)
    futs = [worker.submit(Lane.SCHEDULED, job("scheduled")),
            worker.submit(Lane.ON_DEMAND, job("on_demand")),
            worker.submit(Lane.COMMAND, job("command"))]
    await asyncio.gather(blocker, *futs)
    assert order == ["first", "command", "on_demand", "scheduled"]


async def test_cycles_are_fair_and_count_success(line: tuple[BusServer, BusWorker]) -> None:
    server, worker = line
    server.faults = parse_faults(f"dead:{ADDRESSES[2]}")
    out = Collect()
    poller = Poller({"b1": worker}, out.sinks())
    sched = schedule(("energy_active_forward_total", "voltage_a"), interval=0.5)
    for _ in range(2):
        await poller.run_cycle(sched, METERS)
    per_meter: dict[str, int] = {}
    for r in out.readings:
        if r.quantity == "voltage_a":
            per_meter[r.meter] = per_meter.get(r.meter, 0) + 1
    # Every live meter read once per cycle, the dead one never: no meter read twice
    # while another waits.
    assert per_meter == {m.meter_id: 2 for m in METERS if m.address != ADDRESSES[2]}
    c = out.cycles[-1]
    assert (c.planned, c.succeeded, c.failed) == (N, N - 1, 1)
    assert c.per_area == {"A1": (3, 4), "A2": (4, 4)}
    assert c.per_bus == {"b1": (7, 8)}
    assert c.failed_meters == ["m3"]  # per meter: who was not read
    assert c.success_rate == pytest.approx(7 / 8)
    assert c.ended is not None and c.ended >= c.started


async def test_dead_meter_backs_off_and_recovers(line: tuple[BusServer, BusWorker]) -> None:
    server, worker = line
    dead = ADDRESSES[4]
    server.faults = parse_faults(f"dead:{dead}")
    out = Collect()
    poller = Poller({"b1": worker}, out.sinks(), dead_after=2)
    sched = schedule(interval=0.2)
    meters = METERS[3:6]
    requests_to_dead: list[int] = []
    for _ in range(6):
        before = server.stats.requests
        await poller.run_cycle(sched, meters)
        requests_to_dead.append(server.stats.requests - before - 2)  # 2 live meters
        await asyncio.sleep(0.2)
    # Tried in cycles 1 and 2, then skipped (backed off), then probed again.
    assert requests_to_dead[:2] == [1, 1]
    assert 0 in requests_to_dead[2:]
    assert [e.kind for e in out.events] == ["meter_dead"]
    assert out.events[0].meter == "m5"
    # Backed-off cycles still count the meter as not collected.
    assert all(c.failed == 1 for c in out.cycles)
    server.faults = ()
    for _ in range(12):
        await asyncio.sleep(0.2)
        c = await poller.run_cycle(sched, meters)
        if c.failed == 0:
            break
    assert c.failed == 0, "the meter never recovered"
    assert out.events[-1].kind == "meter_recovered"
    assert not poller.health["m5"].dead


async def test_backoff_is_exponential_and_capped() -> None:
    poller = Poller({}, Collect().sinks(), dead_after=2)
    waits = [poller.backoff(n, 60, 600) for n in range(1, 8)]
    assert waits == [0, 120, 240, 480, 600, 600, 600]


async def test_block_reads_save_transactions(line: tuple[BusServer, BusWorker]) -> None:
    server, worker = line
    three = ("voltage_a", "voltage_b", "voltage_c")
    before = server.stats.requests
    wire = await worker.submit(Lane.SCHEDULED,
                               lambda w: read_meter(w, METERS[0], three))
    assert [r.name for r in wire] == list(three)
    assert server.stats.requests - before == 1  # one 0201FF00 block read


async def test_meter_refusing_one_quantity_keeps_the_others(
        line: tuple[BusServer, BusWorker]) -> None:
    server, worker = line
    # A money-prepaid meter has no remaining-energy register (00900100).
    wanted = ("voltage_a", "balance_energy", "frequency")
    wire = await worker.submit(Lane.SCHEDULED, lambda w: read_meter(w, METERS[0], wanted))
    assert [r.name for r in wire] == ["voltage_a", "frequency"]
    # Next cycle the refused quantity is not asked again: two requests, not 2 + 1 + 3.
    before = server.stats.requests
    wire = await worker.submit(Lane.SCHEDULED, lambda w: read_meter(w, METERS[0], wanted))
    assert [r.name for r in wire] == ["voltage_a", "frequency"]
    assert server.stats.requests - before == 2


async def test_stop_refuses_queued_jobs_and_finishes_the_one_in_flight(
        line: tuple[BusServer, BusWorker]) -> None:
    _, worker = line
    from collector.scheduler import WorkerStopped

    first = worker.submit(Lane.SCHEDULED, lambda w: read_meter(w, METERS[0], ("voltage_a",)))
    queued = worker.submit(Lane.SCHEDULED, lambda w: read_meter(w, METERS[1], ("voltage_a",)))
    await asyncio.sleep(0.005)
    await worker.stop()
    assert (await first)[0].name == "voltage_a"
    with pytest.raises(WorkerStopped):
        await queued

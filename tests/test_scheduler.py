"""The scheduler against the simulator: priority lanes, fairness, back-off, block reads."""

from __future__ import annotations

import asyncio
import socket
from collections.abc import AsyncIterator

import pytest

from collector.config.profiles import load_profile
from collector.config.settings import MeterSettings, ScheduleSettings
from collector.polling.scheduler import BusWorker, Lane, Poller, Sinks, read_meter
from collector.store.records import CycleRecord, Event, Reading
from drivers.tcp import TcpBus
from simulators.bus import BusServer, parse_faults
from simulators.dlt645 import make_meters
from simulators.modbus import make_modbus_meters

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
    assert [r.quantity for r in wire] == list(three)
    assert server.stats.requests - before == 1  # one 0201FF00 block read


async def test_meter_refusing_one_quantity_keeps_the_others(
        line: tuple[BusServer, BusWorker]) -> None:
    server, worker = line
    # A money-prepaid meter has no remaining-energy register (00900100).
    wanted = ("voltage_a", "balance_energy", "frequency")
    wire = await worker.submit(Lane.SCHEDULED, lambda w: read_meter(w, METERS[0], wanted))
    assert [r.quantity for r in wire] == ["voltage_a", "frequency"]
    # Next cycle the refused quantity is not asked again: two requests, not 2 + 1 + 3.
    before = server.stats.requests
    wire = await worker.submit(Lane.SCHEDULED, lambda w: read_meter(w, METERS[0], wanted))
    assert [r.quantity for r in wire] == ["voltage_a", "frequency"]
    assert server.stats.requests - before == 2


async def test_stop_refuses_queued_jobs_and_finishes_the_one_in_flight(
        line: tuple[BusServer, BusWorker]) -> None:
    _, worker = line
    from collector.polling.scheduler import WorkerStopped

    first = worker.submit(Lane.SCHEDULED, lambda w: read_meter(w, METERS[0], ("voltage_a",)))
    queued = worker.submit(Lane.SCHEDULED, lambda w: read_meter(w, METERS[1], ("voltage_a",)))
    await asyncio.sleep(0.005)
    await worker.stop()
    assert (await first)[0].quantity == "voltage_a"
    with pytest.raises(WorkerStopped):
        await queued


# ---- partial reads -----------------------------------------------------------------------

# Eight quantities, no two in one block: eight requests.
EIGHT = ("energy_active_forward_total", "energy_active_reverse_total", "voltage_a",
         "current_a", "power_active_total", "power_factor_total", "frequency", "status_word_3")


async def test_meter_garbling_one_request_of_eight_keeps_the_other_seven(
        line: tuple[BusServer, BusWorker]) -> None:
    server, worker = line
    # Every reply of meter 1 to voltage A (DI 02010100) garbled, whatever the retries.
    server.faults = parse_faults(f"garble:{ADDRESSES[0]}@02010100")
    out = Collect()
    poller = Poller({"b1": worker}, out.sinks())
    before = server.stats.requests
    c = await poller.run_cycle(schedule(EIGHT, retries=1), METERS[:1])
    assert sorted(r.quantity for r in out.readings) == sorted(q for q in EIGHT
                                                              if q != "voltage_a")
    # Only what failed is asked again: 7 requests, plus voltage A twice (1 + 1 retry)
    # in the first pass and twice more in the retry pass.
    assert server.stats.requests - before == 7 + 4
    # A scheduled value is missing: not collected, but the meter answers, so it is not
    # backed off (no meter_dead) and the missing quantity is counted.
    assert (c.succeeded, c.failed, c.failed_meters) == (0, 1, ["m1"])
    assert poller.values_failed == 1
    assert poller.health["m1"].failures == 0 and not poller.health["m1"].dead
    assert out.events == []


@pytest.mark.parametrize("fault", ["garble", "wrong-address"])
async def test_a_meter_giving_nothing_valid_costs_two_reads_not_one_per_quantity(
        line: tuple[BusServer, BusWorker], fault: str) -> None:
    """A faulty meter (every reply garbled, or from another address) is not asked each
    of its eight quantities with retries, twice: the demo's cycle went from 17 to 25 s."""
    server, worker = line
    server.faults = parse_faults(f"{fault}:{ADDRESSES[0]}")
    out = Collect()
    poller = Poller({"b1": worker}, out.sinks())
    before = server.stats.requests
    c = await poller.run_cycle(schedule(EIGHT, retries=1), METERS[:1])
    assert (c.succeeded, c.failed) == (0, 1)
    assert out.readings == []
    assert server.stats.requests - before == 2 * 2  # two quantities, 1 + 1 retry each


async def test_noisy_line_reads_every_meter_with_default_retries(
        line: tuple[BusServer, BusWorker]) -> None:
    server, worker = line
    server.faults = parse_faults("garble:*:0.2")  # 1 reply in 5 garbled (seeded dice)
    out = Collect()
    poller = Poller({"b1": worker}, out.sinks())
    sched = ScheduleSettings(name="s", interval=1.0, quantities=EIGHT[:4])  # default retries
    for _ in range(2):
        c = await poller.run_cycle(sched, METERS)
        assert (c.succeeded, c.failed) == (N, 0)
    assert len(out.readings) == 2 * N * 4
    assert server.stats.faults["garble"] > 5


# ---- a dead bus --------------------------------------------------------------------------

async def test_silent_bus_is_one_bus_down_alarm_and_its_meters_are_not_queued(
        line: tuple[BusServer, BusWorker]) -> None:
    server, worker = line
    server.faults = parse_faults("dead:*")  # the line behind the concentrator is cut
    out = Collect()
    poller = Poller({"b1": worker}, out.sinks(), dead_after=2)
    sched = schedule(interval=0.2)
    before = server.stats.requests
    for _ in range(3):
        c = await poller.run_cycle(sched, METERS)
        assert (c.succeeded, c.failed) == (0, N)
    # 5 meters silent in a row (and the 6th, already on the line), then 3 probes per
    # cycle, instead of 8 a cycle; no storm of meter_dead.
    assert server.stats.requests - before == 5 + 1 + 3 + 3
    assert [(e.kind, e.bus, e.severity) for e in out.events] == [("bus_down", "b1", 2)]
    assert all(h.failures == 0 and not h.dead for h in poller.health.values())
    server.faults = ()
    c = await poller.run_cycle(sched, METERS)
    assert (c.succeeded, c.failed) == (N, 0)
    assert [e.kind for e in out.events] == ["bus_down", "bus_up"]
    assert out.events[1].severity == 0 and out.events[1].value is not None


async def test_unreachable_concentrator_is_one_alarm_until_it_is_back() -> None:
    probe = socket.socket()
    probe.bind(("127.0.0.1", 0))
    port = probe.getsockname()[1]
    probe.close()  # nothing listens there now: connection refused
    bus = TcpBus("127.0.0.1", port, td=0.15, tb=0.1, guard=0.02, reconnect_max=0.2)
    worker = BusWorker("b1", bus)
    assert not await worker.start()
    out = Collect()
    poller = Poller({"b1": worker}, out.sinks(), dead_after=2)
    sched = schedule(interval=0.2, retries=1)
    try:
        for _ in range(3):
            c = await poller.run_cycle(sched, METERS)
            assert (c.succeeded, c.failed) == (0, N)
        # At start, the first meter's read (1 + 1 retry) and the second's (already on the
        # line), then one probe per cycle: not 2 per meter and cycle (48).
        assert bus.connect_failures <= 1 + 2 + 2 + 1 + 1
        assert [(e.kind, e.severity) for e in out.events] == [("bus_down", 2)]
        assert "link down" in out.events[0].detail
        assert all(h.failures == 0 for h in poller.health.values())
        async with BusServer(make_meters(ADDRESSES, seed=3), port=port, baud=19200,
                             td=0.005):
            for _ in range(5):  # probed once per cycle, outside the bus's reconnect back-off
                await asyncio.sleep(0.2)
                c = await poller.run_cycle(sched, METERS)
                if c.succeeded:
                    break
        assert (c.succeeded, c.failed) == (N, 0)
        assert [e.kind for e in out.events] == ["bus_down", "bus_up"]
    finally:
        await worker.stop()


async def test_a_few_silent_meters_are_not_a_dead_bus(
        line: tuple[BusServer, BusWorker]) -> None:
    server, worker = line
    out = Collect()
    poller = Poller({"b1": worker}, out.sinks(), dead_after=2)
    sched = schedule(interval=0.2)
    await poller.run_cycle(sched, METERS)  # every meter answers once
    # Then six meters in a row lose power (a meter box): more than BUS_DOWN_AFTER, but
    # a meter that answered before still answers, so the line is fine.
    server.faults = parse_faults(",".join(f"dead:{a}" for a in ADDRESSES[:6]))
    c = await poller.run_cycle(sched, METERS)
    assert (c.succeeded, c.failed) == (N - 6, 6)
    assert out.events == []


async def test_dead_meters_at_the_head_of_a_new_line_do_not_keep_it_down(
        line: tuple[BusServer, BusWorker]) -> None:
    server, worker = line
    # At start-up nothing has answered yet: six silent meters first look like a dead line.
    server.faults = parse_faults(",".join(f"dead:{a}" for a in ADDRESSES[:6]))
    out = Collect()
    poller = Poller({"b1": worker}, out.sinks(), dead_after=2)
    sched = schedule(interval=0.2)
    for _ in range(4):  # each down cycle probes other meters, and m7, m8 answer
        c = await poller.run_cycle(sched, METERS)
        if c.succeeded:
            break
    assert [e.kind for e in out.events] == ["bus_down", "bus_up"]
    c = await poller.run_cycle(sched, METERS)
    assert c.succeeded == 2
    # The line stays up; the six meters fail on their own (meter_dead, not bus_down).
    kinds = [e.kind for e in out.events]
    assert kinds.count("bus_down") == 1 and kinds[-1] != "bus_down"
    assert sorted(e.meter or "" for e in out.events if e.kind == "meter_dead") == \
        [m.meter_id for m in METERS[:6]]


async def test_modbus_meter_garbling_one_block_keeps_the_others() -> None:
    ddsy = load_profile("acrel-ddsy1352")
    # Unit 1's replies to the block starting at register 0x0B (voltage, current) garbled.
    server = BusServer([], baud=19200, td=0.005, faults="garble:1@B",
                       modbus=make_modbus_meters(ddsy, [1], seed=2))
    async with server:
        worker = BusWorker("b1", TcpBus("127.0.0.1", server.port, td=0.15, tb=0.05,
                                        guard=0.02))
        await worker.start()
        try:
            out = Collect()
            poller = Poller({"b1": worker}, out.sinks(), profiles=lambda name: ddsy)
            meter = MeterSettings(meter_id="D1", address="1", bus="b1", protocol="modbus",
                                  profile="acrel-ddsy1352")
            wanted = ("energy_active_combined_total", "voltage_a", "current_a",
                      "power_factor_total")
            c = await poller.run_cycle(schedule(wanted, retries=1), [meter])
        finally:
            await worker.stop()
    assert sorted(r.quantity for r in out.readings) == ["energy_active_combined_total",
                                                        "power_factor_total"]
    # Three blocks; only the garbled one asked again (2 attempts in each of 2 passes).
    assert server.stats.requests == 2 + 4
    assert (c.succeeded, c.failed) == (0, 1) and poller.values_failed == 2
    assert not poller.health["D1"].dead

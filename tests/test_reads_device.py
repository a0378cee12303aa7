"""The read paths on the device model: polls, audit re-reads and on-demand reads pass their
options per call, and ask the meter (its kind, its profile) what it can give."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest

from collector.commands.remote import CommandError, read_executor
from collector.config.profiles import load_profile
from collector.config.settings import MeterSettings, ScheduleSettings
from collector.daily.audit_reads import dlt645_has_quantity, profile_has_quantity
from collector.polling.scheduler import BusWorker, Poller, Sinks
from collector.store.records import CycleRecord, Event, Reading
from drivers.tcp import TcpBus
from protocols.modbus import Profile
from simulators.bus import BusServer
from simulators.dlt645 import make_meters
from simulators.modbus import make_modbus_meters

PRESENT = "000000000001"
ABSENT = "000000000009"  # no meter answers there


@pytest.fixture
async def line() -> AsyncIterator[tuple[BusServer, BusWorker]]:
    server = BusServer(make_meters([PRESENT], seed=3), baud=19200, td=0.005)
    async with server:
        worker = BusWorker("b1", TcpBus("127.0.0.1", server.port, td=0.1, tb=0.05,
                                        guard=0.02))
        await worker.start()
        try:
            yield server, worker
        finally:
            await worker.stop()


def _poller(worker: BusWorker, readings: list[Reading]) -> Poller:
    cycles: list[CycleRecord] = []
    events: list[Event] = []
    return Poller({"b1": worker}, Sinks(readings.extend, events.append, cycles.append))


async def test_a_poll_passes_its_retries_per_call_and_leaves_the_session_as_it_was(
        line: tuple[BusServer, BusWorker]) -> None:
    server, worker = line
    readings: list[Reading] = []
    poller = _poller(worker, readings)
    silent = MeterSettings(meter_id="gone", address=ABSENT, bus="b1")
    present = MeterSettings(meter_id="here", address=PRESENT, bus="b1")
    sched = ScheduleSettings(name="s", interval=60.0, quantities=("voltage_a",), retries=2,
                             td=0.05)
    cycle = await poller.run_cycle(sched, [present, silent])
    assert (cycle.succeeded, cycle.failed) == (1, 1)
    assert [r.quantity for r in readings] == ["voltage_a"]
    # The silent meter was asked 1 + 2 times (the schedule's retries), the other once.
    assert server.stats.requests == 1 + 3
    # The line's shared session keeps its own defaults: nothing set on it for the job.
    (session,) = worker.line.sessions()
    assert (session.retries, session.td) == (1, None)


async def test_a_poll_with_no_retries_asks_a_silent_meter_once(
        line: tuple[BusServer, BusWorker]) -> None:
    server, worker = line
    poller = _poller(worker, [])
    silent = MeterSettings(meter_id="gone", address=ABSENT, bus="b1")
    sched = ScheduleSettings(name="s", interval=60.0, quantities=("voltage_a",), retries=0,
                             td=0.05)
    cycle = await poller.run_cycle(sched, [silent])
    assert cycle.failed == 1
    assert server.stats.requests == 1


def test_the_audit_sample_asks_what_each_meter_can_give() -> None:
    v2007 = MeterSettings(meter_id="a", address=PRESENT, bus="b1")
    v1997 = MeterSettings(meter_id="b", address=PRESENT, bus="b1", protocol="dlt645-1997")
    mb = MeterSettings(meter_id="c", address="1", bus="b1", protocol="modbus",
                       profile="acrel-ddsy1352")
    frozen = "freeze_daily_energy_active_forward_total"
    assert dlt645_has_quantity(v2007, frozen)
    assert not dlt645_has_quantity(v1997, frozen)  # no daily freezes in the 1997 edition
    assert not dlt645_has_quantity(mb, "energy_active_combined_total")  # needs its profile
    has = profile_has_quantity(load_profile)
    assert has(mb, "energy_active_combined_total")
    assert not has(mb, frozen)
    assert has(v2007, frozen) and not has(v1997, frozen)


async def test_an_on_demand_read_uses_the_profile_loader_it_is_given() -> None:
    ddsy = load_profile("acrel-ddsy1352")
    loaded: list[str] = []

    def profiles(name: str) -> Profile:
        loaded.append(name)
        return ddsy

    meter = MeterSettings(meter_id="D1", address="1", bus="b1", protocol="modbus",
                          profile="my-ddsy")  # only the given loader knows this name
    server = BusServer([], baud=19200, td=0.005, modbus=make_modbus_meters(ddsy, [1], seed=2))
    async with server:
        worker = BusWorker("b1", TcpBus("127.0.0.1", server.port, td=0.15, tb=0.05,
                                        guard=0.02))
        await worker.start()
        try:
            execute = read_executor(meters=lambda: [meter], workers=lambda: {"b1": worker},
                                    profile=profiles)
            reply = await execute({"meter": "D1", "quantities": ["voltage_a", "energy"]})
            with pytest.raises(CommandError, match="profile has no register"):
                await execute({"meter": "D1", "quantities": ["balance_energy"]})
        finally:
            await worker.stop()
    names = [r["quantity"] for r in reply["readings"]]
    assert names[0] == "voltage_a" and "energy_active_combined_total" in names
    assert all(r["meter"] == "D1" and isinstance(r["value"], float)
               for r in reply["readings"])
    assert loaded and set(loaded) == {"my-ddsy"}

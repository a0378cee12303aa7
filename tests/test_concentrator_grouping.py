"""Class-1 requests for several measuring points in one frame (``group``): a schedule's
cycle over 64 meters behind one concentrator takes 8 frames instead of 64, through the
scheduler's own read path, with readings identical to one frame per meter; a terminal
that refuses several points in one frame is still read, one point at a time."""

from __future__ import annotations

import datetime as dt
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any, ClassVar

from collector.config.settings import MeterSettings, ScheduleSettings
from collector.polling.scheduler import BusWorker, Poller, Sinks
from collector.store.records import Reading
from drivers.concentrator_meter import concentrator_line
from drivers.qgdw3761 import MasterStation, TerminalId
from protocols.qgdw3761 import AFN, DataUnit, Frame, Q3761Error
from simulators.concentrator import ConcentratorSimulator, meter_address
from simulators.meter import ManualClock

A1, A2, METERS = "4403", 1, 64
START = dt.datetime(2026, 6, 1, 10, 0)
SCHEDULE = ScheduleSettings("fast", 60.0, ("energy_active_forward_total", "voltage_a",
                                           "current_a", "power_active_total"))
LEDGER = [MeterSettings(f"M{pn}", meter_address(A2, pn), "tq-1", pn=pn)
          for pn in range(1, METERS + 1)]


class OnePointOnly(ConcentratorSimulator):
    """Denies a class-1 request naming more than one measuring point."""

    def _one_point(self, units: list[DataUnit], frame: Frame) -> list[DataUnit]:
        if len({u.pn for u in units}) > 1:
            raise Q3761Error("one measuring point per request")  # answered AFN00 F2
        return ConcentratorSimulator._class1(self, units, frame)

    _handlers: ClassVar[dict[int, Any]] = {**ConcentratorSimulator._handlers,
                                           AFN.CLASS1: _one_point}


@asynccontextmanager
async def concentrator(group: int, kind: type[ConcentratorSimulator] = ConcentratorSimulator
                       ) -> AsyncIterator[tuple[ConcentratorSimulator, Poller, list[Reading]]]:
    tid = TerminalId(A1, A2)
    async with MasterStation("127.0.0.1", 0, terminals={tid}.__contains__,
                             request_timeout=3.0) as master:
        # the same terminal, meters and frozen clock each time: the same values
        sim = kind("127.0.0.1", master.port, a1=A1, a2=A2, meters=METERS, seed=7,
                   clock=ManualClock(START))
        sim.start()
        line = concentrator_line(master, tid, group=group)
        worker = BusWorker("tq-1", line.bus)
        worker.line = line
        await worker.start()
        got: list[Reading] = []
        poller = Poller({"tq-1": worker}, Sinks(got.extend, lambda e: None, lambda c: None))
        try:
            await master.wait_online(tid, 10)
            yield sim, poller, got
        finally:
            await worker.stop(1.0)
            await sim.stop()


async def cycle(sim: ConcentratorSimulator, poller: Poller, got: list[Reading]
                ) -> tuple[int, set[tuple[str, str, float, str, int]]]:
    """Class-1 frames the cycle took, and its readings (meter, quantity, value, unit,
    quality)."""
    frames, got[:] = sim.stats.requests[AFN.CLASS1], []
    record = await poller.run_cycle(SCHEDULE, LEDGER)
    assert record.succeeded == METERS and record.failed == 0
    return (sim.stats.requests[AFN.CLASS1] - frames,
            {(r.meter, r.quantity, r.value, r.unit, int(r.quality)) for r in got})


async def test_a_cycle_of_64_meters_in_8_frames_with_the_same_readings() -> None:
    async with concentrator(group=1) as (sim, poller, got):
        await cycle(sim, poller, got)
        frames1, readings1 = await cycle(sim, poller, got)
    async with concentrator(group=8) as (sim, poller, got):
        first, _ = await cycle(sim, poller, got)  # meters become known as they are read
        frames8, readings8 = await cycle(sim, poller, got)
    assert frames1 == METERS and first == METERS
    assert frames8 == METERS // 8
    assert len(readings1) == METERS * len(SCHEDULE.quantities)
    assert readings8 == readings1


async def test_a_terminal_refusing_several_points_is_read_one_by_one() -> None:
    async with concentrator(group=1) as (sim, poller, got):
        _, expected = await cycle(sim, poller, got)
    async with concentrator(group=8, kind=OnePointOnly) as (sim, poller, got):
        await cycle(sim, poller, got)
        frames, readings = await cycle(sim, poller, got)
    assert readings == expected
    # one group frame refused, then one frame per meter for the rest of the session
    assert frames == METERS + 1


def test_group_is_a_concentrator_key(tmp_path: Path) -> None:
    """``group`` in [[concentrator]]: 1 by default, 1-64, refused otherwise with its line."""
    from collector.config import ConfigError, load_settings

    base = """
[collector]
id = "g"
data_dir = "data"

[[listener]]
name = "dialin"
listen = "127.0.0.1:9001"
protocol = "3761"

[[concentrator]]
name = "tq-1"
a1 = "4403"
a2 = 1
listener = "dialin"
{group}
[[meter]]
meter_id = "M1"
address = "000001000001"
bus = "tq-1"
pn = 1

[schedule.s]
interval = "15m"
quantities = ["energy"]
"""
    cfg = tmp_path / "amic.toml"
    cfg.write_text(base.format(group=""))
    assert load_settings(cfg).concentrators[0].group == 1
    cfg.write_text(base.format(group="group = 8"))
    assert load_settings(cfg).concentrators[0].group == 8
    cfg.write_text(base.format(group="group = 0"))
    try:
        load_settings(cfg)
    except ConfigError as e:
        (text,) = [str(p) for p in e.problems]
        assert "amic.toml:16" in text and 'key "group"' in text and "got 0" in text
    else:
        raise AssertionError("group = 0 accepted")

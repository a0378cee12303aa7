"""``amic demo``: the daemon on the embedded store, polling built-in simulators: RS-485
lines behind serial servers, and a Q/GDW 1376.1 concentrator that dials in."""

from __future__ import annotations

import asyncio
import datetime as dt
import logging
import sqlite3
import time
from dataclasses import dataclass, field
from decimal import Decimal
from pathlib import Path

import click

from collector.config.settings import (
    BusSettings,
    CollectorSettings,
    ConcentratorSettings,
    ListenerSettings,
    MeterSettings,
    ScheduleSettings,
    Settings,
)
from collector.daily.backfill import backfill_meter
from collector.daily.reports import AreaLineLoss, line_loss, meter_energies
from collector.service.daemon import Daemon
from collector.service.notify import Notifier
from collector.store import Store
from collector.store.records import CycleRecord
from simulators.bus import BusServer
from simulators.concentrator import ConcentratorSimulator, meter_address
from simulators.dlt645 import SimulatedMeter, make_meters
from simulators.meter import MeterConfig, MeterModel

QUANTITIES = ("energy_active_forward_total", "voltage_a", "voltage_b", "voltage_c",
              "current_a", "current_b", "current_c", "power_active_total")

# The concentrator that dials in: one transformer area read through Q/GDW 1376.1.
LISTENER = "dialin"
CONCENTRATOR = "tq-3761"
AREA = "TQ-3761"
A1, A2 = "4403", 1
AREA_SCHEDULE = "demo-3761"


LOSS = Decimal("0.06")  # of what the area's master meter supplies


def _area_plan(meters: int) -> list[MeterSettings]:
    """The area behind the concentrator: its master meter at pn 1, customers after it."""
    return [MeterSettings(meter_id=f"Q{pn:03d}", address=meter_address(A2, pn),
                          bus=CONCENTRATOR, area=AREA, pn=pn,
                          role="area_master" if pn == 1 else "customer")
            for pn in range(1, meters + 1)]


def _area_meters(meters: int) -> list[SimulatedMeter]:
    """The simulated meters at pn 1..N: the customers' seeded loads, and a master meter
    that supplies them plus :data:`LOSS` (so the area's line loss is that)."""
    config = MeterConfig(prepaid=False)
    customers = [MeterModel(meter_address(A2, pn), config, seed=f"demo/{pn}")
                 for pn in range(2, meters + 1)]
    supplied = sum((c.base_kw for c in customers), Decimal(0)) / (1 - LOSS)
    master = MeterModel(meter_address(A2, 1), MeterConfig(prepaid=False, base_kw=supplied),
                        seed="demo/1")
    return [SimulatedMeter(m) for m in (master, *customers)]


@dataclass
class _AreaRun:
    """What happened to the area behind the concentrator."""

    sim: ConcentratorSimulator | None = None
    port: int = 0
    cycle: CycleRecord | None = None
    backfilled: int = 0  # days of daily freezes read (AFN0D)
    loss: AreaLineLoss | None = None
    notes: list[str] = field(default_factory=list)


def _plan(buses: int, meters: int) -> tuple[list[list[MeterSettings]], list[str]]:
    """Meters per bus in two transformer areas each; faults for a few of them."""
    plans: list[list[MeterSettings]] = []
    faults: list[str] = []
    for b in range(1, buses + 1):
        ms = []
        for i in range(1, meters + 1):
            area = f"TQ-{b:02d}{1 if i <= (meters + 1) // 2 else 2}"
            first_of_area = i in (1, (meters + 1) // 2 + 1)
            ms.append(MeterSettings(meter_id=f"M{b:02d}{i:03d}", address=f"{b:02d}{i:010d}",
                                    bus=f"conc-{b}", area=area,
                                    role="area_master" if first_of_area else "customer"))
        plans.append(ms)
        # A dead meter, one that garbles its replies and one that answers as its neighbour.
        if meters >= 10:
            faults.append(f"dead:{ms[6].address},garble:{ms[-4].address},"
                          f"wrong-address:{ms[-2].address}")
        else:
            faults.append("")
    return plans, faults


async def _demo(data_dir: Path, buses: int, meters: int, baud: int, td_ms: int,
                seconds: float, area_meters: int) -> tuple[Daemon, float, _AreaRun]:
    plans, faults = _plan(buses, meters)
    area = _area_plan(area_meters)
    servers = [BusServer(make_meters([m.address for m in plan], seed=b), baud=baud,
                         td=td_ms / 1000, faults=f)
               for b, (plan, f) in enumerate(zip(plans, faults, strict=True))]
    for s in servers:
        await s.start()
    settings = Settings(
        source=Path("<amic demo>"),
        collector=CollectorSettings(id="demo", data_dir=data_dir, commit_interval=0.5),
        buses=tuple(BusSettings(name=f"conc-{b + 1}", kind="tcp", host="127.0.0.1",
                                port=s.port, line_baud=baud, td=0.3, tb=0.3)
                    for b, s in enumerate(servers)),
        meters=tuple(m for plan in plans for m in plan) + tuple(area),
        schedules=(ScheduleSettings(name="demo", interval=3600, quantities=QUANTITIES,
                                    retries=1,
                                    meters=tuple(f"bus:conc-{b}" for b in range(1, buses + 1))),
                   ),
        listeners=(ListenerSettings(name=LISTENER, listen="127.0.0.1:0", protocol="3761",
                                    request_timeout=3.0),) if area else (),
        concentrators=(ConcentratorSettings(CONCENTRATOR, A1, A2, LISTENER),) if area else (),
    )
    # The area's schedule is not in the settings: the daemon starts its schedules as soon
    # as it is up, and a concentrator can only dial in once the daemon has opened the
    # listener, so the first cycle could find it offline.  The demo runs one cycle of it
    # on the daemon's poller once the concentrator has logged in.
    area_schedule = ScheduleSettings(name=AREA_SCHEDULE, interval=3600,
                                     quantities=QUANTITIES, retries=1,
                                     meters=(f"bus:{CONCENTRATOR}",))
    click.echo(f"started {buses} simulated concentrators x {meters} DL/T645-2007 meters on "
               f"loopback ({baud} baud 8E1 timing, Td {td_ms} ms; "
               f"{3 * buses if meters >= 10 else 0} faulty meters)")
    if area:
        click.echo(f"and a Q/GDW 1376.1 concentrator ({CONCENTRATOR}, A1 {A1} A2 {A2}) with "
                   f"{area_meters} meters of area {AREA} that dials in to the listener")
    click.echo(f"running the collector on the embedded store {data_dir / 'amic.db'}")
    daemon = Daemon(settings, notifier=Notifier.from_env({}), align=False)
    t0 = time.monotonic()
    run = _AreaRun()

    async def read_area() -> None:
        # Dial in as soon as the listener is up: the daemon's start-up waits a moment for
        # the concentrator's login (in vain if it came later).
        while LISTENER not in daemon.stations:
            await asyncio.sleep(0.01)
        run.port = daemon.stations[LISTENER].port
        run.sim = ConcentratorSimulator("127.0.0.1", run.port, a1=A1, a2=A2,
                                        meters=_area_meters(area_meters), reconnect_delay=0.5)
        run.sim.start()
        await run.sim.logged_in.wait()
        click.echo(f"  {time.monotonic() - t0:5.1f} s  concentrator {CONCENTRATOR} dialled in "
                   f"to 127.0.0.1:{run.port} and logged in")
        while daemon.poller is None:
            await asyncio.sleep(0.05)
        run.cycle = await daemon.poller.run_cycle(area_schedule, area)
        await _area_line_loss(daemon, area, run)

    async def progress() -> None:
        while True:
            await asyncio.sleep(1.0)
            poller = daemon.poller
            if poller is None:
                continue
            done = "demo" in poller.last_cycle and (area_task is None or area_task.done())
            if done or time.monotonic() - t0 > seconds:
                daemon.stop_requested.set()
                return
            c = poller.current.get("demo")
            if c is not None:
                click.echo(f"  {time.monotonic() - t0:5.1f} s  {c.succeeded + c.failed:4d}/"
                           f"{c.planned} meters, {c.failed} failed, "
                           f"{daemon.readings_seen} readings")

    area_task = asyncio.create_task(read_area()) if area else None
    tasks = [asyncio.create_task(progress()), *([area_task] if area_task else [])]
    try:
        await daemon.run()
    finally:
        for t in tasks:
            t.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        if area_task is not None and not area_task.cancelled() \
                and area_task.exception() is not None:
            run.notes.append(f"area {AREA} not read to the end: {area_task.exception()!r}")
        if run.sim is not None:
            await run.sim.stop()
        for s in servers:
            await s.stop()
    return daemon, time.monotonic() - t0, run


async def _area_line_loss(daemon: Daemon, area: list[MeterSettings], run: _AreaRun) -> None:
    """Yesterday's line loss of the area from the daily freezes its concentrator keeps
    (AFN0D F161), backfilled as the daily job does."""
    zone = dt.datetime.now().astimezone().tzinfo  # the simulated meters keep local time
    assert zone is not None and daemon.store is not None and daemon.writer is not None
    worker = daemon.buses[CONCENTRATOR].worker
    for m in area:
        result = await backfill_meter(worker, m, daemon.store, days=2, tz=zone)
        daemon.writer.put_many(result.readings)
        run.backfilled += len(result.filled)
        run.notes += result.notes
    await daemon.writer.flush()
    yesterday = dt.datetime.now(zone).date() - dt.timedelta(days=1)
    run.loss = next((a for a in line_loss(daemon.store, yesterday, zone,
                                          energy=meter_energies(area)) if a.area == AREA),
                    None)


def _last_reading_id(data_dir: Path) -> int:
    """The newest reading id of an earlier run's store (0: none)."""
    path = data_dir / "amic.db"
    if not path.is_file():
        return 0
    conn = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
    try:
        return int(conn.execute("SELECT coalesce(max(id), 0) FROM readings").fetchone()[0])
    except sqlite3.Error:  # not a store yet: the daemon says so
        return 0
    finally:
        conn.close()


def _summary(daemon: Daemon, elapsed: float, after_id: int = 0,
             run: _AreaRun | None = None) -> None:
    """This run's figures: readings with ids above ``after_id`` (an earlier run's)."""
    run = run or _AreaRun()
    area_cycle, sim = run.cycle, run.sim
    cycle = daemon.poller.last_cycle.get("demo") if daemon.poller else None
    store = Store(daemon.settings.collector.data_dir / "amic.db")
    conn = store.connect()
    try:
        stored = dict(conn.execute(
            "SELECT m.area, count(*) FROM readings r JOIN meters m ON m.meter_id = r.meter "
            "WHERE r.id > ? GROUP BY m.area", (after_id,)).fetchall())
        integrity = conn.execute("PRAGMA integrity_check").fetchone()[0]
    finally:
        conn.close()
    click.echo("")
    click.echo(f"{'area':<10}{'meters':>8}{'read':>6}{'success':>10}{'readings':>10}")
    per_area = dict(cycle.per_area) if cycle else {}
    if area_cycle is not None:
        per_area.update(area_cycle.per_area)
    for area, (ok, total) in sorted(per_area.items()):
        click.echo(f"{area:<10}{total:>8}{ok:>6}{100 * ok / total:>9.1f}%"
                   f"{stored.get(area, 0):>10}")
    click.echo("")
    click.echo(f"{'bus':<10}{'meters':>8}{'success':>10}{'requests':>10}{'timeouts':>10}"
               f"{'busy s':>8}{'ms/request':>12}")
    slowest = ("", 0.0)
    per_bus = cycle.per_bus if cycle else {}
    for name, entry in sorted(daemon.buses.items()):
        if isinstance(entry.settings, ConcentratorSettings):
            continue  # its own table below
        bus = entry.worker.bus
        ok, total = per_bus.get(name, (0, 0))
        per_request = 1000 * bus.busy_time / bus.transactions if bus.transactions else 0.0
        if per_request > slowest[1]:
            slowest = (name, per_request)
        click.echo(f"{name:<10}{total:>8}{100 * ok / max(total, 1):>9.1f}%"
                   f"{bus.transactions:>10}{bus.timeouts:>10}{bus.busy_time:>8.1f}"
                   f"{per_request:>12.0f}")
    station = daemon.stations.get(LISTENER)
    if station is not None:
        counters = station.counters()
        requests = sim.stats.requests if sim is not None else {}
        ok, total = area_cycle.per_bus.get(CONCENTRATOR, (0, 0)) if area_cycle else (0, 0)
        click.echo("")
        click.echo(f"{'concentrator':<14}{'a1/a2':>8}{'meters':>8}{'success':>10}"
                   f"{'AFN0C':>7}{'AFN0D':>7}{'AFN10':>7}{'logins':>8}")
        click.echo(f"{CONCENTRATOR:<14}{f'{A1}/{A2}':>8}{total:>8}"
                   f"{100 * ok / max(total, 1):>9.1f}%{requests.get(0x0C, 0):>7}"
                   f"{requests.get(0x0D, 0):>7}{requests.get(0x10, 0):>7}"
                   f"{counters['logins']:>8}")
        click.echo(f"(Q/GDW 1376.1, dialled in to listener {LISTENER} on 127.0.0.1:"
                   f"{run.port}; AFN0C: class-1 data, AFN0D: daily freezes, "
                   f"{run.backfilled} days backfilled; AFN10: forwarded DL/T645)")
        loss = run.loss
        if loss is not None and loss.complete:
            pct = f" ({loss.loss_pct:.1f}%)" if loss.loss_pct is not None else ""
            click.echo(f"line loss of {AREA} on {loss.day} from its daily freezes: supplied "
                       f"{loss.supplied_kwh:.2f} kWh, sold {loss.sold_kwh:.2f} kWh, loss "
                       f"{loss.loss_kwh:.2f} kWh{pct}")
        elif loss is not None:
            click.echo(f"line loss of {AREA} on {loss.day}: incomplete: {loss.reason}")
        for note in dict.fromkeys(run.notes):
            click.echo(f"  {note}")
    click.echo("")
    if cycle is not None:
        behind = (f", {area_cycle.succeeded}/{area_cycle.planned} behind concentrator "
                  f"{CONCENTRATOR}" if area_cycle is not None else "")
        click.echo(f"cycle: {cycle.succeeded}/{cycle.planned} meters read "
                   f"({100 * cycle.success_rate:.1f}%){behind}, "
                   f"{sum(stored.values())} readings stored "
                   f"and committed, in {elapsed:.1f} s; slowest bus {slowest[0]} "
                   f"({slowest[1]:.0f} ms per request); store integrity: {integrity}")
    else:
        click.echo(f"stopped after {elapsed:.0f} s before the cycle completed; "
                   f"{sum(stored.values())} readings stored")
    click.echo(f"look at them: amic query --data-dir {daemon.settings.collector.data_dir} "
               f"--area {min(per_area) if per_area else 'TQ-011'}")


@click.command()
@click.option("--buses", default=2, show_default=True, help="Simulated concentrators.")
@click.option("--meters", default=50, show_default=True, help="Meters behind each.")
@click.option("--baud", default=9600, show_default=True, help="RS-485 line rate to emulate.")
@click.option("--td-ms", default=20, show_default=True, help="Meter reply delay.")
@click.option("--area-meters", default=6, show_default=True,
              help="Meters behind the Q/GDW 1376.1 concentrator that dials in (0: none).")
@click.option("--seconds", default=120.0, show_default=True,
              help="Stop after this long even if the cycle is not complete.")
@click.option("--data-dir", type=click.Path(file_okay=False, path_type=Path),
              default=Path("amic-demo-data"), show_default=True,
              help="Where the embedded store goes.")
@click.option("-v", "--verbose", is_flag=True, help="Show the daemon's log lines.")
def demo(buses: int, meters: int, baud: int, td_ms: int, area_meters: int, seconds: float,
         data_dir: Path, verbose: bool) -> None:
    """Run the collector against built-in simulators and summarise one polling cycle."""
    if buses < 1 or meters < 2:
        raise click.BadParameter("need at least one bus and two meters")
    if area_meters == 1 or not 0 <= area_meters <= 2040:
        raise click.BadParameter("an area needs its master meter and a customer: 0 or 2-2040",
                                 param_hint="--area-meters")
    logging.basicConfig(level=logging.INFO if verbose else logging.WARNING,
                        format="%(levelname)s %(name)s: %(message)s", force=True)
    after_id = _last_reading_id(data_dir.resolve())
    daemon, elapsed, run = asyncio.run(_demo(data_dir.resolve(), buses, meters, baud, td_ms,
                                             seconds, area_meters))
    _summary(daemon, elapsed, after_id, run)

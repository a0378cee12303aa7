"""``amic demo``: the daemon on the embedded store, polling built-in simulators."""

from __future__ import annotations

import asyncio
import logging
import sqlite3
import time
from pathlib import Path

import click

from collector.config.settings import (
    BusSettings,
    CollectorSettings,
    MeterSettings,
    ScheduleSettings,
    Settings,
)
from collector.service.daemon import Daemon
from collector.service.notify import Notifier
from collector.store import Store
from simulators.bus import BusServer
from simulators.dlt645 import make_meters

QUANTITIES = ("energy_active_forward_total", "voltage_a", "voltage_b", "voltage_c",
              "current_a", "current_b", "current_c", "power_active_total")


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
                seconds: float) -> tuple[Daemon, float]:
    plans, faults = _plan(buses, meters)
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
        meters=tuple(m for plan in plans for m in plan),
        schedules=(ScheduleSettings(name="demo", interval=3600, quantities=QUANTITIES,
                                    retries=1),),
    )
    click.echo(f"started {buses} simulated concentrators x {meters} DL/T645-2007 meters on "
               f"loopback ({baud} baud 8E1 timing, Td {td_ms} ms; "
               f"{3 * buses if meters >= 10 else 0} faulty meters)")
    click.echo(f"running the collector on the embedded store {data_dir / 'amic.db'}")
    daemon = Daemon(settings, notifier=Notifier.from_env({}), align=False)
    t0 = time.monotonic()

    async def progress() -> None:
        while True:
            await asyncio.sleep(1.0)
            poller = daemon.poller
            if poller is None:
                continue
            if "demo" in poller.last_cycle or time.monotonic() - t0 > seconds:
                daemon.stop_requested.set()
                return
            c = poller.current.get("demo")
            if c is not None:
                click.echo(f"  {time.monotonic() - t0:5.1f} s  {c.succeeded + c.failed:4d}/"
                           f"{c.planned} meters, {c.failed} failed, "
                           f"{daemon.readings_seen} readings")

    watcher = asyncio.create_task(progress())
    try:
        await daemon.run()
    finally:
        watcher.cancel()
        for s in servers:
            await s.stop()
    return daemon, time.monotonic() - t0


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


def _summary(daemon: Daemon, elapsed: float, after_id: int = 0) -> None:
    """This run's figures: readings with ids above ``after_id`` (an earlier run's)."""
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
    per_area = cycle.per_area if cycle else {}
    for area, (ok, total) in sorted(per_area.items()):
        click.echo(f"{area:<10}{total:>8}{ok:>6}{100 * ok / total:>9.1f}%"
                   f"{stored.get(area, 0):>10}")
    click.echo("")
    click.echo(f"{'bus':<10}{'meters':>8}{'success':>10}{'requests':>10}{'timeouts':>10}"
               f"{'busy s':>8}{'ms/request':>12}")
    slowest = ("", 0.0)
    per_bus = cycle.per_bus if cycle else {}
    for name, entry in sorted(daemon.buses.items()):
        bus = entry.worker.bus
        ok, total = per_bus.get(name, (0, 0))
        per_request = 1000 * bus.busy_time / bus.transactions if bus.transactions else 0.0
        if per_request > slowest[1]:
            slowest = (name, per_request)
        click.echo(f"{name:<10}{total:>8}{100 * ok / max(total, 1):>9.1f}%"
                   f"{bus.transactions:>10}{bus.timeouts:>10}{bus.busy_time:>8.1f}"
                   f"{per_request:>12.0f}")
    click.echo("")
    if cycle is not None:
        click.echo(f"cycle: {cycle.succeeded}/{cycle.planned} meters read "
                   f"({100 * cycle.success_rate:.1f}%), {sum(stored.values())} readings stored "
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
@click.option("--seconds", default=120.0, show_default=True,
              help="Stop after this long even if the cycle is not complete.")
@click.option("--data-dir", type=click.Path(file_okay=False, path_type=Path),
              default=Path("amic-demo-data"), show_default=True,
              help="Where the embedded store goes.")
@click.option("-v", "--verbose", is_flag=True, help="Show the daemon's log lines.")
def demo(buses: int, meters: int, baud: int, td_ms: int, seconds: float, data_dir: Path,
         verbose: bool) -> None:
    """Run the collector against built-in simulators and summarise one polling cycle."""
    if buses < 1 or meters < 2:
        raise click.BadParameter("need at least one bus and two meters")
    logging.basicConfig(level=logging.INFO if verbose else logging.WARNING,
                        format="%(levelname)s %(name)s: %(message)s", force=True)
    after_id = _last_reading_id(data_dir.resolve())
    daemon, elapsed = asyncio.run(_demo(data_dir.resolve(), buses, meters, baud, td_ms,
                                        seconds))
    _summary(daemon, elapsed, after_id)

"""``amic demo``: built-in simulators on loopback, read through amic's own drivers."""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass, field
from decimal import Decimal

import click

from drivers.dlt645 import Dlt645Session
from drivers.errors import DriverError
from drivers.tcp import TcpBus
from protocols.dlt645 import StatusWord
from simulators.bus import BusServer
from simulators.dlt645 import make_meters

QUANTITIES = ("energy_active_forward_total", "voltage_a", "current_a", "power_active_total",
              "balance_amount", "status_word_3")
COLUMNS = (("meter", 12), ("bus", 6), ("kWh", 10), ("V", 6), ("A", 7), ("kW", 7),
           ("yuan", 8), ("relay", 6))


@dataclass
class BusResult:
    name: str
    rows: list[tuple[str, ...]] = field(default_factory=list)
    failures: list[str] = field(default_factory=list)
    transactions: int = 0
    seconds: float = 0.0


def _fmt(value: object) -> str:
    return str(value) if isinstance(value, Decimal) else "-"


async def _poll_bus(name: str, port: int, addresses: list[str], baud: int,
                    result: BusResult) -> None:
    start = time.perf_counter()
    async with TcpBus("127.0.0.1", port, td=0.5, tb=0.5, line_baud=baud) as bus:
        session = Dlt645Session(bus, retries=1)
        for address in addresses:
            try:
                readings = {r.name: r.value for r in await session.read_many(address, QUANTITIES)}
            except DriverError as e:
                result.failures.append(str(e))
                click.echo(f"  {name}: {address} failed: {type(e).__name__}")
                continue
            sw3 = readings.get("status_word_3")
            relay = "open" if isinstance(sw3, StatusWord) and sw3.fields["relay_open"] else \
                "closed"
            result.rows.append((address, name, *(_fmt(readings[q]) for q in QUANTITIES[:5]),
                                relay))
            click.echo(f"  {name}: {address} read ({len(readings)} quantities)")
        result.transactions = bus.transactions
    result.seconds = time.perf_counter() - start


async def _demo(buses: int, meters: int, baud: int, td_ms: int) -> list[BusResult]:
    servers = []
    plans = []
    for b in range(buses):
        addresses = [f"{b + 1:02d}{i:010d}" for i in range(1, meters + 1)]
        # One dead meter and one answering with a wrong address on every bus.
        faults = f"dead:{addresses[-1]},wrong-address:{addresses[len(addresses) // 2]}"
        servers.append(BusServer(make_meters(addresses, seed=b), baud=baud, td=td_ms / 1000,
                                 faults=faults if meters >= 3 else ""))
        plans.append((f"bus{b + 1}", addresses))
    for s in servers:
        await s.start()
    try:
        click.echo(f"started {buses} simulated concentrators x {meters} DL/T645-2007 meters "
                   f"({baud} baud 8E1 timing, Td {td_ms} ms) on loopback")
        results = [BusResult(name) for name, _ in plans]
        await asyncio.gather(*(
            _poll_bus(name, s.port, addresses, baud, r)
            for (name, addresses), s, r in zip(plans, servers, results, strict=True)
        ))
        return results
    finally:
        for s in servers:
            await s.stop()


@click.command()
@click.option("--buses", default=2, show_default=True, help="Simulated concentrators.")
@click.option("--meters", default=6, show_default=True, help="Meters behind each.")
@click.option("--baud", default=2400, show_default=True, help="RS-485 line rate to emulate.")
@click.option("--td-ms", default=20, show_default=True, help="Meter reply delay.")
def demo(buses: int, meters: int, baud: int, td_ms: int) -> None:
    """Start built-in simulators and read their meters through amic's drivers."""
    if buses < 1 or meters < 1:
        raise click.BadParameter("need at least one bus and one meter")
    results = asyncio.run(_demo(buses, meters, baud, td_ms))
    click.echo("")
    click.echo("  ".join(h.ljust(w) for h, w in COLUMNS))
    for r in results:
        for row in r.rows:
            click.echo("  ".join(v.ljust(w) for v, (_, w) in zip(row, COLUMNS, strict=True)))
    click.echo("")
    total = sum(len(r.rows) + len(r.failures) for r in results)
    ok = sum(len(r.rows) for r in results)
    click.echo(f"meters read: {ok}/{total} ({100 * ok / total:.0f}%)")
    for r in results:
        click.echo(f"{r.name}: {len(r.rows)} ok, {len(r.failures)} failed, "
                   f"{r.transactions} transactions in {r.seconds:.1f} s")
        for failure in r.failures:
            click.echo(f"  {failure}")

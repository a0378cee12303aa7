"""``amic simulate``: meter simulators to test the collector against."""

from __future__ import annotations

import asyncio
import datetime as dt
import logging
import signal
import sys
from collections.abc import Callable, Coroutine
from pathlib import Path
from typing import Any

import click

from collector.service.metrics import parse_listen
from protocols.quantities import BROADCAST_ADDRESS, normalise_address
from simulators.bus import BusServer, BusStats, parse_faults, serve
from simulators.dlt645 import DEFAULT_PASSWORDS, make_meters, parse_password
from simulators.meter import MeterConfig

BAUDS = ("600", "1200", "2400", "4800", "9600", "19200")


@click.group()
def simulate() -> None:
    """Run meter simulators."""


def read_addresses(path: Path) -> list[str]:
    """One 12-digit meter address a line; ``#`` starts a comment.  ValueError names the line."""
    out: list[str] = []
    seen: set[str] = set()
    for n, raw in enumerate(path.read_text().splitlines(), 1):
        text = raw.split("#", 1)[0].strip()
        if not text:
            continue
        try:
            address = normalise_address(text)
        except ValueError as e:
            raise ValueError(f"{path}:{n}: {e}") from None
        if "A" in address or address == BROADCAST_ADDRESS:
            raise ValueError(f"{path}:{n}: {address} is a wildcard or broadcast, not a meter")
        if address in seen:
            raise ValueError(f"{path}:{n}: {address} appears twice")
        seen.add(address)
        out.append(address)
    if not out:
        raise ValueError(f"{path}: no meter addresses")
    return out


def _url_host(host: str) -> str:
    return f"[{host}]" if ":" in host else host


@simulate.command("dlt645")
@click.option("--listen", default="127.0.0.1:0", show_default=True, metavar="HOST:PORT",
              help="TCP address of the bus (port 0 picks a free one).")
@click.option("--meters", type=click.IntRange(1, 9999), default=1, show_default=True,
              help="Meters on the bus, addresses 000000000001..N.")
@click.option("--addresses", type=click.Path(exists=True, dir_okay=False, path_type=Path),
              help="File of meter addresses, one a line (# comments); replaces --meters.")
@click.option("--baud", type=click.Choice(BAUDS), default="2400", show_default=True,
              help="Line rate: paces every byte (11 bits each).")
@click.option("--td-ms", type=click.IntRange(0, 2000), default=20, show_default=True,
              help="Reply delay Td after the request (meters: 20-500 ms).")
@click.option("--faults", default="", metavar="KIND:ADDR[:P],...",
              help="Faults: dead, garble, slow, truncate, wrong-address; ADDR * = every meter, "
                   "ADDR@DI = only requests of that DI (hex); P = probability.")
@click.option("--slow-ms", type=click.IntRange(0, 60000), default=2000, show_default=True,
              help="Reply delay of meters with the slow fault.")
@click.option("--pty", "use_pty", is_flag=True,
              help="Also serve the bus on a pseudo-terminal (serial://PATH).")
@click.option("--seed", type=int, default=0, show_default=True,
              help="Seed of loads, noise and fault dice.")
@click.option("--password", "passwords", multiple=True, metavar="LLPPPPPP",
              help="Meter password, level then 6 digits (repeat for more levels) "
                   f"[default: {', '.join(DEFAULT_PASSWORDS)}].")
@click.option("--version", "edition", type=click.Choice(["2007", "1997"]), default="2007",
              show_default=True, help="DL/T645 edition the meters speak.")
@click.option("--max-frame-data", type=click.IntRange(7, 255), default=200, show_default=True,
              help="Longest reply data field; longer values need follow-up frames.")
@click.option("--clock-offset", type=int, default=0, show_default=True, metavar="SECONDS",
              help="Meter clocks start this far from the host clock.")
@click.option("--sync-once-a-day/--sync-any-time", default=True, show_default=True,
              help="Accept broadcast time sync once a day (as meters do) or every time.")
@click.option("-v", "--verbose", count=True, help="Log lines (-v) and every exchange (-vv).")
@click.pass_context
def dlt645(ctx: click.Context, listen: str, meters: int, addresses: Path | None, baud: str,
           td_ms: int, faults: str, slow_ms: int, use_pty: bool, seed: int,
           passwords: tuple[str, ...], edition: str, max_frame_data: int, clock_offset: int,
           sync_once_a_day: bool, verbose: int) -> None:
    """DL/T645 meters on one RS-485 bus behind a TCP port (and a pty).

    Prints ``listening on tcp://HOST:PORT`` (and ``listening on serial://PATH``) and
    serves until SIGINT or SIGTERM.
    """
    try:
        host, port = parse_listen(listen)
        fault_list = parse_faults(faults)
        for p in passwords:
            parse_password(p)
        if addresses is not None:
            meter_addresses = read_addresses(addresses)
            source = ctx.get_parameter_source("meters")
            if source is click.core.ParameterSource.COMMANDLINE \
                    and meters != len(meter_addresses):
                raise ValueError(f"--meters {meters} but {addresses} holds "
                                 f"{len(meter_addresses)} addresses")
        else:
            meter_addresses = [f"{i:012d}" for i in range(1, meters + 1)]
    except (ValueError, OSError) as e:
        raise click.UsageError(str(e)) from None
    logging.basicConfig(level=logging.WARNING - 10 * min(verbose, 2), stream=sys.stderr,
                        format="%(asctime)s %(name)s %(levelname)s %(message)s")
    config = MeterConfig(clock_offset=dt.timedelta(seconds=clock_offset))
    sims = make_meters(meter_addresses, seed=seed, version=edition,
                       passwords=passwords or DEFAULT_PASSWORDS,
                       max_frame_data=max_frame_data, baud=int(baud),
                       time_sync_once_a_day=sync_once_a_day, config=config)
    server = BusServer(sims, host=host, port=port, pty=use_pty, baud=int(baud),
                       td=td_ms / 1000, faults=fault_list, slow_delay=slow_ms / 1000,
                       seed=seed)

    def ready(bus: BusServer) -> None:
        click.echo(f"listening on tcp://{_url_host(host)}:{bus.port}")
        if bus.pty_path is not None:
            click.echo(f"listening on serial://{bus.pty_path}")
        sys.stdout.flush()

    try:
        stats = serve(server, ready=ready)
    except OSError as e:  # e.g. the port is taken
        raise click.ClickException(f"cannot listen on {listen}: {e}") from None
    _summary(stats)


def _summary(stats: BusStats) -> None:
    faults = ", ".join(f"{k} {v}" for k, v in sorted(stats.faults.items())) or "none"
    click.echo(f"stopped: {stats.requests} requests, {stats.replies} replies, "
               f"{stats.broadcasts} broadcasts, {stats.unanswered} unanswered, "
               f"{stats.collisions} collisions; faults: {faults}", err=True)


@simulate.command("modbus")
@click.option("--listen", default="127.0.0.1:0", show_default=True, metavar="HOST:PORT",
              help="TCP address of the meters (port 0 picks a free one).")
@click.option("--meters", type=click.IntRange(1, 247), default=1, show_default=True,
              help="Meters on the line, unit ids 1..N.")
@click.option("--profile", "profile_name", required=True, metavar="NAME|FILE",
              help="Device profile: a name from config/profiles (e.g. acrel-dtsy1352) or a "
                   "profile TOML file.")
@click.option("--framing", type=click.Choice(["tcp", "rtu"]), default="tcp", show_default=True,
              help="On the TCP port: Modbus TCP (MBAP), or RTU frames as a serial server "
                   "passes them.")
@click.option("--pty", "use_pty", is_flag=True,
              help="Also serve the meters in RTU on a pseudo-terminal (serial://PATH, 8N1).")
@click.option("--seed", type=int, default=0, show_default=True,
              help="Seed of loads and noise.")
@click.option("-v", "--verbose", count=True,
              help="Log relay commands (-v); pymodbus's own log too (-vv).")
def modbus(listen: str, meters: int, profile_name: str, framing: str, use_pty: bool,
           seed: int, verbose: int) -> None:
    """Modbus meters (unit ids 1..N) of one device profile behind a TCP port (and a pty).

    Reads of the profile's registers answer the meters' present values; writes to its
    relay control trip and close the relay.  Prints ``listening on tcp://HOST:PORT`` (and
    ``listening on serial://PATH``) and serves until SIGINT or SIGTERM.
    """
    from collector.config.profiles import load_profile
    from simulators.modbus import ModbusSimulator, ModbusStats
    from simulators.modbus import serve as serve_modbus

    try:
        host, port = parse_listen(listen)
    except ValueError as e:
        raise click.UsageError(str(e)) from None
    try:
        profile = load_profile(profile_name)
    except ValueError as e:  # ProfileError: not found, unreadable or invalid
        raise click.BadParameter(str(e), param_hint="'--profile'") from None
    logging.basicConfig(level=logging.WARNING - 10 * min(verbose, 2), stream=sys.stderr,
                        format="%(asctime)s %(name)s %(levelname)s %(message)s")
    if verbose < 2:
        # pymodbus logs an ERROR for every request to an absent unit id: a simulator's
        # everyday business (a collector probing a line), not a fault.
        logging.getLogger("pymodbus").setLevel(logging.CRITICAL)
    sim = ModbusSimulator(profile, meters=meters, transport="rtu-tcp" if framing == "rtu"
                          else "tcp", host=host, port=port, pty=use_pty, seed=seed)

    def ready(s: ModbusSimulator) -> None:
        click.echo(f"listening on tcp://{_url_host(host)}:{s.port}")
        if s.pty_path is not None:
            click.echo(f"listening on serial://{s.pty_path}")
        sys.stdout.flush()

    try:
        stats: ModbusStats = serve_modbus(sim, ready=ready)
    except OSError as e:  # e.g. the port is taken
        raise click.ClickException(str(e)) from None
    exceptions = ", ".join(f"{k} {v}" for k, v in sorted(stats.exceptions.items())) or "none"
    click.echo(f"stopped: {stats.requests} requests, {stats.replies} replies; exceptions: "
               f"{exceptions}; relay: {stats.trips} trips, {stats.closes} closes", err=True)


@simulate.command("gateway")
@click.option("--broker", required=True, metavar="mqtt://HOST:PORT",
              help="MQTT broker to publish to (mqtt://[user:password@]host[:port]).")
@click.option("--meters", type=click.IntRange(1, 9999), default=10, show_default=True,
              help="DL/T645 meters behind the gateway, addresses 000000000001..N.")
@click.option("--prefix", default="amic-gw", show_default=True,
              help="Topic prefix: topics are PREFIX/GATEWAY/report|raw|down|up|status.")
@click.option("--gateway", "gateway_name", default="gw-01", show_default=True,
              help="Gateway name (one topic level).")
@click.option("--interval", type=click.FloatRange(0.05, 86400), default=60.0,
              show_default=True, help="Seconds between report rounds (one report per meter).")
@click.option("--mode", type=click.Choice(["json", "raw"]), default="json", show_default=True,
              help="json: named quantities on .../report; raw: DL/T645 replies (hex) on "
                   ".../raw.")
@click.option("--batch", is_flag=True,
              help="One message per round for all meters instead of one per meter.")
@click.option("--seed", type=int, default=0, show_default=True, help="Seed of loads and noise.")
@click.option("--version", "edition", type=click.Choice(["2007", "1997"]), default="2007",
              show_default=True, help="DL/T645 edition the meters speak.")
@click.option("-v", "--verbose", count=True, help="Log lines (-v) and MQTT detail (-vv).")
def gateway(broker: str, meters: int, prefix: str, gateway_name: str, interval: float,
            mode: str, batch: bool, seed: int, edition: str, verbose: int) -> None:
    """A gateway with an MQTT uplink in front of DL/T645 meters (docs/mqtt.md).

    Publishes the meters' readings every INTERVAL, answers frames published on
    PREFIX/GATEWAY/down on PREFIX/GATEWAY/up, and reconnects when the broker restarts.
    Prints ``connected to mqtt://HOST:PORT as gateway NAME (N meters)`` once connected
    and runs until SIGINT or SIGTERM.
    """
    from simulators.gateway import GatewaySimulator, GatewayStats
    from simulators.gateway import serve as serve_gateway

    logging.basicConfig(level=logging.WARNING - 10 * min(verbose, 2), stream=sys.stderr,
                        format="%(asctime)s %(name)s %(levelname)s %(message)s")
    try:
        sims = make_meters([f"{i:012d}" for i in range(1, meters + 1)], seed=seed,
                           version=edition)
        sim = GatewaySimulator(broker, prefix=prefix, gateway=gateway_name, meters=sims,
                               interval=interval, mode="raw" if mode == "raw" else "json",
                               seed=seed, batch=batch)
    except ValueError as e:
        raise click.UsageError(str(e)) from None

    def ready(s: GatewaySimulator) -> None:
        click.echo(f"connected to {s.url} as gateway {s.gateway} ({len(s.meters)} meters)")
        sys.stdout.flush()

    stats: GatewayStats = serve_gateway(sim, ready=ready)
    click.echo(f"stopped: {stats.reports} reports, {stats.requests} requests, "
               f"{stats.replies} replies, {stats.disconnects} disconnects", err=True)


def _master(text: str) -> tuple[str, int]:
    host, port = parse_listen(text)
    if port == 0:
        raise ValueError(f"--master {text}: the master's port cannot be 0")
    return host, port


def _run_until_signal(tasks: list[Callable[[], Coroutine[Any, Any, None]]]) -> None:
    """Run the coroutines until SIGINT or SIGTERM."""

    async def main() -> None:
        loop = asyncio.get_running_loop()
        stop = asyncio.Event()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, stop.set)
        running = [asyncio.create_task(t()) for t in tasks]
        await stop.wait()
        for t in running:
            t.cancel()
        await asyncio.gather(*running, return_exceptions=True)

    asyncio.run(main())


@simulate.command("concentrator")
@click.option("--master", "master", required=True, metavar="HOST:PORT",
              help="The master station to dial in to.")
@click.option("--a1", default="1234", show_default=True, metavar="XXXX",
              help="Area code A1 (4 hex digits).")
@click.option("--a2", type=click.IntRange(0, 65535), default=1, show_default=True,
              help="Terminal address A2 (the first one with --count).")
@click.option("--meters", type=click.IntRange(1, 2040), default=8, show_default=True,
              help="Measuring points 1..N, each a DL/T645 meter behind port 2.")
@click.option("--count", type=click.IntRange(1, 65536), default=1, show_default=True,
              help="Concentrators in this process, A2 = a2, a2+1, ...")
@click.option("--heartbeat", type=click.FloatRange(0.01, 86400), default=60.0,
              show_default=True, help="Seconds between heartbeats.")
@click.option("--heartbeat-style", type=click.Choice(["2013", "2009"]), default="2013",
              show_default=True, help="2013: heartbeat with the clock; 2009: without data.")
@click.option("--faults", default="", metavar="KIND[:N],...",
              help="Faults: drop-after:S, drop-requests:N, silent[:S], deny, slow:S, "
                   "multi-frame, wrong-seq, unknown-address.")
@click.option("--seed", type=int, default=0, show_default=True, help="Seed of the meters.")
@click.option("-v", "--verbose", count=True, help="Log lines (-v, -vv).")
def concentrator(master: str, a1: str, a2: int, meters: int, count: int, heartbeat: float,
                 heartbeat_style: str, faults: str, seed: int, verbose: int) -> None:
    """Q/GDW 1376.1 concentrators that dial in to a master, log in and answer it.

    Prints ``dialling tcp://HOST:PORT as A1/A2 (N meters)`` and runs until SIGINT or
    SIGTERM, dialling in again whenever the link drops.
    """
    from simulators.concentrator import make_concentrators
    from simulators.concentrator import parse_faults as parse_concentrator_faults

    try:
        host, port = _master(master)
        sims = make_concentrators(host, port, count=count, a1=a1, a2=a2, meters=meters,
                                  seed=seed, heartbeat=heartbeat,
                                  heartbeat_style=heartbeat_style,
                                  faults=parse_concentrator_faults(faults))
    except ValueError as e:
        raise click.UsageError(str(e)) from None
    logging.basicConfig(level=logging.WARNING - 10 * min(verbose, 2), stream=sys.stderr,
                        format="%(asctime)s %(name)s %(levelname)s %(message)s")
    last = f"-{a2 + count - 1}" if count > 1 else ""
    click.echo(f"dialling tcp://{_url_host(host)}:{port} as {sims[0].a1}/{a2}{last} "
               f"({meters} meters each)")
    sys.stdout.flush()
    _run_until_signal([s.run for s in sims])
    logins = sum(s.stats.logins for s in sims)
    requests = sum(sum(s.stats.requests.values()) for s in sims)
    click.echo(f"stopped: {logins} logins, {requests} requests", err=True)


# Which DTU line protocols take their meters from a device profile.
_NEEDS_PROFILE = {"dlt645": False, "modbus": True}


@simulate.command("dtu")
@click.option("--master", "master", required=True, metavar="HOST:PORT",
              help="The master station to dial in to.")
@click.option("--id", "dtu_id", required=True, metavar="ID|hex:BYTES",
              help="Registration packet: ASCII text, or hex:... for raw bytes.")
@click.option("--protocol", type=click.Choice(list(_NEEDS_PROFILE)), required=True,
              help="What the meters behind the DTU speak.")
@click.option("--meters", type=click.IntRange(1, 247), default=1, show_default=True,
              help="Meters: addresses 000000000001..N (DL/T645) or unit ids 1..N (Modbus).")
@click.option("--profile", "profile_name", metavar="NAME|FILE",
              help="Modbus device profile (e.g. acrel-ddsy1352); required with modbus.")
@click.option("--heartbeat", type=click.FloatRange(0.01, 86400), default=60.0,
              show_default=True, help="Seconds between heartbeat packets.")
@click.option("--heartbeat-packet", metavar="TEXT|hex:BYTES",
              help="Heartbeat packet [default: the registration packet].")
@click.option("--seed", type=int, default=0, show_default=True, help="Seed of the meters.")
def dtu(master: str, dtu_id: str, protocol: str, meters: int, profile_name: str | None,
        heartbeat: float, heartbeat_packet: str | None, seed: int) -> None:
    """A 4G DTU that dials in, registers, and passes meter frames through.

    Prints ``dialling tcp://HOST:PORT as DTU ID`` and runs until SIGINT or SIGTERM.
    """
    from simulators.dtu import DtuSimulator, parse_packet

    try:
        host, port = _master(master)
        registration = parse_packet(dtu_id)
        beat = parse_packet(heartbeat_packet) if heartbeat_packet is not None else None
        if _NEEDS_PROFILE[protocol] != (profile_name is not None):
            raise ValueError(f"--protocol {protocol}: --profile is for (and needed by) "
                             "--protocol modbus")
    except ValueError as e:
        raise click.UsageError(str(e)) from None
    sims: Any
    if profile_name is not None:
        from collector.config.profiles import load_profile
        from simulators.modbus import make_modbus_meters
        try:
            profile = load_profile(profile_name)
        except ValueError as e:
            raise click.BadParameter(str(e), param_hint="'--profile'") from None
        sims = make_modbus_meters(profile, range(1, meters + 1), seed=seed)
    else:
        sims = make_meters([f"{i:012d}" for i in range(1, meters + 1)], seed=seed)
    sim = DtuSimulator(host, port, registration=registration, meters=sims,
                       heartbeat=heartbeat, heartbeat_packet=beat)
    click.echo(f"dialling tcp://{_url_host(host)}:{port} as DTU {dtu_id}")
    sys.stdout.flush()
    _run_until_signal([sim.run])
    click.echo(f"stopped: {sim.stats.registrations} registrations, "
               f"{sim.stats.requests} requests", err=True)

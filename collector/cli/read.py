"""``amic read``: read quantities from one meter and print them.

Directly on its line (``--target``), or through a running collector's MQTT command
channel (``--via mqtt://BROKER --collector ID --meter METER_ID``; see
:mod:`collector.commands.remote`).
"""

from __future__ import annotations

import asyncio
import datetime as dt
import json
import logging
import os
import sys
from dataclasses import dataclass
from decimal import Decimal
from pathlib import Path
from typing import Any, NoReturn

import click

from collector.commands.remote import (
    COLLECTOR_ID_RE,
    BrokerError,
    CommandError,
    RemoteError,
    call,
    expand_quantities,
    new_request_id,
)
from drivers.dlt645 import DataValue, Dlt645Session, Quantity, resolve_quantity
from drivers.errors import DriverError
from drivers.meters import kind_of
from drivers.target import parse_target
from protocols.dlt645 import DataItem, DLT645Error, StatusWord, Value, Version, parse_di
from protocols.quantities import GROUPS, QUANTITIES, Kind, normalise_address

from .readconfig import read_configured

PROTOCOLS = {"dlt645-2007": Version.V2007, "dlt645-1997": Version.V1997}

EXIT_FAILED = 1  # the meter or the link failed
EXIT_USAGE = 2  # bad target, address or quantity: nothing was sent

PASSWORD_ENV = "AMIC_MQTT_PASSWORD"  # as collector.config; never on the command line
VIA_TIMEOUT_MS = 10_000  # default wait for a reply per attempt with --via


def _fail(message: str, code: int) -> NoReturn:
    click.echo(f"amic read: {message}", err=True)
    sys.exit(code)


def wanted_quantities(args: tuple[str, ...], version: Version) -> list[Quantity]:
    """``amic read``'s QUANTITY arguments: groups and quantity names as the collector's
    read command takes them (:func:`collector.commands.remote.expand_quantities`), or DL/T645 DIs
    in hex; in order, without repeats.  ValueError names the bad one."""
    out: dict[Quantity, None] = {}
    for arg in args:
        text = arg.strip()
        names: list[Quantity]
        try:
            names = list(expand_quantities([text]))
        except CommandError:
            try:
                di, _ = parse_di(text, version)
            except DLT645Error:
                raise ValueError(
                    f"unknown quantity {text!r}: not a group ({', '.join(GROUPS)}), "
                    f"a quantity name or a DL/T645-{version} DI in hex") from None
            names = [di]
        for q in names:
            try:
                resolve_quantity(q, version)
            except DriverError as e:
                raise ValueError(f"{e} (asked for as {text!r})") from None
        out.update(dict.fromkeys(names))
    return list(out)


def format_value(value: Value, item: DataItem | None = None) -> str:
    """A value as an operator reads it; status words list their non-zero named fields."""
    if isinstance(value, StatusWord):
        widths = {b.name: b.width for b in item.bits} if item is not None else {}
        named = [name if widths.get(name, 1) == 1 else f"{name}={bits}"
                 for name, bits in value.fields.items() if bits]
        return f"0x{value.raw:04X} " + (", ".join(named) if named else "(none set)")
    if isinstance(value, (dt.date, dt.time)):
        return value.isoformat()
    if isinstance(value, Decimal):
        return str(value)
    if isinstance(value, dict):
        return ", ".join(f"{k}={format_value(v)}" for k, v in value.items())
    return str(value)


def table(rows: list[DataValue]) -> str:
    cells = [("QUANTITY", "VALUE", "UNIT")]
    for r in rows:
        name = r.name if not (r.item and r.item.settlement) else \
            f"{r.name}[-{r.item.settlement}]"
        cells.append((name, format_value(r.value, r.item), r.unit))
    w0 = max(len(c[0]) for c in cells)
    w1 = max(len(c[1]) for c in cells)
    return "\n".join(f"{a:<{w0}}  {b:<{w1}}  {c}".rstrip() for a, b, c in cells)


async def _read(url: str, address: str, version: Version, quantities: list[Quantity],
                td: float | None) -> list[DataValue]:
    bus = parse_target(url).bus(td=td)
    async with bus:
        session = Dlt645Session(bus, version=version)
        return await session.read_many(address, quantities)


@click.command()
@click.option("--target", "-t", "target", default=None, metavar="URL",
              help="tcp://HOST:PORT, or serial:///dev/ttyX?baud=2400&parity=E "
                   "(options: baud, parity, bytesize, stopbits, td_ms, tb_ms).")
@click.option("--address", "-a", default=None, metavar="ADDR",
              help="Meter address, up to 12 digits (AAAAAAAAAAAA: the only meter on the line).")
@click.option("--protocol", "-p", type=click.Choice([*PROTOCOLS, "modbus"]),
              default="dlt645-2007", show_default=True,
              help="Protocol edition of the meter (modbus: with --unit and --profile).")
@click.option("--unit", "-u", "modbus_unit", type=click.IntRange(0, 255), default=None,
              metavar="N", help="With --protocol modbus: the device's unit id.")
@click.option("--profile", "profile_name", default=None, metavar="NAME",
              help="With --protocol modbus: the device profile (name or file).")
@click.option("--framing", type=click.Choice(["tcp", "rtu"]), default=None,
              help="With --protocol modbus: tcp (MBAP; default on tcp://) or rtu (default "
                   "on serial://; also RTU over a TCP serial server).")
@click.option("--via", default=None, metavar="BROKER",
              help="Read through a collector's command channel: mqtt://HOST:PORT or "
                   "mqtts://HOST:PORT (with --collector and --meter instead of --target).")
@click.option("--collector", "--fleet", "collector_id", default=None, metavar="ID",
              help="With --via: the collector's id ([collector] id of its configuration), "
                   "or the name of a fleet of collectors ([mqtt] fleet): the one holding "
                   "the session of the meter's concentrator answers.")
@click.option("--meter", "meter_id", default=None, metavar="METER_ID",
              help="With --via or --config: the meter id in the collector's configuration.")
@click.option("--config", "-c", "config_path", default=None, metavar="FILE",
              type=click.Path(dir_okay=False, path_type=Path),
              help="Read configured meter --meter: through the running daemon of this "
                   "configuration, else on its bus directly.")
@click.option("--username", default=None, metavar="USER", help="With --via: broker user.")
@click.option("--password-file", default=None, metavar="FILE",
              help=f"With --via: file holding the broker password (else ${PASSWORD_ENV}).")
@click.option("--ca-file", default=None, metavar="FILE",
              help="With --via: CA certificate(s) to check the broker (mqtts).")
@click.option("--cert-file", default=None, metavar="FILE",
              help="With --via: client certificate (with --key-file).")
@click.option("--key-file", default=None, metavar="FILE",
              help="With --via: client certificate key.")
@click.option("--retries", type=click.IntRange(min=0, max=20), default=2, show_default=True,
              help="With --via: publish the request again (same request id) this many "
                   "times when no reply comes.")
@click.option("--json", "as_json", is_flag=True,
              help="One JSON object per reading, one a line (JSON Lines).")
@click.option("--timeout-ms", type=click.IntRange(min=1), default=None, metavar="MS",
              help="Reply timeout Td in ms (default: td_ms of the target, else 500); "
                   f"with --via: wait per attempt for the collector's reply "
                   f"(default {VIA_TIMEOUT_MS}).")
@click.argument("quantities", nargs=-1, required=True, metavar="QUANTITY...")
@click.pass_context
def read(ctx: click.Context, target: str | None, address: str | None, protocol: str,
         modbus_unit: int | None, profile_name: str | None, framing: str | None,
         via: str | None, collector_id: str | None, meter_id: str | None,
         config_path: Path | None, username: str | None, password_file: str | None,
         ca_file: str | None,
         cert_file: str | None, key_file: str | None, retries: int, as_json: bool,
         timeout_ms: int | None, quantities: tuple[str, ...]) -> None:
    """Read quantities from one meter.

    QUANTITY is a group (energy, voltage, current, power, pf, frequency, balance, status,
    datetime, address), a quantity name (voltage_a, energy_active_forward_total, ...)
    or a raw DI in hex (02010100; 4 digits for DL/T645-1997; not with --via).

    With --via the collector reads the meter on its bus (an on-demand job) and answers
    through the broker; the broker password comes from --password-file or
    $AMIC_MQTT_PASSWORD, never from the command line.

    With --config FILE --meter ID the meter of that configuration is read through its
    running daemon (which owns the buses), or on its bus directly when none runs.

    With --protocol modbus the device --unit N is read through its --profile NAME
    (groups give the members the profile has), framed as --framing.

    Exit status: 0 all read, 1 the meter, the link or the collector failed (or no reply),
    2 bad arguments.
    """
    # A meter described by a device profile is named by unit, profile and framing.
    profiled = kind_of(protocol).needs_profile()
    profile_only = [name for name, value in (("--unit", modbus_unit),
                                             ("--profile", profile_name),
                                             ("--framing", framing)) if value is not None]
    if profile_only and not profiled:
        _fail(f"{', '.join(profile_only)}: only with --protocol modbus", EXIT_USAGE)
    if config_path is not None:
        if via is not None or target is not None or address is not None:
            _fail("--config reads a configured meter (--meter ID): not with --via, "
                  "--target or --address", EXIT_USAGE)
        try:
            wanted_names = remote_quantities(quantities)
        except ValueError as e:
            _fail(str(e), EXIT_USAGE)
        read_configured(config_path, meter_id, wanted_names, as_json, timeout_ms,
                        remote_table)
        return
    if via is not None:
        if target is not None or address is not None:
            _fail("--via reads through a collector: give --collector and --meter, not "
                  "--target or --address", EXIT_USAGE)
        if ctx.get_parameter_source("protocol") == click.core.ParameterSource.COMMANDLINE:
            _fail("--protocol is the collector's business with --via (its configuration "
                  "knows each meter)", EXIT_USAGE)
        _read_via(RemoteOptions(via, collector_id, meter_id, username, password_file,
                                ca_file, cert_file, key_file, retries, timeout_ms),
                  quantities, as_json)
        return
    extra = [name for name, value in (("--collector", collector_id), ("--meter", meter_id),
                                      ("--username", username),
                                      ("--password-file", password_file),
                                      ("--ca-file", ca_file), ("--cert-file", cert_file),
                                      ("--key-file", key_file)) if value is not None]
    if ctx.get_parameter_source("retries") == click.core.ParameterSource.COMMANDLINE:
        extra.append("--retries")
    if extra:
        _fail(f"{', '.join(extra)}: only with --via mqtt://BROKER", EXIT_USAGE)
    if profiled:
        from .read_modbus import read_modbus
        read_modbus(target, address, modbus_unit, profile_name, framing, quantities, as_json,
                    timeout_ms)
        return
    if target is None:
        _fail("missing --target URL (a meter line) or --via mqtt://BROKER (a collector)",
              EXIT_USAGE)
    if address is None:
        _fail("missing --address ADDR (the meter on the line)", EXIT_USAGE)
    version = PROTOCOLS[protocol]
    try:
        parse_target(target)
        addr = normalise_address(address)
        wanted = wanted_quantities(quantities, version)
    except ValueError as e:
        _fail(str(e), EXIT_USAGE)
    td = timeout_ms / 1000 if timeout_ms is not None else None
    try:
        readings = asyncio.run(_read(target, addr, version, wanted, td))
    except DriverError as e:
        text = str(e)
        _fail(text if text.startswith("meter ") else f"meter {addr}: {text}", EXIT_FAILED)
    except KeyboardInterrupt:
        _fail("interrupted", 130)
    except Exception as e:  # never a traceback for the operator
        _fail(f"meter {addr}: unexpected {type(e).__name__}: {e}", EXIT_FAILED)
    rows = [part for r in readings for part in r.members()]
    if as_json:  # JSON Lines: one object per reading
        for r in rows:
            doc: dict[str, Any] = {"address": r.address, "protocol": protocol, **r.as_json()}
            click.echo(json.dumps(doc, ensure_ascii=False))
    else:
        click.echo(table(rows))


# ---- through a collector's command channel (--via) ------------------------------------------

@dataclass(frozen=True, slots=True)
class RemoteOptions:
    via: str
    collector: str | None
    meter: str | None
    username: str | None
    password_file: str | None
    ca_file: str | None
    cert_file: str | None
    key_file: str | None
    retries: int
    timeout_ms: int | None


def remote_quantities(args: tuple[str, ...]) -> list[str]:
    """Groups and quantity names as the collector takes them (sent as given: the collector
    expands them for the meter's profile); ValueError names a bad one."""
    out: list[str] = []
    for arg in args:
        key = arg.strip().lower()
        try:
            expand_quantities([key])
        except CommandError:
            raise ValueError(f"unknown quantity {arg.strip()!r}: not a group "
                             f"({', '.join(GROUPS)}) or a quantity name (raw DIs need "
                             f"--target)") from None
        out.append(key)
    return out


def remote_password(opts: RemoteOptions) -> str | None:
    if opts.password_file is not None:
        path = Path(opts.password_file)
        try:
            text = path.read_text().strip()
        except OSError as e:
            raise ValueError(f"--password-file {path}: {e.strerror or e}") from None
        if not text:
            raise ValueError(f"--password-file {path}: empty")
        return text
    return os.environ.get(PASSWORD_ENV) or None


def _check_remote(opts: RemoteOptions, quantities: tuple[str, ...]) -> list[str]:
    from drivers.mqtt import parse_broker_url
    try:
        scheme = parse_broker_url(opts.via).scheme
    except ValueError as e:
        raise ValueError(f"--via: {e}") from None
    if not opts.collector:
        raise ValueError("--via needs --collector ID (the collector that reads the meter)")
    if not COLLECTOR_ID_RE.fullmatch(opts.collector):
        raise ValueError(f"--collector {opts.collector!r}: letters, digits, '_', '.' and "
                         "'-' only")
    if not opts.meter or not opts.meter.strip():
        raise ValueError("--via needs --meter METER_ID (a meter of the collector)")
    for name, value in (("--ca-file", opts.ca_file), ("--cert-file", opts.cert_file),
                        ("--key-file", opts.key_file)):
        if value is not None and not Path(value).is_file():
            raise ValueError(f"{name} {value}: no such file")
    if (opts.cert_file is None) != (opts.key_file is None):
        raise ValueError("--cert-file and --key-file go together")
    tls = [n for n, v in (("--ca-file", opts.ca_file), ("--cert-file", opts.cert_file),
                          ("--key-file", opts.key_file)) if v is not None]
    if tls and scheme != "mqtts":
        raise ValueError(f"{', '.join(tls)}: only with an mqtts:// broker")
    if opts.password_file is not None and opts.username is None:
        raise ValueError("--password-file needs --username")
    return remote_quantities(quantities)


async def call_remote(opts: RemoteOptions, password: str | None, collector: str,
                       body: dict[str, Any], request_id: str,
                       command: str = "read") -> dict[str, Any]:
    from drivers.mqtt import MqttConnection

    timeout = (opts.timeout_ms or VIA_TIMEOUT_MS) / 1000
    # A clean session: a one-shot client must not leave a session on the broker.  A reply
    # lost to a reconnect is asked for again (same request id) by the retries.
    client_id = f"amic-{command[:4]}-{request_id.replace('-', '')[:12]}"  # <= 23 characters
    conn = MqttConnection(opts.via.strip(), client_id=client_id,
                          username=opts.username,
                          password=password if opts.username is not None else None,
                          ca_file=opts.ca_file, cert_file=opts.cert_file,
                          key_file=opts.key_file, clean_session=True, close_timeout=0.0)
    async with conn:
        return await call(conn, collector, command, body, request_id=request_id,
                          timeout=timeout, attempts=opts.retries + 1,
                          connect_timeout=timeout)


def format_remote_value(quantity: str, value: object) -> str:
    """A reply's numeric value as the local ``amic read`` shows the quantity."""
    if not isinstance(value, (int, float)) or isinstance(value, bool):
        return "-" if value is None else str(value)
    q = QUANTITIES.get(quantity)
    kind = q.kind if q is not None else Kind.NUMBER
    if kind == Kind.STATUS:
        return f"0x{int(value):04X}"
    if kind == Kind.COUNT:
        return str(int(value))
    if kind == Kind.DATE:  # stored as local midnight, epoch seconds
        return dt.datetime.fromtimestamp(value).date().isoformat()
    if kind == Kind.TIME:  # seconds of the day
        s = int(value)
        return f"{s // 3600:02d}:{s // 60 % 60:02d}:{s % 60:02d}"
    if kind == Kind.DATETIME:
        return dt.datetime.fromtimestamp(value).isoformat()
    return str(value)


def remote_table(readings: list[dict[str, Any]]) -> str:
    cells = [("QUANTITY", "VALUE", "UNIT")]
    for r in readings:
        name = str(r.get("quantity", "?"))
        cells.append((name, format_remote_value(name, r.get("value")),
                      str(r.get("unit", ""))))
    w0 = max(len(c[0]) for c in cells)
    w1 = max(len(c[1]) for c in cells)
    return "\n".join(f"{a:<{w0}}  {b:<{w1}}  {c}".rstrip() for a, b, c in cells)


def _read_via(opts: RemoteOptions, quantities: tuple[str, ...], as_json: bool) -> None:
    try:
        wanted = _check_remote(opts, quantities)
        password = remote_password(opts)
    except ValueError as e:
        _fail(str(e), EXIT_USAGE)
    assert opts.collector is not None and opts.meter is not None
    collector, meter = opts.collector, opts.meter.strip()
    request_id = new_request_id()
    body = {"meter": meter, "quantities": wanted}
    # The connection logs its retries as warnings: with no logging configured Python
    # would print them; the operator gets one line below instead.
    quiet = logging.NullHandler()
    amic_log = logging.getLogger("amic")
    amic_log.addHandler(quiet)
    try:
        reply = asyncio.run(call_remote(opts, password, collector, body, request_id))
    except BrokerError as e:  # names the broker
        _fail(str(e), EXIT_FAILED)
    except RemoteError as e:
        _fail(f"collector {collector}: {e}", EXIT_FAILED)
    except ValueError as e:  # the connection's own checks (TLS files that do not load)
        _fail(str(e), EXIT_USAGE)
    except KeyboardInterrupt:
        _fail("interrupted", 130)
    except Exception as e:  # never a traceback for the operator (nor the password)
        text = str(e).replace(password, "***") if password else str(e)
        _fail(f"broker {opts.via.strip()}: {type(e).__name__}: {text}", EXIT_FAILED)
    finally:
        amic_log.removeHandler(quiet)
    if reply.get("status") != "ok":
        error = str(reply.get("error") or "failed")
        _fail(f"collector {collector}: {error}", EXIT_FAILED)
    readings = [r for r in reply.get("readings") or [] if isinstance(r, dict)]
    if as_json:  # JSON Lines: one object per reading
        for r in readings:
            doc: dict[str, Any] = {"collector": collector, "meter": meter,
                                   "request_id": request_id, **r}
            click.echo(json.dumps(doc, ensure_ascii=False))
    else:
        click.echo(remote_table(readings))

"""``amic read``: read quantities from one meter and print them."""

from __future__ import annotations

import asyncio
import datetime as dt
import json
import sys
from decimal import Decimal
from typing import Any, NoReturn

import click

from drivers.dlt645 import Dlt645Session, Quantity, Reading, resolve_quantity
from drivers.errors import DriverError
from drivers.target import parse_target
from protocols.dlt645 import DataItem, DLT645Error, StatusWord, Value, Version, parse_di
from protocols.quantities import GROUPS, QUANTITIES, normalise_address

PROTOCOLS = {"dlt645-2007": Version.V2007, "dlt645-1997": Version.V1997}

EXIT_FAILED = 1  # the meter or the link failed
EXIT_USAGE = 2  # bad target, address or quantity: nothing was sent


def _fail(message: str, code: int) -> NoReturn:
    click.echo(f"amic read: {message}", err=True)
    sys.exit(code)


def expand_quantities(args: tuple[str, ...], version: Version) -> list[Quantity]:
    """Groups, quantity names and hex DIs, in order; ValueError names the bad one."""
    out: list[Quantity] = []
    for arg in args:
        text = arg.strip()
        key = text.lower()
        if key in GROUPS:
            names: list[Quantity] = list(GROUPS[key])
        elif key in QUANTITIES:
            names = [key]
        else:
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
        out += names
    return out


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


def table(rows: list[Reading]) -> str:
    cells = [("QUANTITY", "VALUE", "UNIT")]
    for r in rows:
        name = r.name if not (r.item and r.item.settlement) else \
            f"{r.name}[-{r.item.settlement}]"
        cells.append((name, format_value(r.value, r.item), r.unit))
    w0 = max(len(c[0]) for c in cells)
    w1 = max(len(c[1]) for c in cells)
    return "\n".join(f"{a:<{w0}}  {b:<{w1}}  {c}".rstrip() for a, b, c in cells)


async def _read(url: str, address: str, version: Version, quantities: list[Quantity],
                td: float | None) -> list[Reading]:
    bus = parse_target(url).bus(td=td)
    async with bus:
        session = Dlt645Session(bus, version=version)
        return await session.read_many(address, quantities)


@click.command()
@click.option("--target", "-t", "target", required=True, metavar="URL",
              help="tcp://HOST:PORT, or serial:///dev/ttyX?baud=2400&parity=E "
                   "(options: baud, parity, bytesize, stopbits, td_ms, tb_ms).")
@click.option("--address", "-a", required=True, metavar="ADDR",
              help="Meter address, up to 12 digits (AAAAAAAAAAAA: the only meter on the line).")
@click.option("--protocol", "-p", type=click.Choice(list(PROTOCOLS)), default="dlt645-2007",
              show_default=True, help="Protocol edition of the meter.")
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object.")
@click.option("--timeout-ms", type=click.IntRange(min=1), default=None, metavar="MS",
              help="Reply timeout Td in ms (default: td_ms of the target, else 500).")
@click.argument("quantities", nargs=-1, required=True, metavar="QUANTITY...")
def read(target: str, address: str, protocol: str, as_json: bool, timeout_ms: int | None,
         quantities: tuple[str, ...]) -> None:
    """Read quantities from one meter.

    QUANTITY is a group (energy, voltage, current, power, pf, frequency, balance, status,
    datetime, address), a quantity name (voltage_a, energy_active_forward_total, ...)
    or a raw DI in hex (02010100; 4 digits for DL/T645-1997).

    Exit status: 0 all read, 1 the meter or the link failed, 2 bad arguments.
    """
    version = PROTOCOLS[protocol]
    try:
        parse_target(target)
        addr = normalise_address(address)
        wanted = expand_quantities(quantities, version)
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
    if as_json:
        meter = rows[0].address if rows else addr
        doc: dict[str, Any] = {"address": meter, "protocol": protocol,
                               "readings": [r.as_json() for r in rows]}
        click.echo(json.dumps(doc, ensure_ascii=False))
    else:
        click.echo(table(rows))

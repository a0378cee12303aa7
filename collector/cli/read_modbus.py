"""``amic read --protocol modbus``: read a Modbus meter on its line through a profile."""

from __future__ import annotations

import asyncio
import json
import sys
from decimal import Decimal
from typing import Any, NoReturn

import click

from collector.config.profiles import load_profile
from drivers.errors import DriverError
from drivers.modbus import Framing, ModbusSession
from drivers.target import parse_target
from protocols.dlt645 import value_to_json
from protocols.modbus import Profile, ProfileError
from protocols.quantities import GROUPS, QUANTITIES

EXIT_FAILED = 1
EXIT_USAGE = 2


def _fail(message: str, code: int) -> NoReturn:
    click.echo(f"amic read: {message}", err=True)
    sys.exit(code)


def profile_quantities(args: tuple[str, ...], profile: Profile) -> list[str]:
    """Groups (the members the profile has) and quantity names, in order, without
    repeats; ValueError names the one the profile cannot read."""
    have = {r.name for r in profile.registers}
    out: list[str] = []
    for arg in args:
        text = arg.strip()
        key = text.lower()
        if key in GROUPS:
            names = [q for q in GROUPS[key] if q in have]
            if not names:
                raise ValueError(f"profile {profile.name} has no quantity of group {key!r} "
                                 f"({', '.join(GROUPS[key])})")
        elif key in have:
            names = [key]
        elif key in QUANTITIES:
            raise ValueError(f"profile {profile.name} has no register for {text!r}")
        else:
            raise ValueError(f"unknown quantity {text!r}: not a group ({', '.join(GROUPS)}) "
                             "or a quantity name")
        out += [n for n in names if n not in out]
    return out


def _table(rows: list[tuple[str, Decimal, str]]) -> str:
    cells = [("QUANTITY", "VALUE", "UNIT")] + [(n, str(v), u) for n, v, u in rows]
    w0 = max(len(c[0]) for c in cells)
    w1 = max(len(c[1]) for c in cells)
    return "\n".join(f"{a:<{w0}}  {b:<{w1}}  {c}".rstrip() for a, b, c in cells)


async def _read(url: str, unit: int, framing: Framing, profile: Profile, names: list[str],
                td: float | None) -> dict[str, Decimal]:
    async with parse_target(url).bus(td=td) as bus:
        session = ModbusSession(bus, framing=framing)
        return await session.read_profile(unit, profile, names)


def read_modbus(target: str | None, address: str | None, unit: int | None,
                profile_name: str | None, framing: str | None, quantities: tuple[str, ...],
                as_json: bool, timeout_ms: int | None) -> None:
    """The ``--protocol modbus`` branch of ``amic read`` (arguments not yet checked)."""
    if address is not None:
        _fail("--address is for DL/T645 meters: a Modbus device is --unit N", EXIT_USAGE)
    if target is None:
        _fail("missing --target URL (the Modbus line or Modbus TCP device)", EXIT_USAGE)
    if unit is None:
        _fail("missing --unit N (the Modbus unit id)", EXIT_USAGE)
    if profile_name is None:
        _fail("missing --profile NAME (the device's register map)", EXIT_USAGE)
    try:
        scheme = "serial" if target.strip().lower().startswith("serial:") else "tcp"
        parse_target(target)
        chosen: Framing = "rtu" if (framing or ("rtu" if scheme == "serial" else "tcp")) \
            == "rtu" else "tcp"
        if scheme == "serial" and chosen == "tcp":
            raise ValueError("--framing tcp (MBAP) is for tcp:// targets: a serial line "
                             "carries RTU")
        if chosen == "rtu" and not 1 <= unit <= 247:
            raise ValueError(f"--unit {unit}: RTU unit ids are 1-247")
        profile = load_profile(profile_name)
        names = profile_quantities(quantities, profile)
    except ProfileError as e:
        _fail(f"--profile: {e}", EXIT_USAGE)
    except ValueError as e:
        _fail(str(e), EXIT_USAGE)
    td = timeout_ms / 1000 if timeout_ms is not None else None
    try:
        values = asyncio.run(_read(target, unit, chosen, profile, names, td))
    except DriverError as e:
        text = str(e)
        _fail(text if text.startswith("unit ") else f"unit {unit}: {text}", EXIT_FAILED)
    except KeyboardInterrupt:
        _fail("interrupted", 130)
    except Exception as e:  # never a traceback for the operator
        _fail(f"unit {unit}: unexpected {type(e).__name__}: {e}", EXIT_FAILED)
    rows = [(name, value, profile.register(name).unit) for name, value in values.items()]
    if as_json:  # JSON Lines, as the DL/T645 read
        for name, value, phys in rows:
            doc: dict[str, Any] = {"address": str(unit), "protocol": "modbus",
                                   "profile": profile.name, "framing": chosen, "name": name,
                                   "value": value_to_json(value), "unit": phys}
            click.echo(json.dumps(doc, ensure_ascii=False))
    else:
        click.echo(_table(rows))

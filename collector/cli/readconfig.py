"""``amic read -c FILE --meter ID``: a configured meter, through the configuration's
running daemon (its bus worker's on-demand lane), else on its bus directly."""

from __future__ import annotations

import asyncio
import contextlib
import json
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any, NoReturn

import click

from collector.commands.remote import CommandError
from collector.config import ConfigError, load_settings
from collector.config.settings import Settings
from drivers.errors import DriverError

from .viadaemon import ask, daemon_of

EXIT_FAILED = 1
EXIT_USAGE = 2
TIMEOUT_S = 30.0  # the daemon's reply (the read waits for the job in flight on the bus)


def _fail(message: str, code: int) -> NoReturn:
    click.echo(f"amic read: {message}", err=True)
    sys.exit(code)


async def _read_directly(settings: Settings, meter_id: str,
                         quantities: list[str]) -> list[dict[str, Any]]:
    from collector.commands.remote import read_executor
    from collector.config.profiles import load_profile
    from collector.polling.scheduler import BusWorker
    from collector.service.daemon import make_bus

    m = next((x for x in settings.meters if x.meter_id == meter_id), None)
    if m is None:
        raise CommandError(f"meter {meter_id} is not configured in {settings.source}")
    b = next((x for x in settings.buses if x.name == m.bus), None)
    if b is None:  # a [[concentrator]]: its terminal dials in to the daemon's listener
        raise CommandError(f"meter {meter_id} is behind concentrator {m.bus}, which dials "
                           "in to the daemon: read it while the daemon runs")
    try:
        bus = make_bus(b)
    except ValueError as e:  # an MQTT gateway's bus: only the daemon has the connection
        raise CommandError(f"meter {meter_id}: {e}; read it while the daemon runs") from None
    worker = BusWorker(b.name, bus, preamble=b.preamble, modbus=b.modbus)
    await worker.start()
    try:
        execute = read_executor(
            meters=lambda: settings.meters, workers=lambda: {b.name: worker},
            profile=lambda n: load_profile(n, search=[settings.source.absolute().parent]))
        reply = await execute({"meter": meter_id, "quantities": quantities})
    finally:
        await worker.stop(2.0)
        with contextlib.suppress(Exception):
            await worker.bus.close()
    return [r for r in reply.get("readings") or [] if isinstance(r, dict)]


def read_configured(config_path: Path, meter_id: str | None, quantities: list[str],
                    as_json: bool, timeout_ms: int | None,
                    table: Callable[[list[dict[str, Any]]], str]) -> None:
    """Read ``quantities`` of configured meter ``meter_id`` and print them (``table``
    formats them for a terminal)."""
    if not meter_id or not meter_id.strip():
        _fail("--config needs --meter METER_ID (a meter of the configuration)", EXIT_USAGE)
    meter_id = meter_id.strip()
    try:
        settings = load_settings(config_path)
    except ConfigError as e:
        for p in e.problems:
            click.echo(str(p), err=True)
        _fail(f"{config_path}: {len(e.problems)} problem(s)", EXIT_USAGE)
    except OSError as e:
        _fail(f"{config_path}: {e.strerror or e}", EXIT_USAGE)
    daemon = daemon_of(settings, "read")
    if daemon is not None:
        timeout = timeout_ms / 1000 if timeout_ms is not None else TIMEOUT_S
        reply = ask(daemon, "read", {"op": "read", "meter": meter_id,
                                     "quantities": quantities}, timeout)
        readings = [r for r in reply.get("readings") or [] if isinstance(r, dict)]
    else:
        try:
            readings = asyncio.run(_read_directly(settings, meter_id, quantities))
        except CommandError as e:
            _fail(str(e), EXIT_USAGE)
        except (DriverError, OSError, TimeoutError) as e:
            _fail(f"meter {meter_id}: {e}", EXIT_FAILED)
    if as_json:  # JSON Lines: one object per reading
        for r in readings:
            click.echo(json.dumps(r, ensure_ascii=False))
    else:
        click.echo(table(readings))

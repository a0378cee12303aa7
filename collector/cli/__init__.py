"""The ``amic`` command line."""

from __future__ import annotations

import click

from .apitoken import api_token
from .concentrator import concentrator
from .config import config
from .decode import decode
from .demo import demo
from .events import events
from .query import query
from .read import read
from .relay import audit, hold, relay_status, release, restore, topup, trip
from .report import export, ledger, report
from .run import run
from .simulate import simulate


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="amic")
def main() -> None:
    """amic: head-end meter data acquisition (DL/T645 / Modbus / MQTT)."""


main.add_command(api_token)
main.add_command(concentrator)
main.add_command(config)
main.add_command(decode)
main.add_command(demo)
main.add_command(events)
main.add_command(query)
main.add_command(read)
main.add_command(run)
main.add_command(simulate)
for _cmd in (trip, restore, hold, release, relay_status, topup, audit):
    main.add_command(_cmd)
for _cmd in (report, export, ledger):
    main.add_command(_cmd)

"""The CLI's way to a running daemon of its configuration (collector/service/ctlsocket.py).

A command that touches buses asks the daemon first: it owns them, and a second master
on a line garbles both.  Only when no daemon answers does the command open the buses
itself.
"""

from __future__ import annotations

import sys
from typing import Any

import click

from collector.config.settings import Settings
from collector.service.ctlsocket import CtlClient, CtlError, connect

EXIT_FAILED = 1


def daemon_of(settings: Settings, command: str) -> CtlClient | None:
    """A connection to the running daemon (said on stderr), or None when none runs."""
    try:
        client = connect(settings)
    except CtlError as e:
        click.echo(f"amic {command}: {e}", err=True)
        sys.exit(EXIT_FAILED)
    if client is not None:
        click.echo(f"amic {command}: via running daemon (pid {client.pid})", err=True)
    return client


def ask(client: CtlClient, command: str, request: dict[str, Any],
        timeout: float) -> dict[str, Any]:
    """The daemon's reply to ``request``; exits 1 naming the daemon when it fails."""
    try:
        with client:
            return client.call(request, timeout)
    except CtlError as e:
        click.echo(f"amic {command}: daemon (pid {client.pid}): {e}", err=True)
        sys.exit(EXIT_FAILED)

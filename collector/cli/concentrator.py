"""``amic concentrator``: the concentrators of a running daemon (its control socket).

``sync-archive NAME`` writes the meter archive built from the ledger (AFN04 F10) and
reads it back (AFN0A F10): exit 0 when they agree, 1 when differences remain (listed),
2 when the concentrator is offline or unknown (or no daemon runs).  ``list`` shows each
one's address, listener and whether it is online.
"""

from __future__ import annotations

import datetime as dt
import getpass
import json
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any, NoReturn

import click

from collector.config import ConfigError, load_settings
from collector.config.settings import Settings
from collector.service.ctlsocket import CtlError, connect

from .times import show_time

EXIT_DIFFERENT = 1
EXIT_UNREACHABLE = 2
TIMEOUT = 300.0  # s: a large archive is several frames each way, each with retries


def _fail(message: str, code: int) -> NoReturn:
    click.echo(f"amic concentrator: {message}", err=True)
    sys.exit(code)


def _settings(path: Path) -> Settings:
    try:
        return load_settings(path)
    except ConfigError as e:
        for p in e.problems:
            click.echo(str(p), err=True)
        _fail(f"{path}: {len(e.problems)} problem(s)", EXIT_UNREACHABLE)
    except OSError as e:
        _fail(f"{path}: {e.strerror or e}", EXIT_UNREACHABLE)


def _ask(settings: Settings, request: dict[str, Any], timeout: float) -> dict[str, Any]:
    """The daemon's reply; exit 2 when no daemon runs for this configuration (only it
    holds the concentrators' sessions)."""
    try:
        client = connect(settings)
        if client is None:
            _fail(f"no running daemon for {settings.source}: concentrators dial in to "
                  "amic run", EXIT_UNREACHABLE)
        with client:
            return client.call(request, timeout)
    except CtlError as e:
        _fail(f"daemon: {e}", EXIT_UNREACHABLE)


def _table(rows: Sequence[tuple[str, ...]]) -> str:
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    return "\n".join("  ".join(x.ljust(w) for x, w in zip(r, widths, strict=True)).rstrip()
                     for r in rows)


@click.group()
def concentrator() -> None:
    """Concentrators that dial in (Q/GDW 1376.1), through the running daemon."""


CONFIG = click.option("--config", "-c", "config_path", required=True, metavar="FILE",
                      type=click.Path(dir_okay=False, path_type=Path))


@concentrator.command("sync-archive")
@click.argument("name")
@CONFIG
@click.option("--operator", default=None, help="Recorded in the audit (default: you).")
@click.option("--json", "as_json", is_flag=True, help="The daemon's result as JSON.")
def sync_archive(name: str, config_path: Path, operator: str | None, as_json: bool) -> None:
    """Send NAME the meter archive built from the ledger, read it back and list what
    differs (pn, field, ledger, concentrator)."""
    settings = _settings(config_path)
    who = operator or getpass.getuser()
    reply = _ask(settings, {"op": "sync_archive", "name": name, "operator": who}, TIMEOUT)
    code = int(reply.get("exit", EXIT_UNREACHABLE))
    if as_json:
        click.echo(json.dumps({k: v for k, v in reply.items() if k != "status"},
                              ensure_ascii=False))
        sys.exit(code)
    if reply.get("error"):
        click.echo(f"amic concentrator: {reply['error']}", err=True)
    diffs = reply.get("differences") or []
    if diffs:
        rows = [("PN", "FIELD", "LEDGER", "CONCENTRATOR")]
        rows += [(str(d["pn"]), str(d["field"]), str(d["ledger"]), str(d["concentrator"]))
                 for d in diffs]
        click.echo(_table(rows))
    if code == 0:
        click.echo(f"concentrator {name}: archive of {reply.get('meters')} meter(s) in sync")
    elif diffs:
        click.echo(f"concentrator {name}: {len(diffs)} difference(s) remain after the "
                   "download", err=True)
    sys.exit(code)


@concentrator.command("list")
@CONFIG
@click.option("--json", "as_json", is_flag=True, help="One JSON object per line.")
def list_(config_path: Path, as_json: bool) -> None:
    """Name, address (A1/A2), listener, online since, and meters of each concentrator."""
    settings = _settings(config_path)
    found = _ask(settings, {"op": "concentrators"}, 10.0).get("concentrators") or []
    if as_json:
        for c in found:
            click.echo(json.dumps(c, ensure_ascii=False))
        return
    rows = [("NAME", "A1", "A2", "LISTENER", "ONLINE", "SINCE", "METERS")]
    for c in found:
        since = c.get("since")
        shown = show_time(dt.datetime.fromisoformat(since)) if isinstance(since, str) else "-"
        rows.append((str(c["name"]), str(c["a1"]), str(c["a2"]), str(c["listener"]),
                     "yes" if c.get("online") else "no", shown, str(c["meters"])))
    click.echo(_table(rows))

"""``amic run --config FILE``: the collector service."""

from __future__ import annotations

import logging
import os
import sys
from pathlib import Path

import click

EX_CONFIG = 78  # sysexits.h; the unit's RestartPreventExitStatus stops a restart loop


def setup_logging(verbose: int) -> None:
    """One line per event on stderr; journald adds its own timestamps."""
    level = logging.DEBUG if verbose > 1 else logging.INFO if verbose >= 0 else logging.WARNING
    fmt = "%(levelname)s %(name)s: %(message)s"
    if not os.environ.get("JOURNAL_STREAM"):
        fmt = "%(asctime)s " + fmt
    logging.basicConfig(level=level, format=fmt, stream=sys.stderr, force=True)


@click.command()
@click.option("--config", "config_path", required=True,
              type=click.Path(dir_okay=True, path_type=Path),
              help="The TOML configuration (checked completely before anything starts).")
@click.option("--no-align", is_flag=True,
              help="Run cycles back to back from start-up instead of at interval boundaries.")
@click.option("-v", "--verbose", count=True, help="More log detail (-vv: debug).")
@click.option("-q", "--quiet", is_flag=True, help="Warnings and errors only.")
def run(config_path: Path, no_align: bool, verbose: int, quiet: bool) -> None:
    """Poll the configured meters forever (systemd Type=notify service)."""
    from collector.config import ConfigError
    from collector.daemon import run_daemon

    setup_logging(-1 if quiet else verbose)
    try:
        status = run_daemon(config_path, align=not no_align)
    except ConfigError as e:
        for problem in e.problems:
            click.echo(f"amic run: {problem}", err=True)
        click.echo(f"amic run: not started: {len(e.problems)} problem(s) in {config_path}",
                   err=True)
        sys.exit(EX_CONFIG)
    except OSError as e:
        click.echo(f"amic run: not started: {e}", err=True)
        sys.exit(EX_CONFIG)
    sys.exit(status)

"""``amic run --config FILE``: the collector service."""

from __future__ import annotations

import logging
import os
import sqlite3
import sys
from pathlib import Path

import click

EX_CONFIG = 78  # sysexits.h; the unit's RestartPreventExitStatus stops a restart loop
# A listen address in use (another amic, a port taken): the unit's Restart=on-failure
# tries again, which 78 would prevent.
EX_TEMPFAIL = 75


def journal_priority(levelno: int) -> int:
    """The syslog priority of a logging level: 2 crit, 3 err, 4 warning, 6 info, 7 debug."""
    if levelno >= logging.CRITICAL:
        return 2
    if levelno >= logging.ERROR:
        return 3
    if levelno >= logging.WARNING:
        return 4
    if levelno >= logging.INFO:
        return 6
    return 7


class JournalFormatter(logging.Formatter):
    """Each line prefixed ``<N>`` (sd-daemon(3)): journald stores it at that priority,
    so ``journalctl -p warning`` shows amic's warnings.  Every line of a multi-line
    record (a traceback) gets it, since journald reads each line as its own entry."""

    def format(self, record: logging.LogRecord) -> str:
        prefix = f"<{journal_priority(record.levelno)}>"
        return "\n".join(prefix + line for line in super().format(record).splitlines() or [""])


def journal_stderr() -> bool:
    """True when JOURNAL_STREAM is set (systemd connected stderr to the journal)."""
    return bool(os.environ.get("JOURNAL_STREAM"))


def _say(text: str, priority: int = 3) -> None:
    """A line on stderr outside logging (before it is set up, or instead of a traceback)."""
    click.echo(f"<{priority}>{text}" if journal_stderr() else text, err=True)


def setup_logging(verbose: int) -> None:
    """One line per event on stderr; journald adds its own timestamps."""
    level = logging.DEBUG if verbose > 1 else logging.INFO if verbose >= 0 else logging.WARNING
    fmt = "%(levelname)s %(name)s: %(message)s"
    handler = logging.StreamHandler(sys.stderr)
    if journal_stderr():
        handler.setFormatter(JournalFormatter(fmt))
    else:
        handler.setFormatter(logging.Formatter("%(asctime)s " + fmt))
    logging.basicConfig(level=level, handlers=[handler], force=True)


@click.command()
@click.option("--config", "-c", "config_path", required=True,
              type=click.Path(dir_okay=True, path_type=Path),
              help="The TOML configuration (checked completely before anything starts).")
@click.option("--no-align", is_flag=True,
              help="Run cycles back to back from start-up instead of at interval boundaries.")
@click.option("-v", "--verbose", count=True, help="More log detail (-vv: debug).")
@click.option("-q", "--quiet", is_flag=True, help="Warnings and errors only.")
def run(config_path: Path, no_align: bool, verbose: int, quiet: bool) -> None:
    """Poll the configured meters forever (systemd Type=notify service)."""
    from collector.config import ConfigError
    from collector.service.daemon import run_daemon
    from collector.service.metrics import ListenError
    from collector.store import StoreError

    setup_logging(-1 if quiet else verbose)
    try:
        status = run_daemon(config_path, align=not no_align)
    except ConfigError as e:
        for problem in e.problems:
            _say(f"amic run: {problem}")
        _say(f"amic run: not started: {len(e.problems)} problem(s) in {config_path}")
        sys.exit(EX_CONFIG)
    except ListenError as e:
        logging.getLogger("amic.run").error("not started: %s", e)
        sys.exit(EX_TEMPFAIL)
    except StoreError as e:  # not an amic store, or a newer amic's: a restart cannot help
        logging.getLogger("amic.run").error("not started: %s", e)
        sys.exit(EX_CONFIG)
    except sqlite3.DatabaseError as e:
        where = f"the store (amic.db in the data_dir of {config_path})"
        logging.getLogger("amic.run").error("not started: %s: %s", where, e)
        # Locked or busy may pass (restart); a file that is no database will not.
        sys.exit(EX_TEMPFAIL if isinstance(e, sqlite3.OperationalError) else EX_CONFIG)
    except OSError as e:
        _say(f"amic run: not started: {e}")
        sys.exit(EX_CONFIG)
    sys.exit(status)

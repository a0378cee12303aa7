"""``amic config check FILE``: validate a configuration without starting anything."""

from __future__ import annotations

import sys
from collections import Counter
from pathlib import Path

import click

from collector.config import ConfigError, load_settings, select_meters
from collector.config.settings import Settings

EXIT_OK = 0
# The configuration has problems (each printed on its own line): EX_CONFIG, the status
# ``amic run`` refuses the same file with.
EXIT_INVALID = 78


def _plural(n: int, word: str, plural: str | None = None) -> str:
    if n == 1:
        return f"1 {word}"
    return f"{n} {plural or (word + 'es' if word.endswith('s') else word + 's')}"


def summary(settings: Settings) -> str:
    """One line: buses, listeners and concentrators (if any), meters per protocol,
    schedules, areas."""
    protocols = Counter(m.protocol for m in settings.meters)
    per_protocol = ", ".join(f"{n} {p}" for p, n in sorted(protocols.items(), key=lambda x: -x[1]))
    areas = {m.area for m in settings.meters if m.area}
    masters = {m.area for m in settings.meters if m.role == "area_master"}
    dialin = ""
    if settings.listeners or settings.concentrators:
        dialin = (f"{_plural(len(settings.listeners), 'listener')}, "
                  f"{_plural(len(settings.concentrators), 'concentrator')}, ")
    return (f"{_plural(len(settings.buses), 'bus')}, {dialin}"
            f"{_plural(len(settings.meters), 'meter')} ({per_protocol}), "
            f"{_plural(len(settings.schedules), 'schedule')}, "
            f"{_plural(len(areas), 'area')} ({len(masters)} with an area master)")


def _duration(seconds: float) -> str:
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if seconds >= size and seconds % size == 0:
            return f"{seconds / size:g}{unit}"
    return f"{seconds:g}s"


@click.group("config")
def config() -> None:
    """Configuration tools."""


@config.command("check")
@click.argument("file", required=False, type=click.Path(dir_okay=True, path_type=Path))
@click.option("--config", "-c", "config_path", default=None, metavar="FILE",
              type=click.Path(dir_okay=True, path_type=Path),
              help="The configuration to check (instead of FILE).")
@click.option("-v", "--verbose", is_flag=True,
              help="Also list the buses, listeners and concentrators and, for each "
                   "schedule, what it reads from whom.")
def check(file: Path | None, config_path: Path | None, verbose: bool) -> None:
    """Check FILE (or -c FILE, and the ledger it names) completely; start nothing.

    Exit 0 printing a one-line summary when it is valid; exit 78 printing every problem,
    one a line (file:line: table: key: expected ..., got ...), when it is not.
    """
    if (file is None) == (config_path is None):
        raise click.UsageError("give the configuration: FILE or -c/--config FILE (one)")
    file = file or config_path
    assert file is not None
    try:
        settings = load_settings(file)
    except ConfigError as e:
        for problem in e.problems:
            click.echo(str(problem))
        n = len(e.problems)
        click.echo(f"{file}: {n} problem{'s' if n != 1 else ''}; not valid", err=True)
        sys.exit(EXIT_INVALID)
    click.echo(f"{file}: OK: {summary(settings)}")
    if verbose:
        for b in settings.buses:
            if b.kind == "mqtt":
                prefix = next((g.prefix for g in settings.gateways if g.name == b.gateway), "")
                where = f"mqtt via gateway {b.gateway} ({prefix}/{b.gateway})"
            elif b.kind == "tcp":
                where = f"tcp {b.host}:{b.port}"
            else:
                where = f"serial {b.device} {b.baud} {b.bytesize}{b.parity}{b.stopbits:g}"
            n = sum(1 for m in settings.meters if m.bus == b.name)
            click.echo(f"  bus {b.name}: {where}, {_plural(n, 'meter')}")
        for li in settings.listeners:
            tls = ", TLS" if li.tls_cert_file is not None else ""
            n = sum(1 for c in settings.concentrators if c.listener == li.name)
            click.echo(f"  listener {li.name}: {li.listen}, protocol {li.protocol}{tls}, "
                       f"{_plural(n, 'concentrator')}")
        for c in settings.concentrators:
            n = sum(1 for m in settings.meters if m.bus == c.name)
            click.echo(f"  concentrator {c.name}: a1/a2 {c.a1}/{c.a2} via listener "
                       f"{c.listener}, {_plural(n, 'meter')} behind it")
        for s in settings.schedules:
            n = len(select_meters(settings, s))
            click.echo(f"  schedule {s.name}: every {_duration(s.interval)}, "
                       f"{_plural(len(s.quantities), 'quantity', 'quantities')} from "
                       f"{_plural(n, 'meter')} ({', '.join(s.meters)})")
    sys.exit(EXIT_OK)


@config.command("example")
@click.argument("directory", type=click.Path(file_okay=False, path_type=Path))
@click.option("--force", is_flag=True, help="Replace files that are already there.")
def example(directory: Path, force: bool) -> None:
    """Write the shipped examples into DIRECTORY: amic.example.toml (every key, commented)
    with the ledger it names, the Grafana board and the systemd unit.

    Then `amic config check DIRECTORY/amic.example.toml`.  Refuses (exit 1, writing
    nothing) when one of the files exists, unless --force.
    """
    from collector.config.shipped import ExampleExists, copy_examples

    try:
        written = copy_examples(directory, force=force)
    except ExampleExists as e:
        click.echo(f"amic config example: {e}", err=True)
        sys.exit(1)
    except OSError as e:
        click.echo(f"amic config example: {directory}: {e.strerror or e}", err=True)
        sys.exit(1)
    for path in written:
        click.echo(str(path))

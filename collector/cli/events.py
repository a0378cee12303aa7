"""``amic events``: alarms and events from the store, newest last, in local time
(with the UTC offset)."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import click

from collector.config import ConfigError, load_settings

from .query import parse_since
from .times import json_time, show_time

SEVERITY = {0: "info", 1: "warning", 2: "ALARM"}


@click.command()
@click.option("--config", "-c", "config_path", required=True, metavar="FILE",
              type=click.Path(dir_okay=False, path_type=Path))
@click.option("--since", default="1d", show_default=True,
              help="How far back: 2h, 7d, or a date/time (local).")
@click.option("--meter", default=None, metavar="METER_ID")
@click.option("--kind", default=None, help="Only this kind (e.g. voltage_low, meter_dead).")
@click.option("--alarms", "alarms_only", is_flag=True, help="Only severity 2 (alarms).")
@click.option("--limit", default=1000, show_default=True, type=click.IntRange(1, 1_000_000))
@click.option("--json", "as_json", is_flag=True, help="One JSON object per line.")
def events(config_path: Path, since: str, meter: str | None, kind: str | None,
           alarms_only: bool, limit: int, as_json: bool) -> None:
    """List stored events and alarms (comm loss, voltage, energy, relay, schedules...)."""
    from collector.store import Store, StoreError

    try:
        settings = load_settings(config_path)
        start = parse_since(since)
        store = Store(settings.collector.data_dir / "amic.db", create=False)
    except ConfigError as e:
        for p in e.problems:
            click.echo(str(p), err=True)
        sys.exit(2)
    except (ValueError, StoreError, OSError) as e:
        click.echo(f"amic: {e}", err=True)
        sys.exit(2)
    rows = store.events(start, limit, meter=meter, kind=kind,
                        min_severity=2 if alarms_only else 0)
    store.close()
    for ev in reversed(rows):
        if as_json:
            click.echo(json.dumps({"ts": json_time(ev.ts), "kind": ev.kind, "meter": ev.meter,
                                   "bus": ev.bus, "severity": ev.severity, "value": ev.value,
                                   "detail": ev.detail}, ensure_ascii=False))
            continue
        when = show_time(ev.ts)
        value = "" if ev.value is None else f"{ev.value:g}"
        click.echo(f"{when}  {SEVERITY.get(ev.severity, ev.severity):<7} {ev.kind:<24} "
                   f"{ev.meter or '-':<12} {value:>10}  {ev.detail}")

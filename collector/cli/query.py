"""``amic query``: recent readings from the store, in local time (with the UTC offset);
status words, dates and times decoded as ``amic read`` shows them."""

from __future__ import annotations

import datetime as dt
import importlib
import json
import re
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NoReturn

import click

from collector.store import DB_NAME, Store, StoredReading, StoreError
from collector.store.records import Quality
from protocols.quantities import QUANTITIES, Kind

from .times import json_time, show_time

EXIT_USAGE = 2  # bad arguments, or no store where it was looked for

_SPAN = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([smhdw])\s*$", re.IGNORECASE)
_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 7 * 86400}


def _fail(message: str, code: int = EXIT_USAGE) -> NoReturn:
    click.echo(f"amic query: {message}", err=True)
    sys.exit(code)


def parse_since(text: str, now: dt.datetime | None = None) -> dt.datetime:
    """``2h``, ``30m``, ``1d``, ``1w``, ``90s`` ago, or an ISO date / date-time.

    A date or time without an offset is local time.  Returns an aware UTC datetime.
    """
    now = now or dt.datetime.now(dt.UTC)
    m = _SPAN.match(text)
    if m:
        return now - dt.timedelta(seconds=float(m[1]) * _UNITS[m[2].lower()])
    value = text.strip()
    if value.endswith(("Z", "z")):
        value = value[:-1] + "+00:00"
    try:
        t = dt.datetime.fromisoformat(value)
    except ValueError:
        raise ValueError(f"{text!r} is not a span (2h, 30m, 1d, 1w) or an ISO date "
                         f"or date-time (2026-03-01, 2026-03-01T08:00)") from None
    if t.tzinfo is None:
        t = t.astimezone()  # naive: local time
    return t.astimezone(dt.UTC)


def local_time(t: dt.datetime) -> str:
    return show_time(t)


def quality_text(q: Quality) -> str:
    if not q:
        return "good"
    names = [(f.name or "").lower() for f in Quality if f and f in q]
    rest = int(q) & ~sum(int(f) for f in Quality)
    if rest:
        names.append(f"0x{rest:x}")
    return "|".join(names)


def format_value(v: float | None) -> str:
    return "-" if v is None else format(v, ".15g")


def status_text(quantity: str, raw: int) -> str:
    """A status word as ``amic read`` shows it: ``0x1010 relay_open, hold_power``."""
    from drivers.dlt645 import resolve_quantity
    from protocols.dlt645 import StatusWord

    from .read import format_value as read_format

    try:
        item = resolve_quantity(quantity)
    except Exception:  # not a DL/T645 status word: the bits unnamed
        return f"0x{raw:04X}"
    bits = item.bits if item is not None else ()
    fields = {b.name: (raw >> b.start) & ((1 << b.width) - 1) for b in bits}
    return read_format(StatusWord(raw, fields), item)


def display_value(quantity: str, v: float | None) -> str:
    """A stored value as an operator reads it: status words with the names of their set
    bits, dates and times (stored as epoch seconds of the meter's local time) as such."""
    if v is None:
        return "-"
    q = QUANTITIES.get(quantity)
    kind = q.kind if q is not None else Kind.NUMBER
    try:
        if kind == Kind.STATUS:
            return status_text(quantity, int(v))
        if kind == Kind.COUNT:
            return str(int(v))
        if kind == Kind.DATE:
            return dt.datetime.fromtimestamp(v).date().isoformat()
        if kind == Kind.TIME:
            s = int(v)
            return f"{s // 3600:02d}:{s // 60 % 60:02d}:{s % 60:02d}"
        if kind == Kind.DATETIME:
            return show_time(dt.datetime.fromtimestamp(v, dt.UTC))
    except (ValueError, OverflowError, OSError):  # NaN or out of range: the number itself
        pass
    return format_value(v)


def table(rows: list[StoredReading]) -> str:
    """TIME METER QUANTITY VALUE UNIT QUALITY, and METER_TIME (a freeze's time) when any
    reading has one."""
    with_meter_time = any(r.meter_ts is not None for r in rows)
    header = ("TIME", "METER", "QUANTITY", "VALUE", "UNIT", "QUALITY")
    cells = [header + (("METER_TIME",) if with_meter_time else ())]
    for r in rows:
        row: tuple[str, ...] = (local_time(r.ts), r.meter, r.quantity,
                                display_value(r.quantity, r.value),
                                r.unit, quality_text(r.quality))
        if with_meter_time:
            row += ("-" if r.meter_ts is None else show_time(r.meter_ts),)
        cells.append(row)
    widths = [max(len(c[i]) for c in cells) for i in range(len(cells[0]))]
    numeric = {i for i, r in enumerate(rows, 1)
               if (QUANTITIES[r.quantity].kind if r.quantity in QUANTITIES else Kind.NUMBER)
               == Kind.NUMBER}
    lines = []
    for n, c in enumerate(cells):
        value = c[3].rjust(widths[3]) if n in numeric or n == 0 else c[3].ljust(widths[3])
        parts = [c[0].ljust(widths[0]), c[1].ljust(widths[1]), c[2].ljust(widths[2]),
                 value, c[4].ljust(widths[4]), *(x.ljust(w) for x, w in
                                                 zip(c[5:], widths[5:], strict=True))]
        lines.append("  ".join(parts).rstrip())
    return "\n".join(lines)


def as_json(r: StoredReading) -> dict[str, Any]:
    return {"id": r.id, "time": json_time(r.ts, "milliseconds"),
            "ts_ms": int(r.ts.timestamp() * 1000), "meter": r.meter, "quantity": r.quantity,
            "value": r.value, "value_text": display_value(r.quantity, r.value),
            "unit": r.unit, "quality": int(r.quality),
            "quality_text": quality_text(r.quality),
            "meter_time": None if r.meter_ts is None
            else json_time(r.meter_ts),
            "area": r.area, "bus": r.bus}


# ---- load curves (amic query --curve, amic export --curve) -------------------------------

CURVE_STEP = dt.timedelta(minutes=15)


@dataclass(frozen=True, slots=True)
class CurveDay:
    """One meter's curve of one local day: ``times`` every point of the day (aware, in
    the day's zone; 96 on a day without a clock change) and, per quantity, the value at
    each (None: missing)."""

    meter: str
    times: list[dt.datetime]
    values: dict[str, list[float | None]]
    units: dict[str, str]

    def present(self) -> int:
        """Points with a value of at least one quantity."""
        return sum(any(v[i] is not None for v in self.values.values())
                   for i in range(len(self.times)))


def day_points(day: dt.date, zone: dt.tzinfo) -> list[dt.datetime]:
    """The quarter hours of local ``day`` in ``zone``, as aware datetimes."""
    start = dt.datetime.combine(day, dt.time(), zone).astimezone(dt.UTC)
    end = dt.datetime.combine(day + dt.timedelta(days=1), dt.time(), zone).astimezone(dt.UTC)
    out = []
    t = start
    while t < end:
        out.append(t.astimezone(zone))
        t += CURVE_STEP
    return out


def curve_day(store: Store, meter: str, day: dt.date, zone: dt.tzinfo,
              quantities: list[str] | None = None) -> CurveDay:
    """The stored curve points of ``meter`` on local ``day``: readings with a meter
    timestamp on a quarter hour of the day (daily freezes left out); ``quantities``
    None: every quantity found."""
    times = day_points(day, zone)
    lo = int(times[0].timestamp() * 1000)
    hi = int((times[-1] + CURVE_STEP).timestamp() * 1000)
    rows = store.thread_connection().execute(
        "SELECT quantity, value, unit, meter_ts FROM indexed_readings WHERE meter = ? "
        "AND ts >= ? AND meter_ts >= ? AND meter_ts < ? ORDER BY id",
        (meter, lo, lo, hi)).fetchall()
    slot = {int(t.timestamp() * 1000): i for i, t in enumerate(times)}
    values: dict[str, list[float | None]] = {q: [None] * len(times) for q in quantities or ()}
    units: dict[str, str] = {}
    for quantity, value, unit, meter_ts in rows:
        i = slot.get(meter_ts)
        if i is None or quantity.startswith("freeze_"):
            continue
        if quantities is not None and quantity not in quantities:
            continue
        values.setdefault(quantity, [None] * len(times))[i] = value
        units[quantity] = unit
    for q in values:
        units.setdefault(q, QUANTITIES[q].unit if q in QUANTITIES else "")
    return CurveDay(meter, times, dict(sorted(values.items())), units)


def curve_text(c: CurveDay) -> str:
    """TIME (local HH:MM) and one column a quantity; ``-`` where a point is missing."""
    header = ["TIME", *(f"{q} ({c.units[q]})" if c.units.get(q) else q for q in c.values)]
    cells = [header]
    for i, t in enumerate(c.times):
        cells.append([t.strftime("%H:%M"), *(format_value(v[i]) for v in c.values.values())])
    widths = [max(len(row[k]) for row in cells) for k in range(len(header))]
    return "\n".join("  ".join(x.rjust(w) if k else x.ljust(w)
                                for k, (x, w) in enumerate(zip(row, widths, strict=True)))
                      .rstrip() for row in cells)


def _show_curve(store: Store, meter: str, day_text: str, quantity: str | None,
                json_out: bool) -> None:
    try:
        day = dt.date.fromisoformat(day_text.strip())
    except ValueError:
        _fail(f"--day: {day_text!r} is not a date: give YYYY-MM-DD")
    zone = dt.datetime.now().astimezone().tzinfo or dt.UTC
    c = curve_day(store, meter, day, zone, [quantity] if quantity else None)
    if json_out:
        for i, t in enumerate(c.times):
            click.echo(json.dumps({"meter": meter, "time": t.isoformat(),
                                   "utc": t.astimezone(dt.UTC).isoformat(),
                                   **{q: v[i] for q, v in c.values.items()}}))
        return
    offset = c.times[0].strftime("%z") if c.times else ""
    click.echo(f"load curve of {meter} on {day.isoformat()} (local time, UTC"
               f"{offset[:3]}:{offset[3:]}): {c.present()} of {len(c.times)} points")
    if not c.values:
        click.echo(f"no curve points of {meter} stored for {day.isoformat()}", err=True)
        return
    click.echo(curve_text(c))


def data_dir_from_config(config: Path) -> Path | None:
    """The configured data dir, or None when collector.config is not available."""
    try:
        module = importlib.import_module("collector.config")
    except ImportError:
        return None
    load_settings = getattr(module, "load_settings", None)
    if load_settings is None:
        return None
    config_error: type[BaseException] = getattr(module, "ConfigError", ValueError)
    try:
        settings = load_settings(config)
    except config_error as e:
        problems = getattr(e, "problems", None) or [str(e)]
        for p in problems:
            click.echo(f"amic query: {p}", err=True)
        _fail(f"{len(problems)} problem(s) in {config}")
    except OSError as e:
        _fail(f"cannot read {config}: {e}")
    return Path(settings.collector.data_dir)


@click.command()
@click.option("--data-dir", "-d", type=click.Path(file_okay=False, path_type=Path),
              default=None, help="The collector's data directory (holds amic.db).")
@click.option("--config", "-c", "config_path", type=click.Path(dir_okay=False, path_type=Path),
              default=None, help="Take the data directory from this configuration.")
@click.option("--meter", "-m", default=None, metavar="ID", help="Readings of this meter.")
@click.option("--area", "-a", default=None, metavar="ID",
              help="Readings of the meters of this transformer area.")
@click.option("--quantity", default=None, metavar="NAME", help="Only this quantity.")
@click.option("--since", "-s", default=None, metavar="WHEN",
              help="2h, 30m, 1d, 1w ago, or an ISO date/date-time (local unless it has "
                   "an offset).")
@click.option("--limit", "-n", type=click.IntRange(min=1), default=50, show_default=True,
              metavar="N", help="At most this many readings (the newest).")
@click.option("--json", "json_out", is_flag=True, help="One JSON object per line.")
@click.option("--curve", "curve_meter", default=None, metavar="METER",
              help="The load curve of this meter on --day: every 15-minute point, "
                   "missing ones as -.")
@click.option("--day", "day_text", default=None, metavar="YYYY-MM-DD",
              help="With --curve: the local day.")
def query(data_dir: Path | None, config_path: Path | None, meter: str | None,
          area: str | None, quantity: str | None, since: str | None, limit: int,
          json_out: bool, curve_meter: str | None, day_text: str | None) -> None:
    """Show the newest stored readings, oldest first, in local time.

    The store keeps UTC; times are shown in this machine's time zone (TZ).  With
    ``--curve METER --day D``: that meter's load curve of the local day D instead.

    Exit status: 0 shown (possibly none), 2 bad arguments or no store.
    """
    if meter is not None and area is not None:
        _fail("give --meter or --area, not both")
    if curve_meter is not None and (day_text is None or meter or area or since):
        _fail("--curve METER takes --day D (and --quantity), not --meter, --area or --since")
    if day_text is not None and curve_meter is None:
        _fail("--day goes with --curve METER")
    if data_dir is None and config_path is None:
        _fail("give --data-dir DIR or --config FILE")
    if data_dir is None:
        assert config_path is not None
        data_dir = data_dir_from_config(config_path)
        if data_dir is None:
            _fail(f"cannot read {config_path}: configuration support (collector.config) "
                  f"is not available; give --data-dir")
    try:
        since_t = parse_since(since) if since is not None else None
    except ValueError as e:
        _fail(f"--since: {e}")
    path = data_dir / DB_NAME
    if not path.is_file():
        _fail(f"no store in {data_dir}: {path} does not exist")
    try:
        store = Store(path, create=False)
    except (StoreError, OSError) as e:
        _fail(str(e))
    except Exception as e:  # sqlite3.DatabaseError: not a database file
        _fail(f"{path}: cannot open: {e}")
    with store:
        if curve_meter is not None:
            assert day_text is not None
            _show_curve(store, curve_meter, day_text, quantity, json_out)
            return
        if area is not None and not store.meters(area):
            click.echo(f"amic query: no meters of area {area!r} in the store (the meters are "
                       f"synced from the configuration by amic run)", err=True)
        rows = store.recent_readings(meter=meter, area=area, since=since_t,
                                     quantity=quantity, limit=limit)
    rows.reverse()  # oldest first: the newest end up at the bottom
    if json_out:
        for r in rows:
            click.echo(json.dumps(as_json(r), ensure_ascii=False))
        return
    if not rows:
        what = " ".join(f"{k} {v}" for k, v in (("meter", meter), ("area", area),
                                                ("quantity", quantity)) if v)
        click.echo(f"no readings{' of ' + what if what else ''}"
                   f"{' since ' + local_time(since_t) if since_t else ''}", err=True)
        return
    click.echo(table(rows))

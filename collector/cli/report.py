"""``amic report lineloss|success|voltage``, ``amic export``, ``amic ledger check``: daily reports.

The reports read the store of a configuration (``--config FILE``: its ``data_dir``),
opened read-only; they are computed by :mod:`collector.daily.reports`.  Days are local days in
``--tz`` (default Asia/Shanghai); ``--day`` defaults to yesterday there.

Exit status: 0 done; ``report lineloss``: 3 when any area is incomplete (a meter without
a value at a day boundary, no area master...); ``ledger check``: 1 when the ledger has
problems; 2 bad arguments, an unusable configuration or no store.
"""

from __future__ import annotations

import base64
import csv
import datetime as dt
import io
import json
import sys
import tomllib
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import Any, Literal, NoReturn, TypeVar
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

import click

from collector.api.formats import (
    decode_ledger,
    issue_json,
    issue_lines,
    ledger_summary,
    lineloss_json,
    success_json,
)
from collector.api.ledger import ledger_path, replace_file
from collector.config import ConfigError, load_settings, secrets_file_named
from collector.config.personal import PersonalKey, new_key, seal_ledger_text
from collector.config.secrets import SecretsError, load_secrets
from collector.config.settings import DailySettings, Settings
from collector.daily.reports import (
    DEFAULT_TZ,
    AreaLineLoss,
    LedgerIssue,
    LedgerReport,
    SuccessRow,
    billing_export,
    line_loss,
    meter_energies,
    success_report,
    validate_ledger,
    write_csv,
)
from collector.daily.voltage import VoltageRow, voltage_report
from collector.store import DB_NAME, Store, StoreError
from protocols.quantities import QUANTITIES

from .query import curve_day

__all__ = ["EXIT_INCOMPLETE", "EXIT_PROBLEMS", "EXIT_USAGE", "export", "ledger", "report"]

EXIT_PROBLEMS = 1  # ledger check: the ledger has problems
EXIT_USAGE = 2  # bad arguments, an unusable configuration, no store
EXIT_INCOMPLETE = 3  # report lineloss: some area has no complete data for the day
MISSING_SHOWN = 3  # missing meters listed by name in the line-loss table

F = TypeVar("F", bound=Callable[..., Any])


def _fail(command: str, message: str, code: int = EXIT_USAGE) -> NoReturn:
    click.echo(f"amic {command}: {message}", err=True)
    sys.exit(code)


# ---- shared options and helpers --------------------------------------------------------

def _config_option(f: F) -> F:
    return click.option("--config", "-c", "config_path", required=True, metavar="FILE",
                        type=click.Path(dir_okay=False, path_type=Path),
                        help="The collector's configuration (its data_dir holds the store).")(f)


def _day_options(f: F) -> F:
    f = click.option("--tz", "tz_name", default=DEFAULT_TZ, show_default=True, metavar="ZONE",
                     help="Time zone of the day (IANA name).")(f)
    return click.option("--day", "day_text", default=None, metavar="YYYY-MM-DD",
                        help="The local day [default: yesterday in --tz].")(f)


def _json_option(f: F) -> F:
    return click.option("--json", "as_json", is_flag=True,
                        help="One JSON object per line (JSON Lines).")(f)


def _zone(command: str, name: str) -> ZoneInfo:
    try:
        return ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError):
        _fail(command, f"--tz: unknown time zone {name!r} (an IANA name such as {DEFAULT_TZ})")


def parse_day(text: str | None, zone: dt.tzinfo, now: dt.datetime | None = None) -> dt.date:
    """``YYYY-MM-DD``; None: yesterday in ``zone``.  ValueError names what is wrong."""
    if text is None:
        return (now or dt.datetime.now(dt.UTC)).astimezone(zone).date() - dt.timedelta(days=1)
    try:
        return dt.datetime.strptime(text.strip(), "%Y-%m-%d").date()
    except ValueError:
        raise ValueError(f"{text!r} is not a date: give YYYY-MM-DD, e.g. 2026-03-01") from None


def _settings(command: str, path: Path) -> Settings:
    try:
        return load_settings(path)
    except ConfigError as e:
        for p in e.problems:
            click.echo(str(p), err=True)
        _fail(command, f"{path}: {len(e.problems)} problem(s) in the configuration")
    except OSError as e:
        _fail(command, f"{path}: {e.strerror or e}")


def _open_store(command: str, settings: Settings) -> Store:
    data_dir = Path(settings.collector.data_dir)
    path = data_dir / DB_NAME
    if not path.is_file():
        _fail(command, f"no store in {data_dir}: {path} does not exist (amic run creates it)")
    try:
        return Store(path, create=False)
    except (StoreError, OSError) as e:
        _fail(command, str(e))
    except Exception as e:  # sqlite3.DatabaseError: not a database file
        _fail(command, f"{path}: cannot open: {e}")


def _prepare(command: str, config_path: Path, day_text: str | None,
             tz_name: str) -> tuple[Store, dt.date, ZoneInfo]:
    store, day, zone, _ = _prepare_energy(command, config_path, day_text, tz_name)
    return store, day, zone


def _prepare_energy(command: str, config_path: Path, day_text: str | None, tz_name: str
                    ) -> tuple[Store, dt.date, ZoneInfo, dict[str, str]]:
    """:func:`_prepare`, and which energy each configured meter is billed on."""
    zone = _zone(command, tz_name)
    try:
        day = parse_day(day_text, zone)
    except ValueError as e:
        _fail(command, f"--day: {e}")
    settings = _settings(command, config_path)
    energy = meter_energies(settings.meters, [settings.source.absolute().parent])
    return _open_store(command, settings), day, zone, energy


def _num(v: float | None, digits: int = 2) -> str:
    return "-" if v is None else f"{v:.{digits}f}"


def _table(header: Sequence[str], rows: Iterable[Sequence[str]], right: set[int]) -> str:
    cells = [list(header), *(list(r) for r in rows)]
    widths = [max(len(c[i]) for c in cells) for i in range(len(header))]
    lines = []
    for c in cells:
        parts = [x.rjust(w) if i in right else x.ljust(w)
                 for i, (x, w) in enumerate(zip(c, widths, strict=True))]
        lines.append("  ".join(parts).rstrip())
    return "\n".join(lines)


# ---- amic report -----------------------------------------------------------------------

@click.group("report")
def report() -> None:
    """Daily reports from the store: line loss, read success, voltage qualification."""


def missing_text(missing: Sequence[str], shown: int = MISSING_SHOWN) -> str:
    """``-``, or the count and the first few: ``2: M1, M2``, ``5: M1, M2, M3, ...``."""
    if not missing:
        return "-"
    more = ", ..." if len(missing) > shown else ""
    return f"{len(missing)}: " + ", ".join(missing[:shown]) + more


def lineloss_table(areas: Sequence[AreaLineLoss]) -> str:
    rows = [(a.area, a.master or "-", _num(a.supplied_kwh), _num(a.sold_kwh),
             _num(a.loss_kwh) if a.complete else "-",
             _num(a.loss_pct) if a.complete else "-",
             "complete" if a.complete else "incomplete", missing_text(a.missing), a.source)
            for a in areas]
    return _table(("AREA", "MASTER", "SUPPLIED_KWH", "SOLD_KWH", "LOSS_KWH", "LOSS_%",
                   "STATUS", "MISSING", "SOURCE"), rows, right={2, 3, 4, 5})


@report.command("lineloss")
@_config_option
@_day_options
@_json_option
def lineloss(config_path: Path, day_text: str | None, tz_name: str, as_json: bool) -> None:
    """Line loss (线损) per transformer area for one local day.

    Supplied = the area master's daily frozen energy over the day, sold = the customer
    meters' sum, loss = supplied - sold (and % of supplied).  An area lacking a value
    (a meter not read at a day boundary, no area master...) is "incomplete" and gets no
    loss; the reasons follow the table.

    Exit status: 0 every area complete, 3 some area incomplete, 2 bad arguments.
    """
    command = "report lineloss"
    store, day, zone, energy = _prepare_energy(command, config_path, day_text, tz_name)
    with store:
        areas = line_loss(store, day, zone, energy=energy)
    incomplete = [a for a in areas if not a.complete]
    if as_json:  # JSON Lines: one object per area
        for a in areas:
            click.echo(json.dumps({"day": day.isoformat(), "tz": tz_name, **lineloss_json(a)},
                                  ensure_ascii=False))
    elif not areas:
        click.echo(f"no transformer areas in the store's meters table ({store.path}); the "
                   f"meters are synced from the configuration by amic run", err=True)
    else:
        click.echo(f"line loss {day.isoformat()} ({tz_name})")
        click.echo(lineloss_table(areas))
        for a in incomplete:
            click.echo(f"{a.area}: incomplete: {a.reason}")
        click.echo(f"{len(areas) - len(incomplete)} of {len(areas)} area(s) complete")
    if incomplete:
        sys.exit(EXIT_INCOMPLETE)


def success_table(rows: Sequence[SuccessRow]) -> str:
    by = rows[0].by if rows else "area"
    cells = [("total" if r.is_total else str(r.key), str(r.planned), str(r.succeeded),
              str(r.failed), _num(r.pct), str(r.cycles), f"{r.reads_ok}/{r.reads_total}")
             for r in rows]
    return _table((by.upper(), "PLANNED", "SUCCEEDED", "FAILED", "SUCCESS_%", "CYCLES",
                   "READS_OK/TOTAL"), cells, right={1, 2, 3, 4, 5, 6})


@report.command("success")
@_config_option
@_day_options
@click.option("--by", type=click.Choice(["area", "bus"]), default="area", show_default=True,
              help="One row per transformer area or per bus.")
@_json_option
def success(config_path: Path, day_text: str | None, tz_name: str, by: str,
            as_json: bool) -> None:
    """Read success (采集成功率) per area or bus, and the total, for one local day.

    PLANNED: meters due in at least one collection cycle of the day; SUCCEEDED: those
    read in at least one of them; "-" stands for meters without an area.

    Exit status: 0 shown, 2 bad arguments.
    """
    command = "report success"
    store, day, zone = _prepare(command, config_path, day_text, tz_name)
    key: Literal["area", "bus"] = "bus" if by == "bus" else "area"
    with store:
        rows = success_report(store, day, zone, by=key)
    if as_json:  # JSON Lines: one object per row, the total last
        for r in rows:
            click.echo(json.dumps({"day": day.isoformat(), "tz": tz_name, "by": key,
                                   **success_json(r)}, ensure_ascii=False))
        return
    if rows and rows[-1].cycles == 0:
        click.echo(f"no collection cycles started on {day.isoformat()} ({tz_name})", err=True)
    click.echo(f"read success {day.isoformat()} ({tz_name}) by {key}")
    click.echo(success_table(rows))


# ---- amic report voltage ---------------------------------------------------------------

def voltage_table(rows: Sequence[VoltageRow]) -> str:
    by = rows[0].by if rows else "meter"
    cells = [(r.key, *((r.area,) if by == "meter" else ()), _num(r.nominal, 1),
              _num(None if r.rate is None else r.rate * 100, 3), _num(r.monitored_min, 1),
              _num(r.out_min, 1), _num(r.high_min, 1), _num(r.low_min, 1), _num(r.v_max, 1),
              _num(r.v_min, 1)) for r in rows]
    head = (by.upper(), *(("AREA",) if by == "meter" else ()), "NOMINAL_V", "RATE_%",
            "MONITORED_MIN", "OUT_MIN", "HIGH_MIN", "LOW_MIN", "V_MAX", "V_MIN")
    first = 2 if by == "meter" else 1
    return _table(head, cells, right=set(range(first, len(head))))


def voltage_json(r: VoltageRow) -> dict[str, Any]:
    return {r.by: r.key, "area": r.area, "nominal": r.nominal,
            "rate": None if r.rate is None else round(r.rate, 6),
            "monitored_min": round(r.monitored_min, 3), "out_min": round(r.out_min, 3),
            "high_min": round(r.high_min, 3), "low_min": round(r.low_min, 3),
            "v_max": r.v_max, "v_min": r.v_min}


@report.command("voltage")
@_config_option
@_day_options
@click.option("--by", type=click.Choice(["meter", "area"]), default="meter",
              show_default=True, help="One row per meter or per transformer area.")
@_json_option
def voltage(config_path: Path, day_text: str | None, tz_name: str, by: str,
            as_json: bool) -> None:
    """Voltage qualification (电压合格率) per meter or area for one local day.

    RATE = 1 - minutes out of band / minutes monitored, from the stored phase voltages;
    the band is ``[daily] voltage_nominal`` (per area ``voltage_areas``) +
    ``voltage_band_high_pct`` / ``voltage_band_low_pct`` (220 V, +7 % / -10 %).

    Exit status: 0 shown, 2 bad arguments.
    """
    command = "report voltage"
    zone = _zone(command, tz_name)
    try:
        day = parse_day(day_text, zone)
    except ValueError as e:
        _fail(command, f"--day: {e}")
    settings = _settings(command, config_path)
    daily = settings.daily or DailySettings()
    key: Literal["meter", "area"] = "area" if by == "area" else "meter"
    with _open_store(command, settings) as store:
        rows = voltage_report(store, day, zone, nominal=daily.nominal,
                              high_pct=daily.voltage_band_high_pct,
                              low_pct=daily.voltage_band_low_pct, by=key)
    if as_json:
        for r in rows:
            click.echo(json.dumps({"day": day.isoformat(), "tz": tz_name, "by": key,
                                   **voltage_json(r)}, ensure_ascii=False))
        return
    if not rows:
        click.echo(f"no voltages stored on {day.isoformat()} ({tz_name})", err=True)
    click.echo(f"voltage qualification {day.isoformat()} ({tz_name}) by {key}")
    click.echo(voltage_table(rows))


# ---- amic export -----------------------------------------------------------------------

@click.command("export")
@_config_option
@_day_options
@click.option("--format", "fmt", type=click.Choice(["csv"]), default="csv", show_default=True,
              help="Output format.")
@click.option("--output", "-o", default="-", show_default=True, metavar="FILE",
              help="Write here (UTF-8 with a BOM, for Excel); - for standard output.")
@click.option("--curve", is_flag=True,
              help="The load curves of the day instead: one row per meter and 15-minute "
                   "point.")
@click.option("--area", default=None, metavar="ID",
              help="With --curve: the meters of this transformer area only.")
def export(config_path: Path, day_text: str | None, tz_name: str, fmt: str,
           output: str, curve: bool, area: str | None) -> None:
    """Billing export of one local day: each meter's daily frozen energy by tariff.

    One row per meter: opening and closing values (kWh) and usage, total and t1..t4, the
    last balance (yuan) of the day, and a status (complete / partial / missing).  A
    meter whose profile has no forward energy total is billed on combined energy, and
    its status says so: "complete (combined)".

    With --curve: the stored load curves of the day (of --area's meters): meter, local
    and UTC time of each point, one column a quantity, empty cells where a point is
    missing.

    Exit status: 0 written, 2 bad arguments or the output cannot be written.
    """
    command = "export"
    assert fmt == "csv"
    if area is not None and not curve:
        _fail(command, "--area goes with --curve")
    if curve:
        _export_curves(config_path, day_text, tz_name, output, area)
        return
    store, day, zone, energy = _prepare_energy(command, config_path, day_text, tz_name)
    with store:
        rows = billing_export(store, day, zone, energy=energy)
    if output == "-":
        buf = io.StringIO()
        n = write_csv(rows, buf)
        click.echo(buf.getvalue(), nl=False)
    else:
        target = Path(output)
        if target.is_dir():
            _fail(command, f"--output: {target} is a directory")
        try:
            n = write_csv(rows, target)
        except OSError as e:
            _fail(command, f"--output: cannot write {target}: {e.strerror or e}")
    status = {s: sum(r.status == s for r in rows) for s in ("complete", "partial", "missing")}
    click.echo(f"{n} meter(s) for {day.isoformat()} ({tz_name}): "
               + ", ".join(f"{v} {k}" for k, v in status.items())
               + ("" if output == "-" else f"; written to {output}"), err=True)


def _export_curves(config_path: Path, day_text: str | None, tz_name: str, output: str,
                   area: str | None) -> None:
    command = "export"
    zone = _zone(command, tz_name)
    try:
        day = parse_day(day_text, zone)
    except ValueError as e:
        _fail(command, f"--day: {e}")
    settings = _settings(command, config_path)
    meters = [m.meter_id for m in settings.meters if area is None or m.area == area]
    if not meters:
        _fail(command, f"--area: no meter of the configuration is in area {area!r}")
    store = _open_store(command, settings)
    with store:
        curves = [curve_day(store, m, day, zone) for m in meters]
    quantities = sorted({q for c in curves for q in c.values})
    header = ["meter", "time", "utc", *(
        f"{q} ({QUANTITIES[q].unit})" if q in QUANTITIES and QUANTITIES[q].unit else q
        for q in quantities)]
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\r\n")
    writer.writerow(header)
    rows = 0
    for c in curves:
        for i, t in enumerate(c.times):
            writer.writerow([c.meter, t.isoformat(timespec="minutes"),
                             t.astimezone(dt.UTC).isoformat(timespec="minutes"),
                             *("" if c.values.get(q) is None or c.values[q][i] is None
                               else format(c.values[q][i], ".15g") for q in quantities)])
            rows += 1
    if output == "-":
        click.echo(buf.getvalue(), nl=False)
    else:
        target = Path(output)
        if target.is_dir():
            _fail(command, f"--output: {target} is a directory")
        try:
            target.write_text(buf.getvalue(), encoding="utf-8-sig", newline="")
        except OSError as e:
            _fail(command, f"--output: cannot write {target}: {e.strerror or e}")
    points = sum(c.present() for c in curves)
    click.echo(f"{len(curves)} meter(s), {rows} row(s) for {day.isoformat()} ({tz_name}): "
               f"{points} point(s) stored, {rows - points} missing"
               + ("" if output == "-" else f"; written to {output}"), err=True)


# ---- amic ledger -----------------------------------------------------------------------

@click.group("ledger")
def ledger() -> None:
    """Meter ledger (台账) tools."""


def _bus_names(config_path: Path) -> list[str]:
    """The configured buses; read from the TOML itself when the configuration fails only
    because of its ledger (quite possibly the one being checked)."""
    command = "ledger check"
    try:
        return [b.name for b in load_settings(config_path).buses]
    except OSError as e:
        _fail(command, f"{config_path}: {e.strerror or e}")
    except ConfigError as e:
        own = [p for p in e.problems if p.file == str(config_path)]
        if own:
            for p in own:
                click.echo(str(p), err=True)
            _fail(command, f"{config_path}: {len(own)} problem(s) in the configuration")
    try:
        data = tomllib.loads(config_path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, tomllib.TOMLDecodeError) as e:  # pragma: no cover
        _fail(command, f"{config_path}: {e}")
    buses = data.get("bus", [])
    return [b["name"] for b in buses if isinstance(b, dict) and isinstance(b.get("name"), str)]


def _secrets_of(config_path: Path) -> Path | None:
    """The secrets file the configuration names (``[commands]``, else ``[api]``), read
    from the TOML itself so that a refused ledger does not hide it."""
    try:
        data = tomllib.loads(config_path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, tomllib.TOMLDecodeError):
        return None
    return secrets_file_named(data, config_path.parent)


def _read_ledger(file: Path) -> tuple[str | None, LedgerIssue | None]:
    try:
        raw = file.read_bytes()
    except OSError as e:
        _fail("ledger check", f"{file}: {e.strerror or e}")
    return decode_ledger(raw)


@ledger.command("check")
@click.argument("file", type=click.Path(dir_okay=False, path_type=Path))
@_config_option
@_json_option
def check(file: Path, config_path: Path, as_json: bool) -> None:
    """Check the meter ledger FILE (CSV) before importing it.

    Reports duplicate addresses (per bus) and meter ids, empty required cells, meters on
    buses the configuration does not have, and anything else amic run would refuse, each
    with its CSV line number (FILE:LINE: kind: message).

    Exit status: 0 clean, 1 problems found, 2 bad arguments.
    """
    buses = _bus_names(config_path)
    text, unreadable = _read_ledger(file)
    if text is None:
        assert unreadable is not None
        result = LedgerReport(str(file), issues=[unreadable])
    else:
        result = validate_ledger(text, buses, file=str(file),
                                 secrets=_secrets_of(config_path))
    if as_json:  # JSON Lines: one object per problem; the summary on stderr
        for i in result.issues:
            click.echo(json.dumps({"file": result.file, **issue_json(i)}, ensure_ascii=False))
        click.echo(ledger_summary(result), err=True)
    else:
        for line in issue_lines(result):
            click.echo(line)
        click.echo(ledger_summary(result))
    if not result.ok:
        sys.exit(EXIT_PROBLEMS)


@ledger.command("key")
def ledger_key() -> None:
    """Print a new key for sealing the ledger's customer and phone cells.

    Put the two lines it prints in the secrets file (the one [commands] secrets_file
    names; chmod 600), then run amic ledger seal.  Losing the key loses the sealed names
    and phones: keep a copy where the secrets file's backups are."""
    key = base64.b64encode(new_key()).decode()
    click.echo(f'[ledger]\nkey = "base64:{key}"')


@ledger.command("seal")
@_config_option
@click.option("--file", "file", default=None, type=click.Path(dir_okay=False, path_type=Path),
              help="The ledger to seal [default: the configuration's [meters] ledger].")
def ledger_seal(config_path: Path, file: Path | None) -> None:
    """Seal the plain customer and phone cells of the ledger with the [ledger] key.

    The file is checked first (as amic ledger check does) and replaced whole, keeping
    its mode; cells already sealed, comments and other rows keep their bytes.  amic run
    opens the cells with the same key; every view masks them by role as before.

    Exit status: 0 sealed (or nothing to seal), 1 the ledger has problems, 2 no key,
    no ledger or bad arguments."""
    command = "ledger seal"
    secrets = _secrets_of(config_path)
    if secrets is None:
        _fail(command, f"{config_path}: no secrets file ([commands] secrets_file)")
    try:
        raw_key = load_secrets(secrets).ledger_key()
    except SecretsError as e:
        _fail(command, "; ".join(e.problems))
    if raw_key is None:
        _fail(command, f"{secrets}: no [ledger] key (amic ledger key prints one)")
    if file is None:
        try:
            file = ledger_path(config_path)
        except (OSError, UnicodeDecodeError, tomllib.TOMLDecodeError) as e:
            _fail(command, f"{config_path}: {e}")
        if file is None:
            _fail(command, f"{config_path}: no [meters] ledger")
    text, unreadable = _read_ledger(file)
    if text is None:
        assert unreadable is not None
        result = LedgerReport(str(file), issues=[unreadable])
    else:
        result = validate_ledger(text, _bus_names(config_path), file=str(file),
                                 secrets=secrets)
    if not result.ok or text is None:
        for line in issue_lines(result):
            click.echo(line, err=True)
        _fail(command, f"{file}: not sealed: {ledger_summary(result)}", EXIT_PROBLEMS)
    out, n = seal_ledger_text(text, PersonalKey(raw_key))
    if n:
        replace_file(file, out.encode())
    click.echo(f"{file}: {n} cell(s) sealed")

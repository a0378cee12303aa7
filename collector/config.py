"""Load and check the collector's configuration: one TOML file, plus an optional meter ledger.

:func:`load_settings` reads the file and checks all of it before anything starts.  Every
problem found is collected (not just the first) and raised together as a
:class:`ConfigError`; each :class:`Problem` names the file, the line where it can be
found, the table, the key (or ledger column), the meter concerned and what was expected
against what was found::

    amic.toml:14: [[bus]] #2 (name "rs485-a"): key "baud": expected one of 1200, 2400,
    4800, 9600, 19200, got 2401

Schema (``config/amic.example.toml`` documents every key)::

    [collector]       id, data_dir, retention_days, metrics_listen, commit_interval,
                      commit_rows, max_store_mb, min_free_mb
    [[bus]]           name, type = "tcp" (host, port, line_baud) or "serial" (device,
                      baud, parity, bytesize, stopbits); td_ms, tb_ms, preamble
    [[meter]]         meter_id, address, bus, protocol, station, feeder, area, box,
                      customer, prepaid, role
    [meters]          ledger = "meters.csv" (same columns as [[meter]], one meter a row)
    [schedule.NAME]   interval, quantities, meters, jitter, retries, td_ms, backoff_max

Meter selectors (a schedule's ``meters``): ``"*"``, ``"area:ID"``, ``"bus:NAME"``,
``"feeder:ID"``, ``"station:ID"``, ``"box:ID"``, ``"role:customer|area_master"``,
``"protocol:dlt645-2007|dlt645-1997"`` or a meter id.  A meter is in a schedule if any
selector matches it; a selector that matches no meter is an error.
"""

from __future__ import annotations

import csv
import datetime as dt
import difflib
import io
import logging
import math
import os
import re
import stat
import tomllib
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from decimal import Decimal
from functools import cache
from pathlib import Path
from typing import Generic, TypeVar, cast
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from drivers.dlt645 import resolve_quantity
from drivers.errors import UnknownQuantity
from protocols.dlt645 import Version
from protocols.quantities import (
    BROADCAST_ADDRESS,
    GROUPS,
    QUANTITIES,
    normalise_address,
)

from .messages import did_you_mean as _did_you_mean
from .messages import quote as _q
from .prepaid import parse_window
from .rules import RULES, AlarmSettings
from .safefile import FileRefused, path_problem, read_regular
from .secrets import SecretsError, load_secrets
from .settings import (
    AlarmConfig,
    BusSettings,
    CollectorSettings,
    CommandSettings,
    DailySettings,
    GatewaySettings,
    MeterSettings,
    ModbusFraming,
    MqttSettings,
    PrepaidSettings,
    Protocol,
    Role,
    ScheduleSettings,
    Settings,
    TimeseriesSettings,
)

log = logging.getLogger("amic.config")

__all__ = [
    "BAUDS",
    "LEDGER_COLUMNS",
    "PROTOCOLS",
    "SELECTOR_KINDS",
    "ConfigError",
    "Problem",
    "load_settings",
    "parse_duration",
    "parse_selector",
    "select_meters",
]

BAUDS = (1200, 2400, 4800, 9600, 19200)
PARITIES = {"N": "N", "E": "E", "O": "O", "M": "M", "S": "S", "NONE": "N", "EVEN": "E",
            "ODD": "O", "MARK": "M", "SPACE": "S"}
BYTESIZES = (5, 6, 7, 8)
STOPBITS = (1, 1.5, 2)
PROTOCOLS: dict[str, Version | None] = {"dlt645-2007": Version.V2007,
                                        "dlt645-1997": Version.V1997, "modbus": None}
ROLES = ("customer", "area_master")
LEDGER_COLUMNS = ("meter_id", "address", "bus", "protocol", "station", "feeder", "area", "box",
                  "customer", "prepaid", "role", "profile")
REQUIRED_METER_KEYS = ("meter_id", "address", "bus")
# selector kind -> the meter attribute it compares
SELECTOR_KINDS = ("area", "bus", "feeder", "station", "box", "role", "protocol")

TOP_KEYS = ("collector", "bus", "meter", "meters", "schedule", "mqtt", "gateway",
            "timeseries", "commands", "prepaid", "alarms", "daily")
DAILY_KEYS = ("tz", "report_at", "timesync", "timesync_at", "backfill_days", "backfill_at",
              "audit_fraction", "audit_window")
ALARM_KEYS = ("nominal_voltage", "voltage_high_pct", "voltage_low_pct", "jump_kwh_per_hour",
              "zero_use_days", "imbalance_pct", "imbalance_min_current", "low_pf",
              "rules", "comm_loss_after", "publish")
COMMANDS_KEYS = ("secrets_file", "min_interval", "expiry", "verify_timeout", "poll_interval",
                 "direct_close", "signed")
PREPAID_KEYS = ("warn1", "warn2", "overdraft_limit", "grace", "no_trip_windows", "holidays",
                "tz", "retry_interval", "protected", "computed", "price", "prices",
                "opening_balance")
TIMESERIES_KEYS = ("url", "org", "bucket", "token_file", "batch", "precision", "gzip",
                   "gzip_level", "worker_backlog")
TOKEN_ENV = "AMIC_TSDB_TOKEN"
MQTT_KEYS = ("url", "client_id", "username", "password_file", "ca_file", "cert_file",
             "key_file", "commands", "reply_prefixes")
GATEWAY_KEYS = ("name", "prefix", "reports")
BUS_MQTT_KEYS = ("gateway",)
PASSWORD_ENV = "AMIC_MQTT_PASSWORD"
COLLECTOR_KEYS = ("id", "data_dir", "retention_days", "metrics_listen", "commit_interval",
                  "commit_rows", "max_store_mb", "min_free_mb")
BUS_COMMON_KEYS = ("name", "type", "td_ms", "tb_ms", "preamble", "modbus")
BUS_TCP_KEYS = ("host", "port", "line_baud")
BUS_SERIAL_KEYS = ("device", "baud", "parity", "bytesize", "stopbits")
METERS_KEYS = ("ledger",)
SCHEDULE_KEYS = ("interval", "quantities", "meters", "jitter", "retries", "td_ms",
                 "backoff_max")

_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.\-]{0,63}$")
_NAME_TEXT = 'a name of letters, digits, "_", "." and "-" (at most 64)'
_DURATION_RE = re.compile(r"^(?:\d+(?:\.\d+)?(?:ms|s|m|h|d))+$")
_DURATION_PART = re.compile(r"(\d+(?:\.\d+)?)(ms|s|m|h|d)")
_UNITS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0}
_DURATION_TEXT = 'a duration like "15m", "1h", "30s" or a number of seconds'
# Upper bounds on what the loader reads, so a wrong path cannot exhaust memory.
MAX_CONFIG_BYTES = 1 << 20
MAX_LEDGER_BYTES = 16 << 20
MAX_SECRET_BYTES = 64 << 10  # a password or token file

T = TypeVar("T")


# ---- problems ---------------------------------------------------------------------------

@dataclass(frozen=True, slots=True)
class Problem:
    """One thing wrong with the configuration, with where to find it.

    ``table``: ``""`` (the file), ``"collector"``, ``"bus[1]"`` (0-based), ``"meter[0]"``,
    ``"meters"``, ``"ledger"`` (its header), ``"ledger[4]"`` (the 5th data row),
    ``"schedule"`` or ``"schedule.fast"``.  ``name``: the bus or schedule name of that
    table, when known.  ``key``: the TOML key or ledger column.  ``meter``: the meter id
    concerned.  ``hint``: a suggestion ("did you mean ...").
    """

    file: str
    line: int | None
    table: str
    key: str | None
    expected: str
    found: str
    meter: str | None = None
    name: str | None = None
    hint: str = ""
    column: int | None = None

    @property
    def where(self) -> str:
        """The table as a person finds it in the file: ``[[bus]] #2 (name "rs485-a")``."""
        t = self.table
        m = re.fullmatch(r"(bus|meter|ledger|gateway)\[(\d+)\]", t)
        if m:
            kind, n = m.group(1), int(m.group(2)) + 1
            if kind in ("bus", "gateway"):
                return f"[[{kind}]] #{n}" + (f" (name {_q(self.name)})" if self.name else "")
            head = f"[[meter]] #{n}" if kind == "meter" else f"row {n}"
            return head + (f" (meter_id {_q(self.meter)})" if self.meter else "")
        if t == "ledger":
            return "header"
        return f"[{t}]" if t else ""

    def __str__(self) -> str:
        loc = self.file
        if self.line is not None:
            loc += f":{self.line}"
            if self.column is not None:
                loc += f":{self.column}"
        parts = [loc]
        if self.where:
            parts.append(self.where)
        if self.key is not None:
            word = "column" if self.table.startswith("ledger") else "key"
            parts.append(f"{word} {_q(self.key)}")
        if self.meter and not re.fullmatch(r"(meter|ledger)\[\d+\]", self.table):
            parts.append(f"meter {_q(self.meter)}")
        text = ": ".join(parts) + f": expected {self.expected}, got {self.found}"
        return text + (f"; {self.hint}" if self.hint else "")


class ConfigError(Exception):
    """The configuration is not usable; ``problems`` lists everything wrong with it."""

    def __init__(self, problems: Sequence[Problem]) -> None:
        self.problems: list[Problem] = list(problems)
        super().__init__("\n".join(str(p) for p in self.problems))


def _show(value: object) -> str:
    """A value as it would be written in TOML (shortened)."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str):
        text = _q(value)
        return text if len(text) <= 60 else text[:56] + '..."'
    if isinstance(value, int | float):
        return repr(value) if isinstance(value, int) or math.isfinite(value) else str(value)
    if isinstance(value, list):
        inner = ", ".join(_show(v) for v in value[:8])
        return f"[{inner}{', ...' if len(value) > 8 else ''}]"
    if isinstance(value, dict):
        return "a table"
    return type(value).__name__


def _one_of(values: Iterable[object]) -> str:
    return "one of " + ", ".join(_show(v) for v in values)


# ---- converters: a raw TOML value (or ledger cell) to a typed one -----------------------

class _Bad(Exception):
    """A value that does not fit; ``found`` overrides the shown value."""

    def __init__(self, found: str | None = None, hint: str = "",
                 expected: str | None = None) -> None:
        super().__init__(found)
        self.found = found
        self.hint = hint
        self.expected = expected


@dataclass(frozen=True, slots=True)
class _Conv(Generic[T]):
    expected: str
    fn: Callable[[object], T]


def _str_value(v: object) -> str:
    if not isinstance(v, str):
        raise _Bad()
    return v.strip()


def _name_conv(what: str = _NAME_TEXT) -> _Conv[str]:
    def fn(v: object) -> str:
        s = _str_value(v)
        if not _NAME_RE.match(s):
            raise _Bad()
        return s
    return _Conv(what, fn)


def _path_conv(what: str) -> _Conv[str]:
    """A non-empty path the kernel can take: no NUL byte, no over-long name."""
    def fn(v: object) -> str:
        s = _str_value(v)
        if not s:
            raise _Bad()
        problem = path_problem(s)
        if problem is not None:
            raise _Bad(found=f"{_show(s)} ({problem})")
        return s
    return _Conv(what, fn)


def _text_conv() -> _Conv[str]:
    return _Conv("a string", _str_value)


def _nonempty_conv(what: str) -> _Conv[str]:
    def fn(v: object) -> str:
        s = _str_value(v)
        if not s:
            raise _Bad()
        return s
    return _Conv(what, fn)


def _customer_conv() -> _Conv[str]:
    def fn(v: object) -> str:
        if not isinstance(v, str):
            # Customer numbers are personal data: say what it is, not what it says.
            kind = "a number" if isinstance(v, int | float) else f"a {type(v).__name__}"
            raise _Bad(found=f"{kind} (not shown)", hint='quote it: customer = "..."'
                       if isinstance(v, int | float) else "")
        return v.strip()
    return _Conv("a string", fn)


def _int_conv(lo: int, hi: int, unit: str = "") -> _Conv[int]:
    def fn(v: object) -> int:
        if isinstance(v, bool) or not isinstance(v, int) or not lo <= v <= hi:
            raise _Bad()
        return v
    return _Conv(f"an integer from {lo} to {hi}{unit}", fn)


def _choice_conv(values: Sequence[T]) -> _Conv[T]:
    def fn(v: object) -> T:
        for c in values:
            if isinstance(c, str):
                if isinstance(v, str) and v.strip() == c:
                    return c
            elif isinstance(v, int | float) and not isinstance(v, bool) and v == c:
                return c
        hint = _did_you_mean(v, [str(c) for c in values]) if isinstance(v, str) else ""
        raise _Bad(hint=hint)
    return _Conv(_one_of(values), fn)


def _parity_conv() -> _Conv[str]:
    def fn(v: object) -> str:
        if not isinstance(v, str) or v.strip().upper() not in PARITIES:
            raise _Bad()
        return PARITIES[v.strip().upper()]
    return _Conv('one of "N", "E", "O", "M", "S" (or "none", "even", "odd", ...)', fn)


def _ms_conv(lo: float, hi: float) -> _Conv[float]:
    def fn(v: object) -> float:
        if isinstance(v, bool) or not isinstance(v, int | float) or not lo <= v <= hi:
            raise _Bad()
        return float(v) / 1000.0
    return _Conv(f"milliseconds from {lo:g} to {hi:g}", fn)


def parse_duration(value: object) -> float:
    """Seconds from ``"15m"``, ``"1h30m"``, ``"30s"``, ``"500ms"``, ``"1d"`` or a number.

    ValueError for anything else (negative, not finite, no unit on a string).
    """
    if isinstance(value, bool):
        raise ValueError(f"{_show(value)} is not a duration")
    if isinstance(value, int | float):
        if not math.isfinite(value) or value < 0:
            raise ValueError(f"{_show(value)} is not a duration")
        return float(value)
    if not isinstance(value, str):
        raise ValueError(f"{_show(value)} is not a duration")
    text = value.strip().replace(" ", "")
    if not _DURATION_RE.match(text):
        raise ValueError(f"{_show(value)} is not a duration: expected {_DURATION_TEXT}")
    return sum(float(n) * _UNITS[u] for n, u in _DURATION_PART.findall(text))


def _seconds(s: float) -> str:
    return f"{s:g} s"


def _duration_conv(minimum: float = 0.0, *, above: bool = False,
                   maximum: float | None = None) -> _Conv[float]:
    bound = (f"greater than {_seconds(minimum)}" if above else
             f"at least {_seconds(minimum)}" if minimum else "")
    if maximum is not None:
        bound += (" and " if bound else "") + f"at most {_seconds(maximum)}"
    expected = _DURATION_TEXT + (f", {bound}" if bound else "")

    def fn(v: object) -> float:
        try:
            s = parse_duration(v)
        except ValueError:
            hint = ""
            if isinstance(v, str) and re.fullmatch(r"\s*\d+(\.\d+)?\s*", v):
                hint = f'add a unit: "{v.strip()}s", "{v.strip()}m", ...'
            elif isinstance(v, str) and _DURATION_RE.match(v.strip().lower().replace(" ", "")):
                hint = f"units are lower case: {_q(v.strip().lower())}"
            raise _Bad(hint=hint) from None
        if s < minimum or (above and s == minimum) or (maximum is not None and s > maximum):
            shown = _show(v) if isinstance(v, int | float) else f"{_show(v)} ({_seconds(s)})"
            raise _Bad(found=shown)
        return s
    return _Conv(expected, fn)


def _address_conv() -> _Conv[str]:
    def fn(v: object) -> str:
        if isinstance(v, int) and not isinstance(v, bool) and v >= 0:
            v = str(v)
        if not isinstance(v, str):
            raise _Bad()
        try:
            a = normalise_address(v)
        except ValueError:
            raise _Bad() from None
        if "A" in a:
            raise _Bad(hint="wildcards (A) are for finding meters, not for configured ones")
        if a == BROADCAST_ADDRESS:
            raise _Bad(hint="999999999999 is the broadcast address")
        return a
    return _Conv("a meter address of 1-12 decimal digits (left-padded to 12 with zeros)", fn)


def _unit_conv() -> _Conv[str]:
    def fn(v: object) -> str:
        if isinstance(v, str) and v.strip().isdigit():
            v = int(v.strip())
        if not isinstance(v, int) or isinstance(v, bool) or not 1 <= v <= 247:
            raise _Bad()
        return str(v)
    return _Conv("a Modbus unit id 1-247 (the address of a modbus meter)", fn)


def _mqtt_url_conv() -> _Conv[str]:
    def fn(v: object) -> str:
        if not isinstance(v, str):
            raise _Bad()
        m = re.fullmatch(r"(mqtts?)://(\[[^\]\x00-\x20]+\]|[^\s:/\x00-\x1f]+)(?::(\d{1,5}))?/?",
                         v.strip())
        if m is None or (m.group(3) and not 0 < int(m.group(3)) < 65536):
            raise _Bad()
        return v.strip()
    return _Conv("an MQTT broker URL: mqtt://HOST:PORT or mqtts://HOST:PORT", fn)


def _http_url_conv() -> _Conv[str]:
    def fn(v: object) -> str:
        if not isinstance(v, str) or re.fullmatch(r"https?://[^\s/\x00]+(/[^\s\x00]*)?",
                                                  v.strip()) is None:
            raise _Bad()
        return v.strip().rstrip("/")
    return _Conv("an http(s) URL of the time-series store, e.g. http://127.0.0.1:8428", fn)


def _topic_conv() -> _Conv[str]:
    def fn(v: object) -> str:
        if not isinstance(v, str) or not v or any(c in v for c in "#+ \x00") \
                or v.startswith("/") or v.endswith("/"):
            raise _Bad()
        if v.startswith("$"):
            # Topics starting with "$" ($SYS/...) are the broker's; gateways cannot use them.
            raise _Bad(hint='topics starting with "$" are reserved for the broker ($SYS)')
        return v
    return _Conv("an MQTT topic prefix without wildcards, spaces, outer slashes or a "
                 'leading "$"', fn)


def _toml_bool_conv() -> _Conv[bool]:
    def fn(v: object) -> bool:
        if not isinstance(v, bool):
            raise _Bad()
        return v
    return _Conv("true or false", fn)


_CSV_BOOLS = {"true": True, "yes": True, "1": True, "false": False, "no": False, "0": False}


def _csv_bool_conv() -> _Conv[bool]:
    def fn(v: object) -> bool:
        if not isinstance(v, str) or v.strip().lower() not in _CSV_BOOLS:
            raise _Bad()
        return _CSV_BOOLS[v.strip().lower()]
    return _Conv("true, false, yes, no, 1 or 0", fn)


def _zone_conv() -> _Conv[str]:
    def fn(v: object) -> str:
        name = _str_value(v)
        try:
            ZoneInfo(name)
        except (ZoneInfoNotFoundError, ValueError):
            raise _Bad() from None
        return name
    return _Conv('a time zone name such as "Asia/Shanghai"', fn)


def _money_conv(lo: Decimal = Decimal(0)) -> _Conv[Decimal]:
    def fn(v: object) -> Decimal:
        if isinstance(v, bool) or not isinstance(v, int | float | str):
            raise _Bad()
        try:
            d = Decimal(str(v).strip())
        except ArithmeticError:
            raise _Bad() from None
        if not d.is_finite() or d < lo:
            raise _Bad()
        return d
    return _Conv(f"an amount in yuan of at least {lo} (a number or a quoted decimal)", fn)


def _listen_conv() -> _Conv[str]:
    def fn(v: object) -> str:
        s = _str_value(v)
        host, sep, port = s.rpartition(":")
        if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
            raise _Bad()
        if host.startswith("[") != host.endswith("]") or (":" in host and
                                                          not host.startswith("[")):
            raise _Bad(hint='write IPv6 addresses in brackets: "[::1]:9108"')
        return s
    return _Conv('"HOST:PORT" (e.g. "127.0.0.1:9108", "0.0.0.0:9108", "[::1]:9108")', fn)


def _host_conv() -> _Conv[str]:
    def fn(v: object) -> str:
        s = _str_value(v)
        if not s or any(c.isspace() or not c.isprintable() for c in s) or "/" in s:
            raise _Bad()
        if s.count(":") == 1:
            raise _Bad(hint="put the port in port = ..., not in host")
        return s.strip("[]")
    return _Conv("a host name or IP address", fn)


# ---- where keys are in the file ---------------------------------------------------------

_HEADER_RE = re.compile(r"^\s*(\[\[?)([^\[\]]+)\]\]?\s*(?:#.*)?$")
_KEY_RE = re.compile(r"""^\s*("[^"]*"|'[^']*'|[A-Za-z0-9_\-]+)\s*(?:\.|=)""")
_PART_RE = re.compile(r""""([^"]*)"|'([^']*)'|([^.\s"']+)""")


class _Lines:
    """Line numbers of tables and keys, found by a simple scan of the TOML text.

    Best effort (no full parse): enough to point at ``[[bus]]`` #2's ``baud``.
    """

    def __init__(self, text: str) -> None:
        self.tables: dict[str, int] = {}
        self.keys: dict[tuple[str, str], int] = {}
        counts: dict[str, int] = {}
        table = ""
        in_string = False
        for n, line in enumerate(text.splitlines(), start=1):
            quotes = line.count('"""') + line.count("'''")
            if in_string:
                in_string = quotes % 2 == 0
                continue
            if quotes % 2:
                in_string = True
            m = _HEADER_RE.match(line)
            if m:
                path = ".".join(a or b or c for a, b, c in _PART_RE.findall(m.group(2)))
                if m.group(1) == "[[":
                    i = counts.get(path, 0)
                    counts[path] = i + 1
                    table = f"{path}[{i}]"
                else:
                    table = path
                self.tables.setdefault(table, n)
                continue
            k = _KEY_RE.match(line)
            if k:
                self.keys.setdefault((table, k.group(1).strip("\"'")), n)

    def of(self, table: str, key: str | None = None) -> int | None:
        if key is not None and (table, key) in self.keys:
            return self.keys[(table, key)]
        if not table and key is not None:  # a top-level key written as a table header
            table = key
        if table in self.tables:
            return self.tables[table]
        top = re.split(r"[.\[]", table, maxsplit=1)[0]
        if top and ("", top) in self.keys:
            return self.keys[("", top)]
        for t, n in self.tables.items():
            if re.split(r"[.\[]", t, maxsplit=1)[0] == top:
                return n
        return None


# ---- meters as read, before they are known to be valid ----------------------------------

@dataclass(slots=True)
class _Row:
    """A meter as declared (TOML table or ledger row), valid or not: for matching."""

    table: str
    file: str
    line: int | None
    fields: dict[str, str] = field(default_factory=dict)  # selector kind / "id" -> value
    meter: MeterSettings | None = None  # None: something about it is wrong
    # what is known valid, for the checks across meters:
    id: str | None = None
    address: str | None = None
    bus: str | None = None
    area_master_of: str | None = None

    @property
    def where(self) -> str:
        return f"{self.file}:{self.line}" if self.line is not None else self.file


def _fields_of(m: MeterSettings) -> dict[str, str]:
    return {"id": m.meter_id, "area": m.area, "bus": m.bus, "feeder": m.feeder,
            "station": m.station, "box": m.box, "role": m.role, "protocol": m.protocol}


def parse_selector(text: str) -> tuple[str, str]:
    """``"*"`` -> ("*", ""); ``"area:A1"`` -> ("area", "A1"); a meter id -> ("id", id).

    ValueError for an unknown kind or an empty value.
    """
    s = text.strip()
    if s == "*":
        return "*", ""
    if ":" not in s:
        if not s:
            raise ValueError("empty selector")
        return "id", s
    kind, _, value = s.partition(":")
    kind, value = kind.strip().lower(), value.strip()
    if kind not in SELECTOR_KINDS:
        raise ValueError(f"unknown selector kind {kind!r}")
    if not value:
        raise ValueError(f"selector {s!r} has no value after the colon")
    return kind, value


def _matches(kind: str, value: str, fields: Mapping[str, str]) -> bool:
    return kind == "*" or fields.get(kind) == value


class CsvRecordError(ValueError):
    """A CSV syntax error; ``line`` is where the reader stopped."""

    def __init__(self, error: csv.Error, line: int) -> None:
        super().__init__(str(error))
        self.line = line


def csv_records(text: str) -> Iterator[tuple[int, list[str]]]:
    """The records of a ledger CSV as (first line, cells), blank lines and ``#`` comments
    left out; CsvRecordError on a syntax error."""
    reader = csv.reader(io.StringIO(text, newline=""))
    end = 0
    try:
        for cells in reader:
            start, end = end + 1, reader.line_num
            if not any(c.strip() for c in cells) or cells[0].lstrip().startswith("#"):
                continue
            yield start, cells
    except csv.Error as e:
        raise CsvRecordError(e, reader.line_num) from None


def meters_matching(settings: Settings, selectors: Iterable[str]) -> list[MeterSettings]:
    """The configured meters any of ``selectors`` matches, in configuration order."""
    parsed = [parse_selector(s) for s in selectors]
    return [m for m in settings.meters
            if any(_matches(k, v, _fields_of(m)) for k, v in parsed)]


def select_meters(settings: Settings, schedule: ScheduleSettings) -> list[MeterSettings]:
    """The meters a schedule reads: any selector matches (no selectors: all meters).

    Ordered by bus (in the order the buses are configured), then address.  ValueError
    for a malformed selector (never raised for settings from :func:`load_settings`).
    """
    selectors = [parse_selector(s) for s in schedule.meters] or [("*", "")]
    bus_order = {b.name: i for i, b in enumerate(settings.buses)}
    chosen = [m for m in settings.meters
              if any(_matches(k, v, _fields_of(m)) for k, v in selectors)]
    return sorted(chosen, key=lambda m: (bus_order.get(m.bus, len(bus_order)), m.bus,
                                         m.address))


def _other(protocol: str) -> str:
    return next(p for p in PROTOCOLS if p != protocol and p.startswith("dlt645"))


@cache
def readable(quantity: str, version: Version) -> bool:
    """Whether a DL/T645 meter of ``version`` has ``quantity`` in the catalogue."""
    try:
        resolve_quantity(quantity, version)
    except UnknownQuantity:
        return False
    return True


# ---- the loader -------------------------------------------------------------------------

class _Loader:
    def __init__(self, path: Path) -> None:
        self.path = path
        self.file = str(path)
        self.base = path.absolute().parent
        self.problems: list[Problem] = []
        self.lines = _Lines("")
        self.ledger_failed = False  # no meters from it: its problems say why

    # -- recording problems

    def add(self, table: str, key: str | None, expected: str, found: str, *,
            name: str | None = None, meter: str | None = None, hint: str = "",
            file: str | None = None, line: int | None = None,
            column: int | None = None) -> None:
        if file is None:
            file = self.file
            if line is None:
                line = self.lines.of(table, key)
        self.problems.append(Problem(file, line, table, key, expected, found, meter, name,
                                     hint, column))

    def convert(self, table: str, key: str, value: object, conv: _Conv[T], *,
                name: str | None = None, meter: str | None = None, file: str | None = None,
                line: int | None = None) -> T | None:
        try:
            return conv.fn(value)
        except _Bad as bad:
            self.add(table, key, bad.expected or conv.expected,
                     bad.found if bad.found is not None else _show(value), name=name,
                     meter=meter, hint=bad.hint, file=file, line=line)
            return None

    def unknown_keys(self, table: str, data: Mapping[str, object], allowed: Sequence[str],
                     *, name: str | None = None, meter: str | None = None,
                     elsewhere: Mapping[str, str] | None = None) -> None:
        for key in data:
            if key in allowed:
                continue
            hint = (elsewhere or {}).get(key) or _did_you_mean(key, allowed)
            self.add(table, key, "one of the keys " + ", ".join(allowed), "an unknown key",
                     name=name, meter=meter, hint=hint)

    # -- the whole file

    def load(self) -> Settings:
        data = self.read_toml()
        if data is None:
            raise ConfigError(self.problems)
        self.unknown_keys("", data, TOP_KEYS)
        collector = self.collector(data.get("collector"))
        mqtt = self.mqtt(data.get("mqtt"))
        timeseries = self.timeseries(data.get("timeseries"))
        gateways = self.gateways(data.get("gateway"), mqtt is not None)
        buses, bus_names = self.buses(data.get("bus"))
        for i, b in enumerate(buses):
            if b.kind == "mqtt" and b.gateway not in {g.name for g in gateways}:
                self.add(f"bus[{i}]", "gateway", "the name of a [[gateway]]", _q(b.gateway),
                         name=b.name)
        rows = self.inline_meters(data.get("meter"), bus_names)
        rows += self.ledger(data.get("meters"), bus_names)
        meters = self.check_meters(rows)
        schedules = self.schedules(data.get("schedule"), rows)
        commands = self.commands(data.get("commands"))
        prepaid = self.prepaid(data.get("prepaid"), rows)
        alarms = self.alarms(data.get("alarms"))
        daily = self.daily(data.get("daily"))
        if self.problems:
            raise ConfigError(self.sorted_problems())
        assert collector is not None
        return Settings(source=self.path.absolute(), collector=collector, buses=tuple(buses),
                        meters=tuple(meters), schedules=tuple(schedules), mqtt=mqtt,
                        gateways=tuple(gateways), timeseries=timeseries,
                        commands=commands, prepaid=prepaid, alarms=alarms, daily=daily)

    def sorted_problems(self) -> list[Problem]:
        """The config file's first, then the ledger's; each in line order."""
        ranked = sorted(enumerate(self.problems), key=lambda ip: (
            ip[1].file != self.file, ip[1].file, ip[1].line or 0, ip[0]))
        return [p for _, p in ranked]

    def read_toml(self) -> dict[str, object] | None:
        try:
            raw = read_regular(self.path, MAX_CONFIG_BYTES)
        except FileRefused as e:
            self.add("", None, "a readable TOML file", str(e), line=None)
            return None
        try:
            text = raw.decode("utf-8")
        except UnicodeDecodeError as e:
            self.add("", None, "UTF-8 text", f"the byte 0x{raw[e.start]:02x}",
                     line=raw[: e.start].count(b"\n") + 1,
                     hint="save the file as UTF-8")
            return None
        self.lines = _Lines(text)
        try:
            return cast(dict[str, object], tomllib.loads(text))
        except tomllib.TOMLDecodeError as e:
            message = str(e)
            line: int | None = None
            column: int | None = None
            m = re.search(r"\s*\(at line (\d+), column (\d+)\)$", message)
            if m:
                line, column = int(m.group(1)), int(m.group(2))
                message = message[: m.start()]
            elif message.endswith("(at end of document)"):
                line = max(1, len(text.splitlines()))
                message = message.removesuffix("(at end of document)").strip() + \
                    " at the end of the file"
            self.add("", None, "valid TOML", f"a syntax error: {message}", line=line,
                     column=column)
            return None

    def table(self, table: str, key: str | None, value: object,
              what: str) -> dict[str, object] | None:
        if isinstance(value, dict):
            return cast(dict[str, object], value)
        self.add(table, key, what,
                 "an array of tables" if isinstance(value, list) else _show(value))
        return None

    def array_of_tables(self, key: str, value: object, what: str) -> list[object]:
        if value is None:
            return []
        if isinstance(value, list):
            return list(value)
        self.add("", key, what, "a table" if isinstance(value, dict) else _show(value),
                 hint=f"write [[{key}]], with double brackets, once for each {key}")
        return []

    # -- [collector]

    def collector(self, value: object) -> CollectorSettings | None:
        if value is None:
            self.add("collector", None, "a [collector] table with at least id and data_dir",
                     "nothing")
            return None
        data = self.table("", "collector", value, "a [collector] table")
        if data is None:
            return None
        t = "collector"
        self.unknown_keys(t, data, COLLECTOR_KEYS)
        cid = self.required(t, data, "id", _name_conv())
        data_dir = self.required(t, data, "data_dir", _path_conv("a folder path"))
        if data_dir is not None:
            # amic run creates the folder: what is already there must be folders.
            folder = self.relative(data_dir)
            there = next((p for p in (folder, *folder.parents) if p.exists()), folder)
            if not there.is_dir():
                self.add(t, "data_dir", "a folder (amic keeps its store there)",
                         f"{folder} ({there} is not a folder)")
                data_dir = None
        retention = self.optional(t, data, "retention_days", _int_conv(1, 36500, " days"), 90)
        listen = self.optional(t, data, "metrics_listen", _listen_conv(), None)
        interval = self.optional(t, data, "commit_interval",
                                 _duration_conv(0.0, above=True, maximum=3600.0), 1.0)
        rows = self.optional(t, data, "commit_rows", _int_conv(1, 1_000_000), 2000)
        max_mb = self.optional(t, data, "max_store_mb", _int_conv(16, 16_777_216, " MB"), 0)
        free_mb = self.optional(t, data, "min_free_mb", _int_conv(0, 16_777_216, " MB"), 100)
        if cid is None or data_dir is None or retention is None or interval is None \
                or rows is None or max_mb is None or free_mb is None:
            return None
        return CollectorSettings(id=cid, data_dir=self.relative(data_dir),
                                 retention_days=retention, metrics_listen=listen,
                                 commit_interval=interval, commit_rows=rows,
                                 max_store_mb=max_mb or None, min_free_mb=free_mb)

    # -- [mqtt] and [[gateway]]

    def mqtt(self, value: object) -> MqttSettings | None:
        if value is None:
            return None
        data = self.table("", "mqtt", value, "an [mqtt] table")
        if data is None:
            return None
        t = "mqtt"
        before = len(self.problems)
        self.unknown_keys(t, data, MQTT_KEYS, elsewhere={
            "password": f"never in the file: use password_file or the {PASSWORD_ENV} "
                        "environment variable"})
        url = self.required(t, data, "url", _mqtt_url_conv())
        client_id = self.optional(t, data, "client_id", _name_conv(), None)
        username = self.optional(t, data, "username", _nonempty_conv("a user name"), None)
        files = {k: self.optional(t, data, k, _path_conv("a file path"), None)
                 for k in ("ca_file", "cert_file", "key_file")}
        commands = self.optional(t, data, "commands", _toml_bool_conv(), True)
        reply_prefixes = self.reply_prefixes(t, data)
        paths = {k: self.relative(v) if v else None for k, v in files.items()}
        for k, path in paths.items():
            if path is not None and not path.is_file():
                self.add(t, k, "a readable file", f"{path} (no such file)")
        password = self.secret(t, data, "password_file", PASSWORD_ENV)
        if password is not None and username is None and "username" not in data:
            # MQTT 3.1.1 sends no password without a user name; the client refuses it.
            self.add(t, "username", "a username with the password (MQTT sends no password "
                     "alone)", "nothing" + ("" if "password_file" in data else
                                            f" (the password is from {PASSWORD_ENV})"))
        if (paths["cert_file"] is None) != (paths["key_file"] is None):
            self.add(t, "key_file" if paths["key_file"] is None else "cert_file",
                     "cert_file and key_file together (a client certificate)", "only one")
        if url is not None and len(self.problems) == before:
            self.connection_problem(t, url, client_id, username, password, paths)
        if url is None or commands is None:
            return None
        return MqttSettings(url=url, client_id=client_id or "", username=username,
                            password=password, ca_file=paths["ca_file"],
                            cert_file=paths["cert_file"], key_file=paths["key_file"],
                            commands=commands, reply_prefixes=reply_prefixes)

    def reply_prefixes(self, t: str, data: Mapping[str, object]) -> tuple[str, ...]:
        """``reply_prefixes``: topics a request's ``reply_to`` may name (besides
        amic/<cid>/reply/), each a prefix without wildcards; never the command topics."""
        if "reply_prefixes" not in data:
            return ()
        what = 'a list of MQTT topic prefixes, e.g. ["ops/replies"]'
        out: list[str] = []
        for p in self.strings(t, data, "reply_prefixes", what) or []:
            if not p or any(c in p for c in "#+ \x00") or p.startswith(("/", "$")):
                self.add(t, "reply_prefixes", what + " (no wildcards, spaces, leading / "
                         "or $)", _show(p))
            elif (parts := p.rstrip("/").split("/"))[0] == "amic" \
                    and (len(parts) <= 2 or parts[2] == "cmd"):
                self.add(t, "reply_prefixes", "a prefix outside the command topics "
                         "amic/<cid>/cmd/", _show(p))
            else:
                out.append(p.rstrip("/"))
        return tuple(out)

    def connection_problem(self, t: str, url: str, client_id: str | None,
                           username: str | None, password: str | None,
                           paths: Mapping[str, Path | None]) -> None:
        """What the MQTT client would refuse at start-up (``amic run``): TLS files for a
        plain mqtt:// URL, a CA or client certificate that does not load, ..."""
        from drivers.mqtt import MqttConnection

        try:
            MqttConnection(url, client_id=client_id or "amic-check", username=username,
                           password=password, ca_file=paths["ca_file"],
                           cert_file=paths["cert_file"], key_file=paths["key_file"])
        except ValueError as e:
            text = str(e)
            key = next((k for k in ("ca_file", "cert_file", "key_file", "client_id",
                                    "username") if k in text), "url")
            what = ("a certificate file the MQTT client can load" if key.endswith("_file")
                    else "settings the MQTT client accepts")
            self.add(t, key, what, text.split(": ", 1)[-1])

    def secret(self, t: str, data: Mapping[str, object], key: str, env: str) -> str | None:
        """The secret in the file ``data[key]`` names (a problem if group or others may
        access it, as for the secrets file), else the environment variable ``env``; never
        the config file itself."""
        name = self.optional(t, data, key, _path_conv("a file path"), None)
        if name is None:
            return os.environ.get(env)
        path = self.relative(name)
        try:
            text = read_regular(path, MAX_SECRET_BYTES).decode("utf-8").strip()
        except FileRefused as e:
            self.add(t, key, "a readable file", f"{path} ({e})")
            return None
        except UnicodeDecodeError:
            self.add(t, key, "a file of UTF-8 text", f"{path} (not UTF-8)")
            return None
        mode = stat.S_IMODE(path.stat().st_mode)
        if mode & 0o077:
            self.add(t, key, "a file only its owner can access (mode 0600 or 0400)",
                     f"{path} with mode {mode:04o} (group or others may read it; "
                     f"chmod 600 {path})")
            return None
        return text

    def timeseries(self, value: object) -> TimeseriesSettings | None:
        if value is None:
            return None
        data = self.table("", "timeseries", value, "a [timeseries] table")
        if data is None:
            return None
        t = "timeseries"
        self.unknown_keys(t, data, TIMESERIES_KEYS, elsewhere={
            "token": f"never in the file: use token_file or the {TOKEN_ENV} environment "
                     "variable"})
        url = self.required(t, data, "url", _http_url_conv())
        org = self.optional(t, data, "org", _text_conv(), "")
        bucket = self.optional(t, data, "bucket", _nonempty_conv("a bucket name"), "amic")
        batch = self.optional(t, data, "batch", _int_conv(1, 100_000, " points"), 5000)
        precision = self.optional(t, data, "precision", _choice_conv(("s", "ms", "us", "ns")),
                                  "ms")
        gzip = self.optional(t, data, "gzip", _toml_bool_conv(), True)
        level = self.optional(t, data, "gzip_level", _int_conv(1, 9), 6)
        backlog = self.optional(t, data, "worker_backlog", _int_conv(0, 100_000_000, " rows"),
                                50_000)
        token = self.secret(t, data, "token_file", TOKEN_ENV)
        if url is None or org is None or bucket is None or batch is None \
                or precision is None or gzip is None or level is None or backlog is None:
            return None
        return TimeseriesSettings(url=url, org=org, bucket=bucket, token=token, batch=batch,
                                  precision=precision, gzip=gzip, gzip_level=level,
                                  worker_backlog=backlog)

    def daily(self, value: object) -> DailySettings | None:
        if value is None:
            return None
        data = self.table("", "daily", value, "a [daily] table")
        if data is None:
            return None
        t = "daily"
        self.unknown_keys(t, data, DAILY_KEYS)
        ok = True
        tz = self.optional(t, data, "tz", _zone_conv(), "Asia/Shanghai")
        times: dict[str, dt.time] = {}
        for key, default in (("report_at", dt.time(6)), ("timesync_at", dt.time(2)),
                             ("backfill_at", dt.time(1, 30))):
            raw = data.get(key)
            if raw is None:
                times[key] = default
            elif isinstance(raw, dt.time):
                times[key] = raw
            else:
                try:
                    times[key] = dt.time.fromisoformat(str(raw))
                except ValueError:
                    self.add(t, key, "a local time such as \"06:00\"", _show(raw))
                    ok = False
        sync = self.optional(t, data, "timesync", _toml_bool_conv(), True)
        days = self.optional(t, data, "backfill_days", _int_conv(0, 62, " days"), 7)
        fraction = data.get("audit_fraction", 0.02)
        if isinstance(fraction, bool) or not isinstance(fraction, int | float) \
                or not 0 <= fraction <= 1:
            self.add(t, "audit_fraction", "a fraction from 0 to 1", _show(fraction))
            ok = False
            fraction = 0.0
        window = (9.0, 17.0)
        if "audit_window" in data:
            raw = data["audit_window"]
            m = re.fullmatch(r"\s*(\d{1,2})(?::(\d\d))?\s*-\s*(\d{1,2})(?::(\d\d))?\s*",
                             str(raw)) if isinstance(raw, str) else None
            if m is None:
                self.add(t, "audit_window", "local hours such as \"09:00-17:00\"",
                         _show(raw))
                ok = False
            else:
                start = int(m[1]) + int(m[2] or 0) / 60
                end = int(m[3]) + int(m[4] or 0) / 60
                if not 0 <= start < end <= 24:
                    self.add(t, "audit_window", "a window inside one day, start before end",
                             _show(raw))
                    ok = False
                window = (start, end)
        if not ok or tz is None or sync is None or days is None:
            return None
        return DailySettings(tz=tz, report_at=times["report_at"], timesync=sync,
                             timesync_at=times["timesync_at"], backfill_days=days,
                             backfill_at=times["backfill_at"],
                             audit_fraction=float(fraction), audit_window=window)

    def alarms(self, value: object) -> AlarmConfig:
        if value is None:
            return AlarmConfig()
        data = self.table("", "alarms", value, "an [alarms] table")
        if data is None:
            return AlarmConfig()
        t = "alarms"
        self.unknown_keys(t, data, ALARM_KEYS)
        values: list[tuple[str, object]] = []
        ok = True
        for key in ALARM_KEYS[:8]:
            if key in data:
                v = data[key]
                if isinstance(v, bool) or not isinstance(v, int | float):
                    self.add(t, key, "a number", _show(v))
                    ok = False
                    continue
                values.append((key, float(v)))
        if "rules" in data:
            names = self.strings(t, data, "rules", "a list of rule names: " + ", ".join(RULES))
            for rule in names or []:
                if rule not in RULES:
                    ok = False
                    self.add(t, "rules", "rule names: " + ", ".join(RULES), _q(rule),
                             hint=_did_you_mean(rule, list(RULES)))
            if names is not None:
                values.append(("rules", frozenset(names)))
        if ok:
            try:
                AlarmSettings(**dict(values))  # type: ignore[arg-type]
            except ValueError as e:
                self.add(t, None, "limits that make sense together", str(e))
        after = self.optional(t, data, "comm_loss_after", _int_conv(1, 1000, " cycles"), 2)
        publish = self.optional(t, data, "publish", _toml_bool_conv(), True)
        return AlarmConfig(values=tuple(values), comm_loss_after=after or 2,
                           publish=True if publish is None else publish)

    def commands(self, value: object) -> CommandSettings | None:
        if value is None:
            return None
        data = self.table("", "commands", value, "a [commands] table")
        if data is None:
            return None
        t = "commands"
        self.unknown_keys(t, data, COMMANDS_KEYS, elsewhere={
            "password": "never in the configuration: meter passwords are in the secrets "
                        "file (secrets_file)"})
        name = self.optional(t, data, "secrets_file", _path_conv("a file path"), None)
        secrets_file = None
        if name is not None:
            secrets_file = self.relative(name)
            try:
                load_secrets(secrets_file)
            except SecretsError as e:
                for text in e.problems:
                    self.add(t, "secrets_file", "a secrets file amic accepts", text)
        interval = self.optional(t, data, "min_interval", _duration_conv(maximum=3600.0), 2.0)
        expiry = self.optional(t, data, "expiry", _duration_conv(1.0, maximum=86400.0), 300.0)
        verify = self.optional(t, data, "verify_timeout",
                               _duration_conv(0.0, maximum=600.0), 15.0)
        poll = self.optional(t, data, "poll_interval",
                             _duration_conv(0.0, above=True, maximum=60.0), 0.5)
        direct = self.optional(t, data, "direct_close", _toml_bool_conv(), False)
        signed = self.optional(t, data, "signed", _toml_bool_conv(), True)
        if interval is None or expiry is None or verify is None or poll is None \
                or direct is None or signed is None:
            return None
        return CommandSettings(secrets_file=secrets_file, min_interval=interval,
                               expiry=expiry, verify_timeout=verify, poll_interval=poll,
                               direct_close=direct, signed=signed)

    def prepaid(self, value: object, rows: list[_Row]) -> PrepaidSettings | None:
        if value is None:
            return None
        data = self.table("", "prepaid", value, "a [prepaid] table")
        if data is None:
            return None
        t = "prepaid"
        self.unknown_keys(t, data, PREPAID_KEYS)
        warn1 = self.required(t, data, "warn1", _money_conv())
        warn2 = self.required(t, data, "warn2", _money_conv())
        if warn1 is not None and warn2 is not None and not warn1 > warn2:
            self.add(t, "warn2", f"an amount below warn1 ({warn1})", str(warn2))
        overdraft = self.optional(t, data, "overdraft_limit", _money_conv(), Decimal(0))
        grace = self.optional(t, data, "grace", _duration_conv(maximum=86400.0), 600.0)
        retry = self.optional(t, data, "retry_interval",
                              _duration_conv(1.0, maximum=86400.0), 300.0)
        tz = self.optional(t, data, "tz", _zone_conv(), "Asia/Shanghai")
        windows: list[str] = []
        if "no_trip_windows" in data:
            got = self.strings(t, data, "no_trip_windows",
                               'a list of windows such as "22:00-06:00", "Sat-Sun", '
                               '"Mon-Fri 12:00-13:30"')
            for w in got or []:
                try:
                    parse_window(w)
                    windows.append(w)
                except ValueError as e:
                    self.add(t, "no_trip_windows", "a window such as \"22:00-06:00\"",
                             str(e))
        holidays: list[dt.date] = []
        raw_days = data.get("holidays", [])
        for h in raw_days if isinstance(raw_days, list) else [raw_days]:
            try:
                holidays.append(h if isinstance(h, dt.date) else dt.date.fromisoformat(str(h)))
            except ValueError:
                self.add(t, "holidays", "a list of dates (2026-10-01 or \"2026-10-01\")",
                         _show(h))
        protected = self.selectors(t, {"meters": data["protected"]}, rows)[0] \
            if "protected" in data else []
        computed = self.selectors(t, {"meters": data["computed"]}, rows)[0] \
            if "computed" in data else []
        price = self.optional(t, data, "price", _money_conv(), None)
        prices: list[tuple[str, Decimal]] = []
        raw = data.get("prices")
        if raw is not None:
            if not isinstance(raw, dict) or not raw:
                self.add(t, "prices", "a table of prices per tariff: { t1 = 0.56, ... }",
                         _show(raw))
            else:
                for k, v in raw.items():
                    if k not in ("t1", "t2", "t3", "t4"):
                        self.add(t, "prices", "tariffs t1, t2, t3, t4", _q(k))
                        continue
                    d = self.convert(t, "prices", v, _money_conv())
                    if d is not None:
                        prices.append((k, d))
        if price is not None and prices:
            self.add(t, "prices", "either price (flat) or prices (per tariff)", "both")
        if computed and price is None and not prices:
            self.add(t, "price", "a price (or prices) for the computed meters", "nothing")
        opening = self.optional(t, data, "opening_balance", _money_conv(Decimal(-10**6)),
                                Decimal(0))
        if warn1 is None or warn2 is None or overdraft is None or grace is None \
                or retry is None or tz is None or protected is None or computed is None \
                or opening is None:
            return None
        return PrepaidSettings(warn1=warn1, warn2=warn2, overdraft_limit=overdraft,
                               grace=grace, no_trip_windows=tuple(windows),
                               holidays=tuple(holidays), tz=tz, retry_interval=retry,
                               protected=tuple(protected), computed=tuple(computed),
                               price=price, prices=tuple(prices), opening_balance=opening)

    def gateways(self, value: object, have_mqtt: bool) -> list[GatewaySettings]:
        out: list[GatewaySettings] = []
        seen: set[str] = set()
        items = self.array_of_tables("gateway", value, "[[gateway]] tables")
        if items and not have_mqtt:
            self.add("gateway[0]", None, "an [mqtt] table: gateways are reached through a "
                     "broker", "no [mqtt] table")
        for i, item in enumerate(items):
            t = f"gateway[{i}]"
            data = self.table(t, None, item, "a [[gateway]] table")
            if data is None:
                continue
            raw_name = data.get("name")
            name = raw_name if isinstance(raw_name, str) else None
            self.unknown_keys(t, data, GATEWAY_KEYS, name=name)
            ok_name = self.required(t, data, "name", _name_conv(), name=name)
            prefix = self.optional(t, data, "prefix", _topic_conv(), "amic-gw", name=name)
            reports = self.optional(t, data, "reports", _toml_bool_conv(), True, name=name)
            if ok_name in seen:
                self.add(t, "name", "a gateway name used once", _q(ok_name or ""), name=name)
                continue
            if ok_name is None or prefix is None or reports is None:
                continue
            seen.add(ok_name)
            out.append(GatewaySettings(name=ok_name, prefix=prefix, reports=reports))
        return out

    def relative(self, text: str) -> Path:
        p = Path(text).expanduser()
        return p if p.is_absolute() else self.base / p

    def required(self, table: str, data: Mapping[str, object], key: str, conv: _Conv[T], *,
                 name: str | None = None, why: str = "") -> T | None:
        if key not in data:
            self.add(table, key, conv.expected + why, "nothing", name=name)
            return None
        return self.convert(table, key, data[key], conv, name=name)

    def optional(self, table: str, data: Mapping[str, object], key: str, conv: _Conv[T],
                 default: T | None, *, name: str | None = None) -> T | None:
        if key not in data:
            return default
        return self.convert(table, key, data[key], conv, name=name)

    # -- [[bus]]

    def buses(self, value: object) -> tuple[list[BusSettings], set[str]]:
        out: list[BusSettings] = []
        declared: dict[str, str] = {}
        items = self.array_of_tables("bus", value, "[[bus]] tables")
        if value is None or (isinstance(value, list) and not value):
            self.add("", "bus", "at least one [[bus]] table", "none")
        for i, item in enumerate(items):
            t = f"bus[{i}]"
            data = self.table(t, None, item, "a [[bus]] table")
            if data is None:
                continue
            raw_name = data.get("name")
            name = raw_name.strip() if isinstance(raw_name, str) else None
            bus = self.bus(t, data, name)
            if name and _NAME_RE.match(name):
                if name in declared:
                    self.add(t, "name", "a bus name used once",
                             f"{_q(name)} again (first at {declared[name]})", name=name)
                    continue
                declared[name] = f"{self.file}:{self.lines.of(t)}"
            if bus is not None:
                out.append(bus)
        return out, set(declared)

    def bus(self, t: str, data: dict[str, object], name: str | None) -> BusSettings | None:
        ok_name = self.required(t, data, "name", _name_conv(), name=name)
        kind = self.required(t, data, "type", _choice_conv(("tcp", "serial", "mqtt")),
                             name=name)
        td = self.optional(t, data, "td_ms", _ms_conv(1, 60000), 0.5, name=name)
        tb = self.optional(t, data, "tb_ms", _ms_conv(1, 10000), 0.5, name=name)
        preamble = self.optional(t, data, "preamble", _int_conv(0, 4, " FE bytes"), 4,
                                 name=name)
        framings = ("rtu", "tcp") if kind == "tcp" else ("rtu",)
        modbus = self.optional(t, data, "modbus", _choice_conv(framings), "rtu", name=name)
        own: tuple[str, ...]
        other: tuple[str, ...]
        if kind == "mqtt":
            self.unknown_keys(t, data, BUS_COMMON_KEYS + BUS_MQTT_KEYS, name=name)
            gateway = self.required(t, data, "gateway", _name_conv("the name of a [[gateway]]"),
                                    name=name, why=' (required for type = "mqtt")')
            if ok_name is None or td is None or tb is None or preamble is None \
                    or modbus is None or gateway is None:
                return None
            return BusSettings(kind="mqtt", name=ok_name, gateway=gateway,
                               td=td if "td_ms" in data else 5.0, tb=tb, preamble=preamble)
        if kind == "tcp":
            own, other, other_kind = BUS_TCP_KEYS, BUS_SERIAL_KEYS, "serial"
        elif kind == "serial":
            own, other, other_kind = BUS_SERIAL_KEYS, BUS_TCP_KEYS, "tcp"
        else:
            own, other, other_kind = BUS_TCP_KEYS + BUS_SERIAL_KEYS, (), ""
        elsewhere = {k: f'{k} is for type = "{other_kind}" buses' for k in other}
        if kind == "tcp":
            elsewhere["baud"] = ("the RS-485 line behind a serial server is line_baud; "
                                 "set its framing on the server")
        self.unknown_keys(t, data, BUS_COMMON_KEYS + own, name=name, elsewhere=elsewhere)
        if kind is None:
            return None
        why = f' (required for type = "{kind}")'
        common_ok = ok_name is not None and td is not None and tb is not None \
            and preamble is not None and modbus is not None
        if kind == "tcp":
            host = self.required(t, data, "host", _host_conv(), name=name, why=why)
            port = self.required(t, data, "port", _int_conv(1, 65535), name=name, why=why)
            line_baud = self.optional(t, data, "line_baud", _choice_conv(BAUDS), None,
                                      name=name)
            if not common_ok or host is None or port is None or (
                    line_baud is None and "line_baud" in data):
                return None
            assert ok_name is not None and td is not None and tb is not None \
                and preamble is not None
            return BusSettings(kind="tcp", host=host, port=port, line_baud=line_baud,
                               name=ok_name, td=td, tb=tb, preamble=preamble,
                               modbus=cast(ModbusFraming, modbus))
        device = self.required(t, data, "device", _path_conv("a serial device path"),
                               name=name, why=why)
        baud = self.optional(t, data, "baud", _choice_conv(BAUDS), 2400, name=name)
        parity = self.optional(t, data, "parity", _parity_conv(), "E", name=name)
        bytesize = self.optional(t, data, "bytesize", _choice_conv(BYTESIZES), 8, name=name)
        stopbits = self.optional(t, data, "stopbits", _choice_conv(STOPBITS), 1, name=name)
        if not common_ok or device is None or baud is None or parity is None \
                or bytesize is None or stopbits is None:
            return None
        assert ok_name is not None and td is not None and tb is not None \
            and preamble is not None
        return BusSettings(kind="serial", device=device, baud=baud, parity=parity,
                           bytesize=bytesize, stopbits=stopbits, name=ok_name, td=td, tb=tb,
                           preamble=preamble)

    # -- meters: [[meter]] tables and the ledger

    def inline_meters(self, value: object, bus_names: set[str]) -> list[_Row]:
        rows: list[_Row] = []
        for i, item in enumerate(self.array_of_tables("meter", value, "[[meter]] tables")):
            t = f"meter[{i}]"
            data = self.table(t, None, item, "a [[meter]] table")
            if data is None:
                continue
            raw_id = data.get("meter_id")
            mid = raw_id.strip() if isinstance(raw_id, str) else None
            self.unknown_keys(t, data, LEDGER_COLUMNS, meter=mid)
            row = _Row(t, self.file, self.lines.of(t))
            values: dict[str, object] = dict(data)
            row.meter = self.meter(row, values, bus_names, csv_cells=False)
            rows.append(row)
        return rows

    def ledger(self, value: object, bus_names: set[str]) -> list[_Row]:
        before = len(self.problems)
        rows = self.read_ledger(value, bus_names)
        if not rows and len(self.problems) > before:
            self.ledger_failed = True  # "no meters" would only repeat its problems
        return rows

    def read_ledger(self, value: object, bus_names: set[str]) -> list[_Row]:
        if value is None:
            return []
        data = self.table("", "meters", value, "a [meters] table")
        if data is None:
            return []
        self.unknown_keys("meters", data, METERS_KEYS)
        if "ledger" not in data:
            return []
        name = self.convert("meters", "ledger", data["ledger"],
                            _path_conv("the path of a CSV meter ledger"))
        if name is None:
            return []
        path = Path(name).expanduser()
        shown = str(path if path.is_absolute() else self.path.parent / path)
        try:
            raw = read_regular(self.relative(name), MAX_LEDGER_BYTES)
        except FileRefused as e:
            self.add("meters", "ledger", "a readable CSV file", f"{_q(name)} ({shown}: {e})")
            return []
        try:
            text = raw.decode("utf-8-sig")
        except UnicodeDecodeError as e:
            self.add("", None, "UTF-8 text", f"the byte 0x{raw[e.start]:02x}",
                     file=shown, line=raw[: e.start].count(b"\n") + 1,
                     hint='save the ledger as "CSV UTF-8"')
            return []
        return self.ledger_rows(shown, text, bus_names)

    def ledger_rows(self, file: str, text: str, bus_names: set[str]) -> list[_Row]:
        header: list[str] | None = None
        rows: list[_Row] = []
        try:
            for start, cells in csv_records(text):
                if header is None:
                    header = [c.strip().lower() for c in cells]
                    if not self.ledger_header(file, start, header):
                        return []
                    continue
                i = len(rows)
                t = f"ledger[{i}]"
                row = _Row(t, file, start)
                rows.append(row)
                if len(cells) != len(header):
                    self.add(t, None, f"{len(header)} cells (one for each header column)",
                             f"{len(cells)}", file=file, line=start)
                    continue
                values: dict[str, object] = {
                    k: c.strip() for k, c in zip(header, cells, strict=True)
                    if k in LEDGER_COLUMNS and c.strip()}
                row.meter = self.meter(row, values, bus_names, csv_cells=True)
        except CsvRecordError as e:
            self.add("ledger", None, "valid CSV", f"a CSV error: {e}", file=file,
                     line=e.line)
        if header is None:
            self.add("ledger", None, "a header line: " + ", ".join(LEDGER_COLUMNS),
                     "an empty file", file=file, line=None)
        return rows

    def ledger_header(self, file: str, line: int, header: list[str]) -> bool:
        ok = True
        seen: set[str] = set()
        for col in header:
            if col in seen:
                self.add("ledger", col, "each column once", f"{_q(col)} twice", file=file,
                         line=line)
            elif col not in LEDGER_COLUMNS:
                self.add("ledger", col, "one of the columns " + ", ".join(LEDGER_COLUMNS),
                         "an unknown column", file=file, line=line,
                         hint=_did_you_mean(col, LEDGER_COLUMNS))
            seen.add(col)
        for col in REQUIRED_METER_KEYS:
            if col not in seen:
                self.add("ledger", col, "a header naming the columns " +
                         ", ".join(REQUIRED_METER_KEYS) + " at least", f"no {col} column",
                         file=file, line=line)
                ok = False
        return ok

    def meter(self, row: _Row, values: Mapping[str, object], bus_names: set[str], *,
              csv_cells: bool) -> MeterSettings | None:
        t = row.table
        file = None if row.file == self.file else row.file
        line = row.line if file is not None else None
        raw_id = values.get("meter_id")
        mid = raw_id.strip() if isinstance(raw_id, str) and raw_id.strip() else None

        def get(key: str, conv: _Conv[T], default: T, *, required: bool = False) -> T | None:
            if key not in values:
                if required:
                    found = "an empty cell" if csv_cells else "nothing"
                    self.add(t, key, conv.expected, found, meter=mid, file=file, line=line)
                    return None
                return default
            return self.convert(t, key, values[key], conv, meter=mid, file=file, line=line)

        ok_id = get("meter_id", _name_conv(), "", required=True)
        protocol = get("protocol", _choice_conv(tuple(PROTOCOLS)), "dlt645-2007")
        modbus = protocol == "modbus"
        address = get("address", _unit_conv() if modbus else _address_conv(), "",
                      required=True)
        bus = get("bus", _name_conv("the name of a [[bus]]"), "", required=True)
        profile = get("profile", _text_conv(), "")
        if modbus and profile == "":
            self.add(t, "profile", "a device profile for a modbus meter (e.g. "
                     '"acrel-dtsy1352"; see config/profiles)', "nothing", meter=mid, file=file,
                     line=line)
            profile = None
        elif not modbus and profile:
            self.add(t, "profile", "no profile: profiles are for modbus meters", _q(profile),
                     meter=mid, file=file, line=line)
            profile = None
        elif modbus and profile:
            problem = self.profile_problem(profile)
            if problem:
                self.add(t, "profile", "a loadable device profile", problem, meter=mid,
                         file=file, line=line)
                profile = None
        texts = {k: get(k, _text_conv(), "") for k in ("station", "feeder", "area", "box")}
        texts["customer"] = get("customer", _customer_conv(), "")
        prepaid = get("prepaid", _csv_bool_conv() if csv_cells else _toml_bool_conv(), False)
        role = get("role", _choice_conv(ROLES), "customer")
        row.fields = {"id": mid or "", "bus": str(values.get("bus", "")).strip(),
                      "role": str(values.get("role", "customer")).strip(),
                      "protocol": str(values.get("protocol", "dlt645-2007")).strip(),
                      **{k: str(values.get(k, "")).strip()
                         for k in ("area", "feeder", "station", "box")}}
        row.id = ok_id or None
        row.address = address or None
        row.bus = bus if bus and bus in bus_names else None
        if role == "area_master" and texts["area"]:
            row.area_master_of = texts["area"]
        if bus and bus not in bus_names:
            self.add(t, "bus", "the name of a [[bus]] (" + ", ".join(
                _q(b) for b in sorted(bus_names)) + ")" if bus_names else
                "the name of a [[bus]] (none is configured)", _q(bus), meter=mid, file=file,
                line=line, hint=_did_you_mean(bus, bus_names))
            return None
        if role == "area_master" and texts["area"] == "":
            self.add(t, "area", 'an area for a meter with role "area_master"', "nothing",
                     meter=mid, file=file,
                     line=line if file is not None else self.lines.of(t, "role"))
            return None
        if ok_id is None or not address or not bus or protocol is None or prepaid is None \
                or role is None or profile is None or any(v is None for v in texts.values()):
            return None
        return MeterSettings(meter_id=ok_id, address=address, bus=bus, profile=profile,
                             protocol=cast(Protocol, protocol),
                             station=texts["station"] or "", feeder=texts["feeder"] or "",
                             area=texts["area"] or "", box=texts["box"] or "",
                             customer=texts["customer"] or "", prepaid=prepaid,
                             role=cast(Role, role))

    def check_meters(self, rows: list[_Row]) -> list[MeterSettings]:
        """Unique ids, unique (bus, address), at most one area master an area."""
        ids: dict[str, _Row] = {}
        addresses: dict[tuple[str, str], _Row] = {}
        masters: dict[str, _Row] = {}
        for row in rows:
            file = None if row.file == self.file else row.file
            line = row.line if file is not None else None
            first = ids.get(row.id) if row.id else None
            if first is not None:
                self.add(row.table, "meter_id", "a meter id used once",
                         f"{_q(first.fields['id'])} again (first at {first.where})",
                         meter=row.id, file=file, line=line)
                row.meter = None
            elif row.id:
                ids[row.id] = row
            if row.bus and row.address:
                first = addresses.get((row.bus, row.address))
                if first is not None:
                    self.add(row.table, "address", f"an address used once on bus {_q(row.bus)}",
                             f"{row.address} again (meter {_q(first.fields['id'])} at "
                             f"{first.where})", meter=row.id, file=file, line=line)
                    row.meter = None
                else:
                    addresses[(row.bus, row.address)] = row
            if row.area_master_of:
                first = masters.get(row.area_master_of)
                if first is not None:
                    self.add(row.table, "role",
                             f"at most one area_master in area {_q(row.area_master_of)}",
                             f"a second one (the first is meter {_q(first.fields['id'])} at "
                             f"{first.where})", meter=row.id, file=file, line=line)
                    row.meter = None
                else:
                    masters[row.area_master_of] = row
        if not rows and not self.ledger_failed:
            self.add("", None, "at least one meter ([[meter]] tables or a [meters] ledger)",
                     "none", line=self.lines.of("meters", "ledger"))
        return [r.meter for r in rows if r.meter is not None]

    # -- [schedule.NAME]

    def schedules(self, value: object, rows: list[_Row]) -> list[ScheduleSettings]:
        if value is None:
            self.add("", None, "at least one [schedule.NAME] table", "none")
            return []
        if isinstance(value, list):
            self.add("", "schedule", "[schedule.NAME] tables", "an array of tables",
                     hint="write [schedule.fast], [schedule.daily], ... (one name each)")
            return []
        data = self.table("", "schedule", value, "[schedule.NAME] tables")
        if data is None:
            return []
        if not data:
            self.add("schedule", None, "at least one [schedule.NAME] table", "none")
        out: list[ScheduleSettings] = []
        for name, item in data.items():
            t = f"schedule.{name}"
            if not isinstance(item, dict):
                self.add("schedule", name, "a [schedule.NAME] table", _show(item),
                         hint=f"{name} = ... is not a schedule: keys go under "
                              "[schedule.NAME] tables")
                continue
            if not _NAME_RE.match(name):
                self.add(t, None, "a schedule " + _NAME_TEXT.removeprefix("a "), _q(name))
            s = self.schedule(t, name, cast(dict[str, object], item), rows)
            if s is not None:
                out.append(s)
        return out

    def schedule(self, t: str, name: str, data: dict[str, object],
                 rows: list[_Row]) -> ScheduleSettings | None:
        self.unknown_keys(t, data, SCHEDULE_KEYS)
        interval = self.required(t, data, "interval", _duration_conv(1.0))
        jitter = self.optional(t, data, "jitter", _duration_conv(0.0), 0.0)
        retries = self.optional(t, data, "retries", _int_conv(0, 10), 1)
        td = self.optional(t, data, "td_ms", _ms_conv(1, 60000), None)
        backoff = self.optional(t, data, "backoff_max", _duration_conv(1.0), 3600.0)
        if interval is not None and jitter is not None and jitter >= interval:
            self.add(t, "jitter", f"less than the interval ({_seconds(interval)})",
                     f"{_show(data['jitter'])} ({_seconds(jitter)})")
            jitter = None
        quantities = self.quantities(t, data)
        selectors, selected = self.selectors(t, data, rows)
        if quantities and selected:
            self.readability(t, quantities, selected)
        if interval is None or jitter is None or retries is None or backoff is None \
                or quantities is None or selectors is None or ("td_ms" in data and td is None):
            return None
        return ScheduleSettings(name=name, interval=interval, quantities=tuple(quantities),
                                jitter=jitter, retries=retries, td=td,
                                meters=tuple(selectors), backoff_max=backoff)

    def strings(self, t: str, data: Mapping[str, object], key: str,
                what: str) -> list[str] | None:
        value = data[key]
        if not isinstance(value, list) or not value \
                or not all(isinstance(v, str) for v in value):
            self.add(t, key, what, _show(value))
            return None
        return [cast(str, v).strip() for v in value]

    def quantities(self, t: str, data: Mapping[str, object]) -> list[str] | None:
        what = "a non-empty list of quantity names or groups (" + ", ".join(GROUPS) + ")"
        if "quantities" not in data:
            self.add(t, "quantities", what, "nothing")
            return None
        names = self.strings(t, data, "quantities", what)
        if names is None:
            return None
        out: list[str] = []
        ok = True
        for n in names:
            key = n.lower()
            if key in GROUPS:
                out += [q for q in GROUPS[key] if q not in out]
            elif key in QUANTITIES:
                if key not in out:
                    out.append(key)
            else:
                ok = False
                self.add(t, "quantities", "quantity names (protocols/quantities.py) or groups "
                         f"({', '.join(GROUPS)})", f"{_q(n)}, which is neither",
                         hint=_did_you_mean(key, [*GROUPS, *QUANTITIES]))
        return out if ok else None

    def selectors(self, t: str, data: Mapping[str, object],
                  rows: list[_Row]) -> tuple[list[str] | None, list[MeterSettings]]:
        """The selectors as written, and the valid meters they pick."""
        kinds = ('"*", "area:ID", "bus:NAME", "feeder:ID", "station:ID", "box:ID", '
                 '"role:ROLE", "protocol:PROTOCOL"')
        what = f"a non-empty list of meter selectors: {kinds} or meter ids"
        if "meters" in data:
            texts = self.strings(t, data, "meters", what)
            if texts is None:
                return None, []
        else:
            texts = ["*"]
        ok = True
        picked: set[int] = set()
        for text in texts:
            try:
                kind, value = parse_selector(text)
            except ValueError:
                ok = False
                kind_text = text.partition(":")[0].strip().lower()
                close = difflib.get_close_matches(kind_text, SELECTOR_KINDS, n=1)
                fixed = f"{close[0]}:{text.partition(':')[2].strip()}" if close else ""
                self.add(t, "meters", f"a meter selector: {kinds} or a meter id", _q(text),
                         hint=f"did you mean {_q(fixed)}?" if fixed and ":" in text else "")
                continue
            hits = [i for i, r in enumerate(rows) if _matches(kind, value, r.fields)]
            if not hits and rows:  # no meters at all is reported once, elsewhere
                ok = False
                self.add(t, "meters", "selectors that match at least one meter",
                         f"{_q(text)}, which matches none", hint=self.selector_hint(
                             kind, value, rows))
            picked.update(hits)
        selected = [rows[i].meter for i in sorted(picked)]
        return (texts if ok else None), [m for m in selected if m is not None]

    @staticmethod
    def selector_hint(kind: str, value: str, rows: list[_Row]) -> str:
        if kind == "*":
            return ""
        known = sorted({r.fields.get(kind, "") for r in rows} - {""})
        close = _did_you_mean(value, known)
        if close:
            return close.replace('mean "', f'mean "{kind}:' if kind != "id" else 'mean "')
        if kind == "role":
            return "roles are " + ", ".join(ROLES)
        if kind == "protocol":
            return "protocols are " + ", ".join(PROTOCOLS)
        if kind == "id" or not known:
            return ""
        shown = ", ".join(known[:10]) + (", ..." if len(known) > 10 else "")
        return f"{kind} values in use: {shown}"

    def profile_problem(self, name: str) -> str:
        """Why the profile ``name`` cannot be used ('' when it loads)."""
        from .profiles import ProfileError, load_profile

        try:
            load_profile(name, search=[self.base])
        except ProfileError as e:
            return "; ".join(str(p) for p in e.problems) or str(e)
        return ""

    def readability(self, t: str, quantities: list[str],
                    meters: list[MeterSettings]) -> None:
        for m in meters:
            version = PROTOCOLS[m.protocol]
            if version is None:
                from .profiles import load_profile

                names = {r.name for r in load_profile(m.profile,
                                                      search=[self.base]).registers}
                missing = [q for q in quantities if q not in names]
                if missing:
                    self.add(t, "quantities", f"quantities in profile {m.profile} (meter "
                             "protocol modbus)", ", ".join(missing), meter=m.meter_id,
                             hint="leave the meter out of this schedule (e.g. meters = "
                                  '["protocol:dlt645-2007"]) or those quantities out')
                continue
            bad = [q for q in quantities if not readable(q, version)]
            if bad:
                self.add(t, "quantities",
                         f"quantities readable over DL/T645-{version} (meter protocol "
                         f"{m.protocol})", ", ".join(bad), meter=m.meter_id,
                         hint="leave the meter out of this schedule (e.g. meters = "
                              f'["protocol:{_other(m.protocol)}"]) or those quantities out')


def load_settings(path: Path) -> Settings:
    """Read and check one TOML configuration (and the ledger it names).

    Relative paths in it (``data_dir``, ``ledger``) are relative to the file's folder.
    :class:`ConfigError` lists every problem found; nothing is started either way.
    """
    return _Loader(Path(path)).load()

"""The validated configuration, as typed values (loading and checking: collector.config).

The schema is stated once, here: one pydantic model a TOML table (``CollectorTable``,
``BusTcpTable``, ... ``DailyTable``) declares each key (the field's alias where the key
differs from the settings field), its type, bounds, default and meaning.  The loader
(collector.config) reads its keys, bounds and defaults from these models, and the settings
dataclasses below take their defaults from them (:func:`model_default`).
"""

# ruff: noqa: RUF009 -- the dataclass defaults are read from the models (immutable values)
from __future__ import annotations

import dataclasses
import datetime as dt
import math
import re
from dataclasses import dataclass, field
from decimal import Decimal
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import (
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    StrictBool,
    StrictFloat,
    StrictInt,
)

from drivers.meters import KINDS

from .messages import quote

BusKind = Literal["tcp", "serial", "mqtt"]


def _known_kind(value: object) -> object:
    if value not in KINDS:
        raise ValueError(f"one of {', '.join(sorted(KINDS))}")
    return value


ModbusFraming = Literal["rtu", "tcp"]
Role = Literal["customer", "area_master"]
Baud = Literal[1200, 2400, 4800, 9600, 19200]
Precision = Literal["s", "ms", "us", "ns"]
ListenerProtocol = Literal["3761", "dtu-dlt645", "dtu-modbus"]
# a DTU listener's protocol -> the frame family (MeterKind.frame_family) its meters speak
DTU_PROTOCOLS = {"dtu-dlt645": "dlt645", "dtu-modbus": "modbus"}


@dataclass(frozen=True, slots=True)
class As:
    """How the loader reads a key whose type alone does not say: the converter's name in
    collector.config.convert, the text of what it expects, the unit of its bounds.

    ``per``: the TOML value counts 1/per of the settings unit (``td_ms``: 1000 a second).
    ``custom``: read by the table's own code (lists, selectors, secrets, times).
    """

    conv: str
    what: str = ""
    unit: str = ""
    per: int = 1
    choices: tuple[Any, ...] = ()


# A meter protocol: the name of a kind of the device model (drivers.meters.KINDS), so a
# new protocol is accepted here without touching the configuration.
Protocol = Annotated[str, BeforeValidator(_known_kind), As("choice", choices=tuple(KINDS))]

DURATION_RE = re.compile(r"^(?:\d+(?:\.\d+)?(?:ms|s|m|h|d))+$")
DURATION_PART = re.compile(r"(\d+(?:\.\d+)?)(ms|s|m|h|d)")
DURATION_UNITS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0}
DURATION_TEXT = 'a duration like "15m", "1h", "30s" or a number of seconds'


def parse_duration(value: object) -> float:
    """Seconds from ``"15m"``, ``"1h30m"``, ``"30s"``, ``"500ms"``, ``"1d"`` or a number.

    ValueError for anything else (negative, not finite, no unit on a string).
    """
    shown = quote(value) if isinstance(value, str) else (
        str(value).lower() if isinstance(value, bool) else repr(value))
    if isinstance(value, bool):
        raise ValueError(f"{shown} is not a duration")
    if isinstance(value, int | float):
        if not math.isfinite(value) or value < 0:
            raise ValueError(f"{shown} is not a duration")
        return float(value)
    if not isinstance(value, str):
        raise ValueError(f"{shown} is not a duration")
    text = value.strip().replace(" ", "")
    if not DURATION_RE.match(text):
        raise ValueError(f"{shown} is not a duration: expected {DURATION_TEXT}")
    return sum(float(n) * DURATION_UNITS[u] for n, u in DURATION_PART.findall(text))


_HOURS = re.compile(r"\s*(\d{1,2})(?::(\d\d))?\s*-\s*(\d{1,2})(?::(\d\d))?\s*")


def local_hours(value: object) -> tuple[float, float] | None:
    """``"09:00-17:00"`` as (9.0, 17.0); None if not written so (the order unchecked)."""
    m = _HOURS.fullmatch(value) if isinstance(value, str) else None
    if m is None:
        return None
    return int(m[1]) + int(m[2] or 0) / 60, int(m[3]) + int(m[4] or 0) / 60


def hours_in_order(window: tuple[float, float]) -> bool:
    return 0 <= window[0] < window[1] <= 24


def _window(value: object) -> object:
    if not isinstance(value, str):
        return value
    window = local_hours(value)
    if window is None or not hours_in_order(window):
        raise ValueError('local hours such as "09:00-17:00", start before end')
    return window


def wrapping_window(value: object) -> object:
    if not isinstance(value, str):
        return value
    window = local_hours(value)
    if window is None or not (0 <= window[0] < 24 and 0 <= window[1] <= 24) \
            or window[0] == window[1]:
        raise ValueError('local hours such as "22:00-07:00" (may cross midnight)')
    return window


NAME = As("name")
TEXT = As("text")
DURATION = As("duration")
MS = As("ms", per=1000)
MONEY = As("money")
ZONE = As("zone")
TIME = As("time")
CUSTOM = As("custom")
FILE = As("path", "a file path")
Seconds = Annotated[float, DURATION, BeforeValidator(parse_duration)]


class Table(BaseModel):
    """One TOML table: keys unknown to it are refused."""

    # defer_build: the loader reads the field info only; validators are built on first use
    model_config = ConfigDict(extra="forbid", frozen=True, populate_by_name=True,
                              defer_build=True)


class CollectorTable(Table):
    """``[collector]``."""

    id: Annotated[str, NAME] = Field(description="this collector's name (topics, metrics)")
    data_dir: Annotated[Path, As("path", "a folder path")] = Field(
        description="the store's folder, relative to the config file")
    retention_days: Annotated[StrictInt, As("int", unit=" days")] = Field(
        90, ge=1, le=36500, description="days of readings kept")
    metrics_listen: Annotated[str | None, As("listen")] = Field(
        None, description='"HOST:PORT" of the Prometheus endpoint; none: no endpoint')
    commit_interval: Seconds = Field(
        1.0, gt=0, le=3600, description="seconds between store commits")
    commit_rows: Annotated[StrictInt, As("int")] = Field(
        2000, ge=1, le=1_000_000, description="or as soon as this many rows wait")
    max_store_mb: Annotated[StrictInt | None, As("int", unit=" MB")] = Field(
        None, ge=16, le=16_777_216, description="size cap of the store; none: the disk's")
    min_free_mb: Annotated[StrictInt, As("int", unit=" MB")] = Field(
        100, ge=0, le=16_777_216, description="a disk_low event below this free space")


class BusTable(Table):
    """``[[bus]]``: the keys of every bus type."""

    name: Annotated[str, NAME] = Field(description="the bus's name, as meters name it")
    kind: BusKind = Field(alias="type", description="tcp, serial or mqtt")
    td: Annotated[StrictFloat, MS] = Field(500, alias="td_ms", ge=1, le=60000,
                                     description="reply timeout, milliseconds")
    tb: Annotated[StrictFloat, MS] = Field(500, alias="tb_ms", ge=1, le=10000,
                                     description="inter-byte timeout, milliseconds")
    preamble: Annotated[StrictInt, As("int", unit=" FE bytes")] = Field(
        4, ge=0, le=4, description="FE wake-up bytes before each request")
    modbus: ModbusFraming = Field(
        "rtu", description="framing of Modbus meters here: RTU, or Modbus TCP (MBAP)")


class BusTcpTable(BusTable):
    """``[[bus]]`` with ``type = "tcp"``: a serial server (or Modbus TCP gateway)."""

    kind: Literal["tcp"] = Field(alias="type")

    host: Annotated[str, As("host")] = Field("", description="the server's host (required)")
    port: Annotated[StrictInt, As("int")] = Field(0, ge=1, le=65535,
                                            description="the server's port (required)")
    line_baud: Baud | None = Field(None, description="the RS-485 line behind the server")


class BusSerialTable(BusTable):
    """``[[bus]]`` with ``type = "serial"``: a local RS-485 port."""

    kind: Literal["serial"] = Field(alias="type")

    modbus: Literal["rtu"] = Field("rtu", description="Modbus framing: RTU only")
    device: Annotated[str, As("path", "a serial device path")] = Field(
        "", description="the serial device (required)")
    baud: Baud = Field(2400, description="bits per second")
    parity: Annotated[str, As("parity")] = Field("E", description="N, E, O, M or S")
    bytesize: Literal[5, 6, 7, 8] = Field(8, description="data bits")
    stopbits: Annotated[StrictFloat, As("choice", choices=(1, 1.5, 2))] = Field(
        1, description="stop bits")


class BusMqttTable(BusTable):
    """``[[bus]]`` with ``type = "mqtt"``: the RS-485 line of an MQTT gateway."""

    kind: Literal["mqtt"] = Field(alias="type")

    td: Annotated[StrictFloat, MS] = Field(5000, alias="td_ms", ge=1, le=60000,
                                     description="reply timeout (a gateway round trip), ms")
    modbus: Literal["rtu"] = Field("rtu", description="Modbus framing: RTU only")
    gateway: Annotated[str, As("name", "the name of a [[gateway]]")] = Field(
        "", description="the [[gateway]] whose line this is (required)")


class MeterTable(Table):
    """``[[meter]]`` or a ledger row (the ledger's columns)."""

    meter_id: Annotated[str, NAME] = Field(description="the meter's id")
    address: Annotated[str, As("address")] = Field(
        description="DL/T645: 12 digits; Modbus: the unit id (1-247)")
    bus: Annotated[str, As("name", "the name of a [[bus]]")] = Field(
        description="the [[bus]] it is on")
    protocol: Protocol = Field("dlt645-2007", description="its protocol")
    station: Annotated[str, TEXT] = Field("", description="substation")
    feeder: Annotated[str, TEXT] = Field("", description="feeder")
    area: Annotated[str, TEXT] = Field("", description="transformer area (台区)")
    box: Annotated[str, TEXT] = Field("", description="meter box")
    customer: Annotated[str, As("customer")] = Field(
        "", description="customer number; never logged in full")
    phone: Annotated[str, As("phone")] = Field(
        "", description="the customer's mobile number, for SMS (personal data: masked in "
                        "logs, and by the API but for admins)")
    prepaid: StrictBool = Field(False, description="kept by the prepaid engine")
    role: Role = Field("customer", description="customer or area_master")
    profile: Annotated[str, TEXT] = Field(
        "", description="Modbus device profile (config/profiles/NAME.toml)")


class MeterRouteTable(Table):
    """``[[meter]]`` or ledger columns of a meter behind a ``[[concentrator]]`` only
    (refused for a meter on a bus)."""

    pn: Annotated[StrictInt | None, As("int")] = Field(
        None, ge=1, le=2040,
        description="measuring point number in its concentrator (required there)")
    port: Annotated[StrictInt, As("int")] = Field(
        2, ge=1, le=31, description="the concentrator's port the meter is on")
    baud: Baud = Field(2400, description="the meter's baud rate on that port")


class InlineMeterTable(MeterTable, MeterRouteTable):
    """``[[meter]]``: a meter's keys, including those of a concentrator's meter."""


class MetersTable(Table):
    """``[meters]``."""

    ledger: Annotated[str | None, As("path", "the path of a CSV meter ledger")] = Field(
        None, description="a CSV meter ledger, relative to the config file")


class ScheduleTable(Table):
    """``[schedule.NAME]``."""

    interval: Seconds = Field(ge=1, description="between cycle starts")
    quantities: Annotated[tuple[str, ...], CUSTOM] = Field(
        description="quantity names or groups")
    meters: Annotated[tuple[str, ...], CUSTOM] = Field(
        (), description='selectors: "*", "area:A1", "bus:b1", "role:area_master", ids')
    jitter: Seconds = Field(
        0.0, ge=0, description="random delay at each cycle start")
    retries: Annotated[StrictInt, As("int")] = Field(
        1, ge=0, le=10, description="per read, after a timeout or bad reply")
    td: Annotated[StrictFloat | None, MS] = Field(None, alias="td_ms", ge=1, le=60000,
                                            description="overrides the bus's reply timeout")
    backoff_max: Seconds = Field(
        3600.0, ge=1, description="cap of the back-off for dead meters")
    curve: Annotated[tuple[str, ...], CUSTOM] = Field(
        (), description="quantities (or groups) whose load curve each meter is read for")
    curve_days: Annotated[StrictInt, As("int", unit=" days")] = Field(
        1, ge=1, le=10, description="how far back a meter's first curve read goes")


class MqttTable(Table):
    """``[mqtt]``: the broker connection."""

    url: Annotated[str, As("mqtt_url")] = Field(description="mqtt(s)://HOST:PORT")
    client_id: Annotated[str, NAME] = Field("", description="MQTT client id")
    username: Annotated[str | None, As("nonempty", "a user name")] = Field(None)
    password: Annotated[str | None, CUSTOM] = Field(
        None, alias="password_file", description="a file holding the password")
    ca_file: Annotated[Path | None, FILE] = None
    cert_file: Annotated[Path | None, FILE] = None
    key_file: Annotated[Path | None, FILE] = None
    commands: StrictBool = Field(True, description="serve amic/<collector id>/cmd/#")
    reply_prefixes: Annotated[tuple[str, ...], CUSTOM] = Field(
        (), description="reply_to allowed under these, besides our own")
    fleet: Annotated[str | None, NAME] = Field(
        None, description="the fleet this collector serves with others (amic/<fleet>/cmd/#)")
    fleet_hold: Seconds = Field(
        60.0, gt=0, le=3600, description="seconds a fleet request waits for its terminal")


class GatewayTable(Table):
    """``[[gateway]]``: an MQTT gateway with RS-485 meters behind it."""

    name: Annotated[str, NAME] = Field(description="its id in the topics")
    prefix: Annotated[str, As("topic")] = Field("amic-gw", description="topic prefix")
    reports: StrictBool = Field(True, description="ingest what it reports")


class TimeseriesTable(Table):
    """``[timeseries]``: where the outbox is forwarded."""

    url: Annotated[str, As("http_url")] = Field(description="http(s)://HOST:PORT")
    org: Annotated[str, TEXT] = ""
    bucket: Annotated[str, As("nonempty", "a bucket name")] = "amic"
    token: Annotated[str | None, CUSTOM] = Field(
        None, alias="token_file", description="a file holding the token")
    batch: Annotated[StrictInt, As("int", unit=" points")] = Field(5000, ge=1, le=100_000)
    precision: Precision = "ms"
    gzip: StrictBool = True
    gzip_level: Annotated[StrictInt, As("int")] = Field(6, ge=1, le=9,
                                                  description="1 fastest .. 9 smallest")
    worker_backlog: Annotated[StrictInt, As("int", unit=" rows")] = Field(
        50_000, ge=0, le=100_000_000,
        description="rows behind before a worker process converts; 0: never")


class CommandsTable(Table):
    """``[commands]``: relay commands."""

    secrets_file: Annotated[Path | None, FILE] = Field(
        None, description="passwords, operator codes, signing keys")
    min_interval: Seconds = Field(
        2.0, ge=0, le=3600, description="between two relay commands on one bus")
    expiry: Seconds = Field(
        300.0, ge=1, le=86400, description="a command stays valid this long")
    verify_timeout: Seconds = Field(
        15.0, ge=0, le=600, description="to see the relay reach the expected state")
    poll_interval: Seconds = Field(
        0.5, gt=0, le=60, description="between verification reads")
    direct_close: StrictBool = Field(False, description="restore = 1C direct close")
    signed: StrictBool = Field(True, description="commands through the broker signed (HMAC)")


class SecurityTable(Table):
    """``[security]``: the security module that protects top-ups (and relay commands)."""

    module: Annotated[str, NAME] = Field(
        description='"soft", "command", or an entry point of the group amic.security')
    key_file: Annotated[Path | None, FILE] = Field(
        None, description="soft: the master key (hex), mode 0600")
    test_keys: StrictBool = Field(
        False, description="soft: the simulator's test keys (never for real meters)")
    command: Annotated[tuple[str, ...], CUSTOM] = Field(
        (), description="command: the program and its arguments (JSON lines)")
    timeout: Seconds = Field(5.0, gt=0, le=120, description="per request to the module")
    relay: StrictBool = Field(
        False, description="relay commands too: authenticated, N1..N8 as ciphertext")


class PrepaidTable(Table):
    """``[prepaid]``: the prepaid engine."""

    warn1: Annotated[Decimal, MONEY] = Field(ge=0)
    warn2: Annotated[Decimal, MONEY] = Field(ge=0)
    overdraft_limit: Annotated[Decimal, MONEY] = Field(Decimal(0), ge=0)
    grace: Seconds = Field(600.0, ge=0, le=86400)
    no_trip_windows: Annotated[tuple[str, ...], CUSTOM] = ()
    holidays: Annotated[tuple[dt.date, ...], CUSTOM] = ()
    tz: Annotated[str, ZONE] = "Asia/Shanghai"
    retry_interval: Seconds = Field(300.0, ge=1, le=86400)
    protected: Annotated[tuple[str, ...], CUSTOM] = Field(
        (), description="selectors: never tripped (hold-power list)")
    computed: Annotated[tuple[str, ...], CUSTOM] = Field(
        (), description="selectors: meters that keep no money")
    price: Annotated[Decimal | None, MONEY] = Field(
        None, ge=0, description="yuan per kWh, flat (computed balance)")
    prices: Annotated[dict[Literal["t1", "t2", "t3", "t4"], Decimal], CUSTOM] = Field(
        {}, description="yuan per kWh per tariff (computed balance)")
    opening_balance: Annotated[Decimal, MONEY] = Field(
        Decimal(0), ge=-10**6, description="computed balance at start")


LIMIT = As("limit")  # an [alarms] limit: None keeps collector.polling.rules' default


class AlarmsTable(Table):
    """``[alarms]``: limits of the alarm rules."""

    nominal_voltage: Annotated[StrictFloat | None, LIMIT] = None
    voltage_high_pct: Annotated[StrictFloat | None, LIMIT] = None
    voltage_low_pct: Annotated[StrictFloat | None, LIMIT] = None
    jump_kwh_per_hour: Annotated[StrictFloat | None, LIMIT] = None
    zero_use_days: Annotated[StrictFloat | None, LIMIT] = None
    imbalance_pct: Annotated[StrictFloat | None, LIMIT] = None
    imbalance_min_current: Annotated[StrictFloat | None, LIMIT] = None
    low_pf: Annotated[StrictFloat | None, LIMIT] = None
    frequency_nominal: Annotated[StrictFloat | None, LIMIT] = None
    frequency_band_hz: Annotated[StrictFloat | None, LIMIT] = None
    voltage_unbalance_pct: Annotated[StrictFloat | None, LIMIT] = None
    voltage_sag_pct: Annotated[StrictFloat | None, LIMIT] = None
    bus_up_window_s: Annotated[StrictFloat | None, LIMIT] = None
    rules: Annotated[tuple[str, ...] | None, LIMIT] = Field(
        None, description="the rules that run; none: all")
    comm_loss_after: Annotated[StrictInt, As("int", unit=" cycles")] = Field(
        2, ge=1, le=1000, description="failed cycles before comm_loss / meter_dead")
    publish: StrictBool = Field(True, description="events also published on MQTT")


class DailyTable(Table):
    """``[daily]``: the once-a-day jobs; local times in ``tz``."""

    tz: Annotated[str, ZONE] = "Asia/Shanghai"
    report_at: Annotated[dt.time, TIME] = Field(
        dt.time(6, 0), description="yesterday's line loss and read success")
    timesync: StrictBool = True
    timesync_at: Annotated[dt.time, TIME] = dt.time(2, 0)
    backfill_days: Annotated[StrictInt, As("int", unit=" days")] = Field(
        7, ge=0, le=62, description="0: no backfill")
    backfill_at: Annotated[dt.time, TIME] = dt.time(1, 30)
    audit_fraction: Annotated[StrictFloat, As("fraction")] = Field(
        0.02, ge=0, le=1, description="of the meters re-read each day; 0: none")
    audit_window: Annotated[tuple[float, float], CUSTOM, BeforeValidator(_window)] = Field(
        (9.0, 17.0), description='local hours, written "09:00-17:00"')
    events: StrictBool = Field(
        True, description="meters' event records: daily and when a counter moves")
    events_at: Annotated[dt.time, TIME] = Field(
        dt.time(3, 0), description="every meter's event counters and new records")
    events_records: Annotated[StrictInt, As("int")] = Field(
        2, ge=1, le=10, description="records of a kind read when its counter is new")
    voltage_nominal: Annotated[StrictFloat, CUSTOM] = Field(
        220.0, gt=0, description="V: the voltage report's nominal (电压合格率)")
    voltage_band_high_pct: Annotated[StrictFloat, CUSTOM] = Field(
        7.0, gt=0, description="% above nominal still in band")
    voltage_band_low_pct: Annotated[StrictFloat, CUSTOM] = Field(
        -10.0, lt=0, gt=-100, description="% below nominal still in band")
    voltage_areas: Annotated[dict[str, float], CUSTOM] = Field(
        {}, description="nominal V per area where it is not voltage_nominal")


class ListenerTable(Table):
    """``[[listener]]``: a TCP (or TLS) port that concentrators or DTUs dial in to."""

    name: Annotated[str, NAME] = Field(
        description="the listener's name, as concentrators and DTUs name it")
    listen: Annotated[str, As("listen")] = Field(description='"HOST:PORT" to listen on')
    protocol: ListenerProtocol = Field(
        description="3761 (Q/GDW 1376.1 concentrators), or dtu-dlt645 / dtu-modbus "
                    "(DTUs passing DL/T645 or Modbus RTU frames through)")
    login_reply: Literal["F1", "F3"] = Field(
        "F1", description="confirm login/heartbeat with AFN00 F1 or F3")
    idle_timeout: Seconds = Field(
        1200.0, gt=0, le=86400, description="a silent terminal is offline after this")
    request_timeout: Seconds = Field(
        10.0, gt=0, le=600, description="reply timeout of a request to a terminal")
    tls_cert_file: Annotated[Path | None, FILE] = Field(
        None, description="TLS certificate (with tls_key_file); none: plain TCP")
    tls_key_file: Annotated[Path | None, FILE] = Field(None, description="its private key")
    # DTU listeners only: how a DTU's first packet gives its id, and its heartbeat packet
    registration: Literal["ascii", "regex"] = Field(
        "ascii", description="dtu-*: the id is the registration packet as printable ASCII, "
                             "or what registration_regex finds in it")
    registration_length: Annotated[StrictInt | None, As("int", unit=" characters")] = Field(
        None, ge=1, le=128, description="ascii: the id's exact length; none: the packet")
    registration_regex: Annotated[str | None, CUSTOM] = Field(
        None, description='regex: a regular expression over the bytes; group "id" is the id')
    heartbeat: Annotated[str | None, CUSTOM] = Field(
        None, description='the heartbeat packet, text or "hex:..."; taken out of the line')


class DtuTable(Table):
    """``[[dtu]]``: a DTU that dials in to a DTU listener; meters name it in their ``bus``."""

    name: Annotated[str, NAME] = Field(description="its name, used like a bus name")
    id: Annotated[str, As("nonempty", "the DTU's registration id")] = Field(
        description="the id its registration packet carries")
    listener: Annotated[str, As("name", "the name of a [[listener]]")] = Field(
        description="the DTU [[listener]] it dials in to")


class ConcentratorTable(Table):
    """``[[concentrator]]``: a dial-in terminal; meters name it in their ``bus``."""

    name: Annotated[str, NAME] = Field(description="its name, used like a bus name")
    a1: Annotated[str, As("custom")] = Field(description="area code A1, 4 BCD digits")
    a2: Annotated[StrictInt, As("int")] = Field(ge=1, le=65535,
                                                description="terminal address A2")
    listener: Annotated[str, As("name", "the name of a [[listener]]")] = Field(
        description="the [[listener]] it dials in to")
    group: Annotated[StrictInt, As("int", unit=" points")] = Field(
        1, ge=1, le=64, description="measuring points per class-1 request (1: one each)")


class ApiTable(Table):
    """``[api]``: the HTTP API (collector/api); its bearer tokens are in the secrets file."""

    listen: Annotated[str, As("listen")] = Field(
        description='"HOST:PORT" the API listens on')
    cert_file: Annotated[Path | None, FILE] = Field(
        None, description="TLS: the server certificate (PEM); none: plain HTTP")
    key_file: Annotated[Path | None, FILE] = Field(
        None, description="TLS: the certificate's private key (PEM)")
    client_ca_file: Annotated[Path | None, FILE] = Field(
        None, description="mTLS: clients must show a certificate from this CA (PEM)")
    secrets_file: Annotated[Path | None, FILE] = Field(
        None, description="the [api_tokens.NAME] tables; none: [commands] secrets_file")
    max_rows: Annotated[StrictInt, As("int")] = Field(
        10_000, ge=1, le=1_000_000, description="the most rows one readings page holds")
    console: StrictBool = Field(True, description="serve the web console at /console/")
    session_minutes: Annotated[StrictInt, As("int", unit=" minutes")] = Field(
        30, ge=1, le=24 * 60, description="a console session ends after this long unused")


# ---- [notify] and its channels (collector/notify)

NotifyLanguage = Literal["zh", "en"]


class NotifyTable(Table):
    """``[notify]``: what every notification channel shares."""

    tz: Annotated[str, ZONE] = Field("Asia/Shanghai", description="for quiet hours and texts")
    quiet_hours: Annotated[tuple[float, float] | None, CUSTOM,
                           BeforeValidator(wrapping_window)] = Field(
        None, description='local hours, e.g. "22:00-07:00"; none: no quiet hours')
    urgent_severity: Annotated[StrictInt, As("int")] = Field(
        2, ge=0, le=3, description="sent during quiet hours too, from this severity; 3: none")
    max_per_hour: Annotated[StrictInt, As("int", unit=" messages")] = Field(
        3, ge=0, le=1000, description="per meter and channel; 0: no limit")
    retry_min: Seconds = Field(10.0, gt=0, le=3600, description="first back-off")
    retry_max: Seconds = Field(600.0, gt=0, le=86400, description="longest back-off")
    interval: Seconds = Field(1.0, gt=0, le=60, description="between two outbox rounds")


class NotifyChannelTable(Table):
    """The keys of every channel: its name and its rule."""

    name: Annotated[str, NAME] = Field(description="the channel's name (in the outbox)")
    events: Annotated[tuple[str, ...], CUSTOM] = Field(
        (), description="event kinds sent, plus relay_tripped and relay_restored")
    min_severity: Annotated[StrictInt | None, As("int")] = Field(
        None, ge=0, le=2, description="also any event of this severity or above")
    quiet: StrictBool = Field(True, description="held during [notify] quiet_hours")
    rate_limited: StrictBool = Field(True, description="[notify] max_per_hour applies")
    timeout: Seconds = Field(10.0, gt=0, le=120, description="of one delivery attempt")


class NotifyWebhookTable(NotifyChannelTable):
    """``[[notify_webhook]]``: an HTTP POST of JSON, signed with HMAC-SHA256."""

    url: Annotated[str, As("http_url")] = Field(description="where to POST")
    secret: Annotated[str | None, CUSTOM] = Field(
        None, alias="secret_file", description="a file holding the HMAC key")


class NotifyEmailTable(NotifyChannelTable):
    """``[[notify_email]]``: SMTP, with STARTTLS."""

    host: Annotated[str, As("host")] = Field(description="the SMTP server")
    port: Annotated[StrictInt, As("int")] = Field(587, ge=1, le=65535)
    starttls: StrictBool = Field(True, description="STARTTLS before logging in")
    ca_file: Annotated[Path | None, FILE] = Field(
        None, description="CA certificate(s) of the server; none: the system's")
    username: Annotated[str | None, As("nonempty", "a user name")] = None
    password: Annotated[str | None, CUSTOM] = Field(
        None, alias="password_file", description="a file holding the password")
    sender: Annotated[str, As("nonempty", "an email address")] = Field(
        alias="from", description="the From address")
    to: Annotated[tuple[str, ...], CUSTOM] = Field(description="the recipients")


class NotifySmsTable(NotifyChannelTable):
    """``[[notify_sms]]``: an SMS gateway over HTTP; the phone is the ledger's ``phone``."""

    url: Annotated[str, As("http_url")] = Field(description="the gateway's send URL")
    token: Annotated[str | None, CUSTOM] = Field(
        None, alias="token_file", description="a file holding the gateway's bearer token")
    language: NotifyLanguage = Field("zh", description="zh or en")
    templates: Annotated[dict[str, str], CUSTOM] = Field(
        {}, description="message kind -> text, overriding the built-in ones")


class ConfigFile(Table):
    """The file's top-level tables."""

    collector: CollectorTable
    bus: tuple[Annotated[BusTcpTable | BusSerialTable | BusMqttTable,
                         Field(discriminator="kind")], ...]
    meter: tuple[InlineMeterTable, ...] = ()
    meters: MetersTable | None = None
    schedule: dict[str, ScheduleTable]
    mqtt: MqttTable | None = None
    gateway: tuple[GatewayTable, ...] = ()
    timeseries: TimeseriesTable | None = None
    commands: CommandsTable | None = None
    prepaid: PrepaidTable | None = None
    alarms: AlarmsTable | None = None
    daily: DailyTable | None = None
    listener: tuple[ListenerTable, ...] = ()
    concentrator: tuple[ConcentratorTable, ...] = ()
    dtu: tuple[DtuTable, ...] = ()
    security: SecurityTable | None = None
    api: ApiTable | None = None
    notify: NotifyTable | None = None
    notify_webhook: tuple[NotifyWebhookTable, ...] = ()
    notify_email: tuple[NotifyEmailTable, ...] = ()
    notify_sms: tuple[NotifySmsTable, ...] = ()


def model_default(model: type[Table], name: str) -> Any:
    """The default of ``model.name`` in settings units (``td_ms`` 500 -> ``td`` 0.5)."""
    info = model.model_fields[name]
    value = info.get_default(call_default_factory=True)
    per = next((m.per for m in info.metadata if isinstance(m, As)), 1)
    return value / per if per != 1 and value is not None else value


def _d(model: type[Table], name: str) -> Any:
    return model_default(model, name)


MQTT_BUS_TD: float = _d(BusMqttTable, "td")  # reply timeout of a type = "mqtt" bus, s


@dataclass(frozen=True, slots=True)
class CollectorSettings:
    id: str
    data_dir: Path
    retention_days: int = _d(CollectorTable, "retention_days")
    metrics_listen: str | None = _d(CollectorTable, "metrics_listen")
    commit_interval: float = _d(CollectorTable, "commit_interval")
    commit_rows: int = _d(CollectorTable, "commit_rows")
    max_store_mb: int | None = _d(CollectorTable, "max_store_mb")
    min_free_mb: int = _d(CollectorTable, "min_free_mb")


@dataclass(frozen=True, slots=True)
class ListenerSettings:
    """A port concentrators dial in to."""

    name: str
    listen: str
    protocol: str = "3761"
    login_reply: str = _d(ListenerTable, "login_reply")
    idle_timeout: float = _d(ListenerTable, "idle_timeout")
    request_timeout: float = _d(ListenerTable, "request_timeout")
    tls_cert_file: Path | None = None
    tls_key_file: Path | None = None
    registration: str = _d(ListenerTable, "registration")
    registration_length: int | None = _d(ListenerTable, "registration_length")
    registration_regex: str | None = _d(ListenerTable, "registration_regex")
    heartbeat: bytes | None = None  # the packet, parsed from the key's text

    @property
    def dtu(self) -> bool:
        """DTUs dial in here (else 376.1 concentrators)."""
        return self.protocol in DTU_PROTOCOLS


@dataclass(frozen=True, slots=True)
class DtuSettings:
    """A DTU: its registration id and the listener it dials in to; meters name it in
    ``bus`` like a bus."""

    name: str
    id: str
    listener: str


@dataclass(frozen=True, slots=True)
class ConcentratorSettings:
    """A concentrator: its address and the listener it dials in to; meters name it in
    ``bus`` like a bus."""

    name: str
    a1: str
    a2: int
    listener: str
    group: int = _d(ConcentratorTable, "group")


@dataclass(frozen=True, slots=True)
class BusSettings:
    name: str
    kind: BusKind
    host: str = _d(BusTcpTable, "host")
    port: int = _d(BusTcpTable, "port")
    line_baud: int | None = _d(BusTcpTable, "line_baud")
    device: str = _d(BusSerialTable, "device")
    baud: int = _d(BusSerialTable, "baud")
    parity: str = _d(BusSerialTable, "parity")
    bytesize: int = _d(BusSerialTable, "bytesize")
    stopbits: float = _d(BusSerialTable, "stopbits")
    td: float = _d(BusTable, "td")  # seconds
    tb: float = _d(BusTable, "tb")  # seconds
    preamble: int = _d(BusTable, "preamble")
    modbus: ModbusFraming = _d(BusTable, "modbus")
    gateway: str = _d(BusMqttTable, "gateway")


@dataclass(frozen=True, slots=True)
class MqttSettings:
    """The broker connection (gateway reports, transparent buses, the command channel)."""

    url: str
    client_id: str = _d(MqttTable, "client_id")
    username: str | None = _d(MqttTable, "username")
    password: str | None = field(default=_d(MqttTable, "password"), repr=False)
    ca_file: Path | None = _d(MqttTable, "ca_file")
    cert_file: Path | None = _d(MqttTable, "cert_file")
    key_file: Path | None = _d(MqttTable, "key_file")
    commands: bool = _d(MqttTable, "commands")
    reply_prefixes: tuple[str, ...] = _d(MqttTable, "reply_prefixes")
    fleet: str | None = _d(MqttTable, "fleet")
    fleet_hold: float = _d(MqttTable, "fleet_hold")


@dataclass(frozen=True, slots=True)
class TimeseriesSettings:
    """Where the outbox is forwarded: an InfluxDB 2/3 (or line-protocol) server."""

    url: str
    org: str = _d(TimeseriesTable, "org")
    bucket: str = _d(TimeseriesTable, "bucket")
    token: str | None = field(default=_d(TimeseriesTable, "token"), repr=False)
    batch: int = _d(TimeseriesTable, "batch")
    precision: str = _d(TimeseriesTable, "precision")
    gzip: bool = _d(TimeseriesTable, "gzip")
    gzip_level: int = _d(TimeseriesTable, "gzip_level")
    worker_backlog: int = _d(TimeseriesTable, "worker_backlog")


@dataclass(frozen=True, slots=True)
class GatewaySettings:
    """An MQTT gateway with RS-485 meters behind it."""

    name: str
    prefix: str = _d(GatewayTable, "prefix")
    reports: bool = _d(GatewayTable, "reports")


@dataclass(frozen=True, slots=True)
class MeterSettings:
    meter_id: str
    address: str
    bus: str
    protocol: Protocol = _d(MeterTable, "protocol")
    station: str = _d(MeterTable, "station")
    feeder: str = _d(MeterTable, "feeder")
    area: str = _d(MeterTable, "area")
    box: str = _d(MeterTable, "box")
    customer: str = _d(MeterTable, "customer")  # never logged in full
    phone: str = field(default=_d(MeterTable, "phone"), repr=False)  # logged masked only
    prepaid: bool = _d(MeterTable, "prepaid")
    role: Role = _d(MeterTable, "role")
    profile: str = _d(MeterTable, "profile")
    pn: int | None = _d(MeterRouteTable, "pn")  # behind a concentrator: its measuring point
    port: int = _d(MeterRouteTable, "port")
    baud: int = _d(MeterRouteTable, "baud")

    @property
    def unit(self) -> int:
        """Modbus unit id (slave address)."""
        return int(self.address)


@dataclass(frozen=True, slots=True)
class ScheduleSettings:
    name: str
    interval: float
    quantities: tuple[str, ...]  # quantity names (groups expanded)
    jitter: float = _d(ScheduleTable, "jitter")
    retries: int = _d(ScheduleTable, "retries")
    td: float | None = _d(ScheduleTable, "td")
    meters: tuple[str, ...] = _d(ScheduleTable, "meters")
    backoff_max: float = _d(ScheduleTable, "backoff_max")
    curve: tuple[str, ...] = _d(ScheduleTable, "curve")  # quantity names (groups expanded)
    curve_days: int = _d(ScheduleTable, "curve_days")


@dataclass(frozen=True, slots=True)
class CommandSettings:
    """``[commands]``: relay commands (see collector/commands/relay_service.py)."""

    secrets_file: Path | None = _d(CommandsTable, "secrets_file")
    min_interval: float = _d(CommandsTable, "min_interval")
    expiry: float = _d(CommandsTable, "expiry")
    verify_timeout: float = _d(CommandsTable, "verify_timeout")
    poll_interval: float = _d(CommandsTable, "poll_interval")
    direct_close: bool = _d(CommandsTable, "direct_close")
    signed: bool = _d(CommandsTable, "signed")


@dataclass(frozen=True, slots=True)
class SecuritySettings:
    """``[security]``: see drivers/security.py."""

    module: str
    key_file: Path | None = _d(SecurityTable, "key_file")
    test_keys: bool = _d(SecurityTable, "test_keys")
    command: tuple[str, ...] = _d(SecurityTable, "command")
    timeout: float = _d(SecurityTable, "timeout")
    relay: bool = _d(SecurityTable, "relay")

    def table(self) -> dict[str, object]:
        """As drivers.security.load_module takes it."""
        return {"module": self.module, "key_file": str(self.key_file or ""),
                "test_keys": self.test_keys, "command": list(self.command),
                "timeout": self.timeout, "relay": self.relay}


@dataclass(frozen=True, slots=True)
class PrepaidSettings:
    """``[prepaid]``: the prepaid engine for meters with ``prepaid = true``."""

    warn1: Decimal
    warn2: Decimal
    overdraft_limit: Decimal = _d(PrepaidTable, "overdraft_limit")
    grace: float = _d(PrepaidTable, "grace")
    no_trip_windows: tuple[str, ...] = _d(PrepaidTable, "no_trip_windows")
    holidays: tuple[dt.date, ...] = _d(PrepaidTable, "holidays")
    tz: str = _d(PrepaidTable, "tz")
    retry_interval: float = _d(PrepaidTable, "retry_interval")
    protected: tuple[str, ...] = _d(PrepaidTable, "protected")
    computed: tuple[str, ...] = _d(PrepaidTable, "computed")
    price: Decimal | None = _d(PrepaidTable, "price")
    prices: tuple[tuple[str, Decimal], ...] = tuple(_d(PrepaidTable, "prices").items())
    opening_balance: Decimal = _d(PrepaidTable, "opening_balance")


@dataclass(frozen=True, slots=True)
class ApiSettings:
    """``[api]``: the HTTP API (see collector/api)."""

    listen: str
    cert_file: Path | None = _d(ApiTable, "cert_file")
    key_file: Path | None = _d(ApiTable, "key_file")
    client_ca_file: Path | None = _d(ApiTable, "client_ca_file")
    secrets_file: Path | None = _d(ApiTable, "secrets_file")
    max_rows: int = _d(ApiTable, "max_rows")
    console: bool = _d(ApiTable, "console")
    session_minutes: int = _d(ApiTable, "session_minutes")


@dataclass(frozen=True, slots=True)
class DailySettings:
    """``[daily]``: the once-a-day jobs (collector/daily/jobs.py); local times in ``tz``."""

    tz: str = _d(DailyTable, "tz")
    report_at: dt.time = _d(DailyTable, "report_at")
    timesync: bool = _d(DailyTable, "timesync")
    timesync_at: dt.time = _d(DailyTable, "timesync_at")
    backfill_days: int = _d(DailyTable, "backfill_days")
    backfill_at: dt.time = _d(DailyTable, "backfill_at")
    audit_fraction: float = _d(DailyTable, "audit_fraction")
    audit_window: tuple[float, float] = _d(DailyTable, "audit_window")
    events: bool = _d(DailyTable, "events")
    events_at: dt.time = _d(DailyTable, "events_at")
    events_records: int = _d(DailyTable, "events_records")
    voltage_nominal: float = _d(DailyTable, "voltage_nominal")
    voltage_band_high_pct: float = _d(DailyTable, "voltage_band_high_pct")
    voltage_band_low_pct: float = _d(DailyTable, "voltage_band_low_pct")
    voltage_areas: tuple[tuple[str, float], ...] = ()  # area -> nominal V

    def nominal(self, area: str | None) -> float:
        """The nominal voltage of ``area`` for the voltage report."""
        return dict(self.voltage_areas).get(area or "", self.voltage_nominal)


@dataclass(frozen=True, slots=True)
class AlarmConfig:
    """``[alarms]``: limits of the alarm rules (collector/polling/rules.py); None keeps its
    default."""

    values: tuple[tuple[str, object], ...] = ()  # AlarmSettings field -> value, as given
    comm_loss_after: int = _d(AlarmsTable, "comm_loss_after")
    publish: bool = _d(AlarmsTable, "publish")


@dataclass(frozen=True, slots=True)
class NotifyChannel:
    """What every channel has: its name, its rule, its policies."""

    name: str
    events: tuple[str, ...] = _d(NotifyChannelTable, "events")
    min_severity: int | None = _d(NotifyChannelTable, "min_severity")
    quiet: bool = _d(NotifyChannelTable, "quiet")
    rate_limited: bool = _d(NotifyChannelTable, "rate_limited")
    timeout: float = _d(NotifyChannelTable, "timeout")

    def wants(self, kind: str, severity: int, meter: str | None) -> bool:
        return kind in self.events or (self.min_severity is not None
                                       and severity >= self.min_severity)


@dataclass(frozen=True, slots=True)
class WebhookSettings(NotifyChannel):
    url: str = ""
    secret: str | None = field(default=None, repr=False)


@dataclass(frozen=True, slots=True)
class EmailSettings(NotifyChannel):
    host: str = ""
    port: int = _d(NotifyEmailTable, "port")
    starttls: bool = _d(NotifyEmailTable, "starttls")
    ca_file: Path | None = _d(NotifyEmailTable, "ca_file")
    username: str | None = _d(NotifyEmailTable, "username")
    password: str | None = field(default=None, repr=False)
    sender: str = ""
    to: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True)
class SmsSettings(NotifyChannel):
    url: str = ""
    token: str | None = field(default=None, repr=False)
    language: NotifyLanguage = _d(NotifySmsTable, "language")
    templates: tuple[tuple[str, str], ...] = tuple(_d(NotifySmsTable, "templates").items())

    def wants(self, kind: str, severity: int, meter: str | None) -> bool:
        return meter is not None and NotifyChannel.wants(self, kind, severity, meter)


@dataclass(frozen=True, slots=True)
class NotifySettings:
    """``[notify]`` and its channels (collector/notify)."""

    tz: str = _d(NotifyTable, "tz")
    quiet_hours: tuple[float, float] | None = _d(NotifyTable, "quiet_hours")
    urgent_severity: int = _d(NotifyTable, "urgent_severity")
    max_per_hour: int = _d(NotifyTable, "max_per_hour")
    retry_min: float = _d(NotifyTable, "retry_min")
    retry_max: float = _d(NotifyTable, "retry_max")
    interval: float = _d(NotifyTable, "interval")
    webhooks: tuple[WebhookSettings, ...] = ()
    emails: tuple[EmailSettings, ...] = ()
    sms: tuple[SmsSettings, ...] = ()

    @property
    def channels(self) -> tuple[NotifyChannel, ...]:
        return (*self.webhooks, *self.emails, *self.sms)


@dataclass(frozen=True, slots=True)
class Settings:
    source: Path
    collector: CollectorSettings
    buses: tuple[BusSettings, ...]
    meters: tuple[MeterSettings, ...]
    schedules: tuple[ScheduleSettings, ...]
    mqtt: MqttSettings | None = None
    gateways: tuple[GatewaySettings, ...] = ()
    timeseries: TimeseriesSettings | None = None
    commands: CommandSettings | None = None
    prepaid: PrepaidSettings | None = None
    alarms: AlarmConfig = AlarmConfig()
    daily: DailySettings | None = None
    listeners: tuple[ListenerSettings, ...] = ()
    concentrators: tuple[ConcentratorSettings, ...] = ()
    dtus: tuple[DtuSettings, ...] = ()
    security: SecuritySettings | None = None
    api: ApiSettings | None = None
    notify: NotifySettings | None = None
    extra: dict[str, object] = field(default_factory=dict)

    def secrets_path(self) -> Path | None:
        """The secrets file (``[commands]``, else ``[api]``): its ``[ledger] key`` seals
        the ledger's personal cells."""
        for t in (self.commands, self.api):
            if t is not None and t.secrets_file is not None:
                return t.secrets_file
        return None

    def bus(self, name: str) -> BusSettings:
        for b in self.buses:
            if b.name == name:
                return b
        raise KeyError(name)


def defaults(cls: type[Any]) -> dict[str, Any]:
    """Field name -> default of a settings class (fields without one left out)."""
    out: dict[str, Any] = {}
    for f in dataclasses.fields(cls):
        if f.default is not dataclasses.MISSING:
            out[f.name] = f.default
        elif f.default_factory is not dataclasses.MISSING:
            out[f.name] = f.default_factory()
    return out


def default(cls: type[Any], attr: str) -> Any:
    """The default of the field ``cls.attr``; KeyError if it has none."""
    try:
        return defaults(cls)[attr]
    except KeyError:
        raise KeyError(f"{cls.__name__}.{attr} has no default") from None

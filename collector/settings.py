"""The validated configuration, as typed values (loading and checking: collector.config).

The field defaults below are the configuration's defaults, stated once: the loader and the
forwarder read them with :func:`default` / :func:`defaults`.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
from dataclasses import dataclass, field
from decimal import Decimal
from pathlib import Path
from typing import Any, Literal

BusKind = Literal["tcp", "serial", "mqtt"]
Protocol = Literal["dlt645-2007", "dlt645-1997", "modbus"]
ModbusFraming = Literal["rtu", "tcp"]
Role = Literal["customer", "area_master"]

MQTT_BUS_TD = 5.0  # reply timeout of a type = "mqtt" bus (a gateway round trip), seconds


@dataclass(frozen=True, slots=True)
class CollectorSettings:
    id: str
    data_dir: Path
    retention_days: int = 90
    metrics_listen: str | None = None  # "127.0.0.1:9108"; None: no endpoint
    commit_interval: float = 1.0  # seconds between store commits
    commit_rows: int = 2000  # or as soon as this many rows wait
    max_store_mb: int | None = None  # size cap of the SQLite file; None: the disk's size
    min_free_mb: int = 100  # a disk_low event below this much free space


@dataclass(frozen=True, slots=True)
class BusSettings:
    name: str
    kind: BusKind
    host: str = ""  # tcp
    port: int = 0  # tcp
    line_baud: int | None = None  # tcp: the RS-485 line behind the serial server
    device: str = ""  # serial
    baud: int = 2400  # serial
    parity: str = "E"
    bytesize: int = 8
    stopbits: float = 1
    td: float = 0.5  # reply timeout, seconds
    tb: float = 0.5  # inter-byte timeout, seconds
    preamble: int = 4  # FE wake-up bytes before each request
    modbus: ModbusFraming = "rtu"  # framing of Modbus meters here: RTU (serial, serial
    # server) or Modbus TCP (MBAP, a Modbus TCP gateway)
    gateway: str = ""  # mqtt: the [[gateway]] whose RS-485 line this is


@dataclass(frozen=True, slots=True)
class MqttSettings:
    """The broker connection (gateway reports, transparent buses, the command channel)."""

    url: str  # mqtt://HOST:PORT or mqtts://HOST:PORT
    client_id: str
    username: str | None = None
    password: str | None = field(default=None, repr=False)  # from a file or the environment
    ca_file: Path | None = None
    cert_file: Path | None = None
    key_file: Path | None = None
    commands: bool = True  # serve amic/<collector id>/cmd/#
    reply_prefixes: tuple[str, ...] = ()  # reply_to allowed under these, besides our own


@dataclass(frozen=True, slots=True)
class TimeseriesSettings:
    """Where the outbox is forwarded: an InfluxDB 2/3 (or line-protocol) server."""

    url: str  # http(s)://HOST:PORT
    org: str = ""
    bucket: str = "amic"
    token: str | None = field(default=None, repr=False)  # from a file or the environment
    batch: int = 5000
    precision: str = "ms"
    gzip: bool = True
    gzip_level: int = 6  # 1 fastest .. 9 smallest
    worker_backlog: int = 50_000  # rows behind before a worker process converts; 0: never


@dataclass(frozen=True, slots=True)
class GatewaySettings:
    """An MQTT gateway with RS-485 meters behind it."""

    name: str  # its id in the topics: <prefix>/<name>/report, /raw, /down, /up
    prefix: str = "amic-gw"
    reports: bool = True  # ingest what it reports


@dataclass(frozen=True, slots=True)
class MeterSettings:
    meter_id: str
    address: str  # DL/T645: 12 digits; Modbus: the unit id (1-247)
    bus: str
    protocol: Protocol = "dlt645-2007"
    station: str = ""
    feeder: str = ""
    area: str = ""  # transformer area (台区)
    box: str = ""
    customer: str = ""  # customer number; never logged in full
    prepaid: bool = False
    role: Role = "customer"
    profile: str = ""  # Modbus device profile (config/profiles/NAME.toml)

    @property
    def unit(self) -> int:
        """Modbus unit id (slave address)."""
        return int(self.address)


@dataclass(frozen=True, slots=True)
class ScheduleSettings:
    name: str
    interval: float  # seconds between cycle starts
    quantities: tuple[str, ...]  # quantity names (groups expanded)
    jitter: float = 0.0  # seconds of random delay at each cycle start
    retries: int = 1  # per read, after a timeout or bad reply
    td: float | None = None  # overrides the bus's reply timeout
    meters: tuple[str, ...] = ()  # selectors: "*", "area:A1", "bus:b1", "role:area_master", ids
    backoff_max: float = 3600.0  # cap of the back-off for dead meters, seconds


@dataclass(frozen=True, slots=True)
class CommandSettings:
    """``[commands]``: relay commands (see collector/commands.py)."""

    secrets_file: Path | None = None  # passwords, operator codes, signing keys
    min_interval: float = 2.0  # seconds between two relay commands on one bus
    expiry: float = 300.0  # seconds a command stays valid after it was issued
    verify_timeout: float = 15.0  # seconds to see the relay reach the expected state
    poll_interval: float = 0.5  # seconds between verification reads
    direct_close: bool = False  # restore = 1C direct close instead of 1B close permitted
    signed: bool = True  # relay commands through the broker must be signed (HMAC)


@dataclass(frozen=True, slots=True)
class PrepaidSettings:
    """``[prepaid]``: the prepaid engine for meters with ``prepaid = true``."""

    warn1: Decimal
    warn2: Decimal
    overdraft_limit: Decimal = Decimal(0)
    grace: float = 600.0
    no_trip_windows: tuple[str, ...] = ()
    holidays: tuple[dt.date, ...] = ()
    tz: str = "Asia/Shanghai"
    retry_interval: float = 300.0
    protected: tuple[str, ...] = ()  # selectors: never tripped (hold-power list)
    computed: tuple[str, ...] = ()  # selectors: meters that keep no money
    price: Decimal | None = None  # yuan per kWh, flat (computed balance)
    prices: tuple[tuple[str, Decimal], ...] = ()  # per tariff t1..t4 (computed balance)
    opening_balance: Decimal = Decimal(0)  # computed balance at start


@dataclass(frozen=True, slots=True)
class DailySettings:
    """``[daily]``: the once-a-day jobs (collector/daily.py); local times in ``tz``."""

    tz: str = "Asia/Shanghai"
    report_at: dt.time = dt.time(6, 0)  # yesterday's line loss and read success
    timesync: bool = True
    timesync_at: dt.time = dt.time(2, 0)
    backfill_days: int = 7  # 0: no backfill
    backfill_at: dt.time = dt.time(1, 30)
    audit_fraction: float = 0.02  # of the meters re-read each day; 0: none
    audit_window: tuple[float, float] = (9.0, 17.0)  # local hours


@dataclass(frozen=True, slots=True)
class AlarmConfig:
    """``[alarms]``: limits of the alarm rules (collector/rules.py); None keeps its default."""

    values: tuple[tuple[str, object], ...] = ()  # AlarmSettings field -> value, as given
    comm_loss_after: int = 2  # consecutive failed cycles before comm_loss / meter_dead
    publish: bool = True  # events also published on MQTT (amic/<collector id>/event)


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
    extra: dict[str, object] = field(default_factory=dict)

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

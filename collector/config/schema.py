"""The configuration's tables and keys, and the limits of what the loader reads.

The schema is declared once, as the pydantic models of collector/config/settings.py (one a table:
keys, types, bounds, defaults); the key lists here (:data:`TABLE_KEYS`, ...) are read from
them.  ``config/amic.example.toml`` shows every key, written or commented out as
``# key = ...`` under its (possibly commented-out) table header; tests/test_config.py and
tests/test_config_schema.py check both ways.
"""

from __future__ import annotations

import re
from typing import TypeVar, get_args

from drivers.meters import KINDS
from protocols.dlt645 import Version

from .settings import (
    LIMIT,
    AlarmsTable,
    ApiTable,
    As,
    Baud,
    BusMqttTable,
    BusSerialTable,
    BusTable,
    BusTcpTable,
    CollectorTable,
    CommandsTable,
    ConcentratorTable,
    ConfigFile,
    DailyTable,
    DtuTable,
    GatewayTable,
    ListenerTable,
    MeterRouteTable,
    MetersTable,
    MeterTable,
    MqttTable,
    NotifyEmailTable,
    NotifySmsTable,
    NotifyTable,
    NotifyWebhookTable,
    PrepaidTable,
    Role,
    ScheduleTable,
    SecurityTable,
    Table,
    TimeseriesTable,
)


def _marked(model: type[Table], name: str) -> As:
    mark = next(m for m in model.model_fields[name].metadata if isinstance(m, As))
    return mark


def keys(*models: type[Table]) -> tuple[str, ...]:
    """The TOML keys of the models, in declaration order, each once."""
    return tuple(dict.fromkeys(key_of(m, n) for m in models for n in m.model_fields))


def key_of(model: type[Table], name: str) -> str:
    """The TOML key of the field ``name``."""
    return model.model_fields[name].alias or name


def field_of_key(*models: type[Table]) -> dict[str, str]:
    """TOML key -> settings field, where the two differ."""
    return {key_of(m, n): n for m in models for n in m.model_fields if key_of(m, n) != n}


def is_required(model: type[Table], name: str) -> bool:
    return model.model_fields[name].is_required()


def marker(model: type[Table], name: str) -> As | None:
    """The field's :class:`As` (how the loader reads it), if it has one."""
    return next((m for m in model.model_fields[name].metadata if isinstance(m, As)), None)


DLT645_EDITIONS = {"dlt645-2007": Version.V2007, "dlt645-1997": Version.V1997}

# The tables, their keys and the keys' values: from the models in collector/config/settings.py.
BAUDS: tuple[int, ...] = get_args(Baud)
PARITIES = {"N": "N", "E": "E", "O": "O", "M": "M", "S": "S", "NONE": "N", "EVEN": "E",
            "ODD": "O", "MARK": "M", "SPACE": "S"}
BYTESIZES: tuple[int, ...] = get_args(BusSerialTable.model_fields["bytesize"].annotation)
STOPBITS: tuple[float, ...] = _marked(BusSerialTable, "stopbits").choices
# every kind of the device model; the DL/T645 editions also by their catalogue's Version
# (the configuration's own messages name them)
PROTOCOLS: dict[str, Version | None] = {name: DLT645_EDITIONS.get(name) for name in KINDS}
ROLES: tuple[str, ...] = get_args(Role)
LEDGER_COLUMNS = keys(MeterTable)
REQUIRED_METER_KEYS = tuple(key_of(MeterTable, n) for n in MeterTable.model_fields
                            if is_required(MeterTable, n))
# selector kind -> the meter attribute it compares
SELECTOR_KINDS = ("area", "bus", "feeder", "station", "box", "role", "protocol")

TOP_KEYS = keys(ConfigFile)
DAILY_KEYS = keys(DailyTable)
ALARM_KEYS = keys(AlarmsTable)
# the [alarms] keys kept in AlarmConfig.values (a rule's limit, or the rules that run)
ALARM_LIMITS = tuple(key_of(AlarmsTable, n) for n in AlarmsTable.model_fields
                     if marker(AlarmsTable, n) == LIMIT)
COMMANDS_KEYS = keys(CommandsTable)
API_KEYS = keys(ApiTable)
SECURITY_KEYS = keys(SecurityTable)
PREPAID_KEYS = keys(PrepaidTable)
TIMESERIES_KEYS = keys(TimeseriesTable)
TOKEN_ENV = "AMIC_TSDB_TOKEN"
MQTT_KEYS = keys(MqttTable)
GATEWAY_KEYS = keys(GatewayTable)
LISTENER_KEYS = keys(ListenerTable)
CONCENTRATOR_KEYS = keys(ConcentratorTable)
DTU_KEYS = keys(DtuTable)
NOTIFY_KEYS = keys(NotifyTable)
NOTIFY_WEBHOOK_KEYS = keys(NotifyWebhookTable)
NOTIFY_EMAIL_KEYS = keys(NotifyEmailTable)
NOTIFY_SMS_KEYS = keys(NotifySmsTable)
# ledger columns only a meter behind a concentrator has
ROUTE_COLUMNS = keys(MeterRouteTable)
BUS_COMMON_KEYS = keys(BusTable)
BUS_TCP_KEYS = tuple(k for k in keys(BusTcpTable) if k not in BUS_COMMON_KEYS)
BUS_SERIAL_KEYS = tuple(k for k in keys(BusSerialTable) if k not in BUS_COMMON_KEYS)
BUS_MQTT_KEYS = tuple(k for k in keys(BusMqttTable) if k not in BUS_COMMON_KEYS)
PASSWORD_ENV = "AMIC_MQTT_PASSWORD"
COLLECTOR_KEYS = keys(CollectorTable)
METERS_KEYS = keys(MetersTable)
SCHEDULE_KEYS = keys(ScheduleTable)
# bus type -> the model of that [[bus]]
BUS_MODELS: dict[str, type[BusTable]] = {"tcp": BusTcpTable, "serial": BusSerialTable,
                                         "mqtt": BusMqttTable}

# table as written ("schedule.NAME": any schedule) -> its model(s); one entry per TOP_KEYS name
TABLE_MODELS: dict[str, tuple[type[Table], ...]] = {
    "collector": (CollectorTable,),
    "bus": (BusTcpTable, BusSerialTable, BusMqttTable),
    "meter": (MeterTable, MeterRouteTable),
    "meters": (MetersTable,),
    "schedule.NAME": (ScheduleTable,),
    "mqtt": (MqttTable,),
    "gateway": (GatewayTable,),
    "timeseries": (TimeseriesTable,),
    "commands": (CommandsTable,),
    "prepaid": (PrepaidTable,),
    "alarms": (AlarmsTable,),
    "daily": (DailyTable,),
    "listener": (ListenerTable,),
    "concentrator": (ConcentratorTable,),
    "dtu": (DtuTable,),
    "security": (SecurityTable,),
    "api": (ApiTable,),
    "notify": (NotifyTable,),
    "notify_webhook": (NotifyWebhookTable,),
    "notify_email": (NotifyEmailTable,),
    "notify_sms": (NotifySmsTable,),
}
TABLE_KEYS: dict[str, tuple[str, ...]] = {t: keys(*m) for t, m in TABLE_MODELS.items()}
# key -> the settings field it fills, where the two names differ (all others: the same name;
# the [alarms] limits and rules go to AlarmConfig.values)
FIELD_OF_KEY = field_of_key(*{m for ms in TABLE_MODELS.values() for m in ms})

NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.\-]{0,63}$")
NAME_TEXT = 'a name of letters, digits, "_", "." and "-" (at most 64)'
# Upper bounds on what the loader reads, so a wrong path cannot exhaust memory.
MAX_CONFIG_BYTES = 1 << 20
MAX_LEDGER_BYTES = 16 << 20
MAX_SECRET_BYTES = 64 << 10  # a password or token file

T = TypeVar("T")

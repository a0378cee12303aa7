"""The configuration's tables and keys, and the limits of what the loader reads.

The keys of each table are declared here once (:data:`TABLE_KEYS`); the defaults once, as
the field defaults of the settings classes (collector/settings.py, read by ``default``).
``config/amic.example.toml`` shows every key, written or commented out as ``# key = ...``
under its (possibly commented-out) table header; tests/test_config.py checks both ways.
"""

from __future__ import annotations

import re
from typing import TypeVar

from protocols.dlt645 import Version

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

# table as written ("schedule.NAME": any schedule) -> its keys; one entry per TOP_KEYS name
TABLE_KEYS: dict[str, tuple[str, ...]] = {
    "collector": COLLECTOR_KEYS,
    "bus": BUS_COMMON_KEYS + BUS_TCP_KEYS + BUS_SERIAL_KEYS + BUS_MQTT_KEYS,
    "meter": LEDGER_COLUMNS,
    "meters": METERS_KEYS,
    "schedule.NAME": SCHEDULE_KEYS,
    "mqtt": MQTT_KEYS,
    "gateway": GATEWAY_KEYS,
    "timeseries": TIMESERIES_KEYS,
    "commands": COMMANDS_KEYS,
    "prepaid": PREPAID_KEYS,
    "alarms": ALARM_KEYS,
    "daily": DAILY_KEYS,
}
# key -> the settings field it fills, where the two names differ (all others: the same name;
# the [alarms] limits and rules go to AlarmConfig.values)
FIELD_OF_KEY = {"type": "kind", "td_ms": "td", "tb_ms": "tb", "password_file": "password",
                "token_file": "token"}

NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.\-]{0,63}$")
NAME_TEXT = 'a name of letters, digits, "_", "." and "-" (at most 64)'
DURATION_RE = re.compile(r"^(?:\d+(?:\.\d+)?(?:ms|s|m|h|d))+$")
DURATION_PART = re.compile(r"(\d+(?:\.\d+)?)(ms|s|m|h|d)")
DURATION_UNITS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0}
DURATION_TEXT = 'a duration like "15m", "1h", "30s" or a number of seconds'
# Upper bounds on what the loader reads, so a wrong path cannot exhaust memory.
MAX_CONFIG_BYTES = 1 << 20
MAX_LEDGER_BYTES = 16 << 20
MAX_SECRET_BYTES = 64 << 10  # a password or token file

T = TypeVar("T")

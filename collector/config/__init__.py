"""Load and check the collector's configuration: one TOML file, plus an optional meter ledger.

:func:`load_settings` reads the file and checks all of it before anything starts.  Every
problem found is collected (not just the first) and raised together as a
:class:`ConfigError`; each :class:`Problem` names the file, the line where it can be
found, the table, the key (or ledger column), the meter concerned and what was expected
against what was found::

    amic.toml:14: [[bus]] #2 (name "rs485-a"): key "baud": expected one of 1200, 2400,
    4800, 9600, 19200, got 2401

The schema is stated once, as pydantic models in collector/config/settings.py (one a table: each
key's TOML name, type, bounds, default and meaning); the settings dataclasses take their
defaults from them.  The package, by concern: ``schema`` (the key lists, read from the
models; limits), ``fields`` (a key's converter, bounds and default from its model's field
info), ``problems`` (:class:`Problem`, :class:`ConfigError`, line numbers), ``convert``
(value converters and their messages), ``base`` (the loader's core), ``tables`` (one method
a table), ``ledger`` ([[meter]] and the CSV ledger), ``selectors`` and ``checks`` (across
keys and meters).  ``config/amic.example.toml`` documents every key (tests keep it and the
models in step, both ways).

Meter selectors (a schedule's ``meters``): ``"*"``, ``"area:ID"``, ``"bus:NAME"``,
``"feeder:ID"``, ``"station:ID"``, ``"box:ID"``, ``"role:customer|area_master"``,
``"protocol:dlt645-2007|dlt645-1997|modbus"`` or a meter id.  A meter is in a schedule if any
selector matches it; a selector that matches no meter is an error.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from .checks import readable
from .convert import parse_duration
from .ledger import CsvRecordError, LedgerMixin, csv_records
from .messages import quote as _q
from .notify import NotifyMixin
from .problems import ConfigError, Problem
from .schema import (
    ALARM_KEYS,
    BAUDS,
    BUS_COMMON_KEYS,
    BUS_MQTT_KEYS,
    BUS_SERIAL_KEYS,
    BUS_TCP_KEYS,
    BYTESIZES,
    COLLECTOR_KEYS,
    COMMANDS_KEYS,
    DAILY_KEYS,
    FIELD_OF_KEY,
    GATEWAY_KEYS,
    LEDGER_COLUMNS,
    MAX_CONFIG_BYTES,
    MAX_LEDGER_BYTES,
    MAX_SECRET_BYTES,
    METERS_KEYS,
    MQTT_KEYS,
    PARITIES,
    PASSWORD_ENV,
    PREPAID_KEYS,
    PROTOCOLS,
    REQUIRED_METER_KEYS,
    ROLES,
    SCHEDULE_KEYS,
    SELECTOR_KINDS,
    STOPBITS,
    TABLE_KEYS,
    TABLE_MODELS,
    TIMESERIES_KEYS,
    TOKEN_ENV,
    TOP_KEYS,
)
from .selectors import meters_matching, parse_selector, select_meters
from .settings import Settings

log = logging.getLogger("amic.config")

__all__ = [
    "ALARM_KEYS",
    "BAUDS",
    "BUS_COMMON_KEYS",
    "BUS_MQTT_KEYS",
    "BUS_SERIAL_KEYS",
    "BUS_TCP_KEYS",
    "BYTESIZES",
    "COLLECTOR_KEYS",
    "COMMANDS_KEYS",
    "DAILY_KEYS",
    "FIELD_OF_KEY",
    "GATEWAY_KEYS",
    "LEDGER_COLUMNS",
    "MAX_CONFIG_BYTES",
    "MAX_LEDGER_BYTES",
    "MAX_SECRET_BYTES",
    "METERS_KEYS",
    "MQTT_KEYS",
    "PARITIES",
    "PASSWORD_ENV",
    "PREPAID_KEYS",
    "PROTOCOLS",
    "REQUIRED_METER_KEYS",
    "ROLES",
    "SCHEDULE_KEYS",
    "SELECTOR_KINDS",
    "STOPBITS",
    "TABLE_KEYS",
    "TABLE_MODELS",
    "TIMESERIES_KEYS",
    "TOKEN_ENV",
    "TOP_KEYS",
    "ConfigError",
    "CsvRecordError",
    "Problem",
    "check_ledger_text",
    "csv_records",
    "load_settings",
    "meters_matching",
    "parse_duration",
    "parse_selector",
    "readable",
    "secrets_file_named",
    "select_meters",
]


def secrets_file_named(data: dict[str, Any], base: Path) -> Path | None:
    """The secrets file a configuration's TOML ``data`` names (``[commands]``, else
    ``[api]``), relative to ``base``, unchecked: found even when the rest is refused."""
    for table in ("commands", "api"):
        t = data.get(table)
        name = t.get("secrets_file") if isinstance(t, dict) else None
        if isinstance(name, str) and name:
            p = Path(name).expanduser()
            return p if p.is_absolute() else base / p
    return None


class _Loader(NotifyMixin, LedgerMixin):
    """The whole file: each part is a mixin (tables, ledger, selectors, checks)."""

    # -- the whole file

    def load(self) -> Settings:
        data = self.read_toml()
        if data is None:
            raise ConfigError(self.problems)
        self.unknown_keys("", data, TOP_KEYS)
        collector = self.collector(data.get("collector"))
        mqtt = self.mqtt(data.get("mqtt"))
        if mqtt is not None and collector is not None and mqtt.fleet == collector.id:
            # amic/<fleet>/cmd/ and amic/<collector id>/cmd/ would be one topic
            self.add("mqtt", "fleet", "a fleet name other than [collector] id",
                     _q(mqtt.fleet))
        timeseries = self.timeseries(data.get("timeseries"))
        gateways = self.gateways(data.get("gateway"), mqtt is not None)
        listeners = self.listeners(data.get("listener"))
        buses, declared = self.buses(data.get("bus"), required=not (
            data.get("concentrator") or data.get("dtu")))
        raw_listeners = data.get("listener")
        # every [[listener]] named, valid or not: its own problems are enough
        listener_names = {li.get("name") for li in raw_listeners if isinstance(li, dict)} \
            if isinstance(raw_listeners, list) else set()
        concentrators = self.concentrators(
            data.get("concentrator"), {n for n in listener_names if isinstance(n, str)},
            declared)
        protocols = {li["name"]: li.get("protocol") for li in raw_listeners
                     if isinstance(li, dict) and isinstance(li.get("name"), str)} \
            if isinstance(raw_listeners, list) else {}
        concentrators = self.refuse_concentrators_on_dtu_listeners(
            data.get("concentrator"), concentrators, protocols)
        dtus = self.dtus(data.get("dtu"), protocols, {
            li.name: (li.registration, li.registration_length) for li in listeners if li.dtu},
            declared)
        bus_names = set(declared)
        for i, b in enumerate(buses):
            if b.kind == "mqtt" and b.gateway not in {g.name for g in gateways}:
                self.add(f"bus[{i}]", "gateway", "the name of a [[gateway]]", _q(b.gateway),
                         name=b.name)
        self.personal_secrets = secrets_file_named(data, self.base)
        rows = self.inline_meters(data.get("meter"), bus_names)
        rows += self.ledger(data.get("meters"), bus_names)
        meters = self.check_meters(rows)
        self.check_dtu_meters(rows, dtus, protocols)
        meters = [r.meter for r in rows if r.meter is not None]
        schedules = self.schedules(data.get("schedule"), rows)
        commands = self.commands(data.get("commands"))
        prepaid = self.prepaid(data.get("prepaid"), rows)
        alarms = self.alarms(data.get("alarms"))
        daily = self.daily(data.get("daily"))
        security = self.security(data.get("security"))
        api = self.api(data.get("api"), commands)
        notify = self.notify(data)
        if self.problems:
            raise ConfigError(self.sorted_problems())
        assert collector is not None
        return Settings(source=self.path.absolute(), collector=collector, buses=tuple(buses),
                        meters=tuple(meters), schedules=tuple(schedules), mqtt=mqtt,
                        gateways=tuple(gateways), timeseries=timeseries,
                        commands=commands, prepaid=prepaid, alarms=alarms, daily=daily,
                        listeners=tuple(listeners), concentrators=tuple(concentrators),
                        dtus=tuple(dtus), security=security, api=api, notify=notify)


def check_ledger_text(file: str, text: str, bus_names: Iterable[str],
                      secrets: Path | None = None) -> tuple[int, int, list[Problem]]:
    """What ``amic run`` makes of a ledger CSV's ``text``: (rows, valid meters, problems),
    the problems naming ``file`` (for ``amic ledger check``); ``secrets``: the secrets
    file whose ``[ledger] key`` opens sealed cells."""
    loader = _Loader(Path(f"<validate {file}>"))
    loader.personal_secrets = secrets
    rows = loader.ledger_rows(file, text, set(bus_names))
    valid = loader.check_meters(rows)
    return len(rows), len(valid), list(loader.problems)


def load_settings(path: Path) -> Settings:
    """Read and check one TOML configuration (and the ledger it names).

    Relative paths in it (``data_dir``, ``ledger``) are relative to the file's folder.
    :class:`ConfigError` lists every problem found; nothing is started either way.
    """
    return _Loader(Path(path)).load()

"""One method a table: [collector], [mqtt], [[bus]], [schedule.NAME], ..."""

from __future__ import annotations

import datetime as dt
import math
import os
import stat
from collections.abc import Mapping
from decimal import Decimal
from pathlib import Path
from typing import cast

from collector.config.secrets import SecretsError, load_secrets
from drivers.device import MeterRef
from drivers.meters import kind_of
from protocols.quantities import (
    GROUPS,
    QUANTITIES,
)

from .alarms import KNOWN_RULES, RULES, AlarmSettings
from .checks import ChecksMixin
from .convert import path_conv, to_seconds
from .dtus import DTU_LISTENER_KEYS, DtuMixin
from .fields import bounds, conv_of, default_of, key_of, marker
from .messages import did_you_mean as _did_you_mean
from .messages import quote as _q
from .problems import show_value
from .safefile import FileRefused, read_regular
from .schema import (
    ALARM_KEYS,
    ALARM_LIMITS,
    API_KEYS,
    BUS_COMMON_KEYS,
    BUS_MODELS,
    BUS_MQTT_KEYS,
    BUS_SERIAL_KEYS,
    BUS_TCP_KEYS,
    COLLECTOR_KEYS,
    COMMANDS_KEYS,
    CONCENTRATOR_KEYS,
    DAILY_KEYS,
    GATEWAY_KEYS,
    LISTENER_KEYS,
    MAX_SECRET_BYTES,
    MQTT_KEYS,
    NAME_RE,
    NAME_TEXT,
    PASSWORD_ENV,
    PREPAID_KEYS,
    SCHEDULE_KEYS,
    SECURITY_KEYS,
    TIMESERIES_KEYS,
    TOKEN_ENV,
)
from .selectors import Row, SelectorsMixin
from .settings import (
    TIME,
    AlarmConfig,
    AlarmsTable,
    ApiSettings,
    ApiTable,
    BusSerialTable,
    BusSettings,
    BusTable,
    CollectorSettings,
    CollectorTable,
    CommandSettings,
    CommandsTable,
    ConcentratorSettings,
    ConcentratorTable,
    DailySettings,
    DailyTable,
    GatewaySettings,
    GatewayTable,
    ListenerSettings,
    ListenerTable,
    MeterSettings,
    ModbusFraming,
    MqttSettings,
    MqttTable,
    PrepaidSettings,
    PrepaidTable,
    ScheduleSettings,
    ScheduleTable,
    SecuritySettings,
    SecurityTable,
    TimeseriesSettings,
    TimeseriesTable,
    hours_in_order,
    local_hours,
)
from .windows import parse_window


class TablesMixin(SelectorsMixin, ChecksMixin, DtuMixin):
    """Each table's keys, converted and checked."""

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
        C = CollectorTable
        self.unknown_keys(t, data, COLLECTOR_KEYS)
        cid = self.req(t, data, C, "id")
        data_dir = self.req(t, data, C, "data_dir")
        if data_dir is not None:
            # amic run creates the folder: what is already there must be folders.
            folder = self.relative(data_dir)
            there = next((p for p in (folder, *folder.parents) if p.exists()), folder)
            if not there.is_dir():
                self.add(t, "data_dir", "a folder (amic keeps its store there)",
                         f"{folder} ({there} is not a folder)")
                data_dir = None
        retention = self.opt(t, data, C, "retention_days")
        listen = self.opt(t, data, C, "metrics_listen")
        interval = self.opt(t, data, C, "commit_interval")
        rows = self.opt(t, data, C, "commit_rows")
        max_mb = self.opt(t, data, C, "max_store_mb")
        free_mb = self.opt(t, data, C, "min_free_mb")
        if cid is None or data_dir is None or retention is None or interval is None \
                or rows is None or (max_mb is None and "max_store_mb" in data) \
                or free_mb is None:
            return None
        return CollectorSettings(id=cid, data_dir=self.relative(data_dir),
                                 retention_days=retention, metrics_listen=listen,
                                 commit_interval=interval, commit_rows=rows,
                                 max_store_mb=max_mb, min_free_mb=free_mb)

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
        M = MqttTable
        url = self.req(t, data, M, "url")
        client_id = self.opt(t, data, M, "client_id")
        username = self.opt(t, data, M, "username")
        files = {k: self.opt(t, data, M, k) for k in ("ca_file", "cert_file", "key_file")}
        commands = self.opt(t, data, M, "commands")
        reply_prefixes = self.reply_prefixes(t, data)
        fleet = self.opt(t, data, M, "fleet")
        fleet_hold = self.opt(t, data, M, "fleet_hold")
        if fleet is not None and commands is False:
            self.add(t, "fleet", "no fleet with commands = false (a fleet shares the "
                     "command channel)", show_value(fleet))
        paths = {k: self.relative(v) if v else None for k, v in files.items()}
        for k, path in paths.items():
            if path is not None and not path.is_file():
                self.add(t, k, "a readable file", f"{path} (no such file)")
        password = self.secret(t, data, key_of(M, "password"), PASSWORD_ENV)
        if password is not None and username is None and "username" not in data:
            # MQTT 3.1.1 sends no password without a user name; the client refuses it.
            self.add(t, "username", "a username with the password (MQTT sends no password "
                     "alone)", "nothing" + ("" if "password_file" in data else
                                            f" (the password is from {PASSWORD_ENV})"))
        if (paths["cert_file"] is None) != (paths["key_file"] is None):
            self.add(t, "key_file" if paths["key_file"] is None else "cert_file",
                     "cert_file and key_file together (a client certificate)", "only one")
        if url is not None and len(self.problems) == before:
            self.connection_problem(t, url, client_id or None, username, password, paths)
        if url is None or commands is None:
            return None
        return MqttSettings(url=url, client_id=client_id or "", username=username,
                            password=password, ca_file=paths["ca_file"],
                            cert_file=paths["cert_file"], key_file=paths["key_file"],
                            commands=commands, reply_prefixes=reply_prefixes,
                            fleet=fleet, fleet_hold=fleet_hold)

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
                         "or $)", show_value(p))
            elif (parts := p.rstrip("/").split("/"))[0] == "amic" \
                    and (len(parts) <= 2 or parts[2] == "cmd"):
                self.add(t, "reply_prefixes", "a prefix outside the command topics "
                         "amic/<cid>/cmd/", show_value(p))
            else:
                out.append(p.rstrip("/"))
        return tuple(out)

    def secret(self, t: str, data: Mapping[str, object], key: str, env: str) -> str | None:
        """The secret in the file ``data[key]`` names (a problem if group or others may
        access it, as for the secrets file), else the environment variable ``env``; never
        the config file itself."""
        name = self.optional(t, data, key, path_conv("a file path"), None)
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
        TS = TimeseriesTable
        url = self.req(t, data, TS, "url")
        org = self.opt(t, data, TS, "org")
        bucket = self.opt(t, data, TS, "bucket")
        batch = self.opt(t, data, TS, "batch")
        precision = self.opt(t, data, TS, "precision")
        gzip = self.opt(t, data, TS, "gzip")
        level = self.opt(t, data, TS, "gzip_level")
        backlog = self.opt(t, data, TS, "worker_backlog")
        token = self.secret(t, data, key_of(TS, "token"), TOKEN_ENV)
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
        D = DailyTable
        tz = self.opt(t, data, D, "tz")
        times: dict[str, dt.time] = {}
        for key in (n for n in D.model_fields if marker(D, n) == TIME):
            raw = data.get(key)
            if raw is None:
                times[key] = default_of(D, key)
            elif isinstance(raw, dt.time):
                times[key] = raw
            else:
                try:
                    times[key] = dt.time.fromisoformat(str(raw))
                except ValueError:
                    self.add(t, key, "a local time such as \"06:00\"", show_value(raw))
                    ok = False
        sync = self.opt(t, data, D, "timesync")
        days = self.opt(t, data, D, "backfill_days")
        fraction = data.get("audit_fraction", default_of(D, "audit_fraction"))
        lo, hi, _ = bounds(D, "audit_fraction")
        if isinstance(fraction, bool) or not isinstance(fraction, int | float) \
                or not lo <= fraction <= hi:
            self.add(t, "audit_fraction", "a fraction from 0 to 1", show_value(fraction))
            ok = False
            fraction = 0.0
        window = default_of(D, "audit_window")
        if "audit_window" in data:
            raw = data["audit_window"]
            got = local_hours(raw)
            if got is None:
                self.add(t, "audit_window", "local hours such as \"09:00-17:00\"",
                         show_value(raw))
                ok = False
            else:
                if not hours_in_order(got):
                    self.add(t, "audit_window", "a window inside one day, start before end",
                             show_value(raw))
                    ok = False
                window = got
        events = self.opt(t, data, D, "events")
        records = self.opt(t, data, D, "events_records")
        volts: dict[str, float] = {}
        ranges: tuple[tuple[str, float, float, str], ...] = (
            ("voltage_nominal", 0.0, math.inf, "a voltage above 0"),
            ("voltage_band_high_pct", 0.0, math.inf, "a percentage above 0"),
            ("voltage_band_low_pct", -100.0, 0.0, "a percentage from -100 to 0"))
        for key, low, high, what in ranges:
            v = data.get(key, default_of(D, key))
            if isinstance(v, bool) or not isinstance(v, int | float) \
                    or not low < float(v) < high:
                self.add(t, key, what, show_value(v))
                ok = False
                v = default_of(D, key)
            volts[key] = float(v)
        areas: list[tuple[str, float]] = []
        raw_areas = data.get("voltage_areas", {})
        if not isinstance(raw_areas, dict):
            self.add(t, "voltage_areas", "a table of area = nominal volts", show_value(raw_areas))
            ok = False
        else:
            for area, v in raw_areas.items():
                if isinstance(v, bool) or not isinstance(v, int | float) or not v > 0:
                    self.add(t, "voltage_areas", f"a voltage above 0 for area {area}",
                             show_value(v))
                    ok = False
                else:
                    areas.append((str(area), float(v)))
        if not ok or tz is None or sync is None or days is None or events is None \
                or records is None:
            return None
        return DailySettings(tz=tz, report_at=times["report_at"], timesync=sync,
                             timesync_at=times["timesync_at"], backfill_days=days,
                             backfill_at=times["backfill_at"],
                             audit_fraction=float(fraction), audit_window=window,
                             events=events, events_at=times["events_at"],
                             events_records=records, voltage_areas=tuple(areas), **volts)

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
        for key in ALARM_LIMITS:
            if key == "rules":
                continue
            if key in data:
                v = data[key]
                if isinstance(v, bool) or not isinstance(v, int | float):
                    self.add(t, key, "a number", show_value(v))
                    ok = False
                    continue
                values.append((key, float(v)))
        if "rules" in data:
            # the message names the default rules; the opt-in ones are in the example
            names = self.strings(t, data, "rules", "a list of rule names: " + ", ".join(RULES))
            for rule in names or []:
                if rule not in KNOWN_RULES:
                    ok = False
                    self.add(t, "rules", "rule names: " + ", ".join(RULES), _q(rule),
                             hint=_did_you_mean(rule, list(KNOWN_RULES)))
            if names is not None:
                values.append(("rules", frozenset(names)))
        if ok:
            try:
                AlarmSettings(**dict(values))  # type: ignore[arg-type]
            except ValueError as e:
                self.add(t, None, "limits that make sense together", str(e))
        A = AlarmsTable
        after = self.opt(t, data, A, "comm_loss_after")
        publish = self.opt(t, data, A, "publish")
        return AlarmConfig(values=tuple(values),
                           comm_loss_after=after or default_of(A, "comm_loss_after"),
                           publish=default_of(A, "publish") if publish is None else publish)

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
        K = CommandsTable
        name = self.opt(t, data, K, "secrets_file")
        secrets_file = None
        if name is not None:
            secrets_file = self.relative(name)
            try:
                load_secrets(secrets_file)
            except SecretsError as e:
                for text in e.problems:
                    self.add(t, "secrets_file", "a secrets file amic accepts", text)
        interval = self.opt(t, data, K, "min_interval")
        expiry = self.opt(t, data, K, "expiry")
        verify = self.opt(t, data, K, "verify_timeout")
        poll = self.opt(t, data, K, "poll_interval")
        direct = self.opt(t, data, K, "direct_close")
        signed = self.opt(t, data, K, "signed")
        if interval is None or expiry is None or verify is None or poll is None \
                or direct is None or signed is None:
            return None
        return CommandSettings(secrets_file=secrets_file, min_interval=interval,
                               expiry=expiry, verify_timeout=verify, poll_interval=poll,
                               direct_close=direct, signed=signed)

    def security(self, value: object) -> SecuritySettings | None:
        """``[security]``: the module and what it needs (checked, not started)."""
        if value is None:
            return None
        data = self.table("", "security", value, "a [security] table")
        if data is None:
            return None
        t = "security"
        before = len(self.problems)
        self.unknown_keys(t, data, SECURITY_KEYS, elsewhere={
            "key": "never in the configuration: the key is in key_file"})
        S = SecurityTable
        module = self.req(t, data, S, "module")
        key_file = self.opt(t, data, S, "key_file")
        test_keys = self.opt(t, data, S, "test_keys")
        timeout = self.opt(t, data, S, "timeout")
        relay = self.opt(t, data, S, "relay")
        command: tuple[str, ...] = ()
        if "command" in data:
            argv = self.strings(t, data, "command", 'the program and its arguments, e.g. '
                                '["/usr/lib/esam-bridge", "--port", "/dev/ttyUSB0"]')
            command = tuple(argv or ())
        path = self.relative(key_file) if key_file else None
        if module == "soft":
            if path is None and not test_keys:
                self.add(t, "key_file", 'a key file (or test_keys = true for the simulator)',
                         "nothing")
            elif path is not None and test_keys:
                self.add(t, "test_keys", "key_file or test_keys, not both", "both")
            elif path is not None:
                from drivers.security import read_key_file
                try:
                    if len(read_key_file(path)) < 16:
                        self.add(t, "key_file", "a key of 16 bytes or more (32 hex digits)",
                                 f"{path}: shorter")
                except (OSError, ValueError) as e:
                    self.add(t, "key_file", "a readable key file (hex, mode 0600)", str(e))
        elif module == "command" and not command:
            self.add(t, "command", 'the program to run, e.g. ["/usr/lib/esam-bridge"]',
                     "nothing")
        elif module is not None and module not in ("soft", "command"):
            from importlib.metadata import entry_points
            if not [ep for ep in entry_points(group="amic.security") if ep.name == module]:
                self.add(t, "module", '"soft", "command" or an installed entry point of the '
                         "group amic.security", _q(module))
        if module is None or len(self.problems) > before:
            return None
        return SecuritySettings(module=module, key_file=path, test_keys=bool(test_keys),
                                command=command, timeout=timeout, relay=bool(relay))

    def api(self, value: object, commands: CommandSettings | None) -> ApiSettings | None:
        """``[api]``: where the HTTP API listens, its TLS files and its tokens' file."""
        if value is None:
            return None
        data = self.table("", "api", value, "an [api] table")
        if data is None:
            return None
        t = "api"
        before = len(self.problems)
        self.unknown_keys(t, data, API_KEYS, elsewhere={
            "token": "never in the configuration: tokens are hashed in the secrets file "
                     "([api_tokens.NAME]; make one with amic api-token)"})
        A = ApiTable
        listen = self.req(t, data, A, "listen")
        files: dict[str, Path | None] = {}
        for key in ("cert_file", "key_file", "client_ca_file", "secrets_file"):
            name = self.opt(t, data, A, key)
            files[key] = self.relative(name) if name is not None else None
            path = files[key]
            if path is not None and key != "secrets_file" and not path.is_file():
                self.add(t, key, "a readable PEM file", f"{path}: no such file")
        if (files["cert_file"] is None) != (files["key_file"] is None):
            missing = "key_file" if files["key_file"] is None else "cert_file"
            self.add(t, missing, "cert_file and key_file together (TLS), or neither",
                     "only one of them")
        if files["client_ca_file"] is not None and files["cert_file"] is None:
            self.add(t, "client_ca_file", "cert_file and key_file too (mTLS is TLS)",
                     "no cert_file")
        secrets_file = files["secrets_file"] or (commands.secrets_file if commands else None)
        if secrets_file is None:
            self.add(t, "secrets_file", "the secrets file holding [api_tokens.NAME] (or "
                     "[commands] secrets_file)", "nothing")
        elif files["secrets_file"] is not None:
            try:
                load_secrets(secrets_file)
            except SecretsError as e:
                for text in e.problems:
                    self.add(t, "secrets_file", "a secrets file amic accepts", text)
        max_rows = self.opt(t, data, A, "max_rows")
        console = self.opt(t, data, A, "console")
        minutes = self.opt(t, data, A, "session_minutes")
        if (listen is None or max_rows is None or console is None or minutes is None
                or len(self.problems) > before):
            return None
        return ApiSettings(listen=listen, cert_file=files["cert_file"],
                           key_file=files["key_file"], client_ca_file=files["client_ca_file"],
                           secrets_file=secrets_file, max_rows=max_rows, console=console,
                           session_minutes=minutes)

    def prepaid(self, value: object, rows: list[Row]) -> PrepaidSettings | None:
        if value is None:
            return None
        data = self.table("", "prepaid", value, "a [prepaid] table")
        if data is None:
            return None
        t = "prepaid"
        self.unknown_keys(t, data, PREPAID_KEYS)
        P = PrepaidTable
        warn1 = self.req(t, data, P, "warn1")
        warn2 = self.req(t, data, P, "warn2")
        if warn1 is not None and warn2 is not None and not warn1 > warn2:
            self.add(t, "warn2", f"an amount below warn1 ({warn1})", str(warn2))
        overdraft = self.opt(t, data, P, "overdraft_limit")
        grace = self.opt(t, data, P, "grace")
        retry = self.opt(t, data, P, "retry_interval")
        tz = self.opt(t, data, P, "tz")
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
                         show_value(h))
        protected = self.selectors(t, {"meters": data["protected"]}, rows)[0] \
            if "protected" in data else []
        computed = self.selectors(t, {"meters": data["computed"]}, rows)[0] \
            if "computed" in data else []
        price = self.opt(t, data, P, "price")
        prices: list[tuple[str, Decimal]] = []
        raw = data.get("prices")
        if raw is not None:
            if not isinstance(raw, dict) or not raw:
                self.add(t, "prices", "a table of prices per tariff: { t1 = 0.56, ... }",
                         show_value(raw))
            else:
                for k, v in raw.items():
                    if k not in ("t1", "t2", "t3", "t4"):
                        self.add(t, "prices", "tariffs t1, t2, t3, t4", _q(k))
                        continue
                    d = self.convert(t, "prices", v, conv_of(P, "price"))
                    if d is not None:
                        prices.append((k, d))
        if price is not None and prices:
            self.add(t, "prices", "either price (flat) or prices (per tariff)", "both")
        if computed and price is None and not prices:
            self.add(t, "price", "a price (or prices) for the computed meters", "nothing")
        opening = self.opt(t, data, P, "opening_balance")
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
            G = GatewayTable
            ok_name = self.req(t, data, G, "name", name=name)
            prefix = self.opt(t, data, G, "prefix", name=name)
            reports = self.opt(t, data, G, "reports", name=name)
            if ok_name in seen:
                self.add(t, "name", "a gateway name used once", _q(ok_name or ""), name=name)
                continue
            if ok_name is None or prefix is None or reports is None:
                continue
            seen.add(ok_name)
            out.append(GatewaySettings(name=ok_name, prefix=prefix, reports=reports))
        return out

    # -- [[listener]] and [[concentrator]]

    def listeners(self, value: object) -> list[ListenerSettings]:
        out: list[ListenerSettings] = []
        seen: set[str] = set()
        for i, item in enumerate(self.array_of_tables("listener", value,
                                                      "[[listener]] tables")):
            t = f"listener[{i}]"
            data = self.table(t, None, item, "a [[listener]] table")
            if data is None:
                continue
            raw_name = data.get("name")
            name = raw_name if isinstance(raw_name, str) else None
            self.unknown_keys(t, data, LISTENER_KEYS, name=name)
            L = ListenerTable
            got = {f: (self.req if f in ("name", "listen", "protocol") else self.opt)(
                t, data, L, f, name=name) for f in L.model_fields
                if f not in DTU_LISTENER_KEYS}
            dtu = self.dtu_listener(t, data, got["protocol"], name)
            paths = {k: self.relative(got[k]) if got[k] else None
                     for k in ("tls_cert_file", "tls_key_file")}
            for k, path in paths.items():
                if path is not None and not path.is_file():
                    self.add(t, k, "a readable file", f"{path} (no such file)", name=name)
            if (paths["tls_cert_file"] is None) != (paths["tls_key_file"] is None):
                self.add(t, "tls_key_file" if paths["tls_key_file"] is None
                         else "tls_cert_file",
                         "tls_cert_file and tls_key_file together (TLS)", "only one",
                         name=name)
                continue
            if got["name"] in seen:
                self.add(t, "name", "a listener name used once", _q(got["name"]), name=name)
                continue
            if any(v is None for k, v in got.items() if k not in paths) or dtu is None:
                continue
            seen.add(got["name"])
            out.append(ListenerSettings(
                name=got["name"], listen=got["listen"], protocol=got["protocol"],
                login_reply=got["login_reply"], idle_timeout=got["idle_timeout"],
                request_timeout=got["request_timeout"], tls_cert_file=paths["tls_cert_file"],
                tls_key_file=paths["tls_key_file"], **dtu))
        return out

    def concentrators(self, value: object, listeners: set[str],
                      declared: dict[str, str]) -> list[ConcentratorSettings]:
        """Each concentrator (its meters name it in ``bus``); ``listeners``: the names of
        the [[listener]] tables (valid or not); ``declared``: the names taken so far
        (buses), where, to which these are added."""
        out: list[ConcentratorSettings] = []
        addresses: dict[tuple[str, int], str] = {}
        names = listeners
        for i, item in enumerate(self.array_of_tables("concentrator", value,
                                                      "[[concentrator]] tables")):
            t = f"concentrator[{i}]"
            data = self.table(t, None, item, "a [[concentrator]] table")
            if data is None:
                continue
            raw_name = data.get("name")
            name = raw_name.strip() if isinstance(raw_name, str) else None
            self.unknown_keys(t, data, CONCENTRATOR_KEYS, name=name)
            C = ConcentratorTable
            ok_name = self.req(t, data, C, "name", name=name)
            a2 = self.req(t, data, C, "a2", name=name)
            listener = self.req(t, data, C, "listener", name=name)
            group = self.opt(t, data, C, "group", name=name)
            a1 = data.get("a1")
            if "a1" not in data:
                self.add(t, "a1", "4 BCD digits such as \"4403\"", "nothing", name=name)
                a1 = None
            elif not isinstance(a1, str) or len(a1) != 4 or not a1.isdigit() \
                    or not a1.isascii():
                self.add(t, "a1", "4 BCD digits such as \"4403\"", show_value(a1), name=name)
                a1 = None
            if listener is not None and listener not in names:
                self.add(t, "listener", "the name of a [[listener]] (" + ", ".join(
                    _q(n) for n in sorted(names)) + ")" if names
                    else "the name of a [[listener]] (none is configured)", _q(listener),
                    name=name, hint=_did_you_mean(listener, names))
                listener = None
            if ok_name is not None:
                if ok_name in declared:
                    self.add(t, "name", "a bus or concentrator name used once",
                             f"{_q(ok_name)} again (first at {declared[ok_name]})", name=name)
                    continue
                declared[ok_name] = f"{self.file}:{self.lines.of(t)}"
                self.concentrator_names.add(ok_name)
            if a1 is not None and a2 is not None:
                first = addresses.get((a1, a2))
                if first is not None:
                    self.add(t, "a2", f"an address A1 {a1}, A2 {a2} used once",
                             f"again (first at {first})", name=name)
                    continue
                addresses[(a1, a2)] = f"{self.file}:{self.lines.of(t)}"
            if ok_name is None or a1 is None or a2 is None or listener is None \
                    or group is None:
                continue
            out.append(ConcentratorSettings(ok_name, a1, a2, listener, group))
        return out

    # -- [[bus]]

    def buses(self, value: object, *, required: bool = True
              ) -> tuple[list[BusSettings], dict[str, str]]:
        out: list[BusSettings] = []
        declared: dict[str, str] = {}
        items = self.array_of_tables("bus", value, "[[bus]] tables")
        if required and (value is None or (isinstance(value, list) and not value)):
            self.add("", "bus", "at least one [[bus]] table", "none")
        for i, item in enumerate(items):
            t = f"bus[{i}]"
            data = self.table(t, None, item, "a [[bus]] table")
            if data is None:
                continue
            raw_name = data.get("name")
            name = raw_name.strip() if isinstance(raw_name, str) else None
            bus = self.bus(t, data, name)
            if name and NAME_RE.match(name):
                if name in declared:
                    self.add(t, "name", "a bus name used once",
                             f"{_q(name)} again (first at {declared[name]})", name=name)
                    continue
                declared[name] = f"{self.file}:{self.lines.of(t)}"
            if bus is not None:
                out.append(bus)
        return out, declared

    def bus(self, t: str, data: dict[str, object], name: str | None) -> BusSettings | None:
        ok_name = self.req(t, data, BusTable, "name", name=name)
        kind = self.req(t, data, BusTable, "kind", name=name)
        # the model of this type of bus (the serial one's keys when the type is wrong)
        B = BUS_MODELS.get(kind, BusSerialTable) if isinstance(kind, str) else BusSerialTable
        td = self.opt(t, data, B, "td", name=name)
        tb = self.opt(t, data, B, "tb", name=name)
        preamble = self.opt(t, data, B, "preamble", name=name)
        modbus = self.opt(t, data, B, "modbus", name=name)
        own: tuple[str, ...]
        other: tuple[str, ...]
        if kind == "mqtt":
            self.unknown_keys(t, data, BUS_COMMON_KEYS + BUS_MQTT_KEYS, name=name)
            gateway = self.req(t, data, B, "gateway", name=name,
                               why=' (required for type = "mqtt")')
            if ok_name is None or td is None or tb is None or preamble is None \
                    or modbus is None or gateway is None:
                return None
            return BusSettings(kind="mqtt", name=ok_name, gateway=gateway, td=td, tb=tb,
                               preamble=preamble)
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
            host = self.req(t, data, B, "host", name=name, why=why)
            port = self.req(t, data, B, "port", name=name, why=why)
            line_baud = self.opt(t, data, B, "line_baud", name=name)
            if not common_ok or host is None or port is None or (
                    line_baud is None and "line_baud" in data):
                return None
            assert ok_name is not None and td is not None and tb is not None \
                and preamble is not None
            return BusSettings(kind="tcp", host=host, port=port, line_baud=line_baud,
                               name=ok_name, td=td, tb=tb, preamble=preamble,
                               modbus=cast(ModbusFraming, modbus))
        device = self.req(t, data, B, "device", name=name, why=why)
        baud = self.opt(t, data, B, "baud", name=name)
        parity = self.opt(t, data, B, "parity", name=name)
        bytesize = self.opt(t, data, B, "bytesize", name=name)
        stopbits = self.opt(t, data, B, "stopbits", name=name)
        if not common_ok or device is None or baud is None or parity is None \
                or bytesize is None or stopbits is None:
            return None
        assert ok_name is not None and td is not None and tb is not None \
            and preamble is not None
        return BusSettings(kind="serial", device=device, baud=baud, parity=parity,
                           bytesize=bytesize, stopbits=stopbits, name=ok_name, td=td, tb=tb,
                           preamble=preamble)

    # -- [schedule.NAME]

    def schedules(self, value: object, rows: list[Row]) -> list[ScheduleSettings]:
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
                self.add("schedule", name, "a [schedule.NAME] table", show_value(item),
                         hint=f"{name} = ... is not a schedule: keys go under "
                              "[schedule.NAME] tables")
                continue
            if not NAME_RE.match(name):
                self.add(t, None, "a schedule " + NAME_TEXT.removeprefix("a "), _q(name))
            s = self.schedule(t, name, cast(dict[str, object], item), rows)
            if s is not None:
                out.append(s)
        return out

    def schedule(self, t: str, name: str, data: dict[str, object],
                 rows: list[Row]) -> ScheduleSettings | None:
        self.unknown_keys(t, data, SCHEDULE_KEYS)
        S = ScheduleTable
        interval = self.req(t, data, S, "interval")
        jitter = self.opt(t, data, S, "jitter")
        retries = self.opt(t, data, S, "retries")
        td = self.opt(t, data, S, "td")
        backoff = self.opt(t, data, S, "backoff_max")
        if interval is not None and jitter is not None and jitter >= interval:
            self.add(t, "jitter", f"less than the interval ({to_seconds(interval)})",
                     f"{show_value(data['jitter'])} ({to_seconds(jitter)})")
            jitter = None
        quantities = self.quantities(t, data)
        selectors, selected = self.selectors(t, data, rows)
        if quantities and selected:
            self.readability(t, quantities, selected)
        curve, curve_days = self.curve(t, data, selected)
        if interval is None or jitter is None or retries is None or backoff is None \
                or quantities is None or selectors is None or ("td_ms" in data and td is None) \
                or curve is None or curve_days is None:
            return None
        return ScheduleSettings(name=name, interval=interval, quantities=tuple(quantities),
                                jitter=jitter, retries=retries, td=td,
                                meters=tuple(selectors), backoff_max=backoff,
                                curve=tuple(curve), curve_days=curve_days)

    def curve(self, t: str, data: Mapping[str, object], selected: list[MeterSettings] | None
              ) -> tuple[list[str] | None, int | None]:
        """``curve`` (load-curve quantities, groups expanded; every selected meter must
        keep a curve of each) and ``curve_days``."""
        days = self.opt(t, data, ScheduleTable, "curve_days")
        if "curve" not in data or data["curve"] == []:
            return [], days
        what = "a list of quantity names or groups (" + ", ".join(GROUPS) + ")"
        names = self.strings(t, data, "curve", what)
        if names is None:
            return None, days
        out: list[str] = []
        for n in names:
            key = n.lower()
            found = GROUPS.get(key) or ((key,) if key in QUANTITIES else None)
            if found is None:
                self.add(t, "curve", what, f"{_q(n)}, which is neither",
                         hint=_did_you_mean(key, [*GROUPS, *QUANTITIES]))
                return None, days
            out += [q for q in found if q not in out]
        for m in selected or ():
            kind = kind_of(m.protocol)
            profile = None
            if kind.needs_profile():
                from .profiles import load_profile

                try:
                    profile = load_profile(m.profile or "", search=[self.base])
                except Exception:
                    continue  # the meter's own row says what is wrong with its profile
            kept = kind.capabilities(MeterRef(m.meter_id, m.protocol, m.address,
                                              profile)).curve
            missing = [q for q in out if q not in kept]
            if missing:
                self.add(t, "curve", f"load-curve quantities the meter keeps (protocol "
                         f"{m.protocol}: {', '.join(sorted(kept)) or 'none'})",
                         ", ".join(missing), meter=m.meter_id,
                         hint="leave the meter out of this schedule or those quantities out")
                return None, days
        return out, days

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


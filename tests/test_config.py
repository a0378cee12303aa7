"""collector.config: loading, every problem a user can see, selectors, durations, paths."""

from __future__ import annotations

import dataclasses
import re
import subprocess
import tomllib
from pathlib import Path

import pytest
from click.testing import CliRunner

from collector.cli.config import EXIT_INVALID
from collector.cli.config import config as config_group
from collector.config import (
    ALARM_KEYS,
    BUS_COMMON_KEYS,
    BUS_SERIAL_KEYS,
    BUS_TCP_KEYS,
    COLLECTOR_KEYS,
    FIELD_OF_KEY,
    LEDGER_COLUMNS,
    SCHEDULE_KEYS,
    TABLE_KEYS,
    TOP_KEYS,
    ConfigError,
    Problem,
    load_settings,
    parse_duration,
    parse_selector,
    select_meters,
)
from collector.config.schema import TABLE_MODELS
from collector.config.settings import (
    MQTT_BUS_TD,
    AlarmConfig,
    BusSettings,
    CollectorSettings,
    CommandSettings,
    DailySettings,
    GatewaySettings,
    MeterSettings,
    MqttSettings,
    PrepaidSettings,
    ScheduleSettings,
    Settings,
    TimeseriesSettings,
    default,
    defaults,
)
from collector.forward.forwarder import DEFAULT_GZIP_LEVEL, DEFAULT_PROCESS_BACKLOG
from collector.polling.rules import RULES

ROOT = Path(__file__).resolve().parents[1]
EXAMPLE = ROOT / "config" / "amic.example.toml"

# Line numbers below refer to this text (1 [collector] ... 17 quantities).
BASE = """\
[collector]
id = "gw-1"
data_dir = "data"

[[bus]]
name = "line-1"
type = "serial"
device = "/dev/ttyS1"

[[meter]]
meter_id = "M1"
address = "1"
bus = "line-1"

[schedule.fast]
interval = "15m"
quantities = ["energy"]
"""

HEADER = "meter_id,address,bus,protocol,station,feeder,area,box,customer,prepaid,role\n"


@pytest.fixture(autouse=True)
def _in_tmp(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # Problems name the file as it was given: "amic.toml", "meters.csv".
    monkeypatch.chdir(tmp_path)


def load(text: str, ledger: str | None = None) -> Settings:
    Path("amic.toml").write_text(text, encoding="utf-8")
    if ledger is not None:
        Path("meters.csv").write_text(ledger, encoding="utf-8")
    return load_settings(Path("amic.toml"))


def problems(text: str, ledger: str | None = None) -> list[str]:
    with pytest.raises(ConfigError) as info:
        load(text, ledger)
    return [str(p) for p in info.value.problems]


def problem(text: str, ledger: str | None = None) -> str:
    found = problems(text, ledger)
    assert len(found) == 1, "\n".join(found)
    return found[0]


def edit(old: str, new: str, text: str = BASE) -> str:
    assert old in text, old
    return text.replace(old, new, 1)


WITH_LEDGER = edit('[[meter]]\nmeter_id = "M1"\naddress = "1"\nbus = "line-1"\n',
                   '[meters]\nledger = "meters.csv"\n')  # [meters] line 10, ledger line 11


# ---- valid configurations ------------------------------------------------------------------

def test_base_config_loads_with_defaults() -> None:
    s = load(BASE)
    assert s.source == Path("amic.toml").absolute()
    assert s.collector.id == "gw-1"
    assert s.collector.retention_days == 90 and s.collector.metrics_listen is None
    assert s.collector.commit_interval == 1.0 and s.collector.commit_rows == 2000
    (bus,) = s.buses
    assert (bus.kind, bus.device, bus.baud, bus.parity, bus.bytesize, bus.stopbits) == (
        "serial", "/dev/ttyS1", 2400, "E", 8, 1)
    assert (bus.td, bus.tb, bus.preamble) == (0.5, 0.5, 4)
    (m,) = s.meters
    assert m.address == "000000000001" and m.protocol == "dlt645-2007"
    assert m.role == "customer" and not m.prepaid
    (fast,) = s.schedules
    assert fast.interval == 900 and fast.meters == ("*",) and fast.retries == 1
    assert fast.quantities == ("energy_active_combined_total", "energy_active_forward_total",
                               "energy_active_reverse_total")
    assert fast.td is None and fast.jitter == 0 and fast.backoff_max == 3600


def test_every_key_is_read() -> None:
    text = """\
[collector]
id = "gw-2"
data_dir = "/var/lib/amic"
retention_days = 30
metrics_listen = "[::1]:9108"
commit_interval = "500ms"
commit_rows = 10

[[bus]]
name = "conc"
type = "tcp"
host = "192.168.1.20"
port = 8899
line_baud = 9600
td_ms = 1500
tb_ms = 200.5
preamble = 0

[[bus]]
name = "rs485"
type = "serial"
device = "/dev/ttyUSB0"
baud = 1200
parity = "none"
bytesize = 7
stopbits = 1.5

[[meter]]
meter_id = "M1"
address = 202611240001
bus = "conc"
protocol = "dlt645-1997"
station = "S1"
feeder = "F1"
area = "A1"
box = "B1"
customer = "0000000001"
prepaid = true
role = "area_master"

[schedule.s]
interval = 60
quantities = ["voltage_a", "voltage", "VOLTAGE_B"]
jitter = "1.5s"
retries = 0
td_ms = 800
meters = ["area:A1"]
backoff_max = "2h30m"
"""
    s = load(text)
    c = s.collector
    assert (c.data_dir, c.retention_days, c.metrics_listen, c.commit_interval,
            c.commit_rows) == (Path("/var/lib/amic"), 30, "[::1]:9108", 0.5, 10)
    conc, rs485 = s.buses
    assert (conc.kind, conc.host, conc.port, conc.line_baud) == ("tcp", "192.168.1.20", 8899,
                                                                 9600)
    assert (conc.td, conc.tb, conc.preamble) == (1.5, 0.2005, 0)
    assert (rs485.baud, rs485.parity, rs485.bytesize, rs485.stopbits) == (1200, "N", 7, 1.5)
    assert s.meters[0] == dataclasses.replace(
        s.meters[0], meter_id="M1", address="202611240001", bus="conc", protocol="dlt645-1997",
        station="S1", feeder="F1", area="A1", box="B1", customer="0000000001", prepaid=True,
        role="area_master")
    (sch,) = s.schedules
    assert sch == ScheduleSettings(name="s", interval=60.0,
                                   quantities=("voltage_a", "voltage_b", "voltage_c"),
                                   jitter=1.5, retries=0, td=0.8, meters=("area:A1",),
                                   backoff_max=9000.0)


def test_example_config_passes() -> None:
    s = load_settings(EXAMPLE)
    assert s.collector.data_dir == EXAMPLE.parent / "data"
    assert len(s.buses) == 2 and {b.kind for b in s.buses} == {"tcp", "serial"}
    serial = s.bus("rs485-1")
    assert (serial.baud, serial.bytesize, serial.parity, serial.stopbits) == (2400, 8, "E", 1)
    assert len(s.meters) == 12
    (modbus,) = [m for m in s.meters if m.protocol == "modbus"]  # the ledger's profile column
    assert (modbus.address, modbus.profile) == ("7", "acrel-ddsy1352")
    assert {m.area for m in s.meters if m.role == "area_master"} == {"TQ-0101", "TQ-0102"}
    names = {x.name: x for x in s.schedules}
    assert names["fast"].interval == 900 and names["daily"].interval == 86400
    assert {"balance_amount", "status_word_3", "freeze_daily_energy_active_forward_total"} <= \
        set(names["daily"].quantities)
    for q in ("energy_active_forward_total", "voltage_a", "current_a", "power_active_total"):
        assert q in names["fast"].quantities
    # every meter is read by some schedule
    read = {m.meter_id for sch in s.schedules for m in select_meters(s, sch)}
    assert read == {m.meter_id for m in s.meters}


def test_example_config_check_command() -> None:
    r = CliRunner().invoke(config_group, ["check", str(EXAMPLE)])
    assert r.exit_code == 0, r.output
    assert r.output == (f"{EXAMPLE}: OK: 2 buses, 12 meters (10 dlt645-2007, 1 modbus, "
                        "1 dlt645-1997), 5 schedules, 2 areas (2 with an area master)\n")


def test_example_config_shows_every_key() -> None:
    data = tomllib.loads(EXAMPLE.read_text())
    assert set(data["collector"]) == set(COLLECTOR_KEYS)
    bus_keys = {k for b in data["bus"] for k in b}
    assert bus_keys == set(BUS_COMMON_KEYS + BUS_TCP_KEYS + BUS_SERIAL_KEYS)
    assert {k for m in data["meter"] for k in m} == set(LEDGER_COLUMNS)
    assert set(data["meters"]) == {"ledger"}
    assert {k for s in data["schedule"].values() for k in s} == set(SCHEDULE_KEYS)
    text = EXAMPLE.read_text()
    for key in (*COLLECTOR_KEYS, *BUS_COMMON_KEYS, *BUS_TCP_KEYS, *BUS_SERIAL_KEYS,
                *SCHEDULE_KEYS):
        assert f"{key} =" in text or f"  {key} " in text, key


def _example_keys(text: str) -> dict[str, set[str]]:
    """Table -> keys shown in an example config: written, or commented out as ``# key = ...``
    under a table header (itself written or commented out).  ``[schedule.X]`` tables count
    as ``schedule.NAME``."""
    header = re.compile(r"^(?:#\s?)?\[\[?\s*([A-Za-z0-9_.]+)\s*\]\]?\s*(?:#.*)?$")
    key = re.compile(r"^(?:#\s?)?([A-Za-z0-9_]+)\s*=")
    shown: dict[str, set[str]] = {}
    table: str | None = None
    for line in text.splitlines():
        if m := header.match(line):
            table = m.group(1)
            table = "schedule.NAME" if table.startswith("schedule.") else table
            shown.setdefault(table, set())
        elif (m := key.match(line)) and table is not None:
            shown[table].add(m.group(1))
    return shown


def test_example_config_shows_every_key_of_the_schema_and_no_other() -> None:
    # The schema is the pydantic models (collector/config/settings.py): a field's alias, else its
    # name, is its TOML key.
    shown = _example_keys(EXAMPLE.read_text())
    declared = {t: {f.alias or n for m in models for n, f in m.model_fields.items()}
                for t, models in TABLE_MODELS.items()}
    assert set(declared) == set(TOP_KEYS) - {"schedule"} | {"schedule.NAME"}
    assert {t: set(k) for t, k in TABLE_KEYS.items()} == declared
    missing = {t: sorted(keys - shown.get(t, set())) for t, keys in declared.items()}
    extra = {t: sorted(keys - declared.get(t, set())) for t, keys in shown.items()}
    assert {t: k for t, k in missing.items() if k} == {}, "keys missing from the example"
    assert {t: k for t, k in extra.items() if k} == {}, "keys the schema lacks"


def test_example_key_scan_sees_commented_keys_and_strays() -> None:
    # The scan the test above relies on: it must see both a gap and a stray key.
    shown = _example_keys('[collector]\nid = "x"\n# [mqtt]\n# url = "mqtt://h"\n'
                          "#   [default] password = 1\n# bogus = 1\n[schedule.a]\nretries = 1\n")
    assert shown == {"collector": {"id"}, "mqtt": {"url", "bogus"},
                     "schedule.NAME": {"retries"}}


def test_a_key_left_out_takes_the_settings_field_default(
        monkeypatch: pytest.MonkeyPatch) -> None:
    # The defaults are stated once, on the settings classes: every table read with only
    # its required keys must come out equal to those field defaults.
    monkeypatch.delenv("AMIC_MQTT_PASSWORD", raising=False)
    monkeypatch.delenv("AMIC_TSDB_TOKEN", raising=False)
    s = load(BASE.replace('device = "/dev/ttyS1"\n', 'device = "/dev/ttyS1"\n\n[[bus]]\n'
                          'name = "tcp-1"\ntype = "tcp"\nhost = "10.0.0.1"\nport = 8899\n'
                          '\n[[bus]]\nname = "gw-line"\ntype = "mqtt"\ngateway = "gw-1"\n')
             + '\n[mqtt]\nurl = "mqtt://127.0.0.1:1883"\n[[gateway]]\nname = "gw-1"\n'
             '[timeseries]\nurl = "http://127.0.0.1:8428"\n[commands]\n'
             "[prepaid]\nwarn1 = 20\nwarn2 = 5\n[alarms]\n[daily]\n")
    assert s.mqtt and s.timeseries and s.commands and s.prepaid and s.daily
    serial, tcp, mqtt_bus = s.buses
    given = {"name", "kind", "device", "host", "port", "gateway", "td"}
    checked = [(s.collector, {"id", "data_dir"}), (serial, given), (tcp, given),
               (mqtt_bus, given), (s.meters[0], {"meter_id", "address", "bus"}),
               (s.schedules[0], {"name", "interval", "quantities", "meters"}), (s.mqtt, set()),
               (s.gateways[0], {"name"}), (s.timeseries, set()), (s.commands, set()),
               (s.prepaid, {"warn1", "warn2"}), (s.alarms, set()), (s.daily, set())]
    for obj, keys in checked:
        want = {k: v for k, v in defaults(type(obj)).items() if k not in keys}
        assert {k: getattr(obj, k) for k in want} == want, type(obj).__name__
    assert (serial.td, tcp.td, mqtt_bus.td) == (default(BusSettings, "td"),) * 2 + (MQTT_BUS_TD,)
    assert s.timeseries.gzip_level == DEFAULT_GZIP_LEVEL
    assert s.timeseries.worker_backlog == DEFAULT_PROCESS_BACKLOG


def test_every_settings_field_has_its_key_and_every_key_its_field() -> None:
    # Adding a field to a settings class (or a key to the schema) without the other fails.
    limits = set(ALARM_KEYS) - {"comm_loss_after", "publish"}  # kept in AlarmConfig.values
    tables = {CollectorSettings: "collector", BusSettings: "bus", MeterSettings: "meter",
              ScheduleSettings: "schedule.NAME", MqttSettings: "mqtt",
              GatewaySettings: "gateway", TimeseriesSettings: "timeseries",
              CommandSettings: "commands", PrepaidSettings: "prepaid", AlarmConfig: "alarms",
              DailySettings: "daily"}
    for cls, table in tables.items():
        fields = {f.name for f in dataclasses.fields(cls)} - {"values"} - (
            {"name"} if table == "schedule.NAME" else set())  # the table's own name
        keys = {FIELD_OF_KEY.get(k, k) for k in TABLE_KEYS[table] if k not in limits}
        assert fields == keys, table


def test_example_ledger_is_fictional_and_complete() -> None:
    lines = (ROOT / "config" / "ledger.example.csv").read_text().splitlines()
    assert any("fictional" in x for x in lines if x.startswith("#"))
    rows = [x for x in lines if x and not x.startswith("#")]
    assert rows[0] == ",".join(LEDGER_COLUMNS) and 9 <= len(rows) - 1 <= 12  # every column
    assert {row.split(",")[3] for row in rows[1:]} >= {"dlt645-2007", "dlt645-1997", "modbus"}


# ---- the file itself ----------------------------------------------------------------------

def test_missing_file() -> None:
    with pytest.raises(ConfigError) as info:
        load_settings(Path("nowhere.toml"))
    assert [str(p) for p in info.value.problems] == [
        "nowhere.toml: expected a readable TOML file, got No such file or directory"]


def test_toml_syntax_error_has_line_and_column() -> None:
    assert problem(edit('id = "gw-1"', 'id = gw-1')) == (
        "amic.toml:2:6: expected valid TOML, got a syntax error: Invalid value")


def test_toml_syntax_error_at_end_of_file() -> None:
    assert problem(BASE + "x = [1,\n") == (
        "amic.toml:18: expected valid TOML, got a syntax error: Invalid value at the end of "
        "the file")


def test_not_utf8() -> None:
    Path("amic.toml").write_bytes(BASE.replace('"gw-1"', '"gw-\xff"').encode("latin-1"))
    with pytest.raises(ConfigError) as info:
        load_settings(Path("amic.toml"))
    assert str(info.value) == (
        "amic.toml:2: expected UTF-8 text, got the byte 0xff; save the file as UTF-8")


def test_unknown_top_level_table() -> None:
    assert problem(BASE + '\n[buses]\nx = 1\n') == (
        'amic.toml:19: key "buses": expected one of the keys collector, bus, meter, meters, '
        'schedule, mqtt, gateway, timeseries, commands, prepaid, alarms, daily, listener, '
        'concentrator, dtu, security, api, notify, notify_webhook, notify_email, notify_sms, '
        'got an unknown key; did you mean "bus"?')


def test_single_bracket_bus_table() -> None:
    text = edit("[[bus]]", "[bus]")
    assert problems(text)[0] == (
        'amic.toml:5: key "bus": expected [[bus]] tables, got a table; write [[bus]], with '
        'double brackets, once for each bus')


# ---- [collector] ---------------------------------------------------------------------------

def test_collector_missing() -> None:
    text = BASE.replace('[collector]\nid = "gw-1"\ndata_dir = "data"\n', "")
    assert problem(text) == (
        "amic.toml: [collector]: expected a [collector] table with at least id and data_dir, "
        "got nothing")


def test_collector_required_key_missing() -> None:
    assert problem(edit('data_dir = "data"\n', "")) == (
        'amic.toml:1: [collector]: key "data_dir": expected a folder path, got nothing')


def test_collector_bad_id() -> None:
    assert problem(edit('id = "gw-1"', 'id = "gw 1"')) == (
        'amic.toml:2: [collector]: key "id": expected a name of letters, digits, "_", "." and '
        '"-" (at most 64), got "gw 1"')


def test_collector_unknown_key_did_you_mean() -> None:
    assert problem(edit('data_dir = "data"', 'data_dir = "data"\nretention = 30')) == (
        'amic.toml:4: [collector]: key "retention": expected one of the keys id, data_dir, '
        'retention_days, metrics_listen, commit_interval, commit_rows, max_store_mb, '
        'min_free_mb, got an unknown key; did you mean "retention_days"?')


@pytest.mark.parametrize(("line", "message"), [
    ("retention_days = 0", 'key "retention_days": expected an integer from 1 to 36500 days, '
                           'got 0'),
    ("retention_days = true", 'key "retention_days": expected an integer from 1 to 36500 '
                              'days, got true'),
    ('metrics_listen = "localhost"', 'key "metrics_listen": expected "HOST:PORT" (e.g. '
     '"127.0.0.1:9108", "0.0.0.0:9108", "[::1]:9108"), got "localhost"'),
    ('metrics_listen = "::1:9108"', 'key "metrics_listen": expected "HOST:PORT" (e.g. '
     '"127.0.0.1:9108", "0.0.0.0:9108", "[::1]:9108"), got "::1:9108"; write IPv6 addresses '
     'in brackets: "[::1]:9108"'),
    ("commit_interval = 0", 'key "commit_interval": expected a duration like "15m", "1h", '
     '"30s" or a number of seconds, greater than 0 s and at most 3600 s, got 0'),
    ("commit_rows = 2.5", 'key "commit_rows": expected an integer from 1 to 1000000, got 2.5'),
    ("max_store_mb = 1", 'key "max_store_mb": expected an integer from 16 to 16777216 MB, '
                         'got 1'),
    ("min_free_mb = -5", 'key "min_free_mb": expected an integer from 0 to 16777216 MB, '
                         'got -5'),
])
def test_collector_values(line: str, message: str) -> None:
    assert problem(edit('data_dir = "data"', f'data_dir = "data"\n{line}')) == (
        f"amic.toml:4: [collector]: {message}")


# ---- [[bus]] ------------------------------------------------------------------------------

def test_bad_baud_on_second_bus_message_as_documented() -> None:
    text = BASE.replace("[[meter]]", """\
[[bus]]
name = "rs485-a"
type = "serial"
device = "/dev/ttyS2"
baud = 2401

[[meter]]""")
    assert problem(text) == ('amic.toml:14: [[bus]] #2 (name "rs485-a"): key "baud": expected '
                             'one of 1200, 2400, 4800, 9600, 19200, got 2401')
    with pytest.raises(ConfigError) as info:
        load(text)
    (p,) = info.value.problems
    assert (p.file, p.line, p.table, p.key, p.name, p.meter) == (
        "amic.toml", 14, "bus[1]", "baud", "rs485-a", None)
    assert (p.expected, p.found) == ("one of 1200, 2400, 4800, 9600, 19200", "2401")


def _bus(lines: str) -> str:
    return BASE.replace('name = "line-1"\ntype = "serial"\ndevice = "/dev/ttyS1"\n', lines)


def test_bus_type_unknown() -> None:
    assert problem(_bus('name = "line-1"\ntype = "udp"\n')) == (
        'amic.toml:7: [[bus]] #1 (name "line-1"): key "type": expected one of "tcp", "serial", '
        '"mqtt", got "udp"')


def test_bus_type_missing() -> None:
    assert problem(_bus('name = "line-1"\ndevice = "/dev/ttyS1"\n')) == (
        'amic.toml:5: [[bus]] #1 (name "line-1"): key "type": expected one of "tcp", "serial", '
        '"mqtt", got nothing')


def test_tcp_bus_needs_host_and_port() -> None:
    assert problems(_bus('name = "line-1"\ntype = "tcp"\n')) == [
        'amic.toml:5: [[bus]] #1 (name "line-1"): key "host": expected a host name or IP '
        'address (required for type = "tcp"), got nothing',
        'amic.toml:5: [[bus]] #1 (name "line-1"): key "port": expected an integer from 1 to '
        '65535 (required for type = "tcp"), got nothing']


def test_tcp_bus_host_with_port_and_port_range() -> None:
    assert problems(_bus('name = "line-1"\ntype = "tcp"\nhost = "10.0.0.1:8899"\n'
                         'port = 70000\n')) == [
        'amic.toml:8: [[bus]] #1 (name "line-1"): key "host": expected a host name or IP '
        'address, got "10.0.0.1:8899"; put the port in port = ..., not in host',
        'amic.toml:9: [[bus]] #1 (name "line-1"): key "port": expected an integer from 1 to '
        '65535, got 70000']


def test_all_bus_problems_reported_together() -> None:
    at = '[[bus]] #1 (name "line 1")'
    assert problems(_bus('name = "line 1"\ntype = "tcp"\ntd_ms = -1\n')) == [
        f'amic.toml:5: {at}: key "host": expected a host name or IP address (required for '
        'type = "tcp"), got nothing',
        f'amic.toml:5: {at}: key "port": expected an integer from 1 to 65535 (required for '
        'type = "tcp"), got nothing',
        f'amic.toml:6: {at}: key "name": expected a name of letters, digits, "_", "." and "-" '
        '(at most 64), got "line 1"',
        f'amic.toml:8: {at}: key "td_ms": expected milliseconds from 1 to 60000, got -1',
        'amic.toml:13: [[meter]] #1 (meter_id "M1"): key "bus": expected the name of a [[bus]] '
        '(none is configured), got "line-1"']


def test_serial_key_on_tcp_bus() -> None:
    assert problems(_bus('name = "line-1"\ntype = "tcp"\nhost = "h"\nport = 1\nbaud = 2400\n'
                         'device = "/dev/ttyS0"\n')) == [
        'amic.toml:10: [[bus]] #1 (name "line-1"): key "baud": expected one of the keys name, '
        'type, td_ms, tb_ms, preamble, modbus, host, port, line_baud, got an unknown key; the '
        'RS-485 line behind a serial server is line_baud; set its framing on the server',
        'amic.toml:11: [[bus]] #1 (name "line-1"): key "device": expected one of the keys name, '
        'type, td_ms, tb_ms, preamble, modbus, host, port, line_baud, got an unknown key; device '
        'is for type = "serial" buses']


def test_serial_bus_needs_device() -> None:
    assert problem(_bus('name = "line-1"\ntype = "serial"\n')) == (
        'amic.toml:5: [[bus]] #1 (name "line-1"): key "device": expected a serial device path '
        '(required for type = "serial"), got nothing')


@pytest.mark.parametrize(("line", "message"), [
    ('parity = "X"', 'key "parity": expected one of "N", "E", "O", "M", "S" (or "none", '
                     '"even", "odd", ...), got "X"'),
    ("bytesize = 9", 'key "bytesize": expected one of 5, 6, 7, 8, got 9'),
    ("stopbits = 3", 'key "stopbits": expected one of 1, 1.5, 2, got 3'),
    ("preamble = 5", 'key "preamble": expected an integer from 0 to 4 FE bytes, got 5'),
    ("td_ms = 0", 'key "td_ms": expected milliseconds from 1 to 60000, got 0'),
    ('tb_ms = "50ms"', 'key "tb_ms": expected milliseconds from 1 to 10000, got "50ms"'),
    ("stoppbits = 1", 'key "stoppbits": expected one of the keys name, type, td_ms, tb_ms, '
     'preamble, modbus, device, baud, parity, bytesize, stopbits, got an unknown key; did you mean '
     '"stopbits"?'),
])
def test_serial_bus_values(line: str, message: str) -> None:
    text = edit('device = "/dev/ttyS1"', f'device = "/dev/ttyS1"\n{line}')
    assert problem(text) == f'amic.toml:9: [[bus]] #1 (name "line-1"): {message}'


def test_duplicate_bus_name() -> None:
    text = BASE.replace("[[meter]]", '[[bus]]\nname = "line-1"\ntype = "serial"\n'
                                     'device = "/dev/ttyS2"\n\n[[meter]]')
    assert problem(text) == (
        'amic.toml:11: [[bus]] #2 (name "line-1"): key "name": expected a bus name used once, '
        'got "line-1" again (first at amic.toml:5)')


def test_no_bus() -> None:
    text = BASE.replace('[[bus]]\nname = "line-1"\ntype = "serial"\ndevice = "/dev/ttyS1"\n',
                        "")
    assert problems(text) == [
        'amic.toml: key "bus": expected at least one [[bus]] table, got none',
        'amic.toml:9: [[meter]] #1 (meter_id "M1"): key "bus": expected the name of a [[bus]] '
        '(none is configured), got "line-1"']


# ---- [[meter]] and the ledger ------------------------------------------------------------

@pytest.mark.parametrize(("old", "new", "message"), [
    ('address = "1"', 'address = "12345678901234"',
     'amic.toml:12: [[meter]] #1 (meter_id "M1"): key "address": expected a meter address of '
     '1-12 decimal digits (left-padded to 12 with zeros), got "12345678901234"'),
    ('address = "1"', 'address = "12-34"',
     'amic.toml:12: [[meter]] #1 (meter_id "M1"): key "address": expected a meter address of '
     '1-12 decimal digits (left-padded to 12 with zeros), got "12-34"'),
    ('address = "1"', 'address = "AAAAAAAAAAAA"',
     'amic.toml:12: [[meter]] #1 (meter_id "M1"): key "address": expected a meter address of '
     '1-12 decimal digits (left-padded to 12 with zeros), got "AAAAAAAAAAAA"; wildcards (A) are '
     'for finding meters, not for configured ones'),
    ('address = "1"', 'address = "999999999999"',
     'amic.toml:12: [[meter]] #1 (meter_id "M1"): key "address": expected a meter address of '
     '1-12 decimal digits (left-padded to 12 with zeros), got "999999999999"; 999999999999 is '
     'the broadcast address'),
    ('bus = "line-1"', 'bus = "line-2"',
     'amic.toml:13: [[meter]] #1 (meter_id "M1"): key "bus": expected the name of a [[bus]] '
     '("line-1"), got "line-2"; did you mean "line-1"?'),
    ('bus = "line-1"', 'bus = "line-1"\nprotocol = "dlt645-2009"',
     'amic.toml:14: [[meter]] #1 (meter_id "M1"): key "protocol": expected one of '
     '"dlt645-2007", "dlt645-1997", "modbus", got "dlt645-2009"; did you mean "dlt645-2007"?'),
    ('bus = "line-1"', 'bus = "line-1"\nrole = "master"',
     'amic.toml:14: [[meter]] #1 (meter_id "M1"): key "role": expected one of "customer", '
     '"area_master", got "master"; did you mean "area_master"?'),
    ('bus = "line-1"', 'bus = "line-1"\nprepaid = "yes"',
     'amic.toml:14: [[meter]] #1 (meter_id "M1"): key "prepaid": expected true or false, '
     'got "yes"'),
    ('bus = "line-1"', 'bus = "line-1"\nrole = "area_master"',
     'amic.toml:14: [[meter]] #1 (meter_id "M1"): key "area": expected an area for a meter '
     'with role "area_master", got nothing'),
    ('bus = "line-1"', 'bus = "line-1"\ncustomr = "1"',
     'amic.toml:14: [[meter]] #1 (meter_id "M1"): key "customr": expected one of the keys '
     'meter_id, address, bus, protocol, station, feeder, area, box, customer, phone, prepaid, '
     'role, profile, pn, port, baud, got an unknown key; did you mean "customer"?'),
    ('meter_id = "M1"', 'meter_id = "M 1"',
     'amic.toml:11: [[meter]] #1 (meter_id "M 1"): key "meter_id": expected a name of '
     'letters, digits, "_", "." and "-" (at most 64), got "M 1"'),
    ('meter_id = "M1"\n', '',
     'amic.toml:10: [[meter]] #1: key "meter_id": expected a name of letters, digits, "_", "." '
     'and "-" (at most 64), got nothing'),
])
def test_inline_meter_values(old: str, new: str, message: str) -> None:
    assert problem(edit(old, new)) == message


def test_customer_number_is_not_echoed() -> None:
    assert problem(edit('bus = "line-1"', 'bus = "line-1"\ncustomer = 9900000101')) == (
        'amic.toml:14: [[meter]] #1 (meter_id "M1"): key "customer": expected a string, got a '
        'number (not shown); quote it: customer = "..."')


def test_bus_entry_not_a_table() -> None:
    text = 'bus = ["line-1"]\n' + BASE.replace(
        '[[bus]]\nname = "line-1"\ntype = "serial"\ndevice = "/dev/ttyS1"\n', "")
    assert problems(text)[0] == (
        'amic.toml:1: [[bus]] #1: expected a [[bus]] table, got "line-1"')


def test_collector_not_a_table() -> None:
    text = BASE.replace('[collector]\nid = "gw-1"\ndata_dir = "data"\n', 'collector = "gw"\n')
    assert problem(text) == (
        'amic.toml:1: key "collector": expected a [collector] table, got "gw"')


def test_bad_schedule_name() -> None:
    text = BASE.replace("[schedule.fast]", '[schedule."fast lane"]')
    assert problem(text) == (
        'amic.toml:15: [schedule.fast lane]: expected a schedule name of letters, digits, '
        '"_", "." and "-" (at most 64), got "fast lane"')


def test_short_and_integer_addresses_are_normalised() -> None:
    s = load(edit('address = "1"', "address = 20261124"))
    assert s.meters[0].address == "000020261124"


def test_duplicate_meter_id_across_toml_and_ledger() -> None:
    text = BASE.replace("[schedule.fast]", '[meters]\nledger = "meters.csv"\n\n[schedule.fast]')
    ledger = HEADER + "M2,2,line-1,,,,,,,,\nM1,3,line-1,,,,,,,,\n"
    assert problem(text, ledger) == (
        'meters.csv:3: row 2 (meter_id "M1"): column "meter_id": expected a meter id used '
        'once, got "M1" again (first at amic.toml:10)')


def test_duplicate_address_on_a_bus() -> None:
    ledger = HEADER + "M1,1,line-1,,,,,,,,\nM2,000000000001,line-1,,,,,,,,\n"
    assert problem(WITH_LEDGER, ledger) == (
        'meters.csv:3: row 2 (meter_id "M2"): column "address": expected an address used once '
        'on bus "line-1", got 000000000001 again (meter "M1" at meters.csv:2)')


def test_same_address_on_two_buses_is_fine() -> None:
    text = WITH_LEDGER.replace("[meters]", '[[bus]]\nname = "line-2"\ntype = "serial"\n'
                                           'device = "/dev/ttyS2"\n\n[meters]')
    s = load(text, HEADER + "M1,1,line-1,,,,,,,,\nM2,1,line-2,,,,,,,,\n")
    assert [m.bus for m in s.meters] == ["line-1", "line-2"]


def test_two_area_masters_in_one_area() -> None:
    ledger = HEADER + ("T1,1,line-1,,,,A1,,,,area_master\n"
                       "T2,2,line-1,,,,A2,,,,area_master\n"
                       "T3,3,line-1,,,,A1,,,,area_master\n")
    assert problem(WITH_LEDGER, ledger) == (
        'meters.csv:4: row 3 (meter_id "T3"): column "role": expected at most one area_master '
        'in area "A1", got a second one (the first is meter "T1" at meters.csv:2)')


def test_no_meters() -> None:
    text = BASE.replace('[[meter]]\nmeter_id = "M1"\naddress = "1"\nbus = "line-1"\n', "")
    assert problems(text) == [
        "amic.toml: expected at least one meter ([[meter]] tables or a [meters] ledger), "
        "got none"]


def test_ledger_missing_file() -> None:
    assert problems(WITH_LEDGER)[0] == (
        'amic.toml:11: [meters]: key "ledger": expected a readable CSV file, got "meters.csv" '
        '(meters.csv: No such file or directory)')


def test_meters_table_unknown_key() -> None:
    text = WITH_LEDGER.replace('ledger = "meters.csv"', 'ledger = "meters.csv"\nledgers = 1')
    assert problem(text, HEADER + "M1,1,line-1,,,,,,,,\n") == (
        'amic.toml:12: [meters]: key "ledgers": expected one of the keys ledger, got an '
        'unknown key; did you mean "ledger"?')


def test_ledger_comments_blank_lines_bom_and_line_numbers() -> None:
    ledger = ("\ufeff# exported 2024-05-01\n\n" + HEADER + "# area A1\n"
              "M1, 1 ,line-1,dlt645-1997,S,F,A1,B,C1,YES,area_master\n\n"
              "M2,2,line-1,,,,A1,,,0,\n"
              '"M3","3","line-1","","","","A2","","","no","customer"\n'
              "M4,x,line-1,,,,,,,,\n")
    text = WITH_LEDGER.replace('["energy"]', '["voltage"]')
    assert problem(text, ledger) == (
        'meters.csv:9: row 4 (meter_id "M4"): column "address": expected a meter address of '
        '1-12 decimal digits (left-padded to 12 with zeros), got "x"')
    s = load(text, ledger.replace("M4,x,", "M4,4,"))
    m1, m2, m3, _ = s.meters
    assert (m1.address, m1.protocol, m1.prepaid, m1.role, m1.customer) == (
        "000000000001", "dlt645-1997", True, "area_master", "C1")
    assert (m2.protocol, m2.prepaid, m2.role) == ("dlt645-2007", False, "customer")
    assert m3.area == "A2"


def test_ledger_columns_in_any_order_and_optional_ones_left_out() -> None:
    s = load(WITH_LEDGER, "bus,address,meter_id\nline-1,7,M7\n")
    assert (s.meters[0].meter_id, s.meters[0].address) == ("M7", "000000000007")


def test_ledger_unknown_and_missing_columns() -> None:
    assert problems(WITH_LEDGER, "meter_id,adress,bus\nM1,1,line-1\n") == [
        'meters.csv:1: header: column "adress": expected one of the columns meter_id, address, '
        'bus, protocol, station, feeder, area, box, customer, phone, prepaid, role, profile, pn, '
        'port, baud, got an '
        'unknown column; did you mean "address"?',
        'meters.csv:1: header: column "address": expected a header naming the columns '
        'meter_id, address, bus at least, got no address column']


def test_ledger_wrong_number_of_cells() -> None:
    assert problem(WITH_LEDGER, HEADER + "M1,1,line-1,,,,,,,,\nM2,2,line-1\n") == (
        "meters.csv:3: row 2: expected 11 cells (one for each header column), got 3")


def test_ledger_empty_required_cell_and_bad_prepaid() -> None:
    assert problems(WITH_LEDGER, HEADER + "M1,,line-1,,,,,,,maybe,\n") == [
        'meters.csv:2: row 1 (meter_id "M1"): column "address": expected a meter address of '
        '1-12 decimal digits (left-padded to 12 with zeros), got an empty cell',
        'meters.csv:2: row 1 (meter_id "M1"): column "prepaid": expected true, false, yes, '
        'no, 1 or 0, got "maybe"']


def test_ledger_bus_reference() -> None:
    assert problem(WITH_LEDGER, HEADER + "M1,1,line1,,,,,,,,\n") == (
        'meters.csv:2: row 1 (meter_id "M1"): column "bus": expected the name of a [[bus]] '
        '("line-1"), got "line1"; did you mean "line-1"?')


def test_ledger_excel_scientific_address() -> None:
    assert problem(WITH_LEDGER, HEADER + "M1,2.02301E+11,line-1,,,,,,,,\n") == (
        'meters.csv:2: row 1 (meter_id "M1"): column "address": expected a meter address of '
        '1-12 decimal digits (left-padded to 12 with zeros), got "2.02301E+11"')


def test_ledger_empty_and_not_utf8() -> None:
    assert problems(WITH_LEDGER, "# nothing yet\n")[0] == (
        "meters.csv: header: expected a header line: meter_id, address, bus, protocol, "
        "station, feeder, area, box, customer, phone, prepaid, role, profile, got an empty file")
    Path("meters.csv").write_bytes((HEADER + "M1,1,line-1,,,,台区,,,,\n").encode("gbk"))
    Path("amic.toml").write_text(WITH_LEDGER)
    with pytest.raises(ConfigError) as info:
        load_settings(Path("amic.toml"))
    assert str(info.value.problems[0]) == (
        'meters.csv:2: expected UTF-8 text, got the byte 0xc7; save the ledger as '
        '"CSV UTF-8"')


# ---- [schedule.NAME] ---------------------------------------------------------------------

def _schedule(lines: str) -> str:
    return BASE.replace('interval = "15m"\nquantities = ["energy"]\n', lines)


@pytest.mark.parametrize(("lines", "message"), [
    ('quantities = ["energy"]\n',
     'amic.toml:15: [schedule.fast]: key "interval": expected a duration like "15m", "1h", '
     '"30s" or a number of seconds, at least 1 s, got nothing'),
    ('interval = "15"\nquantities = ["energy"]\n',
     'amic.toml:16: [schedule.fast]: key "interval": expected a duration like "15m", "1h", '
     '"30s" or a number of seconds, at least 1 s, got "15"; add a unit: "15s", "15m", ...'),
    ('interval = "15M"\nquantities = ["energy"]\n',
     'amic.toml:16: [schedule.fast]: key "interval": expected a duration like "15m", "1h", '
     '"30s" or a number of seconds, at least 1 s, got "15M"; units are lower case: "15m"'),
    ('interval = "500ms"\nquantities = ["energy"]\n',
     'amic.toml:16: [schedule.fast]: key "interval": expected a duration like "15m", "1h", '
     '"30s" or a number of seconds, at least 1 s, got "500ms" (0.5 s)'),
    ('interval = -5\nquantities = ["energy"]\n',
     'amic.toml:16: [schedule.fast]: key "interval": expected a duration like "15m", "1h", '
     '"30s" or a number of seconds, at least 1 s, got -5'),
    ('interval = "1m"\njitter = "1m"\nquantities = ["energy"]\n',
     'amic.toml:17: [schedule.fast]: key "jitter": expected less than the interval (60 s), '
     'got "1m" (60 s)'),
    ('interval = "1m"\nretries = 11\nquantities = ["energy"]\n',
     'amic.toml:17: [schedule.fast]: key "retries": expected an integer from 0 to 10, got 11'),
    ('interval = "1m"\ntd_ms = 0\nquantities = ["energy"]\n',
     'amic.toml:17: [schedule.fast]: key "td_ms": expected milliseconds from 1 to 60000, '
     'got 0'),
    ('interval = "1m"\nbackoff_max = "0s"\nquantities = ["energy"]\n',
     'amic.toml:17: [schedule.fast]: key "backoff_max": expected a duration like "15m", "1h", '
     '"30s" or a number of seconds, at least 1 s, got "0s" (0 s)'),
    ('interval = "1m"\n',
     'amic.toml:15: [schedule.fast]: key "quantities": expected a non-empty list of quantity '
     'names or groups (energy, voltage, current, power, pf, frequency, balance, status, '
     'datetime, address), got nothing'),
    ('interval = "1m"\nquantities = []\n',
     'amic.toml:17: [schedule.fast]: key "quantities": expected a non-empty list of quantity '
     'names or groups (energy, voltage, current, power, pf, frequency, balance, status, '
     'datetime, address), got []'),
    ('interval = "1m"\nquantities = "energy"\n',
     'amic.toml:17: [schedule.fast]: key "quantities": expected a non-empty list of quantity '
     'names or groups (energy, voltage, current, power, pf, frequency, balance, status, '
     'datetime, address), got "energy"'),
    ('interval = "1m"\nquantities = ["energy", "voltag"]\n',
     'amic.toml:17: [schedule.fast]: key "quantities": expected quantity names '
     '(protocols/quantities.py) or groups (energy, voltage, current, power, pf, frequency, '
     'balance, status, datetime, address), got "voltag", which is neither; did you mean '
     '"voltage"?'),
    ('interval = "1m"\nquantities = ["energy"]\nretry = 2\n',
     'amic.toml:18: [schedule.fast]: key "retry": expected one of the keys interval, '
     'quantities, meters, jitter, retries, td_ms, backoff_max, curve, curve_days, got an '
     'unknown key; did you mean "retries"?'),
    ('interval = "1m"\nquantities = ["energy"]\nmeters = []\n',
     'amic.toml:18: [schedule.fast]: key "meters": expected a non-empty list of meter '
     'selectors: "*", "area:ID", "bus:NAME", "feeder:ID", "station:ID", "box:ID", '
     '"role:ROLE", "protocol:PROTOCOL" or meter ids, got []'),
])
def test_schedule_values(lines: str, message: str) -> None:
    assert problem(_schedule(lines)) == message


def test_unreadable_quantity_names_the_1997_meter() -> None:
    text = edit('bus = "line-1"', 'bus = "line-1"\nprotocol = "dlt645-1997"')
    text = text.replace('["energy"]', '["energy_active_forward_total", "balance", "status"]')
    with pytest.raises(ConfigError) as info:
        load(text)
    (p,) = info.value.problems
    assert str(p) == (
        'amic.toml:18: [schedule.fast]: key "quantities": meter "M1": expected quantities '
        'readable over DL/T645-1997 (meter protocol dlt645-1997), got balance_amount, '
        'overdraft_amount, status_word_1, status_word_3; leave the meter out of this '
        'schedule (e.g. meters = ["protocol:dlt645-2007"]) or those quantities out')
    assert (p.meter, p.table, p.key) == ("M1", "schedule.fast", "quantities")


def test_daily_freeze_energy_is_readable_over_2007() -> None:
    s = load(BASE.replace('["energy"]', '["freeze_daily_energy_active_forward_t2", '
                                        '"freeze_daily_time"]'))
    assert s.schedules[0].quantities == ("freeze_daily_energy_active_forward_t2",
                                         "freeze_daily_time")


def test_no_schedule() -> None:
    text = BASE.replace('[schedule.fast]\ninterval = "15m"\nquantities = ["energy"]\n', "")
    assert problem(text) == "amic.toml: expected at least one [schedule.NAME] table, got none"


def test_schedule_as_array_of_tables() -> None:
    text = BASE.replace("[schedule.fast]", "[[schedule]]")
    assert problem(text) == (
        'amic.toml:15: key "schedule": expected [schedule.NAME] tables, got an array of '
        'tables; write [schedule.fast], [schedule.daily], ... (one name each)')


def test_schedule_key_outside_a_named_table() -> None:
    text = BASE.replace("[schedule.fast]", '[schedule]\ninterval = "1m"\n\n[schedule.fast]')
    assert problem(text) == (
        'amic.toml:16: [schedule]: key "interval": expected a [schedule.NAME] table, got "1m"; '
        'interval = ... is not a schedule: keys go under [schedule.NAME] tables')


# ---- selectors ----------------------------------------------------------------------------

SELECT = """\
[collector]
id = "gw-1"
data_dir = "data"

[[bus]]
name = "b2"
type = "serial"
device = "/dev/ttyS2"

[[bus]]
name = "b1"
type = "tcp"
host = "10.0.0.5"
port = 8899

[meters]
ledger = "meters.csv"

[schedule.s]
interval = "15m"
quantities = ["voltage"]
meters = ["*"]
"""

SELECT_LEDGER = HEADER + """\
c3,3,b1,,S1,F1,A1,,,,
c1,1,b1,,S1,F1,A1,,,,
m2,9,b2,,S1,F2,A2,,,,area_master
c5,5,b2,dlt645-1997,S1,F2,A2,,,,
c4,4,b1,,S1,F1,A1,BX1,,,area_master
"""


def _select(*selectors: str) -> list[str]:
    s = load(SELECT.replace('meters = ["*"]', f"meters = {list(selectors)!r}".replace(
        "'", '"')), SELECT_LEDGER)
    return [m.meter_id for m in select_meters(s, s.schedules[0])]


@pytest.mark.parametrize(("selectors", "ids"), [
    (("*",), ["c5", "m2", "c1", "c3", "c4"]),  # by bus in configured order, then address
    (("area:A1",), ["c1", "c3", "c4"]),
    (("bus:b2",), ["c5", "m2"]),
    (("role:area_master",), ["m2", "c4"]),
    (("feeder:F2",), ["c5", "m2"]),
    (("station:S1",), ["c5", "m2", "c1", "c3", "c4"]),
    (("box:BX1",), ["c4"]),
    (("protocol:dlt645-1997",), ["c5"]),
    (("c3", "c1"), ["c1", "c3"]),
    (("area:A1", "role:area_master", "c4"), ["m2", "c1", "c3", "c4"]),  # a union, once each
])
def test_selectors(selectors: tuple[str, ...], ids: list[str]) -> None:
    assert _select(*selectors) == ids


def test_select_meters_without_selectors_means_all() -> None:
    s = load(SELECT, SELECT_LEDGER)
    everything = dataclasses.replace(s.schedules[0], meters=())
    assert [m.meter_id for m in select_meters(s, everything)] == ["c5", "m2", "c1", "c3", "c4"]


def test_selector_matching_nothing() -> None:
    text = SELECT.replace('meters = ["*"]', 'meters = ["area:A3", "bus:b3", "c9", '
                                            '"role:customer", "aera:A1"]')
    assert problems(text, SELECT_LEDGER) == [
        'amic.toml:22: [schedule.s]: key "meters": expected selectors that match at least one '
        'meter, got "area:A3", which matches none; area values in use: A1, A2',
        'amic.toml:22: [schedule.s]: key "meters": expected selectors that match at least one '
        'meter, got "bus:b3", which matches none; bus values in use: b1, b2',
        'amic.toml:22: [schedule.s]: key "meters": expected selectors that match at least one '
        'meter, got "c9", which matches none',
        'amic.toml:22: [schedule.s]: key "meters": expected a meter selector: "*", '
        '"area:ID", "bus:NAME", "feeder:ID", "station:ID", "box:ID", "role:ROLE", '
        '"protocol:PROTOCOL" or a meter id, got "aera:A1"; did you mean "area:A1"?']


def test_selector_hint_lists_values_in_use() -> None:
    text = SELECT.replace('meters = ["*"]', 'meters = ["feeder:X"]')
    assert problem(text, SELECT_LEDGER) == (
        'amic.toml:22: [schedule.s]: key "meters": expected selectors that match at least one '
        'meter, got "feeder:X", which matches none; feeder values in use: F1, F2')


def test_parse_selector() -> None:
    assert parse_selector(" * ") == ("*", "")
    assert parse_selector("AREA: A1 ") == ("area", "A1")
    assert parse_selector("M-1") == ("id", "M-1")
    for bad in ("zone:1", "area:", ""):
        with pytest.raises(ValueError):
            parse_selector(bad)


# ---- durations and paths ------------------------------------------------------------------

@pytest.mark.parametrize(("value", "seconds"), [
    ("30s", 30), ("15m", 900), ("1h", 3600), ("1d", 86400), ("1h30m", 5400),
    ("500ms", 0.5), ("1.5h", 5400), (" 2 m ", 120), (900, 900), (2.5, 2.5), (0, 0),
])
def test_parse_duration(value: object, seconds: float) -> None:
    assert parse_duration(value) == seconds


@pytest.mark.parametrize("value", ["15", "15M", "m", "", "-5s", "1w", True, -1,
                                   float("inf"), float("nan"), [1]])
def test_parse_duration_rejects(value: object) -> None:
    with pytest.raises(ValueError):
        parse_duration(value)


def test_relative_paths_are_relative_to_the_config_folder(tmp_path: Path,
                                                           monkeypatch: pytest.MonkeyPatch
                                                           ) -> None:
    site = tmp_path / "etc" / "amic"
    site.mkdir(parents=True)
    (site / "amic.toml").write_text(WITH_LEDGER.replace('"data"', '"../../var/amic"'))
    (site / "meters.csv").write_text(HEADER + "M1,1,line-1,,,,,,,,\n")
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    s = load_settings(Path("../etc/amic/amic.toml"))
    assert s.collector.data_dir.resolve() == (tmp_path / "var" / "amic").resolve()
    assert s.source.resolve() == (site / "amic.toml").resolve()
    assert [m.meter_id for m in s.meters] == ["M1"]
    # and the ledger's problems name it relative to where the user is
    (site / "meters.csv").write_text(HEADER + "M1,x,line-1,,,,,,,,\n")
    with pytest.raises(ConfigError) as info:
        load_settings(Path("../etc/amic/amic.toml"))
    assert str(info.value).startswith("../etc/amic/meters.csv:2: ")


def test_absolute_data_dir_kept() -> None:
    s = load(BASE.replace('"data"', '"/srv/amic"'))
    assert s.collector.data_dir == Path("/srv/amic")


# ---- many problems at once, and the command --------------------------------------------------

BROKEN = """\
[collector]
id = "gw-1"
data_dir = "data"
commit_rows = 0

[[bus]]
name = "line-1"
type = "serial"
device = "/dev/ttyS1"
baud = 2401

[meters]
ledger = "meters.csv"

[schedule.fast]
interval = "15m"
quantities = ["energy", "pwer"]
meters = ["area:A9"]
"""


def test_every_problem_is_reported_in_file_order() -> None:
    ledger = HEADER + "M1,1,line-1,,,,A1,,,,\nM1,2,line-9,,,,A1,,,,\n"
    assert problems(BROKEN, ledger) == [
        'amic.toml:4: [collector]: key "commit_rows": expected an integer from 1 to 1000000, '
        'got 0',
        'amic.toml:10: [[bus]] #1 (name "line-1"): key "baud": expected one of 1200, 2400, 4800, '
        '9600, 19200, got 2401',
        'amic.toml:17: [schedule.fast]: key "quantities": expected quantity names '
        '(protocols/quantities.py) or groups (energy, voltage, current, power, pf, frequency, '
        'balance, status, datetime, address), got "pwer", which is neither; did you mean '
        '"power"?',
        'amic.toml:18: [schedule.fast]: key "meters": expected selectors that match at least '
        'one meter, got "area:A9", which matches none; area values in use: A1',
        'meters.csv:3: row 2 (meter_id "M1"): column "bus": expected the name of a [[bus]] '
        '("line-1"), got "line-9"; did you mean "line-1"?',
        'meters.csv:3: row 2 (meter_id "M1"): column "meter_id": expected a meter id used once, '
        'got "M1" again (first at meters.csv:2)',
    ]


def test_config_error_is_every_problem_one_a_line() -> None:
    with pytest.raises(ConfigError) as info:
        load(BROKEN, HEADER + "M1,1,line-1,,,,A1,,,,\n")
    assert str(info.value).splitlines() == [str(p) for p in info.value.problems]
    assert all(isinstance(p, Problem) for p in info.value.problems)


def test_check_command_reports_problems_and_exits_78() -> None:
    Path("amic.toml").write_text(BROKEN)
    Path("meters.csv").write_text(HEADER + "M1,1,line-1,,,,A1,,,,\n")
    r = CliRunner().invoke(config_group, ["check", "amic.toml"])
    assert r.exit_code == 78
    assert "Traceback" not in r.output
    assert r.exception is None or isinstance(r.exception, SystemExit)
    assert r.stdout.splitlines() == [
        'amic.toml:4: [collector]: key "commit_rows": expected an integer from 1 to 1000000, '
        'got 0',
        'amic.toml:10: [[bus]] #1 (name "line-1"): key "baud": expected one of 1200, 2400, 4800, '
        '9600, 19200, got 2401',
        'amic.toml:17: [schedule.fast]: key "quantities": expected quantity names '
        '(protocols/quantities.py) or groups (energy, voltage, current, power, pf, frequency, '
        'balance, status, datetime, address), got "pwer", which is neither; did you mean '
        '"power"?',
        'amic.toml:18: [schedule.fast]: key "meters": expected selectors that match at least '
        'one meter, got "area:A9", which matches none; area values in use: A1']
    assert r.stderr == "amic.toml: 4 problems; not valid\n"


def test_check_command_missing_file() -> None:
    r = CliRunner().invoke(config_group, ["check", "nope.toml"])
    assert r.exit_code == 78
    assert r.stdout == "nope.toml: expected a readable TOML file, got No such file or directory\n"


def test_check_command_verbose() -> None:
    Path("amic.toml").write_text(BASE)
    r = CliRunner().invoke(config_group, ["check", "-v", "amic.toml"])
    assert r.exit_code == 0
    assert r.stdout.splitlines() == [
        "amic.toml: OK: 1 bus, 1 meter (1 dlt645-2007), 1 schedule, 0 areas (0 with an area "
        "master)",
        "  bus line-1: serial /dev/ttyS1 2400 8E1, 1 meter",
        "  schedule fast: every 15m, 3 quantities from 1 meter (*)"]


# ---- [mqtt], [[gateway]] and mqtt buses -------------------------------------------------

MQTT = """
[mqtt]
url = "mqtt://127.0.0.1:1883"
username = "amic"
password_file = "mqtt.pw"

[[gateway]]
name = "gw-01"

[[bus]]
name = "gw-01-line"
type = "mqtt"
gateway = "gw-01"
"""


def test_mqtt_gateway_and_bus(monkeypatch: pytest.MonkeyPatch) -> None:
    Path("mqtt.pw").write_text("s3cret\n")
    Path("mqtt.pw").chmod(0o600)
    s = load(BASE + MQTT)
    assert s.mqtt is not None and s.mqtt.password == "s3cret" and s.mqtt.username == "amic"
    assert "s3cret" not in repr(s.mqtt)
    assert s.gateways[0].name == "gw-01" and s.gateways[0].prefix == "amic-gw"
    bus = s.bus("gw-01-line")
    assert (bus.kind, bus.gateway, bus.td) == ("mqtt", "gw-01", 5.0)


def test_mqtt_password_never_in_the_file() -> None:
    Path("mqtt.pw").write_text("x")
    text = BASE + MQTT.replace('password_file = "mqtt.pw"', 'password = "s3cret"')
    found = problem(text)
    assert 'key "password"' in found and "password_file" in found
    assert "AMIC_MQTT_PASSWORD" in found and "s3cret" not in found


def test_mqtt_bad_url_and_missing_files() -> None:
    text = BASE + MQTT.replace("mqtt://127.0.0.1:1883", "http://broker").replace(
        'password_file = "mqtt.pw"', 'password_file = "mqtt.pw"\nca_file = "ca.crt"')
    found = problems(text)
    assert any('key "url": expected an MQTT broker URL' in p and 'got "http://broker"' in p
               for p in found), found
    assert any('key "password_file": expected a readable file' in p for p in found), found
    assert any('key "ca_file": expected a readable file' in p for p in found), found


TIMESERIES = """
[timeseries]
url = "http://127.0.0.1:8428"
token_file = "tsdb.token"
"""


@pytest.mark.parametrize(("text", "name", "key"), [
    (MQTT, "mqtt.pw", "password_file"), (TIMESERIES, "tsdb.token", "token_file")],
    ids=["mqtt", "timeseries"])
@pytest.mark.parametrize("mode", [0o644, 0o640, 0o604, 0o660], ids=oct)
def test_password_and_token_files_others_may_read_are_refused(
        text: str, name: str, key: str, mode: int) -> None:
    Path(name).write_text("s3cret-value\n")
    Path(name).chmod(mode)
    found = problem(BASE + text)
    assert f'key "{key}"' in found and f"{Path(name).resolve()}" in found, found
    assert f"mode {mode:04o}" in found and "chmod 600" in found, found
    assert "s3cret" not in found
    for private in (0o600, 0o400):
        Path(name).chmod(private)
        load(BASE + text)


def test_config_check_and_run_refuse_a_token_file_others_may_read() -> None:
    from conftest import amic_command

    Path("tsdb.token").write_text("s3cret-value\n")
    Path("tsdb.token").chmod(0o644)
    Path("amic.toml").write_text(BASE + TIMESERIES)
    r = CliRunner().invoke(config_group, ["check", "amic.toml"])
    assert r.exit_code == EXIT_INVALID and "Traceback" not in r.output
    assert 'key "token_file"' in r.stdout and "mode 0644" in r.stdout, r.output
    # A separate process: amic run sets up the root logger.
    run = subprocess.run([*amic_command(), "run", "--config", "amic.toml"],
                         capture_output=True, text=True, timeout=30)
    assert run.returncode == 78, run.stderr
    assert "mode 0644" in run.stderr and "s3cret" not in run.stderr + run.stdout


def test_mqtt_reply_prefixes() -> None:
    """Where a read's reply_to may point besides amic/<cid>/reply/: never a wildcard nor
    the command topics."""
    Path("mqtt.pw").write_text("x")
    Path("mqtt.pw").chmod(0o600)
    with_prefixes = 'username = "amic"\nreply_prefixes = {}'
    s = load(BASE + MQTT.replace('username = "amic"',
                                 with_prefixes.format('["ops/replies/", "scada/amic"]')))
    assert s.mqtt is not None and s.mqtt.reply_prefixes == ("ops/replies", "scada/amic")
    assert load(BASE + MQTT).mqtt.reply_prefixes == ()  # type: ignore[union-attr]
    found = problems(BASE + MQTT.replace(
        'username = "amic"', with_prefixes.format('["ops/#", "amic/gw-1/cmd", "amic"]')))
    assert any('key "reply_prefixes"' in p and '"ops/#"' in p and "no wildcards" in p
               for p in found), found
    assert any('"amic/gw-1/cmd"' in p and "outside the command topics" in p
               for p in found), found
    assert any('got "amic"' in p for p in found), found


def test_gateway_needs_mqtt_and_bus_needs_a_known_gateway() -> None:
    text = BASE + MQTT.replace('[mqtt]\nurl = "mqtt://127.0.0.1:1883"\nusername = "amic"\n'
                               'password_file = "mqtt.pw"\n', "")
    assert any("[mqtt] table" in p for p in problems(text))
    Path("mqtt.pw").write_text("x")
    Path("mqtt.pw").chmod(0o600)
    found = problem(BASE + MQTT.replace('gateway = "gw-01"', 'gateway = "gw-02"'))
    assert 'key "gateway": expected the name of a [[gateway]], got "gw-02"' in found


def test_alarm_limits_checked() -> None:
    assert problems(BASE + '\n[alarms]\nlow_pf = "high"\nrules = ["voltage_hgh"]\n') == [
        'amic.toml:20: [alarms]: key "low_pf": expected a number, got "high"',
        'amic.toml:21: [alarms]: key "rules": expected rule names: ' + ", ".join(RULES)
        + ', got "voltage_hgh"; did you mean "voltage_high"?']


def test_over_long_time_zone_is_a_problem_not_a_crash() -> None:
    # ZoneInfo raises OSError (file name too long) for such a name; found by the fuzz test.
    text = problem(BASE + '\n[daily]\ntz = "' + "a" * 300 + '"\n')
    assert text.startswith('amic.toml:20: [daily]: key "tz": expected a time zone name')


def test_daily_and_prepaid_time_zone_checked() -> None:
    assert problems(BASE + '\n[daily]\ntz = "Mars/Olympus"\n') == [
        'amic.toml:20: [daily]: key "tz": expected a time zone name such as "Asia/Shanghai", '
        'got "Mars/Olympus"']
    assert problems(BASE + '\n[prepaid]\nwarn1 = 5\nwarn2 = 10\ntz = "Asia/Shanghia"\n') == [
        'amic.toml:21: [prepaid]: key "warn2": expected an amount below warn1 (5), got 10',
        'amic.toml:22: [prepaid]: key "tz": expected a time zone name such as '
        '"Asia/Shanghai", got "Asia/Shanghia"']


def test_mqtt_fleet() -> None:
    """``[mqtt] fleet``: the name several collectors serve requests under; never the
    collector's own id, never without the command channel."""
    plain = '[mqtt]\nurl = "mqtt://127.0.0.1:1883"\n'
    s = load(BASE + plain + 'fleet = "north"\nfleet_hold = "30s"\n')
    assert s.mqtt is not None and (s.mqtt.fleet, s.mqtt.fleet_hold) == ("north", 30.0)
    s = load(BASE + plain)
    assert s.mqtt is not None and (s.mqtt.fleet, s.mqtt.fleet_hold) == (None, 60.0)
    found = problem(BASE + plain + 'fleet = "gw-1"\n')
    assert "amic.toml:" in found and 'key "fleet"' in found
    assert "other than [collector] id" in found and '"gw-1"' in found
    found = problem(BASE + plain + 'fleet = "north"\ncommands = false\n')
    assert 'key "fleet"' in found and "commands = false" in found
    found = problem(BASE + plain + 'fleet = "a/b"\n')
    assert 'key "fleet"' in found and '"a/b"' in found
    found = problem(BASE + plain + 'fleet = "north"\nfleet_hold = "0s"\n')
    assert 'key "fleet_hold"' in found


def test_security_module_table() -> None:
    """``[security]``: the module that protects top-ups; its key never in the file."""
    s = load(BASE + '[security]\nmodule = "soft"\ntest_keys = true\n')
    assert s.security is not None and s.security.module == "soft" and s.security.test_keys
    assert not s.security.relay and s.security.timeout == 5.0
    Path("esam.key").write_text("00112233445566778899aabbccddeeff\n")
    Path("esam.key").chmod(0o600)
    s = load(BASE + '[security]\nmodule = "soft"\nkey_file = "esam.key"\nrelay = true\n')
    assert s.security is not None and s.security.key_file == Path("esam.key").absolute()
    assert s.security.relay
    s = load(BASE + '[security]\nmodule = "command"\ncommand = ["/usr/lib/esam-bridge", "-v"]\n'
             'timeout = "10s"\n')
    assert s.security is not None and s.security.command == ("/usr/lib/esam-bridge", "-v")
    found = problem(BASE + '[security]\nmodule = "soft"\n')
    assert 'key "key_file"' in found and "test_keys" in found
    Path("esam.key").chmod(0o644)
    found = problem(BASE + '[security]\nmodule = "soft"\nkey_file = "esam.key"\n')
    assert 'key "key_file"' in found and "chmod 600" in found
    Path("short.key").write_text("0011")
    Path("short.key").chmod(0o600)
    found = problem(BASE + '[security]\nmodule = "soft"\nkey_file = "short.key"\n')
    assert "16 bytes or more" in found
    found = problem(BASE + '[security]\nmodule = "command"\n')
    assert 'key "command"' in found
    found = problem(BASE + '[security]\nmodule = "hsm-9000"\n')
    assert "amic.toml:" in found and 'key "module"' in found and '"hsm-9000"' in found
    found = problem(BASE + '[security]\nmodule = "soft"\ntest_keys = true\nkey = "00"\n')
    assert 'key "key"' in found and "key_file" in found

"""The configuration schema: the pydantic models of collector/config/settings.py are the one place
the keys, bounds and defaults are stated; the loader, the settings and the example follow."""

from __future__ import annotations

import dataclasses
import re
import tomllib
from pathlib import Path
from typing import Any

import pytest
from pydantic import ValidationError

from collector.config import ConfigError, load_settings
from collector.config.fields import bounds, conv_of, key_of, marker
from collector.config.schema import TABLE_MODELS, TOP_KEYS
from collector.config.settings import (
    AlarmConfig,
    AlarmsTable,
    BusMqttTable,
    BusSerialTable,
    BusSettings,
    BusTable,
    BusTcpTable,
    CollectorSettings,
    CollectorTable,
    CommandSettings,
    CommandsTable,
    ConfigFile,
    DailySettings,
    DailyTable,
    GatewaySettings,
    GatewayTable,
    MeterSettings,
    MeterTable,
    MqttSettings,
    MqttTable,
    PrepaidSettings,
    PrepaidTable,
    ScheduleSettings,
    ScheduleTable,
    Table,
    TimeseriesSettings,
    TimeseriesTable,
    defaults,
    model_default,
)

ROOT = Path(__file__).resolve().parents[1]
EXAMPLE = ROOT / "config" / "amic.example.toml"

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
interval = "1h"
quantities = ["energy"]
"""

SETTINGS_OF: dict[type[Table], type[Any]] = {
    CollectorTable: CollectorSettings, BusTcpTable: BusSettings, BusSerialTable: BusSettings,
    BusTable: BusSettings, MeterTable: MeterSettings, ScheduleTable: ScheduleSettings,
    MqttTable: MqttSettings, GatewayTable: GatewaySettings,
    TimeseriesTable: TimeseriesSettings, CommandsTable: CommandSettings,
    PrepaidTable: PrepaidSettings, AlarmsTable: AlarmConfig, DailyTable: DailySettings,
}


def _example_keys(text: str) -> dict[str, set[str]]:
    """Table -> keys the example shows, written or commented out (``# key = ...``) under a
    (possibly commented-out) header; ``[schedule.X]`` counts as ``schedule.NAME``."""
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


def _model_keys() -> dict[str, set[str]]:
    """Table -> the TOML keys its model(s) declare (a field's alias, else its name)."""
    return {t: {f.alias or n for m in models for n, f in m.model_fields.items()}
            for t, models in TABLE_MODELS.items()}


def test_the_comparison_fails_on_a_missing_or_a_stray_key() -> None:
    # What tests/test_config.py's example check relies on: the example without [daily]
    # backfill_days, and with a stray key, differs from the models both ways.
    text = EXAMPLE.read_text()
    shown = _example_keys(text.replace("backfill_days", "backfil_days"))
    assert "backfill_days" in _model_keys()["daily"] - shown["daily"]
    assert "backfil_days" in shown["daily"] - _model_keys()["daily"]


def test_every_model_refuses_unknown_keys() -> None:
    for models in TABLE_MODELS.values():
        for m in models:
            assert m.model_config.get("extra") == "forbid", m.__name__


def test_the_settings_defaults_are_the_models_defaults() -> None:
    # One place: each settings field with a default takes it from its model's field.
    for model, cls in SETTINGS_OF.items():
        have = defaults(cls)
        for name, info in model.model_fields.items():
            if info.is_required() or name not in {f.name for f in dataclasses.fields(cls)}:
                continue
            if model is BusMqttTable or (cls is BusSettings and name not in have):
                continue
            want = model_default(model, name)
            if isinstance(want, dict):  # a TOML table, kept as (key, value) pairs
                want = tuple(want.items())
            assert have[name] == want, f"{model.__name__}.{name}"


def test_a_ms_key_default_is_converted_to_seconds() -> None:
    assert BusTable.model_fields["td"].alias == "td_ms"
    assert BusTable.model_fields["td"].default == 500
    assert defaults(BusSettings)["td"] == 0.5
    assert model_default(BusMqttTable, "td") == 5.0


def _bounded() -> list[tuple[str, type[Table], str]]:
    """(table, model, field) of every number key with an upper bound, in tables the base
    file can take without other keys."""
    tables = {"collector": CollectorTable, "schedule.fast": ScheduleTable,
              "timeseries": TimeseriesTable, "commands": CommandsTable, "daily": DailyTable,
              "alarms": AlarmsTable, "bus": BusSerialTable}
    out = []
    for t, model in tables.items():
        for name in model.model_fields:
            mark = marker(model, name)
            if mark and mark.conv in ("int", "duration", "ms") and bounds(model, name)[1]:
                out.append((t, model, name))
    return out


@pytest.mark.parametrize(("table", "model", "name"), _bounded(),
                         ids=lambda v: v if isinstance(v, str) else "")
def test_a_value_above_the_models_bound_is_refused_with_that_bound(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, table: str, model: type[Table],
        name: str) -> None:
    monkeypatch.chdir(tmp_path)
    key = key_of(model, name)
    hi = bounds(model, name)[1]
    line = f"{key} = {hi + 1}\n"
    if table == "bus":
        text = BASE.replace('device = "/dev/ttyS1"\n', f'device = "/dev/ttyS1"\n{line}')
    elif table == "collector":
        text = BASE.replace('data_dir = "data"\n', f'data_dir = "data"\n{line}')
    elif table == "schedule.fast":
        text = BASE + line
    else:
        text = BASE + (f"\n[{table}]\n" + ('url = "http://127.0.0.1:8428"\n'
                                            if table == "timeseries" else "") + line)
    Path("amic.toml").write_text(text)
    with pytest.raises(ConfigError) as info:
        load_settings(Path("amic.toml"))
    [p] = info.value.problems
    assert (p.key, p.expected) == (key, conv_of(model, name).expected)
    shown = str(hi) if marker(model, name).conv == "int" else f"{float(hi):g}"  # type: ignore[union-attr]
    assert shown in p.expected  # the bound, as the model states it
    assert str(p).startswith(f"amic.toml:{text.splitlines().index(line.strip()) + 1}: ")


def test_the_bounded_keys_cover_each_kind() -> None:
    kinds = {marker(m, n).conv for _, m, n in _bounded()}  # type: ignore[union-attr]
    assert kinds == {"int", "duration", "ms"}
    assert len(_bounded()) >= 15


def test_the_models_export_a_json_schema_by_toml_key() -> None:
    # For editors: the schema names the keys as written in the file, with their bounds.
    schema = ConfigFile.model_json_schema(by_alias=True)
    assert set(schema["properties"]) == set(TOP_KEYS)
    defs = schema["$defs"]
    assert defs["CollectorTable"]["properties"]["retention_days"]["maximum"] == 36500
    assert "td_ms" in defs["BusSerialTable"]["properties"]
    assert defs["CollectorTable"]["additionalProperties"] is False


def test_the_example_validates_against_the_models_as_the_loader_reads_it(
        monkeypatch: pytest.MonkeyPatch) -> None:
    # The models describe the file itself: the example passes them, and the durations they
    # read are the loader's (ms keys stay in ms in the model: its bounds are in ms).
    monkeypatch.delenv("AMIC_MQTT_PASSWORD", raising=False)
    monkeypatch.delenv("AMIC_TSDB_TOKEN", raising=False)
    model = ConfigFile.model_validate(tomllib.loads(EXAMPLE.read_text()))
    s = load_settings(EXAMPLE)
    assert {n: sch.interval for n, sch in model.schedule.items()} == {
        sch.name: sch.interval for sch in s.schedules}
    assert [(b.name, b.kind, b.td / 1000) for b in model.bus] == [
        (b.name, b.kind, b.td) for b in s.buses]
    assert s.collector.commit_interval == model.collector.commit_interval


def _uncommented(text: str) -> str:
    """The example with its commented-out tables and keys (``# [mqtt]``, ``# url = ...``
    and the lines of a list they open) written in; prose comments stay comments."""
    out = []
    depth = 0  # "[" a commented-out value opened and has not closed yet
    for line in text.splitlines():
        m = re.match(r"^# ?((?:\[\[?[A-Za-z0-9_.]+\]\]?|[A-Za-z0-9_]+ *=).*)$", line)
        if depth and line.startswith("#"):
            m = re.match(r"^#(.*)$", line)
        if m:
            line = m.group(1)
            code = re.sub(r'"[^"]*"', '""', line).split("#")[0]
            if "=" in code or depth:
                depth += code.count("[") - code.count("]")
        out.append(line)
    return "\n".join(out) + "\n"


def test_every_table_of_the_example_even_commented_out_passes_the_models() -> None:
    data = tomllib.loads(_uncommented(EXAMPLE.read_text()))
    assert set(data) == set(TOP_KEYS)  # every table is shown, so every one is checked
    model = ConfigFile.model_validate(data)
    assert model.daily is not None and model.daily.audit_window == (9.0, 17.0)
    assert model.prepaid is not None and set(model.prepaid.prices) == {"t1", "t2", "t3"}
    assert [b.kind for b in model.bus] == ["tcp", "serial", "mqtt"]


BAD = [  # (old text in BASE, new text, the key both must refuse)
    ('data_dir = "data"\n', 'data_dir = "data"\nretention_days = 0\n', "retention_days"),
    ('data_dir = "data"\n', 'data_dir = "data"\ncommit_interval = "0s"\n',
     "commit_interval"),
    ('data_dir = "data"\n', 'data_dir = "data"\nbogus = 1\n', "bogus"),
    ('device = "/dev/ttyS1"\n', 'device = "/dev/ttyS1"\nbaud = 2401\n', "baud"),
    ('device = "/dev/ttyS1"\n', 'device = "/dev/ttyS1"\ntd_ms = 0\n', "td_ms"),
    ('device = "/dev/ttyS1"\n', 'device = "/dev/ttyS1"\nmodbus = "tcp"\n', "modbus"),
    ('quantities = ["energy"]\n', 'quantities = ["energy"]\nretries = 11\n', "retries"),
    ('interval = "1h"\n', 'interval = "1 hour"\n', "interval"),
    # TOML has types: no true for a number, no quoted number, no 1 for true
    ('data_dir = "data"\n', 'data_dir = "data"\nretention_days = true\n', "retention_days"),
    ('device = "/dev/ttyS1"\n', 'device = "/dev/ttyS1"\nbaud = "2400"\n', "baud"),
    ('device = "/dev/ttyS1"\n', 'device = "/dev/ttyS1"\ntb_ms = true\n', "tb_ms"),
    ('quantities = ["energy"]\n', 'quantities = ["energy"]\nretries = "1"\n', "retries"),
    ('bus = "line-1"\n', 'bus = "line-1"\nprepaid = 1\n', "prepaid"),
]


@pytest.mark.parametrize(("old", "new", "key"), BAD, ids=[k for _, _, k in BAD])
def test_the_loader_and_the_models_refuse_the_same_values(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, old: str, new: str,
        key: str) -> None:
    monkeypatch.chdir(tmp_path)
    text = BASE.replace(old, new)
    Path("amic.toml").write_text(text)
    ConfigFile.model_validate(tomllib.loads(BASE))  # the base itself passes both
    with pytest.raises(ConfigError) as info:
        load_settings(Path("amic.toml"))
    assert [p.key for p in info.value.problems] == [key]
    with pytest.raises(ValidationError) as bad:
        ConfigFile.model_validate(tomllib.loads(text))
    assert [e["loc"][-1] for e in bad.value.errors()] == [key]


def test_the_meter_protocols_are_the_device_models_kinds(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A protocol added to drivers.meters.KINDS is a ledger protocol: the configuration
    keeps no list of its own."""
    from collector.config.schema import PROTOCOLS
    from drivers.meters import KINDS

    assert list(PROTOCOLS) == list(KINDS)
    assert MeterTable.model_validate(
        {"meter_id": "M1", "address": "1", "bus": "b", "protocol": "modbus"}).protocol == "modbus"
    with pytest.raises(ValidationError, match="one of dlt645-1997, dlt645-2007, modbus"):
        MeterTable.model_validate({"meter_id": "M1", "address": "1", "bus": "b",
                                   "protocol": "dlt698"})
    monkeypatch.chdir(tmp_path)
    Path("amic.toml").write_text(BASE.replace('bus = "line-1"\n\n[schedule',
                                              'bus = "line-1"\nprotocol = "dlt698"\n\n[schedule'))
    with pytest.raises(ConfigError) as e:
        load_settings(Path("amic.toml"))
    assert ('key "protocol": expected one of ' + ", ".join(f'"{k}"' for k in KINDS)
            ) in str(e.value), str(e.value)

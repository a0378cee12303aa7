"""One CLI convention: local times with their UTC offset, -c/--config on every command
that takes a configuration, JSON Lines for every --json list, the audit's before/after
columns, and ``amic query`` decoding what ``amic read`` decodes."""

from __future__ import annotations

import datetime as dt
import json
import os
import time
from collections.abc import Iterator
from pathlib import Path

import click
import pytest
from click.testing import CliRunner

from collector.cli import main
from collector.cli.query import query
from collector.store import Store, StoreWriter
from collector.store.records import CommandRecord, Event, Reading

CONFIG = """
[collector]
id = "conv-gw"
data_dir = "data"

[[bus]]
name = "conc-1"
type = "tcp"
host = "127.0.0.1"
port = 9

[[meter]]
meter_id = "M1"
address = "000000000001"
bus = "conc-1"

[schedule.poll]
interval = "1h"
quantities = ["voltage_a"]
"""
T0 = dt.datetime(2026, 12, 4, 10, 3, 5, tzinfo=dt.UTC)  # 18:03:05 in Shanghai


@pytest.fixture
def shanghai() -> Iterator[None]:
    old = os.environ.get("TZ")
    os.environ["TZ"] = "Asia/Shanghai"
    time.tzset()
    try:
        yield
    finally:
        if old is None:
            del os.environ["TZ"]
        else:
            os.environ["TZ"] = old
        time.tzset()


@pytest.fixture
async def cfg(tmp_path: Path) -> Path:
    path = tmp_path / "amic.toml"
    path.write_text(CONFIG)
    (tmp_path / "data").mkdir()
    store = Store.in_dir(tmp_path / "data")
    writer = StoreWriter(store, commit_interval=0.05)
    await writer.start()
    writer.put_event(Event("voltage_low", T0, meter="M1", bus="conc-1", severity=1,
                           value=180.5, detail="phase A below 187 V"))
    detail = {"reason": "arrears 4711", "before": {"relay_open": False},
              "after": {"relay_open": True}, "energy_before": 1234.5,
              "energy_at_switch": 1234.56, "latency_ms": 850}
    writer.put_command(CommandRecord("r1/M1", "M1", "trip", T0, operator="alice",
                                     status="confirmed", detail=json.dumps(detail)))
    writer.put_command(CommandRecord("r2/M1", "M1", "restore", T0 + dt.timedelta(minutes=1),
                                     operator="bob", status="failed",
                                     detail=json.dumps({"reason": "paid"})))
    await writer.close()
    store.close()
    return path


def test_every_command_taking_a_configuration_accepts_c() -> None:
    def walk(cmd: click.Command, name: str) -> Iterator[tuple[str, click.Command]]:
        yield name, cmd
        if isinstance(cmd, click.Group):
            for sub_name, sub in cmd.commands.items():
                yield from walk(sub, f"{name} {sub_name}")

    checked = []
    for name, cmd in walk(main, "amic"):
        for p in cmd.params:
            if isinstance(p, click.Option) and "--config" in p.opts:
                assert "-c" in p.opts, f"{name}: --config without -c"
                checked.append(name)
    assert {"amic run", "amic events", "amic audit", "amic trip", "amic relay-status",
            "amic query", "amic report lineloss", "amic config check"} <= set(checked)


def test_config_check_takes_c(cfg: Path) -> None:
    r = CliRunner().invoke(main, ["config", "check", "-c", str(cfg)])
    assert r.exit_code == 0 and "OK" in r.output, r.output
    r = CliRunner().invoke(main, ["config", "check"])
    assert r.exit_code == 2 and "-c/--config" in r.output


def test_events_show_local_time_with_offset(cfg: Path, shanghai: None) -> None:
    r = CliRunner().invoke(main, ["events", "-c", str(cfg), "--since", "2026-12-01"])
    assert r.exit_code == 0, r.output
    assert r.output.startswith("2026-12-04 18:03:05+08:00  warning voltage_low"), r.output
    r = CliRunner().invoke(main, ["events", "-c", str(cfg), "--since", "2026-12-01",
                                  "--json"])
    (doc,) = [json.loads(line) for line in r.output.splitlines()]
    assert doc["ts"] == "2026-12-04T18:03:05+08:00"
    assert dt.datetime.fromisoformat(doc["ts"]) == T0


def test_audit_shows_relay_and_energy_before_and_after(cfg: Path, shanghai: None) -> None:
    r = CliRunner().invoke(main, ["audit", "-c", str(cfg), "--since", "2026-12-01"])
    assert r.exit_code == 0, r.output
    header, trip, restore = r.output.splitlines()
    assert header.split() == ["TIME", "METER", "ACTION", "STATUS", "OPERATOR",
                              "RELAY_BEFORE", "RELAY_AFTER", "KWH_BEFORE", "KWH_AFTER",
                              "REASON"]
    assert trip.split() == ["2026-12-04", "18:03:05+08:00", "M1", "trip", "confirmed",
                            "alice", "closed", "open", "1234.50", "1234.56", "arrears",
                            "4711"]
    assert restore.split()[2:] == ["M1", "restore", "failed", "bob", "-", "-", "-", "-",
                                   "paid"]
    # --json: one object per line, the time local with its offset.
    r = CliRunner().invoke(main, ["audit", "-c", str(cfg), "--since", "2026-12-01",
                                  "--json"])
    assert r.exit_code == 0, r.output
    docs = [json.loads(line) for line in r.output.splitlines()]
    assert [(d["action"], d["status"], d["operator"]) for d in docs] == [
        ("trip", "confirmed", "alice"), ("restore", "failed", "bob")]
    assert docs[0]["time"] == "2026-12-04T18:03:05+08:00"
    assert docs[0]["detail"]["after"] == {"relay_open": True}


def test_query_decodes_status_words_and_freeze_times(tmp_path: Path, shanghai: None) -> None:
    freeze = dt.datetime(2026, 12, 4, 0, 0)  # the meter's local midnight
    with Store.in_dir(tmp_path) as s:
        s.write_readings([
            # relay_open (bit 4) and hold_power (bit 12) of status word 3.
            Reading("M1", "status_word_3", float(0x1010), "", T0),
            Reading("M1", "freeze_daily_time", freeze.timestamp(), "", T0),
            Reading("M1", "freeze_daily_energy_active_forward_total", 1234.56, "kWh", T0,
                    meter_ts=freeze.astimezone(dt.UTC)),
            Reading("M1", "meter_date", dt.datetime(2026, 12, 4).timestamp(), "", T0),
        ])
    r = CliRunner().invoke(query, ["-d", str(tmp_path)])
    assert r.exit_code == 0, r.output
    lines = {line.split()[3]: line for line in r.output.splitlines()[1:]}
    assert "0x1010 relay_open, hold_power" in lines["status_word_3"]
    assert "2026-12-04 00:00:00+08:00" in lines["freeze_daily_time"]
    assert "2026-12-04" in lines["meter_date"] and "1764777600" not in lines["meter_date"]
    # The frozen energy shows the time of its freeze.
    assert lines["freeze_daily_energy_active_forward_total"].rstrip().endswith(
        "2026-12-04 00:00:00+08:00")
    r = CliRunner().invoke(query, ["-d", str(tmp_path), "--json"])
    docs = {d["quantity"]: d for d in map(json.loads, r.output.splitlines())}
    assert docs["status_word_3"]["value"] == 0x1010
    assert docs["status_word_3"]["value_text"] == "0x1010 relay_open, hold_power"

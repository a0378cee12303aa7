"""Acrel meters' relay through their shipped profiles: ``amic trip|restore|relay-status``
against the Modbus simulator, verified by the profile's readback."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner

from collector.cli import main
from collector.config.profiles import load_profile
from protocols.modbus import relay_readback_block
from simulators.modbus import ModbusSimulator

SECRETS = """
[default]
password = "02000000"

[operators.alice]
operator_code = "0000A11C"
"""

CONFIG = """
[collector]
id = "acrel-gw"
data_dir = "data"

[commands]
secrets_file = "secrets.toml"
min_interval = "0s"
verify_timeout = "2s"
poll_interval = "50ms"

[[bus]]
name = "gw"
type = "tcp"
host = "127.0.0.1"
port = {port}
modbus = "tcp"
td_ms = 500

[[meter]]
meter_id = "P1"
address = "1"
bus = "gw"
protocol = "modbus"
profile = "{profile}"

[[meter]]
meter_id = "P2"
address = "2"
bus = "gw"
protocol = "modbus"
profile = "{profile}"

[schedule.poll]
interval = "1h"
quantities = ["energy_active_combined_total"]
"""

ACREL = ("acrel-ddsy1352", "acrel-dtsy1352")


async def amic(*args: str) -> Any:
    return await asyncio.to_thread(CliRunner().invoke, main, list(args))


def lines(r: Any) -> list[dict[str, Any]]:
    return [json.loads(x) for x in r.stdout.splitlines()]


@pytest.mark.parametrize("name", ACREL)
def test_acrel_profiles_declare_a_relay_readback(name: str) -> None:
    p = load_profile(name)
    assert p.relay is not None and relay_readback_block(p) is not None
    assert not p.relay.public  # not in the public manual: the note says where from
    assert "unverified on hardware" in p.relay.note


@pytest.mark.parametrize("name", ACREL)
async def test_acrel_trip_restore_and_relay_status_verified(tmp_path: Path, name: str) -> None:
    async with ModbusSimulator(load_profile(name), meters=2, transport="tcp", seed=3) as sim:
        secrets = tmp_path / "secrets.toml"
        secrets.write_text(SECRETS)
        secrets.chmod(0o600)
        cfg = tmp_path / "amic.toml"
        cfg.write_text(CONFIG.format(port=sim.port, profile=name))
        base = ["--config", str(cfg), "--operator", "alice", "--json"]

        r = await amic("trip", "P1", *base, "--reason", "arrears")
        assert r.exit_code == 0, r.output
        (res,) = lines(r)
        assert res["status"] == "confirmed" and res["protocol"] == "modbus", res
        assert res["before"]["relay_open"] is False and res["after"]["relay_open"] is True
        assert res["energy_at_switch"] is not None  # combined energy: the only total
        assert sim.model(1).relay_open and not sim.model(2).relay_open

        r = await amic("relay-status", "P1", "P2", "--config", str(cfg), "--json")
        assert r.exit_code == 0, r.output
        assert {x["meter"]: x["state"]["relay_open"] for x in lines(r)} == {
            "P1": True, "P2": False}

        r = await amic("restore", "P1", *base, "--reason", "paid")
        assert r.exit_code == 0, r.output
        (res,) = lines(r)
        assert res["status"] == "confirmed" and res["after"]["relay_open"] is False, res
        assert not sim.model(1).relay_open

        r = await amic("relay-status", "P1", "--config", str(cfg), "--json")
        assert r.exit_code == 0, r.output
        assert lines(r)[0]["state"]["relay_open"] is False
        assert sim.stats.trips == 1 and sim.stats.closes == 1


async def test_acrel_trip_under_hold_power_is_not_confirmed(tmp_path: Path) -> None:
    """The readback reports the relay as it is: a trip the meter kept closed fails."""
    async with ModbusSimulator(load_profile("acrel-ddsy1352"), meters=2, transport="tcp",
                               seed=3) as sim:
        sim.model(1).hold_power = True
        secrets = tmp_path / "secrets.toml"
        secrets.write_text(SECRETS)
        secrets.chmod(0o600)
        cfg = tmp_path / "amic.toml"
        cfg.write_text(CONFIG.format(port=sim.port, profile="acrel-ddsy1352"))
        r = await amic("trip", "P1", "--config", str(cfg), "--operator", "alice", "--json",
                       "--reason", "arrears")
        assert r.exit_code != 0, r.output
        (res,) = lines(r)
        assert res["status"] != "confirmed" and res["after"]["relay_open"] is False, res
        assert not sim.model(1).relay_open

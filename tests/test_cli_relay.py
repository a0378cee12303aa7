"""``amic trip ... --config``: the CLI opening the buses itself, against simulated meters."""

from __future__ import annotations

import asyncio
import json
import sqlite3
from pathlib import Path
from typing import Any

from click.testing import CliRunner

from collector.cli import main
from simulators.bus import BusServer
from simulators.dlt645 import make_meters

SECRETS = """
[default]
password = "02000000"

[operators.alice]
operator_code = "0000A11C"
"""

CONFIG = """
[collector]
id = "cli-gw"
data_dir = "data"

[commands]
secrets_file = "secrets.toml"
min_interval = "0s"
verify_timeout = "2s"
poll_interval = "50ms"

[[bus]]
name = "conc-1"
type = "tcp"
host = "127.0.0.1"
port = {port}
td_ms = 300
{meters}
[schedule.poll]
interval = "1h"
quantities = ["voltage_a"]
"""
ADDRESSES = [f"{i:012d}" for i in range(1, 4)]
METERS = "".join(f'\n[[meter]]\nmeter_id = "M{i}"\naddress = "{a}"\nbus = "conc-1"\n'
                 f'area = "TQ-1"\n' for i, a in enumerate(ADDRESSES, 1))


def setup(tmp: Path, port: int, mode: int = 0o600) -> Path:
    secrets = tmp / "secrets.toml"
    secrets.write_text(SECRETS)
    secrets.chmod(mode)
    cfg = tmp / "amic.toml"
    cfg.write_text(CONFIG.format(port=port, meters=METERS))
    return cfg


async def amic(*args: str, stdin: str | None = None) -> Any:
    return await asyncio.to_thread(CliRunner().invoke, main, list(args), input=stdin)


async def test_trip_dry_run_confirmation_and_wrong_address(tmp_path: Path) -> None:
    meters = make_meters(ADDRESSES)
    model = {f"M{i}": m.model for i, m in enumerate(meters, 1)}
    async with BusServer(meters, baud=19200, td=0.005,
                         faults=f"wrong-address:{ADDRESSES[2]}") as server:
        cfg = setup(tmp_path, server.port)
        base = ["--config", str(cfg), "--operator", "alice"]
        # Without a reason nothing happens.
        r = await amic("trip", "M1", *base)
        assert r.exit_code == 2 and "--reason" in r.output
        # Several meters ask first; "no" sends nothing.
        r = await amic("trip", "M1", "M2", *base, "--reason", "test", stdin="n\n")
        assert r.exit_code == 2 and "declined" in r.output
        assert not model["M1"].relay_open and not model["M2"].relay_open
        # A dry run reads the state and sends nothing.
        r = await amic("trip", "M1", *base, "--reason", "test", "--dry-run", "--json")
        assert r.exit_code == 0, r.output
        (res,) = [json.loads(x) for x in r.stdout.splitlines()]
        assert res["status"] == "dry_run" and res["state"]["relay_open"] is False
        assert not model["M1"].relay_open
        # The real thing: confirmed, exit 0.
        r = await amic("trip", "M1", *base, "--reason", "arrears")
        assert r.exit_code == 0, r.output
        assert "confirmed" in r.output and model["M1"].relay_open
        # A meter answering with another address: exit 5, its relay untouched.
        r = await amic("trip", "M3", *base, "--reason", "arrears", "--json")
        assert r.exit_code == 5, r.output
        assert json.loads(r.stdout)["status"] == "address_mismatch"
        assert not model["M3"].relay_open
        # relay-status reads only.
        r = await amic("relay-status", "M1", "M2", "--config", str(cfg), "--json")
        assert r.exit_code == 0, r.output
        states = {x["meter"]: x["state"]["relay_open"]
                  for x in [json.loads(x) for x in r.stdout.splitlines()]}
        assert states == {"M1": True, "M2": False}
    # Everything that was carried out or tried is in the audit trail.
    with sqlite3.connect(tmp_path / "data" / "amic.db") as c:
        got = c.execute("SELECT meter, kind, status, operator FROM commands "
                        "ORDER BY id").fetchall()
    assert got == [("M1", "dry_run", "dry_run", "alice"), ("M1", "trip", "confirmed", "alice"),
                   ("M3", "trip", "address_mismatch", "alice")]
    r = await amic("audit", "--config", str(cfg))
    assert r.exit_code == 0 and "address_mismatch" in r.output and "arrears" in r.output


async def test_secrets_file_readable_by_others_is_refused(tmp_path: Path) -> None:
    cfg = setup(tmp_path, 1, mode=0o644)
    r = await amic("config", "check", str(cfg))
    assert r.exit_code != 0
    assert "0644" in r.output and "chmod 600" in r.output


MODBUS_CONFIG = """
[collector]
id = "mb-gw"
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

[schedule.poll]
interval = "1h"
quantities = ["voltage_a"]
"""


async def test_modbus_meter_trip_and_restore_through_its_profile(tmp_path: Path) -> None:
    from test_relay import RELAY_PROFILE, write_profile

    from simulators.modbus import ModbusSimulator

    profile = write_profile(tmp_path, "relay-test", RELAY_PROFILE)
    async with ModbusSimulator(profile, meters=1, transport="tcp", seed=5) as sim:
        secrets = tmp_path / "secrets.toml"
        secrets.write_text(SECRETS)
        secrets.chmod(0o600)
        cfg = tmp_path / "amic.toml"
        cfg.write_text(MODBUS_CONFIG.format(port=sim.port,
                                            profile=tmp_path / "relay-test.toml"))
        base = ["--config", str(cfg), "--operator", "alice", "--json"]
        r = await amic("trip", "P1", *base, "--reason", "arrears")
        assert r.exit_code == 0, r.output
        (res,) = [json.loads(x) for x in r.stdout.splitlines()]
        assert res["status"] == "confirmed" and res["protocol"] == "modbus"
        assert res["energy_at_switch"] is not None and sim.model(1).relay_open
        r = await amic("restore", "P1", *base, "--reason", "paid")
        assert r.exit_code == 0, r.output
        assert not sim.model(1).relay_open
        # Hold power has no Modbus mapping in the profile: unsupported, exit 7.
        r = await amic("hold", "P1", *base, "--reason", "hospital")
        assert r.exit_code == 7, r.output

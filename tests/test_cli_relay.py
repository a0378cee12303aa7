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


PROTECTED_METERS = (
    '\n[[meter]]\nmeter_id = "M1"\naddress = "000000000001"\nbus = "conc-1"\narea = "TQ-1"\n'
    'role = "area_master"\n'
    '\n[[meter]]\nmeter_id = "M2"\naddress = "000000000002"\nbus = "conc-1"\narea = "TQ-1"\n'
    'prepaid = true\n'
    '\n[[meter]]\nmeter_id = "M3"\naddress = "000000000003"\nbus = "conc-1"\narea = "TQ-1"\n'
    '\n[prepaid]\nwarn1 = 20\nwarn2 = 5\nprotected = ["M2"]\n')


async def test_area_trip_skips_protected_and_master_unless_forced(tmp_path: Path) -> None:
    meters = make_meters(ADDRESSES)
    model = {f"M{i}": m.model for i, m in enumerate(meters, 1)}
    async with BusServer(meters, baud=19200, td=0.005) as server:
        cfg = setup(tmp_path, server.port)
        cfg.write_text(CONFIG.format(port=server.port, meters=PROTECTED_METERS))
        base = ["--config", str(cfg), "--operator", "alice", "--json"]
        # A dry run predicts the skips and sends nothing.
        r = await amic("trip", "--area", "TQ-1", *base, "--reason", "arrears", "--dry-run")
        assert r.exit_code == 0, r.output
        got = {x["meter"]: x["status"]
                       for x in map(json.loads, r.output.splitlines())}
        assert got == {"M1": "skipped_protected", "M2": "skipped_protected", "M3": "dry_run"}
        # The area: the master meter and the protected customer are skipped, the rest
        # tripped; the policy worked, so exit 0.
        r = await amic("trip", "--area", "TQ-1", *base, "--reason", "arrears", "--yes")
        assert r.exit_code == 0, r.output
        res = {x["meter"]: x for x in [json.loads(x) for x in r.output.splitlines()]}
        assert {k: v["status"] for k, v in res.items()} == {
            "M1": "skipped_protected", "M2": "skipped_protected", "M3": "confirmed"}
        assert "area master meter of area TQ-1" in res["M1"]["detail"]
        assert "[prepaid] protected" in res["M2"]["detail"]
        assert not model["M1"].relay_open and not model["M2"].relay_open
        assert model["M3"].relay_open
        # --force is for trips only, and needs the reason every command needs.
        r = await amic("restore", "M3", *base, "--reason", "paid", "--force")
        assert r.exit_code == 2 and "--force" in r.output
        r = await amic("trip", "M2", *base, "--force")
        assert r.exit_code == 2 and "--reason" in r.output
        assert not model["M2"].relay_open
        # Forced, with a reason: tripped, and the audit says who forced it and why.
        r = await amic("trip", "M2", *base, "--force", "--reason", "fraud, ticket 99")
        assert r.exit_code == 0, r.output
        assert json.loads(r.output.splitlines()[0])["status"] == "confirmed"
        assert model["M2"].relay_open and not model["M1"].relay_open
    with sqlite3.connect(tmp_path / "data" / "amic.db") as c:
        audit = c.execute("SELECT meter, kind, status, operator, detail FROM commands "
                          "WHERE status != 'sent' ORDER BY id").fetchall()
    assert [a[:4] for a in audit] == [
        ("M1", "dry_run", "skipped_protected", "alice"),
        ("M2", "dry_run", "skipped_protected", "alice"),
        ("M3", "dry_run", "dry_run", "alice"),
        ("M1", "trip", "skipped_protected", "alice"),
        ("M2", "trip", "skipped_protected", "alice"),
        ("M3", "trip", "confirmed", "alice"),
        ("M2", "trip", "confirmed", "alice")]
    skipped = json.loads(audit[3][4])
    assert skipped["protected"] == "area master meter of area TQ-1"
    assert skipped["reason"] == "arrears"
    forced = json.loads(audit[6][4])["forced"]
    assert forced["by"] == "alice" and forced["reason"] == "fraud, ticket 99"
    assert "[prepaid] protected" in forced["protected"]
    r = await amic("audit", "--config", str(cfg))
    assert r.exit_code == 0 and "skipped_protected" in r.output
    assert "fraud, ticket 99 (forced: protected customer" in r.output, r.output


async def test_dry_run_exits_as_the_command_would(tmp_path: Path) -> None:
    meters = make_meters(ADDRESSES[:2])  # M3 (address 3) never answers
    model = {f"M{i}": m.model for i, m in enumerate(meters, 1)}
    model["M2"].hold_power = True
    async with BusServer(meters, baud=19200, td=0.005) as server:
        cfg = setup(tmp_path, server.port)
        cfg.write_text(CONFIG.format(port=server.port, meters=METERS)
                       .replace('td_ms = 300', 'td_ms = 100'))
        base = ["--config", str(cfg), "--operator", "alice", "--reason", "test", "--dry-run"]
        r = await amic("trip", "M1", *base)
        assert r.exit_code == 0 and "dry_run" in r.output and "would be sent" in r.output
        # Hold power on: the trip would be refused at once (exit 3); release would go.
        r = await amic("trip", "M2", *base, "--json")
        assert r.exit_code == 3, r.output
        (res,) = [json.loads(x) for x in r.output.splitlines()]
        assert res["status"] == "refused" and "hold power on" in res["detail"]
        r = await amic("release", "M2", *base)
        assert r.exit_code == 0, r.output
        # No answer to the pre-read: failed, exit 6.
        r = await amic("trip", "M3", *base, "--json")
        assert r.exit_code == 6, r.output
        (res,) = [json.loads(x) for x in r.output.splitlines()]
        assert res["status"] == "failed" and "unreadable" in res["detail"]
        assert not any(m.model.relay_open for m in meters)
        assert model["M2"].hold_power


async def test_dry_run_and_status_of_a_modbus_meter_without_relay(tmp_path: Path) -> None:
    from test_relay import RELAY_PROFILE, write_profile

    from simulators.modbus import ModbusSimulator

    write_profile(tmp_path, "relay-test", RELAY_PROFILE)  # the simulator's device
    plain = write_profile(tmp_path, "no-relay", RELAY_PROFILE.split("[relay]")[0])
    async with ModbusSimulator(plain, meters=1, transport="tcp", seed=5) as sim:
        setup(tmp_path, sim.port).write_text(
            MODBUS_CONFIG.format(port=sim.port, profile=tmp_path / "no-relay.toml"))
        cfg = tmp_path / "amic.toml"
        r = await amic("trip", "P1", "--config", str(cfg), "--operator", "alice",
                       "--reason", "test", "--dry-run")
        assert r.exit_code == 7, r.output
        assert "unsupported" in r.output and "no relay control" in r.output
        assert "ValueError" not in r.output and "Traceback" not in r.output
        r = await amic("relay-status", "P1", "--config", str(cfg))
        assert r.exit_code == 7, r.output
        assert "no relay readback" in r.output and "ValueError" not in r.output

"""Relay commands end to end: the daemon, a real mosquitto, simulated DL/T645 meters.

Signed commands through the broker (trip confirmed, replay and unsigned refused), a wrong
password refused by the meter, the rate limit per bus, the audit trail, the prepaid engine
(trip at zero, restore after a top-up, a protected customer never tripped), and no secret
in any log, output or store row.
"""

from __future__ import annotations

import asyncio
import json
import logging
import sqlite3
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import aiomqtt
import pytest
from click.testing import CliRunner
from conftest import until
from mosquitto import Broker

from collector.cli import main
from collector.commands.signing import sign
from collector.config import load_settings
from collector.service.daemon import Daemon
from collector.service.notify import Notifier
from simulators.bus import BusServer
from simulators.dlt645 import make_meters

KEY_HEX = "5f3a9c0e7b214d6a8e1f0c3b5a7d9e2f"  # alice's signing key (16 bytes)
OTHER_PASSWORD = "02777777"  # what the daemon believes M3's password is: wrong
SECRETS = f"""
[default]
password = "02000000"

[meters.M3]
password = "{OTHER_PASSWORD}"

[operators.alice]
operator_code = "0000A11C"
key = "hex:{KEY_HEX}"

[operators.prepaid]
operator_code = "00000099"
"""
OPERATOR_SECRETS = f"""
[operators.alice]
operator_code = "0000A11C"
key = "hex:{KEY_HEX}"
"""

CONFIG = """
[collector]
id = "relay-gw"
data_dir = "data"
commit_interval = "100ms"

[mqtt]
url = "{url}"

[commands]
secrets_file = "secrets.toml"
min_interval = "400ms"
verify_timeout = "3s"
poll_interval = "100ms"

[[bus]]
name = "conc-1"
type = "tcp"
host = "127.0.0.1"
port = {port}
td_ms = 300
{meters}
[schedule.poll]
interval = "{interval}"
quantities = {quantities}
{extra}
"""


def meter_tables(n: int, prepaid: tuple[str, ...] = ()) -> str:
    return "".join(f'\n[[meter]]\nmeter_id = "M{i}"\naddress = "{i:012d}"\nbus = "conc-1"\n'
                   f'area = "TQ-1"\nprepaid = {"true" if f"M{i}" in prepaid else "false"}\n'
                   for i in range(1, n + 1))


def write(tmp: Path, text: str, name: str) -> Path:
    p = tmp / name
    p.write_text(text)
    p.chmod(0o600)
    return p


def cli(*args: str) -> Any:
    return CliRunner().invoke(main, list(args))


def rows(tmp: Path, sql: str, *args: object) -> list[tuple[Any, ...]]:
    with sqlite3.connect(tmp / "data" / "amic.db") as c:
        return c.execute(sql, args).fetchall()


async def test_signed_commands_through_the_broker(tmp_path: Path,
                                                  caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)
    meters = make_meters([f"{i:012d}" for i in range(1, 4)])
    model = {f"M{i}": m.model for i, m in enumerate(meters, 1)}
    write(tmp_path, SECRETS, "secrets.toml")
    operator_secrets = write(tmp_path, OPERATOR_SECRETS, "alice.toml")
    with Broker(tmp_path / "broker") as broker:
        server = BusServer(meters, baud=19200, td=0.005)
        async with server:
            cfg = tmp_path / "amic.toml"
            cfg.write_text(CONFIG.format(url=broker.url, port=server.port,
                                         meters=meter_tables(3), interval="1h",
                                         quantities='["voltage_a"]', extra=""))
            daemon = Daemon(load_settings(cfg), notifier=Notifier.from_env({}), align=False)
            run = asyncio.create_task(daemon.run())
            try:
                await until(lambda: daemon.mqtt is not None and daemon.mqtt.commands
                            is not None and daemon.mqtt.conn.connected
                            and daemon.poller is not None
                            and "poll" in daemon.poller.last_cycle)
                via = ["--via", broker.url, "--collector", "relay-gw"]
                # 1. Two meters, one bus: both confirmed, the relays really open, and the
                # second sent at least min_interval after the first.
                r = await asyncio.to_thread(
                    cli, "trip", "M1", "M2", *via, "--reason", "arrears ticket 4711",
                    "--operator", "alice", "--secrets", str(operator_secrets), "--yes",
                    "--json")
                assert r.exit_code == 0, r.output
                doc = [json.loads(x) for x in r.stdout.splitlines()]
                assert [x["status"] for x in doc] == ["confirmed", "confirmed"]
                assert all(x["energy_at_switch"] is not None for x in doc)
                assert model["M1"].relay_open and model["M2"].relay_open
                assert not model["M3"].relay_open
                await daemon.writer.flush()  # type: ignore[union-attr]
                audit = rows(tmp_path, "SELECT meter, kind, status, operator, ts, detail "
                             "FROM commands WHERE kind = 'trip' ORDER BY ts")
                assert [(a[0], a[2], a[3]) for a in audit] == [
                    ("M1", "confirmed", "alice"), ("M2", "confirmed", "alice")]
                assert audit[1][4] - audit[0][4] >= 400
                detail = json.loads(audit[0][5])
                assert detail["reason"] == "arrears ticket 4711"
                assert detail["before"]["relay_open"] is False
                assert detail["after"]["relay_open"] is True
                # ... and amic audit shows it.
                r = await asyncio.to_thread(cli, "audit", "--config", str(cfg))
                assert r.exit_code == 0, r.output
                assert "M1" in r.output and "confirmed" in r.output and "arrears" in r.output

                # 2. Wrong password (the meter's is 02000000): refused by the meter.
                r = await asyncio.to_thread(
                    cli, "trip", "M3", *via, "--reason", "test", "--operator", "alice",
                    "--secrets", str(operator_secrets), "--json")
                assert r.exit_code == 3, r.output
                res = json.loads(r.stdout)
                assert res["status"] == "refused" and "unauthorised" in res["error_bits"]
                assert not model["M3"].relay_open

                # 3. Signed requests published by hand: a replay is not executed again,
                # the same signature under another request id and an unsigned request are
                # refused.
                rid = f"t-{uuid.uuid4().hex}"
                body = sign({"request_id": rid, "command": "relay", "action": "restore",
                             "meters": ["M1"], "reason": "paid"}, "alice",
                            bytes.fromhex(KEY_HEX), collector="relay-gw")
                first = await ask(broker, rid, body)
                assert first["status"] == "ok", first
                assert first["results"][0]["status"] == "confirmed"
                assert not model["M1"].relay_open
                model["M1"].trip()  # if the replay ran, it would close the relay again
                executed = daemon.mqtt.commands.stats.executed
                again = await ask(broker, rid, body)
                assert again == first
                assert daemon.mqtt.commands.stats.executed == executed
                assert model["M1"].relay_open  # not switched again
                rid2 = f"t-{uuid.uuid4().hex}"
                forged = await ask(broker, rid2, {**body, "request_id": rid2})
                assert forged["status"] == "error" and "bad_signature" in forged["error"]
                rid3 = f"t-{uuid.uuid4().hex}"
                unsigned = await ask(broker, rid3, {"request_id": rid3, "command": "relay",
                                                    "action": "trip", "meters": ["M3"],
                                                    "reason": "x", "operator": "alice"})
                assert unsigned["status"] == "error" and "unsigned" in unsigned["error"]
                assert model["M1"].relay_open and not model["M3"].relay_open
                refused = await refusals(broker)
                assert model["M1"].relay_open and not model["M3"].relay_open

                # 3b. Every refusal is audited (reason, claimed operator), an alarm, and
                # journaled "denied" (forwarded as status_code 16), never "done".
                await daemon.writer.flush()  # type: ignore[union-attr]
                denied = {r[0]: r[1:] for r in rows(
                    tmp_path, "SELECT command_id, meter, kind, operator, status, detail "
                    "FROM commands WHERE status = 'denied'")}
                expected = {rid2: ("M1", "restore", "alice", "bad_signature"),
                            rid3: ("M3", "trip", "alice", "unsigned"),
                            **refused}
                assert {k: (m, kind, op, json.loads(d)["refusal"])
                        for k, (m, kind, op, _, d) in denied.items()} == expected
                assert rows(tmp_path, "SELECT status FROM commands WHERE command_id IN "
                            f"('{rid2}', '{rid3}')") == [("denied",), ("denied",)]
                r = await asyncio.to_thread(cli, "audit", "--config", str(cfg))
                assert r.exit_code == 0, r.output
                lines = [x for x in r.output.splitlines() if "denied" in x]
                assert len(lines) == len(expected)
                assert any("bad_signature" in x and "alice" in x and "restore" in x
                           for x in lines)
                assert any("wrong_command" in x and "M2" in x for x in lines)
                r = await asyncio.to_thread(cli, "events", "--config", str(cfg),
                                            "--alarms", "--json")
                assert r.exit_code == 0, r.output
                alarms = [e for e in map(json.loads, r.output.splitlines())
                          if e["kind"] == "command_refused"]
                assert all(e["severity"] == 2 for e in alarms)
                assert len(alarms) == len(expected)
                assert any("unknown_operator" in e["detail"] and "mallory" in e["detail"]
                           for e in alarms)
                signatures = [body["signature"]]

                # 4. relay-status reads only.
                r = await asyncio.to_thread(cli, "relay-status", "M1", "M3", *via, "--json")
                assert r.exit_code == 0, r.output
                states = {x["meter"]: x["state"]["relay_open"]
                          for x in [json.loads(x) for x in r.stdout.splitlines()]}
                assert states == {"M1": True, "M3": False}
                outputs = r.output
            finally:
                daemon.stop_requested.set()
                assert await asyncio.wait_for(run, 15) == 0
    # 5. No secret anywhere: logs, CLI output, the store.
    store_text = "\n".join(str(x) for x in rows(tmp_path, "SELECT * FROM commands"))
    for secret in ("02000000", OTHER_PASSWORD, "0000A11C", "0000a11c", KEY_HEX):
        assert secret not in caplog.text
        assert secret not in outputs
        assert secret not in store_text
    events_text = "\n".join(str(x) for x in rows(tmp_path, "SELECT * FROM events"))
    for signature in signatures:
        assert signature not in caplog.text
        assert signature not in store_text and signature not in events_text


async def refusals(broker: Broker) -> dict[str, tuple[str, str, str, str]]:
    """Expired, unknown operator and another command's document: each refused with its
    reason.  ``{request id: (meter, kind, claimed operator, reason)}``."""
    key = bytes.fromhex(KEY_HEX)
    out: dict[str, tuple[str, str, str, str]] = {}
    cases = [
        ("expired", "alice", key, {"now": datetime.now(UTC) - timedelta(hours=1)}, "relay",
         "M2"),
        ("unknown_operator", "mallory", key, {}, "relay", "M2"),
        ("wrong_command", "alice", key, {}, "topup", "M2"),  # a trip sent as a top-up
    ]
    for reason, operator, k, kw, topic, meter in cases:
        rid = f"t-{uuid.uuid4().hex}"
        doc = sign({"request_id": rid, "command": "relay", "action": "trip",
                    "meters": [meter], "meter": meter, "reason": "x"}, operator, k,
                   collector="relay-gw", **kw)
        reply = await ask(broker, rid, doc, topic)
        assert reply["status"] == "error" and reply["refusal"] == reason, reply
        out[rid] = (meter, "trip" if topic == "relay" else "topup", operator, reason)
    # A top-up signed for another collector.
    rid = f"t-{uuid.uuid4().hex}"
    doc = sign({"request_id": rid, "meter": "M2", "amount": "50", "ref": "receipt 9"},
               "alice", key, collector="other-gw", command="topup")
    reply = await ask(broker, rid, doc, "topup")
    assert reply["status"] == "error" and reply["refusal"] == "wrong_collector", reply
    out[rid] = ("M2", "topup", "alice", "wrong_collector")
    return out


async def ask(broker: Broker, rid: str, body: dict[str, Any],
              command: str = "relay") -> dict[str, Any]:
    async with aiomqtt.Client("127.0.0.1", broker.port) as c:
        await c.subscribe(f"amic/relay-gw/reply/{rid}", qos=1)
        await c.publish(f"amic/relay-gw/cmd/{command}", json.dumps(body), qos=1)
        async with asyncio.timeout(20):
            async for m in c.messages:
                return json.loads(m.payload)  # type: ignore[arg-type]
    raise AssertionError("no reply")


PREPAID = """
[prepaid]
warn1 = 20
warn2 = 5
grace = "0s"
computed = ["M1", "M2"]
protected = ["M2"]
price = 0.5
opening_balance = -1
"""


async def test_prepaid_trip_at_zero_restore_after_topup(tmp_path: Path) -> None:
    meters = make_meters([f"{i:012d}" for i in range(1, 4)])
    model = {f"M{i}": m.model for i, m in enumerate(meters, 1)}
    write(tmp_path, SECRETS, "secrets.toml")
    operator_secrets = write(tmp_path, OPERATOR_SECRETS, "alice.toml")
    with Broker(tmp_path / "broker") as broker:
        server = BusServer(meters, baud=19200, td=0.005)
        async with server:
            cfg = tmp_path / "amic.toml"
            cfg.write_text(CONFIG.format(
                url=broker.url, port=server.port, meters=meter_tables(3, ("M1", "M2")),
                interval="1s", quantities='["energy_active_forward_total", "status"]',
                extra=PREPAID))
            daemon = Daemon(load_settings(cfg), notifier=Notifier.from_env({}), align=False)
            run = asyncio.create_task(daemon.run())
            try:
                # M1 has no credit: tripped by the engine and confirmed.
                await until(lambda: model["M1"].relay_open, 20)
                await until(lambda: rows(tmp_path, "SELECT 1 FROM commands WHERE kind = "
                                         "'trip' AND status != 'sent'") != [])
                trips = rows(tmp_path, "SELECT meter, status, operator FROM commands "
                             "WHERE kind = 'trip'")
                assert trips == [("M1", "confirmed", "prepaid")]
                # M2 is protected: never tripped, and it says so.
                events = [k for (k,) in rows(tmp_path, "SELECT kind FROM events "
                                             "WHERE meter = 'M2'")]
                assert "trip_skipped_protected" in events
                assert not model["M2"].relay_open
                # A top-up: recorded, and M1 is restored, the restore confirmed.
                r = await asyncio.to_thread(
                    cli, "topup", "M1", "50", "--ref", "receipt 1", "--operator", "alice",
                    "--secrets", str(operator_secrets), "--via", broker.url,
                    "--collector", "relay-gw", "--json")
                assert r.exit_code == 0, r.output
                doc = json.loads(r.output)
                assert doc["balance"] > 40
                assert doc["restore"][0]["status"] == "confirmed"
                assert not model["M1"].relay_open
                await asyncio.sleep(2.5)  # more polls: no new trip with credit
                assert not model["M1"].relay_open and not model["M2"].relay_open
                await daemon.writer.flush()  # type: ignore[union-attr]
                kinds = rows(tmp_path, "SELECT kind, status FROM commands WHERE meter = "
                             "'M1' AND kind IN ('trip', 'restore', 'topup') AND status != 'done' "
                             "ORDER BY id")
                assert kinds == [("trip", "confirmed"), ("topup", "recorded"),
                                 ("restore", "confirmed")]
                balance = daemon.control.engine.balance("M1")  # type: ignore[union-attr]
            finally:
                daemon.stop_requested.set()
                assert await asyncio.wait_for(run, 15) == 0
            # A restart keeps the money: the top-up and what was charged since.
            daemon = Daemon(load_settings(cfg), notifier=Notifier.from_env({}), align=False)
            run = asyncio.create_task(daemon.run())
            try:
                await until(lambda: daemon.control is not None)
                assert daemon.control is not None and daemon.control.engine is not None
                restored = daemon.control.engine.balance("M1")
                assert restored is not None and balance is not None
                assert restored > 40 and abs(restored - balance) < 1  # (a poll may charge)
                await asyncio.sleep(2.0)  # polls: no trip, the credit is still there
                assert not model["M1"].relay_open
            finally:
                daemon.stop_requested.set()
                assert await asyncio.wait_for(run, 15) == 0


PROTECTED = """
[prepaid]
warn1 = 20
warn2 = 5
protected = ["M2"]
"""


async def test_area_trip_through_the_broker_skips_protected_unless_forced(
        tmp_path: Path) -> None:
    meters = make_meters([f"{i:012d}" for i in range(1, 4)])
    model = {f"M{i}": m.model for i, m in enumerate(meters, 1)}
    write(tmp_path, SECRETS.replace(f'[meters.M3]\npassword = "{OTHER_PASSWORD}"\n', ""),
          "secrets.toml")  # every meter has the default password
    operator_secrets = write(tmp_path, OPERATOR_SECRETS, "alice.toml")
    with Broker(tmp_path / "broker") as broker:
        async with BusServer(meters, baud=19200, td=0.005) as server:
            cfg = tmp_path / "amic.toml"
            cfg.write_text(CONFIG.format(
                url=broker.url, port=server.port,
                meters=meter_tables(3).replace('area = "TQ-1"\n',
                                               'area = "TQ-1"\nrole = "area_master"\n', 1),
                interval="1h", quantities='["voltage_a"]', extra=PROTECTED))
            daemon = Daemon(load_settings(cfg), notifier=Notifier.from_env({}), align=False)
            run = asyncio.create_task(daemon.run())
            try:
                await until(lambda: daemon.mqtt is not None and daemon.mqtt.commands
                            is not None and daemon.mqtt.conn.connected
                            and daemon.poller is not None
                            and "poll" in daemon.poller.last_cycle)
                via = ["--via", broker.url, "--collector", "relay-gw", "--operator",
                       "alice", "--secrets", str(operator_secrets), "--json"]
                r = await asyncio.to_thread(cli, "trip", "--area", "TQ-1", *via,
                                            "--reason", "arrears", "--yes")
                assert r.exit_code == 0, r.output
                got = {x["meter"]: x["status"]
                       for x in map(json.loads, r.output.splitlines())}
                assert got == {"M1": "skipped_protected", "M2": "skipped_protected",
                               "M3": "confirmed"}
                assert not model["M1"].relay_open and not model["M2"].relay_open
                assert model["M3"].relay_open
                r = await asyncio.to_thread(cli, "trip", "M1", *via, "--force",
                                            "--reason", "transformer work, ticket 7")
                assert r.exit_code == 0, r.output
                assert json.loads(r.output.splitlines()[0])["status"] == "confirmed"
                assert model["M1"].relay_open and not model["M2"].relay_open
                await daemon.writer.flush()  # type: ignore[union-attr]
            finally:
                daemon.stop_requested.set()
                assert await asyncio.wait_for(run, 15) == 0
    audit = rows(tmp_path, "SELECT meter, status, detail FROM commands WHERE kind = 'trip' "
                 "AND status != 'sent' ORDER BY id")
    assert [a[:2] for a in audit] == [("M1", "skipped_protected"), ("M2", "skipped_protected"),
                                      ("M3", "confirmed"), ("M1", "confirmed")]
    assert "area master" in json.loads(audit[0][2])["protected"]
    forced = json.loads(audit[3][2])["forced"]
    assert forced == {"by": "alice", "reason": "transformer work, ticket 7",
                      "protected": "area master meter of area TQ-1"}

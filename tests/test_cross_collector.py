"""Two ``amic run`` daemons on one broker, both listing meter M1 on their own simulated
bus: a trip signed for collector A and re-published unchanged to ``amic/B/cmd/relay`` is
refused by B (its meter untouched, the refusal in B's audit and alarms), and the same
document sent to A is executed by A."""

from __future__ import annotations

import asyncio
import json
import signal
import sqlite3
import uuid
from pathlib import Path
from typing import Any

import aiomqtt
from click.testing import CliRunner
from conftest import until
from daemonproc import Daemon
from mosquitto import Broker

from collector.cli import main
from collector.commands.signing import sign
from simulators.bus import BusServer
from simulators.dlt645 import make_meters

KEY_HEX = "5f3a9c0e7b214d6a8e1f0c3b5a7d9e2f"
SECRETS = f"""
[default]
password = "02000000"

[operators.alice]
operator_code = "0000A11C"
key = "hex:{KEY_HEX}"
"""

CONFIG = """
[collector]
id = "{cid}"
data_dir = "data-{cid}"
commit_interval = "100ms"

[mqtt]
url = "{url}"

[commands]
secrets_file = "secrets.toml"
verify_timeout = "3s"
poll_interval = "100ms"

[[bus]]
name = "conc-1"
type = "tcp"
host = "127.0.0.1"
port = {port}
td_ms = 300

[[meter]]
meter_id = "M1"
address = "000000000001"
bus = "conc-1"
area = "TQ-1"

[schedule.poll]
interval = "1h"
quantities = ["voltage_a"]
"""


async def ask(port: int, cid: str, doc: dict[str, Any]) -> dict[str, Any]:
    """Publish ``doc`` to ``amic/<cid>/cmd/relay`` and return the reply.

    Published again (same request id: answered, never executed twice) while there is no
    reply: a daemon that has just connected may not have its subscription yet.
    """
    rid = doc["request_id"]
    async with aiomqtt.Client("127.0.0.1", port) as c:
        await c.subscribe(f"amic/{cid}/reply/{rid}", qos=1)

        async def first() -> dict[str, Any]:
            async for m in c.messages:
                return json.loads(bytes(m.payload))  # type: ignore[arg-type,no-any-return]
            raise AssertionError("no reply")

        reply = asyncio.ensure_future(first())
        try:
            for _ in range(10):
                await c.publish(f"amic/{cid}/cmd/relay", json.dumps(doc), qos=1)
                done, _ = await asyncio.wait({reply}, timeout=2.0)
                if done:
                    return reply.result()
        finally:
            reply.cancel()
    raise AssertionError("no reply")


def denied_rows(db: Path) -> list[tuple[Any, ...]]:
    if not db.exists():
        return []
    with sqlite3.connect(db) as c:
        return c.execute("SELECT meter, kind, operator, status, detail FROM commands "
                         "WHERE status = 'denied'").fetchall()


async def test_a_trip_signed_for_one_collector_is_refused_by_another(tmp_path: Path) -> None:
    (tmp_path / "secrets.toml").write_text(SECRETS)
    (tmp_path / "secrets.toml").chmod(0o600)
    meters = {cid: make_meters(["000000000001"]) for cid in ("gw-A", "gw-B")}
    model = {cid: m[0].model for cid, m in meters.items()}
    daemons: dict[str, Daemon] = {}
    with Broker(tmp_path / "broker") as broker:
        servers = {cid: BusServer(m, baud=19200, td=0.005) for cid, m in meters.items()}
        async with servers["gw-A"], servers["gw-B"]:
            cfgs: dict[str, Path] = {}
            try:
                for cid, server in servers.items():
                    cfg = cfgs[cid] = tmp_path / f"{cid}.toml"
                    cfg.write_text(CONFIG.format(cid=cid, url=broker.url, port=server.port))
                    daemons[cid] = Daemon(cfg, tmp_path, name=cid)
                for d in daemons.values():
                    await asyncio.to_thread(d.wait_for, "READY=1")
                    await asyncio.to_thread(d.wait_log, "command channel: serving")
                rid = f"x-{uuid.uuid4().hex}"
                doc = sign({"request_id": rid, "command": "relay", "action": "trip",
                            "meters": ["M1"], "reason": "arrears 4711"}, "alice",
                           bytes.fromhex(KEY_HEX), collector="gw-A")
                # Re-published unchanged to B: refused, B's meter untouched.
                reply = await ask(broker.port, "gw-B", doc)
                assert reply["status"] == "error", reply
                assert reply["refusal"] == "wrong_collector"
                assert '"gw-A"' in reply["error"] and '"gw-B"' in reply["error"]
                assert not model["gw-B"].relay_open
                # The refusal is in B's audit: reason and claimed operator.
                db_b = tmp_path / "data-gw-B" / "amic.db"
                await until(lambda: denied_rows(db_b) != [], 10)
                ((meter, kind, operator, status, detail),) = denied_rows(db_b)
                assert (meter, kind, operator, status) == ("M1", "trip", "alice", "denied")
                assert json.loads(detail)["refusal"] == "wrong_collector"
                assert doc["signature"] not in detail
                r = await asyncio.to_thread(CliRunner().invoke, main,
                                            ["audit", "--config", str(cfgs["gw-B"])])
                assert r.exit_code == 0, r.output
                (line,) = [x for x in r.output.splitlines() if "denied" in x]
                assert "M1" in line and "alice" in line and "wrong_collector" in line
                r = await asyncio.to_thread(CliRunner().invoke, main,
                                            ["events", "--config", str(cfgs["gw-B"]),
                                             "--alarms"])
                assert r.exit_code == 0 and "command_refused" in r.output, r.output
                # The same document sent to A, the collector it was signed for: executed.
                reply = await ask(broker.port, "gw-A", doc)
                assert reply["status"] == "ok", reply
                assert [x["status"] for x in reply["results"]] == ["confirmed"]
                assert model["gw-A"].relay_open and not model["gw-B"].relay_open
                assert denied_rows(tmp_path / "data-gw-A" / "amic.db") == []
            finally:
                for d in daemons.values():
                    await asyncio.to_thread(d.stop, signal.SIGTERM)
    for d in daemons.values():
        assert KEY_HEX not in d.log.read_text()

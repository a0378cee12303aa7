"""Two ``amic run`` daemons of one fleet (``[mqtt] fleet``) on one broker, with the same
concentrator configured: it logs in to one, moves to the other mid-run, and reads and a
trip addressed to the fleet (no collector named) reach the daemon holding its session,
once; a request sent while it is between daemons is taken over by the one it logs in to;
a stale session on the old daemon is dropped for the newer login."""

from __future__ import annotations

import asyncio
import json
import signal
import sqlite3
import time
import uuid
from pathlib import Path
from typing import Any

import aiomqtt
from click.testing import CliRunner
from conftest import free_port, until
from daemonproc import Daemon
from mosquitto import Broker

from collector.cli import main
from collector.commands.signing import sign
from simulators.concentrator import ConcentratorSimulator, meter_address

KEY_HEX = "5f3a9c0e7b214d6a8e1f0c3b5a7d9e2f"
SECRETS = f"""
[default]
password = "02000000"

[operators.alice]
operator_code = "0000A11C"
key = "hex:{KEY_HEX}"
"""
A1, A2 = "4403", 1
KEY = "44030001"  # the terminal's topic level: A1 and A2 in hex
FLEET = "north"


def config(cid: str, url: str, port: int) -> str:
    meters = "".join(f'\n[[meter]]\nmeter_id = "C-M{pn}"\naddress = "{meter_address(A2, pn)}"'
                     f'\nbus = "tq-1"\npn = {pn}\narea = "TQ-1"\n' for pn in (1, 2))
    return f"""
[collector]
id = "{cid}"
data_dir = "data-{cid}"
commit_interval = "100ms"

[mqtt]
url = "{url}"
fleet = "{FLEET}"
fleet_hold = "4s"

[commands]
secrets_file = "secrets.toml"
min_interval = "0s"
verify_timeout = "3s"
poll_interval = "100ms"

[[listener]]
name = "dialin"
listen = "127.0.0.1:{port}"
protocol = "3761"
request_timeout = "2s"

[[concentrator]]
name = "tq-1"
a1 = "{A1}"
a2 = {A2}
listener = "dialin"
{meters}
[schedule.poll]
interval = "1s"
quantities = ["voltage_a"]
"""


def query(tmp: Path, cid: str, sql: str, *args: object) -> list[tuple[Any, ...]]:
    db = tmp / f"data-{cid}" / "amic.db"
    if not db.exists():
        return []
    with sqlite3.connect(db) as c:
        return list(c.execute(sql, args).fetchall())


def journaled(tmp: Path, cid: str, rid: str) -> list[tuple[Any, ...]]:
    return query(tmp, cid, "SELECT kind, status FROM commands WHERE command_id = ?", rid)


class Owners:
    """The retained ``amic/terminals/+`` as a client of the broker sees them."""

    def __init__(self) -> None:
        self.seen: dict[str, dict[str, Any] | None] = {}

    async def follow(self, port: int) -> None:
        async with aiomqtt.Client("127.0.0.1", port) as c:
            await c.subscribe("amic/terminals/+", qos=1)
            async for m in c.messages:
                payload = bytes(m.payload)
                self.seen[str(m.topic).rsplit("/", 1)[-1]] = \
                    json.loads(payload) if payload else None

    def owner(self) -> str | None:
        doc = self.seen.get(KEY)
        return str(doc["instance"]) if doc else None


async def ask(port: int, command: str, doc: dict[str, Any], *, publish: bool = True,
              timeout: float = 20.0) -> dict[str, Any]:
    """Publish ``doc`` to ``amic/<fleet>/cmd/<command>``; the first reply."""
    rid = doc["request_id"]
    async with aiomqtt.Client("127.0.0.1", port) as c:
        await c.subscribe(f"amic/{FLEET}/reply/{rid}", qos=1)
        if publish:
            await c.publish(f"amic/{FLEET}/cmd/{command}", json.dumps(doc), qos=1)
        async with asyncio.timeout(timeout):
            async for m in c.messages:
                return json.loads(bytes(m.payload))  # type: ignore[no-any-return]
    raise AssertionError("no reply")


def read_doc(meter: str = "C-M1") -> dict[str, Any]:
    return {"request_id": f"r-{uuid.uuid4().hex}", "command": "read", "meter": meter,
            "quantities": ["voltage_a"]}


async def test_a_fleet_follows_its_concentrator_from_one_daemon_to_the_other(
        tmp_path: Path) -> None:
    (tmp_path / "secrets.toml").write_text(SECRETS)
    (tmp_path / "secrets.toml").chmod(0o600)
    ports = {"gw-A": free_port(), "gw-B": free_port()}
    daemons: dict[str, Daemon] = {}
    owners = Owners()
    with Broker(tmp_path / "broker") as broker:
        follow = asyncio.ensure_future(owners.follow(broker.port))
        sim = ConcentratorSimulator("127.0.0.1", ports["gw-A"], a1=A1, a2=A2, meters=2,
                                    seed=3, reconnect_delay=0.3)
        twin: ConcentratorSimulator | None = None
        try:
            for cid, port in ports.items():
                cfg = tmp_path / f"{cid}.toml"
                cfg.write_text(config(cid, broker.url, port))
                daemons[cid] = Daemon(cfg, tmp_path, name=cid)
            for d in daemons.values():
                await asyncio.to_thread(d.wait_for, "READY=1", 20.0)
                await asyncio.to_thread(d.wait_log, f"fleet {FLEET}: serving")

            # 1. It logs in to A: A announces it, and a fleet read is answered by A.
            sim.start()
            await until(lambda: owners.owner() == "gw-A", 15, what=lambda: owners.seen)
            announced = owners.seen[KEY]
            assert announced is not None and announced["concentrator"] == "tq-1"
            doc = read_doc()
            reply = await ask(broker.port, "read", doc)
            assert reply["status"] == "ok", reply
            assert reply["collector"] == "gw-A"
            assert [r["quantity"] for r in reply["readings"]] == ["voltage_a"]
            assert journaled(tmp_path, "gw-A", doc["request_id"]) == [("read", "done")]
            # ... through the CLI too, naming the fleet, not a collector
            r = await asyncio.to_thread(
                CliRunner().invoke, main, ["read", "--via", broker.url, "--fleet", FLEET,
                                           "--meter", "C-M2", "voltage_a"])
            assert r.exit_code == 0, r.output
            assert "voltage_a" in r.output
            assert journaled(tmp_path, "gw-B", doc["request_id"]) == []

            # 2. It moves to B: B announces it, B polls its meters, A stops polling them.
            moved_at = int(time.time() * 1000)
            sim.move("127.0.0.1", ports["gw-B"])
            await until(lambda: owners.owner() == "gw-B", 15, what=lambda: owners.seen)
            await until(lambda: query(tmp_path, "gw-B", "SELECT count(*) FROM readings "
                                      "WHERE meter = 'C-M1' AND ts > ?", moved_at)[0][0] > 0,
                        15)
            # A's cycles that start once B holds it plan none of its meters: they are
            # not failures of A's (no bus_down after the move, no read-success loss).
            announced_at = int(time.time() * 1000)
            await asyncio.sleep(3)  # a few of A's poll cycles
            cycles = query(tmp_path, "gw-A", "SELECT planned, failed FROM cycles WHERE "
                                             "started > ? + 1000", announced_at)
            assert cycles and all(c == (0, 0) for c in cycles), cycles
            assert query(tmp_path, "gw-A", "SELECT count(*) FROM events WHERE kind = "
                                           "'bus_down' AND ts > ? + 1000",
                         announced_at) == [(0,)]
            assert query(tmp_path, "gw-A", "SELECT count(*) FROM events WHERE kind = "
                                           "'concentrator_offline'") == [(1,)]

            # 3. A trip signed for the fleet: executed once, by B, and confirmed.
            model = sim.meter(1)
            assert model is not None and not model.model.relay_open
            trip = sign({"request_id": f"t-{uuid.uuid4().hex}", "command": "relay",
                         "action": "trip", "meters": ["C-M1"], "reason": "arrears 4711"},
                        "alice", bytes.fromhex(KEY_HEX), collector=FLEET)
            reply = await ask(broker.port, "relay", trip)
            assert reply["status"] == "ok", reply
            assert reply["collector"] == "gw-B"
            assert [x["status"] for x in reply["results"]] == ["confirmed"]
            assert model.model.relay_open
            # The repeat (same request id) is answered again, not executed again.
            again = await ask(broker.port, "relay", trip)
            assert again == reply
            rid = trip["request_id"]
            # B's journal has the request once and its audit the trip once; A has neither
            assert journaled(tmp_path, "gw-B", rid) == [("relay", "done")]
            assert journaled(tmp_path, "gw-B", f"{rid}/C-M1") == [("trip", "confirmed")]
            assert query(tmp_path, "gw-B", "SELECT count(*) FROM commands WHERE "
                                           "kind = 'trip'") == [(1,)]
            assert journaled(tmp_path, "gw-A", rid) == []
            assert query(tmp_path, "gw-A", "SELECT count(*) FROM commands WHERE "
                                           "kind = 'trip'") == [(0,)]
            # a trip signed for one collector is refused when sent to the fleet
            forged = sign({"request_id": f"t-{uuid.uuid4().hex}", "command": "relay",
                           "action": "restore", "meters": ["C-M1"], "reason": "x"},
                          "alice", bytes.fromhex(KEY_HEX), collector="gw-B")
            reply = await ask(broker.port, "relay", forged)
            assert reply["status"] == "error" and reply["refusal"] == "wrong_collector"
            assert model.model.relay_open

            # 4. Between daemons: a read sent while it is offline is held, then run by
            # the daemon it logs in to (A), once.
            await sim.stop()
            await until(lambda: owners.owner() is None, 15, what=lambda: owners.seen)
            held = read_doc("C-M2")
            pending = asyncio.ensure_future(ask(broker.port, "read", held))
            await asyncio.sleep(1.0)
            sim.host, sim.port = "127.0.0.1", ports["gw-A"]
            sim.start()
            reply = await pending
            assert reply["status"] == "ok", reply
            assert reply["collector"] == "gw-A"
            assert journaled(tmp_path, "gw-A", held["request_id"]) == [("read", "done")]
            assert journaled(tmp_path, "gw-B", held["request_id"]) == []

            # 5. A second connection of the same terminal to B (A's looks alive): the
            # newer login wins, A drops its stale session.
            twin = ConcentratorSimulator("127.0.0.1", ports["gw-B"], a1=A1, a2=A2,
                                         meters=2, seed=3, reconnect_delay=30)
            await until(lambda: owners.owner() == "gw-A", 5)
            twin.start()
            await until(lambda: owners.owner() == "gw-B", 15, what=lambda: owners.seen)
            await asyncio.to_thread(daemons["gw-A"].wait_log, "logged in to collector gw-B")
            await sim.stop()
            await asyncio.sleep(1.5)
            assert owners.owner() == "gw-B"

            # 6. Nobody holds it: the request is answered as not carried out.
            await twin.stop()
            await until(lambda: owners.owner() is None, 15, what=lambda: owners.seen)
            lost = read_doc()
            reply = await ask(broker.port, "read", lost)
            assert reply["status"] == "error"
            assert "not logged in to any collector of fleet north" in reply["error"]
        finally:
            await sim.stop()
            if twin is not None:
                await twin.stop()
            for d in daemons.values():
                await asyncio.to_thread(d.stop, signal.SIGTERM)
            follow.cancel()
    for d in daemons.values():
        log = d.log.read_text()
        assert "Traceback" not in log, log
        assert KEY_HEX not in log

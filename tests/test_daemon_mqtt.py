"""The daemon with a real mosquitto: gateway reports, polling through a gateway, the
command channel (``amic read --via``), and a broker restart in the middle."""

from __future__ import annotations

import asyncio
import json
import sqlite3
import uuid
from pathlib import Path

import aiomqtt
from click.testing import CliRunner
from conftest import until
from mosquitto import Broker

from collector.cli import main
from collector.config import load_settings
from collector.service.daemon import Daemon
from collector.service.notify import Notifier
from simulators.gateway import GatewaySimulator

CONFIG = """
[collector]
id = "tq-gw"
data_dir = "data"
commit_interval = "100ms"

[mqtt]
url = "{url}"

[[gateway]]
name = "gw-01"

[[bus]]
name = "gw-01-line"
type = "mqtt"
gateway = "gw-01"
td_ms = 3000

[[meter]]
meter_id = "M1"
address = "000000000001"
bus = "gw-01-line"
area = "TQ-9"

[[meter]]
meter_id = "M2"
address = "000000000002"
bus = "gw-01-line"
area = "TQ-9"

[schedule.poll]
interval = "1h"
quantities = ["energy_active_forward_total", "voltage_a"]
"""


def _rows(tmp: Path, sql: str) -> list[tuple[object, ...]]:
    with sqlite3.connect(tmp / "data" / "amic.db") as c:
        return c.execute(sql).fetchall()


async def test_reports_polling_commands_and_broker_restart(tmp_path: Path) -> None:
    with Broker(tmp_path / "broker") as broker:
        cfg = tmp_path / "amic.toml"
        cfg.write_text(CONFIG.format(url=broker.url))
        gw = GatewaySimulator(broker.url, gateway="gw-01", meters=2, interval=0.5)
        daemon = Daemon(load_settings(cfg), notifier=Notifier.from_env({}), align=False)
        async with gw:
            run = asyncio.create_task(daemon.run())
            try:
                # 1. Polling through the gateway's transparent transport.
                await until(lambda: daemon.poller is not None
                             and "poll" in daemon.poller.last_cycle)
                assert daemon.poller is not None
                cycle = daemon.poller.last_cycle["poll"]
                assert (cycle.succeeded, cycle.failed) == (2, 0)
                # 2. Reports, and a bad payload kept as a reject.
                async with aiomqtt.Client("127.0.0.1", broker.port) as c:
                    await c.publish("amic-gw/gw-01/report", b"{not json", qos=1)
                    await c.publish("amic-gw/gw-01/report", json.dumps(
                        {"gateway": "gw-01", "meter": "M9", "values": {"voltage_a": 1}}),
                        qos=1)
                await until(lambda: daemon.mqtt is not None and daemon.mqtt.ingestor
                             is not None and daemon.mqtt.ingestor.accepted > 0
                             and sum(daemon.mqtt.ingestor.counts.values()) >= 2)
                # 3. A remote read through the command channel, from the CLI.
                result = await asyncio.to_thread(
                    CliRunner().invoke, main,
                    ["read", "--via", broker.url, "--collector", "tq-gw", "--meter", "M2",
                     "--json", "voltage_a", "frequency"])
                assert result.exit_code == 0, result.output
                doc = [json.loads(line) for line in result.stdout.splitlines()]
                values = {r["name"] if "name" in r else r["quantity"]: r["value"]
                          for r in doc}
                assert 190 < values["voltage_a"] < 250 and 49 < values["frequency"] < 51
                # 4. Broker restart: a QoS 1 command published while the daemon is away
                # is delivered after it reconnects, executed once, answered (twice asked).
                broker.stop()
                await asyncio.sleep(0.5)
                assert daemon.mqtt is not None and not daemon.mqtt.conn.connected
                broker.start()
                rid = f"restart-{uuid.uuid4().hex}"
                request = json.dumps({"request_id": rid, "command": "read", "meter": "M1",
                                      "quantities": ["voltage_a"]})
                replies: list[dict[str, object]] = []
                async with aiomqtt.Client("127.0.0.1", broker.port) as c:
                    await c.subscribe(f"amic/tq-gw/reply/{rid}", qos=1)
                    await c.publish("amic/tq-gw/cmd/read", request, qos=1)
                    loop = asyncio.get_running_loop()
                    t0 = loop.time()
                    async with asyncio.timeout(15):
                        async for m in c.messages:
                            replies.append(json.loads(bytes(m.payload)))
                            if len(replies) == 1:
                                reconnect = loop.time() - t0
                                await c.publish("amic/tq-gw/cmd/read", request, qos=1)
                            else:
                                break
                assert reconnect < 5.0
                assert replies[0] == replies[1] and replies[0]["status"] == "ok"
                commands = daemon.mqtt.commands
                assert commands is not None
                # The CLI's read and this one executed; the repeat only answered.
                assert commands.stats.executed == 2 and commands.stats.duplicates >= 1
            finally:
                daemon.stop_requested.set()
                assert await asyncio.wait_for(run, 15) == 0
    stored = _rows(tmp_path, "SELECT meter, quantity, value FROM readings")
    assert {("M1", "voltage_a"), ("M2", "voltage_a")} <= {(m, q) for m, q, _ in stored}
    rejects = _rows(tmp_path, "SELECT detail FROM events WHERE kind = 'report_rejected'")
    assert len(rejects) >= 2
    executed = _rows(tmp_path, f"SELECT status FROM commands WHERE command_id = '{rid}'")
    assert executed == [("done",)]  # journaled once: the repeat was answered, not re-run
    # A broker with persistence kept the session through its restart: no alarm.
    assert daemon.mqtt.conn.session_present is True and daemon.mqtt.conn.sessions_lost == 0
    assert _rows(tmp_path, "SELECT * FROM events WHERE kind = 'broker_session_lost'") == []


NO_PERSISTENCE = """
[collector]
id = "tq-np"
data_dir = "data"
commit_interval = "100ms"

[mqtt]
url = "{url}"

[[bus]]
name = "rs485-1"
type = "tcp"
host = "127.0.0.1"
port = {port}

[[meter]]
meter_id = "M1"
address = "000000000001"
bus = "rs485-1"

[schedule.poll]
interval = "1h"
quantities = ["voltage_a"]
"""


async def test_broker_restarted_without_persistence_is_an_alarm(tmp_path: Path) -> None:
    """mosquitto's default config keeps sessions in memory only: after its restart the
    daemon's reconnection finds no session (queued QoS 1 commands lost), and says so;
    also when the broker restarted while the daemon was stopped (data_dir remembers
    that the broker had a session of ours)."""
    from conftest import free_port

    with Broker(tmp_path / "broker", persistence=False) as broker:
        cfg = tmp_path / "amic.toml"
        cfg.write_text(NO_PERSISTENCE.format(url=broker.url, port=free_port()))
        for restart_while in ("running", "stopped"):
            daemon = Daemon(load_settings(cfg), notifier=Notifier.from_env({}), align=False)
            run = asyncio.create_task(daemon.run())
            try:
                await until(lambda d=daemon: d.mqtt is not None  # type: ignore[misc]
                            and d.mqtt.conn.connected)
                assert daemon.mqtt is not None
                conn = daemon.mqtt.conn
                if restart_while == "running":
                    assert conn.sessions_lost == 0  # the first start: nothing to compare
                    await asyncio.to_thread(broker.restart, down_for=0.2)
                    await until(lambda c=conn: c.connects == 2 and c.connected)  # type: ignore[misc]
                assert conn.sessions_lost == 1
            finally:
                daemon.stop_requested.set()
                assert await asyncio.wait_for(run, 15) == 0
            if restart_while == "running":
                await asyncio.to_thread(broker.restart)
    lost = _rows(tmp_path, "SELECT severity, detail FROM events "
                           "WHERE kind = 'broker_session_lost'")
    assert len(lost) == 2 and {severity for severity, _ in lost} == {2}
    assert broker.url in str(lost[0][1]) and "persistence true" in str(lost[0][1])

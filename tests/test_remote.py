"""The MQTT command channel (collector.commands.remote) and ``amic read --via``, on a real
mosquitto."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import subprocess
import time
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import aiomqtt
import pytest
from click.testing import CliRunner, Result
from conftest import amic_command
from mosquitto import MOSQUITTO, PASSWORD, USER, Broker

from collector.cli import main
from collector.commands.remote import (
    DENIED,
    DOCUMENT,
    DONE,
    RECEIVED,
    CommandDenied,
    CommandError,
    CommandServer,
    Journal,
    MemoryJournal,
    StoreJournal,
    read_executor,
    reply_topic,
    request_topic,
)
from collector.config.settings import MeterSettings
from collector.polling.scheduler import BusWorker
from collector.store import Store, StoreWriter
from collector.store.records import CommandRecord, Reading, utcnow
from drivers.mqtt import MqttConnection
from drivers.tcp import TcpBus
from simulators.bus import BusServer
from simulators.dlt645 import make_meters

pytestmark = pytest.mark.skipif(not Path(MOSQUITTO).exists(), reason="mosquitto not installed")

CID = f"gw-test-{uuid.uuid4().hex[:8]}"  # unique: brokers of parallel runs may swap ports
T0 = "2024-05-06T12:34:56+00:00"


class FakeMeters:
    """``execute`` of the server: counts calls; ``gate`` holds them until set."""

    def __init__(self) -> None:
        self.calls: list[dict[str, Any]] = []
        self.gate: asyncio.Event | None = None

    async def __call__(self, request: dict[str, Any]) -> dict[str, Any]:
        self.calls.append(request)
        if self.gate is not None:
            await self.gate.wait()
        if request["meter"] != "M0001":
            raise CommandError(f"meter {request['meter']} is not configured")
        values = {"voltage_a": (220.1, "V"), "energy_active_forward_total": (1234.56, "kWh"),
                  "status_word_3": (336.0, "")}
        names = [q for q in request["quantities"] if q in values]
        if "energy" in request["quantities"]:
            names.append("energy_active_forward_total")
        return {"readings": [{"meter": "M0001", "quantity": q, "value": values[q][0],
                              "unit": values[q][1], "ts": T0} for q in names]}


@pytest.fixture(scope="module")
def broker(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Broker]:
    with Broker(tmp_path_factory.mktemp("mosquitto")) as b:
        yield b


@contextlib.asynccontextmanager
async def serving(url: str, execute: FakeMeters, journal: Journal, *,
                  client_id: str | None = None, reconnect_min: float = 0.1,
                  **kwargs: Any) -> AsyncIterator[tuple[CommandServer, MqttConnection]]:
    """A command server on a persistent session, subscribed before it is yielded.

    A fresh client id unless given: an earlier test's session would hold (and deliver)
    the requests other tests published while it was away.
    """
    client_id = client_id or f"amic-test-{uuid.uuid4().hex[:8]}"
    async with MqttConnection(url, client_id=client_id, clean_session=False,
                              reconnect_min=reconnect_min) as conn:
        await conn.wait_connected(5)
        server = CommandServer(conn, CID, execute, journal, **kwargs)
        await server.start()  # SUBACK
        try:
            yield server, conn
        finally:
            await server.close()


@contextlib.asynccontextmanager
async def requester(broker: Broker) -> AsyncIterator[aiomqtt.Client]:
    async with aiomqtt.Client("127.0.0.1", broker.port,
                              identifier=f"req-{uuid.uuid4().hex[:8]}") as c:
        await c.subscribe(f"amic/{CID}/reply/#", qos=1)
        yield c


async def replies(client: aiomqtt.Client, n: int, timeout: float = 5.0
                  ) -> list[tuple[str, bytes]]:
    out: list[tuple[str, bytes]] = []

    async def collect() -> None:
        async for m in client.messages:
            assert isinstance(m.payload, bytes)
            out.append((str(m.topic), m.payload))
            if len(out) >= n:
                return

    await asyncio.wait_for(collect(), timeout)
    return out


async def no_more(client: aiomqtt.Client, wait: float = 0.3) -> None:
    with contextlib.suppress(TimeoutError):
        extra = await replies(client, 1, wait)
        raise AssertionError(f"unexpected reply {extra}")


def request(rid: str, meter: str = "M0001", **extra: Any) -> bytes:
    doc = {"request_id": rid, "command": "read", "meter": meter,
           "quantities": ["voltage_a", "energy"], **extra}
    return json.dumps(doc).encode()


async def amic(*args: str, env: dict[str, str] | None = None) -> Result:
    """``amic ARGS`` in a thread (it runs its own event loop)."""
    return await asyncio.to_thread(CliRunner().invoke, main, list(args), env=env)


def one_error_line(r: Result) -> str:
    assert r.exception is None or isinstance(r.exception, SystemExit), r.exception
    assert r.stdout == ""
    lines = r.stderr.splitlines()
    assert len(lines) == 1, r.stderr
    assert "Traceback" not in r.stderr
    return lines[0]


# ---- the CLI through the channel ---------------------------------------------------------

async def test_cli_reads_through_the_collector(broker: Broker) -> None:
    execute = FakeMeters()
    async with serving(broker.url, execute, MemoryJournal()):
        r = await amic("read", "--via", broker.url, "--collector", CID, "--meter", "M0001",
                       "voltage_a", "energy", "status_word_3")
        assert r.exit_code == 0, r.output
        rows = [line.split() for line in r.stdout.splitlines()]
        assert rows == [["QUANTITY", "VALUE", "UNIT"], ["voltage_a", "220.1", "V"],
                        ["status_word_3", "0x0150"],
                        ["energy_active_forward_total", "1234.56", "kWh"]]
        r = await amic("read", "--via", broker.url, "--collector", CID, "--meter", "M0001",
                       "--json", "VOLTAGE_A")
        assert r.exit_code == 0, r.output
        doc = json.loads(r.stdout)  # one reading: one line
        assert doc == {"collector": CID, "meter": "M0001", "request_id": doc["request_id"],
                       "quantity": "voltage_a", "value": 220.1, "unit": "V", "ts": T0}
    assert len(execute.calls) == 2
    assert execute.calls[1]["quantities"] == ["voltage_a"]
    assert execute.calls[1]["request_id"] == doc["request_id"]


async def test_cli_error_reply_and_no_reply_exit_1_with_one_line(broker: Broker) -> None:
    async with serving(broker.url, FakeMeters(), MemoryJournal()):
        r = await amic("read", "--via", broker.url, "--collector", CID, "--meter", "M0404",
                       "voltage")
    assert r.exit_code == 1
    assert one_error_line(r) == f"amic read: collector {CID}: meter M0404 is not configured"
    # Nobody serves this collector: every attempt times out.
    t0 = time.monotonic()
    r = await amic("read", "--via", broker.url, "--collector", "nobody", "--meter", "M0001",
                   "--timeout-ms", "200", "--retries", "1", "voltage")
    assert r.exit_code == 1
    line = one_error_line(r)
    assert line.startswith("amic read: collector nobody: no reply within 0.2 s (2 attempts, "
                           "request "), line
    assert line.endswith("is the collector running and connected to this broker?")
    assert time.monotonic() - t0 < 5


async def test_cli_broker_down_and_bad_arguments() -> None:
    from conftest import free_port
    url = f"mqtt://127.0.0.1:{free_port()}"
    r = await amic("read", "--via", url, "--collector", CID,
                   "--meter", "M0001", "--timeout-ms", "300", "--retries", "0", "voltage")
    assert r.exit_code == 1
    line = one_error_line(r)
    assert line.startswith(f"amic read: {url}: not connected within 0.3 s (last error: "
                           "cannot connect: "), line
    for args, message in [
        (["--via", "http://x:1"], "--via: MQTT URL 'http://x:1': scheme 'http' is not "
                                  "mqtt or mqtts"),
        (["--via", "mqtt://x:1", "--collector", CID, "--meter", "M1", "--ca-file",
          __file__], "--ca-file: only with an mqtts:// broker"),
        (["--via", "mqtt://x:1", "--meter", "M1"], "--via needs --collector ID"),
        (["--via", "mqtt://x:1", "--collector", CID], "--via needs --meter METER_ID"),
        (["--via", "mqtt://x:1", "--collector", CID, "--meter", "M1", "--target",
          "tcp://h:1"], "--via reads through a collector"),
        (["--via", "mqtt://x:1", "--collector", "a/b", "--meter", "M1"], "--collector"),
        (["--via", "mqtt://x:1", "--collector", CID, "--meter", "M1", "--username", "u",
          "--password-file", "/nonexistent/pw"], "--password-file /nonexistent/pw"),
        (["--target", "tcp://h:1", "--address", "1", "--meter", "M1"],
         "--meter: only with --via"),
        (["--address", "1"], "missing --target URL"),
    ]:
        r = await amic("read", *args, "voltage")
        assert r.exit_code == 2, (args, r.output)
        assert one_error_line(r).startswith(f"amic read: {message}"), (args, r.stderr)
    r = await amic("read", "--via", "mqtt://x:1", "--collector", CID, "--meter", "M1",
                   "02010100")
    assert r.exit_code == 2
    assert "raw DIs need --target" in one_error_line(r)


async def test_cli_password_from_a_file_or_the_environment(tmp_path: Path) -> None:
    with Broker(tmp_path / "b", password=True) as b:
        pw = tmp_path / "pw"
        pw.write_text(PASSWORD + "\n")
        execute = FakeMeters()
        async with MqttConnection(b.url, client_id="amic-pw-collector", username=USER,
                                  password=PASSWORD, clean_session=False) as conn:
            await conn.wait_connected(5)
            server = CommandServer(conn, CID, execute, MemoryJournal())
            await server.start()
            r = await amic("read", "--via", b.url, "--collector", CID, "--meter", "M0001",
                           "--username", USER, "--password-file", str(pw), "voltage_a")
            assert r.exit_code == 0, r.output
            r = await amic("read", "--via", b.url, "--collector", CID, "--meter", "M0001",
                           "--username", USER, "voltage_a",
                           env={"AMIC_MQTT_PASSWORD": PASSWORD})
            assert r.exit_code == 0, r.output
            # The real process, as an operator runs it: one line, no password, no traceback.
            env = dict(os.environ, AMIC_MQTT_PASSWORD="wrong-" + PASSWORD)
            p = await asyncio.to_thread(
                subprocess.run, [*amic_command(), "read", "--via", b.url, "--collector", CID,
                                 "--meter", "M0001", "--username", USER, "--retries", "0",
                                 "--timeout-ms", "500", "voltage_a"],
                capture_output=True, text=True, env=env, timeout=20)
            assert p.returncode == 1 and p.stdout == ""
            assert p.stderr == (f"amic read: {b.url}: not connected within 0.5 s: connection "
                                "refused by the broker: Not authorized (code 135)\n")
            await server.close()
        assert len(execute.calls) == 2


# ---- idempotency and validation ------------------------------------------------------------

async def test_a_repeated_request_is_executed_once_and_answered_the_same(
        broker: Broker) -> None:
    execute = FakeMeters()
    async with serving(broker.url, execute, MemoryJournal()) as (server, _), \
            requester(broker) as c:
        rid = str(uuid.uuid4())
        await c.publish(request_topic(CID, "read"), request(rid), qos=1)
        first = await replies(c, 1)
        await c.publish(request_topic(CID, "read"), request(rid), qos=1)
        second = await replies(c, 1)
        assert first == second
        assert first[0][0] == reply_topic(CID, rid)
        doc = json.loads(first[0][1])
        assert doc["status"] == "ok" and doc["request_id"] == rid
        assert [r["quantity"] for r in doc["readings"]] == ["voltage_a",
                                                            "energy_active_forward_total"]
        assert len(execute.calls) == 1

        # A repeat while the first one still runs: answered when it is done, both alike.
        execute.gate = asyncio.Event()
        rid2 = str(uuid.uuid4())
        await c.publish(request_topic(CID, "read"), request(rid2), qos=1)
        await c.publish(request_topic(CID, "read"), request(rid2), qos=1)
        deadline = time.monotonic() + 5
        while server.stats.duplicates < 2 and time.monotonic() < deadline:
            await asyncio.sleep(0.01)
        execute.gate.set()
        got = await replies(c, 2)
        assert got[0] == got[1]
        assert json.loads(got[0][1])["request_id"] == rid2
        assert len(execute.calls) == 2
        await no_more(c)
        assert server.stats.duplicates == 2 and server.stats.executed == 2


async def test_invalid_requests(broker: Broker) -> None:
    execute = FakeMeters()
    async with serving(broker.url, execute, MemoryJournal()) as (server, _), \
            requester(broker) as c:
        # Nothing to answer to: counted, logged, no reply.
        for payload in (b"{not json", b"[1, 2]", b'{"command": "read"}',
                        b'{"request_id": "a/b#"}', b"\xff\xfe"):
            await c.publish(request_topic(CID, "read"), payload, qos=1)
        cases: dict[str, tuple[str, dict[str, Any], str]] = {
            "r-unknown": (f"amic/{CID}/cmd/reboot", {"meter": "M1"},
                          "unknown command 'reboot' (known: read)"),
            "r-mismatch": (request_topic(CID, "read"), {"command": "relay"},
                           "command 'relay' does not match the topic ('read')"),
            "r-no-meter": (request_topic(CID, "read"), {"quantities": ["voltage_a"]},
                           "meter: expected a meter id (a non-empty string)"),
            "r-no-q": (request_topic(CID, "read"), {"meter": "M0001", "quantities": []},
                       "quantities: expected a non-empty list of quantity names"),
            "r-loop": (request_topic(CID, "read"), {"meter": "M0001",
                                                    "quantities": ["voltage_a"],
                                                    "reply_to": f"amic/{CID}/cmd/read"},
                       f"reply_to 'amic/{CID}/cmd/read': not a topic the collector may "
                       f"publish to (allowed under: amic/{CID}/reply/)"),
        }
        for rid, (topic, body, _) in cases.items():
            await c.publish(topic, json.dumps({"request_id": rid, **body}), qos=1)
        got = {json.loads(p)["request_id"]: (t, json.loads(p))
               for t, p in await replies(c, len(cases))}
        for rid, (_, _, error) in cases.items():
            topic, doc = got[rid]
            assert topic == reply_topic(CID, rid)
            assert doc == {"request_id": rid, "status": "error", "readings": [],
                           "error": error}
        await no_more(c)
        assert server.stats.rejected == 5
        assert execute.calls == []


async def test_reply_to_is_not_an_open_relay(broker: Broker) -> None:
    """A read answered onto a gateway's RS-485 downlink would put the reply's bytes on
    its bus: reply_to goes only under the collector's reply topics or a configured
    prefix (level by level: ops/replies does not allow ops/replies-x)."""
    execute = FakeMeters()
    async with serving(broker.url, execute, MemoryJournal(),
                       reply_prefixes=("ops/replies",)) as (server, _), \
            requester(broker) as c:
        await c.subscribe("amic-gw/#", qos=1)
        await c.subscribe("ops/#", qos=1)
        for rid, target in (("r-gateway", "amic-gw/gw-01/down"),
                            ("r-sibling", "ops/replies-x/1"),
                            ("r-other-collector", "amic/other/reply/1")):
            await c.publish(request_topic(CID, "read"), request(rid, reply_to=target), qos=1)
            ((topic, payload),) = await replies(c, 1)
            doc = json.loads(payload)
            assert topic == reply_topic(CID, rid)  # the error goes to our own reply topic
            assert doc["status"] == "error" and doc["error"].startswith(
                f"reply_to {target!r}: not a topic the collector may publish to")
            assert "ops/replies/" in doc["error"]
        assert execute.calls == []
        # Its own reply topics and a configured prefix are honoured.
        for rid, target in (("r-own", f"amic/{CID}/reply/elsewhere"),
                            ("r-elsewhere", "ops/replies/1")):
            await c.publish(request_topic(CID, "read"), request(rid, reply_to=target),
                            qos=1)
            ((topic, payload),) = await replies(c, 1)
            assert topic == target and json.loads(payload)["status"] == "ok"
        await no_more(c)
        assert server.stats.errors == 3


async def test_a_retained_request_is_answered_once_not_on_every_resubscription(
        broker: Broker) -> None:
    execute = FakeMeters()
    topic = request_topic(CID, "read")
    async with serving(broker.url, execute, MemoryJournal()), requester(broker) as c:
        await c.publish(topic, request("r-retained"), qos=1, retain=True)
        ((_, payload),) = await replies(c, 1)
        assert json.loads(payload)["status"] == "ok"
        try:
            async with serving(broker.url, execute, MemoryJournal()) as (later, _):
                deadline = time.monotonic() + 5
                while later.stats.rejected < 1 and time.monotonic() < deadline:
                    await asyncio.sleep(0.01)
                assert later.stats.rejected == 1 and later.stats.executed == 0
            await no_more(c)
        finally:
            await c.publish(topic, b"", qos=1, retain=True)  # clear it
    assert len(execute.calls) == 1


async def test_a_signed_command_refused_is_journaled_denied_with_its_claims(
        broker: Broker, tmp_path: Path) -> None:
    """The executor of a signed command gets the document as published (a relay document
    on cmd/topup is not turned away here: the executor refuses it, audited); a refusal
    is journaled "denied" with what the request claimed, never "done", and a repeat gets
    the same reply without running again."""
    calls: list[dict[str, Any]] = []

    async def execute(request: dict[str, Any]) -> dict[str, Any]:
        calls.append(request)
        doc = request[DOCUMENT]
        if doc.get("command") != request["command"]:
            raise CommandDenied("refused: wrong_command", reason="wrong_command",
                                operator=str(doc["operator"])[:64], meter="M0001",
                                kind="trip")
        return {"readings": []}

    store = Store(tmp_path / "amic.db")
    doc = {"request_id": "r-denied", "command": "relay", "action": "trip",
           "meters": ["M0001"], "operator": "m" * 80, "signature": "00" * 32}
    async with StoreWriter(store, commit_interval=0.1) as writer:
        async with serving(broker.url, execute, StoreJournal(store, writer),  # type: ignore[arg-type]
                           commands=("read", "relay", "topup"),
                           signed=("relay", "topup")) as (server, _), requester(broker) as c:
            for _ in range(2):
                await c.publish(request_topic(CID, "topup"), json.dumps(doc), qos=1)
                ((_, payload),) = await replies(c, 1)
                assert json.loads(payload) == {
                    "request_id": "r-denied", "status": "error", "readings": [],
                    "error": "refused: wrong_command", "refusal": "wrong_command"}
            assert len(calls) == 1 and calls[0][DOCUMENT] == doc
            assert calls[0]["command"] == "topup"
            assert (server.stats.denied, server.stats.duplicates) == (1, 1)
        await writer.flush()
    rec = store.command("r-denied")
    assert rec is not None
    assert (rec.status, rec.meter, rec.kind, rec.operator) == (DENIED, "M0001", "trip",
                                                                "m" * 64)
    assert [r["command_id"] for r in store.audit()] == ["r-denied"]
    store.close()


# ---- the store-backed journal ----------------------------------------------------------------

async def test_store_journal_survives_a_restart_and_refuses_to_execute_again(
        broker: Broker, tmp_path: Path) -> None:
    execute = FakeMeters()
    rid = str(uuid.uuid4())
    store = Store(tmp_path / "amic.db")
    async with StoreWriter(store, commit_interval=5.0) as writer, \
            serving(broker.url, execute, StoreJournal(store, writer),
                    client_id="amic-store-collector"), requester(broker) as c:
        await c.publish(request_topic(CID, "read"), request(rid, operator="ops1"), qos=1)
        (first,) = await replies(c, 1)
    store.close()

    store = Store(tmp_path / "amic.db")  # the daemon restarted
    rec = store.command(rid)
    assert rec is not None
    assert (rec.kind, rec.meter, rec.status, rec.operator) == ("read", "M0001", DONE, "ops1")
    assert rec.detail.encode() == first[1]
    async with StoreWriter(store) as writer, \
            serving(broker.url, execute, StoreJournal(store, writer),
                    client_id="amic-store-collector") as (server, _), \
            requester(broker) as c:
        await c.publish(request_topic(CID, "read"), request(rid), qos=1)
        (again,) = await replies(c, 1)
        assert again == first
        assert len(execute.calls) == 1 and server.stats.duplicates == 1

        # Left "received" by a daemon that died mid-way: a read runs again, once.
        journal = StoreJournal(store, writer)
        journal.put("interrupted-read", RECEIVED, "", meter="M0001", kind="read")
        # Another subsystem's command with that id: never overwritten.
        writer.put_command(CommandRecord("relay-1", "M0001", "relay", utcnow(),
                                         status="queued"))
        await writer.flush()
        await c.publish(request_topic(CID, "read"), request("interrupted-read"), qos=1)
        (redo,) = await replies(c, 1)
        assert json.loads(redo[1])["status"] == "ok"
        assert len(execute.calls) == 2
        await c.publish(request_topic(CID, "read"), request("relay-1"), qos=1)
        (clash,) = await replies(c, 1)
        assert json.loads(clash[1])["error"] == "request_id already used by another command"
        assert len(execute.calls) == 2
    rec = store.command("relay-1")
    assert rec is not None and (rec.kind, rec.status) == ("relay", "queued")
    store.close()


async def test_a_non_repeatable_command_interrupted_by_a_restart_is_not_run_again(
        broker: Broker) -> None:
    execute = FakeMeters()
    journal = MemoryJournal()
    journal.put("cut-1", RECEIVED, "", meter="M0001", kind="trip")
    async with serving(broker.url, execute, journal, commands=("read", "trip")), \
            requester(broker) as c:
        await c.publish(request_topic(CID, "trip"),
                        json.dumps({"request_id": "cut-1", "meter": "M0001"}), qos=1)
        ((_, payload),) = await replies(c, 1)
    doc = json.loads(payload)
    assert doc["status"] == "error", doc
    assert "interrupted by a collector restart" in doc["error"]
    assert execute.calls == []
    assert journal.get("cut-1") == (DONE, payload.decode())


# ---- outages ---------------------------------------------------------------------------------

async def test_a_command_sent_while_the_collector_is_away_is_delivered_after(
        tmp_path: Path) -> None:
    execute = FakeMeters()
    with Broker(tmp_path / "b") as b:
        # The collector's client waits 3 s before it reconnects: the broker is back
        # (down for 1 s) well before, so the request below reaches the broker while the
        # collector is still away and waits in its persistent session.
        async with serving(b.url, execute, MemoryJournal(), client_id="amic-restart",
                           reconnect_min=3.0) as (server, conn):
            restarted = asyncio.create_task(asyncio.to_thread(b.restart, down_for=1))
            deadline = time.monotonic() + 5
            while conn.connected and time.monotonic() < deadline:
                await asyncio.sleep(0.02)
            assert not conn.connected
            await restarted
            async with requester(b) as c:
                assert not conn.connected
                rid = str(uuid.uuid4())
                await c.publish(request_topic(CID, "read"), request(rid), qos=1)
                await asyncio.sleep(0.2)
                assert not conn.connected and execute.calls == []
                ((topic, payload),) = await replies(c, 1, timeout=10)
                assert conn.connected
                assert topic == reply_topic(CID, rid)
                assert json.loads(payload)["status"] == "ok"
                await no_more(c)
            assert len(execute.calls) == 1
            assert server.stats.executed == 1 and server.stats.replies == 1


async def test_cli_retries_with_the_same_request_id_until_the_collector_is_back(
        broker: Broker) -> None:
    execute = FakeMeters()
    journal = MemoryJournal()
    client_id = "amic-retry-collector"
    async with serving(broker.url, execute, journal, client_id=client_id):
        pass  # the collector's persistent session now holds its subscription

    async def collector_back_later() -> None:
        await asyncio.sleep(1.2)
        async with serving(broker.url, execute, journal, client_id=client_id) as (server, _):
            await asyncio.sleep(1.0)
            await server.idle()

    back = asyncio.create_task(collector_back_later())
    r = await amic("read", "--via", broker.url, "--collector", CID, "--meter", "M0001",
                   "--timeout-ms", "400", "--retries", "8", "--json", "voltage_a")
    await back
    assert r.exit_code == 0, r.output
    # Several copies of the one request waited in the session: executed once.
    assert len(execute.calls) == 1
    assert execute.calls[0]["request_id"] == json.loads(r.stdout)["request_id"]


# ---- the daemon's executor: an on-demand read on a bus worker -------------------------------

async def test_read_executor_reads_the_meter_on_its_bus(broker: Broker) -> None:
    meters = [MeterSettings("M0001", "000000000001", "b1"),
              MeterSettings("M0002", "000000000002", "b2"),  # b2 is not running
              MeterSettings("M0003", "000000000003", "b1")]  # not on the line
    stored: list[Reading] = []
    line = BusServer(make_meters(["000000000001"], seed=1), baud=19200, td=0.005)
    async with line:
        worker = BusWorker("b1", TcpBus("127.0.0.1", line.port, td=0.3, tb=0.1))
        await worker.start()
        execute = read_executor(meters=lambda: meters, workers=lambda: {"b1": worker},
                                sink=stored.extend, collector_id=CID)
        try:
            async with MqttConnection(broker.url, client_id=f"amic-x-{uuid.uuid4().hex[:8]}",
                                      clean_session=False) as conn, \
                    CommandServer(conn, CID, execute, MemoryJournal()):
                await conn.wait_connected(5)
                base = ("read", "--via", broker.url, "--collector", CID)
                r = await amic(*base, "--meter", "M0001", "--json", "voltage",
                               "energy_active_forward_total")
                assert r.exit_code == 0, r.output
                doc = [json.loads(line) for line in r.stdout.splitlines()]
                assert [(x["quantity"], x["unit"]) for x in doc] == [
                    ("voltage_a", "V"), ("voltage_b", "V"), ("voltage_c", "V"),
                    ("energy_active_forward_total", "kWh")]
                assert all(x["meter"] == "M0001" and isinstance(x["value"], float)
                           for x in doc)
                assert [s.quantity for s in stored] == [x["quantity"] for x in doc]
                for meter, message in [
                        ("M0009", f"meter M0009 is not configured on collector {CID}"),
                        ("M0002", "meter M0002: its bus b2 is not running"),
                        ("M0003", "meter 000000000003: no reply to read voltage_a, "
                                  "voltage_b, voltage_c (block 0201FF00) within 300 ms")]:
                    r = await amic(*base, "--meter", meter, "voltage")
                    assert r.exit_code == 1
                    assert one_error_line(r) == f"amic read: collector {CID}: {message}"
        finally:
            await worker.stop()

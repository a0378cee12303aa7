"""MqttConnection and MqttBus against a real mosquitto broker (tests/mosquitto.py)."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator, Callable, Iterator
from decimal import Decimal
from pathlib import Path

import aiomqtt
import pytest
from fake_dlt645 import FakeMeter, Received, Send, Sleep
from mosquitto import PASSWORD, USER, Broker

from drivers.dlt645 import Dlt645Session
from drivers.errors import BrokerRefused, BusClosed, LinkDown, NoReply, WrongReply
from drivers.mqtt import BrokerUrl, MqttBus, MqttConnection, parse_broker_url
from protocols.dlt645 import DLT645Error, FrameExtractor, decode_message

ADDR = "000000000123"


@pytest.fixture
def broker(tmp_path: Path) -> Iterator[Broker]:
    with Broker(tmp_path / "broker") as b:
        yield b


async def eventually(predicate: Callable[[], bool], timeout: float = 3.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"condition not met within {timeout} s")
        await asyncio.sleep(0.01)


class Inbox:
    """A handler collecting (topic, payload); async so both kinds are exercised."""

    def __init__(self) -> None:
        self.got: list[tuple[str, bytes]] = []

    async def __call__(self, message: aiomqtt.Message) -> None:
        payload = message.payload
        assert isinstance(payload, bytes)
        self.got.append((message.topic.value, payload))


# ---- URL and arguments -----------------------------------------------------------------


def test_parse_broker_url() -> None:
    assert parse_broker_url("mqtt://127.0.0.1:1884") == \
        BrokerUrl("mqtt", "127.0.0.1", 1884, None, None)
    assert parse_broker_url("mqtts://broker.example.net") == ("mqtts", "broker.example.net",
                                                              8883, None, None)
    assert parse_broker_url("mqtt://[::1]:1883/") == ("mqtt", "::1", 1883, None, None)
    for url, part in [("", "empty"), ("tcp://h:1", "scheme 'tcp'"), ("h:1883", "scheme"),
                      ("mqtt://:1883", "host"), ("mqtt://h:99999", "port '99999'"),
                      ("mqtt://h:x", "port 'x'"), ("mqtt://h:0", "port '0'"),
                      ("mqtt://h:1/a", "path '/a'"), ("mqtt://h:1?x=1", "options")]:
        with pytest.raises(ValueError, match=part):
            parse_broker_url(url)
    with pytest.raises(ValueError, match="credentials") as info:
        parse_broker_url("mqtt://amic:s3cret@h:1883")
    assert "s3cret" not in str(info.value)


def test_parse_broker_url_with_credentials() -> None:
    """The one broker URL parser: where credentials are allowed (the simulators) they come
    in the same shape, percent-decoded, and a mistake never shows the password."""
    url = parse_broker_url("mqtt://u:p%40ss@host", credentials=True)
    assert url == BrokerUrl("mqtt", "host", 1883, "u", "p@ss")
    assert (url.username, url.password) == ("u", "p@ss")
    assert parse_broker_url("mqtts://[::1]:8884", credentials=True) == \
        BrokerUrl("mqtts", "::1", 8884)
    for bad, part in [("mqtt://u:s3cret@h:99999", "port '99999'"),
                      ("mqtt://u:s3cret@h:1/x", "path '/x'"),
                      ("http://u:s3cret@h", "scheme 'http'")]:
        with pytest.raises(ValueError, match=part) as info:
            parse_broker_url(bad, credentials=True)
        assert "s3cret" not in str(info.value) and "***@h" in str(info.value)


def test_connection_arguments(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="client_id"):
        MqttConnection("mqtt://h:1", client_id="")
    with pytest.raises(ValueError, match="ca_file given for a plain mqtt"):
        MqttConnection("mqtt://h:1", client_id="c", ca_file="ca.crt")
    with pytest.raises(ValueError, match="needs a username"):
        MqttConnection("mqtt://h:1", client_id="c", password="x")
    with pytest.raises(ValueError, match="ca_file"):
        MqttConnection("mqtts://h:1", client_id="c", ca_file=tmp_path / "missing.crt")
    conn = MqttConnection("mqtt://h:1", client_id="c", username="u", password="s3cret")
    assert conn.name == "mqtt://h:1" and "s3cret" not in repr(conn)
    with pytest.raises(ValueError, match="gateway"):
        MqttBus(conn, "amic-gw", "gw/1")
    with pytest.raises(ValueError, match="prefix"):
        MqttBus(conn, "amic/+", "gw1")
    bus = MqttBus(conn, "amic-gw/", "gw-01")
    assert bus.name == "mqtt://h/amic-gw/gw-01" and bus.td == 5.0
    assert (bus.down_topic, bus.up_topic) == ("amic-gw/gw-01/down", "amic-gw/gw-01/up")


# ---- MqttConnection --------------------------------------------------------------------


async def test_publish_subscribe_wildcards(broker: Broker) -> None:
    plus, hash_, plain = Inbox(), Inbox(), []
    slow_started = asyncio.Event()

    slow_cancelled = asyncio.Event()

    async def slow(message: aiomqtt.Message) -> None:
        slow_started.set()
        try:
            await asyncio.sleep(30)  # must not hold up anybody else
        except asyncio.CancelledError:
            slow_cancelled.set()  # by close(), after close_timeout
            raise

    def failing(message: aiomqtt.Message) -> None:
        raise RuntimeError("handler bug")

    async with MqttConnection(broker.url, client_id="amic-t1", close_timeout=0.2) as conn:
        await conn.subscribe("amic-gw/+/report", plus)  # registered before connecting
        await conn.wait_connected(5)
        assert conn.connected and conn.connects == 1
        await conn.subscribe("amic/#", hash_)
        await conn.subscribe("amic/slow", slow)
        await conn.subscribe("amic/bad", failing)
        await conn.subscribe("amic/x/plain", lambda m: plain.append(m.payload))
        await conn.publish("amic/slow", b"")
        await conn.publish("amic/bad", b"")
        await conn.publish("amic-gw/gw-01/report", b"r1")
        await conn.publish("amic-gw/gw-02/report", "r2")  # str is UTF-8
        await conn.publish("amic-gw/gw-01/report/extra", b"no")  # + is one level
        await conn.publish("amic/x/plain", b"p", qos=0)
        await eventually(lambda: len(plus.got) == 2 and len(hash_.got) == 3 and bool(plain))
        assert slow_started.is_set()
        assert plus.got == [("amic-gw/gw-01/report", b"r1"), ("amic-gw/gw-02/report", b"r2")]
        assert sorted(t for t, _ in hash_.got) == ["amic/bad", "amic/slow", "amic/x/plain"]
        assert plain == [b"p"]
        assert conn.handler_errors == 1  # logged and counted; the loop goes on
        assert conn.messages_out == 6
        assert conn.messages_in == 5  # mosquitto delivers once for overlapping filters

        await conn.unsubscribe("amic-gw/+/report")
        await conn.publish("amic-gw/gw-01/report", b"r3")
        await conn.publish("amic/after", b"a")
        await eventually(lambda: ("amic/after", b"a") in hash_.got)
        assert len(plus.got) == 2
        assert conn.counters()["messages_unhandled"] == 0  # unsubscribed at the broker too
    assert not conn.connected and slow_cancelled.is_set()
    with pytest.raises(BusClosed):
        await conn.publish("amic/x", b"")
    with pytest.raises(ValueError, match="Invalid topic"):
        await MqttConnection(broker.url, client_id="c").publish("amic/+", b"")


async def test_tls_client_certificate_and_password(tmp_path: Path) -> None:
    with Broker(tmp_path / "broker", tls=True, password=True) as b:
        inbox = Inbox()
        async with MqttConnection(f"mqtts://127.0.0.1:{b.tls_port}", client_id="amic-tls",
                                  username=USER, password=PASSWORD, ca_file=b.ca,
                                  cert_file=b.client_cert, key_file=b.client_key) as conn:
            assert conn.name == f"mqtts://127.0.0.1:{b.tls_port}"
            await conn.subscribe("amic/tls", inbox)
            await conn.wait_connected(5)
            await conn.publish("amic/tls", b"secure")
            await eventually(lambda: inbox.got == [("amic/tls", b"secure")])

        # Without a client certificate the broker (require_certificate) hangs up.
        async with MqttConnection(f"mqtts://127.0.0.1:{b.tls_port}", client_id="amic-nocert",
                                  username=USER, password=PASSWORD, ca_file=b.ca) as conn:
            with pytest.raises(LinkDown, match="not connected within"):
                await conn.wait_connected(1)
            assert conn.connect_failures >= 1
            assert "closed the connection before accepting it" in str(conn.last_error)


async def test_wrong_password_is_refused_and_retried(
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)
    with Broker(tmp_path / "broker", password=True) as b:
        async with MqttConnection(b.url, client_id="amic-pw", username=USER,
                                  password="not-the-password") as conn:
            with pytest.raises(BrokerRefused) as info:
                await conn.wait_connected(1.5)
            e = info.value
            assert "connection refused by the broker" in str(e)
            assert e.code in (134, 135) and e.reason  # bad user name or password / not authorised
            assert e.bus == b.url
            assert conn.connect_failures >= 3  # it keeps trying, with the back-off
            with pytest.raises(BrokerRefused):
                await conn.publish("amic/x", b"", timeout=0.2)
        assert "not-the-password" not in caplog.text
        assert "connection refused by the broker" in caplog.text


async def test_broker_restart(broker: Broker) -> None:
    """Reconnect within 5 s, subscriptions restored, QoS 1 messages queued meanwhile."""
    persistent, fresh, late = Inbox(), Inbox(), Inbox()
    async with MqttConnection(broker.url, client_id="amic-persist",
                              reconnect_min=0.25) as conn, \
            MqttConnection(broker.url, client_id="amic-clean", clean_session=True) as clean:
        await conn.subscribe("amic/cmd/#", persistent)
        await clean.subscribe("amic/cmd/#", fresh)
        await conn.wait_connected(5)
        await clean.wait_connected(5)
        await conn.publish("amic/cmd/a", b"before")
        await eventually(lambda: len(persistent.got) == 1 and len(fresh.got) == 1)

        restarted = asyncio.ensure_future(asyncio.to_thread(broker.restart, down_for=1))
        await eventually(lambda: not conn.connected and not clean.connected)
        down_at = time.monotonic()
        await conn.subscribe("amic/late", late)  # made while down: applied on reconnect
        publishing = asyncio.ensure_future(conn.publish("amic/late", b"queued-by-us"))
        await restarted
        # Another client publishes to our persistent session while we are still away
        # (our next attempt is 0.25+0.5+1.0 s after the drop).
        async with aiomqtt.Client("127.0.0.1", broker.port, identifier="pub") as other:
            await other.publish("amic/cmd/b", b"while-away", qos=1)
        assert not conn.connected, "reconnected before the test could publish"

        await conn.wait_connected(5)
        await clean.wait_connected(5)
        assert time.monotonic() - down_at < 5
        assert conn.connects == 2 and conn.disconnects == 1
        await publishing  # waited for the connection, then went out
        await eventually(lambda: ("amic/cmd/b", b"while-away") in persistent.got)
        await eventually(lambda: late.got == [("amic/late", b"queued-by-us")])

        # Subscriptions restored by us (the clean session lost its own at the restart).
        await conn.publish("amic/cmd/c", b"after")
        await eventually(lambda: ("amic/cmd/c", b"after") in fresh.got
                         and ("amic/cmd/c", b"after") in persistent.got)
        assert ("amic/cmd/b", b"while-away") not in fresh.got
        # The broker kept our session: nothing to report.
        assert conn.session_present is True and conn.sessions_lost == 0


async def test_broker_without_persistence_loses_the_session(
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    """mosquitto's default (no persistence) forgets sessions at a restart: the
    reconnection says so (CONNACK session present = 0), a warning names the broker and
    on_session_lost is called; subscriptions are made again."""
    caplog.set_level(logging.WARNING, logger="amic.mqtt")
    lost: list[str] = []
    inbox = Inbox()
    with Broker(tmp_path / "broker", persistence=False) as b:
        async with MqttConnection(b.url, client_id="amic-nopersist", reconnect_min=0.25,
                                  reconnect_max=0.5) as conn, \
                MqttConnection(b.url, client_id="amic-clean2", clean_session=True) as clean:
            conn.on_session_lost = lost.append
            clean.on_session_lost = lost.append
            await conn.subscribe("amic/cmd/#", inbox)
            await conn.wait_connected(5)
            await clean.wait_connected(5)
            assert conn.session_present is False and conn.sessions_lost == 0  # a new one
            await asyncio.to_thread(b.restart, down_for=0.5)
            await eventually(lambda: conn.connects == 2 and conn.connected, 5)
            await eventually(lambda: clean.connects == 2 and clean.connected, 5)
            assert conn.session_present is False and conn.sessions_lost == 1
            assert len(lost) == 1 and "amic-nopersist" in lost[0]  # not the clean session
            warnings = [r.getMessage() for r in caplog.records
                        if r.levelno == logging.WARNING and "did not keep" in r.getMessage()]
            assert len(warnings) == 1 and b.url in warnings[0]
            assert "persistence true" in warnings[0]
            await conn.publish("amic/cmd/c", b"after")  # subscriptions made again
            await eventually(lambda: ("amic/cmd/c", b"after") in inbox.got)


async def test_first_connection_checked_when_a_session_is_known(broker: Broker) -> None:
    """had_session (an earlier run had a session): the first connection is checked too,
    and on_connected reports each connection's flag."""
    async with MqttConnection(broker.url, client_id="amic-run1") as first:
        await first.subscribe("amic/x", Inbox())
        await first.wait_connected(5)
    flags: list[bool | None] = []
    lost: list[str] = []
    for client_id, expect_lost in (("amic-run1", 0), ("amic-never-seen", 1)):
        conn = MqttConnection(broker.url, client_id=client_id)
        conn.had_session = True
        conn.on_connected, conn.on_session_lost = flags.append, lost.append
        async with conn:
            await conn.wait_connected(5)
            assert conn.sessions_lost == expect_lost
    assert flags == [True, False] and len(lost) == 1 and "amic-never-seen" in lost[0]


async def test_broker_down_at_start(tmp_path: Path) -> None:
    b = Broker(tmp_path / "broker")
    async with MqttConnection(b.url, client_id="amic-late") as conn:
        with pytest.raises(LinkDown, match=r"not connected within 0\.3 s .*Connection refused"):
            await conn.wait_connected(0.3)
        b.start()
        try:
            await conn.wait_connected(5)
        finally:
            await asyncio.to_thread(b.stop)


# ---- MqttBus ---------------------------------------------------------------------------


@pytest.fixture
def meter() -> FakeMeter:
    m = FakeMeter(ADDR)
    m.set("voltage_a", Decimal("220.1"))
    m.set("voltage_b", Decimal("221.0"))
    m.set("energy_active_forward_total", Decimal("1234.56"))
    return m


@pytest.fixture
async def gateway(broker: Broker, meter: FakeMeter) -> AsyncIterator[FakeMeter]:
    """A transparent gateway: frames from amic-gw/gw-01/down to the meter, its replies
    (built by protocols.dlt645) to amic-gw/gw-01/up."""
    async with aiomqtt.Client("127.0.0.1", broker.port, identifier="gw-01") as client:
        await client.subscribe("amic-gw/gw-01/down", qos=1)
        extractor = FrameExtractor(lambda _a, control: not control & 0x80)

        async def serve() -> None:
            async for message in client.messages:
                assert isinstance(message.payload, bytes)
                extractor.feed(message.payload)
                for frame in extractor:
                    try:
                        request = decode_message(frame)
                    except DLT645Error:
                        continue
                    meter.received.append(Received(request, time.monotonic()))
                    for action in meter.respond(request):
                        if isinstance(action, Sleep):
                            await asyncio.sleep(action.seconds)
                        elif isinstance(action, Send):
                            await client.publish("amic-gw/gw-01/up", action.data, qos=1)

        task = asyncio.create_task(serve())
        try:
            yield meter
        finally:
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)


@pytest.fixture
async def conn(broker: Broker) -> AsyncIterator[MqttConnection]:
    async with MqttConnection(broker.url, client_id="amic-bus") as c:
        await c.wait_connected(5)
        yield c


async def test_dlt645_read_through_gateway(conn: MqttConnection, gateway: FakeMeter) -> None:
    async with MqttBus(conn, "amic-gw", "gw-01", td=2.0) as bus:
        assert bus.name == "mqtt://127.0.0.1/amic-gw/gw-01"
        session = Dlt645Session(bus)
        r = await session.read(ADDR, "voltage_a")
        assert r.address == ADDR and r.value == Decimal("220.1") and r.unit == "V"
        many = await session.read_many(ADDR, ["voltage_b", "energy_active_forward_total"])
        assert [x.value for x in many] == [Decimal("221.0"), Decimal("1234.56")]
        assert bus.transactions == 3 and bus.timeouts == 0 and bus.connects == 1
        assert len(gateway.requests) == 3  # one MQTT message per request
        assert conn.filters == {"amic-gw/gw-01/up": 1}
    assert conn.filters == {}  # the bus unsubscribed when closed, and at the broker:
    probe = Inbox()
    await conn.subscribe("amic/probe", probe)
    await conn.publish("amic-gw/gw-01/up", b"late")
    await conn.publish("amic/probe", b"")
    await eventually(lambda: bool(probe.got))
    assert conn.messages_unhandled == 0


async def test_foreign_reply_is_rejected(conn: MqttConnection, gateway: FakeMeter) -> None:
    gateway.reply_address = "000000000999"
    async with MqttBus(conn, "amic-gw", "gw-01", td=2.0) as bus:
        session = Dlt645Session(bus, retries=0)
        with pytest.raises(WrongReply) as info:
            await session.read(ADDR, "voltage_a")
        assert info.value.field == "address" and info.value.got == "000000000999"
        gateway.reply_address = None
        r = await session.read(ADDR, "voltage_a")  # the next read is not confused
        assert r.value == Decimal("220.1")


async def test_silent_gateway_and_broker_down(broker: Broker, conn: MqttConnection) -> None:
    async with MqttBus(conn, "amic-gw", "gw-nobody", td=0.3, guard=0.01) as bus:
        session = Dlt645Session(bus, retries=0)
        started = time.monotonic()
        with pytest.raises(NoReply):
            await session.read(ADDR, "voltage_a")
        assert time.monotonic() - started < 1.5
        await asyncio.to_thread(broker.stop)
        await eventually(lambda: not conn.connected)
        with pytest.raises(LinkDown, match="not connected"):
            await session.read(ADDR, "voltage_a")
        await asyncio.to_thread(broker.start)
        await conn.wait_connected(5)
        with pytest.raises(NoReply):  # the line works again (nobody answers on it)
            await session.read(ADDR, "voltage_a")
        assert bus.link_drops == 1 and bus.connects == 2

"""MQTT: one broker connection that stays up, and a gateway's transparent channel as a Bus.

::

    async with MqttConnection("mqtts://broker.example.net:8883", client_id="amic-01",
                              username="amic-01", password=secret, ca_file="ca.crt") as conn:
        await conn.subscribe("amic-gw/+/report", on_report)      # handler(message)
        await conn.publish("amic/01/status", b"up")               # QoS 1: waits for PUBACK
        async with MqttBus(conn, "amic-gw", "gw-01") as bus:      # a Bus like TcpBus
            reading = await Dlt645Session(bus).read("000000000123", "voltage_a")

:class:`MqttConnection` keeps one MQTT 3.1.1 session (aiomqtt over paho-mqtt) alive in a
background task: it connects, (re)subscribes every registered filter, dispatches each
message to the handlers whose filter matches it (each call its own task), and after a
disconnect reconnects with a back-off of ``reconnect_min`` doubling up to
``reconnect_max``.  The client id is fixed and the session persistent
(``clean_session=False``), so QoS 1 messages published to us while we were away are
delivered when we are back.  That needs a broker that keeps sessions (mosquitto:
``persistence true``, else a broker restart forgets them): every CONNACK's
``session_present`` flag is checked, and when the broker answers a reconnection
without our session a WARNING is logged and ``on_session_lost`` is called.  A refused
connection (bad password, not authorised) is :class:`~drivers.errors.BrokerRefused`,
logged and retried like any other failure; :meth:`MqttConnection.wait_connected` and
:meth:`MqttConnection.publish` raise it (or :class:`~drivers.errors.LinkDown`) when the
broker cannot be reached in time.

Delivery is at least once: a QoS 1 publish cut by a disconnect is sent again on the next
connection, and on each reconnect the broker re-sends retained messages for the filters
we subscribe again.  Overlapping filters may deliver one message once per matching
subscription (a broker choice in MQTT 3.1.1).

:class:`MqttBus` is a :class:`~drivers.bus.Bus` whose line is a gateway's transparent
channel: each request is published (QoS 1) to ``<prefix>/<gateway>/down``, every message
on ``<prefix>/<gateway>/up`` is received bytes.  The protocol sessions on top
(DL/T645, Modbus) match replies exactly as on a serial line.
"""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import logging
import os
import ssl
from collections.abc import Awaitable, Callable, Coroutine
from dataclasses import dataclass, field
from time import monotonic
from types import TracebackType
from typing import Any, NamedTuple, Self, TypeVar, Unpack
from urllib.parse import unquote, urlsplit

import aiomqtt
from aiomqtt.exceptions import MqttConnectError
from paho.mqtt.enums import MQTTErrorCode
from paho.mqtt.reasoncodes import ReasonCode

from ._shim_aiomqtt import fail_fast_before_connack, watch_connack
from .bus import Bus, BusOptions
from .errors import BrokerRefused, BusClosed, LinkDown

log = logging.getLogger("amic.mqtt")

Handler = Callable[[aiomqtt.Message], Awaitable[None] | None]
"""Called with each message whose topic matches the filter; plain or async."""

PathLike = str | os.PathLike[str]

DEFAULT_PORTS = {"mqtt": 1883, "mqtts": 8883}

_T = TypeVar("_T")
_CONNECTION_GONE = (MQTTErrorCode.MQTT_ERR_NO_CONN, MQTTErrorCode.MQTT_ERR_CONN_LOST)
_background: set[asyncio.Task[Any]] = set()  # fire-and-forget tasks, kept from the GC


def _spawn(coro: Coroutine[Any, Any, Any], name: str) -> None:
    task = asyncio.ensure_future(coro)
    task.set_name(name)
    _background.add(task)

    def done(t: asyncio.Task[Any]) -> None:
        _background.discard(t)
        if not t.cancelled() and (e := t.exception()) is not None:
            log.debug("%s: %s", name, _describe(e))

    task.add_done_callback(done)


def _describe(exc: BaseException) -> str:
    text = str(exc)
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


# ---- broker URL ------------------------------------------------------------------------


class BrokerUrl(NamedTuple):
    """A parsed broker URL; ``username``/``password`` only where credentials are allowed."""

    scheme: str  # "mqtt" or "mqtts"
    host: str
    port: int
    username: str | None = None
    password: str | None = None


def parse_broker_url(url: str, *, credentials: bool = False) -> BrokerUrl:
    """``mqtt://HOST[:PORT]`` or ``mqtts://HOST[:PORT]`` as a :class:`BrokerUrl`.

    The port defaults to 1883 (mqtt) or 8883 (mqtts); IPv6 hosts go in brackets.  Every
    mistake is a :class:`ValueError` naming the part at fault.  Credentials in the URL
    (``mqtt://USER:PASSWORD@HOST``, percent-encoded) are refused unless ``credentials``
    (the simulators); the collector's belong in ``username``/``password``.  A password is
    never echoed in an error.
    """
    if not isinstance(url, str) or not url.strip():
        raise ValueError("MQTT URL is empty (expected mqtt://HOST:PORT or mqtts://HOST:PORT)")
    text = url.strip()
    scheme_part, sep, rest = text.partition("://")
    netloc = rest.split("/", 1)[0].split("?", 1)[0].split("#", 1)[0]
    if "@" in netloc:
        if not credentials:
            raise ValueError("MQTT URL: credentials in the URL are not accepted "
                             "(give username= and password= instead)")
        hostport = netloc.rpartition("@")[2]
        shown = text.replace(netloc, "***@" + hostport, 1)  # no password in errors
    else:
        hostport, shown = netloc, text
    if not sep:
        raise ValueError(f"MQTT URL {shown!r}: no scheme (expected mqtt://HOST:PORT "
                         "or mqtts://HOST:PORT)")
    scheme = scheme_part.lower()
    if scheme not in DEFAULT_PORTS:
        raise ValueError(f"MQTT URL {shown!r}: scheme {scheme_part!r} is not mqtt or mqtts "
                         "(expected mqtt://HOST:PORT or mqtts://HOST:PORT)")
    try:
        parts = urlsplit(text)
    except ValueError as e:  # e.g. an unbalanced IPv6 bracket
        raise ValueError(f"MQTT URL {shown!r}: host {hostport!r}: {e}") from None
    host = parts.hostname or ""
    if not host or any(c.isspace() for c in host):
        raise ValueError(f"MQTT URL {shown!r}: host {hostport!r} is missing or invalid")
    port_text = hostport.rsplit("]", 1)[-1].rpartition(":")[2] if ":" in hostport.rsplit(
        "]", 1)[-1] else ""
    if port_text == "" and hostport.endswith(":"):
        raise ValueError(f"MQTT URL {shown!r}: port is empty")
    if port_text:
        if not port_text.isdigit() or not 0 < int(port_text) < 65536:
            raise ValueError(f"MQTT URL {shown!r}: port {port_text!r} is not in 1-65535")
        port = int(port_text)
    else:
        port = DEFAULT_PORTS[scheme]
    if parts.path not in ("", "/"):
        raise ValueError(f"MQTT URL {shown!r}: path {parts.path!r} is not allowed "
                         "(a broker URL is mqtt://HOST:PORT)")
    if parts.query or parts.fragment:
        raise ValueError(f"MQTT URL {shown!r}: options {parts.query or parts.fragment!r} "
                         "are not supported")
    return BrokerUrl(scheme, host, port,
                     unquote(parts.username) if parts.username else None,
                     unquote(parts.password) if parts.password else None)


def _shown_host(host: str) -> str:
    return f"[{host}]" if ":" in host else host


def _code(value: ReasonCode | int) -> int:
    return value.value if isinstance(value, ReasonCode) else int(value)


# ---- the connection ----------------------------------------------------------------------


@dataclass
class _Subscription:
    qos: int
    handlers: list[Handler] = field(default_factory=list)


class _Session:
    """One established connection: the aiomqtt client and what the broker has from us."""

    def __init__(self, client: aiomqtt.Client) -> None:
        self.client = client
        self.lost = asyncio.Event()
        self.serving: asyncio.Task[None] | None = None  # reads and dispatches messages
        self.subscribed: dict[str, int] = {}  # filter -> QoS acknowledged on this connection


class _Gone(Exception):
    """Internal: the connection dropped while an operation waited on it."""


class MqttConnection:
    """One MQTT 3.1.1 broker connection, kept up in the background (see the module doc).

    ``url``: ``mqtt://HOST:PORT`` or ``mqtts://HOST:PORT`` (TLS: ``ca_file`` the broker's
    CA, default the system's; ``cert_file``/``key_file`` a client certificate).
    ``client_id`` is fixed so the broker keeps our session (``clean_session=False``).
    ``keepalive`` (s) bounds how long a silently dead broker goes unnoticed (1.5 times
    it); ``connect_timeout`` (s) limits one connection attempt; ``reconnect_min`` /
    ``reconnect_max`` (s) the back-off between attempts; ``close_timeout`` (s) how long
    :meth:`close` lets running handlers finish (they may still publish) before it
    disconnects and cancels them.

    Counters (plain attributes, see :meth:`counters`): ``connects``, ``disconnects``
    (established connections lost), ``connect_failures``, ``messages_in``,
    ``messages_out``, ``messages_unhandled`` (no handler matched), ``handler_errors``.

    ``session_present``: the CONNACK flag of the latest connection (None before one).
    ``sessions_lost`` counts reconnections (``clean_session=False``) the broker answered
    without the session it had: QoS 1 messages queued for us meanwhile are gone.
    ``on_session_lost(text)`` (plain callable, set by the owner) is called for each.
    ``had_session``: the broker should have our session; True after our first
    connection, or set before :meth:`open` by an owner that knows an earlier run had one
    (so the first connection is checked too).  ``on_connected(session_present)`` is
    called after each connection.
    """

    def __init__(
        self,
        url: str,
        *,
        client_id: str,
        username: str | None = None,
        password: str | None = None,
        ca_file: PathLike | None = None,
        cert_file: PathLike | None = None,
        key_file: PathLike | None = None,
        clean_session: bool = False,
        keepalive: int = 30,
        reconnect_min: float = 0.1,
        reconnect_max: float = 5.0,
        connect_timeout: float = 10.0,
        close_timeout: float = 2.0,
        will: tuple[str, bytes] | None = None,
    ) -> None:
        self.scheme, self.host, self.port, _, _ = parse_broker_url(url)
        self.tls = self.scheme == "mqtts"
        self.name = f"{self.scheme}://{_shown_host(self.host)}:{self.port}"
        if not isinstance(client_id, str) or not client_id:
            raise ValueError(f"{self.name}: client_id is empty (a persistent session "
                             "needs a fixed client id)")
        if len(client_id.encode()) > 65535:
            raise ValueError(f"{self.name}: client_id is longer than 65535 bytes")
        if username is not None and not username:
            raise ValueError(f"{self.name}: username is empty (give None for no username)")
        if password is not None and username is None:
            raise ValueError(f"{self.name}: a password needs a username (MQTT 3.1.1)")
        files = {"ca_file": ca_file, "cert_file": cert_file, "key_file": key_file}
        given = [k for k, v in files.items() if v is not None]
        if given and not self.tls:
            raise ValueError(f"{self.name}: {', '.join(given)} given for a plain mqtt:// URL "
                             "(use mqtts:// for TLS)")
        if key_file is not None and cert_file is None:
            raise ValueError(f"{self.name}: key_file given without cert_file")
        if not isinstance(keepalive, int) or keepalive < 1:
            raise ValueError(f"{self.name}: keepalive {keepalive!r} must be at least 1 s")
        for label, value in (("connect_timeout", connect_timeout),
                             ("reconnect_max", reconnect_max)):
            if not value > 0:
                raise ValueError(f"{self.name}: {label} must be positive, got {value!r}")
        for label, value in (("reconnect_min", reconnect_min), ("close_timeout", close_timeout)):
            if value < 0:
                raise ValueError(f"{self.name}: {label} must not be negative, got {value!r}")
        if reconnect_max < reconnect_min:
            raise ValueError(f"{self.name}: reconnect_max must not be less than reconnect_min")
        self.client_id = client_id
        self.username = username
        self._password = password  # never logged, never in repr
        self.ca_file = os.fspath(ca_file) if ca_file is not None else None
        self.cert_file = os.fspath(cert_file) if cert_file is not None else None
        self.key_file = os.fspath(key_file) if key_file is not None else None
        self.clean_session = clean_session
        self.will = will  # (topic, payload): published retained, QoS 1, if we vanish
        self.keepalive = keepalive
        self.reconnect_min = reconnect_min
        self.reconnect_max = reconnect_max
        self.connect_timeout = connect_timeout
        self.close_timeout = close_timeout
        if self.tls:
            self._tls_context()  # a missing or bad file is a ValueError now, not a retry loop

        # Counters, for metrics.  Never reset.
        self.connects = 0
        self.disconnects = 0
        self.connect_failures = 0
        self.messages_in = 0
        self.messages_out = 0
        self.messages_unhandled = 0
        self.handler_errors = 0
        self.sessions_lost = 0
        self.session_present: bool | None = None
        self.on_session_lost: Callable[[str], None] | None = None
        self.on_connected: Callable[[bool | None], None] | None = None
        self.had_session = False  # a connection of ours made the broker keep a session

        self.last_error: LinkDown | None = None  # why the last attempt failed / link dropped
        self._subs: dict[str, _Subscription] = {}
        self._stale: set[str] = set()  # dropped while down: UNSUBSCRIBE on the next connect
        self._session: _Session | None = None  # set once subscriptions are in place
        self._wake = asyncio.Event()  # set while connected, and once closed
        self._task: asyncio.Task[None] | None = None
        self._handler_tasks: set[asyncio.Task[None]] = set()
        self._open = False
        self._closing = False

    # ---- life cycle -----------------------------------------------------------------------

    @property
    def is_open(self) -> bool:
        return self._open

    @property
    def connected(self) -> bool:
        """True while a connection is up and every registered filter is subscribed."""
        return self._open and self._session is not None and not self._session.lost.is_set()

    async def open(self) -> None:
        """Start the background connection; it does not wait for the broker (see
        :meth:`wait_connected`): a broker that is down at start-up is retried."""
        if self._open:
            return
        self._open = True
        self._wake.clear()
        self._task = asyncio.create_task(self._run(), name=f"amic-mqtt {self.name}")

    async def close(self) -> None:
        """Let running handlers finish (``close_timeout``), then disconnect cleanly.

        May be called from a handler (that handler is then neither awaited nor
        cancelled)."""
        if not self._open or self._closing:
            return
        self._closing = True
        try:
            me = asyncio.current_task()
            running = {t for t in self._handler_tasks if t is not me}
            if running and self.close_timeout > 0:
                await asyncio.wait(running, timeout=self.close_timeout)
            self._open = False
            self._wake.set()  # wake waiters: they raise BusClosed
            task, self._task = self._task, None
            if task is not None:
                task.cancel()
                await asyncio.wait([task])
            leftover = {t for t in self._handler_tasks if t is not me}
            for t in leftover:
                t.cancel()
            if leftover:
                await asyncio.wait(leftover)
            self._session = None
        finally:
            self._closing = False

    async def __aenter__(self) -> Self:
        await self.open()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.close()

    def __repr__(self) -> str:
        state = "connected" if self.connected else "open" if self._open else "closed"
        return f"<MqttConnection {self.name} client_id={self.client_id!r} {state}>"

    def counters(self) -> dict[str, float]:
        """A snapshot of the counters."""
        return {
            "connects": self.connects, "disconnects": self.disconnects,
            "connect_failures": self.connect_failures, "messages_in": self.messages_in,
            "messages_out": self.messages_out, "messages_unhandled": self.messages_unhandled,
            "handler_errors": self.handler_errors,
        }

    async def wait_connected(self, timeout: float) -> None:
        """Return once connected (subscriptions in place); else after ``timeout`` s raise
        :class:`BrokerRefused` (the broker said no) or :class:`LinkDown` naming the last
        failure.  :class:`BusClosed` if the connection is not open or closes meanwhile."""
        self._check_open()
        if self.connected:
            return
        try:
            async with asyncio.timeout(timeout):
                while not self.connected:
                    await self._wake.wait()
                    self._check_open()
        except TimeoutError:
            raise self._down_error(f"not connected within {timeout:g} s") from None

    # ---- subscriptions ---------------------------------------------------------------

    async def subscribe(self, topic_filter: str, handler: Handler, qos: int = 1, *,
                        timeout: float = 10.0) -> None:
        """Call ``handler(message)`` for every message matching ``topic_filter``.

        ``+`` and ``#`` wildcards as in MQTT.  Several handlers may share a filter (it is
        subscribed with the highest QoS asked).  The subscription is kept across
        reconnections.  While connected this waits for the broker's SUBACK and raises
        :class:`BrokerRefused` if it refuses (nothing stays registered then); while down
        it only registers, and the subscription is made on connecting.  May be called
        before :meth:`open`.
        """
        aiomqtt.Wildcard(topic_filter)  # ValueError for a malformed filter
        _check_qos(qos)
        sub = self._subs.get(topic_filter)
        if sub is None:
            sub = self._subs[topic_filter] = _Subscription(qos)
        sub.qos = max(sub.qos, qos)
        sub.handlers.append(handler)
        self._stale.discard(topic_filter)
        session = self._session
        if session is None or session.lost.is_set() \
                or session.subscribed.get(topic_filter) == sub.qos:
            return
        try:
            granted = await self._while_up(session, session.client.subscribe(
                topic_filter, sub.qos, timeout=timeout))
        except _Gone:
            return  # made on the next connection
        except aiomqtt.MqttError as e:
            log.warning("%s: subscribe %r: %s (made again on the next connection)",
                        self.name, topic_filter, _mqtt_detail(e) or _describe(e))
            return
        code = _code(granted[0]) if granted else 0x80
        if code >= 0x80:
            self._drop_handler(topic_filter, handler)
            reason = str(granted[0]) if granted else "no reason code"
            raise BrokerRefused(f"{self.name}: subscription to {topic_filter!r} refused: "
                                f"{reason} (code {code})", bus=self.name, code=code,
                                reason=reason)
        session.subscribed[topic_filter] = sub.qos
        if topic_filter not in self._subs:  # unsubscribed while we waited for the SUBACK
            await self._unsubscribe_at_broker(topic_filter, timeout)

    async def unsubscribe(self, topic_filter: str, handler: Handler | None = None, *,
                          timeout: float = 10.0) -> None:
        """Remove ``handler`` (default: every handler) from ``topic_filter``; once no
        handler is left, unsubscribe at the broker (now, or on the next connection)."""
        if self._drop_handler(topic_filter, handler):
            await self._unsubscribe_at_broker(topic_filter, timeout)

    async def _unsubscribe_at_broker(self, topic_filter: str, timeout: float = 10.0) -> None:
        if topic_filter in self._subs:
            return  # registered again meanwhile
        session = self._session
        if session is None or session.lost.is_set() or topic_filter not in session.subscribed:
            self._stale.add(topic_filter)  # a persistent session may still hold it
            return
        del session.subscribed[topic_filter]
        try:
            await self._while_up(session, session.client.unsubscribe(topic_filter,
                                                                     timeout=timeout))
        except (_Gone, aiomqtt.MqttError):
            if topic_filter not in self._subs:
                self._stale.add(topic_filter)

    def _drop_handler(self, topic_filter: str, handler: Handler | None) -> bool:
        """Forget ``handler`` (None: all); True if the filter has no handler left."""
        sub = self._subs.get(topic_filter)
        if sub is None:
            return False
        if handler is not None:
            if handler in sub.handlers:
                sub.handlers.remove(handler)
            if sub.handlers:
                return False
        del self._subs[topic_filter]
        return True

    @property
    def filters(self) -> dict[str, int]:
        """The registered filters and their QoS."""
        return {f: s.qos for f, s in self._subs.items()}

    # ---- publishing ----------------------------------------------------------------------

    async def publish(self, topic: str, payload: bytes | str, qos: int = 1,
                      retain: bool = False, timeout: float = 10.0) -> None:
        """Publish; QoS 1 and 2 return once the broker acknowledged.

        While disconnected, waits for the connection; a publish cut by a disconnect is
        sent again on the next connection.  Raises :class:`LinkDown` (or
        :class:`BrokerRefused`) if it is not done within ``timeout`` s, :class:`BusClosed`
        if the connection is not open.
        """
        aiomqtt.Topic(topic)  # ValueError for a malformed topic (wildcards, empty)
        _check_qos(qos)
        data = payload.encode() if isinstance(payload, str) else bytes(payload)
        deadline = monotonic() + timeout
        what = f"publish to {topic!r}"
        while True:
            self._check_open()
            session = self._session
            left = deadline - monotonic()
            if session is None or session.lost.is_set():
                if left <= 0:
                    raise self._down_error(f"{what}: not connected within {timeout:g} s")
                try:
                    await self.wait_connected(left)
                except LinkDown:
                    raise self._down_error(
                        f"{what}: not connected within {timeout:g} s") from None
                continue
            try:
                await self._while_up(session, session.client.publish(
                    topic, data, qos=qos, retain=retain, timeout=max(left, 0.001)))
            except _Gone:
                continue  # sent again once reconnected, if time is left
            except aiomqtt.MqttCodeError as e:
                if e.rc in _CONNECTION_GONE:
                    # paho saw the socket go before our loop did: wait for the loop to agree.
                    try:
                        async with asyncio.timeout(max(deadline - monotonic(), 0.001)):
                            await session.lost.wait()
                    except TimeoutError:
                        pass
                    continue
                raise LinkDown(f"{self.name}: {what} failed: {e}", bus=self.name) from e
            except aiomqtt.MqttError as e:  # "Operation timed out": no PUBACK in time
                raise LinkDown(f"{self.name}: {what}: not acknowledged within {timeout:g} s",
                               bus=self.name) from e
            self.messages_out += 1
            return

    # ---- internals -------------------------------------------------------------------

    def _check_open(self) -> None:
        if not self._open:
            raise BusClosed(f"{self.name}: MQTT connection is not open "
                            "(use 'async with MqttConnection(...)')")

    def _down_error(self, what: str) -> LinkDown:
        last = self.last_error
        if isinstance(last, BrokerRefused):
            return BrokerRefused(f"{self.name}: {what}: connection refused by the broker: "
                                 f"{last.reason} (code {last.code})", bus=self.name,
                                 code=last.code, reason=last.reason)
        why = f" (last error: {_strip_name(str(last), self.name)})" if last is not None else ""
        return LinkDown(f"{self.name}: {what}{why}", bus=self.name)

    async def _while_up(self, session: _Session, operation: Awaitable[_T]) -> _T:
        """Await ``operation``; raise :class:`_Gone` (cancelling it) if the connection
        drops first."""
        op = asyncio.ensure_future(operation)
        lost = asyncio.ensure_future(session.lost.wait())
        try:
            await asyncio.wait([op, lost], return_when=asyncio.FIRST_COMPLETED)
        finally:
            lost.cancel()
            if not op.done():
                op.cancel()
                await asyncio.wait([op])
        if op.cancelled():
            raise _Gone()
        return op.result()

    def _tls_context(self) -> ssl.SSLContext:
        try:
            ctx = ssl.create_default_context(cafile=self.ca_file)
        except (OSError, ssl.SSLError) as e:
            raise ValueError(f"{self.name}: ca_file {self.ca_file!r}: {_describe(e)}") from e
        if self.cert_file is not None:
            try:
                ctx.load_cert_chain(self.cert_file, self.key_file)
            except (OSError, ssl.SSLError) as e:
                raise ValueError(f"{self.name}: cert_file {self.cert_file!r} / key_file "
                                 f"{self.key_file!r}: {_describe(e)}") from e
        return ctx

    def _client(self) -> aiomqtt.Client:
        client = aiomqtt.Client(
            self.host, self.port, identifier=self.client_id, username=self.username,
            password=self._password, clean_session=self.clean_session,
            keepalive=self.keepalive, timeout=self.connect_timeout,
            tls_context=self._tls_context() if self.tls else None,
            logger=logging.getLogger("amic.mqtt.paho"),
            will=aiomqtt.Will(self.will[0], self.will[1], qos=1, retain=True)
            if self.will is not None else None,
        )
        client.pending_calls_threshold = 1000  # many concurrent publishes are normal here
        fail_fast_before_connack(client)
        return client

    async def _run(self) -> None:
        failures = 0
        last_logged = ""
        while True:
            session: _Session | None = None
            try:
                session = await self._connect()
                failures = 0
                last_logged = ""
                assert session.serving is not None
                await session.serving  # until the connection drops: raises why
                error: Exception = LinkDown(f"{self.name}: connection lost", bus=self.name)
            except asyncio.CancelledError:
                raise
            except MqttConnectError as e:
                code = _code(e.rc) if e.rc is not None else -1
                reason = str(e.rc) if isinstance(e.rc, ReasonCode) else str(e)
                error = BrokerRefused(
                    f"{self.name}: connection refused by the broker: {reason} (code {code})",
                    bus=self.name, code=code, reason=reason)
            except aiomqtt.MqttError as e:
                error = e
            except (OSError, ValueError) as e:  # TLS files gone meanwhile, ...
                error = e
            except Exception as e:  # a bug must not end the connection for good
                log.exception("%s: unexpected error in the MQTT loop", self.name)
                error = e
            finally:
                if session is not None:
                    self._mark_lost(session)
            if session is not None:
                self.disconnects += 1
                detail = _mqtt_detail(error)
                why = f"connection lost{': ' + detail if detail else ''}"
                self.last_error = LinkDown(f"{self.name}: {why}", bus=self.name)
                log.warning("%s: %s; reconnecting", self.name, why)
            else:
                self.connect_failures += 1
                if isinstance(error, LinkDown):
                    self.last_error = error
                else:
                    self.last_error = LinkDown(f"{self.name}: cannot connect: "
                                               f"{_mqtt_detail(error) or _describe(error)}",
                                               bus=self.name)
                text = str(self.last_error)
                level = logging.WARNING if text != last_logged else logging.DEBUG
                log.log(level, "%s (retrying)", text)
                last_logged = text
            delay = min(self.reconnect_min * 2 ** min(failures, 30), self.reconnect_max)
            failures += 1
            await asyncio.sleep(delay)

    async def _connect(self) -> _Session:
        connack: list[bool] = []  # session_present of this attempt's CONNACK
        client = self._client()
        watch_connack(client, connack)
        entering = asyncio.ensure_future(client.__aenter__())
        try:
            await asyncio.shield(entering)
        except asyncio.CancelledError:
            # aiomqtt connects in a thread that cannot be interrupted: once it is done,
            # close what it opened.
            entering.add_done_callback(lambda t: _discard_late(client, t))
            raise
        session = _Session(client)
        # Messages flow (and a drop is noticed) while the subscriptions are made.
        serving = session.serving = asyncio.create_task(self._serve(session),
                                                        name=f"amic-mqtt-serve {self.name}")
        try:
            await self._while_up(session, self._sync_subscriptions(session))
        except _Gone:
            await asyncio.wait([serving])
            if not serving.cancelled() and (e := serving.exception()) is not None:
                raise e from e.__cause__
            raise aiomqtt.MqttError("connection lost while subscribing") from None
        except BaseException:
            serving.cancel()
            await asyncio.wait([serving])
            raise
        self.connects += 1
        self._session = session
        self.last_error = None
        self._wake.set()
        log.info("%s: connected as %r, %d subscriptions", self.name, self.client_id,
                 len(session.subscribed))
        self._check_session(connack[-1] if connack else None)
        return session

    def _check_session(self, present: bool | None) -> None:
        """Notice a broker that forgot our persistent session (restarted without
        persistence, session expired): what it queued for us is lost."""
        self.session_present = present
        if self.clean_session or present is None:
            self._notify(self.on_connected, present)
            return
        if not present and self.had_session:
            self.sessions_lost += 1
            text = (f"{self.name}: the broker did not keep the session of {self.client_id!r} "
                    "(CONNACK session present = 0): QoS 1 messages sent to us while we were "
                    "away are lost; subscriptions were made again. Is the broker "
                    "configured with 'persistence true'?")
            log.warning("%s", text)
            self._notify(self.on_session_lost, text)
        self.had_session = True
        self._notify(self.on_connected, present)

    def _notify(self, callback: Callable[[_T], None] | None, arg: _T) -> None:
        if callback is not None:
            try:
                callback(arg)
            except Exception:  # the owner's bug must not drop the connection
                log.exception("%s: %s failed", self.name,
                              getattr(callback, "__qualname__", repr(callback)))

    async def _sync_subscriptions(self, session: _Session) -> None:
        """Unsubscribe filters dropped while down; subscribe every registered filter.

        Loops until nothing is left to do, so filters registered meanwhile are included
        before the connection counts as up.
        """
        client = session.client
        while True:
            for f in list(self._stale):
                self._stale.discard(f)
                if f not in self._subs:
                    await client.unsubscribe(f, timeout=self.connect_timeout)
            todo = [(f, s.qos) for f, s in self._subs.items() if session.subscribed.get(f)
                    != s.qos]
            if not todo:
                return
            granted: list[ReasonCode | int] = list(
                await client.subscribe(todo, timeout=self.connect_timeout))
            for (f, qos), result in zip(todo, granted, strict=False):
                code = _code(result)
                if code >= 0x80:
                    log.error("%s: subscription to %r refused by the broker: %s (code %d)",
                              self.name, f, result, code)
                session.subscribed[f] = qos  # refused ones are not asked again until reconnect

    async def _serve(self, session: _Session) -> None:
        try:
            async for message in session.client.messages:
                self.messages_in += 1
                self._dispatch(message)
        finally:
            self._mark_lost(session)
            await _exit_quietly(session.client)

    def _mark_lost(self, session: _Session) -> None:
        session.lost.set()
        if self._session is session:
            self._session = None
            if self._open:
                self._wake.clear()

    def _dispatch(self, message: aiomqtt.Message) -> None:
        matched = False
        for f, sub in list(self._subs.items()):
            if message.topic.matches(f):
                for handler in list(sub.handlers):
                    matched = True
                    task = asyncio.create_task(self._call(f, handler, message),
                                               name=f"amic-mqtt-handler {f}")
                    self._handler_tasks.add(task)
                    task.add_done_callback(self._handler_tasks.discard)
        if not matched:
            self.messages_unhandled += 1
            log.debug("%s: no handler for a message on %s", self.name, message.topic)

    async def _call(self, topic_filter: str, handler: Handler, message: aiomqtt.Message) -> None:
        try:
            result = handler(message)
            if inspect.isawaitable(result):
                await result
        except Exception:
            self.handler_errors += 1
            log.exception("%s: handler %s for %r failed on a message on %s", self.name,
                          getattr(handler, "__qualname__", repr(handler)), topic_filter,
                          message.topic)


def _mqtt_detail(exc: BaseException) -> str:
    """What went wrong, without aiomqtt's wrapping and paho's empty "Unspecified error"."""
    if isinstance(exc, aiomqtt.MqttError):
        inner = exc.__cause__
        if isinstance(inner, aiomqtt.MqttError):
            exc = inner
        elif inner is not None:
            return _describe(inner)
        text = str(exc)
        return "" if text.endswith("Unspecified error") else text
    return _describe(exc)


def _strip_name(text: str, name: str) -> str:
    prefix = f"{name}: "
    return text[len(prefix):] if text.startswith(prefix) else text


def _check_qos(qos: int) -> None:
    if qos not in (0, 1, 2):
        raise ValueError(f"QoS {qos!r} is not 0, 1 or 2")


async def _exit_quietly(client: aiomqtt.Client) -> None:
    try:
        await client.__aexit__(None, None, None)
    except Exception as e:  # already gone: nothing to close cleanly
        log.debug("closing an MQTT client: %s", _describe(e))


def _discard_late(client: aiomqtt.Client, entering: asyncio.Future[Any]) -> None:
    if entering.cancelled() or entering.exception() is not None:
        return
    with contextlib.suppress(RuntimeError):  # the loop is closing
        _spawn(_exit_quietly(client), "amic-mqtt-discard")


# ---- the gateway channel as a Bus ------------------------------------------------------


_WRITE_TIMEOUT = 0.9  # s for the PUBACK of a request; the Bus allows a write 1 s


class _MqttTransport(asyncio.Transport):
    """An asyncio transport over a pair of topics: writes are QoS 1 publishes, messages on
    the up filter are received data.  Flow control: writing pauses until PUBACK."""

    def __init__(self, conn: MqttConnection, down: str, up: str,
                 protocol: asyncio.StreamReaderProtocol, name: str) -> None:
        super().__init__(extra={"peername": name})
        self._conn = conn
        self._down = down
        self._up = up
        self._protocol = protocol
        self._name = name
        self._pending: dict[asyncio.Task[None], int] = {}
        self._paused = False
        self._closing = False

    async def start(self, timeout: float) -> None:
        await self._conn.subscribe(self._up, self._received, qos=1, timeout=timeout)

    def _received(self, message: aiomqtt.Message) -> None:
        if not self._closing:
            payload = message.payload
            if isinstance(payload, bytes | bytearray) and payload:
                self._protocol.data_received(bytes(payload))

    def write(self, data: bytes | bytearray | memoryview) -> None:
        if self._closing:
            raise ConnectionResetError(f"{self._name}: link closed")
        chunk = bytes(data)
        if not chunk:
            return
        task = asyncio.ensure_future(self._conn.publish(self._down, chunk, qos=1,
                                                         timeout=_WRITE_TIMEOUT))
        self._pending[task] = len(chunk)
        task.add_done_callback(self._written)
        if not self._paused:
            self._paused = True
            self._protocol.pause_writing()

    def _written(self, task: asyncio.Task[None]) -> None:
        self._pending.pop(task, None)
        if task.cancelled() or self._closing:
            return
        exc = task.exception()
        if exc is not None:
            self._lose(ConnectionError(_strip_name(str(exc), self._conn.name) or
                                       _describe(exc)))
            return
        if not self._pending and self._paused:
            self._paused = False
            self._protocol.resume_writing()

    def get_write_buffer_size(self) -> int:
        return sum(self._pending.values())

    def is_closing(self) -> bool:
        return self._closing

    def close(self) -> None:
        self._lose(None)

    def abort(self) -> None:
        self._lose(None)

    def can_write_eof(self) -> bool:
        return False

    def is_reading(self) -> bool:
        return not self._closing

    def pause_reading(self) -> None:
        return None  # an MQTT subscription cannot be paused; replies are small

    def resume_reading(self) -> None:
        return None

    def _lose(self, exc: Exception | None) -> None:
        if self._closing:
            return
        self._closing = True
        for task in list(self._pending):
            task.cancel()  # a request not yet out must not go out late
        if self._conn._drop_handler(self._up, self._received):  # now: no more data for us
            _spawn(self._conn._unsubscribe_at_broker(self._up),
                   f"amic-mqtt-unsubscribe {self._up}")
        asyncio.get_running_loop().call_soon(self._protocol.connection_lost, exc)


def _check_topic_part(label: str, value: str, *, slashes: bool) -> str:
    if not isinstance(value, str):
        raise ValueError(f"MQTT bus: {label} must be a string, got {value!r}")
    text = value.strip("/") if slashes else value
    if not text:
        raise ValueError(f"MQTT bus: {label} is empty")
    bad = [c for c in ("+", "#", "\x00") if c in text]
    if bad or any(c.isspace() for c in text) or (not slashes and "/" in text) \
            or (slashes and "//" in text):
        raise ValueError(f"MQTT bus: {label} {value!r} is not a topic level"
                         f"{'s' if slashes else ''} (no wildcards, spaces"
                         f"{', empty levels' if slashes else ' or /'})")
    return text


class MqttBus(Bus):
    """A gateway's transparent channel as a half-duplex :class:`~drivers.bus.Bus`.

    ``MqttBus(conn, prefix, gateway)``: requests are published (QoS 1) to
    ``<prefix>/<gateway>/down``; messages on ``<prefix>/<gateway>/up`` are the received
    bytes.  The link is the subscription: it opens once ``conn`` is connected (waiting up
    to ``connect_timeout``) and survives broker reconnections (the subscription is
    restored and replies queued by the broker meanwhile arrive).  A request that cannot
    be published within 0.9 s (broker down) fails the transaction with
    :class:`~drivers.errors.LinkDown`; Td starts at the broker's PUBACK.  Defaults for a
    gateway round trip: ``td`` 5 s, ``tb`` 1 s (a reply split over several messages).
    Other keyword arguments are those of :class:`~drivers.bus.Bus`.
    """

    def __init__(self, conn: MqttConnection, prefix: str, gateway: str,
                 **options: Unpack[BusOptions]) -> None:
        prefix = _check_topic_part("prefix", prefix, slashes=True)
        gateway = _check_topic_part("gateway", gateway, slashes=False)
        options.setdefault("td", 5.0)
        options.setdefault("tb", 1.0)
        super().__init__(name=f"mqtt://{_shown_host(conn.host)}/{prefix}/{gateway}", **options)
        self.conn = conn
        self.prefix = prefix
        self.gateway = gateway
        self.down_topic = f"{prefix}/{gateway}/down"
        self.up_topic = f"{prefix}/{gateway}/up"

    async def _connect(self) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
        started = monotonic()
        # A little under the Bus's own limit, so the broker's state names the failure.
        await self.conn.wait_connected(self.connect_timeout * 0.9)
        left = max(self.connect_timeout * 0.9 - (monotonic() - started), 0.001)
        loop = asyncio.get_running_loop()
        reader = asyncio.StreamReader()
        protocol = asyncio.StreamReaderProtocol(reader)
        transport = _MqttTransport(self.conn, self.down_topic, self.up_topic, protocol,
                                   self.name)
        protocol.connection_made(transport)
        try:
            await transport.start(left)
        except BaseException:
            transport.close()
            raise
        return reader, asyncio.StreamWriter(transport, protocol, reader, loop)

    def tx_time(self, nbytes: int) -> float:
        return 0.0


__all__ = ["DEFAULT_PORTS", "BrokerUrl", "Handler", "MqttBus", "MqttConnection",
           "parse_broker_url"]

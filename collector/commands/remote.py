"""The command channel: on-demand reads (and later other commands) through the MQTT broker.

Protocol (MQTT 3.1.1, JSON in UTF-8)
------------------------------------

Topics, for a collector whose ``[collector] id`` is ``<cid>``::

    amic/<cid>/cmd/<command>        requests  (the collector subscribes amic/<cid>/cmd/#, QoS 1)
    amic/<cid>/reply/<request_id>   replies   (QoS 1, not retained)

The collector's client keeps a persistent session (``clean_session=False``, a fixed
client id), so a QoS 1 request published while it is disconnected (broker restart,
network outage, daemon restart) is queued by the broker and delivered when it is back.

Request, published at QoS 1 to ``amic/<cid>/cmd/read``::

    {"request_id": "0b9e0f5c-...", "command": "read", "meter": "M0001",
     "quantities": ["voltage_a", "energy"], "reply_to": "optional/topic",
     "operator": "optional name, kept in the audit trail"}

- ``request_id``: 1-128 characters ``A-Z a-z 0-9 . _ : -`` (a UUID): it names the reply
  topic and is the idempotency key.
- ``command``: optional; when given it must equal the last topic level.  Known: ``read``.
- ``meter``: a configured meter id; ``quantities``: a non-empty list of quantity names
  (``protocols.quantities``) and groups (``energy``, ``voltage``, ...).  For a Modbus
  meter a group keeps the members its profile has; a name it lacks is an error.
- ``reply_to``: optional topic for the reply instead of ``amic/<cid>/reply/<request_id>``:
  only under the collector's own ``amic/<cid>/reply/`` or a configured reply prefix
  (``[mqtt] reply_prefixes``); no wildcards, never under ``amic/<cid>/cmd/`` nor a ``$``
  topic.  Anything else is refused: the collector must not become a relay that
  publishes onto other devices' topics (a gateway's RS-485 downlink).

Reply, published at QoS 1, not retained, to the reply topic::

    {"request_id": "0b9e0f5c-...", "status": "ok",
     "readings": [{"meter": "M0001", "quantity": "voltage_a", "value": 220.1,
                   "unit": "V", "ts": "2024-05-06T12:34:56.789000+00:00"}]}
    {"request_id": "0b9e0f5c-...", "status": "error", "readings": [],
     "error": "meter M0009 is not configured on collector gw-1"}

``value`` is a number (status words as their raw bits, dates and times as on the store);
``ts`` is when the collector got it (UTC, ISO 8601); ``meter_ts`` is added when the
meter gave its own timestamp.

Why not retained: a retained reply per request id would stay on the broker for ever
(MQTT 3.1.1 has no message expiry).  Instead the requester subscribes to the reply topic
*before* it publishes the request; the broker then has the subscription before the
collector can possibly answer, and QoS 1 delivers the reply at least once.  A reply lost
anyway (requester disconnected at the wrong moment) is recovered by publishing the
request again with the SAME request id: see idempotency.

Idempotency: requests are journaled by ``request_id`` (``received`` when accepted,
``done`` with the exact reply JSON when finished, ``denied`` instead when an executor
refused it for security: :class:`CommandDenied`).  A repeated request (QoS 1
redelivery, a requester's retry) is never executed twice: a ``done`` or ``denied`` one
is answered again with the identical reply, one still running gets the reply when it
finishes.  With :class:`StoreJournal` the journal is the store's ``commands`` table
(``command_id`` = request id, ``kind`` = the command, ``detail`` = the reply JSON), so
this holds across daemon restarts.  A request left ``received`` by a daemon that stopped mid-way is
executed again only if its command is repeatable (``read`` is); another command is
answered with an error instead.  A request id used by another kind of command in the
store is refused.

Rejects: a payload that is not a JSON object, or has no usable ``request_id``, cannot
be answered: it is counted (``CommandServer.stats.rejected``) and logged without its
content.  Anything else that is wrong (unknown command, bad fields) gets an error reply
and is not journaled.  A request delivered from the broker's retained store (retain
flag set on delivery: the broker replays it on every resubscription) is ignored:
publish requests without retain.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import json
import logging
import re
import uuid
from collections import OrderedDict
from collections.abc import Awaitable, Callable, Collection, Coroutine, Iterable, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Final, Protocol

from collector.store.records import CommandRecord, Reading, utcnow
from drivers.errors import BusClosed, DriverError
from protocols.quantities import GROUPS, QUANTITIES

if TYPE_CHECKING:
    from collector.config.settings import MeterSettings
    from collector.polling.context import DaemonContext
    from collector.polling.scheduler import BusWorker
    from collector.store import Store, StoreWriter
    from protocols.modbus import Profile

log = logging.getLogger("amic.remote")

ROOT: Final = "amic"
RECEIVED: Final = "received"
DONE: Final = "done"
DENIED: Final = "denied"  # refused for security (signature, binding): final, like done
DOCUMENT: Final = "document"  # key of the request as published, for signed commands
# Key of the id a request was addressed to (the collector's, or its fleet's): signed
# documents must name it.  Set by the server, never taken from the request.
SERVED_AS: Final = "served_as"
COMMANDS: Final[frozenset[str]] = frozenset({"read"})
REPEATABLE: Final[frozenset[str]] = frozenset({"read"})  # harmless to run again

MAX_PAYLOAD: Final = 64 * 1024
MAX_QUANTITIES: Final = 128
REQUEST_ID_RE: Final = re.compile(r"[A-Za-z0-9][A-Za-z0-9._:-]{0,127}")
COLLECTOR_ID_RE: Final = re.compile(r"[A-Za-z0-9_.-]{1,64}")

JsonDict = dict[str, Any]
Execute = Callable[[JsonDict], Awaitable[JsonDict]]


def _json(doc: Mapping[str, Any]) -> str:
    return json.dumps(doc, ensure_ascii=False, separators=(",", ":"))


def _check_collector_id(collector_id: str) -> str:
    if not COLLECTOR_ID_RE.fullmatch(collector_id):
        raise ValueError(f"collector id {collector_id!r}: letters, digits, '_', '.' and '-' "
                         "only (it is a topic level)")
    return collector_id


def command_filter(collector_id: str) -> str:
    """The subscription of a collector's command server: ``amic/<cid>/cmd/#``."""
    return f"{ROOT}/{_check_collector_id(collector_id)}/cmd/#"


def request_topic(collector_id: str, command: str) -> str:
    return f"{ROOT}/{_check_collector_id(collector_id)}/cmd/{command}"


def reply_topic(collector_id: str, request_id: str) -> str:
    return f"{ROOT}/{_check_collector_id(collector_id)}/reply/{request_id}"


def valid_request_id(value: object) -> bool:
    return isinstance(value, str) and REQUEST_ID_RE.fullmatch(value) is not None


def new_request_id() -> str:
    return str(uuid.uuid4())


def reading_json(r: Reading) -> JsonDict:
    """One reading as it travels in a reply."""
    out: JsonDict = {"meter": r.meter, "quantity": r.quantity, "value": r.value,
                     "unit": r.unit, "ts": r.ts.astimezone(dt.UTC).isoformat()}
    if r.meter_ts is not None:
        out["meter_ts"] = r.meter_ts.astimezone(dt.UTC).isoformat()
    return out


class CommandError(Exception):
    """A request that cannot be carried out; its message is the reply's ``error``."""


class CommandDenied(CommandError):
    """A request refused for security (bad or missing signature, replay, another
    collector's or command's document): journaled ``denied``, not ``done``.

    ``reason``: the refusal code (collector.commands.signing.REASONS); ``operator``, ``meter``
    and ``kind``: what the request claims, for the audit trail.
    """

    def __init__(self, message: str, *, reason: str, operator: str = "", meter: str = "",
                 kind: str = "") -> None:
        super().__init__(message)
        self.reason = reason
        self.operator = operator
        self.meter = meter
        self.kind = kind


# ---- the connection and the journal, as the server sees them -------------------------

class Connection(Protocol):
    """What the command channel needs of :class:`drivers.mqtt.MqttConnection`."""

    @property
    def connected(self) -> bool: ...

    async def subscribe(self, topic_filter: str, handler: Callable[[Any], None],
                        qos: int = 1, *, timeout: float = 10.0) -> None: ...

    async def publish(self, topic: str, payload: bytes | str, qos: int = 1,
                      retain: bool = False, timeout: float = 10.0) -> None: ...

    async def wait_connected(self, timeout: float) -> None: ...


def message_parts(message: Any) -> tuple[str, bytes | None]:
    """``(topic, payload bytes)`` of an aiomqtt message (payload None: not bytes/text)."""
    payload = message.payload
    if isinstance(payload, (bytes, bytearray)):
        data: bytes | None = bytes(payload)
    elif isinstance(payload, str):
        data = payload.encode()
    else:  # aiomqtt decodes nothing itself; an int/float/None payload is not ours
        data = None if payload is not None else b""
    return str(message.topic), data


class Journal(Protocol):
    """Requests by id: ``(status, reply_json)``; status ``received`` or ``done``."""

    def get(self, request_id: str) -> tuple[str, str] | None: ...

    def put(self, request_id: str, status: str, reply_json: str, *, meter: str = "",
            kind: str = "read", operator: str = "") -> None: ...


class MemoryJournal:
    """A journal in memory (the newest ``max_entries`` requests); lost on restart."""

    def __init__(self, max_entries: int = 10_000) -> None:
        self.max_entries = max_entries
        self._entries: OrderedDict[str, tuple[str, str]] = OrderedDict()

    def get(self, request_id: str) -> tuple[str, str] | None:
        return self._entries.get(request_id)

    def put(self, request_id: str, status: str, reply_json: str, *, meter: str = "",
            kind: str = "read", operator: str = "") -> None:
        self._entries[request_id] = (status, reply_json)
        self._entries.move_to_end(request_id)
        while len(self._entries) > self.max_entries:
            self._entries.popitem(last=False)

    def __len__(self) -> int:
        return len(self._entries)


class StoreJournal:
    """The journal in the store's ``commands`` table: survives restarts.

    Rows are written through the :class:`~collector.store.StoreWriter` (batched commits),
    so the newest entries are also kept in memory: a repeat that arrives before the
    commit still finds its request.  :meth:`flush` waits for the commit; the server calls
    it before it publishes a reply, so an answered request is on disk.
    """

    def __init__(self, store: Store, writer: StoreWriter, *, cache: int = 4096) -> None:
        self.store = store
        self.writer = writer
        self.cache = cache
        self._recent: OrderedDict[str, CommandRecord] = OrderedDict()

    def get(self, request_id: str) -> tuple[str, str] | None:
        rec = self._recent.get(request_id) or self.store.command(request_id)
        if rec is None:
            return None
        return rec.status, rec.detail

    def put(self, request_id: str, status: str, reply_json: str, *, meter: str = "",
            kind: str = "read", operator: str = "") -> None:
        before = self._recent.get(request_id)
        if before is None and status != RECEIVED:
            before = self.store.command(request_id)
        if before is not None:  # keep when it was received, for whom, by whom
            rec = CommandRecord(request_id, meter or before.meter, kind or before.kind,
                                before.ts, operator or before.operator, status, reply_json)
        else:
            rec = CommandRecord(request_id, meter, kind, utcnow(), operator, status,
                                reply_json)
        self.writer.put_command(rec)
        self._recent[request_id] = rec
        self._recent.move_to_end(request_id)
        while len(self._recent) > self.cache:
            self._recent.popitem(last=False)

    async def flush(self) -> None:
        await self.writer.flush()


# ---- requests ----------------------------------------------------------------------------

@dataclass(frozen=True, slots=True)
class Request:
    request_id: str
    command: str
    reply_topic: str
    body: JsonDict  # the validated request as ``execute`` gets it

    @property
    def meter(self) -> str:
        value = self.body.get("meter")
        return value if isinstance(value, str) else ""

    @property
    def operator(self) -> str:
        value = self.body.get("operator")
        return value if isinstance(value, str) and len(value) <= 64 else ""


class _Reject(Exception):
    """A request that cannot even be answered (no request id)."""


class _Invalid(Exception):
    """A request answered with an error reply, not journaled."""

    def __init__(self, message: str, request_id: str, topic: str) -> None:
        super().__init__(message)
        self.request_id = request_id
        self.topic = topic


def _short(value: object, limit: int = 40) -> str:
    """``repr`` of a value from a request, cut for replies and logs."""
    text = repr(value)
    return text if len(text) <= limit else text[:limit - 3] + "..."


def _valid_topic(topic: str) -> bool:
    return (0 < len(topic.encode()) <= 512 and not topic.startswith("$")
            and not any(c in topic for c in "+#\x00"))


@dataclass(slots=True)
class _InFlight:
    topics: list[str]
    task: asyncio.Task[None] | None = None


@dataclass(slots=True)
class ServerStats:
    received: int = 0  # messages on the command topics
    executed: int = 0  # calls of execute
    duplicates: int = 0  # repeats answered without executing
    errors: int = 0  # error replies (bad requests and failed commands)
    rejected: int = 0  # messages that could not be answered at all
    replies: int = 0  # replies published
    publish_failures: int = 0  # replies given up after retries
    denied: int = 0  # requests refused for security (journaled ``denied``)
    by_reason: dict[str, int] = field(default_factory=dict)


class CommandServer:
    """Serves ``amic/<collector_id>/cmd/#`` on ``conn`` (see the module docstring).

    ``execute(request)`` carries out a validated request (a dict with ``request_id``,
    ``command``, ``meter``, ``quantities`` ...) and returns the reply's fields (at least
    ``readings``); raising :class:`CommandError` (or any exception) makes an error reply.
    Requests run concurrently (the bus workers serialise the bus), up to ``max_inflight``;
    beyond that a request is answered ``busy`` and not journaled, so a retry can run.

    ``signed``: commands whose executor verifies the signed document itself: their
    ``command`` field is not compared with the topic here (the executor refuses a
    mismatch as ``wrong_command``, audited), and the request as published is passed
    under :data:`DOCUMENT`.  Raising :class:`CommandDenied` journals the request
    ``denied``.  ``reply_prefixes``: topic prefixes ``reply_to`` may name besides
    ``amic/<cid>/reply/``.
    """

    def __init__(self, conn: Connection, collector_id: str, execute: Execute,
                 journal: Journal, *, commands: Collection[str] = COMMANDS,
                 repeatable: Collection[str] = REPEATABLE, timeout: float = 120.0,
                 max_inflight: int = 64, publish_attempts: int = 4,
                 publish_timeout: float = 30.0, signed: Collection[str] = (),
                 reply_prefixes: Collection[str] = ()) -> None:
        self.conn = conn
        self.collector_id = _check_collector_id(collector_id)
        self.execute = execute
        self.journal = journal
        self.commands = frozenset(commands)
        self.repeatable = frozenset(repeatable)
        self.timeout = timeout
        self.max_inflight = max_inflight
        self.publish_attempts = publish_attempts
        self.publish_timeout = publish_timeout
        self.stats = ServerStats()
        self.prefix = f"{ROOT}/{collector_id}/cmd/"
        self.signed = frozenset(signed)
        # Level boundaries: "ops/replies" allows ops/replies/..., not ops/replies-x.
        self.reply_prefixes = (f"{ROOT}/{collector_id}/reply/",
                               *(p.rstrip("/") + "/" for p in reply_prefixes))
        self._inflight: dict[str, _InFlight] = {}
        self._tasks: set[asyncio.Task[None]] = set()
        self._closed = False
        self._start_task: asyncio.Task[None] | None = None

    # ---- life cycle ----------------------------------------------------------------------

    def start(self) -> asyncio.Task[None]:
        """Subscribe to ``amic/<cid>/cmd/#`` (kept by the connection across reconnects).

        Returns a task: await it to know the broker has the subscription (SUBACK, or
        registered until the connection is up); a refusal is logged and raised there.
        """
        if self._start_task is None:
            self._start_task = asyncio.get_running_loop().create_task(self._subscribe())
            self._start_task.add_done_callback(_retrieve)
        return self._start_task

    async def _subscribe(self) -> None:
        topic_filter = command_filter(self.collector_id)
        try:
            await self.conn.subscribe(topic_filter, self.on_message, qos=1)
        except Exception as e:
            log.error("command channel: cannot subscribe %s: %s", topic_filter, e)
            raise
        log.info("command channel: serving %s", topic_filter)

    async def close(self) -> None:
        """Stop answering: cancel what runs (journaled ``received``: see repeatable)."""
        self._closed = True
        tasks = list(self._tasks)
        if self._start_task is not None:
            tasks.append(self._start_task)
        for t in tasks:
            t.cancel()
        for t in tasks:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await t

    async def __aenter__(self) -> CommandServer:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    async def idle(self) -> None:
        """Return once no request is running and no reply is being published."""
        while self._tasks:
            await asyncio.gather(*list(self._tasks), return_exceptions=True)

    @property
    def inflight(self) -> int:
        return len(self._inflight)

    def known(self, request_id: str) -> bool:
        """Is ``request_id`` running or in the journal (a repeat is answered here)?"""
        return request_id in self._inflight or self.journal.get(request_id) is not None

    # ---- receiving -----------------------------------------------------------------------

    def on_message(self, message: Any) -> None:
        """The handler of the command topics (an aiomqtt message); never raises, never
        blocks: the request runs in a task of its own."""
        if self._closed:
            return
        topic, payload = message_parts(message)
        if getattr(message, "retain", False) is True:
            # From the broker's retained store on (re)subscribing: an old request, answered
            # when it was published live.  Requests must not be retained.
            self.stats.received += 1
            self.stats.rejected += 1
            self._count("rejected", "retained request")
            log.info("command channel: retained message on %s ignored (publish requests "
                     "without retain)", topic)
            return
        self.handle(topic, payload)

    def handle(self, topic: str, payload: bytes | None) -> None:
        """One message on the command topics (see :meth:`on_message`)."""
        self.stats.received += 1
        try:
            if payload is None:
                raise _Reject("payload is not bytes")
            req = self._parse(topic, payload)
        except _Reject as e:
            self._count("rejected", str(e))
            self.stats.rejected += 1
            log.warning("command channel: message on %s (%d bytes) rejected: %s", topic,
                        len(payload or b""), e)
            return
        except _Invalid as e:
            self.stats.errors += 1
            self._count("invalid", str(e))
            log.warning("command channel: request %s refused: %s", e.request_id, e)
            self._reply_error(e.topic, e.request_id, str(e))
            return
        try:
            self._accept(req)
        except Exception:  # the journal failed (store closed...): answer, do not crash
            log.exception("command channel: request %s could not be journaled",
                          req.request_id)
            self.stats.errors += 1
            self._reply_error(req.reply_topic, req.request_id,
                              "the collector cannot record the request; try again later")

    def _count(self, kind: str, reason: str) -> None:
        key = f"{kind}: {reason.split(':')[0][:60]}"
        self.stats.by_reason[key] = self.stats.by_reason.get(key, 0) + 1

    def _parse(self, topic: str, payload: bytes) -> Request:
        if not topic.startswith(self.prefix):
            raise _Reject("not a command topic")
        topic_command = topic[len(self.prefix):]
        if len(payload) > MAX_PAYLOAD:
            raise _Reject(f"payload larger than {MAX_PAYLOAD} bytes")
        try:
            doc = json.loads(payload)
        except (UnicodeDecodeError, ValueError):
            raise _Reject("not JSON") from None
        if not isinstance(doc, dict):
            raise _Reject("not a JSON object")
        rid = doc.get("request_id")
        if rid is None:
            raise _Reject("no request_id")
        if not valid_request_id(rid):
            raise _Reject("request_id is not 1-128 characters A-Z a-z 0-9 . _ : -")
        assert isinstance(rid, str)
        default_topic = reply_topic(self.collector_id, rid)
        reply_to = doc.get("reply_to", None)
        if reply_to is not None:
            if not isinstance(reply_to, str) or not _valid_topic(reply_to) \
                    or reply_to.startswith(self.prefix) \
                    or not reply_to.startswith(self.reply_prefixes):
                raise _Invalid(f"reply_to {_short(reply_to)}: not a topic the collector "
                               f"may publish to (allowed under: "
                               f"{', '.join(self.reply_prefixes)})", rid, default_topic)
            target = reply_to
        else:
            target = default_topic
        command = doc.get("command", topic_command)
        signed = topic_command in self.signed
        if command != topic_command and not signed:
            raise _Invalid(f"command {_short(command)} does not match the topic "
                           f"({_short(topic_command)})", rid, target)
        if topic_command not in self.commands:
            raise _Invalid(f"unknown command {_short(topic_command)} (known: "
                           f"{', '.join(sorted(self.commands))})", rid, target)
        body: JsonDict = {"request_id": rid, "command": topic_command,
                          SERVED_AS: self.collector_id}
        if topic_command == "read":
            body.update(self._read_fields(doc, rid, target))
        else:
            body.update({k: v for k, v in doc.items() if k not in body})
        if signed:
            body[DOCUMENT] = doc
        operator = doc.get("operator")
        if operator is not None and not signed:  # signed: the verifier refuses it, audited
            if not isinstance(operator, str) or len(operator) > 64:
                raise _Invalid("operator: not a name of up to 64 characters", rid, target)
            body["operator"] = operator
        return Request(rid, topic_command, target, body)

    @staticmethod
    def _read_fields(doc: JsonDict, rid: str, target: str) -> JsonDict:
        meter = doc.get("meter")
        if not isinstance(meter, str) or not meter.strip() or len(meter) > 64:
            raise _Invalid("meter: expected a meter id (a non-empty string)", rid, target)
        quantities = doc.get("quantities")
        if not isinstance(quantities, list) or not quantities \
                or not all(isinstance(q, str) and 0 < len(q) <= 64 for q in quantities):
            raise _Invalid("quantities: expected a non-empty list of quantity names", rid,
                           target)
        if len(quantities) > MAX_QUANTITIES:
            raise _Invalid(f"quantities: at most {MAX_QUANTITIES}", rid, target)
        return {"meter": meter.strip(), "quantities": list(quantities)}

    def _accept(self, req: Request) -> None:
        rid = req.request_id
        running = self._inflight.get(rid)
        if running is not None:  # a repeat while it runs: answered when done
            self.stats.duplicates += 1
            running.topics.append(req.reply_topic)  # one reply per request
            log.info("request %s: repeated while running; answered when done", rid)
            return
        entry = self.journal.get(rid)
        if entry is not None:
            status, reply = entry
            if status in (DONE, DENIED):
                self.stats.duplicates += 1
                log.info("request %s: repeated; answered again, not executed", rid)
                self._spawn(self._publish_all([req.reply_topic], reply.encode()))
                return
            if status != RECEIVED:
                self.stats.errors += 1
                self._reply_error(req.reply_topic, rid,
                                  "request_id already used by another command")
                return
            if req.command not in self.repeatable:
                # Interrupted by a restart: it may or may not have been carried out.
                log.warning("request %s (%s): interrupted by a collector restart; not "
                            "executed again", rid, req.command)
                reply = self._error_doc(rid, "interrupted by a collector restart; it may "
                                             "or may not have been carried out")
                self.journal.put(rid, DONE, reply, meter=req.meter, kind=req.command)
                self.stats.errors += 1
                self._spawn(self._publish_all([req.reply_topic], reply.encode()))
                return
            log.info("request %s: interrupted by a collector restart; %s is repeatable, "
                     "executing it again", rid, req.command)
        if len(self._inflight) >= self.max_inflight:
            self.stats.errors += 1
            self._reply_error(req.reply_topic, rid, f"busy: {self.max_inflight} requests "
                                                    "running; try again later")
            return
        self.journal.put(rid, RECEIVED, "", meter=req.meter, kind=req.command,
                         operator=req.operator)
        running = self._inflight[rid] = _InFlight([req.reply_topic])
        running.task = self._spawn(self._run(req))

    # ---- executing and answering ---------------------------------------------------------

    def _spawn(self, coro: Coroutine[Any, Any, None]) -> asyncio.Task[None]:
        task = asyncio.get_running_loop().create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return task

    def _error_doc(self, request_id: str, message: str) -> str:
        return _json({"request_id": request_id, "status": "error", "readings": [],
                      "error": message})

    def _reply_error(self, topic: str, request_id: str, message: str) -> None:
        self._spawn(self._publish_all([topic], self._error_doc(request_id, message).encode()))

    async def _run(self, req: Request) -> None:
        rid = req.request_id
        try:
            if req.command not in self.repeatable:
                try:
                    await self._flush()  # on disk before anything is done: see repeatable
                except Exception as e:
                    log.error("request %s: cannot be journaled (%s); not executed", rid, e)
                    reply = self._error_doc(rid, "the collector cannot record the request; "
                                                 "not carried out, try again later")
                    self.stats.errors += 1
                    topics = self._inflight.pop(rid, _InFlight([req.reply_topic])).topics
                    await self._publish_all(topics, reply.encode())
                    return
            reply, denied = await self._execute(req)
            try:
                if denied is not None:
                    self.journal.put(rid, DENIED, reply, meter=denied.meter or req.meter,
                                     kind=denied.kind or req.command,
                                     operator=denied.operator)
                else:
                    self.journal.put(rid, DONE, reply, meter=req.meter, kind=req.command)
                await self._flush()
            except Exception as e:  # answered anyway; only a repeat's answer is at risk
                log.error("request %s: reply not journaled: %s", rid, e)
        except BaseException:
            self._inflight.pop(rid, None)  # cancelled (closing): stays "received"
            raise
        running = self._inflight.pop(rid, None)
        topics = running.topics if running is not None else [req.reply_topic]
        await self._publish_all(topics, reply.encode())

    async def _execute(self, req: Request) -> tuple[str, CommandDenied | None]:
        """The reply JSON, and the refusal when the request was denied."""
        rid = req.request_id
        self.stats.executed += 1
        try:
            result = await asyncio.wait_for(self.execute(dict(req.body)), self.timeout)
        except CommandDenied as e:
            self.stats.denied += 1
            self.stats.errors += 1
            return _json({"request_id": rid, "status": "error", "readings": [],
                          "error": str(e), "refusal": e.reason}), e
        except CommandError as e:
            return self._failed(rid, str(e)), None
        except DriverError as e:  # a TimeoutError too (NoReply): before the next clause
            return self._failed(rid, str(e)), None
        except TimeoutError:
            return self._failed(rid, f"not done within {self.timeout:g} s"), None
        except asyncio.CancelledError:
            raise
        except Exception as e:
            log.exception("request %s (%s): execution failed", rid, req.command)
            return self._failed(rid, f"internal error: {type(e).__name__}: {e}"), None
        if not isinstance(result, Mapping):
            return self._failed(rid, "internal error: the command returned no result"), None
        status = "error" if result.get("status") == "error" else "ok"
        doc: JsonDict = {"request_id": rid, "status": status,
                         "readings": list(result.get("readings", []))}
        if status == "error":
            self.stats.errors += 1
            doc["error"] = str(result.get("error") or "failed")
        doc.update({k: v for k, v in result.items() if k not in doc and k != "error"})
        try:
            return _json(doc), None
        except (TypeError, ValueError) as e:
            return self._failed(rid, f"internal error: the result is not JSON: {e}"), None

    def _failed(self, request_id: str, message: str) -> str:
        self.stats.errors += 1
        log.info("request %s failed: %s", request_id, message)
        return self._error_doc(request_id, message)

    async def _flush(self) -> None:
        flush = getattr(self.journal, "flush", None)
        if flush is not None:
            await flush()

    async def _publish_all(self, topics: Iterable[str], payload: bytes) -> None:
        for topic in topics:
            await self._publish(topic, payload)

    async def _publish(self, topic: str, payload: bytes) -> None:
        """Publish a reply at QoS 1; while the broker is away, wait (a few attempts)."""
        for attempt in range(1, self.publish_attempts + 1):
            try:
                await self.conn.publish(topic, payload, qos=1, timeout=self.publish_timeout)
            except asyncio.CancelledError:
                raise
            except BusClosed:
                break  # the connection was closed: we are shutting down
            except Exception as e:
                log.warning("reply on %s: attempt %d failed: %s", topic, attempt, e)
                await asyncio.sleep(min(0.5 * attempt, 5.0))
                continue
            self.stats.replies += 1
            return
        self.stats.publish_failures += 1
        log.error("reply on %s not published; a repeat of the request gets it", topic)


def _retrieve(task: asyncio.Task[None]) -> None:
    if not task.cancelled():
        task.exception()  # logged where it happened; no "never retrieved" noise


# ---- the daemon's executor: an on-demand read on the bus workers ------------------------

def expand_quantities(names: Iterable[str], available: Collection[str] | None = None
                      ) -> tuple[str, ...]:
    """Groups and quantity names, in order, without repeats.

    ``available``: what the meter can give (a Modbus profile): groups keep those members,
    a quantity name it lacks is a :class:`CommandError`.
    """
    out: dict[str, None] = {}
    for text in names:
        key = text.strip().lower()
        if key in GROUPS:
            members = GROUPS[key]
            if available is not None:
                members = tuple(q for q in members if q in available)
                if not members:
                    raise CommandError(f"quantity group {key!r}: the meter has none of it")
            out.update(dict.fromkeys(members))
        elif key in QUANTITIES:
            if available is not None and key not in available:
                raise CommandError(f"quantity {key!r}: the meter's profile has no register "
                                   "for it")
            out[key] = None
        else:
            raise CommandError(f"unknown quantity {_short(text)}: not a group "
                               f"({', '.join(GROUPS)}) or a quantity name")
    return tuple(out)


def read_executor(*, meters: Callable[[], Iterable[MeterSettings]],
                  workers: Callable[[], Mapping[str, BusWorker]],
                  profile: Callable[[str], Profile] | None = None,
                  sink: Callable[[list[Reading]], None] | None = None,
                  collector_id: str = "", retries: int = 1,
                  td: float | None = None) -> Execute:
    """``execute`` for the ``read`` command: an on-demand job on the meter's bus worker.

    ``meters`` and ``workers`` are called per request, so a reload is seen.  ``sink``
    gets the readings too (the daemon stores them like polled ones).
    """
    from collector.polling.scheduler import Lane, read_meter
    from drivers.meters import kind_of

    where = f" on collector {collector_id}" if collector_id else ""

    async def execute(request: JsonDict) -> JsonDict:
        meter_id = str(request["meter"])
        m = next((x for x in meters() if x.meter_id == meter_id), None)
        if m is None:
            raise CommandError(f"meter {meter_id} is not configured{where}")
        worker = workers().get(m.bus)
        if worker is None:
            raise CommandError(f"meter {meter_id}: its bus {m.bus} is not running")
        # A meter described by a profile has what the profile maps; the others are asked
        # for any quantity and leave out what they refuse.
        available = (worker.device(m, profile).capabilities.quantities
                     if kind_of(m.protocol).needs_profile() else None)
        names = expand_quantities(request["quantities"], available)

        async def job(w: BusWorker) -> list[Reading]:
            return await read_meter(w, m, names, retries=retries, td=td, profiles=profile)

        records = await worker.submit(Lane.ON_DEMAND, job)
        if sink is not None:
            sink(records)
        return {"readings": [reading_json(r) for r in records]}

    return execute


def daemon_executor(ctx: DaemonContext) -> Execute:
    """:func:`read_executor` wired to a running daemon (through its context)."""
    return read_executor(meters=lambda: ctx.settings().meters, workers=ctx.workers,
                         profile=ctx.profile, sink=ctx.store_readings,
                         collector_id=ctx.settings().collector.id)


# ---- the requester's side (amic read --via) ---------------------------------------------

class RemoteError(Exception):
    """The request got no reply (after every attempt)."""


class BrokerError(RemoteError):
    """The broker could not be reached or refused us; the message names it."""


async def call(conn: Connection, collector_id: str, command: str, body: Mapping[str, Any],
               *, request_id: str | None = None, timeout: float = 10.0, attempts: int = 3,
               connect_timeout: float = 10.0) -> JsonDict:
    """Send a request and return its reply (a dict with ``status``).

    Subscribes to the reply topic first (SUBACK awaited), then publishes the request at
    QoS 1; after ``timeout`` seconds without a reply it publishes the same request again
    with the same request id (the collector answers a repeat without executing it
    twice), ``attempts`` publishes in all.
    """
    rid = request_id or new_request_id()
    topic = reply_topic(collector_id, rid)
    loop = asyncio.get_running_loop()
    reply: asyncio.Future[JsonDict] = loop.create_future()

    def on_reply(message: Any) -> None:
        _, payload = message_parts(message)
        try:
            doc = json.loads(payload or b"")
        except (UnicodeDecodeError, ValueError):
            return
        if isinstance(doc, dict) and doc.get("request_id") == rid and not reply.done():
            reply.set_result(doc)

    try:
        await conn.wait_connected(connect_timeout)
        await conn.subscribe(topic, on_reply, qos=1, timeout=connect_timeout)
    except DriverError as e:
        raise BrokerError(str(e)) from None
    payload = _json({"request_id": rid, "command": command, **body}).encode()
    for attempt in range(1, attempts + 1):
        started = loop.time()
        try:
            await conn.publish(request_topic(collector_id, command), payload, qos=1,
                               timeout=timeout)
        except DriverError as e:
            log.debug("request %s: publish failed (%s)", rid, e)
            if attempt == attempts and not reply.done():
                raise BrokerError(str(e)) from None
        left = max(timeout - (loop.time() - started), 0.0)
        try:
            return await asyncio.wait_for(asyncio.shield(reply), left)
        except TimeoutError:
            log.debug("request %s: no reply within %g s (attempt %d)", rid, timeout,
                      attempt)
    raise RemoteError(f"no reply within {timeout:g} s ({attempts} attempt"
                      f"{'s' if attempts != 1 else ''}, request {rid}); is the collector "
                      "running and connected to this broker?")


def parse_ts(text: object) -> dt.datetime | None:
    if not isinstance(text, str):
        return None
    try:
        t = dt.datetime.fromisoformat(text)
    except ValueError:
        return None
    return t if t.tzinfo else t.replace(tzinfo=dt.UTC)


__all__ = [
    "COMMANDS", "DENIED", "DOCUMENT", "DONE", "RECEIVED", "REPEATABLE", "SERVED_AS",
    "BrokerError",
    "CommandDenied", "CommandError", "CommandServer",
    "Connection", "Execute", "Journal", "MemoryJournal", "RemoteError", "Request",
    "ServerStats", "StoreJournal", "call", "command_filter", "daemon_executor",
    "expand_quantities", "message_parts", "new_request_id", "parse_ts", "read_executor",
    "reading_json", "reply_topic", "request_topic", "valid_request_id",
]

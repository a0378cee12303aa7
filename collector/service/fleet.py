"""Several collectors, one fleet of concentrators, through the MQTT broker.

A province's concentrators do not fit one process: several amic instances (each its own
``[collector] id``, the same concentrators and meters, ``[mqtt] fleet = NAME``) sit
behind a TCP load balancer, and a terminal logs in to whichever it reaches.  They share
the fleet through the broker's retained messages, not a cluster of their own:

``amic/terminals/<A1><A2 hex>`` (retained)
    ``{"instance": "<collector id>", "fleet": ..., "concentrator": ..., "since": ...}``:
    the instance holding the terminal's session, from its login (``since``, UTC).
    Published at login; cleared (empty retained) by its owner when the session ends.
    When two instances claim a terminal (its old connection not yet timed out on one),
    the newer login wins and the other drops its stale session.
``amic/<fleet>/instances/<collector id>`` (retained)
    ``online`` while the instance is connected; the broker clears it (our will) when the
    instance vanishes, so an announcement of a dead instance counts for nothing.
``amic/<fleet>/claim/<request id>`` (retained, kept a day)
    ``{"instance": ..., "ts": ...}``: published (and acknowledged by the broker) before an
    instance carries a fleet request out; the other instances then leave that request
    id alone, repeats included.

Requests on ``amic/<fleet>/cmd/<command>`` (the command channel of
:mod:`collector.commands.remote`, signed documents naming the fleet) reach every
instance.  The one holding the session of the meter's concentrator claims and executes
it, with its own journal (the request id journal: a repeat is answered, never executed
again).  The others hold it for ``[mqtt] fleet_hold`` seconds: if the terminal logs in
to one of them meanwhile (it moved), that one takes it over.  When nobody holds the
terminal at the end, the request is answered as failed (not carried out).  A meter on a
bus of its own is served by the instance that runs that bus.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import json
import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Final

from collector.commands.remote import (
    CommandError,
    CommandServer,
    Connection,
    Execute,
    JsonDict,
    message_parts,
)
from collector.store.records import utcnow

log = logging.getLogger("amic.fleet")

ROOT: Final = "amic"
CLAIM_TTL: Final = 86_400.0  # s a claim stays on the broker: repeats come within hours
SETTLE: Final = 1.0  # s after a login before held requests run: claims in flight arrive


def terminal_key(a1: str, a2: int) -> str:
    """The topic level of a terminal: A1 and A2 in hex, as master stations show it."""
    return f"{a1.upper()}{a2:04X}"


def owner_topic(key: str) -> str:
    return f"{ROOT}/terminals/{key}"


@dataclass(frozen=True, slots=True)
class Terminal:
    """A concentrator of the fleet, as a request's meter names it."""

    key: str  # terminal_key()
    name: str  # its [[concentrator]] name


@dataclass(frozen=True, slots=True)
class FleetHooks:
    """What the fleet asks of the daemon.

    ``terminal_of(meter)``: the concentrator a meter is behind (None: not behind one);
    ``session_since(key)``: the login time of our live session of that terminal, None
    if we hold none; ``drop(key, reason)`` closes our session; ``runs_bus(meter)``: a
    meter not behind a concentrator whose bus runs here; ``known_meter(meter)``.
    """

    terminal_of: Callable[[str], Terminal | None]
    session_since: Callable[[str], dt.datetime | None]
    drop: Callable[[str, str], None]
    runs_bus: Callable[[str], bool]
    known_meter: Callable[[str], bool]


@dataclass(frozen=True, slots=True)
class Owner:
    instance: str
    since: dt.datetime


@dataclass(slots=True)
class _Held:
    topic: str
    payload: bytes
    deadline: float
    request_id: str


@dataclass(slots=True)
class FleetStats:
    executed_here: int = 0  # requests claimed and handed to the command server
    elsewhere: int = 0  # requests left to the instance that claimed them
    held: int = 0  # requests that waited for their terminal
    taken_over: int = 0  # held requests run after their terminal logged in here
    not_held: int = 0  # answered as failed: no instance held the terminal
    dropped_stale: int = 0  # our sessions dropped for a newer login elsewhere
    by_reason: dict[str, int] = field(default_factory=dict)


class Fleet:
    """This instance's part of the fleet (see the module docstring)."""

    def __init__(self, conn: Connection, hooks: FleetHooks, *, instance: str, fleet: str,
                 hold: float, settle: float = SETTLE, claim_ttl: float = CLAIM_TTL) -> None:
        self.conn = conn
        self.instance = instance
        self.fleet = fleet
        self.hold = hold
        self.terminal_of = hooks.terminal_of
        self.session_since = hooks.session_since
        self.drop = hooks.drop
        self.runs_bus = hooks.runs_bus
        self.known_meter = hooks.known_meter
        self.settle = settle
        self.claim_ttl = claim_ttl
        self.server: CommandServer | None = None
        self.stats = FleetStats()
        self.owners: dict[str, Owner] = {}  # terminal key -> announced owner
        self.alive: set[str] = set()  # instances online
        self.claims: dict[str, tuple[str, float]] = {}  # request id -> (instance, ts)
        self._held: dict[str, list[_Held]] = {}  # terminal key -> requests waiting
        self._refuse: dict[str, str] = {}  # request id -> why it is answered as failed
        self._tasks: set[asyncio.Task[None]] = set()
        self._announced: dict[str, tuple[dt.datetime, str]] = {}  # ours: (since, name)

    @property
    def presence_topic(self) -> str:
        return f"{ROOT}/{self.fleet}/instances/{self.instance}"

    def will(self) -> tuple[str, bytes]:
        """The broker clears our presence when we vanish (kill -9, network)."""
        return self.presence_topic, b""

    def executor(self, execute: Execute) -> Execute:
        """``execute`` for the fleet's command server: ours, or a refusal decided here;
        the reply names the instance that answered."""
        async def run(request: JsonDict) -> JsonDict:
            why = self._refuse.pop(str(request.get("request_id")), None)
            if why is not None:
                raise CommandError(why)
            result = dict(await execute(request))
            result.setdefault("collector", self.instance)
            return result
        return run

    # ---- life cycle ------------------------------------------------------------------

    async def start(self, server: CommandServer) -> None:
        self.server = server
        f = f"{ROOT}/{self.fleet}"
        await self.conn.subscribe(f"{f}/instances/+", self._on_presence, qos=1)
        await self.conn.subscribe(f"{ROOT}/terminals/+", self._on_owner, qos=1)
        await self.conn.subscribe(f"{f}/claim/+", self._on_claim, qos=1)
        await self.conn.publish(self.presence_topic, b"online", qos=1, retain=True)
        await self.conn.subscribe(f"{f}/cmd/#", self._on_request, qos=1)
        self._spawn(self._sweep())
        log.info("fleet %s: serving amic/%s/cmd/# as %s", self.fleet, self.fleet,
                 self.instance)

    async def stop(self) -> None:
        for t in list(self._tasks):
            t.cancel()
        for t in list(self._tasks):
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await t
        # Our sessions end with us: nobody holds those terminals until they log in again.
        for key in list(self._announced):
            with contextlib.suppress(Exception):
                await self.conn.publish(owner_topic(key), b"", qos=1, retain=True,
                                        timeout=2.0)
        with contextlib.suppress(Exception):
            await self.conn.publish(self.presence_topic, b"", qos=1, retain=True,
                                    timeout=2.0)

    def _spawn(self, coro: Any) -> None:
        task = asyncio.get_running_loop().create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    # ---- terminals -------------------------------------------------------------------

    def owner(self, key: str) -> str | None:
        """The live instance holding ``key``'s session, as announced."""
        o = self.owners.get(key)
        if o is None or (o.instance != self.instance and o.instance not in self.alive):
            return None
        return o.instance

    def elsewhere(self, key: str) -> bool:
        """Another live instance holds the terminal and we do not: its meters are
        polled there, not here."""
        o = self.owner(key)
        return o is not None and o != self.instance and self.session_since(key) is None

    def online(self, key: str, name: str, since: dt.datetime) -> None:
        """Our master station logged the terminal in."""
        self._announce(key, name, since)
        if self._held.get(key):
            self._spawn(self._take_over(key))

    def offline(self, key: str) -> None:
        """Our session of the terminal ended."""
        if self._announced.pop(key, None) is None:
            return
        o = self.owners.get(key)
        if o is None or o.instance == self.instance:
            self.owners.pop(key, None)
            self._publish(owner_topic(key), b"")

    def _announce(self, key: str, name: str, since: dt.datetime) -> None:
        self._announced[key] = (since, name)
        self.owners[key] = Owner(self.instance, since)
        doc = {"instance": self.instance, "fleet": self.fleet, "concentrator": name,
               "since": since.astimezone(dt.UTC).isoformat()}
        self._publish(owner_topic(key), json.dumps(doc).encode())

    def _publish(self, topic: str, payload: bytes) -> None:
        async def run() -> None:
            try:
                await self.conn.publish(topic, payload, qos=1, retain=True)
            except asyncio.CancelledError:
                raise
            except Exception as e:
                log.warning("fleet: %s not published: %s", topic, e)
        self._spawn(run())

    def _on_presence(self, message: Any) -> None:
        topic, payload = message_parts(message)
        instance = topic.rsplit("/", 1)[-1]
        if payload:
            self.alive.add(instance)
        else:
            self.alive.discard(instance)
            if instance == self.instance and self.conn.connected:
                # our will fired after a reconnect that came too late: say it again
                self._publish(self.presence_topic, b"online")

    def _on_owner(self, message: Any) -> None:
        topic, payload = message_parts(message)
        key = topic.rsplit("/", 1)[-1]
        mine = self.session_since(key)
        if not payload:
            self.owners.pop(key, None)
            if mine is not None and key in self._announced:
                self._announce_again(key, mine)
            return
        try:
            doc = json.loads(payload)
            owner = Owner(str(doc["instance"]), dt.datetime.fromisoformat(doc["since"]))
        except (ValueError, KeyError, TypeError):
            log.warning("fleet: %s: not an owner announcement (ignored)", topic)
            return
        self.owners[key] = owner
        if owner.instance == self.instance:
            if mine is None and key not in self._announced:
                # left by an earlier run of ours (killed): the terminal is not here now
                self.owners.pop(key, None)
                self._publish(topic, b"")
            return
        if mine is not None and owner.since > mine:
            # It logged in there after it logged in here: our connection is stale.
            self.stats.dropped_stale += 1
            self._announced.pop(key, None)
            self.drop(key, f"logged in to collector {owner.instance} at "
                           f"{owner.since.isoformat()}")
        elif mine is not None:
            self._announce_again(key, mine)  # ours is the newer login

    def _announce_again(self, key: str, since: dt.datetime) -> None:
        self._announce(key, self._announced.get(key, (since, ""))[1], since)

    def _on_claim(self, message: Any) -> None:
        topic, payload = message_parts(message)
        rid = topic.rsplit("/", 1)[-1]
        if not payload:
            self.claims.pop(rid, None)
            return
        try:
            doc = json.loads(payload)
            claim = (str(doc["instance"]), float(doc["ts"]))
        except (ValueError, KeyError, TypeError):
            return
        self.claims[rid] = claim
        if claim[0] != self.instance:
            for key, held in list(self._held.items()):
                self._held[key] = [h for h in held if h.request_id != rid]

    async def _sweep(self) -> None:
        """Our claims older than a day are cleared from the broker."""
        while True:
            await asyncio.sleep(min(self.claim_ttl / 4, 600.0))
            now = utcnow().timestamp()
            for rid, (instance, ts) in list(self.claims.items()):
                if instance == self.instance and now - ts > self.claim_ttl:
                    del self.claims[rid]
                    self._publish(f"{ROOT}/{self.fleet}/claim/{rid}", b"")

    # ---- requests --------------------------------------------------------------------

    def _on_request(self, message: Any) -> None:
        assert self.server is not None
        if getattr(message, "retain", False) is True:
            self.server.on_message(message)  # counted and ignored there
            return
        topic, payload = message_parts(message)
        rid, meters = _peek(payload)
        if rid is None or not meters:
            if rid is not None and not self.server.known(rid):
                self._refuse[rid] = ("a fleet request names its meters (meter, or meters "
                                     "behind one concentrator); no area")
            self.server.handle(topic, payload)  # refused or answered with its error there
            return
        self.decide(topic, payload or b"", rid, meters)

    def decide(self, topic: str, payload: bytes, rid: str, meters: list[str]) -> None:
        assert self.server is not None
        if self.server.known(rid):
            self.server.handle(topic, payload)  # a repeat: answered from our journal
            return
        claim = self.claims.get(rid)
        if claim is not None and claim[0] != self.instance:
            self.stats.elsewhere += 1
            return
        meter = meters[0]
        t = self.terminal_of(meter)
        if any(self.terminal_of(m) != t for m in meters[1:]):
            self._refuse[rid] = ("a fleet request names meters behind one concentrator "
                                 "(send one request per concentrator)")
            self.server.handle(topic, payload)
            return
        if t is None:
            if self.runs_bus(meter) or not self.known_meter(meter):
                self._spawn(self._claim_and_run(topic, payload, rid))
            return  # on a bus another instance runs
        if self.session_since(t.key) is not None and self.owner(t.key) in (None,
                                                                           self.instance):
            self._spawn(self._claim_and_run(topic, payload, rid))
            return
        self.stats.held += 1
        loop = asyncio.get_running_loop()
        self._held.setdefault(t.key, []).append(
            _Held(topic, payload, loop.time() + self.hold, rid))
        self._spawn(self._expire(t, rid))

    async def _claim_and_run(self, topic: str, payload: bytes, rid: str) -> None:
        assert self.server is not None
        ts = utcnow().timestamp()
        self.claims[rid] = (self.instance, ts)
        try:
            await self.conn.publish(f"{ROOT}/{self.fleet}/claim/{rid}",
                                    json.dumps({"instance": self.instance, "ts": ts}),
                                    qos=1, retain=True)
        except asyncio.CancelledError:
            raise
        except Exception as e:
            # Unclaimed, it could run on two instances: not run; a repeat retries it.
            self.claims.pop(rid, None)
            log.warning("fleet: request %s not claimed (%s): not executed", rid, e)
            return
        self.stats.executed_here += 1
        self.server.handle(topic, payload)

    async def _take_over(self, key: str) -> None:
        await asyncio.sleep(self.settle)  # a claim published elsewhere arrives first
        held, self._held[key] = self._held.get(key, []), []
        for h in held:
            c = self.claims.get(h.request_id)
            if c is not None and c[0] != self.instance:
                continue
            if self.session_since(key) is None:
                self._held[key].append(h)  # gone again meanwhile: keep waiting
                continue
            self.stats.taken_over += 1
            log.info("fleet: request %s runs here: its terminal %s logged in", h.request_id,
                     key)
            await self._claim_and_run(h.topic, h.payload, h.request_id)

    async def _expire(self, t: Terminal, rid: str) -> None:
        await asyncio.sleep(self.hold)
        held = self._held.get(t.key, [])
        h = next((x for x in held if x.request_id == rid), None)
        if h is None:
            return
        held.remove(h)
        c = self.claims.get(rid)
        if (c is not None and c[0] != self.instance) or self.owner(t.key) not in (
                None, self.instance):
            return  # the instance holding it answers
        self.stats.not_held += 1
        self._refuse[rid] = (f"concentrator {t.name} ({t.key}) is not logged in to any "
                             f"collector of fleet {self.fleet} (waited {self.hold:g} s); "
                             "not carried out")
        assert self.server is not None
        self.server.handle(h.topic, h.payload)


def _peek(payload: bytes | None) -> tuple[str | None, list[str]]:
    """The request id and the meters of a request (None, [] where absent)."""
    try:
        doc = json.loads(payload or b"")
    except (UnicodeDecodeError, ValueError):
        return None, []
    if not isinstance(doc, dict):
        return None, []
    rid = doc.get("request_id")
    meters = doc.get("meters") if "meter" not in doc else [doc.get("meter")]
    if not isinstance(meters, list) or not all(isinstance(m, str) for m in meters) \
            or "area" in doc:
        meters = []
    return (rid if isinstance(rid, str) else None, [str(m) for m in meters])


__all__ = ["Fleet", "FleetHooks", "FleetStats", "Owner", "Terminal", "owner_topic", "terminal_key"]

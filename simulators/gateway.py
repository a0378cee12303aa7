"""An MQTT gateway (a concentrator with an MQTT uplink) in front of simulated DL/T645 meters.

``async with GatewaySimulator("mqtt://127.0.0.1:1883", meters=3) as gw:`` connects to the
broker and, as a field gateway does (topics and payloads: docs/mqtt.md):

* every ``interval`` seconds reads its meters and publishes one report per meter on
  ``<prefix>/<gateway>/report`` (``mode="json"``: quantity names, values and the meter's
  clock) or the meters' DL/T645 read replies as hex on ``<prefix>/<gateway>/raw``
  (``mode="raw"``); the first round goes out as soon as it is connected;
* passes frames through transparently: bytes published on ``<prefix>/<gateway>/down``
  go to the meters (as onto their RS-485 line) and each reply goes back, as the wire
  bytes, on ``<prefix>/<gateway>/up`` (QoS 1);
* keeps ``<prefix>/<gateway>/status`` (retained) at ``online`` while connected and
  ``offline`` otherwise (last will);
* reconnects, with back-off, when the broker goes away.

Uses aiomqtt directly; nothing here depends on the collector.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import signal
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from decimal import Decimal
from types import TracebackType
from typing import Any, Literal

import aiomqtt

from drivers.mqtt import parse_broker_url
from protocols.dlt645 import (
    FrameExtractor,
    ReadRequest,
    UnknownDataItem,
    build_frame,
    by_name,
)
from protocols.quantities import QUANTITIES

from .dlt645 import SimulatedMeter, make_meters
from .meter import Unavailable

__all__ = [
    "JSON_QUANTITIES",
    "RAW_ITEMS",
    "GatewaySimulator",
    "GatewayStats",
    "Mode",
    "serve",
]

log = logging.getLogger("simulators.gateway")

Mode = Literal["json", "raw"]

# What a JSON report carries (a quantity a meter lacks, e.g. phase B of a single-phase
# meter, is left out).  Energies go as {"value", "unit"} objects, the rest as bare numbers,
# so both forms of docs/mqtt.md are on the wire.
JSON_QUANTITIES: tuple[str, ...] = (
    "energy_active_forward_total", "energy_active_forward_t1", "energy_active_forward_t2",
    "energy_active_forward_t3", "energy_active_forward_t4", "energy_active_reverse_total",
    "energy_reactive_combined1_total",
    "voltage_a", "voltage_b", "voltage_c", "current_a", "current_b", "current_c", "current_n",
    "power_active_total", "power_active_a", "power_active_b", "power_active_c",
    "power_reactive_total", "power_factor_total", "frequency",
    "balance_amount", "overdraft_amount", "status_word_3",
)
_WITH_UNIT = frozenset(q for q in JSON_QUANTITIES if q.startswith("energy_"))

# The DL/T645 items a raw report reads (blocks where the catalogue has them); items an
# edition lacks are skipped.
RAW_ITEMS: tuple[str, ...] = (
    "energy_active_forward_block", "energy_active_reverse_total", "voltage_block",
    "current_block", "power_active_block", "power_factor_total", "frequency",
    "balance_amount", "overdraft_amount", "status_word_3",
)

RECONNECT_MIN = 0.2  # seconds before the first reconnection attempt
RECONNECT_MAX = 5.0  # back-off cap


def _json_number(value: Any) -> Any:
    if isinstance(value, Decimal):
        exponent = value.as_tuple().exponent
        return int(value) if isinstance(exponent, int) and exponent >= 0 else float(value)
    raise TypeError(f"{type(value).__name__} is not JSON")


@dataclass(slots=True)
class GatewayStats:
    connects: int = 0
    disconnects: int = 0
    reports: int = 0  # report messages published
    requests: int = 0  # frames received on /down
    replies: int = 0  # frames published on /up
    garbage_bytes: int = 0  # /down bytes that were no frame


class GatewaySimulator:
    """A gateway of ``meters`` (a count: addresses 000000000001..N, or SimulatedMeters)."""

    def __init__(
        self,
        broker_url: str,
        *,
        prefix: str = "amic-gw",
        gateway: str = "gw-01",
        meters: int | Sequence[SimulatedMeter] = 10,
        interval: float = 60.0,
        mode: Mode = "json",
        seed: int = 0,
        batch: bool = False,
        client_id: str | None = None,
        qos: int = 1,
    ) -> None:
        url = parse_broker_url(broker_url, credentials=True)
        if url.scheme != "mqtt":
            raise ValueError(f"broker: the simulator speaks plain mqtt://, not {url.scheme}://")
        self.host, self.port, self._user, self._password = url[1:]
        if mode not in ("json", "raw"):
            raise ValueError(f"mode {mode!r}: json or raw")
        if interval <= 0:
            raise ValueError("interval: seconds > 0")
        for part, what in ((prefix, "prefix"), (gateway, "gateway")):
            if not part or any(c in part for c in "+#") or (what == "gateway" and "/" in part):
                raise ValueError(f"{what} {part!r}: no wildcards" +
                                 (" or slashes" if what == "gateway" else ""))
        self.prefix = prefix.rstrip("/")
        self.gateway = gateway
        if isinstance(meters, int):
            if not 1 <= meters <= 9999:
                raise ValueError("meters: 1-9999")
            self.meters: list[SimulatedMeter] = make_meters(
                [f"{i:012d}" for i in range(1, meters + 1)], seed=seed)
        else:
            self.meters = list(meters)
            if not self.meters:
                raise ValueError("meters: at least one")
        self.interval = interval
        self.mode: Mode = mode
        self.batch = batch
        self.qos = qos
        self.client_id = client_id or f"amic-gwsim-{gateway}-{uuid.uuid4().hex[:8]}"
        base = f"{self.prefix}/{gateway}"
        self.report_topic = f"{base}/{'report' if mode == 'json' else 'raw'}"
        self.down_topic = f"{base}/down"
        self.up_topic = f"{base}/up"
        self.status_topic = f"{base}/status"
        self.stats = GatewayStats()
        self.connected = asyncio.Event()
        self._extractor = FrameExtractor(lambda _address, control: not control & 0x80)
        self._next_report: float | None = None
        self._task: asyncio.Task[None] | None = None
        self._stopping = False

    @property
    def url(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"mqtt://{host}:{self.port}"

    # ---- what goes on the wire (no I/O) ---------------------------------------------------

    def report_payloads(self) -> list[bytes]:
        """The report messages of one round, as published now."""
        if self.mode == "json":
            entries = [self._json_entry(m) for m in self.meters]
            if self.batch:
                return [self._dump({"gateway": self.gateway, "readings": entries})]
            return [self._dump({"gateway": self.gateway, **e}) for e in entries]
        frames = [(m, self._raw_frames(m)) for m in self.meters]
        if self.batch:
            every = [f for _m, fs in frames for f in fs]
            return [self._dump({"gateway": self.gateway, "frames": every})] if every else []
        return [self._dump({"gateway": self.gateway, "frames": fs}) for _m, fs in frames if fs]

    @staticmethod
    def _dump(doc: dict[str, Any]) -> bytes:
        return json.dumps(doc, default=_json_number, ensure_ascii=False,
                          separators=(",", ":")).encode()

    def _json_entry(self, meter: SimulatedMeter) -> dict[str, Any]:
        model = meter.model
        # The meter clock is local time without a zone: the host's zone is the meter's.
        ts = model.now().astimezone().isoformat()
        values: dict[str, Any] = {}
        for name in JSON_QUANTITIES:
            try:
                value = model.read(name)
            except Unavailable:
                continue
            values[name] = {"value": value, "unit": QUANTITIES[name].unit} if name in _WITH_UNIT \
                else value
        return {"address": meter.address, "ts": ts, "values": values}

    def _raw_frames(self, meter: SimulatedMeter) -> list[str]:
        out: list[str] = []
        for name in RAW_ITEMS:
            try:
                item = by_name(name, meter.version)
            except UnknownDataItem:
                continue
            request = ReadRequest(address=meter.address, version=meter.version, di=item.di)
            reply = meter.handle(request.to_frame())
            if reply is None or reply.abnormal or reply.follow_up:
                continue  # the gateway forwards complete, normal replies only
            out.append(build_frame(reply, preamble=0).hex().upper())
        return out

    def answer(self, data: bytes) -> list[bytes]:
        """Feed bytes from /down onto the meters' line; the wire bytes of every reply."""
        self._extractor.feed(data)
        replies: list[bytes] = []
        for frame in self._extractor:
            self.stats.requests += 1
            for meter in self.meters:
                reply = meter.handle(frame)
                if reply is not None:
                    replies.append(build_frame(reply))
        self.stats.garbage_bytes = self._extractor.stats.garbage_bytes
        return replies

    # ---- running -------------------------------------------------------------------------

    async def __aenter__(self) -> GatewaySimulator:
        self._task = asyncio.create_task(self.run(), name=f"gateway-{self.gateway}")
        return self

    async def __aexit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                        tb: TracebackType | None) -> None:
        await self.stop()

    async def stop(self) -> None:
        task, self._task = self._task, None
        self._stopping = True
        if task is not None:
            await _cancel(task)

    async def wait_connected(self, timeout: float = 10.0) -> None:
        await asyncio.wait_for(self.connected.wait(), timeout)

    def _client(self) -> aiomqtt.Client:
        return aiomqtt.Client(
            self.host, self.port, username=self._user, password=self._password,
            identifier=self.client_id, keepalive=10, timeout=5.0,
            will=aiomqtt.Will(self.status_topic, b"offline", qos=1, retain=True),
        )

    async def run(self) -> None:
        """Serve until cancelled, reconnecting whenever the broker goes away."""
        delay = RECONNECT_MIN
        while not self._stopping:
            try:
                async with self._client() as client:
                    delay = RECONNECT_MIN
                    await client.subscribe(self.down_topic, qos=self.qos)
                    await client.publish(self.status_topic, b"online", qos=1, retain=True)
                    self.stats.connects += 1
                    if self.stats.connects == 1:
                        log.info("connected to %s as gateway %s", self.url, self.gateway)
                    else:
                        log.warning("reconnected to %s", self.url)
                    self.connected.set()
                    try:
                        await self._serve(client)
                    except asyncio.CancelledError:
                        # Going down on purpose: say so (the will is for crashes).
                        with contextlib.suppress(Exception):
                            await asyncio.wait_for(client.publish(
                                self.status_topic, b"offline", qos=1, retain=True), 1.0)
                        raise
            except aiomqtt.MqttError as e:
                task = asyncio.current_task()
                if task is not None and task.cancelling():
                    # Cancelled while aiomqtt tore the connection down, which turned the
                    # CancelledError into an MqttError: stop, do not reconnect.
                    raise asyncio.CancelledError from e
                if self.connected.is_set():
                    self.stats.disconnects += 1
                    log.warning("lost %s: %s; reconnecting", self.url, e)
                else:
                    log.warning("cannot connect to %s: %s; retrying in %.1f s", self.url, e,
                                delay)
            finally:
                self.connected.clear()
            await asyncio.sleep(delay)
            delay = min(delay * 2, RECONNECT_MAX)

    async def _serve(self, client: aiomqtt.Client) -> None:
        tasks = {asyncio.create_task(self._report_loop(client)),
                 asyncio.create_task(self._listen(client))}
        try:
            done, _ = await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
        finally:
            await _cancel(*tasks)
        for t in done:
            t.result()  # re-raises the MqttError that ended it

    async def _report_loop(self, client: aiomqtt.Client) -> None:
        loop = asyncio.get_running_loop()
        while not self._stopping:
            now = loop.time()
            if self._next_report is None or self._next_report <= now:
                for payload in self.report_payloads():
                    await client.publish(self.report_topic, payload, qos=self.qos)
                    self.stats.reports += 1
                # The schedule keeps its phase across reconnects; missed rounds are skipped.
                base = self._next_report if self._next_report is not None else now
                while base <= now:
                    base += self.interval
                self._next_report = base
            await asyncio.sleep(max(0.0, self._next_report - loop.time()))

    async def _listen(self, client: aiomqtt.Client) -> None:
        async for message in client.messages:
            payload = message.payload
            if isinstance(payload, str):
                data = payload.encode("latin-1", "replace")
            elif isinstance(payload, (bytes, bytearray)):
                data = bytes(payload)
            else:
                continue
            for reply in self.answer(data):
                await client.publish(self.up_topic, reply, qos=self.qos)
                self.stats.replies += 1


async def _cancel(*tasks: asyncio.Task[Any]) -> None:
    """Cancel ``tasks`` and wait until they are done.

    Python 3.11's ``asyncio.wait_for`` (used by aiomqtt for every acknowledged call)
    swallows a cancellation that arrives as its awaitable completes, so one ``cancel()``
    may go unheard: cancel again until every task has ended.
    """
    for t in tasks:
        t.cancel()
    pending = {t for t in tasks if not t.done()}
    while pending:
        _, pending = await asyncio.wait(pending, timeout=0.2)
        for t in pending:
            t.cancel()
    for t in tasks:
        if not t.cancelled():
            with contextlib.suppress(Exception):
                t.exception()  # retrieved: no "exception was never retrieved" warning


def serve(sim: GatewaySimulator, *,
          ready: Callable[[GatewaySimulator], None] | None = None) -> GatewayStats:
    """Run ``sim`` until SIGINT or SIGTERM (blocking); ``ready(sim)`` once first connected."""

    async def main() -> GatewayStats:
        loop = asyncio.get_running_loop()
        stop = asyncio.Event()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, stop.set)
        async with sim:
            waiter = asyncio.create_task(sim.connected.wait())
            stopper = asyncio.create_task(stop.wait())
            await asyncio.wait({waiter, stopper}, return_when=asyncio.FIRST_COMPLETED)
            if waiter.done() and ready is not None:
                ready(sim)
            await stopper
            waiter.cancel()
        return sim.stats

    return asyncio.run(main())


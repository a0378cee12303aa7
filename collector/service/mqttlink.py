"""The daemon's broker connection: gateway reports in, the remote command channel."""

from __future__ import annotations

import asyncio
import json
import logging
import os
from typing import TYPE_CHECKING, Any

from collector.commands.remote import CommandServer, Execute, StoreJournal, daemon_executor
from collector.config.settings import MeterSettings, Settings
from collector.polling.gateway import Reject, ReportIngestor
from collector.store.records import Event, utcnow
from drivers.mqtt import MqttConnection

from .fleet import Fleet, FleetHooks

if TYPE_CHECKING:
    from collector.polling.context import DaemonContext

    from .control import Control

log = logging.getLogger("amic.mqtt")

SESSION_FILE = "mqtt-session.json"  # in data_dir: the broker and client id of our session


def connection_for(settings: Settings,
                   will: tuple[str, bytes] | None = None) -> MqttConnection:
    m = settings.mqtt
    assert m is not None
    return MqttConnection(m.url, client_id=m.client_id or f"amic-{settings.collector.id}",
                          username=m.username, password=m.password,
                          ca_file=m.ca_file, cert_file=m.cert_file, key_file=m.key_file,
                          clean_session=False, will=will)


class MqttLink:
    """One persistent-session connection shared by reports, mqtt buses and commands."""

    def __init__(self, ctx: DaemonContext, control: Control | None = None,
                 fleet: FleetHooks | None = None) -> None:
        self.ctx = ctx
        self.control = control  # answers relay and top-up requests when there is one
        settings = ctx.settings()
        m = settings.mqtt
        self.fleet: Fleet | None = None
        self.fleet_commands: CommandServer | None = None
        self._fleet_hooks = fleet if m is not None and m.fleet and m.commands else None
        will = None
        if self._fleet_hooks is not None:
            assert m is not None and m.fleet is not None
            will = (f"amic/{m.fleet}/instances/{settings.collector.id}", b"")
        self.conn = connection_for(settings, will)
        self.conn.on_session_lost = self._on_session_lost
        self.conn.on_connected = self._on_connected
        # A session an earlier run had at this broker: the first connection is checked too.
        self._session_file = ctx.settings().collector.data_dir / SESSION_FILE
        self._session_key = {"broker": self.conn.name, "client_id": self.conn.client_id}
        self.conn.had_session = self._read_session_file() == self._session_key
        self.ingestor: ReportIngestor | None = None
        self.commands: CommandServer | None = None
        self._subscribed: set[str] = set()
        self._publishing: set[asyncio.Task[Any]] = set()
        self._remembered = False  # the session file is up to date for this run

    async def start(self) -> None:
        await self.conn.__aenter__()
        ctx = self.ctx
        settings = ctx.settings()
        self.ingestor = ReportIngestor(settings.meters, ctx.profile, ctx.on_readings,
                                       self._on_reject, gateway_of=self._gateway_of)
        await self.apply(settings)
        m = settings.mqtt
        if m is not None and m.commands:
            store, writer = ctx.store(), ctx.writer()
            assert store is not None and writer is not None
            execute = daemon_executor(ctx)
            if self.control is not None:
                execute = self.control.executor(execute)
            self.commands = CommandServer(self.conn, settings.collector.id, execute,
                                          StoreJournal(store, writer),
                                          commands=("read", "relay", "topup"),
                                          repeatable=("read",), signed=("relay", "topup"),
                                          reply_prefixes=m.reply_prefixes)
            self.commands.start()
            if self._fleet_hooks is not None:
                await self._start_fleet(execute)
        log.info("mqtt: %s as %s; %d gateways, command channel %s", m.url if m else "-",
                 self.conn.client_id if hasattr(self.conn, "client_id") else "-",
                 len(settings.gateways), "on" if self.commands else "off")

    async def _start_fleet(self, execute: Execute) -> None:
        """Serve amic/<fleet>/cmd/# too: the requests for terminals we hold."""
        settings = self.ctx.settings()
        m = settings.mqtt
        store, writer = self.ctx.store(), self.ctx.writer()
        assert m is not None and m.fleet is not None and self._fleet_hooks is not None
        assert store is not None and writer is not None
        fleet = Fleet(self.conn, self._fleet_hooks, instance=settings.collector.id,
                      fleet=m.fleet, hold=m.fleet_hold)
        self.fleet_commands = CommandServer(
            self.conn, m.fleet, fleet.executor(execute), StoreJournal(store, writer),
            commands=("read", "relay", "topup"), repeatable=("read",),
            signed=("relay", "topup"), reply_prefixes=m.reply_prefixes)
        self.fleet = fleet
        await fleet.start(self.fleet_commands)

    def _gateway_of(self, meter: MeterSettings) -> str:
        for b in self.ctx.settings().buses:
            if b.name == meter.bus:
                return b.gateway or b.name
        return meter.bus

    async def apply(self, settings: Settings) -> None:
        """Follow a (re)loaded configuration: meters and report subscriptions."""
        assert self.ingestor is not None
        self.ingestor.update_meters(settings.meters)
        wanted = {f"{g.prefix}/{g.name}/{kind}" for g in settings.gateways if g.reports
                  for kind in ("report", "raw")}
        for topic in sorted(wanted - self._subscribed):
            await self.conn.subscribe(topic, self._on_report, qos=1)
        for topic in sorted(self._subscribed - wanted):
            await self.conn.unsubscribe(topic)
        self._subscribed = wanted

    def _on_report(self, message: Any) -> None:
        assert self.ingestor is not None
        payload = message.payload
        if isinstance(payload, str):
            payload = payload.encode()
        elif not isinstance(payload, (bytes, bytearray)):
            payload = str(payload).encode()
        self.ingestor.handle(str(message.topic), bytes(payload))

    def _read_session_file(self) -> object:
        try:
            return json.loads(self._session_file.read_text())
        except FileNotFoundError:
            return None
        except (OSError, ValueError) as e:
            log.warning("mqtt: %s: %s (ignored)", self._session_file, e)
            return None

    def _on_connected(self, session_present: bool | None) -> None:
        """Remember that the broker has a session of ours, for the next run."""
        if session_present is None or self.conn.clean_session or self._remembered:
            return
        self._remembered = True
        if self._read_session_file() == self._session_key:
            return
        tmp = self._session_file.with_name(SESSION_FILE + ".tmp")
        try:
            tmp.write_text(json.dumps(self._session_key) + "\n")
            os.replace(tmp, self._session_file)
        except OSError as e:
            log.warning("mqtt: cannot write %s: %s (a broker that loses our session while "
                        "the daemon is stopped goes unnoticed)", self._session_file, e)

    def _on_session_lost(self, text: str) -> None:
        # An alarm: commands and gateway replies the broker queued for us are gone, and
        # it will happen again at its next restart until persistence is turned on.
        self.ctx.on_event(Event("broker_session_lost", utcnow(), severity=2,
                                detail=text[:500]))

    def _on_reject(self, r: Reject) -> None:
        # Kept as events (numeric fields only where they matter): reason and excerpt.
        self.ctx.on_event(Event("report_rejected", r.ts, severity=1,
                                detail=f"{r.reason}: {r.detail} | {r.topic} | "
                                       f"{r.payload_excerpt}"[:500]))

    def publish_event(self, event: Event) -> None:
        """``amic/<collector id>/event``, QoS 1, not retained; dropped while offline (the
        store keeps every event and the forwarder ships it)."""
        if not self.conn.connected:
            return
        doc = {"kind": event.kind, "ts": event.ts.isoformat(), "meter": event.meter,
               "bus": event.bus, "severity": event.severity, "value": event.value,
               "detail": event.detail}
        topic = f"amic/{self.ctx.settings().collector.id}/event"
        task = asyncio.get_running_loop().create_task(
            self.conn.publish(topic, json.dumps(doc, ensure_ascii=False), qos=1))
        self._publishing.add(task)
        task.add_done_callback(self._published)

    def _published(self, task: asyncio.Task[Any]) -> None:
        self._publishing.discard(task)
        if not task.cancelled() and task.exception() is not None:
            log.debug("event not published: %s", task.exception())

    async def stop(self) -> None:
        if self.fleet is not None:
            await self.fleet.stop()
        if self.fleet_commands is not None:
            await self.fleet_commands.close()
        if self.commands is not None:
            await self.commands.close()
        await self.conn.__aexit__(None, None, None)

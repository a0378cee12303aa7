""":class:`Notifications`: stored events to messages, messages to their channels.

Each round (every ``[notify] interval``) turns the rows stored since the last round into
outbox messages (one per channel whose rule takes it), then tries the messages that are
due, oldest first:

* a channel with ``quiet = true`` holds a message during ``quiet_hours`` (local time in
  ``tz``) until they end, unless its severity is ``urgent_severity`` or above;
* a channel with ``rate_limited = true`` sends at most ``max_per_hour`` messages of one
  meter in any hour; the next waits until the oldest of them is an hour old;
* an outage (:class:`~.channels.Retry`) keeps the message, tried again after a back-off
  doubling from ``retry_min`` to ``retry_max``; that channel is left alone for the rest
  of the round.

The rounds run in one thread of their own (SQLite, blocking SMTP and HTTP), never on the
event loop.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import datetime as dt
import logging
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from zoneinfo import ZoneInfo

from collector.config.settings import MeterSettings, NotifySettings, SmsSettings
from collector.polling.rules import SEVERITY
from collector.store import Store
from collector.store.records import from_ms

from .channels import Channel, GiveUp, Retry, SmsChannel, make_channel
from .outbox import RELAY_KINDS, Message, Outbox, Source

log = logging.getLogger("amic.notify")

HOUR = dt.timedelta(hours=1)
# Older rows are not notified: a [notify] taken out and put back days later (its cursor
# kept) must not flood customers with what happened meanwhile.
STALE = dt.timedelta(days=1)


@dataclass(slots=True)
class Round:
    """What one round did."""

    made: int = 0
    delivered: int = 0
    retried: int = 0
    held: int = 0
    failed: int = 0


def quiet_until(now: dt.datetime, hours: tuple[float, float] | None,
                tz: str) -> dt.datetime | None:
    """The end of the quiet hours ``now`` is in (None: not in quiet hours)."""
    if hours is None:
        return None
    start, end = hours
    local = now.astimezone(ZoneInfo(tz))
    h = local.hour + local.minute / 60 + local.second / 3600
    midnight = dt.datetime.combine(local.date(), dt.time(0), tzinfo=local.tzinfo)
    if start < end:
        inside, day = start <= h < end, 0
    else:  # across midnight
        inside, day = h >= start or h < end, 1 if h >= start else 0
    if not inside:
        return None
    return (midnight + dt.timedelta(days=day, hours=end)).astimezone(dt.UTC)


class Notifications:
    """The notification service over a store.

    ``meters``: the configured meters by id, as they are now (the ledger's phone).
    ``clock``: the time (tests move it).
    """

    def __init__(self, settings: NotifySettings, store: Store,
                 meters: Callable[[], Mapping[str, MeterSettings]], *,
                 clock: Callable[[], dt.datetime] | None = None) -> None:
        self.settings = settings
        self.meters = meters
        self.clock = clock or (lambda: dt.datetime.now(dt.UTC))
        self.outbox = Outbox(store)
        self.outbox.start_cursors()
        self.channels: dict[str, Channel] = {}
        self.apply(settings)
        self.last = Round()
        self._pool = concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="notify")
        self._stop = asyncio.Event()
        self._task: asyncio.Task[None] | None = None

    def apply(self, settings: NotifySettings) -> None:
        """New settings (a reload): the next round uses them."""
        self.settings = settings
        self.channels = {c.name: make_channel(c, settings.tz) for c in settings.channels}
        known = {*SEVERITY, *(kind for kind, _ in RELAY_KINDS.values())}
        for c in settings.channels:
            for k in c.events:
                if k not in known and k.removesuffix("_cleared") not in SEVERITY:
                    log.warning("notify %s: no event is of kind %s (docs/schema.md)",
                                c.name, k)

    def route(self, src: Source) -> list[str]:
        """The channels whose rule takes ``src`` (an SMS only to a meter with a phone;
        nothing for a row older than :data:`STALE`)."""
        if from_ms(src.ts) < self.clock() - STALE:
            return []
        meter = self.meters().get(src.meter) if src.meter else None
        return [c.name for c in self.settings.channels
                if c.wants(src.kind, src.severity, src.meter)
                and not (isinstance(c, SmsSettings) and (meter is None or not meter.phone))]

    # ---- one round ---------------------------------------------------------------------

    def run_once(self) -> Round:
        """One round (blocking): new rows to messages, then the due messages sent."""
        r = Round(made=self.outbox.pump(self.route, now=self.clock()))
        down: set[str] = set()
        for msg in self.outbox.due(self.clock()):
            if msg.channel not in down:
                self._deliver(msg, r, down)
        self.last = r
        return r

    def _deliver(self, msg: Message, r: Round, down: set[str]) -> None:
        s = self.settings
        now = self.clock()
        ch = self.channels.get(msg.channel)
        if ch is None:
            self.outbox.give_up(msg.id, f"no channel {msg.channel} in [notify]", now)
            r.failed += 1
            return
        if ch.settings.quiet and msg.severity < s.urgent_severity:
            until = quiet_until(now, s.quiet_hours, s.tz)
            if until is not None:
                self.outbox.hold(msg.id, until)
                r.held += 1
                return
        if ch.settings.rate_limited and s.max_per_hour and msg.meter:
            sent = self.outbox.sent_since(msg.channel, msg.meter, now - HOUR)
            if len(sent) >= s.max_per_hour:
                self.outbox.hold(msg.id, from_ms(sent[-s.max_per_hour]) + HOUR)
                r.held += 1
                return
        meter = self.meters().get(msg.meter) if msg.meter else None
        to = ch.recipient(meter) if isinstance(ch, SmsChannel) else ch.name
        try:
            ch.send(msg, meter)
        except Retry as e:
            delay = min(s.retry_max, s.retry_min * 2 ** min(msg.attempts, 30))
            self.outbox.retry_at(msg.id, now + dt.timedelta(seconds=delay), str(e))
            down.add(msg.channel)
            r.retried += 1
            log.warning("notify %s: %s for meter %s not delivered (%s); again in %g s",
                        msg.channel, msg.kind, msg.meter or "-", e, delay)
        except GiveUp as e:
            self.outbox.give_up(msg.id, str(e), now)
            r.failed += 1
            log.error("notify %s: %s for meter %s refused for good: %s", msg.channel,
                      msg.kind, msg.meter or "-", e)
        else:
            self.outbox.delivered(msg.id, self.clock())
            r.delivered += 1
            log.info("notify %s: %s for meter %s delivered to %s", msg.channel, msg.kind,
                     msg.meter or "-", to)

    # ---- in the daemon -----------------------------------------------------------------

    async def round(self) -> Round:
        """:meth:`run_once` in the service's thread."""
        return await asyncio.get_running_loop().run_in_executor(self._pool, self.run_once)

    async def reload(self, settings: NotifySettings) -> None:
        """:meth:`apply` between two rounds (a reload of the configuration)."""
        await asyncio.get_running_loop().run_in_executor(self._pool, self.apply, settings)

    def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name="notify")

    async def _run(self) -> None:
        while not self._stop.is_set():
            try:
                await self.round()
            except Exception:  # a bad round must not end notifications
                log.exception("notify: round failed")
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._stop.wait(), self.settings.interval)

    async def stop(self, timeout: float = 5.0) -> None:
        """Let the round in flight finish (up to ``timeout``), then close."""
        self._stop.set()
        if self._task is not None:
            try:
                await asyncio.wait_for(asyncio.shield(self._task), timeout)
            except TimeoutError:
                log.warning("notify: a round still running at stop; its message is sent "
                            "again on the next start")
                self._task.cancel()
        self._pool.shutdown(wait=False)
        if self._task is None or self._task.done():
            self.outbox.close()

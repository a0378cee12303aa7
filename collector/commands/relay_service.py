"""Relay commands on configured meters: governance, rate limit, expiry and the audit trail.

:class:`RelayService` is what both the daemon (commands through the broker, the prepaid
engine) and ``amic trip`` without ``--via`` (the CLI owning the buses itself) use:

- each command carries an operator (a name in the secrets file, whose operator code goes
  to the meter) and a reason; passwords and operator codes come from the secrets file and
  are never printed, logged or stored;
- a command that has expired (default 5 min after it was issued) before its turn is not
  sent (``expired``);
- relay commands on one bus are at least ``min_interval`` apart (a rate limit per bus:
  one trip of a whole transformer area must not switch every customer in the same
  second); they run on the bus worker's command lane, ahead of polling;
- every switching is recorded in the store's ``commands`` table twice: ``sent`` before
  anything goes on the wire, then its outcome, with who, why, when, before and after relay
  state, energy at switching and latency in ``detail`` (JSON).  ``amic audit`` lists them;
  the forwarder ships them (measurement ``command``; numeric fields from the detail).

``dry_run`` checks everything (meter known, secrets present, bus running, the command
supported, the relay state readable, no hold power under a trip) and reads the relay
state, but sends nothing; it is recorded as kind ``dry_run`` with the status the real
command would start with (``dry_run`` when it would be sent; ``failed``, ``unsupported``,
``refused``, ``address_mismatch`` or ``skipped_protected`` when not).

A trip never reaches a protected meter: an area master meter (role ``area_master``) or
a customer of ``[prepaid] protected`` (the hold-power list, see :func:`protected_meters`).
It is recorded as ``skipped_protected`` (exit status 0: the policy worked), with why in
the audit detail (``protected``).  ``force=True`` (``amic trip --force``, with the
reason every command needs) trips it all the same; the audit detail then holds
``forced`` (who, why, what protection was overridden).
"""

from __future__ import annotations

import asyncio
import datetime as dt
import json
import logging
import time
import uuid
from collections.abc import Callable, Iterable, Mapping
from typing import Any, Final

from collector.config import meters_matching
from collector.config.secrets import Secrets, SecretsError
from collector.config.settings import CommandSettings, MeterSettings, Settings
from collector.polling.scheduler import BusWorker, Lane, WorkerStopped
from collector.store.records import CommandRecord, utcnow
from drivers.device import Capabilities, Credentials, MeterRef, Unsupported
from drivers.errors import DriverError
from drivers.meters import capabilities
from protocols.modbus import Profile

from .relay import ACTIONS, EXIT_CODES, RelayState, execute, read_relay_state

log = logging.getLogger("amic.commands")

SWITCH_ACTIONS: Final = ACTIONS  # trip, restore, hold, release, alarm, alarm_release
# Outcomes beyond relay.py's: not sent because of governance.
EXIT_CODES_ALL: Final[dict[str, int]] = {**{str(k): v for k, v in EXIT_CODES.items()},
                                         "expired": 8, "rejected": 9, "dry_run": 0, "ok": 0,
                                         "skipped_protected": 0}
SKIPPED_PROTECTED: Final = "skipped_protected"


class CommandRejected(Exception):
    """The command cannot be carried out at all (unknown meter, missing secret...)."""


def _state_dict(state: RelayState | None) -> dict[str, Any] | None:
    return state.as_dict() if state is not None else None


def protected_meters(settings: Settings) -> dict[str, str]:
    """Meter id -> why it is never tripped without force: the customers of ``[prepaid]
    protected`` (area masters are protected by their role, see RelayService)."""
    p = settings.prepaid
    if p is None or not p.protected:
        return {}
    return {m.meter_id: "protected customer ([prepaid] protected, hold-power list)"
            for m in meters_matching(settings, p.protected)}


class RelayService:
    """Carries out verified relay commands on configured meters (see the module doc)."""

    def __init__(self, *, meters: Callable[[], Iterable[MeterSettings]],
                 workers: Callable[[], Mapping[str, BusWorker]],
                 secrets: Secrets | None, profile: Callable[[str], Profile],
                 record: Callable[[CommandRecord], None],
                 settings: CommandSettings | None = None,
                 protected: Callable[[], Mapping[str, str]] | None = None,
                 security: object = None) -> None:
        self.meters = meters
        # A security module ([security] relay = true): relay commands as its ciphertext.
        self.security = security
        self.protected = protected  # meter id -> why (see protected_meters)
        self.workers = workers
        self.secrets = secrets
        self.profile = profile
        self.record = record
        self.settings = settings or CommandSettings()
        self._bus_locks: dict[str, asyncio.Lock] = {}
        self._bus_last: dict[str, float] = {}
        # The relay state the last confirmed command left each meter in (for the
        # relay_unexpected alarm); a close permitted whose relay stays open: unknown.
        self.expected_open: dict[str, bool] = {}

    def find(self, meter_ids: Iterable[str]) -> list[MeterSettings]:
        """The configured meters, in the order given; CommandRejected names unknown ones."""
        known = {m.meter_id: m for m in self.meters()}
        ids = list(dict.fromkeys(meter_ids))
        missing = [i for i in ids if i not in known]
        if missing:
            raise CommandRejected(f"not configured: {', '.join(missing[:10])}"
                                  f"{' ...' if len(missing) > 10 else ''}")
        return [known[i] for i in ids]

    def check(self, action: str, meters: list[MeterSettings], operator: str) -> None:
        """Everything that can be checked before anything is sent."""
        if action not in SWITCH_ACTIONS and action != "status":
            raise CommandRejected(f"unknown action {action!r} (known: "
                                  f"{', '.join((*SWITCH_ACTIONS, 'status'))})")
        if not meters:
            raise CommandRejected("no meter given")
        if action == "status":
            return
        if not operator:
            raise CommandRejected("a command needs an operator")
        if self.secrets is None:
            raise CommandRejected("no secrets file ([commands] secrets_file): meter "
                                  "passwords and operator codes are kept there")
        protected = [m for m in meters if self.capabilities(m).credentials]
        if protected:
            try:
                self.secrets.operator_code(operator)
            except SecretsError as e:
                raise CommandRejected(str(e)) from None
        no_password = [m.meter_id for m in protected
                       if self.secrets.password(m.meter_id) is None]
        if no_password:
            raise CommandRejected(f"no password in the secrets file for "
                                  f"{', '.join(no_password[:10])}")

    def capabilities(self, m: MeterSettings) -> Capabilities:
        """What ``m`` offers (no I/O); CommandRejected if its profile cannot be loaded."""
        try:
            profile = self.profile(m.profile) if m.profile else None
            return capabilities(MeterRef(m.meter_id, m.protocol, m.address, profile))
        except (ValueError, KeyError, OSError) as e:
            raise CommandRejected(f"meter {m.meter_id}: {e}") from None

    def protection(self, m: MeterSettings) -> str | None:
        """Why a trip must not reach ``m`` without force (None: it may)."""
        if m.role == "area_master":
            return f"area master meter of area {m.area}" if m.area else "area master meter"
        return (self.protected() if self.protected is not None else {}).get(m.meter_id)

    async def run(self, action: str, meter_ids: Iterable[str], *, operator: str,
                  reason: str, request_id: str | None = None, dry_run: bool = False,
                  issued: dt.datetime | None = None,
                  force: bool = False) -> list[dict[str, Any]]:
        """Carry out ``action`` on each meter (buses in parallel, meters of one bus in
        turn); one result dict per meter, in the order given.  ``force``: trip
        protected meters too (needs a reason; recorded)."""
        meters = self.find(meter_ids)
        self.check(action, meters, operator)
        if force and not reason.strip():
            raise CommandRejected("force needs a reason: who forces a protected meter and "
                                  "why is recorded")
        rid = request_id or uuid.uuid4().hex
        issued = issued or utcnow()
        by_bus: dict[str, list[int]] = {}
        for i, m in enumerate(meters):
            by_bus.setdefault(m.bus, []).append(i)
        results: list[dict[str, Any]] = [{} for _ in meters]

        async def bus_turn(indexes: list[int]) -> None:
            for i in indexes:
                results[i] = await self._one(action, meters[i], operator=operator,
                                             reason=reason, rid=rid, dry_run=dry_run,
                                             issued=issued, force=force)

        await asyncio.gather(*(bus_turn(ix) for ix in by_bus.values()))
        return results

    async def _one(self, action: str, m: MeterSettings, *, operator: str, reason: str,
                   rid: str, dry_run: bool, issued: dt.datetime,
                   force: bool = False) -> dict[str, Any]:
        base: dict[str, Any] = {"meter": m.meter_id, "bus": m.bus, "action": action}
        worker = self.workers().get(m.bus)
        if worker is None:
            return {**base, "status": "failed", "detail": f"bus {m.bus} is not running"}
        if action == "status":
            return {**base, **await self._status(worker, m)}
        command_id = f"{rid}/{m.meter_id}"
        kind = "dry_run" if dry_run else action
        audit: dict[str, Any] = {"reason": reason, "request_id": rid, "bus": m.bus,
                                 "action": action, "issued": issued.isoformat()}
        why = self.protection(m) if action == "trip" else None
        if why is not None and not force:
            audit["protected"] = why
            audit["detail"] = f"{why}: not tripped (force with a reason to trip it)"
            self._audit(command_id, m, kind, operator, SKIPPED_PROTECTED, audit)
            log.info("command %s %s meter=%s: skipped, %s", rid, kind, m.meter_id, why)
            return {**base, "status": SKIPPED_PROTECTED, "detail": audit["detail"],
                    "command_id": command_id}
        if why is not None:
            audit["forced"] = {"by": operator, "reason": reason, "protected": why}
            log.warning("command %s %s meter=%s: %s, forced by %s", rid, kind, m.meter_id,
                        why, operator)
        expires = issued + dt.timedelta(seconds=self.settings.expiry)
        lock = self._bus_locks.setdefault(m.bus, asyncio.Lock())
        async with lock:
            if not dry_run:
                wait = self._bus_last.get(m.bus, 0.0) + self.settings.min_interval \
                    - time.monotonic()
                if wait > 0:
                    await asyncio.sleep(wait)
            if utcnow() >= expires:
                audit["detail"] = f"expired at {expires.isoformat()} before its turn"
                self._audit(command_id, m, kind, operator, "expired", audit)
                return {**base, "status": "expired", "detail": audit["detail"]}
            sent_at = utcnow()  # the audit's "when": the moment it went to the bus
            if not dry_run:
                self._audit(command_id, m, kind, operator, "sent", audit, sent_at)
            try:
                result = await worker.submit(
                    Lane.COMMAND, lambda w: self._switch(w, m, action, operator, dry_run,
                                                         expires))
            except ValueError as e:  # the command cannot be built (a bad password...)
                result = {"status": "failed", "detail": f"not sent: {e}"}
            except (TimeoutError, DriverError, OSError, WorkerStopped) as e:
                result = {"status": "failed", "detail": f"{type(e).__name__}: {e}"}
            finally:
                if not dry_run:
                    self._bus_last[m.bus] = time.monotonic()
        status = str(result["status"])
        if status == "confirmed" and action in ("trip", "restore"):
            if action == "trip":
                self.expected_open[m.meter_id] = True
            elif result.get("relay_closed"):
                self.expected_open[m.meter_id] = False
            else:
                self.expected_open.pop(m.meter_id, None)
        audit.update({k: v for k, v in result.items() if k != "status"})
        self._audit(command_id, m, kind, operator, status, audit, sent_at)
        log.info("command %s %s meter=%s bus=%s operator=%s: %s", rid, kind, m.meter_id,
                 m.bus, operator, status)
        return {**base, **result, "status": status, "command_id": command_id}

    async def _switch(self, w: BusWorker, m: MeterSettings, action: str, operator: str,
                      dry_run: bool, expires: dt.datetime) -> dict[str, Any]:
        s = self.settings
        assert self.secrets is not None
        meter = w.device(m)
        credentials = None
        if meter.capabilities.credentials:
            password = self.secrets.password(m.meter_id)
            assert password is not None  # checked before
            credentials = Credentials(password.reveal(),
                                      self.secrets.operator_code(operator).reveal(), expires,
                                      security=self.security)
        outcome = await execute(action, meter, credentials, direct_close=s.direct_close,
                                verify_timeout=s.verify_timeout,
                                poll_interval=s.poll_interval, dry_run=dry_run)
        result = outcome.as_dict()
        if dry_run:
            result["state"] = result["before"]  # what relay-status shows
        return result

    async def _status(self, w: BusWorker, m: MeterSettings) -> dict[str, Any]:
        """The relay state now (read only)."""
        try:
            state = await read_relay_state(w.device(m))
        except Unsupported as e:  # e.g. a profile without a relay readback
            return {"status": "unsupported", "detail": str(e)}
        except ValueError as e:  # the meter cannot be opened (its profile, its unit id)
            return {"status": "unsupported", "detail": str(e)}
        except (DriverError, OSError) as e:
            return {"status": "failed", "detail": f"{type(e).__name__}: {e}"}
        return {"status": "ok", "state": _state_dict(state)}

    def _audit(self, command_id: str, m: MeterSettings, kind: str, operator: str,
               status: str, detail: Mapping[str, Any],
               when: dt.datetime | None = None) -> None:
        self.record(CommandRecord(command_id, m.meter_id, kind, when or utcnow(),
                                  operator=operator,
                                  status=status,
                                  detail=json.dumps(detail, sort_keys=True, default=str)))


def exit_status(results: Iterable[Mapping[str, Any]]) -> int:
    """One exit status for several meters: 0 when all confirmed, else the worst code."""
    return max((EXIT_CODES_ALL.get(str(r.get("status")), 6) for r in results), default=0)

"""The daemon's control side: relay commands and top-ups through the broker, and the
prepaid engine acting on what the meters report.

Remote requests (see collector/commands/remote.py for the channel) on ``amic/<cid>/cmd/relay``::

    {"request_id": "...", "command": "relay", "collector": "<cid>", "action": "trip",
     "meters": ["M0001"], "reason": "arrears, ticket 4711", "dry_run": false,
     "operator": "alice", "issued": "...Z", "expires": "...Z", "nonce": "...",
     "signature": "<hex HMAC-SHA256>"}

``area`` may replace ``meters``; ``action`` is one of trip, restore, hold, release,
alarm, alarm_release, or ``status`` (read only, no signature needed).  Every other action
must be signed by an operator whose key is in the daemon's secrets file (``[commands]
signed = false`` turns that off, for a broker nobody else can publish to): unsigned,
expired, replayed or badly signed requests, and documents signed for another collector
(``collector``) or another command (``command``, the topic's last level), are refused,
never executed.  A refusal is journaled ``denied`` (kind: the action claimed, operator:
the operator claimed; ``amic audit`` shows it), raises a ``command_refused`` alarm and is
answered with ``refusal``: the reason code (collector.commands.signing.REASONS).  The
reply carries one result per meter (``status``: confirmed, refused, unconfirmed,
address_mismatch, failed, unsupported, expired, dry_run) and ``exit``, the CLI's exit
status.

``amic/<cid>/cmd/topup``: ``{"command": "topup", "collector": "<cid>", "meter": "M0001",
"amount": "50.00", "ref": "receipt 1234", ...signed}``: the prepaid engine credits it
(computed balance) or notes it (balance kept by the meter); a meter tripped for want of
credit is restored and the restore confirmed.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
from collections.abc import Coroutine, Iterable
from decimal import Decimal, InvalidOperation
from typing import TYPE_CHECKING, Any, Final

from collector.commands.prepaid import (
    Action,
    PrepaidAccount,
    PrepaidEngine,
    PrepaidPolicy,
    TariffPlan,
)
from collector.commands.relay_service import (
    SWITCH_ACTIONS,
    CommandRejected,
    RelayService,
    exit_status,
    protected_meters,
)
from collector.commands.remote import (
    DOCUMENT,
    SERVED_AS,
    CommandDenied,
    CommandError,
    Execute,
    JsonDict,
    parse_ts,
)
from collector.commands.signing import ReplayCache, SignatureError, Verifier
from collector.commands.topup_writer import TopupWriter
from collector.config import meters_matching
from collector.config.secrets import Secrets
from collector.config.settings import Settings
from collector.daily.reports import meter_energies
from collector.store.records import CommandRecord, Event, Reading, utcnow
from drivers.security import SecurityModule, load_module

if TYPE_CHECKING:
    from collector.polling.context import DaemonContext

log = logging.getLogger("amic.control")

PREPAID_OPERATOR: Final = "prepaid"  # the operator the engine's commands run as
STATE_FILE: Final = "prepaid-state.json"  # in data_dir: balances, top-ups, trips
MAX_METERS: Final = 10_000
MAX_REASON: Final = 200


def build_engine(settings: Settings) -> PrepaidEngine | None:
    """The prepaid engine for the meters with ``prepaid = true`` (None without [prepaid])."""
    p = settings.prepaid
    if p is None:
        return None
    policy = PrepaidPolicy(warn1=p.warn1, warn2=p.warn2, overdraft_limit=p.overdraft_limit,
                           grace=p.grace, no_trip_windows=p.no_trip_windows,
                           holidays=frozenset(p.holidays), tz=p.tz,
                           retry_interval=p.retry_interval)
    protected = {m.meter_id for m in meters_matching(settings, p.protected)} \
        if p.protected else set()
    computed = {m.meter_id for m in meters_matching(settings, p.computed)} \
        if p.computed else set()
    plan: TariffPlan | None = None
    if p.price is not None or p.prices:
        plan = TariffPlan(flat=p.price, **dict(p.prices))
    prepaid = [m for m in settings.meters if m.prepaid]
    energy = meter_energies(prepaid, [settings.source.absolute().parent])
    accounts = [PrepaidAccount(m.meter_id, mode="computed" if m.meter_id in computed
                               else "meter", protected=m.meter_id in protected, plan=plan,
                               opening_balance=p.opening_balance,
                               energy=energy.get(m.meter_id, "forward"))
                for m in prepaid]
    return PrepaidEngine(policy, accounts)


class Control:
    """Relay service, remote relay/top-up requests and the prepaid engine of a daemon."""

    def __init__(self, ctx: DaemonContext, secrets: Secrets | None) -> None:
        self.ctx = ctx
        self.secrets = secrets
        settings = ctx.settings().commands
        self.signed = settings.signed if settings is not None else True
        sec = ctx.settings().security
        self.security: SecurityModule | None = load_module(sec.table()) if sec else None
        self.relay = RelayService(
            meters=lambda: ctx.settings().meters, workers=ctx.workers,
            secrets=secrets, profile=ctx.profile, record=self._record,
            settings=settings, protected=lambda: protected_meters(ctx.settings()),
            security=self.security if sec is not None and sec.relay else None)
        prepaid = ctx.settings().prepaid
        self.topups: TopupWriter | None = None
        if self.security is not None:
            self.topups = TopupWriter(
                security=self.security,
                meters=lambda: {m.meter_id: m for m in ctx.settings().meters},
                workers=ctx.workers, profile=ctx.profile, record=self._record,
                event=ctx.on_event, data_dir=ctx.settings().collector.data_dir,
                retry_interval=prepaid.retry_interval if prepaid is not None else 300.0)
        # Purchases recorded here that others (the sales system) write into the meter:
        # the purchase counts they will move, by meter.
        self._expected_purchases: dict[str, int] = {}
        self._retry: asyncio.Task[None] | None = None
        self.verifier = Verifier(secrets.find_key if secrets is not None else {},
                                 seen=ReplayCache())
        self.engine = build_engine(ctx.settings())
        self.state_path = ctx.settings().collector.data_dir / STATE_FILE
        self._dirty = False
        if self.engine is not None:
            self._load_state()
        self.rejected: dict[str, int] = {}  # refused remote requests, by reason
        self._tasks: set[asyncio.Task[Any]] = set()
        self._ticker: asyncio.Task[None] | None = None

    # ---- the engine's state across restarts ----------------------------------------------

    def _load_state(self) -> None:
        assert self.engine is not None
        try:
            doc = json.loads(self.state_path.read_text())
        except FileNotFoundError:
            return
        except (OSError, ValueError) as e:
            log.error("prepaid state %s unreadable (%s): starting from the configuration",
                      self.state_path, e)
            return
        try:
            n = self.engine.load(doc)
        except ValueError as e:
            log.error("prepaid state %s: %s; starting from the configuration",
                      self.state_path, e)
            return
        log.info("prepaid state of %d meters restored from %s", n, self.state_path)

    def save_state(self) -> None:
        """Write the engine's state (balances, top-ups, trips) atomically."""
        if self.engine is None:
            return
        tmp = self.state_path.with_name(self.state_path.name + ".tmp")
        try:
            tmp.write_text(json.dumps(self.engine.dump()))
            with open(tmp, "rb") as f:
                os.fsync(f.fileno())
            tmp.replace(self.state_path)
            self._dirty = False
        except OSError as e:
            log.error("prepaid state not saved to %s: %s", self.state_path, e)

    # ---- store -------------------------------------------------------------------------

    def _record(self, c: CommandRecord) -> None:
        writer = self.ctx.writer()
        if writer is not None:
            writer.put_command(c)

    # ---- remote requests ---------------------------------------------------------------

    def executor(self, read: Execute) -> Execute:
        """``execute`` for the command server: read, relay and topup."""
        async def execute(request: JsonDict) -> JsonDict:
            command = request.get("command")
            if command == "relay":
                return await self.remote_relay(request)
            if command == "topup":
                return await self.remote_topup(request)
            return await read(request)
        return execute

    def _verify(self, request: JsonDict, *, meter: str, kind: str) -> str:
        """The operator of a request that must be signed; :class:`CommandDenied` (audited,
        a ``command_refused`` alarm) when refused.  ``meter``, ``kind``: what it claims."""
        doc = request.get(DOCUMENT, request)  # as published: what was signed
        try:
            return check_request(doc, self.verifier if self.signed else None,
                                 collector=str(request.get(SERVED_AS)
                                               or self.ctx.settings().collector.id),
                                 command=str(request.get("command") or ""))
        except SignatureError as e:
            raise self._denied(request, doc, e, meter=meter, kind=kind) from None

    def _denied(self, request: JsonDict, doc: Any, e: SignatureError, *, meter: str,
                kind: str) -> CommandDenied:
        """Count, log and raise the alarm of a refusal (never the signature or a key)."""
        self.rejected[e.reason] = self.rejected.get(e.reason, 0) + 1
        claimed = doc.get("operator") if isinstance(doc, dict) else None
        operator = claimed[:64] if isinstance(claimed, str) else ""
        rid = request.get("request_id")
        command = request.get("command")
        log.warning("request %s (%s) refused: %s", rid, command, e)
        self.ctx.on_event(Event(
            "command_refused", utcnow(), meter=meter or None, severity=2,
            detail=f"{command} request {rid} ({kind}) refused, {e}; claimed operator "
                   f"{_show(operator)}"))
        return CommandDenied(f"refused: {e}", reason=e.reason, operator=operator,
                             meter=meter, kind=kind)

    def _meter_ids(self, request: JsonDict) -> list[str]:
        area = request.get("area")
        meters = request.get("meters")
        if area is not None:
            if not isinstance(area, str) or not area:
                raise CommandError("area: expected an area id")
            ids = [m.meter_id for m in self.ctx.settings().meters if m.area == area]
            if not ids:
                raise CommandError(f"area {area}: no meters configured there")
            return ids
        if not isinstance(meters, list) or not meters or len(meters) > MAX_METERS \
                or not all(isinstance(m, str) and 0 < len(m) <= 64 for m in meters):
            raise CommandError("meters: expected a non-empty list of meter ids (or area)")
        return [str(m) for m in meters]

    async def remote_relay(self, request: JsonDict) -> JsonDict:
        action = request.get("action")
        operator = ""
        if action != "status":
            # Authenticate before anything else: a refusal is audited whatever it holds.
            meters = request.get("meters")
            one = meters[0] if isinstance(meters, list) and len(meters) == 1 else None
            operator = self._verify(
                request, meter=one if isinstance(one, str) and len(one) <= 64 else "",
                kind=action if action in SWITCH_ACTIONS else "relay")
        if not isinstance(action, str):
            raise CommandError("action: expected trip, restore, hold, release, alarm, "
                               "alarm_release or status")
        ids = self._meter_ids(request)
        if action == "status":
            results = await self.relay.run("status", ids, operator="", reason="")
            return {"results": results, "exit": exit_status(results)}
        reason = request.get("reason")
        if not isinstance(reason, str) or not reason.strip() or len(reason) > MAX_REASON:
            raise CommandError(f"reason: expected a text of 1 to {MAX_REASON} characters")
        dry_run = request.get("dry_run", False)
        if not isinstance(dry_run, bool):
            raise CommandError("dry_run: expected true or false")
        force = request.get("force", False)  # trip protected meters too (audited)
        if not isinstance(force, bool):
            raise CommandError("force: expected true or false")
        issued = parse_ts(request.get("issued")) or utcnow()
        try:
            results = await self.relay.run(action, ids, operator=operator,
                                           reason=reason.strip(),
                                           request_id=str(request["request_id"]),
                                           dry_run=dry_run, issued=issued, force=force)
        except CommandRejected as e:
            raise CommandError(str(e)) from None
        return {"results": results, "exit": exit_status(results)}

    async def remote_topup(self, request: JsonDict) -> JsonDict:
        meter = request.get("meter")
        operator = self._verify(request, meter=meter if isinstance(meter, str)
                                and len(meter) <= 64 else "", kind="topup")
        if not isinstance(meter, str) or not meter:
            raise CommandError("meter: expected a meter id")
        try:
            amount = Decimal(str(request.get("amount")))
        except InvalidOperation:
            raise CommandError("amount: expected an amount in yuan") from None
        if not amount.is_finite() or amount <= 0:
            raise CommandError("amount: expected a positive amount in yuan")
        ref = request.get("ref")
        if not isinstance(ref, str) or not ref.strip():
            raise CommandError("ref: expected the payment reference")
        return await self.topup(meter, amount, ref.strip(), operator,
                                str(request["request_id"]))

    async def topup(self, meter: str, amount: Decimal, ref: str, operator: str,
                    request_id: str) -> JsonDict:
        if self.engine is None or meter not in self.engine.accounts:
            raise CommandError(f"meter {meter} is not a prepaid meter of this collector "
                               "([prepaid] and prepaid = true in the ledger)")
        now = utcnow()
        actions = self.engine.topup(meter, amount, now, ref)
        self.save_state()  # money: on disk before the answer
        balance = self.engine.balance(meter)
        self._record(CommandRecord(f"{request_id}/{meter}", meter, "topup", now,
                                   operator=operator, status="recorded",
                                   detail=json.dumps({"amount": str(amount), "ref": ref,
                                                      "balance": _num(balance)})))
        done = await self.act(actions, wait=True)
        written = [d for d in done if "receipt" in d]
        restore = [d for d in done if "receipt" not in d]
        out: JsonDict = {"meter": meter, "amount": str(amount), "balance": _num(balance),
                         "restore": restore}
        if written:
            out["written"] = written[0]
        return out

    # ---- the prepaid engine ------------------------------------------------------------

    def observe(self, meter: str, readings: list[Reading]) -> None:
        """One meter's readings of a poll, for the prepaid engine."""
        if self.topups is not None:
            used = self.topups.observe(meter, readings,
                                       expected=self._expected_purchases.get(meter, 0))
            if used:
                self._expected_purchases[meter] -= used
        if self.engine is None or meter not in self.engine.accounts:
            return
        self._dirty = True
        self._spawn(self.act(self.engine.observe(meter, readings, utcnow())))

    def start(self) -> None:
        if self.topups is not None and self._retry is None:
            self._retry = asyncio.create_task(self.topups.retry_loop(), name="topup-retry")
        if self.engine is not None and self._ticker is None:
            self._ticker = asyncio.create_task(self._tick(), name="prepaid")

    async def _tick(self) -> None:
        assert self.engine is not None
        while True:
            await asyncio.sleep(5.0)
            actions = self.engine.tick(utcnow())
            if actions or self._dirty:
                self.save_state()
            await self.act(actions)

    async def act(self, actions: Iterable[Action], *, wait: bool = False) -> list[JsonDict]:
        """Carry out the engine's actions: events now, relay commands on the command lane
        (waited for when ``wait``, else in the background)."""
        done: list[JsonDict] = []
        for a in actions:
            if a.kind == "event":
                self.ctx.on_event(a.to_event(utcnow()))
            elif a.kind in ("trip", "restore"):
                if wait:
                    done += await self._switch(a)
                else:
                    self._spawn(self._switch(a))
            elif a.kind == "write_topup":
                if self.topups is not None and a.amount is not None and a.ref:
                    # into the meter through the security module, verified by its count
                    if wait:
                        done.append(await self.topups.write(a.meter, a.amount, a.ref))
                    else:
                        self._spawn(self.topups.write(a.meter, a.amount, a.ref))
                else:
                    # Without a security module the sales system writes it (with its
                    # ESAM); the meter's own balance shows it once written.
                    self._expected_purchases[a.meter] = \
                        self._expected_purchases.get(a.meter, 0) + 1
                    log.info("top-up for meter %s recorded; its balance comes from the "
                             "meter", a.meter)
        return done

    async def _switch(self, a: Action) -> list[JsonDict]:
        assert self.engine is not None
        try:
            results = await self.relay.run(a.kind, [a.meter], operator=PREPAID_OPERATOR,
                                           reason=f"prepaid: {a.reason}")
        except CommandRejected as e:
            log.error("prepaid %s of meter %s not possible: %s", a.kind, a.meter, e)
            results = [{"meter": a.meter, "status": "failed", "detail": str(e)}]
        confirmed = bool(results) and results[0].get("status") == "confirmed"
        more = self.engine.relay_result(a.meter, a, confirmed, utcnow())
        self.save_state()
        return results + await self.act(more, wait=False)

    def _spawn(self, coro: Coroutine[Any, Any, Any]) -> None:
        task = asyncio.get_running_loop().create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._done)

    def _done(self, task: asyncio.Task[Any]) -> None:
        self._tasks.discard(task)
        if not task.cancelled() and task.exception() is not None:
            log.error("prepaid action failed: %r", task.exception())

    async def stop(self) -> None:
        tasks = list(self._tasks) + [t for t in (self._ticker, self._retry) if t]
        for t in tasks:
            t.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        self.save_state()
        if self.security is not None:
            await self.security.close()


def check_request(doc: JsonDict, verifier: Verifier | None, *, collector: str,
                  command: str) -> str:
    """The operator of a remote request for ``command`` received by ``collector``;
    SignatureError (with its reason code) when it must be refused.

    ``verifier`` None: signing is off (``[commands] signed = false``, a closed broker);
    a ``collector`` or ``command`` the document names must still be this one.
    """
    if verifier is not None:
        return verifier.verify(doc, collector=collector, command=command)
    for name, wanted in (("collector", collector), ("command", command)):
        got = doc.get(name, wanted)
        if got != wanted:
            raise SignatureError(f"wrong_{name}",
                                 f"meant for {name} {_show(got)}, not {_show(wanted)}")
    op = doc.get("operator")
    return op if isinstance(op, str) and op else "remote"


def _show(text: object) -> str:
    """A claimed (untrusted) value for a log line or an event: quoted and shortened."""
    shown = json.dumps(text, ensure_ascii=False, default=repr)
    return shown if len(shown) <= 66 else shown[:63] + "..."


def _num(d: Decimal | None) -> float | None:
    return None if d is None else float(d)

"""Commands through the API: trip, restore, hold, release and top-up.

No path of its own: relay commands go to the daemon's
:class:`~collector.commands.relay_service.RelayService` and top-ups to
:meth:`Control.topup <collector.service.control.Control.topup>`, as the CLI's and the
broker's do (verification, rate limit per bus, expiry, protected meters, audit).  The
request id (header ``Idempotency-Key``, or ``request_id`` in the body; one is made when
neither is given) is journaled in the store's commands table like a broker request
(:class:`~collector.commands.remote.StoreJournal`): ``received`` on disk before anything is
sent, then ``done`` with the answer.  A repeat gets the stored answer (header
``Idempotent-Replay: true``) and is never carried out twice; one still running waits for
the first; one a stopped daemon left ``received`` is refused (409), since a relay command
is not repeated blindly.

Roles: an operator commands meters that are not protected (a trip of a protected meter,
or ``force``, is refused with 403 and audited); an admin may trip one with ``force`` and a
reason (audited as forced).
"""

from __future__ import annotations

import asyncio
import json
import logging
import uuid
from collections.abc import Awaitable, Callable
from decimal import Decimal, InvalidOperation
from typing import Annotated, Any, Final, Literal

from fastapi import APIRouter, Depends, Header, HTTPException, Request
from fastapi.responses import JSONResponse
from pydantic import BaseModel, Field

from collector.commands.relay_service import CommandRejected, exit_status
from collector.commands.remote import (
    DENIED,
    DONE,
    RECEIVED,
    CommandError,
    StoreJournal,
    valid_request_id,
)

from .auth import Principal, audit_denial
from .context import Commands
from .deps import Api, api_of, operator

log = logging.getLogger("amic.api")

router = APIRouter(prefix="/api/v1/commands", tags=["commands"])
Operator = Annotated[Principal, Depends(operator)]
ApiDep = Annotated[Api, Depends(api_of)]
JsonDict = dict[str, Any]
INFLIGHT: Final = "commands.inflight"
JOURNAL: Final = "commands.journal"
MAX_METERS: Final = 10_000  # as a request through the broker (collector.service.control)
MAX_REASON: Final = 200


class RelayRequest(BaseModel):
    """A relay command on meters (or on every meter of an area)."""

    meters: list[Annotated[str, Field(min_length=1, max_length=64)]] = Field(
        [], max_length=MAX_METERS)
    area: str | None = None
    reason: str = Field(min_length=1, max_length=MAX_REASON)
    dry_run: bool = False
    force: bool = Field(False, description="trip protected meters too (admin, audited)")
    request_id: str | None = None


class TopupRequest(BaseModel):
    meter: str = Field(min_length=1, max_length=64)
    amount: str = Field(description='yuan, e.g. "50.00"')
    ref: str = Field(min_length=1, max_length=MAX_REASON, description="payment reference")
    request_id: str | None = None


class CommandReply(BaseModel):
    request_id: str
    command: str
    status: Literal["ok", "error"]
    results: list[JsonDict] = []
    exit: int | None = None
    error: str | None = None


def _control(api: Api) -> Commands:
    control = api.ctx.control()
    if control is None:
        raise HTTPException(503, "the collector is starting: no commands yet")
    return control


def _request_id(header: str | None, body: str | None) -> str:
    rid = header or body or uuid.uuid4().hex
    if header and body and header != body:
        raise HTTPException(422, "Idempotency-Key and request_id differ")
    if not valid_request_id(rid):
        raise HTTPException(422, "Idempotency-Key: 1 to 128 characters A-Z a-z 0-9 . _ : - "
                                 "(a UUID)")
    return rid


def _journal(api: Api) -> StoreJournal:
    journal = api.state.get(JOURNAL)
    if journal is None:
        store, writer = api.ctx.store(), api.ctx.writer()
        if store is None or writer is None:
            raise HTTPException(503, "the store is not open yet")
        journal = api.state[JOURNAL] = StoreJournal(store, writer)
    assert isinstance(journal, StoreJournal)
    return journal


def _answer(doc: JsonDict, *, replay: bool) -> JSONResponse:
    status = 200 if doc.get("status") == "ok" else 422
    return JSONResponse(doc, status_code=status,
                        headers={"Idempotent-Replay": "true" if replay else "false"})


async def once(api: Api, rid: str, command: str, *, meter: str, operator: str,
               run: Callable[[], Awaitable[JsonDict]]) -> JSONResponse:
    """Carry out ``run`` once per request id (see the module doc)."""
    inflight: dict[str, asyncio.Future[JsonDict]] = api.state.setdefault(INFLIGHT, {})
    running = inflight.get(rid)
    if running is not None:
        doc = await asyncio.shield(running)
        return _answer(_same(doc, rid, command), replay=True)
    journal = _journal(api)
    prior = journal.get(rid)
    if prior is not None:
        status, reply = prior
        if status in (DONE, DENIED) and reply:
            try:
                doc = json.loads(reply)
            except ValueError:
                doc = {}
            return _answer(_same(doc, rid, command), replay=True)
        raise HTTPException(409, f"request {rid} was received before the collector stopped "
                                 "and its outcome is unknown: not carried out again (see "
                                 "amic audit)")
    fut: asyncio.Future[JsonDict] = asyncio.get_running_loop().create_future()
    inflight[rid] = fut
    try:
        journal.put(rid, RECEIVED, "", meter=meter, kind=command, operator=operator)
        await journal.flush()  # on disk before anything is sent
        try:
            result = await run()
            doc = {"request_id": rid, "command": command, "status": "ok", **result}
        except (CommandError, CommandRejected) as e:
            doc = {"request_id": rid, "command": command, "status": "error",
                   "error": str(e)}
        journal.put(rid, DONE, json.dumps(doc, ensure_ascii=False), meter=meter,
                    kind=command, operator=operator)
        await journal.flush()
        fut.set_result(doc)
    except BaseException as e:
        fut.set_exception(e)
        fut.exception()  # retrieved: a repeat waiting on it gets it, nobody else must
        raise
    finally:
        inflight.pop(rid, None)
    return _answer(doc, replay=False)


def _same(doc: JsonDict, rid: str, command: str) -> JsonDict:
    if doc.get("command") != command:
        raise HTTPException(409, f"request id {rid} was used by another request")
    return doc


IdemKey = Annotated[str | None, Header(alias="Idempotency-Key")]


@router.post("/topup", response_model=CommandReply)
async def topup(api: ApiDep, who: Operator, body: TopupRequest,
                key: IdemKey = None) -> JSONResponse:
    """Credit a prepaid meter (the prepaid engine; a meter tripped for want of credit is
    restored and the restore confirmed)."""
    control = _control(api)
    rid = _request_id(key, body.request_id)
    try:
        amount = Decimal(body.amount)
    except InvalidOperation:
        raise HTTPException(422, "amount: expected an amount in yuan") from None
    if not amount.is_finite() or amount <= 0:
        raise HTTPException(422, "amount: expected a positive amount in yuan")

    async def run() -> JsonDict:
        out = await control.topup(body.meter, amount, body.ref.strip(), who.operator, rid)
        return {"results": [out]}

    return await once(api, rid, "topup", meter=body.meter, operator=who.operator, run=run)


@router.post("/{action}", response_model=CommandReply)
async def relay(api: ApiDep, who: Operator, request: Request,
                action: Literal["trip", "restore", "hold", "release"], body: RelayRequest,
                key: IdemKey = None) -> JSONResponse:
    """A relay command, verified on the meter (the result per meter says how it ended:
    confirmed, refused, unconfirmed, skipped_protected, expired, dry_run...)."""
    control = _control(api)
    rid = _request_id(key, body.request_id)
    if (body.area is None) == (not body.meters):
        raise HTTPException(422, "give meters or area (one of them)")
    settings = api.ctx.settings()
    ids = body.meters if body.area is None else \
        [m.meter_id for m in settings.meters if m.area == body.area]
    if not ids:
        raise HTTPException(422, f"area {body.area}: no meters configured there")
    try:
        found = control.relay.find(ids)
    except CommandRejected as e:
        raise HTTPException(422, str(e)) from None
    one = ids[0] if len(ids) == 1 else ""
    if not who.can("admin"):
        why = ""
        if body.force:
            why = "force needs the admin role"
        elif action == "trip":
            shielded = [m.meter_id for m in found if control.relay.protection(m)]
            if shielded:
                why = (f"protected meter(s) {', '.join(shielded[:10])}: a trip needs the "
                       "admin role (with force and a reason)")
        if why:
            for m in found if len(found) <= 100 else found[:1]:
                audit_denial(api.ctx, request, status=403, reason=why, refusal="protected",
                             who=who.name, meter=m.meter_id, kind=action)
            raise HTTPException(403, why)

    async def run() -> JsonDict:
        results = await control.relay.run(action, ids, operator=who.operator,
                                          reason=body.reason.strip(), request_id=rid,
                                          dry_run=body.dry_run, force=body.force)
        return {"results": results, "exit": exit_status(results)}

    return await once(api, rid, action, meter=one, operator=who.operator, run=run)

"""Ledger import: a CSV upload checked exactly as ``amic ledger check`` checks a file, then
applied as a reload applies it (SIGHUP's path), or refused with the same messages."""

from __future__ import annotations

import asyncio
import json
import logging
import os
import tomllib
import uuid
from pathlib import Path
from typing import Annotated, Any

from fastapi import APIRouter, Depends, HTTPException, Request
from fastapi.responses import JSONResponse

from collector.config.personal import PersonalKey, seal_ledger_text
from collector.config.schema import MAX_LEDGER_BYTES
from collector.config.secrets import SecretsError, load_secrets
from collector.daily.reports import LedgerReport, validate_ledger
from collector.store.records import CommandRecord, utcnow

from .auth import Principal
from .deps import Api, admin, api_of
from .formats import decode_ledger, issue_json, issue_lines, ledger_summary

log = logging.getLogger("amic.api")

router = APIRouter(prefix="/api/v1", tags=["ledger"])
Admin = Annotated[Principal, Depends(admin)]
ApiDep = Annotated[Api, Depends(api_of)]


def ledger_path(config: Path) -> Path | None:
    """The ``[meters] ledger`` file of the configuration ``config`` (None: none)."""
    data = tomllib.loads(config.read_text(encoding="utf-8"))
    meters = data.get("meters")
    name = meters.get("ledger") if isinstance(meters, dict) else None
    if not isinstance(name, str) or not name:
        return None
    path = Path(name).expanduser()
    return path if path.is_absolute() else config.parent / path


def replace_file(path: Path, data: bytes) -> None:
    """Write ``path`` whole or not at all (a reload never sees half a ledger)."""
    tmp = path.with_name(f".{path.name}.{uuid.uuid4().hex[:8]}.tmp")
    try:
        with open(tmp, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        if path.exists():
            os.chmod(tmp, path.stat().st_mode & 0o7777)
        tmp.replace(path)
    finally:
        tmp.unlink(missing_ok=True)


def seal_personal(text: str, secrets: Path | None) -> str | None:
    """``text`` with its plain customer and phone cells sealed, when the secrets file has
    a ``[ledger] key`` (None: written as sent; the key was checked by the validation)."""
    if secrets is None:
        return None
    try:
        key = load_secrets(secrets).ledger_key()
    except SecretsError:
        return None
    if key is None:
        return None
    out, n = seal_ledger_text(text, PersonalKey(key))
    return out if n else None


def _record(api: Api, who: Principal, status: str, detail: dict[str, Any]) -> None:
    writer = api.ctx.writer()
    if writer is not None:
        writer.put_command(CommandRecord(f"ledger-{uuid.uuid4().hex}", "", "ledger_import",
                                         utcnow(), operator=who.name, status=status,
                                         detail=json.dumps(detail, ensure_ascii=False)))


def _refused(result: LedgerReport) -> dict[str, Any]:
    return {"status": "refused", "problems": issue_lines(result),
            "issues": [issue_json(i) for i in result.issues],
            "summary": ledger_summary(result)}


@router.post("/ledger", openapi_extra={"requestBody": {
    "required": True, "content": {"text/csv": {"schema": {"type": "string"}}}}})
async def import_ledger(api: ApiDep, who: Admin, request: Request) -> JSONResponse:
    """Replace the meter ledger (``[meters] ledger``) with the CSV in the body.

    Checked as ``amic ledger check`` checks it; refused (422) with its ``FILE:LINE:
    kind: message`` lines, else written and applied as a SIGHUP reload applies it."""
    settings = api.ctx.settings()
    try:
        path = ledger_path(settings.source)
    except (OSError, UnicodeDecodeError, tomllib.TOMLDecodeError) as e:
        raise HTTPException(409, f"{settings.source}: cannot read it: {e}") from None
    if path is None:
        raise HTTPException(409, f"{settings.source}: no [meters] ledger to import into")
    lock = api.state.setdefault("ledger.lock", asyncio.Lock())
    async with lock:  # one import at a time: each checks, writes and reloads in turn
        return await _import(api, who, path, await request.body())


async def _import(api: Api, who: Principal, path: Path, raw: bytes) -> JSONResponse:
    settings = api.ctx.settings()
    if len(raw) > MAX_LEDGER_BYTES:
        raise HTTPException(413, f"a ledger of at most {MAX_LEDGER_BYTES} bytes")
    text, unreadable = decode_ledger(raw)
    if text is None:
        assert unreadable is not None
        result = LedgerReport(str(path), issues=[unreadable])
    else:
        result = validate_ledger(text, [b.name for b in settings.buses], file=str(path),
                                 secrets=settings.secrets_path())
    if not result.ok:
        doc = _refused(result)
        _record(api, who, "refused", {"summary": doc["summary"],
                                      "problems": doc["problems"][:50]})
        log.info("ledger import by %s refused: %s", who.name, doc["summary"])
        return JSONResponse(doc, status_code=422)
    try:
        before = path.read_bytes()
    except FileNotFoundError:
        before = None
    assert text is not None
    sealed = seal_personal(text, settings.secrets_path())
    replace_file(path, raw if sealed is None else sealed.encode())
    if not await api.ctx.reload():
        # Keep the file the running configuration came from.
        if before is None:
            path.unlink(missing_ok=True)
        else:
            replace_file(path, before)
        _record(api, who, "refused", {"summary": "the reload refused the configuration"})
        return JSONResponse({"status": "refused", "problems": [
            f"{settings.source}: the configuration with this ledger was refused by the "
            "reload (the collector's log says why); the previous ledger is kept"],
            "summary": ledger_summary(result)}, status_code=422)
    meters = len(api.ctx.settings().meters)
    _record(api, who, "applied", {"summary": ledger_summary(result), "meters": meters})
    log.info("ledger import by %s applied: %s", who.name, ledger_summary(result))
    return JSONResponse({"status": "applied", "summary": ledger_summary(result),
                         "meters": meters})

"""Bearer tokens and roles.

Tokens are kept as their SHA-256 in the secrets file (``[api_tokens.NAME] hash, role``);
the file is read again when it changes, so a token is added or revoked without a restart.
A token never reaches a log: it travels in the ``Authorization`` header only, which
neither uvicorn's access log nor this module logs.

Roles, each including the one before: ``viewer`` (reads; personal data masked),
``operator`` (commands on meters that are not protected), ``admin`` (ledger import,
protected meters with a reason, personal data in full).  A refusal (401, 403) is audited
like an accepted command: a ``denied`` row in the store's commands table (``amic audit``),
with the reason; a 401 on a read is only logged, so a scanner cannot fill the store.
"""

from __future__ import annotations

import json
import logging
import os
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Final

from fastapi import HTTPException, Request

from collector.config.secrets import ApiToken, Secrets, SecretsError, load_secrets
from collector.store.records import CommandRecord, utcnow

from .context import ApiContext

log = logging.getLogger("amic.api")

RANK: Final = {"viewer": 0, "operator": 1, "admin": 2}
DENIED: Final = "denied"


@dataclass(frozen=True, slots=True)
class Principal:
    """Who a request comes from: the token's name, role and operator."""

    name: str
    role: str
    operator: str

    def can(self, role: str) -> bool:
        return RANK[self.role] >= RANK[role]

    @property
    def full_personal_data(self) -> bool:
        return self.role == "admin"


class Tokens:
    """The tokens of a secrets file, read again when the file changes."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._stamp: tuple[int, int] | None = None
        self._secrets: Secrets | None = None
        self._generation = 0

    def find(self, token: str) -> ApiToken | None:
        secrets = self._current()
        return secrets.api_token(token) if secrets is not None else None

    def generation(self) -> int:
        """How many times the file was read: a console session opened at an older one
        ends (a token revoked, or its role changed, takes effect at once)."""
        self._current()
        return self._generation

    def _current(self) -> Secrets | None:
        try:
            st = os.stat(self.path)
            stamp = (st.st_mtime_ns, st.st_size)
        except OSError as e:
            log.error("api tokens: %s: %s", self.path, e.strerror or e)
            return None
        if stamp != self._stamp:
            try:
                self._secrets = load_secrets(self.path)
            except SecretsError as e:  # keep the tokens read before
                for p in e.problems:
                    log.error("api tokens not re-read: %s", p)
            else:
                self._generation += 1
                log.info("api tokens read from %s: %s", self.path,
                         ", ".join(self._secrets.api_tokens()) or "none")
            self._stamp = stamp
        return self._secrets


class DenialLimit:
    """At most ``per_minute`` refusals a minute audited one by one per client address;
    beyond that they are counted, and the count is audited as one row when that client
    is next refused after its minute: a flood of forged requests cannot fill the store,
    and the trail still says how many there were."""

    MAX_CLIENTS = 10_000

    def __init__(self, per_minute: int = 60, clock: Callable[[], float] = time.monotonic
                 ) -> None:
        self.per_minute = per_minute
        self.clock = clock
        self._clients: dict[str, list[float]] = {}  # host -> [window start, count, held]

    def admit(self, client: str) -> tuple[bool, int]:
        """(audit this refusal one by one?, refusals held back before it to audit now)."""
        now = self.clock()
        st = self._clients.get(client)
        report = 0
        if st is None or now - st[0] >= 60.0:
            report = int(st[2]) if st is not None else 0
            if st is None and len(self._clients) >= self.MAX_CLIENTS:
                self._clients = {k: v for k, v in self._clients.items()
                                 if now - v[0] < 60.0 or v[2]}
            st = self._clients[client] = [now, 0.0, 0.0]
        st[1] += 1
        if st[1] <= self.per_minute:
            return True, report
        if st[2] == 0:
            log.warning("api: more than %d refusals a minute from %s: counted, audited as "
                        "one row", self.per_minute, client)
        st[2] += 1
        return False, report


def audit_denial(ctx: ApiContext, request: Request, *, status: int, reason: str,
                 refusal: str, who: str = "", meter: str = "", kind: str = "") -> None:
    """A refused request in the audit trail (commands table, status ``denied``): ``reason``
    in words (``amic audit`` shows it), ``refusal`` its code; past the client's
    :class:`DenialLimit`, counted instead."""
    client = request.client.host if request.client else ""
    limit = getattr(request.app.state, "denials", None)
    one, held = limit.admit(client) if isinstance(limit, DenialLimit) else (True, 0)
    writer = ctx.writer()
    if held and writer is not None:
        writer.put_command(CommandRecord(
            f"api-{uuid.uuid4().hex}", "", "api refusals held back", utcnow(),
            operator=who, status=DENIED, detail=json.dumps(
                {"via": "api", "client": client, "refusals": held,
                 "error": f"{held} more refusals from {client} within a minute, past the "
                          f"limit of {limit.per_minute if limit else 0}"}, sort_keys=True)))
    if not one:
        return
    log.warning("api: %s %s refused (%d): %s; token %s", request.method, request.url.path,
                status, reason, who or "-")
    if writer is None:
        return
    detail = {"via": "api", "http": status, "error": reason, "refusal": refusal,
              "method": request.method,
              "path": request.url.path, "token": who,
              "client": client}
    writer.put_command(CommandRecord(f"api-{uuid.uuid4().hex}", meter,
                                     kind or _kind(request), utcnow(), operator=who,
                                     status=DENIED, detail=json.dumps(detail, sort_keys=True)))


def _kind(request: Request) -> str:
    action = request.path_params.get("action")
    return str(action) if action else f"api {request.method} {request.url.path}"[:64]


def authenticate(ctx: ApiContext, tokens: Tokens, request: Request) -> Principal:
    """The principal of ``request``; 401 (audited for anything but a read) otherwise."""
    header = request.headers.get("authorization", "")
    scheme, _, token = header.partition(" ")
    reason = refusal = ""
    found: ApiToken | None = None
    if not header:
        reason, refusal = "no bearer token", "no_token"
    elif scheme.lower() != "bearer" or not token.strip():
        reason, refusal = "not a bearer token", "no_token"
    else:
        found = tokens.find(token.strip())
        if found is None:
            reason, refusal = "unknown token", "bad_token"
    if found is None:
        if request.method not in ("GET", "HEAD"):
            audit_denial(ctx, request, status=401, reason=reason, refusal=refusal)
        else:
            log.info("api: %s %s: 401, %s", request.method, request.url.path, reason)
        raise HTTPException(401, reason, headers={"WWW-Authenticate": "Bearer"})
    return Principal(found.name, found.role, found.operator)


def require(ctx: ApiContext, request: Request, who: Principal, role: str, *,
            meter: str = "", kind: str = "") -> None:
    """403 (audited) unless ``who`` has ``role``."""
    if not who.can(role):
        reason = f"role {who.role} may not do this (needs {role})"
        audit_denial(ctx, request, status=403, reason=reason, refusal="role", who=who.name,
                     meter=meter, kind=kind)
        raise HTTPException(403, reason)

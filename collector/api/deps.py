"""The API's state and the dependencies its routers share (who asks, with which role)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from fastapi import Request

from .auth import Principal, Tokens, authenticate, require
from .context import ApiContext

if TYPE_CHECKING:
    from collector.config.settings import ApiSettings


@dataclass
class Api:
    """What every request handler reaches through ``request.app.state.api``."""

    ctx: ApiContext
    settings: ApiSettings
    tokens: Tokens
    state: dict[str, Any] = field(default_factory=dict)  # per router (commands: in flight)


def api_of(request: Request) -> Api:
    api = request.app.state.api
    assert isinstance(api, Api)
    return api


async def _who(request: Request, role: str) -> Principal:
    api = api_of(request)
    who = authenticate(api.ctx, api.tokens, request)
    require(api.ctx, request, who, role)
    request.state.principal = who
    return who


async def viewer(request: Request) -> Principal:
    """Any valid token."""
    return await _who(request, "viewer")


async def operator(request: Request) -> Principal:
    """A token of role operator or admin."""
    return await _who(request, "operator")


async def admin(request: Request) -> Principal:
    """An admin's token."""
    return await _who(request, "admin")

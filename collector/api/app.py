"""The FastAPI application: one router a concern, so the web console's pages (issue 17
§2) are added as routers of their own."""

from __future__ import annotations

from fastapi import FastAPI

from . import commands, console, ledger, reads
from .auth import DenialLimit, Tokens
from .context import ApiContext
from .deps import Api

TITLE = "amic HTTP API"


def build_app(ctx: ApiContext) -> FastAPI:
    """The application for the daemon behind ``ctx`` (its ``[api]`` settings)."""
    settings = ctx.settings().api
    assert settings is not None and settings.secrets_file is not None
    app = FastAPI(title=TITLE, version="1", docs_url=None, redoc_url=None,
                  description="Meters, readings, curves, events, reports, the billing "
                              "export, cycles, ledger import and relay commands of one "
                              "amic collector.  Bearer tokens; roles viewer, operator, "
                              "admin.")
    app.state.api = api = Api(ctx, settings, Tokens(settings.secrets_file))
    app.state.denials = DenialLimit()
    for module in (reads, commands, ledger):
        app.include_router(module.router)
    if settings.console:
        console.install(app, api)
    return app

"""The web console (issue 17 §2): server-rendered pages at ``/console/`` on the API's own
server, Jinja2 templates and a little vanilla JavaScript shipped in this package (no build
step, nothing fetched from elsewhere: a gateway is often offline).

Login with an API token; a session cookie then (see :mod:`.sessions`).  Pages are read
through the API's handlers, commands go through the API's relay handler: the same roles,
masking, journal and audit.
"""

from __future__ import annotations

from urllib.parse import quote

from fastapi import FastAPI, Request
from fastapi.exception_handlers import http_exception_handler
from fastapi.responses import RedirectResponse, Response
from fastapi.staticfiles import StaticFiles
from starlette.exceptions import HTTPException as StarletteHTTPException

from ..deps import Api
from .views import PREFIX, make_console, render, router, static_dir

__all__ = ["PREFIX", "install"]


def install(app: FastAPI, api: Api) -> None:
    """Add the console's pages, static files and error pages to ``app``."""
    make_console(api)
    app.include_router(router)
    app.mount(PREFIX + "/static", StaticFiles(directory=static_dir()), name="console-static")

    @app.get(PREFIX, include_in_schema=False)
    def _root() -> RedirectResponse:
        return RedirectResponse(PREFIX + "/", status_code=307)

    async def errors(request: Request, exc: Exception) -> Response:
        assert isinstance(exc, StarletteHTTPException)
        path = request.url.path
        if not path.startswith(PREFIX + "/") or path.startswith(PREFIX + "/static/"):
            return await http_exception_handler(request, exc)
        if exc.status_code == 401 and request.method in ("GET", "HEAD") \
                and not path.endswith("/outcome"):
            target = request.url.path + (f"?{request.url.query}" if request.url.query else "")
            return RedirectResponse(f"{PREFIX}/login?next={quote(target, safe='')}",
                                    status_code=303)
        if path.endswith("/outcome"):  # polled by the script: JSON
            return await http_exception_handler(request, exc)
        s = getattr(request.state, "console_session", None)
        return render(api, "error.html", s, status=exc.status_code, nav="",
                      message=str(exc.detail), code=exc.status_code)

    app.add_exception_handler(StarletteHTTPException, errors)


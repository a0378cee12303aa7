"""The web console without a browser, against the real daemon of tests/test_api_server.py:
login and its refusals, the session cookie's flags, CSRF refusals (audited), session
expiry and logout, masking in the HTML and escaping of hostile ledger and event text."""

from __future__ import annotations

import asyncio
import datetime as dt
import html
import http.client
import json
import logging
import re
import ssl
import time
import urllib.parse
from pathlib import Path
from typing import Any

import pytest
import test_api_server
from mosquitto import make_certificates
from test_api_server import LEDGER, TOKENS, Running, audit_rows, no_token_anywhere, start
from test_api_server import http as api_http

from collector.api.console import views
from collector.api.console.views import console_of
from collector.api.deps import Api
from collector.store.records import CommandRecord, Event, utcnow

HOSTILE = "<script>alert('x')</script>赵"
LEDGER_HOSTILE = LEDGER + f'M4,000000000004,conc-1,TQ-2,"{HOSTILE}",13700001111,customer\n'


class Client:
    """A cookie-keeping HTTP client that shows redirects instead of following them."""

    def __init__(self, url: str, context: ssl.SSLContext | None = None) -> None:
        u = urllib.parse.urlsplit(url)
        self.host, self.port, self.tls = u.hostname or "", u.port or 80, u.scheme == "https"
        self.context = context
        self.cookies: dict[str, str] = {}
        self.set_cookies: list[str] = []

    def request(self, method: str, path: str, form: dict[str, str] | None = None
                ) -> tuple[int, dict[str, str], str]:
        conn: http.client.HTTPConnection
        if self.tls:
            conn = http.client.HTTPSConnection(self.host, self.port, context=self.context,
                                               timeout=30)
        else:
            conn = http.client.HTTPConnection(self.host, self.port, timeout=30)
        headers = {}
        if self.cookies:
            headers["Cookie"] = "; ".join(f"{k}={v}" for k, v in self.cookies.items())
        body = None
        if form is not None:
            body = urllib.parse.urlencode(form).encode()
            headers["Content-Type"] = "application/x-www-form-urlencoded"
        try:
            conn.request(method, path, body=body, headers=headers)
            r = conn.getresponse()
            text = r.read().decode()
            for raw in r.headers.get_all("set-cookie") or []:
                self.set_cookies.append(raw)
                name, _, rest = raw.partition("=")
                value = rest.split(";", 1)[0].strip('"')
                if value and "max-age=0" not in raw.lower():
                    self.cookies[name] = value
                else:
                    self.cookies.pop(name, None)
            return r.status, {k.lower(): v for k, v in r.getheaders()}, text
        finally:
            conn.close()

    async def __call__(self, method: str, path: str, form: dict[str, str] | None = None
                       ) -> tuple[int, dict[str, str], str]:
        return await asyncio.to_thread(self.request, method, path, form)

    async def login(self, token: str) -> tuple[int, dict[str, str], str]:
        status, _, page = await self("GET", "/console/login")
        assert status == 200
        return await self("POST", "/console/login",
                          {"csrf": csrf_of(page), "token": token, "next": "/console/"})


def http_get(url: str, token: str) -> tuple[int, str]:
    status, _, body = api_http("GET", url, token=token)
    return status, body.decode()


def csrf_of(page: str) -> str:
    m = re.search(r'name="csrf" value="([^"]+)"', page)
    assert m is not None, page
    return m[1]


def api_of_run(run: Running) -> Api:
    assert run.daemon.api is not None
    api = run.daemon.api.app.state.api
    assert isinstance(api, Api)
    return api


async def denied(run: Running) -> list[dict[str, Any]]:
    await run.daemon.writer.flush()  # type: ignore[union-attr]
    return [{**r, "detail": json.loads(r["detail"])} for r in audit_rows(run)
            if r["status"] == "denied"]


@pytest.fixture
async def api(tmp_path: Path) -> Any:
    async for run in start(tmp_path, ledger=LEDGER_HOSTILE):
        yield run


async def test_login_cookie_csrf_expiry_and_logout(api: Running,
                                                   caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)
    c = Client(api.url)
    # no session: every page sends to the login, keeping where it was going
    status, headers, _ = await c("GET", "/console/meters?q=M1")
    assert status == 303
    assert headers["location"] == "/console/login?next=%2Fconsole%2Fmeters%3Fq%3DM1"

    # a bad token: refused, and audited like the API's refusals
    status, _, page = await c.login("amic_not-a-token")
    assert status == 401 and "This token is not valid." in page
    assert "amic_session" not in c.cookies
    # a login without the form's CSRF token
    status, _, _ = await c("POST", "/console/login", {"token": TOKENS["viewer"]})
    assert status == 403
    assert "amic_session" not in c.cookies

    status, headers, _ = await c.login(TOKENS["operator"])
    assert status == 303 and headers["location"] == "/console/"
    sid = c.cookies["amic_session"]
    (cookie,) = [h for h in c.set_cookies if h.startswith("amic_session=")]
    flags = {f.strip().split("=")[0].lower(): f.strip() for f in cookie.split(";")[1:]}
    assert "httponly" in flags and flags["samesite"].lower() == "samesite=strict"
    assert flags["path"] == "Path=/console" and "secure" not in flags  # plain HTTP here
    assert TOKENS["operator"] not in cookie and len(sid) >= 40
    status, _, page = await c("GET", "/console/")
    assert status == 200 and "operator-1 (operator)" in page
    assert "conc-1" in page and 'id="success"' in page

    # POSTs without the session's CSRF token: refused, audited, nothing done
    status, _, page = await c("POST", "/console/command/dry-run",
                              {"meter": "M1", "action": "trip", "reason": "x"})
    assert status == 403 and "CSRF" in page
    status, _, _ = await c("POST", "/console/command/confirm",
                           {"meter": "M1", "action": "trip", "reason": "x",
                            "request_id": "console-1", "csrf": "forged"})
    assert status == 403
    status, _, _ = await c("POST", "/console/logout", {"csrf": ""})
    assert status == 403
    assert not api.models["M1"].relay_open
    rows = await denied(api)
    assert [(r["kind"], r["meter"], r["operator"], r["detail"]["http"],
             r["detail"]["refusal"]) for r in rows] == [
        ("api POST /console/login", "", "", 401, "bad_token"),
        ("api POST /console/login", "", "", 403, "csrf"),
        ("trip", "M1", "operator-1", 403, "csrf"),
        ("trip", "M1", "operator-1", 403, "csrf"),
        ("api POST /console/logout", "", "operator-1", 403, "csrf")]
    status, _, _ = await c("GET", "/console/")
    assert status == 200  # the session survived the forged POSTs

    # the session ends after [api] session_minutes unused (30 by default) ...
    sessions = console_of(api_of_run(api)).sessions
    status, _, _ = await c("GET", "/console/alarms")
    assert status == 200
    sessions.clock = lambda: time.monotonic() + 29 * 60
    status, _, _ = await c("GET", "/console/alarms")
    assert status == 200  # used again: pushed on
    sessions.clock = lambda: time.monotonic() + 29 * 60 + 31 * 60
    status, headers, _ = await c("GET", "/console/alarms")
    assert status == 303 and headers["location"].startswith("/console/login")
    status, _, _ = await c("POST", "/console/logout", {"csrf": "x"})
    assert status == 401  # no session any more: 401, not a CSRF question
    sessions.clock = time.monotonic

    # ... and at logout: the old cookie is worth nothing afterwards
    status, _, _ = await c.login(TOKENS["viewer"])
    assert status == 303
    old = dict(c.cookies)
    status, _, page = await c("GET", "/console/")
    status, headers, _ = await c("POST", "/console/logout", {"csrf": csrf_of(page)})
    assert status == 303 and "amic_session" not in c.cookies
    c.cookies = old
    status, _, _ = await c("GET", "/console/")
    assert status == 303

    # a revoked token ends its sessions at once (any change of the file ends them all)
    status, _, _ = await c.login(TOKENS["admin"])
    assert status == 303
    secrets = api.tmp / "secrets.toml"
    text = secrets.read_text()
    secrets.write_text(text[:text.index("[api_tokens.admin-1]")])
    status, _, _ = await c("GET", "/console/")
    assert status == 303
    no_token_anywhere(api, caplog.text)


async def test_masking_and_hostile_text_escaped(api: Running,
                                                monkeypatch: pytest.MonkeyPatch) -> None:
    api.daemon._on_event(Event("cover_open", utcnow(), meter="M4", severity=2,
                               detail="<img src=x onerror=alert(1)>"))
    await api.daemon.writer.flush()  # type: ignore[union-attr]
    viewer, admin = Client(api.url), Client(api.url)
    assert (await viewer.login(TOKENS["viewer"]))[0] == 303
    assert (await admin.login(TOKENS["admin"]))[0] == 303

    status, _, page = await viewer("GET", "/console/meters")
    assert status == 200 and "4 meters" in page
    assert "张*" in page and "1381234****" in page
    assert "张三" not in page and "13812345678" not in page
    # a viewer's customer search sees the masked names only: a full name finds nothing
    status, _, page = await viewer("GET", "/console/meters?customer=" +
                                   urllib.parse.quote("张三"))
    assert status == 200 and "0 meters found" in page and "M1" not in page
    status, _, page = await viewer("GET", "/console/meters?customer=" +
                                   urllib.parse.quote("张"))
    assert "1 meter found" in page and "/console/meters/M1" in page
    status, _, page = await admin("GET", "/console/meters?customer=" +
                                  urllib.parse.quote("张三"))
    assert "1 meter found" in page and "张三" in page and "13812345678" in page

    # the search's pages
    monkeypatch.setattr(views, "PAGE", 3)
    status, _, page = await viewer("GET", "/console/meters?area=TQ-1&page=x")
    assert "3 meters found" in page and 'id="more"' not in page
    status, _, page = await viewer("GET", "/console/meters")
    assert re.findall(r">(M\d)</a>", page) == ["M1", "M2", "M3"] and 'id="more"' in page
    status, _, page = await viewer("GET", "/console/meters?page=1")
    assert re.findall(r">(M\d)</a>", page) == ["M4"] and 'id="more"' not in page

    status, _, page = await viewer("GET", "/console/meters/M1")
    assert status == 200 and '<td id="customer">张*</td>' in page
    assert "13812345678" not in page
    assert 'id="actions"' not in page and "/console/command" not in page  # no buttons

    # hostile ledger and event text is shown as text, never as markup
    for c in (viewer, admin):
        for path in ("/console/meters", "/console/meters/M4", "/console/alarms"):
            status, _, page = await c("GET", path)
            assert status == 200, path
            assert "<script>alert" not in page and "<img src=x" not in page, path
    status, _, page = await admin("GET", "/console/meters/M4")
    assert "&lt;script&gt;alert(&#39;x&#39;)&lt;/script&gt;赵" in page
    assert "&lt;img src=x onerror=alert(1)&gt;" in page
    status, _, page = await viewer("GET", "/console/meters/M4")
    assert '<td id="customer">&lt;*</td>' in page and "赵" not in page
    status, _, page = await viewer("GET", "/console/alarms")
    assert "cover_open" in page and "&lt;img src=x onerror=alert(1)&gt;" in page

    # a viewer's GET of the command page and forged POSTs: 403, audited
    status, _, page = await viewer("GET", "/console/command?meter=M1")
    assert status == 403
    status, _, page = await viewer("GET", "/console/meters")
    status, _, page = await viewer("POST", "/console/command/confirm",
                                   {"csrf": csrf_of(page), "meter": "M1", "action": "trip",
                                    "reason": "forged", "request_id": "console-x"})
    assert status == 403 and "role viewer" in page
    assert not api.models["M1"].relay_open
    rows = await denied(api)
    assert [(r["kind"], r["meter"], r["operator"], r["detail"]["refusal"])
            for r in rows][-1] == ("trip", "M1", "viewer-1", "role")


async def test_secure_cookie_over_tls(tmp_path: Path) -> None:
    certs = make_certificates(tmp_path)
    tls = f'cert_file = "{certs["server.crt"]}"\nkey_file = "{certs["server.key"]}"\n'
    async for run in start(tmp_path, tls):
        c = Client(run.url, ssl.create_default_context(cafile=str(certs["ca.crt"])))
        status, _, _ = await c.login(TOKENS["viewer"])
        assert status == 303
        (cookie,) = [h for h in c.set_cookies if h.startswith("amic_session=")]
        assert "; Secure" in cookie and "HttpOnly" in cookie
        login = [h for h in c.set_cookies if h.startswith("amic_login=")]
        assert login and all("; Secure" in h for h in login)
        status, _, page = await c("GET", "/console/")
        assert status == 200 and "viewer-1 (viewer)" in page


async def test_audit_trail_newest_first_a_page_at_a_time(api: Running) -> None:
    t0 = dt.datetime(2026, 3, 1, tzinfo=dt.UTC)
    for i in range(120):
        api.daemon.writer.put_command(CommandRecord(  # type: ignore[union-attr]
            f"r{i}/M2", "M2", "trip" if i % 2 else "restore", t0 + dt.timedelta(minutes=i),
            operator="alice", status="confirmed",
            detail=json.dumps({"reason": f"ticket {i}"})))
    api.daemon.writer.put_command(CommandRecord(  # type: ignore[union-attr]
        "journal-1", "M2", "trip", t0, operator="alice", status="done"))  # not audit
    await api.daemon.writer.flush()  # type: ignore[union-attr]
    c = Client(api.url)
    assert (await c.login(TOKENS["viewer"]))[0] == 303
    seen: list[str] = []
    path = "/console/audit"
    pages = 0
    while True:
        status, _, page = await c("GET", path)
        assert status == 200
        pages += 1
        seen += re.findall(r"<td>(ticket \d+)</td>", page)
        m = re.search(r'href="(/console/audit\?before=[^"]+)" id="older"', page)
        if m is None:
            break
        path = html.unescape(m[1])
    assert pages == 3
    assert seen == [f"ticket {i}" for i in range(119, -1, -1)]


async def test_console_off(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(test_api_server, "CONFIG", test_api_server.CONFIG.replace(
        "[api]\n", "[api]\nconsole = false\nsession_minutes = 5\n"))
    async for run in start(tmp_path):
        c = Client(run.url)
        status, _, _ = await c("GET", "/console/login")
        assert status == 404
        status, _, _ = await c("GET", "/console/static/console.js")
        assert status == 404
        assert run.daemon.settings.api is not None
        assert run.daemon.settings.api.session_minutes == 5
        status, doc = await asyncio.to_thread(http_get, run.url + "/api/v1/health",
                                              TOKENS["viewer"])
        assert status == 200 and "conc-1" in doc  # the API itself is served

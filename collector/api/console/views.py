"""The console's pages: status, meter search, a meter, alarms, commands, the audit trail.

Reads call the API's own handlers in collector/api/reads.py (same queries, same masking
by role); commands call the API's relay handler (collector/api/commands.py), so they take
the one path every channel takes (roles, protected meters, Idempotency-Key journal,
relay service, audit).  Read pages are plain ``def``: FastAPI runs them in its thread pool.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import hmac
import json
import logging
import re
import secrets
import sqlite3
import urllib.parse
import uuid
from dataclasses import dataclass, field
from importlib import resources
from typing import Annotated, Any, Final

import jinja2
from fastapi import APIRouter, Depends, HTTPException, Request
from fastapi.responses import HTMLResponse, JSONResponse, RedirectResponse, Response
from pydantic import ValidationError

from collector.commands.remote import DONE, StoreJournal, valid_request_id
from collector.config.settings import MeterSettings
from collector.daily.reports import DEFAULT_TZ, as_zone, day_bounds
from collector.store import Store, StoreWriter
from collector.store.records import from_ms

from .. import commands, reads
from ..auth import Principal, audit_denial, require
from ..deps import Api, api_of
from ..masking import mask_name
from .plot import bar_plot, curve_plot
from .sessions import COOKIE, Session, Sessions

log = logging.getLogger("amic.api")

PREFIX: Final = "/console"
LOGIN_COOKIE: Final = "amic_login"  # the login form's CSRF token (no session yet)
STATE: Final = "console"
ACTIONS: Final = ("trip", "restore", "hold", "release")
PAGE: Final = 50
MAX_FORM: Final = 16 * 1024
MAX_RUNS: Final = 500
HEADERS: Final = {
    "Cache-Control": "no-store",
    "Content-Security-Policy": "default-src 'none'; script-src 'self'; style-src 'self'; "
                               "img-src 'self' data:; connect-src 'self'; form-action 'self'; "
                               "frame-ancestors 'none'; base-uri 'none'",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "X-Frame-Options": "DENY",
}
_CURSOR = re.compile(r"(\d{1,15})\.(\d{1,19})")
# The kinds `amic audit` lists (Store.audit), here newest first and a page at a time.
AUDIT_KINDS: Final = ("trip", "restore", "hold", "release", "alarm", "alarm_release",
                      "dry_run", "topup", "topup_write", "sync_archive")

router = APIRouter(prefix=PREFIX, include_in_schema=False)
ApiDep = Annotated[Api, Depends(api_of)]


@dataclass
class Run:
    """A command confirmed in the console, carried out by the API's relay handler."""

    rid: str
    action: str
    meter: str
    by: str
    task: asyncio.Task[Response]


@dataclass
class Console:
    sessions: Sessions
    env: jinja2.Environment
    runs: dict[str, Run] = field(default_factory=dict)


def make_console(api: Api) -> Console:
    # Autoescaping: every ledger text (a customer's name, an event's detail) is escaped
    # wherever a template shows it, so no page can forget to.
    env = jinja2.Environment(loader=jinja2.PackageLoader("collector.api.console", "templates"),
                             autoescape=True)
    env.filters["q"] = lambda v: urllib.parse.quote(str(v), safe="")
    console = Console(Sessions(api.settings.session_minutes), env)
    api.state[STATE] = console
    return console


def console_of(api: Api) -> Console:
    c = api.state[STATE]
    assert isinstance(c, Console)
    return c


def static_dir() -> str:
    return str(resources.files("collector.api.console") / "static")


# ---- the daemon's parts (as reads.py has them)


def _store(api: Api) -> Store:
    store = api.ctx.store()
    if store is None:
        raise HTTPException(503, "the store is not open yet")
    return store


def _writer(api: Api) -> StoreWriter:
    writer = api.ctx.writer()
    if writer is None:
        raise HTTPException(503, "the store is not open yet")
    return writer


def _zone(api: Api) -> dt.tzinfo:
    daily = api.ctx.settings().daily
    return as_zone(daily.tz if daily is not None else DEFAULT_TZ)


def _protection(api: Api, m: MeterSettings) -> str | None:
    control = api.ctx.control()
    return control.relay.protection(m) if control is not None else None


# ---- rendering and sessions ----------------------------------------------------------


def render(api: Api, name: str, s: Session | None, *, status: int = 200,
           **kw: Any) -> HTMLResponse:
    html = console_of(api).env.get_template(name).render(
        s=s, who=s.who if s else None, prefix=PREFIX, **kw)
    return HTMLResponse(html, status_code=status, headers=HEADERS)


def session_of(request: Request) -> Session | None:
    api = api_of(request)
    c = console_of(api)
    s = c.sessions.get(request.cookies.get(COOKIE))
    if s is not None and api.tokens.generation() != s.generation:
        log.info("console: session of %s ended: the tokens' file changed", s.who.name)
        c.sessions.close(s.sid)
        s = None
    request.state.console_session = s
    return s


def _page(role: str) -> Any:
    def dep(request: Request) -> Session:
        s = session_of(request)
        if s is None:
            raise HTTPException(401, "log in first")
        require(api_of(request).ctx, request, s.who, role)
        return s
    return dep


Viewer = Annotated[Session, Depends(_page("viewer"))]
Operator = Annotated[Session, Depends(_page("operator"))]


async def read_form(request: Request) -> dict[str, str]:
    declared = request.headers.get("content-length", "")
    if declared.isdigit() and int(declared) > MAX_FORM:  # refused before it is read
        raise HTTPException(413, "form too large")
    body = await request.body()
    if len(body) > MAX_FORM:
        raise HTTPException(413, "form too large")
    if not request.headers.get("content-type", "").startswith(
            "application/x-www-form-urlencoded"):
        raise HTTPException(415, "expected a form")
    try:
        text = body.decode()
    except UnicodeDecodeError:
        raise HTTPException(400, "form not UTF-8") from None
    return {k: v[0] for k, v in urllib.parse.parse_qs(text, keep_blank_values=True).items()}


async def posted(request: Request, role: str) -> tuple[Session, dict[str, str]]:
    """The session and form of a console POST: 401 without a session, 403 without its
    CSRF token or with too low a role; each refusal audited as the API audits one."""
    api = api_of(request)
    s = session_of(request)
    form = await read_form(request)
    meter = form.get("meter", "")[:64]
    action = form.get("action", "")
    kind = action if action in ACTIONS else ""
    if s is None:
        audit_denial(api.ctx, request, status=401, reason="no console session",
                     refusal="no_session", meter=meter, kind=kind)
        raise HTTPException(401, "no console session: log in again")
    if not hmac.compare_digest(form.get("csrf", "").encode(), s.csrf.encode()):
        audit_denial(api.ctx, request, status=403, reason="no or a wrong CSRF token",
                     refusal="csrf", who=s.who.name, meter=meter, kind=kind)
        raise HTTPException(403, "the form's CSRF token is missing or wrong: reload the "
                                 "page")
    require(api.ctx, request, s.who, role, meter=meter, kind=kind)
    return s, form


def _local_next(target: str | None) -> str:
    if target and target.startswith(PREFIX + "/") and not target.startswith("//") \
            and "\\" not in target:
        return target
    return PREFIX + "/"


# ---- login and logout ----------------------------------------------------------------


@router.get("/login")
def login_form(api: ApiDep, next: str | None = None) -> HTMLResponse:
    token = secrets.token_urlsafe(24)
    r = render(api, "login.html", None, csrf=token, next=_local_next(next), error="")
    r.set_cookie(LOGIN_COOKIE, token, max_age=900, path=PREFIX + "/login", httponly=True,
                 samesite="strict", secure=api.settings.cert_file is not None)
    return r


@router.post("/login")
async def login(api: ApiDep, request: Request) -> Response:
    form = await read_form(request)
    expected = request.cookies.get(LOGIN_COOKIE, "")
    if not expected or not hmac.compare_digest(form.get("csrf", "").encode(),
                                               expected.encode()):
        audit_denial(api.ctx, request, status=403, reason="login without its CSRF token",
                     refusal="csrf")
        raise HTTPException(403, "the login form's CSRF token is missing or wrong: reload "
                                 "the page")
    token = form.get("token", "").strip()
    found = api.tokens.find(token) if token else None
    target = _local_next(form.get("next"))
    if found is None:
        audit_denial(api.ctx, request, status=401, reason="console login: unknown token",
                     refusal="bad_token")
        fresh = secrets.token_urlsafe(24)
        r = render(api, "login.html", None, status=401, csrf=fresh, next=target,
                   error="This token is not valid.")
        r.set_cookie(LOGIN_COOKIE, fresh, max_age=900, path=PREFIX + "/login",
                     httponly=True, samesite="strict",
                     secure=api.settings.cert_file is not None)
        return r
    s = console_of(api).sessions.open(found, api.tokens.generation())
    log.info("console: %s (%s) logged in from %s", found.name, found.role,
             request.client.host if request.client else "-")
    ok = RedirectResponse(target, status_code=303)
    ok.set_cookie(COOKIE, s.sid, path=PREFIX, httponly=True, samesite="strict",
                 secure=api.settings.cert_file is not None)
    ok.delete_cookie(LOGIN_COOKIE, path=PREFIX + "/login", httponly=True, samesite="strict",
                     secure=api.settings.cert_file is not None)
    return ok


@router.post("/logout")
async def logout(api: ApiDep, request: Request) -> Response:
    s, _ = await posted(request, "viewer")
    console_of(api).sessions.close(s.sid)
    log.info("console: %s logged out", s.who.name)
    r = RedirectResponse(PREFIX + "/login", status_code=303)
    r.delete_cookie(COOKIE, path=PREFIX, httponly=True, samesite="strict",
                    secure=api.settings.cert_file is not None)
    return r


# ---- status --------------------------------------------------------------------------


def _today(api: Api) -> tuple[dt.date, dt.tzinfo]:
    zone = _zone(api)
    return dt.datetime.now(zone).date(), zone


@router.get("/")
def status(api: ApiDep, s: Viewer) -> HTMLResponse:
    day, zone = _today(api)
    settings = api.ctx.settings()
    kinds = {b.name: str(b.kind) for b in settings.buses}
    per_bus: dict[str, int] = {}
    for m in settings.meters:
        per_bus[m.bus] = per_bus.get(m.bus, 0) + 1
    buses = {n: {**b, "kind": kinds.get(n, b.get("kind", "")), "meters": per_bus.get(n, 0)}
             for n, b in api.ctx.buses().items()}
    lines = {n: b for n, b in buses.items() if b.get("kind") in ("concentrator", "dtu")}
    plain = {n: b for n, b in buses.items() if n not in lines}
    cycles = reads.cycles(api, s.who, None, 10)
    running = [{**c, "done": c["succeeded"] + c["failed"]} for c in cycles["running"]]
    success = reads.report_success(api, s.who, day=day, by="area", tz=None)
    rows = [(("total" if r["total"] else str(r["area"])), r["pct"],
             f"{r['succeeded']}/{r['planned']}" + (f" ({r['pct']:.1f} %)"
                                                   if r["pct"] is not None else ""))
            for r in success["rows"]]
    bars, label_w, height = bar_plot(rows)
    return render(api, "status.html", s, nav="status", day=day, buses=plain, lines=lines,
                  running=running, cycles=cycles["cycles"], bars=bars, label_w=label_w,
                  bars_h=height, meters=len(settings.meters),
                  local=lambda iso: _local(iso, zone))


def _local(iso: str | None, zone: dt.tzinfo) -> str:
    if not iso:
        return "-"
    return dt.datetime.fromisoformat(iso).astimezone(zone).strftime("%Y-%m-%d %H:%M:%S")


# ---- meters --------------------------------------------------------------------------


def _matches(m: MeterSettings, who: Principal, q: str, area: str, customer: str) -> bool:
    if q and q not in m.meter_id and q not in m.address:
        return False
    if area and m.area != area:
        return False
    if customer:
        # Only what the role may see is searched: a viewer searching a full name must
        # not learn whether it is in the ledger.
        shown = m.customer if who.full_personal_data else mask_name(m.customer)
        if customer.strip() not in shown:
            return False
    return True


@router.get("/meters")
def meter_search(api: ApiDep, s: Viewer, q: str = "", area: str = "", customer: str = "",
                 page: str = "0") -> HTMLResponse:
    ms = api.ctx.settings().meters
    found = [m for m in ms if _matches(m, s.who, q.strip(), area.strip(), customer)]
    n = int(page) if page.isdigit() and len(page) < 7 else 0
    shown = [reads.meter_out(m, s.who, _protection(api, m))
             for m in found[n * PAGE:(n + 1) * PAGE]]
    areas = sorted({m.area for m in ms if m.area})
    return render(api, "meters.html", s, nav="meters", q=q, area=area, customer=customer,
                  areas=areas, meters=shown, total=len(found), page=n,
                  more=len(found) > (n + 1) * PAGE, searched=bool(q or area or customer))


@router.get("/meters/{meter_id}")
def meter_page(api: ApiDep, s: Viewer, meter_id: str, day: str = "",
               quantity: str = "") -> HTMLResponse:
    detail = reads.meter(api, s.who, meter_id)
    today, zone = _today(api)
    try:
        d = dt.date.fromisoformat(day) if day else today
    except ValueError:
        d = today
    curve = reads.curve(api, s.who, meter_id, d, None, None)
    series: dict[str, Any] = curve["series"]
    q = quantity if quantity in series else (sorted(series)[0] if series else "")
    plot = None
    if q:
        start_ms, _ = day_bounds(d, zone)
        pts = [(dt.datetime.fromisoformat(t), float(v)) for t, v in series[q]["points"]
               if v is not None]
        plot = curve_plot(pts, from_ms(start_ms).astimezone(zone), series[q]["unit"] or "")
    store = _store(api)
    recent, _ = reads.query_readings(store, meter=meter_id, area=None, quantity=None,
                                     since=None, until=None, limit=30, cursor=None)
    events = reads.events(api, s.who, since=None, meter=meter_id, kind=None, min_severity=0,
                          limit=30)
    return render(api, "meter.html", s, nav="meters", m=detail, day=d,
                  prev=d - dt.timedelta(days=1), next=d + dt.timedelta(days=1),
                  quantity=q, quantities=sorted(series), plot=plot,
                  unit=series[q]["unit"] if q else "", recent=recent, events=events,
                  actions=ACTIONS, local=lambda iso: _local(iso, zone))


# ---- alarms --------------------------------------------------------------------------


@router.get("/alarms")
def alarms(api: ApiDep, s: Viewer, kind: str = "", meter: str = "") -> HTMLResponse:
    rows = reads.alarms(api, s.who, since=None, meter=meter or None, kind=kind or None,
                        limit=200)
    _, zone = _today(api)
    return render(api, "alarms.html", s, nav="alarms", alarms=rows, kind=kind, meter=meter,
                  local=lambda iso: _local(iso, zone))


# ---- the audit trail -----------------------------------------------------------------


def audit_page(api: Api, before: str | None, limit: int = PAGE
               ) -> tuple[list[dict[str, Any]], str | None]:
    """Audit rows newest first, ``limit`` at a time; the cursor (``ts.id``) continues."""
    sql = (f"SELECT id, command_id, meter, kind, ts, operator, status, detail FROM commands "
           f"WHERE ((kind IN ({','.join('?' * len(AUDIT_KINDS))}) AND status NOT IN "
           "('received', 'done')) OR status = 'denied')")
    args: list[Any] = list(AUDIT_KINDS)
    m = _CURSOR.fullmatch(before or "")
    if m is not None:
        ts, rid = int(m[1]), int(m[2])
        sql += " AND (ts < ? OR (ts = ? AND id < ?))"
        args += [ts, ts, rid]
    cur = _store(api).thread_connection().execute(
        sql + " ORDER BY ts DESC, id DESC LIMIT ?", (*args, limit + 1))
    cur.row_factory = sqlite3.Row
    rows = [dict(r) for r in cur]
    more = len(rows) > limit
    rows = rows[:limit]
    nxt = f"{rows[-1]['ts']}.{rows[-1]['id']}" if more and rows else None
    return [audit_line(r) for r in rows], nxt


def why(detail: dict[str, Any]) -> str:
    """The reason column of ``amic audit`` (collector/cli/relay.py, not imported: the CLI
    imports the daemon, which imports the API)."""
    return str(detail.get("reason") or detail.get("error") or detail.get("detail") or "")


def audit_line(r: dict[str, Any]) -> dict[str, Any]:
    try:
        d = json.loads(r["detail"]) if r["detail"] else {}
    except ValueError:
        d = {}
    if not isinstance(d, dict):
        d = {}
    return {"ts": from_ms(r["ts"]).isoformat(), "meter": r["meter"], "kind": r["kind"],
            "status": r["status"], "operator": r["operator"] or "-", "why": why(d)}


@router.get("/audit")
def audit(api: ApiDep, s: Viewer, before: str = "") -> HTMLResponse:
    rows, nxt = audit_page(api, before or None)
    _, zone = _today(api)
    return render(api, "audit.html", s, nav="audit", rows=rows, next=nxt,
                  first=not before, local=lambda iso: _local(iso, zone))


# ---- commands ------------------------------------------------------------------------


def _meter_or_404(api: Api, meter_id: str) -> MeterSettings:
    m = next((m for m in api.ctx.settings().meters if m.meter_id == meter_id), None)
    if m is None:
        raise HTTPException(404, f"meter {meter_id} is not configured")
    return m


@router.get("/command")
def command_form(api: ApiDep, s: Operator, meter: str = "", action: str = "trip"
                 ) -> HTMLResponse:
    m = reads.meter_out(_meter_or_404(api, meter), s.who) if meter else None
    return render(api, "command.html", s, nav="command", step="form", meter=meter, m=m,
                  action=action if action in ACTIONS else "trip", actions=ACTIONS,
                  reason="", error="", results=[], rid="", force=False)


def _relay_body(form: dict[str, str], *, dry_run: bool, rid: str | None
                ) -> commands.RelayRequest:
    return commands.RelayRequest(meters=[form.get("meter", "")],
                                 reason=form.get("reason", "").strip(), dry_run=dry_run,
                                 force=form.get("force") == "yes", request_id=rid)


def _action(form: dict[str, str]) -> Any:
    action = form.get("action", "")
    if action not in ACTIONS:
        raise HTTPException(422, f"action: one of {', '.join(ACTIONS)}")
    return action


@router.post("/command/dry-run")
async def dry_run(api: ApiDep, request: Request) -> HTMLResponse:
    s, form = await posted(request, "operator")
    action = _action(form)
    meter = form.get("meter", "").strip()
    m = reads.meter_out(_meter_or_404(api, meter), s.who)
    kw: dict[str, Any] = {"nav": "command", "meter": meter, "m": m, "action": action,
                          "actions": ACTIONS, "reason": form.get("reason", ""),
                          "force": form.get("force") == "yes", "results": [], "rid": "",
                          "error": ""}
    try:
        body = _relay_body(form, dry_run=True, rid=None)
        answer = await commands.relay(api, s.who, request, action, body, None)
    except ValidationError:
        return render(api, "command.html", s, status=422, step="form",
                      **{**kw, "error": "Give a reason (it is recorded in the audit)."})
    except HTTPException as e:
        return render(api, "command.html", s, status=e.status_code, step="form",
                      **{**kw, "error": str(e.detail)})
    doc = json.loads(bytes(answer.body))
    kw["results"] = doc.get("results", [])
    if doc.get("status") != "ok":
        return render(api, "command.html", s, step="form", **{**kw, "error": doc.get("error")})
    cmds = api.ctx.settings().commands
    kw["min_interval"] = cmds.min_interval if cmds is not None else None
    kw["rid"] = f"console-{uuid.uuid4().hex}"  # the confirm's Idempotency-Key
    return render(api, "command.html", s, step="confirm", **kw)


@router.post("/command/confirm")
async def confirm(api: ApiDep, request: Request) -> Response:
    s, form = await posted(request, "operator")
    action = _action(form)
    meter = form.get("meter", "").strip()
    _meter_or_404(api, meter)
    rid = form.get("request_id", "")
    if not valid_request_id(rid):
        raise HTTPException(422, "request_id: go through the dry run first")
    try:
        body = _relay_body(form, dry_run=False, rid=rid)
    except ValidationError:
        raise HTTPException(422, "a reason is needed") from None
    runs = console_of(api).runs
    if rid not in runs:  # a second click on the same confirmation runs nothing twice
        task = asyncio.create_task(commands.relay(api, s.who, request, action, body, rid),
                                   name=f"console {action} {meter}")
        task.add_done_callback(_done)
        runs[rid] = Run(rid, action, meter, s.who.name, task)
        log.info("console: %s %s by %s (%s)", action, meter, s.who.name, rid)
        while len(runs) > MAX_RUNS:
            oldest = next(iter(runs))
            if not runs[oldest].task.done():
                break
            del runs[oldest]
    return RedirectResponse(f"{PREFIX}/command/{urllib.parse.quote(rid)}", status_code=303)


def _done(task: asyncio.Task[Response]) -> None:
    if not task.cancelled() and task.exception() is not None \
            and not isinstance(task.exception(), HTTPException):
        log.error("console: %s failed: %r", task.get_name(), task.exception())


async def outcome(api: Api, rid: str) -> dict[str, Any]:
    """Where the command of ``rid`` is: running, or done with the API's answer; and its
    lines of the audit trail."""
    run = console_of(api).runs.get(rid)  # the task is looked at on the loop, its own
    doc: dict[str, Any] | None = None
    meter = ""
    if run is not None:
        meter = run.meter
        if run.task.done():
            exc = None if run.task.cancelled() else run.task.exception()
            if run.task.cancelled():
                doc = {"status": "error", "error": "cancelled (the collector stopped)"}
            elif isinstance(exc, HTTPException):
                doc = {"status": "error", "error": str(exc.detail), "http": exc.status_code}
            elif exc is not None:
                doc = {"status": "error", "error": f"{type(exc).__name__}: {exc}"}
            else:
                doc = json.loads(bytes(run.task.result().body))
    else:
        prior = await asyncio.to_thread(StoreJournal(_store(api), _writer(api)).get, rid)
        if prior is None:
            raise HTTPException(404, f"no command {rid}")
        status, reply = prior
        try:
            doc = json.loads(reply) if status == DONE and reply else None
        except ValueError:
            doc = None
        if doc is None:
            doc = {"status": "error", "error": f"outcome unknown ({status}): see the audit"}
        meter = next((str(r.get("meter")) for r in doc.get("results", [])), "")
    lines = await asyncio.to_thread(_audit_of, api, rid, meter) if meter else []
    results = doc.get("results", []) if doc else []
    final = [x for x in lines if x["status"] != "sent"]
    settled = doc is not None and len(final) >= len(results)
    return {"request_id": rid, "state": "done" if doc is not None else "running",
            "settled": settled, "answer": doc, "audit": lines,
            "action": run.action if run else (doc or {}).get("command", ""), "meter": meter}


def _audit_of(api: Api, rid: str, meter: str) -> list[dict[str, Any]]:
    return [audit_line(dict(r)) for r in _store(api).audit(meter=meter)
            if str(r["command_id"]).startswith(rid + "/")]


@router.get("/command/{rid}")
async def command_result(api: ApiDep, s: Operator, rid: str) -> HTMLResponse:
    out = await outcome(api, rid)
    _, zone = _today(api)
    return render(api, "result.html", s, nav="command", out=out,
                  local=lambda iso: _local(iso, zone))


@router.get("/command/{rid}/outcome")
async def command_outcome(api: ApiDep, s: Operator, rid: str) -> JSONResponse:
    out = await outcome(api, rid)
    _, zone = _today(api)
    for line in out["audit"]:
        line["local"] = _local(line["ts"], zone)
    return JSONResponse(out, headers={"Cache-Control": "no-store"})

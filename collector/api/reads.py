"""Read endpoints: meters, readings, curves, events and alarms, reports, the billing
export, cycles and bus health.  Plain ``def`` handlers: FastAPI runs them in its thread
pool, so a long query never holds up the daemon's loop (each thread has its own SQLite
connection, see Store)."""

from __future__ import annotations

import csv
import datetime as dt
import io
import json
import re
import sqlite3
from collections.abc import Iterable, Sequence
from typing import Annotated, Any, Literal

from fastapi import APIRouter, Depends, HTTPException, Query, Response
from fastapi.responses import JSONResponse
from pydantic import BaseModel

from collector.config.settings import MeterSettings
from collector.daily.reports import (
    BALANCE,
    DEFAULT_TZ,
    as_zone,
    billing_export,
    day_bounds,
    line_loss,
    meter_energies,
    success_report,
    write_csv,
)
from collector.store import Store
from collector.store.records import from_ms, to_ms

from .auth import Principal
from .deps import Api, api_of, viewer
from .formats import lineloss_json, success_json
from .masking import mask_name, mask_phone

router = APIRouter(prefix="/api/v1", tags=["reads"])
Viewer = Annotated[Principal, Depends(viewer)]
ApiDep = Annotated[Api, Depends(api_of)]

_CURSOR = re.compile(r"(\d{1,15})\.(\d{1,19})")
READING_FIELDS = ("id", "meter", "area", "quantity", "value", "unit", "ts", "meter_ts",
                  "quality")


class MeterOut(BaseModel):
    """A meter of the ledger; ``customer`` and ``phone`` masked unless admin."""

    meter_id: str
    address: str
    bus: str
    protocol: str
    station: str
    feeder: str
    area: str
    box: str
    customer: str
    phone: str
    prepaid: bool
    role: str
    profile: str
    protected: str | None = None


class MeterDetail(MeterOut):
    last_read: str | None = None
    last_reading: dict[str, Any] = {}
    relay: dict[str, Any] = {}
    balance: float | None = None


class ReadingsPage(BaseModel):
    readings: list[dict[str, Any]]
    next: str | None
    """Pass as ``cursor`` for the next (older) page; null: the last page."""


def _store(api: Api) -> Store:
    store = api.ctx.store()
    if store is None:
        raise HTTPException(503, "the store is not open yet")
    return store


def meter_out(m: MeterSettings, who: Principal, protected: str | None = None) -> MeterOut:
    phone = str(getattr(m, "phone", "") or "")
    full = who.full_personal_data
    return MeterOut(meter_id=m.meter_id, address=m.address, bus=m.bus, protocol=m.protocol,
                    station=m.station, feeder=m.feeder, area=m.area, box=m.box,
                    customer=m.customer if full else mask_name(m.customer),
                    phone=phone if full else mask_phone(phone), prepaid=m.prepaid,
                    role=m.role, profile=m.profile, protected=protected)


def _meter(api: Api, meter_id: str) -> MeterSettings:
    m = next((m for m in api.ctx.settings().meters if m.meter_id == meter_id), None)
    if m is None:
        raise HTTPException(404, f"meter {meter_id} is not configured")
    return m


def _protection(api: Api, m: MeterSettings) -> str | None:
    control = api.ctx.control()
    return control.relay.protection(m) if control is not None else None


@router.get("/meters", response_model=list[MeterOut])
def meters(api: ApiDep, who: Viewer, area: str | None = None, bus: str | None = None,
           q: Annotated[str | None, Query(description="part of the meter id or address")]
           = None, limit: Annotated[int, Query(ge=1, le=100_000)] = 1000,
           offset: Annotated[int, Query(ge=0)] = 0) -> list[MeterOut]:
    """The ledger's meters (customer and phone masked unless admin)."""
    found = [m for m in api.ctx.settings().meters
             if (area is None or m.area == area) and (bus is None or m.bus == bus)
             and (q is None or q in m.meter_id or q in m.address)]
    return [meter_out(m, who, _protection(api, m)) for m in found[offset:offset + limit]]


@router.get("/meters/{meter_id}", response_model=MeterDetail)
def meter(api: ApiDep, who: Viewer, meter_id: str) -> MeterDetail:
    """One meter: ledger fields, its last read, relay state and balance."""
    m = _meter(api, meter_id)
    store = _store(api)
    rows = store.recent_readings(meter=meter_id, limit=200)
    last = [r for r in rows if rows and r.ts == rows[0].ts]
    control = api.ctx.control()
    relay: dict[str, Any] = {}
    balance: float | None = None
    if control is not None:
        expected = control.relay.expected_open.get(meter_id)
        if expected is not None:
            relay["open"] = expected
        if control.engine is not None and meter_id in control.engine.accounts:
            b = control.engine.balance(meter_id)
            balance = None if b is None else float(b)
    audit = store.audit(meter=meter_id)
    switches = [r for r in audit if r["kind"] in ("trip", "restore", "hold", "release")]
    if switches:
        s = switches[-1]
        relay["last_command"] = {"kind": s["kind"], "status": s["status"],
                                 "ts": from_ms(s["ts"]).isoformat(),
                                 "operator": s["operator"]}
    if balance is None:
        balance = next((r.value for r in last if r.quantity == BALANCE), None)
    out = meter_out(m, who, _protection(api, m))
    return MeterDetail(**out.model_dump(), last_read=last[0].ts.isoformat() if last else None,
                       last_reading={r.quantity: r.value for r in last}, relay=relay,
                       balance=balance)


def _ms(t: dt.datetime | None) -> int | None:
    return None if t is None else to_ms(t)


def query_readings(store: Store, *, meter: str | None, area: str | None,
                   quantity: str | None, since: dt.datetime | None,
                   until: dt.datetime | None, limit: int, cursor: str | None
                   ) -> tuple[list[dict[str, Any]], str | None]:
    """Newest first; the cursor (``ts.id`` of the last row) continues after it."""
    where: list[str] = []
    args: list[Any] = []
    if meter is not None:
        where.append("r.meter = ?")
        args.append(meter)
    if area is not None:
        where.append("r.meter IN (SELECT meter_id FROM meters WHERE area = ?)")
        args.append(area)
    if quantity is not None:
        where.append("r.quantity = ?")
        args.append(quantity)
    if since is not None:
        where.append("r.ts >= ?")
        args.append(_ms(since))
    if until is not None:
        where.append("r.ts < ?")
        args.append(_ms(until))
    if cursor is not None:
        m = _CURSOR.fullmatch(cursor)
        if m is None:
            raise HTTPException(422, "cursor: expected the value of next from a page")
        ts, rid = int(m[1]), int(m[2])
        where.append("(r.ts < ? OR (r.ts = ? AND r.id < ?))")
        args += [ts, ts, rid]
    sql = ("SELECT r.id, r.meter, m.area, r.quantity, r.value, r.unit, r.ts, r.meter_ts, "
           "r.quality FROM indexed_readings r LEFT JOIN meters m ON m.meter_id = r.meter")
    if where:
        sql += " WHERE " + " AND ".join(where)
    sql += " ORDER BY r.ts DESC, r.id DESC LIMIT ?"
    args.append(limit + 1)
    conn = store.thread_connection()
    got = conn.execute(sql, args).fetchall()
    more = len(got) > limit
    got = got[:limit]
    rows = [{"id": rid, "meter": meter_id, "area": area_, "quantity": q, "value": value,
             "unit": unit, "ts": from_ms(ts).isoformat(),
             "meter_ts": from_ms(mts).isoformat() if mts is not None else None,
             "quality": quality}
            for rid, meter_id, area_, q, value, unit, ts, mts, quality in got]
    nxt = f"{got[-1][6]}.{got[-1][0]}" if more and got else None
    return rows, nxt


def csv_text(header: Sequence[str], rows: Iterable[dict[str, Any]]) -> str:
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\r\n")
    w.writerow(header)
    for r in rows:
        w.writerow(["" if r.get(k) is None else r[k] for k in header])
    return buf.getvalue()


Format = Annotated[Literal["json", "csv"], Query(alias="format")]


@router.get("/readings", response_model=ReadingsPage,
            responses={200: {"content": {"text/csv": {}}}})
def readings(api: ApiDep, who: Viewer, meter: str | None = None, area: str | None = None,
             quantity: str | None = None, since: dt.datetime | None = None,
             until: dt.datetime | None = None, limit: Annotated[int, Query(ge=1)] = 1000,
             cursor: str | None = None, fmt: Format = "json") -> Any:
    """Readings by meter, area, quantity and collection time (``since`` <= ts <
    ``until``), newest first, a page at a time (``next`` -> ``cursor``); ``format=csv``
    gives CSV with the next cursor in the ``X-Next-Cursor`` header."""
    limit = min(limit, api.settings.max_rows)
    rows, nxt = query_readings(_store(api), meter=meter, area=area, quantity=quantity,
                               since=since, until=until, limit=limit, cursor=cursor)
    if fmt == "csv":
        headers = {"X-Next-Cursor": nxt} if nxt else {}
        return Response(csv_text(READING_FIELDS, rows), media_type="text/csv; charset=utf-8",
                        headers=headers)
    # Built already: a JSONResponse skips validating every row against the model again.
    return JSONResponse({"readings": rows, "next": nxt})


def _zone(api: Api, tz: str | None) -> dt.tzinfo:
    daily = api.ctx.settings().daily
    try:
        return as_zone(tz or (daily.tz if daily is not None else DEFAULT_TZ))
    except (KeyError, ValueError):
        raise HTTPException(422, f"tz: unknown time zone {tz!r}") from None


def _day(day: dt.date | None, zone: dt.tzinfo) -> dt.date:
    return day or (dt.datetime.now(zone).date() - dt.timedelta(days=1))


@router.get("/meters/{meter_id}/curve")
def curve(api: ApiDep, who: Viewer, meter_id: str, day: dt.date | None = None,
          quantity: str | None = None, tz: str | None = None) -> dict[str, Any]:
    """The points a meter timestamped itself (its load curve) on a local day (default
    yesterday), by quantity, oldest first."""
    _meter(api, meter_id)
    zone = _zone(api, tz)
    d = _day(day, zone)
    start, end = day_bounds(d, zone)
    sql = ("SELECT quantity, meter_ts, value, unit FROM indexed_readings WHERE meter = ? "
           "AND ts >= ? AND meter_ts >= ? AND meter_ts < ?")
    args: list[Any] = [meter_id, start, start, end]
    if quantity is not None:
        sql += " AND quantity = ?"
        args.append(quantity)
    series: dict[str, dict[str, Any]] = {}
    for q, mts, value, unit in _store(api).thread_connection().execute(
            sql + " ORDER BY meter_ts, id", args):
        s = series.setdefault(q, {"unit": unit, "points": []})
        s["points"].append([from_ms(mts).isoformat(), value])
    return {"meter": meter_id, "day": d.isoformat(), "tz": str(zone), "series": series}


def _events(api: Api, *, since: dt.datetime | None, meter: str | None, kind: str | None,
            min_severity: int, limit: int) -> list[dict[str, Any]]:
    return [{"ts": e.ts.isoformat(), "kind": e.kind, "meter": e.meter, "bus": e.bus,
             "severity": e.severity, "value": e.value, "detail": e.detail}
            for e in _store(api).events(since, limit, meter=meter, kind=kind,
                                        min_severity=min_severity)]


Limit = Annotated[int, Query(ge=1, le=100_000)]


@router.get("/events")
def events(api: ApiDep, who: Viewer, since: dt.datetime | None = None,
           meter: str | None = None, kind: str | None = None,
           min_severity: Annotated[int, Query(ge=0, le=3)] = 0,
           limit: Limit = 1000) -> list[dict[str, Any]]:
    """Events, newest first."""
    return _events(api, since=since, meter=meter, kind=kind, min_severity=min_severity,
                   limit=limit)


@router.get("/alarms")
def alarms(api: ApiDep, who: Viewer, since: dt.datetime | None = None,
           meter: str | None = None, kind: str | None = None,
           limit: Limit = 1000) -> list[dict[str, Any]]:
    """Alarms (events of severity 1 and up), newest first."""
    return _events(api, since=since, meter=meter, kind=kind, min_severity=1, limit=limit)


@router.get("/reports/success")
def report_success(api: ApiDep, who: Viewer, day: dt.date | None = None,
                   by: Literal["area", "bus"] = "area",
                   tz: str | None = None) -> dict[str, Any]:
    """Read success per area or bus, and the total, for a local day (default yesterday)."""
    zone = _zone(api, tz)
    d = _day(day, zone)
    rows = success_report(_store(api), d, zone, by=by)
    return {"day": d.isoformat(), "tz": str(zone), "by": by,
            "rows": [success_json(r) for r in rows]}


def _energy(api: Api) -> dict[str, str]:
    s = api.ctx.settings()
    return meter_energies(s.meters, [s.source.absolute().parent])


@router.get("/reports/lineloss")
def report_lineloss(api: ApiDep, who: Viewer, day: dt.date | None = None,
                    tz: str | None = None) -> dict[str, Any]:
    """Line loss per transformer area for a local day (default yesterday)."""
    zone = _zone(api, tz)
    d = _day(day, zone)
    areas = line_loss(_store(api), d, zone, energy=_energy(api))
    return {"day": d.isoformat(), "tz": str(zone), "areas": [lineloss_json(a) for a in areas]}


@router.get("/export", responses={200: {"content": {"text/csv": {}}}})
def export(api: ApiDep, who: Viewer, day: dt.date | None = None,
           tz: str | None = None) -> Response:
    """The billing export of a local day (CSV, as ``amic export`` writes it)."""
    zone = _zone(api, tz)
    d = _day(day, zone)
    rows = billing_export(_store(api), d, zone, energy=_energy(api))
    buf = io.StringIO()
    write_csv(rows, buf)
    return Response(buf.getvalue(), media_type="text/csv; charset=utf-8",
                    headers={"Content-Disposition": f'attachment; filename="export-{d}.csv"'})


@router.get("/cycles")
def cycles(api: ApiDep, who: Viewer, schedule: str | None = None,
           limit: Annotated[int, Query(ge=1, le=10_000)] = 100) -> dict[str, Any]:
    """Cycles in progress, and the last ones stored, newest first."""
    sql = ("SELECT cycle_id, schedule, started, ended, planned, succeeded, failed, per_bus, "
           "per_area, failed_meters, cut FROM cycles")
    args: list[Any] = []
    if schedule is not None:
        sql += " WHERE schedule = ?"
        args.append(schedule)
    conn = _store(api).thread_connection()
    cur = conn.execute(sql + " ORDER BY started DESC, id DESC LIMIT ?", (*args, limit))
    cur.row_factory = sqlite3.Row
    done = [{"cycle_id": r["cycle_id"], "schedule": r["schedule"],
             "started": from_ms(r["started"]).isoformat(),
             "ended": from_ms(r["ended"]).isoformat() if r["ended"] is not None else None,
             "planned": r["planned"], "succeeded": r["succeeded"], "failed": r["failed"],
             "per_bus": json.loads(r["per_bus"]), "per_area": json.loads(r["per_area"]),
             "failed_meters": json.loads(r["failed_meters"]), "cut": bool(r["cut"])}
            for r in cur]
    running = [{"cycle_id": c.cycle_id, "schedule": c.schedule,
                "started": c.started.isoformat(), "planned": c.planned,
                "succeeded": c.succeeded, "failed": c.failed}
               for c in api.ctx.cycles() if schedule is None or c.schedule == schedule]
    return {"running": running, "cycles": done}


@router.get("/health")
def health(api: ApiDep, who: Viewer) -> dict[str, Any]:
    """Buses (and concentrator and DTU lines) as the poller sees them."""
    s = api.ctx.settings()
    return {"collector": s.collector.id, "buses": api.ctx.buses()}


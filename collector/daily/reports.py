"""Daily reports computed from the store: line loss, read success, billing, ledger checks.

Pure computation over a :class:`~collector.store.Store` (the CLI wires it up).  Days are
*local* days in ``tz`` (default ``Asia/Shanghai``): day D runs from local midnight of D to
local midnight of D+1; the store keeps UTC epoch milliseconds.

Daily frozen energy (日冻结电量)
-------------------------------
A DL/T645 meter freezes its energy registers once a day, at local midnight by default
(daily freeze time 00:00), and ``freeze_daily_energy_active_forward_<tariff>`` returns the
*last* freeze.  So:

* A frozen reading is placed on the local date of its ``meter_ts`` when the meter gave
  one (backfilled history carries the freeze time), else on the local date of ``ts``
  (when the collector read it: during day X the last freeze is the one taken at the start
  of X).  "The frozen value at the start of X" is the last such reading placed on X
  (readings of the same freeze repeat through the day; the last one is surely taken
  after the freeze even when the meter clock runs a little slow).
* Usage of day D = frozen value placed on D+1 - frozen value placed on D.  The closing
  value only exists once D+1 has begun and the meter has been read on D+1.
* Fallback, only where a meter has no frozen value for a boundary: the live register
  (``energy_active_forward_<tariff>``) reading taken closest to that local midnight,
  within ``window`` (default 2 h) either side (by ``meter_ts`` when present, else
  ``ts``).  Results say which source they used (``frozen``, ``live``, ``mixed``).

Area roles: the meters table mirrors the configuration; an area's master (总表) has role
``area_master`` (``master`` is accepted too); every other meter of the area is a
customer meter.  Meters without an area are in no line-loss area.
"""

from __future__ import annotations

import csv
import datetime as dt
import json
import math
import os
import sqlite3
from collections.abc import Collection, Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Final, Literal, TextIO
from zoneinfo import ZoneInfo

from collector.config import (
    REQUIRED_METER_KEYS,
    CsvRecordError,
    check_ledger_text,
    csv_records,
)
from collector.config.settings import MeterSettings, defaults
from collector.forward import lineproto
from collector.store import Store
from collector.store.records import from_ms, to_ms
from drivers.device import MeterRef
from drivers.meters import KINDS, kind_of
from protocols.quantities import billing_energy

__all__ = [
    "BILLING_HEADER",
    "DEFAULT_TZ",
    "LINELOSS_FIELDS",
    "LINELOSS_MEASUREMENT",
    "TARIFFS",
    "AreaLineLoss",
    "BillingRow",
    "LedgerIssue",
    "LedgerReport",
    "MeterUsage",
    "SuccessRow",
    "as_zone",
    "billing_cells",
    "billing_export",
    "day_bounds",
    "line_loss",
    "lineloss_line",
    "local_date",
    "meter_energies",
    "midnight_ms",
    "success_report",
    "validate_ledger",
    "validate_ledger_file",
    "write_csv",
]

DEFAULT_TZ: Final = "Asia/Shanghai"
TARIFFS: Final[tuple[str, ...]] = ("total", "t1", "t2", "t3", "t4")
FROZEN_PREFIX: Final = "freeze_daily_energy_active_forward_"
LIVE_PREFIX: Final = "energy_active_forward_"
BALANCE: Final = "balance_amount"
MASTER_ROLES: Final = frozenset({"area_master", "master"})
_DEFAULT_PROTOCOL: Final[str] = defaults(MeterSettings)["protocol"]
NO_AREA: Final = "-"  # the scheduler's per_area key for meters without an area
DEFAULT_WINDOW: Final = dt.timedelta(hours=2)
# Frozen values read later with the freeze time as meter_ts (backfill) are looked for
# this long after the closing boundary's day.
DEFAULT_LATE: Final = dt.timedelta(days=1)

LINELOSS_MEASUREMENT: Final = "lineloss"
LINELOSS_FIELDS: Final[tuple[str, ...]] = ("loss_pct", "loss_kwh", "supplied_kwh", "sold_kwh")

TzLike = str | dt.tzinfo
Source = Literal["frozen", "live", "mixed", "missing"]


# ---- time ------------------------------------------------------------------------------

def as_zone(tz: TzLike) -> dt.tzinfo:
    """The zone of ``tz``: an IANA name (``"Asia/Shanghai"``) or a tzinfo."""
    return ZoneInfo(tz) if isinstance(tz, str) else tz


def midnight_ms(day: dt.date, tz: TzLike = DEFAULT_TZ) -> int:
    """UTC epoch ms of local midnight starting ``day``."""
    return to_ms(dt.datetime.combine(day, dt.time(), tzinfo=as_zone(tz)))


def day_bounds(day: dt.date, tz: TzLike = DEFAULT_TZ) -> tuple[int, int]:
    """``[start, end)`` of local ``day`` in UTC epoch ms (23/25 h across a DST change)."""
    return midnight_ms(day, tz), midnight_ms(day + dt.timedelta(days=1), tz)


def local_date(ms: int, tz: TzLike = DEFAULT_TZ) -> dt.date:
    return from_ms(ms).astimezone(as_zone(tz)).date()


@contextmanager
def _reading(store: Store) -> Iterator[sqlite3.Connection]:
    """A connection of its own for the report's queries (released afterwards)."""
    conn = store.connect()
    try:
        yield conn
    finally:
        store.release(conn)


def _r(x: float | None, digits: int = 4) -> float | None:
    return None if x is None else round(x, digits)


# ---- boundary values (frozen energy, live fallback) -----------------------------------

@dataclass(frozen=True, slots=True)
class _Value:
    value: float
    source: Literal["frozen", "live"]
    ts: int  # UTC ms it refers to (meter_ts, else ts)


_Key = tuple[str, str, dt.date]  # meter, tariff, boundary date


def _boundary_values(conn: sqlite3.Connection, meters: Collection[str],
                     tariffs: Sequence[str], day: dt.date, tz: TzLike, *,
                     window: dt.timedelta | None, late: dt.timedelta,
                     energy: Mapping[str, str] | None = None) -> dict[_Key, _Value]:
    """Energy of each meter and tariff at the start of ``day`` and of ``day + 1``.

    ``energy``: meter -> the active energy it is billed on (``forward`` or ``combined``,
    :func:`protocols.quantities.billing_energy`); forward for meters not in it.
    """
    chosen = energy or {}
    directions = sorted({chosen.get(m, "forward") for m in meters} or {"forward"})
    boundaries = (day, day + dt.timedelta(days=1))
    frozen = {f"freeze_daily_energy_active_{d}_{t}": (d, t) for d in directions for t in tariffs}
    lo = midnight_ms(boundaries[0], tz)
    hi = midnight_ms(boundaries[1] + dt.timedelta(days=1), tz) + int(late.total_seconds() * 1000)
    marks = ",".join("?" * len(frozen))
    out: dict[_Key, _Value] = {}
    for meter, quantity, value, ts, meter_ts in conn.execute(
            f"SELECT meter, quantity, value, ts, meter_ts FROM indexed_readings "
            f"WHERE ts >= ? AND ts < ? AND quantity IN ({marks}) AND value IS NOT NULL "
            f"ORDER BY ts, id", (lo, hi, *frozen)):
        d, t = frozen[quantity]
        if meter not in meters or chosen.get(meter, "forward") != d:
            continue
        at = ts if meter_ts is None else meter_ts
        placed = local_date(at, tz)
        if placed in boundaries:
            out[(meter, t, placed)] = _Value(float(value), "frozen", at)
    if window is None:
        return out
    live = {f"energy_active_{d}_{t}": (d, t) for d in directions for t in tariffs}
    marks = ",".join("?" * len(live))
    span = int(window.total_seconds() * 1000)
    for boundary in boundaries:
        wanted = {(m, t) for m in meters for t in tariffs} - {
            (m, t) for (m, t, b) in out if b == boundary}
        if not wanted:
            continue
        edge = midnight_ms(boundary, tz)
        best: dict[tuple[str, str], _Value] = {}
        for meter, quantity, value, ts, meter_ts in conn.execute(
                f"SELECT meter, quantity, value, ts, meter_ts FROM indexed_readings "
                f"WHERE ts >= ? AND ts <= ? AND quantity IN ({marks}) AND value IS NOT NULL "
                f"ORDER BY ts, id", (edge - span, edge + span, *live)):
            d, t = live[quantity]
            key = (meter, t)
            if key not in wanted or chosen.get(meter, "forward") != d:
                continue
            at = ts if meter_ts is None else meter_ts
            if abs(at - edge) > span:
                continue
            old = best.get(key)
            if old is None or abs(at - edge) < abs(old.ts - edge):
                best[key] = _Value(float(value), "live", at)
        for (meter, tariff), v in best.items():
            out[(meter, tariff, boundary)] = v
    return out


def _source(values: Iterable[_Value | None]) -> Source:
    kinds = {v.source for v in values if v is not None}
    if not kinds:
        return "missing"
    return kinds.pop() if len(kinds) == 1 else "mixed"


def _meters_table(store: Store) -> list[dict[str, str]]:
    return store.meters()


# ---- which energy each meter is billed on ----------------------------------------------

def meter_energies(meters: Iterable[MeterSettings],
                   search: Sequence[str | os.PathLike[str]] = ()) -> dict[str, str]:
    """Meter id -> ``forward`` or ``combined``: :func:`~protocols.quantities.billing_energy`
    of what each meter offers (its kind's capabilities: a device profile's registers, a
    catalogue).  ``search``: extra profile directories (the configuration's folder).

    Meters offering neither total, or whose profile does not load, are left out (the
    reports then look for forward energy and find it missing).
    """
    from collector.config.profiles import ProfileError, load_profile

    def choose(profile: str, protocol: str) -> str | None:
        try:
            kind = kind_of(protocol)
            loaded = load_profile(profile, search=search) if profile else None
            offered = kind.capabilities(MeterRef("", protocol, "", loaded)).quantities
        except (KeyError, ValueError, ProfileError):
            return None
        return billing_energy(offered)

    out: dict[str, str] = {}
    known: dict[tuple[str, str], str | None] = {}  # thousands of meters, a few kinds
    for m in meters:
        key = (m.profile, m.protocol)
        if key not in known:
            known[key] = choose(*key)
        chosen = known[key]
        if chosen is not None:
            out[m.meter_id] = chosen
    return out


# ---- line loss -------------------------------------------------------------------------

@dataclass(frozen=True, slots=True)
class MeterUsage:
    """One meter's forward active energy over the day (kWh)."""

    meter: str
    role: str
    opening: float | None  # at the start of the day
    closing: float | None  # at the start of the next day
    source: Source
    energy: str = "forward"  # forward, or combined where the meter has no forward total

    @property
    def usage(self) -> float | None:
        if self.opening is None or self.closing is None:
            return None
        return self.closing - self.opening

    @property
    def missing(self) -> bool:
        return self.opening is None or self.closing is None


@dataclass(frozen=True, slots=True)
class AreaLineLoss:
    """Line loss (线损) of one transformer area (台区) on one local day.

    ``supplied_kwh``: the area master's usage (None without it); ``sold_kwh``: the sum of
    the customer meters' usage (None when any is missing); ``loss_kwh`` and ``loss_pct``
    (loss / supplied x 100) only when ``complete``; ``loss_pct`` is None as well when
    nothing was supplied.  ``missing``: meters without a value at either boundary.
    ``reason`` says why an area is incomplete.
    """

    day: dt.date
    area: str
    master: str | None
    customers: int
    supplied_kwh: float | None
    sold_kwh: float | None
    loss_kwh: float | None
    loss_pct: float | None
    complete: bool
    missing: tuple[str, ...] = ()
    reason: str = ""
    source: Source = "missing"
    meters: tuple[MeterUsage, ...] = ()


def line_loss(store: Store, day: dt.date, tz: TzLike = DEFAULT_TZ, *,
              window: dt.timedelta | None = DEFAULT_WINDOW,
              late: dt.timedelta = DEFAULT_LATE,
              energy: Mapping[str, str] | None = None) -> list[AreaLineLoss]:
    """Line loss of every area of the meters table on local ``day``, by area.

    ``window``: how far from local midnight a live reading may be to stand in for a
    missing frozen value (None: frozen values only).  ``late``: how long after the day
    frozen values carrying their freeze time (``meter_ts``) are still looked for.
    ``energy``: meter id -> ``forward`` or ``combined`` (:func:`meter_energies`); forward
    for the others.
    """
    areas: dict[str, list[dict[str, str]]] = {}
    for m in _meters_table(store):
        if m["area"]:
            areas.setdefault(m["area"], []).append(m)
    if not areas:
        return []
    ids = {m["meter_id"] for ms in areas.values() for m in ms}
    with _reading(store) as conn:
        values = _boundary_values(conn, ids, ("total",), day, tz, window=window, late=late,
                                  energy=energy)
    nxt = day + dt.timedelta(days=1)
    out: list[AreaLineLoss] = []
    for area in sorted(areas):
        usages: list[MeterUsage] = []
        for m in sorted(areas[area], key=lambda m: (m["role"] not in MASTER_ROLES,
                                                     m["meter_id"])):
            o = values.get((m["meter_id"], "total", day))
            c = values.get((m["meter_id"], "total", nxt))
            usages.append(MeterUsage(m["meter_id"], m["role"], None if o is None else o.value,
                                     None if c is None else c.value, _source((o, c)),
                                     (energy or {}).get(m["meter_id"], "forward")))
        out.append(_area_loss(day, area, usages, values, nxt))
    return out


def _area_loss(day: dt.date, area: str, usages: list[MeterUsage],
               values: Mapping[_Key, _Value], nxt: dt.date) -> AreaLineLoss:
    masters = [u for u in usages if u.role in MASTER_ROLES]
    customers = [u for u in usages if u.role not in MASTER_ROLES]
    missing = tuple(u.meter for u in usages if u.missing)
    reasons: list[str] = []
    if not masters:
        reasons.append("no area master meter (role area_master) in the area")
    elif len(masters) > 1:
        reasons.append("more than one area master: " + ", ".join(u.meter for u in masters))
    if not customers:
        reasons.append("no customer meters in the area")
    if missing:
        reasons.append("no daily frozen energy at "
                       + ("a day boundary" if len(missing) == 1 else "day boundaries")
                       + " for " + ", ".join(missing))
    negative = [u.meter for u in usages if (u.usage or 0.0) < 0]
    if negative:
        reasons.append("energy went down (meter cleared or replaced?) on "
                       + ", ".join(negative))
    master = masters[0] if len(masters) == 1 else None
    supplied = master.usage if master is not None else None
    sold = None if any(u.missing for u in customers) or not customers \
        else math.fsum(u.usage or 0.0 for u in customers)
    complete = not reasons
    loss = pct = None
    if complete and supplied is not None and sold is not None:
        loss = supplied - sold
        pct = loss / supplied * 100 if supplied > 0 else None
    source = _source(values.get((u.meter, "total", b))
                     for u in usages for b in (day, nxt))
    return AreaLineLoss(day, area, master.meter if master is not None else None,
                        len(customers), _r(supplied), _r(sold), _r(loss), _r(pct),
                        complete, missing, "; ".join(reasons), source, tuple(usages))


def lineloss_line(loss: AreaLineLoss, tz: TzLike = DEFAULT_TZ) -> str | None:
    """The ``lineloss`` point of an area's day, in line protocol (ms precision).

    Measurement ``lineloss``, tags ``area`` and ``complete`` (``true``/``false``), fields
    ``loss_pct``, ``loss_kwh``, ``supplied_kwh``, ``sold_kwh`` (those known), timestamp
    the local midnight starting the day.  VictoriaMetrics names the series
    ``lineloss_loss_pct{area,complete}`` and so on.  None when no field is known.
    """
    fields = [(k, v) for k, v in (("loss_pct", loss.loss_pct), ("loss_kwh", loss.loss_kwh),
                                  ("supplied_kwh", loss.supplied_kwh),
                                  ("sold_kwh", loss.sold_kwh)) if v is not None]
    if not fields:
        return None
    tags = lineproto.tags((("area", loss.area),
                           ("complete", "true" if loss.complete else "false")))
    body = ",".join(f"{k}={lineproto.number(v)}" for k, v in fields)
    return lineproto.line(LINELOSS_MEASUREMENT, tags, body, midnight_ms(loss.day, tz))


# ---- read success ----------------------------------------------------------------------

@dataclass(frozen=True, slots=True)
class SuccessRow:
    """Read success (采集成功率) of one area or bus (``key``; None: the total) on a day.

    ``planned``: meters due in at least one cycle of the day; ``succeeded``: those read in
    at least one of them; ``cycles``: cycles of the day that had meters of this key;
    ``reads_ok`` / ``reads_total``: per-cycle meter reads, summed over the cycles.
    """

    day: dt.date
    by: Literal["area", "bus"]
    key: str | None
    planned: int
    succeeded: int
    cycles: int
    reads_ok: int
    reads_total: int

    @property
    def failed(self) -> int:
        return self.planned - self.succeeded

    @property
    def ratio(self) -> float | None:
        return self.succeeded / self.planned if self.planned else None

    @property
    def pct(self) -> float | None:
        r = self.ratio
        return None if r is None else round(r * 100, 2)

    @property
    def is_total(self) -> bool:
        return self.key is None


@dataclass(slots=True)
class _Cycle:
    per_bus: dict[str, tuple[int, int]]
    per_area: dict[str, tuple[int, int]]
    failed: set[str]
    succeeded: int
    total: int


def _pairs(text: str) -> dict[str, tuple[int, int]]:
    return {str(k): (int(v[0]), int(v[1])) for k, v in json.loads(text).items()}


def success_report(store: Store, day: dt.date, tz: TzLike = DEFAULT_TZ,
                   by: Literal["area", "bus"] = "area") -> list[SuccessRow]:
    """Per area (``NO_AREA`` ``"-"`` for meters without one) or bus, then the total row.

    Cycles belong to the day they started in.  A cycle lists the meters it failed to
    read (``failed_meters``) but only counts the others, per area and bus; so a meter of
    the meters table was in a cycle when it is among its failed meters, or when the
    cycle's count for the meter's area or bus equals the number of meters there (all of
    them were due).  Otherwise (a schedule over part of an area, a cycle cut short) a
    meter counts as read in the day's cycles if the store has a reading of it that day.
    Meters no longer in the meters table are left out.
    """
    if by not in ("area", "bus"):
        raise ValueError(f"by must be 'area' or 'bus', not {by!r}")
    start, end = day_bounds(day, tz)
    meters = _meters_table(store)
    area_of = {m["meter_id"]: m["area"] or NO_AREA for m in meters}
    bus_of = {m["meter_id"]: m["bus"] for m in meters}
    area_n: dict[str, int] = {}
    bus_n: dict[str, int] = {}
    for mid in area_of:
        area_n[area_of[mid]] = area_n.get(area_of[mid], 0) + 1
        bus_n[bus_of[mid]] = bus_n.get(bus_of[mid], 0) + 1
    with _reading(store) as conn:
        cycles = [
            _Cycle(_pairs(pb), _pairs(pa), set(json.loads(bad)), int(ok), int(ok) + int(nok))
            for pb, pa, bad, ok, nok in conn.execute(
                "SELECT per_bus, per_area, failed_meters, succeeded, failed FROM cycles "
                "WHERE started >= ? AND started < ? ORDER BY started, id", (start, end))]
        planned: set[str] = set()
        ok: set[str] = set()
        maybe: set[str] = set()
        for c in cycles:
            for mid in area_of:
                a, b = area_of[mid], bus_of[mid]
                if a not in c.per_area and b not in c.per_bus:
                    continue
                if mid in c.failed:
                    planned.add(mid)
                elif (c.per_area.get(a, (0, 0))[1] == area_n[a]
                      or c.per_bus.get(b, (0, 0))[1] == bus_n[b]):
                    planned.add(mid)
                    ok.add(mid)
                else:
                    maybe.add(mid)
        for mid in sorted(maybe - ok):
            if conn.execute("SELECT 1 FROM indexed_readings WHERE meter = ? AND ts >= ? AND ts < ? "
                            "LIMIT 1", (mid, start, end)).fetchone() is not None:
                planned.add(mid)
                ok.add(mid)
    key_of = area_of if by == "area" else bus_of
    rows: list[SuccessRow] = []
    for key in sorted({key_of[mid] for mid in planned}
                      | {k for c in cycles for k in (c.per_area if by == "area" else c.per_bus)}):
        mine = {mid for mid in planned if key_of[mid] == key}
        counts = [(c.per_area if by == "area" else c.per_bus).get(key) for c in cycles]
        present = [x for x in counts if x is not None]
        rows.append(SuccessRow(day, by, key, len(mine), len(mine & ok), len(present),
                               sum(x[0] for x in present), sum(x[1] for x in present)))
    rows.append(SuccessRow(day, by, None, len(planned), len(planned & ok), len(cycles),
                           sum(c.succeeded for c in cycles), sum(c.total for c in cycles)))
    return rows


# ---- billing export --------------------------------------------------------------------

@dataclass(frozen=True, slots=True)
class BillingRow:
    """One meter's day for billing: frozen forward active energy by tariff (kWh).

    ``status``: ``complete`` (every tariff at both boundaries), ``partial`` (the total at
    both, some tariff missing), ``missing`` (no total at a boundary).  ``balance``: the
    last ``balance_amount`` (yuan) read during the day, if any.
    """

    day: dt.date
    meter_id: str
    address: str
    area: str
    bus: str
    role: str
    opening: dict[str, float | None]
    closing: dict[str, float | None]
    balance: float | None
    status: Literal["complete", "partial", "missing"]
    source: Source
    energy: str = "forward"  # forward, or combined where the meter has no forward total

    @property
    def status_text(self) -> str:
        """The export's status cell: the status, ``(combined)`` after it for a meter
        billed on combined energy."""
        return self.status if self.energy == "forward" else f"{self.status} ({self.energy})"

    @property
    def usage(self) -> dict[str, float | None]:
        out: dict[str, float | None] = {}
        for t in TARIFFS:
            o, c = self.opening.get(t), self.closing.get(t)
            out[t] = None if o is None or c is None else c - o
        return out


def billing_export(store: Store, day: dt.date, tz: TzLike = DEFAULT_TZ, *,
                   window: dt.timedelta | None = DEFAULT_WINDOW,
                   late: dt.timedelta = DEFAULT_LATE,
                   energy: Mapping[str, str] | None = None) -> list[BillingRow]:
    """One row per meter of the meters table (by meter id); see :func:`line_loss` for
    where opening and closing values come from and for ``energy``."""
    meters = _meters_table(store)
    ids = {m["meter_id"] for m in meters}
    start, end = day_bounds(day, tz)
    nxt = day + dt.timedelta(days=1)
    with _reading(store) as conn:
        values = _boundary_values(conn, ids, TARIFFS, day, tz, window=window, late=late,
                                  energy=energy)
        balances: dict[str, float] = {}
        for meter, value in conn.execute(
                "SELECT meter, value FROM indexed_readings WHERE ts >= ? AND ts < ? "
                "AND quantity = ? AND value IS NOT NULL ORDER BY ts, id",
                (start, end, BALANCE)):
            balances[meter] = float(value)
    rows: list[BillingRow] = []
    for m in meters:
        mid = m["meter_id"]
        opening = {t: _value(values.get((mid, t, day))) for t in TARIFFS}
        closing = {t: _value(values.get((mid, t, nxt))) for t in TARIFFS}
        if opening["total"] is None or closing["total"] is None:
            status: Literal["complete", "partial", "missing"] = "missing"
        elif any(v is None for v in (*opening.values(), *closing.values())):
            status = "partial"
        else:
            status = "complete"
        source = _source(values.get((mid, t, b)) for t in TARIFFS for b in (day, nxt))
        rows.append(BillingRow(day, mid, m["address"], m["area"], m["bus"], m["role"],
                               opening, closing, balances.get(mid), status, source,
                               (energy or {}).get(mid, "forward")))
    return rows


def _value(v: _Value | None) -> float | None:
    return None if v is None else v.value


BILLING_HEADER: Final[tuple[str, ...]] = (
    "day", "meter_id", "address", "area", "bus", "role", "status", "source",
    *(f"opening_{t}_kwh" for t in TARIFFS), *(f"closing_{t}_kwh" for t in TARIFFS),
    *(f"usage_{t}_kwh" for t in TARIFFS), "balance_yuan")


def _fixed(v: float | None, digits: int = 2) -> str:
    if v is None:
        return ""
    text = f"{v:.{digits}f}"
    return "0.00" if text == "-0.00" and digits == 2 else text


def billing_cells(row: BillingRow) -> list[str]:
    """A row's CSV cells, in :data:`BILLING_HEADER` order (kWh and yuan with 2 decimals)."""
    usage = row.usage
    return [row.day.isoformat(), row.meter_id, row.address, row.area, row.bus, row.role,
            row.status_text, row.source,
            *(_fixed(row.opening[t]) for t in TARIFFS),
            *(_fixed(row.closing[t]) for t in TARIFFS),
            *(_fixed(usage[t]) for t in TARIFFS), _fixed(row.balance)]


def write_csv(rows: Iterable[BillingRow], file: TextIO | Path | str) -> int:
    """Write the billing rows as CSV with a header line; returns the rows written.

    A path is written as UTF-8 with a byte-order mark (so Excel shows Chinese names);
    an open text file is written as it is.  Missing values are empty cells.
    """
    if isinstance(file, str | Path):
        with Path(file).open("w", encoding="utf-8-sig", newline="") as f:
            return write_csv(rows, f)
    writer = csv.writer(file, lineterminator="\r\n")
    writer.writerow(BILLING_HEADER)
    n = 0
    for row in rows:
        writer.writerow(billing_cells(row))
        n += 1
    return n


# ---- ledger validation -----------------------------------------------------------------

IssueKind = Literal["duplicate_address", "duplicate_meter_id", "missing_field",
                    "unknown_bus", "invalid"]


@dataclass(frozen=True, slots=True)
class LedgerIssue:
    """One problem of a meter ledger.

    ``line``: the CSV line (1-based, as an editor shows it) of the row concerned; for a
    duplicate, the line of the repeat, and ``lines`` every line with that value (first
    first).  ``column``: the ledger column.  ``invalid``: anything else ``amic run``
    refuses (a malformed address, an unknown protocol, two area masters...).
    """

    kind: IssueKind
    line: int | None
    message: str
    meter: str | None = None
    column: str | None = None
    lines: tuple[int, ...] = ()

    def __str__(self) -> str:
        return (f"line {self.line}: " if self.line is not None else "") + self.message


@dataclass(slots=True)
class LedgerReport:
    file: str
    rows: int = 0  # data rows
    valid: int = 0  # rows amic run would load as meters
    issues: list[LedgerIssue] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.issues

    def of(self, kind: IssueKind) -> list[LedgerIssue]:
        return [i for i in self.issues if i.kind == kind]

    @property
    def duplicate_addresses(self) -> list[LedgerIssue]:
        return self.of("duplicate_address")

    @property
    def duplicate_meter_ids(self) -> list[LedgerIssue]:
        return self.of("duplicate_meter_id")

    @property
    def missing_fields(self) -> list[LedgerIssue]:
        return self.of("missing_field")

    @property
    def unknown_buses(self) -> list[LedgerIssue]:
        return self.of("unknown_bus")

    @property
    def invalid(self) -> list[LedgerIssue]:
        return self.of("invalid")


def _records(text: str) -> tuple[int | None, list[str], list[tuple[int, dict[str, str]]]]:
    """(header line, header, [(line, cells by column)]) as collector.config reads them.

    Rows whose cell count differs from the header's are left out (config reports them).
    """
    header: list[str] | None = None
    header_line: int | None = None
    out: list[tuple[int, dict[str, str]]] = []
    try:
        for start, cells in csv_records(text):
            if header is None:
                header = [c.strip().lower() for c in cells]
                header_line = start
                continue
            if len(cells) == len(header):
                out.append((start, {k: c.strip() for k, c in zip(header, cells, strict=True)}))
    except CsvRecordError:
        pass  # config reports it
    return header_line, header or [], out


def _address_key(cells: Mapping[str, str]) -> str:
    a = cells.get("address", "")
    # An unknown protocol is config's to report; its address is compared as the default's.
    kind = KINDS.get(cells.get("protocol", "")) or kind_of(_DEFAULT_PROTOCOL)
    try:
        return kind.address_key(a)
    except ValueError:
        return a


def validate_ledger(rows: Iterable[str] | str, buses: Iterable[str], *,
                    file: str = "ledger.csv", secrets: Path | None = None) -> LedgerReport:
    """Check a meter ledger (CSV lines, e.g. an open file, or its whole text).

    ``buses``: the configured bus names.  The ledger is read by collector.config's own
    parser (so everything ``amic run`` would refuse is reported, as ``invalid`` issues
    when not one of the kinds below), and checked for: the same address twice on a bus
    (addresses normalised as config does: Excel's lost leading zeros put back), the same
    meter id twice, empty required cells (meter_id, address, bus), buses not configured.
    ``secrets``: the secrets file whose ``[ledger] key`` opens sealed personal cells.
    """
    text = rows if isinstance(rows, str) else "".join(rows)
    text = text.removeprefix("\ufeff")
    bus_names = set(buses)
    report = LedgerReport(file)
    header_line, header, records = _records(text)
    covered: set[tuple[int | None, str | None]] = set()

    def add(issue: LedgerIssue) -> None:
        report.issues.append(issue)
        covered.add((issue.line, issue.column))

    absent = [c for c in REQUIRED_METER_KEYS if header and c not in header]
    for col in absent:
        add(LedgerIssue("missing_field", header_line, f"the header has no {col} column",
                        column=col))
    if not absent:
        ids: dict[str, list[int]] = {}
        addresses: dict[tuple[str, str], list[tuple[int, str]]] = {}
        for line, cells in records:
            mid = cells.get("meter_id") or None
            for col in REQUIRED_METER_KEYS:
                if not cells.get(col):
                    add(LedgerIssue("missing_field", line, f"{col} is empty"
                                    + (f" (meter {mid})" if mid and col != "meter_id" else ""),
                                    meter=mid, column=col))
            bus = cells.get("bus", "")
            if bus and bus not in bus_names:
                known = ", ".join(sorted(bus_names)) or "none configured"
                add(LedgerIssue("unknown_bus", line, f"bus {bus!r} of meter {mid or '?'} is "
                                f"not a configured bus ({known})", meter=mid, column="bus"))
            if mid:
                ids.setdefault(mid, []).append(line)
            if bus and cells.get("address"):
                addresses.setdefault((bus, _address_key(cells)), []).append((line, mid or "?"))
        for mid, lines in ids.items():
            for line in lines[1:]:
                add(LedgerIssue("duplicate_meter_id", line,
                                f"meter id {mid} again (first at line {lines[0]})",
                                meter=mid, column="meter_id", lines=tuple(lines)))
        for (bus, address), seen in addresses.items():
            for line, mid in seen[1:]:
                add(LedgerIssue("duplicate_address", line,
                                f"address {address} on bus {bus} again, meter {mid} (first: "
                                f"meter {seen[0][1]} at line {seen[0][0]})", meter=mid,
                                column="address", lines=tuple(x[0] for x in seen)))
    # collector.config's reading of the same text: everything else amic run refuses.
    report.rows, report.valid, problems = check_ledger_text(file, text, bus_names, secrets)
    for p in problems:
        if p.file != file or (p.line, p.key) in covered:
            continue
        text = str(p)
        loc = p.file + (f":{p.line}" if p.line is not None else "")
        loc += f":{p.column}" if p.line is not None and p.column is not None else ""
        add(LedgerIssue("invalid", p.line, text.removeprefix(loc + ": "), meter=p.meter,
                        column=p.key))
    report.issues.sort(key=lambda i: (i.line or 0, i.column or ""))
    return report


def validate_ledger_file(path: Path | str, buses: Iterable[str]) -> LedgerReport:
    """:func:`validate_ledger` of a ledger file (UTF-8, with or without a BOM)."""
    text = Path(path).read_bytes().decode("utf-8-sig")
    return validate_ledger(text, buses, file=str(path))

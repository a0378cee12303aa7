"""Voltage qualification (电压合格率) per meter and per area, from the stored voltages.

A poll's phase voltages (the readings of one meter sharing one ``ts``) stand for the
time until the next poll, at most ``max_gap`` (a longer gap is not monitored); the
day's last poll stands for the meter's usual interval (the median gap), up to the end
of the day.  A poll is out of band when a phase (one reading at least
``absent_v``: a phase below it is not wired or lost, not a deviation) is outside
nominal + ``low_pct`` .. nominal + ``high_pct`` (GB/T 12325 for 220 V: -10 % / +7 %).

    rate = 1 - out-of-band minutes / monitored minutes

An area sums its meters' minutes.  Nominal voltages: ``[daily] voltage_nominal``, per
area ``voltage_areas``.  The daily report stores one ``daily`` row per meter
(``voltage_meter``) and per area (``voltage_area``), forwarded as the measurements of
those names.
"""

from __future__ import annotations

import datetime as dt
import itertools
import statistics
from collections.abc import Callable
from dataclasses import dataclass
from typing import Literal

from collector.config.settings import DailySettings
from collector.store import Store
from collector.store.records import DailyRecord, Quality, from_ms

from .reports import NO_AREA, TzLike, day_bounds

PHASES = ("voltage_a", "voltage_b", "voltage_c")
MAX_GAP = dt.timedelta(hours=1)
ABSENT_V = 5.0


@dataclass(frozen=True, slots=True)
class VoltageRow:
    """电压合格率 of one meter or area (``key``) on ``day``; minutes monitored and out of
    band (``high``: above, ``low``: below), the extremes seen; ``rate`` None when
    nothing was monitored."""

    day: dt.date
    by: Literal["meter", "area"]
    key: str
    area: str
    nominal: float
    monitored_min: float
    high_min: float
    low_min: float
    v_max: float | None
    v_min: float | None

    @property
    def out_min(self) -> float:
        return self.high_min + self.low_min

    @property
    def rate(self) -> float | None:
        if self.monitored_min <= 0:
            return None
        return 1 - self.out_min / self.monitored_min

    def fields(self) -> tuple[tuple[str, float], ...]:
        out = [("monitored_min", self.monitored_min), ("out_min", self.out_min),
               ("high_min", self.high_min), ("low_min", self.low_min),
               ("nominal", self.nominal)]
        if self.rate is not None:
            out.insert(0, ("rate", round(self.rate, 6)))
        if self.v_max is not None and self.v_min is not None:
            out += [("v_max", self.v_max), ("v_min", self.v_min)]
        return tuple(out)


def _polls(store: Store, start: int, end: int) -> dict[str, list[tuple[int, list[float]]]]:
    """Meter -> [(ts ms, phase voltages)] of the day, in time order."""
    out: dict[str, dict[int, list[float]]] = {}
    conn = store.connect()  # a connection of its own, released afterwards
    try:
        for meter, value, ts, quality in conn.execute(
                "SELECT meter, value, ts, quality FROM indexed_readings WHERE ts >= ? AND "
                f"ts < ? AND quantity IN ({', '.join('?' * len(PHASES))}) ORDER BY ts",
                (start, end, *PHASES)):
            if value is None or int(quality) & Quality.ESTIMATED:
                continue
            out.setdefault(meter, {}).setdefault(int(ts) // 1000 * 1000, []).append(
                float(value))
    finally:
        store.release(conn)
    return {m: sorted(p.items()) for m, p in out.items()}


def _meter_row(day: dt.date, meter: str, area: str, polls: list[tuple[int, list[float]]],
               end: int, nominal: float, high_pct: float, low_pct: float,
               max_gap: dt.timedelta) -> VoltageRow:
    top, bottom = nominal * (1 + high_pct / 100), nominal * (1 + low_pct / 100)
    cap = max_gap.total_seconds() * 1000
    gaps = [b[0] - a[0] for a, b in itertools.pairwise(polls)]
    usual = statistics.median(gaps) if gaps else cap
    monitored = high = low = 0.0
    seen: list[float] = []
    for i, (ts, volts) in enumerate(polls):
        span = gaps[i] if i < len(gaps) else min(usual, end - ts)
        minutes = min(span, cap) / 60000
        wired = [v for v in volts if v >= ABSENT_V]
        if not wired:
            continue
        seen += wired
        monitored += minutes
        if max(wired) > top:
            high += minutes
        elif min(wired) < bottom:
            low += minutes
    return VoltageRow(day, "meter", meter, area, nominal, monitored, high, low,
                      max(seen) if seen else None, min(seen) if seen else None)


def voltage_report(store: Store, day: dt.date, tz: TzLike, *,
                   nominal: Callable[[str | None], float] = lambda area: 220.0,
                   high_pct: float = 7.0, low_pct: float = -10.0,
                   by: Literal["meter", "area"] = "meter",
                   max_gap: dt.timedelta = MAX_GAP) -> list[VoltageRow]:
    """电压合格率 of ``day`` per meter (with voltages that day) or per area."""
    start, end = day_bounds(day, tz)
    areas = {m["meter_id"]: m["area"] or NO_AREA for m in store.meters()}
    rows = [_meter_row(day, meter, areas.get(meter, NO_AREA), polls, end,
                       nominal(areas.get(meter)), high_pct, low_pct, max_gap)
            for meter, polls in sorted(_polls(store, start, end).items())]
    if by == "meter":
        return rows
    out: list[VoltageRow] = []
    for area in sorted({r.area for r in rows}):
        rs = [r for r in rows if r.area == area]
        highs = [r.v_max for r in rs if r.v_max is not None]
        lows = [r.v_min for r in rs if r.v_min is not None]
        out.append(VoltageRow(day, "area", area, area, rs[0].nominal,
                              sum(r.monitored_min for r in rs), sum(r.high_min for r in rs),
                              sum(r.low_min for r in rs), max(highs) if highs else None,
                              min(lows) if lows else None))
    return out


def voltage_records(store: Store, day: dt.date, tz: TzLike,
                    settings: DailySettings) -> list[DailyRecord]:
    """The daily rows of ``day``: ``voltage_meter`` per meter, ``voltage_area`` per area."""
    ts = from_ms(day_bounds(day, tz)[0])
    out: list[DailyRecord] = []
    by: Literal["meter", "area"]
    for by in ("meter", "area"):
        for r in voltage_report(store, day, tz, nominal=settings.nominal,
                                high_pct=settings.voltage_band_high_pct,
                                low_pct=settings.voltage_band_low_pct, by=by):
            out.append(DailyRecord(day, f"voltage_{by}", r.key, ts, r.rate is not None,
                                   r.fields()))
    return out


__all__ = ["VoltageRow", "voltage_records", "voltage_report"]

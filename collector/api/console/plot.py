"""Plots as inline SVG, drawn on the server: no script, no library, nothing to fetch."""

from __future__ import annotations

import datetime as dt
from collections.abc import Sequence
from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class Point:
    x: float
    y: float
    label: str  # the tooltip: time and value


@dataclass(frozen=True, slots=True)
class Tick:
    at: float
    label: str


@dataclass(frozen=True, slots=True)
class LinePlot:
    """A curve scaled into a ``width`` x ``height`` box (the template draws it)."""

    width: int
    height: int
    points: list[Point]
    xticks: list[Tick]
    yticks: list[Tick]
    left: int
    bottom: int

    @property
    def polyline(self) -> str:
        return " ".join(f"{p.x:.1f},{p.y:.1f}" for p in self.points)


def _fmt(v: float) -> str:
    return f"{v:.4g}"


def curve_plot(points: Sequence[tuple[dt.datetime, float]], day_start: dt.datetime,
               unit: str, *, width: int = 720, height: int = 260) -> LinePlot:
    """Points of one local day (``day_start`` its local midnight) against the hour."""
    left, right, top, bottom = 64, 24, 12, 28
    w, h = width - left - right, height - top - bottom
    values = [v for _, v in points]
    lo, hi = (min(values), max(values)) if values else (0.0, 1.0)
    if hi - lo < 1e-9:
        lo, hi = lo - 1.0, hi + 1.0
    pad = (hi - lo) * 0.05
    lo, hi = lo - pad, hi + pad

    def x_of(t: dt.datetime) -> float:
        hours = (t - day_start).total_seconds() / 3600.0
        return left + w * min(max(hours / 24.0, 0.0), 1.0)

    def y_of(v: float) -> float:
        return top + h * (1.0 - (v - lo) / (hi - lo))

    local = day_start.tzinfo
    pts = [Point(x_of(t), y_of(v), f"{t.astimezone(local):%H:%M} {_fmt(v)} {unit}".strip())
           for t, v in points]
    xticks = [Tick(left + w * hh / 24.0, f"{hh:02d}:00") for hh in range(0, 25, 3)]
    yticks = [Tick(y_of(lo + (hi - lo) * i / 4), _fmt(lo + (hi - lo) * i / 4))
              for i in range(5)]
    return LinePlot(width, height, pts, xticks, yticks, left, top + h)


@dataclass(frozen=True, slots=True)
class Bar:
    label: str
    pct: float | None
    width: float
    y: float
    text: str


def bar_plot(rows: Sequence[tuple[str, float | None, str]], *, width: int = 480,
             row: int = 22) -> tuple[list[Bar], int, int]:
    """Horizontal bars of percentages: (label, pct or None, text); the bars, the label
    column's width and the plot's height."""
    label_w = 120
    span = width - label_w - 110
    bars = [Bar(label, pct, 0.0 if pct is None else span * max(0.0, min(pct, 100.0)) / 100,
                i * row, text) for i, (label, pct, text) in enumerate(rows)]
    return bars, label_w, max(row * len(rows), row)

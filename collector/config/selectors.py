"""Meter selectors: parsing, matching, and checking a schedule's ``meters``."""

from __future__ import annotations

import difflib
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field

from .base import LoaderBase
from .messages import did_you_mean as _did_you_mean
from .messages import quote as _q
from .schema import PROTOCOLS, ROLES, SELECTOR_KINDS
from .settings import MeterSettings, ScheduleSettings, Settings

# ---- meters as read, before they are known to be valid ----------------------------------

@dataclass(slots=True)
class Row:
    """A meter as declared (TOML table or ledger row), valid or not: for matching."""

    table: str
    file: str
    line: int | None
    fields: dict[str, str] = field(default_factory=dict)  # selector kind / "id" -> value
    meter: MeterSettings | None = None  # None: something about it is wrong
    # what is known valid, for the checks across meters:
    id: str | None = None
    address: str | None = None
    bus: str | None = None
    area_master_of: str | None = None

    @property
    def where(self) -> str:
        return f"{self.file}:{self.line}" if self.line is not None else self.file


def _fields_of(m: MeterSettings) -> dict[str, str]:
    return {"id": m.meter_id, "area": m.area, "bus": m.bus, "feeder": m.feeder,
            "station": m.station, "box": m.box, "role": m.role, "protocol": m.protocol}


def parse_selector(text: str) -> tuple[str, str]:
    """``"*"`` -> ("*", ""); ``"area:A1"`` -> ("area", "A1"); a meter id -> ("id", id).

    ValueError for an unknown kind or an empty value.
    """
    s = text.strip()
    if s == "*":
        return "*", ""
    if ":" not in s:
        if not s:
            raise ValueError("empty selector")
        return "id", s
    kind, _, value = s.partition(":")
    kind, value = kind.strip().lower(), value.strip()
    if kind not in SELECTOR_KINDS:
        raise ValueError(f"unknown selector kind {kind!r}")
    if not value:
        raise ValueError(f"selector {s!r} has no value after the colon")
    return kind, value


def _matches(kind: str, value: str, fields: Mapping[str, str]) -> bool:
    return kind == "*" or fields.get(kind) == value



def meters_matching(settings: Settings, selectors: Iterable[str]) -> list[MeterSettings]:
    """The configured meters any of ``selectors`` matches, in configuration order."""
    parsed = [parse_selector(s) for s in selectors]
    return [m for m in settings.meters
            if any(_matches(k, v, _fields_of(m)) for k, v in parsed)]


def select_meters(settings: Settings, schedule: ScheduleSettings) -> list[MeterSettings]:
    """The meters a schedule reads: any selector matches (no selectors: all meters).

    Ordered by bus (in the order the buses are configured), then address.  ValueError
    for a malformed selector (never raised for settings from :func:`load_settings`).
    """
    selectors = [parse_selector(s) for s in schedule.meters] or [("*", "")]
    bus_order = {b.name: i for i, b in enumerate(settings.buses)}
    chosen = [m for m in settings.meters
              if any(_matches(k, v, _fields_of(m)) for k, v in selectors)]
    return sorted(chosen, key=lambda m: (bus_order.get(m.bus, len(bus_order)), m.bus,
                                         m.address))




class SelectorsMixin(LoaderBase):
    """Selectors in schedules and [prepaid]."""

    def selectors(self, t: str, data: Mapping[str, object],
                  rows: list[Row]) -> tuple[list[str] | None, list[MeterSettings]]:
        """The selectors as written, and the valid meters they pick."""
        kinds = ('"*", "area:ID", "bus:NAME", "feeder:ID", "station:ID", "box:ID", '
                 '"role:ROLE", "protocol:PROTOCOL"')
        what = f"a non-empty list of meter selectors: {kinds} or meter ids"
        if "meters" in data:
            texts = self.strings(t, data, "meters", what)
            if texts is None:
                return None, []
        else:
            texts = ["*"]
        ok = True
        picked: set[int] = set()
        for text in texts:
            try:
                kind, value = parse_selector(text)
            except ValueError:
                ok = False
                kind_text = text.partition(":")[0].strip().lower()
                close = difflib.get_close_matches(kind_text, SELECTOR_KINDS, n=1)
                fixed = f"{close[0]}:{text.partition(':')[2].strip()}" if close else ""
                self.add(t, "meters", f"a meter selector: {kinds} or a meter id", _q(text),
                         hint=f"did you mean {_q(fixed)}?" if fixed and ":" in text else "")
                continue
            hits = [i for i, r in enumerate(rows) if _matches(kind, value, r.fields)]
            if not hits and rows:  # no meters at all is reported once, elsewhere
                ok = False
                self.add(t, "meters", "selectors that match at least one meter",
                         f"{_q(text)}, which matches none", hint=self.selector_hint(
                             kind, value, rows))
            picked.update(hits)
        selected = [rows[i].meter for i in sorted(picked)]
        return (texts if ok else None), [m for m in selected if m is not None]

    @staticmethod

    @staticmethod
    def selector_hint(kind: str, value: str, rows: list[Row]) -> str:
        if kind == "*":
            return ""
        known = sorted({r.fields.get(kind, "") for r in rows} - {""})
        close = _did_you_mean(value, known)
        if close:
            return close.replace('mean "', f'mean "{kind}:' if kind != "id" else 'mean "')
        if kind == "role":
            return "roles are " + ", ".join(ROLES)
        if kind == "protocol":
            return "protocols are " + ", ".join(PROTOCOLS)
        if kind == "id" or not known:
            return ""
        shown = ", ".join(known[:10]) + (", ..." if len(known) > 10 else "")
        return f"{kind} values in use: {shown}"


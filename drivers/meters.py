"""The meter protocols amic speaks, by their ledger names: the one list of kinds.

A new protocol adds its kind module (``drivers/<protocol>_meter.py``, a
:class:`~drivers.device.MeterKind`) and one entry in :data:`KINDS`; the collector finds
it by the ledger's ``protocol`` column and never asks which one it is.
"""

from __future__ import annotations

from collections.abc import Iterable

from .device import Capabilities, Line, Meter, MeterKind, MeterRef
from .dlt645_meter import DLT645_1997, DLT645_2007, Dlt645Kind
from .modbus_meter import MODBUS

KINDS: dict[str, MeterKind] = {k.name: k for k in (DLT645_2007, DLT645_1997, MODBUS)}


def kind_of(name: str) -> MeterKind:
    """The kind of the ledger protocol ``name``; KeyError naming the known ones."""
    try:
        return KINDS[name]
    except KeyError:
        raise KeyError(f"no meter protocol {name!r} (known: {', '.join(sorted(KINDS))})"
                       ) from None


def open_meter(line: Line, ref: MeterRef) -> Meter:
    """The meter ``ref`` on ``line``: behind the line's concentrator when ``ref`` has a
    route and the line reaches one."""
    kind = kind_of(ref.kind)
    if ref.route is not None and line.terminal is not None:
        # imported here: a collector without concentrators never loads the 376.1 stack
        from .concentrator_meter import ConcentratorMeter, TerminalLink
        if isinstance(line.terminal, TerminalLink):
            return ConcentratorMeter(line, ref, _behind(kind, ref))
    return kind.open(line, ref)


def capabilities(ref: MeterRef) -> Capabilities:
    """What the meter ``ref`` offers (no I/O); with a route, behind a concentrator."""
    kind = kind_of(ref.kind)
    if ref.route is not None:
        from .concentrator_meter import capabilities_behind
        return capabilities_behind(_behind(kind, ref), ref)
    return kind.capabilities(ref)


def _behind(kind: MeterKind, ref: MeterRef) -> Dlt645Kind:
    if not isinstance(kind, Dlt645Kind):
        raise ValueError(f"meter {ref.meter_id}: only DL/T645 meters can sit behind a "
                         f"concentrator, not {kind.name}")
    return kind


def check_kinds(names: Iterable[str]) -> None:
    """KeyError for a protocol name no kind has."""
    for n in names:
        kind_of(n)


__all__ = ["KINDS", "capabilities", "check_kinds", "kind_of", "open_meter"]

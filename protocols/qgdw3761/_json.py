"""JSON-friendly forms of data units: numbers as numbers, times as ISO text."""

from __future__ import annotations

import dataclasses
import datetime as dt
from decimal import Decimal
from typing import Any

from ..quantities import QUANTITIES
from ._fn import DataUnit, RawUnit, unit_name
from ._frame import Direction


def value_to_json(value: Any) -> Any:
    """Decimals as numbers, dates as ISO text, bytes as hex, dataclasses as objects."""
    if isinstance(value, Decimal):
        exponent = value.as_tuple().exponent
        return int(value) if isinstance(exponent, int) and exponent >= 0 else float(value)
    if isinstance(value, (dt.date, dt.time)):
        return value.isoformat()
    if isinstance(value, (bytes, bytearray)):
        return bytes(value).hex().upper()
    if isinstance(value, (tuple, list)):
        return [value_to_json(v) for v in value]
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return {f.name: value_to_json(getattr(value, f.name))
                for f in dataclasses.fields(value)}
    return value


def unit_to_json(afn: int, direction: Direction, unit: DataUnit | RawUnit) -> dict[str, Any]:
    """``pn``, ``fn``, ``name``, ``values`` and, for meter quantities, ``readings``
    (quantity name -> value and unit, as :mod:`protocols.quantities` names them)."""
    if isinstance(unit, RawUnit):
        return {"pn": list(unit.pns), "fn": list(unit.fns), "name": None,
                "raw": unit.data.hex().upper()}
    out: dict[str, Any] = {"pn": unit.pn, "fn": unit.fn,
                           "name": unit_name(afn, unit.fn, direction)}
    value = unit.value
    if value is None:
        return out
    if dataclasses.is_dataclass(value) or isinstance(value, (tuple, list)):
        out["values"] = value_to_json(value)
    else:
        out["values"] = {"value": value_to_json(value)}
    readings = getattr(value, "readings", None)
    if callable(readings):
        out["readings"] = {
            name: {"value": value_to_json(v), "unit": QUANTITIES[name].unit}
            for name, v in readings().items()
        }
    return out

"""The loader's view of the schema models (collector/config/settings.py): each key's TOML name,
converter, bounds and default, read from the pydantic field info once and cached."""

from __future__ import annotations

import functools
import types
from decimal import Decimal
from typing import Any, Literal, Union, get_args, get_origin

from .convert import (
    Conv,
    address_conv,
    choice_conv,
    csv_bool_conv,
    customer_conv,
    duration_conv,
    host_conv,
    http_url_conv,
    int_conv,
    listen_conv,
    money_conv,
    mqtt_url_conv,
    ms_conv,
    name_conv,
    nonempty_conv,
    parity_conv,
    path_conv,
    phone_conv,
    text_conv,
    toml_bool_conv,
    topic_conv,
    unit_conv,
    zone_conv,
)
from .schema import field_of_key, is_required, key_of, keys, marker
from .settings import As, Table, model_default

__all__ = ["As", "Table", "conv_of", "default_of", "field_of_key", "is_required", "key_of", "keys",
           "marker", "model_default"]


def default_of(model: type[Table], name: str) -> Any:
    """The default in settings units (the value a key left out takes)."""
    return model_default(model, name)


def bounds(model: type[Table], name: str) -> tuple[Any, Any, bool]:
    """(lowest, highest, lowest excluded) of a field; None where unbounded."""
    lo: Any = None
    hi: Any = None
    above = False
    # pydantic keeps Field(ge=, gt=, le=) as annotated-types constraints with these names
    for m in model.model_fields[name].metadata:
        if hasattr(m, "ge"):
            lo = m.ge
        elif hasattr(m, "gt"):
            lo, above = m.gt, True
        elif hasattr(m, "le"):
            hi = m.le
    return lo, hi, above


def _choices(annotation: Any) -> tuple[Any, ...] | None:
    """The values of a Literal (or an optional Literal), else None."""
    if get_origin(annotation) is Literal:
        return get_args(annotation)
    if get_origin(annotation) in (Union, types.UnionType):
        for arg in get_args(annotation):
            if get_origin(arg) is Literal:
                return get_args(arg)
    return None


@functools.cache
def conv_of(model: type[Table], name: str, csv: bool = False) -> Conv[Any]:
    """The converter of a field, built from its type, its :class:`As` marker and its bounds
    (``csv``: a ledger cell, where booleans are words)."""
    info = model.model_fields[name]
    mark = marker(model, name)
    lo, hi, above = bounds(model, name)
    if mark is None:
        if info.annotation is bool:
            return csv_bool_conv() if csv else toml_bool_conv()
        choices = _choices(info.annotation)
        if choices is None:
            raise TypeError(f"{model.__name__}.{name}: no converter for its type")
        return choice_conv(choices)
    kind = mark.conv
    if kind == "int":
        return int_conv(lo, hi, mark.unit)
    if kind == "duration":
        return duration_conv(float(lo or 0), above=above,
                             maximum=None if hi is None else float(hi))
    if kind == "ms":
        return ms_conv(lo, hi)
    if kind == "money":
        return money_conv(Decimal(lo or 0))
    if kind == "choice":
        return choice_conv(mark.choices)
    if kind == "name":
        return name_conv(mark.what) if mark.what else name_conv()
    if kind in ("path", "nonempty"):
        return (path_conv if kind == "path" else nonempty_conv)(mark.what)
    simple = {"text": text_conv, "customer": customer_conv, "phone": phone_conv,
              "address": address_conv,
              "unit": unit_conv, "host": host_conv, "listen": listen_conv,
              "mqtt_url": mqtt_url_conv, "http_url": http_url_conv, "topic": topic_conv,
              "zone": zone_conv, "parity": parity_conv}
    if kind in simple:
        return simple[kind]()
    raise TypeError(f"{model.__name__}.{name}: {kind!r} is read by the table's own code")

"""Converters: a raw TOML value (or ledger cell) to a typed one, or why not."""

from __future__ import annotations

import math
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from decimal import Decimal
from typing import Generic
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from protocols.quantities import (
    BROADCAST_ADDRESS,
    normalise_address,
)

from ..messages import did_you_mean as _did_you_mean
from ..messages import quote as _q
from ..safefile import path_problem
from .problems import _one_of, _show
from .schema import (
    _DURATION_PART,
    _DURATION_RE,
    _DURATION_TEXT,
    _NAME_RE,
    _NAME_TEXT,
    _UNITS,
    PARITIES,
    T,
)

# ---- converters: a raw TOML value (or ledger cell) to a typed one -----------------------

class _Bad(Exception):
    """A value that does not fit; ``found`` overrides the shown value."""

    def __init__(self, found: str | None = None, hint: str = "",
                 expected: str | None = None) -> None:
        super().__init__(found)
        self.found = found
        self.hint = hint
        self.expected = expected


@dataclass(frozen=True, slots=True)
class _Conv(Generic[T]):
    expected: str
    fn: Callable[[object], T]


def _str_value(v: object) -> str:
    if not isinstance(v, str):
        raise _Bad()
    return v.strip()


def _name_conv(what: str = _NAME_TEXT) -> _Conv[str]:
    def fn(v: object) -> str:
        s = _str_value(v)
        if not _NAME_RE.match(s):
            raise _Bad()
        return s
    return _Conv(what, fn)


def _path_conv(what: str) -> _Conv[str]:
    """A non-empty path the kernel can take: no NUL byte, no over-long name."""
    def fn(v: object) -> str:
        s = _str_value(v)
        if not s:
            raise _Bad()
        problem = path_problem(s)
        if problem is not None:
            raise _Bad(found=f"{_show(s)} ({problem})")
        return s
    return _Conv(what, fn)


def _text_conv() -> _Conv[str]:
    return _Conv("a string", _str_value)


def _nonempty_conv(what: str) -> _Conv[str]:
    def fn(v: object) -> str:
        s = _str_value(v)
        if not s:
            raise _Bad()
        return s
    return _Conv(what, fn)


def _customer_conv() -> _Conv[str]:
    def fn(v: object) -> str:
        if not isinstance(v, str):
            # Customer numbers are personal data: say what it is, not what it says.
            kind = "a number" if isinstance(v, int | float) else f"a {type(v).__name__}"
            raise _Bad(found=f"{kind} (not shown)", hint='quote it: customer = "..."'
                       if isinstance(v, int | float) else "")
        return v.strip()
    return _Conv("a string", fn)


def _int_conv(lo: int, hi: int, unit: str = "") -> _Conv[int]:
    def fn(v: object) -> int:
        if isinstance(v, bool) or not isinstance(v, int) or not lo <= v <= hi:
            raise _Bad()
        return v
    return _Conv(f"an integer from {lo} to {hi}{unit}", fn)


def _choice_conv(values: Sequence[T]) -> _Conv[T]:
    def fn(v: object) -> T:
        for c in values:
            if isinstance(c, str):
                if isinstance(v, str) and v.strip() == c:
                    return c
            elif isinstance(v, int | float) and not isinstance(v, bool) and v == c:
                return c
        hint = _did_you_mean(v, [str(c) for c in values]) if isinstance(v, str) else ""
        raise _Bad(hint=hint)
    return _Conv(_one_of(values), fn)


def _parity_conv() -> _Conv[str]:
    def fn(v: object) -> str:
        if not isinstance(v, str) or v.strip().upper() not in PARITIES:
            raise _Bad()
        return PARITIES[v.strip().upper()]
    return _Conv('one of "N", "E", "O", "M", "S" (or "none", "even", "odd", ...)', fn)


def _ms_conv(lo: float, hi: float) -> _Conv[float]:
    def fn(v: object) -> float:
        if isinstance(v, bool) or not isinstance(v, int | float) or not lo <= v <= hi:
            raise _Bad()
        return float(v) / 1000.0
    return _Conv(f"milliseconds from {lo:g} to {hi:g}", fn)


def parse_duration(value: object) -> float:
    """Seconds from ``"15m"``, ``"1h30m"``, ``"30s"``, ``"500ms"``, ``"1d"`` or a number.

    ValueError for anything else (negative, not finite, no unit on a string).
    """
    if isinstance(value, bool):
        raise ValueError(f"{_show(value)} is not a duration")
    if isinstance(value, int | float):
        if not math.isfinite(value) or value < 0:
            raise ValueError(f"{_show(value)} is not a duration")
        return float(value)
    if not isinstance(value, str):
        raise ValueError(f"{_show(value)} is not a duration")
    text = value.strip().replace(" ", "")
    if not _DURATION_RE.match(text):
        raise ValueError(f"{_show(value)} is not a duration: expected {_DURATION_TEXT}")
    return sum(float(n) * _UNITS[u] for n, u in _DURATION_PART.findall(text))


def _seconds(s: float) -> str:
    return f"{s:g} s"


def _duration_conv(minimum: float = 0.0, *, above: bool = False,
                   maximum: float | None = None) -> _Conv[float]:
    bound = (f"greater than {_seconds(minimum)}" if above else
             f"at least {_seconds(minimum)}" if minimum else "")
    if maximum is not None:
        bound += (" and " if bound else "") + f"at most {_seconds(maximum)}"
    expected = _DURATION_TEXT + (f", {bound}" if bound else "")

    def fn(v: object) -> float:
        try:
            s = parse_duration(v)
        except ValueError:
            hint = ""
            if isinstance(v, str) and re.fullmatch(r"\s*\d+(\.\d+)?\s*", v):
                hint = f'add a unit: "{v.strip()}s", "{v.strip()}m", ...'
            elif isinstance(v, str) and _DURATION_RE.match(v.strip().lower().replace(" ", "")):
                hint = f"units are lower case: {_q(v.strip().lower())}"
            raise _Bad(hint=hint) from None
        if s < minimum or (above and s == minimum) or (maximum is not None and s > maximum):
            shown = _show(v) if isinstance(v, int | float) else f"{_show(v)} ({_seconds(s)})"
            raise _Bad(found=shown)
        return s
    return _Conv(expected, fn)


def _address_conv() -> _Conv[str]:
    def fn(v: object) -> str:
        if isinstance(v, int) and not isinstance(v, bool) and v >= 0:
            v = str(v)
        if not isinstance(v, str):
            raise _Bad()
        try:
            a = normalise_address(v)
        except ValueError:
            raise _Bad() from None
        if "A" in a:
            raise _Bad(hint="wildcards (A) are for finding meters, not for configured ones")
        if a == BROADCAST_ADDRESS:
            raise _Bad(hint="999999999999 is the broadcast address")
        return a
    return _Conv("a meter address of 1-12 decimal digits (left-padded to 12 with zeros)", fn)


def _unit_conv() -> _Conv[str]:
    def fn(v: object) -> str:
        if isinstance(v, str) and v.strip().isdigit():
            v = int(v.strip())
        if not isinstance(v, int) or isinstance(v, bool) or not 1 <= v <= 247:
            raise _Bad()
        return str(v)
    return _Conv("a Modbus unit id 1-247 (the address of a modbus meter)", fn)


def _mqtt_url_conv() -> _Conv[str]:
    def fn(v: object) -> str:
        if not isinstance(v, str):
            raise _Bad()
        m = re.fullmatch(r"(mqtts?)://(\[[^\]\x00-\x20]+\]|[^\s:/\x00-\x1f]+)(?::(\d{1,5}))?/?",
                         v.strip())
        if m is None or (m.group(3) and not 0 < int(m.group(3)) < 65536):
            raise _Bad()
        return v.strip()
    return _Conv("an MQTT broker URL: mqtt://HOST:PORT or mqtts://HOST:PORT", fn)


def _http_url_conv() -> _Conv[str]:
    def fn(v: object) -> str:
        if not isinstance(v, str) or re.fullmatch(r"https?://[^\s/\x00]+(/[^\s\x00]*)?",
                                                  v.strip()) is None:
            raise _Bad()
        return v.strip().rstrip("/")
    return _Conv("an http(s) URL of the time-series store, e.g. http://127.0.0.1:8428", fn)


def _topic_conv() -> _Conv[str]:
    def fn(v: object) -> str:
        if not isinstance(v, str) or not v or any(c in v for c in "#+ \x00") \
                or v.startswith("/") or v.endswith("/"):
            raise _Bad()
        if v.startswith("$"):
            # Topics starting with "$" ($SYS/...) are the broker's; gateways cannot use them.
            raise _Bad(hint='topics starting with "$" are reserved for the broker ($SYS)')
        return v
    return _Conv("an MQTT topic prefix without wildcards, spaces, outer slashes or a "
                 'leading "$"', fn)


def _toml_bool_conv() -> _Conv[bool]:
    def fn(v: object) -> bool:
        if not isinstance(v, bool):
            raise _Bad()
        return v
    return _Conv("true or false", fn)


_CSV_BOOLS = {"true": True, "yes": True, "1": True, "false": False, "no": False, "0": False}


def _csv_bool_conv() -> _Conv[bool]:
    def fn(v: object) -> bool:
        if not isinstance(v, str) or v.strip().lower() not in _CSV_BOOLS:
            raise _Bad()
        return _CSV_BOOLS[v.strip().lower()]
    return _Conv("true, false, yes, no, 1 or 0", fn)


def _zone_conv() -> _Conv[str]:
    def fn(v: object) -> str:
        name = _str_value(v)
        try:
            ZoneInfo(name)
        except (ZoneInfoNotFoundError, ValueError, OSError):  # OSError: a name too long
            raise _Bad() from None
        return name
    return _Conv('a time zone name such as "Asia/Shanghai"', fn)


def _money_conv(lo: Decimal = Decimal(0)) -> _Conv[Decimal]:
    def fn(v: object) -> Decimal:
        if isinstance(v, bool) or not isinstance(v, int | float | str):
            raise _Bad()
        try:
            d = Decimal(str(v).strip())
        except ArithmeticError:
            raise _Bad() from None
        if not d.is_finite() or d < lo:
            raise _Bad()
        return d
    return _Conv(f"an amount in yuan of at least {lo} (a number or a quoted decimal)", fn)


def _listen_conv() -> _Conv[str]:
    def fn(v: object) -> str:
        s = _str_value(v)
        host, sep, port = s.rpartition(":")
        if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
            raise _Bad()
        if host.startswith("[") != host.endswith("]") or (":" in host and
                                                          not host.startswith("[")):
            raise _Bad(hint='write IPv6 addresses in brackets: "[::1]:9108"')
        return s
    return _Conv('"HOST:PORT" (e.g. "127.0.0.1:9108", "0.0.0.0:9108", "[::1]:9108")', fn)


def _host_conv() -> _Conv[str]:
    def fn(v: object) -> str:
        s = _str_value(v)
        if not s or any(c.isspace() or not c.isprintable() for c in s) or "/" in s:
            raise _Bad()
        if s.count(":") == 1:
            raise _Bad(hint="put the port in port = ..., not in host")
        return s.strip("[]")
    return _Conv("a host name or IP address", fn)



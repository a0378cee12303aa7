"""Converters: a raw TOML value (or ledger cell) to a typed one, or why not."""

from __future__ import annotations

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

from .messages import did_you_mean as _did_you_mean
from .messages import quote as _q
from .problems import one_of, show_value
from .safefile import path_problem
from .schema import NAME_RE, NAME_TEXT, PARITIES, T
from .settings import DURATION_RE, DURATION_TEXT, parse_duration

__all__ = ["parse_duration"]  # kept here for collector.config's callers; stated in settings

# ---- converters: a raw TOML value (or ledger cell) to a typed one -----------------------

class BadValue(Exception):
    """A value that does not fit; ``found`` overrides the shown value."""

    def __init__(self, found: str | None = None, hint: str = "",
                 expected: str | None = None) -> None:
        super().__init__(found)
        self.found = found
        self.hint = hint
        self.expected = expected


@dataclass(frozen=True, slots=True)
class Conv(Generic[T]):
    expected: str
    fn: Callable[[object], T]


def _str_value(v: object) -> str:
    if not isinstance(v, str):
        raise BadValue()
    return v.strip()


def name_conv(what: str = NAME_TEXT) -> Conv[str]:
    def fn(v: object) -> str:
        s = _str_value(v)
        if not NAME_RE.match(s):
            raise BadValue()
        return s
    return Conv(what, fn)


def path_conv(what: str) -> Conv[str]:
    """A non-empty path the kernel can take: no NUL byte, no over-long name."""
    def fn(v: object) -> str:
        s = _str_value(v)
        if not s:
            raise BadValue()
        problem = path_problem(s)
        if problem is not None:
            raise BadValue(found=f"{show_value(s)} ({problem})")
        return s
    return Conv(what, fn)


def text_conv() -> Conv[str]:
    return Conv("a string", _str_value)


def nonempty_conv(what: str) -> Conv[str]:
    def fn(v: object) -> str:
        s = _str_value(v)
        if not s:
            raise BadValue()
        return s
    return Conv(what, fn)


def customer_conv() -> Conv[str]:
    def fn(v: object) -> str:
        if not isinstance(v, str):
            # Customer numbers are personal data: say what it is, not what it says.
            kind = "a number" if isinstance(v, int | float) else f"a {type(v).__name__}"
            raise BadValue(found=f"{kind} (not shown)", hint='quote it: customer = "..."'
                       if isinstance(v, int | float) else "")
        return v.strip()
    return Conv("a string", fn)


def phone_conv() -> Conv[str]:
    """A phone number (personal data: a refusal shows it with its last four digits
    hidden)."""
    def fn(v: object) -> str:
        if not isinstance(v, str):
            kind = "a number" if isinstance(v, int | float) else f"a {type(v).__name__}"
            raise BadValue(found=f"{kind} (not shown)", hint='quote it: phone = "..."'
                           if isinstance(v, int | float) else "")
        s = v.strip()
        if s and not re.fullmatch(r"\+?[0-9][0-9 \-]{4,19}", s):
            shown = s[:-4] + "****" if len(s) > 4 else "****"
            raise BadValue(found=_q(shown))
        return s
    return Conv('a phone number of digits (an optional leading "+")', fn)


def int_conv(lo: int, hi: int, unit: str = "") -> Conv[int]:
    def fn(v: object) -> int:
        if isinstance(v, bool) or not isinstance(v, int) or not lo <= v <= hi:
            raise BadValue()
        return v
    return Conv(f"an integer from {lo} to {hi}{unit}", fn)


def choice_conv(values: Sequence[T]) -> Conv[T]:
    def fn(v: object) -> T:
        for c in values:
            if isinstance(c, str):
                if isinstance(v, str) and v.strip() == c:
                    return c
            elif isinstance(v, int | float) and not isinstance(v, bool) and v == c:
                return c
        hint = _did_you_mean(v, [str(c) for c in values]) if isinstance(v, str) else ""
        raise BadValue(hint=hint)
    return Conv(one_of(values), fn)


def parity_conv() -> Conv[str]:
    def fn(v: object) -> str:
        if not isinstance(v, str) or v.strip().upper() not in PARITIES:
            raise BadValue()
        return PARITIES[v.strip().upper()]
    return Conv('one of "N", "E", "O", "M", "S" (or "none", "even", "odd", ...)', fn)


def ms_conv(lo: float, hi: float) -> Conv[float]:
    def fn(v: object) -> float:
        if isinstance(v, bool) or not isinstance(v, int | float) or not lo <= v <= hi:
            raise BadValue()
        return float(v) / 1000.0
    return Conv(f"milliseconds from {lo:g} to {hi:g}", fn)


def to_seconds(s: float) -> str:
    return f"{s:g} s"


def duration_conv(minimum: float = 0.0, *, above: bool = False,
                   maximum: float | None = None) -> Conv[float]:
    bound = (f"greater than {to_seconds(minimum)}" if above else
             f"at least {to_seconds(minimum)}" if minimum else "")
    if maximum is not None:
        bound += (" and " if bound else "") + f"at most {to_seconds(maximum)}"
    expected = DURATION_TEXT + (f", {bound}" if bound else "")

    def fn(v: object) -> float:
        try:
            s = parse_duration(v)
        except ValueError:
            hint = ""
            if isinstance(v, str) and re.fullmatch(r"\s*\d+(\.\d+)?\s*", v):
                hint = f'add a unit: "{v.strip()}s", "{v.strip()}m", ...'
            elif isinstance(v, str) and DURATION_RE.match(v.strip().lower().replace(" ", "")):
                hint = f"units are lower case: {_q(v.strip().lower())}"
            raise BadValue(hint=hint) from None
        if s < minimum or (above and s == minimum) or (maximum is not None and s > maximum):
            shown = (show_value(v) if isinstance(v, int | float)
                     else f"{show_value(v)} ({to_seconds(s)})")
            raise BadValue(found=shown)
        return s
    return Conv(expected, fn)


def address_conv() -> Conv[str]:
    def fn(v: object) -> str:
        if isinstance(v, int) and not isinstance(v, bool) and v >= 0:
            v = str(v)
        if not isinstance(v, str):
            raise BadValue()
        try:
            a = normalise_address(v)
        except ValueError:
            raise BadValue() from None
        if "A" in a:
            raise BadValue(hint="wildcards (A) are for finding meters, not for configured ones")
        if a == BROADCAST_ADDRESS:
            raise BadValue(hint="999999999999 is the broadcast address")
        return a
    return Conv("a meter address of 1-12 decimal digits (left-padded to 12 with zeros)", fn)


def unit_conv() -> Conv[str]:
    def fn(v: object) -> str:
        if isinstance(v, str) and v.strip().isdigit():
            v = int(v.strip())
        if not isinstance(v, int) or isinstance(v, bool) or not 1 <= v <= 247:
            raise BadValue()
        return str(v)
    return Conv("a Modbus unit id 1-247 (the address of a modbus meter)", fn)


def mqtt_url_conv() -> Conv[str]:
    def fn(v: object) -> str:
        if not isinstance(v, str):
            raise BadValue()
        m = re.fullmatch(r"(mqtts?)://(\[[^\]\x00-\x20]+\]|[^\s:/\x00-\x1f]+)(?::(\d{1,5}))?/?",
                         v.strip())
        if m is None or (m.group(3) and not 0 < int(m.group(3)) < 65536):
            raise BadValue()
        return v.strip()
    return Conv("an MQTT broker URL: mqtt://HOST:PORT or mqtts://HOST:PORT", fn)


def http_url_conv() -> Conv[str]:
    def fn(v: object) -> str:
        if not isinstance(v, str) or re.fullmatch(r"https?://[^\s/\x00]+(/[^\s\x00]*)?",
                                                  v.strip()) is None:
            raise BadValue()
        return v.strip().rstrip("/")
    return Conv("an http(s) URL of the time-series store, e.g. http://127.0.0.1:8428", fn)


def topic_conv() -> Conv[str]:
    def fn(v: object) -> str:
        if not isinstance(v, str) or not v or any(c in v for c in "#+ \x00") \
                or v.startswith("/") or v.endswith("/"):
            raise BadValue()
        if v.startswith("$"):
            # Topics starting with "$" ($SYS/...) are the broker's; gateways cannot use them.
            raise BadValue(hint='topics starting with "$" are reserved for the broker ($SYS)')
        return v
    return Conv("an MQTT topic prefix without wildcards, spaces, outer slashes or a "
                 'leading "$"', fn)


def toml_bool_conv() -> Conv[bool]:
    def fn(v: object) -> bool:
        if not isinstance(v, bool):
            raise BadValue()
        return v
    return Conv("true or false", fn)


_CSV_BOOLS = {"true": True, "yes": True, "1": True, "false": False, "no": False, "0": False}


def csv_bool_conv() -> Conv[bool]:
    def fn(v: object) -> bool:
        if not isinstance(v, str) or v.strip().lower() not in _CSV_BOOLS:
            raise BadValue()
        return _CSV_BOOLS[v.strip().lower()]
    return Conv("true, false, yes, no, 1 or 0", fn)


def zone_conv() -> Conv[str]:
    def fn(v: object) -> str:
        name = _str_value(v)
        try:
            ZoneInfo(name)
        except (ZoneInfoNotFoundError, ValueError, OSError):  # OSError: a name too long
            raise BadValue() from None
        return name
    return Conv('a time zone name such as "Asia/Shanghai"', fn)


def money_conv(lo: Decimal = Decimal(0)) -> Conv[Decimal]:
    def fn(v: object) -> Decimal:
        if isinstance(v, bool) or not isinstance(v, int | float | str):
            raise BadValue()
        try:
            d = Decimal(str(v).strip())
        except ArithmeticError:
            raise BadValue() from None
        if not d.is_finite() or d < lo:
            raise BadValue()
        return d
    return Conv(f"an amount in yuan of at least {lo} (a number or a quoted decimal)", fn)


def listen_conv() -> Conv[str]:
    def fn(v: object) -> str:
        s = _str_value(v)
        host, sep, port = s.rpartition(":")
        if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
            raise BadValue()
        if host.startswith("[") != host.endswith("]") or (":" in host and
                                                          not host.startswith("[")):
            raise BadValue(hint='write IPv6 addresses in brackets: "[::1]:9108"')
        return s
    return Conv('"HOST:PORT" (e.g. "127.0.0.1:9108", "0.0.0.0:9108", "[::1]:9108")', fn)


def host_conv() -> Conv[str]:
    def fn(v: object) -> str:
        s = _str_value(v)
        if not s or any(c.isspace() or not c.isprintable() for c in s) or "/" in s:
            raise BadValue()
        if s.count(":") == 1:
            raise BadValue(hint="put the port in port = ..., not in host")
        return s.strip("[]")
    return Conv("a host name or IP address", fn)



"""Parse and validate a Modbus device profile from TOML text or an already parsed dict.

Sans-I/O: this module never opens files; ``collector.config.profiles`` reads them and hands the
text over.  Every problem found is collected, so one :class:`ProfileError` lists them all,
each naming the profile, the register (numbered from 1 in file order) and its quantity,
the key, and what was expected against what the file holds.

The file format is documented in ``config/profiles/README.md``.
"""

from __future__ import annotations

import difflib
import tomllib
from collections.abc import Mapping
from decimal import Decimal, InvalidOperation
from typing import Any, Literal, NamedTuple, cast

from protocols.quantities import QUANTITIES, Kind

from ._profile import (
    CURVE_SOURCES,
    WORDS,
    Function,
    Profile,
    Register,
    RegisterType,
    RelayControl,
    Unmapped,
    WordOrder,
)

__all__ = ["MAX_READ_REGISTERS", "ProfileError", "parse_profile", "profile_from_dict"]

# Modbus application protocol: at most 125 registers per read (03/04) request.
MAX_READ_REGISTERS = 125

_TOP_KEYS = ("profile", "register", "unmapped", "relay")
_PROFILE_KEYS = ("manufacturer", "model", "manual", "max_registers", "max_gap", "curve")
_REGISTER_KEYS = ("name", "function", "address", "type", "word_order", "scale", "unit",
                  "public", "note")
_UNMAPPED_KEYS = ("function", "address", "words", "writable", "low", "high", "public", "note")
_RELAY_KEYS = ("kind", "address", "trip", "close", "readback_function", "readback_address",
               "readback_bit", "open_when", "public", "note")
_REGISTER_KINDS = (Kind.NUMBER, Kind.COUNT, Kind.STATUS)
_MISSING = object()


class ProfileError(ValueError):
    """A profile that cannot be used; ``problems`` lists every problem, each a full sentence.

    ``source`` is the file name (or the profile name when parsed from a dict).  ``str()`` is
    the problem itself when there is one, else a count line followed by one line each.
    """

    def __init__(self, source: str, problems: list[str]) -> None:
        self.source = source
        self.problems = list(problems)
        count = len(self.problems)
        if count == 1:
            super().__init__(self.problems[0])
        else:
            head = f"profile {source}: {count} problems"
            super().__init__("\n  ".join([head, *self.problems]))


def parse_profile(text: str | bytes, *, name: str, source: str | None = None) -> Profile:
    """A validated :class:`Profile` from TOML ``text``.

    ``name`` becomes ``Profile.name`` (by convention the file stem); ``source`` (default
    ``name``) is how messages refer to the profile, e.g. the file path.
    """
    src = source if source is not None else name
    if isinstance(text, bytes):
        try:
            text = text.decode("utf-8")
        except UnicodeDecodeError as e:
            raise ProfileError(src, [f"{src}: not UTF-8 text (byte {e.start})"]) from None
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as e:
        raise ProfileError(src, [f"{src}: TOML syntax: {e}"]) from None
    return profile_from_dict(data, name=name, source=src)


def profile_from_dict(data: Mapping[str, Any], *, name: str,
                      source: str | None = None) -> Profile:
    """A validated :class:`Profile` from a parsed TOML document (see :func:`parse_profile`)."""
    checker = _Checker(source if source is not None else name)
    profile = checker.profile(data, name)
    if checker.problems:
        raise ProfileError(checker.source, checker.problems)
    assert profile is not None
    return profile


def _did_you_mean(word: str, choices: tuple[str, ...] | list[str]) -> str:
    close = difflib.get_close_matches(word, choices, n=1, cutoff=0.6)
    return f" (did you mean {close[0]!r}?)" if close else ""


def _got(value: object) -> str:
    if isinstance(value, dict):
        return "a table"
    if isinstance(value, list):
        return "an array"
    return repr(value)


class _Checker:
    """Collects problems while converting the parsed document into dataclasses."""

    def __init__(self, source: str) -> None:
        self.source = source
        self.problems: list[str] = []

    def problem(self, where: str, text: str) -> None:
        self.problems.append(f"{self.source}: {where}: {text}" if where else
                             f"{self.source}: {text}")

    # -- generic keys -------------------------------------------------------------

    def unknown_keys(self, where: str, table: Mapping[str, Any],
                     allowed: tuple[str, ...]) -> None:
        for key in table:
            if key not in allowed:
                self.problem(where, f"unknown key {key!r}{_did_you_mean(key, allowed)}; "
                                    f"expected one of {', '.join(allowed)}")

    def get(self, where: str, table: Mapping[str, Any], key: str, *,
            required: bool, hint: str = "") -> Any:
        value = table.get(key, _MISSING)
        if value is _MISSING and required:
            self.problem(where, f"key {key!r} missing{hint}")
        return value

    def string(self, where: str, table: Mapping[str, Any], key: str, *,
               required: bool, hint: str = "", default: str = "") -> str | None:
        value = self.get(where, table, key, required=required, hint=hint)
        if value is _MISSING:
            return None if required else default
        if not isinstance(value, str):
            self.problem(where, f"key {key!r}: expected a string, got {_got(value)}")
            return None
        return value

    def integer(self, where: str, table: Mapping[str, Any], key: str, *, required: bool,
                low: int, high: int, default: int | None = None,
                hex_ok: bool = False) -> int | None:
        value = self.get(where, table, key, required=required)
        if value is _MISSING:
            return default
        number: int | None = None
        if isinstance(value, int) and not isinstance(value, bool):
            number = value
        elif hex_ok and isinstance(value, str):
            text = value.strip().replace("_", "")
            try:
                if text.lower().startswith("0x"):
                    number = int(text[2:], 16)
                elif text.isdigit():
                    number = int(text)
            except ValueError:
                number = None
        if number is None:
            what = "an integer or a '0x...' hex string" if hex_ok else "an integer"
            self.problem(where, f"key {key!r}: expected {what}, got {_got(value)}")
            return None
        if not low <= number <= high:
            self.problem(where, f"key {key!r}: expected {low}..{high}, got {_got(value)}")
            return None
        return number

    def choice(self, where: str, table: Mapping[str, Any], key: str, choices: tuple[Any, ...],
               *, required: bool, default: Any = None) -> Any:
        value = self.get(where, table, key, required=required)
        if value is _MISSING:
            return default
        if isinstance(value, bool) or value not in choices:
            listed = ", ".join(str(c) for c in choices)
            extra = _did_you_mean(value, [str(c) for c in choices]) if isinstance(value, str) \
                else ""
            self.problem(where, f"key {key!r}: expected one of {listed}, got {_got(value)}{extra}")
            return None
        return value

    def boolean(self, where: str, table: Mapping[str, Any], key: str, default: bool) -> bool:
        value = self.get(where, table, key, required=False)
        if value is _MISSING:
            return default
        if not isinstance(value, bool):
            self.problem(where, f"key {key!r}: expected true or false, got {_got(value)}")
            return default
        return value

    def table(self, where: str, value: Any) -> Mapping[str, Any] | None:
        if not isinstance(value, Mapping):
            self.problem(where, f"expected a table, got {_got(value)}")
            return None
        return value

    # -- the document -------------------------------------------------------------

    def profile(self, data: Mapping[str, Any], name: str) -> Profile | None:
        self.unknown_keys("", data, _TOP_KEYS)
        head = self.get("", data, "profile", required=True, hint=" (the [profile] table)")
        meta = self.table("[profile]", head) if head is not _MISSING else None
        manufacturer = model = manual = None
        max_registers: int | None = MAX_READ_REGISTERS
        max_gap: int | None = 0
        curve: str | None = "none"
        if meta is not None:
            self.unknown_keys("[profile]", meta, _PROFILE_KEYS)
            manufacturer = self.string("[profile]", meta, "manufacturer", required=True)
            model = self.string("[profile]", meta, "model", required=True)
            manual = self.string("[profile]", meta, "manual", required=True,
                                 hint=" (which public manual the register map comes from)")
            max_registers = self.integer("[profile]", meta, "max_registers", required=False,
                                         low=1, high=MAX_READ_REGISTERS,
                                         default=MAX_READ_REGISTERS)
            max_gap = self.integer("[profile]", meta, "max_gap", required=False, low=0,
                                   high=MAX_READ_REGISTERS - 1, default=0)
            curve = self.choice("[profile]", meta, "curve", CURVE_SOURCES, required=False,
                                default="none")

        raw_registers = data.get("register", [])
        registers: list[Register] = []
        if not isinstance(raw_registers, list):
            self.problem("", f"key 'register': expected [[register]] tables, got "
                             f"{_got(raw_registers)}")
            raw_registers = []
        elif not raw_registers:
            self.problem("", "no [[register]] tables")
        seen: dict[str, int] = {}
        spans: list[_Span] = []
        for index, item in enumerate(raw_registers, start=1):
            reg = self.register(index, item, seen, max_registers, spans)
            if reg is not None:
                registers.append(reg)
        raw_unmapped = data.get("unmapped", [])
        unmapped: list[Unmapped] = []
        if not isinstance(raw_unmapped, list):
            self.problem("", f"key 'unmapped': expected [[unmapped]] tables, got "
                             f"{_got(raw_unmapped)}")
            raw_unmapped = []
        for index, item in enumerate(raw_unmapped, start=1):
            extra = self.unmapped(index, item, spans)
            if extra is not None:
                unmapped.append(extra)
        self.overlaps(spans)

        relay: RelayControl | None = None
        if "relay" in data:
            relay = self.relay(data["relay"])

        if None in (manufacturer, model, manual, max_registers, max_gap, curve) \
                or self.problems:
            return None
        return Profile(name=name, manufacturer=cast(str, manufacturer), model=cast(str, model),
                       manual=cast(str, manual), registers=tuple(registers), relay=relay,
                       max_registers=cast(int, max_registers), max_gap=cast(int, max_gap),
                       unmapped=tuple(unmapped), curve=cast(str, curve))

    def register(self, index: int, item: Any, seen: dict[str, int],
                 max_registers: int | None, spans: list[_Span]) -> Register | None:
        label = f"register {index}"
        qname = item.get("name") if isinstance(item, Mapping) else None
        where = f"{label} ({qname})" if isinstance(qname, str) else label
        table = self.table(where, item)
        if table is None:
            return None
        self.unknown_keys(where, table, _REGISTER_KEYS)
        ok = True

        name = self.string(where, table, "name", required=True, hint=" (a quantity name)")
        quantity = None
        if name is not None:
            quantity = QUANTITIES.get(name)
            if quantity is None:
                self.problem(where, f"key 'name': unknown quantity {name!r}"
                                    f"{_did_you_mean(name, list(QUANTITIES))}")
                ok = False
            elif quantity.kind not in _REGISTER_KINDS:
                self.problem(where, f"key 'name': quantity {name!r} is a {quantity.kind.value}; "
                                    "a register carries only number, count or status quantities")
                ok = False
            elif name in seen:
                self.problem(where, f"key 'name': duplicate quantity {name!r}, already mapped "
                                    f"by register {seen[name]}")
                ok = False
            else:
                seen[name] = index
        else:
            ok = False

        function = self.choice(where, table, "function", (3, 4), required=True)
        rtype = self.choice(where, table, "type", tuple(WORDS), required=True)
        address = self.integer(where, table, "address", required=True, low=0, high=0xFFFF,
                               hex_ok=True)
        if address is not None and rtype is not None and address + WORDS[rtype] > 0x10000:
            self.problem(where, f"key 'address': a {rtype} at {address} ends past 65535")
            ok = False
        elif address is not None and rtype is not None and function is not None:
            span_label = f"{index} ({qname})" if isinstance(qname, str) else f"{index}"
            spans.append(_Span(index, span_label, function, address, address + WORDS[rtype]))
        if rtype is not None and max_registers is not None and WORDS[rtype] > max_registers:
            self.problem(where, f"key 'type': a {rtype} needs {WORDS[rtype]} registers, more "
                                f"than max_registers = {max_registers}")
            ok = False
        word_order = self.choice(where, table, "word_order", ("big", "little"), required=False,
                                 default="big")
        scale = self.scale(where, table)

        expected_unit = quantity.unit if quantity is not None else None
        hint = (f" (the vocabulary's unit for {name} is {expected_unit!r})"
                if expected_unit is not None else "")
        unit = self.string(where, table, "unit", required=True, hint=hint)
        if unit is not None and expected_unit is not None and unit != expected_unit:
            self.problem(where, f"key 'unit': expected {expected_unit!r} (the vocabulary's unit "
                                f"for {name}), got {unit!r}")
            ok = False
        public = self.boolean(where, table, "public", True)
        note = self.string(where, table, "note", required=False)
        if not public and not (note or "").strip():
            self.problem(where, "key 'note': public = false needs a note saying where the "
                                "address comes from")
            ok = False

        if not ok or None in (name, function, rtype, address, word_order, scale, unit, note):
            return None
        return Register(name=cast(str, name), function=cast(Function, function),
                        address=cast(int, address), type=cast(RegisterType, rtype),
                        unit=cast(str, unit), scale=cast(Decimal, scale),
                        word_order=cast(WordOrder, word_order), public=public,
                        note=cast(str, note))

    def unmapped(self, index: int, item: Any, spans: list[_Span]) -> Unmapped | None:
        """A ``[[unmapped]]`` table: a listed register that carries no quantity."""
        where = f"unmapped {index}"
        table = self.table(where, item)
        if table is None:
            return None
        self.unknown_keys(where, table, _UNMAPPED_KEYS)
        function = self.choice(where, table, "function", (3, 4), required=True)
        address = self.integer(where, table, "address", required=True, low=0, high=0xFFFF,
                               hex_ok=True)
        words = self.integer(where, table, "words", required=False, low=1, high=4, default=1)
        writable = self.boolean(where, table, "writable", False)
        low = self.integer(where, table, "low", required=False, low=0, high=0xFFFF, default=0)
        high = self.integer(where, table, "high", required=False, low=0, high=0xFFFF,
                            default=0xFFFF)
        if low is not None and high is not None and low > high:
            self.problem(where, f"keys 'low' and 'high': low {low} is above high {high}")
            return None
        if not writable and ("low" in table or "high" in table):
            self.problem(where, "keys 'low'/'high' are the values a write may set: only for "
                                "writable = true")
        public = self.boolean(where, table, "public", True)
        note = self.string(where, table, "note", required=True,
                           hint=" (what the manual lists at this address)")
        if note is not None and not note.strip():
            self.problem(where, "key 'note': empty; say what the manual lists at this address")
            return None
        if None in (function, address, words, low, high, note):
            return None
        start, count = cast(int, address), cast(int, words)
        if start + count > 0x10000:
            self.problem(where, f"key 'address': {count} word(s) at {start} end past 65535")
            return None
        # numbered after the registers, so an overlap names the register first
        spans.append(_Span(100_000 + index, f"unmapped {index}", cast(int, function), start,
                           start + count))
        return Unmapped(function=cast(Function, function), address=start, words=count,
                        writable=writable, low=cast(int, low), high=cast(int, high),
                        public=public, note=cast(str, note))

    def scale(self, where: str, table: Mapping[str, Any]) -> Decimal | None:
        value = self.get(where, table, "scale", required=False)
        if value is _MISSING:
            return Decimal(1)
        result: Decimal | None = None
        if isinstance(value, bool):
            result = None
        elif isinstance(value, int | float):
            result = Decimal(str(value))  # str(): 0.1 stays 0.1, not its binary expansion
        elif isinstance(value, str):
            try:
                result = Decimal(value.strip())
            except InvalidOperation:
                result = None
        if result is None or not result.is_finite():
            self.problem(where, f"key 'scale': expected a decimal number (e.g. \"0.01\"), "
                                f"got {_got(value)}")
            return None
        if result == 0:
            self.problem(where, f"key 'scale': must not be 0, got {_got(value)}")
            return None
        return result

    def overlaps(self, spans: list[_Span]) -> None:
        ordered = sorted(spans, key=lambda sp: (sp.function, sp.address))
        for i, a in enumerate(ordered):
            for b in ordered[i + 1:]:
                if b.function != a.function or b.address >= a.end:
                    break
                first, second = sorted((a, b), key=lambda sp: sp.number)
                self.problem(f"registers {first.label} and {second.label}",
                             f"overlap on function {a.function}: {first.span} and "
                             f"{second.span}")

    def relay(self, item: Any) -> RelayControl | None:
        where = "[relay]"
        table = self.table(where, item)
        if table is None:
            return None
        self.unknown_keys(where, table, _RELAY_KEYS)
        kind = self.choice(where, table, "kind", ("coil", "register"), required=True)
        address = self.integer(where, table, "address", required=True, low=0, high=0xFFFF,
                               hex_ok=True)
        high = 1 if kind == "coil" else 0xFFFF
        trip = self.integer(where, table, "trip", required=True, low=0, high=high)
        close = self.integer(where, table, "close", required=True, low=0, high=high)
        if trip is not None and close is not None and trip == close:
            self.problem(where, f"keys 'trip' and 'close': must differ, both are {trip}")
        rb_function = self.choice(where, table, "readback_function", (3, 4), required=False)
        rb_address = self.integer(where, table, "readback_address", required=False, low=0,
                                  high=0xFFFF, hex_ok=True)
        if ("readback_function" in table) != ("readback_address" in table):
            have, lack = (("readback_function", "readback_address")
                          if "readback_function" in table
                          else ("readback_address", "readback_function"))
            self.problem(where, f"key {lack!r} missing: {have} is set")
        rb_bit = self.integer(where, table, "readback_bit", required=False, low=0, high=15,
                              default=0)
        open_when = self.integer(where, table, "open_when", required=False, low=0, high=1,
                                 default=1)
        public = self.boolean(where, table, "public", True)
        note = self.string(where, table, "note", required=False)
        if not public and not (note or "").strip():
            self.problem(where, "key 'note': public = false needs a note saying where the "
                                "address comes from")
        if None in (kind, address, trip, close, rb_bit, open_when, note):
            return None
        return RelayControl(kind=cast(Literal["coil", "register"], kind),
                            address=cast(int, address), trip=cast(int, trip),
                            close=cast(int, close),
                            readback_function=cast(Function | None, rb_function),
                            readback_address=rb_address, readback_bit=cast(int, rb_bit),
                            open_when=cast(int, open_when), public=public, note=cast(str, note))


class _Span(NamedTuple):
    """Where a register sits, kept even when its quantity name is wrong."""

    number: int  # the register's number in the file, from 1
    label: str  # "3 (voltage_a)"
    function: int
    address: int
    end: int

    @property
    def span(self) -> str:
        last = self.end - 1
        return f"{self.address}" if last == self.address else f"{self.address}..{last}"

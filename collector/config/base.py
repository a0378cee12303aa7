"""The loader's core: recording problems, reading the TOML, converting keys."""

from __future__ import annotations

import re
import tomllib
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, cast

from .convert import BadValue, Conv
from .fields import Table, conv_of, default_of, key_of
from .messages import did_you_mean as _did_you_mean
from .problems import Lines, Problem, show_value
from .safefile import FileRefused, read_regular
from .schema import MAX_CONFIG_BYTES, T


class LoaderBase:
    """State and helpers every part of the loader uses."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.file = str(path)
        self.base = path.absolute().parent
        self.problems: list[Problem] = []
        self.lines = Lines("")
        self.ledger_failed = False  # no meters from it: its problems say why
        self.concentrator_names: set[str] = set()  # buses whose meters need a pn

    # -- recording problems

    def add(self, table: str, key: str | None, expected: str, found: str, *,
            name: str | None = None, meter: str | None = None, hint: str = "",
            file: str | None = None, line: int | None = None,
            column: int | None = None) -> None:
        if file is None:
            file = self.file
            if line is None:
                line = self.lines.of(table, key)
        self.problems.append(Problem(file, line, table, key, expected, found, meter, name,
                                     hint, column))

    def convert(self, table: str, key: str, value: object, conv: Conv[T], *,
                name: str | None = None, meter: str | None = None, file: str | None = None,
                line: int | None = None) -> T | None:
        try:
            return conv.fn(value)
        except BadValue as bad:
            self.add(table, key, bad.expected or conv.expected,
                     bad.found if bad.found is not None else show_value(value), name=name,
                     meter=meter, hint=bad.hint, file=file, line=line)
            return None

    def unknown_keys(self, table: str, data: Mapping[str, object], allowed: Sequence[str],
                     *, name: str | None = None, meter: str | None = None,
                     elsewhere: Mapping[str, str] | None = None) -> None:
        for key in data:
            if key in allowed:
                continue
            hint = (elsewhere or {}).get(key) or _did_you_mean(key, allowed)
            self.add(table, key, "one of the keys " + ", ".join(allowed), "an unknown key",
                     name=name, meter=meter, hint=hint)

    def sorted_problems(self) -> list[Problem]:
        """The config file's first, then the ledger's; each in line order."""
        ranked = sorted(enumerate(self.problems), key=lambda ip: (
            ip[1].file != self.file, ip[1].file, ip[1].line or 0, ip[0]))
        return [p for _, p in ranked]

    def read_toml(self) -> dict[str, object] | None:
        try:
            raw = read_regular(self.path, MAX_CONFIG_BYTES)
        except FileRefused as e:
            self.add("", None, "a readable TOML file", str(e), line=None)
            return None
        try:
            text = raw.decode("utf-8")
        except UnicodeDecodeError as e:
            self.add("", None, "UTF-8 text", f"the byte 0x{raw[e.start]:02x}",
                     line=raw[: e.start].count(b"\n") + 1,
                     hint="save the file as UTF-8")
            return None
        self.lines = Lines(text)
        try:
            return cast(dict[str, object], tomllib.loads(text))
        except tomllib.TOMLDecodeError as e:
            message = str(e)
            line: int | None = None
            column: int | None = None
            m = re.search(r"\s*\(at line (\d+), column (\d+)\)$", message)
            if m:
                line, column = int(m.group(1)), int(m.group(2))
                message = message[: m.start()]
            elif message.endswith("(at end of document)"):
                line = max(1, len(text.splitlines()))
                message = message.removesuffix("(at end of document)").strip() + \
                    " at the end of the file"
            self.add("", None, "valid TOML", f"a syntax error: {message}", line=line,
                     column=column)
            return None

    def table(self, table: str, key: str | None, value: object,
              what: str) -> dict[str, object] | None:
        if isinstance(value, dict):
            return cast(dict[str, object], value)
        self.add(table, key, what,
                 "an array of tables" if isinstance(value, list) else show_value(value))
        return None

    def array_of_tables(self, key: str, value: object, what: str) -> list[object]:
        if value is None:
            return []
        if isinstance(value, list):
            return list(value)
        self.add("", key, what, "a table" if isinstance(value, dict) else show_value(value),
                 hint=f"write [[{key}]], with double brackets, once for each {key}")
        return []

    def relative(self, text: str) -> Path:
        p = Path(text).expanduser()
        return p if p.is_absolute() else self.base / p

    def required(self, table: str, data: Mapping[str, object], key: str, conv: Conv[T], *,
                 name: str | None = None, why: str = "") -> T | None:
        if key not in data:
            self.add(table, key, conv.expected + why, "nothing", name=name)
            return None
        return self.convert(table, key, data[key], conv, name=name)

    def optional(self, table: str, data: Mapping[str, object], key: str, conv: Conv[T],
                 default: T | None, *, name: str | None = None) -> T | None:
        if key not in data:
            return default
        return self.convert(table, key, data[key], conv, name=name)

    def req(self, table: str, data: Mapping[str, object], model: type[Table], field: str,
            *, name: str | None = None, why: str = "") -> Any:
        """The key of ``model.field``, read with the converter its field info gives."""
        return self.required(table, data, key_of(model, field), conv_of(model, field),
                             name=name, why=why)

    def opt(self, table: str, data: Mapping[str, object], model: type[Table], field: str,
            *, name: str | None = None) -> Any:
        """The key of ``model.field`` if given, else the model's default."""
        return self.optional(table, data, key_of(model, field), conv_of(model, field),
                             default_of(model, field), name=name)

    def strings(self, t: str, data: Mapping[str, object], key: str,
                what: str) -> list[str] | None:
        value = data[key]
        if not isinstance(value, list) or not value \
                or not all(isinstance(v, str) for v in value):
            self.add(t, key, what, show_value(value))
            return None
        return [cast(str, v).strip() for v in value]


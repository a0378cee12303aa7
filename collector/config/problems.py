"""What is wrong with a configuration, and where in the file it is."""

from __future__ import annotations

import math
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from .messages import quote as _q

# ---- problems ---------------------------------------------------------------------------

@dataclass(frozen=True, slots=True)
class Problem:
    """One thing wrong with the configuration, with where to find it.

    ``table``: ``""`` (the file), ``"collector"``, ``"bus[1]"`` (0-based), ``"meter[0]"``,
    ``"meters"``, ``"ledger"`` (its header), ``"ledger[4]"`` (the 5th data row),
    ``"schedule"`` or ``"schedule.fast"``.  ``name``: the bus or schedule name of that
    table, when known.  ``key``: the TOML key or ledger column.  ``meter``: the meter id
    concerned.  ``hint``: a suggestion ("did you mean ...").
    """

    file: str
    line: int | None
    table: str
    key: str | None
    expected: str
    found: str
    meter: str | None = None
    name: str | None = None
    hint: str = ""
    column: int | None = None

    @property
    def where(self) -> str:
        """The table as a person finds it in the file: ``[[bus]] #2 (name "rs485-a")``."""
        t = self.table
        m = re.fullmatch(r"(bus|meter|ledger|gateway|listener|concentrator|dtu|"
                         r"notify_webhook|notify_email|notify_sms)\[(\d+)\]", t)
        if m:
            kind, n = m.group(1), int(m.group(2)) + 1
            if kind not in ("meter", "ledger"):
                return f"[[{kind}]] #{n}" + (f" (name {_q(self.name)})" if self.name else "")
            head = f"[[meter]] #{n}" if kind == "meter" else f"row {n}"
            return head + (f" (meter_id {_q(self.meter)})" if self.meter else "")
        if t == "ledger":
            return "header"
        return f"[{t}]" if t else ""

    def __str__(self) -> str:
        loc = self.file
        if self.line is not None:
            loc += f":{self.line}"
            if self.column is not None:
                loc += f":{self.column}"
        parts = [loc]
        if self.where:
            parts.append(self.where)
        if self.key is not None:
            word = "column" if self.table.startswith("ledger") else "key"
            parts.append(f"{word} {_q(self.key)}")
        if self.meter and not re.fullmatch(r"(meter|ledger)\[\d+\]", self.table):
            parts.append(f"meter {_q(self.meter)}")
        text = ": ".join(parts) + f": expected {self.expected}, got {self.found}"
        return text + (f"; {self.hint}" if self.hint else "")


class ConfigError(Exception):
    """The configuration is not usable; ``problems`` lists everything wrong with it."""

    def __init__(self, problems: Sequence[Problem]) -> None:
        self.problems: list[Problem] = list(problems)
        super().__init__("\n".join(str(p) for p in self.problems))


def show_value(value: object) -> str:
    """A value as it would be written in TOML (shortened)."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str):
        text = _q(value)
        return text if len(text) <= 60 else text[:56] + '..."'
    if isinstance(value, int | float):
        return repr(value) if isinstance(value, int) or math.isfinite(value) else str(value)
    if isinstance(value, list):
        inner = ", ".join(show_value(v) for v in value[:8])
        return f"[{inner}{', ...' if len(value) > 8 else ''}]"
    if isinstance(value, dict):
        return "a table"
    return type(value).__name__


def one_of(values: Iterable[object]) -> str:
    return "one of " + ", ".join(show_value(v) for v in values)



# ---- where keys are in the file ---------------------------------------------------------

_HEADER_RE = re.compile(r"^\s*(\[\[?)([^\[\]]+)\]\]?\s*(?:#.*)?$")
_KEY_RE = re.compile(r"""^\s*("[^"]*"|'[^']*'|[A-Za-z0-9_\-]+)\s*(?:\.|=)""")
_PART_RE = re.compile(r""""([^"]*)"|'([^']*)'|([^.\s"']+)""")


class Lines:
    """Line numbers of tables and keys, found by a simple scan of the TOML text.

    Best effort (no full parse): enough to point at ``[[bus]]`` #2's ``baud``.
    """

    def __init__(self, text: str) -> None:
        self.tables: dict[str, int] = {}
        self.keys: dict[tuple[str, str], int] = {}
        counts: dict[str, int] = {}
        table = ""
        in_string = False
        for n, line in enumerate(text.splitlines(), start=1):
            quotes = line.count('"""') + line.count("'''")
            if in_string:
                in_string = quotes % 2 == 0
                continue
            if quotes % 2:
                in_string = True
            m = _HEADER_RE.match(line)
            if m:
                path = ".".join(a or b or c for a, b, c in _PART_RE.findall(m.group(2)))
                if m.group(1) == "[[":
                    i = counts.get(path, 0)
                    counts[path] = i + 1
                    table = f"{path}[{i}]"
                else:
                    table = path
                self.tables.setdefault(table, n)
                continue
            k = _KEY_RE.match(line)
            if k:
                self.keys.setdefault((table, k.group(1).strip("\"'")), n)

    def of(self, table: str, key: str | None = None) -> int | None:
        if key is not None and (table, key) in self.keys:
            return self.keys[(table, key)]
        if not table and key is not None:  # a top-level key written as a table header
            table = key
        if table in self.tables:
            return self.tables[table]
        top = re.split(r"[.\[]", table, maxsplit=1)[0]
        if top and ("", top) in self.keys:
            return self.keys[("", top)]
        for t, n in self.tables.items():
            if re.split(r"[.\[]", t, maxsplit=1)[0] == top:
                return n
        return None



"""One table of event kinds and severities: the code's, the docs', and every event raised."""

from __future__ import annotations

import ast
import re
from pathlib import Path

from collector.polling.rules import RULES, SEVERITY, severity

ROOT = Path(__file__).resolve().parents[1]


def documented() -> dict[str, int]:
    """The ``| `kind` | severity | ... |`` rows of docs/schema.md's event table."""
    text = (ROOT / "docs" / "schema.md").read_text()
    section = text.split("## Event kinds and severities", 1)[1].split("\n## ", 1)[0]
    rows = re.findall(r"^\| `([^`]+)` \| (\d) \|", section, flags=re.MULTILINE)
    assert rows, "docs/schema.md: no event table found"
    out: dict[str, int] = {}
    for kind, sev in rows:
        assert kind not in out, f"docs/schema.md lists {kind} twice"
        out[kind] = int(sev)
    return out


def raised() -> list[tuple[str, int, str, int | None]]:
    """(file, line, kind, literal severity or None) of every event built in collector/.

    ``Event(kind, ...)`` and prepaid's ``Action(..., event=KIND)``; a severity given as
    ``SEVERITY[...]`` is None (right by construction); none given is the default 1.
    """
    out: list[tuple[str, int, str, int | None]] = []
    for path in sorted((ROOT / "collector").rglob("*.py")):
        tree = ast.parse(path.read_text())
        consts = {n.targets[0].id: n.value.value for n in tree.body
                  if isinstance(n, ast.Assign) and len(n.targets) == 1
                  and isinstance(n.targets[0], ast.Name)
                  and isinstance(n.value, ast.Constant) and isinstance(n.value.value, str)}
        for node in ast.walk(tree):
            if not isinstance(node, ast.Call) or not isinstance(node.func, ast.Name):
                continue
            kw = {k.arg: k.value for k in node.keywords}
            if node.func.id == "Event":
                kind = node.args[0] if node.args else kw.get("kind")
                sev = node.args[4] if len(node.args) > 4 else kw.get("severity")
            elif node.func.id == "Action" and "event" in kw:
                kind, sev = kw["event"], kw.get("severity")
            else:
                continue
            if isinstance(kind, ast.Name) and kind.id in consts:
                name = consts[kind.id]
            elif isinstance(kind, ast.Constant) and isinstance(kind.value, str):
                name = kind.value
            else:
                continue  # built at run time (the rules' emit/clear, the store's reader)
            if sev is None:
                literal: int | None = 1
            elif isinstance(sev, ast.Constant) and isinstance(sev.value, int):
                literal = sev.value
            else:
                literal = None
            out.append((str(path.relative_to(ROOT)), node.lineno, name, literal))
    return out


def test_docs_list_every_kind_with_the_code_severity() -> None:
    docs = documented()
    assert docs.pop("<rule>_cleared") == 0
    assert docs == SEVERITY


def test_every_event_raised_has_the_table_severity() -> None:
    found = raised()
    assert len(found) > 20  # the scan does see the events
    wrong = [f"{f}:{line}: {kind} severity {sev}, the table says {SEVERITY.get(kind)}"
             for f, line, kind, sev in found
             if kind not in SEVERITY or (sev is not None and sev != SEVERITY[kind])]
    assert not wrong, "\n".join(wrong)
    kinds = {kind for _, _, kind, _ in found}
    assert {"bus_down", "bus_up", "meter_dead", "meter_recovered"} <= kinds


def test_severity_levels_and_cleared_events() -> None:
    assert set(SEVERITY.values()) == {0, 1, 2}
    assert severity("bus_down") == 2  # an alarm: shown by amic events --alarms
    assert severity("meter_dead") == 1
    for rule in RULES:
        assert severity(f"{rule}_cleared") == 0

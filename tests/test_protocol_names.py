"""Outside the protocol implementations and config parsing, no code asks which protocol
a meter speaks, and no caller changes a shared session (issue 14 §1).

AST-based over collector/ (except collector/config/, which parses the ledger's protocol
column): a comparison, membership test or subscript with a protocol name, an
``isinstance`` with a protocol session class, or an assignment to a session's
``retries``/``td``/``tb`` fails the test with file:line.
"""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PROTOCOL_WORDS = ("dlt645", "modbus", "3761", "376.1", "698")
SESSION_CLASSES = {"Dlt645Session", "ModbusSession"}
SESSION_OPTIONS = {"retries", "td", "tb"}
EXEMPT = ("collector/config/",)


def _names_protocol(node: ast.AST) -> bool:
    """A string constant that is a protocol name (or a tuple/set/dict of them)."""
    if isinstance(node, ast.Constant) and isinstance(node.value, str):
        text = node.value.lower()
        return any(text.startswith(w) for w in PROTOCOL_WORDS)
    if isinstance(node, ast.Tuple | ast.List | ast.Set):
        return any(_names_protocol(e) for e in node.elts)
    if isinstance(node, ast.Dict):
        return any(k is not None and _names_protocol(k) for k in node.keys)
    return False


def _mentions_protocol(node: ast.AST) -> bool:
    """``x.protocol`` or a name such as ``protocol``/``VERSIONS`` keyed by it."""
    for sub in ast.walk(node):
        if isinstance(sub, ast.Attribute) and sub.attr == "protocol":
            return True
        if isinstance(sub, ast.Name) and sub.id in ("VERSIONS",):
            return True
    return False


def offences(path: Path) -> list[str]:
    tree = ast.parse(path.read_text(), str(path))
    rel = path.relative_to(ROOT).as_posix()
    found: list[str] = []
    # ``logging`` or messages may say "modbus": only tests and lookups count.
    for node in ast.walk(tree):
        where = f"{rel}:{getattr(node, 'lineno', 0)}"
        if isinstance(node, ast.Compare):
            parts = [node.left, *node.comparators]
            if any(_names_protocol(p) for p in parts):
                found.append(f"{where}: compares with a protocol name")
            elif any(isinstance(op, ast.In | ast.NotIn) for op in node.ops) \
                    and _mentions_protocol(node.left) and any(
                        isinstance(c, ast.Name) and c.id.isupper() for c in node.comparators):
                found.append(f"{where}: looks a meter's protocol up in a table")
        elif isinstance(node, ast.Subscript) and _mentions_protocol(node.slice):
            found.append(f"{where}: a table keyed by the meter's protocol")
        elif isinstance(node, ast.Call) and isinstance(node.func, ast.Name) \
                and node.func.id == "isinstance" and len(node.args) == 2:
            kinds = node.args[1]
            elts = kinds.elts if isinstance(kinds, ast.Tuple) else [kinds]
            if any(isinstance(e, ast.Name) and e.id in SESSION_CLASSES for e in elts):
                found.append(f"{where}: tells sessions apart by protocol")
        elif isinstance(node, ast.Assign | ast.AugAssign):
            targets = node.targets if isinstance(node, ast.Assign) else [node.target]
            for t in targets:
                for sub in ast.walk(t):
                    if isinstance(sub, ast.Attribute) and sub.attr in SESSION_OPTIONS \
                            and isinstance(sub.ctx, ast.Store) and not (
                                isinstance(sub.value, ast.Name) and sub.value.id == "self"):
                        found.append(f"{where}: sets {sub.attr} on a shared object")
    return found


def test_no_protocol_tests_and_no_session_mutation_in_the_collector() -> None:
    found: list[str] = []
    for path in sorted((ROOT / "collector").rglob("*.py")):
        rel = path.relative_to(ROOT).as_posix()
        if rel.startswith(EXEMPT):
            continue
        found += offences(path)
    assert not found, "\n".join(found)


def test_the_check_finds_what_it_is_meant_to_find(tmp_path: Path) -> None:
    sample = ROOT / "tests" / "_protocol_sample.py"
    sample.write_text(
        'if m.protocol == "modbus":\n    pass\n'
        'ok = m.protocol != "dlt645-2007"\n'
        'v = VERSIONS[m.protocol]\n'
        'if m.protocol not in VERSIONS:\n    pass\n'
        'if isinstance(s, ModbusSession):\n    pass\n'
        'session.retries = 0\n'
        'w.session(v).td = 1.0\n'
        'self.retries = 2\n'
        'log.info("modbus meter %s", m)\n')
    try:
        got = offences(sample)
    finally:
        sample.unlink()
    lines = sorted(int(f.split(":")[1]) for f in got)
    assert lines == [1, 3, 4, 5, 7, 9, 10], got

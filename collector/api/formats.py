"""Report and ledger-check output shared by the CLI and the HTTP API (one wording)."""

from __future__ import annotations

from typing import Any

from collector.daily.reports import AreaLineLoss, LedgerIssue, LedgerReport, SuccessRow


def lineloss_json(a: AreaLineLoss) -> dict[str, Any]:
    return {"area": a.area, "master": a.master, "customers": a.customers,
            "supplied_kwh": a.supplied_kwh, "sold_kwh": a.sold_kwh, "loss_kwh": a.loss_kwh,
            "loss_pct": a.loss_pct, "complete": a.complete, "missing": list(a.missing),
            "reason": a.reason, "source": a.source,
            "meters": [{"meter": u.meter, "role": u.role, "opening_kwh": u.opening,
                        "closing_kwh": u.closing, "usage_kwh": _round(u.usage),
                        "source": u.source, "energy": u.energy} for u in a.meters]}


def _round(v: float | None) -> float | None:
    return None if v is None else round(v, 4)


def success_json(r: SuccessRow) -> dict[str, Any]:
    return {r.by: r.key, "total": r.is_total, "planned": r.planned,
            "succeeded": r.succeeded, "failed": r.failed, "pct": r.pct, "cycles": r.cycles,
            "reads_ok": r.reads_ok, "reads_total": r.reads_total}


def decode_ledger(raw: bytes) -> tuple[str | None, LedgerIssue | None]:
    """A ledger's text, or the issue that it is not UTF-8 (also for the API's import)."""
    try:
        return raw.decode("utf-8-sig"), None
    except UnicodeDecodeError as e:
        start = e.start + (3 if raw.startswith(b"\xef\xbb\xbf") else 0)
        line = raw[:start].count(b"\n") + 1
        return None, LedgerIssue("invalid", line, f"not UTF-8 text (the byte 0x{raw[start]:02x}); "
                                 f'save the ledger as "CSV UTF-8"')


def issue_lines(r: LedgerReport) -> list[str]:
    """``FILE:LINE: kind: message`` for each issue, as ``amic ledger check`` prints them."""
    out = []
    for i in r.issues:
        where = f"{r.file}:{i.line}" if i.line is not None else r.file
        out.append(f"{where}: {i.kind.replace('_', ' ')}: {i.message}")
    return out


def issue_json(i: LedgerIssue) -> dict[str, Any]:
    return {"kind": i.kind, "line": i.line, "lines": list(i.lines), "meter": i.meter,
            "column": i.column, "message": i.message}


def _plural(n: int, word: str, plural: str) -> str:
    return f"{n} {word if n == 1 else plural}"


def ledger_summary(r: LedgerReport) -> str:
    if r.ok:
        return f"{r.file}: OK: {_plural(r.rows, 'meter', 'meters')}"
    counts = [(len(r.duplicate_addresses), "duplicate address", "duplicate addresses"),
              (len(r.duplicate_meter_ids), "duplicate meter id", "duplicate meter ids"),
              (len(r.missing_fields), "missing field", "missing fields"),
              (len(r.unknown_buses), "unknown bus", "unknown buses"),
              (len(r.invalid), "other problem", "other problems")]
    return (f"{r.file}: {_plural(len(r.issues), 'problem', 'problems')} "
            f"({', '.join(_plural(n, a, b) for n, a, b in counts if n)}); "
            f"{r.valid} of {r.rows} row(s) valid")

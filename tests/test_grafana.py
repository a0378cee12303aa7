"""The Grafana dashboard (config/grafana/amic-dashboard.json): well formed, and every
query uses series the forwarder writes (docs/schema.md) or the ``lineloss`` measurement
(collector.daily.reports); and the queries run on a real VictoriaMetrics."""

from __future__ import annotations

import datetime as dt
import json
import re
import time
import urllib.parse
import urllib.request
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import pytest

from collector.daily import reports
from collector.daily.reports import AreaLineLoss, lineloss_line

ROOT = Path(__file__).resolve().parents[1]
DASHBOARD = ROOT / "config" / "grafana" / "amic-dashboard.json"
SCHEMA = ROOT / "docs" / "schema.md"
README = ROOT / "config" / "grafana" / "README.md"

PROMQL_WORDS = {"by", "without", "on", "ignoring", "group_left", "group_right", "bool",
                "offset", "and", "or", "unless", "inf", "nan"}
GROUPING = re.compile(r"\b(by|without|on|ignoring|group_left|group_right)\s*\(([^)]*)\)")
SELECTOR = re.compile(r"([A-Za-z_:][A-Za-z0-9_:]*)\s*\{([^}]*)\}")


def load() -> dict[str, Any]:
    data: dict[str, Any] = json.loads(DASHBOARD.read_text(encoding="utf-8"))
    return data


def panels(dash: dict[str, Any]) -> list[dict[str, Any]]:
    """Every panel, rows' nested panels included, rows themselves left out."""
    out: list[dict[str, Any]] = []
    for p in dash["panels"]:
        if p["type"] == "row":
            out += p.get("panels", [])
        else:
            out.append(p)
    return out


def exprs(dash: dict[str, Any]) -> list[str]:
    return [t["expr"] for p in panels(dash) for t in p["targets"]]


def metric_names(expr: str) -> set[str]:
    """The series names a PromQL expression reads (not functions, keywords or labels)."""
    e = re.sub(r'"(?:[^"\\]|\\.)*"', '""', expr)
    e = re.sub(r"\{[^}]*\}", " ", e)
    e = re.sub(r"\[[^\]]*\]", " ", e)
    e = GROUPING.sub(" ", e)
    e = re.sub(r"\$\{?\w+(?::\w+)?\}?", " ", e)
    names = set()
    for m in re.finditer(r"(?<![\w.])[A-Za-z_:][A-Za-z0-9_:]*", e):
        if e[m.end():].lstrip().startswith("(") or m.group() in PROMQL_WORDS:
            continue
        names.add(m.group())
    return names


def labels_used(expr: str) -> set[str]:
    """Label names in selectors and in by/without/on/ignoring clauses."""
    out: set[str] = set()
    for m in re.finditer(r"\{([^}]*)\}", expr):
        out |= {x.group(1) for x in re.finditer(r"(\w+)\s*(?:=~|!~|!=|=)", m.group(1))}
    for m in GROUPING.finditer(expr):
        out |= {x.strip() for x in m.group(2).split(",") if x.strip()}
    return out


def schema_series() -> dict[str, set[str]]:
    """``measurement_field`` -> the measurement's tags, from the table in docs/schema.md;
    plus the ``lineloss`` series of collector.daily.reports."""
    series: dict[str, set[str]] = {}
    for line in SCHEMA.read_text(encoding="utf-8").splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if not line.startswith("| `") or len(cells) < 3:
            continue
        measurement = re.findall(r"`([^`]+)`", cells[0])[0]
        tags = set(re.findall(r"`(\w+)`", cells[1]))
        for f in re.findall(r"`(\w+)`", cells[2]):
            series[f"{measurement}_{f}"] = tags
    for f in reports.LINELOSS_FIELDS:
        series[f"{reports.LINELOSS_MEASUREMENT}_{f}"] = {"area", "complete"}
    return series


# ---- the file --------------------------------------------------------------------------

def test_dashboard_parses_and_is_grafana_shaped() -> None:
    dash = load()
    assert dash["uid"] and dash["title"]
    assert 36 <= dash["schemaVersion"] <= 41
    ids = [p["id"] for p in dash["panels"]] + [
        q["id"] for p in dash["panels"] if p["type"] == "row" for q in p.get("panels", [])]
    assert len(ids) == len(set(ids)), "panel ids must be unique"
    assert all(isinstance(i, int) for i in ids)


def test_template_variables() -> None:
    variables = {v["name"]: v for v in load()["templating"]["list"]}
    ds = variables["datasource"]
    assert ds["type"] == "datasource" and ds["query"] == "prometheus"
    for name, metric in (("area", "cycle_area_success_ratio"), ("bus", "cycle_bus_success_ratio")):
        v = variables[name]
        assert v["type"] == "query"
        assert v["datasource"]["uid"] == "${datasource}"
        assert v["query"]["query"] == f"label_values({metric}, {name})"
        assert v["multi"] and v["includeAll"] and v["allValue"] == ".*"
    assert len(variables) == len(load()["templating"]["list"])


def test_every_panel_has_a_datasource_and_a_target() -> None:
    for p in panels(load()):
        assert p["datasource"] == {"type": "prometheus", "uid": "${datasource}"}, p["title"]
        assert p["targets"], f"{p['title']}: no query"
        refs = [t["refId"] for t in p["targets"]]
        assert len(refs) == len(set(refs)), f"{p['title']}: refIds repeat"
        for t in p["targets"]:
            assert t["expr"].strip(), p["title"]
            assert t["datasource"]["uid"] == "${datasource}", p["title"]


def test_panels_do_not_overlap() -> None:
    cells: dict[tuple[int, int], str] = {}
    for p in load()["panels"]:
        g = p["gridPos"]
        assert g["x"] >= 0 and g["x"] + g["w"] <= 24, p["title"]
        for x in range(g["x"], g["x"] + g["w"]):
            for y in range(g["y"], g["y"] + g["h"]):
                assert (x, y) not in cells, f"{p['title']} overlaps {cells[(x, y)]}"
                cells[(x, y)] = p["title"]


def test_metric_names_are_in_the_schema() -> None:
    schema_text = SCHEMA.read_text(encoding="utf-8")
    series = schema_series()
    assert {"reading_value", "cycle_area_success_ratio", "cycle_bus_success_ratio",
            "event_count", "command_status_code"} <= set(series)
    used: set[str] = set()
    for expr in exprs(load()):
        names = metric_names(expr)
        assert names, f"no series in {expr!r}"
        used |= names
        for name in names:
            assert name in series or (re.search(rf"\b{re.escape(name)}\b", schema_text)
                                      and not name.startswith("lineloss_")), \
                f"{name} (in {expr!r}) is neither in docs/schema.md nor a lineloss_ field"
            if name in series:
                unknown = labels_used(expr) - series[name] - {"__name__"}
                assert not unknown, f"{expr!r}: {name} has no label(s) {sorted(unknown)}"
    # What the brief asks the dashboard to show
    assert {"cycle_area_success_ratio", "cycle_bus_success_ratio", "reading_value",
            "event_count", "command_status_code", "lineloss_loss_pct"} <= used
    assert any('quantity="balance_amount"' in e for e in exprs(load()))


def test_metric_name_parser() -> None:
    assert metric_names('sum by (kind) (count_over_time(event_count{bus=~"$bus"}[$__interval]))'
                        ) == {"event_count"}
    assert metric_names("bottomk(20, last_over_time(reading_value{quantity=\"x\"}[1d]))"
                        ) == {"reading_value"}
    assert metric_names("a_b / on (area) c_d or vector(0)") == {"a_b", "c_d"}
    assert labels_used('avg by (area) (x{area=~"$area", complete="true"})') == {"area",
                                                                                "complete"}


def test_readme_documents_lineloss_and_influxql() -> None:
    text = README.read_text(encoding="utf-8")
    for f in reports.LINELOSS_FIELDS:
        assert f"`{f}`" in text
    assert "InfluxQL" in text and "Flux" in text
    assert "SELECT" in text and 'FROM "cycle_area"' in text


# ---- against VictoriaMetrics -----------------------------------------------------------

def _vm_binary() -> bool:
    from victoria import VM_BIN
    return Path(VM_BIN).is_file()


def _substitute(expr: str) -> str:
    return (expr.replace("$__interval", "15m").replace("$__range", "7d")
            .replace("$area", ".*").replace("$bus", ".*"))


def test_queries_run_on_victoriametrics(tmp_path: Path) -> None:
    if not _vm_binary():
        pytest.skip("victoria-metrics is not installed")
    from victoria import VictoriaMetrics

    now_ms = int(time.time() * 1000) - 60_000
    today = dt.datetime.now(ZoneInfo(reports.DEFAULT_TZ)).date()
    loss = AreaLineLoss(today, "TQ 0101", "M00", 3, 100.0, 92.0, 8.0, 8.0, True)
    partial = AreaLineLoss(today, "TQ-0102", None, 2, None, 41.0, None, None, False,
                           reason="no area master")
    lines = [
        f"cycle,schedule=fifteen_min planned=3,succeeded=2,failed=1,success_ratio=0.667 {now_ms}",
        f"cycle_area,schedule=fifteen_min,area=TQ-0101 succeeded=2,total=3,success_ratio=0.667 "
        f"{now_ms}",
        f"cycle_bus,schedule=fifteen_min,bus=rs485-1 succeeded=2,total=3,success_ratio=0.667 "
        f"{now_ms}",
        f"reading,meter=M01,quantity=balance_amount,area=TQ-0101,bus=rs485-1 value=42.5 {now_ms}",
        f"reading,meter=M02,quantity=balance_amount,area=TQ-0101,bus=rs485-1 value=3.5 {now_ms}",
        f"event,kind=meter_dead,meter=M03,bus=rs485-1 severity=2,count=1 {now_ms}",
        f"command,meter=M01,kind=relay_off,status=failed status_code=5,count=1 {now_ms}",
        lineloss_line(loss), lineloss_line(partial),
    ]
    assert all(lines)
    with VictoriaMetrics(tmp_path) as vm:
        body = "\n".join(str(x) for x in lines).encode()
        req = urllib.request.Request(f"{vm.url}/api/v2/write?precision=ms", data=body,
                                     method="POST")
        with urllib.request.urlopen(req, timeout=10) as r:
            assert r.status in (200, 204)
        vm.flush()
        assert vm.export('{__name__="lineloss_loss_pct"}')[0]["metric"]["area"] == "TQ 0101"

        def query(expr: str) -> list[dict[str, Any]]:
            params = urllib.parse.urlencode({"query": _substitute(expr),
                                             "time": f"{time.time():.3f}"})
            with urllib.request.urlopen(f"{vm.url}/api/v1/query?{params}", timeout=10) as r:
                answer = json.loads(r.read())
            assert answer["status"] == "success", (expr, answer)
            result: list[dict[str, Any]] = answer["data"]["result"]
            return result

        dash = load()
        for p in panels(dash):
            found = [query(t["expr"]) for t in p["targets"]]
            assert all(found), f"{p['title']}: a query found nothing: {p['targets']}"
        for v in dash["templating"]["list"]:
            if v["type"] != "query":
                continue
            metric = re.fullmatch(r"label_values\((\w+), (\w+)\)", v["query"]["query"])
            assert metric is not None
            params = urllib.parse.urlencode({"match[]": metric.group(1)})
            with urllib.request.urlopen(
                    f"{vm.url}/api/v1/label/{metric.group(2)}/values?{params}",
                    timeout=10) as r:
                assert json.loads(r.read())["data"], v["name"]
        # the line-loss panel shows complete days only
        [pct] = query('last_over_time(lineloss_loss_pct{complete="true"}[1d])')
        assert float(pct["value"][1]) == 8.0
        [sold] = query('last_over_time(lineloss_sold_kwh{complete="false"}[1d])')
        assert sold["metric"]["area"] == "TQ-0102"

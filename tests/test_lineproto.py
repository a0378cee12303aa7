"""Line protocol is escaped and formatted in collector/forward/lineproto.py, for every writer."""

from __future__ import annotations

import datetime as dt
import json
import subprocess
import sys
from pathlib import Path

from collector.daily import reports
from collector.daily.reports import AreaLineLoss
from collector.forward import forwarder, lineproto, linework


def test_escapes() -> None:
    assert lineproto.escape_tag("a b,c=d\\") == "a\\ b\\,c\\=d\\\\"
    # '=' is plain in a measurement: escaping it would put a backslash in the name
    assert lineproto.escape_measurement("a=b c,d") == "a=b\\ c\\,d"
    assert lineproto.tags((("area", "TQ 1"), ("bus", None), ("feeder", ""))) == \
        ",area=TQ\\ 1"
    assert lineproto.line("m x", ",k=v", "f=1.0", 7) == "m\\ x,k=v f=1.0 7"
    assert [lineproto.number(v) for v in (3, 220.1, 1e-05, 0.1 + 0.2)] == \
        ["3.0", "220.1", "1e-05", "0.30000000000000004"]


def test_one_escaper_for_all_writers() -> None:
    """The forwarder's escape_tag is lineproto's (no second copy in reports either)."""
    assert forwarder.escape_tag is lineproto.escape_tag
    assert not hasattr(reports, "_escape_tag")


def test_lineloss_line_escapes_like_the_forwarder() -> None:
    loss = AreaLineLoss(dt.date(2026, 1, 2), "TQ 1,x=y", "M1", 2, 100.0, 97.5, 2.5, 2.5,
                        True, (), "", "", ())
    line = reports.lineloss_line(loss, "UTC")
    assert line is not None
    assert line.startswith("lineloss,area=TQ\\ 1\\,x\\=y,complete=true loss_pct=2.5,")


def test_daily_line_of_an_odd_kind_keeps_its_measurement_name(tmp_path: Path) -> None:
    """A daily kind with '=' in it is a measurement: no backslash is added."""
    from collector.store import Store

    with Store(tmp_path / "amic.db") as store:
        fwd = forwarder.Forwarder(store, "http://unused", org="o", bucket="b")
        (line,) = fwd.daily_lines([{"kind": "x=y z", "key": "k", "complete": 1, "ts": 0,
                                    "fields": json.dumps({"a": 1})}])  # type: ignore[list-item]
    assert line.startswith("x=y\\ z,key=k,complete=true")


def test_linework_runs_as_a_script_with_lineproto() -> None:
    """The worker process runs linework.py by path: it finds lineproto there too."""
    code = ("import runpy, sys; sys.argv = ['x']; sys.path.insert(0, {d!r}); "
            "m = runpy.run_path({p!r}); print(m['value_line']('m v=', 0.5, 1))")
    path = Path(linework.__file__)
    out = subprocess.run([sys.executable, "-c", code.format(d=str(path.parent), p=str(path))],
                         capture_output=True, text=True, check=True, cwd="/")
    assert out.stdout.strip() == "m v=0.5 1"

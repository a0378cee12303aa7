"""``amic run``'s /metrics after a cycle, scraped over HTTP, against what the store holds."""

from __future__ import annotations

import json
import sqlite3
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest
from conftest import SimulatorProcess, amic_simulator, free_port
from daemonproc import Daemon
from prometheus_client.parser import text_string_to_metric_families

CONFIG = """
[collector]
id = "test-gw"
data_dir = "data"
commit_interval = "200ms"
metrics_listen = "127.0.0.1:{mport}"

[[bus]]
name = "conc-1"
type = "tcp"
host = "127.0.0.1"
port = {port}
line_baud = 9600
td_ms = 300

[[meter]]
meter_id = "M1"
address = "000000000001"
bus = "conc-1"
area = "TQ-1"
role = "area_master"

[[meter]]
meter_id = "M2"
address = "000000000002"
bus = "conc-1"
area = "TQ-1"

[[meter]]
meter_id = "M3"
address = "000000000003"
bus = "conc-1"
area = "TQ-2"

[[meter]]
meter_id = "M4"
address = "000000000009"
bus = "conc-1"
area = "TQ-2"

[schedule.hourly]
interval = "1h"
quantities = ["energy", "voltage"]
"""


@pytest.fixture(scope="module")
def sim(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SimulatorProcess]:
    err = tmp_path_factory.mktemp("sim") / "stderr.txt"
    with amic_simulator(["dlt645", "--listen", "127.0.0.1:0", "--meters", "3",
                         "--baud", "9600", "--td-ms", "20"], err) as s:
        yield s


def scrape(port: int) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as r:
        text = r.read().decode()
    return {(s.name, tuple(sorted(s.labels.items()))): s.value
            for f in text_string_to_metric_families(text) for s in f.samples}


def test_metrics_after_a_cycle_match_the_store(sim: SimulatorProcess, tmp_path: Path) -> None:
    mport = free_port()
    cfg = tmp_path / "amic.toml"
    cfg.write_text(CONFIG.format(port=sim.port, mport=mport))
    d = Daemon(cfg, tmp_path)
    try:
        d.wait_for("READY=1")
        d.wait_for("last cycle", timeout=30)  # STATUS= after the first (only) cycle
        db = tmp_path / "data" / "amic.db"

        def figures() -> tuple[dict[tuple[str, tuple[tuple[str, str], ...]], float], int,
                               int]:
            with sqlite3.connect(db) as c:
                n = int(c.execute("SELECT count(*) FROM readings").fetchone()[0])
                k = int(c.execute("SELECT count(*) FROM cycles").fetchone()[0])
            return scrape(mport), n, k

        # Committed within commit_interval, mirrored by the next housekeeping pass (2 s).
        deadline = time.monotonic() + 10
        m, stored, ncycles = figures()
        while m.get(("amic_readings_committed_total", ()), -1) != stored or not ncycles:
            assert time.monotonic() < deadline, (m, stored)
            time.sleep(0.2)
            m, stored, ncycles = figures()
        time.sleep(2.2)  # a housekeeping pass (every 2 s) since: the store gauges
        m, stored, ncycles = figures()
        with sqlite3.connect(db) as c:
            cycles = c.execute("SELECT planned, succeeded, per_bus, per_area FROM cycles "
                               "WHERE schedule = 'hourly'").fetchall()
            meters = c.execute("SELECT count(DISTINCT meter) FROM readings").fetchone()[0]
    finally:
        d.stop()
    assert stored > 0 and meters == 3  # M4 (no such meter on the line) gave nothing
    assert m[("amic_readings_committed_total", ())] == stored
    assert m[("amic_outbox_lag_rows", ())] == 0  # no forwarder: nothing waits to be shipped
    [(planned, succeeded, per_bus, per_area)] = cycles
    assert (planned, succeeded) == (4, 3)
    assert m[("amic_cycles_total", (("schedule", "hourly"),))] == 1
    for bus, (ok, total) in json.loads(per_bus).items():
        assert m[("amic_bus_read_success_ratio", (("bus", bus),))] == ok / total
    for area, (ok, total) in json.loads(per_area).items():
        assert m[("amic_area_read_success_ratio", (("area", area),))] == ok / total
    assert m[("amic_area_read_success_ratio", (("area", "TQ-2"),))] == 0.5
    assert m[("amic_store_full", ())] == 0
    assert m[("amic_store_size_bytes", ())] > 0

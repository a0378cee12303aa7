"""``amic run`` as a real process: notify protocol, SIGHUP reload, SIGTERM drain, kill -9."""

from __future__ import annotations

import re
import signal
import sqlite3
import subprocess
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest
from conftest import SimulatorProcess, amic_command, amic_simulator, free_port
from daemonproc import Daemon

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

[schedule.{schedule}]
interval = "{interval}"
quantities = ["energy", "voltage"]
"""


@pytest.fixture(scope="module")
def sim(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SimulatorProcess]:
    err = tmp_path_factory.mktemp("sim") / "stderr.txt"
    with amic_simulator(["dlt645", "--listen", "127.0.0.1:0", "--meters", "3",
                         "--baud", "9600", "--td-ms", "20"], err) as s:
        yield s


def write_config(path: Path, port: int, *, schedule: str = "fast", interval: str = "2s",
                 mport: int = 0) -> Path:
    path.write_text(CONFIG.format(port=port, schedule=schedule, interval=interval,
                                  mport=mport or free_port()))
    return path


def db(tmp: Path) -> sqlite3.Connection:
    return sqlite3.connect(tmp / "data" / "amic.db")


def count(tmp: Path, sql: str = "SELECT count(*) FROM readings") -> int:
    with db(tmp) as c:
        return int(c.execute(sql).fetchone()[0])


def test_refuses_to_start_on_an_invalid_file(tmp_path: Path) -> None:
    cfg = tmp_path / "amic.toml"
    cfg.write_text(CONFIG.format(port=70000, schedule="fast", interval="2s", mport=9108)
                   .replace('area = "TQ-2"', 'area = "TQ-2"\nroll = "customer"'))
    r = subprocess.run([*amic_command(), "run", "--config", str(cfg)], capture_output=True,
                       text=True, timeout=30)
    assert r.returncode == 78
    assert "amic.toml:" in r.stderr and '"port"' in r.stderr and '"roll"' in r.stderr
    assert "not started: 2 problem(s)" in r.stderr
    assert "Traceback" not in r.stderr
    assert not (tmp_path / "data").exists()  # nothing was started


def test_notify_ready_status_metrics_and_sigterm_drain(sim: SimulatorProcess,
                                                       tmp_path: Path) -> None:
    mport = free_port()
    d = Daemon(write_config(tmp_path / "amic.toml", sim.port, mport=mport), tmp_path,
               env={"WATCHDOG_USEC": "1000000"})
    d.wait_for("READY=1")
    d.wait_for("WATCHDOG=1", timeout=3)  # pinged at half the 1 s watchdog period
    d.wait_for("last cycle")  # STATUS= after the first cycle
    status = [m for m in d.messages if m.startswith("STATUS=")]
    assert any("fast:" in m for m in status), status
    time.sleep(2.5)  # one housekeeping pass
    with urllib.request.urlopen(f"http://127.0.0.1:{mport}/metrics", timeout=5) as r:
        metrics = r.read().decode()
    assert 'amic_transactions_total{bus="conc-1",outcome="ok"}' in metrics
    assert 'amic_area_read_success_ratio{area="TQ-1"} 1.0' in metrics
    assert re.search(r'amic_queue_depth\{bus="conc-1",lane="command"\} 0', metrics)
    assert re.search(r"^amic_store_size_bytes [1-9]", metrics, re.M)
    t0 = time.monotonic()
    assert d.stop(signal.SIGTERM) == 0
    assert time.monotonic() - t0 < 10
    assert any("STOPPING=1" in m for m in d.messages), d.messages
    log = d.log.read_text()
    assert "stopped in" in log
    # Every meter's energy and voltages were read and committed.
    meters = count(tmp_path, "SELECT count(DISTINCT meter) FROM readings")
    assert meters == 3
    assert count(tmp_path, "SELECT count(*) FROM readings WHERE quantity = 'voltage_c'") >= 3
    with db(tmp_path) as c:
        assert c.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
        kinds = [r[0] for r in c.execute("SELECT kind FROM events ORDER BY id")]
        assert kinds[0] == "collector_started" and kinds[-1] == "collector_stopped"
        cycles = c.execute("SELECT schedule, planned, succeeded, failed_meters "
                           "FROM cycles").fetchall()
    assert ("fast", 3, 3, "[]") in cycles


def test_sighup_reload_valid_then_invalid(sim: SimulatorProcess, tmp_path: Path) -> None:
    cfg = write_config(tmp_path / "amic.toml", sim.port)
    d = Daemon(cfg, tmp_path)
    d.wait_for("READY=1")
    d.wait_for("last cycle")
    write_config(cfg, sim.port, schedule="renamed", interval="1s")
    d.proc.send_signal(signal.SIGHUP)
    d.wait_log("reload applied")
    d.wait_for("RELOADING=1")
    deadline = time.monotonic() + 15
    while count(tmp_path, "SELECT count(*) FROM cycles WHERE schedule = 'renamed'") == 0:
        assert time.monotonic() < deadline, d.log.read_text()
        time.sleep(0.2)
    # A broken file is refused; the daemon keeps polling on the last good one.
    cfg.write_text(cfg.read_text().replace('interval = "1s"', 'interval = "soon"'))
    d.proc.send_signal(signal.SIGHUP)
    d.wait_log("reload rejected")
    log = d.log.read_text()
    assert "amic.toml:" in log and '"interval"' in log
    before = count(tmp_path)
    deadline = time.monotonic() + 15
    while count(tmp_path) <= before:
        assert time.monotonic() < deadline, "polling stopped after a rejected reload"
        time.sleep(0.2)
    assert d.stop() == 0


def test_kill_9_loses_no_committed_reading(sim: SimulatorProcess, tmp_path: Path) -> None:
    cfg = write_config(tmp_path / "amic.toml", sim.port, interval="1s")
    d = Daemon(cfg, tmp_path)
    d.wait_for("READY=1")
    deadline = time.monotonic() + 20
    while count(tmp_path) < 30:
        assert time.monotonic() < deadline, d.log.read_text()
        time.sleep(0.1)
    with db(tmp_path) as c:
        committed = c.execute("SELECT id, meter, quantity, value, ts FROM readings").fetchall()
    d.proc.send_signal(signal.SIGKILL)
    d.proc.wait(timeout=10)
    d.sock.close()
    with db(tmp_path) as c:
        assert c.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
        after = set(c.execute("SELECT id, meter, quantity, value, ts FROM readings").fetchall())
    assert set(committed) <= after
    # Restart on the same store: it opens, keeps every row and goes on appending.
    d2 = Daemon(cfg, tmp_path, name="restarted")
    d2.wait_for("READY=1")
    n = len(after)
    deadline = time.monotonic() + 20
    while count(tmp_path) <= n:
        assert time.monotonic() < deadline, d2.log.read_text()
        time.sleep(0.1)
    assert d2.stop() == 0
    with db(tmp_path) as c:
        final = set(c.execute("SELECT id, meter, quantity, value, ts FROM readings").fetchall())
        assert c.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
    assert after <= final

"""The daemon forwards its outbox to a real VictoriaMetrics ([timeseries] in the config)."""

from __future__ import annotations

import asyncio
import signal
import sqlite3
import time
from collections.abc import Callable
from pathlib import Path

import pytest
from conftest import amic_simulator
from daemonproc import Daemon as DaemonProcess
from daemonproc import gone, worker_processes
from victoria import VictoriaMetrics

from collector.config import ConfigError, load_settings
from collector.service.daemon import FORWARDER, Daemon
from collector.service.notify import Notifier
from simulators.bus import BusServer
from simulators.dlt645 import make_meters

CONFIG = """
[collector]
id = "ts-gw"
data_dir = "data"
commit_interval = "100ms"

[timeseries]
url = "{url}"
bucket = "amic"
token_file = "token"

[[bus]]
name = "conc-1"
type = "tcp"
host = "127.0.0.1"
port = {port}
td_ms = 300

[[meter]]
meter_id = "M1"
address = "000000000001"
bus = "conc-1"
area = "TQ-1"

[[meter]]
meter_id = "M2"
address = "000000000002"
bus = "conc-1"
area = "TQ-1"

[schedule.fast]
interval = "1h"
quantities = ["energy_active_forward_total", "voltage_a"]
"""


async def test_readings_reach_the_time_series_store(tmp_path: Path) -> None:
    (tmp_path / "token").write_text("not-a-real-token\n")
    (tmp_path / "token").chmod(0o600)
    with VictoriaMetrics(tmp_path / "vm") as vm:
        server = BusServer(make_meters(["000000000001", "000000000002"]), baud=19200,
                           td=0.005)
        async with server:
            cfg = tmp_path / "amic.toml"
            cfg.write_text(CONFIG.format(url=vm.url, port=server.port))
            daemon = Daemon(load_settings(cfg), notifier=Notifier.from_env({}), align=False)
            run = asyncio.create_task(daemon.run())
            loop = asyncio.get_running_loop()
            deadline = loop.time() + 20
            while True:
                fwd = daemon.forwarder
                done = daemon.poller is not None and "fast" in daemon.poller.last_cycle
                if done and fwd is not None and fwd.stats.rows_sent >= 4 \
                        and fwd.stats.lag == 0:
                    break
                assert loop.time() < deadline, fwd.counters() if fwd else "no forwarder"
                await asyncio.sleep(0.1)
            daemon.stop_requested.set()
            assert await asyncio.wait_for(run, 15) == 0
        series = vm.export('{__name__="reading_value"}')
        # Every forwarded series carries the collector id: gateways can share a TSDB.
        mine = {s["metric"]["__name__"] for s in vm.export('{collector="ts-gw"}')}
        untagged = vm.export('{__name__!="",collector=""}')
    assert {"reading_value", "event_count", "event_severity", "cycle_success_ratio",
            "cycle_bus_success_ratio"} <= mine
    assert untagged == []
    got = {(s["metric"]["meter"], s["metric"]["quantity"]): s for s in series}
    assert {("M1", "voltage_a"), ("M2", "energy_active_forward_total")} <= set(got)
    volts = got[("M1", "voltage_a")]
    assert volts["metric"]["area"] == "TQ-1" and volts["metric"]["bus"] == "conc-1"
    assert 190 < volts["values"][0] < 250
    with sqlite3.connect(tmp_path / "data" / "amic.db") as c:
        (ts,) = c.execute("SELECT ts FROM readings WHERE meter = 'M1' AND "
                          "quantity = 'voltage_a'").fetchone()
        (cursor,) = c.execute("SELECT last_id FROM cursors WHERE name = ? AND "
                              "table_name = 'readings'", (FORWARDER,)).fetchone()
        (last,) = c.execute("SELECT max(id) FROM readings").fetchone()
    assert volts["timestamps"] == [ts]  # the collector's timestamp, ms: idempotent
    assert cursor == last


def test_token_never_in_the_config(tmp_path: Path) -> None:
    cfg = tmp_path / "amic.toml"
    cfg.write_text(CONFIG.format(url="http://127.0.0.1:8428", port=1)
                   .replace('token_file = "token"', 'token = "s3cret"'))
    with pytest.raises(ConfigError) as e:
        load_settings(cfg)
    text = str(e.value)
    assert 'key "token"' in text and "AMIC_TSDB_TOKEN" in text and "s3cret" not in text


def test_gzip_level_and_worker_backlog(tmp_path: Path) -> None:
    (tmp_path / "token").write_text("t\n")
    (tmp_path / "token").chmod(0o600)
    cfg = tmp_path / "amic.toml"
    base = CONFIG.format(url="http://127.0.0.1:8428", port=1)
    cfg.write_text(base)
    ts = load_settings(cfg).timeseries
    assert ts is not None and (ts.gzip_level, ts.worker_backlog) == (6, 50_000)
    cfg.write_text(base.replace('token_file = "token"',
                                'token_file = "token"\ngzip_level = 1\nworker_backlog = 0'))
    ts = load_settings(cfg).timeseries
    assert ts is not None and (ts.gzip_level, ts.worker_backlog) == (1, 0)
    cfg.write_text(base.replace('token_file = "token"', 'token_file = "token"\ngzip_level = 10'))
    with pytest.raises(ConfigError) as e:
        load_settings(cfg)
    assert "gzip_level" in str(e.value) and "1 to 9" in str(e.value)
    assert f"{cfg}:11" in str(e.value)  # the line of the key


KILL_CONFIG = """
[collector]
id = "ts-kill"
data_dir = "data"
commit_interval = "100ms"

[timeseries]
url = "{url}"
bucket = "amic"
batch = 1
worker_backlog = 1  # the backlog goes through the worker process

[[bus]]
name = "conc-1"
type = "tcp"
host = "127.0.0.1"
port = {port}
td_ms = 300
{meters}
[schedule.fast]
interval = "1s"
quantities = ["energy", "voltage"]
"""


def test_kill_9_of_the_daemon_while_forwarding_then_exactly_once(tmp_path: Path) -> None:
    """The whole daemon is killed while its forwarder is mid-way through a backlog; after
    a restart every stored reading is in VictoriaMetrics exactly once."""
    addresses = [f"{i:012d}" for i in range(1, 11)]
    meters = "".join(f'\n[[meter]]\nmeter_id = "M{i}"\naddress = "{a}"\nbus = "conc-1"\n'
                     for i, a in enumerate(addresses, 1))
    with amic_simulator(["dlt645", "--listen", "127.0.0.1:0", "--meters", "10",
                         "--baud", "19200", "--td-ms", "5"], tmp_path / "sim.txt") as sim:
        vm = VictoriaMetrics(tmp_path / "vm")  # not started yet: the outbox fills first
        cfg = tmp_path / "amic.toml"
        cfg.write_text(KILL_CONFIG.format(url=vm.url, port=sim.port, meters=meters))
        d = DaemonProcess(cfg, tmp_path)
        try:
            d.wait_for("READY=1")
            wait_until(lambda: count(tmp_path, "SELECT count(*) FROM readings") >= 300, 30,
                       d)
            vm.start()
            # One row per POST: catch the forwarder half-way through the backlog.
            wait_until(lambda: 20 <= shipped(tmp_path) <= last(tmp_path) - 50, 30, d)
            workers = worker_processes(d.proc.pid)
            d.proc.send_signal(signal.SIGKILL)
            d.proc.wait(timeout=10)
            assert len(workers) == 1  # the backlog went through the worker process ...
            assert gone(workers[0])  # ... which ends with the daemon
            at_kill = shipped(tmp_path), last(tmp_path)
            assert 0 < at_kill[0] < at_kill[1]
            d.sock.close()

            d = DaemonProcess(cfg, tmp_path, name="restarted")
            d.wait_for("READY=1")
            wait_until(lambda: last(tmp_path) > at_kill[1] + 50, 30, d)
            assert d.stop() == 0
            # SIGTERM lets the batch in flight finish; what the schedule read meanwhile is
            # shipped by the next start.
            d = DaemonProcess(cfg, tmp_path, name="drain")
            d.wait_for("READY=1")
            wait_until(lambda: shipped(tmp_path) >= last(tmp_path), 30, d)
            assert d.stop() == 0
            # Rows read while it stopped wait for the next start; compare what was shipped.
            stored = rows(tmp_path, up_to=shipped(tmp_path))
            series = vm.export('{__name__="reading_value"}')
        finally:
            d.stop(signal.SIGKILL)
            vm.stop()
    got: dict[tuple[str, str], list[int]] = {
        (s["metric"]["meter"], s["metric"]["quantity"]): s["timestamps"] for s in series}
    want: dict[tuple[str, str], list[int]] = {}
    for meter, quantity, ts in stored:
        want.setdefault((meter, quantity), []).append(ts)
    assert len(stored) > at_kill[1] + 50
    assert got == {k: sorted(v) for k, v in want.items()}  # every row, once each


def count(tmp: Path, sql: str) -> int:
    with sqlite3.connect(tmp / "data" / "amic.db") as c:
        return int(c.execute(sql).fetchone()[0])


def shipped(tmp: Path) -> int:
    try:
        return count(tmp, f"SELECT coalesce(max(last_id), 0) FROM cursors WHERE "
                          f"name = '{FORWARDER}' AND table_name = 'readings'")
    except sqlite3.OperationalError:
        return 0


def last(tmp: Path) -> int:
    return count(tmp, "SELECT coalesce(max(id), 0) FROM readings")


def rows(tmp: Path, up_to: int) -> list[tuple[str, str, int]]:
    with sqlite3.connect(tmp / "data" / "amic.db") as c:
        return [(m, q, int(t)) for m, q, t in c.execute(
            "SELECT meter, quantity, coalesce(meter_ts, ts) FROM readings "
            "WHERE value IS NOT NULL AND id <= ? ORDER BY id", (up_to,))]


def wait_until(cond: Callable[[], bool], timeout: float, d: DaemonProcess) -> None:
    deadline = time.monotonic() + timeout
    while not cond():
        assert d.proc.poll() is None, d.log.read_text()
        assert time.monotonic() < deadline, d.log.read_text()[-3000:]
        time.sleep(0.01)

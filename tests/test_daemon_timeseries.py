"""The daemon forwards its outbox to a real VictoriaMetrics ([timeseries] in the config)."""

from __future__ import annotations

import asyncio
import sqlite3
from pathlib import Path

import pytest
from victoria import VictoriaMetrics

from collector.config import ConfigError, load_settings
from collector.daemon import FORWARDER, Daemon
from collector.notify import Notifier
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

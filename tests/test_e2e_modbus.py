"""Modbus meters in the daemon: RTU over TCP on a line shared with DL/T645 meters, Modbus
TCP, RTU on a pty; stored like DL/T645 readings; profile errors refused before start."""

from __future__ import annotations

import asyncio
import sqlite3
from pathlib import Path

import pytest
from click.testing import CliRunner

from collector.cli import main
from collector.config import ConfigError, load_settings
from collector.config.profiles import load_profile
from collector.service.daemon import Daemon
from collector.service.notify import Notifier
from simulators.bus import BusServer
from simulators.dlt645 import make_meters
from simulators.modbus import ModbusSimulator, make_modbus_meters

CONFIG = """
[collector]
id = "mixed"
data_dir = "data"
commit_interval = "100ms"

[[bus]]
name = "line-1"            # a serial server: DL/T645 and Modbus RTU on one RS-485 line
type = "tcp"
host = "127.0.0.1"
port = {mixed}
line_baud = 9600
td_ms = 300
modbus = "rtu"

[[bus]]
name = "gw-1"              # a Modbus TCP gateway
type = "tcp"
host = "127.0.0.1"
port = {gateway}
td_ms = 300
modbus = "tcp"

[[bus]]
name = "com1"              # an RS-485 port (here: a pty; ptys refuse even parity)
type = "serial"
device = "{pty}"
baud = 9600
parity = "N"
td_ms = 300

[[meter]]
meter_id = "D1"
address = "000000000001"
bus = "line-1"
area = "TQ-1"

[[meter]]
meter_id = "D2"
address = "000000000002"
bus = "line-1"
area = "TQ-1"

[[meter]]
meter_id = "S1"
address = 1
protocol = "modbus"
profile = "acrel-ddsy1352"
bus = "line-1"
area = "TQ-1"

[[meter]]
meter_id = "S2"
address = 2
protocol = "modbus"
profile = "acrel-ddsy1352"
bus = "line-1"
area = "TQ-1"

[[meter]]
meter_id = "T1"
address = 1
protocol = "modbus"
profile = "acrel-dtsy1352"
bus = "gw-1"
area = "TQ-2"

[[meter]]
meter_id = "G1"
address = 7
protocol = "modbus"
profile = "generic-energy-meter"
bus = "com1"
area = "TQ-2"

[schedule.line]
interval = "1h"
quantities = ["energy_active_combined_total", "voltage_a", "current_a"]
meters = ["bus:line-1"]

[schedule.three_phase]
interval = "1h"
quantities = ["energy_active_combined_total"]
meters = ["T1"]

[schedule.sdm]
interval = "1h"
quantities = ["voltage", "current", "power_active_total", "frequency"]
meters = ["G1"]
"""


async def _run_one_cycle(daemon: Daemon, schedules: int) -> None:
    async def stop_when_done() -> None:
        while daemon.poller is None or len(daemon.poller.last_cycle) < schedules:
            await asyncio.sleep(0.05)
        daemon.stop_requested.set()

    watcher = asyncio.create_task(stop_when_done())
    await asyncio.wait_for(daemon.run(), 30)
    await watcher


async def test_daemon_polls_mixed_and_modbus_buses(tmp_path: Path) -> None:
    ddsy = load_profile("acrel-ddsy1352")
    mixed = BusServer(make_meters(["000000000001", "000000000002"], seed=1), baud=9600,
                      td=0.01, modbus=make_modbus_meters(ddsy, [1, 2], seed=2))
    gateway = ModbusSimulator(load_profile("acrel-dtsy1352"), meters=1, transport="tcp")
    sdm = load_profile("generic-energy-meter")
    pty = ModbusSimulator(sdm, meters=7, transport="rtu-pty")
    async with mixed, gateway, pty:
        assert pty.pty_path is not None
        cfg = tmp_path / "amic.toml"
        cfg.write_text(CONFIG.format(mixed=mixed.port, gateway=gateway.port, pty=pty.pty_path))
        settings = load_settings(cfg)
        daemon = Daemon(settings, notifier=Notifier.from_env({}), align=False)
        await _run_one_cycle(daemon, 3)
        assert daemon.poller is not None
        for name, cycle in daemon.poller.last_cycle.items():
            assert cycle.failed == 0, (name, cycle.failed_meters)
        # One transaction at a time on the shared line: no two talkers ever collided.
        assert mixed.stats.collisions == 0
        assert mixed.stats.requests >= 2 * 3 + 2 * 1  # 3 DL/T645 reads, 1 Modbus block each

    with sqlite3.connect(tmp_path / "data" / "amic.db") as c:
        rows = c.execute("SELECT meter, quantity, value, unit FROM readings").fetchall()
    got = {(m, q): (v, u) for m, q, v, u in rows}
    for meter in ("D1", "D2", "S1", "S2"):
        volts, unit = got[(meter, "voltage_a")]
        assert unit == "V" and 190 < volts < 250, meter
        kwh, unit = got[(meter, "energy_active_combined_total")]
        assert unit == "kWh" and kwh > 0, meter
    assert got[("T1", "energy_active_combined_total")][1] == "kWh"
    assert got[("T1", "energy_active_combined_total")][0] > 0
    for q, unit in (("voltage_c", "V"), ("current_b", "A"), ("power_active_total", "kW"),
                    ("frequency", "Hz")):
        assert got[("G1", q)][1] == unit
    assert 49 < got[("G1", "frequency")][0] < 51
    # The store holds Modbus readings exactly like DL/T645 ones: same quantity names.
    assert {q for (m, q) in got if m == "S1"} == {q for (m, q) in got if m == "D1"}


def test_profile_errors_refuse_the_configuration(tmp_path: Path) -> None:
    bad = tmp_path / "broken-meter.toml"
    bad.write_text(
        '[profile]\nmanufacturer = "X"\nmodel = "Y"\nmanual = "none (test)"\n\n'
        '[[register]]\nname = "voltage_a"\nfunction = 3\naddress = 0\ntype = "uint16"\n'
        'unit = "V"\nscale = "0.1"\n\n'
        '[[register]]\nname = "current_a"\nfunction = 3\naddress = 0\ntype = "uint32"\n'
        'unit = "A"\n\n'
        '[[register]]\nname = "frequency"\nfunction = 3\naddress = 4\ntype = "float64"\n'
        'unit = "Hz"\n')
    cfg = tmp_path / "amic.toml"
    cfg.write_text(CONFIG.format(mixed=1, gateway=2, pty="/dev/null")
                   .replace('profile = "acrel-dtsy1352"', f'profile = "{bad}"'))
    with pytest.raises(ConfigError) as e:
        load_settings(cfg)
    text = str(e.value)
    assert "meter_id \"T1\"" in text and '"profile"' in text
    assert "overlap" in text and "current_a" in text and "voltage_a" in text
    assert "float64" in text
    result = CliRunner().invoke(main, ["config", "check", str(cfg)])
    assert result.exit_code == 78 and "float64" in result.output

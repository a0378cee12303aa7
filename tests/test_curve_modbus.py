"""Modbus profiles and load curves: a profile says where its curve comes from, and the
shipped ones say they have none, so a schedule cannot ask them for one."""

from __future__ import annotations

import datetime as dt
from pathlib import Path

import pytest

from collector.config import ConfigError, load_settings
from collector.config.profiles import load_profile
from drivers.device import Line, MeterRef, Unsupported
from drivers.meters import open_meter
from drivers.tcp import TcpBus
from protocols.modbus import ProfileError, parse_profile

HEAD = """
[profile]
manufacturer = "Test"
model = "T1"
manual = "none, test"
{curve}
[[register]]
name = "voltage_a"
function = 3
address = 0
type = "uint16"
unit = "V"
"""


def test_shipped_profiles_say_they_have_no_curve() -> None:
    for name in ("acrel-ddsy1352", "acrel-dtsy1352", "generic-energy-meter"):
        assert load_profile(name).curve == "none", name


def test_curve_key_default_and_unknown_source() -> None:
    assert parse_profile(HEAD.format(curve=""), name="t").curve == "none"
    assert parse_profile(HEAD.format(curve='curve = "none"'), name="t").curve == "none"
    with pytest.raises(ProfileError, match="key 'curve': expected one of none, got 'registers'"):
        parse_profile(HEAD.format(curve='curve = "registers"'), name="t")


async def test_a_modbus_meter_refuses_a_curve_read_without_io() -> None:
    bus = TcpBus("127.0.0.1", 9)  # never opened: nothing may be sent
    meter = open_meter(Line(bus), MeterRef("mb", "modbus", "5", load_profile("acrel-ddsy1352")))
    assert meter.capabilities.curve == frozenset()
    with pytest.raises(Unsupported, match="keeps no load curve"):
        await meter.read_curve(["voltage_a"], dt.datetime(2024, 1, 1), dt.datetime(2024, 1, 2))


CONFIG = """
[collector]
id = "c"
data_dir = "data"

[[bus]]
name = "b1"
type = "tcp"
host = "127.0.0.1"
port = 9

[[meter]]
meter_id = "d1"
address = "1"
bus = "b1"

[[meter]]
meter_id = "mb"
address = "5"
bus = "b1"
protocol = "modbus"
profile = "acrel-ddsy1352"

[[meter]]
meter_id = "d97"
address = "97"
bus = "b1"
protocol = "dlt645-1997"

[schedule.curves]
interval = "1h"
quantities = ["voltage_a"]
meters = [{meters}]
curve = [{curve}]
"""


def _load(tmp_path: Path, meters: str, curve: str) -> list[str]:
    path = tmp_path / "amic.toml"
    path.write_text(CONFIG.format(meters=meters, curve=curve))
    try:
        s = load_settings(path)
    except ConfigError as e:
        return [str(p) for p in e.problems]
    (schedule,) = s.schedules
    return [f"{schedule.curve} {schedule.curve_days}"]


def test_schedule_curve_key(tmp_path: Path) -> None:
    assert _load(tmp_path, '"d1"', '"energy_active_forward_total", "voltage"') == [
        "('energy_active_forward_total', 'voltage_a', 'voltage_b', 'voltage_c') 1"]
    # The energy group has combined energy, which a DL/T645 load record does not keep.
    (problem,) = _load(tmp_path, '"d1"', '"energy"')
    assert problem.endswith("got energy_active_combined_total; leave the meter out of this "
                            "schedule or those quantities out")
    (problem,) = _load(tmp_path, '"mb"', '"voltage_a"')
    assert '[schedule.curves]: key "curve": meter "mb": expected load-curve quantities the ' \
           "meter keeps (protocol modbus: none), got voltage_a" in problem
    (problem,) = _load(tmp_path, '"d97"', '"voltage_a"')
    assert "(protocol dlt645-1997: none), got voltage_a" in problem
    (problem,) = _load(tmp_path, '"d1"', '"frequency"')
    assert "protocol dlt645-2007: " in problem and "got frequency" in problem
    (problem,) = _load(tmp_path, '"d1"', '"voltag"')
    assert 'got "voltag", which is neither; did you mean "voltage"?' in problem

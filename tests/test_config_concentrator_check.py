"""``amic config check`` of a configuration with [[listener]]s and [[concentrator]]s:
the summary names them; a meter whose protocol a concentrator cannot forward is refused
with file:line, key, expected and got."""

from __future__ import annotations

from pathlib import Path

import pytest
from click.testing import CliRunner

from collector.cli import main
from collector.config import ConfigError, load_settings

BASE = """\
[collector]
id = "gw-1"
data_dir = "data"

[[bus]]
name = "line-1"
type = "tcp"
host = "127.0.0.1"
port = 4001

[[listener]]
name = "dialin"
listen = "0.0.0.0:9001"
protocol = "3761"

[[listener]]
name = "dialin-tls"
listen = "127.0.0.1:9002"
protocol = "3761"

[[concentrator]]
name = "tq-1"
a1 = "4403"
a2 = 1
listener = "dialin"

[[concentrator]]
name = "tq-2"
a1 = "4403"
a2 = 258
listener = "dialin"

[[meter]]
meter_id = "M1"
address = "000000000001"
bus = "line-1"

[[meter]]
meter_id = "C1"
address = "000001000001"
bus = "tq-1"
pn = 1

[[meter]]
meter_id = "C2"
address = "000001000002"
bus = "tq-1"
pn = 2
protocol = "dlt645-1997"

[[meter]]
meter_id = "C3"
address = "000258000001"
bus = "tq-2"
pn = 1

[schedule.s]
interval = "15m"
quantities = ["energy_active_forward_total"]
"""

MODBUS = """
[[meter]]
meter_id = "C4"
address = "5"
bus = "tq-2"
pn = 2
protocol = "modbus"
profile = "acrel-dtsy1352"
"""


@pytest.fixture(autouse=True)
def _in_tmp(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)


def check(text: str, *args: str) -> tuple[int, list[str]]:
    Path("amic.toml").write_text(text, encoding="utf-8")
    r = CliRunner().invoke(main, ["config", "check", *args, "amic.toml"])
    return r.exit_code, r.stdout.splitlines()


def test_summary_counts_listeners_and_concentrators() -> None:
    code, lines = check(BASE)
    assert code == 0, lines
    assert lines == ["amic.toml: OK: 1 bus, 2 listeners, 2 concentrators, 4 meters "
                     "(3 dlt645-2007, 1 dlt645-1997), 1 schedule, 0 areas "
                     "(0 with an area master)"]


def test_verbose_lists_each_listener_and_concentrator_with_its_meters() -> None:
    code, lines = check(BASE, "-v")
    assert code == 0, lines
    assert lines[1:6] == [
        "  bus line-1: tcp 127.0.0.1:4001, 1 meter",
        "  listener dialin: 0.0.0.0:9001, protocol 3761, 2 concentrators",
        "  listener dialin-tls: 127.0.0.1:9002, protocol 3761, 0 concentrators",
        "  concentrator tq-1: a1/a2 4403/1 via listener dialin, 2 meters behind it",
        "  concentrator tq-2: a1/a2 4403/258 via listener dialin, 1 meter behind it",
    ]
    assert lines[6].startswith("  schedule s: every 15m, 1 quantity from 4 meters")


def test_a_configuration_without_concentrators_says_nothing_of_them() -> None:
    text = BASE.split("[[listener]]")[0] + BASE[BASE.index("[[meter]]"):].split(
        '\n[[meter]]\nmeter_id = "C1"')[0] + '\n[schedule.s]\ninterval = "15m"\n' \
        'quantities = ["energy_active_forward_total"]\n'
    code, lines = check(text, "-v")
    assert code == 0, lines
    assert lines[0] == ("amic.toml: OK: 1 bus, 1 meter (1 dlt645-2007), 1 schedule, "
                        "0 areas (0 with an area master)")
    assert not [line for line in lines if "listener" in line or "concentrator" in line]


EXPECTED = ('expected a DL/T645 protocol ("dlt645-2007", "dlt645-1997") for a meter on '
            'concentrator "tq-2" (its AFN10 forwarding carries DL/T645 only), got "modbus"')


def test_a_modbus_meter_behind_a_concentrator_is_refused_at_its_protocol_line() -> None:
    text = BASE + MODBUS
    line = text.splitlines().index('protocol = "modbus"') + 1
    code, lines = check(text)
    assert code == 78
    assert lines == [f'amic.toml:{line}: [[meter]] #5 (meter_id "C4"): key "protocol": '
                     + EXPECTED]
    with pytest.raises(ConfigError) as info:
        load_settings(Path("amic.toml"))
    assert [str(p) for p in info.value.problems] == lines  # amic run refuses it alike


def test_a_modbus_meter_behind_a_concentrator_in_the_ledger_is_refused_at_its_row() -> None:
    Path("meters.csv").write_text(
        "meter_id,address,bus,pn,protocol,profile\n"
        "L1,000258000003,tq-2,3,dlt645-2007,\n"
        "L2,7,tq-2,4,modbus,acrel-dtsy1352\n"
        "L3,8,line-1,,modbus,acrel-dtsy1352\n", encoding="utf-8")
    text = BASE.replace("[schedule.s]", '[meters]\nledger = "meters.csv"\n\n[schedule.s]')
    text = text.replace('quantities = ["energy_active_forward_total"]',
                        'quantities = ["energy_active_forward_total"]\n'
                        'meters = ["protocol:dlt645-2007"]')
    code, lines = check(text)
    assert code == 78
    # the same Modbus meter on a plain bus (L3) is fine
    assert lines == ['meters.csv:3: row 2 (meter_id "L2"): column "protocol": ' + EXPECTED]
    Path("meters.csv").write_text(
        "meter_id,address,bus,pn,protocol,profile\nL1,000258000003,tq-2,3,dlt645-2007,\n"
        "L3,8,line-1,,modbus,acrel-dtsy1352\n", encoding="utf-8")
    code, lines = check(text)
    assert code == 0, lines
    assert "2 concentrators, 6 meters (4 dlt645-2007, 1 dlt645-1997, 1 modbus)" in lines[0]

"""``amic read`` against a fake meter served from a background thread."""

from __future__ import annotations

import datetime as dt
import json
import subprocess
import sys
from collections.abc import Iterator
from decimal import Decimal

import pytest
from click.testing import CliRunner, Result
from fake_dlt645 import FakeMeter, threaded_tcp_meter

from collector.cli import main

ADDR = "000000000123"


def fake() -> FakeMeter:
    m = FakeMeter(ADDR)
    for name, value in [("voltage_a", "220.1"), ("voltage_b", "221.0"), ("voltage_c", "219.9"),
                        ("energy_active_combined_total", "1235.06"),
                        ("energy_active_forward_total", "1234.56"),
                        ("energy_active_reverse_total", "0.50"), ("frequency", "50.01"),
                        ("current_a", "-1.250")]:
        m.set(name, Decimal(value))
    m.set("status_word_1", 0)
    m.set("status_word_3", 0x0150)  # relay open, relay command open, energy-prepaid
    m.set("meter_date", dt.date(2024, 5, 6))
    m.set("meter_time", dt.time(12, 34, 56))
    m.set("meter_address", ADDR)
    return m


@pytest.fixture(scope="module")
def meter() -> FakeMeter:
    return fake()


@pytest.fixture(scope="module")
def target(meter: FakeMeter) -> Iterator[str]:
    with threaded_tcp_meter(meter) as port:
        yield f"tcp://127.0.0.1:{port}"


def amic_read(*args: str) -> Result:
    return CliRunner().invoke(main, ["read", *args])


def one_error_line(result: Result) -> str:
    assert result.stdout == ""
    lines = result.stderr.splitlines()
    assert len(lines) == 1, result.stderr
    assert "Traceback" not in result.stderr
    assert result.exception is None or isinstance(result.exception, SystemExit)
    return lines[0]


def test_table(target: str) -> None:
    r = amic_read("--target", target, "--address", "123", "energy", "voltage", "frequency",
                  "status", "datetime", "address")
    assert r.exit_code == 0, r.stderr
    rows = [line.split() for line in r.stdout.splitlines()]
    assert rows[0] == ["QUANTITY", "VALUE", "UNIT"]
    table = {row[0]: row[1:] for row in rows[1:]}
    assert table["energy_active_forward_total"] == ["1234.56", "kWh"]
    assert table["energy_active_reverse_total"] == ["0.50", "kWh"]
    assert table["voltage_b"] == ["221.0", "V"]
    assert table["frequency"] == ["50.01", "Hz"]
    assert table["meter_date"] == ["2024-05-06"]
    assert table["meter_time"] == ["12:34:56"]
    assert table["meter_address"] == [ADDR]
    assert table["status_word_1"] == ["0x0000", "(none", "set)"]
    status3 = r.stdout.splitlines()[[row[0] for row in rows].index("status_word_3")]
    assert "0x0150" in status3
    assert "relay_open, relay_command_open, prepaid_type=1" in status3
    assert list(table) == [
        "energy_active_combined_total", "energy_active_forward_total",
        "energy_active_reverse_total", "voltage_a", "voltage_b", "voltage_c", "frequency",
        "status_word_1", "status_word_3", "meter_date", "meter_time", "meter_address"]


def test_json(target: str) -> None:
    r = amic_read("--target", target, "--address", "AAAAAAAAAAAA", "--json", "voltage_a",
                  "current_a", "02800002", "status_word_3")
    assert r.exit_code == 0, r.stderr
    lines = [json.loads(line) for line in r.stdout.splitlines()]  # JSON Lines
    assert {x.pop("address") for x in lines} == {ADDR}  # the meter that answered
    assert {x.pop("protocol") for x in lines} == {"dlt645-2007"}
    assert lines[:3] == [
        {"name": "voltage_a", "di": "02010100", "value": 220.1, "unit": "V"},
        {"name": "current_a", "di": "02020100", "value": -1.25, "unit": "A"},
        {"name": "frequency", "di": "02800002", "value": 50.01, "unit": "Hz"},
    ]
    status = lines[3]
    assert status["name"] == "status_word_3" and status["unit"] == ""
    assert status["value"]["raw"] == 0x0150 and status["value"]["relay_open"] == 1


def test_raw_block_di_is_listed_member_by_member(target: str, meter: FakeMeter) -> None:
    meter.set_di(0x0201FF00, {"voltage_a": Decimal("230.0"), "voltage_b": Decimal("231.0"),
                              "voltage_c": Decimal("232.0")})
    try:
        r = amic_read("--target", target, "--address", ADDR, "--json", "0201ff00")
    finally:
        del meter.values[0x0201FF00]
    assert r.exit_code == 0, r.stderr
    assert [(x["name"], x["value"]) for x in map(json.loads, r.stdout.splitlines())] == [
        ("voltage_a", 230.0), ("voltage_b", 231.0), ("voltage_c", 232.0)]


def test_no_reply_exits_1_with_one_line(target: str, meter: FakeMeter) -> None:
    meter.silent.add(0x02800002)
    try:
        r = amic_read("--target", target, "--address", ADDR, "--timeout-ms", "50",
                      "voltage_a", "frequency")
    finally:
        meter.silent.clear()
    assert r.exit_code == 1
    assert one_error_line(r) == (f"amic read: meter {ADDR}: no reply to read frequency "
                                 f"(02800002) within 50 ms")


def test_timeout_from_the_target_url(target: str, meter: FakeMeter) -> None:
    meter.silent.add(0x02800002)
    try:
        r = amic_read("--target", f"{target}?td_ms=40", "--address", ADDR, "frequency")
    finally:
        meter.silent.clear()
    assert r.exit_code == 1
    assert "within 40 ms" in one_error_line(r)


def test_abnormal_reply_exits_1_naming_the_error(target: str) -> None:
    r = amic_read("--target", target, "--address", ADDR, "balance")  # fake has no balance
    assert r.exit_code == 1
    assert one_error_line(r) == (f"amic read: meter {ADDR} refused read balance_amount "
                                 f"(00900200): no_requested_data")


def test_absent_meter_exits_1(target: str) -> None:
    r = amic_read("--target", target, "--address", "000000000124", "--timeout-ms", "50",
                  "voltage_a")
    assert r.exit_code == 1  # the fake ignores requests for other meters
    assert "meter 000000000124: no reply to read voltage_a" in one_error_line(r)


@pytest.mark.parametrize(("args", "message"), [
    (["--target", "tcp://127.0.0.1", "--address", ADDR, "voltage"],
     "amic read: target 'tcp://127.0.0.1': missing ':PORT' after host '127.0.0.1'"),
    (["--target", "ftp://x:1", "--address", ADDR, "voltage"],
     "amic read: target 'ftp://x:1': scheme 'ftp' is not tcp or serial"),
    (["--target", "tcp://127.0.0.1:1", "--address", "12x", "voltage"],
     "amic read: meter address '12x': only digits 0-9 and wildcard A allowed"),
    (["--target", "tcp://127.0.0.1:1", "--address", ADDR, "voltage", "voltage_z"],
     "amic read: unknown quantity 'voltage_z': not a group (energy, voltage, current, power, "
     "pf, frequency, balance, status, datetime, address), a quantity name or a DL/T645-2007 "
     "DI in hex"),
    (["--target", "tcp://127.0.0.1:1", "--address", ADDR, "--protocol", "dlt645-1997",
      "frequency"],
     "amic read: quantity 'frequency' has no DL/T645-1997 data identifier "
     "(asked for as 'frequency')"),
])
def test_bad_arguments_exit_2_with_one_line(args: list[str], message: str) -> None:
    r = amic_read(*args)
    assert r.exit_code == 2
    assert one_error_line(r) == message


def test_nothing_listening_exits_1() -> None:
    r = amic_read("--target", "tcp://127.0.0.1:1", "--address", ADDR, "voltage")
    assert r.exit_code == 1
    line = one_error_line(r)
    assert line.startswith(f"amic read: meter {ADDR}: tcp://127.0.0.1:1: cannot connect")


def test_missing_quantity_is_a_usage_error() -> None:
    r = amic_read("--target", "tcp://127.0.0.1:1", "--address", ADDR)
    assert r.exit_code == 2
    assert "QUANTITY" in r.stderr


def test_real_process_prints_no_traceback(target: str) -> None:
    # The installed entry point, as an operator runs it.
    code = "from collector.cli import main; main()"
    ok = subprocess.run(
        [sys.executable, "-c", code, "read", "--target", target, "--address", ADDR, "--json",
         "voltage_a"], capture_output=True, text=True, timeout=20)
    assert ok.returncode == 0, ok.stderr
    assert json.loads(ok.stdout)["value"] == 220.1
    bad = subprocess.run(
        [sys.executable, "-c", code, "read", "--target", target, "--address", ADDR,
         "pf"], capture_output=True, text=True, timeout=20)
    assert bad.returncode == 1
    assert bad.stdout == ""
    assert bad.stderr == (f"amic read: meter {ADDR} refused read power_factor_total "
                          f"(02060000): no_requested_data\n")


def test_a_quantity_asked_twice_is_read_once(target: str) -> None:
    """Groups and names expand as in the collector's read command (one
    expand_quantities): in order, without repeats."""
    r = amic_read("--target", target, "--address", "123", "voltage_b", "voltage",
                  "VOLTAGE_A")
    assert r.exit_code == 0, r.stderr
    names = [line.split()[0] for line in r.stdout.splitlines()[1:]]
    assert names == ["voltage_b", "voltage_a", "voltage_c"]


def test_one_quantity_expansion() -> None:
    """``amic read`` and the collector's read command share the expansion of groups."""
    import importlib

    from collector.commands import remote

    read = importlib.import_module("collector.cli.read")
    assert read.expand_quantities is remote.expand_quantities

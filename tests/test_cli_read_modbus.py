"""``amic read --protocol modbus`` against the Modbus simulator (TCP, RTU over TCP, a pty)."""

from __future__ import annotations

import asyncio
import datetime as dt
import json
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from decimal import Decimal
from typing import Any

import pytest
from click.testing import CliRunner, Result

from collector.cli import main
from collector.config.profiles import load_profile
from simulators.meter import ManualClock
from simulators.modbus import ModbusSimulator

PROFILE = "generic-energy-meter"
START = dt.datetime(2024, 3, 1, 10, 0, 0)


@contextmanager
def simulator(transport: str, *, pty: bool = False) -> Iterator[ModbusSimulator]:
    """Two meters (units 1, 2) on a manual clock, served from a background thread."""
    sim = ModbusSimulator(load_profile(PROFILE), meters=2, transport=transport,  # type: ignore[arg-type]
                          pty=pty, seed=5, clock=ManualClock(START))
    loop = asyncio.new_event_loop()
    loop.run_until_complete(sim.start())
    thread = threading.Thread(target=loop.run_forever, daemon=True)
    thread.start()
    try:
        yield sim
    finally:
        loop.call_soon_threadsafe(loop.stop)
        thread.join(5)
        loop.run_until_complete(sim.stop())
        loop.close()


@pytest.fixture(scope="module")
def tcp() -> Iterator[ModbusSimulator]:
    with simulator("tcp") as sim:
        yield sim


@pytest.fixture(scope="module")
def rtu() -> Iterator[ModbusSimulator]:
    with simulator("rtu-tcp", pty=True) as sim:
        yield sim


def amic_read(*args: str) -> Result:
    return CliRunner().invoke(main, ["read", "--protocol", "modbus", *args])


def expected(sim: ModbusSimulator, unit: int, name: str) -> Decimal:
    value = sim.model(unit).read(name)
    assert isinstance(value, Decimal | int)
    return Decimal(value)


def table(result: Result) -> dict[str, list[str]]:
    rows = [line.split() for line in result.stdout.splitlines()]
    assert rows[0] == ["QUANTITY", "VALUE", "UNIT"]
    return {row[0]: row[1:] for row in rows[1:]}


def close(got: str, want: Decimal, scale: str) -> None:
    """The register holds the value rounded to its scale."""
    assert abs(Decimal(got) - want) <= Decimal(scale) / 2, (got, want)


def test_table_over_modbus_tcp(tcp: ModbusSimulator) -> None:
    r = amic_read("--target", f"tcp://127.0.0.1:{tcp.port}", "--unit", "2",
                  "--profile", PROFILE, "voltage", "energy_active_forward_total")
    assert r.exit_code == 0, r.stderr
    rows = table(r)
    assert list(rows) == ["voltage_a", "voltage_b", "voltage_c",
                          "energy_active_forward_total"]  # a group gives its members
    for phase in "abc":
        assert rows[f"voltage_{phase}"][1] == "V"
        close(rows[f"voltage_{phase}"][0], expected(tcp, 2, f"voltage_{phase}"), "0.1")
    assert rows["energy_active_forward_total"][1] == "kWh"
    close(rows["energy_active_forward_total"][0],
          expected(tcp, 2, "energy_active_forward_total"), "0.01")


@pytest.mark.parametrize("how", ["rtu-over-tcp", "serial-pty"])
def test_json_lines_over_rtu(rtu: ModbusSimulator, how: str) -> None:
    target = (f"tcp://127.0.0.1:{rtu.port}" if how == "rtu-over-tcp"
              else f"serial://{rtu.pty_path}?baud=9600&parity=N")
    framing = ["--framing", "rtu"] if how == "rtu-over-tcp" else []
    r = amic_read("--target", target, "--unit", "1", "--profile", PROFILE, *framing,
                  "--json", "current_a", "frequency")
    assert r.exit_code == 0, r.stderr
    docs: list[dict[str, Any]] = [json.loads(line) for line in r.stdout.splitlines()]
    assert [(d["name"], d["unit"]) for d in docs] == [("current_a", "A"), ("frequency", "Hz")]
    for d in docs:
        assert (d["address"], d["protocol"], d["profile"], d["framing"]) == \
            ("1", "modbus", PROFILE, "rtu")
        assert isinstance(d["value"], float | int)
    close(str(docs[0]["value"]), expected(rtu, 1, "current_a"), "0.01")


def test_an_absent_unit_exits_1_naming_it(tcp: ModbusSimulator) -> None:
    r = amic_read("--target", f"tcp://127.0.0.1:{tcp.port}", "--unit", "9",
                  "--profile", PROFILE, "--timeout-ms", "300", "voltage_a")
    assert r.exit_code == 1
    assert r.stdout == ""
    [line] = r.stderr.splitlines()
    assert line.startswith("amic read: unit 9: ")


@pytest.mark.parametrize("args, message", [
    (["--unit", "1", "--profile", PROFILE, "voltage_a"], "missing --target"),
    (["--target", "tcp://127.0.0.1:1", "--profile", PROFILE, "voltage_a"], "missing --unit"),
    (["--target", "tcp://127.0.0.1:1", "--unit", "1", "voltage_a"], "missing --profile"),
    (["--target", "tcp://127.0.0.1:1", "--unit", "1", "--profile", "no-such", "voltage_a"],
     "--profile"),
    (["--target", "tcp://127.0.0.1:1", "--unit", "1", "--profile", PROFILE, "balance"],
     f"profile {PROFILE} has no quantity of group 'balance'"),
    (["--target", "tcp://127.0.0.1:1", "--unit", "1", "--profile", PROFILE, "voltage_z"],
     "unknown quantity 'voltage_z'"),
    (["--target", "tcp://127.0.0.1:1", "--unit", "1", "--profile", PROFILE,
      "--address", "123", "voltage_a"], "--address is for DL/T645"),
    (["--target", "serial:///dev/null", "--unit", "1", "--profile", PROFILE,
      "--framing", "tcp", "voltage_a"], "--framing tcp (MBAP) is for tcp://"),
    (["--target", "tcp://127.0.0.1:1", "--unit", "0", "--profile", PROFILE,
      "--framing", "rtu", "voltage_a"], "RTU unit ids are 1-247"),
])
def test_bad_arguments_exit_2_with_one_line(args: list[str], message: str) -> None:
    r = amic_read(*args)
    assert r.exit_code == 2, r.stdout
    [line] = r.stderr.splitlines()
    assert line.startswith("amic read: ") and message in line, line


def test_modbus_options_need_protocol_modbus() -> None:
    r = CliRunner().invoke(main, ["read", "--target", "tcp://127.0.0.1:1", "--address", "1",
                                  "--unit", "1", "voltage"])
    assert r.exit_code == 2
    assert "--unit: only with --protocol modbus" in r.stderr

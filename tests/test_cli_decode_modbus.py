"""``amic decode --protocol modbus-rtu``: Modbus RTU frames as JSON, named per a profile."""

from __future__ import annotations

import json
from typing import Any

import pytest
from click.testing import CliRunner, Result

from collector.cli import main
from protocols.modbus import (
    exception_pdu,
    read_reply_pdu,
    read_request_pdu,
    rtu_frame,
    write_coil_pdu,
    write_multiple_pdu,
    write_register_pdu,
)

REQUEST = rtu_frame(5, read_request_pdu(3, 11, 2)).hex()  # voltage_a, current_a
REPLY = rtu_frame(5, read_reply_pdu(3, [2201, 512])).hex()


def decode(*args: str) -> Result:
    return CliRunner().invoke(main, ["decode", "--protocol", "modbus-rtu", *args])


def objects(result: Result) -> list[dict[str, Any]]:
    return [json.loads(line) for line in result.stdout.splitlines()]


def test_request_and_reply() -> None:
    r = decode(REQUEST, REPLY)
    assert r.exit_code == 0, r.stderr
    req, rep = objects(r)
    assert req == {"offset": 0, "unit": 5, "function": 3,
                   "function_name": "read_holding_registers", "kind": "request",
                   "crc_ok": True, "address": 11, "count": 2}
    assert rep["offset"] == 8
    assert rep["kind"] == "response"
    assert rep["address"] == 11  # from the request before it
    assert rep["registers"] == [2201, 512]
    assert rep["crc_ok"] is True
    assert "values" not in rep


def test_profile_names_and_scales_the_registers() -> None:
    r = decode("--profile", "acrel-ddsy1352", REQUEST + REPLY)  # back to back
    assert r.exit_code == 0, r.stderr
    rep = objects(r)[1]
    assert rep["values"] == [
        {"name": "voltage_a", "address": 11, "unit": "V", "value": 220.1},
        {"name": "current_a", "address": 12, "unit": "A", "value": 5.12}]


def test_a_reply_alone_takes_start_and_needs_it_with_a_profile() -> None:
    r = decode("--profile", "acrel-ddsy1352", "--start", "11", REPLY)
    assert r.exit_code == 0, r.stderr
    assert [v["name"] for v in objects(r)[0]["values"]] == ["voltage_a", "current_a"]
    r = decode("--profile", "acrel-ddsy1352", REPLY)
    assert r.exit_code == 2
    assert "byte 0: a read reply does not carry its start address" in r.stderr
    assert "--start" in r.stderr
    r = decode(REPLY)  # without a profile the words are shown, the address unknown
    assert r.exit_code == 0
    assert objects(r)[0]["address"] is None


def test_writes_and_exceptions() -> None:
    frames = [rtu_frame(1, write_coil_pdu(7, True)), rtu_frame(1, write_register_pdu(2, 9)),
              rtu_frame(1, write_multiple_pdu(16, [1, 2])), rtu_frame(1, exception_pdu(3, 2))]
    r = decode(*(f.hex() for f in frames))
    assert r.exit_code == 0, r.stderr
    coil, single, multiple, exc = objects(r)
    assert (coil["function"], coil["address"], coil["on"]) == (5, 7, True)
    assert (single["function"], single["address"], single["registers"]) == (6, 2, [9])
    assert (multiple["function"], multiple["count"], multiple["registers"]) == (16, 2, [1, 2])
    assert exc["kind"] == "exception"
    assert (exc["function"], exc["exception"], exc["exception_name"]) == \
        (3, 2, "ILLEGAL_DATA_ADDRESS")


def test_bad_crc_prints_the_frame_with_crc_ok_false_and_exits_2() -> None:
    bad = REPLY[:-4] + "0000"
    r = decode(REQUEST, bad)
    assert r.exit_code == 2
    req, rep = objects(r)
    assert req["crc_ok"] is True
    assert rep["crc_ok"] is False and rep["offset"] == 8
    assert r.stderr.strip().startswith("amic decode: byte 15: CRC 0000 does not match")
    assert "Traceback" not in r.stderr


@pytest.mark.parametrize("args, message", [
    (["0103"], "byte 2: frame at byte 0 truncated"),
    (["01 2B 00 00"], "byte 1: function 2B is not one of"),
    ([REQUEST + "05"], "byte 8: 1 byte(s) left"),
    ([rtu_frame(1, bytes((3, 5, 0, 1, 2, 3, 4))).hex()], "byte 2: byte count 5 is odd"),
    (["01", "0x3g"], "argument 2, character 2"),
    ([""], "byte 0: no input"),
    (["--start", "70000", REPLY], "70000"),
    (["--profile", "no-such-profile", REPLY], "--profile"),
])
def test_bad_input_exits_2_naming_where(args: list[str], message: str) -> None:
    r = decode(*args)
    assert r.exit_code == 2, r.stdout
    assert message in r.stderr
    assert "Traceback" not in r.stderr


def test_profile_is_for_modbus_only() -> None:
    r = CliRunner().invoke(main, ["decode", "--profile", "acrel-ddsy1352", "68"])
    assert r.exit_code == 2
    assert "--protocol modbus-rtu" in r.stderr

"""``amic decode --protocol 3761``: one JSON object per frame, exit 2 naming the bad byte."""

from __future__ import annotations

import datetime as dt
import json
from decimal import Decimal
from typing import Any

import pytest
from click.testing import CliRunner

from collector.cli import main
from protocols.qgdw3761 import (
    DataUnit,
    Direction,
    Frame,
    PresentValues,
    build_frame,
    encode_units,
)

K1 = "68 3A 00 3A 00 68 E9 49 24 45 58 00 02 70 00 00 01 00 09 01 70 16"
K3 = "684A004A0068C949244558000270000004001741170367193B16"
K5 = "68 32 00 32 00 68 7B 01 58 11 28 02 0C 60 02 01 01 10 8F 16"


def _run(*args: str) -> tuple[int, list[dict[str, Any]], str]:
    result = CliRunner().invoke(main, ["decode", "--protocol", "3761", *args])
    lines = [json.loads(x) for x in result.stdout.splitlines() if x.strip()]
    return result.exit_code, lines, result.stderr


def test_login_heartbeat_and_read_request() -> None:
    code, out, _ = _run(K1, K3, K5)
    assert code == 0
    login, beat, read = out
    assert {k: login[k] for k in ("dir", "prm", "afn", "seq", "a1", "a2", "units")} == {
        "dir": "up", "prm": True, "afn": 2, "seq": 0x70, "a1": "2449", "a2": 22597,
        "units": [{"pn": 0, "fn": 1, "name": "login"}]}
    assert login["ec"] == [9, 1]
    assert beat["units"] == [{"pn": 0, "fn": 3, "name": "heartbeat",
                              "values": {"clock": "2019-07-03T17:41:17"}}]
    assert read["dir"] == "down" and read["afn"] == 0x0C and read["a1"] == "5801"
    assert read["units"] == [{"pn": 2, "fn": 129, "name": "forward_active_energy"}]


def test_f25_values_with_units() -> None:
    value = PresentValues(dt.datetime(2024, 5, 6, 10, 15), voltage_a=Decimal("230.5"),
                          current_a=Decimal("-5.123"), power_factor_total=Decimal("0.987"))
    raw = build_frame(Frame(0x88, "4403", 7, 0, 0x0C, 0x60,
                            encode_units(0x0C, Direction.UP, [DataUnit(3, 25, value)])))
    code, out, _ = _run(raw.hex())
    assert code == 0
    [unit] = out[0]["units"]
    assert unit["pn"] == 3 and unit["fn"] == 25 and unit["name"] == "present_values"
    assert unit["values"]["read_time"] == "2024-05-06T10:15:00"
    assert unit["readings"]["voltage_a"] == {"value": 230.5, "unit": "V"}
    assert unit["readings"]["current_a"] == {"value": -5.123, "unit": "A"}
    assert unit["readings"]["power_factor_total"] == {"value": 0.987, "unit": ""}
    assert unit["readings"]["voltage_b"] == {"value": None, "unit": "V"}


def test_frames_back_to_back_with_preamble() -> None:
    code, out, _ = _run("fefe" + K1.replace(" ", "") + K3)
    assert code == 0 and [o["units"][0]["fn"] for o in out] == [1, 3]


def test_unknown_fn_is_shown_raw() -> None:
    raw = build_frame(Frame(0x88, "0200", 1, 0, 0x0C, 0x60, bytes.fromhex("0000 8000 01"
                                                                          .replace(" ", ""))))
    code, out, _ = _run(raw.hex())
    assert code == 0
    assert out[0]["units"] == [{"pn": [0], "fn": [8], "name": None, "raw": "0000800001"}]


K1_BYTES = K1.replace(" ", "")


@pytest.mark.parametrize(
    ("hex_input", "message"),
    [
        (K1_BYTES[:-2] + "17", "byte 21: expected end byte 16, got 17"),
        (K1_BYTES[:-4] + "7116", "byte 20: checksum 71 does not match computed 70"),
        ("683A003E00" + K1_BYTES[10:], "byte 3: the two copies of L differ"),
        ("6839003900" + K1_BYTES[10:], "byte 1: protocol id 1"),
        (K1_BYTES[:-6], "byte 19: frame truncated"),
        ("fefe12", "byte 2: expected start byte 68, got 12"),
        (K1_BYTES + "00", "byte 22: expected start byte 68"),
        (K1_BYTES + K1_BYTES[:-2] + "17", "byte 43: expected end byte 16"),
        ("68zz", "argument 1, character 3: 'z' is not a hex digit"),
    ],
)
def test_bad_input_names_the_byte(hex_input: str, message: str) -> None:
    code, out, err = _run(hex_input)
    assert code == 2
    assert out == []
    assert message in err
    assert "Traceback" not in err


def test_data_unit_error_names_offset() -> None:
    # F129 reply cut short after M: the values start at byte 24
    raw = build_frame(Frame(0x88, "0200", 1, 0, 0x0C, 0x60,
                            bytes.fromhex("02010110") + bytes.fromhex("1510060524") + b"\x01"))
    code, _, err = _run(raw.hex())
    assert code == 2 and "byte 24: data unit" in err


def test_profile_option_refused() -> None:
    code, _, err = _run("--start", "1", K1)
    assert code == 2 and "--protocol modbus-rtu" in err

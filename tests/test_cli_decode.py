"""``amic decode``: one JSON object per frame, exit 2 with the byte offset on bad input."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from click.testing import CliRunner

from collector.cli import main

VOLTAGE_B = "fefefefe6801000000000068910633353435cb545816"
ABNORMAL = "fefefefe6801000000000068d10135d816"
READ_REQ = "68 01 00 00 00 00 00 68 11 04 33 33 33 33 b2 16"


def _run(*args: str) -> tuple[int, list[dict[str, object]], str]:
    result = CliRunner().invoke(main, ["decode", *args])
    lines = [json.loads(x) for x in result.stdout.splitlines() if x.strip()]
    return result.exit_code, lines, result.stderr


def test_reply_request_and_abnormal() -> None:
    code, out, _ = _run(VOLTAGE_B, ABNORMAL, READ_REQ)
    assert code == 0
    assert out[0] == {
        "version": "2007", "address": "000000000001", "control": 0x91, "function": "read",
        "direction": "reply", "abnormal": False, "di": "02010200", "name": "voltage_b",
        "value": 219.8, "unit": "V",
    }
    assert out[1]["abnormal"] is True and out[1]["error"] == ["no_requested_data"]
    assert out[2]["direction"] == "request" and out[2]["di"] == "00000000"
    assert out[2]["name"] == "energy_active_combined_total"


def test_frames_back_to_back_in_one_argument() -> None:
    code, out, _ = _run(VOLTAGE_B + ABNORMAL)
    assert code == 0 and len(out) == 2


def test_block_and_status_word_values() -> None:
    from decimal import Decimal

    from protocols.dlt645 import ReadReply, build_frame, by_name, encode_value

    block = by_name("voltage_block")
    vals = {"voltage_a": Decimal("230.1"), "voltage_b": Decimal("229.9"),
            "voltage_c": Decimal("231.0")}
    raw = build_frame(ReadReply(address="000000001234", di=block.di,
                                body=encode_value(block, vals)).to_frame()).hex()
    sw3 = by_name("status_word_3")
    raw2 = build_frame(ReadReply(address="000000001234", di=sw3.di,
                                 body=(0x0210).to_bytes(2, "little")).to_frame()).hex()
    code, out, _ = _run(raw, raw2)
    assert code == 0
    assert out[0]["value"] == {"voltage_a": 230.1, "voltage_b": 229.9, "voltage_c": 231.0}
    status = out[1]["value"]
    assert isinstance(status, dict)
    assert status["raw"] == 0x0210 and status["relay_open"] == 1 and status["prepaid_type"] == 2


def test_1997_frame() -> None:
    from protocols.dlt645 import ReadReply, Version, build_frame

    raw = build_frame(ReadReply(address="000000000007", version=Version.V1997, di=0xB611,
                                body=bytes.fromhex("2002")).to_frame()).hex()
    code, out, _ = _run(raw)
    assert code == 0
    assert out[0]["version"] == "1997" and out[0]["di"] == "B611"
    assert out[0]["name"] == "voltage_a" and out[0]["value"] == 220


@pytest.mark.parametrize(
    ("hex_input", "message"),
    [
        ("6801000000000068910833333433833334335417", "byte 19: expected end byte 16, got 17"),
        ("6801000000000068910833333433833334335516", "byte 18: checksum 55"),
        ("6801000000000012910833333433833334335416", "byte 7: expected second start byte 68"),
        ("680100000000006891083333343383333433", "byte 18: frame truncated"),
        ("fefe12", "byte 2: expected start byte 68, got 12"),
        ("6801000000000068910833333433833334335416aa", "byte 20: expected start byte 68"),
        ("68zz", "argument 1, character 3: 'z' is not a hex digit"),
        ("681", "odd number of hex digits"),
    ],
)
def test_bad_input_names_the_byte(hex_input: str, message: str) -> None:
    code, out, err = _run(hex_input)
    assert code == 2
    assert out == []
    assert message in err
    assert "Traceback" not in err


def test_data_field_error_names_offset() -> None:
    # A valid frame whose read reply has a 3-byte DI: data field starts at byte 14.
    from protocols.dlt645 import Frame, build_frame

    raw = build_frame(Frame("000000000001", 0x91, b"\x00\x01\x00")).hex()
    code, _, err = _run(raw)
    assert code == 2 and "byte 14: data field" in err


def test_console_script_exit_status() -> None:
    exe = Path(sys.executable).with_name("amic")
    bad = subprocess.run([str(exe), "decode", "6801"], capture_output=True, text=True)
    assert bad.returncode == 2 and "Traceback" not in bad.stderr
    assert bad.stderr.strip().count("\n") == 0
    good = subprocess.run([str(exe), "decode", VOLTAGE_B], capture_output=True, text=True)
    assert good.returncode == 0 and json.loads(good.stdout)["value"] == 219.8

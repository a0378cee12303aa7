"""The frames of ../shared/reference/dlt645_frames.jsonl decode to what they claim."""

from __future__ import annotations

import json
from decimal import Decimal
from pathlib import Path

import pytest

from protocols.dlt645 import (
    AbnormalReply,
    ReadReply,
    ReadRequest,
    Version,
    build_frame,
    decode_message,
    parse_frame,
)

REFERENCE = Path(__file__).resolve().parents[2] / "shared" / "reference" / "dlt645_frames.jsonl"
LOCAL_COPY = Path(__file__).with_name("data") / "dlt645_frames.jsonl"


def _load() -> list[dict[str, object]]:
    path = REFERENCE if REFERENCE.exists() else LOCAL_COPY
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


FRAMES = _load()


def test_reference_copy_is_current() -> None:
    # The suite runs from a clean clone where ../shared may be absent: it uses the copy.
    if REFERENCE.exists():
        assert LOCAL_COPY.read_text() == REFERENCE.read_text()
    assert len(FRAMES) >= 20


@pytest.mark.parametrize("case", FRAMES, ids=lambda c: str(c["meaning"]))
def test_reference_frame(case: dict[str, object]) -> None:
    raw = bytes.fromhex(str(case["hex"]))
    frame = parse_frame(raw)
    message = decode_message(frame)
    assert message.version is Version(case["version"])
    assert frame.address == case["address"]
    assert frame.is_reply == (case["direction"] == "reply")
    # What we build from the decoded message is byte for byte the reference frame.
    assert build_frame(message.to_frame()) == raw
    if case["direction"] == "request":
        assert isinstance(message, ReadRequest)
        assert f"{message.di:08X}" == case["di"]
    elif case["abnormal"]:
        assert isinstance(message, AbnormalReply)
        assert message.errors == ("no_requested_data",)
    else:
        assert isinstance(message, ReadReply)
        assert f"{message.di:08X}" == case["di"]
        value = message.value()
        assert isinstance(value, Decimal)
        assert value == Decimal(str(case["value"]))


def test_signed_values_from_reference() -> None:
    by_di = {c["di"]: c for c in FRAMES if c["direction"] == "reply" and not c.get("abnormal")}
    current_b = decode_message(parse_frame(bytes.fromhex(str(by_di["02020200"]["hex"]))))
    power_a = decode_message(parse_frame(bytes.fromhex(str(by_di["02030100"]["hex"]))))
    assert isinstance(current_b, ReadReply) and isinstance(power_a, ReadReply)
    assert current_b.value() == Decimal("-0.750")
    assert power_a.value() == Decimal("-0.5")
    assert current_b.item is not None and current_b.item.unit == "A"
    assert power_a.item is not None and power_a.item.unit == "kW"

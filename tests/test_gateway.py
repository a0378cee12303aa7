"""MQTT gateways: the report ingestor (every accepted form, every reject reason), the
gateway simulator against a real mosquitto (reports, transparent frames, broker restart)
and ``amic simulate gateway``."""

from __future__ import annotations

import asyncio
import datetime as dt
import json
import logging
import os
import signal
import subprocess
import time
from collections.abc import AsyncIterator, Callable, Iterator
from decimal import Decimal
from pathlib import Path
from typing import Any

import aiomqtt
import pytest
from conftest import amic_command
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from mosquitto import Broker
from pymodbus.framer import FramerRTU

from collector.config.profiles import load_profile
from collector.config.settings import MeterSettings
from collector.polling.gateway import (
    MAX_REJECTS_PER_MESSAGE,
    Reject,
    RejectReason,
    ReportIngestor,
    convert_unit,
    modbus_crc,
    split_topic,
)
from collector.store.records import Quality, Reading
from protocols.dlt645 import (
    AbnormalReply,
    Frame,
    ReadReply,
    ReadRequest,
    Version,
    build_frame,
    by_name,
    decode_message,
    encode_value,
    parse_frame,
)
from protocols.modbus import Profile
from protocols.modbus import encode_value as modbus_encode
from simulators.dlt645 import make_meters
from simulators.gateway import GatewaySimulator
from simulators.meter import ManualClock

R = RejectReason
NOW = dt.datetime(2026, 11, 24, 0, 20, tzinfo=dt.UTC)  # 08:20 in China
TOPIC = "amic-gw/gw-01/report"
RAW = "amic-gw/gw-01/raw"

METERS = (
    MeterSettings("M0001", "000000000001", "gw-01"),
    MeterSettings("M0002", "000000000002", "gw-01"),
    MeterSettings("M0005", "000000000005", "gw-01"),
    MeterSettings("M97", "000000000097", "gw-01", protocol="dlt645-1997"),
    MeterSettings("MB05", "5", "gw-01", protocol="modbus", profile="acrel-ddsy1352"),
    MeterSettings("MB07", "7", "gw-01", protocol="modbus", profile="acrel-ddsy1352"),
    MeterSettings("MB08", "8", "gw-01", protocol="modbus"),  # no profile
    MeterSettings("MB09", "9", "gw-01", protocol="modbus", profile="no-such-profile"),
    MeterSettings("M0901", "000000000901", "gw-02"),
)


class Sink:
    def __init__(self, meters: tuple[MeterSettings, ...] = METERS) -> None:
        self.rows: list[Reading] = []
        self.rejects: list[Reject] = []
        self.ing = ReportIngestor(meters, load_profile, self.rows.extend, self.rejects.append,
                                  now=lambda: NOW)

    def send(self, doc: Any, topic: str = TOPIC) -> int:
        payload = doc if isinstance(doc, bytes) else json.dumps(doc).encode()
        return self.ing.handle(topic, payload)

    def values(self) -> dict[tuple[str, str], float]:
        return {(r.meter, r.quantity): r.value for r in self.rows}

    def reasons(self) -> list[RejectReason]:
        return [r.reason for r in self.rejects]


@pytest.fixture
def sink() -> Sink:
    return Sink()


def wire(frame: Frame, preamble: int = 0) -> str:
    return build_frame(frame, preamble=preamble).hex().upper()


def rtu(pdu: bytes) -> str:
    return (pdu + modbus_crc(pdu).to_bytes(2, "little")).hex()


def rtu_reply(profile: Profile, unit: int, start: int, count: int,
              values: dict[str, str]) -> str:
    words = [0] * count
    for r in profile.registers:
        if r.name in values:
            words[r.address - start : r.end - start] = modbus_encode(r, values[r.name])
    data = b"".join(w.to_bytes(2, "big") for w in words)
    return rtu(bytes((unit, 3, len(data))) + data)


# ---- accepted forms -------------------------------------------------------------------------

def test_single_report_by_meter_id_with_iso_ts(sink: Sink) -> None:
    n = sink.send({"gateway": "gw-01", "meter": "M0001", "ts": "2026-11-24T08:15:00+08:00",
                   "values": {"voltage_a": 220.1, "current_a": 1.234,
                              "energy_active_forward_total": {"value": 1234.56, "unit": "kWh"},
                              "status_word_3": 528, "purchase_count": 3,
                              "power_factor_total": 0.95}})
    assert n == 6 and not sink.rejects
    v = sink.values()
    assert v[("M0001", "voltage_a")] == 220.1
    assert v[("M0001", "energy_active_forward_total")] == 1234.56
    assert v[("M0001", "status_word_3")] == 528
    r = sink.rows[0]
    assert r.ts == NOW and r.quality is Quality.GOOD
    assert r.meter_ts == dt.datetime(2026, 11, 24, 0, 15, tzinfo=dt.UTC)
    units = {row.quantity: row.unit for row in sink.rows}
    assert units["voltage_a"] == "V" and units["energy_active_forward_total"] == "kWh"
    assert units["power_factor_total"] == "" and sink.ing.accepted == 6


@pytest.mark.parametrize("address, meter", [
    ("000000000002", "M0002"), ("2", "M0002"), (7, "MB07"), ("7", "MB07"),
    ("000000000097", "M97"),
])
def test_report_by_address(sink: Sink, address: object, meter: str) -> None:
    assert sink.send({"address": address, "values": {"voltage_a": 230}}) == 1
    assert sink.rows[0].meter == meter and sink.rows[0].meter_ts is None


@pytest.mark.parametrize("ts", [1795479300, 1795479300000, 1795479300.5, "2026-11-24T00:15:00Z"])
def test_epoch_seconds_and_milliseconds(sink: Sink, ts: object) -> None:
    assert sink.send({"meter": "M0001", "ts": ts, "values": {"frequency": 50.01}}) == 1
    got = sink.rows[0].meter_ts
    assert got is not None and abs(got - dt.datetime(2026, 11, 24, 0, 15, tzinfo=dt.UTC)) \
        <= dt.timedelta(seconds=1)


@pytest.mark.parametrize("value, unit, stored", [
    (1234560, "Wh", 1234.56), (1.5, "MWh", 1500.0), (12.5, "KWH", 12.5), (7, "kwh", 7.0),
])
def test_energy_units_converted(sink: Sink, value: float, unit: str, stored: float) -> None:
    assert sink.send({"meter": "M0001", "values": {
        "energy_active_forward_total": {"value": value, "unit": unit}}}) == 1
    assert sink.rows[0].value == pytest.approx(stored) and sink.rows[0].unit == "kWh"


def test_power_and_voltage_prefixes(sink: Sink) -> None:
    assert sink.send({"meter": "M0001", "values": {
        "power_active_total": {"value": 1500, "unit": "W"},
        "voltage_a": {"value": 0.2201, "unit": "kV"},
        "current_n": {"value": 250, "unit": "mA"}}}) == 3
    v = sink.values()
    assert v[("M0001", "power_active_total")] == 1.5
    assert v[("M0001", "voltage_a")] == pytest.approx(220.1)
    assert v[("M0001", "current_n")] == 0.25


def test_convert_unit_table() -> None:
    assert convert_unit(Decimal("1000"), "Wh", "kWh") == Decimal("1.000")
    assert convert_unit(Decimal(1), "mWh", "kWh") is None  # not a prefix we take
    assert convert_unit(Decimal(1), "mw", "kW") is None  # m/M must be exact
    assert convert_unit(Decimal(1), "", "") == Decimal(1)


def test_list_form_several_meters(sink: Sink) -> None:
    n = sink.send({"gateway": "gw-01", "ts": "2026-11-24T08:15:00+08:00", "readings": [
        {"meter": "M0001", "values": {"voltage_a": 220.1}},
        {"address": "000000000002", "ts": 1795479240, "values": {"voltage_a": 221.0}},
        {"address": 5, "values": {"voltage_a": 219.9}},  # ambiguous: DL/T645 5 and unit 5
        {"meter": "MB07", "values": {"voltage_a": 229.0, "voltage_x": 1}},
    ]})
    assert n == 3
    ts = {r.meter: r.meter_ts for r in sink.rows}
    assert ts["M0001"] == dt.datetime(2026, 11, 24, 0, 15, tzinfo=dt.UTC)
    assert ts["M0002"] == dt.datetime(2026, 11, 24, 0, 14, tzinfo=dt.UTC)
    assert sink.reasons() == [R.AMBIGUOUS_METER, R.UNKNOWN_QUANTITY]
    assert "readings[2]" in sink.rejects[0].detail
    assert '"address": 5' in sink.rejects[0].payload_excerpt
    assert "voltage_x" in sink.rejects[1].payload_excerpt


def test_partial_message_keeps_the_valid_values(sink: Sink) -> None:
    n = sink.send({"meter": "M0001", "values": {"voltage_a": 220.1, "voltage_b": "221",
                                                 "voltage_c": {"value": 1, "unit": "kWh"}}})
    assert n == 1 and sink.values() == {("M0001", "voltage_a"): 220.1}
    assert sorted(sink.reasons()) == sorted([R.BAD_VALUE, R.UNIT_MISMATCH])
    assert all(r.topic == TOPIC and r.ts == NOW for r in sink.rejects)
    assert sink.ing.counts == {R.BAD_VALUE: 1, R.UNIT_MISMATCH: 1}


def test_raw_dlt645_block_and_single_frames(sink: Sink) -> None:
    clock = ManualClock(dt.datetime(2026, 11, 24, 8, 15))
    meter = make_meters(["000000000001"], clock=clock)[0]
    frames = []
    for name in ("voltage_block", "energy_active_forward_total", "status_word_3"):
        req = ReadRequest(address="000000000001", di=by_name(name).di)
        reply = meter.handle(req.to_frame())
        assert reply is not None
        frames.append(wire(reply, preamble=4 if name == "voltage_block" else 0))
    spaced = " ".join(frames[1][i:i + 2] for i in range(0, len(frames[1]), 2))
    assert sink.send({"gateway": "gw-01", "frame": frames[0]}, RAW) == 3
    assert sink.send({"frames": [spaced, frames[2]], "ts": "2026-11-24T08:15:00+08:00"},
                     RAW) == 2
    assert not sink.rejects
    v = sink.values()
    assert v[("M0001", "voltage_a")] == float(str(meter.model.read("voltage_a")))
    assert v[("M0001", "energy_active_forward_total")] == \
        float(str(meter.model.read("energy_active_forward_total")))
    assert v[("M0001", "status_word_3")] == meter.model.status_word(3)
    block = [r for r in sink.rows if r.quantity.startswith("voltage_")]
    assert {r.quality for r in block} == {Quality.BLOCK_READ}
    assert block[0].meter_ts is None and sink.rows[-1].meter_ts is not None


def test_raw_dlt645_1997(sink: Sink) -> None:
    item = by_name("energy_active_forward_total", Version.V1997)
    reply = ReadReply(address="000000000097", version=Version.V1997, di=item.di,
                      body=encode_value(item, Decimal("812345.67")))
    assert sink.send({"frame": wire(reply.to_frame())}, RAW) == 1
    assert sink.rows[0].value == 812345.67 and sink.rows[0].meter == "M97"


def test_raw_modbus_with_start_and_with_request(sink: Sink) -> None:
    profile = load_profile("acrel-ddsy1352")
    reply = rtu_reply(profile, 5, 11, 6, {"voltage_a": "220.1", "current_a": "5.12",
                                           "power_active_total": "-1.234",
                                           "power_apparent_total": "1.3",
                                           "power_factor_total": "0.95"})
    assert sink.send({"gateway": "gw-01", "unit": 5, "function": 3, "start": 11,
                      "frame": reply}, RAW) == 5
    v = sink.values()
    assert v[("MB05", "voltage_a")] == 220.1 and v[("MB05", "power_active_total")] == -1.234
    request = rtu(bytes((7, 3, 0, 0, 0, 2)))
    reply = rtu_reply(profile, 7, 0, 2, {"energy_active_combined_total": "1234.56"})
    assert sink.send({"request": request, "frame": reply,
                      "ts": "2026-11-24T08:15:00+08:00"}, RAW) == 1
    assert sink.values()[("MB07", "energy_active_combined_total")] == 1234.56
    assert not sink.rejects


def test_implausible_values_are_refused_naming_gateway_meter_quantity_and_value(
        sink: Sink, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.WARNING, "amic.gateway")
    assert sink.send({"meter": "M0001", "values": {"voltage_a": 1e308, "voltage_b": 231.0,
                                                   "frequency": -50}}) == 1
    assert sink.values() == {("M0001", "voltage_b"): 231.0}
    assert sink.reasons() == [R.IMPLAUSIBLE, R.IMPLAUSIBLE]
    assert sink.rejects[0].detail == ("meter M0001: voltage_a: 1e+308 V is outside the "
                                      "plausible range 0 to 1e+06 V")
    line = caplog.records[0].getMessage()
    assert "gw-01" in line and "M0001" in line and "voltage_a" in line and "1e+308" in line
    # The same limits for raw frames: a DL/T645 power factor of 1.5, a Modbus one of 3.
    pf = by_name("power_factor_total")
    frame = wire(ReadReply(address="000000000001", di=pf.di,
                           body=encode_value(pf, "1.5")).to_frame())
    assert sink.send({"frame": frame}, RAW) == 0
    assert sink.rejects[-1].reason is R.IMPLAUSIBLE
    assert "M0001" in sink.rejects[-1].detail and "power_factor_total: 1.5 " in \
        sink.rejects[-1].detail
    reply = rtu_reply(load_profile("acrel-ddsy1352"), 5, 11, 6,
                      {"voltage_a": "220.1", "power_factor_total": "3"})
    assert sink.send({"unit": 5, "function": 3, "start": 11, "frame": reply}, RAW) >= 1
    assert ("MB05", "voltage_a") in sink.values()
    assert ("MB05", "power_factor_total") not in sink.values()
    assert sink.rejects[-1].reason is R.IMPLAUSIBLE and "MB05" in sink.rejects[-1].detail
    assert sink.ing.counts[R.IMPLAUSIBLE] == 4


def test_broker_topics_are_not_gateway_topics(sink: Sink) -> None:
    assert split_topic("$SYS/gw-01/report") is None
    assert sink.send(_ok(), "$SYS/gw-01/report") == 0
    assert sink.reasons() == [R.BAD_TOPIC]


def test_modbus_crc_matches_pymodbus() -> None:
    for data in (b"\x01\x03\x00\x00\x00\x0a", b"\x05\x03\x02\x08\x99", bytes(range(40))):
        assert modbus_crc(data).to_bytes(2, "little") == \
            int(FramerRTU.compute_CRC(data)).to_bytes(2, "big")


def test_split_topic() -> None:
    assert split_topic("amic-gw/gw-01/report") == ("gw-01", "report")
    assert split_topic("site/a/b/gw-01/raw") == ("gw-01", "raw")
    assert split_topic("gw-01/report") is None
    assert split_topic("amic-gw/gw-01/up") is None


# ---- every reject reason --------------------------------------------------------------------

def _ok(ts: object = None, **values: Any) -> dict[str, Any]:
    doc: dict[str, Any] = {"meter": "M0001", "values": values or {"voltage_a": 220.0}}
    if ts is not None:
        doc["ts"] = ts
    return doc


CRC_BAD = wire(ReadReply(address="000000000001", di=0x02010100,
                         body=b"\x01\x22").to_frame())[:-4] + "0016"
_MB_OK = rtu(bytes((5, 3, 2, 0x08, 0x99)))

REJECTS: list[tuple[str, object, str, RejectReason]] = [
    ("too large", b"{" + b" " * 300_000 + b"}", TOPIC, R.TOO_LARGE),
    ("bad topic", _ok(), "amic-gw/gw-01/up", R.BAD_TOPIC),
    ("wildcard topic", _ok(), "amic-gw/+/report", R.BAD_TOPIC),
    ("not utf-8", b"\xff\xfe{}", TOPIC, R.NOT_JSON),
    ("not json", b"{voltage_a: 1}", TOPIC, R.NOT_JSON),
    ("NaN", b'{"meter": "M0001", "values": {"voltage_a": NaN}}', TOPIC, R.NOT_JSON),
    ("top level list", [1, 2], TOPIC, R.BAD_PAYLOAD),
    ("no values", {"meter": "M0001"}, TOPIC, R.BAD_PAYLOAD),
    ("values a list", {"meter": "M0001", "values": [1]}, TOPIC, R.BAD_PAYLOAD),
    ("no meter", {"values": {"voltage_a": 1}}, TOPIC, R.BAD_PAYLOAD),
    ("meter a number", {"meter": 1, "values": {"voltage_a": 1}}, TOPIC, R.BAD_PAYLOAD),
    ("readings not list", {"readings": {"meter": "M0001"}}, TOPIC, R.BAD_PAYLOAD),
    ("both forms", {"readings": [_ok()], **_ok()}, TOPIC, R.BAD_PAYLOAD),
    ("reading not object", {"readings": [3]}, TOPIC, R.BAD_PAYLOAD),
    ("value object without value", _ok(voltage_a={"unit": "V"}), TOPIC, R.BAD_PAYLOAD),
    ("gateway not string", {"gateway": 1, **_ok()}, TOPIC, R.BAD_PAYLOAD),
    ("gateway mismatch", {"gateway": "gw-02", **_ok()}, TOPIC, R.GATEWAY_MISMATCH),
    ("unknown gateway", _ok(), "amic-gw/gw-99/report", R.UNKNOWN_GATEWAY),
    ("unknown meter id", {"meter": "M9999", "values": {"voltage_a": 1}}, TOPIC,
     R.UNKNOWN_METER),
    ("unknown address", {"address": "000000000003", "values": {"voltage_a": 1}}, TOPIC,
     R.UNKNOWN_METER),
    ("bad address", {"address": "12x", "values": {"voltage_a": 1}}, TOPIC, R.UNKNOWN_METER),
    ("meter and address disagree", {"meter": "M0001", "address": "2",
                                    "values": {"voltage_a": 1}}, TOPIC, R.UNKNOWN_METER),
    ("wrong gateway", {"meter": "M0901", "values": {"voltage_a": 1}}, TOPIC, R.WRONG_GATEWAY),
    ("ambiguous", {"address": "5", "values": {"voltage_a": 1}}, TOPIC, R.AMBIGUOUS_METER),
    ("unknown quantity", _ok(voltage_d=1), TOPIC, R.UNKNOWN_QUANTITY),
    ("date quantity", _ok(meter_date=20261124), TOPIC, R.UNSUPPORTED_QUANTITY),
    ("unit mismatch", _ok(voltage_a={"value": 220, "unit": "kWh"}), TOPIC, R.UNIT_MISMATCH),
    ("milli spelled as mega", _ok(current_a={"value": 2, "unit": "MA"}), TOPIC,
     R.UNIT_MISMATCH),
    ("unit on a status word", _ok(status_word_3={"value": 1, "unit": "V"}), TOPIC,
     R.UNIT_MISMATCH),
    ("unit not string", _ok(voltage_a={"value": 1, "unit": 1}), TOPIC, R.BAD_PAYLOAD),
    ("string value", _ok(voltage_a="220.1"), TOPIC, R.BAD_VALUE),
    ("bool value", _ok(voltage_a=True), TOPIC, R.BAD_VALUE),
    ("null value", _ok(voltage_a=None), TOPIC, R.BAD_VALUE),
    ("fractional status", _ok(status_word_3=1.5), TOPIC, R.BAD_VALUE),
    ("negative count", _ok(purchase_count=-1), TOPIC, R.BAD_VALUE),
    ("status too big", _ok(status_word_1=70000), TOPIC, R.BAD_VALUE),
    ("overflow", b'{"meter": "M0001", "values": {"voltage_a": 1e999}}', TOPIC, R.BAD_VALUE),
    ("naive ts", _ok("2026-11-24T08:15:00"), TOPIC, R.BAD_TIMESTAMP),
    ("garbage ts", _ok("yesterday"), TOPIC, R.BAD_TIMESTAMP),
    ("1970 ts", _ok(0), TOPIC, R.BAD_TIMESTAMP),
    ("bool ts", _ok(True), TOPIC, R.BAD_TIMESTAMP),
    ("huge ts", _ok(10**30), TOPIC, R.BAD_TIMESTAMP),
    ("future ts", _ok("2026-11-24T08:31:00+08:00"), TOPIC, R.FUTURE_TIMESTAMP),
    ("future epoch ms", _ok(int((NOW.timestamp() + 3600) * 1000)), TOPIC, R.FUTURE_TIMESTAMP),
    ("no frame", {"gateway": "gw-01"}, RAW, R.BAD_PAYLOAD),
    ("frame not string", {"frame": 12}, RAW, R.BAD_PAYLOAD),
    ("frame and frames", {"frame": "68", "frames": ["68"]}, RAW, R.BAD_PAYLOAD),
    ("bad hex", {"frame": "68zz"}, RAW, R.BAD_HEX),
    ("odd hex", {"frame": "681"}, RAW, R.BAD_HEX),
    ("empty hex", {"frame": ""}, RAW, R.BAD_HEX),
    ("truncated frame", {"frame": CRC_BAD[:20]}, RAW, R.BAD_FRAME),
    ("not a frame", {"frame": "0102030405060708090a0b0c0d0e"}, RAW, R.BAD_FRAME),
    ("checksum", {"frame": CRC_BAD}, RAW, R.CHECKSUM),
    ("frame of unknown meter", {"frame": wire(ReadReply(
        address="000000000003", di=0x02010100, body=b"\x01\x22").to_frame())}, RAW,
     R.UNKNOWN_METER),
    ("request frame", {"frame": wire(ReadRequest(address="000000000001",
                                                 di=0x02010100).to_frame())}, RAW,
     R.UNSUPPORTED_FRAME),
    ("follow-up", {"frame": wire(ReadReply(address="000000000001", di=0x02010100,
                                           body=b"\x01\x22", follow_up=True).to_frame())},
     RAW, R.UNSUPPORTED_FRAME),
    ("1997 reply from a 2007 meter", {"frame": wire(ReadReply(
        address="000000000001", version=Version.V1997, di=0xB611,
        body=b"\x20\x02").to_frame())}, RAW, R.UNSUPPORTED_FRAME),
    ("abnormal", {"frame": wire(AbnormalReply(address="000000000001", request_function=0x11,
                                              error=0x02).to_frame())}, RAW,
     R.ABNORMAL_REPLY),
    ("unknown DI", {"frame": wire(ReadReply(address="000000000001", di=0x12345678,
                                            body=b"\x01").to_frame())}, RAW, R.UNKNOWN_DI),
    ("settlement DI", {"frame": wire(ReadReply(address="000000000001", di=0x00010001,
                                               body=b"\x00\x00\x01\x00").to_frame())}, RAW,
     R.UNSUPPORTED_QUANTITY),
    ("address DI", {"frame": wire(ReadReply(address="000000000001", di=0x04000401,
                                            body=bytes(6)).to_frame())}, RAW,
     R.UNSUPPORTED_QUANTITY),
    ("bad BCD", {"frame": wire(ReadReply(address="000000000001", di=0x02010100,
                                         body=b"\xff\xff").to_frame())}, RAW, R.BAD_VALUE),
    ("wrong length", {"frame": wire(ReadReply(address="000000000001", di=0x02010100,
                                              body=b"\x01").to_frame())}, RAW, R.BAD_VALUE),
    ("raw ts in future", {"frame": "68", "ts": "2027-01-01T00:00:00Z"}, RAW,
     R.FUTURE_TIMESTAMP),
    ("modbus no start", {"unit": 5, "frame": _MB_OK}, RAW, R.BAD_PAYLOAD),
    ("modbus unit not int", {"unit": "5", "start": 11, "frame": _MB_OK}, RAW, R.BAD_PAYLOAD),
    ("modbus bad hex", {"unit": 5, "start": 11, "frame": "zz"}, RAW, R.BAD_HEX),
    ("modbus short", {"unit": 5, "start": 11, "frame": "0503"}, RAW, R.BAD_FRAME),
    ("modbus crc", {"unit": 5, "start": 11, "frame": _MB_OK[:-4] + "0000"}, RAW, R.CHECKSUM),
    ("modbus unit mismatch", {"unit": 6, "start": 11, "frame": _MB_OK}, RAW, R.BAD_FRAME),
    ("modbus function mismatch", {"unit": 5, "function": 4, "start": 11, "frame": _MB_OK},
     RAW, R.BAD_FRAME),
    ("modbus byte count", {"start": 11, "frame": rtu(bytes((5, 3, 4, 8, 0x99)))}, RAW,
     R.BAD_FRAME),
    ("modbus unknown unit", {"start": 11, "frame": rtu(bytes((6, 3, 2, 8, 0x99)))}, RAW,
     R.UNKNOWN_METER),
    ("modbus exception", {"start": 11, "frame": rtu(bytes((5, 0x83, 2)))}, RAW,
     R.ABNORMAL_REPLY),
    ("modbus write reply", {"start": 11, "frame": rtu(bytes((5, 6, 0, 1, 0, 1)))}, RAW,
     R.UNSUPPORTED_FRAME),
    ("modbus request crc", {"request": "050300000001" + "0000", "frame": _MB_OK}, RAW,
     R.CHECKSUM),
    ("modbus request other unit", {"request": rtu(bytes((6, 3, 0, 11, 0, 1))),
                                   "frame": _MB_OK}, RAW, R.BAD_FRAME),
    ("modbus request count", {"request": rtu(bytes((5, 3, 0, 11, 0, 2))), "frame": _MB_OK},
     RAW, R.BAD_FRAME),
    ("modbus request vs start", {"start": 12, "request": rtu(bytes((5, 3, 0, 11, 0, 1))),
                                 "frame": _MB_OK}, RAW, R.BAD_FRAME),
    ("modbus no profile", {"start": 11, "frame": rtu(bytes((8, 3, 2, 8, 0x99)))}, RAW,
     R.NO_PROFILE),
    ("modbus profile missing", {"start": 11, "frame": rtu(bytes((9, 3, 2, 8, 0x99)))}, RAW,
     R.NO_PROFILE),
    ("modbus no register", {"start": 10, "frame": _MB_OK}, RAW, R.UNKNOWN_REGISTER),
    ("implausible voltage", _ok(voltage_a=1e308), TOPIC, R.IMPLAUSIBLE),
    ("modbus half a register", {"start": 1, "frame": _MB_OK}, RAW, R.UNKNOWN_REGISTER),
]


@pytest.mark.parametrize("case, doc, topic, reason", REJECTS, ids=[c[0] for c in REJECTS])
def test_reject(sink: Sink, case: str, doc: object, topic: str, reason: RejectReason) -> None:
    assert sink.send(doc, topic) == 0, case
    assert sink.rows == []
    assert sink.reasons() == [reason], [r.detail for r in sink.rejects]
    rej = sink.rejects[0]
    assert rej.topic == topic and rej.ts == NOW and rej.detail
    assert len(rej.payload_excerpt) <= 200
    assert sink.ing.counts[reason] == 1


def test_every_reason_is_exercised() -> None:
    tested = {c[3] for c in REJECTS} | {R.INTERNAL_ERROR}
    assert tested == set(RejectReason)


def test_internal_error_is_a_reject(sink: Sink, monkeypatch: pytest.MonkeyPatch) -> None:
    def boom(*_: object) -> None:
        raise RuntimeError("bug")

    monkeypatch.setattr(sink.ing, "_report", boom)
    assert sink.send(_ok()) == 0
    assert sink.reasons() == [R.INTERNAL_ERROR]


def test_rejects_per_message_are_capped(sink: Sink) -> None:
    values = {f"bogus_{i}": 1 for i in range(MAX_REJECTS_PER_MESSAGE + 30)}
    values["voltage_a"] = 230
    assert sink.send({"meter": "M0001", "values": values}) == 1
    assert len(sink.rejects) == MAX_REJECTS_PER_MESSAGE
    assert sink.ing.counts[R.UNKNOWN_QUANTITY] == MAX_REJECTS_PER_MESSAGE + 30


def test_reject_log_is_one_line_without_values(sink: Sink,
                                               caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.WARNING, "amic.gateway")
    sink.send({"meter": "M0001", "values": {"voltage_a": {"value": 98765.4321, "unit": "A"}}})
    sink.send({"meter": "M0001", "values": {"voltage_a": {"value": 98765.4321, "unit": "A"}}})
    lines = [r.getMessage() for r in caplog.records]
    assert len(lines) == 1  # the second one within a minute is only counted
    assert "\n" not in lines[0] and "98765" not in lines[0]
    assert "unit_mismatch" in lines[0] and "M0001" in lines[0]
    assert "98765" in sink.rejects[0].payload_excerpt


def test_update_meters(sink: Sink) -> None:
    sink.ing.update_meters([MeterSettings("M0003", "000000000003", "gw-01")])
    assert sink.send({"address": "3", "values": {"voltage_a": 1}}) == 1
    assert sink.send({"meter": "M0001", "values": {"voltage_a": 1}}) == 0


json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=8),
    lambda children: st.lists(children, max_size=4)
    | st.dictionaries(st.sampled_from(["meter", "address", "values", "ts", "value", "unit",
                                       "voltage_a", "status_word_3", "readings", "frame",
                                       "start", "unit", "gateway", "x"]), children,
                      max_size=5),
    max_leaves=20)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(doc=json_values, topic=st.sampled_from([TOPIC, RAW, "x/y", "amic-gw/gw-02/raw"]))
def test_never_raises_on_any_json(doc: object, topic: str) -> None:
    s = Sink()
    n = s.ing.handle(topic, json.dumps(doc).encode())
    assert n == len(s.rows)
    for r in s.rows:
        assert isinstance(r.value, float)


@settings(max_examples=200, deadline=None)
@given(data=st.binary(max_size=64))
def test_never_raises_on_any_bytes(data: bytes) -> None:
    s = Sink()
    s.ing.handle(RAW, data)
    s.ing.handle(RAW, json.dumps({"frame": data.hex()}).encode())
    s.ing.handle(RAW, json.dumps({"start": 0, "frame": data.hex()}).encode())


# ---- the simulator against a real broker ------------------------------------------------------

@pytest.fixture(scope="module")
def broker(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Broker]:
    with Broker(tmp_path_factory.mktemp("mosquitto")) as b:
        yield b


@pytest.fixture
async def subscriber(broker: Broker) -> AsyncIterator[aiomqtt.Client]:
    async with aiomqtt.Client("127.0.0.1", broker.port, identifier=None) as c:
        yield c


async def collect(client: aiomqtt.Client, n: int, timeout: float = 10.0,
                  want: Callable[[str], bool] = lambda _t: True) -> list[tuple[str, bytes]]:
    out: list[tuple[str, bytes]] = []

    async def run() -> None:
        async for m in client.messages:
            if want(m.topic.value):
                assert isinstance(m.payload, bytes)
                out.append((m.topic.value, m.payload))
                if len(out) >= n:
                    return

    await asyncio.wait_for(run(), timeout)
    return out


GW_METERS = tuple(MeterSettings(f"G{i:03d}", f"{i:012d}", "gw-t") for i in range(1, 4))


def _plausible(rows: list[Reading]) -> None:
    by = {(r.meter, r.quantity): r for r in rows}
    for i in range(1, 4):
        m = f"G{i:03d}"
        assert 190 < by[(m, "voltage_a")].value < 250
        assert 1000 <= by[(m, "energy_active_forward_total")].value <= 20001
        assert 49.5 < by[(m, "frequency")].value < 50.5
        assert by[(m, "current_a")].value >= 0
        assert by[(m, "status_word_3")].value == 512  # money-prepaid, relay closed
        assert by[(m, "voltage_a")].unit == "V"


@pytest.mark.parametrize("mode", ["json", "raw"])
async def test_simulator_reports_ingest(broker: Broker, subscriber: aiomqtt.Client,
                                        mode: str) -> None:
    kind = "report" if mode == "json" else "raw"
    await subscriber.subscribe(f"t-{mode}/gw-t/{kind}", qos=1)
    async with GatewaySimulator(broker.url, prefix=f"t-{mode}", gateway="gw-t", meters=3,
                                interval=30, mode="json" if mode == "json" else "raw") as gw:
        messages = await collect(subscriber, 3)
        assert gw.stats.reports >= 3
    rows: list[Reading] = []
    rejects: list[Reject] = []
    ing = ReportIngestor(GW_METERS, load_profile, rows.extend, rejects.append)
    for topic, payload in messages:
        doc = json.loads(payload)
        assert doc["gateway"] == "gw-t"
        if mode == "json":
            assert doc["ts"][-6] in "+-" or doc["ts"].endswith("Z")
        assert ing.handle(topic, payload) > 5
    assert rejects == []
    _plausible(rows)
    if mode == "json":
        assert all(r.meter_ts is not None for r in rows)
    else:
        assert any(r.quality is Quality.BLOCK_READ for r in rows)


async def test_simulator_batch_report(broker: Broker, subscriber: aiomqtt.Client) -> None:
    await subscriber.subscribe("t-batch/gw-t/report", qos=1)
    async with GatewaySimulator(broker.url, prefix="t-batch", gateway="gw-t", meters=3,
                                interval=30, batch=True):
        [(topic, payload)] = await collect(subscriber, 1)
    rows: list[Reading] = []
    ing = ReportIngestor(GW_METERS, load_profile, rows.extend, lambda r: pytest.fail(str(r)))
    assert len(json.loads(payload)["readings"]) == 3
    ing.handle(topic, payload)
    _plausible(rows)


async def test_simulator_answers_transparent_frames(broker: Broker,
                                                    subscriber: aiomqtt.Client) -> None:
    await subscriber.subscribe("t-tp/gw-t/up", qos=1)
    async with GatewaySimulator(broker.url, prefix="t-tp", gateway="gw-t", meters=3,
                                interval=3600) as gw:
        await gw.wait_connected()
        request = build_frame(ReadRequest(address="000000000002", di=0x02010100).to_frame())
        # Split over two messages, as a transparent channel may: the extractor joins them.
        await subscriber.publish("t-tp/gw-t/down", request[:7], qos=1)
        await subscriber.publish("t-tp/gw-t/down", request[7:], qos=1)
        await subscriber.publish("t-tp/gw-t/down", build_frame(ReadRequest(
            address="000000000003", di=by_name("energy_active_forward_total").di).to_frame()),
            qos=1)
        got = await collect(subscriber, 2)
        assert gw.stats.requests == 2 and gw.stats.replies == 2
    first = decode_message(parse_frame(got[0][1]))
    assert isinstance(first, ReadReply) and first.address == "000000000002"
    assert first.di == 0x02010100 and 190 < float(first.value()) < 250  # type: ignore[arg-type]
    second = decode_message(parse_frame(got[1][1]))
    assert isinstance(second, ReadReply) and second.address == "000000000003"
    assert float(second.value()) > 1000  # type: ignore[arg-type]


async def test_simulator_reconnects_after_broker_restart(tmp_path: Path) -> None:
    with Broker(tmp_path / "restart") as b:
        async with GatewaySimulator(b.url, prefix="t-rc", gateway="gw-t", meters=1,
                                    interval=0.3) as gw:
            await gw.wait_connected()
            await asyncio.to_thread(b.restart, 0.3)
            deadline = time.monotonic() + 10
            while gw.stats.connects < 2 and time.monotonic() < deadline:
                await asyncio.sleep(0.05)
            assert gw.stats.connects == 2 and gw.stats.disconnects == 1
            async with aiomqtt.Client("127.0.0.1", b.port) as c:
                await c.subscribe("t-rc/gw-t/#", qos=1)
                got = await collect(c, 1, want=lambda t: t.endswith("/report"))
            assert json.loads(got[0][1])["values"]["voltage_a"] > 190


def test_broker_url() -> None:
    """The simulator takes the collector's broker URLs (drivers.mqtt.parse_broker_url),
    plus credentials; a mistake names the part at fault."""
    sim = GatewaySimulator("mqtt://u:p%40ss@host")
    assert (sim.host, sim.port, sim._user, sim._password) == ("host", 1883, "u", "p@ss")
    sim = GatewaySimulator("mqtt://[::1]:1884")
    assert (sim.host, sim.port, sim._user, sim._password) == ("::1", 1884, None, None)
    for bad, part in (("http://x", "scheme 'http'"), ("mqtt://", "host"),
                      ("mqtt://h:99999", "port '99999'"), ("mqtt://h:1/x", "path '/x'"),
                      ("mqtts://h", "plain mqtt://")):
        with pytest.raises(ValueError, match=part):
            GatewaySimulator(bad)
    with pytest.raises(ValueError):
        GatewaySimulator("mqtt://h", gateway="a/b")
    with pytest.raises(ValueError):
        GatewaySimulator("mqtt://h", mode="xml")  # type: ignore[arg-type]


# ---- the CLI -----------------------------------------------------------------------------

def test_cli_gateway_starts_prints_and_stops(broker: Broker, tmp_path: Path) -> None:
    argv = [*amic_command(), "simulate", "gateway", "--broker", broker.url, "--meters", "4",
            "--interval", "1", "--prefix", "t-cli", "--gateway", "gw-c", "--mode", "raw"]
    err = tmp_path / "stderr.txt"
    with err.open("w") as e:
        proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=e, text=True,
                                env=dict(os.environ, PYTHONUNBUFFERED="1"))
    try:
        assert proc.stdout is not None
        line = proc.stdout.readline()
        assert line.strip() == f"connected to {broker.url} as gateway gw-c (4 meters)", \
            err.read_text()
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=10) == 0, err.read_text()
        assert "stopped:" in err.read_text()
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def test_cli_gateway_usage_error() -> None:
    r = subprocess.run([*amic_command(), "simulate", "gateway", "--broker", "http://x"],
                       capture_output=True, text=True, timeout=30)
    assert r.returncode == 2 and "mqtt://" in r.stderr

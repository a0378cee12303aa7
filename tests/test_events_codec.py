"""Event records, event counters and maximum demand: catalogue, codec and simulator.

Layouts: DL/T645-2007 appendix A as the public C implementation bobyuxinyang/dlt645_2007
lays them out (03010000 18 bytes, 0301 0P NN 131, 030B / 030E 0P NN 115, 0311 00 NN 12,
0330 00 NN 50, 0330 01 NN 106, 0330 0D NN 60); 1D00 FF NN / 1E00 FF NN from the 2013
amendment (check, 34 bytes); maximum demand 01 01 00 00: XX.XXXX then YYMMDDhhmm.
"""

from __future__ import annotations

import datetime as dt
from decimal import Decimal

import pytest

from protocols.dlt645 import (
    LAYOUTS,
    AbnormalReply,
    EventRecord,
    Frame,
    PayloadError,
    ReadReply,
    ReadRequest,
    Version,
    build_frame,
    by_di,
    by_name,
    decode_message,
    decode_record,
    decode_value,
    encode_record,
    parse_frame,
    record_di,
    record_of,
)
from protocols.quantities import EVENT_COUNTERS, QUANTITIES
from simulators.dlt645 import SimulatedMeter
from simulators.meter import ManualClock, MeterConfig, MeterModel

ADDR = "000000000042"
START = dt.datetime(2026, 3, 2, 8, 0, 0)


def test_record_dis_and_sizes() -> None:
    assert record_di("voltage_loss_a", 1) == 0x03010101
    assert record_di("voltage_loss_c", 10) == 0x0301030A
    assert record_di("current_loss_b", 2) == 0x030B0202
    assert record_di("power_reverse_a", 1) == 0x030E0101
    assert record_di("power_down", 1) == 0x03110001
    assert record_di("programming", 3) == 0x03300003
    assert record_di("meter_clear", 1) == 0x03300101
    assert record_di("cover_open", 1) == 0x03300D01
    assert record_di("relay_trip", 1) == 0x1D00FF01
    assert record_di("relay_close", 1) == 0x1E00FF01
    sizes = {k: v.size for k, v in LAYOUTS.items()}
    assert sizes["voltage_loss_a"] == 131 and sizes["current_loss_a"] == 115
    assert sizes["power_reverse_b"] == 115 and sizes["power_down"] == 12
    assert sizes["programming"] == 50 and sizes["meter_clear"] == 106
    assert sizes["cover_open"] == 60 and sizes["relay_trip"] == 34
    assert record_of(0x03300D05) == (LAYOUTS["cover_open"], 5)
    assert record_of(0x03300D0B) is None and record_of(0x00010000) is None
    with pytest.raises(ValueError):
        record_di("cover_open", 11)


def test_every_kind_has_a_counter_in_the_catalogue() -> None:
    for kind, counter in EVENT_COUNTERS.items():
        assert kind in LAYOUTS and counter in QUANTITIES
    assert by_di(0x03300D00).name == "cover_open_count"
    assert by_di(0x03110000).name == "power_down_count"
    block = by_di(0x03010000)
    assert [m.name for m in block.members][:2] == ["voltage_loss_count_a",
                                                   "voltage_loss_minutes_a"]
    assert block.size == 18


def test_cover_open_record_from_wire_bytes() -> None:
    # start 2026-03-01 10:05:07, end 10:20:00, forward energy before 1234.56 kWh
    start = bytes.fromhex("070510010326")
    end = bytes.fromhex("002010010326")
    forward = bytes.fromhex("56341200")
    data = start + end + forward + bytes(44)
    rec = decode_record("cover_open", 1, data)
    assert rec is not None
    assert rec.start == dt.datetime(2026, 3, 1, 10, 5, 7)
    assert rec.end == dt.datetime(2026, 3, 1, 10, 20)
    assert rec.fields["before_forward_kwh"] == Decimal("1234.56")
    assert encode_record(rec) == data


def test_empty_slot_and_ongoing_event() -> None:
    assert decode_record("power_down", 4, bytes(12)) is None
    ongoing = EventRecord("voltage_loss_a", 1, dt.datetime(2026, 3, 1, 9, 0), None)
    rec = decode_record("voltage_loss_a", 1, encode_record(ongoing))
    assert rec is not None and rec.end is None and rec.start == ongoing.start
    with pytest.raises(PayloadError):
        decode_record("power_down", 1, bytes(11))


def test_demand_value_and_time() -> None:
    item = by_name("demand_active_forward_total")
    assert item.di == 0x01010000 and item.size == 8
    # 3.4567 kW at 2026-03-01 18:15
    value = decode_value(item, bytes.fromhex("6745031518010326"))
    assert value == {"demand_active_forward_total": Decimal("3.4567"),
                     "demand_active_forward_total_time": dt.datetime(2026, 3, 1, 18, 15)}
    assert by_name("demand_active_reverse_t2").di == 0x01020200
    assert QUANTITIES["demand_active_forward_total"].unit == "kW"


@pytest.fixture
def clock() -> ManualClock:
    return ManualClock(START)


@pytest.fixture
def model(clock: ManualClock) -> MeterModel:
    return MeterModel(ADDR, MeterConfig(base_kw=Decimal(2), initial_energy=Decimal(1000)),
                      seed=1, clock=clock)


def ask(meter: SimulatedMeter, di: int) -> ReadReply | AbnormalReply:
    # through real wire bytes both ways
    frame = meter.handle(parse_frame(build_frame(ReadRequest(address=ADDR, di=di).to_frame())))
    assert isinstance(frame, Frame)
    reply = decode_message(parse_frame(build_frame(frame)), Version.V2007)
    assert isinstance(reply, ReadReply | AbnormalReply)
    return reply


def test_simulated_phase_a_voltage_loss(model: MeterModel, clock: ManualClock) -> None:
    meter = SimulatedMeter(model)
    t1 = START + dt.timedelta(minutes=10)
    t2 = START + dt.timedelta(minutes=40)
    model.lose_voltage("a", t1, t2)
    clock.advance(15 * 60)
    assert model.read("voltage_a") == Decimal("0.0")
    assert model.sample().voltage[1] > 200
    assert model.status_word(4) & 1 and not model.status_word(5) & 1
    reply = ask(meter, 0x03010101)
    assert isinstance(reply, ReadReply)
    rec = decode_record("voltage_loss_a", 1, reply.body)
    assert rec is not None and rec.start == t1 and rec.end is None  # still going on
    clock.advance(30 * 60)
    assert model.sample().voltage[0] > 200 and not model.status_word(4) & 1
    reply = ask(meter, 0x03010101)
    assert isinstance(reply, ReadReply)
    rec = decode_record("voltage_loss_a", 1, reply.body)
    assert rec is not None and (rec.start, rec.end) == (t1, t2)
    counts = ask(meter, 0x03010000)
    assert isinstance(counts, ReadReply)
    value = counts.value()
    assert isinstance(value, dict)
    assert value["voltage_loss_count_a"] == 1 and value["voltage_loss_minutes_a"] == 30
    assert value["voltage_loss_count_b"] == 0


def test_simulated_cover_open_power_down_and_programming(model: MeterModel) -> None:
    meter = SimulatedMeter(model)
    before = model.cover_open_count
    at = START - dt.timedelta(hours=2)
    model.open_cover(at, at + dt.timedelta(minutes=5))
    assert model.cover_open_count == before + 1
    reply = ask(meter, 0x03300D01)
    assert isinstance(reply, ReadReply)
    rec = decode_record("cover_open", 1, reply.body)
    assert rec is not None and rec.start == at
    assert rec.fields["before_forward_kwh"] == model.read("energy_active_forward_total")
    model.power_down_event(at, at + dt.timedelta(minutes=1))
    model.program(at, "12345678", ("04000102",))
    reply = ask(meter, 0x03300001)
    assert isinstance(reply, ReadReply)
    prog = decode_record("programming", 1, reply.body)
    assert prog is not None and prog.fields["operator"] == "12345678"
    assert prog.fields["di_1"] == "04000102" and prog.fields["di_2"] == "FFFFFFFF"
    empty = ask(meter, 0x03300002)
    assert isinstance(empty, ReadReply) and decode_record("programming", 2, empty.body) is None
    assert isinstance(ask(meter, 0x03300D0B), AbnormalReply)


def test_simulated_relay_records(model: MeterModel) -> None:
    model.trip()
    model.close()
    trip = model.event_record("relay_trip", 1)
    close = model.event_record("relay_close", 1)
    assert trip is not None and close is not None
    assert model.read("relay_trip_count") == 1 and model.read("relay_close_count") == 1


def test_simulated_demand_peak(model: MeterModel, clock: ManualClock) -> None:
    meter = SimulatedMeter(model)
    peak_at = START + dt.timedelta(minutes=45)
    model.demand_peak(Decimal("7.5"), peak_at)
    reply = ask(meter, 0x01010000)
    assert isinstance(reply, ReadReply)
    assert reply.value() == {"demand_active_forward_total": Decimal("7.5000"),
                             "demand_active_forward_total_time": peak_at}
    # the wire bytes of the value field, as a meter sends them
    assert reply.body[:3] == bytes.fromhex("005007")  # 07.5000 kW, low byte first

"""The simulated meter: its model (simulators.meter) and its DL/T645 responder (simulators.dlt645).

Every test runs on a ManualClock, so energy, balance and the meter clock are exact.
"""

from __future__ import annotations

import datetime as dt
import json
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from protocols.dlt645 import (
    STATUS_BITS,
    AbnormalReply,
    Ack,
    ChangeBaudReply,
    ChangeBaudRequest,
    ChangePasswordReply,
    ChangePasswordRequest,
    ClearDemandRequest,
    ClearEventsRequest,
    ClearMeterRequest,
    Format,
    Frame,
    Message,
    ReadAddressReply,
    ReadAddressRequest,
    ReadFollowUpReply,
    ReadFollowUpRequest,
    ReadReply,
    ReadRequest,
    RelayCommand,
    RemoteControlRequest,
    StatusWord,
    TimeSyncRequest,
    Version,
    WriteRequest,
    build_frame,
    by_di,
    decode_message,
    decode_value,
    encode_value,
    items,
    parse_frame,
)
from simulators.dlt645 import SimulatedMeter, make_meters, parse_password
from simulators.meter import DECIMALS, ManualClock, MeterConfig, MeterModel, Unavailable

START = dt.datetime(2024, 3, 10, 12, 0, 0)  # hour 12: tariff t1, load factor 0.60
ADDR = "000000000001"
GOOD_PW = "02000000"  # level 02, code 000000 (the default)
V97 = Version.V1997

REFERENCE = Path(__file__).resolve().parents[2] / "shared" / "reference" / "dlt645_frames.jsonl"
LOCAL_COPY = Path(__file__).with_name("data") / "dlt645_frames.jsonl"


def new_model(clock: ManualClock, seed: int | str = 7, **overrides: Any) -> MeterModel:
    cfg: dict[str, Any] = {"base_kw": Decimal(2), "initial_energy": Decimal(1000)}
    cfg.update(overrides)
    return MeterModel(ADDR, MeterConfig(**cfg), seed=seed, clock=clock)


@pytest.fixture
def clock() -> ManualClock:
    return ManualClock(START)


@pytest.fixture
def model(clock: ManualClock) -> MeterModel:
    return new_model(clock)


@pytest.fixture
def meter(model: MeterModel) -> SimulatedMeter:
    return SimulatedMeter(model)


def energy(m: MeterModel, name: str = "energy_active_forward_total") -> Decimal:
    """A number quantity of ``m`` (asserted to be one)."""
    value = m.read(name)
    assert isinstance(value, Decimal)
    return value


def bits(word: int, n: int = 3) -> dict[str, int]:
    return {b.name: (word >> b.start) & ((1 << b.width) - 1) for b in STATUS_BITS[n]}


def ask(meter: SimulatedMeter, request: Message | Frame) -> Message | None:
    """Send ``request`` through real wire bytes; the decoded reply, or None for silence."""
    frame = request if isinstance(request, Frame) else request.to_frame()
    reply = meter.handle(parse_frame(build_frame(frame)))
    if reply is None:
        return None
    assert reply.is_reply
    return decode_message(parse_frame(build_frame(reply)), meter.version)


def read(meter: SimulatedMeter, di: int, address: str = ADDR) -> Any:
    version = meter.version
    reply = ask(meter, ReadRequest(address=address, di=di, version=version))
    assert isinstance(reply, ReadReply), reply
    assert reply.address == meter.address and reply.di == di
    return reply.value()


def abnormal(reply: Message | None) -> int:
    assert isinstance(reply, AbnormalReply), reply
    return reply.error


def control(command: RelayCommand, expiry: dt.datetime, password: str = GOOD_PW,
            operator: str = "12345678") -> RemoteControlRequest:
    return RemoteControlRequest(address=ADDR, password=password, operator=operator,
                                command=command, expiry=expiry)


# ---- the model ---------------------------------------------------------------------------

def test_energy_follows_load_curve_and_tariff_of_the_hour(model: MeterModel,
                                                          clock: ManualClock) -> None:
    before = {t: energy(model, f"energy_active_forward_{t}")
              for t in ("total", "t1", "t2", "t3", "t4")}
    clock.advance(3600)  # 12:00-13:00: 2 kW x 0.60, tariff t1
    clock.advance(3600)  # 13:00-14:00: 2 kW x 0.55, tariff t3
    after = {t: energy(model, f"energy_active_forward_{t}") for t in before}
    cent = Decimal("0.01")  # registers are truncated to hundredths
    assert abs(after["t1"] - before["t1"] - Decimal("1.20")) <= cent
    assert abs(after["t3"] - before["t3"] - Decimal("1.10")) <= cent
    assert after["t2"] == before["t2"] and after["t4"] == before["t4"]
    assert abs(after["total"] - before["total"] - Decimal("2.30")) <= cent
    # Combined = forward + reverse (no export here); reactive follows the power factor.
    assert energy(model, "energy_active_combined_total") == after["total"]
    assert energy(model, "energy_reactive_combined1_total") > 0
    assert model.now() == START + dt.timedelta(hours=2)


def test_energy_does_not_depend_on_how_often_it_is_read() -> None:
    c1, c2 = ManualClock(START), ManualClock(START)
    m1, m2 = new_model(c1), new_model(c2)
    c1.advance(5 * 3600)
    for _ in range(300):
        c2.advance(60)
        m2.read("voltage_a")
    for name in ("energy_active_forward_total", "energy_active_forward_t1",
                 "energy_active_forward_t3", "balance_amount"):
        assert m1.read(name) == m2.read(name), name


def test_same_seed_same_meter_other_seed_other_noise() -> None:
    a, b, c = (new_model(ManualClock(START), seed=s) for s in ("x", "x", "y"))
    assert a.snapshot() == b.snapshot()
    assert [a.read(f"voltage_{p}") for p in "abc"] != [c.read(f"voltage_{p}") for p in "abc"]


def test_live_values_are_consistent(model: MeterModel, clock: ManualClock) -> None:
    powers = []
    for _ in range(60):
        clock.advance(1)
        s = model.sample()
        total = Decimal(0)
        for ph in range(3):
            v, i, pf = s.voltage[ph], s.current[ph], s.power_factor[ph + 1]
            assert Decimal(198) <= v <= Decimal(242)
            assert Decimal("0.5") <= pf <= 1
            # P = V x I x pf, up to the rounding of the 4-decimal reading.
            assert abs(s.power_active[ph + 1] - v * i * pf / 1000) <= Decimal("0.00005")
            total += s.power_active[ph + 1]
        assert s.power_active[0] == total
        assert abs(s.power_factor[0] - s.power_active[0] / s.power_apparent[0]) <= \
            Decimal("0.0005")
        assert Decimal("49.5") <= s.frequency <= Decimal("50.5")
        powers.append(s.power_active[0])
    # The displayed load scatters around the curve: 2 kW x 0.60 at noon.
    mean = sum(powers, Decimal(0)) / len(powers)
    assert abs(mean - Decimal("1.2")) < Decimal("0.06")
    assert len(set(powers)) > 30
    # Within one meter second every read agrees.
    assert model.read("current_a") == model.sample().current[0]


def test_values_have_the_catalogue_decimals(model: MeterModel) -> None:
    checked = 0
    for item in items(Version.V2007):
        if item.format is not Format.NUMBER or item.settlement:
            continue
        try:
            value = model.read(item.name)
        except Unavailable:
            continue
        assert isinstance(value, Decimal)
        assert value.as_tuple().exponent == -item.decimals, (item.name, value)
        checked += 1
    assert checked >= 50
    assert DECIMALS["voltage_a"] == 1 and DECIMALS["current_a"] == 3


def test_balance_falls_then_overdraft_then_trip(clock: ManualClock) -> None:
    m = new_model(clock, price=Decimal(1), initial_balance=Decimal(1),
                  overdraft_limit=Decimal(1), alarm_amount=Decimal(5))
    start = energy(m)
    clock.advance(3600)  # 1.20 kWh at 1 yuan: 1.00 -> -0.20
    assert m.read("balance_amount") == Decimal("0.00")
    assert m.read("overdraft_amount") == Decimal("0.20")
    assert not m.relay_open
    assert bits(m.status_word(3))["pre_trip_alarm"] == 1  # below the alarm amount
    clock.advance(3600)  # 1.1 kW; the overdraft reaches its 1 yuan limit after 0.8 kWh
    assert m.relay_open and m.tripped_by_balance
    assert m.read("overdraft_amount") == Decimal("1.00")
    assert abs(energy(m) - start - Decimal("2.00")) <= Decimal("0.01")
    word = bits(m.status_word(3))
    assert word["relay_open"] == 1 and word["relay_command_open"] == 0
    assert word["prepaid_type"] == 2
    tripped = energy(m)
    clock.advance(3 * 3600)
    assert energy(m) == tripped and m.read("current_a") == 0
    # A payment clears the overdraft and gives power back.
    m.purchase(Decimal(50))
    assert not m.relay_open and m.read("purchase_count") == 1
    assert m.read("balance_amount") == Decimal("49.00")
    clock.advance(600)
    assert energy(m) > tripped


def test_relay_open_stops_energy_and_sets_status_word_3(model: MeterModel,
                                                        clock: ManualClock) -> None:
    assert bits(model.status_word(3)) == {
        "period_set": 0, "supply_mode": 0, "programming_allowed": 0, "relay_open": 0,
        "zone_set": 0, "relay_command_open": 0, "pre_trip_alarm": 0, "prepaid_type": 2,
        "tariff_set": 0, "step_set": 0, "hold_power": 0}
    assert model.trip()
    assert bits(model.status_word(3))["relay_open"] == 1
    assert model.status_word(3) & (1 << 6)
    e = energy(model)
    clock.advance(7200)
    assert energy(model) == e
    assert model.read("current_a") == model.read("power_active_total") == 0
    assert Decimal(198) <= energy(model, "voltage_a") <= Decimal(242)  # supply still live
    model.close()
    clock.advance(3600)
    assert energy(model) > e
    model.set_hold_power(True)
    assert not model.trip() and not model.relay_open
    model.set_alarm(True)
    word = bits(model.status_word(3))
    assert word["hold_power"] == 1 and word["pre_trip_alarm"] == 1 and word["relay_open"] == 0


def test_hold_power_keeps_supply_without_credit(clock: ManualClock) -> None:
    m = new_model(clock, initial_balance=Decimal(0), overdraft_limit=Decimal(0))
    assert m.relay_open  # no credit at all: tripped at once
    m.set_hold_power(True)
    m.close()
    clock.advance(3600)
    assert not m.relay_open
    assert m.read("overdraft_amount") == Decimal("0.60")


def test_meter_clock_runs_from_its_offset_and_can_be_set(clock: ManualClock) -> None:
    m = new_model(clock, clock_offset=dt.timedelta(seconds=90), drift_ppm=100)
    assert m.now() == START + dt.timedelta(seconds=90)
    clock.advance(10_000)  # 100 ppm fast: one second gained
    assert m.now() == START + dt.timedelta(seconds=10_091)
    m.set_clock(dt.datetime(2024, 5, 1, 8, 0, 0))
    clock.advance(30)
    assert m.read("meter_datetime") == dt.datetime(2024, 5, 1, 8, 0, 30)
    assert m.read("meter_date") == dt.date(2024, 5, 1)
    assert m.read("meter_time") == dt.time(8, 0, 30)


def test_daily_freeze_and_monthly_settlement(clock: ManualClock) -> None:
    clock = ManualClock(dt.datetime(2024, 3, 31, 23, 0, 0))
    m = new_model(clock)
    old_first = m.read("energy_active_forward_total", 1)
    assert isinstance(old_first, Decimal) and old_first < energy(m)
    clock.advance(1800)
    at_midnight = energy(m) + Decimal("0.45")  # 23:30-24:00 at 2 kW x 0.45
    clock.advance(3600)
    assert m.read("freeze_daily_time") == dt.datetime(2024, 4, 1, 0, 0)
    frozen = energy(m, "freeze_daily_energy_active_forward_total")
    assert abs(frozen - at_midnight) <= Decimal("0.01")
    assert energy(m) > frozen
    # 1 April is the settlement day: the last settlement is the midnight value.
    assert m.read("energy_active_forward_total", 1) == frozen
    assert m.read("energy_active_forward_total", 2) == old_first
    with pytest.raises(Unavailable):
        m.read("energy_active_forward_total", 13)


def test_single_phase_meter(clock: ManualClock) -> None:
    m = new_model(clock, phases=1)
    with pytest.raises(Unavailable):
        m.read("voltage_b")
    assert m.read("current_n") == m.read("current_a")
    assert m.read("power_active_total") == m.read("power_active_a")


def test_not_prepaid_meter_has_no_balance(clock: ManualClock) -> None:
    m = new_model(clock, prepaid=False)
    with pytest.raises(Unavailable):
        m.read("balance_amount")
    assert bits(m.status_word(3))["prepaid_type"] == 0


# ---- the DL/T645 responder: reads ------------------------------------------------------------

def _reference() -> list[dict[str, Any]]:
    path = REFERENCE if REFERENCE.exists() else LOCAL_COPY
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def test_answers_reference_requests_like_the_reference_meter(meter: SimulatedMeter) -> None:
    cases = _reference()
    answered = 0
    for request, expected in zip(cases[::2], cases[1::2], strict=True):
        reply = meter.handle(parse_frame(bytes.fromhex(request["hex"])))
        assert reply is not None, request["meaning"]
        raw = build_frame(reply)
        if expected["abnormal"]:
            # Same meter, same unknown DI: byte for byte the independent implementation's.
            assert raw.hex() == expected["hex"]
            continue
        # Values differ (another meter), but the layout is the same: DI, length, control.
        assert len(raw) * 2 == len(expected["hex"]) and raw[:14] == \
            bytes.fromhex(expected["hex"])[:14], request["meaning"]
        message = decode_message(parse_frame(raw))
        assert isinstance(message, ReadReply) and f"{message.di:08X}" == request["di"]
        message.value()
        answered += 1
    assert answered >= 12


def test_every_catalogue_item_is_answered(meter: SimulatedMeter) -> None:
    no_data = set()
    for item in items(Version.V2007):
        reply = ask(meter, ReadRequest(address=ADDR, di=item.di))
        if isinstance(reply, AbnormalReply):
            assert reply.errors == ("no_requested_data",)
            no_data.add(item.name)
            continue
        assert isinstance(reply, ReadReply) and not reply.follow_up
        value = reply.value()
        if item.is_block:
            assert isinstance(value, dict) and list(value) == [m.name for m in item.members]
    # A money-prepaid meter has no energy balance registers; everything else is there.
    assert no_data == {"balance_energy", "overdraft_energy"}


def test_values_on_the_wire_are_the_models(meter: SimulatedMeter, model: MeterModel) -> None:
    assert read(meter, 0x00010000) == model.read("energy_active_forward_total")
    assert read(meter, 0x00900200) == model.read("balance_amount")
    assert read(meter, 0x04000401) == ADDR
    assert read(meter, 0x04000101) == START.date()
    assert read(meter, 0x04000102) == START.time()
    block = read(meter, 0x0201FF00)
    assert block == {f"voltage_{p}": model.read(f"voltage_{p}") for p in "abc"}
    status = read(meter, 0x04000503)
    assert isinstance(status, StatusWord) and status.fields["prepaid_type"] == 2


def test_unknown_di_gets_no_requested_data(meter: SimulatedMeter) -> None:
    reply = ask(meter, ReadRequest(address=ADDR, di=0x04A00101))
    assert abnormal(reply) == 0x02
    assert isinstance(reply, AbnormalReply) and reply.errors == ("no_requested_data",)


def test_long_value_comes_in_follow_up_frames(model: MeterModel) -> None:
    meter = SimulatedMeter(model, max_frame_data=12)
    whole = encode_value(by_di(0x0001FF00), read(SimulatedMeter(model), 0x0001FF00))
    assert len(whole) == 20
    first = ask(meter, ReadRequest(address=ADDR, di=0x0001FF00))
    assert isinstance(first, ReadReply) and first.follow_up
    assert first.to_frame().control == 0xB1 and len(first.body) == 8
    body, seq = first.body, 0
    while True:
        seq += 1
        nxt = ask(meter, ReadFollowUpRequest(address=ADDR, di=0x0001FF00, seq=seq))
        assert isinstance(nxt, ReadFollowUpReply), nxt
        assert nxt.seq == seq and len(nxt.to_frame().data) <= 12
        body += nxt.body
        if not nxt.follow_up:
            assert nxt.to_frame().control == 0x92
            break
        assert nxt.to_frame().control == 0xB2
    assert seq == 2 and body == whole
    # A retry of the last sequence number is answered again; one past the end is not.
    again = ask(meter, ReadFollowUpRequest(address=ADDR, di=0x0001FF00, seq=2))
    assert isinstance(again, ReadFollowUpReply) and again.seq == 2
    assert abnormal(ask(meter, ReadFollowUpRequest(address=ADDR, di=0x0001FF00, seq=3))) == 2
    assert abnormal(ask(meter, ReadFollowUpRequest(address=ADDR, di=0x0002FF00, seq=1))) == 2


def test_read_address_with_wildcards(meter: SimulatedMeter) -> None:
    reply = ask(meter, ReadAddressRequest())
    assert isinstance(reply, ReadAddressReply) and reply.meter_address == ADDR
    assert reply.address == ADDR
    assert read(meter, 0x02010100, address="AAAAAAAAAA01") == meter.model.read("voltage_a")
    assert ask(meter, ReadRequest(address="AAAAAAAAAA02", di=0x02010100)) is None


def test_other_meters_replies_and_broadcasts_get_silence(meter: SimulatedMeter) -> None:
    assert ask(meter, ReadRequest(address="000000000002", di=0x00010000)) is None
    assert ask(meter, ReadRequest(address="999999999999", di=0x00010000)) is None
    # A reply on the line (direction bit set) is never answered.
    echo = ReadReply(address=ADDR, di=0x00010000, body=b"\0" * 4).to_frame()
    assert meter.handle(echo) is None
    # A 1997 read is not this 2007 meter's business.
    assert ask(meter, ReadRequest(address=ADDR, di=0x9010, version=V97)) is None


@settings(max_examples=300, deadline=None)
@given(
    address=st.sampled_from([ADDR, "AAAAAAAAAAAA", "999999999999", "000000000002"]),
    control=st.integers(0, 255),
    data=st.binary(max_size=40),
)
def test_never_raises_on_any_frame(address: str, control: int, data: bytes) -> None:
    for version in ("2007", "1997"):
        meter = SimulatedMeter(new_model(ManualClock(START)), version=version)
        reply = meter.handle(Frame(address, control, data))
        assert meter.counters["internal_errors"] == 0
        if reply is not None:
            assert reply.is_reply and address != "999999999999"
            build_frame(reply)


# ---- clock: broadcast time sync and write --------------------------------------------------

def test_broadcast_time_sync_within_ten_minutes_once_a_day(meter: SimulatedMeter,
                                                          clock: ManualClock) -> None:
    model = meter.model
    far = START + dt.timedelta(minutes=11)
    assert ask(meter, TimeSyncRequest(when=far)) is None
    assert model.now() == START  # refused: too far from the meter clock
    near = START + dt.timedelta(minutes=9, seconds=30)
    assert ask(meter, TimeSyncRequest(when=near)) is None
    assert model.now() == near
    clock.advance(5)
    assert read(meter, 0x04000102) == (near + dt.timedelta(seconds=5)).time()
    # A second sync the same day is refused.
    assert ask(meter, TimeSyncRequest(when=near + dt.timedelta(minutes=1))) is None
    assert model.now() == near + dt.timedelta(seconds=5)
    assert meter.counters["time_sync_accepted"] == 1
    assert meter.counters["time_sync_rejected"] == 2


def test_write_time_and_date_need_the_password(meter: SimulatedMeter) -> None:
    time_item = by_di(0x04000102)
    wrong = WriteRequest(address=ADDR, di=0x04000102, password="02999999",
                         body=encode_value(time_item, dt.time(8, 30, 0)))
    assert abnormal(ask(meter, wrong)) == 0x04
    assert meter.model.now() == START
    ok = WriteRequest(address=ADDR, di=0x04000102, password="04000000", operator="00000042",
                      body=encode_value(time_item, dt.time(8, 30, 0)))
    reply = ask(meter, ok)
    assert isinstance(reply, Ack) and reply.to_frame().control == 0x94
    assert meter.model.now() == dt.datetime(2024, 3, 10, 8, 30, 0)
    date = WriteRequest(address=ADDR, di=0x04000101, password="04000000",
                        body=encode_value(by_di(0x04000101), dt.date(2025, 1, 2)))
    assert isinstance(ask(meter, date), Ack)
    assert read(meter, 0x04000101) == dt.date(2025, 1, 2)
    assert read(meter, 0x04000102) == dt.time(8, 30, 0)
    assert meter.audit[-1].operator == "00000000" and meter.audit[-1].accepted
    # Energy is not writable: unauthorised.  Garbage for a time: other error.
    energy_write = WriteRequest(address=ADDR, di=0x00010000, password="04000000",
                                body=b"\0" * 4)
    assert abnormal(ask(meter, energy_write)) == 0x04
    bad = WriteRequest(address=ADDR, di=0x04000102, password="04000000", body=b"\x99\x99\x99")
    assert abnormal(ask(meter, bad)) == 0x01


# ---- remote control ---------------------------------------------------------------------------

def test_remote_trip_and_close(meter: SimulatedMeter, clock: ManualClock) -> None:
    expiry = START + dt.timedelta(hours=1)
    reply = ask(meter, control(RelayCommand.TRIP, expiry))
    assert isinstance(reply, Ack) and reply.to_frame().control == 0x9C
    status = read(meter, 0x04000503)
    assert status.fields["relay_open"] == 1 and status.fields["relay_command_open"] == 1
    record = meter.audit[-1]
    assert (record.operator, record.action, record.accepted) == ("12345678", "TRIP", True)
    e = read(meter, 0x00010000)
    clock.advance(1800)
    assert read(meter, 0x00010000) == e
    assert read(meter, 0x02020100) == 0
    assert isinstance(ask(meter, control(RelayCommand.CLOSE_PERMITTED, expiry)), Ack)
    status = read(meter, 0x04000503)
    assert status.fields["relay_open"] == 0 and status.fields["relay_command_open"] == 0
    assert isinstance(ask(meter, control(RelayCommand.TRIP, expiry)), Ack)
    assert isinstance(ask(meter, control(RelayCommand.CLOSE_DIRECT, expiry)), Ack)
    assert read(meter, 0x04000503).fields["relay_open"] == 0


def test_remote_control_refusals(meter: SimulatedMeter) -> None:
    future = START + dt.timedelta(minutes=5)
    # Expired (the meter clock decides), wrong code, too low a level: relay untouched.
    assert abnormal(ask(meter, control(RelayCommand.TRIP, START))) == 0x01
    assert abnormal(ask(meter, control(RelayCommand.TRIP, future, "02111111"))) == 0x04
    assert abnormal(ask(meter, control(RelayCommand.TRIP, future, "04000000"))) == 0x04
    assert abnormal(ask(meter, control(0x55, future))) == 0x01  # type: ignore[arg-type]
    assert not meter.model.relay_open
    assert [r.reason for r in meter.audit] == ["expired", "password", "password",
                                               "unknown command"]
    assert meter.counters["control_refused"] == 4
    # ESAM-encrypted commands (ciphertext instead of N1..N8) cannot be checked here.
    cipher = RemoteControlRequest(address=ADDR, password="98000000", ciphertext=b"\x11" * 16)
    assert abnormal(ask(meter, cipher)) == 0x04


def test_hold_power_and_alarm_commands(meter: SimulatedMeter) -> None:
    future = START + dt.timedelta(minutes=5)
    for command in (RelayCommand.HOLD_POWER, RelayCommand.TRIP, RelayCommand.ALARM):
        assert isinstance(ask(meter, control(command, future)), Ack)
    fields = read(meter, 0x04000503).fields
    # Under hold power the trip is acknowledged, but the relay stays closed.
    assert fields["hold_power"] == 1 and fields["relay_open"] == 0
    assert fields["pre_trip_alarm"] == 1
    for command in (RelayCommand.HOLD_POWER_RELEASE, RelayCommand.ALARM_RELEASE):
        assert isinstance(ask(meter, control(command, future)), Ack)
    fields = read(meter, 0x04000503).fields
    assert fields["hold_power"] == 0 and fields["pre_trip_alarm"] == 0
    assert isinstance(ask(meter, control(RelayCommand.TRIP, future)), Ack)
    assert read(meter, 0x04000503).fields["relay_open"] == 1


# ---- clearing, baud, password -------------------------------------------------------------------

def test_clear_requests_check_the_password(meter: SimulatedMeter) -> None:
    assert read(meter, 0x00010000) > 0
    assert abnormal(ask(meter, ClearMeterRequest(address=ADDR, password="02123456"))) == 0x04
    assert read(meter, 0x00010000) > 0
    reply = ask(meter, ClearMeterRequest(address=ADDR, password=GOOD_PW, operator="00000007"))
    assert isinstance(reply, Ack) and reply.to_frame().control == 0x9A
    assert read(meter, 0x00010000) == 0 and read(meter, 0x00010001) == 0
    demand = ask(meter, ClearDemandRequest(address=ADDR, password=GOOD_PW))
    assert isinstance(demand, Ack) and demand.to_frame().control == 0x99
    assert abnormal(ask(meter, ClearDemandRequest(address=ADDR, password="02000001"))) == 0x04


def test_clear_events(model: MeterModel) -> None:
    meter = SimulatedMeter(model)
    model.power_down_count, model.cover_open_count = 5, 2
    reply = ask(meter, ClearEventsRequest(address=ADDR, password=GOOD_PW, di=0x03110000))
    assert isinstance(reply, Ack) and reply.to_frame().control == 0x9B
    assert read(meter, 0x03110000) == 0 and read(meter, 0x03300D00) == 2
    assert abnormal(ask(meter, ClearEventsRequest(address=ADDR, password="04000000"))) == 0x04
    assert isinstance(ask(meter, ClearEventsRequest(address=ADDR, password=GOOD_PW)), Ack)
    assert read(meter, 0x03300D00) == 0


def test_change_baud(meter: SimulatedMeter) -> None:
    reply = ask(meter, ChangeBaudRequest(address=ADDR, feature=0x10))  # bit 4: 4800
    assert isinstance(reply, ChangeBaudReply) and reply.feature == 0x10
    assert reply.to_frame().control == 0x97
    assert meter.baud == 4800
    assert abnormal(ask(meter, ChangeBaudRequest(address=ADDR, feature=0x18))) == 0x08
    assert abnormal(ask(meter, ChangeBaudRequest(address=ADDR, feature=0x40))) == 0x08  # 19200
    assert meter.baud == 4800


def test_change_password(meter: SimulatedMeter) -> None:
    future = START + dt.timedelta(minutes=5)
    change = ChangePasswordRequest(address=ADDR, di=0x04000C03, old=GOOD_PW, new="02654321")
    reply = ask(meter, change)
    assert isinstance(reply, ChangePasswordReply) and reply.new == "02654321"
    assert abnormal(ask(meter, control(RelayCommand.ALARM, future))) == 0x04
    assert isinstance(ask(meter, control(RelayCommand.ALARM, future, "02654321")), Ack)
    # A level-04 password cannot set the level-02 one; the new level must match the DI.
    low = ChangePasswordRequest(address=ADDR, di=0x04000C03, old="04000000", new="02000000")
    assert abnormal(ask(meter, low)) == 0x04
    mismatch = ChangePasswordRequest(address=ADDR, di=0x04000C05, old="02654321",
                                     new="02111111")
    assert abnormal(ask(meter, mismatch)) == 0x04
    assert parse_password("04ABCDEF") == (4, "ABCDEF")
    with pytest.raises(ValueError):
        parse_password("0212345")


# ---- DL/T645-1997 -------------------------------------------------------------------------------

def test_1997_meter(model: MeterModel) -> None:
    meter = SimulatedMeter(model, version="1997")
    assert read(meter, 0x9010) == model.read("energy_active_forward_total")
    volts = read(meter, 0xB611)
    assert volts == energy(model, "voltage_a").quantize(Decimal(1))
    amps = read(meter, 0xB621)
    assert abs(amps - model.read("current_a")) <= Decimal("0.005")
    assert read(meter, 0xC010) == START.date() and read(meter, 0xC011) == START.time()
    block = read(meter, 0x901F)
    assert block["energy_active_forward_t1"] == model.read("energy_active_forward_t1")
    reply = ask(meter, ReadRequest(address=ADDR, di=0x9999, version=V97))
    assert isinstance(reply, AbnormalReply) and reply.errors == ("data_identifier_error",)
    assert reply.to_frame().control == 0xC1
    # 2007 requests are not this meter's language.
    assert ask(meter, ReadRequest(address=ADDR, di=0x00010000)) is None
    write = WriteRequest(address=ADDR, di=0xC011, password="04000000", version=V97,
                         body=encode_value(by_di(0xC011, V97), dt.time(6, 0, 0)))
    assert isinstance(ask(meter, write), Ack)
    assert model.now() == dt.datetime(2024, 3, 10, 6, 0, 0)


def test_1997_follow_up(model: MeterModel) -> None:
    meter = SimulatedMeter(model, version="1997", max_frame_data=10)
    first = ask(meter, ReadRequest(address=ADDR, di=0x901F, version=V97))
    assert isinstance(first, ReadReply) and first.follow_up and first.to_frame().control == 0xA1
    body = first.body
    while True:
        nxt = ask(meter, ReadFollowUpRequest(address=ADDR, di=0x901F, version=V97))
        assert isinstance(nxt, ReadFollowUpReply) and nxt.seq is None
        body += nxt.body
        if not nxt.follow_up:
            break
    assert decode_value(by_di(0x901F, V97), body) == read(SimulatedMeter(model, version="1997"),
                                                           0x901F)


def test_make_meters_gives_each_meter_its_own_load() -> None:
    clock = ManualClock(START)
    meters = make_meters([f"{i:012d}" for i in range(1, 4)], seed=3, clock=clock)
    assert [m.address for m in meters] == ["000000000001", "000000000002", "000000000003"]
    loads = {m.model.base_kw for m in meters}
    assert len(loads) == 3
    again = make_meters(["000000000002"], seed=3, clock=ManualClock(START))[0]
    assert again.model.snapshot() == meters[1].model.snapshot()

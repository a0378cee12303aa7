"""The DI catalogue: the items a utility reads, with the right formats, signs and units."""

from __future__ import annotations

import datetime as dt
from decimal import Decimal

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from protocols.dlt645 import (
    CATALOGUE,
    Format,
    PayloadError,
    StatusWord,
    UnknownDataItem,
    Version,
    by_di,
    by_name,
    decode_value,
    encode_value,
    parse_di,
)
from protocols.quantities import QUANTITIES, normalise_address

V7, V97 = Version.V2007, Version.V1997

REQUIRED_2007 = {
    0x00000000: ("energy_active_combined_total", "kWh"),
    0x00000100: ("energy_active_combined_t1", "kWh"),
    0x00010000: ("energy_active_forward_total", "kWh"),
    0x00010400: ("energy_active_forward_t4", "kWh"),
    0x00020000: ("energy_active_reverse_total", "kWh"),
    0x00030000: ("energy_reactive_combined1_total", "kvarh"),
    0x00040000: ("energy_reactive_combined2_total", "kvarh"),
    0x0001FF00: ("energy_active_forward_block", "kWh"),
    0x02010100: ("voltage_a", "V"),
    0x02010300: ("voltage_c", "V"),
    0x0201FF00: ("voltage_block", "V"),
    0x02020100: ("current_a", "A"),
    0x0202FF00: ("current_block", "A"),
    0x02030000: ("power_active_total", "kW"),
    0x02030300: ("power_active_c", "kW"),
    0x02040000: ("power_reactive_total", "kvar"),
    0x02050000: ("power_apparent_total", "kVA"),
    0x02060000: ("power_factor_total", ""),
    0x02800002: ("frequency", "Hz"),
    0x04000101: ("meter_date", ""),
    0x04000102: ("meter_time", ""),
    0x04000401: ("meter_address", ""),
    0x04000503: ("status_word_3", ""),
    0x04000507: ("status_word_7", ""),
    0x00900200: ("balance_amount", "yuan"),
    0x00900201: ("overdraft_amount", "yuan"),
    0x03330201: ("purchase_count", ""),
    0x05060001: ("freeze_daily_time", ""),
    0x05060101: ("freeze_daily_energy_active_forward", "kWh"),
    0x03110000: ("power_down_count", ""),
    0x03300D00: ("cover_open_count", ""),
}
REQUIRED_1997 = {
    0x9010: ("energy_active_forward_total", "kWh"),
    0x9020: ("energy_active_reverse_total", "kWh"),
    0xB611: ("voltage_a", "V"),
    0xB613: ("voltage_c", "V"),
    0xB621: ("current_a", "A"),
    0xB623: ("current_c", "A"),
    0xB630: ("power_active_total", "kW"),
    0xC010: ("meter_date", ""),
    0xC011: ("meter_time", ""),
}


@pytest.mark.parametrize(("version", "table"), [(V7, REQUIRED_2007), (V97, REQUIRED_1997)])
def test_required_items(version: Version, table: dict[int, tuple[str, str]]) -> None:
    for di, (name, unit) in table.items():
        item = by_di(di, version)
        assert (item.name, item.unit) == (name, unit), item.di_hex


def test_names_and_units_come_from_the_vocabulary() -> None:
    for item in CATALOGUE:
        members = item.members or (item,)
        for m in members:
            assert m.name in QUANTITIES, m.name
            assert m.unit == QUANTITIES[m.name].unit


def test_one_name_means_one_quantity_in_both_editions() -> None:
    assert by_name("voltage_a", V7).unit == by_name("voltage_a", V97).unit == "V"
    assert by_name("energy_active_forward_total", V97).di == 0x9010


def test_bcd_formats() -> None:
    assert decode_value(by_di(0x02010100), bytes.fromhex("0023")) == Decimal("230.0")
    # XXX.XXX current, sign bit set: -1.500 A
    assert decode_value(by_di(0x02020100), bytes.fromhex("001580")) == Decimal("-1.500")
    assert decode_value(by_di(0x02060000), bytes.fromhex("8589")) == Decimal("-0.985")
    assert decode_value(by_di(0x9010, V97), bytes.fromhex("78563412")) == Decimal("123456.78")
    assert decode_value(by_di(0xB611, V97), bytes.fromhex("2002")) == Decimal("220")
    assert decode_value(by_di(0x03110000), bytes.fromhex("120000")) == 12


def test_unsigned_items_do_not_take_a_sign() -> None:
    with pytest.raises(PayloadError, match="not BCD"):
        decode_value(by_di(0x02010100), bytes.fromhex("00A0"))
    with pytest.raises(PayloadError, match="negative"):
        encode_value(by_di(0x02010100), Decimal("-1"))


def test_date_time_and_address() -> None:
    # YYMMDDWW low byte first: 2026-11-24 is a Tuesday (02).
    assert decode_value(by_di(0x04000101), bytes.fromhex("02241126")) == dt.date(2026, 11, 24)
    assert encode_value(by_di(0x04000101), dt.date(2026, 11, 24)) == bytes.fromhex("02241126")
    assert decode_value(by_di(0x04000102), bytes.fromhex("563412")) == dt.time(12, 34, 56)
    assert decode_value(by_di(0x05060001), bytes.fromhex("0000241126")) == dt.datetime(
        2026, 11, 24, 0, 0
    )
    assert decode_value(by_di(0x04000401), bytes.fromhex("230100000000")) == "000000000123"
    with pytest.raises(PayloadError, match="valid date"):
        decode_value(by_di(0x04000101), bytes.fromhex("02321326"))


def test_status_word_3_relay_bits() -> None:
    sw = decode_value(by_di(0x04000503), (0x0250).to_bytes(2, "little"))
    assert isinstance(sw, StatusWord)
    assert sw.raw == 0x0250
    assert sw.fields["relay_open"] == 1  # bit 4
    assert sw.fields["relay_command_open"] == 1  # bit 6
    assert sw.fields["pre_trip_alarm"] == 0  # bit 7
    assert sw.fields["prepaid_type"] == 2  # bits 8-9: money-prepaid
    closed = decode_value(by_di(0x04000503), bytes(2))
    assert isinstance(closed, StatusWord) and closed.fields["relay_open"] == 0


def test_blocks_decode_members_and_accept_fewer_tariffs() -> None:
    block = by_di(0x0001FF00)
    assert block.format is Format.BLOCK and len(block.members) == 5
    full = encode_value(block, {m.name: Decimal(f"{i}.25") for i, m in enumerate(block.members)})
    value = decode_value(block, full)
    assert value == {m.name: Decimal(f"{i}.25") for i, m in enumerate(block.members)}
    # A meter with two tariffs sends total + t1 + t2 only.
    short = decode_value(block, full[:12])
    assert isinstance(short, dict) and list(short) == [m.name for m in block.members[:3]]
    with pytest.raises(PayloadError, match="inside"):
        decode_value(block, full[:10])


def test_settlement_periods() -> None:
    last = by_di(0x00010001)
    assert last.name == "energy_active_forward_total" and last.settlement == 1
    assert by_name("energy_active_forward_total").settlement == 0


def test_parse_di() -> None:
    assert parse_di("00010000") == (0x00010000, V7)
    assert parse_di("9010") == (0x9010, V97)
    with pytest.raises(UnknownDataItem):
        parse_di("123")
    with pytest.raises(UnknownDataItem):
        by_name("no_such_quantity")


def test_addresses() -> None:
    assert normalise_address("123") == "000000000123"
    assert normalise_address("aaaaaaaaaaaa") == "AAAAAAAAAAAA"
    with pytest.raises(ValueError, match="only digits"):
        normalise_address("12345678901Z")


NUMERIC = [i for i in CATALOGUE if i.format is Format.NUMBER]


@settings(max_examples=200, deadline=None)
@given(item=st.sampled_from(NUMERIC), data=st.data())
def test_numbers_round_trip(item: object, data: st.DataObject) -> None:
    from protocols.dlt645 import DataItem

    assert isinstance(item, DataItem)
    limit = (8 * 10 ** (item.size * 2 - 1) if item.signed else 10 ** (item.size * 2)) - 1
    raw = data.draw(st.integers(-limit if item.signed else 0, limit))
    value = Decimal(raw).scaleb(-item.decimals)
    assert decode_value(item, encode_value(item, value)) == value

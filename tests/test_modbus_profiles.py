"""Modbus device profiles: loading and validation, read planning, register codec."""

from __future__ import annotations

import struct
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from collector.config.profiles import (
    SHIPPED_DIR,
    available_profiles,
    clear_cache,
    load_profile,
    load_profile_file,
)
from protocols.modbus import (
    WORDS,
    Profile,
    ProfileError,
    ReadBlock,
    Register,
    RelayControl,
    decode_block,
    decode_register,
    encode_value,
    parse_profile,
    plan_reads,
    profile_from_dict,
    relay_readback_block,
    relay_state,
    relay_write,
)
from protocols.quantities import QUANTITIES

SHIPPED = sorted(p.stem for p in SHIPPED_DIR.glob("*.toml"))

HEAD = """
[profile]
manufacturer = "Test"
model = "T1"
manual = "none, test"
"""


def toml(registers: str, head: str = HEAD, extra: str = "") -> str:
    return head + registers + extra


def reg(name: str, address: int | str, *, type: str = "uint16", unit: str | None = None,
        function: int = 3, **more: Any) -> str:
    if unit is None:
        unit = QUANTITIES[name].unit
    lines = ["[[register]]", f'name = "{name}"', f"function = {function}",
             f"address = {address if isinstance(address, int) else repr(address)}",
             f'type = "{type}"', f'unit = "{unit}"']
    for k, v in more.items():
        lines.append(f"{k} = {v}")
    return "\n".join(lines) + "\n\n"


def problems(text: str, source: str = "t.toml") -> list[str]:
    with pytest.raises(ProfileError) as e:
        parse_profile(text, name="t", source=source)
    assert e.value.source == source
    found = e.value.problems
    if len(found) == 1:
        assert str(e.value) == found[0]
    else:
        assert str(e.value).splitlines() == [f"profile {source}: {len(found)} problems",
                                             *(f"  {p}" for p in found)]
    return found


def one_problem(text: str) -> str:
    found = problems(text)
    assert len(found) == 1, found
    return found[0]


def register(name: str = "voltage_a", address: int = 0, type: str = "uint16",
             scale: str = "1", word_order: str = "big", function: int = 3) -> Register:
    return Register(name=name, function=function, address=address,  # type: ignore[arg-type]
                    type=type, unit=QUANTITIES[name].unit,  # type: ignore[arg-type]
                    scale=Decimal(scale), word_order=word_order)  # type: ignore[arg-type]


def profile(*registers: Register, max_registers: int = 125, max_gap: int = 0,
            relay: RelayControl | None = None) -> Profile:
    return Profile(name="p", manufacturer="m", model="x", manual="none",
                   registers=tuple(registers), relay=relay, max_registers=max_registers,
                   max_gap=max_gap)


# -- shipped profiles -------------------------------------------------------------------


def test_the_three_profiles_ship() -> None:
    assert {"acrel-ddsy1352", "acrel-dtsy1352", "generic-energy-meter"} <= set(SHIPPED)


@pytest.mark.parametrize("name", SHIPPED)
def test_shipped_profile_loads_and_cites_its_sources(name: str) -> None:
    p = load_profile(name)
    assert p.name == name
    assert p.manual.strip() and p.registers
    for r in p.registers:
        assert r.unit == QUANTITIES[r.name].unit
        assert r.note.strip(), f"{name}: {r.name} has no source note"
    if p.relay is not None:
        assert p.relay.note.strip()
    # every register can be planned and decoded from zero words
    for block in plan_reads(p):
        assert block.count <= p.max_registers
        values = decode_block(block, [0] * block.count)
        assert set(values) == {r.name for r in block.registers}


@pytest.mark.parametrize("name", SHIPPED)
def test_shipped_profile_header_documents_the_format(name: str) -> None:
    text = (SHIPPED_DIR / f"{name}.toml").read_text(encoding="utf-8")
    header = text.split("\n[profile]")[0]
    for word in ("[[register]]", "[relay]", "0-based", "word_order", "public"):
        assert word in header, f"{name}: header does not explain {word}"


def test_acrel_ddsy1352_matches_the_manual_table() -> None:
    p = load_profile("acrel-ddsy1352")
    assert p.register("voltage_a").address == 0x000B
    assert p.register("voltage_a").scale == Decimal("0.1")
    assert p.register("power_active_total").type == "int16"
    assert p.register("energy_active_combined_total").type == "uint32"
    # block of the manual's example layout: 0x000B..0x000D
    block = next(b for b in plan_reads(p, ["voltage_a", "current_a", "power_active_total"]))
    assert (block.start, block.count) == (0x000B, 3)
    assert decode_block(block, [2201, 512, 0xFF38]) == {
        "voltage_a": Decimal("220.1"), "current_a": Decimal("5.12"),
        "power_active_total": Decimal("-0.200")}
    assert p.relay is not None and not p.relay.public  # third-party source, not the manual
    # No relay status register is known: the control word is read back (public = false).
    assert relay_state(p, [1]) is True and relay_state(p, [0]) is False


def test_profiles_by_path_and_from_extra_directories(tmp_path: Path) -> None:
    clear_cache()
    text = (SHIPPED_DIR / "generic-energy-meter.toml").read_text(encoding="utf-8")
    local = tmp_path / "generic-energy-meter.toml"
    local.write_text(text.replace('model = "SDM630-Modbus"', 'model = "local copy"'),
                     encoding="utf-8")
    assert load_profile("generic-energy-meter", search=[tmp_path]).model == "local copy"
    assert load_profile("generic-energy-meter").model == "SDM630-Modbus"
    assert load_profile(str(local)).model == "local copy"
    assert load_profile(local).name == "generic-energy-meter"
    assert load_profile("acrel-ddsy1352.toml").model == "DDSY1352"  # not in cwd: a name
    names = available_profiles([tmp_path])
    assert names["generic-energy-meter"] == local and "acrel-ddsy1352" in names


def test_cache_returns_the_same_object_until_the_file_changes(tmp_path: Path) -> None:
    clear_cache()
    path = tmp_path / "m.toml"
    path.write_text(toml(reg("voltage_a", 0)), encoding="utf-8")
    first = load_profile_file(path)
    assert load_profile_file(path) is first
    path.write_text(toml(reg("voltage_a", 0) + reg("current_a", 1)), encoding="utf-8")
    second = load_profile_file(path)
    assert second is not first and len(second.registers) == 2


def test_not_found_and_unreadable_and_invalid_raise_profile_error(tmp_path: Path) -> None:
    with pytest.raises(ProfileError) as e:
        load_profile("acrel-ddsy1353")
    assert "no profile 'acrel-ddsy1353' (did you mean 'acrel-ddsy1352'?)" in str(e.value)
    assert str(SHIPPED_DIR) in str(e.value)
    with pytest.raises(ProfileError) as e:
        load_profile(tmp_path / "missing.toml")
    assert "missing.toml: cannot read" in e.value.problems[0]
    bad = tmp_path / "bad.toml"
    bad.write_text(toml(reg("voltage_a", 0, unit="kV")), encoding="utf-8")
    with pytest.raises(ProfileError) as e:
        load_profile(bad)
    assert e.value.source == str(bad)
    assert e.value.problems[0].startswith(f"{bad}: register 1 (voltage_a): key 'unit'")


# -- validation: every problem kind -------------------------------------------------------


def test_a_valid_profile_parses_with_defaults() -> None:
    p = parse_profile(toml(reg("voltage_a", "0x000B", scale='"0.1"')), name="t")
    r = p.register("voltage_a")
    assert (r.address, r.scale, r.word_order, r.public, r.note) == (11, Decimal("0.1"), "big",
                                                                    True, "")
    assert (p.max_registers, p.max_gap, p.relay) == (125, 0, None)


def test_unknown_type() -> None:
    assert one_problem(toml(reg("voltage_a", 0, type="int64"))) == (
        "t.toml: register 1 (voltage_a): key 'type': expected one of int16, uint16, int32, "
        "uint32, float32, got 'int64' (did you mean 'int16'?)")


def test_overlapping_registers_name_both() -> None:
    text = toml(reg("voltage_a", 10) + reg("energy_active_forward_total", 9, type="uint32"))
    assert one_problem(text) == (
        "t.toml: registers 1 (voltage_a) and 2 (energy_active_forward_total): overlap on "
        "function 3: 10 and 9..10")


def test_overlap_is_found_even_when_a_name_is_wrong() -> None:
    text = toml(reg("voltage_a", 16).replace("voltage_a", "voltag_a")
                + reg("current_a", 15, type="uint32"))
    assert problems(text)[-1] == (
        "t.toml: registers 1 (voltag_a) and 2 (current_a): overlap on function 3: 16 and "
        "15..16")


def test_same_addresses_on_different_functions_do_not_overlap() -> None:
    p = parse_profile(toml(reg("voltage_a", 0) + reg("voltage_b", 0, function=4)), name="t")
    assert len(p.registers) == 2


def test_missing_unit() -> None:
    text = toml('[[register]]\nname = "voltage_a"\nfunction = 3\naddress = 0\n'
                'type = "uint16"\n')
    assert one_problem(text) == (
        "t.toml: register 1 (voltage_a): key 'unit' missing (the vocabulary's unit for "
        "voltage_a is 'V')")


def test_unit_different_from_the_vocabulary() -> None:
    assert one_problem(toml(reg("energy_active_forward_total", 0, type="uint32",
                                unit="Wh"))) == (
        "t.toml: register 1 (energy_active_forward_total): key 'unit': expected 'kWh' (the "
        "vocabulary's unit for energy_active_forward_total), got 'Wh'")


def test_unknown_quantity_with_did_you_mean() -> None:
    assert one_problem(toml(reg("voltage_a", 0).replace("voltage_a", "votage_a"))) == (
        "t.toml: register 1 (votage_a): key 'name': unknown quantity 'votage_a' "
        "(did you mean 'voltage_a'?)")


def test_quantity_a_register_cannot_carry() -> None:
    assert one_problem(toml(reg("meter_date", 0))) == (
        "t.toml: register 1 (meter_date): key 'name': quantity 'meter_date' is a date; "
        "a register carries only number, count or status quantities")


def test_duplicate_quantity() -> None:
    assert one_problem(toml(reg("voltage_a", 0) + reg("voltage_a", 5))) == (
        "t.toml: register 2 (voltage_a): key 'name': duplicate quantity 'voltage_a', "
        "already mapped by register 1")


@pytest.mark.parametrize(("address", "expected"), [
    (65536, "key 'address': expected 0..65535, got 65536"),
    (-1, "key 'address': expected 0..65535, got -1"),
    ('"0x10000"', "key 'address': expected 0..65535, got '0x10000'"),
    ('"0xZZ"', "key 'address': expected an integer or a '0x...' hex string, got '0xZZ'"),
])
def test_address_out_of_range(address: int | str, expected: str) -> None:
    text = toml(reg("voltage_a", 0).replace("address = 0", f"address = {address}"))
    assert one_problem(text) == f"t.toml: register 1 (voltage_a): {expected}"


def test_32_bit_register_running_past_the_last_address() -> None:
    assert one_problem(toml(reg("energy_active_forward_total", 65535, type="uint32"))) == (
        "t.toml: register 1 (energy_active_forward_total): key 'address': a uint32 at "
        "65535 ends past 65535")


@pytest.mark.parametrize("scale", ['"0"', "0", "0.0", '"0.000"'])
def test_scale_zero(scale: str) -> None:
    problem = one_problem(toml(reg("voltage_a", 0, scale=scale)))
    assert problem.startswith("t.toml: register 1 (voltage_a): key 'scale': must not be 0, got")


def test_scale_not_a_number() -> None:
    assert one_problem(toml(reg("voltage_a", 0, scale='"a tenth"'))) == (
        "t.toml: register 1 (voltage_a): key 'scale': expected a decimal number "
        "(e.g. \"0.01\"), got 'a tenth'")


def test_float_scale_is_taken_as_written() -> None:
    p = parse_profile(toml(reg("voltage_a", 0, scale="0.1")), name="t")
    assert p.register("voltage_a").scale == Decimal("0.1")


def test_unknown_keys_everywhere() -> None:
    text = toml(reg("voltage_a", 0, wordorder='"big"'),
                head=HEAD + "max_regs = 10\n",
                extra="[relay]\nkind = \"coil\"\naddress = 1\ntrip = 1\nclose = 0\n"
                      "open_wen = 1\n\n[extra]\nx = 1\n")
    assert problems(text) == [
        "t.toml: unknown key 'extra'; expected one of profile, register, unmapped, relay",
        "t.toml: [profile]: unknown key 'max_regs' (did you mean 'max_registers'?); expected "
        "one of manufacturer, model, manual, max_registers, max_gap, curve",
        "t.toml: register 1 (voltage_a): unknown key 'wordorder' (did you mean "
        "'word_order'?); expected one of name, function, address, type, word_order, scale, "
        "unit, public, note",
        "t.toml: [relay]: unknown key 'open_wen' (did you mean 'open_when'?); expected one "
        "of kind, address, trip, close, readback_function, readback_address, readback_bit, "
        "open_when, public, note",
    ]


def test_function_word_order_and_public_note() -> None:
    text = toml(reg("voltage_a", 0, function=6)
                + reg("energy_active_forward_total", 2, type="uint32", word_order='"middle"')
                + reg("current_a", 4, public="false"))
    assert problems(text) == [
        "t.toml: register 1 (voltage_a): key 'function': expected one of 3, 4, got 6",
        "t.toml: register 2 (energy_active_forward_total): key 'word_order': expected one of "
        "big, little, got 'middle'",
        "t.toml: register 3 (current_a): key 'note': public = false needs a note saying "
        "where the address comes from",
    ]


def test_missing_profile_table_and_keys() -> None:
    assert problems(reg("voltage_a", 0)) == [
        "t.toml: key 'profile' missing (the [profile] table)"]
    assert problems('[profile]\nmodel = "x"\n' + reg("voltage_a", 0)) == [
        "t.toml: [profile]: key 'manufacturer' missing",
        "t.toml: [profile]: key 'manual' missing (which public manual the register map "
        "comes from)",
    ]
    assert problems(HEAD) == ["t.toml: no [[register]] tables"]


def test_profile_limits() -> None:
    text = toml(reg("voltage_a", 0), head=HEAD + "max_registers = 126\nmax_gap = -1\n")
    assert problems(text) == [
        "t.toml: [profile]: key 'max_registers': expected 1..125, got 126",
        "t.toml: [profile]: key 'max_gap': expected 0..124, got -1",
    ]


def test_all_problems_are_reported_together() -> None:
    text = toml(reg("voltage_a", 0, unit="kV") + reg("votage_b", 1, unit="V")
                + reg("current_a", 70000, type="int64"))
    found = problems(text)
    assert len(found) == 4
    assert [p.split(": ")[1] for p in found] == [
        "register 1 (voltage_a)", "register 2 (votage_b)", "register 3 (current_a)",
        "register 3 (current_a)"]


def test_toml_syntax_error_names_the_file() -> None:
    [problem] = problems("[profile\n", source="x/broken.toml")
    assert problem.startswith("x/broken.toml: TOML syntax: ")


def test_relay_table_is_parsed_and_checked() -> None:
    relay = ('[relay]\nkind = "register"\naddress = "0x0058"\ntrip = 1\nclose = 0\n'
             "readback_function = 3\nreadback_address = 100\nreadback_bit = 4\n"
             "open_when = 1\n")
    p = parse_profile(toml(reg("voltage_a", 0), extra=relay), name="t")
    assert p.relay == RelayControl(kind="register", address=0x58, trip=1, close=0,
                                   readback_function=3, readback_address=100,
                                   readback_bit=4, open_when=1)
    bad = ('[relay]\nkind = "switch"\naddress = 1\ntrip = 2\nclose = 2\n'
           "readback_address = 5\nreadback_bit = 16\npublic = false\n")
    assert problems(toml(reg("voltage_a", 0), extra=bad)) == [
        "t.toml: [relay]: key 'kind': expected one of coil, register, got 'switch'",
        "t.toml: [relay]: keys 'trip' and 'close': must differ, both are 2",
        "t.toml: [relay]: key 'readback_function' missing: readback_address is set",
        "t.toml: [relay]: key 'readback_bit': expected 0..15, got 16",
        "t.toml: [relay]: key 'note': public = false needs a note saying where the address "
        "comes from",
    ]
    coil = '[relay]\nkind = "coil"\naddress = 1\ntrip = 2\nclose = 0\n'
    assert problems(toml(reg("voltage_a", 0), extra=coil)) == [
        "t.toml: [relay]: key 'trip': expected 0..1, got 2"]


def test_profile_from_dict_names_the_profile() -> None:
    with pytest.raises(ProfileError) as e:
        profile_from_dict({"profile": {"manufacturer": "m", "model": "x", "manual": "y"},
                           "register": [{"name": "voltage_a", "function": 3, "address": 0,
                                         "type": "uint16", "unit": "V", "scale": 0}]},
                          name="site-meter")
    assert e.value.problems == [
        "site-meter: register 1 (voltage_a): key 'scale': must not be 0, got 0"]


# -- planning ---------------------------------------------------------------------------


def test_plan_merges_contiguous_registers() -> None:
    p = profile(register("voltage_a", 0), register("voltage_b", 1), register("voltage_c", 2),
                register("energy_active_forward_total", 3, "uint32"))
    [block] = plan_reads(p)
    assert (block.function, block.start, block.count) == (3, 0, 5)
    assert [r.name for r in block.registers] == ["voltage_a", "voltage_b", "voltage_c",
                                                 "energy_active_forward_total"]


def test_plan_splits_at_gaps_beyond_max_gap() -> None:
    regs = (register("voltage_a", 0), register("voltage_b", 3), register("voltage_c", 10))
    assert [(b.start, b.count) for b in plan_reads(profile(*regs))] == [(0, 1), (3, 1),
                                                                       (10, 1)]
    assert [(b.start, b.count) for b in plan_reads(profile(*regs, max_gap=2))] == [(0, 4),
                                                                                  (10, 1)]
    assert [(b.start, b.count) for b in plan_reads(profile(*regs, max_gap=6))] == [(0, 11)]


def test_plan_splits_at_max_registers() -> None:
    regs = [register(n, i) for i, n in enumerate(
        ("voltage_a", "voltage_b", "voltage_c", "current_a", "current_b"))]
    assert [(b.start, b.count) for b in plan_reads(profile(*regs, max_registers=2))] == [
        (0, 2), (2, 2), (4, 1)]
    # a 32-bit register is never cut in two
    regs32 = (register("voltage_a", 0), register("energy_active_forward_total", 1, "uint32"))
    assert [(b.start, b.count) for b in plan_reads(profile(*regs32, max_registers=2))] == [
        (0, 1), (1, 2)]


def test_plan_never_merges_across_functions() -> None:
    p = profile(register("voltage_a", 0, function=3), register("voltage_b", 1, function=4),
                register("voltage_c", 2, function=3))
    blocks = plan_reads(p, None)
    assert [(b.function, b.start, b.count) for b in blocks] == [(3, 0, 1), (3, 2, 1),
                                                               (4, 1, 1)]
    assert [(b.function, b.start, b.count) for b in plan_reads(
        profile(*p.registers, max_gap=1))] == [(3, 0, 3), (4, 1, 1)]


def test_plan_only_the_names_asked_for() -> None:
    p = profile(register("voltage_a", 0), register("voltage_b", 1), register("voltage_c", 2))
    blocks = plan_reads(p, ["voltage_c", "voltage_a", "voltage_a"])
    assert [(b.start, b.count) for b in blocks] == [(0, 1), (2, 1)]
    assert plan_reads(p, []) == []
    with pytest.raises(KeyError, match="frequency"):
        plan_reads(p, ["frequency"])


# -- codec --------------------------------------------------------------------------------


def test_known_vectors() -> None:
    f32 = register("voltage_a", 0, "float32")
    assert decode_register(f32, [0x4366, 0x0000]) == Decimal("230.0")
    assert decode_register(register("voltage_a", 0, "float32", word_order="little"),
                           [0x0000, 0x4366]) == Decimal("230")
    assert decode_register(f32, [0x3DCC, 0xCCCD]) == Decimal("0.1")  # not 0.100000001...
    assert str(decode_register(register("power_active_total", 0, "float32", "0.001"),
                               [0x449A, 0x5000])) == "1.2345"  # 1234.5 W
    assert decode_register(register("voltage_a", 0, scale="0.1"), [2201]) == Decimal("220.1")
    assert str(decode_register(register("voltage_a", 0, scale="0.1"), [2201])) == "220.1"
    assert decode_register(register("power_active_total", 0, "int16", "0.001"),
                           [0xFFFF]) == Decimal("-0.001")
    int32_le = register("power_active_total", 0, "int32", "0.001", word_order="little")
    assert decode_register(int32_le, [0xFFFE, 0xFFFF]) == Decimal("-0.002")
    assert decode_register(int32_le, [0x5678, 0x1234]) == Decimal("305419.896")
    assert decode_register(register("energy_active_forward_total", 0, "uint32", "0.01"),
                           [0x0001, 0x0000]) == Decimal("655.36")
    assert decode_register(register("energy_active_forward_total", 0, "uint32", "0.01",
                                    word_order="little"), [0x0000, 0x0001]) == Decimal("655.36")


def test_decode_block_takes_each_register_at_its_offset() -> None:
    p = profile(register("voltage_a", 10, scale="0.1"),
                register("energy_active_forward_total", 12, "uint32", "0.01"))
    assert len(plan_reads(p)) == 2  # one unused register between them, max_gap 0
    [block] = plan_reads(profile(*p.registers, max_gap=1))
    assert (block.start, block.count) == (10, 4)
    assert decode_block(block, [2301, 0xAAAA, 0x0001, 0xE240]) == {
        "voltage_a": Decimal("230.1"), "energy_active_forward_total": Decimal("1234.56")}
    with pytest.raises(ValueError, match="answered 3 word"):
        decode_block(block, [1, 2, 3])


def test_decode_rejects_bad_input() -> None:
    with pytest.raises(ValueError, match=r"out of 0\.\.65535"):
        decode_register(register(), [70000])
    with pytest.raises(ValueError, match="takes 2 word"):
        decode_register(register("voltage_a", 0, "float32"), [1])
    with pytest.raises(ValueError, match="not a finite number"):
        decode_register(register("voltage_a", 0, "float32"), [0x7FC0, 0x0000])


def test_encode_known_vectors_and_range() -> None:
    assert encode_value(register("voltage_a", 0, "float32"), Decimal("230")) == [0x4366, 0]
    assert encode_value(register("voltage_a", 0, "float32", word_order="little"), 230) == [
        0, 0x4366]
    assert encode_value(register("voltage_a", 0, scale="0.1"), "220.1") == [2201]
    assert encode_value(register("power_active_total", 0, "int16", "0.001"), -0.001) == [0xFFFF]
    with pytest.raises(ValueError, match="out of uint16 range"):
        encode_value(register("voltage_a", 0, scale="0.1"), 6553.6)
    with pytest.raises(ValueError, match="out of int16 range"):
        encode_value(register("power_active_total", 0, "int16", "0.001"), "-32.769")
    with pytest.raises(ValueError, match="does not fit a float32"):
        encode_value(register("voltage_a", 0, "float32"), Decimal("1e39"))


TYPES = sorted(WORDS)
SCALES = ["1", "0.1", "0.01", "0.001", "10", "0.5"]


@given(type=st.sampled_from(TYPES), word_order=st.sampled_from(["big", "little"]),
       scale=st.sampled_from(SCALES), data=st.data())
def test_round_trip_every_type_word_order_and_scale(type: str, word_order: str, scale: str,
                                                    data: st.DataObject) -> None:
    r = register("power_active_total", 0, type, scale, word_order)
    if type == "float32":
        f = data.draw(st.floats(width=32, allow_nan=False, allow_infinity=False))
        raw = [int(x) for x in struct.unpack(">HH", struct.pack(">f", f))]
        words = raw if word_order == "big" else raw[::-1]
        value = decode_register(r, words)
        assert float(value / Decimal(scale)) == pytest.approx(f, rel=1e-6, abs=1e-38)
        again = encode_value(r, value)
        assert decode_register(r, again) == value
        if Decimal(scale) == 1:
            assert again == words or (f == 0 and decode_register(r, again) == 0)
        return
    bits = 16 * WORDS[type]
    low, high = (-(1 << (bits - 1)), (1 << (bits - 1)) - 1) if type.startswith("int") \
        else (0, (1 << bits) - 1)
    n = data.draw(st.integers(low, high))
    value = Decimal(n) * Decimal(scale)
    words = encode_value(r, value)
    assert len(words) == WORDS[type] and all(0 <= w <= 0xFFFF for w in words)
    assert decode_register(r, words) == value
    assert encode_value(r, decode_register(r, words)) == words


@given(words=st.lists(st.integers(0, 0xFFFF), min_size=2, max_size=2),
       word_order=st.sampled_from(["big", "little"]))
def test_decode_then_encode_gives_the_same_words(words: list[int], word_order: str) -> None:
    for type in ("int32", "uint32", "int16", "uint16"):
        r = register("power_active_total", 0, type, "0.01", word_order)
        w = words[: r.words]
        assert encode_value(r, decode_register(r, w)) == w


# -- relay --------------------------------------------------------------------------------


def test_relay_state_from_the_readback_bit() -> None:
    relay = RelayControl(kind="coil", address=0, trip=1, close=0, readback_function=3,
                         readback_address=0x30, readback_bit=4, open_when=1)
    p = profile(register(), relay=relay)
    assert relay_readback_block(p) == ReadBlock(function=3, start=0x30, count=1, registers=())
    assert relay_state(p, [0x0010]) is True
    assert relay_state(p, [0x0000]) is False
    assert relay_state(p, [0xFFEF]) is False
    inverted = profile(register(), relay=RelayControl(
        kind="register", address=7, trip=2, close=3, readback_function=4,
        readback_address=1, readback_bit=0, open_when=0))
    assert relay_state(inverted, [0]) is True
    assert relay_write(p, True) == (5, 0, 0xFF00)
    assert relay_write(p, False) == (5, 0, 0x0000)
    assert relay_write(inverted, True) == (6, 7, 2)
    assert relay_write(inverted, False) == (6, 7, 3)


def test_relay_state_unknown_without_readback() -> None:
    p = profile(register(), relay=RelayControl(kind="coil", address=0, trip=1, close=0))
    assert relay_readback_block(p) is None
    assert relay_state(p, [0xFFFF]) is None
    assert relay_state(profile(register()), [1]) is None
    with pytest.raises(KeyError, match="no relay"):
        relay_write(profile(register()), True)


@pytest.mark.parametrize("f", [9.99999944211969e27, 3.4028234663852886e38,
                               -3.4028234663852886e38, 1.401298464324817e-45])
@pytest.mark.parametrize("scale", SCALES)
def test_float32_extremes_round_trip(f: float, scale: str) -> None:
    # Found by the property test: beyond 28 digits and at the float32 limit.
    r = register("power_active_total", 0, "float32", scale)
    words = [int(x) for x in struct.unpack(">HH", struct.pack(">f", f))]
    value = decode_register(r, words)
    assert decode_register(r, encode_value(r, value)) == value

"""The Modbus simulator answers every register a shipped profile lists, and ``[[unmapped]]``
(registers the manual lists that carry no quantity) in profiles."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from pymodbus.client import AsyncModbusTcpClient
from pymodbus.framer import FramerType
from pymodbus.pdu import ExceptionResponse, ModbusPDU

from collector.config.profiles import SHIPPED_DIR, load_profile
from protocols.modbus import Profile, ProfileError, Unmapped, parse_profile
from simulators.modbus import ModbusSimulator, make_modbus_meters, rtu_reply

SHIPPED = sorted(p.stem for p in SHIPPED_DIR.glob("*.toml"))
ILLEGAL_ADDRESS, ILLEGAL_VALUE = 2, 3


def listed(profile: Profile) -> Iterator[tuple[str, int, int, int]]:
    """(what, function, address, words) of every register the profile lists."""
    for r in profile.registers:
        yield r.name, r.function, r.address, r.words
    for u in profile.unmapped:
        yield f"unmapped {u.address:#06x}", u.function, u.address, u.words
    relay = profile.relay
    if relay is not None:
        if relay.kind == "register":
            yield "relay control", 3, relay.address, 1
        if relay.readback_function is not None and relay.readback_address is not None:
            yield "relay readback", relay.readback_function, relay.readback_address, 1


async def read(client: AsyncModbusTcpClient, function: int, address: int,
               count: int) -> ModbusPDU:
    if function == 3:
        return await client.read_holding_registers(address, count=count, device_id=1)
    return await client.read_input_registers(address, count=count, device_id=1)


def rtu(unit: int, function: int, address: int, arg: int) -> bytes:
    from pymodbus.framer import FramerRTU

    pdu = bytes((unit, function)) + address.to_bytes(2, "big") + arg.to_bytes(2, "big")
    return pdu + int(FramerRTU.compute_CRC(pdu)).to_bytes(2, "big")


@pytest.mark.parametrize("name", SHIPPED)
async def test_every_listed_register_is_answered(name: str) -> None:
    profile = load_profile(name)
    async with ModbusSimulator(profile, meters=1, transport="tcp") as sim:
        client = AsyncModbusTcpClient("127.0.0.1", port=sim.port, framer=FramerType.SOCKET,
                                      timeout=2, retries=0)
        assert await client.connect()
        try:
            for what, function, address, words in listed(profile):
                reply = await read(client, function, address, words)
                assert not reply.isError(), f"{name}: {what} at {address:#06x}: {reply}"
                assert len(reply.registers) == words
        finally:
            client.close()
        assert not sim.stats.exceptions, sim.stats.exceptions
    # The RS-485 line simulator answers the same ones.
    (meter,) = make_modbus_meters(profile, [1])
    for what, function, address, words in listed(profile):
        frame = rtu_reply(meter, rtu(1, function, address, words))
        assert frame[1] == function, f"{name}: {what} at {address:#06x}: exception {frame[2]}"


async def test_acrel_ddsy1352_answers_its_whole_table_in_one_read() -> None:
    """0000H..0010H, code (000AH) and the illegible row (000EH) included, as the manual
    lists them; a write of the code is kept, out of its range refused."""
    profile = load_profile("acrel-ddsy1352")
    assert {u.address for u in profile.unmapped} == {0x000A, 0x000E}
    async with ModbusSimulator(profile, meters=1, transport="tcp", seed=1) as sim:
        client = AsyncModbusTcpClient("127.0.0.1", port=sim.port, framer=FramerType.SOCKET,
                                      timeout=2, retries=0)
        assert await client.connect()
        try:
            reply = await client.read_holding_registers(0, count=0x11, device_id=1)
            assert not reply.isError(), reply
            assert reply.registers[0x0A] == 0 and reply.registers[0x0B] > 0  # code, voltage
            ok = await client.write_register(0x000A, 1234, device_id=1)
            assert not ok.isError(), ok
            reply = await client.read_holding_registers(0x000A, count=1, device_id=1)
            assert reply.registers == [1234]
            bad = await client.write_register(0x000A, 10000, device_id=1)
            assert isinstance(bad, ExceptionResponse) and bad.exception_code == ILLEGAL_VALUE
            ro = await client.write_register(0x000E, 1, device_id=1)
            assert isinstance(ro, ExceptionResponse) and ro.exception_code == ILLEGAL_ADDRESS
            # Addresses no row lists are still refused.
            gone = await client.read_holding_registers(0x0011, count=1, device_id=1)
            assert isinstance(gone, ExceptionResponse) and gone.exception_code == ILLEGAL_ADDRESS
        finally:
            client.close()
        assert sim.meter(1).model.relay_open is False


HEAD = """
[profile]
manufacturer = "Test"
model = "T1"
manual = "none, test"

[[register]]
name = "voltage_a"
function = 3
address = 11
type = "uint16"
unit = "V"
"""


def test_unmapped_parses() -> None:
    p = parse_profile(HEAD + '[[unmapped]]\nfunction = 3\naddress = "0x000A"\nwritable = true\n'
                      'high = 9999\nnote = "code"\n\n[[unmapped]]\nfunction = 4\naddress = 3\n'
                      'words = 2\npublic = false\nnote = "seen on a meter"\n', name="t")
    assert p.unmapped == (Unmapped(3, 10, 1, True, 0, 9999, True, "code"),
                          Unmapped(4, 3, 2, False, 0, 0xFFFF, False, "seen on a meter"))


@pytest.mark.parametrize(("extra", "message"), [
    ('[[unmapped]]\nfunction = 3\naddress = 11\nnote = "x"\n',
     "t.toml: registers 1 (voltage_a) and unmapped 1: overlap on function 3: 11 and 11"),
    ('[[unmapped]]\nfunction = 3\naddress = 5\n',
     "t.toml: unmapped 1: key 'note' missing (what the manual lists at this address)"),
    ('[[unmapped]]\nfunction = 3\naddress = 5\nnote = "x"\nwritabel = true\n',
     "t.toml: unmapped 1: unknown key 'writabel' (did you mean 'writable'?); expected one of "
     "function, address, words, writable, low, high, public, note"),
    ('[[unmapped]]\nfunction = 3\naddress = 5\nnote = "x"\nwritable = true\nlow = 9\n'
     'high = 1\n', "t.toml: unmapped 1: keys 'low' and 'high': low 9 is above high 1"),
    ('[[unmapped]]\nfunction = 3\naddress = 5\nnote = "x"\nhigh = 9\n',
     "t.toml: unmapped 1: keys 'low'/'high' are the values a write may set: only for "
     "writable = true"),
    ('[[unmapped]]\nfunction = 6\naddress = 5\nnote = "x"\n',
     "t.toml: unmapped 1: key 'function': expected one of 3, 4, got 6"),
])
def test_unmapped_problems_are_named(extra: str, message: str) -> None:
    with pytest.raises(ProfileError) as e:
        parse_profile(HEAD + extra, name="t", source="t.toml")
    assert e.value.problems == [message]

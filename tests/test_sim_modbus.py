"""The Modbus meter simulator (simulators.modbus) through pymodbus's own clients, and its CLI.

Meters run on a :class:`ManualClock`, so every value a client reads can be compared with
the model exactly, and time moves only when a test says so.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import logging
import os
import re
import signal
import subprocess
from collections.abc import AsyncIterator
from contextlib import AbstractContextManager, asynccontextmanager
from decimal import Decimal
from typing import Any

import pytest
from click.testing import CliRunner
from conftest import simulator_cli
from pymodbus.client import AsyncModbusSerialClient, AsyncModbusTcpClient
from pymodbus.client.base import ModbusBaseClient
from pymodbus.exceptions import ModbusIOException
from pymodbus.framer import FramerType
from pymodbus.pdu import ExceptionResponse, ModbusPDU

from collector.cli import main as cli
from protocols.modbus import (
    Profile,
    Register,
    RelayControl,
    decode_block,
    plan_reads,
    relay_readback_block,
    relay_state,
)
from simulators.meter import ManualClock, MeterConfig
from simulators.modbus import ModbusSimulator, meter_config_for

D = Decimal
# A three-phase prepaid meter: holding and input registers, every register type and both
# word orders, a relay coil with a readback register, and a one-register gap that merged
# reads may span (max_gap 1) next to larger ones that they may not.
PROFILE = Profile(
    name="test-meter", manufacturer="Test", model="T3", manual="none",
    registers=(
        Register("voltage_a", 3, 0, "uint16", "V", D("0.1")),
        Register("voltage_b", 3, 1, "uint16", "V", D("0.1")),
        Register("voltage_c", 3, 2, "uint16", "V", D("0.1")),
        Register("current_a", 3, 3, "int32", "A", D("0.001")),
        Register("power_factor_total", 3, 6, "int16", "", D("0.001")),  # gap at 5
        Register("energy_active_forward_total", 3, 0x10, "uint32", "kWh", D("0.01")),
        Register("energy_active_forward_t1", 3, 0x12, "uint32", "kWh", D("0.01"),
                 word_order="little"),
        Register("status_word_3", 3, 0x30, "uint16", ""),
        Register("balance_amount", 4, 0x20, "float32", "yuan"),
        Register("frequency", 4, 0x22, "uint16", "Hz", D("0.01")),
    ),
    relay=RelayControl("coil", 0x05, trip=1, close=0, readback_function=3,
                       readback_address=0x31, readback_bit=0, open_when=1),
    max_registers=40, max_gap=1,
)
# Acrel-like: the relay is a holding register written with function 6; the readback is
# bit 4 of status word 3 (relay open = 1), which the register map also carries.
PROFILE_REG = Profile(
    name="test-register-relay", manufacturer="Test", model="T1", manual="none",
    registers=(
        Register("energy_active_combined_total", 3, 0, "uint32", "kWh", D("0.01")),
        Register("voltage_a", 3, 0x0B, "uint16", "V", D("0.1")),
        Register("status_word_3", 3, 0x20, "uint16", ""),
    ),
    relay=RelayControl("register", 0x58, trip=1, close=0, readback_function=3,
                       readback_address=0x20, readback_bit=4, open_when=1),
    max_registers=21,
)
START = dt.datetime(2024, 3, 1, 10, 0, 0)
ILLEGAL_VALUE, ILLEGAL_ADDRESS, GATEWAY_NO_RESPONSE = 3, 2, 0x0B


@asynccontextmanager
async def served(profile: Profile = PROFILE, *, meters: int = 3, transport: Any = "tcp",
                 **kwargs: Any) -> AsyncIterator[tuple[ModbusSimulator, ModbusBaseClient,
                                                       ManualClock]]:
    """A simulator on a manual clock and a pymodbus client connected to it."""
    clock = ManualClock(START)
    async with ModbusSimulator(profile, meters=meters, transport=transport, seed=7,
                               clock=clock, **kwargs) as sim:
        client: ModbusBaseClient
        if transport == "rtu-pty":
            assert sim.pty_path is not None
            client = AsyncModbusSerialClient(sim.pty_path, framer=FramerType.RTU,
                                             baudrate=9600, parity="N", timeout=1, retries=0)
        else:
            framer = FramerType.RTU if transport == "rtu-tcp" else FramerType.SOCKET
            client = AsyncModbusTcpClient("127.0.0.1", port=sim.port, framer=framer,
                                          timeout=1, retries=0)
        assert await client.connect()
        try:
            yield sim, client, clock
        finally:
            client.close()


async def read(client: ModbusBaseClient, function: int, address: int, count: int,
               unit: int) -> ModbusPDU:
    if function == 3:
        return await client.read_holding_registers(address, count=count, device_id=unit)
    return await client.read_input_registers(address, count=count, device_id=unit)


async def read_all(client: ModbusBaseClient, profile: Profile, unit: int) -> dict[str, Decimal]:
    """Every quantity of ``profile``, read in the merged blocks a collector would use."""
    values: dict[str, Decimal] = {}
    for block in plan_reads(profile):
        reply = await read(client, block.function, block.start, block.count, unit)
        assert not reply.isError(), (block, reply)
        values.update(decode_block(block, reply.registers))
    return values


def assert_matches_model(values: dict[str, Decimal], sim: ModbusSimulator, unit: int) -> None:
    model = sim.model(unit)
    for name, value in values.items():
        expected = model.read(name)
        if name == "balance_amount":  # float32: as close as 24 bits of mantissa get
            assert abs(value - D(str(expected))) < D("0.001"), (unit, name)
        else:
            assert value == expected, (unit, name, value, expected)


def exception_code(reply: ModbusPDU) -> int:
    assert isinstance(reply, ExceptionResponse), reply
    return int(reply.exception_code)


# ---- reads ------------------------------------------------------------------------------

async def test_tcp_reads_of_several_units_decode_to_the_models_values() -> None:
    async with served() as (sim, client, clock):
        first = {u: await read_all(client, PROFILE, u) for u in (1, 2, 3)}
        for unit, values in first.items():
            assert set(values) == {r.name for r in PROFILE.registers}
            assert_matches_model(values, sim, unit)
            for phase in "abc":
                assert D(200) < values[f"voltage_{phase}"] < D(240)
            assert D("49.5") < values["frequency"] < D("50.5")
            assert D("0.8") < values["power_factor_total"] <= 1
            assert values["current_a"] > 0
            assert values["energy_active_forward_total"] > 1000
            assert values["balance_amount"] == 100  # the configured opening credit
        # Every meter is its own: seeded loads, registers and noise differ.
        assert len({v["energy_active_forward_total"] for v in first.values()}) == 3

        clock.advance(3600)  # one hour of load
        for unit in (1, 2, 3):
            later = await read_all(client, PROFILE, unit)
            assert_matches_model(later, sim, unit)
            used = later["energy_active_forward_total"] - first[unit]["energy_active_forward_total"]
            assert D("0.2") < used < D(4)  # a household's hour: 1-3 kW x a curve factor
            # 10:00-11:00 is tariff 2 (peak): t1 (sharp) did not move.
            assert later["energy_active_forward_t1"] == first[unit]["energy_active_forward_t1"]
            spent = first[unit]["balance_amount"] - later["balance_amount"]
            assert spent == pytest.approx(used * D("0.5"), abs=D("0.01"))  # 0.5 yuan/kWh


async def test_gaps_and_unknown_addresses() -> None:
    async with served(meters=1) as (_, client, _clock):
        # Address 5 is unused, but within max_gap: a merged read spans it, reading 0
        # (alone too: the device has a reserved register there).
        reply = await client.read_holding_registers(0, count=7, device_id=1)
        assert not reply.isError() and reply.registers[5] == 0
        assert (await client.read_holding_registers(5, device_id=1)).registers == [0]
        for function, address, count in (
            (3, 7, 1),        # past power_factor_total: a gap longer than max_gap
            (3, 0, 0x14),     # registers, then that gap, then more registers
            (3, 0x13, 2),     # half of a register and what follows it
            (4, 0, 1),        # input register table: nothing at 0
            (3, 0x200, 4),    # far away
        ):
            reply = await read(client, function, address, count, 1)
            assert exception_code(reply) == ILLEGAL_ADDRESS, (function, address, count)
        # Measurements are read-only; coils other than the relay's do not exist.
        assert exception_code(await client.write_register(0, 2300)) == ILLEGAL_ADDRESS
        assert exception_code(await client.write_coil(6, True)) == ILLEGAL_ADDRESS
        assert exception_code(await client.read_coils(0x40)) == ILLEGAL_ADDRESS
        assert exception_code(await client.read_discrete_inputs(0)) == ILLEGAL_ADDRESS


async def test_a_read_longer_than_max_registers_is_an_illegal_value() -> None:
    # (Only where every address asked is in use: pymodbus checks addresses first.)
    short = Profile("short", "m", "m", "m", max_registers=2, registers=tuple(
        Register(f"voltage_{p}", 3, i, "uint16", "V", D("0.1")) for i, p in enumerate("abc")))
    async with served(short, meters=1) as (_, client, _clock):
        assert not (await client.read_holding_registers(1, count=2)).isError()
        assert exception_code(await client.read_holding_registers(0, count=3)) == ILLEGAL_VALUE


async def test_a_register_in_the_map_that_the_meter_lacks_reads_zero() -> None:
    # A three-phase map on a single-phase meter: phases B and C read 0 (as meters show).
    async with served(meters=1, config=MeterConfig(phases=1)) as (_, client, _clock):
        reply = await client.read_holding_registers(0, count=3, device_id=1)
        assert reply.registers[0] > 2000 and reply.registers[1:] == [0, 0]


async def test_unknown_unit_over_modbus_tcp_is_a_gateway_exception() -> None:
    async with served(meters=2) as (_, client, _clock):
        reply = await client.read_holding_registers(0, count=1, device_id=3)
        assert exception_code(reply) == GATEWAY_NO_RESPONSE


# ---- RTU over TCP and on a pty ------------------------------------------------------------

async def test_rtu_over_tcp() -> None:
    async with served(transport="rtu-tcp", meters=2) as (sim, client, clock):
        for unit in (1, 2):
            assert_matches_model(await read_all(client, PROFILE, unit), sim, unit)
        # On a serial line a meter that is not there stays silent.
        quick = AsyncModbusTcpClient("127.0.0.1", port=sim.port, framer=FramerType.RTU,
                                     timeout=0.3, retries=0)
        assert await quick.connect()
        try:
            with pytest.raises(ModbusIOException):
                await asyncio.wait_for(quick.read_holding_registers(0, device_id=9), 3)
        finally:
            quick.close()
        clock.advance(60)
        assert_matches_model(await read_all(client, PROFILE, 2), sim, 2)


async def test_rtu_on_a_pty_reads_and_trips() -> None:
    async with served(transport="rtu-pty", meters=2) as (sim, client, _clock):
        assert sim.pty_path is not None and os.path.exists(sim.pty_path)
        for unit in (1, 2):
            assert_matches_model(await read_all(client, PROFILE, unit), sim, unit)
        reply = await client.write_coil(0x05, True, device_id=2)
        assert not reply.isError() and reply.bits[0] is True
        assert sim.model(2).relay_open and not sim.model(1).relay_open


async def test_tcp_and_pty_together_share_the_meters() -> None:
    async with served(meters=1, pty=True) as (sim, tcp, _clock):
        assert sim.pty_path is not None
        serial = AsyncModbusSerialClient(sim.pty_path, framer=FramerType.RTU, baudrate=9600,
                                         parity="N", timeout=1, retries=0)
        assert await serial.connect()
        try:
            assert not (await serial.write_coil(0x05, True, device_id=1)).isError()
            reply = await tcp.read_coils(0x05, device_id=1)
            assert reply.bits[0] is True
        finally:
            serial.close()


# ---- relay --------------------------------------------------------------------------------

async def test_relay_trip_and_close_by_coil() -> None:
    async with served() as (sim, client, clock):
        readback = relay_readback_block(PROFILE)
        assert readback is not None

        async def state(unit: int) -> bool | None:
            reply = await read(client, readback.function, readback.start, 1, unit)
            return relay_state(PROFILE, reply.registers)

        assert await state(2) is False
        assert (await client.read_coils(0x05, device_id=2)).bits[0] is False
        reply = await client.write_coil(0x05, True, device_id=2)
        assert not reply.isError() and reply.bits[0] is True
        model = sim.model(2)
        assert model.relay_open and model.relay_command_open
        assert await state(2) is True and await state(1) is False
        assert (await client.read_coils(0x05, device_id=2)).bits[0] is True
        # Status word 3 bit 4 agrees; and an open relay stops the energy.
        values = await read_all(client, PROFILE, 2)
        assert int(values["status_word_3"]) >> 4 & 1 == 1
        clock.advance(1800)
        assert (await read_all(client, PROFILE, 2))["energy_active_forward_total"] == \
            values["energy_active_forward_total"]

        reply = await client.write_coil(0x05, False, device_id=2)
        assert not reply.isError() and reply.bits[0] is False
        assert not model.relay_open and await state(2) is False
        assert sim.stats.trips == 1 and sim.stats.closes == 1
        # Write multiple coils (15) on the relay coil alone works too.
        assert not (await client.write_coils(0x05, [True], device_id=3)).isError()
        assert sim.model(3).relay_open


async def test_relay_by_register_and_its_readback() -> None:
    async with served(PROFILE_REG, meters=2) as (sim, client, _clock):
        reply = await client.write_register(0x58, 1, device_id=1)
        assert not reply.isError() and reply.registers == [1]
        assert sim.model(1).relay_open and not sim.model(2).relay_open
        # The control register and the readback bit in status word 3 both show it.
        assert (await client.read_holding_registers(0x58, device_id=1)).registers == [1]
        status = (await client.read_holding_registers(0x20, device_id=1)).registers
        assert relay_state(PROFILE_REG, status) is True
        assert status[0] == sim.model(1).status_word(3)
        # A value that is neither trip nor close is refused and changes nothing.
        assert exception_code(await client.write_register(0x58, 7, device_id=1)) == \
            ILLEGAL_VALUE
        assert sim.model(1).relay_open
        assert not (await client.write_register(0x58, 0, device_id=1)).isError()
        assert not sim.model(1).relay_open
        status = (await client.read_holding_registers(0x20, device_id=1)).registers
        assert relay_state(PROFILE_REG, status) is False


async def test_trip_under_hold_power_is_accepted_but_the_readback_shows_closed() -> None:
    async with served(PROFILE_REG, meters=1) as (sim, client, _clock):
        sim.model(1).set_hold_power(True)
        reply = await client.write_register(0x58, 1, device_id=1)
        assert not reply.isError()
        assert reply.registers == [0]  # the echo reads the state back: still closed
        assert not sim.model(1).relay_open
        status = (await client.read_holding_registers(0x20, device_id=1)).registers
        assert relay_state(PROFILE_REG, status) is False


# ---- the collector's own driver ----------------------------------------------------------

@pytest.mark.parametrize("transport", ["tcp", "rtu-tcp", "rtu-pty"])
async def test_the_collectors_modbus_session_reads_and_switches(transport: Any) -> None:
    from drivers.modbus import ModbusSession
    from drivers.serial import SerialBus
    from drivers.tcp import TcpBus

    clock = ManualClock(START)
    async with ModbusSimulator(PROFILE, meters=2, transport=transport, seed=7,
                               clock=clock) as sim:
        if transport == "rtu-pty":
            assert sim.pty_path is not None
            bus: Any = SerialBus(sim.pty_path, 9600, parity="N")
        else:
            bus = TcpBus("127.0.0.1", sim.port)
        async with bus:
            meter = ModbusSession(bus, framing="tcp" if transport == "tcp" else "rtu")
            names = [r.name for r in PROFILE.registers]
            for unit in (1, 2):
                assert_matches_model(await meter.read_profile(unit, PROFILE, names), sim, unit)
            await meter.relay(2, PROFILE, trip=True)
            assert await meter.relay_open(2, PROFILE) and not await meter.relay_open(1, PROFILE)
            await meter.relay(2, PROFILE, trip=False)
            assert not await meter.relay_open(2, PROFILE) and not sim.model(2).relay_open


# ---- API ------------------------------------------------------------------------------------

def test_model_configuration_follows_the_map() -> None:
    assert meter_config_for(PROFILE).phases == 3 and meter_config_for(PROFILE).prepaid
    single = Profile("s", "m", "m", "m", registers=(Register("voltage_a", 3, 0, "uint16", "V"),
                                                    Register("energy_active_forward_total", 3,
                                                             1, "uint32", "kWh")))
    assert meter_config_for(single).phases == 1 and not meter_config_for(single).prepaid


def test_bad_arguments() -> None:
    with pytest.raises(ValueError, match="transport"):
        ModbusSimulator(PROFILE, transport="udp")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="1-247"):
        ModbusSimulator(PROFILE, meters=248)
    date_map = Profile("d", "m", "m", "m", registers=(Register("meter_date", 3, 0, "uint32",
                                                               ""),))
    with pytest.raises(ValueError, match="not a numeric quantity"):
        ModbusSimulator(date_map)


async def test_start_and_stop_at_once_is_clean(caplog: pytest.LogCaptureFixture) -> None:
    for transport in ("tcp", "rtu-tcp", "rtu-pty"):
        async with ModbusSimulator(PROFILE, transport=transport, pty=True) as sim:
            assert sim.pty_path is not None and (sim.port > 0) == (transport != "rtu-pty")
        await asyncio.sleep(0.01)
    assert not [r for r in caplog.records if r.levelno >= logging.WARNING], caplog.text


async def test_a_taken_port_is_an_oserror() -> None:
    async with ModbusSimulator(PROFILE) as first:
        with pytest.raises(OSError, match="cannot listen"):
            async with ModbusSimulator(PROFILE, port=first.port):
                pass


# ---- CLI ------------------------------------------------------------------------------------

def simulator(args: list[str]) -> AbstractContextManager[
        tuple[subprocess.Popen[str], list[str]]]:
    return simulator_cli("modbus", args)


def test_cli_serves_a_shipped_profile_until_sigterm() -> None:
    with simulator(["--listen", "127.0.0.1:0", "--meters", "3", "--profile", "acrel-dtsy1352",
                    "--pty", "--seed", "3"]) as (proc, lines):
        tcp = re.fullmatch(r"listening on tcp://127\.0\.0\.1:(\d+)\n", lines[0])
        pty = re.fullmatch(r"listening on serial://(/dev/\S+)\n", lines[1])
        assert tcp and pty, lines
        port = int(tcp[1])
        assert port > 0 and os.path.exists(pty[1])

        async def talk() -> tuple[dict[str, Decimal], bool]:
            from collector.config.profiles import load_profile
            profile = load_profile("acrel-dtsy1352")
            client = AsyncModbusTcpClient("127.0.0.1", port=port, timeout=2, retries=0)
            assert await client.connect()
            try:
                values = await read_all(client, profile, 3)
                assert profile.relay is not None
                tripped = not (await client.write_register(profile.relay.address,
                                                           profile.relay.trip,
                                                           device_id=3)).isError()
                missing = await client.read_holding_registers(0x40, device_id=3)
                assert exception_code(missing) == ILLEGAL_ADDRESS
            finally:
                client.close()
            return values, tripped

        values, tripped = asyncio.run(talk())
        total = values["energy_active_combined_total"]
        assert total > 1000 and tripped
        tariffs = sum(values[f"energy_active_combined_t{t}"] for t in range(1, 5))
        assert abs(total - tariffs) <= D("0.04")  # each register floored to 0.01 kWh
        proc.send_signal(signal.SIGTERM)
        _, err = proc.communicate(timeout=5)
        assert proc.returncode == 0, err
        assert "stopped: 3 requests, 3 replies; exceptions: ILLEGAL_ADDRESS 1; " \
               "relay: 1 trips, 0 closes" in err


def test_cli_rtu_framing_with_a_profile_file(tmp_path: Any) -> None:
    path = tmp_path / "site-meter.toml"
    path.write_text('[profile]\nmanufacturer = "Site"\nmodel = "S1"\nmanual = "none"\n\n'
                    '[[register]]\nname = "voltage_a"\nfunction = 4\naddress = 0\n'
                    'type = "uint16"\nscale = "0.1"\nunit = "V"\n')
    with simulator(["--profile", str(path), "--framing", "rtu"]) as (proc, lines):
        tcp = re.fullmatch(r"listening on tcp://127\.0\.0\.1:(\d+)\n", lines[0])
        assert tcp, lines

        async def talk() -> list[int]:
            client = AsyncModbusTcpClient("127.0.0.1", port=int(tcp[1]),
                                          framer=FramerType.RTU, timeout=2, retries=0)
            assert await client.connect()
            try:
                return list((await client.read_input_registers(0, device_id=1)).registers)
            finally:
                client.close()

        (raw,) = asyncio.run(talk())
        assert 2000 < raw < 2400
        proc.send_signal(signal.SIGTERM)
        proc.communicate(timeout=5)
        assert proc.returncode == 0


@pytest.mark.parametrize(("args", "message"), [
    (["--profile", "no-such-meter"], "no profile 'no-such-meter'"),
    (["--profile", "acrel-dtsy1352", "--listen", "localhost"], "HOST:PORT"),
    (["--profile", "acrel-dtsy1352", "--framing", "ascii"], "ascii"),
    (["--profile", "acrel-dtsy1352", "--meters", "248"], "248"),
    ([], "--profile"),
])
def test_cli_rejects_bad_options(args: list[str], message: str) -> None:
    result = CliRunner().invoke(cli, ["simulate", "modbus", *args])
    assert result.exit_code == 2 and message in result.output, result.output

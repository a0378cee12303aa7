"""collector.commands.relay against the real simulators over TCP: DL/T645 BusServer, Modbus TCP;
one ``execute`` for every meter of the device model."""

from __future__ import annotations

import asyncio
import datetime as dt
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import pytest

from collector.commands.relay import (
    ACTIONS,
    CHINA_TZ,
    EXIT_CODES,
    STATUSES,
    RelayOutcome,
    command_expiry,
    execute,
    exit_code,
)
from collector.config.profiles import load_profile
from drivers.device import Credentials, Line, Meter, MeterRef
from drivers.meters import open_meter
from drivers.tcp import TcpBus
from protocols.dlt645 import Frame
from protocols.modbus import Profile
from simulators.bus import BusServer
from simulators.dlt645 import SimulatedMeter, make_meters
from simulators.meter import MeterConfig, MeterModel
from simulators.modbus import ModbusSimulator

ADDR = "000000000001"
OTHER = "000000000002"
PASSWORD = "02000000"  # the simulator's level-02 password
BAUD = 9600
FAST = {"verify_timeout": 2.0, "poll_interval": 0.05, "tz": None}  # tz None: host time


@asynccontextmanager
async def line(meters: list[SimulatedMeter], **server: Any
               ) -> AsyncIterator[tuple[BusServer, Line]]:
    async with BusServer(meters, baud=BAUD, td=0.02, **server) as srv, \
            TcpBus("127.0.0.1", srv.port, td=0.3, tb=0.2, reconnect_min=0.01) as bus:
        yield srv, Line(bus)


@asynccontextmanager
async def one_meter(config: MeterConfig | None = None, **server: Any
                    ) -> AsyncIterator[tuple[BusServer, Line, MeterModel]]:
    meters = make_meters([ADDR], seed=3, config=config)
    async with line(meters, **server) as (srv, bus_line):
        yield srv, bus_line, meters[0].model


def dlt645(bus_line: Line, address: str = ADDR, kind: str = "dlt645-2007") -> Meter:
    return open_meter(bus_line, MeterRef("M1", kind, address))


async def switch(action: str, bus_line: Line, *, address: str = ADDR,
                 password: str = PASSWORD, expiry: dt.datetime | None = None,
                 **kwargs: Any) -> RelayOutcome:
    return await execute(action, dlt645(bus_line, address),
                         Credentials(password, expires=expiry), **{**FAST, **kwargs})


# ---- DL/T645 -----------------------------------------------------------------------------

async def test_trip_confirmed_and_relay_really_open() -> None:
    async with one_meter() as (srv, bus_line, model):
        out = await switch("trip", bus_line)
        assert out.status == "confirmed", out.detail
        assert model.relay_open and model.relay_command_open
        assert out.before is not None and out.before.relay_open is False
        assert out.after is not None and out.after.relay_open and out.after.command_open
        assert out.relay_closed is False
        assert out.command_sent and out.acknowledged and out.error_bits == []
        assert out.energy_before is not None and out.energy_at_switch is not None
        assert out.energy_at_switch >= out.energy_before > 0
        assert out.latency_ms is not None and 0 <= out.latency_ms < 2000
        # status, energy, command, one verification read, energy at switching
        assert out.round_trips == 5 == srv.stats.requests
        assert out.exit_code == 0 and exit_code(out) == 0
        assert PASSWORD not in out.detail and PASSWORD not in str(out.as_dict())
        assert out.as_dict()["after"]["relay_open"] is True
        audit = srv.meter(ADDR).audit[-1]
        assert audit.action == "TRIP" and audit.accepted


async def test_restore_after_trip_confirmed() -> None:
    async with one_meter() as (_, bus_line, model):
        assert (await switch("trip", bus_line)).status == "confirmed"
        out = await switch("restore", bus_line)
        assert out.status == "confirmed", out.detail
        assert out.before is not None and out.before.relay_open and out.before.command_open
        assert out.after is not None and out.after.command_open is False
        assert out.relay_closed is True and not model.relay_open  # closes by itself


async def test_restore_permitted_without_auto_close_reports_relay_still_open() -> None:
    config = MeterConfig(auto_close_on_permit=False)
    async with one_meter(config) as (_, bus_line, model):
        assert (await switch("trip", bus_line)).status == "confirmed"
        out = await switch("restore", bus_line)
        # Close permitted is confirmed by the command state; the relay waits for the button.
        assert out.status == "confirmed", out.detail
        assert out.after is not None and out.after.command_open is False
        assert out.relay_closed is False and model.relay_open
        out = await switch("restore", bus_line, direct_close=True)
        assert out.status == "confirmed", out.detail
        assert out.relay_closed is True and not model.relay_open
        assert "close_direct (1C)" in out.detail


async def test_trip_under_hold_power_refused_at_once_from_the_pre_read() -> None:
    async with one_meter() as (srv, bus_line, model):
        out = await switch("hold", bus_line)
        assert out.status == "confirmed" and model.hold_power, out.detail
        assert out.after is not None and out.after.hold_power
        # The meter would ack the trip and keep the relay closed: the pre-read shows hold
        # power, so the trip is not sent and the answer comes at once, not after the
        # verify timeout.
        requests = srv.stats.requests
        loop = asyncio.get_running_loop()
        started = loop.time()
        out = await switch("trip", bus_line, verify_timeout=10.0)
        elapsed = loop.time() - started
        assert out.status == "refused" and out.error_bits == ["hold_power"], out.detail
        assert elapsed < 1.0, elapsed
        assert "hold power on" in out.detail and out.exit_code == 3
        assert not out.command_sent and not model.relay_open
        assert out.before is not None and out.before.hold_power and out.after is None
        assert out.round_trips == 1 == srv.stats.requests - requests  # the pre-read only
        assert srv.meter(ADDR).audit[-1].action != "TRIP"
        out = await switch("release", bus_line)
        assert out.status == "confirmed" and not model.hold_power, out.detail
        assert (await switch("trip", bus_line)).status == "confirmed"
        assert model.relay_open


async def test_alarm_and_release() -> None:
    async with one_meter() as (_, bus_line, model):
        out = await switch("alarm", bus_line)
        assert out.status == "confirmed" and model.alarm_commanded, out.detail
        assert out.after is not None and out.after.alarm
        out = await switch("alarm_release", bus_line)
        assert out.status == "confirmed" and not model.alarm_commanded, out.detail
        assert not model.relay_open


async def test_wrong_password_refused() -> None:
    async with one_meter() as (srv, bus_line, model):
        out = await switch("trip", bus_line, password="02999999")
        assert out.status == "refused", out.detail
        assert out.error_bits == ["unauthorised"]
        assert not model.relay_open and out.after is None and out.exit_code == 3
        assert "02999999" not in out.detail and "999999" not in out.detail
        assert out.round_trips == 3 == srv.stats.requests  # status, energy, command
        assert srv.meter(ADDR).audit[-1].reason == "password"


async def test_expired_command_refused() -> None:
    async with one_meter() as (_, bus_line, model):
        out = await switch("trip", bus_line, expiry=model.now() - dt.timedelta(minutes=1))
        assert out.status == "refused", out.detail
        assert out.error_bits == ["other_error"]
        assert not model.relay_open


async def test_wrong_address_reply_stops_before_anything_is_sent() -> None:
    async with one_meter(faults=f"wrong-address:{ADDR}") as (srv, bus_line, model):
        out = await switch("trip", bus_line)
        assert out.status == "address_mismatch", out.detail
        assert out.exit_code == 5 and not out.command_sent and not model.relay_open
        assert out.before is None
        # The reply to the first read came from 000000000002: no retry, nothing more.
        assert srv.stats.requests == 1 == out.round_trips
        assert srv.meter(ADDR).counters["requests"] == 1
        assert "000000000002" in out.detail
        assert dlt645(bus_line).retries == 1  # the shared session's own setting, untouched


class ImpostorMeter(SimulatedMeter):
    """A real simulated meter whose replies carry another address from some point on."""

    def __init__(self, model: MeterModel, impostor_from: Callable[[Frame], bool]) -> None:
        super().__init__(model)
        self.impostor_from = impostor_from
        self.impostor = False

    def handle(self, frame: Frame) -> Frame | None:
        reply = super().handle(frame)
        self.impostor = self.impostor or self.impostor_from(frame)
        if reply is None or not self.impostor:
            return reply
        return Frame(OTHER, reply.control, reply.data)


async def test_ack_from_another_address_is_never_success() -> None:
    meter = ImpostorMeter(MeterModel(ADDR, seed="3"), lambda f: f.function == 0x1C)
    async with line([meter]) as (srv, bus_line):
        out = await switch("trip", bus_line)
        assert out.status == "address_mismatch", out.detail
        assert out.command_sent and not out.acknowledged and out.after is None
        # status, energy, command, one re-read of the state (answered by the impostor)
        assert srv.stats.requests == 4 == out.round_trips
        assert "remote control" in out.detail or "trip" in out.detail
        assert "re-read" in out.detail and OTHER in out.detail


class ForeignAck(SimulatedMeter):
    """A real simulated meter that acts on relay commands, but whose ack carries another
    address (e.g. a concentrator mixing up replies); every other reply is its own."""

    def __init__(self, model: MeterModel) -> None:
        super().__init__(model)
        self.commands = 0

    def handle(self, frame: Frame) -> Frame | None:
        reply = super().handle(frame)
        if frame.function != 0x1C or reply is None:
            return reply
        self.commands += 1
        return Frame(OTHER, reply.control, reply.data)


async def test_address_mismatch_reports_the_real_relay_state() -> None:
    meter = ForeignAck(MeterModel(ADDR, seed="3"))
    async with line([meter]) as (srv, bus_line):
        out = await switch("trip", bus_line)
        assert out.status == "address_mismatch" and out.exit_code == 5, out.detail
        assert meter.model.relay_open  # the meter did act on the command
        # The state read again from ADDR, after the foreign ack: the relay is open.
        assert out.after is not None and out.after.relay_open is True
        assert out.relay_closed is False and out.as_dict()["after"]["relay_open"] is True
        assert f"read again from {ADDR}: relay open" in out.detail, out.detail
        # No second command: status, energy, command, the re-read.
        assert meter.commands == 1 and srv.stats.requests == 4 == out.round_trips


async def test_verification_read_from_another_address_stops_at_once() -> None:
    commanded = False

    def after_command(frame: Frame) -> bool:  # every reply after the ack's
        nonlocal commanded
        hit = commanded
        commanded = commanded or frame.function == 0x1C
        return hit

    meter = ImpostorMeter(MeterModel(ADDR, seed="3"), after_command)
    async with line([meter]) as (srv, bus_line):
        out = await switch("trip", bus_line)
        assert out.status == "address_mismatch", out.detail
        assert out.acknowledged and out.latency_ms is None
        # one verification read and one re-read, no more
        assert srv.stats.requests == 5 == out.round_trips
        assert "relay state after" in out.detail


class SilentOnControl(SimulatedMeter):
    """Never answers a relay command; acts on it when ``acts``."""

    def __init__(self, model: MeterModel, acts: bool) -> None:
        super().__init__(model)
        self.acts = acts

    def handle(self, frame: Frame) -> Frame | None:
        if frame.function != 0x1C:
            return super().handle(frame)
        if self.acts:
            super().handle(frame)
        return None


@pytest.mark.parametrize("acts", [True, False])
async def test_no_ack_then_the_state_decides(acts: bool) -> None:
    meter = SilentOnControl(MeterModel(ADDR, seed="3"), acts)
    async with line([meter]) as (_, bus_line):
        out = await switch("trip", bus_line, verify_timeout=0.5)
        assert not out.acknowledged and "no acknowledgement" in out.detail
        if acts:
            assert out.status == "confirmed" and meter.model.relay_open, out.detail
        else:
            assert out.status == "failed" and not meter.model.relay_open, out.detail
            assert out.exit_code == 6


async def test_dlt645_1997_unsupported_and_argument_errors() -> None:
    async with one_meter() as (srv, bus_line, _):
        old = dlt645(bus_line, kind="dlt645-1997")
        out = await execute("trip", old, Credentials(PASSWORD))
        assert out.status == "unsupported" and out.exit_code == 7
        with pytest.raises(ValueError, match="wildcard"):
            await switch("trip", bus_line, address="AAAAAAAAAAAA")
        with pytest.raises(ValueError, match="8 hex digits") as e:
            await switch("trip", bus_line, password="0200000x")
        assert "0200000x" not in str(e.value)
        with pytest.raises(ValueError, match="relay action"):
            await switch("open", bus_line)
        with pytest.raises(ValueError, match="password"):
            await execute("trip", dlt645(bus_line))
        assert srv.stats.requests == 0


async def test_dry_run_predicts_and_sends_nothing() -> None:
    async with one_meter() as (srv, bus_line, model):
        out = await switch("trip", bus_line, dry_run=True)
        assert out.status == "dry_run" and out.exit_code == 0, out.detail
        assert "would be sent" in out.detail and "relay closed" in out.detail
        assert not out.command_sent and not model.relay_open
        assert srv.stats.requests == 1 == out.round_trips  # the pre-read only
        old = dlt645(bus_line, kind="dlt645-1997")
        out = await execute("trip", old, Credentials(PASSWORD), dry_run=True)
        assert out.status == "unsupported" and out.exit_code == 7
        model.hold_power = True
        out = await switch("trip", bus_line, dry_run=True)
        assert out.status == "refused" and out.error_bits == ["hold_power"], out.detail
        assert (await switch("release", bus_line, dry_run=True)).status == "dry_run"
        assert not model.relay_open and model.hold_power
    async with one_meter(faults=f"wrong-address:{ADDR}") as (_, bus_line, _):
        out = await switch("trip", bus_line, dry_run=True)
        assert out.status == "address_mismatch" and out.exit_code == 5, out.detail
    async with line([]) as (_, bus_line):  # nobody answers
        out = await switch("trip", bus_line, dry_run=True)
        assert out.status == "failed" and out.exit_code == 6, out.detail
        assert "unreadable" in out.detail


async def test_execute_dispatches_to_dlt645() -> None:
    async with one_meter() as (_, bus_line, model):
        out = await execute("trip", dlt645(bus_line), Credentials(PASSWORD),
                            verify_timeout=2.0, poll_interval=0.05, tz=None)
        assert out.status == "confirmed" and out.protocol == "dlt645" and model.relay_open


def test_command_expiry_defaults_to_china_time_plus_five_minutes() -> None:
    now = dt.datetime(2024, 6, 1, 4, 0, 30, 123456, tzinfo=dt.UTC)
    assert command_expiry(now=now) == dt.datetime(2024, 6, 1, 12, 5, 30)
    assert command_expiry(dt.datetime(2024, 6, 1, 9, 0)) == dt.datetime(2024, 6, 1, 9, 0)
    aware = dt.datetime(2024, 6, 1, 0, 0, tzinfo=dt.UTC)
    assert command_expiry(aware) == dt.datetime(2024, 6, 1, 8, 0)
    assert command_expiry(aware, tz=dt.timezone(dt.timedelta(hours=-1))) \
        == dt.datetime(2024, 5, 31, 23, 0)
    assert CHINA_TZ.utcoffset(None) == dt.timedelta(hours=8)


def test_exit_codes() -> None:
    assert EXIT_CODES == {"confirmed": 0, "refused": 3, "unconfirmed": 4,
                          "address_mismatch": 5, "failed": 6, "unsupported": 7,
                          "dry_run": 0}
    assert set(STATUSES) == set(EXIT_CODES)
    assert ACTIONS == ("trip", "restore", "hold", "release", "alarm", "alarm_release")
    assert exit_code("refused") == 3
    with pytest.raises(ValueError):
        exit_code("nope")


# ---- Modbus ---------------------------------------------------------------------------------

RELAY_PROFILE = """
[profile]
manufacturer = "Test"
model = "R1"
manual = "test profile"
max_registers = 20

[[register]]
name = "energy_active_forward_total"
function = 3
address = 0
type = "uint32"
scale = "0.01"
unit = "kWh"

[[register]]
name = "voltage_a"
function = 3
address = 2
type = "uint16"
scale = "0.1"
unit = "V"

[[register]]
name = "status_word_3"
function = 3
address = 16
type = "uint16"
unit = ""

[relay]
kind = "register"
address = 88
trip = 1
close = 0
readback_function = 3
readback_address = 16
readback_bit = 4
open_when = 1
"""


def write_profile(tmp_path: Path, name: str, text: str) -> Profile:
    path = tmp_path / f"{name}.toml"
    path.write_text(text)
    return load_profile(path)


@asynccontextmanager
async def modbus(profile: Profile) -> AsyncIterator[tuple[ModbusSimulator, Line]]:
    async with ModbusSimulator(profile, meters=1, transport="tcp", seed=5) as sim, \
            TcpBus("127.0.0.1", sim.port, td=0.5, tb=0.2, reconnect_min=0.01) as bus:
        yield sim, Line(bus, modbus="tcp")


def unit(bus_line: Line, profile: Profile | None, address: str = "1") -> Meter:
    return open_meter(bus_line, MeterRef("P1", "modbus", address, profile))


async def test_modbus_trip_and_restore_confirmed(tmp_path: Path) -> None:
    profile = write_profile(tmp_path, "relay-test", RELAY_PROFILE)
    async with modbus(profile) as (sim, bus_line):
        out = await execute("trip", unit(bus_line, profile), verify_timeout=2.0,
                            poll_interval=0.05)
        assert out.status == "confirmed", out.detail
        assert sim.model(1).relay_open and out.protocol == "modbus" and out.address == "1"
        assert out.before is not None and out.before.relay_open is False
        assert out.after is not None and out.after.relay_open and out.after.command_open
        assert out.energy_before is not None and out.energy_at_switch is not None
        assert out.round_trips == 5  # readback, energy, write, readback, energy
        assert sim.stats.trips == 1
        out = await execute("restore", unit(bus_line, profile), verify_timeout=2.0,
                            poll_interval=0.05)
        assert out.status == "confirmed", out.detail
        assert out.relay_closed is True and not sim.model(1).relay_open


async def test_modbus_trip_under_hold_power_refused_at_once(tmp_path: Path) -> None:
    profile = write_profile(tmp_path, "relay-test", RELAY_PROFILE)
    async with modbus(profile) as (sim, bus_line):
        sim.model(1).set_hold_power(True)
        out = await execute("trip", unit(bus_line, profile), verify_timeout=10.0,
                            poll_interval=0.05)
        # The profile's status word 3 shows hold power: the trip is not written.
        assert out.status == "refused" and out.error_bits == ["hold_power"], out.detail
        assert not out.command_sent and sim.stats.trips == 0
        assert "hold power on" in out.detail and not sim.model(1).relay_open


async def test_modbus_without_relay_or_hold_unsupported(tmp_path: Path) -> None:
    no_relay = RELAY_PROFILE.split("[relay]")[0]
    plain = write_profile(tmp_path, "no-relay", no_relay)
    with_relay = write_profile(tmp_path, "relay-test", RELAY_PROFILE)
    async with modbus(plain) as (sim, bus_line):
        out = await execute("trip", unit(bus_line, plain))
        assert out.status == "unsupported" and out.exit_code == 7
        assert "no relay control" in out.detail and not out.command_sent
        out = await execute("hold", unit(bus_line, with_relay))
        assert out.status == "unsupported" and "hold" in out.detail
        out = await execute("trip", unit(bus_line, plain), dry_run=True)
        assert out.status == "unsupported" and "no relay control" in out.detail
        assert sim.stats.requests == 0 and unit(bus_line, plain).requests == 0
        with pytest.raises(ValueError, match="broadcast"):
            await execute("trip", unit(bus_line, with_relay, "0"))
        with pytest.raises(ValueError, match="profile"):
            await execute("trip", unit(bus_line, None))

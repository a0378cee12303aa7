"""The device model (drivers.device, drivers.meters): one interface for every protocol,
against the real simulators (DL/T645 over TCP, Modbus TCP, DL/T645 through an MQTT
gateway on a real mosquitto)."""

from __future__ import annotations

import datetime as dt
import time
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from pathlib import Path

import pytest
from mosquitto import Broker

from collector.config.profiles import load_profile
from drivers.device import (
    Credentials,
    Line,
    Meter,
    MeterRef,
    Unsupported,
)
from drivers.errors import NoReply
from drivers.meters import KINDS, capabilities, kind_of, open_meter
from drivers.mqtt import MqttBus, MqttConnection
from drivers.options import CallOptions
from drivers.tcp import TcpBus
from protocols.dlt645 import DAILY_FREEZES
from protocols.modbus import Profile
from protocols.readings import Quality, Reading
from simulators.bus import BusServer
from simulators.dlt645 import make_meters
from simulators.gateway import GatewaySimulator
from simulators.modbus import ModbusSimulator

ADDR = "000000000001"
PASSWORD = "02000000"  # the simulator's level-02 password


def acrel() -> Profile:
    return load_profile("acrel-ddsy1352")


def ref(kind: str, address: str = ADDR, profile: Profile | None = None) -> MeterRef:
    return MeterRef("m1", kind, address, profile)


# ---- declared capabilities (no I/O) -----------------------------------------------------

def test_every_ledger_protocol_has_a_kind_and_unknown_names_are_refused() -> None:
    assert sorted(KINDS) == ["dlt645-1997", "dlt645-2007", "modbus"]
    with pytest.raises(KeyError, match=r"no meter protocol 'iec62056'.*known: dlt645-1997"):
        kind_of("iec62056")


def test_capabilities_are_declared_per_kind_and_profile() -> None:
    v2007 = capabilities(ref("dlt645-2007"))
    assert v2007.relay == {"trip", "restore", "hold", "release", "alarm", "alarm_release"}
    assert v2007.relay_state and v2007.credentials and v2007.block_reads
    assert v2007.daily_freezes == DAILY_FREEZES and v2007.clock_set == "broadcast"
    assert v2007.offers("voltage_a") and v2007.offers("energy_active_forward_total")
    v1997 = capabilities(ref("dlt645-1997"))
    assert not v1997.relay and v1997.daily_freezes == 0 and v1997.offers("voltage_a")
    modbus = capabilities(ref("modbus", "1", acrel()))
    assert modbus.relay == {"trip", "restore"} and modbus.relay_state
    assert not modbus.credentials and modbus.daily_freezes == 0 and not modbus.clock
    assert modbus.quantities == {r.name for r in acrel().registers}
    assert modbus.offers("energy_active_combined_total")
    assert not modbus.offers("energy_active_forward_total")


def test_a_modbus_meter_without_profile_or_with_a_bad_unit_is_a_clear_error() -> None:
    with pytest.raises(ValueError, match="m1: a Modbus meter needs its device profile"):
        capabilities(ref("modbus", "1"))
    line = Line(TcpBus("127.0.0.1", 1))
    with pytest.raises(ValueError, match="unit id 'x1' is not a number"):
        open_meter(line, ref("modbus", "x1", acrel()))
    with pytest.raises(ValueError, match="unit id 0: one device"):
        open_meter(line, ref("modbus", "0", acrel()))


def test_call_options_are_checked() -> None:
    with pytest.raises(ValueError, match="retries -1"):
        CallOptions(retries=-1)
    with pytest.raises(ValueError, match="td 0"):
        CallOptions(td=0)


# ---- DL/T645 over TCP --------------------------------------------------------------------

@asynccontextmanager
async def dlt645(kind: str = "dlt645-2007", faults: str = ""
                 ) -> AsyncIterator[tuple[BusServer, Meter]]:
    meters = make_meters([ADDR], seed=3)
    async with BusServer(meters, baud=9600, td=0.02, faults=faults) as srv, \
            TcpBus("127.0.0.1", srv.port, td=0.3, tb=0.2, reconnect_min=0.01) as bus:
        yield srv, open_meter(Line(bus), ref(kind))


async def test_dlt645_read_gives_readings_of_the_meter_and_keeps_what_it_refuses_out() -> None:
    async with dlt645() as (_srv, meter):
        got = await meter.read(["voltage_a", "energy_active_forward_total", "frequency",
                                "no_such_quantity"])
        assert [r.quantity for r in got.readings] == ["voltage_a",
                                                      "energy_active_forward_total",
                                                      "frequency"]
        assert all(isinstance(r, Reading) and r.meter == "m1" and r.quality is Quality.GOOD
                   for r in got.readings)
        assert 150 < got.readings[0].value < 300 and got.readings[0].unit == "V"
        assert got.refused == ["no_such_quantity"] and not got.failed
        assert got.answered and got.valid


async def test_per_call_options_never_change_the_shared_session() -> None:
    async with dlt645(faults=f"dead:{ADDR}") as (_srv, meter):
        session = meter.session  # type: ignore[attr-defined]
        before = (session.retries, session.td, session.tb)
        t0 = time.monotonic()
        got = await meter.read(["voltage_a"], CallOptions(retries=0, td=0.05))
        took = time.monotonic() - t0
        error = got.failed["voltage_a"]
        assert isinstance(error, NoReply) and error.seconds == pytest.approx(0.05)
        assert not got.answered and took < 0.25  # the bus's Td is 0.3 s: the call's was used
        sent = meter.requests
        await meter.read(["voltage_a"], CallOptions(retries=2, td=0.05))
        assert meter.requests - sent == 3  # its own retries, once each
        assert (session.retries, session.td, session.tb) == before


async def test_dlt645_relay_through_the_device_model() -> None:
    async with dlt645() as (srv, meter):
        plan = meter.relay_plan("trip")
        assert plan.trip and plan.command == "trip (1A)" and plan.expectation == "relay open"
        assert not plan.expected(await meter.relay_state())
        expires = dt.datetime.now() + dt.timedelta(minutes=5)
        with pytest.raises(ValueError, match="password"):
            meter.check_credentials(plan, Credentials("0200", "00000000", expires))
        await meter.relay(plan, Credentials(PASSWORD, "00000001", expires))
        state = await meter.relay_state(CallOptions(retries=0))
        assert plan.expected(state) and srv.meters[0].model.relay_open
        assert "0200" not in repr(Credentials(PASSWORD))


async def test_dlt645_1997_declares_no_relay_and_refuses_a_plan() -> None:
    async with dlt645("dlt645-1997") as (_srv, meter):
        with pytest.raises(Unsupported, match="DL/T645-1997 has no remote relay control"):
            meter.relay_plan("trip")
        with pytest.raises(Unsupported, match="keeps no daily freezes"):
            await meter.read_freeze(1)


async def test_dlt645_daily_freeze_and_clock_through_the_device_model() -> None:
    async with dlt645() as (_srv, meter):
        freeze = await meter.read_freeze(1, tz=dt.UTC)
        assert freeze.taken.time() == dt.time(0, 0)
        names = {r.quantity for r in freeze.readings}
        assert "freeze_daily_energy_active_forward_total" in names
        assert all(r.quality is Quality.BACKFILLED for r in freeze.readings)
        assert {r.meter_ts for r in freeze.readings} == {freeze.taken.replace(tzinfo=dt.UTC)}
        clock = await meter.read_clock(time.time)
        assert clock.t0 <= clock.t1
        assert abs((clock.shown - dt.datetime.now()).total_seconds()) < 5
        assert meter.clock_group() is not None and meter.broadcast_bytes() == 18 + 4


# ---- Modbus TCP --------------------------------------------------------------------------

@asynccontextmanager
async def modbus(profile: Profile) -> AsyncIterator[tuple[ModbusSimulator, Meter]]:
    async with ModbusSimulator(profile, meters=1, transport="tcp", seed=5) as sim, \
            TcpBus("127.0.0.1", sim.port, td=0.5, tb=0.2, reconnect_min=0.01) as bus:
        yield sim, open_meter(Line(bus, modbus="tcp"), ref("modbus", "1", profile))


async def test_modbus_read_and_relay_through_the_same_interface() -> None:
    profile = acrel()
    async with modbus(profile) as (sim, meter):
        got = await meter.read(["voltage_a", "energy_active_combined_total", "voltage_b"])
        assert [r.quantity for r in got.readings] == ["voltage_a",
                                                      "energy_active_combined_total"]
        assert got.refused == ["voltage_b"] and all(r.meter == "m1" for r in got.readings)
        assert meter.billing_energy() == "energy_active_combined_total"
        plan = meter.relay_plan("trip")
        assert not plan.expected(await meter.relay_state())
        meter.check_credentials(plan, None)  # Modbus needs none
        await meter.relay(plan)
        assert plan.expected(await meter.relay_state()) and sim.model(1).relay_open
        with pytest.raises(Unsupported, match="hold is not available over Modbus"):
            meter.relay_plan("hold")
        with pytest.raises(Unsupported, match="keeps no daily freezes"):
            await meter.freeze_time(1)
        with pytest.raises(Unsupported, match="clock cannot be read"):
            await meter.read_clock(time.time)


# ---- the transparent MQTT path -----------------------------------------------------------

@pytest.fixture
def broker(tmp_path: Path) -> Iterator[Broker]:
    with Broker(tmp_path) as b:
        yield b


async def test_a_dlt645_meter_behind_an_mqtt_gateway_is_the_same_device(
        broker: Broker) -> None:
    async with GatewaySimulator(broker.url, gateway="gw-d", meters=1, interval=3600), \
            MqttConnection(broker.url, client_id="amic-dev") as conn:
        await conn.wait_connected(5)
        async with MqttBus(conn, "amic-gw", "gw-d", td=2.0) as bus:
            meter = open_meter(Line(bus), ref("dlt645-2007"))
            got = await meter.read(["voltage_a", "energy_active_forward_total"])
            assert [r.quantity for r in got.readings] == ["voltage_a",
                                                          "energy_active_forward_total"]
            assert not got.failed and got.readings[0].meter == "m1"
            assert (await meter.relay_state()).relay_open is False


# ---- behind a 376.1 concentrator ---------------------------------------------------------

async def test_a_dlt645_meter_behind_a_concentrator_is_the_same_device() -> None:
    from test_concentrator_meter import concentrator, opened

    asked = ["voltage_a", "energy_active_forward_total", "status_word_3", "current_a"]
    async with concentrator() as (master, conc):
        behind = opened(master)
        model_meter = conc.meters[1]
        async with BusServer([model_meter], baud=9600, td=0.02) as srv, \
                TcpBus("127.0.0.1", srv.port, td=0.3, tb=0.2) as bus:
            direct = open_meter(Line(bus), MeterRef("m1", "dlt645-2007",
                                                    model_meter.model.address))
            a = await direct.read(asked)
            b = await behind.read(asked)
            assert (await behind.relay_state()) == (await direct.relay_state())
        assert not a.failed and not b.failed
        assert [(r.meter, r.quantity, r.value, r.unit, r.quality) for r in a.readings] == \
            [(r.meter, r.quantity, r.value, r.unit, r.quality) for r in b.readings]
        assert behind.billing_energy() == direct.billing_energy()

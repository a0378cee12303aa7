"""Relay commands on the device model: one ``execute`` for every protocol, and a session
that polls share keeps its retries while and after a command runs (real simulators)."""

from __future__ import annotations

import asyncio
import datetime as dt
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import pytest
from test_relay import RELAY_PROFILE, write_profile

import collector.commands.relay_service
from collector.commands.relay import RelayOutcome, execute, read_relay_state
from collector.commands.relay_service import RelayService
from collector.config.secrets import parse_secrets
from collector.config.settings import CommandSettings, MeterSettings
from collector.polling.scheduler import BusWorker
from collector.store.records import CommandRecord
from drivers.device import Credentials, Line, Meter, MeterRef, Unsupported
from drivers.meters import open_meter
from drivers.tcp import TcpBus
from protocols.modbus import Profile
from simulators.bus import BusServer
from simulators.dlt645 import make_meters
from simulators.modbus import SimulatedModbusMeter, make_modbus_meters

ADDR = "000000000001"
POLLED = "000000000002"  # its voltage A replies are always garbled: every read retries
PASSWORD = "02000000"
FAST: dict[str, Any] = {"verify_timeout": 2.0, "poll_interval": 0.05, "tz": None}
SECRETS = """
[default]
password = "02000000"

[operators.alice]
operator_code = "0000A11C"
"""


@asynccontextmanager
async def dlt645_line() -> AsyncIterator[tuple[BusServer, Line]]:
    meters = make_meters([ADDR, POLLED], seed=3)
    async with BusServer(meters, baud=9600, td=0.02, faults=f"garble:{POLLED}@02010100"
                         ) as srv, \
            TcpBus("127.0.0.1", srv.port, td=0.3, tb=0.2, reconnect_min=0.01) as bus:
        yield srv, Line(bus)


@asynccontextmanager
async def modbus_line(profile: Profile
                      ) -> AsyncIterator[tuple[BusServer, list[SimulatedModbusMeter], Line]]:
    """Modbus RTU units 1 and 2 on one line; unit 2 is dead (every read of it retries)."""
    units = make_modbus_meters(profile, [1, 2], seed=5)
    async with BusServer([], baud=9600, td=0.02, modbus=units, faults="dead:2") as srv, \
            TcpBus("127.0.0.1", srv.port, td=0.2, tb=0.1, reconnect_min=0.01) as bus:
        yield srv, units, Line(bus, modbus="rtu")


async def command_and_polls(relay: Meter, credentials: Credentials | None, polled: Meter,
                            failures: str) -> tuple[RelayOutcome, list[int]]:
    """A trip of ``relay`` while ``polled`` (same line) is read over and over; how many
    requests each poll read sent, by the line's counter of ``failures`` (only the polled
    meter fails)."""
    per_read: list[int] = []
    done = asyncio.Event()

    async def poll() -> None:
        while not done.is_set():
            before = polled.line.counters()[failures]
            got = await polled.read(["voltage_a"])
            assert got.failed and not got.readings  # it never reads well: it retries
            per_read.append(polled.line.counters()[failures] - before)

    poller = asyncio.create_task(poll())
    try:
        await asyncio.sleep(0)  # the poll's first read is under way when the trip starts
        outcome = await execute("trip", relay, credentials, **FAST)
    finally:
        done.set()
        await poller
    return outcome, per_read


async def test_dlt645_command_leaves_a_polls_retries_alone() -> None:
    async with dlt645_line() as (srv, line):
        relay = open_meter(line, MeterRef("M1", "dlt645-2007", ADDR))
        polled = open_meter(line, MeterRef("M2", "dlt645-2007", POLLED))
        outcome, per_read = await command_and_polls(relay, Credentials(PASSWORD), polled,
                                                  "bad_replies")
        assert outcome.status == "confirmed" and outcome.protocol == "dlt645", outcome.detail
        assert srv.meters[0].model.relay_open
        # Every poll read during the command: the first try and its retry.
        assert per_read and set(per_read) == {2}, per_read
        assert relay.retries == polled.retries == 1
        asked = srv.meter(POLLED).counters["requests"]
        got = await polled.read(["voltage_a"])  # after the command: still retried
        assert got.failed and srv.meter(POLLED).counters["requests"] == asked + 2


async def test_modbus_command_leaves_a_polls_retries_alone(tmp_path: Path) -> None:
    profile = write_profile(tmp_path, "relay-test", RELAY_PROFILE)
    async with modbus_line(profile) as (_, units, line):
        relay = open_meter(line, MeterRef("P1", "modbus", "1", profile))
        absent = open_meter(line, MeterRef("P2", "modbus", "2", profile))  # never answers
        outcome, per_read = await command_and_polls(relay, None, absent, "no_replies")
        assert outcome.status == "confirmed" and outcome.protocol == "modbus", outcome.detail
        assert outcome.address == "1" and units[0].model.relay_open
        assert per_read and set(per_read) == {2}, per_read
        assert relay.retries == absent.retries == 1
        retried = line.counters()["retried"]
        assert (await absent.read(["voltage_a"])).failed
        assert line.counters()["retried"] == retried + 1


async def test_read_relay_state_asks_the_meter(tmp_path: Path) -> None:
    plain = write_profile(tmp_path, "no-relay", RELAY_PROFILE.split("[relay]")[0])
    async with dlt645_line() as (_, line):
        state = await read_relay_state(open_meter(line, MeterRef("M1", "dlt645-2007", ADDR)))
        assert state.relay_open is False and state.status_word_3 is not None
    async with modbus_line(plain) as (srv, _, line):
        with pytest.raises(Unsupported, match="no relay readback"):
            await read_relay_state(open_meter(line, MeterRef("P1", "modbus", "1", plain)))
        assert srv.stats.requests == 0


async def test_an_esam_hook_gets_the_command_bytes() -> None:
    seen: list[tuple[str, bytes]] = []

    async def encrypt(address: str, plain: bytes) -> bytes:
        seen.append((address, plain))
        return bytes(16)

    async with dlt645_line() as (srv, line):
        meter = open_meter(line, MeterRef("M1", "dlt645-2007", ADDR))
        out = await execute("trip", meter, Credentials(PASSWORD, encrypt=encrypt), **FAST)
        # The simulator has no ESAM: it refuses ciphertext; the hook was used.
        assert out.status == "refused" and out.command_sent, out.detail
        assert len(seen) == 1 and seen[0][0] == ADDR and len(seen[0][1]) == 8
        assert not srv.meters[0].model.relay_open
        assert repr(Credentials(PASSWORD, encrypt=encrypt)) == "Credentials(********)"


async def test_relay_service_runs_one_execute_for_both_protocols(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    profile = write_profile(tmp_path, "relay-test", RELAY_PROFILE)
    calls: list[tuple[str, Meter, Credentials | None]] = []
    real = execute  # what collector.commands.relay_service calls

    async def spy(action: str, meter: Meter, credentials: Credentials | None = None,
                  **kwargs: Any) -> RelayOutcome:
        calls.append((action, meter, credentials))
        return await real(action, meter, credentials, **kwargs)

    monkeypatch.setattr(collector.commands.relay_service, "execute", spy)
    meters = [MeterSettings("M1", ADDR, "d"),
              MeterSettings("P1", "1", "m", protocol="modbus", profile="relay-test")]
    records: list[CommandRecord] = []
    async with dlt645_line() as (srv, dline), modbus_line(profile) as (_, units, mline):
        workers = {"d": BusWorker("d", dline.bus), "m": BusWorker(
            "m", mline.bus, profiles=lambda _: profile)}
        for w in workers.values():
            await w.start()
        try:
            service = RelayService(
                meters=lambda: meters, workers=lambda: workers,
                secrets=parse_secrets(SECRETS), profile=lambda _: profile,
                record=records.append,
                settings=CommandSettings(min_interval=0.0, verify_timeout=2.0,
                                         poll_interval=0.05))
            results = await service.run("trip", ["M1", "P1"], operator="alice",
                                        reason="arrears",
                                        issued=dt.datetime.now(dt.UTC))
        finally:
            for w in workers.values():
                await w.stop()
        assert [(r["meter"], r["status"], r["protocol"]) for r in results] == [
            ("M1", "confirmed", "dlt645"), ("P1", "confirmed", "modbus")], results
        assert srv.meters[0].model.relay_open and units[0].model.relay_open
    by_meter = {m.meter_id: (c, m.capabilities.credentials) for _, m, c in calls}
    # The DL/T645 meter needs a password and operator code, the Modbus device none.
    dl_creds, dl_needs = by_meter["M1"]
    assert dl_needs and dl_creds is not None and dl_creds.operator == "0000A11C"
    assert by_meter["P1"] == (None, False)
    assert [r.status for r in records if r.meter == "M1"] == ["sent", "confirmed"]

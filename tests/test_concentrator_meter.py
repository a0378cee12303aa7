"""Meters behind a 376.1 concentrator in the device model: a real MasterStation on
loopback TCP and a scripted terminal answering from DL/T645 meter models."""

from __future__ import annotations

import asyncio
import datetime as dt
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from decimal import Decimal

import pytest

import protocols.dlt645 as d645
from drivers.concentrator_meter import (
    CLASS1,
    DAILY_FREEZES,
    Absent,
    ConcentratorMeter,
    TerminalLink,
    concentrator_line,
)
from drivers.device import Credentials, Line, MeterRef, Route, Unsupported
from drivers.dlt645_meter import Dlt645Meter
from drivers.errors import LinkDown, NoReply, WrongReply
from drivers.meters import capabilities, open_meter
from drivers.options import CallOptions
from drivers.qgdw3761 import MasterStation, TerminalId
from drivers.tcp import TcpBus
from protocols.qgdw3761 import (
    ActiveEnergy,
    DataUnit,
    Direction,
    EnergyReadings,
    ForwardReply,
    ForwardRequest,
    Frame,
    FrameExtractor,
    FrozenActiveEnergy,
    FrozenEnergy,
    PresentValues,
    build_frame,
    control_byte,
    decode_units,
    encode_units,
    seq_byte,
)
from protocols.readings import Quality
from simulators.dlt645 import SimulatedMeter, make_meters
from simulators.meter import ManualClock, MeterModel, Unavailable

TID = TerminalId("4403", 1)
NOW = dt.datetime(2024, 5, 6, 12, 0, 0)
ADDRS = ["000000000001", "000000000002"]
PASSWORD = "02000000"


def up(afn: int, units: list[DataUnit], *, pseq: int, prm: bool = False) -> bytes:
    function = (9 if afn == 2 else 4) if prm else 8
    return build_frame(Frame(
        control=control_byte(Direction.UP, prm=prm, function=function), a1=TID.a1,
        a2=TID.a2, a3=0, afn=afn, seq=seq_byte(pseq, fir=True, fin=True, con=prm),
        units=encode_units(afn, Direction.UP, units)))


def value_of(meter: SimulatedMeter, name: str, **kw: int) -> Decimal | None:
    try:
        v = meter.model.read(name, **kw)
    except Unavailable:
        return None
    return v if isinstance(v, Decimal) else None


def num(model: MeterModel, name: str, **kw: int) -> float:
    v = model.read(name, **kw)
    assert isinstance(v, Decimal)
    return float(v)


def tariffs(meter: SimulatedMeter, base: str, **kw: int) -> tuple[Decimal | None, ...]:
    return tuple(value_of(meter, f"{base}_{'total' if i == 0 else f't{i}'}", **kw)
                 for i in range(5))


@dataclass
class Concentrator:
    """A scripted terminal: meters by pn, answering AFN0C/0D/10 from their models."""

    meters: dict[int, SimulatedMeter]
    clock: ManualClock
    ee_fns: set[int] = field(default_factory=set)  # class-1/2 Fn answered with EE only
    missing_days: set[dt.date] = field(default_factory=set)  # F161/F1 left out
    reply_from: str | None = None  # forwarded replies come from this meter instead
    requests: list[tuple[int, list[tuple[int, int]]]] = field(default_factory=list)
    forwarded: list[ForwardRequest] = field(default_factory=list)
    silent: bool = False

    def answer(self, f: Frame) -> list[bytes]:
        units = [u for u in decode_units(f) if isinstance(u, DataUnit)]
        self.requests.append((f.afn, [(u.pn, u.fn) for u in units]))
        if self.silent:
            return []
        out: list[DataUnit] = []
        for u in units:
            if f.afn == 0x0C and u.pn == 0 and u.fn == 2:
                out.append(DataUnit(0, 2, self.clock.now()))
            elif f.afn == 0x0C:
                out.append(DataUnit(u.pn, u.fn, self.class1(u.pn, u.fn)))
            elif f.afn == 0x0D and u.value not in self.missing_days:
                out.append(DataUnit(u.pn, u.fn, self.frozen(u.pn, u.fn, u.value)))
            elif f.afn == 0x10:
                out.append(DataUnit(0, 1, self.forward(u.value)))
        return [up(f.afn, out, pseq=f.pseq)] if out or f.afn != 0x0D else [
            up(0x00, [DataUnit(0, 2)], pseq=f.pseq)]

    def class1(self, pn: int, fn: int) -> object:
        m = self.meters[pn]
        t = self.clock.now().replace(second=0)
        ee = fn in self.ee_fns
        if fn == 129:
            return ActiveEnergy(t, (None,) * 5 if ee else tariffs(m, "energy_active_forward"))
        if fn == 25:
            names = [n for n in PresentValues.__dataclass_fields__ if n != "read_time"]
            return PresentValues(t, *(None if ee else value_of(m, n) for n in names))
        reverse = fn == 34
        d = "reverse" if reverse else "forward"
        none = (None,) * 5
        return EnergyReadings(t, none if ee else tariffs(m, f"energy_active_{d}"),
                              none, none, none, reverse)

    def frozen(self, pn: int, fn: int, day: object) -> object:
        assert isinstance(day, dt.date)
        m = self.meters[pn]
        want = day + dt.timedelta(days=1)
        none = (None,) * 5
        taken: object = None
        active: tuple[Decimal | None, ...] = none
        for n in range(1, m.model.daily_freezes + 1):
            when = m.model.read("freeze_daily_time", freeze=n)
            if isinstance(when, dt.datetime) and when.date() == want \
                    and fn not in self.ee_fns:
                taken = when
                active = tariffs(m, "freeze_daily_energy_active_forward", freeze=n)
        assert taken is None or isinstance(taken, dt.datetime)
        if fn == 161:
            return FrozenActiveEnergy(day, taken, active)
        return FrozenEnergy(day, taken, active, none, none, none)

    def forward(self, req: object) -> ForwardReply:
        assert isinstance(req, ForwardRequest)
        self.forwarded.append(req)
        frame = d645.parse_frame(req.content.lstrip(b"\xfe"))
        address = self.reply_from or frame.address
        for m in self.meters.values():
            if m.model.address == address:
                reply = m.handle(frame._replace(address=address))
                if reply is not None:
                    return ForwardReply(req.port, d645.build_frame(reply))
        return ForwardReply(req.port, b"")


async def run_terminal(port: int, conc: Concentrator, ready: asyncio.Event) -> None:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    ex = FrameExtractor()
    writer.write(up(2, [DataUnit(0, 1)], pseq=1, prm=True))
    try:
        while data := await reader.read(4096):
            ex.feed(data)
            for f in ex:
                if f.afn == 0x00 and not ready.is_set():
                    ready.set()  # the login confirmed
                    continue
                for out in conc.answer(f):
                    writer.write(out)
    except ConnectionError:
        pass
    finally:
        writer.close()


@asynccontextmanager
async def concentrator(**kw: object) -> AsyncIterator[tuple[MasterStation, Concentrator]]:
    clock = ManualClock(NOW)
    meters = make_meters(ADDRS, seed=7, clock=clock)
    conc = Concentrator({pn: m for pn, m in enumerate(meters, 1)}, clock,
                        **kw)  # type: ignore[arg-type]
    async with MasterStation("127.0.0.1", 0, terminals=lambda t: t == TID,
                             request_timeout=0.5, retries=0) as master:
        ready = asyncio.Event()
        task = asyncio.create_task(run_terminal(master.port, conc, ready))
        await asyncio.wait_for(ready.wait(), 2)
        await master.wait_online(TID, 2)
        try:
            yield master, conc
        finally:
            await master.close()
            await task


def meter_ref(pn: int = 1) -> MeterRef:
    return MeterRef(f"m{pn}", "dlt645-2007", ADDRS[pn - 1], route=Route(pn, port=2))


def opened(master: MasterStation, pn: int = 1) -> ConcentratorMeter:
    m = open_meter(concentrator_line(master, TID), meter_ref(pn))
    assert isinstance(m, ConcentratorMeter)
    return m


CLASS1_ASKED = ["energy_active_forward_total", "energy_active_forward_t2", "voltage_a",
                "current_b", "power_active_total", "power_factor_total",
                "energy_active_reverse_total"]


async def test_class1_quantities_come_from_one_afn0c_request_with_the_models_values() -> None:
    async with concentrator() as (master, conc):
        meter = opened(master, 2)
        got = await meter.read(CLASS1_ASKED)
        assert not got.failed and not got.refused and got.answered and got.valid
        assert [r.quantity for r in got.readings] == CLASS1_ASKED
        model = conc.meters[2].model
        for r in got.readings:
            assert r.value == num(model, r.quantity), r.quantity
            assert r.meter == "m2" and r.quality is Quality.GOOD and r.meter_ts is None
        units = {r.quantity: r.unit for r in got.readings}
        assert units["voltage_a"] == "V" and units["energy_active_forward_total"] == "kWh"
        assert units["current_b"] == "A" and units["power_active_total"] == "kW"
        assert conc.requests == [(0x0C, [(2, 129), (2, 25), (2, 34)])]
        assert conc.forwarded == [] and meter.requests == 1


async def test_status_word_3_and_balance_are_forwarded_to_the_meter_and_a_mixed_read() -> None:
    async with concentrator() as (master, conc):
        meter = opened(master)
        got = await meter.read(["status_word_3", "voltage_a", "balance_amount",
                                "energy_active_forward_total"])
        assert not got.failed
        assert [r.quantity for r in got.readings] == ["status_word_3", "voltage_a",
                                                      "balance_amount",
                                                      "energy_active_forward_total"]
        model = conc.meters[1].model
        by = {r.quantity: r.value for r in got.readings}
        assert by["status_word_3"] == model.status_word(3)
        assert by["balance_amount"] == num(model, "balance_amount")
        assert by["voltage_a"] == num(model, "voltage_a")
        assert [afn for afn, _ in conc.requests].count(0x0C) == 1
        assert {(r.port, r.baud) for r in conc.forwarded} == {(2, 2400)}
        units = {r.quantity: r.unit for r in got.readings}
        assert units["balance_amount"] == "yuan" and units["voltage_a"] == "V"


async def test_relay_trip_and_restore_verified_by_status_word_3_through_forwarding() -> None:
    async with concentrator() as (master, conc):
        meter = opened(master)
        creds = Credentials(PASSWORD, "00000001", NOW + dt.timedelta(hours=1))
        plan = meter.relay_plan("trip")
        assert plan.trip and not plan.expected(await meter.relay_state())
        await meter.relay(plan, creds)
        state = await meter.relay_state(CallOptions(retries=0))
        assert plan.expected(state) and conc.meters[1].model.relay_open
        restore = meter.relay_plan("restore")
        await meter.relay(restore, creds)
        assert restore.expected(await meter.relay_state())
        assert meter.secret_of(creds) == PASSWORD
        with pytest.raises(ValueError, match="password"):
            meter.check_credentials(plan, Credentials("0200", "0", creds.expires))
        assert all(r.port == 2 for r in conc.forwarded) and len(conc.forwarded) == 5


async def test_a_forwarded_reply_from_another_address_is_a_wrong_reply_and_nothing_more() -> None:
    async with concentrator(reply_from=ADDRS[1]) as (master, conc):
        meter = opened(master)
        creds = Credentials(PASSWORD, "00000001", NOW + dt.timedelta(hours=1))
        with pytest.raises(WrongReply) as e:
            await meter.relay(meter.relay_plan("trip"), creds)
        assert e.value.field == "address"
        assert len(conc.forwarded) == 1
        assert not conc.meters[0 + 1].model.relay_open


async def test_half_failure_keeps_the_energy_and_fails_the_absent_values() -> None:
    async with concentrator(ee_fns={25}) as (master, conc):
        meter = opened(master)
        got = await meter.read(["energy_active_forward_total", "voltage_a", "current_a"])
        assert [r.quantity for r in got.readings] == ["energy_active_forward_total"]
        assert got.readings[0].value == num(
            conc.meters[1].model, "energy_active_forward_total")
        assert set(got.failed) == {"voltage_a", "current_a"}
        assert all(isinstance(e, Absent) for e in got.failed.values())
        with pytest.raises(Absent, match="voltage_a: EE"):
            await meter.read_all(["voltage_a"])


async def test_daily_freezes_by_date() -> None:
    async with concentrator(missing_days={NOW.date() - dt.timedelta(days=3)}) as (
            master, conc):
        meter = opened(master)
        assert await meter.freeze_time(1) == dt.datetime.combine(NOW.date(), dt.time())
        freeze = await meter.read_freeze(1, tz=dt.UTC)
        assert freeze.taken == dt.datetime(2024, 5, 6) and not freeze.notes
        assert conc.requests[-1] == (0x0D, [(1, 161)])
        names = [r.quantity for r in freeze.readings]
        assert names[:2] == ["freeze_daily_energy_active_forward_total",
                             "freeze_daily_energy_active_forward_t1"]
        model = conc.meters[1].model
        assert freeze.readings[0].value == num(
            model, "freeze_daily_energy_active_forward_total", freeze=1)
        assert {r.meter_ts for r in freeze.readings} == {dt.datetime(2024, 5, 6, tzinfo=dt.UTC)}
        assert all(r.quality is Quality.BACKFILLED for r in freeze.readings)
        on = await meter.read_freeze(9, tz=dt.UTC, on=NOW.date() - dt.timedelta(days=1))
        assert on.taken == dt.datetime(2024, 5, 5) and on.readings[0].value == num(
            model, "freeze_daily_energy_active_forward_total", freeze=2)
        gone = await meter.read_freeze(3, tz=dt.UTC)
        assert gone.taken.date() == NOW.date() - dt.timedelta(days=2)
        assert gone.readings == [] and "no F161" in gone.notes[0]


async def test_a_day_the_concentrator_has_as_ee_is_a_freeze_without_readings() -> None:
    async with concentrator(ee_fns={161, 1}) as (master, _conc):
        freeze = await opened(master).read_freeze(1, tz=dt.UTC)
        assert freeze.readings == [] and any("no values (EE)" in n for n in freeze.notes)


async def test_an_offline_terminal_fails_the_read_with_link_down() -> None:
    async with MasterStation("127.0.0.1", 0, terminals=lambda t: t == TID,
                             request_timeout=0.3) as master:
        meter = opened(master)
        got = await meter.read(["energy_active_forward_total", "status_word_3"],
                               CallOptions(retries=0))
        assert got.readings == [] and not got.answered
        assert all(isinstance(e, LinkDown) for e in got.failed.values())
        assert set(got.failed) == {"energy_active_forward_total", "status_word_3"}
        with pytest.raises(LinkDown):
            await meter.ping()
        with pytest.raises(LinkDown):
            await meter.relay_state()


async def test_per_call_options_do_not_change_the_shared_session() -> None:
    async with concentrator(silent=True) as (master, conc):
        meter = opened(master)
        before = (master.request_timeout, master.retries)
        t0 = time.monotonic()
        got = await meter.read(["voltage_a"], CallOptions(retries=1, td=0.1))
        took = time.monotonic() - t0
        assert isinstance(got.failed["voltage_a"], NoReply) and took < 0.45
        assert len(conc.requests) == 2  # one try plus the call's one retry
        assert (master.request_timeout, master.retries) == before


async def test_ping_is_one_class1_f129_read() -> None:
    async with concentrator() as (master, conc):
        await opened(master).ping()
        assert conc.requests == [(0x0C, [(1, 129)])]


def test_capabilities_behind_a_concentrator() -> None:
    caps = capabilities(meter_ref())
    direct = capabilities(MeterRef("m1", "dlt645-2007", ADDRS[0]))
    assert caps.quantities >= direct.quantities and caps.quantities >= set(CLASS1)
    assert caps.relay == direct.relay and caps.relay_state and caps.credentials
    assert caps.daily_freezes == DAILY_FREEZES and caps.clock and caps.block_reads
    assert caps.clock_set is None
    old = capabilities(MeterRef("m1", "dlt645-1997", ADDRS[0], route=Route(1)))
    assert not old.relay and old.daily_freezes == DAILY_FREEZES


async def test_open_meter_without_a_terminal_or_route_is_a_direct_meter() -> None:
    async with MasterStation("127.0.0.1", 0, terminals=lambda t: True) as master:
        line = concentrator_line(master, TID)
        assert isinstance(line.terminal, TerminalLink)
        direct = open_meter(line, MeterRef("m1", "dlt645-2007", ADDRS[0]))
        assert isinstance(direct, Dlt645Meter)
        plain = open_meter(Line(TcpBus("127.0.0.1", 1)), meter_ref())
        assert isinstance(plain, Dlt645Meter)
        meter = opened(master)
        assert meter.clock_group() is None and meter.address == ADDRS[0]
        with pytest.raises(Unsupported):
            await meter.broadcast_time(NOW)
        with pytest.raises(ValueError, match="only DL/T645"):
            capabilities(MeterRef("m1", "modbus", "1", route=Route(1)))
    with pytest.raises(ValueError, match="measuring point 0"):
        Route(0)


async def test_after_the_terminal_logs_in_again_the_first_forwarded_read_works() -> None:
    async with concentrator() as (master, conc):
        meter = opened(master)
        first = await meter.read(["status_word_3"], CallOptions(retries=0))
        assert not first.failed
        old = master.terminal(TID)
        ready = asyncio.Event()
        again = asyncio.create_task(run_terminal(master.port, conc, ready))
        await asyncio.wait_for(ready.wait(), 2)
        assert master.terminal(TID) is not old
        got = await meter.read(["status_word_3", "balance_amount"], CallOptions(retries=0))
        assert not got.failed and len(got.readings) == 2
    await again

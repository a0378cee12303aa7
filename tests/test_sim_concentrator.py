"""The 376.1 concentrator simulator against a small test master on loopback TCP."""

from __future__ import annotations

import asyncio
import datetime as dt
import itertools
from collections.abc import AsyncIterator, Iterable
from contextlib import asynccontextmanager
from decimal import Decimal
from typing import Any

import pytest

from protocols import dlt645
from protocols.qgdw3761 import (
    AFN,
    ArchiveQuery,
    ConfirmStyle,
    CurveTag,
    DataUnit,
    Direction,
    EnergyReadings,
    Erc3,
    Erc14,
    EventQuery,
    EventRecords,
    ForwardReply,
    ForwardRequest,
    Frame,
    FrameExtractor,
    MeterArchive,
    MeterEntry,
    PresentValues,
    TerminalVersion,
    build_frame,
    confirm,
    decode_units,
    request,
)
from simulators.concentrator import (
    UNKNOWN_A1,
    ConcentratorSimulator,
    Faults,
    make_concentrators,
    meter_address,
    parse_faults,
)
from simulators.meter import ManualClock

START = dt.datetime(2024, 5, 6, 10, 30, 15)
A1 = "4401"


class Session:
    """One terminal connection as the master sees it."""

    def __init__(self, master: Master, reader: asyncio.StreamReader,
                 writer: asyncio.StreamWriter) -> None:
        self.master, self.reader, self.writer = master, reader, writer
        self.link: list[tuple[float, Frame]] = []  # (loop time, login/heartbeat frame)
        self.replies: asyncio.Queue[Frame] = asyncio.Queue()
        self.closed = asyncio.Event()

    async def pump(self) -> None:
        extractor = FrameExtractor()
        loop = asyncio.get_running_loop()
        try:
            while data := await self.reader.read(4096):
                extractor.feed(data)
                for f in extractor:
                    if f.afn == AFN.LINK and f.prm:
                        self.link.append((loop.time(), f))
                        self.master.link.append(f)
                        if self.master.answer_link:
                            self.writer.write(build_frame(confirm(f, style=self.master.style)))
                    else:
                        await self.replies.put(f)
        finally:
            self.closed.set()

    def send(self, afn: int, units: Iterable[DataUnit], pseq: int) -> None:
        a1, a2 = self.link[0][1].a1, self.link[0][1].a2
        self.writer.write(build_frame(request(a1, a2, afn, list(units), pseq=pseq)))

    async def ask(self, afn: int, units: Iterable[DataUnit], pseq: int = 1,
                  timeout: float = 3.0) -> list[Frame]:
        """Every frame of the reply, up to the one with FIN."""
        self.send(afn, units, pseq)
        out = []
        while True:
            f = await asyncio.wait_for(self.replies.get(), timeout)
            out.append(f)
            if f.fin:
                return out

    async def values(self, afn: int, units: Iterable[DataUnit], pseq: int = 1) -> list[Any]:
        frames = await self.ask(afn, units, pseq)
        assert len(frames) == 1
        f = frames[0]
        assert f.afn == afn and f.pseq == pseq and f.direction is Direction.UP
        return [u.value for u in units_of(f)]

    async def link_frames(self, n: int, timeout: float = 3.0) -> list[tuple[float, Frame]]:
        async def wait() -> None:
            while len(self.link) < n:
                await asyncio.sleep(0.01)
        await asyncio.wait_for(wait(), timeout)
        return self.link[:n]


class Master:
    """A minimal master station: accepts terminals, confirms their link frames."""

    def __init__(self, style: ConfirmStyle = ConfirmStyle.F1, answer_link: bool = True) -> None:
        self.style, self.answer_link = style, answer_link
        self.sessions: asyncio.Queue[Session] = asyncio.Queue()
        self.link: list[Frame] = []
        self.port = 0

    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        s = Session(self, reader, writer)
        await self.sessions.put(s)
        await s.pump()

    async def session(self, timeout: float = 3.0) -> Session:
        s = await asyncio.wait_for(self.sessions.get(), timeout)
        await s.link_frames(1)
        return s


@asynccontextmanager
async def running(faults: Faults | None = None, *, style: ConfirmStyle = ConfirmStyle.F1,
                  answer_link: bool = True, **kw: Any
                  ) -> AsyncIterator[tuple[Master, ConcentratorSimulator]]:
    master = Master(style, answer_link)
    server = await asyncio.start_server(master._accept, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    kw.setdefault("clock", ManualClock(START))
    kw.setdefault("meters", 3)
    sim = ConcentratorSimulator("127.0.0.1", port, a1=A1, a2=7, faults=faults,
                                reconnect_delay=0.05, **kw)
    try:
        async with sim:
            yield master, sim
    finally:
        server.close()


def units_of(frame: Frame) -> list[DataUnit]:
    out = decode_units(frame)
    assert all(isinstance(u, DataUnit) for u in out)
    return [u for u in out if isinstance(u, DataUnit)]


def energy(sim: ConcentratorSimulator, pn: int, name: str, **kw: int) -> Decimal:
    meter = sim.meter(pn)
    assert meter is not None
    v = meter.model.read(name, **kw)
    assert isinstance(v, Decimal)
    return v


def tariffs(sim: ConcentratorSimulator, pn: int, base: str, **kw: int) -> tuple[Decimal, ...]:
    return tuple(energy(sim, pn, f"{base}_{s}", **kw) for s in ("total", "t1", "t2", "t3", "t4"))


# ---- login and heartbeat -------------------------------------------------------------------

@pytest.mark.parametrize("style", [ConfirmStyle.F1, ConfirmStyle.F3])
async def test_login_is_confirmed_by_f1_or_f3(style: ConfirmStyle) -> None:
    async with running(style=style) as (master, sim):
        s = await master.session()
        await asyncio.wait_for(sim.logged_in.wait(), 2)
        login = s.link[0][1]
        assert (login.control, login.afn, login.a1, login.a2) == (0xC9, 0x02, A1, 7)
        assert login.con and login.fir and login.fin
        assert [(u.pn, u.fn) for u in units_of(login)] == [(0, 1)]
        assert sim.stats.login_confirms == {style.name: 1}
        assert sim.stats.logins == 1


async def test_login_is_repeated_until_confirmed() -> None:
    async with running(answer_link=False, login_timeout=0.2) as (master, sim):
        s = await master.session()
        frames = await s.link_frames(3)
        assert [units_of(f)[0].fn for _, f in frames] == [1, 1, 1]
        assert [f.pseq for _, f in frames] == [0, 1, 2]
        assert not sim.logged_in.is_set()


@pytest.mark.parametrize("style", ["2013", "2009"])
async def test_heartbeats_come_every_period(style: str) -> None:
    async with running(heartbeat=0.2, heartbeat_style=style) as (master, sim):
        s = await master.session()
        frames = await s.link_frames(4)
        beats = frames[1:]
        assert all(units_of(f)[0].fn == 3 and f.control == 0xC9 for _, f in beats)
        gaps = [b[0] - a[0] for a, b in itertools.pairwise(beats)]
        assert all(0.1 < g < 0.5 for g in gaps), gaps
        value = units_of(beats[0][1])[0].value
        if style == "2013":
            assert value.clock == START
        else:
            assert value is None
        await asyncio.sleep(0.05)
        assert sim.stats.heartbeats >= 3 and sim.stats.heartbeat_confirms >= 3


# ---- class 1, class 2 ----------------------------------------------------------------------

async def test_class1_values_are_the_meters() -> None:
    async with running() as (master, sim):
        s = await master.session()
        frames = await s.ask(AFN.CLASS1, [DataUnit(0, 2), DataUnit(1, 25), DataUnit(1, 33),
                                          DataUnit(2, 34), DataUnit(2, 129)], pseq=5)
        f = frames[0]
        assert (f.control, f.pseq, f.a1, f.a2) == (0x88, 5, A1, 7)
        clock, f25, f33, f34, f129 = (u.value for u in units_of(f))
        assert clock == START
        assert isinstance(f25, PresentValues)
        assert f25.read_time == START.replace(second=0)
        meter = sim.meter(1)
        assert meter is not None
        assert f25.voltage_a == meter.model.read("voltage_a")
        assert f25.current_b == meter.model.read("current_b")
        assert f25.power_active_total == meter.model.read("power_active_total")
        assert isinstance(f33, EnergyReadings)
        assert f33.active == tariffs(sim, 1, "energy_active_forward")
        assert f33.reactive == tariffs(sim, 1, "energy_reactive_combined1")
        assert f33.quadrant_1st[0] == energy(sim, 1, "energy_reactive_q1_total")
        assert f34.active == tariffs(sim, 2, "energy_active_reverse")
        assert f129.values == tariffs(sim, 2, "energy_active_forward")
        assert f129.values[0] > 1000


async def test_a_point_without_meter_is_absent_and_an_unknown_fn_denied() -> None:
    async with running() as (master, sim):
        s = await master.session()
        (f129,) = await s.values(AFN.CLASS1, [DataUnit(9, 129)])
        assert f129.values == (None,) * 5
        (deny,) = await s.ask(AFN.CLASS1, [DataUnit(1, 2)], pseq=2)
        assert deny.afn == AFN.CONFIRM and units_of(deny)[0].fn == 2 and deny.pseq == 2
        # AFN 0B F1 (task data), which the terminal does not implement
        s.writer.write(build_frame(Frame(0x4B, A1, 7, 2, AFN.TASK_DATA, 0x63,
                                         bytes.fromhex("00000100"))))
        deny = await asyncio.wait_for(s.replies.get(), 3)
        assert deny.afn == AFN.CONFIRM and units_of(deny)[0].fn == 2 and deny.pseq == 3
        assert sim.stats.denies == 2


async def test_class2_frozen_values_are_the_meters_freezes() -> None:
    async with running() as (master, sim):
        s = await master.session()
        day = START.date() - dt.timedelta(days=2)
        month = dt.date(2024, 3, 1)
        tag = CurveTag(START.replace(hour=0, minute=0, second=0), 1, 4)
        f161, f1, f17, f49, f97 = await s.values(AFN.CLASS2, [
            DataUnit(1, 161, day), DataUnit(2, 1, day), DataUnit(1, 17, month),
            DataUnit(0, 49, day), DataUnit(1, 97, tag)])
        # Day D is frozen at 00:00 of D+1: the meter's freeze number 2 from 2024-05-06.
        assert f161.tag == day
        assert f161.values == tariffs(sim, 1, "freeze_daily_energy_active_forward", freeze=2)
        assert f161.read_time == dt.datetime(2024, 5, 5)
        assert f1.active == tariffs(sim, 2, "freeze_daily_energy_active_forward", freeze=2)
        assert f1.reactive == (None,) * 5
        # March is settled on 1 April: the 2nd last settlement seen from 6 May.
        assert f17.tag == month and f17.monthly
        assert f17.active == tariffs(sim, 1, "energy_active_forward", settlement=2)
        assert (f49.tag, f49.supply_minutes, f49.resets) == (day, 1440, 0)
        # energy per 15 min from the meter's load curve: tests/test_sim_concentrator_curves.py
        assert f97.tag == tag and len(f97.values) == 4 and None not in f97.values
        (old,) = await s.values(AFN.CLASS2, [DataUnit(1, 161, dt.date(2023, 1, 1))], pseq=2)
        assert old.values == (None,) * 5


# ---- events, parameters, clock, version ------------------------------------------------------

async def test_events_set_acd_until_read() -> None:
    async with running() as (master, sim):
        s = await master.session()
        (f,) = await s.ask(AFN.CLASS1, [DataUnit(0, 2)], pseq=1)
        assert f.control == 0x88 and f.ec is None
        off = dt.datetime(2024, 5, 6, 3, 10)
        sim.power_cycle(off, off + dt.timedelta(minutes=42))
        (f,) = await s.ask(AFN.CLASS1, [DataUnit(0, 2)], pseq=2)
        assert f.control == 0xA8 and f.ec == (1, 0)
        (f,) = await s.ask(AFN.CLASS3, [DataUnit(0, 1, EventQuery(0, 1))], pseq=3)
        records = units_of(f)[0].value
        assert isinstance(records, EventRecords)
        assert (records.ec1, records.start, records.end) == (1, 0, 1)
        assert records.records[0].erc == 14
        assert records.records[0].content == Erc14(off, off + dt.timedelta(minutes=42))
        (f,) = await s.ask(AFN.CLASS1, [DataUnit(0, 2)], pseq=4)
        assert f.control == 0x88


async def test_archive_download_is_stored_and_read_back() -> None:
    async with running() as (master, sim):
        s = await master.session()
        (wired,) = await s.values(AFN.QUERY_PARAMETERS, [DataUnit(0, 10, ArchiveQuery((1, 2)))])
        assert [(e.pn, e.port, e.address) for e in wired.entries] == [
            (1, 2, meter_address(7, 1)), (2, 2, meter_address(7, 2))]
        entries = (MeterEntry(1, 1, 2, meter_address(7, 3), baud=2400),
                   MeterEntry(5, 5, 2, "000000001234", baud=9600))
        (ok,) = await s.ask(AFN.SET_PARAMETERS, [DataUnit(0, 10, MeterArchive(entries))], pseq=2)
        assert ok.afn == AFN.CONFIRM and units_of(ok)[0].fn == 1 and ok.pseq == 2
        (back,) = await s.values(AFN.QUERY_PARAMETERS,
                                 [DataUnit(0, 10, ArchiveQuery((1, 5, 9)))], pseq=3)
        assert back.entries == entries
        # pn 1 is now the meter at address ...3; the parameter change is an ERC3 event.
        (f129,) = await s.values(AFN.CLASS1, [DataUnit(1, 129)], pseq=4)
        assert f129.values == tariffs(sim, 3, "energy_active_forward")
        assert isinstance(sim.events[-1].content, Erc3)


async def test_time_set_moves_the_terminal_clock_and_version_answers() -> None:
    async with running() as (master, _sim):
        s = await master.session()
        new = dt.datetime(2024, 5, 6, 11, 0, 0)
        (ok,) = await s.ask(AFN.CONTROL, [DataUnit(0, 31, new)], pseq=1)
        assert units_of(ok)[0].fn == 1
        (clock,) = await s.values(AFN.CLASS1, [DataUnit(0, 2)], pseq=2)
        assert clock == new
        (version,) = await s.values(AFN.CONFIGURATION, [DataUnit(0, 1)], pseq=3)
        assert isinstance(version, TerminalVersion) and version.device_number == "00000007"
        (params,) = await s.values(AFN.QUERY_PARAMETERS, [DataUnit(0, 1)], pseq=4)
        assert params.heartbeat == 1


# ---- forwarding ----------------------------------------------------------------------------

def forward(content: bytes, port: int = 2, baud: int = 2400) -> DataUnit:
    return DataUnit(0, 1, ForwardRequest.make(port, content, baud=baud, frame_timeout_s=10))


async def test_forwarded_read_reaches_the_meter() -> None:
    async with running() as (master, sim):
        s = await master.session()
        address = meter_address(7, 2)
        req = dlt645.build_frame(dlt645.ReadRequest(address=address, di=0x00010000).to_frame())
        (reply,) = await s.values(AFN.FORWARD, [forward(req)])
        assert isinstance(reply, ForwardReply) and reply.port == 2
        msg = dlt645.decode_message(dlt645.parse_frame(reply.dlt645()), dlt645.Version.V2007)
        assert isinstance(msg, dlt645.ReadReply) and msg.address == address
        assert msg.value() == energy(sim, 2, "energy_active_forward_total")
        for pseq, unit in ((2, forward(req, port=1)), (3, forward(req, baud=9600)),
                           (4, forward(dlt645.build_frame(dlt645.ReadRequest(
                               address="999999999999", di=0x00010000).to_frame())))):
            (none,) = await s.values(AFN.FORWARD, [unit], pseq=pseq)
            assert none.content == b""


async def test_forwarded_trip_runs_once_when_repeated() -> None:
    async with running() as (master, sim):
        s = await master.session()
        address = meter_address(7, 1)
        trip = dlt645.build_frame(dlt645.RemoteControlRequest(
            address=address, password="02000000", operator="12345678",
            command=dlt645.RelayCommand.TRIP, expiry=START + dt.timedelta(hours=1)).to_frame())
        (first,) = await s.ask(AFN.FORWARD, [forward(trip)], pseq=9)
        (again,) = await s.ask(AFN.FORWARD, [forward(trip)], pseq=9)
        assert build_frame(first) == build_frame(again)
        meter = sim.meter(1)
        assert meter is not None
        assert meter.counters["control_accepted"] == 1 and sim.stats.repeats == 1
        status = dlt645.build_frame(dlt645.ReadRequest(address=address,
                                                       di=0x04000503).to_frame())
        (reply,) = await s.values(AFN.FORWARD, [forward(status)], pseq=10)
        msg = dlt645.decode_message(dlt645.parse_frame(reply.dlt645()), dlt645.Version.V2007)
        assert isinstance(msg, dlt645.ReadReply)
        assert meter.model.relay_open and meter.model.status_word(3) & 0x10
        assert msg.body[0] & 0x10  # status word 3 bit 4: relay open


# ---- faults --------------------------------------------------------------------------------

def test_parse_faults() -> None:
    f = parse_faults("drop-after:2.5, drop-requests:3,silent:1,deny,slow:0.5,multi-frame,"
                     "wrong-seq,unknown-address")
    assert f == Faults(2.5, 3, 1.0, True, 0.5, True, True, True)
    assert parse_faults("silent").silent_after == 0
    assert parse_faults("") == Faults()
    for bad in ("explode", "slow", "deny:1", "drop-requests:0", "slow:x", "drop-after:-1"):
        with pytest.raises(ValueError, match="fault"):
            parse_faults(bad)


async def test_drop_after_requests_reconnects_and_pseq_keeps_counting() -> None:
    async with running(parse_faults("drop-requests:1")) as (master, sim):
        first = await master.session()
        await first.ask(AFN.CLASS1, [DataUnit(0, 2)])
        await asyncio.wait_for(first.closed.wait(), 2)
        second = await master.session()
        login = second.link[0][1]
        assert units_of(login)[0].fn == 1
        assert login.pseq == first.link[-1][1].pseq + 1
        assert sim.stats.reconnects == 1 and sim.stats.drops == 1
        assert sim.stats.login_confirms["F1"] == 2


async def test_drop_after_seconds_and_drop_method() -> None:
    async with running(Faults(drop_after=0.2)) as (master, sim):
        first = await master.session()
        await asyncio.wait_for(first.closed.wait(), 2)
        await master.session()
        assert sim.stats.reconnects == 1
    async with running() as (master, sim):
        first = await master.session()
        await asyncio.wait_for(sim.logged_in.wait(), 2)
        sim.drop()
        await asyncio.wait_for(first.closed.wait(), 2)
        await master.session()
        assert sim.stats.reconnects == 1


async def test_silent_terminal_keeps_the_link_but_says_nothing() -> None:
    async with running(parse_faults("silent"), heartbeat=0.1) as (master, sim):
        s = await master.session()
        s.send(AFN.CLASS1, [DataUnit(0, 2)], 1)
        await asyncio.sleep(0.4)
        assert s.replies.empty() and len(s.link) == 1 and not s.closed.is_set()
        assert sim.stats.ignored == 1 and sim.stats.heartbeats == 0


async def test_deny_slow_and_wrong_seq_faults() -> None:
    async with running(parse_faults("deny")) as (master, _):
        s = await master.session()
        (f,) = await s.ask(AFN.CLASS1, [DataUnit(1, 129)], pseq=3)
        assert f.afn == AFN.CONFIRM and units_of(f)[0].fn == 2 and f.pseq == 3
    async with running(parse_faults("slow:0.3")) as (master, _):
        s = await master.session()
        loop = asyncio.get_running_loop()
        t0 = loop.time()
        await s.ask(AFN.CLASS1, [DataUnit(1, 129)])
        assert loop.time() - t0 >= 0.3
    async with running(parse_faults("wrong-seq")) as (master, _):
        s = await master.session()
        (f,) = await s.ask(AFN.CLASS1, [DataUnit(1, 129)], pseq=15)
        assert f.pseq == 0


async def test_multi_frame_reply_counts_rseq() -> None:
    async with running(parse_faults("multi-frame")) as (master, sim):
        s = await master.session()
        frames = await s.ask(AFN.CLASS1, [DataUnit(pn, 129) for pn in (1, 2, 3)], pseq=14)
        assert [(f.fir, f.fin, f.pseq) for f in frames] == [
            (True, False, 14), (False, False, 15), (False, True, 0)]
        values = [units_of(f)[0] for f in frames]
        assert [u.pn for u in values] == [1, 2, 3]
        assert values[2].value.values == tariffs(sim, 3, "energy_active_forward")


async def test_unknown_address_logs_in_as_another_area() -> None:
    async with running(parse_faults("unknown-address")) as (master, _):
        s = await master.session()
        assert (s.link[0][1].a1, s.link[0][1].a2) == (UNKNOWN_A1, 7)


# ---- several terminals ---------------------------------------------------------------------

async def test_count_three_logs_in_three_consecutive_a2() -> None:
    master = Master()
    server = await asyncio.start_server(master._accept, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    sims = make_concentrators("127.0.0.1", port, count=3, a1=A1, a2=100, meters=64)
    for sim in sims:
        sim.start()
    try:
        sessions = [await master.session() for _ in range(3)]
        assert sorted(s.link[0][1].a2 for s in sessions) == [100, 101, 102]
        s = next(x for x in sessions if x.link[0][1].a2 == 102)
        (f129,) = await s.values(AFN.CLASS1, [DataUnit(64, 129)])
        assert f129.values[0] == energy(sims[2], 64, "energy_active_forward_total")
        # Only the meter asked for was built.
        assert len(sims[2]._meters) == 1 and not sims[0]._meters
    finally:
        for sim in sims:
            await sim.stop()
        server.close()
    with pytest.raises(ValueError, match="65535"):
        make_concentrators("127.0.0.1", port, count=3, a2=65534)

"""The 376.1 master station over real TCP on loopback, against a scripted terminal."""

from __future__ import annotations

import asyncio
import datetime as dt
import ssl
import subprocess
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from decimal import Decimal
from pathlib import Path

import pytest

import protocols.dlt645 as d645
from drivers.device import Credentials, Line, MeterRef
from drivers.dlt645 import Dlt645Session
from drivers.errors import LinkDown, NoReply
from drivers.meters import open_meter
from drivers.qgdw3761 import (
    Denied,
    ForwardBus,
    MasterStation,
    TerminalEvent,
    TerminalId,
    TerminalSession,
    units_by_fn,
)
from protocols.qgdw3761 import (
    ActiveEnergy,
    ArchiveQuery,
    ConfirmStyle,
    DataUnit,
    Direction,
    Erc14,
    EventQuery,
    EventRecord,
    EventRecords,
    ForwardReply,
    ForwardRequest,
    Frame,
    FrameExtractor,
    FrozenActiveEnergy,
    ItemResult,
    ItemResults,
    MeterArchive,
    MeterEntry,
    TerminalVersion,
    build_frame,
    control_byte,
    decode_units,
    encode_units,
    idents,
    seq_byte,
)
from simulators.dlt645 import make_meters

TID = TerminalId("4403", 1)
CLOCK = dt.datetime(2024, 5, 6, 7, 8, 9)
MINUTE = CLOCK.replace(second=0)


def up(afn: int, units: list[DataUnit], *, pseq: int, prm: bool = False, fir: bool = True,
       fin: bool = True, con: bool = False, a2: int = 1, function: int | None = None) -> bytes:
    """An uplink frame of terminal 4403/a2."""
    if function is None:
        function = (9 if afn == 2 else 4) if prm else 8
    return build_frame(Frame(
        control=control_byte(Direction.UP, prm=prm, function=function), a1="4403", a2=a2,
        a3=0, afn=afn, seq=seq_byte(pseq, fir=fir, fin=fin, con=con),
        units=encode_units(afn, Direction.UP, units)))


class Terminal:
    """A scripted terminal: it dials in, and reads the master's frames one at a time."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader = reader
        self.writer = writer
        self.ex = FrameExtractor()
        self.pseq = 0

    @classmethod
    async def dial(cls, port: int, ctx: ssl.SSLContext | None = None) -> Terminal:
        r, w = await asyncio.open_connection("127.0.0.1", port, ssl=ctx,
                                             server_hostname="localhost" if ctx else None)
        return cls(r, w)

    def send(self, data: bytes) -> None:
        self.writer.write(data)

    def link(self, fn: int, a2: int = 1) -> int:
        """Send login (1), logout (2) or heartbeat (3); returns its PSEQ."""
        self.pseq = (self.pseq + 1) & 15
        self.send(up(2, [DataUnit(0, fn)], pseq=self.pseq, prm=True, con=True, a2=a2))
        return self.pseq

    async def frame(self, timeout: float = 2.0) -> Frame:
        async with asyncio.timeout(timeout):
            while True:
                for f in self.ex:
                    return f
                data = await self.reader.read(4096)
                if not data:
                    raise EOFError("closed by the master")
                self.ex.feed(data)

    async def login(self) -> Frame:
        self.link(1)
        return await self.frame()

    async def closed(self, timeout: float = 2.0) -> bytes:
        """Everything the master sent until it closed the connection."""
        got = b""
        async with asyncio.timeout(timeout):
            while data := await self.reader.read(4096):
                got += data
        return got

    def close(self) -> None:
        self.writer.close()


Handler = Callable[[Terminal, Frame], list[bytes]]


async def serve(t: Terminal, handler: Handler) -> None:
    """Answer every request with what ``handler`` returns, until the connection ends."""
    try:
        while True:
            f = await t.frame(timeout=30)
            for out in handler(t, f):
                t.send(out)
    except (EOFError, ConnectionError):
        pass


@asynccontextmanager
async def station(**kw: object) -> AsyncIterator[tuple[MasterStation, list[TerminalEvent]]]:
    events: list[TerminalEvent] = []
    kw.setdefault("terminals", lambda tid: tid == TID)
    kw.setdefault("request_timeout", 0.5)
    async with MasterStation("127.0.0.1", 0, on_event=events.append,
                             **kw) as master:  # type: ignore[arg-type]
        yield master, events


def clock_reply(t: Terminal, f: Frame) -> list[bytes]:
    if f.afn == 0x0C:
        return [up(0x0C, [DataUnit(0, 2, CLOCK)], pseq=f.pseq)]
    return []


# ---- link handling ------------------------------------------------------------------------

@pytest.mark.parametrize("style", [ConfirmStyle.F1, ConfirmStyle.F3])
async def test_login_is_confirmed_in_the_configured_style(style: ConfirmStyle) -> None:
    async with station(login_reply=style) as (master, events):
        t = await Terminal.dial(master.port)
        t.pseq = 4
        reply = await t.login()
        assert (reply.control, reply.afn, reply.pseq, reply.direction) == (
            0x0B, 0x00, 5, Direction.DOWN)
        (unit,) = decode_units(reply)
        assert isinstance(unit, DataUnit)
        if style is ConfirmStyle.F1:
            assert unit.fn == 1
        else:
            assert unit.fn == 3 and isinstance(unit.value, ItemResults)
            assert unit.value.afn == 2 and unit.value.items[0].fns == (1,)
            assert unit.value.items[0].error == 0
        assert master.online() == [TID]
        assert [e.kind for e in events] == ["online"]
        assert str(TID) == "4403:00001" and TerminalId.parse("4403:00001") == TID
        t.close()


async def test_heartbeat_answered_and_logout_marks_offline() -> None:
    async with station() as (master, events):
        t = await Terminal.dial(master.port)
        await t.login()
        pseq = t.link(3)
        reply = await t.frame()
        assert (reply.afn, reply.pseq, reply.control) == (0, pseq, 0x0B)
        t.link(2)
        assert (await t.frame()).afn == 0
        await t.closed()
        assert master.online() == [] and master.counters()["heartbeats"] == 1
        assert [e.kind for e in events] == ["online", "offline"]
        assert events[1].reason == "logged out" and events[1].terminal == TID


async def test_idle_terminal_goes_offline_once() -> None:
    async with station(idle_timeout=0.3) as (master, events):
        t = await Terminal.dial(master.port)
        await t.login()
        await asyncio.sleep(0.2)
        t.link(3)  # a heartbeat keeps it alive past the first 0.3 s
        await t.frame()
        assert await t.closed(timeout=1.0) == b""
        await asyncio.sleep(0.3)
        offline = [e for e in events if e.kind == "offline"]
        assert len(offline) == 1 and "no frame for 0.3 s" in offline[0].reason
        assert master.online() == [] and master.counters()["timeouts"] == 1


async def test_second_login_replaces_the_first_connection() -> None:
    async with station() as (master, events):
        old = await Terminal.dial(master.port)
        await old.login()
        new = await Terminal.dial(master.port)
        await new.login()
        assert await old.closed() == b""  # the old socket is closed by the master
        await asyncio.sleep(0.05)
        assert [e.kind for e in events] == ["online", "replaced"]
        assert master.online() == [TID] and master.counters()["replaced"] == 1
        session = master.terminal(TID)
        assert session is not None
        task = asyncio.create_task(serve(new, clock_reply))
        assert await session.clock() == CLOCK  # served by the new connection
        new.close()
        await task
        await asyncio.sleep(0.05)
        assert [e.kind for e in events] == ["online", "replaced", "offline"]
        assert master.online() == []


async def test_unknown_terminal_is_refused_and_never_answered() -> None:
    async with station() as (master, events):
        t = await Terminal.dial(master.port)
        t.link(1, a2=2)
        assert await t.closed() == b""
        t2 = await Terminal.dial(master.port)  # a heartbeat first is no login either
        t2.link(3)
        assert await t2.closed() == b""
        c = master.counters()
        assert c["refused_unknown"] == 1 and c["refused_no_login"] == 1 and c["logins"] == 0
        assert master.online() == [] and events == []


async def test_garbage_and_bad_checksum_are_counted_not_answered() -> None:
    async with station() as (master, _):
        t = await Terminal.dial(master.port)
        await t.login()
        bad = bytearray(up(2, [DataUnit(0, 3)], pseq=9, prm=True, con=True))
        bad[-2] ^= 0xFF
        t.send(b"\x01\x02garbage" + bytes(bad))
        pseq = t.link(3)
        reply = await t.frame()
        assert reply.pseq == pseq  # the bad frame (PSEQ 9) got no answer
        c = master.counters()
        assert c["bad_frames"] == 1 and c["garbage_bytes"] >= 9 and c["heartbeats"] == 1
        assert master.online() == [TID]
        t.close()


# ---- requests -----------------------------------------------------------------------------

@asynccontextmanager
async def online(handler: Handler, **kw: object
                 ) -> AsyncIterator[tuple[MasterStation, Terminal, list[TerminalEvent]]]:
    async with station(**kw) as (master, events):
        t = await Terminal.dial(master.port)
        await t.login()
        task = asyncio.create_task(serve(t, handler))
        try:
            yield master, t, events
        finally:
            t.close()
            await task


def session_of(master: MasterStation) -> TerminalSession:
    s = master.terminal(TID)
    assert s is not None
    return s


async def test_requests_are_serialised_per_terminal() -> None:
    outstanding: list[int] = []
    seen: list[int] = []

    async def answer_later(t: Terminal, pseq: int) -> None:
        await asyncio.sleep(0.1)
        outstanding.remove(pseq)
        t.send(up(0x0C, [DataUnit(0, 2, CLOCK)], pseq=pseq))

    def handler(t: Terminal, f: Frame) -> list[bytes]:
        seen.append(len(outstanding))
        outstanding.append(f.pseq)
        asyncio.get_running_loop().create_task(answer_later(t, f.pseq))
        return []

    async with online(handler) as (master, _, _e):
        s = session_of(master)
        got = await asyncio.gather(s.clock(), s.clock(), s.clock())
        assert list(got) == [CLOCK] * 3
        assert seen == [0, 0, 0]  # never a second request while one was outstanding
        assert master.counters()["requests"] == 3


async def test_retry_keeps_pseq_and_no_reply_raises() -> None:
    pseqs: list[int] = []

    def handler(t: Terminal, f: Frame) -> list[bytes]:
        pseqs.append(f.pseq)
        return clock_reply(t, f) if len(pseqs) == 2 else []

    async with online(handler, request_timeout=0.2) as (master, _, _e):
        s = session_of(master)
        assert await s.clock() == CLOCK
        assert len(pseqs) == 2 and pseqs[0] == pseqs[1]
        assert master.counters()["retries"] == 1
        pseqs.append(-1)  # from now on it never answers
        with pytest.raises(NoReply):
            await s.clock()
        assert len(set(pseqs[3:])) == 1 and len(pseqs) == 3 + 3


async def test_reply_with_another_rseq_is_ignored() -> None:
    def handler(t: Terminal, f: Frame) -> list[bytes]:
        wrong = up(0x0C, [DataUnit(0, 2, dt.datetime(2001, 1, 1))], pseq=(f.pseq + 3) & 15)
        right = up(0x0C, [DataUnit(0, 2, CLOCK)], pseq=f.pseq)
        return [wrong, right, right]  # the second copy comes late: ignored

    async with online(handler) as (master, _, _e):
        assert await session_of(master).clock() == CLOCK
        await asyncio.sleep(0.05)
        assert await session_of(master).clock() == CLOCK
        c = master.counters()
        assert c["wrong_seq"] == 2 and c["late_replies"] == 2 and c["requests"] == 2


async def test_multi_frame_reply_is_reassembled() -> None:
    one = ActiveEnergy(MINUTE, tuple(Decimal(v) for v in ("10.5", "1", "2", "3", "4.5")))

    def handler(t: Terminal, f: Frame) -> list[bytes]:
        points = [(pns[0], fns[0]) for pns, fns in idents(f)]
        assert points == [(1, 129), (2, 129)]
        return [up(0x0C, [DataUnit(1, 129, one)], pseq=f.pseq, fin=False),
                up(0x0C, [DataUnit(2, 129, one)], pseq=(f.pseq + 1) & 15, fir=False)]

    async with online(handler) as (master, _, _e):
        units = await session_of(master).read_class1([(1, 129), (2, 129)])
        got = units_by_fn(units)
        assert set(got) == {(1, 129), (2, 129)}
        assert got[(2, 129)].values == one.values


async def test_deny_raises_denied() -> None:
    def handler(t: Terminal, f: Frame) -> list[bytes]:
        assert f.afn == 0x05 and f.pw == bytes(range(16))
        return [up(0x00, [DataUnit(0, 2)], pseq=f.pseq)]

    async with online(handler, password=bytes(range(16))) as (master, _, _e):
        with pytest.raises(Denied) as e:
            await session_of(master).set_time(CLOCK)
        assert e.value.afn == 0x05 and master.counters()["denied"] == 1


async def test_per_item_error_in_f3_raises_denied_and_f3_without_errors_confirms() -> None:
    errors = [0, 2]

    def handler(t: Terminal, f: Frame) -> list[bytes]:
        items = tuple(ItemResult((pns[0],), (fns[0],), errors.pop(0))
                      for pns, fns in idents(f)[:1])
        return [up(0x00, [DataUnit(0, 3, ItemResults(f.afn, items))], pseq=f.pseq)]

    async with online(handler) as (master, _, _e):
        s = session_of(master)
        await s.set_time(CLOCK)  # ERR 0: confirmed
        with pytest.raises(Denied) as e:
            await s.set_time(CLOCK)
        assert [(i.fns, i.error) for i in e.value.items] == [((31,), 2)]


async def test_heartbeat_and_event_report_while_a_request_is_outstanding() -> None:
    records = EventRecords(1, 0, 0, 1, (EventRecord(14, Erc14(MINUTE, MINUTE)),))
    confirms: list[Frame] = []

    async def reply_after_heartbeat(t: Terminal, f: Frame) -> None:
        t.link(3)
        t.send(up(0x0E, [DataUnit(0, 1, records)], pseq=7, prm=True, con=True))
        await asyncio.sleep(0.2)
        t.send(up(0x0C, [DataUnit(0, 2, CLOCK)], pseq=f.pseq))

    def handler(t: Terminal, f: Frame) -> list[bytes]:
        if f.afn == 0x00:
            confirms.append(f)
        else:
            asyncio.get_running_loop().create_task(reply_after_heartbeat(t, f))
        return []

    async with online(handler) as (master, _, events):
        assert await session_of(master).clock() == CLOCK
        assert [(f.control, f.pseq) for f in confirms] == [(0x0B, 2), (0x00, 7)]
        (report,) = [e for e in events if e.kind == "report"]
        assert report.afn == 0x0E and report.terminal == TID
        (unit,) = report.units
        assert isinstance(unit, DataUnit) and unit.value == records


async def test_request_on_a_replaced_connection_fails_with_link_down() -> None:
    async with online(lambda t, f: []) as (master, _, _e):
        task = asyncio.create_task(session_of(master).clock())
        await asyncio.sleep(0.05)
        t2 = await Terminal.dial(master.port)
        await t2.login()
        with pytest.raises(LinkDown):
            await task
        t2.close()


async def test_helpers_send_the_right_units_and_return_typed_values() -> None:
    version = TerminalVersion("ABCD", "12345678", "V1.0", dt.date(2023, 1, 2), "CAP00000001",
                              "1376", "H1.0", dt.date(2022, 3, 4))
    entry = MeterEntry(serial=1, pn=1, port=2, address="000000000001")
    archive: list[MeterEntry] = []
    frozen = FrozenActiveEnergy(dt.date(2024, 5, 5), MINUTE,
                                tuple(Decimal(v) for v in ("10.5", "1", "2", "3", "4.5")))
    records = EventRecords(0, 0, 0, 1, (EventRecord(14, Erc14(MINUTE, MINUTE)),))
    requests: list[tuple[int, object]] = []

    def handler(t: Terminal, f: Frame) -> list[bytes]:
        (unit,) = decode_units(f)
        assert isinstance(unit, DataUnit)
        requests.append((f.afn, unit.value))
        answers = {
            0x09: lambda: DataUnit(0, 1, version),
            0x0A: lambda: DataUnit(0, 10, MeterArchive(tuple(archive))),
            0x0D: lambda: DataUnit(unit.pn, unit.fn, frozen),
            0x0E: lambda: DataUnit(0, 1, records),
        }
        if f.afn == 0x04:
            archive.extend(unit.value.entries)
            return [up(0x00, [DataUnit(0, 1)], pseq=f.pseq)]
        return [up(f.afn, [answers[f.afn]()], pseq=f.pseq)]

    async with online(handler) as (master, _, _e):
        s = session_of(master)
        assert await s.version() == version
        await s.download_archive([entry])
        assert await s.query_archive([1]) == [entry]
        got = units_by_fn(await s.read_class2(1, 161, dt.date(2024, 5, 5)))
        assert got == {(1, 161): frozen}
        assert units_by_fn(await s.read_events(0, 1)) == {(0, 1): records}
    assert requests[2] == (0x0A, ArchiveQuery((1,)))
    assert requests[3] == (0x0D, dt.date(2024, 5, 5))
    assert requests[4] == (0x0E, EventQuery(0, 1))


# ---- TLS --------------------------------------------------------------------------------

def self_signed(d: Path) -> tuple[Path, Path]:
    (d / "san.ext").write_text("subjectAltName=DNS:localhost,IP:127.0.0.1\n")
    subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2",
                    "-subj", "/CN=localhost", "-addext",
                    "subjectAltName=DNS:localhost,IP:127.0.0.1", "-keyout", "key.pem",
                    "-out", "cert.pem"], cwd=d, check=True, capture_output=True)
    return d / "cert.pem", d / "key.pem"


async def test_tls_login_and_request(tmp_path: Path) -> None:
    cert, key = self_signed(tmp_path)
    server = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    server.load_cert_chain(cert, key)
    client = ssl.create_default_context(cafile=str(cert))
    async with station(ssl=server) as (master, events):
        t = await Terminal.dial(master.port, client)
        assert (await t.login()).afn == 0
        task = asyncio.create_task(serve(t, clock_reply))
        assert await session_of(master).clock() == CLOCK
        t.close()
        await task
    assert [e.kind for e in events][:1] == ["online"]


# ---- AFN10 forwarding as a bus -----------------------------------------------------------

async def test_forward_bus_reads_and_trips_a_dlt645_meter() -> None:
    (meter,) = make_meters(["000000000001"], seed=3)
    forwarded: list[ForwardRequest] = []

    def handler(t: Terminal, f: Frame) -> list[bytes]:
        (unit,) = decode_units(f)
        assert isinstance(unit, DataUnit) and isinstance(unit.value, ForwardRequest)
        forwarded.append(unit.value)
        reply = meter.handle(d645.parse_frame(unit.value.content))
        content = d645.build_frame(reply) if reply is not None else b""
        return [up(0x10, [DataUnit(0, 1, ForwardReply(unit.value.port, content))],
                   pseq=f.pseq)]

    async with online(handler) as (master, _, _e), \
            ForwardBus(master, TID, 2, baud=2400, frame_timeout=2, tb=0.2) as bus:
        m = open_meter(Line(bus), MeterRef("M1", "dlt645-2007", "000000000001"))
        got = await m.read(["energy_active_forward_total", "voltage_a"])
        assert not got.failed and len(got.readings) == 2
        assert (await m.relay_state()).relay_open is False
        creds = Credentials("02000000", expires=dt.datetime.now() + dt.timedelta(hours=1))
        await m.relay(m.relay_plan("trip"), creds)
        state = await m.relay_state()
        assert state.relay_open is True and state.status_word_3 is not None
        assert meter.model.relay_open
        assert {(r.port, r.baud) for r in forwarded} == {(2, 2400)}


async def test_forward_bus_silent_meter_is_no_reply_and_offline_terminal_link_down() -> None:
    def handler(t: Terminal, f: Frame) -> list[bytes]:
        return [up(0x10, [DataUnit(0, 1, ForwardReply(1, b""))], pseq=f.pseq)]

    async with online(handler) as (master, _, _e):
        async with ForwardBus(master, TID, 1, td=0.3, tb=0.1) as bus:
            with pytest.raises(NoReply):
                await d645_session(bus).read("000000000001", "voltage_a")
        assert await session_of(master).forward(1, 2400, b"\x68") == b""
        with pytest.raises(LinkDown):
            await ForwardBus(master, TerminalId("4403", 9), 1, connect_timeout=0.2).open()


def d645_session(bus: ForwardBus) -> Dlt645Session:
    return Dlt645Session(bus, retries=0)


async def test_a_lazy_open_does_not_wait_for_an_offline_terminal_and_a_read_then_finds_it(
        ) -> None:
    """A daemon starting with concentrators offline opens their buses at once (it used
    to wait ~1.8 s for each in turn); a read then waits for the login."""
    from simulators.concentrator import ConcentratorSimulator, meter_address

    async with station(terminals=lambda tid: tid == TerminalId("4403", 1)) as (master, _):
        bus = ForwardBus(master, TerminalId("4403", 1), 2, connect_timeout=3.0,
                         reconnect_min=0.0, tb=0.2)
        t0 = asyncio.get_running_loop().time()
        assert await bus.open(lazy=True) is False
        assert asyncio.get_running_loop().time() - t0 < 0.5
        read = asyncio.create_task(d645_session(bus).read(meter_address(1, 1), "voltage_a"))
        await asyncio.sleep(0.2)
        async with ConcentratorSimulator("127.0.0.1", master.port, a1="4403", a2=1,
                                         meters=1):
            value = await asyncio.wait_for(read, 5)
            assert 150 < float(str(value.value)) < 300
        await bus.close()

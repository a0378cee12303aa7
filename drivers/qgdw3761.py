"""A Q/GDW 1376.1 master station: concentrators dial in over TCP (or TLS) and log in.

::

    async with MasterStation("0.0.0.0", 9001, terminals=ledger.knows) as master:
        tid = TerminalId("4403", 1)
        await master.wait_online(tid, 60)
        session = master.terminal(tid)
        units = await session.read_class1([(1, 129), (1, 25)])

One :class:`TerminalSession` per logged-in terminal; one request in flight per terminal,
matched by RSEQ == PSEQ and AFN, retried with the same PSEQ.  Login, heartbeat and
logout are confirmed at once, also while a request is outstanding.  :class:`ForwardBus`
is a :class:`~drivers.bus.Bus` through AFN10 F1 forwarding, so the DL/T645 session reads
meters behind a concentrator unchanged.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import logging
import ssl as _ssl
from collections.abc import Callable
from dataclasses import dataclass, field
from time import monotonic
from types import TracebackType
from typing import Any, Self, TypeVar, Unpack

from protocols.qgdw3761 import (
    AFN,
    ArchiveQuery,
    ConfirmStyle,
    DataUnit,
    Direction,
    EventQuery,
    ForwardReply,
    ForwardRequest,
    Frame,
    FrameExtractor,
    ItemResult,
    ItemResults,
    MeterArchive,
    MeterEntry,
    PayloadError,
    Q3761Error,
    RawUnit,
    Reassembler,
    SequenceError,
    TerminalVersion,
    TimeTag,
    build_frame,
    confirm,
    decode_units,
    request,
)

from .bus import Bus, BusOptions
from .errors import DriverError, LinkDown, NoReply
from .options import DEFAULT, CallOptions

log = logging.getLogger("amic.qgdw3761")

_READ_SIZE = 4096
_LOGIN, _LOGOUT, _HEARTBEAT = 1, 2, 3


@dataclass(frozen=True, slots=True, order=True)
class TerminalId:
    """A terminal's address: A1 (area code, 4 hex digits) and A2 (0-65535)."""

    a1: str
    a2: int

    def __post_init__(self) -> None:
        if len(self.a1) != 4 or any(c not in "0123456789ABCDEF" for c in self.a1):
            raise ValueError(f"A1 {self.a1!r}: expected 4 upper-case hex digits")
        if not 0 <= self.a2 <= 0xFFFF:
            raise ValueError(f"A2 {self.a2} is not 0-65535")

    def __str__(self) -> str:
        return f"{self.a1}:{self.a2:05d}"

    @classmethod
    def parse(cls, text: str) -> TerminalId:
        """The inverse of ``str()``: ``"4403:00001"``."""
        a1, sep, a2 = text.partition(":")
        if not sep or not a2.isdigit():
            raise ValueError(f"terminal id {text!r}: expected A1:A2 such as 4403:00001")
        return cls(a1.upper(), int(a2))


@dataclass(frozen=True, slots=True)
class TerminalEvent:
    """``kind``: ``online``, ``offline``, ``replaced`` (a new connection took over),
    ``report`` (units the terminal sent on its own, e.g. AFN0E events) or ``events``
    (a frame with ACD set carried a new important-event count ``ec``, EC1: records to
    read with AFN0E F1)."""

    kind: str
    terminal: TerminalId
    reason: str = ""
    afn: int | None = None
    units: tuple[DataUnit | RawUnit, ...] = field(default=())
    ec: int | None = None


class Denied(DriverError):
    """The terminal answered AFN00 F2 (deny all) to a request of ``afn``, or F3 with an
    error on some item; ``items`` are then the (pns, fns, error) it refused."""

    def __init__(self, message: str, *, terminal: TerminalId, afn: int,
                 items: tuple[ItemResult, ...] = ()) -> None:
        super().__init__(message)
        self.terminal = terminal
        self.afn = afn
        self.items = items


class _Pending:
    def __init__(self, afn: int, pseq: int) -> None:
        self.afn = afn
        self.pseq = pseq
        self.future: asyncio.Future[list[DataUnit | RawUnit]] = (
            asyncio.get_running_loop().create_future())
        self.reassembler = Reassembler()
        self.reassembler.expect(pseq)


class TerminalSession:
    """One logged-in terminal; requests go out one at a time."""

    def __init__(self, master: MasterStation, tid: TerminalId,
                 writer: asyncio.StreamWriter, peer: str) -> None:
        self.master = master
        self.terminal = tid
        self.peer = peer
        self.logged_in = dt.datetime.now(dt.UTC)
        self.last_seen = monotonic()
        self._writer = writer
        self._lock = asyncio.Lock()
        self._pseq = 0
        self._pfc = 0
        self._pending: _Pending | None = None
        self._closed: str | None = None
        self.ec1: int | None = None  # the last EC1 the terminal sent with ACD set

    def __repr__(self) -> str:
        return f"<TerminalSession {self.terminal} from {self.peer}>"

    @property
    def closed(self) -> bool:
        return self._closed is not None

    # ---- requests --------------------------------------------------------------------

    async def request(self, afn: int, units: list[DataUnit], *, opts: CallOptions = DEFAULT,
                      timeout: float | None = None) -> list[DataUnit | RawUnit]:
        """Send one request and return the units of the whole (reassembled) reply.

        Per try ``timeout`` (else ``opts.td``, else the master's), retried with the same
        PSEQ ``opts.retries`` times (else the master's).  :class:`Denied`,
        :class:`~drivers.errors.NoReply`, :class:`~drivers.errors.LinkDown`.
        """
        m = self.master
        per_try = timeout if timeout is not None else (
            opts.td if opts.td is not None else m.request_timeout)
        retries = opts.retries if opts.retries is not None else m.retries
        async with self._lock:
            if self._closed is not None:
                raise LinkDown(f"{self.terminal}: {self._closed}", bus=str(self.terminal))
            pseq = self._pseq
            self._pseq = (self._pseq + 1) & 0x0F
            tp = None
            if m.time_tag:
                now = dt.datetime.now()
                tp = TimeTag(self._pfc, now.second, now.minute, now.hour, now.day)
                self._pfc = (self._pfc + 1) & 0xFF
            raw = build_frame(request(self.terminal.a1, self.terminal.a2, afn, units,
                                      pseq=pseq, msa=m.msa, tp=tp,
                                      pw=m.password if afn in _PW_AFNS else None))
            m._count("requests")
            for attempt in range(retries + 1):
                if attempt:
                    m._count("retries")
                    log.info("%s: retry %d of AFN %02X PSEQ %d", self.terminal, attempt,
                             afn, pseq)
                pending = self._pending = _Pending(afn, pseq)
                try:
                    self._write(raw)
                    async with asyncio.timeout(per_try):
                        return await pending.future
                except TimeoutError:
                    continue
                finally:
                    self._pending = None
            m._count("no_reply")
            raise NoReply(f"{self.terminal}: no reply to AFN {afn:02X} within "
                          f"{per_try:g} s ({retries + 1} tries)", seconds=per_try)

    def _write(self, data: bytes) -> None:
        if self._closed is not None:
            raise LinkDown(f"{self.terminal}: {self._closed}", bus=str(self.terminal))
        try:
            self._writer.write(data)
        except (OSError, RuntimeError) as e:
            raise LinkDown(f"{self.terminal}: write failed: {e}", bus=str(self.terminal)) from e

    def _response(self, frame: Frame) -> None:
        """A PRM=0 frame from the terminal: part of the answer to the pending request?"""
        m = self.master
        p = self._pending
        if p is None or p.future.done():
            m._count("late_replies")
            log.info("%s: reply AFN %02X RSEQ %d with no request outstanding: ignored",
                     self.terminal, frame.afn, frame.pseq)
            return
        if frame.afn == AFN.CONFIRM and frame.afn != p.afn:
            if frame.pseq != p.pseq:
                m._count("wrong_seq")
                return
            units = self._decode(frame)
            refused = tuple(i for u in units if isinstance(u, DataUnit)
                            and isinstance(u.value, ItemResults) for i in u.value.items
                            if i.error)
            if refused or any(isinstance(u, DataUnit) and u.fn == 2 for u in units):
                m._count("denied")
                listed = ", ".join(f"p{i.pns} F{i.fns} ERR {i.error}" for i in refused)
                why = f"items refused: {listed}" if refused else "AFN00 F2"
                p.future.set_exception(Denied(
                    f"{self.terminal}: AFN {p.afn:02X} denied ({why})",
                    terminal=self.terminal, afn=p.afn, items=refused))
            else:
                p.future.set_result(units)
            return
        if frame.afn != p.afn:
            m._count("wrong_afn")
            log.info("%s: reply AFN %02X while AFN %02X is outstanding: ignored",
                     self.terminal, frame.afn, p.afn)
            return
        try:
            frames = p.reassembler.feed(frame)
        except SequenceError as e:
            m._count("wrong_seq")
            p.reassembler.expect(p.pseq)
            log.info("%s: %s: ignored", self.terminal, e)
            return
        if frames is None:
            return
        out: list[DataUnit | RawUnit] = []
        for f in frames:
            out += self._decode(f)
        p.future.set_result(out)

    def _decode(self, frame: Frame) -> list[DataUnit | RawUnit]:
        try:
            return decode_units(frame, strict=False)
        except PayloadError as e:
            self.master._count("bad_payloads")
            log.warning("%s: undecodable AFN %02X reply: %s", self.terminal, frame.afn, e)
            return []

    def _close(self, reason: str) -> None:
        if self._closed is not None:
            return
        self._closed = reason
        p = self._pending
        if p is not None and not p.future.done():
            p.future.set_exception(LinkDown(f"{self.terminal}: {reason}",
                                            bus=str(self.terminal)))
        self._writer.close()

    # ---- helpers ----------------------------------------------------------------------

    async def read_class1(self, points: list[tuple[int, int]], *,
                          opts: CallOptions = DEFAULT) -> list[DataUnit | RawUnit]:
        """AFN0C for (pn, Fn) pairs, all in one frame."""
        return await self.request(AFN.CLASS1, [DataUnit(pn, fn) for pn, fn in points],
                                  opts=opts)

    async def read_class2(self, pn: int, fn: int, td: object, *,
                          opts: CallOptions = DEFAULT) -> list[DataUnit | RawUnit]:
        """AFN0D Fn of point ``pn``; ``td`` is its Td_d / Td_m date or a CurveTag."""
        return await self.request(AFN.CLASS2, [DataUnit(pn, fn, td)], opts=opts)

    async def read_events(self, start: int, end: int, *, important: bool = True,
                          opts: CallOptions = DEFAULT) -> list[DataUnit | RawUnit]:
        """AFN0E F1 (important) or F2 (normal) records ``start`` to ``end`` - 1."""
        return await self.request(AFN.CLASS3, [DataUnit(0, 1 if important else 2,
                                                         EventQuery(start, end))], opts=opts)

    async def clock(self, *, opts: CallOptions = DEFAULT) -> dt.datetime | None:
        """The terminal's clock (AFN0C F2); None if it sent EE."""
        return _value(await self.read_class1([(0, 2)], opts=opts), 2, dt.datetime)

    async def set_time(self, when: dt.datetime, *, opts: CallOptions = DEFAULT) -> None:
        """AFN05 F31 (with PW); Denied if the terminal refuses."""
        await self.request(AFN.CONTROL, [DataUnit(0, 31, when)], opts=opts)

    async def download_archive(self, entries: list[MeterEntry], *,
                               opts: CallOptions = DEFAULT) -> None:
        """AFN04 F10: write meter archive entries (with PW)."""
        await self.request(AFN.SET_PARAMETERS, [DataUnit(0, 10, MeterArchive(tuple(entries)))],
                           opts=opts)

    async def query_archive(self, serials: list[int], *,
                            opts: CallOptions = DEFAULT) -> list[MeterEntry]:
        """AFN0A F10: the archive entries with these serial numbers."""
        units = await self.request(AFN.QUERY_PARAMETERS,
                                   [DataUnit(0, 10, ArchiveQuery(tuple(serials)))], opts=opts)
        return [e for u in units if isinstance(u, DataUnit) and isinstance(u.value, MeterArchive)
                for e in u.value.entries]

    async def version(self, *, opts: CallOptions = DEFAULT) -> TerminalVersion | None:
        """AFN09 F1."""
        return _value(await self.request(AFN.CONFIGURATION, [DataUnit(0, 1)], opts=opts), 1,
                      TerminalVersion)

    async def forward(self, port: int, baud: int, frame: bytes, *, frame_timeout: float = 10,
                      byte_timeout: float = 0.1, opts: CallOptions = DEFAULT) -> bytes:
        """AFN10 F1: send ``frame`` out of ``port``; the meter's answer, b"" if none.

        ``frame_timeout``/``byte_timeout`` (s) are the terminal's waits on its port; the
        per-try timeout allows the frame timeout plus the master's request timeout.
        """
        req = ForwardRequest.make(port, frame, baud=baud, frame_timeout_s=frame_timeout,
                                  byte_timeout_ms=int(byte_timeout * 1000))
        per_try = opts.td if opts.td is not None else (
            frame_timeout + self.master.request_timeout)
        units = await self.request(AFN.FORWARD, [DataUnit(0, 1, req)], opts=opts,
                                   timeout=per_try)
        reply = _value(units, 1, ForwardReply)
        return reply.content if reply is not None else b""


_PW_AFNS = frozenset((0x01, 0x04, 0x05, 0x06, 0x0F, 0x10))
_T = TypeVar("_T")


def _value(units: list[DataUnit | RawUnit], fn: int, kind: type[_T]) -> _T | None:
    for u in units:
        if isinstance(u, DataUnit) and u.fn == fn and isinstance(u.value, kind):
            return u.value
    return None


class MasterStation:
    """A TCP (or TLS) listener for terminals; ``async with`` starts and stops it.

    ``terminals(tid)``: is this terminal known (others are refused, never served);
    ``login_reply``: AFN00 F1 or F3 for login/heartbeat/logout; ``idle_timeout``: a
    terminal silent this long (s) is closed and goes offline; ``on_event``: online,
    offline, replaced and report events; ``password``: the PW of AFN 04/05/10 requests;
    ``request_timeout``/``retries``: request defaults; ``time_tag``: send Tp (with PFC).
    """

    def __init__(self, host: str, port: int, *, terminals: Callable[[TerminalId], bool],
                 login_reply: ConfirmStyle = ConfirmStyle.F1, idle_timeout: float = 600.0,
                 ssl: _ssl.SSLContext | None = None,
                 on_event: Callable[[TerminalEvent], None] | None = None,
                 password: bytes = bytes(16), request_timeout: float = 10.0,
                 retries: int = 2, msa: int = 1, time_tag: bool = False) -> None:
        if len(password) != 16:
            raise ValueError("password (PW) must be 16 bytes")
        if not idle_timeout > 0 or not request_timeout > 0 or retries < 0:
            raise ValueError("idle_timeout and request_timeout must be positive, retries >= 0")
        self.host = host
        self._port = port
        self.known = terminals
        self.login_reply = login_reply
        self.idle_timeout = idle_timeout
        self.ssl = ssl
        self.on_event = on_event
        self.password = password
        self.request_timeout = request_timeout
        self.retries = retries
        self.msa = msa
        self.time_tag = time_tag
        self._server: asyncio.Server | None = None
        self._sessions: dict[TerminalId, TerminalSession] = {}
        self._waiters: dict[TerminalId, list[asyncio.Future[None]]] = {}
        self._tasks: set[asyncio.Task[None]] = set()
        self._writers: set[asyncio.StreamWriter] = set()
        self._closing = False
        self._counters: dict[str, int] = dict.fromkeys((
            "connections", "logins", "logouts", "heartbeats", "reports", "refused_unknown",
            "refused_no_login", "bad_frames", "garbage_bytes", "replaced", "timeouts",
            "requests", "retries", "no_reply", "denied", "wrong_seq", "wrong_afn",
            "late_replies", "bad_payloads"), 0)

    # ---- life cycle --------------------------------------------------------------------

    @property
    def port(self) -> int:
        """The bound port (the real one when 0 was asked)."""
        if self._server is not None and self._server.sockets:
            return int(self._server.sockets[0].getsockname()[1])
        return self._port

    async def start(self) -> None:
        self._closing = False
        self._server = await asyncio.start_server(self._accept, self.host, self._port,
                                                  ssl=self.ssl)

    async def close(self) -> None:
        if self._server is not None:
            self._server.close()
        self._closing = True
        for s in list(self._sessions.values()):
            s._close("master station closed")
        for w in list(self._writers):
            w.close()  # the connection loops see EOF and end by themselves
        if self._tasks:
            _, stuck = await asyncio.wait(list(self._tasks), timeout=1.0)
            for t in stuck:
                t.cancel()
            if stuck:
                await asyncio.wait(stuck)
        if self._server is not None:
            await self._server.wait_closed()
            self._server = None

    async def __aenter__(self) -> Self:
        await self.start()
        return self

    async def __aexit__(self, exc_type: type[BaseException] | None,
                        exc: BaseException | None, tb: TracebackType | None) -> None:
        await self.close()

    # ---- queries -----------------------------------------------------------------------

    def terminal(self, tid: TerminalId) -> TerminalSession | None:
        return self._sessions.get(tid)

    def online(self) -> list[TerminalId]:
        return sorted(self._sessions)

    def drop(self, tid: TerminalId, reason: str) -> bool:
        """Close the terminal's connection (it went offline: ``offline`` follows);
        False if it has none."""
        s = self._sessions.get(tid)
        if s is None:
            return False
        log.warning("%s: dropping the connection from %s: %s", tid, s.peer, reason)
        s._close(reason)
        return True

    def counters(self) -> dict[str, int]:
        return dict(self._counters)

    async def wait_online(self, tid: TerminalId, timeout: float) -> TerminalSession:
        """The terminal's session once it is logged in; TimeoutError after ``timeout``."""
        while True:
            s = self._sessions.get(tid)
            if s is not None:
                return s
            fut: asyncio.Future[None] = asyncio.get_running_loop().create_future()
            self._waiters.setdefault(tid, []).append(fut)
            try:
                async with asyncio.timeout(timeout):
                    await fut
            finally:
                waiters = self._waiters.get(tid, [])
                if fut in waiters:
                    waiters.remove(fut)

    # ---- internals ---------------------------------------------------------------------

    def _count(self, name: str, n: int = 1) -> None:
        self._counters[name] = self._counters.get(name, 0) + n

    def _event(self, kind: str, tid: TerminalId, reason: str = "", afn: int | None = None,
               units: tuple[DataUnit | RawUnit, ...] = (), ec: int | None = None) -> None:
        if self.on_event is None:
            return
        try:
            self.on_event(TerminalEvent(kind, tid, reason, afn, units, ec))
        except Exception:  # a broken consumer must not take the terminal down
            log.exception("on_event failed for %s %s", kind, tid)

    async def _accept(self, reader: asyncio.StreamReader,
                      writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        if task is not None:
            self._tasks.add(task)
        self._writers.add(writer)
        try:
            await self._serve(reader, writer)
        except asyncio.CancelledError:
            # asyncio.start_server logs a cancelled handler as an error; closing is normal
            if not self._closing:
                raise
        finally:
            if task is not None:
                self._tasks.discard(task)
            self._writers.discard(writer)
            writer.close()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self._count("connections")
        peer = str(writer.get_extra_info("peername"))
        ex = FrameExtractor()
        session: TerminalSession | None = None
        reason = "connection closed by the terminal"
        last = monotonic()
        bad_seen = garbage_seen = 0
        try:
            while True:
                left = last + self.idle_timeout - monotonic()
                try:
                    async with asyncio.timeout(max(left, 0.0)):
                        data = await reader.read(_READ_SIZE)
                except TimeoutError:
                    self._count("timeouts")
                    reason = f"no frame for {self.idle_timeout:g} s"
                    log.info("%s (%s): %s: closing", session and session.terminal, peer,
                             reason)
                    return
                except (OSError, _ssl.SSLError) as e:
                    reason = f"connection error: {e}"
                    return
                if not data:
                    return
                ex.feed(data)
                for frame in ex:
                    last = monotonic()
                    if session is None:
                        session = self._first(frame, writer, peer)
                        if session is None:
                            return
                        continue
                    if session.closed:
                        return
                    if (frame.a1, frame.a2) != (session.terminal.a1, session.terminal.a2) \
                            or frame.direction is not Direction.UP:
                        self._count("bad_frames")
                        log.info("%s: frame from %s:%d or downlink on its connection: "
                                 "ignored", session.terminal, frame.a1, frame.a2)
                        continue
                    session.last_seen = last
                    if not self._handle(session, frame, writer):
                        reason = "logged out"
                        return
                s = ex.stats
                bad = s.bad_lengths + s.bad_protocol + s.bad_checksums + s.bad_end
                if bad > bad_seen:
                    self._count("bad_frames", bad - bad_seen)
                    log.info("%s: %d bad frame(s): %s", peer, bad - bad_seen,
                             s.rejects[-1].reason if s.rejects else "")
                    bad_seen = bad
                if s.garbage_bytes > garbage_seen:
                    self._count("garbage_bytes", s.garbage_bytes - garbage_seen)
                    garbage_seen = s.garbage_bytes
        finally:
            if session is not None:
                self._gone(session, reason)

    def _first(self, frame: Frame, writer: asyncio.StreamWriter,
               peer: str) -> TerminalSession | None:
        """Bind the connection on a login from a known terminal; None: refuse it."""
        tid = None
        with contextlib.suppress(ValueError):  # A1 with non-hex digits: not a terminal
            tid = TerminalId(frame.a1, frame.a2)
        if tid is None or not (frame.direction is Direction.UP and frame.prm
                               and frame.afn == AFN.LINK and _fn_of(frame) == _LOGIN):
            self._count("refused_no_login")
            log.warning("%s: first frame is not a login (AFN %02X): refused", peer, frame.afn)
            return None
        if not self.known(tid):
            self._count("refused_unknown")
            log.warning("%s: unknown terminal %s: refused", peer, tid)
            return None
        session = TerminalSession(self, tid, writer, peer)
        old = self._sessions.get(tid)
        self._sessions[tid] = session
        self._count("logins")
        writer.write(build_frame(confirm(frame, style=self.login_reply)))
        if old is not None:
            self._count("replaced")
            log.warning("%s: new login from %s replaces the connection from %s",
                        tid, peer, old.peer)
            old._close(f"replaced by a new login from {peer}")
            self._event("replaced", tid, f"new connection from {peer} replaced {old.peer}")
        else:
            log.info("%s: logged in from %s", tid, peer)
            self._event("online", tid, f"login from {peer}")
        for fut in self._waiters.pop(tid, []):
            if not fut.done():
                fut.set_result(None)
        self._note_ec(session, frame)
        return session

    def _note_ec(self, session: TerminalSession, frame: Frame) -> None:
        """ACD with a new EC1: the terminal holds important events not yet read."""
        if not frame.acd or frame.ec is None or frame.ec[0] == session.ec1:
            return
        session.ec1 = frame.ec[0]
        self._count("event_signals")
        self._event("events", session.terminal, f"EC1 {frame.ec[0]}", afn=frame.afn,
                    ec=frame.ec[0])

    def _handle(self, session: TerminalSession, frame: Frame,
                writer: asyncio.StreamWriter) -> bool:
        """Process one frame of a bound connection; False ends it (logout)."""
        self._note_ec(session, frame)
        if not frame.prm:
            session._response(frame)
            return True
        if frame.afn == AFN.LINK:
            fn = _fn_of(frame)
            writer.write(build_frame(confirm(frame, style=self.login_reply)))
            if fn == _HEARTBEAT:
                self._count("heartbeats")
            elif fn == _LOGIN:
                self._count("logins")
            elif fn == _LOGOUT:
                self._count("logouts")
                return False
            return True
        self._count("reports")
        units = session._decode(frame)
        if frame.con:
            writer.write(build_frame(confirm(frame, style=ConfirmStyle.F1)))
        self._event("report", session.terminal, afn=frame.afn, units=tuple(units))
        return True

    def _gone(self, session: TerminalSession, reason: str) -> None:
        replaced = session.closed
        session._close(reason)
        if self._sessions.get(session.terminal) is session:
            del self._sessions[session.terminal]
            log.info("%s: offline: %s", session.terminal, reason)
            self._event("offline", session.terminal, reason)
        elif not replaced:
            log.info("%s: old connection ended: %s", session.terminal, reason)


def _fn_of(frame: Frame) -> int | None:
    """The first Fn of a frame (login/heartbeat/logout carry one)."""
    try:
        units = decode_units(frame, strict=False)
    except Q3761Error:
        return None
    if units and isinstance(units[0], DataUnit):
        return units[0].fn
    if units and isinstance(units[0], RawUnit) and units[0].fns:
        return units[0].fns[0]
    return None


# ---- forwarding as a Bus ----------------------------------------------------------------


class _ForwardTransport(asyncio.Transport):
    """Writes become AFN10 F1 requests; the meter's answers are the received bytes."""

    def __init__(self, session: TerminalSession, port: int, baud: int, frame_timeout: float,
                 byte_timeout: float, protocol: asyncio.StreamReaderProtocol,
                 name: str) -> None:
        super().__init__(extra={"peername": name})
        self._session = session
        self._port = port
        self._baud = baud
        self._frame_timeout = frame_timeout
        self._byte_timeout = byte_timeout
        self._protocol = protocol
        self._tasks: set[asyncio.Task[None]] = set()
        self._closing = False

    def write(self, data: bytes | bytearray | memoryview) -> None:
        if self._closing or self._session.closed:
            raise ConnectionResetError("terminal session closed")
        task = asyncio.ensure_future(self._forward(bytes(data)))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _forward(self, data: bytes) -> None:
        try:
            reply = await self._session.forward(self._port, self._baud, data,
                                                frame_timeout=self._frame_timeout,
                                                byte_timeout=self._byte_timeout,
                                                opts=CallOptions(retries=0))
        except LinkDown as e:
            self._lose(ConnectionResetError(str(e)))
            return
        except DriverError as e:  # no reply or a deny: the bus times out as on a line
            log.info("forward to port %d: %s", self._port, e)
            return
        if reply and not self._closing:
            self._protocol.data_received(reply)

    def get_write_buffer_size(self) -> int:
        return 0

    def is_closing(self) -> bool:
        return self._closing

    def close(self) -> None:
        self._lose(None)

    def abort(self) -> None:
        self._lose(None)

    def can_write_eof(self) -> bool:
        return False

    def is_reading(self) -> bool:
        return not self._closing

    def pause_reading(self) -> None:
        return None

    def resume_reading(self) -> None:
        return None

    def _lose(self, exc: Exception | None) -> None:
        if self._closing:
            return
        self._closing = True
        for t in list(self._tasks):
            t.cancel()
        asyncio.get_running_loop().call_soon(self._protocol.connection_lost, exc)


class ForwardBus(Bus):
    """One port of one terminal as a half-duplex :class:`~drivers.bus.Bus` (AFN10 F1).

    ``ForwardBus(master, tid, port, baud=2400)``: each request is forwarded and the
    meter's answer arrives as the reply; no answer is a timeout as on a line.  The link
    is the terminal's session: connecting waits up to ``connect_timeout`` for it to be
    online, and a replaced or closed session is a dropped link.  ``frame_timeout`` (s) is
    the terminal's wait for the meter; ``td`` defaults to it plus the master's request
    timeout.  Other keyword arguments are those of :class:`~drivers.bus.Bus`.
    """

    def __init__(self, master: MasterStation, terminal: TerminalId, port: int, *,
                 baud: int = 2400, frame_timeout: float = 5.0, byte_timeout: float = 0.1,
                 **options: Unpack[BusOptions]) -> None:
        options.setdefault("td", frame_timeout + master.request_timeout)
        options.setdefault("tb", 1.0)
        options.setdefault("connect_timeout", 30.0)
        super().__init__(name=f"3761://{terminal}/port{port}", **options)
        self.master = master
        self.terminal = terminal
        self.port = port
        self.baud = baud
        self.frame_timeout = frame_timeout
        self.byte_timeout = byte_timeout
        self._lazy_open = False

    async def open(self, *, lazy: bool = False) -> bool:
        """As :meth:`Bus.open`; ``lazy`` does not wait for a terminal that is offline (a
        daemon starting with many concentrators offline would wait for each in turn)."""
        self._lazy_open = lazy
        try:
            return await super().open(lazy=lazy)
        finally:
            self._lazy_open = False

    async def _connect(self) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
        wait = 0.0 if self._lazy_open else self.connect_timeout * 0.9
        session = await self.master.wait_online(self.terminal, wait)
        loop = asyncio.get_running_loop()
        reader = asyncio.StreamReader()
        protocol = asyncio.StreamReaderProtocol(reader)
        transport = _ForwardTransport(session, self.port, self.baud, self.frame_timeout,
                                      self.byte_timeout, protocol, self.name)
        protocol.connection_made(transport)
        return reader, asyncio.StreamWriter(transport, protocol, reader, loop)


def units_by_fn(units: list[DataUnit | RawUnit]) -> dict[tuple[int, int], Any]:
    """``{(pn, Fn): value}`` of the decoded units of a reply."""
    return {(u.pn, u.fn): u.value for u in units if isinstance(u, DataUnit)}


__all__ = ["Denied", "ForwardBus", "MasterStation", "TerminalEvent", "TerminalId",
           "TerminalSession", "units_by_fn"]

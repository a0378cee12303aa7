"""A Q/GDW 1376.1 concentrator (terminal) that dials in to a master station.

:class:`ConcentratorSimulator` connects to the master over TCP, logs in (AFN02 F1),
sends heartbeats (AFN02 F3) and answers the master's requests for its measuring points
1..N, each a DL/T645 :class:`~simulators.dlt645.SimulatedMeter` behind port 2.  Meters
are built on first use, so thousands of concentrators fit in one process.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import logging
import math
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from decimal import Decimal
from typing import Any, ClassVar

from protocols import dlt645
from protocols.qgdw3761 import (
    AFN,
    FN_CONFIRM,
    FN_RESPONSE,
    ActiveEnergy,
    ArchiveQuery,
    CommParams,
    Curve,
    CurveTag,
    DailySupply,
    DataUnit,
    Direction,
    EnergyReadings,
    Erc1,
    Erc3,
    Erc14,
    EventQuery,
    EventRecord,
    EventRecords,
    ForwardReply,
    ForwardRequest,
    Frame,
    FrameExtractor,
    FrozenActiveEnergy,
    FrozenEnergy,
    Function,
    Heartbeat,
    ItemResults,
    MeterArchive,
    MeterEntry,
    PresentValues,
    Q3761Error,
    RawUnit,
    TerminalVersion,
    build_frame,
    control_byte,
    decode_units,
    encode_units,
    seq_byte,
)

from .dlt645 import SimulatedMeter
from .meter import Clock, MeterConfig, MeterModel, SystemClock, Unavailable

_log = logging.getLogger(__name__)

UNKNOWN_A1 = "9999"  # the area code a terminal with the unknown-address fault logs in with
DEFAULT_PORT = 2  # RS-485 port 2: the meters' port on most concentrators
MAX_REPLY_UNITS_BYTES = 4000  # a longer reply goes out in several frames (FIR/FIN)
TARIFFS = 4


@dataclass(frozen=True, slots=True)
class Faults:
    """Misbehaviour of a concentrator; see :func:`parse_faults` for the text form."""

    drop_after: float | None = None  # s after login: close the link (then reconnect)
    drop_requests: int | None = None  # close the link after answering N requests
    silent_after: float | None = None  # s after login: no replies, no heartbeats
    deny: bool = False  # every request gets AFN00 F2
    slow: float = 0.0  # s before each reply
    multi_frame: bool = False  # one data unit per reply frame
    wrong_seq: bool = False  # replies carry RSEQ = PSEQ + 1
    unknown_address: bool = False  # log in and answer as A1 9999


FAULT_KINDS = ("drop-after", "drop-requests", "silent", "deny", "slow", "multi-frame",
               "wrong-seq", "unknown-address")


def parse_faults(text: str) -> Faults:
    """Faults from ``kind[:value],...``; ValueError says what is wrong.

    ``drop-after:S``, ``drop-requests:N``, ``silent[:S]`` (S after login, default 0),
    ``deny``, ``slow:S``, ``multi-frame``, ``wrong-seq``, ``unknown-address``.
    """
    kw: dict[str, Any] = {}
    for part in (p.strip() for p in text.split(",")):
        if not part:
            continue
        kind, _, value = (x.strip() for x in part.partition(":"))
        kind = kind.lower()
        if kind not in FAULT_KINDS:
            raise ValueError(f"fault {part!r}: unknown kind {kind!r} ({', '.join(FAULT_KINDS)})")
        needs = kind in ("drop-after", "drop-requests", "slow")
        flag = kind in ("deny", "multi-frame", "wrong-seq", "unknown-address")
        if needs and not value:
            raise ValueError(f"fault {part!r}: {kind} needs a value ({kind}:N)")
        if flag and value:
            raise ValueError(f"fault {part!r}: {kind} takes no value")
        if flag:
            kw[kind.replace("-", "_")] = True
            continue
        try:
            number = int(value) if kind == "drop-requests" else float(value or 0)
        except ValueError:
            raise ValueError(f"fault {part!r}: {value!r} is not a number") from None
        if number < 0 or (kind == "drop-requests" and number < 1):
            raise ValueError(f"fault {part!r}: {value!r} is out of range")
        kw[{"silent": "silent_after"}.get(kind, kind.replace("-", "_"))] = number
    return Faults(**kw)


@dataclass(slots=True)
class ConcentratorStats:
    """What one concentrator did; ``requests`` counts by AFN."""

    connections: int = 0
    connect_failures: int = 0
    reconnects: int = 0
    logins: int = 0  # login frames sent
    login_confirms: Counter[str] = field(default_factory=Counter)  # "F1" / "F3"
    login_denied: int = 0
    heartbeats: int = 0
    heartbeat_confirms: int = 0
    requests: Counter[int] = field(default_factory=Counter)
    replies: int = 0  # reply frames sent
    denies: int = 0
    repeats: int = 0  # requests answered again from the stored reply
    ignored: int = 0  # requests left unanswered (silent)
    drops: int = 0  # links closed by a drop fault or drop()
    reports: int = 0  # events uploaded on the terminal's own initiative


_Handler = Callable[["ConcentratorSimulator", list[DataUnit], Frame], Any]


class _Deny(Exception):
    """The request cannot be answered: AFN00 F2."""


class _Drop(Exception):
    """Close the link now."""


def meter_address(a2: int, pn: int) -> str:
    """Default address of measuring point ``pn`` of terminal ``a2``: unique in a fleet."""
    return f"{a2:06d}{pn:06d}"


class ConcentratorSimulator:
    """One terminal (A1, A2) with ``meters`` measuring points; ``await run()`` dials in.

    ``meters`` is a count (meters built on first use from ``seed``, addresses
    :func:`meter_address`) or a list of meters (pn 1..N in order).
    """

    def __init__(
        self,
        host: str,
        port: int,
        *,
        a1: str = "1234",
        a2: int = 1,
        meters: int | Sequence[SimulatedMeter] = 4,
        seed: int = 0,
        heartbeat: float = 60.0,
        heartbeat_style: str = "2013",
        faults: Faults | None = None,
        meter_port: int = DEFAULT_PORT,
        meter_baud: int = 2400,
        reconnect_delay: float = 1.0,
        login_timeout: float = 10.0,
        clock: Clock | None = None,
        config: MeterConfig | None = None,
    ) -> None:
        if len(a1) != 4 or any(c not in "0123456789ABCDEFabcdef" for c in a1):
            raise ValueError(f"A1 {a1!r}: expected 4 hex digits")
        if not 0 <= a2 <= 0xFFFF:
            raise ValueError(f"A2 {a2}: expected 0-65535")
        if heartbeat_style not in ("2013", "2009"):
            raise ValueError("heartbeat_style: 2013 or 2009")
        if heartbeat <= 0:
            raise ValueError("heartbeat: a positive number of seconds")
        self.host, self.port = host, port
        self.faults = faults or Faults()
        self.a1 = UNKNOWN_A1 if self.faults.unknown_address else a1.upper()
        self.a2 = a2
        self.heartbeat = heartbeat
        self.heartbeat_style = heartbeat_style
        self.meter_port, self.meter_baud = meter_port, meter_baud
        self.reconnect_delay, self.login_timeout = reconnect_delay, login_timeout
        self.seed = seed
        self.clock: Clock = clock or SystemClock()
        self.config = config
        self._meters: dict[int, SimulatedMeter] = {}
        self._by_address: dict[str, int] = {}
        if isinstance(meters, int):
            self.meter_count = meters
        else:
            self.meter_count = len(meters)
            for pn, m in enumerate(meters, 1):
                self._meters[pn] = m
                self._by_address[m.address] = pn
        self.stats = ConcentratorStats()
        self.logged_in = asyncio.Event()
        self.clock_offset = dt.timedelta(0)
        self.archive: dict[int, MeterEntry] | None = None  # None: the meters as wired
        self.comm = CommParams(0, 0, 30, 3, 0, max(1, round(heartbeat / 60)))
        self.events: list[EventRecord] = []  # important events (AFN0E F1), oldest first
        self._events_read = 0  # records the master has read: ACD while fewer than held
        self._pseq = 0  # PSEQ of the terminal's own frames; keeps counting on reconnects
        self._link: dict[int, int] = {}  # PSEQ of an unconfirmed login/heartbeat -> Fn
        self._last: tuple[tuple[int, int, bytes], list[bytes]] | None = None
        self._writer: asyncio.StreamWriter | None = None
        self._silent = False
        self._stopping = False
        self._task: asyncio.Task[None] | None = None

    def __repr__(self) -> str:
        return f"ConcentratorSimulator({self.a1}/{self.a2}, {self.meter_count} meters)"

    # ---- meters and state ------------------------------------------------------------------

    def meter(self, pn: int) -> SimulatedMeter | None:
        """The meter of measuring point ``pn`` as wired (None if there is none)."""
        m = self._meters.get(pn)
        if m is None and 1 <= pn <= self.meter_count:
            address = meter_address(self.a2, pn)
            model = MeterModel(address, self.config, seed=f"{self.seed}/{address}",
                               clock=self.clock)
            m = self._meters[pn] = SimulatedMeter(model, baud=self.meter_baud)
            self._by_address[address] = pn
        return m

    def meter_by_address(self, address: str) -> SimulatedMeter | None:
        pn = self._by_address.get(address)
        if pn is None and address[:6] == f"{self.a2:06d}" and address[6:].isdigit():
            pn = int(address[6:])
        return self.meter(pn) if pn is not None else None

    def _point(self, pn: int) -> SimulatedMeter | None:
        """The meter the archive (or the wiring) puts at measuring point ``pn``."""
        if self.archive is None:
            return self.meter(pn)
        for e in self.archive.values():
            if e.pn == pn:
                return self.meter_by_address(e.address)
        return None

    def now(self) -> dt.datetime:
        """The terminal clock (whole seconds)."""
        return (self.clock.now() + self.clock_offset).replace(microsecond=0)

    def power_cycle(self, off: dt.datetime, on: dt.datetime, *, report: bool = False) -> None:
        """Record a power-down (ERC14): the next frames carry ACD=1 and EC until it is
        read; ``report``: also upload it at once (AFN0E F1, as terminals do on power-up)."""
        self._add_event(EventRecord(14, Erc14(off.replace(second=0, microsecond=0),
                                              on.replace(second=0, microsecond=0))))
        if report:
            self.report_events()

    def initialise(self, old_version: str, new_version: str, *, report: bool = False) -> None:
        """Record an initialisation / version change (ERC1), reported like power_cycle."""
        self._add_event(EventRecord(1, Erc1(self.now().replace(second=0), 0,
                                            old_version, new_version)))
        if report:
            self.report_events()

    def report_events(self) -> bool:
        """Upload the important events the master has not read (an active AFN0E F1,
        CON=1); they then count as read.  False when offline or nothing is pending."""
        writer = self._writer
        if writer is None or not self.logged_in.is_set() or not self.events_pending:
            return False
        held = len(self.events)
        ec1, ec2 = self._ec()
        first = (ec1 - held) % 256
        records = tuple(self.events[self._events_read:])
        start = (first + self._events_read) % 256
        self._events_read = held
        pseq = self._pseq
        self._pseq = (self._pseq + 1) % 16
        writer.write(build_frame(Frame(
            control=control_byte(Direction.UP, prm=True, function=Function.USER_DATA),
            a1=self.a1, a2=self.a2, a3=0, afn=AFN.CLASS3, seq=seq_byte(pseq, con=True),
            units=encode_units(AFN.CLASS3, Direction.UP, (DataUnit(0, 1, EventRecords(
                ec1, ec2, start, (start + len(records)) % 256, records)),)))))
        self.stats.reports += 1
        return True

    def _add_event(self, record: EventRecord) -> None:
        self.events.append(record)
        if len(self.events) > 255:
            del self.events[0]
            self._events_read = max(0, self._events_read - 1)

    @property
    def events_pending(self) -> bool:
        return self._events_read < len(self.events)

    def _ec(self) -> tuple[int, int]:
        return (len(self.events) % 256, 0)

    # ---- life cycle --------------------------------------------------------------------------

    async def __aenter__(self) -> ConcentratorSimulator:
        self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()

    def start(self) -> None:
        self._stopping = False
        self._task = asyncio.create_task(self.run(), name=f"concentrator {self.a1}/{self.a2}")

    async def stop(self) -> None:
        self._stopping = True
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None

    def move(self, host: str, port: int) -> None:
        """Dial in to another master station from now on (a load balancer sending the
        next connection elsewhere); the current link drops."""
        self.host, self.port = host, port
        self.drop()

    def drop(self) -> None:
        """Close the link now, as a lost 4G connection does; the terminal dials in again."""
        if self._writer is not None:
            self.stats.drops += 1
            self._writer.close()

    async def run(self) -> None:
        """Dial in, serve the link, and dial in again whenever it drops (until cancelled)."""
        while not self._stopping:
            try:
                reader, writer = await asyncio.open_connection(self.host, self.port)
            except OSError as e:
                self.stats.connect_failures += 1
                _log.info("%r: cannot connect to %s:%s: %s", self, self.host, self.port, e)
                await asyncio.sleep(self.reconnect_delay)
                continue
            self.stats.connections += 1
            if self.stats.connections > 1:
                self.stats.reconnects += 1
            try:
                await self._session(reader, writer)
            except (OSError, _Drop):
                pass
            finally:
                self.logged_in.clear()
                self._writer = None
                self._link.clear()
                writer.close()
                with contextlib.suppress(Exception):
                    await writer.wait_closed()
            if not self._stopping:
                await asyncio.sleep(self.reconnect_delay)

    async def _session(self, reader: asyncio.StreamReader,
                       writer: asyncio.StreamWriter) -> None:
        self._writer = writer
        self._silent = False
        keeper = asyncio.create_task(self._keep_link(writer))
        serve = asyncio.create_task(self._serve(reader, writer))
        try:
            done, _ = await asyncio.wait({keeper, serve}, return_when=asyncio.FIRST_COMPLETED)
            for t in done:
                t.result()
        finally:
            for t in (keeper, serve):
                t.cancel()
            await asyncio.gather(keeper, serve, return_exceptions=True)

    # ---- link: login, heartbeats, drop and silence ------------------------------------------

    def _link_frame(self, fn: int) -> bytes:
        pseq = self._pseq
        self._pseq = (self._pseq + 1) % 16
        self._link[pseq] = fn
        value = None
        if fn == 3 and self.heartbeat_style == "2013":
            value = Heartbeat(self.now())
        acd = self.events_pending
        return build_frame(Frame(
            control=control_byte(Direction.UP, prm=True, function=Function.LINK_TEST, acd=acd),
            a1=self.a1, a2=self.a2, a3=0, afn=AFN.LINK, seq=seq_byte(pseq, con=True),
            units=encode_units(AFN.LINK, Direction.UP, (DataUnit(0, fn, value),)),
            ec=self._ec() if acd else None))

    async def _keep_link(self, writer: asyncio.StreamWriter) -> None:
        loop = asyncio.get_running_loop()
        while not self.logged_in.is_set():
            writer.write(self._link_frame(1))
            self.stats.logins += 1
            await writer.drain()
            # asyncio.timeout, not wait_for: wait_for of 3.11 can swallow a cancel that
            # comes with the confirm, and the link would outlive stop().
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(self.login_timeout):
                    await self.logged_in.wait()
        start = loop.time()
        f = self.faults
        next_beat = start + self.heartbeat
        drop_at = start + f.drop_after if f.drop_after is not None else None
        silent_at = start + f.silent_after if f.silent_after is not None else None
        while True:
            now = loop.time()
            if silent_at is not None and now >= silent_at:
                self._silent = True
            if drop_at is not None and now >= drop_at:
                self.stats.drops += 1
                raise _Drop
            if now >= next_beat:
                if not self._silent:
                    writer.write(self._link_frame(3))
                    self.stats.heartbeats += 1
                    await writer.drain()
                next_beat += self.heartbeat
                continue
            wake = min([next_beat, *(t for t in (drop_at, silent_at)
                                     if t is not None and t > now)])
            await asyncio.sleep(max(0.0, wake - now))

    # ---- requests -----------------------------------------------------------------------------

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        extractor = FrameExtractor()
        answered = 0
        while True:
            data = await reader.read(4096)
            if not data:
                return
            extractor.feed(data)
            for frame in extractor:
                if frame.direction is not Direction.DOWN:
                    continue
                if not frame.prm:
                    self._link_answer(frame)
                    continue
                if self._silent:
                    self.stats.ignored += 1
                    continue
                await self._answer(frame, writer)
                answered += 1
                if self.faults.drop_requests is not None \
                        and answered >= self.faults.drop_requests:
                    self.stats.drops += 1
                    raise _Drop

    def _link_answer(self, frame: Frame) -> None:
        """The master's AFN00 to a login or heartbeat."""
        fn = self._link.pop(frame.pseq, None)
        if frame.afn != AFN.CONFIRM or fn is None:
            return
        try:
            units = decode_units(frame)
        except Q3761Error:
            return
        kinds = {u.fn for u in units if isinstance(u, DataUnit)}
        if 3 in kinds:
            results = [u.value for u in units
                       if isinstance(u, DataUnit) and isinstance(u.value, ItemResults)]
            ok = all(i.error == 0 for r in results for i in r.items)
            style = "F3"
        else:
            ok, style = 1 in kinds, "F1"
        if fn == 1:
            if ok:
                self.stats.login_confirms[style] += 1
                self.logged_in.set()
            else:
                self.stats.login_denied += 1
        elif fn == 3 and ok:
            self.stats.heartbeat_confirms += 1

    async def _answer(self, frame: Frame, writer: asyncio.StreamWriter) -> None:
        self.stats.requests[frame.afn] += 1
        key = (frame.pseq, frame.afn, frame.units)
        if self._last is not None and self._last[0] == key:
            # A retry: the same reply again, the request is not executed twice.
            self.stats.repeats += 1
            replies = self._last[1]
        else:
            replies = self._execute(frame)
            self._last = (key, replies)
        if self.faults.slow:
            await asyncio.sleep(self.faults.slow)
        for raw in replies:
            writer.write(raw)
        self.stats.replies += len(replies)
        await writer.drain()

    def _execute(self, frame: Frame) -> list[bytes]:
        if self.faults.deny:
            return [self._confirm(frame, deny=True)]
        handler = self._handlers.get(frame.afn)
        try:
            if handler is None:
                raise _Deny
            units = decode_units(frame)
            if any(isinstance(u, RawUnit) for u in units):
                raise _Deny
            answer = handler(self, [u for u in units if isinstance(u, DataUnit)], frame)
        except (_Deny, Q3761Error):
            return [self._confirm(frame, deny=True)]
        except Exception:
            _log.exception("%r: internal error on AFN %02X", self, frame.afn)
            return [self._confirm(frame, deny=True)]
        if answer is None:
            return [self._confirm(frame)]
        return self._replies(frame, answer)

    def _control(self, function: int) -> tuple[int, tuple[int, int] | None]:
        acd = self.events_pending
        return (control_byte(Direction.UP, prm=False, function=function, acd=acd),
                self._ec() if acd else None)

    def _confirm(self, frame: Frame, *, deny: bool = False) -> bytes:
        if deny:
            self.stats.denies += 1
        control, ec = self._control(FN_CONFIRM)
        rseq = (frame.pseq + 1) % 16 if self.faults.wrong_seq else frame.pseq
        return build_frame(Frame(
            control=control, a1=self.a1, a2=self.a2, a3=frame.a3, afn=AFN.CONFIRM,
            seq=seq_byte(rseq, tpv=frame.tp is not None),
            units=encode_units(AFN.CONFIRM, Direction.UP, (DataUnit(0, 2 if deny else 1),)),
            ec=ec, tp=frame.tp))

    def _replies(self, frame: Frame, units: list[DataUnit]) -> list[bytes]:
        """The reply frames: one, or several (FIR/FIN, RSEQ counting) when long."""
        parts: list[bytes] = []
        current = b""
        for u in units:
            raw = encode_units(frame.afn, Direction.UP, (u,))
            if current and (self.faults.multi_frame
                            or len(current) + len(raw) > MAX_REPLY_UNITS_BYTES):
                parts.append(current)
                current = b""
            current += raw
        parts.append(current)
        control, ec = self._control(FN_RESPONSE)
        out = []
        for i, data in enumerate(parts):
            rseq = (frame.pseq + i + (1 if self.faults.wrong_seq else 0)) % 16
            out.append(build_frame(Frame(
                control=control, a1=self.a1, a2=self.a2, a3=frame.a3, afn=frame.afn,
                seq=seq_byte(rseq, fir=i == 0, fin=i == len(parts) - 1,
                             tpv=frame.tp is not None),
                units=data, ec=ec, tp=frame.tp)))
        return out

    # ---- AFN handlers: a list of reply units, or None for AFN00 F1 -------------------------

    def _class1(self, units: list[DataUnit], frame: Frame) -> list[DataUnit]:
        out = []
        for u in units:
            if u.fn == 2 and u.pn == 0:
                out.append(DataUnit(0, 2, self.now()))
                continue
            if u.pn == 0 or u.fn not in (25, 33, 34, 129):
                raise _Deny
            out.append(DataUnit(u.pn, u.fn, self._present(u.fn, self._point(u.pn))))
        return out

    def _present(self, fn: int, meter: SimulatedMeter | None) -> Any:
        t = self.now().replace(second=0)
        if fn == 25:
            names = [n for n in PresentValues.__dataclass_fields__ if n != "read_time"]
            return PresentValues(t, *(_read(meter, n) for n in names))
        if fn == 129:
            return ActiveEnergy(t, _tariffs(meter, "energy_active_forward"))
        reverse = fn == 34
        q = ("q2", "q3") if reverse else ("q1", "q4")
        none = (None,) * TARIFFS
        return EnergyReadings(
            t, _tariffs(meter, f"energy_active_{'reverse' if reverse else 'forward'}"),
            _tariffs(meter, f"energy_reactive_combined{2 if reverse else 1}"),
            (_read(meter, f"energy_reactive_{q[0]}_total"), *none),
            (_read(meter, f"energy_reactive_{q[1]}_total"), *none), reverse)

    def _class2(self, units: list[DataUnit], frame: Frame) -> list[DataUnit]:
        out = []
        for u in units:
            if u.pn == 0 and u.fn == 49:
                out.append(DataUnit(0, 49, self._supply(u.value)))
                continue
            if u.pn == 0 or u.fn not in (1, 17, 161, 97, 98, 99, 100):
                raise _Deny
            meter = self._point(u.pn)
            if u.fn in (1, 161):
                out.append(DataUnit(u.pn, u.fn, _daily(meter, u.value, u.fn)))
            elif u.fn == 17:
                out.append(DataUnit(u.pn, 17, _monthly(meter, u.value)))
            else:
                out.append(DataUnit(u.pn, u.fn, _curve(meter, u.fn, u.value)))
        return out

    def _supply(self, day: dt.date | None) -> DailySupply:
        today = self.now().date()
        if day is None or day > today:
            return DailySupply(day, None, None)
        if day == today:
            now = self.now()
            return DailySupply(day, now.hour * 60 + now.minute, 0)
        return DailySupply(day, 1440, 0)

    def _class3(self, units: list[DataUnit], frame: Frame) -> list[DataUnit]:
        out = []
        for u in units:
            if u.pn != 0 or u.fn not in (1, 2) or not isinstance(u.value, EventQuery):
                raise _Deny
            held = self.events if u.fn == 1 else []
            ec = len(held) % 256
            first = (ec - len(held)) % 256  # pointer of the oldest record held
            count = (u.value.end - u.value.start) % 256
            # pointers the ring no longer (or not yet) holds are left out: the reply
            # starts at the first one it holds
            held_at = [p for p in ((u.value.start + i) % 256 for i in range(count))
                       if (p - first) % 256 < len(held)]
            start = held_at[0] if held_at else u.value.start
            records = [held[(p - first) % 256] for p in held_at]
            if u.fn == 1 and records:
                self._events_read = max(self._events_read, (start - first) % 256 + len(records))
            ec1, ec2 = self._ec()
            out.append(DataUnit(0, u.fn, EventRecords(ec1, ec2, start,
                                                      (start + len(records)) % 256,
                                                      tuple(records))))
        return out

    def _set(self, units: list[DataUnit], frame: Frame) -> None:
        for u in units:
            if u.fn == 10 and isinstance(u.value, MeterArchive):
                archive = dict(self.archive if self.archive is not None else self._wired())
                for e in u.value.entries:
                    if e.pn == 0:
                        archive.pop(e.serial, None)
                    else:
                        archive[e.serial] = e
                self.archive = archive
            elif u.fn == 1 and isinstance(u.value, CommParams):
                self.comm = u.value
            else:
                raise _Deny
        self._add_event(EventRecord(3, Erc3(self.now().replace(second=0), frame.msa,
                                            tuple(((u.pn,), (u.fn,)) for u in units))))

    def _wired(self) -> dict[int, MeterEntry]:
        out = {}
        for pn in range(1, self.meter_count + 1):
            m = self._meters.get(pn)
            address = m.address if m is not None else meter_address(self.a2, pn)
            out[pn] = MeterEntry(pn, pn, self.meter_port, address, baud=self.meter_baud,
                                 tariffs=TARIFFS)
        return out

    def _query(self, units: list[DataUnit], frame: Frame) -> list[DataUnit]:
        out = []
        for u in units:
            if u.fn == 1:
                out.append(DataUnit(0, 1, self.comm))
            elif u.fn == 10 and isinstance(u.value, ArchiveQuery):
                archive = self.archive if self.archive is not None else self._wired()
                out.append(DataUnit(0, 10, MeterArchive(tuple(
                    archive[s] for s in u.value.serials if s in archive))))
            else:
                raise _Deny
        return out

    def _control_cmd(self, units: list[DataUnit], frame: Frame) -> None:
        for u in units:
            if u.fn != 31 or not isinstance(u.value, dt.datetime):
                raise _Deny
            self.clock_offset = u.value - self.clock.now().replace(microsecond=0)

    def _version(self, units: list[DataUnit], frame: Frame) -> list[DataUnit]:
        if [u.fn for u in units] != [1]:
            raise _Deny
        day = dt.date(2024, 1, 1)
        return [DataUnit(0, 1, TerminalVersion("AMIC", f"{self.a2:08d}", "1.00", day,
                                               "SIM-CONC-01", "1376", "1.00", day))]

    def _forward(self, units: list[DataUnit], frame: Frame) -> list[DataUnit]:
        out = []
        for u in units:
            if u.fn != 1 or not isinstance(u.value, ForwardRequest):
                raise _Deny
            out.append(DataUnit(0, 1, ForwardReply(u.value.port, self._relay(u.value))))
        return out

    def _relay(self, req: ForwardRequest) -> bytes:
        """The meter's raw reply to the forwarded frame; b"" when none answers."""
        if req.port != self.meter_port:
            return b""
        try:
            request = dlt645.parse_frame(req.content)
        except dlt645.DLT645Error:
            return b""
        meter = self.meter_by_address(request.address)
        if meter is None or meter.baud != req.baud:
            return b""
        reply = meter.handle(request)
        return b"" if reply is None else dlt645.build_frame(reply)

    _handlers: ClassVar[dict[int, _Handler]] = {
        AFN.CLASS1: _class1, AFN.CLASS2: _class2, AFN.CLASS3: _class3,
        AFN.SET_PARAMETERS: _set, AFN.QUERY_PARAMETERS: _query, AFN.CONTROL: _control_cmd,
        AFN.CONFIGURATION: _version, AFN.FORWARD: _forward,
    }


def _read(meter: SimulatedMeter | None, name: str, **kw: int) -> Decimal | None:
    if meter is None:
        return None
    try:
        v = meter.model.read(name, **kw)
    except Unavailable:
        return None
    return v if isinstance(v, Decimal) else None


def _tariffs(meter: SimulatedMeter | None, base: str, **kw: int
             ) -> tuple[Decimal | None, ...]:
    return tuple(_read(meter, f"{base}_{'total' if i == 0 else f't{i}'}", **kw)
                 for i in range(TARIFFS + 1))


def _freeze_of(meter: SimulatedMeter, day: dt.date) -> int | None:
    """Which daily freeze holds day ``day``: the one taken at 00:00 of the next day."""
    want = day + dt.timedelta(days=1)
    for n in range(1, meter.model.daily_freezes + 1):
        when = meter.model.read("freeze_daily_time", freeze=n)
        if isinstance(when, dt.datetime) and when.date() == want:
            return n
    return None


def _daily(meter: SimulatedMeter | None, day: dt.date | None, fn: int) -> Any:
    n = _freeze_of(meter, day) if meter is not None and day is not None else None
    none = (None,) * (TARIFFS + 1)
    if n is None or meter is None:
        active: tuple[Decimal | None, ...] = none
        read_time = None
    else:
        active = _tariffs(meter, "freeze_daily_energy_active_forward", freeze=n)
        when = meter.model.read("freeze_daily_time", freeze=n)
        read_time = when if isinstance(when, dt.datetime) else None
    if fn == 161:
        return FrozenActiveEnergy(day, read_time, active)
    return FrozenEnergy(day, read_time, active, none, none, none)


_KWH = Decimal("0.0001")  # A.13


def _curve(meter: SimulatedMeter | None, fn: int, tag: CurveTag) -> Curve:
    """F97-F100: energy per interval from the meter's load curve; F98 (reverse active) and
    F100 (reverse reactive) are 0, as the model's meters never export; EE for points not
    over yet, or without a meter."""
    minutes = tag.minutes
    if meter is None or tag.start is None or minutes is None:
        return Curve(tag, (None,) * tag.points)
    step = dt.timedelta(minutes=minutes)
    tan_phi = Decimal(math.tan(math.acos(meter.model.config.power_factor)))
    values: list[Decimal | None] = []
    for i in range(tag.points):
        start = tag.start + i * step
        kwh = meter.model.curve_energy(start, start + step)
        if kwh is not None:
            kwh = {97: kwh, 99: kwh * tan_phi}.get(fn, Decimal(0)).quantize(_KWH)
        values.append(kwh)
    return Curve(tag, tuple(values))


def _monthly(meter: SimulatedMeter | None, month: dt.date | None) -> FrozenEnergy:
    """Month M's frozen values: the settlement at the start of month M+1."""
    none = (None,) * (TARIFFS + 1)
    k = 0
    if meter is not None and month is not None:
        now = meter.model.now()
        day = meter.model.config.settlement_day
        latest = now.year * 12 + now.month - 1 - (0 if now.day >= day else 1)
        k = latest - (month.year * 12 + month.month) + 1
    if meter is None or month is None or not 1 <= k <= 12:
        return FrozenEnergy(month, None, none, none, none, none, monthly=True)

    def total(name: str) -> tuple[Decimal | None, ...]:
        return (_read(meter, name, settlement=k), *(None,) * TARIFFS)

    return FrozenEnergy(month, None, _tariffs(meter, "energy_active_forward", settlement=k),
                        _tariffs(meter, "energy_reactive_combined1", settlement=k),
                        total("energy_reactive_q1_total"), total("energy_reactive_q4_total"),
                        monthly=True)


def make_concentrators(host: str, port: int, *, count: int = 1, a2: int = 1,
                       **kw: Any) -> list[ConcentratorSimulator]:
    """``count`` terminals with A2 = a2, a2+1, ...; they share one clock and meter config."""
    if count < 1 or a2 + count - 1 > 0xFFFF:
        raise ValueError(f"--count {count} from A2 {a2} goes beyond 65535")
    kw.setdefault("clock", SystemClock())
    return [ConcentratorSimulator(host, port, a2=a2 + i, **kw) for i in range(count)]

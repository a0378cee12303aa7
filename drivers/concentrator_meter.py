"""Meters behind a Q/GDW 1376.1 concentrator, in the device model (:mod:`drivers.device`).

::

    line = concentrator_line(master, TerminalId("4403", 1))
    meter = open_meter(line, MeterRef("m1", "dlt645-2007", "000000000001", route=Route(1)))
    got = await meter.read(["energy_active_forward_total", "voltage_a", "status_word_3"])

What class-1 data carries (AFN0C F129, F25, F33, F34) is read from the concentrator in
one request per meter; everything else, relay commands and the meter clock go to the
meter itself through AFN10 F1 forwarding, by the meter's own kind (DL/T645) on a
forwarding line kept per (port, baud).  Daily freezes come from AFN0D F161 by date.

The concentrator itself (:class:`TerminalLink`): its clock (AFN0C F2 / AFN05 F31), its
meter archive (AFN04 F10 written from the ledger and read back with AFN0A F10:
:func:`sync_archive`) and its event records (AFN0E, :func:`terminal_records`), in plain
values so the collector needs no 376.1 types.
"""

from __future__ import annotations

import datetime as dt
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from decimal import Decimal
from time import monotonic
from typing import Any, Final

from protocols.dlt645 import Version
from protocols.qgdw3761 import (
    ActiveEnergy,
    DataUnit,
    EnergyReadings,
    Erc1,
    Erc3,
    Erc14,
    EventRecords,
    FrozenActiveEnergy,
    FrozenEnergy,
    MeterEntry,
    MeterProtocol,
    PresentValues,
    RawUnit,
)
from protocols.quantities import QUANTITIES
from protocols.readings import Quality, Reading

from .device import (
    Capabilities,
    ClockRead,
    Credentials,
    CurveRead,
    EventsRead,
    Freeze,
    Line,
    Meter,
    MeterRead,
    MeterRef,
    RelayPlan,
    RelayState,
    Route,
    TopupOrder,
    TopupResult,
)
from .dlt645_meter import PING_QUANTITY, Dlt645Kind, Dlt645Meter
from .errors import DriverError, LinkDown, ReplyError
from .options import DEFAULT, CallOptions
from .qgdw3761 import (
    Denied,
    ForwardBus,
    MasterStation,
    TerminalId,
    TerminalSession,
    units_by_fn,
)

DAILY_FREEZES: Final = 31  # days of AFN0D F161 a concentrator keeps (typical: 31)
CLASS1_FNS: Final[tuple[int, ...]] = (129, 25, 33, 34)


def _class1_map() -> dict[str, int]:
    """Quantity name -> the class-1 Fn giving it (F129 before F33 for forward energy)."""
    none = (None,) * 5
    samples: dict[int, Any] = {
        129: ActiveEnergy(None, none),
        25: PresentValues(None),
        33: EnergyReadings(None, none, none, none, none),
        34: EnergyReadings(None, none, none, none, none, reverse=True),
    }
    out: dict[str, int] = {}
    for fn in CLASS1_FNS:
        for name in samples[fn].readings():
            if name in QUANTITIES:
                out.setdefault(name, fn)
    return out


CLASS1: Final[dict[str, int]] = _class1_map()


class Absent(ReplyError):
    """The concentrator has no value for a quantity (EE, or the Fn missing from its
    reply); never a number."""


@dataclass(frozen=True, slots=True)
class TerminalLink:
    """The concentrator a :class:`~drivers.device.Line` reaches: the master station that
    holds its session and its address; ``group``: measuring points per class-1 request
    (see :class:`_Class1Batch`)."""

    master: MasterStation
    terminal: TerminalId
    group: int = 1

    def session(self) -> TerminalSession:
        """The terminal's session now; :class:`~drivers.errors.LinkDown` if offline."""
        s = self.master.terminal(self.terminal)
        if s is None or s.closed:
            raise LinkDown(f"{self.terminal}: concentrator offline", bus=str(self.terminal))
        return s

    @property
    def online(self) -> bool:
        s = self.master.terminal(self.terminal)
        return s is not None and not s.closed

    @property
    def since(self) -> dt.datetime | None:
        """When the current session logged in (aware UTC); None while offline."""
        s = self.master.terminal(self.terminal)
        return s.logged_in if s is not None and not s.closed else None

    async def read_clock(self, clock: Callable[[], float] = time.time,
                         opts: CallOptions = DEFAULT) -> ClockRead:
        """The concentrator's clock (AFN0C F2) and ``clock`` around the request;
        :class:`Absent` if it sent EE."""
        session = self.session()
        t0 = clock()
        shown = await session.clock(opts=opts)
        t1 = clock()
        if shown is None:
            raise Absent(f"{self.terminal}: clock: EE (no value)", address=str(self.terminal))
        return ClockRead(shown, t0, t1)

    async def set_clock(self, when: dt.datetime, opts: CallOptions = DEFAULT) -> None:
        """AFN05 F31: set the concentrator's clock to ``when`` (naive, its local time)."""
        await self.session().set_time(when.replace(microsecond=0), opts=opts)

    async def read_records(self, start: int, end: int,
                           opts: CallOptions = DEFAULT) -> RecordBatch:
        """Important event records with pointers ``start`` to ``end`` - 1 (AFN0E F1)."""
        units = await self.session().read_events(start, end, opts=opts)
        batches = terminal_records(units)
        if not batches:
            return RecordBatch(end, end, ())
        return batches[0]


def concentrator_line(master: MasterStation, terminal: TerminalId, *,
                      preamble: int = 4, group: int = 1) -> Line:
    """A line for the meters behind ``terminal`` (its bus forwards to port 2 at 2400 bd;
    each meter's :class:`~drivers.device.Route` chooses its own forwarding line).

    ``group`` > 1: a class-1 read of one meter also fetches the same Fn of up to
    ``group`` - 1 other meters of the line, in the same frame, for their reads that
    follow.  1 (the default) asks for one meter per frame: some terminals refuse or cut
    short requests for several points, and a meter's values are then never older than
    its own read."""
    if group < 1:
        raise ValueError(f"group {group}: expected at least 1 measuring point per request")
    return Line(ForwardBus(master, terminal, 2, connect_timeout=2.0, reconnect_min=0.0),
                preamble=preamble, terminal=TerminalLink(master, terminal, group))


class _Class1Batch:
    """Class-1 values fetched for several measuring points of one concentrator at once,
    kept until each meter's own read takes them (at most ``max_age`` s).

    The points are those of the meters opened on the line so far (each read opens its
    meter), so a schedule's first cycle asks one by one and the next ones by groups: the
    meter being read and the next points after it, in measuring-point order.
    """

    max_age: Final = 30.0

    def __init__(self, link: TerminalLink) -> None:
        self.link = link
        self.points: set[int] = set()
        self._kept: dict[tuple[int, int], tuple[Any, float, dt.datetime, object]] = {}
        self.requests = 0
        self.prefetched = 0  # (pn, Fn) values taken from an earlier group request
        self._single: object = None  # the session whose terminal denied a group request

    def counters(self) -> dict[str, int]:
        return {"class1_requests": self.requests, "class1_prefetched": self.prefetched}

    def _others(self, pn: int, fns: list[int], now: float, session: object) -> list[int]:
        if self.link.group <= 1 or self._single is session:
            return []
        out: list[int] = []
        for p in sorted(p for p in self.points if p > pn):
            if len(out) >= self.link.group - 1:
                break
            if not all(self._fresh((p, fn), now, session) for fn in fns):
                out.append(p)
        return out

    def _fresh(self, key: tuple[int, int], now: float, session: object) -> bool:
        kept = self._kept.get(key)
        return kept is not None and kept[3] is session and now - kept[1] <= self.max_age

    async def read(self, session: TerminalSession, pn: int, fns: list[int],
                   opts: CallOptions) -> tuple[dict[int, Any], dt.datetime, int]:
        """``{Fn: value}`` of point ``pn``, the time they were fetched, and how many
        requests it took (0: all kept from a group request)."""
        now = monotonic()
        if all(self._fresh((pn, fn), now, session) for fn in fns):
            got = {fn: self._kept.pop((pn, fn)) for fn in fns}
            self.prefetched += len(fns)
            return {fn: v[0] for fn, v in got.items()}, min(v[2] for v in got.values()), 0
        others = self._others(pn, fns, now, session)
        self.requests += 1
        sent = 1
        try:
            units = await session.read_class1(
                [(p, fn) for p in (pn, *others) for fn in fns], opts=opts)
        except Denied:
            if not others:
                raise
            # the terminal refuses several points in one frame: this meter alone, and
            # no more groups on this session
            self._single = session
            self.requests += 1
            sent += 1
            units = await session.read_class1([(pn, fn) for fn in fns], opts=opts)
            others = []
        stamp = dt.datetime.now(dt.UTC)
        values = units_by_fn(units)
        now = monotonic()
        for p in others:
            for fn in fns:
                if (p, fn) in values:
                    self._kept[(p, fn)] = (values[(p, fn)], now, stamp, session)
        for key in [k for k, v in self._kept.items() if now - v[1] > self.max_age]:
            del self._kept[key]
        return {fn: values.get((pn, fn)) for fn in fns}, stamp, sent


class _ForwardPort:
    """One (port, baud) of the concentrator as a line of its own, for forwarded frames."""

    def __init__(self, link: TerminalLink, port: int, baud: int, preamble: int) -> None:
        # connect waits for the terminal's login: short, the read fails fast when offline
        self.bus = ForwardBus(link.master, link.terminal, port, baud=baud,
                              connect_timeout=2.0, reconnect_min=0.0)
        self.line = Line(self.bus, preamble=preamble)
        self._session: TerminalSession | None = None

    async def ready(self, session: TerminalSession) -> None:
        """Open the bus on ``session``; after a new login, drop the link of the old one
        so the first forwarded request does not fail on it."""
        if self._session is not session:
            if self.bus.is_open:
                await self.bus.close()
            self._session = session
        if not self.bus.is_open:
            await self.bus.open(lazy=True)

    def counters(self) -> dict[str, int]:
        out = {k: int(v) for k, v in self.bus.counters().items()}
        for k, v in self.line.counters().items():
            out[k] = out.get(k, 0) + v
        return out


_BEHIND: dict[Capabilities, Capabilities] = {}


def capabilities_behind(kind: Dlt645Kind, ref: MeterRef) -> Capabilities:
    """What a meter of ``kind`` behind a concentrator offers (no I/O)."""
    inner = kind.capabilities(ref)
    known = _BEHIND.get(inner)
    if known is None:  # one shared value: a fleet has tens of thousands of meters
        known = _BEHIND[inner] = _behind(inner)
    return known


def _behind(inner: Capabilities) -> Capabilities:
    return Capabilities(
        quantities=inner.quantities | frozenset(CLASS1),
        relay=inner.relay,
        relay_state=inner.relay_state,
        credentials=inner.credentials,
        daily_freezes=DAILY_FREEZES,
        clock=inner.clock,
        clock_set=None,
        block_reads=True,
        topup=inner.topup,
        curve=inner.curve,  # the meter's own load records, forwarded
    )


def _number(value: object) -> float | None:
    return float(value) if isinstance(value, (Decimal, int, float)) else None


class ConcentratorMeter(Meter):
    """A DL/T645 meter read through the concentrator at ``line.terminal``."""

    def __init__(self, line: Line, ref: MeterRef, kind: Dlt645Kind) -> None:
        if ref.route is None or not isinstance(line.terminal, TerminalLink):
            raise ValueError(f"meter {ref.meter_id}: a meter behind a concentrator needs a "
                             "route and a line with a TerminalLink")
        super().__init__(line, ref, capabilities_behind(kind, ref))
        self.route: Route = ref.route
        self.link: TerminalLink = line.terminal
        route, link = self.route, self.link
        self._port: _ForwardPort = line.session(
            ("3761-forward", route.port, route.baud),
            lambda: _ForwardPort(link, route.port, route.baud, line.preamble))
        self.inner: Dlt645Meter = kind.open(
            self._port.line, MeterRef(ref.meter_id, ref.kind, ref.address))
        self._batch: _Class1Batch = line.session(("3761-class1",),
                                                 lambda: _Class1Batch(link))
        self._batch.points.add(route.pn)
        self._requests = 0

    @property
    def address(self) -> str:
        return self.inner.address

    @property
    def requests(self) -> int:
        """Class-1/2 requests for this meter plus those of its forwarding session."""
        return self._requests + self.inner.requests

    @property
    def ping_quantity(self) -> str:
        return PING_QUANTITY  # a class-1 F129 read

    @property
    def retries(self) -> int:
        return self.link.master.retries

    # ---- reading

    async def read(self, quantities: Sequence[str], opts: CallOptions = DEFAULT) -> MeterRead:
        """Class-1 quantities in one AFN0C request; the others forwarded to the meter."""
        got = MeterRead()
        class1: list[str] = []
        forwarded: list[str] = []
        for q in quantities:
            if not self.capabilities.offers(q):
                got.refused.append(q)
            elif q in CLASS1:
                class1.append(q)
            else:
                forwarded.append(q)
        readings: dict[str, list[Reading]] = {}
        if class1:
            await self._read_class1(class1, opts, got, readings)
        if forwarded:
            try:
                await self._port.ready(self.link.session())
            except DriverError as e:
                for q in forwarded:
                    got.failed[q] = e
            else:
                inner = await self.inner.read(forwarded, opts)
                got.answered |= inner.answered
                got.valid |= inner.valid
                got.failed.update(inner.failed)
                got.refused.extend(inner.refused)
                for r in inner.readings:
                    readings.setdefault(r.quantity, []).append(r)
        order = {q: i for i, q in reversed(list(enumerate(quantities)))}
        first_forwarded = order[forwarded[0]] if forwarded else len(quantities)
        got.readings = sorted(
            (r for rs in readings.values() for r in rs),
            key=lambda r: order.get(r.quantity, first_forwarded))
        return got

    async def _read_class1(self, wanted: list[str], opts: CallOptions, got: MeterRead,
                           readings: dict[str, list[Reading]]) -> None:
        pn = self.route.pn
        fns = sorted({CLASS1[q] for q in wanted}, key=CLASS1_FNS.index)
        try:
            session = self.link.session()
        except DriverError as e:
            for q in wanted:
                got.failed[q] = e
            return
        try:
            values, now, sent = await self._batch.read(session, pn, fns, opts)
            self._requests += sent
        except DriverError as e:
            self._requests += 1
            for q in wanted:
                got.failed[q] = e
            return
        by_fn: dict[int, dict[str, Decimal | None] | None] = {}
        for fn in fns:
            value = values.get(fn)
            by_fn[fn] = (value.readings() if isinstance(
                value, (ActiveEnergy, PresentValues, EnergyReadings)) else None)
        for q in wanted:
            fn = CLASS1[q]
            named = by_fn[fn]
            number = _number(named.get(q)) if named is not None else None
            if number is None:
                why = "EE (no value)" if named is not None else f"no F{fn} in its reply"
                got.failed[q] = Absent(f"{self.link.terminal} p{pn}: {q}: {why}",
                                       address=self.address)
                continue
            got.answered = got.valid = True
            readings.setdefault(q, []).append(
                Reading(self.meter_id, q, number, QUANTITIES[q].unit, now, None,
                        Quality.GOOD))

    # ---- relay and clock: the meter's own, through forwarding

    async def _forwarding(self) -> Dlt645Meter:
        await self._port.ready(self.link.session())
        return self.inner

    def relay_plan(self, action: str, *, direct_close: bool = False) -> RelayPlan:
        return self.inner.relay_plan(action, direct_close=direct_close)

    async def relay_state(self, opts: CallOptions = DEFAULT) -> RelayState:
        return await (await self._forwarding()).relay_state(opts)

    async def relay(self, plan: RelayPlan, credentials: Credentials | None = None,
                    opts: CallOptions = DEFAULT) -> None:
        self.inner.check_credentials(plan, credentials)
        await (await self._forwarding()).relay(plan, credentials, opts)

    def check_credentials(self, plan: RelayPlan, credentials: Credentials | None) -> None:
        self.inner.check_credentials(plan, credentials)

    async def write_topup(self, order: TopupOrder, security: Any,
                          opts: CallOptions = DEFAULT) -> TopupResult:
        """The inner meter's top-up, its frames forwarded (AFN10)."""
        return await (await self._forwarding()).write_topup(order, security, opts)

    def secret_of(self, credentials: Credentials | None) -> str:
        return self.inner.secret_of(credentials)

    @property
    def protocol(self) -> str:
        return self.inner.protocol

    async def read_number(self, quantity: str, opts: CallOptions = DEFAULT) -> float | None:
        if quantity in CLASS1:
            return await super().read_number(quantity, opts)
        return await (await self._forwarding()).read_number(quantity, opts)

    async def read_clock(self, clock: Callable[[], float],
                         opts: CallOptions = DEFAULT) -> ClockRead:
        return await (await self._forwarding()).read_clock(clock, opts)

    def clock_group(self) -> object | None:
        return None  # the concentrator sets its meters' clocks

    def event_kinds(self) -> frozenset[str]:
        return self.inner.event_kinds()

    async def read_events(self, wanted: Mapping[str, int], opts: CallOptions = DEFAULT,
                          *, tz: dt.tzinfo | None = None) -> EventsRead:
        """The meter's own records, forwarded (AFN10 F1)."""
        return await (await self._forwarding()).read_events(wanted, opts, tz=tz)
    async def read_curve(self, quantities: Sequence[str], start: dt.datetime,
                         end: dt.datetime, opts: CallOptions = DEFAULT,
                         *, tz: dt.tzinfo | None = None) -> CurveRead:
        """The meter's own load records, every frame forwarded (AFN10 F1)."""
        return await (await self._forwarding()).read_curve(quantities, start, end, opts, tz=tz)

    # ---- daily freezes (AFN0D by date)

    async def freeze_time(self, n: int, opts: CallOptions = DEFAULT) -> dt.datetime:
        """00:00 of the concentrator's today minus ``n`` - 1 days: freeze 1 is today's
        00:00 freeze, which holds yesterday's data (Td_d = yesterday)."""
        if not 1 <= n <= DAILY_FREEZES:
            raise ValueError(f"daily freeze {n}: expected 1-{DAILY_FREEZES}")
        self._requests += 1
        now = await self.link.session().clock(opts=opts)
        today = (now or dt.datetime.now()).date()
        return dt.datetime.combine(today - dt.timedelta(days=n - 1), dt.time())

    async def read_freeze(self, n: int, opts: CallOptions = DEFAULT,
                          *, tz: dt.tzinfo | None = None, on: dt.date | None = None) -> Freeze:
        """The freeze taken at 00:00 of ``on`` (else of :meth:`freeze_time` ``n``): AFN0D
        F161 with Td_d the day before, and F1 if F161 has nothing."""
        taken = (dt.datetime.combine(on, dt.time()) if on is not None
                 else await self.freeze_time(n, opts))
        day = taken.date() - dt.timedelta(days=1)
        meter_ts = (taken.replace(tzinfo=tz) if tz is not None
                    else taken.astimezone()).astimezone(dt.UTC)
        session = self.link.session()
        pn = self.route.pn
        notes: list[str] = []
        for fn in (161, 1):
            self._requests += 1
            try:
                units: list[DataUnit | RawUnit] = await session.read_class2(pn, fn, day,
                                                                            opts=opts)
            except Denied as e:  # a single unit denied: the terminal lacks that day
                notes.append(f"concentrator has no F{fn} for {day}: {e}")
                continue
            value = units_by_fn(units).get((pn, fn))
            if not isinstance(value, (FrozenActiveEnergy, FrozenEnergy)):
                notes.append(f"concentrator has no F{fn} for {day}")
                continue
            if value.tag is not None and value.tag != day:
                notes.append(f"F{fn} answered for {value.tag}, not {day}")
                continue
            now = dt.datetime.now(dt.UTC)
            readings = [Reading(self.meter_id, q, x, QUANTITIES[q].unit, now, meter_ts,
                                Quality.BACKFILLED)
                        for q, v in value.readings().items()
                        if (x := _number(v)) is not None]
            if readings:
                return Freeze(taken, readings, notes)
            notes.append(f"F{fn} for {day}: no values (EE)")
        return Freeze(taken, [], notes)


# ---- the terminal's own records ------------------------------------------------------


@dataclass(frozen=True, slots=True)
class TerminalRecord:
    """One event record of a concentrator: its ``pointer`` in the terminal's ring (the
    EC count at which it was recorded, 0-255), the ERC ``code``, the terminal's own time
    of it (naive, its local time; None if absent) and a readable ``detail``."""

    pointer: int
    code: int
    time: dt.datetime | None
    detail: str


@dataclass(frozen=True, slots=True)
class RecordBatch:
    """Records read or reported at once; ``ec`` is the terminal's important-event count
    (EC1) and ``end`` the pointer after the last record given."""

    ec: int
    end: int
    records: tuple[TerminalRecord, ...] = field(default=())


def _when(t: dt.datetime | None) -> str:
    return t.isoformat(" ", "minutes") if t is not None else "unknown"


def _describe(content: object) -> tuple[dt.datetime | None, str]:
    if isinstance(content, Erc14):
        return content.off, f"power off at {_when(content.off)}, on at {_when(content.on)}"
    if isinstance(content, Erc1):
        return content.time, (f"initialised; version {content.old_version.strip()} -> "
                              f"{content.new_version.strip()} (flags {content.flags:02X})")
    if isinstance(content, Erc3):
        items = ", ".join(f"p{','.join(map(str, pns))} F{','.join(map(str, fns))}"
                          for pns, fns in content.idents)
        return content.time, f"parameters changed by master {content.master}: {items}"
    raw = content.hex().upper() if isinstance(content, bytes) else ""
    return None, f"record {raw}".strip()


def terminal_records(units: Sequence[DataUnit | RawUnit]) -> list[RecordBatch]:
    """The event records in AFN0E F1/F2 units (a reply or a report the terminal sent)."""
    out: list[RecordBatch] = []
    for u in units:
        if not isinstance(u, DataUnit) or not isinstance(u.value, EventRecords):
            continue
        v = u.value
        records = []
        for i, rec in enumerate(v.records):
            when, detail = _describe(rec.content)
            records.append(TerminalRecord((v.start + i) % 256, rec.erc, when, detail))
        out.append(RecordBatch(v.ec1, (v.start + len(records)) % 256, tuple(records)))
    return out


# ---- the archive (AFN04 F10) -----------------------------------------------------------

ARCHIVE_FIELDS: Final = ("pn", "port", "baud", "protocol", "address", "tariffs")


@dataclass(frozen=True, slots=True)
class ArchiveDifference:
    """One field of one archive item that differs: the ledger's and the concentrator's
    values as text (``"-"``: the item is missing there)."""

    serial: int
    pn: int
    field: str
    ledger: str
    concentrator: str


def _protocol_code(meter: ConcentratorMeter) -> int:
    return (MeterProtocol.DLT645_2007 if meter.inner.version is Version.V2007
            else MeterProtocol.DLT645_1997)


def archive_entry(meter: ConcentratorMeter) -> MeterEntry:
    """The AFN04 F10 item of ``meter``: serial number = its measuring point."""
    r = meter.route
    return MeterEntry(r.pn, r.pn, r.port, meter.address, protocol=_protocol_code(meter),
                      baud=r.baud)


def _field(entry: MeterEntry | None, name: str) -> str:
    if entry is None:
        return "-"
    value = getattr(entry, name)
    if name == "protocol":
        try:
            return MeterProtocol(value).name.lower().replace("_", "-")
        except ValueError:
            return str(value)
    if name == "baud" and value == 0:
        return "default"
    return str(value)


def archive_differences(ledger: Sequence[MeterEntry], found: Sequence[MeterEntry]
                        ) -> list[ArchiveDifference]:
    """Field by field, the ledger's items against those read back (by serial number)."""
    got = {e.serial: e for e in found}
    out: list[ArchiveDifference] = []
    for want in ledger:
        have = got.get(want.serial)
        for name in ARCHIVE_FIELDS:
            a, b = _field(want, name), _field(have, name)
            if have is None and name != "pn":
                continue  # a missing item is one difference, not six
            if a != b:
                out.append(ArchiveDifference(want.serial, want.pn, name, a, b))
    return out


async def sync_archive(link: TerminalLink, meters: Sequence[Meter], *,
                       opts: CallOptions = DEFAULT) -> list[ArchiveDifference]:
    """Write the archive of ``meters`` (those behind ``link``'s concentrator) with AFN04
    F10, read it back with AFN0A F10 and return what still differs (empty: in sync).

    :class:`~drivers.errors.LinkDown` when the concentrator is offline, ``Denied`` when
    it refuses the download; ValueError for a meter that is not behind it.
    """
    entries = []
    for m in meters:
        if not isinstance(m, ConcentratorMeter) or m.link != link:
            raise ValueError(f"meter {m.meter_id} is not behind {link.terminal}")
        entries.append(archive_entry(m))
    entries.sort(key=lambda e: e.serial)
    session = link.session()
    # 27 bytes an item: 32 items keep a frame well under 1 kB
    for i in range(0, len(entries), 32):
        await session.download_archive(entries[i:i + 32], opts=opts)
    found: list[MeterEntry] = []
    for i in range(0, len(entries), 32):
        found += await session.query_archive([e.serial for e in entries[i:i + 32]], opts=opts)
    return archive_differences(entries, found)


__all__ = ["ARCHIVE_FIELDS", "CLASS1", "DAILY_FREEZES", "Absent", "ArchiveDifference",
           "ConcentratorMeter", "RecordBatch", "TerminalLink", "TerminalRecord",
           "archive_differences", "archive_entry", "capabilities_behind", "concentrator_line",
           "sync_archive", "terminal_records"]

"""Meters behind a Q/GDW 1376.1 concentrator, in the device model (:mod:`drivers.device`).

::

    line = concentrator_line(master, TerminalId("4403", 1))
    meter = open_meter(line, MeterRef("m1", "dlt645-2007", "000000000001", route=Route(1)))
    got = await meter.read(["energy_active_forward_total", "voltage_a", "status_word_3"])

What class-1 data carries (AFN0C F129, F25, F33, F34) is read from the concentrator in
one request per meter; everything else, relay commands and the meter clock go to the
meter itself through AFN10 F1 forwarding, by the meter's own kind (DL/T645) on a
forwarding line kept per (port, baud).  Daily freezes come from AFN0D F161 by date.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from decimal import Decimal
from typing import Any, Final

from protocols.qgdw3761 import (
    ActiveEnergy,
    DataUnit,
    EnergyReadings,
    FrozenActiveEnergy,
    FrozenEnergy,
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
    Freeze,
    Line,
    Meter,
    MeterRead,
    MeterRef,
    RelayPlan,
    RelayState,
    Route,
)
from .dlt645_meter import PING_QUANTITY, Dlt645Kind, Dlt645Meter
from .errors import DriverError, LinkDown, ReplyError
from .options import DEFAULT, CallOptions
from .qgdw3761 import Denied, ForwardBus, MasterStation, TerminalId, TerminalSession, units_by_fn

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
    holds its session and its address."""

    master: MasterStation
    terminal: TerminalId

    def session(self) -> TerminalSession:
        """The terminal's session now; :class:`~drivers.errors.LinkDown` if offline."""
        s = self.master.terminal(self.terminal)
        if s is None or s.closed:
            raise LinkDown(f"{self.terminal}: concentrator offline", bus=str(self.terminal))
        return s


def concentrator_line(master: MasterStation, terminal: TerminalId, *,
                      preamble: int = 4) -> Line:
    """A line for the meters behind ``terminal`` (its bus forwards to port 2 at 2400 bd;
    each meter's :class:`~drivers.device.Route` chooses its own forwarding line)."""
    return Line(ForwardBus(master, terminal, 2, connect_timeout=2.0, reconnect_min=0.0),
                preamble=preamble, terminal=TerminalLink(master, terminal))


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
            self._requests += 1
            units = await session.read_class1([(pn, fn) for fn in fns], opts=opts)
        except DriverError as e:
            for q in wanted:
                got.failed[q] = e
            return
        values = units_by_fn(units)
        by_fn: dict[int, dict[str, Decimal | None] | None] = {}
        for fn in fns:
            value = values.get((pn, fn))
            by_fn[fn] = (value.readings() if isinstance(
                value, (ActiveEnergy, PresentValues, EnergyReadings)) else None)
        now = dt.datetime.now(dt.UTC)
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


__all__ = ["CLASS1", "DAILY_FREEZES", "Absent", "ConcentratorMeter", "TerminalLink",
           "capabilities_behind", "concentrator_line"]

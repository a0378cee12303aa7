"""DL/T645-2007 and -1997 meters in the device model (:mod:`drivers.device`).

Registered as the ledger protocols ``dlt645-2007`` and ``dlt645-1997``.  A read asks
block DIs where several members are wanted, keeps every value read, and asks once more
for what failed; a quantity the meter refuses (abnormal reply) is remembered on the line
and not asked again.  Relay commands are 1C with the meter password and operator code
(2007 only), verified through status word 3; daily freezes are ``0506 00..02 NN``
(2007); the clock is ``0400010C`` (or date and time apart), set by the 08 broadcast.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable, Mapping, Sequence
from dataclasses import replace
from decimal import Decimal
from typing import Final

from protocols.dlt645 import (
    CURVE_INTERVAL,
    CURVE_ITEMS,
    CURVE_QUANTITIES,
    DAILY_FREEZES,
    DI_AUTHENTICATE,
    DI_TOPUP,
    AbnormalReply,
    AuthAnswer,
    AuthChallenge,
    CurveItem,
    Format,
    Frame,
    Message,
    ReadReply,
    RelayCommand,
    RemoteControlRequest,
    StatusWord,
    Value,
    Version,
    curve_request_extra,
    decode_curve,
    decode_message,
    decode_record,
    freeze_di,
    items,
    record_di,
    value_to_json,
)
from protocols.dlt645 import DLT645Error as _CodecError
from protocols.quantities import BROADCAST_ADDRESS, EVENT_KINDS, normalise_address
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
    MeterEvent,
    MeterKind,
    MeterRead,
    MeterRef,
    RelayPlan,
    RelayState,
    TopupOrder,
    TopupResult,
    Unsupported,
)
from .dlt645 import DataValue, Dlt645Session, resolve_quantity
from .errors import BadReply, DriverError, MeterError, NoReply, UnknownQuantity
from .options import DEFAULT, CallOptions
from .security import MeterIdentity, SecurityError, SecurityModule

PING_QUANTITY: Final = "energy_active_forward_total"  # every edition has it
FREEZE_ENERGIES: Final[tuple[str, ...]] = (
    "freeze_daily_energy_active_forward", "freeze_daily_energy_active_reverse")
FRAMES: Final = "dlt645"  # both editions share the frame format and the addresses
BROADCAST_BYTES: Final = 18  # 68 A0..A5 68 C L, six data bytes, CS 16 (plus FE preamble)


def number_of(value: Value) -> float | None:
    """The stored number of a decoded value (status words by their raw bits; dates and
    times as the collector's local epoch seconds); None for text."""
    if isinstance(value, bool):
        return float(value)
    if isinstance(value, (Decimal, int, float)):
        return float(value)
    if isinstance(value, StatusWord):
        return float(value.raw)
    if isinstance(value, dt.datetime):
        return value.timestamp()  # meter local time, read as the collector's local time
    if isinstance(value, dt.date):
        return dt.datetime(value.year, value.month, value.day).timestamp()
    if isinstance(value, dt.time):
        return float(value.hour * 3600 + value.minute * 60 + value.second)
    return None


def to_readings(meter_id: str, values: Sequence[DataValue], ts: dt.datetime,
                quality: Quality = Quality.GOOD,
                meter_ts: dt.datetime | None = None) -> list[Reading]:
    """``values`` (blocks split into members) as readings of ``meter_id`` got at ``ts``."""
    out: list[Reading] = []
    for v in values:
        for part in v.members():
            number = number_of(part.value)
            if number is None:
                continue
            when = meter_ts
            if when is None and part.timestamp is not None:
                when = part.timestamp.astimezone(dt.UTC)
            out.append(Reading(meter_id, part.name, number, part.unit, ts, when, quality))
    return out


def _quantities(version: Version) -> frozenset[str]:
    names: set[str] = set()
    for item in items(version):
        names.add(item.name)
        for m in item.members:
            names.add(m.name)
    offered = set()
    for n in names:
        try:
            resolve_quantity(n, version)
        except UnknownQuantity:
            continue
        offered.add(n)
    return frozenset(offered)


_COMMANDS: Final[dict[str, RelayCommand]] = {
    "trip": RelayCommand.TRIP, "restore": RelayCommand.CLOSE_PERMITTED,
    "hold": RelayCommand.HOLD_POWER, "release": RelayCommand.HOLD_POWER_RELEASE,
    "alarm": RelayCommand.ALARM, "alarm_release": RelayCommand.ALARM_RELEASE,
}
_EXPECT: Final[dict[RelayCommand, tuple[Callable[[RelayState], bool], str]]] = {
    RelayCommand.TRIP: (lambda s: s.relay_open is True, "relay open"),
    RelayCommand.CLOSE_PERMITTED: (lambda s: s.command_open is False,
                                   "relay command state close (close permitted)"),
    RelayCommand.CLOSE_DIRECT: (lambda s: s.relay_open is False, "relay closed"),
    RelayCommand.HOLD_POWER: (lambda s: s.hold_power is True, "hold power on"),
    RelayCommand.HOLD_POWER_RELEASE: (lambda s: s.hold_power is False, "hold power off"),
    RelayCommand.ALARM: (lambda s: s.alarm is True, "alarm on"),
    RelayCommand.ALARM_RELEASE: (lambda s: s.alarm is False, "alarm off"),
}


class Dlt645Meter(Meter):
    """One DL/T645 meter on a line."""

    def __init__(self, line: Line, ref: MeterRef, kind: Dlt645Kind) -> None:
        super().__init__(line, ref, kind.capabilities(ref))
        self.version = kind.version
        self._address = normalise_address(ref.address)
        self.session: Dlt645Session = line.session(
            ("dlt645", kind.version),
            lambda: Dlt645Session(line.bus, version=kind.version, preamble=line.preamble))

    @property
    def address(self) -> str:
        return self._address

    @property
    def requests(self) -> int:
        return self.session.requests

    @property
    def ping_quantity(self) -> str:
        return PING_QUANTITY

    # ---- reading

    async def read(self, quantities: Sequence[str], opts: CallOptions = DEFAULT) -> MeterRead:
        """Every value read is kept; what failed (no reply, garbled, wrong reply) is asked
        once more after the first pass (each with ``opts.retries``) if the meter answered
        anything; a quantity the meter refuses is left out and not asked again."""
        line, address = self.line, self._address
        got = MeterRead()
        values: list[DataValue] = []
        wanted: list[str] = []
        for q in quantities:
            if (address, q) in line.refused:
                continue
            if not self.capabilities.offers(q):
                got.refused.append(q)
                continue
            wanted.append(q)
        for _ in range(2):  # the first pass, then once more for what failed
            if not wanted:
                break
            result = await self.session.read_each(address, wanted, opts=opts)
            values.extend(result.readings)
            got.answered |= result.answered
            got.valid |= result.valid
            got.failed = {}
            for asked, e in result.failed:
                if isinstance(e, MeterError):
                    got.refused.append(str(asked))
                else:
                    got.failed[str(asked)] = e
            if not result.valid:
                break  # silent, link down or nothing valid: asking again would fail alike
            wanted = list(got.failed)
        for q in got.refused:
            line.refused.add((address, q))
        got.readings = to_readings(self.meter_id, [_demand_at(v) for v in values],
                                   dt.datetime.now(dt.UTC))
        return got

    # ---- relay

    def relay_plan(self, action: str, *, direct_close: bool = False) -> RelayPlan:
        if action not in self.capabilities.relay:
            raise Unsupported(f"DL/T645-{self.version} has no remote relay control (1C)"
                              if not self.capabilities.relay else
                              f"meter {self.meter_id}: no relay action {action!r}",
                              address=self._address)
        command = _COMMANDS[action]
        if action == "restore" and direct_close:
            command = RelayCommand.CLOSE_DIRECT
        expected, expectation = _EXPECT[command]
        return RelayPlan(action, f"{command.name.lower()} ({command.value:02X})", expected,
                         expectation, trip=command is RelayCommand.TRIP, payload=command)

    def _command(self, plan: RelayPlan) -> RelayCommand:
        if not isinstance(plan.payload, RelayCommand):
            raise ValueError(f"meter {self.meter_id}: not a DL/T645 relay plan")
        return plan.payload

    def check_credentials(self, plan: RelayPlan, credentials: Credentials | None) -> None:
        if "A" in self._address or self._address == BROADCAST_ADDRESS:
            raise ValueError(f"meter address {self.ref.address!r}: a relay command needs one "
                             "meter's full address, not a wildcard or the broadcast address")
        if credentials is None or credentials.expires is None:
            raise ValueError("a DL/T645 relay command needs a password (LLPPPPPP), an "
                             "operator code and an expiry")
        try:  # the messages never quote the password
            RemoteControlRequest(address=self._address, password=credentials.password,
                                 operator=credentials.operator, command=self._command(plan),
                                 expiry=credentials.expires).data()
        except _CodecError as e:
            raise ValueError(str(e)) from None

    def secret_of(self, credentials: Credentials | None) -> str:
        return credentials.password.strip() if credentials is not None else ""

    async def relay_state(self, opts: CallOptions = DEFAULT) -> RelayState:
        if not self.capabilities.relay_state:
            return await super().relay_state(opts)
        value = await self.session.read(self._address, "status_word_3", opts=opts)
        if not isinstance(value.value, StatusWord):  # pragma: no cover - catalogue says so
            raise BadReply(f"meter {self._address}: status word 3 did not decode",
                           address=self._address)
        return RelayState.from_status_word_3(value.value.raw)

    async def relay(self, plan: RelayPlan, credentials: Credentials | None = None,
                    opts: CallOptions = DEFAULT) -> None:
        self.check_credentials(plan, credentials)
        assert credentials is not None and credentials.expires is not None
        encrypt = credentials.encrypt
        module = credentials.security
        if isinstance(module, SecurityModule):
            # ESAM meters: authenticate, then N1..N8 as the module's ciphertext
            ident = MeterIdentity(self.meter_id, self._address)
            challenge, answer = await self._authenticate(module, ident, opts)

            async def sealed(address: str, plain: bytes) -> bytes:
                return await module.protect_relay(ident, challenge, answer, plain)
            encrypt = sealed
        await self.session.remote_control(
            self._address, self._command(plan), password=credentials.password,
            operator=credentials.operator, expiry=credentials.expires,
            encrypt=encrypt, opts=opts)

    # ---- purchases written into the meter (cost-control meters with an ESAM)

    async def _authenticate(self, module: SecurityModule, ident: MeterIdentity,
                            opts: CallOptions) -> tuple[AuthChallenge, AuthAnswer]:
        """Identity authentication (03, 070000FF) with the module's challenge."""
        challenge = await module.authenticate(ident)
        raw = await self.session.security(self._address, DI_AUTHENTICATE,
                                          challenge.payload(), opts=opts)
        try:
            return challenge, AuthAnswer.parse(raw)
        except _CodecError as e:
            raise BadReply(f"meter {self._address}: identity authentication reply: {e}",
                           address=self._address) from None

    async def _count_and_balance(self, opts: CallOptions) -> tuple[int, float | None]:
        count = await self.read_number("purchase_count", opts)
        if count is None:
            raise BadReply(f"meter {self._address}: purchase count did not decode",
                           address=self._address)
        return int(count), await self.read_number("balance_amount", opts)

    async def write_topup(self, order: TopupOrder, security: SecurityModule,
                          opts: CallOptions = DEFAULT) -> TopupResult:
        """Read the purchase count and balance, authenticate, send the module's remote
        top-up (03, 070102FF), read both back.  The count the purchase makes is fixed by
        the first attempt (``order.count``): a meter accepts only its count + 1, so a
        repeat can never credit twice."""
        if not self.capabilities.topup:
            return await super().write_topup(order, security, opts)
        n0, b0 = await self._count_and_balance(opts)
        count = order.count if order.count is not None else n0 + 1
        if n0 >= count:  # an earlier attempt took; its answer was lost
            return TopupResult("confirmed", count, n0, n0, b0, b0,
                               detail=f"already written: the meter's purchase count is {n0}")
        if n0 != count - 1:
            return TopupResult("refused", count, n0, n0, b0, b0,
                               detail=f"the meter's purchase count is {n0}, not {count - 1}: "
                                      "a purchase unknown here was written meanwhile")
        ident = MeterIdentity(self.meter_id, self._address, order.customer)
        sent_error = ""
        try:
            challenge, answer = await self._authenticate(security, ident, opts)
            payload = await security.protect_topup(ident, challenge, answer, order.amount_fen,
                                                   count)
            await self.session.security(self._address, DI_TOPUP, payload, opts=opts)
        except (MeterError, SecurityError) as e:
            return TopupResult("refused", count, n0, n0, b0, b0, detail=str(e))
        except BadReply as e:  # it may have taken: the count tells
            sent_error = str(e)
        except NoReply as e:
            sent_error = str(e)
        n1, b1 = await self._count_and_balance(opts)
        if n1 == count:
            detail = ""
            if b0 is not None and b1 is not None and b1 + 0.005 < b0 + order.amount_fen / 100 \
                    - _CONSUMPTION_SLACK:
                detail = (f"balance {b0:.2f} -> {b1:.2f} yuan: less than the "
                          f"{order.amount_fen / 100:.2f} bought")
            return TopupResult("confirmed", count, n0, n1, b0, b1, detail=detail)
        if n1 == n0:
            return TopupResult("unconfirmed", count, n0, n1, b0, b1,
                               detail=sent_error or "the purchase count did not move")
        return TopupResult("refused", count, n0, n1, b0, b1,
                           detail=f"the purchase count went from {n0} to {n1}, not {count}")

    @property
    def protocol(self) -> str:
        return "dlt645"  # both editions, as relay outcomes have always named them

    @property
    def retries(self) -> int:
        return self.session.retries

    async def read_number(self, quantity: str, opts: CallOptions = DEFAULT) -> float | None:
        return number_of((await self.session.read(self._address, quantity, opts=opts)).value)

    # ---- daily freezes

    async def freeze_time(self, n: int, opts: CallOptions = DEFAULT) -> dt.datetime:
        if not self.capabilities.daily_freezes:
            return await super().freeze_time(n, opts)
        value = (await self.session.read(self._address, freeze_di("freeze_daily_time", n),
                                         opts=opts)).value
        if not isinstance(value, dt.datetime):  # pragma: no cover - the catalogue's format
            raise BadReply(f"daily freeze time {n}: {value!r}", address=self._address)
        return value

    async def read_freeze(self, n: int, opts: CallOptions = DEFAULT,
                          *, tz: dt.tzinfo | None = None, on: dt.date | None = None) -> Freeze:
        taken = await self.freeze_time(n, opts)
        if on is not None and taken.date() != on:
            return Freeze(taken, [])
        meter_ts = (taken.replace(tzinfo=tz) if tz is not None
                    else taken.astimezone()).astimezone(dt.UTC)
        blocks: list[DataValue] = []
        notes: list[str] = []
        for record in FREEZE_ENERGIES:
            try:
                blocks.append(await self.session.read(self._address, freeze_di(record, n),
                                                      opts=opts))
            except MeterError as e:
                if record == FREEZE_ENERGIES[0]:
                    raise
                notes.append(f"meter refuses {record}: {e}")
        now = dt.datetime.now(dt.UTC)
        return Freeze(taken, to_readings(self.meter_id, blocks, now, Quality.BACKFILLED,
                                         meter_ts), notes)

    # ---- event records (2007: 03xx / 1D / 1E records, protocols/dlt645/_records.py)

    def event_kinds(self) -> frozenset[str]:
        return frozenset(EVENT_KINDS) if self.version is Version.V2007 else frozenset()

    async def read_events(self, wanted: Mapping[str, int], opts: CallOptions = DEFAULT,
                          *, tz: dt.tzinfo | None = None) -> EventsRead:
        """Record 1, 2 ... of each kind until ``wanted[kind]`` or an empty slot; a kind the
        meter refuses is remembered on the line and not asked again."""
        if self.version is not Version.V2007:
            return await super().read_events(wanted, opts, tz=tz)
        got = EventsRead()
        address, line = self._address, self.line
        for kind, count in wanted.items():
            key = (address, f"event:{kind}")
            if kind not in EVENT_KINDS or key in line.refused:
                got.refused.append(kind)
                continue
            for n in range(1, min(count, 10) + 1):
                try:
                    value = await self.session.read(address, record_di(kind, n), opts=opts)
                    record = decode_record(kind, n, value.raw)
                except MeterError:
                    if n == 1:
                        line.refused.add(key)
                        got.refused.append(kind)
                    break
                except _CodecError as e:
                    got.failed[kind] = BadReply(f"event record {kind} {n}: {e}",
                                                address=address)
                    break
                except DriverError as e:
                    got.failed[kind] = e
                    break
                if record is None:
                    break  # the meter holds fewer records
                got.events.append(MeterEvent(
                    kind, n, _utc(record.start, tz),
                    None if record.end is None else _utc(record.end, tz),
                    {k: value_to_json(v) for k, v in record.fields.items()}))
        return got
    # ---- load curves

    async def read_curve(self, quantities: Sequence[str], start: dt.datetime,
                         end: dt.datetime, opts: CallOptions = DEFAULT,
                         *, tz: dt.tzinfo | None = None) -> CurveRead:
        """0610xxxx by given time and count, a day (96 points) a request, follow-up
        frames joined; a block DI where two or more of its quantities are wanted.  A
        range the meter answers with "no data" has no points."""
        caps = self.capabilities
        refused = [q for q in quantities if q not in caps.curve]
        wanted = [q for q in dict.fromkeys(quantities) if q in caps.curve]
        if not caps.curve:
            return await super().read_curve(quantities, start, end, opts, tz=tz)
        first = _quarter_at_or_after(start)
        readings: list[Reading] = []
        seen: set[dt.datetime] = set()
        gaps: set[dt.datetime] = set()
        now = dt.datetime.now(dt.UTC)
        for item in _curve_requests(wanted):
            keep = [q for q in item.quantities if q in wanted]
            at = first
            while at < end:
                count = min(CURVE_DAY, -(-(end - at) // CURVE_INTERVAL))
                try:
                    body = await self._load_records(item.di, at, count, opts)
                except MeterError:
                    body = None  # nothing recorded from there (or not kept): no points
                at += count * CURVE_INTERVAL
                if body is None:
                    continue
                try:
                    points = decode_curve(item, body)
                except _CodecError as e:
                    raise BadReply(f"meter {self._address}: load record {item.di:08X}: {e}",
                                   address=self._address) from e
                for p in points:
                    if not start <= p.at < end:
                        continue
                    seen.add(p.at)
                    if p.values is None:
                        gaps.add(p.at)
                        continue
                    meter_ts = (p.at.replace(tzinfo=tz) if tz is not None
                                else p.at.astimezone()).astimezone(dt.UTC)
                    readings.extend(
                        Reading(self.meter_id, q, float(p.values[q]), _unit_of(item, q), now,
                                meter_ts)
                        for q in keep if q in p.values)
        return CurveRead(readings, sorted(seen), sorted(gaps), refused)

    async def _load_records(self, di: int, start: dt.datetime, count: int,
                            opts: CallOptions) -> bytes:
        """The reply body of one given-time load-record read, follow-up frames joined."""
        label = f"load record {di:08X} from {start:%Y-%m-%d %H:%M} ({count} points)"
        return await self.session.read_records(
            self._address, di, curve_request_extra(start, count), opts=opts, label=label)

    # ---- the clock

    async def read_clock(self, clock: Callable[[], float],
                         opts: CallOptions = DEFAULT) -> ClockRead:
        session, address, line = self.session, self._address, self.line
        if self.version is Version.V2007 and (address, "meter_datetime") not in line.refused:
            t0 = clock()
            try:
                value = await session.read(address, "meter_datetime", opts=opts)
            except (MeterError, UnknownQuantity):
                # Meters before the 2013 amendment lack 0400010C: date and time apart.
                line.refused.add((address, "meter_datetime"))
            else:
                t1 = clock()
                if not isinstance(value.value, dt.datetime):
                    raise BadReply(f"meter_datetime decoded as {type(value.value).__name__}",
                                   address=address)
                return ClockRead(value.value, t0, t1)
        day = await session.read(address, "meter_date", opts=opts)
        t0 = clock()
        tod = await session.read(address, "meter_time", opts=opts)
        t1 = clock()
        if not isinstance(tod.value, dt.time):
            raise BadReply(f"meter_time decoded as {type(tod.value).__name__}", address=address)
        if tod.value < dt.time(0, 1):
            # Just past midnight: the date read before may still be yesterday's.
            day = await session.read(address, "meter_date", opts=opts)
        if not isinstance(day.value, dt.date):
            raise BadReply(f"meter_date decoded as {type(day.value).__name__}", address=address)
        return ClockRead(dt.datetime.combine(day.value, tod.value), t0, t1)

    def clock_group(self) -> object:
        return ("dlt645", self.version)

    async def broadcast_time(self, when: dt.datetime, opts: CallOptions = DEFAULT) -> None:
        await self.session.broadcast_time(when)

    def broadcast_bytes(self) -> int:
        return BROADCAST_BYTES + self.line.preamble


def _utc(local: dt.datetime, tz: dt.tzinfo | None) -> dt.datetime:
    return (local.replace(tzinfo=tz) if tz is not None else local.astimezone()).astimezone(
        dt.UTC)


def _demand_at(value: DataValue) -> DataValue:
    """A maximum demand block as its value, timestamped with when the peak occurred (the
    readings' ``meter_ts``); any other value as it is."""
    item = value.item
    if item is None or not item.is_block or not item.name.startswith("demand_active_") \
            or not isinstance(value.value, dict):
        return value
    parts = value.members()
    if len(parts) != 2 or not isinstance(parts[1].value, dt.datetime):
        return value
    return replace(parts[0], timestamp=parts[1].value)
# Energy used between the reads around a top-up (yuan): a live meter keeps consuming.
_CONSUMPTION_SLACK: Final = 1.0


class Dlt645Kind(MeterKind):
    """The ledger protocol ``dlt645-2007`` or ``dlt645-1997``."""

    def __init__(self, version: Version) -> None:
        self.version = version
        self.name = f"dlt645-{version}"
        quantities = _quantities(version)
        v2007 = version is Version.V2007
        self._caps = Capabilities(
            quantities=quantities,
            relay=frozenset(_COMMANDS) if v2007 else frozenset(),
            relay_state="status_word_3" in quantities,
            credentials=True,
            daily_freezes=DAILY_FREEZES if v2007 else 0,
            clock=True,
            clock_set="broadcast",
            block_reads=True,
            topup=v2007 and {"purchase_count", "balance_amount"} <= quantities,
            curve=CURVE_QUANTITIES if v2007 else frozenset(),
        )

    def capabilities(self, ref: MeterRef) -> Capabilities:
        return self._caps

    def open(self, line: Line, ref: MeterRef) -> Dlt645Meter:
        return Dlt645Meter(line, ref, self)

    def address_key(self, address: str) -> str:
        return normalise_address(address)

    def fixed_capabilities(self) -> Capabilities:
        return self._caps

    def frame_family(self) -> str:
        return FRAMES

    def decode_reply(self, frame: Frame) -> Message:
        """``frame`` decoded in this edition: a read reply or an abnormal reply."""
        message = decode_message(frame, self.version)
        if isinstance(message, AbnormalReply):
            return message
        if not isinstance(message, ReadReply) or message.version is not self.version:
            raise Unsupported(f"control {frame.control:02X} is not a DL/T645-{self.version} "
                              "read reply", address=frame.address)
        return message


CURVE_DAY: Final = 96  # points a load-record request asks for (one day; NN <= 99)


def _quarter_at_or_after(when: dt.datetime) -> dt.datetime:
    step = int(CURVE_INTERVAL.total_seconds())
    base = when.replace(second=0, microsecond=0, minute=0)
    seconds = (when - base).total_seconds()
    return base + dt.timedelta(seconds=-(-seconds // step) * step)


def _unit_of(item: CurveItem, quantity: str) -> str:
    if item.point.format is not Format.BLOCK:
        return item.point.unit
    return next(m.unit for m in item.point.members if m.name == quantity)


def _curve_requests(wanted: Sequence[str]) -> list[CurveItem]:
    """The load-record DIs that bring ``wanted``: a block for two or more members."""
    out: list[CurveItem] = []
    done: set[str] = set()
    for block in CURVE_ITEMS:
        if block.point.format is Format.BLOCK:
            members = [q for q in block.quantities if q in wanted]
            if len(members) >= 2:
                out.append(block)
                done.update(members)
    out += [c for c in CURVE_ITEMS if c.point.format is not Format.BLOCK
            and c.name in wanted and c.name not in done]
    return out


DLT645_2007 = Dlt645Kind(Version.V2007)
DLT645_1997 = Dlt645Kind(Version.V1997)

__all__ = ["BROADCAST_BYTES", "DLT645_1997", "DLT645_2007", "FRAMES", "FREEZE_ENERGIES",
           "PING_QUANTITY", "Dlt645Kind", "Dlt645Meter", "number_of", "to_readings"]

"""The device model: one interface that every meter protocol implements.

::

    line = Line(bus, preamble=4, modbus="rtu")          # one per bus, shared by its meters
    meter = drivers.meters.open_meter(line, MeterRef("m1", "dlt645-2007", "000000000123"))
    got = await meter.read(["voltage_a", "energy_active_forward_total"],
                           CallOptions(retries=1))
    state = await meter.relay_state(CallOptions(retries=0))

The collector asks a :class:`Meter` what it can do (:class:`Capabilities`) and never
which protocol it speaks.  A protocol is a :class:`MeterKind` registered under the
protocol names of the ledger (``dlt645-2007``, ``dlt645-1997``, ``modbus``) in
:mod:`drivers.meters`, whose :func:`~drivers.meters.kind_of` finds it.  Adding a
protocol adds one kind module in ``drivers/`` (and a line there), nothing in the
collector.

Options (retries, Td, Tb) travel with each call as :class:`~drivers.options.CallOptions`.
"""

from __future__ import annotations

import datetime as dt
from abc import ABC, abstractmethod
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

from protocols.modbus import Profile
from protocols.quantities import billing_energy
from protocols.readings import Reading

from .bus import Bus
from .errors import DriverError
from .options import DEFAULT, CallOptions

RelayAction = Literal["trip", "restore", "hold", "release", "alarm", "alarm_release"]
RELAY_ACTIONS: tuple[RelayAction, ...] = ("trip", "restore", "hold", "release", "alarm",
                                          "alarm_release")


# ---- what a meter is and what it can do ------------------------------------------------

@dataclass(frozen=True, slots=True)
class Route:
    """How a concentrator reaches a meter: its measuring point number ``pn`` there, the
    concentrator's ``port`` it hangs on and the meter's ``baud``."""

    pn: int
    port: int = 2
    baud: int = 2400

    def __post_init__(self) -> None:
        if not 1 <= self.pn <= 2040:
            raise ValueError(f"measuring point {self.pn}: expected 1-2040")
        if not 1 <= self.port <= 31:
            raise ValueError(f"concentrator port {self.port}: expected 1-31")
        if self.baud <= 0:
            raise ValueError(f"baud {self.baud} must be positive")


@dataclass(frozen=True, slots=True)
class MeterRef:
    """What the drivers need to reach one meter: the collector's ``meter_id`` (it names
    the readings), the ledger's protocol name (``kind``), its ``address`` on the bus
    (a DL/T645 address, a Modbus unit id, as text), its Modbus ``profile`` if any, and
    its ``route`` when it sits behind a concentrator."""

    meter_id: str
    kind: str
    address: str
    profile: Profile | None = None
    route: Route | None = None


@dataclass(frozen=True, slots=True)
class Capabilities:
    """What a meter offers, declared by its kind (and profile).

    ``quantities``: the quantity names it can be asked for; ``relay``: the relay actions
    it carries out *verified* (empty: none); ``relay_state``: its relay state can be
    read; ``credentials``: relay commands need a meter password and an operator code;
    ``daily_freezes``: how many daily freezes it keeps for backfill (0: none);
    ``clock``: its clock can be read; ``clock_set``: how it is set (``"broadcast"``: a
    time broadcast to the whole bus; None: not by amic); ``block_reads``: several
    quantities come in one request.
    """

    quantities: frozenset[str]
    relay: frozenset[str] = frozenset()
    relay_state: bool = False
    credentials: bool = False
    daily_freezes: int = 0
    clock: bool = False
    clock_set: str | None = None
    block_reads: bool = False
    topup: bool = False  # a purchase can be written into it (a security module needed)
    curve: frozenset[str] = frozenset()  # quantities it keeps a load curve of

    def offers(self, quantity: str) -> bool:
        return quantity in self.quantities

    def as_dict(self) -> dict[str, Any]:
        return {"quantities": sorted(self.quantities), "relay": sorted(self.relay),
                "relay_state": self.relay_state, "credentials": self.credentials,
                "daily_freezes": self.daily_freezes, "clock": self.clock,
                "clock_set": self.clock_set, "block_reads": self.block_reads,
                "topup": self.topup, "curve": sorted(self.curve)}


@dataclass(frozen=True, slots=True)
class RelayState:
    """What the meter said about its relay; None where it does not tell.

    ``relay_open``: the relay (DL/T645 status word 3 bit 4, or a Modbus readback);
    ``command_open``: the relay command state is "trip" (bit 6); ``hold_power``
    (bit 12); ``alarm``: pre-trip alarm (bit 7); ``status_word_3``: the raw word, when
    read.
    """

    relay_open: bool | None = None
    command_open: bool | None = None
    hold_power: bool | None = None
    alarm: bool | None = None
    status_word_3: int | None = None

    @classmethod
    def from_status_word_3(cls, word: int, relay_open: bool | None = None) -> RelayState:
        """Decode status word 3; ``relay_open`` overrides bit 4 (a Modbus readback)."""
        return cls(
            relay_open=bool(word >> 4 & 1) if relay_open is None else relay_open,
            command_open=bool(word >> 6 & 1),
            hold_power=bool(word >> 12 & 1),
            alarm=bool(word >> 7 & 1),
            status_word_3=word,
        )

    def as_dict(self) -> dict[str, Any]:
        return {"relay_open": self.relay_open, "command_open": self.command_open,
                "hold_power": self.hold_power, "alarm": self.alarm,
                "status_word_3": self.status_word_3}


@dataclass(frozen=True, slots=True)
class RelayPlan:
    """How one relay action is carried out on a meter: ``command`` names what is sent
    (for people: ``"trip (1A)"``, ``"trip (coil 1 = 1)"``); ``expected`` tells when a
    state read afterwards shows it took effect, ``expectation`` says it in words;
    ``trip``: it opens the relay (refused while hold power is on); ``payload``: what
    the meter's kind sends (its own business)."""

    action: str
    command: str
    expected: Callable[[RelayState], bool]
    expectation: str
    trip: bool = False
    payload: object = None


@dataclass(frozen=True, slots=True)
class Credentials:
    """What a protected relay command carries: the meter ``password`` (DL/T645
    ``LLPPPPPP``), the ``operator`` code, when the command ``expires`` (meter local
    time) and the ESAM ``encrypt`` hook if the meter needs one.  Never logged."""

    password: str = ""
    operator: str = "00000000"
    expires: dt.datetime | None = None
    # ESAM meters: (address, N1..N8) -> ciphertext, see Dlt645Session.remote_control
    encrypt: Callable[[str, bytes], bytes | Awaitable[bytes]] | None = field(
        default=None, compare=False)
    # A security module (drivers.security.SecurityModule): identity authentication, then
    # the command as its ciphertext.  Takes the place of ``encrypt``.
    security: Any = field(default=None, compare=False)

    def __repr__(self) -> str:
        return "Credentials(********)"


@dataclass(frozen=True, slots=True)
class TopupOrder:
    """A purchase to write into a meter that keeps its own balance: ``amount_fen``
    (分), the purchase ``count`` it makes (the meter's count + 1 when first sent; kept
    for every retry, so the meter can never credit it twice), the ``customer`` number
    (户号, 12 digits) and the payment ``receipt``."""

    amount_fen: int
    count: int | None
    customer: str
    receipt: str


@dataclass(frozen=True, slots=True)
class TopupResult:
    """What a top-up did, read back: ``status`` confirmed (the count went up by one and
    the balance by the amount), unconfirmed (the count did not move: send again with the
    same count), refused (the meter said no: ``detail`` why); the counts and balances
    before and after (None where not read)."""

    status: Literal["confirmed", "unconfirmed", "refused"]
    count: int
    count_before: int | None = None
    count_after: int | None = None
    balance_before: float | None = None
    balance_after: float | None = None
    detail: str = ""

    def as_dict(self) -> dict[str, Any]:
        return {"status": self.status, "count": self.count, "count_before": self.count_before,
                "count_after": self.count_after, "balance_before": self.balance_before,
                "balance_after": self.balance_after, "detail": self.detail}


@dataclass(slots=True)
class MeterRead:
    """What one read of a meter got: ``readings`` in the order asked (block members
    split), ``failed`` the quantities that failed after retries with their errors,
    ``refused`` the quantities the meter (or its kind) refuses, ``answered`` whether the
    meter replied anything, ``valid`` whether any reply was usable."""

    readings: list[Reading] = field(default_factory=list)
    failed: dict[str, DriverError] = field(default_factory=dict)
    refused: list[str] = field(default_factory=list)
    answered: bool = False
    valid: bool = False


@dataclass(frozen=True, slots=True)
class Freeze:
    """One daily freeze: when the meter took it (``taken``, meter local time, naive) and
    the energies it froze (``readings``, ``meter_ts`` = the freeze time in UTC);
    ``notes``: parts the meter refused."""

    taken: dt.datetime
    readings: list[Reading]
    notes: list[str] = field(default_factory=list)


@dataclass(frozen=True, slots=True)
class CurveRead:
    """A load curve read: ``readings`` one per quantity and point the meter recorded
    (``meter_ts`` = the point's time in UTC, quality BACKFILLED), ``points`` the point
    times it answered for (meter local time, naive), ``gaps`` those it has no record
    of (powered down), ``refused`` quantities whose curve it does not keep."""

    readings: list[Reading]
    points: list[dt.datetime] = field(default_factory=list)
    gaps: list[dt.datetime] = field(default_factory=list)
    refused: list[str] = field(default_factory=list)


@dataclass(frozen=True, slots=True)
class ClockRead:
    """The meter's clock as shown (``shown``, naive meter local time, whole seconds) and
    the collector's clock (epoch seconds) just before and after the timed request."""

    shown: dt.datetime
    t0: float
    t1: float


@dataclass(frozen=True, slots=True)
class MeterEvent:
    """One of the meter's own event records: ``kind`` (``cover_open``,
    ``voltage_loss_a`` ..., see :data:`protocols.quantities.EVENT_KINDS`), ``n`` its place
    (1 the latest), ``start`` and ``end`` in UTC (``end`` None while it goes on or for
    events without an end), ``detail`` the record's other fields (JSON-friendly)."""

    kind: str
    n: int
    start: dt.datetime
    end: dt.datetime | None = None
    detail: Mapping[str, Any] = field(default_factory=dict)


@dataclass(slots=True)
class EventsRead:
    """What :meth:`Meter.read_events` got: ``events`` newest first per kind, ``failed``
    the kinds whose read failed, ``refused`` those the meter does not keep."""

    events: list[MeterEvent] = field(default_factory=list)
    failed: dict[str, DriverError] = field(default_factory=dict)
    refused: list[str] = field(default_factory=list)


class Unsupported(DriverError):
    """The meter's kind (or profile) cannot do this; nothing was sent."""

    def __init__(self, message: str, *, address: str = "") -> None:
        super().__init__(message)
        self.address = address


# ---- the bus side ------------------------------------------------------------------------

class Line:
    """One bus as its meters share it: the bus and the protocol sessions on it.

    ``preamble``: FE bytes before DL/T645 requests; ``modbus``: the Modbus framing of
    the bus (``"rtu"``, or ``"tcp"`` for MBAP); ``terminal``: the concentrator this line
    reaches, for meters with a :class:`Route` (its kind's business, e.g.
    :class:`drivers.concentrator_meter.TerminalLink`; None: a plain bus).  Sessions are
    made on first use, one per protocol (and edition), and keep their counters and what
    meters refused.
    """

    def __init__(self, bus: Bus, *, preamble: int = 4, modbus: str = "rtu",
                 terminal: object | None = None) -> None:
        self.bus = bus
        self.preamble = preamble
        self.modbus = modbus
        self.terminal = terminal
        self._sessions: dict[object, Any] = {}
        # (address, quantity) a meter refused: not asked again every cycle
        self.refused: set[tuple[str, str]] = set()

    def session(self, key: object, make: Callable[[], Any]) -> Any:
        """The session under ``key``, made by ``make()`` the first time."""
        s = self._sessions.get(key)
        if s is None:
            s = self._sessions[key] = make()
        return s

    def sessions(self) -> list[Any]:
        return list(self._sessions.values())

    def counters(self) -> dict[str, int]:
        """Every session's counters, summed."""
        out: dict[str, int] = {}
        for s in self._sessions.values():
            for k, v in s.counters().items():
                out[k] = out.get(k, 0) + v
        return out


class Meter(ABC):
    """One meter on a :class:`Line`, as every protocol presents it."""

    def __init__(self, line: Line, ref: MeterRef, capabilities: Capabilities) -> None:
        self.line = line
        self.ref = ref
        self.capabilities = capabilities

    @property
    def meter_id(self) -> str:
        return self.ref.meter_id

    @property
    @abstractmethod
    def address(self) -> str:
        """The address as the meter answers with it (normalised)."""

    @property
    @abstractmethod
    def requests(self) -> int:
        """Requests sent on this meter's session so far (for round-trip counts)."""

    # ---- reading

    @abstractmethod
    async def read(self, quantities: Sequence[str], opts: CallOptions = DEFAULT) -> MeterRead:
        """The ``quantities``, keeping every value read; a quantity that fails does not
        lose the others.  Nothing is retried beyond ``opts.retries`` per request."""

    async def read_all(self, quantities: Sequence[str], opts: CallOptions = DEFAULT
                       ) -> list[Reading]:
        """All or nothing: the first failure (or refusal) raises."""
        got = await self.read(quantities, opts)
        if got.failed:
            raise next(iter(got.failed.values()))
        if got.refused:
            raise Unsupported(f"meter {self.meter_id}: refuses {', '.join(got.refused)}",
                              address=self.address)
        return got.readings

    async def ping(self, opts: CallOptions = DEFAULT) -> None:
        """One request, nothing kept: does the meter answer at all?"""
        first = next(iter(sorted(self.capabilities.quantities)), None)
        if first is None:
            raise Unsupported(f"meter {self.meter_id}: nothing to ask", address=self.address)
        await self.read_all([self.ping_quantity or first], opts)

    @property
    def ping_quantity(self) -> str | None:
        """The quantity a liveness check reads (None: the first it offers)."""
        return None

    # ---- relay

    def relay_plan(self, action: str, *, direct_close: bool = False) -> RelayPlan:
        """How ``action`` is done and verified here; :class:`Unsupported` if it is not."""
        raise Unsupported(f"meter {self.meter_id}: no relay control", address=self.address)

    async def relay_state(self, opts: CallOptions = DEFAULT) -> RelayState:
        raise Unsupported(f"meter {self.meter_id}: the relay state cannot be read",
                          address=self.address)

    async def relay(self, plan: RelayPlan, credentials: Credentials | None = None,
                    opts: CallOptions = DEFAULT) -> None:
        """Send the command of ``plan`` (see :meth:`relay_plan`); returns on the meter's
        acknowledgement.  Never retried.  The state is read back by the caller."""
        raise Unsupported(f"meter {self.meter_id}: no relay control", address=self.address)

    def check_credentials(self, plan: RelayPlan, credentials: Credentials | None) -> None:
        """ValueError for credentials the command cannot be built with (before any I/O)."""
        return None

    def secret_of(self, credentials: Credentials | None) -> str:
        """The text a detail must never show (the password), if any."""
        return ""

    async def write_topup(self, order: TopupOrder, security: Any,
                          opts: CallOptions = DEFAULT) -> TopupResult:
        """Write a purchase into the meter through ``security`` (a
        :class:`drivers.security.SecurityModule`) and read back whether it took."""
        raise Unsupported(f"meter {self.meter_id}: keeps no balance a top-up can be "
                          "written into", address=self.address)

    def billing_energy(self) -> str | None:
        """The energy quantity read around a switching (None: none)."""
        direction = billing_energy(self.capabilities.quantities)
        return None if direction is None else f"energy_active_{direction}_total"

    @property
    def protocol(self) -> str:
        """The protocol's name in relay outcomes and records (one for every edition)."""
        return self.ref.kind

    @property
    def retries(self) -> int:
        """Extra attempts a read gets when its options do not say (the line's default)."""
        return 0

    async def read_number(self, quantity: str, opts: CallOptions = DEFAULT) -> float | None:
        """One quantity in one request (plus ``opts.retries``), never asked a second time:
        its number (None: not a number).  The failure raises as it came (a reply from
        another meter stays a :class:`~drivers.errors.WrongReply`)."""
        got = await self.read_all([quantity], opts)
        return got[0].value if got else None

    # ---- daily freezes

    async def freeze_time(self, n: int, opts: CallOptions = DEFAULT) -> dt.datetime:
        """When daily freeze ``n`` (1 = the latest) was taken, meter local time."""
        raise Unsupported(f"meter {self.meter_id}: keeps no daily freezes",
                          address=self.address)

    async def read_freeze(self, n: int, opts: CallOptions = DEFAULT,
                          *, tz: dt.tzinfo | None = None, on: dt.date | None = None) -> Freeze:
        """Daily freeze ``n``: its time and its energies (one request each), in one go so a
        freeze taken meanwhile cannot mix days.  ``tz``: the meter's zone (readings'
        ``meter_ts`` in UTC); ``on``: the day expected (a freeze taken on another day is
        returned without readings, its energies not asked for)."""
        raise Unsupported(f"meter {self.meter_id}: keeps no daily freezes",
                          address=self.address)

    # ---- event records

    def event_kinds(self) -> frozenset[str]:
        """The event kinds whose records this meter keeps (empty: none)."""
        return frozenset()

    async def read_events(self, wanted: Mapping[str, int], opts: CallOptions = DEFAULT,
                          *, tz: dt.tzinfo | None = None) -> EventsRead:
        """The latest ``wanted[kind]`` records of each kind (one request each; fewer when
        the meter holds fewer).  ``tz``: the meter's zone (None: the collector's)."""
        raise Unsupported(f"meter {self.meter_id}: keeps no event records",
                          address=self.address)
    # ---- load curves

    async def read_curve(self, quantities: Sequence[str], start: dt.datetime,
                         end: dt.datetime, opts: CallOptions = DEFAULT,
                         *, tz: dt.tzinfo | None = None) -> CurveRead:
        """The load-curve points of ``quantities`` from ``start`` up to ``end`` (meter
        local time, naive; ``end`` excluded) that the meter holds; ``tz``: the meter's
        zone (None: the collector's).  Quantities outside ``capabilities.curve`` are
        refused without I/O."""
        raise Unsupported(f"meter {self.meter_id}: keeps no load curve", address=self.address)

    # ---- the clock

    async def read_clock(self, clock: Callable[[], float],
                         opts: CallOptions = DEFAULT) -> ClockRead:
        """The meter's clock, timed with ``clock`` (epoch seconds)."""
        raise Unsupported(f"meter {self.meter_id}: its clock cannot be read",
                          address=self.address)

    def clock_group(self) -> object | None:
        """Meters of one bus with the same group are set by one broadcast (None: this meter
        cannot be set by amic)."""
        return None

    async def broadcast_time(self, when: dt.datetime, opts: CallOptions = DEFAULT) -> None:
        """Set the clock of every meter of this meter's :meth:`clock_group` on the bus to
        ``when`` (meter local time).  Nothing answers."""
        raise Unsupported(f"meter {self.meter_id}: its clock cannot be set",
                          address=self.address)

    def broadcast_bytes(self) -> int:
        """Bytes of a time broadcast on the wire (for timing it to the second)."""
        return 0


class MeterKind(ABC):
    """A protocol as the collector sees it: capabilities and meters of one ledger
    protocol name."""

    name: str

    @abstractmethod
    def capabilities(self, ref: MeterRef) -> Capabilities:
        """What a meter of this kind (and profile) offers; no I/O."""

    @abstractmethod
    def open(self, line: Line, ref: MeterRef) -> Meter:
        """The meter ``ref`` on ``line`` (cheap; sessions are the line's)."""

    @abstractmethod
    def address_key(self, address: str) -> str:
        """``address`` as this kind normalises it (ValueError if it cannot be one)."""

    def needs_profile(self) -> bool:
        return False

    def fixed_capabilities(self) -> Capabilities:
        """What every meter of this kind offers whatever its profile (no I/O, no ref):
        enough to tell whether it has a clock or keeps daily freezes."""
        return Capabilities(frozenset())

    def frame_family(self) -> str | None:
        """The raw frames a gateway may forward for meters of this kind; meters of one
        family share one address space (None: no raw frames)."""
        return None

    def decode_reply(self, frame: Any) -> Any:
        """A raw reply of :meth:`frame_family` as this kind's meters send it: the message
        (a refusal included); :class:`Unsupported` for a message that is no read reply of
        this kind, ValueError (or the codec's error) for one that does not decode."""
        raise Unsupported(f"{self.name}: no raw frames")


__all__ = [
    "RELAY_ACTIONS",
    "Capabilities",
    "ClockRead",
    "Credentials",
    "CurveRead",
    "EventsRead",
    "Freeze",
    "Line",
    "Meter",
    "MeterEvent",
    "MeterKind",
    "MeterRead",
    "MeterRef",
    "RelayAction",
    "RelayPlan",
    "RelayState",
    "Route",
    "Unsupported",
]

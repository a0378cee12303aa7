"""Modbus RTU / Modbus TCP master over a :class:`~drivers.bus.Bus`.

::

    async with TcpBus("10.0.0.7", 502) as bus:
        meter = ModbusSession(bus, framing="tcp")
        words = await meter.read_registers(1, 3, 0x0000, 10)
        values = await meter.read_profile(1, profile, ["voltage_a", "current_a"])

    async with SerialBus("/dev/ttyUSB0", 9600) as bus:      # shared with DL/T645 meters
        meter = ModbusSession(bus, framing="rtu")

The protocol work is :mod:`protocols.modbus` (sans-I/O): requests are built and
replies decoded by its PDU codec, RTU frames carry its CRC-16/MODBUS and are found by
its :class:`~protocols.modbus.ReplyHunter`; Modbus TCP's MBAP header is added here.
The bus does the I/O, so Modbus and DL/T645 meters share one line, one transaction at
a time.

Finding the reply knows the request (a generic hunter would drop frames from other unit
ids silently and lose a good frame after leading garbage):

* ``rtu``: the reply is complete once the length its function implies is in (byte
  count + 5 for reads, 8 for writes, 5 for an exception reply ``function | 0x80``);
  leading garbage is skipped and a candidate with a bad CRC is counted
  (``bad_checksums``) and passed over, so a corrupted reply ends as
  :class:`~drivers.errors.IncompleteReply` after Tb.  Before each request the line
  is held quiet for 3.5 characters (1.75 ms above 19200 baud) when the bus knows its
  baud rate, so a request never runs into the previous frame (of any protocol).
* ``tcp``: MBAP header, transaction id incremented per request; the length comes from
  the header; a frame with an older transaction id (a late reply) is skipped
  (``skipped_frames``); a header that is not Modbus (protocol id, length) is
  :class:`~drivers.errors.BadReply`.

Every reply is checked against its request: a reply from another unit id, or with
another function, or echoing another register or value, raises
:class:`~drivers.errors.WrongReply` (``field`` ``"unit"``, ``"function"``,
``"register"`` or ``"value"``) and its data is never returned; a byte count that does
not match the request is :class:`~drivers.errors.BadReply`.  Errors carry the unit id
as ``address`` (decimal).

Exception replies are typed by what the collector should do about them:

* :class:`ModbusError` (a :class:`~drivers.errors.MeterError`): the device refuses
  (ILLEGAL_FUNCTION, ILLEGAL_DATA_ADDRESS, ILLEGAL_DATA_VALUE, SERVER_DEVICE_FAILURE,
  NEGATIVE_ACKNOWLEDGE, MEMORY_PARITY_ERROR, unknown codes);
* :class:`ModbusBusy` (a :class:`~drivers.errors.ReplyError`): ACKNOWLEDGE,
  SERVER_DEVICE_BUSY: try again later, the quantity is not refused;
* :class:`GatewayNoReply` (a :class:`~drivers.errors.NoReply`): a gateway reports
  GATEWAY_PATH_UNAVAILABLE or GATEWAY_TARGET_DEVICE_FAILED_TO_RESPOND: the meter
  behind it did not answer.

Reads are retried ``retries`` times after :class:`~drivers.errors.NoReply` (including
:class:`GatewayNoReply`), :class:`~drivers.errors.BadReply`,
:class:`~drivers.errors.WrongReply` and :class:`~drivers.errors.LinkDown`; writes and
relay commands are never retried.  On ``rtu`` a write to unit 0 is a broadcast: sent,
not awaited.
"""

from __future__ import annotations

import asyncio
import struct
from collections.abc import Iterable
from dataclasses import dataclass, field
from decimal import Decimal
from time import monotonic
from typing import Literal
from weakref import WeakKeyDictionary

from protocols.modbus import (
    COIL_ON,
    FrameKind,
    ModbusPdu,
    Profile,
    ReplyHunter,
    RtuError,
    decode_block,
    parse_pdu,
    plan_reads,
    read_request_pdu,
    relay_readback_block,
    relay_state,
    relay_write,
    rtu_frame,
    write_coil_pdu,
    write_register_pdu,
)
from protocols.modbus import EXCEPTION_NAMES as EXCEPTION_NAMES
from protocols.modbus import MAX_READ_COUNT as MAX_READ_COUNT
from protocols.modbus import exception_name as exception_name

from .bus import Bus
from .errors import (
    BadReply,
    DriverError,
    IncompleteReply,
    LinkDown,
    MeterError,
    NoReply,
    ReplyError,
    UnknownQuantity,
    WrongReply,
)
from .options import DEFAULT, CallOptions

Framing = Literal["rtu", "tcp"]


@dataclass(slots=True)
class ProfileRead:
    """What :meth:`ModbusSession.read_profile_each` got: ``values`` by name in the order
    asked, ``failed`` the names not read with their errors (after retries), ``answered``
    whether the device replied anything (an exception reply counts)."""

    values: dict[str, Decimal] = field(default_factory=dict)
    failed: dict[str, DriverError] = field(default_factory=dict)
    answered: bool = False


_BUSY_CODES = frozenset({0x05, 0x06})
_GATEWAY_CODES = frozenset({0x0A, 0x0B})

_FUNCTION_NAMES = {3: "holding", 4: "input"}
_READ_FUNCTIONS = frozenset(_FUNCTION_NAMES)
_MBAP_HEADER = 7  # transaction id, protocol id, length, unit id
_MBAP = struct.Struct(">HHHB")
_MAX_PDU = 253

# RTU: (bus.transactions, monotonic time) at the end of the last Modbus transaction.
_QUIET_SINCE: WeakKeyDictionary[Bus, tuple[int, float]] = WeakKeyDictionary()


# ---- errors ------------------------------------------------------------------------------

class ModbusError(MeterError):
    """An exception reply by which the device refuses the request.

    ``code`` is the exception code, ``exception`` its name (``ILLEGAL_DATA_ADDRESS``),
    also the only member of ``errors``; ``function`` the request's function code,
    ``unit`` the unit id.
    """

    def __init__(self, message: str, *, unit: int, function: int, code: int) -> None:
        name = exception_name(code)
        super().__init__(message, address=str(unit), function=function, code=code,
                         errors=(name,))
        self.unit = unit
        self.exception = name


class ModbusBusy(ReplyError):
    """ACKNOWLEDGE or SERVER_DEVICE_BUSY: the device cannot take the request now.

    Not a refusal: the same request may succeed later.  Attributes as
    :class:`ModbusError`.
    """

    def __init__(self, message: str, *, unit: int, function: int, code: int) -> None:
        super().__init__(message, address=str(unit))
        self.unit = unit
        self.function = function
        self.code = code
        self.exception = exception_name(code)
        self.errors = (self.exception,)


class GatewayNoReply(NoReply):
    """A gateway's exception reply 0A/0B: the device behind it could not be reached.

    Attributes as :class:`~drivers.errors.NoReply`, plus those of :class:`ModbusError`.
    """

    def __init__(self, message: str, *, unit: int, function: int, code: int) -> None:
        super().__init__(message, address=str(unit))
        self.unit = unit
        self.function = function
        self.code = code
        self.exception = exception_name(code)
        self.errors = (self.exception,)


EXCEPTION_REPLIES = (ModbusError, ModbusBusy, GatewayNoReply)
"""Every error raised for an exception reply, for ``except EXCEPTION_REPLIES``."""


# ---- finding the reply in the bytes received (sans-I/O) ----------------------------------

class _Garbage(Exception):
    """Internal: bytes that cannot be the reply (raised through Bus.transaction)."""


@dataclass(slots=True)
class _Request:
    """One request: its unit id, its PDU, and what the reply must echo."""

    unit: int
    function: int
    pdu: bytes
    count: int = 0  # registers asked (reads)
    address: int = 0  # 05/06
    value: int = 0  # 05/06: the value written (coil: FF00/0000)
    transaction_id: int = 0


class _RtuReply(ReplyHunter):
    """Completion for one RTU request (see :class:`protocols.modbus.ReplyHunter`)."""

    __slots__ = ()
    skipped = 0  # RTU has no transaction ids: nothing is skipped as late


class _TcpReply:
    """Completion for one Modbus TCP request: the MBAP frame of its transaction id."""

    __slots__ = ("buffer", "garbage", "pdu", "pos", "skipped", "tid", "unit")
    bad_checksums = 0  # TCP has no CRC

    def __init__(self, tid: int) -> None:
        self.buffer = bytearray()
        self.unit = -1
        self.pdu = b""
        self.garbage = 0  # bytes received around the reply
        self.skipped = 0  # well-formed frames that answer an earlier request
        self.tid = tid
        self.pos = 0

    def feed(self, chunk: bytes) -> bool:
        buf = self.buffer
        buf += chunk
        while len(buf) - self.pos >= _MBAP_HEADER:
            tid, pid, length = struct.unpack_from(">HHH", buf, self.pos)
            if pid != 0:
                raise _Garbage(f"MBAP protocol id {pid}, not 0 (Modbus)")
            if not 2 <= length <= _MAX_PDU + 1:
                raise _Garbage(f"MBAP length {length} is not 2-{_MAX_PDU + 1}")
            end = self.pos + 6 + length
            if len(buf) < end:
                return False
            if tid != self.tid:  # the late reply to an earlier request
                self.skipped += 1
                self.garbage += end - self.pos
                self.pos = end
                continue
            self.unit = buf[self.pos + 6]
            self.pdu = bytes(buf[self.pos + _MBAP_HEADER : end])
            self.garbage += len(buf) - end
            return True
        return False


# ---- the session ---------------------------------------------------------------------------

class ModbusSession:
    """Talks Modbus (RTU or TCP framing) to the devices of one bus; holds no connection.

    ``framing``: ``"rtu"`` on serial lines and RTU-over-TCP serial servers, ``"tcp"``
    for Modbus TCP (MBAP); ``retries``: extra attempts of a read after no reply, an
    unusable reply or a dropped link; ``td``/``tb``: per-session reply timeouts (None:
    the bus's).

    Counters (plain attributes): ``requests``, ``retried``, ``no_replies``,
    ``meter_errors`` (exception replies of any kind), ``wrong_replies``,
    ``bad_replies``, ``frames`` (replies found), ``garbage_bytes``, ``bad_checksums``
    (RTU CRC errors), ``skipped_frames`` (TCP replies to earlier requests).
    """

    def __init__(
        self,
        bus: Bus,
        *,
        framing: Framing,
        retries: int = 1,
        td: float | None = None,
        tb: float | None = None,
    ) -> None:
        if framing not in ("rtu", "tcp"):
            raise ValueError(f"framing {framing!r} is not 'rtu' or 'tcp'")
        if retries < 0:
            raise ValueError(f"retries {retries} must not be negative")
        self.bus = bus
        self.framing: Framing = framing
        self.retries = retries
        self.td = td
        self.tb = tb
        self._tid = 0
        self.requests = 0
        self.retried = 0
        self.no_replies = 0
        self.meter_errors = 0
        self.wrong_replies = 0
        self.bad_replies = 0
        self.frames = 0
        self.garbage_bytes = 0
        self.bad_checksums = 0
        self.skipped_frames = 0

    def counters(self) -> dict[str, int]:
        return {
            "requests": self.requests, "retried": self.retried, "no_replies": self.no_replies,
            "meter_errors": self.meter_errors, "wrong_replies": self.wrong_replies,
            "bad_replies": self.bad_replies, "frames": self.frames,
            "garbage_bytes": self.garbage_bytes, "bad_checksums": self.bad_checksums,
            "skipped_frames": self.skipped_frames,
        }

    def __repr__(self) -> str:
        return f"<ModbusSession {self.framing} on {self.bus.name}>"

    # ---- registers and coils -------------------------------------------------------------

    async def read_registers(self, unit: int, function: int, start: int, count: int, *,
                             opts: CallOptions = DEFAULT) -> list[int]:
        """03 (holding) or 04 (input): ``count`` registers from ``start``, as 0-65535."""
        _check_unit(unit, self.framing, broadcast=False)
        if function not in _READ_FUNCTIONS:
            raise ValueError(f"function {function!r} is not 3 (holding) or 4 (input registers)")
        if start < 0:
            raise ValueError(f"registers {start}+{count} do not fit 0-65535")
        request = _Request(unit, function, read_request_pdu(function, start, count), count)
        reply = await self._exchange(
            request, f"read {count} {_FUNCTION_NAMES[function]} registers at {start}",
            self.retries if opts.retries is None else opts.retries, opts)
        return list(reply.values)

    async def write_coil(self, unit: int, address: int, on: bool, *,
                         opts: CallOptions = DEFAULT) -> None:
        """05: set a coil on (FF00) or off (0000); returns on the device's echo."""
        _check_unit(unit, self.framing, broadcast=True)
        _check_address(address, "coil")
        request = _Request(unit, 5, write_coil_pdu(address, bool(on)), address=address,
                           value=COIL_ON if on else 0)
        await self._exchange(request, f"write coil {address} {'on' if on else 'off'}", 0,
                             opts)

    async def write_register(self, unit: int, address: int, value: int, *,
                             opts: CallOptions = DEFAULT) -> None:
        """06: write one holding register (0-65535); returns on the device's echo."""
        _check_unit(unit, self.framing, broadcast=True)
        _check_address(address, "register")
        if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= 0xFFFF:
            raise ValueError(f"register value {value!r} is not 0-65535")
        request = _Request(unit, 6, write_register_pdu(address, value), address=address,
                           value=value)
        await self._exchange(request, f"write register {address} = {value}", 0, opts)

    # ---- profiles --------------------------------------------------------------------------

    async def read_profile(self, unit: int, profile: Profile, names: Iterable[str], *,
                           opts: CallOptions = DEFAULT) -> dict[str, Decimal]:
        """The named quantities of a device described by ``profile``, in ``names`` order.

        One request per block of :func:`protocols.modbus.plan_reads`; all or nothing: the
        first failure raises (:meth:`read_profile_each` keeps the rest).  A name the
        profile lacks raises :class:`~drivers.errors.UnknownQuantity` before any I/O.
        """
        result = await self.read_profile_each(unit, profile, names, opts=opts)
        if result.failed:
            raise next(iter(result.failed.values()))
        return result.values

    async def read_profile_each(self, unit: int, profile: Profile, names: Iterable[str], *,
                                opts: CallOptions = DEFAULT) -> ProfileRead:
        """Like :meth:`read_profile`, but a block that fails does not lose the others.

        Every block is tried (each with its ``retries``); its quantities fail with its
        error.  When the device is silent (no reply byte, or the link is down) before it
        answered anything, the rest is not tried and fails with the same error.
        """
        wanted = [names] if isinstance(names, str) else list(dict.fromkeys(names))
        for name in wanted:
            try:
                profile.register(name)
            except KeyError:
                raise UnknownQuantity(f"profile {profile.name}: no register for {name!r}"
                                      ) from None
        values: dict[str, Decimal] = {}
        failed: dict[str, DriverError] = {}
        answered = False
        silent: DriverError | None = None
        for block in plan_reads(profile, wanted):
            names_here = [r.name for r in block.registers]
            if silent is not None:
                failed.update(dict.fromkeys(names_here, silent))
                continue
            try:
                words = await self.read_registers(unit, block.function, block.start,
                                                  block.count, opts=opts)
            except (NoReply, ReplyError, LinkDown) as e:
                if isinstance(e, ReplyError | IncompleteReply):
                    answered = True
                elif not answered:
                    silent = e
                failed.update(dict.fromkeys(names_here, e))
                continue
            answered = True
            try:
                values.update(decode_block(block, words))
            except (ValueError, ArithmeticError) as e:
                self.bad_replies += 1
                failed.update(dict.fromkeys(names_here, BadReply(
                    f"unit {unit}: registers {block.start}+{block.count} do not decode per "
                    f"{profile.name}: {e}", address=str(unit))))
        return ProfileRead({name: values[name] for name in wanted if name in values},
                           {name: failed[name] for name in wanted if name in failed},
                           answered)

    async def relay(self, unit: int, profile: Profile, trip: bool, *,
                    opts: CallOptions = DEFAULT) -> None:
        """Trip (open) or close the relay as ``profile.relay`` says.  Not retried.

        The device does not report the relay moving: read :meth:`relay_open` afterwards.
        """
        if profile.relay is None:
            raise ValueError(f"profile {profile.name}: the device has no relay control")
        function, address, value = relay_write(profile, trip)
        if function == 5:
            await self.write_coil(unit, address, bool(value), opts=opts)
        else:
            await self.write_register(unit, address, value, opts=opts)

    async def relay_open(self, unit: int, profile: Profile, *,
                         opts: CallOptions = DEFAULT) -> bool:
        """Whether the relay is open, from the profile's read-back register."""
        block = relay_readback_block(profile)
        if block is None:
            raise ValueError(f"profile {profile.name}: the relay state cannot be read back")
        words = await self.read_registers(unit, block.function, block.start, block.count,
                                          opts=opts)
        try:
            state = relay_state(profile, words)
        except ValueError as e:
            self.bad_replies += 1
            raise BadReply(f"unit {unit}: relay state: {e}", address=str(unit)) from e
        if state is None:  # pragma: no cover - relay_readback_block said there is one
            raise ValueError(f"profile {profile.name}: the relay state cannot be read back")
        return state

    # ---- one exchange --------------------------------------------------------------------

    async def _exchange(self, request: _Request, what: str, retries: int,
                        opts: CallOptions) -> ModbusPdu:
        if self.framing == "rtu" and request.unit == 0:  # broadcast: nothing answers
            async with self.bus.exclusive():
                await self._frame_gap()
                self.requests += 1
                wire = rtu_frame(0, request.pdu)
                try:
                    await self.bus.send(wire)
                finally:  # the line is busy until the frame is out
                    self._line_quiet(self.bus.tx_time(len(wire)))
            return ModbusPdu(FrameKind.REQUEST, request.function, request.address, 1,
                             (request.value,))
        for attempt in range(retries + 1):
            try:
                return await self._exchange_once(request, what, opts)
            except (NoReply, BadReply, WrongReply, LinkDown):
                if attempt >= retries:
                    raise
                self.retried += 1
        raise AssertionError("unreachable")  # pragma: no cover

    async def _exchange_once(self, request: _Request, what: str, opts: CallOptions
                             ) -> ModbusPdu:
        if self.framing == "rtu" and self.bus.tx_time(1) > 0:
            async with self.bus.exclusive():  # no other frame between the gap and ours
                await self._frame_gap()
                return await self._transact(request, what, opts)
        return await self._transact(request, what, opts)  # the bus takes the line itself

    async def _transact(self, request: _Request, what: str, opts: CallOptions) -> ModbusPdu:
        unit = request.unit
        function = request.function
        reply: _RtuReply | _TcpReply
        if self.framing == "rtu":
            reply = _RtuReply(function)
            wire = rtu_frame(unit, request.pdu)
        else:
            self._tid = self._tid % 0xFFFF + 1
            request.transaction_id = self._tid
            reply = _TcpReply(self._tid)
            wire = _MBAP.pack(self._tid, 0, len(request.pdu) + 1, unit) + request.pdu
        self.requests += 1
        try:
            await self.bus.transaction(wire, reply.feed, td=opts.td or self.td,
                                        tb=opts.tb or self.tb)
        except NoReply as e:
            self.no_replies += 1
            raise _no_reply(e, unit, what, reply.bad_checksums) from e
        except _Garbage as e:
            self.bad_replies += 1
            raise BadReply(f"unit {unit}: bad reply to {what}: {e}", address=str(unit),
                           raw=bytes(reply.buffer)) from None
        finally:
            self._line_quiet()
            self.garbage_bytes += reply.garbage
            self.bad_checksums += reply.bad_checksums
            self.skipped_frames += reply.skipped
        self.frames += 1
        return self._check(request, reply.unit, reply.pdu, what)

    async def _frame_gap(self) -> None:
        """RTU: 3.5 characters of silence before a frame (at least 1.75 ms).

        Only on a bus that knows its baud rate (a serial port, a TCP bus with
        ``line_baud``).  The silence is counted from the end of this module's last
        transaction on the bus if nothing else used the bus since; otherwise (a
        DL/T645 session, say) it is waited in full.
        """
        char = self.bus.tx_time(1)
        if char <= 0:
            return
        gap = max(3.5 * char, 0.00175)
        last = _QUIET_SINCE.get(self.bus)
        if last is not None and last[0] == self.bus.transactions:
            gap -= monotonic() - last[1]
        if gap > 0:
            await asyncio.sleep(gap)

    def _line_quiet(self, after: float = 0.0) -> None:
        if self.framing == "rtu":
            _QUIET_SINCE[self.bus] = (self.bus.transactions, monotonic() + after)

    def _check(self, request: _Request, unit: int, pdu: bytes, what: str) -> ModbusPdu:
        """The decoded reply, if it answers ``request``; else the typed error."""
        expected = request.unit
        function = request.function
        if unit != expected:
            self.wrong_replies += 1
            raise WrongReply(f"unit {expected}: reply to {what} comes from unit {unit}",
                             address=str(expected), field="unit", expected=str(expected),
                             got=str(unit))
        if not pdu:
            self.bad_replies += 1
            raise BadReply(f"unit {unit}: empty reply to {what}", address=str(unit))
        got = pdu[0]
        if got == function | 0x80:
            if len(pdu) != 2:
                self.bad_replies += 1
                raise BadReply(f"unit {unit}: exception reply to {what} of {len(pdu)} bytes",
                               address=str(unit), raw=pdu)
            self.meter_errors += 1
            raise _exception(unit, function, pdu[1], what)
        if got != function:
            self.wrong_replies += 1
            raise WrongReply(f"unit {unit}: reply to {what} has function {got:02X}",
                             address=str(unit), field="function", expected=f"{function:02X}",
                             got=f"{got:02X}")
        if function in _READ_FUNCTIONS:
            count = 2 * request.count
            if len(pdu) < 2 or pdu[1] != count or len(pdu) != count + 2:
                self.bad_replies += 1
                counted = pdu[1] if len(pdu) > 1 else 0
                raise BadReply(f"unit {unit}: reply to {what} has {counted} data bytes "
                               f"({len(pdu) - 2} sent), expected {count}",
                               address=str(unit), raw=pdu)
        elif len(pdu) != 5:
            self.bad_replies += 1
            raise BadReply(f"unit {unit}: reply to {what} has {len(pdu)} bytes, expected 5",
                           address=str(unit), raw=pdu)
        else:  # an echo that differs is a wrong reply, whatever it holds
            self._check_echo(request, pdu, what)
        try:
            return parse_pdu(pdu, FrameKind.RESPONSE)
        except RtuError as e:
            self.bad_replies += 1
            raise BadReply(f"unit {unit}: bad reply to {what}: {e.problem}",
                           address=str(unit), raw=pdu) from e

    def _check_echo(self, request: _Request, pdu: bytes, what: str) -> None:
        """05/06 replies echo the request's address and value."""
        unit = request.unit
        address = int.from_bytes(pdu[1:3], "big")
        if address != request.address:
            self.wrong_replies += 1
            raise WrongReply(f"unit {unit}: reply to {what} is for register "
                             f"{address}", address=str(unit), field="register",
                             expected=str(request.address), got=str(address))
        sent = request.value
        echoed = int.from_bytes(pdu[3:5], "big")
        if echoed != sent:
            self.wrong_replies += 1
            raise WrongReply(f"unit {unit}: reply to {what} echoes value {echoed:#06x}",
                             address=str(unit), field="value", expected=f"{sent:04X}",
                             got=f"{echoed:04X}")


def _check_unit(unit: int, framing: Framing, *, broadcast: bool) -> None:
    if isinstance(unit, bool) or not isinstance(unit, int) or not 0 <= unit <= 255:
        raise ValueError(f"unit id {unit!r} is not 0-255")
    if framing == "rtu":
        if unit > 247:
            raise ValueError(f"unit id {unit} is reserved on a serial line (1-247)")
        if unit == 0 and not broadcast:
            raise ValueError("unit id 0 is the broadcast address: nothing would answer")


def _check_address(address: int, kind: str) -> None:
    if isinstance(address, bool) or not isinstance(address, int) \
            or not 0 <= address <= 0xFFFF:
        raise ValueError(f"{kind} address {address!r} is not 0-65535")


def _exception(unit: int, function: int, code: int, what: str
               ) -> ModbusError | ModbusBusy | GatewayNoReply:
    name = exception_name(code)
    message = f"unit {unit}: exception reply to {what}: {name} ({code:02X})"
    if code in _GATEWAY_CODES:
        return GatewayNoReply(message, unit=unit, function=function, code=code)
    if code in _BUSY_CODES:
        return ModbusBusy(message, unit=unit, function=function, code=code)
    return ModbusError(message, unit=unit, function=function, code=code)


def _no_reply(e: NoReply, unit: int, what: str, bad_crc: int) -> NoReply:
    if isinstance(e, IncompleteReply):
        detail = f"{len(e.received)} bytes"
        if bad_crc:
            detail += f", {bad_crc} frame{'s' if bad_crc > 1 else ''} with a bad CRC"
        return IncompleteReply(
            f"unit {unit}: incomplete reply to {what} ({detail}; silence > Tb "
            f"{e.seconds * 1000:.0f} ms)",
            timeout=e.timeout, seconds=e.seconds, received=e.received, address=str(unit))
    return NoReply(f"unit {unit}: no reply to {what} within {e.seconds * 1000:.0f} ms",
                   timeout=e.timeout, seconds=e.seconds, received=e.received,
                   address=str(unit))


__all__ = [
    "EXCEPTION_NAMES",
    "EXCEPTION_REPLIES",
    "MAX_READ_COUNT",
    "Framing",
    "GatewayNoReply",
    "ModbusBusy",
    "ModbusError",
    "ModbusSession",
    "ProfileRead",
    "exception_name",
]

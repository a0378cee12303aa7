"""DL/T645-2007 / -1997 master over a :class:`~drivers.bus.Bus`.

::

    async with TcpBus("10.0.0.7", 10001) as bus:
        meter = Dlt645Session(bus)
        reading = await meter.read("000000000123", "voltage_a")
        readings = await meter.read_many("000000000123", ["voltage_a", "voltage_b"])

Every reply is checked by :class:`protocols.dlt645.Master` against its request
(address, function, DI): a reply from another meter or to another request raises
:class:`~drivers.errors.WrongReply` and its data is never returned.  Follow-up frames
are fetched and joined transparently.  Reads are retried ``retries`` times after
:class:`~drivers.errors.NoReply`, :class:`~drivers.errors.BadReply`,
:class:`~drivers.errors.WrongReply` and :class:`~drivers.errors.LinkDown` (the retry
reconnects, after the bus's back-off); writes and relay commands are never retried.  A
whole reply frame with a wrong checksum (a garbled reply) fails at once as
:class:`~drivers.errors.BadReply`, without waiting out Tb for another.
:meth:`Dlt645Session.read_each` keeps every value of a multi-quantity read that succeeded.
"""

from __future__ import annotations

import datetime as dt
import inspect
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass, field, replace
from typing import Any

from protocols.dlt645 import (
    AbnormalReply,
    Ack,
    DataItem,
    DLT645Error,
    ExtractorStats,
    Master,
    Message,
    ReadAddressReply,
    ReadAddressRequest,
    ReadFollowUpReply,
    ReadFollowUpRequest,
    ReadReply,
    ReadRequest,
    RelayCommand,
    RemoteControlRequest,
    ReplyMismatch,
    SecurityReply,
    SecurityRequest,
    TimeSyncRequest,
    UnknownDataItem,
    Value,
    Version,
    WriteRequest,
    by_name,
    decode_value,
    encode_value,
    items,
    lookup,
    security_error_names,
    value_to_json,
)
from protocols.quantities import QUANTITIES, WILDCARD_ADDRESS, normalise_address

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

EncryptHook = Callable[[str, bytes], bytes | Awaitable[bytes]]
"""``encrypt(meter_address, n1_to_n8) -> ciphertext`` (plain or async), for ESAM meters."""

Quantity = int | str
"""A DI (int) or a quantity name of :mod:`protocols.quantities`."""


@dataclass(frozen=True, slots=True)
class DataValue:
    """One data item's value as one meter gave it (before it becomes a
    :class:`~protocols.readings.Reading` of a quantity).

    ``address`` is the meter that answered (its real address even if the request used
    wildcards); ``di`` the quantity's DI (for a block member without a DI of its own,
    the block's); ``item`` its catalogue entry, None for a DI the catalogue does not
    know (``value`` is then the data bytes in hex); ``raw`` the value bytes as received
    (without +33H); ``timestamp`` the meter-side time the value refers to (frozen or
    load-profile data), None for live values.
    """

    address: str
    di: int
    item: DataItem | None
    value: Value
    raw: bytes
    version: Version = Version.V2007
    timestamp: dt.datetime | None = None

    @property
    def name(self) -> str:
        return self.item.name if self.item is not None else f"di_{self.di_hex}"

    @property
    def unit(self) -> str:
        return self.item.unit if self.item is not None else ""

    @property
    def di_hex(self) -> str:
        return f"{self.di:04X}" if self.version is Version.V1997 else f"{self.di:08X}"

    def members(self) -> list[DataValue]:
        """A block reading split into one reading per member present; else ``[self]``."""
        item = self.item
        if item is None or not item.is_block or not isinstance(self.value, dict):
            return [self]
        out: list[DataValue] = []
        pos = 0
        for m in item.members:
            if m.name not in self.value:
                break
            own = lookup(m.di, self.version)
            di = m.di if own is not None and own.name == m.name else self.di
            out.append(DataValue(self.address, di, m, self.value[m.name],
                               self.raw[pos : pos + m.size], self.version, self.timestamp))
            pos += m.size
        return out

    def as_json(self) -> dict[str, Any]:
        """``{name, di, value, unit}`` with a JSON-friendly value (plus settlement if any)."""
        out: dict[str, Any] = {"name": self.name, "di": self.di_hex,
                               "value": value_to_json(self.value), "unit": self.unit}
        if self.item is not None and self.item.settlement:
            out["settlement"] = self.item.settlement
        if self.timestamp is not None:
            out["timestamp"] = self.timestamp.isoformat()
        return out


# Reads of one meter that may fail before any valid reply, before the rest is given up:
# two, so a noisy line (a few garbled replies) never loses a meter, while a meter that
# only garbles or answers as another address costs two reads, not one per quantity.
GIVE_UP_AFTER = 2


@dataclass(slots=True)
class ReadResult:
    """What :meth:`Dlt645Session.read_each` got: ``readings`` in the order asked,
    ``failed`` the quantities that failed (after retries) with their errors, ``answered``
    whether the meter replied anything at all (an error reply counts)."""

    readings: list[DataValue] = field(default_factory=list)
    failed: list[tuple[Quantity, DriverError]] = field(default_factory=list)
    answered: bool = False
    # whether any reply was valid (a value, or the meter's own error answer): a meter
    # that only garbles or answers as another address gave nothing valid
    valid: bool = False


# ---- what to send for a quantity ---------------------------------------------------------

@dataclass(frozen=True, slots=True)
class _Target:
    di: int | None  # its own DI; None: readable only through ``block``
    item: DataItem | None
    block: DataItem | None  # a block that holds it, for reading several at once


def _block_index() -> tuple[dict[tuple[Version, int], DataItem],
                            dict[tuple[Version, str], tuple[DataItem, DataItem]]]:
    of_di: dict[tuple[Version, int], DataItem] = {}
    diless: dict[tuple[Version, str], tuple[DataItem, DataItem]] = {}
    for version in Version:
        for block in items(version):
            if not block.is_block:
                continue
            for m in block.members:
                own = lookup(m.di, version)
                if own is not None and own.name == m.name:
                    of_di.setdefault((version, m.di), block)
                elif not block.settlement:
                    # The catalogue gives some members no DI of their own (the daily
                    # freeze energies): they can only be read through their block.
                    diless.setdefault((version, m.name), (block, m))
    return of_di, diless


_BLOCK_OF, _ONLY_IN_BLOCK = _block_index()


def _di_text(di: int, version: Version) -> str:
    return f"{di:04X}" if version is Version.V1997 else f"{di:08X}"


def _target(quantity: Quantity, version: Version) -> _Target:
    if isinstance(quantity, bool) or not isinstance(quantity, (int, str)):
        raise UnknownQuantity(f"{quantity!r} is neither a DI nor a quantity name")
    if isinstance(quantity, int):
        limit = 0xFFFF if version is Version.V1997 else 0xFFFFFFFF
        if not 0 <= quantity <= limit:
            raise UnknownQuantity(f"DI {quantity:#x} does not fit a DL/T645-{version} DI")
        item = lookup(quantity, version)
        return _Target(quantity, item, _BLOCK_OF.get((version, quantity)))
    try:
        item = by_name(quantity, version)
    except UnknownDataItem:
        pass
    else:
        return _Target(item.di, item, _BLOCK_OF.get((version, item.di)))
    found = _ONLY_IN_BLOCK.get((version, quantity))
    if found is not None:
        return _Target(None, found[1], found[0])
    if quantity in QUANTITIES:
        raise UnknownQuantity(f"quantity {quantity!r} has no DL/T645-{version} data identifier")
    raise UnknownQuantity(f"unknown quantity {quantity!r}")


def resolve_quantity(quantity: Quantity, version: Version = Version.V2007) -> DataItem | None:
    """The catalogue entry that reading ``quantity`` yields (None for an unknown raw DI).

    :class:`UnknownQuantity` if it cannot be read with this edition.  No I/O: use it to
    check a list of quantities before opening a bus.
    """
    return _target(quantity, version).item


def _what(target: _Target, version: Version) -> str:
    di = target.di if target.di is not None else target.block.di if target.block else 0
    name = target.item.name if target.item is not None else None
    return f"{name} ({_di_text(di, version)})" if name else _di_text(di, version)


# ---- the session -----------------------------------------------------------------------

class Dlt645Session:
    """Talks DL/T645 to the meters of one bus.  Holds no connection of its own.

    ``version``: the edition of the meters (one session per edition on mixed buses);
    ``preamble``: FE wake-up bytes before each request; ``td``/``tb``: per-session reply
    timeouts (None: the bus's); ``retries``: extra attempts of a read after no reply, an
    unusable reply or a dropped link; ``max_follow_ups``: limit on follow-up frames of
    one read.

    Counters (plain attributes): ``requests``, ``retried``, ``no_replies``,
    ``meter_errors``, ``wrong_replies``, ``bad_replies``;
    ``extractor_stats`` counts the garbage bytes and bad checksums seen.
    """

    def __init__(
        self,
        bus: Bus,
        *,
        version: Version = Version.V2007,
        preamble: int = 4,
        td: float | None = None,
        tb: float | None = None,
        retries: int = 1,
        max_follow_ups: int = 64,
    ) -> None:
        if not 0 <= preamble <= 16:
            raise ValueError(f"preamble {preamble} is not 0-16 FE bytes")
        if retries < 0:
            raise ValueError(f"retries {retries} must not be negative")
        self.bus = bus
        self.version = Version(version)
        self.td = td
        self.tb = tb
        self.retries = retries
        self.max_follow_ups = max_follow_ups
        self.master = Master(preamble=preamble)
        # Blocks a meter refused: (address, block DI); read member by member from then on.
        self.blocks_refused: set[tuple[str, int]] = set()
        self.requests = 0
        self.retried = 0
        self.no_replies = 0
        self.meter_errors = 0
        self.wrong_replies = 0
        self.bad_replies = 0

    @property
    def extractor_stats(self) -> ExtractorStats:
        return self.master.extractor.stats

    def counters(self) -> dict[str, int]:
        s = self.master.extractor.stats
        return {
            "requests": self.requests, "retried": self.retried, "no_replies": self.no_replies,
            "meter_errors": self.meter_errors, "wrong_replies": self.wrong_replies,
            "bad_replies": self.bad_replies, "frames": s.frames,
            "garbage_bytes": s.garbage_bytes, "bad_checksums": s.bad_checksums,
            "skipped_frames": s.skipped_frames,
        }

    # ---- reading -------------------------------------------------------------------------

    async def read(self, address: str, quantity: Quantity, *,
                   opts: CallOptions = DEFAULT) -> DataValue:
        """Read one DI or named quantity from the meter at ``address``."""
        return (await self.read_many(address, [quantity], opts=opts))[0]

    async def read_many(self, address: str, quantities: Iterable[Quantity], *,
                        opts: CallOptions = DEFAULT) -> list[DataValue]:
        """Read several quantities, in order; block DIs (``...FF..``) save round trips.

        Two or more members of one block are read with the block's DI; if the meter
        refuses the block (abnormal reply) or garbles it, they are read one by one (and a
        refused block is not tried again on that meter).  All or nothing: the first
        failure (in the order of ``quantities``) raises; :meth:`read_each` keeps the rest.
        """
        result = await self.read_each(address, quantities, opts=opts)
        if result.failed:
            raise result.failed[0][1]
        return result.readings

    async def read_each(self, address: str, quantities: Iterable[Quantity], *,
                        opts: CallOptions = DEFAULT) -> ReadResult:
        """Like :meth:`read_many`, but a quantity that fails does not lose the others.

        Every quantity is tried (each with its ``retries``) and what it gave is kept;
        the failures come back with their errors.  One exception: when the meter is
        silent (no reply byte at all, or the link is down) before it answered anything,
        the rest is not tried: they fail with the same error rather than each waiting
        out its own timeout.  Likewise when the first :data:`GIVE_UP_AFTER` reads gave
        nothing valid (only garbled replies or replies from another address): the meter
        is faulty, not the line.  :class:`UnknownQuantity` still raises before any I/O.
        """
        addr = normalise_address(address)
        wanted = list(quantities)
        targets = [_target(q, self.version) for q in wanted]
        results: list[DataValue | DriverError | None] = [None] * len(targets)
        answered = False
        valid = False
        invalid = 0  # reads that failed before any valid reply
        silent: DriverError | None = None  # the meter never answered: give up on it

        def heard(e: DriverError) -> None:
            nonlocal answered, silent, invalid
            if isinstance(e, ReplyError | IncompleteReply):
                answered = True  # something came back: the meter is there
            elif not answered and isinstance(e, NoReply | LinkDown):
                silent = e
            if not valid:
                invalid += 1
                if invalid >= GIVE_UP_AFTER and silent is None:
                    silent = e  # nothing valid from it: the rest would fail alike

        groups: dict[int, list[int]] = {}
        for i, t in enumerate(targets):
            if t.block is not None and (t.di is None
                                        or (addr, t.block.di) not in self.blocks_refused):
                groups.setdefault(t.block.di, []).append(i)
        for block_di, members in groups.items():
            needs_block = any(targets[i].di is None for i in members)
            distinct = {targets[i].di for i in members}
            if len(distinct) < 2 and not needs_block:
                continue
            if silent is not None:
                break
            block = targets[members[0]].block
            assert block is not None
            names = dict.fromkeys(t.item.name for i in members if (t := targets[i]).item)
            label = f"{', '.join(names)} (block {block.di_hex})"
            try:
                reading = await self._read_one(addr, _Target(block.di, block, None), opts,
                                               label)
            except MeterError as e:
                answered = valid = True
                if needs_block:
                    for i in members:
                        results[i] = e
                    continue
                # Not every meter offers every block: read its members one by one, now
                # and from now on.
                self.blocks_refused.add((addr, block_di))
                continue
            except BadReply as e:
                heard(e)
                if needs_block:
                    for i in members:
                        results[i] = e
                continue
            except (NoReply, WrongReply, LinkDown) as e:
                heard(e)
                for i in members:
                    results[i] = e  # already retried: its members are not asked singly
                continue
            answered = valid = True
            parts = {r.name: r for r in reading.members()}
            for i in members:
                item = targets[i].item
                assert item is not None
                part = parts.get(item.name)
                if part is None and targets[i].di is None:
                    results[i] = BadReply(f"meter {reading.address}: block {block.di_hex} "
                                          f"({block.name}) lacks {item.name}",
                                          address=reading.address)
                    continue
                results[i] = part
        out = ReadResult()
        for i, t in enumerate(targets):
            r = results[i]
            if r is None:
                if silent is not None:
                    r = silent
                else:
                    try:
                        r = await self._read_one(addr, t, opts)
                        answered = valid = True
                    except MeterError as e:
                        answered = valid = True  # the meter's own answer: it is there
                        r = e
                    except (NoReply, ReplyError, LinkDown) as e:
                        heard(e)
                        r = e
            if isinstance(r, DataValue):
                out.readings.append(r)
            else:
                out.failed.append((wanted[i], r))
        out.answered = answered
        out.valid = valid
        return out

    async def read_records(self, address: str, di: int, extra: bytes, *,
                           opts: CallOptions = DEFAULT, label: str | None = None) -> bytes:
        """One read whose request carries data after the DI (load records 0610xxxx: NN
        and a start time): the reply's data after the DI, follow-up frames joined,
        undecoded."""
        target = _Target(di, None, None)
        value = await self._read_one(normalise_address(address), target, opts, label,
                                     extra=extra)
        return value.raw

    async def _read_one(self, address: str, target: _Target, opts: CallOptions,
                        label: str | None = None, *, extra: bytes = b"") -> DataValue:
        assert target.di is not None
        di = target.di
        what = f"read {label or _what(target, self.version)}"
        async with self.bus.exclusive():
            reply = await self._exchange(
                ReadRequest(address=address, version=self.version, di=di, extra=extra), what,
                opts)
            if not isinstance(reply, ReadReply):
                raise self._unexpected(address, what, reply)
            body = reply.body
            more = reply.follow_up
            seq = 1
            while more:
                if seq > self.max_follow_ups:
                    self.bad_replies += 1
                    raise BadReply(f"meter {reply.address}: {what}: more than "
                                   f"{self.max_follow_ups} follow-up frames", address=address)
                follow_what = f"{what} follow-up {seq}"
                part = await self._exchange(
                    ReadFollowUpRequest(address=address, version=self.version, di=di,
                                        seq=seq), follow_what, opts)
                if not isinstance(part, ReadFollowUpReply):
                    raise self._unexpected(address, follow_what, part)
                if part.seq is not None and part.seq != seq & 0xFF:
                    self.bad_replies += 1
                    raise BadReply(f"meter {part.address}: {follow_what}: reply has sequence "
                                   f"{part.seq}", address=address)
                body += part.body
                more = part.follow_up
                seq += 1
        item = target.item
        value: Value
        if item is None:
            value = body.hex().upper()
        else:
            try:
                value = decode_value(item, body)
            except DLT645Error as e:
                self.bad_replies += 1
                raise BadReply(f"meter {reply.address}: bad reply to {what}: {e}",
                               address=address) from e
        return DataValue(reply.address, di, item, value, body, self.version)

    async def read_address(self, *, opts: CallOptions = DEFAULT) -> str:
        """The address of the only meter on the line (13 to AAAAAAAAAAAA; 1997: DI C032)."""
        if self.version is Version.V1997:
            reading = await self.read(WILDCARD_ADDRESS, "meter_address", opts=opts)
            return reading.address
        reply = await self._exchange(ReadAddressRequest(), "read address", opts)
        if not isinstance(reply, ReadAddressReply):
            raise self._unexpected(WILDCARD_ADDRESS, "read address", reply)
        return reply.meter_address

    # ---- commands ----------------------------------------------------------------------

    async def broadcast_time(self, when: dt.datetime) -> None:
        """08 to 999999999999: set every meter's clock to ``when`` (meter local time).

        Nothing answers a broadcast; meters accept it about once a day and only within
        some minutes of their own clock.
        """
        request = TimeSyncRequest(when=when, version=self.version)
        _check_request(request)
        async with self.bus.exclusive():
            wire = self.master.send(request)
            self.requests += 1
            await self.bus.send(wire)

    async def remote_control(
        self,
        address: str,
        command: RelayCommand | int,
        *,
        password: str,
        operator: str = "00000000",
        expiry: dt.datetime,
        encrypt: EncryptHook | None = None,
        opts: CallOptions = DEFAULT,
    ) -> None:
        """1C relay command (trip, close, alarm, hold power ...); returns on the meter's ack.

        ``password`` is ``LLPPPPPP`` (level then code), ``expiry`` the command's expiry
        (meter local time).  ``encrypt(address, n1_to_n8)`` may replace the 8 plain bytes
        N1..N8 by ciphertext (ESAM meters); it may be a coroutine function.  The meter does
        not report the relay moving: read ``status_word_3`` afterwards.  Not retried.
        """
        addr = normalise_address(address)
        request = RemoteControlRequest(address=addr, password=password, operator=operator,
                                       command=command, expiry=expiry)
        data = _check_request(request)
        if encrypt is not None:
            result = encrypt(addr, data[8:])
            cipher = await result if inspect.isawaitable(result) else result
            if not isinstance(cipher, (bytes, bytearray)) or not cipher:
                raise ValueError("remote control: encrypt hook must return non-empty bytes")
            request = replace(request, ciphertext=bytes(cipher))
            _check_request(request)
        name = command.name.lower() if isinstance(command, RelayCommand) else f"{command:02X}"
        reply = await self._exchange(request, f"remote control {name}", opts, retries=0)
        if not isinstance(reply, Ack):
            raise self._unexpected(addr, f"remote control {name}", reply)

    async def write(
        self,
        address: str,
        quantity: Quantity,
        value: Value | bytes,
        *,
        password: str,
        operator: str = "00000000",
        opts: CallOptions = DEFAULT,
    ) -> None:
        """14 / 04: write ``value`` (encoded per the catalogue, or raw ``bytes``).  Not retried."""
        addr = normalise_address(address)
        target = _target(quantity, self.version)
        if target.di is None:
            raise UnknownQuantity(f"{quantity!r} has no DI of its own to write to")
        if isinstance(value, bytes):
            body = value
        elif target.item is None:
            raise ValueError(f"DI {_di_text(target.di, self.version)} is not in the catalogue: "
                             f"give the value as bytes")
        else:
            try:
                body = encode_value(target.item, value)
            except DLT645Error as e:
                raise ValueError(str(e)) from None
        request = WriteRequest(address=addr, version=self.version, di=target.di,
                               password=password, operator=operator, body=body)
        _check_request(request)
        what = f"write {_what(target, self.version)}"
        reply = await self._exchange(request, what, opts, retries=0)
        if not isinstance(reply, Ack):
            raise self._unexpected(addr, what, reply)

    async def security(self, address: str, di: int, payload: bytes, *,
                       operator: str = "00000000", opts: CallOptions = DEFAULT) -> bytes:
        """03: one security operation (identity authentication, remote top-up ...) with
        the payload a security module made; the reply's payload.  Not retried.  A refusal
        is a :class:`MeterError` whose ``errors`` are the SERR bits
        (:data:`protocols.dlt645.SECURITY_ERROR_BITS`)."""
        addr = normalise_address(address)
        request = SecurityRequest(address=addr, version=self.version, di=di,
                                  operator=operator, payload=payload)
        _check_request(request)
        what = f"security {di:08X}"
        try:
            reply = await self._exchange(request, what, opts, retries=0)
        except MeterError as e:
            names = security_error_names(e.code) or ("no_error_bits",)
            raise MeterError(f"meter {e.address} refused {what}: {', '.join(names)}",
                             address=e.address, function=e.function, code=e.code,
                             errors=names) from None
        if not isinstance(reply, SecurityReply) or reply.di != di:
            raise self._unexpected(addr, what, reply)
        return reply.payload

    # ---- one exchange --------------------------------------------------------------------

    async def _exchange(self, request: Message, what: str, opts: CallOptions, *,
                        retries: int | None = None) -> Message:
        if retries is None:
            retries = self.retries if opts.retries is None else opts.retries
        attempts = 1 + retries
        for attempt in range(attempts):
            try:
                return await self._exchange_once(request, what, opts)
            except (NoReply, BadReply, WrongReply, LinkDown):
                if attempt + 1 >= attempts:
                    raise
                self.retried += 1
        raise AssertionError("unreachable")  # pragma: no cover

    async def _exchange_once(self, request: Message, what: str, opts: CallOptions
                             ) -> Message:
        master = self.master
        got: list[Message] = []
        stats = master.extractor.stats

        def complete(chunk: bytes) -> bool:
            master.receive_data(chunk)
            reply = master.next_reply()
            if reply is None:
                if stats.bad_checksums > bad_before:
                    # A whole frame arrived with a wrong checksum: that was the reply,
                    # garbled.  Waiting out Tb for another would only cost bus time.
                    raise _Garbled
                return False
            got.append(reply)
            return True

        address = request.address
        async with self.bus.exclusive():
            wire = master.send(request)
            junk_before = stats.garbage_bytes + stats.bad_checksums
            bad_before = stats.bad_checksums
            self.requests += 1
            try:
                await self.bus.transaction(wire, complete, td=opts.td or self.td,
                                           tb=opts.tb or self.tb)
            except NoReply as e:
                master.cancel()
                self.no_replies += 1
                junk = stats.garbage_bytes + stats.bad_checksums - junk_before
                raise _no_reply(e, address, what, junk) from e
            except _Garbled:
                master.cancel()
                self.bad_replies += 1
                raise BadReply(f"meter {address}: garbled reply to {what} (bad checksum)",
                               address=address) from None
            except ReplyMismatch as e:
                master.cancel()
                self.wrong_replies += 1
                raise WrongReply(
                    f"meter {address}: reply to {what} has {e.field} {e.got}, "
                    f"expected {e.expected}",
                    address=address, field=e.field, expected=e.expected, got=e.got,
                ) from e
            except DLT645Error as e:
                master.cancel()
                self.bad_replies += 1
                raise BadReply(f"meter {address}: bad reply to {what}: {e}", address=address,
                               raw=master.extractor.last_raw) from e
            except BaseException:
                master.cancel()
                raise
        reply = got[0]
        if isinstance(reply, AbnormalReply):
            self.meter_errors += 1
            names = reply.errors or ("no_error_bits",)
            raise MeterError(
                f"meter {reply.address} refused {what}: {', '.join(names)}",
                address=reply.address, function=reply.request_function, code=reply.error,
                errors=reply.errors,
            )
        return reply

    def _unexpected(self, address: str, what: str, reply: Message) -> BadReply:
        self.bad_replies += 1
        return BadReply(f"meter {reply.address}: unexpected {type(reply).__name__} to {what}",
                        address=address, raw=self.master.extractor.last_raw)


class _Garbled(Exception):
    """The reply frame arrived with a wrong checksum (ends the transaction early)."""


def _no_reply(e: NoReply, address: str, what: str, junk: int) -> NoReply:
    if isinstance(e, IncompleteReply):
        detail = f"{len(e.received)} bytes"
        if junk:
            detail += f", {junk} of them not a valid frame"
        return IncompleteReply(
            f"meter {address}: incomplete reply to {what} ({detail}; silence > Tb "
            f"{e.seconds * 1000:.0f} ms)",
            timeout=e.timeout, seconds=e.seconds, received=e.received, address=address)
    return NoReply(f"meter {address}: no reply to {what} within {e.seconds * 1000:.0f} ms",
                   timeout=e.timeout, seconds=e.seconds, received=e.received, address=address)


def _check_request(request: Message) -> bytes:
    """The request's data field; argument mistakes (password format ...) as ValueError."""
    try:
        return request.data()
    except DLT645Error as e:
        raise ValueError(str(e)) from None


__all__ = ["DataValue", "Dlt645Session", "EncryptHook", "Quantity", "ReadResult",
           "resolve_quantity"]

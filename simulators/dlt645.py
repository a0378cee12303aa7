"""A DL/T645-2007 / -1997 meter: request frames in, reply frames out, no I/O.

:class:`SimulatedMeter` answers with the values of a :class:`~simulators.meter.MeterModel`.
It behaves like a meter on a bus: frames for other meters and replies are ignored,
broadcasts are never answered, and no input makes it raise.
"""

from __future__ import annotations

import datetime as dt
import logging
from collections import Counter, deque
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from decimal import Decimal
from typing import Any

from protocols.dlt645 import (
    DI_AUTHENTICATE,
    DI_TOPUP,
    AbnormalReply,
    Ack,
    AuthChallenge,
    ChangeBaudReply,
    ChangeBaudRequest,
    ChangePasswordReply,
    ChangePasswordRequest,
    ClearDemandRequest,
    ClearEventsRequest,
    ClearMeterRequest,
    CurveItem,
    DataItem,
    Format,
    Frame,
    FreezeRequest,
    Function1997,
    Function2007,
    Message,
    PayloadError,
    ReadAddressReply,
    ReadAddressRequest,
    ReadFollowUpReply,
    ReadFollowUpRequest,
    ReadReply,
    ReadRequest,
    RelayCommand,
    RemoteControlRequest,
    SecurityReply,
    SecurityRequest,
    TimeSyncRequest,
    TopupPayload,
    Version,
    WriteAddressRequest,
    WriteRequest,
    address_matches,
    curve_item,
    decode_message,
    decode_value,
    encode_curve,
    encode_record,
    encode_value,
    lookup,
    parse_curve_request,
    record_of,
)
from protocols.dlt645 import DLT645Error as _CodecError
from protocols.quantities import BROADCAST_ADDRESS

from .esam import SERR_AUTH, SERR_OTHER, Esam, EsamRefused
from .esam import expiry_of as _expiry_of
from .meter import Clock, MeterConfig, MeterModel, Unavailable

_log = logging.getLogger(__name__)

# Error bits of an abnormal reply (the same bits in both editions).
ERR_OTHER = 0x01
ERR_NO_DATA = 0x02
ERR_PASSWORD = 0x04
ERR_BAUD = 0x08

# Feature byte of 17 / 0C: bit n set selects this rate.
BAUD_BITS: dict[int, int] = {1: 600, 2: 1200, 3: 2400, 4: 4800, 5: 9600, 6: 19200}
SUPPORTED_BAUDS = (1200, 2400, 4800, 9600)

DEFAULT_PASSWORDS = ("02000000", "04000000")
# Highest (numerically largest) password level each kind of operation accepts; 0 is
# the most privileged level.
WRITE_MAX_LEVEL = 4
CONTROL_MAX_LEVEL = 2
CLEAR_MAX_LEVEL = 2

# Shortest data field of each request (version, function).  protocols.dlt645 parses
# short fields without complaint (its compiled construct layouts do not check lengths),
# so a meter checks them first, as a real one would before acting.
_MIN_DATA: dict[tuple[Version, int], int] = {
    (Version.V2007, 0x08): 6, (Version.V2007, 0x11): 4, (Version.V2007, 0x12): 5,
    (Version.V2007, 0x14): 12, (Version.V2007, 0x15): 6, (Version.V2007, 0x16): 4,
    (Version.V2007, 0x17): 1, (Version.V2007, 0x18): 12, (Version.V2007, 0x19): 8,
    (Version.V2007, 0x1A): 8, (Version.V2007, 0x1B): 12, (Version.V2007, 0x1C): 8,
    (Version.V1997, 0x01): 2, (Version.V1997, 0x02): 2, (Version.V1997, 0x04): 6,
    (Version.V1997, 0x08): 6, (Version.V1997, 0x0A): 6, (Version.V1997, 0x0C): 1,
    (Version.V1997, 0x0F): 8,
}
# Writable clock items: (version, DI).
_CLOCK_ITEMS = {
    (Version.V2007, 0x04000101), (Version.V2007, 0x04000102), (Version.V2007, 0x0400010C),
    (Version.V1997, 0xC010), (Version.V1997, 0xC011),
}
# 1B event DIs (DI3 DI2) and the model counter they clear.
_EVENT_GROUPS = {0x0311: "power_down", 0x0330: "cover_open"}


def parse_password(text: str) -> tuple[int, str]:
    """``LLPPPPPP`` (level, then six digits) as (level, code); ValueError if malformed."""
    t = text.strip().upper()
    if len(t) != 8 or any(c not in "0123456789ABCDEF" for c in t):
        raise ValueError(f"password {text!r}: expected 8 hex digits, level then code "
                         "(e.g. 02123456)")
    return int(t[:2], 16), t[2:]


@dataclass(frozen=True, slots=True)
class AuditRecord:
    """One privileged request: meter time, function, operator code, what, and the outcome."""

    when: dt.datetime
    function: int
    operator: str
    action: str
    accepted: bool
    reason: str = ""


@dataclass(slots=True)
class _FollowUp:
    di: int
    chunks: list[bytes]
    next_index: int = 1  # 1997 follow-ups carry no sequence number: count them


class SimulatedMeter:
    """One DL/T645 meter answering frames from ``model``'s state.

    ``max_frame_data`` caps the data field of a reply; longer values go out in follow-up
    frames (bit 0x20, then 12 / 02 requests).  ``baud`` is the rate the meter listens at
    (17 / 0C change it, after the reply).
    """

    def __init__(
        self,
        model: MeterModel,
        *,
        version: Version | str = Version.V2007,
        passwords: Iterable[str] = DEFAULT_PASSWORDS,
        max_frame_data: int = 200,
        baud: int = 2400,
        time_sync_window: dt.timedelta = dt.timedelta(minutes=10),
        time_sync_once_a_day: bool = True,
        esam: Esam | None = None,
    ) -> None:
        self.model = model
        self.esam = esam  # cost-control ESAM: top-ups (and encrypted relay) after auth
        self.version = Version(version)
        self.passwords: dict[int, str] = dict(parse_password(p) for p in passwords)
        # 2007 follow-ups need room for the DI, one value byte and the sequence byte.
        minimum = 7 if self.version is Version.V2007 else 3
        if not minimum <= max_frame_data <= 255:
            raise ValueError(f"max_frame_data: {minimum}-255 bytes")
        self.max_frame_data = max_frame_data
        self.baud = baud
        self.time_sync_window = time_sync_window
        self.time_sync_once_a_day = time_sync_once_a_day
        self.counters: Counter[str] = Counter()
        self.audit: deque[AuditRecord] = deque(maxlen=200)
        codes = Function2007 if self.version is Version.V2007 else Function1997
        self._functions = frozenset(int(f) for f in codes)
        self._follow: _FollowUp | None = None
        self._last_sync: dt.date | None = None
        self._handlers: dict[type[Message], Callable[[Any], Frame | None]] = {
            ReadRequest: self._read,
            ReadFollowUpRequest: self._read_follow_up,
            ReadAddressRequest: self._read_address,
            WriteRequest: self._write,
            WriteAddressRequest: self._write_address,
            TimeSyncRequest: self._time_sync,
            FreezeRequest: self._freeze,
            ChangeBaudRequest: self._change_baud,
            ChangePasswordRequest: self._change_password,
            ClearDemandRequest: self._clear_demand,
            ClearMeterRequest: self._clear_meter,
            ClearEventsRequest: self._clear_events,
            RemoteControlRequest: self._remote_control,
            SecurityRequest: self._security,
        }

    @property
    def address(self) -> str:
        return self.model.address

    def __repr__(self) -> str:
        return f"SimulatedMeter({self.address}, DL/T645-{self.version})"

    # ---- entry --------------------------------------------------------------------------

    def handle(self, frame: Frame) -> Frame | None:
        """The reply to ``frame``, or None when a meter stays silent.  Never raises."""
        try:
            return self._handle(frame)
        except Exception:
            # A simulator bug must not take the whole bus down: log it, stay silent.
            _log.exception("meter %s: internal error on %r", self.address, frame)
            self.counters["internal_errors"] += 1
            return None

    def _handle(self, frame: Frame) -> Frame | None:
        if frame.is_reply:
            return None  # another meter's reply (or an echo) on the shared line
        broadcast = frame.address == BROADCAST_ADDRESS
        if not broadcast and not address_matches(frame.address, self.address):
            return None
        if frame.function not in self._functions:
            self.counters["unsupported"] += 1
            return None  # not this edition's code: a meter stays silent
        self.counters["requests"] += 1
        try:
            if len(frame.data) < _MIN_DATA.get((self.version, frame.function), 0):
                raise PayloadError("data field too short")
            message = decode_message(frame, self.version)
        except Exception:
            # Malformed data (PayloadError; the codec also lets an IndexError out for
            # some short fields): the meter says "other error".
            self.counters["malformed"] += 1
            return None if broadcast else self._abnormal(frame.function, ERR_OTHER)
        if broadcast:
            # Broadcasts are never answered; time sync is the only one a meter acts on.
            self.counters["broadcasts"] += 1
            if isinstance(message, TimeSyncRequest):
                self._time_sync(message)
            return None
        handler = self._handlers.get(type(message))
        if handler is None:
            return self._abnormal(frame.function, ERR_OTHER)
        reply = handler(message)
        if reply is not None:
            self.counters["abnormal" if reply.abnormal else "replies"] += 1
        return reply

    # ---- helpers -------------------------------------------------------------------------

    def _abnormal(self, function: int, error: int) -> Frame:
        return AbnormalReply(address=self.address, version=self.version,
                             request_function=function, error=error).to_frame()

    def _ack(self, function: int) -> Frame:
        return Ack(address=self.address, version=self.version, ack_function=function).to_frame()

    def _authorised(self, password: str, max_level: int) -> bool:
        try:
            level, code = parse_password(password)
        except ValueError:
            return False
        return level <= max_level and self.passwords.get(level) == code

    def _record(self, function: int, operator: str, action: str, accepted: bool,
                reason: str = "") -> None:
        self.audit.append(AuditRecord(self.model.now(), function, operator, action, accepted,
                                      reason))

    def _value_bytes(self, item: DataItem) -> bytes:
        """Encoded value of ``item``; Unavailable if the model cannot answer it."""
        if item.format is Format.BLOCK:
            # Members the meter lacks end the block early (e.g. phases B, C of a
            # single-phase meter), as real meters send shorter blocks.
            out = b""
            for member in item.members:
                try:
                    value = self.model.read(member.name, item.settlement,
                                            freeze=item.freeze)
                except Unavailable:
                    break
                out += encode_value(member, value)
            if not out:
                raise Unavailable(item.name)
            return out
        return encode_value(item, self.model.read(item.name, item.settlement,
                                                  freeze=item.freeze))

    def _curve_bytes(self, curve: CurveItem, extra: bytes) -> bytes:
        """A load-record reply body (0610xxxx by given time and count); Unavailable when
        the meter has no point there or does not measure the DI's quantities."""
        start, count = parse_curve_request(extra)
        points = self.model.curve(start, count)
        if not points:
            raise Unavailable(f"load record {curve.di:08X} from {start}")
        wanted = curve.quantities
        values = [v for _, v in points]
        if any(v is not None and any(q not in v for q in wanted) for v in values):
            raise Unavailable(f"load record {curve.di:08X}: {', '.join(wanted)}")
        self.counters["curve_reads"] += 1
        return encode_curve(curve, points[0][0], values)

    # ---- reads ---------------------------------------------------------------------------

    def _read(self, msg: ReadRequest) -> Frame:
        self._follow = None
        item = lookup(msg.di, self.version)
        curve = curve_item(msg.di) if self.version is Version.V2007 else None
        if item is None and curve is None:
            return self._read_record(msg)
        try:
            if curve is not None:
                body = self._curve_bytes(curve, msg.extra)
            else:
                assert item is not None
                body = self._value_bytes(item)
        except Unavailable:
            return self._abnormal(msg.function, ERR_NO_DATA)
        except (PayloadError, ValueError):
            # The value does not fit the item's format (e.g. a register overflow).
            return self._abnormal(msg.function, ERR_OTHER)
        room = self.max_frame_data - (4 if self.version is Version.V2007 else 2)
        if len(body) <= room:
            return ReadReply(address=self.address, version=self.version, di=msg.di,
                             body=body).to_frame()
        # Too long for one frame: the first part now, the rest on follow-up requests.
        rest = body[room:]
        step = room - (1 if self.version is Version.V2007 else 0)  # 2007 appends a seq
        self._follow = _FollowUp(msg.di, [rest[i:i + step] for i in range(0, len(rest), step)])
        self.counters["follow_up_started"] += 1
        return ReadReply(address=self.address, version=self.version, di=msg.di,
                         body=body[:room], follow_up=True).to_frame()

    def _read_record(self, msg: ReadRequest) -> Frame:
        """An event record (an empty slot reads as zeros, as meters send it)."""
        found = record_of(msg.di) if self.version is Version.V2007 else None
        if found is None:
            return self._abnormal(msg.function, ERR_NO_DATA)
        layout, n = found
        body = encode_record(self.model.event_record(layout.kind, n), layout.kind)
        return ReadReply(address=self.address, version=self.version, di=msg.di,
                         body=body).to_frame()

    def _read_follow_up(self, msg: ReadFollowUpRequest) -> Frame:
        pending = self._follow
        if pending is None or pending.di != msg.di:
            return self._abnormal(msg.function, ERR_NO_DATA)
        if self.version is Version.V2007:
            # Any sequence number already produced may be asked again (a retry).
            index = msg.seq
            seq: int | None = msg.seq
        else:
            index = pending.next_index
            seq = None
            pending.next_index += 1
        if not 1 <= index <= len(pending.chunks):
            return self._abnormal(msg.function, ERR_NO_DATA)
        return ReadFollowUpReply(address=self.address, version=self.version, di=msg.di,
                                 body=pending.chunks[index - 1], seq=seq,
                                 follow_up=index < len(pending.chunks)).to_frame()

    def _read_address(self, msg: ReadAddressRequest) -> Frame:
        return ReadAddressReply(address=self.address, meter_address=self.address).to_frame()

    # ---- clock ---------------------------------------------------------------------------

    def _time_sync(self, msg: TimeSyncRequest) -> None:
        now = self.model.now()
        if abs(msg.when - now) > self.time_sync_window:
            self.counters["time_sync_rejected"] += 1
            _log.info("meter %s: time sync to %s refused, meter clock %s", self.address,
                      msg.when, now)
            return None
        if self.time_sync_once_a_day and self._last_sync == now.date():
            self.counters["time_sync_rejected"] += 1
            _log.info("meter %s: second time sync today refused", self.address)
            return None
        self.model.set_clock(msg.when)
        self._last_sync = msg.when.date()
        self.counters["time_sync_accepted"] += 1
        return None

    def _write(self, msg: WriteRequest) -> Frame:
        if not self._authorised(msg.password, WRITE_MAX_LEVEL):
            self._record(msg.function, msg.operator, f"write {msg.di:X}", False, "password")
            return self._abnormal(msg.function, ERR_PASSWORD)
        item = lookup(msg.di, self.version)
        if item is None:
            return self._abnormal(msg.function, ERR_NO_DATA)
        if (self.version, msg.di) not in _CLOCK_ITEMS:
            self._record(msg.function, msg.operator, f"write {item.di_hex}", False, "read-only")
            return self._abnormal(msg.function, ERR_PASSWORD)  # read-only: unauthorised
        try:
            value = decode_value(item, msg.body)
        except PayloadError:
            return self._abnormal(msg.function, ERR_OTHER)
        now = self.model.now()
        if isinstance(value, dt.datetime):
            new = value
        elif isinstance(value, dt.date):
            new = dt.datetime.combine(value, now.time())
        elif isinstance(value, dt.time):
            new = dt.datetime.combine(now.date(), value)
        else:  # pragma: no cover - _CLOCK_ITEMS hold date/time formats only
            return self._abnormal(msg.function, ERR_OTHER)
        self.model.set_clock(new)
        self._record(msg.function, msg.operator, f"write {item.di_hex} -> {new}", True)
        return self._ack(msg.function)

    # ---- configuration ----------------------------------------------------------------------

    def _write_address(self, msg: WriteAddressRequest) -> Frame:
        # A meter takes a new address only in programming mode (its button pressed).
        if not self.model.programming_allowed:
            return self._abnormal(msg.function, ERR_PASSWORD)
        new = msg.new_address
        if not new.isdigit() or new == BROADCAST_ADDRESS:
            return self._abnormal(msg.function, ERR_OTHER)
        self.model.address = new
        return self._ack(msg.function)

    def _freeze(self, msg: FreezeRequest) -> Frame:
        # Freeze records other than the daily one are not simulated.
        return self._abnormal(msg.function, ERR_OTHER)

    def _change_baud(self, msg: ChangeBaudRequest) -> Frame:
        bits = [b for b in range(8) if msg.feature >> b & 1]
        rate = BAUD_BITS.get(bits[0]) if len(bits) == 1 else None
        if rate not in SUPPORTED_BAUDS:
            return self._abnormal(msg.function, ERR_BAUD)
        assert rate is not None
        self.baud = rate  # from the next frame on; this reply still goes at the old rate
        return ChangeBaudReply(address=self.address, version=self.version,
                               feature=msg.feature).to_frame()

    def _change_password(self, msg: ChangePasswordRequest) -> Frame:
        try:
            new_level, new_code = parse_password(msg.new)
        except ValueError:
            return self._abnormal(msg.function, ERR_OTHER)
        if self.version is Version.V2007:
            # 04000C01..04000C0A select levels 0..9.
            if not 0x04000C01 <= msg.di <= 0x04000C0A:
                return self._abnormal(msg.function, ERR_NO_DATA)
            level = (msg.di & 0xFF) - 1
        else:
            level = new_level
        # Only an equal or more privileged password may set a level's password.
        if new_level != level or not self._authorised(msg.old, level):
            self._record(msg.function, "", f"password level {level}", False, "password")
            return self._abnormal(msg.function, ERR_PASSWORD)
        self.passwords[level] = new_code
        self._record(msg.function, "", f"password level {level}", True)
        return ChangePasswordReply(address=self.address, version=self.version,
                                   new=msg.new).to_frame()

    # ---- clearing ---------------------------------------------------------------------------

    def _clear_demand(self, msg: ClearDemandRequest) -> Frame:
        # 1997 sends no password with 10; 2007 sends password and operator.
        if self.version is Version.V2007 and not self._authorised(msg.password,
                                                                   CLEAR_MAX_LEVEL):
            self._record(msg.function, msg.operator, "clear demand", False, "password")
            return self._abnormal(msg.function, ERR_PASSWORD)
        # No demand registers are simulated: there is nothing to reset.
        self._record(msg.function, msg.operator, "clear demand", True)
        return self._ack(msg.function)

    def _clear_meter(self, msg: ClearMeterRequest) -> Frame:
        if not self._authorised(msg.password, CLEAR_MAX_LEVEL):
            self._record(msg.function, msg.operator, "clear meter", False, "password")
            return self._abnormal(msg.function, ERR_PASSWORD)
        self.model.clear_energy()
        self._record(msg.function, msg.operator, "clear meter", True)
        return self._ack(msg.function)

    def _clear_events(self, msg: ClearEventsRequest) -> Frame:
        if not self._authorised(msg.password, CLEAR_MAX_LEVEL):
            self._record(msg.function, msg.operator, "clear events", False, "password")
            return self._abnormal(msg.function, ERR_PASSWORD)
        if msg.di == 0xFFFFFFFF:
            self.model.clear_events("all")
        else:
            group = _EVENT_GROUPS.get(msg.di >> 16)
            if group is None:
                return self._abnormal(msg.function, ERR_NO_DATA)
            self.model.clear_events(group)
        self._record(msg.function, msg.operator, f"clear events {msg.di:08X}", True)
        return self._ack(msg.function)

    # ---- security (03): identity authentication and remote top-up (ESAM) ----------------

    def _security(self, msg: SecurityRequest) -> Frame:
        fn = msg.function
        if self.esam is None:
            self.counters["security_refused"] += 1
            return self._security_error(fn, SERR_OTHER)
        if msg.di == DI_AUTHENTICATE:
            try:
                answer = self.esam.authenticate(self.address, AuthChallenge.parse(msg.payload))
            except (EsamRefused, _CodecError) as e:
                self._record(fn, msg.operator, "authenticate", False, str(e))
                return self._security_error(fn, getattr(e, "serr", SERR_AUTH))
            return SecurityReply(address=self.address, di=msg.di,
                                 payload=answer.payload()).to_frame()
        if msg.di == DI_TOPUP:
            try:
                order = TopupPayload.parse(msg.payload)
                self.esam.check_topup(order, self.model.purchase_count)
                if self.esam.lose_topups > 0:
                    self.esam.lose_topups -= 1
                    return SecurityReply(address=self.address, di=msg.di).to_frame()
                self.model.purchase(Decimal(order.amount_fen) / 100)
            except (EsamRefused, _CodecError, Unavailable) as e:
                self.counters["topups_refused"] += 1
                self._record(fn, msg.operator, "topup", False, str(e))
                return self._security_error(fn, getattr(e, "serr", SERR_OTHER))
            self.counters["topups"] += 1
            self._record(fn, msg.operator, "topup", True,
                         f"{order.amount_fen / 100:.2f} yuan, purchase {order.count}")
            return SecurityReply(address=self.address, di=msg.di).to_frame()
        return self._security_error(fn, SERR_OTHER)

    def _security_error(self, function: int, serr: int) -> Frame:
        return AbnormalReply(address=self.address, version=self.version,
                             request_function=function, error=serr & 0xFF,
                             extra=bytes((serr >> 8 & 0xFF,))).to_frame()

    # ---- remote control -------------------------------------------------------------------

    def _remote_control(self, msg: RemoteControlRequest) -> Frame:
        fn = msg.function
        command = msg.command
        if isinstance(command, RelayCommand):
            name = command.name
        else:
            name = "encrypted" if command is None else f"{command:02X}"

        def refuse(error: int, reason: str) -> Frame:
            self._record(fn, msg.operator, name, False, reason)
            self.counters["control_refused"] += 1
            return self._abnormal(fn, error)

        if msg.ciphertext is not None:
            plain = self.esam.open(msg.ciphertext) if self.esam is not None else None
            if plain is None:
                return refuse(ERR_PASSWORD, "encrypted control needs an ESAM session"
                              if self.esam is not None else "encrypted control needs an ESAM")
            try:
                msg = RemoteControlRequest(
                    address=msg.address, password=msg.password, operator=msg.operator,
                    command=RelayCommand(plain[0]), n2=plain[1],
                    expiry=_expiry_of(plain[2:8]))
            except ValueError:
                return refuse(ERR_OTHER, "ciphertext is not a relay command")
            command = msg.command
            name = command.name if isinstance(command, RelayCommand) else name
        elif self.esam is not None and self.esam.relay_needs_esam:
            return refuse(ERR_PASSWORD, "plain control refused: this meter's ESAM wants "
                                        "ciphertext")
        if not self._authorised(msg.password, CONTROL_MAX_LEVEL):
            return refuse(ERR_PASSWORD, "password")
        if msg.expiry is None or msg.expiry <= self.model.now():
            return refuse(ERR_OTHER, "expired")
        model = self.model
        if command == RelayCommand.TRIP:
            # Under hold power the meter accepts the command but keeps the relay closed:
            # status word 3 tells the master.
            done = model.trip()
            self._record(fn, msg.operator, name, True, "" if done else "hold power")
        elif command == RelayCommand.CLOSE_PERMITTED:
            model.permit_close()
        elif command == RelayCommand.CLOSE_DIRECT:
            model.close()
        elif command == RelayCommand.ALARM:
            model.set_alarm(True)
        elif command == RelayCommand.ALARM_RELEASE:
            model.set_alarm(False)
        elif command == RelayCommand.HOLD_POWER:
            model.set_hold_power(True)
        elif command == RelayCommand.HOLD_POWER_RELEASE:
            model.set_hold_power(False)
        else:
            return refuse(ERR_OTHER, "unknown command")
        if command != RelayCommand.TRIP:
            self._record(fn, msg.operator, name, True)
        self.counters["control_accepted"] += 1
        return self._ack(fn)


def make_meters(
    addresses: Sequence[str],
    *,
    seed: int = 0,
    version: Version | str = Version.V2007,
    passwords: Iterable[str] = DEFAULT_PASSWORDS,
    max_frame_data: int = 200,
    baud: int = 2400,
    time_sync_once_a_day: bool = True,
    config: MeterConfig | None = None,
    clock: Clock | None = None,
) -> list[SimulatedMeter]:
    """One simulated meter per address; each gets its own seed derived from ``seed``."""
    pw = tuple(passwords)
    return [
        SimulatedMeter(MeterModel(a, config, seed=f"{seed}/{a}", clock=clock), version=version,
                       passwords=pw, max_frame_data=max_frame_data, baud=baud,
                       time_sync_once_a_day=time_sync_once_a_day)
        for a in addresses
    ]

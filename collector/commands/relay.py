"""Verified relay switching: send one relay command, then prove it took effect.

Independent of the daemon and of the protocol: the caller owns the bus and hands over a
meter of the device model (:mod:`drivers.device`)::

    async with TcpBus("10.0.0.7", 10001) as bus:
        meter = open_meter(Line(bus), MeterRef("m1", "dlt645-2007", "000000000123"))
        outcome = await execute("trip", meter, Credentials(password="02000000"))
        sys.exit(outcome.exit_code)

Every switching runs the same sequence, whatever the meter speaks (the meter's
:meth:`~drivers.device.Meter.relay_plan` says what is sent and what shows it worked):

1. read the relay state *before* (DL/T645: status word 3: relay open, relay command
   state, pre-trip alarm, hold power; Modbus: the profile's relay readback) and the
   billing energy (a failed energy read is tolerated: ``energy_before`` is None).  If the
   state cannot be read, nothing is sent (``failed``); a trip while hold power (保电) is
   on is not sent either (``refused``, error bit ``hold_power``): the meter would ack it
   and keep the relay closed.  A dry run (``dry_run=True``) stops here (``dry_run``);
2. send the command **once** (never retried);
3. poll the state every ``poll_interval`` until it is the state the action leads to, or
   ``verify_timeout`` (counted from the command) runs out;
4. on confirmation, read the energy again (``energy_at_switch``).

Outcome ``status``:

``confirmed``         the meter reached the expected state (``latency_ms``: command sent
                      to the read that showed it)
``refused``           the meter answered the command abnormally; ``error_bits`` names why
                      (``unauthorised`` for a wrong password, ``other_error`` for an
                      expired command on the simulator, Modbus exception names); or a
                      trip found hold power on at the pre-read (``hold_power``, not sent)
``unconfirmed``       the meter acknowledged (or answered the command from the right
                      address with a reply that does not match it, e.g. a Modbus echo of
                      the relay's old state), but the state did not follow in time (a trip
                      under hold power: the meter acks and keeps the relay closed)
``address_mismatch``  some reply came from another meter (address / unit id): the
                      sequence stopped on the spot and no command more went to the meter;
                      such a reply is never taken as success.  If the command had been
                      sent, the relay state is read once more from the meter's address
                      and reported in ``after`` and the detail
``failed``            no usable state before (nothing sent), or no acknowledgement and the
                      state did not follow
``unsupported``       the meter cannot do this (DL/T645-1997, a Modbus profile without a
                      relay or without a readback, hold power / alarm on Modbus)
``dry_run``           a dry run: the command is possible and the state before was read;
                      nothing sent (a dry run also ends ``failed``, ``unsupported``,
                      ``refused`` for hold power, or ``address_mismatch``, as the real
                      command would)

What is expected of each action (DL/T645, status word 3):

``trip``           1A, relay open (bit 4)
``restore``        1B close permitted: relay command state "close" (bit 6 clear); the
                   relay closes when the customer presses the button, or at once on
                   meters that close by themselves (``relay_closed`` tells); with
                   ``direct_close=True``: 1C direct close, relay closed (bit 4 clear)
``hold``           3A, hold power (bit 12) set; ``release``: 3B, bit 12 clear
``alarm``          2A, pre-trip alarm (bit 7) set; ``alarm_release``: 2B, bit 7 clear

On Modbus, ``trip`` and ``restore`` write the profile's relay coil or register and are
confirmed by its readback.

Every request of a switching goes with ``CallOptions(retries=0)``: reads are retried
here instead (as often as the meter's line retries a read), except after a reply from
another address, which ends the sequence at once.  The session, which polls share,
keeps its own settings.  Argument mistakes (an address with wildcards, a malformed
password) raise :class:`ValueError` before anything is sent.
"""

from __future__ import annotations

import asyncio
import datetime as dt
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field, replace
from typing import Any, Literal, TypeVar, get_args

from drivers.device import Credentials, Meter, RelayState, Unsupported
from drivers.errors import (
    BadReply,
    DriverError,
    LinkDown,
    MeterError,
    NoReply,
    WrongReply,
)
from drivers.options import CallOptions

Action = Literal["trip", "restore", "hold", "release", "alarm", "alarm_release"]
ACTIONS: tuple[Action, ...] = get_args(Action)

Status = Literal["confirmed", "refused", "unconfirmed", "address_mismatch", "failed",
                 "unsupported", "dry_run"]
STATUSES: tuple[Status, ...] = get_args(Status)

EXIT_CONFIRMED = 0
EXIT_REFUSED = 3
EXIT_UNCONFIRMED = 4
EXIT_ADDRESS_MISMATCH = 5
EXIT_FAILED = 6
EXIT_UNSUPPORTED = 7
EXIT_DRY_RUN = 0
EXIT_CODES: dict[Status, int] = {
    "confirmed": EXIT_CONFIRMED,
    "refused": EXIT_REFUSED,
    "unconfirmed": EXIT_UNCONFIRMED,
    "address_mismatch": EXIT_ADDRESS_MISMATCH,
    "failed": EXIT_FAILED,
    "unsupported": EXIT_UNSUPPORTED,
    "dry_run": EXIT_DRY_RUN,
}
"""Process exit code of the relay CLI for each outcome status."""

CHINA_TZ = dt.timezone(dt.timedelta(hours=8), "UTC+08:00")
"""Default meter local time (China Standard Time, no daylight saving)."""

DEFAULT_EXPIRY = dt.timedelta(minutes=5)
DEFAULT_VERIFY_TIMEOUT = 10.0
DEFAULT_POLL_INTERVAL = 0.5
ONCE = CallOptions(retries=0)
"""Every request of a switching: retried here, never by the session."""


def exit_code(outcome: RelayOutcome | str) -> int:
    """The CLI exit code of an outcome (or of a status name); ValueError if unknown."""
    status = outcome.status if isinstance(outcome, RelayOutcome) else outcome
    try:
        return EXIT_CODES[status]  # type: ignore[index]
    except KeyError:
        raise ValueError(f"unknown relay outcome status {status!r}") from None


def command_expiry(expiry: dt.datetime | None = None, *, tz: dt.tzinfo | None = CHINA_TZ,
                   now: dt.datetime | None = None) -> dt.datetime:
    """The expiry sent with a DL/T645 command: naive, in the meter's local time.

    ``expiry`` None: ``now`` (default: the present) + 5 minutes.  An aware ``expiry``
    is converted to ``tz``; a naive one is taken as meter local time already.  ``tz``
    None means the host's local time (meters whose clocks follow the host).
    """
    if expiry is None:
        base = now if now is not None else dt.datetime.now(dt.UTC)
        expiry = base + DEFAULT_EXPIRY
    if expiry.tzinfo is None:
        return expiry.replace(microsecond=0)
    local = expiry.astimezone(tz) if tz is not None else expiry.astimezone()
    return local.replace(tzinfo=None, microsecond=0)


# ---- results -------------------------------------------------------------------------------

@dataclass(slots=True)
class RelayOutcome:
    """The result of one switching; see the module doc for ``status``.

    ``address``: the meter as it answers (12 digits, a Modbus unit id as text);
    ``protocol``: ``dlt645`` or ``modbus`` (:attr:`drivers.device.Meter.protocol`);
    ``command_sent``: the command went on the wire; ``acknowledged``: the meter acked it;
    ``round_trips``: requests sent during the whole sequence; ``detail``: a sentence for
    people (never holds the password).
    """

    action: Action
    address: str
    protocol: str
    status: Status = "failed"
    error_bits: list[str] = field(default_factory=list)
    before: RelayState | None = None
    after: RelayState | None = None
    energy_before: float | None = None
    energy_at_switch: float | None = None
    latency_ms: float | None = None
    round_trips: int = 0
    command_sent: bool = False
    acknowledged: bool = False
    detail: str = ""

    @property
    def relay_closed(self) -> bool | None:
        """The relay's state at the last good read after the command (None: unknown)."""
        if self.after is None or self.after.relay_open is None:
            return None
        return not self.after.relay_open

    @property
    def confirmed(self) -> bool:
        return self.status == "confirmed"

    @property
    def exit_code(self) -> int:
        return EXIT_CODES[self.status]

    def as_dict(self) -> dict[str, Any]:
        """JSON-friendly form (for the CLI's output and audit logs)."""
        return {
            "action": self.action, "address": self.address, "protocol": self.protocol,
            "status": self.status, "error_bits": list(self.error_bits),
            "before": self.before.as_dict() if self.before else None,
            "after": self.after.as_dict() if self.after else None,
            "relay_closed": self.relay_closed,
            "energy_before": self.energy_before, "energy_at_switch": self.energy_at_switch,
            "latency_ms": self.latency_ms, "round_trips": self.round_trips,
            "command_sent": self.command_sent, "acknowledged": self.acknowledged,
            "detail": self.detail,
        }


# ---- the sequence, whatever the protocol ----------------------------------------------------

_T = TypeVar("_T")

class _Foreign(Exception):
    """Internal: a reply came from another meter; the sequence stops."""

    def __init__(self, error: WrongReply, step: str) -> None:
        super().__init__(str(error))
        self.error = error
        self.step = step


def _is_foreign(e: BaseException) -> bool:
    return isinstance(e, WrongReply) and e.field in ("address", "unit")


@dataclass(slots=True)
class _Plan:
    """One switching on one meter: how to read, what to send, what to expect."""

    meter: Meter
    read_state: Callable[[], Awaitable[RelayState]]
    read_energy: Callable[[], Awaitable[float | None]] | None
    send: Callable[[], Awaitable[None]]
    expected: Callable[[RelayState], bool]
    expectation: str  # "relay open", for details
    command: str  # "trip (1A)", for details
    secret: str = ""  # scrubbed from every detail
    trip: bool = False  # not sent under hold power
    dry_run: bool = False  # stop after the state before


async def _guarded(call: Callable[[], Awaitable[_T]], step: str, attempts: int = 1) -> _T:
    """``call()``, retried ``attempts - 1`` times like a driver read; a foreign reply stops."""
    for attempt in range(attempts):
        try:
            return await call()
        except WrongReply as e:
            if _is_foreign(e):
                raise _Foreign(e, step) from e
            if attempt + 1 >= attempts:
                raise
        except (NoReply, BadReply, LinkDown):
            if attempt + 1 >= attempts:
                raise
    raise AssertionError("unreachable")  # pragma: no cover


async def _run(plan: _Plan, out: RelayOutcome, verify_timeout: float,
               poll_interval: float) -> RelayOutcome:
    meter = plan.meter
    first_request = meter.requests
    try:
        # Reads are retried in _guarded (each request once), which stops at a foreign
        # reply; as many attempts as the line gives a read.
        await _sequence(plan, out, verify_timeout, poll_interval, 1 + meter.retries)
    except _Foreign as e:
        out.status = "address_mismatch"
        sent = "after the command was sent" if out.command_sent else "nothing was sent"
        out.detail = (f"{e.step}: reply from {e.error.got} instead of {e.error.expected}; "
                      f"stopped, {sent} and no command more goes to this meter")
        if out.command_sent:
            out.detail += await _reread(plan, out)
    finally:
        out.round_trips = meter.requests - first_request
    if plan.secret:
        out.detail = out.detail.replace(plan.secret, "********")
    return out


async def _reread(plan: _Plan, out: RelayOutcome) -> str:
    """After a foreign reply to a sent command: the real relay state, read (once, no
    command) from the meter's own address into ``out.after``; a sentence on it."""
    try:
        out.after = await _guarded(plan.read_state, "relay state re-read")
    except _Foreign as e:
        return f"; the re-read of the relay state was answered by {e.error.got} too"
    except DriverError as e:
        return f"; the relay state could not be read again: {e}"
    return f"; relay state read again from {out.address}: {_describe(out.after)}"


async def _sequence(plan: _Plan, out: RelayOutcome, verify_timeout: float,
                    poll_interval: float, attempts: int) -> None:
    # 1. Before.
    try:
        out.before = await _guarded(plan.read_state, "relay state before", attempts)
    except DriverError as e:
        out.status = "failed"
        out.detail = f"relay state unreadable, {plan.command} not sent: {e}"
        return
    if plan.trip and out.before.hold_power:
        out.status = "refused"
        out.error_bits = ["hold_power"]
        out.detail = (f"hold power on: {plan.command} not sent (the meter keeps the relay "
                      f"closed until hold power is released); {_describe(out.before)}")
        return
    if plan.dry_run:
        out.status = "dry_run"
        already = f" (already {plan.expectation})" if plan.expected(out.before) else ""
        out.detail = (f"dry run: {plan.command} would be sent{already}; "
                      f"{_describe(out.before)}")
        return
    energy_note = ""
    if plan.read_energy is not None:
        try:
            out.energy_before = await _guarded(plan.read_energy, "energy before", attempts)
        except DriverError as e:
            energy_note = f"; energy before unreadable: {e}"

    # 2. The command, once.
    loop = asyncio.get_running_loop()
    sent_at = loop.time()
    out.command_sent = True
    ack_problem = ""
    answered = False
    try:
        await _guarded(plan.send, f"{plan.command}")
        out.acknowledged = True
    except MeterError as e:
        out.status = "refused"
        out.error_bits = list(e.errors)
        out.detail = f"{plan.command} refused: {e}"
        return
    except WrongReply as e:
        # The meter answered, but not with the ack (a Modbus echo of another value: some
        # devices echo the relay's state); whether it acted, the state will tell.
        answered = True
        ack_problem = f"the reply to the command does not match it ({e})"
    except DriverError as e:
        # No (usable) acknowledgement: the meter may have acted all the same; look.
        ack_problem = f"no acknowledgement ({e})"

    # 3. Verify.
    deadline = sent_at + verify_timeout
    last_error: DriverError | None = None
    while True:
        try:
            state = await _guarded(plan.read_state, "relay state after")
        except DriverError as e:
            last_error = e
        else:
            out.after = state
            if plan.expected(state):
                out.latency_ms = round((loop.time() - sent_at) * 1000, 1)
                break
        remaining = deadline - loop.time()
        if remaining <= 0:
            break
        await asyncio.sleep(min(poll_interval, remaining))

    if out.latency_ms is None:
        out.status = "unconfirmed" if out.acknowledged or answered else "failed"
        why = ack_problem + "; " if ack_problem else ""
        seen = _describe(out.after) if out.after is not None else "the state was never read"
        hint = ""
        if out.after is not None and out.after.hold_power and not plan.expected(out.after):
            hint = "; hold power is on"
        if last_error is not None:
            hint += f"; last read: {last_error}"
        verb = "acknowledged" if out.acknowledged else "sent"
        out.detail = (f"{why}{plan.command} {verb}, but the meter did not show "
                      f"{plan.expectation} within {verify_timeout:g} s: {seen}{hint}"
                      f"{energy_note}")
        return

    # 4. Energy at switching.
    if plan.read_energy is not None:
        try:
            out.energy_at_switch = await _guarded(plan.read_energy, "energy at switching",
                                                  attempts)
        except DriverError as e:
            energy_note += f"; energy at switching unreadable: {e}"
    out.status = "confirmed"
    assert out.after is not None
    via = f" (despite {ack_problem})" if ack_problem else ""
    already = " (already so before the command)" if out.before is not None \
        and plan.expected(out.before) else ""
    out.detail = (f"{plan.command} confirmed{via}: {plan.expectation}{already} after "
                  f"{out.latency_ms:g} ms; {_describe(out.after)}{energy_note}")


def _describe(state: RelayState) -> str:
    parts = []
    if state.relay_open is not None:
        parts.append("relay open" if state.relay_open else "relay closed")
    if state.command_open is not None:
        parts.append(f"command state {'trip' if state.command_open else 'close'}")
    if state.hold_power is not None:
        parts.append(f"hold power {'on' if state.hold_power else 'off'}")
    if state.alarm is not None:
        parts.append(f"alarm {'on' if state.alarm else 'off'}")
    if state.status_word_3 is not None:
        parts.append(f"status word 3 {state.status_word_3:#06x}")
    return ", ".join(parts) or "state unknown"


def _check_action(action: str) -> Action:
    if action not in ACTIONS:
        raise ValueError(f"relay action {action!r}: expected one of {', '.join(ACTIONS)}")
    return action


def _check_timing(verify_timeout: float, poll_interval: float) -> None:
    if not verify_timeout >= 0:
        raise ValueError(f"verify_timeout {verify_timeout!r} must not be negative")
    if not poll_interval > 0:
        raise ValueError(f"poll_interval {poll_interval!r} must be positive")


# ---- the one entry -----------------------------------------------------------------------

async def execute(
    action: Action | str,
    meter: Meter,
    credentials: Credentials | None = None,
    *,
    tz: dt.tzinfo | None = CHINA_TZ,
    direct_close: bool = False,
    verify_timeout: float = DEFAULT_VERIFY_TIMEOUT,
    poll_interval: float = DEFAULT_POLL_INTERVAL,
    dry_run: bool = False,
) -> RelayOutcome:
    """Carry out ``action`` on ``meter`` and verify it (see the module doc).

    ``credentials``: what the meter's relay commands need (its capabilities'
    ``credentials``): password, operator code, expiry (None: now + 5 min; see
    :func:`command_expiry` for ``tz``), ESAM hook; ``direct_close``: ``restore`` closes
    the relay at once where the meter can (DL/T645 1C instead of 1B); ``dry_run``:
    everything but the command.  What the meter cannot do ends ``unsupported``, nothing
    sent; credentials it cannot use raise :class:`ValueError` before any I/O.
    """
    act = _check_action(action)
    _check_timing(verify_timeout, poll_interval)
    out = RelayOutcome(action=act, address=meter.address, protocol=meter.protocol)
    try:
        relay_plan = meter.relay_plan(act, direct_close=direct_close)
    except Unsupported as e:
        out.status = "unsupported"
        out.detail = str(e)
        return out
    if credentials is not None:
        credentials = replace(credentials,
                              expires=command_expiry(credentials.expires, tz=tz))
    meter.check_credentials(relay_plan, credentials)
    energy = meter.billing_energy()

    async def read_state() -> RelayState:
        return await meter.relay_state(ONCE)

    read_energy: Callable[[], Awaitable[float | None]] | None = None
    if energy is not None:
        name = energy

        async def read_energy() -> float | None:
            return await meter.read_number(name, ONCE)

    async def send() -> None:
        await meter.relay(relay_plan, credentials, ONCE)

    plan = _Plan(meter, read_state, read_energy, send, relay_plan.expected,
                 relay_plan.expectation, relay_plan.command,
                 secret=meter.secret_of(credentials), trip=relay_plan.trip, dry_run=dry_run)
    return await _run(plan, out, verify_timeout, poll_interval)


async def read_relay_state(meter: Meter, opts: CallOptions | None = None) -> RelayState:
    """The relay state now (read only); :class:`~drivers.device.Unsupported` where the
    meter cannot tell (its capabilities' ``relay_state``)."""
    return await meter.relay_state(opts or CallOptions())


__all__ = [
    "ACTIONS",
    "CHINA_TZ",
    "DEFAULT_EXPIRY",
    "DEFAULT_POLL_INTERVAL",
    "DEFAULT_VERIFY_TIMEOUT",
    "EXIT_ADDRESS_MISMATCH",
    "EXIT_CODES",
    "EXIT_CONFIRMED",
    "EXIT_DRY_RUN",
    "EXIT_FAILED",
    "EXIT_REFUSED",
    "EXIT_UNCONFIRMED",
    "EXIT_UNSUPPORTED",
    "ONCE",
    "STATUSES",
    "Action",
    "RelayOutcome",
    "RelayState",
    "Status",
    "command_expiry",
    "execute",
    "exit_code",
    "read_relay_state",
]

"""Modbus meters (RTU or TCP framing) in the device model, through their profiles.

Registered as the ledger protocol ``modbus``.  What a meter offers is what its
:class:`~protocols.modbus.Profile` maps: its registers are its quantities, its
``[relay]`` with a readback makes trip and restore verifiable.  Modbus meters keep no
daily freezes and no clock that amic reads or sets.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable, Sequence
from decimal import Decimal
from typing import Final

from protocols.modbus import (
    FrameKind,
    Profile,
    RtuFrame,
    parse_rtu,
    relay_readback_block,
    relay_state,
)
from protocols.readings import Quality, Reading

from .device import (
    Capabilities,
    Credentials,
    Line,
    Meter,
    MeterKind,
    MeterRead,
    MeterRef,
    RelayPlan,
    RelayState,
    Unsupported,
)
from .errors import BadReply, DriverError
from .modbus import ModbusBusy, ModbusError, ModbusSession
from .options import DEFAULT, CallOptions

_RELAY_ACTIONS = frozenset({"trip", "restore"})
ACKNOWLEDGE = 0x05  # exception code: request taken, processing takes long
FRAMES: Final = "modbus"  # RTU replies, whatever the bus's framing


def _profile(ref: MeterRef) -> Profile:
    if ref.profile is None:
        raise ValueError(f"meter {ref.meter_id}: a Modbus meter needs its device profile")
    return ref.profile


def _unit(ref: MeterRef) -> int:
    try:
        unit = int(ref.address)
    except ValueError:
        raise ValueError(f"meter {ref.meter_id}: Modbus unit id {ref.address!r} is not a "
                         "number") from None
    if not 1 <= unit <= 255:
        raise ValueError(f"meter {ref.meter_id}: unit id {unit}: one device (1-255), not "
                         "the broadcast address")
    return unit


class ModbusMeter(Meter):
    """One Modbus device on a line, as its profile describes it."""

    def __init__(self, line: Line, ref: MeterRef, caps: Capabilities) -> None:
        super().__init__(line, ref, caps)
        self.profile = _profile(ref)
        self.unit = _unit(ref)
        self.session: ModbusSession = line.session(
            ("modbus", line.modbus),
            lambda: ModbusSession(line.bus, framing="tcp" if line.modbus == "tcp" else "rtu"))
        self._units = {r.name: r.unit for r in self.profile.registers}

    @property
    def address(self) -> str:
        return str(self.unit)

    @property
    def requests(self) -> int:
        return self.session.requests

    @property
    def ping_quantity(self) -> str | None:
        return self.profile.registers[0].name if self.profile.registers else None

    async def read(self, quantities: Sequence[str], opts: CallOptions = DEFAULT) -> MeterRead:
        """Every value read is kept; what failed is asked once more if the device
        answered anything.  A name the profile lacks is refused, nothing sent for it."""
        got = MeterRead()
        wanted: list[str] = []
        for q in dict.fromkeys(quantities):
            if self.capabilities.offers(q):
                wanted.append(q)
            else:
                got.refused.append(q)
        values: dict[str, Decimal] = {}
        failed: dict[str, DriverError] = {}
        for _ in range(2):  # the first pass, then once more for what failed
            if not wanted:
                break
            result = await self.session.read_profile_each(self.unit, self.profile, wanted,
                                                          opts=opts)
            values.update(result.values)
            got.answered |= result.answered
            got.valid |= bool(result.values) or result.answered
            failed = result.failed
            if not failed or not result.answered:
                break
            wanted = list(failed)
        ts = dt.datetime.now(dt.UTC)
        got.readings = [Reading(self.meter_id, name, float(v), self._units[name], ts, None,
                                Quality.GOOD) for name, v in values.items()]
        got.failed = dict(failed)
        return got

    # ---- relay

    def relay_plan(self, action: str, *, direct_close: bool = False) -> RelayPlan:
        relay = self.profile.relay
        name = self.profile.name
        if action not in _RELAY_ACTIONS:
            raise Unsupported(f"profile {name}: {action} is not available over Modbus",
                              address=self.address)
        if relay is None:
            raise Unsupported(f"profile {name}: the device has no relay control",
                              address=self.address)
        if relay_readback_block(self.profile) is None:
            raise Unsupported(f"profile {name}: the relay state cannot be read back, so a "
                              "switching could not be verified; nothing sent",
                              address=self.address)
        trip = action == "trip"
        value = relay.trip if trip else relay.close
        target = f"coil {relay.address}" if relay.kind == "coil" else f"register {relay.address}"
        expected: Callable[[RelayState], bool] = (
            (lambda s: s.relay_open is True) if trip else (lambda s: s.relay_open is False))
        return RelayPlan(action, f"{'trip' if trip else 'close'} ({target} = {value})",
                         expected, "relay open" if trip else "relay closed", trip=trip,
                         payload=trip)

    async def relay_state(self, opts: CallOptions = DEFAULT) -> RelayState:
        profile, unit = self.profile, self.unit
        block = relay_readback_block(profile)
        if block is None:
            raise Unsupported(f"profile {profile.name}: no relay readback", address=self.address)
        words = await self.session.read_registers(unit, block.function, block.start, 1,
                                                  opts=opts)
        try:
            is_open = relay_state(profile, words)
        except ValueError as e:  # pragma: no cover - the session checked the word count
            raise BadReply(f"unit {unit}: relay state: {e}", address=str(unit)) from e
        if "status_word_3" not in self.capabilities.quantities:
            return RelayState(relay_open=is_open)
        status = profile.register("status_word_3")
        if (status.function, status.address) == (block.function, block.start):
            word = words[0]
        else:
            values = await self.session.read_profile(unit, profile, ["status_word_3"],
                                                     opts=opts)
            word = int(values["status_word_3"])
        return RelayState.from_status_word_3(word, relay_open=is_open)

    async def relay(self, plan: RelayPlan, credentials: Credentials | None = None,
                    opts: CallOptions = DEFAULT) -> None:
        if not isinstance(plan.payload, bool):
            raise ValueError(f"meter {self.meter_id}: not a Modbus relay plan")
        try:
            await self.session.relay(self.unit, self.profile, plan.payload, opts=opts)
        except ModbusBusy as e:
            if e.code == ACKNOWLEDGE:
                return  # taken, carried out slowly: the state read afterwards tells
            # SERVER_DEVICE_BUSY: not taken, a refusal of this command
            raise ModbusError(str(e), unit=e.unit, function=e.function, code=e.code) from e

    @property
    def retries(self) -> int:
        return self.session.retries

    async def read_number(self, quantity: str, opts: CallOptions = DEFAULT) -> float | None:
        if not self.capabilities.offers(quantity):
            raise Unsupported(f"profile {self.profile.name}: no register for {quantity!r}",
                              address=self.address)
        values = await self.session.read_profile(self.unit, self.profile, [quantity],
                                                 opts=opts)
        value = values.get(quantity)
        return None if value is None else float(value)


class ModbusKind(MeterKind):
    """The ledger protocol ``modbus``: a device described by its profile."""

    name = "modbus"

    def capabilities(self, ref: MeterRef) -> Capabilities:
        profile = _profile(ref)
        relay = profile.relay is not None and relay_readback_block(profile) is not None
        return Capabilities(
            quantities=frozenset(r.name for r in profile.registers),
            relay=_RELAY_ACTIONS if relay else frozenset(),
            relay_state=relay_readback_block(profile) is not None,
            block_reads=True,
        )

    def open(self, line: Line, ref: MeterRef) -> ModbusMeter:
        return ModbusMeter(line, ref, self.capabilities(ref))

    def address_key(self, address: str) -> str:
        text = address.strip()
        if not text.isdigit():
            raise ValueError(f"Modbus unit id {address!r} is not a number")
        return str(int(text))

    def needs_profile(self) -> bool:
        return True

    def fixed_capabilities(self) -> Capabilities:
        # A profile adds registers and a relay, never a clock or freezes.
        return Capabilities(frozenset())

    def frame_family(self) -> str:
        return FRAMES

    def decode_reply(self, frame: bytes) -> RtuFrame:
        """An RTU reply (CRC checked first); a Modbus exception reply is a reply too."""
        return parse_rtu(frame, FrameKind.RESPONSE)


MODBUS = ModbusKind()

__all__ = ["FRAMES", "MODBUS", "ModbusKind", "ModbusMeter"]

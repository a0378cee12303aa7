"""Device profiles: a meter's Modbus register map as data, in the shared vocabulary."""

from __future__ import annotations

from dataclasses import dataclass
from decimal import Decimal
from typing import Literal

RegisterType = Literal["int16", "uint16", "int32", "uint32", "float32"]
WordOrder = Literal["big", "little"]  # big: high word first (AB CD); little: low word first
Function = Literal[3, 4]  # read holding registers / read input registers

WORDS: dict[str, int] = {"int16": 1, "uint16": 1, "int32": 2, "uint32": 2, "float32": 2}


@dataclass(frozen=True, slots=True)
class Register:
    """One quantity: ``value = raw * scale`` in ``unit`` (the vocabulary's unit)."""

    name: str  # a quantity name of protocols.quantities
    function: Function
    address: int  # 0-based register address as sent on the wire
    type: RegisterType
    unit: str
    scale: Decimal = Decimal(1)
    word_order: WordOrder = "big"
    public: bool = True  # False: not in the public manual; see ``note``
    note: str = ""

    @property
    def words(self) -> int:
        return WORDS[self.type]

    @property
    def end(self) -> int:
        """One past the last register address this quantity uses."""
        return self.address + self.words


@dataclass(frozen=True, slots=True)
class Unmapped:
    """A register the device's manual lists that carries no quantity (a setting, a code,
    a row nobody could read): the meter answers it, the collector does not read it."""

    function: Function
    address: int
    words: int = 1
    writable: bool = False
    low: int = 0  # the values a write may set (writable registers; one word each)
    high: int = 0xFFFF
    public: bool = True
    note: str = ""

    @property
    def end(self) -> int:
        return self.address + self.words


@dataclass(frozen=True, slots=True)
class RelayControl:
    """How to trip/close the relay and how to read back its state."""

    kind: Literal["coil", "register"]  # write single coil (05) or single register (06)
    address: int
    trip: int  # coil: 1/0 (sent as FF00/0000); register: the value to write
    close: int
    readback_function: Function | None = None  # register holding the relay state
    readback_address: int | None = None
    readback_bit: int = 0
    open_when: int = 1  # the bit's value when the relay is open
    public: bool = True
    note: str = ""


CURVE_SOURCES: tuple[str, ...] = ("none",)
"""Load-curve sources a profile may declare.  Only "none" so far: no public register map
of a load-curve record area is known for the devices profiled (amic reads none over Modbus)."""


@dataclass(frozen=True, slots=True)
class Profile:
    name: str  # file stem, e.g. "acrel-dtsy1352"
    manufacturer: str
    model: str
    manual: str  # which public manual the register map comes from
    registers: tuple[Register, ...]
    relay: RelayControl | None = None
    max_registers: int = 120  # longest read request this device accepts
    max_gap: int = 0  # unused registers a merged read may span (some devices refuse gaps)
    byte_order: Literal["big"] = "big"  # Modbus registers are big-endian on the wire
    unmapped: tuple[Unmapped, ...] = ()  # listed registers that are no quantity
    curve: str = "none"  # where its load curve comes from (CURVE_SOURCES); "none": no curve

    def register(self, name: str) -> Register:
        for r in self.registers:
            if r.name == name:
                return r
        raise KeyError(f"profile {self.name}: no register for {name!r}")


@dataclass(frozen=True, slots=True)
class ReadBlock:
    """One read request covering contiguous registers of several quantities."""

    function: Function
    start: int
    count: int
    registers: tuple[Register, ...]

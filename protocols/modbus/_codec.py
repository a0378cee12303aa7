"""Register planning, decoding and encoding for Modbus device profiles (pure functions).

* :func:`plan_reads` turns quantity names into as few read requests as the device allows.
* :func:`decode_block` turns the words of one read reply into exact decimals.
* :func:`encode_value` is the inverse (the simulator serves registers with it).
* :func:`relay_state` reads the relay state out of the readback register.

Words are 16-bit register values as Modbus carries them (big-endian bytes on the wire;
``pymodbus`` already hands them over as ints).  ``word_order`` only concerns 32-bit types:
``big`` puts the high word first (AB CD), ``little`` the low word first (CD AB).
"""

from __future__ import annotations

import struct
from collections.abc import Iterable, Sequence
from decimal import ROUND_HALF_EVEN, Decimal

from ._profile import Profile, ReadBlock, Register

__all__ = [
    "decode_block",
    "decode_register",
    "encode_value",
    "plan_reads",
    "relay_readback_block",
    "relay_state",
    "relay_write",
]

_RANGES: dict[str, tuple[int, int]] = {
    "int16": (-0x8000, 0x7FFF),
    "uint16": (0, 0xFFFF),
    "int32": (-0x8000_0000, 0x7FFF_FFFF),
    "uint32": (0, 0xFFFF_FFFF),
}


def plan_reads(profile: Profile, names: Iterable[str] | None = None) -> list[ReadBlock]:
    """The read requests that fetch ``names`` (default: every register of ``profile``).

    Registers of the same function are merged into one request when the unused registers
    between them are at most ``profile.max_gap``, as long as the request stays within
    ``profile.max_registers``.  Blocks come out ordered by function, then address.  An
    unknown name raises KeyError naming the profile.
    """
    if names is None:
        wanted = list(profile.registers)
    else:
        by_name: dict[str, Register] = {}
        for name in names:
            by_name[name] = profile.register(name)
        wanted = list(by_name.values())
    wanted.sort(key=lambda r: (r.function, r.address, r.end))

    blocks: list[ReadBlock] = []
    group: list[Register] = []
    start = end = 0
    for reg in wanted:
        if group and (
            reg.function == group[0].function
            and reg.address - end <= profile.max_gap
            and max(end, reg.end) - start <= profile.max_registers
        ):
            group.append(reg)
            end = max(end, reg.end)
            continue
        if group:
            blocks.append(_block(group, start, end))
        group, start, end = [reg], reg.address, reg.end
    if group:
        blocks.append(_block(group, start, end))
    return blocks


def _block(group: list[Register], start: int, end: int) -> ReadBlock:
    return ReadBlock(function=group[0].function, start=start, count=end - start,
                     registers=tuple(group))


def decode_register(register: Register, words: Sequence[int]) -> Decimal:
    """``raw * scale`` of one register from its ``register.words`` words.

    Integers stay exact (raw 2201 at scale 0.1 is ``Decimal('220.1')``); a float32 becomes
    the shortest decimal that reads back as the same float32 (0x3DCCCCCD is ``0.1``).
    ValueError for a wrong word count, a word out of 0..65535, or a NaN/infinite float.
    """
    if len(words) != register.words:
        raise ValueError(f"{register.name}: a {register.type} takes {register.words} "
                         f"word(s), got {len(words)}")
    for w in words:
        if not 0 <= w <= 0xFFFF:
            raise ValueError(f"{register.name}: word {w} out of 0..65535")
    if register.words == 1:
        raw = words[0]
    else:
        hi, lo = (words[0], words[1]) if register.word_order == "big" else (words[1], words[0])
        raw = (hi << 16) | lo
    if register.type == "float32":
        return _float32_decimal(register.name, raw) * register.scale
    if register.type == "int16" and raw >= 0x8000:
        raw -= 0x1_0000
    elif register.type == "int32" and raw >= 0x8000_0000:
        raw -= 0x1_0000_0000
    return Decimal(raw) * register.scale


def _float32_decimal(name: str, raw: int) -> Decimal:
    packed = raw.to_bytes(4, "big")
    (value,) = struct.unpack(">f", packed)
    if value != value or value in (float("inf"), float("-inf")):
        raise ValueError(f"{name}: float32 0x{raw:08X} is not a finite number")
    for digits in range(1, 10):  # 9 significant digits always round-trip a float32
        text = f"{value:.{digits}g}"
        try:
            if struct.pack(">f", float(text)) == packed:
                break
        except OverflowError:  # rounded up past the largest float32
            continue
    result = Decimal(text)
    exponent = result.as_tuple().exponent
    if isinstance(exponent, int) and exponent > 0:  # "2.3e+02" -> 230, not 2.3E+2
        # int() is exact at any size; quantize() would overflow the 28-digit context.
        result = Decimal(int(result))
    return result if result else Decimal(0)  # -0.0 reads as 0


def decode_block(block: ReadBlock, words: Sequence[int]) -> dict[str, Decimal]:
    """Every quantity of ``block`` from the ``block.count`` words of its read reply."""
    if len(words) != block.count:
        raise ValueError(f"read of {block.count} register(s) at {block.start} "
                         f"(function {block.function}) answered {len(words)} word(s)")
    out: dict[str, Decimal] = {}
    for reg in block.registers:
        offset = reg.address - block.start
        out[reg.name] = decode_register(reg, words[offset:offset + reg.words])
    return out


def encode_value(register: Register, value: Decimal | int | float | str) -> list[int]:
    """The words that :func:`decode_register` reads back as ``value`` (in ``register.unit``).

    ``value / scale`` is rounded half-even to an integer for integer types; ValueError when
    it does not fit the type (or is not a finite number).
    """
    number = value if isinstance(value, Decimal) else Decimal(str(value))
    if not number.is_finite():
        raise ValueError(f"{register.name}: cannot encode {value!r}")
    raw_value = number / register.scale
    if register.type == "float32":
        try:
            packed = struct.pack(">f", float(raw_value))
        except OverflowError:
            raise ValueError(f"{register.name}: {value} does not fit a float32") from None
        raw = int.from_bytes(packed, "big")
    else:
        raw = int(raw_value.to_integral_value(rounding=ROUND_HALF_EVEN))
        low, high = _RANGES[register.type]
        if not low <= raw <= high:
            raise ValueError(f"{register.name}: {value} {register.unit} is raw {raw}, "
                             f"out of {register.type} range {low}..{high}")
        raw &= 0xFFFF if register.words == 1 else 0xFFFF_FFFF
    if register.words == 1:
        return [raw]
    hi, lo = raw >> 16, raw & 0xFFFF
    return [hi, lo] if register.word_order == "big" else [lo, hi]


def relay_readback_block(profile: Profile) -> ReadBlock | None:
    """The one-register read that :func:`relay_state` needs, or None without a readback."""
    relay = profile.relay
    if relay is None or relay.readback_function is None or relay.readback_address is None:
        return None
    return ReadBlock(function=relay.readback_function, start=relay.readback_address, count=1,
                     registers=())


def relay_state(profile: Profile, words: Sequence[int]) -> bool | None:
    """True when the relay is open, from the reply to :func:`relay_readback_block`.

    None when the profile has no relay readback (the state is then unknown).
    """
    relay = profile.relay
    if relay is None or relay.readback_function is None or relay.readback_address is None:
        return None
    if not words:
        raise ValueError(f"profile {profile.name}: relay readback needs one word, got none")
    word = words[0]
    if not 0 <= word <= 0xFFFF:
        raise ValueError(f"profile {profile.name}: relay readback word {word} out of 0..65535")
    return (word >> relay.readback_bit) & 1 == relay.open_when


def relay_write(profile: Profile, open_relay: bool) -> tuple[int, int, int]:
    """``(function, address, value)`` of the write that trips (True) or closes the relay.

    Function 5 (write single coil, value 0xFF00 or 0x0000) or 6 (write single register).
    KeyError when the profile has no relay.
    """
    relay = profile.relay
    if relay is None:
        raise KeyError(f"profile {profile.name}: no relay control")
    value = relay.trip if open_relay else relay.close
    if relay.kind == "coil":
        return 5, relay.address, 0xFF00 if value else 0x0000
    return 6, relay.address, value


"""Modbus device profiles and register codec (sans-I/O)."""

from ._codec import (
    decode_block,
    decode_register,
    encode_value,
    plan_reads,
    relay_readback_block,
    relay_state,
    relay_write,
)
from ._loader import MAX_READ_REGISTERS, ProfileError, parse_profile, profile_from_dict
from ._profile import (
    WORDS,
    Function,
    Profile,
    ReadBlock,
    Register,
    RegisterType,
    RelayControl,
    Unmapped,
)

__all__ = [
    "MAX_READ_REGISTERS",
    "WORDS",
    "Function",
    "Profile",
    "ProfileError",
    "ReadBlock",
    "Register",
    "RegisterType",
    "RelayControl",
    "Unmapped",
    "decode_block",
    "decode_register",
    "encode_value",
    "parse_profile",
    "plan_reads",
    "profile_from_dict",
    "relay_readback_block",
    "relay_state",
    "relay_write",
]

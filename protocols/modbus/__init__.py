"""Modbus device profiles and register codec (sans-I/O)."""

from ._profile import WORDS, Function, Profile, ReadBlock, Register, RegisterType, RelayControl

__all__ = ["WORDS", "Function", "Profile", "ReadBlock", "Register", "RegisterType",
           "RelayControl"]

"""``amic decode HEX...``: one JSON object per DL/T645 (or Modbus RTU) frame."""

from __future__ import annotations

import json
import string
import sys
from collections.abc import Callable
from typing import Any

import click

from protocols.dlt645 import (
    HEADER_SIZE,
    START,
    AbnormalReply,
    DLT645Error,
    FrameError,
    Function1997,
    Function2007,
    Message,
    PayloadError,
    ReadAddressReply,
    ReadFollowUpReply,
    ReadFollowUpRequest,
    ReadReply,
    ReadRequest,
    RelayCommand,
    RemoteControlRequest,
    TimeSyncRequest,
    Unknown,
    Version,
    WriteAddressRequest,
    WriteRequest,
    decode_message,
    decode_value,
    lookup,
    parse_frame,
    skip_preamble,
    value_to_json,
)


class InputError(Exception):
    """Input that is not a frame, with the byte offset where it went wrong."""


def hex_input(args: tuple[str, ...]) -> bytes:
    """Hex digits from every argument joined (spaces, colons and 0x prefixes allowed)."""
    out: list[str] = []
    for n, arg in enumerate(args, 1):
        text = arg.replace("0x", "").replace("0X", "")
        for i, ch in enumerate(text, 1):
            if ch in string.hexdigits:
                out.append(ch)
            elif ch not in " \t\r\n:-,":
                raise InputError(f"argument {n}, character {i}: {ch!r} is not a hex digit")
    digits = "".join(out)
    if len(digits) % 2:
        raise InputError(f"byte {len(digits) // 2}: odd number of hex digits (half a byte)")
    return bytes.fromhex(digits)


def split_frames(data: bytes) -> list[tuple[int, bytes]]:
    """(offset, frame bytes) of each frame back to back in ``data``; InputError otherwise."""
    frames: list[tuple[int, bytes]] = []
    pos = 0
    if not data:
        raise InputError("byte 0: no input")
    while pos < len(data):
        start = pos + skip_preamble(data[pos:])
        if start >= len(data):
            raise InputError(f"byte {start}: only FE wake-up bytes, no frame after them")
        if data[start] != START:
            raise InputError(f"byte {start}: expected start byte 68, got {data[start]:02X}")
        if len(data) - start < HEADER_SIZE:
            raise InputError(f"byte {len(data)}: frame truncated inside its header")
        end = start + HEADER_SIZE + data[start + 9] + 2
        chunk = data[pos : min(end, len(data))]
        try:
            parse_frame(chunk)
        except FrameError as e:
            raise InputError(f"byte {pos + e.offset}: {e.problem}") from None
        frames.append((pos, chunk))
        pos = end
    return frames


def _function_name(code: int, version: Version) -> str:
    try:
        f = Function1997(code) if version is Version.V1997 else Function2007(code)
    except ValueError:
        return f"unknown_{code:02X}"
    return f.name.lower()


def _di_fields(di: int, version: Version) -> dict[str, Any]:
    item = lookup(di, version)
    width = 4 if version is Version.V1997 else 8
    out: dict[str, Any] = {"di": f"{di:0{width}X}", "name": item.name if item else None,
                           "unit": item.unit if item else None}
    if item is not None and item.settlement:
        out["settlement"] = item.settlement
    return out


def describe(message: Message, raw_control: int) -> dict[str, Any]:
    """The JSON object for one decoded message."""
    frame = message.to_frame()
    version = message.version
    out: dict[str, Any] = {
        "version": version.value,
        "address": frame.address,
        "control": raw_control,
        "function": _function_name(raw_control & 0x1F, version),
        "direction": "reply" if raw_control & 0x80 else "request",
        "abnormal": bool(raw_control & 0x40),
        "di": None, "name": None, "value": None, "unit": None,
    }
    if raw_control & 0x20:
        out["follow_up"] = True
    if isinstance(message, (ReadReply, ReadFollowUpReply)):
        out.update(_di_fields(message.di, version))
        item = lookup(message.di, version)
        if item is not None:
            out["value"] = value_to_json(decode_value(item, message.body))
        else:
            out["value"] = message.body.hex().upper()
        if isinstance(message, ReadFollowUpReply) and message.seq is not None:
            out["seq"] = message.seq
    elif isinstance(message, (ReadRequest, ReadFollowUpRequest, WriteRequest)):
        out.update(_di_fields(message.di, version))
        if isinstance(message, ReadFollowUpRequest) and version is Version.V2007:
            out["seq"] = message.seq
        if isinstance(message, WriteRequest):
            out["password_level"] = message.password[:2]
            out["data"] = message.body.hex().upper()
    elif isinstance(message, AbnormalReply):
        out["error"] = list(message.errors)
        out["error_code"] = message.error
    elif isinstance(message, ReadAddressReply):
        out["value"] = message.meter_address
        out["name"] = "meter_address"
    elif isinstance(message, WriteAddressRequest):
        out["value"] = message.new_address
        out["name"] = "meter_address"
    elif isinstance(message, TimeSyncRequest):
        out["value"] = message.when.isoformat()
        out["name"] = "meter_datetime"
    elif isinstance(message, RemoteControlRequest):
        out["password_level"] = message.password[:2]
        out["operator"] = message.operator
        if message.ciphertext is not None:
            out["encrypted"] = True
        else:
            cmd = message.command
            if isinstance(cmd, RelayCommand):
                out["command"] = cmd.name.lower()
            else:
                out["command"] = None if cmd is None else f"{cmd:02X}"
            out["expiry"] = message.expiry.isoformat() if message.expiry else None
    elif isinstance(message, Unknown):
        out["data"] = message.frame.data.hex().upper()
    return out


def _decode_dlt645(args: tuple[str, ...], profile_name: str | None, start: int | None
                   ) -> None:
    if profile_name is not None or start is not None:
        click.echo("amic decode: --profile and --start are for --protocol modbus-rtu",
                   err=True)
        sys.exit(2)
    try:
        data = hex_input(args)
        objects = []
        for offset, chunk in split_frames(data):
            frame = parse_frame(chunk)
            try:
                message = decode_message(frame)
                objects.append(describe(message, frame.control))
            except (PayloadError, DLT645Error) as e:
                data_at = offset + skip_preamble(chunk) + HEADER_SIZE
                raise InputError(f"byte {data_at}: data field: {e}") from None
    except InputError as e:
        click.echo(f"amic decode: {e}", err=True)
        sys.exit(2)
    for obj in objects:
        click.echo(json.dumps(obj, ensure_ascii=False))


def _decode_modbus(args: tuple[str, ...], profile_name: str | None, start: int | None
                   ) -> None:
    from collector.config.profiles import load_profile
    from protocols.modbus import ProfileError

    from .decode_modbus import ModbusInputError, decode_modbus

    profile = None
    if profile_name is not None:
        try:
            profile = load_profile(profile_name)
        except ProfileError as e:
            click.echo(f"amic decode: --profile: {e}", err=True)
            sys.exit(2)
    try:
        objects = decode_modbus(hex_input(args), profile=profile, start=start)
    except InputError as e:
        click.echo(f"amic decode: {e}", err=True)
        sys.exit(2)
    except ModbusInputError as e:
        for obj in e.objects:
            click.echo(json.dumps(obj, ensure_ascii=False))
        click.echo(f"amic decode: {e}", err=True)
        sys.exit(2)
    for obj in objects:
        click.echo(json.dumps(obj, ensure_ascii=False))


def _decode_3761(args: tuple[str, ...], profile_name: str | None, start: int | None
                 ) -> None:
    from .decode_3761 import Decode3761Error, decode_3761

    if profile_name is not None or start is not None:
        click.echo("amic decode: --profile and --start are for --protocol modbus-rtu",
                   err=True)
        sys.exit(2)
    try:
        objects = decode_3761(hex_input(args))
    except (InputError, Decode3761Error) as e:
        click.echo(f"amic decode: {e}", err=True)
        sys.exit(2)
    for obj in objects:
        click.echo(json.dumps(obj, ensure_ascii=False))


# What each --protocol decodes with: (hex arguments, --profile, --start).
Decoder = Callable[[tuple[str, ...], str | None, int | None], None]
DECODERS: dict[str, Decoder] = {"dlt645": _decode_dlt645, "modbus-rtu": _decode_modbus,
                                "3761": _decode_3761}


@click.command()
@click.option("--protocol", "-p", type=click.Choice(list(DECODERS)),
              default="dlt645", show_default=True, help="What the frames are.")
@click.option("--profile", "profile_name", default=None, metavar="NAME",
              help="modbus-rtu: device profile (name or file) naming and scaling the "
                   "registers.")
@click.option("--start", type=click.IntRange(0, 0xFFFF), default=None, metavar="ADDR",
              help="modbus-rtu: start address of a read reply given without its request.")
@click.argument("hex_bytes", nargs=-1, metavar="HEX...")
def decode(protocol: str, profile_name: str | None, start: int | None,
           hex_bytes: tuple[str, ...]) -> None:
    """Decode DL/T645 frames given as hex (arguments, or standard input if none).

    Frames may be given one per argument or back to back; wake-up FE bytes are
    skipped.  Prints one JSON object per frame.  Exit status 2 names the byte
    offset of the first problem.

    With --protocol modbus-rtu: Modbus RTU requests and replies (unit, function, kind,
    address, count, registers, crc_ok); a read reply takes its start address from the
    read request just before it, else from --start; --profile names and scales the
    registers.  Frames before a problem are printed; a frame with a bad CRC is printed
    with crc_ok false, then exit status 2.

    With --protocol 3761: Q/GDW 1376.1 frames (dir, prm, afn, seq, a1, a2, and units as
    pn, fn, name, values and the meter readings with their units).
    """
    args = hex_bytes or (sys.stdin.read(),)
    DECODERS[protocol](args, profile_name, start)

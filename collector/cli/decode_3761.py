"""``amic decode --protocol 3761``: one JSON object per Q/GDW 1376.1 frame.

Frames are back to back (or one per argument), FE wake-up bytes allowed before each.
A unit whose Fn the codec has no layout for ends that frame's list with its raw bytes.
"""

from __future__ import annotations

from typing import Any

from protocols.qgdw3761 import (
    UNITS_OFFSET,
    Direction,
    Frame,
    FrameError,
    PayloadError,
    check_header,
    decode_units,
    parse_frame,
    skip_preamble,
    unit_to_json,
)

FIXED_SIZE = 8  # C, A, AFN and SEQ: L1 counts them, the 6 header bytes not


class Decode3761Error(Exception):
    """Input that is not 376.1 frames; the message starts with the byte offset."""


def describe(frame: Frame, units: list[dict[str, Any]]) -> dict[str, Any]:
    """The JSON object for one frame."""
    out: dict[str, Any] = {
        "dir": "up" if frame.direction is Direction.UP else "down",
        "prm": frame.prm,
        "function": frame.function,
        "afn": frame.afn,
        "seq": frame.seq,
        "pseq": frame.pseq,
        "fir": frame.fir,
        "fin": frame.fin,
        "con": frame.con,
        "a1": frame.a1,
        "a2": frame.a2,
        "msa": frame.msa,
        "units": units,
    }
    if frame.acd:
        out["acd"] = True
    if frame.ec is not None:
        out["ec"] = list(frame.ec)
    if frame.tp is not None:
        tp = frame.tp
        out["tp"] = {"pfc": tp.pfc, "time": f"{tp.day:02d} {tp.hour:02d}:{tp.minute:02d}:"
                     f"{tp.second:02d}", "delay": tp.delay}
    return out


def decode_3761(data: bytes) -> list[dict[str, Any]]:
    """One JSON object per frame of ``data``; Decode3761Error names the first bad byte."""
    if not data:
        raise Decode3761Error("byte 0: no input")
    objects: list[dict[str, Any]] = []
    pos = 0
    while pos < len(data):
        start = pos + skip_preamble(data[pos:])
        if start >= len(data):
            raise Decode3761Error(f"byte {start}: only FE wake-up bytes, no frame after them")
        try:
            end = start + check_header(data[start : start + 6], start) + FIXED_SIZE
        except FrameError as e:
            raise Decode3761Error(f"byte {e.offset}: {e.problem}") from None
        try:
            frame = parse_frame(data[pos : min(end, len(data))])
        except FrameError as e:
            raise Decode3761Error(f"byte {pos + e.offset}: {e.problem}") from None
        try:
            units = decode_units(frame, strict=False, base=start + UNITS_OFFSET)
        except PayloadError as e:
            raise Decode3761Error(f"byte {e.offset}: data unit: {e.problem}") from None
        objects.append(describe(frame, [unit_to_json(frame.afn, frame.direction, u)
                                        for u in units]))
        pos = end
    return objects

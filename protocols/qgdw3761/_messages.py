"""Frames a master station sends: requests, and the confirm of terminal frames (CON=1)."""

from __future__ import annotations

from collections.abc import Iterable

from ._errors import PayloadError
from ._fn import DataUnit, RawUnit, decode_units, encode_units
from ._frame import (
    FN_CONFIRM,
    FN_LINK_STATUS,
    PW_AFNS,
    PW_SIZE,
    Direction,
    Frame,
    Function,
    TimeTag,
    a3_byte,
    control_byte,
    seq_byte,
)
from ._units import decode_id
from ._values import ConfirmStyle, ItemResult, ItemResults

# Link function of a master request by AFN: reset, "class 1" for set/control (they
# want a confirm), "class 2" for reads.
_FUNCTION = {0x01: Function.RESET, 0x04: Function.REQUEST_CLASS1,
             0x05: Function.REQUEST_CLASS1, 0x06: Function.REQUEST_CLASS1}
_CONFIRMED = frozenset((0x01, 0x04, 0x05))


def request(a1: str, a2: int, afn: int, units: Iterable[DataUnit], *, pseq: int,
            msa: int = 1, function: int | None = None, con: bool | None = None,
            tp: TimeTag | None = None, pw: bytes | None = None, fcb: bool = False,
            fcv: bool = False) -> Frame:
    """A master request frame; ``pw`` defaults to 16 zero bytes where the AFN needs one."""
    if function is None:
        function = _FUNCTION.get(afn, Function.REQUEST_CLASS2)
    if con is None:
        con = afn in _CONFIRMED
    if afn in PW_AFNS and pw is None:
        pw = bytes(PW_SIZE)
    return Frame(
        control=control_byte(Direction.DOWN, prm=True, function=function, fcb=fcb, fcv=fcv),
        a1=a1, a2=a2, a3=a3_byte(msa), afn=afn,
        seq=seq_byte(pseq, con=con, tpv=tp is not None),
        units=encode_units(afn, Direction.DOWN, units), pw=pw, tp=tp,
    )


def confirm(incoming: Frame, *, style: ConfirmStyle = ConfirmStyle.F1, msa: int = 0,
            error: int = 0) -> Frame:
    """The master's AFN00 answer to a terminal frame (login, heartbeat, event report).

    F1 confirms all; F3 echoes the AFN and every DA/DT with ERR ``error``.  C is 0B for
    AFN02 (link status), 00 otherwise; RSEQ copies the terminal's PSEQ; Tp is echoed.
    """
    if style is ConfirmStyle.F3:
        items = tuple(ItemResult(p, f, error) for p, f in _answered(incoming))
        unit = DataUnit(0, 3, ItemResults(incoming.afn, items))
    else:
        unit = DataUnit(0, 1)
    function = FN_LINK_STATUS if incoming.afn == 0x02 else FN_CONFIRM
    return Frame(
        control=control_byte(Direction.DOWN, prm=False, function=function),
        a1=incoming.a1, a2=incoming.a2, a3=a3_byte(msa), afn=0x00,
        seq=seq_byte(incoming.pseq, tpv=incoming.tp is not None),
        units=encode_units(0x00, Direction.DOWN, (unit,)), tp=incoming.tp,
    )


def _answered(frame: Frame) -> list[tuple[tuple[int, ...], tuple[int, ...]]]:
    """(points, Fn) of every unit of ``frame``; its first DA/DT if the units do not parse."""
    try:
        units = decode_units(frame, strict=False)
    except PayloadError:
        pns, fns = decode_id(frame.units)
        return [(tuple(pns), tuple(fns))]
    return [(u.pns, u.fns) if isinstance(u, RawUnit) else ((u.pn,), (u.fn,)) for u in units]

"""Q/GDW 1376.1 (376.1): frames, data units, typed values, a stream extractor and
multi-frame reassembly, for a master station that terminals dial in to.

Sans-I/O: bytes in, typed values out.  The caller owns the socket.  Typical use::

    ex = FrameExtractor(); ex.feed(data)
    for frame in ex:
        units = decode_units(frame)          # [DataUnit(pn, fn, value), ...]
        if frame.afn == AFN.LINK and frame.con:
            send(build_frame(confirm(frame, style=ConfirmStyle.F1)))
"""

from ._errors import FrameError, PayloadError, Q3761Error, SequenceError, UnknownFn
from ._fn import (
    REGISTRY,
    UNITS_OFFSET,
    DataUnit,
    FnSpec,
    RawUnit,
    decode_units,
    encode_units,
    fn_spec,
    idents,
    unit_name,
)
from ._formats import decode_a1, decode_a15, decode_a20, encode_a1, encode_a15, encode_a20
from ._frame import (
    AFN,
    FN_CONFIRM,
    FN_DENY,
    FN_LINK_STATUS,
    FN_RESPONSE,
    HEADER_SIZE,
    START,
    Direction,
    Frame,
    Function,
    TimeTag,
    a3_byte,
    build_frame,
    check_header,
    control_byte,
    parse_frame,
    seq_byte,
    skip_preamble,
)
from ._json import unit_to_json, value_to_json
from ._messages import confirm, request
from ._reassembly import Reassembler
from ._receivebuffer import ExtractorStats, FrameExtractor, Reject
from ._units import ALL_POINTS, decode_da, decode_dt, encode_da, encode_dt
from ._values import (
    CURVE_DENSITIES,
    ActiveEnergy,
    ArchiveQuery,
    CommParams,
    ConfirmStyle,
    Curve,
    CurveTag,
    DailySupply,
    EnergyReadings,
    Erc1,
    Erc3,
    Erc14,
    EventQuery,
    EventRecord,
    EventRecords,
    ForwardReply,
    ForwardRequest,
    FrozenActiveEnergy,
    FrozenEnergy,
    Heartbeat,
    ItemResult,
    ItemResults,
    MeterArchive,
    MeterEntry,
    MeterProtocol,
    PresentValues,
    TerminalVersion,
)

__all__ = [
    "AFN", "ALL_POINTS", "CURVE_DENSITIES", "FN_CONFIRM", "FN_DENY", "FN_LINK_STATUS",
    "FN_RESPONSE",
    "HEADER_SIZE", "REGISTRY", "START", "UNITS_OFFSET", "ActiveEnergy", "ArchiveQuery",
    "CommParams", "ConfirmStyle", "Curve", "CurveTag", "DailySupply", "DataUnit",
    "Direction", "EnergyReadings", "Erc1", "Erc3", "Erc14", "EventQuery", "EventRecord",
    "EventRecords", "ExtractorStats", "FnSpec", "ForwardReply", "ForwardRequest", "Frame",
    "FrameError", "FrameExtractor", "FrozenActiveEnergy", "FrozenEnergy", "Function",
    "Heartbeat", "ItemResult", "ItemResults", "MeterArchive", "MeterEntry", "MeterProtocol",
    "PayloadError", "PresentValues", "Q3761Error", "RawUnit", "Reassembler", "Reject",
    "SequenceError", "TerminalVersion", "TimeTag", "UnknownFn", "a3_byte", "build_frame",
    "check_header", "confirm", "control_byte", "decode_a1", "decode_a15", "decode_a20",
    "decode_da", "decode_dt", "decode_units", "encode_a1", "encode_a15", "encode_a20",
    "encode_da", "encode_dt", "encode_units", "fn_spec", "idents", "parse_frame", "request",
    "seq_byte", "skip_preamble", "unit_name", "unit_to_json", "value_to_json",
]

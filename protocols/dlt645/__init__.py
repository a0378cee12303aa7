"""DL/T645-2007 and -1997: frames, typed messages, the DI catalogue and a stream extractor.

Sans-I/O: bytes in, typed values out.  The caller owns the serial port or socket.
"""

from ._bcd import add_33, sub_33
from ._catalogue import (
    CATALOGUE,
    DAILY_FREEZES,
    STATUS_BITS,
    Bit,
    DataItem,
    Format,
    StatusWord,
    Value,
    by_di,
    by_name,
    decode_value,
    encode_value,
    freeze_di,
    items,
    lookup,
    parse_di,
    value_to_json,
)
from ._connection import Master, ReplyMismatch, check_reply
from ._errors import DLT645Error, FrameError, PayloadError, UnknownDataItem
from ._events import (
    DI_AUTHENTICATE,
    DI_TOPUP,
    ERROR_BITS,
    SECURITY_ERROR_BITS,
    AbnormalReply,
    Ack,
    AuthAnswer,
    AuthChallenge,
    ChangeBaudReply,
    ChangeBaudRequest,
    ChangePasswordReply,
    ChangePasswordRequest,
    ClearDemandRequest,
    ClearEventsRequest,
    ClearMeterRequest,
    FreezeRequest,
    Message,
    ReadAddressReply,
    ReadAddressRequest,
    ReadFollowUpReply,
    ReadFollowUpRequest,
    ReadReply,
    ReadRequest,
    RelayCommand,
    RemoteControlRequest,
    SecurityReply,
    SecurityRequest,
    TimeSyncRequest,
    TopupPayload,
    Unknown,
    WriteAddressRequest,
    WriteRequest,
    decode_message,
    error_names,
    security_error_names,
)
from ._frame import (
    HEADER_SIZE,
    START,
    Frame,
    Function1997,
    Function2007,
    Version,
    build_frame,
    control_code,
    parse_frame,
    skip_preamble,
    version_of,
)
from ._receivebuffer import ExtractorStats, FrameExtractor, address_matches
from ._records import (
    LAYOUTS,
    RECORDS_KEPT,
    EventRecord,
    RecordLayout,
    decode_record,
    encode_record,
    record_di,
    record_of,
)

__all__ = [
    "CATALOGUE", "ERROR_BITS", "STATUS_BITS", "AbnormalReply", "Ack", "Bit", "ChangeBaudReply",
    "ChangeBaudRequest", "ChangePasswordReply", "ChangePasswordRequest", "ClearDemandRequest",
    "ClearEventsRequest", "ClearMeterRequest", "DLT645Error", "DataItem", "ExtractorStats",
    "Format", "Frame", "FrameError", "FrameExtractor", "FreezeRequest", "Function1997",
    "Function2007", "Master", "Message", "PayloadError", "ReadAddressReply",
    "ReadAddressRequest", "ReadFollowUpReply", "ReadFollowUpRequest", "ReadReply",
    "ReadRequest", "RelayCommand", "RemoteControlRequest", "ReplyMismatch", "StatusWord",
    "TimeSyncRequest", "Unknown", "UnknownDataItem", "Value", "Version", "WriteAddressRequest",
    "WriteRequest", "add_33", "address_matches", "build_frame", "by_di", "by_name",
    "check_reply", "control_code", "decode_message", "decode_value", "encode_value",
    "error_names", "items", "lookup", "parse_di", "parse_frame", "sub_33", "value_to_json",
    "version_of",
]
# for the collector, the simulators and `amic decode`, instead of the private modules
__all__ += ["DI_AUTHENTICATE", "DI_TOPUP", "SECURITY_ERROR_BITS", "AuthAnswer",
            "AuthChallenge", "SecurityReply", "SecurityRequest", "TopupPayload",
            "security_error_names"]
__all__ += ["DAILY_FREEZES", "HEADER_SIZE", "START", "freeze_di", "skip_preamble"]
# event records (_records.py)
__all__ += ["LAYOUTS", "RECORDS_KEPT", "EventRecord", "RecordLayout", "decode_record",
            "encode_record", "record_di", "record_of"]

# load records (负荷记录, 0610xxxx): curves by given time and count
from ._curve import (  # noqa: E402
    CURVE_INTERVAL,
    CURVE_ITEMS,
    CURVE_QUANTITIES,
    CurveItem,
    CurvePoint,
    curve_di,
    curve_item,
    curve_request_extra,
    decode_curve,
    encode_curve,
    parse_curve_request,
)

__all__ += ["CURVE_INTERVAL", "CURVE_ITEMS", "CURVE_QUANTITIES", "CurveItem", "CurvePoint",
            "curve_di", "curve_item", "curve_request_extra", "decode_curve", "encode_curve",
            "parse_curve_request"]

"""Readings that MQTT gateways push: JSON reports and raw meter frames (pure logic, no I/O).

A gateway (a concentrator or a DTU with an MQTT uplink) reads its meters itself and
publishes the results; docs/mqtt.md specifies the topics and payloads.  The daemon
subscribes ``<prefix>/+/report`` and ``<prefix>/+/raw`` and hands every message to
:meth:`ReportIngestor.handle`, which

* turns valid values into :class:`~collector.store.records.Reading` rows (the same quantity
  names, units and numeric values as polled meters) and gives them to ``readings``;
* never raises on what a gateway sends: every problem becomes a :class:`Reject` (stored
  by the daemon), is counted by reason in :attr:`ReportIngestor.counts` and logged in one
  line without payload contents.

Partially bad messages: each meter entry, and each value of an entry, stands on its own.
Valid values are kept and every bad one is rejected individually, so one meter missing
from the ledger, or one quantity the gateway misnames, costs that value, not the whole
transformer area's report.  What applies to a whole message (not JSON, wrong gateway,
unknown topic) or to a whole entry (unknown meter, bad timestamp) rejects what it covers.
"""

from __future__ import annotations

import datetime as dt
import json
import logging
import math
import re
import time
from collections import Counter
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from decimal import Decimal, InvalidOperation
from enum import StrEnum
from typing import Any

from collector.config.settings import MeterSettings
from collector.store.records import Quality, Reading, utcnow
from drivers.device import MeterKind, Unsupported
from drivers.dlt645_meter import FRAMES as DLT645_FRAMES
from drivers.meters import kind_of
from drivers.modbus_meter import FRAMES as MODBUS_FRAMES
from protocols.dlt645 import (
    AbnormalReply,
    DLT645Error,
    FrameError,
    ReadReply,
    Version,
    parse_frame,
)
from protocols.modbus import (
    CrcError,
    FrameKind,
    Profile,
    Register,
    RtuError,
    check_crc,
    decode_register,
    parse_rtu,
)
from protocols.modbus import crc16 as modbus_crc
from protocols.quantities import QUANTITIES, Kind, implausible

from .scheduler import to_number

__all__ = [
    "DEFAULT_MAX_FUTURE",
    "MAX_PAYLOAD",
    "UNIT_CONVERSIONS",
    "Reject",
    "RejectReason",
    "ReportIngestor",
    "convert_unit",
    "modbus_crc",
    "parse_timestamp",
    "split_topic",
    "summary",
]

log = logging.getLogger("amic.gateway")

DEFAULT_MAX_FUTURE = dt.timedelta(minutes=10)
MAX_PAYLOAD = 256 * 1024  # bytes; a report of a few hundred meters fits easily
EXCERPT_CHARS = 200  # of the offending payload (or item) kept in a Reject
MAX_REJECTS_PER_MESSAGE = 50  # records per message; further ones are only counted
LOG_EVERY = 60.0  # seconds: at most one log line per (gateway, reason) this often
EARLIEST = dt.datetime(2000, 1, 1, tzinfo=dt.UTC)  # a meter clock before this is unset
EPOCH_MS_THRESHOLD = 100_000_000_000  # epoch numbers at or above this are milliseconds

TOPIC_KINDS = ("report", "raw")


class RejectReason(StrEnum):
    """Why something a gateway sent was not stored (the ``reason`` of a :class:`Reject`)."""

    TOO_LARGE = "too_large"  # payload above MAX_PAYLOAD bytes
    BAD_TOPIC = "bad_topic"  # not <prefix>/<gateway>/report|raw
    NOT_JSON = "not_json"  # not UTF-8 or not JSON
    BAD_PAYLOAD = "bad_payload"  # JSON of the wrong shape: missing fields, wrong types
    GATEWAY_MISMATCH = "gateway_mismatch"  # "gateway" differs from the topic's gateway
    UNKNOWN_GATEWAY = "unknown_gateway"  # no configured meter behind this gateway
    UNKNOWN_METER = "unknown_meter"  # meter id / address / unit id not configured here
    WRONG_GATEWAY = "wrong_gateway"  # meter id configured, but behind another gateway
    AMBIGUOUS_METER = "ambiguous_meter"  # an address that names two meters of the gateway
    UNKNOWN_QUANTITY = "unknown_quantity"  # not a name of protocols/quantities.py
    UNSUPPORTED_QUANTITY = "unsupported_quantity"  # a date/time/address, or settlement data
    UNIT_MISMATCH = "unit_mismatch"  # a unit that is not (convertible to) the vocabulary's
    BAD_VALUE = "bad_value"  # not a finite number, or not an integer where one is needed
    IMPLAUSIBLE = "implausible"  # outside the quantity's plausible range (1e308 V)
    BAD_TIMESTAMP = "bad_timestamp"  # unparseable, without UTC offset, or before 2000
    FUTURE_TIMESTAMP = "future_timestamp"  # more than max_future ahead of the collector
    BAD_HEX = "bad_hex"  # a frame that is not hex digits
    BAD_FRAME = "bad_frame"  # not a DL/T645 / Modbus RTU frame, or one that contradicts
    CHECKSUM = "checksum"  # DL/T645 checksum or Modbus CRC mismatch
    UNSUPPORTED_FRAME = "unsupported_frame"  # a valid frame that is not a read reply
    ABNORMAL_REPLY = "abnormal_reply"  # the meter refused (DL/T645 C1/D1, Modbus exception)
    UNKNOWN_DI = "unknown_di"  # a DL/T645 data identifier not in the catalogue
    NO_PROFILE = "no_profile"  # a Modbus meter without a loadable device profile
    UNKNOWN_REGISTER = "unknown_register"  # a Modbus read that covers no profile register
    INTERNAL_ERROR = "internal_error"  # a bug here; the message is kept as a reject


@dataclass(frozen=True, slots=True)
class Reject:
    """Something a gateway sent that was not stored, and why (never raised, always kept)."""

    ts: dt.datetime  # when the collector rejected it (UTC)
    topic: str
    reason: RejectReason
    detail: str  # what was wrong, naming meter, quantity or byte; never a customer number
    payload_excerpt: str  # the offending item, or the head of the payload (<= 200 chars)


class _Rejected(Exception):
    """Control flow: what is wrong with the item being ingested."""

    def __init__(self, reason: RejectReason, detail: str, excerpt: str | None = None) -> None:
        super().__init__(detail)
        self.reason = reason
        self.detail = detail
        self.excerpt = excerpt


# ---- units -------------------------------------------------------------------------------

# Vocabulary unit -> accepted unit -> factor into the vocabulary unit.  A unit given with a
# value must be one of these; a missing unit means the vocabulary's unit.
UNIT_CONVERSIONS: dict[str, dict[str, Decimal]] = {
    "kWh": {"kWh": Decimal(1), "Wh": Decimal("0.001"), "MWh": Decimal(1000)},
    "kvarh": {"kvarh": Decimal(1), "varh": Decimal("0.001"), "Mvarh": Decimal(1000)},
    "kW": {"kW": Decimal(1), "W": Decimal("0.001"), "MW": Decimal(1000)},
    "kvar": {"kvar": Decimal(1), "var": Decimal("0.001"), "Mvar": Decimal(1000)},
    "kVA": {"kVA": Decimal(1), "VA": Decimal("0.001"), "MVA": Decimal(1000)},
    "V": {"V": Decimal(1), "kV": Decimal(1000)},
    "A": {"A": Decimal(1), "mA": Decimal("0.001"), "kA": Decimal(1000)},
    "Hz": {"Hz": Decimal(1)},
    "yuan": {"yuan": Decimal(1), "CNY": Decimal(1)},
    "": {"": Decimal(1)},
}
# Case-insensitive spellings ("KWH", "kw", "Kvarh"), except where the case carries the
# meaning: M (mega) and m (milli) must be written exactly.
_FOLDED: dict[str, dict[str, Decimal]] = {
    unit: {k.lower(): f for k, f in table.items() if not k.startswith(("M", "m"))}
    for unit, table in UNIT_CONVERSIONS.items()
}


def convert_unit(value: Decimal, given: str, unit: str) -> Decimal | None:
    """``value`` in ``given`` expressed in the vocabulary ``unit``; None if not convertible."""
    table = UNIT_CONVERSIONS.get(unit)
    if table is None:
        return value if given == unit else None
    factor = table.get(given)
    if factor is None:
        factor = _FOLDED[unit].get(given.lower())
    if factor is None:
        return None
    return value if factor == 1 else value * factor


# ---- small parsers -----------------------------------------------------------------------

def split_topic(topic: str) -> tuple[str, str] | None:
    """``(gateway, kind)`` of ``<prefix>/<gateway>/<kind>``; None if it is not one."""
    parts = topic.split("/")
    if len(parts) < 3 or parts[-1] not in TOPIC_KINDS or not parts[-2]:
        return None
    if parts[0].startswith("$"):  # $SYS/...: the broker's own topics, never a gateway's
        return None
    if any(c in parts[-2] for c in "+#"):
        return None
    return parts[-2], parts[-1]


def parse_timestamp(value: object, now: dt.datetime,
                    max_future: dt.timedelta = DEFAULT_MAX_FUTURE) -> dt.datetime:
    """A report's ``ts`` as an aware UTC datetime; raises _Rejected.

    ISO 8601 text with a UTC offset (``Z`` or ``+08:00``), or a JSON number of epoch
    seconds (below 1e11) or epoch milliseconds (1e11 and above).
    """
    R = RejectReason
    if isinstance(value, bool) or not isinstance(value, (str, int, Decimal, float)):
        raise _Rejected(R.BAD_TIMESTAMP, f"ts: {type(value).__name__}, expected ISO 8601 "
                                         "text or epoch seconds/milliseconds")
    if isinstance(value, str):
        try:
            t = dt.datetime.fromisoformat(value.strip())
        except ValueError:
            raise _Rejected(R.BAD_TIMESTAMP, "ts: not an ISO 8601 date and time") from None
        if t.tzinfo is None or t.utcoffset() is None:
            raise _Rejected(R.BAD_TIMESTAMP, "ts: no UTC offset (add Z or +08:00)")
        t = t.astimezone(dt.UTC)
    else:
        try:
            number = Decimal(value) if not isinstance(value, Decimal) else value
            if not number.is_finite():
                raise InvalidOperation
            seconds = number / 1000 if abs(number) >= EPOCH_MS_THRESHOLD else number
            t = dt.datetime.fromtimestamp(float(seconds), dt.UTC)
        except (InvalidOperation, ValueError, OverflowError, OSError):
            raise _Rejected(R.BAD_TIMESTAMP, "ts: epoch number out of range") from None
    if t < EARLIEST:
        raise _Rejected(R.BAD_TIMESTAMP, f"ts {t.isoformat()} is before 2000 (clock not set?)")
    if t > now + max_future:
        ahead = (t - now).total_seconds()
        raise _Rejected(R.FUTURE_TIMESTAMP,
                        f"ts {t.isoformat()} is {ahead:.0f} s ahead of the collector clock "
                        f"(more than {max_future.total_seconds():.0f} s)")
    return t


def _hex_bytes(value: object, what: str) -> bytes:
    if not isinstance(value, str):
        raise _Rejected(RejectReason.BAD_PAYLOAD,
                        f"{what}: {type(value).__name__}, expected a hex string")
    text = "".join(value.split())
    if text[:2] in ("0x", "0X"):
        text = text[2:]
    if not text:
        raise _Rejected(RejectReason.BAD_HEX, f"{what}: empty")
    try:
        return bytes.fromhex(text)
    except ValueError:
        bad = next((i for i, c in enumerate(text) if c not in "0123456789abcdefABCDEF"), None)
        where = f"character {bad}" if bad is not None else f"odd length {len(text)}"
        raise _Rejected(RejectReason.BAD_HEX, f"{what}: not hex ({where})") from None


def _excerpt(obj: object) -> str:
    if isinstance(obj, (bytes, bytearray)):
        text = bytes(obj[: EXCERPT_CHARS * 4]).decode("utf-8", "replace")
    elif isinstance(obj, str):
        text = obj
    else:
        try:
            text = json.dumps(obj, default=_plain, ensure_ascii=False)
        except (TypeError, ValueError):  # pragma: no cover - JSON-loaded data dumps fine
            text = repr(obj)
    return text[:EXCERPT_CHARS]


def _plain(v: object) -> object:
    return float(v) if isinstance(v, Decimal) else str(v)


def _reject_constant(name: str) -> Any:
    raise ValueError(f"{name} is not a number JSON allows")


_SAFE_NAME = re.compile(r"^[A-Za-z0-9_.:/\-]{1,80}$")


def _name(text: str) -> str:
    """A name from the payload as it may appear in a log line (bounded, printable)."""
    return text if _SAFE_NAME.match(text) else repr(text[:32])


# ---- meters of a gateway -------------------------------------------------------------------

@dataclass(slots=True)
class _Gateway:
    # frame family -> address as its kinds normalise it -> meter
    by_frames: dict[str, dict[str, MeterSettings]]
    keys: dict[str, MeterKind]  # frame family -> a kind that normalises its addresses
    ids: set[str]

    def meter(self, family: str, key: str) -> MeterSettings | None:
        return self.by_frames.get(family, {}).get(key)


def _default_gateway_of(meter: MeterSettings) -> str:
    return meter.bus


# ---- the ingestor --------------------------------------------------------------------------

class ReportIngestor:
    """Gateway messages in, readings and rejects out (see the module doc and docs/mqtt.md).

    ``meters``: the configured meters; a gateway's meters are those whose
    ``gateway_of(meter)`` (default: the meter's ``bus``) is the gateway named in the topic.
    ``profiles(name)``: the Modbus device profile of a meter's ``profile`` setting
    (collector.config.profiles.load_profile fits).  ``readings(rows)`` gets the accepted
    readings of one message (never an empty list); ``reject(record)`` each rejection.
    """

    def __init__(
        self,
        meters: Sequence[MeterSettings],
        profiles: Callable[[str], Profile],
        readings: Callable[[list[Reading]], None],
        reject: Callable[[Reject], None],
        *,
        max_future: dt.timedelta = DEFAULT_MAX_FUTURE,
        now: Callable[[], dt.datetime] = utcnow,
        gateway_of: Callable[[MeterSettings], str] = _default_gateway_of,
        max_payload: int = MAX_PAYLOAD,
    ) -> None:
        self._profiles = profiles
        self._readings = readings
        self._reject = reject
        self.max_future = max_future
        self._now = now
        self._gateway_of = gateway_of
        self.max_payload = max_payload
        self.counts: Counter[RejectReason] = Counter()  # rejects by reason
        self.messages = 0
        self.accepted = 0  # readings handed to ``readings``
        self._log_state: dict[tuple[str, RejectReason], tuple[float, int]] = {}
        self._by_id: dict[str, MeterSettings] = {}
        self._gateways: dict[str, _Gateway] = {}
        self.update_meters(meters)

    def update_meters(self, meters: Iterable[MeterSettings]) -> None:
        """Replace the configured meters (a configuration reload)."""
        by_id: dict[str, MeterSettings] = {}
        gateways: dict[str, _Gateway] = {}
        for m in meters:
            by_id[m.meter_id] = m
            g = gateways.setdefault(self._gateway_of(m), _Gateway({}, {}, set()))
            g.ids.add(m.meter_id)
            try:
                kind = kind_of(m.protocol)
                family = kind.frame_family()
                if family is None:
                    continue
                key = kind.address_key(m.address)
            except (KeyError, ValueError) as e:
                log.warning("meter %s: %s; gateway reports cannot name it by address",
                            m.meter_id, e.args[0] if e.args else e)
                continue
            g.by_frames.setdefault(family, {})[key] = m
            g.keys.setdefault(family, kind)
        self._by_id, self._gateways = by_id, gateways

    # ---- entry ---------------------------------------------------------------------------

    def handle(self, topic: str, payload: bytes) -> int:
        """Ingest one MQTT message; the number of readings accepted.  Never raises on content
        (a sink that raises is let through: that is the daemon's problem, not the payload's)."""
        self.messages += 1
        ctx = _Message(self, topic, bytes(payload), self._now())
        try:
            self._dispatch(ctx)
        except _Rejected as e:
            ctx.reject(e.reason, e.detail, e.excerpt)
        except Exception as e:  # a bug here must not lose the message silently
            log.exception("gateway message on %s: internal error", _name(topic))
            ctx.reject(RejectReason.INTERNAL_ERROR, f"{type(e).__name__} while decoding")
        ctx.finish()
        if ctx.rows:
            self.accepted += len(ctx.rows)
            self._readings(ctx.rows)
        return len(ctx.rows)

    def _dispatch(self, ctx: _Message) -> None:
        R = RejectReason
        if len(ctx.payload) > self.max_payload:
            raise _Rejected(R.TOO_LARGE,
                            f"{len(ctx.payload)} bytes, limit {self.max_payload}")
        parts = split_topic(ctx.topic)
        if parts is None:
            raise _Rejected(R.BAD_TOPIC, "expected <prefix>/<gateway>/report or .../raw")
        gateway, kind = parts
        ctx.gateway = gateway
        try:
            text = ctx.payload.decode("utf-8-sig")
            doc = json.loads(text, parse_float=Decimal, parse_constant=_reject_constant)
        except UnicodeDecodeError as e:
            raise _Rejected(R.NOT_JSON, f"not UTF-8 (byte {e.start})") from None
        except (ValueError, RecursionError) as e:
            where = f" (line {e.lineno} column {e.colno})" \
                if isinstance(e, json.JSONDecodeError) else ""
            raise _Rejected(R.NOT_JSON, f"not JSON{where}") from None
        if not isinstance(doc, dict):
            raise _Rejected(R.BAD_PAYLOAD, f"top level is {_json_type(doc)}, expected an object")
        named = doc.get("gateway")
        if named is not None:
            if not isinstance(named, str):
                raise _Rejected(R.BAD_PAYLOAD, "gateway: expected a string")
            if named != gateway:
                raise _Rejected(R.GATEWAY_MISMATCH,
                                f"payload names gateway {_name(named)}, topic {_name(gateway)}")
        gw = self._gateways.get(gateway)
        if gw is None:
            raise _Rejected(R.UNKNOWN_GATEWAY,
                            f"no configured meter is behind gateway {_name(gateway)}")
        ctx.gw = gw
        if kind == "report":
            self._report(ctx, doc)
        elif any(k in doc for k in ("unit", "function", "start", "request")):
            self._modbus(ctx, doc)
        else:
            self._dlt645(ctx, doc)

    # ---- JSON reports --------------------------------------------------------------------

    def _report(self, ctx: _Message, doc: dict[str, Any]) -> None:
        R = RejectReason
        if "readings" in doc:
            if "values" in doc or "meter" in doc or "address" in doc:
                raise _Rejected(R.BAD_PAYLOAD,
                                "either readings (a list) or meter/address with values")
            entries = doc["readings"]
            if not isinstance(entries, list) or not entries:
                raise _Rejected(R.BAD_PAYLOAD, "readings: expected a non-empty list")
            default_ts = doc.get("ts")
            for i, entry in enumerate(entries):
                try:
                    if not isinstance(entry, dict):
                        raise _Rejected(R.BAD_PAYLOAD, f"readings[{i}]: {_json_type(entry)}, "
                                                       "expected an object")
                    self._entry(ctx, entry, default_ts, f"readings[{i}]")
                except _Rejected as e:
                    ctx.reject(e.reason, e.detail,
                               e.excerpt if e.excerpt is not None else _excerpt(entry))
            return
        self._entry(ctx, doc, None, "")

    def _entry(self, ctx: _Message, entry: dict[str, Any], default_ts: object,
               where: str) -> None:
        R = RejectReason
        at = f"{where}: " if where else ""
        meter = self._resolve(ctx, entry, at)
        values = entry.get("values")
        if not isinstance(values, dict) or not values:
            raise _Rejected(R.BAD_PAYLOAD, f"{at}values: expected a non-empty object")
        raw_ts = entry.get("ts", default_ts)
        meter_ts = None if raw_ts is None else \
            self._timestamp(raw_ts, ctx, f"{at}meter {meter.meter_id} ")
        for name, item in values.items():
            try:
                ctx.rows.append(self._value(meter, name, item, ctx.now, meter_ts))
            except _Rejected as e:
                ctx.reject(e.reason, f"meter {meter.meter_id}: {e.detail}",
                           _excerpt({name: item}))

    def _timestamp(self, value: object, ctx: _Message, what: str) -> dt.datetime:
        try:
            return parse_timestamp(value, ctx.now, self.max_future)
        except _Rejected as e:
            raise _Rejected(e.reason, f"{what}{e.detail}") from None

    def _resolve(self, ctx: _Message, entry: dict[str, Any], at: str) -> MeterSettings:
        R = RejectReason
        gw = ctx.gw
        assert gw is not None
        meter_id = entry.get("meter")
        address = entry.get("address")
        if meter_id is None and address is None:
            raise _Rejected(R.BAD_PAYLOAD, f"{at}neither meter nor address")
        found: MeterSettings | None = None
        if meter_id is not None:
            if not isinstance(meter_id, str):
                raise _Rejected(R.BAD_PAYLOAD, f"{at}meter: expected a string (a meter id)")
            found = self._by_id.get(meter_id)
            if found is None:
                raise _Rejected(R.UNKNOWN_METER, f"{at}meter {_name(meter_id)} is not "
                                                 "configured")
            if meter_id not in gw.ids:
                raise _Rejected(R.WRONG_GATEWAY,
                                f"{at}meter {meter_id} is configured behind gateway "
                                f"{_name(self._gateway_of(found))}, not {_name(ctx.gateway)}")
        if address is not None:
            by_address = self._by_address(gw, address, at)
            if found is not None and by_address is not found:
                raise _Rejected(R.UNKNOWN_METER, f"{at}address does not belong to meter "
                                                 f"{found.meter_id}")
            found = by_address
        assert found is not None
        return found

    def _by_address(self, gw: _Gateway, address: object, at: str) -> MeterSettings:
        R = RejectReason
        if isinstance(address, bool) or not isinstance(address, (str, int)):
            raise _Rejected(R.BAD_PAYLOAD, f"{at}address: expected a string (DL/T645 "
                                           "address) or an integer (Modbus unit id)")
        text = str(address).strip()
        matches: dict[str, MeterSettings] = {}
        for family, kind in gw.keys.items():
            try:
                m = gw.meter(family, kind.address_key(text))
            except ValueError:
                continue  # not an address of this family's meters
            if m is not None:
                matches[m.meter_id] = m
        if not matches:
            raise _Rejected(R.UNKNOWN_METER, f"{at}address {_name(text)} is no meter of "
                                             "this gateway")
        if len(matches) > 1:
            raise _Rejected(R.AMBIGUOUS_METER, f"{at}address {_name(text)} names meters "
                            f"{' and '.join(sorted(matches))}; send meter instead")
        return next(iter(matches.values()))

    def _value(self, meter: MeterSettings, name: object, item: object, now: dt.datetime,
               meter_ts: dt.datetime | None) -> Reading:
        R = RejectReason
        if not isinstance(name, str):  # pragma: no cover - JSON object keys are strings
            raise _Rejected(R.BAD_PAYLOAD, "quantity name is not a string")
        q = QUANTITIES.get(name)
        if q is None:
            raise _Rejected(R.UNKNOWN_QUANTITY, f"unknown quantity {_name(name)}")
        unit: object = None
        if isinstance(item, dict):
            if "value" not in item:
                raise _Rejected(R.BAD_PAYLOAD, f"{name}: object without value")
            unit = item.get("unit")
            item = item["value"]
        if unit is not None and not isinstance(unit, str):
            raise _Rejected(R.BAD_PAYLOAD, f"{name}: unit is not a string")
        if isinstance(item, bool) or not isinstance(item, (int, Decimal)):
            raise _Rejected(R.BAD_VALUE, f"{name}: {_json_type(item)}, expected a JSON number")
        number = Decimal(item) if isinstance(item, int) else item
        if q.kind in (Kind.STATUS, Kind.COUNT):
            if unit not in (None, ""):
                raise _Rejected(R.UNIT_MISMATCH, f"{name}: unit {_name(unit)}, "
                                                 "expected none")
            if not number.is_finite() or number != number.to_integral_value() or number < 0:
                raise _Rejected(R.BAD_VALUE, f"{name}: expected a non-negative integer")
            if q.kind is Kind.STATUS and number > 0xFFFF:
                raise _Rejected(R.BAD_VALUE, f"{name}: status word above 0xFFFF")
        elif q.kind is Kind.NUMBER:
            if unit is not None:
                converted = convert_unit(number, unit, q.unit)
                if converted is None:
                    raise _Rejected(R.UNIT_MISMATCH, f"{name}: unit {_name(unit)}, expected "
                                                     f"{q.unit or 'none'}")
                number = converted
        else:
            raise _Rejected(R.UNSUPPORTED_QUANTITY,
                            f"{name}: a {q.kind} is not reported as a number (the report's "
                            "ts carries the meter clock)")
        try:
            value = float(number)
        except (OverflowError, InvalidOperation):  # pragma: no cover - float() saturates
            value = math.inf
        if not math.isfinite(value):
            raise _Rejected(R.BAD_VALUE, f"{name}: not a finite number")
        why = implausible(name, value)
        if why is not None:
            raise _Rejected(R.IMPLAUSIBLE, f"{name}: {why}")
        return Reading(meter.meter_id, name, value, q.unit, now, meter_ts, Quality.GOOD)

    # ---- raw DL/T645 frames ------------------------------------------------------------

    def _dlt645(self, ctx: _Message, doc: dict[str, Any]) -> None:
        R = RejectReason
        if "frames" in doc:
            if "frame" in doc:
                raise _Rejected(R.BAD_PAYLOAD, "either frame or frames")
            frames = doc["frames"]
            if not isinstance(frames, list) or not frames:
                raise _Rejected(R.BAD_PAYLOAD, "frames: expected a non-empty list of hex "
                                               "strings")
        elif "frame" in doc:
            frames = [doc["frame"]]
        else:
            raise _Rejected(R.BAD_PAYLOAD, "no frame (or frames)")
        meter_ts = None if doc.get("ts") is None else self._timestamp(doc["ts"], ctx, "")
        several = len(frames) > 1
        for i, value in enumerate(frames):
            what = f"frames[{i}]" if several or "frames" in doc else "frame"
            try:
                ctx.rows.extend(self._dlt645_frame(ctx, value, what, meter_ts))
            except _Rejected as e:
                ctx.reject(e.reason, e.detail, e.excerpt if e.excerpt is not None
                           else _excerpt(value))

    def _dlt645_frame(self, ctx: _Message, value: object, what: str,
                      meter_ts: dt.datetime | None) -> list[Reading]:
        R = RejectReason
        gw = ctx.gw
        assert gw is not None
        raw = _hex_bytes(value, what)
        try:
            frame = parse_frame(raw)
        except FrameError as e:
            reason = R.CHECKSUM if e.problem.startswith("checksum") else R.BAD_FRAME
            raise _Rejected(reason, f"{what}: {e}") from None
        meter = gw.meter(DLT645_FRAMES, frame.address)
        if meter is None:
            raise _Rejected(R.UNKNOWN_METER, f"{what}: address {frame.address} is no "
                                             "DL/T645 meter of this gateway")
        if not frame.is_reply:
            raise _Rejected(R.UNSUPPORTED_FRAME, f"{what}: a request (control "
                                                 f"{frame.control:02X}), not a reply")
        try:  # the meter's edition decodes it
            message = kind_of(meter.protocol).decode_reply(frame)
        except Unsupported as e:
            raise _Rejected(R.UNSUPPORTED_FRAME, f"{what}: {e}") from None
        except (DLT645Error, ValueError, IndexError) as e:
            raise _Rejected(R.BAD_FRAME, f"{what}: {e}") from None
        if isinstance(message, AbnormalReply):
            raise _Rejected(R.ABNORMAL_REPLY, f"{what}: meter {meter.meter_id} refused: "
                                              f"{', '.join(message.errors) or 'no error bit'}")
        if not isinstance(message, ReadReply):  # pragma: no cover - decode_reply says so
            raise _Rejected(R.UNSUPPORTED_FRAME, f"{what}: control {frame.control:02X} is not "
                                                 "a read reply")
        width = 4 if message.version is Version.V1997 else 8
        di = f"{message.di:0{width}X}"
        if message.follow_up:
            raise _Rejected(R.UNSUPPORTED_FRAME, f"{what}: DI {di} continues in follow-up "
                                                 "frames; send the whole value in one reply")
        item = message.item
        if item is None:
            raise _Rejected(R.UNKNOWN_DI, f"{what}: DI {di} is not in the catalogue")
        if item.settlement:
            raise _Rejected(R.UNSUPPORTED_QUANTITY,
                            f"{what}: DI {di} is {item.settlement} settlement(s) ago, not a "
                            "present value")
        if item.freeze > 1:
            raise _Rejected(R.UNSUPPORTED_QUANTITY,
                            f"{what}: DI {di} is the daily freeze of {item.freeze} days ago, "
                            "not the last one")
        try:
            decoded = message.value()
        except (DLT645Error, ValueError) as e:
            raise _Rejected(R.BAD_VALUE, f"{what}: DI {di}: {e}") from None
        if item.is_block:
            assert isinstance(decoded, dict)
            parts = [(m.name, m.unit, decoded[m.name]) for m in item.members if m.name in decoded]
            quality = Quality.BLOCK_READ
        else:
            parts = [(item.name, item.unit, decoded)]
            quality = Quality.GOOD
        out: list[Reading] = []
        for name, unit, v in parts:
            number = to_number(v)
            if number is None:
                ctx.reject(R.UNSUPPORTED_QUANTITY, f"{what}: DI {di}: {name} is not a "
                                                   "number", _excerpt(value))
                continue
            if _refused(ctx, name, number, f"{what}: DI {di}: meter {meter.meter_id}",
                        _excerpt(value)):
                continue
            out.append(Reading(meter.meter_id, name, number, unit, ctx.now, meter_ts, quality))
        return out

    # ---- raw Modbus RTU frames ---------------------------------------------------------

    def _modbus(self, ctx: _Message, doc: dict[str, Any]) -> None:
        R = RejectReason
        gw = ctx.gw
        assert gw is not None

        def small_int(key: str, low: int, high: int) -> int | None:
            v = doc.get(key)
            if v is None:
                return None
            if isinstance(v, bool) or not isinstance(v, int) or not low <= v <= high:
                raise _Rejected(R.BAD_PAYLOAD, f"{key}: expected an integer {low}..{high}")
            return v

        unit = small_int("unit", 0, 255)
        function = small_int("function", 1, 127)
        start = small_int("start", 0, 0xFFFF)
        if "frame" not in doc:
            raise _Rejected(R.BAD_PAYLOAD, "no frame (the RTU reply, hex)")
        reply = _hex_bytes(doc["frame"], "frame")
        meter_ts = None if doc.get("ts") is None else self._timestamp(doc["ts"], ctx, "")
        if len(reply) < 5:
            raise _Rejected(R.BAD_FRAME, f"frame: {len(reply)} bytes, an RTU reply has at "
                                         "least 5")
        try:
            check_crc(reply)
        except CrcError as e:
            raise _Rejected(R.CHECKSUM, f"frame: {e.problem}") from None
        f_unit, f_function = reply[0], reply[1]
        if unit is not None and unit != f_unit:
            raise _Rejected(R.BAD_FRAME, f"frame: from unit {f_unit}, payload says unit {unit}")
        if function is not None and function != f_function & 0x7F:
            raise _Rejected(R.BAD_FRAME, f"frame: function {f_function & 0x7F}, payload says "
                                         f"function {function}")
        meter = gw.meter(MODBUS_FRAMES, str(f_unit))
        if meter is None:
            raise _Rejected(R.UNKNOWN_METER, f"unit {f_unit} is no Modbus meter of this "
                                             "gateway")
        if f_function not in (3, 4) and not f_function & 0x80:
            raise _Rejected(R.UNSUPPORTED_FRAME, f"frame: function {f_function}, only read "
                                                 "replies (3, 4) carry readings")
        try:
            pdu = kind_of(meter.protocol).decode_reply(reply).pdu
        except Unsupported as e:  # pragma: no cover - every kind of the family decodes
            raise _Rejected(R.UNSUPPORTED_FRAME, f"frame: {e}") from None
        except RtuError as e:
            raise _Rejected(R.BAD_FRAME, f"frame: {e}") from None
        if pdu.kind is FrameKind.EXCEPTION:
            raise _Rejected(R.ABNORMAL_REPLY, f"meter {meter.meter_id} answered exception "
                                              f"{pdu.exception:02X} to function {pdu.function}")
        words = list(pdu.values)
        count = len(words)
        if "request" in doc:
            req_start, req_count = self._modbus_request(doc["request"], f_unit, f_function)
            if start is not None and start != req_start:
                raise _Rejected(R.BAD_FRAME, f"request starts at {req_start}, payload says "
                                             f"start {start}")
            if req_count != count:
                raise _Rejected(R.BAD_FRAME, f"request for {req_count} registers, reply "
                                             f"carries {count}")
            start = req_start
        if start is None:
            raise _Rejected(R.BAD_PAYLOAD, "start (or request) is required: an RTU reply does "
                                           "not carry its register address")
        if not meter.profile:
            raise _Rejected(R.NO_PROFILE, f"meter {meter.meter_id} has no device profile")
        try:
            profile = self._profiles(meter.profile)
        except Exception as e:
            raise _Rejected(R.NO_PROFILE, f"meter {meter.meter_id}: profile "
                                          f"{_name(meter.profile)}: {type(e).__name__}") from None
        end = start + count
        inside: list[Register] = [r for r in profile.registers
                                  if r.function == f_function and start <= r.address
                                  and r.end <= end]
        if not inside:
            raise _Rejected(R.UNKNOWN_REGISTER,
                            f"meter {meter.meter_id}: profile {profile.name} has no register "
                            f"in function {f_function} addresses {start}..{end - 1}")
        for reg in inside:
            offset = reg.address - start
            try:
                number = decode_register(reg, words[offset:offset + reg.words])
            except ValueError as e:
                ctx.reject(R.BAD_VALUE, f"meter {meter.meter_id}: {e}", _excerpt(doc["frame"]))
                continue
            if _refused(ctx, reg.name, float(number), f"meter {meter.meter_id}",
                        _excerpt(doc["frame"])):
                continue
            ctx.rows.append(Reading(meter.meter_id, reg.name, float(number), reg.unit, ctx.now,
                                    meter_ts, Quality.GOOD))

    def _modbus_request(self, value: object, unit: int, function: int) -> tuple[int, int]:
        R = RejectReason
        req = _hex_bytes(value, "request")
        if len(req) != 8:
            raise _Rejected(R.BAD_FRAME, f"request: {len(req)} bytes, a read request has 8")
        try:
            frame = parse_rtu(req, FrameKind.REQUEST)
        except CrcError as e:
            raise _Rejected(R.CHECKSUM, f"request: {e.problem}") from None
        except RtuError as e:
            raise _Rejected(R.BAD_FRAME, f"request: {e}") from None
        if frame.unit != unit or frame.function != function:
            raise _Rejected(R.BAD_FRAME, f"request to unit {frame.unit} function "
                                         f"{frame.function}, reply from unit {unit} "
                                         f"function {function}")
        assert frame.pdu.address is not None and frame.pdu.quantity is not None
        return frame.pdu.address, frame.pdu.quantity

    # ---- rejects ---------------------------------------------------------------------------

    def _log(self, gateway: str, reason: RejectReason, detail: str) -> None:
        key = (gateway, reason)
        mono = time.monotonic()
        last, suppressed = self._log_state.get(key, (-math.inf, 0))
        if mono - last < LOG_EVERY:
            self._log_state[key] = (last, suppressed + 1)
            return
        more = f" (+{suppressed} similar in the last {LOG_EVERY:.0f} s)" if suppressed else ""
        log.warning("gateway %s: rejected %s: %s%s", _name(gateway) if gateway else "?",
                    reason.value, detail, more)
        self._log_state[key] = (mono, 0)


def _refused(ctx: _Message, name: str, value: float, where: str, excerpt: str) -> bool:
    """Reject (and True) a decoded value that cannot be a reading of ``name``."""
    why = implausible(name, value)
    if why is None:
        return False
    reason = RejectReason.BAD_VALUE if not math.isfinite(value) else RejectReason.IMPLAUSIBLE
    ctx.reject(reason, f"{where}: {name}: {why}", excerpt)
    return True


def _json_type(v: object) -> str:
    if v is None:
        return "null"
    if isinstance(v, bool):
        return "a boolean"
    if isinstance(v, (int, Decimal, float)):
        return "a number"
    if isinstance(v, str):
        return "a string"
    if isinstance(v, list):
        return "a list"
    if isinstance(v, dict):
        return "an object"
    return type(v).__name__  # pragma: no cover


class _Message:
    """The state of one message being ingested."""

    __slots__ = ("gateway", "gw", "ingestor", "now", "payload", "recorded", "rows", "topic",
                 "unrecorded")

    def __init__(self, ingestor: ReportIngestor, topic: str, payload: bytes,
                 now: dt.datetime) -> None:
        self.ingestor = ingestor
        self.topic = topic
        self.payload = payload
        self.now = now
        self.gateway = ""
        self.gw: _Gateway | None = None
        self.rows: list[Reading] = []
        self.recorded = 0
        self.unrecorded = 0

    def reject(self, reason: RejectReason, detail: str, excerpt: str | None = None) -> None:
        ing = self.ingestor
        ing.counts[reason] += 1
        ing._log(self.gateway, reason, detail)
        if self.recorded >= MAX_REJECTS_PER_MESSAGE:
            self.unrecorded += 1
            return
        self.recorded += 1
        ing._reject(Reject(self.now, self.topic, reason, detail,
                           excerpt if excerpt is not None else _excerpt(self.payload)))

    def finish(self) -> None:
        if self.unrecorded:
            log.warning("gateway %s: %d more rejects of one message on %s counted, not "
                        "recorded", _name(self.gateway) or "?", self.unrecorded,
                        _name(self.topic))


def summary(counts: Mapping[RejectReason, int]) -> str:
    """``reason N, reason M`` for a log line or a status page."""
    return ", ".join(f"{r.value} {n}" for r, n in sorted(counts.items())) or "none"

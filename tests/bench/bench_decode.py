#!/usr/bin/env python
"""DL/T645 reply decode throughput: amic (the driver's path, parse_frame) against PyPI ``dlt645``.

Run on demand, never under pytest (pyproject excludes tests/bench):

    .venv/bin/python tests/bench/bench_decode.py [--seconds 3] [--repeat 3] [--extra]

"Full decode" means: wire bytes of one reply frame -> data identifier -> value.

* amic, driver path (the row that counts): the bytes through ``FrameExtractor`` (what
  ``Master.receive_data`` feeds from the bus), ``check_reply(address, 11, di, frame)``
  (what ``Master.next_reply`` does: address, function, DI checked, ``decode_message``)
  -> ``.di``, ``.value()``.
* amic parse_frame: ``parse_frame(raw)`` (hand-sliced) -> ``decode_message(frame)``
  -> ``.di``, ``.value()``; and the same through the construct definition
  (``compiled=False``, the reference the tests hold the sliced code to).
* dlt645: ``DLT645Protocol.deserialize(raw)`` -> ``MeterClientService.handle_response(frame)``
          -> ``item.di``, ``item.value``.  That is exactly what
          ``MeterClientService.send_and_handle_request`` does with the bytes its transport
          returns (dlt645/service/clientsvc/client_service.py), minus the socket.  The service
          object is built with an unconnected ``TcpClient``; ``handle_response`` never touches it.
          ``svc.address`` is set to the frame's address before each call, as the client knows
          which meter it asked (``handle_response`` rejects replies from another address).

Both decoders must agree on every value of the timed set, or the bench stops: the figures
would not measure the same work.  Frames where the two packages disagree are decoded and
shown separately ("probes"), never timed.

Figures are frames/s (best and median of the repetitions).  Within a repetition the
variants take turns in slices of 0.05 s until each has had ``--seconds``, so load from
elsewhere on the machine falls on all of them alike, and the ratio to dlt645 is given per
repetition.  Timing is wall-clock ``perf_counter`` over whole passes of the frame set; the
loop overhead is the same for every variant.
"""

from __future__ import annotations

import argparse
import datetime as dt
import gc
import json
import platform
import statistics
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from decimal import Decimal
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[2]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

import construct  # noqa: E402
import dlt645  # type: ignore[import-untyped]  # noqa: E402
from dlt645 import DLT645Protocol, MeterClientService, TcpClient  # noqa: E402
from dlt645.common import base_log  # type: ignore[import-untyped]  # noqa: E402
from loguru import logger  # noqa: E402

from protocols.dlt645 import (  # noqa: E402
    FrameExtractor,
    ReadReply,
    build_frame,
    by_di,
    check_reply,
    decode_message,
    encode_value,
    parse_frame,
)

REFERENCE = ROOT.parent / "shared" / "reference" / "dlt645_frames.jsonl"
LOCAL_COPY = ROOT / "tests" / "data" / "dlt645_frames.jsonl"

# Extra normal replies built with amic's own encoder: (address, DI, value in the DI's unit).
# Several addresses, signed quantities both ways, tariffs, every kind of instantaneous value,
# and the clock, so the set is not 13 copies of one code path.
EXTRA_REPLIES: list[tuple[str, int, Any]] = [
    ("000000000002", 0x00010100, Decimal("1234.56")),   # forward active energy, tariff 1
    ("000000000002", 0x00000000, Decimal("-12.34")),    # combined active energy (signed)
    ("000000000003", 0x00020000, Decimal("0.00")),      # reverse active energy
    ("000000000003", 0x02010200, Decimal("231.7")),     # voltage B
    ("123456789012", 0x02020300, Decimal("-12.345")),   # current C, reverse
    ("123456789012", 0x02030200, Decimal("1.2345")),    # active power B
    ("000000000002", 0x02040000, Decimal("-0.8765")),   # reactive power total
    ("000000000002", 0x02050000, Decimal("4.3210")),    # apparent power total
    ("000000000003", 0x02060100, Decimal("-0.500")),    # power factor A
    ("000000000003", 0x02800001, Decimal("0.012")),     # neutral current
    ("123456789012", 0x02800002, Decimal("49.98")),     # frequency
    ("000000000001", 0x04000101, dt.date(2024, 5, 17)),  # date (Friday)
    ("000000000001", 0x04000102, dt.time(13, 45, 9)),    # time
]

# Frames on which the packages are expected to differ: decoded, shown, never timed.
PROBES: list[tuple[str, str, int, bytes]] = [
    # (what, address, DI, value bytes as they travel minus 33H)
    ("forward energy 812345.67 kWh (top digit >= 8)", "000000000001", 0x00010000,
     encode_value(by_di(0x00010000), Decimal("812345.67"))),
    ("voltage A with 3 value bytes (format is 2)", "000000000001", 0x02010100,
     bytes.fromhex("002300")),
    ("energy with a non-BCD digit", "000000000001", 0x00010000, bytes.fromhex("0A000000")),
]


@dataclass(frozen=True)
class Case:
    label: str
    raw: bytes
    addr_wire: bytes   # dlt645 compares the address as wire bytes
    address: str       # amic: 12 digits, most significant first
    di: int


def reference_path() -> Path:
    return REFERENCE if REFERENCE.exists() else LOCAL_COPY


def load_cases() -> list[Case]:
    cases: list[Case] = []
    for line in reference_path().read_text().splitlines():
        if not line.strip():
            continue
        rec = json.loads(line)
        if rec["direction"] != "reply" or rec["abnormal"]:
            continue
        raw = bytes.fromhex(rec["hex"])
        cases.append(Case(f"ref {rec['di']}", raw, _wire_address(rec["address"]),
                          rec["address"], int(rec["di"], 16)))
    n_ref = len(cases)
    for address, di, value in EXTRA_REPLIES:
        raw = _reply_frame(address, di, encode_value(by_di(di), value))
        cases.append(Case(f"amic {di:08X}", raw, _wire_address(address), address, di))
    assert n_ref >= 13, f"expected the 13 normal replies of {reference_path()}, got {n_ref}"
    return cases


def _wire_address(address: str) -> bytes:
    return bytes.fromhex(address)[::-1]


def _reply_frame(address: str, di: int, body: bytes) -> bytes:
    return build_frame(ReadReply(address=address, di=di, body=body).to_frame())


# ---- the decoders under test --------------------------------------------------------------

def new_dlt645_service() -> MeterClientService:
    # No connection is opened: TcpClient() only stores ip/port; handle_response never uses it.
    return MeterClientService(TcpClient())


def amic_decode(raw: bytes, compiled: bool) -> tuple[int, Any]:
    msg = decode_message(parse_frame(raw, compiled=compiled))
    assert isinstance(msg, ReadReply), msg
    return msg.di, msg.value()


def dlt645_decode(svc: MeterClientService, raw: bytes, addr_wire: bytes) -> tuple[int, Any]:
    frame = DLT645Protocol.deserialize(raw)
    svc.address = bytearray(addr_wire)
    item = svc.handle_response(frame)
    if item is None:
        raise ValueError("dlt645 client rejected the reply (handle_response returned None)")
    return item.di, item.value


# ---- agreement ----------------------------------------------------------------------------

def same_value(amic_value: Any, pkg_value: Any) -> bool:
    """amic gives Decimal/date/time; dlt645 gives float for numbers, digit strings for 04xx."""
    if isinstance(amic_value, Decimal):
        return isinstance(pkg_value, float) and float(amic_value) == pkg_value
    if isinstance(amic_value, dt.date):
        # dlt645: YYMMDDWW digits; amic keeps the date (week is derived, not returned).
        return isinstance(pkg_value, str) and pkg_value[:6] == f"{amic_value:%y%m%d}"
    if isinstance(amic_value, dt.time):
        return isinstance(pkg_value, str) and pkg_value == f"{amic_value:%H%M%S}"
    return bool(amic_value == pkg_value)


def verify(cases: list[Case]) -> None:
    svc = new_dlt645_service()
    print(f"{'frame':<16} {'DI':<9} {'amic compiled':>14} {'amic plain':>14} {'dlt645':>14}  agree")
    bad = 0
    for c in cases:
        di_c, v_c = amic_decode(c.raw, compiled=True)
        di_p, v_p = amic_decode(c.raw, compiled=False)
        di_d, v_d = dlt645_decode(svc, c.raw, c.addr_wire)
        ok = (di_c == di_p == di_d == c.di and v_c == v_p and same_value(v_c, v_d))
        bad += not ok
        print(f"{c.label:<16} {c.di:08X}  {v_c!s:>14} {v_p!s:>14} {v_d!s:>14}  "
              f"{'yes' if ok else 'NO'}")
    if bad:
        sys.exit(f"{bad} frame(s) decode differently: the timings would not compare the same work")
    print(f"all {len(cases)} frames: same DI and same value in all three decoders\n")


def show_probes() -> None:
    print("Probes (not timed): frames on which the packages are expected to differ")
    svc = new_dlt645_service()
    for what, address, di, body in PROBES:
        raw = _reply_frame(address, di, body)
        try:
            a: Any = amic_decode(raw, compiled=True)[1]
        except Exception as e:
            a = f"{type(e).__name__}: {e}"
        try:
            d: Any = dlt645_decode(svc, raw, _wire_address(address))[1]
        except Exception as e:
            d = f"{type(e).__name__}: {e}"
        print(f"  {what}\n    amic:   {a}\n    dlt645: {d}")
    print()


# ---- timing -------------------------------------------------------------------------------

Pass = Callable[[], None]


def amic_pass(cases: list[Case], compiled: bool) -> Pass:
    raws = [c.raw for c in cases]
    pf, dm = parse_frame, decode_message

    def run() -> None:
        for raw in raws:
            msg = dm(pf(raw, compiled=compiled))
            _ = msg.di, msg.value()  # type: ignore[attr-defined]
    return run


def amic_master_pass(cases: list[Case]) -> Pass:
    """parse_frame, then checked against the request (address, 11, DI) as Master does."""
    rows = [(c.raw, c.address, c.di) for c in cases]

    def run() -> None:
        for raw, address, di in rows:
            msg = check_reply(address, 0x11, di, parse_frame(raw))
            _ = msg.di, msg.value()  # type: ignore[attr-defined]
    return run


def amic_stream_pass(cases: list[Case]) -> Pass:
    """Bytes through FrameExtractor (what a driver feeds from the socket), then decode."""
    rows = [(c.raw, c.address, c.di) for c in cases]
    ex = FrameExtractor()

    def run() -> None:
        for raw, address, di in rows:
            ex.feed(raw)
            frame = ex.next_frame()
            msg = check_reply(address, 0x11, di, frame)  # type: ignore[arg-type]
            _ = msg.di, msg.value()  # type: ignore[attr-defined]
    return run


def dlt645_pass(cases: list[Case]) -> Pass:
    svc = new_dlt645_service()
    rows = [(c.raw, bytearray(c.addr_wire)) for c in cases]
    deserialize, handle = DLT645Protocol.deserialize, svc.handle_response

    def run() -> None:
        for raw, addr in rows:
            frame = deserialize(raw)
            svc.address = addr
            item = handle(frame)
            _ = item.di, item.value
    return run


def dlt645_stream_pass(cases: list[Case]) -> Pass:
    """What the real TCP client does per reply: TcpClient._take_complete_frame over the
    receive buffer (a first deserialize), the RX log line's hex text, then
    send_and_handle_request's deserialize + handle_response."""
    svc = new_dlt645_service()
    tcp = svc.client
    rows = [(c.raw, bytearray(c.addr_wire)) for c in cases]
    log_rx = tcp.send_request.__globals__["log"]
    spaced = tcp.send_request.__globals__["bytes_to_spaced_hex"]

    def run() -> None:
        for raw, addr in rows:
            tcp._read_buffer.extend(raw)
            response = tcp._take_complete_frame()
            log_rx.info(f"RX: {spaced(response)}")
            frame = DLT645Protocol.deserialize(response)
            svc.address = addr
            item = svc.handle_response(frame)
            _ = item.di, item.value
    return run


class _NullSink:
    def write(self, message: str) -> None:
        pass


def enable_dlt645_debug_logging() -> int:
    """The library's own handler set-up (base_log._install) at DEBUG, minus the I/O: same
    formatter and filter, a sink that drops the text, no queue thread."""
    return logger.add(_NullSink(), level="DEBUG", format=base_log._formatter,
                      filter=base_log._is_lib_record, colorize=False, backtrace=True)


SLICE = 0.05  # seconds a variant runs before the next takes over


def measure(variants: list[Variant], n: int, seconds: float) -> list[float]:
    """Frames/s of each variant, in turns of ``SLICE`` until each ran ``seconds``."""
    gc.collect()
    done = [0] * len(variants)
    spent = [0.0] * len(variants)
    while min(spent) < seconds:
        for i, v in enumerate(variants):
            token = v.setup() if v.setup else None
            try:
                t0 = time.perf_counter()
                deadline = t0 + SLICE
                while True:
                    v.run()
                    done[i] += n
                    t = time.perf_counter()
                    if t >= deadline:
                        break
                spent[i] += t - t0
            finally:
                if v.teardown:
                    v.teardown(token)
    return [d / s for d, s in zip(done, spent, strict=True)]


@dataclass
class Variant:
    name: str
    run: Pass
    setup: Callable[[], Any] | None = None
    teardown: Callable[[Any], None] | None = None


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seconds", type=float, default=3.0, help="time per run (default 3)")
    ap.add_argument("--repeat", type=int, default=3, help="runs per variant (default 3)")
    ap.add_argument("--extra", action="store_true",
                    help="also time the master/stream paths of both packages")
    ap.add_argument("--no-logging-variant", action="store_true",
                    help="skip dlt645 with DEBUG logging enabled")
    args = ap.parse_args()

    cases = load_cases()
    print(f"Python {platform.python_version()} ({platform.python_implementation()}), "
          f"construct {construct.__version__}, dlt645 {dlt645.__version__}")
    print(f"frames: {len(cases)} normal read replies ({reference_path()} + amic-built)\n")

    base_log.configure_logging(enabled=False)  # the library default; make sure of it
    handlers = logger._core.handlers  # type: ignore[attr-defined]
    assert not handlers, "a loguru handler is installed: timings would include it"
    verify(cases)
    show_probes()

    n = len(cases)
    driver = "amic driver path: FrameExtractor + check_reply"
    sliced = "amic parse_frame (sliced) + decode_message"
    ref = "dlt645 deserialize+handle_response (logging off)"
    variants = [
        Variant(driver, amic_stream_pass(cases)),
        Variant(sliced, amic_pass(cases, compiled=True)),
        Variant("amic construct reference (compiled=False)", amic_pass(cases, compiled=False)),
        Variant(ref, dlt645_pass(cases)),
    ]
    if not args.no_logging_variant:
        variants.append(Variant("dlt645 same, DEBUG logging to null sink", dlt645_pass(cases),
                                enable_dlt645_debug_logging, logger.remove))
    if args.extra:
        variants += [
            Variant("amic parse_frame + check_reply (Master path)", amic_master_pass(cases)),
            Variant("dlt645 TcpClient framing + client decode", dlt645_stream_pass(cases)),
        ]

    for v in variants:  # warm up (caches, first-call costs)
        v.run()
    results: dict[str, list[float]] = {v.name: [] for v in variants}
    for rep in range(args.repeat):
        for v, rate in zip(variants, measure(variants, n, args.seconds), strict=True):
            results[v.name].append(rate)
        print(f"repetition {rep + 1}/{args.repeat} done", file=sys.stderr)

    ref_best, ref_med = max(results[ref]), statistics.median(results[ref])
    w = max(len(name) for name in results)
    print(f"{args.repeat} x {args.seconds:g} s per variant, {n} frames per pass\n")
    print(f"{'variant':<{w}}  {'best f/s':>10}  {'median f/s':>10}  {'us/frame':>8}  "
          f"{'x dlt645 best':>13}  {'x median':>8}")
    print("-" * (w + 60))
    for name, rates in results.items():
        best, med = max(rates), statistics.median(rates)
        print(f"{name:<{w}}  {best:>10,.0f}  {med:>10,.0f}  {1e6 / best:>8.2f}  "
              f"{best / ref_best:>13.2f}  {med / ref_med:>8.2f}")
    print()
    print("runs (frames/s): " + "; ".join(
        f"{name}: {', '.join(f'{r:,.0f}' for r in rates)}" for name, rates in results.items()))
    print()
    for name in (driver, sliced):
        per_run = [a / b for a, b in zip(results[name], results[ref], strict=True)]
        print(f"{name} / dlt645, per run: {', '.join(f'{r:.2f}x' for r in per_run)}  "
              f"(goal >= 2x in every run: {'met' if min(per_run) >= 2 else 'NOT met'})")


if __name__ == "__main__":
    main()

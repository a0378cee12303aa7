#!/usr/bin/env python
"""376.1 full decode throughput: wire bytes -> Frame -> typed data units.

Run on demand, never under pytest (pyproject excludes tests/bench):

    .venv/bin/python tests/bench/bench_3761_decode.py [--seconds 2] [--repeat 3]

The frame set mixes the reference's example frames (login, heartbeat, confirms, reads,
AFN10 forwarding, reset) with built replies of the data the collector reads (F25, F33,
F129, F161, F1 daily, an AFN0D curve, AFN0E events).  Figures are frames/s (best and
median of the repetitions), compiled construct against the plain one, interleaved.
"""

from __future__ import annotations

import argparse
import datetime as dt
import statistics
import sys
import time
from collections.abc import Callable
from decimal import Decimal
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from protocols.qgdw3761 import (  # noqa: E402
    ActiveEnergy,
    Curve,
    CurveTag,
    DataUnit,
    Direction,
    EnergyReadings,
    Erc14,
    EventRecord,
    EventRecords,
    Frame,
    FrozenActiveEnergy,
    FrozenEnergy,
    PresentValues,
    build_frame,
    decode_units,
    encode_units,
    parse_frame,
)

REFERENCE = [  # the frames of the reference's §10 (K1-K5, J2, J4)
    "68 3A 00 3A 00 68 E9 49 24 45 58 00 02 70 00 00 01 00 09 01 70 16",
    "68 32 00 32 00 68 0B 49 24 45 58 02 00 60 00 00 01 00 78 16",
    "68 4A 00 4A 00 68 C9 49 24 45 58 00 02 70 00 00 04 00 17 41 17 03 67 19 3B 16",
    "68 32 00 32 00 68 C9 49 24 45 58 00 02 71 00 00 02 00 48 16",
    "68 32 00 32 00 68 7B 01 58 11 28 02 0C 60 02 01 01 10 8F 16",
    "68 E2 00 E2 00 68 4B 00 02 34 12 04 10 E0 00 00 01 00 1F 6B BC 0A 10 00 68 61 10 01 30"
    " 12 15 68 11 04 33 33 34 33 7B 16 00 00 00 00 00 00 00 00 00 00 00 00 00 00 00 00 00"
    " 13 51 23 21 05 A1 16",
    "68 AE 00 AE 00 68 A8 00 02 34 12 04 10 E0 00 00 01 00 1F 14 00 68 61 10 01 30 12 15 68"
    " 91 08 33 33 34 33 AB 39 33 33 49 16 4F 00 00 06 50 23 21 05 AE 16",
    "68 8A 00 8A 00 68 41 00 02 34 12 04 01 F0 00 00 01 00" + " 00" * 16
    + " 00 28 53 13 07 05 19 16",
    "68 52 00 52 00 68 A0 00 02 34 12 04 00 E0 00 00 01 00 11 00 00 27 52 13 07 05 76 16",
]


def _reply(afn: int, units: list[DataUnit]) -> bytes:
    return build_frame(Frame(0x88, "4403", 7, 0, afn, 0x60,
                             encode_units(afn, Direction.UP, units)))


def frame_set() -> list[bytes]:
    when = dt.datetime(2024, 5, 6, 10, 15)
    day = dt.date(2024, 5, 5)
    four = tuple(Decimal(f"{1000 + i}.1234") for i in range(5))
    kvarh = tuple(Decimal(f"{200 + i}.12") for i in range(5))
    built = [
        _reply(0x0C, [DataUnit(1, 25, PresentValues(
            when, *[Decimal("1.2345")] * 8, *[Decimal("0.987")] * 4, *[Decimal("230.5")] * 3,
            *[Decimal("5.123")] * 4, *[Decimal("1.5")] * 4))]),
        _reply(0x0C, [DataUnit(1, 33, EnergyReadings(when, four, kvarh, kvarh, kvarh))]),
        _reply(0x0C, [DataUnit(p, 129, ActiveEnergy(when, four)) for p in range(1, 9)]),
        _reply(0x0D, [DataUnit(p, 161, FrozenActiveEnergy(day, when, four))
                      for p in range(1, 9)]),
        _reply(0x0D, [DataUnit(1, 1, FrozenEnergy(day, when, four, kvarh, kvarh, kvarh))]),
        _reply(0x0D, [DataUnit(1, 97, Curve(CurveTag(when, 1, 96),
                                            tuple(Decimal("0.25") for _ in range(96))))]),
        _reply(0x0E, [DataUnit(0, 1, EventRecords(1, 0, 0, 2, (
            EventRecord(14, Erc14(when, when)), EventRecord(14, Erc14(when, when)))))]),
    ]
    return [bytes.fromhex(h.replace(" ", "")) for h in REFERENCE] + built


def full_decode(compiled: bool) -> Callable[[list[bytes]], int]:
    def run(frames: list[bytes]) -> int:
        n = 0
        for raw in frames:
            n += len(decode_units(parse_frame(raw, compiled=compiled)))
        return n
    return run


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seconds", type=float, default=2.0)
    ap.add_argument("--repeat", type=int, default=3)
    args = ap.parse_args()
    frames = frame_set()
    variants = {"compiled": full_decode(True), "plain": full_decode(False)}
    assert variants["compiled"](frames) == variants["plain"](frames)
    rates: dict[str, list[float]] = {k: [] for k in variants}
    for _ in range(args.repeat):
        for name, run in variants.items():
            passes = 0
            t0 = time.perf_counter()
            while (elapsed := time.perf_counter() - t0) < args.seconds:
                run(frames)
                passes += 1
            rates[name].append(passes * len(frames) / elapsed)
    size = sum(map(len, frames)) / len(frames)
    print(f"376.1 full decode, {len(frames)} frames (mean {size:.0f} bytes), "
          f"{args.repeat} x {args.seconds:g} s, Python {sys.version.split()[0]}")
    for name, r in rates.items():
        print(f"  {name:9s} best {max(r):9.0f} frames/s   median {statistics.median(r):9.0f}")


if __name__ == "__main__":
    main()

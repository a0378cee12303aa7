"""Concentrators dialing in to one MasterStation: a read cycle and idle heartbeats.

    .venv/bin/python tests/bench/bench_concentrators.py                 # 1000 x 64, 10,000 idle
    .venv/bin/python tests/bench/bench_concentrators.py --count 100 --meters 16 --idle 1000

1. ``--count`` terminals with ``--meters`` meters each dial in and log in; then one cycle
   reads class-1 F129 + F25 of every meter through ``ConcentratorMeter.read`` (one request
   in flight per terminal, all terminals in parallel).  Printed: completion time, success
   count, CPU-s of the master process per 1,000 meter reads, RSS.
2. ``--idle`` terminals log in and send heartbeats every ``--heartbeat`` s; the master's
   CPU % over ``--rest`` s, and that load scaled to a 15-minute heartbeat period.

The terminals run in a child process (this file with ``--terminals``), a minimal
terminal on the codec: replies to AFN0C carry fixed values, so only the master's CPU is
measured here.
"""

from __future__ import annotations

import argparse
import asyncio
import datetime as dt
import json
import os
import resource
import subprocess
import sys
import time
from decimal import Decimal
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from drivers.concentrator_meter import ConcentratorMeter, concentrator_line
from drivers.device import MeterRef, Route
from drivers.meters import open_meter
from drivers.options import CallOptions
from drivers.qgdw3761 import MasterStation, TerminalId
from protocols.qgdw3761 import (
    ActiveEnergy,
    DataUnit,
    Direction,
    Frame,
    FrameExtractor,
    PresentValues,
    build_frame,
    control_byte,
    encode_units,
    idents,
    seq_byte,
)

A1 = "4403"
QUANTITIES = ["energy_active_forward_total", "energy_active_forward_t1", "voltage_a",
              "voltage_b", "voltage_c", "current_a", "current_b", "current_c",
              "power_active_total", "power_factor_total"]
REAL_HEARTBEAT = 15 * 60  # s: a common terminal heartbeat period


# ---- the terminals (child process) ------------------------------------------------------

def _up(a2: int, afn: int, pseq: int, units: bytes, *, prm: bool = False) -> bytes:
    function = 9 if prm else 8
    return build_frame(Frame(control=control_byte(Direction.UP, prm=prm, function=function),
                             a1=A1, a2=a2, a3=0, afn=afn,
                             seq=seq_byte(pseq, fir=True, fin=True, con=prm), units=units))


_VALUES: dict[int, object] = {}


def _value(fn: int) -> object:
    if fn not in _VALUES:
        t = dt.datetime(2024, 5, 6, 12, 0)
        d = Decimal
        _VALUES[fn] = (ActiveEnergy(t, (d("1234.56"), d("300.1"), d("400.2"), d("500.3"),
                                         d("33.96")))
                       if fn == 129 else
                       PresentValues(t, d("1.2345"), None, None, None, d("0.3"), None, None,
                                     None, d("0.95"), None, None, None, d("220.1"),
                                     d("221.2"), d("219.3"), d("1.234"), d("2.345"),
                                     d("3.456")))
    return _VALUES[fn]


_REPLIES: dict[tuple[tuple[int, int], ...], bytes] = {}


def _class1(points: tuple[tuple[int, int], ...]) -> bytes:
    units = _REPLIES.get(points)
    if units is None:
        units = _REPLIES[points] = encode_units(
            0x0C, Direction.UP, [DataUnit(pn, fn, _value(fn)) for pn, fn in points])
    return units


async def _terminal(host: str, port: int, a2: int, heartbeat: float,
                    online: asyncio.Queue[int]) -> None:
    reader, writer = await asyncio.open_connection(host, port)
    writer.write(_up(a2, 2, 0, encode_units(2, Direction.UP, [DataUnit(0, 1)]), prm=True))
    beat = encode_units(2, Direction.UP, [DataUnit(0, 3)])
    ex = FrameExtractor()

    async def beats() -> None:
        n = 0
        while True:
            await asyncio.sleep(heartbeat)
            n = (n + 1) & 15
            writer.write(_up(a2, 2, n, beat, prm=True))

    task = asyncio.create_task(beats()) if heartbeat > 0 else None
    logged_in = False
    try:
        while data := await reader.read(4096):
            ex.feed(data)
            for f in ex:
                if f.afn == 0x00:
                    if not logged_in:
                        logged_in = True
                        online.put_nowait(a2)
                    continue
                if f.afn == 0x0C:
                    points = tuple((pns[0], fns[0]) for pns, fns in idents(f))
                    writer.write(_up(a2, 0x0C, f.pseq, _class1(points)))
    except ConnectionError:
        pass
    finally:
        if task is not None:
            task.cancel()
        writer.close()


async def terminals(host: str, port: int, count: int, heartbeat: float) -> None:
    online: asyncio.Queue[int] = asyncio.Queue()
    tasks = []
    for a2 in range(1, count + 1):
        tasks.append(asyncio.create_task(_terminal(host, port, a2, heartbeat, online)))
        if a2 % 200 == 0:
            await asyncio.sleep(0.05)  # do not overrun the listen backlog
    for _ in range(count):
        await online.get()
    print("online", flush=True)
    await asyncio.gather(*tasks, return_exceptions=True)


# ---- the master (this process) ----------------------------------------------------------

def rss_mb() -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def spawn(port: int, count: int, heartbeat: float) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, __file__, "--terminals", "--port", str(port), "--count",
         str(count), "--heartbeat", str(heartbeat)], stdout=subprocess.PIPE, text=True)


async def wait_logged_in(master: MasterStation, count: int, timeout: float) -> float:
    t0 = time.monotonic()
    while len(master.online()) < count:
        if time.monotonic() - t0 > timeout:
            raise TimeoutError(f"only {len(master.online())} of {count} logged in")
        await asyncio.sleep(0.1)
    return time.monotonic() - t0


async def read_cycle(count: int, meters: int) -> None:
    async with MasterStation("127.0.0.1", 0, terminals=lambda t: True, request_timeout=10,
                             retries=1, idle_timeout=3600) as master:
        child = spawn(master.port, count, 0)
        try:
            took = await wait_logged_in(master, count, 120)
            print(f"{count} terminals logged in in {took:.1f} s; RSS {rss_mb():.0f} MB")
            lines = {a2: concentrator_line(master, TerminalId(A1, a2))
                     for a2 in range(1, count + 1)}
            devices: dict[int, list[ConcentratorMeter]] = {}
            for a2, line in lines.items():
                ms = []
                for pn in range(1, meters + 1):
                    m = open_meter(line, MeterRef(f"t{a2}m{pn}", "dlt645-2007",
                                                  f"{a2:06d}{pn:06d}", route=Route(pn)))
                    assert isinstance(m, ConcentratorMeter)
                    ms.append(m)
                devices[a2] = ms
            opts = CallOptions(retries=1)
            ok = 0
            values = 0

            async def one(ms: list[ConcentratorMeter]) -> None:
                nonlocal ok, values
                for m in ms:  # one request in flight per terminal
                    got = await m.read(QUANTITIES, opts)
                    if not got.failed and len(got.readings) == len(QUANTITIES):
                        ok += 1
                    values += len(got.readings)

            cpu0, t0 = time.process_time(), time.monotonic()
            await asyncio.gather(*(one(ms) for ms in devices.values()))
            cpu, wall = time.process_time() - cpu0, time.monotonic() - t0
            reads = count * meters
            print(f"read cycle: {reads} meter reads (class-1 F129 + F25, one frame each) "
                  f"in {wall:.1f} s; success {ok}/{reads}; {values} values")
            print(f"  master CPU {cpu:.1f} s = {cpu / reads * 1000:.3f} CPU-s per 1,000 "
                  f"meter reads; RSS {rss_mb():.0f} MB; requests "
                  f"{master.counters().get('requests', 0)}")
        finally:
            child.terminate()
            child.wait()


async def idle(count: int, heartbeat: float, rest: float) -> None:
    async with MasterStation("127.0.0.1", 0, terminals=lambda t: True,
                             idle_timeout=3600) as master:
        child = spawn(master.port, count, heartbeat)
        try:
            took = await wait_logged_in(master, count, 300)
            await asyncio.sleep(heartbeat)  # every terminal into its heartbeat rhythm
            beats0 = master.counters().get("heartbeats", 0)
            cpu0, t0 = time.process_time(), time.monotonic()
            await asyncio.sleep(rest)
            cpu, wall = time.process_time() - cpu0, time.monotonic() - t0
            beats = master.counters().get("heartbeats", 0) - beats0
            pct = cpu / wall * 100
            per_beat = cpu / beats if beats else float("nan")
            scaled = count / REAL_HEARTBEAT * per_beat * 100
            print(f"idle: {count} terminals logged in in {took:.1f} s; heartbeat every "
                  f"{heartbeat:g} s: {beats} heartbeats in {wall:.1f} s; master CPU "
                  f"{pct:.1f} % ({per_beat * 1e6:.0f} us per heartbeat); RSS "
                  f"{rss_mb():.0f} MB")
            print(f"  scaled to a {REAL_HEARTBEAT // 60}-minute heartbeat: {scaled:.3f} % "
                  f"CPU at rest (plus the idle event loop)")
        finally:
            child.terminate()
            child.wait()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--count", type=int, default=1000, help="terminals read (1000)")
    ap.add_argument("--meters", type=int, default=64, help="meters per terminal (64)")
    ap.add_argument("--idle", type=int, default=10_000, help="idle terminals (10000)")
    ap.add_argument("--heartbeat", type=float, default=10.0,
                    help="heartbeat period of the idle run, s (10)")
    ap.add_argument("--rest", type=float, default=20.0, help="idle measurement, s (20)")
    ap.add_argument("--terminals", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--port", type=int, default=0, help=argparse.SUPPRESS)
    a = ap.parse_args()
    if a.terminals:
        asyncio.run(terminals("127.0.0.1", a.port, a.count, a.heartbeat))
        return
    print(json.dumps({"python": sys.version.split()[0], "cpus": os.cpu_count()}))
    if a.count:
        asyncio.run(read_cycle(a.count, a.meters))
    if a.idle:
        asyncio.run(idle(a.idle, a.heartbeat, a.rest))


if __name__ == "__main__":
    main()

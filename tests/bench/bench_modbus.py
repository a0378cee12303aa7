#!/usr/bin/env python
"""Modbus poll rate: amic (TcpBus + ModbusSession) vs pymodbus's AsyncModbusTcpClient.

    .venv/bin/python tests/bench/bench_modbus.py [--seconds 3] [--repeat 3] [--count 10]
                                                 [--framing tcp|rtu|both]

Both clients poll the SAME pymodbus ``ModbusTcpServer`` (in a separate process, one per
framing) with sequential read holding registers requests (function 03, ``--count``
registers from address 0, unit 1) for ``--seconds`` each per run, ``--repeat`` runs;
within a run the two clients take turns every 0.25 s, so a busy machine slows both
alike.  One connection per client, opened before timing.  Every reply is checked to
hold the served values.  Nothing is asserted on time.

* amic: ``await session.read_registers(1, 3, 0, count)`` on a ``TcpBus`` (``framing``
  "tcp": MBAP; "rtu": RTU framing over TCP, as to a serial server).
* pymodbus: ``await client.read_holding_registers(0, count=count, device_id=1)`` on an
  ``AsyncModbusTcpClient`` (``framer`` SOCKET or RTU).

Goal: amic >= 0.9x pymodbus.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import subprocess
import sys
import time
from collections.abc import Awaitable, Callable
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

from pymodbus.client import AsyncModbusTcpClient  # noqa: E402
from pymodbus.framer import FramerType  # noqa: E402

from drivers.modbus import ModbusSession  # noqa: E402
from drivers.tcp import TcpBus  # noqa: E402

UNIT = 1
VALUES = [(7 * k + 3) & 0xFFFF for k in range(125)]


# ---- the server process ---------------------------------------------------------------------

async def serve(framing: str) -> None:
    from pymodbus.server import ModbusTcpServer
    from pymodbus.simulator import DataType, SimData, SimDevice

    device = SimDevice(UNIT, simdata=(
        [SimData(0, count=16, values=False, datatype=DataType.BITS)],
        [SimData(0, count=16, values=False, datatype=DataType.BITS)],
        [SimData(0, values=VALUES, datatype=DataType.REGISTERS)],
        [SimData(0, values=VALUES, datatype=DataType.REGISTERS)],
    ))
    framer = FramerType.SOCKET if framing == "tcp" else FramerType.RTU
    server = ModbusTcpServer([device], framer=framer, address=("127.0.0.1", 0))
    await server.serve_forever(background=True)
    listener: object = server.transport
    port = listener.sockets[0].getsockname()[1]  # type: ignore[attr-defined]
    print(f"listening on {port}", flush=True)
    await asyncio.get_running_loop().run_in_executor(None, sys.stdin.read)  # until EOF
    await server.shutdown()


def start_server(framing: str) -> tuple[subprocess.Popen[str], int]:
    proc = subprocess.Popen([sys.executable, __file__, "--serve", framing],
                            stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    assert proc.stdout is not None
    line = proc.stdout.readline()
    if not line.startswith("listening on "):
        proc.kill()
        raise SystemExit(f"server for {framing} did not start: {line!r}")
    return proc, int(line.split()[-1])


# ---- the clients -------------------------------------------------------------------------------

Poll = Callable[[], Awaitable[None]]


SLICE = 0.25  # seconds a client polls before the other takes over


async def timed(polls: list[Poll], seconds: float) -> list[float]:
    """Requests per second of each ``poll``, called back to back for ``seconds`` each.

    The clients take turns in slices of ``SLICE`` seconds, so load from elsewhere on
    the machine falls on all of them alike.
    """
    done = [0] * len(polls)
    spent = [0.0] * len(polls)
    while min(spent) < seconds:
        for i, poll in enumerate(polls):
            started = time.perf_counter()
            deadline = started + min(SLICE, seconds)
            n = 0
            while True:
                for _ in range(20):
                    await poll()
                n += 20
                now = time.perf_counter()
                if now >= deadline:
                    break
            done[i] += n
            spent[i] += now - started
    return [d / s for d, s in zip(done, spent, strict=True)]


async def bench(framing: str, port: int, seconds: float, repeat: int, count: int
                ) -> tuple[list[float], list[float]]:
    expected = VALUES[:count]
    bus = TcpBus("127.0.0.1", port, td=2.0, tb=1.0)
    session = ModbusSession(bus, framing="tcp" if framing == "tcp" else "rtu", retries=0)

    async def amic_poll() -> None:
        if await session.read_registers(UNIT, 3, 0, count) != expected:
            raise SystemExit("amic: wrong values")

    client = AsyncModbusTcpClient(
        "127.0.0.1", port=port, timeout=2, retries=0,
        framer=FramerType.SOCKET if framing == "tcp" else FramerType.RTU)

    async def pymodbus_poll() -> None:
        reply = await client.read_holding_registers(0, count=count, device_id=UNIT)
        if reply.isError() or reply.registers != expected:
            raise SystemExit(f"pymodbus: {reply}")

    amic: list[float] = []
    pym: list[float] = []
    async with bus:
        if not await client.connect():
            raise SystemExit("pymodbus client cannot connect")
        try:
            await timed([amic_poll, pymodbus_poll], min(0.5, seconds))  # warm up
            for _ in range(repeat):
                a, p = await timed([amic_poll, pymodbus_poll], seconds)
                amic.append(a)
                pym.append(p)
        finally:
            client.close()
    if session.counters()["requests"] != bus.transactions or bus.timeouts:
        raise SystemExit(f"amic: unexpected counters {session.counters()} {bus.counters()}")
    return amic, pym


def report(framing: str, count: int, amic: list[float], pym: list[float]) -> None:
    a_best, p_best = max(amic), max(pym)
    a_med, p_med = statistics.median(amic), statistics.median(pym)
    label = "Modbus TCP (MBAP)" if framing == "tcp" else "RTU framing over TCP"
    print(f"\n{label}, read holding registers x {count}, sequential, {len(amic)} runs")
    print(f"  {'client':<44} {'best req/s':>11} {'median req/s':>13} {'us/req':>8}")
    for name, runs in (("amic TcpBus + ModbusSession.read_registers", amic),
                       ("pymodbus AsyncModbusTcpClient", pym)):
        print(f"  {name:<44} {max(runs):>11,.0f} {statistics.median(runs):>13,.0f} "
              f"{1e6 / statistics.median(runs):>8.1f}")
    print(f"  runs amic:     {', '.join(f'{r:,.0f}' for r in amic)}")
    print(f"  runs pymodbus: {', '.join(f'{r:,.0f}' for r in pym)}")
    paired = [a / p for a, p in zip(amic, pym, strict=True)]
    print(f"  ratio per run: {', '.join(f'{r:.2f}' for r in paired)}")
    print(f"  ratio amic/pymodbus: best {a_best / p_best:.2f}x, median {a_med / p_med:.2f}x, "
          f"median of runs {statistics.median(paired):.2f}x (goal >= 0.9x)")


async def main(seconds: float, repeat: int, count: int, framings: list[str]) -> None:
    import pymodbus

    print(f"Python {sys.version.split()[0]}, pymodbus {pymodbus.__version__}; "
          f"{seconds:g} s per run; server in a separate process per framing")
    for framing in framings:
        proc, port = start_server(framing)
        try:
            amic, pym = await bench(framing, port, seconds, repeat, count)
        finally:
            assert proc.stdin is not None
            proc.stdin.close()
            try:
                proc.wait(5)
            except subprocess.TimeoutExpired:
                proc.kill()
        report(framing, count, amic, pym)


if __name__ == "__main__":
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seconds", type=float, default=3.0)
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--count", type=int, default=10, help="registers per request (1-125)")
    ap.add_argument("--framing", choices=("tcp", "rtu", "both"), default="both")
    ap.add_argument("--serve", choices=("tcp", "rtu"), help=argparse.SUPPRESS)
    a = ap.parse_args()
    if a.serve:
        asyncio.run(serve(a.serve))
    else:
        chosen = ["tcp", "rtu"] if a.framing == "both" else [a.framing]
        asyncio.run(main(a.seconds, a.repeat, a.count, chosen))

#!/usr/bin/env python
"""Modbus poll rate: amic (TcpBus + ModbusSession) vs pymodbus's AsyncModbusTcpClient.

    .venv/bin/python tests/bench/bench_modbus.py [--seconds 3] [--repeat 3] [--count 10]
                                                 [--framing tcp|rtu|both] [--units 1,20,247]
                                                 [--td 0.5]

Both clients poll the SAME pymodbus ``ModbusTcpServer`` (in a separate process, one per
framing, serving 247 device ids, each with its own register values) with sequential
read holding registers requests (function 03, ``--count`` registers from address 0),
the units 1..N in turn, for each N of ``--units``; ``--seconds`` each per run,
``--repeat`` runs; within a run the two clients take turns every 0.25 s, so a busy
machine slows both alike.  One connection per client, opened before timing.  Every
reply is checked to hold the values of the unit asked; failures (timeouts, bad or wrong
replies, wrong values) are counted per client, not retried (``retries=0`` on both), and
the reply timeout is ``--td`` on both.  Nothing is asserted on time.

``--stall S`` blocks the clients' event loop S seconds every 0.1 s (a GC pause, a busy
daemon): with S > Td it shows whether a reply that arrived during the stall is taken.

* amic: ``await session.read_registers(unit, 3, 0, count)`` on a ``TcpBus`` (``framing``
  "tcp": MBAP; "rtu": RTU framing over TCP, as to a serial server).
* pymodbus: ``await client.read_holding_registers(0, count=count, device_id=unit)`` on
  an ``AsyncModbusTcpClient`` (``framer`` SOCKET or RTU).

Goal: amic >= 0.9x pymodbus and 0 failures at 1, 20 and 247 units.
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
from pymodbus.exceptions import ModbusException  # noqa: E402
from pymodbus.framer import FramerType  # noqa: E402

from drivers.errors import DriverError  # noqa: E402
from drivers.modbus import ModbusSession  # noqa: E402
from drivers.tcp import TcpBus  # noqa: E402

MAX_UNITS = 247


def values(unit: int) -> list[int]:
    """What unit ``unit`` serves from register 0: differs per unit, so a reply from
    another unit is caught."""
    return [(7 * k + 3 + 1000 * unit) & 0xFFFF for k in range(125)]


# ---- the server process ---------------------------------------------------------------------

async def serve(framing: str) -> None:
    from pymodbus.server import ModbusTcpServer
    from pymodbus.simulator import DataType, SimData, SimDevice

    devices = [SimDevice(unit, simdata=(
        [SimData(0, count=16, values=False, datatype=DataType.BITS)],
        [SimData(0, count=16, values=False, datatype=DataType.BITS)],
        [SimData(0, values=values(unit), datatype=DataType.REGISTERS)],
        [SimData(0, values=values(unit), datatype=DataType.REGISTERS)],
    )) for unit in range(1, MAX_UNITS + 1)]
    framer = FramerType.SOCKET if framing == "tcp" else FramerType.RTU
    server = ModbusTcpServer(devices, framer=framer, address=("127.0.0.1", 0))
    await server.serve_forever(background=True)
    listener: object = server.transport
    port = listener.sockets[0].getsockname()[1]  # type: ignore[attr-defined]
    print(f"listening on {port}", flush=True)
    await asyncio.get_running_loop().run_in_executor(None, sys.stdin.read)  # until EOF
    await server.shutdown()  # type: ignore[no-untyped-call]


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


class Client:
    """One client's poll: the next unit in turn; failures counted, never raised."""

    def __init__(self, units: int) -> None:
        self.units = units
        self.unit = 0
        self.failures: dict[str, int] = {}

    def next_unit(self) -> int:
        self.unit = self.unit % self.units + 1
        return self.unit

    def failed(self, why: str) -> None:
        self.failures[why] = self.failures.get(why, 0) + 1

    @property
    def failed_total(self) -> int:
        return sum(self.failures.values())


async def stalls(seconds: float) -> None:
    """Block the event loop ``seconds`` every 0.1 s, as a long GC pause or a busy daemon
    would: a reply that arrives meanwhile must still count."""
    while True:
        await asyncio.sleep(0.1)
        time.sleep(seconds)


async def bench(framing: str, port: int, seconds: float, repeat: int, count: int,
                units: int, td: float, stall: float
                ) -> tuple[list[float], list[float], Client, Client]:
    expected = {u: values(u)[:count] for u in range(1, units + 1)}
    bus = TcpBus("127.0.0.1", port, td=td, tb=td)
    session = ModbusSession(bus, framing="tcp" if framing == "tcp" else "rtu", retries=0)
    a_client, p_client = Client(units), Client(units)

    async def amic_poll() -> None:
        unit = a_client.next_unit()
        try:
            words = await session.read_registers(unit, 3, 0, count)
        except DriverError as e:
            a_client.failed(type(e).__name__)
            return
        if words != expected[unit]:
            a_client.failed("wrong values")

    client = AsyncModbusTcpClient(
        "127.0.0.1", port=port, timeout=td, retries=0,
        framer=FramerType.SOCKET if framing == "tcp" else FramerType.RTU)

    async def pymodbus_poll() -> None:
        unit = p_client.next_unit()
        try:
            reply = await client.read_holding_registers(0, count=count, device_id=unit)
        except ModbusException as e:
            p_client.failed(type(e).__name__)
            if not client.connected and not await client.connect():
                raise SystemExit("pymodbus client cannot reconnect") from e
            return
        if reply.isError():
            p_client.failed(f"exception reply {reply}")
        elif reply.registers != expected[unit]:
            p_client.failed("wrong values")

    amic: list[float] = []
    pym: list[float] = []
    async with bus:
        if not await client.connect():
            raise SystemExit("pymodbus client cannot connect")
        staller = asyncio.create_task(stalls(stall)) if stall > 0 else None
        try:
            await timed([amic_poll, pymodbus_poll], min(0.5, seconds))  # warm up
            for _ in range(repeat):
                a, p = await timed([amic_poll, pymodbus_poll], seconds)
                amic.append(a)
                pym.append(p)
        finally:
            if staller is not None:
                staller.cancel()
            client.close()
    if session.counters()["requests"] != bus.transactions:
        raise SystemExit(f"amic: unexpected counters {session.counters()} {bus.counters()}")
    return amic, pym, a_client, p_client


def report(framing: str, count: int, units: int, amic: list[float], pym: list[float],
           a_client: Client, p_client: Client) -> None:
    a_best, p_best = max(amic), max(pym)
    a_med, p_med = statistics.median(amic), statistics.median(pym)
    label = "Modbus TCP (MBAP)" if framing == "tcp" else "RTU framing over TCP"
    print(f"\n{label}, {units} unit{'s' if units > 1 else ''} in turn, read holding "
          f"registers x {count}, sequential, {len(amic)} runs")
    print(f"  {'client':<44} {'best req/s':>11} {'median req/s':>13} {'us/req':>8} "
          f"{'failed':>7}")
    for name, runs, c in (("amic TcpBus + ModbusSession.read_registers", amic, a_client),
                          ("pymodbus AsyncModbusTcpClient", pym, p_client)):
        print(f"  {name:<44} {max(runs):>11,.0f} {statistics.median(runs):>13,.0f} "
              f"{1e6 / statistics.median(runs):>8.1f} {c.failed_total:>7}")
    for name, c in (("amic", a_client), ("pymodbus", p_client)):
        if c.failures:
            print(f"  failures {name}: "
                  + ", ".join(f"{k} x {v}" for k, v in sorted(c.failures.items())))
    print(f"  runs amic:     {', '.join(f'{r:,.0f}' for r in amic)}")
    print(f"  runs pymodbus: {', '.join(f'{r:,.0f}' for r in pym)}")
    paired = [a / p for a, p in zip(amic, pym, strict=True)]
    print(f"  ratio per run: {', '.join(f'{r:.2f}' for r in paired)}")
    print(f"  ratio amic/pymodbus: best {a_best / p_best:.2f}x, median {a_med / p_med:.2f}x, "
          f"median of runs {statistics.median(paired):.2f}x (goal >= 0.9x, 0 failed)")


async def main(seconds: float, repeat: int, count: int, framings: list[str],
               unit_counts: list[int], td: float, stall: float) -> None:
    import pymodbus

    print(f"Python {sys.version.split()[0]}, pymodbus {pymodbus.__version__}; "
          f"{seconds:g} s per run; server ({MAX_UNITS} device ids) in a separate process "
          f"per framing; Td {td:g} s"
          + (f"; the loop blocked {stall:g} s every 0.1 s" if stall > 0 else ""))
    for framing in framings:
        proc, port = start_server(framing)
        try:
            for units in unit_counts:
                amic, pym, a_client, p_client = await bench(
                    framing, port, seconds, repeat, count, units, td, stall)
                report(framing, count, units, amic, pym, a_client, p_client)
        finally:
            assert proc.stdin is not None
            proc.stdin.close()
            try:
                proc.wait(5)
            except subprocess.TimeoutExpired:
                proc.kill()


if __name__ == "__main__":
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seconds", type=float, default=3.0)
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--count", type=int, default=10, help="registers per request (1-125)")
    ap.add_argument("--framing", choices=("tcp", "rtu", "both"), default="both")
    ap.add_argument("--units", default="1,20,247",
                    help=f"comma-separated numbers of units polled in turn (1-{MAX_UNITS})")
    ap.add_argument("--td", type=float, default=0.5,
                    help="reply timeout (s) of both clients (amic: Td and Tb)")
    ap.add_argument("--stall", type=float, default=0.0,
                    help="block the client's event loop this long (s) every 0.1 s")
    ap.add_argument("--serve", choices=("tcp", "rtu"), help=argparse.SUPPRESS)
    a = ap.parse_args()
    if a.serve:
        asyncio.run(serve(a.serve))
    else:
        chosen = ["tcp", "rtu"] if a.framing == "both" else [a.framing]
        counts = [int(u) for u in a.units.split(",")]
        if not all(1 <= u <= MAX_UNITS for u in counts):
            raise SystemExit(f"--units: each must be 1-{MAX_UNITS}")
        asyncio.run(main(a.seconds, a.repeat, a.count, chosen, counts, a.td, a.stall))

"""Many simulated concentrators in one process, for tests/bench/bench_scale.py.

    python tests/bench/_farm.py --buses 500 --meters 100 --first 1

Prints one JSON line {"ports": [...]} once every bus listens; serves until SIGTERM.
Meter addresses are BBBBMMMMMMMM-style: bus number (4 digits) then meter number.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import signal
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from simulators.bus import BusServer
from simulators.dlt645 import make_meters


def address(bus: int, meter: int) -> str:
    return f"{bus:04d}{meter:08d}"


async def main(buses: int, meters: int, first: int, baud: int, td: float) -> None:
    servers = []
    for b in range(first, first + buses):
        addrs = [address(b, m) for m in range(1, meters + 1)]
        servers.append(BusServer(make_meters(addrs, seed=b), baud=baud, td=td,
                                 request_airtime=False))
    for s in servers:
        await s.start()
    print(json.dumps({"ports": [s.port for s in servers]}), flush=True)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    await stop.wait()
    for s in servers:
        await s.stop()


if __name__ == "__main__":
    ap = argparse.ArgumentParser()
    ap.add_argument("--buses", type=int, required=True)
    ap.add_argument("--meters", type=int, required=True)
    ap.add_argument("--first", type=int, default=1)
    ap.add_argument("--baud", type=int, default=1_000_000)
    ap.add_argument("--td", type=float, default=0.0)
    a = ap.parse_args()
    asyncio.run(main(a.buses, a.meters, a.first, a.baud, a.td))

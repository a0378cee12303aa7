"""On demand: the HTTP API's figures (issue 17 §4).  Printed, never asserted.

    .venv/bin/python tests/bench/bench_api.py [--rows 10000000] [--clients 50]
        [--seconds 20] [--commands 40]

1. Readings query latency at ``--clients`` concurrent clients (threads, one keep-alive
   connection each) on a store of ``--rows`` readings (1000 meters x 10 quantities, a read
   every 15 min; built with executemany straight into the schema).  The daemon is a real
   ``amic run`` process with its API; each request is one of: a meter's newest 100
   readings, a meter's quantity over a day, an area's newest 100 readings (random meter,
   area and day).
2. The command round trip through the API against simulated DL/T645 meters (TCP bus, paced
   at 19200 baud, Td 5 ms): trip and restore in turn, each verified on the meter, one at a
   time (``[commands] min_interval = 0``), from the request to the answer.
"""

from __future__ import annotations

import argparse
import asyncio
import datetime as dt
import http.client
import json
import os
import random
import signal
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests"))

from conftest import amic_command, free_port  # noqa: E402

from collector.cli.apitoken import new_token  # noqa: E402
from collector.config.secrets import token_hash  # noqa: E402
from collector.store import Store  # noqa: E402
from collector.store.schema import INSERT_READING  # noqa: E402
from simulators.bus import BusServer  # noqa: E402
from simulators.dlt645 import make_meters  # noqa: E402

METERS = 1000
AREAS = 10
QUANTITIES = ("voltage_a", "voltage_b", "voltage_c", "current_a", "current_b", "current_c",
              "power_active_total", "power_factor_total", "energy_active_forward_total",
              "energy_active_reverse_total")
STEP = dt.timedelta(minutes=15)
SIMULATED = 4  # meters M0001..M0004 answer on the simulated bus


def meter_id(j: int) -> str:
    return f"M{j + 1:04d}"


def build_store(path: Path, rows: int) -> tuple[float, dt.datetime]:
    """``rows`` readings (rounded to whole reads) ending now; returns the seconds taken and
    the first read's time."""
    Store(path).close()  # the schema
    reads = max(1, rows // (METERS * len(QUANTITIES)))
    start = dt.datetime.now(dt.UTC).replace(microsecond=0) - reads * STEP
    t = time.perf_counter()
    conn = sqlite3.connect(path, isolation_level=None)
    conn.execute("PRAGMA journal_mode = WAL")
    conn.execute("PRAGMA synchronous = OFF")
    conn.execute("BEGIN")
    t0 = int(start.timestamp() * 1000)
    step = int(STEP.total_seconds() * 1000)
    q = len(QUANTITIES)
    for k in range(reads):
        ts = t0 + k * step
        conn.executemany(INSERT_READING, (
            (meter_id(j), name, 220.0 + ((k + j + i) % 100) / 10, "V", ts, None, 0)
            for j in range(METERS) for i, name in enumerate(QUANTITIES)))
        # the readings of read (k, j) have ids first..first+q-1 (ids from 1, in order)
        conn.executemany("INSERT INTO reads (first_id, last_id, meter, ts) VALUES "
                         "(?, ?, ?, ?)", (((k * METERS + j) * q + 1, (k * METERS + j + 1) * q,
                                           meter_id(j), ts) for j in range(METERS)))
        if k % 50 == 49:
            conn.execute("COMMIT")
            conn.execute("BEGIN")
    conn.execute("COMMIT")
    conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    conn.close()
    return time.perf_counter() - t, start


def write_config(d: Path, api_port: int, bus_port: int) -> tuple[Path, dict[str, str]]:
    tokens = {"viewer": new_token(), "operator": new_token()}
    secrets = d / "secrets.toml"
    secrets.write_text('[default]\npassword = "02000000"\n\n[operators.bench]\n'
                       'operator_code = "00000001"\n' + "".join(
                           f'\n[api_tokens.{r}]\nhash = "{token_hash(t)}"\nrole = "{r}"\n'
                           'operator = "bench"\n' for r, t in tokens.items()))
    secrets.chmod(0o600)
    ledger = d / "ledger.csv"
    ledger.write_text("meter_id,address,bus,area\n" + "".join(
        f"{meter_id(j)},{j + 1:012d},line,TQ-{j % AREAS:02d}\n" for j in range(METERS)))
    cfg = d / "amic.toml"
    cfg.write_text(f"""
[collector]
id = "bench"
data_dir = "data"
retention_days = 3650

[commands]
secrets_file = "secrets.toml"
min_interval = "0s"
verify_timeout = "5s"
poll_interval = "50ms"

[api]
listen = "127.0.0.1:{api_port}"

[[bus]]
name = "line"
type = "tcp"
host = "127.0.0.1"
port = {bus_port}
td_ms = 500

[meters]
ledger = "ledger.csv"

[schedule.poll]
interval = "24h"
quantities = ["voltage_a"]
meters = ["{meter_id(0)}"]
""")
    return cfg, tokens


def pct(values: list[float], p: float) -> float:
    s = sorted(values)
    return s[min(len(s) - 1, round(p / 100 * (len(s) - 1)))]


def query_load(port: int, token: str, clients: int, seconds: float,
               start: dt.datetime, reads: int) -> dict[str, list[float]]:
    stop = time.monotonic() + seconds
    out: dict[str, list[float]] = {"meter": [], "range": [], "area": []}
    errors: list[str] = []
    lock = threading.Lock()

    def client(n: int) -> None:
        rng = random.Random(n)
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
        headers = {"Authorization": f"Bearer {token}"}
        mine: dict[str, list[float]] = {k: [] for k in out}
        while time.monotonic() < stop:
            kind = rng.choice(("meter", "range", "area"))
            m = meter_id(rng.randrange(METERS))
            if kind == "meter":
                path = f"/api/v1/readings?meter={m}&limit=100"
            elif kind == "range":
                day = start + STEP * rng.randrange(max(1, reads - 96))
                until = day + dt.timedelta(days=1)
                path = (f"/api/v1/readings?meter={m}&quantity=voltage_a&limit=100"
                        f"&since={day:%Y-%m-%dT%H:%M:%SZ}&until={until:%Y-%m-%dT%H:%M:%SZ}")
            else:
                path = f"/api/v1/readings?area=TQ-{rng.randrange(AREAS):02d}&limit=100"
            t = time.perf_counter()
            conn.request("GET", path, headers=headers)
            r = conn.getresponse()
            body = r.read()
            took = time.perf_counter() - t
            if r.status != 200:
                errors.append(f"{r.status} {body[:200]!r}")
                continue
            mine[kind].append(took)
        conn.close()
        with lock:
            for k, v in mine.items():
                out[k] += v

    threads = [threading.Thread(target=client, args=(n,)) for n in range(clients)]
    for th in threads:
        th.start()
    for th in threads:
        th.join()
    if errors:
        print(f"  {len(errors)} errors, e.g. {errors[0]}")
    return out


def command(port: int, token: str, action: str, meter: str) -> tuple[float, str]:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
    t = time.perf_counter()
    conn.request("POST", f"/api/v1/commands/{action}", json.dumps(
        {"meters": [meter], "reason": "bench"}), {"Authorization": f"Bearer {token}",
                                                   "Content-Type": "application/json"})
    r = conn.getresponse()
    doc = json.loads(r.read())
    took = time.perf_counter() - t
    conn.close()
    return took, doc["results"][0]["status"] if r.status == 200 else f"http {r.status}"


def wait_port(port: int, timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            http.client.HTTPConnection("127.0.0.1", port, timeout=1).request("GET", "/")
            return
        except OSError:
            time.sleep(0.1)
    raise RuntimeError("the API did not come up")


@asynccontextmanager
async def running_daemon(d: Path) -> AsyncIterator[tuple[int, dict[str, str]]]:
    """``amic run`` on the store in ``d`` with simulated meters: (API port, tokens); a
    token found in the daemon's log at the end is reported."""
    meters = make_meters([f"{j + 1:012d}" for j in range(SIMULATED)])
    async with BusServer(meters, baud=19200, td=0.005) as bus:
        api_port = free_port()
        cfg, tokens = write_config(d, api_port, bus.port)
        log = (d / "amic.log").open("w")
        proc = subprocess.Popen([*amic_command(), "run", "--config", str(cfg), "-q"],
                                cwd=d, stdout=log, stderr=subprocess.STDOUT,
                                env={**os.environ, "PYTHONPATH": str(ROOT)})
        try:
            await asyncio.to_thread(wait_port, api_port)
            yield api_port, tokens
        finally:
            proc.send_signal(signal.SIGTERM)
            proc.wait(30)
            log.close()
            text = (d / "amic.log").read_text()
            if any(t in text for t in tokens.values()):
                print("A TOKEN IS IN THE LOG")


async def main(args: argparse.Namespace) -> None:
    with tempfile.TemporaryDirectory(dir=args.dir) as tmp:
        d = Path(tmp)
        (d / "data").mkdir()
        took, start = build_store(d / "data" / "amic.db", args.rows)
        conn = sqlite3.connect(d / "data" / "amic.db")
        n = conn.execute("SELECT max(id) FROM readings").fetchone()[0]
        conn.close()
        size = (d / "data" / "amic.db").stat().st_size / 1e9
        print(f"store: {n:,} readings ({METERS} meters x {len(QUANTITIES)} quantities), "
              f"{size:.2f} GB, built in {took:.0f} s")
        reads = n // (METERS * len(QUANTITIES))
        async with running_daemon(d) as (api_port, tokens):
            print(f"\n1. readings queries, {args.clients} concurrent clients, "
                  f"{args.seconds:g} s:")
            got = await asyncio.to_thread(query_load, api_port, tokens["viewer"],
                                          args.clients, args.seconds, start, reads)
            every = [x for v in got.values() for x in v]
            for kind, v in (*got.items(), ("all", every)):
                if v:
                    print(f"   {kind:6s} n={len(v):6d}  p50 {1000 * pct(v, 50):7.1f} ms  "
                          f"p99 {1000 * pct(v, 99):7.1f} ms  max "
                          f"{1000 * max(v):7.1f} ms")
            print(f"   throughput {len(every) / args.seconds:.0f} requests/s")
            print(f"\n2. command round trip through the API ({args.commands} commands, "
                  "one at a time, verified on the meter):")
            times: list[float] = []
            statuses: dict[str, int] = {}
            for i in range(args.commands):
                action = "trip" if i % (2 * SIMULATED) < SIMULATED else "restore"
                took, status = await asyncio.to_thread(
                    command, api_port, tokens["operator"], action,
                    meter_id(i % SIMULATED))
                times.append(took)
                statuses[status] = statuses.get(status, 0) + 1
            print(f"   p50 {1000 * statistics.median(times):.0f} ms  p99 "
                  f"{1000 * pct(times, 99):.0f} ms  max {1000 * max(times):.0f} ms  "
                  f"outcomes {statuses}")


if __name__ == "__main__":
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--rows", type=int, default=10_000_000)
    ap.add_argument("--clients", type=int, default=50)
    ap.add_argument("--seconds", type=float, default=20.0)
    ap.add_argument("--commands", type=int, default=40)
    ap.add_argument("--dir", default=None, help="where the store is built (a temp folder)")
    asyncio.run(main(ap.parse_args()))

"""Rows a server refuses for good (HTTP 400/413/422) become dead letters; other errors
are retried.

VictoriaMetrics accepts every line (it drops what it cannot parse and answers 204), so
these tests use a small stand-in for InfluxDB 2's write endpoint that answers the way
InfluxDB does for points beyond a bucket's retention.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import gzip
import json
import logging
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from collector.config.settings import MeterSettings
from collector.forward.forwarder import Forwarder
from collector.store import Store, StoreWriter
from collector.store.records import Event, Reading

T0 = dt.datetime(2026, 1, 2, 3, 4, 5, tzinfo=dt.UTC)
METERS = [MeterSettings("M1", "000000000001", "bus-1"),
          MeterSettings("OLD", "000000000002", "bus-1")]


class FakeInflux:
    """Accepts lines; refuses any batch holding ``meter=OLD`` with ``status``."""

    def __init__(self, status: int = 422) -> None:
        self.status = status
        self.accepted: list[str] = []
        self.requests = 0
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers["Content-Length"]))
                if self.headers.get("Content-Encoding") == "gzip":
                    body = gzip.decompress(body)
                lines = body.decode().splitlines()
                outer.requests += 1
                if any("meter=OLD" in line for line in lines):
                    doc = {"code": "unprocessable entity",
                           "message": "failure writing points to database: partial write: "
                                      "points beyond retention policy dropped=1"}
                    data = json.dumps(doc).encode()
                    self.send_response(outer.status)
                    self.send_header("Content-Type", "application/json")
                    self.send_header("Content-Length", str(len(data)))
                    self.end_headers()
                    self.wfile.write(data)
                    return
                outer.accepted += lines
                self.send_response(204)
                self.end_headers()

            def log_message(self, *args: object) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def __enter__(self) -> FakeInflux:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def store(tmp_path: Path) -> Iterator[Store]:
    with Store(tmp_path / "amic.db", synchronous="NORMAL") as s:
        s.sync_meters(METERS)
        yield s


def put(store: Store, rows: list[Reading]) -> None:
    async def main() -> None:
        async with StoreWriter(store) as w:
            w.put_many(rows)
    asyncio.run(main())


def run_until(fwd: Forwarder, cond: object, timeout: float = 10.0) -> None:
    async def main() -> None:
        task = asyncio.create_task(fwd.run())
        deadline = time.monotonic() + timeout
        try:
            while not cond():  # type: ignore[operator]
                assert time.monotonic() < deadline, "timed out"
                await asyncio.sleep(0.02)
        finally:
            fwd.stop()
            await task
    asyncio.run(main())


def test_refused_rows_become_dead_letters_and_the_rest_arrives(store: Store) -> None:
    rows = [Reading("M1", "voltage_a", 220.0 + i, "V", T0 + dt.timedelta(seconds=i))
            for i in range(100)]
    rows.insert(37, Reading("OLD", "voltage_a", 1.0, "V", T0 - dt.timedelta(days=999)))
    rows.insert(80, Reading("OLD", "voltage_a", 2.0, "V", T0 - dt.timedelta(days=998)))
    put(store, rows)
    events: list[Event] = []
    with FakeInflux(422) as server:
        fwd = Forwarder(store, server.url, org="o", bucket="b", meters=METERS, batch=50,
                        on_event=events.append, backoff_min=0.05, idle_interval=0.05)
        run_until(fwd, lambda: store.cursor("timeseries", "readings")
                  == store.last_id("readings"))
        # Every good reading arrived exactly once as a distinct point.
        good = {line for line in server.accepted if "meter=M1" in line}
        assert len(good) == 100
    dead = store.dead_letters("timeseries")
    assert sorted(r["line"].split(" value=")[1].split()[0] for r in dead) == ["1.0", "2.0"]
    assert {r["status"] for r in dead} == {422}
    assert all("beyond retention" in r["error"] for r in dead)
    assert fwd.stats.dead_letters == 2
    assert [e.kind for e in events] == ["forward_rejected", "forward_rejected"]
    assert all(e.severity == 2 and "dead_letters" in e.detail for e in events)


def test_auth_error_is_retried_not_dead_lettered(store: Store) -> None:
    put(store, [Reading("OLD", "voltage_a", 1.0, "V", T0)])
    with FakeInflux(401) as server:
        fwd = Forwarder(store, server.url, org="o", bucket="b", meters=METERS,
                        backoff_min=0.05, backoff_max=0.1, idle_interval=0.05)
        run_until(fwd, lambda: server.requests >= 3)
    assert store.cursor("timeseries", "readings") == 0  # still waiting to be shipped
    assert store.dead_letters() == []
    assert fwd.stats.failures >= 3 and "401" in fwd.stats.last_error


class EchoAuth:
    """Answers every write 401 with a body that echoes the Authorization header, after a
    filler that grows by 5 characters a request: the 300-character cut of the logged
    error falls on every part of the echoed token in turn."""

    def __init__(self) -> None:
        self.requests = 0
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                self.rfile.read(int(self.headers["Content-Length"]))
                filler = "x" * (5 * outer.requests)
                outer.requests += 1
                data = (f"{filler} unauthorized: bad header Authorization: "
                        f"{self.headers.get('Authorization')}").encode()
                self.send_response(401)
                self.send_header("Content-Type", "text/plain")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def log_message(self, *args: object) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def __enter__(self) -> EchoAuth:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.server.shutdown()
        self.server.server_close()


def test_token_echoed_by_a_401_never_reaches_the_log(
        store: Store, caplog: pytest.LogCaptureFixture) -> None:
    token = "Qm9vZ2llV29vZ2llVG9r"  # 20 characters
    put(store, [Reading("M1", "voltage_a", 1.0, "V", T0)])
    caplog.set_level(logging.DEBUG)
    errors: list[str] = []
    with EchoAuth() as server:
        fwd = Forwarder(store, server.url, org="o", bucket="b", token=token, meters=METERS,
                        backoff_min=0.01, backoff_max=0.01, idle_interval=0.01)

        def seen() -> bool:
            if fwd.stats.last_error and fwd.stats.last_error not in errors:
                errors.append(fwd.stats.last_error)
            return server.requests >= 80

        run_until(fwd, seen, timeout=30.0)
    assert fwd.stats.failures >= 80 and "401" in fwd.stats.last_error
    logged = caplog.text + "\n".join(errors)
    assert "unauthorized" in logged and "***" in logged  # the echo was logged, masked
    leaks = {token[i:i + 4] for i in range(len(token) - 3)} & {
        logged[i:i + 4] for i in range(len(logged) - 3)}
    assert not leaks, leaks

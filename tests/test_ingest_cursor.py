"""The forwarder does not wait for the store writer's lock when a table is caught up:
the other tables go on, and the cursor is stored once the lock is free."""

from __future__ import annotations

import asyncio
import datetime as dt
import sqlite3
import time
from pathlib import Path

from test_forwarder_rejects import FakeInflux

from collector.config.settings import MeterSettings
from collector.forward.forwarder import Forwarder
from collector.store import Store
from collector.store.records import Reading

T0 = dt.datetime(2026, 1, 2, 3, 4, 5, tzinfo=dt.UTC)
METERS = [MeterSettings("M1", "000000000001", "bus-1")]


def test_other_tables_ship_while_the_writer_holds_the_lock(tmp_path: Path) -> None:
    with Store(tmp_path / "amic.db", synchronous="NORMAL", busy_timeout=1.0) as store, \
            FakeInflux() as server:
        store.write_readings([Reading("M1", "voltage_a", 220.0 + i, "V",
                                      T0 + dt.timedelta(seconds=i)) for i in range(30)])
        with store._write() as conn:  # an event, as the StoreWriter would store it
            conn.execute("INSERT INTO events (ts, kind, meter, bus, severity, value, detail) "
                         "VALUES (?, 'meter_dead', 'M1', 'bus-1', 2, NULL, '')",
                         (int(T0.timestamp() * 1000),))
        for table in ("readings", "events", "commands", "cycles", "daily"):
            store.advance("timeseries", table, 0)
        fwd = Forwarder(store, server.url, org="o", bucket="b", meters=METERS, batch=20,
                        idle_interval=0.05, backoff_min=0.05, cursor_save_interval=60)
        other = sqlite3.connect(store.path, isolation_level=None)

        async def main() -> tuple[int, int, float]:
            other.execute("BEGIN IMMEDIATE")  # as the StoreWriter during a large commit
            try:
                t = time.monotonic()
                task = asyncio.create_task(fwd.run())
                while not any(line.startswith("event,") for line in server.accepted):
                    assert time.monotonic() - t < 3, "events held back by the lock"
                    await asyncio.sleep(0.02)
                took = time.monotonic() - t
                locked = store.cursor("timeseries", "readings")
            finally:
                other.execute("COMMIT")
            t = time.monotonic()
            while store.cursor("timeseries", "readings") < 30:
                assert time.monotonic() - t < 3, "cursor not stored after the lock"
                await asyncio.sleep(0.02)
            fwd.stop()
            await task
            return locked, store.cursor("timeseries", "events"), took

        try:
            locked, events_cursor, took = asyncio.run(main())
        finally:
            other.close()
    assert locked == 0  # not stored while locked ...
    assert events_cursor == 1  # ... stored after
    assert took < 1.0  # less than one busy timeout: nothing waited for the lock
    assert fwd.stats.failures == 0
    assert len([line for line in server.accepted if line.startswith("reading,")]) == 30

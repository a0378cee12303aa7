"""The disk-full policy (docs/storage.md): a store without room raises an event, holds
rows in memory, makes room only from rows already forwarded, and loses nothing."""

from __future__ import annotations

import asyncio
import datetime as dt
import sqlite3
from pathlib import Path

import pytest
from conftest import until

from collector.records import Event, Reading
from collector.store import DB_NAME, Store, StoreWriter

T0 = dt.datetime(2026, 3, 1, 0, 30, tzinfo=dt.UTC)
SIZE_MB = 0.25  # a 256 KiB cap: the store fills after a few thousand readings


def batch(start: int, n: int) -> list[Reading]:
    return [Reading(f"m{(start + i) % 50:03d}", "energy_active_forward_total",
                    float(start + i), "kWh", T0 + dt.timedelta(seconds=start + i))
            for i in range(n)]


def count(store: Store, sql: str) -> int:
    conn = sqlite3.connect(store.path)
    try:
        return int(conn.execute(sql).fetchone()[0])
    finally:
        conn.close()


async def fill_until_full(writer: StoreWriter, alerts: list[Event]) -> int:
    """Queue readings in batches until the writer reports no room; returns rows queued."""
    queued = 0
    while not any(e.kind == "store_full" for e in alerts):
        writer.put_many(batch(queued, 500))
        queued += 500
        await asyncio.sleep(0.01)
        assert queued < 200_000, "the size cap never stopped the writer"
    return queued


def test_full_store_raises_event_holds_rows_and_resumes_after_forwarding(tmp_path: Path
                                                                         ) -> None:
    async def main() -> None:
        store = Store(tmp_path / DB_NAME, max_size_mb=SIZE_MB)
        alerts: list[Event] = []
        writer = StoreWriter(store, commit_interval=0.02, commit_rows=500,
                             on_alert=alerts.append, min_free_mb=0)
        await writer.start()
        queued = await fill_until_full(writer, alerts)
        full = next(e for e in alerts if e.kind == "store_full")
        assert full.severity == 2 and "no room" in full.detail
        assert writer.full_since is not None
        assert store.last_id("readings") < queued  # some rows could not be committed

        # Rows keep arriving while it is full: they wait in memory, none is dropped.
        writer.put_many(batch(queued, 300))
        queued += 300
        await asyncio.sleep(0.3)
        assert writer.pending > 0 and writer.rows_dropped == 0
        assert not any(e.kind == "store_recovered" for e in alerts)

        # A forwarder ships everything committed: the writer may now delete those rows,
        # oldest first, and commits what it held.
        shipped = store.last_id("readings")
        store.advance("timeseries", "readings", shipped)
        await until(lambda: writer.full_since is None, 10)
        await writer.flush()
        assert any(e.kind == "store_recovered" for e in alerts)
        assert writer.rows_dropped == 0 and writer.rows_purged_for_room > 0

        # Every unshipped reading is in the store: the values after `shipped` are all there.
        values = {int(v) for (v,) in sqlite3.connect(store.path).execute(
            "SELECT value FROM readings WHERE id > ?", (shipped,))}
        assert values == set(range(shipped, queued))
        # What was deleted to make room is the oldest of what had been shipped.
        oldest_left = count(store, "SELECT min(id) FROM readings")
        assert oldest_left > 1
        # The events were stored too, once there was room: they get forwarded like any row.
        kinds = [k for (k,) in sqlite3.connect(store.path).execute(
            "SELECT kind FROM events ORDER BY id")]
        assert kinds == ["store_full", "store_recovered"]
        await writer.close()
        ok = sqlite3.connect(store.path).execute("PRAGMA integrity_check").fetchone()[0]
        assert ok == "ok"
        store.close()

    asyncio.run(main())


def test_without_forwarder_nothing_is_deleted_and_close_reports_the_loss(
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    async def main() -> None:
        store = Store(tmp_path / DB_NAME, max_size_mb=SIZE_MB)
        alerts: list[Event] = []
        writer = StoreWriter(store, commit_interval=0.02, commit_rows=500,
                             on_alert=alerts.append, min_free_mb=0)
        await writer.start()
        queued = await fill_until_full(writer, alerts)
        committed = store.last_id("readings")
        await asyncio.sleep(0.3)
        # The store is the only copy of these rows: none was deleted to make room.
        assert count(store, "SELECT count(*) FROM readings") == committed
        assert count(store, "SELECT min(id) FROM readings") == 1
        assert writer.rows_purged_for_room == 0
        held = writer.pending
        assert held > 0
        await writer.close(timeout=0.2)
        # What could not be saved is counted (and logged), and only that.
        assert writer.rows_dropped > 0
        assert count(store, "SELECT count(*) FROM readings") + writer.rows_dropped >= queued
        assert count(store, "SELECT min(id) FROM readings") == 1
        store.close()

    with caplog.at_level("ERROR", logger="amic.store"):
        asyncio.run(main())
    assert "rows abandoned" in caplog.text or "not committed at close" in caplog.text


def test_back_pressure_past_max_pending(tmp_path: Path) -> None:
    """Past max_pending rows in memory, producers that can wait (the poller) wait."""
    async def main() -> None:
        store = Store(tmp_path / DB_NAME, max_size_mb=SIZE_MB)
        alerts: list[Event] = []
        writer = StoreWriter(store, commit_interval=0.02, commit_rows=500,
                             max_pending=2000, on_alert=alerts.append, min_free_mb=0)
        await writer.start()
        await fill_until_full(writer, alerts)
        for i in range(6):
            writer.put_many(batch(10**6 + 500 * i, 500))
        assert writer.backlogged
        waiter = asyncio.create_task(writer.wait_for_room())
        await asyncio.sleep(0.3)
        assert not waiter.done()  # polling would be paused here

        async def forwarder() -> None:  # ships whatever is committed, as the real one does
            while True:
                store.advance("timeseries", "readings", store.last_id("readings"))
                await asyncio.sleep(0.05)

        shipping = asyncio.create_task(forwarder())
        await asyncio.wait_for(waiter, 10)
        await until(lambda: writer.pending == 0, 10)
        shipping.cancel()
        await writer.close()
        # One episode, not an event pair per commit while it hovered at the cap.
        kinds = [e.kind for e in alerts]
        assert kinds == ["store_full", "store_recovered"]
        assert writer.rows_dropped == 0
        store.close()

    asyncio.run(main())


def test_disk_low_event(tmp_path: Path) -> None:
    async def main() -> None:
        store = Store(tmp_path / DB_NAME)
        alerts: list[Event] = []
        # More free space than any disk has: the first commit sees it "low".
        writer = StoreWriter(store, commit_interval=0.02, on_alert=alerts.append,
                             min_free_mb=10**12)
        await writer.start()
        writer.put_many(batch(0, 10))
        await writer.flush()
        await until(lambda: bool(alerts), 10)
        assert [e.kind for e in alerts] == ["disk_low"]
        assert alerts[0].value is not None and alerts[0].value < 10**12
        await writer.close()
        store.close()

    asyncio.run(main())

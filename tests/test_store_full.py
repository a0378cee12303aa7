"""The disk-full policy (docs/storage.md): a store without room raises an event, holds
rows in memory, makes room only from rows already forwarded, and loses nothing."""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import json
import os
import shutil
import sqlite3
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import pytest
from conftest import until

from collector.store import DB_NAME, Store, StoreWriter
from collector.store.records import Event, Reading

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
        # The disk has room (the cap is what is full): the reserve file stays.
        assert writer.reserve_releases == 0 and writer.reserve_path.stat().st_size > 0

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
        # Recovered with headroom, at a commit or at the next room check of the quiet store.
        await until(lambda: writer.full_since is None, 5)
        shipping.cancel()
        await writer.close()
        # One episode, not an event pair per commit while it hovered at the cap.
        kinds = [e.kind for e in alerts]
        assert kinds == ["store_full", "store_recovered"]
        assert writer.rows_dropped == 0
        store.close()

    asyncio.run(main())


def test_no_flapping_while_a_forwarder_trickles(tmp_path: Path) -> None:
    """A full store whose forwarder ships a few rows at a time makes room for a few rows
    at a time: commits fit, then fail, then fit.  That is one episode, not an event pair
    per commit: room again means room for more than the next commit."""
    async def main() -> None:
        store = Store(tmp_path / DB_NAME, max_size_mb=SIZE_MB)
        alerts: list[Event] = []
        writer = StoreWriter(store, commit_interval=0.02, commit_rows=500,
                             on_alert=alerts.append, min_free_mb=0)
        await writer.start()
        queued = await fill_until_full(writer, alerts)
        await until(lambda: store.last_id("readings") > 0, 10)
        shipped = 0
        for _ in range(60):  # ~50 rows a tick in, 60 rows a tick shipped
            writer.put_many(batch(queued, 50))
            queued += 50
            shipped = min(shipped + 60, store.last_id("readings"))
            store.advance("timeseries", "readings", shipped)
            await asyncio.sleep(0.05)
        assert [e.kind for e in alerts] == ["store_full"]
        assert writer.rows_purged_for_room > 0
        # The forwarder catches up: room for good, one store_recovered.
        for _ in range(200):
            if writer.full_since is None:
                break
            writer.put_many(batch(queued, 50))
            queued += 50
            store.advance("timeseries", "readings", store.last_id("readings"))
            await asyncio.sleep(0.05)
        assert writer.full_since is None
        await writer.close()
        assert [e.kind for e in alerts] == ["store_full", "store_recovered"]
        assert writer.rows_dropped == 0
        values = [int(v) for (v,) in sqlite3.connect(store.path).execute(
            "SELECT value FROM readings")]
        assert len(values) == len(set(values)) and max(values) == queued - 1
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


# ---- a real, tiny file system -----------------------------------------------------------

FS_MB = 12


async def disk_full_workload(fs: Path, episodes: int = 1) -> dict[str, Any]:
    """On the (empty, FS_MB) file system at ``fs``: another file eats the free space, the
    store fills the rest while readings keep arriving and a forwarder ships them (after
    an outage of the server, ``episodes`` times); then the other file goes.  Returns
    what the test checks (JSON-able)."""
    store = Store(fs / DB_NAME)
    alerts: list[Event] = []
    writer = StoreWriter(store, commit_interval=0.05, commit_rows=500, min_free_mb=0,
                         disk_check_interval=0.2, on_alert=alerts.append)
    await writer.start()
    reserve = writer.reserve_path.stat().st_size
    shipped: list[float] = []
    stop = threading.Event()
    server_up = threading.Event()
    server_up.set()

    def forwarder() -> None:  # reads the outbox like the real one, then moves its cursor
        reader = Store(fs / DB_NAME, create=False)
        try:
            while not stop.is_set():
                if not server_up.wait(0.05):
                    continue
                with contextlib.suppress(sqlite3.OperationalError):  # full: retried
                    rows = reader.outbox("timeseries", "readings", limit=3000)
                    if rows:
                        reader.advance("timeseries", "readings", rows[-1]["id"])
                        shipped.extend(r["value"] for r in rows)  # acknowledged
                time.sleep(0.05)
        finally:
            reader.close()

    shipping = threading.Thread(target=forwarder)
    shipping.start()
    filler = fs / "other.log"
    filler.write_bytes(b"\0" * (shutil.disk_usage(fs).free - 2 * 1048576))
    written = 0
    held = 0
    try:
        for _ in range(episodes):
            server_up.clear()  # the server is down when the disk fills: nothing to delete
            was_full = False
            t0 = time.monotonic()
            while (time.monotonic() - t0 < 4.0 or writer.full_since is not None
                   or not was_full):
                writer.put_many(batch(written, 300))
                written += 300
                held = max(held, writer.pending)
                await asyncio.sleep(0.02)
                if writer.full_since is not None:
                    was_full = True
                    if time.monotonic() - writer.full_since > 1:
                        server_up.set()  # back: it ships the backlog, the writer deletes it
                assert time.monotonic() - t0 < 30, "the store never got room again"
        sizes = {p.name: p.stat().st_size for p in fs.iterdir()}
        filler.unlink()  # room on the file system again
        t1 = time.monotonic()
        while time.monotonic() - t1 < 1.0:
            writer.put_many(batch(written, 300))
            written += 300
            await asyncio.sleep(0.02)
        await writer.flush()
    finally:
        stop.set()
        shipping.join()
    await writer.close()
    conn = sqlite3.connect(store.path)
    try:
        stored = [v for (v,) in conn.execute("SELECT value FROM readings ORDER BY id")]
        integrity = conn.execute("PRAGMA integrity_check").fetchone()[0]
    finally:
        conn.close()
    store.close()
    return {"written": written, "stored": stored, "shipped": shipped,
            "alerts": [(e.kind, e.value) for e in alerts], "integrity": integrity,
            "held": held, "room_attempts": writer.room_attempts,
            "room_failures": writer.room_failures, "errors": writer.errors,
            "rows_dropped": writer.rows_dropped, "purged": writer.rows_purged_for_room,
            "reserve": reserve, "reserve_back": writer.reserve_path.stat().st_size,
            "reserve_releases": writer.reserve_releases,
            "sizes_full": sizes}


def run_on_tiny_fs(mnt: Path, episodes: int = 1) -> dict[str, Any]:
    """:func:`disk_full_workload` on a FS_MB tmpfs mounted at ``mnt``: here as root,
    else in a subprocess with its own user and mount namespaces."""
    mnt.mkdir()
    if os.geteuid() == 0:
        subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={FS_MB}m", "tmpfs", str(mnt)],
                       check=True)
        try:
            return asyncio.run(disk_full_workload(mnt, episodes))
        finally:
            subprocess.run(["umount", "-l", str(mnt)], check=True)
    code = ("import asyncio, json, sys; from pathlib import Path; "
            f"sys.path.insert(0, {str(Path(__file__).parent)!r}); "
            "import test_store_full as t; "
            f"print(json.dumps(asyncio.run(t.disk_full_workload(Path(sys.argv[1]), {episodes}))))")
    r = subprocess.run(["unshare", "--user", "--map-root-user", "--mount", "sh", "-c",
                        f'mount -t tmpfs -o size={FS_MB}m tmpfs "$1" && exec "$2" -c "$3" "$1"',
                        "sh", str(mnt), sys.executable, code],
                       capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    return dict(json.loads(r.stdout.splitlines()[-1]))


def test_disk_full_on_a_real_file_system(tmp_path: Path) -> None:
    """A 12 MB file system filled by another file, then by the store: room is made from
    shipped rows (the reserve file goes first), nothing unshipped is lost, one event
    pair, and the store writes on once the other file is gone."""
    got = run_on_tiny_fs(tmp_path / "fs")
    print(f"\nheld in memory at most {got['held']} rows; episode "
          f"{[v for k, v in got['alerts'] if k == 'store_recovered']} s; room-making "
          f"{got['room_attempts']} runs, {got['room_failures']} failed; commit errors "
          f"{got['errors']}; {got['purged']} shipped rows deleted; reserve "
          f"{got['reserve']} B; files when full {got['sizes_full']}")
    assert got["integrity"] == "ok"
    # It was full: the store made room, once, without failing.
    assert [k for k, _ in got["alerts"]] == ["store_full", "store_recovered"]
    assert got["room_failures"] == 0 and got["purged"] > 0
    assert got["rows_dropped"] == 0
    # No unshipped row lost, none twice: what is not in the store was shipped before.
    stored = [int(v) for v in got["stored"]]
    assert len(stored) == len(set(stored))
    assert set(stored) | {int(v) for v in got["shipped"]} == set(range(got["written"]))
    assert max(stored) == got["written"] - 1  # written after room came back
    # The reserve went once; with room on the file system again it is back.
    assert got["reserve_releases"] == 1
    assert got["reserve_back"] == got["reserve"] > 0


def test_a_file_system_kept_full_by_outages_recovers_every_time(tmp_path: Path) -> None:
    """Three server outages in a row on the full file system: after the first the
    reserve file is gone, and a store that had grown into the last free byte could not
    delete a shipped row again (a delete is written to the WAL first).  Every outage
    ends in room again, and nothing unshipped is lost."""
    got = run_on_tiny_fs(tmp_path / "fs", episodes=3)
    assert got["integrity"] == "ok"
    assert [k for k, _ in got["alerts"]] == ["store_full", "store_recovered"] * 3
    assert got["room_failures"] == 0 and got["rows_dropped"] == 0
    stored = [int(v) for v in got["stored"]]
    assert len(stored) == len(set(stored))
    assert set(stored) | {int(v) for v in got["shipped"]} == set(range(got["written"]))
    assert got["reserve_releases"] == 1 and got["reserve_back"] == got["reserve"]


def test_a_full_store_that_goes_quiet_recovers_when_the_forwarder_catches_up(
        tmp_path: Path) -> None:
    """Recovery is not left to the next commit (a cycle away, or never on a quiet
    store): once shipped rows leave room, store_recovered comes by itself."""
    async def main() -> None:
        store = Store(tmp_path / DB_NAME, max_size_mb=SIZE_MB)
        alerts: list[Event] = []
        writer = StoreWriter(store, commit_interval=0.02, commit_rows=500,
                             on_alert=alerts.append, min_free_mb=0)
        await writer.start()
        await fill_until_full(writer, alerts)
        # A slow forwarder ships just enough for the held rows to go in: the backlog is
        # written, but the store is still at its cap (no headroom: not recovered).
        shipped = 0
        while writer.pending:
            shipped = min(store.last_id("readings"), shipped + 200)
            store.advance("timeseries", "readings", shipped)
            await asyncio.sleep(0.05)
        await asyncio.sleep(1.0)
        assert writer.full_since is not None, "recovered already: the test proves nothing"
        # Nothing more arrives; the forwarder catches up: recovered without a commit.
        store.advance("timeseries", "readings", store.last_id("readings"))
        await until(lambda: writer.full_since is None, 5,
                    what=lambda: [e.kind for e in alerts])
        assert [e.kind for e in alerts] == ["store_full", "store_recovered"]
        assert writer.rows_dropped == 0
        await writer.close()
        store.close()

    asyncio.run(main())

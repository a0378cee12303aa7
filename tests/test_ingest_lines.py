"""Reading lines built from per-meter and per-quantity text (thread and worker process)
are the Python reference's, and a refused worker batch dead-letters only its own rows."""

from __future__ import annotations

import asyncio
import datetime as dt
import gzip
import math
from pathlib import Path

import pytest
from test_forwarder_rejects import FakeInflux

from collector.config.settings import MeterSettings
from collector.forward.forwarder import Forwarder
from collector.store import Store, StoreWriter
from collector.store.records import Reading

T0 = dt.datetime(2026, 1, 2, 3, 4, 5, 678000, tzinfo=dt.UTC)
METERS = [MeterSettings("M 1,x=y", "000000000001", "bus 1", area="TQ,01", feeder="F=1",
                        station="S\\1"),
          MeterSettings("M2", "000000000002", "bus-2"),
          MeterSettings("OLD", "000000000003", "bus-3")]


def commit(store: Store, rows: list[Reading]) -> None:
    async def put() -> None:
        async with StoreWriter(store) as w:
            w.put_many(rows)
    asyncio.run(put())


def body_lines(body: bytes) -> list[str]:
    return gzip.decompress(body).decode().split("\n") if body else []


def batches(fwd: Forwarder) -> tuple[list[str], int]:
    """Every readings line ``fwd`` builds batch by batch, and how many batches the worker
    process built."""
    lines: list[str] = []
    after = 0
    by_worker = 0
    while (b := fwd._prepare("readings", after)).rows:
        lines += body_lines(b.body)
        by_worker += b.pairs is None
        after = b.last_id
    return lines, by_worker


@pytest.mark.parametrize("precision", ["s", "ms", "ns"])
def test_worker_lines_of_odd_names_equal_python_lines(tmp_path: Path, precision: str) -> None:
    """Escaped meter ids and quantity names that need escaping are converted in the
    worker process too, byte for byte as reading_lines; NaN and infinities have no line."""
    values = [220.0, 0.1 + 0.2, -3.5, 5e-324, math.nan, math.inf, -math.inf, -0.0]
    rows = [Reading(m, q, v, "V", T0 + dt.timedelta(seconds=i),
                    meter_ts=T0 if i % 2 else None)
            for i, v in enumerate(values * 5)
            for m in ("M 1,x=y", "M2")
            for q in ("voltage_a", "odd quantity,x=1", "Ünïcode")]
    with Store(tmp_path / "amic.db") as store:
        commit(store, rows)
        here = Forwarder(store, "http://unused", org="o", bucket="b", meters=METERS,
                         precision=precision, batch=50, process_backlog=0, collector="gw 1")
        worker = Forwarder(store, "http://unused", org="o", bucket="b", meters=METERS,
                           precision=precision, batch=50, process_backlog=1,
                           collector="gw 1")
        try:
            thread_lines, none = batches(here)
            worker_lines, by_worker = batches(worker)
        finally:
            worker._stop_worker()
        python = here.reading_lines(store.outbox("x", "readings", after_id=0, limit=10_000))
    assert none == 0
    assert by_worker == math.ceil(len(rows) / 50)  # every batch
    assert thread_lines == worker_lines == python
    assert len(python) == len(rows) - 3 * 5 * 2 * 3
    assert "quantity=odd\\ quantity\\,x\\=1," in python[1]
    assert python[0].startswith("reading,meter=M\\ 1\\,x\\=y,quantity=voltage_a,area=TQ\\,01,"
                                "bus=bus\\ 1,feeder=F\\=1,station=S\\\\1,collector=gw\\ 1 ")


def test_unconfigured_meter_batch_is_built_in_the_thread(tmp_path: Path) -> None:
    """The worker process converts configured meters only; a batch with a reading of
    another meter is built in the forwarder's thread, with the collector tag alone."""
    rows = [Reading(m, "voltage_a", 1.0 + i, "V", T0 + dt.timedelta(seconds=i))
            for i in range(30) for m in ("M2", "GONE")]
    with Store(tmp_path / "amic.db") as store:
        commit(store, rows)
        worker = Forwarder(store, "http://unused", org="o", bucket="b", meters=METERS,
                           batch=20, process_backlog=1, collector="gw1")
        try:
            lines, by_worker = batches(worker)
        finally:
            worker._stop_worker()
        python = worker.reading_lines(store.outbox("x", "readings", after_id=0, limit=100))
    assert by_worker == 0
    assert lines == python and len(lines) == 60
    assert lines[1].startswith("reading,meter=GONE,quantity=voltage_a,collector=gw1 value=1.0 ")


def test_new_meter_tags_reach_the_thread_lines(tmp_path: Path) -> None:
    with Store(tmp_path / "amic.db") as store:
        commit(store, [Reading("M2", "voltage_a", 1.0, "V", T0)])
        fwd = Forwarder(store, "http://unused", org="o", bucket="b", meters=METERS,
                        process_backlog=0)
        before = body_lines(fwd._prepare("readings", 0).body)
        fwd.set_meters([MeterSettings("M2", "000000000002", "bus-9", area="A2")])
        after = body_lines(fwd._prepare("readings", 0).body)
    assert ",bus=bus-2 value=1.0 " in before[0]
    assert ",area=A2,bus=bus-9 value=1.0 " in after[0]


def test_refused_worker_batch_dead_letters_only_its_rows(tmp_path: Path) -> None:
    """A batch the worker built is refused for good: its lines are built again in the
    thread for isolation, up to its last row, though newer rows are stored by then."""
    first = [Reading("M2", "voltage_a", 220.0 + i, "V", T0 + dt.timedelta(seconds=i))
             for i in range(10)]
    first.insert(4, Reading("OLD", "voltage_a", 1.0, "V", T0 - dt.timedelta(days=999)))
    with Store(tmp_path / "amic.db") as store, FakeInflux(422) as server:
        commit(store, first)
        fwd = Forwarder(store, server.url, org="o", bucket="b", meters=METERS, batch=100,
                        process_backlog=1)
        fwd._open()
        try:
            batch = fwd._prepare("readings", 0)
            assert batch.pairs is None and batch.rows == 11  # the worker's
            later = [Reading("M2", "voltage_b", 1.0, "V", T0),
                     Reading("OLD", "voltage_b", 2.0, "V", T0)]
            commit(store, later)
            fwd._send("readings", batch)
        finally:
            fwd._close()
            fwd._stop_worker()
        dead = store.dead_letters("timeseries")
        cursor = store.cursor("timeseries", "readings")
    assert cursor == 11  # the batch, not the rows stored after it
    assert [(r["row_id"], r["status"]) for r in dead] == [(5, 422)]
    assert "meter=OLD,quantity=voltage_a," in dead[0]["line"]
    accepted = {line.split(" value=")[1] for line in server.accepted}
    assert accepted == {f"{220.0 + i!r} {int(first[0].ts.timestamp() * 1000) + 1000 * i}"
                        for i in range(10)}
    assert not any("voltage_b" in line for line in server.accepted)


def test_worker_converts_a_backlog_until_less_than_a_batch_is_left(tmp_path: Path) -> None:
    """From a backlog of process_backlog rows the worker process converts every batch
    until the forwarder has caught up, not only while the backlog is above the
    threshold; a later smaller backlog stays in the thread."""
    def rows(n: int, start: int) -> list[Reading]:
        return [Reading("M2", "voltage_a", float(i), "V", T0 + dt.timedelta(seconds=i))
                for i in range(start, start + n)]

    with Store(tmp_path / "amic.db") as store:
        commit(store, rows(1000, 0))
        fwd = Forwarder(store, "http://unused", org="o", bucket="b", meters=METERS,
                        batch=100, process_backlog=500)
        try:
            # behind 1000, 900, ..., 100 rows: the worker's, below the threshold too
            built = [fwd._prepare("readings", after).pairs is None
                     for after in range(0, 1000, 100)]
            built.append(fwd._prepare("readings", 950).pairs is None)  # caught up
            commit(store, rows(300, 1000))  # behind 300: not a backlog
            last = fwd._prepare("readings", 1000)
            built.append(last.pairs is None)
        finally:
            fwd._stop_worker()
    assert built == [True] * 10 + [False, False]
    assert fwd.stats.worker_batches == 10
    assert last.points == 100 and last.last_id == 1100

"""The readings' line protocol built by SQLite equals the Python conversion (no server)."""

from __future__ import annotations

import asyncio
import datetime as dt
import gzip
import math
import random
import struct
from pathlib import Path

import pytest

from collector.config.settings import MeterSettings
from collector.forward.forwarder import Forwarder
from collector.store import Store, StoreWriter
from collector.store.records import Reading

T0 = dt.datetime(2026, 1, 2, 3, 4, 5, 678000, tzinfo=dt.UTC)
METERS = [MeterSettings("M 1,x=y", "000000000001", "bus 1", area="TQ,01", feeder="F=1",
                        station="S\\1"),
          MeterSettings("M2", "000000000002", "bus-2")]
COLLECTOR = "gw 1,x"  # the [collector] id, escaped in lines as below
COLLECTOR_TAG = ",collector=gw\\ 1\\,x"


def parse(line: str) -> tuple[str, float, int]:
    head, value, ts = line.rsplit(" ", 2)
    assert value.startswith("value=")
    return head, float(value[len("value="):]), int(ts)


def commit(store: Store, rows: list[Reading]) -> None:
    """The rows through the StoreWriter, as the daemon stores them."""
    async def put() -> None:
        async with StoreWriter(store) as w:
            w.put_many(rows)
    asyncio.run(put())


@pytest.mark.parametrize("precision", ["s", "ms", "us", "ns"])
def test_sql_lines_equal_python_lines(tmp_path: Path, precision: str) -> None:
    values = [220.0, 0.1 + 0.2, 812345.67, -3.5, 1 / 3, 1e20, 5e-324, math.nan, math.inf,
              -math.inf, 0.0, -0.0, 1.7976931348623157e308]
    rows = [Reading(m, q, v, "V", T0 + dt.timedelta(seconds=i),
                    meter_ts=T0 if i % 3 == 0 else None)
            for i, v in enumerate(values)
            for m in ("M 1,x=y", "M2", "unconfigured meter")
            for q in ("voltage_a", "odd quantity,x")]
    with Store(tmp_path / "amic.db") as store:
        commit(store, rows)
        fwd = Forwarder(store, "http://unused", org="o", bucket="b", meters=METERS,
                        precision=precision, batch=10_000, collector=COLLECTOR)
        batch = fwd._prepare("readings", 0)
        python = fwd.reading_lines(store.outbox("x", "readings", after_id=0, limit=10_000))
    assert batch.rows == len(rows) and batch.last_id == len(rows)
    assert batch.pairs is not None
    sql = gzip.decompress(batch.body).decode().split("\n")
    assert sql == [line for _, line in batch.pairs]
    assert batch.points == len(sql) == len(python)
    # The very same lines, byte for byte (so also the same double).
    assert sql == python
    assert [parse(a) for a in sql] == [parse(b) for b in python]
    # Both carry the collector tag, configured meter or not.
    assert all(COLLECTOR_TAG + " " in line for line in sql + python)
    # NULL (NaN) and infinite values have no point.
    assert len(python) == len(rows) - 3 * 2 * 3


def test_worker_process_builds_the_same_body(tmp_path: Path) -> None:
    """A backlog is converted in the worker process: the same lines, batch by batch; a
    batch with a row only Python converts (an unconfigured meter) is built here."""
    values = [220.0, 0.1 + 0.2, 812345.67, -3.5, 1 / 3, 5e-324, math.nan, 0.0, -0.0]
    rows = [Reading(m, "voltage_a", v, "V", T0 + dt.timedelta(seconds=i))
            for i, v in enumerate(values * 40) for m in ("M 1,x=y", "M2")]
    rows.append(Reading("unconfigured", "voltage_a", 1.0, "V", T0))
    with Store(tmp_path / "amic.db") as store:
        commit(store, rows)
        here = Forwarder(store, "http://unused", org="o", bucket="b", meters=METERS,
                         batch=100, process_backlog=0, collector=COLLECTOR)
        worker = Forwarder(store, "http://unused", org="o", bucket="b", meters=METERS,
                           batch=100, process_backlog=1, collector=COLLECTOR)
        try:
            after = 0
            built_by_worker = 0
            while True:
                a, b = here._prepare("readings", after), worker._prepare("readings", after)
                assert (a.rows, a.last_id, a.points) == (b.rows, b.last_id, b.points)
                assert gzip.decompress(a.body) == gzip.decompress(b.body)
                assert all(COLLECTOR_TAG + " " in line
                           for line in gzip.decompress(b.body).decode().splitlines())
                built_by_worker += b.pairs is None
                if not a.rows:
                    break
                after = a.last_id
            # Meter tags changed: the worker gets the new ones.
            worker.set_meters([METERS[0], MeterSettings("M2", "000000000002", "bus-9")])
            c = worker._prepare("readings", 0)
        finally:
            worker._stop_worker()
    assert after == len(rows)
    # all but the last batch (unconfigured meter), values of 16 or 17 digits included
    assert built_by_worker == len(rows) // 100
    assert c.pairs is None
    assert b"bus=bus-9" in gzip.decompress(c.body)


def test_a_denied_remote_request_has_its_own_status_code(tmp_path: Path) -> None:
    """A request refused for security is not shipped like an answered one (done, 14)."""
    from collector.store.records import CommandRecord

    with Store(tmp_path / "amic.db") as store:
        async def put() -> None:
            async with StoreWriter(store) as w:
                w.put_command(CommandRecord("r1", "M1", "trip", T0, operator="mallory",
                                            status="denied", detail="{}"))
                w.put_command(CommandRecord("r2", "M1", "read", T0, status="done"))
        asyncio.run(put())
        fwd = Forwarder(store, "http://unused", org="o", bucket="b", meters=METERS)
        denied, done = fwd.command_lines(store.outbox("x", "commands", after_id=0))
    assert denied.startswith("command,meter=M1,kind=trip,status=denied,operator=mallory "
                             "status_code=16.0,")
    assert "status_code=14.0" in done


def test_relay_command_audit_becomes_numeric_fields(tmp_path: Path) -> None:
    """A relay command's facts reach stores that keep numeric fields only."""
    import json

    from collector.store.records import CommandRecord

    detail = {"reason": "arrears", "latency_ms": 412.5, "energy_at_switch": 1234.56,
              "before": {"relay_open": False}, "after": {"relay_open": True}}
    with Store(tmp_path / "amic.db") as store:
        async def put() -> None:
            async with StoreWriter(store) as w:
                w.put_command(CommandRecord("r1/M1", "M1", "trip", T0, operator="alice",
                                            status="confirmed", detail=json.dumps(detail)))
        asyncio.run(put())
        fwd = Forwarder(store, "http://unused", org="o", bucket="b", meters=METERS)
        (line,) = fwd.command_lines(store.outbox("x", "commands", after_id=0))
    head, fields, _ = line.split(" ")
    assert head == "command,meter=M1,kind=trip,status=confirmed,operator=alice"
    assert dict(f.split("=") for f in fields.split(",")) == {
        "status_code": "3.0", "count": "1.0", "latency_ms": "412.5", "energy_kwh": "1234.56",
        "relay_open_before": "0.0", "relay_open_after": "1.0"}


def test_skipped_protected_trip_has_its_own_status_code(tmp_path: Path) -> None:
    """A trip not sent to a protected meter is not "unknown" (9) in the time series."""
    import json

    from collector.store.records import CommandRecord

    detail = {"reason": "arrears", "protected": "area master meter of area TQ-1"}
    with Store(tmp_path / "amic.db") as store:
        async def put() -> None:
            async with StoreWriter(store) as w:
                w.put_command(CommandRecord("r1/M1", "M1", "trip", T0, operator="alice",
                                            status="skipped_protected",
                                            detail=json.dumps(detail)))
        asyncio.run(put())
        fwd = Forwarder(store, "http://unused", org="o", bucket="b", meters=METERS)
        (line,) = fwd.command_lines(store.outbox("x", "commands", after_id=0))
    head, fields, _ = line.split(" ")
    assert head == "command,meter=M1,kind=trip,status=skipped_protected,operator=alice"
    assert dict(f.split("=") for f in fields.split(",")) == {"status_code": "15.0",
                                                            "count": "1.0"}


def test_every_measurement_carries_the_collector_tag(tmp_path: Path) -> None:
    """Events, commands, cycles and daily figures too: gateways can share one TSDB."""
    from collector.store.records import CommandRecord, CycleRecord, DailyRecord, Event

    with Store(tmp_path / "amic.db") as store:
        async def put() -> None:
            async with StoreWriter(store) as w:
                w.put_event(Event("meter_dead", T0, meter="M2", severity=2))
                w.put_command(CommandRecord("c1", "M2", "trip", T0, status="sent"))
                w.put_cycle(CycleRecord("cy1", "fast", T0, T0 + dt.timedelta(seconds=5), 2,
                                        1, 1, {"bus-2": (1, 2)}, {"TQ,01": (1, 2)}))
                w.put_daily(DailyRecord(T0.date(), "lineloss", "TQ,01", T0, True,
                                        (("loss_pct", 2.5),)))
        asyncio.run(put())
        fwd = Forwarder(store, "http://unused", org="o", bucket="b", meters=METERS,
                        collector=COLLECTOR)
        lines = {table: fwd._converters[table](store.outbox("x", table, after_id=0))
                 for table in ("events", "commands", "cycles", "daily")}
    assert {t: len(v) for t, v in lines.items()} == \
        {"events": 1, "commands": 1, "cycles": 3, "daily": 1}
    for line in [line for v in lines.values() for line in v]:
        assert COLLECTOR_TAG + " " in line, line  # the last tag


def test_sql_lines_equal_python_lines_for_many_values(tmp_path: Path) -> None:
    """Thousands of values of meters (decimals), of arithmetic (16-17 digits) and any
    double through both the thread's and the worker process's SQL: byte-identical to
    reading_lines, and each number gives back the stored double."""
    rnd = random.Random(14)
    values = [round(rnd.uniform(-1e6, 1e6), rnd.randint(0, 4)) for _ in range(1500)]
    values += [rnd.uniform(-1e6, 1e6) for _ in range(1500)]
    values += [rnd.uniform(-1e-3, 1e-3) for _ in range(300)]
    # doubles SQLite 3.40 writes wrongly (printf, 17 digits) or reads back wrongly (15)
    values += [-546125307946255.4, 0.0008353323508828638, 38119.805511187296,
               617428.8843511459, 0.05151296, 1e20, -1e300, 5e-324, -0.0]
    # any bit pattern that is a finite double
    values += [v for v in (struct.unpack("<d", rnd.getrandbits(64).to_bytes(8, "little"))[0]
                           for _ in range(1000)) if math.isfinite(v)]
    rows = [Reading("M2", "energy_active_forward_total", v, "kWh",
                    T0 + dt.timedelta(seconds=i)) for i, v in enumerate(values)]
    with Store(tmp_path / "amic.db") as store:
        commit(store, rows)
        here = Forwarder(store, "http://unused", org="o", bucket="b", meters=METERS,
                         batch=10_000, process_backlog=0, collector=COLLECTOR)
        worker = Forwarder(store, "http://unused", org="o", bucket="b", meters=METERS,
                           batch=10_000, process_backlog=1, collector=COLLECTOR)
        try:
            a, b = here._prepare("readings", 0), worker._prepare("readings", 0)
        finally:
            worker._stop_worker()
        python = here.reading_lines(store.outbox("x", "readings", after_id=0, limit=10_000))
    assert b.pairs is None  # built by the worker process
    assert gzip.decompress(a.body).decode().split("\n") == python
    assert gzip.decompress(b.body).decode().split("\n") == python
    assert [parse(line)[1] for line in python] == [v + 0.0 for v in values]  # -0.0 is 0.0

"""The time-series forwarder against a real VictoriaMetrics (tests/victoria.py)."""

from __future__ import annotations

import asyncio
import datetime as dt
import logging
import os
import signal
import sqlite3
import subprocess
import sys
import textwrap
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from conftest import until
from daemonproc import gone, worker_processes
from victoria import VM_BIN, VictoriaMetrics

from collector.config.settings import MeterSettings
from collector.forward.forwarder import Forwarder, escape_tag, read_token
from collector.store import Store, StoreWriter
from collector.store.records import CommandRecord, CycleRecord, Event, Reading, to_ms

pytestmark = pytest.mark.skipif(not os.path.exists(VM_BIN), reason="victoria-metrics missing")

TOKEN = "s3cr3t-token-XYZ"
T0 = dt.datetime(2026, 1, 2, 3, 4, 5, 678000, tzinfo=dt.UTC)
METERS = [MeterSettings("M1", "000000000001", "bus-1", area="TQ 01", feeder="F1", station="S1"),
          MeterSettings("M2", "000000000002", "bus-2", area="TQ-02")]


@pytest.fixture
def vm(tmp_path: Path) -> Iterator[VictoriaMetrics]:
    with VictoriaMetrics(tmp_path / "vm") as v:
        yield v


@pytest.fixture
def store(tmp_path: Path) -> Iterator[Store]:
    with Store(tmp_path / "amic.db", synchronous="NORMAL") as s:
        s.sync_meters(METERS)
        yield s


def readings(start: int, n: int, meters: tuple[str, ...] = ("M1", "M2")) -> list[Reading]:
    """n readings per meter, one per second from T0 + start s."""
    out = []
    for i in range(start, start + n):
        ts = T0 + dt.timedelta(seconds=i)
        out += [Reading(m, "voltage_a", 220.0 + i, "V", ts) for m in meters]
    return out


def forwarder(store: Store, vm: VictoriaMetrics, **kw: object) -> Forwarder:
    args: dict[str, object] = dict(org="amic", bucket="amic", token=TOKEN, meters=METERS,
                                   backoff_min=0.05, backoff_max=0.3, idle_interval=0.05)
    args.update(kw)
    return Forwarder(store, vm.url, **args)  # type: ignore[arg-type]


def caught_up(store: Store, name: str = "timeseries") -> bool:
    return all(store.cursor(name, t) == store.last_id(t)
               for t in ("readings", "events", "commands", "cycles"))


def samples(vm: VictoriaMetrics, match: str) -> dict[str, list[int]]:
    """meter -> timestamps of ``match`` (deduplicated by VM)."""
    return {s["metric"].get("meter", ""): s["timestamps"] for s in vm.export(match)}


def test_escape_and_token(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    assert escape_tag("a b,c=d\\") == "a\\ b\\,c\\=d\\\\"
    f = tmp_path / "token"
    f.write_text(TOKEN + "\n")
    assert read_token(None, f) == TOKEN
    monkeypatch.setenv("AMIC_TSDB_TOKEN", "env-token")
    assert read_token() == "env-token"
    assert read_token("explicit") == "explicit"


async def test_rows_arrive_with_series_tags_and_timestamps(store: Store,
                                                          vm: VictoriaMetrics) -> None:
    rs = readings(0, 3)
    rs.append(Reading("M1", "energy_active_forward_total", 1234.5, "kWh", T0,
                      meter_ts=T0 - dt.timedelta(minutes=15)))
    rs.append(Reading("M9", "voltage_b", float("nan"), "V", T0))  # NaN: not shipped
    store.write_readings(rs)
    async with StoreWriter(store, commit_interval=0.05) as w:
        w.put_event(Event("meter_dead", T0, meter="M2", severity=2, detail="no answer"))
        w.put_event(Event("config_reloaded", T0, severity=0))
        w.put_command(CommandRecord("c1", "M1", "relay_off", T0, operator="op", status="sent"))
        w.put_cycle(CycleRecord("cy1", "fast", T0, T0 + dt.timedelta(seconds=12), 4, 3, 1,
                                {"bus-1": (2, 2), "bus-2": (1, 2)},
                                {"TQ 01": (2, 2), "TQ-02": (1, 2)}))
        w.put_cycle(CycleRecord("cy2", "fast", T0))  # still running: no line
        await w.flush()
    fwd = forwarder(store, vm)
    task = asyncio.create_task(fwd.run())
    await until(lambda: caught_up(store))
    fwd.stop()
    await task

    series = vm.export('{__name__="reading_value",quantity="voltage_a"}')
    by_meter = {s["metric"]["meter"]: s for s in series}
    assert by_meter["M1"]["metric"] == {"__name__": "reading_value", "meter": "M1",
                                        "quantity": "voltage_a", "area": "TQ 01",
                                        "bus": "bus-1", "feeder": "F1", "station": "S1"}
    assert by_meter["M2"]["metric"]["area"] == "TQ-02"
    assert "feeder" not in by_meter["M2"]["metric"]
    assert by_meter["M1"]["timestamps"] == [to_ms(T0) + 1000 * i for i in range(3)]
    assert by_meter["M1"]["values"] == [220.0, 221.0, 222.0]
    (energy,) = vm.export('{__name__="reading_value",quantity="energy_active_forward_total"}')
    assert energy["timestamps"] == [to_ms(T0 - dt.timedelta(minutes=15))]  # meter's clock
    assert vm.export('{__name__="reading_value",meter="M9"}') == []

    (dead,) = vm.export('{__name__="event_severity",kind="meter_dead"}')
    assert dead["metric"]["meter"] == "M2" and dead["metric"]["bus"] == "bus-2"
    assert dead["values"] == [2] and dead["timestamps"] == [to_ms(T0)]
    assert len(vm.export('{__name__="event_count"}')) == 2
    (cmd,) = vm.export('{__name__="command_status_code"}')
    assert cmd["metric"] == {"__name__": "command_status_code", "meter": "M1",
                             "kind": "relay_off", "status": "sent", "operator": "op"}
    assert cmd["values"] == [1]
    (ratio,) = vm.export('{__name__="cycle_success_ratio"}')
    assert ratio["values"] == [0.75] and ratio["timestamps"] == [to_ms(T0)]
    (dur,) = vm.export('{__name__="cycle_duration_s"}')
    assert dur["values"] == [12]
    areas = {s["metric"]["area"]: s["values"] for s in vm.export(
        '{__name__="cycle_area_success_ratio"}')}
    assert areas == {"TQ 01": [1], "TQ-02": [0.5]}
    assert fwd.stats.points_sent > 0 and fwd.stats.failures == 0 and fwd.stats.lag == 0
    assert store.cursor("timeseries", "readings") == store.last_id("readings")


async def test_two_collectors_share_one_server(store: Store, vm: VictoriaMetrics) -> None:
    """The same meter ids from two collectors stay apart: series differ by ``collector``."""
    store.write_readings(readings(0, 2))
    async with StoreWriter(store, commit_interval=0.05) as w:
        w.put_event(Event("meter_dead", T0, meter="M2", severity=2))
        w.put_command(CommandRecord("c1", "M1", "trip", T0, status="sent"))
    for gw in ("gw-a", "gw-b"):  # two forwarders (own cursors), as two gateways' daemons
        fwd = forwarder(store, vm, name=gw, collector=gw)
        task = asyncio.create_task(fwd.run())
        await until(lambda gw=gw: caught_up(store, gw))  # type: ignore[misc]
        fwd.stop()
        await task
    for gw in ("gw-a", "gw-b"):
        got = vm.export(f'{{collector="{gw}"}}')
        names = sorted((s["metric"]["__name__"], s["metric"].get("meter", "")) for s in got)
        assert names == [("command_count", "M1"), ("command_status_code", "M1"),
                         ("event_count", "M2"), ("event_severity", "M2"),
                         ("reading_value", "M1"), ("reading_value", "M2")]
        assert all(len(s["timestamps"]) == (2 if s["metric"]["__name__"] == "reading_value"
                                            else 1) for s in got)


async def test_each_status_of_a_remote_command_arrives(store: Store,
                                                      vm: VictoriaMetrics) -> None:
    """A remote request journaled ``received`` then ``done`` (here in one commit, as a
    quick read is): both statuses reach the server as their own points."""
    from collector.commands.remote import StoreJournal

    async with StoreWriter(store, commit_interval=0.05) as w:
        journal = StoreJournal(store, w)
        journal.put("req-1", "received", "", meter="M1", kind="read", operator="ops")
        journal.put("req-1", "done", '{"ok": true}')
        await journal.flush()
        journal.put("req-2", "received", "", meter="M2", kind="relay", operator="ops")
        await journal.flush()
        fwd = forwarder(store, vm)
        task = asyncio.create_task(fwd.run())
        await until(lambda: caught_up(store))
        journal.put("req-2", "done", '{"ok": false}')  # after "received" was shipped
        await journal.flush()
        await until(lambda: caught_up(store))
        fwd.stop()
        await task
    got = {(s["metric"]["meter"], s["metric"]["status"]): s["values"]
           for s in vm.export('{__name__="command_status_code"}')}
    assert got == {("M1", "received"): [13], ("M1", "done"): [14],
                   ("M2", "received"): [13], ("M2", "done"): [14]}
    assert store.command("req-1") is not None and store.count("commands") == 2


async def test_cursors_registered_before_anything_ships(store: Store) -> None:
    store.write_readings(readings(0, 2))
    fwd = Forwarder(store, "http://127.0.0.1:9", org="o", bucket="b", token=TOKEN,
                    backoff_min=0.01, backoff_max=0.02, timeout=0.5)
    task = asyncio.create_task(fwd.run())
    await until(lambda: fwd.stats.failures >= 2)
    fwd.stop()
    await task
    names = {(c.name, c.table, c.last_id) for c in store.cursors()}
    assert ("timeseries", "readings", 0) in names
    assert ("timeseries", "cycles", 0) in names
    assert fwd.stats.last_error and TOKEN not in fwd.stats.last_error


@pytest.mark.parametrize("process_backlog", [0, 100], ids=["in-thread", "worker-process"])
async def test_outage_every_row_exactly_once(store: Store, vm: VictoriaMetrics,
                                             caplog: pytest.LogCaptureFixture,
                                             process_backlog: int) -> None:
    caplog.set_level(logging.DEBUG)
    fwd = forwarder(store, vm, batch=50, process_backlog=process_backlog)
    task = asyncio.create_task(fwd.run())
    store.write_readings(readings(0, 100))
    await until(lambda: caught_up(store))
    await asyncio.to_thread(vm.stop)
    for k in range(5):  # rows keep coming while the server is down
        store.write_readings(readings(100 + 40 * k, 40))
        await asyncio.sleep(0.1)
    await until(lambda: fwd.stats.failures >= 2)
    assert store.cursor("timeseries", "readings") < store.last_id("readings")
    await asyncio.to_thread(vm.start)
    store.write_readings(readings(300, 50))
    await until(lambda: caught_up(store))
    fwd.stop()
    await task

    got = samples(vm, '{__name__="reading_value"}')
    expected = [to_ms(T0) + 1000 * i for i in range(350)]
    assert got == {"M1": expected, "M2": expected}
    assert store.cursor("timeseries", "readings") == store.last_id("readings") == 700
    warnings = [r for r in caplog.records if r.name == "amic.forwarder"
                and r.levelno == logging.WARNING]
    assert len(warnings) == 1  # once per outage
    assert fwd.stats.failing is False
    assert (fwd.stats.worker_batches > 0) == (process_backlog > 0)
    assert TOKEN not in caplog.text


async def test_forwarding_goes_on_while_the_store_writer_holds_the_lock(
        store: Store, vm: VictoriaMetrics) -> None:
    """The store writer's long transactions do not stall forwarding: the cursor is
    stored once the lock is free."""
    store.write_readings(readings(0, 300))
    for table in ("readings", "events", "commands", "cycles", "daily"):
        store.advance("timeseries", table, 0)
    other = sqlite3.connect(store.path, isolation_level=None)
    other.execute("BEGIN IMMEDIATE")  # as the StoreWriter during a large commit
    fwd = forwarder(store, vm, batch=50, cursor_save_interval=60)
    task = asyncio.create_task(fwd.run())
    try:
        await until(lambda: fwd.stats.points_sent == 600, timeout=4)
        assert fwd.stats.batches == 12
        assert store.cursor("timeseries", "readings") == 0  # not stored yet: locked
    finally:
        other.execute("COMMIT")
        other.close()
    await until(lambda: store.cursor("timeseries", "readings") == 600)
    fwd.stop()
    await task
    got = samples(vm, '{__name__="reading_value"}')
    assert len(got["M1"]) == len(got["M2"]) == 300


async def test_worker_process_killed_forwarding_goes_on(store: Store, vm: VictoriaMetrics,
                                                        caplog: pytest.LogCaptureFixture
                                                        ) -> None:
    """The worker process dies mid-backlog: the forwarder converts in its thread and
    every row still arrives once."""
    n = 20_000  # per meter: 400 batches, seconds of work
    store.write_readings(readings(0, n))
    fwd = forwarder(store, vm, batch=100, process_backlog=1)
    task = asyncio.create_task(fwd.run())
    try:
        await until(lambda: fwd.stats.worker_batches >= 3)
        (pid,) = worker_processes(os.getpid())
        os.kill(pid, signal.SIGKILL)
        await until(lambda: caught_up(store), timeout=30)
    finally:
        fwd.stop()
        await task
    assert "worker process failed" in caplog.text
    assert fwd.stats.worker_batches < 2 * n // 100  # the rest was converted in-thread
    got = samples(vm, '{__name__="reading_value"}')
    expected = [to_ms(T0) + 1000 * i for i in range(n)]
    assert got["M1"] == expected and got["M2"] == expected
    assert worker_processes(os.getpid()) == []  # gone, not restarted within the minute


SCRIPT = textwrap.dedent("""
    import asyncio, sys
    from collector.forward.forwarder import Forwarder
    from collector.store import Store

    store = Store(sys.argv[1])
    fwd = Forwarder(store, sys.argv[2], org="amic", bucket="amic", batch=int(sys.argv[3]),
                    idle_interval=0.05, process_backlog=int(sys.argv[4]))
    async def main():
        task = asyncio.create_task(fwd.run())
        while store.cursor("timeseries", "readings") < store.last_id("readings"):
            await asyncio.sleep(0.02)
        fwd.stop()
        await task
        print("done", fwd.stats.points_sent, flush=True)
    asyncio.run(main())
""")


def test_kill_9_mid_way_exactly_once(tmp_path: Path, store: Store,
                                     vm: VictoriaMetrics) -> None:
    n = 20_000  # per meter
    store.write_readings(readings(0, n))
    last = store.last_id("readings")
    script = tmp_path / "fwd.py"
    script.write_text(SCRIPT)
    env = {**os.environ, "AMIC_TSDB_TOKEN": TOKEN,
           "PYTHONPATH": str(Path(__file__).parent.parent)}
    # the backlog is converted by the worker process
    argv = [sys.executable, str(script), str(store.path), vm.url, "500", "1000"]
    proc = subprocess.Popen(argv, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        deadline = time.monotonic() + 20
        while store.cursor("timeseries", "readings") < last // 4:
            assert proc.poll() is None, proc.stderr.read() if proc.stderr else ""
            assert time.monotonic() < deadline
            time.sleep(0.005)
        workers = worker_processes(proc.pid)
        proc.send_signal(signal.SIGKILL)
    finally:
        proc.wait(timeout=10)
    killed_at = store.cursor("timeseries", "readings")
    assert 0 < killed_at < last
    assert len(workers) == 1
    assert gone(workers[0]), "the worker process outlived the forwarder"
    out = subprocess.run(argv, env=env, capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    assert TOKEN not in out.stdout + out.stderr
    assert store.cursor("timeseries", "readings") == last
    got = samples(vm, '{__name__="reading_value"}')
    expected = [to_ms(T0) + 1000 * i for i in range(n)]
    assert got["M1"] == expected and got["M2"] == expected

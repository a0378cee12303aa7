"""Audit re-reads against the simulator over TCP: sample, compare, events, planner."""

from __future__ import annotations

import dataclasses
import datetime as dt
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest

from collector.config.profiles import load_profile
from collector.config.settings import MeterSettings
from collector.daily.audit_reads import (
    DEFAULT_QUANTITY,
    AuditPlanner,
    AuditSettings,
    AuditStatus,
    audit_meter,
    audit_sample,
    choose_sample,
    dlt645_has_quantity,
    profile_has_quantity,
    sample_size,
)
from collector.polling.scheduler import BusWorker, Lane, read_meter
from collector.store import Store
from collector.store.records import UTC, Event, Quality, Reading
from drivers.tcp import TcpBus
from simulators.bus import BusServer, parse_faults
from simulators.dlt645 import make_meters

CST = dt.timezone(dt.timedelta(hours=8))  # the meters' local time
ADDRESSES = [f"{i:012d}" for i in range(1, 4)]
METERS = [MeterSettings(meter_id=f"m{i}", address=a, bus="b1")
          for i, a in enumerate(ADDRESSES, 1)]
# The audit's "now" (14:00 local) and the regular read earlier the same day (09:00).
NOW = dt.datetime(2024, 5, 1, 14, 0, tzinfo=CST)
MORNING = dt.datetime(2024, 5, 1, 9, 0, tzinfo=CST).astimezone(UTC)
Q = DEFAULT_QUANTITY
SETTINGS = AuditSettings(retries=0)


@pytest.fixture
def store(tmp_path: Path) -> Iterator[Store]:
    s = Store(tmp_path / "amic.db")
    try:
        yield s
    finally:
        s.close()


@pytest.fixture
async def line() -> AsyncIterator[tuple[BusServer, BusWorker]]:
    server = BusServer(make_meters(ADDRESSES, seed=5), baud=19200, td=0.005)
    async with server:
        bus = TcpBus("127.0.0.1", server.port, td=0.15, tb=0.1, guard=0.02)
        worker = BusWorker("b1", bus)
        await worker.start()
        try:
            yield server, worker
        finally:
            await worker.stop()


async def regular_read(worker: BusWorker, store: Store, meter: MeterSettings,
                       ts: dt.datetime = MORNING) -> Reading:
    """What the regular schedule stored: a real read of the frozen value."""
    got = await worker.submit(Lane.SCHEDULED, lambda w: read_meter(w, meter, (Q,)))
    records = [dataclasses.replace(r, ts=ts) for r in got]
    store.write_readings(records)
    (r,) = [r for r in records if r.quantity == Q]
    return r


def _num(x: float) -> str:
    return f"{x:.2f}".rstrip("0").rstrip(".")


def stored(store: Store, meter: str, value: float, ts: dt.datetime,
           quality: Quality = Quality.GOOD) -> None:
    store.write_readings([Reading(meter, Q, value, "kWh", ts.astimezone(UTC), None, quality)])


# ---- audit_meter -----------------------------------------------------------------------------

async def test_reread_matching_the_stored_value_is_ok(
        line: tuple[BusServer, BusWorker], store: Store) -> None:
    server, worker = line
    first = await regular_read(worker, store, METERS[0])
    assert first.value > 0
    before = server.stats.requests
    result = await audit_meter(worker, METERS[0], store, SETTINGS, NOW)
    assert result.status is AuditStatus.OK and result.ok
    assert result.meter == "m1" and result.quantity == Q
    assert result.stored == first.value == result.reread
    assert result.difference == 0
    assert result.stored_ts == MORNING and result.reread_ts == NOW.astimezone(UTC)
    assert result.event is None
    assert result.reading is not None and result.reading.value == first.value
    assert server.stats.requests - before == 1  # one re-read on the line


async def test_tampered_store_is_a_mismatch_with_the_difference(
        line: tuple[BusServer, BusWorker], store: Store) -> None:
    _, worker = line
    first = await regular_read(worker, store, METERS[1])
    # A later row of the same day claims another value: the latest one is compared.
    later = dt.datetime(2024, 5, 1, 11, 30, tzinfo=CST)
    stored(store, "m2", first.value + 0.5, later)
    result = await audit_meter(worker, METERS[1], store, SETTINGS, NOW)
    assert result.status is AuditStatus.MISMATCH
    assert result.stored == pytest.approx(first.value + 0.5)
    assert result.reread == first.value
    assert result.difference == pytest.approx(-0.5)
    e = result.event
    assert e is not None
    assert (e.kind, e.meter, e.bus, e.severity) == ("audit_mismatch", "m2", "b1", 2)
    assert e.value == pytest.approx(-0.5)
    assert e.ts == NOW.astimezone(UTC)
    assert f"stored {_num(first.value + 0.5)} kWh" in e.detail
    assert f"re-read {_num(first.value)} kWh" in e.detail
    assert "difference -0.5 kWh" in e.detail
    assert "11:30:00+08:00" in e.detail and "14:00:00+08:00" in e.detail


async def test_changed_meter_register_is_a_mismatch(
        line: tuple[BusServer, BusWorker], store: Store) -> None:
    server, worker = line
    first = await regular_read(worker, store, METERS[2])
    # A meter clear (1A) zeroes every register, the frozen ones included.
    server.meter(ADDRESSES[2]).model.clear_energy()
    result = await audit_meter(worker, METERS[2], store, SETTINGS, NOW)
    assert result.status is AuditStatus.MISMATCH
    assert result.reread == 0 and result.stored == first.value
    assert result.difference == pytest.approx(-first.value)
    e = result.event
    assert e is not None and e.kind == "audit_mismatch"
    assert e.value == pytest.approx(-first.value)
    assert f"difference -{_num(first.value)} kWh" in e.detail


async def test_difference_within_tolerance_is_ok(
        line: tuple[BusServer, BusWorker], store: Store) -> None:
    _, worker = line
    first = await regular_read(worker, store, METERS[0])
    stored(store, "m1", round(first.value - 0.01, 2), MORNING + dt.timedelta(minutes=1))
    result = await audit_meter(worker, METERS[0], store, SETTINGS, NOW)
    assert result.status is AuditStatus.OK  # 0.01 kWh, not beyond the tolerance
    assert result.difference == pytest.approx(0.01)
    strict = dataclasses.replace(SETTINGS, tolerance_kwh=0.0)
    assert (await audit_meter(worker, METERS[0], store, strict, NOW)).status \
        is AuditStatus.MISMATCH


async def test_nothing_stored_today_is_no_reference_and_not_read(
        line: tuple[BusServer, BusWorker], store: Store) -> None:
    server, worker = line
    yesterday = dt.datetime(2024, 4, 30, 23, 59, tzinfo=CST)
    stored(store, "m1", 100.0, yesterday)  # another day's freeze
    stored(store, "m1", 101.0, NOW + dt.timedelta(minutes=5))  # after the audit time
    stored(store, "m1", 102.0, MORNING, Quality.ESTIMATED)  # not read from the meter
    before = server.stats.requests
    result = await audit_meter(worker, METERS[0], store, SETTINGS, NOW)
    assert result.status is AuditStatus.NO_REFERENCE
    assert result.event is None and result.stored is None and result.reread is None
    assert server.stats.requests == before


async def test_day_follows_the_zone_of_now(
        line: tuple[BusServer, BusWorker], store: Store) -> None:
    _, worker = line
    # 2024-05-01 01:00 local is 2024-04-30 17:00 UTC: still "today" in local time.
    first = await regular_read(worker, store, METERS[0],
                               dt.datetime(2024, 5, 1, 1, 0, tzinfo=CST).astimezone(UTC))
    result = await audit_meter(worker, METERS[0], store, SETTINGS, NOW)
    assert result.status is AuditStatus.OK and result.stored == first.value
    # The same instant seen from UTC: that read was yesterday.
    result = await audit_meter(worker, METERS[0], store, SETTINGS, NOW.astimezone(UTC)
                               .replace(hour=0) + dt.timedelta(minutes=30))
    assert result.status is AuditStatus.NO_REFERENCE


async def test_unreadable_meter_is_a_failed_event(
        line: tuple[BusServer, BusWorker], store: Store) -> None:
    server, worker = line
    first = await regular_read(worker, store, METERS[1])
    server.faults = parse_faults(f"dead:{ADDRESSES[1]}")
    result = await audit_meter(worker, METERS[1], store, SETTINGS, NOW)
    assert result.status is AuditStatus.FAILED
    assert result.stored == first.value and result.reread is None
    e = result.event
    assert e is not None
    assert (e.kind, e.meter, e.severity) == ("audit_failed", "m2", 1)
    assert "could not be re-read" in e.detail and _num(first.value) in e.detail


async def test_audit_sample_runs_each_bus_and_hands_over_events(
        line: tuple[BusServer, BusWorker], store: Store) -> None:
    _, worker = line
    for m in METERS:
        await regular_read(worker, store, m)
    stored(store, "m3", 1.0, MORNING + dt.timedelta(hours=1))
    orphan = MeterSettings(meter_id="m9", address="000000000009", bus="nowhere")
    events: list[Event] = []
    results = await audit_sample({"b1": worker}, [*METERS, orphan], store, SETTINGS, NOW,
                                 event=events.append)
    assert [(r.meter, r.status) for r in results] == [
        ("m1", AuditStatus.OK), ("m2", AuditStatus.OK), ("m3", AuditStatus.MISMATCH),
        ("m9", AuditStatus.FAILED)]
    # Buses run side by side: events come as each bus gets there.
    assert sorted((e.kind, e.meter) for e in events) == [("audit_failed", "m9"),
                                                         ("audit_mismatch", "m3")]


# ---- the sample ------------------------------------------------------------------------------

def fleet(n: int) -> list[MeterSettings]:
    return [MeterSettings(meter_id=f"x{i:04d}", address=f"{i:012d}", bus="b1")
            for i in range(n)]


def test_sample_is_deterministic_per_day_and_seed() -> None:
    meters = fleet(1000)
    day = dt.date(2024, 5, 1)
    s = AuditSettings(seed="site-secret")
    a = choose_sample(meters, day, s)
    assert len(a) == 20  # 2 % of 1000
    assert [m.meter_id for m in a] == sorted(m.meter_id for m in a)
    assert choose_sample(list(reversed(meters)), day, s) == a  # order does not matter
    assert choose_sample(meters, day + dt.timedelta(days=1), s) != a
    assert choose_sample(meters, day, AuditSettings(seed="other")) != a
    assert choose_sample(meters, day, AuditSettings()) == choose_sample(meters, day,
                                                                       AuditSettings())


def test_sample_size_bounds() -> None:
    assert sample_size(1000, AuditSettings()) == 20
    assert sample_size(10, AuditSettings()) == 1  # ceil(0.2), and min_sample 1
    assert sample_size(50, AuditSettings()) == 1  # exactly 1.0, not 2
    assert sample_size(100_000, AuditSettings()) == 200  # max_sample
    assert sample_size(3, AuditSettings(min_sample=5)) == 3  # no more than there are
    assert sample_size(0, AuditSettings()) == 0
    assert sample_size(100, AuditSettings(sample_fraction=0.5, max_sample=7)) == 7
    assert sample_size(100, AuditSettings(sample_fraction=0.0, min_sample=0)) == 0
    assert len(choose_sample(fleet(10), dt.date(2024, 5, 1),
                             AuditSettings(sample_fraction=1.0))) == 10
    assert choose_sample([], dt.date(2024, 5, 1), AuditSettings()) == []


def test_modbus_meters_only_with_the_quantity() -> None:
    dlt = fleet(4)
    old = [MeterSettings(meter_id="old", address="000000000099", bus="b1",
                         protocol="dlt645-1997")]
    mb = [MeterSettings(meter_id=f"mb{i}", address=str(i), bus="b2", protocol="modbus",
                        profile="generic-energy-meter") for i in range(1, 5)]
    day = dt.date(2024, 5, 1)
    everyone = AuditSettings(sample_fraction=1.0)
    ids = {m.meter_id for m in choose_sample(dlt + old + mb, day, everyone)}
    assert ids == {m.meter_id for m in dlt}  # DL/T645-2007 only: 1997 has no daily freeze
    assert not dlt645_has_quantity(mb[0], Q)
    picked = choose_sample(dlt + mb, day, everyone,
                           has_quantity=lambda m, q: m.protocol == "modbus")
    assert {m.meter_id for m in picked} == {m.meter_id for m in mb}
    # By profile: the generic profile has no daily freeze, but the forward energy.
    has = profile_has_quantity(load_profile)
    assert not has(mb[0], Q)
    assert has(mb[0], "energy_active_forward_total")
    assert has(dlt[0], Q)
    broken = dataclasses.replace(mb[0], profile="no-such-profile")
    assert not has(broken, "energy_active_forward_total")


def test_settings_are_checked() -> None:
    for bad in ({"sample_fraction": 1.5}, {"min_sample": 5, "max_sample": 2},
                {"tolerance_kwh": -0.1}, {"retries": -1}, {"quantity": ""}):
        with pytest.raises(ValueError):
            AuditSettings(**bad)


# ---- the planner -----------------------------------------------------------------------------

def test_planner_runs_once_a_day_inside_the_window() -> None:
    p = AuditPlanner(10, 16, tz=CST, seed=1)
    day = dt.date(2024, 5, 1)
    at = p.run_at(day)
    start, end = p.window(day)
    assert start <= at < end and at.tzinfo is CST and at.microsecond == 0
    assert p.run_at(day) == at  # drawn once
    assert not p.due(start - dt.timedelta(minutes=1))
    assert not p.due(at - dt.timedelta(seconds=1))
    assert p.next_run(at - dt.timedelta(hours=1)) == at
    assert p.due(at) and p.due(at + dt.timedelta(seconds=30))
    assert p.next_run(at) == at
    assert p.due(at.astimezone(UTC))  # any zone: the same instant
    assert p.due(at.replace(tzinfo=None))  # naive: the planner's zone
    assert not p.due(end)  # the window closed: not after hours
    p.mark_done(day)
    assert not p.due(at + dt.timedelta(minutes=1))  # once per day
    tomorrow = p.next_run(at)
    assert tomorrow.date() == day + dt.timedelta(days=1)
    assert p.due(tomorrow) and not p.due(tomorrow - dt.timedelta(seconds=1))
    # Another day, another time; the same seed, the same times.
    times = {p.run_at(day + dt.timedelta(days=i)).time() for i in range(10)}
    assert len(times) > 5
    assert AuditPlanner(10, 16, tz=CST, seed=1).run_at(day) == at


def test_planner_state_survives_a_restart() -> None:
    p = AuditPlanner(9.5, 17, tz=CST)  # no seed: the time is drawn at random
    day = dt.date(2024, 5, 1)
    at = p.run_at(day)
    p.mark_done(day - dt.timedelta(days=1))
    state = p.dump()
    q = AuditPlanner(9.5, 17, tz=CST)
    q.load(state)
    assert q.run_at(day) == at and q.last_done == day - dt.timedelta(days=1)
    assert q.due(at)
    q.mark_done(day)
    r = AuditPlanner(9.5, 17, tz=CST)
    r.load(q.dump())
    assert not r.due(at)
    # A changed window draws again rather than run outside it.
    s = AuditPlanner(6, 7, tz=CST)
    s.load(state)
    assert s.window(day)[0] <= s.run_at(day) < s.window(day)[1]
    with pytest.raises(ValueError):
        q.load({"version": 2})
    with pytest.raises(ValueError):
        q.load({"version": 1, "planned": {"2024-05-01": "not a time"}})
    with pytest.raises(ValueError):
        AuditPlanner(16, 10)

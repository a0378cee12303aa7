"""Daily-freeze history: catalogue DIs 0506xxNN, the simulated meter's 62 freezes, and
collector.daily.backfill against the simulator over TCP."""

from __future__ import annotations

import datetime as dt
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from decimal import Decimal
from pathlib import Path
from zoneinfo import ZoneInfo

import pytest

from collector.config.settings import MeterSettings
from collector.daily.backfill import BackfillResult, backfill_meter, missing_days, wanted_days
from collector.polling.scheduler import BusWorker
from collector.store import Store
from collector.store.records import UTC, Quality, Reading
from drivers.tcp import TcpBus
from protocols.dlt645 import (
    DAILY_FREEZES,
    AbnormalReply,
    Format,
    ReadReply,
    ReadRequest,
    UnknownDataItem,
    build_frame,
    by_di,
    by_name,
    decode_message,
    decode_value,
    encode_value,
    freeze_di,
    lookup,
    parse_frame,
)
from simulators.bus import BusServer
from simulators.dlt645 import SimulatedMeter, make_meters
from simulators.meter import DEFAULT_LOAD_CURVE, ManualClock, MeterConfig, MeterModel

ADDR = "000000000001"
SHANGHAI = ZoneInfo("Asia/Shanghai")
LOCAL_START = dt.datetime(2024, 5, 10, 10, 0, 0)  # meter clock (Shanghai local time)
NOW = LOCAL_START.replace(tzinfo=SHANGHAI).astimezone(UTC)  # 02:00 UTC
TODAY = LOCAL_START.date()
FORWARD = "freeze_daily_energy_active_forward"
REVERSE = "freeze_daily_energy_active_reverse"
TOTAL = FORWARD + "_total"
TARIFFS = ("total", "t1", "t2", "t3", "t4")


def day(k: int) -> dt.date:
    """``k`` days before today."""
    return TODAY - dt.timedelta(days=k)


def utc_midnight(d: dt.date) -> dt.datetime:
    return dt.datetime.combine(d, dt.time(), tzinfo=SHANGHAI).astimezone(UTC)


# ---- protocol: 0506 xx NN -----------------------------------------------------------------

def test_freeze_dis_address_the_nth_last_freeze() -> None:
    assert freeze_di("freeze_daily_time", 1) == 0x05060001
    assert freeze_di(FORWARD, 3) == 0x05060103
    assert freeze_di(REVERSE + "_t2", 0x3E) == 0x0506023E  # a member: its block's DI
    with pytest.raises(ValueError, match="1 \\(the last\\) to 62"):
        freeze_di(FORWARD, 63)
    with pytest.raises(ValueError):
        freeze_di(FORWARD, 0)
    with pytest.raises(UnknownDataItem):
        freeze_di("energy_active_forward_total", 1)
    assert lookup(0x0506013F) is None and lookup(0x05060100) is None
    # The quantity names stay those of the last freeze.
    assert by_name("freeze_daily_time").di == 0x05060001
    assert by_name(FORWARD).di == 0x05060101 and by_name(FORWARD).freeze == 1


@pytest.mark.parametrize("n", [1, 2, 5, 9])
def test_0506010n_decodes_with_the_last_freezes_format(n: int) -> None:
    item = by_di(0x05060100 | n)
    assert (item.name, item.format, item.freeze, item.unit) == (FORWARD, Format.BLOCK, n, "kWh")
    assert item.members == by_di(0x05060101).members
    data = bytes.fromhex("78563412") + bytes.fromhex("00010000") * 4  # 12345678 = 123456.78
    value = decode_value(item, data)
    assert isinstance(value, dict)
    assert value[TOTAL] == Decimal("123456.78") and value[FORWARD + "_t4"] == Decimal("1.00")
    when = by_di(0x05060000 | n)
    assert when.name == "freeze_daily_time" and when.freeze == n
    assert decode_value(when, bytes.fromhex("0000100524")) == dt.datetime(2024, 5, 10)
    assert encode_value(when, dt.datetime(2024, 5, 10)) == bytes.fromhex("0000100524")


# ---- the simulated meter's history ----------------------------------------------------------

def model(clock: ManualClock, **config: object) -> MeterModel:
    return MeterModel(ADDR, MeterConfig(base_kw=Decimal(2), **config),  # type: ignore[arg-type]
                      seed=1, clock=clock)


def kwh(m: MeterModel, name: str, n: int) -> Decimal:
    value = m.read(name, freeze=n)
    assert isinstance(value, Decimal)
    return value


def ask(meter: SimulatedMeter, di: int) -> ReadReply | AbnormalReply:
    reply = meter.handle(parse_frame(build_frame(ReadRequest(address=ADDR, di=di).to_frame())))
    assert reply is not None
    message = decode_message(parse_frame(build_frame(reply)))
    assert isinstance(message, (ReadReply, AbnormalReply))
    return message


def test_model_keeps_62_freezes_from_its_load_curve() -> None:
    clock = ManualClock(LOCAL_START)
    m = model(clock)
    assert m.daily_freezes == DAILY_FREEZES
    day_kwh = 2 * Decimal(str(sum(DEFAULT_LOAD_CURVE)))
    previous = None
    for n in range(1, DAILY_FREEZES + 1):
        assert m.read("freeze_daily_time", freeze=n) == \
            dt.datetime.combine(day(n - 1), dt.time())
        total = kwh(m, TOTAL, n)
        parts = [kwh(m, f"{FORWARD}_t{t}", n) for t in range(1, 5)]
        assert abs(total - sum(parts, Decimal(0))) <= Decimal("0.04")  # rounding down
        if previous is not None:
            assert abs(previous - total - day_kwh) <= Decimal("0.01")  # a day of the curve
        previous = total
    assert m.read("freeze_daily_time") == m.read("freeze_daily_time", freeze=1)
    assert m.read(TOTAL) == m.read(TOTAL, freeze=1)
    # Midnight: a new freeze in front, the oldest falls off.
    oldest = m.read(TOTAL, freeze=DAILY_FREEZES - 1)
    clock.advance(14 * 3600 + 60)
    assert m.read("freeze_daily_time") == dt.datetime.combine(day(-1), dt.time())
    assert m.read(TOTAL, freeze=DAILY_FREEZES) == oldest
    assert m.daily_freezes == DAILY_FREEZES


def test_meter_answers_every_freeze_it_holds_and_no_data_beyond() -> None:
    clock = ManualClock(LOCAL_START)
    meter = SimulatedMeter(model(clock, daily_freezes=5))
    for n in range(1, 6):
        reply = ask(meter, freeze_di(FORWARD, n))
        assert isinstance(reply, ReadReply)
        value = reply.value()
        assert isinstance(value, dict) and value[TOTAL] == meter.model.read(TOTAL, freeze=n)
        when = ask(meter, freeze_di("freeze_daily_time", n))
        assert isinstance(when, ReadReply) and when.value() == \
            dt.datetime.combine(day(n - 1), dt.time())
    for di in (freeze_di(FORWARD, 6), freeze_di("freeze_daily_time", 62), 0x0506013F):
        reply = ask(meter, di)
        assert isinstance(reply, AbnormalReply) and reply.errors == ("no_requested_data",)


# ---- backfill over TCP ---------------------------------------------------------------------

METER = MeterSettings(meter_id="m1", address=ADDR, bus="b1")


@asynccontextmanager
async def one_meter(config: MeterConfig | None = None
                    ) -> AsyncIterator[tuple[BusServer, BusWorker, MeterModel]]:
    clock = ManualClock(LOCAL_START)
    meters = make_meters([ADDR], seed=3, config=config, clock=clock)
    async with BusServer(meters, baud=19200, td=0.005) as srv:
        worker = BusWorker("b1", TcpBus("127.0.0.1", srv.port, td=0.3, tb=0.2,
                                        reconnect_min=0.01))
        await worker.start()
        try:
            yield srv, worker, meters[0].model
        finally:
            await worker.stop()


@pytest.fixture
def store(tmp_path: Path) -> Iterator[Store]:
    with Store(tmp_path / "amic.db") as s:
        yield s


def stored_freeze(model: MeterModel, n: int) -> Reading:
    """Day ``n - 1`` ago as a previous backfill would have stored it."""
    return Reading("m1", TOTAL, float(kwh(model, TOTAL, n)), "kWh", NOW - dt.timedelta(hours=1),
                   utc_midnight(day(n - 1)), Quality.BACKFILLED)


async def run(worker: BusWorker, store: Store, days: int = 5) -> BackfillResult:
    return await backfill_meter(worker, METER, store, days=days, tz="Asia/Shanghai", now=NOW)


async def test_backfill_reads_only_the_missing_days_then_nothing(store: Store) -> None:
    async with one_meter(MeterConfig(daily_freezes=5)) as (srv, worker, m):
        # Days 1 and 3 (days ago) are stored; 0, 2 and 4 are missing.
        store.write_readings([stored_freeze(m, 2), stored_freeze(m, 4)])
        assert missing_days(store, "m1", 5, "Asia/Shanghai", NOW) == [day(4), day(2), day(0)]

        result = await run(worker, store)
        assert result.missing == [day(4), day(2), day(0)]
        assert result.filled == result.missing and result.complete, result.skipped
        assert result.notes == []
        # The last freeze, 3 x (time, forward, reverse), the last freeze again.
        assert result.requests == 11 == srv.stats.requests
        assert {r.quality for r in result.readings} == {Quality.BACKFILLED}
        assert {r.ts for r in result.readings} == {NOW}
        by_day: dict[dt.datetime | None, dict[str, float]] = {}
        for r in result.readings:
            by_day.setdefault(r.meter_ts, {})[r.quantity] = r.value
        assert list(by_day) == [utc_midnight(day(k)) for k in (4, 2, 0)]
        assert utc_midnight(day(0)) == dt.datetime(2024, 5, 9, 16, 0, tzinfo=UTC)
        for k in (4, 2, 0):
            values = by_day[utc_midnight(day(k))]
            assert len(values) == 11  # time + 5 forward + 5 reverse
            for direction in (FORWARD, REVERSE):
                for t in TARIFFS:
                    name = f"{direction}_{t}"
                    assert values[name] == float(kwh(m, name, k + 1)), name
            assert values["freeze_daily_time"] == utc_midnight(day(k)).timestamp()
        units = {r.quantity: r.unit for r in result.readings}
        assert units[TOTAL] == "kWh" and units["freeze_daily_time"] == ""

        store.write_readings(result.readings)
        assert missing_days(store, "m1", 5, "Asia/Shanghai", NOW) == []
        again = await run(worker, store)
        assert again.missing == again.readings == [] and again.requests == 0
        assert srv.stats.requests == 11  # nothing sent the second time


async def test_days_beyond_the_meters_history_are_skipped(store: Store) -> None:
    async with one_meter(MeterConfig(daily_freezes=5)) as (_, worker, _m):
        result = await run(worker, store, days=7)
        assert result.filled == [day(k) for k in range(4, -1, -1)]
        assert set(result.skipped) == {day(6), day(5)}
        assert "refused daily freeze 7" in result.skipped[day(6)]
        assert len(result.readings) == 5 * 11


async def test_meter_with_a_wrong_clock_is_skipped_with_a_note(store: Store) -> None:
    config = MeterConfig(clock_offset=dt.timedelta(days=-3))
    async with one_meter(config) as (srv, worker, _m):
        result = await run(worker, store, days=3)
        assert result.readings == [] and result.filled == []
        assert set(result.skipped) == {day(2), day(1), day(0)}
        assert len(result.notes) == 1 and "meter clock wrong" in result.notes[0]
        assert result.requests == 1 == srv.stats.requests  # only the last freeze time


async def test_before_todays_freeze_only_earlier_days_are_read(store: Store) -> None:
    # The meter runs 5 minutes slow: at 00:02 local it has not frozen today yet.
    config = MeterConfig(clock_offset=dt.timedelta(hours=-10, minutes=-5))
    now = utc_midnight(TODAY) + dt.timedelta(minutes=2)
    async with one_meter(config) as (_, worker, m):
        result = await backfill_meter(worker, METER, store, days=3, tz="Asia/Shanghai",
                                      now=now)
        assert result.filled == [day(2), day(1)]
        assert "not frozen yet" in result.skipped[day(0)]
        totals = {r.meter_ts: r.value for r in result.readings if r.quantity == TOTAL}
        assert totals == {utc_midnight(day(k)): float(kwh(m, TOTAL, k))
                          for k in (2, 1)}


async def test_meters_without_freeze_history_send_nothing(store: Store) -> None:
    async with one_meter() as (srv, worker, _m):
        modbus = MeterSettings(meter_id="m1", address="1", bus="b1", protocol="modbus")
        result = await backfill_meter(worker, modbus, store, days=2, now=NOW)
        assert set(result.skipped) == {day(1), day(0)} and result.notes
        assert srv.stats.requests == 0


# ---- missing_days --------------------------------------------------------------------------

def test_missing_days_places_readings_like_the_reports(store: Store) -> None:
    def reading(ts: dt.datetime, meter_ts: dt.datetime | None = None, *,
                quantity: str = TOTAL, meter: str = "m1") -> Reading:
        return Reading(meter, quantity, 1.0, "kWh", ts, meter_ts)

    def at(k: int, minutes: int) -> dt.datetime:
        return utc_midnight(day(k)) + dt.timedelta(minutes=minutes)

    store.write_readings([
        reading(at(0, 600), utc_midnight(day(3))),  # backfilled today: counts for day 3
        reading(at(1, 300)),  # a regular read of the last freeze during day 1
        reading(at(2, 3)),  # 00:03: may still be day 3's freeze, not counted for day 2
        reading(at(4, 300), quantity=FORWARD + "_t1"),  # another quantity
        reading(at(5, 300), meter="m2"),  # another meter
    ])
    assert wanted_days(6, "Asia/Shanghai", NOW) == [day(k) for k in range(5, -1, -1)]
    assert missing_days(store, "m1", 6, "Asia/Shanghai", NOW) == [day(5), day(4), day(2),
                                                                    day(0)]
    assert missing_days(store, "m2", 6, "Asia/Shanghai", NOW) == [day(k) for k in
                                                                    (4, 3, 2, 1, 0)]
    assert missing_days(store, "m1", 0, "Asia/Shanghai", NOW) == []

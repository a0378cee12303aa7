"""Prepaid rules, as a customer or an operator would state them."""

from __future__ import annotations

import datetime as dt
from collections.abc import Sequence
from decimal import Decimal as D
from zoneinfo import ZoneInfo

import pytest

from collector.commands.prepaid import (
    Action,
    PrepaidAccount,
    PrepaidEngine,
    PrepaidPolicy,
    TariffPlan,
    parse_window,
)
from collector.store.records import UTC, Quality, Reading

SHANGHAI = ZoneInfo("Asia/Shanghai")
METER = "m1"
RELAY_OPEN = 1 << 4
HOLD_POWER = 1 << 12


def local(y: int, mo: int, d: int, h: int = 0, mi: int = 0, s: int = 0) -> dt.datetime:
    """A Beijing wall-clock time, as the UTC instant the engine is given."""
    return dt.datetime(y, mo, d, h, mi, s, tzinfo=SHANGHAI).astimezone(UTC)


WED_NOON = local(2024, 5, 15, 12)  # a Wednesday, no window


def reading(quantity: str, value: float, ts: dt.datetime, meter: str = METER,
            quality: Quality = Quality.GOOD) -> Reading:
    return Reading(meter=meter, quantity=quantity, value=value, unit="", ts=ts, quality=quality)


def balance(amount: float, ts: dt.datetime, overdraft: float = 0.0,
            status: int | None = None) -> list[Reading]:
    rs = [reading("balance_amount", amount, ts), reading("overdraft_amount", overdraft, ts)]
    if status is not None:
        rs.append(reading("status_word_3", status, ts))
    return rs


def energies(ts: dt.datetime, **registers: float) -> list[Reading]:
    return [reading(f"energy_active_forward_{t}", v, ts) for t, v in registers.items()]


def policy(**kw: object) -> PrepaidPolicy:
    args: dict[str, object] = {"warn1": D(20), "warn2": D(5)}
    args.update(kw)
    return PrepaidPolicy(**args)  # type: ignore[arg-type]


def engine(pol: PrepaidPolicy | None = None, **account: object) -> PrepaidEngine:
    return PrepaidEngine(pol or policy(), [PrepaidAccount(METER, **account)])  # type: ignore[arg-type]


def events(actions: Sequence[Action]) -> list[str]:
    return [a.event for a in actions if a.kind == "event" and a.event]


def kinds(actions: Sequence[Action]) -> list[str]:
    return [a.kind if a.kind != "event" else f"event:{a.event}" for a in actions]


def trips(actions: Sequence[Action]) -> list[Action]:
    return [a for a in actions if a.kind == "trip"]


def restores(actions: Sequence[Action]) -> list[Action]:
    return [a for a in actions if a.kind == "restore"]


def exhaust(eng: PrepaidEngine, at: dt.datetime) -> list[Action]:
    """The meter reports its money gone at ``at``."""
    return eng.observe(METER, balance(0, at), at)


def trip_confirmed(eng: PrepaidEngine, at: dt.datetime) -> None:
    """Exhaust the meter at ``at`` and carry out the trip after the default grace."""
    exhaust(eng, at)
    due = at + dt.timedelta(seconds=600)
    (trip,) = trips(eng.tick(due))
    eng.relay_result(METER, trip, True, due)


# ---------------------------------------------------------------- warnings


def test_the_first_warning_fires_once_when_the_balance_falls_below_warn1() -> None:
    eng = engine()
    t = WED_NOON
    assert events(eng.observe(METER, balance(25, t), t)) == []
    first = eng.observe(METER, balance(19.5, t), t)
    assert events(first) == ["balance_warning_1"]
    assert first[0].value == D("19.5")
    for i, amount in enumerate((19, 15, 12), 1):
        later = t + dt.timedelta(minutes=15 * i)
        assert events(eng.observe(METER, balance(amount, later), later)) == []


def test_the_second_warning_fires_below_warn2_and_a_big_drop_gives_only_the_second() -> None:
    eng = engine()
    t = WED_NOON
    assert events(eng.observe(METER, balance(18, t), t)) == ["balance_warning_1"]
    assert events(eng.observe(METER, balance(4, t), t)) == ["balance_warning_2"]
    assert events(eng.observe(METER, balance(3, t), t)) == []

    other = engine()
    assert events(other.observe(METER, balance(50, t), t)) == []
    assert events(other.observe(METER, balance(4, t), t)) == ["balance_warning_2"]


def test_a_warning_re_arms_only_once_the_balance_is_back_above_threshold_plus_margin() -> None:
    eng = engine(policy(hysteresis=D(1)))
    t = WED_NOON
    assert events(eng.observe(METER, balance(19.9, t), t)) == ["balance_warning_1"]
    # jitter around the threshold, within the 1-yuan margin: silence
    for amount in (20.5, 19.8, 21.0, 19.9):
        assert events(eng.observe(METER, balance(amount, t), t)) == []
    # back above 21 (a top-up), then down again: a new crossing warns again
    assert events(eng.observe(METER, balance(30, t), t)) == []
    assert events(eng.observe(METER, balance(19, t), t)) == ["balance_warning_1"]


def test_after_the_second_warning_re_arms_the_first_is_not_repeated_while_below_warn1() -> None:
    eng = engine()
    t = WED_NOON
    eng.observe(METER, balance(18, t), t)
    eng.observe(METER, balance(4, t), t)
    assert events(eng.observe(METER, balance(10, t), t)) == []  # above warn2 + 1: re-armed
    assert events(eng.observe(METER, balance(4.5, t), t)) == ["balance_warning_2"]


# ---------------------------------------------------------------- trip and grace


def test_reaching_the_trip_line_starts_the_grace_period_and_nothing_trips_before_it_ends() -> None:
    eng = engine(policy(grace=600))
    t = WED_NOON
    first = exhaust(eng, t)
    assert events(first) == ["balance_exhausted"]
    assert trips(first) == []
    assert eng.accounts[METER].trip_due == t + dt.timedelta(seconds=600)
    assert eng.tick(t + dt.timedelta(seconds=599)) == []
    assert eng.observe(METER, balance(0, t + dt.timedelta(seconds=300)),
                       t + dt.timedelta(seconds=300)) == []  # no second "exhausted"


def test_the_trip_comes_exactly_when_the_grace_period_ends() -> None:
    eng = engine(policy(grace=600))
    t = WED_NOON
    exhaust(eng, t)
    (trip,) = trips(eng.tick(t + dt.timedelta(seconds=600)))
    assert trip.meter == METER and trip.value == D(0)
    assert eng.next_due(t + dt.timedelta(seconds=600)) is None  # waiting for the relay result


def test_a_top_up_within_the_grace_period_cancels_the_trip() -> None:
    eng = engine()
    t = WED_NOON
    exhaust(eng, t)
    later = t + dt.timedelta(seconds=300)
    eng.observe(METER, balance(50, later), later)
    assert eng.tick(t + dt.timedelta(hours=1)) == []


def test_no_second_trip_while_one_is_outstanding_and_a_failed_trip_is_retried_later() -> None:
    eng = engine(policy(retry_interval=300))
    t = WED_NOON
    exhaust(eng, t)
    due = t + dt.timedelta(seconds=600)
    (trip,) = trips(eng.tick(due))
    for minutes in (1, 10, 60):  # no result yet: never a second trip
        assert eng.tick(due + dt.timedelta(minutes=minutes)) == []
    failed_at = due + dt.timedelta(minutes=60)
    assert eng.relay_result(METER, trip, False, failed_at) == []
    assert eng.tick(failed_at + dt.timedelta(seconds=299)) == []
    assert len(trips(eng.tick(failed_at + dt.timedelta(seconds=300)))) == 1


def test_a_tripped_meter_is_not_tripped_again() -> None:
    eng = engine()
    trip_confirmed(eng, WED_NOON)
    later = WED_NOON + dt.timedelta(hours=2)
    assert eng.observe(METER, balance(0, later), later) == []
    assert eng.tick(later) == []


def test_a_meter_that_opened_its_relay_itself_is_not_tripped_again() -> None:
    eng = engine()
    t = WED_NOON
    eng.observe(METER, balance(0, t, status=RELAY_OPEN), t)
    assert trips(eng.tick(t + dt.timedelta(hours=1))) == []


def test_a_protected_customer_is_never_tripped_one_event_says_so() -> None:
    eng = engine(protected=True)
    t = WED_NOON
    exhaust(eng, t)
    at_due = eng.tick(t + dt.timedelta(seconds=600))
    assert kinds(at_due) == ["event:trip_skipped_protected"]
    for hours in (1, 5, 48):
        assert eng.tick(t + dt.timedelta(hours=hours)) == []


def test_a_meter_in_hold_power_defers_the_trip_until_hold_power_ends() -> None:
    eng = engine()
    t = WED_NOON
    eng.observe(METER, balance(0, t, status=HOLD_POWER), t)
    due = t + dt.timedelta(seconds=600)
    deferred = eng.tick(due)
    assert events(deferred) == ["trip_deferred"]
    assert "hold power" in deferred[0].reason
    assert eng.tick(due + dt.timedelta(hours=1)) == []
    released = due + dt.timedelta(hours=2)
    assert len(trips(eng.observe(METER, balance(0, released, status=0), released))) == 1


# ---------------------------------------------------------------- no-trip windows


def test_no_trip_at_night_the_trip_waits_for_six_in_the_morning() -> None:
    eng = engine(policy(no_trip_windows=["22:00-06:00"]))
    start = local(2024, 5, 15, 21, 55)
    exhaust(eng, start)
    deferred = eng.tick(local(2024, 5, 15, 22, 5))  # grace ends inside the window
    assert events(deferred) == ["trip_deferred"]
    assert "22:00-06:00" in deferred[0].reason and "2024-05-16 06:00" in deferred[0].reason
    assert eng.next_due(local(2024, 5, 15, 23)) == local(2024, 5, 16, 6)
    for h, m in ((23, 0), (2, 0), (5, 59)):
        day = 15 if h >= 22 else 16
        assert eng.tick(local(2024, 5, day, h, m)) == []  # one event, no trip
    assert len(trips(eng.tick(local(2024, 5, 16, 6, 0)))) == 1


def test_a_trip_due_before_the_window_starts_is_not_deferred() -> None:
    eng = engine(policy(no_trip_windows=["22:00-06:00"]))
    exhaust(eng, local(2024, 5, 15, 21, 40))
    assert len(trips(eng.tick(local(2024, 5, 15, 21, 50)))) == 1


def test_no_trip_on_a_holiday_the_trip_waits_for_the_next_working_midnight() -> None:
    national_day = dt.date(2024, 10, 1)  # a Tuesday
    eng = engine(policy(holidays={national_day}))
    exhaust(eng, local(2024, 10, 1, 9))
    deferred = eng.tick(local(2024, 10, 1, 9, 10))
    assert events(deferred) == ["trip_deferred"]
    assert "holiday 2024-10-01" in deferred[0].reason
    assert eng.tick(local(2024, 10, 1, 23, 59, 59)) == []
    assert len(trips(eng.tick(local(2024, 10, 2, 0, 0)))) == 1


def test_no_trip_at_weekends_a_saturday_trip_waits_for_monday() -> None:
    eng = engine(policy(no_trip_windows=["Sat-Sun"]))
    exhaust(eng, local(2024, 5, 18, 10))  # Saturday
    assert events(eng.tick(local(2024, 5, 18, 10, 10))) == ["trip_deferred"]
    assert eng.tick(local(2024, 5, 19, 18)) == []  # Sunday
    assert eng.next_due(local(2024, 5, 19, 18)) == local(2024, 5, 20, 0)
    assert len(trips(eng.tick(local(2024, 5, 20, 0, 0)))) == 1


def test_windows_chain_a_friday_night_window_and_the_weekend_hold_until_monday_morning() -> None:
    pol = policy(no_trip_windows=["Fri 22:00-06:00", "Sat-Sun", "Sun 22:00-06:00"])
    assert pol.no_trip_until(local(2024, 5, 17, 23)) == local(2024, 5, 20, 6)
    assert pol.no_trip_reason(local(2024, 5, 17, 21, 59)) is None  # Friday evening
    assert pol.no_trip_reason(local(2024, 5, 16, 23)) is None  # Thursday night: not listed


@pytest.mark.parametrize(("text", "inside", "outside"), [
    ("18:00-08:00", [(15, 18, 0), (16, 7, 59)], [(15, 17, 59), (16, 8, 0)]),
    ("Mon-Fri 12:00-13:30", [(15, 12, 0), (15, 13, 29)], [(15, 13, 30), (18, 12, 30)]),
    ("Fri-Mon", [(17, 0, 0), (20, 23, 59)], [(21, 0, 0), (16, 12, 0)]),
    ("Sun", [(19, 12, 0)], [(18, 12, 0)]),
])
def test_window_forms(text: str, inside: list[tuple[int, int, int]],
                      outside: list[tuple[int, int, int]]) -> None:
    w = parse_window(text)
    for d, h, m in inside:
        assert w.contains(dt.datetime(2024, 5, d, h, m)), (text, d, h, m)
    for d, h, m in outside:
        assert not w.contains(dt.datetime(2024, 5, d, h, m)), (text, d, h, m)


@pytest.mark.parametrize("text", ["25:00-06:00", "22:00", "Funday", "08:00-08:00",
                                  "Mon Tue 1:00-2:00", "22:00-6"])
def test_a_bad_window_is_refused_with_its_text(text: str) -> None:
    with pytest.raises(ValueError, match="no-trip window"):
        parse_window(text)


# ---------------------------------------------------------------- computed balances


def computed(opening: str = "100") -> PrepaidEngine:
    plan = TariffPlan(t1=D("0.6"), t2=D("0.3"))
    return engine(mode="computed", plan=plan, opening_balance=D(opening),
                  baseline={"t1": D("1000"), "t2": D("500")})


def test_a_computed_balance_charges_each_tariff_at_its_own_price() -> None:
    eng = computed()
    assert eng.balance(METER) == D("100")
    t = WED_NOON
    eng.observe(METER, energies(t, t1=1010.0, t2=520.0), t)
    assert eng.balance(METER) == D("100") - D("10") * D("0.6") - D("20") * D("0.3")  # 88.0
    eng.observe(METER, energies(t, t1=1100.5), t)  # only t1 read this time
    assert eng.balance(METER) == D("100") - D("100.5") * D("0.6") - D("20") * D("0.3")


def test_a_computed_top_up_credits_at_once_and_charges_from_there() -> None:
    eng = computed()
    t = WED_NOON
    eng.observe(METER, energies(t, t1=1100.0, t2=500.0), t)  # 60 used: 40 left
    actions = eng.topup(METER, D("50"), t, ref="pay-1")
    assert events(actions) == ["topup"] and actions[0].value == D("90")
    eng.observe(METER, energies(t, t1=1110.0, t2=510.0), t)
    assert eng.balance(METER) == D("90") - D("6") - D("3")


def test_a_register_going_backwards_is_flagged_and_never_credited() -> None:
    eng = computed()
    t = WED_NOON
    eng.observe(METER, energies(t, t1=1050.0, t2=500.0), t)
    assert eng.balance(METER) == D("70")
    replaced = eng.observe(METER, energies(t, t1=3.0, t2=500.0), t)  # new meter, t1 from 0
    assert events(replaced) == ["balance_register_backwards"]
    assert "1050" in replaced[0].reason and replaced[0].severity == 2
    assert eng.balance(METER) == D("70")  # not credited the 1047 kWh "returned"
    eng.observe(METER, energies(t, t1=13.0, t2=500.0), t)
    assert eng.balance(METER) == D("64")  # charged from the new register's 3 kWh


def test_a_first_reading_below_the_configured_baseline_is_flagged_too() -> None:
    eng = computed()
    t = WED_NOON
    assert events(eng.observe(METER, energies(t, t1=10.0, t2=500.0), t)) == [
        "balance_register_backwards"]
    assert eng.balance(METER) == D("100")


def test_a_computed_account_trips_on_energy_use_like_any_other() -> None:
    eng = computed(opening="10")
    t = WED_NOON
    assert events(eng.observe(METER, energies(t, t1=1010.0, t2=500.0), t)) == [
        "balance_warning_2"]  # 4 yuan left
    assert events(eng.observe(METER, energies(t, t1=1020.0, t2=500.0), t)) == [
        "balance_exhausted"]  # -2 yuan
    assert len(trips(eng.tick(t + dt.timedelta(seconds=600)))) == 1


def test_a_flat_plan_charges_the_total_register() -> None:
    eng = engine(mode="computed", plan=TariffPlan(flat=D("0.5283")), opening_balance=D(20))
    t = WED_NOON
    eng.observe(METER, energies(t, total=12345.67), t)  # first reading: the baseline
    eng.observe(METER, energies(t, total=12358.01), t)
    assert eng.balance(METER) == D(20) - D("12.34") * D("0.5283")  # 13.480778 exactly


# ---------------------------------------------------------------- top-ups and restore


def test_a_top_up_restores_a_meter_we_tripped_once() -> None:
    eng = engine()
    trip_confirmed(eng, WED_NOON)
    t = WED_NOON + dt.timedelta(hours=1)
    assert [a.kind for a in eng.topup(METER, D(100), t, "pay-7")] == ["event", "write_topup"]
    actions = eng.observe(METER, balance(100, t), t)  # the meter now shows the money
    assert kinds(actions) == ["event:restore_requested", "restore"]
    for minutes in (1, 2, 4):
        later = t + dt.timedelta(minutes=minutes)
        assert eng.observe(METER, balance(100, later), later) == []
        assert eng.tick(later) == []
    (restore,) = restores(actions)
    assert eng.relay_result(METER, restore, True, t + dt.timedelta(minutes=5)) == []
    assert eng.tick(t + dt.timedelta(hours=5)) == []


def test_an_unconfirmed_restore_is_retried_after_the_retry_interval_not_every_tick() -> None:
    eng = engine(policy(retry_interval=300))
    trip_confirmed(eng, WED_NOON)
    t = WED_NOON + dt.timedelta(hours=1)
    (restore,) = restores(eng.observe(METER, balance(100, t), t))
    assert eng.relay_result(METER, restore, False, t + dt.timedelta(seconds=20)) == []
    for s in (30, 120, 299):
        assert eng.tick(t + dt.timedelta(seconds=s)) == []
    assert eng.next_due(t) == t + dt.timedelta(seconds=300)
    retry = eng.tick(t + dt.timedelta(seconds=300))
    assert kinds(retry) == ["restore"]  # no second restore_requested event
    assert eng.tick(t + dt.timedelta(seconds=400)) == []


def test_a_meter_that_tripped_itself_is_restored_after_a_purchase() -> None:
    eng = engine()
    t = WED_NOON
    eng.observe(METER, balance(0, t, status=RELAY_OPEN), t)
    later = t + dt.timedelta(hours=3)  # card purchase at the meter, relay still open
    actions = eng.observe(METER, balance(80, later, status=RELAY_OPEN), later)
    assert kinds(actions) == ["event:restore_requested", "restore"]


def test_a_relay_opened_with_money_left_is_not_ours_to_close() -> None:
    eng = engine()
    t = WED_NOON
    assert eng.observe(METER, balance(80, t, status=RELAY_OPEN), t) == []
    assert eng.tick(t + dt.timedelta(hours=1)) == []


def test_a_trip_confirmed_after_the_top_up_arrived_is_restored_at_once() -> None:
    eng = engine()
    t = WED_NOON
    exhaust(eng, t)
    due = t + dt.timedelta(seconds=600)
    (trip,) = trips(eng.tick(due))
    eng.observe(METER, balance(50, due), due)  # paid while the trip was on its way
    assert restores(eng.tick(due)) == []  # not before the trip's outcome is known
    assert kinds(eng.relay_result(METER, trip, True, due)) == [
        "event:restore_requested", "restore"]


def test_a_payment_reference_is_credited_once() -> None:
    eng = computed()
    t = WED_NOON
    eng.topup(METER, D(10), t, "pay-1")
    assert events(eng.topup(METER, D(10), t, "pay-1")) == ["topup_duplicate"]
    assert eng.balance(METER) == D(110)


def test_a_meter_keeping_its_money_gets_the_purchase_written_and_its_balance_read_back() -> None:
    eng = engine()
    t = WED_NOON
    eng.observe(METER, balance(3, t), t)
    actions = eng.topup(METER, D("50.00"), t, "pay-9")
    (write,) = [a for a in actions if a.kind == "write_topup"]
    assert write.amount == D("50.00") and write.ref == "pay-9"
    assert eng.balance(METER) == D(3)  # until the meter says otherwise


def test_a_top_up_must_be_positive_and_the_meter_prepaid() -> None:
    eng = engine()
    with pytest.raises(ValueError, match="above 0"):
        eng.topup(METER, D(0), WED_NOON, "x")
    with pytest.raises(KeyError, match="no prepaid account"):
        eng.topup("other", D(1), WED_NOON, "x")


# ---------------------------------------------------------------- overdraft


def test_overdraft_is_allowed_down_to_the_limit_and_the_trip_line_is_minus_the_limit() -> None:
    eng = engine(policy(overdraft_limit=D(10)))
    t = WED_NOON
    assert events(eng.observe(METER, balance(0, t, overdraft=5), t)) == ["balance_warning_2"]
    assert eng.balance(METER) == D(-5)
    assert eng.tick(t + dt.timedelta(hours=1)) == []
    assert events(eng.observe(METER, balance(0, t, overdraft=10), t)) == ["balance_exhausted"]


def test_after_an_overdraft_trip_the_relay_closes_only_once_the_overdraft_is_repaid() -> None:
    eng = engine(policy(overdraft_limit=D(10)))
    t = WED_NOON
    eng.observe(METER, balance(0, t, overdraft=10), t)
    due = t + dt.timedelta(seconds=600)
    (trip,) = trips(eng.tick(due))
    eng.relay_result(METER, trip, True, due)
    later = due + dt.timedelta(hours=1)
    assert restores(eng.observe(METER, balance(0, later, overdraft=4), later)) == []
    assert len(restores(eng.observe(METER, balance(6, later), later))) == 1


# ---------------------------------------------------------------- money and inputs


def test_money_is_exact_decimal() -> None:
    eng = engine(mode="computed", plan=TariffPlan(flat=D("0.1")), opening_balance=D("0.3"),
                 baseline={"total": D("0.1")})
    t = WED_NOON
    eng.observe(METER, energies(t, total=0.2), t)  # 0.1 kWh at 0.1 yuan = 0.01 yuan
    assert eng.balance(METER) == D("0.29")
    eng.topup(METER, D("0.10"), t, "a")
    eng.topup(METER, D("0.20"), t, "b")
    assert eng.balance(METER) == D("0.59")
    meter = engine()
    meter.observe(METER, balance(19.99, t), t)  # readings arrive as floats
    assert meter.balance(METER) == D("19.99")  # not Decimal(19.99) = 19.98999999999999843...


def test_estimated_and_backfilled_readings_never_trip_anyone() -> None:
    eng = engine()
    t = WED_NOON
    for q in (Quality.ESTIMATED, Quality.BACKFILLED):
        fake = [reading("balance_amount", 0, t, quality=q)]
        assert eng.observe(METER, fake, t) == []
    assert eng.balance(METER) is None


def test_an_older_reading_does_not_overwrite_a_newer_one() -> None:
    eng = engine()
    t = WED_NOON
    eng.observe(METER, balance(50, t), t)
    eng.observe(METER, balance(0, t - dt.timedelta(hours=1)), t)
    assert eng.balance(METER) == D(50)


def test_meters_without_an_account_are_ignored() -> None:
    eng = engine()
    assert eng.observe("not-prepaid", balance(0, WED_NOON), WED_NOON) == []


def test_events_convert_to_store_records() -> None:
    eng = engine()
    (ev,) = exhaust(eng, WED_NOON)
    rec = ev.to_event(WED_NOON)
    assert (rec.kind, rec.meter, rec.severity, rec.value) == ("balance_exhausted", METER, 2, 0.0)
    with pytest.raises(ValueError):
        Action("trip", METER, "x").to_event(WED_NOON)


# ---------------------------------------------------------------- policy checks


@pytest.mark.parametrize(("kw", "message"), [
    ({"warn1": D(5), "warn2": D(5)}, "warn1"),
    ({"warn2": D(-1)}, "warn2"),
    ({"overdraft_limit": D(-1)}, "overdraft_limit"),
    ({"restore_min_balance": D(-20), "overdraft_limit": D(10)}, "trip line"),
    ({"tz": "Mars/Olympus"}, "time zone"),
    ({"no_trip_windows": "22:00-06:00"}, "list"),
    ({"grace": -1}, "grace"),
])
def test_a_bad_policy_is_refused(kw: dict[str, object], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        policy(**kw)


def test_a_computed_account_needs_a_plan_and_a_plan_needs_one_kind_of_price() -> None:
    with pytest.raises(ValueError, match="tariff plan"):
        PrepaidAccount(METER, mode="computed")
    with pytest.raises(ValueError, match="not both"):
        TariffPlan(flat=D(1), t1=D(1))
    with pytest.raises(ValueError, match="no price"):
        TariffPlan()


def test_state_survives_a_restart_money_and_usage_included() -> None:
    """A computed balance is money: a restart must neither forget a top-up nor the
    energy charged so far, nor fire the warnings again."""
    import json

    eng = computed()
    t = WED_NOON
    eng.observe(METER, energies(t, t1=1100.0, t2=500.0), t)  # 60 used: 40 left
    eng.topup(METER, D("50"), t, ref="pay-1")
    eng.observe(METER, energies(t, t1=1110.0, t2=510.0), t)
    before = eng.balance(METER)
    state = json.loads(json.dumps(eng.dump()))  # as it goes through the state file
    restarted = computed()
    assert restarted.load(state) == 1
    assert restarted.balance(METER) == before
    restarted.observe(METER, energies(t, t1=1120.0, t2=510.0), t)
    assert restarted.balance(METER) == before - D("6")  # charged from where it was
    again = restarted.topup(METER, D("50"), t, ref="pay-1")
    assert events(again) == ["topup_duplicate"]  # the reference is remembered
    with pytest.raises(ValueError, match="version 1"):
        restarted.load({"version": 9})

"""Notifications against real receivers: a webhook and an SMS gateway over HTTP, aiosmtpd
with STARTTLS.  Each channel's outage (server down, then up) ends with every message
delivered exactly once, also across a restart; quiet hours; the rate limit; the schema
upgrade; the [notify] configuration."""

from __future__ import annotations

import datetime as dt
import json
import sqlite3
from pathlib import Path
from zoneinfo import ZoneInfo

import pytest
from test_notify_receivers import HttpReceiver, SmtpReceiver

from collector.config import ConfigError, load_settings
from collector.config.settings import (
    EmailSettings,
    MeterSettings,
    NotifySettings,
    SmsSettings,
    WebhookSettings,
)
from collector.notify import Notifications, mask_phone
from collector.store import INSERT_EVENT, MIGRATIONS, SCHEMA_VERSION, Store, split_sql
from collector.store.records import to_ms

SHANGHAI = ZoneInfo("Asia/Shanghai")
NOON = dt.datetime(2026, 12, 5, 12, 0, tzinfo=SHANGHAI)
METERS = {"M1": MeterSettings("M1", "1", "line-1", phone="13812345678"),
          "M2": MeterSettings("M2", "2", "line-1", phone="13900001111"),
          "M3": MeterSettings("M3", "3", "line-1")}  # no phone: no SMS
PREPAID_KINDS = ("balance_warning_1", "balance_warning_2", "balance_exhausted", "topup",
                 "relay_tripped", "relay_restored")


class Clock:
    def __init__(self, t: dt.datetime) -> None:
        self.t = t

    def __call__(self) -> dt.datetime:
        return self.t

    def advance(self, **kw: float) -> None:
        self.t += dt.timedelta(**kw)


def put_event(store: Store, kind: str, meter: str | None, severity: int = 1,
              value: float | None = None, ts: dt.datetime = NOON) -> None:
    conn = store.thread_connection()
    conn.execute("BEGIN IMMEDIATE")
    conn.execute(INSERT_EVENT, (to_ms(ts), kind, meter, None, severity, value, "test"))
    conn.execute("COMMIT")


def service(store: Store, clock: Clock, **kw: object) -> Notifications:
    settings = NotifySettings(**{"max_per_hour": 0, **kw})  # type: ignore[arg-type]
    return Notifications(settings, store, lambda: METERS, clock=clock)


@pytest.fixture
def store(tmp_path: Path) -> Store:
    return Store(tmp_path / "amic.db")


def hook(url: str, **kw: object) -> WebhookSettings:
    return WebhookSettings(**{"name": "ops", "events": PREPAID_KINDS, "quiet": False,
                              "url": url, "secret": "hmac-key", "timeout": 2.0, **kw})  # type: ignore[arg-type]


def states(n: Notifications) -> dict[str, int]:
    return n.outbox.counts()


def test_webhook_outage_then_each_message_once_signed_even_across_a_restart(
        store: Store) -> None:
    rx = HttpReceiver(key="hmac-key")  # down: connection refused
    clock = Clock(NOON)
    n = service(store, clock, webhooks=(hook(rx.url),))
    for kind in ("balance_warning_1", "balance_exhausted", "topup"):
        put_event(store, kind, "M1", value=3.5)
    r = n.run_once()
    # committed before any attempt; one refused attempt, the channel left alone after it
    assert (r.made, r.retried, r.delivered) == (3, 1, 0)
    assert states(n) == {"pending": 3}
    assert "ConnectionRefusedError" in n.outbox.rows()[0]["error"]
    clock.advance(seconds=11)
    assert n.run_once().retried == 1  # still down: kept
    n.outbox.close()
    # A restart: a new service on the same store, the receiver back.
    rx.up()
    try:
        clock.advance(minutes=5)
        n2 = service(store, clock, webhooks=(hook(rx.url),))
        assert n2.run_once().delivered == 3
        assert n2.run_once().delivered == 0
        assert len(rx.requests) == 3 and len(rx.delivered) == 3  # each once
        assert all(r["signed_ok"] for r in rx.requests)
        bodies = [r["body"] for r in rx.requests]
        assert [b["kind"] for b in bodies] == ["balance_warning_1", "balance_exhausted",
                                               "topup"]
        assert bodies[0]["event"]["value"] == 3.5 and bodies[0]["meter"] == "M1"
        assert {r["delivery"] for r in rx.requests} == {b["id"] for b in bodies}
        assert states(n2) == {"delivered": 3}
    finally:
        rx.down()


def test_a_4xx_is_refused_for_good_and_not_retried(store: Store) -> None:
    rx = HttpReceiver(key="hmac-key")
    rx.status = 400
    rx.up()
    try:
        clock = Clock(NOON)
        n = service(store, clock, webhooks=(hook(rx.url),))
        put_event(store, "topup", "M1")
        assert n.run_once().failed == 1
        clock.advance(hours=1)
        n.run_once()
        assert len(rx.requests) == 1
        assert n.outbox.rows()[0]["error"] == "HTTP 400"
    finally:
        rx.down()


def test_sms_gateway_outage_5xx_then_once_each_with_the_ledger_phone(
        store: Store, caplog: pytest.LogCaptureFixture) -> None:
    rx = HttpReceiver(token="gw-token")
    rx.status = 503
    rx.up()
    try:
        clock = Clock(NOON)
        sms = SmsSettings(name="sms", events=PREPAID_KINDS, url=rx.url, token="gw-token",
                          language="zh", templates=(("topup", "充值{value}元 电表{meter}"),))
        n = service(store, clock, sms=(sms,))
        put_event(store, "balance_warning_1", "M1", value=9.5)
        put_event(store, "topup", "M2", value=50)
        put_event(store, "balance_warning_1", "M3", value=1)  # no phone: no message
        put_event(store, "meter_dead", "M1")  # not a kind this channel takes
        caplog.set_level("INFO", "amic.notify")
        r = n.run_once()
        assert (r.made, r.retried) == (2, 1) and len(rx.requests) == 1
        rx.status = 200
        clock.advance(seconds=11)
        assert n.run_once().delivered == 2
        assert len(rx.delivered) == 2
        bodies = {r["body"]["phone"]: r["body"] for r in rx.delivered.values()}
        assert bodies["13812345678"]["text"] == \
            "【电费提醒】您的电表M1余额为9.50元，请及时充值。"
        assert bodies["13900001111"]["text"] == "充值50.00元 电表M2"  # the configured one
        # the phone is personal data: masked in the log
        assert "13812345678" not in caplog.text and mask_phone("13812345678") in caplog.text
        assert mask_phone("13812345678") == "1381234****"
    finally:
        rx.down()


def test_email_over_starttls_outage_then_each_once(store: Store, tmp_path: Path) -> None:
    rx = SmtpReceiver(tmp_path, "amic", "s3cret")
    clock = Clock(NOON)
    mail = EmailSettings(name="mail", events=PREPAID_KINDS, host="127.0.0.1", port=rx.port,
                         starttls=True, ca_file=rx.cert, username="amic", password="s3cret",
                         sender="amic@example.net", to=("ops@example.net",), timeout=5.0)
    n = service(store, clock, emails=(mail,))
    put_event(store, "balance_exhausted", "M1", severity=2, value=-0.5)
    put_event(store, "relay_restored", "M2", severity=0)
    assert n.run_once().retried == 1  # the SMTP server is down
    rx.up()
    try:
        clock.advance(seconds=11)
        assert n.run_once().delivered == 2
        clock.advance(hours=1)
        assert n.run_once().delivered == 0
        assert len(rx.messages) == 2 and len(set(rx.message_ids())) == 2
        text = rx.messages[0].content.decode() if isinstance(rx.messages[0].content, bytes) \
            else str(rx.messages[0].content)
        assert "Subject: [amic] balance_exhausted M1" in text
        assert rx.messages[0].rcpt_tos == ["ops@example.net"]
    finally:
        rx.down()


def test_a_wrong_smtp_password_is_kept_for_later(store: Store, tmp_path: Path) -> None:
    rx = SmtpReceiver(tmp_path, "amic", "s3cret")
    rx.up()
    try:
        mail = EmailSettings(name="mail", events=("topup",), host="127.0.0.1", port=rx.port,
                             ca_file=rx.cert, username="amic", password="wrong",
                             sender="amic@example.net", to=("ops@example.net",))
        n = service(store, Clock(NOON), emails=(mail,))
        put_event(store, "topup", "M1")
        assert n.run_once().retried == 1 and rx.messages == []
        assert "wrong" not in n.outbox.rows()[0]["error"]
    finally:
        rx.down()


def test_quiet_hours_hold_all_but_urgent_messages_until_they_end(store: Store) -> None:
    rx = HttpReceiver()
    rx.up()
    try:
        night = NOON.replace(hour=23)
        clock = Clock(night)
        n = service(store, clock, quiet_hours=(22.0, 7.0), urgent_severity=2,
                    webhooks=(hook(rx.url, quiet=True),))
        put_event(store, "balance_warning_1", "M1", severity=1)
        put_event(store, "balance_exhausted", "M1", severity=2)  # urgent: goes out now
        r = n.run_once()
        assert (r.delivered, r.held) == (1, 1)
        held = n.outbox.rows()[0]
        assert held["not_before"] == to_ms((night + dt.timedelta(days=1)).replace(hour=7))
        clock.t = (night + dt.timedelta(days=1)).replace(hour=6, minute=59)
        assert n.run_once().delivered == 0
        clock.advance(minutes=1)
        assert n.run_once().delivered == 1
        assert [r["body"]["kind"] for r in rx.requests] == ["balance_exhausted",
                                                            "balance_warning_1"]
    finally:
        rx.down()


def test_rate_limit_per_meter_and_hour(store: Store) -> None:
    rx = HttpReceiver()
    rx.up()
    try:
        clock = Clock(NOON)
        n = service(store, clock, max_per_hour=2, webhooks=(hook(rx.url, rate_limited=True),))
        for _ in range(4):
            put_event(store, "balance_warning_1", "M1")
        put_event(store, "balance_warning_1", "M2")
        r = n.run_once()
        assert (r.delivered, r.held) == (3, 2)
        assert sorted(b["body"]["meter"] for b in rx.requests) == ["M1", "M1", "M2"]
        clock.advance(minutes=59)
        assert n.run_once().delivered == 0
        clock.advance(minutes=1, seconds=1)
        assert n.run_once().delivered == 2
        assert len(rx.delivered) == 5
    finally:
        rx.down()


def test_confirmed_relay_switchings_become_messages(store: Store) -> None:
    clock = Clock(NOON)
    n = service(store, clock, webhooks=(hook("http://127.0.0.1:9/x"),))
    conn = store.thread_connection()
    conn.execute("BEGIN IMMEDIATE")
    for i, (kind, status) in enumerate((("trip", "sent"), ("trip", "confirmed"),
                                        ("restore", "failed"), ("restore", "confirmed"))):
        conn.execute("INSERT OR REPLACE INTO commands (command_id, meter, kind, ts, status, "
                     "detail, updated) VALUES (?, 'M1', ?, 0, ?, ?, ?)",
                     (f"c{i // 2}", kind, status, json.dumps({"reason": "prepaid"}),
                      to_ms(NOON) + i))
    conn.execute("COMMIT")
    assert n.outbox.pump(n.route) == 2
    rows = n.outbox.rows()
    assert [(r["kind"], r["severity"]) for r in rows] == [("relay_tripped", 2),
                                                           ("relay_restored", 0)]
    assert json.loads(rows[0]["payload"])["detail"] == "prepaid"
    assert n.outbox.pump(n.route) == 0  # each row once


def test_upgrade_from_version_6_adds_the_outbox_and_notifies_from_then_on(
        tmp_path: Path) -> None:
    path = tmp_path / "amic.db"
    conn = sqlite3.connect(path)
    for script in MIGRATIONS[:6]:
        for statement in split_sql(script):
            conn.execute(statement)
    conn.execute(INSERT_EVENT, (0, "balance_exhausted", "M1", None, 2, None, "old"))
    conn.execute("PRAGMA user_version = 6")
    conn.commit()
    conn.close()
    with Store(path) as s:
        assert s.schema_version == SCHEMA_VERSION == 7
        n = service(s, Clock(NOON), webhooks=(hook("http://127.0.0.1:9/x"),))
        assert n.outbox.pump(n.route) == 0  # history is not notified
        put_event(s, "balance_exhausted", "M1", severity=2)
        put_event(s, "topup", "M1", ts=NOON - dt.timedelta(days=2))  # stale: not sent
        assert n.outbox.pump(n.route) == 1
        assert [r["kind"] for r in n.outbox.rows()] == ["balance_exhausted"]


# ---- the configuration --------------------------------------------------------------------

BASE = """\
[collector]
id = "gw-1"
data_dir = "data"

[[bus]]
name = "line-1"
type = "serial"
device = "/dev/ttyS1"

[[meter]]
meter_id = "M1"
address = "1"
bus = "line-1"
phone = "13812345678"

[schedule.fast]
interval = "15m"
quantities = ["energy"]

[notify]
quiet_hours = "22:00-07:00"
max_per_hour = 5

[[notify_webhook]]
name = "ops"
url = "http://127.0.0.1:8080/hook"
secret_file = "hook.key"
events = ["balance_exhausted", "relay_tripped"]
min_severity = 2
quiet = false

[[notify_sms]]
name = "sms"
url = "http://127.0.0.1:8081/send"
token_file = "sms.token"
language = "en"
templates = { topup = "Paid {value} for {meter}" }
events = ["topup"]
"""


def _write(tmp_path: Path, text: str, mode: int = 0o600) -> Path:
    for name, secret in (("hook.key", "k-123"), ("sms.token", "t-456")):
        (tmp_path / name).write_text(secret + "\n")
        (tmp_path / name).chmod(mode)
    (tmp_path / "amic.toml").write_text(text)
    return tmp_path / "amic.toml"


def test_notify_config_is_read_with_secrets_from_files(tmp_path: Path) -> None:
    s = load_settings(_write(tmp_path, BASE))
    assert s.notify is not None and s.meters[0].phone == "13812345678"
    assert "13812345678" not in repr(s.meters[0])
    (w,), (sms,) = s.notify.webhooks, s.notify.sms
    assert (s.notify.quiet_hours, s.notify.max_per_hour) == ((22.0, 7.0), 5)
    assert (w.name, w.secret, w.min_severity, w.quiet) == ("ops", "k-123", 2, False)
    assert (sms.token, sms.language, sms.templates) == (
        "t-456", "en", (("topup", "Paid {value} for {meter}"),))
    assert "k-123" not in repr(s.notify) and "t-456" not in repr(s.notify)


def test_notify_config_refusals_name_file_line_key(tmp_path: Path,
                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    _write(tmp_path, BASE, mode=0o644)
    with pytest.raises(ConfigError) as info:
        load_settings(Path("amic.toml"))
    texts = [str(p) for p in info.value.problems]
    assert texts[0].startswith('amic.toml:27: [[notify_webhook]] #1: key "secret_file": '
                               "expected a file only its owner can access"), texts
    assert "mode 0644" in texts[0] and len(texts) == 2  # and the SMS token's file
    bad = BASE.replace('secret_file = "hook.key"', 'secret = "k-123"').replace(
        '{value} for', '{amount} for').replace('quiet_hours = "22:00-07:00"',
                                              'quiet_hours = "22:00"')
    _write(tmp_path, bad)
    with pytest.raises(ConfigError) as info:
        load_settings(Path("amic.toml"))
    texts = [str(p) for p in info.value.problems]
    assert texts[0].startswith('amic.toml:21: [notify]: key "quiet_hours": expected local '
                               'hours such as "22:00-07:00"'), texts
    assert texts[1].startswith('amic.toml:27: [[notify_webhook]] #1 (name "ops"): key '
                               '"secret": expected one of the keys'), texts
    assert "never in the file" in texts[1]
    assert texts[2].startswith('amic.toml:37: [[notify_sms]] #1 (name "sms"): key '
                               '"templates": expected a text with'), texts
    assert "{amount}" in texts[2] and len(texts) == 3
    assert all("k-123" not in t for t in texts)


def test_a_bad_phone_is_refused_without_showing_it(tmp_path: Path,
                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    for bad, found in (('phone = "13812345678x"', '"13812345****"'),
                       ("phone = 13812345678", "a number (not shown)")):
        _write(tmp_path, BASE.replace('phone = "13812345678"', bad))
        with pytest.raises(ConfigError) as info:
            load_settings(Path("amic.toml"))
        (p,) = info.value.problems
        assert str(p).startswith(f'amic.toml:14: [[meter]] #1 (meter_id "M1"): key "phone": '
                                 f'expected a phone number of digits (an optional leading '
                                 f'"+"), got {found}'), str(p)
        assert "5678" not in str(p)

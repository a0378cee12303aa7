"""End to end: the daemon, simulated DL/T645 meters, a prepaid meter without credit.  Its
balance_exhausted and its confirmed trip reach an SMTP server (aiosmtpd, STARTTLS, login)
and a webhook (signed); a top-up and the restore follow on the webhook.  Messages
undelivered at a stop go out after the restart, once."""

from __future__ import annotations

import asyncio
from decimal import Decimal
from pathlib import Path

from conftest import until
from test_notify_receivers import HttpReceiver, SmtpReceiver

from collector.config import load_settings
from collector.service.daemon import Daemon
from collector.service.notify import Notifier
from simulators.bus import BusServer
from simulators.dlt645 import make_meters

SECRETS = """
[default]
password = "02000000"

[operators.prepaid]
operator_code = "00000099"

[operators.alice]
operator_code = "0000A11C"
"""

CONFIG = """
[collector]
id = "notify-gw"
data_dir = "data"
commit_interval = "100ms"

[commands]
secrets_file = "secrets.toml"
min_interval = "100ms"
verify_timeout = "3s"
poll_interval = "100ms"

[[bus]]
name = "conc-1"
type = "tcp"
host = "127.0.0.1"
port = {port}
td_ms = 300

[[meter]]
meter_id = "M1"
address = "000000000001"
bus = "conc-1"
prepaid = true
phone = "13812345678"

[[meter]]
meter_id = "M2"
address = "000000000002"
bus = "conc-1"

[schedule.poll]
interval = "1s"
quantities = ["energy_active_forward_total", "status"]

[prepaid]
warn1 = 20
warn2 = 5
grace = "0s"
computed = ["M1"]
price = 0.5
opening_balance = -1

[notify]
retry_min = "200ms"
retry_max = "1s"
interval = "200ms"

[[notify_webhook]]
name = "ops"
url = "{hook}"
secret_file = "hook.key"
events = ["balance_exhausted", "relay_tripped", "relay_restored", "topup"]
quiet = false
rate_limited = false

[[notify_email]]
name = "mail"
host = "127.0.0.1"
port = {smtp}
ca_file = "smtp.pem"
username = "amic"
password_file = "smtp.pass"
from = "amic@example.net"
to = ["ops@example.net"]
events = ["balance_exhausted", "relay_tripped"]
"""


def write(tmp: Path, name: str, text: str) -> None:
    (tmp / name).write_text(text)
    (tmp / name).chmod(0o600)


def kinds(rx: HttpReceiver) -> list[str]:
    return sorted(r["body"]["kind"] for r in rx.delivered.values())


async def test_a_prepaid_trip_mails_and_calls_the_webhook_once(tmp_path: Path) -> None:
    meters = make_meters(["000000000001", "000000000002"])
    model = meters[0].model
    hook = HttpReceiver(key="hook-key-1")
    smtp = SmtpReceiver(tmp_path, "amic", "mail-pass")
    (tmp_path / "smtp.pem").write_bytes(smtp.cert.read_bytes())
    write(tmp_path, "secrets.toml", SECRETS)
    write(tmp_path, "hook.key", "hook-key-1\n")
    write(tmp_path, "smtp.pass", "mail-pass\n")
    server = BusServer(meters, baud=19200, td=0.005)
    async with server:
        cfg = tmp_path / "amic.toml"
        cfg.write_text(CONFIG.format(port=server.port, hook=hook.url, smtp=smtp.port))
        hook.up()
        smtp.up()
        daemon = Daemon(load_settings(cfg), notifier=Notifier.from_env({}), align=False)
        run = asyncio.create_task(daemon.run())
        try:
            await until(lambda: model.relay_open, 20)
            await until(lambda: kinds(hook) == ["balance_exhausted", "relay_tripped"], 20,
                        what=lambda: kinds(hook))
            await until(lambda: len(smtp.messages) == 2, 20)
            assert all(r["signed_ok"] for r in hook.requests)
            tripped = next(r["body"] for r in hook.requests
                           if r["body"]["kind"] == "relay_tripped")
            assert tripped["meter"] == "M1" and tripped["severity"] == 2
            subjects = sorted(str(m.content).split("Subject: ")[1].split("\\r\\n")[0]
                              for m in smtp.messages)
            assert subjects == ["[amic] balance_exhausted M1", "[amic] relay_tripped M1"]
            # The webhook goes down; the top-up and the restore wait in the outbox.
            hook.down()
            assert daemon.control is not None
            await daemon.control.topup("M1", Decimal(50), "receipt 1", "alice", "req-1")
            await until(lambda: not model.relay_open, 20)
            assert daemon.notifications is not None
            await until(lambda: daemon.notifications is not None and
                        daemon.notifications.outbox.counts().get("pending", 0) >= 2, 20)
        finally:
            daemon.stop_requested.set()
            assert await asyncio.wait_for(run, 15) == 0
        # After a restart with the webhook back: each sent once.
        hook.up()
        daemon = Daemon(load_settings(cfg), notifier=Notifier.from_env({}), align=False)
        run = asyncio.create_task(daemon.run())
        try:
            want = ["balance_exhausted", "relay_restored", "relay_tripped", "topup"]
            await until(lambda: kinds(hook) == want, 20, what=lambda: kinds(hook))
            await asyncio.sleep(1.0)  # more rounds: nothing sent twice
            assert len(hook.requests) - sum(1 for r in hook.requests
                                            if r["answered"] >= 300) == 4
            assert len({r["delivery"] for r in hook.requests}) == 4
            assert len(smtp.messages) == 2
        finally:
            daemon.stop_requested.set()
            assert await asyncio.wait_for(run, 15) == 0
            hook.down()
            smtp.down()


RELOAD = """
[collector]
id = "notify-gw"
data_dir = "data"
commit_interval = "100ms"

[[bus]]
name = "conc-1"
type = "tcp"
host = "127.0.0.1"
port = {port}
td_ms = 200

[[meter]]
meter_id = "M1"
address = "000000000001"
bus = "conc-1"

{m9}
[schedule.poll]
interval = "1s"
quantities = ["voltage_a"]
retries = 0

[alarms]
comm_loss_after = 1

[notify]
interval = "200ms"

[[notify_webhook]]
name = "ops"
url = "{hook}"
events = ["{kind}"]
quiet = false
"""


async def test_a_reload_applies_new_notify_rules_and_urls(tmp_path: Path) -> None:
    # M9, added by the reload, does not answer: meter_dead, after the reload only
    meters = make_meters(["000000000001"])
    m9 = '[[meter]]\nmeter_id = "M9"\naddress = "000000000009"\nbus = "conc-1"\n'
    old, new = HttpReceiver(), HttpReceiver()
    old.up()
    new.up()
    server = BusServer(meters, baud=19200, td=0.005)
    try:
        async with server:
            cfg = tmp_path / "amic.toml"
            cfg.write_text(RELOAD.format(port=server.port, hook=old.url, kind="meter_dead",
                                         m9=""))
            daemon = Daemon(load_settings(cfg), notifier=Notifier.from_env({}), align=False)
            run = asyncio.create_task(daemon.run())
            try:
                await until(lambda: daemon.notifications is not None)
                cfg.write_text(RELOAD.format(port=server.port, hook=new.url,
                                             kind="meter_dead", m9=m9))
                assert await daemon.reload()
                await until(lambda: len(new.delivered) == 1, 20)
                (got,) = new.delivered.values()
                assert (got["body"]["kind"], got["body"]["meter"]) == ("meter_dead", "M9")
                assert old.requests == []
            finally:
                daemon.stop_requested.set()
                assert await asyncio.wait_for(run, 15) == 0
    finally:
        old.down()
        new.down()

"""``amic topup`` through the broker for a meter that keeps its own balance, with
``[security] module = "soft"`` (the simulator's test keys): the purchase is written into
the simulated meter's ESAM and confirmed by its count; a repeat is not written again; a
purchase the meter loses is retried with the same count and credited once; a count that
moves without a top-up here is an event; no key material in any log or row."""

from __future__ import annotations

import asyncio
import json
import sqlite3
from decimal import Decimal
from pathlib import Path
from typing import Any

from click.testing import CliRunner
from conftest import until
from mosquitto import Broker

from collector.cli import main
from collector.config import load_settings
from collector.service.daemon import Daemon
from collector.service.notify import Notifier
from drivers.security import TEST_MASTER_KEY
from simulators.bus import BusServer
from simulators.dlt645 import make_meters
from simulators.esam import Esam

KEY_HEX = "5f3a9c0e7b214d6a8e1f0c3b5a7d9e2f"
SECRETS = f"""
[default]
password = "02000000"

[operators.alice]
operator_code = "0000A11C"
key = "hex:{KEY_HEX}"

[operators.prepaid]
operator_code = "00000099"
"""
CUSTOMER = "000012345678"
CONFIG = """
[collector]
id = "esam-gw"
data_dir = "data"
commit_interval = "100ms"

[mqtt]
url = "{url}"

[commands]
secrets_file = "secrets.toml"
verify_timeout = "3s"
poll_interval = "100ms"

[security]
module = "soft"
test_keys = true

[prepaid]
warn1 = 20
warn2 = 5
grace = "0s"
retry_interval = "1s"

[[bus]]
name = "line-1"
type = "tcp"
host = "127.0.0.1"
port = {port}
td_ms = 300

[[meter]]
meter_id = "M1"
address = "000000000001"
bus = "line-1"
area = "TQ-1"
prepaid = true
customer = "{customer}"

[schedule.poll]
interval = "1s"
quantities = ["balance_amount", "purchase_count", "status_word_3"]
"""


def rows(tmp: Path, sql: str, *args: object) -> list[tuple[Any, ...]]:
    with sqlite3.connect(tmp / "data" / "amic.db") as c:
        return c.execute(sql, args).fetchall()


def topup(broker: Broker, secrets: Path, amount: str, ref: str) -> tuple[int, dict[str, Any]]:
    r = CliRunner().invoke(main, ["topup", "M1", amount, "--ref", ref, "--operator", "alice",
                                  "--secrets", str(secrets), "--via", broker.url,
                                  "--collector", "esam-gw", "--json"])
    return r.exit_code, json.loads(r.output)


async def test_top_ups_written_into_the_meter_through_the_daemon(tmp_path: Path) -> None:
    secrets = tmp_path / "secrets.toml"
    secrets.write_text(SECRETS)
    secrets.chmod(0o600)
    (sim,) = make_meters(["000000000001"])
    sim.esam = esam = Esam(customer=CUSTOMER)
    model = sim.model
    with Broker(tmp_path / "broker") as broker:
        async with BusServer([sim], baud=19200, td=0.005) as server:
            cfg = tmp_path / "amic.toml"
            cfg.write_text(CONFIG.format(url=broker.url, port=server.port, customer=CUSTOMER))
            daemon = Daemon(load_settings(cfg), notifier=Notifier.from_env({}), align=False)
            run = asyncio.create_task(daemon.run())
            try:
                await until(lambda: daemon.control is not None and daemon.mqtt is not None
                            and daemon.mqtt.commands is not None
                            and daemon.mqtt.conn.connected, 20)  # subscribed: not lost
                count0, balance0 = model.purchase_count, float(model.remaining)
                # 1. written and confirmed: the meter's count +1, its balance +50
                code, doc = await asyncio.to_thread(topup, broker, secrets, "50", "r-1")
                assert code == 0, doc
                w = doc["written"]
                assert w["status"] == "confirmed" and w["count"] == count0 + 1, w
                assert (w["count_before"], w["count_after"]) == (count0, count0 + 1)
                assert model.purchase_count == count0 + 1
                assert float(model.remaining) > balance0 + 49
                # 2. the same receipt again: recorded once, never written twice
                code, doc = await asyncio.to_thread(topup, broker, secrets, "50", "r-1")
                assert "written" not in doc
                assert model.purchase_count == count0 + 1
                # 3. the meter loses the purchase: unconfirmed (exit 1), then retried with
                # the same count and credited once
                esam.lose_topups = 1
                before = float(model.remaining)
                code, doc = await asyncio.to_thread(topup, broker, secrets, "30", "r-2")
                assert code == 1 and doc["written"]["status"] == "unconfirmed", doc
                assert doc["written"]["count"] == count0 + 2
                await until(lambda: model.purchase_count == count0 + 2, 15)
                await asyncio.sleep(2.5)  # more retry rounds: nothing more is written
                assert model.purchase_count == count0 + 2
                assert before + 29 < float(model.remaining) < before + 31
                await daemon.writer.flush()  # type: ignore[union-attr]
                writes = rows(tmp_path, "SELECT command_id, status FROM commands WHERE kind "
                                        "= 'topup_write' ORDER BY id")
                assert writes == [("r-1/M1/write1", "confirmed"),
                                  ("r-2/M1/write1", "unconfirmed"),
                                  ("r-2/M1/write2", "confirmed")]
                detail = json.loads(rows(tmp_path, "SELECT detail FROM commands WHERE "
                                                   "command_id = 'r-2/M1/write2'")[0][0])
                assert (detail["count_before"], detail["count_after"]) == (count0 + 1,
                                                                           count0 + 2)
                kinds = [k for (k,) in rows(tmp_path, "SELECT kind FROM events WHERE meter "
                                                      "= 'M1' ORDER BY id")]
                assert kinds.count("topup_written") == 2
                assert "topup_duplicate" in kinds and "purchase_unknown" not in kinds
                # 4. a purchase written by someone else: the next polls show the count
                # moving without a top-up here
                model.purchase(Decimal(5))
                await until(lambda: rows(tmp_path, "SELECT count(*) FROM events WHERE kind "
                                                   "= 'purchase_unknown'")[0][0] == 1, 10)
                (detail,) = rows(tmp_path, "SELECT detail FROM events WHERE kind = "
                                           "'purchase_unknown'")[0]
                assert f"{count0 + 2} -> {count0 + 3}" in detail
            finally:
                daemon.stop_requested.set()
                assert await asyncio.wait_for(run, 15) == 0
    text = (tmp_path / "data" / "topup-writes.json").read_text()
    assert TEST_MASTER_KEY.hex() not in text and KEY_HEX not in text
    for (detail,) in rows(tmp_path, "SELECT detail FROM commands"):
        assert CUSTOMER not in (detail or "") and TEST_MASTER_KEY.hex() not in (detail or "")

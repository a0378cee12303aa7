"""A concentrator's own event records (AFN0E ERC 1/3/14) through ``amic run``: uploaded
by the terminal or read when its frames say it holds new ones (ACD, EC1), stored once
each as ``concentrator_ercN`` events with the terminal's own time, no meter, the
concentrator's name as bus; a restarted daemon reads the ring again but stores nothing
twice."""

from __future__ import annotations

import asyncio
import datetime as dt
from pathlib import Path
from zoneinfo import ZoneInfo

from conftest import free_port
from daemonproc import Daemon
from test_daemon_concentrator import A1, query, until

from simulators.concentrator import ConcentratorSimulator, meter_address

SHANGHAI = ZoneInfo("Asia/Shanghai")


def config(port: int) -> str:
    meters = "".join(
        f'\n[[meter]]\nmeter_id = "C1-M{pn}"\naddress = "{meter_address(1, pn)}"\n'
        f'bus = "tq-1"\npn = {pn}\n' for pn in (1, 2))
    return f"""
[collector]
id = "conc-gw"
data_dir = "data"
commit_interval = "200ms"

[[listener]]
name = "dialin"
listen = "127.0.0.1:{port}"
protocol = "3761"
request_timeout = "3s"

[[concentrator]]
name = "tq-1"
a1 = "{A1}"
a2 = 1
listener = "dialin"
{meters}
[schedule.slow]
interval = "1h"
quantities = ["energy_active_forward_total"]
"""


def events(tmp: Path) -> list[tuple[object, ...]]:
    return query(tmp, "SELECT kind, ts, meter, bus, detail FROM events "
                      "WHERE kind LIKE 'concentrator_erc%' ORDER BY id")


def ms(local: dt.datetime) -> int:
    """The stored time of a terminal's local time (the default zone, Asia/Shanghai)."""
    return int(local.replace(tzinfo=SHANGHAI).timestamp() * 1000)


async def test_reported_and_read_records_are_stored_once(tmp_path: Path) -> None:
    port = free_port()
    cfg = tmp_path / "amic.toml"
    cfg.write_text(config(port))
    daemon = Daemon(cfg, tmp_path)
    sim = ConcentratorSimulator("127.0.0.1", port, a1=A1, a2=1, meters=2, heartbeat=0.5,
                                reconnect_delay=0.3)
    off1, on1 = dt.datetime(2026, 3, 1, 10, 15), dt.datetime(2026, 3, 1, 10, 42)
    off2, on2 = dt.datetime(2026, 3, 2, 4, 0), dt.datetime(2026, 3, 2, 4, 5)
    off3, on3 = dt.datetime(2026, 3, 3, 23, 30), dt.datetime(2026, 3, 4, 0, 10)
    try:
        await asyncio.to_thread(daemon.wait_for, "READY=1", 20.0)
        sim.start()
        await asyncio.wait_for(sim.logged_in.wait(), 10)

        # uploaded by the terminal itself (AFN0E F1, PRM=1)
        sim.power_cycle(off1, on1, report=True)
        assert sim.stats.reports == 1
        await until(lambda: len(events(tmp_path)) == 1, 10, "the reported ERC14")
        kind, ts, meter, bus, detail = events(tmp_path)[0]
        assert (kind, ts, meter, bus) == ("concentrator_erc14", ms(off1), None, "tq-1")
        assert "power off at 2026-03-01 10:15, on at 2026-03-01 10:42" in str(detail)

        # only recorded: the next heartbeat carries ACD and EC1, and the master reads it
        sim.power_cycle(off2, on2)
        sim.initialise("1.00", "1.01")
        await until(lambda: len(events(tmp_path)) == 3, 10, "the records read")
        assert not sim.events_pending
        got = events(tmp_path)[1:]
        assert [(k, m, b) for k, _, m, b, _ in got] == [
            ("concentrator_erc14", None, "tq-1"), ("concentrator_erc1", None, "tq-1")]
        assert got[0][1] == ms(off2)
        assert "version 1.00 -> 1.01" in str(got[1][4])
    finally:
        await asyncio.to_thread(daemon.stop)

    # a new daemon on the same store: the terminal's login says it holds an unread record;
    # the whole ring is read, and only that one is new
    sim.power_cycle(off3, on3)
    again = Daemon(cfg, tmp_path, name="again")
    try:
        await asyncio.to_thread(again.wait_for, "READY=1", 20.0)
        await until(lambda: len(events(tmp_path)) == 4, 15, "the record held while down")
        await asyncio.sleep(1.5)  # heartbeats and a reconnect bring nothing more
        sim.drop()
        await until(lambda: sim.stats.reconnects >= 1 and sim.logged_in.is_set(), 10,
                    "the terminal back")
        await asyncio.sleep(1.0)
        rows = events(tmp_path)
        assert len(rows) == 4, rows
        assert rows[3][:4] == ("concentrator_erc14", ms(off3), None, "tq-1")
    finally:
        await sim.stop()
        code = await asyncio.to_thread(again.stop)
    assert code == 0
    for d in (daemon, again):
        assert "Traceback" not in d.log.read_text()

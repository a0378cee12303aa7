"""``amic concentrator sync-archive`` and ``list`` through a running ``amic run``: the
archive built from the ledger (pn, port, baud, DL/T645-2007 = 30 / 1997 = 1, address)
goes to the concentrator (AFN04 F10) and is read back (AFN0A F10); exit 0 in sync, 1
with the differences listed, 2 for an offline or unknown concentrator."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import Any, ClassVar

from click.testing import CliRunner, Result
from conftest import free_port
from daemonproc import Daemon
from test_daemon_concentrator import A1, query

from collector.cli import main
from protocols.qgdw3761 import AFN, DataUnit, Frame, MeterArchive, MeterEntry, MeterProtocol
from simulators.concentrator import ConcentratorSimulator, meter_address

LEDGER = {  # pn -> (protocol, port, baud)
    1: ("dlt645-2007", 2, 2400),
    2: ("dlt645-2007", 2, 2400),
    3: ("dlt645-2007", 3, 9600),
    4: ("dlt645-1997", 2, 1200),
}


def config(port: int) -> str:
    meters = "".join(
        f'\n[[meter]]\nmeter_id = "C1-M{pn}"\naddress = "{meter_address(1, pn)}"\n'
        f'bus = "tq-1"\npn = {pn}\nprotocol = "{proto}"\nport = {p}\nbaud = {baud}\n'
        for pn, (proto, p, baud) in LEDGER.items())
    return f"""
[collector]
id = "conc-gw"
data_dir = "data"
commit_interval = "200ms"

[[listener]]
name = "dialin"
listen = "127.0.0.1:{port}"
protocol = "3761"
request_timeout = "2s"

[[concentrator]]
name = "tq-1"
a1 = "{A1}"
a2 = 1
listener = "dialin"

[[concentrator]]
name = "tq-2"
a1 = "{A1}"
a2 = 2
listener = "dialin"
{meters}
[[meter]]
meter_id = "C2-M1"
address = "{meter_address(2, 1)}"
bus = "tq-2"
pn = 1

[schedule.slow]
interval = "1h"
quantities = ["energy_active_forward_total"]
"""


class RateBlind(ConcentratorSimulator):
    """A terminal that keeps every item of the archive but at its ports' default rate."""

    def _set_default_rate(self, units: list[DataUnit], frame: Frame) -> None:
        blind = [DataUnit(u.pn, u.fn, MeterArchive(tuple(
            MeterEntry(e.serial, e.pn, e.port, e.address, protocol=e.protocol)
            for e in u.value.entries))) if isinstance(u.value, MeterArchive) else u
            for u in units]
        ConcentratorSimulator._set(self, blind, frame)

    _handlers: ClassVar[dict[int, Any]] = {**ConcentratorSimulator._handlers,
                                           AFN.SET_PARAMETERS: _set_default_rate}


async def amic(*args: str) -> Result:
    return await asyncio.to_thread(CliRunner().invoke, main, list(args))


async def test_sync_archive_in_sync_with_differences_offline_unknown(tmp_path: Path) -> None:
    port = free_port()
    cfg = tmp_path / "amic.toml"
    cfg.write_text(config(port))
    daemon = Daemon(cfg, tmp_path)
    sim = ConcentratorSimulator("127.0.0.1", port, a1=A1, a2=1, meters=4,
                                reconnect_delay=0.3)
    try:
        await asyncio.to_thread(daemon.wait_for, "READY=1", 20.0)
        sim.start()
        await asyncio.wait_for(sim.logged_in.wait(), 10)

        r = await amic("concentrator", "list", "-c", str(cfg), "--json")
        assert r.exit_code == 0, r.output
        rows = {d["name"]: d for d in map(json.loads, r.stdout.splitlines())}
        assert rows["tq-1"]["online"] is True and rows["tq-1"]["since"]
        assert (rows["tq-1"]["a1"], rows["tq-1"]["a2"], rows["tq-1"]["listener"],
                rows["tq-1"]["meters"]) == (A1, 1, "dialin", 4)
        assert rows["tq-2"]["online"] is False and rows["tq-2"]["since"] is None

        r = await amic("concentrator", "sync-archive", "tq-1", "-c", str(cfg),
                       "--operator", "alice")
        assert r.exit_code == 0, r.output
        assert "archive of 4 meter(s) in sync" in r.stdout
        # the terminal now holds exactly the ledger's archive
        assert sim.archive is not None
        held = {e.pn: (e.protocol, e.port, e.baud, e.address) for e in sim.archive.values()}
        assert held == {
            1: (MeterProtocol.DLT645_2007, 2, 2400, meter_address(1, 1)),
            2: (MeterProtocol.DLT645_2007, 2, 2400, meter_address(1, 2)),
            3: (MeterProtocol.DLT645_2007, 3, 9600, meter_address(1, 3)),
            4: (MeterProtocol.DLT645_1997, 2, 1200, meter_address(1, 4)),
        }
        assert sim.stats.requests[AFN.SET_PARAMETERS] == 1
        assert sim.stats.requests[AFN.QUERY_PARAMETERS] == 1

        # offline and unknown: exit 2 with a clear message, nothing sent
        r = await amic("concentrator", "sync-archive", "tq-2", "-c", str(cfg))
        assert r.exit_code == 2 and "concentrator tq-2 is offline" in r.stderr, r.output
        r = await amic("concentrator", "sync-archive", "tq-9", "-c", str(cfg))
        assert r.exit_code == 2 and "no concentrator tq-9" in r.stderr, r.output
        assert sim.stats.requests[AFN.SET_PARAMETERS] == 1
    finally:
        await sim.stop()

    # a terminal that drops the rates: the differences remain, listed, exit 1
    blind = RateBlind("127.0.0.1", port, a1=A1, a2=1, meters=4, reconnect_delay=0.3)
    try:
        blind.start()
        await asyncio.wait_for(blind.logged_in.wait(), 10)
        r = await amic("concentrator", "sync-archive", "tq-1", "-c", str(cfg), "--json")
        assert r.exit_code == 1, r.output
        diffs = json.loads(r.stdout)["differences"]
        assert [(d["pn"], d["field"], d["ledger"], d["concentrator"]) for d in diffs] == [
            (1, "baud", "2400", "default"), (2, "baud", "2400", "default"),
            (3, "baud", "9600", "default"), (4, "baud", "1200", "default")]
        r = await amic("concentrator", "sync-archive", "tq-1", "-c", str(cfg))
        assert r.exit_code == 1
        assert r.stdout.splitlines()[0].split() == ["PN", "FIELD", "LEDGER", "CONCENTRATOR"]
        assert r.stdout.splitlines()[3].split() == ["3", "baud", "9600", "default"]
        assert "4 difference(s) remain" in r.stderr
    finally:
        await blind.stop()
        code = await asyncio.to_thread(daemon.stop)
    assert code == 0
    assert "Traceback" not in daemon.log.read_text()

    # each attempt journaled: who, the outcome
    journal = query(tmp_path, "SELECT meter, kind, operator, status FROM commands "
                              "WHERE kind = 'sync_archive' ORDER BY id")
    assert [r[0] for r in journal] == ["tq-1", "tq-2", "tq-1", "tq-1"]
    assert journal[0][2:] == ("alice", "verified") and journal[2][3] == "failed"
    detail = json.loads(str(query(tmp_path, "SELECT detail FROM commands WHERE kind = "
                                             "'sync_archive' ORDER BY id DESC LIMIT 1")[0][0]))
    assert detail["exit"] == 1 and len(detail["differences"]) == 4
    assert "archive sync of concentrator tq-1: 4 difference(s) remain" in \
        daemon.log.read_text()


async def test_without_a_daemon_it_says_so_and_exits_2(tmp_path: Path) -> None:
    cfg = tmp_path / "amic.toml"
    cfg.write_text(config(free_port()))
    r = await amic("concentrator", "sync-archive", "tq-1", "-c", str(cfg))
    assert r.exit_code == 2 and "no running daemon" in r.stderr

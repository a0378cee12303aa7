"""``amic trip/restore -c`` through a running daemon to a meter behind a dialled-in
concentrator: AFN 10H forwarding, status word 3 read back, the audit trail; a meter whose
concentrator is offline is a failed command with a clear detail."""

from __future__ import annotations

import asyncio
import json
import sqlite3
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from click.testing import CliRunner
from conftest import free_port
from daemonproc import Daemon

from collector.cli import main
from simulators.concentrator import ConcentratorSimulator, meter_address

A1 = "4403"
SECRETS = """
[default]
password = "02000000"

[operators.alice]
operator_code = "0000A11C"
"""


def config(port: int) -> str:
    meters = "".join(
        f'\n[[meter]]\nmeter_id = "C{a2}-M{pn}"\naddress = "{meter_address(a2, pn)}"\n'
        f'bus = "tq-{a2}"\npn = {pn}\n'
        for a2 in (1, 2) for pn in (1, 2))
    return f"""
[collector]
id = "conc-relay"
data_dir = "data"
commit_interval = "200ms"

[commands]
secrets_file = "secrets.toml"
min_interval = "0s"
verify_timeout = "3s"
poll_interval = "100ms"

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
[schedule.poll]
interval = "1h"
quantities = ["voltage_a"]
"""


async def amic(*args: str) -> Any:
    return await asyncio.to_thread(CliRunner().invoke, main, list(args))


async def until(check: Callable[[], bool], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if check():
            return
        await asyncio.sleep(0.1)
    raise AssertionError(f"timed out waiting for {what}")


def offline(tmp: Path, bus: str) -> list[tuple[Any, ...]]:
    with sqlite3.connect(tmp / "data" / "amic.db") as c:
        return c.execute("SELECT ts FROM events WHERE kind = 'concentrator_offline' "
                         "AND bus = ?", (bus,)).fetchall()


def commands(tmp: Path) -> list[tuple[str, str, str, str, dict[str, Any]]]:
    with sqlite3.connect(tmp / "data" / "amic.db") as c:
        rows = c.execute("SELECT meter, kind, status, operator, detail FROM commands "
                         "ORDER BY id").fetchall()
    return [(m, k, s, o, json.loads(d) if d else {}) for m, k, s, o, d in rows]


async def test_trip_and_restore_behind_a_concentrator_through_the_daemon(
        tmp_path: Path) -> None:
    port = free_port()
    cfg = tmp_path / "amic.toml"
    cfg.write_text(config(port))
    secrets = tmp_path / "secrets.toml"
    secrets.write_text(SECRETS)
    secrets.chmod(0o600)
    daemon = Daemon(cfg, tmp_path)
    # only tq-1 dials in; tq-2 stays offline
    sim = ConcentratorSimulator("127.0.0.1", port, a1=A1, a2=1, meters=2, seed=1,
                                reconnect_delay=0.3)
    try:
        await asyncio.to_thread(daemon.wait_for, "READY=1", 20.0)
        sim.start()
        await asyncio.wait_for(sim.logged_in.wait(), 10)
        target, other = sim.meter(1), sim.meter(2)
        assert target is not None and other is not None
        assert not target.model.relay_open and not other.model.relay_open
        base = ["-c", str(cfg), "--operator", "alice", "--yes"]

        r = await amic("trip", "C1-M1", *base, "--reason", "arrears 4711")
        assert r.exit_code == 0, r.output
        assert f"via running daemon (pid {daemon.proc.pid})" in r.stderr
        assert target.model.relay_open and not other.model.relay_open
        # the relay went through AFN 10H forwarding
        assert sim.stats.requests[0x10] >= 2

        r = await amic("relay-status", "C1-M1", "-c", str(cfg), "--json")
        assert r.exit_code == 0, r.output
        assert json.loads(r.stdout)["state"]["relay_open"] is True

        r = await amic("restore", "C1-M1", *base, "--reason", "paid")
        assert r.exit_code == 0, r.output
        assert not target.model.relay_open

        # tq-1 hangs up: a trip of its other meter fails and sends nothing
        await sim.stop()
        await until(lambda: bool(offline(tmp_path, "tq-1")), 10, "tq-1 offline")
        r = await amic("trip", "C1-M2", *base, "--reason", "arrears")
        assert r.exit_code != 0, r.output
        assert not other.model.relay_open

        # tq-2 never dialled in: a failed command, not a crash or a hang
        t0 = time.monotonic()
        r = await amic("trip", "C2-M1", *base, "--reason", "arrears", "--json")
        assert r.exit_code != 0, r.output
        assert time.monotonic() - t0 < 15
        assert "Traceback" not in r.output
    finally:
        await sim.stop()
        code = await asyncio.to_thread(daemon.stop)
    assert code == 0, daemon.log.read_text()
    log = daemon.log.read_text()
    assert "Traceback" not in log, log

    got = commands(tmp_path)
    assert [g[:4] for g in got] == [
        ("C1-M1", "trip", "confirmed", "alice"),
        ("C1-M1", "restore", "confirmed", "alice"),
        ("C1-M2", "trip", "failed", "alice"),
        ("C2-M1", "trip", "failed", "alice")]
    trip, restore = got[0][4], got[1][4]
    assert trip["reason"] == "arrears 4711" and trip["bus"] == "tq-1"
    # verified by status word 3 read back through forwarding: bit 4 (relay open) set
    assert trip["before"]["relay_open"] is False and trip["after"]["relay_open"] is True
    assert trip["after"]["status_word_3"] & 0x10
    assert restore["after"]["relay_open"] is False
    assert not restore["after"]["status_word_3"] & 0x10
    for (_, _, _, _, detail), a2 in zip(got[2:], (1, 2), strict=True):
        assert detail["command_sent"] is False, detail
        assert f"{A1}:{a2:05d}: concentrator offline" in detail["detail"], detail
    r = await amic("audit", "--config", str(cfg))
    assert r.exit_code == 0, r.output
    assert "C1-M1" in r.output and "confirmed" in r.output and "C2-M1" in r.output

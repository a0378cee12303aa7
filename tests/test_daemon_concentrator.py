"""``amic run`` with a [[listener]] and two [[concentrator]]s: simulated concentrators dial
in over real TCP, their meters are read by a schedule into the store; an unknown one is
refused; a dropped one gives one ``concentrator_offline`` and is read again after it dials
in again."""

from __future__ import annotations

import asyncio
import sqlite3
import time
from collections.abc import Callable
from pathlib import Path

from conftest import free_port
from daemonproc import Daemon

from protocols.quantities import QUANTITIES
from simulators.concentrator import ConcentratorSimulator, meter_address

A1 = "4403"
QUANTITIES_READ = ("energy_active_forward_total", "voltage_a", "status_word_3")


def config(port: int) -> str:
    meters = "".join(
        f'\n[[meter]]\nmeter_id = "C{a2}-M{pn}"\naddress = "{meter_address(a2, pn)}"\n'
        f'bus = "tq-{a2}"\npn = {pn}\n'
        for a2 in (1, 2) for pn in range(1, 5))
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

[[concentrator]]
name = "tq-2"
a1 = "{A1}"
a2 = 2
listener = "dialin"
{meters}
[schedule.fast]
interval = "2s"
quantities = {list(QUANTITIES_READ)!r}
""".replace("'", '"')


def query(tmp: Path, sql: str, *args: object) -> list[tuple[object, ...]]:
    with sqlite3.connect(tmp / "data" / "amic.db") as c:
        return list(c.execute(sql, args).fetchall())


async def until(check: Callable[[], bool], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if check():
            return
        await asyncio.sleep(0.2)
    raise AssertionError(f"timed out waiting for {what}")


def readings_of(tmp: Path, meter: str, after_ms: int = 0) -> list[tuple[object, ...]]:
    return query(tmp, "SELECT quantity, value, unit, quality FROM readings "
                      "WHERE meter = ? AND ts > ?", meter, after_ms)


async def test_concentrators_dial_in_and_their_meters_are_read(tmp_path: Path) -> None:
    port = free_port()
    cfg = tmp_path / "amic.toml"
    cfg.write_text(config(port))
    daemon = Daemon(cfg, tmp_path)
    sims = [ConcentratorSimulator("127.0.0.1", port, a1=A1, a2=a2, meters=4, seed=a2,
                                  reconnect_delay=0.3) for a2 in (1, 2)]
    stranger = ConcentratorSimulator("127.0.0.1", port, a1=A1, a2=9, meters=4,
                                     reconnect_delay=0.3)
    try:
        await asyncio.to_thread(daemon.wait_for, "READY=1", 20.0)
        for s in (*sims, stranger):
            s.start()
        ids = [f"C{a2}-M{pn}" for a2 in (1, 2) for pn in range(1, 5)]
        await until(lambda: all({r[0] for r in readings_of(tmp_path, m)} >= set(QUANTITIES_READ)
                                for m in ids), 30, "every meter's three quantities")

        for a2, sim in zip((1, 2), sims, strict=True):
            for pn in range(1, 5):
                rows = readings_of(tmp_path, f"C{a2}-M{pn}")
                assert {r[0] for r in rows} == set(QUANTITIES_READ)
                for quantity, value, unit, quality in rows:
                    # names and units as a meter read directly stores them
                    assert unit == QUANTITIES[str(quantity)].unit, quantity
                    assert quality == 0 and value is not None
                model = sim.meter(pn)
                assert model is not None
                status = [r[1] for r in rows if r[0] == "status_word_3"]
                assert status[-1] == model.model.status_word(3)
                volts = [float(str(r[1])) for r in rows if r[0] == "voltage_a"]
                assert 150 < volts[-1] < 300

        # the unknown terminal never logged in and none of its meters is known
        assert not stranger.logged_in.is_set() and stranger.stats.connections >= 1
        assert query(tmp_path, "SELECT count(*) FROM readings WHERE meter NOT LIKE 'C_-M_'") \
            == [(0,)]

        # tq-1 drops: one offline event, then it dials in again and is read again
        online = query(tmp_path, "SELECT count(*) FROM events WHERE kind = "
                                 "'concentrator_online' AND bus = 'tq-1'")[0][0]
        assert online == 1
        dropped_at = int(time.time() * 1000)
        sims[0].drop()
        await until(lambda: query(tmp_path, "SELECT count(*) FROM events WHERE kind = "
                                            "'concentrator_online' AND bus = 'tq-1'")[0][0] == 2,
                    15, "tq-1 online again")
        back_at = int(time.time() * 1000)
        await until(lambda: {r[0] for r in readings_of(tmp_path, "C1-M1", back_at)}
                    >= set(QUANTITIES_READ), 15, "tq-1's meters read again")
        offline = query(tmp_path, "SELECT bus, severity FROM events "
                                  "WHERE kind = 'concentrator_offline' AND ts >= ?", dropped_at)
        assert offline == [("tq-1", 1)]
    finally:
        for s in (*sims, stranger):
            await s.stop()
        code = await asyncio.to_thread(daemon.stop)
    assert code == 0, daemon.log.read_text()
    log = daemon.log.read_text()
    assert "Traceback" not in log, log

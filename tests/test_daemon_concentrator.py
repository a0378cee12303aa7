"""``amic run`` with a [[listener]] and three [[concentrator]]s (issue 15, §5): simulated
concentrators dial in over real TCP and log in; their meters are read by a schedule into
the store through class-1 data (AFN0C: energy, voltage) and forwarded DL/T645 (AFN10:
status word 3); a reload that adds ``[daily]`` backfills their daily freezes through
class-2 data (AFN0D F161); an unknown concentrator is refused; a dropped one gives one
``concentrator_offline`` and is read again after it dials in again.  (Line loss and the
export from those freezes: tests/test_daemon_concentrator_backfill.py.)"""

from __future__ import annotations

import asyncio
import datetime as dt
import signal
import sqlite3
import time
from collections.abc import Callable
from decimal import Decimal
from pathlib import Path

from conftest import free_port
from daemonproc import Daemon

from protocols.quantities import QUANTITIES
from simulators.concentrator import ConcentratorSimulator, meter_address

A1 = "4403"
KNOWN = (1, 2, 3)  # A2 of the configured concentrators
METERS = 4
QUANTITIES_READ = ("energy_active_forward_total", "voltage_a", "status_word_3")
FORWARD = "freeze_daily_energy_active_forward_total"
BACKFILLED = 2  # quality flag of a backfilled reading
# The simulated meters keep the host's local time: the daily jobs must use the same zone.
_OFFSET = int((dt.datetime.now().astimezone().utcoffset() or dt.timedelta()).total_seconds()
              // 3600)
ZONE = "UTC" if _OFFSET == 0 else f"Etc/GMT{-_OFFSET:+d}"

DAILY = f"""
[daily]
tz = "{ZONE}"
backfill_at = "00:00:00"
backfill_days = 2
timesync = false
report_at = "23:59:59"
audit_fraction = 0
"""


def config(port: int, daily: str = "") -> str:
    meters = "".join(
        f'\n[[meter]]\nmeter_id = "C{a2}-M{pn}"\naddress = "{meter_address(a2, pn)}"\n'
        f'bus = "tq-{a2}"\npn = {pn}\n'
        for a2 in KNOWN for pn in range(1, METERS + 1))
    concentrators = "".join(
        f'\n[[concentrator]]\nname = "tq-{a2}"\na1 = "{A1}"\na2 = {a2}\nlistener = "dialin"\n'
        for a2 in KNOWN)
    return f"""
[collector]
id = "conc-gw"
data_dir = "data"
commit_interval = "200ms"
{daily}
[[listener]]
name = "dialin"
listen = "127.0.0.1:{port}"
protocol = "3761"
request_timeout = "3s"
{concentrators}{meters}
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
                      "WHERE meter = ? AND ts > ? AND quality & ? = 0", meter, after_ms,
                 BACKFILLED)


async def test_concentrators_dial_in_and_their_meters_are_read(tmp_path: Path) -> None:
    port = free_port()
    cfg = tmp_path / "amic.toml"
    cfg.write_text(config(port))
    daemon = Daemon(cfg, tmp_path)
    sims = [ConcentratorSimulator("127.0.0.1", port, a1=A1, a2=a2, meters=METERS, seed=a2,
                                  reconnect_delay=0.3) for a2 in KNOWN]
    stranger = ConcentratorSimulator("127.0.0.1", port, a1=A1, a2=9, meters=4,
                                     reconnect_delay=0.3)
    ids = [f"C{a2}-M{pn}" for a2 in KNOWN for pn in range(1, METERS + 1)]
    try:
        await asyncio.to_thread(daemon.wait_for, "READY=1", 20.0)
        for s in (*sims, stranger):
            s.start()
        await until(lambda: all({r[0] for r in readings_of(tmp_path, m)} >= set(QUANTITIES_READ)
                                for m in ids), 30, "every meter's three quantities")

        for a2, sim in zip(KNOWN, sims, strict=True):
            assert sim.stats.login_confirms["F1"] >= 1
            # class-1 data for the energy and voltage, forwarding for the status word
            assert sim.stats.requests[0x0C] >= METERS and sim.stats.requests[0x10] >= METERS
            for pn in range(1, METERS + 1):
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

        # class-2: a reload adds [daily]; its backfill, due at once, reads the days the
        # store lacks from each concentrator's daily freezes (AFN0D F161)
        cfg.write_text(config(port, DAILY))
        daemon.proc.send_signal(signal.SIGHUP)
        await asyncio.to_thread(daemon.wait_log, "reload: [daily] applied", 15.0)
        await until(lambda: {r[0] for r in query(
            tmp_path, "SELECT DISTINCT meter FROM readings WHERE quantity = ? AND quality & ?",
            FORWARD, BACKFILLED)} == set(ids), 20, "every meter's backfilled daily freezes")
        for a2, sim in zip(KNOWN, sims, strict=True):
            assert sim.stats.requests[0x0D] >= METERS
            model = sim.meter(1)
            assert model is not None
            frozen = {int(str(ts)): Decimal(str(v)) for ts, v in query(
                tmp_path, "SELECT meter_ts, value FROM readings WHERE meter = ? AND "
                          "quantity = ? AND quality & ?", f"C{a2}-M1", FORWARD, BACKFILLED)}
            # yesterday's freeze (taken at 00:00 today, meter time) is the model's freeze 1
            taken = model.model.read("freeze_daily_time", freeze=1)
            assert isinstance(taken, dt.datetime)
            value = frozen[int(taken.astimezone().timestamp() * 1000)]
            assert abs(value - Decimal(str(model.model.read(FORWARD, freeze=1)))) < \
                Decimal("0.01")

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
        # the others stayed online throughout
        assert [s.stats.connections for s in sims[1:]] == [1, 1]
    finally:
        for s in (*sims, stranger):
            await s.stop()
        code = await asyncio.to_thread(daemon.stop)
    assert code == 0, daemon.log.read_text()
    log = daemon.log.read_text()
    assert "Traceback" not in log, log

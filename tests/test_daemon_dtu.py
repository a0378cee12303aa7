"""``amic run`` with two DTU [[listener]]s: a simulated DTU with DL/T645 meters and one with
Modbus meters (an Acrel profile) dial in over real TCP and register; their meters are read
by schedules into the store with the names and units of meters read directly.  An unknown
DTU is refused and none of its meters read (until a reload configures it); a DTU that
drops gives one ``dtu_offline`` and is read again after it dials in again."""

from __future__ import annotations

import asyncio
import json
import signal
import sqlite3
import time
from collections.abc import Callable
from decimal import Decimal
from pathlib import Path

from conftest import free_port
from daemonproc import Daemon

from collector.config.profiles import load_profile
from protocols.quantities import QUANTITIES
from simulators.dlt645 import make_meters
from simulators.dtu import DtuSimulator
from simulators.modbus import make_modbus_meters

DLT645_READ = ("energy_active_forward_total", "voltage_a", "status_word_3")
MODBUS_READ = ("energy_active_combined_total", "voltage_a", "current_a")
PROFILE = "acrel-ddsy1352"
ADDRESSES = [f"0000000000{n:02d}" for n in (1, 2, 3)]


def config(port_645: int, port_mb: int, *, reloaded: bool = False) -> str:
    """``reloaded``: DTU DTU00000009 (d3) and its meter in, d2 and its meters out."""
    meters = "".join(f'\n[[meter]]\nmeter_id = "D1-M{i}"\naddress = "{a}"\nbus = "d1"\n'
                     for i, a in enumerate(ADDRESSES, 1))
    d2 = "".join(f'\n[[meter]]\nmeter_id = "D2-U{u}"\naddress = "{u}"\nbus = "d2"\n'
                 f'protocol = "modbus"\nprofile = "{PROFILE}"\n' for u in (1, 2))
    d2 = f"""
[[dtu]]
name = "d2"
id = "0002"
listener = "dtu-mb"
{d2}
[schedule.modbus]
interval = "2s"
quantities = {json.dumps(MODBUS_READ)}
meters = ["bus:d2"]
"""
    d3 = """
[[dtu]]
name = "d3"
id = "DTU00000009"
listener = "dtu-645"

[[meter]]
meter_id = "D3-M9"
address = "000000000009"
bus = "d3"
"""
    return f"""
[collector]
id = "dtu-gw"
data_dir = "data"
commit_interval = "200ms"

[[listener]]
name = "dtu-645"
listen = "127.0.0.1:{port_645}"
protocol = "dtu-dlt645"
registration_length = 11
heartbeat = "HB"
request_timeout = "2s"

[[listener]]
name = "dtu-mb"
listen = "127.0.0.1:{port_mb}"
protocol = "dtu-modbus"
registration = "regex"
registration_regex = '^REG(?P<id>\\d{{4}})'
heartbeat = "hex:4842"
request_timeout = "2s"

[[dtu]]
name = "d1"
id = "DTU00000001"
listener = "dtu-645"
{meters}
[schedule.dlt645]
interval = "2s"
quantities = {json.dumps(DLT645_READ)}
meters = {'["bus:d1", "bus:d3"]' if reloaded else '["bus:d1"]'}
{d3 if reloaded else d2}"""


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
                      "WHERE meter = ? AND ts > ? ORDER BY id", meter, after_ms)


def events(tmp: Path, kind: str, bus: str, after_ms: int = 0) -> list[tuple[object, ...]]:
    return query(tmp, "SELECT severity, detail FROM events WHERE kind = ? AND bus = ? "
                      "AND ts >= ?", kind, bus, after_ms)


async def test_dtus_dial_in_and_their_dlt645_and_modbus_meters_are_read(
        tmp_path: Path) -> None:
    port_645, port_mb = free_port(), free_port()
    cfg = tmp_path / "amic.toml"
    cfg.write_text(config(port_645, port_mb))
    daemon = Daemon(cfg, tmp_path)
    dlt645_meters = make_meters(ADDRESSES, seed=1)
    modbus_meters = make_modbus_meters(load_profile(PROFILE), [1, 2], seed=2)
    d1 = DtuSimulator("127.0.0.1", port_645, registration=b"DTU00000001",
                      meters=dlt645_meters, heartbeat=0.3, heartbeat_packet=b"HB",
                      reconnect_delay=0.3)
    d2 = DtuSimulator("127.0.0.1", port_mb, registration=b"REG0002", meters=modbus_meters,
                      heartbeat=0.3, heartbeat_packet=b"HB", reconnect_delay=0.3)
    stranger = DtuSimulator("127.0.0.1", port_645, registration=b"DTU00000009",
                            meters=make_meters(["000000000009"], seed=9), heartbeat=0.3,
                            heartbeat_packet=b"HB", reconnect_delay=0.3)
    sims = (d1, d2, stranger)
    try:
        await asyncio.to_thread(daemon.wait_for, "READY=1", 20.0)
        for s in sims:
            await s.__aenter__()
        wanted = {**{f"D1-M{i}": DLT645_READ for i in (1, 2, 3)},
                  **{f"D2-U{u}": MODBUS_READ for u in (1, 2)}}
        await until(lambda: all({r[0] for r in readings_of(tmp_path, m)} >= set(q)
                                for m, q in wanted.items()), 15, "every meter's quantities")

        models = {**{f"D1-M{i}": m.model for i, m in enumerate(dlt645_meters, 1)},
                  **{f"D2-U{u}": m.model for u, m in zip((1, 2), modbus_meters, strict=True)}}
        for meter, quantities in wanted.items():
            rows = readings_of(tmp_path, meter)
            assert {r[0] for r in rows} == set(quantities), meter
            for quantity, value, unit, quality in rows:
                # names and units as a meter read directly stores them
                assert unit == QUANTITIES[str(quantity)].unit, (meter, quantity)
                assert quality == 0 and value is not None, (meter, quantity)
            energy = next(Decimal(str(r[1])) for r in reversed(rows)
                          if str(r[0]).startswith("energy"))
            # this meter's register (a few Wh on since the read), not another's
            now = models[meter].read(quantities[0])
            assert isinstance(now, Decimal) and abs(now - energy) < Decimal("0.5"), meter
            volts = [float(str(r[1])) for r in rows if r[0] == "voltage_a"]
            assert 150 < volts[-1] < 300, meter
        status = [r[1] for r in readings_of(tmp_path, "D1-M2") if r[0] == "status_word_3"]
        assert status[-1] == dlt645_meters[1].model.status_word(3)
        assert len({str(models[m].read(q[0])) for m, q in wanted.items()}) == len(wanted)

        # the unknown DTU is refused: nothing is asked of its meter, nothing stored for it
        assert stranger.stats.connections >= 1 and stranger.stats.requests == 0
        assert query(tmp_path, "SELECT count(*) FROM readings WHERE meter NOT LIKE 'D_-__'"
                     ) == [(0,)]
        assert {str(r[0]) for r in query(tmp_path, "SELECT DISTINCT bus FROM events WHERE "
                                                   "kind LIKE 'dtu_%'")} == {"d1", "d2"}

        # d1 drops: one dtu_offline, then it dials in again and is read again
        assert len(events(tmp_path, "dtu_online", "d1")) == 1
        dropped_at = int(time.time() * 1000)
        d1.drop()
        await until(lambda: len(events(tmp_path, "dtu_online", "d1")) == 2, 10,
                    "d1 online again")
        back_at = int(time.time() * 1000)
        await until(lambda: {r[0] for r in readings_of(tmp_path, "D1-M1", back_at)}
                    >= set(DLT645_READ), 10, "d1's meters read again")
        offline = events(tmp_path, "dtu_offline", "d1", dropped_at)
        assert [r[0] for r in offline] == [1]
        assert "DTU00000001" in str(offline[0][1])
        assert events(tmp_path, "dtu_offline", "d2") == []

        # a reload: the refused DTU, now configured, is taken at its next dial and read;
        # d2, taken out, is hung up and refused when it dials again
        dials = d2.stats.connections
        cfg.write_text(config(port_645, port_mb, reloaded=True))
        daemon.proc.send_signal(signal.SIGHUP)
        await until(lambda: {r[0] for r in readings_of(tmp_path, "D3-M9")}
                    >= set(DLT645_READ), 10, "the new DTU's meter read")
        assert len(events(tmp_path, "dtu_online", "d3")) == 1
        await until(lambda: d2.stats.connections >= dials + 2, 5, "d2 hung up and refused")
        asked = d2.stats.requests
        await asyncio.sleep(2.5)  # a cycle of the old modbus schedule would be due
        assert d2.stats.requests == asked
        assert events(tmp_path, "dtu_offline", "d2") == []  # its events went with it
    finally:
        for s in sims:
            await s.__aexit__(None, None, None)
        code = await asyncio.to_thread(daemon.stop)
    assert code == 0, daemon.log.read_text()
    log = daemon.log.read_text()
    assert "Traceback" not in log, log
    assert "unknown DTU 'DTU00000009': refused" in log
    assert "unknown DTU '0002': refused" in log
    assert "DTU 0002 (no longer configured): offline no longer configured" in log

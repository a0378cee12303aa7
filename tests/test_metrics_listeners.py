"""/metrics of ``amic run`` with a [[listener]]: per listener, terminals online, logins,
refused unknown terminals, bad frames, heartbeats and replaced sessions; per
concentrator, whether it is online.  Scraped over HTTP from a running daemon."""

from __future__ import annotations

import asyncio
import socket
import urllib.request
from collections.abc import Callable
from pathlib import Path

from conftest import free_port, until
from daemonproc import Daemon
from prometheus_client.parser import text_string_to_metric_families

from collector.service.metrics import Metrics
from protocols.qgdw3761 import (
    AFN,
    DataUnit,
    Direction,
    Frame,
    Function,
    build_frame,
    control_byte,
    encode_units,
    seq_byte,
)
from simulators.concentrator import ConcentratorSimulator, meter_address

A1 = "4403"
Samples = dict[tuple[str, tuple[tuple[str, str], ...]], float]


def config(port: int, mport: int) -> str:
    return f"""
[collector]
id = "conc-metrics"
data_dir = "data"
commit_interval = "200ms"
metrics_listen = "127.0.0.1:{mport}"

[[listener]]
name = "dialin"
listen = "127.0.0.1:{port}"
protocol = "3761"

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

[[meter]]
meter_id = "C1-M1"
address = "{meter_address(1, 1)}"
bus = "tq-1"
pn = 1

[[meter]]
meter_id = "C2-M1"
address = "{meter_address(2, 1)}"
bus = "tq-2"
pn = 1

[schedule.slow]
interval = "1h"
quantities = ["voltage_a"]
"""


def scrape(port: int) -> Samples:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as r:
        text = r.read().decode()
    return {(s.name, tuple(sorted(s.labels.items()))): s.value
            for f in text_string_to_metric_families(text) for s in f.samples}


def listener(samples: Samples, name: str) -> float | None:
    return samples.get((f"amic_listener_{name}", (("listener", "dialin"),)))


def online(samples: Samples, concentrator: str) -> float | None:
    return samples.get(("amic_concentrator_online",
                        (("concentrator", concentrator), ("listener", "dialin"))))


def bad_login(a2: int) -> bytes:
    """A login frame of terminal ``a2`` whose checksum is wrong."""
    raw = bytearray(build_frame(Frame(
        control=control_byte(Direction.UP, prm=True, function=Function.LINK_TEST),
        a1=A1, a2=a2, a3=0, afn=AFN.LINK, seq=seq_byte(0, con=True),
        units=encode_units(AFN.LINK, Direction.UP, (DataUnit(0, 1),)))))
    raw[-2] ^= 0xFF
    return bytes(raw)


async def scraped(mport: int, check: Callable[[Samples], bool], what: str) -> Samples:
    last: list[Samples] = [{}]

    def ok() -> bool:
        last[0] = scrape(mport)
        return check(last[0])

    def seen() -> str:
        return f"{what}: " + ", ".join(f"{k[0]}{dict(k[1])}={v:g}" for k, v in last[0].items()
                                       if k[0].startswith(("amic_listener", "amic_conc")))

    await until(ok, 20, what=seen)
    return last[0]


async def test_listener_and_concentrator_metrics_of_a_running_daemon(tmp_path: Path) -> None:
    port, mport = free_port(), free_port()
    cfg = tmp_path / "amic.toml"
    cfg.write_text(config(port, mport))
    daemon = Daemon(cfg, tmp_path)
    tq1 = ConcentratorSimulator("127.0.0.1", port, a1=A1, a2=1, meters=1, heartbeat=0.3,
                                reconnect_delay=0.3)
    stranger = ConcentratorSimulator("127.0.0.1", port, a1=A1, a2=9, meters=1,
                                     reconnect_delay=30)
    twin = ConcentratorSimulator("127.0.0.1", port, a1=A1, a2=1, meters=1,
                                 reconnect_delay=30)
    try:
        await asyncio.to_thread(daemon.wait_for, "READY=1", 20.0)
        first = await scraped(mport, lambda s: listener(s, "terminals_online") == 0,
                              "the listener's series before any terminal")
        assert listener(first, "logins_total") == 0
        assert online(first, "tq-1") == 0 and online(first, "tq-2") == 0

        tq1.start()
        stranger.start()
        await asyncio.wait_for(tq1.logged_in.wait(), 10)
        with socket.create_connection(("127.0.0.1", port), timeout=5) as raw:
            raw.sendall(bad_login(2))
            await asyncio.sleep(0.3)
        s = await scraped(mport, lambda s: online(s, "tq-1") == 1
                          and (listener(s, "heartbeats_total") or 0) >= 2
                          and listener(s, "bad_frames_total") == 1
                          and listener(s, "refused_unknown_total") == 1,
                          "tq-1 online, its heartbeats, the bad frame, the stranger refused")
        assert listener(s, "terminals_online") == 1 and online(s, "tq-2") == 0
        assert listener(s, "logins_total") == 1 and listener(s, "replaced_total") == 0
        assert (listener(s, "heartbeats_total") or 0) <= tq1.stats.heartbeats
        assert not stranger.logged_in.is_set() and stranger.stats.connections == 1

        # a second connection of tq-1 logs in: it replaces the first session
        tq1.reconnect_delay = 1.5  # the first comes back only after the twin has gone
        twin.start()
        await asyncio.wait_for(twin.logged_in.wait(), 10)
        await twin.stop()
        s = await scraped(mport, lambda s: listener(s, "replaced_total") == 1
                          and listener(s, "logins_total") == 3
                          and online(s, "tq-1") == 1,
                          "the twin replaced tq-1, then tq-1 logged in again")
        assert tq1.stats.connections == 2 and listener(s, "terminals_online") == 1
        assert listener(s, "refused_unknown_total") == 1
    finally:
        for sim in (tq1, stranger, twin):
            await sim.stop()
        code = await asyncio.to_thread(daemon.stop)
    assert code == 0, daemon.log.read_text()
    assert "Traceback" not in daemon.log.read_text()


class _Station:
    def __init__(self, **counters: int) -> None:
        self.values = counters

    def counters(self) -> dict[str, int]:
        return dict(self.values)


def test_listener_counters_stay_monotonic_across_a_new_station() -> None:
    m = Metrics()
    old = _Station(logins=3, heartbeats=10, refused_unknown=1)
    m.set_listener("dialin", old, online=2, concentrators={"tq-1": True, "tq-2": False})
    old.values["logins"] = 5
    m.set_listener("dialin", old, online=1, concentrators={"tq-1": True, "tq-2": True})
    # a new station object (a restart of the listener) counts from zero again
    m.set_listener("dialin", _Station(logins=1, heartbeats=0), online=1,
                   concentrators={"tq-1": False, "tq-2": True})
    samples = {(s.name, tuple(sorted(s.labels.items()))): s.value
               for f in text_string_to_metric_families(m.render().decode())
               for s in f.samples}
    got = {name: listener(samples, name) for name in (
        "logins_total", "heartbeats_total", "refused_unknown_total", "bad_frames_total",
        "terminals_online")}
    assert got == {"logins_total": 6, "heartbeats_total": 10, "refused_unknown_total": 1,
                   "bad_frames_total": 0, "terminals_online": 1}
    assert (online(samples, "tq-1"), online(samples, "tq-2")) == (0, 1)
    m.forget_bus("tq-2")  # a reload removed the concentrator
    assert b'concentrator="tq-2"' not in m.render()

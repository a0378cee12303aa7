"""A dead concentrator in the daemon: one ``bus_down`` alarm (amic events --alarms),
cycles that do not overrun, the other bus read as usual, ``bus_up`` when it is back."""

from __future__ import annotations

import asyncio
import json
import socket
from pathlib import Path

from click.testing import CliRunner
from conftest import until

from collector.cli import main
from collector.config import load_settings
from collector.service.daemon import Daemon
from collector.service.notify import Notifier
from simulators.bus import BusServer
from simulators.dlt645 import make_meters

CONFIG = """
[collector]
id = "bus-down"
data_dir = "data"
commit_interval = "100ms"

[[bus]]
name = "conc-1"
type = "tcp"
host = "127.0.0.1"
port = {good}
td_ms = 200

[[bus]]
name = "conc-2"
type = "tcp"
host = "127.0.0.1"
port = {dead}
td_ms = 200

{meters}

[schedule.fast]
interval = "1s"
quantities = ["energy_active_forward_total"]
"""

GOOD = [f"01{i:010d}" for i in range(1, 5)]
DEAD = [f"02{i:010d}" for i in range(1, 11)]


def meters() -> str:
    out = []
    for bus, addresses in (("conc-1", GOOD), ("conc-2", DEAD)):
        for a in addresses:
            out.append(f'[[meter]]\nmeter_id = "M{a[-4:]}{bus[-1]}"\naddress = "{a}"\n'
                       f'bus = "{bus}"\n')
    return "\n".join(out)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


async def test_dead_concentrator_is_one_alarm_and_bus_up_when_back(tmp_path: Path) -> None:
    dead_port = free_port()  # nothing listens there: connection refused
    async with BusServer(make_meters(GOOD), baud=19200, td=0.005) as good:
        cfg = tmp_path / "amic.toml"
        cfg.write_text(CONFIG.format(good=good.port, dead=dead_port, meters=meters()))
        daemon = Daemon(load_settings(cfg), notifier=Notifier.from_env({}), align=False)
        run = asyncio.create_task(daemon.run())
        try:
            # Down from the first cycle on; wait for a cycle that ended with it down.
            await until(lambda: daemon.poller is not None
                        and "conc-2" in daemon.bus_health
                        and daemon.bus_health["conc-2"].not_queued >= 2 * len(DEAD),
                        timeout=20, what=lambda: daemon.bus_health)
            assert daemon.poller is not None
            cycle = daemon.poller.last_cycle["fast"]
            assert cycle.per_bus == {"conc-1": (4, 4), "conc-2": (0, 10)}
            # The cycle did not wait out each dead meter: well inside its 1 s interval.
            assert cycle.ended is not None
            assert (cycle.ended - cycle.started).total_seconds() < 1.0
            # The concentrator comes back on its port.
            async with BusServer(make_meters(DEAD), port=dead_port, baud=19200, td=0.005):
                await until(lambda: not daemon.bus_health["conc-2"].down
                            and daemon.poller is not None
                            and daemon.poller.last_cycle["fast"].per_bus.get("conc-2")
                            == (10, 10), timeout=20,
                            what=lambda: daemon.poller and daemon.poller.last_cycle)
        finally:
            daemon.stop_requested.set()
            assert await asyncio.wait_for(run, 15) == 0
    r = CliRunner().invoke(main, ["events", "--config", str(cfg), "--alarms", "--json"])
    assert r.exit_code == 0, r.output
    alarms = [json.loads(line) for line in r.output.splitlines()]
    assert [(a["kind"], a["bus"]) for a in alarms] == [("bus_down", "conc-2")]
    r = CliRunner().invoke(main, ["events", "--config", str(cfg), "--json"])
    kinds = [json.loads(line)["kind"] for line in r.output.splitlines()]
    assert kinds.count("bus_up") == 1 and "meter_dead" not in kinds

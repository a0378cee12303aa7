"""The daemon keeps its long-lived objects out of the garbage collector's walks: the
configuration is frozen once loaded and again after a reload, the per-meter state once
the first cycle made it, the thresholds are set for a long run, and a stop gives it all
back."""

from __future__ import annotations

import asyncio
import gc
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest
from conftest import until

from collector.config import load_settings
from collector.service import daemon as daemon_module
from collector.service.daemon import GC_THRESHOLDS, Daemon
from collector.service.notify import Notifier
from simulators.bus import BusServer
from simulators.dlt645 import make_meters

ADDRESSES = [f"{i:012d}" for i in range(1, 4)]


def config(path: Path, port: int, meters: int) -> Path:
    text = f"""
[collector]
id = "gc"
data_dir = "data"
commit_interval = "100ms"

[[bus]]
name = "b1"
type = "tcp"
host = "127.0.0.1"
port = {port}
td_ms = 500
"""
    for i, a in enumerate(ADDRESSES[:meters], 1):
        text += f'\n[[meter]]\nmeter_id = "m{i}"\naddress = "{a}"\nbus = "b1"\n'
    text += '\n[schedule.s]\ninterval = "1h"\nquantities = ["voltage_a"]\n'
    path.write_text(text)
    return path


def tracked(obj: object) -> bool:
    """Whether ``obj`` is in a generation the collector walks (not frozen)."""
    return any(o is obj for o in gc.get_objects())


@pytest.fixture
def gc_state() -> Iterator[None]:
    before = gc.get_threshold()
    yield
    gc.unfreeze()
    gc.set_threshold(*before)


@pytest.fixture
async def bus() -> AsyncIterator[BusServer]:
    async with BusServer(make_meters(ADDRESSES, seed=3), baud=1_000_000) as server:
        yield server


async def test_configuration_and_meter_state_frozen_at_start_reload_and_first_cycle(
        tmp_path: Path, bus: BusServer, gc_state: None,
        monkeypatch: pytest.MonkeyPatch) -> None:
    settled: list[int] = []
    real = daemon_module.settle_heap

    def counting(full: bool = False) -> int:
        settled.append(n := real(full))
        return n

    monkeypatch.setattr(daemon_module, "settle_heap", counting)
    before = gc.get_threshold()
    cfg = config(tmp_path / "amic.toml", bus.port, meters=2)
    daemon = Daemon(load_settings(cfg), notifier=Notifier.from_env({}), align=False)
    run = asyncio.create_task(daemon.run())
    await until(lambda: daemon.poller is not None and "s" in daemon.poller.last_cycle, 10)
    assert daemon.poller is not None
    assert daemon.poller.last_cycle["s"].succeeded == 2
    assert len(settled) == 2  # configuration loaded, then the first cycle's state
    assert gc.get_threshold() == GC_THRESHOLDS
    assert gc.get_freeze_count() > 0
    assert not tracked(daemon.settings)
    assert not tracked(daemon.poller.health["m1"])

    config(cfg, bus.port, meters=3)
    assert await daemon.reload()
    assert len(settled) == 3
    assert not tracked(daemon.settings)  # the new configuration, frozen in its turn
    assert len(daemon.settings.meters) == 3

    daemon.stop_requested.set()
    assert await asyncio.wait_for(run, 15) == 0
    assert gc.get_freeze_count() == 0
    assert gc.get_threshold() == before

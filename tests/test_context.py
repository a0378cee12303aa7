"""The daemon's collaborators get a narrow context, never the Daemon (issue 14 §2)."""

from __future__ import annotations

from pathlib import Path
from unittest.mock import Mock

from collector.config import load_settings
from collector.config.settings import DailySettings
from collector.daily.jobs import DailyJobs
from collector.polling.context import DaemonContext
from collector.service.control import Control
from collector.service.ctlsocket import CtlServer
from collector.service.daemon import Daemon
from collector.store.records import Event, Reading, utcnow

CONFIG = """
[collector]
id = "ctx-gw"
data_dir = "data"

[[bus]]
name = "line-1"
type = "tcp"
host = "127.0.0.1"
port = 1

[[meter]]
meter_id = "M1"
address = "1"
bus = "line-1"

[schedule.slow]
interval = "1h"
quantities = ["energy"]
"""


def _daemon(tmp_path: Path) -> Daemon:
    cfg = tmp_path / "amic.toml"
    cfg.write_text(CONFIG)
    return Daemon(load_settings(cfg), notifier=Mock())


def test_the_context_follows_the_daemon(tmp_path: Path) -> None:
    """What a reload or the start-up replaces is read at use, not captured."""
    d = _daemon(tmp_path)
    ctx = d.context
    assert isinstance(ctx, DaemonContext)
    assert ctx.settings() is d.settings and ctx.store() is None and ctx.writer() is None
    assert ctx.workers() == {}
    row = Reading("M1", "energy", 1.5, "kWh", utcnow())
    ctx.store_readings([row])  # before the store is open: dropped, not counted
    assert d.readings_seen == 0
    d.writer = Mock()
    ctx.store_readings([row, row])
    assert d.readings_seen == 2
    d.writer.put_many.assert_called_once_with([row, row])
    ctx.on_event(Event("voltage_high", utcnow(), meter="M1", severity=1))
    assert d.writer.put_event.call_count == 1
    reloaded = load_settings(d.settings.source)
    d.settings = reloaded
    assert ctx.settings() is reloaded


def test_collaborators_hold_the_context_not_the_daemon(tmp_path: Path) -> None:
    d = _daemon(tmp_path)
    ctx = d.context
    made: list[Control | DailyJobs | CtlServer] = [
        Control(ctx, None), DailyJobs(ctx, DailySettings()), CtlServer(ctx)]
    for obj in made:
        assert obj.ctx is ctx
        assert not any(v is d for v in vars(obj).values()), type(obj).__name__
    server = made[2]
    assert isinstance(server, CtlServer) and server.relay() is None

"""A changed [[listener]] (its port stays bound) is reported as needing a restart."""

from __future__ import annotations

import dataclasses
from pathlib import Path

from collector.config.settings import (
    CollectorSettings,
    ConcentratorSettings,
    ListenerSettings,
    Settings,
)
from collector.service.daemon import restart_needed


def settings(*listeners: ListenerSettings) -> Settings:
    return Settings(source=Path("amic.toml"), collector=CollectorSettings("gw", Path("data")),
                    buses=(), meters=(), schedules=(), listeners=listeners,
                    concentrators=(ConcentratorSettings("tq-1", "4403", 1, "dialin"),))


def test_a_changed_listener_needs_a_restart_a_new_one_does_not() -> None:
    li = ListenerSettings("dialin", "127.0.0.1:9001")
    other = ListenerSettings("second", "127.0.0.1:9002")
    assert restart_needed(settings(li), settings(li, other)) == []
    moved = dataclasses.replace(li, listen="127.0.0.1:9003")
    assert restart_needed(settings(li), settings(moved)) == ["[[listener]] dialin"]

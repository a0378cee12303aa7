"""What the daemon's collaborators may use of it (issue 14 §2).

:class:`~collector.service.control.Control`, :class:`~collector.service.mqttlink.MqttLink`,
:class:`~collector.daily.jobs.DailyJobs`, :class:`~collector.service.ctlsocket.CtlServer` and
:func:`~collector.commands.remote.daemon_executor` get a :class:`DaemonContext`, never the
``Daemon``: so none of them imports ``collector.service.daemon`` and the daemon's internals stay
its own.  Everything that a reload or the start-up replaces is a callable, read at use.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from collector.config.settings import Settings
    from collector.store import Store, StoreWriter
    from collector.store.records import Event, Reading
    from protocols.modbus import Profile

    from .scheduler import BusWorker


@dataclass(frozen=True)
class DaemonContext:
    """The narrow view of a running daemon its collaborators get."""

    settings: Callable[[], Settings]
    """The current configuration (a reload replaces it)."""
    workers: Callable[[], dict[str, BusWorker]]
    """Bus name -> its worker (old workers stay until replaced)."""
    profile: Callable[[str], Profile]
    """A Modbus profile by name, found as the configuration's loader found it."""
    on_readings: Callable[[list[Reading]], None]
    """Readings as polled ones go: stored, counted, then the rules and the relay state."""
    store_readings: Callable[[list[Reading]], None]
    """Readings stored and counted only (on-demand reads); dropped before the store is
    open."""
    on_event: Callable[[Event], None]
    """An event: logged, stored, published when ``[alarms] publish``."""
    store: Callable[[], Store | None]
    """The store (None until the daemon has opened it)."""
    writer: Callable[[], StoreWriter | None]
    """The store writer (None until the daemon has started it)."""

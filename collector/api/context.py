"""What the API may use of the daemon: a narrow view, like polling.context.DaemonContext."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from collector.config.settings import Settings
    from collector.service.control import Control
    from collector.store import Store, StoreWriter
    from collector.store.records import CycleRecord, Event


@dataclass(frozen=True)
class ApiContext:
    """The daemon as the API sees it; everything a reload replaces is a callable."""

    settings: Callable[[], Settings]
    store: Callable[[], Store | None]
    writer: Callable[[], StoreWriter | None]
    control: Callable[[], Control | None]
    """Relay service, top-ups and the prepaid engine (None before the start)."""
    reload: Callable[[], Awaitable[bool]]
    """Re-read and apply the configuration, as SIGHUP does; False: refused."""
    buses: Callable[[], dict[str, dict[str, Any]]]
    """Bus name -> its health (``alive``, ``down``, ``reason``, ...)."""
    cycles: Callable[[], list[CycleRecord]]
    """The cycles in progress."""
    on_event: Callable[[Event], None]

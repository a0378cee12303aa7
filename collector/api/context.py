"""What the API may use of the daemon: a narrow view, like polling.context.DaemonContext."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from decimal import Decimal
from typing import TYPE_CHECKING, Any, Protocol

if TYPE_CHECKING:
    from collector.commands.prepaid import PrepaidEngine
    from collector.commands.relay_service import RelayService
    from collector.config.settings import Settings
    from collector.store import Store, StoreWriter
    from collector.store.records import CycleRecord, Event


class Commands(Protocol):
    """What the API uses of the daemon's control side (collector.service.control.Control):
    the one relay service and top-up path every channel goes through."""

    @property
    def relay(self) -> RelayService: ...

    @property
    def engine(self) -> PrepaidEngine | None: ...

    async def topup(self, meter: str, amount: Decimal, ref: str, operator: str,
                    request_id: str) -> dict[str, Any]: ...


@dataclass(frozen=True)
class ApiContext:
    """The daemon as the API sees it; everything a reload replaces is a callable."""

    settings: Callable[[], Settings]
    store: Callable[[], Store | None]
    writer: Callable[[], StoreWriter | None]
    control: Callable[[], Commands | None]
    """Relay service, top-ups and the prepaid engine (None before the start)."""
    reload: Callable[[], Awaitable[bool]]
    """Re-read and apply the configuration, as SIGHUP does; False: refused."""
    buses: Callable[[], dict[str, dict[str, Any]]]
    """Bus name -> its health (``alive``, ``down``, ``reason``, ...)."""
    cycles: Callable[[], list[CycleRecord]]
    """The cycles in progress."""
    on_event: Callable[[Event], None]

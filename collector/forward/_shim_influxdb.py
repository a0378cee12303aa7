"""The one place that uses influxdb-client internals (1.x, ``<2`` in pyproject).

With ``enable_gzip`` the client compresses every write body itself, at gzip level 9,
in ``Configuration.update_request_body(path, body)``: an undocumented hook its API
client calls for each request (it also sets the Content-Encoding header, which we
keep).  The forwarder compresses on its prefetch thread at its own level instead, so
the hook is wrapped to let a body that is already gzipped through.
``tests/test_shims.py`` fails when an influxdb-client release changes the hook.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Final

from influxdb_client import InfluxDBClient  # type: ignore[attr-defined]

__all__ = ["GZIP_MAGIC", "BodyHook", "pass_gzipped_bodies", "set_body_hook"]

GZIP_MAGIC: Final = b"\x1f\x8b"

BodyHook = Callable[[str, Any, Callable[[str, Any], Any]], Any]
"""``hook(path, body, default)``: the body to send; ``default(path, body)`` is the
client's own (gzip level 9 when enabled)."""


def set_body_hook(client: InfluxDBClient, hook: BodyHook) -> None:
    """Make ``client`` send ``hook(path, body, default)`` as each request body."""
    conf = client.conf
    default: Callable[[str, Any], Any] = conf.update_request_body

    def body(path: str, data: Any) -> Any:
        return hook(path, data, default)

    conf.update_request_body = body  # type: ignore[method-assign,assignment]


def _as_is_when_gzipped(path: str, data: Any, default: Callable[[str, Any], Any]) -> Any:
    if isinstance(data, bytes) and data.startswith(GZIP_MAGIC):
        return data
    return default(path, data)


def pass_gzipped_bodies(client: InfluxDBClient) -> None:
    """Bodies that are already gzipped go out as they are; others as the client does."""
    set_body_hook(client, _as_is_when_gzipped)

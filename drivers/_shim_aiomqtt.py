"""The one place that uses aiomqtt internals (aiomqtt 2, ``<3`` in pyproject).

aiomqtt 2 neither fails a connection attempt the broker closes before CONNACK (it waits
out its timeout) nor exposes the CONNACK's ``session_present`` flag.  Both are had by
wrapping the callbacks of the paho client it wraps (``Client._client``), failing its
connect future (``Client._connected``) from paho's thread through its loop
(``Client._loop``).  Should a release drop one of them, the function does nothing but
log a warning once (amic then waits for aiomqtt's timeout / reports no session flag);
``tests/test_shims.py`` fails loudly first.
"""

from __future__ import annotations

import asyncio
import importlib.metadata
import logging
from typing import Any

import aiomqtt
import paho.mqtt.client as paho_mqtt

__all__ = ["connect_future", "fail_fast_before_connack", "paho_client", "watch_connack"]

log = logging.getLogger("amic.mqtt")
_warned: set[str] = set()


def _missing(what: str) -> None:
    if what not in _warned:
        _warned.add(what)
        log.warning("aiomqtt %s has no %s: connection refusals before CONNACK wait for its "
                    "timeout, the session flag is not seen (drivers/_shim_aiomqtt.py)",
                    importlib.metadata.version("aiomqtt"), what)


def paho_client(client: aiomqtt.Client) -> paho_mqtt.Client | None:
    """The paho client inside ``client`` (None, with a warning, when not found)."""
    paho = getattr(client, "_client", None)
    if not isinstance(paho, paho_mqtt.Client):
        _missing("Client._client (paho client)")
        return None
    return paho


def connect_future(client: aiomqtt.Client
                   ) -> tuple[asyncio.Future[None], asyncio.AbstractEventLoop] | None:
    """``client``'s future of the connection attempt and the loop it belongs to."""
    connected = getattr(client, "_connected", None)
    loop = getattr(client, "_loop", None)
    if not isinstance(connected, asyncio.Future) or not isinstance(
            loop, asyncio.AbstractEventLoop):
        _missing("Client._connected / Client._loop")
        return None
    return connected, loop


def fail_fast_before_connack(client: aiomqtt.Client) -> None:
    """Make a connection closed before CONNACK fail the attempt at once.

    aiomqtt 2 ignores a disconnect that comes before CONNACK (a TLS client certificate
    the broker rejects, a broker at its connection limit) and waits out its timeout.
    This wraps its paho ``on_disconnect`` callback.
    """
    paho = paho_client(client)
    found = connect_future(client)
    if paho is None or found is None:
        return  # another aiomqtt: its own timeout applies
    connected, loop = found
    original = paho.on_disconnect

    def fail() -> None:
        # Only the attempt this client was made for (we never reuse a client).
        if not connected.done():
            connected.set_exception(aiomqtt.MqttError(
                "the broker closed the connection before accepting it (no CONNACK; "
                "a TLS client certificate or the broker's limits? see its log)"))
            connected.exception()  # retrieved: no "never retrieved" noise if unawaited

    def on_disconnect(*args: Any, **kwargs: Any) -> None:
        if original is not None:
            original(*args, **kwargs)
        loop.call_soon_threadsafe(fail)

    paho.on_disconnect = on_disconnect


def watch_connack(client: aiomqtt.Client, found: list[bool]) -> None:
    """Append the CONNACK's ``session_present`` flag to ``found`` (aiomqtt 2 does not
    expose it): wraps its paho ``on_connect`` callback."""
    paho = paho_client(client)
    if paho is None:
        return  # another aiomqtt: the flag stays unknown (None), nothing is reported
    original = paho.on_connect

    def on_connect(*args: Any, **kwargs: Any) -> None:
        flags = args[2] if len(args) > 2 else kwargs.get("flags")
        present = getattr(flags, "session_present", None)
        if isinstance(present, bool):
            found.append(present)
        if original is not None:
            original(*args, **kwargs)

    paho.on_connect = on_connect

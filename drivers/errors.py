"""Every exception the drivers raise, in one place.

::

    DriverError
    ├── LinkError                 the transport, not the meter
    │   ├── LinkDown              dropped or cannot be opened; the next transaction reconnects
    │   └── BusClosed             used outside ``async with bus``
    ├── NoReply (TimeoutError)    nothing within Td
    │   └── IncompleteReply       some bytes, then a gap longer than Tb (or garbage only)
    ├── ReplyError                a reply came, but it cannot be used
    │   ├── MeterError            abnormal reply: the meter refused; ``errors`` names why
    │   ├── WrongReply            valid reply to something else (other meter, function or DI)
    │   └── BadReply              malformed data in a well-framed reply
    └── UnknownQuantity (LookupError)   a name or DI the catalogue cannot read

Argument mistakes (a malformed meter address, a password that is not 8 hex digits)
raise :class:`ValueError` as usual.
"""

from __future__ import annotations


class DriverError(Exception):
    """Base of every driver error."""


class LinkError(DriverError):
    """The transport failed (not the meter)."""


class LinkDown(LinkError):
    """The link dropped during a transaction or could not be opened.

    The bus stays usable: the next transaction reconnects (after a short back-off).
    """

    def __init__(self, message: str, *, bus: str = "") -> None:
        super().__init__(message)
        self.bus = bus


class BusClosed(LinkError):
    """A transaction on a bus that is not open (use ``async with bus:``)."""


class NoReply(DriverError, TimeoutError):
    """No reply byte within the reply timeout Td.

    ``timeout`` is ``"Td"`` or ``"Tb"``, ``seconds`` its value, ``received`` whatever
    bytes did arrive, ``address`` the meter (when a session raised it).
    """

    def __init__(
        self,
        message: str,
        *,
        timeout: str = "Td",
        seconds: float = 0.0,
        received: bytes = b"",
        address: str | None = None,
    ) -> None:
        super().__init__(message)
        self.timeout = timeout
        self.seconds = seconds
        self.received = received
        self.address = address


class IncompleteReply(NoReply):
    """Bytes arrived but no complete reply before a gap longer than Tb."""


class ReplyError(DriverError):
    """A reply arrived from ``address`` but cannot be used."""

    def __init__(self, message: str, *, address: str) -> None:
        super().__init__(message)
        self.address = address


class MeterError(ReplyError):
    """An abnormal reply: the meter understood and refused.

    ``code`` is the raw error byte, ``errors`` its bit names (``no_requested_data``,
    ``unauthorised``, ...), ``function`` the request's function code.
    """

    def __init__(
        self, message: str, *, address: str, function: int, code: int, errors: tuple[str, ...]
    ) -> None:
        super().__init__(message, address=address)
        self.function = function
        self.code = code
        self.errors = errors


class WrongReply(ReplyError):
    """A valid reply that does not answer the request; its data is never returned.

    ``field`` is ``"address"``, ``"function"`` or ``"DI"``; ``expected`` and ``got``
    are as the codec spells them (12 digits, 2 or 4/8 hex digits).
    """

    def __init__(self, message: str, *, address: str, field: str, expected: str,
                 got: str) -> None:
        super().__init__(message, address=address)
        self.field = field
        self.expected = expected
        self.got = got


class BadReply(ReplyError):
    """A framed, checksum-valid reply whose data does not decode; ``raw`` is the frame."""

    def __init__(self, message: str, *, address: str, raw: bytes = b"") -> None:
        super().__init__(message, address=address)
        self.raw = raw


class UnknownQuantity(DriverError, LookupError):
    """A quantity name or DI that cannot be read with this protocol edition."""


__all__ = [
    "BadReply",
    "BusClosed",
    "DriverError",
    "IncompleteReply",
    "LinkDown",
    "LinkError",
    "MeterError",
    "NoReply",
    "ReplyError",
    "UnknownQuantity",
    "WrongReply",
]


class BrokerRefused(LinkDown):
    """An MQTT broker refused us: the connection (CONNACK) or a subscription (SUBACK).

    ``code`` is the broker's code as paho-mqtt reports it (MQTT 5 numbering, also for
    MQTT 3.1.1: 134 bad user name or password, 135 not authorised, 128 subscription
    refused), ``reason`` its text.  A refused connection keeps being retried with the
    back-off, so a fix on the broker side is picked up without a restart.
    """

    def __init__(self, message: str, *, bus: str = "", code: int, reason: str) -> None:
        super().__init__(message, bus=bus)
        self.code = code
        self.reason = reason


__all__ += ["BrokerRefused"]

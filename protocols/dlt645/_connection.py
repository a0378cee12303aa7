"""The master side of one DL/T645 exchange, sans I/O: the caller owns the bus.

``send(request)`` gives the bytes to write; ``receive_data`` takes whatever the
line returns; ``next_reply`` hands back the reply once it is complete, checked
against the request (address, function, DI) so nothing is taken from the wrong meter.
"""

from __future__ import annotations

from dataclasses import dataclass

from ..quantities import BROADCAST_ADDRESS
from ._errors import DLT645Error
from ._events import AbnormalReply, Message, ReadFollowUpReply, ReadReply, decode_message
from ._frame import DIRECTION_BIT, Frame, Version, build_frame
from ._receivebuffer import FrameExtractor, address_matches


class ReplyMismatch(DLT645Error):
    """A valid reply that does not answer the request (wrong meter, function or DI)."""

    def __init__(self, field: str, expected: str, got: str) -> None:
        super().__init__(f"reply {field} {got} does not match request {field} {expected}")
        self.field = field
        self.expected = expected
        self.got = got


@dataclass(frozen=True, slots=True)
class _Pending:
    address: str
    function: int
    di: int | None


def _replies_only(address: str, control: int) -> bool:
    # On two-wire RS-485 some converters echo our own request back; ignore it.
    return bool(control & DIRECTION_BIT)


class Master:
    """One request at a time, as on a half-duplex bus."""

    def __init__(self, *, preamble: int = 4) -> None:
        self.preamble = preamble
        self.extractor = FrameExtractor(_replies_only)
        self._pending: _Pending | None = None

    @property
    def awaiting_reply(self) -> bool:
        return self._pending is not None

    def send(self, request: Message) -> bytes:
        """Bytes for ``request``; a reply is expected unless it is a broadcast."""
        frame = request.to_frame()
        self.extractor.clear()
        expects_reply = frame.address != BROADCAST_ADDRESS
        di = getattr(request, "di", None)
        self._pending = _Pending(frame.address, frame.function, di) if expects_reply else None
        return build_frame(frame, preamble=self.preamble)

    def receive_data(self, data: bytes) -> None:
        self.extractor.feed(data)

    def cancel(self) -> None:
        """Forget the outstanding request (timeout); late bytes will be discarded."""
        self._pending = None
        self.extractor.clear()

    def next_reply(self) -> Message | None:
        """The reply to the outstanding request, or None while it is incomplete.

        Raises :class:`ReplyMismatch` for a reply from another meter or to another
        request, and :class:`PayloadError` for a reply whose data does not decode.
        """
        pending = self._pending
        if pending is None:
            return None
        frame = self.extractor.next_frame()
        if frame is None:
            return None
        self._pending = None
        return check_reply(pending.address, pending.function, pending.di, frame)


def check_reply(address: str, function: int, di: int | None, frame: Frame) -> Message:
    """Decode ``frame`` as the reply to (address, function, di), or raise why it is not."""
    # A wildcard request (AA..AA) is answered with the meter's real address.
    if not address_matches(address, frame.address):
        raise ReplyMismatch("address", address, frame.address)
    if frame.function != function:
        raise ReplyMismatch("function", f"{function:02X}", f"{frame.function:02X}")
    message = decode_message(frame)
    if isinstance(message, AbnormalReply):
        return message
    if isinstance(message, (ReadReply, ReadFollowUpReply)) and di is not None \
            and message.di != di:
        width = 4 if message.version is Version.V1997 else 8
        raise ReplyMismatch("DI", f"{di:0{width}X}", f"{message.di:0{width}X}")
    return message

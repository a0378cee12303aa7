"""A half-duplex request/reply bus, independent of the meter protocol.

One :class:`Bus` is one physical line (an RS-485 port, or the TCP port of a serial
server that bridges to one).  Every protocol (DL/T645, Modbus RTU) talks through the
same small interface::

    async with TcpBus("10.0.0.7", 10001) as bus:
        reply = await bus.transaction(request_bytes, complete)   # complete(chunk) -> bool
        await bus.send(broadcast_bytes)                          # write-only

Rules of the line:

* one transaction at a time (an :class:`asyncio.Lock`); :meth:`Bus.exclusive` holds the
  line across several transactions (multi-frame reads) for the current task;
* input is discarded before each request, and after a failed transaction the line must
  first stay quiet for ``guard`` seconds, so the late reply to a timed-out request never
  passes for the answer to the next one;
* the reply timeout ``td`` runs from the end of the request (plus its transmission time on
  a serial line) to the first byte; ``tb`` is the longest gap allowed between bytes; the
  caller's ``complete`` callable decides when a reply is whole.  Bytes that arrived before
  a timer ran count, however late the event loop got round to either (a GC pause, a busy
  daemon);
* a dropped link fails the transaction that saw it with :class:`LinkDown`; the next one
  reconnects, after a back-off of ``reconnect_min`` doubling up to ``reconnect_max`` while
  reconnecting keeps failing.  A link that dropped while idle is reopened silently.

Counters are plain attributes (see :meth:`Bus.counters`) for metrics.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from time import monotonic
from types import TracebackType
from typing import Self, TypedDict

from .errors import BusClosed, IncompleteReply, LinkDown, LinkError, NoReply

Completion = Callable[[bytes], bool]
"""Fed every received chunk in order; returns True once the reply is complete.

It may raise to end the transaction early (e.g. a reply that answers another request);
the exception propagates unchanged to the caller of :meth:`Bus.transaction`.
"""

_READ_SIZE = 4096


def _describe(exc: BaseException) -> str:
    text = str(exc)
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


class _Lost(Exception):
    """Internal: the link is gone; ``reason`` says how."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


def _expire(waiter: asyncio.Future[None]) -> None:
    if not waiter.done():
        waiter.set_result(None)


class Link:
    """One open connection (what a transport's ``Bus._open_link`` returns): received
    bytes collect in ``buffer`` as they arrive.

    A reader waits on a future that the arrival of data, the loss of the link or its
    timer completes, whichever comes first; it then takes what is in ``buffer``.  So a
    reply that arrived before the timer ran counts even if the loop was late to see
    either (a GC pause, a busy daemon): the loop hands over received data before it
    runs the timers that are due.
    """

    writer: asyncio.StreamWriter | None = None  # stream links only (serial input flush)

    def __init__(self) -> None:
        self.buffer = bytearray()
        self.lost: str | None = None
        self._waiter: asyncio.Future[None] | None = None

    def received(self, data: bytes) -> None:
        self.buffer += data
        waiter = self._waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    def ended(self, reason: str) -> None:
        if self.lost is None:
            self.lost = reason
        waiter = self._waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    def take(self) -> bytes:
        data = bytes(self.buffer)
        self.buffer.clear()
        return data

    async def read(self, timeout: float) -> bytes:
        """Bytes received so far, waiting up to ``timeout`` for the first; b"" on timeout."""
        if not self.buffer and self.lost is None and timeout > 0:
            loop = asyncio.get_running_loop()
            waiter = self._waiter = loop.create_future()
            timer = loop.call_later(timeout, _expire, waiter)
            try:
                await waiter
            finally:
                timer.cancel()
                self._waiter = None
        if self.buffer:
            data = bytes(self.buffer)
            self.buffer.clear()
            return data
        if self.lost is not None:
            raise _Lost(self.lost)
        return b""

    def write_now(self, data: bytes) -> bool:
        """Hand ``data`` to the transport if that needs no waiting; False: use write()."""
        return False

    async def write(self, data: bytes, timeout: float) -> None:
        raise NotImplementedError

    async def close(self) -> None:
        raise NotImplementedError


class ProtocolLink(Link, asyncio.Protocol):
    """A link that is the transport's protocol: data goes from ``data_received``
    straight into the buffer and to the waiting transaction, with no task between."""

    def __init__(self) -> None:
        super().__init__()
        self.transport: asyncio.Transport | None = None
        self._closed: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._drained: asyncio.Future[None] | None = None  # set while writing is paused

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport

    def data_received(self, data: bytes) -> None:
        self.received(data)

    # The end of the link is noticed one loop turn later, as the stream pump noticed it:
    # whether a drop counts as idle (reopened silently) or as the next transaction's
    # (LinkDown) stays as it was.  Only the replies skip the hop.
    def eof_received(self) -> bool:
        asyncio.get_running_loop().call_soon(self.ended, "connection closed by the other end")
        return False  # close our side too

    def connection_lost(self, exc: Exception | None) -> None:
        reason = "connection closed by the other end" if exc is None else _describe(exc)
        asyncio.get_running_loop().call_soon(self.ended, reason)
        if not self._closed.done():
            self._closed.set_result(None)
        self.resume_writing()

    def pause_writing(self) -> None:
        if self._drained is None:
            self._drained = asyncio.get_running_loop().create_future()

    def resume_writing(self) -> None:
        drained, self._drained = self._drained, None
        if drained is not None and not drained.done():
            drained.set_result(None)

    def write_now(self, data: bytes) -> bool:
        transport = self.transport
        # Into an empty send buffer a request cannot reach the high-water mark (64 KiB
        # by default): written at once, nothing to drain.
        if self.lost is not None or transport is None or len(data) > _READ_SIZE \
                or transport.get_write_buffer_size():
            return False
        try:
            transport.write(data)
        except (OSError, RuntimeError) as e:
            raise _Lost(_describe(e)) from e
        return True

    async def write(self, data: bytes, timeout: float) -> None:
        transport = self.transport
        if self.lost is not None or transport is None:
            raise _Lost(self.lost or "not connected")
        try:
            transport.write(data)
        except (OSError, RuntimeError) as e:
            raise _Lost(_describe(e)) from e
        drained = self._drained
        if drained is None:
            return  # below the high-water mark (the common case): nothing to wait for
        try:
            async with asyncio.timeout(timeout):
                await asyncio.shield(drained)
        except TimeoutError:
            raise _Lost(f"write stalled for {timeout:g} s") from None
        if self.lost is not None:
            raise _Lost(self.lost)

    async def close(self) -> None:
        self.ended("closed")
        transport = self.transport
        if transport is None:
            return
        transport.close()
        try:
            async with asyncio.timeout(1.0):
                await asyncio.shield(self._closed)
        except TimeoutError:  # a transport that never reports its end: stop waiting
            transport.abort()


class _StreamLink(Link):
    """A link over a reader/writer pair: a pump task moves received bytes in."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        super().__init__()
        self.reader = reader
        self.writer = self._writer = writer
        self._task = asyncio.create_task(self._pump(), name="amic-bus-pump")

    async def _pump(self) -> None:
        reason = "connection closed by the other end"
        try:
            while True:
                data = await self.reader.read(_READ_SIZE)
                if not data:
                    break
                self.received(data)
        except asyncio.CancelledError:
            reason = "closed"
            raise
        except Exception as e:  # any transport error ends the link
            reason = _describe(e)
        finally:
            self.ended(reason)

    async def write(self, data: bytes, timeout: float) -> None:
        if self.lost is not None:
            raise _Lost(self.lost)
        writer = self._writer
        try:
            writer.write(data)
            if writer.transport.get_write_buffer_size() == 0:
                return  # all handed to the kernel: nothing to drain (the common case)
            async with asyncio.timeout(timeout):
                await writer.drain()
        except TimeoutError:
            raise _Lost(f"write stalled for {timeout:g} s") from None
        except (OSError, RuntimeError) as e:  # ConnectionResetError, SerialException, ...
            raise _Lost(_describe(e)) from e

    async def close(self) -> None:
        self._task.cancel()
        await asyncio.wait([self._task])
        self.ended("closed")
        try:
            self._writer.close()
            async with asyncio.timeout(1.0):
                await self._writer.wait_closed()
        except (Exception, TimeoutError):  # closing a broken link may raise anything
            pass


class BusOptions(TypedDict, total=False):
    """Timing and reconnect options every transport takes (see :class:`Bus`)."""

    td: float
    tb: float
    guard: float
    reply_limit: float
    connect_timeout: float
    reconnect_min: float
    reconnect_max: float


class Bus:
    """A half-duplex line: open it with ``async with``; one transaction at a time.

    ``td``: reply timeout (s) to the first reply byte; ``tb``: longest gap (s) between
    bytes of one reply; ``guard``: quiet time (s) required after a failed transaction
    before the next request; ``reply_limit``: cap (s) on one reply's total duration
    after Td; ``connect_timeout``: limit (s) on opening the link;
    ``reconnect_min``/``reconnect_max``: back-off (s) between failing reconnects.
    """

    def __init__(
        self,
        *,
        name: str,
        td: float = 0.5,
        tb: float = 0.5,
        guard: float = 0.1,
        reply_limit: float = 10.0,
        connect_timeout: float = 5.0,
        reconnect_min: float = 0.1,
        reconnect_max: float = 5.0,
    ) -> None:
        for label, value in (("td", td), ("tb", tb), ("reply_limit", reply_limit),
                             ("connect_timeout", connect_timeout)):
            if not value > 0:
                raise ValueError(f"{label} must be positive, got {value!r}")
        for label, value in (("guard", guard), ("reconnect_min", reconnect_min)):
            if value < 0:
                raise ValueError(f"{label} must not be negative, got {value!r}")
        if reconnect_max < reconnect_min:
            raise ValueError("reconnect_max must not be less than reconnect_min")
        self.name = name
        self.td = td
        self.tb = tb
        self.guard = guard
        self.reply_limit = reply_limit
        self.connect_timeout = connect_timeout
        self.reconnect_min = reconnect_min
        self.reconnect_max = reconnect_max

        # Counters, for metrics.  Never reset by the bus.
        self.transactions = 0  # requests written, with or without a reply awaited
        self.timeouts = 0  # NoReply and IncompleteReply
        self.link_drops = 0  # links lost after they were up (in or between transactions)
        self.connects = 0  # successful (re)connections
        self.connect_failures = 0
        self.bytes_out = 0
        self.bytes_in = 0  # every byte received, including discarded ones
        self.bytes_discarded = 0  # received outside a transaction (late or stray bytes)
        self.busy_time = 0.0  # seconds the line was held by transactions

        self._lock = asyncio.Lock()
        self._owner: asyncio.Task[object] | None = None
        self._link: Link | None = None
        self._open = False
        self._dirty = False  # the last transaction ended without a complete reply
        self._failures = 0  # consecutive link failures, for the back-off
        self._last_failure = 0.0

    # ---- subclass hooks ------------------------------------------------------------------

    async def _connect(self) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
        """Open the transport as a stream pair; any exception means it cannot be opened
        (LinkDown).  A transport implements this or :meth:`_open_link`."""
        raise NotImplementedError(f"{type(self).__name__} implements no transport")

    async def _open_link(self) -> Link:
        """Open the link.  A transport whose connection can take our protocol directly
        overrides this (see :class:`drivers.tcp.TcpBus`): a reply then reaches the
        waiting transaction from ``data_received``, without the stream pump's task."""
        reader, writer = await self._connect()
        return _StreamLink(reader, writer)

    def tx_time(self, nbytes: int) -> float:
        """Seconds the line needs to transmit ``nbytes`` (Td starts after them)."""
        return 0.0

    def _discard_device_input(self, writer: asyncio.StreamWriter) -> None:
        """Drop input held by the device driver (a serial port's receive buffer)."""
        return None

    # ---- life cycle ------------------------------------------------------------------------

    @property
    def is_open(self) -> bool:
        return self._open

    @property
    def connected(self) -> bool:
        return self._link is not None and self._link.lost is None

    @property
    def reconnect_wait(self) -> float:
        """Seconds until a link that failed may be tried again (0: now, or it is up)."""
        if self.connected or not self._failures:
            return 0.0
        delay = min(self.reconnect_min * 2.0 ** (self._failures - 1), self.reconnect_max)
        return max(0.0, self._last_failure + delay - monotonic())

    async def open(self, *, lazy: bool = False) -> bool:
        """Open the link; :class:`LinkDown` if it cannot be opened (the bus stays closed).

        ``lazy``: a link that cannot be opened now is not an error; the bus stays open
        and each transaction tries again (with the back-off), as a daemon wants for a
        concentrator that is down at start-up.  Returns whether the link is up.
        """
        if self._open:
            return self.connected
        self._open = True
        self._failures = 0
        try:
            async with self.exclusive():
                await self._ensure_link()
        except LinkDown:
            if not lazy:
                self._open = False
                raise
            return False
        except BaseException:
            self._open = False
            raise
        return True

    async def close(self) -> None:
        self._open = False
        link, self._link = self._link, None
        if link is not None:
            await link.close()

    async def __aenter__(self) -> Self:
        await self.open()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.close()

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self.name} {'open' if self._open else 'closed'}>"

    def counters(self) -> dict[str, float]:
        """A snapshot of the counters."""
        return {
            "transactions": self.transactions, "timeouts": self.timeouts,
            "link_drops": self.link_drops, "connects": self.connects,
            "connect_failures": self.connect_failures, "bytes_out": self.bytes_out,
            "bytes_in": self.bytes_in, "bytes_discarded": self.bytes_discarded,
            "busy_time": self.busy_time,
        }

    # ---- the line ------------------------------------------------------------------------

    @asynccontextmanager
    async def exclusive(self) -> AsyncIterator[None]:
        """Hold the line for the current task across several transactions.

        Re-entrant for the task that holds it; other tasks (including tasks it spawns)
        wait.
        """
        task = asyncio.current_task()
        if task is not None and self._owner is task:
            yield
            return
        async with self._lock:
            self._owner = task
            try:
                yield
            finally:
                self._owner = None

    async def transaction(
        self,
        request: bytes,
        complete: Completion,
        *,
        td: float | None = None,
        tb: float | None = None,
    ) -> bytes:
        """Write ``request``, read until ``complete(chunk)`` is True; all bytes read.

        Raises :class:`NoReply` (nothing within Td), :class:`IncompleteReply` (a gap
        longer than Tb, or ``reply_limit`` exceeded), :class:`LinkDown`,
        :class:`BusClosed`, or whatever ``complete`` raises.
        """
        td = self.td if td is None else td
        tb = self.tb if tb is None else tb
        # exclusive(), inlined: this runs once per reply, thousands of times a second.
        task = asyncio.current_task()
        nested = task is not None and self._owner is task
        if not nested:
            await self._lock.acquire()
            self._owner = task
        try:
            link = self._link
            if link is None or link.lost is not None or not self._open:
                link = await self._ensure_link()
            started = monotonic()
            self.transactions += 1
            ok = False
            try:
                if self._dirty or link.buffer or link.writer is not None:
                    await self._prepare(link)
                if not link.write_now(request):
                    await self._write(link, request)
                else:
                    self.bytes_out += len(request)
                first = td + self.tx_time(len(request))
                limit = monotonic() + first + self.reply_limit
                received = bytearray()
                timeout = first
                while True:
                    wait = min(timeout, limit - monotonic())
                    chunk = await link.read(wait)
                    if not chunk:
                        self.timeouts += 1
                        raise self._timeout(received, first, tb, expired=wait < timeout)
                    received += chunk
                    self.bytes_in += len(chunk)
                    if complete(chunk):
                        ok = True
                        self._failures = 0
                        return bytes(received)
                    timeout = tb
            except _Lost as e:
                raise await self._lost(link, e) from e.__cause__
            finally:
                self.busy_time += monotonic() - started
                self._dirty = not ok
        finally:
            if not nested:
                self._owner = None
                self._lock.release()

    async def send(self, request: bytes) -> None:
        """Write ``request`` and wait for no reply (broadcasts)."""
        async with self.exclusive():
            link = await self._ensure_link()
            started = monotonic()
            self.transactions += 1
            try:
                await self._prepare(link)
                await self._write(link, request)
                self._dirty = False
            except _Lost as e:
                raise await self._lost(link, e) from e.__cause__
            finally:
                self.busy_time += monotonic() - started

    # ---- internals ---------------------------------------------------------------------

    def _timeout(self, received: bytearray, td: float, tb: float, *, expired: bool) -> NoReply:
        if not received:
            return NoReply(f"{self.name}: no reply within Td {td * 1000:.0f} ms",
                           timeout="Td", seconds=td)
        if expired:
            why = f"reply still incomplete after {self.reply_limit:g} s"
        else:
            why = f"reply incomplete: {len(received)} bytes, then silence > Tb {tb * 1000:.0f} ms"
        return IncompleteReply(f"{self.name}: {why}", timeout="Tb", seconds=tb,
                               received=bytes(received))

    async def _ensure_link(self) -> Link:
        if not self._open:
            raise BusClosed(f"{self.name}: bus is not open (use 'async with bus:')")
        link = self._link
        if link is not None:
            if link.lost is None:
                return link
            # Dropped while idle (e.g. a serial server closing idle connections):
            # no request was lost, so reopen without failing anybody.
            self.link_drops += 1
            self._link = None
            await link.close()
        if self._failures:
            delay = min(self.reconnect_min * 2 ** (self._failures - 1), self.reconnect_max)
            wait = self._last_failure + delay - monotonic()
            if wait > 0:
                await asyncio.sleep(wait)
        try:
            async with asyncio.timeout(self.connect_timeout):
                link = await self._open_link()
        except Exception as e:  # OSError, TimeoutError, but also termios.error from pyserial
            self.connect_failures += 1
            self._failures += 1
            self._last_failure = monotonic()
            why = "timed out" if isinstance(e, TimeoutError) and not str(e) else _describe(e)
            raise LinkDown(f"{self.name}: cannot connect: {why}", bus=self.name) from e
        self.connects += 1
        self._dirty = False
        self._link = link
        return link

    async def _lost(self, link: Link, e: _Lost) -> LinkError:
        if self._link is link:
            self._link = None
            self.link_drops += 1
        self._failures += 1
        self._last_failure = monotonic()
        await link.close()
        if not self._open:
            return BusClosed(f"{self.name}: bus closed during the transaction")
        return LinkDown(f"{self.name}: link lost: {e.reason}", bus=self.name)

    async def _prepare(self, link: Link) -> None:
        """Discard stray input; after a failure, first wait for ``guard`` of silence."""
        if self._dirty and self.guard > 0:
            # A late reply may still be on its way: swallow it before the next request.
            # Bounded, so a babbling line cannot block the bus for ever.
            until = monotonic() + max(self.guard, self.td + self.tb)
            while (left := until - monotonic()) > 0:
                late = await link.read(min(self.guard, left))
                if not late:
                    break
                self.bytes_in += len(late)
                self.bytes_discarded += len(late)
        stray = link.take()
        self.bytes_in += len(stray)
        self.bytes_discarded += len(stray)
        if link.lost is not None:
            raise _Lost(link.lost)
        if link.writer is None:
            return
        try:
            self._discard_device_input(link.writer)
        except Exception as e:  # SerialException, termios.error: the device is gone
            raise _Lost(_describe(e)) from e

    async def _write(self, link: Link, request: bytes) -> None:
        await link.write(request, timeout=1.0 + 2 * self.tx_time(len(request)))
        self.bytes_out += len(request)


__all__ = ["Bus", "Completion", "Link", "ProtocolLink"]

"""Dial-in DTUs: 4G modems that connect to us, register, then pass meter frames through.

::

    fmt = RegistrationFormat.ascii(heartbeat=b"HB")
    async with DialInListener("0.0.0.0", 9002, registration=fmt, known=ids.__contains__
                              ) as listener, \\
            DialInBus(listener, "DTU0001", td=3.0) as bus:
        session = Dlt645Session(bus)        # or ModbusSession(bus, ...)

After its registration packet a DTU connection is a transparent line, like a serial
server's TCP port; heartbeat packets are taken out of the byte stream.  A reconnect with
the same id replaces the old connection.
"""

from __future__ import annotations

import asyncio
import logging
import re
import ssl as _ssl
from collections.abc import Callable
from dataclasses import dataclass
from time import monotonic
from types import TracebackType
from typing import Self, Unpack

from .bus import Bus, BusOptions

log = logging.getLogger("amic.dialin")

_READ_SIZE = 4096
_MAX_REGISTRATION = 256


@dataclass(frozen=True, slots=True)
class RegistrationFormat:
    """How a DTU's registration and heartbeat packets look.

    ``registration`` is matched at the start of the connection's bytes; its group
    ``id`` (else group 1, else the whole match) decoded as ASCII is the DTU id.
    ``heartbeat`` is matched at the start of each received packet and removed (DTUs send
    heartbeats as packets of their own); None: no heartbeats to strip.
    """

    registration: re.Pattern[bytes]
    heartbeat: re.Pattern[bytes] | None = None

    @classmethod
    def ascii(cls, length: int | None = None, *, heartbeat: bytes | None = None
              ) -> RegistrationFormat:
        """The id as printable ASCII: exactly ``length`` characters, or the whole packet."""
        count = f"{{{length}}}" if length else "+"
        return cls(re.compile(rb"(?P<id>[\x21-\x7e]" + count.encode() + rb")"),
                   re.compile(re.escape(heartbeat)) if heartbeat else None)

    @classmethod
    def regex(cls, registration: bytes, heartbeat: bytes | None = None) -> RegistrationFormat:
        """Both packets as regular expressions over bytes."""
        return cls(re.compile(registration, re.DOTALL),
                   re.compile(heartbeat, re.DOTALL) if heartbeat else None)

    def match(self, data: bytes) -> tuple[str, int] | None:
        """(id, bytes used) if ``data`` starts with a registration packet, else None."""
        m = self.registration.match(data)
        if m is None or m.end() == 0:
            return None
        raw = m.group("id") if "id" in m.re.groupindex else (
            m.group(1) if m.re.groups else m.group(0))
        try:
            text = raw.decode("ascii")
        except UnicodeDecodeError:
            return None
        return (text, m.end()) if text else None

    def strip(self, packet: bytes) -> tuple[bytes, int]:
        """``packet`` without its leading heartbeat(s), and how many were removed."""
        n = 0
        if self.heartbeat is not None:
            while packet and (m := self.heartbeat.match(packet)) and m.end() > 0:
                packet = packet[m.end():]
                n += 1
        return packet, n


@dataclass(frozen=True, slots=True)
class DtuEvent:
    """``kind``: ``online``, ``offline`` or ``replaced``."""

    kind: str
    dtu: str
    reason: str = ""


class _View(asyncio.Transport):
    """What one bus link sees of a DTU connection: closing it detaches the bus and
    leaves the DTU's socket open (the DTU stays registered)."""

    def __init__(self, conn: _Connection, protocol: asyncio.StreamReaderProtocol) -> None:
        super().__init__(extra={"peername": conn.peer})
        self._conn = conn
        self.protocol = protocol
        self._closing = False

    def write(self, data: bytes | bytearray | memoryview) -> None:
        if self._closing or not self._conn.usable:
            raise ConnectionResetError(f"DTU {self._conn.dtu}: connection gone")
        self._conn.writer.write(bytes(data))

    def get_write_buffer_size(self) -> int:
        return self._conn.writer.transport.get_write_buffer_size()

    def is_closing(self) -> bool:
        return self._closing

    def close(self) -> None:
        self.lose(None)

    def abort(self) -> None:
        self.lose(None)

    def can_write_eof(self) -> bool:
        return False

    def is_reading(self) -> bool:
        return not self._closing

    def pause_reading(self) -> None:
        return None

    def resume_reading(self) -> None:
        return None

    def lose(self, exc: Exception | None) -> None:
        if self._closing:
            return
        self._closing = True
        if self._conn.view is self:
            self._conn.view = None
        asyncio.get_running_loop().call_soon(self.protocol.connection_lost, exc)


class _Connection:
    """One registered DTU connection; received bytes (heartbeats stripped) go to the
    bus link attached to it, if any."""

    def __init__(self, dtu: str, writer: asyncio.StreamWriter, peer: str) -> None:
        self.dtu = dtu
        self.peer = peer
        self.writer = writer
        self.view: _View | None = None
        self.ended = False
        self.replaced = False
        self.hung_up = ""  # why we closed it, if we did

    @property
    def usable(self) -> bool:
        return not (self.ended or self.replaced or self.writer.is_closing())

    def attach(self) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
        if self.view is not None:
            self.view.lose(ConnectionResetError("another link took the DTU over"))
        reader = asyncio.StreamReader()
        protocol = asyncio.StreamReaderProtocol(reader)
        view = self.view = _View(self, protocol)
        protocol.connection_made(view)
        return reader, asyncio.StreamWriter(view, protocol, reader,
                                            asyncio.get_running_loop())

    def feed(self, data: bytes) -> int:
        """Bytes handed to the attached link (0: no link, dropped)."""
        if self.view is None:
            return 0
        self.view.protocol.data_received(data)
        return len(data)

    def end(self, reason: str) -> None:
        self.ended = True
        if self.view is not None:
            self.view.lose(ConnectionResetError(reason))


class DialInListener:
    """A TCP (or TLS) listener for DTUs; ``async with`` starts and stops it.

    ``known(id)``: is this DTU ours (others are refused); ``idle_timeout``: a DTU that
    sends nothing (not even a heartbeat) this long (s) is closed; ``on_event``: online,
    offline and replaced events.
    """

    def __init__(self, host: str, port: int, *, registration: RegistrationFormat,
                 known: Callable[[str], bool], idle_timeout: float = 300.0,
                 ssl: _ssl.SSLContext | None = None,
                 on_event: Callable[[DtuEvent], None] | None = None) -> None:
        if not idle_timeout > 0:
            raise ValueError("idle_timeout must be positive")
        self.host = host
        self._port = port
        self.registration = registration
        self.known = known
        self.idle_timeout = idle_timeout
        self.ssl = ssl
        self.on_event = on_event
        self._server: asyncio.Server | None = None
        self._connections: dict[str, _Connection] = {}
        self._changed = asyncio.Event()
        self._tasks: set[asyncio.Task[None]] = set()
        self._writers: set[asyncio.StreamWriter] = set()
        self._closing = False
        self._counters = dict.fromkeys((
            "connections", "registrations", "refused_unknown", "refused_bad_registration",
            "replaced", "heartbeats", "timeouts", "bytes_in", "bytes_unclaimed"), 0)

    @property
    def port(self) -> int:
        """The bound port (the real one when 0 was asked)."""
        if self._server is not None and self._server.sockets:
            return int(self._server.sockets[0].getsockname()[1])
        return self._port

    def online(self) -> list[str]:
        return sorted(self._connections)

    def counters(self) -> dict[str, int]:
        return dict(self._counters)

    def hang_up(self, dtu: str, reason: str) -> bool:
        """Close the connection of ``dtu`` (e.g. no longer configured: it is refused when
        it dials in again); False if it is not connected."""
        conn = self._connections.get(dtu)
        if conn is None:
            return False
        conn.hung_up = reason
        conn.writer.close()
        return True

    def bus(self, dtu: str, **options: Unpack[BusOptions]) -> DialInBus:
        return DialInBus(self, dtu, **options)

    async def start(self) -> None:
        self._closing = False
        self._server = await asyncio.start_server(self._accept, self.host, self._port,
                                                  ssl=self.ssl)

    async def close(self) -> None:
        self._closing = True
        if self._server is not None:
            self._server.close()
        for w in list(self._writers):
            w.close()
        if self._tasks:
            _, stuck = await asyncio.wait(list(self._tasks), timeout=1.0)
            for t in stuck:
                t.cancel()
            if stuck:
                await asyncio.wait(stuck)
        if self._server is not None:
            await self._server.wait_closed()
            self._server = None

    async def __aenter__(self) -> Self:
        await self.start()
        return self

    async def __aexit__(self, exc_type: type[BaseException] | None,
                        exc: BaseException | None, tb: TracebackType | None) -> None:
        await self.close()

    async def wait_connected(self, dtu: str, timeout: float) -> tuple[
            asyncio.StreamReader, asyncio.StreamWriter]:
        """The DTU's current connection as a stream pair; TimeoutError after ``timeout``."""
        async with asyncio.timeout(timeout):
            while True:
                c = self._connections.get(dtu)
                if c is not None and c.usable:
                    return c.attach()
                self._changed.clear()
                await self._changed.wait()

    # ---- internals ---------------------------------------------------------------------

    def _event(self, kind: str, dtu: str, reason: str) -> None:
        if self.on_event is None:
            return
        try:
            self.on_event(DtuEvent(kind, dtu, reason))
        except Exception:  # a broken consumer must not take the DTU down
            log.exception("on_event failed for %s %s", kind, dtu)

    async def _accept(self, reader: asyncio.StreamReader,
                      writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        if task is not None:
            self._tasks.add(task)
        self._writers.add(writer)
        try:
            await self._serve(reader, writer)
        except asyncio.CancelledError:
            # asyncio.start_server logs a cancelled handler as an error; closing is normal
            if not self._closing:
                raise
        finally:
            if task is not None:
                self._tasks.discard(task)
            self._writers.discard(writer)
            writer.close()

    async def _read(self, reader: asyncio.StreamReader, since: float) -> bytes | None:
        """Next packet; None when the DTU was silent for ``idle_timeout``."""
        try:
            async with asyncio.timeout(max(since + self.idle_timeout - monotonic(), 0.0)):
                data = await reader.read(_READ_SIZE)
        except TimeoutError:
            self._counters["timeouts"] += 1
            return None
        except (OSError, _ssl.SSLError):
            return b""
        self._counters["bytes_in"] += len(data)
        return data

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self._counters["connections"] += 1
        peer = str(writer.get_extra_info("peername"))
        buf = b""
        last = monotonic()
        while True:  # the registration packet
            data = await self._read(reader, last)
            if not data:
                return
            last = monotonic()
            buf += data
            found = self.registration.match(buf)
            if found is not None:
                break
            if len(buf) > _MAX_REGISTRATION:
                self._counters["refused_bad_registration"] += 1
                log.warning("%s: no registration packet in %d bytes: refused", peer, len(buf))
                return
        dtu, used = found
        if not self.known(dtu):
            self._counters["refused_unknown"] += 1
            log.warning("%s: unknown DTU %r: refused", peer, dtu)
            return
        conn = _Connection(dtu, writer, peer)
        old = self._connections.get(dtu)
        self._connections[dtu] = conn
        self._counters["registrations"] += 1
        if old is not None:
            self._counters["replaced"] += 1
            old.replaced = True
            old.writer.close()
            log.warning("DTU %s: new connection from %s replaces %s", dtu, peer, old.peer)
            self._event("replaced", dtu, f"new connection from {peer} replaced {old.peer}")
        else:
            log.info("DTU %s: registered from %s", dtu, peer)
            self._event("online", dtu, f"registration from {peer}")
        self._changed.set()
        reason = "connection closed by the DTU"
        try:
            rest = buf[used:]
            while True:
                packet, beats = self.registration.strip(rest)
                self._counters["heartbeats"] += beats
                if packet and not conn.feed(packet):
                    self._counters["bytes_unclaimed"] += len(packet)
                rest = await self._read(reader, last) or b""
                if not rest:
                    if conn.replaced:
                        reason = "replaced"
                    elif conn.hung_up:
                        reason = conn.hung_up
                    elif monotonic() - last >= self.idle_timeout:
                        reason = f"nothing received for {self.idle_timeout:g} s"
                    return
                last = monotonic()
        finally:
            conn.end(reason)
            if self._connections.get(dtu) is conn:
                del self._connections[dtu]
                log.info("DTU %s: offline: %s", dtu, reason)
                self._event("offline", dtu, reason)


class DialInBus(Bus):
    """The line behind one dial-in DTU, keyed by its registration id.

    Connecting waits up to ``connect_timeout`` for the DTU to be registered; a DTU that
    reconnects is a dropped link, and the next transaction uses the new connection.
    Keyword arguments are those of :class:`~drivers.bus.Bus` (defaults for a 4G round
    trip: ``td`` 3 s, ``tb`` 0.5 s, ``connect_timeout`` 30 s).
    """

    def __init__(self, listener: DialInListener, dtu: str,
                 **options: Unpack[BusOptions]) -> None:
        if not dtu:
            raise ValueError("DTU id is empty")
        options.setdefault("td", 3.0)
        options.setdefault("connect_timeout", 30.0)
        super().__init__(name=f"dtu://{dtu}", **options)
        self.listener = listener
        self.dtu = dtu
        self._lazy_open = False

    async def open(self, *, lazy: bool = False) -> bool:
        """As :meth:`Bus.open`; ``lazy`` does not wait for a DTU that is not registered
        (a daemon starting with many DTUs offline would wait for each in turn)."""
        self._lazy_open = lazy
        try:
            return await super().open(lazy=lazy)
        finally:
            self._lazy_open = False

    async def _connect(self) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
        wait = 0.0 if self._lazy_open else self.connect_timeout * 0.9
        return await self.listener.wait_connected(self.dtu, wait)


__all__ = ["DialInBus", "DialInListener", "DtuEvent", "RegistrationFormat"]

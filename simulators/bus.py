"""An RS-485 bus of simulated DL/T645 meters behind a TCP port and/or a pseudo-terminal.

Like a serial server or concentrator port: every accepted TCP connection (and the pty)
is one half-duplex line that all meters hear.  Requests and replies take their air time
(11 bits a byte at the line's baud), a meter starts replying Td after the request ends,
and link faults can be injected per meter:

``dead``           never answers (does not even act on the request)
``garble``         one bit of the reply flipped, so its checksum fails
``slow``           replies ``slow_delay`` seconds after the request instead of Td
``truncate``       only the first part of the reply is sent
``wrong-address``  the reply carries another meter's address

Faults are written ``kind:ADDRESS[:probability]`` separated by commas, ``*`` for every
meter, e.g. ``dead:000000000003,slow:000000000005,garble:*:0.05``.  ``ADDRESS@DI`` limits a
fault to the requests of one data identifier (hex, as in the catalogue), e.g.
``garble:000000000001@02010100`` garbles that meter's replies to voltage A only.  A
Modbus RTU meter on the line is addressed by its unit id (``dead:7``), ``@`` then names
the first register of a request, in hex; ``dead`` and ``garble`` apply to it.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import random
import signal
import tty
from collections import Counter
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from enum import StrEnum
from types import TracebackType
from typing import Any

from protocols.dlt645 import Frame, FrameExtractor, build_frame
from protocols.quantities import BROADCAST_ADDRESS, normalise_address

from .dlt645 import SimulatedMeter
from .modbus import SimulatedModbusMeter, rtu_reply, rtu_request

_log = logging.getLogger(__name__)

BITS_PER_BYTE = 11  # start + 8 data + even parity + stop
_CHUNK_SECONDS = 0.01  # pace replies in chunks of about this much air time
_WRITE_ADDRESS = (0x15, 0x0A)  # functions that may change a meter's address


class FaultKind(StrEnum):
    DEAD = "dead"
    GARBLE = "garble"
    SLOW = "slow"
    TRUNCATE = "truncate"
    WRONG_ADDRESS = "wrong-address"


@dataclass(frozen=True, slots=True)
class Fault:
    """``kind`` applied to the meter at ``address`` (``*``: every meter) with ``probability``."""

    kind: FaultKind
    address: str
    probability: float = 1.0
    di: int | None = None  # only requests of this data identifier (None: every request)


def parse_faults(text: str) -> tuple[Fault, ...]:
    """Faults from ``kind:ADDRESS[:probability],...``; ValueError says what is wrong."""
    faults: list[Fault] = []
    for part in (p.strip() for p in text.split(",")):
        if not part:
            continue
        fields = part.split(":")
        if len(fields) not in (2, 3):
            raise ValueError(f"fault {part!r}: expected kind:ADDRESS[:probability]")
        try:
            kind = FaultKind(fields[0].strip().lower())
        except ValueError:
            kinds = ", ".join(k.value for k in FaultKind)
            raise ValueError(f"fault {part!r}: unknown kind {fields[0]!r} ({kinds})") from None
        address, at, di_text = fields[1].strip().partition("@")
        di: int | None = None
        if at:
            try:
                di = int(di_text.strip(), 16)
            except ValueError:
                raise ValueError(f"fault {part!r}: DI {di_text!r} is not hexadecimal") from None
            if not 0 <= di <= 0xFFFFFFFF:
                raise ValueError(f"fault {part!r}: DI {di_text!r} is longer than 4 bytes")
        if address != "*":
            address = normalise_address(address)
            if "A" in address:
                raise ValueError(f"fault {part!r}: a fault names one meter, not a wildcard")
        probability = 1.0
        if len(fields) == 3:
            try:
                probability = float(fields[2])
            except ValueError:
                raise ValueError(f"fault {part!r}: probability {fields[2]!r} "
                                 "is not a number") from None
            if not 0.0 <= probability <= 1.0:
                raise ValueError(f"fault {part!r}: probability must be within 0-1")
        faults.append(Fault(kind, address, probability, di))
    return tuple(faults)


@dataclass(slots=True)
class BusStats:
    """What the bus saw; ``faults`` counts each fault actually applied."""

    connections: int = 0
    frames: int = 0  # valid frames heard on the lines
    requests: int = 0  # addressed requests
    broadcasts: int = 0
    replies: int = 0  # replies put on a line (faulty ones included)
    unanswered: int = 0  # requests no meter answered
    collisions: int = 0  # requests several meters answered at once (wildcard address)
    deaf: int = 0  # frames a meter missed because it listens at another baud
    bytes_in: int = 0
    bytes_out: int = 0
    bytes_dropped: int = 0  # pty output nobody read
    garbage_bytes: int = 0
    bad_checksums: int = 0
    faults: Counter[str] = field(default_factory=Counter)

    def as_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {k: getattr(self, k) for k in self.__slots__ if k != "faults"}
        out["faults"] = dict(self.faults)
        return out


async def _sleep_until(deadline: float) -> None:
    loop = asyncio.get_running_loop()
    # asyncio may wake a timer a hair early; loop until the deadline has really passed.
    while (delay := deadline - loop.time()) > 0:
        await asyncio.sleep(delay)


class _Line:
    """One half-duplex line: a frame extractor for what the master sends, paced output."""

    def __init__(self, server: BusServer, name: str, write: Callable[[bytes], None]) -> None:
        self.server = server
        self.name = name
        self._write = write
        self.extractor = FrameExtractor()
        self.busy_until = 0.0  # loop time at which the line falls silent
        self._last_rx = float("-inf")
        self._tx_lock = asyncio.Lock()
        self._tasks: set[asyncio.Task[None]] = set()
        self._seen_garbage = 0
        self._seen_bad = 0

    def received(self, data: bytes) -> None:
        server = self.server
        loop = asyncio.get_running_loop()
        now = loop.time()
        server.stats.bytes_in += len(data)
        if self.extractor.pending and now - self._last_rx > server.idle_reset:
            # A meter drops a partial frame after a silence longer than Tb.
            server.stats.garbage_bytes += self.extractor.pending
            self.extractor.clear()
        self._last_rx = now
        # The request occupies the line for its own air time; meters hear its end then.
        start = max(now, self.busy_until)
        heard_at = start + len(data) * server.byte_time if server.request_airtime else now
        self.busy_until = heard_at
        if server.modbus and len(data) == rtu_request(data, server.modbus) > 0:
            # A Modbus RTU request on a mixed line (masters write one frame at a time).
            server.stats.requests += 1
            unit, first = f"{data[0]:012d}", int.from_bytes(data[2:4], "big")
            if server._hit(unit, FaultKind.DEAD, first):
                server.stats.unanswered += 1
                return
            reply = bytearray(rtu_reply(server.modbus[data[0]], bytes(data)))
            if server._hit(unit, FaultKind.GARBLE, first):
                # A bit of the function code or the data: the CRC fails.
                reply[server._rng.randrange(1, len(reply) - 2)] ^= 1 << server._rng.randrange(8)
            server.stats.replies += 1
            self.send(bytes(reply), heard_at + server.td)
            return
        self.extractor.feed(data)
        for frame in self.extractor:
            server.dispatch(self, frame, heard_at)
        stats = self.extractor.stats
        server.stats.garbage_bytes += stats.garbage_bytes - self._seen_garbage
        server.stats.bad_checksums += stats.bad_checksums - self._seen_bad
        self._seen_garbage, self._seen_bad = stats.garbage_bytes, stats.bad_checksums

    def send(self, raw: bytes, at: float) -> None:
        """Put ``raw`` on the line starting at loop time ``at`` (or when the line is free)."""
        task = asyncio.get_running_loop().create_task(self._transmit(raw, at))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _transmit(self, raw: bytes, at: float) -> None:
        await _sleep_until(at)
        async with self._tx_lock:  # one talker at a time
            loop = asyncio.get_running_loop()
            byte_time = self.server.byte_time
            start = max(loop.time(), self.busy_until)
            self.busy_until = start + len(raw) * byte_time
            chunk = max(1, int(_CHUNK_SECONDS / byte_time))
            for i in range(0, len(raw), chunk):
                end = min(len(raw), i + chunk)
                # A byte is written when its last bit would have left the wire.
                await _sleep_until(start + end * byte_time)
                self._write(raw[i:end])
                self.server.stats.bytes_out += end - i

    def close(self) -> None:
        for task in list(self._tasks):
            task.cancel()


class BusServer:
    """N simulated meters on one RS-485 bus, reachable over TCP and/or a pty.

    ``async with BusServer(meters, port=0) as bus:`` then connect to ``bus.port``
    (or open ``bus.pty_path`` with ``pty=True``).  ``host=None`` serves the pty only.
    ``td`` is the reply delay in seconds, ``faults`` a :func:`parse_faults` string or
    :class:`Fault` objects, ``seed`` drives the fault dice.
    """

    def __init__(
        self,
        meters: Iterable[SimulatedMeter],
        *,
        host: str | None = "127.0.0.1",
        port: int = 0,
        pty: bool = False,
        baud: int = 2400,
        td: float = 0.02,
        faults: Iterable[Fault] | str = (),
        slow_delay: float = 2.0,
        reply_preamble: int = 4,
        request_airtime: bool = True,
        idle_reset: float = 0.5,
        seed: int = 0,
        modbus: Iterable[SimulatedModbusMeter] = (),
    ) -> None:
        self.meters = list(meters)
        # Modbus RTU meters on the same line (a mixed RS-485 bus), by unit id.
        self.modbus = {m.unit: m for m in modbus}
        addresses = [m.address for m in self.meters]
        if len(set(addresses)) != len(addresses):
            dupes = sorted({a for a in addresses if addresses.count(a) > 1})
            raise ValueError(f"duplicate meter addresses: {', '.join(dupes)}")
        if host is None and not pty:
            raise ValueError("nothing to serve: give a TCP host or pty=True")
        if baud <= 0 or td < 0 or slow_delay < 0:
            raise ValueError("baud must be positive, td and slow_delay not negative")
        # The meters are installed on this line: they listen at its rate (until a 17 / 0C
        # request moves one elsewhere).
        for m in self.meters:
            m.baud = baud
        self.host = host
        self.port = port
        self.use_pty = pty
        self.baud = baud
        self.td = td
        self.faults = parse_faults(faults) if isinstance(faults, str) else tuple(faults)
        self.slow_delay = slow_delay
        self.reply_preamble = reply_preamble
        self.request_airtime = request_airtime
        self.idle_reset = idle_reset
        self.stats = BusStats()
        self.pty_path: str | None = None
        self._rng = random.Random(f"{seed}/faults")
        self._index: dict[str, SimulatedMeter] = {}
        self._reindex()
        self._server: asyncio.Server | None = None
        self._lines: set[_Line] = set()
        self._clients: set[asyncio.Task[None]] = set()
        self._writers: set[asyncio.StreamWriter] = set()
        self._pty_fds: tuple[int, int] | None = None

    @property
    def byte_time(self) -> float:
        """Seconds one byte occupies the line."""
        return BITS_PER_BYTE / self.baud

    def meter(self, address: str) -> SimulatedMeter:
        """The meter at ``address``; KeyError if none."""
        return self._index[normalise_address(address)]

    # ---- lifecycle -------------------------------------------------------------------------

    async def start(self) -> None:
        if self.host is not None:
            self._server = await asyncio.start_server(self._client, self.host, self.port)
            sock = self._server.sockets[0].getsockname()
            self.port = int(sock[1])
        if self.use_pty:
            self._open_pty()

    async def stop(self) -> None:
        if self._server is not None:
            self._server.close()
        # Closing a transport ends its line task (its read sees EOF); cancelling it instead
        # makes asyncio's stream callback log the CancelledError.
        for writer in list(self._writers):
            writer.close()
        if self._clients:
            _, pending = await asyncio.wait(set(self._clients), timeout=2.0)
            for task in pending:
                task.cancel()
        for line in list(self._lines):
            line.close()
        self._lines.clear()
        if self._server is not None:
            await self._server.wait_closed()
            self._server = None
        if self._pty_fds is not None:
            master, slave = self._pty_fds
            asyncio.get_running_loop().remove_reader(master)
            os.close(master)
            os.close(slave)
            self._pty_fds = None

    async def __aenter__(self) -> BusServer:
        await self.start()
        return self

    async def __aexit__(self, exc_type: type[BaseException] | None,
                        exc: BaseException | None, tb: TracebackType | None) -> None:
        await self.stop()

    # ---- transports ------------------------------------------------------------------------

    async def _client(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._clients.add(task)
        self._writers.add(writer)
        self.stats.connections += 1
        peer = writer.get_extra_info("peername")

        def write(data: bytes) -> None:
            if not writer.is_closing():
                writer.write(data)

        line = _Line(self, f"tcp {peer}", write)
        self._lines.add(line)
        _log.info("line open: %s", line.name)
        try:
            while data := await reader.read(4096):
                line.received(data)
        except ConnectionError:
            pass  # the master went away: the line closes
        finally:
            line.close()
            self._lines.discard(line)
            self._writers.discard(writer)
            self._clients.discard(task)
            writer.close()
            with contextlib.suppress(Exception):
                await writer.wait_closed()
            _log.info("line closed: %s", line.name)

    def _open_pty(self) -> None:
        master, slave = os.openpty()
        # Raw: no echo, no line editing, no CR/LF translation; bytes pass as they are.
        tty.setraw(slave)
        os.set_blocking(master, False)
        self._pty_fds = (master, slave)  # holding the slave open keeps the master readable
        self.pty_path = os.ttyname(slave)

        def write(data: bytes) -> None:
            try:
                written = os.write(master, data)
            except OSError:  # nobody reads the pty and its buffer is full: bytes are lost
                written = 0
            self.stats.bytes_dropped += len(data) - written

        line = _Line(self, f"pty {self.pty_path}", write)
        self._lines.add(line)

        def readable() -> None:
            try:
                data = os.read(master, 4096)
            except OSError:  # nothing to read after all (EAGAIN), or the pty is going away
                return
            if data:
                line.received(data)

        asyncio.get_running_loop().add_reader(master, readable)

    # ---- the bus ---------------------------------------------------------------------------

    def _reindex(self) -> None:
        self._index = {m.address: m for m in self.meters}

    def _targets(self, address: str) -> list[SimulatedMeter]:
        if address == BROADCAST_ADDRESS or "A" in address:
            return self.meters
        meter = self._index.get(address)
        return [meter] if meter is not None else []

    def _hit(self, address: str, kind: FaultKind, request: Frame | int | None = None) -> bool:
        """Does fault ``kind`` strike the meter at ``address`` (answering ``request``: a
        DL/T645 frame, or the first register a Modbus request reads)?"""
        for fault in self.faults:
            if fault.kind is kind and fault.address in ("*", address) \
                    and (fault.di is None or _asks(request, fault.di)) \
                    and self._rng.random() < fault.probability:
                self.stats.faults[kind.value] += 1
                return True
        return False

    def dispatch(self, line: _Line, frame: Frame, heard_at: float) -> None:
        """Every meter hears ``frame`` (ended at loop time ``heard_at``); answers go on ``line``."""
        self.stats.frames += 1
        if frame.is_reply:
            return
        broadcast = frame.address == BROADCAST_ADDRESS
        answers: list[tuple[SimulatedMeter, Frame]] = []
        for meter in self._targets(frame.address):
            if meter.baud != self.baud:
                self.stats.deaf += 1  # a UART at another rate hears only noise
                continue
            if self._hit(meter.address, FaultKind.DEAD, frame):
                continue
            reply = meter.handle(frame)
            if reply is not None and not broadcast:
                answers.append((meter, reply))
        if frame.function in _WRITE_ADDRESS:
            self._reindex()
        if broadcast:
            self.stats.broadcasts += 1
            return
        self.stats.requests += 1
        if not answers:
            self.stats.unanswered += 1
            _log.debug("%s: %s fn %02X unanswered", line.name, frame.address, frame.function)
            return
        if len(answers) > 1:
            # Several drivers on the wire at once: the master hears a mash of them.
            self.stats.collisions += 1
            raws = [build_frame(r, preamble=self.reply_preamble) for _, r in answers]
            line.send(_collide(raws), heard_at + self.td)
            return
        meter, reply = answers[0]
        raw, start = self._faulty(meter.address, reply, heard_at, frame)
        self.stats.replies += 1
        _log.debug("%s: %s fn %02X -> %d bytes", line.name, meter.address, frame.function,
                   len(raw))
        line.send(raw, start)

    def _faulty(self, address: str, reply: Frame, heard_at: float,
                request: Frame | None = None) -> tuple[bytes, float]:
        """The reply's bytes and start time after the faults that strike this time."""
        if self._hit(address, FaultKind.WRONG_ADDRESS, request):
            reply = Frame(_other_address(address), reply.control, reply.data)
        raw = bytearray(build_frame(reply, preamble=self.reply_preamble))
        body = self.reply_preamble  # index of the first 68
        if self._hit(address, FaultKind.GARBLE, request):
            # The control byte or a data byte, never L: the frame still ends where it
            # should, and only its checksum is wrong.
            positions = [body + 8, *range(body + 10, len(raw) - 2)]
            raw[self._rng.choice(positions)] ^= 1 << self._rng.randrange(8)
        if self._hit(address, FaultKind.TRUNCATE, request):
            raw = raw[: self._rng.randint(body + 1, len(raw) - 1)]
        start = heard_at + self.td
        if self._hit(address, FaultKind.SLOW, request):
            start = heard_at + self.slow_delay
        return bytes(raw), start


def _asks(request: Frame | int | None, di: int) -> bool:
    """Does ``request`` (a read, follow-up or write) name data identifier ``di``?"""
    if request is None or isinstance(request, int):
        return request == di  # Modbus: the request's first register
    data = request.data
    # 2007 DIs are 4 bytes, 1997 DIs 2, low byte first, at the start of the data field.
    return (len(data) >= 4 and int.from_bytes(data[:4], "little") == di) \
        or (di <= 0xFFFF and len(data) >= 2 and int.from_bytes(data[:2], "little") == di)


def _other_address(address: str) -> str:
    return f"{(int(address) + 1) % 10**12:012d}" if address.isdigit() else "000000000000"


def _collide(raws: list[bytes]) -> bytes:
    # RS-485 idles at mark (1); where drivers disagree, the result is taken as 0.
    n = max(len(r) for r in raws)
    out = bytearray(b"\xff" * n)
    for r in raws:
        for i, b in enumerate(r):
            out[i] &= b
    return bytes(out)


def serve(server: BusServer, *, ready: Callable[[BusServer], None] | None = None) -> BusStats:
    """Run ``server`` until SIGINT or SIGTERM (blocking); ``ready`` is called once it listens."""

    async def main() -> BusStats:
        loop = asyncio.get_running_loop()
        stop = asyncio.Event()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, stop.set)
        async with server:
            if ready is not None:
                ready(server)
            await stop.wait()
        return server.stats

    return asyncio.run(main())

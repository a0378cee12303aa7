"""A small scriptable DL/T645 meter for driver tests, built only from protocols/.

It is deliberately not the simulator: every misbehaviour a test needs (silence, slow or
split replies, garbage, wrong address or DI, dropped connections, follow-up frames) is a
switch on :class:`FakeMeter`.  It serves over TCP (:func:`tcp_meter`, or
:class:`ThreadedTcpMeter` for synchronous callers such as click's CliRunner) and over a
pseudo-terminal (:func:`pty_meter`).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import threading
import time
import tty
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

from protocols.dlt645 import (
    AbnormalReply,
    Ack,
    DLT645Error,
    FrameExtractor,
    Message,
    ReadAddressReply,
    ReadAddressRequest,
    ReadFollowUpReply,
    ReadFollowUpRequest,
    ReadReply,
    ReadRequest,
    RemoteControlRequest,
    TimeSyncRequest,
    Version,
    WriteRequest,
    build_frame,
    by_name,
    decode_message,
    encode_value,
    lookup,
)


@dataclass
class Sleep:
    seconds: float


@dataclass
class Send:
    data: bytes


@dataclass
class Drop:
    pass


Action = Sleep | Send | Drop


@dataclass
class Received:
    message: Message
    at: float  # monotonic time the request's last byte arrived


@dataclass
class FakeMeter:
    address: str = "000000000123"
    version: Version = Version.V2007
    values: dict[int, bytes] = field(default_factory=dict)  # DI -> value bytes (no +33H)
    abnormal: dict[int, int] = field(default_factory=dict)  # DI -> error byte
    follow_ups: dict[int, list[bytes]] = field(default_factory=dict)  # DI -> body per frame
    silent: set[int] = field(default_factory=set)  # DIs never answered
    drop_on: set[int] = field(default_factory=set)  # DIs that make it hang up, no reply
    drop_after_reply: bool = False  # hang up after every reply
    reply_address: str | None = None  # answer as another meter
    reply_di: dict[int, int] = field(default_factory=dict)  # answer DI x with DI y
    delay: float = 0.0  # before each reply (Td)
    delays: dict[int, float] = field(default_factory=dict)  # per DI
    split_gap: float | None = None  # pause in the middle of each reply (Tb)
    garbage: bytes = b""  # sent before each reply
    preamble: int = 2
    hook: Callable[[Message], list[Action] | None] | None = None
    received: list[Received] = field(default_factory=list)
    replied_at: list[float] = field(default_factory=list)
    connections: int = 0
    undecodable: int = 0  # request frames that did not decode

    def set(self, name: str, value: Any) -> None:
        item = by_name(name, self.version)
        self.values[item.di] = encode_value(item, value)

    def set_di(self, di: int, value: Any) -> None:
        item = lookup(di, self.version)
        assert item is not None, f"{di:08X}"
        self.values[di] = encode_value(item, value)

    @property
    def requests(self) -> list[Message]:
        return [r.message for r in self.received]

    def _frame(self, message: Message) -> bytes:
        return build_frame(message.to_frame(), preamble=self.preamble)

    def _reply(self, message: Message, di: int | None = None) -> list[Action]:
        wire = self.garbage + self._frame(message)
        actions: list[Action] = []
        delay = self.delays.get(di, self.delay) if di is not None else self.delay
        if delay:
            actions.append(Sleep(delay))
        if self.split_gap is not None:
            half = len(wire) // 2
            actions += [Send(wire[:half]), Sleep(self.split_gap), Send(wire[half:])]
        else:
            actions.append(Send(wire))
        if self.drop_after_reply:
            actions.append(Drop())
        return actions

    def respond(self, request: Message) -> list[Action]:
        if self.hook is not None:
            scripted = self.hook(request)
            if scripted is not None:
                return scripted
        me = self.reply_address or self.address
        v = request.version
        if isinstance(request, TimeSyncRequest):
            return []  # broadcast: never answered
        if request.address not in (self.address, "AAAAAAAAAAAA"):
            return []  # not for us
        if isinstance(request, ReadAddressRequest):
            return self._reply(ReadAddressReply(address=me, meter_address=self.address))
        if isinstance(request, ReadRequest):
            di = request.di
            if di in self.drop_on:
                return [Drop()]
            if di in self.silent:
                return []
            if di in self.abnormal:
                return self._reply(AbnormalReply(address=me, version=v,
                                                 request_function=request.function,
                                                 error=self.abnormal[di]), di)
            answer_di = self.reply_di.get(di, di)
            if di in self.follow_ups:
                first = self.follow_ups[di][0]
                return self._reply(ReadReply(address=me, version=v, di=answer_di, body=first,
                                             follow_up=True), di)
            if di not in self.values:
                return self._reply(AbnormalReply(address=me, version=v,
                                                 request_function=request.function,
                                                 error=0x02), di)
            return self._reply(ReadReply(address=me, version=v, di=answer_di,
                                         body=self.values[di]), di)
        if isinstance(request, ReadFollowUpRequest):
            parts = self.follow_ups.get(request.di, [])
            seq = request.seq
            if not 0 < seq < len(parts):
                return self._reply(AbnormalReply(address=me, version=v,
                                                 request_function=request.function, error=0x02))
            return self._reply(ReadFollowUpReply(
                address=me, version=v, di=request.di, body=parts[seq],
                seq=seq if v is Version.V2007 else None, follow_up=seq < len(parts) - 1))
        if isinstance(request, (RemoteControlRequest, WriteRequest)):
            return self._reply(Ack(address=me, version=v, ack_function=request.function))
        return []


class _Line:
    """What the serving loop needs from a transport."""

    async def recv(self) -> bytes:
        raise NotImplementedError

    async def send(self, data: bytes) -> None:
        raise NotImplementedError

    def hang_up(self) -> None:
        raise NotImplementedError


async def _serve(meter: FakeMeter, line: _Line) -> None:
    """Reader and worker: requests are timestamped on arrival, answered in order."""
    queue: asyncio.Queue[Received | None] = asyncio.Queue()
    extractor = FrameExtractor(lambda _a, control: not control & 0x80)

    async def reader() -> None:
        try:
            while data := await line.recv():
                extractor.feed(data)
                for frame in extractor:
                    try:
                        message = decode_message(frame)
                    except DLT645Error:
                        meter.undecodable += 1
                        continue
                    got = Received(message, time.monotonic())
                    meter.received.append(got)
                    queue.put_nowait(got)
        except (OSError, ConnectionError):
            pass
        finally:
            queue.put_nowait(None)

    reading = asyncio.create_task(reader())
    try:
        while (got := await queue.get()) is not None:
            for action in meter.respond(got.message):
                if isinstance(action, Sleep):
                    await asyncio.sleep(action.seconds)
                elif isinstance(action, Send):
                    await line.send(action.data)
                else:
                    line.hang_up()
                    return
            meter.replied_at.append(time.monotonic())
    finally:
        reading.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await reading


class _TcpLine(_Line):
    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader, self.writer = reader, writer

    async def recv(self) -> bytes:
        return await self.reader.read(4096)

    async def send(self, data: bytes) -> None:
        self.writer.write(data)
        await self.writer.drain()

    def hang_up(self) -> None:
        self.writer.close()


@contextlib.asynccontextmanager
async def tcp_meter(meter: FakeMeter) -> AsyncIterator[int]:
    """Serve ``meter`` on a loopback port; yields the port."""
    tasks: set[asyncio.Task[Any]] = set()

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        meter.connections += 1
        task = asyncio.current_task()
        assert task is not None
        tasks.add(task)
        try:
            await _serve(meter, _TcpLine(reader, writer))
        except asyncio.CancelledError:
            pass  # shutting down; asyncio's stream callback would log a cancelled handler
        finally:
            writer.close()

    server = await asyncio.start_server(handle, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    try:
        yield port
    finally:
        server.close()
        for t in tasks:
            t.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        await server.wait_closed()


class _PtyLine(_Line):
    def __init__(self, fd: int) -> None:
        self.fd = fd
        self.queue: asyncio.Queue[bytes] = asyncio.Queue()
        loop = asyncio.get_running_loop()
        loop.add_reader(fd, self._readable)

    def _readable(self) -> None:
        try:
            data = os.read(self.fd, 4096)
        except OSError:
            data = b""
        if not data:
            asyncio.get_running_loop().remove_reader(self.fd)
        self.queue.put_nowait(data)

    async def recv(self) -> bytes:
        return await self.queue.get()

    async def send(self, data: bytes) -> None:
        os.write(self.fd, data)

    def hang_up(self) -> None:
        pass


@dataclass
class Pty:
    path: str  # the slave device the bus opens
    master: int
    slave: int

    def close_master(self) -> None:
        """Hang up the line: the bus side then gets an I/O error."""
        with contextlib.suppress(OSError, ValueError):
            asyncio.get_running_loop().remove_reader(self.master)
        with contextlib.suppress(OSError):
            os.close(self.master)
        self.master = -1


@contextlib.asynccontextmanager
async def pty_meter(meter: FakeMeter) -> AsyncIterator[Pty]:
    """Serve ``meter`` on the master side of a pseudo-terminal; yields the slave's path."""
    master, slave = os.openpty()
    tty.setraw(master)
    tty.setraw(slave)  # no echo, no line editing even before pyserial configures it
    os.set_blocking(master, False)
    pty = Pty(os.ttyname(slave), master, slave)
    task = asyncio.create_task(_serve(meter, _PtyLine(master)))
    try:
        yield pty
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
        if pty.master >= 0:
            pty.close_master()
        os.close(slave)


class ThreadedTcpMeter:
    """:func:`tcp_meter` on its own event loop in a thread, for synchronous tests."""

    def __init__(self, meter: FakeMeter) -> None:
        self.meter = meter
        self.port = 0
        self._ready = threading.Event()
        self._stop: asyncio.Event | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread = threading.Thread(target=self._run, name="fake-meter", daemon=True)

    def _run(self) -> None:
        asyncio.run(self._main())

    async def _main(self) -> None:
        self._loop = asyncio.get_running_loop()
        self._stop = asyncio.Event()
        async with tcp_meter(self.meter) as port:
            self.port = port
            self._ready.set()
            await self._stop.wait()

    def __enter__(self) -> ThreadedTcpMeter:
        self._thread.start()
        if not self._ready.wait(5):
            raise RuntimeError("fake meter did not start")
        return self

    def __exit__(self, *exc: object) -> None:
        assert self._loop is not None and self._stop is not None
        self._loop.call_soon_threadsafe(self._stop.set)
        self._thread.join(5)


@contextlib.contextmanager
def threaded_tcp_meter(meter: FakeMeter) -> Iterator[int]:
    with ThreadedTcpMeter(meter) as server:
        yield server.port

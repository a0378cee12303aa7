"""Replies that arrive while the event loop is busy (a GC pause, a busy daemon) count.

The servers run in a thread with plain sockets, so they answer while the test blocks
the client's loop for longer than Td or Tb.  Before the fix the reply sat in the socket
(or in the stream pump) while the timer fired first: NoReply for a reply that had come.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
import struct
import threading
import time
from collections.abc import Callable, Iterator

import pytest

from drivers.bus import Bus, Link
from drivers.errors import NoReply
from drivers.modbus import ModbusSession
from drivers.tcp import TcpBus

Answer = Callable[[socket.socket, bytes], bytes]  # (connection, bytes so far) -> rest


@contextlib.contextmanager
def thread_server(answer: Answer) -> Iterator[int]:
    """A TCP server in a thread; ``answer`` consumes requests and replies on its own."""
    listener = socket.create_server(("127.0.0.1", 0))
    listener.settimeout(0.2)
    stop = threading.Event()

    def serve() -> None:
        while not stop.is_set():
            try:
                conn, _ = listener.accept()
            except TimeoutError:
                continue
            conn.settimeout(0.2)
            conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            pending = b""
            with conn:
                while not stop.is_set():
                    try:
                        data = conn.recv(4096)
                    except TimeoutError:
                        continue
                    except OSError:
                        break
                    if not data:
                        break
                    pending = answer(conn, pending + data)

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    try:
        yield listener.getsockname()[1]
    finally:
        stop.set()
        thread.join(5)
        listener.close()


def lines(*, split: float = 0.0) -> Answer:
    """``Qn\\n`` is answered ``Rn\\n`` at once; with ``split``, ``R`` alone, the rest
    ``split`` seconds later."""

    def answer(conn: socket.socket, pending: bytes) -> bytes:
        while b"\n" in pending:
            line, pending = pending.split(b"\n", 1)
            reply = b"R" + line[1:] + b"\n"
            if split:
                conn.sendall(reply[:1])
                time.sleep(split)
                reply = reply[1:]
            conn.sendall(reply)
        return pending

    return answer


class StreamTcpBus(TcpBus):
    """A TcpBus over a reader/writer pair: the path of serial, dial-in and forwarded
    buses (a pump task moves the bytes)."""

    async def _connect(self) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
        return await asyncio.open_connection(self.host, self.port)

    async def _open_link(self) -> Link:
        return await Bus._open_link(self)


def ends_with_newline() -> Callable[[bytes], bool]:
    data = bytearray()

    def complete(chunk: bytes) -> bool:
        data.extend(chunk)
        return data.endswith(b"\n")

    return complete


async def blocked_during_the_wait(bus: Bus, request: bytes, block: float) -> bytes:
    """The transaction's reply, with the loop blocked ``block`` s once it waits."""
    before = bus.transactions
    task = asyncio.create_task(bus.transaction(request, ends_with_newline()))
    while bus.transactions == before:  # until the request is out and the reply awaited
        await asyncio.sleep(0)
    time.sleep(block)  # the loop is stuck; the server thread answers meanwhile
    return await task


BUSES = [pytest.param(TcpBus, id="tcp"), pytest.param(StreamTcpBus, id="stream")]


@pytest.mark.parametrize("kind", BUSES)
async def test_a_reply_that_came_while_the_loop_was_blocked_beyond_td_is_taken(
        kind: type[TcpBus]) -> None:
    with thread_server(lines()) as port:
        async with kind("127.0.0.1", port, td=0.1, tb=0.1) as bus:
            for n in range(2):
                assert await blocked_during_the_wait(bus, b"Q%d\n" % n, 0.4) == b"R%d\n" % n
            assert bus.timeouts == 0
            assert await bus.transaction(b"Q9\n", ends_with_newline()) == b"R9\n"


@pytest.mark.parametrize("kind", BUSES)
async def test_the_rest_of_a_reply_that_came_while_the_loop_was_blocked_beyond_tb_is_taken(
        kind: type[TcpBus]) -> None:
    # The first byte comes at once, the rest 50 ms later, inside a 0.5 s stall > Tb.
    with thread_server(lines(split=0.05)) as port:
        async with kind("127.0.0.1", port, td=1.0, tb=0.1) as bus:
            complete = ends_with_newline()
            before = bus.transactions
            task = asyncio.create_task(bus.transaction(b"Q1\n", complete))
            while bus.transactions == before:
                await asyncio.sleep(0)
            # Let the first byte in, then block past Tb while the rest arrives.
            while bus.bytes_in == 0:
                await asyncio.sleep(0.001)
            time.sleep(0.5)
            assert await task == b"R1\n"
            assert bus.timeouts == 0


@pytest.mark.parametrize("kind", BUSES)
async def test_a_reply_that_really_is_late_still_times_out(kind: type[TcpBus]) -> None:
    answered: list[bytes] = []

    def late(conn: socket.socket, pending: bytes) -> bytes:
        if not answered:  # the first reply only
            time.sleep(0.3)
        answered.append(pending)
        return lines()(conn, pending)

    with thread_server(late) as port:
        async with kind("127.0.0.1", port, td=0.1, tb=0.1, guard=0.5) as bus:
            with pytest.raises(NoReply):
                await bus.transaction(b"Q1\n", ends_with_newline())
            assert bus.timeouts == 1
            # The late R1 is swallowed before the next request, never taken as its reply.
            assert await bus.transaction(b"Q2\n", ends_with_newline()) == b"R2\n"


# ---- Modbus TCP, 247 units on one connection ---------------------------------------------

def words(unit: int) -> list[int]:
    return [(1000 * unit + k) & 0xFFFF for k in range(10)]


def mbap_server(*, chunks: int = 1) -> Answer:
    """Read holding registers for units 1-247 (the unit's own values); each reply goes
    out in ``chunks`` pieces (1: whole)."""

    def answer(conn: socket.socket, pending: bytes) -> bytes:
        while len(pending) >= 12:
            tid, _, length, unit, fn, start, count = struct.unpack(">HHHBBHH", pending[:12])
            pending = pending[6 + length:]
            values = words(unit)[start:start + count]
            body = bytes((fn, 2 * count)) + struct.pack(f">{count}H", *values)
            reply = struct.pack(">HHHB", tid, 0, len(body) + 1, unit) + body
            step = -(-len(reply) // chunks)
            for i in range(0, len(reply), step):
                conn.sendall(reply[i:i + step])
                if chunks > 1:
                    time.sleep(0.0005)
        return pending

    return answer


@pytest.mark.parametrize("chunks", [1, 5])
async def test_247_units_on_one_connection_with_the_loop_blocked_now_and_then(
        chunks: int) -> None:
    """Every unit read right, none failed, though the loop stalls past Td every 40 reads."""
    with thread_server(mbap_server(chunks=chunks)) as port:
        async with TcpBus("127.0.0.1", port, td=0.05, tb=0.05) as bus:
            session = ModbusSession(bus, framing="tcp", retries=0)
            for unit in range(1, 248):
                read = asyncio.create_task(session.read_registers(unit, 3, 0, 10))
                if unit % 40 == 0:
                    before = bus.transactions
                    while bus.transactions == before:
                        await asyncio.sleep(0)
                    time.sleep(0.15)
                assert await read == words(unit), f"unit {unit}"
            counters = session.counters()
            assert counters["requests"] == counters["frames"] == 247
            assert counters["no_replies"] == counters["bad_replies"] == 0
            assert counters["wrong_replies"] == counters["skipped_frames"] == 0
            assert bus.timeouts == 0

"""The protocol-neutral bus: timing, one transaction at a time, flushing, reconnects."""

from __future__ import annotations

import asyncio
import contextlib
import os
import time
import tty
from collections.abc import AsyncIterator, Awaitable, Callable

import pytest

from drivers.bus import Bus
from drivers.errors import BusClosed, IncompleteReply, LinkDown, NoReply
from drivers.serial import SerialBus
from drivers.target import SerialTarget, TcpTarget, bus_from_url, parse_target
from drivers.tcp import TcpBus

Handler = Callable[[asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None]]


@contextlib.asynccontextmanager
async def server(handler: Handler, port: int = 0) -> AsyncIterator[int]:
    tasks: set[asyncio.Task[object]] = set()
    writers: list[asyncio.StreamWriter] = []

    async def run(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        tasks.add(task)
        writers.append(writer)
        try:
            await handler(reader, writer)
        except (asyncio.CancelledError, ConnectionError):
            pass
        finally:
            writer.close()

    srv = await asyncio.start_server(run, "127.0.0.1", port)
    try:
        yield srv.sockets[0].getsockname()[1]
    finally:
        srv.close()
        for w in writers:
            w.close()
        for t in tasks:
            t.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        await srv.wait_closed()


class Line:
    """Completion check for the line protocol of these tests: a reply ends with LF."""

    def __init__(self) -> None:
        self.data = b""

    def __call__(self, chunk: bytes) -> bool:
        self.data += chunk
        return self.data.endswith(b"\n")


def answering(
    *,
    delay: dict[int, float] | None = None,
    split: dict[int, float] | None = None,
    drop: set[int] | None = None,
    log: list[tuple[str, int, float]] | None = None,
    hold: float = 0.0,
) -> Handler:
    """Request ``Qn`` is answered ``Rn``; per n: delay, a pause mid-reply, or a hang-up."""

    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        while line := await reader.readline():
            n = int(line.strip()[1:])
            if log is not None:
                log.append(("in", n, time.monotonic()))
            if drop and n in drop:
                writer.close()
                return
            await asyncio.sleep((delay or {}).get(n, hold))
            reply = f"R{n}\n".encode()
            if split and n in split:
                writer.write(reply[:1])
                await writer.drain()
                await asyncio.sleep(split[n])
                reply = reply[1:]
            writer.write(reply)
            await writer.drain()
            if log is not None:
                log.append(("out", n, time.monotonic()))

    return handler


async def ask(bus: Bus, n: int, **kw: float) -> bytes:
    return await bus.transaction(f"Q{n}\n".encode(), Line(), **kw)


# ---- request / reply ----------------------------------------------------------------------


async def test_transaction_returns_the_reply_and_counts() -> None:
    async with server(answering()) as port, TcpBus("127.0.0.1", port) as bus:
        assert bus.connected and bus.is_open
        assert await ask(bus, 1) == b"R1\n"
        assert await ask(bus, 22) == b"R22\n"
        assert bus.transactions == 2
        assert bus.bytes_out == len(b"Q1\nQ22\n")
        assert bus.bytes_in == len(b"R1\nR22\n")
        assert bus.timeouts == 0 and bus.link_drops == 0 and bus.connects == 1
        assert bus.busy_time > 0
        assert bus.counters()["transactions"] == 2
    assert not bus.is_open and not bus.connected


async def test_reply_timeout_td() -> None:
    async with server(answering(delay={1: 1.0})) as port, \
            TcpBus("127.0.0.1", port, td=0.15, guard=0) as bus:
        started = time.monotonic()
        with pytest.raises(NoReply) as info:
            await ask(bus, 1)
        elapsed = time.monotonic() - started
        assert not isinstance(info.value, IncompleteReply)
        assert isinstance(info.value, TimeoutError)
        assert info.value.timeout == "Td"
        assert 0.14 <= elapsed < 0.5
        assert "Td 150 ms" in str(info.value)
        assert bus.timeouts == 1
        # A per-call td overrides the bus's.
        with pytest.raises(NoReply):
            await ask(bus, 1, td=0.05)


async def test_inter_byte_timeout_tb() -> None:
    async with server(answering(split={1: 0.35, 2: 0.05})) as port, \
            TcpBus("127.0.0.1", port, td=0.5, tb=0.15, guard=0.3) as bus:
        with pytest.raises(IncompleteReply) as info:
            await ask(bus, 1)
        assert info.value.timeout == "Tb"
        assert info.value.received == b"R"
        # A gap shorter than Tb is fine; the tail of reply 1 was swallowed by the guard.
        assert await ask(bus, 2) == b"R2\n"
        assert bus.timeouts == 1
        assert bus.bytes_discarded == len(b"1\n")


async def test_td_counts_from_the_end_of_transmission_on_serial() -> None:
    bus = SerialBus("/dev/null", baud=1200, td=0.5)
    # 20 bytes at 1200 baud 8E1: 11 bits a byte.
    assert bus.tx_time(20) == pytest.approx(20 * 11 / 1200)
    assert SerialBus("/dev/null", parity="N", stopbits=2).bits_per_byte == 11
    assert TcpBus("h", 1, line_baud=2400).tx_time(24) == pytest.approx(0.11)
    assert TcpBus("h", 1).tx_time(24) == 0


async def test_stray_input_is_discarded_before_each_request() -> None:
    async def chatty(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writer.write(b"noise\n")  # unsolicited, before any request
        await writer.drain()
        await answering()(reader, writer)

    async with server(chatty) as port, TcpBus("127.0.0.1", port) as bus:
        await asyncio.sleep(0.05)
        assert await ask(bus, 1) == b"R1\n"
        assert bus.bytes_discarded == len(b"noise\n")


async def test_late_reply_to_a_timed_out_request_never_answers_the_next() -> None:
    # Reply 1 comes 0.3 s late; request 2 must get R2, not the stale R1.
    async with server(answering(delay={1: 0.3})) as port, \
            TcpBus("127.0.0.1", port, td=0.1, guard=0.3) as bus:
        with pytest.raises(NoReply):
            await ask(bus, 1)
        assert await ask(bus, 2) == b"R2\n"
        assert bus.bytes_discarded == len(b"R1\n")


async def test_one_transaction_at_a_time_under_concurrent_callers() -> None:
    log: list[tuple[str, int, float]] = []
    async with server(answering(hold=0.02, log=log)) as port, \
            TcpBus("127.0.0.1", port) as bus:
        replies = await asyncio.gather(*(ask(bus, n) for n in range(8)))
    assert replies == [f"R{n}\n".encode() for n in range(8)]
    # The server saw strictly alternating request, reply, request, reply ...
    assert [kind for kind, _, _ in log] == ["in", "out"] * 8
    for (_, n_in, _), (_, n_out, _) in zip(log[::2], log[1::2], strict=True):
        assert n_in == n_out


async def test_exclusive_holds_the_line_across_transactions() -> None:
    log: list[tuple[str, int, float]] = []
    async with server(answering(hold=0.01, log=log)) as port, \
            TcpBus("127.0.0.1", port) as bus:

        async def pair(a: int, b: int) -> None:
            async with bus.exclusive():
                await ask(bus, a)
                await ask(bus, b)

        await asyncio.gather(pair(1, 2), pair(3, 4), pair(5, 6))
    served = [n for kind, n, _ in log if kind == "in"]
    pairs = {(served[i], served[i + 1]) for i in range(0, 6, 2)}
    assert pairs == {(1, 2), (3, 4), (5, 6)}


async def test_write_only_transaction() -> None:
    got: list[bytes] = []

    async def sink(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        while line := await reader.readline():
            got.append(line)

    async with server(sink) as port, TcpBus("127.0.0.1", port, td=5) as bus:
        started = time.monotonic()
        await bus.send(b"broadcast\n")
        assert time.monotonic() - started < 0.5  # no reply awaited
        await asyncio.sleep(0.05)
    assert got == [b"broadcast\n"]
    assert bus.transactions == 1 and bus.bytes_out == 10


async def test_completion_may_raise_and_the_bus_carries_on() -> None:
    def reject(chunk: bytes) -> bool:
        raise ValueError("not for us")

    async with server(answering()) as port, TcpBus("127.0.0.1", port, guard=0.05) as bus:
        with pytest.raises(ValueError, match="not for us"):
            await bus.transaction(b"Q1\n", reject)
        assert await ask(bus, 2) == b"R2\n"


async def test_closed_bus_refuses_transactions() -> None:
    bus = TcpBus("127.0.0.1", 9)
    with pytest.raises(BusClosed):
        await ask(bus, 1)


# ---- dropped links ------------------------------------------------------------------------


async def test_drop_mid_transaction_raises_link_down_then_reconnects() -> None:
    async with server(answering(drop={2})) as port, \
            TcpBus("127.0.0.1", port, reconnect_min=0.05) as bus:
        assert await ask(bus, 1) == b"R1\n"
        started = time.monotonic()
        with pytest.raises(LinkDown) as info:
            await ask(bus, 2)
        assert time.monotonic() - started < 0.4  # noticed at once, not after Td
        assert "closed by the other end" in str(info.value)
        assert bus.link_drops == 1 and not bus.connected
        assert await ask(bus, 3) == b"R3\n"  # reconnected
        assert bus.connects == 2 and bus.is_open


async def test_drop_while_idle_reconnects_silently() -> None:
    async def one_shot(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        line = await reader.readline()
        writer.write(b"R" + line[1:])
        await writer.drain()
        writer.close()  # e.g. a serial server closing idle connections

    async with server(one_shot) as port, TcpBus("127.0.0.1", port) as bus:
        assert await ask(bus, 1) == b"R1\n"
        await asyncio.sleep(0.05)
        assert await ask(bus, 2) == b"R2\n"
        assert bus.link_drops == 1 and bus.connects == 2


async def test_reconnect_backs_off_while_the_server_is_away() -> None:
    async with server(answering()) as port:
        bus = TcpBus("127.0.0.1", port, reconnect_min=0.1, reconnect_max=0.15, td=0.2)
        await bus.open()
        try:
            assert await ask(bus, 1) == b"R1\n"
        except BaseException:
            await bus.close()
            raise
    try:
        # Server gone: the link drops, then reconnecting fails with growing (capped) waits.
        with pytest.raises(LinkDown):
            await ask(bus, 2)
        waits = []
        for _ in range(3):
            started = time.monotonic()
            with pytest.raises(LinkDown, match="cannot connect"):
                await ask(bus, 3)
            waits.append(time.monotonic() - started)
        assert waits[0] >= 0.05  # reconnect_min, counted from the failure just before
        assert waits[1] >= 0.1  # doubled, capped at reconnect_max
        assert waits[2] < 0.5  # capped at reconnect_max
        assert bus.connect_failures == 3
        # The server returns on the same port: the daemon carries on.
        async with server(answering(), port=port):
            assert await ask(bus, 4) == b"R4\n"
    finally:
        await bus.close()


async def test_open_fails_with_link_down_when_nothing_listens() -> None:
    async with server(answering()) as port:
        pass
    bus = TcpBus("127.0.0.1", port)
    with pytest.raises(LinkDown, match="cannot connect"):
        async with bus:
            pass
    assert not bus.is_open


# ---- serial, on a pseudo-terminal ------------------------------------------------------


@contextlib.asynccontextmanager
async def pty_answering() -> AsyncIterator[tuple[str, int]]:
    master, slave = os.openpty()
    tty.setraw(master)
    tty.setraw(slave)
    os.set_blocking(master, False)
    loop = asyncio.get_running_loop()
    buffer = bytearray()

    def readable() -> None:
        try:
            data = os.read(master, 1024)
        except OSError:
            loop.remove_reader(master)
            return
        buffer.extend(data)
        while b"\n" in buffer:
            line, _, rest = bytes(buffer).partition(b"\n")
            buffer[:] = rest
            os.write(master, b"R" + line[1:] + b"\n")

    loop.add_reader(master, readable)
    try:
        yield os.ttyname(slave), master
    finally:
        with contextlib.suppress(Exception):
            loop.remove_reader(master)
        with contextlib.suppress(OSError):
            os.close(master)
        os.close(slave)


# This sandbox's pseudo-terminals reject PARENB (termios EINVAL), so 8N1 here.
async def test_serial_bus_on_a_pty() -> None:
    async with pty_answering() as (path, _), SerialBus(path, 9600, parity="N") as bus:
        assert await ask(bus, 7) == b"R7\n"
        assert await ask(bus, 8) == b"R8\n"
        assert bus.name == f"serial://{path}"


async def test_serial_device_error_is_link_down() -> None:
    async with pty_answering() as (path, master), \
            SerialBus(path, 9600, parity="N", reconnect_min=0.01) as bus:
        assert await ask(bus, 1) == b"R1\n"
        asyncio.get_running_loop().remove_reader(master)
        os.close(master)  # hang up the line
        with pytest.raises(LinkDown):
            await ask(bus, 2, td=0.3)
        assert bus.link_drops == 1


async def test_serial_open_failure_is_link_down() -> None:
    bus = SerialBus("/dev/amic-no-such-port")
    with pytest.raises(LinkDown, match="cannot connect"):
        await bus.open()


# ---- target URLs ----------------------------------------------------------------------------


def test_parse_tcp_target() -> None:
    t = parse_target("tcp://10.0.0.7:10001?td_ms=800&tb_ms=100&line_baud=2400")
    assert t == TcpTarget("10.0.0.7", 10001, 0.8, 0.1, 2400)
    bus = t.bus()
    assert isinstance(bus, TcpBus)
    assert (bus.host, bus.port, bus.td, bus.tb, bus.line_baud) == ("10.0.0.7", 10001, 0.8, 0.1,
                                                                   2400)
    assert bus.name == "tcp://10.0.0.7:10001"
    assert parse_target("tcp://[::1]:502") == TcpTarget("::1", 502)
    assert t.bus(td=0.2).td == 0.2


def test_parse_serial_target() -> None:
    t = parse_target("serial:///dev/ttyUSB0?baud=9600&parity=n&bytesize=7&stopbits=2&td_ms=900")
    assert t == SerialTarget("/dev/ttyUSB0", 9600, 7, "N", 2, 0.9, None)
    d = parse_target("serial:///dev/ttyS1")
    assert d == SerialTarget("/dev/ttyS1", 2400, 8, "E", 1)
    bus = bus_from_url("serial:///dev/ttyS1", td=0.3)
    assert isinstance(bus, SerialBus)
    assert (bus.device, bus.baud, bus.bytesize, bus.parity, bus.stopbits, bus.td) == (
        "/dev/ttyS1", 2400, 8, "E", 1, 0.3)
    assert parse_target("serial://COM3") == SerialTarget("COM3")


@pytest.mark.parametrize(("url", "part"), [
    ("10.0.0.7:10001", "expected tcp://HOST:PORT"),
    ("udp://h:1", "scheme 'udp'"),
    ("tcp://h", "missing ':PORT'"),
    ("tcp://:5", "missing host"),
    ("tcp://h:0", "port '0'"),
    ("tcp://h:99999", "port '99999'"),
    ("tcp://h:x1", "port 'x1'"),
    ("tcp://h:1/path", "unexpected path '/path'"),
    ("tcp://h:1?baud=2400", "unknown option 'baud'"),
    ("tcp://h:1?td_ms=abc", "td_ms 'abc'"),
    ("tcp://h:1?td_ms=0", "td_ms '0'"),
    ("serial://", "missing device"),
    ("serial:///dev/x?parity=X", "parity 'X'"),
    ("serial:///dev/x?bytesize=9", "bytesize '9'"),
    ("serial:///dev/x?stopbits=3", "stopbits '3'"),
    ("serial:///dev/x?baud=fast", "baud 'fast'"),
    ("serial:///dev/x?baud=1&baud=2", "'baud' given twice"),
    ("serial:///dev/x?tb_ms", "query 'tb_ms'"),
    ("serial:///dev/x?tb_ms=", "'tb_ms' has no value"),
])
def test_bad_target_names_the_bad_part(url: str, part: str) -> None:
    with pytest.raises(ValueError, match="target") as info:
        parse_target(url)
    assert part in str(info.value)
    assert repr(url) in str(info.value)


def test_bus_arguments_are_checked() -> None:
    with pytest.raises(ValueError, match="td"):
        TcpBus("h", 1, td=0)
    with pytest.raises(ValueError, match="parity"):
        SerialBus("/dev/x", parity="Q")
    with pytest.raises(ValueError, match="port"):
        TcpBus("h", 70000)

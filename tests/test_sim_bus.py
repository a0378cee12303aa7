"""The simulated RS-485 bus (simulators.bus) over real loopback TCP and a pty, and the CLI."""

from __future__ import annotations

import asyncio
import datetime as dt
import os
import re
import signal
import subprocess
import time
from collections.abc import AsyncIterator
from contextlib import AbstractContextManager, asynccontextmanager
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner
from conftest import simulator_cli

from collector.cli import main as cli
from protocols.dlt645 import (
    ChangeBaudRequest,
    FrameError,
    FrameExtractor,
    ReadAddressReply,
    ReadAddressRequest,
    ReadReply,
    ReadRequest,
    ReplyMismatch,
    TimeSyncRequest,
    build_frame,
    check_reply,
    decode_message,
    parse_frame,
)
from simulators.bus import BusServer, Fault, FaultKind, parse_faults
from simulators.dlt645 import SimulatedMeter, make_meters

ADDRESSES = [f"{i:012d}" for i in range(1, 7)]
VOLTAGE_A = 0x02010100
REQUEST_BYTES = 20  # 4 FE + 16: a single-DI read


def meters(n: int = 6, **kwargs: Any) -> list[SimulatedMeter]:
    return make_meters(ADDRESSES[:n], seed=1, **kwargs)


def read_request(address: str, di: int = VOLTAGE_A) -> bytes:
    return build_frame(ReadRequest(address=address, di=di).to_frame())


class Client:
    """A master on a TCP line: raw bytes out, raw bytes in, with arrival times."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader = reader
        self.writer = writer

    async def send(self, raw: bytes) -> float:
        self.writer.write(raw)
        await self.writer.drain()
        return time.monotonic()

    async def receive(self, timeout: float, expect: int | None = None) -> tuple[bytes, float]:
        """Bytes until a whole frame, ``expect`` bytes, or silence for ``timeout`` seconds."""
        got = b""
        last = time.monotonic()
        extractor = FrameExtractor()
        while True:
            try:
                chunk = await asyncio.wait_for(self.reader.read(4096), timeout)
            except TimeoutError:
                return got, last
            if not chunk:
                return got, last
            got += chunk
            last = time.monotonic()
            extractor.feed(chunk)
            if (expect is not None and len(got) >= expect) or \
                    (expect is None and extractor.next_frame() is not None):
                return got, last


@asynccontextmanager
async def bus(sims: list[SimulatedMeter], **kwargs: Any) -> AsyncIterator[tuple[BusServer,
                                                                               Client]]:
    kwargs.setdefault("baud", 9600)
    async with BusServer(sims, **kwargs) as server:
        reader, writer = await asyncio.open_connection("127.0.0.1", server.port)
        try:
            yield server, Client(reader, writer)
        finally:
            writer.close()
            await writer.wait_closed()


# ---- fault specifications ------------------------------------------------------------------

def test_parse_faults() -> None:
    assert parse_faults("dead:000000000003, slow:5,garble:*:0.25") == (
        Fault(FaultKind.DEAD, "000000000003"),
        Fault(FaultKind.SLOW, "000000000005"),
        Fault(FaultKind.GARBLE, "*", 0.25),
    )
    assert parse_faults("") == ()
    for bad, why in (("melt:000000000001", "unknown kind"), ("dead", "kind:ADDRESS"),
                     ("dead:12345678901234", "1-12 digits"), ("slow:1:2", "within 0-1"),
                     ("garble:1:x", "not a number"), ("dead:AAAAAAAAAAAA", "wildcard")):
        with pytest.raises(ValueError, match=why):
            parse_faults(bad)


def test_parse_faults_of_one_data_identifier() -> None:
    assert parse_faults("garble:1@02010100,dead:*@0201FF00:0.5") == (
        Fault(FaultKind.GARBLE, "000000000001", 1.0, 0x02010100),
        Fault(FaultKind.DEAD, "*", 0.5, 0x0201FF00),
    )
    for bad, why in (("garble:1@0201XX00", "not hexadecimal"),
                     ("garble:1@0102030405", "longer than 4 bytes")):
        with pytest.raises(ValueError, match=why):
            parse_faults(bad)


def test_duplicate_addresses_refused() -> None:
    with pytest.raises(ValueError, match="duplicate"):
        BusServer(make_meters(["000000000001", "000000000001"]))


# ---- TCP line ---------------------------------------------------------------------------------

async def test_read_over_tcp_is_paced_at_the_baud_rate() -> None:
    td = 0.05
    async with bus(meters(2), baud=2400, td=td) as (server, client):
        sent = await client.send(read_request("000000000002"))
        raw, done = await client.receive(timeout=1.0)
        elapsed = done - sent
        frame = parse_frame(raw)
        reply = check_reply("000000000002", 0x11, VOLTAGE_A, frame)
        assert isinstance(reply, ReadReply)
        assert reply.value() == server.meter("000000000002").model.read("voltage_a")
        n = len(raw)
        byte_time = 11 / 2400
        # Td plus the reply's own air time at least; plus the request's, and little more.
        assert elapsed >= n * byte_time + td
        assert elapsed <= (n + REQUEST_BYTES) * byte_time + td + 0.15
        assert server.stats.requests == 1 and server.stats.replies == 1


async def test_bytes_trickle_in_rather_than_arrive_at_once() -> None:
    async with bus(meters(1), baud=1200, td=0.02) as (_, client):
        await client.send(read_request("000000000001", 0x0001FF00))  # 40-byte reply
        chunks = []
        extractor = FrameExtractor()
        while extractor.next_frame() is None:
            chunk = await asyncio.wait_for(client.reader.read(4096), 2.0)
            chunks.append((time.monotonic(), chunk))
            extractor.feed(chunk)
        total = sum(len(c) for _, c in chunks)
        assert total == 40 and len(chunks) >= 10
        spread = chunks[-1][0] - chunks[0][0]
        assert spread >= (total - 3) * 11 / 1200 * 0.9  # no burst at the end


async def test_wrong_address_and_broadcast_get_no_reply() -> None:
    async with bus(meters(2)) as (server, client):
        await client.send(read_request("000000000099"))
        raw, _ = await client.receive(timeout=0.3)
        assert raw == b""
        await client.send(read_request("999999999999"))
        raw, _ = await client.receive(timeout=0.3)
        assert raw == b""
        assert server.stats.unanswered == 1 and server.stats.broadcasts == 1


async def test_broadcast_time_sync_moves_every_meter_clock() -> None:
    async with bus(meters(3)) as (server, client):
        target = dt.datetime.now().replace(microsecond=0) + dt.timedelta(minutes=5)
        await client.send(build_frame(TimeSyncRequest(when=target).to_frame()))
        raw, _ = await client.receive(timeout=0.3)
        assert raw == b""  # a broadcast is never answered
        for address in ADDRESSES[:3]:
            await client.send(read_request(address, 0x0400010C))
            raw, _ = await client.receive(timeout=1.0)
            reply = decode_message(parse_frame(raw))
            assert isinstance(reply, ReadReply)
            clock = reply.value()
            assert isinstance(clock, dt.datetime)
            assert abs(clock - target) <= dt.timedelta(seconds=3)
        assert all(server.meter(a).counters["time_sync_accepted"] == 1 for a in ADDRESSES[:3])


async def test_wildcard_read_address() -> None:
    async with bus(meters(1)) as (_, client):
        await client.send(build_frame(ReadAddressRequest().to_frame()))
        raw, _ = await client.receive(timeout=1.0)
        reply = decode_message(parse_frame(raw))
        assert isinstance(reply, ReadAddressReply) and reply.meter_address == ADDRESSES[0]


async def test_wildcard_with_several_meters_collides() -> None:
    async with bus(meters(3)) as (server, client):
        await client.send(build_frame(ReadAddressRequest().to_frame()))
        raw, _ = await client.receive(timeout=0.5)
        assert raw  # something was heard, but no valid frame
        extractor = FrameExtractor()
        extractor.feed(raw)
        assert extractor.next_frame() is None
        assert server.stats.collisions == 1


async def test_partial_frame_is_dropped_after_a_silence() -> None:
    async with bus(meters(1), idle_reset=0.2) as (_, client):
        # A frame header announcing 255 data bytes, then nothing: line noise.
        await client.send(bytes.fromhex("680100000000006811ff"))
        await asyncio.sleep(0.3)
        await client.send(read_request("000000000001"))
        raw, _ = await client.receive(timeout=1.0)
        assert isinstance(decode_message(parse_frame(raw)), ReadReply)


async def test_meter_at_another_baud_is_deaf() -> None:
    async with bus(meters(1)) as (server, client):
        await client.send(build_frame(ChangeBaudRequest(address=ADDRESSES[0],
                                                        feature=0x08).to_frame()))  # 2400
        raw, _ = await client.receive(timeout=1.0)
        assert parse_frame(raw).control == 0x97
        await client.send(read_request(ADDRESSES[0]))
        assert (await client.receive(timeout=0.3))[0] == b""
        assert server.stats.deaf == 1
        server.baud = 2400  # the serial server's port set to the meter's new rate
        await client.send(read_request(ADDRESSES[0]))
        raw, _ = await client.receive(timeout=1.0)
        assert isinstance(decode_message(parse_frame(raw)), ReadReply)


async def test_two_connections_are_two_lines_on_the_same_meters() -> None:
    async with bus(meters(1)) as (server, first):
        reader, writer = await asyncio.open_connection("127.0.0.1", server.port)
        second = Client(reader, writer)
        try:
            await first.send(read_request(ADDRESSES[0]))
            await second.send(read_request(ADDRESSES[0]))
            one, _ = await first.receive(timeout=1.0)
            two, _ = await second.receive(timeout=1.0)
            assert parse_frame(one).address == parse_frame(two).address == ADDRESSES[0]
            assert server.stats.connections == 2
            assert server.meter(ADDRESSES[0]).counters["requests"] == 2
        finally:
            writer.close()
            await writer.wait_closed()


# ---- faults -----------------------------------------------------------------------------------

FAULTS = ("dead:000000000002,garble:000000000003,truncate:000000000004,"
          "wrong-address:000000000005,slow:000000000006")


@pytest.fixture
async def faulty() -> AsyncIterator[tuple[BusServer, Client]]:
    async with bus(meters(6), faults=FAULTS, slow_delay=0.4) as pair:
        yield pair


async def healthy_length(client: Client) -> int:
    await client.send(read_request("000000000001"))
    raw, _ = await client.receive(timeout=1.0)
    parse_frame(raw)
    return len(raw)


async def test_dead_meter_never_answers_nor_acts(faulty: tuple[BusServer, Client]) -> None:
    server, client = faulty
    await client.send(read_request("000000000002"))
    raw, _ = await client.receive(timeout=0.3)
    assert raw == b""
    assert server.stats.faults["dead"] == 1
    assert server.meter("000000000002").counters["requests"] == 0


async def test_garbled_reply_fails_its_checksum(faulty: tuple[BusServer, Client]) -> None:
    server, client = faulty
    n = await healthy_length(client)
    await client.send(read_request("000000000003"))
    raw, _ = await client.receive(timeout=0.5, expect=n)
    assert len(raw) == n
    with pytest.raises(FrameError, match="checksum"):
        parse_frame(raw)
    extractor = FrameExtractor()
    extractor.feed(raw)
    assert extractor.next_frame() is None and extractor.stats.bad_checksums == 1
    assert server.stats.faults["garble"] == 1


async def test_truncated_reply_is_short(faulty: tuple[BusServer, Client]) -> None:
    server, client = faulty
    n = await healthy_length(client)
    await client.send(read_request("000000000004"))
    raw, _ = await client.receive(timeout=0.3)
    assert 0 < len(raw) < n and raw.startswith(b"\xfe\xfe\xfe\xfe\x68")
    with pytest.raises(FrameError):
        parse_frame(raw)
    assert server.stats.faults["truncate"] == 1


async def test_reply_from_the_wrong_address(faulty: tuple[BusServer, Client]) -> None:
    server, client = faulty
    await client.send(read_request("000000000005"))
    raw, _ = await client.receive(timeout=1.0)
    frame = parse_frame(raw)  # a valid frame...
    assert frame.address != "000000000005"
    with pytest.raises(ReplyMismatch, match="address"):  # ...that does not answer us
        check_reply("000000000005", 0x11, VOLTAGE_A, frame)
    assert server.stats.faults["wrong-address"] == 1


async def test_slow_meter_answers_late(faulty: tuple[BusServer, Client]) -> None:
    server, client = faulty
    sent = await client.send(read_request("000000000006"))
    raw, done = await client.receive(timeout=1.0)
    assert isinstance(decode_message(parse_frame(raw)), ReadReply)
    assert done - sent >= 0.4 + len(raw) * 11 / 9600
    # A slow reply does not hold up another meter's: the bus keeps serving.
    sent = await client.send(read_request("000000000006"))
    await asyncio.sleep(0.05)
    await client.send(read_request("000000000001"))
    first, at = await client.receive(timeout=1.0)
    assert parse_frame(first).address == "000000000001" and at - sent < 0.3
    late, _ = await client.receive(timeout=1.0)
    assert parse_frame(late).address == "000000000006"
    assert server.stats.faults["slow"] == 2


async def test_fault_probability() -> None:
    sims = meters(1)
    async with bus(sims, faults="garble:*:0.5", td=0.0, seed=4) as (server, client):
        bad = 0
        for _ in range(20):
            await client.send(read_request("000000000001"))
            raw, _ = await client.receive(timeout=0.5, expect=22)
            try:
                parse_frame(raw)
            except FrameError:
                bad += 1
        assert 0 < bad < 20
        assert server.stats.faults["garble"] == bad


# ---- pty line ----------------------------------------------------------------------------------

async def test_pty_line_with_raw_bytes() -> None:
    td = 0.03
    async with BusServer(meters(2), host=None, pty=True, baud=2400, td=td) as server:
        assert server.pty_path is not None and os.path.exists(server.pty_path)
        fd = os.open(server.pty_path, os.O_RDWR | os.O_NOCTTY | os.O_NONBLOCK)
        loop = asyncio.get_running_loop()
        got = bytearray()
        complete = asyncio.Event()
        extractor = FrameExtractor()

        def readable() -> None:
            data = os.read(fd, 4096)
            got.extend(data)
            extractor.feed(data)
            if extractor.next_frame() is not None:
                complete.set()

        loop.add_reader(fd, readable)
        try:
            # The first request of the reference file, as raw bytes: read 00000000.
            request = bytes.fromhex("fefefefe6801000000000068110433333333b216")
            sent = time.monotonic()
            os.write(fd, request)
            await asyncio.wait_for(complete.wait(), 2.0)
            elapsed = time.monotonic() - sent
        finally:
            loop.remove_reader(fd)
            os.close(fd)
        reply = decode_message(parse_frame(bytes(got)))
        assert isinstance(reply, ReadReply) and reply.di == 0
        assert reply.value() == server.meter("000000000001").model.read(
            "energy_active_combined_total")
        assert elapsed >= len(got) * 11 / 2400 + td
        assert elapsed <= (len(got) + len(request)) * 11 / 2400 + td + 0.15


# ---- CLI ---------------------------------------------------------------------------------------

def simulator(args: list[str]) -> AbstractContextManager[
        tuple[subprocess.Popen[str], list[str]]]:
    return simulator_cli("dlt645", args)


def test_cli_serves_tcp_and_pty_until_sigterm(tmp_path: Path) -> None:
    addresses = tmp_path / "meters.txt"
    addresses.write_text("# two meters\n000000000042\n\n123456789012  # the other\n")
    with simulator(["--listen", "127.0.0.1:0", "--addresses", str(addresses), "--pty",
                    "--baud", "9600", "--td-ms", "20", "--faults", "dead:123456789012",
                    "--seed", "5"]) as (proc, lines):
        tcp = re.fullmatch(r"listening on tcp://127\.0\.0\.1:(\d+)\n", lines[0])
        pty = re.fullmatch(r"listening on serial://(/dev/\S+)\n", lines[1])
        assert tcp and pty, lines
        port = int(tcp[1])
        assert port > 0 and os.path.exists(pty[1])

        async def talk() -> tuple[bytes, bytes]:
            reader, writer = await asyncio.open_connection("127.0.0.1", port)
            client = Client(reader, writer)
            await client.send(read_request("000000000042"))
            ok, _ = await client.receive(timeout=2.0)
            await client.send(read_request("123456789012"))
            dead, _ = await client.receive(timeout=0.3)
            writer.close()
            await writer.wait_closed()
            return ok, dead

        ok, dead = asyncio.run(talk())
        assert parse_frame(ok).address == "000000000042" and dead == b""
        proc.send_signal(signal.SIGTERM)
        _, err = proc.communicate(timeout=5)
        assert proc.returncode == 0, err
        assert "2 requests, 1 replies" in err and "dead 1" in err


@pytest.mark.parametrize(("args", "message"), [
    (["--faults", "melt:1"], "unknown kind"),
    (["--listen", "localhost"], "HOST:PORT"),
    # the one listen parser (collector.service.metrics.parse_listen): an IPv6 host in brackets
    (["--listen", "::1:8899"], "an IPv6 address needs brackets: [::1]:8899"),
    (["--listen", "[::1:8899"], "an IPv6 address needs brackets"),
    (["--password", "12"], "8 hex digits"),
    (["--version", "2001"], "2001"),
])
def test_cli_rejects_bad_options(args: list[str], message: str) -> None:
    result = CliRunner().invoke(cli, ["simulate", "dlt645", *args])
    assert result.exit_code == 2 and message in result.output


def test_cli_address_file_errors(tmp_path: Path) -> None:
    path = tmp_path / "a.txt"
    path.write_text("000000000001\nABC\n")
    result = CliRunner().invoke(cli, ["simulate", "dlt645", "--addresses", str(path)])
    assert result.exit_code == 2 and "a.txt:2" in result.output
    path.write_text("1\n1\n")
    result = CliRunner().invoke(cli, ["simulate", "dlt645", "--addresses", str(path)])
    assert result.exit_code == 2 and "twice" in result.output
    path.write_text("1\n2\n")
    result = CliRunner().invoke(cli, ["simulate", "dlt645", "--addresses", str(path),
                                      "--meters", "3"])
    assert result.exit_code == 2 and "holds 2" in result.output


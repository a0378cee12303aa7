"""Interop: the PyPI ``dlt645`` 3.2.0 client reads amic's DL/T645 simulator over TCP.

An independent implementation's client (``MeterClientService`` over its ``TcpClient``)
must get plausible values from meter 000000000001, and they must agree with what amic's
own codec reads from the same meter right after (raw socket + ``build_frame`` /
``ReadRequest`` / ``FrameExtractor``), within the drift the simulated meter allows.

Two quirks of the package shape the calls (see the notes in each place):

* its address string is in *wire* order (``set_address`` packs the digits as they come and
  sends those bytes unchanged), so meter 000000000001 is ``"010000000000"``;
* ``read_00`` / ``read_02`` / ``read_04`` return a ``DataItem`` out of the client's shared
  map, mutated again by the next read: take ``.value`` at once.
"""

from __future__ import annotations

import datetime as dt
import socket
import time
from collections.abc import Iterator
from decimal import Decimal
from typing import TYPE_CHECKING, Any

import pytest
from dlt645 import MeterClientService

from protocols.dlt645 import (
    FrameExtractor,
    ReadReply,
    ReadRequest,
    build_frame,
    check_reply,
)

if TYPE_CHECKING:
    from conftest import SimulatorProcess

METER = "000000000001"
METER_WIRE_ORDER = bytes.fromhex(METER)[::-1].hex()  # "010000000000" for the dlt645 package
IO_TIMEOUT = 2.0


class AmicReader:
    """One request at a time over a plain socket, decoded by protocols.dlt645."""

    def __init__(self, host: str, port: int) -> None:
        self.sock = socket.create_connection((host, port), timeout=IO_TIMEOUT)

    def close(self) -> None:
        self.sock.close()

    def read(self, di: int, address: str = METER) -> Any:
        self.sock.sendall(build_frame(ReadRequest(address=address, di=di).to_frame()))
        extractor = FrameExtractor(lambda _addr, control: bool(control & 0x80))
        deadline = time.monotonic() + IO_TIMEOUT
        while (frame := extractor.next_frame()) is None:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise TimeoutError(f"amic: no reply to {di:08X} within {IO_TIMEOUT} s")
            self.sock.settimeout(remaining)
            chunk = self.sock.recv(1024)
            if not chunk:
                raise ConnectionError("simulator closed the connection")
            extractor.feed(chunk)
        reply = check_reply(address, 0x11, di, frame)
        assert isinstance(reply, ReadReply), f"amic: {di:08X} answered {reply}"
        return reply.value()


class PackageReader:
    """The dlt645 package's own client service over its TCP transport."""

    def __init__(self, host: str, port: int) -> None:
        # timeout bounds each request; send_request retries once after 0.5 s on failure.
        self.svc = MeterClientService.new_tcp_client(host, port, timeout=IO_TIMEOUT)
        assert self.svc.set_address(METER_WIRE_ORDER)
        self.svc.enable_message_capture(queue_size=64)
        assert self.svc.connect(), f"dlt645 client could not connect to {host}:{port}"

    def close(self) -> None:
        self.svc.disconnect()

    def read(self, di: int) -> Any:
        reader = {0x00: self.svc.read_00, 0x02: self.svc.read_02,
                  0x04: self.svc.read_04}[di >> 24]
        item = reader(di)
        assert item is not None, (
            f"dlt645 client got no value for {di:08X} (it returns None and logs on any error); "
            f"frames seen: {self.frames()}")
        assert item.di == di
        return item.value  # now: the next read overwrites this shared DataItem

    def frames(self) -> list[str]:
        return [f"{m.direction} {m.hex_string}" for m in self.svc.get_captured_messages()]


@pytest.fixture(scope="module")
def readers(dlt645_simulator: SimulatorProcess) -> Iterator[tuple[PackageReader, AmicReader]]:
    pkg = PackageReader(*dlt645_simulator.address)
    amic = AmicReader(*dlt645_simulator.address)
    try:
        yield pkg, amic
    finally:
        pkg.close()
        amic.close()


def both(readers: tuple[PackageReader, AmicReader], di: int) -> tuple[Any, Any]:
    pkg, amic = readers
    return pkg.read(di), amic.read(di)


def test_forward_energy_agrees_and_never_decreases(
        readers: tuple[PackageReader, AmicReader]) -> None:
    pkg, amic = readers
    e1 = pkg.read(0x00010000)
    e2 = amic.read(0x00010000)
    e3 = pkg.read(0x00010000)
    assert isinstance(e1, float) and isinstance(e2, Decimal) and isinstance(e3, float)
    assert 0 <= e1 < 800000, e1  # XXXXXX.XX kWh; above 799999.99 the package reads a sign
    # Read one after the other: non-decreasing across both decoders, and within a few
    # seconds of simulated load (well under 1 kWh).
    assert Decimal(str(e1)) <= e2 <= Decimal(str(e3)), (e1, e2, e3)
    assert e3 - e1 < 1.0, (e1, e3)


def test_voltage_a(readers: tuple[PackageReader, AmicReader]) -> None:
    p, a = both(readers, 0x02010100)
    assert isinstance(p, float) and isinstance(a, Decimal)
    assert 198.0 <= p <= 242.0 and Decimal(198) <= a <= Decimal(242), (p, a)  # 220 V +-10 %
    assert abs(p - float(a)) <= 10.0, (p, a)


def test_current_a(readers: tuple[PackageReader, AmicReader]) -> None:
    p, a = both(readers, 0x02020100)
    assert isinstance(p, float) and isinstance(a, Decimal)
    assert abs(p) < 800 and abs(a) < 800, (p, a)  # XXX.XXX, sign bit on top
    assert abs(p - float(a)) <= 0.5 + 0.25 * max(abs(p), abs(float(a))), (p, a)


def test_active_power_total(readers: tuple[PackageReader, AmicReader]) -> None:
    p, a = both(readers, 0x02030000)
    assert isinstance(p, float) and isinstance(a, Decimal)
    assert abs(p) < 80 and abs(a) < 80, (p, a)  # XX.XXXX kW
    assert abs(p - float(a)) <= 0.1 + 0.25 * max(abs(p), abs(float(a))), (p, a)


def test_frequency(readers: tuple[PackageReader, AmicReader]) -> None:
    p, a = both(readers, 0x02800002)
    assert isinstance(p, float) and isinstance(a, Decimal)
    assert 49.5 <= p <= 50.5 and Decimal("49.5") <= a <= Decimal("50.5"), (p, a)
    assert abs(p - float(a)) <= 0.2, (p, a)


def test_clock_parses_and_agrees(readers: tuple[PackageReader, AmicReader]) -> None:
    pkg, amic = readers
    # The package hands 04xxxxxx back as digit strings: YYMMDDWW and hhmmss.
    p_date, p_time = pkg.read(0x04000101), pkg.read(0x04000102)
    a_date, a_time = amic.read(0x04000101), amic.read(0x04000102)
    assert isinstance(p_date, str) and len(p_date) == 8 and p_date.isdigit(), p_date
    assert isinstance(p_time, str) and len(p_time) == 6 and p_time.isdigit(), p_time
    date = dt.date(2000 + int(p_date[0:2]), int(p_date[2:4]), int(p_date[4:6]))
    assert int(p_date[6:8]) == date.isoweekday() % 7, f"week {p_date[6:8]} for {date}"
    clock = dt.time(int(p_time[0:2]), int(p_time[2:4]), int(p_time[4:6]))
    assert isinstance(a_date, dt.date) and isinstance(a_time, dt.time)
    p_at = dt.datetime.combine(date, clock)
    a_at = dt.datetime.combine(a_date, a_time)
    # Read within a fraction of a second; allow a midnight or second boundary in between.
    assert dt.timedelta(0) <= a_at - p_at <= dt.timedelta(seconds=5), (p_at, a_at)

"""collector.service.notify against real AF_UNIX datagram sockets, as systemd provides them."""

from __future__ import annotations

import asyncio
import logging
import os
import socket
import tempfile
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from collector.service.notify import Notifier, watchdog_loop


class Manager:
    """The service manager's end: a bound datagram socket that collects messages."""

    def __init__(self, sock: socket.socket, notify_socket: str) -> None:
        self.sock = sock
        self.notify_socket = notify_socket

    def recv(self, timeout: float = 2.0) -> str:
        self.sock.settimeout(timeout)
        return self.sock.recv(4096).decode()

    def drain(self) -> list[str]:
        """Every datagram queued now, without waiting."""
        self.sock.setblocking(False)
        out: list[str] = []
        while True:
            try:
                out.append(self.sock.recv(4096).decode())
            except BlockingIOError:
                return out


@pytest.fixture
def manager() -> Iterator[Manager]:
    # A short directory: tmp_path can exceed the 108-byte limit of AF_UNIX paths.
    with tempfile.TemporaryDirectory(prefix="amic-n") as d:
        path = str(Path(d) / "notify")
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        sock.bind(path)
        try:
            yield Manager(sock, path)
        finally:
            sock.close()


@pytest.fixture
def abstract_manager() -> Iterator[Manager]:
    name = f"amic-test-{uuid.uuid4().hex}"
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind("\0" + name)
    try:
        yield Manager(sock, "@" + name)
    finally:
        sock.close()


def test_messages_over_a_path_socket(manager: Manager) -> None:
    n = Notifier.from_env({"NOTIFY_SOCKET": manager.notify_socket})
    assert n.enabled
    assert n.ready()
    assert manager.recv() == f"READY=1\nMAINPID={os.getpid()}"
    assert n.status("b1: 12/40 meters, 1 failed")
    assert manager.recv() == "STATUS=b1: 12/40 meters, 1 failed"
    assert n.watchdog()
    assert manager.recv() == "WATCHDOG=1"
    assert n.stopping()
    assert manager.recv() == "STOPPING=1"
    assert n.sent == 4 and n.failures == 0
    assert manager.drain() == []
    n.close()


def test_messages_over_an_abstract_socket(abstract_manager: Manager) -> None:
    n = Notifier.from_env({"NOTIFY_SOCKET": abstract_manager.notify_socket})
    assert n.enabled
    n.ready()
    n.status("idle")
    n.watchdog()
    n.stopping()
    assert [abstract_manager.recv() for _ in range(4)] == [
        f"READY=1\nMAINPID={os.getpid()}", "STATUS=idle", "WATCHDOG=1", "STOPPING=1"]
    n.close()


def test_from_env_reads_os_environ(manager: Manager, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("NOTIFY_SOCKET", manager.notify_socket)
    monkeypatch.setenv("WATCHDOG_USEC", "30000000")
    monkeypatch.delenv("WATCHDOG_PID", raising=False)
    n = Notifier.from_env()
    n.watchdog()
    assert manager.recv() == "WATCHDOG=1"
    assert n.watchdog_interval() == 15.0


def test_reloading_sends_the_monotonic_time(manager: Manager) -> None:
    n = Notifier.from_env({"NOTIFY_SOCKET": manager.notify_socket})
    before = time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000
    assert n.reloading()
    after = time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000
    first, second = manager.recv().split("\n")
    assert first == "RELOADING=1"
    key, value = second.split("=")
    assert key == "MONOTONIC_USEC" and before <= int(value) <= after
    n.ready()
    assert manager.recv().startswith("READY=1\n")


def test_status_is_one_line_and_not_repeated(manager: Manager) -> None:
    n = Notifier.from_env({"NOTIFY_SOCKET": manager.notify_socket})
    n.status("b1: 3/4\nb2: 4/4")
    assert manager.recv() == "STATUS=b1: 3/4 b2: 4/4"
    n.status("b1: 3/4\nb2: 4/4")  # unchanged: not sent again
    n.status("x" * 5000)
    assert manager.drain() == ["STATUS=" + "x" * 1000]


@pytest.mark.parametrize("env, expected", [
    ({"WATCHDOG_USEC": "30000000"}, 15.0),
    ({"WATCHDOG_USEC": "30000000", "WATCHDOG_PID": str(os.getpid())}, 15.0),
    ({"WATCHDOG_USEC": "30000000", "WATCHDOG_PID": str(os.getpid() + 1)}, None),
    ({"WATCHDOG_USEC": "500000"}, 0.25),
    ({"WATCHDOG_USEC": "soon"}, None),
    ({"WATCHDOG_USEC": "0"}, None),
    ({}, None),
])
def test_watchdog_interval(manager: Manager, env: dict[str, str],
                           expected: float | None) -> None:
    n = Notifier.from_env({"NOTIFY_SOCKET": manager.notify_socket, **env})
    assert n.watchdog_interval() == expected


def test_without_notify_socket_everything_is_a_silent_no_op(
        caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG, logger="amic.notify")
    n = Notifier.from_env({"WATCHDOG_USEC": "30000000"})
    assert not n.enabled
    assert [n.ready(), n.status("x"), n.watchdog(), n.stopping(), n.reloading()] == [False] * 5
    assert n.watchdog_interval() is None  # nobody to ping
    assert n.sent == 0 and n.failures == 0
    assert caplog.records == []
    n.close()


async def test_watchdog_loop_without_watchdog_returns_at_once() -> None:
    async with asyncio.timeout(1.0):
        await watchdog_loop(Notifier.from_env({}), lambda: True)


def test_send_failures_never_raise_and_are_logged_once(
        manager: Manager, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="amic.notify")
    missing = str(Path(manager.notify_socket).with_name("gone"))
    n = Notifier.from_env({"NOTIFY_SOCKET": missing})
    assert n.enabled
    assert not n.ready()
    assert not n.watchdog()
    assert not n.stopping()
    assert n.failures == 3
    warnings = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1 and missing in warnings[0].getMessage()

    # The socket appears (as after a systemd re-exec): delivery resumes, logged once.
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as late:
        late.bind(missing)
        late.settimeout(2.0)
        assert n.watchdog()
        assert late.recv(4096) == b"WATCHDOG=1"
    assert [r.levelno for r in caplog.records] == [logging.WARNING, logging.INFO]


def test_a_vanished_manager_socket_does_not_raise(manager: Manager) -> None:
    n = Notifier.from_env({"NOTIFY_SOCKET": manager.notify_socket})
    assert n.watchdog()
    manager.sock.close()
    os.unlink(manager.notify_socket)
    assert not n.watchdog()
    assert not n.status("still here")


def test_unsupported_address_is_disabled(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.WARNING, logger="amic.notify")
    n = Notifier.from_env({"NOTIFY_SOCKET": "vsock:2:1234"})
    assert not n.enabled
    assert not n.ready()
    assert len(caplog.records) == 1


async def test_watchdog_loop_pings_only_while_healthy(manager: Manager) -> None:
    # WATCHDOG_USEC 40 ms: a ping every 20 ms.
    n = Notifier.from_env({"NOTIFY_SOCKET": manager.notify_socket, "WATCHDOG_USEC": "40000",
                           "WATCHDOG_PID": str(os.getpid())})
    healthy = True

    def check() -> bool:
        return healthy

    task = asyncio.create_task(watchdog_loop(n, check))
    try:
        await asyncio.sleep(0.15)
        pings = manager.drain()
        assert len(pings) >= 3 and set(pings) == {"WATCHDOG=1"}

        healthy = False  # wedged: the pings stop, so systemd would restart us
        manager.drain()  # pings are sent synchronously: none can be in flight now
        await asyncio.sleep(0.15)
        assert manager.drain() == []
        assert not task.done()

        healthy = True  # recovered in time: the pings resume
        await asyncio.sleep(0.1)
        assert "WATCHDOG=1" in manager.drain()
    finally:
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task


async def test_watchdog_loop_treats_a_failing_check_as_unhealthy(manager: Manager) -> None:
    n = Notifier.from_env({"NOTIFY_SOCKET": manager.notify_socket})

    def broken() -> bool:
        raise RuntimeError("health check broke")

    task = asyncio.create_task(watchdog_loop(n, broken, interval=0.01))
    await asyncio.sleep(0.08)
    assert not task.done()
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert manager.drain() == []

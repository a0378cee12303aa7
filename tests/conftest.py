"""Shared fixtures: amic's meter simulators run as real subprocesses of the CLI.

``amic simulate <protocol> --listen 127.0.0.1:0 ...`` prints one line
``listening on tcp://HOST:PORT`` once it accepts connections and serves until SIGTERM.
:func:`amic_simulator` starts it, waits for that line (with a deadline), and always stops
it: SIGTERM, then SIGKILL if it lingers.  Its stdout is drained by a thread so it never
blocks on a full pipe; stdout and stderr are quoted in any start-up failure.
"""

from __future__ import annotations

import asyncio
import os
import queue
import re
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import pytest

BIN = Path(sys.executable).parent
READY_LINE = re.compile(r"^listening on tcp://(?P<host>\[[^\]]+\]|[^\s:]+):(?P<port>\d+)\s*$")
START_TIMEOUT = 15.0  # seconds until the ready line must appear
STOP_TIMEOUT = 5.0  # seconds after SIGTERM before SIGKILL


@dataclass
class SimulatorProcess:
    host: str
    port: int
    proc: subprocess.Popen[str]
    argv: list[str]
    stdout_lines: list[str] = field(default_factory=list)
    stderr_path: Path | None = None

    @property
    def address(self) -> tuple[str, int]:
        return self.host, self.port

    def stderr_text(self) -> str:
        if self.stderr_path is None or not self.stderr_path.exists():
            return ""
        return self.stderr_path.read_text(errors="replace")

    def diagnostics(self) -> str:
        """Command, exit status and output so far: for assertion messages."""
        status = self.proc.poll()
        return (f"command: {' '.join(self.argv)}\n"
                f"status: {'running' if status is None else f'exited {status}'}\n"
                f"stdout:\n{''.join(self.stdout_lines)}\nstderr:\n{self.stderr_text()}")


def free_port() -> int:
    """A loopback TCP port nobody listens on (for servers the tests start)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def amic_command() -> list[str]:
    exe = BIN / "amic"
    if exe.exists():
        return [str(exe)]
    return [sys.executable, "-c", "from collector.cli import main; main()"]


def _stop(proc: subprocess.Popen[str]) -> None:
    if proc.poll() is not None:
        return
    try:
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=STOP_TIMEOUT)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(timeout=STOP_TIMEOUT)
    except ProcessLookupError:
        pass


@contextmanager
def amic_simulator(args: Sequence[str], stderr_path: Path,
                   start_timeout: float = START_TIMEOUT) -> Iterator[SimulatorProcess]:
    """Run ``amic simulate <args>``; yield once it prints its listening line."""
    argv = [*amic_command(), "simulate", *args]
    env = dict(os.environ, PYTHONUNBUFFERED="1")  # the ready line must not sit in a buffer
    with stderr_path.open("w") as err:
        proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                                stderr=err, text=True, env=env)
    lines: list[str] = []
    ready: queue.Queue[str | None] = queue.Queue()

    def drain() -> None:
        assert proc.stdout is not None
        for line in proc.stdout:
            lines.append(line)
            ready.put(line)
        ready.put(None)  # EOF: the process closed stdout (usually: it exited)

    threading.Thread(target=drain, name="simulator-stdout", daemon=True).start()
    sim = SimulatorProcess("", 0, proc, argv, lines, stderr_path)
    try:
        deadline = time.monotonic() + start_timeout
        while True:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise RuntimeError(f"simulator did not print its listening line within "
                                   f"{start_timeout:g} s\n{sim.diagnostics()}")
            try:
                line = ready.get(timeout=remaining)
            except queue.Empty:
                continue
            if line is None:
                proc.wait(timeout=STOP_TIMEOUT)
                raise RuntimeError(f"simulator exited before listening\n{sim.diagnostics()}")
            m = READY_LINE.match(line.strip())
            if m:
                sim.host = m["host"].strip("[]")
                sim.port = int(m["port"])
                break
        yield sim
    finally:
        _stop(proc)


@pytest.fixture(scope="module")
def dlt645_simulator(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SimulatorProcess]:
    """Three DL/T645 meters (000000000001..000000000003) on a free loopback port."""
    stderr_path = tmp_path_factory.mktemp("dlt645-sim") / "stderr.txt"
    with amic_simulator(["dlt645", "--listen", "127.0.0.1:0", "--meters", "3",
                         "--td-ms", "20"], stderr_path) as sim:
        yield sim


@contextmanager
def simulator_cli(kind: str, args: list[str]
                  ) -> Iterator[tuple[subprocess.Popen[str], list[str]]]:
    """``amic simulate KIND ARGS`` in a subprocess; yields it and its listening line(s)."""
    argv = [sys.executable, "-c", "from collector.cli import main; main()", "simulate",
            kind, *args]
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env=env)
    try:
        assert proc.stdout is not None
        lines = [proc.stdout.readline()]
        if "--pty" in args:
            lines.append(proc.stdout.readline())
        yield proc, lines
    finally:
        _stop(proc)


async def until(cond: Callable[[], object], timeout: float = 15.0, *,
                what: Callable[[], object] | None = None) -> None:
    """Poll ``cond`` every 20 ms until it is true; AssertionError after ``timeout`` s
    (with ``what()`` in the message, to show what was seen instead)."""
    deadline = time.monotonic() + timeout
    while not cond():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout:g} s"
                                 f"{': ' + str(what()) if what is not None else ''}")
        await asyncio.sleep(0.02)

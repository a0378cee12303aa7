"""``amic run`` in a subprocess with its own NOTIFY_SOCKET, for process-level tests."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import time
from pathlib import Path

from conftest import amic_command


class Daemon:
    """``amic run`` in a subprocess with its own NOTIFY_SOCKET."""

    def __init__(self, config: Path, tmp: Path, name: str = "daemon",
                 env: dict[str, str] | None = None) -> None:
        self.sock_path = tmp / f"{name}.sock"
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind(str(self.sock_path))
        self.sock.settimeout(0.2)
        self.messages: list[str] = []
        self.log = tmp / f"{name}.log"
        full_env = dict(os.environ, NOTIFY_SOCKET=str(self.sock_path), PYTHONUNBUFFERED="1",
                        **(env or {}))
        with self.log.open("w") as log:
            self.proc = subprocess.Popen([*amic_command(), "run", "--config", str(config),
                                          "--no-align"], stdout=log, stderr=log, env=full_env)

    def wait_for(self, text: str, timeout: float = 15.0) -> str:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                msg = self.sock.recv(4096).decode()
                self.messages.append(msg)
                if text in msg:
                    return msg
            except TimeoutError:
                assert self.proc.poll() is None, f"daemon exited\n{self.log.read_text()}"
        raise AssertionError(f"no {text!r} in {self.messages}\n{self.log.read_text()}")

    def wait_log(self, text: str, timeout: float = 15.0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if text in self.log.read_text():
                return
            time.sleep(0.1)
        raise AssertionError(f"no {text!r} in the log\n{self.log.read_text()}")

    def stop(self, sig: signal.Signals = signal.SIGTERM, timeout: float = 10.0) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
        try:
            return self.proc.wait(timeout=timeout)
        finally:
            if self.proc.poll() is None:
                self.proc.kill()
            self._drain()

    def _drain(self) -> None:
        """Keep what the daemon said on its way out, then close the socket (once)."""
        if self.sock.fileno() == -1:
            return
        self.sock.setblocking(False)
        while True:
            try:
                self.messages.append(self.sock.recv(4096).decode())
            except BlockingIOError:
                break
        self.sock.close()


def worker_processes(parent: int) -> list[int]:
    """Pids of the forwarder worker processes (collector/forward/linework.py) of ``parent``."""
    found = []
    for d in Path("/proc").iterdir():
        if not d.name.isdigit():
            continue
        try:
            ppid = int((d / "stat").read_text().rsplit(")", 1)[1].split()[1])
            cmd = (d / "cmdline").read_bytes()
        except (OSError, IndexError, ValueError):
            continue
        if ppid == parent and b"linework.py" in cmd:
            found.append(int(d.name))
    return found


def gone(pid: int, timeout: float = 10.0) -> bool:
    """Whether process ``pid`` ends (or is a zombie) within ``timeout`` s."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
        except OSError:
            return True
        if state == "Z":
            return True
        time.sleep(0.05)
    return False

"""The systemd service notification protocol, without libsystemd.

systemd gives a ``Type=notify`` service the address of a datagram socket in
``NOTIFY_SOCKET`` (a file system path, or ``@name`` for the abstract namespace); the
service sends it newline-separated ``KEY=VALUE`` assignments (sd_notify(3))::

    n = Notifier.from_env()
    n.ready()                 # READY=1 + MAINPID: start-up finished
    n.status("b1: 12/40")     # STATUS=...: shown by systemctl status
    n.reloading(); ...; n.ready()   # SIGHUP handled (RELOADING=1 + MONOTONIC_USEC)
    n.stopping()              # STOPPING=1: SIGTERM received, draining
    asyncio.create_task(watchdog_loop(n, daemon.healthy))   # WATCHDOG=1 pings

Without ``NOTIFY_SOCKET`` (run by hand, in tests) every call is a silent no-op.  A send
that fails is logged (once per run of failures) and never raises into the daemon.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import socket
import time
from collections.abc import Callable, Mapping

log = logging.getLogger("amic.notify")

STATUS_MAX = 1000  # characters of STATUS= text kept (a datagram must stay < 4 KiB)


def _monotonic_usec() -> int:
    return time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000


class Notifier:
    """Sends notifications to the service manager at ``address`` (None: do nothing).

    ``address`` is as in ``NOTIFY_SOCKET``: an absolute path, or ``@name`` for a socket in
    the abstract namespace.  ``watchdog_usec``/``watchdog_pid`` are ``WATCHDOG_USEC`` and
    ``WATCHDOG_PID`` (see :meth:`watchdog_interval`).
    """

    def __init__(self, address: str | None = None, *, watchdog_usec: int | None = None,
                 watchdog_pid: int | None = None, send_timeout: float = 0.25) -> None:
        self.address = address or None
        self.watchdog_usec = watchdog_usec
        self.watchdog_pid = watchdog_pid
        self.send_timeout = send_timeout
        self.sent = 0  # datagrams delivered
        self.failures = 0  # datagrams that could not be delivered
        self._target: str | None = None
        self._sock: socket.socket | None = None
        self._failing = False
        self._last_status: str | None = None
        if self.address is not None:
            if self.address.startswith("@"):
                self._target = "\0" + self.address[1:]
            elif self.address.startswith("/"):
                self._target = self.address
            else:  # vsock:, relative paths: not supported (systemd itself passes neither)
                log.warning("NOTIFY_SOCKET=%r is not supported (neither a path nor '@name'); "
                            "service notifications disabled", self.address)

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> Notifier:
        """A notifier for ``NOTIFY_SOCKET``, ``WATCHDOG_USEC``, ``WATCHDOG_PID``.

        ``environ`` defaults to :data:`os.environ`.  Malformed watchdog values disable the
        watchdog (logged), they never prevent start-up.
        """
        env = os.environ if environ is None else environ

        def number(key: str) -> int | None:
            raw = env.get(key)
            if raw is None or raw == "":
                return None
            try:
                value = int(raw)
            except ValueError:
                value = 0
            if value <= 0:
                log.warning("ignoring %s=%r: not a positive integer", key, raw)
                return None
            return value

        return cls(env.get("NOTIFY_SOCKET") or None, watchdog_usec=number("WATCHDOG_USEC"),
                   watchdog_pid=number("WATCHDOG_PID"))

    @property
    def enabled(self) -> bool:
        """Whether there is a service manager to notify."""
        return self._target is not None

    def __repr__(self) -> str:
        return f"<Notifier {self.address or 'disabled'}>"

    # ---- the messages --------------------------------------------------------------------

    def ready(self) -> bool:
        """READY=1 (start-up or a reload finished), with MAINPID."""
        return self.notify(f"READY=1\nMAINPID={os.getpid()}")

    def status(self, text: str) -> bool:
        """STATUS=text, one line (newlines become spaces); an unchanged text is not resent."""
        line = " ".join(text.splitlines())[:STATUS_MAX]
        if line == self._last_status:
            return True
        ok = self.notify(f"STATUS={line}")
        if ok:
            self._last_status = line
        return ok

    def watchdog(self) -> bool:
        """WATCHDOG=1: alive; systemd restarts the service if these stop coming."""
        return self.notify("WATCHDOG=1")

    def stopping(self) -> bool:
        """STOPPING=1: shutting down (SIGTERM received)."""
        return self.notify("STOPPING=1")

    def reloading(self) -> bool:
        """RELOADING=1 with MONOTONIC_USEC (as Type=notify-reload, systemd >= 253, requires).

        Send :meth:`ready` once the new configuration is in effect (or was rejected).
        """
        return self.notify(f"RELOADING=1\nMONOTONIC_USEC={_monotonic_usec()}")

    def watchdog_interval(self) -> float | None:
        """Seconds between watchdog pings (half of ``WATCHDOG_USEC``), or None.

        None when there is no watchdog: no ``WATCHDOG_USEC``, no notify socket, or a
        ``WATCHDOG_PID`` naming another process (the variables were inherited).
        """
        if not self.enabled or self.watchdog_usec is None:
            return None
        if self.watchdog_pid is not None and self.watchdog_pid != os.getpid():
            return None
        return self.watchdog_usec / 2 / 1e6

    # ---- sending --------------------------------------------------------------------------

    def notify(self, message: str) -> bool:
        """Send one datagram of assignments; True if delivered (False also when disabled)."""
        if self._target is None:
            return False
        try:
            if self._sock is None:
                sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC)
                # Bounded: the event loop must never hang on a full manager queue.
                sock.settimeout(self.send_timeout)
                self._sock = sock
            self._sock.sendto(message.encode(), self._target)
        except OSError as e:  # includes socket.timeout
            self.failures += 1
            if not self._failing:
                self._failing = True
                log.warning("cannot notify the service manager at %s: %s (further failures "
                            "are not logged until a notification gets through)",
                            self.address, e)
            self._close_socket()
            return False
        self.sent += 1
        if self._failing:
            self._failing = False
            log.info("service manager notifications delivered again")
        return True

    def close(self) -> None:
        self._close_socket()

    def _close_socket(self) -> None:
        sock, self._sock = self._sock, None
        if sock is not None:
            with contextlib.suppress(OSError):
                sock.close()


async def watchdog_loop(notifier: Notifier, healthy: Callable[[], bool], *,
                        interval: float | None = None) -> None:
    """Send WATCHDOG=1 every ``interval`` seconds while ``healthy()`` is True.

    ``interval`` defaults to :meth:`Notifier.watchdog_interval`; without a watchdog the
    coroutine returns at once.  While ``healthy()`` is False (or raises) no ping is sent,
    so systemd restarts a wedged daemon once ``WatchdogSec`` passes; pings resume if it
    recovers before that.  A blocked event loop stops the pings by itself.  Runs until
    cancelled.
    """
    period = notifier.watchdog_interval() if interval is None else interval
    if period is None or period <= 0:
        return
    was_healthy = True
    while True:
        try:
            ok = bool(healthy())
        except Exception:
            log.exception("health check failed")
            ok = False
        if ok:
            notifier.watchdog()
            if not was_healthy:
                log.warning("healthy again: watchdog pings resumed")
        elif was_healthy:
            log.error("unhealthy: watchdog pings withheld; systemd will restart the "
                      "service unless it recovers")
        was_healthy = ok
        await asyncio.sleep(period)


__all__ = ["Notifier", "watchdog_loop"]

"""A bus reached over TCP: a serial server / concentrator port bridging to RS-485."""

from __future__ import annotations

import asyncio
import socket
from typing import Unpack

from .bus import Bus, BusOptions, Link, ProtocolLink


class TcpBus(Bus):
    """``TcpBus(host, port)``: the TCP port of a serial server, as one half-duplex line.

    ``line_baud``: the baud rate of the RS-485 line behind the server, if known; Td then
    starts after the request has had time to go out on that line (11 bits a byte).
    Other keyword arguments are those of :class:`~drivers.bus.Bus` (``td``, ``tb``, ...).
    """

    def __init__(
        self,
        host: str,
        port: int,
        *,
        line_baud: int | None = None,
        **options: Unpack[BusOptions],
    ) -> None:
        if not host:
            raise ValueError("TCP bus: host is empty")
        if not 0 < port < 65536:
            raise ValueError(f"TCP bus: port {port} is not in 1-65535")
        if line_baud is not None and line_baud <= 0:
            raise ValueError(f"TCP bus: line_baud {line_baud} must be positive")
        shown = f"[{host}]" if ":" in host else host
        super().__init__(name=f"tcp://{shown}:{port}", **options)
        self.host = host
        self.port = port
        self.line_baud = line_baud

    async def _open_link(self) -> Link:
        transport, link = await asyncio.get_running_loop().create_connection(
            ProtocolLink, self.host, self.port)
        sock = transport.get_extra_info("socket")
        if sock is not None:
            # Small frames must go at once; keepalive notices a dead server on an idle link.
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE, 1)
        return link

    def tx_time(self, nbytes: int) -> float:
        return nbytes * 11 / self.line_baud if self.line_baud else 0.0


__all__ = ["TcpBus"]

"""Where a bus is, as one URL string (command line, configuration files).

* ``tcp://HOST:PORT`` (``tcp://[::1]:PORT`` for IPv6), options ``td_ms``, ``tb_ms``,
  ``line_baud`` (baud of the RS-485 line behind the serial server);
* ``serial:///dev/ttyUSB0`` (``serial://COM3`` on Windows), options ``baud`` (2400),
  ``parity`` (E), ``bytesize`` (8), ``stopbits`` (1), ``td_ms``, ``tb_ms``.

Example: ``serial:///dev/ttyUSB0?baud=2400&parity=E&td_ms=800``.  Every mistake is a
:class:`ValueError` naming the part at fault.
"""

from __future__ import annotations

from dataclasses import dataclass
from urllib.parse import parse_qsl, urlsplit

from .bus import Bus
from .serial import BYTESIZES, PARITIES, SerialBus
from .tcp import TcpBus


@dataclass(frozen=True, slots=True)
class TcpTarget:
    host: str
    port: int
    td: float | None = None  # seconds; None: the bus default
    tb: float | None = None
    line_baud: int | None = None

    def bus(self, *, td: float | None = None, tb: float | None = None) -> TcpBus:
        """A (closed) bus for this target; ``td``/``tb`` override the URL's."""
        return TcpBus(self.host, self.port, line_baud=self.line_baud,
                      **_timing(self.td if td is None else td, self.tb if tb is None else tb))


@dataclass(frozen=True, slots=True)
class SerialTarget:
    device: str
    baud: int = 2400
    bytesize: int = 8
    parity: str = "E"
    stopbits: float = 1
    td: float | None = None
    tb: float | None = None

    def bus(self, *, td: float | None = None, tb: float | None = None) -> SerialBus:
        """A (closed) bus for this target; ``td``/``tb`` override the URL's."""
        return SerialBus(self.device, self.baud, self.bytesize, self.parity, self.stopbits,
                         **_timing(self.td if td is None else td, self.tb if tb is None else tb))


Target = TcpTarget | SerialTarget


def _timing(td: float | None, tb: float | None) -> dict[str, float]:
    out: dict[str, float] = {}
    if td is not None:
        out["td"] = td
    if tb is not None:
        out["tb"] = tb
    return out


_TCP_OPTIONS = ("td_ms", "tb_ms", "line_baud")
_SERIAL_OPTIONS = ("baud", "parity", "bytesize", "stopbits", "td_ms", "tb_ms")


def _positive_int(url: str, key: str, text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise ValueError(f"target {url!r}: {key} {text!r} is not a whole number") from None
    if value <= 0:
        raise ValueError(f"target {url!r}: {key} {text!r} must be positive")
    return value


def _options(url: str, query: str, allowed: tuple[str, ...]) -> dict[str, str]:
    out: dict[str, str] = {}
    try:
        pairs = parse_qsl(query, keep_blank_values=True, strict_parsing=bool(query))
    except ValueError:
        raise ValueError(f"target {url!r}: query {query!r} is not key=value&...") from None
    for key, value in pairs:
        if key not in allowed:
            raise ValueError(f"target {url!r}: unknown option {key!r} "
                             f"(allowed: {', '.join(allowed)})")
        if key in out:
            raise ValueError(f"target {url!r}: option {key!r} given twice")
        if not value:
            raise ValueError(f"target {url!r}: option {key!r} has no value")
        out[key] = value
    return out


def _ms(url: str, opts: dict[str, str], key: str) -> float | None:
    if key not in opts:
        return None
    return _positive_int(url, key, opts[key]) / 1000


def _parse_tcp(url: str, netloc: str, path: str, query: str) -> TcpTarget:
    if path not in ("", "/"):
        raise ValueError(f"target {url!r}: unexpected path {path!r} after HOST:PORT")
    if netloc.startswith("["):
        end = netloc.find("]")
        if end < 0:
            raise ValueError(f"target {url!r}: IPv6 host {netloc!r} lacks its closing ']'")
        host, rest = netloc[1:end], netloc[end + 1 :]
        if not rest.startswith(":"):
            raise ValueError(f"target {url!r}: missing ':PORT' after the host")
        port_text = rest[1:]
    else:
        host, sep, port_text = netloc.rpartition(":")
        if not sep:
            raise ValueError(f"target {url!r}: missing ':PORT' after host {netloc!r}")
    if "@" in host:
        raise ValueError(f"target {url!r}: user info {host.split('@')[0]!r} is not supported")
    if not host:
        raise ValueError(f"target {url!r}: missing host before ':{port_text}'")
    if not port_text.isdigit() or not 0 < int(port_text) < 65536:
        raise ValueError(f"target {url!r}: port {port_text!r} is not a number 1-65535")
    opts = _options(url, query, _TCP_OPTIONS)
    line_baud = (_positive_int(url, "line_baud", opts["line_baud"])
                 if "line_baud" in opts else None)
    return TcpTarget(host, int(port_text), _ms(url, opts, "td_ms"), _ms(url, opts, "tb_ms"),
                     line_baud)


def _parse_serial(url: str, netloc: str, path: str, query: str) -> SerialTarget:
    device = netloc + path
    if not device or device == "/":
        raise ValueError(f"target {url!r}: missing device (e.g. serial:///dev/ttyUSB0)")
    opts = _options(url, query, _SERIAL_OPTIONS)
    baud = _positive_int(url, "baud", opts["baud"]) if "baud" in opts else 2400
    parity = opts.get("parity", "E").upper()
    if parity not in PARITIES:
        raise ValueError(f"target {url!r}: parity {opts['parity']!r} is not one of "
                         f"{', '.join(PARITIES)}")
    bytesize = 8
    if "bytesize" in opts:
        bytesize = _positive_int(url, "bytesize", opts["bytesize"])
        if bytesize not in BYTESIZES:
            raise ValueError(f"target {url!r}: bytesize {opts['bytesize']!r} is not one of "
                             f"5, 6, 7, 8")
    stopbits: float = 1
    if "stopbits" in opts:
        table = {"1": 1, "1.5": 1.5, "2": 2}
        if opts["stopbits"] not in table:
            raise ValueError(f"target {url!r}: stopbits {opts['stopbits']!r} is not one of "
                             f"1, 1.5, 2")
        stopbits = table[opts["stopbits"]]
    return SerialTarget(device, baud, bytesize, parity, stopbits, _ms(url, opts, "td_ms"),
                        _ms(url, opts, "tb_ms"))


def parse_target(url: str) -> Target:
    """Parse ``tcp://HOST:PORT[?...]`` or ``serial://DEVICE[?...]``; ValueError names the fault."""
    text = url.strip()
    scheme, sep, _ = text.partition("://")
    if not sep:
        raise ValueError(f"target {url!r}: expected tcp://HOST:PORT or serial:///dev/ttyX")
    scheme = scheme.lower()
    if scheme not in ("tcp", "serial"):
        raise ValueError(f"target {url!r}: scheme {scheme!r} is not tcp or serial")
    parts = urlsplit(text)
    if parts.fragment:
        raise ValueError(f"target {url!r}: unexpected fragment '#{parts.fragment}'")
    if scheme == "tcp":
        return _parse_tcp(url, parts.netloc, parts.path, parts.query)
    return _parse_serial(url, parts.netloc, parts.path, parts.query)


def bus_from_url(url: str, *, td: float | None = None, tb: float | None = None) -> Bus:
    """A closed :class:`Bus` for ``url``; ``td``/``tb`` (seconds) override the URL's."""
    return parse_target(url).bus(td=td, tb=tb)


__all__ = ["SerialTarget", "Target", "TcpTarget", "bus_from_url", "parse_target"]

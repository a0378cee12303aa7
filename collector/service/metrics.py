"""Prometheus metrics of the collector, in a registry of their own (no global state).

::

    m = Metrics()
    m.observe_transaction("b1", 0.42, "ok")            # or a failure reason, see REASONS
    m.observe_job("b1", 1.3, "NoReply")               # the scheduler's (bus, s, outcome)
    m.set_bus_counters("b1", bus)                      # a drivers.bus.Bus, every few seconds
    m.set_queue_depth("b1", "scheduled", 17)
    m.set_area_success("A1", 0.98); m.set_bus_success("b1", 0.97)
    m.observe_cycle("energy-15min", 212.0)
    m.set_store_size(123_456_789); m.set_outbox_lag(0); m.add_readings_committed(400)
    server = m.start_server("127.0.0.1:9108")          # GET /metrics; server.close()
    text = m.render()                                  # the exposition, for tests

Exposed families (all prefixed ``amic_``):

=======================================  =================  ===================================
name                                     labels             what
=======================================  =================  ===================================
transactions_total                       bus, outcome       meter reads by outcome (ok, failed)
transaction_failures_total               bus, reason        failed reads by reason (REASONS)
transaction_duration_seconds (hist.)     bus                time of each read, 0.05 .. 5 s
bus_requests_total                       bus                requests written on the line
bus_timeouts_total                       bus                NoReply + IncompleteReply
bus_link_drops_total                     bus                links lost after they were up
bus_connects_total                       bus                successful (re)connections
bus_connect_failures_total               bus                failed connection attempts
bus_bytes_total                          bus, direction     bytes in / out on the line
bus_bytes_discarded_total                bus                stray or late bytes (part of "in")
bus_busy_seconds_total                   bus                time the line was held
bus_utilisation_ratio                    bus                busy fraction over the last window
queue_depth                              bus, lane          jobs waiting (command, on_demand,
                                                            scheduled)
area_read_success_ratio                  area               meters read / planned, last cycle
bus_read_success_ratio                   bus                same, per bus
cycle_duration_seconds                   schedule           length of the last completed cycle
cycles_total                             schedule           completed cycles
cycle_last_end_timestamp_seconds         schedule           when the last cycle ended (epoch)
store_size_bytes                                            size of the store on disk
outbox_lag_rows                                             rows not yet forwarded (and not
                                                            committed); without a forwarder,
                                                            rows waiting to be committed
store_full                                                  1 while the store has no room
readings_committed_total                                    readings committed to the store
config_reloads_total                     result             SIGHUP reloads (applied, rejected)
listener_terminals_online                listener           terminals logged in now
listener_connections_total               listener           TCP connections accepted
listener_logins_total                    listener           logins confirmed (AFN02 F1)
listener_logouts_total                   listener           logouts (AFN02 F2)
listener_heartbeats_total                listener           heartbeats answered (AFN02 F3)
listener_refused_unknown_total           listener           logins of terminals not in the
                                                            configuration: refused, never
                                                            served
listener_refused_no_login_total          listener           connections whose first frame was
                                                            not a login: refused
listener_bad_frames_total                listener           frames with a bad length, protocol
                                                            id, checksum or end, or from another
                                                            address on a terminal's connection
listener_replaced_total                  listener           sessions replaced by a new login of
                                                            the same terminal
listener_idle_timeouts_total             listener           connections closed after the idle
                                                            timeout
listener_requests_total                  listener           requests sent to terminals
listener_retries_total                   listener           requests sent again (no reply)
listener_no_reply_total                  listener           requests without a reply after the
                                                            retries
listener_denied_total                    listener           requests denied (AFN00 F2, or F3
                                                            with an error)
concentrator_online                      concentrator,      1 while the [[concentrator]] is
                                         listener           logged in, else 0
=======================================  =================  ===================================

The bus counters mirror :meth:`drivers.bus.Bus.counters`; they stay monotonic when a
reload replaces a bus object (whose own counters start again at zero).  A bus that a
reload removes loses every series (:meth:`Metrics.forget_bus`).  The listener counters
mirror :meth:`drivers.qgdw3761.MasterStation.counters` the same way
(:meth:`Metrics.set_listener`).
"""

from __future__ import annotations

import contextlib
import socket
import threading
import time
import weakref
from collections import deque
from collections.abc import Mapping
from socketserver import ThreadingMixIn
from typing import Any, Protocol
from wsgiref.simple_server import WSGIRequestHandler, WSGIServer, make_server

from prometheus_client import (
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
    make_wsgi_app,
)

REASONS = ("no_reply", "incomplete", "wrong_reply", "bad_reply", "meter_error", "link_down")
"""Failure reasons; anything else is counted as ``other``."""

LANES = ("command", "on_demand", "scheduled")

# A DL/T645 read at 2400 baud 8E1 (4.58 ms per byte): ~20-byte request + ~20-30 byte
# reply + Td is 0.2-0.5 s; a job of several DIs, retries or Td timeouts reaches seconds.
LATENCY_BUCKETS = (0.05, 0.1, 0.2, 0.3, 0.5, 0.75, 1.0, 1.5, 2.0, 3.0, 5.0)

UTILISATION_WINDOW = 60.0  # seconds of busy_time history behind bus_utilisation_ratio

# The scheduler reports a failed job by its exception's class name.
_EXCEPTION_REASONS = {
    "NoReply": "no_reply",
    "IncompleteReply": "incomplete",
    "WrongReply": "wrong_reply",
    "BadReply": "bad_reply",
    "MeterError": "meter_error",
    "LinkDown": "link_down",
    "BusClosed": "link_down",
}

_COUNTERS = (  # Bus.counters() key -> (family attribute, extra label values)
    ("transactions", "bus_requests", ()),
    ("timeouts", "bus_timeouts", ()),
    ("link_drops", "bus_link_drops", ()),
    ("connects", "bus_connects", ()),
    ("connect_failures", "bus_connect_failures", ()),
    ("bytes_in", "bus_bytes", ("in",)),
    ("bytes_out", "bus_bytes", ("out",)),
    ("bytes_discarded", "bus_bytes_discarded", ()),
    ("busy_time", "bus_busy_seconds", ()),
)

_LISTENER_COUNTERS = (  # MasterStation.counters() key -> family attribute
    ("connections", "listener_connections"),
    ("logins", "listener_logins"),
    ("logouts", "listener_logouts"),
    ("heartbeats", "listener_heartbeats"),
    ("refused_unknown", "listener_refused_unknown"),
    ("refused_no_login", "listener_refused_no_login"),
    ("bad_frames", "listener_bad_frames"),
    ("replaced", "listener_replaced"),
    ("timeouts", "listener_idle_timeouts"),
    ("requests", "listener_requests"),
    ("retries", "listener_retries"),
    ("no_reply", "listener_no_reply"),
    ("denied", "listener_denied"),
)


class HasCounters(Protocol):
    """Anything with :meth:`drivers.bus.Bus.counters`."""

    def counters(self) -> Mapping[str, float]: ...


def failure_reason(outcome: str) -> str | None:
    """None for success ("ok"), else one of :data:`REASONS` or ``"other"``.

    Takes a reason as such (``"no_reply"``) or a driver exception's class name
    (``"NoReply"``, ``"LinkDown"``, ...).
    """
    if outcome == "ok":
        return None
    if outcome in REASONS:
        return outcome
    return _EXCEPTION_REASONS.get(outcome, "other")


def parse_listen(listen: str) -> tuple[str, int]:
    """``HOST:PORT`` (``[v6]:PORT`` for IPv6) as ``(host, port)``, port 0 meaning any
    free port; ValueError if malformed.  The one parser of listen addresses (the
    /metrics endpoint, ``amic simulate --listen``)."""
    host, sep, port_text = listen.rpartition(":")
    if not sep or not host:
        raise ValueError(f"expected HOST:PORT (e.g. 127.0.0.1:9108, [::1]:9108; port 0: "
                         f"any free), got {listen!r}")
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
    elif ":" in host or "[" in host or "]" in host:
        raise ValueError(f"an IPv6 address needs brackets: [{host.strip('[]')}]:{port_text}")
    if not port_text.isascii() or not port_text.isdigit():
        raise ValueError(f"bad port {port_text!r} in {listen!r}")
    port = int(port_text)
    if not 0 <= port <= 65535 or not host:
        raise ValueError(f"bad HOST:PORT {listen!r}")
    return host, port


class _Handler(WSGIRequestHandler):
    def log_message(self, format: str, *args: Any) -> None:
        """Scrapes are not logged."""


class _Server(ThreadingMixIn, WSGIServer):
    daemon_threads = True  # a stuck client never holds up shutdown


class MetricsServer:
    """A running /metrics endpoint (a daemon thread); :meth:`close` stops it."""

    POLL = 0.05  # seconds: how long close() may wait for the serving thread

    def __init__(self, server: WSGIServer, thread: threading.Thread) -> None:
        self._server = server
        self._thread = thread
        self.host: str = str(server.server_address[0])
        self.port: int = int(server.server_address[1])

    @classmethod
    def start(cls, registry: CollectorRegistry, host: str, port: int) -> MetricsServer:
        """Serve ``registry`` (prometheus_client's WSGI app) on ``host:port``."""
        family, _, _, _, sockaddr = socket.getaddrinfo(
            host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)[0]

        class Server(_Server):
            address_family = family

        server = make_server(str(sockaddr[0]), port, make_wsgi_app(registry), Server,
                             handler_class=_Handler)
        thread = threading.Thread(target=server.serve_forever, args=(cls.POLL,),
                                  name="amic-metrics", daemon=True)
        thread.start()
        return cls(server, thread)

    @property
    def url(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"http://{host}:{self.port}/metrics"

    def close(self) -> None:
        """Stop serving and release the port (idempotent)."""
        if self._thread.is_alive():
            self._server.shutdown()
            self._thread.join(timeout=5.0)
        self._server.server_close()

    def __repr__(self) -> str:
        return f"<MetricsServer {self.url}>"


class _Mirror:
    """What was last mirrored from one source of counters: to turn them into increments."""

    def __init__(self) -> None:
        self.source: weakref.ref[Any] | None = None
        self.last: dict[str, float] = {}

    def deltas(self, source: HasCounters | Mapping[str, float]) -> dict[str, float]:
        """How much each counter grew since the last call.  A new source object, or
        counters that went down, count from zero again."""
        # Not isinstance(source, HasCounters): a runtime Protocol check walks the
        # protocol's attributes each time (a fifth of the mirror's cost at 1,000 buses).
        if not isinstance(source, Mapping):
            values: Mapping[str, float] = source.counters()
            if self.source is None or self.source() is not source:
                self.last = {}
            try:
                self.source = weakref.ref(source)
            except TypeError:  # not weak-referenceable: rely on the decrease check
                self.source = None
        else:
            values = source
        if any(values.get(k, 0) < v for k, v in self.last.items()):
            self.last = {}  # the counters were reset
        out = {k: v - self.last.get(k, 0) for k, v in values.items()
               if isinstance(v, int | float)}
        self.last = {k: v for k, v in values.items() if isinstance(v, int | float)}
        return out


class _BusState(_Mirror):
    """A bus's mirror, and its busy time for the utilisation ratio."""

    def __init__(self) -> None:
        super().__init__()
        self.busy: deque[tuple[float, float]] = deque()  # (monotonic, total busy seconds)
        self.busy_total = 0.0
        self.children: list[tuple[str, Any]] = []  # (counter key, the bus's labelled child)
        self.utilisation: Any = None  # the bus's bus_utilisation_ratio child


class Metrics:
    """The collector's metrics; each instance has its own :class:`CollectorRegistry`.

    Update methods are called from the event loop; scrapes run in the server's thread
    (prometheus_client metrics are thread-safe).
    """

    def __init__(self, *, utilisation_window: float = UTILISATION_WINDOW) -> None:
        if not utilisation_window > 0:
            raise ValueError("utilisation_window must be positive")
        self.utilisation_window = utilisation_window
        self.registry = CollectorRegistry(auto_describe=True)
        r = self.registry
        self.transactions = Counter("amic_transactions", "Meter reads (bus jobs) by outcome.",
                                    ["bus", "outcome"], registry=r)
        self.failures = Counter("amic_transaction_failures",
                                "Failed meter reads by reason.", ["bus", "reason"], registry=r)
        self.latency = Histogram("amic_transaction_duration_seconds",
                                 "Duration of meter reads.", ["bus"],
                                 buckets=LATENCY_BUCKETS, registry=r)
        self.bus_requests = Counter("amic_bus_requests", "Requests written on the line.",
                                    ["bus"], registry=r)
        self.bus_timeouts = Counter("amic_bus_timeouts",
                                    "Requests without a complete reply (Td or Tb).",
                                    ["bus"], registry=r)
        self.bus_link_drops = Counter("amic_bus_link_drops", "Links lost after they were up.",
                                      ["bus"], registry=r)
        self.bus_connects = Counter("amic_bus_connects", "Successful (re)connections.",
                                    ["bus"], registry=r)
        self.bus_connect_failures = Counter("amic_bus_connect_failures",
                                            "Failed connection attempts.", ["bus"],
                                            registry=r)
        self.bus_bytes = Counter("amic_bus_bytes", "Bytes on the line.",
                                 ["bus", "direction"], registry=r)
        self.bus_bytes_discarded = Counter("amic_bus_bytes_discarded",
                                           "Stray or late bytes received outside a "
                                           "transaction (included in direction=in).",
                                           ["bus"], registry=r)
        self.bus_busy_seconds = Counter("amic_bus_busy_seconds",
                                        "Time the line was held by transactions.", ["bus"],
                                        registry=r)
        self.bus_utilisation = Gauge("amic_bus_utilisation_ratio",
                                     f"Busy fraction of the line over the last "
                                     f"{utilisation_window:g} s.", ["bus"], registry=r)
        self.queue_depth = Gauge("amic_queue_depth", "Jobs waiting, per bus and lane.",
                                 ["bus", "lane"], registry=r)
        self.area_success = Gauge("amic_area_read_success_ratio",
                                  "Meters read / meters planned in the last completed cycle, "
                                  "per transformer area.", ["area"], registry=r)
        self.bus_success = Gauge("amic_bus_read_success_ratio",
                                 "Meters read / meters planned in the last completed cycle, "
                                 "per bus.", ["bus"], registry=r)
        self.cycle_duration = Gauge("amic_cycle_duration_seconds",
                                    "Duration of the last completed cycle.", ["schedule"],
                                    registry=r)
        self.cycles = Counter("amic_cycles", "Completed cycles.", ["schedule"], registry=r)
        self.cycle_end = Gauge("amic_cycle_last_end_timestamp_seconds",
                               "When the last cycle ended (Unix time).", ["schedule"],
                               registry=r)
        self.store_size = Gauge("amic_store_size_bytes", "Size of the store on disk.",
                                registry=r)
        self.outbox_lag = Gauge("amic_outbox_lag_rows",
                                "Readings the time-series forwarder has not shipped yet, "
                                "plus rows waiting to be committed (only those without a "
                                "forwarder).", registry=r)
        self.store_full = Gauge("amic_store_full",
                                "1 while the store has no room to commit (disk full or "
                                "max_store_mb reached).", registry=r)
        self.readings_committed = Counter("amic_readings_committed",
                                          "Readings committed to the store.", registry=r)
        self.reloads = Counter("amic_config_reloads", "Configuration reloads (SIGHUP).",
                               ["result"], registry=r)
        listener_help = {
            "listener_connections": "TCP connections accepted by the listener.",
            "listener_logins": "Terminal logins confirmed.",
            "listener_logouts": "Terminal logouts.",
            "listener_heartbeats": "Terminal heartbeats answered.",
            "listener_refused_unknown": "Logins of terminals not in the configuration "
                                        "(refused, never served).",
            "listener_refused_no_login": "Connections whose first frame was not a login "
                                         "(refused).",
            "listener_bad_frames": "Bad frames (length, protocol id, checksum, end) or frames "
                                   "from another address on a terminal's connection.",
            "listener_replaced": "Terminal sessions replaced by a new login of the same "
                                 "terminal.",
            "listener_idle_timeouts": "Connections closed after the idle timeout.",
            "listener_requests": "Requests sent to terminals.",
            "listener_retries": "Requests sent again for want of a reply.",
            "listener_no_reply": "Requests without a reply after the retries.",
            "listener_denied": "Requests the terminal denied.",
        }
        for _, family in _LISTENER_COUNTERS:
            setattr(self, family, Counter(f"amic_{family}", listener_help[family],
                                          ["listener"], registry=r))
        self.listener_online = Gauge("amic_listener_terminals_online",
                                     "Terminals logged in to the listener now.", ["listener"],
                                     registry=r)
        self.concentrator_online = Gauge("amic_concentrator_online",
                                         "1 while the concentrator is logged in, else 0.",
                                         ["concentrator", "listener"], registry=r)
        self._buses: dict[str, _BusState] = {}
        self._listeners: dict[str, _Mirror] = {}
        self._concentrators: dict[str, str] = {}  # concentrator -> its listener label

    # ---- reads ----------------------------------------------------------------------------

    def observe_transaction(self, bus: str, seconds: float, outcome: str) -> None:
        """One meter read on ``bus`` that took ``seconds``.

        ``outcome``: ``"ok"``, a reason of :data:`REASONS`, or a driver exception's class
        name (``"NoReply"``...); unknown ones count as reason ``other``.
        """
        reason = failure_reason(outcome)
        self.transactions.labels(bus, "ok" if reason is None else "failed").inc()
        if reason is not None:
            self.failures.labels(bus, reason).inc()
        self.latency.labels(bus).observe(max(seconds, 0.0))

    observe_job = observe_transaction
    """The scheduler's ``observe(bus, seconds, outcome)`` callback."""

    # ---- buses ----------------------------------------------------------------------------

    def set_bus_counters(self, bus: str, source: HasCounters | Mapping[str, float], *,
                         now: float | None = None) -> None:
        """Mirror a bus's counters (``Bus`` or ``Bus.counters()``) and update utilisation.

        Call it every few seconds.  A new bus object under the same name (a reload), or
        counters that went down, count from zero again, so the exported counters keep
        growing.  ``now`` (monotonic seconds) is for tests.
        """
        state = self._buses.get(bus)
        if state is None:
            state = self._buses[bus] = _BusState()
            state.children = [(key, getattr(self, family).labels(bus, *extra))
                              for key, family, extra in _COUNTERS]
        deltas = state.deltas(source)
        for key, child in state.children:
            delta = deltas.get(key, 0)
            if delta > 0:
                child.inc(delta)
                if key == "busy_time":
                    state.busy_total += delta
        self._update_utilisation(bus, state, time.monotonic() if now is None else now)

    def _update_utilisation(self, bus: str, state: _BusState, now: float) -> None:
        samples = state.busy
        if samples and now <= samples[-1][0]:
            samples.pop()  # same instant (or a clock mishap): keep the newest value
        samples.append((now, state.busy_total))
        # Keep the newest sample at or before the window start, as the base.
        while len(samples) > 2 and samples[1][0] <= now - self.utilisation_window:
            samples.popleft()
        if len(samples) < 2:
            return
        t0, busy0 = samples[0]
        ratio = (state.busy_total - busy0) / (now - t0)
        if state.utilisation is None:  # not before there are two samples
            state.utilisation = self.bus_utilisation.labels(bus)
        state.utilisation.set(min(max(ratio, 0.0), 1.0))

    def set_queue_depth(self, bus: str, lane: str, n: int) -> None:
        """Jobs waiting on ``bus`` in ``lane`` (``command``, ``on_demand``, ``scheduled``)."""
        self.queue_depth.labels(bus, lane.lower()).set(n)

    def forget_bus(self, bus: str) -> None:
        """Drop every series of a bus removed by a reload.

        Its counters go too: a bus that is gone must not be scraped as idle forever (a
        bus of that name added later counts from zero, which rate() takes as a reset).
        """
        self._buses.pop(bus, None)
        outcomes, reasons = ("ok", "failed"), (*REASONS, "other")
        series: list[tuple[Any, tuple[str, ...]]] = [
            (self.transactions, (bus, o)) for o in outcomes]
        series += [(self.failures, (bus, r)) for r in reasons]
        series += [(self.bus_bytes, (bus, d)) for d in ("in", "out")]
        series += [(self.queue_depth, (bus, lane)) for lane in LANES]
        series += [(family, (bus,)) for family in (
            self.latency, self.bus_requests, self.bus_timeouts, self.bus_link_drops,
            self.bus_connects, self.bus_connect_failures, self.bus_bytes_discarded,
            self.bus_busy_seconds, self.bus_utilisation, self.bus_success)]
        listener = self._concentrators.pop(bus, None)
        if listener is not None:  # a concentrator is a bus of the scheduler
            series.append((self.concentrator_online, (bus, listener)))
        for family, labels in series:
            with contextlib.suppress(KeyError):  # older prometheus_client raise on absent
                family.remove(*labels)

    # ---- listeners (master stations) -----------------------------------------------------

    def set_listener(self, listener: str, source: HasCounters | Mapping[str, float], *,
                     online: int, concentrators: Mapping[str, bool] | None = None) -> None:
        """Mirror a master station's counters (``MasterStation`` or its ``counters()``),
        the number of terminals ``online``, and whether each of the listener's
        ``concentrators`` (by name) is logged in.  Call it every few seconds."""
        state = self._listeners.get(listener)
        if state is None:
            state = self._listeners[listener] = _Mirror()
        deltas = state.deltas(source)
        for key, family in _LISTENER_COUNTERS:
            family_counter: Counter = getattr(self, family)
            # every family shows from the first call on, at 0: rate() needs a start
            family_counter.labels(listener).inc(max(deltas.get(key, 0), 0))
        self.listener_online.labels(listener).set(online)
        for name, up in (concentrators or {}).items():
            old = self._concentrators.get(name)
            if old is not None and old != listener:  # moved to another listener
                with contextlib.suppress(KeyError):
                    self.concentrator_online.remove(name, old)
            self._concentrators[name] = listener
            self.concentrator_online.labels(name, listener).set(1 if up else 0)

    # ---- cycles -------------------------------------------------------------------------

    def set_area_success(self, area: str, ratio: float) -> None:
        """Share of the area's meters read in the last completed cycle (0..1)."""
        self.area_success.labels(area).set(ratio)

    def set_bus_success(self, bus: str, ratio: float) -> None:
        """Share of the bus's meters read in the last completed cycle (0..1)."""
        self.bus_success.labels(bus).set(ratio)

    def observe_cycle(self, schedule: str, seconds: float) -> None:
        """A cycle of ``schedule`` completed in ``seconds``."""
        self.cycle_duration.labels(schedule).set(seconds)
        self.cycles.labels(schedule).inc()
        self.cycle_end.labels(schedule).set(time.time())

    # ---- store and service ----------------------------------------------------------------

    def set_store_size(self, nbytes: int) -> None:
        self.store_size.set(nbytes)

    def set_outbox_lag(self, rows: int) -> None:
        self.outbox_lag.set(rows)

    def set_store_full(self, full: bool) -> None:
        self.store_full.set(1 if full else 0)

    def add_readings_committed(self, n: int) -> None:
        if n > 0:
            self.readings_committed.inc(n)

    def observe_reload(self, applied: bool) -> None:
        self.reloads.labels("applied" if applied else "rejected").inc()

    # ---- exposition ---------------------------------------------------------------------

    def render(self) -> bytes:
        """The text exposition of every metric (what /metrics serves)."""
        return generate_latest(self.registry)

    def start_server(self, listen: str) -> MetricsServer:
        """Serve /metrics on ``HOST:PORT`` (port 0: any free port; see ``.port``).

        What ``prometheus_client.start_http_server`` does (its WSGI app, a thread per
        scrape, in a daemon thread, so a busy event loop never delays a scrape), but
        :meth:`MetricsServer.close` returns within 50 ms instead of 500.  Raises
        :class:`ListenError` (naming the address) if it cannot be bound, ValueError if
        it is malformed.
        """
        host, port = parse_listen(listen)
        try:
            return MetricsServer.start(self.registry, host, port)
        except OSError as e:
            raise ListenError(listen, "metrics_listen", e) from None


class ListenError(OSError):
    """An address amic was configured to listen on cannot be bound (in use, not local).

    ``str()``: ``cannot listen on 127.0.0.1:9108 (metrics_listen): Address already in use``.
    """

    def __init__(self, address: str, key: str, cause: OSError) -> None:
        super().__init__(cause.errno, cause.strerror or str(cause))
        self.address = address
        self.key = key

    def __str__(self) -> str:
        return f"cannot listen on {self.address} ({self.key}): {self.strerror}"


__all__ = ["LANES", "LATENCY_BUCKETS", "REASONS", "ListenError", "Metrics", "MetricsServer",
           "failure_reason", "parse_listen"]

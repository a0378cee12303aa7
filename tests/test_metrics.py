"""collector.service.metrics: values set through the API, scraped over real HTTP on loopback."""

from __future__ import annotations

import urllib.error
import urllib.request
from collections.abc import Iterator

import pytest
from prometheus_client import REGISTRY
from prometheus_client.parser import text_string_to_metric_families

from collector.service.metrics import (
    LATENCY_BUCKETS,
    Metrics,
    MetricsServer,
    failure_reason,
    parse_listen,
)
from drivers.tcp import TcpBus

Samples = dict[tuple[str, tuple[tuple[str, str], ...]], float]


def samples(text: str) -> Samples:
    """{(sample name, sorted labels): value} of an exposition."""
    out: Samples = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            out[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return out


def value(data: Samples, name: str, **labels: str) -> float:
    return data[(name, tuple(sorted(labels.items())))]


def families(text: str) -> dict[str, str]:
    return {f.name: f.type for f in text_string_to_metric_families(text)}


@pytest.fixture
def server() -> Iterator[tuple[Metrics, MetricsServer]]:
    m = Metrics()
    srv = m.start_server("127.0.0.1:0")  # a free loopback port, chosen by the kernel
    try:
        yield m, srv
    finally:
        srv.close()


def scrape(srv: MetricsServer) -> str:
    with urllib.request.urlopen(srv.url, timeout=5) as r:
        assert r.status == 200
        assert r.headers["Content-Type"].startswith("text/plain")
        body: bytes = r.read()
    return body.decode()


def test_scrape_over_http(server: tuple[Metrics, MetricsServer]) -> None:
    m, srv = server
    assert srv.host == "127.0.0.1" and srv.port > 0
    m.observe_transaction("b1", 0.25, "ok")
    m.observe_transaction("b1", 0.35, "ok")
    m.observe_transaction("b1", 0.55, "no_reply")
    m.observe_job("b2", 1.2, "WrongReply")  # the scheduler's callback: exception names
    m.observe_job("b2", 0.1, "LinkDown")
    m.set_queue_depth("b1", "scheduled", 17)
    m.set_queue_depth("b1", "COMMAND", 1)
    m.set_area_success("A1", 0.98)
    m.set_bus_success("b1", 0.75)
    m.observe_cycle("energy-15min", 212.5)
    m.set_store_size(123_456_789)
    m.set_outbox_lag(42)
    m.add_readings_committed(400)
    m.add_readings_committed(25)
    m.observe_reload(applied=False)

    text = scrape(srv)
    fams = families(text)
    for name, kind in {
        "amic_transactions": "counter", "amic_transaction_failures": "counter",
        "amic_transaction_duration_seconds": "histogram", "amic_queue_depth": "gauge",
        "amic_area_read_success_ratio": "gauge", "amic_bus_read_success_ratio": "gauge",
        "amic_cycle_duration_seconds": "gauge", "amic_cycles": "counter",
        "amic_cycle_last_end_timestamp_seconds": "gauge", "amic_store_size_bytes": "gauge",
        "amic_outbox_lag_rows": "gauge", "amic_readings_committed": "counter",
        "amic_bus_utilisation_ratio": "gauge", "amic_bus_requests": "counter",
        "amic_bus_bytes": "counter", "amic_config_reloads": "counter",
    }.items():
        assert fams.get(name) == kind, name

    s = samples(text)
    assert value(s, "amic_transactions_total", bus="b1", outcome="ok") == 2
    assert value(s, "amic_transactions_total", bus="b1", outcome="failed") == 1
    assert value(s, "amic_transactions_total", bus="b2", outcome="failed") == 2
    assert value(s, "amic_transaction_failures_total", bus="b1", reason="no_reply") == 1
    assert value(s, "amic_transaction_failures_total", bus="b2", reason="wrong_reply") == 1
    assert value(s, "amic_transaction_failures_total", bus="b2", reason="link_down") == 1
    assert value(s, "amic_transaction_duration_seconds_count", bus="b1") == 3
    assert value(s, "amic_transaction_duration_seconds_sum", bus="b1") == pytest.approx(1.15)
    assert value(s, "amic_transaction_duration_seconds_bucket", bus="b1", le="0.3") == 1
    assert value(s, "amic_transaction_duration_seconds_bucket", bus="b1", le="0.5") == 2
    assert value(s, "amic_transaction_duration_seconds_bucket", bus="b1", le="5.0") == 3
    assert value(s, "amic_transaction_duration_seconds_bucket", bus="b2", le="0.05") == 0
    assert value(s, "amic_transaction_duration_seconds_bucket", bus="b2", le="+Inf") == 2
    assert value(s, "amic_queue_depth", bus="b1", lane="scheduled") == 17
    assert value(s, "amic_queue_depth", bus="b1", lane="command") == 1
    assert value(s, "amic_area_read_success_ratio", area="A1") == 0.98
    assert value(s, "amic_bus_read_success_ratio", bus="b1") == 0.75
    assert value(s, "amic_cycle_duration_seconds", schedule="energy-15min") == 212.5
    assert value(s, "amic_cycles_total", schedule="energy-15min") == 1
    assert value(s, "amic_cycle_last_end_timestamp_seconds", schedule="energy-15min") > 1.7e9
    assert value(s, "amic_store_size_bytes") == 123_456_789
    assert value(s, "amic_outbox_lag_rows") == 42
    assert value(s, "amic_readings_committed_total") == 425
    assert value(s, "amic_config_reloads_total", result="rejected") == 1

    # Later values show in the next scrape.
    m.set_outbox_lag(0)
    m.set_area_success("A1", 1.0)
    s = samples(scrape(srv))
    assert value(s, "amic_outbox_lag_rows") == 0
    assert value(s, "amic_area_read_success_ratio", area="A1") == 1.0


def test_render_equals_what_is_served(server: tuple[Metrics, MetricsServer]) -> None:
    m, srv = server
    m.set_store_size(7)
    assert samples(m.render().decode()) == samples(scrape(srv))


def test_close_releases_the_port() -> None:
    m = Metrics()
    srv = m.start_server("127.0.0.1:0")
    scrape(srv)
    srv.close()
    srv.close()  # idempotent
    with pytest.raises(urllib.error.URLError):
        urllib.request.urlopen(srv.url, timeout=2)
    # The port is free again.
    again = m.start_server(f"127.0.0.1:{srv.port}")
    try:
        scrape(again)
    finally:
        again.close()


def test_each_instance_has_its_own_registry() -> None:
    a, b = Metrics(), Metrics()  # no "Duplicated timeseries" error: nothing is global
    a.set_outbox_lag(5)
    assert value(samples(a.render().decode()), "amic_outbox_lag_rows") == 5
    assert value(samples(b.render().decode()), "amic_outbox_lag_rows") == 0
    assert not any(n.startswith("amic_") for n in families(
        __import__("prometheus_client").generate_latest(REGISTRY).decode()))


def test_latency_buckets_suit_a_2400_baud_line() -> None:
    assert LATENCY_BUCKETS[0] == 0.05 and LATENCY_BUCKETS[-1] == 5.0
    assert list(LATENCY_BUCKETS) == sorted(LATENCY_BUCKETS)


@pytest.mark.parametrize("outcome, reason", [
    ("ok", None), ("no_reply", "no_reply"), ("NoReply", "no_reply"),
    ("IncompleteReply", "incomplete"), ("WrongReply", "wrong_reply"),
    ("BadReply", "bad_reply"), ("MeterError", "meter_error"), ("LinkDown", "link_down"),
    ("BusClosed", "link_down"), ("WorkerStopped", "other"), ("ValueError", "other"),
])
def test_failure_reason(outcome: str, reason: str | None) -> None:
    assert failure_reason(outcome) == reason


def test_bus_counters_from_a_real_bus_object() -> None:
    m = Metrics(utilisation_window=60.0)
    bus = TcpBus("127.0.0.1", 1, td=0.1)  # never opened: only its counters are used
    bus.transactions, bus.timeouts, bus.link_drops = 10, 2, 1
    bus.connects, bus.connect_failures = 2, 3
    bus.bytes_in, bus.bytes_out, bus.bytes_discarded = 300, 200, 12
    bus.busy_time = 0.0
    m.set_bus_counters("b1", bus, now=100.0)
    bus.transactions += 5
    bus.bytes_in += 30
    bus.busy_time = 3.0
    m.set_bus_counters("b1", bus, now=110.0)

    s = samples(m.render().decode())
    assert value(s, "amic_bus_requests_total", bus="b1") == 15
    assert value(s, "amic_bus_timeouts_total", bus="b1") == 2
    assert value(s, "amic_bus_link_drops_total", bus="b1") == 1
    assert value(s, "amic_bus_connects_total", bus="b1") == 2
    assert value(s, "amic_bus_connect_failures_total", bus="b1") == 3
    assert value(s, "amic_bus_bytes_total", bus="b1", direction="in") == 330
    assert value(s, "amic_bus_bytes_total", bus="b1", direction="out") == 200
    assert value(s, "amic_bus_bytes_discarded_total", bus="b1") == 12
    assert value(s, "amic_bus_busy_seconds_total", bus="b1") == 3.0
    assert value(s, "amic_bus_utilisation_ratio", bus="b1") == pytest.approx(0.3)

    # A reload replaces the bus: its counters restart at 0, ours keep growing.
    new = TcpBus("127.0.0.1", 1, td=0.1)
    new.transactions, new.busy_time = 4, 2.0
    m.set_bus_counters("b1", new, now=120.0)
    s = samples(m.render().decode())
    assert value(s, "amic_bus_requests_total", bus="b1") == 19
    assert value(s, "amic_bus_busy_seconds_total", bus="b1") == 5.0
    assert value(s, "amic_bus_utilisation_ratio", bus="b1") == pytest.approx(5.0 / 20.0)


def test_utilisation_is_over_a_sliding_window() -> None:
    m = Metrics(utilisation_window=10.0)
    busy = 0.0
    # 2 s samples: fully busy for 10 s, then idle.
    for t in range(0, 11, 2):
        m.set_bus_counters("b1", {"busy_time": busy}, now=float(t))
        busy += 2.0
    busy -= 2.0
    s = samples(m.render().decode())
    assert value(s, "amic_bus_utilisation_ratio", bus="b1") == pytest.approx(1.0)
    for t in range(12, 21, 2):
        m.set_bus_counters("b1", {"busy_time": busy}, now=float(t))
    s = samples(m.render().decode())
    assert value(s, "amic_bus_utilisation_ratio", bus="b1") == pytest.approx(0.0)
    m.set_bus_counters("b1", {"busy_time": busy + 1.0}, now=22.0)  # 1 s busy in 10 s
    s = samples(m.render().decode())
    assert value(s, "amic_bus_utilisation_ratio", bus="b1") == pytest.approx(0.1)


def test_a_single_sample_sets_no_utilisation_yet() -> None:
    m = Metrics()
    m.set_bus_counters("b1", {"busy_time": 1.0, "transactions": 3}, now=5.0)
    s = samples(m.render().decode())
    assert ("amic_bus_utilisation_ratio", (("bus", "b1"),)) not in s
    assert value(s, "amic_bus_requests_total", bus="b1") == 3


def test_forget_bus_drops_its_gauges() -> None:
    m = Metrics()
    m.set_queue_depth("b1", "scheduled", 3)
    m.set_bus_success("b1", 0.5)
    m.set_queue_depth("b2", "scheduled", 4)
    m.forget_bus("b1")
    m.forget_bus("nope")
    s = samples(m.render().decode())
    assert ("amic_queue_depth", (("bus", "b1"), ("lane", "scheduled"))) not in s
    assert ("amic_bus_read_success_ratio", (("bus", "b1"),)) not in s
    assert value(s, "amic_queue_depth", bus="b2", lane="scheduled") == 4


@pytest.mark.parametrize("listen, expected", [
    ("127.0.0.1:9108", ("127.0.0.1", 9108)),
    ("0.0.0.0:0", ("0.0.0.0", 0)),
    ("[::1]:9108", ("::1", 9108)),
    ("localhost:80", ("localhost", 80)),
])
def test_parse_listen(listen: str, expected: tuple[str, int]) -> None:
    assert parse_listen(listen) == expected


@pytest.mark.parametrize("listen", ["9108", ":9108", "127.0.0.1:", "127.0.0.1:x",
                                    "127.0.0.1:70000", "::1:9108", "[]:9108",
                                    "127.0.0.1: 80", "127.0.0.1:+80", "[::1:9108"])
def test_parse_listen_rejects(listen: str) -> None:
    with pytest.raises(ValueError):
        parse_listen(listen)


def test_one_listen_parser() -> None:
    """``amic simulate --listen`` and the metrics endpoint parse HOST:PORT alike."""
    import importlib

    simulate = importlib.import_module("collector.cli.simulate")  # the module, not the group
    assert simulate.parse_listen is parse_listen


def test_a_bus_forgotten_then_added_again_counts_from_zero_and_is_scraped() -> None:
    """The mirror keeps each bus's labelled series; a bus removed by a reload and added
    back later gets them again (not the removed ones, which a scrape no longer shows)."""
    m = Metrics(utilisation_window=60.0)
    m.set_bus_counters("b1", {"transactions": 7, "busy_time": 1.0}, now=1.0)
    m.forget_bus("b1")
    m.set_bus_counters("b1", {"transactions": 2, "busy_time": 0.0}, now=2.0)
    m.set_bus_counters("b1", {"transactions": 5, "busy_time": 1.0}, now=12.0)
    s = samples(m.render().decode())
    assert value(s, "amic_bus_requests_total", bus="b1") == 5
    assert value(s, "amic_bus_utilisation_ratio", bus="b1") == pytest.approx(0.1)


def test_housekeeping_mirrors_every_bus_in_bounded_rounds() -> None:
    """At most MIRROR_BUSES_PER_ROUND buses a round (its cost does not grow with the
    fleet), and every bus within ceil(buses / that) rounds, also as buses come and go."""
    from collector.service.daemon import MIRROR_BUSES_PER_ROUND, mirror_round

    few = [f"b{i}" for i in range(MIRROR_BUSES_PER_ROUND)]
    assert mirror_round(few, 37) == (few, 0)
    names = [f"b{i}" for i in range(1000)]
    start, seen = 0, []
    for _ in range(10):
        got, start = mirror_round(names, start)
        assert len(got) == MIRROR_BUSES_PER_ROUND
        seen += got
    assert sorted(seen) == sorted(names)
    names = names[:250]  # a reload removed buses: the rounds wrap over what is left
    seen = []
    for _ in range(3):
        got, start = mirror_round(names, start)
        seen += got
    assert set(seen) == set(names) and len(seen) == 300

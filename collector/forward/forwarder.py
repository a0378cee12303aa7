"""The time-series forwarder: ships the store's outbox to an InfluxDB v2 write endpoint.

Works with InfluxDB 2.x and with VictoriaMetrics (``/api/v2/write``).  The mapping of
rows to measurements, tags and fields is in ``docs/schema.md``.

For each outbox table the forwarder reads the rows after its cursor
(``Store.outbox(name, table, limit=batch)``), turns them into InfluxDB line protocol,
POSTs them with influxdb-client (synchronous ``WriteApi`` on a dedicated thread), and
advances the cursor only once the server has accepted the batch (HTTP 2xx; 204 for both
InfluxDB and VictoriaMetrics).  On any failure it keeps the cursor, backs off
exponentially (``backoff_min`` doubling up to ``backoff_max``), logs once per outage and
retries the same rows: nothing is skipped, however long the outage.  A crash between the
write and the cursor update replays the batch; every row maps to the same series and
timestamp each time, so the server keeps it once (VictoriaMetrics with
``-dedup.minScrapeInterval``, InfluxDB by its point identity).

The token comes from the ``token`` argument, a ``token_file`` or the environment variable
``AMIC_TSDB_TOKEN``; it is never logged.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import math
import os
import sqlite3
import threading
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final

from influxdb_client import InfluxDBClient, WritePrecision  # type: ignore[attr-defined]
from influxdb_client.client.write_api import SYNCHRONOUS, WriteApi
from influxdb_client.rest import ApiException

from collector.config.settings import MeterSettings, TimeseriesSettings, defaults
from collector.store import OUTBOX_TABLES, Store
from collector.store.records import Event, utcnow

from . import lineproto, linework
from ._shim_influxdb import pass_gzipped_bodies
from .lineproto import escape_tag, number
from .lineproto import tags as _tags

log = logging.getLogger("amic.forwarder")

TOKEN_ENV: Final = "AMIC_TSDB_TOKEN"

# Numeric code of each command status (field ``status_code`` of measurement ``command``).
COMMAND_STATUS_CODES: Final[dict[str, int]] = {
    "queued": 0, "sent": 1, "acknowledged": 2, "verified": 3, "refused": 4, "failed": 5,
    "confirmed": 3, "unconfirmed": 6, "address_mismatch": 7, "unsupported": 8,
    "expired": 10, "dry_run": 11, "recorded": 12, "received": 13, "done": 14,
    "skipped_protected": 15,
    "denied": 16,  # a remote request refused for security (signature, binding)
}
# Numeric facts of a relay command's audit detail (JSON), forwarded as fields.
_COMMAND_FIELDS: Final = (("latency_ms", "latency_ms"), ("energy_at_switch", "energy_kwh"),
                          ("energy_before", "energy_before_kwh"), ("amount", "amount"),
                          ("balance", "balance"))
UNKNOWN_STATUS_CODE: Final = 9

# The server refuses these rows for good (bad point, beyond the bucket's retention, too
# large): sending them again cannot help.  401/403/404 and 5xx are retried for ever: they
# are the server's or the configuration's state, not the rows'.
PERMANENT_STATUS: Final = frozenset({400, 413, 422})

_PRECISION: Final[dict[str, tuple[str, int]]] = {
    # precision -> (WritePrecision, multiplier from epoch ms)
    "s": (WritePrecision.S, 0), "ms": (WritePrecision.MS, 1),
    "us": (WritePrecision.US, 1_000), "ns": (WritePrecision.NS, 1_000_000),
}

def read_token(token: str | None = None, token_file: Path | str | None = None) -> str:
    """The API token: ``token``, else the first line of ``token_file``, else the
    environment variable ``AMIC_TSDB_TOKEN``, else ``""`` (no authentication)."""
    if token:
        return token
    if token_file:
        return Path(token_file).read_text().strip()
    return os.environ.get(TOKEN_ENV, "").strip()


class _TokenFilter(logging.Filter):
    """Masks the token in records logged on the root logger: influxdb_client logs an
    unparsable error body there at DEBUG, and a 401 body may echo the Authorization
    header."""

    def __init__(self, token: str) -> None:
        super().__init__()
        self.token = token

    def filter(self, record: logging.LogRecord) -> bool:
        text = record.getMessage()
        if self.token in text:
            record.msg, record.args = text.replace(self.token, "***"), None
        return True


@dataclass(slots=True)
class _Batch:
    """One batch of a table, ready to POST."""

    rows: int  # rows consumed (a NaN reading has no point)
    after_id: int  # the batch holds the rows after this id ...
    last_id: int  # ... up to this one
    points: int
    body: bytes  # gzipped when enabled
    pairs: list[tuple[int, str]] | None  # (row id, line); None: built by the worker process


_TS: Final = defaults(TimeseriesSettings)  # [timeseries] defaults, stated once there
DEFAULT_GZIP_LEVEL: Final[int] = _TS["gzip_level"]
# Readings behind by at least this many rows are converted in a worker process.
DEFAULT_PROCESS_BACKLOG: Final[int] = _TS["worker_backlog"]
_WORKER_RETRY: Final = 60.0  # s before a failed worker process is tried again

@dataclass(slots=True)
class ForwarderStats:
    points_sent: int = 0
    rows_sent: int = 0
    batches: int = 0
    failures: int = 0
    lag: int = 0  # rows behind, over all tables (by id)
    last_error: str = ""
    failing: bool = False
    dead_letters: int = 0  # rows the server refused for good (kept in the store)
    worker_batches: int = 0  # batches the worker process converted


def _command_fields(detail: str) -> str:
    """``,latency_ms=..,energy_kwh=..,relay_open_before=..`` from an audit detail."""
    if not detail.startswith("{"):
        return ""
    try:
        doc = json.loads(detail)
    except ValueError:
        return ""
    out = ""
    for key, field in _COMMAND_FIELDS:
        v = doc.get(key)
        if isinstance(v, str):
            with contextlib.suppress(ValueError):
                v = float(v)
        if isinstance(v, int | float) and not isinstance(v, bool) and math.isfinite(v):
            out += f",{field}={number(v)}"
    for key in ("before", "after"):
        state = doc.get(key)
        if isinstance(state, dict) and isinstance(state.get("relay_open"), bool):
            out += f",relay_open_{key}={number(int(state['relay_open']))}"
    return out


class Forwarder:
    """Ships readings, events, commands and cycles from a :class:`Store` to a TSDB."""

    def __init__(self, store: Store, url: str, *, org: str, bucket: str,
                 token: str | None = None, token_file: Path | str | None = None,
                 name: str = "timeseries", batch: int = _TS["batch"],
                 precision: str = _TS["precision"], gzip: bool = _TS["gzip"],
                 gzip_level: int = DEFAULT_GZIP_LEVEL,
                 meters: Sequence[MeterSettings] | None = None,
                 backoff_min: float = 0.5, backoff_max: float = 60.0,
                 idle_interval: float = 1.0, timeout: float = 30.0,
                 tables: Sequence[str] = OUTBOX_TABLES, max_batches: int = 20,
                 cursor_save_interval: float = 2.0,
                 process_backlog: int = DEFAULT_PROCESS_BACKLOG,
                 on_event: Callable[[Event], None] | None = None,
                 collector: str = "") -> None:
        if precision not in _PRECISION:
            raise ValueError(f"precision must be one of {sorted(_PRECISION)}, not {precision!r}")
        if batch < 1:
            raise ValueError("batch must be >= 1")
        if not 1 <= gzip_level <= 9:
            raise ValueError(f"gzip_level must be 1 to 9, not {gzip_level!r}")
        for t in tables:
            if t not in OUTBOX_TABLES:
                raise ValueError(f"unknown outbox table {t!r}")
        self.store = store
        self.url = url
        self.org = org
        self.bucket = bucket
        self.name = name
        self.batch = batch
        self.precision = precision
        self.gzip = gzip
        self.gzip_level = gzip_level
        self.backoff_min = backoff_min
        self.backoff_max = backoff_max
        self.idle_interval = idle_interval
        self.timeout = timeout
        self.tables = tuple(tables)
        self.max_batches = max(1, max_batches)  # per table and round, so tables take turns
        self.cursor_save_interval = cursor_save_interval
        self.process_backlog = process_backlog  # 0: never use a worker process
        self._backlogged = False  # converting in the worker process until caught up
        self.stats = ForwarderStats()
        self.on_event = on_event  # called from the forwarder's thread
        self.collector = collector
        # ",collector=<id>" on every line, so several collectors can share one TSDB.
        self._collector_tag = _tags((("collector", collector),))
        self._token = read_token(token, token_file)
        self._log_filter: _TokenFilter | None = None  # while open: masks the token
        self._write_precision, self._ts_mult = _PRECISION[precision]
        self._meter_tags: dict[str, str] = {}
        self._meter_bus: dict[str, str] = {}
        self._tags_lock = threading.Lock()
        self._tags_version = 0
        self._builder: tuple[int, linework.LineBuilder] | None = None  # for a tags version
        self._tag_text: tuple[int, linework.Tags] | None = None  # for a tags version
        if meters is not None:
            self.set_meters(meters)
        self._meters_given = meters is not None
        self._stop = asyncio.Event()
        self._executor: ThreadPoolExecutor | None = None
        self._prefetch: ThreadPoolExecutor | None = None
        self._client: InfluxDBClient | None = None
        self._write_api: WriteApi | None = None
        # Per table: the last id the server acknowledged, and the one stored in cursors
        # with the monotonic time it was stored.  See _save.
        self._acked: dict[str, int] = {}
        self._saved: dict[str, tuple[int, float]] = {}
        self._worker: linework.Worker | None = None
        self._worker_tags = -1  # the tags version the worker process has
        self._worker_failed_at: float | None = None  # monotonic
        self._converters: dict[str, Callable[[list[sqlite3.Row]], list[str]]] = {
            "readings": self.reading_lines, "events": self.event_lines,
            "commands": self.command_lines, "cycles": self.cycle_lines,
            "daily": self.daily_lines,
        }

    def __repr__(self) -> str:  # never shows the token
        return f"Forwarder(name={self.name!r}, url={self.url!r}, bucket={self.bucket!r})"

    # ---- meters ------------------------------------------------------------------------

    def set_meters(self, meters: Sequence[MeterSettings]) -> None:
        """The configured meters, for the area/bus/feeder/station tags of readings."""
        self._set_tags({m.meter_id: (m.area, m.bus, m.feeder, m.station) for m in meters})

    def _load_meters_from_store(self) -> None:
        self._set_tags({r["meter_id"]: (r["area"], r["bus"], r["feeder"], r["station"])
                        for r in self.store.meters()})

    def _set_tags(self, by_meter: dict[str, tuple[str, str, str, str]]) -> None:
        with self._tags_lock:
            self._meter_tags = {
                m: _tags((("area", a), ("bus", b), ("feeder", f), ("station", s)))
                for m, (a, b, f, s) in by_meter.items()}
            self._meter_bus = {m: v[1] for m, v in by_meter.items()}
            self._tags_version += 1

    # ---- conversion (public for tests and the benchmark) -------------------------------

    def _ts(self, ms: int) -> int:
        return ms // 1000 if self._ts_mult == 0 else ms * self._ts_mult

    def reading_lines(self, rows: list[sqlite3.Row]) -> list[str]:
        """``reading,meter=..,quantity=..[,area,bus,feeder,station],collector=.. value=V TS``.

        Timestamp: the meter's when it gave one, else the collector's.  A NULL (NaN) or
        infinite value has no line.
        """
        out: list[str] = []
        append = out.append
        meter_tags = self._meter_tags
        ctag = self._collector_tag
        mult = self._ts_mult
        isfinite = math.isfinite
        esc = escape_tag
        num = number
        cache: dict[str, str] = {}
        for row in rows:
            value = row[3]
            if value is None or not isfinite(value):
                continue
            meter = row[1]
            prefix = cache.get(meter)
            if prefix is None:
                prefix = f"reading,meter={esc(meter)}"
                cache[meter] = prefix
            suffix = meter_tags.get(meter, "")
            ts = row[6]
            if ts is None:
                ts = row[5]
            ts = ts // 1000 if mult == 0 else ts * mult
            # lineproto.line inlined: this loop is the forwarder's bulk in Python
            append(f"{prefix},quantity={esc(row[2])}{suffix}{ctag} value={num(value)} {ts}")
        return out

    def event_lines(self, rows: list[sqlite3.Row]) -> list[str]:
        """``event,kind=..[,meter,bus] severity=N,count=1[,value=V] TS``."""
        out: list[str] = []
        for row in rows:
            meter = row["meter"]
            bus = row["bus"] or (self._meter_bus.get(meter) if meter else None)
            tags = _tags((("kind", row["kind"]), ("meter", meter), ("bus", bus)))
            fields = f"severity={number(row['severity'])},count=1.0"
            value = row["value"]
            if value is not None and math.isfinite(value):
                fields += f",value={number(value)}"
            tags += self._collector_tag
            out.append(lineproto.line("event", tags, fields, self._ts(row["ts"])))
        return out

    def command_lines(self, rows: list[sqlite3.Row]) -> list[str]:
        """``command,meter=..,kind=..,status=.. status_code=N,count=1 UPDATED``."""
        out: list[str] = []
        for row in rows:
            status = row["status"]
            code = COMMAND_STATUS_CODES.get(status, UNKNOWN_STATUS_CODE)
            tags = _tags((("meter", row["meter"]), ("kind", row["kind"]), ("status", status),
                          ("operator", row["operator"])))
            fields = f"status_code={number(code)},count=1.0{_command_fields(row['detail'])}"
            tags += self._collector_tag
            out.append(lineproto.line("command", tags, fields, self._ts(row["updated"])))
        return out

    def daily_lines(self, rows: list[sqlite3.Row]) -> list[str]:
        """``lineloss,area=..,complete=true loss_pct=..,... MIDNIGHT`` and
        ``success_daily,area=..|bus=.. ratio=..,planned=..,... MIDNIGHT``."""
        out: list[str] = []
        for row in rows:
            try:
                fields: dict[str, float] = json.loads(row["fields"])
            except (TypeError, ValueError):
                continue
            body = ",".join(f"{escape_tag(k)}={number(v)}" for k, v in sorted(fields.items())
                            if isinstance(v, int | float) and math.isfinite(v))
            if not body:
                continue
            kind = row["kind"]
            if kind == "lineloss":
                meas, tag = "lineloss", "area"
            elif kind.startswith("success_"):
                meas, tag = "success_daily", kind[len("success_"):]
            else:
                meas, tag = kind, "key"
            complete = "true" if row["complete"] else "false"
            tags = f",{tag}={escape_tag(row['key'])},complete={complete}{self._collector_tag}"
            out.append(lineproto.line(meas, tags, body, self._ts(row["ts"])))
        return out

    def cycle_lines(self, rows: list[sqlite3.Row]) -> list[str]:
        """One ``cycle`` line per ended cycle, plus ``cycle_area`` / ``cycle_bus`` lines.

        A cycle still running has no line: its final row comes later under a new id.
        A cut cycle (the collector stopped during it) gets ``cut=1`` and ``attempted``,
        its ratio covers the meters tried, and it has none when no meter was tried.
        """
        out: list[str] = []
        for row in rows:
            ended = row["ended"]
            if ended is None:
                continue
            started = row["started"]
            ts = self._ts(started)
            planned, ok, failed = row["planned"], row["succeeded"], row["failed"]
            done = ok + failed
            ratio = ok / done if done else 0.0
            sched = escape_tag(row["schedule"])
            ctag = self._collector_tag
            fields = f"success_ratio={number(ratio)},"
            if row["cut"]:
                fields = (f"success_ratio={number(ratio)}," if done else "") + \
                    f"cut=1.0,attempted={number(done)},"
            fields = (f"planned={number(planned)},succeeded={number(ok)},"
                      f"failed={number(failed)},{fields}"
                      f"duration_s={number((ended - started) / 1000)}")
            out.append(lineproto.line("cycle", f",schedule={sched}{ctag}", fields, ts))
            for meas, col, key in (("cycle_area", "per_area", "area"),
                                   ("cycle_bus", "per_bus", "bus")):
                try:
                    per: dict[str, list[int]] = json.loads(row[col])
                except (TypeError, ValueError):
                    continue
                for k, (k_ok, k_total) in sorted(per.items()):
                    if not k:
                        continue
                    r = k_ok / k_total if k_total else 0.0
                    out.append(lineproto.line(
                        meas, f",schedule={sched},{key}={escape_tag(k)}{ctag}",
                        f"succeeded={number(k_ok)},total={number(k_total)},"
                        f"success_ratio={number(r)}", ts))
        return out

    # ---- the loop ----------------------------------------------------------------------

    def _open(self) -> None:
        if self._token and self._log_filter is None:
            self._log_filter = _TokenFilter(self._token)
            logging.getLogger().addFilter(self._log_filter)
        self._client = InfluxDBClient(url=self.url, token=self._token, org=self.org,
                                      enable_gzip=self.gzip, timeout=int(self.timeout * 1000))
        self._write_api = self._client.write_api(write_options=SYNCHRONOUS)
        if self.gzip:
            # Bodies come compressed from _body (on the prefetch thread, at gzip_level);
            # the client still sets the Content-Encoding header.  Its own compression is
            # gzip level 9: several times the CPU for about 5 % less bytes.
            pass_gzipped_bodies(self._client)
        if not self._meters_given:
            self._load_meters_from_store()
        known = {c.table: c.last_id for c in self.store.cursors() if c.name == self.name}
        for table in self.tables:
            pos = known.get(table)
            if pos is None:  # register: retention keeps unshipped rows from now on
                pos = self.store.advance(self.name, table, 0)
            self._acked[table] = pos
            self._saved[table] = (pos, time.monotonic())

    def _close(self) -> None:
        for table in self._saved:
            with contextlib.suppress(Exception):
                self._save(table, force=True)
        if self._client is not None:
            with contextlib.suppress(Exception):
                self._client.close()  # type: ignore[no-untyped-call]
        self._client = None
        self._write_api = None
        if self._log_filter is not None:
            logging.getLogger().removeFilter(self._log_filter)
            self._log_filter = None

    def _prepare(self, table: str, after_id: int) -> _Batch:
        """The batch of ``table`` after ``after_id``."""
        if table == "readings":
            return self._prepare_readings(after_id)
        rows = self.store.outbox(self.name, table, after_id=after_id, limit=self.batch)
        if not rows:
            return _Batch(0, after_id, after_id, 0, b"", [])
        convert = self._converters[table]
        pairs = [(int(r["id"]), line) for r in rows for line in convert([r])]
        return _Batch(len(rows), after_id, int(rows[-1]["id"]), len(pairs),
                      self._body(pairs), pairs)

    def _prepare_readings(self, after_id: int, *, local: bool = False) -> _Batch:
        if not local and self.process_backlog and self._in_worker(after_id):
            batch = self._prepare_in_worker(after_id)
            if batch is not None:
                return batch
        conn = self.store.thread_connection()
        n, last = conn.execute(linework.SPAN_SQL, (after_id, self.batch)).fetchone()
        if not n:
            return _Batch(0, after_id, after_id, 0, b"", [])
        pairs = self._reading_pairs(after_id, last)
        return _Batch(n, after_id, last, len(pairs), self._body(pairs), pairs)

    def _in_worker(self, after_id: int) -> bool:
        """Whether the batch after ``after_id`` is for the worker process: from a backlog
        of ``process_backlog`` rows until less than a batch is left.  The store writer
        commits up to 50,000 rows at once, so the backlog swings around the threshold;
        converting here meanwhile takes the GIL from the writer thread."""
        behind = self.store.last_id("readings") - after_id
        if behind >= self.process_backlog:
            self._backlogged = True
        elif behind < self.batch:
            self._backlogged = False
        return self._backlogged

    def _reading_pairs(self, after_id: int, last_id: int) -> list[tuple[int, str]]:
        """(row id, line) of the readings after ``after_id`` up to ``last_id``."""
        rows = self.store.thread_connection().execute(
            linework.rows_sql(self.precision, ids=True), (after_id, last_id))
        return self._line_builder().pairs(rows)

    def _line_builder(self) -> linework.LineBuilder:
        """The builder of the current meter tags (a new one when they change)."""
        got = self._builder
        with self._tags_lock:
            version = self._tags_version
        if got is None or got[0] != version:
            got = (version, linework.LineBuilder(self._tag_payload()[1],
                                                 self._collector_tag))
            self._builder = got
        return got[1]

    def _prepare_in_worker(self, after_id: int) -> _Batch | None:
        """A readings batch built by the worker process; None: build it here instead."""
        now = time.monotonic()
        if self._worker_failed_at is not None and now - self._worker_failed_at < _WORKER_RETRY:
            return None
        level = self.gzip_level if self.gzip else None
        version, tags = self._tag_payload()
        if self._worker is None:
            self._worker = linework.Worker()
            self._worker_tags = -1
        args = (str(self.store.path), self.precision, after_id, self.batch, version)
        timeout_ms = int(self.store.busy_timeout * 1000)
        try:
            got = self._worker.call(*args, tags if self._worker_tags != version else None,
                                    level, timeout_ms)
            if got == linework.NEED_TAGS:  # a new worker process
                got = self._worker.call(*args, tags, level, timeout_ms)
            self._worker_tags = version
        except linework.WorkerError as e:
            log.warning("forwarder %s: worker process failed (%s); converting in-thread "
                        "for %.0f s", self.name, self._mask(str(e)), _WORKER_RETRY)
            self._worker_failed_at = now
            self._stop_worker()
            return None
        if isinstance(got, str):  # LOCAL: a reading of an unconfigured meter
            return None
        n, last_id, points, body = got
        self.stats.worker_batches += 1
        return _Batch(n, after_id, last_id, points, body, None)

    def _stop_worker(self) -> None:
        worker, self._worker = self._worker, None
        if worker is not None:
            worker.close()

    def _body(self, pairs: list[tuple[int, str]]) -> bytes:
        """The request body of these lines; built on the prefetch thread while the
        previous batch is in flight (zlib releases the GIL)."""
        return linework.body([line for _, line in pairs],
                             self.gzip_level if self.gzip else None)

    def _tag_payload(self) -> tuple[int, linework.Tags]:
        """(version, the tags after each configured meter's id), made once per version
        of the meter tags."""
        with self._tags_lock:
            got = self._tag_text
            if got is None or got[0] != self._tags_version:
                ctag = self._collector_tag
                got = (self._tags_version,
                       {m: tags + ctag for m, tags in self._meter_tags.items()})
                self._tag_text = got
            return got

    def _write(self, payload: bytes) -> None:
        assert self._write_api is not None
        self._write_api.write(bucket=self.bucket, org=self.org, record=payload,
                              write_precision=self._write_precision)  # type: ignore[arg-type]

    def _send(self, table: str, batch: _Batch) -> None:
        """POST one prepared batch, then advance the cursor (only after the 2xx, or once
        the rows the server refuses for good are kept as dead letters)."""
        if batch.points:
            try:
                self._write(batch.body)
            except ApiException as e:
                if e.status not in PERMANENT_STATUS:
                    raise
                pairs = batch.pairs
                if pairs is None:  # built by the worker: the same lines again, here
                    pairs = self._reading_pairs(batch.after_id, batch.last_id)
                self._isolate(table, pairs)
            else:
                self.stats.points_sent += batch.points
            self.stats.batches += 1
        self._acked[table] = max(batch.last_id, self._acked.get(table, 0))
        self.stats.rows_sent += batch.rows
        self._save(table, force=False)

    def _save(self, table: str, *, force: bool) -> None:
        """Store the acknowledged position in ``cursors``.

        The StoreWriter holds the write lock for its large transactions while a backlog
        is committed; waiting for it after every batch, or when a table is caught up,
        would stall forwarding (the next rows, and the other tables).  So the cursor is
        stored when the lock is free (tried after each batch and on every pass), at the
        latest after ``cursor_save_interval`` s (then waiting), and at stop.  A crash in
        between sends the unsaved batches again; they map to the same points
        (idempotent).  Retention only ever sees the stored, older position.
        """
        acked = self._acked.get(table)
        saved, at = self._saved.get(table, (0, 0.0))
        if acked is None or acked <= saved:
            return
        now = time.monotonic()
        if force or now - at >= self.cursor_save_interval:
            pos: int | None = self.store.advance(self.name, table, acked)
        else:
            pos = self.store.try_advance(self.name, table, acked)
        if pos is not None:
            self._saved[table] = (pos, now)

    def _position(self, table: str) -> int:
        """Where the next batch of ``table`` starts (the acknowledged position)."""
        pos = self._acked.get(table)
        return self.store.cursor(self.name, table) if pos is None else pos

    def _isolate(self, table: str, pairs: list[tuple[int, str]]) -> None:
        """The batch was refused for good: send it in halves until each refused line is
        alone, keep those in ``dead_letters`` and raise a ``forward_rejected`` event.

        Lines already accepted may be sent again; they map to the same points.
        """
        refused: list[tuple[int, int, str, str]] = []

        def send(part: list[tuple[int, str]]) -> None:
            if not part:
                return
            try:
                self._write(self._body(part))
            except ApiException as e:
                if e.status not in PERMANENT_STATUS:
                    raise
                if len(part) == 1:
                    refused.append((part[0][0], int(e.status), self._api_error(e), part[0][1]))
                    return
                mid = len(part) // 2
                send(part[:mid])
                send(part[mid:])
            else:
                self.stats.points_sent += len(part)

        send(pairs)
        if not refused:
            return
        self.store.add_dead_letters(self.name, table, refused)
        self.stats.dead_letters += len(refused)
        first = refused[0]
        detail = (f"{self.url} refused {len(refused)} {table} row(s) for good, e.g. row "
                  f"{first[0]}: HTTP {first[1]} {first[2]}; kept in dead_letters")
        log.error("forwarder %s: %s", self.name, detail)
        if self.on_event is not None:
            self.on_event(Event("forward_rejected", utcnow(), severity=2,
                                value=float(len(refused)), detail=detail[:500]))

    def _api_error(self, e: ApiException) -> str:
        body = e.body.decode("utf-8", "replace") if isinstance(e.body, bytes) else str(e.body)
        text = body or str(e.reason)
        with contextlib.suppress(ValueError, TypeError):
            doc = json.loads(text)
            if isinstance(doc, dict) and doc.get("message"):
                text = str(doc["message"])
        return self._mask(text)

    def ship_once(self, table: str) -> int:
        """Ship the next batch of ``table`` (blocking); returns rows consumed (0: none).

        Raises whatever the write raised; the cursor then stays where it was.
        """
        batch = self._prepare(table, self._position(table))
        if batch.rows:
            self._send(table, batch)
            self._save(table, force=True)
        return batch.rows

    def _ship_table(self, table: str) -> bool:
        """Ship up to ``max_batches`` batches of ``table``; True when more rows wait.

        While one batch is being POSTed the next one is read and converted on the
        prefetch thread (it reads after the last id of the batch in flight; ids are
        committed in increasing order).  The cursor still only moves after each 2xx, in
        order; on a failure the prefetched batch is dropped and re-read on the retry.
        """
        assert self._prefetch is not None
        batch = self._prepare(table, self._position(table))
        for _ in range(self.max_batches):
            if not batch.rows:
                self._save(table, force=False)  # caught up: stored unless locked
                return False
            full = batch.rows >= self.batch
            nxt = self._prefetch.submit(self._prepare, table, batch.last_id) if full else None
            try:
                self._send(table, batch)
            except BaseException:
                if nxt is not None:
                    with contextlib.suppress(Exception):
                        nxt.result()
                raise
            if nxt is None:
                self._save(table, force=False)
                return False
            batch = nxt.result()
            if self._stop.is_set():
                return True
        return True

    def _pass(self) -> bool:
        """One round over the tables; True when some table had a full batch (more waits)."""
        more = False
        for table in self.tables:
            more = self._ship_table(table) or more
        self.stats.lag = self._lag()
        return more

    def _lag(self) -> int:
        return sum(max(0, self.store.last_id(t) - self._position(t)) for t in self.tables)

    def _error_text(self, e: BaseException) -> str:
        return self._mask(f"{type(e).__name__}: {e}")

    def _mask(self, text: str) -> str:
        """One line of at most 300 characters, without the token."""
        # Mask before cutting: a cut through the token would leave a prefix of it behind.
        if self._token:
            text = text.replace(self._token, "***")
        return " ".join(text.split())[:300]

    async def _call(self, fn: Callable[..., Any], *args: Any) -> Any:
        assert self._executor is not None
        return await asyncio.get_running_loop().run_in_executor(self._executor, fn, *args)

    async def run(self) -> None:
        """Forward until :meth:`stop`; survives any number of outages."""
        self._stop.clear()
        # One thread: the Store gives it one connection, the client one HTTP pool.
        self._executor = ThreadPoolExecutor(1, thread_name_prefix=f"fwd-{self.name}")
        self._prefetch = ThreadPoolExecutor(1, thread_name_prefix=f"fwd-{self.name}-read")
        delay = self.backoff_min
        try:
            await self._call(self._open)
            while not self._stop.is_set():
                try:
                    more = await self._call(self._pass)
                except Exception as e:  # any failure: keep the rows, retry
                    self.stats.failures += 1
                    self.stats.last_error = self._error_text(e)
                    if not self.stats.failing:
                        log.warning("forwarder %s: cannot write to %s (%s); retrying with "
                                    "backoff, nothing is dropped", self.name, self.url,
                                    self.stats.last_error)
                    self.stats.failing = True
                    await self._sleep(delay)
                    delay = min(self.backoff_max, delay * 2)
                    continue
                if self.stats.failing:
                    log.info("forwarder %s: %s reachable again", self.name, self.url)
                    self.stats.failing = False
                delay = self.backoff_min
                if not more:
                    await self._sleep(self.idle_interval)
        finally:
            with contextlib.suppress(Exception):
                await self._call(self._close)
            self._executor.shutdown(wait=True)
            self._prefetch.shutdown(wait=True)
            self._executor = self._prefetch = None
            self._stop_worker()

    async def _sleep(self, seconds: float) -> None:
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._stop.wait(), seconds)

    def stop(self) -> None:
        """Ask :meth:`run` to return after the batch in flight."""
        self._stop.set()

    def counters(self) -> dict[str, Any]:
        s = self.stats
        return {"points_sent": s.points_sent, "rows_sent": s.rows_sent, "batches": s.batches,
                "failures": s.failures, "lag": s.lag, "last_error": s.last_error}


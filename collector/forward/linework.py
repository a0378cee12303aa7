"""Reading batches to request bodies: the forwarder's bulk work, shared by its thread and
its worker process.

The worker process runs this file as a script (``python linework.py``): it imports the
standard library only, nothing of the caller's ``__main__`` (unlike multiprocessing's
spawn), and ends when its stdin closes, so also when the daemon is killed.  Requests
and replies are length-prefixed pickles on its stdin/stdout.

Why a process at all: the store writer's ``executemany`` and the forwarder's
``fetchall`` each release and retake the GIL for every row; run as two threads of one
process they take longer together than one after the other (measured: 1.15 s + 0.86 s
alone, 3.07 s together for 1M rows).  In a second process they overlap.
"""

from __future__ import annotations

import contextlib
import pickle
import signal
import sqlite3
import struct
import subprocess
import sys
import threading
import zlib
from collections.abc import Iterable
from typing import IO, Any, Final

if __package__:
    from .lineproto import escape_tag, value_line
else:  # run as a script: this file's directory is first on sys.path
    from lineproto import escape_tag, value_line  # type: ignore[import-not-found,no-redef]

# A meter's tags after its id: ",area=..,bus=..,feeder=..,station=..,collector=.." (escaped)
Tags = dict[str, str]

# The rows of a batch: how many, and the last id.  Then their columns, by id up to that
# last one: the two queries see the same rows though the writer commits in between.
SPAN_SQL: Final = ("SELECT count(*), max(id) FROM (SELECT id FROM main.readings "
                   "WHERE id > ? ORDER BY id LIMIT ?)")
# An infinite value (9e999 in SQLite) or NULL (NaN) comes back as None: no point.
_ROWS_SQL: Final = ("SELECT {id}meter, quantity, CASE WHEN abs(value) < 9e999 THEN value END, "
                    "{ts} FROM main.readings WHERE id > ? AND id <= ? ORDER BY id")
_TS_SQL: Final[dict[str, str]] = {
    "s": "(coalesce(meter_ts, ts) / 1000)", "ms": "coalesce(meter_ts, ts)",
    "us": "(coalesce(meter_ts, ts) * 1000)", "ns": "(coalesce(meter_ts, ts) * 1000000)"}


def rows_sql(precision: str, *, ids: bool = False) -> str:
    """The columns of the readings after an id up to another: ([id,] meter, quantity,
    value or None, timestamp at ``precision``)."""
    return _ROWS_SQL.format(id="id, " if ids else "", ts=_TS_SQL[precision])


class UnknownMeter(LookupError):
    """A reading of a meter the builder has no tags for."""


class LineBuilder:
    """Reading rows to ``reading,meter=..,quantity=..<tags> value=V TS`` lines.

    The text around a meter's id and a quantity's name is built once per meter and per
    quantity (not per pair: 100k meters x 30 quantities would not fit), so each line
    costs a float repr and one f-string; the lines are the very text of
    ``Forwarder.reading_lines``.
    """

    def __init__(self, tags: Tags, default: str | None) -> None:
        self._tags = tags
        # An unconfigured meter's tags (the collector's); None: raise UnknownMeter.
        self._default = default
        self._meters: dict[str, tuple[str, str]] = {}
        self._quantities: dict[str, str] = {}

    def _meter(self, meter: str) -> tuple[str, str]:
        tags = self._tags.get(meter, self._default)
        if tags is None:
            raise UnknownMeter(meter)
        got = (f"reading,meter={escape_tag(meter)},quantity=", f"{tags} value=")
        self._meters[meter] = got
        return got

    def _quantity(self, quantity: str) -> str:
        got = self._quantities[quantity] = escape_tag(quantity)
        return got

    def lines(self, rows: Iterable[tuple[str, str, float | None, int]]) -> list[str]:
        """The lines of (meter, quantity, value or None, ts) rows; None has no line."""
        out: list[str] = []
        append = out.append
        meters = self._meters
        quantities = self._quantities
        # A meter read's readings come one after the other with one timestamp.
        last_meter: str | None = None
        last_ts: int | None = None
        head = tail = ts_text = ""
        for meter, quantity, value, ts in rows:
            if value is None:
                continue
            if meter != last_meter:
                head, tail = meters.get(meter) or self._meter(meter)
                last_meter = meter
            if ts != last_ts:
                ts_text = f" {ts}"
                last_ts = ts
            q = quantities.get(quantity) or self._quantity(quantity)
            append(f"{head}{q}{tail}{value!r}{ts_text}")
        return out

    def pairs(self, rows: Iterable[tuple[int, str, str, float | None, int]]
              ) -> list[tuple[int, str]]:
        """(row id, line) of (id, meter, quantity, value or None, ts) rows."""
        out: list[tuple[int, str]] = []
        meters = self._meters
        quantities = self._quantities
        for rid, meter, quantity, value, ts in rows:
            if value is None:
                continue
            m = meters.get(meter) or self._meter(meter)
            q = quantities.get(quantity) or self._quantity(quantity)
            out.append((rid, value_line(f"{m[0]}{q}{m[1]}", value, ts)))
        return out


def body(lines: list[str], gzip_level: int | None) -> bytes:
    """The request body of these lines: gzip (one member, as influxdb-client sends) at
    ``gzip_level``, or plain with None."""
    data = "\n".join(lines).encode()
    if gzip_level is None or not data:
        return data
    c = zlib.compressobj(gzip_level, zlib.DEFLATED, 31)  # wbits 31: a gzip member
    return c.compress(data) + c.flush()


# ---- the worker process's side ------------------------------------------------------------

_conn: sqlite3.Connection | None = None
_path = ""
_tags_version = -1
_builder: LineBuilder | None = None

# Results of reading_batch besides a batch: send the tags along / convert this batch in
# the forwarder (a reading of an unconfigured meter, rare: Python's path is the reference
# for such rows).
NEED_TAGS: Final = "tags"
LOCAL: Final = "local"


def reading_batch(path: str, precision: str, after_id: int, limit: int, tags_version: int,
                  tags: Tags | None, gzip_level: int | None,
                  busy_timeout_ms: int) -> tuple[int, int, int, bytes] | str:
    """The readings after ``after_id`` as (rows, last id, points, body); (0, after_id,
    0, b"") when there are none.  Runs in the worker process."""
    global _conn, _path, _tags_version, _builder
    if _conn is None or _path != path:
        if _conn is not None:
            _conn.close()
        # mode=rw: never creates the store; this connection only reads it
        _conn = sqlite3.connect(f"file:{path}?mode=rw", uri=True, isolation_level=None,
                                timeout=busy_timeout_ms / 1000)
        _conn.execute(f"PRAGMA busy_timeout = {int(busy_timeout_ms)}")
        _path = path
    if tags_version != _tags_version or _builder is None:
        if tags is None:
            return NEED_TAGS
        _builder = LineBuilder(tags, None)
        _tags_version = tags_version
    try:
        return build_batch(_conn, _builder, precision, after_id, limit, gzip_level)
    except UnknownMeter:
        return LOCAL


def build_batch(conn: sqlite3.Connection, builder: LineBuilder, precision: str,
                after_id: int, limit: int,
                gzip_level: int | None) -> tuple[int, int, int, bytes]:
    """(rows, last id, points, body) of the readings after ``after_id``."""
    n, last = conn.execute(SPAN_SQL, (after_id, limit)).fetchone()
    if not n:
        return 0, after_id, 0, b""
    lines = builder.lines(conn.execute(rows_sql(precision), (after_id, last)).fetchall())
    return n, last, len(lines), body(lines, gzip_level)


# ---- the pipe between the two ---------------------------------------------------------------

_LEN: Final = struct.Struct("!I")


class WorkerError(Exception):
    """The worker process failed or is gone."""


def _send(pipe: IO[bytes], obj: object) -> None:
    data = pickle.dumps(obj, protocol=pickle.HIGHEST_PROTOCOL)
    pipe.write(_LEN.pack(len(data)) + data)
    pipe.flush()


def _recv(pipe: IO[bytes]) -> Any:
    head = pipe.read(_LEN.size)
    if len(head) < _LEN.size:
        raise EOFError
    (size,) = _LEN.unpack(head)
    data = pipe.read(size)
    if len(data) < size:
        raise EOFError
    return pickle.loads(data)


class Worker:
    """The forwarder's side: one child process, one call at a time."""

    def __init__(self) -> None:
        self._proc: subprocess.Popen[bytes] | None = None
        self._lock = threading.Lock()

    def call(self, *args: Any) -> Any:
        """:func:`reading_batch` (args as its) in the child; raises WorkerError."""
        with self._lock:
            if self._proc is None:
                self._proc = subprocess.Popen([sys.executable, __file__], stdin=subprocess.PIPE,
                                              stdout=subprocess.PIPE)
            proc = self._proc
            assert proc.stdin is not None and proc.stdout is not None
            try:
                _send(proc.stdin, args)
                ok, result = _recv(proc.stdout)
            except (OSError, EOFError, pickle.PickleError) as e:
                self._close_locked()
                raise WorkerError(f"worker process gone ({type(e).__name__})") from e
            if not ok:
                raise WorkerError(str(result))
            return result

    def close(self) -> None:
        with self._lock:
            self._close_locked()

    def _close_locked(self) -> None:
        proc, self._proc = self._proc, None
        if proc is None:
            return
        if proc.stdin is not None:
            with contextlib.suppress(OSError):
                proc.stdin.close()  # the child ends at EOF
        try:
            proc.wait(timeout=5)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        if proc.stdout is not None:
            proc.stdout.close()


def serve(inp: IO[bytes], out: IO[bytes]) -> None:
    """The child's loop: a call per request until EOF."""
    while True:
        try:
            args = _recv(inp)
        except EOFError:
            return
        try:
            reply: tuple[bool, object] = (True, reading_batch(*args))
        except Exception as e:  # reported to the forwarder, which converts in-thread
            reply = (False, f"{type(e).__name__}: {e}")
        _send(out, reply)


if __name__ == "__main__":
    # Ctrl-C on a foreground `amic run` reaches the whole process group: the daemon
    # stops, and this process ends when its stdin closes, without a traceback.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    serve(sys.stdin.buffer, sys.stdout.buffer)

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
from typing import IO, Any, Final

if __package__:
    from .lineproto import value_line
else:  # run as a script: this file's directory is first on sys.path
    from lineproto import value_line  # type: ignore[import-not-found,no-redef]

# (meter, "reading,meter=<escaped id>", ",area=..,bus=..,feeder=..,station=..")
TagRow = tuple[str, str, str]

_TAGS_DDL: Final = ("CREATE TEMP TABLE IF NOT EXISTS amic_fwd_tags (meter TEXT PRIMARY KEY, "
                    "prefix TEXT NOT NULL, suffix TEXT NOT NULL) WITHOUT ROWID")


def load_tags(conn: sqlite3.Connection, items: list[TagRow]) -> None:
    """(Re)fill ``conn``'s temp table of meter tags, which the reading SQL joins."""
    conn.execute(_TAGS_DDL)
    conn.execute("DELETE FROM temp.amic_fwd_tags")
    conn.executemany("INSERT INTO temp.amic_fwd_tags VALUES (?, ?, ?)", items)


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

# Results of reading_batch besides a batch: send the tags along / convert this batch in
# the forwarder (some row needs Python's conversion).
NEED_TAGS: Final = "tags"
LOCAL: Final = "local"


def reading_batch(path: str, sql: str, after_id: int, limit: int, tags_version: int,
                  tags: list[TagRow] | None, gzip_level: int | None,
                  busy_timeout_ms: int) -> tuple[int, int, int, bytes] | str:
    """The readings after ``after_id`` as (rows, last id, points, body); (0, after_id,
    0, b"") when there are none.  Runs in the worker process."""
    global _conn, _path, _tags_version
    if _conn is None or _path != path:
        if _conn is not None:
            _conn.close()
        # mode=rw: never creates the store; this connection only reads it
        _conn = sqlite3.connect(f"file:{path}?mode=rw", uri=True, isolation_level=None,
                                timeout=busy_timeout_ms / 1000)
        _conn.execute(f"PRAGMA busy_timeout = {int(busy_timeout_ms)}")
        _conn.execute("PRAGMA temp_store = MEMORY")
        _path = path
        _tags_version = -1
    if tags_version != _tags_version:
        if tags is None:
            return NEED_TAGS
        load_tags(_conn, tags)
        _tags_version = tags_version
    # (id, line head or '' (no point) or NULL (Python's conversion), value, timestamp)
    rows: list[tuple[int, str | None, float, int]] = _conn.execute(
        sql, (after_id, limit)).fetchall()
    if not rows:
        return 0, after_id, 0, b""
    lines: list[str] = []
    for _, head, value, ts in rows:
        if head is None:
            return LOCAL
        if head:
            lines.append(value_line(head, value, ts))
    return len(rows), rows[-1][0], len(lines), body(lines, gzip_level)


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

"""The one way the configuration loader reads a file it was pointed at.

Paths come from a file an operator wrote (or copied), so they may name anything: a
FIFO (``open`` blocks forever), ``/dev/zero`` (``read`` never ends), a directory, a
name with a NUL byte or a component longer than the kernel allows.  :func:`path_problem`
says what is wrong with a path's text; :func:`read_regular` reads a regular file of at
most ``limit`` bytes and raises :class:`FileRefused` (with a short reason that names
the limit) for everything else, never blocking and never reading past the limit.
"""

from __future__ import annotations

import os
import stat

__all__ = ["MAX_NAME", "MAX_PATH", "FileRefused", "describe", "path_problem", "read_regular",
           "size_text"]

MAX_NAME = 255  # bytes in one path component (NAME_MAX on Linux)
MAX_PATH = 4095  # bytes in a whole path (PATH_MAX less the NUL)


class FileRefused(Exception):
    """A file that is not read; ``str()`` says why (e.g. ``"a FIFO, not a regular file"``)."""


def size_text(n: int) -> str:
    """``4 MiB``, ``64 KiB``, ``100 bytes``."""
    for unit, size in (("MiB", 1 << 20), ("KiB", 1 << 10)):
        if n >= size and n % size == 0:
            return f"{n // size} {unit}"
    return f"{n} bytes"


def path_problem(text: str) -> str | None:
    """What makes ``text`` unusable as a path (None if nothing): a NUL byte, a component
    over 255 bytes or a path over 4095 bytes."""
    if "\x00" in text:
        return f"a NUL byte at character {text.index(chr(0)) + 1}"
    raw = text.encode("utf-8", "surrogatepass")
    if len(raw) > MAX_PATH:
        return f"a path of {len(raw)} bytes (at most {MAX_PATH})"
    for part in raw.split(b"/"):
        if len(part) > MAX_NAME:
            head = part[:20].decode("utf-8", "replace")
            return f"a name of {len(part)} bytes (at most {MAX_NAME}): {head!r}..."
    return None


def describe(mode: int) -> str:
    """What kind of file ``mode`` is, in words."""
    for test, name in ((stat.S_ISDIR, "a directory"), (stat.S_ISFIFO, "a FIFO"),
                       (stat.S_ISSOCK, "a socket"), (stat.S_ISCHR, "a character device"),
                       (stat.S_ISBLK, "a block device"), (stat.S_ISREG, "a regular file")):
        if test(mode):
            return name
    return "not a plain file"


def read_regular(path: str | os.PathLike[str], limit: int) -> bytes:
    """The bytes of the regular file ``path``, at most ``limit`` of them.

    FileRefused, naming the reason, for a bad path, a missing or unreadable file, anything
    but a regular file (checked before opening, and again on the open descriptor in case
    the path was swapped), or a file larger than ``limit``.
    """
    text = os.fspath(path)
    problem = path_problem(text)
    if problem is not None:
        raise FileRefused(problem)
    try:
        st = os.stat(text)
    except OSError as e:
        raise FileRefused(e.strerror or str(e)) from None
    if not stat.S_ISREG(st.st_mode):
        raise FileRefused(f"{describe(st.st_mode)}, not a regular file")
    if st.st_size > limit:
        raise FileRefused(f"{st.st_size} bytes, more than the limit of {size_text(limit)}")
    # O_NONBLOCK: should a FIFO appear between stat and open, open must not wait for a writer.
    flags = os.O_RDONLY | os.O_NONBLOCK | os.O_NOCTTY | os.O_CLOEXEC
    try:
        fd = os.open(text, flags)
    except OSError as e:
        raise FileRefused(e.strerror or str(e)) from None
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            raise FileRefused(f"{describe(st.st_mode)}, not a regular file")
        chunks: list[bytes] = []
        size = 0
        # Read one byte past the limit: a file that grew (or /proc-like files that
        # report size 0) is still bounded.
        while size <= limit:
            chunk = os.read(fd, min(65536, limit + 1 - size))
            if not chunk:
                break
            chunks.append(chunk)
            size += len(chunk)
        if size > limit:
            raise FileRefused(f"more than the limit of {size_text(limit)}")
        return b"".join(chunks)
    except OSError as e:
        raise FileRefused(e.strerror or str(e)) from None
    finally:
        os.close(fd)


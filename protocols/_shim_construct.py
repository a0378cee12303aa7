"""The one place that uses construct internals (construct 2.10, ``<2.11`` in pyproject).

``Compiled.parse()`` builds a stream and a fresh context on every call: a third of the
time of parsing one DL/T645 frame.  :func:`fast_parser` calls the compiled parse
function (``Compiled.parsefunc``, not documented) directly with one shared, read-only
context shaped like the one ``Construct.parse_stream`` makes.  ``tests/test_shims.py``
fails when a construct release changes either.
"""

from __future__ import annotations

from collections.abc import Callable
from io import BytesIO
from typing import Any

from construct import Container

__all__ = ["fast_parser"]


def fast_parser(compiled: Any) -> Callable[[bytes], Any]:
    """A parse function for ``compiled`` (from ``Construct.compile()``): bytes -> Container.

    Raises whatever the compiled code raises on bad input (not always a ConstructError:
    compiled parsers may fail with IndexError, struct.error, ...).
    """
    parsefunc: Callable[[BytesIO, Container], Any] = compiled.parsefunc
    context = Container(_parsing=True, _building=False, _sizing=False, _params=Container())

    def parse(data: bytes) -> Any:
        return parsefunc(BytesIO(data), context)

    return parse

"""Per-call options of a meter request: retries and reply timeouts.

Passed with each call (``session.read(addr, q, opts=CallOptions(retries=0))``); a
session's own attributes are only the defaults, so callers never change a session that
other jobs on the bus share.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class CallOptions:
    """``retries``: extra attempts of a read after no reply, an unusable reply or a dropped
    link (None: the session's); ``td``/``tb``: reply timeouts in seconds (None: the
    session's, else the bus's).  Writes and relay commands are never retried."""

    retries: int | None = None
    td: float | None = None
    tb: float | None = None

    def __post_init__(self) -> None:
        if self.retries is not None and self.retries < 0:
            raise ValueError(f"retries {self.retries} must not be negative")
        for name in ("td", "tb"):
            value = getattr(self, name)
            if value is not None and not value > 0:
                raise ValueError(f"{name} {value!r} must be a positive number of seconds")


DEFAULT = CallOptions()

__all__ = ["DEFAULT", "CallOptions"]

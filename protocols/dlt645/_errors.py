"""Every exception the DL/T645 codec raises."""

from __future__ import annotations


class DLT645Error(Exception):
    """Base of all DL/T645 codec errors."""


class FrameError(DLT645Error):
    """Bytes that are not a valid frame; ``offset`` is the byte where it went wrong."""

    def __init__(self, offset: int, problem: str) -> None:
        super().__init__(f"byte {offset}: {problem}")
        self.offset = offset
        self.problem = problem


class PayloadError(DLT645Error):
    """A well-framed message whose data field does not fit its function or DI."""


class UnknownDataItem(DLT645Error):
    """A DI or quantity name that the catalogue does not hold."""

"""Every exception the 376.1 codec raises."""

from __future__ import annotations


class Q3761Error(Exception):
    """Base of all 376.1 codec errors."""


class FrameError(Q3761Error):
    """Bytes that are not a valid frame; ``offset`` is the byte where it went wrong."""

    def __init__(self, offset: int, problem: str) -> None:
        super().__init__(f"byte {offset}: {problem}")
        self.offset = offset
        self.problem = problem


class PayloadError(Q3761Error):
    """A well-framed message whose data units do not fit their Fn layout.

    ``offset`` counts from the first byte of the data-unit area (DA of the first unit)
    unless the raiser knew the frame offset.
    """

    def __init__(self, offset: int, problem: str) -> None:
        super().__init__(f"byte {offset}: {problem}")
        self.offset = offset
        self.problem = problem


class UnknownFn(PayloadError):
    """A data unit whose (AFN, Fn, direction) the codec has no layout for."""


class SequenceError(Q3761Error):
    """A multi-frame reply out of order: wrong RSEQ/PSEQ, a missing first frame, ..."""

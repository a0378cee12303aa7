"""Multi-frame replies (FIR/FIN): collect the frames of one response and check RSEQ.

The first frame carries RSEQ = the request's PSEQ (when known), each later one the next
value modulo 16.  A break in that sequence is a SequenceError, and the partial reply is
dropped.
"""

from __future__ import annotations

from ._errors import SequenceError
from ._frame import SEQ_MASK, Frame


class Reassembler:
    """Feed the frames of one peer's responses; ``feed`` returns a complete response.

    A frame with FIR=0, FIN=1 and nothing pending counts as a single frame: some
    terminals answer single-frame requests that way.
    """

    def __init__(self) -> None:
        self._frames: list[Frame] = []
        self._expected: int | None = None

    @property
    def pending(self) -> int:
        """Frames held of a response not finished yet."""
        return len(self._frames)

    def expect(self, pseq: int | None) -> None:
        """The PSEQ of the request now outstanding (None: accept any first RSEQ)."""
        self._frames.clear()
        self._expected = pseq

    def reset(self) -> None:
        self._frames.clear()

    def feed(self, frame: Frame) -> list[Frame] | None:
        """The whole response once ``frame`` completes it, else None; SequenceError on a gap."""
        fir, fin, rseq = frame.fir, frame.fin, frame.pseq
        if fir or (fin and not self._frames):
            if self._frames:
                held = len(self._frames)
                self._frames.clear()
                raise SequenceError(f"a new first frame (RSEQ {rseq}) while {held} frame(s) "
                                    "of another response were pending")
            if self._expected is not None and rseq != self._expected:
                raise SequenceError(f"first frame RSEQ {rseq} does not answer PSEQ "
                                    f"{self._expected}")
        else:
            if not self._frames:
                raise SequenceError(f"{'last' if fin else 'middle'} frame RSEQ {rseq} "
                                    "without a first frame")
            last = self._frames[-1]
            want = (last.pseq + 1) & SEQ_MASK
            if rseq != want or (frame.afn, frame.a1, frame.a2) != (last.afn, last.a1, last.a2):
                self._frames.clear()
                raise SequenceError(f"frame RSEQ {rseq} AFN {frame.afn:02X} does not follow "
                                    f"RSEQ {last.pseq} AFN {last.afn:02X}")
        self._frames.append(frame)
        if not fin:
            return None
        out, self._frames = self._frames, []
        return out

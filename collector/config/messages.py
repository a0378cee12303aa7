"""Wording shared by the messages that name what is wrong (configuration, secrets file)."""

from __future__ import annotations

import difflib
import json
from collections.abc import Iterable


def quote(text: str) -> str:
    """A value quoted as TOML and JSON write it."""
    return json.dumps(text, ensure_ascii=False)


def did_you_mean(word: str, choices: Iterable[str]) -> str:
    """``did you mean "x"?`` for the closest choice, or ``""``."""
    close = difflib.get_close_matches(word, list(choices), n=1, cutoff=0.6)
    return f"did you mean {quote(close[0])}?" if close else ""

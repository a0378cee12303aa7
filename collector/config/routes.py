"""What may sit behind a [[concentrator]]: its AFN10 forwarding carries DL/T645 only."""

from __future__ import annotations

from .messages import quote as _q
from .schema import PROTOCOLS

# The DL/T645 editions: the only protocols a concentrator forwards (AFN10 F1) and whose
# quantities its class-1/class-2 data stand for.
FORWARDED: tuple[str, ...] = tuple(p for p, edition in PROTOCOLS.items() if edition)


def behind_concentrator(protocol: str, concentrator: str) -> str | None:
    """The ``expected`` text of a refusal when a meter speaking ``protocol`` is put
    behind ``concentrator``; None when it can be."""
    if protocol in FORWARDED:
        return None
    return (f"a DL/T645 protocol ({', '.join(_q(p) for p in FORWARDED)}) for a meter on "
            f"concentrator {_q(concentrator)} (its AFN10 forwarding carries DL/T645 only)")


__all__ = ["FORWARDED", "behind_concentrator"]

"""Signed remote commands: HMAC-SHA256 with a key per operator.

Anyone who can publish to the broker could otherwise trip a customer's power; a signed
command proves which operator issued it, when, and that nobody changed it on the way.

A signed document is the command plus five fields::

    {"command": "relay", "collector": "gw-01", "action": "trip", "meters": ["M0001"], ...,
     "operator": "alice", "issued": "2024-05-06T12:00:00.000Z",
     "expires": "2024-05-06T12:05:00.000Z", "nonce": "9f86d081884c7d659a2feaa0c55ad015",
     "signature": "<64 hex digits>"}

``signature`` is the hex HMAC-SHA256, under the operator's key, of :func:`canonical` of
every other field: ``json.dumps(doc, sort_keys=True, separators=(",", ":"),
ensure_ascii=False)`` in UTF-8.  A sender in another language must produce the same
bytes (keys sorted by code point, no spaces, non-ASCII characters as themselves).

``collector`` (the target collector's id) and ``command`` (the command kind, the last
level of the topic it is published to) bind the document to one collector and one kind
of command: :meth:`Verifier.verify` given ``collector=`` / ``command=`` refuses a
document naming another (or none) as "wrong_collector" / "wrong_command", so a trip
signed for collector A and re-published to ``amic/B/cmd/relay`` is not executed by B.

:class:`Verifier` accepts a document only once (its nonce is remembered until it
expires), only between ``issued - max_skew`` and ``expires + max_skew``, and only if
``expires - issued`` is at most ``max_ttl``.  Refusals are :class:`SignatureError` with
a ``reason`` code; messages never hold a key or a signature.
"""

from __future__ import annotations

import hashlib
import heapq
import hmac
import json
import math
import re
import secrets
from collections.abc import Callable, Iterable, Mapping
from datetime import UTC, datetime, timedelta
from typing import Any

__all__ = [
    "BOUND_FIELDS",
    "MIN_KEY_BYTES",
    "REASONS",
    "SIGNED_FIELDS",
    "ReplayCache",
    "SignatureError",
    "Verifier",
    "canonical",
    "sign",
]

#: The fields :func:`sign` adds (besides ``signature``).
SIGNED_FIELDS = ("operator", "issued", "expires", "nonce")

#: The fields binding a document to its target, checked by :meth:`Verifier.verify`.
BOUND_FIELDS = ("collector", "command")

#: Every reason a :class:`SignatureError` may give.
REASONS = ("unsigned", "unknown_operator", "bad_signature", "expired", "not_yet_valid",
           "ttl_too_long", "replayed", "replay_cache_full", "malformed", "wrong_collector",
           "wrong_command")

#: Keys shorter than this are refused, as in the secrets file.
MIN_KEY_BYTES = 16

_SIGNATURE = re.compile(r"[0-9a-f]{64}")
# Same limit as collector.commands.remote puts on the operator field.
_MAX_OPERATOR = 64
# Bounds the memory one remembered nonce can take.
_MAX_NONCE = 128


class SignatureError(Exception):
    """A document refused: ``reason`` is one of :data:`REASONS`, ``message`` says why."""

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(reason, message)
        self.reason = reason
        self.message = message

    def __str__(self) -> str:
        return f"{self.reason}: {self.message}"


def canonical(doc: Mapping[str, Any]) -> bytes:
    """The bytes that are signed: ``doc`` without ``signature`` as canonical JSON."""
    body = {k: v for k, v in doc.items() if k != "signature"}
    return json.dumps(body, sort_keys=True, separators=(",", ":"),
                      ensure_ascii=False).encode("utf-8")


def _mac(key: bytes, doc: Mapping[str, Any]) -> str:
    return hmac.new(key, canonical(doc), hashlib.sha256).hexdigest()


def _timestamp(t: datetime) -> str:
    return t.astimezone(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def _utc(now: datetime | None) -> datetime:
    if now is None:
        return datetime.now(UTC)
    if now.tzinfo is None or now.utcoffset() is None:
        # A naive time is ambiguous (local? UTC?); a wrong guess shifts validity by hours.
        raise ValueError("now must be an aware datetime (e.g. datetime.now(UTC))")
    return now.astimezone(UTC)


def sign(doc: Mapping[str, Any], operator: str, key: bytes, *, now: datetime | None = None,
         ttl: float = 300, nonce: str | None = None, collector: str | None = None,
         command: str | None = None) -> dict[str, Any]:
    """A signed copy of ``doc``, valid for ``ttl`` seconds from ``now`` (default: now).

    Adds ``operator``, ``issued``, ``expires``, ``nonce`` (128 random bits in hex unless
    given) and ``signature``; replaces them if ``doc`` has them already.  ``collector``
    and ``command``, when given, set the fields of those names (the target collector's
    id, the command kind), which the daemon requires.
    """
    if not isinstance(operator, str) or not 0 < len(operator) <= _MAX_OPERATOR:
        raise ValueError(f"operator: expected a name of 1 to {_MAX_OPERATOR} characters")
    if len(key) < MIN_KEY_BYTES:
        raise ValueError(f"key: expected at least {MIN_KEY_BYTES} bytes")
    if not math.isfinite(ttl) or ttl <= 0:
        raise ValueError("ttl: expected a positive number of seconds")
    if nonce is not None and not 0 < len(nonce) <= _MAX_NONCE:
        raise ValueError(f"nonce: expected 1 to {_MAX_NONCE} characters")
    # Milliseconds are what is written, so compute expires from the written issued time.
    issued = _utc(now)
    issued = issued.replace(microsecond=issued.microsecond // 1000 * 1000)
    out = {k: v for k, v in doc.items() if k != "signature"}
    for name, value in (("collector", collector), ("command", command)):
        if value is not None:
            if not isinstance(value, str) or not value:
                raise ValueError(f"{name}: expected a non-empty name")
            out[name] = value
    out.update(operator=operator, issued=_timestamp(issued),
               expires=_timestamp(issued + timedelta(seconds=ttl)),
               nonce=secrets.token_hex(16) if nonce is None else nonce)
    out["signature"] = _mac(key, out)
    return out


class ReplayCache:
    """Nonces already accepted, each remembered until a time after which a document
    carrying it would be refused as expired anyway.

    Bounded: when full, forgotten nonces are dropped first; if it is still full a new
    nonce is refused ("replay_cache_full") rather than forgetting one still valid, which
    would let that document be replayed.  Not thread-safe (one asyncio loop uses it).
    Times are POSIX seconds so :meth:`dump` and :meth:`load` survive a restart.
    """

    def __init__(self, max_entries: int = 100_000) -> None:
        if max_entries < 1:
            raise ValueError("max_entries: expected at least 1")
        self.max_entries = max_entries
        self._until: dict[str, float] = {}
        self._heap: list[tuple[float, str]] = []  # (until, nonce), soonest first

    def __len__(self) -> int:
        return len(self._until)

    def __contains__(self, nonce: object) -> bool:
        return nonce in self._until

    def __repr__(self) -> str:
        return f"ReplayCache({len(self)}/{self.max_entries})"

    def prune(self, now: float) -> int:
        """Forget nonces remembered until before ``now``; how many were forgotten."""
        dropped = 0
        # Strictly before: at exactly ``until`` the Verifier still accepts the document,
        # so the nonce must still be known then.
        while self._heap and self._heap[0][0] < now:
            until, nonce = heapq.heappop(self._heap)
            if self._until.get(nonce) == until:  # not superseded by a later load()
                del self._until[nonce]
                dropped += 1
        return dropped

    def add(self, nonce: str, until: float, now: float) -> None:
        """Remember ``nonce`` until ``until``; SignatureError "replayed" if it is known,
        "replay_cache_full" if there is no room."""
        self.prune(now)
        if nonce in self._until:
            raise SignatureError("replayed", "this command was already accepted once "
                                 "(same nonce)")
        if len(self._until) >= self.max_entries:
            raise SignatureError("replay_cache_full", f"{self.max_entries} commands still "
                                 "valid are remembered; refusing more until some expire")
        self._remember(nonce, until)

    def _remember(self, nonce: str, until: float) -> None:
        self._until[nonce] = until
        heapq.heappush(self._heap, (until, nonce))

    def dump(self) -> list[tuple[str, float]]:
        """Every remembered ``(nonce, until)``, soonest first: to keep across restarts."""
        return sorted(self._until.items(), key=lambda item: (item[1], item[0]))

    def load(self, entries: Iterable[tuple[str, float]], now: float | None = None) -> int:
        """Remember ``entries`` (from :meth:`dump`), skipping those already forgettable at
        ``now`` and any beyond :attr:`max_entries`; how many were taken."""
        taken = 0
        for nonce, until in sorted(entries, key=lambda item: -item[1]):
            # Latest first, so when the saved list is larger than the cache the nonces
            # valid the longest are the ones kept.
            if now is not None and until < now:
                continue
            if nonce in self._until:
                if until > self._until[nonce]:
                    self._remember(nonce, until)
                continue
            if len(self._until) >= self.max_entries:
                break
            self._remember(nonce, until)
            taken += 1
        return taken


def _show(text: str) -> str:
    """An untrusted name for a message: quoted (no control characters) and shortened."""
    return json.dumps(text if len(text) <= _MAX_OPERATOR else text[:_MAX_OPERATOR] + "...")


class Verifier:
    """Checks signed documents against the operators' keys.

    ``keys``: a mapping or a lookup ``operator -> key or None`` (e.g.
    :meth:`collector.config.secrets.Secrets.find_key`).  ``max_skew``: seconds of clock
    difference tolerated at both ends of the validity window.  ``max_ttl``: the longest
    validity accepted.  ``seen``: the replay cache (a new one if None).
    """

    def __init__(self, keys: Callable[[str], bytes | None] | Mapping[str, bytes], *,
                 max_skew: float = 60, max_ttl: float = 3600,
                 seen: ReplayCache | None = None) -> None:
        if not (math.isfinite(max_skew) and max_skew >= 0):
            raise ValueError("max_skew: expected seconds >= 0")
        if not (math.isfinite(max_ttl) and max_ttl > 0):
            raise ValueError("max_ttl: expected seconds > 0")
        self._lookup: Callable[[str], bytes | None] = \
            keys.get if isinstance(keys, Mapping) else keys
        self.max_skew = max_skew
        self.max_ttl = max_ttl
        self.seen = ReplayCache() if seen is None else seen

    def __repr__(self) -> str:
        return f"Verifier(max_skew={self.max_skew}, max_ttl={self.max_ttl}, seen={self.seen!r})"

    def verify(self, doc: object, now: datetime | None = None, *,
               collector: str | None = None, command: str | None = None) -> str:
        """The operator who signed ``doc``, or SignatureError; on success the nonce is
        remembered so the same document is refused next time.

        ``collector`` / ``command``: when given, the signed document must name exactly
        this collector id / command kind (the receiving collector, the topic's last
        level), else "wrong_collector" / "wrong_command".
        """
        if not isinstance(doc, Mapping):
            raise SignatureError("malformed", "a signed command must be a JSON object")
        if "signature" not in doc:
            raise SignatureError("unsigned", "the command has no signature")
        signature = doc["signature"]
        if not isinstance(signature, str) or not _SIGNATURE.fullmatch(signature):
            raise SignatureError("malformed", "signature: expected 64 lowercase hex digits")
        operator = doc.get("operator")
        if not isinstance(operator, str) or not 0 < len(operator) <= _MAX_OPERATOR:
            raise SignatureError("malformed", "operator: expected a name of 1 to "
                                 f"{_MAX_OPERATOR} characters")
        key = self._lookup(operator)
        if not key or len(key) < MIN_KEY_BYTES:
            raise SignatureError("unknown_operator",
                                 f"no signing key for operator {_show(operator)}")
        try:
            expected = _mac(key, doc)
        except (TypeError, ValueError):
            raise SignatureError("malformed", "the command is not plain JSON") from None
        # Authenticate before reading anything else: the rest is only trusted once the
        # signature holds.  compare_digest: timing does not tell how much matched.
        if not hmac.compare_digest(expected, signature):
            raise SignatureError("bad_signature", "the signature does not match the "
                                 f"command and the key of operator {_show(operator)}")
        # Bound after authentication: the fields are the signer's, not a relaying party's.
        for name, wanted, reason in (("collector", collector, "wrong_collector"),
                                     ("command", command, "wrong_command")):
            if wanted is None:
                continue
            got = doc.get(name)
            if got is None:
                raise SignatureError(reason, f"the signed command names no {name} (it must "
                                     f"be signed for {name} {_show(wanted)})")
            if got != wanted:
                shown = _show(got) if isinstance(got, str) else "a non-string"
                raise SignatureError(reason, f"signed for {name} {shown}, not "
                                     f"{_show(wanted)}")
        issued = self._time(doc, "issued")
        expires = self._time(doc, "expires")
        nonce = doc.get("nonce")
        if not isinstance(nonce, str) or not 0 < len(nonce) <= _MAX_NONCE:
            raise SignatureError("malformed", f"nonce: expected 1 to {_MAX_NONCE} characters")
        ttl = (expires - issued).total_seconds()
        if ttl <= 0:
            raise SignatureError("malformed", "expires is not after issued")
        if ttl > self.max_ttl:
            raise SignatureError("ttl_too_long", f"valid for {ttl:g} s, more than the "
                                 f"{self.max_ttl:g} s allowed")
        t = _utc(now)
        skew = timedelta(seconds=self.max_skew)
        if issued > t + skew:
            raise SignatureError("not_yet_valid", f"issued {_timestamp(issued)}, in the "
                                 f"future (now {_timestamp(t)}); check the clocks")
        if t > expires + skew:
            raise SignatureError("expired", f"expired {_timestamp(expires)} "
                                 f"(now {_timestamp(t)})")
        # Remembered while the document is still acceptable (expires + skew); after that
        # it is refused as expired, so the nonce can be forgotten.
        self.seen.add(nonce, (expires + skew).timestamp(), t.timestamp())
        return operator

    @staticmethod
    def _time(doc: Mapping[str, Any], field: str) -> datetime:
        value = doc.get(field)
        if not isinstance(value, str):
            raise SignatureError("malformed", f"{field}: expected an ISO 8601 time")
        try:
            t = datetime.fromisoformat(value)
        except ValueError:
            raise SignatureError("malformed", f"{field}: expected an ISO 8601 time") from None
        if t.tzinfo is None or t.utcoffset() is None:
            raise SignatureError("malformed", f"{field}: the time has no time zone "
                                 "(end it with Z)")
        return t.astimezone(UTC)

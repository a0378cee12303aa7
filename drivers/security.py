"""Security modules: what turns a top-up or a relay command into the protected frame.

State Grid cost-control meters accept a purchase (and, when so configured, a relay
command) only after identity authentication with their ESAM, with MACs or ciphertext
that only the utility's encryption machine (密码机) can make.  That step is vendor- and
utility-specific, so amic asks a *security module* for it:

- :class:`SoftModule` (``[security] module = "soft"``): a software module keyed by a
  master key file.  It matches the simulator's ESAM: for tests and demos, never for
  real meters.
- :class:`CommandModule` (``module = "command"``): an external program that speaks JSON
  lines on stdin/stdout, started once and kept; the bridge to an encryption machine.
- any other name: a Python entry point of the group ``amic.security`` whose object is
  called with the ``[security]`` table (a dict) and returns a :class:`SecurityModule`.

The operations (and the external program's protocol, one JSON object a line, ``id``
echoed back; hex strings for bytes)::

    {"id": 1, "op": "authenticate", "meter": "M1", "address": "000000000001"}
      -> {"id": 1, "ciphertext": "<8 bytes>", "random": "<8 bytes>", "factor": "<8 bytes>"}
    {"id": 2, "op": "topup", "meter": ..., "address": ..., "customer": "<12 digits>",
     "amount_fen": 5000, "count": 4, "challenge": {...as above...},
     "answer": {"random": "<4 bytes>", "esam_serial": "<8 bytes>"}}
      -> {"id": 2, "payload": "<the 070102FF payload>"}
    {"id": 3, "op": "relay", "meter": ..., "address": ..., "plain": "<N1..N8>",
     "challenge": {...}, "answer": {...}}
      -> {"id": 3, "ciphertext": "<16 bytes or more>"}
    any -> {"id": n, "error": "why"}

No key, MAC or ciphertext is ever logged.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import hmac
import json
import logging
import secrets
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from importlib.metadata import entry_points
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

from protocols.dlt645 import AuthAnswer, AuthChallenge, TopupPayload

from .errors import DriverError

log = logging.getLogger("amic.security")

ENTRY_POINT_GROUP = "amic.security"
# The simulator's ESAM master key: for tests and demos ([security] test_keys = true).
TEST_MASTER_KEY = bytes.fromhex("a51c0ffee0ddba11feedfacecafe5eed")


class SecurityError(DriverError):
    """The security module could not protect the command (nothing was sent)."""


@dataclass(frozen=True, slots=True)
class MeterIdentity:
    """Who a protected command is for: the collector's id, the 12-digit address and the
    customer number (户号, 12 digits) the meter was opened with."""

    meter_id: str
    address: str
    customer: str = "000000000000"

    def factor(self) -> bytes:
        """The diversification factor: the address, 8 bytes, zero padded."""
        return bytes(2) + bytes.fromhex(self.address)

    def customer_bytes(self) -> bytes:
        return bytes.fromhex(self.customer.rjust(12, "0")[-12:])


@runtime_checkable
class SecurityModule(Protocol):
    """What amic asks of a security module (see the module docstring)."""

    name: str

    async def authenticate(self, meter: MeterIdentity) -> AuthChallenge: ...

    async def protect_topup(self, meter: MeterIdentity, challenge: AuthChallenge,
                            answer: AuthAnswer, amount_fen: int, count: int) -> bytes: ...

    async def protect_relay(self, meter: MeterIdentity, challenge: AuthChallenge,
                            answer: AuthAnswer, plain: bytes) -> bytes: ...

    async def close(self) -> None: ...


# ---- the software module's algorithm (shared with the simulator's ESAM) --------------------

def _mac(key: bytes, *parts: bytes, size: int) -> bytes:
    return hmac.new(key, b"".join(parts), hashlib.sha256).digest()[:size]


def soft_meter_key(master: bytes, factor: bytes) -> bytes:
    """The meter's key, diversified from the master key by its factor."""
    return _mac(master, b"amic-soft-esam", factor, size=16)


def soft_ciphertext(meter_key: bytes, random1: bytes) -> bytes:
    return _mac(meter_key, b"auth", random1, size=8)


def soft_session_key(meter_key: bytes, random1: bytes, answer: AuthAnswer) -> bytes:
    return _mac(meter_key, b"session", random1, answer.random, answer.esam_serial, size=16)


def soft_topup_macs(session: bytes, amount_fen: int, count: int,
                    customer: bytes) -> tuple[bytes, bytes]:
    head = amount_fen.to_bytes(4, "big") + count.to_bytes(4, "big")
    return _mac(session, b"mac1", head, size=4), _mac(session, b"mac2", head, customer, size=4)


def soft_seal(session: bytes, plain: bytes) -> bytes:
    """N1..N8 -> 16 bytes: masked with the session key, then a MAC."""
    mask = _mac(session, b"mask", size=len(plain))
    return bytes(a ^ b for a, b in zip(plain, mask, strict=True)) + \
        _mac(session, b"seal", plain, size=8)


def soft_open(session: bytes, sealed: bytes) -> bytes | None:
    """The inverse of :func:`soft_seal`; None when the MAC does not match."""
    if len(sealed) != 16:
        return None
    mask = _mac(session, b"mask", size=8)
    plain = bytes(a ^ b for a, b in zip(sealed[:8], mask, strict=True))
    return plain if hmac.compare_digest(_mac(session, b"seal", plain, size=8), sealed[8:]) \
        else None


class SoftModule:
    """The software module: the master key from a file (hex, at least 16 bytes)."""

    name = "soft"

    def __init__(self, master_key: bytes) -> None:
        if len(master_key) < 16:
            raise ValueError("soft security module: the master key must be 16 bytes or more")
        self._master = master_key

    def __repr__(self) -> str:
        return "SoftModule(********)"

    @classmethod
    def from_file(cls, path: Path) -> SoftModule:
        return cls(read_key_file(path))

    async def authenticate(self, meter: MeterIdentity) -> AuthChallenge:
        random1 = secrets.token_bytes(8)
        key = soft_meter_key(self._master, meter.factor())
        return AuthChallenge(soft_ciphertext(key, random1), random1, meter.factor())

    def _session(self, meter: MeterIdentity, challenge: AuthChallenge,
                 answer: AuthAnswer) -> bytes:
        key = soft_meter_key(self._master, meter.factor())
        return soft_session_key(key, challenge.random, answer)

    async def protect_topup(self, meter: MeterIdentity, challenge: AuthChallenge,
                            answer: AuthAnswer, amount_fen: int, count: int) -> bytes:
        session = self._session(meter, challenge, answer)
        customer = meter.customer_bytes()
        mac1, mac2 = soft_topup_macs(session, amount_fen, count, customer)
        return TopupPayload(amount_fen, count, customer, mac1, mac2).payload()

    async def protect_relay(self, meter: MeterIdentity, challenge: AuthChallenge,
                            answer: AuthAnswer, plain: bytes) -> bytes:
        return soft_seal(self._session(meter, challenge, answer), plain)

    async def close(self) -> None:
        return None


def read_key_file(path: Path) -> bytes:
    """A key file: hex digits (whitespace ignored), readable by its owner only."""
    mode = path.stat().st_mode
    if mode & 0o077:
        raise ValueError(f"{path}: mode {mode & 0o777:04o}; a key file must be readable by "
                         "its owner only (chmod 600)")
    text = "".join(path.read_text().split())
    try:
        return bytes.fromhex(text)
    except ValueError:
        raise ValueError(f"{path}: not hex digits") from None


# ---- an external program ------------------------------------------------------------------

class CommandModule:
    """An external program speaking JSON lines (see the module docstring); one request
    at a time, ``timeout`` seconds each; restarted after it dies or times out."""

    name = "command"

    def __init__(self, argv: Sequence[str], *, timeout: float = 5.0) -> None:
        if not argv:
            raise ValueError("command security module: an empty command")
        self.argv = list(argv)
        self.timeout = timeout
        self._proc: asyncio.subprocess.Process | None = None
        self._lock = asyncio.Lock()
        self._next = 0

    def __repr__(self) -> str:
        return f"CommandModule({self.argv[0]!r})"

    async def _start(self) -> asyncio.subprocess.Process:
        if self._proc is None or self._proc.returncode is not None:
            self._proc = await asyncio.create_subprocess_exec(
                *self.argv, stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE,
                limit=1 << 20)
        return self._proc

    async def call(self, op: str, fields: Mapping[str, Any]) -> dict[str, Any]:
        async with self._lock:
            self._next += 1
            rid = self._next
            line = json.dumps({"id": rid, "op": op, **fields}) + "\n"
            try:
                proc = await self._start()
                assert proc.stdin is not None and proc.stdout is not None
                proc.stdin.write(line.encode())
                async with asyncio.timeout(self.timeout):
                    await proc.stdin.drain()
                    while True:
                        raw = await proc.stdout.readline()
                        if not raw:
                            raise SecurityError(f"security module {self.argv[0]}: it "
                                                f"ended (exit {await proc.wait()})")
                        doc = json.loads(raw)
                        if isinstance(doc, dict) and doc.get("id") == rid:
                            break
            except TimeoutError:
                await self._kill()
                raise SecurityError(f"security module {self.argv[0]}: no answer to {op} "
                                    f"within {self.timeout:g} s") from None
            except (OSError, ValueError) as e:
                await self._kill()
                raise SecurityError(f"security module {self.argv[0]}: {op}: "
                                    f"{type(e).__name__}: {e}") from None
        if "error" in doc:
            raise SecurityError(f"security module {self.argv[0]} refused {op}: "
                                f"{str(doc['error'])[:200]}")
        return doc

    async def _kill(self) -> None:
        proc, self._proc = self._proc, None
        if proc is not None and proc.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                proc.kill()
            await proc.wait()

    @staticmethod
    def _ident(meter: MeterIdentity) -> dict[str, Any]:
        return {"meter": meter.meter_id, "address": meter.address, "customer": meter.customer}

    @staticmethod
    def _pair(challenge: AuthChallenge, answer: AuthAnswer) -> dict[str, Any]:
        return {"challenge": {"ciphertext": challenge.ciphertext.hex(),
                              "random": challenge.random.hex(),
                              "factor": challenge.factor.hex()},
                "answer": {"random": answer.random.hex(),
                           "esam_serial": answer.esam_serial.hex()}}

    @staticmethod
    def _hex(doc: Mapping[str, Any], key: str, op: str) -> bytes:
        try:
            return bytes.fromhex(str(doc[key]))
        except (KeyError, ValueError):
            raise SecurityError(f"security module: {op}: no hex {key!r} in its "
                                "answer") from None

    async def authenticate(self, meter: MeterIdentity) -> AuthChallenge:
        doc = await self.call("authenticate", self._ident(meter))
        try:
            return AuthChallenge(self._hex(doc, "ciphertext", "authenticate"),
                                 self._hex(doc, "random", "authenticate"),
                                 self._hex(doc, "factor", "authenticate"))
        except SecurityError:
            raise
        except Exception as e:
            raise SecurityError(f"security module: authenticate: {e}") from None

    async def protect_topup(self, meter: MeterIdentity, challenge: AuthChallenge,
                            answer: AuthAnswer, amount_fen: int, count: int) -> bytes:
        doc = await self.call("topup", {**self._ident(meter), **self._pair(challenge, answer),
                                        "amount_fen": amount_fen, "count": count})
        return self._hex(doc, "payload", "topup")

    async def protect_relay(self, meter: MeterIdentity, challenge: AuthChallenge,
                            answer: AuthAnswer, plain: bytes) -> bytes:
        doc = await self.call("relay", {**self._ident(meter), **self._pair(challenge, answer),
                                        "plain": plain.hex()})
        return self._hex(doc, "ciphertext", "relay")

    async def close(self) -> None:
        async with self._lock:
            proc, self._proc = self._proc, None
            if proc is None or proc.returncode is not None:
                return
            assert proc.stdin is not None
            proc.stdin.close()  # its cue to end
            try:
                async with asyncio.timeout(2.0):
                    await proc.wait()
            except TimeoutError:
                with contextlib.suppress(ProcessLookupError):
                    proc.kill()
                await proc.wait()


def load_module(table: Mapping[str, Any]) -> SecurityModule:
    """The module a ``[security]`` table names (``module``: soft, command or an entry
    point of the group ``amic.security``)."""
    name = str(table.get("module", ""))
    if name == "soft":
        if table.get("test_keys"):
            log.warning("security module: the simulator's test keys (never for real meters)")
            return SoftModule(TEST_MASTER_KEY)
        return SoftModule.from_file(Path(table["key_file"]))
    if name == "command":
        return CommandModule([str(a) for a in table["command"]],
                             timeout=float(table.get("timeout", 5.0)))
    found = [ep for ep in entry_points(group=ENTRY_POINT_GROUP) if ep.name == name]
    if not found:
        raise ValueError(f"security module {name!r}: not soft, command, nor an installed "
                         f"entry point of the group {ENTRY_POINT_GROUP}")
    module = found[0].load()(dict(table))
    if not isinstance(module, SecurityModule):
        raise ValueError(f"security module {name!r}: its entry point did not return a "
                         "security module (authenticate, protect_topup, protect_relay, close)")
    return module


__all__ = [
    "ENTRY_POINT_GROUP", "TEST_MASTER_KEY", "CommandModule", "MeterIdentity", "SecurityError",
    "SecurityModule", "SoftModule", "load_module", "read_key_file", "soft_ciphertext",
    "soft_meter_key", "soft_open", "soft_seal", "soft_session_key", "soft_topup_macs",
]

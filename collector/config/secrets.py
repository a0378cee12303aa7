"""The secrets file: DL/T645 passwords, operator codes and the keys that sign remote commands.

One TOML file, kept apart from the configuration so that the configuration can be shared,
versioned and shown while this file stays ``chmod 600``::

    [default]
    password = "02123456"            # DL/T645 "LLPPPPPP": level (2 hex) + code (6 hex)
    modbus_password = "1234"         # optional, free text, for Modbus profiles that need one

    [meters.M0001]                   # a meter's own, instead of [default]
    password = "04abcdef"

    [operators.alice]
    operator_code = "00000001"       # DL/T645 operator code, 8 hex digits (required)
    key = "hex:00112233..."          # optional HMAC key for signed remote commands:
                                     # "hex:...", "base64:..." or plain hex, >= 16 bytes

    [ledger]                         # seals the ledger's customer and phone cells
    key = "base64:..."               # 32 bytes (amic ledger key prints one)

    [api_tokens.billing]             # an HTTP API bearer token (amic api-token prints one)
    hash = "sha256:9f86d0..."        # the token's SHA-256, never the token itself
    role = "viewer"                  # viewer, operator or admin
    operator = "alice"               # optional: whose operator code its commands send

:func:`load_secrets` refuses a file that group or others may access, that someone else
owns (unless amic runs as root), that is not a regular file, or whose content is wrong;
every problem found is reported at once in one :class:`SecretsError`.  A secret value is
never part of a message: problems say what was expected and what kind of value was found.

Every accessor hands out a :class:`Secret`, whose ``str()``, ``repr()`` and f-string
form are ``***``, so a stray log line or traceback never prints it; ``.reveal()`` is the
one place the value comes out.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import os
import re
import stat
import tomllib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from .messages import did_you_mean as _did_you_mean
from .messages import quote as _q

__all__ = [
    "DEFAULT_KEYS",
    "METER_KEYS",
    "MIN_KEY_BYTES",
    "OPERATOR_KEYS",
    "TOP_KEYS",
    "ApiToken",
    "Secret",
    "Secrets",
    "SecretsError",
    "UnknownOperator",
    "decode_key",
    "load_secrets",
    "parse_secrets",
    "token_hash",
]

TOP_KEYS = ("default", "meters", "operators", "api_tokens", "ledger")
DEFAULT_KEYS = ("password", "modbus_password")
METER_KEYS = ("password", "modbus_password")
OPERATOR_KEYS = ("operator_code", "key")
API_TOKEN_KEYS = ("hash", "role", "operator")
API_ROLES = ("viewer", "operator", "admin")
_SHA256 = re.compile(r"sha256:([0-9a-f]{64})")

#: Shorter HMAC-SHA256 keys are refused: 128 bits is the least that resists guessing.
MIN_KEY_BYTES = 16

_HEX8 = re.compile(r"[0-9A-Fa-f]{8}")
# Operator names travel in signed commands and the audit trail (collector.commands.remote allows
# up to 64 characters there), so the same limit applies here.
_OPERATOR_NAME = re.compile(r"[^\x00-\x1f\x7f]{1,64}")


class Secret:
    """A secret string that shows as ``***`` everywhere; ``reveal()`` gives the value."""

    __slots__ = ("_value",)

    def __init__(self, value: str) -> None:
        self._value = value

    def reveal(self) -> str:
        """The value itself: call this only where it is sent to a meter."""
        return self._value

    def __repr__(self) -> str:
        return "***"

    __str__ = __repr__

    def __format__(self, spec: str) -> str:
        # object.__format__ would raise for a non-empty spec; "***" for any spec instead.
        return "***"

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Secret):
            return NotImplemented
        # compare_digest: the time taken says nothing about how much of the value matched.
        return hmac.compare_digest(self._value.encode(), other._value.encode())

    def __hash__(self) -> int:
        return hash((Secret, self._value))


class SecretsError(Exception):
    """The secrets file is not usable (``problems`` lists everything wrong), or a lookup
    asked for something it does not hold."""

    def __init__(self, problems: str | Sequence[str]) -> None:
        self.problems: list[str] = [problems] if isinstance(problems, str) else list(problems)
        super().__init__(*self.problems)

    def __str__(self) -> str:
        return "\n".join(self.problems)


class UnknownOperator(SecretsError, KeyError):
    """An operator the secrets file does not name (also a :class:`KeyError`)."""

    def __init__(self, problem: str, operator: str) -> None:
        super().__init__(problem)
        self.operator = operator


@dataclass(frozen=True, slots=True)
class _Meter:
    password: Secret | None = None
    modbus_password: Secret | None = None


@dataclass(frozen=True, slots=True)
class _Operator:
    operator_code: Secret
    key: bytes | None = field(repr=False)  # raw bytes: a repr would print them


@dataclass(frozen=True, slots=True)
class ApiToken:
    """An HTTP API token as the secrets file describes it (its hash, never the token)."""

    name: str
    role: str
    operator: str  # whose operator code the token's commands send
    digest: bytes = field(repr=False)


def token_hash(token: str) -> str:
    """The ``hash`` of a token as written in the secrets file: ``sha256:<hex>``.

    A plain SHA-256 is enough: tokens are 256 random bits, not passwords to stretch."""
    return "sha256:" + hashlib.sha256(token.encode()).hexdigest()


class Secrets:
    """The checked content of a secrets file; its ``repr()`` reveals no secret."""

    def __init__(self, file: str, default: _Meter | None = None,
                 meters: Mapping[str, _Meter] | None = None,
                 operators: Mapping[str, _Operator] | None = None,
                 api_tokens: Mapping[str, ApiToken] | None = None,
                 ledger_key: bytes | None = None) -> None:
        self.file = file
        self._ledger_key = Secret(ledger_key.hex()) if ledger_key is not None else None
        self._default = default or _Meter()
        self._meters = dict(meters or {})
        self._operators = dict(operators or {})
        self._tokens = dict(api_tokens or {})

    def ledger_key(self) -> bytes | None:
        """The key that seals the ledger's personal cells (``[ledger] key``), or None."""
        return None if self._ledger_key is None else bytes.fromhex(self._ledger_key.reveal())

    def api_tokens(self) -> list[str]:
        """The names of the API tokens, sorted."""
        return sorted(self._tokens)

    def api_token(self, token: str) -> ApiToken | None:
        """The API token whose hash matches ``token``, or None."""
        digest = hashlib.sha256(token.encode()).digest()
        found = None
        for t in self._tokens.values():  # every one compared: the time says nothing
            if hmac.compare_digest(t.digest, digest):
                found = t
        return found

    def __repr__(self) -> str:
        # Names of meters and operators are not secret; the values never appear.
        return (f"Secrets(file={self.file!r}, meters={len(self._meters)}, "
                f"operators={sorted(self._operators)!r})")

    def password(self, meter_id: str) -> Secret | None:
        """The DL/T645 password (``LLPPPPPP``) for a meter: its own, else the default."""
        own = self._meters.get(meter_id)
        if own is not None and own.password is not None:
            return own.password
        return self._default.password

    def modbus_password(self, meter_id: str) -> Secret | None:
        """The Modbus password for a meter: its own, else the default."""
        own = self._meters.get(meter_id)
        if own is not None and own.modbus_password is not None:
            return own.modbus_password
        return self._default.modbus_password

    def meters(self) -> list[str]:
        """The meter ids that have a table of their own, sorted."""
        return sorted(self._meters)

    def operators(self) -> list[str]:
        """The operator names, sorted."""
        return sorted(self._operators)

    def operator_code(self, operator: str) -> Secret:
        """The operator's DL/T645 operator code (8 hex digits); :class:`UnknownOperator`
        if the file does not name the operator."""
        return self._operator(operator).operator_code

    def operator_key(self, operator: str) -> bytes:
        """The operator's HMAC key; :class:`UnknownOperator` if the operator is unknown,
        :class:`SecretsError` if the operator has no key."""
        key = self._operator(operator).key
        if key is None:
            raise SecretsError(f"{self.file}: [operators.{_name(operator)}] has no \"key\", "
                               "so its remote commands cannot be verified")
        return key

    def find_key(self, operator: str) -> bytes | None:
        """The operator's HMAC key, or None (unknown operator or no key): the lookup a
        :class:`collector.commands.signing.Verifier` takes."""
        op = self._operators.get(operator)
        return None if op is None else op.key

    def _operator(self, operator: str) -> _Operator:
        op = self._operators.get(operator)
        if op is None:
            known = ", ".join(_q(n) for n in sorted(self._operators)) or "none"
            hint = _did_you_mean(operator, self._operators)
            raise UnknownOperator(f"{self.file}: no operator {_q(operator)} in [operators] "
                                  f"(known: {known}){'; ' + hint if hint else ''}", operator)
        return op


def decode_key(text: str) -> bytes:
    """An HMAC key as written in the file: ``hex:...``, ``base64:...`` or plain hex.

    Raises ValueError (whose message never holds the key) when it does not decode.
    """
    kind, sep, body = text.partition(":")
    if not sep:
        kind, body = "hex", text
    kind = kind.strip().lower()
    body = body.strip()
    if kind == "hex":
        try:
            return bytes.fromhex(body)
        except ValueError:
            raise ValueError("not hex digits") from None
    if kind == "base64":
        try:
            return base64.b64decode(body, validate=True)
        except binascii.Error:
            raise ValueError("not base64") from None
    raise ValueError("an unknown prefix (use \"hex:\" or \"base64:\")")


def load_secrets(path: str | os.PathLike[str]) -> Secrets:
    """Read and check the secrets file at ``path``; :class:`SecretsError` lists every
    problem found."""
    file = str(path)
    problems: list[str] = []
    raw = _read_private(Path(path), file, problems)
    if raw is None:
        raise SecretsError(problems)
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as e:
        line = raw[: e.start].count(b"\n") + 1
        raise SecretsError([*problems, f"{file}: line {line}: not UTF-8 text "
                                       "(save the file as UTF-8)"]) from None
    try:
        secrets = parse_secrets(text, file)
    except SecretsError as e:
        raise SecretsError(problems + e.problems) from None
    if problems:
        raise SecretsError(problems)
    return secrets


def parse_secrets(text: str, file: str = "<string>") -> Secrets:
    """Check the TOML text of a secrets file (no file-mode checks: tests and tools)."""
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as e:
        raise SecretsError(_toml_problem(file, str(e), text)) from None
    return _Parser(file).parse(data)


# ---- the file itself ----------------------------------------------------------------------

def _read_private(path: Path, file: str, problems: list[str]) -> bytes | None:
    """The file's bytes, adding to ``problems`` if others may read it or someone else owns
    it; None (with the reason added) when it cannot be read at all."""
    # Open first, then fstat the descriptor: the checks and the read see the same file
    # even if the path is swapped in between.  O_NONBLOCK: a FIFO must not hang the start.
    flags = os.O_RDONLY | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_NOCTTY", 0) \
        | getattr(os, "O_CLOEXEC", 0)
    try:
        fd = os.open(path, flags)
    except FileNotFoundError:
        problems.append(f"{file}: no such file")
        return None
    except PermissionError:
        problems.append(f"{file}: not readable by uid {os.geteuid()}, which runs amic")
        return None
    except OSError as e:
        problems.append(f"{file}: cannot open it ({e.strerror})")
        return None
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            problems.append(f"{file}: not a regular file ({_kind(st.st_mode)})")
            return None
        mode = stat.S_IMODE(st.st_mode)
        if mode & 0o077:
            problems.append(f"{file}: mode {mode:04o} lets group or others access it; "
                            f"it must be 0600 or 0400: chmod 600 {file}")
        uid = os.geteuid()
        # root may use a file another account keeps; anyone else only their own, since
        # its owner could otherwise change the keys that authorise power cuts.
        if uid != 0 and st.st_uid != uid:
            problems.append(f"{file}: owned by uid {st.st_uid}, but amic runs as uid {uid}; "
                            "it must own the file (chown it)")
        chunks: list[bytes] = []
        while chunk := os.read(fd, 65536):
            chunks.append(chunk)
        return b"".join(chunks)
    except OSError as e:
        problems.append(f"{file}: cannot read it ({e.strerror})")
        return None
    finally:
        os.close(fd)


def _kind(mode: int) -> str:
    for test, name in ((stat.S_ISDIR, "a directory"), (stat.S_ISFIFO, "a FIFO"),
                       (stat.S_ISSOCK, "a socket"), (stat.S_ISCHR, "a character device"),
                       (stat.S_ISBLK, "a block device")):
        if test(mode):
            return name
    return "not a plain file"


def _toml_problem(file: str, message: str, text: str) -> str:
    # tomllib ends its message with "(at line L, column C)"; say where in words.
    m = re.search(r"\s*\(at line (\d+), column (\d+)\)$", message)
    if m:
        return (f"{file}: line {m.group(1)}, column {m.group(2)}: not valid TOML: "
                f"{message[: m.start()]}")
    if message.endswith("(at end of document)"):
        line = max(1, len(text.splitlines()))
        return (f"{file}: line {line}: not valid TOML: "
                f"{message.removesuffix('(at end of document)').strip()} at the end of the file")
    return f"{file}: not valid TOML: {message}"


# ---- the content --------------------------------------------------------------------------

def _name(key: str) -> str:
    """A TOML key as written in a table header: bare if it can be, else quoted."""
    return key if re.fullmatch(r"[A-Za-z0-9_-]+", key) else _q(key)


def _kind_of(value: object) -> str:
    """What a TOML value is, without showing it (it may be a secret)."""
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, int):
        return "an integer (write the value in quotes)"
    if isinstance(value, float):
        return "a number (write the value in quotes)"
    if isinstance(value, str):
        return "a string"
    if isinstance(value, dict):
        return "a table"
    if isinstance(value, list):
        return "an array"
    return "a date or time"


class _Parser:
    """Checks parsed TOML, collecting every problem before raising."""

    def __init__(self, file: str) -> None:
        self.file = file
        self.problems: list[str] = []

    def add(self, table: str, key: str | None, text: str) -> None:
        where = f"[{table}]" if table else "the top level"
        what = f": key {_q(key)}" if key is not None else ""
        self.problems.append(f"{self.file}: {where}{what}: {text}")

    def unknown(self, table: str, data: Mapping[str, object], allowed: Sequence[str]) -> None:
        for key in data:
            if key not in allowed:
                hint = _did_you_mean(key, allowed)
                self.add(table, key, "unknown key, expected one of " + ", ".join(allowed)
                         + (f"; {hint}" if hint else ""))

    def table(self, table: str, key: str, value: object) -> dict[str, object] | None:
        if isinstance(value, dict):
            return value
        self.add(table, key, f"expected a table, got {_kind_of(value)}")
        return None

    def string(self, table: str, data: Mapping[str, object], key: str) -> str | None:
        value = data.get(key)
        if value is None:
            return None
        if not isinstance(value, str):
            self.add(table, key, f"expected a string, got {_kind_of(value)}")
            return None
        return value

    def hex8(self, table: str, data: Mapping[str, object], key: str,
             what: str) -> Secret | None:
        value = self.string(table, data, key)
        if value is None:
            return None
        if not _HEX8.fullmatch(value):
            # Only the length and kind of the wrong value: it is probably almost the secret.
            bad = "" if all(c in "0123456789abcdefABCDEF" for c in value) \
                else ", not all of them hex digits"
            n = len(value)
            self.add(table, key, f"expected {what}, got {n} character{'' if n == 1 else 's'}"
                     f"{bad}")
            return None
        return Secret(value)

    def meter(self, table: str, data: Mapping[str, object], allowed: Sequence[str]) -> _Meter:
        self.unknown(table, data, allowed)
        password = self.hex8(table, data, "password",
                             "8 hex digits (2 for the password level, 6 for the password)")
        modbus = self.string(table, data, "modbus_password")
        if modbus == "":
            self.add(table, "modbus_password", "expected a password, got an empty string")
        return _Meter(password=password, modbus_password=Secret(modbus) if modbus else None)

    def operator(self, table: str, data: Mapping[str, object]) -> _Operator | None:
        self.unknown(table, data, OPERATOR_KEYS)
        code = self.hex8(table, data, "operator_code", "8 hex digits")
        if "operator_code" not in data:
            self.add(table, "operator_code", "missing: every operator needs an operator code "
                     "of 8 hex digits")
        key: bytes | None = None
        text = self.string(table, data, "key")
        if text is not None:
            try:
                key = decode_key(text)
            except ValueError as e:
                self.add(table, "key", f"expected \"hex:...\", \"base64:...\" or hex digits, "
                         f"got {e}")
            else:
                if len(key) < MIN_KEY_BYTES:
                    self.add(table, "key", f"expected at least {MIN_KEY_BYTES} bytes, got "
                             f"{len(key)} (make one with: openssl rand -hex 32)")
                    key = None
        return None if code is None else _Operator(operator_code=code, key=key)

    def parse(self, data: Mapping[str, object]) -> Secrets:
        self.unknown("", data, TOP_KEYS)
        default = _Meter()
        if "default" in data:
            d = self.table("", "default", data["default"])
            if d is not None:
                default = self.meter("default", d, DEFAULT_KEYS)
        meters: dict[str, _Meter] = {}
        if "meters" in data:
            ms = self.table("", "meters", data["meters"])
            for meter_id, value in (ms or {}).items():
                m = self.table("meters", meter_id, value)
                if m is not None:
                    meters[meter_id] = self.meter(f"meters.{_name(meter_id)}", m, METER_KEYS)
        tokens: dict[str, ApiToken] = {}
        if "api_tokens" in data:
            ts = self.table("", "api_tokens", data["api_tokens"])
            for name, value in (ts or {}).items():
                if not _OPERATOR_NAME.fullmatch(name):
                    self.add("api_tokens", name, "expected a token name of 1 to 64 "
                             "characters without control characters")
                    continue
                t = self.table("api_tokens", name, value)
                if t is not None:
                    tok = self.api_token(f"api_tokens.{_name(name)}", name, t)
                    if tok is not None:
                        tokens[name] = tok
        operators: dict[str, _Operator] = {}
        if "operators" in data:
            ops = self.table("", "operators", data["operators"])
            for name, value in (ops or {}).items():
                if not _OPERATOR_NAME.fullmatch(name):
                    self.add("operators", name, "expected an operator name of 1 to 64 "
                             "characters without control characters")
                    continue
                o = self.table("operators", name, value)
                if o is not None:
                    op = self.operator(f"operators.{_name(name)}", o)
                    if op is not None:
                        operators[name] = op
        ledger_key: bytes | None = None
        if "ledger" in data:
            lt = self.table("", "ledger", data["ledger"])
            if lt is not None:
                ledger_key = self.ledger_key(lt)
        if self.problems:
            raise SecretsError(self.problems)
        return Secrets(self.file, default, meters, operators, tokens, ledger_key)

    def ledger_key(self, data: Mapping[str, object]) -> bytes | None:
        self.unknown("ledger", data, ("key",))
        text = self.string("ledger", data, "key")
        if text is None:
            if "key" not in data:
                self.add("ledger", "key", "missing: 32 bytes as \"base64:...\" or "
                         "\"hex:...\" (amic ledger key prints one)")
            return None
        try:
            key = decode_key(text)
        except ValueError as e:
            self.add("ledger", "key", f"expected \"hex:...\", \"base64:...\" or hex "
                     f"digits: {e}")
            return None
        if len(key) != 32:
            self.add("ledger", "key", f"expected 32 bytes (AES-256), got {len(key)} "
                     "(amic ledger key prints one)")
            return None
        return key

    def api_token(self, table: str, name: str, data: Mapping[str, object]) -> ApiToken | None:
        self.unknown(table, data, API_TOKEN_KEYS)
        text = self.string(table, data, "hash")
        m = _SHA256.fullmatch(text) if text is not None else None
        if text is None and "hash" not in data:
            self.add(table, "hash", "missing: the token's \"sha256:...\" (amic api-token "
                     "prints it)")
        elif text is not None and m is None:
            self.add(table, "hash", f"expected \"sha256:\" and 64 lower-case hex digits, got "
                     f"{len(text)} characters (the token itself does not belong here)")
        role = self.string(table, data, "role")
        if role is None and "role" not in data:
            self.add(table, "role", f"missing: one of {', '.join(API_ROLES)}")
        elif role is not None and role not in API_ROLES:
            self.add(table, "role", f"expected one of {', '.join(API_ROLES)}, got {_q(role)}")
        operator = self.string(table, data, "operator") or name
        if m is None or role not in API_ROLES or not _OPERATOR_NAME.fullmatch(operator):
            return None
        return ApiToken(name, str(role), operator, bytes.fromhex(m.group(1)))

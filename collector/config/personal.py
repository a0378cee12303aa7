"""Customers' personal data (the ledger's ``customer`` and ``phone``) sealed at rest.

A ledger cell may hold ``enc:v1:`` and the base64 of a 12-byte nonce and the AES-256-GCM
ciphertext of the value, under the ``[ledger] key`` of the secrets file.  The meter id
and the column are the associated data, so a sealed cell moved to another meter's row,
or to the other column, does not open.  Encrypted rather than hashed: the SMS channel
needs the phone number and the masked views need the family name.

The plain value lives only in memory (``MeterSettings``), masked by role wherever it is
shown; ``amic ledger seal`` rewrites a ledger with its personal cells sealed, and a
ledger imported through the API is sealed before it is written.
"""

from __future__ import annotations

import base64
import binascii
import csv
import io
import os

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

PREFIX = "enc:v1:"
KEY_BYTES = 32
PERSONAL_COLUMNS = ("customer", "phone")
_NONCE = 12


class SealError(ValueError):
    """A sealed cell that does not open: says why, never what it holds."""


def is_sealed(value: str) -> bool:
    return value.strip().startswith("enc:")


def new_key() -> bytes:
    return os.urandom(KEY_BYTES)


class PersonalKey:
    """Seals and opens personal cells of one ledger; ``repr()`` shows no key."""

    __slots__ = ("_aead",)

    def __init__(self, key: bytes) -> None:
        if len(key) != KEY_BYTES:
            raise ValueError(f"a ledger key of {KEY_BYTES} bytes, got {len(key)}")
        self._aead = AESGCM(key)

    def __repr__(self) -> str:
        return "PersonalKey(***)"

    @staticmethod
    def _ad(meter: str, column: str) -> bytes:
        return f"amic-ledger\x00{meter}\x00{column}".encode()

    def seal(self, meter: str, column: str, value: str) -> str:
        nonce = os.urandom(_NONCE)
        ct = self._aead.encrypt(nonce, value.encode(), self._ad(meter, column))
        return PREFIX + base64.urlsafe_b64encode(nonce + ct).decode().rstrip("=")

    def open(self, meter: str, column: str, cell: str) -> str:
        cell = cell.strip()
        if not cell.startswith(PREFIX):
            raise SealError(f"an unknown format {cell[:7]!r} (amic seals as {PREFIX!r})")
        body = cell[len(PREFIX):]
        try:
            raw = base64.urlsafe_b64decode(body + "=" * (-len(body) % 4))
        except (binascii.Error, ValueError):
            raise SealError("not base64 after the prefix") from None
        if len(raw) < _NONCE + 16:
            raise SealError(f"{len(raw)} bytes, too short for a sealed value")
        try:
            plain = self._aead.decrypt(raw[:_NONCE], raw[_NONCE:], self._ad(meter, column))
        except InvalidTag:
            raise SealError("it does not open with the [ledger] key of the secrets file "
                            "(another key, altered, or moved from another meter's row or "
                            "column)") from None
        try:
            return plain.decode()
        except UnicodeDecodeError:  # pragma: no cover - only a forged key gets here
            raise SealError("it opens to something that is not text") from None


def seal_ledger_text(text: str, key: PersonalKey) -> tuple[str, int]:
    """``text`` (a ledger CSV) with its plain personal cells sealed: (new text, cells
    sealed).  Comment lines, blank lines and records left alone keep their bytes."""
    lines = io.StringIO(text, newline="").readlines()  # the lines the reader counts
    reader = csv.reader(io.StringIO(text, newline=""))
    header: list[str] | None = None
    out: list[str] = []
    done = 0  # lines consumed so far
    sealed = 0
    for cells in reader:
        start, end = done, reader.line_num
        raw = "".join(lines[start:end])
        done = end
        if not any(c.strip() for c in cells) or cells[0].lstrip().startswith("#"):
            out.append(raw)
            continue
        if header is None:
            header = [c.strip().lower() for c in cells]
            out.append(raw)
            continue
        cols = [i for i, h in enumerate(header) if h in PERSONAL_COLUMNS]
        mid = cells[header.index("meter_id")].strip() if "meter_id" in header \
            and len(cells) == len(header) else ""
        todo = [i for i in cols if len(cells) == len(header) and mid
                and cells[i].strip() and not is_sealed(cells[i])]
        if not todo:
            out.append(raw)
            continue
        for i in todo:
            cells[i] = key.seal(mid, header[i], cells[i].strip())
            sealed += 1
        buf = io.StringIO()
        eol = "\r\n" if raw.endswith("\r\n") else "\n"
        csv.writer(buf, lineterminator=eol).writerow(cells)
        out.append(buf.getvalue() if raw.endswith(("\n", "\r")) else buf.getvalue()[:-len(eol)])
    out.extend(lines[done:])
    return "".join(out), sealed


__all__ = ["KEY_BYTES", "PERSONAL_COLUMNS", "PREFIX", "PersonalKey", "SealError", "is_sealed",
           "new_key", "seal_ledger_text"]

"""The simulated meter's ESAM: identity authentication and remote top-up checked with
the software security module's algorithm (drivers.security, test keys only)."""

from __future__ import annotations

import datetime as dt
import secrets
from dataclasses import dataclass, field

from drivers.security import (
    TEST_MASTER_KEY,
    soft_ciphertext,
    soft_meter_key,
    soft_open,
    soft_session_key,
    soft_topup_macs,
)
from protocols.dlt645 import AuthAnswer, AuthChallenge, TopupPayload

# SERR bits (protocols.dlt645.SECURITY_ERROR_BITS)
SERR_OTHER = 1 << 0
SERR_REPEATED = 1 << 1
SERR_ESAM = 1 << 2
SERR_AUTH = 1 << 3
SERR_CUSTOMER = 1 << 4
SERR_COUNT = 1 << 5
SERR_HOARDING = 1 << 6


class EsamRefused(Exception):
    """The ESAM says no; ``serr`` is the error word the meter answers with."""

    def __init__(self, message: str, serr: int) -> None:
        super().__init__(message)
        self.serr = serr


@dataclass(slots=True)
class Esam:
    """One meter's ESAM: ``master_key`` (the simulator's test key unless given), the
    ``customer`` number it was opened with, its ``serial``; ``relay_needs_esam``:
    plain 1C relay commands are refused; ``lose_topups``: a fault, acknowledged top-ups
    that the meter does not apply (its count stays)."""

    master_key: bytes = TEST_MASTER_KEY
    customer: str = "000000000000"
    serial: bytes = field(default_factory=lambda: secrets.token_bytes(8))
    relay_needs_esam: bool = False
    lose_topups: int = 0  # fault: this many top-ups acknowledged but not applied
    _session: bytes | None = field(default=None, repr=False)
    authentications: int = 0

    def authenticate(self, address: str, challenge: AuthChallenge) -> AuthAnswer:
        if challenge.factor != bytes(2) + bytes.fromhex(address):
            raise EsamRefused("diversification factor is not this meter's", SERR_AUTH)
        key = soft_meter_key(self.master_key, challenge.factor)
        if soft_ciphertext(key, challenge.random) != challenge.ciphertext:
            self._session = None
            raise EsamRefused("ciphertext 1 does not verify", SERR_AUTH)
        answer = AuthAnswer(secrets.token_bytes(4), self.serial)
        self._session = soft_session_key(key, challenge.random, answer)
        self.authentications += 1
        return answer

    def check_topup(self, order: TopupPayload, purchase_count: int) -> None:
        """Refuse a top-up the ESAM cannot accept (raises); the session is used up."""
        session, self._session = self._session, None
        if session is None:
            raise EsamRefused("no identity authentication before the top-up", SERR_ESAM)
        mac1, mac2 = soft_topup_macs(session, order.amount_fen, order.count, order.customer)
        if (mac1, mac2) != (order.mac1, order.mac2):
            raise EsamRefused("MAC does not verify", SERR_ESAM)
        if order.customer != bytes.fromhex(self.customer.rjust(12, "0")):
            raise EsamRefused("customer number does not match", SERR_CUSTOMER)
        if order.count == purchase_count:
            raise EsamRefused(f"purchase {order.count} already written", SERR_REPEATED)
        if order.count != purchase_count + 1:
            raise EsamRefused(f"purchase count {order.count}, expected {purchase_count + 1}",
                              SERR_COUNT)

    def open(self, ciphertext: bytes) -> bytes | None:
        """N1..N8 of an encrypted relay command, None if it does not verify."""
        session, self._session = self._session, None
        return soft_open(session, ciphertext) if session is not None else None


def expiry_of(raw: bytes) -> dt.datetime:
    """N3..N8 (ssmmhhDDMMYY, BCD, low byte first) as a naive meter time."""
    digits = raw[::-1].hex()  # YYMMDDhhmmss
    return dt.datetime(2000 + int(digits[0:2]), int(digits[2:4]), int(digits[4:6]),
                       int(digits[6:8]), int(digits[8:10]), int(digits[10:12]))


__all__ = ["SERR_AUTH", "SERR_COUNT", "SERR_CUSTOMER", "SERR_ESAM", "SERR_HOARDING",
           "SERR_OTHER", "SERR_REPEATED", "Esam", "EsamRefused", "expiry_of"]

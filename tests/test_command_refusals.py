"""collector.service.control.check_request: what the daemon refuses on its command channel,
signing on and off."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest

from collector.commands.signing import SignatureError, Verifier, sign
from collector.service.control import check_request

KEY = bytes(range(32))
BODY = {"request_id": "r-1", "command": "relay", "action": "trip", "meters": ["M1"],
        "reason": "arrears"}


def reason(doc: dict[str, object], verifier: Verifier | None, **where: str) -> str:
    with pytest.raises(SignatureError) as e:
        check_request(doc, verifier, **{"collector": "gw-B", "command": "relay", **where})
    return e.value.reason


def test_signed_requests_are_bound_to_this_collector_and_command() -> None:
    v = Verifier({"alice": KEY})
    now = datetime.now(UTC)
    for_b = sign(BODY, "alice", KEY, now=now, collector="gw-B", command="relay")
    assert check_request(for_b, v, collector="gw-B", command="relay") == "alice"
    for_a = sign(BODY, "alice", KEY, now=now, collector="gw-A", command="relay")
    assert reason(for_a, v) == "wrong_collector"
    as_topup = sign(BODY, "alice", KEY, now=now, collector="gw-B", command="relay")
    assert reason(as_topup, v, command="topup") == "wrong_command"
    assert reason(dict(BODY), v) == "unsigned"


def test_with_signing_off_a_document_for_another_collector_or_command_is_still_refused(
        ) -> None:
    assert check_request({**BODY, "operator": "ops"}, None, collector="gw-B",
                         command="relay") == "ops"
    assert check_request({"request_id": "r-2"}, None, collector="gw-B",
                         command="relay") == "remote"
    assert reason({**BODY, "collector": "gw-A"}, None) == "wrong_collector"
    assert reason({**BODY, "collector": None}, None) == "wrong_collector"
    assert reason(BODY, None, command="topup") == "wrong_command"

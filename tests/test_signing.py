"""collector.commands.signing: signing, every refusal with its reason, the replay cache."""

from __future__ import annotations

import hashlib
import hmac
import json
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from collector.commands.signing import (
    REASONS,
    ReplayCache,
    SignatureError,
    Verifier,
    canonical,
    sign,
)
from collector.config.secrets import parse_secrets

KEY = bytes(range(32))
OTHER_KEY = bytes(range(1, 33))
T0 = datetime(2024, 5, 6, 12, 0, 0, tzinfo=UTC)
CMD = {"request_id": "r-1", "command": "trip", "meter": "M0001", "note": "négatif"}


def verifier(**kwargs: Any) -> Verifier:
    return Verifier({"alice": KEY, "bob": OTHER_KEY}, **kwargs)


def refused(v: Verifier, doc: object, now: datetime = T0) -> SignatureError:
    with pytest.raises(SignatureError) as e:
        v.verify(doc, now=now)
    assert e.value.reason in REASONS
    # Neither the key nor the signature may end up in a log line.
    for secret in (KEY.hex(), OTHER_KEY.hex(), repr(KEY)):
        assert secret not in str(e.value)
    if isinstance(doc, dict) and isinstance(doc.get("signature"), str):
        assert doc["signature"] not in str(e.value)
    return e.value


# ---- sign ---------------------------------------------------------------------------------

def test_sign_fields_and_signature() -> None:
    doc = sign(CMD, "alice", KEY, now=T0, ttl=300, nonce="n-1")
    assert doc["operator"] == "alice"
    assert doc["issued"] == "2024-05-06T12:00:00.000Z"
    assert doc["expires"] == "2024-05-06T12:05:00.000Z"
    assert doc["nonce"] == "n-1"
    assert CMD.items() <= doc.items() and "signature" not in CMD
    body = {k: v for k, v in doc.items() if k != "signature"}
    text = json.dumps(body, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    assert canonical(doc) == text.encode()
    assert "négatif" in text
    assert doc["signature"] == hmac.new(KEY, text.encode(), hashlib.sha256).hexdigest()


def test_sign_defaults() -> None:
    a = sign(CMD, "alice", KEY)
    b = sign(CMD, "alice", KEY)
    assert len(a["nonce"]) == 32 and int(a["nonce"], 16) >= 0
    assert a["nonce"] != b["nonce"]
    issued = datetime.fromisoformat(a["issued"])
    assert abs((datetime.now(UTC) - issued).total_seconds()) < 5
    assert datetime.fromisoformat(a["expires"]) - issued == timedelta(seconds=300)


def test_sign_replaces_old_signature_fields() -> None:
    first = sign(CMD, "alice", KEY, now=T0)
    again = sign(first, "bob", OTHER_KEY, now=T0 + timedelta(seconds=1))
    assert again["operator"] == "bob"
    assert verifier().verify(again, now=T0) == "bob"


@pytest.mark.parametrize("kwargs, match", [
    ({"key": b"short"}, "at least 16 bytes"),
    ({"ttl": 0}, "ttl"),
    ({"ttl": float("nan")}, "ttl"),
    ({"operator": ""}, "operator"),
    ({"nonce": ""}, "nonce"),
    ({"now": datetime(2024, 5, 6, 12)}, "aware"),
])
def test_sign_refuses(kwargs: dict[str, Any], match: str) -> None:
    args: dict[str, Any] = {"operator": "alice", "key": KEY, "now": T0}
    args.update(kwargs)
    with pytest.raises(ValueError, match=match):
        sign(CMD, **args)


# ---- verify -------------------------------------------------------------------------------

def test_round_trip_through_json() -> None:
    doc = sign(CMD, "alice", KEY, now=T0)
    wire = json.loads(json.dumps(doc))
    assert verifier().verify(wire, now=T0 + timedelta(seconds=10)) == "alice"


def test_other_time_zone_accepted() -> None:
    doc = sign(CMD, "alice", KEY, now=T0.astimezone(datetime.now().astimezone().tzinfo))
    assert doc["issued"].endswith("Z")
    assert verifier().verify(doc, now=T0) == "alice"


def test_keys_from_a_lookup() -> None:
    s = parse_secrets(f'[operators.alice]\noperator_code = "00000001"\nkey = "{KEY.hex()}"\n'
                      '[operators.bob]\noperator_code = "00000002"\n')
    v = Verifier(s.find_key)
    assert v.verify(sign(CMD, "alice", KEY, now=T0), now=T0) == "alice"
    assert refused(v, sign(CMD, "bob", KEY, now=T0)).reason == "unknown_operator"


def test_unsigned() -> None:
    e = refused(verifier(), dict(CMD, operator="alice"))
    assert e.reason == "unsigned"
    assert str(e) == "unsigned: the command has no signature"


@pytest.mark.parametrize("field, value", [
    ("meter", "M0002"), ("command", "restore"), ("operator", "bob"),
    ("expires", "2024-05-06T13:00:00.000Z"), ("nonce", "other"), ("extra", 1),
])
def test_tampered_field(field: str, value: object) -> None:
    doc = sign(CMD, "alice", KEY, now=T0)
    doc[field] = value
    assert refused(verifier(), doc).reason == "bad_signature"


def test_removed_field() -> None:
    doc = sign(CMD, "alice", KEY, now=T0)
    del doc["meter"]
    assert refused(verifier(), doc).reason == "bad_signature"


def test_wrong_key() -> None:
    e = refused(verifier(), sign(CMD, "alice", OTHER_KEY, now=T0))
    assert e.reason == "bad_signature" and '"alice"' in e.message


def test_unknown_operator() -> None:
    e = refused(verifier(), sign(CMD, "mallory", KEY, now=T0))
    assert e.reason == "unknown_operator" and '"mallory"' in e.message


def test_unknown_operator_name_shortened_and_quoted() -> None:
    doc = sign(CMD, "alice", KEY, now=T0)
    doc["operator"] = "x\n" + "y" * 62
    e = refused(verifier(), doc)
    assert e.reason == "unknown_operator" and "\n" not in str(e)


def test_expired() -> None:
    doc = sign(CMD, "alice", KEY, now=T0, ttl=300)
    v = verifier(max_skew=60)
    # Accepted up to expiry plus the skew allowed, refused just after.
    assert v.verify(doc, now=T0 + timedelta(seconds=360)) == "alice"
    again = sign(CMD, "alice", KEY, now=T0, ttl=300)
    e = refused(v, again, now=T0 + timedelta(seconds=360, milliseconds=1))
    assert e.reason == "expired" and "2024-05-06T12:05:00.000Z" in e.message


def test_issued_in_the_future() -> None:
    v = verifier(max_skew=60)
    assert v.verify(sign(CMD, "alice", KEY, now=T0 + timedelta(seconds=60)), now=T0)
    e = refused(v, sign(CMD, "alice", KEY, now=T0 + timedelta(seconds=61)))
    assert e.reason == "not_yet_valid" and "check the clocks" in e.message


def test_ttl_too_long() -> None:
    v = verifier(max_ttl=3600)
    assert v.verify(sign(CMD, "alice", KEY, now=T0, ttl=3600), now=T0)
    e = refused(v, sign(CMD, "alice", KEY, now=T0, ttl=3601))
    assert e.reason == "ttl_too_long" and "3601" in e.message


def test_replay_rejected_until_it_expires() -> None:
    v = verifier(max_skew=60)
    doc = sign(CMD, "alice", KEY, now=T0, ttl=300)
    assert v.verify(doc, now=T0) == "alice"
    assert refused(v, doc).reason == "replayed"
    # Still refused as a replay at the last instant the document is valid ...
    assert refused(v, doc, now=T0 + timedelta(seconds=360)).reason == "replayed"
    # ... and after that it is refused as expired: there is no window where it passes.
    assert refused(v, doc, now=T0 + timedelta(seconds=360.001)).reason == "expired"


def test_same_command_new_nonce_accepted() -> None:
    v = verifier()
    assert v.verify(sign(CMD, "alice", KEY, now=T0), now=T0) == "alice"
    assert v.verify(sign(CMD, "alice", KEY, now=T0), now=T0) == "alice"


def test_refused_documents_do_not_use_nonces() -> None:
    v = verifier()
    doc = sign(CMD, "alice", KEY, now=T0, nonce="n-1")
    bad = dict(doc, meter="M0002")
    assert refused(v, bad).reason == "bad_signature"
    assert "n-1" not in v.seen
    assert v.verify(doc, now=T0) == "alice"


# ---- binding to a collector and a command kind ----------------------------------------------

def bound_refusal(doc: object, **bound: str) -> SignatureError:
    v = verifier()
    with pytest.raises(SignatureError) as e:
        v.verify(doc, now=T0, **bound)
    assert not v.seen  # a refused document does not use its nonce
    return e.value


def test_sign_sets_the_collector_and_the_command_kind() -> None:
    doc = sign(CMD, "alice", KEY, now=T0, collector="gw-A", command="relay")
    assert (doc["collector"], doc["command"]) == ("gw-A", "relay")
    assert verifier().verify(doc, now=T0, collector="gw-A", command="relay") == "alice"
    with pytest.raises(ValueError, match="collector"):
        sign(CMD, "alice", KEY, collector="")


def test_a_document_signed_for_another_collector_is_refused() -> None:
    doc = sign(CMD, "alice", KEY, now=T0, collector="gw-A", command="relay")
    e = bound_refusal(doc, collector="gw-B", command="relay")
    assert e.reason == "wrong_collector"
    assert '"gw-A"' in e.message and '"gw-B"' in e.message
    assert doc["signature"] not in str(e)


def test_a_document_signed_for_another_command_kind_is_refused() -> None:
    doc = sign(CMD, "alice", KEY, now=T0, collector="gw-A", command="relay")
    assert bound_refusal(doc, collector="gw-A", command="topup").reason == "wrong_command"


def test_a_document_naming_no_collector_or_command_is_refused_when_they_are_required() -> None:
    unbound = sign({"request_id": "r-1", "meter": "M0001"}, "alice", KEY, now=T0)
    e = bound_refusal(unbound, collector="gw-A", command="relay")
    assert e.reason == "wrong_collector" and "names no collector" in e.message
    e = bound_refusal(dict(unbound), command="relay")
    assert e.reason == "wrong_command" and "names no command" in e.message


def test_the_binding_is_covered_by_the_signature() -> None:
    doc = sign(CMD, "alice", KEY, now=T0, collector="gw-A", command="relay")
    moved = dict(doc, collector="gw-B")  # re-addressed on the way: no longer authentic
    assert bound_refusal(moved, collector="gw-B", command="relay").reason == "bad_signature"
    # Authentication comes first: a forgery is "bad_signature" whatever it names.
    forged = dict(sign(CMD, "alice", OTHER_KEY, now=T0, collector="gw-A", command="relay"))
    assert bound_refusal(forged, collector="gw-B", command="relay").reason == "bad_signature"


def resign(doc: dict[str, Any], key: bytes = KEY) -> dict[str, Any]:
    """``doc`` with a valid signature over whatever it holds now."""
    body = {k: v for k, v in doc.items() if k != "signature"}
    body["signature"] = hmac.new(key, canonical(body), hashlib.sha256).hexdigest()
    return body


@pytest.mark.parametrize("change", [
    {"signature": 12}, {"signature": "ab" * 31}, {"signature": "AB" * 32},
    {"operator": None}, {"operator": ""},
])
def test_malformed_before_signature(change: dict[str, Any]) -> None:
    doc = dict(sign(CMD, "alice", KEY, now=T0), **change)
    assert refused(verifier(), doc).reason == "malformed"


@pytest.mark.parametrize("change", [
    {"issued": "yesterday"}, {"issued": 1714996800}, {"issued": "2024-05-06T12:00:00"},
    {"expires": None}, {"nonce": ""}, {"nonce": 5}, {"nonce": "n" * 129},
    {"expires": "2024-05-06T12:00:00Z"},
])
def test_malformed_signed_fields(change: dict[str, Any]) -> None:
    doc = resign(dict(sign(CMD, "alice", KEY, now=T0), **change))
    e = refused(verifier(), doc)
    assert e.reason == "malformed", e


def test_malformed_not_json_or_not_an_object() -> None:
    assert refused(verifier(), ["signature"]).reason == "malformed"
    doc = sign(CMD, "alice", KEY, now=T0)
    doc["x"] = object()
    assert refused(verifier(), doc).reason == "malformed"


def test_verifier_needs_aware_now() -> None:
    with pytest.raises(ValueError, match="aware"):
        verifier().verify(sign(CMD, "alice", KEY, now=T0), now=datetime(2024, 5, 6, 12))


# ---- the replay cache ---------------------------------------------------------------------

def test_cache_bound_evicts_expired_first() -> None:
    cache = ReplayCache(max_entries=2)
    cache.add("a", until=100, now=0)
    cache.add("b", until=200, now=0)
    with pytest.raises(SignatureError) as e:
        cache.add("c", until=300, now=50)
    assert e.value.reason == "replay_cache_full"
    assert "a" in cache and "b" in cache and "c" not in cache
    cache.add("c", until=300, now=100.5)  # "a" is forgettable now: room for "c"
    assert "a" not in cache and len(cache) == 2


def test_cache_full_refuses_through_the_verifier() -> None:
    v = verifier(seen=ReplayCache(max_entries=1))
    assert v.verify(sign(CMD, "alice", KEY, now=T0), now=T0) == "alice"
    assert refused(v, sign(CMD, "alice", KEY, now=T0)).reason == "replay_cache_full"
    later = T0 + timedelta(seconds=361)
    assert v.verify(sign(CMD, "alice", KEY, now=later), now=later) == "alice"


def test_cache_keeps_nonce_until_expiry_plus_skew() -> None:
    v = verifier(max_skew=60)
    v.verify(sign(CMD, "alice", KEY, now=T0, ttl=300, nonce="n-1"), now=T0)
    assert v.seen.dump() == [("n-1", (T0 + timedelta(seconds=360)).timestamp())]


def test_cache_dump_and_load() -> None:
    cache = ReplayCache()
    cache.add("a", until=100, now=0)
    cache.add("b", until=50, now=0)
    saved = json.loads(json.dumps(cache.dump()))
    assert saved == [["b", 50], ["a", 100]]
    fresh = ReplayCache(max_entries=10)
    assert fresh.load((n, u) for n, u in saved) == 2
    with pytest.raises(SignatureError, match="replayed"):
        fresh.add("a", until=100, now=10)
    # Entries already forgettable are skipped; a small cache keeps the longest-lived.
    assert ReplayCache().load([("a", 100), ("b", 50)], now=60) == 1
    small = ReplayCache(max_entries=1)
    assert small.load([("b", 50), ("a", 100)]) == 1
    assert small.dump() == [("a", 100)]


def test_cache_survives_restart_through_the_verifier() -> None:
    doc = sign(CMD, "alice", KEY, now=T0)
    first = verifier()
    first.verify(doc, now=T0)
    second = verifier()
    second.seen.load(first.seen.dump(), now=T0.timestamp())
    assert refused(second, doc).reason == "replayed"


def test_cache_refuses_bad_size() -> None:
    with pytest.raises(ValueError):
        ReplayCache(max_entries=0)

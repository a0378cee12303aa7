"""A flood of refused API requests cannot fill the store: past 60 a minute per client
address they are counted and audited as one row (collector/api/auth.py DenialLimit)."""

from __future__ import annotations

import json
from pathlib import Path

from collector.api.auth import DenialLimit
from tests.test_api_server import audit_rows, call, start


class Clock:
    def __init__(self) -> None:
        self.t = 1000.0

    def __call__(self) -> float:
        return self.t


def test_refusals_past_the_limit_are_counted_and_reported_once() -> None:
    clock = Clock()
    limit = DenialLimit(per_minute=3, clock=clock)
    got = [limit.admit("10.0.0.9") for _ in range(5)]
    assert got == [(True, 0)] * 3 + [(False, 0)] * 2
    assert limit.admit("10.0.0.7") == (True, 0)  # another client has its own minute
    clock.t += 59.9
    assert limit.admit("10.0.0.9") == (False, 0)
    clock.t += 0.2
    assert limit.admit("10.0.0.9") == (True, 3)  # the three held back, reported once
    assert limit.admit("10.0.0.9") == (True, 0)


def test_the_client_table_stays_bounded() -> None:
    clock = Clock()
    limit = DenialLimit(per_minute=1, clock=clock)
    limit.MAX_CLIENTS = 100
    for i in range(100):
        limit.admit(f"h{i}")
    clock.t += 61
    limit.admit("late")
    assert len(limit._clients) == 1


async def test_a_flood_of_forged_posts_writes_at_most_the_limit(tmp_path: Path) -> None:
    async for run in start(tmp_path):
        statuses = []
        for i in range(75):
            status, _, _ = await call(run, "POST", "/api/v1/commands/trip",
                                      token=f"forged-{i}", body={"meters": ["M1"]})
            statuses.append(status)
        assert statuses == [401] * 75  # every one refused
        writer = run.daemon.writer
        assert writer is not None
        await writer.flush()
        rows = [r for r in audit_rows(run) if r["status"] == "denied"]
        details = [json.loads(r["detail"]) for r in rows]
        assert len(rows) == 60 and all(d["refusal"] == "bad_token" for d in details)
        assert not any("forged" in json.dumps(d) for d in details)  # no token text kept

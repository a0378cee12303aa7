"""The fleet's decisions with a fake broker connection: who executes a request, who
stays silent, what is published before anything is executed."""

from __future__ import annotations

import asyncio
import datetime as dt
import json
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import pytest

from collector.commands.remote import CommandServer, JsonDict, MemoryJournal
from collector.service.fleet import Fleet, FleetHooks, Terminal

T1 = Terminal("44030001", "tq-1")
T2 = Terminal("44030002", "tq-2")
NOW = dt.datetime(2026, 12, 5, 8, 0, tzinfo=dt.UTC)


@dataclass
class Msg:
    topic: str
    payload: bytes
    retain: bool = False


class FakeConn:
    def __init__(self) -> None:
        self.handlers: dict[str, Callable[[Any], None]] = {}
        self.published: list[tuple[str, bytes, bool]] = []
        self.fail_claims = False
        self.connected = True

    async def subscribe(self, topic_filter: str, handler: Callable[[Any], None],
                        qos: int = 1, *, timeout: float = 10.0) -> None:
        self.handlers[topic_filter] = handler

    async def publish(self, topic: str, payload: bytes | str, qos: int = 1,
                      retain: bool = False, timeout: float = 10.0) -> None:
        if self.fail_claims and "/claim/" in topic:
            raise ConnectionError("broker gone")
        self.published.append((topic, payload.encode() if isinstance(payload, str)
                               else payload, retain))

    async def wait_connected(self, timeout: float) -> None:
        return None

    def deliver(self, topic_filter: str, topic: str, payload: bytes) -> None:
        self.handlers[topic_filter](Msg(topic, payload))

    def replies(self) -> list[JsonDict]:
        return [json.loads(p) for t, p, _ in self.published if "/reply/" in t]


class World:
    """One instance (gw-A) of fleet north, with a fake daemon behind it."""

    def __init__(self) -> None:
        self.conn = FakeConn()
        self.sessions: dict[str, dt.datetime] = {}
        self.dropped: list[tuple[str, str]] = []
        self.executed: list[str] = []
        behind = {"C1": T1, "C2": T1, "D1": T2}
        hooks = FleetHooks(
            terminal_of=behind.get, session_since=self.sessions.get,
            drop=lambda key, why: self.dropped.append((key, why)),
            runs_bus=lambda m: m == "BUS1", known_meter=lambda m: m in behind or m == "BUS1")
        self.fleet = Fleet(self.conn, hooks, instance="gw-A", fleet="north", hold=0.3,
                           settle=0.05)

        async def execute(request: JsonDict) -> JsonDict:
            claimed = [t for t, _, r in self.conn.published
                       if t.endswith(f"/claim/{request['request_id']}") and r]
            assert claimed, "executed before its claim was published"
            self.executed.append(str(request["request_id"]))
            return {"readings": []}

        self.server = CommandServer(self.conn, "north", self.fleet.executor(execute),
                                    MemoryJournal(), commands=("read", "relay"))

    async def start(self) -> None:
        await self.fleet.start(self.server)

    def alive(self, *instances: str) -> None:
        for i in instances:
            self.conn.deliver("amic/north/instances/+", f"amic/north/instances/{i}", b"online")

    def owner(self, key: str, instance: str, since: dt.datetime) -> None:
        doc = {"instance": instance, "since": since.isoformat(), "concentrator": "x"}
        self.conn.deliver("amic/terminals/+", f"amic/terminals/{key}",
                          json.dumps(doc).encode())

    def request(self, rid: str, **fields: object) -> None:
        doc = {"request_id": rid, "command": "read", "quantities": ["voltage_a"], **fields}
        self.conn.deliver("amic/north/cmd/#", "amic/north/cmd/read", json.dumps(doc).encode())

    async def settle(self, seconds: float = 0.1) -> None:
        await asyncio.sleep(seconds)
        await self.server.idle()


@pytest.fixture
async def world() -> World:
    w = World()
    await w.start()
    return w


async def test_the_instance_holding_the_session_claims_then_executes(world: World) -> None:
    world.sessions[T1.key] = NOW
    world.fleet.online(T1.key, "tq-1", NOW)
    world.request("r1", meter="C1")
    await world.settle()
    assert world.executed == ["r1"]
    (reply,) = world.conn.replies()
    assert reply["status"] == "ok" and reply["collector"] == "gw-A"
    owner = [json.loads(p) for t, p, r in world.conn.published
             if t == "amic/terminals/44030001" and r]
    assert owner[-1]["instance"] == "gw-A" and owner[-1]["concentrator"] == "tq-1"


async def test_a_request_claimed_elsewhere_is_left_alone_repeats_included(
        world: World) -> None:
    world.sessions[T1.key] = NOW  # even though we hold the terminal now
    world.conn.deliver("amic/north/claim/+", "amic/north/claim/r1",
                       json.dumps({"instance": "gw-B", "ts": 1.0}).encode())
    world.request("r1", meter="C1")
    world.request("r1", meter="C1")
    await world.settle()
    assert world.executed == [] and world.conn.replies() == []
    assert world.fleet.stats.elsewhere == 2


async def test_a_live_owner_elsewhere_answers_a_dead_ones_does_not(world: World) -> None:
    world.alive("gw-B")
    world.owner(T1.key, "gw-B", NOW)
    world.request("r1", meter="C1")
    await world.settle(0.5)  # past the hold: gw-B holds it, so gw-B answers
    assert world.executed == [] and world.conn.replies() == []
    # gw-B vanished (its will cleared its presence): its announcement counts for nothing
    world.conn.deliver("amic/north/instances/+", "amic/north/instances/gw-B", b"")
    assert world.fleet.owner(T1.key) is None and not world.fleet.elsewhere(T1.key)
    world.request("r2", meter="C1")
    await world.settle(0.5)
    assert world.executed == []  # nothing carried out: nobody holds the terminal
    (reply,) = world.conn.replies()
    assert reply["request_id"] == "r2" and reply["status"] == "error"
    assert "tq-1 (44030001) is not logged in to any collector of fleet north" \
        in reply["error"]


async def test_a_held_request_is_taken_over_when_its_terminal_logs_in_here(
        world: World) -> None:
    world.request("r1", meter="C2")
    await asyncio.sleep(0.05)
    assert world.executed == []
    world.sessions[T1.key] = NOW
    world.fleet.online(T1.key, "tq-1", NOW)
    await world.settle(0.15)
    assert world.executed == ["r1"] and world.fleet.stats.taken_over == 1
    await world.settle(0.4)  # its hold runs out: answered once, not refused after
    assert [r["status"] for r in world.conn.replies()] == ["ok"]


async def test_a_newer_login_elsewhere_drops_our_stale_session(world: World) -> None:
    world.alive("gw-B")
    world.sessions[T1.key] = NOW
    world.fleet.online(T1.key, "tq-1", NOW)
    world.owner(T1.key, "gw-B", NOW - dt.timedelta(seconds=5))  # older: ours stands
    await asyncio.sleep(0.01)
    assert world.dropped == []
    assert [json.loads(p)["instance"] for t, p, _ in world.conn.published
            if t.startswith("amic/terminals/") and p][-1] == "gw-A"
    world.owner(T1.key, "gw-B", NOW + dt.timedelta(seconds=5))  # newer: it moved
    assert world.dropped == [(T1.key, f"logged in to collector gw-B at "
                                      f"{(NOW + dt.timedelta(seconds=5)).isoformat()}")]
    del world.sessions[T1.key]
    world.fleet.offline(T1.key)  # our session ends: gw-B's announcement is not cleared
    await asyncio.sleep(0.01)
    assert not [t for t, p, _ in world.conn.published if t == "amic/terminals/44030001"
                and p == b""]


async def test_our_own_announcement_left_by_an_earlier_run_is_cleared(world: World) -> None:
    world.owner(T1.key, "gw-A", NOW)  # retained from before a kill -9; no session now
    await asyncio.sleep(0.01)
    assert ("amic/terminals/44030001", b"", True) in world.conn.published
    assert world.fleet.owner(T1.key) is None


async def test_a_request_without_its_claim_published_is_not_executed(world: World) -> None:
    world.sessions[T1.key] = NOW
    world.conn.fail_claims = True
    world.request("r1", meter="C1")
    await world.settle()
    assert world.executed == [] and world.conn.replies() == []


async def test_area_requests_and_meters_of_two_concentrators_are_refused(
        world: World) -> None:
    world.sessions[T1.key] = world.sessions[T2.key] = NOW
    doc = {"request_id": "r1", "command": "read", "area": "TQ-1",
           "quantities": ["voltage_a"]}
    world.conn.deliver("amic/north/cmd/#", "amic/north/cmd/read", json.dumps(doc).encode())
    world.conn.deliver("amic/north/cmd/#", "amic/north/cmd/relay", json.dumps(
        {"request_id": "r2", "command": "relay", "meters": ["C1", "D1"]}).encode())
    await world.settle()
    assert world.executed == []
    errors = {r["request_id"]: r["error"] for r in world.conn.replies()}
    assert set(errors) == {"r1", "r2"}
    assert "behind one concentrator" in errors["r2"]


async def test_a_meter_on_a_bus_runs_where_its_bus_runs(world: World) -> None:
    world.request("r1", meter="BUS1")
    await world.settle()
    assert world.executed == ["r1"]

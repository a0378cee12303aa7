"""The HTTP API against a real server over TCP: the in-process daemon with its API on a free
port, simulated DL/T645 meters behind a TCP bus.

Each role's allowed and denied requests (401 without or with a bad token, 403 for a role,
denials audited), personal data masked by role, readings pages and CSV, a trip confirmed,
audited and not repeated for the same Idempotency-Key, a protected meter refused for an
operator and tripped by an admin with force, the ledger import (applied, or refused with
amic ledger check's lines), /openapi.json, TLS and mTLS, and no token in any log.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import json
import logging
import ssl
import urllib.error
import urllib.request
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner
from conftest import free_port, until
from mosquitto import make_certificates

from collector.cli import main
from collector.cli.apitoken import new_token
from collector.config import load_settings
from collector.config.secrets import token_hash
from collector.service.daemon import Daemon
from collector.service.notify import Notifier
from collector.store.records import Reading
from simulators.bus import BusServer
from simulators.dlt645 import MeterModel, make_meters

CONFIG = """
[collector]
id = "api-gw"
data_dir = "data"
commit_interval = "100ms"

[commands]
secrets_file = "secrets.toml"
min_interval = "200ms"
verify_timeout = "3s"
poll_interval = "100ms"

[api]
listen = "127.0.0.1:{api_port}"
{tls}
[[bus]]
name = "conc-1"
type = "tcp"
host = "127.0.0.1"
port = {port}
td_ms = 300

[meters]
ledger = "ledger.csv"

[schedule.poll]
interval = "1h"
quantities = ["voltage_a"]
{extra}
"""
LEDGER = """meter_id,address,bus,area,customer,phone,role
M1,000000000001,conc-1,TQ-1,张三,13812345678,customer
M2,000000000002,conc-1,TQ-1,李四,13987654321,customer
M3,000000000003,conc-1,TQ-1,,,area_master
"""
TOKENS = {role: new_token() for role in ("viewer", "operator", "admin")}
SECRETS = """
[default]
password = "02000000"

[operators.alice]
operator_code = "0000A11C"
""" + "".join(f'\n[api_tokens.{role}-1]\nhash = "{token_hash(t)}"\nrole = "{role}"\n'
              f'operator = "alice"\n' for role, t in TOKENS.items())


@dataclass
class Running:
    daemon: Daemon
    url: str
    tmp: Path
    models: dict[str, MeterModel]
    context: ssl.SSLContext | None = None


def http(method: str, url: str, *, token: str | None = None, body: Any = None,
         raw: bytes | None = None, headers: dict[str, str] | None = None,
         context: ssl.SSLContext | None = None) -> tuple[int, dict[str, str], bytes]:
    data = raw if raw is not None else (json.dumps(body).encode() if body is not None
                                        else None)
    req = urllib.request.Request(url, data=data, method=method)
    if body is not None:
        req.add_header("Content-Type", "application/json")
    if raw is not None:
        req.add_header("Content-Type", "text/csv")
    if token is not None:
        req.add_header("Authorization", f"Bearer {token}")
    for k, v in (headers or {}).items():
        req.add_header(k, v)
    try:
        with urllib.request.urlopen(req, timeout=30, context=context) as r:
            return r.status, dict(r.headers), r.read()
    except urllib.error.HTTPError as e:
        return e.code, dict(e.headers), e.read()


async def call(run: Running, method: str, path: str, role: str | None = None,
               **kw: Any) -> tuple[int, dict[str, str], Any]:
    token = kw.pop("token", TOKENS[role] if role else None)
    status, headers, data = await asyncio.to_thread(
        http, method, run.url + path, token=token, context=run.context, **kw)
    ctype = headers.get("content-type", "")
    return status, headers, json.loads(data) if "json" in ctype else data.decode()


def audit_rows(run: Running) -> list[dict[str, Any]]:
    store = run.daemon.store
    assert store is not None
    return [dict(r) for r in store.audit()]


async def start(tmp: Path, tls: str = "", extra: str = "",
                ledger: str = LEDGER) -> AsyncIterator[Running]:
    meters = make_meters([f"{i:012d}" for i in range(1, 4)])
    (tmp / "secrets.toml").write_text(SECRETS)
    (tmp / "secrets.toml").chmod(0o600)
    (tmp / "ledger.csv").write_text(ledger, encoding="utf-8")
    async with BusServer(meters, baud=19200, td=0.005) as server:
        cfg = tmp / "amic.toml"
        cfg.write_text(CONFIG.format(port=server.port, tls=tls, api_port=free_port(),
                                     extra=extra))
        daemon = Daemon(load_settings(cfg), notifier=Notifier.from_env({}), align=False)
        task = asyncio.create_task(daemon.run())
        try:
            await until(lambda: daemon.api is not None and daemon.poller is not None
                        and "poll" in daemon.poller.last_cycle)
            assert daemon.api is not None
            scheme = "https" if tls else "http"
            yield Running(daemon, f"{scheme}://127.0.0.1:{daemon.api.port}", tmp,
                          {f"M{i}": m.model for i, m in enumerate(meters, 1)})
        finally:
            daemon.stop_requested.set()
            assert await asyncio.wait_for(task, 15) == 0


@pytest.fixture
async def api(tmp_path: Path) -> AsyncIterator[Running]:
    async for run in start(tmp_path):
        yield run


def no_token_anywhere(run: Running, text: str) -> None:
    for t in TOKENS.values():
        assert t not in text
        for f in (run.tmp / "data").glob("amic.db*"):
            assert t.encode() not in f.read_bytes()


async def test_roles_masking_reads_and_openapi(api: Running,
                                               caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)
    status, _, doc = await call(api, "GET", "/openapi.json")
    assert status == 200
    assert {"/api/v1/meters", "/api/v1/meters/{meter_id}", "/api/v1/readings",
            "/api/v1/meters/{meter_id}/curve", "/api/v1/events", "/api/v1/alarms",
            "/api/v1/reports/success", "/api/v1/reports/lineloss", "/api/v1/export",
            "/api/v1/cycles", "/api/v1/health", "/api/v1/ledger",
            "/api/v1/commands/{action}", "/api/v1/commands/topup"} <= set(doc["paths"])

    # 401: no token, a token of another scheme, an unknown token
    for token in (None, "", "amic_not-a-token"):
        status, headers, _ = await call(api, "GET", "/api/v1/meters", token=token)
        assert status == 401 and headers["www-authenticate"] == "Bearer"
    status, _, _ = await call(api, "POST", "/api/v1/commands/trip", token="amic_forged",
                              body={"meters": ["M1"], "reason": "x"})
    assert status == 401

    # masked for viewer and operator, in full for admin
    for role, customer, phone in (("viewer", "张*", "1381234****"),
                                  ("operator", "张*", "1381234****"),
                                  ("admin", "张三", "13812345678")):
        status, _, meters = await call(api, "GET", "/api/v1/meters", role)
        assert status == 200
        m1 = next(m for m in meters if m["meter_id"] == "M1")
        assert (m1["customer"], m1["phone"]) == (customer, phone), role
        status, _, one = await call(api, "GET", "/api/v1/meters/M1", role)
        assert status == 200 and (one["customer"], one["phone"]) == (customer, phone)
    assert 150 < one["last_reading"]["voltage_a"] < 300 and one["last_read"] is not None
    m3 = next(m for m in meters if m["meter_id"] == "M3")
    assert "area master" in m3["protected"]

    # 403 for a role, audited with the reason
    status, _, doc = await call(api, "POST", "/api/v1/commands/trip", "viewer",
                                body={"meters": ["M1"], "reason": "arrears"})
    assert status == 403 and "role viewer" in doc["detail"]
    status, _, _ = await call(api, "POST", "/api/v1/ledger", "operator", raw=LEDGER.encode())
    assert status == 403
    assert not api.models["M1"].relay_open
    await api.daemon.writer.flush()  # type: ignore[union-attr]
    denied = [r for r in audit_rows(api) if r["status"] == "denied"]
    assert [(r["kind"], r["operator"], json.loads(r["detail"])["http"]) for r in denied] == [
        ("trip", "", 401), ("trip", "viewer-1", 403),
        ("api POST /api/v1/ledger", "operator-1", 403)]
    assert [json.loads(r["detail"])["refusal"] for r in denied] == [
        "bad_token", "role", "role"]
    r = await asyncio.to_thread(CliRunner().invoke, main,
                                ["audit", "--config", str(api.tmp / "amic.toml")])
    assert r.exit_code == 0 and r.output.count("denied") == 3
    assert "unknown token" in r.output
    assert "role viewer may not do this (needs operator)" in r.output

    # readings: pages by cursor, newest first, and CSV
    t0 = dt.datetime(2026, 1, 1, tzinfo=dt.UTC)
    api.daemon.writer.put_many([  # type: ignore[union-attr]
        Reading("M2", "energy_total", 100.0 + i, "kWh", t0 + dt.timedelta(minutes=i))
        for i in range(25)])
    await api.daemon.writer.flush()  # type: ignore[union-attr]
    q = "/api/v1/readings?meter=M2&quantity=energy_total&limit=10"
    seen: list[dict[str, Any]] = []
    cursor = ""
    pages = 0
    while True:
        status, _, page = await call(api, "GET", q + cursor, "viewer")
        assert status == 200
        seen += page["readings"]
        pages += 1
        if page["next"] is None:
            break
        cursor = f"&cursor={page['next']}"
    assert pages == 3 and len(seen) == 25
    assert [r["value"] for r in seen] == [124.0 - i for i in range(25)]
    assert seen[0]["ts"] == (t0 + dt.timedelta(minutes=24)).isoformat()
    status, headers, text = await call(api, "GET", q + "&format=csv", "viewer")
    lines = text.splitlines()
    assert status == 200 and headers["content-type"].startswith("text/csv")
    assert lines[0] == "id,meter,area,quantity,value,unit,ts,meter_ts,quality"
    assert len(lines) == 11 and lines[1].split(",")[1:6] == [
        "M2", "TQ-1", "energy_total", "124.0", "kWh"]
    status, _, page2 = await call(api, "GET", q + f"&cursor={headers['x-next-cursor']}",
                                  "viewer")
    assert [r["value"] for r in page2["readings"]] == [114.0 - i for i in range(10)]
    status, _, _ = await call(api, "GET", q + "&cursor=nonsense", "viewer")
    assert status == 422

    # the other reads answer for a viewer
    for path in ("/api/v1/events", "/api/v1/alarms", "/api/v1/cycles", "/api/v1/health",
                 "/api/v1/reports/success?day=2026-01-01",
                 "/api/v1/reports/lineloss?day=2026-01-01",
                 "/api/v1/meters/M1/curve?day=2026-01-01"):
        status, _, doc = await call(api, "GET", path, "viewer")
        assert status == 200, path
    status, _, cycles = await call(api, "GET", "/api/v1/cycles", "viewer")
    assert cycles["cycles"][0]["schedule"] == "poll" and cycles["cycles"][0]["planned"] == 3
    status, _, health = await call(api, "GET", "/api/v1/health", "viewer")
    assert health["buses"]["conc-1"]["alive"] is True
    status, _, text = await call(api, "GET", "/api/v1/export?day=2026-01-01", "viewer")
    assert status == 200 and text.splitlines()[0].startswith("day,meter_id,address")
    assert len(text.splitlines()) == 4
    no_token_anywhere(api, caplog.text)


async def test_trip_idempotent_audited_and_protected(api: Running,
                                                     caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)
    body = {"meters": ["M1"], "reason": "arrears, ticket 4711"}
    key = {"Idempotency-Key": "trip-4711"}
    status, headers, first = await call(api, "POST", "/api/v1/commands/trip", "operator",
                                        body=body, headers=key)
    assert status == 200, first
    assert headers["idempotent-replay"] == "false"
    assert first["results"][0]["status"] == "confirmed" and first["exit"] == 0
    assert api.models["M1"].relay_open
    api.models["M1"].close()  # the customer's side: a second trip would open it again
    status, headers, again = await call(api, "POST", "/api/v1/commands/trip", "operator",
                                        body=body, headers=key)
    assert status == 200 and again == first and headers["idempotent-replay"] == "true"
    assert not api.models["M1"].relay_open  # not carried out twice
    status, _, doc = await call(api, "POST", "/api/v1/commands/restore", "operator",
                                body=body, headers=key)
    assert status == 409  # the key names another request

    # a protected meter (the area master): refused for an operator, audited ...
    status, _, doc = await call(api, "POST", "/api/v1/commands/trip", "operator",
                                body={"meters": ["M3"], "reason": "works"})
    assert status == 403 and "protected" in doc["detail"]
    status, _, doc = await call(api, "POST", "/api/v1/commands/trip", "operator",
                                body={"meters": ["M2"], "reason": "works", "force": True})
    assert status == 403 and "admin" in doc["detail"]
    assert not api.models["M3"].relay_open and not api.models["M2"].relay_open
    # ... tripped by an admin with force and a reason
    status, _, doc = await call(api, "POST", "/api/v1/commands/trip", "admin",
                                body={"meters": ["M3"], "reason": "transformer work, 7",
                                      "force": True})
    assert status == 200 and doc["results"][0]["status"] == "confirmed"
    assert api.models["M3"].relay_open
    await api.daemon.writer.flush()  # type: ignore[union-attr]
    rows = audit_rows(api)
    trips = [(r["meter"], r["status"], r["operator"]) for r in rows if r["kind"] == "trip"
             and r["status"] != "sent"]
    assert trips == [("M1", "confirmed", "alice"), ("M3", "denied", "operator-1"),
                     ("M2", "denied", "operator-1"), ("M3", "confirmed", "alice")]
    assert json.loads(rows[-1]["detail"])["forced"]["protected"] == \
        "area master meter of area TQ-1"
    store = api.daemon.store
    assert store is not None
    sent = store.thread_connection().execute(
        "SELECT count(*) FROM command_log WHERE command_id = 'trip-4711/M1' AND status = "
        "'sent'").fetchone()[0]
    assert sent == 1
    status, _, doc = await call(api, "POST", "/api/v1/commands/topup", "operator",
                                body={"meter": "M1", "amount": "50", "ref": "r-1"})
    assert status == 422 and "not a prepaid meter" in doc["error"]
    no_token_anywhere(api, caplog.text)


async def test_ledger_import_applied_or_refused_like_ledger_check(api: Running) -> None:
    ledger = api.tmp / "ledger.csv"
    good = LEDGER + "M4,000000000004,conc-1,TQ-2,王五,,customer\n"
    status, _, doc = await call(api, "GET", "/api/v1/meters/M4", "viewer")
    assert status == 404
    status, _, doc = await call(api, "POST", "/api/v1/ledger", "admin", raw=good.encode())
    assert status == 200 and doc["status"] == "applied" and doc["meters"] == 4
    assert [m.meter_id for m in api.daemon.settings.meters] == ["M1", "M2", "M3", "M4"]
    status, _, doc = await call(api, "GET", "/api/v1/meters/M4", "viewer")
    assert status == 200 and doc["customer"] == "王*"

    bad = good + "M5,000000000004,conc-1,,,,customer\nM6,7,conc-9,,,,customer\n"
    status, _, doc = await call(api, "POST", "/api/v1/ledger", "admin", raw=bad.encode())
    assert status == 422 and doc["status"] == "refused"
    assert ledger.read_text(encoding="utf-8") == good  # kept
    assert len(api.daemon.settings.meters) == 4
    other = api.tmp / "bad.csv"
    other.write_text(bad, encoding="utf-8")
    r = await asyncio.to_thread(CliRunner().invoke, main, [
        "ledger", "check", str(other), "--config", str(api.tmp / "amic.toml")])
    assert r.exit_code == 1
    expected = [line.replace(str(other), str(ledger)) for line in r.output.splitlines()]
    assert doc["problems"] == expected[:-1] and doc["summary"] == expected[-1]
    assert any(":6: duplicate address" in p for p in doc["problems"])
    assert any(":7: unknown bus" in p for p in doc["problems"])
    status, _, _ = await call(api, "POST", "/api/v1/ledger", "admin", raw=b"\xff\xfe")
    assert status == 422


async def test_tls_and_client_certificates(tmp_path: Path) -> None:
    certs = make_certificates(tmp_path)
    tls = (f'cert_file = "{certs["server.crt"]}"\nkey_file = "{certs["server.key"]}"\n'
           f'client_ca_file = "{certs["ca.crt"]}"\n')
    async for run in start(tmp_path, tls):
        client = ssl.create_default_context(cafile=str(certs["ca.crt"]))
        client.load_cert_chain(certs["client.crt"], certs["client.key"])
        run.context = client
        status, _, meters = await call(run, "GET", "/api/v1/meters", "viewer")
        assert status == 200 and len(meters) == 3
        # no client certificate: the handshake fails
        run.context = ssl.create_default_context(cafile=str(certs["ca.crt"]))
        with pytest.raises((ssl.SSLError, urllib.error.URLError, ConnectionError)):
            await call(run, "GET", "/api/v1/meters", "viewer")
        # plain HTTP on the TLS port: no answer
        with pytest.raises((urllib.error.URLError, ConnectionError, OSError)):
            await asyncio.to_thread(http, "GET", run.url.replace("https", "http")
                                    + "/api/v1/meters", token=TOKENS["viewer"])


PREPAID = """
[prepaid]
warn1 = 20
warn2 = 5
computed = ["M2"]
price = 0.5
opening_balance = 10
"""


async def test_topup_credited_once_per_request_id(tmp_path: Path) -> None:
    ledger = LEDGER.replace("role\n", "role,prepaid\n").replace(
        "customer\nM2", "customer,no\nM2").replace(
        "13987654321,customer\n", "13987654321,customer,yes\n").replace(
        "area_master\n", "area_master,no\n")
    async for run in start(tmp_path, extra=PREPAID, ledger=ledger):
        body = {"meter": "M2", "amount": "50.00", "ref": "receipt 88"}
        key = {"Idempotency-Key": "pay-88"}
        status, _, doc = await call(run, "POST", "/api/v1/commands/topup", "viewer",
                                    body=body, headers=key)
        assert status == 403
        status, headers, first = await call(run, "POST", "/api/v1/commands/topup",
                                            "operator", body=body, headers=key)
        assert status == 200, first
        assert first["results"][0]["balance"] == pytest.approx(60.0, abs=0.5)
        status, headers, again = await call(run, "POST", "/api/v1/commands/topup",
                                            "operator", body=body, headers=key)
        assert status == 200 and again == first and headers["idempotent-replay"] == "true"
        status, _, meter = await call(run, "GET", "/api/v1/meters/M2", "viewer")
        assert meter["balance"] == pytest.approx(60.0, abs=0.5)  # credited once
        status, _, doc = await call(run, "POST", "/api/v1/commands/topup", "operator",
                                    body={**body, "amount": "-5"})
        assert status == 422 and "positive amount" in doc["detail"]
        await run.daemon.writer.flush()  # type: ignore[union-attr]
        topups = [r for r in audit_rows(run) if r["kind"] == "topup"]
        assert [(r["meter"], r["status"], r["operator"]) for r in topups] == [
            ("M2", "recorded", "alice")]

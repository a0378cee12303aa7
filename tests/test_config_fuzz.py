"""Property: any TOML document the loader is given loads or raises ConfigError, quickly.

Documents are drawn from a grammar of the real tables and keys, each value either a
sensible one for the key or a hostile one: NUL bytes, names over 255 characters, huge
numbers, wrong types, ``/dev/zero``, a FIFO, a directory.  No other exception (no
traceback in ``amic config check`` / ``amic run``) and no hang: every example must
finish within the hypothesis deadline, and an alarm turns a blocked read into a failure
instead of a stuck test run.
"""

from __future__ import annotations

import datetime as dt
import math
import os
import signal
from collections.abc import Iterator
from pathlib import Path
from types import FrameType

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from collector import config as cfg
from collector.config import ConfigError, load_settings
from collector.config.settings import Settings

# Values a hostile (or careless) file may hold for any key.
HOSTILE_TEXT = ["", " ", "x\x00y", "\x00", "a" * 300, "d/" + "b" * 256, "/" + "c/" * 2100,
                "/dev/zero", "/dev/null", "FIFO", "DIR", "../../../../etc/passwd", "é中\u202e",
                "$SYS", "#", "mqtt://", "http://", "1e308", "NaN", "-1", "15x", "\t\n"]
HOSTILE_NUMBERS: list[object] = [0, -1, 2**63 - 1, -(2**63), 10**30, 1e308, -1e308, math.inf,
                                 -math.inf, math.nan, 0.5, 1.5, True, False]
HOSTILE_OTHER: list[object] = [[], [1, "a"], ["x\x00"], {"a": 1}, {}, dt.date(2026, 1, 1),
                               dt.time(6, 0), dt.datetime(2026, 1, 1, 0, 0)]

SENSIBLE: dict[str, list[object]] = {
    "id": ["gw-1"], "data_dir": ["data", "DIR"], "retention_days": [90],
    "metrics_listen": ["127.0.0.1:0", "[::1]:9108", "x:99999"], "commit_interval": ["1s"],
    "commit_rows": [2000], "max_store_mb": [64], "min_free_mb": [100],
    "name": ["line-1", "gw1"], "type": ["serial", "tcp", "mqtt", "usb"],
    "host": ["127.0.0.1"], "port": [502, 70000], "line_baud": [2400], "device": ["/dev/ttyS1"],
    "baud": [2400, 2401], "parity": ["E", "none"], "bytesize": [8], "stopbits": [1, 1.5],
    "td_ms": [500], "tb_ms": [500], "preamble": [4], "modbus": ["rtu", "tcp"],
    "gateway": ["gw1"], "meter_id": ["M1", "M2"], "address": ["1", 7, "999999999999"],
    "bus": ["line-1"], "protocol": ["dlt645-2007", "dlt645-1997", "modbus"],
    "station": ["S1"], "feeder": ["F1"], "area": ["A1"], "box": ["B1"],
    "customer": ["C1", 12345], "prepaid": [True, "yes"], "role": ["customer", "area_master"],
    "profile": ["acrel-ddsy1352", "/dev/zero", "FIFO", "DIR", "nope"],
    "ledger": ["meters.csv", "/dev/zero", "FIFO", "DIR", "missing.csv"],
    "interval": ["15m", "1s", "0s"], "quantities": [["energy"], ["voltage_a"], ["pwer"]],
    "meters": [["*"], ["area:A1"], ["bus:nope"]], "jitter": ["1s"], "retries": [1],
    "backoff_max": ["1h"],
    "url": ["mqtt://127.0.0.1:1883", "http://127.0.0.1:8428"], "client_id": ["amic"],
    "username": ["amic"], "password_file": ["pw", "/dev/zero", "FIFO", "DIR"],
    "ca_file": ["pw", "FIFO"], "cert_file": ["pw"], "key_file": ["pw"], "commands": [True],
    "prefix": ["amic-gw", "$SYS", "a/#"], "reports": [True],
    "org": ["o"], "bucket": ["amic"], "token_file": ["pw", "/dev/zero", "FIFO"],
    "batch": [5000], "precision": ["ms"], "gzip": [True], "gzip_level": [6],
    "worker_backlog": [10],
    "secrets_file": ["secrets.toml", "/dev/zero", "FIFO", "DIR"], "min_interval": ["2s"],
    "expiry": ["5m"], "verify_timeout": ["15s"], "poll_interval": ["0.5s"],
    "direct_close": [False], "signed": [True],
    "warn1": [10], "warn2": [5], "overdraft_limit": [0], "grace": ["10m"],
    "no_trip_windows": [["22:00-06:00"], ["nonsense"]], "holidays": [["2026-10-01"]],
    "tz": ["Asia/Shanghai", "Mars/Base"], "retry_interval": ["5m"],
    "protected": [["M1"]], "computed": [["M2"]], "price": [0.56, "0.56"],
    "prices": [{"t1": 0.5}, {"t9": 1}], "opening_balance": [0],
    "nominal_voltage": [220], "voltage_high_pct": [10], "voltage_low_pct": [10],
    "jump_kwh_per_hour": [50], "zero_use_days": [3], "imbalance_pct": [30],
    "imbalance_min_current": [1], "low_pf": [0.5], "rules": [["voltage_high"], ["x"]],
    "comm_loss_after": [2], "publish": [True],
    "report_at": ["06:00", dt.time(6, 0)], "timesync": [True], "timesync_at": ["02:00"],
    "backfill_days": [7], "backfill_at": ["01:30"], "audit_fraction": [0.02, 2],
    "audit_window": ["09:00-17:00", "17:00-09:00"],
}

TABLES: dict[str, tuple[str, ...]] = {
    "collector": cfg.COLLECTOR_KEYS,
    "mqtt": cfg.MQTT_KEYS,
    "timeseries": cfg.TIMESERIES_KEYS,
    "commands": cfg.COMMANDS_KEYS,
    "prepaid": cfg.PREPAID_KEYS,
    "alarms": cfg.ALARM_KEYS,
    "daily": cfg.DAILY_KEYS,
    "meters": cfg.METERS_KEYS,
}
ARRAYS: dict[str, tuple[str, ...]] = {
    "bus": cfg.BUS_COMMON_KEYS + cfg.BUS_TCP_KEYS + cfg.BUS_SERIAL_KEYS + cfg.BUS_MQTT_KEYS,
    "meter": cfg.LEDGER_COLUMNS,
    "gateway": cfg.GATEWAY_KEYS,
}


PATH_KEYS = ("data_dir", "device", "profile", "ledger", "password_file", "ca_file",
             "cert_file", "key_file", "token_file", "secrets_file")
HOSTILE_PATHS = ["x\x00y", "a" * 300, "d/" + "b" * 256, "/dev/zero", "FIFO", "DIR"]


def value_for(key: str) -> st.SearchStrategy[object]:
    sensible = SENSIBLE.get(key, [])
    hostile = st.sampled_from(HOSTILE_TEXT + HOSTILE_NUMBERS + HOSTILE_OTHER)
    if key in PATH_KEYS:  # where a hang or a crash would come from: mostly hostile
        return st.one_of(st.sampled_from(HOSTILE_PATHS), st.sampled_from(sensible), hostile)
    if not sensible:
        return hostile
    return st.one_of(st.sampled_from(sensible), st.sampled_from(sensible), hostile,
                     st.text(max_size=8))


def table_of(keys: tuple[str, ...], size: int = 5) -> st.SearchStrategy[dict[str, object]]:
    key = st.one_of(st.sampled_from(keys), st.sampled_from(keys),
                    st.sampled_from(["bogus", "password", "token", "k" * 300]))
    return st.lists(key.flatmap(lambda k: st.tuples(st.just(k), value_for(k))),
                    max_size=size).map(dict)


OPTIONAL = [*(t for t in TABLES if t != "collector"), "gateway"]


@st.composite
def documents(draw: st.DrawFn) -> dict[str, object]:
    doc: dict[str, object] = {}
    if draw(st.integers(0, 9)) > 0:
        doc["collector"] = draw(table_of(TABLES["collector"]))
    for name in ("bus", "meter"):
        if draw(st.integers(0, 3)) > 0:
            doc[name] = draw(st.lists(table_of(ARRAYS[name]), min_size=1, max_size=2))
    if draw(st.integers(0, 4)) > 0:
        names = draw(st.lists(st.sampled_from(["fast", "slow", "x" * 70, "bad name"]),
                              min_size=1, max_size=2, unique=True))
        doc["schedule"] = {n: draw(table_of(cfg.SCHEDULE_KEYS, 4)) for n in names}
    for name in OPTIONAL:
        if draw(st.integers(0, 3)) == 0:
            doc[name] = [draw(table_of(ARRAYS[name]))] if name in ARRAYS \
                else draw(table_of(TABLES[name]))
    if draw(st.integers(0, 9)) == 0:  # a top-level key of the wrong shape
        doc[draw(st.sampled_from(["collector", "bus", "schedule", "meter", "zzz"]))] = \
            draw(st.sampled_from(HOSTILE_TEXT + HOSTILE_NUMBERS))
    return doc


# ---- TOML writing (enough for the values above) -------------------------------------------

def _key(k: str) -> str:
    return k if k and all(c.isalnum() or c in "_-" for c in k) and k.isascii() else _str(k)


def _str(s: str) -> str:
    out = []
    for c in s:
        if c in '"\\':
            out.append("\\" + c)
        elif ord(c) < 0x20 or ord(c) == 0x7F:
            out.append(f"\\u{ord(c):04x}")
        else:
            out.append(c)
    return '"' + "".join(out) + '"'


def _value(v: object) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, int):
        return str(v)
    if isinstance(v, float):
        if math.isnan(v):
            return "nan"
        if math.isinf(v):
            return "inf" if v > 0 else "-inf"
        return repr(v)
    if isinstance(v, str):
        return _str(v)
    if isinstance(v, dt.datetime | dt.date | dt.time):
        return v.isoformat()
    if isinstance(v, list):
        return "[" + ", ".join(_value(x) for x in v) + "]"
    if isinstance(v, dict):
        return "{" + ", ".join(f"{_key(k)} = {_value(x)}" for k, x in v.items()) + "}"
    raise TypeError(v)


def to_toml(doc: dict[str, object]) -> str:
    lines: list[str] = []
    for k, v in doc.items():
        if not isinstance(v, dict | list) or (isinstance(v, list) and not all(
                isinstance(x, dict) for x in v)) or (isinstance(v, list) and not v):
            lines.insert(0, f"{_key(k)} = {_value(v)}")
    for k, v in doc.items():
        if isinstance(v, dict):
            if k == "schedule":
                for name, table in v.items():
                    lines.append(f"[schedule.{_key(name)}]")
                    assert isinstance(table, dict)
                    lines += [f"{_key(a)} = {_value(b)}" for a, b in table.items()]
            else:
                lines.append(f"[{_key(k)}]")
                lines += [f"{_key(a)} = {_value(b)}" for a, b in v.items()]
        elif isinstance(v, list) and v and all(isinstance(x, dict) for x in v):
            for table in v:
                lines.append(f"[[{_key(k)}]]")
                lines += [f"{_key(a)} = {_value(b)}" for a, b in table.items()]
    return "\n".join(lines) + "\n"


def _substitute(text: str, place: Path) -> str:
    return text.replace('"FIFO"', _str(str(place / "fifo"))).replace(
        '"DIR"', _str(str(place / "folder")))


# ---- the property ---------------------------------------------------------------------------

@pytest.fixture(scope="module")
def place(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    d = tmp_path_factory.mktemp("fuzz")
    os.mkfifo(d / "fifo")
    (d / "folder").mkdir()
    (d / "pw").write_text("secret\n")
    (d / "pw").chmod(0o600)
    (d / "meters.csv").write_text("meter_id,address,bus,protocol,profile\n"
                                  "M2,2,line-1,,\nM3,3,line-1,modbus,acrel-ddsy1352\n")
    (d / "secrets.toml").write_text('[default]\npassword = "02123456"\n')
    (d / "secrets.toml").chmod(0o600)
    yield d


class _Hang(Exception):
    pass


def _alarm(signum: int, frame: FrameType | None) -> None:
    raise _Hang("the loader took more than 5 s (blocked on a read?)")


@settings(max_examples=100, deadline=dt.timedelta(seconds=2),
          suppress_health_check=[HealthCheck.function_scoped_fixture,
                                 HealthCheck.too_slow, HealthCheck.data_too_large])
@given(doc=documents())
def test_any_document_loads_or_raises_config_error(place: Path,
                                                   doc: dict[str, object]) -> None:
    path = place / "amic.toml"
    path.write_text(_substitute(to_toml(doc), place), encoding="utf-8")
    previous = signal.signal(signal.SIGALRM, _alarm)
    signal.alarm(5)
    try:
        result = load_settings(path)
    except ConfigError as e:
        assert e.problems and all(str(p) for p in e.problems)
    else:
        assert isinstance(result, Settings)
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, previous)


def test_the_writer_round_trips_through_tomllib() -> None:
    import tomllib

    doc = {"collector": {"id": "x\x00", "n": math.inf, "d": dt.time(6)},
           "bus": [{"name": "a"}, {"name": "b"}], "schedule": {"fast": {"interval": "1s"}}}
    back = tomllib.loads(to_toml(doc))
    assert back["collector"]["id"] == "x\x00" and back["bus"][1]["name"] == "b"
    assert back["schedule"]["fast"]["interval"] == "1s"

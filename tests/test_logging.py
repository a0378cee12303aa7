"""What ``amic run`` says where journald reads it: priorities, alarms, one schema line,
and a port clash that systemd restarts on."""

from __future__ import annotations

import logging
import os
import re
import socket
import sqlite3
import subprocess
import time
from pathlib import Path
from unittest.mock import Mock

import pytest
from click.testing import CliRunner
from conftest import amic_command, free_port
from daemonproc import Daemon as DaemonProcess

from collector.cli import main
from collector.cli.run import JournalFormatter
from collector.config import load_settings
from collector.service.daemon import Daemon
from collector.store import SCHEMA_VERSION, Store
from collector.store.records import Event, utcnow

ROOT = Path(__file__).resolve().parents[1]
UNIT = ROOT / "config" / "systemd" / "amic.service"

CONFIG = """
[collector]
id = "journal-gw"
data_dir = "data"
metrics_listen = "127.0.0.1:{mport}"

[[bus]]
name = "line-1"
type = "tcp"
host = "127.0.0.1"
port = {port}

[[meter]]
meter_id = "M1"
address = "1"
bus = "line-1"

[schedule.slow]
interval = "1h"
quantities = ["energy"]
"""


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def test_journal_lines_carry_their_priority(tmp_path: Path) -> None:
    cfg = tmp_path / "amic.toml"
    cfg.write_text(CONFIG.format(mport=free_port(), port=_closed_port()))
    d = DaemonProcess(cfg, tmp_path, env={"JOURNAL_STREAM": "8:12345"})
    try:
        d.wait_for("READY=1")
        d.wait_log("not reachable yet")
    finally:
        assert d.stop() == 0
    lines = d.log.read_text().splitlines()
    assert lines and all(re.match(r"<[2-7]>", line) for line in lines), lines
    assert any(line.startswith("<6>INFO amic.daemon: collector journal-gw ready")
               for line in lines), lines
    assert any(line.startswith("<4>WARNING amic.daemon: bus line-1:") for line in lines), lines
    # No timestamp of our own: journald adds one.
    assert not any(re.match(r"<\d>\d{4}-\d\d-\d\d", line) for line in lines)
    schema = [line for line in lines if "schema version" in line]
    assert schema == [f"<6>INFO amic.store: store {tmp_path / 'data' / 'amic.db'}: "
                      f"schema version {SCHEMA_VERSION} (created)"]


def test_journal_formatter_prefixes_every_line_by_level() -> None:
    f = JournalFormatter("%(levelname)s %(message)s")

    def line(level: int, msg: str) -> str:
        return f.format(logging.LogRecord("amic", level, __file__, 1, msg, None, None))

    assert line(logging.DEBUG, "d") == "<7>DEBUG d"
    assert line(logging.INFO, "i") == "<6>INFO i"
    assert line(logging.WARNING, "w") == "<4>WARNING w"
    assert line(logging.ERROR, "two\nlines") == "<3>ERROR two\n<3>lines"
    assert line(logging.CRITICAL, "c") == "<2>CRITICAL c"


def test_port_clash_names_the_address_and_exits_with_a_restartable_status(
        tmp_path: Path) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        mport = taken.getsockname()[1]
        cfg = tmp_path / "amic.toml"
        cfg.write_text(CONFIG.format(mport=mport, port=_closed_port()))
        t0 = time.monotonic()
        r = subprocess.run([*amic_command(), "run", "--config", str(cfg)], capture_output=True,
                           text=True, timeout=30,
                           env=dict(os.environ, JOURNAL_STREAM="8:12345"))
        took = time.monotonic() - t0
    assert r.returncode == 75, r.stderr
    assert "Traceback" not in r.stderr
    assert r.stderr.splitlines() == [
        f"<3>ERROR amic.run: not started: cannot listen on 127.0.0.1:{mport} "
        "(metrics_listen): Address already in use"]
    assert not (tmp_path / "data").exists()  # nothing was started
    # The shipped unit restarts on it: Restart=on-failure, and 75 is not a status that
    # RestartPreventExitStatus= excludes.
    unit = UNIT.read_text()
    assert re.search(r"^Restart=on-failure$", unit, re.M)
    prevented = re.findall(r"^RestartPreventExitStatus=(.*)$", unit, re.M)
    assert all("75" not in p.split() for p in prevented)
    print(f"port clash: exit {r.returncode} after {took:.2f} s")


def test_alarms_and_warnings_are_logged_at_warning(tmp_path: Path,
                                                   caplog: pytest.LogCaptureFixture) -> None:
    cfg = tmp_path / "amic.toml"
    cfg.write_text(CONFIG.format(mport=free_port(), port=1))
    d = Daemon(load_settings(cfg), notifier=Mock())
    d.writer = Mock()
    caplog.set_level(logging.INFO, "amic.daemon")
    d._on_event(Event("cover_open_counter", utcnow(), meter="M1", severity=2))
    d._on_event(Event("voltage_high", utcnow(), meter="M1", severity=1))
    d._on_event(Event("voltage_high_cleared", utcnow(), meter="M1", severity=0))
    assert [(r.levelno, r.getMessage().split()[1]) for r in caplog.records] == [
        (logging.WARNING, "cover_open_counter"), (logging.WARNING, "voltage_high"),
        (logging.INFO, "voltage_high_cleared")]


def test_schema_is_one_line_when_a_store_is_created(tmp_path: Path,
                                                   caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, "amic.store")
    store = Store(tmp_path / "amic.db")
    try:
        store.schema_version  # noqa: B018 - opens the database (and migrates it)
    finally:
        store.close()
    lines = [r.getMessage() for r in caplog.records if "schema version" in r.getMessage()]
    assert lines == [f"store {tmp_path / 'amic.db'}: schema version {SCHEMA_VERSION} (created)"]


def test_config_check_verbose_names_the_mqtt_bus_type(tmp_path: Path) -> None:
    cfg = tmp_path / "amic.toml"
    cfg.write_text(CONFIG.format(mport=free_port(), port=1).replace(
        'type = "tcp"\nhost = "127.0.0.1"\nport = 1', 'type = "mqtt"\ngateway = "gw1"')
        + '\n[mqtt]\nurl = "mqtt://127.0.0.1:1883"\n\n[[gateway]]\nname = "gw1"\n'
          'prefix = "site/gw"\n')
    r = CliRunner().invoke(main, ["config", "check", "-v", str(cfg)])
    assert r.exit_code == 0, r.output
    assert "  bus line-1: mqtt via gateway gw1 (site/gw/gw1), 1 meter" in r.stdout.splitlines()


@pytest.mark.parametrize("content,why", [
    (b"garbage, not SQLite\n" * 10, "file is not a database"),
    (None, f"schema version {SCHEMA_VERSION + 1} is newer than this amic knows"),
])
def test_a_store_amic_cannot_use_stops_the_start_without_a_traceback(
        tmp_path: Path, content: bytes | None, why: str) -> None:
    (tmp_path / "data").mkdir()
    db = tmp_path / "data" / "amic.db"
    if content is None:
        with sqlite3.connect(db) as conn:
            conn.execute(f"PRAGMA user_version = {SCHEMA_VERSION + 1}")
    else:
        db.write_bytes(content)
    cfg = tmp_path / "amic.toml"
    cfg.write_text(CONFIG.format(mport=free_port(), port=_closed_port()))
    r = subprocess.run([*amic_command(), "run", "--config", str(cfg)], capture_output=True,
                       text=True, timeout=30, env=dict(os.environ, JOURNAL_STREAM="8:12345"))
    assert r.returncode == 78, r.stderr
    assert "Traceback" not in r.stderr
    # One error line; the info lines before it (the control socket) are no problem.
    [line] = [x for x in r.stderr.splitlines() if not x.startswith("<6>")]
    assert line.startswith("<3>ERROR amic.run: not started: ") and why in line, line

"""The daemon's control socket: ``amic relay-status|trip --config`` go through a running
daemon instead of opening its buses a second time; without one they open them."""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import socket
import sqlite3
import stat
import tempfile
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner
from conftest import until
from daemonproc import Daemon

from collector.cli import main
from simulators.bus import BusServer
from simulators.dlt645 import make_meters

SECRETS = """
[default]
password = "02000000"

[operators.alice]
operator_code = "0000A11C"
"""

CONFIG = """
[collector]
id = "ctl-gw"
data_dir = "data"

[commands]
secrets_file = "secrets.toml"
min_interval = "0s"
verify_timeout = "2s"
poll_interval = "50ms"

[[bus]]
name = "conc-1"
type = "tcp"
host = "127.0.0.1"
port = {port}
td_ms = 300

[[meter]]
meter_id = "M1"
address = "000000000001"
bus = "conc-1"

[[meter]]
meter_id = "M2"
address = "000000000002"
bus = "conc-1"

[schedule.poll]
interval = "1h"
quantities = ["voltage_a"]
"""


NOBODY = 65534


def setup(tmp: Path, port: int) -> Path:
    secrets = tmp / "secrets.toml"
    secrets.write_text(SECRETS)
    secrets.chmod(0o600)
    cfg = tmp / "amic.toml"
    cfg.write_text(CONFIG.format(port=port))
    return cfg


async def amic(*args: str) -> Any:
    return await asyncio.to_thread(CliRunner().invoke, main, list(args))


def commands(tmp: Path) -> list[tuple[str, str, str, str, str]]:
    with sqlite3.connect(tmp / "data" / "amic.db") as c:
        rows = c.execute("SELECT meter, kind, status, operator, detail FROM commands "
                         "ORDER BY id").fetchall()
    return [(m, k, s, o, json.loads(d).get("reason", "")) for m, k, s, o, d in rows]


async def test_cli_goes_through_the_running_daemon_and_falls_back_without_one(
        tmp_path: Path) -> None:
    meters = make_meters(["000000000001", "000000000002"])
    async with BusServer(meters, baud=19200, td=0.005) as server:
        cfg = setup(tmp_path, server.port)
        daemon = Daemon(cfg, tmp_path)
        try:
            await asyncio.to_thread(daemon.wait_for, "READY=1")
            sock = tmp_path / "data" / "amic.sock"
            mode = sock.lstat().st_mode
            assert stat.S_ISSOCK(mode) and stat.S_IMODE(mode) == 0o600
            # The daemon's own link (opened lazily: maybe just after READY=1).
            await until(lambda: server.stats.connections == 1,
                        what=lambda: server.stats.connections)
            r = await amic("relay-status", "M1", "M2", "-c", str(cfg), "--json")
            assert r.exit_code == 0, r.output
            assert f"via running daemon (pid {daemon.proc.pid})" in r.stderr
            states = {x["meter"]: x["state"]["relay_open"]
                      for x in map(json.loads, r.stdout.splitlines())}
            assert states == {"M1": False, "M2": False}
            r = await amic("trip", "M1", "M2", "--config", str(cfg), "--yes",
                           "--operator", "alice", "--reason", "arrears 4711")
            assert r.exit_code == 0, r.output
            assert f"via running daemon (pid {daemon.proc.pid})" in r.stderr
            assert meters[0].model.relay_open and meters[1].model.relay_open
            # An on-demand read goes through the daemon too.
            r = await amic("read", "-c", str(cfg), "--meter", "M2", "--json", "voltage_a")
            assert r.exit_code == 0, r.output
            assert f"via running daemon (pid {daemon.proc.pid})" in r.stderr
            doc = json.loads(r.stdout)
            assert (doc["meter"], doc["quantity"]) == ("M2", "voltage_a")
            assert 180 < doc["value"] < 260
            # The CLI never opened the bus: the simulator saw one master only.
            assert server.stats.connections == 1
        finally:
            assert await asyncio.to_thread(daemon.stop) == 0
        # The daemon recorded the commands, with the operator and reason given.
        assert commands(tmp_path) == [
            ("M1", "trip", "confirmed", "alice", "arrears 4711"),
            ("M2", "trip", "confirmed", "alice", "arrears 4711")]
        assert not (tmp_path / "data" / "amic.sock").exists()
        # No daemon: the CLI opens the bus itself, as before.
        r = await amic("relay-status", "M1", "--config", str(cfg), "--json")
        assert r.exit_code == 0, r.output
        assert "via running daemon" not in r.stderr
        assert server.stats.connections == 2
        assert json.loads(r.stdout)["state"]["relay_open"] is True
        r = await amic("read", "-c", str(cfg), "--meter", "M1", "voltage_a")
        assert r.exit_code == 0, r.output
        assert "via running daemon" not in r.stderr
        assert r.stdout.splitlines()[1].split()[:2][0] == "voltage_a"
        assert server.stats.connections == 3


async def test_a_stale_socket_neither_blocks_the_daemon_nor_the_cli(tmp_path: Path) -> None:
    meters = make_meters(["000000000001", "000000000002"])
    async with BusServer(meters, baud=19200, td=0.005) as server:
        cfg = setup(tmp_path, server.port)
        (tmp_path / "data").mkdir()
        stale = tmp_path / "data" / "amic.sock"
        s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        s.bind(str(stale))  # a daemon killed with -9 leaves its socket behind
        s.close()
        # The CLI: connection refused, so it reads the meters itself.
        r = await amic("relay-status", "M2", "-c", str(cfg), "--json")
        assert r.exit_code == 0, r.output
        assert "via running daemon" not in r.stderr
        # A new daemon replaces the stale socket and serves on it.
        daemon = Daemon(cfg, tmp_path)
        try:
            await asyncio.to_thread(daemon.wait_for, "READY=1")
            r = await amic("relay-status", "M2", "-c", str(cfg))
            assert r.exit_code == 0, r.output
            assert f"via running daemon (pid {daemon.proc.pid})" in r.stderr
            # A second daemon on the same data directory is refused.
            second = Daemon(cfg, tmp_path, name="second")
            assert await asyncio.to_thread(second.proc.wait, 15) == 78
            assert "another amic daemon" in second.log.read_text()
            assert second.stop() == 78
        finally:
            assert await asyncio.to_thread(daemon.stop) == 0
        assert server.stats.connections == 2  # the first CLI call and the daemon


async def test_socket_requests_are_checked(tmp_path: Path) -> None:
    from collector.service.ctlsocket import CtlServer

    class Stub:
        settings: Any = None

    server = CtlServer.__new__(CtlServer)
    server.ctx = Stub()  # type: ignore[assignment]
    server.relay = lambda: None  # the daemon is starting: no relay service yet
    for line, error in ((b"{not json", "not a JSON request"), (b"[1]", "expected a JSON"),
                        (b'{"op": "format"}', "expected hello, relay or read"),
                        (b'{"op": "relay", "action": "trip"}', "starting")):
        reply = await server.handle(line)
        assert reply["status"] == "error" and error in reply["error"], reply



def hello_as(uid: int, path: Path) -> str:
    """What a process of user ``uid`` gets from the socket at ``path`` (forked)."""
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: only system calls, then out
        out = b""
        try:
            os.close(r)
            os.setgid(uid)
            os.setuid(uid)
            s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            s.settimeout(20)
            try:
                s.connect(str(path))
                s.sendall(b'{"op": "hello"}\n')
                out = s.makefile("rb").readline()
            except OSError as e:
                out = f"OSError {e.strerror}".encode()
            except BaseException as e:
                out = f"{type(e).__name__} {e}".encode()
            os.write(w, out)
        finally:
            os._exit(0)
    os.close(w)
    chunks = []
    while chunk := os.read(r, 4096):
        chunks.append(chunk)
    os.close(r)
    os.waitpid(pid, 0)
    return b"".join(chunks).decode()


async def test_only_the_daemons_user_or_root_may_use_the_socket(tmp_path: Path) -> None:
    """Another user: the 0600 socket refuses to connect; with the mode opened up, the
    daemon still refuses the peer's uid (SO_PEERCRED)."""
    assert os.geteuid() == 0, "acting as another user needs root (as in CI)"
    async with BusServer(make_meters(["000000000001", "000000000002"]), baud=19200,
                         td=0.005) as server:
        top = Path(tempfile.mkdtemp(prefix="amic-ctl-"))  # pytest's tree is 0700
        try:
            top.chmod(0o755)
            cfg = setup(top, server.port)
            daemon = Daemon(cfg, tmp_path)
            try:
                await asyncio.to_thread(daemon.wait_for, "READY=1")
                sock = top / "data" / "amic.sock"
                out = hello_as(0, sock)
                assert '"pid"' in out, out  # root may
                assert hello_as(NOBODY, sock) == "OSError Permission denied"
                sock.chmod(0o666)
                reply = json.loads(hello_as(NOBODY, sock))
                assert reply == {"status": "error",
                                 "error": f"uid {NOBODY} may not use this daemon"}
            finally:
                assert await asyncio.to_thread(daemon.stop) == 0
            assert f"uid {NOBODY} refused" in daemon.log.read_text()
        finally:
            shutil.rmtree(top)


async def test_a_socket_of_another_configuration_is_passed_over(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """/run/amic may hold the socket of the daemon of another data directory: the CLI
    then opens the buses of its own configuration (no daemon of its own runs)."""
    from collector.config.settings import CollectorSettings
    from collector.service.ctlsocket import CtlServer, connect

    class Settings:
        def __init__(self, data_dir: Path) -> None:
            self.collector = CollectorSettings(id="gw", data_dir=data_dir)

    class Stub:
        def __init__(self, data_dir: Path) -> None:
            self.settings = lambda: Settings(data_dir)

    runtime = tmp_path / "run"
    runtime.mkdir()
    monkeypatch.setenv("RUNTIME_DIRECTORY", str(runtime))
    (tmp_path / "a").mkdir()
    server = CtlServer(Stub(tmp_path / "a"))  # type: ignore[arg-type]
    await server.start()
    try:
        assert server.path == runtime / "amic.sock"
        mine: Any = Settings(tmp_path / "b")
        assert await asyncio.to_thread(connect, mine) is None
        theirs: Any = Settings(tmp_path / "a")
        client = await asyncio.to_thread(connect, theirs)
        assert client is not None and client.pid == os.getpid()
        client.close()
    finally:
        await server.close()
    assert not server.path.exists()

"""``amic simulate concentrator`` and ``amic simulate dtu``: arguments and a real run."""

from __future__ import annotations

import socket

import pytest
from click.testing import CliRunner
from conftest import simulator_cli

from collector.cli import main as cli
from protocols.qgdw3761 import DataUnit, Frame, FrameExtractor, decode_units


@pytest.mark.parametrize(("args", "message"), [
    ([], "--master"),
    (["--master", "127.0.0.1"], "127.0.0.1"),
    (["--master", "127.0.0.1:0"], "cannot be 0"),
    (["--master", "127.0.0.1:9", "--a1", "12345"], "A1"),
    (["--master", "127.0.0.1:9", "--faults", "explode"], "unknown kind"),
    (["--master", "127.0.0.1:9", "--faults", "slow"], "needs a value"),
    (["--master", "127.0.0.1:9", "--a2", "65535", "--count", "2"], "65535"),
    (["--master", "127.0.0.1:9", "--meters", "0"], "--meters"),
])
def test_concentrator_rejects_bad_arguments(args: list[str], message: str) -> None:
    result = CliRunner().invoke(cli, ["simulate", "concentrator", *args])
    assert result.exit_code == 2 and message in result.output, result.output


@pytest.mark.parametrize(("args", "message"), [
    (["--id", "D1", "--protocol", "dlt645"], "--master"),
    (["--master", "127.0.0.1:9", "--id", "D1", "--protocol", "iec"], "--protocol"),
    (["--master", "127.0.0.1:9", "--id", "hex:zz", "--protocol", "dlt645"], "hexadecimal"),
    (["--master", "127.0.0.1:9", "--id", "D1", "--protocol", "modbus"], "--profile"),
    (["--master", "127.0.0.1:9", "--id", "D1", "--protocol", "modbus", "--profile",
      "no-such-profile"], "--profile"),
    (["--master", "127.0.0.1:9", "--id", "D1", "--protocol", "dlt645", "--profile",
      "acrel-ddsy1352"], "modbus"),
])
def test_dtu_rejects_bad_arguments(args: list[str], message: str) -> None:
    result = CliRunner().invoke(cli, ["simulate", "dtu", *args])
    assert result.exit_code == 2 and message in result.output, result.output


def test_count_three_dials_in_with_consecutive_a2() -> None:
    server = socket.create_server(("127.0.0.1", 0))
    server.settimeout(15)
    port = server.getsockname()[1]
    with simulator_cli("concentrator", ["--master", f"127.0.0.1:{port}", "--a1", "4401",
                                        "--a2", "20", "--count", "3", "--meters", "2"]) \
            as (_proc, lines):
        assert lines[0].strip() == f"dialling tcp://127.0.0.1:{port} as 4401/20-22 " \
                                   "(2 meters each)"
        logins = []
        for _ in range(3):
            conn, _ = server.accept()
            conn.settimeout(15)
            ex = FrameExtractor()
            frames: list[Frame] = []
            while not frames:
                ex.feed(conn.recv(256))
                frames = list(ex)
            conn.close()
            unit = decode_units(frames[0])[0]
            assert frames[0].afn == 2 and isinstance(unit, DataUnit) and unit.fn == 1
            logins.append((frames[0].a1, frames[0].a2))
    server.close()
    assert sorted(logins) == [("4401", 20), ("4401", 21), ("4401", 22)]


def test_dtu_dials_in_and_registers() -> None:
    server = socket.create_server(("127.0.0.1", 0))
    server.settimeout(15)
    port = server.getsockname()[1]
    with simulator_cli("dtu", ["--master", f"127.0.0.1:{port}", "--id", "DTU00000001",
                               "--protocol", "modbus", "--profile", "acrel-ddsy1352"]) \
            as (_proc, lines):
        assert lines[0].strip() == f"dialling tcp://127.0.0.1:{port} as DTU DTU00000001"
        conn, _ = server.accept()
        conn.settimeout(15)
        data = b""
        while len(data) < 11:
            data += conn.recv(64)
        assert data == b"DTU00000001"
        conn.close()
    server.close()

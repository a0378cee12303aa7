"""collector.config: [[listener]], [[concentrator]] and the pn/port/baud of a
concentrator's meters; each refusal with its file:line."""

from __future__ import annotations

from pathlib import Path

import pytest

from collector.config import ConfigError, load_settings
from collector.config.settings import ConcentratorSettings, Settings

ROOT = Path(__file__).resolve().parents[1]

BASE = """\
[collector]
id = "gw-1"
data_dir = "data"

[[bus]]
name = "line-1"
type = "serial"
device = "/dev/ttyS1"

[[listener]]
name = "dialin"
listen = "127.0.0.1:9001"
protocol = "3761"

[[concentrator]]
name = "tq-1"
a1 = "4403"
a2 = 1
listener = "dialin"

[[concentrator]]
name = "tq-2"
a1 = "4403"
a2 = 2
listener = "dialin"

[[meter]]
meter_id = "M1"
address = "1"
bus = "line-1"

[[meter]]
meter_id = "C1"
address = "000001000001"
bus = "tq-1"
pn = 1

[[meter]]
meter_id = "C2"
address = "000001000002"
bus = "tq-1"
pn = 2
port = 31
baud = 9600

[[meter]]
meter_id = "C3"
address = "000002000001"
bus = "tq-2"
pn = 1

[schedule.s]
interval = "15m"
quantities = ["energy_active_forward_total"]
"""


@pytest.fixture(autouse=True)
def _in_tmp(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)


def load(text: str, ledger: str | None = None) -> Settings:
    Path("amic.toml").write_text(text, encoding="utf-8")
    if ledger is not None:
        Path("meters.csv").write_text(ledger, encoding="utf-8")
    return load_settings(Path("amic.toml"))


def problems(text: str, ledger: str | None = None) -> list[str]:
    with pytest.raises(ConfigError) as info:
        load(text, ledger)
    return [str(p) for p in info.value.problems]


def edit(old: str, new: str, text: str = BASE) -> str:
    assert old in text, old
    return text.replace(old, new, 1)


def test_listener_two_concentrators_and_their_meters_load() -> None:
    s = load(BASE)
    (li,) = s.listeners
    assert (li.name, li.listen, li.protocol, li.login_reply) == (
        "dialin", "127.0.0.1:9001", "3761", "F1")
    assert (li.idle_timeout, li.request_timeout) == (1200.0, 10.0)
    assert li.tls_cert_file is None and li.tls_key_file is None
    assert s.concentrators == (ConcentratorSettings("tq-1", "4403", 1, "dialin"),
                               ConcentratorSettings("tq-2", "4403", 2, "dialin"))
    assert [b.name for b in s.buses] == ["line-1"]
    assert [(m.meter_id, m.bus, m.pn, m.port, m.baud) for m in s.meters] == [
        ("M1", "line-1", None, 2, 2400), ("C1", "tq-1", 1, 2, 2400),
        ("C2", "tq-1", 2, 31, 9600), ("C3", "tq-2", 1, 2, 2400)]


def test_listener_options_and_a_ledger_with_route_columns() -> None:
    Path("c.pem").write_text("x")
    Path("k.pem").write_text("x")
    text = edit('protocol = "3761"\n', 'protocol = "3761"\nlogin_reply = "F3"\n'
                'idle_timeout = "5m"\nrequest_timeout = "30s"\ntls_cert_file = "c.pem"\n'
                'tls_key_file = "k.pem"\n') + '\n[meters]\nledger = "meters.csv"\n'
    s = load(text, "meter_id,address,bus,pn,port,baud\nL1,000002000003,tq-2,3,,9600\n"
                   "L2,5,line-1,,,\n")
    (li,) = s.listeners
    assert (li.login_reply, li.idle_timeout, li.request_timeout) == ("F3", 300.0, 30.0)
    assert li.tls_cert_file == Path("c.pem").absolute()
    by_id = {m.meter_id: m for m in s.meters}
    assert (by_id["L1"].pn, by_id["L1"].port, by_id["L1"].baud) == (3, 2, 9600)
    assert by_id["L2"].pn is None


def test_a_concentrator_alone_needs_no_bus() -> None:
    text = edit('[[bus]]\nname = "line-1"\ntype = "serial"\ndevice = "/dev/ttyS1"\n', "")
    s = load(edit('bus = "line-1"\n', 'bus = "tq-2"\npn = 4\n', text))
    assert s.buses == () and {m.bus for m in s.meters} == {"tq-1", "tq-2"}


@pytest.mark.parametrize(("old", "new", "expected"), [
    ('a1 = "4403"\na2 = 1', 'a1 = "44A3"\na2 = 1',
     'amic.toml:17: [[concentrator]] #1 (name "tq-1"): key "a1": expected 4 BCD digits such '
     'as "4403", got "44A3"'),
    ("a2 = 2", "a2 = 0",
     'amic.toml:24: [[concentrator]] #2 (name "tq-2"): key "a2": expected an integer from 1 '
     "to 65535, got 0"),
    ("a2 = 2", "a2 = 70000",
     'amic.toml:24: [[concentrator]] #2 (name "tq-2"): key "a2": expected an integer from 1 '
     "to 65535, got 70000"),
    ('a2 = 2\nlistener = "dialin"', 'a2 = 2\nlistener = "dial"',
     'amic.toml:25: [[concentrator]] #2 (name "tq-2"): key "listener": expected the name of '
     'a [[listener]] ("dialin"), got "dial"; did you mean "dialin"?'),
    ('bus = "tq-1"\npn = 1\n', 'bus = "tq-1"\n',
     'amic.toml:32: [[meter]] #2 (meter_id "C1"): key "pn": expected a measuring point '
     'number 1-2040 (required for a meter on concentrator "tq-1"), got nothing'),
    ('bus = "tq-1"\npn = 2', 'bus = "tq-1"\npn = 1',
     'amic.toml:42: [[meter]] #3 (meter_id "C2"): key "pn": expected a pn used once on '
     'concentrator "tq-1", got 1 again (meter "C1" at amic.toml:32)'),
    ('bus = "tq-1"\npn = 2', 'bus = "tq-1"\npn = 2041',
     'amic.toml:42: [[meter]] #3 (meter_id "C2"): key "pn": expected an integer from 1 to '
     "2040, got 2041"),
    ('bus = "line-1"\n', 'bus = "line-1"\npn = 3\n',
     'amic.toml:31: [[meter]] #1 (meter_id "M1"): key "pn": expected no pn: pn is for meters '
     "on a [[concentrator]], got 3"),
    ('protocol = "3761"', 'protocol = "698"',
     'amic.toml:13: [[listener]] #1 (name "dialin"): key "protocol": expected one of "3761", '
     '"dtu-dlt645", "dtu-modbus", got "698"'),
    ('name = "tq-2"', 'name = "line-1"',
     'amic.toml:22: [[concentrator]] #2 (name "line-1"): key "name": expected a bus or '
     'concentrator name used once, got "line-1" again (first at amic.toml:5)'),
])
def test_refusals_name_file_line_key_expected_and_got(old: str, new: str,
                                                      expected: str) -> None:
    assert problems(edit(old, new))[0] == expected


def test_tls_half_given_is_refused() -> None:
    Path("c.pem").write_text("x")
    assert problems(edit('protocol = "3761"', 'protocol = "3761"\ntls_cert_file = "c.pem"')) == [
        'amic.toml:10: [[listener]] #1 (name "dialin"): key "tls_key_file": expected '
        "tls_cert_file and tls_key_file together (TLS), got only one"]


def test_route_columns_refused_in_the_ledger_for_a_plain_bus() -> None:
    text = BASE + '\n[meters]\nledger = "meters.csv"\n'
    assert problems(text, "meter_id,address,bus,pn,port,baud\nL2,5,line-1,,2,\n") == [
        'meters.csv:2: row 1 (meter_id "L2"): column "port": expected no port: port is for '
        'meters on a [[concentrator]], got "2"']


def test_the_example_config_loads() -> None:
    s = load_settings(ROOT / "config" / "amic.example.toml")
    assert s.listeners == () and s.concentrators == ()


def test_the_example_with_its_concentrator_tables_uncommented_loads(tmp_path: Path) -> None:
    text = (ROOT / "config" / "amic.example.toml").read_text()
    start, end = text.index("# [[listener]]"), text.index('# listener = "dialin"')
    end = text.index("\n", end) + 1
    block = "\n".join(line.removeprefix("#").removeprefix(" ")
                      for line in text[start:end].splitlines()) + "\n"
    (tmp_path / "amic.toml").write_text(text[:start] + block + text[end:])
    (tmp_path / "ledger.example.csv").write_text(
        (ROOT / "config" / "ledger.example.csv").read_text())
    for name in ("dialin.crt", "dialin.key"):
        (tmp_path / name).write_text("x")
    s = load_settings(tmp_path / "amic.toml")
    assert [(li.name, li.listen, li.tls_key_file) for li in s.listeners] == [
        ("dialin", "0.0.0.0:9001", tmp_path / "dialin.key")]
    assert s.concentrators == (ConcentratorSettings("tq0103", "4403", 1, "dialin"),)


def test_amic_read_of_a_concentrator_meter_without_the_daemon_says_why(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Only the daemon holds a concentrator's connection: reading one of its meters from
    the configuration while no daemon runs is a clear refusal, not a traceback."""
    from click.testing import CliRunner

    from collector.cli import main

    monkeypatch.chdir(tmp_path)
    Path("amic.toml").write_text(BASE)
    got = CliRunner().invoke(main, ["read", "-c", "amic.toml", "--meter", "C1", "energy"])
    assert got.exit_code == 2, got.output  # as for a meter on an MQTT gateway's bus
    assert "meter C1 is behind concentrator tq-1, which dials in to the daemon" in got.output
    assert "Traceback" not in got.output

"""collector.config: DTU [[listener]]s, [[dtu]] tables and the meters on a DTU; each
refusal with its file:line, key, expected and got."""

from __future__ import annotations

from pathlib import Path

import pytest
from click.testing import CliRunner

from collector.cli import main
from collector.config import ConfigError, load_settings
from collector.config.settings import DtuSettings, Settings

ROOT = Path(__file__).resolve().parents[1]

BASE = """\
[collector]
id = "gw-1"
data_dir = "data"

[[listener]]
name = "dialin"
listen = "127.0.0.1:9001"
protocol = "3761"

[[listener]]
name = "dtu-645"
listen = "127.0.0.1:9002"
protocol = "dtu-dlt645"
registration_length = 11
heartbeat = "hex:FEFE"

[[listener]]
name = "dtu-mb"
listen = "127.0.0.1:9003"
protocol = "dtu-modbus"
registration = "regex"
registration_regex = '^REG(?P<id>\\d{4})'
idle_timeout = "5m"
request_timeout = "3s"

[[concentrator]]
name = "tq-1"
a1 = "4403"
a2 = 1
listener = "dialin"

[[dtu]]
name = "d1"
id = "DTU00000001"
listener = "dtu-645"

[[dtu]]
name = "d2"
id = "0002"
listener = "dtu-mb"

[[meter]]
meter_id = "D1-M1"
address = "000000000001"
bus = "d1"

[[meter]]
meter_id = "D2-M1"
address = "1"
bus = "d2"
protocol = "modbus"
profile = "acrel-dtsy1352"

[schedule.s]
interval = "15m"
quantities = ["energy_active_combined_total"]
meters = ["bus:d1", "bus:d2"]
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


def test_dtu_listeners_dtus_and_their_meters_load() -> None:
    s = load(BASE)
    li = {x.name: x for x in s.listeners}
    assert [(x.name, x.protocol, x.dtu) for x in s.listeners] == [
        ("dialin", "3761", False), ("dtu-645", "dtu-dlt645", True),
        ("dtu-mb", "dtu-modbus", True)]
    a = li["dtu-645"]
    assert (a.registration, a.registration_length, a.registration_regex, a.heartbeat) == (
        "ascii", 11, None, b"\xfe\xfe")
    assert a.idle_timeout == 1200.0  # the defaults of any listener
    b = li["dtu-mb"]
    assert (b.registration, b.registration_length, b.registration_regex, b.heartbeat) == (
        "regex", None, r"^REG(?P<id>\d{4})", None)
    assert (b.idle_timeout, b.request_timeout) == (300.0, 3.0)
    assert li["dialin"].registration_length is None and li["dialin"].heartbeat is None
    assert s.dtus == (DtuSettings("d1", "DTU00000001", "dtu-645"),
                      DtuSettings("d2", "0002", "dtu-mb"))
    assert [(m.meter_id, m.bus, m.protocol, m.pn) for m in s.meters] == [
        ("D1-M1", "d1", "dlt645-2007", None), ("D2-M1", "d2", "modbus", None)]
    assert s.schedules[0].meters == ("bus:d1", "bus:d2")
    assert s.buses == ()  # DTUs alone: no [[bus]] needed


def test_a_text_heartbeat_and_ascii_ids_of_any_length() -> None:
    s = load(edit('registration_length = 11\nheartbeat = "hex:FEFE"\n', 'heartbeat = "HB"\n'))
    li = next(x for x in s.listeners if x.name == "dtu-645")
    assert (li.registration_length, li.heartbeat) == (None, b"HB")


@pytest.mark.parametrize(("old", "new", "expected"), [
    # a DTU names a concentrator listener, or a concentrator a DTU listener
    ('id = "DTU00000001"\nlistener = "dtu-645"', 'id = "DTU00000001"\nlistener = "dialin"',
     'amic.toml:35: [[dtu]] #1 (name "d1"): key "listener": expected the name of a DTU '
     '[[listener]] ("dtu-645", "dtu-mb"), got "dialin" (protocol = "3761")'),
    ('id = "DTU00000001"\nlistener = "dtu-645"', 'id = "DTU00000001"\nlistener = "dtu-64"',
     'amic.toml:35: [[dtu]] #1 (name "d1"): key "listener": expected the name of a DTU '
     '[[listener]] ("dtu-645", "dtu-mb"), got "dtu-64"; did you mean "dtu-645"?'),
    ('a2 = 1\nlistener = "dialin"', 'a2 = 1\nlistener = "dtu-mb"',
     'amic.toml:30: [[concentrator]] #1 (name "tq-1"): key "listener": expected the name of '
     'a [[listener]] with protocol = "3761" ("dialin"), got "dtu-mb" (protocol = '
     '"dtu-modbus": DTUs dial in there)'),
    # a meter whose frames its DTU does not pass through
    ('address = "000000000001"\nbus = "d1"\n',
     'address = "1"\nbus = "d1"\nprotocol = "modbus"\nprofile = "acrel-dtsy1352"\n',
     'amic.toml:46: [[meter]] #1 (meter_id "D1-M1"): key "protocol": expected a protocol '
     'whose frames DTU "d1" passes through ("dlt645-2007" or "dlt645-1997": listener '
     '"dtu-645" has protocol = "dtu-dlt645"), got "modbus"'),
    ('address = "1"\nbus = "d2"\nprotocol = "modbus"\nprofile = "acrel-dtsy1352"\n',
     'address = "000000000002"\nbus = "d2"\n',
     'amic.toml:47: [[meter]] #2 (meter_id "D2-M1"): key "protocol": expected a protocol '
     'whose frames DTU "d2" passes through ("modbus": listener "dtu-mb" has protocol = '
     '"dtu-modbus"), got "dlt645-2007" (the default)'),
    ('address = "000000000001"\nbus = "d1"\n', 'address = "000000000001"\nbus = "d1"\npn = 1\n',
     'amic.toml:46: [[meter]] #1 (meter_id "D1-M1"): key "pn": expected no pn: pn is for '
     "meters on a [[concentrator]], got 1"),
    # the registration format
    ("registration_length = 11\n", "registration_length = 11\nregistration_regex = 'x'\n",
     'amic.toml:15: [[listener]] #2 (name "dtu-645"): key "registration_regex": expected no '
     'registration_regex with registration = "ascii" (set registration = "regex" to use '
     "it), got \"x\""),
    ("registration_regex = '^REG(?P<id>\\d{4})'\n", "",
     'amic.toml:17: [[listener]] #3 (name "dtu-mb"): key "registration_regex": expected a '
     "regular expression over the packet's bytes whose group \"id\" (else its first group, "
     'else the match) is the DTU id (required with registration = "regex"), got nothing'),
    ("registration_regex = '^REG(?P<id>\\d{4})'", "registration_regex = '^REG(?P<id>\\d{4}'",
     'amic.toml:22: [[listener]] #3 (name "dtu-mb"): key "registration_regex": expected a '
     "regular expression over the packet's bytes whose group \"id\" (else its first group, "
     'else the match) is the DTU id, got "^REG(?P<id>\\\\d{4}" (missing ), unterminated '
     "subpattern at position 4)"),
    ("registration_regex = '^REG(?P<id>\\d{4})'", "registration_regex = '(?P<id>\\d*)'",
     'amic.toml:22: [[listener]] #3 (name "dtu-mb"): key "registration_regex": expected a '
     "regular expression over the packet's bytes whose group \"id\" (else its first group, "
     'else the match) is the DTU id that needs at least one byte, got "(?P<id>\\\\d*)", '
     "which matches an empty packet"),
    ('heartbeat = "hex:FEFE"', 'heartbeat = "hex:FEF"',
     'amic.toml:15: [[listener]] #2 (name "dtu-645"): key "heartbeat": expected the '
     'heartbeat packet: ASCII text, or "hex:" and its bytes in hex, got "hex:FEF"'),
    ('heartbeat = "hex:FEFE"', 'heartbeat = "心跳"',
     'amic.toml:15: [[listener]] #2 (name "dtu-645"): key "heartbeat": expected the '
     'heartbeat packet: ASCII text, or "hex:" and its bytes in hex, got "心跳"'),
    ('protocol = "dtu-dlt645"\n', 'protocol = "dtu-dlt645"\nlogin_reply = "F3"\n',
     'amic.toml:14: [[listener]] #2 (name "dtu-645"): key "login_reply": expected no '
     'login_reply: it is for protocol = "3761" listeners (DTUs neither log in nor expect a '
     'reply), got "F3"'),
    ('protocol = "3761"\n', 'protocol = "3761"\nheartbeat = "HB"\n',
     'amic.toml:9: [[listener]] #1 (name "dialin"): key "heartbeat": expected no heartbeat: '
     'heartbeat is for DTU listeners (protocol = "dtu-dlt645" or protocol = "dtu-modbus"), '
     'got "HB"'),
    ('registration_length = 11', 'registration_length = 0',
     'amic.toml:14: [[listener]] #2 (name "dtu-645"): key "registration_length": expected '
     "an integer from 1 to 128 characters, got 0"),
    ('registration = "regex"', 'registration = "binary"',
     'amic.toml:21: [[listener]] #3 (name "dtu-mb"): key "registration": expected one of '
     '"ascii", "regex", got "binary"'),
    # the DTU's id and name
    ('id = "DTU00000001"', 'id = "DTU0001"',
     'amic.toml:34: [[dtu]] #1 (name "d1"): key "id": expected an id of 11 printable ASCII '
     'characters, no spaces (listener "dtu-645" reads registration = "ascii", '
     'registration_length = 11), got "DTU0001"'),
    ('id = "0002"', 'id = ""',
     'amic.toml:39: [[dtu]] #2 (name "d2"): key "id": expected the DTU\'s registration id, '
     'got ""'),
    ('name = "d2"\nid = "0002"\nlistener = "dtu-mb"', 'name = "d2"\nid = "0002"',
     'amic.toml:37: [[dtu]] #2 (name "d2"): key "listener": expected the name of a '
     '[[listener]], got nothing'),
    ('name = "d2"', 'name = "tq-1"',
     'amic.toml:38: [[dtu]] #2 (name "tq-1"): key "name": expected a bus, concentrator or '
     'DTU name used once, got "tq-1" again (first at amic.toml:26)'),
    ('name = "d2"\nid = "0002"\nlistener = "dtu-mb"',
     'name = "d3"\nid = "DTU00000001"\nlistener = "dtu-645"',
     'amic.toml:39: [[dtu]] #2 (name "d3"): key "id": expected an id used once on listener '
     '"dtu-645", got "DTU00000001" again (first at amic.toml:34)'),
])
def test_refusals_name_file_line_key_expected_and_got(old: str, new: str,
                                                      expected: str) -> None:
    assert expected in problems(edit(old, new))


def test_dtu_without_any_dtu_listener_says_none_is_configured() -> None:
    text = edit('protocol = "dtu-dlt645"', 'protocol = "3761"').replace(
        'protocol = "dtu-modbus"', 'protocol = "3761"')
    got = problems(text)
    assert 'amic.toml:35: [[dtu]] #1 (name "d1"): key "listener": expected the name of a DTU ' \
           '[[listener]] (protocol = "dtu-dlt645" or protocol = "dtu-modbus"; none is ' \
           'configured), got "dtu-645" (protocol = "3761")' in got


def test_a_ledger_meter_on_the_wrong_dtu_is_refused_at_its_row() -> None:
    text = BASE + '\n[meters]\nledger = "meters.csv"\n'
    got = problems(text, "meter_id,address,bus,protocol,profile\n"
                         "L1,000000000009,d1,dlt645-2007,\nL2,7,d1,modbus,acrel-dtsy1352\n")
    assert got == [
        'meters.csv:3: row 2 (meter_id "L2"): column "protocol": expected a protocol whose '
        'frames DTU "d1" passes through ("dlt645-2007" or "dlt645-1997": listener "dtu-645" '
        'has protocol = "dtu-dlt645"), got "modbus"']


def _example_with_the_dtu_block(tmp_path: Path) -> Path:
    text = (ROOT / "config" / "amic.example.toml").read_text()
    start = text.index("# ---- DTUs dialling in")
    start = text.index("# [[listener]]", start)
    end = text.index('# listener = "dtu-in"', start)
    end = text.index("\n", end) + 1
    block = "\n".join(line.removeprefix("#").removeprefix(" ")
                      for line in text[start:end].splitlines()
                      # the ascii format is shown; the regex one is its alternative
                      if not line.startswith(("# registration_regex", "#   "))) + "\n"
    meter = ('\n[[meter]]\nmeter_id = "DTU0301-M1"\naddress = "030100000001"\n'
             'bus = "dtu-0301"\n')
    (tmp_path / "amic.toml").write_text(text[:start] + block + text[end:] + meter)
    (tmp_path / "ledger.example.csv").write_text(
        (ROOT / "config" / "ledger.example.csv").read_text())
    return tmp_path / "amic.toml"


def test_the_example_with_its_dtu_tables_uncommented_loads_and_checks(tmp_path: Path) -> None:
    path = _example_with_the_dtu_block(tmp_path)
    s = load_settings(path)
    (li,) = s.listeners
    assert (li.name, li.listen, li.protocol, li.registration, li.registration_length,
            li.heartbeat, li.idle_timeout, li.request_timeout) == (
        "dtu-in", "0.0.0.0:9002", "dtu-dlt645", "ascii", 11, b"\xfe", 300.0, 3.0)
    assert s.dtus == (DtuSettings("dtu-0301", "DTU00000301", "dtu-in"),)
    assert [m.bus for m in s.meters if m.meter_id == "DTU0301-M1"] == ["dtu-0301"]
    got = CliRunner().invoke(main, ["config", "check", str(path)])
    assert got.exit_code == 0, got.output
    assert "problem" not in got.output


def test_the_examples_regex_is_one_the_loader_takes(tmp_path: Path) -> None:
    text = (ROOT / "config" / "amic.example.toml").read_text()
    line = next(x for x in text.splitlines() if x.startswith("# registration_regex"))
    regex = line.split("=", 1)[1].split("#")[0].strip()
    path = _example_with_the_dtu_block(tmp_path)
    path.write_text(path.read_text().replace(
        'registration = "ascii"', f'registration = "regex"\nregistration_regex = {regex}')
        .replace("registration_length = 11", ""))
    (li,) = load_settings(path).listeners
    assert li.registration == "regex" and li.registration_regex == r"^REG(?P<id>\d{15})"


def test_the_readme_dtu_example_loads(tmp_path: Path) -> None:
    readme = (ROOT / "README.md").read_text()
    blocks = [b.split("```", 1)[0] for b in readme.split("```toml\n")[1:]]
    (example,) = [b for b in blocks if "[[dtu]]" in b]
    s = load('[collector]\nid = "gw-1"\ndata_dir = "data"\n' + example +
             '\n[schedule.fast]\ninterval = "15m"\nquantities = ["voltage_a"]\n')
    (li,) = s.listeners
    assert (li.protocol, li.registration_length, li.heartbeat, li.request_timeout) == (
        "dtu-modbus", 11, b"\xfe", 3.0)
    assert s.dtus == (DtuSettings("dtu-0301", "DTU00000301", "dtu-in"),)
    (m,) = s.meters
    assert (m.bus, m.protocol, m.unit, m.profile) == ("dtu-0301", "modbus", 1, "acrel-ddsy1352")

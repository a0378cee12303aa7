"""Hostile input to the configuration loader: every file it is pointed at is read safely.

NUL bytes, over-long names, ``/dev/zero``, FIFOs, directories and huge files each give
one clear problem naming the key (and line), and both ``amic config check`` and
``amic run`` exit 78 without a traceback; nothing hangs or eats memory.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Iterator
from pathlib import Path

import pytest
from click.testing import CliRunner, Result

from collector.cli import main
from collector.config import ConfigError, load_settings
from collector.config.profiles import available_profiles, load_profile
from collector.config.safefile import FileRefused, read_regular
from protocols.modbus import ProfileError

EX_CONFIG = 78

BASE = """\
[collector]
id = "gw-1"
data_dir = "data"

[[bus]]
name = "line-1"
type = "serial"
device = "/dev/ttyS1"

[[meter]]
meter_id = "M1"
address = "1"
bus = "line-1"

[schedule.fast]
interval = "15m"
quantities = ["energy"]
"""

LEDGER_CONFIG = BASE.replace("""[[meter]]
meter_id = "M1"
address = "1"
bus = "line-1"
""", """[meters]
ledger = "{ledger}"
""")

MODBUS_METER = """
[[meter]]
meter_id = "P1"
address = "7"
bus = "line-1"
protocol = "modbus"
profile = "{profile}"
"""

MQTT = """
[mqtt]
url = "mqtt://127.0.0.1:1883"
password_file = "mqtt.pw"
"""


@pytest.fixture(autouse=True)
def _in_tmp(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("AMIC_MQTT_PASSWORD", raising=False)
    root = logging.getLogger()
    handlers, level = root.handlers[:], root.level
    yield
    root.handlers[:], root.level = handlers, level  # `amic run` in-process set up logging


def fifo(name: str = "pipe") -> str:
    os.mkfifo(name)
    return name


def check(text: str) -> Result:
    Path("amic.toml").write_text(text, encoding="utf-8")
    return CliRunner().invoke(main, ["config", "check", "amic.toml"])


def run(text: str) -> Result:
    Path("amic.toml").write_text(text, encoding="utf-8")
    return CliRunner().invoke(main, ["run", "--config", "amic.toml"])


def refused(text: str) -> str:
    """The problems of ``text`` as ``config check`` prints them; it and ``run`` exit 78."""
    r = check(text)
    assert r.exit_code == EX_CONFIG, r.output
    assert r.exception is None or isinstance(r.exception, SystemExit), r.exception
    assert "Traceback" not in r.output
    started = run(text)
    assert started.exit_code == EX_CONFIG, started.output
    assert started.exception is None or isinstance(started.exception, SystemExit), \
        started.exception
    return r.stdout


def test_nul_in_data_dir_is_named_with_its_key_and_line() -> None:
    out = refused(BASE.replace('data_dir = "data"', 'data_dir = "da\\u0000ta"'))
    assert out.startswith('amic.toml:3: [collector]: key "data_dir": expected a folder path, '
                          'got "da\\u0000ta" (a NUL byte at character 3)'), out


@pytest.mark.parametrize("data_dir", ["data", "data/sub/dir"])
def test_data_dir_that_is_or_is_under_a_file_is_refused(data_dir: str) -> None:
    Path("data").write_text("")
    out = refused(BASE.replace('data_dir = "data"', f'data_dir = "{data_dir}"'))
    assert out.startswith('amic.toml:3: [collector]: key "data_dir": expected a folder (amic '
                          f'keeps its store there), got {Path.cwd() / data_dir} '
                          f'({Path.cwd() / "data"} is not a folder)'), out


@pytest.mark.parametrize("key", ["data_dir", "device"])
def test_names_over_255_bytes_are_refused(key: str) -> None:
    long = "x" * 300
    text = BASE.replace('data_dir = "data"', f'data_dir = "{long}"') if key == "data_dir" \
        else BASE.replace('device = "/dev/ttyS1"', f'device = "/dev/{long}"')
    out = refused(text)
    assert f'key "{key}"' in out and "a name of 300 bytes (at most 255)" in out


def test_long_ledger_name_is_refused() -> None:
    out = refused(LEDGER_CONFIG.format(ledger="y" * 256 + ".csv"))
    assert 'amic.toml:11: [meters]: key "ledger"' in out
    assert "a name of 260 bytes (at most 255)" in out


def test_dev_zero_as_ledger_is_refused_without_reading_it() -> None:
    out = refused(LEDGER_CONFIG.format(ledger="/dev/zero"))
    assert out.startswith('amic.toml:11: [meters]: key "ledger": expected a readable CSV file, '
                          'got "/dev/zero" (/dev/zero: a character device, not a regular '
                          'file)'), out


def test_fifo_as_ledger_is_refused_without_blocking() -> None:
    out = refused(LEDGER_CONFIG.format(ledger=fifo()))
    assert 'key "ledger"' in out and "a FIFO, not a regular file" in out


def test_huge_ledger_names_the_limit() -> None:
    with open("big.csv", "wb") as f:
        f.truncate((16 << 20) + 1)  # sparse: costs no disk
    out = refused(LEDGER_CONFIG.format(ledger="big.csv"))
    assert "more than the limit of 16 MiB" in out


@pytest.mark.parametrize("target", ["/dev/zero", "fifo", "long", "nul"])
def test_hostile_profile_paths_are_refused(target: str) -> None:
    if target == "fifo":
        name = "./" + fifo()
    else:
        name = {"/dev/zero": "/dev/zero", "long": "p" * 300, "nul": "p\\u0000q"}[target]
    out = refused(BASE + MODBUS_METER.format(profile=name))
    assert 'key "profile": expected a loadable device profile' in out, out
    why = {"/dev/zero": "a character device, not a regular file",
           "fifo": "a FIFO, not a regular file", "long": "a name of 300 bytes",
           "nul": "a NUL byte"}[target]
    assert why in out


@pytest.mark.parametrize("target", ["/dev/zero", "fifo", "dir"])
def test_hostile_config_file_is_refused(target: str) -> None:
    path = fifo("amic.toml") if target == "fifo" else {"/dev/zero": "/dev/zero",
                                                        "dir": "."}[target]
    r = CliRunner().invoke(main, ["config", "check", path])
    assert r.exit_code == EX_CONFIG
    why = {"/dev/zero": "a character device", "fifo": "a FIFO", "dir": "a directory"}[target]
    assert r.stdout == f"{path}: expected a readable TOML file, got {why}, not a regular file\n"
    started = CliRunner().invoke(main, ["run", "--config", path])
    assert started.exit_code == EX_CONFIG and why in started.output


def test_huge_config_file_names_the_limit() -> None:
    with open("amic.toml", "wb") as f:
        f.truncate((1 << 20) + 1)
    r = CliRunner().invoke(main, ["config", "check", "amic.toml"])
    assert r.exit_code == EX_CONFIG and "more than the limit of 1 MiB" in r.stdout


def test_load_settings_with_nul_in_its_own_path_is_a_config_error() -> None:
    with pytest.raises(ConfigError, match="NUL byte"):
        load_settings(Path("amic\x00.toml"))


@pytest.mark.parametrize("key,target", [("password_file", "long"), ("password_file", "nul"),
                                        ("ca_file", "long"), ("ca_file", "nul")])
def test_hostile_mqtt_file_paths_are_refused(key: str, target: str) -> None:
    name = "q" * 300 if target == "long" else "q\\u0000"
    text = BASE + '[mqtt]\nurl = "mqtt://127.0.0.1:1883"\nusername = "amic"\n' \
        f'{key} = "{name}"\n'
    out = refused(text)
    assert f'[mqtt]: key "{key}": expected a file path' in out
    assert ("a name of 300 bytes" if target == "long" else "a NUL byte") in out


def test_secrets_file_with_long_name_is_refused() -> None:
    out = refused(BASE + f'[commands]\nsecrets_file = "{"s" * 256}"\n')
    assert '[commands]: key "secrets_file": expected a file path' in out
    assert "a name of 256 bytes (at most 255)" in out


def test_mqtt_password_without_username_is_refused_by_check_as_by_run() -> None:
    Path("mqtt.pw").write_text("secret\n")
    Path("mqtt.pw").chmod(0o600)
    out = refused(BASE + MQTT)
    assert out.startswith('amic.toml:19: [mqtt]: key "username": expected a username with the '
                          'password'), out
    assert "secret" not in out


def test_mqtt_password_from_the_environment_without_username_is_refused(
        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("AMIC_MQTT_PASSWORD", "secret")
    out = refused(BASE + '[mqtt]\nurl = "mqtt://127.0.0.1:1883"\n')
    assert 'key "username"' in out and "AMIC_MQTT_PASSWORD" in out and "secret" not in out


def test_read_regular_reads_a_regular_file_and_refuses_the_rest(tmp_path: Path) -> None:
    Path("ok.txt").write_bytes(b"abc")
    assert read_regular("ok.txt", 3) == b"abc"
    with pytest.raises(FileRefused, match="3 bytes, more than the limit of 2 bytes"):
        read_regular("ok.txt", 2)
    with pytest.raises(FileRefused, match="No such file"):
        read_regular("missing.txt", 10)
    with pytest.raises(FileRefused, match="a FIFO"):
        read_regular(fifo(), 10)


def test_profile_list_leaves_out_other_toml_files(tmp_path: Path) -> None:
    Path("amic.toml").write_text(BASE)
    Path("secrets.toml").write_text('[default]\npassword = "02123456"\n')
    fifo("odd.toml")
    names = available_profiles([tmp_path])
    assert "amic" not in names and "secrets" not in names and "odd" not in names
    assert "acrel-ddsy1352" in names
    with pytest.raises(ProfileError) as e:
        load_profile("acrel-ddsy1353", search=[tmp_path])
    assert "available: acrel-ddsy1352, acrel-dtsy1352, generic-energy-meter" in str(e.value)


def test_nul_in_hosts_is_refused() -> None:
    tcp = BASE.replace('type = "serial"\ndevice = "/dev/ttyS1"',
                       'type = "tcp"\nhost = "10.0.0.1\\u0000"\nport = 502')
    assert 'key "host": expected a host name or IP address' in refused(tcp)
    out = refused(BASE + '[mqtt]\nurl = "mqtt://bro\\u0000ker:1883"\n')
    assert 'key "url": expected an MQTT broker URL' in out
    out = refused(BASE + '[timeseries]\nurl = "http://tsdb\\u0000:8428"\n')
    assert 'key "url": expected an http(s) URL' in out


def test_gateway_prefix_in_the_brokers_sys_tree_is_refused() -> None:
    text = BASE.replace('type = "serial"\ndevice = "/dev/ttyS1"',
                        'type = "mqtt"\ngateway = "gw1"') + \
        '[mqtt]\nurl = "mqtt://127.0.0.1:1883"\n\n[[gateway]]\nname = "gw1"\n' \
        'prefix = "$SYS/amic"\n'
    out = refused(text)
    assert 'amic.toml:23: [[gateway]] #1 (name "gw1"): key "prefix": expected an MQTT topic ' \
        'prefix' in out, out
    assert 'got "$SYS/amic"; topics starting with "$" are reserved for the broker' in out


@pytest.mark.parametrize("url,files,why", [
    ("mqtt://127.0.0.1:1883", {"ca_file": "ca.pem"}, "ca_file given for a plain mqtt:// URL"),
    ("mqtts://127.0.0.1:8883", {"ca_file": "ca.pem"}, 'key "ca_file"'),
    ("mqtts://127.0.0.1:8883", {"cert_file": "ca.pem", "key_file": "ca.pem"},
     'key "cert_file"'),
])
def test_mqtt_settings_the_client_refuses_are_caught_by_check(
        url: str, files: dict[str, str], why: str) -> None:
    Path("ca.pem").write_text("not a certificate\n")
    text = BASE + f'[mqtt]\nurl = "{url}"\n' + "".join(f'{k} = "{v}"\n'
                                                        for k, v in files.items())
    out = refused(text)
    assert "[mqtt]: key" in out and why in out, out


@pytest.mark.parametrize("target,why", [("/dev/zero", "a character device, not a regular file"),
                                        ("FIFO", "a FIFO, not a regular file"),
                                        ("big", "more than the limit of 64 KiB")])
def test_hostile_password_and_token_files_are_refused(target: str, why: str) -> None:
    if target == "FIFO":
        target = str(Path.cwd() / fifo())
    elif target == "big":
        Path("big").write_bytes(b"x" * (65 * 1024))
        Path("big").chmod(0o600)
    out = refused(BASE + f'[mqtt]\nurl = "mqtt://127.0.0.1:1883"\nusername = "amic"\n'
                  f'password_file = "{target}"\n\n[timeseries]\nurl = "http://127.0.0.1:8428"\n'
                  f'token_file = "{target}"\n')
    assert '[mqtt]: key "password_file": expected a readable file, got ' in out
    assert '[timeseries]: key "token_file": expected a readable file, got ' in out
    assert out.count(why) == 2, out

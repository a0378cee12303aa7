"""What README.md, docs/mqtt.md and docs/schema.md claim, checked against the code."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import free_port
from mosquitto import MOSQUITTO, _wait_port

from collector.config import load_settings
from collector.config.settings import MeterSettings
from collector.forward.forwarder import Forwarder
from collector.store import Store

ROOT = Path(__file__).resolve().parents[1]
README = (ROOT / "README.md").read_text()
MQTT_MD = (ROOT / "docs" / "mqtt.md").read_text()
SCHEMA_MD = (ROOT / "docs" / "schema.md").read_text()
AMIC = Path(sys.executable).parent / "amic"  # the installed entry point


def blocks(text: str, lang: str) -> list[str]:
    """The fenced code blocks of ``lang`` in a Markdown text."""
    return re.findall(rf"^```{lang}\n(.*?)^```", text, re.M | re.S)


def section(text: str, heading: str) -> str:
    start = text.index(f"\n## {heading}\n")
    end = text.find("\n## ", start + 1)
    return text[start:end if end > 0 else None]


# ---- shell completion (README) --------------------------------------------------------


def test_readme_completion_lines_produce_scripts() -> None:
    lines = re.findall(r"_AMIC_COMPLETE=(\w+) amic", README)
    assert set(lines) == {"bash_source", "zsh_source", "fish_source"}
    expect = {"bash_source": "complete -o nosort -F _amic_completion amic",
              "zsh_source": "compdef _amic_completion amic",
              "fish_source": "complete --no-files --command amic"}
    procs = {mode: subprocess.Popen([str(AMIC)], env={**os.environ, "_AMIC_COMPLETE": mode},
                                    stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
             for mode in lines}  # in parallel: each start imports the whole CLI
    for mode, proc in procs.items():
        out, err = proc.communicate(timeout=60)
        assert proc.returncode == 0, err
        assert expect[mode] in out, mode


@pytest.mark.skipif(shutil.which("bash") is None, reason="no bash")
def test_bash_completion_completes_commands_and_options() -> None:
    """The README's bash line, sourced in a real bash, completes subcommands and options."""
    script = ('eval "$(_AMIC_COMPLETE=bash_source amic)"\n'
              "COMP_WORDS=(amic conf); COMP_CWORD=1; _amic_completion amic\n"
              'echo "${COMPREPLY[*]}"\n'
              "COMP_WORDS=(amic read --tar); COMP_CWORD=2; COMPREPLY=(); _amic_completion amic\n"
              'echo "${COMPREPLY[*]}"\n')
    env = {**os.environ, "PATH": f"{AMIC.parent}{os.pathsep}{os.environ.get('PATH', '')}"}
    out = subprocess.run(["bash", "-c", script], env=env, capture_output=True, text=True,
                         timeout=60)
    assert out.returncode == 0, out.stderr
    assert out.stdout.split("\n")[:2] == ["config", "--target"]


# ---- gateways and mqtt buses (README, docs/mqtt.md) ---------------------------------------

COLLECTOR = '[collector]\nid = "tq-gw"\ndata_dir = "data"\n\n'


def test_readme_gateway_example_loads(tmp_path: Path) -> None:
    """The README's [[bus]] type = "mqtt" example is a valid configuration."""
    (example,) = [b for b in blocks(README, "toml") if 'type = "mqtt"' in b]
    cfg = tmp_path / "amic.toml"
    cfg.write_text(COLLECTOR + example)
    s = load_settings(cfg)
    (bus,) = s.buses
    assert (bus.kind, bus.gateway, bus.td) == ("mqtt", "gw-01", 5.0)
    assert [g.name for g in s.gateways] == ["gw-01"]
    assert [m.bus for m in s.meters] == ["gw-01-line"]


def test_mqtt_md_gateway_meters_and_subscriptions(tmp_path: Path) -> None:
    """docs/mqtt.md: its gateway example loads; it names the subscriptions the daemon
    makes (configured gateways only, no wildcard)."""
    (example,) = [b for b in blocks(MQTT_MD, "toml") if "[[gateway]]" in b]
    cfg = tmp_path / "amic.toml"
    cfg.write_text(COLLECTOR + '[mqtt]\nurl = "mqtt://127.0.0.1:1883"\n\n' + example +
                   '\n[schedule.s]\ninterval = "1h"\nquantities = ["voltage_a"]\n')
    s = load_settings(cfg)
    assert s.meters[0].bus == s.buses[0].name and s.buses[0].gateway == "gw-01"
    assert "<prefix>/+/report" not in MQTT_MD
    assert "subscribes `<prefix>/<gateway>/report` and `<prefix>/<gateway>/raw`" in MQTT_MD
    assert "not heard at all" in MQTT_MD


@pytest.mark.skipif(not os.path.exists(MOSQUITTO), reason="mosquitto missing")
def test_mqtt_md_broker_persistence_config_is_accepted(tmp_path: Path) -> None:
    """The mosquitto settings of docs/mqtt.md's "Broker persistence" section start a
    real mosquitto (and say persistence true)."""
    text = section(MQTT_MD, "Broker persistence")
    (conf,) = blocks(text, "")
    assert "\npersistence true\n" in conf
    port = free_port()
    conf = conf.replace("/var/lib/mosquitto/", f"{tmp_path}/")
    conf += f"listener {port} 127.0.0.1\nallow_anonymous true\n"
    if os.geteuid() == 0:
        conf += "user root\n"
    (tmp_path / "m.conf").write_text(conf)
    proc = subprocess.Popen([MOSQUITTO, "-c", str(tmp_path / "m.conf")],
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        _wait_port(port, 5)
    finally:
        proc.terminate()
        _, err = proc.communicate(timeout=5)
    assert b"Error" not in err, err
    assert (tmp_path / "mosquitto.db").exists()  # saved at the clean stop


# ---- docs/schema.md ----------------------------------------------------------------------


def test_schema_md_examples_are_what_the_forwarder_writes(tmp_path: Path) -> None:
    """The example lines (collector tag, a remote read's received and done) are the
    forwarder's own output for the same rows."""
    (example,) = [b for b in blocks(SCHEMA_MD, "") if b.startswith("reading,")]
    documented = example.strip().split("\n")
    meters = [MeterSettings("M0101001", "000000000001", "rs485-1", area="TQ-0101")]
    with Store(tmp_path / "amic.db") as store:
        fwd = Forwarder(store, "http://unused", org="o", bucket="b", meters=meters,
                        collector="tq-gw")
        ts = 1767323045678
        got = fwd.reading_lines([(1, "M0101001", "voltage_a", 229.8, "V", ts, None)])  # type: ignore[list-item]
        got += fwd.event_lines([{"kind": "meter_dead", "meter": "M0101001", "bus": None,  # type: ignore[list-item]
                                 "severity": 1, "value": None, "ts": ts},
                                {"kind": "bus_down", "meter": None, "bus": "rs485-1",
                                 "severity": 2, "value": 50.0, "ts": 1767323049001}])
        relay = ('{"latency_ms": 412.0, "energy_at_switch": 1234.56, '
                 '"before": {"relay_open": false}, "after": {"relay_open": true}}')
        command = {"meter": "M0101001", "kind": "trip", "status": "confirmed",
                   "operator": "alice", "detail": relay, "updated": 1767323046001}
        got += fwd.command_lines([command])  # type: ignore[list-item]
        for status in ("received", "done"):
            got += fwd.command_lines([{"meter": "M0101001", "kind": "read", "status": status,  # type: ignore[list-item]
                                       "operator": "", "detail": "{}",
                                       "updated": 1767323050120}])
        got += fwd.cycle_lines([{"schedule": "fifteen_min", "started": 1767323000000,  # type: ignore[list-item]
                                 "ended": 1767323041200, "planned": 400, "succeeded": 398,
                                 "failed": 2, "per_area": "{}", "per_bus": "{}",
                                 "cut": 0}])
        got += fwd.cycle_lines([{"schedule": "fifteen_min", "started": 1767323900000,  # type: ignore[list-item]
                                 "ended": 1767323912500, "planned": 400, "succeeded": 120,
                                 "failed": 1, "per_area": "{}", "per_bus": "{}",
                                 "cut": 1}])
    assert got == documented


def test_readme_concentrator_example_loads_and_its_frame_decodes(tmp_path: Path) -> None:
    """The README's [[listener]]/[[concentrator]] example is a valid configuration, and
    its amic decode line decodes the heartbeat it shows."""
    (example,) = [b for b in blocks(README, "toml") if "[[concentrator]]" in b]
    cfg = tmp_path / "amic.toml"
    cfg.write_text(COLLECTOR + example + '\n[schedule.fast]\ninterval = "15m"\n'
                   'quantities = ["energy"]\n')
    s = load_settings(cfg)
    (listener,) = s.listeners
    (conc,) = s.concentrators
    (meter,) = s.meters
    assert (conc.a1, conc.a2, conc.listener) == ("4403", 1, listener.name)
    assert (meter.bus, meter.pn, meter.port, meter.baud) == ("tq-0201", 1, 2, 2400)
    (line,) = [ln for ln in README.splitlines() if ln.startswith("amic decode --protocol 3761")]
    hexframe = line.split()[4]
    got = subprocess.run([str(AMIC), "decode", "--protocol", "3761", hexframe],
                         capture_output=True, text=True, timeout=60)
    assert got.returncode == 0, got.stderr
    assert '"name": "heartbeat"' in got.stdout and '"a1": "2449"' in got.stdout

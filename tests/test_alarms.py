"""Alarms in the daemon, each driven by a simulated meter: stored, published on MQTT,
listed by ``amic events``."""

from __future__ import annotations

import asyncio
import json
from decimal import Decimal
from pathlib import Path
from typing import Any

import aiomqtt
from click.testing import CliRunner
from conftest import until
from mosquitto import Broker

from collector.cli import main
from collector.config import load_settings
from collector.service.daemon import Daemon
from collector.service.notify import Notifier
from simulators.bus import BusServer
from simulators.dlt645 import make_meters
from simulators.meter import MeterConfig

CONFIG = """
[collector]
id = "alarm-gw"
data_dir = "data"
commit_interval = "100ms"

[mqtt]
url = "{url}"

[alarms]
jump_kwh_per_hour = 50
low_pf = 0.8
zero_use_days = 0.00003    # 2.6 s: a day would be too long for a test
imbalance_pct = 60
comm_loss_after = 2

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
td_ms = 200
{meters}
[schedule.poll]
interval = "1s"
retries = 0
quantities = ["energy_active_forward_total", "voltage", "current", "pf", "power_active_total",
              "cover_open_count", "status_word_3"]
"""

CONFIGS = {
    "M1": MeterConfig(nominal_voltage=245.0, voltage_noise=0.0),  # +11 %: too high
    "M2": MeterConfig(nominal_voltage=190.0, voltage_noise=0.0),  # -14 %: too low
    "M3": MeterConfig(power_factor=0.3),  # low power factor (the simulator shows 0.5)
    "M4": MeterConfig(base_kw=Decimal(400), load_curve=(1.0,) * 24),  # 400 kWh per hour
    "M5": MeterConfig(),  # a quiet meter: runs backwards later, cover opened
    "M6": MeterConfig(),  # dead
    "M7": MeterConfig(load_curve=(0.0,) * 24),  # relay closed, no use at all
    "M8": MeterConfig(),  # tripped by a command, then its relay closes by itself
    "M9": MeterConfig(phase_weights=(1.0, 1.0, 0.2), base_kw=Decimal(20),
                      load_curve=(1.0,) * 24),  # phase C carries a fifth of the load
}


async def test_each_rule_driven_by_a_meter(tmp_path: Path) -> None:
    addresses = {f"M{i}": f"{i:012d}" for i in range(1, 10)}
    secrets = tmp_path / "secrets.toml"
    secrets.write_text('[default]\npassword = "02000000"\n[operators.ops]\n'
                       'operator_code = "00000001"\n')
    secrets.chmod(0o600)
    meters = [m for name, a in addresses.items()
              for m in make_meters([a], config=CONFIGS[name], seed=int(a))]
    model = {name: m.model for name, m in zip(addresses, meters, strict=True)}
    tables = "".join(f'\n[[meter]]\nmeter_id = "{n}"\naddress = "{a}"\nbus = "conc-1"\n'
                     for n, a in addresses.items())
    with Broker(tmp_path / "broker") as broker:
        async with BusServer(meters, baud=19200, td=0.003,
                             faults=f"dead:{addresses['M6']}") as server:
            cfg = tmp_path / "amic.toml"
            cfg.write_text(CONFIG.format(url=broker.url, port=server.port, meters=tables))
            published: list[dict[str, Any]] = []

            async def listen() -> None:
                async with aiomqtt.Client("127.0.0.1", broker.port) as c:
                    await c.subscribe("amic/alarm-gw/event", qos=1)
                    async for m in c.messages:
                        published.append(json.loads(m.payload))  # type: ignore[arg-type]

            listener = asyncio.create_task(listen())
            await asyncio.sleep(0.3)
            daemon = Daemon(load_settings(cfg), notifier=Notifier.from_env({}), align=False)
            run = asyncio.create_task(daemon.run())
            try:
                def seen(kind: str, meter: str) -> bool:
                    return any(e["kind"] == kind and e["meter"] == meter for e in published)

                await until(lambda: daemon.poller is not None
                            and len(daemon.poller.last_cycle) > 0
                            and seen("voltage_high", "M1"), timeout=20,
                            what=lambda: [(e["kind"], e["meter"]) for e in published])
                # A meter running backwards, and one whose cover was opened.
                model["M5"].clear_energy()  # (a meter clear also zeroes its event counts)
                model["M5"].cover_open_count = 10
                # A confirmed trip, then the relay closes without a command.
                assert daemon.control is not None
                (res,) = await daemon.control.relay.run("trip", ["M8"], operator="ops",
                                                        reason="test")
                assert res["status"] == "confirmed"
                model["M8"].close()
                await until(lambda: all(seen(k, m) for k, m in (
                    ("voltage_low", "M2"), ("low_power_factor", "M3"), ("energy_jump", "M4"),
                    ("energy_backwards", "M5"), ("cover_open_counter", "M5"),
                    ("meter_dead", "M6"), ("zero_use", "M7"),
                    ("relay_unexpected", "M8"), ("current_imbalance", "M9"))), timeout=20,
                    what=lambda: sorted({(e["kind"], e["meter"]) for e in published}))
            finally:
                daemon.stop_requested.set()
                assert await asyncio.wait_for(run, 15) == 0
                listener.cancel()
    by_meter: dict[str, set[str]] = {}
    for e in published:
        by_meter.setdefault(e["meter"] or "-", set()).add(e["kind"])
    # Each meter raised its own alarm and no other's.
    assert {"voltage_high"} <= by_meter["M1"] and "voltage_low" not in by_meter["M1"]
    assert {"voltage_low"} <= by_meter["M2"] and "voltage_high" not in by_meter["M2"]
    assert "low_power_factor" in by_meter["M3"]
    assert "energy_jump" in by_meter["M4"]
    assert {"energy_backwards", "cover_open_counter"} <= by_meter["M5"]
    assert "voltage_high" not in by_meter.get("M5", set())
    assert "zero_use" in by_meter["M7"]
    # (At this time scale only the big load moves the 0.01 kWh register.)
    assert "zero_use" not in by_meter["M4"]
    assert "relay_unexpected" in by_meter["M8"]
    assert "current_imbalance" in by_meter["M9"]
    assert not any("current_imbalance" in by_meter.get(m, set()) for m in ("M1", "M2"))
    high = next(e for e in published if e["kind"] == "voltage_high")
    assert high["severity"] >= 1 and high["value"] > 235.4 and "voltage_" in high["detail"]
    # Stored too, and listed by amic events.
    r = CliRunner().invoke(main, ["events", "--config", str(cfg), "--meter", "M2", "--json"])
    assert r.exit_code == 0, r.output
    kinds = {json.loads(line)["kind"] for line in r.output.splitlines()}
    assert "voltage_low" in kinds
    r = CliRunner().invoke(main, ["events", "--config", str(cfg), "--alarms"])
    assert r.exit_code == 0 and "energy_backwards" in r.output and "ALARM" in r.output

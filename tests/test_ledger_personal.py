"""Customers' names and phones sealed at rest in the ledger (issue 17 §1): AES-256-GCM
cells under the secrets file's [ledger] key, opened by amic run, refused with the cell's
place when they do not open, sealed by ``amic ledger seal`` and by an API import."""

from __future__ import annotations

import base64
import os
from pathlib import Path

import pytest
from click.testing import CliRunner

from collector.cli import main
from collector.config import ConfigError, load_settings
from collector.config.personal import PersonalKey, SealError, seal_ledger_text
from collector.config.secrets import SecretsError, parse_secrets
from tests.test_api_server import LEDGER, call, start

KEY = bytes(range(32))
OTHER = bytes(range(1, 33))
PLAIN = """# 台账, exported 2026-12-01
meter_id,address,bus,area,customer,phone,role
M1,000000000001,b1,TQ-1,张三,13812345678,customer

M2,000000000002,b1,TQ-1,"Li, Si",13987654321,customer
M3,000000000003,b1,TQ-1,,,area_master
"""
CONFIG = """
[collector]
id = "gw"
data_dir = "data"

[commands]
secrets_file = "secrets.toml"

[[bus]]
name = "b1"
type = "tcp"
host = "127.0.0.1"
port = 1

[meters]
ledger = "ledger.csv"

[schedule.poll]
interval = "1h"
quantities = ["voltage_a"]
"""


def secrets_text(key: bytes | None) -> str:
    text = '[default]\npassword = "02000000"\n'
    if key is not None:
        text += f'\n[ledger]\nkey = "base64:{base64.b64encode(key).decode()}"\n'
    return text


def setup(tmp: Path, ledger: str, key: bytes | None = KEY) -> Path:
    (tmp / "secrets.toml").write_text(secrets_text(key))
    (tmp / "secrets.toml").chmod(0o600)
    (tmp / "ledger.csv").write_text(ledger, encoding="utf-8")
    cfg = tmp / "amic.toml"
    cfg.write_text(CONFIG)
    return cfg


def test_a_sealed_cell_opens_only_for_its_meter_and_column_with_its_key() -> None:
    key = PersonalKey(KEY)
    cell = key.seal("M1", "phone", "13812345678")
    assert cell.startswith("enc:v1:") and "1381" not in cell
    assert key.open("M1", "phone", cell) == "13812345678"
    assert cell != key.seal("M1", "phone", "13812345678")  # a fresh nonce each time
    for meter, column, k in (("M2", "phone", key), ("M1", "customer", key),
                             ("M1", "phone", PersonalKey(OTHER))):
        with pytest.raises(SealError, match="does not open"):
            k.open(meter, column, cell)
    flipped = cell[:-2] + ("A" if cell[-2] != "A" else "B") + cell[-1]
    with pytest.raises(SealError):
        key.open("M1", "phone", flipped)
    with pytest.raises(SealError, match="too short"):
        key.open("M1", "phone", "enc:v1:AAAA")
    assert "0001" not in repr(key) and repr(key) == "PersonalKey(***)"


def test_sealing_a_ledger_keeps_comments_and_other_rows_and_is_idempotent() -> None:
    key = PersonalKey(KEY)
    out, n = seal_ledger_text(PLAIN, key)
    assert n == 4
    assert "张三" not in out and "13812345678" not in out and "Li, Si" not in out
    lines = out.splitlines()
    assert lines[0] == "# 台账, exported 2026-12-01" and lines[3] == ""
    assert lines[5] == "M3,000000000003,b1,TQ-1,,,area_master"
    assert seal_ledger_text(out, key) == (out, 0)


def test_the_secrets_file_ledger_key_is_checked() -> None:
    assert parse_secrets(secrets_text(KEY)).ledger_key() == KEY
    with pytest.raises(SecretsError, match=r"\[ledger\].*key.*32 bytes.*got 16"):
        parse_secrets('[ledger]\nkey = "hex:' + "00" * 16 + '"\n')
    with pytest.raises(SecretsError, match="missing"):
        parse_secrets("[ledger]\n")


def test_amic_run_opens_a_sealed_ledger(tmp_path: Path) -> None:
    sealed, _ = seal_ledger_text(PLAIN, PersonalKey(KEY))
    settings = load_settings(setup(tmp_path, sealed))
    got = {m.meter_id: (m.customer, m.phone) for m in settings.meters}
    assert got == {"M1": ("张三", "13812345678"), "M2": ("Li, Si", "13987654321"),
                   "M3": ("", "")}


def test_a_cell_that_does_not_open_is_refused_where_it_is_without_its_content(
        tmp_path: Path) -> None:
    key = PersonalKey(KEY)
    sealed, _ = seal_ledger_text(PLAIN, key)
    # M2's phone cell copied into M1's row: each cell is bound to its meter and column
    rows = sealed.splitlines()
    m2_phone = rows[4].split(",")[5]
    rows[2] = ",".join([*rows[2].split(",")[:5], m2_phone, "customer"])
    cfg = setup(tmp_path, "\n".join(rows) + "\n")
    with pytest.raises(ConfigError) as e:
        load_settings(cfg)
    text = str(e.value)
    assert "ledger.csv:3" in text and "M1" in text and "phone" in text
    assert "does not open" in text and m2_phone not in text and "1398" not in text
    # another key, or none at all
    cfg = setup(tmp_path, sealed, key=OTHER)
    with pytest.raises(ConfigError, match="does not open"):
        load_settings(cfg)
    cfg = setup(tmp_path, sealed, key=None)
    with pytest.raises(ConfigError, match=r"no \[ledger\] key in the secrets file"):
        load_settings(cfg)


def test_amic_ledger_key_and_seal(tmp_path: Path) -> None:
    runner = CliRunner()
    r = runner.invoke(main, ["ledger", "key"])
    assert r.exit_code == 0 and r.output.startswith("[ledger]\nkey = \"base64:")
    cfg = setup(tmp_path, PLAIN, key=None)
    (tmp_path / "ledger.csv").chmod(0o640)
    r = runner.invoke(main, ["ledger", "seal", "--config", str(cfg)])
    assert r.exit_code == 2 and "no [ledger] key" in r.output
    new_key = runner.invoke(main, ["ledger", "key"]).output
    (tmp_path / "secrets.toml").write_text(secrets_text(None) + "\n" + new_key)
    r = runner.invoke(main, ["ledger", "seal", "--config", str(cfg)])
    assert r.exit_code == 0, r.output
    assert "4 cell(s) sealed" in r.output
    on_disk = (tmp_path / "ledger.csv").read_text(encoding="utf-8")
    assert "张三" not in on_disk and "13812345678" not in on_disk
    assert (tmp_path / "ledger.csv").stat().st_mode & 0o777 == 0o640
    assert not [p for p in os.listdir(tmp_path) if p.endswith(".tmp")]
    assert {m.customer for m in load_settings(cfg).meters} == {"张三", "Li, Si", ""}
    r = runner.invoke(main, ["ledger", "check", str(tmp_path / "ledger.csv"), "--config",
                             str(cfg)])
    assert r.exit_code == 0, r.output
    # a ledger with problems is not sealed
    (tmp_path / "ledger.csv").write_text(PLAIN + "M4,000000000001,b1,,王五,,customer\n",
                                         encoding="utf-8")
    r = runner.invoke(main, ["ledger", "seal", "--config", str(cfg)])
    assert r.exit_code == 1 and "duplicate address" in r.output
    assert "王五" in (tmp_path / "ledger.csv").read_text(encoding="utf-8")


async def test_an_api_import_is_sealed_on_disk_and_shown_by_role(tmp_path: Path) -> None:
    async for run in start(tmp_path):
        with open(tmp_path / "secrets.toml", "a") as f:
            f.write(f'\n[ledger]\nkey = "base64:{base64.b64encode(KEY).decode()}"\n')
        good = LEDGER + "M4,000000000004,conc-1,TQ-2,王五,13700001111,customer\n"
        status, _, doc = await call(run, "POST", "/api/v1/ledger", "admin",
                                    raw=good.encode())
        assert status == 200 and doc["status"] == "applied", doc
        on_disk = (tmp_path / "ledger.csv").read_text(encoding="utf-8")
        assert "王五" not in on_disk and "13700001111" not in on_disk
        assert "张三" not in on_disk and on_disk.count("enc:v1:") == 6
        _, _, admin = await call(run, "GET", "/api/v1/meters/M4", "admin")
        _, _, viewer = await call(run, "GET", "/api/v1/meters/M4", "viewer")
        assert (admin["customer"], admin["phone"]) == ("王五", "13700001111")
        assert (viewer["customer"], viewer["phone"]) == ("王*", "1370000****")
        # a restart opens the sealed file
        assert load_settings(tmp_path / "amic.toml").meters[3].customer == "王五"

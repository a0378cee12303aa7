"""API tokens: ``amic api-token``, the ``[api_tokens.NAME]`` tables of the secrets file
(hashes only, refusals that never show a token), the ``[api]`` table, masking."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from click.testing import CliRunner

from collector.api.masking import mask_name, mask_phone
from collector.cli import main
from collector.config import ConfigError, load_settings
from collector.config.secrets import SecretsError, parse_secrets, token_hash


def test_api_token_prints_a_token_once_and_its_table() -> None:
    r = CliRunner().invoke(main, ["api-token", "billing", "--role", "viewer"])
    assert r.exit_code == 0, r.output
    token = r.stdout.strip()
    assert re.fullmatch(r"amic_[A-Za-z0-9_-]{43}", token)
    table = r.stderr.split("not kept:\n", 1)[1]
    assert token not in r.stderr
    secrets = parse_secrets(table)
    found = secrets.api_token(token)
    assert found is not None and (found.name, found.role, found.operator) == (
        "billing", "viewer", "billing")
    assert secrets.api_token(token + "x") is None
    assert token_hash(token) in table
    other = CliRunner().invoke(main, ["api-token", "ops", "--role", "operator",
                                      "--operator", "alice"])
    assert other.stdout.strip() != token
    assert parse_secrets(other.stderr.split("not kept:\n", 1)[1]).api_token(
        other.stdout.strip()).operator == "alice"  # type: ignore[union-attr]
    bad = CliRunner().invoke(main, ["api-token", "x", "--role", "root"])
    assert bad.exit_code == 2


def test_token_tables_are_checked_without_showing_a_token() -> None:
    token = "amic_" + "s" * 43
    with pytest.raises(SecretsError) as info:
        parse_secrets(f'[api_tokens.a]\nhash = "{token}"\nrole = "viewer"\n'
                      '[api_tokens.b]\nhash = "sha256:00"\nrole = "boss"\n'
                      '[api_tokens.c]\nrole = "admin"\nsecret = 1\n', "s.toml")
    assert info.value.problems == [
        's.toml: [api_tokens.a]: key "hash": expected "sha256:" and 64 lower-case hex '
        'digits, got 48 characters (the token itself does not belong here)',
        's.toml: [api_tokens.b]: key "hash": expected "sha256:" and 64 lower-case hex '
        'digits, got 9 characters (the token itself does not belong here)',
        's.toml: [api_tokens.b]: key "role": expected one of viewer, operator, admin, got '
        '"boss"',
        's.toml: [api_tokens.c]: key "secret": unknown key, expected one of hash, role, '
        'operator',
        's.toml: [api_tokens.c]: key "hash": missing: the token\'s "sha256:..." (amic '
        'api-token prints it)']
    assert token not in str(info.value)
    s = parse_secrets(f'[api_tokens.a]\nhash = "{token_hash(token)}"\nrole = "admin"\n')
    assert token not in repr(s.api_token(token)) and s.api_tokens() == ["a"]


BASE = """
[collector]
id = "gw"
data_dir = "data"

[[bus]]
name = "b"
type = "tcp"
host = "127.0.0.1"
port = 1

[[meter]]
meter_id = "M1"
address = "1"
bus = "b"

[schedule.s]
interval = "1m"
quantities = ["voltage_a"]
"""


def test_api_table(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    Path("s.toml").write_text("")
    Path("s.toml").chmod(0o600)
    cfg = Path("amic.toml")
    cfg.write_text(BASE + '[commands]\nsecrets_file = "s.toml"\n[api]\nlisten = "0.0.0.0:8443"'
                   '\n')
    api = load_settings(cfg).api
    assert api is not None and api.secrets_file == tmp_path / "s.toml" and not api.cert_file
    cfg.write_text(BASE + '[api]\nlisten = "8443"\ncert_file = "c.pem"\ntoken = "x"\n')
    with pytest.raises(ConfigError) as info:
        load_settings(cfg)
    text = [str(p) for p in info.value.problems]
    assert any('[api]: key "listen": expected "HOST:PORT"' in t for t in text), text
    assert any('key "cert_file": expected a readable PEM file' in t for t in text), text
    assert any('key "key_file": expected cert_file and key_file together' in t
               for t in text), text
    assert any('key "secrets_file": expected the secrets file holding [api_tokens.NAME]'
               in t for t in text), text
    assert any('key "token"' in t and "hashed in the secrets file" in t for t in text), text
    assert all(t.startswith("amic.toml:") for t in text), text


@pytest.mark.parametrize(("name", "shown"), [("张三", "张*"), ("欧阳娜娜", "欧*"),
                                             ("Smith", "S*"), ("", "")])
def test_mask_name(name: str, shown: str) -> None:
    assert mask_name(name) == shown


@pytest.mark.parametrize(("phone", "shown"), [("13812345678", "1381234****"),
                                              ("1234", "****"), ("", "")])
def test_mask_phone(phone: str, shown: str) -> None:
    assert mask_phone(phone) == shown


def test_a_changed_api_table_needs_a_restart(tmp_path: Path,
                                             monkeypatch: pytest.MonkeyPatch) -> None:
    from collector.service.daemon import restart_needed

    monkeypatch.chdir(tmp_path)
    Path("s.toml").write_text("")
    Path("s.toml").chmod(0o600)
    cfg = Path("amic.toml")
    cfg.write_text(BASE + '[api]\nlisten = "127.0.0.1:8443"\nsecrets_file = "s.toml"\n')
    old = load_settings(cfg)
    cfg.write_text(BASE + '[api]\nlisten = "127.0.0.1:8444"\nsecrets_file = "s.toml"\n')
    assert restart_needed(old, load_settings(cfg)) == ["[api] listen"]
    cfg.write_text(BASE)
    assert restart_needed(old, load_settings(cfg)) == ["[api]"]

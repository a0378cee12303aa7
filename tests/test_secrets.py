"""collector.config.secrets: the file checks, every refusal a user can see, secrets never
shown."""

from __future__ import annotations

import logging
import os
from pathlib import Path

import pytest

from collector.config.secrets import (
    Secret,
    SecretsError,
    UnknownOperator,
    decode_key,
    load_secrets,
    parse_secrets,
)

KEY_HEX = "00112233445566778899aabbccddeeff"
GOOD = f"""
[default]
password = "02123456"
modbus_password = "mb-default"

[meters.M0001]
password = "04abcdef"

[meters.M0002]
modbus_password = "1234"

[operators.alice]
operator_code = "00000001"
key = "hex:{KEY_HEX}"

[operators.bob]
operator_code = "0000000B"
"""

def write(tmp_path: Path, text: str, mode: int = 0o600, name: str = "secrets.toml") -> Path:
    path = tmp_path / name
    path.write_text(text, encoding="utf-8")
    path.chmod(mode)
    return path


def problems(tmp_path: Path, text: str, mode: int = 0o600) -> str:
    path = write(tmp_path, text, mode)
    with pytest.raises(SecretsError) as e:
        load_secrets(path)
    message = str(e.value)
    assert message == "\n".join(e.value.problems)
    assert all(p.startswith(f"{path}: ") for p in e.value.problems)
    # The path holds the test's parameters: take it out so they are not found in it.
    return message.replace(str(path), "FILE")


# ---- accepted ---------------------------------------------------------------------------

def test_good_file_0600(tmp_path: Path) -> None:
    s = load_secrets(write(tmp_path, GOOD))
    own = s.password("M0001")
    default = s.password("M0002")
    assert own is not None and own.reveal() == "04abcdef"
    assert default is not None and default.reveal() == "02123456"
    other = s.password("M9999")
    assert other is not None and other.reveal() == "02123456"
    mb = s.modbus_password("M0002")
    assert mb is not None and mb.reveal() == "1234"
    mb_default = s.modbus_password("M0001")
    assert mb_default is not None and mb_default.reveal() == "mb-default"
    assert s.operators() == ["alice", "bob"]
    assert s.meters() == ["M0001", "M0002"]
    assert s.operator_code("bob").reveal() == "0000000B"
    assert s.operator_key("alice") == bytes.fromhex(KEY_HEX)
    assert s.find_key("alice") == bytes.fromhex(KEY_HEX)
    assert s.find_key("bob") is None
    assert s.find_key("mallory") is None


def test_mode_0400_accepted(tmp_path: Path) -> None:
    assert load_secrets(write(tmp_path, GOOD, 0o400)).operators() == ["alice", "bob"]


def test_no_default_password(tmp_path: Path) -> None:
    s = load_secrets(write(tmp_path, '[meters.M1]\npassword = "02000000"\n'))
    assert s.password("M2") is None
    assert s.modbus_password("M1") is None
    assert s.operators() == []


def test_empty_file_is_no_secrets(tmp_path: Path) -> None:
    s = load_secrets(write(tmp_path, ""))
    assert s.password("M1") is None and s.operators() == []


@pytest.mark.parametrize("text", [
    f"hex:{KEY_HEX}", KEY_HEX, f"HEX: {KEY_HEX.upper()}",
    "base64:ABEiM0RVZneImaq7zN3u/w==",
])
def test_key_forms(text: str) -> None:
    assert decode_key(text) == bytes.fromhex(KEY_HEX)


# ---- the file itself --------------------------------------------------------------------

@pytest.mark.parametrize("mode", [0o644, 0o640, 0o604, 0o660, 0o610])
def test_mode_refused(tmp_path: Path, mode: int) -> None:
    message = problems(tmp_path, GOOD, mode)
    assert f"mode {mode:04o}" in message
    assert "chmod 600 FILE" in message


def test_mode_0644_message(tmp_path: Path) -> None:
    message = problems(tmp_path, GOOD, 0o644)
    assert "0644" in message and "chmod 600" in message
    assert "04abcdef" not in message


def test_missing_file(tmp_path: Path) -> None:
    with pytest.raises(SecretsError, match="no such file"):
        load_secrets(tmp_path / "nope.toml")


def test_directory_refused(tmp_path: Path) -> None:
    d = tmp_path / "dir"
    d.mkdir(mode=0o700)
    with pytest.raises(SecretsError, match="not a regular file \\(a directory\\)"):
        load_secrets(d)


def test_fifo_refused_without_hanging(tmp_path: Path) -> None:
    fifo = tmp_path / "fifo"
    os.mkfifo(fifo, 0o600)
    with pytest.raises(SecretsError, match="not a regular file \\(a FIFO\\)"):
        load_secrets(fifo)


def test_unreadable(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = write(tmp_path, GOOD, 0o000)
    if os.geteuid() == 0:  # root reads any file: make the open fail as it would for others
        def refuse(*args: object, **kwargs: object) -> int:
            raise PermissionError(13, "Permission denied")
        monkeypatch.setattr(os, "open", refuse)
    with pytest.raises(SecretsError, match=f"not readable by uid {os.geteuid()}"):
        load_secrets(path)


def test_other_owner_refused(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = write(tmp_path, GOOD)
    uid = os.stat(path).st_uid
    # Pretend amic runs as another (non-root) account: the file is then someone else's.
    monkeypatch.setattr(os, "geteuid", lambda: uid + 1 if uid + 1 != 0 else uid + 2)
    with pytest.raises(SecretsError, match=f"owned by uid {uid}, but amic runs as uid"):
        load_secrets(path)


def test_root_may_use_another_owners_file(tmp_path: Path,
                                          monkeypatch: pytest.MonkeyPatch) -> None:
    path = write(tmp_path, GOOD)
    monkeypatch.setattr(os, "geteuid", lambda: 0)
    assert load_secrets(path).operators() == ["alice", "bob"]


def test_bad_toml_line_and_column(tmp_path: Path) -> None:
    message = problems(tmp_path, '[default]\npassword = 02123456\n')
    assert "line 2, column" in message and "not valid TOML" in message
    assert "02123456" not in message


def test_not_utf8(tmp_path: Path) -> None:
    path = tmp_path / "secrets.toml"
    path.write_bytes(b'[default]\npassword = "\xff"\n')
    path.chmod(0o600)
    with pytest.raises(SecretsError, match="line 2: not UTF-8"):
        load_secrets(path)


# ---- the content ------------------------------------------------------------------------

@pytest.mark.parametrize("value, found", [
    ("0212345", "got 7 characters"),
    ("021234567", "got 9 characters"),
    ("0212345g", "got 8 characters, not all of them hex digits"),
    ("", "got 0 characters"),
])
def test_bad_password(tmp_path: Path, value: str, found: str) -> None:
    message = problems(tmp_path, f'[meters.M0001]\npassword = "{value}"\n')
    assert '[meters.M0001]: key "password": expected 8 hex digits' in message
    assert found in message
    if value:
        assert value not in message


def test_password_as_number(tmp_path: Path) -> None:
    message = problems(tmp_path, "[default]\npassword = 12345678\n")
    assert 'key "password": expected a string, got an integer (write the value in quotes)' \
        in message
    assert "12345678" not in message


def test_bad_operator_code(tmp_path: Path) -> None:
    message = problems(tmp_path, '[operators.alice]\noperator_code = "0000001"\n')
    assert '[operators.alice]: key "operator_code": expected 8 hex digits, got 7 characters' \
        in message
    message = problems(tmp_path, '[operators.alice]\noperator_code = "1"\n')
    assert "got 1 character" in message and "characters" not in message


def test_missing_operator_code(tmp_path: Path) -> None:
    message = problems(tmp_path, f'[operators.alice]\nkey = "{KEY_HEX}"\n')
    assert '[operators.alice]: key "operator_code": missing' in message


@pytest.mark.parametrize("key, found", [
    ("hex:0011", "expected at least 16 bytes, got 2"),
    ("base64:AAAA", "expected at least 16 bytes, got 3"),
    ("hex:zz", "got not hex digits"),
    ("base64:!!!!", "got not base64"),
    ("b64:AAAA", "got an unknown prefix"),
])
def test_bad_key(tmp_path: Path, key: str, found: str) -> None:
    message = problems(tmp_path, f'[operators.alice]\noperator_code = "00000001"\n'
                                 f'key = "{key}"\n')
    assert '[operators.alice]: key "key": ' in message and found in message
    assert key.partition(":")[2] not in message


def test_unknown_keys_with_hint(tmp_path: Path) -> None:
    message = problems(tmp_path, '[meters.M0001]\npasword = "02123456"\n'
                                 '[operators.alice]\noperator_code = "00000001"\nkeys = "x"\n'
                                 '[defaults]\n')
    assert '[meters.M0001]: key "pasword": unknown key' in message
    assert 'did you mean "password"?' in message
    assert '[operators.alice]: key "keys": unknown key' in message
    assert 'did you mean "key"?' in message
    assert 'the top level: key "defaults": unknown key' in message
    assert 'did you mean "default"?' in message


def test_wrong_shapes(tmp_path: Path) -> None:
    message = problems(tmp_path, 'meters = "M0001"\n[operators]\nalice = "00000001"\n')
    assert 'the top level: key "meters": expected a table, got a string' in message
    assert '[operators]: key "alice": expected a table, got a string' in message
    assert "00000001" not in message


def test_every_problem_at_once(tmp_path: Path) -> None:
    text = ('[default]\npassword = "1"\n'
            '[meters.M0001]\npassword = "xyz"\ncolour = "red"\n'
            '[operators.alice]\noperator_code = "1"\nkey = "hex:00"\n')
    path = write(tmp_path, text, 0o644)
    with pytest.raises(SecretsError) as e:
        load_secrets(path)
    assert len(e.value.problems) == 6
    message = str(e.value)
    for part in ("mode 0644", "[default]: key \"password\"", "[meters.M0001]: key \"password\"",
                 "key \"colour\"", "[operators.alice]: key \"operator_code\"",
                 "[operators.alice]: key \"key\""):
        assert part in message


def test_quoted_meter_id(tmp_path: Path) -> None:
    message = problems(tmp_path, '[meters."M 1"]\npassword = "1"\n')
    assert '[meters."M 1"]: key "password"' in message


def test_unknown_operator(tmp_path: Path) -> None:
    s = load_secrets(write(tmp_path, GOOD))
    with pytest.raises(UnknownOperator) as e:
        s.operator_code("alise")
    assert isinstance(e.value, KeyError) and isinstance(e.value, SecretsError)
    assert e.value.operator == "alise"
    assert 'no operator "alise" in [operators]' in str(e.value)
    assert 'did you mean "alice"?' in str(e.value)
    with pytest.raises(UnknownOperator):
        s.operator_key("mallory")


def test_operator_without_key(tmp_path: Path) -> None:
    s = load_secrets(write(tmp_path, GOOD))
    with pytest.raises(SecretsError, match=r'\[operators.bob\] has no "key"'):
        s.operator_key("bob")


def test_parse_secrets_without_a_file() -> None:
    s = parse_secrets(GOOD)
    assert s.file == "<string>"
    with pytest.raises(SecretsError, match="<x>: line 2, column 5: not valid TOML"):
        parse_secrets("[a]\nb = = 1\n", "<x>")
    with pytest.raises(SecretsError, match=r"<x>: line 1: not valid TOML: .* at the end"):
        parse_secrets("[[", "<x>")


# ---- never shown ------------------------------------------------------------------------

def test_secret_never_shown() -> None:
    s = Secret("04abcdef")
    assert repr(s) == str(s) == f"{s}" == f"{s!r}" == f"{s:>20}" == "***"
    assert "%s %r" % (s, s) == "*** ***"  # noqa: UP031 - the old style is what logging uses
    assert "04abcdef" not in repr([s, {"p": s}])
    assert s.reveal() == "04abcdef"
    assert s == Secret("04abcdef") and s != Secret("04abcdee")
    assert len({s, Secret("04abcdef")}) == 1
    assert not hasattr(s, "__dict__")


def test_secrets_object_never_shown(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    s = load_secrets(write(tmp_path, GOOD))
    log = logging.getLogger("amic.test")
    with caplog.at_level(logging.DEBUG, logger="amic.test"):
        log.info("password %s code %r", s.password("M0001"), s.operator_code("alice"))
        log.info("secrets %s %r", s, s)
        log.info("f-string %s", f"{s.password('M0002')} {s}")
        log.info("dict %s", vars(s))
    text = caplog.text
    for secret in ("04abcdef", "02123456", "00000001", "mb-default", KEY_HEX,
                   repr(bytes.fromhex(KEY_HEX))[2:-1]):
        assert secret not in text
    assert "***" in text and "alice" in text

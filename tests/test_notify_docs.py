"""What README "Notifications" shows: its configuration loads, its receiver's check
accepts amic's signature and nothing else, the kinds with built-in texts are the ones
listed."""

from __future__ import annotations

import re
from pathlib import Path

from collector.config import load_settings
from collector.notify import TEMPLATES, sign

ROOT = Path(__file__).resolve().parents[1]
README = (ROOT / "README.md").read_text()
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


def section() -> str:
    start = README.index("\n## Notifications\n")
    return README[start:README.index("\n## ", start + 1)]


def block(lang: str) -> str:
    (got,) = re.findall(rf"^```{lang}\n(.*?)^```", section(), re.M | re.S)
    return str(got)


def test_the_readme_notify_example_is_a_valid_configuration(tmp_path: Path) -> None:
    for name in ("notify-webhook.key", "smtp.pass", "sms.token"):
        (tmp_path / name).write_text("not-a-real-secret\n")
        (tmp_path / name).chmod(0o600)
    (tmp_path / "amic.toml").write_text(BASE + block("toml"))
    s = load_settings(tmp_path / "amic.toml")
    assert s.notify is not None
    assert [c.name for c in s.notify.channels] == ["ops", "mail", "sms"]
    assert s.notify.quiet_hours == (22.0, 7.0)


def test_the_readme_receiver_check_accepts_amics_signature_only() -> None:
    scope: dict[str, object] = {}
    exec(block("python"), scope)  # the receiver's code as the README gives it
    check = scope["signed_by_amic"]
    assert callable(check)
    body = b'{"id": "event:1:ops", "kind": "topup"}'
    assert check(b"k", body, sign("k", body)) is True
    assert check(b"k", body + b" ", sign("k", body)) is False
    assert check(b"other", body, sign("k", body)) is False
    assert check(b"k", body, None) is False


def test_the_readme_lists_the_kinds_with_built_in_texts() -> None:
    listed = section().split("Built in for", 1)[1].split(" in `zh`", 1)[0]
    assert set(re.findall(r"`(\w+)`", listed)) == set(TEMPLATES)

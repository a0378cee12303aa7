"""Message texts per kind, in Chinese and English; ``[[notify_sms]] templates`` overrides
them.  Placeholders: ``{meter}``, ``{value}`` (the balance in yuan, or the event's value),
``{time}`` (local time), ``{detail}``, ``{kind}``."""

from __future__ import annotations

import datetime as dt
from collections.abc import Mapping
from typing import Any, Final, Literal
from zoneinfo import ZoneInfo

from collector.config.notify import template_problem as template_problem

Language = Literal["zh", "en"]
LANGUAGES: Final = ("zh", "en")

TEMPLATES: Final[dict[str, dict[str, str]]] = {
    "balance_warning_1": {
        "zh": "【电费提醒】您的电表{meter}余额为{value}元，请及时充值。",
        "en": "Meter {meter}: your balance is {value} yuan. Please top up soon.",
    },
    "balance_warning_2": {
        "zh": "【电费提醒】您的电表{meter}余额仅剩{value}元，即将停电，请尽快充值。",
        "en": "Meter {meter}: only {value} yuan left. Top up now to keep your power on.",
    },
    "balance_exhausted": {
        "zh": "【欠费通知】您的电表{meter}余额已用完（{value}元），宽限期后将停电，请立即充值。",
        "en": "Meter {meter}: your balance is used up ({value} yuan). Power is cut after "
              "the grace period unless you top up.",
    },
    "topup": {
        "zh": "【充值成功】您的电表{meter}已到账，当前余额{value}元。",
        "en": "Meter {meter}: top-up received, balance {value} yuan.",
    },
    "relay_tripped": {
        "zh": "【停电通知】您的电表{meter}已于{time}停电。充值后将自动恢复供电。",
        "en": "Meter {meter}: power was cut at {time}. It is restored after a top-up.",
    },
    "relay_restored": {
        "zh": "【复电通知】您的电表{meter}已于{time}恢复供电。",
        "en": "Meter {meter}: power restored at {time}.",
    },
}
# Any other kind (an alarm chosen by kind or severity).
FALLBACK: Final[dict[str, str]] = {
    "zh": "【告警】电表{meter}：{kind}，{time}。{detail}",
    "en": "Meter {meter}: {kind} at {time}. {detail}",
}


def render(kind: str, payload: Mapping[str, Any], language: Language, tz: str,
           overrides: Mapping[str, str] | None = None) -> str:
    """The text of a message."""
    text = (overrides or {}).get(kind) or TEMPLATES.get(kind, FALLBACK)[language]
    ts = dt.datetime.fromtimestamp(int(payload.get("ts") or 0) / 1000, ZoneInfo(tz))
    value = payload.get("value")
    shown = "-" if value is None else f"{float(value):.2f}"
    return text.format(meter=payload.get("meter") or "-", value=shown,
                       time=ts.strftime("%Y-%m-%d %H:%M"), detail=payload.get("detail", ""),
                       kind=kind).strip()

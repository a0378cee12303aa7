"""``[notify]`` and its channels: ``[[notify_webhook]]``, ``[[notify_email]]``,
``[[notify_sms]]`` (collector/notify).  Secrets (HMAC key, SMTP password, gateway token)
are read from files only the owner may access, never from the configuration."""

from __future__ import annotations

import re
import string
from collections.abc import Mapping
from typing import Any

from .convert import path_conv
from .fields import key_of
from .messages import quote as _q
from .problems import show_value
from .schema import (
    NOTIFY_EMAIL_KEYS,
    NOTIFY_KEYS,
    NOTIFY_SMS_KEYS,
    NOTIFY_WEBHOOK_KEYS,
)
from .settings import (
    EmailSettings,
    NotifyEmailTable,
    NotifySettings,
    NotifySmsTable,
    NotifyTable,
    NotifyWebhookTable,
    SmsSettings,
    Table,
    WebhookSettings,
    wrapping_window,
)
from .tables import TablesMixin

_NEVER_HERE = "never in the file: name a file holding it with {key} (mode 0600)"
# An event kind as written: the kinds themselves are collector.polling's table, which the
# configuration may not import (collector/notify warns at start of a kind it lacks).
_KIND = re.compile(r"[a-z][a-z0-9_]{0,63}")
_KIND_TEXT = 'event kinds (docs/schema.md) or relay_tripped, relay_restored'
TEMPLATE_FIELDS = frozenset({"meter", "value", "time", "detail", "kind"})


def template_problem(text: str) -> str:
    """Why ``text`` is not a usable message template ('' when it is)."""
    try:
        names = {f for _, f, _, _ in string.Formatter().parse(text) if f is not None}
    except ValueError as e:
        return str(e)
    unknown = sorted(n for n in names if n not in TEMPLATE_FIELDS)
    return f"unknown placeholder {{{unknown[0]}}}" if unknown else ""


class NotifyMixin(TablesMixin):
    """The notification tables (secret files read as [mqtt] password_file is)."""

    def notify(self, data_all: Mapping[str, object]) -> NotifySettings | None:
        value = data_all.get("notify")
        channels = [data_all.get(k) for k in ("notify_webhook", "notify_email", "notify_sms")]
        if value is None and not any(channels):
            return None
        data: dict[str, object] = {}
        if value is not None:
            got = self.table("", "notify", value, "a [notify] table")
            if got is None:
                return None
            data = got
        t = "notify"
        self.unknown_keys(t, data, NOTIFY_KEYS)
        N = NotifyTable
        tz = self.opt(t, data, N, "tz")
        quiet: tuple[float, float] | None = None
        if "quiet_hours" in data:
            try:
                got_window = wrapping_window(data["quiet_hours"])
                if not isinstance(got_window, tuple):
                    raise ValueError('local hours such as "22:00-07:00"')
                quiet = got_window
            except ValueError as e:
                self.add(t, "quiet_hours", str(e), show_value(data["quiet_hours"]))
        urgent = self.opt(t, data, N, "urgent_severity")
        per_hour = self.opt(t, data, N, "max_per_hour")
        retry_min = self.opt(t, data, N, "retry_min")
        retry_max = self.opt(t, data, N, "retry_max")
        interval = self.opt(t, data, N, "interval")
        if retry_min is not None and retry_max is not None and retry_max < retry_min:
            self.add(t, "retry_max", f"at least retry_min ({retry_min:g} s)",
                     f"{retry_max:g} s")
        seen: set[str] = set()
        webhooks = [w for i, item in enumerate(self.array_of_tables(
            "notify_webhook", channels[0], "[[notify_webhook]] tables"))
            if (w := self.webhook(f"notify_webhook[{i}]", item, seen)) is not None]
        emails = [m for i, item in enumerate(self.array_of_tables(
            "notify_email", channels[1], "[[notify_email]] tables"))
            if (m := self.email(f"notify_email[{i}]", item, seen)) is not None]
        sms = [s for i, item in enumerate(self.array_of_tables(
            "notify_sms", channels[2], "[[notify_sms]] tables"))
            if (s := self.sms(f"notify_sms[{i}]", item, seen)) is not None]
        if tz is None or urgent is None or per_hour is None or retry_min is None \
                or retry_max is None or interval is None:
            return None
        return NotifySettings(tz=tz, quiet_hours=quiet, urgent_severity=urgent,
                              max_per_hour=per_hour, retry_min=retry_min,
                              retry_max=retry_max, interval=interval,
                              webhooks=tuple(webhooks), emails=tuple(emails), sms=tuple(sms))

    # -- the channels

    def _channel(self, t: str, item: object, what: str, keys: tuple[str, ...],
                 model: type[Table], seen: set[str],
                 secrets: tuple[str, ...]) -> tuple[dict[str, object], dict[str, Any]] | None:
        """The keys every channel has (name, rule, policies); None if unusable."""
        data = self.table(t, None, item, what)
        if data is None:
            return None
        raw = data.get("name")
        name = raw if isinstance(raw, str) else None
        self.unknown_keys(t, data, keys, name=name, elsewhere={
            k.removesuffix("_file"): _NEVER_HERE.format(key=k) for k in secrets})
        common: dict[str, Any] = {
            f: (self.req if f == "name" else self.opt)(t, data, model, f, name=name)
            for f in ("name", "min_severity", "quiet", "rate_limited", "timeout")}
        events: list[str] = []
        if "events" in data:
            for k in self.strings(t, data, "events", "a list of event kinds, e.g. "
                                  '["balance_warning_1", "relay_tripped"]') or []:
                if _KIND.fullmatch(k):
                    events.append(k)
                else:
                    self.add(t, "events", _KIND_TEXT, _q(k), name=name)
        common["events"] = tuple(events)
        if not events and common["min_severity"] is None and "min_severity" not in data:
            self.add(t, "events", "events, min_severity or both (what the channel sends)",
                     "neither", name=name)
            return None
        if common["name"] in seen:
            self.add(t, "name", "a channel name used once in [notify]",
                     _q(common["name"]), name=name)
            return None
        if common["name"] is not None:
            seen.add(common["name"])
        if any(v is None for k, v in common.items() if k != "min_severity") or \
                (common["min_severity"] is None and "min_severity" in data):
            return None
        return data, common

    def _secret_of(self, t: str, data: Mapping[str, object], model: type[Table],
                   field: str) -> str | None:
        key = key_of(model, field)
        if key not in data:
            return None
        value: str | None = self.secret(t, data, key, "")
        return value

    def webhook(self, t: str, item: object, seen: set[str]) -> WebhookSettings | None:
        W = NotifyWebhookTable
        got = self._channel(t, item, "a [[notify_webhook]] table", NOTIFY_WEBHOOK_KEYS, W,
                            seen, ("secret_file",))
        if got is None:
            return None
        data, common = got
        url = self.req(t, data, W, "url", name=common["name"])
        secret = self._secret_of(t, data, W, "secret")
        if url is None or ("secret_file" in data and secret is None):
            return None
        return WebhookSettings(**common, url=url, secret=secret)

    def email(self, t: str, item: object, seen: set[str]) -> EmailSettings | None:
        E = NotifyEmailTable
        got = self._channel(t, item, "a [[notify_email]] table", NOTIFY_EMAIL_KEYS, E, seen,
                            ("password_file",))
        if got is None:
            return None
        data, common = got
        name = common["name"]
        host = self.req(t, data, E, "host", name=name)
        port = self.opt(t, data, E, "port", name=name)
        starttls = self.opt(t, data, E, "starttls", name=name)
        ca = self.optional(t, data, "ca_file", path_conv("a file path"), None, name=name)
        ca_file = self.relative(ca) if ca else None
        if ca_file is not None and not ca_file.is_file():
            self.add(t, "ca_file", "a readable file", f"{ca_file} (no such file)", name=name)
        username = self.opt(t, data, E, "username", name=name)
        password = self._secret_of(t, data, E, "password")
        if password is not None and username is None:
            self.add(t, "username", "a username with the password", "nothing", name=name)
        if password is not None and starttls is False:
            self.add(t, "starttls", "starttls = true when a password is sent (it would go "
                     "in clear)", "false", name=name)
        sender = self.req(t, data, E, "sender", name=name)
        to: list[str] = []
        if "to" not in data:
            self.add(t, "to", "a list of email addresses", "nothing", name=name)
        else:
            to = self.strings(t, data, "to", "a list of email addresses") or []
            for a in to:
                if "@" not in a:
                    self.add(t, "to", "email addresses", _q(a), name=name)
        if host is None or port is None or starttls is None or sender is None or not to \
                or ("password_file" in data and password is None):
            return None
        return EmailSettings(**common, host=host, port=port, starttls=starttls,
                             ca_file=ca_file, username=username, password=password,
                             sender=sender, to=tuple(to))

    def sms(self, t: str, item: object, seen: set[str]) -> SmsSettings | None:
        S = NotifySmsTable
        got = self._channel(t, item, "a [[notify_sms]] table", NOTIFY_SMS_KEYS, S, seen,
                            ("token_file",))
        if got is None:
            return None
        data, common = got
        name = common["name"]
        url = self.req(t, data, S, "url", name=name)
        token = self._secret_of(t, data, S, "token")
        language = self.opt(t, data, S, "language", name=name)
        templates: list[tuple[str, str]] = []
        raw = data.get("templates", {})
        if not isinstance(raw, dict):
            self.add(t, "templates", "a table of texts per message kind: "
                     '{ balance_warning_1 = "..." }', show_value(raw), name=name)
        else:
            for k, v in raw.items():
                problem = template_problem(v) if isinstance(v, str) else "not a string"
                if not _KIND.fullmatch(k):
                    self.add(t, "templates", _KIND_TEXT + " as keys", _q(k), name=name)
                elif problem:
                    self.add(t, "templates", "a text with {meter}, {value}, {time}, "
                             "{detail} or {kind}", f"{_q(k)}: {problem}", name=name)
                else:
                    templates.append((k, v))
        if url is None or language is None or ("token_file" in data and token is None):
            return None
        return SmsSettings(**common, url=url, token=token, language=language,
                           templates=tuple(templates))

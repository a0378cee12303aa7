"""Delivery of one message on one channel: a webhook, email, an SMS gateway.

Each ``send`` is blocking (run off the event loop) and either returns (delivered), or
raises :class:`Retry` (an outage: refused connection, timeout, 5xx, an SMTP error; the
message is kept and tried again) or :class:`GiveUp` (refused for good: a 4xx answer, no
phone in the ledger).  Every request carries the message's idempotency key, so a
receiver that got a message whose delivery was not recorded (a crash in between) can
drop the second copy: header ``X-Amic-Delivery`` (webhook), field ``id`` (SMS),
``Message-ID`` (email).
"""

from __future__ import annotations

import hashlib
import hmac
import json
import smtplib
import ssl
import urllib.error
import urllib.request
from collections.abc import Mapping
from email.message import EmailMessage
from typing import Any, Final

from collector.config.settings import (
    EmailSettings,
    MeterSettings,
    NotifyChannel,
    SmsSettings,
    WebhookSettings,
)

from .outbox import Message
from .templates import render

SIGNATURE_HEADER: Final = "X-Amic-Signature"  # "sha256=" + hex HMAC-SHA256 of the body
DELIVERY_HEADER: Final = "X-Amic-Delivery"  # the idempotency key
USER_AGENT: Final = "amic-notify/1"


class Retry(Exception):
    """The channel is out (kept, tried again later)."""


class GiveUp(Exception):
    """The message is refused for good."""


def mask_phone(phone: str) -> str:
    """A phone number for logs: its last four digits hidden."""
    p = phone.strip()
    return p[:-4] + "****" if len(p) > 4 else "****"


def sign(key: str, body: bytes) -> str:
    """The signature header's value of ``body``."""
    return "sha256=" + hmac.new(key.encode(), body, hashlib.sha256).hexdigest()


def verify(key: str, body: bytes, header: str | None) -> bool:
    """What a receiver checks (constant-time)."""
    return header is not None and hmac.compare_digest(sign(key, body), header)


def _post(url: str, body: bytes, headers: Mapping[str, str], timeout: float) -> None:
    req = urllib.request.Request(url, data=body, method="POST", headers={
        "Content-Type": "application/json; charset=utf-8", "User-Agent": USER_AGENT,
        **headers})
    try:
        with urllib.request.urlopen(req, timeout=timeout) as resp:
            resp.read()
    except urllib.error.HTTPError as e:
        status = e.code
        e.close()
        if status >= 500 or status in (408, 429):
            raise Retry(f"HTTP {status}") from None
        raise GiveUp(f"HTTP {status}") from None
    except (urllib.error.URLError, OSError) as e:
        reason = getattr(e, "reason", e)
        raise Retry(f"{type(reason).__name__}: {reason}") from None


def event_body(msg: Message, text: str) -> dict[str, Any]:
    """The JSON a webhook receives."""
    return {"id": msg.key, "channel": msg.channel, "kind": msg.kind, "meter": msg.meter,
            "severity": msg.severity, "created": msg.created, "text": text,
            "event": msg.payload}


class Channel:
    """One configured channel."""

    def __init__(self, settings: NotifyChannel, tz: str) -> None:
        self.settings = settings
        self.tz = tz

    @property
    def name(self) -> str:
        return self.settings.name

    def send(self, msg: Message, meter: MeterSettings | None) -> None:
        raise NotImplementedError


class WebhookChannel(Channel):
    settings: WebhookSettings

    def send(self, msg: Message, meter: MeterSettings | None) -> None:
        s = self.settings
        body = json.dumps(event_body(msg, render(msg.kind, msg.payload, "en", self.tz)),
                          ensure_ascii=False, sort_keys=True).encode()
        headers = {DELIVERY_HEADER: msg.key}
        if s.secret:
            headers[SIGNATURE_HEADER] = sign(s.secret, body)
        _post(s.url, body, headers, s.timeout)


class SmsChannel(Channel):
    settings: SmsSettings

    def send(self, msg: Message, meter: MeterSettings | None) -> None:
        s = self.settings
        if meter is None or not meter.phone:
            raise GiveUp(f"meter {msg.meter}: no phone in the ledger")
        text = render(msg.kind, msg.payload, s.language, self.tz, dict(s.templates))
        body = json.dumps({"id": msg.key, "phone": meter.phone, "text": text,
                           "kind": msg.kind}, ensure_ascii=False).encode()
        headers = {"Authorization": f"Bearer {s.token}"} if s.token else {}
        _post(s.url, body, {**headers, DELIVERY_HEADER: msg.key}, s.timeout)

    def recipient(self, meter: MeterSettings | None) -> str:
        return mask_phone(meter.phone) if meter is not None and meter.phone else "-"


class EmailChannel(Channel):
    settings: EmailSettings

    def send(self, msg: Message, meter: MeterSettings | None) -> None:
        s = self.settings
        em = EmailMessage()
        em["From"] = s.sender
        em["To"] = ", ".join(s.to)
        em["Subject"] = f"[amic] {msg.kind} {msg.meter or ''}".strip()
        em["Message-ID"] = f"<{msg.key.replace(':', '.')}@amic>"
        em[DELIVERY_HEADER] = msg.key
        em.set_content("\n\n".join((render(msg.kind, msg.payload, "zh", self.tz),
                                    render(msg.kind, msg.payload, "en", self.tz))))
        try:
            with smtplib.SMTP(s.host, s.port, timeout=s.timeout) as smtp:
                if s.starttls:
                    ctx = ssl.create_default_context(
                        cafile=str(s.ca_file) if s.ca_file else None)
                    smtp.starttls(context=ctx)
                if s.username:
                    smtp.login(s.username, s.password or "")
                smtp.send_message(em)
        except smtplib.SMTPAuthenticationError as e:
            raise Retry(f"SMTP login refused ({e.smtp_code})") from None
        except smtplib.SMTPRecipientsRefused as e:
            raise GiveUp(f"recipients refused: {', '.join(e.recipients)}") from None
        except (smtplib.SMTPException, OSError, ssl.SSLError) as e:  # timeouts are OSError
            raise Retry(f"{type(e).__name__}: {e}") from None


def make_channel(settings: NotifyChannel, tz: str) -> Channel:
    if isinstance(settings, WebhookSettings):
        return WebhookChannel(settings, tz)
    if isinstance(settings, EmailSettings):
        return EmailChannel(settings, tz)
    if isinstance(settings, SmsSettings):
        return SmsChannel(settings, tz)
    raise TypeError(f"no channel for {type(settings).__name__}")

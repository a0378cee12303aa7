"""Notifications (``[notify]``): events to a webhook, email and an SMS gateway.

The parts other components use:

* :class:`Notifications` (``service``): built on a :class:`~collector.store.Store`, runs
  its rounds in the daemon (``start``/``stop``), or one round at a time (``run_once``);
* :class:`Outbox` (``outbox``): the store's ``notify_outbox`` table: what is pending,
  delivered or refused (``rows``, ``counts``);
* ``channels``: :func:`sign`/:func:`verify` of the webhook signature, :func:`mask_phone`;
* ``templates``: the texts per kind, in Chinese and English.

Messages come from the store, not from the event loop: events and confirmed relay
switchings are read after a cursor once committed, so nothing raised before a crash is
lost, and each becomes its messages once.
"""

from __future__ import annotations

from .channels import (
    DELIVERY_HEADER,
    SIGNATURE_HEADER,
    GiveUp,
    Retry,
    mask_phone,
    sign,
    verify,
)
from .outbox import CURSOR, RELAY_KINDS, Message, Outbox, Source
from .service import Notifications, Round, quiet_until
from .templates import FALLBACK, LANGUAGES, TEMPLATES, render, template_problem

__all__ = [
    "CURSOR",
    "DELIVERY_HEADER",
    "FALLBACK",
    "LANGUAGES",
    "RELAY_KINDS",
    "SIGNATURE_HEADER",
    "TEMPLATES",
    "GiveUp",
    "Message",
    "Notifications",
    "Outbox",
    "Retry",
    "Round",
    "Source",
    "mask_phone",
    "quiet_until",
    "render",
    "sign",
    "template_problem",
    "verify",
]

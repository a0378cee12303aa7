"""Customers' personal data as each API role may see it (issue 17: masked by role)."""

from __future__ import annotations


def mask_name(name: str) -> str:
    """Only the family name: the first character, then ``*`` (``张三`` -> ``张*``)."""
    name = name.strip()
    return f"{name[0]}*" if name else ""


def mask_phone(phone: str) -> str:
    """The number without its last four digits (``13812345678`` -> ``1381234****``)."""
    phone = phone.strip()
    if not phone:
        return ""
    return phone[:-4] + "****" if len(phone) > 4 else "****"

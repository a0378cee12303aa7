"""Dial-in DTUs: the DTU keys of a ``[[listener]]``, the ``[[dtu]]`` tables, and the meters
on a DTU (their protocol must be what the listener passes through)."""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import TypedDict

from drivers.meters import KINDS

from .base import LoaderBase
from .fields import default_of
from .messages import did_you_mean as _did_you_mean
from .messages import quote as _q
from .problems import show_value
from .schema import DTU_KEYS
from .selectors import Row
from .settings import (
    DTU_PROTOCOLS,
    ConcentratorSettings,
    DtuSettings,
    DtuTable,
    ListenerTable,
)

DTU_LISTENER_KEYS = ("registration", "registration_length", "registration_regex", "heartbeat")
_DTU_PROTOCOLS_TEXT = " or ".join(f'protocol = "{p}"' for p in DTU_PROTOCOLS)
_PACKET_TEXT = 'the heartbeat packet: ASCII text, or "hex:" and its bytes in hex'
_REGEX_TEXT = ('a regular expression over the packet\'s bytes whose group "id" (else its '
               "first group, else the match) is the DTU id")
_ASCII_ID = re.compile(r"[\x21-\x7e]+")


def packet(text: str) -> bytes:
    """``hex:0102AB`` as bytes, else the ASCII text; ValueError if neither, or empty."""
    hexa = text.lower().startswith("hex:")
    raw = bytes.fromhex(text[4:]) if hexa else text.encode("ascii")
    if not raw:
        raise ValueError("empty")
    return raw


class DtuListenerKeys(TypedDict):
    """The DTU keys of a [[listener]], as :class:`ListenerSettings` takes them."""

    registration: str
    registration_length: int | None
    registration_regex: str | None
    heartbeat: bytes | None


def _family_protocols(family: str) -> str:
    return " or ".join(_q(k) for k, v in KINDS.items() if v.frame_family() == family)


class DtuMixin(LoaderBase):
    """DTU listeners, ``[[dtu]]`` tables and the meters behind a DTU."""

    def dtu_listener(self, t: str, data: Mapping[str, object], protocol: object,
                     name: str | None) -> DtuListenerKeys | None:
        """The DTU keys of the listener ``data`` (their defaults for a 3761 one, where
        they are refused); None after a problem."""
        L = ListenerTable
        given = [k for k in DTU_LISTENER_KEYS if k in data]
        if protocol not in DTU_PROTOCOLS:
            for key in given if protocol is not None else ():
                self.add(t, key, f"no {key}: {key} is for DTU listeners "
                         f"({_DTU_PROTOCOLS_TEXT})", show_value(data[key]), name=name)
            if protocol is not None and given:
                return None
            return DtuListenerKeys(registration=default_of(L, "registration"),
                                   registration_length=None, registration_regex=None,
                                   heartbeat=None)
        ok = True
        if "login_reply" in data:
            self.add(t, "login_reply", 'no login_reply: it is for protocol = "3761" '
                     "listeners (DTUs neither log in nor expect a reply)",
                     show_value(data["login_reply"]), name=name)
            ok = False
        registration = self.opt(t, data, L, "registration", name=name)
        length = self.opt(t, data, L, "registration_length", name=name)
        ok = ok and registration is not None and (length is not None
                                                  or "registration_length" not in data)
        regex: str | None = None
        if registration == "ascii" and "registration_regex" in data:
            self.add(t, "registration_regex", 'no registration_regex with registration = '
                     '"ascii" (set registration = "regex" to use it)',
                     show_value(data["registration_regex"]), name=name)
            ok = False
        elif registration == "regex":
            if "registration_length" in data:
                self.add(t, "registration_length", 'no registration_length with '
                         'registration = "regex" (the expression says what the id is)',
                         show_value(data["registration_length"]), name=name)
                ok = False
            regex = self._regex(t, data, name)
            ok = ok and regex is not None
        beat: bytes | None = None
        if "heartbeat" in data:
            raw = data["heartbeat"]
            try:
                if not isinstance(raw, str):
                    raise TypeError
                beat = packet(raw)
            except (ValueError, TypeError):
                self.add(t, "heartbeat", _PACKET_TEXT, show_value(raw), name=name)
                ok = False
        if not ok:
            return None
        return DtuListenerKeys(registration=registration, registration_length=length,
                               registration_regex=regex, heartbeat=beat)

    def _regex(self, t: str, data: Mapping[str, object], name: str | None) -> str | None:
        if "registration_regex" not in data:
            self.add(t, "registration_regex", _REGEX_TEXT + ' (required with registration '
                     '= "regex")', "nothing", name=name)
            return None
        raw = data["registration_regex"]
        if not isinstance(raw, str) or not raw:
            self.add(t, "registration_regex", _REGEX_TEXT, show_value(raw), name=name)
            return None
        try:
            compiled = re.compile(raw.encode("utf-8"), re.DOTALL)
        except re.error as e:
            self.add(t, "registration_regex", _REGEX_TEXT, f"{show_value(raw)} ({e})",
                     name=name)
            return None
        if compiled.match(b""):
            self.add(t, "registration_regex", _REGEX_TEXT + " that needs at least one byte",
                     f"{show_value(raw)}, which matches an empty packet", name=name)
            return None
        return raw

    def dtus(self, value: object, listeners: Mapping[str, object],
             registration: Mapping[str, tuple[object, object]],
             declared: dict[str, str]) -> list[DtuSettings]:
        """Each ``[[dtu]]``; ``listeners``: every [[listener]] name (valid or not) and its
        protocol as written; ``registration``: (format, id length) of the valid DTU
        listeners; ``declared``: the bus-like names so far, where (these are added)."""
        out: list[DtuSettings] = []
        ids: dict[tuple[str, str], str] = {}
        dtu_names = sorted(n for n, p in listeners.items() if p in DTU_PROTOCOLS)
        for i, item in enumerate(self.array_of_tables("dtu", value, "[[dtu]] tables")):
            t = f"dtu[{i}]"
            data = self.table(t, None, item, "a [[dtu]] table")
            if data is None:
                continue
            raw_name = data.get("name")
            name = raw_name.strip() if isinstance(raw_name, str) else None
            self.unknown_keys(t, data, DTU_KEYS, name=name)
            D = DtuTable
            ok_name = self.req(t, data, D, "name", name=name)
            dtu_id = self.req(t, data, D, "id", name=name)
            listener = self.req(t, data, D, "listener", name=name)
            if listener is not None and listeners.get(listener) not in DTU_PROTOCOLS:
                expected = ("the name of a DTU [[listener]] (" + ", ".join(map(_q, dtu_names))
                            + ")" if dtu_names else "the name of a DTU [[listener]] ("
                            f"{_DTU_PROTOCOLS_TEXT}; none is configured)")
                found = _q(listener) + (
                    f" (protocol = {show_value(listeners[listener])})"
                    if listener in listeners else "")
                self.add(t, "listener", expected, found, name=name,
                         hint="" if listener in listeners
                         else _did_you_mean(listener, dtu_names))
                listener = None
            if dtu_id is not None and listener in registration:
                dtu_id = self._dtu_id(t, dtu_id, listener, registration[listener], name)
            if ok_name is not None:
                if ok_name in declared:
                    self.add(t, "name", "a bus, concentrator or DTU name used once",
                             f"{_q(ok_name)} again (first at {declared[ok_name]})", name=name)
                    continue
                declared[ok_name] = f"{self.file}:{self.lines.of(t)}"
            if dtu_id is not None and listener is not None:
                first = ids.get((listener, dtu_id))
                if first is not None:
                    self.add(t, "id", f"an id used once on listener {_q(listener)}",
                             f"{_q(dtu_id)} again (first at {first})", name=name)
                    continue
                ids[(listener, dtu_id)] = f"{self.file}:{self.lines.of(t, 'id')}"
            if ok_name is None or dtu_id is None or listener is None:
                continue
            out.append(DtuSettings(ok_name, dtu_id, listener))
        return out

    def _dtu_id(self, t: str, dtu_id: str, listener: str, fmt: tuple[object, object],
                name: str | None) -> str | None:
        """``dtu_id`` if a registration packet of the listener's format can carry it."""
        registration, length = fmt
        if registration != "ascii":
            return dtu_id
        if not _ASCII_ID.fullmatch(dtu_id) or (length is not None and len(dtu_id) != length):
            size = f"{length} " if length is not None else ""
            self.add(t, "id", f"an id of {size}printable ASCII characters, no spaces "
                     f"(listener {_q(listener)} reads registration = \"ascii\""
                     + (f", registration_length = {length})" if length is not None else ")"),
                     show_value(dtu_id), name=name)
            return None
        return dtu_id

    def refuse_concentrators_on_dtu_listeners(
            self, value: object, concentrators: list[ConcentratorSettings],
            listeners: Mapping[str, object]) -> list[ConcentratorSettings]:
        """``concentrators`` without those naming a DTU listener (each a problem)."""
        bad = {n for n, p in listeners.items() if p in DTU_PROTOCOLS}
        if not bad:
            return concentrators
        ok_names = sorted(n for n, p in listeners.items() if p not in DTU_PROTOCOLS)
        raw = value if isinstance(value, list) else []
        for i, item in enumerate(raw):
            if not isinstance(item, dict) or item.get("listener") not in bad:
                continue
            name = item.get("name")
            self.add(f"concentrator[{i}]", "listener",
                     'the name of a [[listener]] with protocol = "3761" (' +
                     (", ".join(map(_q, ok_names)) if ok_names else "none is configured") + ")",
                     f"{_q(item['listener'])} (protocol = "
                     f"{show_value(listeners[item['listener']])}: DTUs dial in there)",
                     name=name.strip() if isinstance(name, str) else None)
        return [c for c in concentrators if c.listener not in bad]

    def check_dtu_meters(self, rows: list[Row], dtus: list[DtuSettings],
                         protocols: Mapping[str, object]) -> None:
        """Each meter on a DTU speaks what its listener passes through (``protocols``:
        listener name -> protocol as written)."""
        family_of = {d.name: (d, DTU_PROTOCOLS[str(protocols[d.listener])]) for d in dtus}
        for row in rows:
            m = row.meter
            if m is None or m.bus not in family_of:
                continue
            dtu, family = family_of[m.bus]
            if KINDS[m.protocol].frame_family() == family:
                continue
            in_csv = row.file != self.file
            default = not in_csv and (row.table, "protocol") not in self.lines.keys
            self.add(row.table, "protocol",
                     f"a protocol whose frames DTU {_q(dtu.name)} passes through "
                     f"({_family_protocols(family)}: listener {_q(dtu.listener)} has "
                     f"protocol = {_q(str(protocols[dtu.listener]))})",
                     _q(m.protocol) + (" (the default)" if default else ""), meter=m.meter_id,
                     file=row.file if in_csv else None,
                     line=row.line if in_csv else self.lines.of(row.table, "protocol"))
            row.meter = None

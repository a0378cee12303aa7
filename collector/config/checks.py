"""Checks across keys, tables and meters (and against what amic run would refuse)."""

from __future__ import annotations

from collections.abc import Mapping
from functools import cache
from pathlib import Path

from drivers.device import MeterRef
from drivers.dlt645 import resolve_quantity
from drivers.errors import UnknownQuantity
from drivers.meters import kind_of
from protocols.dlt645 import Version

from .base import LoaderBase
from .messages import quote as _q
from .schema import PROTOCOLS
from .selectors import Row
from .settings import MeterSettings


def _other(protocol: str) -> str:
    return next(p for p in PROTOCOLS if p != protocol and p.startswith("dlt645"))


@cache
def readable(quantity: str, version: Version) -> bool:
    """Whether a DL/T645 meter of ``version`` has ``quantity`` in the catalogue."""
    try:
        resolve_quantity(quantity, version)
    except UnknownQuantity:
        return False
    return True




class ChecksMixin(LoaderBase):
    """Checks that need more than one key: meters, quantities, the broker."""

    def check_meters(self, rows: list[Row]) -> list[MeterSettings]:
        """Unique ids, unique (bus, address), at most one area master an area."""
        ids: dict[str, Row] = {}
        addresses: dict[tuple[str, str], Row] = {}
        masters: dict[str, Row] = {}
        points: dict[tuple[str, int], Row] = {}
        for row in rows:
            m = row.meter
            if m is not None and m.pn is not None:
                first = points.get((m.bus, m.pn))
                if first is not None:
                    self.add(row.table, "pn", f"a pn used once on concentrator {_q(m.bus)}",
                             f"{m.pn} again (meter {_q(first.fields['id'])} at "
                             f"{first.where})", meter=row.id,
                             file=None if row.file == self.file else row.file,
                             line=row.line if row.file != self.file else None)
                    row.meter = None
                else:
                    points[(m.bus, m.pn)] = row
            file = None if row.file == self.file else row.file
            line = row.line if file is not None else None
            first = ids.get(row.id) if row.id else None
            if first is not None:
                self.add(row.table, "meter_id", "a meter id used once",
                         f"{_q(first.fields['id'])} again (first at {first.where})",
                         meter=row.id, file=file, line=line)
                row.meter = None
            elif row.id:
                ids[row.id] = row
            if row.bus and row.address:
                first = addresses.get((row.bus, row.address))
                if first is not None:
                    self.add(row.table, "address", f"an address used once on bus {_q(row.bus)}",
                             f"{row.address} again (meter {_q(first.fields['id'])} at "
                             f"{first.where})", meter=row.id, file=file, line=line)
                    row.meter = None
                else:
                    addresses[(row.bus, row.address)] = row
            if row.area_master_of:
                first = masters.get(row.area_master_of)
                if first is not None:
                    self.add(row.table, "role",
                             f"at most one area_master in area {_q(row.area_master_of)}",
                             f"a second one (the first is meter {_q(first.fields['id'])} at "
                             f"{first.where})", meter=row.id, file=file, line=line)
                    row.meter = None
                else:
                    masters[row.area_master_of] = row
        if not rows and not self.ledger_failed:
            self.add("", None, "at least one meter ([[meter]] tables or a [meters] ledger)",
                     "none", line=self.lines.of("meters", "ledger"))
        return [r.meter for r in rows if r.meter is not None]

    def readability(self, t: str, quantities: list[str],
                    meters: list[MeterSettings]) -> None:
        for m in meters:
            version = PROTOCOLS[m.protocol]
            if version is None:  # a kind the DL/T645 catalogue does not describe
                from .profiles import load_profile

                kind = kind_of(m.protocol)
                profile = (load_profile(m.profile, search=[self.base])
                           if kind.needs_profile() else None)
                offered = kind.capabilities(
                    MeterRef(m.meter_id, m.protocol, m.address, profile)).quantities
                missing = [q for q in quantities if q not in offered]
                if missing:
                    what = (f"in profile {m.profile}" if profile is not None
                            else "its kind offers")
                    self.add(t, "quantities", f"quantities {what} (meter "
                             f"protocol {m.protocol})", ", ".join(missing), meter=m.meter_id,
                             hint="leave the meter out of this schedule (e.g. meters = "
                                  '["protocol:dlt645-2007"]) or those quantities out')
                continue
            bad = [q for q in quantities if not readable(q, version)]
            if bad:
                self.add(t, "quantities",
                         f"quantities readable over DL/T645-{version} (meter protocol "
                         f"{m.protocol})", ", ".join(bad), meter=m.meter_id,
                         hint="leave the meter out of this schedule (e.g. meters = "
                              f'["protocol:{_other(m.protocol)}"]) or those quantities out')

    def connection_problem(self, t: str, url: str, client_id: str | None,
                           username: str | None, password: str | None,
                           paths: Mapping[str, Path | None]) -> None:
        """What the MQTT client would refuse at start-up (``amic run``): TLS files for a
        plain mqtt:// URL, a CA or client certificate that does not load, ..."""
        from drivers.mqtt import MqttConnection

        try:
            MqttConnection(url, client_id=client_id or "amic-check", username=username,
                           password=password, ca_file=paths["ca_file"],
                           cert_file=paths["cert_file"], key_file=paths["key_file"])
        except ValueError as e:
            text = str(e)
            key = next((k for k in ("ca_file", "cert_file", "key_file", "client_id",
                                    "username") if k in text), "url")
            what = ("a certificate file the MQTT client can load" if key.endswith("_file")
                    else "settings the MQTT client accepts")
            self.add(t, key, what, text.split(": ", 1)[-1])


"""Meters: [[meter]] tables and the CSV ledger, one meter at a time."""

from __future__ import annotations

import csv
import io
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any, cast

from .base import LoaderBase
from .convert import Conv, unit_conv
from .fields import conv_of, default_of, is_required, key_of
from .messages import did_you_mean as _did_you_mean
from .messages import quote as _q
from .personal import PERSONAL_COLUMNS, PersonalKey, SealError, is_sealed
from .problems import show_value
from .routes import behind_concentrator
from .safefile import FileRefused, read_regular
from .schema import (
    LEDGER_COLUMNS,
    MAX_LEDGER_BYTES,
    METERS_KEYS,
    REQUIRED_METER_KEYS,
    ROUTE_COLUMNS,
)
from .selectors import Row
from .settings import MeterRouteTable, MeterSettings, MetersTable, MeterTable, Protocol, Role

_METER = {key_of(MeterTable, n): default_of(MeterTable, n) for n in MeterTable.model_fields
          if not is_required(MeterTable, n)}
_METER.update({key_of(MeterRouteTable, n): default_of(MeterRouteTable, n)
               for n in MeterRouteTable.model_fields})
_UNIT = unit_conv()


class CsvRecordError(ValueError):
    """A CSV syntax error; ``line`` is where the reader stopped."""

    def __init__(self, error: csv.Error, line: int) -> None:
        super().__init__(str(error))
        self.line = line


def csv_records(text: str) -> Iterator[tuple[int, list[str]]]:
    """The records of a ledger CSV as (first line, cells), blank lines and ``#`` comments
    left out; CsvRecordError on a syntax error."""
    reader = csv.reader(io.StringIO(text, newline=""))
    end = 0
    try:
        for cells in reader:
            start, end = end + 1, reader.line_num
            if not any(c.strip() for c in cells) or cells[0].lstrip().startswith("#"):
                continue
            yield start, cells
    except csv.Error as e:
        raise CsvRecordError(e, reader.line_num) from None




class LedgerMixin(LoaderBase):
    """[[meter]] tables, [meters] ledger = "..." and each meter's keys."""

    personal_secrets: Path | None = None
    """The secrets file whose ``[ledger] key`` opens sealed personal cells."""
    personal_key: PersonalKey | str | None = None
    """The key (or why there is none), found on the first sealed cell."""

    def _personal_key(self) -> PersonalKey | str:
        if self.personal_key is None:
            self.personal_key = self._find_personal_key()
        return self.personal_key

    def _find_personal_key(self) -> PersonalKey | str:
        from .secrets import SecretsError, load_secrets

        path = self.personal_secrets
        if path is None:
            return ("no secrets file to open it ([commands] secrets_file with a [ledger] "
                    "key)")
        try:
            key = load_secrets(path).ledger_key()
        except SecretsError as e:
            return f"the secrets file cannot be read: {'; '.join(e.problems)}"
        if key is None:
            return f"no [ledger] key in the secrets file {path}"
        return PersonalKey(key)

    def unsealed(self, values: Mapping[str, object], t: str, mid: str | None,
                 file: str | None, line: int | None) -> Mapping[str, object]:
        """``values`` with the sealed personal cells opened (see config/personal.py); a
        cell that does not open is a problem that names the cell, never its content."""
        sealed = [c for c in PERSONAL_COLUMNS
                  if isinstance(values.get(c), str) and is_sealed(str(values[c]))]
        if not sealed:
            return values
        out = dict(values)
        key = self._personal_key()
        expected = "a value sealed with the [ledger] key of the secrets file"
        for c in sealed:
            cell = str(out.pop(c))
            if isinstance(key, str):
                self.add(t, c, expected, f"a sealed value ({key})", meter=mid, file=file,
                         line=line)
            elif mid:
                try:
                    out[c] = key.open(mid, c, cell)
                except SealError as e:
                    self.add(t, c, expected, f"a sealed value that does not open: {e}",
                             meter=mid, file=file, line=line)
        return out

    # -- meters: [[meter]] tables and the ledger

    def inline_meters(self, value: object, bus_names: set[str]) -> list[Row]:
        rows: list[Row] = []
        for i, item in enumerate(self.array_of_tables("meter", value, "[[meter]] tables")):
            t = f"meter[{i}]"
            data = self.table(t, None, item, "a [[meter]] table")
            if data is None:
                continue
            raw_id = data.get("meter_id")
            mid = raw_id.strip() if isinstance(raw_id, str) else None
            self.unknown_keys(t, data, LEDGER_COLUMNS + ROUTE_COLUMNS, meter=mid)
            row = Row(t, self.file, self.lines.of(t))
            values: dict[str, object] = dict(data)
            row.meter = self.meter(row, values, bus_names, csv_cells=False)
            rows.append(row)
        return rows

    def ledger(self, value: object, bus_names: set[str]) -> list[Row]:
        before = len(self.problems)
        rows = self.read_ledger(value, bus_names)
        if not rows and len(self.problems) > before:
            self.ledger_failed = True  # "no meters" would only repeat its problems
        return rows

    def read_ledger(self, value: object, bus_names: set[str]) -> list[Row]:
        if value is None:
            return []
        data = self.table("", "meters", value, "a [meters] table")
        if data is None:
            return []
        self.unknown_keys("meters", data, METERS_KEYS)
        if "ledger" not in data:
            return []
        name = self.convert("meters", "ledger", data["ledger"], conv_of(MetersTable, "ledger"))
        if name is None:
            return []
        path = Path(name).expanduser()
        shown = str(path if path.is_absolute() else self.path.parent / path)
        try:
            raw = read_regular(self.relative(name), MAX_LEDGER_BYTES)
        except FileRefused as e:
            self.add("meters", "ledger", "a readable CSV file", f"{_q(name)} ({shown}: {e})")
            return []
        try:
            text = raw.decode("utf-8-sig")
        except UnicodeDecodeError as e:
            self.add("", None, "UTF-8 text", f"the byte 0x{raw[e.start]:02x}",
                     file=shown, line=raw[: e.start].count(b"\n") + 1,
                     hint='save the ledger as "CSV UTF-8"')
            return []
        return self.ledger_rows(shown, text, bus_names)

    def ledger_rows(self, file: str, text: str, bus_names: set[str]) -> list[Row]:
        header: list[str] | None = None
        rows: list[Row] = []
        try:
            for start, cells in csv_records(text):
                if header is None:
                    header = [c.strip().lower() for c in cells]
                    if not self.ledger_header(file, start, header):
                        return []
                    continue
                i = len(rows)
                t = f"ledger[{i}]"
                row = Row(t, file, start)
                rows.append(row)
                if len(cells) != len(header):
                    self.add(t, None, f"{len(header)} cells (one for each header column)",
                             f"{len(cells)}", file=file, line=start)
                    continue
                values: dict[str, object] = {
                    k: c.strip() for k, c in zip(header, cells, strict=True)
                    if k in LEDGER_COLUMNS + ROUTE_COLUMNS and c.strip()}
                row.meter = self.meter(row, values, bus_names, csv_cells=True)
        except CsvRecordError as e:
            self.add("ledger", None, "valid CSV", f"a CSV error: {e}", file=file,
                     line=e.line)
        if header is None:
            self.add("ledger", None, "a header line: " + ", ".join(LEDGER_COLUMNS),
                     "an empty file", file=file, line=None)
        return rows

    def ledger_header(self, file: str, line: int, header: list[str]) -> bool:
        ok = True
        seen: set[str] = set()
        for col in header:
            if col in seen:
                self.add("ledger", col, "each column once", f"{_q(col)} twice", file=file,
                         line=line)
            elif col not in LEDGER_COLUMNS + ROUTE_COLUMNS:
                self.add("ledger", col, "one of the columns " + ", ".join(
                    LEDGER_COLUMNS + ROUTE_COLUMNS), "an unknown column", file=file, line=line,
                    hint=_did_you_mean(col, LEDGER_COLUMNS + ROUTE_COLUMNS))
            seen.add(col)
        for col in REQUIRED_METER_KEYS:
            if col not in seen:
                self.add("ledger", col, "a header naming the columns " +
                         ", ".join(REQUIRED_METER_KEYS) + " at least", f"no {col} column",
                         file=file, line=line)
                ok = False
        return ok

    def meter(self, row: Row, values: Mapping[str, object], bus_names: set[str], *,
              csv_cells: bool) -> MeterSettings | None:
        t = row.table
        file = None if row.file == self.file else row.file
        line = row.line if file is not None else None
        raw_id = values.get("meter_id")
        mid = raw_id.strip() if isinstance(raw_id, str) and raw_id.strip() else None

        def get(key: str, conv: Conv[Any] | None = None) -> Any:
            model = MeterRouteTable if key in ROUTE_COLUMNS else MeterTable
            conv = conv or conv_of(model, key, csv_cells)
            if key not in values:
                if key in REQUIRED_METER_KEYS:
                    found = "an empty cell" if csv_cells else "nothing"
                    self.add(t, key, conv.expected, found, meter=mid, file=file, line=line)
                    return None
                return _METER[key]
            return self.convert(t, key, values[key], conv, meter=mid, file=file, line=line)

        values = self.unsealed(values, t, mid, file, line)
        ok_id = get("meter_id")
        protocol = get("protocol")
        modbus = protocol == "modbus"
        # a modbus meter's address is its unit id
        address = get("address", _UNIT if modbus else None)
        bus = get("bus")
        profile = get("profile")
        if modbus and profile == "":
            self.add(t, "profile", "a device profile for a modbus meter (e.g. "
                     '"acrel-dtsy1352"; see config/profiles)', "nothing", meter=mid, file=file,
                     line=line)
            profile = None
        elif not modbus and profile:
            self.add(t, "profile", "no profile: profiles are for modbus meters", _q(profile),
                     meter=mid, file=file, line=line)
            profile = None
        elif modbus and profile:
            problem = self.profile_problem(profile)
            if problem:
                self.add(t, "profile", "a loadable device profile", problem, meter=mid,
                         file=file, line=line)
                profile = None
        texts = {k: get(k) for k in ("station", "feeder", "area", "box", "customer",
                                     "phone")}
        prepaid = get("prepaid")
        role = get("role")
        route_ok = True
        pn: int | None = None
        port, baud = _METER["port"], _METER["baud"]
        if bus and bus in self.concentrator_names:
            if csv_cells:  # a cell is text; these are integers
                values = {k: int(v) if k in ROUTE_COLUMNS and isinstance(v, str)
                          and v.isascii() and v.isdigit() else v for k, v in values.items()}
            pn = get("pn")
            port, baud = get("port"), get("baud")
            if "pn" not in values:
                self.add(t, "pn", "a measuring point number 1-2040 (required for a meter "
                         f"on concentrator {_q(bus)})", "an empty cell" if csv_cells
                         else "nothing", meter=mid, file=file, line=line)
            route_ok = pn is not None and port is not None and baud is not None
            refused = behind_concentrator(protocol, bus) if protocol is not None else None
            if refused is not None:
                self.add(t, "protocol", refused, _q(protocol), meter=mid, file=file,
                         line=line)
                route_ok = False
        elif bus and bus in bus_names:
            for key in ROUTE_COLUMNS:
                if key in values:
                    self.add(t, key, f"no {key}: {key} is for meters on a [[concentrator]]",
                             show_value(values[key]), meter=mid, file=file, line=line)
                    route_ok = False
        row.fields = {"id": mid or "", "bus": str(values.get("bus", "")).strip(),
                      "role": str(values.get("role", _METER["role"])).strip(),
                      "protocol": str(values.get("protocol", _METER["protocol"])).strip(),
                      **{k: str(values.get(k, "")).strip()
                         for k in ("area", "feeder", "station", "box")}}
        row.id = ok_id or None
        row.address = address or None
        row.bus = bus if bus and bus in bus_names else None
        if role == "area_master" and texts["area"]:
            row.area_master_of = texts["area"]
        if bus and bus not in bus_names:
            self.add(t, "bus", "the name of a [[bus]] (" + ", ".join(
                _q(b) for b in sorted(bus_names)) + ")" if bus_names else
                "the name of a [[bus]] (none is configured)", _q(bus), meter=mid, file=file,
                line=line, hint=_did_you_mean(bus, bus_names))
            return None
        if role == "area_master" and texts["area"] == "":
            self.add(t, "area", 'an area for a meter with role "area_master"', "nothing",
                     meter=mid, file=file,
                     line=line if file is not None else self.lines.of(t, "role"))
            return None
        if ok_id is None or not address or not bus or protocol is None or prepaid is None \
                or role is None or profile is None or any(v is None for v in texts.values()) \
                or not route_ok:
            return None
        return MeterSettings(meter_id=ok_id, address=address, bus=bus, profile=profile,
                             protocol=cast(Protocol, protocol),
                             station=texts["station"] or "", feeder=texts["feeder"] or "",
                             area=texts["area"] or "", box=texts["box"] or "",
                             customer=texts["customer"] or "", phone=texts["phone"] or "",
                             prepaid=prepaid,
                             role=cast(Role, role), pn=pn, port=port, baud=baud)

    def profile_problem(self, name: str) -> str:
        """Why the profile ``name`` cannot be used ('' when it loads)."""
        from .profiles import ProfileError, load_profile

        try:
            load_profile(name, search=[self.base])
        except ProfileError as e:
            return "; ".join(str(p) for p in e.problems) or str(e)
        return ""


"""Modbus meters on pymodbus's server: TCP, RTU over TCP, and RTU on a pseudo-terminal.

``async with ModbusSimulator(profile, meters=3) as sim:`` serves unit ids 1..3, each a
:class:`~simulators.meter.MeterModel` (the same model the DL/T645 simulator uses), with
the register map of a :class:`~protocols.modbus.Profile`:

* reads (03 / 04) of the profile's registers are computed from the model at read time
  (``encode_value``); a read touching an address that is in no register of the profile
  gets exception 02 ILLEGAL DATA ADDRESS, as real meters answer.  Unused addresses
  between registers read as 0 when the gap is within the profile's ``max_gap`` (the
  device lets a merged read span them); a read longer than ``max_registers`` gets 03
  (when its addresses are all in use: pymodbus checks addresses before the hook runs);
* a register the profile lists as ``[[unmapped]]`` (a setting or code the manual lists,
  no quantity) reads 0 until written; a writable one takes values within its
  ``low``..``high`` (others get 03);
* the relay control point (coil for 05 / 15, or register for 06 / 16) trips and closes
  the model's relay; other values get 03, writes anywhere else 02.  The control point
  and the readback register (its ``readback_bit``) read the relay *state*: after a trip
  refused under hold power, or a close without credit, they say so;
* an unknown unit id is answered like its line would: silence on RTU (a meter that is
  not there), exception 0B GATEWAY TARGET FAILED TO RESPOND on Modbus TCP.

pymodbus 3.16 builds every datastore on ``SimDevice`` (``ModbusDeviceContext`` and the
data blocks are deprecated shims that copy their values into one at start-up), so live
values come from the ``SimDevice.action`` hook, which may rewrite the registers in place
before every access.

On a pty, the pymodbus serial server opens one pseudo-terminal and this module bridges
it to a second one, whose slave (``sim.pty_path``) the master opens: a null-modem cable.
The line is 8N1: the Linux pty driver refuses PARENB (tcsetattr fails with EINVAL, so
pymodbus cannot configure the port), so even parity, the Modbus RTU default, cannot be
set on a pty; the baud rate is nominal (a pty moves bytes at memory speed).
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
import os
import signal
import tty
from collections import Counter
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from decimal import Decimal
from types import TracebackType
from typing import Any, Literal, cast

from pymodbus.constants import ExcCodes
from pymodbus.exceptions import NoSuchIdException
from pymodbus.framer import FramerRTU, FramerType
from pymodbus.pdu import ExceptionResponse, ModbusPDU
from pymodbus.server import ModbusSerialServer, ModbusTcpServer
from pymodbus.server.base import ModbusBaseServer
from pymodbus.simulator import DataType, SimData, SimDevice

from protocols.modbus import Profile, Register, RelayControl, Unmapped, encode_value
from protocols.quantities import QUANTITIES, Kind

from .meter import Clock, MeterConfig, MeterModel, Unavailable

_log = logging.getLogger(__name__)

Transport = Literal["tcp", "rtu-tcp", "rtu-pty"]
TRANSPORTS: tuple[Transport, ...] = ("tcp", "rtu-tcp", "rtu-pty")
MAX_UNITS = 247  # Modbus unit ids 1-247

# Function code -> table: holding, input registers, coils, discrete inputs.
_TABLE: dict[int, str] = {3: "h", 6: "h", 16: "h", 22: "h", 23: "h", 4: "i",
                          1: "c", 5: "c", 15: "c", 2: "d"}
_NUMERIC_KINDS = (Kind.NUMBER, Kind.COUNT, Kind.STATUS)
_PHASE_PREFIXES = ("voltage_", "current_", "power_active_", "power_reactive_",
                   "power_apparent_", "power_factor_")
_PREPAID = frozenset({"balance_amount", "overdraft_amount", "purchase_count"})


@dataclass(slots=True)
class ModbusStats:
    """What the servers saw: requests in, replies out, exception replies by name."""

    requests: int = 0
    replies: int = 0  # exception replies included; unknown units on RTU get none
    exceptions: Counter[str] = field(default_factory=Counter)  # e.g. ILLEGAL_ADDRESS
    trips: int = 0  # relay commands accepted
    closes: int = 0

    def as_dict(self) -> dict[str, Any]:
        return {"requests": self.requests, "replies": self.replies, "trips": self.trips,
                "closes": self.closes, "exceptions": dict(self.exceptions)}

    def trace(self, sending: bool, pdu: ModbusPDU) -> ModbusPDU:
        """pymodbus's ``trace_pdu`` hook: count what goes in and out."""
        if not sending:
            self.requests += 1
            return pdu
        self.replies += 1
        if isinstance(pdu, ExceptionResponse):
            try:
                name = ExcCodes(pdu.exception_code).name
            except ValueError:
                name = f"0x{pdu.exception_code:02X}"
            self.exceptions[name] += 1
        return pdu


def meter_config_for(profile: Profile) -> MeterConfig:
    """A model configuration matching what ``profile`` can show.

    Single-phase when the map has phase A quantities and none of phase B or C, else three
    phases; money-prepaid only with a balance register in the map (otherwise a meter would
    trip, some days in, for credit nobody can see or top up).
    """
    names = {r.name for r in profile.registers}

    def has(phase: str) -> bool:
        return any(f"{p}{phase}" in names for p in _PHASE_PREFIXES)

    single = has("a") and not (has("b") or has("c"))
    return MeterConfig(phases=1 if single else 3, prepaid=bool(names & _PREPAID))


class SimulatedModbusMeter:
    """One unit id: the registers of ``profile`` over ``model``, as a pymodbus SimDevice."""

    def __init__(self, unit: int, model: MeterModel, profile: Profile,
                 stats: ModbusStats | None = None) -> None:
        if not 1 <= unit <= MAX_UNITS:
            raise ValueError(f"unit id {unit}: expected 1-{MAX_UNITS}")
        self.unit = unit
        self.model = model
        self.profile = profile
        self.stats = stats if stats is not None else ModbusStats()
        self._by_table: dict[str, tuple[Register, ...]] = {
            t: tuple(r for r in profile.registers if _TABLE[r.function] == t) for t in "hi"}
        # (table, address) -> word written to a writable [[unmapped]] register
        self._settings: dict[tuple[str, int], int] = {}
        # addresses pymodbus lets through (the RTU line server checks the same ones)
        self._valid: dict[str, frozenset[int]] = {
            t: frozenset(_fill_gaps(c, profile.max_gap)) for t, c in _cells(profile).items()}
        self.device = SimDevice(unit, simdata=_layout(profile), action=self._action)

    def __repr__(self) -> str:
        return f"SimulatedModbusMeter(unit {self.unit}, {self.profile.name})"

    # ---- the pymodbus hook ----------------------------------------------------------------

    async def _action(self, function: int, start: int, address: int, count: int,
                      registers: list[int], values: list[int] | list[bool] | None
                      ) -> ExcCodes | None:
        """Called before every access that passed pymodbus's address checks.

        ``registers`` is the whole table from address ``start`` (for coils: 16 coils a
        register, ``start`` in registers); rewriting it changes what this read returns.
        """
        try:
            return self._access(function, start, address, count, registers, values)
        except Exception:
            # A simulator bug must not take the server down: log it, answer 04.
            _log.exception("unit %d: internal error on function %d at %d", self.unit,
                           function, address)
            return ExcCodes.DEVICE_FAILURE

    def _access(self, function: int, start: int, address: int, count: int,
                registers: list[int], values: list[int] | list[bool] | None
                ) -> ExcCodes | None:
        table = _TABLE.get(function)
        if table is None:
            return ExcCodes.ILLEGAL_FUNCTION
        if table in "cd":
            return self._bits(table, start, address, registers, values)
        if values is not None:
            return self._write_register(table, address, values)
        if function in (3, 4) and count > self.profile.max_registers:
            return ExcCodes.ILLEGAL_VALUE
        self._fill(table, start, address, count, registers)
        return None

    # ---- reads ---------------------------------------------------------------------------

    def _fill(self, table: str, start: int, address: int, count: int,
              registers: list[int]) -> None:
        """Put the present values of the window ``address``..+``count`` into ``registers``."""
        end = address + count
        window: dict[int, int] = dict.fromkeys(range(address, end), 0)
        for reg in self._by_table[table]:
            if reg.address < end and reg.end > address:
                for i, word in enumerate(self._encode(reg)):
                    if reg.address + i in window:
                        window[reg.address + i] = word
        for (t, a), word in self._settings.items():
            if t == table and a in window:
                window[a] = word
        relay = self.profile.relay
        if relay is not None:
            is_open = self.model.relay_open
            if relay.kind == "register" and table == "h" and relay.address in window:
                window[relay.address] = relay.trip if is_open else relay.close
            rb = _readback(relay)
            if rb is not None and rb[0] == table and rb[1] in window:
                bit_value = relay.open_when if is_open else 1 - relay.open_when
                mask = 1 << relay.readback_bit
                word = window[rb[1]] & ~mask
                window[rb[1]] = word | mask if bit_value else word
        for addr, word in window.items():
            registers[addr - start] = word

    def _encode(self, reg: Register) -> list[int]:
        try:
            value = self.model.read(reg.name)
        except Unavailable:
            return [0] * reg.words  # e.g. a phase this meter does not have
        if not isinstance(value, Decimal | int):  # pragma: no cover - checked at start-up
            raise TypeError(f"{reg.name}: {value!r} is not a number")
        return encode_value(reg, value)

    # ---- relay ---------------------------------------------------------------------------

    def _bits(self, table: str, start: int, address: int, registers: list[int],
              values: list[int] | list[bool] | None) -> ExcCodes | None:
        relay = self.profile.relay
        if table != "c" or relay is None or relay.kind != "coil" or address != relay.address:
            return ExcCodes.ILLEGAL_ADDRESS
        if values is not None:
            if len(values) != 1:
                return ExcCodes.ILLEGAL_ADDRESS
            return self._command(relay, int(bool(values[0])))
        # pymodbus passes coil reads in whole registers of 16: set the relay's bit, and
        # leave the other bits of its register at 0.
        offset = address - start * 16
        word = offset // 16
        mask = 1 << (offset % 16)
        state = relay.trip if self.model.relay_open else relay.close
        registers[word] = registers[word] | mask if state else registers[word] & ~mask
        return None

    def _write_register(self, table: str, address: int,
                        values: list[int] | list[bool]) -> ExcCodes | None:
        relay = self.profile.relay
        if table == "h" and relay is not None and relay.kind == "register" \
                and address == relay.address and len(values) == 1:
            return self._command(relay, int(values[0]))
        setting = _setting(self.profile, table, address, len(values))
        if setting is None:
            return ExcCodes.ILLEGAL_ADDRESS
        words = [int(v) for v in values]
        if any(not setting.low <= w <= setting.high for w in words):
            return ExcCodes.ILLEGAL_VALUE
        for i, w in enumerate(words):
            self._settings[(table, address + i)] = w
        _log.info("unit %d: register %d set to %s", self.unit, address, words)
        return None

    def _command(self, relay: RelayControl, value: int) -> ExcCodes | None:
        coil = relay.kind == "coil"
        trip = int(bool(relay.trip)) if coil else relay.trip
        close = int(bool(relay.close)) if coil else relay.close
        if value == trip:
            # Under hold power the meter accepts the command and keeps the relay closed:
            # the readback says so (as the DL/T645 meter does).
            done = self.model.trip()
            self.stats.trips += 1
            _log.info("unit %d: trip%s", self.unit, "" if done else " (hold power: kept closed)")
        elif value == close:
            self.model.close()
            self.stats.closes += 1
            _log.info("unit %d: close%s", self.unit,
                      " (no credit: tripped again)" if self.model.relay_open else "")
        else:
            return ExcCodes.ILLEGAL_VALUE
        return None


def _setting(profile: Profile, table: str, address: int, count: int) -> Unmapped | None:
    """The writable ``[[unmapped]]`` register holding ``address``..+``count``, if any."""
    for u in profile.unmapped:
        if u.writable and _TABLE[u.function] == table and u.address <= address \
                and address + count <= u.end:
            return u
    return None


def _readback(relay: RelayControl) -> tuple[str, int] | None:
    if relay.readback_function is None or relay.readback_address is None:
        return None
    return _TABLE[relay.readback_function], relay.readback_address


def _layout(profile: Profile) -> tuple[list[SimData], list[SimData], list[SimData],
                                       list[SimData]]:
    """The four pymodbus tables (coils, discrete inputs, holding, input) of ``profile``.

    Only addresses the profile lists are valid (plus gaps up to ``max_gap``); the action
    supplies every value, so the blocks hold zeros.  Only the relay control register and
    writable ``[[unmapped]]`` ones are writable.
    """
    coils: list[SimData] = []
    relay = profile.relay
    if relay is not None and relay.kind == "coil":
        coils.append(SimData(relay.address, values=False, datatype=DataType.BITS))
    tables = {t: _blocks(c, profile.max_gap) for t, c in _cells(profile).items()}
    # pymodbus needs at least one entry a table: an invalid register, or a coil the
    # action refuses.
    placeholder_bits = [SimData(0, values=False, datatype=DataType.BITS)]
    return (coils or placeholder_bits, list(placeholder_bits),
            tables["h"] or [SimData(0, datatype=DataType.INVALID)],
            tables["i"] or [SimData(0, datatype=DataType.INVALID)])


def _cells(profile: Profile) -> dict[str, dict[int, bool]]:
    """Holding (``h``) and input (``i``) addresses the profile lists -> writable."""
    cells: dict[str, dict[int, bool]] = {"h": {}, "i": {}}
    for reg in profile.registers:
        for a in range(reg.address, reg.end):
            cells[_TABLE[reg.function]][a] = False
    for u in profile.unmapped:
        for a in range(u.address, u.end):
            cells[_TABLE[u.function]][a] = u.writable
    relay = profile.relay
    if relay is not None:
        if relay.kind == "register":
            cells["h"][relay.address] = True
        rb = _readback(relay)
        if rb is not None:
            cells[rb[0]].setdefault(rb[1], False)
    return cells


def _fill_gaps(cells: dict[int, bool], max_gap: int) -> dict[int, bool]:
    """``cells`` with the gaps of up to ``max_gap`` registers between them (read-only)."""
    filled = dict(cells)
    for a, b in itertools.pairwise(sorted(cells)):
        if 1 < b - a <= max_gap + 1:
            filled.update(dict.fromkeys(range(a + 1, b), False))
    return filled


def _blocks(cells: dict[int, bool], max_gap: int) -> list[SimData]:
    """Runs of registers of one writability; gaps up to ``max_gap`` filled (read-only)."""
    filled = _fill_gaps(cells, max_gap)
    runs: list[list[int]] = []
    for a in sorted(filled):
        if runs and a == runs[-1][-1] + 1 and filled[a] == filled[runs[-1][0]]:
            runs[-1].append(a)
        else:
            runs.append([a])
    return [SimData(run[0], count=len(run), values=0, datatype=DataType.REGISTERS,
                    readonly=not filled[run[0]]) for run in runs]


def _absent() -> SimDevice:
    """Device 0, pymodbus's catch-all for unit ids nobody has.

    It spans every address, so that its action (which raises pymodbus's "no such
    device") runs whatever is asked, instead of an address check answering first.
    """

    async def action(function: int, start: int, address: int, count: int,
                     registers: list[int], values: list[int] | list[bool] | None
                     ) -> ExcCodes | None:
        raise NoSuchIdException("no meter at this unit id")

    def bits() -> list[SimData]:
        return [SimData(0, values=[0] * 4096, datatype=DataType.BITS)]  # 65536 coils

    def words() -> list[SimData]:
        return [SimData(0, count=65536, values=0, datatype=DataType.REGISTERS)]

    return SimDevice(0, simdata=(bits(), bits(), words(), words()), action=action)


def make_modbus_meters(profile: Profile, units: Iterable[int], *, seed: int | str = 0,
                       config: MeterConfig | None = None, clock: Clock | None = None,
                       stats: ModbusStats | None = None) -> list[SimulatedModbusMeter]:
    """One meter per unit id; model address ``%012d`` of the unit, seeded as DL/T645 ones.

    A Modbus meter 1 and a DL/T645 meter 000000000001 of the same seed draw the same load
    and opening registers.  ``config`` defaults to :func:`meter_config_for` the profile.
    """
    for reg in profile.registers:
        q = QUANTITIES.get(reg.name)
        if q is None or q.kind not in _NUMERIC_KINDS:
            raise ValueError(f"profile {profile.name}: {reg.name!r} is not a numeric quantity")
    cfg = config if config is not None else meter_config_for(profile)
    out: list[SimulatedModbusMeter] = []
    for unit in units:
        address = f"{unit:012d}"
        model = MeterModel(address, cfg, seed=f"{seed}/{address}", clock=clock)
        out.append(SimulatedModbusMeter(unit, model, profile, stats))
    return out


class ModbusSimulator:
    """N Modbus meters (unit ids 1..N) on one line, served by pymodbus.

    ``transport``: ``tcp`` (Modbus TCP, MBAP framing), ``rtu-tcp`` (RTU frames over TCP,
    like a serial server) or ``rtu-pty`` (RTU on a pseudo-terminal only).  ``pty=True``
    also serves the meters in RTU on a pty next to a TCP transport.  ``port=0`` picks a
    free port (``sim.port`` once started); ``sim.pty_path`` is the tty to open (8N1,
    ``baud`` nominal).
    """

    def __init__(
        self,
        profile: Profile,
        *,
        meters: int = 1,
        transport: Transport = "tcp",
        host: str = "127.0.0.1",
        port: int = 0,
        pty: bool = False,
        baud: int = 9600,
        seed: int | str = 0,
        config: MeterConfig | None = None,
        clock: Clock | None = None,
    ) -> None:
        if transport not in TRANSPORTS:
            raise ValueError(f"transport {transport!r}: one of {', '.join(TRANSPORTS)}")
        if not 1 <= meters <= MAX_UNITS:
            raise ValueError(f"meters: 1-{MAX_UNITS} (Modbus unit ids)")
        if baud <= 0:
            raise ValueError("baud: positive")
        self.profile = profile
        self.transport = transport
        self.host = host
        self.port = port
        self.use_tcp = transport != "rtu-pty"
        self.use_pty = pty or transport == "rtu-pty"
        self.baud = baud
        self.stats = ModbusStats()
        self.meters = make_modbus_meters(profile, range(1, meters + 1), seed=seed,
                                         config=config, clock=clock, stats=self.stats)
        self._units = {m.unit: m for m in self.meters}
        self.pty_path: str | None = None
        self._servers: list[ModbusBaseServer] = []
        self._bridge: _PtyBridge | None = None

    def model(self, unit: int) -> MeterModel:
        """The model behind ``unit``; KeyError if no meter has that unit id."""
        return self._units[unit].model

    def meter(self, unit: int) -> SimulatedModbusMeter:
        return self._units[unit]

    def _devices(self) -> list[SimDevice]:
        return [*(m.device for m in self.meters), _absent()]

    # ---- lifecycle -------------------------------------------------------------------------

    async def start(self) -> None:
        try:
            if self.use_tcp:
                rtu = self.transport == "rtu-tcp"
                tcp = ModbusTcpServer(self._devices(),
                                      framer=FramerType.RTU if rtu else FramerType.SOCKET,
                                      address=(self.host, self.port),
                                      ignore_missing_devices=rtu,
                                      trace_pdu=self.stats.trace)
                await _listen(tcp, f"{self.host}:{self.port}")
                self._servers.append(tcp)
                sockets = cast(asyncio.Server, tcp.transport).sockets
                self.port = int(sockets[0].getsockname()[1])
            if self.use_pty:
                self._bridge = _PtyBridge()
                serial = ModbusSerialServer(self._devices(), framer=FramerType.RTU,
                                            port=self._bridge.inner_path, baudrate=self.baud,
                                            parity="N", bytesize=8, stopbits=1,
                                            ignore_missing_devices=True,
                                            trace_pdu=self.stats.trace)
                await _listen(serial, self._bridge.inner_path)
                self._servers.append(serial)
                # pymodbus opens the port now but sets it up in a loop callback: let that
                # run, or a stop right away would find a half-made transport.
                await asyncio.sleep(0)
                self.pty_path = self._bridge.outer_path
        except BaseException:
            await self.stop()
            raise

    async def stop(self) -> None:
        for server in self._servers:
            await server.shutdown()  # type: ignore[no-untyped-call]
        self._servers.clear()
        if self._bridge is not None:
            self._bridge.close()
            self._bridge = None
        await asyncio.sleep(0)  # let pymodbus's close callbacks run

    async def __aenter__(self) -> ModbusSimulator:
        await self.start()
        return self

    async def __aexit__(self, exc_type: type[BaseException] | None,
                        exc: BaseException | None, tb: TracebackType | None) -> None:
        await self.stop()


async def _listen(server: ModbusBaseServer, where: str) -> None:
    try:
        await server.serve_forever(background=True)
    except RuntimeError:  # pymodbus logs the OSError and raises this instead
        raise OSError(f"cannot listen on {where}: address in use or not available") from None


class _PtyBridge:
    """Two pseudo-terminals joined master to master: a null-modem cable.

    pymodbus's serial server opens ``inner_path``; the master (collector, client) opens
    ``outer_path``.  Both slaves stay open here, so a master side never reads EIO while
    nobody has the other end open; bytes nobody reads are dropped when the buffer is full.
    """

    def __init__(self) -> None:
        self._fds: list[int] = []
        loop = asyncio.get_running_loop()
        try:
            inner_master, inner_slave = self._open()
            outer_master, outer_slave = self._open()
        except OSError:
            self.close()
            raise
        self.inner_path = os.ttyname(inner_slave)
        self.outer_path = os.ttyname(outer_slave)
        self._readers = (inner_master, outer_master)
        self.dropped = 0
        loop.add_reader(inner_master, self._pump, inner_master, outer_master)
        loop.add_reader(outer_master, self._pump, outer_master, inner_master)
        self._loop = loop

    def _open(self) -> tuple[int, int]:
        master, slave = os.openpty()
        self._fds += [master, slave]
        tty.setraw(slave)  # no echo, no line editing, no CR/LF translation
        os.set_blocking(master, False)
        return master, slave

    def _pump(self, src: int, dst: int) -> None:
        try:
            data = os.read(src, 4096)
        except OSError:  # EAGAIN, or EIO while the other end is being closed
            return
        try:
            written = os.write(dst, data)
        except OSError:
            written = 0
        self.dropped += len(data) - written

    def close(self) -> None:
        for fd in getattr(self, "_readers", ()):
            self._loop.remove_reader(fd)
        for fd in self._fds:
            with contextlib.suppress(OSError):
                os.close(fd)
        self._fds.clear()


def serve(sim: ModbusSimulator, *, ready: Callable[[ModbusSimulator], None] | None = None
          ) -> ModbusStats:
    """Run ``sim`` until SIGINT or SIGTERM (blocking); ``ready`` is called once it listens."""

    async def main() -> ModbusStats:
        loop = asyncio.get_running_loop()
        stop = asyncio.Event()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, stop.set)
        async with sim:
            if ready is not None:
                ready(sim)
            await stop.wait()
        return sim.stats

    return asyncio.run(main())



# ---- Modbus RTU on a shared RS-485 line (see simulators.bus.BusServer) ----------------------

def _crc(data: bytes) -> bytes:
    return int(FramerRTU.compute_CRC(data)).to_bytes(2, "big")


def rtu_request(data: bytes | bytearray, units: Iterable[int]) -> int:
    """Length of the complete 8-byte RTU request (03/04/05/06) at the start of ``data``
    for one of ``units``, or 0.  The CRC keeps DL/T645 bytes from passing for Modbus."""
    if len(data) < 8 or data[0] not in units or data[1] not in (3, 4, 5, 6):
        return 0
    return 8 if _crc(bytes(data[:6])) == bytes(data[6:8]) else 0


def rtu_reply(meter: SimulatedModbusMeter, request: bytes) -> bytes:
    """The RTU reply of ``meter`` to one 8-byte request (as the pymodbus server answers)."""
    unit, function = request[0], request[1]
    address = int.from_bytes(request[2:4], "big")
    arg = int.from_bytes(request[4:6], "big")
    meter.stats.requests += 1
    error: ExcCodes | None
    if function in (3, 4):
        table = _TABLE[function]
        valid = meter._valid[table]
        covered = all(a in valid for a in range(address, address + arg))
        words = [0] * arg
        error = meter._access(function, address, address, arg, words, None) if covered \
            else ExcCodes.ILLEGAL_ADDRESS
        pdu = bytes((unit, function, 2 * arg)) + b"".join(w.to_bytes(2, "big") for w in words)
    else:
        values: list[int] | list[bool] = [arg == 0xFF00] if function == 5 else [arg]
        error = meter._access(function, address, address, 1, [0], values)
        pdu = bytes(request[:6])
    if error is not None:
        pdu = bytes((unit, function | 0x80, int(error)))
        meter.stats.exceptions[error.name] += 1
    meter.stats.replies += 1
    return pdu + _crc(pdu)

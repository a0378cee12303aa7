"""The daemon's local control socket, and the CLI's client for it.

A running daemon owns its buses: a second master on an RS-485 line (``amic trip
--config`` opening the same concentrator) garbles both.  So the daemon listens on a Unix
socket, ``$RUNTIME_DIRECTORY/amic.sock`` under systemd (``RuntimeDirectory=amic``), else
``<data_dir>/amic.sock``, mode 0600; the CLI's commands that touch buses go through it
when a daemon answers for their configuration.

One JSON request per line, one JSON reply per line (``status``: ok or error)::

    {"op": "hello"}  -> {"status": "ok", "pid": 123, "collector": "gw", "data_dir": "..."}
    {"op": "relay", "action": "trip", "meters": ["M1"], "area": null,
     "operator": "alice", "reason": "arrears", "dry_run": false, "force": false}
        -> {"status": "ok", "results": [...], "exit": 0}
    {"op": "read", "meter": "M1", "quantities": ["voltage"]}
        -> {"status": "ok", "readings": [...]}
    {"op": "concentrators"} -> {"status": "ok", "concentrators": [{"name": ..., "a1": ...,
        "a2": ..., "listener": ..., "online": true, "since": "...", "meters": 8}]}
    {"op": "sync_archive", "name": "tq-1", "operator": "alice"}
        -> {"status": "ok", "exit": 0, "differences": [{"pn": 1, "field": "baud",
            "ledger": "2400", "concentrator": "9600", ...}], "error": ...}

Relay commands run through the daemon's relay service (the bus worker's command lane,
the same checks and audit as every other path; the operator and reason given are
recorded).  Only the socket's permissions and the peer's uid (the daemon's own or root,
SO_PEERCRED) authorise a request.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import socket
import stat
import struct
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any, Final

if TYPE_CHECKING:
    from collector.commands.relay_service import RelayService
    from collector.config.settings import Settings
    from collector.polling.context import DaemonContext

log = logging.getLogger("amic.ctlsocket")

SOCKET_NAME: Final = "amic.sock"
RUNTIME_ENV: Final = "RUNTIME_DIRECTORY"  # set by systemd's RuntimeDirectory=
SYSTEM_RUNTIME_DIR: Final = Path("/run/amic")  # the unit's RuntimeDirectory=amic
MAX_REQUEST: Final = 64 * 1024
MAX_PATH: Final = 107  # sun_path holds 108 bytes with the final NUL
CLOSE_WAIT: Final = 2.0  # s a stopping daemon waits for requests in flight (10 s budget)


class CtlError(Exception):
    """The daemon refused the request or could not be asked; the message says why."""


def socket_path(settings: Settings) -> Path:
    """Where the daemon of ``settings`` listens."""
    runtime = os.environ.get(RUNTIME_ENV)
    if runtime:
        return Path(runtime.split(":")[0]) / SOCKET_NAME
    return Path(settings.collector.data_dir) / SOCKET_NAME


def candidate_paths(settings: Settings) -> list[Path]:
    """Where the CLI looks for the daemon of ``settings``, in turn (the hello tells which
    configuration a daemon serves, so a socket of another one is passed over)."""
    paths = [socket_path(settings), SYSTEM_RUNTIME_DIR / SOCKET_NAME,
             Path(settings.collector.data_dir) / SOCKET_NAME]
    return list(dict.fromkeys(paths))


def _same_dir(a: str | Path, b: str | Path) -> bool:
    try:
        return Path(a).resolve() == Path(b).resolve()
    except OSError:
        return False


def _peer_uid(sock: socket.socket) -> int:
    creds = sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, struct.calcsize("3i"))
    _pid, uid, _gid = struct.unpack("3i", creds)
    return int(uid)


# ---- the daemon's side ------------------------------------------------------------------

class CtlServer:
    """The control socket of a running daemon; ``relay``: its relay service, None while
    it is starting."""

    def __init__(self, ctx: DaemonContext,
                 relay: Callable[[], RelayService | None] = lambda: None) -> None:
        self.ctx = ctx
        self.relay = relay
        self.path = socket_path(ctx.settings())
        self._server: asyncio.AbstractServer | None = None
        self._ino: int | None = None
        self._tasks: set[asyncio.Task[None]] = set()

    def _clear_stale(self) -> None:
        """Remove a socket left by a daemon that died; OSError when one still answers."""
        try:
            st = self.path.lstat()
        except FileNotFoundError:
            return
        if not stat.S_ISSOCK(st.st_mode):
            raise OSError(f"control socket {self.path}: exists and is not a socket; "
                          "remove it")
        probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        probe.settimeout(1.0)
        try:
            probe.connect(str(self.path))
        except (ConnectionRefusedError, FileNotFoundError):
            log.info("control socket %s: stale (no daemon behind it); replaced", self.path)
            with contextlib.suppress(FileNotFoundError):
                self.path.unlink()
            return
        except OSError:
            pass  # cannot tell (e.g. not ours): let bind say what is wrong
        else:
            raise OSError(f"control socket {self.path}: another amic daemon answers there "
                          "(same data directory); stop it first")
        finally:
            probe.close()

    async def start(self) -> None:
        """Bind (mode 0600 before anyone can connect) and serve."""
        if len(os.fsencode(self.path)) > MAX_PATH:
            log.warning("control socket %s: path too long for a Unix socket; the CLI "
                        "cannot reach this daemon", self.path)
            return
        self._clear_stale()
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            sock.bind(str(self.path))
            os.chmod(self.path, 0o600)  # before listen(): nobody connects in between
            sock.listen(16)
        except OSError:
            sock.close()
            raise
        self._ino = self.path.stat().st_ino
        self._server = await asyncio.start_unix_server(self._client, sock=sock,
                                                       limit=MAX_REQUEST)
        log.info("control socket %s", self.path)

    async def close(self) -> None:
        if self._server is None:
            return
        self._server.close()
        # A command in flight finishes and is recorded (its job is on a bus that drains
        # anyway); an idle connection is cut.
        if self._tasks:
            await asyncio.wait(list(self._tasks), timeout=CLOSE_WAIT)
        for t in list(self._tasks):
            t.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        with contextlib.suppress(Exception):
            await asyncio.wait_for(self._server.wait_closed(), 1.0)
        self._server = None
        # Only our own file: a daemon started since may have replaced it.
        with contextlib.suppress(OSError):
            if self.path.stat().st_ino == self._ino:
                self.path.unlink()

    async def _client(self, reader: asyncio.StreamReader,
                      writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        if task is not None:
            self._tasks.add(task)
        try:
            sock = writer.get_extra_info("socket")
            uid = _peer_uid(sock) if sock is not None else -1
            if uid not in (0, os.getuid()):
                log.warning("control socket: uid %d refused", uid)
                # Read the request first: closing on unread data would reset the
                # connection, and the client would not see why.
                with contextlib.suppress(ValueError, TimeoutError):
                    await asyncio.wait_for(reader.readline(), 2.0)
                await self._reply(writer, {"status": "error",
                                           "error": f"uid {uid} may not use this daemon"})
                return
            while True:
                try:
                    line = await reader.readline()
                except ValueError:  # longer than the limit
                    await self._reply(writer, {"status": "error",
                                               "error": f"request longer than {MAX_REQUEST} "
                                                        "bytes"})
                    return
                if not line:
                    return
                await self._reply(writer, await self.handle(line, uid))
        except (ConnectionError, asyncio.IncompleteReadError):
            pass
        finally:
            if task is not None:
                self._tasks.discard(task)
            writer.close()
            with contextlib.suppress(Exception):
                await writer.wait_closed()

    @staticmethod
    async def _reply(writer: asyncio.StreamWriter, doc: dict[str, Any]) -> None:
        writer.write(json.dumps(doc, ensure_ascii=False, default=str).encode() + b"\n")
        await writer.drain()

    async def handle(self, line: bytes, uid: int = -1) -> dict[str, Any]:
        """The reply to one request line; never raises for a bad request."""
        try:
            request = json.loads(line)
        except (UnicodeDecodeError, ValueError) as e:
            return {"status": "error", "error": f"not a JSON request: {e}"}
        if not isinstance(request, dict):
            return {"status": "error", "error": "expected a JSON object"}
        op = request.get("op")
        try:
            if op == "hello":
                c = self.ctx.settings().collector
                return {"status": "ok", "pid": os.getpid(), "collector": c.id,
                        "data_dir": str(Path(c.data_dir).resolve())}
            if op == "relay":
                return {"status": "ok", **await self._relay(request, uid)}
            if op == "read":
                return {"status": "ok", **await self._read(request)}
            if op == "concentrators":
                return {"status": "ok", "concentrators": self._concentrators()}
            if op == "sync_archive":
                return {"status": "ok", **await self._sync_archive(request, uid)}
        except CtlError as e:
            return {"status": "error", "error": str(e)}
        except Exception as e:  # a request never takes the daemon down
            log.exception("control socket: %s request failed", op)
            return {"status": "error", "error": f"{type(e).__name__}: {e}"}
        return {"status": "error", "error": "op: expected hello, relay or read (or "
                                            f"concentrators, sync_archive), got {op!r}"}

    async def _relay(self, request: dict[str, Any], uid: int) -> dict[str, Any]:
        from collector.commands.relay_service import CommandRejected, exit_status

        relay = self.relay()
        if relay is None:
            raise CtlError("the daemon is starting; try again")
        action = request.get("action")
        if not isinstance(action, str):
            raise CtlError("action: expected trip, restore, hold, release, alarm, "
                           "alarm_release or status")
        ids = request.get("meters")
        area = request.get("area")
        if isinstance(area, str) and area:
            ids = [m.meter_id for m in self.ctx.settings().meters if m.area == area]
            if not ids:
                raise CtlError(f"area {area}: no meters configured there")
        if not isinstance(ids, list) or not ids or not all(isinstance(m, str) for m in ids):
            raise CtlError("meters: expected a non-empty list of meter ids (or area)")
        operator = request.get("operator") or ""
        reason = request.get("reason") or ""
        dry_run = request.get("dry_run", False)
        force = request.get("force", False)
        if not isinstance(operator, str) or not isinstance(reason, str) \
                or not isinstance(dry_run, bool) or not isinstance(force, bool):
            raise CtlError("operator, reason: expected text; dry_run, force: true or false")
        if action != "status":
            log.info("control socket: %s of %d meter(s) by operator %s (uid %d)", action,
                     len(ids), operator or "-", uid)
        try:
            results = await relay.run(action, ids, operator=operator,
                                      reason=reason.strip(), dry_run=dry_run, force=force)
        except CommandRejected as e:
            raise CtlError(str(e)) from None
        return {"results": results, "exit": exit_status(results)}

    async def _read(self, request: dict[str, Any]) -> dict[str, Any]:
        from collector.commands.remote import CommandError, daemon_executor

        meter = request.get("meter")
        quantities = request.get("quantities")
        if not isinstance(meter, str) or not meter:
            raise CtlError("meter: expected a meter id")
        if not isinstance(quantities, list) or not quantities \
                or not all(isinstance(q, str) for q in quantities):
            raise CtlError("quantities: expected a non-empty list of names")
        try:
            return await daemon_executor(self.ctx)({"meter": meter,
                                                    "quantities": quantities})
        except (CommandError, ValueError) as e:
            raise CtlError(str(e)) from None


    # ---- concentrators ------------------------------------------------------------------

    def _concentrators(self) -> list[dict[str, Any]]:
        from drivers.concentrator_meter import TerminalLink

        settings = self.ctx.settings()
        workers = self.ctx.workers()
        out = []
        for c in settings.concentrators:
            worker = workers.get(c.name)
            link = worker.line.terminal if worker is not None else None
            since = link.since if isinstance(link, TerminalLink) else None
            out.append({"name": c.name, "a1": c.a1, "a2": c.a2, "listener": c.listener,
                        "online": since is not None,
                        "since": since.isoformat() if since is not None else None,
                        "meters": sum(m.bus == c.name for m in settings.meters)})
        return out

    async def _sync_archive(self, request: dict[str, Any], uid: int) -> dict[str, Any]:
        """AFN04 F10 from the ledger, read back; ``exit`` 0 in sync, 1 differences
        remain (or refused), 2 offline or unknown.  Journaled as a ``sync_archive``
        command (who, the outcome, the differences) and logged."""
        from collector.polling.scheduler import Lane
        from drivers.concentrator_meter import TerminalLink, sync_archive
        from drivers.errors import DriverError, LinkDown, NoReply

        name = request.get("name")
        operator = request.get("operator") or f"uid {uid}"
        if not isinstance(name, str) or not name or not isinstance(operator, str):
            raise CtlError("name: expected a concentrator name")
        settings = self.ctx.settings()
        conc = next((c for c in settings.concentrators if c.name == name), None)
        worker = self.ctx.workers().get(name)
        link = worker.line.terminal if worker is not None else None
        if conc is None or worker is None or not isinstance(link, TerminalLink):
            known = ", ".join(c.name for c in settings.concentrators) or "none"
            return {"exit": 2, "error": f"no concentrator {name} in this configuration "
                                        f"(known: {known})"}
        meters = [m for m in settings.meters if m.bus == name and m.pn is not None]
        out: dict[str, Any] = {"concentrator": name, "terminal": str(link.terminal),
                               "meters": len(meters), "differences": []}
        log.info("control socket: archive sync of concentrator %s (%d meters) by %s",
                 name, len(meters), operator)
        try:
            devices = [worker.device(m) for m in meters]
            diffs = await worker.submit(Lane.COMMAND,
                                        lambda w: sync_archive(link, devices))
        except (LinkDown, NoReply) as e:
            out.update(exit=2, error=f"concentrator {name} is offline: {e}")
        except (DriverError, ValueError) as e:
            out.update(exit=1, error=f"concentrator {name}: {e}")
        else:
            out["differences"] = [{"serial": d.serial, "pn": d.pn, "field": d.field,
                                   "ledger": d.ledger, "concentrator": d.concentrator}
                                  for d in diffs]
            out["exit"] = 1 if diffs else 0
        self._audit(name, operator, out)
        return out

    def _audit(self, name: str, operator: str, out: dict[str, Any]) -> None:
        import uuid

        from collector.store.records import CommandRecord, utcnow

        status = {0: "verified", 1: "failed", 2: "failed"}[out["exit"]]
        outcome = out.get("error") or (f"{len(out['differences'])} difference(s) remain"
                                       if out["differences"] else "in sync")
        log.log(logging.INFO if out["exit"] == 0 else logging.WARNING,
                "archive sync of concentrator %s: %s", name, outcome)
        writer = self.ctx.writer()
        if writer is not None:
            writer.put_command(CommandRecord(
                uuid.uuid4().hex, name, "sync_archive", utcnow(), operator, status,
                json.dumps({k: v for k, v in out.items() if k != "concentrator"},
                           ensure_ascii=False, default=str)))


# ---- the CLI's side ---------------------------------------------------------------------

class CtlClient:
    """A connection to the daemon of a configuration (blocking; for the CLI)."""

    def __init__(self, sock: socket.socket, path: Path, hello: dict[str, Any]) -> None:
        self.sock = sock
        self.path = path
        self.pid = int(hello.get("pid") or 0)
        self._file = sock.makefile("rb")

    def call(self, request: dict[str, Any], timeout: float) -> dict[str, Any]:
        """The daemon's reply (``status`` ok); CtlError with its message otherwise."""
        self.sock.settimeout(timeout)
        try:
            self.sock.sendall(json.dumps(request, ensure_ascii=False).encode() + b"\n")
            line = self._file.readline()
        except TimeoutError:
            raise CtlError(f"no reply within {timeout:g} s") from None
        except OSError as e:
            raise CtlError(str(e.strerror or e)) from None
        if not line:
            raise CtlError("closed the connection without a reply")
        try:
            reply = json.loads(line)
        except ValueError:
            raise CtlError("unreadable reply") from None
        if not isinstance(reply, dict):
            raise CtlError("unreadable reply")
        if reply.get("status") != "ok":
            raise CtlError(str(reply.get("error") or "failed"))
        return reply

    def close(self) -> None:
        self._file.close()
        self.sock.close()

    def __enter__(self) -> CtlClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _connect(path: Path, data_dir: Path) -> CtlClient | None:
    """The daemon at ``path`` if it answers for ``data_dir``; None when nothing listens
    there; CtlError when one does but refuses us."""
    if len(os.fsencode(path)) > MAX_PATH:
        return None
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    sock.settimeout(3.0)
    try:
        sock.connect(str(path))
    except (FileNotFoundError, ConnectionRefusedError, NotADirectoryError):
        sock.close()
        return None  # no daemon, or a stale socket
    except PermissionError:
        sock.close()
        raise CtlError(f"a daemon's control socket {path} exists but you may not use it "
                       "(permission denied): run as the daemon's user or root") from None
    except OSError:
        sock.close()
        return None
    client = CtlClient(sock, path, {})
    try:
        hello = client.call({"op": "hello"}, 3.0)
    except CtlError as e:
        client.close()
        raise CtlError(f"the daemon at {path}: {e}") from None
    if not _same_dir(str(hello.get("data_dir", "")), data_dir):
        client.close()
        return None  # a daemon of another configuration
    client.pid = int(hello.get("pid") or 0)
    return client


def connect(settings: Settings) -> CtlClient | None:
    """The running daemon of ``settings``, or None when none runs (open the buses then).

    CtlError when a daemon runs but cannot be used: never a second master behind its back.
    """
    data_dir = Path(settings.collector.data_dir)
    for path in candidate_paths(settings):
        client = _connect(path, data_dir)
        if client is not None:
            return client
    return None


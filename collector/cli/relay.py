"""``amic trip|restore|hold|release|relay-status|topup|audit``: remote relay control.

Two ways to reach a meter:

- ``--via mqtt://BROKER --collector ID``: the running collector carries the command out
  on the meter's bus (command lane, ahead of polling) and records it.  The request is
  signed with the operator's key (``--secrets FILE``, ``[operators.NAME] key``).
- ``--config FILE``: when a daemon runs for that configuration, the command goes through
  it (its local control socket, collector/service/ctlsocket.py: the daemon owns the buses);
  otherwise this process opens the meters' buses itself (commissioning, or a gateway
  whose daemon is stopped), with the passwords of the configuration's secrets file, and
  records the commands in the configuration's store.

A trip skips protected meters (area master meters, ``[prepaid] protected`` customers):
``skipped_protected`` in the results and the audit; ``--force`` (with ``--reason``)
trips them too, and the audit records who forced it and why.  ``--dry-run`` predicts:
it reads the state before and runs every check of the real command, sending nothing.

Exit status (the worst over the meters): 0 confirmed, dry run that would be sent, or
skipped as protected, 3 refused by the meter (or hold power on: a trip is not sent),
4 unconfirmed (no state change seen in time), 5 a reply from another address,
6 failed (link, no state), 7 unsupported, 8 expired before its turn, 1 the collector or
the broker could not be asked, 2 bad arguments or declined.
"""

from __future__ import annotations

import asyncio
import contextlib
import getpass
import json
import logging
import os
import sys
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any, NoReturn

import click

from collector.commands.relay_service import CommandRejected, RelayService, exit_status
from collector.commands.remote import BrokerError, RemoteError, new_request_id
from collector.commands.signing import sign
from collector.config import ConfigError, load_settings
from collector.config.secrets import Secrets, SecretsError, load_secrets
from collector.config.settings import CommandSettings, Settings
from collector.store.records import from_ms
from protocols.modbus import Profile

from .query import parse_since
from .read import RemoteOptions, call_remote, remote_password
from .times import json_time, show_time
from .viadaemon import ask, daemon_of

EXIT_FAILED = 1
EXIT_USAGE = 2
OPERATOR_ENV = "AMIC_OPERATOR"


def _fail(message: str, code: int) -> NoReturn:
    click.echo(f"amic: {message}", err=True)
    sys.exit(code)


def _via_options(f: Any) -> Any:
    opts = [
        click.option("--via", default=None, metavar="BROKER",
                     help="Through a running collector: mqtt://HOST:PORT or mqtts://..."),
        click.option("--collector", "--fleet", "collector_id", default=None, metavar="ID",
                     help="With --via: the collector's id, or the name of a fleet of "
                          "collectors ([mqtt] fleet): the one holding the session of the "
                          "meter's concentrator answers."),
        click.option("--username", default=None, metavar="USER",
                     help="With --via: broker user."),
        click.option("--password-file", default=None, metavar="FILE",
                     help="With --via: file holding the broker password "
                          "(else $AMIC_MQTT_PASSWORD)."),
        click.option("--ca-file", default=None, metavar="FILE",
                     help="With --via: CA certificate(s) of the broker (mqtts)."),
        click.option("--cert-file", default=None, metavar="FILE",
                     help="With --via: client certificate."),
        click.option("--key-file", default=None, metavar="FILE",
                     help="With --via: client certificate key."),
        click.option("--config", "-c", "config_path", default=None, metavar="FILE",
                     type=click.Path(dir_okay=False, path_type=Path),
                     help="Without --via: the collector's configuration; through its "
                          "running daemon if there is one, else this process opens the "
                          "buses itself."),
        click.option("--timeout-s", default=120.0, show_default=True, type=float,
                     help="Wait this long for the result."),
        click.option("--json", "as_json", is_flag=True,
                     help="One JSON object per meter, one a line (JSON Lines)."),
    ]
    for o in reversed(opts):
        f = o(f)
    return f


def _operator(name: str | None) -> str:
    if name:
        return name
    env = os.environ.get(OPERATOR_ENV)
    if env:
        return env
    with contextlib.suppress(Exception):
        return getpass.getuser()
    _fail(f"give --operator NAME (or ${OPERATOR_ENV})", EXIT_USAGE)


def _remote_opts(via: str, collector_id: str | None, username: str | None,
                 password_file: str | None, ca_file: str | None, cert_file: str | None,
                 key_file: str | None, timeout_s: float) -> RemoteOptions:
    if not collector_id:
        _fail("--via needs --collector ID (or --fleet NAME)", EXIT_USAGE)
    return RemoteOptions(via, collector_id, None, username, password_file, ca_file,
                         cert_file, key_file, 0, int(timeout_s * 1000))


async def _via(opts: RemoteOptions, command: str, body: dict[str, Any],
               request_id: str) -> dict[str, Any]:
    password = remote_password(opts)
    assert opts.collector is not None
    quiet = logging.NullHandler()
    amic_log = logging.getLogger("amic")
    amic_log.addHandler(quiet)
    try:
        return await call_remote(opts, password, opts.collector, body, request_id,
                                  command=command)
    finally:
        amic_log.removeHandler(quiet)


def _signed(body: dict[str, Any], operator: str, secrets_path: Path | None,
            collector: str | None) -> dict[str, Any]:
    """``body`` signed with the operator's key from the secrets file, bound to the
    collector and the command (the collector refuses it anywhere else)."""
    if secrets_path is None:
        _fail("--secrets FILE: the operator's signing key ([operators.NAME] key) is needed "
              "to send a command through the broker", EXIT_USAGE)
    try:
        key = load_secrets(secrets_path).operator_key(operator)
    except SecretsError as e:
        _fail(str(e), EXIT_USAGE)
    return sign(body, operator, key, collector=collector, command=body["command"])


def _ask(opts: RemoteOptions, command: str, body: dict[str, Any],
         request_id: str) -> dict[str, Any]:
    """The collector's reply to ``body``; exits 1 when it fails or cannot be asked."""
    try:
        reply = asyncio.run(_via(opts, command, body, request_id))
    except (BrokerError, RemoteError, ValueError) as e:
        _fail(f"collector {opts.collector}: {e}", EXIT_FAILED)
    if reply.get("status") != "ok":
        _fail(f"collector {opts.collector}: {reply.get('error') or 'failed'}", EXIT_FAILED)
    return reply


def _settings(path: Path) -> Settings:
    try:
        return load_settings(path)
    except ConfigError as e:
        for p in e.problems:
            click.echo(str(p), err=True)
        _fail(f"{path}: {len(e.problems)} problem(s)", EXIT_USAGE)
    except OSError as e:
        _fail(f"{path}: {e.strerror or e}", EXIT_USAGE)


async def _local(settings: Settings, secrets: Secrets | None, action: str, meters: list[str],
                 *, operator: str, reason: str, dry_run: bool,
                 force: bool = False) -> list[dict[str, Any]]:
    from collector.commands.relay_service import protected_meters
    from collector.config.profiles import load_profile
    from collector.polling.scheduler import BusWorker
    from collector.service.daemon import make_bus
    from collector.store import Store, StoreWriter

    c = settings.collector
    c.data_dir.mkdir(parents=True, exist_ok=True)
    store = Store(c.data_dir / "amic.db")
    writer = StoreWriter(store, commit_interval=0.2)
    await writer.start()
    chosen = {m.meter_id: m for m in settings.meters}
    buses = {chosen[m].bus for m in meters if m in chosen}
    workers: dict[str, BusWorker] = {}

    def profile(name: str) -> Profile:
        return load_profile(name, search=[settings.source.parent])

    try:
        for b in settings.buses:
            if b.name in buses:
                w = BusWorker(b.name, make_bus(b), preamble=b.preamble, modbus=b.modbus,
                              profiles=profile)
                await w.start()
                workers[b.name] = w
        service = RelayService(
            meters=lambda: settings.meters, workers=lambda: workers, secrets=secrets,
            profile=profile,
            record=writer.put_command, settings=settings.commands or CommandSettings(),
            protected=lambda: protected_meters(settings))
        return await service.run(action, meters, operator=operator, reason=reason,
                                 dry_run=dry_run, force=force)
    finally:
        for w in workers.values():
            await w.stop(2.0)
            with contextlib.suppress(Exception):
                await w.bus.close()
        await writer.close()
        store.close()


def _show(results: list[dict[str, Any]], as_json: bool, extra: dict[str, Any]) -> None:
    if as_json:  # JSON Lines: one object per meter
        for r in results:
            click.echo(json.dumps({**extra, **r}, ensure_ascii=False, default=str))
        return
    click.echo(f"{'meter':<14} {'status':<17} {'relay before':<13} {'after':<8} "
               f"{'energy kWh':>11} {'ms':>7}  detail")
    for r in results:
        before = _relay(r.get("before") or r.get("state") or {})
        after = _relay(r.get("after") or {})
        energy = r.get("energy_at_switch")
        lat = r.get("latency_ms")
        click.echo(f"{r.get('meter')!s:<14} {r.get('status')!s:<17} {before:<13} "
                   f"{after:<8} {'' if energy is None else f'{energy:.2f}':>11} "
                   f"{'' if lat is None else f'{lat:.0f}':>7}  {r.get('detail', '')}")


def _relay(state: dict[str, Any]) -> str:
    v = state.get("relay_open")
    return "-" if v is None else ("open" if v else "closed")


def _name(action: str) -> str:
    return "relay-status" if action == "status" else action


def _switch(action: str, meters: tuple[str, ...], area: str | None, reason: str | None,
            dry_run: bool, yes: bool, operator: str | None, secrets_path: Path | None,
            via: str | None, collector_id: str | None, username: str | None,
            password_file: str | None, ca_file: str | None, cert_file: str | None,
            key_file: str | None, config_path: Path | None, timeout_s: float,
            as_json: bool, force: bool = False) -> None:
    if action != "status" and (not reason or not reason.strip()):
        _fail("--reason TEXT is required: every command records why", EXIT_USAGE)
    if force and action != "trip":
        _fail("--force is for trip only (it trips protected meters)", EXIT_USAGE)
    if bool(meters) == bool(area):
        _fail("give METER ids or --area AREA (one of them)", EXIT_USAGE)
    if (via is None) == (config_path is None):
        _fail("give --via mqtt://BROKER --collector ID (through the collector) or "
              "--config FILE (this process opens the buses)", EXIT_USAGE)
    who = _operator(operator) if action != "status" else ""
    settings = _settings(config_path) if config_path is not None else None
    ids = list(meters)
    if area and settings is not None:
        ids = [m.meter_id for m in settings.meters if m.area == area]
        if not ids:
            _fail(f"area {area}: no meters in {config_path}", EXIT_USAGE)
    count = len(ids) if ids else None
    if action != "status" and not dry_run and (area or len(ids) > 1) and not yes:
        what = f"{count} meters" if count else f"every meter of area {area}"
        if force:
            what += ", protected ones too (--force)"
        if not click.confirm(f"{action} {what} ({', '.join(ids[:5])}"
                             f"{' ...' if len(ids) > 5 else ''})?", default=False,
                             err=True):
            _fail("declined: nothing sent", EXIT_USAGE)
    reason_text = (reason or "").strip()
    if via is not None:
        opts = _remote_opts(via, collector_id, username, password_file, ca_file, cert_file,
                            key_file, timeout_s)
        rid = new_request_id()
        body: dict[str, Any] = {"request_id": rid, "command": "relay", "action": action,
                                "reason": reason_text, "dry_run": dry_run}
        if force:
            body["force"] = True
        if area:
            body["area"] = area
        else:
            body["meters"] = ids
        if action != "status":
            body = _signed(body, who, secrets_path, opts.collector)
        reply = _ask(opts, "relay", body, rid)
        results = [r for r in reply.get("results") or [] if isinstance(r, dict)]
    elif settings is not None and (daemon := daemon_of(settings, _name(action))) is not None:
        # The daemon owns the buses: the command goes on its command lane, audited there.
        reply = ask(daemon, _name(action), {"op": "relay", "action": action, "meters": ids,
                                            "operator": who, "reason": reason_text,
                                            "dry_run": dry_run, "force": force},
                     timeout_s)
        results = [r for r in reply.get("results") or [] if isinstance(r, dict)]
    else:
        assert settings is not None
        cs = settings.commands
        path = secrets_path or (cs.secrets_file if cs is not None else None)
        secrets = None
        if path is not None:
            try:
                secrets = load_secrets(path)
            except SecretsError as e:
                _fail(str(e), EXIT_USAGE)
        try:
            results = asyncio.run(_local(settings, secrets, action, ids, operator=who,
                                         reason=reason_text, dry_run=dry_run, force=force))
        except CommandRejected as e:
            _fail(str(e), EXIT_USAGE)
    _show(results, as_json, {"action": action, "operator": who})
    sys.exit(exit_status(results))


def _make(action: str, help_text: str) -> click.Command:
    @click.command(name=action if action != "status" else "relay-status", help=help_text)
    @click.argument("meters", nargs=-1)
    @click.option("--area", default=None, metavar="AREA", help="Every meter of this area.")
    @_via_options
    def cmd(meters: tuple[str, ...], area: str | None, via: str | None,
            collector_id: str | None, username: str | None, password_file: str | None,
            ca_file: str | None, cert_file: str | None, key_file: str | None,
            config_path: Path | None, timeout_s: float, as_json: bool,
            **kw: Any) -> None:
        _switch(action, meters, area, kw.get("reason"), kw.get("dry_run", False),
                kw.get("yes", False), kw.get("operator"), kw.get("secrets_path"), via,
                collector_id, username, password_file, ca_file, cert_file, key_file,
                config_path, timeout_s, as_json, kw.get("force", False))

    if action == "trip":
        cmd = click.option("--force", is_flag=True,
                           help="Trip protected meters too (area master meters, [prepaid] "
                                "protected customers); needs --reason; audited.")(cmd)
    if action != "status":
        cmd = click.option("--reason", default=None, metavar="TEXT",
                           help="Why (kept in the audit trail). Required.")(cmd)
        cmd = click.option("--dry-run", is_flag=True,
                           help="Check everything and read the relay state; send "
                                "nothing. Exits as the command would start.")(cmd)
        cmd = click.option("--yes", is_flag=True,
                           help="No confirmation for several meters or an area.")(cmd)
        cmd = click.option("--operator", default=None, metavar="NAME",
                           help=f"Who gives the command (default ${OPERATOR_ENV} or the "
                                "login name); a name in the secrets file.")(cmd)
        cmd = click.option("--secrets", "secrets_path", default=None, metavar="FILE",
                           type=click.Path(dir_okay=False, path_type=Path),
                           help="Secrets file (mode 0600): the operator's signing key "
                                "with --via; meter passwords with --config (default: "
                                "[commands] secrets_file).")(cmd)
    return cmd


trip = _make("trip", "Open the relay (cut supply) of METER..., verified. Area master "
                     "meters and [prepaid] protected customers are skipped unless --force.")
restore = _make("restore", "Close permitted (or direct close, [commands] direct_close) "
                           "for METER..., verified.")
hold = _make("hold", "Hold power (保电): the meter refuses every trip until released.")
release = _make("release", "Release hold power.")
relay_status = _make("status", "Read the relay state of METER... (nothing sent).")


@click.command()
@click.argument("meter")
@click.argument("amount")
@click.option("--ref", required=True, metavar="TEXT", help="Payment reference (receipt).")
@click.option("--operator", default=None, metavar="NAME", help="Who records it.")
@click.option("--secrets", "secrets_path", required=True, metavar="FILE",
              type=click.Path(dir_okay=False, path_type=Path),
              help="Secrets file with the operator's signing key.")
@_via_options
def topup(meter: str, amount: str, ref: str, operator: str | None, secrets_path: Path,
          via: str | None, collector_id: str | None, username: str | None,
          password_file: str | None, ca_file: str | None, cert_file: str | None,
          key_file: str | None, config_path: Path | None, timeout_s: float,
          as_json: bool) -> None:
    """Record a payment of AMOUNT yuan for prepaid METER (through the collector: --via).

    A meter that was tripped for want of credit is restored, and the restore confirmed.
    """
    if via is None:
        _fail("a top-up goes to the running collector's prepaid engine: give --via "
              "mqtt://BROKER --collector ID", EXIT_USAGE)
    who = _operator(operator)
    opts = _remote_opts(via, collector_id, username, password_file, ca_file, cert_file,
                        key_file, timeout_s)
    rid = new_request_id()
    body = _signed({"request_id": rid, "command": "topup", "meter": meter, "amount": amount,
                    "ref": ref}, who, secrets_path, opts.collector)
    reply = _ask(opts, "topup", body, rid)
    if as_json:
        click.echo(json.dumps(reply, ensure_ascii=False))
    else:
        click.echo(f"meter {meter}: {amount} yuan recorded; balance {reply.get('balance')}")
        written = reply.get("written")
        if isinstance(written, dict):
            click.echo(f"written into the meter: {written.get('status')} (purchase "
                       f"{written.get('count')})"
                       + (f": {written.get('detail')}" if written.get("detail") else ""))
        restore = reply.get("restore") or []
        if restore:
            _show(restore, False, {})
    code = exit_status(reply.get("restore") or [])
    written = reply.get("written")
    if isinstance(written, dict) and written.get("status") != "confirmed":
        code = max(code, 1)  # recorded, but not (yet) in the meter: retried, or refused
    sys.exit(code)


@click.command()
@click.option("--config", "-c", "config_path", required=True, metavar="FILE",
              type=click.Path(dir_okay=False, path_type=Path))
@click.option("--meter", default=None, metavar="METER_ID")
@click.option("--since", default="30d", show_default=True,
              help="How far back: 2h, 7d, or a date/time (local).")
@click.option("--json", "as_json", is_flag=True, help="One JSON object per line.")
def audit(config_path: Path, meter: str | None, since: str, as_json: bool) -> None:
    """List relay commands and top-ups: when (local time with the UTC offset), who,
    what, the outcome, relay state and energy before and after, and why."""
    from collector.store import Store, StoreError

    settings = _settings(config_path)
    try:
        start = parse_since(since)
    except ValueError as e:
        _fail(f"--since: {e}", EXIT_USAGE)
    try:
        store = Store(settings.collector.data_dir / "amic.db", create=False)
    except StoreError as e:
        _fail(str(e), EXIT_USAGE)
    rows = [dict(r) for r in store.audit(since=start, meter=meter)]
    store.close()
    if as_json:  # JSON Lines: one object per command
        for r in rows:
            click.echo(json.dumps(audit_json(r), ensure_ascii=False, default=str))
        return
    click.echo(audit_table(rows))


def _detail(row: Mapping[str, Any]) -> dict[str, Any]:
    with contextlib.suppress(ValueError, TypeError):
        doc = json.loads(row["detail"])
        if isinstance(doc, dict):
            return doc
    return {}


def audit_json(row: Mapping[str, Any]) -> dict[str, Any]:
    """One audit row for --json: the time local with its offset, the detail parsed."""
    return {"time": json_time(from_ms(row["ts"])), "ts_ms": row["ts"],
            "command_id": row["command_id"], "meter": row["meter"], "action": row["kind"],
            "status": row["status"], "operator": row["operator"], "detail": _detail(row)}


def _kwh(v: object) -> str:
    return f"{v:.2f}" if isinstance(v, (int, float)) and not isinstance(v, bool) else "-"


def why(detail: Mapping[str, Any]) -> str:
    # A denied request's detail is its reply: the refusal is its "error".
    return str(detail.get("reason") or detail.get("error") or detail.get("detail") or "")


def _forced(detail: Mapping[str, Any]) -> str:
    forced = detail.get("forced")
    return f" (forced: {forced.get('protected')})" if isinstance(forced, dict) else ""


def audit_table(rows: Iterable[Mapping[str, Any]]) -> str:
    """Who, when, what, the outcome, relay and energy before and after, and why."""
    cells = [("TIME", "METER", "ACTION", "STATUS", "OPERATOR", "RELAY_BEFORE",
              "RELAY_AFTER", "KWH_BEFORE", "KWH_AFTER", "REASON")]
    for r in rows:
        d = _detail(r)
        before = d.get("before") if isinstance(d.get("before"), dict) else {}
        after = d.get("after") if isinstance(d.get("after"), dict) else {}
        cells.append((show_time(from_ms(r["ts"])), str(r["meter"]), str(r["kind"]),
                      str(r["status"]), str(r["operator"]) or "-", _relay(before or {}),
                      _relay(after or {}), _kwh(d.get("energy_before")),
                      _kwh(d.get("energy_at_switch")), why(d) + _forced(d)))
    widths = [max(len(c[i]) for c in cells) for i in range(len(cells[0]))]
    right = {7, 8}
    return "\n".join("  ".join(x.rjust(w) if i in right else x.ljust(w)
                               for i, (x, w) in enumerate(zip(c, widths, strict=True))
                               ).rstrip() for c in cells)

"""A real mosquitto broker for tests: own config, own temp dir, a free loopback port.

    from mosquitto import Broker, broker_fixture
    with Broker(tmp_path) as b: b.url  ->  "mqtt://127.0.0.1:PORT"

``tls=True`` also opens a TLS listener with a CA, server and client certificates made
by ``openssl`` in the temp dir (``b.tls_port``, ``b.ca``, ``b.client_cert``,
``b.client_key``); ``password=True`` requires user ``amic`` / password ``secret``.
``restart()`` stops and starts it on the same ports with the same persistence, for
broker-outage tests.  ``persistence=False`` is mosquitto's default: a restart forgets
every session.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import time
from pathlib import Path
from types import TracebackType

from conftest import free_port

MOSQUITTO = shutil.which("mosquitto") or "/usr/sbin/mosquitto"
USER, PASSWORD = "amic", "secret"


def _wait_port(port: int, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.2):
                return
        except OSError:
            time.sleep(0.05)
    raise RuntimeError(f"mosquitto did not listen on {port} within {timeout} s")


def make_certificates(d: Path) -> dict[str, Path]:
    """A CA, a server certificate for 127.0.0.1/localhost and a client certificate."""
    def run(*args: str) -> None:
        subprocess.run(["openssl", *args], cwd=d, check=True, capture_output=True)

    run("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2", "-subj",
        "/CN=amic test CA", "-keyout", "ca.key", "-out", "ca.crt")
    (d / "san.ext").write_text("subjectAltName=IP:127.0.0.1,DNS:localhost\n")
    for name, cn in (("server", "localhost"), ("client", "amic-client")):
        run("req", "-newkey", "rsa:2048", "-nodes", "-subj", f"/CN={cn}", "-keyout",
            f"{name}.key", "-out", f"{name}.csr")
        extra = ["-extfile", "san.ext"] if name == "server" else []
        run("x509", "-req", "-in", f"{name}.csr", "-CA", "ca.crt", "-CAkey", "ca.key",
            "-CAcreateserial", "-days", "2", "-out", f"{name}.crt", *extra)
    return {k: d / k for k in ("ca.crt", "server.crt", "server.key", "client.crt",
                               "client.key")}


class Broker:
    def __init__(self, directory: Path, *, tls: bool = False, password: bool = False,
                 persistence: bool = True) -> None:
        self.dir = directory
        self.dir.mkdir(parents=True, exist_ok=True)
        self.port = free_port()
        self.tls_port = free_port() if tls else 0
        self.password = password
        self.persistence = persistence
        self.proc: subprocess.Popen[bytes] | None = None
        self.log = self.dir / "mosquitto.log"
        self.certs = make_certificates(self.dir) if tls else {}
        self.conf = self.dir / "mosquitto.conf"
        self._write_conf()

    @property
    def url(self) -> str:
        return f"mqtt://127.0.0.1:{self.port}"

    @property
    def ca(self) -> Path:
        return self.certs["ca.crt"]

    @property
    def client_cert(self) -> Path:
        return self.certs["client.crt"]

    @property
    def client_key(self) -> Path:
        return self.certs["client.key"]

    def _write_conf(self) -> None:
        lines = [
            # As root, mosquitto would switch to user "mosquitto", who cannot read our
            # temp dir; stay who we are.
            *(["user root"] if os.geteuid() == 0 else []),
            "per_listener_settings false",
            *(["persistence true", f"persistence_location {self.dir}/",
               "autosave_interval 1"] if self.persistence else ["persistence false"]),
            f"log_dest file {self.log}",
            "log_type error",
            "log_type warning",
            "log_type notice",
            f"listener {self.port} 127.0.0.1",
        ]
        if self.password:
            pwfile = self.dir / "passwd"
            pwfile.write_text(f"{USER}:{PASSWORD}\n")
            pwfile.chmod(0o600)
            subprocess.run(["mosquitto_passwd", "-U", str(pwfile)], check=True,
                           capture_output=True)
            lines += ["allow_anonymous false", f"password_file {pwfile}"]
        else:
            lines.append("allow_anonymous true")
        if self.certs:
            lines += [
                f"listener {self.tls_port} 127.0.0.1",
                f"cafile {self.certs['ca.crt']}",
                f"certfile {self.certs['server.crt']}",
                f"keyfile {self.certs['server.key']}",
                "require_certificate true",
            ]
        self.conf.write_text("\n".join(lines) + "\n")

    def start(self) -> None:
        self.proc = subprocess.Popen([MOSQUITTO, "-c", str(self.conf)],
                                     stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        try:
            _wait_port(self.port)
            if self.tls_port:
                _wait_port(self.tls_port)
        except RuntimeError:
            self.stop()
            raise RuntimeError(f"mosquitto failed to start:\n{self.log_text()}") from None

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=5)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=5)
        self.proc = None

    def restart(self, down_for: float = 0.0) -> None:
        self.stop()
        if down_for:
            time.sleep(down_for)
        self.start()

    def log_text(self) -> str:
        return self.log.read_text(errors="replace") if self.log.exists() else ""

    def __enter__(self) -> Broker:
        self.start()
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.stop()

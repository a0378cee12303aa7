"""Real receivers for the notification tests: an HTTP server in a thread (webhook, SMS
gateway) that can be taken down and brought back on the same port, and aiosmtpd with
STARTTLS and a login."""

from __future__ import annotations

import json
import socket
import ssl
import subprocess
import threading
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

from aiosmtpd.controller import Controller
from aiosmtpd.smtp import SMTP, AuthResult, Envelope, LoginPassword, Session

from collector.notify import DELIVERY_HEADER, SIGNATURE_HEADER, verify


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class HttpReceiver:
    """POSTs received, de-duplicated on the delivery header as a receiver should; each
    request's HMAC signature (if a key is given) checked and recorded."""

    def __init__(self, key: str | None = None, token: str | None = None) -> None:
        self.port = free_port()
        self.key = key
        self.token = token
        self.requests: list[dict[str, Any]] = []  # every POST, duplicates too
        self.status = 200
        self.server: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/hook"

    @property
    def delivered(self) -> dict[str, dict[str, Any]]:
        """By delivery id, the first copy of each message answered 2xx."""
        out: dict[str, dict[str, Any]] = {}
        for r in self.requests:
            if r["answered"] < 300:
                out.setdefault(r["delivery"], r)
        return out

    def up(self) -> None:
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("Content-Length", "0")))
                status = receiver.status
                if receiver.token is not None and \
                        self.headers.get("Authorization") != f"Bearer {receiver.token}":
                    status = 401
                receiver.requests.append({
                    "delivery": self.headers.get(DELIVERY_HEADER),
                    "signed_ok": receiver.key is not None and verify(
                        receiver.key, body, self.headers.get(SIGNATURE_HEADER)),
                    "body": json.loads(body), "answered": status})
                self.send_response(status)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, *args: object) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", self.port), Handler)
        self._thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self._thread.start()

    def down(self) -> None:
        if self.server is not None:
            self.server.shutdown()
            self.server.server_close()
            self.server = None


def self_signed(folder: Path) -> tuple[Path, Path]:
    """A certificate for 127.0.0.1 and its key (openssl)."""
    cert, key = folder / "smtp.pem", folder / "smtp.key"
    subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2",
                    "-subj", "/CN=127.0.0.1", "-addext", "subjectAltName=IP:127.0.0.1",
                    "-keyout", str(key), "-out", str(cert)], check=True,
                   capture_output=True)
    return cert, key


class SmtpReceiver:
    """aiosmtpd requiring STARTTLS and a login before any mail."""

    def __init__(self, folder: Path, user: str, password: str) -> None:
        self.port = free_port()
        self.cert, self.key = self_signed(folder)
        self.user, self.password = user, password
        self.messages: list[Envelope] = []
        self.controller: Controller | None = None

    def _auth(self, server: SMTP, session: Session, envelope: Envelope, mechanism: str,
              data: Any) -> AuthResult:
        ok = isinstance(data, LoginPassword) and \
            (data.login.decode(), data.password.decode()) == (self.user, self.password)
        return AuthResult(success=ok, handled=False)

    def up(self) -> None:
        receiver = self

        class Handler:
            async def handle_DATA(self, server: SMTP, session: Session,
                                  envelope: Envelope) -> str:
                receiver.messages.append(envelope)
                return "250 OK"

        ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        ctx.load_cert_chain(self.cert, self.key)
        auth: Callable[..., AuthResult] = self._auth
        self.controller = Controller(Handler(), hostname="127.0.0.1", port=self.port,
                                     tls_context=ctx, require_starttls=True,
                                     authenticator=auth, auth_required=True)
        self.controller.start()

    def down(self) -> None:
        if self.controller is not None:
            self.controller.stop()
            self.controller = None

    def message_ids(self) -> list[str]:
        from email import message_from_bytes

        out = []
        for e in self.messages:
            raw = e.original_content or b""
            out.append(str(message_from_bytes(raw)[DELIVERY_HEADER]))
        return out


def test_the_receiver_refuses_a_signature_of_another_body_or_key() -> None:
    from collector.notify import sign

    body = b'{"kind": "topup"}'
    assert verify("k1", body, sign("k1", body))
    assert not verify("k1", body + b" ", sign("k1", body))
    assert not verify("k2", body, sign("k1", body))
    assert not verify("k1", body, None)
